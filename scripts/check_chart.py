#!/usr/bin/env python3
"""Checks a rendered EduMind chart (`helm template --include-crds` output).

Usage: check_chart.py RENDERED.yaml VALUES.json RBAC.json RELEASE_NAMESPACE K8S_VERSION...

VALUES.json is the values Helm computed (`helm get values`-like: here the chart's values
merged with the file the render used, produced by check-chart.sh), RBAC.json is
`edumind-operator rbac --format json`. Checks, failing with exit 1 on any problem:
  * every object validates against the Kubernetes OpenAPI schema of each K8S_VERSION
    (kubernetes-validate, strict: unknown fields fail). CustomResourceDefinitions
    validate as apiextensions/v1 objects; custom resources of kinds Kubernetes does not
    ship (ServiceMonitor, PrometheusRule) are skipped, because their schema belongs to the Prometheus
    Operator, which this repository does not vendor;
  * the RBAC the chart grants each component's ServiceAccount equals the list in code:
    nothing missing, nothing extra, in the right namespaces or cluster-wide;
  * the pod security baseline (restricted profile) and the probes;
  * the data plane's TOML parses and uses only keys its Settings structs know (file and EDUMIND_DP__* environment); the operator's target server config is written to
    OUT_DIR for `edumind-operator check-config`.
"""

import json
import os
import sys
import tomllib

import kubernetes_validate
import yaml

SKIPPED_KINDS = {"ServiceMonitor", "PrometheusRule"}  # Prometheus Operator CRDs: schemas not vendored here
# (scripts/check-alerts.sh checks the PrometheusRule with promtool)


