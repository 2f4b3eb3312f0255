//! Immutable endpoint snapshots that policies pick from.

use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rand::distr::Distribution;
use rand::distr::weighted::WeightedIndex;
use tokio::time::Instant;
use xxhash_rust::xxh3::xxh3_64;

use crate::endpoint::{Availability, EndpointState, EndpointStatus};
use crate::latency::LatencyCounts;
use crate::rng::SharedRng;

/// A hashed request key for consistent hashing (client IP, header, cookie ...).
///
/// Keys made by [`of`](Self::of) and [`of_ip`](Self::of_ip) are XXH3-64 hashes, an algorithm
/// with a specification and reference test vectors: a value maps to the same point of the ring
/// in every gateway of a fleet, whatever compiler or herd version built it (a rolling upgrade
/// keeps every key where it was). A key made from a number of your own (`RequestKey(n)`) is used
/// as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestKey(pub u64);

impl RequestKey {
    /// The key of `bytes`: their XXH3-64 hash with seed 0.
    ///
    /// ```
    /// # use herd_lb_core::RequestKey;
    /// assert_eq!(RequestKey::of("user-42"), RequestKey(0x50fe_4b21_cf7b_09cd));
    /// ```
    pub fn of(bytes: impl AsRef<[u8]>) -> Self {
        Self(xxh3_64(bytes.as_ref()))
    }

    /// The key of a client address: [`of`](Self::of) its octets, 4 for IPv4 and 16 for IPv6; an
    /// IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, how a dual-stack socket shows an IPv4 client)
    /// counts as the IPv4 address.
    pub fn of_ip(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Self::of(v4.octets()),
            IpAddr::V6(v6) => Self::of(v6.octets()),
        }
    }
}

/// The hash of an endpoint: XXH3-64 of its key's `Display` form (its label) with seed 0.
fn endpoint_hash(label: &str) -> u64 {
    xxh3_64(label.as_bytes())
}

/// Point `replica` of an endpoint on the hash ring: XXH3-64 (seed 0) of 12 bytes, the
/// endpoint's hash (little-endian) and then `replica` (little-endian `u32`).
///
/// Not the label hashed with `replica` as the seed: for inputs of up to 3 bytes XXH3 XORs the
/// seed into the bytes, so endpoints whose short labels differ in their last byte (`ep3`,
/// `ep4`) would share most points and one would take the other's keys.
fn ring_point(endpoint_hash: u64, replica: u32) -> u64 {
    let mut input = [0u8; 12];
    let (hash, index) = input.split_at_mut(8);
    hash.copy_from_slice(&endpoint_hash.to_le_bytes());
    index.copy_from_slice(&replica.to_le_bytes());
    xxh3_64(&input)
}

/// What a pick should take into account besides load and health.
#[derive(Debug, Clone, Copy, Default)]
pub struct PickContext<'a> {
    key: Option<RequestKey>,
    exclude: &'a [usize],
    ignore_health: bool,
    /// Raw clock ticks when the pick started, once read (see [`clock::raw`](crate::ewma::clock::raw)).
    now: Option<u64>,
}

impl<'a> PickContext<'a> {
    /// No key, nothing excluded.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the request key used by consistent hashing.
    pub fn with_key(mut self, key: Option<RequestKey>) -> Self {
        self.key = key;
        self
    }

    /// Endpoint indices not to pick (already tried by this request).
    pub fn excluding(mut self, exclude: &'a [usize]) -> Self {
        self.exclude = exclude;
        self
    }

    /// Panic mode: pick among endpoints regardless of health.
    pub fn ignoring_health(mut self, ignore: bool) -> Self {
        self.ignore_health = ignore;
        self
    }

    /// The request key, if any.
    pub fn key(&self) -> Option<RequestKey> {
        self.key
    }

    /// Whether health is being ignored (panic mode).
    pub fn ignore_health(&self) -> bool {
        self.ignore_health
    }

    /// Whether the caller excluded any endpoint.
    pub fn has_exclusions(&self) -> bool {
        !self.exclude.is_empty()
    }

    /// The pick's clock reading (raw ticks), read now if not yet: one reading serves a
    /// latency-aware policy and the start of the request's latency.
    #[inline]
    pub(crate) fn now(&self) -> u64 {
        self.now.unwrap_or_else(crate::ewma::clock::raw)
    }

    /// The clock reading of [`timed`](Self::timed), if any: the request is then timed from it.
    #[inline]
    pub(crate) fn reading(&self) -> Option<u64> {
        self.now
    }

