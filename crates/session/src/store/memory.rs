//! `MemoryStore`: sessions in this process, on a moka cache.
//!
//! moka holds one slot per session and does eviction (capacity) and expiry; the session itself
//! sits behind a small lock in its slot, so the per-request check-and-set is a cache read plus
//! a lock, not a cache write (moka's write path is far slower than its read path).

use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use moka::Expiry;
use moka::sync::Cache;
use parking_lot::Mutex;

use super::{Lease, SaveOutcome, SessionStore, Stored};
use crate::error::StoreError;
use crate::id::StoreKey;
use crate::record::SessionRecord;

/// Sessions kept in this process, for development, tests and single-instance services.
///
/// Built on a bounded moka cache: each session expires at its own TTL, and past
/// `max_capacity` sessions the least useful ones are evicted (their users get a fresh
/// session). Sessions are not shared between processes or kept across restarts; use
/// [`RedisStore`](crate::RedisStore) for that. Cloning shares the same sessions.
#[derive(Debug, Clone)]
pub struct MemoryStore {
    cache: Cache<StoreKey, Arc<Slot>, BuildHasherDefault<StoreKeyHasher>>,
}

/// One session's place in the cache. `None` once deleted, so a request still holding the slot
/// sees the session as gone.
#[derive(Debug, Default)]
struct Slot(Mutex<Option<Entry>>);

#[derive(Debug, Clone)]
struct Entry {
    record: Arc<SessionRecord>,
    version: u64,
    expires_at: Instant,
    /// The TTL last given; moka keeps the slot at least this long after each read.
    ttl: Duration,
}

impl Entry {
    fn new(record: Arc<SessionRecord>, version: u64, now: Instant, ttl: Duration) -> Self {
        Self {
            record,
            version,
            expires_at: now + ttl,
            ttl,
        }
    }

    fn live(&self, now: Instant) -> Option<Duration> {
        self.expires_at
            .checked_duration_since(now)
            .filter(|left| !left.is_zero())
    }
}

impl Slot {
    /// The live entry, clearing an expired one.
    fn live(&self, now: Instant) -> Option<parking_lot::MappedMutexGuard<'_, Entry>> {
        let mut guard = self.0.lock();
        if guard
            .as_ref()
            .is_some_and(|entry| entry.live(now).is_none())
        {
            *guard = None;
        }
        parking_lot::MutexGuard::try_map(guard, Option::as_mut).ok()
    }

    /// Time until moka may drop the slot: never before the session expires, and after a read
    /// at least one more TTL (a save right after the read moves the expiry by about that).
    fn keep_for(&self, now: Instant, after_read: bool) -> Option<Duration> {
        let guard = self.0.lock();
        let entry = guard.as_ref()?;
        let left = entry.expires_at.saturating_duration_since(now);
        Some(if after_read {
            left.max(entry.ttl)
        } else {
            left
        })
    }
}

/// Tells moka how long to keep each slot (see [`Slot::keep_for`]).
struct SlotExpiry;

impl Expiry<StoreKey, Arc<Slot>> for SlotExpiry {
    fn expire_after_create(
        &self,
        _: &StoreKey,
        slot: &Arc<Slot>,
        now: Instant,
    ) -> Option<Duration> {
        Some(slot.keep_for(now, false).unwrap_or(Duration::ZERO))
    }

    fn expire_after_read(
        &self,
        _: &StoreKey,
        slot: &Arc<Slot>,
        now: Instant,
        _: Option<Duration>,
        _: Instant,
    ) -> Option<Duration> {
        Some(slot.keep_for(now, true).unwrap_or(Duration::ZERO))
    }

    fn expire_after_update(
        &self,
        _: &StoreKey,
        slot: &Arc<Slot>,
        now: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(slot.keep_for(now, false).unwrap_or(Duration::ZERO))
    }
}

