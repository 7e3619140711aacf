//! A PostgreSQL restart under load (issue 11 §1): the tenant's server is crashed with
//! `pg_ctl stop -m immediate` and started again on the same port while clients read and
//! write. No 500s; 503 (with `Retry-After`) only while the server is down; every request
//! that starts after it is back succeeds; every acknowledged write is there afterwards.
//! The server is this test's own, not the process-wide one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edumind_dataplane::startup::Application;
use edumind_dataplane::tenants::TenantId;
use edumind_tests::{PgServer, PrivatePg};
use serde_json::json;
use support::*;
use uuid::Uuid;

#[derive(Debug, Clone)]
struct Outcome {
    write: bool,
    started: Instant,
    finished: Instant,
    status: u16,
    retry_after: bool,
    email: Option<String>,
}

#[derive(Default)]
struct Marks {
    /// Just before `pg_ctl stop` is run.
    stop: Option<Instant>,
    /// When the restarted server accepts connections.
    up: Option<Instant>,
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_restart_under_load_answers_503_then_recovers_at_once() {
    let pg: Arc<Mutex<PrivatePg>> =
        Arc::new(Mutex::new(blocking(PgServer::start_private).await.unwrap()));
    let server = pg.lock().unwrap().server.clone();
    let a = provision(&server, TenantId::School(Uuid::new_v4())).await;
    let redis = edumind_tests::redis().await;
    let dir = tempfile::tempdir().unwrap();
    write_tenant(dir.path(), &a.tenant);
    let mut s = settings(dir.path().to_owned(), redis.url());
    s.pool.acquire_timeout_ms = 1000;
    s.pool.connect_timeout_ms = 1000;
    let app = Application::build(s).await.unwrap();
    let base = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped(std::future::pending()));

    let ta = a.school_id.unwrap();
    let admin = token(a.admin_user, 2, Some(ta));
    let read_url = format!("{base}/v1/tenants/{ta}/school");
    let write_url = format!("{base}/v1/tenants/{ta}/users");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();

    // Warm up: several idle connections in the pool, all of which the crash will kill.
    let warm: Vec<_> = (0..5)
        .map(|_| http.get(&read_url).bearer_auth(&admin).send())
        .collect();
    for r in futures_util::future::join_all(warm).await {
        assert_eq!(r.unwrap().status().as_u16(), 200);
    }

    let outcomes: Arc<Mutex<Vec<Outcome>>> = Arc::default();
    let stop_clients = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for worker in 0..6 {
        let (http, admin, read_url, write_url) = (
            http.clone(),
            admin.clone(),
            read_url.clone(),
            write_url.clone(),
        );
        let (outcomes, stop_clients) = (outcomes.clone(), stop_clients.clone());
        clients.push(tokio::spawn(async move {
            let mut n = 0u32;
            while !stop_clients.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let write = (worker + n).is_multiple_of(3);
                let email = write.then(|| format!("w{worker}-{n}-{}@x.test", Uuid::new_v4()));
                let started = Instant::now();
                let req = match &email {
                    Some(e) => http
                        .post(&write_url)
                        .bearer_auth(&admin)
                        .json(&json!({"email": e, "full_name": "Restart Test", "role": 1})),
                    None => http.get(&read_url).bearer_auth(&admin),
                };
                let res = req.send().await.expect("the data plane itself stays up");
                let status = res.status().as_u16();
                let retry_after = res.headers().contains_key("retry-after");
                let _ = res.bytes().await;
                outcomes.lock().unwrap().push(Outcome {
                    write,
                    started,
                    finished: Instant::now(),
                    status,
                    retry_after,
                    email,
                });
                // About 600 requests per second in all: steady traffic, not a flood.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }));
    }

    let marks: Arc<Mutex<Marks>> = Arc::default();
    tokio::time::sleep(Duration::from_millis(700)).await;
    marks.lock().unwrap().stop = Some(Instant::now());
    {
        let pg = pg.clone();
        blocking(move || pg.lock().unwrap().stop_immediate())
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    {
        let pg = pg.clone();
        blocking(move || pg.lock().unwrap().start_again())
            .await
            .unwrap();
    }
    marks.lock().unwrap().up = Some(Instant::now());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop_clients.store(true, std::sync::atomic::Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }

    let (stop, up) = {
        let m = marks.lock().unwrap();
        (m.stop.unwrap(), m.up.unwrap())
    };
    let outcomes = outcomes.lock().unwrap().clone();
    let unexpected: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| !matches!(o.status, 200 | 201 | 503))
        .collect();
    assert!(
        unexpected.is_empty(),
        "{} of {} requests answered neither 2xx nor 503, e.g. {:?}",
        unexpected.len(),
        outcomes.len(),
        unexpected.first()
    );
    for o in outcomes.iter().filter(|o| o.status == 503) {
        assert!(o.retry_after, "503 without Retry-After: {o:?}");
        assert!(
            o.finished >= stop && o.started <= up,
            "503 outside the outage: started {:?} after the stop, server up {:?} after the stop",
            o.started.saturating_duration_since(stop),
            up.saturating_duration_since(stop)
        );
    }
    let during = outcomes.iter().filter(|o| o.status == 503).count();
    assert!(during > 0, "the outage was not seen by any request");
    let after: Vec<&Outcome> = outcomes.iter().filter(|o| o.started > up).collect();
    assert!(after.len() > 20, "too little traffic after the restart");
    let first_after = after.iter().min_by_key(|o| o.started).unwrap();
    assert!(
        matches!(first_after.status, 200 | 201),
        "first request after the restart: {first_after:?}"
    );
    let first_ok = outcomes
        .iter()
        .filter(|o| o.started > stop && matches!(o.status, 200 | 201))
        .map(|o| o.finished)
        .min()
        .unwrap();
    println!(
        "{} requests ({} writes), {} answered 503 during the outage; server down for {:?}; \
         first 2xx {:?} after the server accepted connections again",
        outcomes.len(),
        outcomes.iter().filter(|o| o.write).count(),
        during,
        up - stop,
        first_ok.saturating_duration_since(up)
    );

    // Every acknowledged write is in the database.
    let acknowledged: Vec<String> = outcomes
        .iter()
        .filter(|o| o.status == 201)
        .filter_map(|o| o.email.clone())
        .collect();
    assert!(!acknowledged.is_empty());
    let mut conn = a.db.connect().await;
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM users WHERE email = ANY($1)")
        .bind(&acknowledged)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        stored as usize,
        acknowledged.len(),
        "acknowledged writes lost"
    );

    // A quiet restart: no request while the server is down; the first one afterwards
    // still succeeds (the pooled connections are dead, and detected before use).
    {
        let pg = pg.clone();
        blocking(move || {
            let mut pg = pg.lock().unwrap();
            pg.stop_immediate().unwrap();
            pg.start_again().unwrap();
        })
        .await;
    }
    let res = http
        .get(&read_url)
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status().as_u16(),
        200,
        "first request after a quiet restart"
    );
}
