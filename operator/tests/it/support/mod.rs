//! Shared set-up for the operator's integration tests (and the provision bench, which
//! includes this file by path): the in-memory Kubernetes API (kube-fake-client) holding
//! the target server's admin Secret, the harness's real PostgreSQL as target server, an
//! [`OperatorContext`] over both, and a fresh namespace and tag per test.
//!
//! ```ignore
//! let env = TestEnv::builder().with_backup(config).build().await;
//! env.create("lincoln", env.spec("Lincoln", json!({}))).await;
//! let school = env.reconcile("lincoln").await;
//! ```
//!
//! All tests run in one process and share the harness PostgreSQL server; names are
//! unique per test through [`TestEnv::tag`]. Tests that run `migrate --all` (which acts
//! on every claimed database of a server) or own the fixed self-service database start a
//! server of their own with [`private_postgres`].
// Test code: a panic is the failure report. Each user (a test module, the bench) uses
// part of this module.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;

use edumind_crds::{School, SchoolBackup, SchoolRestore, SchoolSpec};
use edumind_operator::backup::ConnectionInfo;
use edumind_operator::backupjobs::{self, BackupConfig};
use edumind_operator::config::{TargetServer, TargetServers};
use edumind_operator::metrics::Metrics;
use edumind_operator::school::{self, OperatorContext, TEST_OPERATOR_NAMESPACE};
use edumind_tests::PgServer;
use edumind_tests::supervisor::Supervised;
use k8s_openapi::ByteString;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

/// Where the target server's admin Secret lives (the context's operator namespace).
pub const OPERATOR_NS: &str = TEST_OPERATOR_NAMESPACE;

/// The name of the target server's admin Secret.
pub const ADMIN_SECRET: &str = "pg-admin";

/// The operator's admin connection options for `pg` (see [`admin_secret`]).
pub async fn admin_options(pg: &PgServer) -> sqlx::postgres::PgConnectOptions {
    let (user, password) = pg.operator_admin().await;
    edumind_operator::pg::admin_options(
        &pg.host,
        pg.port,
        &user,
        &edumind_operator::credentials::SecretString::new(password),
        "postgres",
    )
}

/// Whether the operator runs with a non-superuser admin in this test process.
pub fn managed() -> bool {
    edumind_tests::managed_admin_requested()
}

/// A PostgreSQL server of the calling test's own, stopped when the returned handle is
/// dropped. For tests that run `migrate --all` (it acts on every claimed database of a
/// server, and the shared one holds other tests' databases, which may be dropped
/// meanwhile) or that own the fixed self-service database (rbac provisions it too).
pub async fn private_postgres() -> (PgServer, Supervised) {
    tokio::task::spawn_blocking(PgServer::start_supervised)
        .await
        .unwrap()
        .unwrap()
}

/// The harness's PostgreSQL, with the process-wide rustls provider installed first (the
/// fake API client and the backup store need one).
pub async fn postgres() -> &'static PgServer {
    let _ = rustls::crypto::ring::default_provider().install_default();
    edumind_tests::postgres().await
}

/// The harness server as the chart's default target server `main`.
pub fn target_server(pg: &PgServer) -> TargetServer {
    TargetServer {
        name: "main".into(),
        host: pg.host.clone(),
        port: pg.port,
        admin_secret: ADMIN_SECRET.into(),
        default: true,
        client_host: None,
        client_port: None,
        maintenance_database: "postgres".into(),
        ssl_mode: None,
        ca: None,
    }
}

/// The target server's admin Secret, holding the credentials of the harness's operator
/// admin: the superuser, or with `EDUMIND_TEST_PG_ADMIN=managed` a non-superuser like a
/// managed service's (see `docs/managed-postgres.md`).
pub async fn admin_secret(pg: &PgServer) -> Secret {
    let (user, password) = pg.operator_admin().await;
    Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(ADMIN_SECRET.into()),
            namespace: Some(OPERATOR_NS.into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([
            ("username".to_string(), ByteString(user.into_bytes())),
            ("password".to_string(), ByteString(password.into_bytes())),
        ])),
        ..Default::default()
    }
}

/// An empty in-memory API (no custom resources), for tests of the self-service tenant
/// and leader election.
pub async fn empty_api() -> Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    kube_fake_client::ClientBuilder::new()
        .build()
        .await
        .unwrap()
}

type WrapClient = Box<dyn FnOnce(Client) -> Client + Send>;

/// Builds a [`TestEnv`]; see [`TestEnv::builder`].
#[derive(Default)]
pub struct TestEnvBuilder {
    server: Option<(&'static PgServer, TargetServer)>,
    objects: Vec<Secret>,
    backup: Option<BackupConfig>,
    restores: bool,
    namespace: Option<String>,
    wrap: Option<WrapClient>,
}

impl TestEnvBuilder {
    /// Backup settings for the context; registers SchoolBackup and SchoolRestore, with
    /// their status subresources, in the fake API.
    pub fn with_backup(mut self, config: BackupConfig) -> Self {
        self.backup = Some(config);
        self
    }

