//! Prometheus metrics, served at `/metrics`.

use std::time::Instant;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::pool::ServerUsage;

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    cache: IntCounterVec,
    pool_open: IntGaugeVec,
    pool_budget: IntGaugeVec,
    breaker_open: IntGauge,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "edumind_http_requests_total",
                "HTTP requests by route and status",
            ),
            &["route", "status"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "edumind_http_request_duration_seconds",
                "Request latency by route",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
            &["route"],
        )?;
        let cache = IntCounterVec::new(
            Opts::new(
                "edumind_cache_events_total",
                "Cache lookups: hit, miss, error, bypass",
            ),
            &["kind", "event"],
        )?;
        let pool_open = IntGaugeVec::new(
            Opts::new(
                "edumind_pool_open_connections",
                "Open connections per PostgreSQL server",
            ),
            &["server"],
        )?;
        let pool_budget = IntGaugeVec::new(
            Opts::new(
                "edumind_pool_budget_connections",
                "Connection budget per server",
            ),
            &["server"],
        )?;
        let breaker_open = IntGauge::with_opts(Opts::new(
            "edumind_cache_breaker_open",
            "1 while the Redis circuit breaker is open (cache bypassed), else 0",
        ))?;
        registry.register(Box::new(breaker_open.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(cache.clone()))?;
        registry.register(Box::new(pool_open.clone()))?;
        registry.register(Box::new(pool_budget.clone()))?;
        Ok(Metrics {
            registry,
            requests,
            latency,
            cache,
            pool_open,
            pool_budget,
            breaker_open,
        })
    }

    pub fn observe(&self, route: &str, status: u16, started: Instant) {
        self.requests
            .with_label_values(&[route, &status.to_string()])
            .inc();
        self.latency
            .with_label_values(&[route])
            .observe(started.elapsed().as_secs_f64());
    }

    /// `kind` is the cached value's kind (progress, roster, ...), `event` hit/miss/error/bypass.
    pub fn cache_event(&self, kind: &str, event: &str) {
        self.cache.with_label_values(&[kind, event]).inc();
    }

    pub fn set_breaker_open(&self, open: bool) {
        self.breaker_open.set(i64::from(open));
    }

    pub fn render(&self, pools: &[ServerUsage]) -> String {
        for u in pools {
            self.pool_open
                .with_label_values(&[&u.server])
                .set(u.open as i64);
            self.pool_budget
                .with_label_values(&[&u.server])
                .set(u.budget as i64);
        }
        let mut buf = Vec::new();
        if TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .is_err()
        {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}
