//! `MemoryStore`: sessions in this process, in a sharded hash map.
//!
//! Each shard is a plain `HashMap` behind its own lock; a request's load and check-and-set
//! are one hash lookup each under that lock, and a save updates the entry in place. Expiry
//! is checked on every access (an expired entry is removed when met), and the shards are
//! swept of expired entries as they grow, so the work of expiring is spread over creations
//! instead of bookkept on every read as a general-purpose cache would.

use std::collections::HashMap;
use std::collections::hash_map::Entry as MapEntry;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;

use super::{SaveOutcome, SessionStore, Stored};
use crate::error::StoreError;
use crate::id::StoreKey;
use crate::record::{FieldChanges, SessionRecord};

/// Sessions kept in this process, for development, tests and single-instance services.
///
/// Each session expires at its own TTL. The store holds at most `max_capacity` sessions:
/// when a new session would go past that, expired sessions are dropped first, then the
/// sessions closest to expiring (the ones idle longest under a rolling expiry); their users
/// get a fresh session. The limit is kept per shard (`max_capacity` split evenly), and a full
/// shard evicts an eighth of its sessions at once, so the selection cost is spread over many
/// new sessions. Sessions are not shared between processes or kept across restarts;
/// use [`RedisStore`](crate::RedisStore) for that. Cloning shares the same sessions.
#[derive(Debug, Clone)]
pub struct MemoryStore {
    shards: Arc<Shards>,
}

#[derive(Debug)]
struct Shards {
    shards: Box<[Mutex<Shard>]>,
    /// Sessions each shard may hold (`max_capacity` split evenly).
    shard_capacity: usize,
    /// Stands in for a saving request's reference to the stored record while the record is
    /// changed in place (see [`MemoryStore::save_changes_entry`]).
    placeholder: Arc<SessionRecord>,
}

type Map = HashMap<StoreKey, Entry, BuildHasherDefault<StoreKeyHasher>>;

#[derive(Debug, Default)]
struct Shard {
    map: Map,
    /// Size at which the next creation first sweeps expired entries out (twice the size left
    /// after the last sweep), so sweeping costs O(1) per creation on average.
    sweep_at: usize,
}

#[derive(Debug)]
struct Entry {
    record: Arc<SessionRecord>,
    version: u64,
    expires_at: Instant,
}

impl Entry {
    /// Whether the entry has time left (a comparison: cheaper than computing how much).
    fn is_live(&self, now: Instant) -> bool {
        self.expires_at > now
    }

    fn stored(&self, now: Instant) -> Option<Stored> {
        self.is_live(now).then(|| Stored {
            record: Arc::clone(&self.record),
            version: self.version,
            ttl: self.expires_at.saturating_duration_since(now),
            lease: None,
        })
    }
}

/// Smallest `sweep_at`: sweeping a handful of entries is not worth a pass of its own.
const MIN_SWEEP_AT: usize = 64;
/// Largest number of shards; fewer for small capacities so each shard holds a fair share.
const MAX_SHARDS: usize = 64;
/// Sessions per shard below which fewer shards are used.
const MIN_SHARD_CAPACITY: u64 = 1024;

impl Shard {
    /// The live entry under `key`, removing it if it has expired.
    fn live_mut(&mut self, key: &StoreKey, now: Instant) -> Option<&mut Entry> {
        match self.map.entry(*key) {
            MapEntry::Occupied(slot) if slot.get().is_live(now) => Some(slot.into_mut()),
            MapEntry::Occupied(slot) => {
                slot.remove();
                None
            }
            MapEntry::Vacant(_) => None,
        }
    }

    /// The live entry under `key` if it is still at `version`; otherwise what a check-and-set
    /// save answers: the current session ([`SaveOutcome::Conflict`]) or [`SaveOutcome::Gone`].
    fn at_version(
        &mut self,
        key: &StoreKey,
        version: u64,
        now: Instant,
    ) -> Result<&mut Entry, SaveOutcome> {
        let entry = self.live_mut(key, now).ok_or(SaveOutcome::Gone)?;
        if entry.version == version {
            return Ok(entry);
        }
        Err(match entry.stored(now) {
            Some(current) => SaveOutcome::Conflict(current),
            None => SaveOutcome::Gone,
        })
    }

