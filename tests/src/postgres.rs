//! A throwaway PostgreSQL cluster per test process, and a fresh database per test.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use sqlx::{AssertSqlSafe, Connection, Executor, PgConnection, PgPool, postgres::PgPoolOptions};

use crate::supervisor::{self, Supervised};
use crate::{HarnessError, binaries, free_port, random_token};

/// A PostgreSQL server the tests may use as superuser.
#[derive(Debug, Clone)]
pub struct PgServer {
    pub host: String,
    pub port: u16,
    pub superuser: String,
    /// The throwaway superuser password (password authentication is on for TCP, so
    /// tests that check credentials really check them).
    pub password: String,
    /// The cluster's data directory, `None` for a server given by `EDUMIND_TEST_POSTGRES_URL`.
    pub data_dir: Option<PathBuf>,
    /// How long starting the cluster took (zero for an external server).
    pub startup: Duration,
}

/// A database created for one test. It is not dropped afterwards: the whole cluster
/// goes away with the test process.
#[derive(Debug, Clone)]
pub struct TestDatabase {
    pub name: String,
    /// Superuser URL for this database.
    pub url: String,
}

impl TestDatabase {
    /// A small pool on this database, tied to the calling test's runtime.
    pub async fn pool(&self) -> PgPool {
        PgPoolOptions::new()
            .max_connections(5)
            .connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to test database {}: {e}", self.name))
    }

    pub async fn connect(&self) -> PgConnection {
        PgConnection::connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to test database {}: {e}", self.name))
    }
}

static SHARED: OnceLock<Result<PgServer, String>> = OnceLock::new();

/// The process-wide PostgreSQL server, started on first use. Blocks while starting.
pub fn postgres_blocking() -> &'static PgServer {
    let result = SHARED.get_or_init(|| match std::env::var("EDUMIND_TEST_POSTGRES_URL") {
        Ok(url) => PgServer::from_url(&url).map_err(|e| e.to_string()),
        Err(_) => PgServer::start_supervised()
            .map(|(server, supervised)| {
                supervisor::register_at_exit(supervised);
                server
            })
            .map_err(|e| e.to_string()),
    });
    match result {
        Ok(server) => server,
        Err(e) => panic!("test PostgreSQL unavailable: {e}"),
    }
}

/// The process-wide PostgreSQL server, started on first use without blocking the runtime.
pub async fn postgres() -> &'static PgServer {
    match tokio::task::spawn_blocking(postgres_blocking).await {
        Ok(server) => server,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

const TEMPLATE_DB: &str = "edumind_test_template";

/// The non-superuser admin of `docs/managed-postgres.md`, made by the statement there.
pub const MANAGED_ADMIN: &str = "edumind_admin";
const MANAGED_ADMIN_DOC: &str = include_str!("../../docs/managed-postgres.md");

/// Whether the operator's tests give the operator a managed service's kind of admin
/// (`EDUMIND_TEST_PG_ADMIN=managed`) instead of the superuser.
pub fn managed_admin_requested() -> bool {
    std::env::var("EDUMIND_TEST_PG_ADMIN").is_ok_and(|v| v == "managed")
}

/// The first SQL block after the marker in `docs/managed-postgres.md`.
fn managed_admin_sql() -> &'static str {
    let after = MANAGED_ADMIN_DOC
        .split_once("<!-- managed-admin-sql")
        .map(|(_, rest)| rest)
        .expect("docs/managed-postgres.md has the managed-admin-sql marker");
    let block = after
        .split_once("```sql")
        .and_then(|(_, rest)| rest.split_once("```"))
        .map(|(sql, _)| sql)
        .expect("docs/managed-postgres.md has the admin's SQL block");
    block.trim()
}

impl PgServer {
    fn from_url(url: &str) -> Result<Self, HarnessError> {
        let opts: sqlx::postgres::PgConnectOptions = url
            .parse()
            .map_err(|e| HarnessError(format!("EDUMIND_TEST_POSTGRES_URL is not a URL: {e}")))?;
        let parsed = url::Url::parse(url)
            .map_err(|e| HarnessError(format!("EDUMIND_TEST_POSTGRES_URL is not a URL: {e}")))?;
        Ok(Self {
            host: opts.get_host().to_string(),
            port: opts.get_port(),
            superuser: opts.get_username().to_string(),
            password: parsed.password().unwrap_or_default().to_string(),
            data_dir: None,
            startup: Duration::ZERO,
        })
    }

