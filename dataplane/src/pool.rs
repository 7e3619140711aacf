//! Connections at fleet scale.
//!
//! sqlx's `PgPool` keeps idle connections outside any shared limit, so a thousand tenant
//! pools could hold a thousand idle connections. This manager owns the connections
//! itself so that every open connection — checked out or idle — holds one permit of its
//! PostgreSQL server's semaphore:
//!
//! * **Budget**: a server never sees more than `server_budget` connections from this
//!   process, whatever the number of tenants.
//! * **Lazy**: a tenant's first connection opens on its first request.
//! * **Stealing**: when the budget is spent, an idle connection of another tenant on the
//!   same server is closed to free its permit, so idle tenants never starve busy ones.
//! * **Fairness**: one tenant holds at most `per_tenant_max` connections.
//! * **Idle close / capped cache**: a reaper closes connections idle longer than
//!   `idle_timeout` and drops tenant entries beyond `max_cached_tenants`.
//! * **Bounded wait**: no connection within `acquire_timeout` → [`PoolError::Busy`]
//!   (503 with `Retry-After`), never a hang.
//! * **Rotation**: [`PoolManager::forget`] retires a tenant's connections when its
//!   Secret changes or disappears; connections in use are closed when returned.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::PoolSettings;
use crate::tenants::{Tenant, TenantId};

/// `application_name` of every connection, so operators (and tests) can count them.
pub const APPLICATION_NAME: &str = "edumind-dataplane";

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("no database connection available in time")]
    Busy,
    #[error("cannot connect to the tenant database")]
    Connect(#[source] sqlx::Error),
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct Server {
    key: String,
    budget: usize,
    permits: Arc<Semaphore>,
}

struct Idle {
    conn: PgConnection,
    permit: OwnedSemaphorePermit,
    since: Instant,
}

struct TenantPool {
    fingerprint: String,
    server: Arc<Server>,
    idle: Mutex<Vec<Idle>>,
    slots: Arc<Semaphore>,
    per_tenant_max: usize,
    retired: AtomicBool,
    last_used: Mutex<Instant>,
}

impl TenantPool {
    fn in_use(&self) -> usize {
        self.per_tenant_max - self.slots.available_permits()
    }
}

struct Inner {
    settings: PoolSettings,
    servers: Mutex<HashMap<String, Arc<Server>>>,
    tenants: Mutex<HashMap<TenantId, Arc<TenantPool>>>,
    opened: AtomicU64,
}

/// Hands out tenant connections within the per-server budgets. Cheap to clone.
#[derive(Clone)]
pub struct PoolManager {
    inner: Arc<Inner>,
}

/// A checked-out connection. Derefs to [`PgConnection`]; goes back to its tenant's idle
/// list on drop (or is closed if the tenant was retired meanwhile).
pub struct PooledConn {
    conn: Option<PgConnection>,
    permit: Option<OwnedSemaphorePermit>,
    _slot: OwnedSemaphorePermit,
    pool: Arc<TenantPool>,
}

impl std::ops::Deref for PooledConn {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        // Present from construction until drop.
        match &self.conn {
            Some(c) => c,
            None => unreachable!("connection taken before drop"),
        }
    }
}

impl std::ops::DerefMut for PooledConn {
    fn deref_mut(&mut self) -> &mut PgConnection {
        match &mut self.conn {
            Some(c) => c,
            None => unreachable!("connection taken before drop"),
        }
    }
}

impl PooledConn {
    /// Closes the connection instead of reusing it (after an error that may have left it
    /// in an unknown state).
    pub fn discard(mut self) {
        self.conn = None;
    }
}

impl Drop for PooledConn {
    fn drop(&mut self) {
        let (Some(conn), Some(permit)) = (self.conn.take(), self.permit.take()) else {
            return;
        };
        if self.pool.retired.load(Ordering::Acquire) {
            return; // dropping closes the socket and frees the permit
        }
        if !conn.should_flush() {
            lock(&self.pool.idle).push(Idle {
                conn,
                permit,
                since: Instant::now(),
            });
            return;
        }
        // A transaction was dropped without commit or rollback: sqlx only queued its
        // ROLLBACK. Send it now, so an idle connection never sits inside an open
        // transaction holding locks that other requests wait for.
        let pool = self.pool.clone();
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            let mut conn = conn;
            if conn.ping().await.is_ok() && !pool.retired.load(Ordering::Acquire) {
                lock(&pool.idle).push(Idle {
                    conn,
                    permit,
                    since: Instant::now(),
                });
            }
        });
    }
}

