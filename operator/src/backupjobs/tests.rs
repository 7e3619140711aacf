use super::*;
use crate::backup::RunResult;
use edumind_crds::BackupStatus;
use edumind_crds::{AzureBlobStorage, AzureCredentialsSecret, S3CredentialsSecret, S3Storage};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::batch::v1::{JobCondition, JobStatus};
use k8s_openapi::api::core::v1::{Container, EnvVar, Pod};
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateTerminated, ContainerStatus, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;

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

fn azure(sas: bool) -> BackupStorage {
    BackupStorage {
        azure: Some(AzureBlobStorage {
            account: "edumindbackups".into(),
            container: "dumps".into(),
            prefix: Some("/prod/".into()),
            endpoint: Some("https://edumindbackups.privatelink.blob.core.windows.net".into()),
            credentials: Some(AzureCredentialsSecret {
                secret_name: "az-creds".into(),
                account_key_key: None,
                sas_token_key: sas.then(|| "sas".to_string()),
            }),
        }),
        ..Default::default()
    }
}

#[test]
fn azure_storage_reaches_the_runner_by_env_and_its_credential_by_secret_ref() {
    for (sas, var, key) in [
        (
            false,
            "AZURE_STORAGE_ACCOUNT_KEY",
            "AZURE_STORAGE_ACCOUNT_KEY",
        ),
        (true, "AZURE_STORAGE_SAS_TOKEN", "sas"),
    ] {
        let pod = pod_template(&BackupConfig::default(), &inputs(azure(sas)));
        let spec = pod.spec.unwrap();
        let c = &spec.containers[0];
        let env = env_of(c);
        assert_eq!(
            env["EDUMIND_BACKUP_STORAGE"].value.as_deref(),
            Some("azure://edumindbackups/dumps/prod")
        );
        assert_eq!(
            env["EDUMIND_AZURE_ENDPOINT"].value.as_deref(),
            Some("https://edumindbackups.privatelink.blob.core.windows.net")
        );
        let r = env[var]
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap();
        assert_eq!((r.name.as_str(), r.key.as_str()), ("az-creds", key));
        assert!(
            env[var].value.is_none(),
            "no credential literal in the pod spec"
        );
        assert!(
            c.args.is_none() && c.command.as_ref().unwrap().len() == 2,
            "nothing in argv"
        );
    }
    assert!(check_storage(&azure(true)).is_ok());
    let mut both = azure(false);
    both.s3 = s3().s3;
    assert!(check_storage(&both).unwrap_err().contains("exactly one"));
    let mut two_creds = azure(true);
    if let Some(c) = two_creds
        .azure
        .as_mut()
        .and_then(|a| a.credentials.as_mut())
    {
        c.account_key_key = Some("key".into());
    }
    assert!(
        check_storage(&two_creds)
            .unwrap_err()
            .contains("at most one")
    );
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
            started: Some(at(40)),
            finished: at(100),
            result: Outcome::Succeeded {
                object: "o1".into(),
                size: 1,
                sha256: None,
            },
        },
        JobOutcome {
            job: "j2".into(),
            started: None,
            finished: at(200),
            result: Outcome::Failed {
                reason: "DumpFailed".into(),
                message: "m".into(),
            },
        },
    ];
    let (s, new) = fold_outcomes(None, &outcomes);
    assert_eq!(s.last_success.as_ref().unwrap().object, "o1");
    assert_eq!(
        s.last_success.as_ref().unwrap().duration_seconds,
        Some(60),
        "the Job's run time, start to completion"
    );
    assert_eq!(new.len(), 1);
    assert_eq!(health(&s, true, false).1.as_str(), "BackupFailed");
    let (again, new) = fold_outcomes(Some(&s), &outcomes);
    assert!(new.is_empty(), "the same failure is not reported twice");
    assert_eq!(again, s);
    let mut later = outcomes.clone();
    later.push(JobOutcome {
        job: "j3".into(),
        started: None,
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
    assert_eq!(health(&s, false, false).1.as_str(), "NoBackupStorage");
    assert_eq!(health(&BackupStatus::default(), true, false).0, "Unknown");
}
