//! Service endpoints: liveness, readiness, metrics, the OpenAPI document.

use super::*;

/// Health, readiness and the OpenAPI document: this module's public route group.
pub(super) fn routes(s: &SharedState) -> BoxedFilter<(Response,)> {
    any_of([healthz(s), readyz(s), openapi_json(s)])
}

/// The admin listener's routes: metrics, detailed readiness, liveness. Never mounted on
/// the public listener (they name PostgreSQL servers and carry operational detail).
pub fn admin_routes(s: &SharedState) -> BoxedFilter<(Response,)> {
    let ready = warp::path!("readyz")
        .and(warp::get())
        .and(with(s))
        .then(readyz_handler)
        .boxed();
    let live = warp::path!("healthz")
        .and(warp::get())
        .map(|| json_reply(StatusCode::OK, &json!({"status": "ok"})))
        .boxed();
    any_of([
        metrics(s),
        instrument(s, openapi::ADMIN_READYZ, ready),
        instrument(s, openapi::ADMIN_HEALTHZ, live),
    ])
    .recover(crate::problem::recover)
    .unify()
    .boxed()
}

/// `GET /healthz`: the process is alive (no dependencies checked).
pub fn healthz(s: &SharedState) -> BoxedFilter<(Response,)> {
    let f = warp::path!("healthz")
        .and(warp::get())
        .map(|| json_reply(StatusCode::OK, &json!({"status": "ok"})))
        .boxed();
    instrument(s, openapi::HEALTHZ, f)
}

/// Public `GET /readyz`: `{"status": "ready"}` (200) or `{"status": "unready"}` (503),
/// the same decision as the admin listener's detailed reply, without its details (no
/// server names, counts or dependency states).
pub fn readyz(s: &SharedState) -> BoxedFilter<(Response,)> {
    let f = warp::path!("readyz")
        .and(warp::get())
        .and(with(s))
        .then(|s: SharedState| async move {
            let detailed = readyz_handler(s).await;
            let status = detailed.status();
            let word = if status == StatusCode::OK {
                "ready"
            } else {
                "unready"
            };
            json_reply(status, &json!({ "status": word }))
        })
        .boxed();
    instrument(s, openapi::READYZ, f)
}

/// Admin `GET /readyz`: PostgreSQL (one tenant per server) and Redis, reported
/// separately. Ready (200) when PostgreSQL answers; Redis down is reported but does not
/// make the service unready, because reads fall back to PostgreSQL.
pub(super) async fn readyz_handler(s: SharedState) -> Response {
    let redis_up = s.cache.ping().await;
    let mut servers = std::collections::BTreeMap::new();
    for t in s.directory.all() {
        servers.entry(t.server_key()).or_insert(t);
    }
    let mut pg = Vec::new();
    let mut all_up = true;
    for (server, t) in servers {
        let up = match s.pools.acquire(&t).await {
            Ok(mut c) => c.ping().await.is_ok(),
            Err(_) => false,
        };
        all_up &= up;
        pg.push(json!({"server": server, "status": if up {"up"} else {"down"}}));
    }
    let status = if all_up {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_reply(
        status,
        &json!({
            "status": if all_up {"ready"} else {"unready"},
            "postgres": {"status": if all_up {"up"} else {"down"}, "servers": pg},
            "redis": {"status": if redis_up {"up"} else {"down"}},
            "tenants": s.directory.len(),
        }),
    )
}

/// `GET /metrics` (admin listener): OpenMetrics text (Prometheus reads it).
pub fn metrics(s: &SharedState) -> BoxedFilter<(Response,)> {
    let st = s.clone();
    let f = warp::path!("metrics")
        .and(warp::get())
        .map(move || {
            let (schools, selfservice) = st.directory.counts();
            st.metrics.set_tenants(schools, selfservice);
            let body = st.metrics.render(&st.pools.usage());
            let mut r = Response::new(body.into());
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
            );
            r
        })
        .boxed();
    instrument(s, openapi::ADMIN_METRICS, f)
}

/// `GET /openapi.json`: the OpenAPI 3 document, built from the route table.
pub fn openapi_json(s: &SharedState) -> BoxedFilter<(Response,)> {
    let f = warp::path!("openapi.json")
        .and(warp::get())
        .map(|| json_reply(StatusCode::OK, &openapi::document()))
        .boxed();
    instrument(s, openapi::OPENAPI, f)
}
