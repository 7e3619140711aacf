//! The tenant directory: which schools exist and how to reach their databases.
//!
//! Tenants come from the connection Secrets the operator writes (design brief, "Connection
//! Secret"). A [`TenantSource`] produces the current set; [`TenantDirectory`] polls it,
//! publishes an immutable snapshot, and tells the pool manager which tenants vanished or
//! rotated their credentials so their connections are closed without a restart.
//!
//! The seam: [`FileTenantSource`] reads a directory of Secret-shaped YAML files (a mounted
//! projection, or tests). An in-cluster source listing the labelled Secrets through the
//! Kubernetes API implements the same trait; nothing else changes.
//!
//! Self-service marker: the shared self-service database's Secret carries the label
//! `edumind.ai/tenant: selfservice` (and no school-id label).
//!
//! The Secret's shape (labels, keys, formats) is the operator's contract,
//! [`edumind_crds::connection`]: this module parses and builds Secrets only through it.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use edumind_crds::connection::{
    self as contract, ConnectionSecret, Endpoint, ParseError, Password, SELF_SERVICE, TenantRef,
    Tls,
};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::secret::Secret;

/// A tenant: one school, or the shared self-service database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TenantId {
    School(Uuid),
    SelfService,
}

impl std::fmt::Display for TenantId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TenantId::School(id) => write!(f, "{id}"),
            TenantId::SelfService => f.write_str(SELF_SERVICE),
        }
    }
}

impl std::str::FromStr for TenantId {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        if s == SELF_SERVICE {
            Ok(TenantId::SelfService)
        } else {
            Uuid::parse_str(s).map(TenantId::School).map_err(|_| ())
        }
    }
}

/// How to reach one tenant's database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    pub id: TenantId,
    pub code: Option<String>,
    pub host: String,
    pub port: u16,
    pub dbname: String,
    pub username: String,
    pub password: Secret,
    /// The connection Secret's `sslmode` and `ca.crt`, when the server configures TLS.
    pub tls: Option<Tls>,
}

impl Tenant {
    /// The PostgreSQL server this tenant lives on; connection budgets are per server.
    pub fn server_key(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// Changes whenever anything needed to connect changes (password rotation included),
    /// without revealing the password.
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        for part in [
            &self.host,
            &self.port.to_string(),
            &self.dbname,
            &self.username,
        ] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        h.update(self.password.expose().as_bytes());
        if let Some(tls) = &self.tls {
            h.update([0]);
            h.update(tls.mode.as_str().as_bytes());
            h.update([0]);
            h.update(tls.ca_pem.as_deref().unwrap_or_default().as_bytes());
        }
        hex::encode(&h.finalize()[..12])
    }

    /// This tenant as the operator's connection Secret (tests and local setups build
    /// Secrets from it).
    pub fn to_connection_secret(&self) -> ConnectionSecret {
        ConnectionSecret {
            tenant: match self.id {
                TenantId::School(id) => TenantRef::School {
                    id,
                    code_label: self.code.clone(),
                },
                TenantId::SelfService => TenantRef::SelfService,
            },
            endpoint: Endpoint {
                host: self.host.clone(),
                port: self.port,
                dbname: self.dbname.clone(),
                username: self.username.clone(),
                password: Password::new(self.password.expose()),
                tls: self.tls.clone(),
            },
        }
    }
}

impl From<ConnectionSecret> for Tenant {
    fn from(c: ConnectionSecret) -> Self {
        let (id, code) = match c.tenant {
            TenantRef::School { id, code_label } => (TenantId::School(id), code_label),
            TenantRef::SelfService => (TenantId::SelfService, None),
        };
        Tenant {
            id,
            code,
            host: c.endpoint.host,
            port: c.endpoint.port,
            dbname: c.endpoint.dbname,
            username: c.endpoint.username,
            password: Secret::new(c.endpoint.password.expose()),
            tls: c.endpoint.tls,
        }
    }
}

/// `options` with the connection Secret's TLS settings (see [`Tls::apply`]); without
/// settings, sqlx's default (libpq's `prefer`) stays.
pub fn with_tls(
    options: sqlx::postgres::PgConnectOptions,
    tls: Option<&Tls>,
) -> sqlx::postgres::PgConnectOptions {
    match tls {
        Some(tls) => tls.apply(options),
        None => options,
    }
}

