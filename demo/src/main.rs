//! `edumind-demo`: the whole platform on one machine, in one command.
//!
//! 1. Starts a throwaway PostgreSQL and Redis (the test harness's servers: free ports,
//!    temporary directories, supervisors that remove everything however this process ends).
//! 2. Writes two School manifests and a target-server config, and provisions them plus
//!    the self-service tenant with local mode (`edumind_local`, the `edumind-local` crate,
//!    which runs the controller's reconcile), writing Secret files.
//! 3. Starts the data plane on those Secret files with a random HS256 development secret.
//! 4. Loads demo data, mostly through the data plane's API.
//! 5. Prints curl commands with development tokens, then waits for Ctrl-C (or SIGTERM)
//!    and removes every process and file it started.

mod data;
mod tokens;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use edumind_dataplane::startup::Application;
use edumind_local::{LocalOptions, LocalReport};
use edumind_tests::supervisor::Supervised;
use edumind_tests::{PgServer, RedisServer};
use rand::Rng;
use uuid::Uuid;

use crate::data::{Api, SCHOOLS};
use crate::tokens::Tokens;

#[derive(Parser)]
#[command(
    name = "edumind-demo",
    about = "Run the EduMind platform locally with demo data"
)]
struct Args {
    /// Port for the data plane (0: any free port). When it is taken, a free one is used.
    #[arg(long, default_value_t = 8080)]
    port: u16,
}

/// Everything that must go away on exit. Dropping it stops the data plane, then the
/// servers (their supervisors remove the directories), then the work directory.
struct Running {
    dataplane: Option<(
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    )>,
    redis: Option<RedisServer>,
    postgres: Option<Supervised>,
    work: Option<Supervised>,
}

impl Running {
    async fn stop(mut self) {
        if let Some((tx, task)) = self.dataplane.take() {
            let _ = tx.send(());
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
        let redis = self.redis.take();
        let postgres = self.postgres.take();
        let work = self.work.take();
        // Supervisors wait for their servers to exit: keep that off the async workers.
        let _ = tokio::task::spawn_blocking(move || {
            drop(redis);
            drop(postgres);
            drop(work);
        })
        .await;
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let mut running = Running {
            dataplane: None,
            redis: None,
            postgres: None,
            work: None,
        };
        let result = tokio::select! {
            r = demo(&args, &mut running) => r.map(|()| true),
            () = edumind_dataplane::startup::shutdown_signal() => Ok(false),
        };
        let code = match result {
            Ok(true) => {
                edumind_dataplane::startup::shutdown_signal().await;
                ExitCode::SUCCESS
            }
            Ok(false) => {
                println!("\nInterrupted during start-up.");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("\nThe demo failed: {e:#}");
                ExitCode::FAILURE
            }
        };
        println!("\nStopping: data plane, Redis, PostgreSQL; removing their files…");
        running.stop().await;
        println!("Stopped. Nothing is left behind.");
        code
    })
}

fn servers_yaml(pg: &PgServer) -> String {
    format!(
        "servers:\n  - name: local\n    host: {}\n    port: {}\n    adminSecret: pg-admin\n    default: true\n",
        pg.host, pg.port
    )
}

fn random_secret() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..48)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

async fn start_servers(running: &mut Running) -> anyhow::Result<(PgServer, RedisServer)> {
    let (pg, redis) = tokio::task::spawn_blocking(|| {
        let redis = std::thread::spawn(RedisServer::start);
        let pg = PgServer::start_supervised();
        let redis = redis
            .join()
            .unwrap_or_else(|_| Err(edumind_tests::HarnessError("Redis start panicked".into())));
        (pg, redis)
    })
    .await?;
    // Keep whichever started, so it is cleaned up even when the other failed.
    let redis = match redis {
        Ok(r) => r,
        Err(e) => {
            if let Ok((_, supervised)) = pg {
                running.postgres = Some(supervised);
            }
            anyhow::bail!("cannot start Redis: {e} (run `bash scripts/install-deps.sh`)");
        }
    };
    let (pg, supervised) = pg.map_err(|e| {
        anyhow::anyhow!("cannot start PostgreSQL: {e} (run `bash scripts/install-deps.sh`)")
    })?;
    running.postgres = Some(supervised);
    Ok((pg, redis))
}

