//! Per-endpoint load state (in-flight and completed counts, cap, weight, latency, slow start,
//! drain), shared through `Arc`s so it survives membership changes. Outlier detection keeps its
//! part of the state in [`Ejection`], beside its rules in `health::passive`.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::ewma::{EwmaConfig, EwmaEstimate, clock};
use crate::health::passive::{Ejection, OutlierDetector};
use crate::health::{OutlierDetection, SlowStart};
use crate::latency::{LatencyCounts, LatencyHistogram};
use crate::metrics::EndpointMetrics;
use crate::rng::SharedRng;

/// Flag: ejected by outlier detection (set and cleared by [`Ejection`]).
pub(crate) const EJECTED: u8 = 1;
/// Flag: failing its active health checks.
pub(crate) const ACTIVE_DOWN: u8 = 2;
const DRAINING: u8 = 4;
const SLOW_START: u8 = 8;

/// The low half of [`EndpointState::load`] counts requests in flight, the high half requests
/// completed (modulo 2^32).
const IN_FLIGHT_MASK: u64 = u32::MAX as u64;
/// One completed request in [`EndpointState::load`].
const COMPLETED_ONE: u64 = 1 << 32;
/// In-flight requests per endpoint beyond which acquiring fails as if at a cap, far below the
/// 2^32 that would carry into the completed half.
const IN_FLIGHT_LIMIT: u64 = 1 << 31;

/// What every endpoint of one [`EndpointSet`](crate::EndpointSet) shares: the set's settings,
/// its outlier detector, its random source and the wait for a free slot.
#[derive(Debug)]
pub(crate) struct SetShared {
    pub(crate) outlier: OutlierDetector,
    pub(crate) slow_start: Option<SlowStart>,
    pub(crate) ewma: EwmaConfig,
    /// [`EwmaConfig::sampling_mask`] of `ewma`.
    latency_mask: u64,
    /// Ejection jitter; seeds the active health task.
    pub(crate) rng: SharedRng,
    /// Callers waiting for any endpoint to free a slot.
    pub(crate) waiting: AtomicUsize,
    pub(crate) released: Notify,
}

impl SetShared {
    pub(crate) fn new(
        outlier: OutlierDetection,
        slow_start: Option<SlowStart>,
        ewma: EwmaConfig,
        rng: SharedRng,
    ) -> Self {
        Self {
            outlier: OutlierDetector::new(outlier),
            slow_start,
            latency_mask: ewma.sampling_mask(),
            ewma,
            rng,
            waiting: AtomicUsize::new(0),
            released: Notify::new(),
        }
    }
}

/// Where an endpoint stands, as shown by [`EndpointInfo`](crate::EndpointInfo).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointStatus {
    /// Takes requests.
    Healthy,
    /// Takes requests with a reduced weight while its slow-start window lasts.
    SlowStart,
    /// Ejected by outlier detection (passive health); see [`EndpointInfo::ejected_until`](crate::EndpointInfo::ejected_until).
    Ejected,
    /// Failed its active health checks.
    Unhealthy,
    /// Draining: takes no new requests, waits for in-flight ones.
    Draining,
}

