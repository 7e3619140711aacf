//! The Kubernetes side of backups, as pure functions: the per-School CronJob, the Jobs of
//! on-demand, final and restore runs (all from one pod template), and reading outcomes
//! back from finished Jobs and their Pods' termination messages.
//!
//! Nothing here does I/O; the reconcilers apply what these functions build with
//! server-side apply and the operator's one field manager.
//!
//! This file: names, labels and settings; `builders`: the pod template, CronJob and
//! Jobs; `outcomes`: results read back and folded into status (all re-exported here).

use std::collections::BTreeMap;

use edumind_crds::BackupStorage;
use edumind_crds::connection::{LABEL_MANAGED_BY, LABEL_SCHOOL_ID, MANAGED_BY};

mod builders;
mod outcomes;

pub use builders::*;
pub use outcomes::*;

/// Label saying what a Job is for: `scheduled`, `on-demand`, `final` or `restore`.
pub const LABEL_KIND: &str = "edumind.ai/backup-kind";

/// Annotation on backup Jobs naming their School (names may exceed label limits).
pub const ANNOTATION_SCHOOL: &str = "edumind.ai/school";

/// Label Kubernetes puts on a Job's Pods.
pub const LABEL_JOB_NAME: &str = "batch.kubernetes.io/job-name";

pub(crate) const LABEL_JOB_NAME_LEGACY: &str = "job-name";

/// Name of the runner container.
pub const CONTAINER: &str = "runner";

/// Where the connection Secret is mounted in the runner.
pub const SECRET_DIR: &str = "/etc/edumind/connection";

/// Where a PersistentVolumeClaim is mounted in the runner.
pub const BACKUP_DIR: &str = "/backups";

pub(crate) const WORK_DIR: &str = "/work";

/// UID/GID the runner runs as (non-root; the distroless `nonroot` user).
pub const RUN_AS: i64 = 65532;

/// Operator-level backup settings (`run` flags).
#[derive(Debug, Clone, PartialEq)]
pub struct BackupConfig {
    /// Image of the runner: the operator's own image.
    pub image: String,
    /// Storage of Schools whose `spec.backup.storage` is absent (resolved in the School's
    /// namespace). `None`: such Schools get no CronJob and `BackupHealthy=False`.
    pub default_storage: Option<BackupStorage>,
    /// Scheduled Jobs kept after they finished.
    pub successful_jobs_history_limit: i32,
    pub failed_jobs_history_limit: i32,
    /// Pod retries of one Job.
    pub backoff_limit: i32,
    /// A run taking longer than this is killed and counted as failed.
    pub active_deadline_seconds: i64,
    /// Back a School up before moving it to a newer schema version (see `premigration`).
    pub before_migration: bool,
}

/// Default runner image: the operator image of this version.
pub fn default_image() -> String {
    format!(
        "ghcr.io/edumind-ai/edumind-operator:{}",
        env!("CARGO_PKG_VERSION")
    )
}

impl Default for BackupConfig {
    fn default() -> Self {
        Self {
            image: default_image(),
            default_storage: None,
            successful_jobs_history_limit: 3,
            failed_jobs_history_limit: 3,
            backoff_limit: 1,
            active_deadline_seconds: 6 * 3600,
            before_migration: true,
        }
    }
}

/// What a Job runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Run {
    /// A backup with retention (scheduled, on-demand, final).
    Backup {
        kind: &'static str,
        retention_days: u32,
    },
    /// A restore of `object` (or `latest`), switching to `role` after connecting.
    Restore { object: String, role: String },
}

/// Inputs of a runner pod.
#[derive(Debug, Clone, PartialEq)]
pub struct RunnerInputs {
    /// Name of the School (recorded as an annotation so watches can map Jobs back).
    pub school_name: String,
    pub school_id: String,
    /// The Secret with the connection keys (`host`, `port`, `dbname`, `username`,
    /// `password`), mounted as a volume.
    pub secret_name: String,
    pub storage: BackupStorage,
    pub run: Run,
}

/// Why storage cannot be used.
pub fn check_storage(storage: &BackupStorage) -> Result<(), String> {
    let set = [
        storage.persistent_volume_claim.is_some(),
        storage.s3.is_some(),
        storage.azure.is_some(),
    ];
    if set.iter().filter(|s| **s).count() != 1 {
        return Err(
            "spec.backup.storage: set exactly one of persistentVolumeClaim, s3 or azure".into(),
        );
    }
    if let Some(creds) = storage.azure.as_ref().and_then(|a| a.credentials.as_ref())
        && creds.account_key_key.is_some()
        && creds.sas_token_key.is_some()
    {
        return Err(
            "spec.backup.storage.azure.credentials: set at most one of accountKeyKey or sasTokenKey"
                .into(),
        );
    }
    Ok(())
}

/// The School's storage, else the operator default.
pub fn resolve_storage(
    spec: Option<&BackupStorage>,
    config: &BackupConfig,
) -> Option<BackupStorage> {
    spec.or(config.default_storage.as_ref()).cloned()
}

/// A name of at most `max` bytes made of `base` and `suffix`; a long base is cut and
/// made unique again with a short digest.
pub fn child_name(base: &str, suffix: &str, max: usize) -> String {
    if base.len() + suffix.len() <= max {
        return format!("{base}{suffix}");
    }
    let digest = uuid::Uuid::new_v5(&crate::naming::school_id_namespace(), base.as_bytes())
        .simple()
        .to_string();
    let keep = max.saturating_sub(suffix.len() + 9);
    let prefix = base[..keep.min(base.len())].trim_end_matches(['-', '.']);
    format!("{prefix}-{}{suffix}", &digest[..8])
}

/// CronJob names are at most 52 characters (the controller appends 11 for its Jobs).
pub fn cron_job_name(school: &str) -> String {
    child_name(school, "-backup", 52)
}

/// The final backup Job of a School being deleted with `reclaimPolicy: snapshot`.
pub fn final_job_name(school: &str) -> String {
    child_name(school, "-final-backup", 63)
}

/// Labels of everything the backup machinery creates for a school.
pub fn labels(school_id: &str, kind: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
        (LABEL_SCHOOL_ID.to_string(), school_id.to_string()),
        (LABEL_KIND.to_string(), kind.to_string()),
    ])
}

#[cfg(test)]
mod tests;
