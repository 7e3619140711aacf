//! The tenant database schema of the storage spec (`data-storage.md` section 2), as plain
//! SQL migrations in sqlx's format, embedded into every binary that needs them.
//!
//! The same migrations create every school database and the shared self-service
//! database. Anything that applies them goes through [`migrate`], which sqlx
//! serialises with a PostgreSQL advisory lock, so two operators (or two reconciles)
//! racing on one database apply each migration exactly once.

pub mod selfservice;

use sqlx::migrate::{MigrateError, Migrator};
use sqlx::postgres::PgConnection;

/// Every migration in this directory, embedded at compile time.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// The version of the newest embedded migration: what a fully migrated database reports.
pub fn latest_version() -> i64 {
    MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0)
}

/// Applies every pending migration to the database behind `conn`.
///
/// Idempotent: applying to an up-to-date database changes nothing. Fails when a
/// migration that was applied earlier has since been edited (checksum mismatch) or
/// when the database has a migration this build does not know (it was migrated by a
/// newer release), rather than silently running on a schema it does not understand.
pub async fn migrate(conn: &mut PgConnection) -> Result<(), MigrateError> {
    // `run_direct` is what `Migrator::run` calls after acquiring the connection; calling
    // it directly avoids sqlx's "Acquire is not general enough" error, which otherwise
    // makes this future unusable inside `tokio::spawn` (sqlx's own comment on it says so).
    MIGRATOR.run_direct(None, conn, false).await
}

/// [`migrate`], stopping after migration `target` (pending ones up to it are applied).
pub async fn migrate_to(conn: &mut PgConnection, target: i64) -> Result<(), MigrateError> {
    MIGRATOR.run_direct(Some(target), conn, false).await
}

/// The newest migration version recorded in the database, `None` when it was never migrated.
pub async fn applied_version(conn: &mut PgConnection) -> Result<Option<i64>, sqlx::Error> {
    let exists: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_tables \
         WHERE schemaname = current_schema() AND tablename = '_sqlx_migrations')",
    )
    .fetch_one(&mut *conn)
    .await?;
    if !exists {
        return Ok(None);
    }
    sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
        .fetch_one(&mut *conn)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embeds_the_spec_migrations_and_the_outbox_in_order() {
        let versions: Vec<i64> = MIGRATOR.iter().map(|m| m.version).collect();
        assert_eq!(
            versions,
            vec![
                20251015005710,
                20251015212949,
                20261202120000,
                20261202130000
            ]
        );
        assert_eq!(latest_version(), 20261202130000);
    }
}