    /// Makes room for one more session: sweeps expired entries when the shard has grown
    /// enough since the last sweep, and at capacity evicts the entries closest to expiring.
    fn make_room(&mut self, capacity: usize, now: Instant) {
        if self.map.len() >= self.sweep_at.max(MIN_SWEEP_AT) || self.map.len() >= capacity {
            self.map.retain(|_, entry| entry.is_live(now));
            self.sweep_at = self.map.len().saturating_mul(2);
        }
        if self.map.len() < capacity {
            return;
        }
        // Evict an eighth at once so the next creations find room without another pass.
        let evict = (self.map.len() / 8).max(self.map.len() + 1 - capacity);
        let mut expiries: Vec<Instant> = self.map.values().map(|e| e.expires_at).collect();
        let Some(index) = evict.checked_sub(1) else {
            return;
        };
        let (_, threshold, _) = expiries.select_nth_unstable(index);
        let threshold = *threshold;
        let mut left = evict;
        self.map.retain(|_, entry| {
            if left > 0 && entry.expires_at <= threshold {
                left -= 1;
                false
            } else {
                true
            }
        });
    }
}

/// `now + ttl`, saturating far in the future instead of overflowing `Instant`.
fn deadline(now: Instant, ttl: Duration) -> Instant {
    now.checked_add(ttl)
        .or_else(|| now.checked_add(Duration::from_secs(u64::from(u32::MAX))))
        .unwrap_or(now)
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

    /// A store holding at most `max_capacity` sessions (at least one).
    pub fn with_max_capacity(max_capacity: u64) -> Self {
        let max_capacity = max_capacity.max(1);
        let shards = usize::try_from(max_capacity / MIN_SHARD_CAPACITY)
            .unwrap_or(usize::MAX)
            .clamp(1, MAX_SHARDS);
        // A power of two, so a key picks its shard with a mask.
        let shards = if shards.is_power_of_two() {
            shards
        } else {
            shards.next_power_of_two() / 2
        };
        let shard_capacity = usize::try_from(max_capacity / shards as u64).unwrap_or(usize::MAX);
        Self {
            shards: Arc::new(Shards {
                shards: (0..shards).map(|_| Mutex::default()).collect(),
                shard_capacity,
                placeholder: Arc::new(SessionRecord::placeholder()),
            }),
        }
    }

    /// Sessions currently held (expired ones are dropped first, so the count is exact).
    pub fn len(&self) -> u64 {
        let now = Instant::now();
        self.shards
            .shards
            .iter()
            .map(|shard| {
                let mut shard = shard.lock();
                shard.map.retain(|_, entry| entry.is_live(now));
                shard.map.len() as u64
            })
            .sum()
    }

    /// Whether no session is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The shard `key` lives in. The map hashes the key's first 8 bytes; the shard comes
    /// from the next 8, so the two stay independent.
    fn shard(&self, key: &StoreKey) -> parking_lot::MutexGuard<'_, Shard> {
        let bytes = key.as_bytes();
        let mut word = [0_u8; 8];
        if let Some(source) = bytes.get(8..16) {
            word.copy_from_slice(source);
        }
        let mask = self.shards.shards.len() - 1;
        let index = usize::try_from(u64::from_le_bytes(word)).unwrap_or_default() & mask;
        // The mask keeps the index in range (the shard count is a power of two).
        self.shards.shards[index].lock()
    }

    /// [`SessionStore::load`] answered in place (the layer calls this directly: no future).
    pub(crate) fn load_entry(&self, key: &StoreKey) -> Option<Stored> {
        let now = Instant::now();
        self.shard(key).live_mut(key, now)?.stored(now)
    }

    /// Check-and-set, replacing the record in place.
    fn save_entry(
        &self,
        key: &StoreKey,
        expected_version: u64,
        record: Arc<SessionRecord>,
        ttl: Duration,
    ) -> SaveOutcome {
        let now = Instant::now();
        let mut shard = self.shard(key);
        let entry = match shard.at_version(key, expected_version, now) {
            Ok(entry) => entry,
            Err(outcome) => return outcome,
        };
        let version = expected_version.saturating_add(1);
        entry.record = record;
        entry.version = version;
        entry.expires_at = deadline(now, ttl);
        SaveOutcome::Saved { version }
    }

    /// [`SessionStore::save_changes`] answered in place: a field-level check-and-set that
    /// changes the stored record in place (the layer calls this directly: no future).
    pub(crate) fn save_changes_entry(
        &self,
        key: &StoreKey,
        loaded: &mut Stored,
        changes: &mut FieldChanges,
        ttl: Duration,
    ) -> SaveOutcome {
        let now = Instant::now();
        let mut shard = self.shard(key);
        let entry = match shard.at_version(key, loaded.version, now) {
            Ok(entry) => entry,
            Err(outcome) => return outcome,
        };
        // Same version, so the request holds the stored record itself: let go of that
        // reference, and the entry's is normally the only one left and the record changes in
        // place (no copy, no new allocation). Another request still reading it gets a copy
        // changed instead (`make_mut`), and keeps its own snapshot.
        drop(std::mem::replace(
            &mut loaded.record,
            Arc::clone(&self.shards.placeholder),
        ));
        changes.apply_to(Arc::make_mut(&mut entry.record));
        let version = entry.version.saturating_add(1);
        entry.version = version;
        entry.expires_at = deadline(now, ttl);
        loaded.record = Arc::clone(&entry.record);
        loaded.version = version;
        loaded.ttl = ttl;
        SaveOutcome::Saved { version }
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
        let entry = Entry {
            record,
            version: 1,
            expires_at: deadline(now, ttl),
        };
        let capacity = self.shards.shard_capacity;
        let mut shard = self.shard(key);
        if shard.live_mut(key, now).is_some() {
            return Ok(false);
        }
        shard.make_room(capacity, now);
        shard.map.insert(*key, entry);
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
        Ok(self.save_entry(key, expected_version, record, ttl))
    }

    async fn save_changes(
        &self,
        key: &StoreKey,
        loaded: &mut Stored,
        changes: &mut FieldChanges,
        ttl: Duration,
    ) -> Result<SaveOutcome, StoreError> {
        Ok(self.save_changes_entry(key, loaded, changes, ttl))
    }

    async fn delete(&self, key: &StoreKey) -> Result<(), StoreError> {
        self.shard(key).map.remove(key);
        Ok(())
    }

    async fn touch(&self, key: &StoreKey, ttl: Duration) -> Result<bool, StoreError> {
        let now = Instant::now();
        let mut shard = self.shard(key);
        let Some(entry) = shard.live_mut(key, now) else {
            return Ok(false);
        };
        entry.expires_at = deadline(now, ttl);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::value::RawValue;

    use super::*;
    use crate::id::SessionIdGenerator;

    fn key(seed: u64) -> StoreKey {
        SessionIdGenerator::seeded(seed)
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

    fn changes(pairs: &[(&str, Option<&str>)]) -> FieldChanges {
        let mut changes = FieldChanges::default();
        for (name, value) in pairs {
            let value = value.map(|v| RawValue::from_string(v.to_owned()).unwrap());
            changes.fields.insert((*name).to_owned(), value);
        }
        changes
    }

    fn texts(record: &SessionRecord) -> Vec<(String, String)> {
        record
            .fields()
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
            .collect()
    }

    #[tokio::test]
    async fn the_layer_reads_and_saves_in_place() {
        let store = MemoryStore::new();
        let key = key(5);
        let ttl = Duration::from_secs(60);
        let record = Arc::new(SessionRecord::new(None));
        assert!(store.load_entry(&key).is_none());
        store.create(&key, Arc::clone(&record), ttl).await.unwrap();
        drop(record);
        let mut loaded = store.load_entry(&key).unwrap();
        assert_eq!(loaded.version, 1);
        let stale = loaded.clone();
        let mut change = changes(&[("n", Some("1"))]);
        let saved = store.save_changes_entry(&key, &mut loaded, &mut change, ttl);
        assert!(matches!(saved, SaveOutcome::Saved { version: 2 }));
        assert!(change.is_empty(), "a save consumes the changes");
        assert_eq!(loaded.version, 2);
        assert_eq!(texts(&loaded.record), [("n".into(), "1".into())]);

        // A save from the old version conflicts and changes nothing on either side.
        let mut stale_loaded = stale.clone();
        let mut change = changes(&[("n", Some("7"))]);
        let conflict = store.save_changes_entry(&key, &mut stale_loaded, &mut change, ttl);
        assert!(matches!(conflict, SaveOutcome::Conflict(s) if s.version == 2));
        assert_eq!(stale_loaded.version, 1);
        assert!(Arc::ptr_eq(&stale_loaded.record, &stale.record));
        assert_eq!(change.iter().collect::<Vec<_>>(), [("n", Some("7"))]);
        let now = store.load_entry(&key).unwrap();
        assert_eq!(texts(&now.record), [("n".into(), "1".into())]);

        store.delete(&key).await.unwrap();
        let gone = store.save_changes_entry(&key, &mut loaded, &mut change, ttl);
        assert!(matches!(gone, SaveOutcome::Gone));
        assert_eq!(change.iter().count(), 1, "changes kept when not saved");
        assert!(store.load_entry(&key).is_none());
    }

    #[tokio::test]
    async fn field_saves_change_the_record_in_place_unless_someone_reads_it() {
        let store = MemoryStore::new();
        let key = key(6);
        let ttl = Duration::from_secs(60);
        store
            .create(&key, Arc::new(SessionRecord::new(None)), ttl)
            .await
            .unwrap();
        let mut loaded = store.load_entry(&key).unwrap();
        let mut first = changes(&[("a", Some("1")), ("b", Some("2"))]);
        store.save_changes_entry(&key, &mut loaded, &mut first, ttl);
        let before = Arc::as_ptr(&loaded.record);

        // Only this request holds it: changed in place.
        let mut second = changes(&[("a", Some("10")), ("b", None), ("c", Some("3"))]);
        store.save_changes_entry(&key, &mut loaded, &mut second, ttl);
        assert_eq!(Arc::as_ptr(&loaded.record), before);
        assert_eq!(
            texts(&loaded.record),
            [("a".into(), "10".into()), ("c".into(), "3".into())]
        );

        // Another request still reads the stored record: it keeps its snapshot.
        let reader = store.load_entry(&key).unwrap();
        let mut third = changes(&[("a", Some("11"))]);
        third.cleared = true;
        store.save_changes_entry(&key, &mut loaded, &mut third, ttl);
        assert!(!Arc::ptr_eq(&loaded.record, &reader.record));
        assert_eq!(texts(&loaded.record), [("a".into(), "11".into())]);
        assert_eq!(
            texts(&reader.record),
            [("a".into(), "10".into()), ("c".into(), "3".into())]
        );
        let stored = store.load(&key).await.unwrap().unwrap();
        assert_eq!(stored.version, 4);
        assert_eq!(texts(&stored.record), [("a".into(), "11".into())]);
    }

    #[tokio::test]
    async fn stale_saves_see_deletes_and_conflicts() {
        let store = MemoryStore::new();
        let key = key(4);
        let ttl = Duration::from_secs(60);
        let record = Arc::new(SessionRecord::new(None));
        store.create(&key, Arc::clone(&record), ttl).await.unwrap();
        let first = store.load(&key).await.unwrap().unwrap();
        let second = store.load(&key).await.unwrap().unwrap();
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
            other => panic!("a stale save must conflict, got {other:?}"),
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

    #[tokio::test]
    async fn at_capacity_the_sessions_closest_to_expiry_go_first() {
        let store = MemoryStore::with_max_capacity(4);
        let record = Arc::new(SessionRecord::new(None));
        let keys: Vec<StoreKey> = (10..14).map(key).collect();
        for (i, key) in keys.iter().enumerate() {
            let ttl = Duration::from_secs(60 + i as u64);
            assert!(store.create(key, Arc::clone(&record), ttl).await.unwrap());
        }
        assert_eq!(store.len(), 4);
        // The first session is used again: its expiry moves past every other one.
        assert!(
            store
                .touch(&keys[0], Duration::from_secs(600))
                .await
                .unwrap()
        );
        let newcomer = key(20);
        let ttl = Duration::from_secs(60);
        assert!(
            store
                .create(&newcomer, Arc::clone(&record), ttl)
                .await
                .unwrap()
        );
        assert_eq!(store.len(), 4, "never more than max_capacity");
        assert!(store.load(&newcomer).await.unwrap().is_some());
        assert!(
            store.load(&keys[0]).await.unwrap().is_some(),
            "recently used stays"
        );
        assert!(
            store.load(&keys[1]).await.unwrap().is_none(),
            "closest to expiry goes"
        );
        let evicted_save = store
            .save(&keys[1], 1, Arc::clone(&record), ttl)
            .await
            .unwrap();
        assert!(
            matches!(evicted_save, SaveOutcome::Gone),
            "an evicted session stays gone"
        );
    }

    #[tokio::test]
    async fn expired_sessions_are_swept_and_their_keys_can_be_created_again() {
        let store = MemoryStore::new();
        let record = Arc::new(SessionRecord::new(None));
        for seed in 100..300 {
            let ttl = Duration::from_millis(50);
            store
                .create(&key(seed), Arc::clone(&record), ttl)
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert!(store.is_empty(), "expired sessions are not counted");
        let ttl = Duration::from_secs(60);
        assert!(
            store
                .create(&key(100), Arc::clone(&record), ttl)
                .await
                .unwrap()
        );
        assert_eq!(store.load(&key(100)).await.unwrap().unwrap().version, 1);
        assert_eq!(store.len(), 1);
    }
}
