//! [`EndpointSet`]: the membership, snapshots and shared state that a balancer picks from.

use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::endpoint::{EndpointState, InFlightGuard, SetShared};
use crate::error::{Error, PickError};
use crate::ewma::EwmaConfig;
use crate::health::{ActiveHealth, ActiveHealthConfig, OutlierDetection, Probe, SlowStart};
use crate::policy::Pick;
use crate::rng::SharedRng;
use crate::snapshot::{Candidates, Endpoint, EndpointInfo, PickContext, Snapshot};

/// What a key needs to be: cloneable, comparable, hashable (maps keyed by endpoint) and
/// printable (metrics labels, errors, and the consistent-hash ring, which hashes the printed
/// form, so gateways whose keys print alike agree). `SocketAddr`, `String` and `http::Uri`
/// qualify.
pub trait EndpointKey:
    Clone + Eq + Hash + fmt::Display + fmt::Debug + Send + Sync + 'static
{
}
impl<T> EndpointKey for T where
    T: Clone + Eq + Hash + fmt::Display + fmt::Debug + Send + Sync + 'static
{
}

/// A successful pick: the in-flight slot and a clone of the endpoint's service.
#[derive(Debug)]
pub struct Picked<S> {
    /// The slot; record the outcome on it when the request ends.
    pub guard: InFlightGuard,
    /// The endpoint's service (or payload).
    pub service: S,
}

/// A set of endpoints with per-endpoint load and health, changed at runtime without locking pickers.
///
/// Readers load the current [`Snapshot`] (an `ArcSwap`, no lock); writers build a new snapshot
/// under a mutex and swap it in. An endpoint's [`EndpointState`] is carried over into every new
/// snapshot, so in-flight counts, latency estimates and ejections survive any update.
///
/// `S` is each endpoint's service or payload (a `tower::Service`, a connection pool, or `()`).
/// This type is usable without tower: pick with [`pick`](Self::pick) and record the outcome on the
/// returned guard.
///
/// ```
/// use herd_lb_core::{EndpointSet, P2c, PickContext};
///
/// let set: EndpointSet<&str> = EndpointSet::new();
/// set.insert("replica-a", (), 1.0).unwrap();
/// set.insert("replica-b", (), 1.0).unwrap();
/// let policy = P2c::seeded(1);
/// let picked = set.pick(&policy, &PickContext::new()).unwrap();
/// assert_eq!(picked.guard.state().in_flight(), 1);
/// picked.guard.success();
/// assert!(set.endpoints().iter().all(|e| e.in_flight == 0));
/// ```
pub struct EndpointSet<K, S = ()> {
    inner: Arc<SetInner<K, S>>,
}

pub(crate) struct SetInner<K, S> {
    pub(crate) current: ArcSwap<Snapshot<K, S>>,
    shared: Arc<SetShared>,
    write: Mutex<()>,
    max_in_flight: Option<usize>,
}

impl<K, S> Clone for EndpointSet<K, S> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<K: fmt::Debug, S> fmt::Debug for EndpointSet<K, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointSet")
            .field("snapshot", &*self.inner.current.load())
            .finish_non_exhaustive()
    }
}

/// Settings of an [`EndpointSet`]; see [`EndpointSet::builder`].
#[derive(Debug, Clone, Default)]
pub struct EndpointSetBuilder {
    outlier: OutlierDetection,
    slow_start: Option<SlowStart>,
    ewma: EwmaConfig,
    max_in_flight: Option<usize>,
    seed: Option<u64>,
}

impl EndpointSetBuilder {
    /// Passive health rules (default: eject after 5 consecutive failures).
    pub fn outlier_detection(mut self, outlier: OutlierDetection) -> Self {
        self.outlier = outlier;
        self
    }

    /// Ramp up new and recovered endpoints (default: off).
    pub fn slow_start(mut self, slow_start: Option<SlowStart>) -> Self {
        self.slow_start = slow_start;
        self
    }

    /// Latency measurement (default: Peak-EWMA seed 30 ms, decay 10 s; 1 in 8 requests timed
    /// unless the policy ranks by latency).
    pub fn ewma(mut self, ewma: EwmaConfig) -> Self {
        self.ewma = ewma;
        self
    }

    /// Default per-endpoint concurrency cap for inserted endpoints (default: unlimited).
    pub fn max_in_flight(mut self, max: Option<usize>) -> Self {
        self.max_in_flight = max;
        self
    }

