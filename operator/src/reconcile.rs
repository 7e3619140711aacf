//! The School reconciler: validate (pure) → ensure role → ensure database → migrate →
//! publish the connection Secret → status and events. Deletion runs the reclaim policy
//! behind a finalizer that guards external state only.
//!
//! [`reconcile`] is what the controller calls; tests call it directly against the
//! in-memory API fake and a real PostgreSQL.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edumind_crds::{BackupStatus, ReclaimPolicy, School, SchoolRestore, SchoolStatus};
use k8s_openapi::ByteString;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::backupjobs::{self, BackupConfig, Outcome, RunnerInputs};
use crate::config::{TargetServer, TargetServers};
use crate::credentials::{SecretString, generate_password, scram_verifier, verifier_matches};
use crate::metrics::Metrics;
use crate::naming;
use crate::pg::{self, Claim, ClaimLock, PgError};

/// The one field manager for everything the operator applies (status, Secrets).
pub const FIELD_MANAGER: &str = "edumind-operator";
/// Finalizer guarding the database and role of a School.
pub const FINALIZER: &str = "edumind.ai/database";
/// `edumind.ai/paused: "true"` stops all reconciling of a School (including deletion).
pub const ANNOTATION_PAUSED: &str = "edumind.ai/paused";
/// Setting `edumind.ai/rotate-password` to a new value rotates the password once.
pub const ANNOTATION_ROTATE: &str = "edumind.ai/rotate-password";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const LABEL_SCHOOL_ID: &str = "edumind.ai/school-id";
pub const LABEL_SCHOOL_CODE: &str = "edumind.ai/school-code";
/// Marks the tenant kind of a connection Secret (`school`; `selfservice` for the shared one).
pub const LABEL_TENANT_KIND: &str = "edumind.ai/tenant-kind";
const MANAGED_BY: &str = "edumind-operator";

/// How often a Ready School is re-checked for drift.
pub const RESYNC: Duration = Duration::from_secs(600);
/// How often a School with a permanent problem is re-checked (it may resolve elsewhere).
pub const PERMANENT_RECHECK: Duration = Duration::from_secs(300);
/// Retry delay after a transient error.
pub const TRANSIENT_RETRY: Duration = Duration::from_secs(15);

/// Everything a reconcile needs, shared by all reconciles.
pub struct Context {
    pub client: Client,
    pub servers: TargetServers,
    /// Where the target servers' admin Secrets live.
    pub operator_namespace: String,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// Backup runner image, default storage and Job settings.
    pub backup: BackupConfig,
    /// Admin pool per server name, created on first use.
    pools: Mutex<HashMap<String, ServerHandle>>,
}

#[derive(Clone)]
struct ServerHandle {
    pool: PgPool,
    options: PgConnectOptions,
}

impl Context {
    pub fn new(
        client: Client,
        servers: TargetServers,
        operator_namespace: String,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Self::with_backup(
            client,
            servers,
            operator_namespace,
            metrics,
            BackupConfig::default(),
        )
    }

    /// [`Context::new`] with backup settings.
    pub fn with_backup(
        client: Client,
        servers: TargetServers,
        operator_namespace: String,
        metrics: Arc<Metrics>,
        backup: BackupConfig,
    ) -> Arc<Self> {
        let reporter = Reporter {
            controller: MANAGED_BY.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Arc::new(Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            servers,
            operator_namespace,
            metrics,
            backup,
            pools: Mutex::default(),
        })
    }

    /// An admin connection to `server` (maintenance database).
    pub(crate) async fn admin_conn(
        &self,
        server: &TargetServer,
    ) -> Result<sqlx::pool::PoolConnection<sqlx::Postgres>, Error> {
        let handle = self.server(server).await?;
        Ok(handle.pool.acquire().await.map_err(|e| PgError::Sql {
            step: "connect to the server",
            source: e,
        })?)
    }

    async fn server(&self, server: &TargetServer) -> Result<ServerHandle, Error> {
        if let Some(h) = self.pools.lock().await.get(&server.name) {
            return Ok(h.clone());
        }
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &self.operator_namespace);
        let secret = secrets
            .get_opt(&server.admin_secret)
            .await
            .map_err(|e| Error::Kube {
                step: "read the admin Secret",
                source: Box::new(e),
            })?
            .ok_or_else(|| {
                Error::AdminCredentials(format!(
                    "Secret {}/{} not found",
                    self.operator_namespace, server.admin_secret
                ))
            })?;
        let user = secret_value(&secret, "username").ok_or_else(|| {
            Error::AdminCredentials(format!("Secret {} has no `username`", server.admin_secret))
        })?;
        let password = secret_value(&secret, "password").ok_or_else(|| {
            Error::AdminCredentials(format!("Secret {} has no `password`", server.admin_secret))
        })?;
        let options = pg::admin_options(
            &server.host,
            server.port,
            &user,
            &SecretString::new(password),
            &server.maintenance_database,
        );
        let handle = ServerHandle {
            pool: pg::admin_pool(options.clone(), 4),
            options,
        };
        self.pools
            .lock()
            .await
            .insert(server.name.clone(), handle.clone());
        Ok(handle)
    }

    /// Admin connection options for `server` (reads its admin Secret once).
    pub async fn admin_options(&self, server: &TargetServer) -> Result<PgConnectOptions, Error> {
        Ok(self.server(server).await?.options)
    }

    /// Forgets a server's pool so the next reconcile re-reads its admin Secret. The pool
    /// is not closed: concurrent reconciles may still hold it, and it closes itself when
    /// the last handle is dropped.
    async fn forget_server(&self, name: &str) {
        self.pools.lock().await.remove(name);
    }
}

