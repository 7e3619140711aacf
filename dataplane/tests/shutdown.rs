//! Rolling updates drop no requests (issue 11 §7): the real `edumind-dataplane` binary
//! gets SIGTERM under load. `/readyz` turns 503 at once while every request is still
//! served and no connection is refused for the drain period; then the listener closes,
//! and a request in flight all along still completes before the process exits.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edumind_dataplane::tenants::TenantId;
use serde_json::json;
use support::*;
use uuid::Uuid;

const DRAIN: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_drains_then_finishes_in_flight_requests() {
    let pg = edumind_tests::postgres().await;
    let redis = edumind_tests::redis().await;
    let a = provision(pg, TenantId::School(Uuid::new_v4())).await;
    let dir = tempfile::tempdir().unwrap();
    let tenants = dir.path().join("tenants");
    std::fs::create_dir(&tenants).unwrap();
    write_tenant(&tenants, &a.tenant);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.path().join("dp.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:0\"\ntenants_dir = {tenants:?}\nshutdown_drain_secs = {}\n\
             shutdown_grace_secs = 20\n[redis]\nurl = {:?}\n[auth]\nissuer = {ISSUER:?}\n\
             audience = {AUDIENCE:?}\nhs256_secret = {HS_SECRET:?}\n",
            DRAIN.as_secs(),
            redis.url()
        ),
    )
    .unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_edumind-dataplane"))
        .args(["--config", config.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    // A new TCP connection for every request: a closed listener shows as a refused one.
    let fresh = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let mut up = false;
    for _ in 0..200 {
        if let Ok(r) = fresh.get(format!("{base}/readyz")).send().await {
            up = r.status().as_u16() == 200;
            if up {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up, "the data plane did not become ready");

    let ta = a.school_id.unwrap();
    let admin = token(a.admin_user, 2, Some(ta));
    let read_url = format!("{base}/v1/tenants/{ta}/school");

    // One read first, so the caller's school membership is cached: the lock below is on
    // `users`, which the membership check reads on a miss.
    let warm = fresh
        .get(&read_url)
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(warm.status().as_u16(), 200);

    // A request kept in flight across the whole drain: its INSERT waits on a table lock
    // held here until the listener has closed.
    let mut locker = a.db.connect().await;
    sqlx::query("BEGIN").execute(&mut locker).await.unwrap();
    sqlx::query("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        .execute(&mut locker)
        .await
        .unwrap();
    let in_flight = {
        let (fresh, url, admin) = (
            fresh.clone(),
            format!("{base}/v1/tenants/{ta}/users"),
            admin.clone(),
        );
        tokio::spawn(async move {
            fresh
                .post(url)
                .bearer_auth(admin)
                .json(&json!({"email": "inflight@x.test", "full_name": "In Flight", "role": 1}))
                .send()
                .await
                .map(|r| r.status().as_u16())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !in_flight.is_finished(),
        "the write should be waiting on the lock"
    );

    // Load: four clients, each request on a new connection.
    type Row = (Instant, Result<u16, String>);
    let results: Arc<Mutex<Vec<Row>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (fresh, url, admin, results, stop) = (
            fresh.clone(),
            read_url.clone(),
            admin.clone(),
            results.clone(),
            stop.clone(),
        );
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let r = fresh
                    .get(&url)
                    .bearer_auth(&admin)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .map_err(|e| format!("{e:?}"));
                let failed = r.is_err();
                results.lock().unwrap().push((started, r));
                if failed {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let pid = child.id().unwrap();
    let sigterm = Instant::now();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(kill.success());

    // `/readyz` turns 503 first, while the API still answers.
    let mut readyz_503 = None;
    while sigterm.elapsed() < DRAIN / 2 {
        let r = fresh.get(format!("{base}/readyz")).send().await.unwrap();
        if r.status().as_u16() == 503 {
            readyz_503 = Some(sigterm.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let readyz_503 = readyz_503.expect("/readyz did not turn 503 during the drain");

    // Past the drain: the listener closes, so new connections are refused.
    tokio::time::sleep(DRAIN + Duration::from_millis(500) - sigterm.elapsed()).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let refused_after = fresh.get(&read_url).bearer_auth(&admin).send().await;
    assert!(
        refused_after.is_err(),
        "the listener should be closed after the drain"
    );
    // The in-flight write is still running; let it finish.
    assert!(!in_flight.is_finished());
    sqlx::query("COMMIT").execute(&mut locker).await.unwrap();
    let status = in_flight.await.unwrap();
    assert_eq!(
        status.ok(),
        Some(201),
        "the in-flight request did not complete"
    );
    let exit = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("the process exits once in-flight requests are done")
        .unwrap();
    assert!(exit.success(), "{exit:?}");

    let results = results.lock().unwrap().clone();
    let during: Vec<&Row> = results
        .iter()
        .filter(|(t, _)| {
            *t >= sigterm && t.duration_since(sigterm) < DRAIN - Duration::from_millis(300)
        })
        .collect();
    assert!(during.len() > 10, "too little load during the drain");
    let failed: Vec<&&Row> = during.iter().filter(|(_, r)| *r != Ok(200)).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during the drain period, e.g. {:?}",
        failed.len(),
        during.len(),
        failed.first()
    );
    println!(
        "readyz 503 after {readyz_503:?}; {} requests during the drain, all 200",
        during.len()
    );
}
