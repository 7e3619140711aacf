//! The Kubernetes side of backups, as pure functions: the per-School CronJob, the Jobs of
//! on-demand, final and restore runs (all from one pod template), and reading outcomes
//! back from finished Jobs and their Pods' termination messages.
//!
//! Nothing here does I/O; the reconcilers apply what these functions build with
//! server-side apply and the operator's one field manager.

use std::collections::BTreeMap;

use edumind_crds::{BackupFailure, BackupRecord, BackupStatus, BackupStorage};
use k8s_openapi::api::batch::v1::{CronJob, CronJobSpec, Job, JobSpec, JobTemplateSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    PersistentVolumeClaimVolumeSource, Pod, PodSecurityContext, PodSpec, PodTemplateSpec,
    ResourceRequirements, SeccompProfile, SecretKeySelector, SecretVolumeSource, SecurityContext,
    Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;

use crate::backup::RunResult;

/// Label on every backup/restore CronJob, Job and Pod: the school id.
pub const LABEL_SCHOOL_ID: &str = "edumind.ai/school-id";
/// Label saying what a Job is for: `scheduled`, `on-demand`, `final` or `restore`.
pub const LABEL_KIND: &str = "edumind.ai/backup-kind";
/// Annotation on backup Jobs naming their School (names may exceed label limits).
pub const ANNOTATION_SCHOOL: &str = "edumind.ai/school";
/// Label Kubernetes puts on a Job's Pods.
pub const LABEL_JOB_NAME: &str = "batch.kubernetes.io/job-name";
const LABEL_JOB_NAME_LEGACY: &str = "job-name";
/// Name of the runner container.
pub const CONTAINER: &str = "runner";
/// Where the connection Secret is mounted in the runner.
pub const SECRET_DIR: &str = "/etc/edumind/connection";
/// Where a PersistentVolumeClaim is mounted in the runner.
pub const BACKUP_DIR: &str = "/backups";
const WORK_DIR: &str = "/work";
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
    match (&storage.persistent_volume_claim, &storage.s3) {
        (Some(_), None) | (None, Some(_)) => Ok(()),
        _ => Err("spec.backup.storage: set exactly one of persistentVolumeClaim or s3".into()),
    }
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

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

fn env_from_secret(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.into(),
                key: key.into(),
                optional: Some(false),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Labels of everything the backup machinery creates for a school.
pub fn labels(school_id: &str, kind: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            crate::reconcile::LABEL_MANAGED_BY.to_string(),
            "edumind-operator".to_string(),
        ),
        (LABEL_SCHOOL_ID.to_string(), school_id.to_string()),
        (LABEL_KIND.to_string(), kind.to_string()),
    ])
}

fn school_annotation(inputs: &RunnerInputs) -> BTreeMap<String, String> {
    BTreeMap::from([(ANNOTATION_SCHOOL.to_string(), inputs.school_name.clone())])
}

fn run_kind(run: &Run) -> &'static str {
    match run {
        Run::Backup { kind, .. } => kind,
        Run::Restore { .. } => "restore",
    }
}

