//! Where sessions live between requests: the [`SessionStore`] trait and its implementations.
//!
//! A store files each session under its [`StoreKey`] (the SHA-256 of the session id, never the
//! id itself) together with a version number. Saves are check-and-set on that version, so the
//! layer can notice a concurrent change, merge and retry instead of overwriting it; a save to a
//! key that is gone fails, so a slow request can never bring back a destroyed session.

use std::any::Any;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::error::StoreError;
use crate::id::StoreKey;
use crate::record::{FieldChanges, SessionRecord};

#[cfg(feature = "memory")]
mod memory;
#[cfg(feature = "redis")]
mod redis;

#[cfg(feature = "memory")]
#[cfg_attr(docsrs, doc(cfg(feature = "memory")))]
pub use memory::MemoryStore;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use redis::{RedisStore, RedisStoreConfig, RedisTlsConfig};

/// A session as a store holds it.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The session's content.
    pub record: Arc<SessionRecord>,
    /// Its version: 1 when created, one more on every save.
    pub version: u64,
    /// How long until the store expires it.
    pub ttl: Duration,
    /// The store's own handle on the session, handed back to
    /// [`SessionStore::save_loaded`] so it can skip a lookup; `None` for stores without one.
    pub lease: Option<Lease>,
}

impl Stored {
    /// A loaded session without a lease.
    pub fn new(record: Arc<SessionRecord>, version: u64, ttl: Duration) -> Self {
        Self {
            record,
            version,
            ttl,
            lease: None,
        }
    }
}

/// A store's handle on a session it loaded, opaque to the layer; for stores of your own (the
/// bundled stores do not use one).
#[derive(Clone)]
pub struct Lease(Arc<dyn Any + Send + Sync>);

impl Lease {
    /// Wraps a store's handle.
    pub fn new<T: Any + Send + Sync>(handle: Arc<T>) -> Self {
        Self(handle)
    }

    /// The handle, if it is a `T`.
    pub fn downcast<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        Arc::clone(&self.0).downcast().ok()
    }
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Lease")
    }
}

/// What a check-and-set [`SessionStore::save`] did.
#[derive(Debug, Clone)]
pub enum SaveOutcome {
    /// Written; the session now has this version.
    Saved {
        /// The new version (`expected_version + 1`).
        version: u64,
    },
    /// Not written: another save changed the session first. Carries what is stored now, so
    /// the caller can merge without another round trip.
    Conflict(Stored),
    /// Not written: the session no longer exists (destroyed, cycled or expired).
    Gone,
}

/// Storage for sessions. Object safe: the layer holds an `Arc<dyn SessionStore>`.
///
/// Every operation is one `async fn` (through [`async_trait`](https://docs.rs/async-trait)):
/// implement them with `#[async_trait]` and call them with `.await`, whatever the store.
/// Implementations must make [`create`](Self::create) and [`save`](Self::save) atomic per key
/// (a Lua script in Redis, an entry lock in memory) and apply the TTL they are given.
///
/// The layer awaits these futures for every store but one: the bundled
/// [`MemoryStore`](crate::MemoryStore), which it recognizes (hence the [`Any`] bound) and reads
/// and saves in place on the request path, with no boxed future and no copy of the record. A
/// wrapper around a `MemoryStore` is awaited like any other store.
#[async_trait]
pub trait SessionStore: Any + Send + Sync + fmt::Debug {
    /// Short name for metrics labels and errors, e.g. `"redis"`.
    fn name(&self) -> &'static str;

    /// Stores a new session as version 1 unless `key` already exists (NX). Returns whether
    /// it was created.
    async fn create(
        &self,
        key: &StoreKey,
        record: Arc<SessionRecord>,
        ttl: Duration,
    ) -> Result<bool, StoreError>;

    /// Reads a session; `None` if absent or expired. The layer calls it the first time a
    /// request's handler needs the session, at most once per request.
    async fn load(&self, key: &StoreKey) -> Result<Option<Stored>, StoreError>;

