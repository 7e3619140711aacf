//! Durable invalidation (the cache half of [`crate::outbox`]): per-tenant replay of the
//! outbox before a tenant's keys are read in a new Redis epoch, the periodic replay, and
//! the restore generation. See the parent module's docs.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use redis::AsyncCommands;

use super::{Cache, lock, tenant_key, tenant_of};
use crate::outbox::TenantOutbox;

/// Per-tenant replay state (see the module docs). Without an outbox (one-shot jobs) every
/// tenant counts as replayed.
#[derive(Default)]
pub(super) struct Durable {
    outbox: OnceLock<Arc<dyn TenantOutbox>>,
    /// Changes whenever Redis is seen to go away or come back.
    epoch: AtomicU64,
    redis_up: AtomicBool,
    /// Tenants whose outbox was replayed: in which epoch, and in which periodic round
    /// they were last read and last replayed (see [`Cache::replay_known`]).
    replayed: Mutex<HashMap<String, Replayed>>,
    /// The number of periodic replay rounds started so far (the clock of `Replayed`).
    round: AtomicU64,
    /// One replay per tenant at a time.
    gates: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// After a failed replay, readers go to PostgreSQL without retrying until then.
    retry_at: Mutex<HashMap<String, Instant>>,
    /// Tenants this process invalidated keys of since the last periodic replay (their
    /// delivered rows are removed by it even if this process never reads them).
    written: Mutex<HashSet<String>>,
    /// Tenant → the database generation whose values Redis is known to hold.
    generations: Mutex<HashMap<String, i64>>,
}

/// One tenant in [`Durable::replayed`].
#[derive(Clone, Copy)]
struct Replayed {
    /// The Redis epoch in which its outbox was replayed (readable only in that epoch).
    epoch: u64,
    /// The round in which its keys were last read from Redis (set on every hit).
    read: u64,
    /// The round in which its outbox was last replayed.
    replayed: u64,
}

impl Durable {
    /// Redis counts as up until a command fails.
    pub(super) fn new() -> Self {
        Durable {
            redis_up: AtomicBool::new(true),
            ..Durable::default()
        }
    }
}

/// The seed prefixes of cached data (not sessions or locks): what a restore makes stale.
const DATA_SEEDS: [&str; 5] = ["student:*", "class:*", "course:*", "assessment:*", "user:*"];

/// How long readers of a tenant whose replay failed skip the cache before trying again.
const REPLAY_RETRY: Duration = Duration::from_secs(1);

impl Cache {
    /// Notes the tenants of invalidated `keys`: the periodic replay removes their
    /// delivered outbox rows even if this process never reads them.
    pub(super) fn note_written(&self, keys: &[String]) {
        if self.durable.outbox.get().is_some() {
            let mut written = lock(&self.durable.written);
            for tenant in keys.iter().filter_map(|k| tenant_of(k)) {
                if !written.contains(tenant) {
                    written.insert(tenant.to_owned());
                }
            }
        }
    }

    /// Makes invalidations durable: from now on a tenant's keys are read from Redis only
    /// once `outbox` has been replayed for it (see the module docs).
    pub fn set_outbox(&self, outbox: Arc<dyn TenantOutbox>) {
        let _ = self.durable.outbox.set(outbox);
    }

    pub(super) fn epoch(&self) -> u64 {
        self.durable.epoch.load(Ordering::SeqCst)
    }