    /// Starts a new cluster under a supervisor; the caller decides its lifetime.
    pub fn start_supervised() -> Result<(Self, Supervised), HarnessError> {
        Self::start_with(false)
    }

    /// `durable`: commits are acknowledged only once in the WAL (`synchronous_commit`),
    /// so a crash (`pg_ctl stop -m immediate`) loses no acknowledged write; the shared
    /// server trades that for speed.
    fn start_with(durable: bool) -> Result<(Self, Supervised), HarnessError> {
        Self::start_inner(durable, |_, _| Ok(String::new()))
    }

    /// A new cluster whose directory `prepare` adjusts after `initdb` (it gets the
    /// directory holding `data/` and the uid/gid the server runs as) and which is started
    /// with the extra server arguments `prepare` returns.
    pub(crate) fn start_configured(
        prepare: impl Fn(&Path, Option<(u32, u32)>) -> Result<String, HarnessError>,
    ) -> Result<(Self, Supervised), HarnessError> {
        Self::start_inner(false, prepare)
    }

    fn start_inner(
        durable: bool,
        prepare: impl Fn(&Path, Option<(u32, u32)>) -> Result<String, HarnessError>,
    ) -> Result<(Self, Supervised), HarnessError> {
        let started = Instant::now();
        let bindir = binaries::pg_bindir()?;
        let run_as = binaries::pg_run_as()?;
        let password = random_token(24);
        let mut last_error = None;
        for _attempt in 0..3 {
            let dir = supervisor::server_dir("edumind-pg-", run_as)?;
            initdb(&bindir, &dir, &password, run_as)?;
            let extra = prepare(&dir, run_as)?;
            let port = free_port()?;
            let cmd = server_cmd(&bindir, port, durable) + &extra;
            let mut supervised = Supervised::spawn(&dir, &cmd, "QUIT", run_as)?;
            match wait_until_ready(&dir.join("data"), &mut supervised) {
                Ok(()) => {
                    let server = PgServer {
                        host: "127.0.0.1".into(),
                        port,
                        superuser: "postgres".into(),
                        password: password.clone(),
                        data_dir: Some(dir.join("data")),
                        startup: started.elapsed(),
                    };
                    return Ok((server, supervised));
                }
                Err(e) => last_error = Some(e), // e.g. the port was taken meanwhile
            }
        }
        Err(last_error.unwrap_or_else(|| HarnessError("PostgreSQL did not start".into())))
    }

    /// Superuser URL for `database`.
    pub fn url(&self, database: &str) -> String {
        self.url_as(&self.superuser, &self.password, database)
    }

    /// Superuser URL for the maintenance database.
    pub fn admin_url(&self) -> String {
        self.url("postgres")
    }

    pub async fn admin(&self) -> PgConnection {
        PgConnection::connect(&self.admin_url())
            .await
            .unwrap_or_else(|e| panic!("cannot connect to test PostgreSQL: {e}"))
    }