/// The runner pod: restricted security, the connection Secret and S3 keys only by
/// reference, an emptyDir scratch directory, no service account token.
pub fn pod_template(config: &BackupConfig, inputs: &RunnerInputs) -> PodTemplateSpec {
    let mut env_vars = vec![
        env("EDUMIND_SECRET", SECRET_DIR),
        env("EDUMIND_SCHOOL_ID", &inputs.school_id),
        env("EDUMIND_BACKUP_WORK_DIR", WORK_DIR),
        env("EDUMIND_RESULT_FILE", "/dev/termination-log"),
        env("TMPDIR", WORK_DIR),
        env("RUST_LOG", "info"),
    ];
    let mut volumes = vec![
        Volume {
            name: "connection".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(inputs.secret_name.clone()),
                default_mode: Some(0o440),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: "work".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        },
    ];
    let mut mounts = vec![
        VolumeMount {
            name: "connection".into(),
            mount_path: SECRET_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        },
        VolumeMount {
            name: "work".into(),
            mount_path: WORK_DIR.into(),
            ..Default::default()
        },
    ];
    if let Some(claim) = &inputs.storage.persistent_volume_claim {
        env_vars.push(env("EDUMIND_BACKUP_STORAGE", BACKUP_DIR));
        volumes.push(Volume {
            name: "backups".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim.clone(),
                read_only: Some(matches!(inputs.run, Run::Restore { .. })),
            }),
            ..Default::default()
        });
        mounts.push(VolumeMount {
            name: "backups".into(),
            mount_path: BACKUP_DIR.into(),
            read_only: Some(matches!(inputs.run, Run::Restore { .. })),
            ..Default::default()
        });
    } else if let Some(s3) = &inputs.storage.s3 {
        let prefix = s3.prefix.as_deref().unwrap_or("").trim_matches('/');
        env_vars.push(env(
            "EDUMIND_BACKUP_STORAGE",
            format!("s3://{}/{prefix}", s3.bucket),
        ));
        env_vars.push(env(
            "EDUMIND_S3_REGION",
            s3.region.as_deref().unwrap_or("us-east-1"),
        ));
        if let Some(endpoint) = &s3.endpoint {
            env_vars.push(env("EDUMIND_S3_ENDPOINT", endpoint));
        }
        if let Some(creds) = &s3.credentials {
            env_vars.push(env_from_secret(
                "AWS_ACCESS_KEY_ID",
                &creds.secret_name,
                &creds.access_key_id_key,
            ));
            env_vars.push(env_from_secret(
                "AWS_SECRET_ACCESS_KEY",
                &creds.secret_name,
                &creds.secret_access_key_key,
            ));
        }
    }
    let command = match &inputs.run {
        Run::Backup { retention_days, .. } => {
            env_vars.push(env(
                "EDUMIND_BACKUP_RETENTION_DAYS",
                retention_days.to_string(),
            ));
            vec!["edumind-operator".to_string(), "backup".to_string()]
        }
        Run::Restore { object, role } => {
            env_vars.push(env("EDUMIND_RESTORE_OBJECT", object));
            env_vars.push(env("EDUMIND_RESTORE_ROLE", role));
            vec!["edumind-operator".to_string(), "restore".to_string()]
        }
    };
    let container = Container {
        name: CONTAINER.into(),
        image: Some(config.image.clone()),
        image_pull_policy: Some("IfNotPresent".into()),
        command: Some(command),
        env: Some(env_vars),
        volume_mounts: Some(mounts),
        termination_message_path: Some("/dev/termination-log".into()),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_string(), Quantity("100m".into())),
                ("memory".to_string(), Quantity("128Mi".into())),
            ])),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels(&inputs.school_id, run_kind(&inputs.run))),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            restart_policy: Some("Never".into()),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(RUN_AS),
                run_as_group: Some(RUN_AS),
                fs_group: Some(RUN_AS),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            containers: vec![container],
            volumes: Some(volumes),
            ..Default::default()
        }),
    }
}

fn job_spec(config: &BackupConfig, inputs: &RunnerInputs) -> JobSpec {
    JobSpec {
        backoff_limit: Some(config.backoff_limit),
        active_deadline_seconds: Some(config.active_deadline_seconds),
        template: pod_template(config, inputs),
        ..Default::default()
    }
}

/// Settings of a School's CronJob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    pub schedule: String,
    pub suspend: bool,
    pub retention_days: u32,
}

/// The School's backup CronJob (owned by the School).
pub fn cron_job(
    name: &str,
    namespace: &str,
    owner: Option<OwnerReference>,
    config: &BackupConfig,
    schedule: &Schedule,
    inputs: &RunnerInputs,
) -> CronJob {
    let labels = labels(&inputs.school_id, "scheduled");
    CronJob {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            labels: Some(labels.clone()),
            owner_references: owner.map(|o| vec![o]),
            ..Default::default()
        },
        spec: Some(CronJobSpec {
            schedule: schedule.schedule.trim().to_string(),
            time_zone: Some("Etc/UTC".into()),
            suspend: Some(schedule.suspend),
            concurrency_policy: Some("Forbid".into()),
            starting_deadline_seconds: Some(3600),
            successful_jobs_history_limit: Some(config.successful_jobs_history_limit),
            failed_jobs_history_limit: Some(config.failed_jobs_history_limit),
            job_template: JobTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    annotations: Some(school_annotation(inputs)),
                    ..Default::default()
                }),
                spec: Some(job_spec(config, inputs)),
            },
        }),
        status: None,
    }
}

