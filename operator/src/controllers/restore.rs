//! The `SchoolRestore` controller: the restore protocol described in the module above
//! (block logins, restore in a Job, give logins back).

use edumind_crds::status::{OperationPhase, OperationReason};
use std::sync::Arc;
use std::time::Duration;

use edumind_crds::connection::keys;
use edumind_crds::{School, SchoolRestore, SchoolRestoreStatus};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::backupjobs::{self, Outcome, Run, RunnerInputs};
use crate::credentials::{generate_password, scram_verifier};
use crate::naming;
use crate::pg::{self, PgError};
use crate::school::{self, FIELD_MANAGER, OperatorContext};

use super::{
    OpError, POLL, Target, apply_status, create_job, is_terminal, job_and_pods, kube, now,
    permanent, publish, target,
};

/// Finalizer of a SchoolRestore: its restore role is dropped before it goes.
pub const RESTORE_FINALIZER: &str = "edumind.ai/restore";

/// How long a restore role may log in at most.
pub const RESTORE_ROLE_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// Name of the Job of a SchoolRestore.
pub fn restore_job_name(restore: &str) -> String {
    backupjobs::child_name(restore, "-restore", 63)
}

/// Name of the temporary credentials Secret of a SchoolRestore.
pub fn restore_secret_name(restore: &str) -> String {
    backupjobs::child_name(restore, "-restore-credentials", 253)
}

/// The restore role of a SchoolRestore: `edumind_school_restore_<uid hex>` (55 bytes,
/// passes the identifier allowlist).
pub fn restore_role_name(uid: &str) -> Result<String, OpError> {
    let hex: String = uid
        .chars()
        .filter(char::is_ascii_hexdigit)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let name = format!("{}restore_{hex}", naming::SCHOOL_PREFIX);
    if hex.len() != 32 || !naming::is_generated_identifier(&name) {
        return Err(permanent(
            "InvalidRequest",
            "the SchoolRestore has no usable uid".into(),
        ));
    }
    Ok(name)
}

pub(crate) async fn patch_restore_status(
    sr: &SchoolRestore,
    ctx: &OperatorContext,
    status: &SchoolRestoreStatus,
) -> Result<(), OpError> {
    apply_status(
        sr,
        sr.status.as_ref(),
        status,
        ctx,
        "update the SchoolRestore's status",
    )
    .await
}

/// Reconciles one SchoolRestore (see the module docs for the protocol).
pub async fn reconcile_restore(
    sr: Arc<SchoolRestore>,
    ctx: Arc<OperatorContext>,
) -> Result<Action, OpError> {
    let old = sr.status.clone().unwrap_or_default();
    let namespace = sr.namespace().unwrap_or_default();
    let has_finalizer = sr.finalizers().iter().any(|f| f == RESTORE_FINALIZER);
    if sr.metadata.deletion_timestamp.is_some() {
        // Deleted while it may hold the school: clean up, then let logins back.
        if has_finalizer {
            finish_restore(&sr, &ctx, &namespace).await?;
            set_finalizer(&sr, &ctx, false).await?;
        }
        release_logins(&ctx, &namespace, &sr.spec.school).await?;
        return Ok(Action::await_change());
    }
    if is_terminal(old.phase.as_deref()) {
        if has_finalizer {
            set_finalizer(&sr, &ctx, false).await?;
        }
        return Ok(Action::await_change());
    }
    if !has_finalizer {
        set_finalizer(&sr, &ctx, true).await?;
    }
    let mut status = old.clone();
    let step = restore_step(&sr, &ctx, &namespace, &mut status).await;
    let action = match step {
        Ok(action) => action,
        Err(e) if e.is_permanent() => {
            // Give back anything this restore took before ending it.
            finish_restore(&sr, &ctx, &namespace).await?;
            status.phase = Some(OperationPhase::Failed.into());
            status.reason = Some(e.reason().into());
            status.message = Some(e.to_string());
            status.completed = Some(now());
            Action::await_change()
        }
        Err(e) => return Err(e),
    };
    patch_restore_status(&sr, &ctx, &status).await?;
    if is_terminal(status.phase.as_deref()) {
        // After the terminal status is written, no School reconcile blocks logins for
        // this restore any more; give them back now (the School reconcile would too).
        release_logins(&ctx, &namespace, &sr.spec.school).await?;
        set_finalizer(&sr, &ctx, false).await?;
    }
    if status.phase != old.phase && is_terminal(status.phase.as_deref()) {
        let (type_, reason) = if status.phase.as_deref() == Some(OperationPhase::Succeeded.as_str())
        {
            (
                EventType::Normal,
                OperationReason::RestoreSucceeded.as_str(),
            )
        } else {
            (EventType::Warning, OperationReason::RestoreFailed.as_str())
        };
        let note = status.message.clone().unwrap_or_default();
        publish(&ctx, sr.as_ref(), type_, reason, note).await;
    }
    Ok(action)
}