    /// Replaces the session if its version is still `expected_version`, as version
    /// `expected_version + 1` with expiry `ttl` from now.
    async fn save(
        &self,
        key: &StoreKey,
        expected_version: u64,
        record: Arc<SessionRecord>,
        ttl: Duration,
    ) -> Result<SaveOutcome, StoreError>;

    /// [`save`](Self::save) of a session this store loaded as `loaded` (checked against
    /// `loaded.version`). Stores that hand out a [`Lease`] override it to use the lease instead
    /// of looking the key up again; the default calls `save`.
    async fn save_loaded(
        &self,
        key: &StoreKey,
        loaded: &Stored,
        record: Arc<SessionRecord>,
        ttl: Duration,
    ) -> Result<SaveOutcome, StoreError> {
        self.save(key, loaded.version, record, ttl).await
    }

    /// A check-and-set save given as field changes, the way the layer saves an existing
    /// session: if the session is still at `loaded.version`, applies `changes` to it and stores
    /// it as the next version with expiry `ttl` from now. On [`SaveOutcome::Saved`], `loaded`
    /// becomes what is stored now and `changes` is left empty; on any other outcome or error
    /// both are left as they were, so the caller can merge and retry.
    ///
    /// The default builds the whole new record (a copy of `loaded.record` with the changes
    /// applied) and calls [`save_loaded`](Self::save_loaded), which keeps the store's own
    /// check-and-set (the Redis store's versioned script) as it is. A store that keeps records
    /// in process can instead change the stored record in place.
    async fn save_changes(
        &self,
        key: &StoreKey,
        loaded: &mut Stored,
        changes: &mut FieldChanges,
        ttl: Duration,
    ) -> Result<SaveOutcome, StoreError> {
        let record = Arc::new(changes.applied_to(&loaded.record));
        let outcome = self
            .save_loaded(key, loaded, Arc::clone(&record), ttl)
            .await?;
        if let SaveOutcome::Saved { version } = outcome {
            loaded.record = record;
            loaded.version = version;
            loaded.ttl = ttl;
            changes.clear();
        }
        Ok(outcome)
    }

    /// Removes a session; removing an absent one is not an error.
    async fn delete(&self, key: &StoreKey) -> Result<(), StoreError>;

    /// Sets the expiry of an existing session to `ttl` from now without changing it. Returns
    /// `false` if the session is gone (it is not recreated).
    async fn touch(&self, key: &StoreKey, ttl: Duration) -> Result<bool, StoreError>;
}

#[async_trait]
impl<T: SessionStore + ?Sized> SessionStore for Arc<T> {
    fn name(&self) -> &'static str {
        (**self).name()
    }

    async fn create(
        &self,
        key: &StoreKey,
        record: Arc<SessionRecord>,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        (**self).create(key, record, ttl).await
    }

    async fn load(&self, key: &StoreKey) -> Result<Option<Stored>, StoreError> {
        (**self).load(key).await
    }

    async fn save(
        &self,
        key: &StoreKey,
        expected_version: u64,
        record: Arc<SessionRecord>,
        ttl: Duration,
    ) -> Result<SaveOutcome, StoreError> {
        (**self).save(key, expected_version, record, ttl).await
    }

    async fn save_loaded(
        &self,
        key: &StoreKey,
        loaded: &Stored,
        record: Arc<SessionRecord>,
        ttl: Duration,
    ) -> Result<SaveOutcome, StoreError> {
        (**self).save_loaded(key, loaded, record, ttl).await
    }

    async fn save_changes(
        &self,
        key: &StoreKey,
        loaded: &mut Stored,
        changes: &mut FieldChanges,
        ttl: Duration,
    ) -> Result<SaveOutcome, StoreError> {
        (**self).save_changes(key, loaded, changes, ttl).await
    }

    async fn delete(&self, key: &StoreKey) -> Result<(), StoreError> {
        (**self).delete(key).await
    }

    async fn touch(&self, key: &StoreKey, ttl: Duration) -> Result<bool, StoreError> {
        (**self).touch(key, ttl).await
    }
}
