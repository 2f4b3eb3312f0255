//! `MemoryStore`: sessions in this process, on a moka cache with per-entry expiry.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use moka::Expiry;
use moka::ops::compute::{CompResult, Op};
use moka::sync::Cache;

use super::{SaveOutcome, SessionStore, Stored};
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
    cache: Cache<StoreKey, Entry>,
}

#[derive(Debug, Clone)]
struct Entry {
    record: Arc<SessionRecord>,
    version: u64,
    expires_at: Instant,
}

impl Entry {
    fn stored(&self) -> Option<Stored> {
        let ttl = self.expires_at.checked_duration_since(Instant::now())?;
        Some(Stored {
            record: Arc::clone(&self.record),
            version: self.version,
            ttl,
        })
    }
}

/// Tells moka when each entry expires: at the `expires_at` it carries.
struct EntryExpiry;

impl Expiry<StoreKey, Entry> for EntryExpiry {
    fn expire_after_create(&self, _: &StoreKey, entry: &Entry, now: Instant) -> Option<Duration> {
        Some(entry.expires_at.saturating_duration_since(now))
    }

    fn expire_after_update(
        &self,
        _: &StoreKey,
        entry: &Entry,
        now: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(entry.expires_at.saturating_duration_since(now))
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
                .expire_after(EntryExpiry)
                .build(),
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
        let entry = Entry {
            record,
            version: 1,
            expires_at: Instant::now() + ttl,
        };
        let result = self
            .cache
            .entry(*key)
            .and_compute_with(|current| match current {
                Some(_) => Op::Nop,
                None => Op::Put(entry),
            });
        Ok(matches!(result, CompResult::Inserted(_)))
    }

    async fn load(&self, key: &StoreKey) -> Result<Option<Stored>, StoreError> {
        Ok(self.cache.get(key).and_then(|entry| entry.stored()))
    }

    async fn save(
        &self,
        key: &StoreKey,
        expected_version: u64,
        record: Arc<SessionRecord>,
        ttl: Duration,
    ) -> Result<SaveOutcome, StoreError> {
        let version = expected_version.saturating_add(1);
        let result = self
            .cache
            .entry(*key)
            .and_compute_with(|current| match current {
                Some(current) if current.value().version == expected_version => Op::Put(Entry {
                    record,
                    version,
                    expires_at: Instant::now() + ttl,
                }),
                _ => Op::Nop,
            });
        Ok(match result {
            CompResult::ReplacedWith(_) | CompResult::Inserted(_) => SaveOutcome::Saved { version },
            CompResult::Unchanged(current) => match current.value().stored() {
                Some(stored) => SaveOutcome::Conflict(stored),
                None => SaveOutcome::Gone,
            },
            CompResult::StillNone(_) | CompResult::Removed(_) => SaveOutcome::Gone,
        })
    }

    async fn delete(&self, key: &StoreKey) -> Result<(), StoreError> {
        self.cache.invalidate(key);
        Ok(())
    }

    async fn touch(&self, key: &StoreKey, ttl: Duration) -> Result<bool, StoreError> {
        let result = self
            .cache
            .entry(*key)
            .and_compute_with(|current| match current {
                Some(current) => Op::Put(Entry {
                    expires_at: Instant::now() + ttl,
                    ..current.into_value()
                }),
                None => Op::Nop,
            });
        Ok(matches!(result, CompResult::ReplacedWith(_)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::SessionIdGenerator;

    fn key(seed: u64) -> StoreKey {
        SessionIdGenerator::from_seed(seed).generate().unwrap().store_key()
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
        assert!(store.load(&key).await.unwrap().is_none(), "touch or save recreated it");
    }

    #[tokio::test]
    async fn entries_expire_at_their_ttl_and_touch_extends_it() {
        let store = MemoryStore::new();
        let (short, touched) = (key(2), key(3));
        let record = Arc::new(SessionRecord::new(None));
        let ttl = Duration::from_millis(300);
        store.create(&short, Arc::clone(&record), ttl).await.unwrap();
        store.create(&touched, Arc::clone(&record), ttl).await.unwrap();
        let loaded = store.load(&short).await.unwrap().unwrap();
        assert!(loaded.ttl <= ttl && loaded.ttl > Duration::from_millis(200));
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(store.touch(&touched, Duration::from_secs(60)).await.unwrap());
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(store.load(&short).await.unwrap().is_none());
        let kept = store.load(&touched).await.unwrap().unwrap();
        assert!(kept.ttl > Duration::from_secs(59));
        assert_eq!(kept.version, 1, "touch must not change the version");
    }
}