pub(crate) async fn restore_step(
    sr: &SchoolRestore,
    ctx: &OperatorContext,
    namespace: &str,
    status: &mut SchoolRestoreStatus,
) -> Result<Action, OpError> {
    let name = sr.name_any();
    let (school, desired, storage) = match target(ctx, namespace, &sr.spec.school).await? {
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
    // One restore per School at a time: the oldest goes first.
    let restores: Api<SchoolRestore> = Api::namespaced(ctx.client.clone(), namespace);
    let others = restores
        .list(&ListParams::default())
        .await
        .map_err(kube("list SchoolRestores"))?;
    let mine = (sr.metadata.creation_timestamp.clone(), name.clone());
    if let Some(first) = others
        .items
        .iter()
        .filter(|r| r.spec.school == sr.spec.school && r.is_active())
        .map(|r| (r.metadata.creation_timestamp.clone(), r.name_any()))
        .filter(|other| other.1 != name)
        .find(|other| {
            (other.0.as_ref().map(|t| t.0), &other.1) < (mine.0.as_ref().map(|t| t.0), &mine.1)
        })
    {
        status.phase = Some(OperationPhase::Pending.into());
        status.reason = Some(OperationReason::WaitingForRestore.into());
        status.message = Some(format!("waiting for SchoolRestore {} to finish", first.1));
        return Ok(Action::requeue(POLL));
    }
    let job_name = restore_job_name(&name);
    let restore_role = restore_role_name(&sr.uid().unwrap_or_default())?;

    if let Some((job, pods)) = job_and_pods(ctx, namespace, &job_name, sr.uid()).await? {
        status.job = Some(job_name.clone());
        let Some(o) = backupjobs::job_outcome(&job, &pods) else {
            // Re-assert the block: a School reconcile that read the restores before this
            // one existed may have re-enabled logins since.
            let mut conn = ctx.admin_conn(&desired.server).await?;
            if pg::role_state(&mut conn, &desired.role)
                .await?
                .is_some_and(|r| r.can_login)
            {
                pg::reset_role_attributes(&mut conn, &desired.role, false).await?;
                pg::terminate_role_sessions(&mut conn, &desired.role).await?;
            }
            drop(conn);
            status.phase = Some(OperationPhase::Restoring.into());
            status.reason = Some(OperationReason::JobRunning.into());
            status.message = Some(format!(
                "restore Job {job_name} is running; logins of the school are blocked"
            ));
            return Ok(Action::requeue(POLL));
        };
        finish_restore(sr, ctx, namespace).await?;
        status.completed = Some(now());
        match o.result {
            Outcome::Succeeded { object, size, .. } => {
                status.phase = Some(OperationPhase::Succeeded.into());
                status.reason = Some(OperationReason::Restored.into());
                status.message = Some(format!(
                    "restored {object}; logins are back as spec.active says"
                ));
                status.object = Some(object);
                status.size = Some(i64::try_from(size).unwrap_or(i64::MAX));
            }
            Outcome::SucceededUnknown => {
                status.phase = Some(OperationPhase::Succeeded.into());
                status.reason = Some(OperationReason::Restored.into());
                status.message = Some(format!("restore Job {job_name} completed"));
            }
            Outcome::Failed { reason, message } => {
                status.phase = Some(OperationPhase::Failed.into());
                status.reason = Some(reason);
                status.message = Some(format!(
                    "{message}; the database was left unchanged and logins are back"
                ));
            }
        }
        return Ok(Action::await_change());
    }

    // Block logins. Record the phase first, so that a crash after this point still has
    // the School reconciler keep logins off (any non-finished restore does).
    if status.phase.as_deref() != Some(OperationPhase::BlockingLogins.as_str()) {
        status.phase = Some(OperationPhase::BlockingLogins.into());
        status.reason = Some(OperationPhase::BlockingLogins.into());
        status.message = Some("ending the school's sessions and blocking its logins".into());
        status.started = Some(now());
        patch_restore_status(sr, ctx, status).await?;
    }
    let mut conn = ctx.admin_conn(&desired.server).await?;
    pg::reset_role_attributes(&mut conn, &desired.role, false).await?;
    pg::terminate_role_sessions(&mut conn, &desired.role).await?;

    // The restore role and its temporary Secret (fresh password each time: only reached
    // while no Job exists yet).
    let password = generate_password();
    let verifier = scram_verifier(&password).ok_or(PgError::Verifier)?;
    let until = Timestamp::now()
        .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(
            RESTORE_ROLE_LIFETIME.as_secs() as i64,
        ))
        .unwrap_or_else(|_| Timestamp::now());
    pg::ensure_restore_role(
        &mut conn,
        &restore_role,
        &desired.role,
        &verifier,
        &until.to_string(),
    )
    .await?;
    drop(conn);
    let server = &desired.server;
    let secret_name = restore_secret_name(&name);
    let data = [
        (keys::HOST, server.client_host().to_string()),
        (keys::PORT, server.client_port().to_string()),
        (keys::DBNAME, desired.database.clone()),
        (keys::USERNAME, restore_role.clone()),
        (keys::PASSWORD, password.expose().to_string()),
    ]
    .into_iter()
    .chain(tls_keys(ctx.tls(server).await?.as_ref()))
    .map(|(k, v)| (k.to_string(), ByteString(v.into_bytes())))
    .collect();
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(secret_name.clone()),
            namespace: Some(namespace.into()),
            // Deliberately not `app.kubernetes.io/managed-by=edumind-operator`: the data
            // plane reads every Secret with that label as a tenant.
            labels: Some(
                [(
                    "app.kubernetes.io/component".to_string(),
                    "edumind-restore-credentials".to_string(),
                )]
                .into(),
            ),
            owner_references: sr.controller_owner_ref(&()).map(|o| vec![o]),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(data),
        ..Default::default()
    };
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    secrets
        .patch(
            &secret_name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&secret),
        )
        .await
        .map_err(kube("write the restore credentials Secret"))?;

    let inputs = RunnerInputs {
        school_name: school.name_any(),
        school_id: desired.school_id.to_string(),
        secret_name,
        storage: *storage,
        run: Run::Restore {
            object: sr.spec.backup.clone(),
            role: desired.role.clone(),
        },
    };
    let job = backupjobs::job(
        &job_name,
        namespace,
        sr.controller_owner_ref(&()),
        &ctx.backup,
        &inputs,
    );
    create_job(ctx, namespace, &job).await?;
    status.phase = Some(OperationPhase::Restoring.into());
    status.reason = Some(OperationReason::JobStarted.into());
    status.message = Some(format!(
        "restore Job {job_name} started; logins of the school are blocked"
    ));
    status.job = Some(job_name);
    Ok(Action::requeue(POLL))
}