    /// The user and password the operator's tests give the operator: the superuser, or,
    /// with `EDUMIND_TEST_PG_ADMIN=managed`, [`MANAGED_ADMIN`] (created on first use by the
    /// documented statement: `LOGIN CREATEDB CREATEROLE`, no superuser, `pg_authid`
    /// unreadable).
    pub async fn operator_admin(&self) -> (String, String) {
        if !managed_admin_requested() {
            return (self.superuser.clone(), self.password.clone());
        }
        let password = format!("{}adm", self.password);
        let mut admin = self.admin().await;
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
                .bind(MANAGED_ADMIN)
                .fetch_one(&mut admin)
                .await
                .expect("query pg_roles");
        if !exists {
            // The throwaway password is alphanumeric: no quoting needed.
            let sql = managed_admin_sql().replace("'change-me'", &format!("'{password}'"));
            match admin.execute(AssertSqlSafe(sql)).await {
                Ok(_) => {}
                // Another test of this process created it meanwhile.
                Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42710") => {}
                Err(e) => panic!("cannot create the managed admin: {e}"),
            }
        }
        let _ = admin.close().await;
        let url = self.url_as(MANAGED_ADMIN, &password, "postgres");
        let mut conn = PgConnection::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("the managed admin cannot log in: {e}"));
        let (superuser, authid): (bool, bool) = sqlx::query_as(
            "SELECT rolsuper, has_table_privilege('pg_catalog.pg_authid', 'SELECT') \
             FROM pg_roles WHERE rolname = current_user",
        )
        .fetch_one(&mut conn)
        .await
        .expect("read the managed admin");
        assert!(
            !superuser && !authid,
            "the managed admin must be a non-superuser without pg_authid"
        );
        let _ = conn.close().await;
        (MANAGED_ADMIN.to_string(), password)
    }

    /// [`PgServer::operator_admin`]'s URL for the maintenance database.
    pub async fn operator_admin_url(&self) -> String {
        let (user, password) = self.operator_admin().await;
        self.url_as(&user, &password, "postgres")
    }

    fn url_as(&self, user: &str, password: &str, database: &str) -> String {
        format!(
            "postgres://{user}:{password}@{}:{}/{database}",
            self.host, self.port
        )
    }

    /// A new empty database with a unique name.
    pub async fn database(&self) -> TestDatabase {
        self.create_database(None).await
    }

    /// A new database with every embedded migration applied (cloned from a template that
    /// is migrated once per process).
    pub async fn migrated_database(&self) -> TestDatabase {
        static TEMPLATE: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
        TEMPLATE
            .get_or_init(|| async {
                let mut admin = self.admin().await;
                let exists: bool = sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)",
                )
                .bind(TEMPLATE_DB)
                .fetch_one(&mut admin)
                .await
                .expect("query pg_database");
                if exists {
                    // A shared external server: another process may have built it with an
                    // older schema, so build it anew.
                    admin
                        .execute(AssertSqlSafe(format!(
                            "DROP DATABASE \"{TEMPLATE_DB}\" WITH (FORCE)"
                        )))
                        .await
                        .expect("drop old template");
                }
                admin
                    .execute(AssertSqlSafe(format!("CREATE DATABASE \"{TEMPLATE_DB}\"")))
                    .await
                    .expect("create template database");
                let mut conn = PgConnection::connect(&self.url(TEMPLATE_DB))
                    .await
                    .expect("connect to template database");
                edumind_schema::migrate(&mut conn)
                    .await
                    .expect("migrations apply to a fresh database");
                conn.close().await.expect("close template connection");
            })
            .await;
        self.create_database(Some(TEMPLATE_DB)).await
    }

    async fn create_database(&self, template: Option<&str>) -> TestDatabase {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "t_{}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            random_token(6)
        );
        // Names are generated here, never taken from input; quoted all the same.
        let sql = match template {
            Some(t) => format!("CREATE DATABASE \"{name}\" TEMPLATE \"{t}\""),
            None => format!("CREATE DATABASE \"{name}\""),
        };
        let mut admin = self.admin().await;
        admin
            .execute(AssertSqlSafe(sql))
            .await
            .unwrap_or_else(|e| panic!("cannot create test database {name}: {e}"));
        let _ = admin.close().await;
        TestDatabase {
            url: self.url(&name),
            name,
        }
    }
}

fn server_cmd(bindir: &Path, port: u16, durable: bool) -> String {
    format!(
        "'{postgres}' -D \"$DIR/data\" -p {port} -k \"$DIR\" \
         -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit={sync} \
         -c full_page_writes=off -c max_connections=400 -c shared_buffers=64MB \
         -c max_locks_per_transaction=256 -c log_min_messages=warning",
        postgres = bindir.join("postgres").display(),
        sync = if durable { "on" } else { "off" },
    )
}

/// A PostgreSQL server of one test's own, which the test may crash and start again on
/// the same port (a restart or failover as clients see it). Dropping it stops the server
/// and removes its directory.
pub struct PrivatePg {
    pub server: PgServer,
    // Dropped first: the server started again, in the original's directory.
    restarted: Option<Supervised>,
    original: Supervised,
    bindir: PathBuf,
    run_as: Option<(u32, u32)>,
}

