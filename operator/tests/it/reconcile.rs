//! The School reconciler against a real PostgreSQL (the harness) and the Kubernetes API
//! faked in memory (kube-fake-client). Each test uses its own namespace and codes, since
//! the PostgreSQL server is shared by the whole test process.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;

use edumind_crds::{ReclaimPolicy, School};
use edumind_operator::school as reconcile;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use serde_json::json;
use sqlx::{Connection, Executor, PgConnection};

use crate::support::TestEnv;

/// A fresh namespace with SchoolRestore registered (the reconciler looks for restores in
/// progress) and no backup settings.
async fn env() -> TestEnv {
    TestEnv::builder().with_restores().build().await
}

fn ready(school: &School) -> (String, String, String) {
    let c = school
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .expect("Ready condition");
    (c.status.clone(), c.reason.clone(), c.message.clone())
}

async fn admin() -> PgConnection {
    edumind_tests::postgres().await.admin().await
}

async fn exists(kind: &str, name: &str) -> bool {
    let q = if kind == "db" {
        "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)"
    } else {
        "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)"
    };
    sqlx::query_scalar(q)
        .bind(name)
        .fetch_one(&mut admin().await)
        .await
        .unwrap()
}

/// Connects with the Secret's `uri`, as an application would.
async fn connect(secret: &BTreeMap<String, String>) -> Result<PgConnection, sqlx::Error> {
    PgConnection::connect(&secret["uri"]).await
}

async fn count_tables(conn: &mut PgConnection) -> i64 {
    // The spec's tables: not sqlx's bookkeeping, nor the data plane's cache outbox.
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' \
         AND tablename NOT IN ('_sqlx_migrations', 'cache_invalidations')",
    )
    .fetch_one(conn)
    .await
    .unwrap()
}

