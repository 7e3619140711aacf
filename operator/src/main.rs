//! `edumind-operator`: the School controller (`run`) and the command-line tools platform
//! teams use next to it (`crd`, `migrate`, `schema-version`).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use edumind_crds::connection::{SslMode, Tls};
use edumind_operator::backup::{self, BackupJob, BackupStore, ConnectionInfo, PgTools};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection};

#[derive(Parser)]
#[command(name = "edumind-operator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller (leader-elected, with /metrics, /healthz and /readyz).
    Run(edumind_operator::run::RunArgs),
    /// Apply the embedded schema migrations to one database, or with `--all` to every
    /// school database on a server, and print schema versions.
    ///
    /// URLs are read from the environment so that passwords never show in the process
    /// list. Safe to run concurrently with the controller and other migrators.
    Migrate {
        /// PostgreSQL URL of the one database to migrate.
        #[arg(
            long = "database-url",
            env = "EDUMIND_DATABASE_URL",
            hide_env_values = true,
            required_unless_present = "all"
        )]
        database_url: Option<String>,
        /// Migrate every school database the operator created on the server.
        #[arg(long, requires = "admin_url")]
        all: bool,
        /// Superuser URL of the server (maintenance database) for `--all`.
        #[arg(long = "admin-url", env = "EDUMIND_ADMIN_URL", hide_env_values = true)]
        admin_url: Option<String>,
        /// How many databases to migrate at once with `--all`.
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        /// With `--all`: back up every database whose schema is about to change first (a
        /// verified dump, as `backup` takes it) into this storage (a directory, or
        /// s3://bucket/prefix, or azure://account/container/prefix); a database whose
        /// backup fails is not migrated.
        #[arg(
            long = "backup-storage",
            env = "EDUMIND_BACKUP_STORAGE",
            requires = "all"
        )]
        backup_storage: Option<String>,
        /// Endpoint of an S3-compatible service for `--backup-storage` (omit for AWS).
        #[arg(long, env = "EDUMIND_S3_ENDPOINT")]
        s3_endpoint: Option<String>,
        #[arg(long, env = "EDUMIND_S3_REGION", default_value = "us-east-1")]
        s3_region: String,
        /// Blob endpoint of the Azure storage account for `--backup-storage` (omit for
        /// `https://<account>.blob.core.windows.net`).
        #[arg(long, env = "EDUMIND_AZURE_ENDPOINT")]
        azure_endpoint: Option<String>,
        /// Days to keep dumps (7 to 35) when `--backup-storage` applies retention.
        #[arg(long, env = "EDUMIND_BACKUP_RETENTION_DAYS", default_value_t = 7)]
        retention_days: u32,
    },
    /// Print the schema version this build's migrations produce.
    SchemaVersion,
    /// Print the CustomResourceDefinitions (School, SchoolBackup, SchoolRestore) as YAML
    /// (for `kubectl apply -f -`).
    Crd,
    /// Print the Kubernetes API permissions the operator and the data plane need (the
    /// list the Helm chart's RBAC is checked against).
    Rbac {
        /// Output format.
        #[arg(long, value_enum, default_value_t = RbacFormat::Yaml)]
        format: RbacFormat,
    },
    /// Check a target server configuration file and print the servers it defines.
    CheckConfig {
        #[arg(long, env = "EDUMIND_SERVERS_CONFIG")]
        config: PathBuf,
    },
    /// Take one verified logical backup of a school database, then apply retention.
    ///
    /// Runs `pg_dump --format=custom` with the school's own credentials, verifies the dump
    /// (`pg_restore --list` and a full read), stores it as
    /// `<prefix>/<school-id>/<school-id>_<UTC time>.dump` with its SHA-256 in
    /// `<object>.sha256` beside it, and deletes that school's dumps (and their checksum
    /// files) older than the retention — never the newest one. Prints the stored object
    /// name and checksum.
    ///
    /// Works outside Kubernetes too:
    ///
    ///   kubectl get secret lincoln-high-connection -o yaml > school-a.yaml
    ///
    ///   edumind-operator backup --secret school-a.yaml --storage /var/backups/edumind
    ///
    ///   AWS_ACCESS_KEY_ID=… AWS_SECRET_ACCESS_KEY=… edumind-operator backup
    ///   --secret school-a.yaml --storage s3://bucket/prefix --s3-endpoint http://minio:9000
    ///
    /// The password is read from the Secret and handed to pg_dump in a private password
    /// file; it never appears in arguments, logs or output.
    Backup {
        #[command(flatten)]
        target: Target,
        /// Days to keep dumps (7 to 35); the newest dump is always kept.
        #[arg(long, env = "EDUMIND_BACKUP_RETENTION_DAYS", default_value_t = 7)]
        retention_days: u32,
    },
    /// Restore a stored dump over a school database, as the school's own role.
    ///
    /// The dump must match the SHA-256 recorded in its manifest (`<object>.sha256`, written
    /// when it was stored): a dump without one, or with another checksum, is refused unless
    /// `--allow-unverified` is given. It is then verified with `pg_restore`, and restored with `pg_restore --clean --if-exists` in a
    /// single transaction: the database ends up exactly as dumped, or unchanged. Keep
    /// applications off the database while it runs (the SchoolRestore resource does).
    Restore {
        #[command(flatten)]
        target: Target,
        /// Object name as printed by `backup` or `list`, or `latest` for the newest.
        #[arg(long, env = "EDUMIND_RESTORE_OBJECT")]
        object: String,
        /// Switch to this role after connecting (`pg_restore --role`): restore as a login
        /// role that is a member of the school's role, while the school role itself
        /// cannot log in. Objects stay owned by the school's role.
        #[arg(long, env = "EDUMIND_RESTORE_ROLE")]
        role: Option<String>,
        /// Restore the dump even if its checksum manifest is missing or does not match.
        /// Only for a dump you have checked some other way: a mismatch means the stored
        /// bytes are not the ones that were backed up.
        #[arg(long, env = "EDUMIND_RESTORE_ALLOW_UNVERIFIED")]
        allow_unverified: bool,
    },
    /// List a school's stored dumps, oldest first, each read in full and checked against
    /// its checksum manifest: `verified`, `UNVERIFIED` (no manifest) or `CORRUPT`.
    ///
    /// Exits non-zero if any dump is not verified (with `--allow-unverified`, only if one
    /// is corrupt).
    ListBackups {
        #[command(flatten)]
        target: Target,
        /// Do not fail because a dump has no checksum manifest (a mismatch still fails).
        #[arg(long)]
        allow_unverified: bool,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum RbacFormat {
    Yaml,
    Json,
}

#[derive(Args)]
struct Target {
    /// The school's connection Secret: a Secret YAML file or a mounted Secret directory.
    #[arg(long, env = "EDUMIND_SECRET")]
    secret: PathBuf,
    /// Backup storage: a directory, s3://bucket/prefix, or azure://account/container/prefix.
    /// Azure credentials: `AZURE_STORAGE_ACCOUNT_KEY` or `AZURE_STORAGE_SAS_TOKEN` in the
    /// environment, else the pod's workload identity.
    #[arg(long, env = "EDUMIND_BACKUP_STORAGE")]
    storage: String,
    /// Endpoint of an S3-compatible service (MinIO, Ceph, …); omit for AWS.
    #[arg(long, env = "EDUMIND_S3_ENDPOINT")]
    s3_endpoint: Option<String>,
    #[arg(long, env = "EDUMIND_S3_REGION", default_value = "us-east-1")]
    s3_region: String,
    /// Blob endpoint of the Azure storage account (omit for
    /// `https://<account>.blob.core.windows.net`).
    #[arg(long, env = "EDUMIND_AZURE_ENDPOINT")]
    azure_endpoint: Option<String>,
    /// School id; defaults to the Secret's `edumind.ai/school-id` label.
    #[arg(long, env = "EDUMIND_SCHOOL_ID")]
    school_id: Option<String>,
    /// Scratch directory for dumps in flight (defaults to the system temp directory).
    #[arg(long, env = "EDUMIND_BACKUP_WORK_DIR")]
    work_dir: Option<PathBuf>,
    /// Also write the outcome as JSON to this file (in Kubernetes `/dev/termination-log`,
    /// which the operator reads from the finished Pod).
    #[arg(long, env = "EDUMIND_RESULT_FILE")]
    result_file: Option<PathBuf>,
}

impl Target {
    /// Writes the outcome to `--result-file`, if any. A failure to write it is logged only:
    /// the exit code still tells success from failure.
    fn report(&self, result: &backup::RunResult) {
        if let Some(file) = &self.result_file
            && let Err(e) = std::fs::write(file, result.to_json())
        {
            eprintln!("cannot write the result to {}: {e}", file.display());
        }
    }
}

impl Target {
    fn open(&self) -> anyhow::Result<(ConnectionInfo, BackupStore, String)> {
        let conn = ConnectionInfo::load(&self.secret)?;
        let store = BackupStore::from_spec(
            &self.storage,
            self.s3_endpoint.as_deref(),
            &self.s3_region,
            self.azure_endpoint.as_deref(),
        )?;
        let school_id = self
            .school_id
            .clone()
            .or_else(|| conn.school_id.clone())
            .context(
                "no school id: pass --school-id or use a Secret labelled edumind.ai/school-id",
            )?;
        Ok((conn, store, school_id))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // kube pulls in more than one rustls provider; choose one explicitly.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match Cli::parse().command {
        Command::Run(args) => edumind_operator::run::run(args).await?,
        Command::Migrate {
            all: true,
            admin_url: Some(url),
            concurrency,
            backup_storage,
            s3_endpoint,
            s3_region,
            azure_endpoint,
            retention_days,
            ..
        } => {
            let options: PgConnectOptions = url.parse().context("invalid admin URL")?;
            let options = options.disable_statement_logging();
            let backup = match backup_storage {
                Some(storage) => {
                    let admin = admin_connection(&url)?;
                    Some(edumind_operator::fleet::FleetBackup {
                        tools: PgTools::for_server(&admin).await?,
                        store: BackupStore::from_spec(
                            &storage,
                            s3_endpoint.as_deref(),
                            &s3_region,
                            azure_endpoint.as_deref(),
                        )?,
                        retention_days,
                        admin,
                    })
                }
                None => None,
            };
            let failed =
                edumind_operator::fleet::migrate_all(&options, backup.as_ref(), concurrency, |p| {
                    println!("{p}")
                })
                .await?;
            if failed > 0 {
                anyhow::bail!("{failed} database(s) failed to migrate");
            }
        }
        Command::Migrate {
            database_url: Some(database_url),
            ..
        } => {
            let mut conn = sqlx::PgConnection::connect(&database_url)
                .await
                .context("cannot connect to the database")?;
            edumind_schema::migrate(&mut conn)
                .await
                .context("migration failed")?;
            let version = edumind_schema::applied_version(&mut conn).await?;
            println!("schema version {}", version.unwrap_or(0));
        }
        Command::Migrate { .. } => anyhow::bail!("give --database-url, or --all with --admin-url"),
        Command::SchemaVersion => println!("{}", edumind_schema::latest_version()),
        Command::Crd => print!("{}", edumind_crds::all_crds_yaml()?),
        Command::Rbac { format } => {
            let rules = &edumind_crds::rbac::PERMISSIONS;
            match format {
                RbacFormat::Yaml => print!("{}", serde_yaml_ng::to_string(rules)?),
                RbacFormat::Json => println!("{}", serde_json::to_string_pretty(rules)?),
            }
        }
        Command::CheckConfig { config } => {
            let text = tokio::fs::read_to_string(&config).await?;
            let servers = edumind_operator::config::TargetServers::from_yaml(&text)?;
            for s in servers.iter() {
                println!(
                    "{}{} {}:{} (admin Secret {}){}",
                    s.name,
                    if s.default { " (default)" } else { "" },
                    s.host,
                    s.port,
                    s.admin_secret,
                    match (s.effective_ssl_mode(), &s.ca) {
                        (None, _) => String::new(),
                        (Some(mode), None) => format!(", sslmode {}", mode.as_str()),
                        (Some(mode), Some(ca)) => format!(
                            ", sslmode {}, CA Secret {} key {}",
                            mode.as_str(),
                            ca.secret,
                            ca.key
                        ),
                    }
                );
            }
        }
        Command::Backup {
            target,
            retention_days,
        } => {
            let outcome = async {
                let (conn, store, school_id) = target.open()?;
                let job = BackupJob {
                    school_id,
                    retention_days,
                    work_dir: target.work_dir.clone(),
                };
                let report = backup::run_backup(
                    &PgTools::for_server(&conn).await?,
                    &conn,
                    &store,
                    &job,
                    chrono::Utc::now(),
                )
                .await?;
                Ok::<_, anyhow::Error>(report)
            }
            .await;
            match outcome {
                Ok(report) => {
                    target.report(
                        &backup::RunResult::success("backup", &report.object, report.size)
                            .with_sha256(&report.sha256),
                    );
                    println!(
                        "stored {} ({} bytes, {} tables, sha256 {}) in {:.1}s",
                        report.object,
                        report.size,
                        report.tables,
                        report.sha256,
                        report.duration.as_secs_f64()
                    );
                    for object in report.pruned {
                        println!("pruned {object}");
                    }
                }
                Err(e) => {
                    target.report(&failure("backup", &e));
                    return Err(e);
                }
            }
        }
        Command::Restore {
            target,
            object,
            role,
            allow_unverified,
        } => {
            let outcome = async {
                let (conn, store, school_id) = target.open()?;
                let object = backup::resolve_object(&store, &school_id, &object).await?;
                let options = backup::RestoreOptions {
                    work_dir: target.work_dir.as_deref(),
                    role: role.as_deref(),
                    allow_unverified,
                };
                let report = backup::run_restore_with(
                    &PgTools::for_server(&conn).await?,
                    &conn,
                    &store,
                    &object,
                    options,
                )
                .await?;
                Ok::<_, anyhow::Error>(report)
            }
            .await;
            match outcome {
                Ok(report) => {
                    target.report(
                        &backup::RunResult::success("restore", &report.object, report.size)
                            .with_sha256(&report.sha256),
                    );
                    println!(
                        "restored {} ({} bytes, sha256 {}{}) in {:.1}s",
                        report.object,
                        report.size,
                        report.sha256,
                        if report.verified { "" } else { ", UNVERIFIED" },
                        report.duration.as_secs_f64()
                    );
                }
                Err(e) => {
                    target.report(&failure("restore", &e));
                    return Err(e);
                }
            }
        }
        Command::ListBackups {
            target,
            allow_unverified,
        } => {
            let (_, store, school_id) = target.open()?;
            let mut refused = 0usize;
            for dump in store.list(&school_id).await? {
                let check = backup::check_stored(&store, &dump.object).await?;
                let bad = match check {
                    backup::Checksum::Verified(_) => false,
                    backup::Checksum::Missing { .. } => !allow_unverified,
                    backup::Checksum::Mismatch { .. } => true,
                };
                refused += usize::from(bad);
                println!(
                    "{}\t{}\t{}\t{}\t{}",
                    dump.taken_at.to_rfc3339(),
                    dump.size,
                    dump.object,
                    check.actual(),
                    check.summary()
                );
            }
            if refused > 0 {
                anyhow::bail!("{refused} stored dump(s) failed checksum verification");
            }
        }
    }
    Ok(())
}

/// The result of a failed run: the runner's own error when there is one.
fn failure(operation: &str, e: &anyhow::Error) -> backup::RunResult {
    match e.downcast_ref::<backup::BackupError>() {
        Some(b) => backup::RunResult::failure(operation, b),
        None => {
            backup::RunResult::failure(operation, &backup::BackupError::Invalid(format!("{e:#}")))
        }
    }
}

/// Host, port, credentials and TLS settings of an admin URL, for dumps taken with them.
/// Errors never include the URL (it holds the password).
///
/// The URL's `sslmode` (`disable`, `require`, `verify-ca`, `verify-full`; libpq's
/// `allow`/`prefer` mean no setting) and `sslrootcert` (a CA bundle file; alone it means
/// `verify-full`) reach `pg_dump` as `PGSSLMODE`/`PGSSLROOTCERT` like a connection
/// Secret's: the dump is verified like the migration's own connections, never taken over
/// an unverified or plaintext connection the URL did not allow.
fn admin_connection(url: &str) -> anyhow::Result<ConnectionInfo> {
    let mut conn = admin_endpoint(url)?;
    let parsed = url::Url::parse(url).map_err(|_| anyhow::anyhow!("invalid admin URL"))?;
    let param = |name: &str| {
        parsed
            .query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    };
    let ca_pem = match param("sslrootcert") {
        Some(path) => Some(
            std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read the admin URL's sslrootcert file {path}"))?,
        ),
        None => None,
    };
    let mode = match param("sslmode").as_deref() {
        None | Some("allow" | "prefer") if ca_pem.is_some() => Some(SslMode::VerifyFull),
        None | Some("allow" | "prefer") => None,
        Some(mode) => Some(SslMode::parse(mode).context(
            "the admin URL's sslmode must be disable, allow, prefer, require, verify-ca or verify-full",
        )?),
    };
    conn.tls = mode.map(|mode| Tls { mode, ca_pem });
    Ok(conn)
}

fn admin_endpoint(url: &str) -> anyhow::Result<ConnectionInfo> {
    let parsed = url::Url::parse(url).map_err(|_| anyhow::anyhow!("invalid admin URL"))?;
    let host = parsed.host_str().unwrap_or("localhost");
    let password = percent_decode(parsed.password().unwrap_or_default());
    let user = percent_decode(parsed.username());
    if user.is_empty() {
        anyhow::bail!("the admin URL names no user");
    }
    Ok(ConnectionInfo::new(
        host,
        parsed.port().unwrap_or(5432),
        "postgres",
        &user,
        &password,
    ))
}

/// Decodes `%XX` escapes of URL user information (`+` stays `+`).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_urls_tls_settings_reach_the_dump_connection() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.crt");
        std::fs::write(&ca, "PEM").unwrap();
        let ca = ca.display().to_string();
        let base = "postgres://admin:p%40ss@db.example:5433/postgres";

        let conn = admin_connection(&format!("{base}?sslmode=verify-ca&sslrootcert={ca}")).unwrap();
        let tls = conn.tls.as_ref().unwrap();
        assert_eq!(
            (tls.mode, tls.ca_pem.as_deref()),
            (SslMode::VerifyCa, Some("PEM"))
        );
        assert_eq!((conn.host.as_str(), conn.port), ("db.example", 5433));

        let conn = admin_connection(&format!("{base}?sslrootcert={ca}")).unwrap();
        assert_eq!(
            conn.tls.unwrap().mode,
            SslMode::VerifyFull,
            "a CA alone verifies fully"
        );
        let conn = admin_connection(&format!("{base}?sslmode=require")).unwrap();
        assert_eq!(conn.tls.unwrap().mode, SslMode::Require);
        assert!(admin_connection(base).unwrap().tls.is_none());
        assert!(
            admin_connection(&format!("{base}?sslmode=prefer"))
                .unwrap()
                .tls
                .is_none()
        );

        let err = admin_connection(&format!("{base}?sslmode=bogus")).unwrap_err();
        assert!(!format!("{err:#}").contains("p%40ss"));
        assert!(admin_connection(&format!("{base}?sslrootcert=/nonexistent/ca")).is_err());
    }
}
