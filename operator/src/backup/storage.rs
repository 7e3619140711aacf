//! Where dumps live: a directory (a PersistentVolumeClaim in the cluster), an
//! S3-compatible bucket, or an Azure Blob Storage container, behind one interface.
//!
//! Layout: `<prefix>/<school-id>/<school-id>_<UTC time>.dump`, e.g.
//! `backups/0b8f…/0b8f…_20261125T020000.000Z.dump`. Within a school's folder the names
//! sort by time, and a dump copied elsewhere still says whose it is. Only verified dumps
//! are ever written under such a name (uploads are atomic), so every object that parses
//! as a dump name was a good backup when it was stored.
//!
//! Next to each dump, written after it, is its checksum manifest `<dump>.sha256` in the
//! format of `sha256sum` (`<64 hex digits>  <dump file name>`), so `sha256sum -c` checks a
//! downloaded pair by hand. A later change to the stored dump (a flipped byte, an edited
//! schema statement in the uncompressed table of contents) no longer matches it; see
//! [`super::check_checksum`]. The manifest is not a signature: whoever can rewrite both
//! files can forge it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, NaiveDateTime, Utc};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::BackupError;

const TIME_FORMAT: &str = "%Y%m%dT%H%M%S%.3fZ";
const PART_SIZE: usize = 8 * 1024 * 1024;

/// What a checksum manifest's name adds to its dump's name.
pub const CHECKSUM_SUFFIX: &str = ".sha256";

/// The checksum manifest that belongs to the dump `object`.
pub fn checksum_object(object: &str) -> String {
    format!("{object}{CHECKSUM_SUFFIX}")
}

/// Lower-case hex of a finished SHA-256.
fn hex(hasher: Sha256) -> String {
    use std::fmt::Write;
    hasher
        .finalize()
        .iter()
        .fold(String::with_capacity(64), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}

/// Bytes that went through [`BackupStore::upload`] or [`BackupStore::download_checked`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transferred {
    pub size: u64,
    /// SHA-256 of exactly the bytes transferred, lower-case hex.
    pub sha256: String,
}

/// The text of a checksum manifest for `object` (the `sha256sum` line format).
pub fn manifest_text(object: &str, sha256: &str) -> String {
    let file = object.rsplit('/').next().unwrap_or(object);
    format!("{sha256}  {file}\n")
}

/// The checksum a manifest records for `object`; an error when the text is not a manifest
/// of that object.
pub fn parse_manifest(object: &str, text: &str) -> Result<String, String> {
    let file = object.rsplit('/').next().unwrap_or(object);
    let line = text.lines().next().unwrap_or("");
    let (sum, name) = line
        .split_once(char::is_whitespace)
        .ok_or_else(|| "it is not a `<sha256>  <file>` line".to_string())?;
    let name = name.trim_start().trim_start_matches('*');
    if sum.len() != 64 || !sum.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("it holds no SHA-256".into());
    }
    if name != file {
        return Err(format!("it names {name:?}, not {file:?}"));
    }
    Ok(sum.to_ascii_lowercase())
}

/// S3-compatible bucket settings. Credentials come from the environment
/// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`), which the CronJob fills from a Secret.
#[derive(Debug, Clone)]
pub struct S3Location {
    pub bucket: String,
    pub prefix: String,
    /// e.g. `http://minio.backup:9000`; `None` for AWS itself.
    pub endpoint: Option<String>,
    pub region: String,
    /// Explicit credentials; `None` takes them from the environment.
    pub credentials: Option<S3Credentials>,
}

/// An access key pair. `Debug` shows the key id only.
#[derive(Clone)]
pub struct S3Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl std::fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "S3Credentials({}, <redacted>)", self.access_key_id)
    }
}

/// Azure Blob Storage container settings. Credentials come from the environment
/// (`AZURE_STORAGE_ACCOUNT_KEY` or `AZURE_STORAGE_SAS_TOKEN`, which the CronJob fills from
/// a Secret; neither: the pod's workload or managed identity).
#[derive(Debug, Clone)]
pub struct AzureLocation {
    pub account: String,
    pub container: String,
    pub prefix: String,
    /// The account's blob endpoint, e.g. a private endpoint or Azurite's
    /// `http://127.0.0.1:10000/devstoreaccount1`; `None` for
    /// `https://<account>.blob.core.windows.net`.
    pub endpoint: Option<String>,
    /// Explicit credentials; `None` takes them from the environment.
    pub credentials: Option<AzureCredentials>,
}

