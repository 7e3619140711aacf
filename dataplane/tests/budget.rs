//! A thousand tenants on one PostgreSQL server never exceed the connection budget.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use edumind_dataplane::secret::Secret;
use edumind_dataplane::startup::Application;
use edumind_dataplane::tenants::{Tenant, TenantId};
use futures_util::StreamExt;
use support::*;
use uuid::Uuid;

const TENANTS: usize = 1000;
const BUDGET: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thousand_tenants_stay_within_the_budget() {
    let pg = edumind_tests::postgres().await;
    let dbs = [
        pg.migrated_database().await,
        pg.migrated_database().await,
        pg.migrated_database().await,
    ];
    let password = edumind_tests::random_token(20);
    let mut admin = pg.admin().await;
    exec(&mut admin, "CREATE ROLE budget_members NOLOGIN".into()).await;
    exec(&mut admin, format!(
        "DO $$ BEGIN FOR i IN 1..{TENANTS} LOOP \
         EXECUTE format('CREATE ROLE %I LOGIN PASSWORD %L IN ROLE budget_members', 'bt_' || i, '{password}'); \
         END LOOP; END $$"
    )).await;
    for db in &dbs {
        let mut c = db.connect().await;
        exec(
            &mut c,
            "GRANT SELECT ON ALL TABLES IN SCHEMA public TO budget_members".into(),
        )
        .await;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut ids = Vec::new();
    for i in 1..=TENANTS {
        let id = Uuid::new_v4();
        ids.push(id);
        write_tenant(
            dir.path(),
            &Tenant {
                tls: None,
                id: TenantId::School(id),
                code: None,
                host: pg.host.clone(),
                port: pg.port,
                dbname: dbs[i % dbs.len()].name.clone(),
                username: format!("bt_{i}"),
                password: Secret::new(password.clone()),
            },
        );
    }
    let mut s = settings(dir.path().to_owned(), edumind_tests::redis().await.url());
    s.pool.server_budget = BUDGET;
    s.pool.per_tenant_max = 2;
    s.pool.acquire_timeout_ms = 60_000;
    // This test is about the budget, not latency: on a loaded CI machine a new connection
    // (SCRAM, fork) can take seconds, and a connect timeout would be a 503 here.
    s.pool.connect_timeout_ms = 60_000;
    let app = Application::build(s).await.unwrap();
    assert_eq!(app.state().directory.len(), TENANTS);
    let base = format!("http://127.0.0.1:{}", app.port());
    let state = app.state();
    tokio::spawn(app.run_until_stopped(std::future::pending()));

    // Sample pg_stat_activity the whole time.
    let max_seen = Arc::new(AtomicI64::new(0));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (max_seen, done) = (max_seen.clone(), done.clone());
        let mut c = pg.admin().await;
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                let n: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'edumind-dataplane'",
                )
                .fetch_one(&mut c)
                .await
                .unwrap();
                max_seen.fetch_max(n, Ordering::Relaxed);
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        })
    };
    let http = reqwest::Client::new();
    let tok = token(Uuid::new_v4(), 5, None);
    let statuses: Vec<u16> = futures_util::stream::iter(ids.iter().copied())
        .map(|id| {
            let (http, tok, base) = (http.clone(), tok.clone(), base.clone());
            async move {
                http.get(format!("{base}/v1/tenants/{id}/students"))
                    .bearer_auth(tok)
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    done.store(true, Ordering::Relaxed);
    sampler.await.unwrap();
    assert!(
        statuses.iter().all(|s| *s == 200),
        "{:?}",
        statuses.iter().filter(|s| **s != 200).collect::<Vec<_>>()
    );
    let max = max_seen.load(Ordering::Relaxed);
    assert!(
        max as usize <= BUDGET,
        "PostgreSQL saw {max} connections, budget {BUDGET}"
    );
    assert!(max >= 2, "the sampler saw the service working ({max})");
    assert!(
        state.pools.opened_total() >= TENANTS as u64,
        "every tenant got its own connection"
    );
    let usage = state.pools.usage();
    assert!(usage.iter().all(|u| u.open <= BUDGET), "{usage:?}");
}

#[tokio::test]
async fn budget_exhausted_is_503_with_retry_after() {
    let f = Fixture::start_with(edumind_tests::redis().await.url(), |s| {
        s.pool.server_budget = 1;
        s.pool.acquire_timeout_ms = 300;
    })
    .await;
    // Hold the only connection of this server.
    let held = f.state.pools.acquire(&f.b.tenant).await.unwrap();
    let ta = f.a.school_id.unwrap();
    let (s, v, h) = f
        .call(
            "GET",
            &format!("/v1/tenants/{ta}/school"),
            Some(&token(f.a.teacher_user, 1, Some(ta))),
            None,
        )
        .await;
    assert_eq!(s, 503, "{v}");
    assert_eq!(h["retry-after"], "1");
    assert_eq!(h["content-type"], "application/problem+json");
    drop(held);
    let (s, _, _) = f
        .call(
            "GET",
            &format!("/v1/tenants/{ta}/school"),
            Some(&token(f.a.teacher_user, 1, Some(ta))),
            None,
        )
        .await;
    assert_eq!(s, 200, "the idle connection of B is stolen for A");
}

/// Stealing takes the connection idle longest on the server, whichever tenant holds it,
/// and a reused connection becomes the most recently used (the per-server LRU).
#[tokio::test]
async fn the_longest_idle_connection_is_the_one_stolen() {
    use edumind_dataplane::config::PoolSettings;
    use edumind_dataplane::pool::{APPLICATION_NAME, PoolManager};

    let pg = edumind_tests::postgres().await;
    let db = pg.migrated_database().await;
    let password = edumind_tests::random_token(20);
    let mut admin = pg.admin().await;
    let tag = &Uuid::new_v4().simple().to_string()[..8];
    let names: Vec<String> = (0..5).map(|i| format!("lru_{tag}_{i}")).collect();
    for name in &names {
        exec(
            &mut admin,
            format!("CREATE ROLE {name} LOGIN PASSWORD '{password}'"),
        )
        .await;
    }
    let tenants: Vec<Tenant> = names
        .iter()
        .map(|name| Tenant {
            tls: None,
            id: TenantId::School(Uuid::new_v4()),
            code: None,
            host: pg.host.clone(),
            port: pg.port,
            dbname: db.name.clone(),
            username: name.clone(),
            password: Secret::new(password.clone()),
        })
        .collect();
    let pools = PoolManager::new(PoolSettings {
        server_budget: 3,
        per_tenant_max: 1,
        acquire_timeout_ms: 20_000,
        idle_timeout_secs: 600,
        max_cached_tenants: 100,
        connect_timeout_ms: 20_000,
    });
    // The roles whose connections PostgreSQL holds for us, once it settles on `want`.
    let holders = |want: Vec<usize>| {
        let want: Vec<String> = want.into_iter().map(|i| names[i].clone()).collect();
        let pg = &pg;
        async move {
            let mut c = pg.admin().await;
            let mut seen = Vec::new();
            for _ in 0..200 {
                seen = sqlx::query_scalar::<_, String>(
                    "SELECT usename::text FROM pg_stat_activity WHERE application_name = $1 \
                     ORDER BY 1",
                )
                .bind(APPLICATION_NAME)
                .fetch_all(&mut c)
                .await
                .unwrap();
                if seen == want {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            assert_eq!(seen, want, "connections held on the server");
        }
    };
    let touch = |i: usize| {
        let (pools, t) = (&pools, &tenants[i]);
        async move {
            let mut conn = pools.acquire(t).await.unwrap();
            let one: i32 = sqlx::query_scalar("SELECT 1")
                .fetch_one(&mut *conn)
                .await
                .unwrap();
            assert_eq!(one, 1);
        }
    };
    // Idle order after this: 1, 2, 0 (0 was reused last).
    for i in [0, 1, 2, 0] {
        touch(i).await;
    }
    holders(vec![0, 1, 2]).await;
    // The budget is spent: tenant 3 steals the longest idle connection, tenant 1's.
    touch(3).await;
    holders(vec![0, 2, 3]).await;
    // Idle order now: 0, 3, then 2 reused: tenant 4 steals tenant 0's.
    touch(2).await;
    touch(4).await;
    holders(vec![2, 3, 4]).await;
    assert_eq!(pools.opened_total(), 5, "reuse opened nothing");
}
