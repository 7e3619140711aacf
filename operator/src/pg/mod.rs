//! Everything the operator does inside PostgreSQL, as small idempotent steps.
//!
//! Every statement that cannot take bind parameters (DDL) is built only from names that
//! [`crate::naming`] generated, through [`quote_ident`]/[`quote_literal`]; passwords are
//! sent only as SCRAM verifiers. Admin connections have statement logging disabled anyway.
//!
//! Ownership of a database or role is recorded in its comment (a shared catalog, visible
//! from every database and to every operator replica) as a [`Claim`]. That is what lets
//! two Schools claiming the same code or id be told apart, a retained database be adopted
//! again by the same School, and `delete` never drop something another School owns.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, Executor, PgConnection, PgPool, Postgres};

use crate::credentials::SecretString;
use crate::naming::{QuoteError, quote_ident, quote_literal};

mod migrate;
pub use migrate::*;

/// Prefix of the comment on every database and role the operator owns.
pub const CLAIM_PREFIX: &str = "edumind-tenant ";
/// Advisory lock key (in the maintenance database) serialising new claims on a server.
const CLAIM_LOCK_KEY: i64 = 0x6564_756d_696e_6401; // "edumind\x01"

/// Who owns a database and role: recorded in their comments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Claim {
    /// `school` (or, later, `selfservice`).
    pub kind: String,
    pub school_id: String,
    pub code: String,
    /// `<namespace>/<name>` of the owning School.
    pub owner: String,
}

impl Claim {
    fn to_comment(&self) -> String {
        // Serialising a struct of strings cannot fail; fall back to an empty object.
        format!(
            "{CLAIM_PREFIX}{}",
            serde_json::to_string(self).unwrap_or_else(|_| "{}".into())
        )
    }

    fn from_comment(comment: &str) -> Option<Claim> {
        serde_json::from_str(comment.strip_prefix(CLAIM_PREFIX)?).ok()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("PostgreSQL error while trying to {step}: {source}")]
    Sql {
        step: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error(transparent)]
    Quote(#[from] QuoteError),
    #[error("schema migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("cannot compute a password verifier")]
    Verifier,
    #[error(transparent)]
    Injected(#[from] crate::fault::Injected),
}

fn sql(step: &'static str) -> impl FnOnce(sqlx::Error) -> PgError {
    move |source| PgError::Sql { step, source }
}

/// Connection options for a server's admin user; statement logging off.
pub fn admin_options(
    host: &str,
    port: u16,
    user: &str,
    password: &SecretString,
    database: &str,
) -> PgConnectOptions {
    PgConnectOptions::new()
        .host(host)
        .port(port)
        .username(user)
        .password(password.expose())
        .database(database)
        .application_name("edumind-operator")
        .disable_statement_logging()
}

/// A small pool of admin connections to a server's maintenance database.
pub fn admin_pool(options: PgConnectOptions, max: u32) -> PgPool {
    PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(10))
        .idle_timeout(Duration::from_secs(300))
        .connect_lazy_with(options)
}

/// What the catalog says about a role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleState {
    pub can_login: bool,
    /// Any of superuser, createdb, createrole, replication, bypassrls.
    pub privileged: bool,
    pub verifier: Option<String>,
    pub claim: Option<Claim>,
}

pub async fn role_state(conn: &mut PgConnection, role: &str) -> Result<Option<RoleState>, PgError> {
    let row: Option<(bool, bool, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT rolcanlogin, rolsuper OR rolcreatedb OR rolcreaterole OR rolreplication OR rolbypassrls, \
         rolpassword, shobj_description(oid, 'pg_authid') FROM pg_authid WHERE rolname = $1",
    )
    .bind(role)
    .fetch_optional(&mut *conn)
    .await
    .map_err(sql("read the role"))?;
    Ok(
        row.map(|(can_login, privileged, verifier, comment)| RoleState {
            can_login,
            privileged,
            verifier,
            claim: comment.as_deref().and_then(Claim::from_comment),
        }),
    )
}

/// What the catalog says about a database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseState {
    pub owned_by_role: bool,
    pub public_can_connect: bool,
    pub claim: Option<Claim>,
}

pub async fn database_state(
    conn: &mut PgConnection,
    database: &str,
    role: &str,
) -> Result<Option<DatabaseState>, PgError> {
    let row: Option<(bool, bool, Option<String>)> = sqlx::query_as(
        "SELECT d.datdba IS NOT DISTINCT FROM (SELECT oid FROM pg_roles WHERE rolname = $2), \
         d.datacl IS NULL OR EXISTS (SELECT 1 FROM aclexplode(d.datacl) a WHERE a.grantee = 0), \
         shobj_description(d.oid, 'pg_database') FROM pg_database d WHERE d.datname = $1",
    )
    .bind(database)
    .bind(role)
    .fetch_optional(&mut *conn)
    .await
    .map_err(sql("read the database"))?;
    Ok(row.map(
        |(owned_by_role, public_can_connect, comment)| DatabaseState {
            owned_by_role,
            public_can_connect,
            claim: comment.as_deref().and_then(Claim::from_comment),
        },
    ))
}