fn secret_value(secret: &Secret, key: &str) -> Option<String> {
    let bytes = secret.data.as_ref()?.get(key)?;
    String::from_utf8(bytes.0.clone()).ok()
}

/// Why a reconcile did not reach Ready. The `Display` text goes into status conditions
/// and events, so it never contains secrets.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidSpec(String),
    #[error("target server {0:?} is not configured in the operator")]
    UnknownServer(String),
    #[error("{0}")]
    Conflict(String),
    #[error(
        "database {0} existed and has vanished; it is not recreated empty. Restore it from a backup, or delete and recreate the School to start over"
    )]
    DatabaseMissing(String),
    #[error("{0}")]
    FinalBackupFailed(String),
    #[error("{0}")]
    FinalBackupRunning(String),
    #[error("admin credentials of the target server: {0}")]
    AdminCredentials(String),
    #[error(transparent)]
    Pg(#[from] PgError),
    #[error("Kubernetes API error while trying to {step}: {source}")]
    Kube {
        step: &'static str,
        #[source]
        source: Box<kube::Error>,
    },
}

impl Error {
    /// Permanent errors wait for a change (spec, another School, an operator); transient
    /// ones are retried with backoff.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            Error::InvalidSpec(_)
                | Error::UnknownServer(_)
                | Error::Conflict(_)
                | Error::DatabaseMissing(_)
                | Error::FinalBackupFailed(_)
        )
    }

    /// The condition reason (CamelCase) and metrics label.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::InvalidSpec(_) => "InvalidSpec",
            Error::UnknownServer(_) => "UnknownTargetServer",
            Error::Conflict(_) => "Conflict",
            Error::DatabaseMissing(_) => "DatabaseMissing",
            Error::FinalBackupFailed(_) => "FinalBackupFailed",
            Error::FinalBackupRunning(_) => "FinalBackupRunning",
            Error::AdminCredentials(_) => "AdminCredentialsUnavailable",
            Error::Pg(PgError::Migrate(_)) => "MigrationFailed",
            Error::Pg(_) => "DatabaseServerError",
            Error::Kube { .. } => "KubernetesApiError",
        }
    }
}

/// The outcome of validation: everything the apply steps need, derived purely.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    pub namespace: String,
    pub name: String,
    pub school_id: Uuid,
    pub code: String,
    pub server: TargetServer,
    pub database: String,
    pub role: String,
    pub secret_name: String,
    /// `true` unless `spec.active` is false.
    pub login: bool,
    /// A rotation request not acted upon yet (the annotation's value).
    pub rotate: Option<String>,
    /// Whether status says the database was created before (then it must exist).
    pub recorded: bool,
    /// The school's own row in its database, from the spec.
    pub record: pg::SchoolRecord,
    /// A SchoolRestore of this School is in progress: logins stay blocked.
    pub restoring: bool,
}

impl Desired {
    fn claim(&self) -> Claim {
        Claim {
            kind: "school".into(),
            school_id: self.school_id.to_string(),
            code: self.code.clone(),
            owner: format!("{}/{}", self.namespace, self.name),
        }
    }
}

