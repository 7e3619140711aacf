//! Kubernetes API types of the EduMind operator: the `School` custom resource
//! (`schools.edumind.ai/v1alpha1`). The doc comments on the fields are what
//! `kubectl explain school.spec` prints, so they are written for platform teams.
//!
//! Validation lives in two places on purpose: the OpenAPI schema and CEL rules below are
//! enforced by the API server (and evaluated client-side in this crate's tests), and the
//! operator validates again before touching a database, so a manifest that slips past an
//! old CRD still ends as a readable status condition.
//!
//! Size: the School resource's types stay together in this file (about 550 lines, the
//! rest is tests); the operations (SchoolBackup, SchoolRestore) live in `operations`.

pub mod connection;
mod operations;
pub mod rbac;
pub mod status;

pub use operations::*;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use serde::{Deserialize, Serialize};

/// API group of every EduMind custom resource.
pub const GROUP: &str = "edumind.ai";
/// The served and stored API version.
pub const VERSION: &str = "v1alpha1";

/// Longest school code the storage spec allows (`schools.code VARCHAR(50)`).
pub const MAX_CODE_CHARS: usize = 50;
/// Shortest and longest backup retention, in days (storage spec section 6).
pub const RETENTION_DAYS: std::ops::RangeInclusive<u32> = 7..=35;

/// A school with its own, physically isolated PostgreSQL database.
///
/// The operator creates a login role and a database for the school on a target server,
/// applies the schema migrations and publishes the connection details in a Secret.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "edumind.ai",
    version = "v1alpha1",
    kind = "School",
    plural = "schools",
    singular = "school",
    shortname = "sch",
    namespaced,
    derive = "Default",
    derive = "PartialEq",
    status = "SchoolStatus",
    cel,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Code","type":"string","jsonPath":".spec.code"}"#,
    printcolumn = r#"{"name":"Database","type":"string","jsonPath":".status.database"}"#,
    printcolumn = r#"{"name":"Schema version","type":"integer","jsonPath":".status.schemaVersion"}"#,
    printcolumn = r#"{"name":"Last backup","type":"date","jsonPath":".status.lastBackup"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    cel,
    validation = Rule::new("has(self.schoolId) == has(oldSelf.schoolId) && (!has(self.schoolId) || self.schoolId == oldSelf.schoolId)").message("schoolId is immutable: it cannot be set, changed or removed after creation"),
    validation = Rule::new("has(self.targetServer) == has(oldSelf.targetServer) && (!has(self.targetServer) || self.targetServer == oldSelf.targetServer)").message("targetServer is immutable: a school cannot move to another server by editing its manifest")
)]
pub struct SchoolSpec {
    /// The school's id (a UUID). It becomes the `schools.id` of the storage spec and part
    /// of the database name. When absent, the operator derives a stable one from the
    /// School's namespace and name (UUIDv5) and records it in `status.schoolId`.
    /// Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 36),
        regex(
            pattern = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
        )
    )]
    pub school_id: Option<String>,

    /// Short identifier of the school, unique per target server (1 to 50 characters, no
    /// control characters, not blank). Any characters are allowed: the database name is
    /// derived safely from it. Immutable.
    #[schemars(
        length(min = 1, max = 50),
        regex(pattern = r"^[^\x00-\x1F\x7F]*[^\s\x00-\x1F\x7F][^\x00-\x1F\x7F]*$")
    )]
    #[x_kube(validation = Rule::new("self == oldSelf").message("code is immutable"))]
    pub code: String,

    /// Display name of the school (1 to 255 characters).
    #[schemars(length(min = 1, max = 255))]
    pub name: String,

    /// Postal address of the school (at most 500 characters).
    #[serde(default)]
    #[schemars(length(max = 500))]
    pub address: String,

    /// E-mail address of the school's administrative contact.
    #[schemars(length(min = 3, max = 255), regex(pattern = r"^[^@\s]+@[^@\s]+$"))]
    pub contact_email: String,

    /// Phone number of the school's contact (at most 50 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 50))]
    pub contact_phone: Option<String>,

    /// Whether the school's subscription is active. `false` blocks logins to the school's
    /// database (open sessions are ended) without touching any data; `true` restores them.
    #[serde(default = "default_true")]
    pub active: bool,

    /// Name of the PostgreSQL server (as configured by the platform team in the operator's
    /// target server list) that holds this school's database. Absent means the default
    /// server. Admin credentials never come from a School. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub target_server: Option<String>,

    /// What happens to the database and role when this School is deleted: `retain`
    /// (default) keeps both, `delete` ends open sessions and drops both, `snapshot` takes a
    /// verified final backup first and drops only after it succeeded (a failed final
    /// backup keeps everything and says why in a condition).
    #[serde(default)]
    pub reclaim_policy: ReclaimPolicy,

    /// Logical backup settings of the school's database.
    #[serde(default)]
    pub backup: BackupSpec,
}