#[tokio::test]
async fn new_school_becomes_ready_with_an_isolated_migrated_database() {
    let env = env().await;
    let code = env.code("Lincoln High");
    env.create("lincoln", env.spec_for(&code)).await;
    let school = env.reconcile("lincoln").await;

    let (status, reason, _) = ready(&school);
    assert_eq!((status.as_str(), reason.as_str()), ("True", "Provisioned"));
    let st = school.status.clone().unwrap();
    assert_eq!(st.schema_version, Some(edumind_schema::latest_version()));
    assert_eq!(st.observed_generation, school.metadata.generation);
    let id = edumind_operator::naming::derived_school_id(&env.ns, "lincoln");
    assert_eq!(st.school_id, Some(id.to_string()));
    let database = st.database.clone().unwrap();
    assert_eq!(
        database,
        edumind_operator::naming::school_database(&code, id)
    );
    assert_eq!(st.role.as_deref(), Some(database.as_str()));
    assert!(
        school
            .finalizers()
            .contains(&reconcile::FINALIZER.to_string())
    );

    // The Secret: contract shape, labels, owner, and credentials that really connect.
    let raw = env
        .secrets()
        .get(&st.secret_name.clone().unwrap())
        .await
        .unwrap();
    assert_eq!(raw.type_.as_deref(), Some("kubernetes.io/basic-auth"));
    assert_eq!(
        raw.labels()["app.kubernetes.io/managed-by"],
        "edumind-operator"
    );
    assert_eq!(raw.labels()["edumind.ai/school-id"], id.to_string());
    assert!(raw.labels().contains_key("edumind.ai/school-code"));
    assert_eq!(raw.owner_references()[0].uid, school.uid().unwrap());
    let secret = env.secret_data("lincoln").await.unwrap();
    for key in [
        "username", "user", "password", "host", "port", "dbname", "uri", "jdbc-uri", "pgpass",
    ] {
        assert!(secret.contains_key(key), "{key}");
    }
    assert!(
        secret[&format!("School-{id}-ConnectionString")].contains(&format!("Database={database}"))
    );
    assert_eq!(secret["dbname"], database);
    let mut conn = connect(&secret)
        .await
        .expect("the published credentials connect");
    assert_eq!(count_tables(&mut conn).await, 13);
    // The school role owns its tables and can use them.
    let owners: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT tableowner::text FROM pg_tables WHERE schemaname = 'public'",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(owners, vec![database.clone()]);
    conn.execute("INSERT INTO schools (id, name, code, address, contact_email, is_active, created_at, updated_at) VALUES (gen_random_uuid(), 'x', 'x', 'a', 'e', true, now(), now())").await.unwrap();
    // An unprivileged role.
    let (sup, createdb, createrole): (bool, bool, bool) = sqlx::query_as(
        "SELECT rolsuper, rolcreatedb, rolcreaterole FROM pg_roles WHERE rolname = current_user",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert!(!sup && !createdb && !createrole);

    // A second school: neither role can connect to the other's database.
    let other_code = env.code("Other");
    env.create("other", env.spec_for(&other_code)).await;
    env.reconcile("other").await;
    let other = env.secret_data("other").await.unwrap();
    let url = |who: &BTreeMap<String, String>, db: &str| {
        format!(
            "postgresql://{}:{}@{}:{}/{db}",
            who["user"], who["password"], who["host"], who["port"]
        )
    };
    let err = PgConnection::connect(&url(&secret, &other["dbname"]))
        .await
        .expect_err("school A's role must not reach school B's database");
    assert!(err.to_string().contains("permission denied"), "{err}");
    let err = PgConnection::connect(&url(&other, &secret["dbname"]))
        .await
        .expect_err("nor B's role A's");
    assert!(err.to_string().contains("permission denied"), "{err}");
    PgConnection::connect(&url(&other, &other["dbname"]))
        .await
        .expect("B's own database works");

    let events = env.events().await;
    assert!(
        events
            .iter()
            .any(|e| e.reason.as_deref() == Some("Provisioned")),
        "{events:?}"
    );
}

/// Rows whose xmin changes whenever DDL touches the school's role or database.
async fn catalog_fingerprint(database: &str) -> Vec<String> {
    let mut admin = admin().await;
    let mut fp: Vec<String> = sqlx::query_scalar(
        "SELECT xmin::text FROM pg_authid WHERE rolname = $1 UNION ALL SELECT xmin::text FROM pg_database WHERE datname = $1 \
         UNION ALL SELECT xmin::text FROM pg_shdescription WHERE description LIKE '%' || $1 || '%' OR objoid IN (SELECT oid FROM pg_database WHERE datname = $1)",
    )
    .bind(database)
    .fetch_all(&mut admin)
    .await
    .unwrap();
    let url = edumind_tests::postgres().await.url(database);
    let mut db = PgConnection::connect(&url).await.unwrap();
    let inner: String = sqlx::query_scalar("SELECT string_agg(xmin::text || relname, ',' ORDER BY relname) FROM pg_class WHERE relnamespace = 'public'::regnamespace")
        .fetch_one(&mut db)
        .await
        .unwrap();
    fp.push(inner);
    fp
}

#[tokio::test]
async fn a_second_reconcile_changes_nothing() {
    let env = env().await;
    env.create("steady", env.spec_for(&env.code("Steady")))
        .await;
    let first = env.reconcile("steady").await;
    let database = first.status.clone().unwrap().database.unwrap();
    let secret_rv = env
        .secrets()
        .get(&edumind_operator::naming::secret_name("steady"))
        .await
        .unwrap()
        .resource_version();
    let fp = catalog_fingerprint(&database).await;
    let events = env.events().await.len();

    let second = env.reconcile("steady").await;
    assert_eq!(
        second.resource_version(),
        first.resource_version(),
        "no School write"
    );
    assert_eq!(
        env.secrets()
            .get(&edumind_operator::naming::secret_name("steady"))
            .await
            .unwrap()
            .resource_version(),
        secret_rv,
        "no Secret write"
    );
    assert_eq!(catalog_fingerprint(&database).await, fp, "no DDL");
    assert_eq!(env.events().await.len(), events, "no new events");
}

#[tokio::test]
async fn deleted_secret_and_broken_credentials_are_repaired() {
    let env = env().await;
    env.create("drift", env.spec_for(&env.code("Drift"))).await;
    env.reconcile("drift").await;
    let before = env.secret_data("drift").await.unwrap();

    env.secrets()
        .delete(
            &edumind_operator::naming::secret_name("drift"),
            &Default::default(),
        )
        .await
        .unwrap();
    env.reconcile("drift").await;
    let recreated = env.secret_data("drift").await.expect("Secret recreated");
    connect(&recreated)
        .await
        .expect("recreated credentials connect");
    assert_ne!(
        recreated["password"], before["password"],
        "a lost password is replaced, never read back"
    );

    // Someone changes the role's password behind the operator's back.
    let role = recreated["username"].clone();
    admin()
        .await
        .execute(sqlx::AssertSqlSafe(format!(
            "ALTER ROLE \"{role}\" PASSWORD 'tampered'"
        )))
        .await
        .unwrap();
    assert!(connect(&recreated).await.is_err());
    env.reconcile("drift").await;
    connect(&env.secret_data("drift").await.unwrap())
        .await
        .expect("credentials repaired");

    // Privileges and PUBLIC access granted behind its back are taken away again.
    let db = recreated["dbname"].clone();
    admin()
        .await
        .execute(sqlx::AssertSqlSafe(format!(
            "ALTER ROLE \"{role}\" CREATEDB; GRANT CONNECT ON DATABASE \"{db}\" TO PUBLIC"
        )))
        .await
        .unwrap();
    env.reconcile("drift").await;
    let (createdb, public): (bool, bool) = sqlx::query_as(
        "SELECT (SELECT rolcreatedb FROM pg_roles WHERE rolname = $1), EXISTS (SELECT 1 FROM pg_database d, aclexplode(d.datacl) a WHERE d.datname = $2 AND a.grantee = 0)",
    )
    .bind(&role)
    .bind(&db)
    .fetch_one(&mut admin().await)
    .await
    .unwrap();
    assert!(!createdb && !public);

    // Ownership taken away: given back, and the school keeps working.
    let superuser = edumind_tests::postgres().await.superuser.clone();
    admin()
        .await
        .execute(sqlx::AssertSqlSafe(format!(
            "ALTER DATABASE \"{db}\" OWNER TO \"{superuser}\""
        )))
        .await
        .unwrap();
    if crate::support::managed() {
        // A non-superuser admin cannot take a database back from a superuser: a clear
        // condition, nothing dropped. Once a DBA hands it to the admin, it is repaired.
        let school = env.school("drift").await;
        let err = reconcile::reconcile(Arc::new(school), env.ctx.clone())
            .await
            .expect_err("a superuser's database cannot be taken back");
        assert!(err.to_string().contains("must be owner"), "{err}");
        let (status, reason, message) = ready(&env.school("drift").await);
        assert_eq!(
            (status.as_str(), reason.as_str()),
            ("False", "DatabaseServerError")
        );
        assert!(
            message.contains("give the database back to its role"),
            "{message}"
        );
        admin()
            .await
            .execute(sqlx::AssertSqlSafe(format!(
                "ALTER DATABASE \"{db}\" OWNER TO \"{}\"",
                edumind_tests::MANAGED_ADMIN
            )))
            .await
            .unwrap();
    }
    env.reconcile("drift").await;
    let owner: String = sqlx::query_scalar(
        "SELECT pg_get_userbyid(datdba)::text FROM pg_database WHERE datname = $1",
    )
    .bind(&db)
    .fetch_one(&mut admin().await)
    .await
    .unwrap();
    assert_eq!(owner, role);
}

#[tokio::test]
async fn a_vanished_database_is_reported_and_never_recreated_empty() {
    let env = env().await;
    env.create("gone", env.spec_for(&env.code("Gone"))).await;
    let school = env.reconcile("gone").await;
    let database = school.status.unwrap().database.unwrap();
    admin()
        .await
        .execute(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE \"{database}\" WITH (FORCE)"
        )))
        .await
        .unwrap();

    let school = env.reconcile("gone").await;
    let (status, reason, message) = ready(&school);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "DatabaseMissing")
    );
    assert!(message.contains(&database));
    assert!(
        !exists("db", &database).await,
        "must not be recreated empty"
    );
    assert!(
        env.events()
            .await
            .iter()
            .any(|e| e.reason.as_deref() == Some("DatabaseMissing"))
    );
}

