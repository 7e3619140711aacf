#!/usr/bin/env python3
"""Helpers for scripts/bench.sh (issue 15). Only the data plane's HTTP API, PostgreSQL's
own statement log, and the load generators' output are used, so this keeps working when
the data plane's internals change.

Subcommands:
  seed BASE SECRET SCHOOL_ID OUT.json    load benchmark data through the API, write ids/tokens
  capture ...                            the SQL one request runs (PostgreSQL's jsonlog) -> pgbench script
  wrk OUTPUT_FILE                        parse `wrk --latency` output -> JSON {rps, p99_ms, non2xx, errors}
  pgbench OUTPUT_FILE LOG_PREFIX         parse pgbench output + per-transaction logs -> JSON
  redisbench CSV_FILE                    parse redis-benchmark --csv -> JSON
  line ...                               print one BENCH line from measured rounds
  report RESULTS_FILE META.json OUT_DIR  write docs/benchmarks/README.md and ratios.png
"""

import base64
import glob
import hashlib
import hmac
import json
import os
import re
import statistics
import sys
import time
import urllib.error
import urllib.request
import uuid

ISSUER = "https://auth.edumind.ai"
AUDIENCE = "edumind-dataplane"


# --------------------------------------------------------------------------- tokens / API
def b64url(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def mint(secret, sub, role, school=None, days=2):
    now = int(time.time())
    claims = {"sub": str(sub), "role": role, "iss": ISSUER, "aud": AUDIENCE,
              "iat": now, "exp": now + days * 86400}
    if school:
        claims["school_id"] = str(school)
    head = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64url(json.dumps(claims).encode())
    sig = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64url(sig)}"


