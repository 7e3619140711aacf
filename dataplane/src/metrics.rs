//! Prometheus metrics, served at `/metrics` (`prometheus-client`, the operator's library
//! too; typed label sets). Names, types and labels:
//! `edumind_http_requests_total{route,status}` (counter),
//! `edumind_http_request_duration_seconds{route}` (histogram),
//! `edumind_cache_events_total{event,kind}` (counter),
//! `edumind_pool_open_connections{server}` and `edumind_pool_budget_connections{server}`
//! (gauges), `edumind_pool_acquire_wait_seconds{server}` (histogram: time until a request
//! holds a connection), `edumind_pool_acquire_timeouts_total{server}` (requests that found
//! the budget used up: 503), `edumind_cache_breaker_open` (gauge), `edumind_tenants{kind}`
//! (gauge), `edumind_tenant_source_errors_total{source}` and `edumind_jwks_reloads_total{result}`
//! (counters). docs/operations.md lists them with the questions they answer. Label sets are structs whose fields are in alphabetical order, so a sample
//! reads `{event="hit",kind="roster"}` whatever order the code names them in.

use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::pool::ServerUsage;

/// The content type of [`Metrics::render`]'s text (OpenMetrics 1.0).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

const LATENCY_BUCKETS: [f64; 11] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    event: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServerLabels {
    server: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

/// Where tenant Secrets are read from: `kubernetes` or `files`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// Failures reading tenant Secrets, by source; shared with the tenant directory.
pub type SourceErrors = Family<SourceLabels, Counter>;

const ACQUIRE_BUCKETS: [f64; 10] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.0,
];

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    cache: Family<CacheLabels, Counter>,
    pool_open: Family<ServerLabels, Gauge>,
    pool_budget: Family<ServerLabels, Gauge>,
    breaker_open: Gauge,
    acquire_wait: Family<ServerLabels, Histogram>,
    acquire_timeouts: Family<ServerLabels, Counter>,
    tenants: Family<KindLabels, Gauge>,
    source_errors: SourceErrors,
    jwks_reloads: Family<ResultLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(LATENCY_BUCKETS)) as fn() -> Histogram,
        );
        let cache = Family::<CacheLabels, Counter>::default();
        let pool_open = Family::<ServerLabels, Gauge>::default();
        let pool_budget = Family::<ServerLabels, Gauge>::default();
        let breaker_open = Gauge::default();
        let acquire_wait = Family::<ServerLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(ACQUIRE_BUCKETS)) as fn() -> Histogram,
        );
        let acquire_timeouts = Family::<ServerLabels, Counter>::default();
        let tenants = Family::<KindLabels, Gauge>::default();
        let source_errors = SourceErrors::default();
        let jwks_reloads = Family::<ResultLabels, Counter>::default();
        // Counters get their `_total` suffix from the library.
        registry.register(
            "edumind_http_requests",
            "HTTP requests by route and status",
            requests.clone(),
        );
        registry.register(
            "edumind_http_request_duration_seconds",
            "Request latency by route",
            latency.clone(),
        );
        registry.register(
            "edumind_cache_events",
            "Cache lookups: hit, miss, error, bypass",
            cache.clone(),
        );
        registry.register(
            "edumind_pool_open_connections",
            "Open connections per PostgreSQL server",
            pool_open.clone(),
        );
        registry.register(
            "edumind_pool_budget_connections",
            "Connection budget per server",
            pool_budget.clone(),
        );
        registry.register(
            "edumind_cache_breaker_open",
            "1 while the Redis circuit breaker is open (cache bypassed), else 0",
            breaker_open.clone(),
        );
        registry.register(
            "edumind_pool_acquire_wait_seconds",
            "Time until a request holds a PostgreSQL connection, per server",
            acquire_wait.clone(),
        );
        registry.register(
            "edumind_pool_acquire_timeouts",
            "Requests that found the server's connection budget used up (answered 503)",
            acquire_timeouts.clone(),
        );
        registry.register(
            "edumind_tenants",
            "Tenants the data plane knows, by kind (school, selfservice)",
            tenants.clone(),
        );
        registry.register(
            "edumind_tenant_source_errors",
            "Failures reading tenant connection Secrets, by source (kubernetes, files)",
            source_errors.clone(),
        );
        registry.register(
            "edumind_jwks_reloads",
            "JWKS file reloads by result (ok, error)",
            jwks_reloads.clone(),
        );
        Metrics {
            registry,
            requests,
            latency,
            cache,
            pool_open,
            pool_budget,
            breaker_open,
            acquire_wait,
            acquire_timeouts,
            tenants,
            source_errors,
            jwks_reloads,
        }
    }

    pub fn observe(&self, route: &str, status: u16, started: Instant) {
        self.requests
            .get_or_create(&RequestLabels {
                route: route.to_owned(),
                status,
            })
            .inc();
        self.latency
            .get_or_create(&RouteLabels {
                route: route.to_owned(),
            })
            .observe(started.elapsed().as_secs_f64());
    }

    /// `kind` is the cached value's kind (progress, roster, ...), `event` hit/miss/error/bypass.
    pub fn cache_event(&self, kind: &str, event: &str) {
        self.cache
            .get_or_create(&CacheLabels {
                event: event.to_owned(),
                kind: kind.to_owned(),
            })
            .inc();
    }

    pub fn set_breaker_open(&self, open: bool) {
        self.breaker_open.set(i64::from(open));
    }

    /// One `acquire` of a connection to `server`: how long it took, and whether it gave up
    /// because the budget stayed used up.
    pub fn pool_acquire(&self, server: &str, waited: std::time::Duration, timed_out: bool) {
        let labels = ServerLabels {
            server: server.to_owned(),
        };
        if timed_out {
            self.acquire_timeouts.get_or_create(&labels).inc();
        } else {
            self.acquire_wait
                .get_or_create(&labels)
                .observe(waited.as_secs_f64());
        }
    }

    /// The tenant counts, set before each render.
    pub fn set_tenants(&self, schools: usize, selfservice: usize) {
        self.tenants
            .get_or_create(&KindLabels { kind: "school" })
            .set(schools as i64);
        self.tenants
            .get_or_create(&KindLabels {
                kind: "selfservice",
            })
            .set(selfservice as i64);
    }

    /// The tenant-source error counters, for the tenant directory to count into.
    pub fn source_errors(&self) -> SourceErrors {
        self.source_errors.clone()
    }

    /// One JWKS reload attempt that read a changed file (`ok`) or failed (`error`).
    pub fn jwks_reload(&self, ok: bool) {
        self.jwks_reloads
            .get_or_create(&ResultLabels {
                result: if ok { "ok" } else { "error" },
            })
            .inc();
    }

    pub fn render(&self, pools: &[ServerUsage]) -> String {
        for u in pools {
            let server = ServerLabels {
                server: u.server.clone(),
            };
            self.pool_open.get_or_create(&server).set(u.open as i64);
            self.pool_budget.get_or_create(&server).set(u.budget as i64);
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_types_and_labels_are_the_published_ones() {
        let m = Metrics::new();
        m.observe("readyz", 200, Instant::now());
        m.cache_event("roster", "hit");
        m.pool_acquire("db:5432", std::time::Duration::from_millis(3), false);
        m.pool_acquire("db:5432", std::time::Duration::from_millis(900), true);
        m.set_tenants(2, 1);
        m.source_errors()
            .get_or_create(&SourceLabels { source: "files" })
            .inc();
        m.jwks_reload(false);
        let text = m.render(&[ServerUsage {
            server: "db:5432".into(),
            open: 3,
            budget: 10,
        }]);
        for needle in [
            "# TYPE edumind_http_requests counter",
            "edumind_http_requests_total{route=\"readyz\",status=\"200\"} 1\n",
            "# TYPE edumind_http_request_duration_seconds histogram",
            "edumind_http_request_duration_seconds_bucket{le=\"0.001\",route=\"readyz\"} 1\n",
            "edumind_http_request_duration_seconds_count{route=\"readyz\"} 1\n",
            "edumind_cache_events_total{event=\"hit\",kind=\"roster\"} 1\n",
            "# TYPE edumind_pool_open_connections gauge",
            "edumind_pool_open_connections{server=\"db:5432\"} 3\n",
            "edumind_pool_budget_connections{server=\"db:5432\"} 10\n",
            "edumind_pool_acquire_wait_seconds_bucket{le=\"0.005\",server=\"db:5432\"} 1\n",
            "edumind_pool_acquire_wait_seconds_count{server=\"db:5432\"} 1\n",
            "edumind_pool_acquire_timeouts_total{server=\"db:5432\"} 1\n",
            "edumind_tenants{kind=\"school\"} 2\n",
            "edumind_tenants{kind=\"selfservice\"} 1\n",
            "edumind_tenant_source_errors_total{source=\"files\"} 1\n",
            "edumind_jwks_reloads_total{result=\"error\"} 1\n",
        ] {
            assert!(text.contains(needle), "{needle} not in\n{text}");
        }
    }
}
