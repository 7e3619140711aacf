//! Step 3, status: conditions, phase and events from the outcome.

use edumind_crds::status::{ConditionType, ReadyReason, SchoolPhase};
use edumind_crds::{School, SchoolStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::apply::Applied;
use super::context::OperatorContext;
use super::desired::Desired;
use super::error::Error;
use super::labels::FIELD_MANAGER;

pub(crate) fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    old: &[Condition],
) -> Condition {
    let status = if ok { "True" } else { "False" };
    // Keep the transition time unless the status flips.
    let last_transition_time = old
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| Time(k8s_openapi::jiff::Timestamp::now()));
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

pub(crate) fn ready_condition(status: &Option<SchoolStatus>) -> Option<(String, String)> {
    status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == ConditionType::Ready.as_str())
        .map(|c| (c.status.clone(), c.reason.clone()))
}

/// Builds the new status from the old one and the outcome (pure).
pub fn next_status(
    school: &School,
    d: Option<&Desired>,
    result: &Result<Applied, Error>,
) -> SchoolStatus {
    let old = school.status.clone().unwrap_or_default();
    let generation = school.metadata.generation;
    let mut s = old.clone();
    s.observed_generation = generation;
    if let Some(d) = d {
        s.school_id = Some(d.school_id.to_string());
        s.server = Some(d.server.name.clone());
    }
    let (ready, reason, message, phase) = match (result, d) {
        (Ok(applied), Some(d)) => {
            s.database = Some(d.database.clone());
            s.role = Some(d.role.clone());
            s.secret_name = Some(d.secret_name.clone());
            s.schema_version = Some(applied.schema_version);
            if applied.pre_migration_backup.is_some() {
                s.pre_migration_backup = applied.pre_migration_backup.clone();
            }
            if let Some(token) = &d.rotate {
                s.password_rotation = Some(token.clone());
            }
            if d.restoring {
                (
                    true,
                    ReadyReason::Restoring,
                    format!(
                        "database {} is provisioned; a SchoolRestore is running, logins are blocked until it ends",
                        d.database
                    ),
                    SchoolPhase::Restoring,
                )
            } else if d.login {
                (
                    true,
                    ReadyReason::Provisioned,
                    format!(
                        "database {} is ready at schema version {}",
                        d.database, applied.schema_version
                    ),
                    SchoolPhase::Ready,
                )
            } else {
                (
                    true,
                    ReadyReason::Inactive,
                    format!(
                        "database {} is provisioned; logins are disabled because spec.active is false",
                        d.database
                    ),
                    SchoolPhase::Inactive,
                )
            }
        }
        (Ok(_), None) => (
            false,
            ReadyReason::InvalidSpec,
            "no desired state".into(),
            SchoolPhase::Failed,
        ),
        (Err(e), _) => (
            false,
            e.reason(),
            e.to_string(),
            if e.is_permanent() {
                SchoolPhase::Failed
            } else {
                SchoolPhase::Pending
            },
        ),
    };
    let ready_cond = condition(
        ConditionType::Ready.as_str(),
        ready,
        reason.as_str(),
        message,
        generation,
        &old.conditions,
    );
    s.conditions.retain(|c| {
        c.type_ != ConditionType::Ready.as_str() && c.type_ != ConditionType::Paused.as_str()
    });
    s.conditions.insert(0, ready_cond);
    s.phase = Some(phase.into());
    s
}

pub(crate) async fn patch_status(
    school: &School,
    ctx: &OperatorContext,
    status: &SchoolStatus,
) -> Result<(), Error> {
    if school.status.as_ref() == Some(status) {
        return Ok(());
    }
    let api: Api<School> =
        Api::namespaced(ctx.client.clone(), &school.namespace().unwrap_or_default());
    let patch = json!({"apiVersion": "edumind.ai/v1alpha1", "kind": "School", "status": status});
    api.patch_status(
        &school.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(|e| Error::Kube {
        step: "update the School's status",
        source: Box::new(e),
    })?;
    Ok(())
}

pub(crate) async fn publish(
    ctx: &OperatorContext,
    school: &School,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &school.object_ref(&())).await {
        tracing::warn!(error = %e, "cannot publish event");
    }
}