/// An account key or a SAS token. `Debug` shows neither.
#[derive(Clone)]
pub enum AzureCredentials {
    AccountKey(String),
    SasToken(String),
}

impl std::fmt::Debug for AzureCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AzureCredentials::AccountKey(_) => {
                f.write_str("AzureCredentials::AccountKey(<redacted>)")
            }
            AzureCredentials::SasToken(_) => f.write_str("AzureCredentials::SasToken(<redacted>)"),
        }
    }
}

/// A backup destination.
#[derive(Clone)]
pub struct BackupStore {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    description: String,
}

impl Transferred {
    /// `size` bytes whose SHA-256 `hasher` computed.
    pub fn new(size: u64, hasher: Sha256) -> Self {
        Self {
            size,
            sha256: hex(hasher),
        }
    }
}

/// An upload in progress (see [`BackupStore::start_upload`]): hashes what it sends.
pub struct Upload {
    writer: WriteMultipart,
    hasher: Sha256,
    total: u64,
    store: String,
}

impl Upload {
    /// Queues `chunk`, waiting while too many parts are in flight.
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), BackupError> {
        self.writer
            .wait_for_capacity(4)
            .await
            .map_err(|e| BackupError::Storage(format!("{}: upload failed: {e}", self.store)))?;
        self.writer.write(chunk);
        self.hasher.update(chunk);
        self.total += chunk.len() as u64;
        Ok(())
    }

    /// Completes the upload: only now does the object appear under its name.
    pub async fn finish(self) -> Result<Transferred, BackupError> {
        let store = self.store;
        self.writer
            .finish()
            .await
            .map_err(|e| BackupError::Storage(format!("{store}: upload failed: {e}")))?;
        Ok(Transferred {
            size: self.total,
            sha256: hex(self.hasher),
        })
    }

    /// Abandons the upload; no object appears. Best effort: a store that cannot clean
    /// up its parts now expires them by its own rules (an S3 lifecycle rule for
    /// incomplete multipart uploads), and they never carry a dump's name.
    pub async fn abort(self) {
        if let Err(e) = self.writer.abort().await {
            tracing::warn!(store = %self.store, error = %e, "cannot abort an unfinished upload");
        }
    }
}

/// One stored dump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDump {
    /// Object name relative to the store (what `restore --object` takes).
    pub object: String,
    pub taken_at: DateTime<Utc>,
    pub size: u64,
}

impl std::fmt::Debug for BackupStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.description)
    }
}

impl BackupStore {
    /// Dumps under a local directory (created when missing).
    pub fn directory(root: &Path) -> Result<Self, BackupError> {
        std::fs::create_dir_all(root).map_err(|e| {
            BackupError::Storage(format!(
                "cannot create backup directory {}: {e}",
                root.display()
            ))
        })?;
        let store = LocalFileSystem::new_with_prefix(root).map_err(|e| {
            BackupError::Storage(format!("backup directory {}: {e}", root.display()))
        })?;
        Ok(Self {
            store: Arc::new(store),
            prefix: String::new(),
            description: format!("directory {}", root.display()),
        })
    }