async fn start_dataplane(
    running: &mut Running,
    tenants_dir: &Path,
    redis_url: &str,
    secret: &str,
    port: u16,
) -> anyhow::Result<u16> {
    use edumind_dataplane::config::{AuthSettings, RedisSettings, Settings};
    use edumind_dataplane::secret::Secret;
    let mut settings = Settings {
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        // Metrics and detailed readiness: any free port (the demo does not read them).
        admin_listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        tenants_dir: tenants_dir.to_path_buf(),
        tenant_poll_ms: 1000,
        shutdown_grace_secs: 2,
        redis: RedisSettings {
            url: Secret::new(redis_url),
            ..RedisSettings::default()
        },
        auth: AuthSettings {
            issuer: tokens::ISSUER.into(),
            audience: tokens::AUDIENCE.into(),
            hs256_secret: Some(Secret::new(secret)),
            ..AuthSettings::default()
        },
        ..Settings::default()
    };
    let app = match Application::build(settings.clone()).await {
        Ok(app) => app,
        Err(edumind_dataplane::startup::StartError::Bind(..)) if port != 0 => {
            settings.listen.set_port(0);
            Application::build(settings).await?
        }
        Err(e) => return Err(e.into()),
    };
    let port = app.port();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until_stopped(async move {
        let _ = rx.await;
    }));
    running.dataplane = Some((tx, task));
    Ok(port)
}

fn secs(since: Instant) -> String {
    format!("{:.1} s", since.elapsed().as_secs_f64())
}

