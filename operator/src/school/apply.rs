//! Step 2, apply: role, database, password, migrations and the connection Secret, each
//! read before it is written.

use edumind_crds::School;
use edumind_crds::connection::keys;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};

use crate::credentials::{SecretString, generate_password};
use crate::pg::{self, Claim, ClaimLock, PgError};

use super::connection_secret::{desired_secret, secret_up_to_date};
use super::context::{OperatorContext, secret_value};
use super::desired::Desired;
use super::error::Error;
use super::labels::FIELD_MANAGER;

/// What the apply steps did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    pub schema_version: i64,
    /// Human-readable list of changes (empty when nothing changed).
    pub changes: Vec<&'static str>,
    pub rotated: bool,
    /// The backup taken before this run's schema change.
    pub pre_migration_backup: Option<edumind_crds::PreMigrationBackup>,
}

/// The apply steps, in order. Each step reads before it writes, so an unchanged School
/// issues no DDL and no Kubernetes writes.
pub(crate) async fn apply(
    school: &School,
    d: &Desired,
    ctx: &OperatorContext,
) -> Result<Applied, Error> {
    let handle = ctx.server(&d.server).await?;
    let mut applied = Applied::default();
    let claim = d.claim();
    let mut new_password: Option<SecretString> = None;

    // Ensure role and database, claiming them under a server-wide lock when new.
    let mut conn = handle.pool.acquire().await.map_err(|e| PgError::Sql {
        step: "connect to the server",
        source: e,
    })?;
    let db_state = match pg::database_state(&mut conn, &d.database, &d.role).await? {
        Some(state)
            if state.claim.is_none() && {
                let role = pg::role_state(&mut conn, &d.role).await?;
                pg::adoptable(&state, role.as_ref(), &claim)
            } =>
        {
            // Created by an earlier run that stopped before labelling it.
            pg::label_database(&mut conn, &d.database, &claim).await?;
            applied
                .changes
                .push("labelled the database an interrupted run created");
            state
        }
        Some(state) => {
            if state.claim.as_ref().map(|c| &c.owner) != Some(&claim.owner) {
                return Err(Error::Conflict(format!(
                    "database {} already exists on server {} and belongs to {}",
                    d.database,
                    d.server.name,
                    state
                        .claim
                        .map(|c| c.owner)
                        .unwrap_or_else(|| "something not managed by this operator".into())
                )));
            }
            state
        }
        None if d.recorded => return Err(Error::DatabaseMissing(d.database.clone())),
        None => {
            drop(conn);
            let mut lock = ClaimLock::acquire(&handle.pool).await?;
            let result = claim_new(lock.conn(), d, &claim, &mut new_password, &mut applied).await;
            lock.release().await;
            result?;
            conn = handle.pool.acquire().await.map_err(|e| PgError::Sql {
                step: "connect to the server",
                source: e,
            })?;
            pg::database_state(&mut conn, &d.database, &d.role)
                .await?
                .ok_or_else(|| Error::DatabaseMissing(d.database.clone()))?
        }
    };

    // Role: exists, unprivileged, login as `active` says.
    let role = match pg::role_state(&mut conn, &d.role).await? {
        Some(role) => {
            if role.claim.as_ref().map(|c| &c.owner) != Some(&claim.owner) {
                return Err(Error::Conflict(format!(
                    "role {} exists and is not this School's",
                    d.role
                )));
            }
            if !role.attribute_changes(d.login).is_empty() {
                pg::reset_role_attributes(&mut conn, &d.role, d.login).await?;
                applied.changes.push(if role.privileged() {
                    "removed privileges from the role"
                } else if role.can_login == d.login {
                    "reset the role's attributes"
                } else if d.login {
                    "enabled logins"
                } else {
                    "disabled logins"
                });
                if !d.login {
                    pg::terminate_role_sessions(&mut conn, &d.role).await?;
                }
            }
            if !role.admin_member {
                // A role created before the admin became a non-superuser, or by another
                // admin: the steps below need its privileges.
                pg::ensure_admin_member(&mut conn, &d.role).await?;
                applied.changes.push("made the admin a member of the role");
            }
            Some(role)
        }
        None => {
            // The role vanished while its database stayed: recreate it with a new password.
            let password = generate_password();
            pg::create_role(&mut conn, &d.role, &password, &claim, d.login).await?;
            new_password = Some(password);
            applied.changes.push("recreated the missing role");
            None
        }
    };
    let db_state = if role.is_none() {
        // Ownership may have moved when the role was dropped; read again.
        pg::database_state(&mut conn, &d.database, &d.role)
            .await?
            .unwrap_or(db_state)
    } else {
        db_state
    };
    if !db_state.owned_by_role || db_state.public_can_connect {
        pg::repair_database(&mut conn, &d.database, &d.role, &db_state).await?;
        applied
            .changes
            .push("repaired database ownership or access");
    }

    // Credentials: keep the Secret's password while it matches the role, else set a new one.
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &d.namespace);
    let existing = secrets
        .get_opt(&d.secret_name)
        .await
        .map_err(|e| Error::Kube {
            step: "read the connection Secret",
            source: Box::new(e),
        })?;
    let password = match (new_password, &d.rotate) {
        (Some(p), _) => p,
        (None, Some(_)) => {
            applied.rotated = true;
            set_new_password(
                &mut conn,
                &d.role,
                &claim,
                &mut applied,
                "rotated the password",
            )
            .await?
        }
        (None, None) => {
            let current = existing
                .as_ref()
                .and_then(|s| secret_value(s, keys::PASSWORD))
                .map(SecretString::new);
            let matches = match (&current, &role) {
                (Some(p), Some(state)) => {
                    pg::password_current(&handle.options, state, &d.role, &d.database, d.login, p)
                        .await?
                }
                _ => false,
            };
            match current {
                Some(p) if matches => p,
                _ => {
                    set_new_password(
                        &mut conn,
                        &d.role,
                        &claim,
                        &mut applied,
                        "repaired the credentials",
                    )
                    .await?
                }
            }
        }
    };
    drop(conn);
    let desired = desired_secret(school, d, &password, handle.tls.as_ref());
    let mut secret_published = false;

    // Schema and the school's own row. Not while a restore replaces the database in one
    // long transaction (the check would wait for it); the first reconcile after the
    // restore migrates a dump taken at an older schema version and puts the row back in
    // line with the spec.
    if d.restoring {
        applied.schema_version = school
            .status
            .as_ref()
            .and_then(|s| s.schema_version)
            .unwrap_or_default();
    } else {
        let latest = edumind_schema::latest_version();
        let current = pg::schema_version(&handle.options, &d.database).await?;
        if let Some(from) =
            current.filter(|_| crate::premigration::wanted(school, ctx, current, latest))
        {
            // The backup Job mounts the Secret: it must be current before the Job starts.
            publish_secret(&secrets, existing.as_ref(), &desired, &mut applied).await?;
            secret_published = true;
            applied.pre_migration_backup =
                crate::premigration::ensure(school, d, ctx, from, latest).await?;
        }
        let (outcome, record_changed) =
            pg::migrate_school_database(&handle.options, &d.database, &d.role, &d.record).await?;
        if outcome.changed() {
            applied.changes.push("applied schema migrations");
        }
        if record_changed {
            applied.changes.push("wrote the school's own record");
        }
        applied.schema_version = outcome.after;
    }

    // Connection Secret (unless the backup gate published it already).
    if !secret_published {
        publish_secret(&secrets, existing.as_ref(), &desired, &mut applied).await?;
    }
    Ok(applied)
}

