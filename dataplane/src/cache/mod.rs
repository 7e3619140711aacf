//! Redis: the read cache (spec 4.2), sessions and attempt locks.
//!
//! Cache-aside: a read looks in Redis, loads from PostgreSQL on a miss and stores the
//! value with the spec's TTL. Keys are `edumind:{<tenant>}:<seed key>` ([`key`]): the
//! braces are literal, a Redis Cluster hash tag, so every key of one tenant (cached
//! values, sessions, attempt locks, the generation marker) lives in one hash slot and the
//! lock scripts, multi-key deletes and the per-tenant `SCAN` work on a cluster too.
//!
//! * **Topologies** ([`conn`]): one server, or a Redis Cluster (`redis.mode`); plain or
//!   TLS (`rediss://`, verified against `redis.ca_file`); with an ACL user. The URL and
//!   password are secrets: never logged, never in an error.
//!
//! * **No stampede**: one load per key at a time in this process (single flight); the
//!   others wait and re-read.
//! * **Redis down**: every command has a short timeout; a failed read goes to PostgreSQL
//!   and the caller never sees an error.
//! * **Circuit breaker**: after `breaker_failures` consecutive failed commands the
//!   breaker opens: no command is sent to Redis at all (reads go straight to PostgreSQL,
//!   invalidations go to the pending set, sessions and locks fail at once into their
//!   fallbacks) and a background probe pings Redis every `probe_ms`; its first answer
//!   closes the breaker. So Redis down costs a few timeouts, not one per request. The
//!   state is the `edumind_cache_breaker_open` gauge.
//! * **Locks outlive only their holder**: an attempt lock has a short TTL ([`LOCK_TTL`])
//!   that the holder renews while it works ([`LockToken`]); a holder that crashed stops
//!   renewing and its lock is gone within seconds.
//! * **No stale values after an outage**: an invalidation that fails is remembered
//!   (pending set). While anything is pending this process does not read from Redis at all;
//!   once Redis answers again the pending keys are deleted first, then reads resume.
//!   A load that raced with an invalidation of its key does not store its (possibly
//!   stale) result.
//! * **Across crashes, restarts and replicas** ([`crate::outbox`]): writes also record
//!   their keys in the tenant database. A process reads a tenant's keys from Redis only
//!   after it has replayed (deleted from Redis, then removed) what that tenant's outbox
//!   lists, and it does so again after every change of Redis's reachability (an outage,
//!   or Redis coming back, perhaps from an old snapshot). For writers that died before
//!   deleting, a periodic round ([`Cache::replay_known`]) replays a tenant it serves
//!   within [`crate::outbox::REPLAY_INTERVAL`] (2 s) when it read the tenant in the last
//!   round and holds an idle connection to it, within [`crate::outbox::REPLAY_SWEEP`] plus
//!   one round (32 s) otherwise; a tenant not read for a sweep is forgotten and replayed
//!   before its next read, so idle tenants cost no replay.
//! * **After a restore**: each replay also compares the tenant database's generation
//!   ([`crate::outbox::Pending::generation`]) with the one recorded in Redis and drops the
//!   tenant's cached data when they differ.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tracing::Instrument;

use redis::AsyncCommands;

use crate::config::RedisSettings;
use crate::metrics::Metrics;
use crate::tenants::TenantId;

mod conn;
mod durable;
mod reply;
use conn::Conn;
use durable::Durable;
pub use reply::Stored;

pub const PROGRESS_TTL: Duration = Duration::from_secs(5 * 60);
pub const ASSESSMENT_META_TTL: Duration = Duration::from_secs(15 * 60);
pub const ROSTER_TTL: Duration = Duration::from_secs(10 * 60);
pub const COURSE_QUESTIONS_TTL: Duration = Duration::from_secs(60 * 60);
pub const SESSION_TTL: Duration = Duration::from_secs(30 * 60);
/// An attempt lock's lifetime; its live holder renews it every third of this.
pub const LOCK_TTL: Duration = Duration::from_secs(6);

static READS: AtomicBool = AtomicBool::new(true);

/// Switches cache reads off (`false`: [`Cache::get_or_load`] only loads, as if no cache
/// were configured) or back on. Only for measuring cached endpoints against the same
/// endpoints without a cache in one run (`tests/load.rs`).
#[doc(hidden)]
pub fn set_reads(on: bool) {
    READS.store(on, Ordering::SeqCst);
}

/// The cache key of `seed` (e.g. `class:{id}:roster`) for `tenant`: `edumind:{<tenant>}:<seed>`.
/// The one place key names are made (tests use it too).
pub fn key(tenant: &TenantId, seed: &str) -> String {
    tenant_key(&tenant.to_string(), seed)
}

