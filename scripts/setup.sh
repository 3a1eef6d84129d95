#!/usr/bin/env bash
# Sets up a local mgpass-webhooks: starts a local Kafka (scripts/kafka.sh), builds the release
# binary, creates the topics and a demo subscription pointing at the demo receiver
# (http://127.0.0.1:8080/webhook). The demo secret is kept in .local/demo-secret.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/kafka.sh start
cargo build --release -p mgpass-webhooks
bin=./target/release/mgpass-webhooks
"$bin" --config config/local.toml setup-topics
mkdir -p .local
if [[ ! -s .local/demo-secret ]]; then
  head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > .local/demo-secret
fi
DEMO_SECRET="$(cat .local/demo-secret)" "$bin" --config config/local.toml subscriptions put \
  --id sub_demo --url http://127.0.0.1:8080/webhook --event-type '*' --secret-env DEMO_SECRET
echo
echo "Set up. Now run: bash scripts/demo.sh"
