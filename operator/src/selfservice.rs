//! The shared self-service tenant: the `edumind_selfservice` database that B2C students
//! share, guarded by row-level security (storage spec 3.2).
//!
//! Unlike a school, it has two roles:
//! * `edumind_selfservice_owner` (NOLOGIN) owns the database and every table: the
//!   operator migrates and installs the policies as this role (`SET ROLE`);
//! * `edumind_selfservice_app` (LOGIN) is what the data plane connects as. It owns
//!   nothing, so the policies bind it, and it has only the grants
//!   [`edumind_schema::selfservice::apply_policies`] gives it.
//!
//! Its Secret (`edumind-selfservice` in the operator's namespace, or the one configured)
//! has the school Secret's keys, the .NET key `SelfService-ConnectionString`, and the
//! labels `edumind.ai/tenant: selfservice` (what the data plane's tenant directory looks
//! for) and `edumind.ai/tenant-kind: selfservice`; no school-id label.
//!
//! [`ensure`] is idempotent: on an up-to-date tenant it reads the catalog and changes
//! nothing (no DDL). The installed policy version is recorded (a hash of the policy SQL)
//! so a new operator release with new policies re-applies them once.

use edumind_crds::connection::{self, ConnectionSecret, TenantRef, Tls, keys};
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, PostParams};
use sha2::{Digest, Sha256};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};

use crate::config::TargetServer;
use crate::credentials::{self, SecretString};
use crate::naming::{quote_ident, quote_literal};
use crate::pg::{self, Claim, PgError};

pub const DATABASE: &str = crate::naming::SELF_SERVICE_DATABASE;
pub const OWNER_ROLE: &str = crate::naming::SELF_SERVICE_ROLES[0];
pub const APP_ROLE: &str = crate::naming::SELF_SERVICE_ROLES[1];
pub const SECRET_NAME: &str = "edumind-selfservice";