    /// Fixed seed for ejection jitter (default: OS entropy).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Builds an empty set.
    pub fn build<K: EndpointKey, S>(self) -> EndpointSet<K, S> {
        crate::metrics::describe();
        let rng = self.seed.map_or_else(SharedRng::new, SharedRng::seeded);
        let shared = SetShared::new(self.outlier, self.slow_start, self.ewma, rng);
        EndpointSet {
            inner: Arc::new(SetInner {
                current: ArcSwap::from_pointee(Snapshot::new(Vec::new())),
                shared: Arc::new(shared),
                write: Mutex::new(()),
                max_in_flight: self.max_in_flight,
            }),
        }
    }
}

pub(crate) fn check_weight(endpoint: &dyn fmt::Display, weight: f64) -> Result<(), Error> {
    if weight.is_finite() && weight > 0.0 {
        Ok(())
    } else {
        Err(Error::InvalidWeight {
            endpoint: endpoint.to_string(),
            weight,
        })
    }
}

impl<K: EndpointKey, S> Default for EndpointSet<K, S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: EndpointKey, S> EndpointSet<K, S> {
    /// An empty set with default settings.
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// Settings for a new set.
    pub fn builder() -> EndpointSetBuilder {
        EndpointSetBuilder::default()
    }

    /// Starts active health checks of every endpoint in a background task (needs a tokio
    /// runtime). Endpoints failing `fall` probes in a row stop getting traffic until they pass
    /// `rise` in a row. The task ends when the set is dropped or [`ActiveHealth::stop`] is called.
    ///
    /// [`ActiveHealth::stop`]: crate::health::ActiveHealth::stop
    pub fn spawn_active_health<C>(
        &self,
        probe: C,
        config: ActiveHealthConfig,
    ) -> Result<ActiveHealth, Error>
    where
        C: Probe<K>,
        S: Send + Sync + 'static,
    {
        config.validate()?;
        let seed = self.inner.shared.rng.next_u64();
        Ok(crate::health::active::spawn(
            Arc::downgrade(&self.inner),
            probe,
            config,
            SharedRng::seeded(seed),
        ))
    }

    /// The current snapshot (a cheap `Arc` clone).
    pub fn snapshot(&self) -> Arc<Snapshot<K, S>> {
        self.inner.current.load_full()
    }

    /// Borrow of the current snapshot without touching its reference count (fastest for one pick).
    #[inline]
    pub fn load(&self) -> arc_swap::Guard<Arc<Snapshot<K, S>>> {
        self.inner.current.load()
    }

    /// Number of endpoints.
    pub fn len(&self) -> usize {
        self.inner.current.load().len()
    }

    /// Whether the set has no endpoints.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every endpoint's key, weight, health, ejection, in-flight count and latency estimate.
    pub fn endpoints(&self) -> Vec<EndpointInfo<K>> {
        self.inner
            .current
            .load()
            .iter()
            .map(EndpointInfo::of)
            .collect()
    }

    /// Shared state of the endpoint with `key`.
    pub fn state(&self, key: &K) -> Option<Arc<EndpointState>> {
        let snapshot = self.inner.current.load();
        snapshot
            .iter()
            .find(|e| e.key() == key)
            .map(|e| Arc::clone(e.state()))
    }

    fn update(
        &self,
        change: impl FnOnce(&[Endpoint<K, S>]) -> Result<Vec<Endpoint<K, S>>, Error>,
    ) -> Result<(), Error> {
        let _writer = self.inner.write.lock();
        let current = self.inner.current.load_full();
        let next = change(current.entries())?;
        self.inner.shared.outlier.set_members(next.len());
        self.inner.current.store(Arc::new(Snapshot::new(next)));
        Ok(())
    }

    /// Adds an endpoint, or replaces the service and weight of an existing one (keeping its state).
    /// A weight that is not finite and > 0 is refused with an error naming the endpoint.
    /// An existing backup endpoint becomes a primary one.
    pub fn insert(&self, key: K, service: S, weight: f64) -> Result<(), Error>
    where
        S: Clone,
    {
        self.insert_as(key, service, weight, false)
    }

