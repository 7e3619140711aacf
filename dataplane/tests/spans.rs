//! The span tree of one request, and the trace id in its log lines (docs/operations.md).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use edumind_tests::spans::SpanRecorder;
use support::*;

/// A current-thread runtime (the `#[tokio::test]` default), so the recorder installed on
/// this thread sees the server's tasks too.
#[tokio::test]
async fn a_request_opens_its_span_tree_and_logs_its_trace_id() {
    let recorder = SpanRecorder::default();
    let _guard = recorder.install();
    let redis = edumind_tests::redis().await;
    let f = Fixture::start(redis.url()).await;
    let ta = f.a.school_id.unwrap();
    let tok = token(f.a.teacher_user, 1, Some(ta));
    let roster = format!("/v1/tenants/{ta}/classes/{}/roster", f.a.class_id);
    let before = recorder.spans().len();

    // A cache miss: authenticate, resolve the tenant, look in the cache, read PostgreSQL
    // through a pooled connection, store the reply.
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let res = f
        .http
        .get(f.url(&roster))
        .bearer_auth(&tok)
        .header("traceparent", parent)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);

    let spans: Vec<_> = recorder.spans().into_iter().skip(before).collect();
    let requests: Vec<_> = spans.iter().filter(|s| s.name == "request").collect();
    assert_eq!(requests.len(), 1, "one request span: {spans:#?}");
    let request = requests[0];
    assert_eq!(request.parent, None, "the request span is a root");
    assert_eq!(request.fields["route"], "classes.roster.get");
    assert_eq!(request.fields["method"], "GET");
    assert_eq!(request.fields["tenant"], ta.to_string(), "{request:?}");
    assert_eq!(
        request.fields["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736",
        "the caller's trace continues"
    );
    let child = |name: &str, parent: &str| {
        assert!(
            spans
                .iter()
                .any(|s| s.name == name && s.parent.as_deref() == Some(parent)),
            "no span {name} under {parent}: {spans:#?}"
        );
    };
    child("authenticate", "request");
    child("resolve_tenant", "request");
    child("cache.get", "request");
    child("pool.acquire", "request");
    child("cache.set", "request");
    assert!(
        spans
            .iter()
            .any(|s| s.name.starts_with("db.") && s.parent.as_deref() == Some("request")),
        "no statement span under the request: {spans:#?}"
    );
    assert_eq!(
        spans
            .iter()
            .find(|s| s.name == "resolve_tenant")
            .map(|s| s.fields["tenant"].clone()),
        Some(ta.to_string())
    );

    // Its log line carries the trace id; nothing carries the token.
    let logs = recorder.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("request done") && l.contains("classes.roster.get"))
        .unwrap_or_else(|| panic!("no log line of the request in\n{logs}"));
    assert!(
        line.contains("\"trace_id\":\"4bf92f3577b34da6a3ce929d0e0e4736\""),
        "{line}"
    );
    let secret_part = tok.rsplit('.').next().unwrap();
    assert!(!logs.contains(secret_part), "the token reached the logs");
    assert!(
        !format!("{spans:?}").contains(secret_part),
        "the token reached a span"
    );

    // Without a traceparent, every request gets a fresh trace id of its own.
    let mut ids = Vec::new();
    for _ in 0..2 {
        let n = recorder.spans().len();
        let (s, _, _) = f.call("GET", &roster, Some(&tok), None).await;
        assert_eq!(s, 200);
        let spans = recorder.spans();
        let id = spans[n..]
            .iter()
            .find(|s| s.name == "request")
            .map(|s| s.fields["trace_id"].clone())
            .unwrap();
        assert_eq!(id.len(), 32, "{id}");
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
        ids.push(id);
    }
    assert_ne!(ids[0], ids[1]);
    assert_ne!(ids[0], "4bf92f3577b34da6a3ce929d0e0e4736");
}