/// A parsed Secret → a tenant. `Ok(None)`: not managed by the operator (skipped silently).
/// `Err` names the key or label at fault and never carries a value from the Secret.
pub fn tenant_from_secret(
    secret: &k8s_openapi::api::core::v1::Secret,
) -> Result<Option<Tenant>, ParseError> {
    match ConnectionSecret::from_secret(secret) {
        Ok(c) => Ok(Some(c.into())),
        Err(ParseError::NotManaged) => Ok(None),
        Err(e) => Err(e),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot read tenant directory {0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("cannot list tenant Secrets in namespace {0}: {1}")]
    Kube(String, String),
}

/// Where tenants come from. Implementations return the complete current set; entries
/// that cannot be used are skipped (and logged without their contents).
pub trait TenantSource: Send + Sync + 'static {
    fn snapshot(&self) -> impl Future<Output = Result<Vec<Tenant>, SourceError>> + Send;
}

/// Reads `*.yaml`, `*.yml` and `*.json` Secret manifests from one directory. A file is
/// parsed again only when its bytes changed since the last snapshot (SHA-256 of the
/// contents; modification times are too coarse to tell two quick writes apart), so an
/// unchanged directory costs one small read per file per poll, and a broken file is
/// reported once per change rather than every poll.
#[derive(Debug, Clone)]
pub struct FileTenantSource {
    pub dir: PathBuf,
    seen: Arc<Mutex<HashMap<PathBuf, Parsed>>>,
}

/// A file's digest at its last parse, and what it held.
#[derive(Debug, Clone)]
struct Parsed {
    digest: [u8; 32],
    tenant: Option<Tenant>,
}

impl FileTenantSource {
    pub fn new(dir: PathBuf) -> Self {
        FileTenantSource {
            dir,
            seen: Arc::default(),
        }
    }

    /// The tenant in `path`'s `bytes` (`None`: not ours or broken).
    fn parse_cached(&self, path: &Path, bytes: &[u8]) -> Option<Tenant> {
        let digest: [u8; 32] = Sha256::digest(bytes).into();
        let mut seen = match self.seen.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(p) = seen.get(path).filter(|p| p.digest == digest) {
            return p.tenant.clone();
        }
        let tenant = match std::str::from_utf8(bytes)
            .map_err(|_| ParseError::NotASecret)
            .and_then(parse_secret)
        {
            Ok(t) => t,
            Err(reason) => {
                tracing::warn!(file = %path.display(), %reason, "skipping tenant secret");
                None
            }
        };
        seen.insert(
            path.to_owned(),
            Parsed {
                digest,
                tenant: tenant.clone(),
            },
        );
        tenant
    }
}

impl TenantSource for FileTenantSource {
    async fn snapshot(&self) -> Result<Vec<Tenant>, SourceError> {
        let mut out = Vec::new();
        let mut present = std::collections::HashSet::new();
        let mut entries = tokio::fs::read_dir(&self.dir)
            .await
            .map_err(|e| SourceError::Io(self.dir.clone(), e))?;
        while let Some(entry) = entries
            .next_entry()
            .await
            .map_err(|e| SourceError::Io(self.dir.clone(), e))?
        {
            let path = entry.path();
            let wanted = matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml" | "json")
            );
            if !wanted {
                continue;
            }
            let bytes = match tokio::fs::read(&path).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "cannot read tenant secret");
                    continue;
                }
            };
            out.extend(self.parse_cached(&path, &bytes));
            present.insert(path);
        }
        match self.seen.lock() {
            Ok(mut seen) => seen.retain(|p, _| present.contains(p)),
            Err(poisoned) => poisoned.into_inner().retain(|p, _| present.contains(p)),
        }
        Ok(out)
    }
}

/// Parses one Secret manifest (YAML or JSON) through the contract. `Ok(None)`: a Secret
/// that is not ours (not managed by the operator). `Err` never includes a value from it.
pub fn parse_secret(text: &str) -> Result<Option<Tenant>, ParseError> {
    tenant_from_secret(&contract::secret_from_yaml(text)?)
}

/// What changed between two snapshots, for the pool manager.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub added: Vec<TenantId>,
    pub removed: Vec<TenantId>,
    /// Same tenant, different connection details (e.g. a rotated password).
    pub changed: Vec<TenantId>,
}