/// A one-off Job (on-demand, final or restore).
pub fn job(
    name: &str,
    namespace: &str,
    owner: Option<OwnerReference>,
    config: &BackupConfig,
    inputs: &RunnerInputs,
) -> Job {
    Job {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            labels: Some(labels(&inputs.school_id, run_kind(&inputs.run))),
            annotations: Some(school_annotation(inputs)),
            owner_references: owner.map(|o| vec![o]),
            ..Default::default()
        },
        spec: Some(job_spec(config, inputs)),
        status: None,
    }
}

/// Whether an existing CronJob already has what we would apply (so the reconcile issues
/// no write). Compares the parts the operator owns.
pub fn cron_job_up_to_date(existing: &CronJob, desired: &CronJob) -> bool {
    let (Some(e), Some(d)) = (&existing.spec, &desired.spec) else {
        return false;
    };
    let labels_ok = desired
        .metadata
        .labels
        .iter()
        .flatten()
        .all(|(k, v)| existing.metadata.labels.as_ref().and_then(|l| l.get(k)) == Some(v));
    let pod = |s: &CronJobSpec| {
        s.job_template.spec.as_ref().map(|j| {
            (
                j.backoff_limit,
                j.active_deadline_seconds,
                j.template.clone(),
            )
        })
    };
    labels_ok
        && e.schedule == d.schedule
        && e.time_zone == d.time_zone
        && e.suspend == d.suspend
        && e.concurrency_policy == d.concurrency_policy
        && e.successful_jobs_history_limit == d.successful_jobs_history_limit
        && e.failed_jobs_history_limit == d.failed_jobs_history_limit
        && e.starting_deadline_seconds == d.starting_deadline_seconds
        && pod(e) == pod(d)
}

/// The outcome of a finished Job.
#[derive(Debug, Clone, PartialEq)]
pub struct JobOutcome {
    pub job: String,
    pub finished: Timestamp,
    pub result: Outcome,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Succeeded {
        object: String,
        size: u64,
        /// The dump's SHA-256, from runners that report it.
        sha256: Option<String>,
    },
    Failed {
        reason: String,
        message: String,
    },
    /// The Job completed but its Pod (and with it the result) is gone.
    SucceededUnknown,
}

fn job_condition<'a>(
    job: &'a Job,
    type_: &str,
) -> Option<&'a k8s_openapi::api::batch::v1::JobCondition> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
}

fn pod_of(job_name: &str, pod: &Pod) -> bool {
    let labels = pod.metadata.labels.as_ref();
    let by_label = [LABEL_JOB_NAME, LABEL_JOB_NAME_LEGACY]
        .iter()
        .any(|l| labels.and_then(|m| m.get(*l)).map(String::as_str) == Some(job_name));
    let by_owner = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.kind == "Job" && o.name == job_name);
    by_label || by_owner
}

/// The newest terminated runner container among `job`'s Pods: (finished, exit code,
/// message).
fn last_termination(job_name: &str, pods: &[Pod]) -> Option<(Option<Timestamp>, i32, String)> {
    pods.iter()
        .filter(|p| pod_of(job_name, p))
        .filter_map(|p| {
            let statuses = p.status.as_ref()?.container_statuses.as_ref()?;
            let s = statuses.iter().find(|s| s.name == CONTAINER)?;
            let t = s.state.as_ref()?.terminated.as_ref()?;
            Some((
                t.finished_at.as_ref().map(|f| f.0),
                t.exit_code,
                t.message.clone().unwrap_or_default(),
            ))
        })
        .max_by_key(|(finished, _, _)| *finished)
}

/// Last line of a log tail (what `FallbackToLogsOnError` leaves when the runner could not
/// write its result), shortened.
fn last_line(text: &str) -> String {
    let line = text.trim().lines().last().unwrap_or("").trim();
    line.chars().take(500).collect()
}

