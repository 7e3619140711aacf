#!/usr/bin/env bash
# The benchmark anyone can re-run (issue 15). Starts its own PostgreSQL and Redis (free
# loopback ports, one temporary directory, removed on exit, Ctrl-C included), provisions a
# school with the operator's local mode (`edumind-local`), loads data through the data
# plane's API, starts the release data plane, and measures every target of issue 15
# beside its baseline in the same run, alternating target and baseline (A B A B …):
#   cache hits (roster, course questions, assessment)  vs warp serving the same bytes
#     (`edumind-bench-baseline`, crate bench/), plus redis-benchmark GET of the same size;
#   uncached reads and the roster PUT                   vs the same SQL in pgbench (the
#     statements are captured from PostgreSQL's statement log for one real request);
#   fleet and backup/restore                            the `BENCH ` lines of
#     dataplane/tests/fleet_bench.rs and operator/benches/backup_throughput.rs, if present.
# Writes docs/benchmarks/README.md (table, machine, load, commit, pinning), ratios.png,
# results.txt (every BENCH line) and sql/ (the pgbench scripts).
#
#   bash scripts/bench.sh            full run (3 rounds of 8 s per side; ~10-15 min on 2 cores)
#   bash scripts/bench.sh --quick    smoke run (2 rounds of 2 s; fleet/backup programs skipped)
# Environment: BENCH_ROUNDS, BENCH_DURATION (s), BENCH_CONNECTIONS (50), BENCH_EXTRA=0|1
# (run the fleet/backup programs), BENCH_PROFILE=0|1 (perf profiles of the data plane, on
# by default in a full run when perf is installed), BENCH_OUT (docs/benchmarks).
# Every pair also records the CPU each server process spent per request (from /proc).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
MODE=full
[ "${1:-}" = "--quick" ] && MODE=quick
if [ "$MODE" = quick ]; then
    ROUNDS=${BENCH_ROUNDS:-2}; DUR=${BENCH_DURATION:-2}; WARM=1; EXTRA=${BENCH_EXTRA:-0}
else
    ROUNDS=${BENCH_ROUNDS:-3}; DUR=${BENCH_DURATION:-8}; WARM=2; EXTRA=${BENCH_EXTRA:-1}
