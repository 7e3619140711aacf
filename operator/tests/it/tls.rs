//! A TLS-only PostgreSQL server (`ssl=on`, `hostssl`-only `pg_hba.conf`, a throwaway CA
//! made by the test): a School is provisioned and served over verified TLS, backed up and
//! restored by the runner over TLS, and a wrong CA or host name fails loudly instead of
//! falling back to plaintext.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::Utc;
use edumind_crds::connection::{ConnectionSecret, SslMode, Tls};
use edumind_operator::backup::{self, BackupJob, BackupStore, PgTools};
use edumind_operator::config::CaRef;
use edumind_operator::school;
use edumind_tests::{PgServer, TestCa};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use sqlx::postgres::{PgConnectOptions, PgSslMode};
use sqlx::{ConnectOptions, Connection};

use crate::support::{self, OPERATOR_NS, TestEnv};

fn ca_secret(name: &str, pem: &str) -> Secret {
    Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            namespace: Some(OPERATOR_NS.into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "ca.crt".to_string(),
            ByteString(pem.as_bytes().to_vec()),
        )])),
        ..Default::default()
    }
}

async fn env_on(pg: &'static PgServer, host: &str, ca: &TestCa) -> TestEnv {
    let mut target = support::target_server(pg);
    target.host = host.into();
    target.ca = Some(CaRef {
        secret: "pg-ca".into(),
        key: "ca.crt".into(),
    });
    TestEnv::builder()
        .on_server(pg, target)
        .with_secret(ca_secret("pg-ca", &ca.ca_pem()))
        .with_restores()
        .build()
        .await
}

#[tokio::test]
async fn a_tls_only_server_serves_backs_up_and_restores_and_a_wrong_ca_or_host_fails() {
    if !PgServer::ssl_supported() {
        // CI runs this on PostgreSQL 15 (Debian's build, with SSL) as well.
        eprintln!("skipped: these PostgreSQL binaries were built without SSL");
        return;
    }
    let ca = TestCa::new("edumind-test-ca").unwrap();
    let other = TestCa::new("some-other-ca").unwrap();
    let (server, _supervised) = PgServer::start_tls(&ca).unwrap();
    let pg: &'static PgServer = Box::leak(Box::new(server));

    // The server refuses plaintext.
    let plain = PgConnectOptions::new()
        .host("127.0.0.1")
        .port(pg.port)
        .username(&pg.superuser)
        .password(&pg.password)
        .database("postgres")
        .ssl_mode(PgSslMode::Disable)
        .connect()
        .await
        .unwrap_err()
        .to_string();
    assert!(plain.contains("no encryption"), "{plain}");

    // Provisioned over verified TLS (sslMode defaults to verify-full with a CA).
    let env = env_on(pg, "localhost", &ca).await;
    env.create("tls", env.spec("Tls", serde_json::json!({})))
        .await;
    let school = env.reconcile("tls").await;
    let ready = school
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .unwrap();
    assert_eq!(ready.status, "True", "{}", ready.message);
    let data = env.secret_data("tls").await.unwrap();
    assert_eq!(data["sslmode"], "verify-full");
    assert_eq!(data["ca.crt"], ca.ca_pem());
    assert!(
        data["uri"].ends_with("?sslmode=verify-full"),
        "TLS in the URI"
    );
    assert!(data["jdbc-uri"].ends_with("&sslmode=verify-full"));

    // Served: the data plane's way of connecting (the contract's parser, then
    // `Tls::apply`) gets an encrypted session.
    let secret = env
        .secret(&edumind_operator::naming::secret_name("tls"))
        .await;
    let parsed = ConnectionSecret::from_secret(&secret).unwrap();
    let endpoint = parsed.endpoint;
    let tls = endpoint.tls.clone().expect("TLS settings in the Secret");
    let options = tls.apply(
        PgConnectOptions::new()
            .host(&endpoint.host)
            .port(endpoint.port)
            .username(&endpoint.username)
            .password(endpoint.password.expose())
            .database(&endpoint.dbname),
    );
    let mut conn = options.connect().await.unwrap();
    let encrypted: bool =
        sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert!(encrypted);
    conn.close().await.unwrap();

    // Backed up and restored by the runner, over TLS (PGSSLMODE/PGSSLROOTCERT).
    let (info, _mount) = env
        .connection(&edumind_operator::naming::secret_name("tls"))
        .await;
    assert_eq!(info.tls.as_ref().map(|t| t.mode), Some(SslMode::VerifyFull));
    let tools = PgTools::for_server(&info).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = BackupStore::directory(dir.path()).unwrap();
    let job = BackupJob {
        school_id: school.status.as_ref().unwrap().school_id.clone().unwrap(),
        retention_days: 7,
        work_dir: None,
    };
    let report = backup::run_backup(&tools, &info, &store, &job, Utc::now())
        .await
        .unwrap();
    let mut admin = pg.admin().await;
    let db = endpoint.dbname.clone();
    let mut as_school = options.clone().connect().await.unwrap();
    sqlx::query("DELETE FROM schools")
        .execute(&mut as_school)
        .await
        .unwrap();
    as_school.close().await.unwrap();
    backup::run_restore(&tools, &info, &store, &report.object, None)
        .await
        .unwrap();
    let mut as_school = options.clone().connect().await.unwrap();
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM schools")
        .fetch_one(&mut as_school)
        .await
        .unwrap();
    assert_eq!(rows, 1, "the restore brought the school's row back");
    let plaintext_sessions: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.datname = $1 AND NOT s.ssl",
    )
    .bind(&db)
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert_eq!(
        plaintext_sessions, 0,
        "no plaintext session on the school's database"
    );

    // The runner with a wrong CA, or a host name the certificate does not name: a clear
    // error, never a plaintext connection.
    let mut wrong_ca = info.clone();
    wrong_ca.tls = Some(Tls {
        mode: SslMode::VerifyFull,
        ca_pem: Some(other.ca_pem()),
    });
    let err = backup::run_backup(&tools, &wrong_ca, &store, &job, Utc::now())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("certificate verify failed"), "{err}");
    let mut wrong_host = info.clone();
    wrong_host.host = "127.0.0.1".into();
    let err = backup::run_backup(&tools, &wrong_host, &store, &job, Utc::now())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not match host name"), "{err}");
    let err = PgTools::for_server(&wrong_ca)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("certificate"), "{err}");

    // The operator with a wrong CA, or the wrong host name: the School says so.
    for (host, which_ca) in [("localhost", &other), ("127.0.0.1", &ca)] {
        let env = env_on(pg, host, which_ca).await;
        env.create("bad", env.spec("Bad", serde_json::json!({})))
            .await;
        let stored = env.school("bad").await;
        let err = school::reconcile(Arc::new(stored), env.ctx.clone())
            .await
            .expect_err("no connection without a verified certificate");
        assert!(err.to_string().contains("certificate"), "{host}: {err}");
        let bad = env.school("bad").await;
        let ready = bad
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
            .unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "DatabaseServerError")
        );
        assert!(ready.message.contains("certificate"), "{}", ready.message);
    }
}

