//! `edumind-operator`: the School controller (`run`) and the command-line tools platform
//! teams use next to it (`crd`, `migrate`, `schema-version`).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
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
    },
    /// Print the schema version this build's migrations produce.
    SchemaVersion,
    /// Print the `School` CustomResourceDefinition as YAML (for `kubectl apply -f -`).
    Crd,
    /// Check a target server configuration file and print the servers it defines.
    CheckConfig {
        #[arg(long, env = "EDUMIND_SERVERS_CONFIG")]
        config: PathBuf,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // kube-fake-client and kube pull in two rustls providers; choose one explicitly.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match Cli::parse().command {
        Command::Run(args) => edumind_operator::run::run(args).await?,
        Command::Migrate {
            all: true,
            admin_url: Some(url),
            concurrency,
            ..
        } => {
            let options: PgConnectOptions = url.parse().context("invalid admin URL")?;
            let options = options.disable_statement_logging();
            let failed =
                edumind_operator::fleet::migrate_all(&options, concurrency, |p| println!("{p}"))
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
        Command::Crd => print!("{}", edumind_crds::crd_yaml()?),
        Command::CheckConfig { config } => {
            let text = tokio::fs::read_to_string(&config).await?;
            let servers = edumind_operator::config::TargetServers::from_yaml(&text)?;
            for s in servers.iter() {
                println!(
                    "{}{} {}:{} (admin Secret {})",
                    s.name,
                    if s.default { " (default)" } else { "" },
                    s.host,
                    s.port,
                    s.admin_secret
                );
            }
        }
    }
    Ok(())
}
