//! The School manifests in `examples/` are what users apply first: each must deserialise
//! into `School` without unknown fields, pass the CRD's CEL rules, and pass the operator's
//! own validation against the chart's default target server (`main`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use edumind_crds::{School, SchoolSpec};
use edumind_operator::config::TargetServers;
use edumind_operator::school as reconcile;
use serde::Deserialize;

fn examples_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// Every path in `input` (objects only) that `output` lacks: fields serde ignored.
fn unknown_fields(input: &serde_json::Value, output: &serde_json::Value, at: &str) -> Vec<String> {
    let mut out = Vec::new();
    if let (Some(i), Some(o)) = (input.as_object(), output.as_object()) {
        for (k, v) in i {
            let path = format!("{at}.{k}");
            match o.get(k) {
                None => out.push(path),
                Some(ov) => out.extend(unknown_fields(v, ov, &path)),
            }
        }
    }
    out
}

#[test]
fn examples_are_valid_schools() {
    // The chart's default target server configuration (charts/edumind/values.yaml).
    let servers = TargetServers::from_yaml(
        "servers:\n- {name: main, host: postgresql.databases.svc, adminSecret: edumind-pg-main-admin, default: true}\n",
    )
    .unwrap();
    let mut checked = 0;
    let mut entries: Vec<_> = std::fs::read_dir(examples_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    entries.sort();
    for path in entries {
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let value = serde_json::Value::deserialize(doc).unwrap();
            if value["kind"] != "School" {
                continue;
            }
            let name = format!("{} ({})", path.display(), value["metadata"]["name"]);
            assert_eq!(value["apiVersion"], "edumind.ai/v1alpha1", "{name}");
            let school: School = serde_json::from_value(value.clone())
                .unwrap_or_else(|e| panic!("{name} is not a School: {e}"));
            let unknown = unknown_fields(
                &value["spec"],
                &serde_json::to_value(&school.spec).unwrap(),
                "spec",
            );
            assert!(unknown.is_empty(), "{name}: unknown fields {unknown:?}");
            SchoolSpec::validate_cel(&value["spec"], None)
                .unwrap_or_else(|e| panic!("{name} fails the CRD's CEL rules: {e}"));
            // An update that changes nothing must pass the transition rules too.
            SchoolSpec::validate_cel(&value["spec"], Some(&value["spec"]))
                .unwrap_or_else(|e| panic!("{name} fails the CEL transition rules: {e}"));
            reconcile::validate(&school, &servers)
                .unwrap_or_else(|e| panic!("{name} fails the operator's validation: {e}"));
            checked += 1;
        }
    }
    assert!(
        checked >= 2,
        "expected the minimal and complete examples, found {checked}"
    );
}
