//! `edumind-local`: provision School manifests without Kubernetes and write the connection
//! Secrets as YAML files (what the data plane's directory tenant source reads).
//!
//! A crate of its own (library and binary) so that the operator's build, and the
//! controller image, carry no fake Kubernetes API; `kube-fake-client` is a dependency of
//! this crate only. The demo uses the library in-process.
//!
//! It runs the controller's own [`school::reconcile`] and [`selfservice::ensure`]
//! against an in-process, in-memory Kubernetes API (`kube-fake-client`), seeded with the
//! Schools, the admin credentials and the Secret files of an earlier run, then writes the
//! resulting Secrets out. So local mode cannot drift from the controller: role, database,
//! migrations, credentials and Secret content all come from the same code path (see
//! `docs/demo.md` for why this beat calling the pipeline's steps one by one).
//!
//! Idempotent: the Secret files of an earlier run are read back first, so passwords are
//! kept and a second run rewrites nothing; a missing file gets a fresh password (the
//! role follows). Every School file is parsed and validated before anything is touched.

use edumind_crds::status::ConditionType;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, bail};
use edumind_crds::School;
use edumind_crds::connection;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::{Client, ResourceExt};
use serde::{Deserialize, Serialize};

use edumind_operator::config::TargetServers;
use edumind_operator::metrics::Metrics;
use edumind_operator::school::{self, OperatorContext};
use edumind_operator::selfservice;

/// The namespace the admin Secrets (and the self-service Secret) live in.
pub const OPERATOR_NAMESPACE: &str = "edumind-system";
/// The namespace of Schools whose manifest names none (kubectl's default).
pub const DEFAULT_NAMESPACE: &str = "default";
/// Where admin credentials come from when no admin Secret file names the server.
pub const ADMIN_URL_ENV: &str = "EDUMIND_ADMIN_URL";

/// What to provision and where to write the Secrets.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// The target servers (`servers.yaml`, the controller's format).
    pub config: PathBuf,
    /// School manifests: files, or directories of `*.yaml`/`*.yml` files.
    pub schools: Vec<PathBuf>,
    /// Directory the Secret files are written to (created, mode 0700).
    pub out: PathBuf,
    /// Also provision the shared self-service tenant on the default server.
    pub self_service: bool,
    /// Directory of admin Secret manifests (`metadata.name` = a server's `adminSecret`).
    pub admin_secrets: Option<PathBuf>,
    /// Admin URL (`postgres://user:password@…`) whose user and password serve every
    /// server without an admin Secret file; normally from `EDUMIND_ADMIN_URL`.
    pub admin_url: Option<String>,
}

/// The outcome for one School.
#[derive(Debug, Clone, Serialize)]
pub struct SchoolOutcome {
    pub file: PathBuf,
    pub namespace: String,
    pub name: String,
    pub code: String,
    pub school_id: String,
    pub ready: bool,
    pub reason: String,
    pub message: String,
    pub database: Option<String>,
    pub role: Option<String>,
    pub schema_version: Option<i64>,
    pub secret_file: Option<PathBuf>,
    /// Whether the Secret file was (re)written by this run.
    pub secret_written: bool,
}

/// The outcome for the self-service tenant.
#[derive(Debug, Clone, Serialize)]
pub struct SelfServiceOutcome {
    pub database: String,
    pub role: String,
    pub schema_version: i64,
    pub changes: Vec<&'static str>,
    pub secret_file: PathBuf,
    pub secret_written: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct LocalReport {
    pub schools: Vec<SchoolOutcome>,
    pub self_service: Option<SelfServiceOutcome>,
}

impl LocalReport {
    /// Whether every School reached Ready.
    pub fn all_ready(&self) -> bool {
        self.schools.iter().all(|s| s.ready)
    }
}

/// One School manifest as read from disk.
struct SchoolFile {
    file: PathBuf,
    school: School,
}

/// Expands files and directories into the School manifest files, sorted per directory.
fn school_files(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("cannot read directory {}", path.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.is_file()
                        && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
                })
                .collect();
            files.sort();
            out.extend(files);
        } else {
            out.push(path.clone());
        }
    }
    if out.is_empty() {
        bail!("no School manifests found in {paths:?}");
    }
    Ok(out)
}