fn default_true() -> bool {
    true
}

/// What deleting a School does to its database and role.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum ReclaimPolicy {
    /// Keep the database and role; a School with the same namespace and name adopts them again.
    #[default]
    Retain,
    /// End open sessions, drop the database and drop the role.
    Delete,
    /// Take a final verified backup, then drop; nothing is dropped if that backup fails.
    Snapshot,
}

/// Logical backup settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupSpec {
    /// When to take backups, as a 5-field cron expression (minute hour day-of-month month
    /// day-of-week), in UTC. Default: daily at 02:00.
    #[serde(default = "default_schedule")]
    #[schemars(regex(
        pattern = r"^\s*[0-9A-Za-z*/,\-?]+\s+[0-9A-Za-z*/,\-?]+\s+[0-9A-Za-z*/,\-?LW]+\s+[0-9A-Za-z*/,\-?]+\s+[0-9A-Za-z*/,\-?L#]+\s*$"
    ))]
    pub schedule: String,

    /// How many days backups are kept (7 to 35). Default: 7.
    #[serde(default = "default_retention")]
    #[schemars(range(min = 7, max = 35))]
    pub retention_days: u32,

    /// Pause scheduled backups without deleting existing ones.
    #[serde(default)]
    pub suspend: bool,

    /// Where backups are stored. Absent means the operator's default backup storage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<BackupStorage>,

    /// Take a verified backup before the operator moves the database to a newer schema
    /// version, and migrate only once it succeeded. Default: true (when backup storage is
    /// configured). The operator's `--backup-before-migration=false` turns it off for
    /// every School.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before_migration: Option<bool>,
}

impl Default for BackupSpec {
    fn default() -> Self {
        Self {
            schedule: default_schedule(),
            retention_days: default_retention(),
            suspend: false,
            storage: None,
            before_migration: None,
        }
    }
}

fn default_schedule() -> String {
    "0 2 * * *".into()
}

fn default_retention() -> u32 {
    7
}

/// Backup storage location: exactly one of `persistentVolumeClaim`, `s3` or `azure`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    cel,
    validation = Rule::new("(has(self.persistentVolumeClaim) ? 1 : 0) + (has(self.s3) ? 1 : 0) + (has(self.azure) ? 1 : 0) == 1").message("set exactly one of persistentVolumeClaim, s3 or azure")
)]
pub struct BackupStorage {
    /// Name of an existing PersistentVolumeClaim in the School's namespace to write backups
    /// to. The backup Job mounts it at `/backups`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub persistent_volume_claim: Option<String>,
    /// Reserved: size of a volume the operator would create (the operator does not create
    /// volumes yet; name an existing claim in `persistentVolumeClaim`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    /// Reserved: storage class of a volume the operator would create (not used yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// An S3-compatible bucket (AWS S3, MinIO, Ceph RGW, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Storage>,
    /// An Azure Blob Storage container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azure: Option<AzureBlobStorage>,
}

