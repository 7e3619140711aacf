//! A resync that changes nothing writes nothing (issue #15 §4): no transaction IDs, no
//! inserted, updated or deleted tuples in the admin or the school database, no WAL.
//! On a PostgreSQL server of its own (the shared one carries other tests' writes), with
//! autovacuum off so that only the operator's statements move the counters.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use sqlx::{Connection, Executor, PgConnection};

use crate::support::{TestEnv, private_postgres, target_server};

/// Resyncs measured after the School is Ready.
const RESYNCS: usize = 20;

/// Inserted + updated + deleted tuples of each database, as the statistics say.
async fn tuple_writes(conn: &mut PgConnection, databases: &[&str]) -> Vec<(String, i64)> {
    // A fresh snapshot of the statistics, not the one this session cached.
    conn.execute("SELECT pg_stat_clear_snapshot()")
        .await
        .unwrap();
    let mut out = Vec::new();
    for db in databases {
        let n: i64 = sqlx::query_scalar(
            "SELECT tup_inserted + tup_updated + tup_deleted FROM pg_stat_database \
             WHERE datname = $1",
        )
        .bind(db)
        .fetch_one(&mut *conn)
        .await
        .unwrap();
        out.push((db.to_string(), n));
    }
    out
}

async fn scalar_text(conn: &mut PgConnection, sql: &'static str) -> String {
    sqlx::query_scalar(sql).fetch_one(conn).await.unwrap()
}

/// Idle backends report their statistics at most every 10 s (`PGSTAT_IDLE_INTERVAL`);
/// the operator's pooled admin connections stay open, so wait that long before reading.
async fn let_statistics_arrive() {
    tokio::time::sleep(Duration::from_millis(11_500)).await;
}

#[tokio::test]
async fn a_resync_that_changes_nothing_writes_nothing() {
    let (server, _supervised) = private_postgres().await;
    let pg: &'static edumind_tests::PgServer = Box::leak(Box::new(server));
    let mut su = pg.admin().await;
    su.execute("ALTER SYSTEM SET autovacuum = off")
        .await
        .unwrap();
    su.execute("SELECT pg_reload_conf()").await.unwrap();
    // To tell background WAL records from the resyncs' own, where the server has it.
    let walinspect = su
        .execute("CREATE EXTENSION IF NOT EXISTS pg_walinspect")
        .await
        .is_ok();

    let env = TestEnv::builder()
        .with_restores()
        .on_server(pg, target_server(pg))
        .build()
        .await;
    let code = env.code("Quiet");
    env.create("quiet", env.spec_for(&code)).await;
    let school = env.reconcile("quiet").await;
    let ready = school
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.status.clone());
    assert_eq!(ready.as_deref(), Some("True"));
    let database = school.status.unwrap().database.unwrap();
    // A second pass: whatever the first one left to converge (hint bits, statuses) is done.
    env.reconcile("quiet").await;
    // Provisioning left dead catalog and row versions behind; a later read may prune
    // them (a WAL record the resyncs did not cause). Vacuum them away first.
    su.execute("VACUUM").await.unwrap();
    let mut school_db = sqlx::PgConnection::connect(&pg.url(&database))
        .await
        .unwrap();
    school_db.execute("VACUUM").await.unwrap();
    drop(school_db);
    let_statistics_arrive().await;

    let databases = ["postgres", database.as_str()];
    let tuples_before = tuple_writes(&mut su, &databases).await;
    let xid_before: i64 = sqlx::query_scalar("SELECT txid_current()")
        .fetch_one(&mut su)
        .await
        .unwrap();
    // After the xid: its commit record is the measurement's, not the resyncs'. The insert
    // position, not the write position, which lags behind asynchronous commits.
    let wal_before = scalar_text(&mut su, "SELECT pg_current_wal_insert_lsn()::text").await;

    for _ in 0..RESYNCS {
        let school = env.reconcile("quiet").await;
        let st = school.status.unwrap();
        assert!(
            st.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        );
    }

    let wal_after = scalar_text(&mut su, "SELECT pg_current_wal_insert_lsn()::text").await;
    // Exactly one transaction ID since: the one this call takes itself.
    let xid_after: i64 = sqlx::query_scalar("SELECT txid_current()")
        .fetch_one(&mut su)
        .await
        .unwrap();
    let_statistics_arrive().await;
    let tuples_after = tuple_writes(&mut su, &databases).await;
    eprintln!(
        "{RESYNCS} resyncs: xids {xid_before} -> {xid_after}, WAL {wal_before} -> {wal_after}, \
         tuple writes {tuples_before:?} -> {tuples_after:?}"
    );
    assert_eq!(
        xid_after - xid_before,
        1,
        "the resyncs took transaction IDs (only the measuring txid_current() may)"
    );
    assert_eq!(
        tuples_after, tuples_before,
        "the resyncs inserted, updated or deleted tuples"
    );
    if wal_after != wal_before {
        // The server's own background records (the bgwriter's standby snapshot every
        // 15 s after any WAL, a timed checkpoint) may fall into the window; nothing else.
        assert!(
            walinspect,
            "the resyncs wrote WAL: {wal_before} -> {wal_after}"
        );
        let records: Vec<(String, String)> = sqlx::query_as(
            "SELECT resource_manager, record_type FROM pg_get_wal_records_info($1::pg_lsn, $2::pg_lsn)",
        )
        .bind(&wal_before)
        .bind(&wal_after)
        .fetch_all(&mut su)
        .await
        .unwrap();
        let ours: Vec<_> = records
            .iter()
            .filter(|(rm, kind)| {
                !(rm == "Standby" && kind == "RUNNING_XACTS"
                    || rm == "XLOG" && kind.starts_with("CHECKPOINT"))
            })
            .collect();
        assert!(ours.is_empty(), "the resyncs wrote WAL: {ours:?}");
    }
}
