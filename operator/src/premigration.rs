//! A verified backup before every schema change (storage spec: "take a manual backup
//! before running migrations").
//!
//! When a School's database is about to move to a newer schema version and backup
//! storage is configured, the reconcile first runs a backup Job (the runner, like a
//! SchoolBackup) and migrates only once that Job succeeded. While it runs, the School
//! reports `Ready=False` with reason `BackupBeforeMigration`; when it failed, the
//! migration waits with reason `BackupBeforeMigrationFailed` and a message saying why
//! (delete the failed Job to retry, or turn the gate off). The database keeps serving
//! at its old schema version meanwhile.
//!
//! On by default; off per School (`spec.backup.beforeMigration: false`) or for the whole
//! operator (`--backup-before-migration=false`). A database without any schema yet (a
//! new School) has nothing to lose and is never backed up first.

use edumind_crds::{PreMigrationBackup, School};

use crate::backupjobs;
use crate::school::{Desired, Error, OneOff, OperatorContext, one_off_backup};

/// The `edumind.ai/backup-kind` of these Jobs.
pub const KIND: &str = "premigration";

/// The Job that backs a School up before migrating it to `to_version`.
pub fn job_name(school: &str, to_version: i64) -> String {
    // Schema versions are 14-digit timestamps; keep the last 8 so names stay short.
    let short = to_version.rem_euclid(100_000_000);
    backupjobs::child_name(school, &format!("-premigrate-{short:08}"), 63)
}

/// Whether the gate applies: a schema change from the `current` version of a database
/// that has served (the School recorded a schema version in its status; one still being
/// provisioned has nothing to lose), with the gate on for this School and the operator.
pub fn wanted(school: &School, ctx: &OperatorContext, current: Option<i64>, latest: i64) -> bool {
    let served = school
        .status
        .as_ref()
        .is_some_and(|s| s.schema_version.is_some());
    ctx.backup.before_migration
        && school.spec.backup.before_migration.unwrap_or(true)
        && served
        && current.is_some_and(|v| v < latest)
}

/// Runs the gate. `Ok(Some(record))`: the backup succeeded, migrate. `Ok(None)`: no
/// backup storage is configured, migrate without one. `Err`: wait (the Job runs) or
/// fix something (it failed); the error says which.
pub async fn ensure(
    school: &School,
    d: &Desired,
    ctx: &OperatorContext,
    from_version: i64,
    to_version: i64,
) -> Result<Option<PreMigrationBackup>, Error> {
    let Some(storage) =
        backupjobs::resolve_storage(school.spec.backup.storage.as_ref(), &ctx.backup)
    else {
        return Ok(None);
    };
    let name = job_name(&d.name, to_version);
    if !d.login {
        return Err(Error::PreMigrationBackupFailed(format!(
            "schema version {to_version} waits for a backup, which runs as the school's role; that role cannot log in while spec.active is false (or a restore runs). Set active: true, or spec.backup.beforeMigration: false to migrate without a backup"
        )));
    }
    let record = |object: Option<String>| PreMigrationBackup {
        from_version,
        to_version,
        job: name.clone(),
        object,
    };
    match one_off_backup(school, d, ctx, &name, KIND, storage, true).await? {
        OneOff::Started => Err(Error::PreMigrationBackupRunning(format!(
            "backup Job {name} started: schema version {from_version} is backed up before the migration to {to_version}"
        ))),
        OneOff::Running => Err(Error::PreMigrationBackupRunning(format!(
            "backup Job {name} is running: the migration from schema version {from_version} to {to_version} starts once it succeeded"
        ))),
        OneOff::Foreign => Err(Error::PreMigrationBackupFailed(format!(
            "a Job {name} exists that is not this School's pre-migration backup; delete or rename it (the migration to {to_version} waits)"
        ))),
        OneOff::Succeeded { object, .. } => Ok(Some(record(object))),
        OneOff::Failed { reason, message } => Err(Error::PreMigrationBackupFailed(format!(
            "backup Job {name} failed ({reason}): {message}; the migration from schema version {from_version} to {to_version} waits. Fix the cause and delete the Job to retry, or set spec.backup.beforeMigration: false"
        ))),
    }
}
