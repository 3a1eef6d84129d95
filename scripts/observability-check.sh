#!/usr/bin/env bash
# Static checks of the observability files, with the real tools:
#   - installs Debian's `prometheus` package (Prometheus 2.42 and promtool) when it is missing
#     (scripts/ensure-prometheus.sh);
#   - `promtool check rules` and `promtool test rules` on deploy/prometheus/rules/;
#   - scripts/check-dashboard.py on deploy/grafana/dashboards/ (structure, data source variable,
#     metric names against src/metrics.rs and the README).
# The live check (a real Prometheus scraping the processor) is tests/observability.rs, run by
# `cargo test` through scripts/test.sh, which makes sure of the same `prometheus` binary.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/ensure-prometheus.sh
promtool --version 2>&1 | head -n 1

rules_dir=deploy/prometheus/rules
promtool check rules "${rules_dir}"/*.rules.yml
(cd "${rules_dir}" && for t in *.test.yml; do promtool test rules "${t}"; done)
python3 scripts/check-dashboard.py
echo "[observability-check] OK"
