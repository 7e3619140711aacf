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

    /// Like [`snapshot`](Self::snapshot), but `None` when the source knows that nothing
    /// changed since its previous snapshot (the poller then has nothing to publish). The
    /// default always reads the whole set.
    fn snapshot_if_changed(
        &self,
    ) -> impl Future<Output = Result<Option<Vec<Tenant>>, SourceError>> + Send {
        async { self.snapshot().await.map(Some) }
    }
}

/// Reads `*.yaml`, `*.yml` and `*.json` Secret manifests from one directory.
///
/// A poll costs one directory listing and one `stat` per file (in one blocking task): a
/// file is read again only when its [`Stamp`] (device, inode, size, modification and
/// change times, following symlinks) differs from the one it had when it was last read,
/// or when that read was *racy*: the file had been modified within [`RACY_WINDOW`] of the
/// read, so a second write in the same timestamp tick could leave the stamp unchanged
/// (the same rule git uses for its index). A re-read file is parsed again only if its
/// bytes changed (SHA-256), so a broken file is reported once per change. Kubernetes
/// Secret volumes swap the `..data` symlink to a new directory atomically: the files
/// behind the symlinks are new inodes, so their stamps change. So an unchanged directory
/// is never re-read or re-parsed, and a changed file is never missed.
#[derive(Debug, Clone)]
pub struct FileTenantSource {
    pub dir: PathBuf,
    seen: Arc<Mutex<HashMap<PathBuf, Parsed>>>,
    racy_window: Duration,
}

/// A file read within this long of its last modification is read again on the next
/// poll: wide enough for filesystems with coarse (1 s, FAT's 2 s) timestamps.
pub const RACY_WINDOW: Duration = Duration::from_secs(3);

/// What `stat` says about a file, enough to tell that it changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    #[cfg(unix)]
    fn of(m: &std::fs::Metadata) -> Option<Stamp> {
        use std::os::unix::fs::MetadataExt;
        Some(Stamp {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }

    /// Without Unix metadata nothing is trusted: every poll reads every file.
    #[cfg(not(unix))]
    fn of(_: &std::fs::Metadata) -> Option<Stamp> {
        None
    }

    /// Whether a read at `read_at` (taken before the `stat`) could have missed a write
    /// in the same timestamp tick: the file's last change lies within `window` of
    /// the read (or after it: clocks move).
    fn racy(&self, read_at: std::time::SystemTime, window: Duration) -> bool {
        let latest = self.mtime.max(self.ctime);
        let Ok(read) = read_at.duration_since(std::time::UNIX_EPOCH) else {
            return true;
        };
        let changed = Duration::new(
            latest.0.max(0) as u64,
            latest.1.clamp(0, 999_999_999) as u32,
        );
        changed + window >= read
    }
}

/// A file's stamp and digest at its last read, and what it held.
#[derive(Debug, Clone)]
struct Parsed {
    /// `None`: not to be trusted (read again next poll).
    stamp: Option<Stamp>,
    digest: [u8; 32],
    tenant: Option<Tenant>,
}

impl FileTenantSource {
    pub fn new(dir: PathBuf) -> Self {
        FileTenantSource {
            dir,
            seen: Arc::default(),
            racy_window: RACY_WINDOW,
        }
    }

    /// Lists the directory in one blocking task: every tenant, and whether anything
    /// changed (a file added, removed, or with different bytes) since the previous scan.
    async fn scan(&self) -> Result<(Vec<Tenant>, bool), SourceError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.scan_blocking())
            .await
            .map_err(|e| SourceError::Io(self.dir.clone(), std::io::Error::other(e.to_string())))?
    }

    fn scan_blocking(&self) -> Result<(Vec<Tenant>, bool), SourceError> {
        let io = |e| SourceError::Io(self.dir.clone(), e);
        let entries = std::fs::read_dir(&self.dir).map_err(io)?;
        let mut seen = match self.seen.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut out = Vec::new();
        let mut present = std::collections::HashSet::new();
        let mut changed = false;
        for entry in entries {
            let path = entry.map_err(io)?.path();
            let wanted = matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml" | "json")
            );
            if !wanted {
                continue;
            }
            let read_at = std::time::SystemTime::now();
            // Follows symlinks: the stamp is the file's behind them.
            let stamp = match std::fs::metadata(&path) {
                Ok(m) => Stamp::of(&m),
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "cannot read tenant secret");
                    continue;
                }
            };
            if let Some(p) = seen.get(&path)
                && stamp.is_some()
                && p.stamp == stamp
            {
                present.insert(path);
                out.extend(p.tenant.clone());
                continue;
            }
            let bytes = match std::fs::read(&path) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "cannot read tenant secret");
                    continue;
                }
            };
            // Stamped before the read: a write after the stat changes the stamp again.
            let trusted = stamp.filter(|s| !s.racy(read_at, self.racy_window));
            let digest: [u8; 32] = Sha256::digest(&bytes).into();
            if let Some(p) = seen.get_mut(&path)
                && p.digest == digest
            {
                p.stamp = trusted;
                present.insert(path);
                out.extend(p.tenant.clone());
                continue;
            }
            let tenant = match std::str::from_utf8(&bytes)
                .map_err(|_| ParseError::NotASecret)
                .and_then(parse_secret)
            {
                Ok(t) => t,
                Err(reason) => {
                    tracing::warn!(file = %path.display(), %reason, "skipping tenant secret");
                    None
                }
            };
            changed = true;
            out.extend(tenant.clone());
            seen.insert(
                path.clone(),
                Parsed {
                    stamp: trusted,
                    digest,
                    tenant,
                },
            );
            present.insert(path);
        }
        let before = seen.len();
        seen.retain(|p, _| present.contains(p));
        changed |= seen.len() != before;
        Ok((out, changed))
    }
}

