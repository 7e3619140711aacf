//! `edumind-dataplane`: the tenant-isolated HTTP API over the per-school databases.
//!
//! Module map: [`config`] (layered settings) · [`tenants`] (tenant directory from the
//! connection Secrets, parsed through `edumind_crds::connection`; the file source) ·
//! [`kube_source`] (in a cluster: a list, then a watch) · [`pool`] (per-server connection
//! budgets) · [`auth`] (bearer JWT) · [`access`] (tenant authorization, row-level-security
//! scope) · [`cache`] (Redis cache, sessions, locks; [`outbox`] makes its invalidations durable) · [`state`] (the request state every
//! handler reads) · [`api`] (one route group per resource, shared handler helpers) ·
//! [`startup`] (building and running the server) · [`metrics`] (`/metrics`) · [`openapi`]
//! (the route table's documentation) · [`distribute`] (catalogue distribution) ·
//! [`problem`] (RFC 9457 errors) · [`validate`] (input checks every route shares: NUL
//! bytes, query strings after authentication, timestamps) · [`secret`] (redacting secret
//! strings) · [`wire`] (the reply types: the wire format).

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
pub mod state;
pub mod tenants;
pub mod validate;
pub mod wire;
