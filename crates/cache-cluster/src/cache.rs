//! `Cache`: typed get/set over L1 + backend, single-flight loads, locks, early refresh, fail-open.

use std::any::Any;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{Instrument, Span};

use crate::backend::Backend;
use crate::circuit::{Circuit, Circuits};
use crate::clock::Ticking;
use crate::codec::{self, DecodeError, Header};
use crate::config::CacheConfig;
use crate::error::{BoxError, Error};
use crate::flight::Flights;
use crate::invalidation::{self, Invalidation};
use crate::l1::L1;
use crate::metrics::{
    EARLY_REFRESHES_TOTAL, ERRORS_TOTAL, LOAD_SECONDS, LOCK_WAIT_EXPIRED_TOTAL, LOCK_WAIT_SECONDS,
    op_span, traced, traced_error, traced_node,
};
use crate::stats::{CacheStats, Counters, Outcome, Tier};
use crate::task::AbortOnDrop;

/// A typed cache over a [`Backend`], with an optional L1, one load per key, fail-open behaviour
/// and cross-instance invalidation. Cloning is cheap and shares everything.
///
/// Values are serialized with serde (postcard) behind a small format header: a value written by
/// something else, or by an incompatible version, reads as a miss and counts in
/// `herd_cache_errors_total{kind="decode"}`, never as an error or a panic.
#[derive(Clone, Debug)]
pub struct Cache {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    backend: Backend,
    config: CacheConfig,
    /// `namespace:vVERSION:`
    prefix: String,
    l1: Option<L1>,
    flights: Arc<Flights>,
    refreshing: Mutex<HashSet<String>>,
    circuits: Circuits,
    counters: Counters,
    rng: Mutex<StdRng>,
    /// This instance's id in invalidation messages.
    origin: u64,
    channel: String,
    _invalidation: Option<AbortOnDrop>,
    /// Keeps the L1's coarse clock ticking while this cache lives (with an L1 only).
    _clock: Option<Ticking>,
}

/// Builds a [`Cache`].
#[derive(Debug)]
pub struct CacheBuilder {
    backend: Backend,
    config: CacheConfig,
    seed: Option<u64>,
}

impl CacheBuilder {
    /// Replaces the whole configuration.
    pub fn config(mut self, config: CacheConfig) -> Self {
        self.config = config;
        self
    }

    /// Key prefix; see [`CacheConfig::namespace`].
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.config.namespace = namespace.into();
        self
    }

    /// Schema version in every key; see [`CacheConfig::version`].
    pub fn version(mut self, version: u32) -> Self {
        self.config.version = version;
        self
    }

    /// Turns the L1 off (every read goes to the backend).
    pub fn without_l1(mut self) -> Self {
        self.config.l1 = None;
        self
    }

    /// Seeds the random parts (lock tokens, early-refresh draws, instance id) for deterministic
    /// tests and benchmarks. Without it they come from OS entropy.
    pub fn rng_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Validates the configuration and, when the L1 is on, subscribes to invalidations.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for an unusable namespace or L1 size, [`Error::Backend`] when the
    /// invalidation subscription cannot be made.
    pub async fn build(self) -> Result<Cache, Error> {
        crate::metrics::describe();
        let Self {
            backend,
            config,
            seed,
        } = self;
        if config.namespace.is_empty() || config.namespace.contains(['{', '}', ':']) {
            return Err(Error::InvalidConfig {
                field: "namespace",
                reason: format!(
                    "{:?} must be non-empty without '{{', '}}' or ':'",
                    config.namespace
                ),
            });
        }
        if config.l1.as_ref().is_some_and(|l1| l1.max_entries == 0) {
            return Err(Error::InvalidConfig {
                field: "l1.max_entries",
                reason: "must be at least 1".into(),
            });
        }
        if !config.early_refresh_beta.is_finite() || config.early_refresh_beta < 0.0 {
            return Err(Error::InvalidConfig {
                field: "early_refresh_beta",
                reason: "must be a finite number >= 0".into(),
            });
        }
        let mut rng = match seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => rand::make_rng::<StdRng>(),
        };
        let origin = rng.random::<u64>();
        let prefix = format!("{}:v{}:", config.namespace, config.version);
        let channel = format!("{prefix}invalidate");
        let l1 = config.l1.as_ref().map(L1::new);
        let l1_clock = l1.as_ref().map(|_| Ticking::start());
        let invalidation = match &l1 {
            Some(l1) => {
                let channel = config.invalidation.then_some(channel.as_str());
                Some(invalidation::start(&backend, channel, origin, l1.clone()).await?)
            }
            None => None,
        };
        Ok(Cache {
            inner: Arc::new(Inner {
                circuits: Circuits::new(&config.circuit),
                backend,
                config,
                prefix,
                l1,
                flights: Arc::default(),
                refreshing: Mutex::default(),
                counters: Counters::default(),
                rng: Mutex::new(rng),
                origin,
                channel,
                _invalidation: invalidation,
                _clock: l1_clock,
            }),
        })
    }
}

impl Cache {
    /// A builder over `backend` with [`CacheConfig::default`].
    pub fn builder(backend: Backend) -> CacheBuilder {
        CacheBuilder {
            backend,
            config: CacheConfig::default(),
            seed: None,
        }
    }