/// An Azure Blob Storage container for backups.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AzureBlobStorage {
    /// Storage account name.
    #[schemars(length(min = 3, max = 24), regex(pattern = r"^[a-z0-9]+$"))]
    pub account: String,
    /// Container name.
    #[schemars(length(min = 3, max = 63), regex(pattern = r"^[a-z0-9](-?[a-z0-9])+$"))]
    pub container: String,
    /// Blob name prefix inside the container (dumps go to `<prefix>/<school-id>/...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub prefix: Option<String>,
    /// The account's blob endpoint (a private endpoint, a sovereign cloud, Azurite); absent
    /// for `https://<account>.blob.core.windows.net`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://[^\s]+$"))]
    pub endpoint: Option<String>,
    /// Secret in the School's namespace with an account key or a SAS token. It is
    /// referenced by the backup Job (`secretKeyRef`), never copied. Absent: the pod's
    /// ambient credentials (Azure workload identity) are used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<AzureCredentialsSecret>,
}

/// Where the Azure credential lives: set `sasTokenKey` for a SAS token, otherwise the
/// account key is read from `accountKeyKey`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    cel,
    validation = Rule::new("!(has(self.accountKeyKey) && has(self.sasTokenKey))").message("set at most one of accountKeyKey or sasTokenKey")
)]
pub struct AzureCredentialsSecret {
    /// Name of the Secret in the School's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
    /// Key holding the storage account key. Default (when `sasTokenKey` is not set):
    /// `AZURE_STORAGE_ACCOUNT_KEY`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_key_key: Option<String>,
    /// Key holding a SAS token (container-scoped, with read, add, create, write, delete
    /// and list permissions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sas_token_key: Option<String>,
}

impl AzureCredentialsSecret {
    /// The environment variable the backup runner reads, and the Secret key to fill it from.
    pub fn env_and_key(&self) -> (&'static str, &str) {
        match &self.sas_token_key {
            Some(key) => ("AZURE_STORAGE_SAS_TOKEN", key),
            None => (
                "AZURE_STORAGE_ACCOUNT_KEY",
                self.account_key_key
                    .as_deref()
                    .unwrap_or("AZURE_STORAGE_ACCOUNT_KEY"),
            ),
        }
    }
}

/// An S3-compatible bucket for backups.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3Storage {
    /// Bucket name.
    #[schemars(length(min = 3, max = 63))]
    pub bucket: String,
    /// Key prefix inside the bucket (dumps go to `<prefix>/<school-id>/...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub prefix: Option<String>,
    /// Endpoint URL of an S3-compatible service (e.g. `http://minio.backup:9000`); absent
    /// for AWS itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://[^\s]+$"))]
    pub endpoint: Option<String>,
    /// Region of the bucket. Default: `us-east-1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Secret in the School's namespace with the access key pair. It is referenced by the
    /// backup Job (`secretKeyRef`), never copied. Absent: the pod's ambient credentials
    /// (e.g. a workload identity) are used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<S3CredentialsSecret>,
}

/// Where the S3 access key pair lives.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3CredentialsSecret {
    /// Name of the Secret in the School's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
    /// Key holding the access key id. Default: `AWS_ACCESS_KEY_ID`.
    #[serde(default = "default_access_key_key")]
    pub access_key_id_key: String,
    /// Key holding the secret access key. Default: `AWS_SECRET_ACCESS_KEY`.
    #[serde(default = "default_secret_key_key")]
    pub secret_access_key_key: String,
}

fn default_access_key_key() -> String {
    "AWS_ACCESS_KEY_ID".into()
}

fn default_secret_key_key() -> String {
    "AWS_SECRET_ACCESS_KEY".into()
}

/// A successful backup.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupRecord {
    /// When the backup finished.
    pub time: Time,
    /// Object name in the backup storage (what a SchoolRestore's `spec.backup` takes).
    pub object: String,
    /// Size of the stored dump in bytes.
    pub size: i64,
    /// SHA-256 of the stored dump (lower-case hex), as recorded in its checksum manifest
    /// `<object>.sha256`; restores refuse a dump that no longer matches it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The Job that took it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// How long the Job ran, from its start to its completion, in whole seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<i64>,
}

