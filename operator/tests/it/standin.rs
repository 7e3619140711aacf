//! The stand-in Kubernetes API server (`edumind_tests::kubeapi`) on its own, through the
//! same kube client the operator uses: watch resumption and 410 Gone, selectors on lists
//! and watches, finalizers and owner-reference garbage collection, custom resources
//! validated by their CRD's schema and CEL rules, status subresources, discovery, bookmarks
//! and the request record.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use edumind_crds::School;
use edumind_tests::kubeapi::Options;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::support::stand_in;

const NS: &str = "standin";

fn secret(name: &str, labels: serde_json::Value) -> Secret {
    serde_json::from_value(
        json!({"metadata": {"name": name, "namespace": NS, "labels": labels},
        "stringData": {"k": "v"}}),
    )
    .unwrap()
}

async fn create(client: &Client, name: &str, labels: serde_json::Value) -> Secret {
    Api::<Secret>::namespaced(client.clone(), NS)
        .create(&PostParams::default(), &secret(name, labels))
        .await
        .unwrap()
}

/// The events of a watch until it has been quiet for 300 ms, as (type, name).
async fn events(api: &Api<Secret>, wp: &WatchParams, rv: &str) -> Vec<(String, String)> {
    let mut stream = api.watch(wp, rv).await.unwrap().boxed();
    let mut out = Vec::new();
    while let Ok(Some(event)) =
        tokio::time::timeout(Duration::from_millis(300), stream.next()).await
    {
        out.push(match event.unwrap() {
            WatchEvent::Added(s) => ("ADDED".into(), s.name_any()),
            WatchEvent::Modified(s) => ("MODIFIED".into(), s.name_any()),
            WatchEvent::Deleted(s) => ("DELETED".into(), s.name_any()),
            WatchEvent::Bookmark(b) => ("BOOKMARK".into(), b.metadata.resource_version),
            WatchEvent::Error(e) => ("ERROR".into(), e.code.to_string()),
        });
    }
    out
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[tokio::test]
async fn watch_resumes_from_a_resource_version_and_answers_410_once_history_is_gone() {
    let (server, client) = stand_in(Options {
        history: 8,
        ..Default::default()
    })
    .await;
    let api: Api<Secret> = Api::namespaced(client.clone(), NS);
    let a = create(&client, "a", json!({})).await;
    let after_a = a.resource_version().unwrap();
    create(&client, "b", json!({})).await;
    api.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"x": "1"}}})),
    )
    .await
    .unwrap();
    api.delete("b", &DeleteParams::default()).await.unwrap();
    // Resumed after `a`: exactly what happened since, in order.
    let wp = WatchParams::default();
    assert_eq!(
        events(&api, &wp, &after_a).await,
        pairs(&[("ADDED", "b"), ("MODIFIED", "a"), ("DELETED", "b")])
    );
    // From "0": the current state as ADDED events.
    assert_eq!(events(&api, &wp, "0").await, pairs(&[("ADDED", "a")]));
    // Eight more changes push `a`'s version out of the history: 410 Gone, as an ERROR event.
    for i in 0..8 {
        create(&client, &format!("n{i}"), json!({})).await;
    }
    assert_eq!(
        events(&api, &wp, &after_a).await,
        pairs(&[("ERROR", "410")])
    );
    // A recent version still resumes; after compaction it too is gone.
    let recent = server.resource_version().to_string();
    create(&client, "late", json!({})).await;
    assert_eq!(
        events(&api, &wp, &recent).await,
        pairs(&[("ADDED", "late")])
    );
    server.compact();
    assert_eq!(events(&api, &wp, &recent).await, pairs(&[("ERROR", "410")]));
    // Every request was recorded with its verb.
    let requests = server.requests();
    let watches: Vec<_> = requests.iter().filter(|r| r.verb == "watch").collect();
    assert_eq!(watches.len(), 5);
    assert!(
        watches
            .iter()
            .all(|r| r.resource == "secrets" && r.namespace == NS)
    );
    assert!(
        requests.iter().any(|r| r.verb == "patch") && requests.iter().any(|r| r.verb == "delete")
    );
}