/// Load, latency and health of one endpoint.
///
/// Created by an [`EndpointSet`](crate::EndpointSet) and kept in an `Arc` that every snapshot
/// containing the endpoint shares, so counters survive inserts, removals and weight changes of
/// other endpoints. Reads are lock-free, except that those of an ejected endpoint's state
/// ([`status`](Self::status), [`is_healthy`](Self::is_healthy),
/// [`ejected_until`](Self::ejected_until)) and of a ramping endpoint's
/// [`effective_weight`](Self::effective_weight) take a short lock.
// `repr(C)` keeps the fields in this order and `align(64)` starts them on a cache line: the
// first line holds everything a pick touches on its endpoint (in-flight and completed counts,
// cap, flags, the EWMA, the run of failures that starts `ejection`), the second the set's
// settings and the metric handles a request records to; the rest is cold. With many endpoints, a
// request then misses the cache on one 128-byte pair of lines per endpoint (which x86's
// adjacent-line prefetcher fetches together), not on six lines (`tests::hot_fields_share_two_lines`).
#[repr(C, align(64))]
pub struct EndpointState {
    /// Requests in flight (low 32 bits) and completed (high 32 bits, modulo 2^32): one atomic
    /// add takes a slot, one frees it and counts the request.
    load: AtomicU64,
    max_in_flight: AtomicUsize,
    flags: AtomicU8,
    ewma: EwmaEstimate,
    ejection: Ejection,
    set: Arc<SetShared>,
    metrics: EndpointMetrics,
    label: Arc<str>,
    weight_bits: AtomicU64,
    /// Times the completed count in `load` crossed a multiple of 2^31 (see `completed`).
    completed_half_turns: AtomicU64,
    failures: AtomicU64,
    /// Current weight of smooth weighted round robin; lives here so it survives updates.
    pub(crate) swrr_current: AtomicI64,
    slow_start_since: Mutex<Option<Instant>>,
    idle: Notify,
    /// The timed requests' latencies (cold: one add per timed request, after the EWMA's).
    latency: LatencyHistogram,
}

impl fmt::Debug for EndpointState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointState")
            .field("endpoint", &self.label)
            .field("weight", &self.weight())
            .field("in_flight", &self.in_flight())
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

/// Whether a pick may use an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Availability {
    Ready,
    /// Ejection time is over: one probe request may go.
    Probe,
    No,
}

impl EndpointState {
    pub(crate) fn new(
        label: Arc<str>,
        weight: f64,
        max_in_flight: usize,
        set: Arc<SetShared>,
    ) -> Self {
        let metrics = EndpointMetrics::new(&label);
        metrics.healthy.set(1.0);
        let ewma = EwmaEstimate::new(&set.ewma);
        Self {
            label,
            set,
            load: AtomicU64::new(0),
            max_in_flight: AtomicUsize::new(max_in_flight),
            weight_bits: AtomicU64::new(weight.to_bits()),
            flags: AtomicU8::new(0),
            ewma,
            ejection: Ejection::new(),
            slow_start_since: Mutex::new(None),
            idle: Notify::new(),
            swrr_current: AtomicI64::new(0),
            completed_half_turns: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            metrics,
            latency: LatencyHistogram::new(),
        }
    }

    /// The endpoint's name in metrics, spans and errors (its key's `Display`).
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Requests currently in flight on this endpoint.
    #[inline]
    pub fn in_flight(&self) -> usize {
        (self.load.load(Ordering::Relaxed) & IN_FLIGHT_MASK) as usize
    }

    /// Concurrency cap (`None`: unlimited).
    pub fn max_in_flight(&self) -> Option<usize> {
        match self.max_in_flight.load(Ordering::Relaxed) {
            0 => None,
            n => Some(n),
        }
    }

    /// Configured weight.
    #[inline]
    pub fn weight(&self) -> f64 {
        f64::from_bits(self.weight_bits.load(Ordering::Relaxed))
    }

    pub(crate) fn set_weight(&self, weight: f64) {
        self.weight_bits.store(weight.to_bits(), Ordering::Relaxed);
    }

    pub(crate) fn set_max_in_flight(&self, max: usize) {
        self.max_in_flight.store(max, Ordering::Relaxed);
    }

    /// Weight after slow start: lower than [`weight`](Self::weight) while the endpoint ramps up.
    #[inline]
    pub fn effective_weight(&self) -> f64 {
        let weight = self.weight();
        if self.flags.load(Ordering::Relaxed) & SLOW_START == 0 {
            return weight;
        }
        weight * self.slow_start_factor()
    }

    /// Slow-start factor in `(0, 1]` (1 when not ramping).
    pub(crate) fn slow_start_factor(&self) -> f64 {
        let Some(config) = &self.set.slow_start else {
            return 1.0;
        };
        let since = *self.slow_start_since.lock();
        let Some(since) = since else { return 1.0 };
        let factor = config.factor(Instant::now().saturating_duration_since(since));
        if factor >= 1.0 {
            self.flags.fetch_and(!SLOW_START, Ordering::Relaxed);
        }
        factor
    }

