//! The `SchoolBackup` controller: one verified backup now, in a Job from the scheduled
//! backups' pod template, with the outcome in its status.

use edumind_crds::status::{OperationPhase, OperationReason};
use std::sync::Arc;

use edumind_crds::{SchoolBackup, SchoolBackupStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};

use crate::backupjobs::{self, Outcome, Run, RunnerInputs};
use crate::school::OperatorContext;

use super::{
    OpError, POLL, Target, apply_status, create_job, is_terminal, job_and_pods, now, permanent,
    publish, target,
};

/// Name of the Job of a SchoolBackup.
pub fn backup_job_name(backup: &str) -> String {
    backupjobs::child_name(backup, "-backup", 63)
}

pub(crate) async fn patch_backup_status(
    sb: &SchoolBackup,
    ctx: &OperatorContext,
    status: &SchoolBackupStatus,
) -> Result<(), OpError> {
    apply_status(
        sb,
        sb.status.as_ref(),
        status,
        ctx,
        "update the SchoolBackup's status",
    )
    .await
}

/// Reconciles one SchoolBackup: start its Job once, then follow it to the end.
pub async fn reconcile_backup(
    sb: Arc<SchoolBackup>,
    ctx: Arc<OperatorContext>,
) -> Result<Action, OpError> {
    let old = sb.status.clone().unwrap_or_default();
    if is_terminal(old.phase.as_deref()) {
        return Ok(Action::await_change());
    }
    let namespace = sb.namespace().unwrap_or_default();
    let mut status = old.clone();
    let step = backup_step(&sb, &ctx, &namespace, &mut status).await;
    let action = match step {
        Ok(action) => action,
        Err(e) if e.is_permanent() => {
            status.phase = Some(OperationPhase::Failed.into());
            status.reason = Some(e.reason().into());
            status.message = Some(e.to_string());
            status.completed = Some(now());
            Action::await_change()
        }
        Err(e) => return Err(e),
    };
    patch_backup_status(&sb, &ctx, &status).await?;
    if status.phase != old.phase && is_terminal(status.phase.as_deref()) {
        let (type_, reason) = if status.phase.as_deref() == Some(OperationPhase::Succeeded.as_str())
        {
            (EventType::Normal, OperationReason::BackupSucceeded.as_str())
        } else {
            (EventType::Warning, OperationReason::BackupFailed.as_str())
        };
        let note = status.message.clone().unwrap_or_default();
        publish(&ctx, sb.as_ref(), type_, reason, note).await;
    }
    Ok(action)
}

pub(crate) async fn backup_step(
    sb: &SchoolBackup,
    ctx: &OperatorContext,
    namespace: &str,
    status: &mut SchoolBackupStatus,
) -> Result<Action, OpError> {
    let job_name = backup_job_name(&sb.name_any());
    if let Some((job, pods)) = job_and_pods(ctx, namespace, &job_name, sb.uid()).await? {
        status.job = Some(job_name.clone());
        status.started = status.started.take().or_else(|| Some(now()));
        match backupjobs::job_outcome(&job, &pods) {
            None => {
                status.phase = Some(OperationPhase::Running.into());
                status.reason = Some(OperationReason::JobRunning.into());
                status.message = Some(format!("backup Job {job_name} is running"));
                return Ok(Action::requeue(POLL));
            }
            Some(o) => {
                status.completed = Some(Time(o.finished));
                match o.result {
                    Outcome::Succeeded {
                        object,
                        size,
                        sha256,
                    } => {
                        status.phase = Some(OperationPhase::Succeeded.into());
                        status.reason = Some(OperationReason::BackupSucceeded.into());
                        status.message = Some(format!("stored and verified {object}"));
                        status.object = Some(object);
                        status.size = Some(i64::try_from(size).unwrap_or(i64::MAX));
                        status.sha256 = sha256;
                    }
                    Outcome::SucceededUnknown => {
                        status.phase = Some(OperationPhase::Succeeded.into());
                        status.reason = Some(OperationReason::BackupSucceeded.into());
                        status.message = Some(format!(
                            "Job {job_name} completed; its Pod (and the object name) is gone"
                        ));
                    }
                    Outcome::Failed { reason, message } => {
                        status.phase = Some(OperationPhase::Failed.into());
                        status.reason = Some(reason);
                        status.message = Some(message);
                    }
                }
                return Ok(Action::await_change());
            }
        }
    }
    let (school, desired, storage) = match target(ctx, namespace, &sb.spec.school).await? {
        Target::Ready {
            school,
            desired,
            storage,
        } => (school, desired, storage),
        Target::NotReady(message) => {
            status.phase = Some(OperationPhase::Pending.into());
            status.reason = Some(OperationReason::SchoolNotReady.into());
            status.message = Some(message);
            return Ok(Action::requeue(POLL));
        }
    };
    if !school.spec.active {
        return Err(permanent(
            "SchoolInactive",
            format!(
                "School {} is inactive (spec.active is false): backups run as the school's role, which cannot log in",
                sb.spec.school
            ),
        ));
    }
    let inputs = RunnerInputs {
        school_name: desired.name.clone(),
        school_id: desired.school_id.to_string(),
        secret_name: desired.secret_name.clone(),
        storage: *storage,
        run: Run::Backup {
            kind: "on-demand",
            retention_days: school.spec.backup.retention_days,
        },
    };
    let job = backupjobs::job(
        &job_name,
        namespace,
        sb.controller_owner_ref(&()),
        &ctx.backup,
        &inputs,
    );
    create_job(ctx, namespace, &job).await?;
    status.phase = Some(OperationPhase::Running.into());
    status.reason = Some(OperationReason::JobStarted.into());
    status.message = Some(format!("backup Job {job_name} started"));
    status.job = Some(job_name);
    status.started = Some(now());
    Ok(Action::requeue(POLL))
}

// ---- SchoolRestore -----------------------------------------------------------------
