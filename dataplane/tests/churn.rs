//! The connection budget counts what the server counts (issue 11 §6): under churn —
//! budget 5, 50 tenants, 64 concurrent clients each asking a different tenant every time
//! (so connections are stolen between tenants all the time), Secrets rotated meanwhile —
//! the backends PostgreSQL reports in `pg_stat_activity`, sampled in a tight loop on a
//! connection of their own, never exceed the budget. A permit is released only once its
//! backend has left the server, not when Terminate was sent while the backend still runs
//! (that code showed 6 to 8 backends here in every run).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use edumind_dataplane::secret::Secret;
use edumind_dataplane::startup::Application;
use edumind_dataplane::tenants::{Tenant, TenantId};
use support::*;
use uuid::Uuid;

const TENANTS: usize = 50;
const BUDGET: usize = 5;
const CLIENTS: usize = 64;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backends_never_exceed_the_budget_under_churn_and_rotation() {
    let pg = edumind_tests::postgres().await;
    let db = pg.migrated_database().await;
    let password = edumind_tests::random_token(20);
    let mut admin = pg.admin().await;
    exec(&mut admin, "CREATE ROLE churn_members NOLOGIN".into()).await;
    // Two login roles per tenant, so a rotation (a new username in the Secret) never
    // leaves a tenant without valid credentials.
    exec(&mut admin, format!(
        "DO $$ BEGIN FOR i IN 1..{TENANTS} LOOP \
         EXECUTE format('CREATE ROLE %I LOGIN PASSWORD %L IN ROLE churn_members', 'churn_a' || i, '{password}'); \
         EXECUTE format('CREATE ROLE %I LOGIN PASSWORD %L IN ROLE churn_members', 'churn_b' || i, '{password}'); \
         END LOOP; END $$"
    )).await;
    let mut c = db.connect().await;
    exec(
        &mut c,
        "GRANT SELECT ON ALL TABLES IN SCHEMA public TO churn_members".into(),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    // Over the cluster's Unix socket (trust) when the harness started the server: a
    // connection then opens in a couple of milliseconds instead of spending tens of them
    // on SCRAM in a debug build, so new backends follow closed ones as tightly as they can.
    let host = match &pg.data_dir {
        Some(d) => d.parent().unwrap().display().to_string(),
        None => pg.host.clone(),
    };
    let (port, dbname) = (pg.port, db.name.clone());
    let tenant = move |i: usize, id: Uuid, side: &str| Tenant {
        tls: None,
        id: TenantId::School(id),
        code: None,
        host: host.clone(),
        port,
        dbname: dbname.clone(),
        username: format!("churn_{side}{i}"),
        password: Secret::new(password.clone()),
    };
    let ids: Vec<Uuid> = (0..TENANTS).map(|_| Uuid::new_v4()).collect();
    for (i, id) in ids.iter().enumerate() {
        write_tenant(dir.path(), &tenant(i + 1, *id, "a"));
    }
    let mut s = settings(dir.path().to_owned(), edumind_tests::redis().await.url());
    s.tenant_poll_ms = 50;
    s.pool.server_budget = BUDGET;
    s.pool.per_tenant_max = 1;
    s.pool.acquire_timeout_ms = 60_000;
    s.pool.connect_timeout_ms = 60_000;
    let app = Application::build(s).await.unwrap();
    let base = format!("http://127.0.0.1:{}", app.port());
    let state = app.state();
    tokio::spawn(app.run_until_stopped(std::future::pending()));

    let max_seen = Arc::new(AtomicI64::new(0));
    let samples = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (max_seen, samples, done) = (max_seen.clone(), samples.clone(), done.clone());
        let mut c = pg.admin().await;
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                let n: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM pg_stat_activity \
                     WHERE application_name = 'edumind-dataplane' AND usename LIKE 'churn\\_%'",
                )
                .fetch_one(&mut c)
                .await
                .unwrap();
                max_seen.fetch_max(n, Ordering::Relaxed);
                samples.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    // Rotation: every 300 ms, ten tenants switch to their other role.
    let rotator = {
        let (dir, ids, done) = (dir.path().to_owned(), ids.clone(), done.clone());
        let tenant = tenant.clone();
        tokio::spawn(async move {
            let mut round = 0usize;
            while !done.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(300)).await;
                round += 1;
                let side = if round.is_multiple_of(2) { "a" } else { "b" };
                for i in (round * 10..round * 10 + 10).map(|i| i % TENANTS) {
                    write_tenant(&dir, &tenant(i + 1, ids[i], side));
                }
            }
        })
    };
    let http = reqwest::Client::new();
    let tok = token(Uuid::new_v4(), 5, None);
    let statuses: Arc<std::sync::Mutex<Vec<u16>>> = Arc::default();
    let until = Instant::now() + Duration::from_secs(6);
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let (http, tok, base, ids, statuses) = (
            http.clone(),
            tok.clone(),
            base.clone(),
            ids.clone(),
            statuses.clone(),
        );
        clients.push(tokio::spawn(async move {
            let mut n = c * 7;
            while Instant::now() < until {
                n = (n + 13) % TENANTS; // a different tenant every time: constant stealing
                let s = http
                    .get(format!("{base}/v1/tenants/{}/school", ids[n]))
                    .bearer_auth(&tok)
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16();
                statuses.lock().unwrap().push(s);
            }
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
    done.store(true, Ordering::Relaxed);
    sampler.await.unwrap();
    rotator.await.unwrap();
    let statuses = statuses.lock().unwrap().clone();
    // No school row in these databases: 404 is the working answer.
    assert!(
        statuses.iter().all(|s| *s == 404),
        "{:?}",
        statuses
            .iter()
            .filter(|s| **s != 404)
            .take(5)
            .collect::<Vec<_>>()
    );
    let max = max_seen.load(Ordering::Relaxed);
    println!(
        "{} requests, {} connections opened, {} samples, max {} backends (budget {BUDGET})",
        statuses.len(),
        state.pools.opened_total(),
        samples.load(Ordering::Relaxed),
        max
    );
    assert!(
        state.pools.opened_total() > 100,
        "not enough churn to mean anything"
    );
    assert!(max >= 2, "the sampler saw the service working ({max})");
    assert!(
        max as usize <= BUDGET,
        "PostgreSQL saw {max} backends of the data plane, budget {BUDGET}"
    );
}