/// Parses every document of a School manifest file. Errors name the file and, where
/// serde knows it, the field.
fn parse_schools(file: &Path) -> anyhow::Result<Vec<School>> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read School manifest {}", file.display()))?;
    let mut schools = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(&text).enumerate() {
        let value = serde_yaml_ng::Value::deserialize(doc).map_err(|e| {
            anyhow::anyhow!(
                "{} (document {}): not valid YAML: {e}",
                file.display(),
                i + 1
            )
        })?;
        if value.is_null() {
            continue; // an empty document (e.g. a trailing `---`)
        }
        let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or("");
        let api = value
            .get("apiVersion")
            .and_then(|k| k.as_str())
            .unwrap_or("");
        if kind != "School" || api != "edumind.ai/v1alpha1" {
            bail!(
                "{} (document {}): expected apiVersion edumind.ai/v1alpha1 and kind School, found {api:?} {kind:?}",
                file.display(),
                i + 1
            );
        }
        let mut school: School = serde_yaml_ng::from_value(value).map_err(|e| {
            anyhow::anyhow!(
                "{} (document {}): invalid School: {e}",
                file.display(),
                i + 1
            )
        })?;
        // Local mode starts from what a user writes: server-populated fields (as in
        // `kubectl get -o yaml` output) and status are dropped.
        let meta = std::mem::take(&mut school.metadata);
        school.metadata = ObjectMeta {
            name: meta.name,
            namespace: Some(meta.namespace.unwrap_or_else(|| DEFAULT_NAMESPACE.into())),
            labels: meta.labels,
            annotations: meta.annotations,
            ..Default::default()
        };
        school.status = None;
        schools.push(school);
    }
    if schools.is_empty() {
        bail!("{}: no School in the file", file.display());
    }
    Ok(schools)
}

/// Reads Secret manifests (`*.yaml`/`*.yml`) from a directory; a missing directory is empty.
fn read_secret_files(dir: &Path) -> anyhow::Result<Vec<(PathBuf, Secret)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
    };
    let mut out = Vec::new();
    for entry in entries {
        let path = entry?.path();
        if !matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            continue;
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let secret = connection::secret_from_yaml(&text)
            .with_context(|| format!("{} is not a Secret manifest", path.display()))?;
        out.push((path, secret));
    }
    Ok(out)
}

/// The admin Secrets of the configured servers, from files or the admin URL.
fn admin_secrets(servers: &TargetServers, opts: &LocalOptions) -> anyhow::Result<Vec<Secret>> {
    let mut files = BTreeMap::new();
    if let Some(dir) = &opts.admin_secrets {
        for (_, secret) in read_secret_files(dir)? {
            files.insert(secret.name_any(), secret);
        }
    }
    let from_url = match &opts.admin_url {
        Some(url) => {
            let parsed = url::Url::parse(url)
                .map_err(|_| anyhow::anyhow!("{ADMIN_URL_ENV} is not a URL"))?;
            let user = parsed.username().to_string();
            let password = parsed.password().unwrap_or_default().to_string();
            if user.is_empty() {
                bail!("{ADMIN_URL_ENV} names no user");
            }
            Some((user, password))
        }
        None => None,
    };
    let mut out = Vec::new();
    for server in servers.iter() {
        let data = match (files.get(&server.admin_secret), &from_url) {
            (Some(secret), _) => {
                let mut s = secret.clone();
                s.metadata = ObjectMeta {
                    name: Some(server.admin_secret.clone()),
                    namespace: Some(OPERATOR_NAMESPACE.into()),
                    ..Default::default()
                };
                out.push(s);
                continue;
            }
            (None, Some((user, password))) => BTreeMap::from([
                (
                    "username".to_string(),
                    ByteString(user.clone().into_bytes()),
                ),
                (
                    "password".to_string(),
                    ByteString(password.clone().into_bytes()),
                ),
            ]),
            (None, None) => bail!(
                "no admin credentials for target server {:?}: set {ADMIN_URL_ENV}=postgres://USER:PASSWORD@… or give --admin-secrets with a Secret named {:?}",
                server.name,
                server.admin_secret
            ),
        };
        out.push(Secret {
            metadata: ObjectMeta {
                name: Some(server.admin_secret.clone()),
                namespace: Some(OPERATOR_NAMESPACE.into()),
                ..Default::default()
            },
            data: Some(data),
            ..Default::default()
        });
    }
    Ok(out)
}

/// Longest Secret file name written (file systems allow 255 bytes; leave room for the
/// temporary file's suffix while writing).
pub const MAX_FILE_NAME: usize = 200;

/// The file a Secret is written to: `<namespace>_<name>.yaml`. A Kubernetes name may be
/// 253 characters (the namespace 63): longer combinations keep a prefix and a digest of
/// the whole, so the name stays unique, stable and under [`MAX_FILE_NAME`] bytes.
pub fn secret_file_name(namespace: &str, name: &str) -> String {
    let full = format!("{namespace}_{name}");
    if full.len() + ".yaml".len() <= MAX_FILE_NAME {
        return format!("{full}.yaml");
    }
    let digest = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, full.as_bytes()).simple();
    let keep = MAX_FILE_NAME - ".yaml".len() - 1 - 12;
    // Kubernetes names are ASCII, so any byte index is a character boundary.
    let prefix = full.get(..keep).unwrap_or(&full);
    format!("{prefix}-{}.yaml", &digest.to_string()[..12])
}

