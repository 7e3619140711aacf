//! `edumind-dataplane`: reads its configuration, serves until SIGINT/SIGTERM.

use std::path::PathBuf;

use clap::Parser;

#[derive(Parser)]
#[command(version, about = "Tenant-isolated HTTP data plane")]
struct Args {
    /// TOML configuration file; `EDUMIND_DP__*` environment variables override it.
    #[arg(long, env = "EDUMIND_DP_CONFIG")]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // The Kubernetes client's TLS: choose the one crypto provider explicitly.
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .json()
        .init();
    let args = Args::parse();
    let settings =
        match edumind_dataplane::config::Settings::load(args.config.as_deref(), std::env::vars()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "invalid configuration");
                return std::process::ExitCode::from(2);
            }
        };
    let app = match edumind_dataplane::startup::Application::build(settings).await {
        Ok(app) => app,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            return std::process::ExitCode::from(1);
        }
    };
    tracing::info!(port = app.port(), "listening");
    app.run_until_stopped(edumind_dataplane::startup::shutdown_signal())
        .await;
    std::process::ExitCode::SUCCESS
}
