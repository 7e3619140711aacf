//! Fleet migrations: the storage spec's section 5.2 loop ("for each school database,
//! apply pending migrations"), with bounded concurrency and progress reports.
//!
//! The controller does the same per School on every reconcile (so a new operator version
//! migrates the fleet at its reconcile concurrency); this is the command-line path,
//! `edumind-operator migrate --all`, which needs only the server's admin URL.

use futures::StreamExt;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection};

use crate::pg::{self, MigrationOutcome, PgError};

/// One database's result.
#[derive(Debug)]
pub struct Progress {
    pub done: usize,
    pub total: usize,
    pub database: String,
    pub result: Result<MigrationOutcome, PgError>,
}

impl std::fmt::Display for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}/{}] {}: ", self.done, self.total, self.database)?;
        match &self.result {
            Ok(o) if o.changed() => write!(f, "migrated {} -> {}", o.before.unwrap_or(0), o.after),
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
            let result =
                pg::migrate_database(admin, &database, owner_role(&database, &claim)).await;
            (database, result)
        }))
        .buffer_unordered(concurrency.max(1));
    let mut done = 0;
    while let Some((database, result)) = stream.next().await {
        done += 1;
        failed += usize::from(result.is_err());
        report(&Progress {
            done,
            total,
            database,
            result,
        });
    }
    Ok(failed)
}
