//! Every `x-kubernetes-validations` rule of the generated CRDs, evaluated by a CEL
//! interpreter (`kube-cel`, the one the stand-in API server applies on create and update)
//! against create and update pairs (`self`, `oldSelf`): each rule must reject at least one
//! case and accept at least one, so a rule added without cases, or a rule that no longer
//! rejects what it should, fails here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};

use edumind_tests::kubeapi::ResourceType;
use serde_json::{Value, json};

/// Every rule's message in a schema, by walking it.
fn rules(schema: &Value, out: &mut BTreeSet<String>) {
    match schema {
        Value::Object(map) => {
            if let Some(Value::Array(list)) = map.get("x-kubernetes-validations") {
                for rule in list {
                    out.insert(rule["message"].as_str().unwrap().to_string());
                }
            }
            map.values().for_each(|v| rules(v, out));
        }
        Value::Array(list) => list.iter().for_each(|v| rules(v, out)),
        _ => {}
    }
}

const SCHOOL_ID: &str = "0b8f9a5c-3c1e-4c55-9b7d-2f6f1d5c9e11";
const OTHER_ID: &str = "1b8f9a5c-3c1e-4c55-9b7d-2f6f1d5c9e11";
const CODE: &str = "code is immutable";
const ID: &str = "schoolId is immutable: it cannot be set, changed or removed after creation";
const SERVER: &str =
    "targetServer is immutable: a school cannot move to another server by editing its manifest";
const STORAGE: &str = "set exactly one of persistentVolumeClaim, s3 or azure";
const AZURE_CREDENTIALS: &str = "set at most one of accountKeyKey or sasTokenKey";
const BACKUP: &str = "the spec of a SchoolBackup is immutable";
const RESTORE: &str = "the spec of a SchoolRestore is immutable";

fn object(kind: &str, spec: Value) -> Value {
    json!({"apiVersion": "edumind.ai/v1alpha1", "kind": kind,
        "metadata": {"name": "x", "namespace": "n"}, "spec": spec})
}