/// `migrate --all --backup-storage` against the TLS-only server: the admin URL's
/// `sslmode=verify-full&sslrootcert=…` verify the migration's connections and the
/// `pg_dump` taken before the schema change (PGSSLMODE/PGSSLROOTCERT, a private CA file);
/// a CA that did not sign the server's certificate fails the run and moves nothing.
#[tokio::test]
async fn migrate_all_backs_up_over_verified_tls() {
    if !PgServer::ssl_supported() {
        eprintln!("skipped: these PostgreSQL binaries were built without SSL");
        return;
    }
    let ca = TestCa::new("edumind-test-ca").unwrap();
    let other = TestCa::new("some-other-ca").unwrap();
    let (server, _supervised) = PgServer::start_tls(&ca).unwrap();
    let pg = &server;
    let first = edumind_schema::MIGRATOR.iter().next().unwrap().version;
    let latest = edumind_schema::latest_version();
    let (old, old_id) = crate::fleet::school_at(pg, "tls", 0, Some(first)).await;
    let storage = tempfile::tempdir().unwrap();
    let admin = pg
        .operator_admin_url()
        .await
        .replace("@127.0.0.1:", "@localhost:");
    let run = |ca: &TestCa| {
        let url = format!(
            "{admin}?sslmode=verify-full&sslrootcert={}",
            ca.ca_cert().display()
        );
        let storage = storage.path().to_string_lossy().into_owned();
        async move {
            tokio::process::Command::new(env!("CARGO_BIN_EXE_edumind-operator"))
                .args(["migrate", "--all", "--backup-storage", &storage])
                .env("EDUMIND_ADMIN_URL", url)
                .output()
                .await
                .unwrap()
        }
    };

    let out = run(&other).await;
    assert!(!out.status.success(), "a wrong CA was accepted");
    assert_eq!(crate::fleet::version_of(pg, &old).await, Some(first));

    let out = run(&ca).await;
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
    assert!(!stdout.contains(&pg.password));
    assert_eq!(crate::fleet::version_of(pg, &old).await, Some(latest));
    let store = BackupStore::directory(storage.path()).unwrap();
    assert_eq!(store.list(&old_id.to_string()).await.unwrap().len(), 1);
}