    /// Takes requests at its full weight right now: no health, drain or slow-start flag and
    /// below its cap (the common case, checked before the general availability rules).
    #[inline]
    pub(crate) fn plainly_ready(&self) -> bool {
        if self.flags.load(Ordering::Relaxed) != 0 {
            return false;
        }
        let max = self.max_in_flight.load(Ordering::Relaxed);
        max == 0 || self.in_flight() < max
    }

    #[inline]
    pub(crate) fn in_slow_start(&self) -> bool {
        self.flags.load(Ordering::Relaxed) & SLOW_START != 0
    }

    /// Starts the slow-start ramp now, if the set has one configured.
    pub(crate) fn begin_slow_start(&self) {
        if self.set.slow_start.is_some() {
            *self.slow_start_since.lock() = Some(Instant::now());
            self.flags.fetch_or(SLOW_START, Ordering::Relaxed);
        }
    }

    /// Peak-EWMA latency estimate, from the requests whose latency is measured (every request
    /// with a latency-aware policy, else 1 in [`EwmaConfig::sampling`]).
    pub fn ewma(&self) -> Duration {
        Duration::from_nanos(self.ewma.estimate_ns() as u64)
    }

    #[inline]
    pub(crate) fn ewma_decayed_ns(&self, now: u64) -> f64 {
        self.ewma.decayed_ns(now)
    }

    /// Requests completed since the endpoint was added, and how many of them failed.
    pub fn completed(&self) -> (u64, u64) {
        // Read the half-turns first: they then lag `load` by at most the one crossing whose
        // increment may still be on its way, and the top bit of the low count tells which.
        let half_turns = self.completed_half_turns.load(Ordering::Acquire);
        let low = self.load.load(Ordering::Acquire) >> 32;
        let half_turns = half_turns + ((half_turns ^ (low >> 31)) & 1);
        let requests = ((half_turns >> 1) << 32) | low;
        (requests, self.failures.load(Ordering::Relaxed))
    }

    /// The timed requests' latencies so far, bucketed (see [`LatencyCounts`]): two readings'
    /// [`since`](LatencyCounts::since) give a p99 over the time between them.
    pub fn latency(&self) -> LatencyCounts {
        self.latency.counts()
    }

    /// Where the endpoint stands now. An ejection counts only until its time ends, read from
    /// the clock now: an idle endpoint whose ejection is over reports as it stands otherwise,
    /// with no request needed first (its first request is still the one probe, see
    /// [`OutlierDetection`]).
    pub fn status(&self) -> EndpointStatus {
        let flags = self.flags.load(Ordering::Relaxed);
        if flags & DRAINING != 0 {
            EndpointStatus::Draining
        } else if flags & EJECTED != 0 && self.ejection_lasts() {
            EndpointStatus::Ejected
        } else if flags & ACTIVE_DOWN != 0 {
            EndpointStatus::Unhealthy
        } else if flags & SLOW_START != 0 {
            EndpointStatus::SlowStart
        } else {
            EndpointStatus::Healthy
        }
    }

    /// Neither ejected (until a time not yet reached) nor failing active checks (draining
    /// endpoints count as healthy).
    pub fn is_healthy(&self) -> bool {
        let flags = self.flags.load(Ordering::Relaxed);
        flags & ACTIVE_DOWN == 0 && (flags & EJECTED == 0 || !self.ejection_lasts())
    }

    /// Neither flag set: not ejected, even one whose time is up and whose probe has not yet
    /// returned it, and not failing active checks. Picks go by this, not by the clock.
    #[inline]
    pub(crate) fn unflagged(&self) -> bool {
        self.flags.load(Ordering::Relaxed) & (EJECTED | ACTIVE_DOWN) == 0
    }

    /// When the current ejection ends (`None` when not ejected, or when its time is over).
    pub fn ejected_until(&self) -> Option<Instant> {
        if self.flags.load(Ordering::Relaxed) & EJECTED == 0 {
            return None;
        }
        self.ejection
            .until()
            .filter(|until| Instant::now() < *until)
    }

