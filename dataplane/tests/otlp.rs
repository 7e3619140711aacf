//! OTLP export (docs/operations.md): the real `edumind-dataplane` binary with
//! `OTEL_EXPORTER_OTLP_ENDPOINT` set sends its request spans to that collector over
//! OTLP/HTTP (protobuf), in the caller's trace.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use support::*;
use warp::Filter;

/// A collector stand-in: records every `POST /v1/traces` body.
async fn collector() -> (u16, tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>)>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let route = warp::post()
        .and(warp::path!("v1" / "traces"))
        .and(warp::header::<String>("content-type"))
        .and(warp::body::bytes())
        .map(move |ct: String, body: bytes::Bytes| {
            let _ = tx.send((ct, body.to_vec()));
            warp::reply()
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(warp::serve(route).incoming(listener).run());
    (port, rx)
}

async fn start_dataplane(otlp: Option<u16>) -> (tokio::process::Child, String, tempfile::TempDir) {
    let redis = edumind_tests::redis().await;
    let dir = tempfile::tempdir().unwrap();
    let tenants = dir.path().join("tenants");
    std::fs::create_dir(&tenants).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.path().join("dp.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\ntenants_dir = {tenants:?}\n[redis]\nurl = {:?}\n\
             [auth]\nissuer = {ISSUER:?}\naudience = {AUDIENCE:?}\nhs256_secret = {HS_SECRET:?}\n",
            redis.url()
        ),
    )
    .unwrap();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_edumind-dataplane"));
    cmd.args(["--config", config.to_str().unwrap()])
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true);
    if let Some(p) = otlp {
        cmd.env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{p}"),
        );
    }
    let child = cmd.spawn().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    for _ in 0..200 {
        if reqwest::get(format!("{base}/healthz")).await.is_ok() {
            return (child, base, dir);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the data plane did not start");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_exported_to_the_configured_collector_in_the_callers_trace() {
    let (port, mut received) = collector().await;
    let (_child, base, _dir) = start_dataplane(Some(port)).await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let res = reqwest::Client::new()
        .get(format!("{base}/openapi.json"))
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    // A route behind authentication: its inner spans are at `debug` level (not created
    // for the logs at `info`) and must be exported all the same.
    let res = reqwest::Client::new()
        .get(format!("{base}/v1/tenants/{}/school", uuid::Uuid::new_v4()))
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 401);
    let trace_bytes: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&trace[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let contains = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let (mut request, mut authenticate) = (false, false);
    while !(request && authenticate) {
        let (ct, body) = tokio::time::timeout_at(deadline, received.recv())
            .await
            .unwrap_or_else(|_| {
                panic!("within 20 s: request span {request}, authenticate span {authenticate}")
            })
            .unwrap();
        assert_eq!(ct, "application/x-protobuf");
        if contains(&body, &trace_bytes) {
            assert!(contains(&body, b"edumind-dataplane"), "the service name");
            request |= contains(&body, b"request");
            authenticate |= contains(&body, b"authenticate");
        }
    }
}