def call(base, method, path, token, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            text = r.read()
            return r.status, (json.loads(text) if text else None), len(text)
    except urllib.error.HTTPError as e:
        raise SystemExit(f"{method} {path} answered {e.code}: {e.read()[:500]!r}")


def wait_ready(base, token, path, secs=60):
    deadline = time.time() + secs
    while True:
        req = urllib.request.Request(base + path)
        req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.time() > deadline:
            raise SystemExit(f"the data plane did not serve {path} within {secs} s")
        time.sleep(0.3)


def seed(base, secret, school, out):
    """A school shaped so that the cached replies have the issue's sizes: a class of 30
    students (roster ~3.7 KB), a course of 30 questions (question list ~15 KB), a quiz of
    30 questions (assessment ~1.3 KB); 33 users; one submitted attempt."""
    n_students, n_questions = 30, 30
    admin = mint(secret, uuid.uuid4(), "SystemAdmin")
    t = f"/v1/tenants/{school}"
    ids = {}
    wait_ready(base, admin, f"{t}/school")  # the tenant file is picked up by a poll

    def user(name, role):
        email = name.lower().replace(" ", ".") + "@bench.example"
        _, u, _ = call(base, "POST", f"{t}/users", admin,
                       {"email": email, "full_name": name, "role": role})
        return u["id"]

    ids["school_admin_user"] = user("Bench Admin", 2)
    ids["teacher_user"] = user("Bench Teacher", 1)
    students = []
    student_users = []
    for i in range(n_students):
        u = user(f"Bench Student {i:02d}", 0)
        _, s, _ = call(base, "POST", f"{t}/students", admin, {"user_id": u, "grade_level": 9})
        students.append(s["id"])
        student_users.append(u)
    course = str(uuid.uuid5(uuid.NAMESPACE_URL, "https://bench.edumind.ai/course"))
    call(base, "PUT", f"{t}/courses/{course}", admin,
         {"name": "Benchmark Algebra", "code": "BENCH-1", "subject": 0, "grade_level": 9,
          "description": "Algebra for the benchmark"})
    questions = []
    for i in range(n_questions):
        q = str(uuid.uuid5(uuid.NAMESPACE_URL, f"https://bench.edumind.ai/question/{i}"))
        call(base, "PUT", f"{t}/questions/{q}", admin,
             {"course_id": course,
              "question_text": f"Question {i}: solve {i + 2}x + 3 = {2 * (i + 2) + 3} "
                               "for x, showing each step of the working.",
              "question_type": 0, "subject": 0, "grade_level": 9,
              "difficulty_level": 1 + i % 5,
              "answer_options": ["x = 1", "x = 2", "x = 3", "x = 4"],
              "correct_answer": "x = 2", "points": 1})
        questions.append(q)
    quiz = str(uuid.uuid5(uuid.NAMESPACE_URL, "https://bench.edumind.ai/quiz"))
    call(base, "PUT", f"{t}/assessments/{quiz}", admin,
         {"course_id": course, "title": "Benchmark quiz", "assessment_type": 0,
          "subject": 0, "grade_level": 9, "question_ids": questions,
          "total_points": n_questions, "passing_score_percentage": 70})
    klass = str(uuid.uuid5(uuid.NAMESPACE_URL, "https://bench.edumind.ai/class"))
    call(base, "PUT", f"{t}/classes/{klass}", admin,
         {"name": "Benchmark Algebra - 9A", "code": "BENCH-9A", "grade_level": 9,
          "subject": 0, "teacher_ids": [ids["teacher_user"]], "academic_year": "2026-27"})
    roster_body = {"student_ids": students}
    call(base, "PUT", f"{t}/classes/{klass}/roster", admin, roster_body)
    # One attempt, by the first student, answered and submitted.
    student_tok = mint(secret, student_users[0], "Student", school)
    _, a, _ = call(base, "POST", f"{t}/attempts", student_tok,
                   {"assessment_id": quiz, "class_id": klass})
    for i, q in enumerate(questions[:5]):
        call(base, "POST", f"{t}/attempts/{a['id']}/responses", student_tok,
             {"question_id": q, "answer": "x = 2" if i % 2 == 0 else "x = 3",
              "time_spent_seconds": 20})
    call(base, "POST", f"{t}/attempts/{a['id']}/submit", student_tok, {})
    teacher = mint(secret, ids["teacher_user"], "Teacher", school)
    school_admin = mint(secret, ids["school_admin_user"], "SchoolAdmin", school)
    paths = {
        "roster": f"{t}/classes/{klass}/roster",
        "questions": f"{t}/courses/{course}/questions",
        "assessment": f"{t}/assessments/{quiz}",
        "school": f"{t}/school",
        "attempt": f"{t}/attempts/{a['id']}",
        "users20": f"{t}/users?limit=20",
    }
    sizes = {}
    for k, p in paths.items():
        tok = school_admin if k == "users20" else teacher
        call(base, "GET", p, tok)  # first read fills the cache where there is one
        _, _, size = call(base, "GET", p, tok)
        sizes[k] = size
    json.dump({"base": base, "tenant": school, "paths": paths, "sizes": sizes,
               "tokens": {"teacher": teacher, "school_admin": school_admin},
               "roster_body": roster_body, "class": klass, "attempt": a["id"]},
              open(out, "w"), indent=1)
    print(json.dumps(sizes))


# --------------------------------------------------------------------------- SQL capture
# Background work of the data plane that can land in the capture window; never part of a
# request: the outbox replay, the permit watcher, the connect-time pid query.
BACKGROUND = ("pg_stat_activity", "pg_backend_pid", "'cache_invalidations'::regclass",
              "DELETE FROM cache_invalidations WHERE id = ANY")
PARAM_RE = re.compile(r"\$(\d+) = (NULL|'(?:[^']|'')*')")


def read_log_entries(log_dir, start_offsets):
    entries = []
    for f in sorted(glob.glob(os.path.join(log_dir, "*.json"))):
        with open(f, "rb") as fh:
            fh.seek(start_offsets.get(f, 0))
            for line in fh:
                try:
                    entries.append(json.loads(line))
                except ValueError:
                    pass
    return entries


def log_offsets(log_dir):
    return {f: os.path.getsize(f) for f in glob.glob(os.path.join(log_dir, "*.json"))}


def statement_of(entry):
    """(sql, params) of a logged statement, or None."""
    msg = entry.get("message", "")
    m = re.match(r"(?s)(?:statement|execute [^:]*): (.*)", msg)
    if not m:
        return None
    params = {}
    detail = entry.get("detail", "") or ""
    if detail.lower().startswith("parameters:"):
        for num, val in PARAM_RE.findall(detail):
            params[int(num)] = None if val == "NULL" else val[1:-1].replace("''", "'")
    return m.group(1).strip().rstrip(";"), params


def units_of(entries):
    """Statements of the data plane grouped per backend into units: a BEGIN…COMMIT block,
    or one statement outside a block. Units touching background work are dropped."""
    per_pid = {}
    for e in entries:
        if e.get("application_name") != "edumind-dataplane":
            continue
        st = statement_of(e)
        if st:
            per_pid.setdefault(e.get("pid"), []).append(st)
    units = []
    for stmts in per_pid.values():
        cur = None
        for sql, params in stmts:
            word = sql.split(None, 1)[0].upper() if sql else ""
            if cur is None:
                if word in ("BEGIN", "START"):
                    cur = [(sql, params)]
                else:
                    units.append([(sql, params)])
            else:
                cur.append((sql, params))
                if word in ("COMMIT", "ROLLBACK", "END"):
                    units.append(cur)
                    cur = None
        if cur:
            units.append(cur)
    return [u for u in units if not any(b in s for s, _ in u for b in BACKGROUND)]


def pgbench_safe(sql):
    """pgbench reads `:name` as a variable even inside string literals, so a captured
    `to_char(…, 'HH24:MI:SS')` fails with "undefined variable MI". Inside single-quoted
    literals a colon before a name is doubled (pgbench skips `::`): the statement does the
    same work, its timestamps print `12::30::00`."""
    parts = sql.split("'")
    for i in range(1, len(parts), 2):
        parts[i] = re.sub(r":(?=[A-Za-z_])", "::", parts[i])
    return "'".join(parts)


def capture(log_dir, psql_cmd_json, curl_cmd_json, out_prefix):
    """Turns PostgreSQL statement logging on, makes the request once, turns it off, and
    writes the request's SQL as a pgbench script (parameters as pgbench variables, so
    `-M prepared` binds them like the data plane does) plus a readable copy."""
    import subprocess
    psql = json.loads(psql_cmd_json)
    curl = json.loads(curl_cmd_json)
    for attempt in range(5):
        subprocess.run(psql + ["-c", "ALTER SYSTEM SET log_statement = 'all'",
                               "-c", "SELECT pg_reload_conf()"], check=True,
                       stdout=subprocess.DEVNULL)
        time.sleep(0.5)
        offsets = log_offsets(log_dir)
        subprocess.run(curl, check=True, stdout=subprocess.DEVNULL)
        time.sleep(0.3)
        subprocess.run(psql + ["-c", "ALTER SYSTEM RESET log_statement",
                               "-c", "SELECT pg_reload_conf()"], check=True,
                       stdout=subprocess.DEVNULL)
        time.sleep(0.3)
        units = units_of(read_log_entries(log_dir, offsets))
        if len(units) == 1:
            break
        time.sleep(0.5)
    else:
        raise SystemExit(f"capture: expected the SQL of one request, found {len(units)} units")
    stmts = units[0]
    if stmts[0][0].split(None, 1)[0].upper() not in ("BEGIN", "START"):
        # PostgREST-style: the data plane's statement (which sets the role claims with
        # set_config in the same statement) inside its own transaction.
        stmts = [("BEGIN", {})] + stmts + [("COMMIT", {})]
    script, readable, defines = [], [], []
    for i, (sql, params) in enumerate(stmts):
        text, lit = sql, sql
        for n in sorted(params, reverse=True):
            v = params[n]
            if v is None:
                text = re.sub(rf"\${n}(?!\d)", "NULL", text)
                lit = re.sub(rf"\${n}(?!\d)", "NULL", lit)
            else:
                var = f"s{i}p{n}"
                defines.append(f"{var}={v}")
                text = re.sub(rf"\${n}(?!\d)", f":{var}", text)
                lit = re.sub(rf"\${n}(?!\d)", "'" + v.replace("'", "''") + "'", lit)
        script.append(pgbench_safe(text) + ";")
        readable.append(lit + ";")
    open(out_prefix + ".sql", "w").write("\n".join(script) + "\n")
    open(out_prefix + ".literal.sql", "w").write("\n".join(readable) + "\n")
    json.dump(defines, open(out_prefix + ".defines.json", "w"))
    print(f"captured {len(stmts)} statements")


# --------------------------------------------------------------------------- parsers
def to_ms(s):
    m = re.match(r"([\d.]+)(us|ms|s|m)", s)
    if not m:
        return None
    v, u = float(m.group(1)), m.group(2)
    return {"us": v / 1000, "ms": v, "s": v * 1000, "m": v * 60000}[u]


def parse_wrk(path):
    text = open(path).read()
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    p99 = re.search(r"^\s+99%\s+(\S+)", text, re.M)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    errs = re.search(r"Socket errors: (.*)", text)
    total = re.search(r"(\d+) requests in", text)
    return {"rps": float(rps.group(1)) if rps else None,
            "p99_ms": to_ms(p99.group(1)) if p99 else None,
            "non2xx": int(non2xx.group(1)) if non2xx else 0,
            "socket_errors": errs.group(1).strip() if errs else "",
            "requests": int(total.group(1)) if total else 0}


def parse_pgbench(path, log_prefix):
    text = open(path).read()
    tps = re.search(r"tps = ([\d.]+) \((?:without initial connection time|excluding)", text) \
        or re.search(r"tps = ([\d.]+)", text)
    failed = re.search(r"number of failed transactions: (\d+)", text)
    lat = []
    for f in glob.glob(log_prefix + "*"):
        for line in open(f):
            parts = line.split()
            if len(parts) >= 3 and parts[2].isdigit():
                lat.append(int(parts[2]))
        os.remove(f)
    lat.sort()
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] / 1000 if lat else None
    return {"rps": float(tps.group(1)) if tps else None, "p99_ms": p99,
            "failed": int(failed.group(1)) if failed else 0, "transactions": len(lat)}


