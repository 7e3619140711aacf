//! Pure builders: the runner's pod template, and the CronJob and Jobs made from it.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{CronJob, CronJobSpec, Job, JobSpec, JobTemplateSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec, PodTemplateSpec,
    ResourceRequirements, SeccompProfile, SecretKeySelector, SecretVolumeSource, SecurityContext,
    Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use super::{
    ANNOTATION_SCHOOL, BACKUP_DIR, BackupConfig, CONTAINER, RUN_AS, Run, RunnerInputs, SECRET_DIR,
    WORK_DIR, labels,
};

pub(crate) fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

pub(crate) fn env_from_secret(name: &str, secret: &str, key: &str) -> EnvVar {
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

pub(crate) fn school_annotation(inputs: &RunnerInputs) -> BTreeMap<String, String> {
    BTreeMap::from([(ANNOTATION_SCHOOL.to_string(), inputs.school_name.clone())])
}

pub(crate) fn run_kind(run: &Run) -> &'static str {
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
    } else if let Some(azure) = &inputs.storage.azure {
        let prefix = azure.prefix.as_deref().unwrap_or("").trim_matches('/');
        env_vars.push(env(
            "EDUMIND_BACKUP_STORAGE",
            format!("azure://{}/{}/{prefix}", azure.account, azure.container),
        ));
        if let Some(endpoint) = &azure.endpoint {
            env_vars.push(env("EDUMIND_AZURE_ENDPOINT", endpoint));
        }
        if let Some(creds) = &azure.credentials {
            let (var, key) = creds.env_and_key();
            env_vars.push(env_from_secret(var, &creds.secret_name, key));
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

pub(crate) fn job_spec(config: &BackupConfig, inputs: &RunnerInputs) -> JobSpec {
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