#[tokio::test]
async fn label_and_field_selectors_filter_lists_and_watches() {
    let (_server, client) = stand_in(Options::default()).await;
    let api: Api<Secret> = Api::namespaced(client.clone(), NS);
    create(&client, "one", json!({"app": "edumind", "tier": "db"})).await;
    create(&client, "two", json!({"app": "edumind"})).await;
    let start = create(&client, "three", json!({"app": "other"})).await;
    let names = |lp: ListParams| {
        let api = api.clone();
        async move {
            let mut n: Vec<String> = api
                .list(&lp)
                .await
                .unwrap()
                .iter()
                .map(|s| s.name_any())
                .collect();
            n.sort();
            n
        }
    };
    assert_eq!(
        names(ListParams::default().labels("app=edumind")).await,
        ["one", "two"]
    );
    assert_eq!(
        names(ListParams::default().labels("app=edumind,!tier")).await,
        ["two"]
    );
    assert_eq!(
        names(ListParams::default().labels("app in (other, x)")).await,
        ["three"]
    );
    assert_eq!(
        names(ListParams::default().labels("app!=edumind")).await,
        ["three"]
    );
    assert_eq!(
        names(ListParams::default().fields("metadata.name=two")).await,
        ["two"]
    );
    assert_eq!(
        names(
            ListParams::default()
                .fields("metadata.name!=two")
                .labels("app=edumind")
        )
        .await,
        ["one"]
    );
    // Another namespace is not listed.
    let elsewhere: Api<Secret> = Api::namespaced(client.clone(), "elsewhere");
    let mut s = secret("one", json!({"app": "edumind"}));
    s.metadata.namespace = Some("elsewhere".into());
    elsewhere.create(&PostParams::default(), &s).await.unwrap();
    assert_eq!(
        names(ListParams::default().labels("app=edumind")).await,
        ["one", "two"]
    );
    let all: Api<Secret> = Api::all(client.clone());
    assert_eq!(
        all.list(&ListParams::default().labels("app=edumind"))
            .await
            .unwrap()
            .items
            .len(),
        3
    );

    // A watch with a selector: leaving it is DELETED, entering it ADDED.
    let relabel = |name: &'static str, app: &'static str| {
        let api = api.clone();
        async move {
            api.patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"app": app}}})),
            )
            .await
            .unwrap();
        }
    };
    relabel("two", "other").await;
    relabel("three", "edumind").await;
    api.patch(
        "one",
        &PatchParams::default(),
        &Patch::Merge(json!({"stringData": {"k": "w"}})),
    )
    .await
    .unwrap();
    let wp = WatchParams::default().labels("app=edumind");
    assert_eq!(
        events(&api, &wp, &start.resource_version().unwrap()).await,
        pairs(&[("DELETED", "two"), ("ADDED", "three"), ("MODIFIED", "one")])
    );
    let wp = WatchParams::default().fields("metadata.name=two");
    assert_eq!(
        events(&api, &wp, &start.resource_version().unwrap()).await,
        pairs(&[("MODIFIED", "two")])
    );
}