/// A failed backup.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupFailure {
    /// When the failure was observed (the Job's end).
    pub time: Time,
    /// Machine-readable reason (e.g. `DumpFailed`, `StorageFailed`, `JobFailed`).
    pub reason: String,
    /// What went wrong, for humans.
    pub message: String,
    /// The Job that failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
}

/// Backup results of a School.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupStatus {
    /// Name of the CronJob that takes the scheduled backups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron_job: Option<String>,
    /// The newest successful backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success: Option<BackupRecord>,
    /// The newest failed backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<BackupFailure>,
}

/// The verified backup taken before the database's last schema change.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PreMigrationBackup {
    /// Schema version the dump holds.
    pub from_version: i64,
    /// Schema version the database was then migrated to.
    pub to_version: i64,
    /// The backup Job.
    pub job: String,
    /// The stored dump (absent when the Job's result could no longer be read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
}

/// Observed state of a School, written only by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SchoolStatus {
    /// Current state; `Ready` summarises whether the school's database can be used.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` the conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The school's id: `spec.schoolId`, or the one derived from namespace and name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub school_id: Option<String>,
    /// The target server the database lives on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// Name of the school's database. Recorded once created and never changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// Name of the school's login role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Name of the Secret with the connection details, in the School's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// Version of the newest schema migration applied to the database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_version: Option<i64>,
    /// When the last successful backup finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup: Option<Time>,
    /// Results of scheduled, on-demand and final backups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupStatus>,
    /// The verified backup taken before the last schema change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_migration_backup: Option<PreMigrationBackup>,
    /// The value of the `edumind.ai/rotate-password` annotation last acted upon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_rotation: Option<String>,
    /// One-word summary for display only; use the conditions for decisions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
}

/// The School CRD manifest as YAML, what `crds/generated/schools.edumind.ai.yaml` holds.
pub fn crd_yaml() -> Result<String, serde_yaml_ng::Error> {
    serde_yaml_ng::to_string(&School::crd())
}

/// Every CRD of the operator with its committed file name under `crds/generated/`.
pub fn all_crds() -> Vec<(
    &'static str,
    k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
)> {
    vec![
        ("schools.edumind.ai.yaml", School::crd()),
        ("schoolbackups.edumind.ai.yaml", SchoolBackup::crd()),
        ("schoolrestores.edumind.ai.yaml", SchoolRestore::crd()),
    ]
}

