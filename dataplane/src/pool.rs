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
//! * **Stealing**: when the budget is spent, the connection idle longest on the same
//!   server (whichever tenant it belongs to) is closed to free its permit, so idle tenants
//!   never starve busy ones. Each server keeps its idle connections in one LRU queue, so
//!   finding that connection costs O(1) amortised, not a scan of every tenant.
//! * **Fairness**: one tenant holds at most `per_tenant_max` connections.
//! * **Idle close / capped cache**: a reaper closes connections idle longer than
//!   `idle_timeout` and drops tenant entries beyond `max_cached_tenants`.
//! * **Bounded wait**: no connection within `acquire_timeout` → [`PoolError::Busy`]
//!   (503 with `Retry-After`), never a hang.
//! * **Rotation**: [`PoolManager::forget`] retires a tenant's connections when its
//!   Secret changes or disappears; connections in use are closed when returned.
//! * **Broken connections are never reused**: a connection-level failure anywhere (see
//!   [`is_connection_error`]; the error mapping reports it with [`note_connection_failure`])
//!   starts a new *failure epoch*. A connection checked out across an epoch change is
//!   pinged before it goes back to the idle list, and dropped if the ping fails; an idle
//!   connection from an older epoch is pinged (a full round trip) before it is handed
//!   out. Every other idle connection gets a cheap check that does not wait: a Sync is
//!   queued and polled once, so a socket the server already closed (its error or EOF is
//!   waiting) is detected and dropped, while a live one reads the answer with its next
//!   statement. So after a PostgreSQL restart no request is given a socket the server
//!   closed, and no failed connection is kept.
//! * **Permits follow the server**: a connection is closed with a Terminate message in
//!   the background, and its permit is released only once its backend has left the
//!   server. sqlx's `close()` sends Terminate and shuts the socket down without reading
//!   the server's EOF, and exposes neither the socket nor the backend's pid, so each
//!   connection learns its pid when it opens (`pg_backend_pid()`, part of the connect)
//!   and a closed connection's permit waits in its server's *exiting* list. One watcher
//!   task per server checks the whole list in one query (`pg_stat_activity`) on an idle
//!   connection of that server (borrowed for the query, within the budget) every
//!   [`EXIT_POLL`] until every pid is gone (while every open connection is checked out,
//!   it waits for one to come back). Bounded: a close that failed (the socket was
//!   already broken) frees its permit at once; with no connection of ours open on the
//!   server for [`EXIT_UNCHECKED`] the permit is freed unproven; a pid still listed after
//!   [`EXIT_MAX`] (a server in trouble) frees its permit too, so a dead or stuck server
//!   cannot hold the budget forever. So the budget never counts fewer connections than
//!   the server does.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};
use tracing::Instrument;

use futures_util::FutureExt;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::PoolSettings;
use crate::tenants::{Tenant, TenantId};

/// `application_name` of every connection, so operators (and tests) can count them.
pub const APPLICATION_NAME: &str = "edumind-dataplane";

/// Longest wait for a graceful close (Terminate) before the socket is simply dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// How often a server's watcher checks whether closed connections' backends have exited.
pub const EXIT_POLL: Duration = Duration::from_millis(2);

/// With no connection to the server to check on (the server's last connection was the one
/// closed), a closed connection's permit is freed after this long unproven: a backend
/// exits within a millisecond or two of Terminate unless the server is starved of CPU,
/// and a longer wait would be paid by every request that needs the permit (with a
/// budget of 1, every switch between tenants).
pub const EXIT_UNCHECKED: Duration = Duration::from_millis(25);

/// A backend still listed this long after its Terminate frees its permit anyway: the
/// server is stuck or the pid was reused, and the budget must not stay spent forever.
pub const EXIT_MAX: Duration = Duration::from_secs(5);

/// One statement checks every exiting pid of a server.
const EXIT_CHECK_SQL: &str = "SELECT pid FROM pg_stat_activity WHERE pid = ANY($1)";