/// Validates a School and derives names (pure: no I/O).
pub fn validate(school: &School, servers: &TargetServers) -> Result<Desired, Error> {
    let invalid = |m: String| Err(Error::InvalidSpec(m));
    let name = school.metadata.name.clone().unwrap_or_default();
    let namespace = school.metadata.namespace.clone().unwrap_or_default();
    if name.is_empty() || namespace.is_empty() {
        return invalid("the School has no name or namespace".into());
    }
    let spec = &school.spec;
    let status = school.status.clone().unwrap_or_default();
    let code = &spec.code;
    if code.trim().is_empty() {
        return invalid("spec.code must not be blank".into());
    }
    if code.chars().count() > edumind_crds::MAX_CODE_CHARS {
        return invalid(format!(
            "spec.code is {} characters long; at most {} are allowed",
            code.chars().count(),
            edumind_crds::MAX_CODE_CHARS
        ));
    }
    if code.chars().any(char::is_control) {
        return invalid("spec.code must not contain control characters".into());
    }
    if spec.name.trim().is_empty() || spec.name.chars().count() > 255 {
        return invalid("spec.name must be 1 to 255 characters".into());
    }
    if spec.address.chars().count() > 500 {
        return invalid("spec.address must be at most 500 characters".into());
    }
    if !spec.contact_email.contains('@') || spec.contact_email.chars().count() > 255 {
        return invalid(
            "spec.contactEmail must be an e-mail address of at most 255 characters".into(),
        );
    }
    if spec
        .contact_phone
        .as_ref()
        .is_some_and(|p| p.chars().count() > 50)
    {
        return invalid("spec.contactPhone must be at most 50 characters".into());
    }
    if !edumind_crds::RETENTION_DAYS.contains(&spec.backup.retention_days) {
        return invalid(format!(
            "spec.backup.retentionDays must be between 7 and 35, not {}",
            spec.backup.retention_days
        ));
    }
    if let Some(storage) = &spec.backup.storage
        && let Err(why) = backupjobs::check_storage(storage)
    {
        return invalid(why);
    }
    if spec.backup.schedule.split_whitespace().count() != 5 {
        return invalid(format!(
            "spec.backup.schedule {:?} is not a 5-field cron expression",
            spec.backup.schedule
        ));
    }
    let school_id = match &spec.school_id {
        Some(id) => match Uuid::parse_str(id) {
            Ok(id) => id,
            Err(_) => return invalid(format!("spec.schoolId {id:?} is not a UUID")),
        },
        None => naming::derived_school_id(&namespace, &name),
    };
    if let Some(recorded) = &status.school_id
        && *recorded != school_id.to_string()
    {
        return invalid(format!(
            "spec.schoolId changed from {recorded}; the school id is immutable"
        ));
    }
    let server = servers
        .resolve(spec.target_server.as_deref())
        .ok_or_else(|| {
            Error::UnknownServer(
                spec.target_server
                    .clone()
                    .unwrap_or_else(|| "(default)".into()),
            )
        })?
        .clone();
    if let Some(recorded) = &status.server
        && *recorded != server.name
    {
        return invalid(format!(
            "the target server changed from {recorded} to {}; it is immutable",
            server.name
        ));
    }
    // Names recorded in status win: they never change once created.
    let computed = naming::school_database(code, school_id);
    let database = status.database.clone().unwrap_or_else(|| computed.clone());
    let role = status.role.clone().unwrap_or(computed);
    if !naming::is_generated_identifier(&database) || !naming::is_generated_identifier(&role) {
        return invalid(
            "status names a database or role the operator could not have generated".into(),
        );
    }
    let rotate = school
        .annotations()
        .get(ANNOTATION_ROTATE)
        .filter(|v| !v.is_empty() && status.password_rotation.as_ref() != Some(*v))
        .cloned();
    Ok(Desired {
        secret_name: naming::secret_name(&name),
        namespace,
        name,
        school_id,
        code: code.clone(),
        server,
        database,
        role,
        login: spec.active,
        rotate,
        recorded: status.database.is_some(),
        record: pg::SchoolRecord {
            id: school_id,
            name: spec.name.clone(),
            code: code.clone(),
            address: spec.address.clone(),
            contact_email: spec.contact_email.clone(),
            contact_phone: spec.contact_phone.clone(),
            active: spec.active,
        },
        restoring: false,
    })
}

/// What the apply steps did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    pub schema_version: i64,
    /// Human-readable list of changes (empty when nothing changed).
    pub changes: Vec<&'static str>,
    pub rotated: bool,
}

/// The connection details the Secret publishes.
pub fn secret_data(d: &Desired, password: &SecretString) -> BTreeMap<String, String> {
    connection_keys(
        &d.server,
        &d.role,
        &d.database,
        password,
        &format!("School-{}-ConnectionString", d.school_id),
    )
}

/// The connection Secret contract (design brief): the keys users of other Postgres
/// operators expect, plus the .NET connection string under `dotnet_key`. Shared by school
/// and self-service Secrets. Role, database and password are `[A-Za-z0-9_]`: nothing needs
/// escaping in any of the formats.
pub fn connection_keys(
    server: &TargetServer,
    user: &str,
    db: &str,
    password: &SecretString,
    dotnet_key: &str,
) -> BTreeMap<String, String> {
    let (host, port, pw) = (
        server.client_host(),
        server.client_port(),
        password.expose(),
    );
    BTreeMap::from([
        ("username".into(), user.into()),
        ("user".into(), user.into()),
        ("password".into(), pw.into()),
        ("host".into(), host.into()),
        ("port".into(), port.to_string()),
        ("dbname".into(), db.into()),
        (
            "uri".into(),
            format!("postgresql://{user}:{pw}@{host}:{port}/{db}"),
        ),
        (
            "jdbc-uri".into(),
            format!("jdbc:postgresql://{host}:{port}/{db}?user={user}&password={pw}"),
        ),
        ("pgpass".into(), format!("{host}:{port}:{db}:{user}:{pw}\n")),
        (
            dotnet_key.into(),
            format!("Host={host};Port={port};Database={db};Username={user};Password={pw}"),
        ),
    ])
}

