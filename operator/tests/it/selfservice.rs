//! The shared self-service tenant against a real PostgreSQL (the harness) and an
//! in-memory Kubernetes API. One test function: the database name is fixed; it runs on
//! a server of its own ([`support::private_postgres`]), not the one the tests share.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use edumind_operator::selfservice::{self, APP_ROLE, DATABASE, OWNER_ROLE, SECRET_NAME};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams};
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

use crate::support;

const NS: &str = "edumind-system";

fn password_of(secret: &Secret) -> String {
    String::from_utf8(secret.data.as_ref().unwrap()["password"].0.clone()).unwrap()
}

async fn connect_as_app(
    pg: &edumind_tests::PgServer,
    password: &str,
) -> Result<PgConnection, sqlx::Error> {
    let url = format!(
        "postgres://{APP_ROLE}:{password}@{}:{}/{DATABASE}",
        pg.host, pg.port
    );
    PgConnection::connect(&url).await
}

/// Rows of `students` the app role sees when acting for `user` (None: nobody set).
async fn visible_students(app: &mut PgConnection, user: Option<Uuid>) -> Vec<Uuid> {
    let mut tx = app.begin().await.unwrap();
    if let Some(user) = user {
        // Same round trip pattern as the data plane: transaction-local setting.
        sqlx::query("SELECT set_config('edumind.user_id', $1, true)")
            .bind(user.to_string())
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    let ids = sqlx::query_scalar("SELECT user_id FROM students ORDER BY user_id")
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    ids
}

#[tokio::test]
async fn self_service_tenant_is_provisioned_isolated_by_rls_and_idempotent() {
    // A server of its own: the database name is fixed, and `migrate --all` below acts on
    // every claimed database of the server.
    let (own, _supervised) = support::private_postgres().await;
    let pg = &own;
    let client = support::empty_api().await;
    let server = support::target_server(pg);
    let admin = crate::support::admin_options(pg).await;

    // First run provisions everything; the second changes nothing.
    let first = selfservice::ensure(&client, NS, &server, &admin)
        .await
        .unwrap();
    assert!(
        first.changes.contains(&"created the database"),
        "{:?}",
        first.changes
    );
    assert!(
        first
            .changes
            .contains(&"installed row-level security policies")
    );
    assert_eq!(first.schema_version, edumind_schema::latest_version());
    let second = selfservice::ensure(&client, NS, &server, &admin)
        .await
        .unwrap();
    assert!(
        second.changes.is_empty(),
        "second run changed: {:?}",
        second.changes
    );

    // The Secret: contract keys, the self-service marker, no school id.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    let secret = secrets.get(SECRET_NAME).await.unwrap();
    let labels = secret.metadata.labels.clone().unwrap();
    assert_eq!(labels["edumind.ai/tenant"], "selfservice");
    assert!(!labels.contains_key("edumind.ai/school-id"));
    let data = secret.data.clone().unwrap();
    for key in [
        "username",
        "user",
        "password",
        "host",
        "port",
        "dbname",
        "uri",
        "jdbc-uri",
        "pgpass",
        "SelfService-ConnectionString",
    ] {
        assert!(data.contains_key(key), "Secret lacks {key}");
    }
    assert_eq!(
        String::from_utf8(data["dbname"].0.clone()).unwrap(),
        DATABASE
    );
    let password = password_of(&secret);

    // The app role logs in with the published password and owns nothing.
    let mut app = connect_as_app(pg, &password)
        .await
        .expect("published credentials work");
    let not_owned: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tableowner = $1",
    )
    .bind(OWNER_ROLE)
    .fetch_one(&mut app)
    .await
    .unwrap();
    assert_eq!(
        not_owned, 15,
        "13 tables, the migrations table and the cache outbox belong to the owner role"
    );
    let app_owns: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_tables WHERE tableowner = current_user")
            .fetch_one(&mut app)
            .await
            .unwrap();
    assert_eq!(app_owns, 0);

    // Two students, inserted by the superuser (who bypasses RLS).
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    let mut root = PgConnection::connect(&pg.url(DATABASE)).await.unwrap();
    for (user, email) in [(alice, "alice@self.example"), (bob, "bob@self.example")] {
        sqlx::query("INSERT INTO users (id, email, full_name, role) VALUES ($1, $2, 'S', 4)")
            .bind(user)
            .bind(email)
            .execute(&mut root)
            .await
            .unwrap();
        sqlx::query("INSERT INTO students (id, user_id, grade_level) VALUES ($1, $2, 8)")
            .bind(Uuid::new_v4())
            .bind(user)
            .execute(&mut root)
            .await
            .unwrap();
    }

    // Raw SQL as the application role: each user sees exactly their own row.
    assert_eq!(visible_students(&mut app, Some(alice)).await, vec![alice]);
    assert_eq!(visible_students(&mut app, Some(bob)).await, vec![bob]);
    assert!(
        visible_students(&mut app, None).await.is_empty(),
        "no user set: nothing (fail closed)"
    );
    // Writing a row for someone else is refused by the policy's WITH CHECK.
    let mut tx = app.begin().await.unwrap();
    sqlx::query("SELECT set_config('edumind.user_id', $1, true)")
        .bind(alice.to_string())
        .execute(&mut *tx)
        .await
        .unwrap();
    let err = sqlx::query("UPDATE students SET xp_points = 999 WHERE user_id = $1")
        .bind(bob)
        .execute(&mut *tx)
        .await
        .unwrap();
    assert_eq!(err.rows_affected(), 0, "Bob's row is invisible to Alice");
    let err =
        sqlx::query("INSERT INTO users (id, email, full_name, role) VALUES ($1, 'x@y', 'X', 4)")
            .bind(Uuid::new_v4())
            .execute(&mut *tx)
            .await
            .expect_err("inserting another user's row violates the policy");
    assert!(err.to_string().contains("row-level security"), "{err}");
    drop(tx);
    // The app role cannot switch RLS off.
    let err = sqlx::query("ALTER TABLE students DISABLE ROW LEVEL SECURITY")
        .execute(&mut app)
        .await
        .expect_err("not the owner");
    assert!(err.to_string().contains("must be owner"), "{err}");
    app.close().await.unwrap();

    // A deleted Secret comes back with a new password that works; the old one stops.
    secrets
        .delete(SECRET_NAME, &DeleteParams::default())
        .await
        .unwrap();
    let third = selfservice::ensure(&client, NS, &server, &admin)
        .await
        .unwrap();
    assert!(
        third
            .changes
            .contains(&"set the application role's password"),
        "{:?}",
        third.changes
    );
    let renewed = password_of(&secrets.get(SECRET_NAME).await.unwrap());
    assert_ne!(renewed, password);
    connect_as_app(pg, &renewed)
        .await
        .expect("new password works");
    assert!(
        connect_as_app(pg, &password).await.is_err(),
        "old password refused"
    );

    // Drift: someone makes the app role a superuser (a non-superuser admin may not undo
    // that, so CREATEROLE for it); the next run takes it back.
    let drift = if crate::support::managed() {
        "ALTER ROLE edumind_selfservice_app CREATEROLE"
    } else {
        "ALTER ROLE edumind_selfservice_app SUPERUSER"
    };
    sqlx::query(drift).execute(&mut root).await.unwrap();
    let fourth = selfservice::ensure(&client, NS, &server, &admin)
        .await
        .unwrap();
    assert_eq!(
        fourth.changes,
        vec!["reset the application role's attributes"]
    );
    let is_super: bool =
        sqlx::query_scalar("SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = $1")
            .bind(APP_ROLE)
            .fetch_one(&mut root)
            .await
            .unwrap();
    assert!(!is_super);

    // `migrate --all` covers the self-service database too, as its owner role.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_edumind-operator"))
        .args(["migrate", "--all"])
        .env("EDUMIND_ADMIN_URL", pg.operator_admin_url().await)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.contains(DATABASE) && l.contains("up to date")),
        "{stdout}"
    );
}
