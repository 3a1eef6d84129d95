#!/usr/bin/env bash
# Fetch, start and stop a real Apicurio Registry 3.x (in-memory storage) as a plain local Java
# process -- no Docker needed. Its Confluent-compatible API (what the processor and
# `produce-sample --format avro` use) is http://127.0.0.1:${REGISTRY_PORT}/apis/ccompat/v7.
#
# Usage: scripts/registry.sh {fetch|start|stop|status|url}
#
# Environment:
#   APICURIO_VERSION          registry version to fetch/run                  (default 3.3.3)
#   MGPASS_CACHE_DIR          download cache root      (default ~/.cache/mgpass-webhooks)
#   REGISTRY_DATA_DIR         pid file and logs              (default <repo>/.local/registry)
#   REGISTRY_PORT             HTTP port (QUARKUS_HTTP_PORT)                    (default 8081)
#   REGISTRY_MANAGEMENT_PORT  health/metrics port (QUARKUS_MANAGEMENT_PORT)    (default 9001)
#   REGISTRY_START_TIMEOUT    seconds to wait until it answers                  (default 90)
#   REGISTRY_HEAP_OPTS        JVM heap options                      (default -Xms64m -Xmx512m)
#   REGISTRY_JAVA             a java of version 21 or later; else the first of $JAVA_HOME/bin/java,
#                             /usr/lib/jvm/temurin-*-jdk-amd64/bin/java (newest first), `java` on
#                             PATH that is 21+ (Apicurio 3 does not run on Java 17)
#
# The storage is in memory: every start is an empty registry (ids count from 1 again).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${SCRIPT_DIR}/.." && pwd)"

APICURIO_VERSION="${APICURIO_VERSION:-3.3.3}"
DEP_PLUGIN="org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
CACHE_ROOT="${MGPASS_CACHE_DIR:-${HOME}/.cache/mgpass-webhooks}"
APP_HOME="${CACHE_ROOT}/apicurio-registry-${APICURIO_VERSION}"
FETCH_MARKER="${APP_HOME}/.fetch-complete"

DATA_DIR="${REGISTRY_DATA_DIR:-${REPO_ROOT}/.local/registry}"
REGISTRY_PORT="${REGISTRY_PORT:-8081}"
REGISTRY_MANAGEMENT_PORT="${REGISTRY_MANAGEMENT_PORT:-9001}"
START_TIMEOUT="${REGISTRY_START_TIMEOUT:-90}"
HEAP_OPTS="${REGISTRY_HEAP_OPTS:--Xms64m -Xmx512m}"
PID_FILE="${DATA_DIR}/registry-${REGISTRY_PORT}.pid"
LOG_FILE="${DATA_DIR}/registry-${REGISTRY_PORT}.log"

FETCH_WORK_DIR=""
trap '[[ -z "${FETCH_WORK_DIR}" ]] || rm -rf "${FETCH_WORK_DIR}"' EXIT

