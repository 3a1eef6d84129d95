# Sourced by scripts/test.sh and scripts/bench.sh (not run on its own): makes sure a Kafka broker
# answers on 127.0.0.1:${KAFKA_PORT:-9092} (ensure_broker) and, for the tests, a schema registry
# on 127.0.0.1:${REGISTRY_PORT:-8081} (ensure_registry). An existing one is used and left
# running; otherwise one is started with scripts/kafka.sh / scripts/registry.sh and stopped again
# when the calling script exits (also on failure or interruption), keeping the caller's exit
# status.
# shellcheck shell=bash

export KAFKA_PORT="${KAFKA_PORT:-9092}"
BROKER_LIB_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
_broker_started=0
_registry_started=0
export REGISTRY_PORT="${REGISTRY_PORT:-8081}"
export REGISTRY_MANAGEMENT_PORT="${REGISTRY_MANAGEMENT_PORT:-9001}"

port_open() {
  # shellcheck disable=SC2016  # $1 is expanded by the inner bash
  timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$1" >/dev/null 2>&1
}

_broker_cleanup() {
  local rc=$?
  if [[ "${_registry_started}" == 1 ]]; then
    bash "${BROKER_LIB_DIR}/registry.sh" stop || true
  fi
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

# ensure_registry TAG: after ensure_broker (which installs the cleanup trap). Exports
# MGPASS_TEST_REGISTRY, the base URL of the registry's Confluent API.
ensure_registry() {
  export MGPASS_TEST_REGISTRY="http://127.0.0.1:${REGISTRY_PORT}/apis/ccompat/v7"
  if curl -fsS -m 2 "${MGPASS_TEST_REGISTRY}/subjects" >/dev/null 2>&1; then
    echo "[$1] Using the schema registry already answering at ${MGPASS_TEST_REGISTRY}" >&2
  else
    _registry_started=1
    bash "${BROKER_LIB_DIR}/registry.sh" start
  fi
}