#[tokio::test]
async fn rotation_pause_and_active_toggle() {
    let env = env().await;
    env.create("rot", env.spec_for(&env.code("Rot"))).await;
    env.reconcile("rot").await;
    let old = env.secret_data("rot").await.unwrap();

    // Rotation: new password works, old one does not, and it happens once per token.
    env.annotate("rot", reconcile::ANNOTATION_ROTATE, "2025-01-01")
        .await;
    let school = env.reconcile("rot").await;
    let new = env.secret_data("rot").await.unwrap();
    assert_ne!(new["password"], old["password"]);
    assert!(new["uri"].contains(&new["password"]) && new["pgpass"].contains(&new["password"]));
    connect(&new).await.expect("rotated password works");
    assert!(connect(&old).await.is_err(), "old password no longer works");
    assert_eq!(
        school.status.unwrap().password_rotation.as_deref(),
        Some("2025-01-01")
    );
    env.reconcile("rot").await;
    assert_eq!(
        env.secret_data("rot").await.unwrap()["password"],
        new["password"],
        "rotates once per token"
    );
    assert!(
        env.events()
            .await
            .iter()
            .any(|e| e.reason.as_deref() == Some("PasswordRotated"))
    );

    // active: false blocks logins and ends sessions, keeps data; true restores.
    let mut session = connect(&new).await.unwrap();
    session
        .execute("CREATE TABLE keep_me (x int); INSERT INTO keep_me VALUES (42)")
        .await
        .unwrap();
    env.set_spec("rot", json!({"active": false})).await;
    let school = env.reconcile("rot").await;
    assert_eq!(ready(&school).1, "Inactive");
    assert!(connect(&new).await.is_err(), "logins blocked");
    assert!(
        session.execute("SELECT 1").await.is_err(),
        "open session ended"
    );
    env.set_spec("rot", json!({"active": true})).await;
    env.reconcile("rot").await;
    let mut back = connect(&new)
        .await
        .expect("logins restored with the same credentials");
    let x: i32 = sqlx::query_scalar("SELECT x FROM keep_me")
        .fetch_one(&mut back)
        .await
        .unwrap();
    assert_eq!(x, 42);

    // Paused: nothing is repaired.
    env.annotate("rot", reconcile::ANNOTATION_PAUSED, "true")
        .await;
    env.secrets()
        .delete(
            &edumind_operator::naming::secret_name("rot"),
            &Default::default(),
        )
        .await
        .unwrap();
    let school = env.reconcile("rot").await;
    assert!(
        env.secret_data("rot").await.is_none(),
        "paused School is left alone"
    );
    assert!(
        school
            .status
            .unwrap()
            .conditions
            .iter()
            .any(|c| c.type_ == "Paused" && c.status == "True")
    );
    env.annotate("rot", reconcile::ANNOTATION_PAUSED, "false")
        .await;
    env.reconcile("rot").await;
    assert!(
        env.secret_data("rot").await.is_some(),
        "unpaused School is repaired"
    );
}