fn desired_secret(school: &School, d: &Desired, password: &SecretString) -> Secret {
    let labels = BTreeMap::from([
        (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
        (LABEL_SCHOOL_ID.to_string(), d.school_id.to_string()),
        (LABEL_SCHOOL_CODE.to_string(), label_value(&d.code)),
        (LABEL_TENANT_KIND.to_string(), "school".to_string()),
    ]);
    Secret {
        metadata: ObjectMeta {
            name: Some(d.secret_name.clone()),
            namespace: Some(d.namespace.clone()),
            labels: Some(labels),
            owner_references: school.controller_owner_ref(&()).map(|r| vec![r]),
            ..Default::default()
        },
        type_: Some("kubernetes.io/basic-auth".into()),
        data: Some(
            secret_data(d, password)
                .into_iter()
                .map(|(k, v)| (k, ByteString(v.into_bytes())))
                .collect(),
        ),
        ..Default::default()
    }
}

/// Label values are at most 63 characters of `[A-Za-z0-9._-]`, alphanumeric at the
/// ends. A code that already is one is used as is; anything else becomes its slug (the
/// school id label is the exact key; the code label is for humans and selectors).
pub fn label_value(code: &str) -> String {
    let valid = !code.is_empty()
        && code.len() <= 63
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && code
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && code
            .bytes()
            .last()
            .is_some_and(|b| b.is_ascii_alphanumeric());
    if valid {
        code.to_string()
    } else {
        naming::code_slug(code).trim_matches('_').to_string()
    }
}

fn secret_up_to_date(existing: &Secret, desired: &Secret) -> bool {
    let labels_ok = desired
        .metadata
        .labels
        .iter()
        .flatten()
        .all(|(k, v)| existing.labels().get(k) == Some(v));
    let owner_ok = desired
        .metadata
        .owner_references
        .iter()
        .flatten()
        .all(|o| existing.owner_references().iter().any(|e| e.uid == o.uid));
    labels_ok && owner_ok && existing.type_ == desired.type_ && existing.data == desired.data
}

/// The apply steps, in order. Each step reads before it writes, so an unchanged School
/// issues no DDL and no Kubernetes writes.
async fn apply(school: &School, d: &Desired, ctx: &Context) -> Result<Applied, Error> {
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
            if role.privileged || role.can_login != d.login {
                pg::reset_role_attributes(&mut conn, &d.role, d.login).await?;
                applied.changes.push(if role.privileged {
                    "removed privileges from the role"
                } else if d.login {
                    "enabled logins"
                } else {
                    "disabled logins"
                });
                if !d.login {
                    pg::terminate_role_sessions(&mut conn, &d.role).await?;
                }
            }
            Some(role)
        }
        None => {
            // The role vanished while its database stayed: recreate it with a new password.
            let password = generate_password();
            let verifier = scram_verifier(&password).ok_or(PgError::Verifier)?;
            pg::create_role(&mut conn, &d.role, &verifier, &claim, d.login).await?;
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
            set_new_password(&mut conn, &d.role, &mut applied, "rotated the password").await?
        }
        (None, None) => {
            let current = existing
                .as_ref()
                .and_then(|s| secret_value(s, "password"))
                .map(SecretString::new);
            let verifier = role
                .as_ref()
                .and_then(|r| r.verifier.clone())
                .unwrap_or_default();
            match current {
                Some(p) if verifier_matches(&p, &verifier) => p,
                _ => {
                    set_new_password(&mut conn, &d.role, &mut applied, "repaired the credentials")
                        .await?
                }
            }
        }
    };
    drop(conn);

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

    // Connection Secret.
    let desired = desired_secret(school, d, &password);
    if !existing
        .as_ref()
        .is_some_and(|e| secret_up_to_date(e, &desired))
    {
        secrets
            .patch(
                &d.secret_name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&desired),
            )
            .await
            .map_err(|e| Error::Kube {
                step: "write the connection Secret",
                source: Box::new(e),
            })?;
        applied.changes.push("wrote the connection Secret");
    }
    Ok(applied)
}

async fn set_new_password(
    conn: &mut sqlx::PgConnection,
    role: &str,
    applied: &mut Applied,
    what: &'static str,
) -> Result<SecretString, Error> {
    let password = generate_password();
    let verifier = scram_verifier(&password).ok_or(PgError::Verifier)?;
    pg::set_password(conn, role, &verifier).await?;
    applied.changes.push(what);
    Ok(password)
}