    /// A cache over `backend` with `config`.
    ///
    /// # Errors
    /// As [`CacheBuilder::build`].
    pub async fn new(backend: Backend, config: CacheConfig) -> Result<Self, Error> {
        Self::builder(backend).config(config).build().await
    }

    /// The backend.
    pub fn backend(&self) -> &Backend {
        &self.inner.backend
    }

    /// Hit/miss counts and the hit ratio since the cache was built.
    pub fn stats(&self) -> CacheStats {
        self.inner.counters.snapshot()
    }

    /// Whether backend calls are currently skipped after consecutive failures.
    pub fn circuit_open(&self) -> bool {
        self.inner.circuits.any_open()
    }

    /// Number of entries in the L1 (0 without one).
    pub fn l1_entry_count(&self) -> u64 {
        self.inner.l1.as_ref().map_or(0, L1::entry_count)
    }

    /// The backend key of `key`: `namespace:vVERSION:k:key`. A `{hash tag}` in `key` still
    /// chooses the cluster slot, so related keys can be kept together.
    pub fn backend_key(&self, key: &str) -> String {
        self.inner.data_key(key)
    }

    /// The value of `key`, from the L1 or the backend. A missing, stale, undecodable value, or
    /// an unreachable backend, is `None` (fail-open); the metrics say which.
    pub async fn get<T>(&self, key: &str) -> Option<T>
    where
        T: DeserializeOwned + Clone + Send + Sync + 'static,
    {
        // Spans only when a subscriber may want DEBUG, and then boxed: otherwise an L1 hit
        // costs one look at the level more than before, and builds no span and no future (a
        // nested backend read future costs a copy of its whole size, more than the hit).
        if tracing::level_enabled!(tracing::Level::DEBUG) {
            return Box::pin(self.get_traced(key)).await;
        }
        if let Some(value) = self.inner.l1_get::<T>(key) {
            return value;
        }
        self.get_from_backend(key).await
    }

    /// [`get`](Self::get) in its `herd.cache.get` span.
    async fn get_traced<T>(&self, key: &str) -> Option<T>
    where
        T: DeserializeOwned + Clone + Send + Sync + 'static,
    {
        let span = op_span!("herd.cache.get", "get", "GET", key);
        if let Some(value) = span.in_scope(|| self.inner.l1_get::<T>(key)) {
            return value;
        }
        self.get_from_backend(key).instrument(span).await
    }

    /// [`get`](Self::get) after an L1 miss.
    async fn get_from_backend<T>(&self, key: &str) -> Option<T>
    where
        T: DeserializeOwned + Clone + Send + Sync + 'static,
    {
        match self.inner.read::<T>(key).await {
            Read::Fresh(value, _) => value,
            Read::Stale(..) => {
                self.inner.counters.record(Tier::L2, Outcome::Miss);
                None
            }
            Read::Missing | Read::Failed => None,
        }
    }