    /// An ejection is on and its time not yet over.
    fn ejection_lasts(&self) -> bool {
        self.ejection
            .until()
            .is_some_and(|until| Instant::now() < until)
    }

    /// Whether a pick may use this endpoint. `ignore_health` is the panic mode.
    #[inline]
    pub(crate) fn availability(&self, ignore_health: bool) -> Availability {
        let flags = self.flags.load(Ordering::Relaxed);
        if flags & DRAINING != 0 {
            return Availability::No;
        }
        let max = self.max_in_flight.load(Ordering::Relaxed);
        if max != 0 && self.in_flight() >= max {
            return Availability::No;
        }
        if ignore_health || flags & (EJECTED | ACTIVE_DOWN) == 0 {
            return Availability::Ready;
        }
        if flags & ACTIVE_DOWN == 0 && self.ejection.may_probe() {
            Availability::Probe
        } else {
            Availability::No
        }
    }

    /// Takes an in-flight slot (and the probe slot of an ejected endpoint whose time is up).
    ///
    /// `now` is the pick's clock reading (raw ticks) when the policy uses latency: the request is
    /// then timed from it. Otherwise 1 in [`EwmaConfig::sampling`] requests is timed, from a clock
    /// read here.
    #[inline]
    pub(crate) fn acquire(
        self: &Arc<Self>,
        index: usize,
        ignore_health: bool,
        now: Option<u64>,
    ) -> Option<InFlightGuard> {
        let max = self.max_in_flight.load(Ordering::Relaxed) as u64;
        let limit = if max == 0 {
            IN_FLIGHT_LIMIT
        } else {
            max.min(IN_FLIGHT_LIMIT)
        };
        let load = self.load.fetch_add(1, Ordering::AcqRel);
        let before = load & IN_FLIGHT_MASK;
        if before >= limit {
            self.release_slot();
            return None;
        }
        let flags = self.flags.load(Ordering::Relaxed);
        let mut probe = false;
        if flags & DRAINING != 0 || (!ignore_health && flags & ACTIVE_DOWN != 0) {
            self.release_slot();
            return None;
        }
        if !ignore_health && flags & EJECTED != 0 {
            if !self.ejection.take_probe() {
                self.release_slot();
                return None;
            }
            probe = true;
        }
        // Requests started so far (completed + in flight, modulo 2^32) number this one, so that
        // exactly 1 in `sampling` is timed, the endpoint's first included.
        let (start, latency_weight) = match now {
            Some(now) => (now, 1),
            None if ((load >> 32).wrapping_add(before) & self.set.latency_mask) == 0 => {
                (clock::raw(), self.set.latency_mask as u32 + 1)
            }
            None => (0, 0),
        };
        self.metrics.in_flight.increment(1.0);
        Some(InFlightGuard {
            state: Arc::clone(self),
            index,
            start,
            latency_weight,
            probe,
            recorded: false,
        })
    }

    /// Frees a slot without counting a completed request (a refused acquire, a cancelled request).
    #[inline]
    fn release_slot(&self) {
        let before = self.load.fetch_sub(1, Ordering::AcqRel);
        self.after_release(before);
    }

    /// Frees a slot and counts a completed request, in one atomic add.
    #[inline]
    fn release_completed(&self) {
        // In flight - 1 and completed + 1: the low half is at least 1, so nothing borrows from
        // the high half, and the completed count wraps out of the word modulo 2^32.
        let before = self.load.fetch_add(COMPLETED_ONE - 1, Ordering::AcqRel);
        if (before >> 32) as u32 & (u32::MAX >> 1) == u32::MAX >> 1 {
            self.completed_half_turns.fetch_add(1, Ordering::Release);
        }
        self.after_release(before);
    }

    #[inline]
    fn after_release(&self, before: u64) {
        if before & IN_FLIGHT_MASK == 1 && self.flags.load(Ordering::Relaxed) & DRAINING != 0 {
            self.idle.notify_waiters();
        }
        if self.set.waiting.load(Ordering::Acquire) != 0 {
            self.set.released.notify_waiters();
        }
    }