/// Creates role and database of a new School, after checking under the claim lock that
/// no other School on this server holds the same code or school id.
async fn claim_new(
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
            let verifier = scram_verifier(&password).ok_or(PgError::Verifier)?;
            pg::create_role(conn, &d.role, &verifier, claim, d.login).await?;
            *new_password = Some(password);
            applied.changes.push("created the role");
        }
    }
    pg::create_database(conn, &d.database, &d.role, claim).await?;
    applied.changes.push("created the database");
    Ok(())
}

fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    old: &[Condition],
) -> Condition {
    let status = if ok { "True" } else { "False" };
    // Keep the transition time unless the status flips.
    let last_transition_time = old
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| Time(k8s_openapi::jiff::Timestamp::now()));
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

fn ready_condition(status: &Option<SchoolStatus>) -> Option<(String, String)> {
    status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| (c.status.clone(), c.reason.clone()))
}

/// Builds the new status from the old one and the outcome (pure).
pub fn next_status(
    school: &School,
    d: Option<&Desired>,
    result: &Result<Applied, Error>,
) -> SchoolStatus {
    let old = school.status.clone().unwrap_or_default();
    let generation = school.metadata.generation;
    let mut s = old.clone();
    s.observed_generation = generation;
    if let Some(d) = d {
        s.school_id = Some(d.school_id.to_string());
        s.server = Some(d.server.name.clone());
    }
    let (ready, reason, message, phase) = match (result, d) {
        (Ok(applied), Some(d)) => {
            s.database = Some(d.database.clone());
            s.role = Some(d.role.clone());
            s.secret_name = Some(d.secret_name.clone());
            s.schema_version = Some(applied.schema_version);
            if let Some(token) = &d.rotate {
                s.password_rotation = Some(token.clone());
            }
            if d.restoring {
                (
                    true,
                    "Restoring",
                    format!(
                        "database {} is provisioned; a SchoolRestore is running, logins are blocked until it ends",
                        d.database
                    ),
                    "Restoring",
                )
            } else if d.login {
                (
                    true,
                    "Provisioned",
                    format!(
                        "database {} is ready at schema version {}",
                        d.database, applied.schema_version
                    ),
                    "Ready",
                )
            } else {
                (
                    true,
                    "Inactive",
                    format!(
                        "database {} is provisioned; logins are disabled because spec.active is false",
                        d.database
                    ),
                    "Inactive",
                )
            }
        }
        (Ok(_), None) => (false, "InvalidSpec", "no desired state".into(), "Failed"),
        (Err(e), _) => (
            false,
            e.reason(),
            e.to_string(),
            if e.is_permanent() {
                "Failed"
            } else {
                "Pending"
            },
        ),
    };
    let ready_cond = condition("Ready", ready, reason, message, generation, &old.conditions);
    s.conditions
        .retain(|c| c.type_ != "Ready" && c.type_ != "Paused");
    s.conditions.insert(0, ready_cond);
    s.phase = Some(phase.into());
    s
}

async fn patch_status(school: &School, ctx: &Context, status: &SchoolStatus) -> Result<(), Error> {
    if school.status.as_ref() == Some(status) {
        return Ok(());
    }
    let api: Api<School> =
        Api::namespaced(ctx.client.clone(), &school.namespace().unwrap_or_default());
    let patch = json!({"apiVersion": "edumind.ai/v1alpha1", "kind": "School", "status": status});
    api.patch_status(
        &school.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(|e| Error::Kube {
        step: "update the School's status",
        source: Box::new(e),
    })?;
    Ok(())
}

async fn publish(
    ctx: &Context,
    school: &School,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &school.object_ref(&())).await {
        tracing::warn!(error = %e, "cannot publish event");
    }
}

/// Adds the finalizer and returns the updated School.
/// Applies a JSON patch to the School's metadata (finalizers), as one API call.
async fn patch_school(
    school: &School,
    ctx: &Context,
    patch: serde_json::Value,
    step: &'static str,
) -> Result<School, Error> {
    let api: Api<School> =
        Api::namespaced(ctx.client.clone(), &school.namespace().unwrap_or_default());
    let patch: json_patch::Patch =
        serde_json::from_value(patch).map_err(|e| Error::InvalidSpec(e.to_string()))?;
    api.patch(
        &school.name_any(),
        &PatchParams::default(),
        &Patch::<()>::Json(patch),
    )
    .await
    .map_err(|e| Error::Kube {
        step,
        source: Box::new(e),
    })
}

