//! The `SchoolBackup` (one backup now) and `SchoolRestore` (restore a stored backup)
//! reconcilers. Both run a Job from the same pod template as the scheduled backups
//! ([`crate::backupjobs`]) and report the outcome in their own status.
//!
//! Restore protocol (each step idempotent, so a crash anywhere converges):
//! 1. `BlockingLogins`: the school role becomes `NOLOGIN` and its sessions are ended (the
//!    School reconciler keeps it so while any SchoolRestore of the School is not
//!    finished); a short-lived restore role (`edumind_school_restore_<uid>`, member of the
//!    school role, `VALID UNTIL` one day) gets a fresh password, published in a temporary
//!    Secret owned by the SchoolRestore.
//! 2. `Restoring`: a Job runs `edumind-operator restore --role <school role>` with that
//!    Secret; `pg_restore --single-transaction` replaces everything or changes nothing.
//! 3. Finished (`Succeeded` or `Failed`): the restore role is dropped, the temporary
//!    Secret deleted, the outcome recorded, and logins are given back as `spec.active`
//!    says — also after a failure, so a school is never locked out by a restore.
//!
//! `backup` and `restore` hold the two controllers; this file what they share (errors,
//! the target School, Jobs and Pods, events, status apply, retry policy). The School
//! controller is [`crate::school`].

use std::sync::Arc;
use std::time::Duration;

use edumind_crds::{School, TERMINAL_PHASES};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::backupjobs::{self};
use crate::pg::PgError;
use crate::school::{self, Desired, FIELD_MANAGER, OperatorContext};

mod backup;
mod restore;

pub use backup::*;
pub use restore::*;

/// How often a running backup or restore is looked at (Job watches usually come first).
pub const POLL: Duration = Duration::from_secs(15);

/// Why a SchoolBackup/SchoolRestore reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// Problems the user must fix; they end the resource as `Failed`.
    #[error("{message}")]
    Permanent {
        reason: &'static str,
        message: String,
    },
    /// Retried with backoff (API or database unavailable).
    #[error(transparent)]
    Transient(#[from] school::Error),
}

impl OpError {
    pub fn is_permanent(&self) -> bool {
        matches!(self, OpError::Permanent { .. })
    }
    pub fn reason(&self) -> &'static str {
        match self {
            OpError::Permanent { reason, .. } => reason,
            OpError::Transient(e) => e.reason().as_str(),
        }
    }
}

impl From<PgError> for OpError {
    fn from(e: PgError) -> Self {
        OpError::Transient(school::Error::Pg(e))
    }
}

pub(crate) fn kube(step: &'static str) -> impl FnOnce(kube::Error) -> OpError {
    move |e| {
        OpError::Transient(school::Error::Kube {
            step,
            source: Box::new(e),
        })
    }
}

pub(crate) fn permanent(reason: &'static str, message: String) -> OpError {
    OpError::Permanent { reason, message }
}

pub(crate) fn now() -> Time {
    Time(Timestamp::now())
}

/// Everything a backup or restore of one School needs, or why it cannot run (yet).
pub(crate) enum Target {
    Ready {
        school: Box<School>,
        desired: Box<Desired>,
        storage: Box<edumind_crds::BackupStorage>,
    },
    /// The School exists but has no database yet.
    NotReady(String),
}

pub(crate) async fn target(
    ctx: &OperatorContext,
    namespace: &str,
    name: &str,
) -> Result<Target, OpError> {
    let schools: Api<School> = Api::namespaced(ctx.client.clone(), namespace);
    let school = schools
        .get_opt(name)
        .await
        .map_err(kube("read the School"))?
        .ok_or_else(|| {
            permanent(
                "SchoolNotFound",
                format!("School {name} not found in namespace {namespace}"),
            )
        })?;
    if school.metadata.deletion_timestamp.is_some() {
        return Err(permanent(
            "SchoolDeleting",
            format!("School {name} is being deleted"),
        ));
    }
    let desired = school::validate(&school, &ctx.servers).map_err(|e| {
        permanent(
            "SchoolInvalid",
            format!("School {name} cannot be used: {e}"),
        )
    })?;
    let status = school.status.clone().unwrap_or_default();
    if status.database.is_none() || status.secret_name.is_none() {
        return Ok(Target::NotReady(format!(
            "School {name} has no database yet; waiting for it to be provisioned"
        )));
    }
    let storage =
        backupjobs::resolve_storage(school.spec.backup.storage.as_ref(), &ctx.backup)
            .ok_or_else(|| {
                permanent(
                    "NoBackupStorage",
                    format!(
                        "School {name} has no backup storage: set spec.backup.storage or configure the operator's default storage"
                    ),
                )
            })?;
    Ok(Target::Ready {
        school: Box::new(school),
        desired: Box::new(desired),
        storage: Box::new(storage),
    })
}

/// The Job `name` and its Pods, if it exists and belongs to `owner_uid`.
pub(crate) async fn job_and_pods(
    ctx: &OperatorContext,
    namespace: &str,
    name: &str,
    owner_uid: Option<String>,
) -> Result<Option<(Job, Vec<Pod>)>, OpError> {
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), namespace);
    let Some(job) = jobs.get_opt(name).await.map_err(kube("read the Job"))? else {
        return Ok(None);
    };
    if !job
        .owner_references()
        .iter()
        .any(|o| Some(&o.uid) == owner_uid.as_ref())
    {
        return Err(permanent(
            "JobConflict",
            format!("a Job {name} exists that this resource did not create; delete or rename it"),
        ));
    }
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let pods = pods
        .list(&ListParams::default().labels(&format!("{}={name}", backupjobs::LABEL_JOB_NAME)))
        .await
        .map_err(kube("list the Job's Pods"))?;
    Ok(Some((job, pods.items)))
}

pub(crate) async fn create_job(
    ctx: &OperatorContext,
    namespace: &str,
    job: &Job,
) -> Result<(), OpError> {
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), namespace);
    jobs.patch(
        &job.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(job),
    )
    .await
    .map_err(kube("create the Job"))?;
    Ok(())
}

pub(crate) async fn publish<K: Resource<DynamicType = ()>>(
    ctx: &OperatorContext,
    obj: &K,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &obj.object_ref(&())).await {
        tracing::warn!(error = %e, "cannot publish event");
    }
}

pub(crate) fn is_terminal(phase: Option<&str>) -> bool {
    phase.is_some_and(|p| TERMINAL_PHASES.contains(&p))
}

// ---- SchoolBackup ------------------------------------------------------------------

/// Writes `status` of a SchoolBackup or SchoolRestore with server-side apply, only when it
/// differs from `current`.
pub(crate) async fn apply_status<K, S>(
    obj: &K,
    current: Option<&S>,
    status: &S,
    ctx: &OperatorContext,
    step: &'static str,
) -> Result<(), OpError>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned,
    S: serde::Serialize + PartialEq,
{
    if current == Some(status) {
        return Ok(());
    }
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    let patch = json!({"apiVersion": K::api_version(&()), "kind": K::kind(&()), "status": status});
    api.patch_status(
        &obj.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(kube(step))?;
    Ok(())
}

/// Retry policy of both controllers.
pub fn error_policy<K>(obj: Arc<K>, error: &OpError, ctx: Arc<OperatorContext>) -> Action
where
    K: kube::Resource<DynamicType = ()>,
{
    tracing::warn!(reason = error.reason(), error = %error, "backup/restore reconcile failed");
    if error.is_permanent() {
        Action::await_change()
    } else {
        Action::requeue(ctx.backoff.failed(&crate::backoff::key(obj.as_ref())))
    }
}

#[cfg(test)]
mod tests;