#[tokio::test]
async fn odd_codes_get_safe_names_and_bad_input_becomes_a_condition() {
    let env = env().await;
    let fifty: String = format!("{}{}", "Ü".repeat(44), env.tag);
    assert_eq!(fifty.chars().count(), 50);
    for (i, code) in [
        format!("O'Brien \"Academy\"; DROP TABLE x; -- {}", env.tag),
        format!("École 学校 {}", env.tag),
        fifty,
    ]
    .iter()
    .enumerate()
    {
        let name = format!("odd{i}");
        env.create(&name, env.spec_for(code)).await;
        let school = env.reconcile(&name).await;
        assert_eq!(ready(&school).0, "True", "{code}: {:?}", ready(&school));
        let db = school.status.unwrap().database.unwrap();
        assert!(db.len() <= 63 && exists("db", &db).await, "{db}");
        connect(&env.secret_data(&name).await.unwrap())
            .await
            .unwrap();
    }

    let mut too_long = env.spec_for(&"x".repeat(51));
    too_long.code = "y".repeat(51);
    env.create("long", too_long).await;
    let school = env.reconcile("long").await;
    let (status, reason, message) = ready(&school);
    assert_eq!((status.as_str(), reason.as_str()), ("False", "InvalidSpec"));
    assert!(message.contains("51 characters"), "{message}");
    assert!(env.secret_data("long").await.is_none());

    let mut blank = env.spec_for("   ");
    blank.code = "   ".into();
    env.create("blank", blank).await;
    assert_eq!(ready(&env.reconcile("blank").await).1, "InvalidSpec");

    let mut elsewhere = env.spec_for(&env.code("Elsewhere"));
    elsewhere.target_server = Some("nope".into());
    env.create("elsewhere", elsewhere).await;
    let school = env.reconcile("elsewhere").await;
    assert_eq!(ready(&school).1, "UnknownTargetServer");
    assert!(
        env.events()
            .await
            .iter()
            .any(|e| e.reason.as_deref() == Some("InvalidSpec"))
    );
}

