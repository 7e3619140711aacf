#!/usr/bin/env bash
# Runs the whole test suite: installs missing servers (scripts/install-deps.sh), then
# `cargo test --workspace --locked`. The tests start their own throwaway PostgreSQL
# and Redis; extra arguments go to cargo test (e.g. `bash scripts/test.sh -p edumind-schema`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
exec cargo test --workspace --locked "$@"
