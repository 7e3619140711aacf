//! The on-demand operations on a School: `SchoolBackup` (one backup now) and
//! `SchoolRestore` (a stored dump over the school's database). Re-exported at the crate
//! root.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// Runs one backup of a School now (like CloudNativePG's `Backup`). The operator starts a
/// Job from the same template as the scheduled backups and reports the outcome here.
/// A SchoolBackup runs at most once; create a new one for another backup.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "edumind.ai",
    version = "v1alpha1",
    kind = "SchoolBackup",
    plural = "schoolbackups",
    singular = "schoolbackup",
    shortname = "schbk",
    namespaced,
    derive = "Default",
    derive = "PartialEq",
    status = "SchoolBackupStatus",
    printcolumn = r#"{"name":"School","type":"string","jsonPath":".spec.school"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Object","type":"string","jsonPath":".status.object","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(cel, validation = Rule::new("self == oldSelf").message("the spec of a SchoolBackup is immutable"))]
pub struct SchoolBackupSpec {
    /// Name of the School, in the same namespace, to back up.
    #[schemars(length(min = 1, max = 253))]
    pub school: String,
}

/// Observed state of a SchoolBackup.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SchoolBackupStatus {
    /// `Pending`, `Running`, `Succeeded` or `Failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Machine-readable reason of the current phase (e.g. `SchoolNotFound`, `DumpFailed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Human-readable detail of the current phase; the error when `Failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The backup Job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// When the Job was started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<Time>,
    /// When the backup finished (successfully or not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed: Option<Time>,
    /// Object name of the stored dump.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    /// Size of the stored dump in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<i64>,
    /// SHA-256 of the stored dump (lower-case hex), as recorded in its checksum manifest
    /// `<object>.sha256`; restores refuse a dump that no longer matches it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// Restores a stored backup over a School's database. Restores only ever happen through
/// this resource. While it runs, the school's role cannot log in (open sessions are ended);
/// afterwards logins return as `spec.active` says, whether the restore succeeded or not.
/// A failed restore leaves the database unchanged (single transaction).
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "edumind.ai",
    version = "v1alpha1",
    kind = "SchoolRestore",
    plural = "schoolrestores",
    singular = "schoolrestore",
    shortname = "schrs",
    namespaced,
    derive = "Default",
    derive = "PartialEq",
    status = "SchoolRestoreStatus",
    printcolumn = r#"{"name":"School","type":"string","jsonPath":".spec.school"}"#,
    printcolumn = r#"{"name":"Backup","type":"string","jsonPath":".spec.backup"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(cel, validation = Rule::new("self == oldSelf").message("the spec of a SchoolRestore is immutable"))]
pub struct SchoolRestoreSpec {
    /// Name of the School, in the same namespace, whose database is restored.
    #[schemars(length(min = 1, max = 253))]
    pub school: String,
    /// Object name of the backup to restore (as shown in `status.backup.lastSuccess.object`
    /// of the School or `status.object` of a SchoolBackup), or `latest` for the newest
    /// stored backup of the school. Default: `latest`.
    #[serde(default = "default_latest")]
    #[schemars(length(min = 1, max = 1024))]
    pub backup: String,
}

fn default_latest() -> String {
    "latest".into()
}

/// Observed state of a SchoolRestore.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SchoolRestoreStatus {
    /// `Pending`, `BlockingLogins`, `Restoring`, `Succeeded` or `Failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Machine-readable reason of the current phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Human-readable detail; the error when `Failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The restore Job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// When logins were blocked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<Time>,
    /// When the restore finished and logins were given back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed: Option<Time>,
    /// Object name that was restored (resolved when `spec.backup` is `latest`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    /// Size of the restored dump in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<i64>,
}

/// Phases a SchoolBackup/SchoolRestore ends in.
pub const TERMINAL_PHASES: [&str; 2] = ["Succeeded", "Failed"];

impl SchoolRestore {
    /// Whether this restore still holds (or may still take) the school's logins: not
    /// finished and not being deleted.
    pub fn is_active(&self) -> bool {
        self.metadata.deletion_timestamp.is_none()
            && !self
                .status
                .as_ref()
                .and_then(|s| s.phase.as_deref())
                .is_some_and(|p| TERMINAL_PHASES.contains(&p))
    }
}
