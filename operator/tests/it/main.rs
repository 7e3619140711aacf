//! The operator's integration tests, one test binary (one link instead of eight on a
//! small CI machine). Each module is one area.
//!
//! Run one area with a filter, e.g. `cargo test -p edumind-operator --test it backupops::`.

mod backup;
mod backupops;
mod examples;
mod fleet;
mod process;
mod rbac;
mod reconcile;
mod selfservice;
