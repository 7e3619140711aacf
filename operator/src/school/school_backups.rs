//! A School's backups: its CronJob kept as the spec says, finished Jobs read back, and
//! whether a SchoolRestore is running.

use edumind_crds::connection::LABEL_SCHOOL_ID;
use edumind_crds::status::{BackupHealthReason, ConditionType};
use edumind_crds::{BackupStatus, School, SchoolRestore};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Resource, ResourceExt};

use crate::backupjobs::{self, RunnerInputs};

use super::context::OperatorContext;
use super::desired::Desired;
use super::error::Error;
use super::labels::FIELD_MANAGER;

/// Whether a SchoolRestore of this School has not finished yet (then its logins stay off).
pub async fn restore_in_progress(ctx: &OperatorContext, school: &School) -> Result<bool, Error> {
    let api: Api<SchoolRestore> =
        Api::namespaced(ctx.client.clone(), &school.namespace().unwrap_or_default());
    let restores = match api.list(&ListParams::default()).await {
        Ok(list) => list,
        // The SchoolRestore CRD is not installed: no restore can be running.
        Err(kube::Error::Api(e)) if e.code == 404 => return Ok(false),
        Err(e) => {
            return Err(Error::Kube {
                step: "list SchoolRestores",
                source: Box::new(e),
            });
        }
    };
    let name = school.name_any();
    Ok(restores
        .items
        .iter()
        .any(|r| r.spec.school == name && r.is_active()))
}

/// What the backup step found.
pub struct BackupView {
    pub status: BackupStatus,
    pub condition: Condition,
    pub new_failures: Vec<edumind_crds::BackupFailure>,
}

pub(crate) fn kube_err(step: &'static str) -> impl FnOnce(kube::Error) -> Error {
    move |e| Error::Kube {
        step,
        source: Box::new(e),
    }
}

/// Finished backup Jobs of a school (scheduled, on-demand, final) with their outcomes.
pub(crate) async fn backup_outcomes(
    ctx: &OperatorContext,
    namespace: &str,
    school_id: &str,
) -> Result<Vec<backupjobs::JobOutcome>, Error> {
    let selector = format!("{}={school_id}", LABEL_SCHOOL_ID);
    let lp = ListParams::default().labels(&selector);
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), namespace);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let jobs = jobs.list(&lp).await.map_err(kube_err("list backup Jobs"))?;
    let pods = pods.list(&lp).await.map_err(kube_err("list backup Pods"))?;
    Ok(jobs
        .items
        .iter()
        .filter(|j| j.labels().get(backupjobs::LABEL_KIND).map(String::as_str) != Some("restore"))
        .filter_map(|j| backupjobs::job_outcome(j, &pods.items))
        .collect())
}

/// Keeps the School's backup CronJob as the spec says and reads results back.
pub(crate) async fn ensure_backups(
    school: &School,
    d: &Desired,
    ctx: &OperatorContext,
) -> Result<BackupView, Error> {
    let spec = &school.spec.backup;
    let storage = backupjobs::resolve_storage(spec.storage.as_ref(), &ctx.backup);
    let cron_jobs: Api<CronJob> = Api::namespaced(ctx.client.clone(), &d.namespace);
    let name = backupjobs::cron_job_name(&d.name);
    let existing = cron_jobs
        .get_opt(&name)
        .await
        .map_err(kube_err("read the backup CronJob"))?;
    let suspended = spec.suspend || !d.login;
    let foreign = existing.as_ref().is_some_and(|e| {
        !e.owner_references()
            .iter()
            .any(|o| Some(&o.uid) == school.uid().as_ref())
    });
    match &storage {
        // Someone else's CronJob has our name: never take it over or delete it.
        _ if foreign => {}
        Some(storage) => {
            let inputs = RunnerInputs {
                school_name: d.name.clone(),
                school_id: d.school_id.to_string(),
                secret_name: d.secret_name.clone(),
                storage: storage.clone(),
                run: backupjobs::Run::Backup {
                    kind: "scheduled",
                    retention_days: spec.retention_days,
                },
            };
            let schedule = backupjobs::Schedule {
                schedule: spec.schedule.clone(),
                // Inactive or restoring schools cannot log in, and their data cannot change.
                suspend: suspended,
                retention_days: spec.retention_days,
            };
            let desired = backupjobs::cron_job(
                &name,
                &d.namespace,
                school.controller_owner_ref(&()),
                &ctx.backup,
                &schedule,
                &inputs,
            );
            if !existing
                .as_ref()
                .is_some_and(|e| backupjobs::cron_job_up_to_date(e, &desired))
            {
                cron_jobs
                    .patch(
                        &name,
                        &PatchParams::apply(FIELD_MANAGER).force(),
                        &Patch::Apply(&desired),
                    )
                    .await
                    .map_err(kube_err("apply the backup CronJob"))?;
            }
        }
        None => {
            // Storage removed (and no default): stop scheduling, keep the dumps.
            if existing.is_some() {
                cron_jobs
                    .delete(&name, &DeleteParams::background())
                    .await
                    .map_err(kube_err("delete the backup CronJob"))?;
            }
        }
    }
    let outcomes = backup_outcomes(ctx, &d.namespace, &d.school_id.to_string()).await?;
    let old = school.status.as_ref().and_then(|s| s.backup.as_ref());
    let (mut status, new_failures) = backupjobs::fold_outcomes(old, &outcomes);
    status.cron_job = storage.as_ref().filter(|_| !foreign).map(|_| name.clone());
    let old_conditions = school
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    let health = if foreign {
        (
            "False",
            BackupHealthReason::CronJobConflict,
            format!("CronJob {name} exists and is not this School's; rename or delete it"),
        )
    } else {
        backupjobs::health(&status, storage.is_some(), suspended)
    };
    let condition = backupjobs::tri_condition(
        ConditionType::BackupHealthy.as_str(),
        health,
        school.metadata.generation,
        &old_conditions,
    );
    Ok(BackupView {
        status,
        condition,
        new_failures,
    })
}