log() { printf '[registry.sh] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

port_open() {
  # shellcheck disable=SC2016  # $1 is expanded by the inner bash
  timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$1" >/dev/null 2>&1
}

pid_alive() {
  local pid="$1" state
  [[ "${pid}" =~ ^[0-9]+$ ]] || return 1
  kill -0 "${pid}" 2>/dev/null || return 1
  if [[ -r "/proc/${pid}/stat" ]]; then
    state="$(sed -e 's/^.*) //' "/proc/${pid}/stat" 2>/dev/null | cut -d' ' -f1)" || true
    [[ "${state}" != "Z" ]] || return 1
  fi
  return 0
}

# Prints the pid of the registry started from this data dir on this port, or returns 1.
running_pid() {
  local pid
  [[ -f "${PID_FILE}" ]] || return 1
  pid="$(tr -d '[:space:]' <"${PID_FILE}")"
  pid_alive "${pid}" || return 1
  if [[ -r "/proc/${pid}/cmdline" ]]; then
    tr '\0' '\n' <"/proc/${pid}/cmdline" | grep -qF "quarkus-run.jar" || return 1
  fi
  printf '%s\n' "${pid}"
}

# The major version of java binary $1 (17, 21, 25, ...), or nothing.
java_major() {
  "$1" -version 2>&1 | awk -F'"' '/version/ { split($2, v, "."); print (v[1] == "1" ? v[2] : v[1]); exit }'
}

find_java() {
  local candidates=() c major
  [[ -n "${REGISTRY_JAVA:-}" ]] && candidates+=("${REGISTRY_JAVA}")
  [[ -n "${JAVA_HOME:-}" ]] && candidates+=("${JAVA_HOME}/bin/java")
  # Newest Temurin first (the machines have Temurin 25 at this path).
  while IFS= read -r c; do candidates+=("${c}"); done < <(ls -d /usr/lib/jvm/temurin-*-jdk-amd64/bin/java 2>/dev/null | sort -rV)
  command -v java >/dev/null 2>&1 && candidates+=("$(command -v java)")
  for c in "${candidates[@]}"; do
    [[ -x "${c}" ]] || continue
    major="$(java_major "${c}")"
    if [[ "${major}" =~ ^[0-9]+$ ]] && (( major >= 21 )); then
      printf '%s\n' "${c}"
      return 0
    fi
  done
  return 1
}

cmd_fetch() {
  if [[ -f "${FETCH_MARKER}" && -f "${APP_HOME}/quarkus-run.jar" ]]; then
    log "Apicurio Registry ${APICURIO_VERSION} already fetched: ${APP_HOME}"
    return 0
  fi
  command -v mvn >/dev/null 2>&1 || die "mvn (Maven) is required to fetch Apicurio Registry"
  mkdir -p "${APP_HOME}"
  if command -v flock >/dev/null 2>&1; then
    exec 9>"${APP_HOME}/.fetch.lock"
    flock 9
    if [[ -f "${FETCH_MARKER}" && -f "${APP_HOME}/quarkus-run.jar" ]]; then
      log "Apicurio Registry ${APICURIO_VERSION} fetched by a concurrent run: ${APP_HOME}"
      return 0
    fi
  fi
  local start_ts
  start_ts="$(date +%s)"
  log "Fetching io.apicurio:apicurio-registry-app:${APICURIO_VERSION}:tar.gz:all from Maven Central ..."
  FETCH_WORK_DIR="$(mktemp -d "${TMPDIR:-/tmp}/mgpass-registry-fetch.XXXXXX")"
  (cd "${FETCH_WORK_DIR}" && mvn -q -B -Dstyle.color=never "${DEP_PLUGIN}:copy" \
      -Dartifact="io.apicurio:apicurio-registry-app:${APICURIO_VERSION}:tar.gz:all" \
      -DoutputDirectory="${FETCH_WORK_DIR}") \
    || die "Maven could not resolve apicurio-registry-app ${APICURIO_VERSION}"
  local tarball
  tarball="$(ls "${FETCH_WORK_DIR}"/apicurio-registry-app-*.tar.gz 2>/dev/null | head -n 1)"
  [[ -n "${tarball}" ]] || die "no tarball after the fetch"
  mkdir -p "${FETCH_WORK_DIR}/x"
  tar -xzf "${tarball}" -C "${FETCH_WORK_DIR}/x"
  local run_jar
  run_jar="$(find "${FETCH_WORK_DIR}/x" -name quarkus-run.jar | head -n 1)"
  [[ -n "${run_jar}" ]] || die "quarkus-run.jar missing from ${tarball}"
  local app_dir
  app_dir="$(dirname "${run_jar}")"
  rm -rf "${APP_HOME:?}"/*
  cp -a "${app_dir}/." "${APP_HOME}/"
  date -u +%Y-%m-%dT%H:%M:%SZ >"${FETCH_MARKER}"
  log "Fetched into ${APP_HOME} in $(( $(date +%s) - start_ts ))s ($(du -sh "${APP_HOME}" | cut -f1))"
}

# True when the Confluent API answers on the HTTP port.
answers() {
  curl -fsS -m 2 "http://127.0.0.1:${REGISTRY_PORT}/apis/ccompat/v7/subjects" >/dev/null 2>&1
}

cmd_start() {
  local pid java
  if pid="$(running_pid)"; then
    log "Apicurio Registry already running (pid ${pid}, http://127.0.0.1:${REGISTRY_PORT})"
    return 0
  fi
  rm -f "${PID_FILE}"
  port_open "${REGISTRY_PORT}" && die "port 127.0.0.1:${REGISTRY_PORT} is already in use by another process"
  port_open "${REGISTRY_MANAGEMENT_PORT}" && die "port 127.0.0.1:${REGISTRY_MANAGEMENT_PORT} (management) is already in use by another process"
  command -v curl >/dev/null 2>&1 || die "curl is required to wait for the registry"
  java="$(find_java)" || die "no Java 21 or later found (Apicurio Registry 3 needs it; Java 17 fails): set REGISTRY_JAVA"
  cmd_fetch
  mkdir -p "${DATA_DIR}"
  [[ -f "${LOG_FILE}" ]] && mv -f "${LOG_FILE}" "${LOG_FILE}.prev"
  local start_ts
  start_ts="$(date +%s%N)"
  log "Starting Apicurio Registry ${APICURIO_VERSION} on 127.0.0.1:${REGISTRY_PORT} (management ${REGISTRY_MANAGEMENT_PORT}, ${java}) ..."
  local -a launcher=()
  command -v setsid >/dev/null 2>&1 && launcher=(setsid)
  # shellcheck disable=SC2016,SC2086  # $$ is the inner shell's; HEAP_OPTS is word-split on purpose
  QUARKUS_HTTP_HOST=127.0.0.1 QUARKUS_HTTP_PORT="${REGISTRY_PORT}" \
  QUARKUS_MANAGEMENT_HOST=127.0.0.1 QUARKUS_MANAGEMENT_PORT="${REGISTRY_MANAGEMENT_PORT}" \
  nohup "${launcher[@]}" bash -c 'echo "$$" >"$1"; shift; exec "$@"' _ "${PID_FILE}" \
    "${java}" ${HEAP_OPTS} -Djava.awt.headless=true -jar "${APP_HOME}/quarkus-run.jar" \
    </dev/null >"${LOG_FILE}" 2>&1 &
  local i
  for ((i = 0; i < 50; i++)); do
    [[ -s "${PID_FILE}" ]] && break
    sleep 0.1
  done
  pid="$(tr -d '[:space:]' <"${PID_FILE}" 2>/dev/null || true)"
  [[ -n "${pid}" ]] || die "registry process did not start"
  local deadline=$(( $(date +%s) + START_TIMEOUT ))
  while :; do
    if ! pid_alive "${pid}"; then
      log "Apicurio Registry exited during startup; last lines of ${LOG_FILE}:"
      tail -n 30 "${LOG_FILE}" >&2 || true
      rm -f "${PID_FILE}"
      exit 1
    fi
    if answers; then
      local ms=$(( ($(date +%s%N) - start_ts) / 1000000 ))
      log "Apicurio Registry is up (pid ${pid}) after ${ms} ms: http://127.0.0.1:${REGISTRY_PORT}/apis/ccompat/v7"
      return 0
    fi
    if (( $(date +%s) >= deadline )); then
      log "Apicurio Registry did not answer within ${START_TIMEOUT}s; stopping pid ${pid}"
      tail -n 30 "${LOG_FILE}" >&2 || true
      stop_pid "${pid}"
      rm -f "${PID_FILE}"
      exit 1
    fi
    sleep 0.25
  done
}

stop_pid() {
  local pid="$1" i
  kill -TERM "${pid}" 2>/dev/null || true
  for ((i = 0; i < 200; i++)); do
    pid_alive "${pid}" || return 0
    sleep 0.1
  done
  log "registry (pid ${pid}) did not exit within 20s; sending KILL"
  kill -KILL "${pid}" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
    pid_alive "${pid}" || return 0
    sleep 0.1
  done
  die "could not kill pid ${pid}"
}

cmd_stop() {
  local pid
  if ! pid="$(running_pid)"; then
    rm -f "${PID_FILE}"
    log "Apicurio Registry is not running on port ${REGISTRY_PORT} (from ${DATA_DIR})"
    return 0
  fi
  log "Stopping Apicurio Registry (pid ${pid}) ..."
  stop_pid "${pid}"
  rm -f "${PID_FILE}"
  log "Apicurio Registry stopped"
}

cmd_status() {
  local pid
  if pid="$(running_pid)"; then
    if answers; then
      echo "running (pid ${pid}, http://127.0.0.1:${REGISTRY_PORT}/apis/ccompat/v7)"
    else
      echo "running (pid ${pid}, not answering yet on ${REGISTRY_PORT})"
    fi
    return 0
  fi
  echo "not running (port ${REGISTRY_PORT}, data ${DATA_DIR})"
  return 1
}

usage() {
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
}

case "${1:-}" in
  fetch) cmd_fetch ;;
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  url) echo "http://127.0.0.1:${REGISTRY_PORT}/apis/ccompat/v7" ;;
  -h | --help | help) usage ;;
  *) usage >&2; exit 2 ;;
esac
