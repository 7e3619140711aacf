//! The School reconciler: validate (pure) → ensure role → ensure database → migrate →
//! publish the connection Secret → status and events. Deletion runs the reclaim policy
//! behind a finalizer that guards external state only.
//!
//! One module per step: `desired` (validate and build) → `apply` (with
//! `connection_secret`) → `status`; beside them `school_backups` (the CronJob and
//! results), `deletion` (reclaim policy), `finalizer`, `labels`, `context` (the shared
//! [`OperatorContext`]) and
//! `error`. This file holds the pipeline itself ([`reconcile`]).
//!
//! [`reconcile`] is what the controller calls; tests call it directly against the
//! in-memory API fake and a real PostgreSQL.

use edumind_crds::status::{BackupHealthReason, ConditionType, ReadyReason, SchoolPhase};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::Instrument;

use edumind_crds::{School, SchoolStatus};
use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;

use crate::pg::PgError;

mod apply;
mod connection_secret;
mod context;
mod deletion;
mod desired;
mod error;
mod finalizer;
mod labels;
mod school_backups;
mod status;

pub use apply::Applied;
pub use connection_secret::{connection_secret, endpoint};
pub(crate) use context::secret_value;
pub use context::{OperatorContext, TEST_OPERATOR_NAMESPACE};
pub use desired::{Desired, validate};
pub use error::{Error, error_policy};
pub use labels::{ANNOTATION_PAUSED, ANNOTATION_ROTATE, FIELD_MANAGER, FINALIZER, label_value};
pub use school_backups::{BackupView, restore_in_progress};
pub(crate) use school_backups::{OneOff, one_off_backup};
pub use status::next_status;

use labels::is_paused;

use apply::apply;
use deletion::cleanup;
use finalizer::add_finalizer;
use school_backups::ensure_backups;
use status::{condition, patch_status, publish, ready_condition};

/// How often a Ready School is re-checked for drift.
pub const RESYNC: Duration = Duration::from_secs(600);

/// How often a School whose final backup Job is still running is looked at again (the
/// Job watch normally wakes it sooner, when the Job ends).
pub const RUNNING_POLL: Duration = Duration::from_secs(15);

/// Reconciles one School. Permanent problems end as a status condition and `Ok`;
/// transient ones return `Err` for [`error_policy`] to retry.
pub async fn reconcile(school: Arc<School>, ctx: Arc<OperatorContext>) -> Result<Action, Error> {
    let started = Instant::now();
    // The reconcile's root span; its steps (validate, apply, backups, status) are children,
    // and every log line inside carries the School and the trace id.
    let span = tracing::info_span!(
        "reconcile",
        namespace = %school.namespace().unwrap_or_default(),
        school = %school.name_any(),
        trace_id = tracing::field::Empty,
    );
    edumind_telemetry::start_trace(&span, None);
    let result = reconcile_inner(&school, &ctx).instrument(span).await;
    ctx.metrics
        .duration
        .observe(started.elapsed().as_secs_f64());
    let label = match &result {
        Ok(_) => {
            ctx.backoff.succeeded(&crate::backoff::key(school.as_ref()));
            "ok".to_string()
        }
        Err(e) => {
            ctx.metrics.reconcile_failed(e.step(), e.reason().as_str());
            "error".to_string()
        }
    };
    ctx.metrics
        .reconciles
        .get_or_create(&crate::metrics::ResultLabels { result: label })
        .inc();
    result
}

/// Updates the School's series in the operator's metrics from the status just written.
fn observe(school: &School, status: &SchoolStatus, ready: bool, ctx: &OperatorContext) {
    let reason = status
        .conditions
        .iter()
        .find(|c| c.type_ == ConditionType::Ready.as_str())
        .map(|c| c.reason.as_str())
        .unwrap_or_default();
    let backup = status.backup.as_ref();
    let scheduled = backup.is_some_and(|b| b.cron_job.is_some()) && !school.spec.backup.suspend;
    let backup_interval = scheduled
        .then(|| school_backups::backup_interval(&school.spec.backup.schedule, chrono::Utc::now()))
        .flatten();
    ctx.metrics.observe_school(
        &school.uid().unwrap_or_default(),
        &crate::metrics::SchoolObservation {
            namespace: &school.namespace().unwrap_or_default(),
            name: &school.name_any(),
            ready,
            reason,
            created: school
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.as_second()),
            backup,
            backup_interval,
        },
    );
}