/// A one-off backup Job of a School (the final backup of a snapshot deletion, the backup
/// before a schema change): what [`one_off_backup`] found.
pub(crate) enum OneOff {
    /// The Job did not exist: it was created now.
    Started,
    /// The Job runs.
    Running,
    /// A verified dump was stored (`object` and `size` absent when the result could no
    /// longer be read from the finished Pod).
    Succeeded {
        object: Option<String>,
        size: Option<u64>,
    },
    Failed {
        reason: String,
        message: String,
    },
    /// A Job of that name exists that is not this School's backup of this kind: never
    /// read as ours.
    Foreign,
}

/// Runs the School's one-off backup Job `name` of `kind` (created on the first call,
/// read back on later ones) into `storage`. `owned`: whether the School owns the Job (a
/// School being deleted must not, or a foreground deletion removes the Job before it ran).
pub(crate) async fn one_off_backup(
    school: &School,
    d: &Desired,
    ctx: &OperatorContext,
    name: &str,
    kind: &'static str,
    storage: edumind_crds::BackupStorage,
    owned: bool,
) -> Result<OneOff, Error> {
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &d.namespace);
    let Some(job) = jobs
        .get_opt(name)
        .await
        .map_err(kube_err("read a one-off backup Job"))?
    else {
        let inputs = RunnerInputs {
            school_name: d.name.clone(),
            school_id: d.school_id.to_string(),
            secret_name: d.secret_name.clone(),
            storage,
            run: backupjobs::Run::Backup {
                kind,
                retention_days: school.spec.backup.retention_days,
            },
        };
        let owner = if owned {
            school.controller_owner_ref(&())
        } else {
            None
        };
        let job = backupjobs::job(name, &d.namespace, owner, &ctx.backup, &inputs);
        jobs.patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&job),
        )
        .await
        .map_err(kube_err("create a one-off backup Job"))?;
        return Ok(OneOff::Started);
    };
    let labels = job.labels();
    if labels.get(backupjobs::LABEL_KIND).map(String::as_str) != Some(kind)
        || labels.get(LABEL_SCHOOL_ID) != Some(&d.school_id.to_string())
    {
        return Ok(OneOff::Foreign);
    }
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &d.namespace);
    let pods = pods
        .list(&ListParams::default().labels(&format!("{}={name}", backupjobs::LABEL_JOB_NAME)))
        .await
        .map_err(kube_err("list a one-off backup Job's Pods"))?;
    Ok(
        match backupjobs::job_outcome(&job, &pods.items).map(|o| o.result) {
            None => OneOff::Running,
            Some(backupjobs::Outcome::Succeeded { object, size, .. }) => OneOff::Succeeded {
                object: Some(object),
                size: Some(size),
            },
            Some(backupjobs::Outcome::SucceededUnknown) => OneOff::Succeeded {
                object: None,
                size: None,
            },
            Some(backupjobs::Outcome::Failed { reason, message }) => {
                OneOff::Failed { reason, message }
            }
        },
    )
}

/// The longest gap, in seconds, between two of the next scheduled backups of a 5-field cron
/// `schedule` (UTC) after `from`: what "older than twice its schedule" is measured against
/// (`edumind_operator_backup_interval_seconds`). Uneven schedules (weekdays only, say) give
/// their longest gap. `None` when the expression does not parse.
pub fn backup_interval(schedule: &str, from: chrono::DateTime<chrono::Utc>) -> Option<i64> {
    use std::str::FromStr;
    let cron = croner::Cron::from_str(schedule).ok()?;
    let mut previous = from;
    let mut longest = None;
    // A month and a bit of occurrences covers weekly and monthly patterns; 64 bounds the
    // work for minutely ones.
    for next in cron.iter_after(from).take(64) {
        let gap = (next - previous).num_seconds();
        if previous != from {
            longest = Some(longest.map_or(gap, |l: i64| l.max(gap)));
        }
        previous = next;
        if (next - from).num_days() > 62 {
            break;
        }
    }
    longest
}

#[cfg(test)]
mod interval_tests {
    use super::backup_interval;
    use chrono::{TimeZone, Utc};

    #[test]
    fn the_interval_is_the_longest_gap_of_the_schedule() {
        // A Wednesday.
        let from = Utc.with_ymd_and_hms(2026, 12, 2, 12, 0, 0).unwrap();
        assert_eq!(backup_interval("0 2 * * *", from), Some(86_400));
        assert_eq!(backup_interval("*/15 * * * *", from), Some(900));
        assert_eq!(backup_interval("0 */6 * * *", from), Some(6 * 3600));
        // Weekdays only: Friday 02:00 to Monday 02:00.
        assert_eq!(backup_interval("0 2 * * 1-5", from), Some(3 * 86_400));
        assert_eq!(backup_interval("0 3 1 * *", from), Some(31 * 86_400));
        assert_eq!(backup_interval("not a schedule", from), None);
    }
}
