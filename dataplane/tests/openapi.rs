//! The OpenAPI document matches the routes the server really mounts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use edumind_dataplane::openapi::ALL;
use support::*;
use uuid::Uuid;

#[tokio::test]
async fn every_documented_operation_is_routed() {
    let f = Fixture::start(edumind_tests::redis().await.url()).await;
    let (s, doc, _) = f.call("GET", "/openapi.json", None, None).await;
    assert_eq!(s, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    // The served document is the generated one.
    assert_eq!(doc, edumind_dataplane::openapi::document());
    let served = doc["paths"].as_object().unwrap();
    for r in ALL {
        assert_eq!(
            served[r.path][r.method]["operationId"], r.id,
            "{} missing from /openapi.json",
            r.id
        );
        let path = r
            .path
            .replace("{tenant}", &f.a.school_id.unwrap().to_string())
            .replace("{id}", &Uuid::new_v4().to_string())
            .replace("{agent_key}", "agent-1");
        let body = matches!(r.method, "put" | "post").then(|| serde_json::json!({}));
        let (status, v, _) = f.call(&r.method.to_uppercase(), &path, None, body).await;
        // Unauthenticated: a routed operation answers 401 (or 200 when public); a path
        // the server does not route would answer 404/405.
        let expected = if r.auth { 401 } else { 200 };
        assert_eq!(status, expected, "{} {} {}: {v}", r.method, r.path, r.id);
    }
    // Operations the server does not have are not routed.
    assert_eq!(
        f.call(
            "DELETE",
            &format!("/v1/tenants/{}/school", f.a.school_id.unwrap()),
            None,
            None
        )
        .await
        .0,
        405
    );
}
