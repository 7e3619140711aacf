//! What every request handler reads: the settings, the tenant directory, the connection
//! pools, the authenticator, the cache and the metrics. [`crate::startup`] builds it once;
//! [`crate::api`] hands a [`SharedState`] to every route.

use std::sync::Arc;

use crate::auth::Authenticator;
use crate::cache::Cache;
use crate::config::Settings;
use crate::metrics::Metrics;
use crate::pool::PoolManager;
use crate::tenants::TenantDirectory;

/// The application's request state.
pub struct AppState {
    pub settings: Settings,
    pub directory: TenantDirectory,
    pub pools: PoolManager,
    pub auth: Arc<Authenticator>,
    pub cache: Cache,
    pub metrics: Arc<Metrics>,
}

/// The handle routes clone: one [`AppState`] shared by every request.
pub type SharedState = Arc<AppState>;