/// Pool usage of one server, for `/metrics`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ServerUsage {
    pub server: String,
    pub budget: usize,
    pub open: usize,
}

impl PoolManager {
    pub fn new(settings: PoolSettings) -> Self {
        PoolManager {
            inner: Arc::new(Inner {
                settings,
                servers: Mutex::new(HashMap::new()),
                tenants: Mutex::new(HashMap::new()),
                opened: AtomicU64::new(0),
            }),
        }
    }

    fn server(&self, key: String) -> Arc<Server> {
        let budget = self.inner.settings.server_budget;
        lock(&self.inner.servers)
            .entry(key.clone())
            .or_insert_with(|| {
                Arc::new(Server {
                    key,
                    budget,
                    permits: Arc::new(Semaphore::new(budget)),
                })
            })
            .clone()
    }

    fn tenant_pool(&self, tenant: &Tenant) -> Arc<TenantPool> {
        let fingerprint = tenant.fingerprint();
        let mut tenants = lock(&self.inner.tenants);
        if let Some(p) = tenants.get(&tenant.id)
            && p.fingerprint == fingerprint
            && !p.retired.load(Ordering::Acquire)
        {
            *lock(&p.last_used) = Instant::now();
            return p.clone();
        }
        if let Some(old) = tenants.remove(&tenant.id) {
            retire(&old);
        }
        let max = self.inner.settings.per_tenant_max;
        let pool = Arc::new(TenantPool {
            fingerprint,
            server: self.server(tenant.server_key()),
            idle: Mutex::new(Vec::new()),
            slots: Arc::new(Semaphore::new(max)),
            per_tenant_max: max,
            retired: AtomicBool::new(false),
            last_used: Mutex::new(Instant::now()),
        });
        tenants.insert(tenant.id, pool.clone());
        pool
    }

    /// A connection to `tenant`'s database, within the budgets.
    pub async fn acquire(&self, tenant: &Tenant) -> Result<PooledConn, PoolError> {
        let deadline =
            Instant::now() + Duration::from_millis(self.inner.settings.acquire_timeout_ms);
        let pool = self.tenant_pool(tenant);
        let slot = tokio::time::timeout_at(deadline.into(), pool.slots.clone().acquire_owned())
            .await
            .map_err(|_| PoolError::Busy)?
            .map_err(|_| PoolError::Busy)?;
        let idle = lock(&pool.idle).pop();
        if let Some(idle) = idle {
            return Ok(PooledConn {
                conn: Some(idle.conn),
                permit: Some(idle.permit),
                _slot: slot,
                pool,
            });
        }
        let permit = self.server_permit(&pool.server, deadline).await?;
        let conn = self.connect(tenant, deadline).await?;
        Ok(PooledConn {
            conn: Some(conn),
            permit: Some(permit),
            _slot: slot,
            pool,
        })
    }

    /// Waits for a permit of `server` in FIFO order (tokio's semaphore is fair, and the
    /// one `acquire` future is kept for the whole wait so nobody loses their place).
    /// While waiting, it closes the longest-idle connection on the server every few
    /// milliseconds, so idle connections of other tenants cannot starve busy ones.
    async fn server_permit(
        &self,
        server: &Arc<Server>,
        deadline: Instant,
    ) -> Result<OwnedSemaphorePermit, PoolError> {
        if let Ok(p) = server.permits.clone().try_acquire_owned() {
            return Ok(p);
        }
        let acquire = server.permits.clone().acquire_owned();
        tokio::pin!(acquire);
        loop {
            self.close_oldest_idle(&server.key);
            let tick = (Instant::now() + Duration::from_millis(10)).min(deadline);
            tokio::select! {
                biased;
                permit = &mut acquire => return permit.map_err(|_| PoolError::Busy),
                _ = tokio::time::sleep_until(tick.into()) => {
                    if Instant::now() >= deadline {
                        return Err(PoolError::Busy);
                    }
                }
            }
        }
    }

