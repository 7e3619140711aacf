//! Logical backups of one school database: dump, verify, store, prune; and restore.
//!
//! This is the runner behind `edumind-operator backup` / `restore`, which the per-school
//! CronJob runs in the operator's own image (so `pg_dump` is the image's, no older than
//! the server) and which platform teams can run by hand outside Kubernetes.
//!
//! A backup is counted as a success only once the dump has been verified end to end and
//! stored under its final name with its SHA-256 manifest next to it; retention then prunes
//! old dumps of that school (with their manifests), never the newest one.
//!
//! A restore first checks the downloaded dump against its manifest and refuses a dump
//! whose checksum differs or is missing, unless told to restore unverified dumps
//! ([`RestoreOptions::allow_unverified`]); only then does `pg_restore` read it.

pub mod connection;
pub mod pgtools;
pub mod storage;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

pub use connection::ConnectionInfo;
pub use pgtools::PgTools;
pub use storage::{
    AzureCredentials, AzureLocation, BackupStore, S3Credentials, S3Location, StoredDump,
};

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("connection Secret unusable: {0}")]
    Connection(String),
    #[error("{0}")]
    Tools(String),
    #[error("{0}")]
    Failed(String),
    #[error("dump failed verification: {0}")]
    Corrupt(String),
    #[error("backup storage: {0}")]
    Storage(String),
    #[error("{0}")]
    NotFound(String),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("dump not verifiable: {0}")]
    Unverified(String),
}

impl BackupError {
    /// A short machine-readable reason, for status conditions and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            BackupError::Connection(_) => "SecretInvalid",
            BackupError::Tools(_) => "ToolsMissing",
            BackupError::Failed(_) => "DumpFailed",
            BackupError::Corrupt(_) => "DumpCorrupt",
            BackupError::Storage(_) => "StorageFailed",
            BackupError::NotFound(_) => "BackupNotFound",
            BackupError::Invalid(_) => "InvalidRequest",
            BackupError::Unverified(_) => "ChecksumMissing",
        }
    }
}

/// Retention bounds of the storage spec: 7 days (dev) to 35 days (production).
pub const RETENTION_DAYS: std::ops::RangeInclusive<u32> = 7..=35;

/// What one backup run did.
#[derive(Debug, Clone)]
pub struct BackupReport {
    pub school_id: String,
    pub object: String,
    pub size: u64,
    /// SHA-256 of the stored dump, as written to its manifest.
    pub sha256: String,
    pub taken_at: DateTime<Utc>,
    pub tables: usize,
    pub duration: Duration,
    /// Objects retention removed after this backup.
    pub pruned: Vec<String>,
}

/// What one restore did.
#[derive(Debug, Clone)]
pub struct RestoreReport {
    pub object: String,
    pub size: u64,
    /// SHA-256 of the dump that was restored.
    pub sha256: String,
    /// Whether that matched its manifest (`false` only with `allow_unverified`).
    pub verified: bool,
    pub duration: Duration,
}

/// Settings of one restore beyond what and where.
#[derive(Debug, Clone, Copy, Default)]
pub struct RestoreOptions<'a> {
    /// Local scratch space for the downloaded dump.
    pub work_dir: Option<&'a Path>,
    /// `pg_restore --role=<role>` (see [`PgTools::restore_as`]).
    pub role: Option<&'a str>,
    /// Restore even when the dump's checksum manifest is missing or does not match
    /// (`--allow-unverified`). `pg_restore`'s own verification still runs.
    pub allow_unverified: bool,
}

/// How a stored dump compares with its checksum manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checksum {
    /// The manifest records exactly this checksum.
    Verified(String),
    /// There is no manifest.
    Missing { actual: String },
    /// The manifest records another checksum, or is unreadable as one.
    Mismatch { actual: String, why: String },
}

impl Checksum {
    /// The checksum of the bytes themselves.
    pub fn actual(&self) -> &str {
        match self {
            Checksum::Verified(a) | Checksum::Missing { actual: a } => a,
            Checksum::Mismatch { actual, .. } => actual,
        }
    }

    /// `ok`, or what is wrong, for listings.
    pub fn summary(&self) -> String {
        match self {
            Checksum::Verified(_) => "verified".into(),
            Checksum::Missing { .. } => "UNVERIFIED (no checksum manifest)".into(),
            Checksum::Mismatch { why, .. } => format!("CORRUPT ({why})"),
        }
    }