fn school(edit: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Value {
    let mut spec = json!({"code": "Lincoln", "name": "Lincoln High", "contactEmail": "a@b.example",
        "targetServer": "main", "schoolId": SCHOOL_ID});
    edit(spec.as_object_mut().unwrap());
    object("School", spec)
}

struct Case {
    what: &'static str,
    old: Option<Value>,
    new: Value,
    /// The rule this case exercises, and whether it must reject.
    rule: &'static str,
    rejects: bool,
}

fn cases() -> Vec<Case> {
    let base = school(|_| {});
    let without = |field: &'static str| school(move |s| drop(s.remove(field)));
    let with = |field: &'static str, v: Value| school(move |s| drop(s.insert(field.into(), v)));
    let storage = |s: Value| with("backup", json!({"storage": s}));
    let case = |what, old: Option<&Value>, new: Value, rule, rejects| Case {
        what,
        old: old.cloned(),
        new,
        rule,
        rejects,
    };
    let backup = |school: &str| object("SchoolBackup", json!({"school": school}));
    let restore = |backup: &str| object("SchoolRestore", json!({"school": "a", "backup": backup}));
    vec![
        case(
            "code kept",
            Some(&base),
            with("name", json!("Renamed")),
            CODE,
            false,
        ),
        case(
            "code changed",
            Some(&base),
            with("code", json!("Other")),
            CODE,
            true,
        ),
        case("schoolId kept", Some(&base), base.clone(), ID, false),
        case(
            "schoolId never set",
            Some(&without("schoolId")),
            without("schoolId"),
            ID,
            false,
        ),
        case(
            "schoolId set later",
            Some(&without("schoolId")),
            base.clone(),
            ID,
            true,
        ),
        case(
            "schoolId changed",
            Some(&base),
            with("schoolId", json!(OTHER_ID)),
            ID,
            true,
        ),
        case(
            "schoolId removed",
            Some(&base),
            without("schoolId"),
            ID,
            true,
        ),
        case(
            "targetServer kept",
            Some(&base),
            base.clone(),
            SERVER,
            false,
        ),
        case(
            "targetServer never set",
            Some(&without("targetServer")),
            without("targetServer"),
            SERVER,
            false,
        ),
        case(
            "targetServer set later",
            Some(&without("targetServer")),
            base.clone(),
            SERVER,
            true,
        ),
        case(
            "targetServer changed",
            Some(&base),
            with("targetServer", json!("other")),
            SERVER,
            true,
        ),
        case(
            "targetServer removed",
            Some(&base),
            without("targetServer"),
            SERVER,
            true,
        ),
        case(
            "a volume claim",
            None,
            storage(json!({"persistentVolumeClaim": "b"})),
            STORAGE,
            false,
        ),
        case(
            "an S3 bucket",
            None,
            storage(json!({"s3": {"bucket": "backups"}})),
            STORAGE,
            false,
        ),
        case(
            "both",
            None,
            storage(json!({"persistentVolumeClaim": "b", "s3": {"bucket": "backups"}})),
            STORAGE,
            true,
        ),
        case("neither", None, storage(json!({})), STORAGE, true),
        case(
            "an Azure container with a SAS token",
            None,
            storage(
                json!({"azure": {"account": "edumindsa", "container": "backups",
                "credentials": {"secretName": "az", "sasTokenKey": "sas"}}}),
            ),
            AZURE_CREDENTIALS,
            false,
        ),
        case(
            "an Azure account key and a SAS token",
            None,
            storage(
                json!({"azure": {"account": "edumindsa", "container": "backups",
                "credentials": {"secretName": "az", "accountKeyKey": "k", "sasTokenKey": "sas"}}}),
            ),
            AZURE_CREDENTIALS,
            true,
        ),
        case(
            "both, on update",
            Some(&storage(json!({"s3": {"bucket": "backups"}}))),
            storage(json!({"persistentVolumeClaim": "b", "s3": {"bucket": "backups"}})),
            STORAGE,
            true,
        ),
        case("SchoolBackup created", None, backup("a"), BACKUP, false),
        case(
            "SchoolBackup unchanged",
            Some(&backup("a")),
            backup("a"),
            BACKUP,
            false,
        ),
        case(
            "SchoolBackup retargeted",
            Some(&backup("a")),
            backup("b"),
            BACKUP,
            true,
        ),
        case(
            "SchoolRestore unchanged",
            Some(&restore("latest")),
            restore("latest"),
            RESTORE,
            false,
        ),
        case(
            "SchoolRestore changed",
            Some(&restore("latest")),
            restore("x.dump"),
            RESTORE,
            true,
        ),
    ]
}

#[test]
fn every_cel_rule_of_the_generated_crds_accepts_and_rejects_its_cases() {
    let mut types = BTreeMap::new();
    let mut all = BTreeSet::new();
    for (_, crd) in edumind_crds::all_crds() {
        let crd = serde_json::to_value(crd).unwrap();
        rules(&crd, &mut all);
        let ty = ResourceType::from_crd(&crd).unwrap();
        types.insert(ty.kind.clone(), ty);
    }
    let (mut accepted, mut rejected) = (BTreeSet::new(), BTreeSet::new());
    for case in cases() {
        let kind = case.new["kind"].as_str().unwrap();
        let mut new = case.new.clone();
        let result = types[kind].admit(&mut new, case.old.as_ref());
        match (&result, case.rejects) {
            (Err(e), true) => {
                assert!(
                    e.contains(case.rule),
                    "{}: rejected for another reason: {e}",
                    case.what
                );
                rejected.insert(case.rule);
            }
            (Ok(()), false) => {
                accepted.insert(case.rule);
            }
            (Err(e), false) => panic!("{}: rejected: {e}", case.what),
            (Ok(()), true) => panic!(
                "{}: accepted, but {:?} should reject it",
                case.what, case.rule
            ),
        }
    }
    let all: BTreeSet<&str> = all.iter().map(String::as_str).collect();
    assert_eq!(rejected, all, "every rule rejects a case");
    assert_eq!(accepted, all, "every rule accepts a case");
}
