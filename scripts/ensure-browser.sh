#!/usr/bin/env bash
# Makes sure the console's browser test (tests/console_browser.rs) can run: Debian's `chromium`
# at /usr/bin/chromium (installed with apt-get when missing; needs root or sudo and Debian's
# package mirrors) and tests/browser/node_modules from its lockfile (`npm ci`: playwright-core,
# which drives that Chromium and downloads no browser of its own). Used by scripts/test.sh.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if [[ ! -x /usr/bin/chromium ]]; then
  echo "[ensure-browser] installing Debian's chromium package" >&2
  sudo=()
  if [[ "$(id -u)" != 0 ]]; then
    sudo=(sudo)
  fi
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update
  "${sudo[@]}" apt-get install -y --no-install-recommends chromium
fi

lock="${REPO_ROOT}/tests/browser/package-lock.json"
stamp="${REPO_ROOT}/tests/browser/node_modules/.package-lock.json"
if [[ ! -d "${REPO_ROOT}/tests/browser/node_modules/playwright-core" || "${lock}" -nt "${stamp}" ]]; then
  echo "[ensure-browser] npm ci in tests/browser" >&2
  (cd "${REPO_ROOT}/tests/browser" && npm ci --no-audit --no-fund)
fi
/usr/bin/chromium --version >/dev/null 2>&1 || { echo "[ensure-browser] /usr/bin/chromium does not run" >&2; exit 1; }
