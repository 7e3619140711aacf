//! Durable cache invalidation: the transactional outbox (`docs/dataplane.md`, Caching).
//!
//! A write records the Redis keys it makes stale in its tenant's `cache_invalidations`
//! table with [`record`], inside the write's own transaction, so the record commits or
//! rolls back with the data. After the commit the handler deletes the keys from Redis as
//! before. Rows are removed only by a replay, which deletes their keys from Redis first
//! ([`crate::cache::Cache`] drives it through [`TenantOutbox`]): so a Redis outage, a crash
//! between commit and delete, a restart or another replica can delay an invalidation but
//! never lose it, and the cache does not serve a tenant's keys until it has replayed what
//! that tenant's database lists. The same replay notices a restored database (its
//! [`Pending::generation`] changed) and drops what was cached before it.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use sqlx::{Connection, PgConnection};

use crate::pool::PooledConn;
use crate::state::AppState;
use crate::tenants::TenantId;

/// How often each process runs a periodic replay round ([`crate::cache::Cache::replay_known`]):
/// the tenants it wrote since the last round (clean-up of delivered rows) and the tenants
/// it read since then that have an idle pooled connection are replayed every round, so
/// rows of writers that crashed before their delete are replayed within this interval for
/// them; the other tenants it serves from the cache within [`REPLAY_SWEEP`].
pub const REPLAY_INTERVAL: Duration = Duration::from_secs(2);

/// Every tenant a process read from the cache within this window is replayed at least
/// once per window, spread evenly over the rounds (least recently replayed first); a
/// tenant not read within it is forgotten and replayed again before its next read. So a
/// crashed writer's rows are replayed on every replica that keeps reading the tenant
/// within this plus one [`REPLAY_INTERVAL`], and idle tenants cost no replay at all.
pub const REPLAY_SWEEP: Duration = Duration::from_secs(30);

/// [`REPLAY_SWEEP`] in rounds of [`REPLAY_INTERVAL`].
pub fn sweep_rounds() -> u64 {
    (REPLAY_SWEEP.as_millis() / REPLAY_INTERVAL.as_millis().max(1)).max(1) as u64
}

/// Rows read per replay round.
pub const BATCH: i64 = 1000;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a replay reads from a tenant database.
#[derive(Debug, Clone, Default)]
pub struct Pending {
    /// Identifies the database's current incarnation of `cache_invalidations`: its table
    /// OID, which a restore (`pg_restore --clean` drops and re-creates every table)
    /// necessarily changes. When it differs from the generation recorded in Redis, every
    /// value cached for the tenant predates the restore and is dropped. `None` for a
    /// tenant that left the directory.
    pub generation: Option<i64>,
    pub rows: Vec<(i64, String)>,
}

/// Where the cache finds a tenant's unreplayed invalidations. `tenant` is the tenant id
/// as it appears in cache keys.
pub trait TenantOutbox: Send + Sync {
    /// The tenant database's cache generation (see [`Pending::generation`]) and up to
    /// [`BATCH`] unreplayed rows `(id, key)`, oldest first.
    fn pending<'a>(&'a self, tenant: &'a str) -> BoxFuture<'a, Result<Pending, String>>;
    /// Removes rows whose keys have been deleted from Redis.
    fn acknowledge<'a>(
        &'a self,
        tenant: &'a str,
        ids: Vec<i64>,
    ) -> BoxFuture<'a, Result<(), String>>;
    /// Whether a replay of `tenant` would find an idle connection (no connect needed).
    /// Cheap, never waits. Without a pool: false.
    fn connected(&self, _tenant: &str) -> bool {
        false
    }
}

static RECORDING: AtomicBool = AtomicBool::new(true);

/// Turns [`record`] into a no-op (`false`) or back. Only for measuring the write path
/// with and without the outbox in one run (`tests/load.rs`): without recording, missed
/// invalidations are not durable.
#[doc(hidden)]
pub fn set_recording(on: bool) {
    RECORDING.store(on, Ordering::SeqCst);
}

/// Records `keys` as to be invalidated, in the caller's transaction (one statement).
pub async fn record(tx: &mut PgConnection, keys: &[String]) -> Result<(), sqlx::Error> {
    if keys.is_empty() || !RECORDING.load(Ordering::Relaxed) {
        return Ok(());
    }
    sqlx::query("INSERT INTO cache_invalidations (cache_key) SELECT unnest($1::text[])")
        .bind(keys)
        .execute(tx)
        .await
        .map(|_| ())
}

/// Scopes a transaction like [`crate::scoped`] (`$1` user id, `$2` admin) and records the
/// keys `$3` in one statement: the lateral reference to `ctx` makes PostgreSQL set both
/// settings before the rows are inserted, so the self-service policies see them.
const SCOPED_RECORD_SQL: &str = "INSERT INTO cache_invalidations (cache_key) \
     SELECT k.key FROM (SELECT set_config('edumind.user_id', $1, true) AS uid, \
     set_config('edumind.admin', $2, true) AS adm) ctx \
     CROSS JOIN LATERAL (SELECT u.key FROM unnest($3::text[]) AS u(key) \
     WHERE ctx.uid IS NOT NULL AND ctx.adm IS NOT NULL OFFSET 0) k";

