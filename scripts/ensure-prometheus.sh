#!/usr/bin/env bash
# Makes sure `prometheus` and `promtool` are on the PATH: installs Debian's `prometheus` package
# (Prometheus 2.42 with promtool) when either is missing. Needs root (or sudo) and Debian's
# package mirrors; without a service manager the package's postinst does not start the daemon.
# Used by scripts/test.sh (tests/observability.rs runs a real Prometheus) and
# scripts/observability-check.sh.
set -euo pipefail

if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then
  exit 0
fi
echo "[ensure-prometheus] installing Debian's prometheus package (promtool included)" >&2
sudo=()
if [[ "$(id -u)" != 0 ]]; then
  sudo=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update
"${sudo[@]}" apt-get install -y --no-install-recommends prometheus
command -v prometheus >/dev/null && command -v promtool >/dev/null
