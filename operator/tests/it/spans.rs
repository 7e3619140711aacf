//! The span tree of one reconcile (docs/operations.md): one root per reconcile with the
//! School and a trace id, its pipeline steps as children, and no secret in any of it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use edumind_tests::spans::SpanRecorder;

use crate::support::TestEnv;

/// A current-thread runtime (the `#[tokio::test]` default): the recorder installed on this
/// thread sees the whole reconcile.
#[tokio::test]
async fn a_reconcile_opens_its_step_spans_under_one_root() {
    let recorder = SpanRecorder::default();
    let _guard = recorder.install();
    let env = TestEnv::builder().with_restores().build().await;
    let code = env.code("Span Academy");
    env.create("spans", env.spec_for(&code)).await;
    let before = recorder.spans().len();
    let school = env.reconcile("spans").await;
    let ready = school
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.status.clone());
    assert_eq!(ready.as_deref(), Some("True"));

    let spans: Vec<_> = recorder.spans().into_iter().skip(before).collect();
    let roots: Vec<_> = spans.iter().filter(|s| s.name == "reconcile").collect();
    assert_eq!(roots.len(), 1, "{spans:#?}");
    let root = roots[0];
    assert_eq!(root.parent, None);
    assert_eq!(root.fields["school"], "spans");
    assert_eq!(root.fields["namespace"], env.ns);
    let trace_id = root.fields["trace_id"].clone();
    assert_eq!(trace_id.len(), 32, "{trace_id}");
    // The pipeline's steps, in order, each directly under the root.
    let steps: Vec<&str> = spans
        .iter()
        .filter(|s| s.parent.as_deref() == Some("reconcile"))
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(
        steps,
        ["validate", "apply", "backups", "status"],
        "{spans:#?}"
    );

    // No secret in any span field or log line: the School's password is in its Secret.
    let data = env.secret_data("spans").await.unwrap();
    let password = data["password"].clone();
    assert!(password.len() >= 16);
    assert!(!format!("{spans:?}").contains(&password));
    let logs = recorder.logs();
    assert!(!logs.contains(&password), "the password reached the logs");
}