/// The failure epoch: bumped on every connection-level failure seen in this process.
static FAILURE_EPOCH: AtomicU64 = AtomicU64::new(0);

fn epoch() -> u64 {
    FAILURE_EPOCH.load(Ordering::Acquire)
}

/// Records that some tenant connection failed at the connection level (its server went
/// away, restarted, or the network broke): every pooled connection is verified before
/// its next use. Called by the error mapping; cheap.
pub fn note_connection_failure() {
    FAILURE_EPOCH.fetch_add(1, Ordering::AcqRel);
}

/// Whether `e` says the connection itself failed (I/O, protocol, TLS, or a server
/// shutting down or not accepting connections), as opposed to a statement error on a
/// healthy connection. Such a connection must not be reused, and the request may be
/// answered with 503: the server is down or restarting.
pub fn is_connection_error(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::Protocol(_) | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(d) => d.code().is_some_and(|c| {
            // 08: connection exception; 57P01-57P03: admin shutdown, crash shutdown,
            // cannot connect now (starting up or shutting down).
            c.starts_with("08") || matches!(c.as_ref(), "57P01" | "57P02" | "57P03")
        }),
        _ => false,
    }
}

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
    /// Connections being closed in the background, or whose backends have not been seen
    /// to exit yet: their permits come back shortly.
    closing: std::sync::atomic::AtomicUsize,
    /// Closed connections whose backends may still be running, with their permits.
    exiting: Mutex<Vec<Exiting>>,
    /// Whether a watcher task is checking `exiting`.
    watching: AtomicBool,
    /// Every idle connection of this server, oldest first (see [`Lru`]).
    lru: Mutex<Lru>,
}

/// A server's idle connections in the order they became idle, across all its tenants:
/// stealing takes the front (the longest idle), the exit watcher borrows from the back
/// (the most recently used), both in amortised O(1) whatever the number of tenants.
///
/// Each idle connection gets a sequence number when it is pushed onto its tenant's idle
/// list, and one entry here. An entry whose connection has since left the idle list
/// (reused, reaped, its tenant retired) is stale: skipped and dropped when met at either
/// end, and removed in bulk when the queue has grown to twice its size after the last
/// compaction, so the queue stays within a constant factor of the idle connections and
/// every entry costs O(1) amortised work. Lock order: `lru`, then a tenant's `idle`.
#[derive(Default)]
struct Lru {
    queue: VecDeque<(u64, Weak<TenantPool>)>,
    next: u64,
    compact_at: usize,
}

impl Lru {
    /// Minimum queue length before a compaction is considered.
    const COMPACT_MIN: usize = 64;

    /// Whether the entry `(seq, pool)` still stands for an idle connection.
    fn live(seq: u64, pool: &Weak<TenantPool>) -> Option<Arc<TenantPool>> {
        let pool = pool.upgrade()?;
        let found = lock(&pool.idle).iter().any(|i| i.seq == seq);
        found.then_some(pool)
    }

    fn compact(&mut self) {
        self.queue
            .retain(|(seq, pool)| Self::live(*seq, pool).is_some());
        self.compact_at = 2 * self.queue.len() + Self::COMPACT_MIN;
    }
}

/// A closed connection's permit, held until its backend is seen to have exited.
struct Exiting {
    pid: i32,
    permit: OwnedSemaphorePermit,
    since: Instant,
}

impl Server {
    /// Closes the connection idle longest on this server (to free its permit for a
    /// waiting tenant); `false` when there is none.
    fn close_oldest_idle(&self) -> bool {
        let victim = {
            let mut lru = lock(&self.lru);
            loop {
                let Some((seq, pool)) = lru.queue.pop_front() else {
                    return false;
                };
                let Some(pool) = pool.upgrade() else {
                    continue;
                };
                let mut idle = lock(&pool.idle);
                if let Some(pos) = idle.iter().position(|i| i.seq == seq) {
                    break idle.remove(pos);
                }
            }
        };
        drop(victim); // closes it in the background; the permit follows the backend's exit
        true
    }

