//! The operator's small HTTP server, on warp like the data plane: `/metrics` (Prometheus
//! text from [`Metrics`]), `/healthz` (the process runs) and `/readyz` (configuration and
//! the API client work; a standby replica is ready too).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use warp::http::StatusCode;
use warp::{Filter, Reply};

use crate::metrics::Metrics;

/// The three routes; anything else is 404.
pub fn routes(
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = warp::Rejection> + Clone {
    let metrics = warp::path!("metrics")
        .and(warp::get())
        .map(move || metrics.encode().into_response());
    let healthz = warp::path!("healthz")
        .and(warp::get())
        .map(|| "ok".into_response());
    let readyz = warp::path!("readyz").and(warp::get()).map(move || {
        if ready.load(Ordering::Relaxed) {
            "ready".into_response()
        } else {
            warp::reply::with_status("not ready", StatusCode::SERVICE_UNAVAILABLE).into_response()
        }
    });
    metrics.or(healthz).unify().or(readyz).unify()
}

/// Serves [`routes`] on `listener` until `stop` resolves, then lets requests in flight
/// finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    stop: impl Future<Output = ()> + Send + 'static,
) {
    warp::serve(routes(metrics, ready))
        .incoming(listener)
        .graceful(stop)
        .run()
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(port: u16, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(request.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn probes_follow_readiness_and_metrics_are_prometheus_text() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let ready = Arc::new(AtomicBool::new(false));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            listener,
            Arc::new(Metrics::default()),
            ready.clone(),
            async move {
                let _ = stop_rx.await;
            },
        ));
        assert!(get(port, "/healthz").await.starts_with("HTTP/1.1 200"));
        let not_ready = get(port, "/readyz").await;
        assert!(not_ready.starts_with("HTTP/1.1 503"), "{not_ready}");
        ready.store(true, Ordering::Relaxed);
        assert!(get(port, "/readyz").await.starts_with("HTTP/1.1 200"));
        let metrics = get(port, "/metrics").await;
        assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
        assert!(metrics.contains("# EOF"), "{metrics}");
        assert!(get(port, "/nothing").await.starts_with("HTTP/1.1 404"));
        stop_tx.send(()).unwrap();
        server.await.unwrap();
    }
}
