//! The in-process L1: size-bounded by moka, each entry living no longer than its value in Redis.
//!
//! Reads go to a `DashMap` index checked against a coarse clock; moka decides what to keep
//! (TinyLFU admission, LRU eviction, per-entry expiry) and its eviction listener removes evicted
//! entries from the index. A moka `get` costs 130-190 ns here, more than the whole L1 hit budget,
//! so only one read in [`POLICY_SAMPLE`] is reported to moka: enough for its frequency sketch to
//! tell hot keys from cold ones.

use std::any::Any;
use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use foldhash::fast::RandomState;
use moka::Expiry;
use moka::notification::RemovalCause;

use crate::clock;
use crate::config::L1Config;

/// One read in this many is recorded in moka's access statistics.
const POLICY_SAMPLE: u32 = 16;

/// A decoded value (`Option<T>`, `None` for a negative entry).
struct Slot {
    value: Arc<dyn Any + Send + Sync>,
    expires_ms: u64,
    /// Which insert this is, so the eviction of an older one does not remove it.
    generation: u64,
    /// [`codec::fingerprint`](crate::codec::fingerprint) of the stored bytes the value came
    /// from, when known: an invalidation for the write that stored those bytes leaves it.
    written: Option<u64>,
}

/// What moka holds per key: the generation of the indexed value and its TTL.
#[derive(Clone, Copy)]
struct Policy {
    generation: u64,
    ttl: Duration,
}

struct PerEntryTtl;

impl Expiry<String, Policy> for PerEntryTtl {
    fn expire_after_create(
        &self,
        _key: &String,
        entry: &Policy,
        _now: Instant,
    ) -> Option<Duration> {
        Some(entry.ttl)
    }

    fn expire_after_update(
        &self,
        _key: &String,
        entry: &Policy,
        _now: Instant,
        _left: Option<Duration>,
    ) -> Option<Duration> {
        Some(entry.ttl)
    }
}

thread_local! {
    static READS: Cell<u32> = const { Cell::new(0) };
}

/// Keyed by the caller's key: one L1 belongs to one cache, so the namespace is implied.
#[derive(Clone)]
pub(crate) struct L1 {
    index: Arc<DashMap<String, Slot, RandomState>>,
    policy: moka::sync::Cache<String, Policy, RandomState>,
    generations: Arc<AtomicU64>,
    max_ttl: Duration,
}

impl std::fmt::Debug for L1 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("L1")
            .field("entries", &self.index.len())
            .field("max_ttl", &self.max_ttl)
            .finish()
    }
}

impl L1 {
    pub(crate) fn new(config: &L1Config) -> Self {
        // foldhash (randomly seeded, like hashbrown's default) instead of SipHash: hashing the
        // key was a fifth of an L1 hit.
        let index: Arc<DashMap<String, Slot, RandomState>> =
            Arc::new(DashMap::with_hasher(RandomState::default()));
        let evicted_from = Arc::clone(&index);
        let policy = moka::sync::Cache::builder()
            .name("herd-cache-l1")
            .max_capacity(config.max_entries)
            .expire_after(PerEntryTtl)
            .eviction_listener(move |key: Arc<String>, policy: Policy, cause| {
                // A replaced entry's successor is already in the index.
                if cause != RemovalCause::Replaced {
                    evicted_from
                        .remove_if(key.as_str(), |_, slot| slot.generation == policy.generation);
                }
            })
            .build_with_hasher(RandomState::default());
        Self {
            index,
            policy,
            generations: Arc::default(),
            max_ttl: config.max_ttl,
        }
    }