#[tokio::test]
async fn conflicting_code_or_id_leaves_the_first_school_untouched() {
    let env = env().await;
    let code = env.code("Dup");
    let mut first = env.spec_for(&code);
    first.school_id = Some(uuid::Uuid::new_v4().to_string());
    env.create("first", first.clone()).await;
    let a = env.reconcile("first").await;
    let secret_rv = env
        .secrets()
        .get(&edumind_operator::naming::secret_name("first"))
        .await
        .unwrap()
        .resource_version();

    // Same code, different id.
    env.create("second", env.spec_for(&code)).await;
    let b = env.reconcile("second").await;
    let (status, reason, message) = ready(&b);
    assert_eq!((status.as_str(), reason.as_str()), ("False", "Conflict"));
    assert!(message.contains(&format!("{}/first", env.ns)), "{message}");
    assert!(env.secret_data("second").await.is_none());

    // Same id, different code.
    let mut third = env.spec_for(&env.code("Dup3"));
    third.school_id = first.school_id.clone();
    env.create("third", third).await;
    assert_eq!(ready(&env.reconcile("third").await).1, "Conflict");

    // Same id and same code: the very same database name.
    env.create("fourth", first.clone()).await;
    assert_eq!(ready(&env.reconcile("fourth").await).1, "Conflict");

    let a2 = env.reconcile("first").await;
    assert_eq!(ready(&a2).0, "True");
    assert_eq!(a2.resource_version(), a.resource_version());
    assert_eq!(
        env.secrets()
            .get(&edumind_operator::naming::secret_name("first"))
            .await
            .unwrap()
            .resource_version(),
        secret_rv
    );
    connect(&env.secret_data("first").await.unwrap())
        .await
        .unwrap();
}

async fn delete(env: &TestEnv, name: &str) -> School {
    // The fake API server deletes at once whatever the finalizers; mark the object the
    // way a real one does and hand it to the reconciler.
    let mut school = env.school(name).await;
    school.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
    reconcile::reconcile(Arc::new(school), env.ctx.clone())
        .await
        .expect("reconcile");
    env.school(name).await
}

