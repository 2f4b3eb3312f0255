//! Spans a test ran, captured as they close (name, target, fields as text), to check the
//! fields a crate records: install a [`Capture`] as the test's subscriber.
//!
//! ```
//! use herd_testkit::spans::Capture;
//! use tracing_subscriber::layer::SubscriberExt as _;
//! use tracing_subscriber::util::SubscriberInitExt as _;
//!
//! let capture = Capture::default();
//! let _guard = tracing_subscriber::registry().with(capture.clone()).set_default();
//! tracing::debug_span!("herd.example", db.system.name = "postgresql").in_scope(|| {});
//! let span = capture.one("herd.example");
//! assert_eq!(span.field("db.system.name"), "postgresql");
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use tracing::Subscriber;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

/// A closed span: its name, target and fields (values as text).
#[derive(Debug, Clone)]
pub struct Captured {
    /// The span's name.
    pub name: &'static str,
    /// The span's target (the module that made it).
    pub target: String,
    /// Every field recorded, at creation or later.
    pub fields: BTreeMap<String, String>,
}

impl Captured {
    /// The value of field `name`; panics (a test failure) naming the span when it has none.
    pub fn field(&self, name: &str) -> &str {
        self.fields
            .get(name)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("no field {name} in {self:#?}"))
    }
}

/// Field values as text.
#[derive(Default)]
struct Fields(BTreeMap<String, String>);

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

/// A `tracing-subscriber` layer keeping every closed span.
#[derive(Debug, Clone, Default)]
pub struct Capture(Arc<Mutex<Vec<Captured>>>);

impl Capture {
    /// The spans named `name` closed so far, forgetting them.
    pub fn take(&self, name: &str) -> Vec<Captured> {
        let mut spans = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let (taken, kept) = spans.drain(..).partition(|s| s.name == name);
        *spans = kept;
        taken
    }

    /// The one span named `name` closed since the last call; panics (a test failure) unless
    /// there is exactly one.
    pub fn one(&self, name: &str) -> Captured {
        let mut spans = self.take(name);
        assert_eq!(spans.len(), 1, "want one {name} span: {spans:#?}");
        spans.remove(0)
    }
}

impl<S> Layer<S> for Capture
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(fields);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id)
            && let Some(fields) = span.extensions_mut().get_mut::<Fields>()
        {
            values.record(fields);
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let fields = span
            .extensions_mut()
            .remove::<Fields>()
            .unwrap_or_default()
            .0;
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Captured {
                name: span.name(),
                target: span.metadata().target().to_owned(),
                fields,
            });
    }
}