impl TenantSource for FileTenantSource {
    async fn snapshot(&self) -> Result<Vec<Tenant>, SourceError> {
        self.scan().await.map(|(tenants, _)| tenants)
    }

    async fn snapshot_if_changed(&self) -> Result<Option<Vec<Tenant>>, SourceError> {
        self.scan()
            .await
            .map(|(tenants, changed)| changed.then_some(tenants))
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
                match source.snapshot_if_changed().await {
                    Ok(Some(tenants)) => dir.publish(tenants, &mut on_change),
                    Ok(None) => {}
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

    /// Same length, the old modification time put back: only the inode or ctime tells.
    fn rewrite_keeping_mtime(path: &Path, text: String) {
        let mtime = std::fs::metadata(path).unwrap().modified().unwrap();
        std::fs::write(path, text).unwrap();
        let f = std::fs::File::options().write(true).open(path).unwrap();
        f.set_modified(mtime).unwrap();
    }

    #[tokio::test]
    async fn unchanged_directory_is_not_read_again_and_changes_are_seen() {
        let dir = tempfile::tempdir().unwrap();
        let a = tenant(TenantId::School(Uuid::new_v4()), "pw1");
        let path = manifest_path(dir.path(), &a.id);
        std::fs::write(&path, secret_manifest(&a).unwrap()).unwrap();
        let mut source = FileTenantSource::new(dir.path().to_owned());
        source.racy_window = Duration::ZERO; // the files here are older than the reads
        assert_eq!(
            source.snapshot_if_changed().await.unwrap(),
            Some(vec![a.clone()])
        );
        assert_eq!(source.snapshot_if_changed().await.unwrap(), None);
        // Not read again: a planted parse is what it answers.
        let planted = tenant(a.id, "remembered");
        source.seen.lock().unwrap().get_mut(&path).unwrap().tenant = Some(planted.clone());
        assert_eq!(source.snapshot().await.unwrap(), vec![planted]);
        // Rewritten in place, same size, same mtime: the change time still tells.
        let rotated = tenant(a.id, "pw2");
        // Past the kernel's timestamp tick (the racy window, zero here, covers that).
        std::thread::sleep(Duration::from_millis(50));
        rewrite_keeping_mtime(&path, secret_manifest(&rotated).unwrap());
        assert_eq!(
            source.snapshot_if_changed().await.unwrap(),
            Some(vec![rotated])
        );
        assert_eq!(source.snapshot_if_changed().await.unwrap(), None);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(source.snapshot_if_changed().await.unwrap(), Some(vec![]));
    }

    /// Kubernetes Secret volumes: `x.yaml -> ..data/x.yaml`, `..data -> ..<timestamp>`,
    /// and an update swaps `..data` atomically to a new directory.
    #[cfg(unix)]
    #[tokio::test]
    async fn atomic_symlink_swap_is_seen() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let a = tenant(TenantId::School(Uuid::new_v4()), "pw1");
        let name = format!("{}.yaml", a.id);
        let v1 = dir.path().join("..v1");
        std::fs::create_dir(&v1).unwrap();
        std::fs::write(v1.join(&name), secret_manifest(&a).unwrap()).unwrap();
        symlink("..v1", dir.path().join("..data")).unwrap();
        symlink(format!("..data/{name}"), dir.path().join(&name)).unwrap();
        let mut source = FileTenantSource::new(dir.path().to_owned());
        source.racy_window = Duration::ZERO;
        assert_eq!(
            source.snapshot_if_changed().await.unwrap(),
            Some(vec![a.clone()])
        );
        assert_eq!(source.snapshot_if_changed().await.unwrap(), None);
        // The new version: same length, same modification time, new directory.
        let rotated = tenant(a.id, "pw2");
        let v2 = dir.path().join("..v2");
        std::fs::create_dir(&v2).unwrap();
        let mtime = std::fs::metadata(v1.join(&name))
            .unwrap()
            .modified()
            .unwrap();
        std::fs::write(v2.join(&name), secret_manifest(&rotated).unwrap()).unwrap();
        std::fs::File::options()
            .write(true)
            .open(v2.join(&name))
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        symlink("..v2", dir.path().join("..data_tmp")).unwrap();
        std::fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).unwrap();
        assert_eq!(
            source.snapshot_if_changed().await.unwrap(),
            Some(vec![rotated])
        );
    }

    #[test]
    fn racy_reads_are_not_trusted() {
        let now = std::time::SystemTime::now();
        let secs = now.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
        let stamp = |t: i64| Stamp {
            dev: 1,
            ino: 1,
            len: 1,
            mtime: (t, 0),
            ctime: (t, 0),
        };
        assert!(stamp(secs).racy(now, RACY_WINDOW));
        assert!(stamp(secs - 2).racy(now, RACY_WINDOW));
        assert!(!stamp(secs - 10).racy(now, RACY_WINDOW));
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