#[tokio::test]
async fn reclaim_policies() {
    let env = env().await;
    let mut dbs = BTreeMap::new();
    for (name, policy) in [
        ("keep", ReclaimPolicy::Retain),
        ("drop", ReclaimPolicy::Delete),
        ("snap", ReclaimPolicy::Snapshot),
    ] {
        let mut spec = env.spec_for(&env.code(name));
        spec.reclaim_policy = policy;
        env.create(name, spec).await;
        let school = env.reconcile(name).await;
        dbs.insert(name, school.status.unwrap().database.unwrap());
    }
    let mut session = connect(&env.secret_data("drop").await.unwrap())
        .await
        .unwrap();

    let keep = delete(&env, "keep").await;
    assert!(keep.finalizers().is_empty(), "finalizer released");
    assert!(
        exists("db", &dbs["keep"]).await && exists("role", &dbs["keep"]).await,
        "retain keeps both"
    );

    let dropped = delete(&env, "drop").await;
    assert!(dropped.finalizers().is_empty());
    assert!(
        !exists("db", &dbs["drop"]).await && !exists("role", &dbs["drop"]).await,
        "delete drops both"
    );
    assert!(
        session.execute("SELECT 1").await.is_err(),
        "open sessions were ended"
    );

    let snap = delete(&env, "snap").await;
    assert!(
        snap.finalizers()
            .contains(&reconcile::FINALIZER.to_string()),
        "snapshot without backup storage refuses to finish deletion"
    );
    let (_, reason, message) = ready(&snap);
    assert_eq!(reason, "FinalBackupFailed");
    assert!(message.contains("backup storage"), "{message}");
    assert!(exists("db", &dbs["snap"]).await, "never treated as delete");

    // A School recreated under the same name but another code does not start a second,
    // empty database beside the retained one...
    env.schools()
        .delete("keep", &Default::default())
        .await
        .unwrap();
    env.create("keep", env.spec_for(&env.code("keep-renamed")))
        .await;
    let renamed = env.reconcile("keep").await;
    let (_, reason, message) = ready(&renamed);
    assert_eq!(reason, "Conflict");
    assert!(message.contains(&dbs["keep"]), "{message}");
    // ...and with the same code it adopts the retained database again.
    env.schools()
        .delete("keep", &Default::default())
        .await
        .unwrap();
    env.create("keep", env.spec_for(&env.code("keep"))).await;
    let again = env.reconcile("keep").await;
    assert_eq!(ready(&again).0, "True");
    assert_eq!(again.status.unwrap().database.unwrap(), dbs["keep"]);
    connect(&env.secret_data("keep").await.unwrap())
        .await
        .expect("adopted with repaired credentials");
}

#[tokio::test]
async fn racing_reconciles_create_one_database_and_one_winner() {
    let env = env().await;
    // The same new School reconciled twice at once (two replicas during a failover).
    env.create("race", env.spec_for(&env.code("Race"))).await;
    let school = Arc::new(env.school("race").await);
    let (a, b) = tokio::join!(
        reconcile::reconcile(school.clone(), env.ctx.clone()),
        reconcile::reconcile(school.clone(), env.ctx.clone())
    );
    // One of them may lose the status write race; the next reconcile converges.
    assert!(a.is_ok() || b.is_ok(), "{a:?} {b:?}");
    let school = env.reconcile("race").await;
    assert_eq!(ready(&school).0, "True");
    let mut conn = connect(&env.secret_data("race").await.unwrap())
        .await
        .unwrap();
    assert_eq!(count_tables(&mut conn).await, 13);
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(applied, 4, "each migration applied once");

    // Two new Schools with one code at once: exactly one wins.
    let code = env.code("Twin");
    env.create("twin-a", env.spec_for(&code)).await;
    env.create("twin-b", env.spec_for(&code)).await;
    let (x, y) = (
        Arc::new(env.school("twin-a").await),
        Arc::new(env.school("twin-b").await),
    );
    let _ = tokio::join!(
        reconcile::reconcile(x, env.ctx.clone()),
        reconcile::reconcile(y, env.ctx.clone())
    );
    let reasons = [
        ready(&env.school("twin-a").await).1,
        ready(&env.school("twin-b").await).1,
    ];
    let mut sorted = reasons.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        ["Conflict".to_string(), "Provisioned".to_string()],
        "{reasons:?}"
    );
}