    /// Values of `keys`, in order. Keys are grouped by hash slot and each node gets one pipeline.
    /// Fail-open like [`get`](Self::get): a failed backend gives `None`s.
    pub async fn get_many<T, K>(&self, keys: &[K]) -> Vec<Option<T>>
    where
        T: DeserializeOwned + Clone + Send + Sync + 'static,
        K: AsRef<str>,
    {
        let mut out: Vec<Option<T>> = Vec::with_capacity(keys.len());
        let mut missing = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            match self.inner.l1_get::<T>(key.as_ref()) {
                Some(value) => out.push(value),
                None => {
                    out.push(None);
                    missing.push(i);
                }
            }
        }
        if missing.is_empty() {
            return out;
        }
        let inner = &self.inner;
        let circuit = inner.circuits.whole();
        if !circuit.allows() {
            inner.skipped(missing.len());
            return out;
        }
        let full_keys: Vec<String> = missing
            .iter()
            .filter_map(|&i| keys.get(i))
            .map(|k| inner.data_key(k.as_ref()))
            .collect();
        match inner.backend.get_many(&full_keys).await {
            Ok(values) => {
                circuit.record_success();
                for (&i, bytes) in missing.iter().zip(values) {
                    let key = keys.get(i).map(AsRef::as_ref).unwrap_or_default();
                    if let (Read::Fresh(value, _), Some(place)) =
                        (inner.decode::<T>(key, bytes), out.get_mut(i))
                    {
                        *place = value;
                    }
                }
            }
            Err(error) => {
                for _ in &missing {
                    inner.backend_failed(circuit, &error);
                }
            }
        }
        out
    }

    /// Stores `value` under `key` for `ttl` (plus `stale_ttl` in the backend) and invalidates
    /// the key in other instances' L1s.
    ///
    /// # Errors
    /// [`Error::Encode`], [`Error::Backend`], or [`Error::CircuitOpen`] while the backend is skipped.
    pub async fn set<T>(&self, key: &str, value: &T, ttl: Duration) -> Result<(), Error>
    where
        T: Serialize + Clone + Send + Sync + 'static,
    {
        self.set_with_tags(key, value, ttl, &[] as &[&str]).await
    }

    /// [`set`](Self::set), and records `key` under each tag so
    /// [`invalidate_tag`](Self::invalidate_tag) can remove it later.
    ///
    /// # Errors
    /// As [`set`](Self::set).
    pub async fn set_with_tags<T, S>(
        &self,
        key: &str,
        value: &T,
        ttl: Duration,
        tags: &[S],
    ) -> Result<(), Error>
    where
        T: Serialize + Clone + Send + Sync + 'static,
        S: AsRef<str>,
    {
        let span = op_span!("herd.cache.set", "set", "SET", key);
        let result = traced(span.clone(), self.set_untraced(key, value, ttl, tags)).await;
        if let Err(error) = &result {
            traced_error(&span, error);
        }
        result
    }

    async fn set_untraced<T, S>(
        &self,
        key: &str,
        value: &T,
        ttl: Duration,
        tags: &[S],
    ) -> Result<(), Error>
    where
        T: Serialize + Clone + Send + Sync + 'static,
        S: AsRef<str>,
    {
        let inner = &self.inner;
        let bytes = codec::encode(Some(value), Header::new(false, ttl, Duration::ZERO)).map_err(
            |source| Error::Encode {
                key: key.to_owned(),
                source,
            },
        )?;
        let full = inner.data_key(key);
        let circuit = inner.circuit_for(&full);
        inner.guard(circuit, "SET")?;
        let stored_ttl = ttl.saturating_add(inner.config.stale_ttl);
        inner.checked(circuit, inner.backend.set(&full, &bytes, stored_ttl).await)?;
        for tag in tags {
            let members = [full.clone()];
            inner.checked(
                inner.circuits.whole(),
                inner
                    .backend
                    .tag_add(&inner.tag_key(tag.as_ref()), &members, stored_ttl)
                    .await,
            )?;
        }
        let written = inner.fingerprint(&bytes);
        if let Some(l1) = &inner.l1 {
            l1.insert(key, Some(value.clone()), ttl, written);
        }
        inner.publish(vec![key.to_owned()], vec![written]).await;
        Ok(())
    }

    /// Stores several values with one pipeline per node.
    ///
    /// # Errors
    /// As [`set`](Self::set).
    pub async fn set_many<T, K>(&self, items: &[(K, T)], ttl: Duration) -> Result<(), Error>
    where
        T: Serialize + Clone + Send + Sync + 'static,
        K: AsRef<str>,
    {
        let inner = &self.inner;
        let header = Header::new(false, ttl, Duration::ZERO);
        let encoded = items
            .iter()
            .map(|(key, value)| {
                codec::encode(Some(value), header)
                    .map(|bytes| (inner.data_key(key.as_ref()), bytes))
                    .map_err(|source| Error::Encode {
                        key: key.as_ref().to_owned(),
                        source,
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        inner.guard(inner.circuits.whole(), "SET")?;
        inner.checked(
            inner.circuits.whole(),
            inner
                .backend
                .set_many(&encoded, ttl.saturating_add(inner.config.stale_ttl))
                .await,
        )?;
        let written: Vec<Option<u64>> = encoded
            .iter()
            .map(|(_, bytes)| inner.fingerprint(bytes))
            .collect();
        if let Some(l1) = &inner.l1 {
            for ((key, value), &written) in items.iter().zip(&written) {
                l1.insert(key.as_ref(), Some(value.clone()), ttl, written);
            }
        }
        let keys = items.iter().map(|(k, _)| k.as_ref().to_owned()).collect();
        inner.publish(keys, written).await;
        Ok(())
    }

    /// Removes `key` here, in the backend, and in other instances' L1s.
    ///
    /// # Errors
    /// [`Error::Backend`] or [`Error::CircuitOpen`]; the local L1 entry is removed regardless.
    pub async fn delete(&self, key: &str) -> Result<(), Error> {
        let span = op_span!("herd.cache.delete", "delete", "DEL", key);
        let result = traced(span.clone(), self.delete_untraced(key)).await;
        if let Err(error) = &result {
            traced_error(&span, error);
        }
        result
    }

    async fn delete_untraced(&self, key: &str) -> Result<(), Error> {
        let inner = &self.inner;
        if let Some(l1) = &inner.l1 {
            l1.invalidate(key);
        }
        let full = inner.data_key(key);
        let circuit = inner.circuit_for(&full);
        inner.guard(circuit, "DEL")?;
        inner.checked(circuit, inner.backend.delete(&[full]).await)?;
        inner.publish(vec![key.to_owned()], Vec::new()).await;
        Ok(())
    }

    /// Removes every key stored with `tag` (here, in the backend and in other instances' L1s)
    /// and returns how many there were.
    ///
    /// # Errors
    /// [`Error::Backend`] or [`Error::CircuitOpen`].
    pub async fn invalidate_tag(&self, tag: &str) -> Result<u64, Error> {
        let inner = &self.inner;
        let circuit = inner.circuits.whole();
        inner.guard(circuit, "invalidate_tag")?;
        let tag_key = inner.tag_key(tag);
        let members = inner.checked(circuit, inner.backend.tag_members(&tag_key).await)?;
        let data_prefix = format!("{}k:", inner.prefix);
        let keys: Vec<String> = members
            .iter()
            .filter_map(|m| m.strip_prefix(&data_prefix))
            .map(str::to_owned)
            .collect();
        if let Some(l1) = &inner.l1 {
            for key in &keys {
                l1.invalidate(key);
            }
        }
        let mut doomed = members;
        doomed.push(tag_key);
        inner.checked(circuit, inner.backend.delete(&doomed).await)?;
        if !keys.is_empty() {
            inner.publish(keys.clone(), Vec::new()).await;
        }
        Ok(keys.len() as u64)
    }

    /// The value of `key`, or the loader's result, stored for `ttl`.
    ///
    /// - Concurrent calls for one key in this instance share one loader call; an error is
    ///   returned to all of them and not cached.
    /// - With [`CacheConfig::lock`], instances race for `SET NX PX` on a lock key: the winner
    ///   loads, the others wait for its value (up to `lock.wait`, then load themselves).
    /// - A fresh value may be refreshed early in the background (XFetch), a stale one within
    ///   `stale_ttl` is returned while one background load replaces it.
    /// - `Ok(None)` from the loader is cached for `negative_ttl` when that is set.
    /// - Fail-open: when the backend is down or slow, the loader's value is returned.
    /// - Use [`get_or_load_value`](Self::get_or_load_value) when the loader always has a value.
    ///
    /// The loader is `'static` because the load runs as its own task: it completes, and stores
    /// its value, even if the caller that started it is cancelled. Give it what it needs by
    /// value: clone handles (a `DbRouter`, a pool, an `Arc`) into a `move` closure.
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # #[derive(Clone, serde::Serialize, serde::Deserialize)] struct User;
    /// # async fn load_user(db: &herd_db_router::DbRouter, id: i64) -> Result<Option<User>, herd_db_router::sqlx::Error> { Ok(None) }
    /// # async fn demo(cache: herd_cache_cluster::Cache, db: herd_db_router::DbRouter) -> Result<(), herd_cache_cluster::Error> {
    /// let id = 42;
    /// let user: Option<User> = cache
    ///     .get_or_load(&format!("user:{id}"), Duration::from_secs(60), {
    ///         let db = db.clone(); // the loader owns its handle
    ///         move || async move { load_user(&db, id).await }
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Read-your-writes and other request state
    ///
    /// The load task, and a background refresh, run in the task-scoped state of the caller that
    /// started them (herd-context): inside herd-db-router's read-your-writes scope, the loader's
    /// reads go to a replica that has the client's writes, exactly as the handler's own reads
    /// do. A caller that joins a load already in flight gets that load's value, read in its
    /// starter's scope: as with any cached value, delete the key when you write what it caches
    /// (then the next load starts after your write, in your scope).
    ///
    /// # Errors
    /// Only [`Error::Load`], when the loader failed (and no stale value could stand in).
    pub async fn get_or_load<T, F, Fut, E>(
        &self,
        key: &str,
        ttl: Duration,
        loader: F,
    ) -> Result<Option<T>, Error>
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Option<T>, E>> + Send + 'static,
        E: Into<BoxError> + Send + 'static,
    {
        // As in `get`: spans only when they may be wanted, boxed; the L1 first.
        if tracing::level_enabled!(tracing::Level::DEBUG) {
            return Box::pin(self.get_or_load_traced(key, ttl, loader)).await;
        }
        if let Some(value) = self.inner.l1_get::<T>(key) {
            return Ok(value);
        }
        self.load_after_miss(key, ttl, loader, &Span::none()).await
    }

    /// [`get_or_load`](Self::get_or_load) in its `herd.cache.get_or_load` span.
    async fn get_or_load_traced<T, F, Fut, E>(
        &self,
        key: &str,
        ttl: Duration,
        loader: F,
    ) -> Result<Option<T>, Error>
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Option<T>, E>> + Send + 'static,
        E: Into<BoxError> + Send + 'static,
    {
        let span = op_span!("herd.cache.get_or_load", "get_or_load", "GET", key);
        if let Some(value) = span.in_scope(|| self.inner.l1_get::<T>(key)) {
            return Ok(value);
        }
        let result = self
            .load_after_miss(key, ttl, loader, &span)
            .instrument(span.clone())
            .await;
        if let Err(error) = &result {
            traced_error(&span, error);
        }
        result
    }

    /// [`get_or_load`](Self::get_or_load) after an L1 miss, in `span`, which a load this call
    /// starts runs in too.
    async fn load_after_miss<T, F, Fut, E>(
        &self,
        key: &str,
        ttl: Duration,
        loader: F,
        span: &Span,
    ) -> Result<Option<T>, Error>
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Option<T>, E>> + Send + 'static,
        E: Into<BoxError> + Send + 'static,
    {
        let mut loader = Some(loader);
        let inner = Arc::clone(&self.inner);
        let owned_key = key.to_owned();
        let (flight, _) = self.inner.flights.join_or_start(key, || {
            let loader = loader.take();
            async move {
                let Some(loader) = loader else {
                    return Err(Error::Load {
                        key: owned_key,
                        source: Arc::new("loader already used".into()),
                    });
                };
                let value = inner.resolve::<T, _, _, _>(owned_key, ttl, loader).await?;
                Ok(Arc::new(value) as Arc<dyn Any + Send + Sync>)
            }
            .instrument(span.clone())
            .boxed()
        });
        let shared = flight.await?;
        if let Some(value) = shared.downcast_ref::<Option<T>>() {
            return Ok(value.clone());
        }
        // We joined a load of the same key for another type: load our own.
        match loader {
            Some(loader) => {
                let loaded = Arc::clone(&self.inner)
                    .load_and_store(key.to_owned(), ttl, loader, LockMode::Wait)
                    .await?;
                Ok(loaded.value)
            }
            None => Err(Error::Load {
                key: key.to_owned(),
                source: Arc::new("loader already used".into()),
            }),
        }
    }

    /// [`get_or_load`](Self::get_or_load) for a loader that always produces a value (like
    /// moka's `try_get_with`): the value of `key`, or the loader's, stored for `ttl`, with the
    /// same one load per key, locks, early and stale refreshes, fail-open and read-your-writes.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), herd_cache_cluster::Error> {
    /// let cache = herd_cache_cluster::Cache::builder(herd_cache_cluster::Backend::memory()).build().await?;
    /// let total: u64 = cache
    ///     .get_or_load_value("orders:total", Duration::from_secs(5), || async {
    ///         Ok::<_, std::io::Error>(1234) // e.g. SELECT count(*) ...
    ///     })
    ///     .await?;
    /// assert_eq!(total, 1234);
    /// # Ok(()) }
    /// ```
    ///
    /// When the key holds an absent value cached by a `get_or_load` of the same key (with
    /// `negative_ttl`), the loader is called and its value returned, without replacing the
    /// entry.
    ///
    /// # Errors
    /// Only [`Error::Load`], when the loader failed (and no stale value could stand in).
    pub async fn get_or_load_value<T, F, Fut, E>(
        &self,
        key: &str,
        ttl: Duration,
        loader: F,
    ) -> Result<T, Error>
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        E: Into<BoxError> + Send + 'static,
    {
        // Kept here until a load takes it, so a cached absence can still be answered.
        let slot = Arc::new(Mutex::new(Some(loader)));
        let taken = Arc::clone(&slot);
        let cached = self
            .get_or_load(key, ttl, move || {
                let loader = taken.lock().take();
                async move {
                    match loader {
                        Some(loader) => loader().await.map(Some).map_err(Into::into),
                        None => Err(BoxError::from("loader already used")),
                    }
                }
            })
            .await?;
        if let Some(value) = cached {
            return Ok(value);
        }
        // Our loader never returns `None`, so this absence came from the cache and the loader
        // is still here.
        let loader = slot.lock().take();
        let loaded = match loader {
            Some(loader) => loader().await.map_err(Into::into),
            None => Err(BoxError::from("loader already used")),
        };
        loaded.map_err(|source| Error::Load {
            key: key.to_owned(),
            source: Arc::new(source),
        })
    }
}

/// What a backend read found.
enum Read<T> {
    Fresh(Option<T>, Header),
    Stale(Option<T>),
    Missing,
    Failed,
}

/// What a loader does when another instance holds the lock.
#[derive(Clone, Copy, PartialEq, Eq)]
enum LockMode {
    /// Wait for the holder's value (a caller is waiting for one).
    Wait,
    /// Give up (a background refresh: the holder is refreshing already).
    Skip,
}

impl Inner {
    fn data_key(&self, key: &str) -> String {
        let mut full = String::with_capacity(self.prefix.len() + 2 + key.len());
        full.push_str(&self.prefix);
        full.push_str("k:");
        full.push_str(key);
        full
    }

    fn tag_key(&self, tag: &str) -> String {
        format!("{}t:{tag}", self.prefix)
    }

    fn lock_key(&self, key: &str) -> String {
        format!("{}l:{key}", self.prefix)
    }

    /// `Some(value)` on an L1 hit of type `T`.
    fn l1_get<T: Clone + 'static>(&self, key: &str) -> Option<Option<T>> {
        let l1 = self.l1.as_ref()?;
        match l1.get::<T>(key) {
            Some(value) => {
                self.counters.record(Tier::L1, Outcome::Hit);
                Some(value)
            }
            None => {
                self.counters.record(Tier::L1, Outcome::Miss);
                None
            }
        }
    }

    /// The circuit of the shard serving `full_key`.
    fn circuit_for(&self, full_key: &str) -> &Circuit {
        self.circuits.for_shard(self.backend.shard_of(full_key))
    }

    fn guard(&self, circuit: &Circuit, operation: &'static str) -> Result<(), Error> {
        if circuit.allows() {
            Ok(())
        } else {
            let error = Error::CircuitOpen { operation };
            metrics::counter!(ERRORS_TOTAL, "kind" => error.kind()).increment(1);
            Err(error)
        }
    }

    fn skipped(&self, lookups: usize) {
        metrics::counter!(ERRORS_TOTAL, "kind" => "circuit_open").increment(lookups as u64);
        for _ in 0..lookups {
            self.counters.record(Tier::L2, Outcome::Error);
        }
    }

    /// Feeds a backend result to the circuit and the error metrics.
    fn checked<R>(&self, circuit: &Circuit, result: Result<R, Error>) -> Result<R, Error> {
        match &result {
            Ok(_) => circuit.record_success(),
            Err(error) => {
                circuit.record_failure();
                metrics::counter!(ERRORS_TOTAL, "kind" => error.kind()).increment(1);
                tracing::debug!(%error, "cache backend call failed");
            }
        }
        result
    }

    fn backend_failed(&self, circuit: &Circuit, error: &Error) {
        circuit.record_failure();
        self.counters.record(Tier::L2, Outcome::Error);
        metrics::counter!(ERRORS_TOTAL, "kind" => error.kind()).increment(1);
        tracing::debug!(%error, "cache backend read failed; treating as a miss");
    }

    async fn read<T>(&self, key: &str) -> Read<T>
    where
        T: DeserializeOwned + Clone + Send + Sync + 'static,
    {
        let full = self.data_key(key);
        let slot = self.backend.slot_of(&full);
        if tracing::level_enabled!(tracing::Level::DEBUG) {
            traced_node(self.backend.node_of_slot(slot));
        }
        let circuit = self.circuits.for_shard(self.backend.shard_of_slot(slot));
        if !circuit.allows() {
            self.skipped(1);
            return Read::Failed;
        }
        match self.backend.get_in_slot(&full, slot).await {
            Ok(bytes) => {
                circuit.record_success();
                self.decode(key, bytes)
            }
            Err(error) => {
                self.backend_failed(circuit, &error);
                Read::Failed
            }
        }
    }

    /// Classifies stored bytes, counts the outcome and fills the L1 with fresh values.
    fn decode<T>(&self, key: &str, bytes: Option<Vec<u8>>) -> Read<T>
    where
        T: DeserializeOwned + Clone + Send + Sync + 'static,
    {
        let Some(bytes) = bytes else {
            self.counters.record(Tier::L2, Outcome::Miss);
            return Read::Missing;
        };
        // Before `decode_owned` takes the bytes apart.
        let written = self.fingerprint(&bytes);
        match codec::decode_owned::<T>(bytes) {
            Ok((header, value)) if header.is_fresh() => {
                self.counters.record(Tier::L2, Outcome::Hit);
                if let Some(l1) = &self.l1 {
                    l1.insert(key, value.clone(), header.remaining(), written);
                }
                Read::Fresh(value, header)
            }
            Ok((_, value)) => Read::Stale(value),
            Err(error) => {
                let kind = match error {
                    DecodeError::Foreign => "decode_foreign",
                    DecodeError::Payload => "decode_payload",
                };
                metrics::counter!(ERRORS_TOTAL, "kind" => "decode", "detail" => kind).increment(1);
                tracing::debug!(
                    key,
                    ?error,
                    "stored value is not readable by this cache; treating as a miss"
                );
                self.counters.record(Tier::L2, Outcome::Error);
                Read::Missing
            }
        }
    }

    /// XFetch: refresh before expiry with a probability that grows as expiry nears and with
    /// the cost of the last load (`delta`): refresh when `now - delta * beta * ln(rand) >= expiry`.
    fn should_refresh_early(&self, header: &Header) -> bool {
        let beta = self.config.early_refresh_beta;
        if beta <= 0.0 || header.delta_ms == 0 {
            return false;
        }
        // 1 - [0, 1) is (0, 1], so ln() is finite and <= 0.
        let draw: f64 = 1.0 - self.rng.lock().random::<f64>();
        let gap_ms = -(f64::from(header.delta_ms)) * beta * draw.ln();
        codec::now_ms() as f64 + gap_ms >= header.fresh_until_ms as f64
    }

    async fn resolve<T, F, Fut, E>(
        self: Arc<Self>,
        key: String,
        ttl: Duration,
        loader: F,
    ) -> Result<Option<T>, Error>
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Option<T>, E>> + Send + 'static,
        E: Into<BoxError> + Send + 'static,
    {
        match self.read::<T>(&key).await {
            Read::Fresh(value, header) => {
                if self.should_refresh_early(&header) {
                    metrics::counter!(EARLY_REFRESHES_TOTAL).increment(1);
                    self.spawn_refresh(key, ttl, loader);
                }
                Ok(value)
            }
            Read::Stale(value) if !self.config.stale_ttl.is_zero() => {
                self.counters.record(Tier::L2, Outcome::Stale);
                self.spawn_refresh(key, ttl, loader);
                Ok(value)
            }
            Read::Stale(..) => {
                self.counters.record(Tier::L2, Outcome::Miss);
                let loaded = self
                    .load_and_store(key, ttl, loader, LockMode::Wait)
                    .await?;
                Ok(loaded.value)
            }
            Read::Missing | Read::Failed => {
                let loaded = self
                    .load_and_store(key, ttl, loader, LockMode::Wait)
                    .await?;
                Ok(loaded.value)
            }
        }
    }

    /// One background load replacing a stale or nearly stale value; at most one per key.
    fn spawn_refresh<T, F, Fut, E>(self: &Arc<Self>, key: String, ttl: Duration, loader: F)
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Option<T>, E>> + Send + 'static,
        E: Into<BoxError> + Send + 'static,
    {
        if !self.refreshing.lock().insert(key.clone()) {
            return;
        }
        // Unmarks the key however the refresh ends: done, failed, a panicking loader (the task
        // unwinds), or the task dropped with its runtime. Otherwise the key would stay marked
        // and never be refreshed again.
        let refresh = Refreshing {
            inner: Arc::clone(self),
            key,
        };
        // In the state of the request that found the value stale (captured here): the refresh
        // reads as that request would have.
        herd_context::spawn(async move {
            let inner = &refresh.inner;
            let key = &refresh.key;
            let result = Arc::clone(inner)
                .load_and_store(key.clone(), ttl, loader, LockMode::Skip)
                .await;
            match result {
                Ok(Loaded { written, .. }) => inner.publish(vec![key.clone()], vec![written]).await,
                // The old value stays in place (fail-safe).
                Err(error) => {
                    tracing::debug!(%error, "background refresh failed; the previous value stays");
                }
            }
            drop(refresh);
        });
    }

    async fn load_and_store<T, F, Fut, E>(
        self: Arc<Self>,
        key: String,
        ttl: Duration,
        loader: F,
        lock_mode: LockMode,
    ) -> Result<Loaded<T>, Error>
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Option<T>, E>> + Send + 'static,
        E: Into<BoxError> + Send + 'static,
    {
        let lock = match self.acquire_lock::<T>(&key, lock_mode).await {
            LockOutcome::Held(token) => Some(token),
            LockOutcome::NotUsed => None,
            LockOutcome::ValueArrived(value) => {
                return Ok(Loaded {
                    value,
                    written: None,
                });
            }
            LockOutcome::Skipped => {
                return Err(Error::Load {
                    key,
                    source: Arc::new("another instance is refreshing".into()),
                });
            }
        };
        let started = Instant::now();
        self.counters.record_load();
        let loaded = loader().await;
        let load_time = started.elapsed();
        metrics::histogram!(LOAD_SECONDS).record(load_time.as_secs_f64());
        let result = match loaded {
            Ok(value) => {
                let written = self.store(&key, value.as_ref(), ttl, load_time).await;
                Ok(Loaded { value, written })
            }
            Err(error) => {
                metrics::counter!(ERRORS_TOTAL, "kind" => "loader").increment(1);
                Err(Error::Load {
                    key: key.clone(),
                    source: Arc::new(error.into()),
                })
            }
        };
        if let Some(token) = lock {
            let lock_key = self.lock_key(&key);
            // A failed release only delays the next load until the lock expires.
            let _ = self.checked(
                self.circuit_for(&lock_key),
                self.backend
                    .delete_if_equals(&lock_key, token.as_bytes())
                    .await,
            );
        }
        result
    }

    /// Writes a loaded value to the backend and the L1 (a `None` only with `negative_ttl`);
    /// returns the fingerprint of the bytes written, for the invalidation that announces them.
    async fn store<T>(
        &self,
        key: &str,
        value: Option<&T>,
        ttl: Duration,
        load_time: Duration,
    ) -> Option<u64>
    where
        T: Serialize + Clone + Send + Sync + 'static,
    {
        let ttl = match (value, self.config.negative_ttl) {
            (Some(_), _) => ttl,
            (None, Some(negative_ttl)) => negative_ttl,
            (None, None) => return None,
        };
        let bytes = match codec::encode(value, Header::new(value.is_none(), ttl, load_time)) {
            Ok(bytes) => bytes,
            Err(error) => {
                metrics::counter!(ERRORS_TOTAL, "kind" => "encode").increment(1);
                tracing::warn!(key, %error, "loaded value cannot be serialized; not stored");
                // Kept here only, where it was loaded.
                if let Some(l1) = &self.l1 {
                    l1.insert(key, value.cloned(), ttl, None);
                }
                return None;
            }
        };
        let written = self.fingerprint(&bytes);
        if let Some(l1) = &self.l1 {
            l1.insert(key, value.cloned(), ttl, written);
        }
        let full = self.data_key(key);
        let circuit = self.circuit_for(&full);
        if circuit.allows() {
            let stored_ttl = ttl.saturating_add(self.config.stale_ttl);
            let _ = self.checked(circuit, self.backend.set(&full, &bytes, stored_ttl).await);
        }
        written
    }

    async fn acquire_lock<T>(&self, key: &str, mode: LockMode) -> LockOutcome<T>
    where
        T: DeserializeOwned + Clone + Send + Sync + 'static,
    {
        let Some(lock) = &self.config.lock else {
            return LockOutcome::NotUsed;
        };
        let lock_key = self.lock_key(key);
        let lock_circuit = self.circuit_for(&lock_key);
        if !lock_circuit.allows() {
            return LockOutcome::NotUsed;
        }
        let token = format!("{:016x}", self.rng.lock().random::<u64>());
        match self.checked(
            lock_circuit,
            self.backend
                .set_nx(&lock_key, token.as_bytes(), lock.ttl)
                .await,
        ) {
            Ok(true) => return LockOutcome::Held(token),
            Ok(false) if mode == LockMode::Skip => return LockOutcome::Skipped,
            Ok(false) => {}
            Err(_) => return LockOutcome::NotUsed,
        }
        // Another instance is loading: wait for its value rather than load it again.
        let full = self.data_key(key);
        let circuit = self.circuit_for(&full);
        // A configured wait too long for the clock waits (practically) forever, not panics.
        let now = Instant::now();
        let deadline = now
            .checked_add(lock.wait)
            .unwrap_or(now + Duration::from_secs(86_400));
        let waited = |outcome: &'static str| {
            metrics::histogram!(LOCK_WAIT_SECONDS, "outcome" => outcome)
                .record(now.elapsed().as_secs_f64());
        };
        let mut outcome = "expired";
        while Instant::now() < deadline {
            tokio::time::sleep(lock.poll_interval).await;
            if !circuit.allows() {
                outcome = "gave_up";
                break;
            }
            match self.backend.get(&full).await {
                Ok(Some(bytes)) => {
                    if let Ok((header, value)) = codec::decode::<T>(&bytes)
                        && header.is_fresh()
                    {
                        if let Some(l1) = &self.l1 {
                            let written = self.fingerprint(&bytes);
                            l1.insert(key, value.clone(), header.remaining(), written);
                        }
                        waited("value_arrived");
                        return LockOutcome::ValueArrived(value);
                    }
                }
                Ok(None) => {}
                Err(_) => {
                    outcome = "gave_up";
                    break;
                }
            }
        }
        waited(outcome);
        metrics::counter!(LOCK_WAIT_EXPIRED_TOTAL).increment(1);
        LockOutcome::NotUsed
    }

    /// The fingerprint of stored bytes, when an L1 will keep it (see [`codec::fingerprint`]).
    fn fingerprint(&self, bytes: &[u8]) -> Option<u64> {
        self.l1.as_ref().map(|_| codec::fingerprint(bytes))
    }

    /// Tells other instances to drop `keys` from their L1s, unless they hold the value whose
    /// stored bytes have the fingerprint in `written` at the same index (none: a delete).
    /// Failures are counted, not returned: the write itself succeeded, and L1 entries expire
    /// within `l1.max_ttl` anyway.
    async fn publish(&self, keys: Vec<String>, written: Vec<Option<u64>>) {
        if self.l1.is_none() || !self.config.invalidation || !self.circuits.whole().allows() {
            return;
        }
        let payload = Invalidation {
            origin: self.origin,
            keys,
            written,
        }
        .encode();
        if let Err(error) = self.backend.publish(&self.channel, &payload).await {
            metrics::counter!(ERRORS_TOTAL, "kind" => "invalidation_publish").increment(1);
            tracing::debug!(%error, "publishing a cache invalidation failed");
        }
    }
}

/// A loader's value, and the fingerprint of the bytes stored for it (when it was stored here).
struct Loaded<T> {
    value: Option<T>,
    written: Option<u64>,
}

/// A key marked as refreshing in the background; dropping this unmarks it.
struct Refreshing {
    inner: Arc<Inner>,
    key: String,
}

impl Drop for Refreshing {
    fn drop(&mut self) {
        self.inner.refreshing.lock().remove(&self.key);
    }
}

enum LockOutcome<T> {
    Held(String),
    NotUsed,
    ValueArrived(Option<T>),
    Skipped,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn get_or_load_value_returns_the_value_and_answers_a_cached_absence() {
        let config = CacheConfig {
            negative_ttl: Some(Duration::from_secs(60)),
            ..CacheConfig::default()
        };
        let cache = Cache::builder(Backend::memory())
            .config(config)
            .build()
            .await
            .unwrap();
        let ttl = Duration::from_secs(60);
        let n: u32 = cache
            .get_or_load_value("n", ttl, || async { Ok::<_, std::io::Error>(7) })
            .await
            .unwrap();
        assert_eq!(n, 7);
        let again: u32 = cache
            .get_or_load_value("n", ttl, || async {
                Err::<u32, _>(std::io::Error::other("not called: cached"))
            })
            .await
            .unwrap();
        assert_eq!(again, 7);

        // An absence cached by `get_or_load` of the same key: the loader answers.
        let absent: Option<u32> = cache
            .get_or_load("gone", ttl, || async { Ok::<_, std::io::Error>(None) })
            .await
            .unwrap();
        assert_eq!(absent, None);
        let loaded: u32 = cache
            .get_or_load_value("gone", ttl, || async { Ok::<_, std::io::Error>(9) })
            .await
            .unwrap();
        assert_eq!(loaded, 9);

        let failed = cache
            .get_or_load_value("bad", ttl, || async {
                Err::<u32, _>(std::io::Error::other("database down"))
            })
            .await;
        assert!(matches!(failed, Err(Error::Load { ref key, .. }) if key == "bad"));
    }

    #[tokio::test]
    async fn a_panicking_background_refresh_does_not_leave_its_key_marked() {
        let config = CacheConfig {
            l1: None,
            stale_ttl: Duration::from_secs(60),
            ..CacheConfig::default()
        };
        let cache = Cache::builder(Backend::memory())
            .config(config)
            .build()
            .await
            .unwrap();
        cache
            .set("k", &1u32, Duration::from_millis(20))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;

        // Stale: the old value comes back and a refresh starts in the background; its loader
        // panics.
        let value = cache
            .get_or_load("k", Duration::from_secs(60), || async {
                if true {
                    panic!("loader bug");
                }
                Ok::<_, std::io::Error>(Some(2u32))
            })
            .await
            .unwrap();
        assert_eq!(value, Some(1));
        let deadline = Instant::now() + Duration::from_secs(5);
        while cache.inner.refreshing.lock().contains("k") {
            assert!(
                Instant::now() < deadline,
                "the key stayed marked as refreshing"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }

        // So the next stale read refreshes it again.
        let value = cache
            .get_or_load("k", Duration::from_secs(60), || async {
                Ok::<_, std::io::Error>(Some(3u32))
            })
            .await
            .unwrap();
        assert_eq!(value, Some(1), "still the stale value, refreshed behind it");
        let deadline = Instant::now() + Duration::from_secs(5);
        while cache.get::<u32>("k").await != Some(3) {
            assert!(Instant::now() < deadline, "no second refresh");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