/// Reads a Job and its Pods: `None` while the Job has not finished.
pub fn job_outcome(job: &Job, pods: &[Pod]) -> Option<JobOutcome> {
    let name = job.metadata.name.clone().unwrap_or_default();
    let complete = job_condition(job, "Complete");
    let failed = job_condition(job, "Failed");
    let cond = complete.or(failed)?;
    let finished = job
        .status
        .as_ref()
        .and_then(|s| s.completion_time.as_ref())
        .map(|t| t.0)
        .or(cond.last_transition_time.as_ref().map(|t| t.0))
        .unwrap_or_else(Timestamp::now);
    let termination = last_termination(&name, pods);
    let parsed = termination
        .as_ref()
        .and_then(|(_, _, m)| serde_json::from_str::<RunResult>(m.trim()).ok());
    let result = match (complete.is_some(), parsed) {
        (true, Some(r)) if r.ok => Outcome::Succeeded {
            object: r.object.unwrap_or_default(),
            size: r.size.unwrap_or(0),
            sha256: r.sha256,
        },
        (true, _) => Outcome::SucceededUnknown,
        (false, Some(r)) => Outcome::Failed {
            reason: r.reason.unwrap_or_else(|| "JobFailed".into()),
            message: r.message.unwrap_or_else(|| "the runner failed".into()),
        },
        (false, None) => {
            let job_msg = failed.and_then(|c| c.message.clone()).unwrap_or_default();
            let detail = termination
                .as_ref()
                .map(|(_, code, m)| {
                    let tail = last_line(m);
                    if tail.is_empty() {
                        format!("the runner exited with code {code}")
                    } else {
                        format!("the runner exited with code {code}: {tail}")
                    }
                })
                .unwrap_or_else(|| {
                    let reason = failed.and_then(|c| c.reason.clone()).unwrap_or_default();
                    format!("the Job failed ({reason}) {job_msg}")
                        .trim()
                        .to_string()
                });
            Outcome::Failed {
                reason: "JobFailed".into(),
                message: detail,
            }
        }
    };
    Some(JobOutcome {
        job: name,
        finished,
        result,
    })
}

/// Folds finished Jobs into the School's backup status. Returns the new status and the
/// failures not seen before (for Warning events).
pub fn fold_outcomes(
    old: Option<&BackupStatus>,
    outcomes: &[JobOutcome],
) -> (BackupStatus, Vec<BackupFailure>) {
    let mut status = old.cloned().unwrap_or_default();
    let mut new_failures = Vec::new();
    let mut sorted: Vec<&JobOutcome> = outcomes.iter().collect();
    sorted.sort_by_key(|o| o.finished);
    for o in sorted {
        match &o.result {
            Outcome::Succeeded {
                object,
                size,
                sha256,
            } => {
                if status
                    .last_success
                    .as_ref()
                    .is_none_or(|s| s.time.0 < o.finished)
                {
                    status.last_success = Some(BackupRecord {
                        time: Time(o.finished),
                        object: object.clone(),
                        size: i64::try_from(*size).unwrap_or(i64::MAX),
                        sha256: sha256.clone(),
                        job: Some(o.job.clone()),
                    });
                }
            }
            Outcome::SucceededUnknown => {}
            Outcome::Failed { reason, message } => {
                let seen = status
                    .last_failure
                    .as_ref()
                    .is_some_and(|f| f.time.0 >= o.finished);
                if !seen {
                    let failure = BackupFailure {
                        time: Time(o.finished),
                        reason: reason.clone(),
                        message: message.clone(),
                        job: Some(o.job.clone()),
                    };
                    new_failures.push(failure.clone());
                    status.last_failure = Some(failure);
                }
            }
        }
    }
    (status, new_failures)
}