/// The Secret as a clean manifest (the contract's [`connection::secret_to_yaml`]): what
/// `kubectl get secret -o yaml` shows without the server-populated fields (uid,
/// resourceVersion, owner references of the in-memory API).
fn manifest(secret: &Secret) -> anyhow::Result<String> {
    Ok(connection::secret_to_yaml(secret)?)
}

/// Writes `text` to `path` (mode 0600) unless it already holds exactly that; atomic
/// (temporary file in the same directory, then rename). Returns whether it wrote.
fn write_if_changed(path: &Path, text: &str) -> anyhow::Result<bool> {
    if std::fs::read_to_string(path).ok().as_deref() == Some(text) {
        return Ok(false);
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    // tempfile creates the file with mode 0600.
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot create a file in {}", dir.display()))?;
    tmp.write_all(text.as_bytes())?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(true)
}

async fn build_client(admin: Vec<Secret>, existing: Vec<Secret>) -> anyhow::Result<Client> {
    let mut builder = kube_fake_client::ClientBuilder::new()
        .with_resource::<School>()
        .with_status_subresource::<School>();
    for s in admin.into_iter().chain(existing) {
        builder = builder.with_object(s);
    }
    builder
        .build()
        .await
        .map_err(|e| anyhow::anyhow!("cannot start the in-memory Kubernetes API: {e}"))
}

/// Provisions every School (and the self-service tenant when asked) and writes the
/// Secret files. Fails before touching any server when a manifest is invalid.
pub async fn provision(opts: &LocalOptions) -> anyhow::Result<LocalReport> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let text = std::fs::read_to_string(&opts.config)
        .with_context(|| format!("cannot read {}", opts.config.display()))?;
    let servers = TargetServers::from_yaml(&text).with_context(|| {
        format!(
            "invalid target server configuration {}",
            opts.config.display()
        )
    })?;

    // Parse and validate everything first: an invalid manifest stops the run here.
    let mut inputs = Vec::new();
    for file in school_files(&opts.schools)? {
        for school in parse_schools(&file)? {
            school::validate(&school, &servers).map_err(|e| {
                anyhow::anyhow!(
                    "{}: School {}: {e}",
                    file.display(),
                    school.metadata.name.as_deref().unwrap_or("(no name)")
                )
            })?;
            inputs.push(SchoolFile {
                file: file.clone(),
                school,
            });
        }
    }
    let mut seen = BTreeMap::new();
    for input in &inputs {
        let key = (
            input.school.namespace().unwrap_or_default(),
            input.school.name_any(),
        );
        if let Some(other) = seen.insert(key.clone(), input.file.clone()) {
            bail!(
                "School {}/{} is defined twice ({} and {})",
                key.0,
                key.1,
                other.display(),
                input.file.display()
            );
        }
    }
    let admin = admin_secrets(&servers, opts)?;

    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("cannot create {}", opts.out.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&opts.out, std::fs::Permissions::from_mode(0o700))?;
    }
    // Secrets of an earlier run carry the passwords to keep.
    let existing: Vec<Secret> = read_secret_files(&opts.out)?
        .into_iter()
        .map(|(_, s)| s)
        .filter(|s| {
            s.labels()
                .get(connection::LABEL_MANAGED_BY)
                .map(String::as_str)
                == Some(connection::MANAGED_BY)
        })
        .collect();
    let client = build_client(admin, existing).await?;
    let ctx = OperatorContext::new(
        client.clone(),
        servers.clone(),
        OPERATOR_NAMESPACE.into(),
        Arc::new(Metrics::default()),
    );

    let mut report = LocalReport {
        schools: Vec::new(),
        self_service: None,
    };
    // One School failing (a transient error, an unwritable file) never stops the others:
    // each gets its outcome, and the exit status says whether all are Ready.
    for input in inputs {
        let outcome = match provision_one(&client, &ctx, opts, &input).await {
            Ok(outcome) => outcome,
            Err(e) => SchoolOutcome {
                file: input.file.clone(),
                namespace: input.school.namespace().unwrap_or_default(),
                name: input.school.name_any(),
                code: input.school.spec.code.clone(),
                school_id: String::new(),
                ready: false,
                reason: "Failed".into(),
                message: format!("{e:#}"),
                database: None,
                role: None,
                schema_version: None,
                secret_file: None,
                secret_written: false,
            },
        };
        report.schools.push(outcome);
    }

    if opts.self_service {
        let server = servers
            .resolve(None)
            .context("no default target server for the self-service tenant")?;
        // The server's TLS settings go into the Secret too (`sslmode`, `ca.crt`, the URIs),
        // as the controller's self-service loop writes them.
        let (admin, tls) = ctx
            .admin_options_and_tls(server)
            .await
            .map_err(|e| anyhow::anyhow!("self-service tenant: {e}"))?;
        let outcome =
            selfservice::ensure_with_tls(&client, OPERATOR_NAMESPACE, server, &admin, tls.as_ref())
                .await
                .map_err(|e| anyhow::anyhow!("self-service tenant: {e}"))?;
        let secrets: Api<Secret> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
        let secret = secrets.get(selfservice::SECRET_NAME).await?;
        let path = opts.out.join(secret_file_name(
            OPERATOR_NAMESPACE,
            selfservice::SECRET_NAME,
        ));
        let written = write_if_changed(&path, &manifest(&secret)?)?;
        report.self_service = Some(SelfServiceOutcome {
            database: selfservice::DATABASE.into(),
            role: selfservice::APP_ROLE.into(),
            schema_version: outcome.schema_version,
            changes: outcome.changes,
            secret_file: path,
            secret_written: written,
        });
    }
    Ok(report)
}

