#!/usr/bin/env bash
# Checks operator/Dockerfile and dataplane/Dockerfile without a Docker engine (CI has
# none). For each Dockerfile:
#   * builder stage FROM rust:<the toolchain of rust-toolchain.toml>-bookworm, final stage
#     FROM debian:bookworm-slim, no `latest` tags;
#   * every `COPY --from=<stage>` source is produced in that stage by
#     `install … target/release/<bin> <source>` after `cargo build --release --locked
#     -p <package> --bin <bin>`, and <package> really has a binary <bin> (cargo metadata)
#     whose debug build target/debug/<bin> answers --version (CI's test run built it; it
#     is built here only when missing). A release build would add ~10 minutes on CI's 2
#     cores and changes only optimisation, so the debug path stands in for target/release;
#   * the final stage runs as a numeric non-root USER (uid and gid > 0);
#   * the operator image installs postgresql-client-${PG_MAJOR} from the PGDG repository
#     with PG_MAJOR >= the newest PostgreSQL major the project tests against, and points
#     EDUMIND_PG_BINDIR at it;
#   * .dockerignore keeps target/ and .tools/ out of the context but nothing a build needs.
# Arguments: Dockerfiles to check instead of the two (a path containing "operator" gets
# the operator's checks); the script's own self-test uses this.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--self-test" ]; then
    # A Dockerfile that runs as root, from an unpinned builder, without the pg tools and
    # copying a binary no stage builds must fail each check.
    dir=$(mktemp -d)
    trap 'rm -rf "$dir"' EXIT
    sed -e 's/^USER 65532:65532/USER root/' -e 's/^FROM rust:1.95-bookworm/FROM rust:latest/' \
        -e 's/postgresql-client-\${PG_MAJOR}/postgresql-client/' \
        -e 's#/out/edumind-operator /usr/local#/out/edumind-operatorx /usr/local#' \
        operator/Dockerfile >"$dir/operator.Dockerfile"
    if bash "$0" "$dir/operator.Dockerfile" >"$dir/log" 2>&1; then
        echo "  FAIL a broken Dockerfile passed" >&2; exit 1
    fi
    for expect in "not a numeric non-root" "builder is rust:latest" "postgresql-client-\${PG_MAJOR} is not installed" "is not installed from target/release/"; do
        grep -qF -- "$expect" "$dir/log" || { echo "  FAIL self-test did not report: $expect" >&2; cat "$dir/log" >&2; exit 1; }
    done
    echo "  self-test: a broken Dockerfile fails all four checks"
    exit 0
fi
python3 - "$@" <<'PY'
import json, os, re, shlex, subprocess, sys

problems = []
def fail(msg):
    problems.append(msg)
    print(f"  FAIL {msg}", file=sys.stderr)

toolchain = re.search(r'channel\s*=\s*"(\d+\.\d+)', open("rust-toolchain.toml").read()).group(1)
# The newest PostgreSQL major the project runs (harness server); the client must not be older.
MIN_PG_MAJOR = 15

def instructions(path):
    """Dockerfile instructions as (keyword, text), continuation lines joined."""
    out, buf = [], ""
    for line in open(path):
        s = line.rstrip("\n")
        if not buf and (not s.strip() or s.lstrip().startswith("#")):
            continue
        if s.lstrip().startswith("#"):
            continue
        if s.endswith("\\"):
            buf += s[:-1] + " "
            continue
        buf += s
        kw, _, rest = buf.strip().partition(" ")
        out.append((kw.upper(), rest.strip()))
        buf = ""
    return out

def stages(instrs):
    result, cur = [], None
    for kw, rest in instrs:
        if kw == "FROM":
            m = re.match(r"(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?", rest, re.I)
            cur = {"image": m.group(1), "name": m.group(2), "instrs": []}
            result.append(cur)
        elif cur is not None:
            cur["instrs"].append((kw, rest))
    return result

members = json.loads(subprocess.run(
    ["cargo", "metadata", "--no-deps", "--format-version", "1", "--locked"],
    check=True, capture_output=True, text=True).stdout)
bins = {(p["name"], t["name"]) for p in members["packages"] for t in p["targets"] if "bin" in t["kind"]}

