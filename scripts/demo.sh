#!/usr/bin/env bash
# The local demo: installs the PostgreSQL and Redis server binaries if missing
# (scripts/install-deps.sh --servers), then builds and runs `edumind-demo`, which starts
# throwaway servers, provisions two demo schools and the self-service tenant with the
# operator's local mode, loads demo data, starts the data plane and prints curl commands.
# Ctrl-C stops everything and removes every file. Extra arguments go to edumind-demo
# (e.g. `bash scripts/demo.sh --port 9090`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh --servers
exec cargo run --locked -p edumind-demo -- "$@"
