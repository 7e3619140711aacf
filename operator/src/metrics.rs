//! Prometheus metrics of the operator (served on `/metrics` by `run`). Every name, its
//! labels and the question it answers are listed in docs/operations.md; the chart's alerts
//! and dashboard use them (and `scripts/check-dashboard.sh` checks that they exist).
//!
//! Per-School series carry `namespace` and `school` (bounded by the Schools the operator
//! owns) and are removed when the School is deleted. Only the leader reconciles, so only the
//! leader has per-School series; alerts take the `max` over replicas.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use edumind_crds::BackupStatus;
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

/// Labels of a failed reconcile: the failing pipeline step and the condition reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub reason: String,
    pub step: String,
}

/// Labels of the fleet summary: Ready or not, and the Ready condition's reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReadyLabels {
    pub ready: String,
    pub reason: String,
}

/// One School.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SchoolLabels {
    pub namespace: String,
    pub school: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// What one reconcile observed of a School, for its per-School series.
#[derive(Debug, Clone, Default)]
pub struct SchoolObservation<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub ready: bool,
    /// The Ready condition's reason.
    pub reason: &'a str,
    /// `metadata.creationTimestamp`, Unix seconds.
    pub created: Option<i64>,
    /// `status.backup` as just written.
    pub backup: Option<&'a BackupStatus>,
    /// Seconds between two scheduled backups; `None` when none are scheduled.
    pub backup_interval: Option<i64>,
}

#[derive(Debug, Clone)]
struct Known {
    labels: SchoolLabels,
    ready: bool,
    reason: String,
}

/// The operator's metrics, registered once per process.
pub struct Metrics {
    pub reconciles: Family<ResultLabels, Counter>,
    pub errors: Family<ErrorLabels, Counter>,
    pub duration: Histogram,
    schools: Family<ReadyLabels, Gauge>,
    school_ready: Family<SchoolLabels, Gauge>,
    school_created: Family<SchoolLabels, Gauge>,
    backup_last_success: Family<SchoolLabels, FloatGauge>,
    backup_last_failure: Family<SchoolLabels, FloatGauge>,
    backup_size: Family<SchoolLabels, Gauge>,
    backup_duration: Family<SchoolLabels, Gauge>,
    backup_interval: Family<SchoolLabels, Gauge>,
    leader: Gauge,
    known: Mutex<HashMap<String, Known>>,
    pub registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        let reconciles = Family::<ResultLabels, Counter>::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let duration = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        let schools = Family::<ReadyLabels, Gauge>::default();
        let school_ready = Family::<SchoolLabels, Gauge>::default();
        let school_created = Family::<SchoolLabels, Gauge>::default();
        let backup_last_success = Family::<SchoolLabels, FloatGauge>::default();
        let backup_last_failure = Family::<SchoolLabels, FloatGauge>::default();
        let backup_size = Family::<SchoolLabels, Gauge>::default();
        let backup_duration = Family::<SchoolLabels, Gauge>::default();
        let backup_interval = Family::<SchoolLabels, Gauge>::default();
        let leader = Gauge::default();
        let mut registry = Registry::with_prefix("edumind_operator");
        registry.register(
            "reconciles",
            "School reconciles by result",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Failed School reconciles by failing step and reason",
            errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time spent in one School reconcile",
            duration.clone(),
        );
        registry.register(
            "schools",
            "Schools by readiness and the Ready condition's reason",
            schools.clone(),
        );
        registry.register(
            "school_ready",
            "1 while the School's Ready condition is True, else 0",
            school_ready.clone(),
        );
        registry.register(
            "school_created_timestamp_seconds",
            "When the School was created (Unix seconds)",
            school_created.clone(),
        );
        registry.register(
            "backup_last_success_timestamp_seconds",
            "When the School's newest successful backup finished (Unix seconds)",
            backup_last_success.clone(),
        );
        registry.register(
            "backup_last_failure_timestamp_seconds",
            "When the School's newest failed backup ended (Unix seconds)",
            backup_last_failure.clone(),
        );
        registry.register(
            "backup_last_size_bytes",
            "Size of the School's newest successful backup",
            backup_size.clone(),
        );
        registry.register(
            "backup_last_duration_seconds",
            "Run time of the Job that took the School's newest successful backup",
            backup_duration.clone(),
        );
        registry.register(
            "backup_interval_seconds",
            "Seconds between two scheduled backups of the School (absent when none are scheduled)",
            backup_interval.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease, else 0",
            leader.clone(),
        );
        Self {
            reconciles,
            errors,
            duration,
            schools,
            school_ready,
            school_created,
            backup_last_success,
            backup_last_failure,
            backup_size,
            backup_duration,
            backup_interval,
            leader,
            known: Mutex::default(),
            registry,
        }
    }
}

