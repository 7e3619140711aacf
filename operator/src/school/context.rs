//! [`OperatorContext`]: what every reconcile shares (API client, target servers, admin pools,
//! metrics, event recorder, backup settings).

use std::collections::HashMap;
use std::sync::Arc;

use edumind_crds::connection::{MANAGED_BY, keys};
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::Api;
use kube::runtime::events::{Recorder, Reporter};
use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;
use tokio::sync::Mutex;

use crate::backupjobs::BackupConfig;
use crate::config::{TargetServer, TargetServers};
use crate::credentials::SecretString;
use crate::metrics::Metrics;
use crate::pg::{self, PgError};
use edumind_crds::connection::Tls;

use super::error::Error;

/// The operator namespace of [`OperatorContext::for_tests`] (the chart's default).
pub const TEST_OPERATOR_NAMESPACE: &str = "edumind-system";

/// Everything a reconcile needs, shared by all reconciles (of Schools, SchoolBackups and
/// SchoolRestores): the API client, the target servers and their admin pools, metrics,
/// the event recorder and the backup settings.
pub struct OperatorContext {
    pub client: Client,
    pub servers: TargetServers,
    /// Where the target servers' admin Secrets live.
    pub operator_namespace: String,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// Backup runner image, default storage and Job settings.
    pub backup: BackupConfig,
    /// Consecutive transient failures per object, for the retry delay.
    pub backoff: crate::backoff::Backoff,
    /// Admin pool per server name, created on first use.
    pools: Mutex<HashMap<String, ServerHandle>>,
}

#[derive(Clone)]
pub(crate) struct ServerHandle {
    pub(crate) pool: PgPool,
    pub(crate) options: PgConnectOptions,
    /// The server's TLS settings, as connection Secrets carry them.
    pub(crate) tls: Option<Tls>,
}

impl OperatorContext {
    pub fn new(
        client: Client,
        servers: TargetServers,
        operator_namespace: String,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Self::with_backup(
            client,
            servers,
            operator_namespace,
            metrics,
            BackupConfig::default(),
        )
    }

    /// [`OperatorContext::new`] with backup settings.
    pub fn with_backup(
        client: Client,
        servers: TargetServers,
        operator_namespace: String,
        metrics: Arc<Metrics>,
        backup: BackupConfig,
    ) -> Arc<Self> {
        let reporter = Reporter {
            controller: MANAGED_BY.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Arc::new(Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            servers,
            operator_namespace,
            metrics,
            backup,
            backoff: crate::backoff::Backoff::default(),
            pools: Mutex::default(),
        })
    }

    /// The context tests and benches reconcile with: operator namespace
    /// [`TEST_OPERATOR_NAMESPACE`] (where the admin Secrets are looked up), fresh metrics,
    /// default backup settings. Use [`OperatorContext::with_backup`] for other settings.
    pub fn for_tests(client: Client, servers: TargetServers) -> Arc<Self> {
        Self::new(
            client,
            servers,
            TEST_OPERATOR_NAMESPACE.into(),
            Arc::new(Metrics::default()),
        )
    }

    /// An admin connection to `server` (maintenance database).
    pub(crate) async fn admin_conn(
        &self,
        server: &TargetServer,
    ) -> Result<sqlx::pool::PoolConnection<sqlx::Postgres>, Error> {
        let handle = self.server(server).await?;
        Ok(handle.pool.acquire().await.map_err(|e| PgError::Sql {
            step: "connect to the server",
            source: e,
        })?)
    }

    pub(crate) async fn server(&self, server: &TargetServer) -> Result<ServerHandle, Error> {
        if let Some(h) = self.pools.lock().await.get(&server.name) {
            return Ok(h.clone());
        }
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &self.operator_namespace);
        let secret = secrets
            .get_opt(&server.admin_secret)
            .await
            .map_err(|e| Error::Kube {
                step: "read the admin Secret",
                source: Box::new(e),
            })?
            .ok_or_else(|| {
                Error::AdminCredentials(format!(
                    "Secret {}/{} not found",
                    self.operator_namespace, server.admin_secret
                ))
            })?;
        let user = secret_value(&secret, keys::USERNAME).ok_or_else(|| {
            Error::AdminCredentials(format!("Secret {} has no `username`", server.admin_secret))
        })?;
        let password = secret_value(&secret, keys::PASSWORD).ok_or_else(|| {
            Error::AdminCredentials(format!("Secret {} has no `password`", server.admin_secret))
        })?;
        let tls = match server.effective_ssl_mode() {
            Some(mode) => Some(Tls {
                mode,
                ca_pem: match &server.ca {
                    Some(ca) => Some(self.read_ca(ca).await?),
                    None => None,
                },
            }),
            None => None,
        };
        let options = pg::admin_options(
            &server.host,
            server.port,
            &user,
            &SecretString::new(password),
            &server.maintenance_database,
        );
        let options = match &tls {
            Some(tls) => tls.apply(options),
            None => options,
        };
        let handle = ServerHandle {
            pool: pg::admin_pool(options.clone(), 4),
            options,
            tls,
        };
        self.pools
            .lock()
            .await
            .insert(server.name.clone(), handle.clone());
        Ok(handle)
    }

    /// A target server's CA bundle from its Secret in the operator's namespace.
    async fn read_ca(&self, ca: &crate::config::CaRef) -> Result<String, Error> {
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &self.operator_namespace);
        let secret = secrets
            .get_opt(&ca.secret)
            .await
            .map_err(|e| Error::Kube {
                step: "read the CA Secret",
                source: Box::new(e),
            })?
            .ok_or_else(|| {
                Error::AdminCredentials(format!(
                    "CA Secret {}/{} not found",
                    self.operator_namespace, ca.secret
                ))
            })?;
        secret_value(&secret, &ca.key)
            .filter(|pem| pem.contains("-----BEGIN CERTIFICATE-----"))
            .ok_or_else(|| {
                Error::AdminCredentials(format!(
                    "Secret {} has no PEM certificate under `{}`",
                    ca.secret, ca.key
                ))
            })
    }

    /// The TLS settings of `server` (reads its CA Secret once).
    pub(crate) async fn tls(&self, server: &TargetServer) -> Result<Option<Tls>, Error> {
        Ok(self.server(server).await?.tls)
    }

    /// Admin connection options (TLS settings applied) and the TLS settings of `server`.
    pub async fn admin_options_and_tls(
        &self,
        server: &TargetServer,
    ) -> Result<(PgConnectOptions, Option<Tls>), Error> {
        let handle = self.server(server).await?;
        Ok((handle.options, handle.tls))
    }

    /// Admin connection options for `server` (reads its admin Secret once).
    pub async fn admin_options(&self, server: &TargetServer) -> Result<PgConnectOptions, Error> {
        Ok(self.server(server).await?.options)
    }

    /// Forgets a server's pool so the next reconcile re-reads its admin Secret. The pool
    /// is not closed: concurrent reconciles may still hold it, and it closes itself when
    /// the last handle is dropped.
    pub(crate) async fn forget_server(&self, name: &str) {
        self.pools.lock().await.remove(name);
    }
}

/// One key of a Secret's `data` as text, if present and UTF-8 (other keys may be binary).
pub(crate) fn secret_value(secret: &Secret, key: &str) -> Option<String> {
    let bytes = secret.data.as_ref()?.get(key)?;
    String::from_utf8(bytes.0.clone()).ok()
}
