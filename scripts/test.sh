#!/usr/bin/env bash
# The project's one test command: `bash scripts/test.sh [cargo test args...]`
#
# Makes sure a Kafka broker answers on 127.0.0.1:${KAFKA_PORT:-9092}:
#   - if one already answers, it is used and left running;
#   - otherwise one is started with scripts/kafka.sh and stopped again on exit
#     (also when the tests fail or the script is interrupted).
# Makes sure a schema registry answers on 127.0.0.1:${REGISTRY_PORT:-8081} the same way (Apicurio
# Registry through scripts/registry.sh; tests/avro.rs), exporting MGPASS_TEST_REGISTRY.
# Installs Debian's prometheus package when `prometheus` is missing (scripts/ensure-prometheus.sh),
# and Debian's chromium plus tests/browser's npm packages for the console's browser test
# (scripts/ensure-browser.sh),
# exports MGPASS_TEST_BOOTSTRAP for the integration tests and exits with cargo's status.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${SCRIPT_DIR}/.." && pwd)"
# shellcheck source=scripts/broker-lib.sh
source "${SCRIPT_DIR}/broker-lib.sh"
ensure_broker test.sh
ensure_registry test.sh
echo "[test.sh] MGPASS_TEST_REGISTRY=${MGPASS_TEST_REGISTRY}" >&2

# tests/observability.rs scrapes the processor with a real Prometheus (Debian's package).
bash "${SCRIPT_DIR}/ensure-prometheus.sh"

# tests/console_browser.rs drives the admin console in Debian's headless Chromium.
bash "${SCRIPT_DIR}/ensure-browser.sh"

export MGPASS_TEST_BOOTSTRAP="127.0.0.1:${KAFKA_PORT}"
echo "[test.sh] MGPASS_TEST_BOOTSTRAP=${MGPASS_TEST_BOOTSTRAP}" >&2

cd "${REPO_ROOT}"
# set -e makes a failing `cargo test` exit with its status; the EXIT trap
# keeps that status after stopping the broker.
mkdir -p target/tmp
rm -f target/tmp/*-report.txt target/tmp/test-summary.txt
cargo test "$@" 2>&1 | tee target/tmp/test-output.txt
# One closing line for the whole run, summed over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' target/tmp/test-output.txt \
  | tee target/tmp/test-summary.txt
for report in target/tmp/*-report.txt; do
  if [[ -e "${report}" ]]; then
    echo "[test.sh] $(basename "${report}"): $(cat "${report}")"
  fi
done