/// `BackupHealthy`: (status, reason, message) from the backup status and whether storage
/// is configured.
pub fn health(
    status: &BackupStatus,
    storage: bool,
    suspended: bool,
) -> (&'static str, String, String) {
    if !storage {
        return (
            "False",
            "NoBackupStorage".into(),
            "no backup storage: set spec.backup.storage or configure the operator's default storage".into(),
        );
    }
    let failure_newer = match (&status.last_failure, &status.last_success) {
        (Some(f), Some(s)) => f.time.0 > s.time.0,
        (Some(_), None) => true,
        _ => false,
    };
    if failure_newer && let Some(f) = &status.last_failure {
        return (
            "False",
            "BackupFailed".into(),
            format!("the last backup failed ({}): {}", f.reason, f.message),
        );
    }
    match (&status.last_success, suspended) {
        (_, true) => (
            "True",
            "Suspended".into(),
            "scheduled backups are suspended".into(),
        ),
        (Some(s), _) => (
            "True",
            "BackupSucceeded".into(),
            format!("last backup {} ({} bytes)", s.object, s.size),
        ),
        (None, _) => (
            "Unknown",
            "NoBackupYet".into(),
            "no backup has finished yet".into(),
        ),
    }
}

/// A condition with a tri-state status, keeping the transition time while it holds.
pub fn tri_condition(
    type_: &str,
    (status, reason, message): (&str, String, String),
    generation: Option<i64>,
    old: &[Condition],
) -> Condition {
    let last_transition_time = old
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| Time(Timestamp::now()));
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason,
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edumind_crds::{S3CredentialsSecret, S3Storage};
    use k8s_openapi::api::batch::v1::{JobCondition, JobStatus};
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateTerminated, ContainerStatus, PodStatus,
    };

    fn inputs(storage: BackupStorage) -> RunnerInputs {
        RunnerInputs {
            school_name: "lincoln".into(),
            school_id: "0b8f9a5c-3c1e-4c55-9b7d-2f6f1d5c9e11".into(),
            secret_name: "lincoln-connection".into(),
            storage,
            run: Run::Backup {
                kind: "scheduled",
                retention_days: 14,
            },
        }
    }

    fn s3() -> BackupStorage {
        BackupStorage {
            s3: Some(S3Storage {
                bucket: "edumind".into(),
                prefix: Some("/prod/".into()),
                endpoint: Some("http://minio:9000".into()),
                region: None,
                credentials: Some(S3CredentialsSecret {
                    secret_name: "s3-creds".into(),
                    access_key_id_key: "id".into(),
                    secret_access_key_key: "key".into(),
                }),
            }),
            ..Default::default()
        }
    }

    fn schedule() -> Schedule {
        Schedule {
            schedule: "0 2 * * *".into(),
            suspend: false,
            retention_days: 14,
        }
    }

    fn env_of(c: &Container) -> BTreeMap<String, EnvVar> {
        c.env
            .iter()
            .flatten()
            .map(|e| (e.name.clone(), e.clone()))
            .collect()
    }

    #[test]
    fn cron_job_carries_schedule_policy_and_restricted_pod() {
        let config = BackupConfig::default();
        let cj = cron_job(
            "lincoln-backup",
            "ns",
            None,
            &config,
            &schedule(),
            &inputs(s3()),
        );
        let spec = cj.spec.as_ref().unwrap();
        assert_eq!(spec.schedule, "0 2 * * *");
        assert_eq!(spec.suspend, Some(false));
        assert_eq!(spec.concurrency_policy.as_deref(), Some("Forbid"));
        assert_eq!(spec.successful_jobs_history_limit, Some(3));
        assert_eq!(spec.failed_jobs_history_limit, Some(3));
        assert_eq!(spec.time_zone.as_deref(), Some("Etc/UTC"));
        let pod = spec
            .job_template
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap();
        assert_eq!(pod.automount_service_account_token, Some(false));
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some(config.image.as_str()));
        assert_eq!(
            c.command.as_ref().unwrap(),
            &["edumind-operator".to_string(), "backup".to_string()]
        );
        assert_eq!(
            c.termination_message_policy.as_deref(),
            Some("FallbackToLogsOnError")
        );
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop.as_ref().unwrap(),
            &["ALL".to_string()]
        );
        assert_eq!(sc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
        // The connection Secret is a volume; S3 keys come by secretKeyRef.
        let vols = pod.volumes.as_ref().unwrap();
        assert!(
            vols.iter()
                .any(|v| v.secret.as_ref().and_then(|s| s.secret_name.as_deref())
                    == Some("lincoln-connection"))
        );
        assert!(vols.iter().any(|v| v.empty_dir.is_some()));
        let env = env_of(c);
        assert_eq!(
            env["EDUMIND_BACKUP_STORAGE"].value.as_deref(),
            Some("s3://edumind/prod")
        );
        assert_eq!(
            env["EDUMIND_S3_ENDPOINT"].value.as_deref(),
            Some("http://minio:9000")
        );
        assert_eq!(
            env["EDUMIND_BACKUP_RETENTION_DAYS"].value.as_deref(),
            Some("14")
        );
        let key = env["AWS_SECRET_ACCESS_KEY"]
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap();
        assert_eq!((key.name.as_str(), key.key.as_str()), ("s3-creds", "key"));
        assert!(env["AWS_SECRET_ACCESS_KEY"].value.is_none());
        assert!(!env.contains_key("PGPASSWORD") && !env.contains_key("EDUMIND_PASSWORD"));
    }

    #[test]
    fn pvc_storage_is_mounted_and_restores_mount_it_read_only() {
        let pvc = BackupStorage {
            persistent_volume_claim: Some("school-backups".into()),
            ..Default::default()
        };
        let t = pod_template(&BackupConfig::default(), &inputs(pvc.clone()));
        let pod = t.spec.unwrap();
        let c = &pod.containers[0];
        assert_eq!(
            env_of(c)["EDUMIND_BACKUP_STORAGE"].value.as_deref(),
            Some(BACKUP_DIR)
        );
        assert!(pod.volumes.unwrap().iter().any(|v| {
            v.persistent_volume_claim
                .as_ref()
                .map(|p| p.claim_name.as_str())
                == Some("school-backups")
        }));
        let mut restore = inputs(pvc);
        restore.run = Run::Restore {
            object: "latest".into(),
            role: "edumind_school_x".into(),
        };
        let j = job("r-restore", "ns", None, &BackupConfig::default(), &restore);
        let pod = j.spec.unwrap().template.spec.unwrap();
        let c = &pod.containers[0];
        assert_eq!(c.command.as_ref().unwrap()[1], "restore");
        let env = env_of(c);
        assert_eq!(
            env["EDUMIND_RESTORE_ROLE"].value.as_deref(),
            Some("edumind_school_x")
        );
        let mount = c
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.name == "backups")
            .unwrap();
        assert_eq!(mount.read_only, Some(true));
    }

    #[test]
    fn storage_must_name_exactly_one_location() {
        assert!(check_storage(&s3()).is_ok());
        assert!(check_storage(&BackupStorage::default()).is_err());
        let mut both = s3();
        both.persistent_volume_claim = Some("x".into());
        assert!(check_storage(&both).unwrap_err().contains("exactly one"));
        let config = BackupConfig {
            default_storage: Some(s3()),
            ..Default::default()
        };
        assert_eq!(resolve_storage(None, &config), Some(s3()));
        assert_eq!(resolve_storage(None, &BackupConfig::default()), None);
    }

    #[test]
    fn names_fit_their_limits() {
        assert_eq!(cron_job_name("lincoln"), "lincoln-backup");
        let long = "a".repeat(240);
        assert!(cron_job_name(&long).len() <= 52);
        assert!(final_job_name(&long).len() <= 63);
        assert_ne!(cron_job_name(&long), cron_job_name(&"a".repeat(239)));
    }

    #[test]
    fn an_unchanged_cron_job_is_up_to_date_and_a_changed_one_is_not() {
        let config = BackupConfig::default();
        let a = cron_job("n", "ns", None, &config, &schedule(), &inputs(s3()));
        assert!(cron_job_up_to_date(&a, &a.clone()));
        let mut s = schedule();
        s.suspend = true;
        let b = cron_job("n", "ns", None, &config, &s, &inputs(s3()));
        assert!(!cron_job_up_to_date(&a, &b));
    }

    fn finished_job(name: &str, ok: bool, secs: i64) -> Job {
        Job {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            status: Some(JobStatus {
                conditions: Some(vec![JobCondition {
                    type_: if ok { "Complete" } else { "Failed" }.into(),
                    status: "True".into(),
                    reason: Some(if ok { "" } else { "BackoffLimitExceeded" }.into()),
                    last_transition_time: Some(Time(Timestamp::from_second(secs).unwrap())),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn pod(job: &str, message: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(format!("{job}-x")),
                labels: Some(BTreeMap::from([(
                    LABEL_JOB_NAME.to_string(),
                    job.to_string(),
                )])),
                ..Default::default()
            },
            status: Some(PodStatus {
                container_statuses: Some(vec![ContainerStatus {
                    name: CONTAINER.into(),
                    state: Some(ContainerState {
                        terminated: Some(ContainerStateTerminated {
                            exit_code: 1,
                            message: Some(message.into()),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn outcomes_come_from_termination_messages() {
        let ok = RunResult::success("backup", "p/id/id_1.dump", 1234)
            .with_sha256(&"ab".repeat(32))
            .to_json();
        let fail = RunResult::failure(
            "backup",
            &crate::backup::BackupError::Storage("bucket gone".into()),
        )
        .to_json();
        let o = job_outcome(&finished_job("a", true, 100), &[pod("a", &ok)]).unwrap();
        assert_eq!(
            o.result,
            Outcome::Succeeded {
                object: "p/id/id_1.dump".into(),
                size: 1234,
                sha256: Some("ab".repeat(32)),
            }
        );
        let o = job_outcome(
            &finished_job("b", false, 200),
            &[pod("b", &fail), pod("a", &ok)],
        )
        .unwrap();
        assert_eq!(
            o.result,
            Outcome::Failed {
                reason: "StorageFailed".into(),
                message: "backup storage: bucket gone".into()
            }
        );
        // Logs instead of JSON (the runner died before writing it).
        let o = job_outcome(
            &finished_job("c", false, 300),
            &[pod("c", "starting\nthread panicked: boom\n")],
        )
        .unwrap();
        assert!(
            matches!(&o.result, Outcome::Failed { reason, message } if reason == "JobFailed" && message.contains("boom")),
            "{o:?}"
        );
        // No pod left.
        let o = job_outcome(&finished_job("d", false, 400), &[]).unwrap();
        assert!(
            matches!(&o.result, Outcome::Failed { message, .. } if message.contains("BackoffLimitExceeded"))
        );
        // Still running.
        assert!(job_outcome(&Job::default(), &[]).is_none());
    }

    #[test]
    fn folding_keeps_the_newest_and_reports_new_failures_once() {
        let at = |s| Timestamp::from_second(s).unwrap();
        let outcomes = vec![
            JobOutcome {
                job: "j1".into(),
                finished: at(100),
                result: Outcome::Succeeded {
                    object: "o1".into(),
                    size: 1,
                    sha256: None,
                },
            },
            JobOutcome {
                job: "j2".into(),
                finished: at(200),
                result: Outcome::Failed {
                    reason: "DumpFailed".into(),
                    message: "m".into(),
                },
            },
        ];
        let (s, new) = fold_outcomes(None, &outcomes);
        assert_eq!(s.last_success.as_ref().unwrap().object, "o1");
        assert_eq!(new.len(), 1);
        assert_eq!(health(&s, true, false).1, "BackupFailed");
        let (again, new) = fold_outcomes(Some(&s), &outcomes);
        assert!(new.is_empty(), "the same failure is not reported twice");
        assert_eq!(again, s);
        let mut later = outcomes.clone();
        later.push(JobOutcome {
            job: "j3".into(),
            finished: at(300),
            result: Outcome::Succeeded {
                object: "o3".into(),
                size: 3,
                sha256: None,
            },
        });
        let (s, _) = fold_outcomes(Some(&s), &later);
        assert_eq!(s.last_success.as_ref().unwrap().object, "o3");
        assert_eq!(health(&s, true, false).0, "True");
        assert_eq!(health(&s, false, false).1, "NoBackupStorage");
        assert_eq!(health(&BackupStatus::default(), true, false).0, "Unknown");
    }
}
