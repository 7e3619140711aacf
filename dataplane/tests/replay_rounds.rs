//! Issue 15: the periodic outbox replay does not storm the fleet. A tenant read once and
//! then left idle costs no replay at all after one sweep; a tenant that keeps being read
//! without a pooled connection still gets a crashed writer's rows replayed within the
//! documented bound (`outbox::REPLAY_SWEEP`).
//!
//! Real PostgreSQL and Redis. The rounds are driven by the test (`Cache::replay_known`,
//! what `outbox::spawn_replayer` runs every `REPLAY_INTERVAL`); the service's own replayer
//! runs alongside, which only adds rounds.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use edumind_dataplane::outbox::{REPLAY_INTERVAL, sweep_rounds};
use edumind_dataplane::tenants::TenantId;
use support::*;

/// When the data plane last ran anything on `db`: the latest statement start (or connect)
/// over the backends of roles other than the test's superuser, as text (microseconds). A replay runs a statement on
/// the tenant's database, so this moves with every one.
async fn last_activity(db: &edumind_tests::TestDatabase) -> String {
    let mut conn = db.connect().await;
    sqlx::query_scalar(
        "SELECT coalesce(max(greatest(query_start, backend_start))::text, '') \
         FROM pg_stat_activity WHERE datname = current_database() AND usename <> current_user",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap()
}

/// Tenants read once and then left alone: after one sweep of rounds, further rounds
/// touch neither their databases nor their connections (the old replay ran a statement
/// on each of them every 2 s, forever).
#[tokio::test]
async fn tenants_left_idle_cost_no_replay() {
    let f = Fixture::start(edumind_tests::redis().await.url()).await;
    for s in [&f.a, &f.b] {
        let school = s.school_id.unwrap();
        let teacher = token(s.teacher_user, 1, Some(school));
        let roster = format!("/v1/tenants/{school}/classes/{}/roster", s.class_id);
        for _ in 0..2 {
            let (status, v, _) = f.call("GET", &roster, Some(&teacher), None).await;
            assert_eq!(status, 200, "{v}");
        }
    }
    for _ in 0..sweep_rounds() + 2 {
        f.state.cache.replay_known().await;
    }
    let (a0, b0) = (last_activity(&f.a.db).await, last_activity(&f.b.db).await);
    let opened = f.state.pools.opened_total();
    for _ in 0..3 {
        f.state.cache.replay_known().await;
    }
    // And the service's own rounds.
    tokio::time::sleep(REPLAY_INTERVAL * 2 + Duration::from_millis(300)).await;
    assert_eq!(
        last_activity(&f.a.db).await,
        a0,
        "idle tenant A still replayed"
    );
    assert_eq!(
        last_activity(&f.b.db).await,
        b0,
        "idle tenant B still replayed"
    );
    assert_eq!(f.state.pools.opened_total(), opened, "connections opened");

    // Forgotten, not lost: the next read replays first and is served.
    let school = f.a.school_id.unwrap();
    let teacher = token(f.a.teacher_user, 1, Some(school));
    let roster = format!("/v1/tenants/{school}/classes/{}/roster", f.a.class_id);
    let (status, v, _) = f.call("GET", &roster, Some(&teacher), None).await;
    assert_eq!(status, 200, "{v}");
    assert_ne!(last_activity(&f.a.db).await, a0, "the read replayed first");
}

/// A writer that died between its commit and its Redis `DEL` (its outbox row is there,
/// the cached value too) on a tenant this process keeps serving from Redis with no
/// pooled connection: the stale value stops being served within one sweep of rounds.
#[tokio::test]
async fn a_crashed_writers_rows_reach_a_tenant_read_without_a_connection() {
    let f = Fixture::start(edumind_tests::redis().await.url()).await;
    let ta = f.a.school_id.unwrap();
    let teacher = token(f.a.teacher_user, 1, Some(ta));
    let roster = format!("/v1/tenants/{ta}/classes/{}/roster", f.a.class_id);
    let key = ckey(ta, &format!("class:{}:roster", f.a.class_id));
    // Tenant B is served too, so the sweep has more than one tenant to spread.
    let tb = f.b.school_id.unwrap();
    let teacher_b = token(f.b.teacher_user, 1, Some(tb));
    let roster_b = format!("/v1/tenants/{tb}/classes/{}/roster", f.b.class_id);
    for _ in 0..2 {
        let (s, v, _) = f.call("GET", &roster, Some(&teacher), None).await;
        assert_eq!(s, 200, "{v}");
        assert!(!v["students"].as_array().unwrap().is_empty(), "{v}");
        let (s, v, _) = f.call("GET", &roster_b, Some(&teacher_b), None).await;
        assert_eq!(s, 200, "{v}");
    }
    // No idle connection: hits read Redis only, so a replay would have to connect.
    f.state.pools.forget(&TenantId::School(ta));
    f.state.pools.forget(&TenantId::School(tb));

    let mut db = f.a.db.connect().await;
    let mut tx = sqlx::Connection::begin(&mut db).await.unwrap();
    sqlx::query("UPDATE classes SET student_ids = '[]' WHERE id = $1")
        .bind(f.a.class_id)
        .execute(&mut *tx)
        .await
        .unwrap();
    edumind_dataplane::outbox::record(&mut tx, std::slice::from_ref(&key))
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let mut rounds = 0;
    loop {
        let (s, v, _) = f.call("GET", &roster, Some(&teacher), None).await;
        assert_eq!(s, 200, "{v}");
        if v["students"].as_array().map(Vec::len) == Some(0) {
            break;
        }
        assert!(
            rounds <= sweep_rounds() + 1,
            "still stale after {rounds} rounds: {v}"
        );
        let (s, _, _) = f.call("GET", &roster_b, Some(&teacher_b), None).await;
        assert_eq!(s, 200);
        f.state.cache.replay_known().await;
        rounds += 1;
    }
    let mut conn = f.a.db.connect().await;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM cache_invalidations")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(rows, 0, "replayed rows are removed");
}