async fn demo(args: &Args, running: &mut Running) -> anyhow::Result<()> {
    let started = Instant::now();
    println!("EduMind demo");
    println!("  starting a throwaway PostgreSQL and Redis…");
    // The work directory (manifests, Secret files) is removed by a supervisor too, so it
    // goes away even if this process is killed. Its placeholder `sleep` inherits the
    // supervisor's ignored SIGTERM, hence KILL.
    let work_dir: PathBuf = tempfile::Builder::new()
        .prefix("edumind-demo-")
        .tempdir()?
        .keep();
    running.work = Some(
        Supervised::spawn(&work_dir, "sleep 2147483647", "KILL", None)
            .map_err(|e| anyhow::anyhow!("{e}"))?,
    );
    let (pg, redis) = start_servers(running).await?;
    let redis_url = redis.url();
    running.redis = Some(redis);
    println!(
        "  PostgreSQL on {}:{}, Redis on {} ({})",
        pg.host,
        pg.port,
        redis_url.trim_start_matches("redis://"),
        secs(started)
    );

    // What a platform team would have: a target-server config and School manifests.
    let schools_dir = work_dir.join("schools");
    let secrets_dir = work_dir.join("secrets");
    std::fs::create_dir_all(&schools_dir)?;
    let config = work_dir.join("servers.yaml");
    std::fs::write(&config, servers_yaml(&pg))?;
    for plan in &SCHOOLS {
        std::fs::write(
            schools_dir.join(format!("{}.yaml", plan.resource)),
            data::school_manifest(plan),
        )?;
    }
    println!("  provisioning 2 schools and the self-service tenant (edumind-local)…");
    let report = edumind_local::provision(&LocalOptions {
        config,
        schools: vec![schools_dir],
        out: secrets_dir.clone(),
        self_service: true,
        admin_secrets: None,
        admin_url: Some(pg.admin_url()),
    })
    .await
    .context("provisioning failed")?;
    anyhow::ensure!(
        report.all_ready(),
        "not every School is Ready:\n{}",
        edumind_local::render(&report)
    );
    print_provisioned(&report);

    let secret = random_secret();
    let tokens = Tokens::new(secret.clone());
    let port = start_dataplane(running, &secrets_dir, &redis_url, &secret, args.port).await?;
    let base = format!("http://127.0.0.1:{port}");
    let api = Api::new(base.clone());
    println!("  loading demo data through the data plane's API…");
    let mut loaded = Vec::new();
    for (plan, outcome) in SCHOOLS.iter().zip(&report.schools) {
        let school_id = Uuid::parse_str(&outcome.school_id)?;
        loaded.push(data::load_school(&api, &tokens, plan, school_id).await?);
    }
    let self_service = data::load_self_service(
        &api,
        &tokens,
        &pg.url(edumind_operator::selfservice::DATABASE),
    )
    .await?;

    // The commands.
    let (lincoln, riverside) = (&loaded[0], &loaded[1]);
    let plan = &SCHOOLS[0];
    let curl = |token: &str, path: String| {
        format!("  curl -s -H 'Authorization: Bearer {token}' {base}{path}")
    };
    let admin_token = tokens.mint(
        lincoln.users[plan.admin],
        "SchoolAdmin",
        Some(lincoln.school_id),
    )?;
    let teacher_token = tokens.mint(
        lincoln.users[plan.teachers[0]],
        "Teacher",
        Some(lincoln.school_id),
    )?;
    let student_name = plan.students[0];
    let student_token = tokens.student(lincoln.users[student_name], Some(lincoln.school_id))?;
    let ss_name = data::SELF_SERVICE_STUDENTS[0];
    let ss_token = tokens.student(self_service[ss_name].0, None)?;
    println!(
        "\nReady in {}. Data plane: {base}  (Ctrl-C stops everything)\n",
        secs(started)
    );
    println!("Development tokens below are signed with this run's random secret; try them:\n");
    println!(
        "# School admin {} ({}): the school's {} users (1 admin, 2 teachers, 4 students), none of {}'s",
        plan.admin, plan.name, lincoln.user_count, SCHOOLS[1].name
    );
    println!(
        "{}\n",
        curl(
            &admin_token,
            format!("/v1/tenants/{}/users", lincoln.school_id)
        )
    );
    println!(
        "# Teacher {}: the roster of her class Algebra I - 9A ({} students)",
        plan.teachers[0], lincoln.algebra_roster
    );
    println!(
        "{}\n",
        curl(
            &teacher_token,
            format!(
                "/v1/tenants/{}/classes/{}/roster",
                lincoln.school_id, lincoln.algebra_class
            )
        )
    );
    println!("# Student {student_name}: her own progress (1 quiz passed, 80 XP, level 1)");
    println!(
        "{}\n",
        curl(
            &student_token,
            format!(
                "/v1/tenants/{}/students/{}/progress",
                lincoln.school_id, lincoln.students[student_name]
            )
        )
    );
    println!(
        "# Self-service student {ss_name}: only his own student row, though the shared database holds {} (row-level security)",
        self_service.len()
    );
    println!(
        "{}\n",
        curl(&ss_token, "/v1/tenants/selfservice/students".to_string())
    );
    println!(
        "# The same student {student_name} asking for {}: 404, another school looks like no school",
        SCHOOLS[1].name
    );
    println!(
        "{}\n",
        curl(
            &student_token,
            format!("/v1/tenants/{}/school", riverside.school_id)
        )
    );
    println!(
        "API: {base}/openapi.json   Files (manifests, Secrets): {}",
        work_dir.display()
    );
    println!("Press Ctrl-C to stop; the servers, their data and the files are removed.");
    Ok(())
}

fn print_provisioned(report: &LocalReport) {
    for s in &report.schools {
        println!(
            "    School {} ({}): database {}, schema version {}",
            s.name,
            s.code,
            s.database.as_deref().unwrap_or("-"),
            s.schema_version.unwrap_or(0)
        );
    }
    if let Some(ss) = &report.self_service {
        println!(
            "    Self-service: database {} (row-level security), schema version {}",
            ss.database, ss.schema_version
        );
    }
}
