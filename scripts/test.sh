#!/usr/bin/env bash
# The project's one test command: `bash scripts/test.sh [cargo test args...]`
#
# Makes sure a Kafka broker answers on 127.0.0.1:${KAFKA_PORT:-9092}:
#   - if one already answers, it is used and left running;
#   - otherwise one is started with scripts/kafka.sh and stopped again on exit
#     (also when the tests fail or the script is interrupted).
# Exports MGPASS_TEST_BOOTSTRAP for the integration tests and exits with
# cargo's status.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${SCRIPT_DIR}/.." && pwd)"
KAFKA_SH="${SCRIPT_DIR}/kafka.sh"

export KAFKA_PORT="${KAFKA_PORT:-9092}"

port_open() {
  # shellcheck disable=SC2016  # $1 is expanded by the inner bash
  timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$1" >/dev/null 2>&1
}

started_broker=0
cleanup() {
  local rc=$?
  if [[ "${started_broker}" == 1 ]]; then
    bash "${KAFKA_SH}" stop || true
  fi
  exit "${rc}"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if port_open "${KAFKA_PORT}"; then
  echo "[test.sh] Using the Kafka broker already listening on 127.0.0.1:${KAFKA_PORT}" >&2
else
  started_broker=1
  bash "${KAFKA_SH}" start
fi

export MGPASS_TEST_BOOTSTRAP="127.0.0.1:${KAFKA_PORT}"
echo "[test.sh] MGPASS_TEST_BOOTSTRAP=${MGPASS_TEST_BOOTSTRAP}" >&2

cd "${REPO_ROOT}"
# set -e makes a failing `cargo test` exit with its status; the EXIT trap
# keeps that status after stopping the broker.
rm -f target/tmp/*-report.txt
cargo test "$@"
for report in target/tmp/*-report.txt; do
  if [[ -e "${report}" ]]; then
    echo "[test.sh] $(basename "${report}"): $(cat "${report}")"
  fi
done
