# Sourced by scripts/test.sh and scripts/bench.sh (not run on its own): makes sure a Kafka broker
# answers on 127.0.0.1:${KAFKA_PORT:-9092}. An existing one is used and left running; otherwise
# one is started with scripts/kafka.sh and stopped again when the calling script exits (also on
# failure or interruption), keeping the caller's exit status.
# shellcheck shell=bash

export KAFKA_PORT="${KAFKA_PORT:-9092}"
BROKER_LIB_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
_broker_started=0

port_open() {
  # shellcheck disable=SC2016  # $1 is expanded by the inner bash
  timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$1" >/dev/null 2>&1
}

_broker_cleanup() {
  local rc=$?
  if [[ "${_broker_started}" == 1 ]]; then
    bash "${BROKER_LIB_DIR}/kafka.sh" stop || true
  fi
  exit "${rc}"
}

# ensure_broker TAG: TAG prefixes the log line.
ensure_broker() {
  trap _broker_cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  if port_open "${KAFKA_PORT}"; then
    echo "[$1] Using the Kafka broker already listening on 127.0.0.1:${KAFKA_PORT}" >&2
  else
    _broker_started=1
    bash "${BROKER_LIB_DIR}/kafka.sh" start
  fi
}
