//! Fleet migrations: the storage spec's section 5.2 loop ("for each school database,
//! apply pending migrations"), with bounded concurrency and progress reports.
//!
//! The controller does the same per School on every reconcile (so a new operator version
//! migrates the fleet at its reconcile concurrency); this is the command-line path,
//! `edumind-operator migrate --all`, which needs only the server's admin URL.
//!
//! With a [`FleetBackup`] (`--backup-storage`), a database whose schema is about to move
//! to a newer version is first backed up (a verified dump, as the `backup` command takes
//! it, with the admin's credentials); when that backup fails, its migration is held back
//! and reported as failed. Databases already current, and new ones without any schema,
//! are not backed up.

use futures::StreamExt;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection};

use crate::backup::{self, BackupError, BackupJob, BackupStore, ConnectionInfo, PgTools};
use crate::pg::{self, MigrationOutcome, PgError};

/// Backups before schema changes in [`migrate_all`].
pub struct FleetBackup {
    pub tools: PgTools,
    pub store: BackupStore,
    pub retention_days: u32,
    /// Host, port and admin credentials; the database name is set per database.
    pub admin: ConnectionInfo,
}

/// Why a database was not migrated.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error(transparent)]
    Pg(#[from] PgError),
    #[error("backup before the schema change failed, migration held back: {0}")]
    Backup(#[source] BackupError),
}

/// One database's result.
#[derive(Debug)]
pub struct Progress {
    pub done: usize,
    pub total: usize,
    pub database: String,
    pub result: Result<MigrationOutcome, FleetError>,
    /// The dump taken before the migration, if one was.
    pub backup: Option<String>,
}

impl std::fmt::Display for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}/{}] {}: ", self.done, self.total, self.database)?;
        match &self.result {
            Ok(o) if o.changed() => {
                write!(f, "migrated {} -> {}", o.before.unwrap_or(0), o.after)?;
                match &self.backup {
                    Some(object) => write!(f, " (backup {object})"),
                    None => Ok(()),
                }
            }
            Ok(o) => write!(f, "up to date at {}", o.after),
            Err(e) => write!(f, "FAILED: {e}"),
        }
    }
}

/// The role that owns a claimed database's tables, which migrations run as: school
/// databases and their roles share one name (see `naming`); the self-service database
/// belongs to its owner role.
fn owner_role<'a>(database: &'a str, claim: &pg::Claim) -> &'a str {
    if claim.kind == "selfservice" {
        crate::selfservice::OWNER_ROLE
    } else {
        database
    }
}

/// Migrates every database the operator claimed on the server behind `admin` (school
/// databases; each as its own role), at most `concurrency` at a time. Calls `report` once
/// per database as it finishes and returns how many failed.
pub async fn migrate_all(
    admin: &PgConnectOptions,
    backup: Option<&FleetBackup>,
    concurrency: usize,
    mut report: impl FnMut(&Progress),
) -> Result<usize, PgError> {
    let mut conn = admin.connect().await.map_err(|source| PgError::Sql {
        step: "connect to the server",
        source,
    })?;
    let claimed = pg::claimed_databases(&mut conn).await?;
    let _ = conn.close().await;
    let total = claimed.len();
    let mut failed = 0;
    let mut stream =
        futures::stream::iter(claimed.into_iter().map(|(database, claim)| async move {
            let (result, backup) = migrate_one(admin, &database, &claim, backup).await;
            (database, result, backup)
        }))
        .buffer_unordered(concurrency.max(1));
    let mut done = 0;
    while let Some((database, result, backup)) = stream.next().await {
        done += 1;
        failed += usize::from(result.is_err());
        report(&Progress {
            done,
            total,
            database,
            result,
            backup,
        });
    }
    Ok(failed)
}

/// Backs `database` up first when its schema is about to change and `backup` is set,
/// then migrates it.
async fn migrate_one(
    admin: &PgConnectOptions,
    database: &str,
    claim: &pg::Claim,
    backup: Option<&FleetBackup>,
) -> (Result<MigrationOutcome, FleetError>, Option<String>) {
    let mut object = None;
    if let Some(b) = backup {
        let before = match pg::schema_version(admin, database).await {
            Ok(v) => v,
            Err(e) => return (Err(e.into()), None),
        };
        if before.is_some_and(|v| v < edumind_schema::latest_version()) {
            let mut conn = b.admin.clone();
            conn.dbname = database.to_string();
            let job = BackupJob {
                school_id: claim.school_id.clone(),
                retention_days: b.retention_days,
                work_dir: None,
            };
            match backup::run_backup(&b.tools, &conn, &b.store, &job, chrono::Utc::now()).await {
                Ok(report) => object = Some(report.object),
                Err(e) => return (Err(FleetError::Backup(e)), None),
            }
        }
    }
    let result = pg::migrate_database(admin, database, owner_role(database, claim)).await;
    (result.map_err(FleetError::from), object)
}