#[derive(Debug, thiserror::Error)]
pub enum SelfServiceError {
    #[error(transparent)]
    Pg(#[from] PgError),
    #[error(transparent)]
    Quote(#[from] crate::naming::QuoteError),
    #[error("Kubernetes API error while trying to {step}: {source}")]
    Kube {
        step: &'static str,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("{0} exists but belongs to something else ({1}); refusing to take it over")]
    Foreign(&'static str, String),
}

/// What one [`ensure`] run changed (empty when nothing).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub changes: Vec<&'static str>,
    pub schema_version: i64,
}

fn claim() -> Claim {
    Claim {
        kind: "selfservice".into(),
        school_id: String::new(),
        code: "selfservice".into(),
        owner: connection::MANAGED_BY.into(),
    }
}

/// Hash of the policy SQL, recorded on the database so upgrades re-apply changed policies.
fn policy_version() -> String {
    let digest = Sha256::digest(edumind_schema::selfservice::POLICIES_SQL.as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// Ensures roles, database, schema and policies on the server behind `admin` (connection
/// options of its admin user, maintenance database), with `password` as the application
/// role's password.
pub async fn ensure_database(
    admin: &PgConnectOptions,
    password: &SecretString,
) -> Result<Outcome, SelfServiceError> {
    let mut out = Outcome::default();
    let mut conn = admin.connect().await.map_err(|source| PgError::Sql {
        step: "connect to the server",
        source,
    })?;
    let claim = claim();
    let ours = |c: &Option<Claim>| c.as_ref().is_none_or(|c| c.kind == claim.kind);

    // The owner: never logs in; its password is a random one nobody keeps.
    match pg::role_state(&mut conn, OWNER_ROLE).await? {
        None => {
            let unused = credentials::generate_password();
            // Also lets a non-superuser admin act as the owner (see pg::ensure_admin_member).
            pg::create_role(&mut conn, OWNER_ROLE, &unused, &claim, false).await?;
            out.changes.push("created the owner role");
        }
        Some(state) if !ours(&state.claim) => {
            return Err(SelfServiceError::Foreign(
                "role edumind_selfservice_owner",
                format!("{:?}", state.claim),
            ));
        }
        Some(state) => {
            if !state.attribute_changes(false).is_empty() {
                pg::reset_role_attributes(&mut conn, OWNER_ROLE, false).await?;
                out.changes.push("reset the owner role's attributes");
            }
            if !state.admin_member {
                pg::ensure_admin_member(&mut conn, OWNER_ROLE).await?;
                out.changes
                    .push("made the admin a member of the owner role");
            }
        }
    }

    // The application role: logs in with the published password, owns nothing.
    let app = match pg::role_state(&mut conn, APP_ROLE).await? {
        None => {
            pg::create_role(&mut conn, APP_ROLE, password, &claim, true).await?;
            out.changes.push("created the application role");
            None
        }
        Some(state) if !ours(&state.claim) => {
            return Err(SelfServiceError::Foreign(
                "role edumind_selfservice_app",
                format!("{:?}", state.claim),
            ));
        }
        Some(state) => {
            if !state.attribute_changes(true).is_empty() {
                pg::reset_role_attributes(&mut conn, APP_ROLE, true).await?;
                out.changes.push("reset the application role's attributes");
            }
            Some(state)
        }
    };

    match pg::database_state(&mut conn, DATABASE, OWNER_ROLE).await? {
        None => {
            pg::create_database(&mut conn, DATABASE, OWNER_ROLE, &claim).await?;
            out.changes.push("created the database");
        }
        Some(state) if !ours(&state.claim) => {
            return Err(SelfServiceError::Foreign(
                "database edumind_selfservice",
                format!("{:?}", state.claim),
            ));
        }
        Some(state) if !state.owned_by_role || state.public_can_connect => {
            pg::repair_database(&mut conn, DATABASE, OWNER_ROLE, &state).await?;
            out.changes.push("repaired the database's owner and access");
        }
        Some(_) => {}
    }
    let can_connect: bool = sqlx::query_scalar("SELECT has_database_privilege($1, $2, 'CONNECT')")
        .bind(APP_ROLE)
        .bind(DATABASE)
        .fetch_one(&mut conn)
        .await
        .map_err(|source| PgError::Sql {
            step: "check the application role's access",
            source,
        })?;
    if !can_connect {
        exec(
            &mut conn,
            "let the application role connect",
            format!(
                "GRANT CONNECT ON DATABASE {} TO {}",
                quote_ident(DATABASE)?,
                quote_ident(APP_ROLE)?
            ),
        )
        .await?;
        out.changes.push("granted the application role CONNECT");
    }
    // The password last: a login test (non-superuser admin) needs the database and CONNECT.
    if let Some(state) = app
        && !pg::password_current(admin, &state, APP_ROLE, DATABASE, true, password).await?
    {
        pg::set_password(&mut conn, APP_ROLE, password, &claim).await?;
        out.changes.push("set the application role's password");
    }
    let _ = conn.close().await;

    let migrated = pg::migrate_database(admin, DATABASE, OWNER_ROLE).await?;
    if migrated.changed() {
        out.changes.push("applied schema migrations");
    }
    out.schema_version = migrated.after;

    // Policies: (re)applied when the recorded version differs from this build's.
    let mut conn = admin
        .clone()
        .database(DATABASE)
        .connect()
        .await
        .map_err(|source| PgError::Sql {
            step: "connect to the self-service database",
            source,
        })?;
    let recorded: Option<String> =
        sqlx::query_scalar("SELECT obj_description('public'::regnamespace, 'pg_namespace')")
            .fetch_one(&mut conn)
            .await
            .map_err(|source| PgError::Sql {
                step: "read the policy version",
                source,
            })?;
    let wanted = policy_version();
    let marker = format!("policies {wanted}");
    if recorded.as_deref().is_none_or(|c| !c.contains(&marker)) {
        exec(
            &mut conn,
            "act as the owner",
            format!("SET ROLE {}", quote_ident(OWNER_ROLE)?),
        )
        .await?;
        edumind_schema::selfservice::apply_policies(&mut conn, APP_ROLE)
            .await
            .map_err(|source| PgError::Sql {
                step: "install row-level security",
                source,
            })?;
        // Recorded on the schema (the owner may comment on it): one catalog read per run.
        exec(
            &mut conn,
            "record the policy version",
            format!(
                "COMMENT ON SCHEMA public IS {}",
                quote_literal(&format!("edumind self-service {marker}"))?
            ),
        )
        .await?;
        exec(&mut conn, "act as the admin again", "RESET ROLE".into()).await?;
        out.changes.push("installed row-level security policies");
    }
    let _ = conn.close().await;
    Ok(out)
}

async fn exec(conn: &mut PgConnection, step: &'static str, sql: String) -> Result<(), PgError> {
    // Only fixed keywords and names quoted by `naming` reach here.
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut *conn)
        .await
        .map_err(|source| PgError::Sql { step, source })?;
    Ok(())
}

/// The self-service tenant's connection Secret (the application role's endpoint).
pub fn connection_secret(
    server: &TargetServer,
    password: &SecretString,
    tls: Option<&Tls>,
) -> ConnectionSecret {
    ConnectionSecret {
        tenant: TenantRef::SelfService,
        endpoint: crate::school::endpoint(server, APP_ROLE, DATABASE, password, tls),
    }
}

fn desired_secret(
    namespace: &str,
    server: &TargetServer,
    password: &SecretString,
    tls: Option<&Tls>,
) -> Secret {
    connection_secret(server, password, tls).to_secret(SECRET_NAME, namespace, None)
}

/// Provisions (or checks) the self-service tenant on `server` and publishes its Secret in
/// `namespace`. Keeps the password of an existing Secret, so the data plane's connections
/// survive operator restarts; a Secret that was deleted is recreated with a new password,
/// and the role is moved to it in the same run.
pub async fn ensure(
    client: &Client,
    namespace: &str,
    server: &TargetServer,
    admin: &PgConnectOptions,
) -> Result<Outcome, SelfServiceError> {
    ensure_with_tls(client, namespace, server, admin, None).await
}

/// [`ensure`] for a server with TLS settings (`admin` already carries them), which the
/// Secret then carries too.
pub async fn ensure_with_tls(
    client: &Client,
    namespace: &str,
    server: &TargetServer,
    admin: &PgConnectOptions,
    tls: Option<&Tls>,
) -> Result<Outcome, SelfServiceError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let kube = |step| {
        move |e| SelfServiceError::Kube {
            step,
            source: Box::new(e),
        }
    };
    let existing = secrets
        .get_opt(SECRET_NAME)
        .await
        .map_err(kube("read the self-service Secret"))?;
    let password = existing
        .as_ref()
        .and_then(|s| crate::school::secret_value(s, keys::PASSWORD))
        .filter(|p| p.len() >= 16)
        .map(SecretString::new)
        .unwrap_or_else(credentials::generate_password);
    let mut out = ensure_database(admin, &password).await?;
    let desired = desired_secret(namespace, server, &password, tls);
    match existing {
        None => {
            secrets
                .create(&PostParams::default(), &desired)
                .await
                .map_err(kube("create the self-service Secret"))?;
            out.changes.push("published the Secret");
        }
        Some(current)
            if current.data != desired.data
                || current.metadata.labels != desired.metadata.labels =>
        {
            let mut updated = desired;
            updated.metadata.resource_version = current.metadata.resource_version;
            secrets
                .replace(SECRET_NAME, &PostParams::default(), &updated)
                .await
                .map_err(kube("update the self-service Secret"))?;
            out.changes.push("updated the Secret");
        }
        Some(_) => {}
    }
    Ok(out)
}
