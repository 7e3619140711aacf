//! The in-cluster tenant source over an in-memory Kubernetes API (kube-fake-client) and
//! the harness's real PostgreSQL: Secrets appear, rotate and disappear while the service
//! runs. The fake has no watch; the source lists, which the fake supports with selectors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use edumind_dataplane::kube_source::{DEFAULT_SELECTOR, KubeTenantSource, kube_secret};
use edumind_dataplane::secret::Secret;
use edumind_dataplane::startup::Application;
use edumind_dataplane::tenants::TenantId;
use k8s_openapi::api::core::v1::Secret as KubeSecret;
use kube::api::{Api, DeleteParams, PostParams};
use support::*;
use uuid::Uuid;

const SCHOOLS_NS: &str = "schools";
const SYSTEM_NS: &str = "edumind-system";

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
async fn kubernetes_secrets_come_rotate_and_go_without_restart() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let pg = edumind_tests::postgres().await;
    let redis = edumind_tests::redis().await;
    let client = kube_fake_client::ClientBuilder::new()
        .build()
        .await
        .unwrap();
    let a = provision(pg, TenantId::School(Uuid::new_v4())).await;
    let ss = provision(pg, TenantId::SelfService).await;
    let ta = a.school_id.unwrap();
    let schools: Api<KubeSecret> = Api::namespaced(client.clone(), SCHOOLS_NS);
    let system: Api<KubeSecret> = Api::namespaced(client.clone(), SYSTEM_NS);
    let elsewhere: Api<KubeSecret> = Api::namespaced(client.clone(), "unwatched");
    let pp = PostParams::default();
    schools
        .create(&pp, &kube_secret("school-a", SCHOOLS_NS, &a.tenant))
        .await
        .unwrap();
    system
        .create(
            &pp,
            &kube_secret("edumind-selfservice", SYSTEM_NS, &ss.tenant),
        )
        .await
        .unwrap();
    // Not ours: an unlabelled Secret in a watched namespace, and a labelled one in a
    // namespace that is not configured.
    let mut foreign = kube_secret("other", SCHOOLS_NS, &a.tenant);
    foreign.metadata.labels = None;
    schools.create(&pp, &foreign).await.unwrap();
    let b = provision(pg, TenantId::School(Uuid::new_v4())).await;
    elsewhere
        .create(&pp, &kube_secret("school-b", "unwatched", &b.tenant))
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let settings = settings(dir.path().to_owned(), redis.url());
    let source = KubeTenantSource {
        client: client.clone(),
        namespaces: vec![SCHOOLS_NS.into(), SYSTEM_NS.into()],
        label_selector: DEFAULT_SELECTOR.into(),
    };
    let app = Application::build_with_source(settings, source)
        .await
        .unwrap();
    let state = app.state();
    let base = format!("http://127.0.0.1:{}", app.port());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::new();
    let get = async |path: &str, token: &str| -> (u16, serde_json::Value) {
        let res = http
            .get(format!("{base}{path}"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or_default())
    };

    assert_eq!(state.directory.len(), 2, "school a and self-service only");
    let admin = token(Uuid::new_v4(), 5, None);
    let school_path = format!("/v1/tenants/{ta}/school");
    let (s, v) = get(&school_path, &admin).await;
    assert_eq!(
        (s, v["id"].as_str()),
        (200, Some(ta.to_string().as_str())),
        "{v}"
    );
    let ss_student = token(ss.students[0].0, 0, None);
    let (s, v) = get("/v1/tenants/selfservice/students", &ss_student).await;
    assert_eq!(s, 200, "{v}");
    let tb = b.school_id.unwrap();
    assert_eq!(
        get(&format!("/v1/tenants/{tb}/school"), &admin).await.0,
        404
    );

    // Rotate: ALTER ROLE, then update the Secret; requests keep working.
    let new_password = edumind_tests::random_token(24);
    let mut su = pg.admin().await;
    exec(
        &mut su,
        format!(
            "ALTER ROLE \"{}\" PASSWORD '{new_password}'",
            a.tenant.username
        ),
    )
    .await;
    let mut rotated = a.tenant.clone();
    rotated.password = Secret::new(new_password);
    let mut secret = schools.get("school-a").await.unwrap();
    secret.data = kube_secret("school-a", SCHOOLS_NS, &rotated).data;
    schools.replace("school-a", &pp, &secret).await.unwrap();
    assert!(
        eventually(
            async || state.directory.get(&TenantId::School(ta)).unwrap().password
                == rotated.password
        )
        .await,
        "the directory picks up the rotated password"
    );
    // The old connections were retired: a fresh connection with the new password serves.
    assert_eq!(get(&school_path, &admin).await.0, 200);

    // A new school appears in a watched namespace.
    schools
        .create(&pp, &kube_secret("school-b", SCHOOLS_NS, &b.tenant))
        .await
        .unwrap();
    assert!(
        eventually(async || get(&format!("/v1/tenants/{tb}/school"), &admin).await.0 == 200).await
    );

    // Delete: the tenant is gone, answering exactly like one that never existed.
    schools
        .delete("school-a", &DeleteParams::default())
        .await
        .unwrap();
    assert!(eventually(async || get(&school_path, &admin).await.0 == 404).await);
    let res = http
        .get(format!("{base}{school_path}"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let never = format!("/v1/tenants/{}/school", Uuid::new_v4());
    let (_, gone_body) = get(&school_path, &admin).await;
    let (_, never_body) = get(&never, &admin).await;
    assert_eq!(gone_body["status"], never_body["status"]);
    assert_eq!(gone_body["title"], never_body["title"]);

    let _ = stop.send(());
    server.await.unwrap();
}

/// `all_namespaces`: one cluster-wide list finds the operator's Secrets in every namespace
/// (and still only those).
#[tokio::test]
async fn all_namespaces_lists_every_namespace() {
    use edumind_dataplane::tenants::{Tenant, TenantSource};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = kube_fake_client::ClientBuilder::new()
        .build()
        .await
        .unwrap();
    let tenant = |id: TenantId| Tenant {
        tls: None,
        id,
        code: None,
        host: "127.0.0.1".into(),
        port: 5432,
        dbname: "db".into(),
        username: "u".into(),
        password: Secret::new("p"),
    };
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let pp = PostParams::default();
    for (ns, name, t) in [
        ("ns-a", "school-a", tenant(TenantId::School(a))),
        ("ns-b", "school-b", tenant(TenantId::School(b))),
        ("ns-c", "selfservice", tenant(TenantId::SelfService)),
    ] {
        let api: Api<KubeSecret> = Api::namespaced(client.clone(), ns);
        api.create(&pp, &kube_secret(name, ns, &t)).await.unwrap();
    }
    let mut foreign = kube_secret("other", "ns-a", &tenant(TenantId::School(Uuid::new_v4())));
    foreign.metadata.labels = None;
    Api::<KubeSecret>::namespaced(client.clone(), "ns-a")
        .create(&pp, &foreign)
        .await
        .unwrap();

    let source = KubeTenantSource {
        client,
        namespaces: Vec::new(),
        label_selector: DEFAULT_SELECTOR.into(),
    };
    let mut ids: Vec<TenantId> = source
        .snapshot()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    ids.sort_by_key(|id| format!("{id:?}"));
    let mut want = vec![
        TenantId::School(a),
        TenantId::School(b),
        TenantId::SelfService,
    ];
    want.sort_by_key(|id| format!("{id:?}"));
    assert_eq!(ids, want);
}