    /// Another PostgreSQL server (e.g. a TLS-only one) as target server `target`.
    pub fn on_server(mut self, pg: &'static PgServer, target: TargetServer) -> Self {
        self.server = Some((pg, target));
        self
    }

    /// One more Secret in the fake API (e.g. a CA bundle in the operator's namespace).
    pub fn with_secret(mut self, secret: Secret) -> Self {
        self.objects.push(secret);
        self
    }

    /// Registers SchoolRestore (without status subresource), so the School reconciler's
    /// look-up of restores in progress finds none instead of failing.
    pub fn with_restores(mut self) -> Self {
        self.restores = true;
        self
    }

    /// The Schools' namespace (default `ns-{tag}`).
    pub fn namespace(mut self, namespace: &str) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// The context's client is `wrap(fake)` (for example a request recorder); the test's
    /// own [`TestEnv::client`] stays the bare fake.
    pub fn wrap_client(mut self, wrap: impl FnOnce(Client) -> Client + Send + 'static) -> Self {
        self.wrap = Some(Box::new(wrap));
        self
    }

    pub async fn build(self) -> TestEnv {
        let (pg, server) = match self.server {
            Some((pg, target)) => {
                let _ = rustls::crypto::ring::default_provider().install_default();
                (pg, target)
            }
            None => {
                let pg = postgres().await;
                (pg, target_server(pg))
            }
        };
        let mut api = kube_fake_client::ClientBuilder::new()
            .with_resource::<School>()
            .with_status_subresource::<School>();
        if self.backup.is_some() {
            api = api
                .with_resource::<SchoolBackup>()
                .with_status_subresource::<SchoolBackup>()
                .with_resource::<SchoolRestore>()
                .with_status_subresource::<SchoolRestore>();
        } else if self.restores {
            api = api.with_resource::<SchoolRestore>();
        }
        let mut api = api.with_object(admin_secret(pg).await);
        for object in self.objects {
            api = api.with_object(object);
        }
        let client = api.build().await.unwrap();
        let ctx_client = match self.wrap {
            Some(wrap) => wrap(client.clone()),
            None => client.clone(),
        };
        let servers = TargetServers::new(vec![server.clone()]).unwrap();
        let ctx = match self.backup {
            Some(config) => OperatorContext::with_backup(
                ctx_client,
                servers,
                OPERATOR_NS.into(),
                Arc::new(Metrics::default()),
                config,
            ),
            None => OperatorContext::for_tests(ctx_client, servers),
        };
        let tag = edumind_tests::random_token(6);
        TestEnv {
            client,
            ctx,
            ns: self.namespace.unwrap_or_else(|| format!("ns-{tag}")),
            tag,
            pg,
            server,
        }
    }
}

/// One test's world: the fake API, the operator's context over it and the shared
/// PostgreSQL, a namespace and a random tag for unique names.
pub struct TestEnv {
    /// The fake API as the test (the user, the Job controller) sees it.
    pub client: Client,
    pub ctx: Arc<OperatorContext>,
    /// The Schools' namespace.
    pub ns: String,
    /// Random, unique to this test: part of every code and name it creates.
    pub tag: String,
    pub pg: &'static PgServer,
    /// The target server `main` (the harness PostgreSQL).
    pub server: TargetServer,
}

impl TestEnv {
    pub fn builder() -> TestEnvBuilder {
        TestEnvBuilder::default()
    }

    /// The API of a namespaced kind in this test's namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    pub fn schools(&self) -> Api<School> {
        self.api()
    }

    pub fn secrets(&self) -> Api<Secret> {
        self.api()
    }

    /// A unique code for this test.
    pub fn code(&self, base: &str) -> String {
        format!("{base}-{}", self.tag)
    }

    /// A valid spec with exactly this code.
    pub fn spec_for(&self, code: &str) -> SchoolSpec {
        serde_json::from_value(
            json!({"code": code, "name": format!("School {code}"), "address": "1 Main St",
            "contactEmail": "office@school.example"}),
        )
        .unwrap()
    }

    /// A valid spec with code `{code}-{tag}` and the fields of `extra` on top.
    pub fn spec(&self, code: &str, extra: serde_json::Value) -> SchoolSpec {
        let mut v = json!({"code": format!("{code}-{}", self.tag), "name": format!("School {code}"),
            "address": "1 Main St", "contactEmail": "office@school.example"});
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        serde_json::from_value(v).unwrap()
    }

