//! `edumind-dataplane`: reads its configuration, serves until SIGINT/SIGTERM; or runs a
//! one-shot job (`distribute-content`); `openapi` prints the API document.

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use edumind_dataplane::config::Settings;
use edumind_dataplane::distribute::{self, Bundle};
use edumind_dataplane::tenants::TenantId;

#[derive(Parser)]
#[command(version, about = "Tenant-isolated HTTP data plane")]
struct Args {
    /// TOML configuration file; `EDUMIND_DP__*` environment variables override it.
    #[arg(long, env = "EDUMIND_DP_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// The admin listener's address (`/metrics`, detailed `/readyz`); overrides
    /// `admin_listen`.
    #[arg(long, global = true)]
    admin_addr: Option<std::net::SocketAddr>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve HTTP (the default).
    Serve,
    /// Upsert the global catalogue (courses, questions, global assessments) by id into
    /// every tenant database; prints one JSON line per tenant; exits 1 if any failed.
    DistributeContent {
        /// `selfservice` (read the catalogue from the self-service database and write it to
        /// every school) or a JSON file `{"courses": [...], "questions": [...],
        /// "assessments": [...]}` with rows in the tables' column names.
        #[arg(long)]
        from: String,
        /// Tenants written at once (one connection each).
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
    },
    /// Print the OpenAPI document (what `GET /openapi.json` serves) and exit.
    Openapi,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // The Kubernetes client's TLS: choose the one crypto provider explicitly.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    if let Some(Command::Openapi) = args.command {
        println!("{:#}", edumind_dataplane::openapi::document());
        return std::process::ExitCode::SUCCESS;
    }
    // The service logs to stdout; a job keeps stdout for its report.
    let writer = match args.command {
        Some(Command::DistributeContent { .. }) => {
            tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stderr)
        }
        _ => tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stdout),
    };
    // JSON logs with the trace id, and OTLP export when OTEL_EXPORTER_OTLP_ENDPOINT is set.
    let _telemetry = match edumind_telemetry::init("edumind-dataplane", writer) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("edumind-dataplane: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let settings = match Settings::load(args.config.as_deref(), std::env::vars()) {
        Ok(mut s) => {
            if let Some(addr) = args.admin_addr {
                s.admin_listen = addr;
            }
            s
        }
        Err(e) => {
            tracing::error!(error = %e, "invalid configuration");
            return std::process::ExitCode::from(2);
        }
    };
    match args.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(settings).await,
        Command::DistributeContent { from, concurrency } => {
            distribute_content(settings, &from, concurrency).await
        }
        Command::Openapi => std::process::ExitCode::SUCCESS,
    }
}

async fn serve(settings: Settings) -> std::process::ExitCode {
    let app = match edumind_dataplane::startup::Application::build(settings).await {
        Ok(app) => app,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            return std::process::ExitCode::from(1);
        }
    };
    tracing::info!(
        port = app.port(),
        admin_port = app.admin_port(),
        "listening"
    );
    app.run_until_stopped(edumind_dataplane::startup::shutdown_signal())
        .await;
    std::process::ExitCode::SUCCESS
}

async fn distribute_content(
    settings: Settings,
    from: &str,
    concurrency: usize,
) -> std::process::ExitCode {
    let fail = |msg: String| {
        tracing::error!(error = %msg, "distribute-content");
        std::process::ExitCode::from(1)
    };
    let directory = match edumind_dataplane::startup::load_tenants(&settings).await {
        Ok(d) => d,
        Err(e) => return fail(e.to_string()),
    };
    let metrics = Arc::new(edumind_dataplane::metrics::Metrics::new());
    let cache = match edumind_dataplane::cache::Cache::new(&settings.redis, metrics).await {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let pools = edumind_dataplane::pool::PoolManager::new(settings.pool.clone());
    let (bundle, source) = if from == "selfservice" {
        let Some(ss) = directory.get(&TenantId::SelfService) else {
            return fail("no self-service tenant in the tenant source".into());
        };
        match distribute::export(&pools, &ss).await {
            Ok(b) => (b, Some(TenantId::SelfService)),
            Err(e) => return fail(e.to_string()),
        }
    } else {
        let text = match tokio::fs::read_to_string(from).await {
            Ok(t) => t,
            Err(e) => return fail(format!("cannot read {from}: {e}")),
        };
        match serde_json::from_str::<Bundle>(&text) {
            Ok(b) => (b, None),
            Err(e) => return fail(format!("{from} is not a content bundle: {e}")),
        }
    };
    if let Err(e) = bundle.validate() {
        return fail(e.to_string());
    }
    let targets = distribute::targets(directory.all(), source);
    let reports = distribute::distribute(&pools, &cache, targets, &bundle, concurrency).await;
    let mut failed = false;
    for r in &reports {
        failed |= r.error.is_some();
        match serde_json::to_string(r) {
            Ok(line) => println!("{line}"),
            Err(e) => return fail(e.to_string()),
        }
    }
    if failed {
        std::process::ExitCode::from(1)
    } else {
        std::process::ExitCode::SUCCESS
    }
}