    /// The value when present, unexpired and stored as `Option<T>`.
    pub(crate) fn get<T: Clone + 'static>(&self, key: &str) -> Option<Option<T>> {
        let value = {
            let slot = self.index.get(key)?;
            if slot.expires_ms <= clock::now_ms() {
                return None;
            }
            slot.value.downcast_ref::<Option<T>>()?.clone()
        };
        let sampled = READS.with(|reads| {
            let n = reads.get().wrapping_add(1);
            reads.set(n);
            n.is_multiple_of(POLICY_SAMPLE)
        });
        if sampled {
            self.policy.get(key);
        }
        Some(value)
    }

    /// Stores `value` for at most `remaining` (the value's time left in Redis) and `max_ttl`.
    /// `written` is the fingerprint of the stored bytes it was decoded from or encoded to.
    pub(crate) fn insert<T: Send + Sync + 'static>(
        &self,
        key: &str,
        value: Option<T>,
        remaining: Duration,
        written: Option<u64>,
    ) {
        let ttl = remaining.min(self.max_ttl);
        if ttl.is_zero() {
            return;
        }
        let generation = self.generations.fetch_add(1, Ordering::Relaxed);
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let slot = Slot {
            value: Arc::new(value),
            expires_ms: clock::now_ms().saturating_add(ttl_ms),
            generation,
            written,
        };
        self.index.insert(key.to_owned(), slot);
        self.policy
            .insert(key.to_owned(), Policy { generation, ttl });
    }

    pub(crate) fn invalidate(&self, key: &str) {
        self.index.remove(key);
        self.policy.invalidate(key);
    }

    /// Drops `key` unless its entry holds the value whose stored bytes have the fingerprint
    /// `written` (the write being announced is the one the entry already has). `None` always
    /// drops. Returns whether the entry was kept.
    pub(crate) fn invalidate_unless_written(&self, key: &str, written: Option<u64>) -> bool {
        let removed = self
            .index
            .remove_if(key, |_, slot| written.is_none() || slot.written != written);
        if removed.is_some() {
            self.policy.invalidate(key);
            return false;
        }
        written.is_some() && self.index.contains_key(key)
    }

    pub(crate) fn invalidate_all(&self) {
        self.index.clear();
        self.policy.invalidate_all();
    }

    pub(crate) fn entry_count(&self) -> u64 {
        self.policy.run_pending_tasks();
        self.index.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_bound_evicts_from_the_index_and_ttl_expires() {
        let l1 = L1::new(&L1Config {
            max_entries: 50,
            max_ttl: Duration::from_secs(60),
        });
        for i in 0..500 {
            l1.insert(&format!("k{i}"), Some(i), Duration::from_secs(60), None);
        }
        assert!(l1.entry_count() <= 60, "{}", l1.entry_count());

        // A fresh L1: a full one may refuse new keys (TinyLFU admission).
        let l1 = L1::new(&L1Config {
            max_entries: 50,
            max_ttl: Duration::from_secs(60),
        });
        l1.insert("short", Some(1u8), Duration::from_millis(20), None);
        assert_eq!(l1.get::<u8>("short"), Some(Some(1)));
        assert_eq!(l1.get::<u16>("short"), None, "another type is a miss");
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(l1.get::<u8>("short"), None);

        l1.insert("neg", None::<u8>, Duration::from_secs(1), None);
        assert_eq!(l1.get::<u8>("neg"), Some(None));
        l1.invalidate("neg");
        assert_eq!(l1.get::<u8>("neg"), None);
        // Replacing a key keeps the new value even when moka drops the old one.
        l1.insert("r", Some(1u8), Duration::from_secs(60), None);
        l1.insert("r", Some(2u8), Duration::from_secs(60), None);
        l1.policy.run_pending_tasks();
        assert_eq!(l1.get::<u8>("r"), Some(Some(2)));
        l1.invalidate_all();
        assert_eq!(l1.get::<u8>("r"), None);
    }

    #[test]
    fn an_invalidation_for_the_held_value_keeps_it() {
        let l1 = L1::new(&L1Config::default());
        let ttl = Duration::from_secs(60);
        l1.insert("k", Some(1u8), ttl, Some(11));
        // The write that stored these bytes: the entry is that write's value.
        assert!(l1.invalidate_unless_written("k", Some(11)));
        assert_eq!(l1.get::<u8>("k"), Some(Some(1)));
        // Another write, or a delete: dropped.
        assert!(!l1.invalidate_unless_written("k", Some(12)));
        assert_eq!(l1.get::<u8>("k"), None);
        l1.insert("k", Some(1u8), ttl, Some(11));
        assert!(!l1.invalidate_unless_written("k", None));
        assert_eq!(l1.get::<u8>("k"), None);
        // An entry of unknown origin is dropped by any invalidation.
        l1.insert("k", Some(1u8), ttl, None);
        assert!(!l1.invalidate_unless_written("k", Some(11)));
        assert_eq!(l1.get::<u8>("k"), None);
        // Nothing held: nothing kept.
        assert!(!l1.invalidate_unless_written("absent", Some(11)));
    }
}
