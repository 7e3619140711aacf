//! The operator's integration tests, one test binary (one link instead of eight on a
//! small CI machine). Each module is one area; `support` holds the shared set-up
//! ([`support::TestEnv`]: the in-memory Kubernetes API, the harness PostgreSQL and the
//! operator's context). All modules run in one process: names are unique per test, and
//! the tests that run `migrate --all` or own the self-service database start a PostgreSQL
//! server of their own ([`support::private_postgres`]).
//!
//! Run one area with a filter, e.g. `cargo test -p edumind-operator --test it backupops::`.

mod support;

mod backup;
mod backupops;
mod cel;
mod examples;
mod fleet;
mod live;
mod noop;
mod process;
mod rbac;
mod reconcile;
mod selfservice;
mod spans;
mod standin;
mod tls;