    /// Takes the most recently used idle connection of this server (with a slot of its
    /// tenant, so fairness holds while it is borrowed), for the exit watcher's check.
    fn borrow_idle(&self) -> Option<(Arc<TenantPool>, OwnedSemaphorePermit, Idle)> {
        let mut lru = lock(&self.lru);
        loop {
            let (seq, weak) = lru.queue.back()?.clone();
            let Some(pool) = weak
                .upgrade()
                .filter(|p| !p.retired.load(Ordering::Acquire))
            else {
                lru.queue.pop_back();
                continue;
            };
            let taken = {
                let mut idle = lock(&pool.idle);
                match idle.iter().position(|i| i.seq == seq) {
                    None => None,
                    Some(pos) => {
                        // Its tenant is at its limit: leave the connection where it is.
                        let slot = pool.slots.clone().try_acquire_owned().ok()?;
                        Some((slot, idle.remove(pos)))
                    }
                }
            };
            lru.queue.pop_back();
            if let Some((slot, idle)) = taken {
                return Some((pool, slot, idle));
            }
        }
    }

    /// Frees a permit of a closed connection.
    fn release(&self, permit: OwnedSemaphorePermit) {
        drop(permit);
        self.closing.fetch_sub(1, Ordering::AcqRel);
    }

    /// Queues a closed connection's permit until its backend `pid` has exited, and makes
    /// sure a watcher is checking.
    fn exiting(self: &Arc<Self>, pid: i32, permit: OwnedSemaphorePermit) {
        lock(&self.exiting).push(Exiting {
            pid,
            permit,
            since: Instant::now(),
        });
        if !self.watching.swap(true, Ordering::AcqRel) {
            let server = self.clone();
            tokio::spawn(async move { server.watch().await });
        }
    }

    /// Checks the exiting backends every [`EXIT_POLL`] until none is left.
    async fn watch(self: Arc<Self>) {
        let mut unchecked_since: Option<Instant> = None;
        loop {
            let pids: Vec<i32> = lock(&self.exiting).iter().map(|e| e.pid).collect();
            if pids.is_empty() {
                self.watching.store(false, Ordering::Release);
                // A close queued after the snapshot but before the flag was cleared
                // saw `watching` still set: take over again if so.
                if lock(&self.exiting).is_empty() || self.watching.swap(true, Ordering::AcqRel) {
                    return;
                }
                continue;
            }
            let alive = self.check(&pids).await;
            let now = Instant::now();
            // The start of the current run of checks that could not be made with no
            // connection of ours open on the server. While some are open (checked out
            // now), one comes back to the idle list within a request's time: wait for it.
            let open = self.budget.saturating_sub(self.permits.available_permits());
            let none_open = open <= self.closing.load(Ordering::Acquire);
            if alive.is_some() || !none_open {
                unchecked_since = None;
            } else {
                unchecked_since.get_or_insert(now);
            }
            let freed: Vec<Exiting> = {
                let mut exiting = lock(&self.exiting);
                let (gone, kept) = std::mem::take(&mut *exiting).into_iter().partition(
                    |e: &Exiting| match &alive {
                        // Checked: gone unless still listed (and not stuck too long).
                        Some(alive) => {
                            (pids.contains(&e.pid) && !alive.contains(&e.pid))
                                || now.duration_since(e.since) >= EXIT_MAX
                        }
                        // Nothing to check on: free it unproven after a short while.
                        None => {
                            unchecked_since.is_some_and(|u| {
                                now.duration_since(u.max(e.since)) >= EXIT_UNCHECKED
                            }) || now.duration_since(e.since) >= EXIT_MAX
                        }
                    },
                );
                *exiting = kept;
                gone
            };
            for e in freed {
                self.release(e.permit);
            }
            tokio::time::sleep(EXIT_POLL).await;
        }
    }

