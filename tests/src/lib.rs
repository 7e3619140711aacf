#![allow(clippy::expect_used, clippy::unwrap_used)] // a harness failure is a test failure: panic with the reason
//! Test harness: real PostgreSQL and Redis servers, started from the binaries on the
//! machine, on free loopback ports, inside a temporary directory.
//!
//! * [`postgres`] / [`redis`] hand out one server of each kind per test process,
//!   started on first use and stopped (directory removed) when the process exits —
//!   normally, after a panic, or when killed (see [`supervisor`]).
//! * [`PgServer::database`] and [`PgServer::migrated_database`] give every test its own
//!   fresh database, so tests run in parallel without seeing each other.
//! * [`RedisServer::start`] gives a test a private Redis it may stop and restart
//!   ([`RedisServer::start_with`]: TLS-only with a [`TestCa`], ACL users);
//!   [`RedisCluster::start`] a Redis Cluster of primaries and replicas whose primaries
//!   it may kill;
//!   [`PgServer::start_private`] a private PostgreSQL it may crash (`pg_ctl stop -m
//!   immediate`) and start again on the same port.
//!
//! Environment variables point the harness at servers that already run instead:
//! `EDUMIND_TEST_POSTGRES_URL` (a superuser URL, e.g. `postgres://postgres:pw@127.0.0.1:5432/postgres`)
//! and `EDUMIND_TEST_REDIS_URL` (e.g. `redis://127.0.0.1:6379`). `EDUMIND_PG_BINDIR` and
//! `EDUMIND_REDIS_SERVER` name the binaries when they are not found on their own.
//! `EDUMIND_TEST_PG_ADMIN=managed` makes [`PgServer::operator_admin`] a non-superuser admin
//! like a managed service's (`docs/managed-postgres.md`) instead of the superuser.

mod binaries;
/// Throwaway CAs ([`TestCa`]) for the TLS-only servers.
pub mod certs;
#[cfg(feature = "kubeapi")]
pub mod kubeapi;
mod postgres;
mod redis;
mod redis_cluster;
pub mod spans;
pub mod supervisor;
mod tls;

pub use certs::TestCa;
pub use postgres::{
    MANAGED_ADMIN, PgServer, PrivatePg, TestDatabase, managed_admin_requested, postgres,
    postgres_blocking,
};
pub use redis::{RedisConfig, RedisServer, TlsFiles, redis, redis_blocking};
pub use redis_cluster::RedisCluster;

/// A port that was free on 127.0.0.1 a moment ago. Callers retry when it is taken
/// before the server binds it.
pub(crate) fn free_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(listener.local_addr()?.port())
}

/// A random lowercase alphanumeric string, for unique names and throwaway passwords.
pub fn random_token(len: usize) -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Errors while starting or talking to a harness server; the message says what to install
/// or which variable to set.
#[derive(Debug)]
pub struct HarnessError(pub String);

impl std::fmt::Display for HarnessError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for HarnessError {}

impl From<std::io::Error> for HarnessError {
    fn from(e: std::io::Error) -> Self {
        HarnessError(e.to_string())
    }
}
