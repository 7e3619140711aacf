//! Building and running the server. [`Application::build`] binds the public listener and
//! the admin listener (port 0 → a free port, which tests read with [`Application::port`]
//! and [`Application::admin_port`]) and starts the background
//! tasks; [`Application::run_until_stopped`] serves until the shutdown future resolves,
//! drains (`/readyz` 503 while still serving), then lets in-flight requests finish.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use warp::{Filter, Reply};

use crate::api;
use crate::auth::Authenticator;
use crate::cache::Cache;
use crate::config::Settings;
use crate::config::TenantSourceKind;
use crate::kube_source::KubeTenantSource;
use crate::metrics::Metrics;
use crate::pool::PoolManager;
use crate::state::{AppState, SharedState};
use crate::tenants::{Changes, FileTenantSource, TenantDirectory, TenantSource};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot bind {0}: {1}")]
    Bind(std::net::SocketAddr, std::io::Error),
    #[error("auth keys: {0}")]
    Keys(#[from] crate::auth::KeyError),
    #[error("tenant directory: {0}")]
    Tenants(#[from] crate::tenants::SourceError),
    #[error("{0}")]
    Other(String),
}

pub struct Application {
    port: u16,
    listener: tokio::net::TcpListener,
    admin_port: u16,
    admin_listener: tokio::net::TcpListener,
    state: SharedState,
    shutdown_tx: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Application {
    /// Builds with the tenant source the settings name (`tenant_source`); in-cluster, the
    /// Kubernetes client comes from the pod's service account (or `KUBECONFIG`).
    pub async fn build(settings: Settings) -> Result<Self, StartError> {
        match settings.tenant_source {
            TenantSourceKind::Directory => {
                let source = FileTenantSource::new(settings.tenants_dir.clone());
                Self::build_with_source(settings, source).await
            }
            TenantSourceKind::Kubernetes => {
                let source = kube_source(&settings).await?;
                Self::build_inner(settings, source, |source, directory, on_change, stop| {
                    source.spawn_watch(directory, on_change, stop)
                })
                .await
            }
        }
    }

    /// Builds with an explicit tenant source (tests pass a Kubernetes source over a fake
    /// API client, which has no watch). The first snapshot must succeed, then the source
    /// is re-read every `tenant_poll_ms`.
    pub async fn build_with_source<S: TenantSource>(
        settings: Settings,
        source: S,
    ) -> Result<Self, StartError> {
        let every = Duration::from_millis(settings.tenant_poll_ms);
        Self::build_inner(
            settings,
            source,
            move |source, directory, on_change, stop| {
                directory.spawn_poller(source, every, on_change, stop)
            },
        )
        .await
    }

    /// Builds around `source`: its first snapshot must succeed; `follow` then starts the
    /// task that keeps the directory current (a poller, or the Kubernetes watch).
    async fn build_inner<S, W>(settings: Settings, source: S, follow: W) -> Result<Self, StartError>
    where
        S: TenantSource,
        W: FnOnce(
            S,
            TenantDirectory,
            Box<dyn FnMut(&Changes) + Send>,
            tokio::sync::watch::Receiver<bool>,
        ) -> tokio::task::JoinHandle<()>,
    {
        let metrics = Arc::new(Metrics::new());
        let auth = Arc::new(Authenticator::from_settings(&settings.auth)?);
        let cache = Cache::new(&settings.redis, metrics.clone())
            .await
            .map_err(StartError::Other)?;
        let directory = TenantDirectory::default();
        directory.count_errors_in(metrics.source_errors());
        directory.refresh_once(&source).await?;
        let pools = PoolManager::with_metrics(settings.pool.clone(), metrics.clone());
        let listener = tokio::net::TcpListener::bind(settings.listen)
            .await
            .map_err(|e| StartError::Bind(settings.listen, e))?;
        let port = listener
            .local_addr()
            .map_err(|e| StartError::Bind(settings.listen, e))?
            .port();
        let admin_listener = tokio::net::TcpListener::bind(settings.admin_listen)
            .await
            .map_err(|e| StartError::Bind(settings.admin_listen, e))?;
        let admin_port = admin_listener
            .local_addr()
            .map_err(|e| StartError::Bind(settings.admin_listen, e))?
            .port();
        let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
        let forget = pools.clone();
        let tasks = vec![
            follow(
                source,
                directory.clone(),
                Box::new(move |changes: &Changes| {
                    for id in changes.removed.iter().chain(&changes.changed) {
                        forget.forget(id);
                    }
                }),
                shutdown_rx.clone(),
            ),
            pools.spawn_reaper(shutdown_rx),
        ];
        let state = Arc::new(AppState {
            settings,
            directory,
            pools,
            auth,
            cache,
            metrics,
        });
        let mut tasks = tasks;
        // Durable invalidation: the cache replays each tenant's outbox before reading its
        // keys, and every few seconds for the tenants it serves.
        state
            .cache
            .set_outbox(Arc::new(crate::outbox::DbOutbox::new(&state)));
        tasks.push(crate::outbox::spawn_replayer(
            state.clone(),
            shutdown_tx.subscribe(),
        ));
        if state.settings.auth.jwks_file.is_some() {
            tasks.push(crate::auth::spawn_jwks_reloader(
                state.auth.clone(),
                state.metrics.clone(),
                Duration::from_millis(state.settings.auth.jwks_reload_ms.max(100)),
                shutdown_tx.subscribe(),
            ));
        }
        Ok(Application {
            port,
            listener,
            admin_port,
            admin_listener,
            state,
            shutdown_tx,
            tasks,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The admin listener's port (`/metrics`, detailed `/readyz`).
    pub fn admin_port(&self) -> u16 {
        self.admin_port
    }

    pub fn state(&self) -> SharedState {
        self.state.clone()
    }

    /// Serves until `shutdown` resolves; then drains: `/readyz` answers 503 while every
    /// request is still served, for `shutdown_drain_secs`, so load balancers take this
    /// instance out first; then stops accepting, lets in-flight requests finish (up to
    /// `shutdown_grace_secs`) and stops the background tasks.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let drain = Duration::from_secs(self.state.settings.shutdown_drain_secs);
        let grace = Duration::from_secs(self.state.settings.shutdown_grace_secs);
        let draining = Arc::new(AtomicBool::new(false));
        let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
        let routes = drain_gate(draining.clone())
            .or(api::routes(self.state.clone()))
            .unify();
        // The admin listener lives as long as the public one, and drains with it.
        let admin_routes = drain_gate(draining.clone())
            .or(api::admin_routes(&self.state))
            .unify();
        let (admin_stop_tx, admin_stop_rx) = tokio::sync::oneshot::channel::<()>();
        let admin = tokio::spawn(
            warp::serve(admin_routes)
                .incoming(self.admin_listener)
                .graceful(async move {
                    let _ = admin_stop_rx.await;
                })
                .run(),
        );
        let server = warp::serve(routes)
            .incoming(self.listener)
            .graceful(async move {
                shutdown.await;
                draining.store(true, Ordering::Release);
                tracing::info!(
                    drain_secs = drain.as_secs(),
                    "shutdown signal: draining (readyz 503, still serving)"
                );
                tokio::time::sleep(drain).await;
                tracing::info!("drain over: no new connections; finishing in-flight requests");
                let _ = stopping_tx.send(());
            })
            .run();
        tokio::pin!(server);
        tokio::select! {
            _ = &mut server => {}
            _ = async { let _ = stopping_rx.await; tokio::time::sleep(grace).await } => {
                tracing::warn!("grace period over; dropping remaining connections");
            }
        }
        let _ = admin_stop_tx.send(());
        let _ = tokio::time::timeout(Duration::from_secs(2), admin).await;
        let _ = self.shutdown_tx.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// While draining, `GET /readyz` answers 503 (`"status": "draining"`) ahead of the real
/// check; otherwise it rejects, and the routes answer as usual.
fn drain_gate(
    draining: Arc<AtomicBool>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = warp::Rejection> + Clone {
    warp::path!("readyz").and(warp::get()).and_then(move || {
        let draining = draining.load(Ordering::Acquire);
        async move {
            if !draining {
                return Err(warp::reject::not_found());
            }
            let body = warp::reply::json(&serde_json::json!({"status": "draining"}));
            Ok(
                warp::reply::with_status(body, warp::http::StatusCode::SERVICE_UNAVAILABLE)
                    .into_response(),
            )
        }
    })
}

/// The current tenant set from the source the settings name, read once (one-shot jobs
/// such as `distribute-content`).
pub async fn load_tenants(settings: &Settings) -> Result<TenantDirectory, StartError> {
    let directory = TenantDirectory::default();
    match settings.tenant_source {
        TenantSourceKind::Directory => {
            let source = FileTenantSource::new(settings.tenants_dir.clone());
            directory.refresh_once(&source).await?;
        }
        TenantSourceKind::Kubernetes => {
            directory
                .refresh_once(&kube_source(settings).await?)
                .await?;
        }
    }
    Ok(directory)
}

/// The in-cluster source the settings describe, with a client from the pod's service
/// account (or `KUBECONFIG`).
async fn kube_source(settings: &Settings) -> Result<KubeTenantSource, StartError> {
    let client = kube::Client::try_default()
        .await
        .map_err(|e| StartError::Other(format!("Kubernetes client: {e}")))?;
    Ok(KubeTenantSource {
        client,
        namespaces: settings.kubernetes.namespaces.clone(),
        label_selector: settings.kubernetes.label_selector.clone(),
    })
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
