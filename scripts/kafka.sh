#!/usr/bin/env bash
# Fetch, start and stop a real single-node Apache Kafka (KRaft, combined
# broker+controller) as a plain local Java process -- no Docker needed.
#
# Usage: scripts/kafka.sh {fetch|start|stop|status|reset|requests}
#
#   requests   the broker's request counters since it started, read over JMX (loopback only):
#              one line per request type, `<type> <count> <request bytes>`, then
#              `MessagesIn <count>`, `BytesIn <bytes>` and `BytesOut <bytes>` (the benchmark reads
#              them before and after each run)
#
# Environment:
#   KAFKA_VERSION          Kafka version to fetch/run            (default 4.1.1)
#   LOG4J_VERSION          log4j2 version used for logging       (default 2.24.3)
#   MGPASS_CACHE_DIR       jar cache root       (default ~/.cache/mgpass-webhooks)
#   KAFKA_DATA_DIR         config/logs/data dir          (default <repo>/.local/kafka)
#   KAFKA_PORT             PLAINTEXT listener port                (default 9092)
#   KAFKA_CONTROLLER_PORT  KRaft controller listener port         (default 9093)
#   KAFKA_JMX_PORT         JMX port, bound to 127.0.0.1, no auth  (default KAFKA_PORT + 100)
#   KAFKA_START_TIMEOUT    seconds to wait for the broker to come up (default 120)
#   KAFKA_HEAP_OPTS        JVM heap options           (default -Xms1g -Xmx1g, as Kafka's own start script)
#   JAVA_HOME              if set, $JAVA_HOME/bin/java is used, else `java` on PATH
#
# Note: the ports are baked into the KRaft metadata when storage is formatted;
# to change KAFKA_PORT/KAFKA_CONTROLLER_PORT for an existing data dir, run
# `scripts/kafka.sh reset` first.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${SCRIPT_DIR}/.." && pwd)"

KAFKA_VERSION="${KAFKA_VERSION:-4.1.1}"
LOG4J_VERSION="${LOG4J_VERSION:-2.24.3}"
SCALA_BINARY="2.13"
DEP_PLUGIN="org.apache.maven.plugins:maven-dependency-plugin:3.8.1"

CACHE_ROOT="${MGPASS_CACHE_DIR:-${HOME}/.cache/mgpass-webhooks}"
KAFKA_HOME="${CACHE_ROOT}/kafka-${KAFKA_VERSION}"
LIBS_DIR="${KAFKA_HOME}/libs"
FETCH_MARKER="${KAFKA_HOME}/.fetch-complete"

DATA_DIR="${KAFKA_DATA_DIR:-${REPO_ROOT}/.local/kafka}"
KAFKA_PORT="${KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"
KAFKA_JMX_PORT="${KAFKA_JMX_PORT:-$((KAFKA_PORT + 100))}"
START_TIMEOUT="${KAFKA_START_TIMEOUT:-120}"
HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xms1g -Xmx1g}"

CONFIG_FILE="${DATA_DIR}/server.properties"
LOG4J_FILE="${DATA_DIR}/log4j2.properties"
TOOLS_LOG4J_FILE="${DATA_DIR}/tools-log4j2.properties"
PID_FILE="${DATA_DIR}/kafka.pid"
SERVER_LOG="${DATA_DIR}/server.log"    # INFO+ from log4j2
CONSOLE_LOG="${DATA_DIR}/console.log"  # stdout/stderr of the JVM (WARN+)
LOG_DIRS="${DATA_DIR}/logs"            # Kafka's data (log.dirs)

if [[ -n "${JAVA_HOME:-}" ]]; then
  JAVA="${JAVA_HOME}/bin/java"
else
  JAVA="java"
fi

# Temp dir of an in-progress fetch; removed on exit, also on failure.
FETCH_WORK_DIR=""
trap '[[ -z "${FETCH_WORK_DIR}" ]] || rm -rf "${FETCH_WORK_DIR}"' EXIT

