#!/usr/bin/env bash
# Checks that every metric the chart's Grafana dashboard and alerts query is exported by the
# running binaries (scripts/check_dashboard.py starts both and reads /metrics). Run by .ci/run
# after the tests, reusing their debug binaries; EDUMIND_OPERATOR_BIN / EDUMIND_DATAPLANE_BIN
# override, else they are built.
set -euo pipefail
cd "$(dirname "$0")/.."
op=${EDUMIND_OPERATOR_BIN:-}
dp=${EDUMIND_DATAPLANE_BIN:-}
if [ -z "$op" ] || [ -z "$dp" ]; then
    cargo build --quiet --locked -p edumind-operator --bin edumind-operator -p edumind-dataplane --bin edumind-dataplane
    op=${op:-target/debug/edumind-operator}
    dp=${dp:-target/debug/edumind-dataplane}
fi
echo "--- the dashboard's and the alerts' metrics are exported by the binaries"
python3 scripts/check_dashboard.py "$op" "$dp"