/// A [`StoreKey`] is already a SHA-256 of a random id: its first bytes are a good hash, and
/// SipHash over all 32 bytes would only cost time. (Keys are never chosen by clients: an
/// unknown cookie id only ever looks up, never inserts.)
#[derive(Debug, Default)]
struct StoreKeyHasher(u64);

impl Hasher for StoreKeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not used by `StoreKey` (which writes one u64); FNV-1a keeps other input correct.
        for byte in bytes {
            self.0 = (self.0 ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 ^= value;
    }
}

impl MemoryStore {
    /// Default bound on the number of sessions kept.
    pub const DEFAULT_MAX_CAPACITY: u64 = 100_000;

    /// A store holding at most [`DEFAULT_MAX_CAPACITY`](Self::DEFAULT_MAX_CAPACITY) sessions.
    pub fn new() -> Self {
        Self::with_max_capacity(Self::DEFAULT_MAX_CAPACITY)
    }

    /// A store holding at most `max_capacity` sessions.
    pub fn with_max_capacity(max_capacity: u64) -> Self {
        Self {
            cache: Cache::builder()
                .name("herd-session")
                .max_capacity(max_capacity)
                .expire_after(SlotExpiry)
                // A slot moka drops (capacity, expiry) is emptied, so a request that still
                // holds it from its load finds the session gone instead of saving into a void.
                .eviction_listener(|_, slot: Arc<Slot>, _| *slot.0.lock() = None)
                .build_with_hasher(BuildHasherDefault::default()),
        }
    }

    /// Sessions currently held (approximate: moka applies evictions and expiries lazily).
    pub fn len(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
    }

    /// Whether no session is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Check-and-set on one slot.
    fn save_in(
        &self,
        key: &StoreKey,
        slot: &Slot,
        expected_version: u64,
        record: Arc<SessionRecord>,
        ttl: Duration,
    ) -> SaveOutcome {
        let now = Instant::now();
        let Some(mut entry) = slot.live(now) else {
            return SaveOutcome::Gone;
        };
        if entry.version != expected_version {
            return SaveOutcome::Conflict(Stored {
                record: Arc::clone(&entry.record),
                version: entry.version,
                ttl: entry.live(now).unwrap_or(Duration::from_millis(1)),
                lease: None,
            });
        }
        let version = expected_version.saturating_add(1);
        let old_ttl = entry.ttl;
        *entry = Entry::new(record, version, now, ttl);
        drop(entry);
        self.refresh_expiry(key, old_ttl, ttl);
        SaveOutcome::Saved { version }
    }

    /// The live session under `key`, with its slot as the lease.
    fn load_entry(&self, key: &StoreKey) -> Option<Stored> {
        let slot = self.cache.get(key)?;
        let now = Instant::now();
        let entry = slot.live(now)?;
        let stored = entry.live(now).map(|ttl| Stored {
            record: Arc::clone(&entry.record),
            version: entry.version,
            ttl,
            lease: None,
        });
        drop(entry);
        stored.map(|stored| Stored {
            lease: Some(Lease::new(slot)),
            ..stored
        })
    }

    /// Check-and-set of a session this store loaded.
    fn save_loaded_entry(
        &self,
        key: &StoreKey,
        loaded: &Stored,
        record: Arc<SessionRecord>,
        ttl: Duration,
    ) -> SaveOutcome {
        // The slot from `load` skips a second cache lookup; a deleted or evicted slot is
        // emptied, so this still finds such a session gone.
        let slot = match loaded.lease.as_ref().and_then(Lease::downcast::<Slot>) {
            Some(slot) => slot,
            None => match self.cache.get(key) {
                Some(slot) => slot,
                None => return SaveOutcome::Gone,
            },
        };
        self.save_in(key, &slot, loaded.version, record, ttl)
    }