    /// `Ok` for a verified dump; otherwise the error that refuses it.
    pub fn require(&self, object: &str) -> Result<(), BackupError> {
        let force = "pass --allow-unverified to restore it anyway";
        match self {
            Checksum::Verified(_) => Ok(()),
            Checksum::Missing { actual } => Err(BackupError::Unverified(format!(
                "{object} has no checksum manifest ({}), so it cannot be shown to be the \
                 dump that was stored (its sha256 is {actual}); refusing it — {force}",
                storage::checksum_object(object)
            ))),
            Checksum::Mismatch { why, .. } => Err(BackupError::Corrupt(format!(
                "{object} does not match its checksum manifest: {why}; the dump was altered \
                 or damaged after it was stored; refusing it — {force}"
            ))),
        }
    }
}

/// Compares the checksum of `object`'s bytes (`actual`) with its manifest.
pub async fn check_checksum(
    store: &BackupStore,
    object: &str,
    actual: &str,
) -> Result<Checksum, BackupError> {
    let actual = actual.to_string();
    Ok(match store.read_checksum(object).await {
        Ok(Some(expected)) if expected == actual => Checksum::Verified(actual),
        Ok(Some(expected)) => Checksum::Mismatch {
            why: format!("its sha256 is {actual}, the manifest records {expected}"),
            actual,
        },
        Ok(None) => Checksum::Missing { actual },
        Err(BackupError::Corrupt(why)) => Checksum::Mismatch { actual, why },
        Err(other) => return Err(other),
    })
}

/// Reads the stored `object` end to end and checks it against its manifest (what
/// `list-backups` shows).
pub async fn check_stored(store: &BackupStore, object: &str) -> Result<Checksum, BackupError> {
    let read = store.hash(object).await?;
    check_checksum(store, object, &read.sha256).await
}

/// Settings of one backup run.
#[derive(Debug, Clone)]
pub struct BackupJob {
    pub school_id: String,
    pub retention_days: u32,
    /// Local scratch space for the dump before upload (an emptyDir in the cluster).
    pub work_dir: Option<PathBuf>,
}

impl BackupJob {
    pub fn validate(&self) -> Result<(), BackupError> {
        if !RETENTION_DAYS.contains(&self.retention_days) {
            return Err(BackupError::Invalid(format!(
                "retention must be {} to {} days, not {}",
                RETENTION_DAYS.start(),
                RETENTION_DAYS.end(),
                self.retention_days
            )));
        }
        let id = &self.school_id;
        let safe = !id.is_empty() && id.len() <= 64;
        if !safe || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(BackupError::Invalid(format!(
                "school id `{id}` is not a UUID"
            )));
        }
        Ok(())
    }
}

fn scratch_dir(work_dir: Option<&Path>) -> Result<tempfile::TempDir, BackupError> {
    let builder = tempfile::Builder::new()
        .prefix("edumind-backup-")
        .to_owned();
    match work_dir {
        Some(dir) => builder.tempdir_in(dir),
        None => builder.tempdir(),
    }
    .map_err(|e| BackupError::Storage(format!("cannot create scratch directory: {e}")))
}

/// Chunks handed from the dump (or download) to the verifier: at most this many wait.
const VERIFY_QUEUE: usize = 16;
/// Bytes gathered from `pg_dump`'s pipe before they are passed on.
const CHUNK: usize = 1024 * 1024;

/// `pg_dump`'s output, read once and sent at the same time to the verifying full read
/// (`pg_restore`) and to the store, so the run takes about as long as `pg_dump` alone.
/// The upload is completed (the object appears under its name) only after `pg_dump`
/// exited successfully and the full read reached the end of the archive; otherwise it is
/// aborted and nothing is stored.
async fn dump_verify_upload(
    tools: &PgTools,
    conn: &ConnectionInfo,
    store: &BackupStore,
    object: &str,
    scratch: &Path,
) -> Result<(storage::Transferred, usize), BackupError> {
    use tokio::io::AsyncReadExt;
    let verifier = tools.spawn_verifier()?;
    let mut dump = tools.spawn_dump(conn, Some(scratch))?;
    let mut output = dump
        .output()
        .ok_or_else(|| BackupError::Tools("pg_dump has no output pipe".into()))?;
    let mut upload = store.start_upload(object).await?;
    let (to_verifier, chunks) = tokio::sync::mpsc::channel::<bytes::Bytes>(VERIFY_QUEUE);
    let pump = async {
        let mut buf = bytes::BytesMut::with_capacity(CHUNK);
        loop {
            let n = output
                .read_buf(&mut buf)
                .await
                .map_err(|e| BackupError::Failed(format!("reading pg_dump's output: {e}")))?;
            if buf.len() >= CHUNK || (n == 0 && !buf.is_empty()) {
                let chunk = buf.split().freeze();
                upload.write(&chunk).await?;
                // A verifier that has stopped still drains its queue: never blocks.
                let _ = to_verifier.send(chunk).await;
                buf.reserve(CHUNK);
            }
            if n == 0 {
                break;
            }
        }
        drop(to_verifier);
        Ok::<(), BackupError>(())
    };
    let (pumped, verified) = tokio::join!(pump, verifier.run(chunks));
    drop(output);
    let dumped = dump.finish().await;
    // pg_dump's own failure is the cause of whatever the verifier then saw.
    let outcome = pumped.and(dumped).and(verified);
    match outcome {
        Ok(tables) => Ok((upload.finish().await?, tables)),
        Err(e) => {
            upload.abort().await;
            Err(e)
        }
    }
}

