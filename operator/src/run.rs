//! The controller process: JSON logs, leader election on a `coordination.k8s.io` Lease
//! ([`crate::leader`]; two replicas are safe: only the holder reconciles), Prometheus
//! `/metrics`, `/healthz`, `/readyz` ([`crate::http`]), a reconcile concurrency limit and
//! graceful shutdown on SIGTERM/SIGINT (in-flight reconciles finish, the Lease is
//! released).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use edumind_crds::connection;
use edumind_crds::{School, SchoolBackup, SchoolRestore};
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::Api;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, watcher};
use tokio::sync::watch;

use crate::config::TargetServers;
use crate::leader::{LEASE_DURATION, RENEW_EVERY, release, try_acquire};
use crate::metrics::Metrics;
use crate::school::{self, OperatorContext};

/// The operator's user agent towards the Kubernetes API.
pub const USER_AGENT: &str = concat!("edumind-operator/", env!("CARGO_PKG_VERSION"));

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Target server configuration (YAML; see the `config` module docs).
    #[arg(long, env = "EDUMIND_SERVERS_CONFIG")]
    pub config: PathBuf,
    /// The operator's namespace: admin Secrets and the leader Lease live here.
    #[arg(long, env = "POD_NAMESPACE", default_value = "edumind-system")]
    pub namespace: String,
    /// This replica's identity in the Lease.
    #[arg(long, env = "POD_NAME", default_value = "edumind-operator")]
    pub identity: String,
    /// Address of the metrics and health endpoints.
    #[arg(long, env = "EDUMIND_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,
    /// Most Schools reconciled at once (protects the PostgreSQL servers).
    #[arg(long, env = "EDUMIND_RECONCILE_CONCURRENCY", default_value_t = 4)]
    pub concurrency: u16,
    /// Also provision the shared self-service tenant (`edumind_selfservice`, row-level
    /// security) and keep it in shape while leader.
    #[arg(long, env = "EDUMIND_SELF_SERVICE")]
    pub self_service: bool,
    /// Target server of the self-service database (default: the default server).
    #[arg(long, env = "EDUMIND_SELF_SERVICE_SERVER")]
    pub self_service_server: Option<String>,
    /// Namespace of the self-service Secret (default: the operator's namespace).
    #[arg(long, env = "EDUMIND_SELF_SERVICE_NAMESPACE")]
    pub self_service_namespace: Option<String>,
    /// Image of the backup/restore Jobs: the operator's own image (it contains the
    /// runner and the PostgreSQL client tools).
    #[arg(long, env = "EDUMIND_BACKUP_IMAGE", default_value_t = crate::backupjobs::default_image())]
    pub backup_image: String,
    /// Backup storage of Schools without `spec.backup.storage`, as JSON in the shape of
    /// that field, e.g. `{"s3":{"bucket":"b","credentials":{"secretName":"s3"}}}` (the
    /// Secret or claim must exist in each School's namespace). Absent: such Schools get
    /// no backups and `BackupHealthy=False` (`NoBackupStorage`).
    #[arg(long, env = "EDUMIND_BACKUP_DEFAULT_STORAGE")]
    pub backup_default_storage: Option<String>,
    /// Take a verified backup (a Job) before moving a School's database to a newer schema
    /// version, and migrate only once it succeeded (when the School has backup storage).
    /// `false` turns this off for every School; `spec.backup.beforeMigration: false` does
    /// it for one.
    #[arg(
        long,
        env = "EDUMIND_BACKUP_BEFORE_MIGRATION",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub backup_before_migration: bool,
    /// Watch Schools only in these namespaces (comma-separated); empty: every namespace.
    /// With a list the operator needs RBAC only in those namespaces (namespaced Roles).
    #[arg(
        long,
        env = "EDUMIND_WATCH_NAMESPACES",
        value_delimiter = ',',
        num_args = 0..
    )]
    pub watch_namespaces: Vec<String>,
    /// First retry delay of an object after a transient error, in milliseconds; it
    /// doubles with each consecutive failure of that object (±20 % jitter) up to
    /// `--retry-max-ms`, and a successful reconcile resets it.
    #[arg(long, env = "EDUMIND_RETRY_BASE_MS", default_value_t = 1_000)]
    pub retry_base_ms: u64,
    /// Longest retry delay after transient errors, in milliseconds (default 5 minutes).
    #[arg(long, env = "EDUMIND_RETRY_MAX_MS", default_value_t = 300_000)]
    pub retry_max_ms: u64,
}