    /// The `pids` still listed by the server, checked on an idle connection of this
    /// server borrowed for one statement; `None` when there is none to borrow or the
    /// check failed.
    async fn check(&self, pids: &[i32]) -> Option<Vec<i32>> {
        let (pool, slot, idle) = self.borrow_idle()?;
        let mut open = idle.open;
        let checked = epoch();
        let conn = open.conn.as_mut()?;
        let res = tokio::time::timeout(
            CLOSE_TIMEOUT,
            sqlx::query_scalar::<_, i32>(EXIT_CHECK_SQL)
                .bind(pids)
                .fetch_all(conn),
        )
        .await;
        match res {
            Ok(Ok(alive)) => {
                pool.push_idle(open, idle.since, checked);
                drop(slot);
                Some(alive)
            }
            Ok(Err(e)) => {
                if is_connection_error(&e) {
                    note_connection_failure();
                }
                None
            }
            Err(_) => None,
        }
    }
}

/// An open connection and the server permit it holds. Dropping it closes the
/// connection in the background (Terminate, then the socket) and releases the permit
/// only once its backend has exited (see the module docs), so a new connection never
/// overlaps the old one's backend.
struct Open {
    conn: Option<PgConnection>,
    permit: Option<OwnedSemaphorePermit>,
    server: Arc<Server>,
    /// The server's process id of this connection's backend.
    pid: i32,
}

impl Open {
    fn new(
        conn: PgConnection,
        pid: i32,
        permit: OwnedSemaphorePermit,
        server: Arc<Server>,
    ) -> Self {
        Open {
            conn: Some(conn),
            permit: Some(permit),
            server,
            pid,
        }
    }

    /// Sends a Sync and waits for the server's answer (one round trip); flushes anything
    /// queued (a dropped transaction's ROLLBACK) on the way.
    async fn ping(&mut self) -> Result<(), sqlx::Error> {
        match &mut self.conn {
            Some(c) => c.ping().await,
            None => Err(sqlx::Error::PoolClosed),
        }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        let (Some(conn), Some(permit)) = (self.conn.take(), self.permit.take()) else {
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            drop(conn); // closes the socket first …
            drop(permit); // … then frees the permit
            return;
        };
        let server = self.server.clone();
        let pid = self.pid;
        server.closing.fetch_add(1, Ordering::AcqRel);
        rt.spawn(async move {
            match tokio::time::timeout(CLOSE_TIMEOUT, conn.close()).await {
                // Terminate sent: the backend exits shortly; wait until it has.
                Ok(Ok(())) => server.exiting(pid, permit),
                // The socket was already broken (the server closed it, or is gone): there
                // is no backend of ours left to wait for on a live server.
                Ok(Err(_)) => server.release(permit),
                // Not even the Terminate went out in 2 s: the server or the network is
                // stuck; the socket is dropped, and the backend bounded like any other.
                Err(_) => server.exiting(pid, permit),
            }
        });
    }
}

struct Idle {
    open: Open,
    since: Instant,
    /// The failure epoch in which this connection last worked.
    epoch: u64,
    /// Its place in its server's [`Lru`].
    seq: u64,
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

    /// Puts a working connection on the idle list (closes it instead when the tenant has
    /// been retired) and at the back of its server's LRU queue.
    fn push_idle(self: &Arc<Self>, open: Open, since: Instant, epoch: u64) {
        let mut lru = lock(&self.server.lru);
        {
            let mut idle = lock(&self.idle);
            // Checked under the idle lock: `retire` clears the list under it too, so a
            // retired tenant can never keep a connection.
            if self.retired.load(Ordering::Acquire) {
                drop(idle);
                drop(lru);
                drop(open);
                return;
            }
            let seq = lru.next;
            lru.next += 1;
            idle.push(Idle {
                open,
                since,
                epoch,
                seq,
            });
            lru.queue.push_back((seq, Arc::downgrade(self)));
        }
        if lru.queue.len() > lru.compact_at {
            lru.compact();
        }
    }
}

