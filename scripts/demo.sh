#!/usr/bin/env bash
# Runs the product locally after scripts/setup.sh: the demo receiver (which verifies signatures
# with the guide's code), the processor, and one sample event. Watch the receiver print
# VERIFIED; then press Ctrl-C to stop both (produce more with
# `./target/release/mgpass-webhooks --config config/local.toml produce-sample`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bin=./target/release/mgpass-webhooks
[[ -x "$bin" && -s .local/demo-secret ]] || { echo "run 'bash scripts/setup.sh' first" >&2; exit 1; }

# Own sessions (setsid): a Ctrl-C reaches only this script, which then stops each child once.
WEBHOOK_SECRET="$(cat .local/demo-secret)" setsid node scripts/demo-receiver.js 8080 &
receiver=$!
setsid "$bin" --config config/local.toml run &
processor=$!
cleanup() {
  kill -TERM "$processor" 2>/dev/null || true
  wait "$processor" 2>/dev/null || true
  kill -TERM "$receiver" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for _ in $(seq 1 120); do
  if curl -fsS http://127.0.0.1:9464/readyz >/dev/null 2>&1; then break; fi
  kill -0 "$processor" 2>/dev/null || { echo "the processor exited" >&2; exit 1; }
  sleep 0.5
done
"$bin" --config config/local.toml produce-sample >/dev/null
echo "sample event produced; the receiver prints VERIFIED when the signed webhook arrives (Ctrl-C stops)"
wait "$processor"
