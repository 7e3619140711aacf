//! Per-object retry backoff for transient errors: the n-th consecutive failure of one
//! object waits `base × 2^(n-1)`, capped at `max`, with ±20 % jitter so that many objects
//! failing together (a target server restarting) do not retry in lockstep. A successful
//! reconcile resets the object's count. Permanent errors do not use it: they wait for a
//! change to the object (see `school::error_policy`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use rand::Rng;

/// First retry delay.
pub const BASE: Duration = Duration::from_secs(1);
/// Longest retry delay.
pub const MAX: Duration = Duration::from_secs(300);

/// Consecutive failures per object (keyed by kind and uid).
#[derive(Debug)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    failures: Mutex<HashMap<String, u32>>,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(BASE, MAX)
    }
}

/// The delay after `failures` consecutive failures (≥ 1) before jitter: `base × 2^(failures-1)`,
/// at most `max`.
pub fn nominal(base: Duration, max: Duration, failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(30);
    base.saturating_mul(1u32 << exponent).min(max)
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            failures: Mutex::default(),
        }
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        // A panic while holding the lock cannot leave the map inconsistent.
        self.failures.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a failure of `key`; returns how long to wait before retrying it.
    pub fn failed(&self, key: &str) -> Duration {
        let failures = {
            let mut counts = self.counts();
            let n = counts.entry(key.to_string()).or_insert(0);
            *n = n.saturating_add(1);
            *n
        };
        let delay = nominal(self.base, self.max, failures);
        let jitter = rand::rng().random_range(0.8..1.2);
        delay.mul_f64(jitter).min(self.max)
    }

    /// Records a success of `key`: its next failure starts again at `base`.
    pub fn succeeded(&self, key: &str) {
        self.counts().remove(key);
    }

    /// Consecutive failures of `key` so far.
    pub fn failures(&self, key: &str) -> u32 {
        self.counts().get(key).copied().unwrap_or(0)
    }
}

/// The backoff key of an object: its kind and uid (a recreated object starts afresh).
pub fn key<K: kube::Resource<DynamicType = ()>>(object: &K) -> String {
    let meta = object.meta();
    let id = meta.uid.clone().unwrap_or_else(|| {
        format!(
            "{}/{}",
            meta.namespace.as_deref().unwrap_or_default(),
            meta.name.as_deref().unwrap_or_default()
        )
    });
    format!("{}/{id}", K::kind(&()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_from_one_second_to_five_minutes() {
        let n = |f| nominal(BASE, MAX, f).as_secs();
        assert_eq!(
            [n(1), n(2), n(3), n(4), n(9), n(10), n(50)],
            [1, 2, 4, 8, 256, 300, 300]
        );
    }

    #[test]
    fn failures_grow_with_jitter_and_success_resets() {
        let b = Backoff::default();
        let mut last = Duration::ZERO;
        for i in 1..=8u32 {
            let d = b.failed("School/a");
            let nominal = nominal(BASE, MAX, i);
            assert!(
                d >= nominal.mul_f64(0.8) && d <= nominal.mul_f64(1.2),
                "{i}: {d:?}"
            );
            assert!(d > last, "grows: {d:?} after {last:?}");
            last = d;
        }
        assert_eq!(b.failures("School/a"), 8);
        assert!(
            b.failed("School/b") <= Duration::from_millis(1200),
            "per object"
        );
        b.succeeded("School/a");
        assert!(b.failed("School/a") <= Duration::from_millis(1200), "reset");
        for _ in 0..20 {
            assert!(b.failed("School/c") <= MAX);
        }
    }
}