pub(crate) async fn reconcile_inner(
    school: &School,
    ctx: &OperatorContext,
) -> Result<Action, Error> {
    let uid = school.uid().unwrap_or_default();
    if is_paused(school) {
        let mut status = school.status.clone().unwrap_or_default();
        if !status
            .conditions
            .iter()
            .any(|c| c.type_ == ConditionType::Paused.as_str())
        {
            status.conditions.push(condition(
                ConditionType::Paused.as_str(),
                true,
                ReadyReason::PausedByAnnotation.as_str(),
                format!("{ANNOTATION_PAUSED} is \"true\": the operator changes nothing"),
                school.metadata.generation,
                &[],
            ));
            status.phase = Some(SchoolPhase::Paused.into());
            patch_status(school, ctx, &status).await?;
        }
        return Ok(Action::await_change());
    }
    if school.metadata.deletion_timestamp.is_some() {
        ctx.metrics.forget_school(&uid);
        return cleanup(school, ctx).await;
    }
    let updated;
    let school = if school.finalizers().iter().any(|f| f == FINALIZER) {
        school
    } else {
        updated = add_finalizer(school, ctx).await?;
        &updated
    };

    let validated = tracing::info_span!("validate").in_scope(|| validate(school, &ctx.servers));
    let (desired, result) = match validated {
        Ok(mut d) => {
            let result = match restore_in_progress(ctx, school).await {
                Ok(restoring) => {
                    if restoring {
                        d.restoring = true;
                        d.login = false;
                    }
                    apply(school, &d, ctx)
                        .instrument(tracing::info_span!("apply"))
                        .await
                }
                Err(e) => Err(e),
            };
            (Some(d), result)
        }
        Err(e) => (None, Err(e)),
    };
    if let (Err(Error::Pg(PgError::Sql { .. }) | Error::AdminCredentials(_)), Some(d)) =
        (&result, &desired)
    {
        ctx.forget_server(&d.server.name).await;
    }
    let mut status = next_status(school, desired.as_ref(), &result);
    let mut backup_error = None;
    let mut new_failures = Vec::new();
    if let (Ok(_), Some(d)) = (&result, &desired) {
        match ensure_backups(school, d, ctx)
            .instrument(tracing::info_span!("backups"))
            .await
        {
            Ok(view) => {
                status.last_backup = view
                    .status
                    .last_success
                    .as_ref()
                    .map(|s| s.time.clone())
                    .or(status.last_backup);
                status.backup = Some(view.status);
                status
                    .conditions
                    .retain(|c| c.type_ != ConditionType::BackupHealthy.as_str());
                status.conditions.push(view.condition);
                new_failures = view.new_failures;
            }
            Err(e) => backup_error = Some(e),
        }
    }
    let before = ready_condition(&school.status);
    patch_status(school, ctx, &status)
        .instrument(tracing::info_span!("status"))
        .await?;
    observe(school, &status, result.is_ok(), ctx);
    for f in &new_failures {
        publish(
            ctx,
            school,
            EventType::Warning,
            BackupHealthReason::BackupFailed.as_str(),
            "Backup",
            format!(
                "backup Job {} failed ({}): {}",
                f.job.as_deref().unwrap_or("?"),
                f.reason,
                f.message
            ),
        )
        .await;
    }

    match &result {
        Ok(applied) => {
            let after = ready_condition(&Some(status.clone()));
            if before != after {
                let note = status
                    .conditions
                    .first()
                    .map(|c| c.message.clone())
                    .unwrap_or_default();
                let reason = after.map(|a| a.1).unwrap_or_default();
                publish(ctx, school, EventType::Normal, &reason, "Reconcile", note).await;
            }
            if applied.rotated {
                publish(
                    ctx,
                    school,
                    EventType::Normal,
                    "PasswordRotated",
                    "RotatePassword",
                    "the school role's password was rotated and the Secret updated".into(),
                )
                .await;
            }
            if !applied.changes.is_empty() {
                tracing::info!(school = %school.name_any(), changes = ?applied.changes, "reconciled");
            }
            if let Some(e) = backup_error {
                return Err(e);
            }
            Ok(Action::requeue(RESYNC))
        }
        Err(e) if e.is_permanent() => {
            if before != ready_condition(&Some(status.clone())) {
                publish(
                    ctx,
                    school,
                    EventType::Warning,
                    e.reason().as_str(),
                    "Reconcile",
                    e.to_string(),
                )
                .await;
            }
            // Permanent: nothing to retry until the School (or an object it owns) changes.
            Ok(Action::await_change())
        }
        // Transient: `error_policy` retries with the School's backoff.
        Err(_) => result.map(|_| Action::await_change()),
    }
}
