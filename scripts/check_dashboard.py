#!/usr/bin/env python3
"""Checks that every metric the chart's dashboard and alerts query is one the binaries export.

Usage: check_dashboard.py OPERATOR_BIN DATAPLANE_BIN

Starts `edumind-operator run` (its Kubernetes API is unreachable on purpose: /metrics is served
before leader election, and a standby exports every metric family) and `edumind-dataplane`
(an empty tenant directory, Redis unreachable: the cache breaker opens, which is fine), reads
their /metrics (the data plane's on its admin listener), and fails when charts/edumind/files/dashboard.json or
charts/edumind/templates/prometheusrule.yaml names an `edumind_*` metric neither exports, or
when a dashboard panel has no query. Prints what it checked.
"""
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DASHBOARD = os.path.join(ROOT, "charts/edumind/files/dashboard.json")
RULES = os.path.join(ROOT, "charts/edumind/templates/prometheusrule.yaml")
METRIC = re.compile(r"\b(edumind_[a-z0-9_]+)\b")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(url, proc, deadline=60):
    end = time.time() + deadline
    last = None
    while time.time() < end:
        if proc.poll() is not None:
            sys.exit(f"{url}: the process exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return r.read().decode()
        except Exception as e:  # not up yet
            last = e
            time.sleep(0.2)
    sys.exit(f"{url}: no answer ({last})")


def exported(text):
    """Sample names a query can use: counters as name_total, histograms as _bucket/_sum/_count."""
    names = set()
    for line in text.splitlines():
        m = re.match(r"# TYPE (\S+) (\S+)", line)
        if not m:
            continue
        name, kind = m.groups()
        if kind == "counter":
            names.add(name + "_total")
        elif kind == "histogram":
            names.update(name + s for s in ("_bucket", "_sum", "_count"))
        else:
            names.add(name)
    return names


def main():
    operator_bin, dataplane_bin = sys.argv[1], sys.argv[2]
    procs = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            kubeconfig = os.path.join(tmp, "kubeconfig")
            with open(kubeconfig, "w") as f:
                # A closed port: no API server; the operator serves /metrics as a standby.
                f.write(
                    "apiVersion: v1\nkind: Config\ncurrent-context: none\n"
                    f"clusters: [{{name: none, cluster: {{server: 'http://127.0.0.1:{free_port()}'}}}}]\n"
                    "users: [{name: none, user: {}}]\n"
                    "contexts: [{name: none, context: {cluster: none, user: none}}]\n"
                )
            servers = os.path.join(tmp, "servers.yaml")
            with open(servers, "w") as f:
                f.write(
                    "servers:\n  - name: main\n    host: 127.0.0.1\n    port: 5432\n"
                    "    default: true\n    adminSecret: pg-admin\n"
                )
            op_port = free_port()
            env = dict(os.environ, KUBECONFIG=kubeconfig, RUST_LOG="error")
            procs.append(subprocess.Popen(
                [operator_bin, "run", "--config", servers, "--http-addr", f"127.0.0.1:{op_port}"],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            operator_text = scrape(f"http://127.0.0.1:{op_port}/metrics", procs[-1])

            tenants = os.path.join(tmp, "tenants")
            os.mkdir(tenants)
            dp_port, admin_port = free_port(), free_port()
            config = os.path.join(tmp, "dataplane.toml")
            with open(config, "w") as f:
                f.write(
                    f'listen = "127.0.0.1:{dp_port}"\nadmin_listen = "127.0.0.1:{admin_port}"\n'
                    f'tenants_dir = "{tenants}"\n'
                    f'[redis]\nurl = "redis://127.0.0.1:{free_port()}"\n'
                    '[auth]\nissuer = "https://issuer.example"\naudience = "edumind"\n'
                    'hs256_secret = "check-dashboard-0123456789abcdef0123456789"\n'
                )
            procs.append(subprocess.Popen(
                [dataplane_bin, "--config", config],
                env=dict(os.environ, RUST_LOG="error"),
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            dataplane_text = scrape(f"http://127.0.0.1:{admin_port}/metrics", procs[-1])
        finally:
            for p in procs:
                p.kill()
                p.wait()

    names = exported(operator_text) | exported(dataplane_text)
    problems = []
    dashboard = json.load(open(DASHBOARD))
    used = {}
    for panel in dashboard["panels"]:
        if panel.get("type") == "row":
            continue
        targets = panel.get("targets") or []
        if not targets:
            problems.append(f"dashboard panel {panel.get('title')!r} has no query")
        for t in targets:
            for m in METRIC.findall(t.get("expr", "")):
                used.setdefault(m, f"dashboard panel {panel.get('title')!r}")
    with open(RULES) as f:
        for line in f:
            if line.lstrip().startswith(("#", "{{-", "{{/*")):
                continue
            for m in METRIC.findall(line):
                used.setdefault(m, "prometheusrule.yaml")
    for metric, where in sorted(used.items()):
        if metric not in names:
            problems.append(f"{where} queries {metric}, which neither binary exports")
    print(f"  {len(used)} metrics queried by the dashboard and alerts; "
          f"{len(names)} sample names exported by the running binaries")
    if problems:
        sys.exit("\n".join(problems))


if __name__ == "__main__":
    main()
