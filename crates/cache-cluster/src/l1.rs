//! The in-process L1: moka, size-bounded, each entry living no longer than its value in Redis.

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::Expiry;

use crate::config::L1Config;

/// A decoded value (`Option<T>`, `None` for a negative entry) and how long it may stay.
#[derive(Clone)]
pub(crate) struct L1Entry {
    pub(crate) value: Arc<dyn Any + Send + Sync>,
    ttl: Duration,
}

impl L1Entry {
    pub(crate) fn new<T: Send + Sync + 'static>(value: Option<T>, ttl: Duration) -> Self {
        Self { value: Arc::new(value), ttl }
    }

    /// The value when it was stored as `Option<T>`; `None` for another type.
    pub(crate) fn get<T: Clone + 'static>(&self) -> Option<Option<T>> {
        self.value.downcast_ref::<Option<T>>().cloned()
    }
}

struct PerEntryTtl;

impl Expiry<String, L1Entry> for PerEntryTtl {
    fn expire_after_create(&self, _key: &String, entry: &L1Entry, _now: Instant) -> Option<Duration> {
        Some(entry.ttl)
    }

    fn expire_after_update(
        &self,
        _key: &String,
        entry: &L1Entry,
        _now: Instant,
        _remaining: Option<Duration>,
    ) -> Option<Duration> {
        Some(entry.ttl)
    }
}

/// Keyed by the caller's key: one L1 belongs to one cache, so the namespace is implied.
#[derive(Clone)]
pub(crate) struct L1 {
    entries: moka::sync::Cache<String, L1Entry>,
    max_ttl: Duration,
}

impl std::fmt::Debug for L1 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("L1").field("entries", &self.entries.entry_count()).field("max_ttl", &self.max_ttl).finish()
    }
}

impl L1 {
    pub(crate) fn new(config: &L1Config) -> Self {
        let entries = moka::sync::Cache::builder()
            .name("herd-cache-l1")
            .max_capacity(config.max_entries)
            .expire_after(PerEntryTtl)
            .build();
        Self { entries, max_ttl: config.max_ttl }
    }

    pub(crate) fn get(&self, key: &str) -> Option<L1Entry> {
        self.entries.get(key)
    }

    /// Stores `value` for at most `remaining` (the value's time left in Redis) and `max_ttl`.
    pub(crate) fn insert<T: Send + Sync + 'static>(&self, key: &str, value: Option<T>, remaining: Duration) {
        let ttl = remaining.min(self.max_ttl);
        if ttl.is_zero() {
            return;
        }
        self.entries.insert(key.to_owned(), L1Entry::new(value, ttl));
    }

    pub(crate) fn invalidate(&self, key: &str) {
        self.entries.invalidate(key);
    }

    pub(crate) fn invalidate_all(&self) {
        self.entries.invalidate_all();
    }

    pub(crate) fn entry_count(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.entry_count()
    }
}