/// Adds or removes [`RESTORE_FINALIZER`] (a JSON patch guarded by a test of the index).
pub(crate) async fn set_finalizer(
    sr: &SchoolRestore,
    ctx: &OperatorContext,
    present: bool,
) -> Result<(), OpError> {
    let api: Api<SchoolRestore> =
        Api::namespaced(ctx.client.clone(), &sr.namespace().unwrap_or_default());
    // Re-read: an earlier step of this reconcile may have changed the object.
    let Some(current) = api
        .get_opt(&sr.name_any())
        .await
        .map_err(kube("read the SchoolRestore"))?
    else {
        return Ok(());
    };
    let finalizers = current.finalizers();
    let index = finalizers.iter().position(|f| f == RESTORE_FINALIZER);
    let patch = match (present, index) {
        (true, Some(_)) | (false, None) => return Ok(()),
        (true, None) if finalizers.is_empty() => {
            json!([{"op": "add", "path": "/metadata/finalizers", "value": [RESTORE_FINALIZER]}])
        }
        (true, None) => {
            json!([{"op": "add", "path": "/metadata/finalizers/-", "value": RESTORE_FINALIZER}])
        }
        (false, Some(i)) => {
            let path = format!("/metadata/finalizers/{i}");
            json!([{"op": "test", "path": path, "value": RESTORE_FINALIZER}, {"op": "remove", "path": path}])
        }
    };
    let patch: json_patch::Patch =
        serde_json::from_value(patch).map_err(|e| permanent("InvalidRequest", e.to_string()))?;
    api.patch(
        &sr.name_any(),
        &PatchParams::default(),
        &Patch::<()>::Json(patch),
    )
    .await
    .map_err(kube("update the SchoolRestore's finalizers"))?;
    Ok(())
}