    /// With the clock read once for the whole pick.
    #[inline]
    pub(crate) fn timed(self) -> Self {
        Self {
            now: Some(self.now()),
            ..self
        }
    }

    /// Whether `index` was excluded by the caller.
    #[inline]
    pub fn is_excluded(&self, index: usize) -> bool {
        !self.exclude.is_empty() && self.exclude.contains(&index)
    }

    /// The exclusions at or after snapshot position `offset`, counted from it: the backups'
    /// own indices for a pick among [`Snapshot::backups`].
    pub(crate) fn exclusions_from(&self, offset: usize) -> Vec<usize> {
        self.exclude
            .iter()
            .filter_map(|&i| i.checked_sub(offset))
            .collect()
    }
}

/// The endpoints of one snapshot as policies see them: shared state, weights at snapshot time,
/// and helpers for weighted sampling. For the primary endpoints
/// ([`Snapshot::candidates`]) indices are positions in the snapshot; for the backups
/// ([`Snapshot::backups`]) they count from the first backup, at position
/// [`Snapshot::primaries`].
pub struct Candidates {
    states: Vec<Arc<EndpointState>>,
    weights: Vec<f64>,
    key_hashes: Vec<u64>,
    total_weight: f64,
    max_weight: f64,
    sampler: Option<WeightedIndex<f64>>,
    ring: OnceLock<Ring>,
}

impl fmt::Debug for Candidates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Candidates")
            .field("len", &self.states.len())
            .field("uniform_weights", &self.sampler.is_none())
            .finish_non_exhaustive()
    }
}

/// Attempts of rejection sampling before scanning all endpoints.
const SAMPLE_TRIES: usize = 8;

impl Candidates {
    pub(crate) fn new(states: Vec<Arc<EndpointState>>) -> Self {
        let weights: Vec<f64> = states.iter().map(|s| s.weight()).collect();
        let key_hashes = states.iter().map(|s| endpoint_hash(s.label())).collect();
        let total_weight = weights.iter().sum();
        let max_weight = weights.iter().copied().fold(0.0, f64::max);
        let uniform = weights.windows(2).all(|w| w[0] == w[1]);
        let sampler = if uniform {
            None
        } else {
            WeightedIndex::new(weights.iter().copied()).ok()
        };
        Self {
            states,
            weights,
            key_hashes,
            total_weight,
            max_weight,
            sampler,
            ring: OnceLock::new(),
        }
    }

    /// Number of endpoints.
    #[inline]
    pub fn len(&self) -> usize {
        self.states.len()
    }

