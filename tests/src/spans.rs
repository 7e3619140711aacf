//! Records the tree of `tracing` spans a piece of code opens, to assert it in tests.
//!
//! [`SpanRecorder::install`] sets a thread-local subscriber (run the code on a
//! current-thread runtime so every task sees it) that records, for every span, its name,
//! its parent's name and its fields as text. Log events are written as JSON lines into
//! [`SpanRecorder::logs`], with the current span's fields, as the binaries write them.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tracing::Subscriber;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

/// One recorded span.
#[derive(Debug, Clone, Default)]
pub struct SpanRecord {
    pub name: String,
    pub parent: Option<String>,
    pub fields: BTreeMap<String, String>,
}

#[derive(Default)]
struct Shared {
    spans: Vec<SpanRecord>,
    logs: Vec<u8>,
}

/// The recorder; cheap to clone.
#[derive(Clone, Default)]
pub struct SpanRecorder {
    shared: Arc<Mutex<Shared>>,
}

/// Where a span's record lives, in the span's extensions.
struct Index(usize);

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for SpanRecorder {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut record = SpanRecord {
            name: span.name().to_owned(),
            parent: span.parent().map(|p| p.name().to_owned()),
            fields: BTreeMap::new(),
        };
        attrs.record(&mut Fields(&mut record.fields));
        let mut shared = self.shared.lock().unwrap();
        shared.spans.push(record);
        span.extensions_mut().insert(Index(shared.spans.len() - 1));
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let ext = span.extensions();
        let Some(Index(i)) = ext.get::<Index>() else {
            return;
        };
        let mut shared = self.shared.lock().unwrap();
        values.record(&mut Fields(&mut shared.spans[*i].fields));
    }
}

/// Writes log lines into the recorder.
#[derive(Clone)]
pub struct LogWriter(Arc<Mutex<Shared>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().logs.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl SpanRecorder {
    /// Records spans and `debug`+ logs on this thread until the guard is dropped.
    pub fn install(&self) -> tracing::subscriber::DefaultGuard {
        let writer = LogWriter(self.shared.clone());
        let logs = tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(move || writer.clone());
        let subscriber = tracing_subscriber::registry()
            .with(self.clone())
            .with(logs.with_filter(tracing_subscriber::filter::LevelFilter::DEBUG));
        tracing::subscriber::set_default(subscriber)
    }

    /// Every span recorded so far, in creation order.
    pub fn spans(&self) -> Vec<SpanRecord> {
        self.shared.lock().unwrap().spans.clone()
    }

    /// The spans named `name`.
    pub fn named(&self, name: &str) -> Vec<SpanRecord> {
        self.spans()
            .into_iter()
            .filter(|s| s.name == name)
            .collect()
    }

    /// The log lines written so far.
    pub fn logs(&self) -> String {
        String::from_utf8_lossy(&self.shared.lock().unwrap().logs).into_owned()
    }
}