#[tokio::test]
async fn secrets_stay_out_of_status_events_and_metrics_count_reconciles() {
    let env = env().await;
    env.create("quiet", env.spec_for(&env.code("Quiet"))).await;
    env.reconcile("quiet").await;
    env.annotate("quiet", reconcile::ANNOTATION_ROTATE, "now")
        .await;
    let school = env.reconcile("quiet").await;
    let password = env.secret_data("quiet").await.unwrap()["password"].clone();
    let status = serde_json::to_string(&school.status).unwrap();
    let events = serde_json::to_string(&env.events().await).unwrap();
    assert!(!status.contains(&password) && !events.contains(&password));
    assert!(!status.contains(&edumind_tests::postgres().await.password));

    let text = env.ctx.metrics.encode();
    assert!(
        text.contains("edumind_operator_reconciles_total{result=\"ok\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("edumind_operator_schools{ready=\"true\",reason=\"Provisioned\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("edumind_operator_reconcile_duration_seconds_count 2"),
        "{text}"
    );
}

#[tokio::test]
async fn the_published_secret_drives_the_backup_runner() {
    use edumind_operator::backup::{self, BackupJob, BackupStore, ConnectionInfo, PgTools};
    let env = env().await;
    env.create("bk", env.spec_for(&env.code("Backup"))).await;
    let school = env.reconcile("bk").await;
    let secret = env
        .secrets()
        .get(&school.status.clone().unwrap().secret_name.unwrap())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secret.yaml");
    std::fs::write(&file, serde_yaml_ng::to_string(&secret).unwrap()).unwrap();

    // The contract between the operator and the backup runner: keys and the school-id label.
    let conn = ConnectionInfo::load(&file).expect("the backup runner reads the operator's Secret");
    assert_eq!(conn.school_id, school.status.clone().unwrap().school_id);
    let store = BackupStore::from_spec(
        dir.path().join("store").to_str().unwrap(),
        None,
        "us-east-1",
        None,
    )
    .unwrap();
    let job = BackupJob {
        school_id: conn.school_id.clone().unwrap(),
        retention_days: 7,
        work_dir: None,
    };
    let report = backup::run_backup(
        &PgTools::discover().unwrap(),
        &conn,
        &store,
        &job,
        chrono::Utc::now(),
    )
    .await
    .expect("backup with the school's own credentials");
    assert!(report.tables >= 13, "{} tables", report.tables);
}

/// The school's own `schools` row follows its spec: written on provisioning, updated when
/// the spec changes, and left alone (same `updated_at`) when nothing changed.
#[tokio::test]
async fn the_school_record_follows_the_spec() {
    let env = env().await;
    let code = env.code("Rec");
    env.create("record", env.spec_for(&code)).await;
    let school = env.reconcile("record").await;
    let status = school.status.clone().unwrap();
    let id: uuid::Uuid = status.school_id.clone().unwrap().parse().unwrap();
    let mut conn = connect(&env.secret_data("record").await.unwrap())
        .await
        .unwrap();
    type Row = (
        String,
        String,
        String,
        Option<String>,
        bool,
        chrono::DateTime<chrono::Utc>,
    );
    let sql = "SELECT name, code, address, contact_phone, is_active, updated_at FROM schools WHERE id = $1";
    let rows = sqlx::query_as::<_, Row>(sql)
        .bind(id)
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "exactly the school's own row");
    assert_eq!(
        (&rows[0].0, &rows[0].1, &rows[0].2, &rows[0].3, rows[0].4),
        (
            &format!("School {code}"),
            &code,
            &"1 Main St".to_string(),
            &None,
            true
        )
    );
    let first_update = rows[0].5;

    env.reconcile("record").await;
    assert_eq!(
        sqlx::query_as::<_, Row>(sql)
            .bind(id)
            .fetch_all(&mut conn)
            .await
            .unwrap()[0]
            .5,
        first_update,
        "unchanged row not rewritten"
    );

    env.set_spec(
        "record",
        json!({"name": "Renamed School", "contactPhone": "+1 555 0100"}),
    )
    .await;
    env.reconcile("record").await;
    let rows = sqlx::query_as::<_, Row>(sql)
        .bind(id)
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(rows[0].0, "Renamed School");
    assert_eq!(rows[0].3.as_deref(), Some("+1 555 0100"));
    assert!(rows[0].5 > first_update, "updated_at moves on a change");
}

/// Every database and role on the server whose name carries this School's id.
async fn objects_of(school_id: &str) -> (Vec<String>, Vec<String>) {
    let simple = uuid::Uuid::parse_str(school_id)
        .unwrap()
        .simple()
        .to_string();
    let pattern = format!("%{simple}%");
    let mut conn = admin().await;
    let dbs = sqlx::query_scalar("SELECT datname::text FROM pg_database WHERE datname LIKE $1")
        .bind(&pattern)
        .fetch_all(&mut conn)
        .await
        .unwrap();
    let roles = sqlx::query_scalar("SELECT rolname::text FROM pg_roles WHERE rolname LIKE $1")
        .bind(&pattern)
        .fetch_all(&mut conn)
        .await
        .unwrap();
    (dbs, roles)
}

/// A crash right after any provisioning step (simulated by a fault injected after the
/// step took effect) converges on the next reconcile: Ready, one database and one role,
/// both claimed, no Conflict.
#[tokio::test]
async fn a_fault_after_any_provisioning_step_converges() {
    let env = env().await;
    let mut steps: Vec<String> = [
        "create the role",
        "label the role",
        "commit the new role",
        "create the database",
        "revoke public access to the database",
        "label the database",
    ]
    .map(String::from)
    .to_vec();
    steps.extend(
        edumind_schema::MIGRATOR
            .iter()
            .map(|m| format!("apply migration {}", m.version)),
    );
    steps.push("write the school's own record".into());
    steps.push("write the connection Secret".into());
    for (i, step) in steps.iter().enumerate() {
        let name = format!("crash-{i}");
        env.create(&name, env.spec_for(&env.code(&format!("C{i}"))))
            .await;
        let school = env.school(&name).await;
        let err = edumind_operator::fault::with_fault(
            step,
            reconcile::reconcile(Arc::new(school), env.ctx.clone()),
        )
        .await
        .expect_err("the injected fault fails the reconcile");
        assert!(
            format!("{err:?} {err}").contains(&format!("injected fault after step `{step}`")),
            "{step}: {err}"
        );
        let school = env.reconcile(&name).await;
        let (status, reason, message) = ready(&school);
        assert_eq!(status, "True", "after `{step}`: {reason}: {message}");
        let status = school.status.clone().unwrap();
        let database = status.database.clone().unwrap();
        let (dbs, roles) = objects_of(status.school_id.as_deref().unwrap()).await;
        assert_eq!(dbs, vec![database.clone()], "after `{step}`");
        assert_eq!(roles, vec![status.role.clone().unwrap()], "after `{step}`");
        let mut app = connect(&env.secret_data(&name).await.unwrap())
            .await
            .unwrap();
        assert!(count_tables(&mut app).await >= 13, "after `{step}`");
        // And a further reconcile changes nothing.
        let again = env.reconcile(&name).await;
        assert_eq!(
            again.resource_version(),
            school.resource_version(),
            "{step}"
        );
    }
}

/// A database someone else created under the School's name, unlabelled and owned by
/// another role, is still refused: adoption needs the School's own claimed role.
#[tokio::test]
async fn an_unlabelled_foreign_database_is_still_refused() {
    let env = env().await;
    let code = env.code("Foreign");
    let mut spec = env.spec_for(&code);
    let id = uuid::Uuid::new_v4();
    spec.school_id = Some(id.to_string());
    let database = edumind_operator::naming::school_database(&code, id);
    admin()
        .await
        .execute(sqlx::AssertSqlSafe(format!(
            "CREATE DATABASE \"{database}\""
        )))
        .await
        .unwrap();
    env.create("foreign", spec).await;
    let school = env.reconcile("foreign").await;
    let (status, reason, _) = ready(&school);
    assert_eq!((status.as_str(), reason.as_str()), ("False", "Conflict"));
    assert!(env.secret_data("foreign").await.is_none());
}