    /// Whether there are no endpoints.
    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }

    /// Shared state of endpoint `index`.
    #[inline]
    pub fn state(&self, index: usize) -> Option<&Arc<EndpointState>> {
        self.states.get(index)
    }

    /// Iterates over every endpoint's shared state, in index order.
    pub fn states(&self) -> impl Iterator<Item = &Arc<EndpointState>> {
        self.states.iter()
    }

    /// Weight of endpoint `index` when the snapshot was built (0 when out of range).
    pub fn weight(&self, index: usize) -> f64 {
        self.weights.get(index).copied().unwrap_or(0.0)
    }

    /// Sum of all weights.
    pub fn total_weight(&self) -> f64 {
        self.total_weight
    }

    /// Whether all endpoints have the same weight.
    pub fn uniform_weights(&self) -> bool {
        self.sampler.is_none()
    }

    /// Whether endpoint `index` may be picked under `ctx` (not excluded, not draining, below its
    /// concurrency cap, and healthy unless `ctx` ignores health).
    #[inline]
    pub fn is_available(&self, index: usize, ctx: &PickContext<'_>) -> bool {
        if ctx.is_excluded(index) {
            return false;
        }
        self.states
            .get(index)
            .is_some_and(|s| s.availability(ctx.ignore_health) != Availability::No)
    }

    /// One index drawn with probability proportional to the weights (availability not checked).
    #[inline]
    pub fn sample(&self, rng: &SharedRng) -> usize {
        match &self.sampler {
            None => rng.below(self.states.len()),
            Some(dist) => dist.sample(&mut rng.as_rng()),
        }
    }

    /// One available index drawn with probability proportional to the effective weights
    /// (weights reduced by slow start), or `None` when nothing is available.
    ///
    /// Draws by the static weights and rejects unavailable or ramping endpoints, which keeps a
    /// pick O(1) (O(log n) with unequal weights); after a few rejections it scans all endpoints.
    #[inline(always)]
    pub fn sample_available(&self, rng: &SharedRng, ctx: &PickContext<'_>) -> Option<usize> {
        self.available_from(self.sample(rng), rng, ctx)
    }

    /// Two draws for the power of two choices. With equal weights they are two different
    /// endpoints (when there are two), both from one 64-bit random number (32 bits each, plenty
    /// below 2^32 endpoints): drawn with replacement, a slow endpoint among three would keep the
    /// 1/9 of picks where both draws land on it, however slow it gets. With weights they are two
    /// independent draws of [`sample`](Self::sample), so the weights give the expected shares.
    #[inline(always)]
    pub(crate) fn sample_two(&self, rng: &SharedRng) -> (usize, usize) {
        match (&self.sampler, u32::try_from(self.states.len())) {
            (None, Ok(n)) if n >= 2 => {
                let r = rng.next_u64();
                let first = ((r & u64::from(u32::MAX)) * u64::from(n)) >> 32;
                // One of the n - 1 others: drawn below n - 1, shifted past `first`.
                let other = ((r >> 32) * u64::from(n - 1)) >> 32;
                let second = other + u64::from(other >= first);
                (first as usize, second as usize)
            }
            (None, Ok(_)) => (0, 0),
            _ => (self.sample(rng), self.sample(rng)),
        }
    }

    /// [`sample_available`](Self::sample_available) with `i` as its first draw.
    #[inline(always)]
    pub(crate) fn available_from(
        &self,
        i: usize,
        rng: &SharedRng,
        ctx: &PickContext<'_>,
    ) -> Option<usize> {
        // The common case in one flags read, inlined into the policy; the same decision the
        // general rules would make for this draw.
        if let Some(state) = self.states.get(i)
            && state.plainly_ready()
            && !ctx.is_excluded(i)
        {
            return Some(i);
        }
        self.sample_available_slow(rng, ctx, i)
    }

    /// [`sample_available`](Self::sample_available) from its first draw `first` on.
    #[cold]
    #[inline(never)]
    fn sample_available_slow(
        &self,
        rng: &SharedRng,
        ctx: &PickContext<'_>,
        first: usize,
    ) -> Option<usize> {
        if self.states.is_empty() {
            return None;
        }
        let mut i = first;
        for _ in 0..SAMPLE_TRIES {
            if let Some(state) = self.states.get(i)
                && self.is_available(i, ctx)
                && !(state.in_slow_start() && rng.unit_f64() >= state.slow_start_factor())
            {
                return Some(i);
            }
            i = self.sample(rng);
        }
        self.scan_weighted(rng, ctx, |_| 0.0)
    }

    /// Weighted reservoir scan: among available endpoints with the lowest `cost`, one drawn with
    /// probability proportional to its effective weight. O(n).
    pub fn scan_weighted(
        &self,
        rng: &SharedRng,
        ctx: &PickContext<'_>,
        cost: impl Fn(&EndpointState) -> f64,
    ) -> Option<usize> {
        let mut best: Option<usize> = None;
        let mut best_cost = f64::INFINITY;
        let mut tied_weight = 0.0;
        for (i, state) in self.states.iter().enumerate() {
            if !self.is_available(i, ctx) {
                continue;
            }
            let c = cost(state);
            let w = state.effective_weight().max(f64::MIN_POSITIVE);
            if best.is_none() || c < best_cost {
                best = Some(i);
                best_cost = c;
                tied_weight = w;
            } else if c == best_cost {
                tied_weight += w;
                if rng.unit_f64() * tied_weight < w {
                    best = Some(i);
                }
            }
        }
        best
    }

    /// Hash of endpoint `index`'s key: XXH3-64 of its `Display` form (0 when out of range).
    pub fn key_hash(&self, index: usize) -> u64 {
        self.key_hashes.get(index).copied().unwrap_or(0)
    }

    /// The consistent-hash ring (built on first use, once per snapshot).
    pub(crate) fn ring(&self) -> &Ring {
        self.ring.get_or_init(|| Ring::build(self))
    }
}

/// Points per endpoint of the heaviest weight on the hash ring (ketama uses 160).
const RING_POINTS: f64 = 160.0;

/// A consistent-hash ring: sorted points, each owned by an endpoint index.
#[derive(Debug)]
pub(crate) struct Ring {
    points: Vec<(u64, u32)>,
}

