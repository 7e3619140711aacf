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
    pub superuser: bool,
    pub createdb: bool,
    pub createrole: bool,
    pub replication: bool,
    pub bypassrls: bool,
    pub inherit: bool,
    /// Whether the admin may read `pg_authid` (a superuser); managed services deny it.
    pub verifier_readable: bool,
    /// The stored SCRAM verifier, when readable and set.
    pub verifier: Option<String>,
    /// The fingerprint of the password the operator last set, from the role's comment.
    pub fingerprint: Option<String>,
    /// Whether the admin has the role's privileges (a member with INHERIT, or superuser):
    /// what `CREATE DATABASE ... OWNER`, `SET ROLE`, ending its sessions and acting as
    /// owner of its database need from a non-superuser.
    pub admin_member: bool,
    pub claim: Option<Claim>,
}

impl RoleState {
    /// Any of superuser, createdb, createrole, replication, bypassrls.
    pub fn privileged(&self) -> bool {
        self.superuser || self.createdb || self.createrole || self.replication || self.bypassrls
    }

    /// The `ALTER ROLE` options that make this role an unprivileged role with logins as
    /// `login` says: only those that differ. A non-superuser admin may not even name
    /// `SUPERUSER`, `REPLICATION` or `BYPASSRLS` (PostgreSQL 15 refuses `ALTER ROLE ...
    /// NOSUPERUSER` from a non-superuser even when it changes nothing).
    pub fn attribute_changes(&self, login: bool) -> Vec<&'static str> {
        let wanted = [
            (
                self.can_login != login,
                if login { "LOGIN" } else { "NOLOGIN" },
            ),
            (self.superuser, "NOSUPERUSER"),
            (self.createdb, "NOCREATEDB"),
            (self.createrole, "NOCREATEROLE"),
            (self.replication, "NOREPLICATION"),
            (self.bypassrls, "NOBYPASSRLS"),
            (!self.inherit, "INHERIT"),
        ];
        wanted
            .into_iter()
            .filter_map(|(differs, option)| differs.then_some(option))
            .collect()
    }
}

/// A role's comment: its [`Claim`] and the fingerprint of the password the operator set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RoleComment {
    #[serde(flatten)]
    claim: Claim,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    password_fingerprint: Option<String>,
}

impl RoleComment {
    fn to_comment(&self) -> String {
        format!(
            "{CLAIM_PREFIX}{}",
            serde_json::to_string(self).unwrap_or_else(|_| "{}".into())
        )
    }

    fn from_comment(comment: &str) -> Option<RoleComment> {
        serde_json::from_str(comment.strip_prefix(CLAIM_PREFIX)?).ok()
    }
}

pub async fn role_state(conn: &mut PgConnection, role: &str) -> Result<Option<RoleState>, PgError> {
    // pg_roles, not pg_authid: every role may read it. `has_table_privilege` tells whether
    // the stored verifier may be read too (a second query: naming pg_authid in a
    // statement fails for a role without SELECT on it, even in an untaken branch).
    type Row = (
        bool,
        bool,
        bool,
        bool,
        bool,
        bool,
        bool,
        Option<String>,
        bool,
        bool,
    );
    let row: Option<Row> = sqlx::query_as(
        "SELECT rolcanlogin, rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls, \
         rolinherit, shobj_description(oid, 'pg_authid'), pg_has_role(current_user, oid, 'USAGE'), \
         has_table_privilege('pg_catalog.pg_authid', 'SELECT') FROM pg_roles WHERE rolname = $1",
    )
    .bind(role)
    .fetch_optional(&mut *conn)
    .await
    .map_err(sql("read the role"))?;
    let Some((
        can_login,
        superuser,
        createdb,
        createrole,
        replication,
        bypassrls,
        inherit,
        comment,
        admin_member,
        verifier_readable,
    )) = row
    else {
        return Ok(None);
    };
    let verifier = if verifier_readable {
        sqlx::query_scalar::<_, Option<String>>(
            "SELECT rolpassword FROM pg_catalog.pg_authid WHERE rolname = $1",
        )
        .bind(role)
        .fetch_optional(&mut *conn)
        .await
        .map_err(sql("read the role's password verifier"))?
        .flatten()
    } else {
        None
    };
    let comment = comment.as_deref().and_then(RoleComment::from_comment);
    Ok(Some(RoleState {
        can_login,
        superuser,
        createdb,
        createrole,
        replication,
        bypassrls,
        inherit,
        verifier_readable,
        verifier,
        fingerprint: comment
            .as_ref()
            .and_then(|c| c.password_fingerprint.clone()),
        admin_member,
        claim: comment.map(|c| c.claim),
    }))
}