    /// Adds a backup endpoint (nginx `server ... backup`), or makes an existing endpoint a
    /// backup with this service and weight (keeping its state).
    ///
    /// Backups get requests only when no primary endpoint can take them: every primary ejected,
    /// failing active checks, draining or at its concurrency cap (or already tried by the
    /// request, for a retry). As soon as a primary can take a request again, new requests go to
    /// the primaries. The policy picks among the backups as it does among the primaries; their
    /// health, caps, weights and slow start work alike. Panic mode (health ignored) starts only
    /// when no endpoint, primary or backup, is healthy.
    ///
    /// The set does not know the policy: [`Balancer::insert_backup`](crate::Balancer::insert_backup)
    /// refuses backups with consistent hashing, as nginx does with `hash` and `ip_hash`.
    pub fn insert_backup(&self, key: K, service: S, weight: f64) -> Result<(), Error>
    where
        S: Clone,
    {
        self.insert_as(key, service, weight, true)
    }

    fn insert_as(&self, key: K, service: S, weight: f64, backup: bool) -> Result<(), Error>
    where
        S: Clone,
    {
        check_weight(&key, weight)?;
        let shared = &self.inner.shared;
        let max = self.inner.max_in_flight.unwrap_or(0);
        self.update(|entries| {
            let mut next: Vec<Endpoint<K, S>> = entries.to_vec();
            if let Some(existing) = next.iter_mut().find(|e| e.key() == &key) {
                existing.state().set_weight(weight);
                *existing = existing.with_service(service, backup);
            } else {
                let state = Arc::new(EndpointState::new(
                    key.to_string().into(),
                    weight,
                    max,
                    Arc::clone(shared),
                ));
                if !entries.is_empty() {
                    state.begin_slow_start();
                }
                tracing::info!(endpoint = %key, weight, backup, "endpoint added");
                next.push(Endpoint::new(key, service, state, backup));
            }
            Ok(next)
        })
    }

    /// Removes an endpoint at once (in-flight requests finish on their own). Returns whether it
    /// was present. See [`drain`](Self::drain) for a graceful removal.
    pub fn remove(&self, key: &K) -> bool
    where
        S: Clone,
    {
        let mut removed = false;
        let _ = self.update(|entries| {
            let mut next = Vec::with_capacity(entries.len());
            for e in entries {
                if e.key() == key {
                    e.state().leave();
                    removed = true;
                } else {
                    next.push(e.clone());
                }
            }
            Ok(next)
        });
        if removed {
            tracing::info!(endpoint = %key, "endpoint removed");
        }
        removed
    }

    /// Changes an endpoint's weight.
    pub fn set_weight(&self, key: &K, weight: f64) -> Result<(), Error>
    where
        S: Clone,
    {
        check_weight(key, weight)?;
        self.update(|entries| {
            let e =
                entries
                    .iter()
                    .find(|e| e.key() == key)
                    .ok_or_else(|| Error::UnknownEndpoint {
                        endpoint: key.to_string(),
                    })?;
            e.state().set_weight(weight);
            // Rebuild so samplers and the hash ring see the new weight.
            Ok(entries.to_vec())
        })
    }

    /// Sets an endpoint's concurrency cap (`None`: unlimited).
    pub fn set_max_in_flight(&self, key: &K, max: Option<usize>) -> Result<(), Error> {
        let state = self.state(key).ok_or_else(|| Error::UnknownEndpoint {
            endpoint: key.to_string(),
        })?;
        state.set_max_in_flight(max.unwrap_or(0));
        Ok(())
    }

    /// Stops sending new requests to an endpoint at once; the returned future resolves when its
    /// in-flight requests have finished, and then removes it from the set.
    pub fn drain(&self, key: &K) -> Result<impl Future<Output = ()> + Send + 'static, Error>
    where
        S: Clone + Send + Sync + 'static,
    {
        let state = self.state(key).ok_or_else(|| Error::UnknownEndpoint {
            endpoint: key.to_string(),
        })?;
        state.start_draining();
        tracing::info!(endpoint = %key, in_flight = state.in_flight(), "draining endpoint");
        let set = self.clone();
        let key = key.clone();
        Ok(async move {
            state.wait_idle().await;
            // Remove only the drained endpoint, not a re-inserted one with the same key.
            let still_ours = set.state(&key).is_some_and(|s| Arc::ptr_eq(&s, &state));
            if still_ours {
                set.remove(&key);
            }
        })
    }

    /// Picks an endpoint with `policy` and takes an in-flight slot on it.
    ///
    /// Picks among the primary endpoints, and among the backups only when no primary can take
    /// the request (see [`insert_backup`](Self::insert_backup)). Falls back to ignoring health (panic mode) when no healthy endpoint is available, and to
    /// ignoring `ctx`'s exclusions when they rule out everything. Fails with
    /// [`PickError::NoEndpoints`] or [`PickError::Overloaded`] (without waiting; see
    /// [`pick_wait`](Self::pick_wait)).
    #[inline]
    pub fn pick<P: Pick + ?Sized>(
        &self,
        policy: &P,
        ctx: &PickContext<'_>,
    ) -> Result<Picked<S>, PickError>
    where
        S: Clone,
    {
        let timed;
        let ctx = if policy.uses_latency() {
            timed = ctx.timed();
            &timed
        } else {
            ctx
        };
        pick_from(&self.inner.current.load(), policy, ctx)
    }