struct Inner {
    settings: PoolSettings,
    servers: Mutex<HashMap<String, Arc<Server>>>,
    tenants: Mutex<HashMap<TenantId, Arc<TenantPool>>>,
    opened: AtomicU64,
    /// Where acquire waits and timeouts are counted (`None` in tests that need no metrics).
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

/// Hands out tenant connections within the per-server budgets. Cheap to clone.
#[derive(Clone)]
pub struct PoolManager {
    inner: Arc<Inner>,
}

/// A checked-out connection. Derefs to [`PgConnection`]; goes back to its tenant's idle
/// list on drop (or is closed if the tenant was retired meanwhile).
pub struct PooledConn {
    open: Option<Open>,
    /// The failure epoch when this connection was last known to work.
    epoch: u64,
    _slot: OwnedSemaphorePermit,
    pool: Arc<TenantPool>,
}

impl std::ops::Deref for PooledConn {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        // Present from construction until drop.
        match self.open.as_ref().and_then(|o| o.conn.as_ref()) {
            Some(c) => c,
            None => unreachable!("connection taken before drop"),
        }
    }
}

impl std::ops::DerefMut for PooledConn {
    fn deref_mut(&mut self) -> &mut PgConnection {
        match self.open.as_mut().and_then(|o| o.conn.as_mut()) {
            Some(c) => c,
            None => unreachable!("connection taken before drop"),
        }
    }
}

impl PooledConn {
    /// Closes the connection instead of reusing it (after an error that may have left it
    /// in an unknown state).
    pub fn discard(mut self) {
        self.open = None;
    }
}