    #[inline]
    fn on_success(&self, probe: bool) {
        self.metrics.success.increment(1);
        self.ejection.on_success(self, probe);
    }

    /// An active check passed: an ejection whose time is over ends (see
    /// [`Ejection::check_passed`]).
    pub(crate) fn active_check_passed(&self) {
        self.ejection.check_passed(self);
    }

    /// A request that says nothing about the endpoint's health ended: counted apart, and a probe
    /// it was leaves the endpoint ejected, to be probed again by the next request.
    #[cold]
    fn on_neither(&self, outcome: Outcome, probe: bool) {
        match outcome {
            Outcome::DependencyUnavailable => self.metrics.dependency_unavailable.increment(1),
            _ => self.metrics.client_error.increment(1),
        }
        if probe {
            self.ejection.probe_abandoned();
        }
    }

    fn on_failure(&self, probe: bool) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        self.metrics.failure.increment(1);
        self.ejection.on_failure(self, probe);
    }

    /// Records the result of an active health check (after rise/fall thresholds).
    pub(crate) fn set_active_healthy(&self, healthy: bool) {
        let before = if healthy {
            self.flags.fetch_and(!ACTIVE_DOWN, Ordering::AcqRel)
        } else {
            self.flags.fetch_or(ACTIVE_DOWN, Ordering::AcqRel)
        };
        let was_down = before & ACTIVE_DOWN != 0;
        if healthy && was_down {
            self.metrics
                .healthy
                .set(if before & EJECTED == 0 { 1.0 } else { 0.0 });
            self.begin_slow_start();
            tracing::info!(endpoint = %self.label, "active health check: endpoint up");
        } else if !healthy && !was_down {
            self.metrics.healthy.set(0.0);
            tracing::warn!(endpoint = %self.label, "active health check: endpoint down");
        }
    }

    pub(crate) fn is_active_down(&self) -> bool {
        self.flags.load(Ordering::Relaxed) & ACTIVE_DOWN != 0
    }

    pub(crate) fn start_draining(&self) {
        self.flags.fetch_or(DRAINING, Ordering::AcqRel);
    }

    /// Takes requests again (discovery found a draining endpoint back before it went idle).
    pub(crate) fn stop_draining(&self) {
        self.flags.fetch_and(!DRAINING, Ordering::AcqRel);
        // Wakes `wait_drained`, whose drain is over.
        self.idle.notify_waiters();
    }

    /// Resolves when no request is in flight or the endpoint no longer drains.
    pub(crate) async fn wait_drained(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.in_flight() == 0 || self.flags() & DRAINING == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Resolves when no request is in flight (used by drain).
    pub(crate) async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.in_flight() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Called when the endpoint leaves the set: frees its ejection slot.
    pub(crate) fn leave(&self) {
        self.ejection.leave(self);
    }

    /// The flags byte (`EJECTED`, `ACTIVE_DOWN`, ...).
    #[inline]
    pub(crate) fn flags(&self) -> u8 {
        self.flags.load(Ordering::Relaxed)
    }

    /// Sets `bits`; returns the flags before.
    pub(crate) fn set_flags(&self, bits: u8) -> u8 {
        self.flags.fetch_or(bits, Ordering::AcqRel)
    }

    /// Clears `bits`; returns the flags before.
    pub(crate) fn clear_flags(&self, bits: u8) -> u8 {
        self.flags.fetch_and(!bits, Ordering::AcqRel)
    }

    pub(crate) fn set(&self) -> &SetShared {
        &self.set
    }

    pub(crate) fn metrics(&self) -> &EndpointMetrics {
        &self.metrics
    }
}

