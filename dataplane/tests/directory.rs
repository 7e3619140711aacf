//! Tenants appear, disappear and rotate passwords while the service runs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use edumind_dataplane::secret::Secret;
use edumind_dataplane::tenants::{TenantId, manifest_path};
use support::*;
use uuid::Uuid;

async fn eventually(mut check: impl AsyncFnMut() -> bool) -> bool {
    for _ in 0..50 {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test]
async fn tenants_come_go_and_rotate_without_restart() {
    let f = Fixture::start(edumind_tests::redis().await.url()).await;
    let pg = edumind_tests::postgres().await;
    let admin = token(Uuid::new_v4(), 5, None);
    let ta = f.a.school_id.unwrap();
    let path = format!("/v1/tenants/{ta}/school");
    assert_eq!(f.call("GET", &path, Some(&admin), None).await.0, 200);

    // Rotate: new password in PostgreSQL, then in the Secret. Existing connections are
    // retired, new ones use the new password.
    let new_password = edumind_tests::random_token(24);
    let mut su = pg.admin().await;
    exec(
        &mut su,
        format!(
            "ALTER ROLE \"{}\" PASSWORD '{new_password}'",
            f.a.tenant.username
        ),
    )
    .await;
    let mut rotated = f.a.tenant.clone();
    rotated.password = Secret::new(new_password);
    write_tenant(f.dir.path(), &rotated);
    assert!(
        eventually(async || f
            .state
            .directory
            .get(&TenantId::School(ta))
            .unwrap()
            .password
            == rotated.password)
        .await,
        "the directory picks up the new password"
    );
    assert_eq!(
        f.call("GET", &path, Some(&admin), None).await.0,
        200,
        "works with the rotated password"
    );

    // A stale Secret (old password) would fail: prove the service really uses the new one.
    let mut wrong = f.a.tenant.clone();
    wrong.password = Secret::new("not-the-password");
    write_tenant(f.dir.path(), &wrong);
    assert!(
        eventually(async || f
            .state
            .directory
            .get(&TenantId::School(ta))
            .unwrap()
            .password
            == wrong.password)
        .await
    );
    let (s, v, _) = f.call("GET", &path, Some(&admin), None).await;
    assert_eq!(s, 503, "{v}");
    assert!(
        !v.to_string().contains("not-the-password"),
        "no secret in error bodies"
    );
    write_tenant(f.dir.path(), &rotated);
    assert!(eventually(async || f.call("GET", &path, Some(&admin), None).await.0 == 200).await);

    // Disappear: 404, exactly like a tenant that never existed.
    std::fs::remove_file(manifest_path(f.dir.path(), &TenantId::School(ta))).unwrap();
    assert!(eventually(async || f.call("GET", &path, Some(&admin), None).await.0 == 404).await);

    // Appear: a new school is served without a restart.
    let fresh = provision(pg, TenantId::School(Uuid::new_v4())).await;
    let tf = fresh.school_id.unwrap();
    let fresh_path = format!("/v1/tenants/{tf}/school");
    assert_eq!(f.call("GET", &fresh_path, Some(&admin), None).await.0, 404);
    write_tenant(f.dir.path(), &fresh.tenant);
    assert!(
        eventually(async || f.call("GET", &fresh_path, Some(&admin), None).await.0 == 200).await
    );
}
