#!/usr/bin/env bash
# The benchmark command of issue #4: `bash scripts/bench.sh [mgpass-bench args...]`
#
#   bash scripts/bench.sh --smoke                 # tiny sizes (CI): every figure, no verdicts
#   bash scripts/bench.sh                         # every scenario at full size (~45 min; g alone ~32)
#   bash scripts/bench.sh --scenario a,c --markdown
#   bash scripts/bench.sh --help                  # every option of mgpass-bench
#
# Builds the release binaries (the processor under test and mgpass-bench), makes sure a Kafka
# broker answers on 127.0.0.1:${KAFKA_PORT:-9092} -- an existing one is used and left running;
# otherwise one is started with scripts/kafka.sh and stopped again on exit -- and runs the bench
# against it. The bench creates topics with a unique prefix per run and deletes them afterwards.
# Exits with the bench's status: non-zero when a run failed or lost deliveries, never because
# of a timing.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${SCRIPT_DIR}/.." && pwd)"
# shellcheck source=scripts/broker-lib.sh
source "${SCRIPT_DIR}/broker-lib.sh"

cd "${REPO_ROOT}"
for arg in "$@"; do
  if [[ "${arg}" == "-h" || "${arg}" == "--help" ]]; then
    cargo build --release --quiet -p mgpass-bench
    exec ./target/release/mgpass-bench --help
  fi
done

cargo build --release -p mgpass-webhooks -p mgpass-bench --bins

ensure_broker bench.sh

# Report the broker's CPU too when it is ours (scripts/kafka.sh keeps its pid).
broker_args=()
pid_file="${KAFKA_DATA_DIR:-${REPO_ROOT}/.local/kafka}/kafka.pid"
if [[ -s "${pid_file}" ]]; then
  broker_pid="$(tr -d '[:space:]' <"${pid_file}")"
  if [[ "${broker_pid}" =~ ^[0-9]+$ ]] && kill -0 "${broker_pid}" 2>/dev/null; then
    broker_args=(--broker-pid "${broker_pid}")
    # Its request counters over JMX (kafka.sh starts every broker with JMX on loopback).
    if KAFKA_DATA_DIR="${KAFKA_DATA_DIR:-${REPO_ROOT}/.local/kafka}" bash "${SCRIPT_DIR}/kafka.sh" requests >/dev/null 2>&1; then
      broker_args+=(--broker-requests-cmd "KAFKA_DATA_DIR='${KAFKA_DATA_DIR:-${REPO_ROOT}/.local/kafka}' bash '${SCRIPT_DIR}/kafka.sh' requests")
    fi
  fi
fi

echo "[bench.sh] $(nproc) CPUs, $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo), load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
./target/release/mgpass-bench --bootstrap-servers "127.0.0.1:${KAFKA_PORT}" "${broker_args[@]}" "$@"