/// Writes the connection Secret unless `existing` already is `desired`.
async fn publish_secret(
    secrets: &Api<Secret>,
    existing: Option<&Secret>,
    desired: &Secret,
    applied: &mut Applied,
) -> Result<(), Error> {
    if existing.is_some_and(|e| secret_up_to_date(e, desired)) {
        return Ok(());
    }
    let name = desired.metadata.name.as_deref().unwrap_or_default();
    secrets
        .patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(desired),
        )
        .await
        .map_err(|e| Error::Kube {
            step: "write the connection Secret",
            source: Box::new(e),
        })?;
    applied.changes.push("wrote the connection Secret");
    crate::fault::after("write the connection Secret")?;
    Ok(())
}

pub(crate) async fn set_new_password(
    conn: &mut sqlx::PgConnection,
    role: &str,
    claim: &Claim,
    applied: &mut Applied,
    what: &'static str,
) -> Result<SecretString, Error> {
    let password = generate_password();
    pg::set_password(conn, role, &password, claim).await?;
    applied.changes.push(what);
    Ok(password)
}

/// Creates role and database of a new School, after checking under the claim lock that
/// no other School on this server holds the same code or school id.
pub(crate) async fn claim_new(
    conn: &mut sqlx::PgConnection,
    d: &Desired,
    claim: &Claim,
    new_password: &mut Option<SecretString>,
    applied: &mut Applied,
) -> Result<(), Error> {
    for (database, other) in pg::claimed_databases(conn).await? {
        if other.owner == claim.owner {
            if database != d.database {
                // A retained database of a School that had this namespace/name: never
                // start a second, empty one beside it.
                return Err(Error::Conflict(format!(
                    "a database retained from an earlier School {} exists ({database}, code {:?}); use that code again to adopt it, or drop it",
                    claim.owner, other.code
                )));
            }
            continue;
        }
        if other.code == claim.code {
            return Err(Error::Conflict(format!(
                "code {:?} is already used on server {} by School {} (database {database})",
                claim.code, d.server.name, other.owner
            )));
        }
        if other.school_id == claim.school_id {
            return Err(Error::Conflict(format!(
                "school id {} is already used on server {} by School {} (database {database})",
                claim.school_id, d.server.name, other.owner
            )));
        }
    }
    if pg::database_state(conn, &d.database, &d.role)
        .await?
        .is_some()
    {
        return Ok(()); // another reconcile of the same School won the race
    }
    match pg::role_state(conn, &d.role).await? {
        Some(role) if role.claim.as_ref().map(|c| &c.owner) != Some(&claim.owner) => {
            return Err(Error::Conflict(format!(
                "role {} exists and is not this School's",
                d.role
            )));
        }
        Some(_) => {} // left by an interrupted reconcile: credentials are checked later
        None => {
            let password = generate_password();
            pg::create_role(conn, &d.role, &password, claim, d.login).await?;
            *new_password = Some(password);
            applied.changes.push("created the role");
        }
    }
    pg::create_database(conn, &d.database, &d.role, claim).await?;
    applied.changes.push("created the database");
    Ok(())
}
