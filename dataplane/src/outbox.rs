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

/// How often each process replays the outboxes of the tenants it serves from the cache
/// (rows of writers that crashed before their delete, and clean-up of delivered rows).
pub const REPLAY_INTERVAL: Duration = Duration::from_secs(2);

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

/// Opens a transaction that may read and delete outbox rows (the self-service database's
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
                let mut tx = begin_replay(&mut conn).await?;
                let generation: i64 =
                    sqlx::query_scalar("SELECT 'cache_invalidations'::regclass::oid::bigint")
                        .fetch_one(&mut *tx)
                        .await?;
                let rows = sqlx::query_as::<_, (i64, String)>(
                    "SELECT id, cache_key FROM cache_invalidations ORDER BY id LIMIT $1",
                )
                .bind(BATCH)
                .fetch_all(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok::<_, sqlx::Error>(Pending {
                    generation: Some(generation),
                    rows,
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
}

/// Replays the outboxes of the tenants this process serves from the cache every
/// [`REPLAY_INTERVAL`], until shutdown.
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