    /// A handle that does not keep the set alive (discovery feeds end when the set is dropped).
    pub(crate) fn downgrade(&self) -> std::sync::Weak<SetInner<K, S>> {
        Arc::downgrade(&self.inner)
    }

    /// The set behind a [`downgrade`](Self::downgrade)d handle, while it lives.
    pub(crate) fn upgrade(weak: &std::sync::Weak<SetInner<K, S>>) -> Option<Self> {
        weak.upgrade().map(|inner| Self { inner })
    }

    /// A per-handle cache of the current snapshot: loading it is one atomic read while the set
    /// is unchanged (used by `Balancer`, whose `call` has `&mut self`).
    pub(crate) fn snapshot_cache(&self) -> SnapshotCache<K, S> {
        arc_swap::Cache::new(CurrentSnapshot(Arc::clone(&self.inner)))
    }
}

/// Cached view of a set's current snapshot.
pub(crate) type SnapshotCache<K, S> = arc_swap::Cache<CurrentSnapshot<K, S>, Arc<Snapshot<K, S>>>;

/// Derefs to the set's `ArcSwap`, for [`arc_swap::Cache`].
pub(crate) struct CurrentSnapshot<K, S>(Arc<SetInner<K, S>>);

impl<K, S> Clone for CurrentSnapshot<K, S> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<K, S> std::ops::Deref for CurrentSnapshot<K, S> {
    type Target = ArcSwap<Snapshot<K, S>>;

    fn deref(&self) -> &Self::Target {
        &self.0.current
    }
}

/// Picks from `snapshot` and takes a slot. When the policy [uses latency](Pick::uses_latency),
/// `ctx` should be [timed](PickContext::timed): one clock reading then serves the pick and the
/// start of the request's latency. Otherwise the slot decides whether the request is timed.
#[inline]
pub(crate) fn pick_from<K, S: Clone, P: Pick + ?Sized>(
    snapshot: &Snapshot<K, S>,
    policy: &P,
    ctx: &PickContext<'_>,
) -> Result<Picked<S>, PickError> {
    // The common case: the policy's choice has a free slot. The state comes from the
    // candidates, whose entry the policy has just read (the endpoint's entry is then touched only
    // for its service).
    let candidates = snapshot.candidates();
    if let Some(index) = policy.pick(candidates, ctx)
        && let Some(state) = candidates.state(index)
        && let Some(endpoint) = snapshot.get(index)
        && let Some(guard) = state.acquire(index, ctx.ignore_health(), ctx.reading())
    {
        return Ok(Picked {
            guard,
            service: endpoint.service().clone(),
        });
    }
    pick_with_fallbacks(snapshot, policy, ctx)
}

/// [`pick_from`] after its first attempt failed: fallbacks (exclusions lifted, panic mode) and
/// a few rounds against other requests racing for the last slots.
#[cold]
#[inline(never)]
fn pick_with_fallbacks<K, S: Clone, P: Pick + ?Sized>(
    snapshot: &Snapshot<K, S>,
    policy: &P,
    ctx: &PickContext<'_>,
) -> Result<Picked<S>, PickError> {
    {
        // A pick races with other requests for the last slot; a few rounds settle it.
        for _ in 0..4 {
            let Some((index, ignore_health)) = choose(snapshot, policy, ctx) else {
                break;
            };
            let Some(endpoint) = snapshot.get(index) else {
                break;
            };
            if let Some(guard) = endpoint
                .state()
                .acquire(index, ignore_health, ctx.reading())
            {
                return Ok(Picked {
                    guard,
                    service: endpoint.service().clone(),
                });
            }
        }
        Err(classify_failure(snapshot, Duration::ZERO))
    }
}