#[tokio::test]
async fn finalizers_hold_deletion_and_owners_take_their_dependents_along() {
    let (_server, client) = stand_in(Options::default()).await;
    let api: Api<Secret> = Api::namespaced(client.clone(), NS);
    let mut held = secret("held", json!({}));
    held.metadata.finalizers = Some(vec!["example.com/guard".into()]);
    let created = api.create(&PostParams::default(), &held).await.unwrap();
    api.delete("held", &DeleteParams::default()).await.unwrap();
    let marked = api.get("held").await.unwrap();
    assert!(marked.metadata.deletion_timestamp.is_some());
    // No new finalizer on an object being deleted.
    let err = api
        .patch(
            "held",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": ["example.com/guard", "x/y"]}})),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(e) if e.code == 422),
        "{err}"
    );
    api.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert!(api.get_opt("held").await.unwrap().is_none());
    assert_eq!(
        events(
            &api,
            &WatchParams::default(),
            &created.resource_version().unwrap()
        )
        .await,
        pairs(&[
            ("MODIFIED", "held"),
            ("MODIFIED", "held"),
            ("DELETED", "held")
        ])
    );

    // Owner-reference garbage collection, also across kinds.
    let schools: Api<School> = Api::namespaced(client.clone(), NS);
    let mut school: School = serde_json::from_value(json!({"apiVersion": "edumind.ai/v1alpha1",
        "kind": "School", "metadata": {"name": "owner", "namespace": NS},
        "spec": {"code": "C1", "name": "N", "contactEmail": "a@b.example"}}))
    .unwrap();
    school = schools
        .create(&PostParams::default(), &school)
        .await
        .unwrap();
    let owner_ref = json!([{"apiVersion": "edumind.ai/v1alpha1", "kind": "School", "name": "owner",
        "uid": school.uid().unwrap(), "controller": true}]);
    let mut dependent = secret("dependent", json!({}));
    dependent.metadata.owner_references = Some(serde_json::from_value(owner_ref.clone()).unwrap());
    api.create(&PostParams::default(), &dependent)
        .await
        .unwrap();
    let mut orphan = secret("orphan", json!({}));
    orphan.metadata.owner_references = Some(serde_json::from_value(owner_ref).unwrap());
    api.create(&PostParams::default(), &orphan).await.unwrap();
    // Orphaned first: the reference is removed, the Secret stays.
    let mut other = school.clone();
    other.metadata.name = Some("other".into());
    other.metadata.resource_version = None;
    other.spec.code = "C2".into();
    let other = schools
        .create(&PostParams::default(), &other)
        .await
        .unwrap();
    let mut o = api.get("orphan").await.unwrap();
    o.metadata.owner_references.as_mut().unwrap()[0].uid = other.uid().unwrap();
    api.replace("orphan", &PostParams::default(), &o)
        .await
        .unwrap();
    schools
        .delete("other", &DeleteParams::orphan())
        .await
        .unwrap();
    assert!(
        api.get("orphan")
            .await
            .unwrap()
            .metadata
            .owner_references
            .unwrap()
            .is_empty()
    );
    schools
        .delete("owner", &DeleteParams::default())
        .await
        .unwrap();
    assert!(api.get_opt("dependent").await.unwrap().is_none());
    assert!(api.get_opt("orphan").await.unwrap().is_some());
}

