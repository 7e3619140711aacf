//! Deletion: the reclaim policy (`retain`, `delete`, `snapshot` with a final backup)
//! behind the finalizer. The School is validated once per deletion.

use edumind_crds::status::{ReadyReason, SchoolPhase};
use edumind_crds::{ReclaimPolicy, School};
use k8s_openapi::api::batch::v1::Job;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;

use crate::backupjobs;
use crate::pg::{self, Claim, PgError};

use super::RUNNING_POLL;
use super::context::OperatorContext;
use super::desired::{Desired, validate};
use super::error::Error;
use super::finalizer::remove_finalizer;
use super::labels::FINALIZER;
use super::school_backups::kube_err;
use super::school_backups::{OneOff, one_off_backup};
use super::status::{next_status, patch_status, publish, ready_condition};

/// Runs the reclaim policy of a School being deleted, then releases the finalizer.
pub(crate) async fn cleanup(school: &School, ctx: &OperatorContext) -> Result<Action, Error> {
    if !school.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(Action::await_change());
    }
    match school.spec.reclaim_policy {
        ReclaimPolicy::Retain => {
            publish(
                ctx,
                school,
                EventType::Normal,
                "Retained",
                "Delete",
                "reclaimPolicy retain: the database and role are kept".into(),
            )
            .await;
        }
        ReclaimPolicy::Snapshot => {
            // Validated once: the final backup and the drop use the same desired state.
            let backed_up = match validate(school, &ctx.servers) {
                Ok(d) => final_backup(school, &d, ctx).await.map(|note| (d, note)),
                Err(e) => Err(e),
            };
            match backed_up {
                Ok((d, note)) => {
                    publish(
                        ctx,
                        school,
                        EventType::Normal,
                        "FinalBackupTaken",
                        "Delete",
                        note,
                    )
                    .await;
                    drop_and_report(
                        school,
                        Ok(d),
                        ctx,
                        "reclaimPolicy snapshot: final backup verified, the database and role were dropped",
                    )
                    .await?;
                }
                Err(e) if matches!(e, Error::Kube { .. } | Error::Pg(_)) => return Err(e),
                Err(e) => {
                    // Running, or failed: nothing is dropped, the finalizer stays.
                    let mut status = next_status(school, None, &Err(e));
                    status.phase = Some(SchoolPhase::Deleting.into());
                    let before = ready_condition(&school.status);
                    patch_status(school, ctx, &status).await?;
                    let after = ready_condition(&Some(status.clone()));
                    let failed = after
                        .as_ref()
                        .is_some_and(|a| a.1 == ReadyReason::FinalBackupFailed.as_str());
                    if failed && before != after {
                        let note = status
                            .conditions
                            .first()
                            .map(|c| c.message.clone())
                            .unwrap_or_default();
                        publish(
                            ctx,
                            school,
                            EventType::Warning,
                            ReadyReason::FinalBackupFailed.as_str(),
                            "Delete",
                            note,
                        )
                        .await;
                    }
                    // Failed: wait for a change (the Job removed for a retry, the policy
                    // changed); running: the Job watch wakes it, the poll is a safety net.
                    return Ok(if failed {
                        Action::await_change()
                    } else {
                        Action::requeue(RUNNING_POLL)
                    });
                }
            }
            if let Err(e) = delete_final_job(school, ctx).await {
                tracing::warn!(error = %e, "cannot delete the final backup Job");
            }
        }
        ReclaimPolicy::Delete => {
            drop_and_report(
                school,
                validate(school, &ctx.servers),
                ctx,
                "reclaimPolicy delete: the database and role were dropped",
            )
            .await?;
        }
    }
    remove_finalizer(school, ctx).await?;
    Ok(Action::await_change())
}

/// Drops database and role; a failure is written to status as `DeletionBlocked` and
/// its cause returned (so a transient cause is retried soon).
pub(crate) async fn drop_and_report(
    school: &School,
    desired: Result<Desired, Error>,
    ctx: &OperatorContext,
    note: &str,
) -> Result<(), Error> {
    let dropped = match desired {
        Ok(d) => drop_school(&d, ctx).await,
        Err(e) => Err(e),
    };
    if let Err(e) = dropped {
        let blocked = Err(Error::DeletionBlocked {
            source: Box::new(e),
        });
        patch_status(school, ctx, &next_status(school, None, &blocked)).await?;
        return blocked.map(|_| ()).map_err(|b| match b {
            Error::DeletionBlocked { source } => *source,
            other => other,
        });
    }
    publish(
        ctx,
        school,
        EventType::Normal,
        "Deleted",
        "Delete",
        note.into(),
    )
    .await;
    Ok(())
}