/// [`key`] for a tenant as it appears in keys (a school id, `selfservice`, or `platform`
/// for sessions of platform staff).
pub fn tenant_key(tenant: &str, seed: &str) -> String {
    format!("edumind:{{{tenant}}}:{seed}")
}

/// The tenant part of a [`key`].
pub fn tenant_of(key: &str) -> Option<&str> {
    let rest = key.strip_prefix("edumind:{")?;
    let (tenant, seed) = rest.split_once("}:")?;
    (!tenant.is_empty() && !seed.is_empty()).then_some(tenant)
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cache unavailable")]
    Unavailable,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct Flight {
    gate: tokio::sync::Mutex<()>,
    invalidated: AtomicBool,
}

/// Closed: commands go to Redis. Open: none do, until the probe gets an answer.
struct Breaker {
    open: AtomicBool,
    failures: AtomicU32,
    threshold: u32,
    probe_every: Duration,
}

pub struct Cache {
    conn: Conn,
    timeout: Duration,
    breaker: Arc<Breaker>,
    pending: Mutex<HashSet<String>>,
    flights: Mutex<HashMap<String, Arc<Flight>>>,
    metrics: Arc<Metrics>,
    durable: Durable,
    /// Why the last command failed (a TLS, authentication or ACL error, a timeout): said
    /// when the breaker opens and by [`Cache::last_error`]. Redis's errors carry no URL
    /// or password.
    last_error: Mutex<Option<String>>,
}

impl Cache {
    /// Connects lazily: the service starts (and serves from PostgreSQL) while Redis is down.
    /// Fails only on settings that can never work (a malformed URL, an unreadable CA file).
    pub async fn new(settings: &RedisSettings, metrics: Arc<Metrics>) -> Result<Self, String> {
        let timeout = Duration::from_millis(settings.timeout_ms);
        let ca = match &settings.ca_file {
            Some(path) => Some(
                tokio::fs::read(path)
                    .await
                    .map_err(|e| format!("cannot read redis.ca_file {}: {e}", path.display()))?,
            ),
            None => None,
        };
        let conn = conn::connect(settings, ca)?;
        Ok(Cache {
            conn,
            timeout,
            breaker: Arc::new(Breaker {
                open: AtomicBool::new(false),
                failures: AtomicU32::new(0),
                threshold: settings.breaker_failures.max(1),
                probe_every: Duration::from_millis(settings.probe_ms.max(10)),
            }),
            pending: Mutex::new(HashSet::new()),
            flights: Mutex::new(HashMap::new()),
            metrics,
            durable: Durable::new(),
            last_error: Mutex::new(None),
        })
    }

    /// One command within the timeout, through the breaker: every failure (timeout,
    /// connection lost or refused, error reply) counts towards opening it; a success
    /// resets the count.
    async fn run<T, F>(&self, f: impl FnOnce(Conn) -> F) -> Result<T, CacheError>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        if self.breaker.open.load(Ordering::Acquire) {
            return Err(CacheError::Unavailable);
        }
        match tokio::time::timeout(self.timeout, f(self.conn.clone())).await {
            Ok(Ok(v)) => {
                self.observe(true);
                self.breaker.failures.store(0, Ordering::Relaxed);
                Ok(v)
            }
            failed => {
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no answer within {} ms", self.timeout.as_millis()),
                };
                *lock(&self.last_error) = Some(why);
                self.observe(false);
                let failures = self.breaker.failures.fetch_add(1, Ordering::AcqRel) + 1;
                if failures >= self.breaker.threshold {
                    self.open_breaker();
                }
                Err(CacheError::Unavailable)
            }
        }
    }

    /// Opens the breaker (once) and starts the probe that closes it again.
    fn open_breaker(&self) {
        if self.breaker.open.swap(true, Ordering::AcqRel) {
            return; // already open, probe running
        }
        let why = lock(&self.last_error).clone().unwrap_or_default();
        tracing::warn!(
            error = %why,
            "Redis unreachable: circuit breaker open, serving from PostgreSQL"
        );
        self.metrics.set_breaker_open(true);
        let (breaker, metrics, conn, timeout) = (
            self.breaker.clone(),
            self.metrics.clone(),
            self.conn.clone(),
            self.timeout,
        );
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            loop {
                tokio::time::sleep(breaker.probe_every).await;
                let mut c = conn.clone();
                let cmd = redis::cmd("PING");
                let ping = cmd.query_async::<String>(&mut c);
                if let Ok(Ok(_)) = tokio::time::timeout(timeout, ping).await {
                    break;
                }
                // Dropped with the service (its runtime): the probe ends with it.
            }
            breaker.failures.store(0, Ordering::Relaxed);
            breaker.open.store(false, Ordering::Release);
            metrics.set_breaker_open(false);
            tracing::info!("Redis answers again: circuit breaker closed");
        });
    }

    /// Why the last failed Redis command failed, e.g. `invalid peer certificate:
    /// UnknownIssuer` for a wrong CA, `Password authentication failed` for wrong credentials.
    pub fn last_error(&self) -> Option<String> {
        lock(&self.last_error).clone()
    }

    /// Whether the circuit breaker is open (Redis treated as down, nothing sent to it).
    pub fn breaker_open(&self) -> bool {
        self.breaker.open.load(Ordering::Acquire)
    }

    /// Whether Redis answers a PING now. While the breaker is open this is the breaker's
    /// view (no command is sent).
    pub async fn ping(&self) -> bool {
        self.run(|mut c| async move { redis::cmd("PING").query_async::<String>(&mut c).await })
            .await
            .is_ok()
    }

    /// Deletes invalidations missed while Redis was unreachable. True when nothing is
    /// pending any more, i.e. reading from Redis is safe again.
    async fn settle(&self) -> bool {
        let keys: Vec<String> = lock(&self.pending).iter().cloned().collect();
        if keys.is_empty() {
            return true;
        }
        let sent = keys.clone();
        if self
            .run(|mut c| async move { c.del::<_, i64>(sent).await })
            .await
            .is_err()
        {
            return false;
        }
        let mut pending = lock(&self.pending);
        for k in &keys {
            pending.remove(k);
        }
        pending.is_empty()
    }

    /// The cached value of the key `key()` builds, or `load()`'s, stored for `ttl`.
    /// `kind` labels metrics. Values are stored as `encode` writes them and read back
    /// with `decode`.
    ///
    /// With the breaker open (or cache reads switched off) this is `load()` and nothing
    /// else: no key is built, nothing is encoded or decoded, so Redis down costs what no
    /// cache costs.
    pub async fn get_or_load<T, E, K, F, Fut>(
        &self,
        kind: &str,
        key: K,
        ttl: Duration,
        load: F,
        encode: impl FnOnce(&T) -> String,
        decode: impl Fn(String) -> Result<T, E>,
    ) -> Result<T, E>
    where
        K: FnOnce() -> String,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        if !READS.load(Ordering::Relaxed) {
            return load().await;
        }
        if self.breaker_open() || !self.settle().await {
            self.metrics.cache_event(kind, "bypass");
            return load().await;
        }
        let key = &key();
        let Some(epoch) = self.readable(key).await else {
            self.metrics.cache_event(kind, "bypass");
            return load().await;
        };
        match self.get(key).await {
            // A value read just as Redis came back (a new epoch) may predate writes whose
            // invalidations are still in an outbox: not served.
            Ok(Some(_)) if self.epoch() != epoch => {
                self.metrics.cache_event(kind, "bypass");
                return load().await;
            }
            Ok(Some(v)) => {
                self.metrics.cache_event(kind, "hit");
                return decode(v);
            }
            Ok(None) => {}
            Err(_) => {
                self.metrics.cache_event(kind, "error");
                return load().await;
            }
        }
        let flight = self.flight(key);
        let _gate = flight.gate.lock().await;
        // Someone else may have loaded it while we waited.
        if let Ok(Some(v)) = self.get(key).await
            && self.epoch() == epoch
        {
            self.metrics.cache_event(kind, "hit");
            return decode(v);
        }
        self.metrics.cache_event(kind, "miss");
        flight.invalidated.store(false, Ordering::SeqCst);
        let result = load().await;
        if let Ok(v) = &result
            && !flight.invalidated.load(Ordering::SeqCst)
            && lock(&self.pending).is_empty()
            && self.epoch() == epoch
        {
            let (k, v, ms) = (key.to_owned(), encode(v), ttl.as_millis() as u64);
            let _ = self
                .run(|mut c| async move { c.pset_ex::<_, _, ()>(k, v, ms).await })
                .instrument(tracing::debug_span!("cache.set"))
                .await;
        }
        self.land(key, &flight);
        result
    }

    /// The single flight of `key` in this process (joined, or started).
    fn flight(&self, key: &str) -> Arc<Flight> {
        lock(&self.flights)
            .entry(key.to_owned())
            .or_insert_with(|| {
                Arc::new(Flight {
                    gate: tokio::sync::Mutex::new(()),
                    invalidated: AtomicBool::new(false),
                })
            })
            .clone()
    }

    /// Ends `flight` of `key` (unless a newer one replaced it).
    fn land(&self, key: &str, flight: &Arc<Flight>) {
        let mut flights = lock(&self.flights);
        if flights.get(key).is_some_and(|f| Arc::ptr_eq(f, flight)) {
            flights.remove(key);
        }
    }

    async fn get(&self, key: &str) -> Result<Option<String>, CacheError> {
        let k = key.to_owned();
        self.run(|mut c| async move { c.get::<_, Option<String>>(k).await })
            .instrument(tracing::debug_span!("cache.get"))
            .await
    }

    /// Drops cached values after a write. Never fails: a key Redis could not delete is
    /// remembered and deleted before this process reads from Redis again.
    pub async fn invalidate(&self, keys: &[String]) {
        self.note_written(keys);
        {
            let flights = lock(&self.flights);
            for k in keys {
                if let Some(f) = flights.get(k) {
                    f.invalidated.store(true, Ordering::SeqCst);
                }
            }
        }
        let sent = keys.to_vec();
        if self
            .run(|mut c| async move { c.del::<_, i64>(sent).await })
            .await
            .is_err()
        {
            tracing::warn!(
                keys = keys.len(),
                "cache invalidation failed; deferred until Redis returns"
            );
            lock(&self.pending).extend(keys.iter().cloned());
        }
    }

    /// Number of invalidations waiting for Redis to come back.
    pub fn pending_invalidations(&self) -> usize {
        lock(&self.pending).len()
    }

    // ---- sessions: `session:{userId}`, 30-minute sliding expiry ----

    pub async fn session_put(&self, key: &str, value: &str) -> Result<(), CacheError> {
        let (k, v, ms) = (
            key.to_owned(),
            value.to_owned(),
            SESSION_TTL.as_millis() as u64,
        );
        self.run(|mut c| async move { c.pset_ex::<_, _, ()>(k, v, ms).await })
            .await
    }

    /// Reads a session and slides its expiry (GETEX ... PX in one command).
    pub async fn session_touch(&self, key: &str) -> Result<Option<String>, CacheError> {
        let k = key.to_owned();
        let ms = SESSION_TTL.as_millis() as u64;
        self.run(|mut c| async move {
            redis::cmd("GETEX")
                .arg(k)
                .arg("PX")
                .arg(ms)
                .query_async::<Option<String>>(&mut c)
                .await
        })
        .await
    }

    pub async fn session_delete(&self, key: &str) -> Result<bool, CacheError> {
        let k = key.to_owned();
        self.run(|mut c| async move { c.del::<_, i64>(k).await })
            .await
            .map(|n| n > 0)
    }

    // ---- locks: `lock:assessment:{attemptId}` ----

    /// SET NX PX; returns the owner token when acquired. The token renews the lock every
    /// third of `ttl` for as long as it lives, so only a live holder keeps it: a holder
    /// that crashed (or whose request was dropped) lets it expire within `ttl`.
    pub async fn lock_acquire(
        &self,
        key: &str,
        ttl: Duration,
    ) -> Result<Option<LockToken>, CacheError> {
        let token = uuid::Uuid::new_v4().to_string();
        let (k, t, ms) = (key.to_owned(), token.clone(), ttl.as_millis() as u64);
        let ok: Option<String> = self
            .run(|mut c| async move {
                redis::cmd("SET")
                    .arg(k)
                    .arg(t)
                    .arg("NX")
                    .arg("PX")
                    .arg(ms)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        if ok.is_none() {
            return Ok(None);
        }
        let renewal = tokio::runtime::Handle::try_current().ok().map(|rt| {
            let (conn, key, token, timeout) = (
                self.conn.clone(),
                key.to_owned(),
                token.clone(),
                self.timeout,
            );
            let breaker = self.breaker.clone();
            rt.spawn(async move {
                static RENEW: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end";
                loop {
                    tokio::time::sleep(ttl / 3).await;
                    if breaker.open.load(Ordering::Acquire) {
                        continue;
                    }
                    let mut c = conn.clone();
                    let script = redis::Script::new(RENEW);
                    let mut call = script.key(&key);
                    call.arg(&token).arg(ms);
                    let renew = call.invoke_async::<i64>(&mut c);
                    if let Ok(Ok(0)) = tokio::time::timeout(timeout, renew).await {
                        return; // no longer ours
                    }
                }
            })
        });
        Ok(Some(LockToken { token, renewal }))
    }

    /// Deletes the lock only if `token` still owns it (compare-and-delete in one script).
    pub async fn lock_release(&self, key: &str, token: &str) -> Result<bool, CacheError> {
        static SCRIPT: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";
        let (k, t) = (key.to_owned(), token.to_owned());
        self.run(|mut c| async move {
            redis::Script::new(SCRIPT)
                .key(k)
                .arg(t)
                .invoke_async::<i64>(&mut c)
                .await
        })
        .await
        .map(|n| n == 1)
    }
}

/// The owner token of a held lock (derefs to the token string). While it lives, a
/// background task renews the lock; dropping it stops the renewal.
pub struct LockToken {
    token: String,
    renewal: Option<tokio::task::JoinHandle<()>>,
}

impl std::ops::Deref for LockToken {
    type Target = str;
    fn deref(&self) -> &str {
        &self.token
    }
}

impl Drop for LockToken {
    fn drop(&mut self) {
        if let Some(r) = self.renewal.take() {
            r.abort();
        }
    }
}
