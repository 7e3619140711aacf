//! Prometheus metrics, served at `/metrics` (`prometheus-client`, the operator's library
//! too; typed label sets). Names, types and labels:
//! `edumind_http_requests_total{route,status}` (counter),
//! `edumind_http_request_duration_seconds{route}` (histogram),
//! `edumind_cache_events_total{event,kind}` (counter),
//! `edumind_pool_open_connections{server}` and `edumind_pool_budget_connections{server}`
//! (gauges). Label sets are structs whose fields are in alphabetical order, so a sample
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

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    cache: Family<CacheLabels, Counter>,
    pool_open: Family<ServerLabels, Gauge>,
    pool_budget: Family<ServerLabels, Gauge>,
    breaker_open: Gauge,
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
        Metrics {
            registry,
            requests,
            latency,
            cache,
            pool_open,
            pool_budget,
            breaker_open,
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
        ] {
            assert!(text.contains(needle), "{needle} not in\n{text}");
        }
    }
}