    /// Makes moka re-read the slot's expiry after it was extended beyond what moka assumed.
    fn refresh_expiry(&self, key: &StoreKey, old_ttl: Duration, new_ttl: Duration) {
        if new_ttl > old_ttl {
            let _ = self.cache.get(key);
        }
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl SessionStore for MemoryStore {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn create(
        &self,
        key: &StoreKey,
        record: Arc<SessionRecord>,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let now = Instant::now();
        let entry = Entry::new(record, 1, now, ttl);
        let slot = self
            .cache
            .entry(*key)
            .or_insert_with(|| Arc::new(Slot(Mutex::new(Some(entry.clone())))));
        if slot.is_fresh() {
            return Ok(true);
        }
        // An existing slot may hold an expired or deleted session: reuse it under its lock.
        let mut guard = slot.value().0.lock();
        if guard.as_ref().is_some_and(|e| e.live(now).is_some()) {
            return Ok(false);
        }
        let old_ttl = guard.as_ref().map_or(Duration::ZERO, |e| e.ttl);
        *guard = Some(entry);
        drop(guard);
        self.refresh_expiry(key, old_ttl, ttl);
        Ok(true)
    }

    async fn load(&self, key: &StoreKey) -> Result<Option<Stored>, StoreError> {
        Ok(self.load_entry(key))
    }

    async fn save(
        &self,
        key: &StoreKey,
        expected_version: u64,
        record: Arc<SessionRecord>,
        ttl: Duration,
    ) -> Result<SaveOutcome, StoreError> {
        let Some(slot) = self.cache.get(key) else {
            return Ok(SaveOutcome::Gone);
        };
        Ok(self.save_in(key, &slot, expected_version, record, ttl))
    }

    async fn save_loaded(
        &self,
        key: &StoreKey,
        loaded: &Stored,
        record: Arc<SessionRecord>,
        ttl: Duration,
    ) -> Result<SaveOutcome, StoreError> {
        Ok(self.save_loaded_entry(key, loaded, record, ttl))
    }

    fn load_now(&self, key: &StoreKey) -> Option<Result<Option<Stored>, StoreError>> {
        Some(Ok(self.load_entry(key)))
    }

    fn save_loaded_now(
        &self,
        key: &StoreKey,
        loaded: &Stored,
        record: &Arc<SessionRecord>,
        ttl: Duration,
    ) -> Option<Result<SaveOutcome, StoreError>> {
        Some(Ok(self.save_loaded_entry(
            key,
            loaded,
            Arc::clone(record),
            ttl,
        )))
    }

    async fn delete(&self, key: &StoreKey) -> Result<(), StoreError> {
        if let Some(slot) = self.cache.remove(key) {
            *slot.0.lock() = None;
        }
        Ok(())
    }

    async fn touch(&self, key: &StoreKey, ttl: Duration) -> Result<bool, StoreError> {
        let Some(slot) = self.cache.get(key) else {
            return Ok(false);
        };
        let now = Instant::now();
        let Some(mut entry) = slot.live(now) else {
            return Ok(false);
        };
        let old_ttl = entry.ttl;
        entry.expires_at = now + ttl;
        entry.ttl = ttl;
        drop(entry);
        self.refresh_expiry(key, old_ttl, ttl);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::SessionIdGenerator;

    fn key(seed: u64) -> StoreKey {
        SessionIdGenerator::from_seed(seed)
            .generate()
            .unwrap()
            .store_key()
    }

    #[tokio::test]
    async fn create_is_nx_and_save_is_check_and_set() {
        let store = MemoryStore::new();
        let key = key(1);
        let ttl = Duration::from_secs(60);
        let record = Arc::new(SessionRecord::new(None));
        assert!(store.create(&key, Arc::clone(&record), ttl).await.unwrap());
        assert!(!store.create(&key, Arc::clone(&record), ttl).await.unwrap());
        assert_eq!(store.load(&key).await.unwrap().unwrap().version, 1);

        let saved = store.save(&key, 1, Arc::clone(&record), ttl).await.unwrap();
        assert!(matches!(saved, SaveOutcome::Saved { version: 2 }));
        match store.save(&key, 1, Arc::clone(&record), ttl).await.unwrap() {
            SaveOutcome::Conflict(current) => assert_eq!(current.version, 2),
            other => panic!("expected a conflict, got {other:?}"),
        }

        store.delete(&key).await.unwrap();
        assert!(store.load(&key).await.unwrap().is_none());
        assert!(matches!(
            store.save(&key, 2, Arc::clone(&record), ttl).await.unwrap(),
            SaveOutcome::Gone
        ));
        assert!(!store.touch(&key, ttl).await.unwrap());
        assert!(
            store.load(&key).await.unwrap().is_none(),
            "touch or save recreated it"
        );
    }

    #[tokio::test]
    async fn answers_at_once_without_futures() {
        let store = MemoryStore::new();
        let key = key(5);
        let ttl = Duration::from_secs(60);
        let record = Arc::new(SessionRecord::new(None));
        assert!(store.load_now(&key).unwrap().unwrap().is_none());
        store.create(&key, Arc::clone(&record), ttl).await.unwrap();
        let loaded = store.load_now(&key).unwrap().unwrap().unwrap();
        assert_eq!(loaded.version, 1);
        let saved = store.save_loaded_now(&key, &loaded, &record, ttl).unwrap();
        assert!(matches!(saved.unwrap(), SaveOutcome::Saved { version: 2 }));
        let stale = store.save_loaded_now(&key, &loaded, &record, ttl).unwrap();
        assert!(matches!(stale.unwrap(), SaveOutcome::Conflict(s) if s.version == 2));
        store.delete(&key).await.unwrap();
        let gone = store.save_loaded_now(&key, &loaded, &record, ttl).unwrap();
        assert!(matches!(gone.unwrap(), SaveOutcome::Gone));
        assert!(store.load_now(&key).unwrap().unwrap().is_none());
    }

    #[tokio::test]
    async fn saves_through_a_lease_see_deletes_and_conflicts() {
        let store = MemoryStore::new();
        let key = key(4);
        let ttl = Duration::from_secs(60);
        let record = Arc::new(SessionRecord::new(None));
        store.create(&key, Arc::clone(&record), ttl).await.unwrap();
        let first = store.load(&key).await.unwrap().unwrap();
        let second = store.load(&key).await.unwrap().unwrap();
        assert!(first.lease.is_some());
        let saved = store
            .save_loaded(&key, &first, Arc::clone(&record), ttl)
            .await
            .unwrap();
        assert!(matches!(saved, SaveOutcome::Saved { version: 2 }));
        match store
            .save_loaded(&key, &second, Arc::clone(&record), ttl)
            .await
            .unwrap()
        {
            SaveOutcome::Conflict(current) => assert_eq!(current.version, 2),
            other => panic!("stale lease must conflict, got {other:?}"),
        }
        let third = store.load(&key).await.unwrap().unwrap();
        store.delete(&key).await.unwrap();
        assert!(matches!(
            store
                .save_loaded(&key, &third, Arc::clone(&record), ttl)
                .await
                .unwrap(),
            SaveOutcome::Gone
        ));
        assert!(store.load(&key).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn entries_expire_at_their_ttl_and_touch_extends_it() {
        let store = MemoryStore::new();
        let (short, touched) = (key(2), key(3));
        let record = Arc::new(SessionRecord::new(None));
        let ttl = Duration::from_millis(300);
        store
            .create(&short, Arc::clone(&record), ttl)
            .await
            .unwrap();
        store
            .create(&touched, Arc::clone(&record), ttl)
            .await
            .unwrap();
        let loaded = store.load(&short).await.unwrap().unwrap();
        assert!(loaded.ttl <= ttl && loaded.ttl > Duration::from_millis(200));
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(
            store
                .touch(&touched, Duration::from_secs(60))
                .await
                .unwrap()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(store.load(&short).await.unwrap().is_none());
        let kept = store.load(&touched).await.unwrap().unwrap();
        assert!(kept.ttl > Duration::from_secs(59));
        assert_eq!(kept.version, 1, "touch must not change the version");
    }
}