fn unix_seconds(t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> f64 {
    t.0.as_millisecond() as f64 / 1000.0
}

impl Metrics {
    /// Records one failed reconcile.
    pub fn reconcile_failed(&self, step: &str, reason: &str) {
        self.errors
            .get_or_create(&ErrorLabels {
                reason: reason.to_owned(),
                step: step.to_owned(),
            })
            .inc();
    }

    /// Records what a reconcile (identified by the School's uid) observed.
    pub fn observe_school(&self, uid: &str, seen: &SchoolObservation<'_>) {
        let labels = SchoolLabels {
            namespace: seen.namespace.to_owned(),
            school: seen.name.to_owned(),
        };
        self.school_ready
            .get_or_create(&labels)
            .set(i64::from(seen.ready));
        if let Some(created) = seen.created {
            self.school_created.get_or_create(&labels).set(created);
        }
        let success = seen.backup.and_then(|b| b.last_success.as_ref());
        match success {
            Some(s) => {
                self.backup_last_success
                    .get_or_create(&labels)
                    .set(unix_seconds(&s.time));
                self.backup_size.get_or_create(&labels).set(s.size);
                match s.duration_seconds {
                    Some(d) => {
                        self.backup_duration.get_or_create(&labels).set(d);
                    }
                    None => {
                        self.backup_duration.remove(&labels);
                    }
                }
            }
            None => {
                self.backup_last_success.remove(&labels);
                self.backup_size.remove(&labels);
                self.backup_duration.remove(&labels);
            }
        }
        match seen.backup.and_then(|b| b.last_failure.as_ref()) {
            Some(f) => {
                self.backup_last_failure
                    .get_or_create(&labels)
                    .set(unix_seconds(&f.time));
            }
            None => {
                self.backup_last_failure.remove(&labels);
            }
        }
        match seen.backup_interval {
            Some(i) => {
                self.backup_interval.get_or_create(&labels).set(i);
            }
            None => {
                self.backup_interval.remove(&labels);
            }
        }
        let Ok(mut known) = self.known.lock() else {
            return;
        };
        known.insert(
            uid.to_owned(),
            Known {
                labels,
                ready: seen.ready,
                reason: seen.reason.to_owned(),
            },
        );
        self.summarise(&known);
    }

    /// Forgets a deleted School: its per-School series go away.
    pub fn forget_school(&self, uid: &str) {
        let Ok(mut known) = self.known.lock() else {
            return;
        };
        if let Some(k) = known.remove(uid) {
            self.school_ready.remove(&k.labels);
            self.school_created.remove(&k.labels);
            self.backup_last_success.remove(&k.labels);
            self.backup_last_failure.remove(&k.labels);
            self.backup_size.remove(&k.labels);
            self.backup_duration.remove(&k.labels);
            self.backup_interval.remove(&k.labels);
        }
        self.summarise(&known);
    }

    /// Whether this replica leads.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    fn summarise(&self, known: &HashMap<String, Known>) {
        let mut counts: HashMap<ReadyLabels, i64> = HashMap::new();
        for k in known.values() {
            *counts
                .entry(ReadyLabels {
                    ready: k.ready.to_string(),
                    reason: k.reason.clone(),
                })
                .or_default() += 1;
        }
        self.schools.clear();
        for (labels, n) in counts {
            self.schools.get_or_create(&labels).set(n);
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edumind_crds::{BackupFailure, BackupRecord};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    fn sample(text: &str, name: &str) -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn per_school_series_follow_the_school_and_go_with_it() {
        let m = Metrics::default();
        let backup = BackupStatus {
            cron_job: Some("c".into()),
            last_success: Some(BackupRecord {
                time: Time(Timestamp::from_second(1_700_000_000).unwrap()),
                object: "o".into(),
                size: 4096,
                sha256: None,
                job: None,
                duration_seconds: Some(42),
            }),
            last_failure: Some(BackupFailure {
                time: Time(Timestamp::from_second(1_600_000_000).unwrap()),
                reason: "DumpFailed".into(),
                message: "m".into(),
                job: None,
            }),
        };
        m.observe_school(
            "u1",
            &SchoolObservation {
                namespace: "ns",
                name: "lincoln",
                ready: false,
                reason: "Conflict",
                created: Some(1_500_000_000),
                backup: Some(&backup),
                backup_interval: Some(86_400),
            },
        );
        m.observe_school(
            "u2",
            &SchoolObservation {
                namespace: "ns",
                name: "riverside",
                ready: true,
                reason: "Ready",
                ..Default::default()
            },
        );
        let text = m.encode();
        let l = r#"{namespace="ns",school="lincoln"}"#;
        for line in [
            format!("edumind_operator_school_ready{l} 0"),
            format!("edumind_operator_school_created_timestamp_seconds{l} 1500000000"),
            format!("edumind_operator_backup_last_success_timestamp_seconds{l} 1700000000.0"),
            format!("edumind_operator_backup_last_failure_timestamp_seconds{l} 1600000000.0"),
            format!("edumind_operator_backup_last_size_bytes{l} 4096"),
            format!("edumind_operator_backup_last_duration_seconds{l} 42"),
            format!("edumind_operator_backup_interval_seconds{l} 86400"),
            r#"edumind_operator_schools{ready="false",reason="Conflict"} 1"#.to_string(),
            r#"edumind_operator_schools{ready="true",reason="Ready"} 1"#.to_string(),
        ] {
            assert!(text.contains(&line), "missing {line} in\n{text}");
        }
        // The same School, now Ready with no backups: the old reason's count and the backup
        // series are gone.
        m.observe_school(
            "u1",
            &SchoolObservation {
                namespace: "ns",
                name: "lincoln",
                ready: true,
                reason: "Ready",
                ..Default::default()
            },
        );
        let text = m.encode();
        assert!(
            text.contains(r#"edumind_operator_schools{ready="true",reason="Ready"} 2"#),
            "{text}"
        );
        assert!(!text.contains(r#"reason="Conflict""#), "{text}");
        assert!(sample(&text, "edumind_operator_backup_last_size_bytes").is_empty());
        m.forget_school("u1");
        m.forget_school("u2");
        let text = m.encode();
        assert!(!text.contains("lincoln"), "{text}");
        assert!(
            sample(&text, "edumind_operator_school_ready").is_empty(),
            "{text}"
        );
        assert!(
            sample(&text, "edumind_operator_schools").is_empty(),
            "{text}"
        );
    }
}