/// Dumps the school database, verifies the dump while storing it (see
/// [`dump_verify_upload`]), then applies retention.
/// `now` names the dump and drives retention (tests pass a controlled clock).
pub async fn run_backup(
    tools: &PgTools,
    conn: &ConnectionInfo,
    store: &BackupStore,
    job: &BackupJob,
    now: DateTime<Utc>,
) -> Result<BackupReport, BackupError> {
    job.validate()?;
    let started = Instant::now();
    let scratch = scratch_dir(job.work_dir.as_deref())?;
    let object = store.object_name(&job.school_id, now);
    let (stored, tables) = dump_verify_upload(tools, conn, store, &object, scratch.path()).await?;
    drop(scratch);
    // After the dump: a manifest exists only for a complete dump. A crash in between
    // leaves a dump without one, which restores refuse like any unverifiable dump.
    store.write_checksum(&object, &stored.sha256).await?;
    let size = stored.size;
    tracing::info!(school_id = %job.school_id, %object, size, sha256 = %stored.sha256, tables, "backup stored");

    let pruned = prune(store, &job.school_id, job.retention_days, now).await?;
    Ok(BackupReport {
        school_id: job.school_id.clone(),
        object,
        size,
        sha256: stored.sha256,
        taken_at: now,
        tables,
        duration: started.elapsed(),
        pruned,
    })
}

/// Deletes the school's dumps that retention no longer keeps (never the newest), each
/// with its checksum manifest, and manifests left behind by an interrupted prune.
pub async fn prune(
    store: &BackupStore,
    school_id: &str,
    retention_days: u32,
    now: DateTime<Utc>,
) -> Result<Vec<String>, BackupError> {
    let dumps = store.list(school_id).await?;
    let mut pruned = Vec::new();
    for dump in storage::expired(&dumps, retention_days, now) {
        store.delete_dump(&dump.object).await?;
        tracing::info!(school_id, object = %dump.object, "pruned by retention");
        pruned.push(dump.object);
    }
    let cutoff = now - chrono::Duration::days(i64::from(retention_days));
    for orphan in store.orphan_checksums(school_id).await? {
        if orphan.taken_at < cutoff {
            store.delete(&orphan.object).await?;
        }
    }
    Ok(pruned)
}

/// Fetches `object`, verifies it, and restores it over the school database as the
/// school's own role, in a single transaction.
pub async fn run_restore(
    tools: &PgTools,
    conn: &ConnectionInfo,
    store: &BackupStore,
    object: &str,
    work_dir: Option<&Path>,
) -> Result<RestoreReport, BackupError> {
    run_restore_as(tools, conn, store, object, work_dir, None).await
}

/// [`run_restore`] with `pg_restore --role=<role>` (see [`PgTools::restore_as`]).
pub async fn run_restore_as(
    tools: &PgTools,
    conn: &ConnectionInfo,
    store: &BackupStore,
    object: &str,
    work_dir: Option<&Path>,
    role: Option<&str>,
) -> Result<RestoreReport, BackupError> {
    let options = RestoreOptions {
        work_dir,
        role,
        allow_unverified: false,
    };
    run_restore_with(tools, conn, store, object, options).await
}

/// Fetches `object`, checks it against its checksum manifest, verifies it with
/// `pg_restore` (a full read fed while the download runs), and restores it in a single
/// transaction. Nothing touches the database before both checks pass.
pub async fn run_restore_with(
    tools: &PgTools,
    conn: &ConnectionInfo,
    store: &BackupStore,
    object: &str,
    options: RestoreOptions<'_>,
) -> Result<RestoreReport, BackupError> {
    let started = Instant::now();
    let scratch = scratch_dir(options.work_dir)?;
    let local = scratch.path().join("dump");
    let (fetched, full_read) = download_verifying(tools, store, object, &local).await?;
    let checksum = check_checksum(store, object, &fetched.sha256).await?;
    let verified = matches!(checksum, Checksum::Verified(_));
    if let Err(refused) = checksum.require(object) {
        if !options.allow_unverified {
            return Err(refused);
        }
        tracing::warn!(%object, error = %refused, "restoring an unverified dump (--allow-unverified)");
    }
    full_read?;
    tools.restore_as(conn, &local, options.role).await?;
    let size = fetched.size;
    tracing::info!(%object, size, sha256 = %fetched.sha256, verified, "restore finished");
    Ok(RestoreReport {
        object: object.to_string(),
        size,
        sha256: fetched.sha256,
        verified,
        duration: started.elapsed(),
    })
}

