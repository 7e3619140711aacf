//! Reading outcomes back from finished Jobs and their Pods' termination messages, and
//! folding them into backup status and the `BackupHealthy` condition (pure).

use edumind_crds::status::{BackupHealthReason, OperationReason};
use edumind_crds::{BackupFailure, BackupRecord, BackupStatus};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use crate::backup::RunResult;

use super::{CONTAINER, LABEL_JOB_NAME, LABEL_JOB_NAME_LEGACY};

/// The outcome of a finished Job.
#[derive(Debug, Clone, PartialEq)]
pub struct JobOutcome {
    pub job: String,
    /// When the Job started (absent if Kubernetes did not record it).
    pub started: Option<Timestamp>,
    pub finished: Timestamp,
    pub result: Outcome,
}

impl JobOutcome {
    /// Whole seconds from the Job's start to its end, when both are known.
    pub fn duration_seconds(&self) -> Option<i64> {
        let started = self.started?;
        let secs = self.finished.duration_since(started).as_secs();
        Some(secs.max(0))
    }
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

pub(crate) fn job_condition<'a>(
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

pub(crate) fn pod_of(job_name: &str, pod: &Pod) -> bool {
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
pub(crate) fn last_termination(
    job_name: &str,
    pods: &[Pod],
) -> Option<(Option<Timestamp>, i32, String)> {
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
pub(crate) fn last_line(text: &str) -> String {
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
    let started = job
        .status
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .map(|t| t.0);
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
            reason: r
                .reason
                .unwrap_or_else(|| OperationReason::JobFailed.into()),
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
                reason: OperationReason::JobFailed.into(),
                message: detail,
            }
        }
    };
    Some(JobOutcome {
        job: name,
        started,
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
                        duration_seconds: o.duration_seconds(),
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
) -> (&'static str, BackupHealthReason, String) {
    if !storage {
        return (
            "False",
            BackupHealthReason::NoBackupStorage,
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
            BackupHealthReason::BackupFailed,
            format!("the last backup failed ({}): {}", f.reason, f.message),
        );
    }
    match (&status.last_success, suspended) {
        (_, true) => (
            "True",
            BackupHealthReason::Suspended,
            "scheduled backups are suspended".into(),
        ),
        (Some(s), _) => (
            "True",
            BackupHealthReason::BackupSucceeded,
            format!("last backup {} ({} bytes)", s.object, s.size),
        ),
        (None, _) => (
            "Unknown",
            BackupHealthReason::NoBackupYet,
            "no backup has finished yet".into(),
        ),
    }
}

/// A condition with a tri-state status, keeping the transition time while it holds.
pub fn tri_condition(
    type_: &str,
    (status, reason, message): (&str, BackupHealthReason, String),
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
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}