/// Whether [`begin_recording`] records (it does unless switched off for a measurement).
pub fn recording() -> bool {
    RECORDING.load(Ordering::Relaxed)
}

/// Opens a transaction whose first statement both scopes it (`uid`, `adm`: see
/// [`crate::access::scope_params`]) and records `keys`, for a write whose keys are known
/// before it starts: its outbox row costs no round trip of its own. The record commits
/// or rolls back with the write like [`record`]'s. `keys` must not be empty.
pub async fn begin_recording<'c>(
    conn: &'c mut PgConnection,
    uid: String,
    adm: &'static str,
    keys: &[String],
) -> Result<sqlx::Transaction<'c, sqlx::Postgres>, sqlx::Error> {
    let mut tx = conn.begin().await?;
    sqlx::query(SCOPED_RECORD_SQL)
        .bind(uid)
        .bind(adm)
        .bind(keys)
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

/// The tenant databases, through the data plane's pools.
pub struct DbOutbox {
    state: Weak<AppState>,
}

impl DbOutbox {
    pub fn new(state: &Arc<AppState>) -> Self {
        Self {
            state: Arc::downgrade(state),
        }
    }

    /// A connection to `tenant`'s database; `None` for a tenant no longer in the directory
    /// (it has no database to replay from).
    async fn connect(&self, tenant: &str) -> Result<Option<PooledConn>, String> {
        let state = self.state.upgrade().ok_or("shutting down")?;
        let id: TenantId = tenant.parse().map_err(|_| "not a tenant id".to_string())?;
        let Some(tenant) = state.directory.get(&id) else {
            return Ok(None);
        };
        state
            .pools
            .acquire(&tenant)
            .await
            .map(Some)
            .map_err(|e| e.to_string())
    }
}

/// The generation and up to `$1` rows, oldest first, in one statement (one round trip; most
/// replays find nothing). The admin setting lasts for this statement's own transaction;
/// the lateral reference to `ctx` makes PostgreSQL set it before the scan that the
/// self-service policies filter.
const PENDING_SQL: &str = "SELECT ctx.generation, \
     coalesce(array_agg(r.id ORDER BY r.id) FILTER (WHERE r.id IS NOT NULL), '{}'::bigint[]), \
     coalesce(array_agg(r.cache_key ORDER BY r.id) FILTER (WHERE r.id IS NOT NULL), '{}'::text[]) \
     FROM (SELECT set_config('edumind.admin', 'on', true) AS adm, \
     'cache_invalidations'::regclass::oid::bigint AS generation) ctx \
     LEFT JOIN LATERAL (SELECT c.id, c.cache_key FROM cache_invalidations c \
     WHERE ctx.adm IS NOT NULL ORDER BY c.id LIMIT $1) r ON true \
     GROUP BY ctx.generation";

/// Opens a transaction that may delete outbox rows (the self-service database's
/// policies admit that for the admin setting only; school databases ignore it).
async fn begin_replay(
    conn: &mut PgConnection,
) -> Result<sqlx::Transaction<'_, sqlx::Postgres>, sqlx::Error> {
    let mut tx = conn.begin().await?;
    sqlx::query("SELECT set_config('edumind.admin', 'on', true)")
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

impl TenantOutbox for DbOutbox {
    fn pending<'a>(&'a self, tenant: &'a str) -> BoxFuture<'a, Result<Pending, String>> {
        Box::pin(async move {
            let Some(mut conn) = self.connect(tenant).await? else {
                return Ok(Pending::default());
            };
            let read = async {
                let (generation, ids, keys): (i64, Vec<i64>, Vec<String>) =
                    sqlx::query_as(PENDING_SQL)
                        .bind(BATCH)
                        .fetch_one(&mut *conn)
                        .await?;
                Ok::<_, sqlx::Error>(Pending {
                    generation: Some(generation),
                    rows: ids.into_iter().zip(keys).collect(),
                })
            };
            read.await.map_err(|e| e.to_string())
        })
    }

    fn acknowledge<'a>(
        &'a self,
        tenant: &'a str,
        ids: Vec<i64>,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let Some(mut conn) = self.connect(tenant).await? else {
                return Ok(());
            };
            let delete = async {
                let mut tx = begin_replay(&mut conn).await?;
                sqlx::query("DELETE FROM cache_invalidations WHERE id = ANY($1)")
                    .bind(ids)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await
            };
            delete.await.map_err(|e| e.to_string())
        })
    }

    fn connected(&self, tenant: &str) -> bool {
        let (Some(state), Ok(id)) = (self.state.upgrade(), tenant.parse::<TenantId>()) else {
            return false;
        };
        state.pools.has_idle(&id)
    }
}

/// Runs a replay round ([`crate::cache::Cache::replay_known`]) every [`REPLAY_INTERVAL`],
/// until shutdown.
pub fn spawn_replayer(
    state: Arc<AppState>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(REPLAY_INTERVAL) => {}
                _ = shutdown.changed() => return,
            }
            state.cache.replay_known().await;
        }
    })
}
