//! Logs and traces of both binaries, set up once here so that they log and trace alike.
//!
//! * **Logs** are JSON lines. Every line written inside a span carries the span's fields,
//!   among them `trace_id` of the request or reconcile it belongs to (see [`trace_id`]).
//! * **Spans**: the binaries open `tracing` spans on the reconcile steps and on the request
//!   path (docs/operations.md lists them). They carry the School or tenant id and never a
//!   secret.
//! * **Export**: when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`)
//!   is set, spans are also exported over OTLP/HTTP (protobuf) to that collector, batched in
//!   the background; the standard `OTEL_*` variables (service name, batch delay, timeout)
//!   apply. Without it nothing is exported and nothing is paid for it.

use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// Whether OTLP export is configured in the environment.
pub fn otlp_configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()))
}

/// Keeps the exporter alive; dropping it flushes the spans not sent yet.
#[must_use = "dropping the guard stops the trace export"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported over OTLP.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            let _ = p.shutdown();
        }
    }
}

type BoxedLayer<S> = Box<dyn Layer<S> + Send + Sync>;

/// The OTLP layer for `service`, when export is configured.
fn otlp_layer<S>(
    service: &'static str,
) -> Result<Option<(BoxedLayer<S>, SdkTracerProvider)>, String>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a> + Send + Sync,
{
    if !otlp_configured() {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|e| format!("OTLP exporter: {e}"))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service)
        .build();
    // Batched on the binary's own Tokio runtime: the HTTP client needs one, and the
    // default batch processor's plain thread has none.
    let batch =
        opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
            exporter,
            opentelemetry_sdk::runtime::Tokio,
        )
        .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(batch)
        .with_resource(resource)
        .build();
    let tracer = provider.tracer(service);
    let layer = tracing_opentelemetry::layer().with_tracer(tracer).boxed();
    Ok(Some((layer, provider)))
}

/// warp's request tracing writes two `info` lines per request ("processing request",
/// "finished processing with success") and a `warn` line per 4xx answer: half of a cache
/// hit's CPU at the default level (the benchmark's `RUST_LOG=info` against `warn`: 89 µs
/// against 40 µs per hit), and a way for any client to flood the logs with warnings. They
/// are off unless the filter names `warp` itself; requests are counted and timed by the
/// metrics, and `edumind_dataplane::api=debug` logs one `request done` line each.
pub const QUIET_DIRECTIVE: &str = "warp::filters::trace=off";

/// The log filter for `rust_log` (the `RUST_LOG` value): `info` when unset or invalid,
/// with [`QUIET_DIRECTIVE`] added unless it mentions `warp`.
pub fn log_filter(rust_log: Option<&str>) -> EnvFilter {
    let spec = rust_log.map(str::trim).filter(|v| !v.is_empty());
    let filter = spec
        .and_then(|v| EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    if spec.is_some_and(|v| v.contains("warp")) {
        return filter;
    }
    match QUIET_DIRECTIVE.parse() {
        Ok(d) => filter.add_directive(d),
        Err(_) => filter,
    }
}

/// Installs the global subscriber: `RUST_LOG` filter (default `info`), JSON logs to
/// `writer` with the current span's fields, and OTLP export when configured. Call it
/// inside the binary's Tokio runtime (the exporter runs on it).
pub fn init<W>(service: &'static str, writer: W) -> Result<Telemetry, String>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = log_filter(std::env::var("RUST_LOG").ok().as_deref());
    let logs = tracing_subscriber::fmt::layer()
        .json()
        .with_current_span(true)
        .with_span_list(false)
        .with_writer(writer);
    let otlp = otlp_layer::<Registry>(service)?;
    let (otlp, provider) = match otlp {
        Some((layer, provider)) => (Some(layer), Some(provider)),
        None => (None, None),
    };
    tracing_subscriber::registry()
        .with(otlp)
        .with(logs.with_filter(filter))
        .try_init()
        .map_err(|e| format!("installing the log subscriber: {e}"))?;
    if provider.is_some() {
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
    }
    Ok(Telemetry { provider })
}

/// The W3C `traceparent` trace id in `value` (`00-<32 hex>-<16 hex>-<2 hex>`), if valid.
pub fn traceparent_trace_id(value: &str) -> Option<String> {
    let mut parts = value.trim().split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    let valid = hex(version, 2)
        && version != "ff"
        && hex(trace, 32)
        && trace.bytes().any(|b| b != b'0')
        && hex(parent, 16)
        && hex(flags, 2);
    valid.then(|| trace.to_ascii_lowercase())
}

/// Gives `span` (a request or reconcile root, declared with an empty `trace_id` field) its
/// trace id and records it in that field, so every log line inside carries it:
/// * with OTLP export on, the span continues the caller's trace (`traceparent` in
///   `headers`) and the id is the exported trace's;
/// * without it, the caller's `traceparent` trace id, else a fresh random one.
pub fn start_trace(span: &Span, headers: Option<&http::HeaderMap>) {
    let incoming = headers
        .and_then(|h| h.get("traceparent"))
        .and_then(|v| v.to_str().ok());
    if let Some(h) = headers
        && incoming.is_some()
    {
        let parent = opentelemetry::global::get_text_map_propagator(|p| {
            p.extract(&opentelemetry_http::HeaderExtractor(h))
        });
        let _ = span.set_parent(parent);
    }
    let exported = span.context().span().span_context().trace_id();
    let id = if exported != opentelemetry::trace::TraceId::INVALID {
        exported.to_string()
    } else {
        incoming
            .and_then(traceparent_trace_id)
            .unwrap_or_else(|| hex::encode(rand::random::<[u8; 16]>()))
    };
    span.record("trace_id", id.as_str());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lines a subscriber with `log_filter(rust_log)` writes for one warp request line
    /// and one line of our own, both at `info`.
    fn written(rust_log: Option<&str>) -> String {
        let buf = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
        let sink = buf.clone();
        let make = move || Sink(sink.clone());
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .json()
                .with_writer(make)
                .with_filter(log_filter(rust_log)),
        );
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: "warp::filters::trace", "finished processing with success");
            tracing::warn!(target: "warp::filters::trace", "unable to serve request (client error)");
            tracing::info!(target: "edumind_dataplane::api", "our own line");
        });
        let out = buf.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&out).into_owned()
    }

    struct Sink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            if let Ok(mut v) = self.0.lock() {
                v.extend_from_slice(b);
            }
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn warp_request_lines_are_off_unless_asked_for() {
        for rust_log in [
            None,
            Some("info"),
            Some("  "),
            Some("not a [valid filter"),
            Some("debug"),
        ] {
            let out = written(rust_log);
            assert!(out.contains("our own line"), "{rust_log:?}: {out}");
            assert!(!out.contains("processing"), "{rust_log:?}: {out}");
            assert!(!out.contains("client error"), "{rust_log:?}: {out}");
        }
        let out = written(Some("info,warp=info"));
        assert!(out.contains("finished processing with success"), "{out}");
        assert!(out.contains("our own line"), "{out}");
        let out = written(Some("warn"));
        assert!(!out.contains("our own line"), "{out}");
    }

    #[test]
    fn traceparent_is_parsed_strictly() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            traceparent_trace_id(good).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473z-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736",
        ] {
            assert_eq!(traceparent_trace_id(bad), None, "{bad:?}");
        }
    }
}