def load_objects(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def fail(problems, message):
    problems.append(message)


def name_of(obj):
    m = obj.get("metadata", {})
    ns = m.get("namespace")
    return f"{obj.get('kind')}/{ns + '/' if ns else ''}{m.get('name')}"


def check_schemas(objects, versions, problems):
    skipped = 0
    for obj in objects:
        if obj["kind"] in SKIPPED_KINDS:
            skipped += 1
            continue
        for version in versions:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                path = "/".join(str(p) for p in e.path)
                fail(problems, f"{name_of(obj)} invalid for Kubernetes {version} at {path}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError:
                fail(problems, f"{name_of(obj)}: no {obj['apiVersion']} {obj['kind']} in Kubernetes {version}")
    return skipped


def expected_permissions(rules, scope_targets):
    """Set of (where, group, resource, verb, resourceName) from the code's list."""
    out = set()
    for r in rules:
        for where in scope_targets.get(r["scope"], []):
            for res in r["resources"]:
                for verb in r["verbs"]:
                    for name in r.get("resourceNames") or [None]:
                        out.add((where, r["apiGroup"], res, verb, name))
    return out


def granted_permissions(objects, sa_name, release_ns, problems):
    """Set of (where, group, resource, verb, resourceName) the chart grants `sa_name`."""
    roles = {}
    for o in objects:
        if o["kind"] == "ClusterRole":
            roles[("ClusterRole", None, o["metadata"]["name"])] = o
        elif o["kind"] == "Role":
            roles[("Role", o["metadata"]["namespace"], o["metadata"]["name"])] = o
    out = set()
    for b in objects:
        if b["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        subjects = b.get("subjects") or []
        if not any(s.get("kind") == "ServiceAccount" and s.get("name") == sa_name
                   and s.get("namespace") == release_ns for s in subjects):
            continue
        ref = b["roleRef"]
        ns = b["metadata"].get("namespace")
        key = (ref["kind"], None if ref["kind"] == "ClusterRole" else ns, ref["name"])
        role = roles.get(key)
        if role is None:
            fail(problems, f"{name_of(b)} binds {sa_name} to {ref['kind']} {ref['name']}, which the chart does not define")
            continue
        where = "*" if b["kind"] == "ClusterRoleBinding" else ns
        for rule in role.get("rules") or []:
            if rule.get("nonResourceURLs"):
                fail(problems, f"{name_of(role)} grants nonResourceURLs")
            for group in rule.get("apiGroups", []):
                for res in rule.get("resources", []):
                    for verb in rule.get("verbs", []):
                        for name in rule.get("resourceNames") or [None]:
                            if "*" in (group, res, verb):
                                fail(problems, f"{name_of(role)} uses a wildcard")
                            out.add((where, group, res, verb, name))
    return out


def check_rbac(objects, values, rbac, release_ns, problems):
    watched = sorted(set(values.get("watchNamespaces") or [])) or ["*"]
    self_service = values["selfService"]
    ss_ns = [self_service.get("namespace") or release_ns] if self_service["enabled"] else []
    targets = {"watched": watched, "release": [release_ns], "selfService": ss_ns}
    fullname = None
    for o in objects:
        if o["kind"] == "Deployment" and o["metadata"]["labels"].get("app.kubernetes.io/component") == "operator":
            fullname = o["metadata"]["name"]
    components = {"operator": rbac["operator"]}
    # The data plane lists Secrets only with the in-cluster tenant source (the default);
    # with a mounted tenant directory (tenants.existingSecret) it gets no RBAC at all.
    if values["dataplane"]["enabled"]:
        in_cluster = not values["dataplane"]["tenants"].get("existingSecret")
        components["dataplane"] = rbac["dataplane"] if in_cluster else []
    sa_names = {}
    for o in objects:
        if o["kind"] == "Deployment":
            comp = o["metadata"]["labels"].get("app.kubernetes.io/component")
            sa_names[comp] = o["spec"]["template"]["spec"]["serviceAccountName"]
    for comp, rules in components.items():
        sa = sa_names.get(comp)
        if sa is None:
            fail(problems, f"no {comp} Deployment rendered")
            continue
        want = expected_permissions(rules, targets)
        have = granted_permissions(objects, sa, release_ns, problems)
        fmt = lambda p: f"{p[3]} {p[1] or 'core'}/{p[2]}{'[' + p[4] + ']' if p[4] else ''} in {'the cluster' if p[0] == '*' else p[0]}"
        for p in sorted(want - have, key=str):
            fail(problems, f"RBAC: {comp} lacks {fmt(p)} (listed in crds/src/rbac.rs)")
        for p in sorted(have - want, key=str):
            fail(problems, f"RBAC: {comp} is granted {fmt(p)}, which crds/src/rbac.rs does not list")
    return fullname


def check_pods(objects, problems):
    for o in objects:
        if o["kind"] != "Deployment":
            continue
        spec = o["spec"]["template"]["spec"]
        psc = spec.get("securityContext") or {}
        if psc.get("runAsNonRoot") is not True:
            fail(problems, f"{name_of(o)}: pod runAsNonRoot is not true")
        if (psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
            fail(problems, f"{name_of(o)}: pod seccompProfile is not RuntimeDefault")
        tmp_volumes = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v}
        for c in spec["containers"]:
            sc = c.get("securityContext") or {}
            where = f"{name_of(o)} container {c['name']}"
            if sc.get("readOnlyRootFilesystem") is not True:
                fail(problems, f"{where}: readOnlyRootFilesystem is not true")
            if sc.get("allowPrivilegeEscalation") is not False:
                fail(problems, f"{where}: allowPrivilegeEscalation is not false")
            if (sc.get("capabilities") or {}).get("drop") != ["ALL"]:
                fail(problems, f"{where}: capabilities do not drop ALL")
            if not any(m["mountPath"] == "/tmp" and m["name"] in tmp_volumes for m in c.get("volumeMounts", [])):
                fail(problems, f"{where}: /tmp is not an emptyDir")
            if (c.get("livenessProbe") or {}).get("httpGet", {}).get("path") != "/healthz":
                fail(problems, f"{where}: liveness probe is not GET /healthz")
            if (c.get("readinessProbe") or {}).get("httpGet", {}).get("path") != "/readyz":
                fail(problems, f"{where}: readiness probe is not GET /readyz")
            if not c.get("image"):
                fail(problems, f"{where}: no image")


def check_dataplane_ports(objects, values, problems):
    """Metrics and detailed readiness live on the admin port (issue 12 §5): the
    application Service exposes only the public port, the ServiceMonitor scrapes the admin
    port, and the NetworkPolicy admits only metricsFrom to it."""
    dp = values["dataplane"]
    if not dp["enabled"]:
        return
    admin, public = dp["adminPort"], dp["port"]
    component = lambda o: (o["metadata"].get("labels") or {}).get("app.kubernetes.io/component")
    mine = [o for o in objects if component(o) == "dataplane"]
    services = [o for o in mine if o["kind"] == "Service"]
    app = [o for o in services if not o["metadata"]["name"].endswith("-metrics")]
    metrics = [o for o in services if o["metadata"]["name"].endswith("-metrics")]
    if len(app) != 1 or [p["name"] for p in app[0]["spec"]["ports"]] != ["http"]:
        fail(problems, "data plane: the application Service must expose only the http port")
    if len(metrics) != 1 or [p["targetPort"] for p in metrics[0]["spec"]["ports"]] != ["admin"]:
        fail(problems, "data plane: the -metrics Service must expose only the admin port")
    for o in mine:
        if o["kind"] == "Deployment":
            ports = {p["name"]: p["containerPort"] for c in o["spec"]["template"]["spec"]["containers"]
                     for p in c.get("ports", [])}
            if ports != {"http": public, "admin": admin}:
                fail(problems, f"{name_of(o)}: container ports {ports}, expected http={public} admin={admin}")
        if o["kind"] == "ConfigMap":
            for key, text in (o.get("data") or {}).items():
                if key.endswith(".toml"):
                    conf = tomllib.loads(text)
                    if conf.get("admin_listen") != f"0.0.0.0:{admin}":
                        fail(problems, f"{name_of(o)}: admin_listen is not 0.0.0.0:{admin}")
        if o["kind"] == "ServiceMonitor":
            if [e.get("port") for e in o["spec"]["endpoints"]] != ["admin"]:
                fail(problems, f"{name_of(o)}: must scrape the admin port only")
        if o["kind"] == "NetworkPolicy":
            rules = o["spec"].get("ingress", [])
            admin_rules = [r for r in rules if any(p.get("port") == admin for p in r.get("ports", []))]
            if len(admin_rules) != 1 or any(p.get("port") == public for p in admin_rules[0]["ports"]):
                fail(problems, f"{name_of(o)}: the admin port needs an ingress rule of its own")
            elif admin_rules[0].get("from") != (values["networkPolicy"].get("metricsFrom") or None):
                fail(problems, f"{name_of(o)}: the admin port must admit networkPolicy.metricsFrom only")
    if values.get("serviceMonitor", {}).get("enabled") and not any(o["kind"] == "ServiceMonitor" for o in mine):
        fail(problems, "data plane: serviceMonitor.enabled but no ServiceMonitor for it")


def dataplane_settings_keys(path="dataplane/src/config.rs"):
    """The data plane's TOML keys, read from its serde structs (deny_unknown_fields: an
    unknown key stops it at start-up). Returns {section or "": {key: nested struct or None}}."""
    import re
    text = open(path).read()
    structs = {}
    for name, body in re.findall(r"pub struct (\w+) \{(.*?)\n\}", text, re.S):
        structs[name] = dict(re.findall(r"pub (\w+): (\w+)", body))
    return structs


def check_dataplane_toml(config, problems, where):
    structs = dataplane_settings_keys()
    def walk(table, struct, at):
        fields = structs.get(struct, {})
        for key, value in table.items():
            if key not in fields:
                fail(problems, f"{where}: unknown data plane setting {at}{key} (dataplane/src/config.rs)")
            elif isinstance(value, dict):
                walk(value, fields[key], f"{at}{key}.")
    walk(config, "Settings", "")


def extract_configs(objects, out_dir, problems):
    for o in objects:
        if o["kind"] == "Deployment":
            for c in o["spec"]["template"]["spec"]["containers"]:
                for env in c.get("env", []):
                    if env["name"].startswith("EDUMIND_DP__"):
                        path = [p.lower() for p in env["name"][len("EDUMIND_DP__"):].split("__")]
                        nested = {}
                        cur = nested
                        for part in path[:-1]:
                            cur = cur.setdefault(part, {})
                        cur[path[-1]] = "value"
                        check_dataplane_toml(nested, problems, f"{name_of(o)} env {env['name']}")
        if o["kind"] != "ConfigMap":
            continue
        for key, text in (o.get("data") or {}).items():
            if key.endswith(".toml"):
                try:
                    check_dataplane_toml(tomllib.loads(text), problems, f"{name_of(o)} {key}")
                except tomllib.TOMLDecodeError as e:
                    fail(problems, f"{name_of(o)} key {key} is not valid TOML: {e}")
            if key == "servers.yaml":
                with open(os.path.join(out_dir, "servers.yaml"), "w") as f:
                    f.write(text)


def main():
    rendered, values_path, rbac_path, release_ns, *versions = sys.argv[1:]
    objects = load_objects(rendered)
    with open(values_path) as f:
        values = json.load(f)
    with open(rbac_path) as f:
        rbac = json.load(f)
    problems = []
    skipped = check_schemas(objects, versions, problems)
    check_rbac(objects, values, rbac, release_ns, problems)
    check_pods(objects, problems)
    check_dataplane_ports(objects, values, problems)
    extract_configs(objects, os.path.dirname(os.path.abspath(rendered)), problems)
    for p in problems:
        print(f"  FAIL {p}", file=sys.stderr)
    kinds = sorted({o["kind"] for o in objects})
    print(f"  {len(objects)} objects ({', '.join(kinds)}); Kubernetes {', '.join(versions)}; "
          f"{skipped} skipped ({', '.join(sorted(SKIPPED_KINDS))}: schema not vendored); "
          f"{len(problems)} problems")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