impl Ring {
    fn build(c: &Candidates) -> Self {
        let mut points = Vec::new();
        for (i, &weight) in c.weights.iter().enumerate() {
            let Ok(owner) = u32::try_from(i) else { break };
            let share = if c.max_weight > 0.0 {
                weight / c.max_weight
            } else {
                1.0
            };
            let count = (share * RING_POINTS).round().max(1.0) as u32;
            let endpoint_hash = c.key_hash(i);
            for replica in 0..count {
                points.push((ring_point(endpoint_hash, replica), owner));
            }
        }
        points.sort_unstable();
        Self { points }
    }

    /// Endpoint indices clockwise from `hash`, one per ring point (an endpoint repeats).
    pub(crate) fn walk(&self, hash: u64) -> impl Iterator<Item = usize> + '_ {
        let start = self.points.partition_point(|&(p, _)| p < hash);
        let (after, before) = self.points.split_at(start.min(self.points.len()));
        before.iter().chain(after).map(|&(_, i)| i as usize)
    }
}

/// One endpoint of a snapshot: its key, its service (or any per-endpoint payload), its state.
pub struct Endpoint<K, S = ()> {
    key: K,
    service: S,
    state: Arc<EndpointState>,
    backup: bool,
}

impl<K: fmt::Debug, S> fmt::Debug for Endpoint<K, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("key", &self.key)
            .field("state", &self.state)
            .field("backup", &self.backup)
            .finish_non_exhaustive()
    }
}

impl<K: Clone, S: Clone> Clone for Endpoint<K, S> {
    fn clone(&self) -> Self {
        Self {
            key: self.key.clone(),
            service: self.service.clone(),
            state: Arc::clone(&self.state),
            backup: self.backup,
        }
    }
}

impl<K, S> Endpoint<K, S> {
    pub(crate) fn new(key: K, service: S, state: Arc<EndpointState>, backup: bool) -> Self {
        Self {
            key,
            service,
            state,
            backup,
        }
    }

    /// Whether the endpoint is a backup (nginx `server ... backup`): it gets requests only when
    /// no primary endpoint can take them.
    pub fn is_backup(&self) -> bool {
        self.backup
    }

    /// The endpoint's key.
    pub fn key(&self) -> &K {
        &self.key
    }

    /// The endpoint's service (or payload).
    pub fn service(&self) -> &S {
        &self.service
    }

    /// The endpoint's shared load and health state.
    pub fn state(&self) -> &Arc<EndpointState> {
        &self.state
    }

    pub(crate) fn with_service(&self, service: S, backup: bool) -> Self
    where
        K: Clone,
    {
        Self {
            key: self.key.clone(),
            service,
            state: Arc::clone(&self.state),
            backup,
        }
    }
}

/// An immutable set of endpoints; membership changes build a new one and swap it in atomically.
///
/// The primary endpoints come first (positions `0..primaries()`), the backups after them.
pub struct Snapshot<K, S = ()> {
    entries: Vec<Endpoint<K, S>>,
    candidates: Candidates,
    /// The backups' candidates, `None` when there is no backup.
    backups: Option<Box<Candidates>>,
    primaries: usize,
}

impl<K: fmt::Debug, S> fmt::Debug for Snapshot<K, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("endpoints", &self.entries)
            .finish()
    }
}

impl<K, S> Snapshot<K, S> {
    /// A snapshot of `entries`, reordered (stably) to put the primaries before the backups.
    pub(crate) fn new(mut entries: Vec<Endpoint<K, S>>) -> Self {
        entries.sort_by_key(|e| e.backup);
        let primaries = entries.iter().take_while(|e| !e.backup).count();
        let (primary, backup) = entries.split_at(primaries);
        let states = |es: &[Endpoint<K, S>]| es.iter().map(|e| Arc::clone(&e.state)).collect();
        let backups = (!backup.is_empty()).then(|| Box::new(Candidates::new(states(backup))));
        Self {
            candidates: Candidates::new(states(primary)),
            backups,
            primaries,
            entries,
        }
    }

    /// Number of endpoints.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the snapshot has no endpoints.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Endpoint at `index`.
    pub fn get(&self, index: usize) -> Option<&Endpoint<K, S>> {
        self.entries.get(index)
    }

    /// All endpoints in index order.
    pub fn iter(&self) -> impl Iterator<Item = &Endpoint<K, S>> {
        self.entries.iter()
    }

    /// The policy-facing view of the primary endpoints (every endpoint when there is no
    /// backup).
    #[inline]
    pub fn candidates(&self) -> &Candidates {
        &self.candidates
    }