fi
CONN=${BENCH_CONNECTIONS:-50}
OUT=${BENCH_OUT:-$ROOT/docs/benchmarks}
STARTED=$(date +%s)
# Whether the code measured differs from the commit (the run's own output, docs/benchmarks,
# does not count: it is rewritten at the end).
DIRTY=$(git status --porcelain --untracked-files=no -- . ":(exclude)${OUT#"$ROOT"/}" 2>/dev/null | head -1)
say() { printf '[bench %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

# ---------------------------------------------------------------- what it needs
bash scripts/install-deps.sh --servers
missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v pgbench >/dev/null 2>&1 || missing+=(postgresql-client)
command -v redis-benchmark >/dev/null 2>&1 || missing+=(redis-tools)
command -v taskset >/dev/null 2>&1 || missing+=(util-linux)
if [ "${#missing[@]}" -gt 0 ]; then
    say "installing: ${missing[*]}"
    sudo=""; [ "$(id -u)" -ne 0 ] && sudo=sudo
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! python3 -c 'import matplotlib' >/dev/null 2>&1; then
    say "installing: matplotlib (pip)"
    python3 -m pip install --quiet --disable-pip-version-check matplotlib
fi

say "building release binaries (data plane, edumind-local, baseline server)"
cargo build --release --locked -p edumind-dataplane -p edumind-local -p edumind-bench >&2
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
PY="python3 $ROOT/bench/bench.py"

# ---------------------------------------------------------------- pinning
NCPU=$(nproc)
if [ "$NCPU" -ge 2 ]; then
    half=$((NCPU / 2))
    SRV_CPUS="0-$((half - 1))"; LG_CPUS="$half-$((NCPU - 1))"
    [ "$half" -eq 1 ] && SRV_CPUS=0
    [ "$half" -eq $((NCPU - 1)) ] && LG_CPUS=$half
    SRV="taskset -c $SRV_CPUS"; LG="taskset -c $LG_CPUS"
    LG_THREADS=$((NCPU - half)); [ "$LG_THREADS" -gt 4 ] && LG_THREADS=4
    PINNING="servers (PostgreSQL, Redis, data plane, warp baseline) on CPU $SRV_CPUS, load generators (wrk, pgbench, redis-benchmark) on CPU $LG_CPUS, with \`taskset\`; the same pinning for every target and its baseline"
else
    SRV=""; LG=""; LG_THREADS=1
    PINNING="none (1 CPU): servers and load generators share it"
fi

# ---------------------------------------------------------------- servers, cleaned up on exit
WORK=$(mktemp -d /tmp/edumind-bench-XXXXXX)
chmod 755 "$WORK"
PIDS=()
PGBIN=""
cleanup() {
    trap - EXIT INT TERM
    say "stopping servers, removing $WORK"
    if [ -n "$PGBIN" ] && [ -f "$WORK/pg/data/postmaster.pid" ]; then
        $AS_PG "$PGBIN/pg_ctl" -D "$WORK/pg/data" stop -m immediate >/dev/null 2>&1 || true
    fi
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)

# PostgreSQL: the test harness's settings (tests/src/postgres.rs), plus a JSON log that
# the SQL capture reads.
PGBIN=$(dirname "$(readlink -f "$(command -v initdb 2>/dev/null || ls /usr/lib/postgresql/*/bin/initdb | tail -1)")")
AS_PG=""
mkdir -p "$WORK/pg/log" "$WORK/redis" "$WORK/secrets" "$WORK/schools" "$WORK/pgb"
if [ "$(id -u)" -eq 0 ]; then
    chown -R postgres: "$WORK/pg"
    AS_PG="setpriv --reuid=postgres --regid=postgres --init-groups"
fi
PGPW=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
printf '%s' "$PGPW" > "$WORK/pg/pwfile"
[ -n "$AS_PG" ] && chown postgres: "$WORK/pg/pwfile"
$AS_PG "$PGBIN/initdb" -D "$WORK/pg/data" -U postgres -E UTF8 --locale=C --no-sync \
    --auth-local=trust --auth-host=scram-sha-256 --pwfile="$WORK/pg/pwfile" >/dev/null
rm -f "$WORK/pg/pwfile"
PGPORT=$(free_port)
PG_SETTINGS="fsync=off, synchronous_commit=off, full_page_writes=off, shared_buffers=64MB, max_connections=400: the test harness's settings"
# shellcheck disable=SC2086
$SRV $AS_PG "$PGBIN/postgres" -D "$WORK/pg/data" -p "$PGPORT" -k "$WORK/pg" \
    -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off \
    -c full_page_writes=off -c max_connections=400 -c shared_buffers=64MB \
    -c max_locks_per_transaction=256 -c log_min_messages=warning \
    -c logging_collector=on -c log_destination=jsonlog -c log_directory="$WORK/pg/log" \
    -c log_filename=pg.log >"$WORK/pg/stdout" 2>&1 &
PG_PID=$!
PIDS+=($!)
REDISPORT=$(free_port)
# shellcheck disable=SC2086
$SRV redis-server --port "$REDISPORT" --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$WORK/redis" --daemonize no >"$WORK/redis/log" 2>&1 &
REDIS_PID=$!
PIDS+=($!)
for _ in $(seq 1 100); do
    "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$PGPORT" && redis-cli -p "$REDISPORT" ping >/dev/null 2>&1 && break
    sleep 0.1
done
"$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$PGPORT" || { cat "$WORK/pg/stdout" >&2; exit 1; }
export PGPASSWORD=$PGPW   # psql as the admin (not in argv); pgbench sets its own
PSQL_ADMIN=(psql -X -q -h 127.0.0.1 -p "$PGPORT" -U postgres -d postgres)
say "PostgreSQL on 127.0.0.1:$PGPORT, Redis on 127.0.0.1:$REDISPORT ($WORK)"

# ---------------------------------------------------------------- provision (as the demo does)
cat >"$WORK/servers.yaml" <<EOF
servers:
  - name: local
    host: 127.0.0.1
    port: $PGPORT
    adminSecret: pg-admin
    default: true
EOF
cat >"$WORK/schools/bench-high.yaml" <<'EOF'
apiVersion: edumind.ai/v1alpha1
kind: School
metadata:
  name: bench-high
  namespace: bench
spec:
  code: BNH
  name: Benchmark High School
  address: 1 Bench St, Springfield
  contactEmail: office@bench.example
  active: true
  reclaimPolicy: delete
  backup:
    schedule: "0 2 * * *"
    retentionDays: 7
EOF
EDUMIND_ADMIN_URL="postgres://postgres:$PGPW@127.0.0.1:$PGPORT/postgres" \
    "$BIN/edumind-local" --config "$WORK/servers.yaml" --schools "$WORK/schools" \
    --out "$WORK/secrets" --json >"$WORK/provision.json"
SCHOOL=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["schools"][0]["school_id"])' "$WORK/provision.json")
say "provisioned school $SCHOOL"

# The tenant's own credentials (for pgbench, which connects as the data plane does).
read -r T_USER T_DB T_PASS < <(python3 - "$WORK/secrets" <<'EOF'
import base64, glob, sys, yaml
for f in glob.glob(sys.argv[1] + "/*"):
    s = yaml.safe_load(open(f))
    d = {k: base64.b64decode(v).decode() for k, v in (s.get("data") or {}).items()}
    d.update(s.get("stringData") or {})
    if "password" in d:
        print(d["username"], d.get("database") or d.get("dbname"), d["password"])
        break
EOF
)

# ---------------------------------------------------------------- the data plane
DPPORT=$(free_port); ADMINPORT=$(free_port); BASEPORT=$(free_port)
SECRET=$(head -c 36 /dev/urandom | base64 | tr -d '/+=')
cat >"$WORK/dp.toml" <<EOF
listen = "127.0.0.1:$DPPORT"
admin_listen = "127.0.0.1:$ADMINPORT"
tenants_dir = "$WORK/secrets"
tenant_poll_ms = 500
[redis]
url = "redis://127.0.0.1:$REDISPORT"
[auth]
hs256_secret = "$SECRET"
EOF
chmod 600 "$WORK/dp.toml"
# shellcheck disable=SC2086
$SRV "$BIN/edumind-dataplane" --config "$WORK/dp.toml" >"$WORK/dp.log" 2>&1 &
DP_PID=$!
PIDS+=($!)
BASE="http://127.0.0.1:$DPPORT"
say "data plane on $BASE; loading data through the API"
$PY seed "$BASE" "$SECRET" "$SCHOOL" "$WORK/seed.json" >"$WORK/sizes.json"
say "reply sizes: $(cat "$WORK/sizes.json")"
size() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["sizes"][sys.argv[2]])' "$WORK/seed.json" "$1"; }
path() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["paths"][sys.argv[2]])' "$WORK/seed.json" "$1"; }
token() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["tokens"][sys.argv[2]])' "$WORK/seed.json" "$1"; }
S_ROSTER=$(size roster); S_QUESTIONS=$(size questions); S_ASSESSMENT=$(size assessment)

# shellcheck disable=SC2086
$SRV "$BIN/edumind-bench-baseline" --listen "127.0.0.1:$BASEPORT" \
    --size "$S_ROSTER" --size "$S_QUESTIONS" --size "$S_ASSESSMENT" >"$WORK/baseline.log" 2>&1 &
BASE_PID=$!
PIDS+=($!)
for _ in $(seq 1 50); do curl -sf "http://127.0.0.1:$BASEPORT/hello" >/dev/null && break; sleep 0.1; done

# wrk scripts: the token in a header set by Lua (not on the command line).
lua_get() { # NAME TOKEN
    printf 'wrk.method = "GET"\nwrk.headers["Authorization"] = "Bearer %s"\n' "$2" >"$WORK/$1.lua"
}
lua_get teacher "$(token teacher)"
lua_get school_admin "$(token school_admin)"
python3 - "$WORK/seed.json" "$WORK/put_roster.lua" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
body = json.dumps(s["roster_body"])
open(sys.argv[2], "w").write(
    'wrk.method = "PUT"\n'
    f'wrk.headers["Authorization"] = "Bearer {s["tokens"]["teacher"]}"\n'
    'wrk.headers["Content-Type"] = "application/json"\n'
    f"wrk.body = {json.dumps(body)}\n")
EOF

# ---------------------------------------------------------------- measuring
RESULTS="$WORK/results.txt"
: >"$RESULTS"
wrk_run() { # SECONDS LUA URL -> JSON on stdout
    local f="$WORK/wrk.out"
    # shellcheck disable=SC2086
    $LG wrk -t "$LG_THREADS" -c "$CONN" -d "${1}s" --latency -s "$2" "$3" >"$f" 2>&1 || true
    $PY wrk "$f"
}
pgb_run() { # SECONDS NAME -> JSON on stdout
    local defs=() d
    while IFS= read -r d; do defs+=(-D "$d"); done < <(python3 -c 'import json,sys; [print(x) for x in json.load(open(sys.argv[1]))]' "$WORK/sql/$2.defines.json")
    rm -f "$WORK/pgb/log"*
    # shellcheck disable=SC2086
    PGPASSWORD="$T_PASS" $LG pgbench -n -M prepared -c "$CONN" -j "$LG_THREADS" -T "$1" \
        -h 127.0.0.1 -p "$PGPORT" -U "$T_USER" -f "$WORK/sql/$2.sql" "${defs[@]}" \
        -l --log-prefix="$WORK/pgb/log" "$T_DB" >"$WORK/pgb.out" 2>&1 || true
    $PY pgbench "$WORK/pgb.out" "$WORK/pgb/log"
}
redis_run() { # SIZE -> JSON
    local n=$((DUR * 60000))
    # shellcheck disable=SC2086
    $LG redis-benchmark -h 127.0.0.1 -p "$REDISPORT" -t get -d "$1" -c "$CONN" -n "$n" --csv \
        >"$WORK/rb.csv" 2>/dev/null || true
    $PY redisbench "$WORK/rb.csv"
}
cpu_sample() { # -> JSON: cumulative CPU seconds of each server process
    $PY cpu "$PG_PID" "$REDIS_PID" "$DP_PID" "$BASE_PID"
}
# BENCH_PROFILE=1 (the default in a full run when perf is present): one more round of the
# target under `perf record` on the data plane; the hottest symbols go to profiles/NAME.txt.
PROFILE=${BENCH_PROFILE:-$([ "$MODE" = full ] && command -v perf >/dev/null 2>&1 && echo 1 || echo 0)}
mkdir -p "$WORK/profiles"
profile_round() { # NAME LUA URL
    [ "$PROFILE" = 1 ] || return 0
    perf record -q -F 999 -g -o "$WORK/perf-$1.data" -p "$DP_PID" -- sleep "$DUR" >/dev/null 2>&1 &
    local perf_pid=$!
    wrk_run "$DUR" "$2" "$3" >/dev/null
    wait "$perf_pid" 2>/dev/null || true
    {
        echo "# perf profile of the data plane during one extra ${DUR}-second round of $1"
        echo "# (perf record -F 999 -g -p <data plane>; perf report --no-children --sort dso,symbol)"
        perf report -i "$WORK/perf-$1.data" --stdio --no-children --sort dso,symbol \
            --percent-limit 0.5 -g none 2>/dev/null | grep '%' | sed -E 's/ {2,}/  /g; s/[ -]+$//' | head -60
    } >"$WORK/profiles/$1.txt" || true
    rm -f "$WORK/perf-$1.data"
}

check_nonempty() { # JSON NAME
    python3 -c 'import json,sys; d=json.loads(sys.argv[1]); sys.exit(0 if d.get("rps") else 1)' "$1" \
        || { say "measurement of $2 failed: $1"; return 1; }
}

# Cache hit NAME KEY: A = data plane, B = warp same bytes, C = redis-benchmark same size.
cache_hit() {
    local name=$1 key=$2 size url rounds="$WORK/rounds-$1.jsonl"
    size=$(size "$key"); url="$BASE$(path "$key")"
    say "$name: ${size}-byte reply; warm-up"
    wrk_run "$WARM" "$WORK/teacher.lua" "$url" >/dev/null
    wrk_run "$WARM" "$WORK/teacher.lua" "http://127.0.0.1:$BASEPORT/bytes/$size" >/dev/null
    : >"$rounds"
    for r in $(seq 1 "$ROUNDS"); do
        c0=$(cpu_sample)
        a=$(wrk_run "$DUR" "$WORK/teacher.lua" "$url")
        c1=$(cpu_sample)
        b=$(wrk_run "$DUR" "$WORK/teacher.lua" "http://127.0.0.1:$BASEPORT/bytes/$size")
        c2=$(cpu_sample)
        c=$(redis_run "$size")
        check_nonempty "$a" "$name" || true; check_nonempty "$b" "$name baseline" || true
        echo "{\"a\": $a, \"b\": $b, \"c\": $c, \"cpu_a\": {\"before\": $c0, \"after\": $c1}, \"cpu_b\": {\"before\": $c1, \"after\": $c2}}" >>"$rounds"
        say "  round $r: $(echo "$a" | cut -c1-60) | warp $(echo "$b" | cut -c1-40)"
    done
    profile_round "$name" "$WORK/teacher.lua" "$url"
    $PY line "$name" "req/s" "warp, same ${size} bytes from memory" ">= 0.5, p99 <= 10 ms" \
        "$rounds" "${size}-byte body; teacher token; ratio = value/baseline" b >>"$RESULTS"
    $PY line "redis-get-$key" "req/s" "redis-benchmark GET, ${size}-byte value" "" \
        "$rounds" "reference: the cache hit's value over redis-benchmark GET of the same size (no target)" c >>"$RESULTS"
}

# SQL capture for the pgbench baseline: the statements one real request runs.
capture() { # NAME LUA(token file key) METHOD PATH [BODYFILE]
    local name=$1 tok=$2 method=$3 p=$4 body=${5:-}
    printf 'Authorization: Bearer %s\n' "$tok" >"$WORK/auth-$name.hdr"   # not in argv
    local curl=(curl -sf -o /dev/null -X "$method" -H "@$WORK/auth-$name.hdr" "$BASE$p")
    [ -n "$body" ] && curl+=(-H "Content-Type: application/json" --data-binary "@$body")
    "${curl[@]}"; "${curl[@]}"   # warm: connections, membership cache
    $PY capture "$WORK/pg/log" "$(python3 -c 'import json,sys; print(json.dumps(sys.argv[1:]))' "${PSQL_ADMIN[@]}")" \
        "$(python3 -c 'import json,sys; print(json.dumps(sys.argv[1:]))' "${curl[@]}")" "$WORK/sql/$name" >&2
}

# Uncached NAME LUA URL TARGET NOTES: A = data plane, B = the same SQL in pgbench.
vs_pgbench() {
    local name=$1 lua=$2 url=$3 target=$4 notes=$5 rounds="$WORK/rounds-$1.jsonl"
    say "$name: warm-up"
    wrk_run "$WARM" "$lua" "$url" >/dev/null
    pgb_run "$WARM" "$name" >/dev/null
    : >"$rounds"
    for r in $(seq 1 "$ROUNDS"); do
        c0=$(cpu_sample)
        a=$(wrk_run "$DUR" "$lua" "$url")
        c1=$(cpu_sample)
        b=$(pgb_run "$DUR" "$name")
        c2=$(cpu_sample)
        check_nonempty "$a" "$name" || true; check_nonempty "$b" "$name pgbench" || true
        echo "{\"a\": $a, \"b\": $b, \"cpu_a\": {\"before\": $c0, \"after\": $c1}, \"cpu_b\": {\"before\": $c1, \"after\": $c2}}" >>"$rounds"
        say "  round $r: $(echo "$a" | cut -c1-60) | pgbench $(echo "$b" | cut -c1-40)"
    done
    profile_round "$name" "$lua" "$url"
    $PY line "$name" "req/s" "the same SQL as a pgbench transaction (tps)" "$target" \
        "$rounds" "$notes" b >>"$RESULTS"
}

mkdir -p "$WORK/sql"
TEACHER=$(token teacher); SADMIN=$(token school_admin)
python3 -c 'import json,sys; print(json.dumps(json.load(open(sys.argv[1]))["roster_body"]))' "$WORK/seed.json" >"$WORK/roster.json"
say "capturing the SQL of each uncached request and the roster PUT"
capture uncached-school "$TEACHER" GET "$(path school)"
capture uncached-attempt "$TEACHER" GET "$(path attempt)"
capture uncached-users20 "$SADMIN" GET "$(path users20)"
capture put-roster "$TEACHER" PUT "$(path roster)" "$WORK/roster.json"

cache_hit cache-hit-roster roster
cache_hit cache-hit-questions questions
cache_hit cache-hit-assessment assessment
vs_pgbench uncached-school "$WORK/teacher.lua" "$BASE$(path school)" ">= 0.8" \
    "single row, teacher token; pgbench: BEGIN; the captured statement; COMMIT"
vs_pgbench uncached-attempt "$WORK/teacher.lua" "$BASE$(path attempt)" ">= 0.8" \
    "single row (attempt with 5 responses), teacher token; pgbench: the captured SQL in BEGIN/COMMIT"
vs_pgbench uncached-users20 "$WORK/school_admin.lua" "$BASE$(path users20)" ">= 0.6" \
    "20-row list, school admin token; pgbench: the captured SQL in BEGIN/COMMIT"
vs_pgbench put-roster "$WORK/put_roster.lua" "$BASE$(path roster)" "" \
    "30 students, the same body every time; pgbench: the captured transaction (no target in issue 15)"
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------- programs of other helpers
extra_note=""
if [ "$EXTRA" = 1 ]; then
    if [ -f dataplane/tests/fleet_bench.rs ] && ! grep -q 'BENCH ' dataplane/tests/fleet_bench.rs; then
        say "fleet: dataplane/tests/fleet_bench.rs prints no BENCH line (not measured)"
    elif [ -f dataplane/tests/fleet_bench.rs ]; then
        say "fleet: cargo test -p edumind-dataplane --release --test fleet_bench"
        # Built first, untimed: the timeout bounds the measurement, not a cold release build
        # (a build inside the timeout left the first full run without any fleet line).
        cargo test -p edumind-dataplane --release --locked --test fleet_bench --no-run >&2
        timeout 1200 cargo test -p edumind-dataplane --release --locked --test fleet_bench -- --ignored --nocapture \
            2>&1 | tee "$WORK/fleet.log" | grep '^BENCH ' >>"$RESULTS" || say "fleet_bench printed no BENCH line"
    else
        say "fleet: dataplane/tests/fleet_bench.rs is absent (not measured)"
    fi
    if [ -f operator/benches/backup_throughput.rs ] && ! grep -q 'BENCH ' operator/benches/backup_throughput.rs; then
        # A long release build and a 120 MB database for nothing: say so instead.
        say "backup: operator/benches/backup_throughput.rs prints no BENCH line yet (not measured)"
    elif [ -f operator/benches/backup_throughput.rs ]; then
        say "backup: cargo bench -p edumind-operator --bench backup_throughput"
        cargo bench -p edumind-operator --locked --bench backup_throughput --no-run >&2
        timeout 1200 env -u PGPASSWORD cargo bench -p edumind-operator --locked --bench backup_throughput \
            2>&1 | tee "$WORK/backup.log" | grep '^BENCH ' >>"$RESULTS" || say "backup_throughput printed no BENCH line"
    else
        say "backup: operator/benches/backup_throughput.rs is absent (not measured)"
    fi
else
    extra_note=" (fleet and backup programs skipped in this mode)"
fi

# ---------------------------------------------------------------- the report
ELAPSED=$(( $(date +%s) - STARTED ))
mkdir -p "$OUT/sql"
cp "$RESULTS" "$OUT/results.txt"
rm -rf "$OUT/profiles"
if ls "$WORK"/profiles/*.txt >/dev/null 2>&1; then
    mkdir -p "$OUT/profiles"
    cp "$WORK"/profiles/*.txt "$OUT/profiles/"
fi
for f in "$WORK"/sql/*.literal.sql; do cp "$f" "$OUT/sql/$(basename "$f" .literal.sql).sql"; done
python3 - "$WORK/meta.json" <<EOF
import json, subprocess, sys
def sh(c):
    return subprocess.run(c, shell=True, capture_output=True, text=True).stdout.strip()
lscpu = sh("lscpu")
model = next((l.split(":", 1)[1].strip() for l in lscpu.splitlines() if l.startswith("Model name")), "unknown")
json.dump({
    "mode": "$MODE$extra_note", "rounds": $ROUNDS, "duration": $DUR, "warmup": $WARM,
    "connections": $CONN,
    "commit": sh("git rev-parse --short HEAD"), "dirty": bool("""$DIRTY"""),
    "date": sh("date -u '+%Y-%m-%d %H:%M UTC'"),
    "elapsed": "%d min %02d s" % divmod($ELAPSED, 60),
    "cpu_model": model, "cores": sh("nproc"),
    "memory": sh("free -h | awk '/^Mem:/ {print \$2}'"),
    "load_before": "$LOAD_BEFORE", "load_after": "$LOAD_AFTER",
    "pinning": "$PINNING",
    "pg_version": sh("'$PGBIN/postgres' --version").split()[-1],
    "pg_settings": "$PG_SETTINGS",
    "redis_version": sh("redis-server --version").split()[2].replace("v=", ""),
    "sizes": "roster $S_ROSTER B, course questions $S_QUESTIONS B, assessment $S_ASSESSMENT B",
}, open(sys.argv[1], "w"))
EOF
$PY report "$RESULTS" "$WORK/meta.json" "$OUT"
say "done in $((ELAPSED / 60)) min $((ELAPSED % 60)) s: $OUT/README.md"
grep '^BENCH ' "$RESULTS" >&2 || true