for dockerfile in sys.argv[1:] or ["operator/Dockerfile", "dataplane/Dockerfile"]:
    print(f"--- {dockerfile}")
    st = stages(instructions(dockerfile))
    if len(st) < 2:
        fail(f"{dockerfile}: expected a builder stage and a runtime stage")
        continue
    builder, final = st[0], st[-1]
    if builder["image"] != f"rust:{toolchain}-bookworm":
        fail(f"{dockerfile}: builder is {builder['image']}, expected rust:{toolchain}-bookworm (rust-toolchain.toml)")
    if final["image"] != "debian:bookworm-slim":
        fail(f"{dockerfile}: runtime is {final['image']}, expected debian:bookworm-slim")
    for s in st:
        if s["image"].endswith(":latest") or ":" not in s["image"]:
            fail(f"{dockerfile}: unpinned base image {s['image']}")
    by_name = {s["name"]: s for s in st if s["name"]}
    args = {}
    for kw, rest in final["instrs"]:
        if kw == "ARG" and "=" in rest:
            k, v = rest.split("=", 1)
            args[k] = v
    # COPY --from sources must be produced by cargo build + install in that stage.
    for kw, rest in final["instrs"]:
        if kw != "COPY" or "--from=" not in rest:
            continue
        parts = shlex.split(rest)
        stage = [p for p in parts if p.startswith("--from=")][0].split("=", 1)[1]
        src = [p for p in parts if not p.startswith("--")][0]
        producer = by_name.get(stage)
        if producer is None:
            fail(f"{dockerfile}: COPY --from={stage}: no such stage")
            continue
        runs = " ".join(r for k, r in producer["instrs"] if k == "RUN")
        m = re.search(r"install\s+(?:-\S+\s+(?:\d+\s+)?)*target/release/(\S+)\s+" + re.escape(src) + r"(\s|$)", runs)
        if not m:
            fail(f"{dockerfile}: {src} is not installed from target/release/ in stage {stage}")
            continue
        binary = m.group(1)
        b = re.search(r"cargo build --release --locked -p (\S+) --bin (\S+)", runs)
        if not b or b.group(2) != binary:
            fail(f"{dockerfile}: stage {stage} does not run `cargo build --release --locked -p <pkg> --bin {binary}`")
            continue
        package = b.group(1)
        if (package, binary) not in bins:
            fail(f"{dockerfile}: package {package} has no binary {binary}")
            continue
        path = f"target/debug/{binary}"
        # CI's test run has just built it (with dev-dependency features, which a plain
        # `cargo build` would not reuse): only build when it is missing.
        if not os.access(path, os.X_OK):
            subprocess.run(["cargo", "build", "--quiet", "--locked", "-p", package, "--bin", binary], check=True)
        if not os.access(path, os.X_OK):
            fail(f"{dockerfile}: {path} missing after cargo build")
            continue
        version = subprocess.run([path, "--version"], capture_output=True, text=True)
        if version.returncode != 0:
            fail(f"{dockerfile}: {path} --version failed")
        else:
            print(f"  COPY {src} <- target/release/{binary} (package {package}; debug build answers: {version.stdout.strip()})")
    users = [rest for kw, rest in final["instrs"] if kw == "USER"]
    if not users:
        fail(f"{dockerfile}: runtime stage has no USER (would run as root)")
    else:
        m = re.fullmatch(r"(\d+)(?::(\d+))?", users[-1])
        if not m or int(m.group(1)) == 0 or (m.group(2) is not None and int(m.group(2)) == 0):
            fail(f"{dockerfile}: USER {users[-1]} is not a numeric non-root uid:gid")
        else:
            print(f"  USER {users[-1]}")
    if "operator" in dockerfile:
        runs = " ".join(r for k, r in final["instrs"] if k == "RUN")
        major = args.get("PG_MAJOR")
        if major is None or not major.isdigit() or int(major) < MIN_PG_MAJOR:
            fail(f"{dockerfile}: ARG PG_MAJOR={major} must be a PostgreSQL major >= {MIN_PG_MAJOR}")
        if "pgdg/apt.postgresql.org.sh" not in runs:
            fail(f"{dockerfile}: the PGDG repository is not configured")
        if 'postgresql-client-${PG_MAJOR}' not in runs:
            fail(f"{dockerfile}: postgresql-client-${{PG_MAJOR}} is not installed")
        envs = " ".join(r for k, r in final["instrs"] if k == "ENV")
        if "EDUMIND_PG_BINDIR=/usr/lib/postgresql/${PG_MAJOR}/bin" not in envs:
            fail(f"{dockerfile}: EDUMIND_PG_BINDIR does not point at the installed client")
        print(f"  PostgreSQL client tools: postgresql-client-{major} (PGDG)")

ignored = [l.strip() for l in open(".dockerignore") if l.strip() and not l.startswith("#")]
for needed in ["target/", ".tools/"]:
    if needed not in ignored:
        fail(f".dockerignore does not exclude {needed}")
for member in ["Cargo.toml", "Cargo.lock", "rust-toolchain.toml", "crds/", "operator/", "dataplane/", "migrations/", "tests/"]:
    if member in ignored:
        fail(f".dockerignore excludes {member}, which the build needs")

if problems:
    sys.exit(1)
print("image checks passed")
PY