    /// The policy-facing view of the backup endpoints, `None` when there is none. Their indices
    /// count from the first backup: backup `i` is at position [`primaries`](Self::primaries)` + i`.
    pub fn backups(&self) -> Option<&Candidates> {
        self.backups.as_deref()
    }

    /// Number of primary endpoints, the position of the first backup.
    pub fn primaries(&self) -> usize {
        self.primaries
    }

    /// Index of the endpoint with `key`.
    pub fn position(&self, key: &K) -> Option<usize>
    where
        K: PartialEq,
    {
        self.entries.iter().position(|e| &e.key == key)
    }

    pub(crate) fn entries(&self) -> &[Endpoint<K, S>] {
        &self.entries
    }
}

/// A point-in-time view of one endpoint, returned by
/// [`EndpointSet::endpoints`](crate::EndpointSet::endpoints) and
/// [`Balancer::endpoints`](crate::Balancer::endpoints) (for health reporting and admin pages).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct EndpointInfo<K> {
    /// The endpoint's key.
    pub key: K,
    /// Configured weight.
    pub weight: f64,
    /// Weight after slow start.
    pub effective_weight: f64,
    /// Where it stands (healthy, ejected, draining ...).
    pub status: EndpointStatus,
    /// Neither ejected nor failing active checks.
    pub healthy: bool,
    /// A backup endpoint (nginx `server ... backup`): it gets requests only when no primary
    /// endpoint can take them.
    pub backup: bool,
    /// When the current ejection ends.
    pub ejected_until: Option<Instant>,
    /// Requests in flight.
    pub in_flight: usize,
    /// Peak-EWMA latency estimate, from the requests whose latency is measured (every request
    /// with a latency-aware policy, else 1 in [`EwmaConfig::sampling`](crate::EwmaConfig::sampling)).
    pub ewma: Duration,
    /// Requests completed since the endpoint joined.
    pub requests: u64,
    /// Of those, failures.
    pub failures: u64,
    /// The timed requests' latencies since the endpoint joined, bucketed: the difference of two
    /// readings ([`LatencyCounts::since`]) gives the p99 between them.
    pub latency: LatencyCounts,
}

impl<K: Clone> EndpointInfo<K> {
    pub(crate) fn of(endpoint: &Endpoint<K, impl Sized>) -> Self {
        let s = &endpoint.state;
        let (requests, failures) = s.completed();
        Self {
            key: endpoint.key.clone(),
            weight: s.weight(),
            effective_weight: s.effective_weight(),
            status: s.status(),
            healthy: s.is_healthy(),
            backup: endpoint.backup,
            ejected_until: s.ejected_until(),
            in_flight: s.in_flight(),
            ewma: s.ewma(),
            requests,
            failures,
            latency: s.latency(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Pinned: a change of algorithm, seed or input bytes moves keys between endpoints, which a
    // fleet in a rolling upgrade must not see. The values are those of the reference C
    // implementation (libxxhash 0.8.1, `XXH3_64bits` and `XXH3_64bits_withSeed`).
    #[test]
    fn request_keys_and_ring_points_are_pinned_xxh3_values() {
        assert_eq!(RequestKey::of(b"").0, 0x2d06_8005_38d3_94c2);
        assert_eq!(RequestKey::of("user-42").0, 0x50fe_4b21_cf7b_09cd);
        assert_eq!(
            RequestKey::of(b"abc123".as_slice()).0,
            0x3373_9d7b_b974_4cd0
        );
        let v4: IpAddr = "192.0.2.1".parse().expect("address");
        assert_eq!(RequestKey::of_ip(v4).0, 0x2c1c_901e_ed9a_dc4a);
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().expect("address");
        assert_eq!(RequestKey::of_ip(mapped), RequestKey::of_ip(v4));
        let v6: IpAddr = "2001:db8::1".parse().expect("address");
        assert_eq!(RequestKey::of_ip(v6).0, 0x275c_8fa5_8c2d_19a0);

        assert_eq!(endpoint_hash("10.0.0.1:8000"), 0xb11b_d3b3_7e70_3127);
        let endpoint = endpoint_hash("10.0.0.1:8000");
        assert_eq!(ring_point(endpoint, 0), 0xbae6_30d7_131e_55cb);
        assert_eq!(ring_point(endpoint, 1), 0x3e00_45cc_8b81_b32f);
        assert_eq!(ring_point(endpoint, 2), 0x6b3b_aa78_0e95_b389);
    }
}
