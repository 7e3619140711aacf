#!/usr/bin/env bash
# Checks the chart's alerts (run by .ci/run): renders the PrometheusRule with monitoring on,
# extracts its rule groups, runs `promtool check rules` on them and `promtool test rules`
# with charts/edumind/ci/alerts-test.yaml (one firing and one quiet case per alert).
# Installs Debian's `prometheus` package (for promtool) if promtool is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
CHART=charts/edumind
. scripts/chart-tools.sh

if ! command -v promtool >/dev/null 2>&1; then
    echo "installing: prometheus (for promtool)" >&2
    sudo=""; [ "$(id -u)" -ne 0 ] && sudo=sudo
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    $sudo service prometheus stop >/dev/null 2>&1 || true
fi

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
helm template edumind "$CHART" -n edumind-system \
    --set prometheusRule.enabled=true --show-only templates/prometheusrule.yaml >"$out/rule.yaml"
python3 - "$out/rule.yaml" "$out/rules.yaml" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
assert len(docs) == 1 and docs[0]["kind"] == "PrometheusRule", docs
spec = docs[0]["spec"]
names = [r["alert"] for g in spec["groups"] for r in g["rules"]]
print("  alerts:", ", ".join(names))
yaml.safe_dump(spec, open(sys.argv[2], "w"), sort_keys=False)
PY
echo "--- promtool check rules"
promtool check rules "$out/rules.yaml"
echo "--- promtool test rules (charts/edumind/ci/alerts-test.yaml)"
cp "$CHART/ci/alerts-test.yaml" "$out/"
# Every alert must have a case that expects it to fire and one that expects silence.
python3 - "$out/rules.yaml" "$out/alerts-test.yaml" <<'PY'
import sys, yaml
alerts = {r["alert"] for g in yaml.safe_load(open(sys.argv[1]))["groups"] for r in g["rules"]}
tests = yaml.safe_load(open(sys.argv[2]))["tests"]
firing = {c["alertname"] for t in tests for c in t.get("alert_rule_test", []) if c.get("exp_alerts")}
quiet = {c["alertname"] for t in tests for c in t.get("alert_rule_test", []) if not c.get("exp_alerts")}
for kind, tested in (("firing", firing), ("quiet", quiet)):
    if alerts - tested:
        sys.exit(f"alerts with no {kind} test case: {sorted(alerts - tested)}")
PY
(cd "$out" && promtool test rules alerts-test.yaml)