log() { printf '[kafka.sh] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------- helpers

# True if a TCP connection to 127.0.0.1:$1 succeeds.
port_open() {
  # shellcheck disable=SC2016  # $1 is expanded by the inner bash
  timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$1" >/dev/null 2>&1
}

# True if pid $1 exists and is not a zombie.
pid_alive() {
  local pid="$1" state
  [[ "${pid}" =~ ^[0-9]+$ ]] || return 1
  kill -0 "${pid}" 2>/dev/null || return 1
  if [[ -r "/proc/${pid}/stat" ]]; then
    # Field 3 of /proc/<pid>/stat is the state; the comm field (2) is in
    # parentheses and may contain spaces, so strip up to the last ')'.
    state="$(sed -e 's/^.*) //' "/proc/${pid}/stat" 2>/dev/null | cut -d' ' -f1)" || true
    [[ "${state}" != "Z" ]] || return 1
  fi
  return 0
}

# True if pid $1 is alive AND is the broker started from this data dir
# (guards against a stale pid file whose pid got reused by something else).
pid_is_our_broker() {
  local pid="$1"
  pid_alive "${pid}" || return 1
  if [[ -r "/proc/${pid}/cmdline" ]]; then
    tr '\0' '\n' <"/proc/${pid}/cmdline" | grep -qxF "${CONFIG_FILE}" || return 1
  fi
  return 0
}

# Prints the pid of our running broker and returns 0, or returns 1.
running_pid() {
  local pid
  [[ -f "${PID_FILE}" ]] || return 1
  pid="$(tr -d '[:space:]' <"${PID_FILE}")"
  pid_is_our_broker "${pid}" || return 1
  printf '%s\n' "${pid}"
}

java_cp() { printf '%s/*' "${LIBS_DIR}"; }

# ------------------------------------------------------------------ fetch

cmd_fetch() {
  if [[ -f "${FETCH_MARKER}" && -d "${LIBS_DIR}" ]]; then
    log "Kafka ${KAFKA_VERSION} already fetched: ${LIBS_DIR}"
    return 0
  fi
  command -v mvn >/dev/null 2>&1 || die "mvn (Maven) is required to fetch Kafka"
  mkdir -p "${KAFKA_HOME}"

  # Serialise concurrent fetches of the same version.
  if command -v flock >/dev/null 2>&1; then
    exec 9>"${KAFKA_HOME}/.fetch.lock"
    flock 9
    if [[ -f "${FETCH_MARKER}" && -d "${LIBS_DIR}" ]]; then
      log "Kafka ${KAFKA_VERSION} fetched by a concurrent run: ${LIBS_DIR}"
      return 0
    fi
  fi

  log "Fetching Kafka ${KAFKA_VERSION} (+ log4j ${LOG4J_VERSION}) from Maven Central ..."
  local staging start_ts
  start_ts="$(date +%s)"
  FETCH_WORK_DIR="$(mktemp -d "${TMPDIR:-/tmp}/mgpass-kafka-fetch.XXXXXX")"
  local work="${FETCH_WORK_DIR}"
  staging="${KAFKA_HOME}/libs.partial"
  rm -rf "${staging}"

  # Throwaway pom: kafka_2.13 (broker), kafka-tools (CLI tools such as
  # TopicCommand / ConsoleProducer, handy for debugging), and a log4j2 binding
  # for slf4j 1.7 (which Kafka 4.x logs through).
  cat >"${work}/pom.xml" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0"
         xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
         xsi:schemaLocation="http://maven.apache.org/POM/4.0.0 http://maven.apache.org/xsd/maven-4.0.0.xsd">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.mgpass</groupId>
  <artifactId>kafka-fetch</artifactId>
  <version>0</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_${SCALA_BINARY}</artifactId>
      <version>${KAFKA_VERSION}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka-tools</artifactId>
      <version>${KAFKA_VERSION}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>${LOG4J_VERSION}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-core</artifactId>
      <version>${LOG4J_VERSION}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-api</artifactId>
      <version>${LOG4J_VERSION}</version>
    </dependency>
  </dependencies>
</project>
EOF

  # copy-dependencies also copies the direct dependencies, i.e. the kafka jar.
  if ! (cd "${work}" && mvn -q -B -Dstyle.color=never "${DEP_PLUGIN}:copy-dependencies" \
        -DincludeScope=runtime -DoutputDirectory="${staging}"); then
    rm -rf "${staging}"
    die "Maven could not resolve Kafka ${KAFKA_VERSION}"
  fi
  [[ -f "${staging}/kafka_${SCALA_BINARY}-${KAFKA_VERSION}.jar" ]] \
    || die "kafka_${SCALA_BINARY}-${KAFKA_VERSION}.jar missing after fetch"

  rm -rf "${LIBS_DIR}"
  mv "${staging}" "${LIBS_DIR}"
  date -u +%Y-%m-%dT%H:%M:%SZ >"${FETCH_MARKER}"
  rm -rf "${work}"
  FETCH_WORK_DIR=""
  log "Fetched $(find "${LIBS_DIR}" -name '*.jar' | wc -l) jars into ${LIBS_DIR} in $(( $(date +%s) - start_ts ))s"
}

# ------------------------------------------------------------------ start

write_config() {
  mkdir -p "${DATA_DIR}" "${LOG_DIRS}"
  cat >"${CONFIG_FILE}" <<EOF
# Generated by scripts/kafka.sh -- rewritten on every start.
process.roles=broker,controller
node.id=1
listeners=PLAINTEXT://127.0.0.1:${KAFKA_PORT},CONTROLLER://127.0.0.1:${KAFKA_CONTROLLER_PORT}
advertised.listeners=PLAINTEXT://127.0.0.1:${KAFKA_PORT}
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
controller.quorum.bootstrap.servers=127.0.0.1:${KAFKA_CONTROLLER_PORT}
log.dirs=${LOG_DIRS}
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
EOF

  cat >"${LOG4J_FILE}" <<EOF
# Generated by scripts/kafka.sh: INFO to ${SERVER_LOG}, WARN+ to the console.
status = warn
name = mgpass-kafka

appender.console.type = Console
appender.console.name = CONSOLE
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
appender.console.filter.threshold.type = ThresholdFilter
appender.console.filter.threshold.level = warn

appender.file.type = File
appender.file.name = FILE
appender.file.fileName = ${SERVER_LOG}
appender.file.append = true
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n

rootLogger.level = info
rootLogger.appenderRef.console.ref = CONSOLE
rootLogger.appenderRef.file.ref = FILE

# Quieten the noisiest loggers a bit.
logger.kafkaRequest.name = kafka.request.logger
logger.kafkaRequest.level = warn
logger.stateChange.name = state.change.logger
logger.stateChange.level = warn
EOF

  # For command-line tools (StorageTool, TopicCommand, ...): WARN+ to stderr,
  # so that their stdout stays clean.
  cat >"${TOOLS_LOG4J_FILE}" <<'EOF'
status = warn
name = mgpass-kafka-tools
appender.console.type = Console
appender.console.name = STDERR
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = warn
rootLogger.appenderRef.console.ref = STDERR
EOF
}

# Formats the KRaft storage once (skipped if meta.properties exists).
format_storage() {
  if [[ -f "${LOG_DIRS}/meta.properties" ]]; then
    return 0
  fi
  local cluster_id
  cluster_id="$("${JAVA}" -cp "$(java_cp)" -Dlog4j2.configurationFile="${TOOLS_LOG4J_FILE}" \
    kafka.tools.StorageTool random-uuid | tail -n 1 | tr -d '[:space:]')"
  [[ -n "${cluster_id}" ]] || die "could not generate a cluster id"
  log "Formatting storage in ${LOG_DIRS} (cluster id ${cluster_id}) ..."
  "${JAVA}" -cp "$(java_cp)" -Dlog4j2.configurationFile="${TOOLS_LOG4J_FILE}" \
    kafka.tools.StorageTool format --standalone -t "${cluster_id}" -c "${CONFIG_FILE}" >&2 \
    || die "storage format failed"
}

# Prints the tail of the logs (used on failures).
dump_logs() {
  log "---- last 50 lines of ${SERVER_LOG} ----"
  tail -n 50 "${SERVER_LOG}" >&2 2>/dev/null || true
  log "---- last 20 lines of ${CONSOLE_LOG} ----"
  tail -n 20 "${CONSOLE_LOG}" >&2 2>/dev/null || true
}

cmd_start() {
  local pid
  if pid="$(running_pid)"; then
    log "Kafka is already running from ${DATA_DIR} (pid ${pid}, 127.0.0.1:${KAFKA_PORT})"
    return 0
  fi
  rm -f "${PID_FILE}"
  if port_open "${KAFKA_PORT}"; then
    die "port 127.0.0.1:${KAFKA_PORT} is already in use by another process"
  fi
  if port_open "${KAFKA_CONTROLLER_PORT}"; then
    die "port 127.0.0.1:${KAFKA_CONTROLLER_PORT} is already in use by another process"
  fi
  command -v "${JAVA}" >/dev/null 2>&1 || die "java not found (${JAVA}); set JAVA_HOME or PATH"

  cmd_fetch
  write_config
  format_storage

  # Keep the previous run's logs, start with fresh ones (the wait loop below
  # greps the server log for the startup message).
  [[ -f "${SERVER_LOG}" ]] && mv -f "${SERVER_LOG}" "${SERVER_LOG}.prev"
  [[ -f "${CONSOLE_LOG}" ]] && mv -f "${CONSOLE_LOG}" "${CONSOLE_LOG}.prev"

  local start_ts
  start_ts="$(date +%s)"
  log "Starting Kafka ${KAFKA_VERSION} on 127.0.0.1:${KAFKA_PORT} (data: ${DATA_DIR}) ..."
  local -a launcher=()
  if command -v setsid >/dev/null 2>&1; then
    # Own session: a Ctrl-C in the terminal does not hit the broker directly;
    # whoever started it stops it cleanly via `kafka.sh stop`.
    launcher=(setsid)
  fi
  # The inner bash writes its own pid and then execs java, so the pid file
  # holds the JVM's pid even if setsid had to fork.
  # JVM options as Kafka's own kafka-run-class.sh sets them (G1 with a 20 ms pause goal), and its
  # default 1 GB heap: with 256-768 MB, young collections came every 2 s or so under the
  # benchmark's load and each held fetches up for 15-20 ms (docs/benchmarks.md).
  # shellcheck disable=SC2016,SC2086  # $$ is for the inner shell; HEAP_OPTS is word-split on purpose
  nohup "${launcher[@]}" bash -c 'echo "$$" >"$1"; shift; exec "$@"' _ "${PID_FILE}" \
    "${JAVA}" ${HEAP_OPTS} -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
    -XX:+ExplicitGCInvokesConcurrent -XX:MaxInlineLevel=15 -Djava.awt.headless=true \
    -Dcom.sun.management.jmxremote -Dcom.sun.management.jmxremote.host=127.0.0.1 \
    -Djava.rmi.server.hostname=127.0.0.1 -Dcom.sun.management.jmxremote.port="${KAFKA_JMX_PORT}" \
    -Dcom.sun.management.jmxremote.rmi.port="${KAFKA_JMX_PORT}" \
    -Dcom.sun.management.jmxremote.authenticate=false -Dcom.sun.management.jmxremote.ssl=false \
    -Dlog4j2.configurationFile="${LOG4J_FILE}" \
    -cp "$(java_cp)" kafka.Kafka "${CONFIG_FILE}" \
    </dev/null >"${CONSOLE_LOG}" 2>&1 &

  # Wait for the pid file to appear.
  local i
  for ((i = 0; i < 50; i++)); do
    [[ -s "${PID_FILE}" ]] && break
    sleep 0.1
  done
  pid="$(tr -d '[:space:]' <"${PID_FILE}" 2>/dev/null || true)"
  [[ -n "${pid}" ]] || die "broker process did not start"

  # Wait until the server log reports startup AND the port accepts connections.
  local deadline=$((start_ts + START_TIMEOUT))
  while :; do
    if ! pid_alive "${pid}"; then
      log "Kafka exited during startup"
      dump_logs
      rm -f "${PID_FILE}"
      exit 1
    fi
    if grep -q 'Kafka Server started' "${SERVER_LOG}" 2>/dev/null && port_open "${KAFKA_PORT}"; then
      log "Kafka is up (pid ${pid}) after $(( $(date +%s) - start_ts ))s: bootstrap 127.0.0.1:${KAFKA_PORT}"
      return 0
    fi
    if (( $(date +%s) >= deadline )); then
      log "Kafka did not come up within ${START_TIMEOUT}s; stopping pid ${pid}"
      dump_logs
      stop_pid "${pid}"
      rm -f "${PID_FILE}"
      exit 1
    fi
    sleep 1
  done
}

# ------------------------------------------------------------------- stop

# TERM the given pid, wait up to 30 s, then KILL it.
stop_pid() {
  local pid="$1" i
  kill -TERM "${pid}" 2>/dev/null || true
  for ((i = 0; i < 300; i++)); do
    pid_alive "${pid}" || return 0
    sleep 0.1
  done
  log "Kafka (pid ${pid}) did not exit within 30s; sending KILL"
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
    if [[ -f "${PID_FILE}" ]]; then
      log "Kafka is not running (removing stale pid file ${PID_FILE})"
      rm -f "${PID_FILE}"
    else
      log "Kafka is not running (no pid file in ${DATA_DIR})"
    fi
    return 0
  fi
  log "Stopping Kafka (pid ${pid}) ..."
  stop_pid "${pid}"
  rm -f "${PID_FILE}"
  log "Kafka stopped"
}

# ----------------------------------------------------------- status/reset

cmd_status() {
  local pid
  if pid="$(running_pid)"; then
    if port_open "${KAFKA_PORT}"; then
      echo "running (pid ${pid}, bootstrap 127.0.0.1:${KAFKA_PORT}, data ${DATA_DIR})"
    else
      echo "running (pid ${pid}, but 127.0.0.1:${KAFKA_PORT} does not answer yet; data ${DATA_DIR})"
    fi
    return 0
  fi
  echo "not running (data ${DATA_DIR})"
  return 1
}

cmd_reset() {
  cmd_stop
  # Refuse to delete obviously wrong paths.
  case "${DATA_DIR}" in
    "" | "/" | "${HOME}" | "${REPO_ROOT}") die "refusing to delete '${DATA_DIR}'" ;;
  esac
  if [[ -e "${DATA_DIR}" ]]; then
    rm -rf -- "${DATA_DIR}"
    log "Deleted ${DATA_DIR}"
  else
    log "Nothing to delete (${DATA_DIR} does not exist)"
  fi
}