/// What a finished request means for the endpoint's health.
///
/// Blame goes where the fault is, as Envoy splits local-origin from upstream errors: only a
/// [`Failure`](Self::Failure) counts towards ejection; a [`ClientError`](Self::ClientError) or a
/// [`DependencyUnavailable`](Self::DependencyUnavailable) counts neither for nor against the
/// endpoint. Each is counted in `herd_lb_requests_total{endpoint, outcome}` with `outcome` one of
/// `success`, `failure`, `client_error`, `dependency_unavailable`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// The endpoint answered well.
    Success,
    /// Counts towards ejection (transport error, 5xx, timeout ...).
    Failure,
    /// The request failed by the client's fault (its body broke off, did not parse, was too
    /// large or too slow): nothing about the endpoint. Resets no failure count and adds none;
    /// latency is not recorded.
    ClientError,
    /// The endpoint answered that a dependency every endpoint shares is unavailable (a database
    /// failing over): the endpoint itself works, and its peers would fail alike, so this is
    /// not its fault. Resets no failure count and adds none; latency is not recorded (a fast
    /// refusal would draw latency-ranked traffic).
    DependencyUnavailable,
}

/// An in-flight slot on one endpoint; dropping it ends the request.
///
/// Call [`record`](Self::record) (or [`success`](Self::success) / [`failure`](Self::failure)) to
/// feed the outcome into outlier detection and, when this request is timed (see
/// [`EwmaConfig`](crate::EwmaConfig)), its latency into Peak-EWMA and the latency histogram. A
/// guard dropped without a record (e.g. a cancelled request) only frees the slot.
#[must_use = "the slot is released when the guard is dropped"]
pub struct InFlightGuard {
    state: Arc<EndpointState>,
    index: usize,
    /// Raw clock ticks when the slot was taken (see [`clock::raw`]), if timed.
    start: u64,
    /// Requests the latency sample stands for in the histogram: 1 when every request is timed,
    /// the sampling interval when this one was sampled, 0 when it is not timed.
    latency_weight: u32,
    probe: bool,
    /// The outcome was recorded, which freed the slot already.
    recorded: bool,
}

impl fmt::Debug for InFlightGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InFlightGuard")
            .field("endpoint", &self.state.label)
            .field("index", &self.index)
            .field("probe", &self.probe)
            .finish()
    }
}

impl InFlightGuard {
    /// Index of the endpoint in the snapshot it was picked from.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The endpoint's shared state.
    pub fn state(&self) -> &Arc<EndpointState> {
        &self.state
    }

    /// Whether this request is the single probe of an endpoint whose ejection ended.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// Whether this request's latency is measured (always with a latency-aware policy, else
    /// 1 in [`EwmaConfig::sampling`](crate::EwmaConfig::sampling)).
    pub fn is_timed(&self) -> bool {
        self.latency_weight != 0
    }

    /// Time since the slot was taken, when the request [is timed](Self::is_timed).
    pub fn elapsed(&self) -> Option<Duration> {
        self.is_timed()
            .then(|| Duration::from_nanos(clock::ns_between(self.start, clock::raw())))
    }

    /// Records the outcome and, when the request is timed, the latency since the slot was taken;
    /// then frees the slot.
    #[inline]
    pub fn record(mut self, outcome: Outcome) {
        self.record_in_place(outcome);
    }

    /// [`record`](Self::record) without moving the guard; dropping it afterwards only releases
    /// its reference to the endpoint. Does nothing the second time.
    #[inline]
    pub(crate) fn record_in_place(&mut self, outcome: Outcome) {
        if self.recorded {
            return;
        }
        match outcome {
            Outcome::Success => {
                if self.latency_weight != 0 {
                    self.record_latency();
                }
                self.state.on_success(self.probe);
            }
            Outcome::Failure => {
                if self.latency_weight != 0 {
                    self.record_latency();
                }
                self.state.on_failure(self.probe);
            }
            Outcome::ClientError | Outcome::DependencyUnavailable => {
                self.state.on_neither(outcome, self.probe);
            }
        }
        self.state.metrics.in_flight.decrement(1.0);
        self.state.release_completed();
        self.recorded = true;
    }

    #[inline]
    fn record_latency(&self) {
        let now = clock::raw();
        let latency_ns = clock::ns_between(self.start, now);
        let seconds = latency_ns as f64 * 1e-9;
        match self.latency_weight {
            1 => self.state.metrics.latency.record(seconds),
            n => self.state.metrics.latency.record_many(seconds, n as usize),
        }
        self.state.ewma.observe(latency_ns, now);
        self.state.latency.record(latency_ns, self.latency_weight);
    }