/// Whether `password` is still `role`'s password. With `pg_authid` readable, checked
/// against the stored verifier. Without (a managed service's admin): the role's comment
/// must carry the fingerprint of `password` (the Secret still holds what the operator set)
/// and, when the role may log in (`login`), a real login to `database` must succeed (the
/// server still has it: nobody ran `ALTER ROLE ... PASSWORD` behind the operator's back).
/// A refused password is drift (`false`); any other failure to log in is an error, never
/// a reason to replace a working password.
pub async fn password_current(
    server: &PgConnectOptions,
    state: &RoleState,
    role: &str,
    database: &str,
    login: bool,
    password: &SecretString,
) -> Result<bool, PgError> {
    if state.verifier_readable {
        return Ok(state
            .verifier
            .as_deref()
            .is_some_and(|v| crate::credentials::verifier_matches(password, v)));
    }
    if !state
        .fingerprint
        .as_deref()
        .is_some_and(|f| crate::credentials::fingerprint_matches(password, f))
    {
        return Ok(false);
    }
    if !login {
        return Ok(true);
    }
    let attempt = server
        .clone()
        .username(role)
        .password(password.expose())
        .database(database)
        .connect()
        .await;
    match attempt {
        Ok(conn) => {
            let _ = conn.close().await;
            Ok(true)
        }
        // invalid_password: the server has another password (or it expired).
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("28P01") => Ok(false),
        Err(source) => Err(PgError::Sql {
            step: "test the role's login",
            source,
        }),
    }
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

fn role_comment(claim: &Claim, password: &SecretString) -> Result<String, PgError> {
    let fingerprint = crate::credentials::fingerprint(password).ok_or(PgError::Verifier)?;
    Ok(quote_literal(
        &RoleComment {
            claim: claim.clone(),
            password_fingerprint: Some(fingerprint),
        }
        .to_comment(),
    )?)
}

/// Creates a tenant role with `password` (sent as a SCRAM verifier), its claim and the
/// password's fingerprint in its comment, and makes the admin a member (see
/// [`ensure_admin_member`]).
pub async fn create_role(
    conn: &mut PgConnection,
    role: &str,
    password: &SecretString,
    claim: &Claim,
    login: bool,
) -> Result<(), PgError> {
    let verifier = crate::credentials::scram_verifier(password).ok_or(PgError::Verifier)?;
    let (r, v) = (quote_ident(role)?, quote_literal(&verifier)?);
    let comment = role_comment(claim, password)?;
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
    ensure_admin_member(&mut tx, role).await?;
    tx.commit().await.map_err(sql("commit the new role"))?;
    crate::fault::after("commit the new role")
}

/// Makes the admin a member of `role`, with INHERIT, unless it already has the role's
/// privileges (always so for a superuser, which is then left alone). A non-superuser
/// with CREATEROLE needs it for: `CREATE DATABASE ... OWNER role` and `ALTER DATABASE ...
/// OWNER TO role` ("must be able to SET ROLE" / "must be member of role"), `SET ROLE role`
/// for migrations, acting as owner of the role's database (`COMMENT ON DATABASE`,
/// `REVOKE ... FROM PUBLIC`, `DROP DATABASE`) and ending the role's sessions
/// (`pg_terminate_backend`). PostgreSQL 16 and later give the creator only ADMIN OPTION
/// (without INHERIT or SET) on the roles it creates; 15 gives no membership at all.
pub async fn ensure_admin_member(conn: &mut PgConnection, role: &str) -> Result<(), PgError> {
    let member: bool = sqlx::query_scalar("SELECT pg_has_role(current_user, $1, 'USAGE')")
        .bind(role)
        .fetch_one(&mut *conn)
        .await
        .map_err(sql("check the admin's membership in the role"))?;
    if member {
        return Ok(());
    }
    exec(
        conn,
        "make the admin a member of the role",
        format!("GRANT {} TO CURRENT_USER", quote_ident(role)?),
    )
    .await
}

/// Makes an existing role unprivileged, with logins as `login` says, naming only the
/// options that differ (see [`RoleState::attribute_changes`]). Returns whether anything
/// changed; a missing role is left to the caller.
pub async fn reset_role_attributes(
    conn: &mut PgConnection,
    role: &str,
    login: bool,
) -> Result<bool, PgError> {
    let Some(state) = role_state(conn, role).await? else {
        return Ok(false);
    };
    let changes = state.attribute_changes(login);
    if changes.is_empty() {
        return Ok(false);
    }
    exec(
        conn,
        "reset the role's attributes",
        format!("ALTER ROLE {} {}", quote_ident(role)?, changes.join(" ")),
    )
    .await?;
    Ok(true)
}

/// Sets `role`'s password (sent as a SCRAM verifier) and records its fingerprint with
/// the claim in the role's comment, in one transaction.
pub async fn set_password(
    conn: &mut PgConnection,
    role: &str,
    password: &SecretString,
    claim: &Claim,
) -> Result<(), PgError> {
    let verifier = crate::credentials::scram_verifier(password).ok_or(PgError::Verifier)?;
    let r = quote_ident(role)?;
    let comment = role_comment(claim, password)?;
    let mut tx = conn
        .begin()
        .await
        .map_err(sql("begin setting the password"))?;
    exec(
        &mut tx,
        "set the role's password",
        format!("ALTER ROLE {r} PASSWORD {}", quote_literal(&verifier)?),
    )
    .await?;
    exec(
        &mut tx,
        "record the password's fingerprint",
        format!("COMMENT ON ROLE {r} IS {comment}"),
    )
    .await?;
    tx.commit().await.map_err(sql("commit the new password"))?;
    crate::fault::after("set the role's password")
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
    if let Some(state) = role_state(conn, role).await? {
        let changes = state.attribute_changes(true).join(" ");
        exec(
            conn,
            "re-key the restore role",
            format!("ALTER ROLE {r} {changes} PASSWORD {v} VALID UNTIL {until}"),
        )
        .await?;
        exec(
            conn,
            "make the restore role a member of the school role",
            format!("GRANT {s} TO {r}"),
        )
        .await?;
    } else {
        exec(
            conn,
            "create the restore role",
            format!(
                "CREATE ROLE {r} LOGIN {ROLE_ATTRIBUTES} PASSWORD {v} VALID UNTIL {until} IN ROLE {s}"
            ),
        )
        .await?;
    }
    // So that a non-superuser admin may end its sessions (and DROP DATABASE ... FORCE
    // those of a restore in flight).
    ensure_admin_member(conn, role).await
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
        assert_eq!(Claim::from_comment(&c.to_comment()), Some(c.clone()));
        assert_eq!(Claim::from_comment("some other comment"), None);
        // A role's comment carries the fingerprint beside the claim; both read it.
        let role = RoleComment {
            claim: c.clone(),
            password_fingerprint: Some("hmac-sha256:a:b".into()),
        };
        assert_eq!(Claim::from_comment(&role.to_comment()), Some(c.clone()));
        assert_eq!(RoleComment::from_comment(&role.to_comment()), Some(role));
        let old = RoleComment::from_comment(&c.to_comment()).unwrap();
        assert_eq!(old.password_fingerprint, None);
    }

    fn plain_role() -> RoleState {
        RoleState {
            can_login: true,
            superuser: false,
            createdb: false,
            createrole: false,
            replication: false,
            bypassrls: false,
            inherit: true,
            verifier_readable: false,
            verifier: None,
            fingerprint: None,
            admin_member: true,
            claim: None,
        }
    }

    #[test]
    fn only_differing_role_options_are_named() {
        let role = plain_role();
        assert!(role.attribute_changes(true).is_empty());
        assert_eq!(role.attribute_changes(false), vec!["NOLOGIN"]);
        let drifted = RoleState {
            createdb: true,
            inherit: false,
            ..plain_role()
        };
        assert_eq!(
            drifted.attribute_changes(true),
            vec!["NOCREATEDB", "INHERIT"]
        );
        let superuser = RoleState {
            superuser: true,
            can_login: false,
            ..plain_role()
        };
        assert_eq!(
            superuser.attribute_changes(true),
            vec!["LOGIN", "NOSUPERUSER"]
        );
    }
}