/// All CRD manifests as one multi-document YAML stream: what `edumind-operator crd` prints.
pub fn all_crds_yaml() -> Result<String, serde_yaml_ng::Error> {
    let mut out = String::new();
    for (_, crd) in all_crds() {
        out.push_str("---\n");
        out.push_str(&serde_yaml_ng::to_string(&crd)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use serde_json::json;

    fn spec() -> serde_json::Value {
        json!({"code": "Lincoln High", "name": "Lincoln High School", "address": "1 Main St",
               "contactEmail": "office@lincoln.example", "targetServer": "main",
               "schoolId": "0b8f9a5c-3c1e-4c55-9b7d-2f6f1d5c9e11"})
    }

    #[test]
    fn the_committed_crds_match_the_code() {
        let committed = [
            include_str!("../generated/schools.edumind.ai.yaml"),
            include_str!("../generated/schoolbackups.edumind.ai.yaml"),
            include_str!("../generated/schoolrestores.edumind.ai.yaml"),
        ];
        for ((file, crd), text) in all_crds().into_iter().zip(committed) {
            assert_eq!(
                text,
                serde_yaml_ng::to_string(&crd).unwrap(),
                "crds/generated/{file} is stale: run `cargo test -p edumind-crds regenerate -- --ignored`"
            );
        }
        assert_eq!(crd_yaml().unwrap(), committed[0]);
        assert_eq!(
            all_crds_yaml()
                .unwrap()
                .matches("kind: CustomResourceDefinition")
                .count(),
            3
        );
    }

    /// Writes the committed CRD files (run by hand after changing the types).
    #[test]
    #[ignore = "rewrites crds/generated"]
    fn regenerate() {
        for (file, crd) in all_crds() {
            let path = format!("{}/generated/{file}", env!("CARGO_MANIFEST_DIR"));
            std::fs::write(path, serde_yaml_ng::to_string(&crd).unwrap()).unwrap();
        }
    }

    #[test]
    fn storage_takes_exactly_one_location() {
        let pvc = json!({"persistentVolumeClaim": "backups"});
        let s3 = json!({"s3": {"bucket": "edumind"}});
        let both = json!({"persistentVolumeClaim": "backups", "s3": {"bucket": "edumind"}});
        let azure = json!({"azure": {"account": "edumind", "container": "backups"}});
        let azure_and_s3 = json!({"s3": {"bucket": "edumind"},
            "azure": {"account": "edumind", "container": "backups"}});
        assert!(BackupStorage::validate_cel(&azure, None).is_ok());
        assert!(BackupStorage::validate_cel(&azure_and_s3, None).is_err());
        let creds = json!({"secretName": "az", "accountKeyKey": "k", "sasTokenKey": "s"});
        assert!(AzureCredentialsSecret::validate_cel(&creds, None).is_err());
        let sas: AzureCredentialsSecret =
            serde_json::from_value(json!({"secretName": "az", "sasTokenKey": "sas"})).unwrap();
        assert_eq!(sas.env_and_key(), ("AZURE_STORAGE_SAS_TOKEN", "sas"));
        let key: AzureCredentialsSecret =
            serde_json::from_value(json!({"secretName": "az"})).unwrap();
        assert_eq!(
            key.env_and_key(),
            ("AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_ACCOUNT_KEY")
        );
        assert!(BackupStorage::validate_cel(&pvc, None).is_ok());
        assert!(BackupStorage::validate_cel(&s3, None).is_ok());
        assert!(BackupStorage::validate_cel(&both, None).is_err());
        assert!(BackupStorage::validate_cel(&json!({}), None).is_err());
        let s: BackupStorage = serde_json::from_value(json!({"s3": {"bucket": "b",
            "credentials": {"secretName": "s3"}}}))
        .unwrap();
        let creds = s.s3.unwrap().credentials.unwrap();
        assert_eq!(creds.access_key_id_key, "AWS_ACCESS_KEY_ID");
        assert_eq!(creds.secret_access_key_key, "AWS_SECRET_ACCESS_KEY");
    }

    #[test]
    fn restore_defaults_to_latest_and_specs_are_immutable() {
        let r: SchoolRestoreSpec = serde_json::from_value(json!({"school": "a"})).unwrap();
        assert_eq!(r.backup, "latest");
        let old = json!({"school": "a", "backup": "latest"});
        let new = json!({"school": "b", "backup": "latest"});
        assert!(SchoolRestoreSpec::validate_cel(&new, Some(&old)).is_err());
        assert!(
            SchoolBackupSpec::validate_cel(&json!({"school": "b"}), Some(&json!({"school": "a"})))
                .is_err()
        );
        let mut restore = SchoolRestore::new("r", r);
        assert!(restore.is_active());
        restore.status = Some(SchoolRestoreStatus {
            phase: Some("Failed".into()),
            ..Default::default()
        });
        assert!(!restore.is_active());
    }

    #[test]
    fn defaults_fill_a_minimal_manifest() {
        let s: SchoolSpec = serde_json::from_value(json!({"code": "a", "name": "A",
            "contactEmail": "a@b"}))
        .unwrap();
        assert!(s.active);
        assert_eq!(s.reclaim_policy, ReclaimPolicy::Retain);
        assert_eq!(s.backup.schedule, "0 2 * * *");
        assert_eq!(s.backup.retention_days, 7);
    }

    #[test]
    fn immutable_fields_cannot_change() {
        let old = spec();
        assert!(SchoolSpec::validate_cel(&old, Some(&old)).is_ok());
        for (field, value) in [
            ("code", json!("Other")),
            ("schoolId", json!("1b8f9a5c-3c1e-4c55-9b7d-2f6f1d5c9e11")),
            ("targetServer", json!("other")),
        ] {
            let mut new = old.clone();
            new[field] = value;
            assert!(
                SchoolSpec::validate_cel(&new, Some(&old)).is_err(),
                "{field} changed"
            );
            let mut removed = old.clone();
            removed.as_object_mut().unwrap().remove(field);
            if field != "code" {
                assert!(
                    SchoolSpec::validate_cel(&removed, Some(&old)).is_err(),
                    "{field} removed"
                );
                assert!(
                    SchoolSpec::validate_cel(&old, Some(&removed)).is_err(),
                    "{field} added"
                );
            }
        }
        // Mutable fields stay mutable.
        let mut new = old.clone();
        new["name"] = json!("Renamed");
        new["active"] = json!(false);
        assert!(SchoolSpec::validate_cel(&new, Some(&old)).is_ok());
    }

    fn schema_of(path: &[&str]) -> serde_json::Value {
        let crd = serde_json::to_value(School::crd()).unwrap();
        let mut v = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone();
        for p in path {
            v = v["properties"][*p].clone();
        }
        v
    }

    #[test]
    fn schema_carries_ranges_patterns_and_rules() {
        let code = schema_of(&["spec", "code"]);
        assert_eq!(code["maxLength"], 50);
        assert_eq!(
            code["x-kubernetes-validations"][0]["rule"],
            "self == oldSelf"
        );
        let retention = schema_of(&["spec", "backup", "retentionDays"]);
        assert_eq!(retention["minimum"].as_f64(), Some(7.0));
        assert_eq!(retention["maximum"].as_f64(), Some(35.0));
        let spec = schema_of(&["spec"]);
        assert_eq!(
            spec["x-kubernetes-validations"].as_array().unwrap().len(),
            2
        );
        let crd = School::crd();
        assert_eq!(crd.spec.names.short_names, Some(vec!["sch".to_string()]));
        let v = &crd.spec.versions[0];
        assert!(v.subresources.as_ref().unwrap().status.is_some());
        let cols: Vec<_> = v
            .additional_printer_columns
            .as_ref()
            .unwrap()
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(
            cols,
            [
                "Ready",
                "Code",
                "Database",
                "Schema version",
                "Last backup",
                "Age"
            ]
        );
        // Every spec field is documented for `kubectl explain`.
        for (name, prop) in spec["properties"].as_object().unwrap() {
            assert!(
                prop["description"].as_str().is_some_and(|d| d.len() > 10),
                "{name}"
            );
        }
    }

    #[test]
    fn code_and_cron_patterns_accept_and_reject_what_they_should() {
        let pattern = |path: &[&str]| {
            let p = schema_of(path)["pattern"].as_str().unwrap().to_string();
            regex_lite::Regex::new(&p).unwrap()
        };
        let code = pattern(&["spec", "code"]);
        for ok in [
            "A",
            "O'Brien Academy",
            "École Saint-Éloi",
            "学校 1",
            "a\"b;--",
        ] {
            assert!(code.is_match(ok), "{ok}");
        }
        for bad in ["", "   ", "tab\there", "line\nbreak"] {
            assert!(!code.is_match(bad), "{bad:?}");
        }
        let cron = pattern(&["spec", "backup", "schedule"]);
        for ok in ["0 2 * * *", "*/15 * * * 1-5", "30 3 1,15 * SUN"] {
            assert!(cron.is_match(ok), "{ok}");
        }
        for bad in ["0 2 * *", "0 2 * * * *", "@daily", "every day"] {
            assert!(!cron.is_match(bad), "{bad}");
        }
    }
}
