//! The EduMind operator: reconciles `School` resources into isolated PostgreSQL
//! databases (see the crate README and `docs/operator.md`).
//!
//! * [`naming`]: deterministic, safe database/role/Secret names and SQL quoting (pure).
//! * [`credentials`]: passwords and SCRAM-SHA-256 verifiers (pure).
//! * [`config`]: the target servers the platform team configures.
//! * [`pg`]: idempotent steps inside PostgreSQL.
//! * [`school`]: the School controller, one module per step or concern:
//!   `desired` (validate and build, pure) → `apply` (role, database, migrations,
//!   `connection_secret`) → `status` (conditions, events); `school_backups`, `deletion`,
//!   `finalizer`, `labels`, `context` ([`school::OperatorContext`]) and `error`.
//! * [`controllers`]: the SchoolBackup (`backup`) and SchoolRestore (`restore`) controllers.
//! * [`backupjobs`]: the backup CronJob and Jobs as pure builders, and their outcomes.
//! * [`selfservice`]: the shared self-service tenant.
//! * [`fleet`]: `migrate --all` over every school database of a server.
//! * [`run`]: the controller process (watches, shutdown); [`leader`]: leader election
//!   over a Lease; [`http`]: `/metrics`, `/healthz` and `/readyz` (warp); [`metrics`].
//! * [`backoff`]: per-object exponential retry backoff for transient errors.
//! * [`backup`]: verified logical backups, retention and restore (the backup runner).
//!
//! Local mode (`edumind-local`, provisioning without Kubernetes) is a crate of its own
//! that runs [`school::reconcile`] against an in-memory API, so this crate carries no
//! fake API outside its tests.
//!
//! Integration tests: one binary, `tests/it/main.rs`, a module per area; their shared
//! set-up (`tests/it/support`, `TestEnv`) builds an [`school::OperatorContext`] over the
//! in-memory API and the harness PostgreSQL. `tests/it/live.rs` runs the `run` process
//! against the stand-in API server with watch (`edumind_tests::kubeapi`, docs/testing.md).
//!
//! Self-service tenant (issue 3 item 7) seam: [`pg::Claim::kind`] and the Secret label
//! [`edumind_crds::connection::LABEL_TENANT_KIND`] already distinguish tenant kinds, and the pg steps take
//! names and a claim, so provisioning `edumind_selfservice` reuses them with its own
//! RLS migration step.

pub mod backoff;
pub mod backup;
pub mod backupjobs;
pub mod config;
pub mod controllers;
pub mod credentials;
pub mod fault;
pub mod fleet;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod naming;
pub mod pg;
pub mod premigration;
pub mod run;
pub mod school;
pub mod selfservice;
