//! `edumind-dataplane`: the tenant-isolated HTTP API over the per-school databases.
//!
//! Module map: [`config`] (layered settings) · [`tenants`] (tenant directory from the
//! connection Secrets; [`kube_source`] lists them in a cluster) · [`pool`] (per-server connection budgets) · [`auth`] (bearer JWT)
//! · [`access`] (tenant authorization, row-level-security scope) · [`cache`] (Redis cache,
//! sessions, locks; [`outbox`] makes its invalidations durable) · [`api`] (routes and handlers) · [`startup`] (building and running
//! the server) · [`problem`] (RFC 9457 errors).

pub mod access;
pub mod api;
pub mod auth;
pub mod cache;
pub mod config;
pub mod distribute;
pub mod kube_source;
pub mod metrics;
pub mod openapi;
pub mod outbox;
pub mod pool;
pub mod problem;
pub mod secret;
pub mod startup;
pub mod tenants;