/// Every claimed database on the server with its claim.
pub async fn claimed_databases(conn: &mut PgConnection) -> Result<Vec<(String, Claim)>, PgError> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT d.datname::text, s.description FROM pg_database d \
         JOIN pg_shdescription s ON s.objoid = d.oid AND s.classoid = 'pg_database'::regclass \
         WHERE s.description LIKE 'edumind-tenant %' ORDER BY 1",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(sql("list claimed databases"))?;
    Ok(rows
        .into_iter()
        .filter_map(|(name, comment)| Claim::from_comment(&comment).map(|c| (name, c)))
        .collect())
}

async fn exec(
    conn: &mut PgConnection,
    step: &'static str,
    statement: String,
) -> Result<(), PgError> {
    conn.execute(AssertSqlSafe(statement))
        .await
        .map_err(sql(step))?;
    crate::fault::after(step)
}

const ROLE_ATTRIBUTES: &str =
    "NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT";

pub async fn create_role(
    conn: &mut PgConnection,
    role: &str,
    verifier: &str,
    claim: &Claim,
    login: bool,
) -> Result<(), PgError> {
    let (r, v) = (quote_ident(role)?, quote_literal(verifier)?);
    let comment = quote_literal(&claim.to_comment())?;
    let login = if login { "LOGIN" } else { "NOLOGIN" };
    // Role and claim commit together: a crash in between leaves neither, never a role
    // without the proof that it is ours (which every later reconcile would refuse).
    let mut tx = conn.begin().await.map_err(sql("begin creating the role"))?;
    exec(
        &mut tx,
        "create the role",
        format!("CREATE ROLE {r} {login} {ROLE_ATTRIBUTES} PASSWORD {v}"),
    )
    .await?;
    exec(
        &mut tx,
        "label the role",
        format!("COMMENT ON ROLE {r} IS {comment}"),
    )
    .await?;
    tx.commit().await.map_err(sql("commit the new role"))?;
    crate::fault::after("commit the new role")
}

/// Resets a drifted role to an unprivileged login (or non-login) role.
pub async fn reset_role_attributes(
    conn: &mut PgConnection,
    role: &str,
    login: bool,
) -> Result<(), PgError> {
    let login = if login { "LOGIN" } else { "NOLOGIN" };
    exec(
        conn,
        "reset the role's attributes",
        format!(
            "ALTER ROLE {} {login} {ROLE_ATTRIBUTES}",
            quote_ident(role)?
        ),
    )
    .await
}

pub async fn set_password(
    conn: &mut PgConnection,
    role: &str,
    verifier: &str,
) -> Result<(), PgError> {
    exec(
        conn,
        "set the role's password",
        format!(
            "ALTER ROLE {} PASSWORD {}",
            quote_ident(role)?,
            quote_literal(verifier)?
        ),
    )
    .await
}

/// Ends every session of `role` (used when logins are disabled or the password rotates).
pub async fn terminate_role_sessions(conn: &mut PgConnection, role: &str) -> Result<(), PgError> {
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1 AND pid <> pg_backend_pid()")
        .bind(role)
        .execute(&mut *conn)
        .await
        .map_err(sql("end the role's sessions"))?;
    Ok(())
}

pub async fn create_database(
    conn: &mut PgConnection,
    database: &str,
    role: &str,
    claim: &Claim,
) -> Result<(), PgError> {
    let (d, r) = (quote_ident(database)?, quote_ident(role)?);
    exec(
        conn,
        "create the database",
        format!("CREATE DATABASE {d} OWNER {r} TEMPLATE template0 ENCODING 'UTF8'"),
    )
    .await?;
    exec(
        conn,
        "revoke public access to the database",
        format!("REVOKE ALL ON DATABASE {d} FROM PUBLIC"),
    )
    .await?;
    label_database(conn, database, claim).await
}

/// Records `claim` on a database. `CREATE DATABASE` cannot run in a transaction, so a
/// crash can leave a new database without its claim; [`adoptable`] recognises such a
/// database by its owner, a role that carries the same claim, and this labels it.
pub async fn label_database(
    conn: &mut PgConnection,
    database: &str,
    claim: &Claim,
) -> Result<(), PgError> {
    exec(
        conn,
        "label the database",
        format!(
            "COMMENT ON DATABASE {} IS {}",
            quote_ident(database)?,
            quote_literal(&claim.to_comment())?
        ),
    )
    .await
}

