//! The cache operations' spans against a real 6-node Redis Cluster from herd-testkit (shared,
//! read-mostly): OpenTelemetry field names, the operation, the key's class, the tier and result,
//! the master serving the key, and never the key itself.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herd_cache_cluster::{Backend, Cache, CacheConfig, RedisConfig};
use herd_testkit::shared;
use tracing::Subscriber;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

/// The spans a test ran, captured as they close: name, target and fields as text.
#[derive(Debug, Clone)]
struct Captured {
    name: &'static str,
    target: String,
    fields: BTreeMap<String, String>,
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

/// A layer keeping every closed span.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<Captured>>>);

impl Capture {
    /// The spans named `name` closed so far, and forgets them.
    fn take(&self, name: &str) -> Vec<Captured> {
        let mut spans = self.0.lock().unwrap();
        let (taken, kept) = spans.drain(..).partition(|s| s.name == name);
        *spans = kept;
        taken
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
        self.0.lock().unwrap().push(Captured {
            name: span.name(),
            target: span.metadata().target().to_owned(),
            fields,
        });
    }
}

/// The one span of `name` captured since the last call; fails unless there is exactly one.
fn one(capture: &Capture, name: &str) -> Captured {
    let mut spans = capture.take(name);
    assert_eq!(spans.len(), 1, "want one {name} span: {spans:#?}");
    spans.remove(0)
}

fn field<'a>(span: &'a Captured, name: &str) -> &'a str {
    span.fields
        .get(name)
        .map(String::as_str)
        .unwrap_or_else(|| panic!("no field {name} in {span:#?}"))
}

/// Fails when the key's id (the part after its class) reached any field.
fn assert_no_key(span: &Captured, id: &str) {
    for value in span.fields.values() {
        assert!(!value.contains(id), "the key leaked into {span:#?}");
    }
}

#[tokio::test]
async fn operations_are_spans_with_otel_fields_tier_result_and_node_but_no_key() {
    let rc = shared::redis_cluster().await.unwrap();
    let masters: HashSet<String> = rc
        .masters()
        .await
        .unwrap()
        .iter()
        .map(|m| m.port().to_string())
        .collect();
    let capture = Capture::default();
    let _subscriber = tracing_subscriber::registry()
        .with(capture.clone())
        .set_default();
    let backend = Backend::cluster(RedisConfig::new(rc.urls())).await.unwrap();
    let cache = Cache::builder(backend)
        .config(CacheConfig {
            namespace: "spans".to_owned(),
            ..CacheConfig::default()
        })
        .build()
        .await
        .unwrap();
    let ttl = Duration::from_secs(60);
    let id = "Zq7xK";
    let key = format!("user:{id}");

    // A set, then a get answered by the L1 the set filled.
    cache.set(&key, &"Ada".to_owned(), ttl).await.unwrap();
    let set = one(&capture, "herd.cache.set");
    assert_eq!(set.target, "herd_cache_cluster::op");
    assert_eq!(field(&set, "db.system.name"), "redis");
    assert_eq!(field(&set, "db.operation.name"), "SET");
    assert_eq!(field(&set, "herd.cache.op"), "set");
    assert_eq!(field(&set, "herd.cache.key_class"), "user");
    assert!(!set.fields.contains_key("error.type"));
    assert_no_key(&set, id);

    assert_eq!(cache.get::<String>(&key).await.as_deref(), Some("Ada"));
    let hit = one(&capture, "herd.cache.get");
    assert_eq!(field(&hit, "db.operation.name"), "GET");
    assert_eq!(field(&hit, "herd.cache.op"), "get");
    assert_eq!(field(&hit, "herd.cache.key_class"), "user");
    assert_eq!(field(&hit, "herd.cache.tier"), "l1");
    assert_eq!(field(&hit, "herd.cache.result"), "hit");
    assert!(
        !hit.fields.contains_key("server.port"),
        "no node asked: {hit:#?}"
    );
    assert_no_key(&hit, id);

    // A key nobody stored: a miss in Redis, on the master serving its slot.
    let absent = format!("order:{id}");
    assert_eq!(cache.get::<String>(&absent).await, None);
    let miss = one(&capture, "herd.cache.get");
    assert_eq!(field(&miss, "herd.cache.key_class"), "order");
    assert_eq!(field(&miss, "herd.cache.tier"), "l2");
    assert_eq!(field(&miss, "herd.cache.result"), "miss");
    assert!(
        masters.contains(field(&miss, "server.port")),
        "{miss:#?} names no master of {masters:?}"
    );
    assert!(!field(&miss, "server.address").is_empty());
    assert_no_key(&miss, id);

    // A load: the miss in Redis, then the loader, in the caller's span; then an L1 hit.
    let loaded = format!("cart:{id}");
    let value: Option<u32> = cache
        .get_or_load(&loaded, ttl, || async { Ok::<_, std::io::Error>(Some(7)) })
        .await
        .unwrap();
    assert_eq!(value, Some(7));
    let load = one(&capture, "herd.cache.get_or_load");
    assert_eq!(field(&load, "herd.cache.op"), "get_or_load");
    assert_eq!(field(&load, "herd.cache.key_class"), "cart");
    assert_eq!(field(&load, "herd.cache.tier"), "l2");
    assert_eq!(field(&load, "herd.cache.result"), "miss");
    assert!(masters.contains(field(&load, "server.port")), "{load:#?}");
    assert_no_key(&load, id);
    let again: Option<u32> = cache
        .get_or_load(&loaded, ttl, || async { Ok::<_, std::io::Error>(Some(8)) })
        .await
        .unwrap();
    assert_eq!(again, Some(7));
    let cached = one(&capture, "herd.cache.get_or_load");
    assert_eq!(field(&cached, "herd.cache.tier"), "l1");
    assert_eq!(field(&cached, "herd.cache.result"), "hit");

    // A key without a class is recorded as `-`, never as itself.
    cache.delete(id).await.unwrap();
    let delete = one(&capture, "herd.cache.delete");
    assert_eq!(field(&delete, "db.operation.name"), "DEL");
    assert_eq!(field(&delete, "herd.cache.key_class"), "-");
    assert_no_key(&delete, id);
}