# --------------------------------------------------------------- requests

# The broker's request counters over JMX (Kafka's own JmxTool from kafka-tools), summed over
# request versions: what the benchmark divides by its deliveries.
cmd_requests() {
  running_pid >/dev/null || die "Kafka is not running (data ${DATA_DIR})"
  local url="service:jmx:rmi:///jndi/rmi://127.0.0.1:${KAFKA_JMX_PORT}/jmxrmi"
  "${JAVA}" -Xms16m -Xmx64m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC -cp "$(java_cp)" \
    -Dlog4j2.configurationFile="${TOOLS_LOG4J_FILE}" org.apache.kafka.tools.JmxTool \
    --jmx-url "${url}" --one-time true --report-format properties --attributes Count,Mean \
    --object-name 'kafka.network:type=RequestMetrics,name=RequestsPerSec,*' \
    --object-name 'kafka.network:type=RequestMetrics,name=RequestBytes,*' \
    --object-name 'kafka.server:type=BrokerTopicMetrics,name=MessagesInPerSec' \
    --object-name 'kafka.server:type=BrokerTopicMetrics,name=BytesInPerSec' \
    --object-name 'kafka.server:type=BrokerTopicMetrics,name=BytesOutPerSec' 2>/dev/null |
    awk '
      # kafka.network:type=RequestMetrics,name=RequestsPerSec,request=Fetch,version=17:Count=12
      match($0, /name=RequestsPerSec,request=[A-Za-z]+/) {
        t = substr($0, RSTART + 28, RLENGTH - 28); split($0, kv, ":Count="); n[t] += kv[2]; next
      }
      match($0, /name=RequestBytes,request=[A-Za-z]+:(Count|Mean)=/) {
        split(substr($0, RSTART + 26), p, ":"); split(p[2], kv, "=")
        if (kv[1] == "Count") bc[p[1]] = kv[2]; else bm[p[1]] = kv[2]; next
      }
      match($0, /name=(MessagesIn|BytesIn|BytesOut)PerSec:Count=/) {
        split($0, a, "name="); split(a[2], b, "PerSec:Count="); total[b[1]] = b[2]; next
      }
      END {
        for (t in n) if (n[t] > 0) printf "%s %d %.0f\n", t, n[t], bc[t] * bm[t]
        for (k in total) printf "%s %d\n", k, total[k]
      }' | sort
}

# ------------------------------------------------------------------- main

usage() {
  # The comment block at the top of this file.
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
}

case "${1:-}" in
  fetch) cmd_fetch ;;
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  reset) cmd_reset ;;
  requests) cmd_requests ;;
  -h | --help | help) usage ;;
  *) usage >&2; exit 2 ;;
esac