impl<K: EndpointKey, S> EndpointSet<K, S> {
    /// Like [`pick`](Self::pick), but when every endpoint is at its concurrency cap, waits up to
    /// `max_wait` for a slot before failing with [`PickError::Overloaded`].
    pub async fn pick_wait<P: Pick + ?Sized>(
        &self,
        policy: &P,
        ctx: &PickContext<'_>,
        max_wait: Duration,
    ) -> Result<Picked<S>, PickError>
    where
        S: Clone,
    {
        match self.pick(policy, ctx) {
            Err(PickError::Overloaded { .. }) if !max_wait.is_zero() => {}
            other => return other,
        }
        let shared = &self.inner.shared;
        let started = Instant::now();
        let deadline = started + max_wait;
        shared.waiting.fetch_add(1, Ordering::AcqRel);
        let result = loop {
            let released = shared.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            match self.pick(policy, ctx) {
                Err(PickError::Overloaded { .. }) => {}
                other => break other,
            }
            if tokio::time::timeout_at(deadline, released).await.is_err() {
                break match self.pick(policy, ctx) {
                    Err(PickError::Overloaded { endpoints, .. }) => Err(PickError::Overloaded {
                        endpoints,
                        waited: started.elapsed(),
                    }),
                    other => other,
                };
            }
        };
        shared.waiting.fetch_sub(1, Ordering::AcqRel);
        result
    }
}

/// Runs the policy over the primary endpoints; then over the backups (nginx: a request goes to
/// the backups once no primary can take it, tried ones included); then both without the
/// caller's exclusions (a retry may reuse a tried endpoint rather than fail); then, only when no
/// endpoint is healthy at all, in panic mode (health ignored). A set that is merely full never
/// falls back to unhealthy endpoints. Indices returned are snapshot positions.
#[inline]
fn choose<K, S, P: Pick + ?Sized>(
    snapshot: &Snapshot<K, S>,
    policy: &P,
    ctx: &PickContext<'_>,
) -> Option<(usize, bool)> {
    let c = snapshot.candidates();
    if let Some(i) = policy.pick(c, ctx) {
        return Some((i, ctx.ignore_health()));
    }
    let backups = snapshot.backups();
    if c.is_empty() && backups.is_none() {
        return None;
    }
    let among_backups = |ctx: &PickContext<'_>| {
        let backups = backups?;
        let offset = snapshot.primaries();
        let excluded;
        let local = if ctx.has_exclusions() {
            excluded = ctx.exclusions_from(offset);
            ctx.excluding(&excluded)
        } else {
            *ctx
        };
        policy
            .pick(backups, &local)
            .and_then(|i| i.checked_add(offset))
    };
    if let Some(i) = among_backups(ctx) {
        return Some((i, ctx.ignore_health()));
    }
    let unrestricted = PickContext::new()
        .with_key(ctx.key())
        .ignoring_health(ctx.ignore_health());
    if ctx.has_exclusions()
        && let Some(i) = policy
            .pick(c, &unrestricted)
            .or_else(|| among_backups(&unrestricted))
    {
        return Some((i, ctx.ignore_health()));
    }
    let any_healthy = c
        .states()
        .chain(backups.into_iter().flat_map(Candidates::states))
        .any(|s| s.unflagged() && s.status() != crate::EndpointStatus::Draining);
    if ctx.ignore_health() || any_healthy {
        return None;
    }
    tracing::debug!("no healthy endpoint: ignoring health (panic mode)");
    let panicking = ctx.ignoring_health(true);
    let unrestricted = unrestricted.ignoring_health(true);
    policy
        .pick(c, &panicking)
        .or_else(|| policy.pick(c, &unrestricted))
        .or_else(|| among_backups(&panicking))
        .or_else(|| among_backups(&unrestricted))
        .map(|i| (i, true))
}

fn classify_failure<K, S>(snapshot: &Snapshot<K, S>, waited: Duration) -> PickError {
    let serving = snapshot
        .iter()
        .filter(|e| e.state().status() != crate::EndpointStatus::Draining)
        .count();
    if serving == 0 {
        PickError::NoEndpoints
    } else {
        PickError::Overloaded {
            endpoints: snapshot.len(),
            waited,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{P2c, PeakEwma};

    #[test]
    fn a_latency_policy_times_every_request_others_one_in_sampling() {
        let set: EndpointSet<&str> = EndpointSet::new();
        set.insert("a", (), 1.0).expect("valid weight");
        let timed = |policy: &dyn Pick| {
            (0..16)
                .filter(|_| {
                    let picked = set.pick(policy, &PickContext::new()).expect("endpoint");
                    let timed = picked.guard.is_timed();
                    picked.guard.success();
                    timed
                })
                .count()
        };
        assert_eq!(timed(&P2c::seeded(1)), 2);
        assert_eq!(timed(&PeakEwma::seeded(1)), 16);
    }
}
