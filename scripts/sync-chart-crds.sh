#!/usr/bin/env bash
# Copies every generated CRD (crds/generated/*.yaml) into the Helm chart's crds/ directory,
# byte for byte, and removes chart CRDs that no longer have a generated source. New CRD
# files (SchoolBackup, SchoolRestore, …) are picked up without editing this script.
#   bash scripts/sync-chart-crds.sh          # copy
#   bash scripts/sync-chart-crds.sh --check  # fail (exit 1) if the chart is out of date
set -euo pipefail
cd "$(dirname "$0")/.."
src=crds/generated dst=charts/edumind/crds
check=false
[ "${1:-}" = "--check" ] && check=true
mkdir -p "$dst"
stale=0
for f in "$src"/*.yaml; do
    name=$(basename "$f")
    if ! cmp -s "$f" "$dst/$name"; then
        stale=1
        if $check; then echo "chart CRD out of date: $dst/$name (run scripts/sync-chart-crds.sh)" >&2
        else cp "$f" "$dst/$name"; echo "copied $name" >&2; fi
    fi
done
for f in "$dst"/*.yaml; do
    [ -e "$f" ] || continue
    name=$(basename "$f")
    if [ ! -e "$src/$name" ]; then
        stale=1
        if $check; then echo "chart CRD without a generated source: $f" >&2
        else rm "$f"; echo "removed $name" >&2; fi
    fi
done
if $check && [ "$stale" -ne 0 ]; then exit 1; fi
exit 0
