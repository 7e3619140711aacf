//! `migrate --all` over a fleet of school databases, and leader election on a Lease.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use edumind_operator::pg::{self, Claim};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use sqlx::Connection;

#[tokio::test]
async fn migrate_all_brings_twenty_school_databases_to_the_latest_schema() {
    let pg = edumind_tests::postgres().await;
    let tag = edumind_tests::random_token(6);
    let mut admin = pg.admin().await;
    let mut names = Vec::new();
    for i in 0..20 {
        // Claimed, unmigrated databases, as an older operator without these migrations left them.
        let id = uuid::Uuid::new_v4();
        let name = edumind_operator::naming::school_database(&format!("fleet {tag} {i}"), id);
        let claim = Claim {
            kind: "school".into(),
            school_id: id.to_string(),
            code: format!("fleet-{tag}-{i}"),
            owner: format!("fleet-{tag}/s{i}"),
        };
        let verifier = edumind_operator::credentials::scram_verifier(
            &edumind_operator::credentials::generate_password(),
        )
        .unwrap();
        pg::create_role(&mut admin, &name, &verifier, &claim, true)
            .await
            .unwrap();
        pg::create_database(&mut admin, &name, &name, &claim)
            .await
            .unwrap();
        names.push(name);
    }
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_edumind-operator"))
        .args(["migrate", "--all", "--concurrency", "4"])
        .env("EDUMIND_ADMIN_URL", pg.admin_url())
        .output()
        .await
        .unwrap();
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
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_edumind-operator"))
        .args(["migrate", "--all"])
        .env("EDUMIND_ADMIN_URL", pg.admin_url())
        .output()
        .await
        .unwrap();
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
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = kube_fake_client::ClientBuilder::new()
        .build()
        .await
        .unwrap();
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