impl Drop for PooledConn {
    fn drop(&mut self) {
        let Some(open) = self.open.take() else {
            return;
        };
        if self.pool.retired.load(Ordering::Acquire) {
            return; // dropping `open` closes it and then frees the permit
        }
        let queued = open.conn.as_ref().is_some_and(|c| c.should_flush());
        if !queued && self.epoch == epoch() {
            self.pool.push_idle(open, Instant::now(), self.epoch);
            return;
        }
        // Either a transaction was dropped without commit or rollback (sqlx only queued
        // its ROLLBACK: send it now, so an idle connection never sits inside an open
        // transaction holding locks), or a connection failed somewhere while this one was
        // in use (it may be the one). Ping it: back to the idle list only if it answers.
        let pool = self.pool.clone();
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            let mut open = open;
            let checked = epoch();
            match open.ping().await {
                Ok(()) => pool.push_idle(open, Instant::now(), checked),
                Err(e) => {
                    if is_connection_error(&e) {
                        note_connection_failure();
                    }
                }
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
        Self::build(settings, None)
    }

    /// A manager that records every acquire's wait, and its timeouts, in `metrics`.
    pub fn with_metrics(settings: PoolSettings, metrics: Arc<crate::metrics::Metrics>) -> Self {
        Self::build(settings, Some(metrics))
    }

    fn build(settings: PoolSettings, metrics: Option<Arc<crate::metrics::Metrics>>) -> Self {
        PoolManager {
            inner: Arc::new(Inner {
                settings,
                servers: Mutex::new(HashMap::new()),
                tenants: Mutex::new(HashMap::new()),
                opened: AtomicU64::new(0),
                metrics,
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
                    closing: std::sync::atomic::AtomicUsize::new(0),
                    exiting: Mutex::new(Vec::new()),
                    watching: AtomicBool::new(false),
                    lru: Mutex::new(Lru::default()),
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

    /// A connection to `tenant`'s database, within the budgets. Its wait (or its giving
    /// up) is recorded per server in the metrics.
    pub async fn acquire(&self, tenant: &Tenant) -> Result<PooledConn, PoolError> {
        let started = Instant::now();
        let result = self
            .acquire_unobserved(tenant)
            .instrument(tracing::debug_span!("pool.acquire"))
            .await;
        if let Some(m) = &self.inner.metrics {
            let timed_out = matches!(result, Err(PoolError::Busy));
            m.pool_acquire(&tenant.server_key(), started.elapsed(), timed_out);
        }
        result
    }

    async fn acquire_unobserved(&self, tenant: &Tenant) -> Result<PooledConn, PoolError> {
        let deadline =
            Instant::now() + Duration::from_millis(self.inner.settings.acquire_timeout_ms);
        let pool = self.tenant_pool(tenant);
        let slot = tokio::time::timeout_at(deadline.into(), pool.slots.clone().acquire_owned())
            .await
            .map_err(|_| PoolError::Busy)?
            .map_err(|_| PoolError::Busy)?;
        loop {
            let Some(idle) = lock(&pool.idle).pop() else {
                break;
            };
            let now = epoch();
            let mut open = idle.open;
            let alive = if idle.epoch == now {
                // The cheap check: queue a Sync and poll once, without waiting. A socket
                // the server closed (restart, failover, terminated backend) has its error
                // or EOF waiting already, so this fails at once; on a live connection the
                // answer is read by the next statement, before its own results.
                match open.ping().now_or_never() {
                    Some(Err(e)) => Err(e),
                    Some(Ok(())) | None => Ok(()),
                }
            } else {
                // A connection failed somewhere since this one last worked: a full round
                // trip decides.
                match tokio::time::timeout_at(deadline.into(), open.ping()).await {
                    Ok(r) => r,
                    Err(_) => return Err(PoolError::Busy),
                }
            };
            match alive {
                Ok(()) => {
                    return Ok(PooledConn {
                        open: Some(open),
                        epoch: now,
                        _slot: slot,
                        pool,
                    });
                }
                Err(e) => {
                    if is_connection_error(&e) {
                        note_connection_failure();
                    }
                    // dropped; try the next idle one, or open a new one
                }
            }
        }
        let permit = self.server_permit(&pool.server, deadline).await?;
        let started = epoch();
        let (conn, pid) = self.connect(tenant, deadline).await?;
        Ok(PooledConn {
            open: Some(Open::new(conn, pid, permit, pool.server.clone())),
            epoch: started,
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
            // A close in progress returns its permit shortly: steal only when none is.
            if server.closing.load(Ordering::Acquire) == 0 {
                server.close_oldest_idle();
            }
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

    /// Opens a connection and learns its backend's pid (so that its permit can follow the
    /// backend's exit when it is closed).
    async fn connect(
        &self,
        tenant: &Tenant,
        deadline: Instant,
    ) -> Result<(PgConnection, i32), PoolError> {
        let opts = crate::tenants::with_tls(
            PgConnectOptions::new()
                .host(&tenant.host)
                .port(tenant.port)
                .username(&tenant.username)
                .password(tenant.password.expose())
                .database(&tenant.dbname)
                .application_name(APPLICATION_NAME)
                .disable_statement_logging(),
            tenant.tls.as_ref(),
        );
        let limit = Duration::from_millis(self.inner.settings.connect_timeout_ms);
        let until = (Instant::now() + limit).min(deadline);
        let open = async {
            let mut conn = opts.connect().await?;
            let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
                .fetch_one(&mut conn)
                .await?;
            Ok::<_, sqlx::Error>((conn, pid))
        };
        let conn = tokio::time::timeout_at(until.into(), open)
            .await
            .map_err(|_| PoolError::Busy)?
            .map_err(|e| {
                note_connection_failure();
                PoolError::Connect(e)
            })?;
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

    /// Whether `id` has an idle connection now (using it needs no connect). Never waits.
    pub fn has_idle(&self, id: &TenantId) -> bool {
        let tenants = lock(&self.inner.tenants);
        tenants
            .get(id)
            .is_some_and(|p| !p.retired.load(Ordering::Acquire) && !lock(&p.idle).is_empty())
    }
}

fn retire(p: &TenantPool) {
    p.retired.store(true, Ordering::Release);
    lock(&p.idle).clear();
}