type Snapshot = Arc<HashMap<TenantId, Arc<Tenant>>>;

/// The current tenant set, refreshed in the background.
#[derive(Clone)]
pub struct TenantDirectory {
    current: Arc<RwLock<Snapshot>>,
    /// Where failed reads of the source are counted (`edumind_tenant_source_errors_total`).
    errors: Arc<std::sync::OnceLock<crate::metrics::SourceErrors>>,
}

impl Default for TenantDirectory {
    fn default() -> Self {
        TenantDirectory {
            current: Arc::new(RwLock::new(Arc::new(HashMap::new()))),
            errors: Arc::default(),
        }
    }
}

impl TenantDirectory {
    /// Counts failed reads of the tenant source into `errors` from now on (set once).
    pub fn count_errors_in(&self, errors: crate::metrics::SourceErrors) {
        let _ = self.errors.set(errors);
    }

    /// Records one failed read of the tenant source (`kubernetes` or `files`).
    pub fn note_source_error(&self, source: &'static str) {
        if let Some(errors) = self.errors.get() {
            errors
                .get_or_create(&crate::metrics::SourceLabels { source })
                .inc();
        }
    }

    /// (school tenants, self-service tenants).
    pub fn counts(&self) -> (usize, usize) {
        let snapshot = self.snapshot();
        let selfservice = usize::from(snapshot.contains_key(&TenantId::SelfService));
        (snapshot.len() - selfservice, selfservice)
    }

    pub fn get(&self, id: &TenantId) -> Option<Arc<Tenant>> {
        self.snapshot().get(id).cloned()
    }

    /// Every tenant, in no particular order.
    pub fn all(&self) -> Vec<Arc<Tenant>> {
        self.snapshot().values().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.snapshot().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn snapshot(&self) -> Snapshot {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces the tenant set; returns what changed. Duplicate ids keep the first entry.
    pub fn replace(&self, tenants: Vec<Tenant>) -> Changes {
        let mut next: HashMap<TenantId, Arc<Tenant>> = HashMap::new();
        for t in tenants {
            if next.contains_key(&t.id) {
                tracing::warn!(tenant = %t.id, "two Secrets name the same tenant; keeping one");
                continue;
            }
            next.insert(t.id, Arc::new(t));
        }
        let old = self.snapshot();
        let mut changes = Changes::default();
        for (id, t) in &next {
            match old.get(id) {
                None => changes.added.push(*id),
                Some(o) if o.fingerprint() != t.fingerprint() => changes.changed.push(*id),
                Some(_) => {}
            }
        }
        changes.removed = old
            .keys()
            .filter(|id| !next.contains_key(id))
            .copied()
            .collect();
        changes.added.sort();
        changes.removed.sort();
        changes.changed.sort();
        let next = Arc::new(next);
        match self.current.write() {
            Ok(mut g) => *g = next,
            Err(poisoned) => *poisoned.into_inner() = next,
        }
        changes
    }

    /// Replaces the tenant set and, when anything changed, logs the counts and tells
    /// `on_change` (the pool manager retires removed and rotated tenants' connections).
    pub fn publish<F: FnMut(&Changes)>(&self, tenants: Vec<Tenant>, on_change: &mut F) {
        let changes = self.replace(tenants);
        if changes != Changes::default() {
            tracing::info!(
                added = changes.added.len(),
                removed = changes.removed.len(),
                changed = changes.changed.len(),
                "tenant directory changed"
            );
            on_change(&changes);
        }
    }

    /// Reads `source` once and replaces the tenant set with what it lists.
    pub async fn refresh_once<S: TenantSource>(&self, source: &S) -> Result<Changes, SourceError> {
        let tenants = source.snapshot().await?;
        Ok(self.replace(tenants))
    }

    /// Keeps polling `source` every `every` until `shutdown` fires; `on_change` hears
    /// about added, removed and rotated tenants. A failed poll keeps the last known set (a
    /// transient read error must not drop every tenant).
    pub fn spawn_poller<S, F>(
        &self,
        source: S,
        every: Duration,
        mut on_change: F,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()>
    where
        S: TenantSource,
        F: FnMut(&Changes) + Send + 'static,
    {
        let dir = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = shutdown.changed() => return,
                }
                match source.snapshot().await {
                    Ok(tenants) => dir.publish(tenants, &mut on_change),
                    Err(e) => {
                        dir.note_source_error("files");
                        tracing::warn!(error = %e, "tenant directory poll failed")
                    }
                }
            }
        })
    }
}

