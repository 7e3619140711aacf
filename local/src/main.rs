//! `edumind-local`: provision School manifests without Kubernetes and write the connection
//! Secrets as YAML files (mode 0600) for the data plane's tenant directory.

use std::path::PathBuf;

use clap::Parser;

/// Provision School manifests without Kubernetes and write the connection Secrets as
/// YAML files (mode 0600) for the data plane's tenant directory.
///
/// Runs the controller's own reconcile against an in-memory Kubernetes API. Admin
/// credentials: `EDUMIND_ADMIN_URL` (its user and password; host and port come from
/// the config) or `--admin-secrets DIR` with Secret manifests named as the servers'
/// `adminSecret`. Idempotent: passwords in existing Secret files are kept.
#[derive(Parser)]
#[command(name = "edumind-local", version, about, long_about)]
struct Cli {
    /// Target server configuration (the controller's `servers.yaml` format).
    #[arg(long, env = "EDUMIND_SERVERS_CONFIG")]
    config: PathBuf,
    /// School manifests: files or directories of *.yaml files.
    #[arg(long, required = true, num_args = 1..)]
    schools: Vec<PathBuf>,
    /// Directory to write the Secret files to.
    #[arg(long)]
    out: PathBuf,
    /// Also provision the shared self-service tenant on the default server.
    #[arg(long)]
    self_service: bool,
    /// Directory of admin Secret manifests.
    #[arg(long)]
    admin_secrets: Option<PathBuf>,
    #[arg(long = "admin-url", env = "EDUMIND_ADMIN_URL", hide_env_values = true)]
    admin_url: Option<String>,
    /// Print the report as JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // kube-fake-client and kube pull in two rustls providers; choose one explicitly.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let opts = edumind_local::LocalOptions {
        config: cli.config,
        schools: cli.schools,
        out: cli.out,
        self_service: cli.self_service,
        admin_secrets: cli.admin_secrets,
        admin_url: cli.admin_url,
    };
    let report = edumind_local::provision(&opts).await?;
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", edumind_local::render(&report));
    }
    if !report.all_ready() {
        anyhow::bail!("not every School is Ready");
    }
    Ok(())
}