    /// Dumps in an S3-compatible bucket.
    pub fn s3(location: &S3Location) -> Result<Self, BackupError> {
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(&location.bucket)
            .with_region(&location.region);
        if let Some(creds) = &location.credentials {
            builder = builder
                .with_access_key_id(&creds.access_key_id)
                .with_secret_access_key(&creds.secret_access_key);
        }
        if let Some(endpoint) = &location.endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_virtual_hosted_style_request(false)
                .with_allow_http(endpoint.starts_with("http://"));
        }
        let store = builder
            .build()
            .map_err(|e| BackupError::Storage(format!("S3 bucket {}: {e}", location.bucket)))?;
        Ok(Self {
            store: Arc::new(store),
            prefix: location.prefix.trim_matches('/').to_string(),
            description: format!("s3 bucket {} prefix {:?}", location.bucket, location.prefix),
        })
    }

    /// Dumps in an Azure Blob Storage container.
    pub fn azure(location: &AzureLocation) -> Result<Self, BackupError> {
        let mut builder = MicrosoftAzureBuilder::from_env()
            .with_account(&location.account)
            .with_container_name(&location.container);
        match &location.credentials {
            Some(AzureCredentials::AccountKey(key)) => builder = builder.with_access_key(key),
            Some(AzureCredentials::SasToken(sas)) => {
                builder = builder.with_config(object_store::azure::AzureConfigKey::SasKey, sas)
            }
            None => {}
        }
        if let Some(endpoint) = &location.endpoint {
            builder = builder
                .with_endpoint(endpoint.clone())
                .with_allow_http(endpoint.starts_with("http://"));
        }
        // The builder's errors name settings, never the key or token.
        let store = builder.build().map_err(|e| {
            BackupError::Storage(format!(
                "Azure container {} (account {}): {e}",
                location.container, location.account
            ))
        })?;
        Ok(Self {
            store: Arc::new(store),
            prefix: location.prefix.trim_matches('/').to_string(),
            description: format!(
                "azure account {} container {} prefix {:?}",
                location.account, location.container, location.prefix
            ),
        })
    }

    /// Parses `--storage`: a directory path, `file:///path`, `s3://bucket/prefix`, or
    /// `azure://account/container/prefix` (`azure_endpoint` overrides the account's
    /// public blob endpoint).
    pub fn from_spec(
        spec: &str,
        endpoint: Option<&str>,
        region: &str,
        azure_endpoint: Option<&str>,
    ) -> Result<Self, BackupError> {
        if let Some(rest) = spec.strip_prefix("azure://") {
            let mut parts = rest.splitn(3, '/');
            let (account, container) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            if account.is_empty() || container.is_empty() {
                return Err(BackupError::Storage(format!(
                    "`{spec}` is not azure://<account>/<container>[/<prefix>]"
                )));
            }
            return Self::azure(&AzureLocation {
                account: account.into(),
                container: container.into(),
                prefix: parts.next().unwrap_or("").into(),
                endpoint: azure_endpoint.map(str::to_string),
                credentials: None,
            });
        }
        if let Some(rest) = spec.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(BackupError::Storage(format!("`{spec}` names no bucket")));
            }
            return Self::s3(&S3Location {
                bucket: bucket.into(),
                prefix: prefix.into(),
                endpoint: endpoint.map(str::to_string),
                region: region.into(),
                credentials: None,
            });
        }
        let path = spec.strip_prefix("file://").unwrap_or(spec);
        Self::directory(&PathBuf::from(path))
    }

    fn school_folder(&self, school_id: &str) -> String {
        if self.prefix.is_empty() {
            school_id.to_string()
        } else {
            format!("{}/{school_id}", self.prefix)
        }
    }

    /// The object name for a dump of `school_id` taken at `at`.
    pub fn object_name(&self, school_id: &str, at: DateTime<Utc>) -> String {
        format!(
            "{}/{school_id}_{}.dump",
            self.school_folder(school_id),
            at.format(TIME_FORMAT)
        )
    }

    /// Uploads a verified local dump under its final name, hashing the bytes sent. The
    /// object appears only once complete (multipart upload, or write-then-rename on a
    /// directory).
    pub async fn upload(&self, local: &Path, object: &str) -> Result<Transferred, BackupError> {
        let io =
            |e: std::io::Error| BackupError::Storage(format!("reading {}: {e}", local.display()));
        let mut file = tokio::fs::File::open(local).await.map_err(io)?;
        let mut upload = self.start_upload(object).await?;
        let mut buf = vec![0u8; 1024 * 1024];
        loop {
            let n = match file.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    upload.abort().await;
                    return Err(io(e));
                }
            };
            if let Err(e) = upload.write(&buf[..n]).await {
                upload.abort().await;
                return Err(e);
            }
        }
        upload.finish().await
    }

    /// Starts an upload of `object`, fed chunk by chunk ([`Upload::write`]). Nothing is
    /// visible under the name until [`Upload::finish`]; [`Upload::abort`] (or a crash)
    /// leaves no object behind.
    pub async fn start_upload(&self, object: &str) -> Result<Upload, BackupError> {
        let location = ObjectPath::parse(object)
            .map_err(|e| BackupError::Storage(format!("bad object name {object}: {e}")))?;
        let upload = self
            .store
            .put_multipart(&location)
            .await
            .map_err(|e| BackupError::Storage(format!("{self:?}: cannot start upload: {e}")))?;
        Ok(Upload {
            writer: WriteMultipart::new_with_chunk_size(upload, PART_SIZE),
            hasher: Sha256::new(),
            total: 0,
            store: self.description.clone(),
        })
    }

    /// Writes the checksum manifest of `object` (after the dump itself is stored).
    pub async fn write_checksum(&self, object: &str, sha256: &str) -> Result<(), BackupError> {
        self.put_bytes(
            &checksum_object(object),
            manifest_text(object, sha256).into_bytes(),
        )
        .await
    }

    /// The checksum recorded for `object`: `None` when it has no manifest; an error when
    /// the manifest cannot be read or is not one.
    pub async fn read_checksum(&self, object: &str) -> Result<Option<String>, BackupError> {
        let manifest = checksum_object(object);
        let location = ObjectPath::parse(&manifest)
            .map_err(|e| BackupError::Storage(format!("bad object name {manifest}: {e}")))?;
        let bytes = match self.store.get(&location).await {
            Ok(result) => result.bytes().await.map_err(|e| {
                BackupError::Storage(format!("{self:?}: cannot read {manifest}: {e}"))
            })?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => {
                return Err(BackupError::Storage(format!(
                    "{self:?}: cannot read {manifest}: {e}"
                )));
            }
        };
        let text = String::from_utf8_lossy(&bytes);
        parse_manifest(object, &text)
            .map(Some)
            .map_err(|why| BackupError::Corrupt(format!("checksum manifest {manifest}: {why}")))
    }

    /// SHA-256 and size of the stored `object`, streamed (nothing is written locally).
    pub async fn hash(&self, object: &str) -> Result<Transferred, BackupError> {
        self.fetch(object, None).await
    }

    /// Downloads `object` into the local file `dest`, hashing the bytes received.
    pub async fn download_checked(
        &self,
        object: &str,
        dest: &Path,
    ) -> Result<Transferred, BackupError> {
        self.fetch(object, Some(dest)).await
    }

    /// Downloads `object` into the local file `dest`.
    pub async fn download(&self, object: &str, dest: &Path) -> Result<u64, BackupError> {
        Ok(self.fetch(object, Some(dest)).await?.size)
    }

    /// The bytes of `object`, as a stream of chunks.
    pub async fn read_stream(
        &self,
        object: &str,
    ) -> Result<BoxStream<'static, Result<Bytes, BackupError>>, BackupError> {
        let location = ObjectPath::parse(object)
            .map_err(|e| BackupError::Storage(format!("bad object name {object}: {e}")))?;
        let result = self.store.get(&location).await.map_err(|e| match e {
            object_store::Error::NotFound { .. } => {
                BackupError::NotFound(format!("no backup {object} in {self:?}"))
            }
            other => BackupError::Storage(format!("{self:?}: cannot read {object}: {other}")),
        })?;
        let what = format!("{self:?}: reading {object}");
        Ok(result
            .into_stream()
            .map_err(move |e| BackupError::Storage(format!("{what}: {e}")))
            .boxed())
    }

    async fn fetch(&self, object: &str, dest: Option<&Path>) -> Result<Transferred, BackupError> {
        let mut stream = self.read_stream(object).await?;
        let io = |e: std::io::Error| {
            let dest = dest.map(|d| d.display().to_string()).unwrap_or_default();
            BackupError::Storage(format!("writing {dest}: {e}"))
        };
        let mut file = match dest {
            Some(dest) => Some(tokio::fs::File::create(dest).await.map_err(io)?),
            None => None,
        };
        let mut total = 0u64;
        let mut hasher = Sha256::new();
        while let Some(chunk) = stream.try_next().await? {
            if let Some(file) = file.as_mut() {
                file.write_all(&chunk).await.map_err(io)?;
            }
            hasher.update(&chunk);
            total += chunk.len() as u64;
        }
        if let Some(file) = file.as_mut() {
            file.flush().await.map_err(io)?;
        }
        Ok(Transferred {
            size: total,
            sha256: hex(hasher),
        })
    }

    /// Every dump of `school_id`, oldest first. Objects whose names are not dump names
    /// (someone else's files) are left out, and so never pruned.
    pub async fn list(&self, school_id: &str) -> Result<Vec<StoredDump>, BackupError> {
        let folder = ObjectPath::parse(self.school_folder(school_id))
            .map_err(|e| BackupError::Storage(format!("bad school id {school_id}: {e}")))?;
        let objects: Vec<_> = self
            .store
            .list(Some(&folder))
            .try_collect()
            .await
            .map_err(|e| BackupError::Storage(format!("{self:?}: cannot list backups: {e}")))?;
        let mut dumps: Vec<StoredDump> = objects
            .into_iter()
            .filter_map(|meta| {
                let name = meta.location.filename()?;
                let taken_at = parse_dump_name(name, school_id)?;
                Some(StoredDump {
                    object: meta.location.to_string(),
                    taken_at,
                    size: meta.size,
                })
            })
            .collect();
        dumps.sort_by_key(|d| d.taken_at);
        Ok(dumps)
    }

    /// Deletes one object; one that is already gone counts as deleted.
    pub async fn delete(&self, object: &str) -> Result<(), BackupError> {
        let location = ObjectPath::parse(object)
            .map_err(|e| BackupError::Storage(format!("bad object name {object}: {e}")))?;
        match self.store.delete(&location).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(BackupError::Storage(format!(
                "{self:?}: cannot delete {object}: {e}"
            ))),
        }
    }

    /// Deletes a dump and then its checksum manifest.
    pub async fn delete_dump(&self, object: &str) -> Result<(), BackupError> {
        self.delete(object).await?;
        self.delete(&checksum_object(object)).await
    }

    /// Checksum manifests of `school_id` whose dump is gone (a prune interrupted between
    /// the two deletes), with the time in their name.
    pub async fn orphan_checksums(&self, school_id: &str) -> Result<Vec<StoredDump>, BackupError> {
        let folder = ObjectPath::parse(self.school_folder(school_id))
            .map_err(|e| BackupError::Storage(format!("bad school id {school_id}: {e}")))?;
        let objects: Vec<_> = self
            .store
            .list(Some(&folder))
            .try_collect()
            .await
            .map_err(|e| BackupError::Storage(format!("{self:?}: cannot list backups: {e}")))?;
        let names: std::collections::HashSet<String> =
            objects.iter().map(|m| m.location.to_string()).collect();
        Ok(objects
            .iter()
            .filter_map(|meta| {
                let name = meta.location.to_string();
                let dump = name.strip_suffix(CHECKSUM_SUFFIX)?;
                let taken_at = parse_dump_name(dump.rsplit('/').next()?, school_id)?;
                (!names.contains(dump)).then(|| StoredDump {
                    object: name.clone(),
                    taken_at,
                    size: meta.size,
                })
            })
            .collect())
    }

    /// Writes arbitrary bytes (tests use it to plant corrupt dumps and foreign files).
    pub async fn put_bytes(&self, object: &str, bytes: Vec<u8>) -> Result<(), BackupError> {
        let location = ObjectPath::parse(object)
            .map_err(|e| BackupError::Storage(format!("bad object name {object}: {e}")))?;
        self.store
            .put(&location, bytes.into())
            .await
            .map(|_| ())
            .map_err(|e| BackupError::Storage(format!("{self:?}: cannot write {object}: {e}")))
    }
}