    pub async fn create(&self, name: &str, spec: SchoolSpec) -> School {
        let mut s = School::new(name, spec);
        s.metadata.namespace = Some(self.ns.clone());
        self.schools()
            .create(&PostParams::default(), &s)
            .await
            .unwrap()
    }

    pub async fn school(&self, name: &str) -> School {
        self.schools().get(name).await.unwrap()
    }

    /// Reconciles the School as stored now; returns it as stored afterwards.
    pub async fn reconcile(&self, name: &str) -> School {
        let school = self.school(name).await;
        school::reconcile(Arc::new(school), self.ctx.clone())
            .await
            .expect("reconcile");
        self.school(name).await
    }

    /// A Secret of this namespace.
    pub async fn secret(&self, name: &str) -> Secret {
        self.secrets().get(name).await.unwrap()
    }

    /// The School's connection Secret as text, if it exists.
    pub async fn secret_data(&self, school: &str) -> Option<BTreeMap<String, String>> {
        let s = self
            .secrets()
            .get_opt(&edumind_operator::naming::secret_name(school))
            .await
            .unwrap()?;
        Some(
            s.data
                .unwrap()
                .into_iter()
                .map(|(k, v)| (k, String::from_utf8(v.0).unwrap()))
                .collect(),
        )
    }

    pub async fn events(&self) -> Vec<Event> {
        self.api::<Event>()
            .list(&ListParams::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default()
    }

    pub async fn annotate(&self, name: &str, key: &str, value: &str) {
        let patch = json!({"metadata": {"annotations": {key: value}}});
        self.schools()
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
    }

    pub async fn set_spec(&self, name: &str, patch: serde_json::Value) {
        self.schools()
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"spec": patch})),
            )
            .await
            .unwrap();
    }

    /// Deletes a Job and the Pod [`TestEnv::finish_job`] created for it, as a person
    /// retrying a failed backup would.
    pub async fn remove_job(&self, job: &str) {
        self.api::<Job>()
            .delete(job, &Default::default())
            .await
            .unwrap();
        self.api::<Pod>()
            .delete(&format!("{job}-pod"), &Default::default())
            .await
            .unwrap();
    }

    /// Plays the Job controller and kubelet: the Job finished, its Pod's runner container
    /// terminated with `result` as termination message.
    pub async fn finish_job(&self, job: &str, ok: bool, message: &str) {
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let condition = if ok { "Complete" } else { "Failed" };
        self.api::<Job>()
            .patch_status(
                job,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {
                    "completionTime": if ok { Some(&now) } else { None },
                    "conditions": [{"type": condition, "status": "True",
                        "lastTransitionTime": now, "reason": if ok { "Completed" } else { "BackoffLimitExceeded" }}]
                }})),
            )
            .await
            .unwrap();
        let school_id = self
            .api::<Job>()
            .get(job)
            .await
            .unwrap()
            .labels()
            .get(edumind_crds::connection::LABEL_SCHOOL_ID)
            .cloned()
            .unwrap_or_default();
        let pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("{job}-pod"), "namespace": self.ns,
                "labels": {backupjobs::LABEL_JOB_NAME: job, edumind_crds::connection::LABEL_SCHOOL_ID: school_id}},
            "spec": {"containers": [{"name": backupjobs::CONTAINER, "image": "x"}]},
            "status": {"containerStatuses": [{"name": backupjobs::CONTAINER, "image": "x", "imageID": "",
                "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": if ok { 0 } else { 1 }, "message": message,
                    "finishedAt": now}}}]}
        }))
        .unwrap();
        self.api::<Pod>()
            .create(&PostParams::default(), &pod)
            .await
            .unwrap();
    }

    /// The connection details in a Secret, as the runner reads them from its mount.
    pub async fn connection(&self, secret: &str) -> (ConnectionInfo, tempfile::TempDir) {
        let s = self.secret(secret).await;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret.yaml");
        std::fs::write(&file, serde_yaml_ng::to_string(&s).unwrap()).unwrap();
        (ConnectionInfo::load(&file).unwrap(), dir)
    }
}

/// The stand-in API server (`edumind_tests::kubeapi`) serving the operator's CRDs, and a
/// client of it. `options` tunes the event history and the bookmark period.
pub async fn stand_in(
    options: edumind_tests::kubeapi::Options,
) -> (edumind_tests::kubeapi::KubeApi, Client) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let crds: Vec<serde_json::Value> = edumind_crds::all_crds()
        .into_iter()
        .map(|(_, crd)| serde_json::to_value(crd).unwrap())
        .collect();
    let api = edumind_tests::kubeapi::KubeApi::start(&crds, options)
        .await
        .unwrap();
    let config = kube::Config::new(api.url().parse().unwrap());
    let client = Client::try_from(config).unwrap();
    (api, client)
}