#[tokio::test]
async fn custom_resources_are_validated_by_schema_and_cel_rules() {
    let (_server, client) = stand_in(Options::default()).await;
    let schools: Api<School> = Api::namespaced(client.clone(), NS);
    let post = |spec: serde_json::Value| {
        let schools = schools.clone();
        async move {
            let s: serde_json::Value = json!({"apiVersion": "edumind.ai/v1alpha1", "kind": "School",
                "metadata": {"name": "s", "namespace": NS}, "spec": spec});
            let s: School = match serde_json::from_value(s.clone()) {
                Ok(s) => s,
                // Not even the Rust type takes it: send it raw.
                Err(_) => {
                    let raw: Api<kube::api::DynamicObject> = Api::namespaced_with(
                        schools.clone().into_client(),
                        NS,
                        &kube::api::ApiResource::erase::<School>(&()),
                    );
                    return raw
                        .create(&PostParams::default(), &serde_json::from_value(s).unwrap())
                        .await
                        .map(|_| ());
                }
            };
            schools.create(&PostParams::default(), &s).await.map(|_| ())
        }
    };
    let rejected = |r: Result<(), kube::Error>| match r {
        Err(kube::Error::Api(e)) if e.code == 422 => e.message,
        other => panic!("expected 422, got {other:?}"),
    };
    let base = json!({"code": "C1", "name": "N", "contactEmail": "a@b.example"});
    let with = |k: &str, v: serde_json::Value| {
        let mut s = base.clone();
        s[k] = v;
        s
    };
    // Schema: required, type, pattern or length, enum, range.
    let mut missing = base.clone();
    missing.as_object_mut().unwrap().remove("name");
    rejected(post(missing).await);
    rejected(post(with("active", json!("yes"))).await);
    rejected(post(with("code", json!("x".repeat(51)))).await);
    rejected(post(with("reclaimPolicy", json!("Shred"))).await);
    rejected(post(with("backup", json!({"retentionDays": 0}))).await);
    // CEL: exactly one backup storage.
    let both = json!({"storage": {"persistentVolumeClaim": "p", "s3": {"bucket": "b"}}});
    let message = rejected(post(with("backup", both)).await);
    assert!(message.contains("storage"), "{message}");
    rejected(post(with("backup", json!({"storage": {}}))).await);

    post(base.clone()).await.unwrap();
    let created = schools.get("s").await.unwrap();
    // Defaults from the schema were applied.
    assert!(created.spec.active);
    assert_eq!(created.metadata.generation, Some(1));
    let merge = |patch: serde_json::Value| {
        let schools = schools.clone();
        async move {
            schools
                .patch("s", &PatchParams::default(), &Patch::Merge(patch))
                .await
                .map(|_| ())
        }
    };
    // CEL transition rules: code changed, targetServer or schoolId set later.
    rejected(merge(json!({"spec": {"code": "C2"}})).await);
    rejected(merge(json!({"spec": {"targetServer": "main"}})).await);
    rejected(merge(json!({"spec": {"schoolId": "0b8f9a5c-3c1e-4c55-9b7d-2f6f1d5c9e11"}})).await);
    merge(json!({"spec": {"name": "Renamed"}})).await.unwrap();
    // Status subresource: the main resource ignores status, the subresource takes only it.
    merge(json!({"status": {"phase": "Ready"}})).await.unwrap();
    let s = schools.get("s").await.unwrap();
    assert!(s.status.is_none());
    assert_eq!(s.metadata.generation, Some(2));
    schools
        .patch_status(
            "s",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Ready"}, "spec": {"name": "Ignored"}})),
        )
        .await
        .unwrap();
    let s = schools.get("s").await.unwrap();
    assert_eq!(s.status.unwrap().phase.as_deref(), Some("Ready"));
    assert_eq!(s.spec.name, "Renamed");
    assert_eq!(s.metadata.generation, Some(2));
    // A stale resourceVersion conflicts.
    let mut stale = created.clone();
    stale.spec.name = "Stale".into();
    let err = schools
        .replace("s", &PostParams::default(), &stale)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(e) if e.code == 409),
        "{err}"
    );
    // Server-side apply creates, then merges.
    let applied: School = serde_json::from_value(json!({"apiVersion": "edumind.ai/v1alpha1",
        "kind": "School", "metadata": {"name": "t", "namespace": NS},
        "spec": {"code": "T", "name": "T", "contactEmail": "t@b.example"}}))
    .unwrap();
    let pp = PatchParams::apply("test").force();
    schools
        .patch("t", &pp, &Patch::Apply(&applied))
        .await
        .unwrap();
    let mut again = applied.clone();
    again.spec.name = "T2".into();
    schools
        .patch("t", &pp, &Patch::Apply(&again))
        .await
        .unwrap();
    assert_eq!(schools.get("t").await.unwrap().spec.name, "T2");
    // JSON patch.
    schools
        .patch(
            "t",
            &PatchParams::default(),
            &Patch::Json::<()>(
                serde_json::from_value(
                    json!([{"op": "replace", "path": "/spec/name", "value": "T3"}]),
                )
                .unwrap(),
            ),
        )
        .await
        .unwrap();
    assert_eq!(schools.get("t").await.unwrap().spec.name, "T3");
}

#[tokio::test]
async fn discovery_lists_the_crds_and_watches_send_bookmarks() {
    let (server, client) = stand_in(Options {
        bookmark_every: Duration::from_millis(100),
        ..Default::default()
    })
    .await;
    let discovery = kube::Discovery::new(client.clone()).run().await.unwrap();
    let group = discovery.get("edumind.ai").expect("edumind.ai served");
    let kinds: Vec<String> = group
        .recommended_resources()
        .into_iter()
        .map(|(r, _)| r.kind)
        .collect();
    for kind in ["School", "SchoolBackup", "SchoolRestore"] {
        assert!(kinds.contains(&kind.to_string()), "{kinds:?}");
    }
    assert!(discovery.get("batch").is_some());
    let api: Api<Secret> = Api::namespaced(client.clone(), NS);
    let rv = server.resource_version().to_string();
    let stream = api
        .watch(&WatchParams::default().timeout(1), &rv)
        .await
        .unwrap();
    let all: Vec<_> = stream.try_collect().await.unwrap();
    assert!(
        all.len() >= 3,
        "bookmarks every 100 ms for 1 s: {}",
        all.len()
    );
    assert!(
        all.iter()
            .all(|e| matches!(e, WatchEvent::Bookmark(b) if b.metadata.resource_version == rv))
    );
}