/// A Secret manifest in the operator's shape for `tenant`, written by serde (tests and
/// local setups use it).
pub fn secret_manifest(tenant: &Tenant) -> Result<String, serde_yaml_ng::Error> {
    let mut secret =
        tenant
            .to_connection_secret()
            .to_secret(&format!("tenant-{}", tenant.id), "", None);
    secret.metadata.namespace = None;
    contract::secret_to_yaml(&secret)
}

/// Where a file source keeps a tenant's manifest (one file per tenant).
pub fn manifest_path(dir: &Path, id: &TenantId) -> PathBuf {
    dir.join(format!("{id}.yaml"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(id: TenantId, password: &str) -> Tenant {
        Tenant {
            tls: None,
            id,
            code: Some("A \"b\" é".into()),
            host: "127.0.0.1".into(),
            port: 5432,
            dbname: "edumind_school_x".into(),
            username: "school_x".into(),
            password: Secret::new(password),
        }
    }

    #[test]
    fn manifest_round_trips_and_marks_self_service() {
        let school = tenant(TenantId::School(Uuid::new_v4()), "pw1");
        assert_eq!(
            parse_secret(&secret_manifest(&school).unwrap()).unwrap(),
            Some(school.clone())
        );
        let ss = tenant(TenantId::SelfService, "pw2");
        assert_eq!(
            parse_secret(&secret_manifest(&ss).unwrap())
                .unwrap()
                .unwrap()
                .id,
            TenantId::SelfService
        );
    }

    #[test]
    fn skips_foreign_and_reports_broken_without_values() {
        let foreign = "kind: Secret\nmetadata:\n  labels:\n    app: other\ndata: {}\n";
        assert_eq!(parse_secret(foreign).unwrap(), None);
        let broken = "kind: Secret\nmetadata:\n  labels:\n    app.kubernetes.io/managed-by: edumind-operator\n    edumind.ai/school-id: not-a-uuid\n";
        assert_eq!(parse_secret(broken).unwrap_err(), ParseError::BadSchoolId);
    }

    #[tokio::test]
    async fn file_source_reparses_only_changed_files() {
        let dir = tempfile::tempdir().unwrap();
        let a = tenant(TenantId::School(Uuid::new_v4()), "pw1");
        let path = manifest_path(dir.path(), &a.id);
        std::fs::write(&path, secret_manifest(&a).unwrap()).unwrap();
        let source = FileTenantSource::new(dir.path().to_owned());
        assert_eq!(source.snapshot().await.unwrap(), vec![a.clone()]);
        // Unchanged bytes: the remembered parse is used (planted here to tell it apart).
        let planted = tenant(a.id, "remembered");
        source.seen.lock().unwrap().get_mut(&path).unwrap().tenant = Some(planted.clone());
        assert_eq!(source.snapshot().await.unwrap(), vec![planted]);
        // Changed bytes (same length, written at once): parsed again.
        let rotated = tenant(a.id, "pw2");
        std::fs::write(&path, secret_manifest(&rotated).unwrap()).unwrap();
        assert_eq!(source.snapshot().await.unwrap(), vec![rotated]);
        std::fs::remove_file(&path).unwrap();
        assert!(source.snapshot().await.unwrap().is_empty());
        assert!(source.seen.lock().unwrap().is_empty());
    }

    #[test]
    fn replace_reports_added_removed_and_rotated() {
        let dir = TenantDirectory::default();
        let a = tenant(TenantId::School(Uuid::new_v4()), "old");
        let b = tenant(TenantId::School(Uuid::new_v4()), "b");
        let c = dir.replace(vec![a.clone(), b.clone()]);
        assert_eq!(c.added.len(), 2);
        let a2 = tenant(a.id, "new");
        let c = dir.replace(vec![a2]);
        assert_eq!(c.changed, vec![a.id]);
        assert_eq!(c.removed, vec![b.id]);
        assert_eq!(dir.get(&a.id).unwrap().password.expose(), "new");
    }
}