/// Downloads `object` into `dest`, hashing it and feeding the verifying full read
/// (`pg_restore`) at the same time. Returns what was transferred and the verifier's
/// verdict, which the caller weighs after the checksum (a checksum refusal says more).
async fn download_verifying(
    tools: &PgTools,
    store: &BackupStore,
    object: &str,
    dest: &Path,
) -> Result<(storage::Transferred, Result<usize, BackupError>), BackupError> {
    use futures::TryStreamExt;
    use sha2::Digest;
    use tokio::io::AsyncWriteExt;
    let mut stream = store.read_stream(object).await?;
    let verifier = tools.spawn_verifier()?;
    let io = |e: std::io::Error| BackupError::Storage(format!("writing {}: {e}", dest.display()));
    let mut file = tokio::fs::File::create(dest).await.map_err(io)?;
    let (to_verifier, chunks) = tokio::sync::mpsc::channel::<bytes::Bytes>(VERIFY_QUEUE);
    let pump = async {
        let mut hasher = sha2::Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = stream.try_next().await? {
            hasher.update(&chunk);
            size += chunk.len() as u64;
            let _ = to_verifier.send(chunk.clone()).await;
            file.write_all(&chunk).await.map_err(io)?;
        }
        drop(to_verifier);
        file.flush().await.map_err(io)?;
        Ok::<_, BackupError>(storage::Transferred::new(size, hasher))
    };
    let (fetched, verdict) = tokio::join!(pump, verifier.run(chunks));
    Ok((fetched?, verdict))
}

/// `latest` → the newest stored dump of `school_id`; anything else is an object name.
pub async fn resolve_object(
    store: &BackupStore,
    school_id: &str,
    requested: &str,
) -> Result<String, BackupError> {
    if requested != LATEST {
        return Ok(requested.to_string());
    }
    store
        .list(school_id)
        .await?
        .pop()
        .map(|d| d.object)
        .ok_or_else(|| BackupError::NotFound(format!("no stored backup of school {school_id}")))
}

/// The object name that means "the newest backup".
pub const LATEST: &str = "latest";

/// What a runner reports back to the operator, as JSON in the container's termination
/// message (`/dev/termination-log`). Backup pods need no Kubernetes API rights: the
/// operator reads this from the finished Pod. Never contains secrets.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunResult {
    /// `backup` or `restore`.
    pub operation: String,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// SHA-256 of the dump stored (backup) or restored (restore), lower-case hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Kubernetes keeps at most 4096 bytes of a termination message.
pub const MAX_RESULT_BYTES: usize = 4096;

impl RunResult {
    pub fn success(operation: &str, object: &str, size: u64) -> Self {
        Self {
            operation: operation.into(),
            ok: true,
            object: Some(object.into()),
            size: Some(size),
            sha256: None,
            reason: None,
            message: None,
        }
    }

    /// The same result carrying the dump's checksum.
    pub fn with_sha256(mut self, sha256: &str) -> Self {
        self.sha256 = Some(sha256.into());
        self
    }

    pub fn failure(operation: &str, error: &BackupError) -> Self {
        Self {
            operation: operation.into(),
            ok: false,
            object: None,
            size: None,
            sha256: None,
            reason: Some(error.reason().into()),
            message: Some(error.to_string()),
        }
    }

    /// The JSON form, with the message shortened so the whole fits a termination message.
    pub fn to_json(&self) -> String {
        let mut result = self.clone();
        loop {
            let text = serde_json::to_string(&result).unwrap_or_default();
            if text.len() <= MAX_RESULT_BYTES {
                return text;
            }
            let Some(message) = result.message.as_mut() else {
                return text;
            };
            let mut cut = message
                .len()
                .saturating_sub(text.len() - MAX_RESULT_BYTES + 8);
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_round_trip_and_fit_a_termination_message() {
        let ok = RunResult::success("backup", "a/b.dump", 42).with_sha256(&"ab".repeat(32));
        let back: RunResult = serde_json::from_str(&ok.to_json()).unwrap();
        assert_eq!(back, ok);
        let long = BackupError::Failed("é".repeat(5000));
        let json = RunResult::failure("backup", &long).to_json();
        assert!(json.len() <= MAX_RESULT_BYTES, "{}", json.len());
        let back: RunResult = serde_json::from_str(&json).unwrap();
        assert_eq!(back.reason.as_deref(), Some("DumpFailed"));
    }
}