def parse_redisbench(path):
    import csv
    rows = list(csv.reader(open(path)))
    head = rows[0]
    for r in rows[1:]:
        if r and r[0].upper().startswith("GET"):
            d = dict(zip(head, r))
            return {"rps": float(d["rps"]), "p99_ms": float(d.get("p99_latency_ms", "nan"))}
    return {"rps": None, "p99_ms": None}


# --------------------------------------------------------------------------- BENCH lines
def proc_ticks(pid, reaped=False):
    """utime + stime of one process, in clock ticks (0 when it is gone); with `reaped`,
    plus the times of its children that have exited and been waited for."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        ticks = int(fields[11]) + int(fields[12])
        if reaped:
            ticks += int(fields[13]) + int(fields[14])
        return ticks
    except (OSError, IndexError, ValueError):
        return 0


def children(pid):
    try:
        return [int(c) for c in open(f"/proc/{pid}/task/{pid}/children").read().split()]
    except OSError:
        return []


def cpu(pg, redis, dp, base):
    """Cumulative CPU seconds of each server. PostgreSQL: the postmaster, its live
    children (backends, background workers) and the children it has reaped (backends of
    connections that closed, pgbench's among them)."""
    hz = os.sysconf("SC_CLK_TCK")
    out = {
        "pg": (proc_ticks(int(pg), reaped=True)
               + sum(proc_ticks(p) for p in children(int(pg)))) / hz,
        "redis": proc_ticks(int(redis)) / hz,
        "dp": proc_ticks(int(dp)) / hz,
        "base": proc_ticks(int(base)) / hz,
    }
    print(json.dumps(out))


def cpu_per_request(before, after, requests):
    """Microseconds of CPU per request for each server between two `cpu` samples (only
    PostgreSQL backends present in both samples are counted)."""
    if not requests:
        return None
    hz = os.sysconf("SC_CLK_TCK")
    per = {}
    for k in ("dp", "redis", "base"):
        per[k] = round((after[k] - before[k]) * 1e6 / requests, 1)
    per["pg"] = round(max(after["pg"] - before["pg"], 0) * 1e6 / requests, 1)
    return per


CPU_NAMES = {"dp": "data plane", "redis": "Redis", "pg": "PostgreSQL", "base": "warp baseline"}


def describe_cpu(per):
    parts = [f"{CPU_NAMES[k]} {v:g} µs" for k, v in per.items() if v and v > 0]
    return ", ".join(parts) if parts else "none measurable"


def bench_line(name, unit, baseline_name, target, rounds_file, notes, bkey="b"):
    """rounds_file: JSON lines {"a": {...}, "b": {...}} (a = target, b (or bkey) =
    baseline), one per round, in the order measured."""
    rounds_raw = [json.loads(l) for l in open(rounds_file) if l.strip()]
    rounds = [{"a": r["a"], "b": r.get(bkey)} for r in rounds_raw]

    def valid(m):
        # A round whose answers were more than 1 % errors measured the errors: not counted.
        if not m or not m.get("rps"):
            return False
        bad = m.get("non2xx", 0) + m.get("failed", 0)
        total = m.get("requests") or m.get("transactions") or 0
        return bad <= 0.01 * max(total, 1)

    for r in rounds:
        for k in ("a", "b"):
            if r.get(k) and not valid(r[k]):
                r[k] = dict(r[k], rps=None, invalid=True)
    a = [r["a"]["rps"] for r in rounds if r["a"].get("rps")]
    b = [r["b"]["rps"] for r in rounds if r.get("b") and r["b"].get("rps")]
    value = statistics.median(a) if a else None
    base = statistics.median(b) if b else None
    p99s = [r["a"]["p99_ms"] for r in rounds if r["a"].get("p99_ms") is not None]
    bp99 = [r["b"]["p99_ms"] for r in rounds if r.get("b") and r["b"].get("p99_ms") is not None]
    bad = [r["a"].get("non2xx", 0) + r["a"].get("failed", 0) for r in rounds]
    extra = []
    if any(bad):
        extra.append(f"target answered {sum(bad)} non-2xx/failed requests")
    if any(r["a"].get("invalid") for r in rounds) or any((r.get("b") or {}).get("invalid") for r in rounds):
        extra.append("rounds with over 1 % errors are not counted")
    badb = [r["b"].get("non2xx", 0) + r["b"].get("failed", 0) for r in rounds if r.get("b")]
    if any(badb):
        extra.append(f"baseline had {sum(badb)} non-2xx/failed")
    # CPU per request of each server process, from the rounds that sampled it.
    cpu_notes = {}
    for side, label in (("a", "target"), (bkey, "baseline")):
        for r in rounds_raw:
            c = r.get(f"cpu_{side}")
            m = r.get(side) or {}
            n = m.get("requests") or m.get("transactions")
            if c and n:
                per = cpu_per_request(c["before"], c["after"], n)
                if per:
                    cpu_notes[label] = per
                    break
    if cpu_notes:
        extra.append("CPU per request on the server core: " + "; ".join(
            f"{label}: {describe_cpu(per)}" for label, per in cpu_notes.items()))
    line = {
        "name": name, "value": round(value, 1) if value else None, "unit": unit,
        "cpu_per_request_us": cpu_notes or None,
        "baseline_name": baseline_name, "baseline": round(base, 1) if base else None,
        "ratio": round(value / base, 3) if value and base else None,
        "target": target,
        "p99_ms": round(max(p99s), 2) if p99s else None,
        "baseline_p99_ms": round(max(bp99), 2) if bp99 else None,
        "rounds": [[r["a"].get("rps"), (r.get("b") or {}).get("rps")] for r in rounds],
        "notes": "; ".join([notes] + extra if notes else extra),
    }
    print("BENCH " + json.dumps(line))


# --------------------------------------------------------------------------- report
def check(target, ratio, value, p99):
    """'>= 0.5, p99 <= 10 ms' -> True/False/None (None: nothing to compare)."""
    if not target:
        return None
    ok = None
    for part in target.split(","):
        part = part.strip().replace("≥", ">=").replace("≤", "<=")
        m = re.match(r"(p99\s*)?(>=|<=|>|<)\s*([\d.]+)", part)
        if not m:
            continue
        subject = p99 if m.group(1) else (ratio if ratio is not None else value)
        if subject is None:
            return False
        op, lim = m.group(2), float(m.group(3))
        res = {">=": subject >= lim, "<=": subject <= lim, ">": subject > lim,
               "<": subject < lim}[op]
        ok = res if ok is None else (ok and res)
    return ok


def fmt(v, digits=0):
    if v is None:
        return "–"
    if isinstance(v, float) and digits:
        return f"{v:,.{digits}f}"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"


# Every target of issue 15, in report order; `match` finds its BENCH line(s) by name prefix.
EXPECTED = [
    ("cache-hit-roster", "cache hit, roster"),
    ("cache-hit-questions", "cache hit, course questions"),
    ("cache-hit-assessment", "cache hit, assessment"),
    ("uncached-school", "uncached GET /school"),
    ("uncached-attempt", "uncached GET /attempts/{id}"),
    ("uncached-users20", "uncached GET /users?limit=20"),
    ("put-roster", "PUT roster"),
    (("fleet", "idle"), "fleet: 1,000 tenants (Zipf s = 1.1 / uniform), idle CPU"),
    (("backup", "restore"), "backup / restore"),
]


def report(results_file, meta_file, out_dir):
    lines = []
    for l in open(results_file):
        if l.startswith("BENCH "):
            try:
                lines.append(json.loads(l[6:]))
            except ValueError:
                pass
    meta = json.load(open(meta_file))
    rows = []
    seen = set()
    for prefix, label in EXPECTED:
        got = [x for x in lines if x.get("name", "").startswith(prefix)]
        if not got:
            rows.append(f"| {label} | not measured | | | | | | | {why_missing(prefix)} |")
            continue
        for x in got:
            seen.add(id(x))
            rows.append(row(x))
    others = [x for x in lines if id(x) not in seen]
    for x in others:
        rows.append(row(x))
    chart(lines, os.path.join(out_dir, "ratios.png"))
    md = render(meta, rows, lines, profiles=os.path.isdir(os.path.join(out_dir, "profiles")),
                analysis=os.path.isfile(os.path.join(out_dir, "analysis.md")))
    open(os.path.join(out_dir, "README.md"), "w").write(md)


def row(x):
    if "baseline" in x and x.get("ratio") is None:
        # A ratio target whose baseline failed is not measured, never "met" by the value.
        ok, met = None, "baseline failed: not measured"
    else:
        ok = check(x.get("target"), x.get("ratio"), x.get("value"), x.get("p99_ms"))
        met = {True: "yes", False: "**no**", None: "–"}[ok]
    unit = x.get("unit", "")
    val = f"{fmt(x.get('value'))} {unit}" if x.get("value") is not None else "–"
    base = x.get("baseline")
    base_s = f"{x.get('baseline_name', '')}: {fmt(base)}" if base is not None else \
        (x.get("baseline_name") or "–")
    ratio = f"{x['ratio']:.2f}" if x.get("ratio") is not None else "–"
    p99 = f"{x['p99_ms']:.1f} ms" if x.get("p99_ms") is not None else "–"
    if x.get("baseline_p99_ms") is not None:
        p99 += f" (baseline {x['baseline_p99_ms']:.1f} ms)"
    rounds = ", ".join(
        "/".join(fmt(v) if v is not None else "–" for v in r) for r in x.get("rounds", []))
    notes = (x.get("notes") or "").replace("|", "/")
    return (f"| {x.get('name')} | {val} | {base_s} | {ratio} | {x.get('target') or '–'} | "
            f"{met} | {p99} | {rounds} | {notes} |")


def why_missing(prefix):
    p = prefix if isinstance(prefix, str) else prefix[0]
    if p == "fleet":
        return "no BENCH line: `dataplane/tests/fleet_bench.rs` absent, skipped or silent"
    if p == "backup":
        return "no BENCH line: `operator/benches/backup_throughput.rs` absent, skipped or silent"
    return "the measurement failed (see the run's output)"


def chart(lines, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no chart", file=sys.stderr)
        return
    pts = [x for x in lines if x.get("ratio") is not None]
    if not pts:
        return
    fig, ax = plt.subplots(figsize=(10, 0.5 * len(pts) + 1.5))
    names = [x["name"] for x in pts]
    ratios = [x["ratio"] for x in pts]
    colors = []
    for x in pts:
        ok = check(x.get("target"), x.get("ratio"), x.get("value"), x.get("p99_ms"))
        colors.append({True: "#3a7d44", False: "#c0392b", None: "#7f8c8d"}[ok])
    y = list(range(len(pts)))
    ax.barh(y, ratios, color=colors)
    for i, x in enumerate(pts):
        m = re.search(r"(>=|<=|≥|≤)\s*([\d.]+)", (x.get("target") or "").split(",")[0])
        if m:
            lim = float(m.group(2))
            ax.plot([lim, lim], [i - 0.4, i + 0.4], color="black", linewidth=2)
        ax.text(x["ratio"], i, f" {x['ratio']:.2f}", va="center", fontsize=8)
    ax.set_yticks(y)
    ax.set_yticklabels(names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("ratio to the same-run baseline (black tick: target; green met, red not)")
    ax.set_title("EduMind data plane: benchmark ratios (scripts/bench.sh)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def render(meta, rows, lines, profiles=False, analysis=False):
    m = meta
    out = []
    out.append("# Benchmarks (issue 15)\n")
    out.append(
        "Generated by `bash scripts/bench.sh` — do not edit by hand; re-run it. Every figure "
        "is paired with a baseline measured in the same run, alternating target and baseline "
        "(A B A B …); `value` and `baseline` are medians of the rounds, `ratio` = value / "
        "baseline unless the notes say otherwise, `p99` is the worst round's.\n")
    out.append(f"- **Mode:** {m['mode']} ({m['rounds']} rounds of {m['duration']} s per side, "
               f"{m['connections']} connections; {m['warmup']} s warm-up per target)")
    out.append(f"- **Commit:** `{m['commit']}`{' (work tree had changes)' if m.get('dirty') else ''}")
    out.append(f"- **Date:** {m['date']} (run took {m['elapsed']})")
    out.append(f"- **Machine:** {m['cpu_model']}, {m['cores']} cores, {m['memory']} memory")
    out.append(f"- **Load average:** before {m['load_before']}, after {m['load_after']}")
    out.append(f"- **Pinning:** {m['pinning']}")
    out.append(f"- **Servers:** PostgreSQL {m['pg_version']} ({m['pg_settings']}), "
               f"Redis {m['redis_version']}; release builds; data plane pool defaults "
               "(server_budget 50, per_tenant_max 5).")
    out.append(f"- **Bodies measured:** {m['sizes']}\n")
    out.append("![ratios against their targets](ratios.png)\n")
    if analysis:
        out.append("Why each target not met is not met, from the CPU table and the profiles "
                   "below: [analysis.md](analysis.md) (written by hand after the run it "
                   "names).\n")
    out.append("| what | value | baseline (same run) | ratio | target | met? | p99 | rounds (A/B) | notes |")
    out.append("|---|---|---|---|---|---|---|---|---|")
    out.extend(rows)
    out.append("")
    cpu_lines = [l for l in lines if l.get("cpu_per_request_us")]
    if cpu_lines:
        out.append("## Where the server core's time goes\n")
        out.append(
            "Every server (PostgreSQL, Redis, the data plane, the warp baseline) shares the "
            "pinned server CPU set, so a target's throughput is bounded by the CPU all of "
            "them spend per request: 1 s / (sum of the µs below) per core. Sampled from "
            "`/proc/<pid>/stat` (user + system time; PostgreSQL with its backends, live and "
            "exited) around the first round of each side."
            + (" The hottest data plane symbols of each target are in [profiles/](profiles/) "
               "(`perf record` during one extra round)." if profiles else "") + "\n")
        out.append("| what | target: µs CPU per request | bound on one core | baseline: µs CPU per request | bound on one core |")
        out.append("|---|---|---|---|---|")
        for l in cpu_lines:
            c = l["cpu_per_request_us"]
            cells = []
            for side in ("target", "baseline"):
                per = c.get(side)
                if not per:
                    cells += ["–", "–"]
                    continue
                total = sum(v for v in per.values() if v and v > 0)
                cells.append(f"{total:.0f} ({describe_cpu(per)})")
                cells.append(f"{1e6 / total:,.0f} req/s" if total else "–")
            out.append(f"| {l['name']} | " + " | ".join(cells) + " |")
        out.append("")
    out.append("## What each line measures\n")
    out.append(
        "- **cache-hit-\\***: `GET` of a cached reply (roster, course questions, assessment) "
        "as the school's teacher, the cache warmed first, with `wrk` (`--latency`); baseline: "
        "`edumind-bench-baseline` (crate `bench/`), warp serving a body of the same size "
        "(measured from the data plane's reply before the run) from memory with a strong "
        "ETag. Target ≥ 0.5×, p99 ≤ 10 ms.\n"
        "- **uncached-\\***: endpoints the data plane does not cache (`GET /school`, "
        "`GET /attempts/{id}` as the teacher, `GET /users?limit=20` as the school admin); "
        "baseline: `pgbench -M prepared` running, per transaction, the exact SQL the data "
        "plane ran for that request — captured from PostgreSQL's own statement log "
        "(`log_statement = all` for one request, jsonlog) with its parameters bound as "
        "pgbench variables, wrapped PostgREST-style in `BEGIN; …; COMMIT` (the data plane "
        "sets the role claims with `set_config(…, true)` inside that same statement). The "
        "scripts used are in `sql/`. pgbench connects over TCP as the tenant's own role "
        "(password from the Secret file), like the data plane. Targets: single row ≥ 0.8×, "
        "20-row list ≥ 0.6×.\n"
        "- **put-roster**: `PUT /classes/{id}/roster` (same 30 students every time) against "
        "the same captured transaction in pgbench. No target in the issue (reported).\n"
        "- **redis-get-\\***: reference only: `redis-benchmark -t get -d <size>` at the "
        "same concurrency; the ratio is the cache hit's throughput over it.\n"
        "- **fleet-\\***, **backup-\\***: lines printed by "
        "`dataplane/tests/fleet_bench.rs` and `operator/benches/backup_throughput.rs` "
        "(`BENCH {json}`), collected as they are; `not measured` when the program is absent "
        "or printed no line.\n")
    out.append("## How to re-run\n")
    out.append("```sh\nbash scripts/bench.sh          # full: about 15 minutes on 2 cores\n"
               "bash scripts/bench.sh --quick  # short rounds, a smoke test of the harness\n```\n"
               "It installs what is missing (wrk, pgbench, redis-tools, matplotlib), builds "
               "the release binaries, starts its own PostgreSQL and Redis on free loopback "
               "ports in a temporary directory (removed on exit, Ctrl-C included), provisions "
               "one school with `edumind-local`, loads data through the API, runs every pair "
               "and rewrites this page, `ratios.png`, `results.txt` (every BENCH line), "
               "`sql/` and `profiles/` (`perf` installed; `BENCH_PROFILE=0` skips them). "
               "Other work on the machine shows in the load average above; compare "
               "ratios, not absolute figures, between runs.\n")
    return "\n".join(out) + "\n"


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "seed":
        seed(*args)
    elif cmd == "capture":
        capture(*args)
    elif cmd == "wrk":
        print(json.dumps(parse_wrk(args[0])))
    elif cmd == "pgbench":
        print(json.dumps(parse_pgbench(args[0], args[1])))
    elif cmd == "redisbench":
        print(json.dumps(parse_redisbench(args[0])))
    elif cmd == "line":
        bench_line(*args)
    elif cmd == "cpu":
        cpu(*args)
    elif cmd == "report":
        report(*args)
    else:
        raise SystemExit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
