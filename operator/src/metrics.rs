//! Prometheus metrics of the operator (served on `/metrics` by `run`).

use std::collections::HashMap;
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReadyLabels {
    pub ready: String,
}

/// The operator's metrics, registered once per process.
pub struct Metrics {
    pub reconciles: Family<ResultLabels, Counter>,
    pub errors: Family<ReasonLabels, Counter>,
    pub duration: Histogram,
    pub schools: Family<ReadyLabels, Gauge>,
    readiness: Mutex<HashMap<String, bool>>,
    pub registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        let reconciles = Family::<ResultLabels, Counter>::default();
        let errors = Family::<ReasonLabels, Counter>::default();
        let duration = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        let schools = Family::<ReadyLabels, Gauge>::default();
        let mut registry = Registry::with_prefix("edumind_operator");
        registry.register(
            "reconciles",
            "School reconciles by result",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Failed School reconciles by reason",
            errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time spent in one School reconcile",
            duration.clone(),
        );
        registry.register("schools", "Schools by readiness", schools.clone());
        Self {
            reconciles,
            errors,
            duration,
            schools,
            readiness: Mutex::default(),
            registry,
        }
    }
}

impl Metrics {
    /// Records the readiness of one School (by uid); `None` forgets it (deleted).
    pub fn set_ready(&self, uid: &str, ready: Option<bool>) {
        let Ok(mut map) = self.readiness.lock() else {
            return;
        };
        match ready {
            Some(r) => map.insert(uid.to_string(), r),
            None => map.remove(uid),
        };
        let ready = map.values().filter(|r| **r).count() as i64;
        let not_ready = map.len() as i64 - ready;
        self.schools
            .get_or_create(&ReadyLabels {
                ready: "true".into(),
            })
            .set(ready);
        self.schools
            .get_or_create(&ReadyLabels {
                ready: "false".into(),
            })
            .set(not_ready);
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