/// Drops the restore role and deletes the temporary Secret (both idempotent).
pub(crate) async fn finish_restore(
    sr: &SchoolRestore,
    ctx: &OperatorContext,
    namespace: &str,
) -> Result<(), OpError> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    match secrets
        .delete(
            &restore_secret_name(&sr.name_any()),
            &DeleteParams::default(),
        )
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => return Err(kube("delete the restore credentials Secret")(e)),
    }
    let Ok(role) = restore_role_name(&sr.uid().unwrap_or_default()) else {
        return Ok(());
    };
    // The School (and so its server) may be gone; then so is anything to clean up there.
    let schools: Api<School> = Api::namespaced(ctx.client.clone(), namespace);
    let Some(school) = schools
        .get_opt(&sr.spec.school)
        .await
        .map_err(kube("read the School"))?
    else {
        return Ok(());
    };
    let Ok(desired) = school::validate(&school, &ctx.servers) else {
        return Ok(());
    };
    let mut conn = ctx.admin_conn(&desired.server).await?;
    pg::drop_role(&mut conn, &role).await?;
    Ok(())
}

/// The connection Secret's TLS keys (`sslmode`, `ca.crt`) for the restore Secret, so the
/// restore Job connects exactly as the school's own clients do.
fn tls_keys(tls: Option<&edumind_crds::connection::Tls>) -> Vec<(&'static str, String)> {
    let Some(tls) = tls else {
        return Vec::new();
    };
    let mut out = vec![(keys::SSLMODE, tls.mode.as_str().to_string())];
    if let Some(ca) = &tls.ca_pem {
        out.push((keys::CA_CRT, ca.clone()));
    }
    out
}

/// Gives the school's logins back when no restore holds them and the School is active.
pub(crate) async fn release_logins(
    ctx: &OperatorContext,
    namespace: &str,
    school: &str,
) -> Result<(), OpError> {
    let schools: Api<School> = Api::namespaced(ctx.client.clone(), namespace);
    let Some(school) = schools
        .get_opt(school)
        .await
        .map_err(kube("read the School"))?
    else {
        return Ok(());
    };
    if !school.spec.active
        || school
            .status
            .as_ref()
            .and_then(|s| s.role.as_ref())
            .is_none()
    {
        return Ok(());
    }
    if school::restore_in_progress(ctx, &school).await? {
        return Ok(());
    }
    let Ok(desired) = school::validate(&school, &ctx.servers) else {
        return Ok(());
    };
    let mut conn = ctx.admin_conn(&desired.server).await?;
    pg::reset_role_attributes(&mut conn, &desired.role, true).await?;
    Ok(())
}