/// `<school-id>_<time>.dump` → the time; anything else → `None`.
fn parse_dump_name(name: &str, school_id: &str) -> Option<DateTime<Utc>> {
    let time = name
        .strip_prefix(school_id)?
        .strip_prefix('_')?
        .strip_suffix(".dump")?;
    NaiveDateTime::parse_from_str(time, TIME_FORMAT)
        .ok()
        .map(|t| t.and_utc())
}

/// Which dumps retention removes at `now`: those older than `retention_days`, but never
/// the newest one, however old — a school whose backups have been failing for a month
/// still has its last good dump. `dumps` must be sorted oldest first.
pub fn expired(dumps: &[StoredDump], retention_days: u32, now: DateTime<Utc>) -> Vec<StoredDump> {
    let cutoff = now - chrono::Duration::days(i64::from(retention_days));
    let Some((_newest, older)) = dumps.split_last() else {
        return Vec::new();
    };
    older
        .iter()
        .filter(|d| d.taken_at < cutoff)
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn dump(days_ago: i64, now: DateTime<Utc>) -> StoredDump {
        StoredDump {
            object: format!("s/{days_ago}"),
            taken_at: now - chrono::Duration::days(days_ago),
            size: 1,
        }
    }

    #[test]
    fn names_sort_by_time_and_parse_back() {
        let store = BackupStore::directory(tempfile::tempdir().unwrap().path()).unwrap();
        let id = "0b8f3a5e-0000-4000-8000-000000000001";
        let t1 = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
        let t2 = t1 + chrono::Duration::milliseconds(1);
        let (a, b) = (store.object_name(id, t1), store.object_name(id, t2));
        assert!(a < b, "{a} must sort before {b}");
        assert!(a.contains(id));
        let file = a.rsplit('/').next().unwrap();
        assert_eq!(parse_dump_name(file, id), Some(t1));
        assert_eq!(parse_dump_name("notes.txt", id), None);
        assert_eq!(parse_dump_name(&file.replace(".dump", ".tmp"), id), None);
    }

    #[test]
    fn manifests_are_sha256sum_lines_of_their_own_dump() {
        let sum = "0123456789abcdef".repeat(4);
        let object = "p/id/id_20260101T000000.000Z.dump";
        let text = manifest_text(object, &sum);
        assert_eq!(text, format!("{sum}  id_20260101T000000.000Z.dump\n"));
        assert_eq!(parse_manifest(object, &text), Ok(sum.clone()));
        // `sha256sum -b` writes `*name`; upper-case hex is the same checksum.
        let binary = format!("{}  *id_20260101T000000.000Z.dump\n", sum.to_uppercase());
        assert_eq!(parse_manifest(object, &binary), Ok(sum.clone()));
        assert!(
            parse_manifest("p/id/other.dump", &text).is_err(),
            "another dump's manifest"
        );
        assert!(parse_manifest(object, "").is_err());
        assert!(parse_manifest(object, &text.replacen('0', "g", 1)).is_err());
        assert!(parse_manifest(object, &text[1..]).is_err(), "63 digits");
        assert_eq!(checksum_object(object), format!("{object}.sha256"));
    }

    #[tokio::test]
    async fn uploads_and_downloads_hash_the_bytes_and_manifests_are_not_dumps() {
        let root = tempfile::tempdir().unwrap();
        let store = BackupStore::directory(root.path()).unwrap();
        let id = "0b8f3a5e-0000-4000-8000-000000000002";
        let object = store.object_name(id, Utc::now());
        let local = root.path().join("local");
        std::fs::write(&local, b"abc").unwrap();
        let up = store.upload(&local, &object).await.unwrap();
        // SHA-256("abc") from FIPS 180-2.
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!((up.size, up.sha256.as_str()), (3, abc));
        assert_eq!(store.read_checksum(&object).await.unwrap(), None);
        store.write_checksum(&object, &up.sha256).await.unwrap();
        assert_eq!(
            store.read_checksum(&object).await.unwrap().as_deref(),
            Some(abc)
        );
        assert_eq!(store.hash(&object).await.unwrap(), up);
        let back = root.path().join("back");
        assert_eq!(store.download_checked(&object, &back).await.unwrap(), up);
        let listed = store.list(id).await.unwrap();
        assert_eq!(
            listed.len(),
            1,
            "the manifest is not listed as a dump: {listed:?}"
        );
        assert!(store.orphan_checksums(id).await.unwrap().is_empty());
        store.delete(&object).await.unwrap();
        let orphans = store.orphan_checksums(id).await.unwrap();
        assert_eq!(orphans.len(), 1);
        assert_eq!(orphans[0].object, checksum_object(&object));
        store.delete_dump(&object).await.unwrap();
        assert!(store.orphan_checksums(id).await.unwrap().is_empty());
    }

    #[test]
    fn retention_prunes_old_dumps_but_keeps_the_newest() {
        let now = Utc::now();
        let dumps = vec![dump(40, now), dump(9, now), dump(6, now), dump(1, now)];
        let gone: Vec<_> = expired(&dumps, 7, now)
            .into_iter()
            .map(|d| d.object)
            .collect();
        assert_eq!(gone, vec!["s/40", "s/9"]);

        let all_old = vec![dump(50, now), dump(40, now)];
        let gone: Vec<_> = expired(&all_old, 7, now)
            .into_iter()
            .map(|d| d.object)
            .collect();
        assert_eq!(
            gone,
            vec!["s/50"],
            "the newest dump survives even past retention"
        );
        assert!(expired(&[dump(90, now)], 7, now).is_empty());
        assert!(expired(&[], 7, now).is_empty());
    }
}