/// Reconciles one School and writes its Secret file when it is Ready.
async fn provision_one(
    client: &Client,
    ctx: &Arc<OperatorContext>,
    opts: &LocalOptions,
    input: &SchoolFile,
) -> anyhow::Result<SchoolOutcome> {
    let ns = input.school.namespace().unwrap_or_default();
    let name = input.school.name_any();
    let api: Api<School> = Api::namespaced(client.clone(), &ns);
    if api.get_opt(&name).await?.is_none() {
        api.create(&PostParams::default(), &input.school)
            .await
            .map_err(|e| {
                anyhow::anyhow!("{}: cannot load School {name}: {e}", input.file.display())
            })?;
    }
    let current = api.get(&name).await?;
    school::reconcile(Arc::new(current), ctx.clone())
        .await
        .map_err(|e| anyhow::anyhow!("School {ns}/{name}: {e}"))?;
    let school = api.get(&name).await?;
    let status = school.status.clone().unwrap_or_default();
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == ConditionType::Ready.as_str())
        .cloned();
    let mut outcome = SchoolOutcome {
        file: input.file.clone(),
        namespace: ns.clone(),
        name: name.clone(),
        code: school.spec.code.clone(),
        school_id: status.school_id.clone().unwrap_or_default(),
        ready: ready.as_ref().is_some_and(|c| c.status == "True"),
        reason: ready.as_ref().map(|c| c.reason.clone()).unwrap_or_default(),
        message: ready.map(|c| c.message).unwrap_or_default(),
        database: status.database.clone(),
        role: status.role.clone(),
        schema_version: status.schema_version,
        secret_file: None,
        secret_written: false,
    };
    if outcome.ready
        && let Some(secret_name) = &status.secret_name
    {
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        let secret = secrets.get(secret_name).await?;
        let path = opts.out.join(secret_file_name(&ns, secret_name));
        outcome.secret_written = write_if_changed(&path, &manifest(&secret)?)?;
        outcome.secret_file = Some(path);
    }
    Ok(outcome)
}

/// The report as a few human lines (never a password).
pub fn render(report: &LocalReport) -> String {
    let mut out = String::new();
    for s in &report.schools {
        if s.ready {
            out.push_str(&format!(
                "School {}/{} ({}): Ready ({}) - id {}, database {}, role {}, schema version {}, Secret {} ({})\n",
                s.namespace,
                s.name,
                s.code,
                s.reason,
                s.school_id,
                s.database.as_deref().unwrap_or("-"),
                s.role.as_deref().unwrap_or("-"),
                s.schema_version.unwrap_or(0),
                s.secret_file
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                if s.secret_written { "written" } else { "unchanged" },
            ));
        } else {
            out.push_str(&format!(
                "School {}/{} ({}): NOT ready ({}): {}\n",
                s.namespace, s.name, s.code, s.reason, s.message
            ));
        }
    }
    if let Some(ss) = &report.self_service {
        out.push_str(&format!(
            "Self-service tenant: database {}, role {}, schema version {}, Secret {} ({})\n",
            ss.database,
            ss.role,
            ss.schema_version,
            ss.secret_file.display(),
            if ss.secret_written {
                "written"
            } else {
                "unchanged"
            },
        ));
    }
    out
}
