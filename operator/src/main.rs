//! `edumind-operator`: the reconciler for `School` resources (see the operator issue) and
//! the command-line tools platform teams run next to it.

use anyhow::Context;
use clap::{Parser, Subcommand};
use sqlx::Connection;

#[derive(Parser)]
#[command(name = "edumind-operator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply the embedded schema migrations to one database and print its schema version.
    ///
    /// The URL is read from the environment so that its password never shows in the
    /// process list. Safe to run concurrently with other migrators on the same database.
    Migrate {
        /// PostgreSQL URL of the database to migrate.
        #[arg(
            long = "database-url",
            env = "EDUMIND_DATABASE_URL",
            hide_env_values = true
        )]
        database_url: String,
    },
    /// Print the schema version this build's migrations produce.
    SchemaVersion,
    /// Print the `School` CustomResourceDefinition as YAML (for `kubectl apply -f -`).
    Crd,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Migrate { database_url } => {
            let mut conn = sqlx::PgConnection::connect(&database_url)
                .await
                .context("cannot connect to the database")?;
            edumind_schema::migrate(&mut conn)
                .await
                .context("migration failed")?;
            let version = edumind_schema::applied_version(&mut conn).await?;
            println!("schema version {}", version.unwrap_or(0));
        }
        Command::SchemaVersion => println!("{}", edumind_schema::latest_version()),
        Command::Crd => print!("{}", edumind_crds::crd_yaml()?),
    }
    Ok(())
}