/// Whether an unlabelled database is provably `claim`'s own, interrupted between its
/// creation and its label: it is owned by `role`, and `role` carries the same owner in
/// its claim (a role and its claim are committed together, see [`create_role`]). A
/// database labelled by anyone, or owned by any other role, is never adoptable.
pub fn adoptable(db: &DatabaseState, role: Option<&RoleState>, claim: &Claim) -> bool {
    db.claim.is_none()
        && db.owned_by_role
        && role
            .and_then(|r| r.claim.as_ref())
            .is_some_and(|c| c.owner == claim.owner && c.school_id == claim.school_id)
}

/// Repairs ownership and PUBLIC access of an existing database.
pub async fn repair_database(
    conn: &mut PgConnection,
    database: &str,
    role: &str,
    state: &DatabaseState,
) -> Result<(), PgError> {
    let (d, r) = (quote_ident(database)?, quote_ident(role)?);
    if !state.owned_by_role {
        exec(
            conn,
            "give the database back to its role",
            format!("ALTER DATABASE {d} OWNER TO {r}"),
        )
        .await?;
    }
    if state.public_can_connect {
        exec(
            conn,
            "revoke public access to the database",
            format!("REVOKE ALL ON DATABASE {d} FROM PUBLIC"),
        )
        .await?;
    }
    Ok(())
}

/// Drops database and role (reclaim policy `delete`), ending open sessions first.
pub async fn drop_tenant(
    conn: &mut PgConnection,
    database: &str,
    role: &str,
) -> Result<(), PgError> {
    let (d, r) = (quote_ident(database)?, quote_ident(role)?);
    terminate_role_sessions(conn, role).await?;
    exec(
        conn,
        "drop the database",
        format!("DROP DATABASE IF EXISTS {d} WITH (FORCE)"),
    )
    .await?;
    exec(conn, "drop the role", format!("DROP ROLE IF EXISTS {r}")).await
}

/// Creates (or, when it exists, re-keys) the short-lived login role a SchoolRestore uses:
/// unprivileged, a member of the school's role (so `pg_restore --role=<school role>` can
/// switch to it and objects stay owned by the school's role), valid until `valid_until`
/// (an RFC 3339 time) so a forgotten one expires by itself.
pub async fn ensure_restore_role(
    conn: &mut PgConnection,
    role: &str,
    school_role: &str,
    verifier: &str,
    valid_until: &str,
) -> Result<(), PgError> {
    let (r, s) = (quote_ident(role)?, quote_ident(school_role)?);
    let (v, until) = (quote_literal(verifier)?, quote_literal(valid_until)?);
    if role_state(conn, role).await?.is_some() {
        exec(
            conn,
            "re-key the restore role",
            format!("ALTER ROLE {r} LOGIN {ROLE_ATTRIBUTES} PASSWORD {v} VALID UNTIL {until}"),
        )
        .await?;
        return exec(
            conn,
            "make the restore role a member of the school role",
            format!("GRANT {s} TO {r}"),
        )
        .await;
    }
    exec(
        conn,
        "create the restore role",
        format!(
            "CREATE ROLE {r} LOGIN {ROLE_ATTRIBUTES} PASSWORD {v} VALID UNTIL {until} IN ROLE {s}"
        ),
    )
    .await
}

/// Ends the sessions of `role` and drops it (a restore role; it owns nothing).
pub async fn drop_role(conn: &mut PgConnection, role: &str) -> Result<(), PgError> {
    let r = quote_ident(role)?;
    terminate_role_sessions(conn, role).await?;
    exec(
        conn,
        "drop the restore role",
        format!("DROP ROLE IF EXISTS {r}"),
    )
    .await
}

/// A session advisory lock serialising claims on one server (taken only when a new
/// database is about to be created, never on the steady-state path).
pub struct ClaimLock {
    conn: PoolConnection<Postgres>,
}

impl ClaimLock {
    pub async fn acquire(pool: &PgPool) -> Result<Self, PgError> {
        let mut conn = pool.acquire().await.map_err(sql("connect to the server"))?;
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(CLAIM_LOCK_KEY)
            .execute(&mut *conn)
            .await
            .map_err(sql("take the claim lock"))?;
        Ok(Self { conn })
    }

    pub fn conn(&mut self) -> &mut PgConnection {
        &mut self.conn
    }

    pub async fn release(mut self) {
        let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(CLAIM_LOCK_KEY)
            .execute(&mut *self.conn)
            .await;
        if unlocked.is_err() {
            // Closing the session is what releases the lock then.
            let _ = self.conn.detach().close().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_round_trip_through_comments() {
        let c = Claim {
            kind: "school".into(),
            school_id: "id".into(),
            code: "O'Brien \"x\"".into(),
            owner: "ns/a".into(),
        };
        assert_eq!(Claim::from_comment(&c.to_comment()), Some(c));
        assert_eq!(Claim::from_comment("some other comment"), None);
    }
}
