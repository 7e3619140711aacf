//! The `run` process shell without a cluster: probes and metrics are served while the
//! replica waits for the leader Lease, logs are JSON, and SIGTERM stops it cleanly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn get(port: u16, path: &str) -> Option<String> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    Some(out)
}

#[tokio::test]
async fn run_serves_probes_and_metrics_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    // An API server that is not there: leader election keeps failing, the process stays up.
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'https://127.0.0.1:1', insecure-skip-tls-verify: true}}]\n\
         users: [{name: u, user: {token: t}}]\ncontexts: [{name: x, context: {cluster: c, user: u, namespace: edumind-system}}]\ncurrent-context: x\n",
    )
    .unwrap();
    let config = dir.path().join("servers.yaml");
    std::fs::write(
        &config,
        "servers:\n- {name: main, host: 127.0.0.1, adminSecret: pg-admin}\n",
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_edumind-operator"))
        .args([
            "run",
            "--config",
            config.to_str().unwrap(),
            "--http-addr",
            &format!("127.0.0.1:{port}"),
        ])
        .env("KUBECONFIG", &kubeconfig)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    let mut health = None;
    for _ in 0..100 {
        health = get(port, "/healthz").await;
        if health.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let health = health.expect("/healthz answers");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(
        get(port, "/readyz")
            .await
            .unwrap()
            .starts_with("HTTP/1.1 200")
    );
    let metrics = get(port, "/metrics").await.unwrap();
    assert!(
        metrics.contains("# TYPE edumind_operator_reconciles counter"),
        "{metrics}"
    );

    let pid = child.id().unwrap().to_string();
    let killed = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(killed.success());
    let out = tokio::time::timeout(Duration::from_secs(15), child.wait_with_output())
        .await
        .expect("stops within 15 s")
        .unwrap();
    assert!(out.status.success(), "exit status {:?}", out.status);
    let logs =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let shutdown = logs
        .lines()
        .find(|l| l.contains("shutdown requested"))
        .unwrap_or_else(|| panic!("{logs}"));
    let line: serde_json::Value = serde_json::from_str(shutdown).expect("JSON log lines");
    assert_eq!(line["level"], "INFO");
}
