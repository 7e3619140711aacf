//! The EduMind operator: reconciles `School` resources into isolated PostgreSQL
//! databases (see the crate README and `docs/operator.md`).
//!
//! * [`naming`]: deterministic, safe database/role/Secret names and SQL quoting (pure).
//! * [`credentials`]: passwords and SCRAM-SHA-256 verifiers (pure).
//! * [`config`]: the target servers the platform team configures.
//! * [`pg`]: idempotent steps inside PostgreSQL.
//! * [`school`]: the School reconcile pipeline, one module per step or concern:
//!   `desired` (validate and build, pure) → `apply` (role, database, migrations,
//!   `connection_secret`) → `status` (conditions, events); `school_backups`, `deletion`,
//!   `finalizer`, `labels`, `context` ([`school::Context`]) and `error`.
//! * [`fleet`]: `migrate --all` over every school database of a server.
//! * [`run`]: the controller process (watches, shutdown).
//! * [`http`]: `/metrics`, `/healthz` and `/readyz` (warp).
//! * [`leader`]: leader election over a Lease.
//! * [`backup`]: verified logical backups, retention and restore (the backup runner).
//!
//! Self-service tenant (issue 3 item 7) seam: [`pg::Claim::kind`] and the Secret label
//! [`edumind_crds::connection::LABEL_TENANT_KIND`] already distinguish tenant kinds, and the pg steps take
//! names and a claim, so provisioning `edumind_selfservice` reuses them with its own
//! RLS migration step.

pub mod backup;
pub mod backupjobs;
pub mod config;
pub mod credentials;
pub mod fleet;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod naming;
pub mod ops;
pub mod pg;
pub mod run;
pub mod school;
pub mod selfservice;