async fn add_finalizer(school: &School, ctx: &Context) -> Result<School, Error> {
    let patch = if school.finalizers().is_empty() {
        json!([{"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]}])
    } else {
        json!([{"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER}])
    };
    patch_school(school, ctx, patch, "add the finalizer").await
}

async fn remove_finalizer(school: &School, ctx: &Context) -> Result<(), Error> {
    let Some(index) = school.finalizers().iter().position(|f| f == FINALIZER) else {
        return Ok(());
    };
    let path = format!("/metadata/finalizers/{index}");
    let patch =
        json!([{"op": "test", "path": path, "value": FINALIZER}, {"op": "remove", "path": path}]);
    patch_school(school, ctx, patch, "remove the finalizer").await?;
    Ok(())
}

fn is_paused(school: &School) -> bool {
    school
        .annotations()
        .get(ANNOTATION_PAUSED)
        .is_some_and(|v| v == "true")
}

/// Reconciles one School. Permanent problems end as a status condition and `Ok`;
/// transient ones return `Err` for [`error_policy`] to retry.
pub async fn reconcile(school: Arc<School>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_inner(&school, &ctx).await;
    ctx.metrics
        .duration
        .observe(started.elapsed().as_secs_f64());
    let label = match &result {
        Ok(_) => "ok".to_string(),
        Err(e) => {
            ctx.metrics
                .errors
                .get_or_create(&crate::metrics::ReasonLabels {
                    reason: e.reason().into(),
                })
                .inc();
            "error".to_string()
        }
    };
    ctx.metrics
        .reconciles
        .get_or_create(&crate::metrics::ResultLabels { result: label })
        .inc();
    result
}

async fn reconcile_inner(school: &School, ctx: &Context) -> Result<Action, Error> {
    let uid = school.uid().unwrap_or_default();
    if is_paused(school) {
        let mut status = school.status.clone().unwrap_or_default();
        if !status.conditions.iter().any(|c| c.type_ == "Paused") {
            status.conditions.push(condition(
                "Paused",
                true,
                "PausedByAnnotation",
                format!("{ANNOTATION_PAUSED} is \"true\": the operator changes nothing"),
                school.metadata.generation,
                &[],
            ));
            status.phase = Some("Paused".into());
            patch_status(school, ctx, &status).await?;
        }
        return Ok(Action::await_change());
    }
    if school.metadata.deletion_timestamp.is_some() {
        ctx.metrics.set_ready(&uid, None);
        return cleanup(school, ctx).await;
    }
    let updated;
    let school = if school.finalizers().iter().any(|f| f == FINALIZER) {
        school
    } else {
        updated = add_finalizer(school, ctx).await?;
        &updated
    };

    let (desired, result) = match validate(school, &ctx.servers) {
        Ok(mut d) => {
            let result = match restore_in_progress(ctx, school).await {
                Ok(restoring) => {
                    if restoring {
                        d.restoring = true;
                        d.login = false;
                    }
                    apply(school, &d, ctx).await
                }
                Err(e) => Err(e),
            };
            (Some(d), result)
        }
        Err(e) => (None, Err(e)),
    };
    if let (Err(Error::Pg(PgError::Sql { .. }) | Error::AdminCredentials(_)), Some(d)) =
        (&result, &desired)
    {
        ctx.forget_server(&d.server.name).await;
    }
    let mut status = next_status(school, desired.as_ref(), &result);
    let mut backup_error = None;
    let mut new_failures = Vec::new();
    if let (Ok(_), Some(d)) = (&result, &desired) {
        match ensure_backups(school, d, ctx).await {
            Ok(view) => {
                status.last_backup = view
                    .status
                    .last_success
                    .as_ref()
                    .map(|s| s.time.clone())
                    .or(status.last_backup);
                status.backup = Some(view.status);
                status.conditions.retain(|c| c.type_ != "BackupHealthy");
                status.conditions.push(view.condition);
                new_failures = view.new_failures;
            }
            Err(e) => backup_error = Some(e),
        }
    }
    let before = ready_condition(&school.status);
    patch_status(school, ctx, &status).await?;
    ctx.metrics.set_ready(&uid, Some(result.is_ok()));
    for f in &new_failures {
        publish(
            ctx,
            school,
            EventType::Warning,
            "BackupFailed",
            "Backup",
            format!(
                "backup Job {} failed ({}): {}",
                f.job.as_deref().unwrap_or("?"),
                f.reason,
                f.message
            ),
        )
        .await;
    }

    match &result {
        Ok(applied) => {
            let after = ready_condition(&Some(status.clone()));
            if before != after {
                let note = status
                    .conditions
                    .first()
                    .map(|c| c.message.clone())
                    .unwrap_or_default();
                let reason = after.map(|a| a.1).unwrap_or_default();
                publish(ctx, school, EventType::Normal, &reason, "Reconcile", note).await;
            }
            if applied.rotated {
                publish(
                    ctx,
                    school,
                    EventType::Normal,
                    "PasswordRotated",
                    "RotatePassword",
                    "the school role's password was rotated and the Secret updated".into(),
                )
                .await;
            }
            if !applied.changes.is_empty() {
                tracing::info!(school = %school.name_any(), changes = ?applied.changes, "reconciled");
            }
            if let Some(e) = backup_error {
                return Err(e);
            }
            Ok(Action::requeue(RESYNC))
        }
        Err(e) if e.is_permanent() => {
            if before != ready_condition(&Some(status.clone())) {
                publish(
                    ctx,
                    school,
                    EventType::Warning,
                    e.reason(),
                    "Reconcile",
                    e.to_string(),
                )
                .await;
            }
            Ok(Action::requeue(PERMANENT_RECHECK))
        }
        Err(_) => result.map(|_| Action::await_change()),
    }
}

/// Runs the reclaim policy of a School being deleted, then releases the finalizer.
async fn cleanup(school: &School, ctx: &Context) -> Result<Action, Error> {
    if !school.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(Action::await_change());
    }
    match school.spec.reclaim_policy {
        ReclaimPolicy::Retain => {
            publish(
                ctx,
                school,
                EventType::Normal,
                "Retained",
                "Delete",
                "reclaimPolicy retain: the database and role are kept".into(),
            )
            .await;
        }
        ReclaimPolicy::Snapshot => {
            match final_backup(school, ctx).await {
                Ok(note) => {
                    publish(
                        ctx,
                        school,
                        EventType::Normal,
                        "FinalBackupTaken",
                        "Delete",
                        note,
                    )
                    .await;
                }
                Err(e) if matches!(e, Error::Kube { .. } | Error::Pg(_)) => return Err(e),
                Err(e) => {
                    // Running, or failed: nothing is dropped, the finalizer stays.
                    let mut status = next_status(school, None, &Err(e));
                    status.phase = Some("Deleting".into());
                    let before = ready_condition(&school.status);
                    patch_status(school, ctx, &status).await?;
                    let after = ready_condition(&Some(status.clone()));
                    let failed = after.as_ref().is_some_and(|a| a.1 == "FinalBackupFailed");
                    if failed && before != after {
                        let note = status
                            .conditions
                            .first()
                            .map(|c| c.message.clone())
                            .unwrap_or_default();
                        publish(
                            ctx,
                            school,
                            EventType::Warning,
                            "FinalBackupFailed",
                            "Delete",
                            note,
                        )
                        .await;
                    }
                    return Ok(Action::requeue(if failed {
                        PERMANENT_RECHECK
                    } else {
                        TRANSIENT_RETRY
                    }));
                }
            }
            drop_and_report(
                school,
                ctx,
                "reclaimPolicy snapshot: final backup verified, the database and role were dropped",
            )
            .await?;
            if let Err(e) = delete_final_job(school, ctx).await {
                tracing::warn!(error = %e, "cannot delete the final backup Job");
            }
        }
        ReclaimPolicy::Delete => {
            drop_and_report(
                school,
                ctx,
                "reclaimPolicy delete: the database and role were dropped",
            )
            .await?;
        }
    }
    remove_finalizer(school, ctx).await?;
    Ok(Action::await_change())
}

/// Drops database and role; a failure is written to status and returned.
async fn drop_and_report(school: &School, ctx: &Context, note: &str) -> Result<(), Error> {
    if let Err(e) = drop_school(school, ctx).await {
        let status = next_status(
            school,
            None,
            &Err(Error::InvalidSpec(format!("deletion blocked: {e}"))),
        );
        patch_status(school, ctx, &status).await?;
        return Err(e);
    }
    publish(
        ctx,
        school,
        EventType::Normal,
        "Deleted",
        "Delete",
        note.into(),
    )
    .await;
    Ok(())
}

async fn drop_school(school: &School, ctx: &Context) -> Result<(), Error> {
    let d = validate(school, &ctx.servers)?;
    let handle = ctx.server(&d.server).await?;
    let mut conn = handle.pool.acquire().await.map_err(|e| PgError::Sql {
        step: "connect to the server",
        source: e,
    })?;
    let owner = d.claim().owner;
    let db = pg::database_state(&mut conn, &d.database, &d.role).await?;
    let role = pg::role_state(&mut conn, &d.role).await?;
    let ours = |c: Option<&Claim>| c.map(|c| &c.owner) == Some(&owner);
    if db.as_ref().is_some_and(|s| !ours(s.claim.as_ref()))
        || role.as_ref().is_some_and(|r| !ours(r.claim.as_ref()))
    {
        return Err(Error::Conflict(format!(
            "database or role {} belongs to another School; not dropping it",
            d.database
        )));
    }
    pg::drop_tenant(&mut conn, &d.database, &d.role).await?;
    Ok(())
}

/// Whether a SchoolRestore of this School has not finished yet (then its logins stay off).
pub async fn restore_in_progress(ctx: &Context, school: &School) -> Result<bool, Error> {
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

fn kube_err(step: &'static str) -> impl FnOnce(kube::Error) -> Error {
    move |e| Error::Kube {
        step,
        source: Box::new(e),
    }
}

/// Finished backup Jobs of a school (scheduled, on-demand, final) with their outcomes.
pub(crate) async fn backup_outcomes(
    ctx: &Context,
    namespace: &str,
    school_id: &str,
) -> Result<Vec<backupjobs::JobOutcome>, Error> {
    let selector = format!("{}={school_id}", backupjobs::LABEL_SCHOOL_ID);
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
async fn ensure_backups(school: &School, d: &Desired, ctx: &Context) -> Result<BackupView, Error> {
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
            "CronJobConflict".to_string(),
            format!("CronJob {name} exists and is not this School's; rename or delete it"),
        )
    } else {
        backupjobs::health(&status, storage.is_some(), suspended)
    };
    let condition = backupjobs::tri_condition(
        "BackupHealthy",
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

/// `reclaimPolicy: snapshot`: takes the final backup in a Job (the runner needs the
/// School's storage mounted, which the operator pod does not have) and waits for it.
/// `Ok(note)` once a verified backup is stored; `FinalBackupRunning` while it runs;
/// `FinalBackupFailed` when it failed (nothing is dropped; deleting the failed Job
/// retries).
async fn final_backup(school: &School, ctx: &Context) -> Result<String, Error> {
    let d = validate(school, &ctx.servers)?;
    if !d.recorded {
        return Ok("the School never had a database: nothing to back up".into());
    }
    let storage = backupjobs::resolve_storage(school.spec.backup.storage.as_ref(), &ctx.backup)
        .ok_or_else(|| {
            Error::FinalBackupFailed(
                "reclaimPolicy snapshot needs backup storage: set spec.backup.storage (or the operator's default storage), or change reclaimPolicy; nothing was dropped".into(),
            )
        })?;
    if !school.spec.active {
        return Err(Error::FinalBackupFailed(
            "the final backup runs as the school's role, which cannot log in while spec.active is false; set active: true or change reclaimPolicy; nothing was dropped".into(),
        ));
    }
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &d.namespace);
    let name = backupjobs::final_job_name(&d.name);
    let Some(job) = jobs
        .get_opt(&name)
        .await
        .map_err(kube_err("read the final backup Job"))?
    else {
        let inputs = RunnerInputs {
            school_name: d.name.clone(),
            school_id: d.school_id.to_string(),
            secret_name: d.secret_name.clone(),
            storage,
            run: backupjobs::Run::Backup {
                kind: "final",
                retention_days: school.spec.backup.retention_days,
            },
        };
        // No owner reference: the School is being deleted, and a foreground deletion
        // would remove the Job before it ran. The operator deletes it after the drop.
        let job = backupjobs::job(&name, &d.namespace, None, &ctx.backup, &inputs);
        jobs.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&job),
        )
        .await
        .map_err(kube_err("create the final backup Job"))?;
        return Err(Error::FinalBackupRunning(format!(
            "reclaimPolicy snapshot: final backup Job {name} started; the database is dropped once it succeeded"
        )));
    };
    let labels = job.labels();
    if labels.get(backupjobs::LABEL_KIND).map(String::as_str) != Some("final")
        || labels.get(backupjobs::LABEL_SCHOOL_ID) != Some(&d.school_id.to_string())
    {
        return Err(Error::FinalBackupFailed(format!(
            "a Job {name} exists that is not this School's final backup; delete or rename it; nothing was dropped"
        )));
    }
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &d.namespace);
    let pods = pods
        .list(&ListParams::default().labels(&format!("{}={name}", backupjobs::LABEL_JOB_NAME)))
        .await
        .map_err(kube_err("list the final backup Pods"))?;
    match backupjobs::job_outcome(&job, &pods.items).map(|o| o.result) {
        None => Err(Error::FinalBackupRunning(format!(
            "reclaimPolicy snapshot: final backup Job {name} is running; the database is dropped once it succeeded"
        ))),
        Some(Outcome::Succeeded { object, size, .. }) => Ok(format!(
            "final backup {object} ({size} bytes) stored and verified by Job {name}"
        )),
        Some(Outcome::SucceededUnknown) => Ok(format!(
            "final backup Job {name} completed (stored and verified)"
        )),
        Some(Outcome::Failed { reason, message }) => Err(Error::FinalBackupFailed(format!(
            "final backup Job {name} failed ({reason}): {message}; nothing was dropped. Fix the cause and delete the Job to retry, or change reclaimPolicy"
        ))),
    }
}

async fn delete_final_job(school: &School, ctx: &Context) -> Result<(), Error> {
    let jobs: Api<Job> =
        Api::namespaced(ctx.client.clone(), &school.namespace().unwrap_or_default());
    match jobs
        .delete(
            &backupjobs::final_job_name(&school.name_any()),
            &DeleteParams::background(),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(kube_err("delete the final backup Job")(e)),
    }
}

/// Retry policy: transient errors back off, permanent ones were already handled.
pub fn error_policy(_school: Arc<School>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(reason = error.reason(), error = %error, "reconcile failed");
    if error.is_permanent() {
        Action::requeue(PERMANENT_RECHECK)
    } else {
        Action::requeue(TRANSIENT_RETRY)
    }
}
