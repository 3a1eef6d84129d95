#!/usr/bin/env bash
# The soak of issue 10 (not run by CI): `bash scripts/soak.sh [mgpass-soak args...]`
#
#   bash scripts/soak.sh                      # 10 minutes at 200 events/s (two endpoints each)
#   bash scripts/soak.sh --minutes 2 --rate 100
#
# Builds the release processor and mgpass-soak, makes sure a Kafka broker answers on
# 127.0.0.1:${KAFKA_PORT:-9092} (an existing one is used and left running; otherwise one is
# started with scripts/kafka.sh and stopped again on exit), runs the soak against it and keeps
# its output in target/tmp/soak-output.txt (docs/soak.md holds a committed run). Exits non-zero
# when a delivery is missing, a signature is bad, or memory grew between the two halves.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${SCRIPT_DIR}/.." && pwd)"
# shellcheck source=scripts/broker-lib.sh
source "${SCRIPT_DIR}/broker-lib.sh"

cd "${REPO_ROOT}"
cargo build --release -p mgpass-webhooks -p mgpass-bench --bins
ensure_broker soak.sh
mkdir -p target/tmp
./target/release/mgpass-soak --bootstrap-servers "127.0.0.1:${KAFKA_PORT}" "$@" \
  | tee target/tmp/soak-output.txt