impl RunArgs {
    /// The backup settings these flags describe.
    pub fn backup_config(&self) -> anyhow::Result<crate::backupjobs::BackupConfig> {
        let default_storage = match &self.backup_default_storage {
            None => None,
            Some(text) => {
                let storage: edumind_crds::BackupStorage = serde_json::from_str(text)
                    .map_err(|e| anyhow::anyhow!("--backup-default-storage: {e}"))?;
                crate::backupjobs::check_storage(&storage)
                    .map_err(|e| anyhow::anyhow!("--backup-default-storage: {e}"))?;
                Some(storage)
            }
        };
        Ok(crate::backupjobs::BackupConfig {
            image: self.backup_image.clone(),
            default_storage,
            before_migration: self.backup_before_migration,
            ..Default::default()
        })
    }
}

/// An API for namespaced objects in one watched namespace, or in all of them.
fn scoped<K>(client: &Client, scope: &Option<String>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    <K as kube::Resource>::DynamicType: Default,
{
    match scope {
        None => Api::all(client.clone()),
        Some(ns) => Api::namespaced(client.clone(), ns),
    }
}

/// The namespaces to watch: `None` for all of them, else a de-duplicated, non-empty list.
pub fn watch_scope(requested: &[String]) -> Option<Vec<String>> {
    let mut namespaces: Vec<String> = requested
        .iter()
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
        .collect();
    namespaces.sort();
    namespaces.dedup();
    (!namespaces.is_empty()).then_some(namespaces)
}

/// Keeps the self-service tenant provisioned while this replica leads: every resync
/// period, or after a failure with the same backoff as a School's.
const SELF_SERVICE_KEY: &str = "self-service";

async fn self_service_loop(
    ctx: Arc<OperatorContext>,
    server: crate::config::TargetServer,
    namespace: String,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let wait = match ctx.admin_options_and_tls(&server).await {
            Ok((admin, tls)) => {
                match crate::selfservice::ensure_with_tls(
                    &ctx.client,
                    &namespace,
                    &server,
                    &admin,
                    tls.as_ref(),
                )
                .await
                {
                    Ok(outcome) => {
                        if !outcome.changes.is_empty() {
                            tracing::info!(changes = ?outcome.changes, "self-service tenant updated");
                        }
                        ctx.backoff.succeeded(SELF_SERVICE_KEY);
                        school::RESYNC
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "self-service tenant not ready");
                        ctx.backoff.failed(SELF_SERVICE_KEY)
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "self-service server unavailable");
                ctx.backoff.failed(SELF_SERVICE_KEY)
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

async fn log_result<T, E: std::fmt::Display>(result: Result<T, E>) {
    if let Err(e) = result {
        tracing::debug!(error = %e, "controller event");
    }
}

/// Runs the operator until SIGTERM/SIGINT or until leadership is lost.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    // JSON logs with the trace id, and OTLP export when OTEL_EXPORTER_OTLP_ENDPOINT is set.
    let _telemetry =
        edumind_telemetry::init("edumind-operator", std::io::stdout).map_err(anyhow::Error::msg)?;
    let backup_config = args.backup_config()?;
    let (retry_base, retry_max) = (
        std::time::Duration::from_millis(args.retry_base_ms.max(1)),
        std::time::Duration::from_millis(args.retry_max_ms.max(args.retry_base_ms.max(1))),
    );
    let text = tokio::fs::read_to_string(&args.config).await?;
    let servers = TargetServers::from_yaml(&text)?;
    let self_service_server = match (args.self_service, &args.self_service_server) {
        (false, _) => None,
        (true, requested) => Some(servers.resolve(requested.as_deref()).cloned().ok_or_else(
            || anyhow::anyhow!("self-service target server {requested:?} is not configured"),
        )?),
    };
    // A user agent of its own, so that API audit logs (and the tests' request record)
    // tell the operator's calls from everyone else's.
    let mut kube_config = kube::Config::infer().await?;
    kube_config.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_static(USER_AGENT),
    ));
    let client = kube::Client::try_from(kube_config)?;
    let metrics = Arc::new(Metrics::default());
    // A standby exports 0, so "no leader" is max over replicas < 1 (docs/operations.md).
    metrics.set_leader(false);
    let ready = Arc::new(AtomicBool::new(false));
    let (stop_tx, stop_rx) = watch::channel(false);

    // HTTP: metrics and probes.
    let listener = tokio::net::TcpListener::bind(args.http_addr).await?;
    let mut http_stop = stop_rx.clone();
    let http = tokio::spawn(crate::http::serve(
        listener,
        metrics.clone(),
        ready.clone(),
        async move {
            let _ = http_stop.wait_for(|s| *s).await;
        },
    ));
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutdown requested");
        let _ = stop_tx.send(true);
    });
    // Ready once configuration and the API client work; a standby is ready too.
    ready.store(true, Ordering::Relaxed);

    // Leader election: wait for the Lease, then keep renewing it.
    let leases: Api<Lease> = Api::namespaced(client.clone(), &args.namespace);
    let mut stop = stop_rx.clone();
    loop {
        if *stop.borrow() {
            let _ = http.await;
            return Ok(());
        }
        match try_acquire(&leases, &args.identity, LEASE_DURATION).await {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "leader election failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(RENEW_EVERY) => {}
            _ = stop.changed() => {}
        }
    }
    tracing::info!(identity = %args.identity, "became leader");
    metrics.set_leader(true);
    let (lost_tx, lost_rx) = watch::channel(false);
    let renew = {
        let (leases, identity, mut stop) = (leases.clone(), args.identity.clone(), stop_rx.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(RENEW_EVERY) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                if !matches!(
                    try_acquire(&leases, &identity, LEASE_DURATION).await,
                    Ok(true)
                ) {
                    tracing::error!("lost the leader Lease; stopping");
                    let _ = lost_tx.send(true);
                    return;
                }
            }
        })
    };

    let mut ctx = OperatorContext::with_backup(
        client.clone(),
        servers,
        args.namespace.clone(),
        metrics,
        backup_config,
    );
    if let Some(unique) = Arc::get_mut(&mut ctx) {
        unique.backoff = crate::backoff::Backoff::new(retry_base, retry_max);
    }
    let (self_stop_tx, self_stop_rx) = watch::channel(false);
    let self_service = self_service_server.map(|server| {
        let namespace = args
            .self_service_namespace
            .clone()
            .unwrap_or_else(|| args.namespace.clone());
        tokio::spawn(self_service_loop(
            ctx.clone(),
            server,
            namespace,
            self_stop_rx,
        ))
    });
    let managed = || {
        watcher::Config::default().labels(&format!(
            "{}={}",
            connection::LABEL_MANAGED_BY,
            connection::MANAGED_BY
        ))
    };
    let stopped = || {
        let (mut stop, mut lost) = (stop_rx.clone(), lost_rx.clone());
        async move {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => {}
                _ = lost.wait_for(|l| *l) => {}
            }
        }
    };
    // One set of controllers per watched namespace (or one for the whole cluster). School
    // reconciles share one concurrency limit so that the PostgreSQL servers see at most
    // `concurrency` of them in total.
    let scopes: Vec<Option<String>> = match watch_scope(&args.watch_namespaces) {
        None => vec![None],
        Some(list) => list.into_iter().map(Some).collect(),
    };
    tracing::info!(namespaces = ?scopes, "watching Schools");
    let permits = Arc::new(tokio::sync::Semaphore::new(usize::from(
        args.concurrency.max(1),
    )));
    let mut controllers = Vec::new();
    for scope in scopes {
        let permits = permits.clone();
        let school_controller = Controller::new(
            scoped::<School>(&client, &scope),
            watcher::Config::default(),
        )
        .owns(scoped::<Secret>(&client, &scope), managed())
        .owns(scoped::<CronJob>(&client, &scope), managed())
        // Scheduled Jobs belong to the CronJob: map them back by annotation.
        .watches(scoped::<Job>(&client, &scope), managed(), |job: Job| {
            let school = job
                .metadata
                .annotations
                .as_ref()?
                .get(crate::backupjobs::ANNOTATION_SCHOOL)?;
            Some(ObjectRef::<School>::new(school).within(job.metadata.namespace.as_deref()?))
        })
        // A restore that ends gives the School its logins back.
        .watches(
            scoped::<SchoolRestore>(&client, &scope),
            watcher::Config::default(),
            |r: SchoolRestore| {
                Some(
                    ObjectRef::<School>::new(&r.spec.school)
                        .within(r.metadata.namespace.as_deref()?),
                )
            },
        )
        .with_config(kube::runtime::controller::Config::default().concurrency(args.concurrency))
        .graceful_shutdown_on(stopped())
        .run(
            move |school, ctx| {
                let permits = permits.clone();
                async move {
                    let _permit = permits.acquire_owned().await;
                    school::reconcile(school, ctx).await
                }
            },
            school::error_policy,
            ctx.clone(),
        )
        .for_each(log_result)
        .boxed();
        let backup_controller = Controller::new(
            scoped::<SchoolBackup>(&client, &scope),
            watcher::Config::default(),
        )
        .owns(scoped::<Job>(&client, &scope), managed())
        .graceful_shutdown_on(stopped())
        .run(
            |sb, ctx| async move {
                let key = crate::backoff::key(sb.as_ref());
                let result = crate::controllers::reconcile_backup(sb, ctx.clone()).await;
                if result.is_ok() {
                    ctx.backoff.succeeded(&key);
                }
                result
            },
            crate::controllers::error_policy,
            ctx.clone(),
        )
        .for_each(log_result)
        .boxed();
        let restore_controller = Controller::new(
            scoped::<SchoolRestore>(&client, &scope),
            watcher::Config::default(),
        )
        .owns(scoped::<Job>(&client, &scope), managed())
        .graceful_shutdown_on(stopped())
        .run(
            |sr, ctx| async move {
                let key = crate::backoff::key(sr.as_ref());
                let result = crate::controllers::reconcile_restore(sr, ctx.clone()).await;
                if result.is_ok() {
                    ctx.backoff.succeeded(&key);
                }
                result
            },
            crate::controllers::error_policy,
            ctx.clone(),
        )
        .for_each(log_result)
        .boxed();
        controllers.extend([school_controller, backup_controller, restore_controller]);
    }
    futures::future::join_all(controllers).await;
    renew.abort();
    let _ = self_stop_tx.send(true);
    if let Some(task) = self_service {
        let _ = task.await;
    }
    if *lost_rx.borrow() {
        anyhow::bail!("lost leadership");
    }
    if let Err(e) = release(&leases, &args.identity).await {
        tracing::warn!(error = %e, "cannot release the leader Lease");
    }
    tracing::info!("stopped");
    let _ = http.await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    fn parse(extra: &[&str]) -> RunArgs {
        let mut args = vec!["x", "--config", "servers.yaml"];
        args.extend_from_slice(extra);
        Cli::try_parse_from(args).unwrap().run
    }

    #[test]
    fn backup_flags_parse_and_bad_default_storage_is_refused() {
        let args = parse(&[]);
        let config = args.backup_config().unwrap();
        assert_eq!(config.image, crate::backupjobs::default_image());
        assert!(config.default_storage.is_none());
        let args = parse(&[
            "--backup-image",
            "registry.example/op:1",
            "--backup-default-storage",
            r#"{"s3":{"bucket":"b","credentials":{"secretName":"s3"}}}"#,
        ]);
        let config = args.backup_config().unwrap();
        assert_eq!(config.image, "registry.example/op:1");
        assert_eq!(config.default_storage.unwrap().s3.unwrap().bucket, "b");
        for bad in [
            "{}",
            r#"{"persistentVolumeClaim":"a","s3":{"bucket":"b"}}"#,
            "not json",
        ] {
            let args = parse(&["--backup-default-storage", bad]);
            assert!(args.backup_config().is_err(), "{bad}");
        }
    }

    #[test]
    fn watch_scope_trims_dedups_and_defaults_to_all() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(watch_scope(&[]), None);
        assert_eq!(watch_scope(&v(&["", " "])), None);
        assert_eq!(watch_scope(&v(&["b", " a", "b"])), Some(v(&["a", "b"])));
    }
}