pub(crate) async fn drop_school(d: &Desired, ctx: &OperatorContext) -> Result<(), Error> {
    let handle = ctx.server(&d.server).await?;
    let mut conn = handle.pool.acquire().await.map_err(|e| PgError::Sql {
        step: "connect to the server",
        source: e,
    })?;
    let owner = d.claim().owner;
    let db = pg::database_state(&mut conn, &d.database, &d.role).await?;
    let role = pg::role_state(&mut conn, &d.role).await?;
    let ours = |c: Option<&Claim>| c.map(|c| &c.owner) == Some(&owner);
    if db.as_ref().is_some_and(|s| !ours(s.claim.as_ref()))
        || role.as_ref().is_some_and(|r| !ours(r.claim.as_ref()))
    {
        return Err(Error::Conflict(format!(
            "database or role {} belongs to another School; not dropping it",
            d.database
        )));
    }
    pg::drop_tenant(&mut conn, &d.database, &d.role).await?;
    Ok(())
}

/// `reclaimPolicy: snapshot`: takes the final backup in a Job (the runner needs the
/// School's storage mounted, which the operator pod does not have) and waits for it.
/// `Ok(note)` once a verified backup is stored; `FinalBackupRunning` while it runs;
/// `FinalBackupFailed` when it failed (nothing is dropped; deleting the failed Job
/// retries).
pub(crate) async fn final_backup(
    school: &School,
    d: &Desired,
    ctx: &OperatorContext,
) -> Result<String, Error> {
    if !d.recorded {
        return Ok("the School never had a database: nothing to back up".into());
    }
    let storage = backupjobs::resolve_storage(school.spec.backup.storage.as_ref(), &ctx.backup)
        .ok_or_else(|| {
            Error::FinalBackupFailed(
                "reclaimPolicy snapshot needs backup storage: set spec.backup.storage (or the operator's default storage), or change reclaimPolicy; nothing was dropped".into(),
            )
        })?;
    if !school.spec.active {
        return Err(Error::FinalBackupFailed(
            "the final backup runs as the school's role, which cannot log in while spec.active is false; set active: true or change reclaimPolicy; nothing was dropped".into(),
        ));
    }
    let name = backupjobs::final_job_name(&d.name);
    // No owner reference: the School is being deleted, and a foreground deletion would
    // remove the Job before it ran. The operator deletes it after the drop.
    match one_off_backup(school, d, ctx, &name, "final", storage, false).await? {
        OneOff::Started => Err(Error::FinalBackupRunning(format!(
            "reclaimPolicy snapshot: final backup Job {name} started; the database is dropped once it succeeded"
        ))),
        OneOff::Running => Err(Error::FinalBackupRunning(format!(
            "reclaimPolicy snapshot: final backup Job {name} is running; the database is dropped once it succeeded"
        ))),
        OneOff::Foreign => Err(Error::FinalBackupFailed(format!(
            "a Job {name} exists that is not this School's final backup; delete or rename it; nothing was dropped"
        ))),
        OneOff::Succeeded {
            object: Some(object),
            size,
        } => Ok(format!(
            "final backup {object} ({} bytes) stored and verified by Job {name}",
            size.unwrap_or(0)
        )),
        OneOff::Succeeded { object: None, .. } => Ok(format!(
            "final backup Job {name} completed (stored and verified)"
        )),
        OneOff::Failed { reason, message } => Err(Error::FinalBackupFailed(format!(
            "final backup Job {name} failed ({reason}): {message}; nothing was dropped. Fix the cause and delete the Job to retry, or change reclaimPolicy"
        ))),
    }
}

pub(crate) async fn delete_final_job(school: &School, ctx: &OperatorContext) -> Result<(), Error> {
    let jobs: Api<Job> =
        Api::namespaced(ctx.client.clone(), &school.namespace().unwrap_or_default());
    match jobs
        .delete(
            &backupjobs::final_job_name(&school.name_any()),
            &DeleteParams::background(),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(kube_err("delete the final backup Job")(e)),
    }
}