    fn close_oldest_idle(&self, server_key: &str) -> bool {
        let tenants: Vec<Arc<TenantPool>> = lock(&self.inner.tenants)
            .values()
            .filter(|p| p.server.key == server_key)
            .cloned()
            .collect();
        let mut oldest: Option<(Instant, Arc<TenantPool>)> = None;
        for p in tenants {
            let since = lock(&p.idle).first().map(|i| i.since);
            if let Some(since) = since
                && oldest.as_ref().is_none_or(|(o, _)| since < *o)
            {
                oldest = Some((since, p));
            }
        }
        match oldest {
            Some((_, p)) => {
                let mut idle = lock(&p.idle);
                if idle.is_empty() {
                    return false;
                }
                drop(idle.remove(0));
                true
            }
            None => false,
        }
    }

    async fn connect(&self, tenant: &Tenant, deadline: Instant) -> Result<PgConnection, PoolError> {
        let opts = PgConnectOptions::new()
            .host(&tenant.host)
            .port(tenant.port)
            .username(&tenant.username)
            .password(tenant.password.expose())
            .database(&tenant.dbname)
            .application_name(APPLICATION_NAME)
            .disable_statement_logging();
        let limit = Duration::from_millis(self.inner.settings.connect_timeout_ms);
        let until = (Instant::now() + limit).min(deadline);
        let conn = tokio::time::timeout_at(until.into(), opts.connect())
            .await
            .map_err(|_| PoolError::Busy)?
            .map_err(PoolError::Connect)?;
        self.inner.opened.fetch_add(1, Ordering::Relaxed);
        Ok(conn)
    }

    /// Closes a tenant's idle connections and retires its entry (Secret removed or rotated).
    pub fn forget(&self, id: &TenantId) {
        if let Some(p) = lock(&self.inner.tenants).remove(id) {
            retire(&p);
        }
    }

    /// Closes idle connections older than the idle timeout and trims the tenant cache.
    pub fn reap(&self) {
        let max_idle = Duration::from_secs(self.inner.settings.idle_timeout_secs);
        let now = Instant::now();
        let mut tenants = lock(&self.inner.tenants);
        for p in tenants.values() {
            lock(&p.idle).retain(|i| now.duration_since(i.since) < max_idle);
        }
        tenants.retain(|_, p| {
            let keep = p.in_use() > 0
                || !lock(&p.idle).is_empty()
                || now.duration_since(*lock(&p.last_used)) < max_idle;
            if !keep {
                retire(p);
            }
            keep
        });
        let cap = self.inner.settings.max_cached_tenants;
        if tenants.len() > cap {
            let mut by_age: Vec<(Instant, TenantId)> = tenants
                .iter()
                .map(|(id, p)| (*lock(&p.last_used), *id))
                .collect();
            by_age.sort();
            let excess = tenants.len() - cap;
            for (_, id) in by_age.into_iter().take(excess) {
                if let Some(p) = tenants.get(&id)
                    && p.in_use() == 0
                    && let Some(p) = tenants.remove(&id)
                {
                    retire(&p);
                }
            }
        }
    }

    /// Runs [`reap`](Self::reap) periodically until shutdown.
    pub fn spawn_reaper(
        &self,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        let every = Duration::from_secs(this.inner.settings.idle_timeout_secs.max(4) / 4);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => this.reap(),
                    _ = shutdown.changed() => return,
                }
            }
        })
    }

    /// Open connections per server (checked out plus idle).
    pub fn usage(&self) -> Vec<ServerUsage> {
        let mut out: Vec<ServerUsage> = lock(&self.inner.servers)
            .values()
            .map(|s| ServerUsage {
                server: s.key.clone(),
                budget: s.budget,
                open: s.budget - s.permits.available_permits(),
            })
            .collect();
        out.sort_by(|a, b| a.server.cmp(&b.server));
        out
    }

    /// Tenant entries currently cached.
    pub fn cached_tenants(&self) -> usize {
        lock(&self.inner.tenants).len()
    }

    /// Connections opened since start.
    pub fn opened_total(&self) -> u64 {
        self.inner.opened.load(Ordering::Relaxed)
    }
}

fn retire(p: &TenantPool) {
    p.retired.store(true, Ordering::Release);
    lock(&p.idle).clear();
}