    /// Same as `record(Outcome::Success)`.
    pub fn success(self) {
        self.record(Outcome::Success);
    }

    /// Same as `record(Outcome::Failure)`.
    pub fn failure(self) {
        self.record(Outcome::Failure);
    }
}

impl Drop for InFlightGuard {
    #[inline]
    fn drop(&mut self) {
        if self.recorded {
            return;
        }
        if self.probe {
            self.state.ejection.probe_abandoned();
        }
        self.state.metrics.in_flight.decrement(1.0);
        self.state.release_slot();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> Arc<EndpointState> {
        let set = SetShared::new(
            OutlierDetection::default(),
            None,
            EwmaConfig::default(),
            SharedRng::seeded(1),
        );
        Arc::new(EndpointState::new("a".into(), 1.0, 0, Arc::new(set)))
    }

    #[test]
    fn completed_count_carries_past_the_packed_half() {
        let s = state();
        // 2^32 - 2 requests completed, one in flight.
        s.load
            .store(((u64::from(u32::MAX) - 1) << 32) | 1, Ordering::Relaxed);
        s.completed_half_turns.store(1, Ordering::Relaxed);
        assert_eq!(s.completed().0, (1 << 32) - 2);
        assert_eq!(s.in_flight(), 1);
        let mut expected = (1u64 << 32) - 2;
        for _ in 0..4 {
            let guard = s.acquire(0, false, Some(clock::raw())).expect("slot");
            assert_eq!(s.in_flight(), 2);
            guard.success();
            expected += 1;
            assert_eq!(s.completed().0, expected);
            assert_eq!(s.in_flight(), 1);
        }
        // Crossing 2^31 within the next 2^32 turn counts as well.
        s.load
            .store(((u64::from(u32::MAX) >> 1) << 32) | 1, Ordering::Relaxed);
        let before = s.completed().0;
        s.acquire(0, false, Some(clock::raw()))
            .expect("slot")
            .failure();
        assert_eq!(s.completed(), (before + 1, 1));
        assert_eq!(s.completed().0, (1 << 32) | (1 << 31));
    }

    #[test]
    fn a_lagging_half_turn_is_inferred_from_the_count() {
        let s = state();
        // The count just wrapped to 5 but the thread that wrapped it has not bumped the turns yet.
        s.load.store(5 << 32, Ordering::Relaxed);
        s.completed_half_turns.store(1, Ordering::Relaxed);
        assert_eq!(s.completed().0, (1 << 32) + 5);
    }

    /// Counts the values recorded into every histogram it registers.
    #[derive(Default)]
    struct HistogramCount(AtomicU64);

    impl metrics::HistogramFn for HistogramCount {
        fn record(&self, _: f64) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    struct Recorder(Arc<HistogramCount>);

    impl metrics::Recorder for Recorder {
        fn describe_counter(
            &self,
            _: metrics::KeyName,
            _: Option<metrics::Unit>,
            _: metrics::SharedString,
        ) {
        }
        fn describe_gauge(
            &self,
            _: metrics::KeyName,
            _: Option<metrics::Unit>,
            _: metrics::SharedString,
        ) {
        }
        fn describe_histogram(
            &self,
            _: metrics::KeyName,
            _: Option<metrics::Unit>,
            _: metrics::SharedString,
        ) {
        }
        fn register_counter(
            &self,
            _: &metrics::Key,
            _: &metrics::Metadata<'_>,
        ) -> metrics::Counter {
            metrics::Counter::noop()
        }
        fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
            metrics::Gauge::noop()
        }
        fn register_histogram(
            &self,
            _: &metrics::Key,
            _: &metrics::Metadata<'_>,
        ) -> metrics::Histogram {
            metrics::Histogram::from_arc(Arc::clone(&self.0))
        }
    }

    /// An endpoint with `sampling` whose latency histogram counts its values.
    fn recorded_state(sampling: u32) -> (Arc<EndpointState>, Arc<HistogramCount>) {
        let ewma = EwmaConfig {
            sampling,
            ..EwmaConfig::default()
        };
        let set = SetShared::new(
            OutlierDetection::default(),
            None,
            ewma,
            SharedRng::seeded(1),
        );
        let count = Arc::new(HistogramCount::default());
        let state = metrics::with_local_recorder(&Recorder(Arc::clone(&count)), || {
            EndpointState::new("a".into(), 1.0, 0, Arc::new(set))
        });
        (Arc::new(state), count)
    }

    #[test]
    fn one_request_in_sampling_is_timed_and_stands_for_all_of_them() {
        let (s, histogram) = recorded_state(8);
        let mut timed = Vec::new();
        for i in 0..20 {
            let guard = s.acquire(0, false, None).expect("slot");
            assert_eq!(guard.is_timed(), guard.elapsed().is_some());
            if guard.is_timed() {
                timed.push(i);
            }
            guard.success();
        }
        assert_eq!(timed, [0, 8, 16], "the first and every 8th after it");
        assert_eq!(
            histogram.0.load(Ordering::Relaxed),
            24,
            "each sample counts 8 times"
        );
        assert_eq!(
            s.latency().total(),
            24,
            "the endpoint's own histogram weighs each sample alike"
        );

        // Concurrent requests are numbered by their start, so the count does not bunch up.
        let held: Vec<_> = (0..16)
            .map(|_| s.acquire(0, false, None).expect("slot"))
            .collect();
        assert_eq!(held.iter().filter(|g| g.is_timed()).count(), 2);
        drop(held);
        assert_eq!(s.completed(), (20, 0));
    }

    #[test]
    fn every_request_is_timed_when_the_pick_read_the_clock_or_sampling_is_1() {
        let (s, histogram) = recorded_state(8);
        for _ in 0..5 {
            let guard = s.acquire(0, false, Some(clock::raw())).expect("slot");
            assert!(guard.is_timed());
            guard.failure();
        }
        assert_eq!(histogram.0.load(Ordering::Relaxed), 5, "one value each");

        let (s, histogram) = recorded_state(1);
        for _ in 0..5 {
            let guard = s.acquire(0, false, None).expect("slot");
            assert!(guard.is_timed());
            guard.success();
        }
        assert_eq!(histogram.0.load(Ordering::Relaxed), 5);
    }

    #[test]
    fn untimed_requests_leave_the_estimate_alone() {
        let s = state();
        let first = s.acquire(0, false, None).expect("slot");
        assert!(first.is_timed());
        first.success();
        let after_first = s.ewma.estimate_ns();
        assert!(
            after_first < 30e6,
            "a fast sample pulls the 30 ms seed down"
        );
        for _ in 0..7 {
            let guard = s.acquire(0, false, None).expect("slot");
            assert!(!guard.is_timed());
            guard.success();
        }
        assert_eq!(s.ewma.estimate_ns(), after_first);
        assert!(s.acquire(0, false, None).expect("slot").is_timed());
    }

    #[test]
    fn a_cancelled_request_frees_its_slot_without_counting() {
        let s = state();
        let guard = s.acquire(0, false, Some(clock::raw())).expect("slot");
        assert_eq!(s.in_flight(), 1);
        drop(guard);
        assert_eq!((s.in_flight(), s.completed()), (0, (0, 0)));
    }

    #[test]
    fn hot_fields_share_two_lines() {
        use std::mem::{offset_of, size_of};
        // The first line: counts, cap, flags, EWMA and the run of failures (`Ejection`'s first
        // field), whole.
        assert!(offset_of!(EndpointState, ewma) + size_of::<EwmaEstimate>() <= 64);
        assert!(offset_of!(EndpointState, ejection) + size_of::<Ejection>() <= 64);
        // The second: the set's settings and the handles every recorded request touches.
        assert!(offset_of!(EndpointState, set) + size_of::<Arc<SetShared>>() <= 128);
        let handles = 3 * size_of::<metrics::Counter>();
        assert!(offset_of!(EndpointState, metrics) + handles <= 128);
    }
}
