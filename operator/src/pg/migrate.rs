//! Schema migrations of one database, as its owner role, one migration at a time, and
//! the school's own `schools` row (part of [`crate::pg`]).

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};

use super::{PgError, exec, sql};
use crate::naming::quote_ident;

/// Applies the embedded migrations to `database` as its owner `role` (the objects belong
/// to the school's role), unless it is already current. Returns the schema version.
/// Concurrent callers are serialised by the migrator's advisory lock.
pub async fn migrate_database(
    admin: &PgConnectOptions,
    database: &str,
    role: &str,
) -> Result<MigrationOutcome, PgError> {
    let mut conn = admin
        .clone()
        .database(database)
        .connect()
        .await
        .map_err(sql("connect to the school database"))?;
    let result = migrate_on(&mut conn, role).await;
    let _ = conn.close().await;
    result
}

/// The school's own `schools` row, as `spec` describes it. The School resource is the
/// source of truth for it: the data plane only reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchoolRecord {
    pub id: uuid::Uuid,
    pub name: String,
    pub code: String,
    pub address: String,
    pub contact_email: String,
    pub contact_phone: Option<String>,
    pub active: bool,
}

/// [`migrate_database`] for a school database, then the school's own row upserted from its
/// spec on the same connection, as the school's role. Returns the migration outcome and
/// whether the row changed: an unchanged row is not rewritten (`updated_at` stays).
pub async fn migrate_school_database(
    admin: &PgConnectOptions,
    database: &str,
    role: &str,
    record: &SchoolRecord,
) -> Result<(MigrationOutcome, bool), PgError> {
    let mut conn = admin
        .clone()
        .database(database)
        .connect()
        .await
        .map_err(sql("connect to the school database"))?;
    let result = match migrate_on(&mut conn, role).await {
        Ok(outcome) => sync_school_record(&mut conn, record)
            .await
            .map(|changed| (outcome, changed)),
        Err(e) => Err(e),
    };
    let _ = conn.close().await;
    result
}

async fn sync_school_record(conn: &mut PgConnection, r: &SchoolRecord) -> Result<bool, PgError> {
    // Read first: a plain SELECT takes no row lock, assigns no transaction ID and writes
    // no WAL, so a resync of an unchanged School leaves the database as it was. Only a
    // missing or different row goes on to the upsert below (which rechecks the values:
    // a concurrent writer in between makes it a no-op or a correct overwrite).
    let current: Option<bool> = sqlx::query_scalar(
        "SELECT name = $2::text AND code = $3::text AND address = $4::text \
             AND contact_email = $5::text AND contact_phone IS NOT DISTINCT FROM $6::text \
             AND is_active = $7::boolean \
         FROM schools WHERE id = $1",
    )
    .bind(r.id)
    .bind(&r.name)
    .bind(&r.code)
    .bind(&r.address)
    .bind(&r.contact_email)
    .bind(r.contact_phone.as_deref())
    .bind(r.active)
    .fetch_optional(&mut *conn)
    .await
    .map_err(sql("read the school's own record"))?;
    if current == Some(true) {
        return Ok(false);
    }
    let written = sqlx::query(
        "INSERT INTO schools (id, name, code, address, contact_email, contact_phone, is_active) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, code = EXCLUDED.code, \
             address = EXCLUDED.address, contact_email = EXCLUDED.contact_email, \
             contact_phone = EXCLUDED.contact_phone, is_active = EXCLUDED.is_active, \
             updated_at = now() \
         WHERE (schools.name, schools.code, schools.address, schools.contact_email, \
                schools.contact_phone, schools.is_active) \
           IS DISTINCT FROM (EXCLUDED.name, EXCLUDED.code, EXCLUDED.address, \
                EXCLUDED.contact_email, EXCLUDED.contact_phone, EXCLUDED.is_active)",
    )
    .bind(r.id)
    .bind(&r.name)
    .bind(&r.code)
    .bind(&r.address)
    .bind(&r.contact_email)
    .bind(r.contact_phone.as_deref())
    .bind(r.active)
    .execute(&mut *conn)
    .await
    .map_err(sql("write the school's own record"))?;
    crate::fault::after("write the school's own record")?;
    Ok(written.rows_affected() > 0)
}

/// What [`migrate_database`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MigrationOutcome {
    pub before: Option<i64>,
    pub after: i64,
}

impl MigrationOutcome {
    pub fn changed(&self) -> bool {
        self.before != Some(self.after)
    }
}

async fn migrate_on(conn: &mut PgConnection, role: &str) -> Result<MigrationOutcome, PgError> {
    // A non-superuser admin may only SET ROLE to a role it is a member of (databases an
    // earlier operator version or another admin created may lack it).
    super::ensure_admin_member(conn, role).await?;
    exec(
        conn,
        "act as the school's role",
        format!("SET ROLE {}", quote_ident(role)?),
    )
    .await?;
    let latest = edumind_schema::latest_version();
    let before = edumind_schema::applied_version(conn)
        .await
        .map_err(sql("read the schema version"))?;
    if before == Some(latest) {
        return Ok(MigrationOutcome {
            before,
            after: latest,
        });
    }
    // One migration at a time (each in its own transaction), so every step is a point
    // a crash or a test's fault can stop at; the next run continues from there.
    let pending: Vec<i64> = edumind_schema::MIGRATOR
        .iter()
        .map(|m| m.version)
        .filter(|v| before.is_none_or(|b| *v > b))
        .collect();
    for version in pending {
        edumind_schema::migrate_to(conn, version).await?;
        crate::fault::after(&format!("apply migration {version}"))?;
    }
    let after = edumind_schema::applied_version(conn)
        .await
        .map_err(sql("read the schema version"))?
        .unwrap_or(0);
    Ok(MigrationOutcome { before, after })
}

/// Reads a database's schema version without changing anything.
pub async fn schema_version(
    admin: &PgConnectOptions,
    database: &str,
) -> Result<Option<i64>, PgError> {
    let mut conn = admin
        .clone()
        .database(database)
        .connect()
        .await
        .map_err(sql("connect to the school database"))?;
    let v = edumind_schema::applied_version(&mut conn)
        .await
        .map_err(sql("read the schema version"));
    let _ = conn.close().await;
    v
}