impl PgServer {
    /// A new private cluster (not the process-wide one), for tests that crash it; its
    /// commits are durable against a process crash.
    pub fn start_private() -> Result<PrivatePg, HarnessError> {
        let (server, original) = Self::start_with(true)?;
        Ok(PrivatePg {
            server,
            restarted: None,
            original,
            bindir: binaries::pg_bindir()?,
            run_as: binaries::pg_run_as()?,
        })
    }
}

impl PrivatePg {
    fn data_dir(&self) -> Result<&Path, HarnessError> {
        self.server
            .data_dir
            .as_deref()
            .ok_or_else(|| HarnessError("private server without a data directory".into()))
    }

    /// `pg_ctl stop -m immediate`: every backend is killed at once, with no checkpoint,
    /// as in a crash; clients see their connections drop.
    pub fn stop_immediate(&mut self) -> Result<(), HarnessError> {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(self.bindir.join("pg_ctl"));
        cmd.args(["stop", "-m", "immediate", "-w", "-D"])
            .arg(self.data_dir()?);
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
        }
        let out = cmd
            .output()
            .map_err(|e| HarnessError(format!("cannot run pg_ctl: {e}")))?;
        if !out.status.success() {
            return Err(HarnessError(format!(
                "pg_ctl stop failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        // The supervisor of a previous restart has nothing left to stop.
        self.restarted = None;
        Ok(())
    }

    /// Starts the stopped server again on the same port (after crash recovery) and
    /// waits until it accepts connections.
    pub fn start_again(&mut self) -> Result<(), HarnessError> {
        let data = self.data_dir()?.to_path_buf();
        let dir = data
            .parent()
            .ok_or_else(|| HarnessError("data directory has no parent".into()))?
            .to_path_buf();
        let cmd = server_cmd(&self.bindir, self.server.port, true);
        let mut supervised = Supervised::spawn_keeping_dir(&dir, &cmd, "QUIT", self.run_as)?;
        // Clients connecting during crash recovery log "FATAL: the database system is
        // starting up": expected here, so only the pid file and the process count.
        let deadline = Instant::now() + Duration::from_secs(30);
        let pidfile = data.join("postmaster.pid");
        loop {
            if let Ok(contents) = std::fs::read_to_string(&pidfile)
                && contents.lines().nth(7).map(str::trim) == Some("ready")
            {
                break;
            }
            if !supervised.is_running() || Instant::now() > deadline {
                let log = supervised.log();
                supervised.stop();
                return Err(HarnessError(format!(
                    "PostgreSQL did not start again: {log}"
                )));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.restarted = Some(supervised);
        Ok(())
    }

    /// Whether the original supervisor is still there.
    pub fn is_running(&mut self) -> bool {
        self.original.is_running()
    }
}

fn initdb(
    bindir: &Path,
    dir: &Path,
    password: &str,
    run_as: Option<(u32, u32)>,
) -> Result<(), HarnessError> {
    use std::os::unix::process::CommandExt;
    let pwfile = dir.join("pwfile");
    std::fs::write(&pwfile, password)?;
    if let Some((uid, gid)) = run_as {
        std::os::unix::fs::chown(&pwfile, Some(uid), Some(gid))?;
    }
    let mut cmd = Command::new(bindir.join("initdb"));
    cmd.arg("-D")
        .arg(dir.join("data"))
        .args(["-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync"])
        .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
        .arg(format!("--pwfile={}", pwfile.display()))
        .current_dir(dir);
    if let Some((uid, gid)) = run_as {
        cmd.uid(uid).gid(gid);
    }
    let out = cmd
        .output()
        .map_err(|e| HarnessError(format!("cannot run initdb: {e}")))?;
    let _ = std::fs::remove_file(&pwfile);
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(dir);
        return Err(HarnessError(format!(
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
}

/// Waits until the postmaster reports "ready" in `postmaster.pid` (what `pg_ctl -w` does).
fn wait_until_ready(data: &Path, supervised: &mut Supervised) -> Result<(), HarnessError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let pidfile = data.join("postmaster.pid");
    loop {
        if let Ok(contents) = std::fs::read_to_string(&pidfile)
            && contents.lines().nth(7).map(str::trim) == Some("ready")
        {
            return Ok(());
        }
        let log = supervised.log();
        if log.contains("FATAL") || !supervised.is_running() || Instant::now() > deadline {
            supervised.stop();
            return Err(HarnessError(format!("PostgreSQL did not start: {log}")));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