    /// Notes whether the last Redis command worked; a change either way starts a new epoch,
    /// in which every tenant's outbox must be replayed again before its keys are read.
    pub(super) fn observe(&self, up: bool) {
        if self.durable.redis_up.swap(up, Ordering::SeqCst) != up {
            self.durable.epoch.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// `Some(epoch)` when the tenant of `key` may be read from Redis in `epoch` (its outbox
    /// is replayed in this epoch, replaying it now if needed); `None` to go to PostgreSQL.
    pub(super) async fn readable(&self, key: &str) -> Option<u64> {
        let epoch = self.epoch();
        let (Some(outbox), Some(tenant)) = (self.durable.outbox.get(), tenant_of(key)) else {
            return Some(epoch);
        };
        let round = self.durable.round.load(Ordering::Relaxed);
        // The hit path: one lock, no allocation; notes the read for the periodic replay.
        if let Some(r) = lock(&self.durable.replayed).get_mut(tenant)
            && r.epoch == epoch
        {
            r.read = round;
            return Some(epoch);
        }
        if lock(&self.durable.retry_at)
            .get(tenant)
            .is_some_and(|at| Instant::now() < *at)
        {
            return None;
        }
        let gate = lock(&self.durable.gates)
            .entry(tenant.to_owned())
            .or_default()
            .clone();
        let _gate = gate.lock().await;
        let epoch = self.epoch();
        if let Some(r) = lock(&self.durable.replayed).get_mut(tenant)
            && r.epoch == epoch
        {
            r.read = round;
            return Some(epoch);
        }
        match self.replay(outbox.as_ref(), tenant).await {
            Ok(_) if self.epoch() == epoch => {
                let round = self.durable.round.load(Ordering::Relaxed);
                let r = Replayed {
                    epoch,
                    read: round,
                    replayed: round,
                };
                lock(&self.durable.replayed).insert(tenant.to_owned(), r);
                lock(&self.durable.retry_at).remove(tenant);
                Some(epoch)
            }
            Ok(_) => None,
            Err(why) => {
                tracing::warn!(tenant, error = %why, "cache outbox replay failed; reading from the database");
                lock(&self.durable.retry_at)
                    .insert(tenant.to_owned(), Instant::now() + REPLAY_RETRY);
                None
            }
        }
    }

    /// Deletes from Redis every key `tenant`'s outbox lists, then removes those rows.
    /// Returns how many keys were replayed.
    pub(super) async fn replay(
        &self,
        outbox: &dyn TenantOutbox,
        tenant: &str,
    ) -> Result<usize, String> {
        let mut total = 0;
        loop {
            let pending = outbox.pending(tenant).await?;
            if let Some(generation) = pending.generation {
                self.follow_generation(tenant, generation).await?;
            }
            let rows = pending.rows;
            if rows.is_empty() {
                return Ok(total);
            }
            let (ids, keys): (Vec<i64>, Vec<String>) = rows.into_iter().unzip();
            {
                let flights = lock(&self.flights);
                for k in &keys {
                    if let Some(f) = flights.get(k) {
                        f.invalidated.store(true, Ordering::SeqCst);
                    }
                }
            }
            let n = keys.len();
            // A row goes only once every replica that could be promoted holds the delete:
            // otherwise a failover would bring the old value back with nothing left to
            // delete it again. Until then the tenant is not read from Redis (the caller
            // treats this as a failed replay) and the next replay deletes again.
            let tag = tenant_key(tenant, "cache-generation");
            let wait_ms = (self.timeout.as_millis() as u64 / 2).max(1);
            let replicated = self
                .run(|mut c| async move { c.del_replicated(&tag, keys, wait_ms).await })
                .await
                .map_err(|_| "redis unavailable".to_string())?;
            if !replicated {
                return Err("invalidations not yet acknowledged by every Redis replica".into());
            }
            outbox.acknowledge(tenant, ids).await?;
            total += n;
            if (n as i64) < crate::outbox::BATCH {
                return Ok(total);
            }
        }
    }

    /// Makes sure Redis holds no value of `tenant` from before its database's current
    /// generation (a restore): when the generation recorded in Redis differs (or is
    /// missing), the tenant's cached data keys are dropped, then the new one is recorded.
    pub(super) async fn follow_generation(
        &self,
        tenant: &str,
        generation: i64,
    ) -> Result<(), String> {
        if lock(&self.durable.generations).get(tenant) == Some(&generation) {
            return Ok(());
        }
        let unavailable = |_| "redis unavailable".to_string();
        let marker = tenant_key(tenant, "cache-generation");
        let m = marker.clone();
        let recorded: Option<i64> = self
            .run(|mut c| async move { c.get::<_, Option<i64>>(m).await })
            .await
            .map_err(unavailable)?;
        if recorded != Some(generation) {
            // Loads in flight read the database before the restore: they must not store.
            {
                let prefix = tenant_key(tenant, "");
                let flights = lock(&self.flights);
                for (k, f) in flights.iter() {
                    if k.starts_with(&prefix) {
                        f.invalidated.store(true, Ordering::SeqCst);
                    }
                }
            }
            let mut dropped = 0usize;
            for seed in DATA_SEEDS {
                // The tenant's keys share one hash slot: the scan runs on the node holding
                // it (in cluster mode), which holds all of them.
                let pattern = tenant_key(tenant, seed);
                let mut cursor = 0u64;
                loop {
                    let (p, m) = (pattern.clone(), marker.clone());
                    let (next, keys): (u64, Vec<String>) = self
                        .run(|mut c| async move { c.scan_slot(&m, cursor, &p).await })
                        .await
                        .map_err(unavailable)?;
                    if !keys.is_empty() {
                        dropped += keys.len();
                        self.run(|mut c| async move { c.del::<_, i64>(keys).await })
                            .await
                            .map_err(unavailable)?;
                    }
                    if next == 0 {
                        break;
                    }
                    cursor = next;
                }
            }
            let m = marker.clone();
            self.run(|mut c| async move { c.set::<_, _, ()>(m, generation).await })
                .await
                .map_err(unavailable)?;
            if recorded.is_some() {
                tracing::info!(
                    tenant,
                    dropped,
                    "tenant database restored or re-created; cached values dropped"
                );
            }
        }
        lock(&self.durable.generations).insert(tenant.to_owned(), generation);
        Ok(())
    }

    /// One periodic replay round (every [`crate::outbox::REPLAY_INTERVAL`]). Replays:
    /// (a) every tenant this process invalidated keys of since the last round (its
    /// delivered rows go); (b) every tenant read from Redis since the last round that has
    /// an idle pooled connection (the replay needs no connect); (c) of the other replayed
    /// tenants read within [`crate::outbox::REPLAY_SWEEP`], the least recently replayed
    /// ones, a share per round such that each is replayed at least once per sweep. A
    /// tenant not read within the sweep (or replayed in an older Redis epoch) is
    /// forgotten: its next read replays it first, as after a restart. So idle tenants
    /// cost nothing, and a writer that died between its commit and its `DEL` is replayed
    /// within one round for (b) tenants and one sweep for the others. A tenant whose
    /// replay fails is read from PostgreSQL until a reader replays it.
    pub async fn replay_known(&self) {
        let Some(outbox) = self.durable.outbox.get() else {
            return;
        };
        let sweep = crate::outbox::sweep_rounds();
        // Reads before this point carry `round`; the ones after it the next round.
        let round = self.durable.round.fetch_add(1, Ordering::Relaxed);
        let epoch = self.epoch();
        let written: HashSet<String> = lock(&self.durable.written).drain().collect();
        let mut fresh: Vec<(u64, String)> = Vec::new();
        let mut others: Vec<(u64, String)> = Vec::new();
        lock(&self.durable.replayed).retain(|tenant, r| {
            if r.epoch != epoch || round.saturating_sub(r.read) >= sweep {
                return false;
            }
            if !written.contains(tenant) {
                if r.read == round {
                    fresh.push((r.replayed, tenant.clone()));
                } else {
                    others.push((r.replayed, tenant.clone()));
                }
            }
            true
        });
        let mut tenants: Vec<String> = written.into_iter().collect();
        // Asked outside the `replayed` lock (it takes the pool's).
        for (replayed, tenant) in fresh {
            if outbox.connected(&tenant) {
                tenants.push(tenant);
            } else {
                others.push((replayed, tenant));
            }
        }
        // Least recently replayed first: a share of 1/sweep per round, plus any overdue.
        others.sort_unstable();
        let share = others.len().div_ceil(sweep.max(1) as usize);
        let overdue = others
            .iter()
            .take_while(|(at, _)| round.saturating_sub(*at) >= sweep)
            .count();
        tenants.extend(others.into_iter().take(share.max(overdue)).map(|(_, t)| t));
        for tenant in tenants {
            let gate = lock(&self.durable.gates)
                .entry(tenant.clone())
                .or_default()
                .clone();
            let _gate = gate.lock().await;
            let result = self.replay(outbox.as_ref(), &tenant).await;
            if result.is_ok()
                && let Some(r) = lock(&self.durable.replayed).get_mut(&tenant)
            {
                r.replayed = round;
            }
            match result {
                Ok(0) => {}
                Ok(n) => tracing::info!(tenant, keys = n, "replayed cache invalidations"),
                Err(why) => {
                    lock(&self.durable.replayed).remove(&tenant);
                    tracing::warn!(tenant, error = %why, "cache outbox replay failed");
                }
            }
        }
    }
}
