//! `migrate --all` over a fleet of school databases, and leader election on a Lease.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use edumind_operator::pg::{self, Claim};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use sqlx::Connection;

use crate::support::{empty_api, private_postgres};

/// `edumind-operator ARGS` (a `migrate --all` run) with the server's admin URL in the environment.
async fn migrate_all(pg: &edumind_tests::PgServer, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_edumind-operator"))
        .args(args)
        .env("EDUMIND_ADMIN_URL", pg.operator_admin_url().await)
        .output()
        .await
        .unwrap()
}

#[tokio::test]
async fn migrate_all_brings_twenty_school_databases_to_the_latest_schema() {
    // A server of its own: `migrate --all` acts on every claimed database of a server, and
    // the shared one holds other tests' databases (which may be dropped meanwhile).
    let (server, _supervised) = private_postgres().await;
    let pg = &server;
    let tag = edumind_tests::random_token(6);
    let mut names = Vec::new();
    for i in 0..20 {
        // Claimed, unmigrated databases, as an older operator without these migrations left them.
        names.push(school_at(pg, &tag, i, None).await.0);
    }
    let out = migrate_all(pg, &["migrate", "--all", "--concurrency", "4"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!stdout.contains(&pg.password), "no secrets in the output");
    for name in &names {
        assert!(
            stdout
                .lines()
                .any(|l| l.contains(name.as_str()) && l.contains("migrated 0 ->")),
            "no progress line for {name}:\n{stdout}"
        );
        let mut conn = sqlx::PgConnection::connect(&pg.url(name)).await.unwrap();
        assert_eq!(
            edumind_schema::applied_version(&mut conn).await.unwrap(),
            Some(edumind_schema::latest_version())
        );
        let owner: String = sqlx::query_scalar(
            "SELECT tableowner::text FROM pg_tables WHERE tablename = 'schools'",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        assert_eq!(&owner, name, "tables belong to the school's role");
    }
    assert!(
        stdout.lines().next().is_some_and(|l| l.starts_with("[1/")),
        "{stdout}"
    );

    // A second run changes nothing.
    let out = migrate_all(pg, &["migrate", "--all"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    for name in &names {
        assert!(
            stdout
                .lines()
                .any(|l| l.contains(name.as_str()) && l.contains("up to date")),
            "{stdout}"
        );
    }
}

#[tokio::test]
async fn only_one_replica_holds_the_lease_until_it_expires_or_is_released() {
    let client = empty_api().await;
    let leases: Api<Lease> = Api::namespaced(client, "edumind-system");
    let run = edumind_operator::leader::try_acquire;
    let long = Duration::from_secs(60);
    assert!(
        run(&leases, "a", long).await.unwrap(),
        "first replica takes the free Lease"
    );
    assert!(
        !run(&leases, "b", long).await.unwrap(),
        "second replica waits"
    );
    assert!(run(&leases, "a", long).await.unwrap(), "holder renews");
    edumind_operator::leader::release(&leases, "a")
        .await
        .unwrap();
    assert!(
        run(&leases, "b", Duration::from_secs(1)).await.unwrap(),
        "released Lease is taken over"
    );
    assert!(!run(&leases, "a", long).await.unwrap());
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(
        run(&leases, "a", long).await.unwrap(),
        "expired Lease is taken over"
    );
    let lease = leases
        .get(edumind_operator::leader::LEASE_NAME)
        .await
        .unwrap();
    assert_eq!(lease.spec.unwrap().holder_identity.as_deref(), Some("a"));
}

/// A claimed school database with role, migrated up to `version` (`None`: no schema).
pub(crate) async fn school_at(
    pg: &edumind_tests::PgServer,
    tag: &str,
    i: usize,
    version: Option<i64>,
) -> (String, uuid::Uuid) {
    // Made by the operator's admin, as an earlier operator version would have.
    let mut admin = sqlx::PgConnection::connect(&pg.operator_admin_url().await)
        .await
        .unwrap();
    let id = uuid::Uuid::new_v4();
    let name = edumind_operator::naming::school_database(&format!("pre {tag} {i}"), id);
    let claim = Claim {
        kind: "school".into(),
        school_id: id.to_string(),
        code: format!("pre-{tag}-{i}"),
        owner: format!("pre-{tag}/s{i}"),
    };
    let password = edumind_operator::credentials::generate_password();
    pg::create_role(&mut admin, &name, &password, &claim, true)
        .await
        .unwrap();
    pg::create_database(&mut admin, &name, &name, &claim)
        .await
        .unwrap();
    if let Some(version) = version {
        let mut conn = sqlx::PgConnection::connect(&pg.url(&name)).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("SET ROLE \"{name}\"")))
            .execute(&mut conn)
            .await
            .unwrap();
        edumind_schema::migrate_to(&mut conn, version)
            .await
            .unwrap();
    }
    (name, id)
}

pub(crate) async fn version_of(pg: &edumind_tests::PgServer, name: &str) -> Option<i64> {
    let mut conn = sqlx::PgConnection::connect(&pg.url(name)).await.unwrap();
    edumind_schema::applied_version(&mut conn).await.unwrap()
}

/// `migrate --all --backup-storage`: a database about to move to a newer schema is backed
/// up first (the dump holds the old schema version); current and schema-less databases
/// are not; and a failing backup holds that database's migration back.
#[tokio::test]
async fn migrate_all_backs_up_before_a_schema_change_and_a_failed_backup_holds_it_back() {
    // A server of its own: `migrate --all` acts on every claimed database of a server, and
    // the shared one holds other tests' databases.
    let (server, _supervised) = private_postgres().await;
    let pg = &server;
    let tag = edumind_tests::random_token(6);
    let first = edumind_schema::MIGRATOR.iter().next().unwrap().version;
    let latest = edumind_schema::latest_version();
    assert!(first < latest, "needs two migrations");
    let (old, old_id) = school_at(pg, &tag, 0, Some(first)).await;
    let (current, current_id) = school_at(pg, &tag, 1, Some(latest)).await;
    let (fresh, fresh_id) = school_at(pg, &tag, 2, None).await;
    let storage = tempfile::tempdir().unwrap();

    // Storage that cannot take this school's dump: a regular file where its directory
    // of dumps should be.
    let blocked = storage.path().join(old_id.to_string());
    std::fs::write(&blocked, b"x").unwrap();
    let out = migrate_all(
        pg,
        &[
            "migrate",
            "--all",
            "--backup-storage",
            &storage.path().to_string_lossy(),
        ],
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.contains(&old) && l.contains("backup before the schema change failed")),
        "{stdout}"
    );
    assert_eq!(
        version_of(pg, &old).await,
        Some(first),
        "migration held back"
    );
    assert!(!stdout.contains(&pg.password));
    std::fs::remove_file(&blocked).unwrap();

    let out = migrate_all(
        pg,
        &[
            "migrate",
            "--all",
            "--backup-storage",
            &storage.path().to_string_lossy(),
        ],
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.contains(&old) && l.contains("migrated") && l.contains("(backup ")),
        "{stdout}"
    );
    for name in [&old, &current, &fresh] {
        assert_eq!(version_of(pg, name).await, Some(latest), "{name}");
    }
    let store = edumind_operator::backup::BackupStore::directory(storage.path()).unwrap();
    let dumps = store.list(&old_id.to_string()).await.unwrap();
    assert_eq!(dumps.len(), 1, "one backup of the database that moved");
    for id in [current_id, fresh_id] {
        assert!(store.list(&id.to_string()).await.unwrap().is_empty());
    }
    // The dump was taken before the migration: it records only the old version.
    let tools = edumind_operator::backup::PgTools::discover().unwrap();
    let local = storage.path().join("check.dump");
    store.download(&dumps[0].object, &local).await.unwrap();
    let listing = std::process::Command::new(tools.bindir.join("pg_restore"))
        .args(["--data-only", "--table=_sqlx_migrations", "-f", "-"])
        .arg(&local)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&listing.stdout);
    assert!(text.contains(&first.to_string()), "{text}");
    assert!(!text.contains(&latest.to_string()), "{text}");
}
