//! Passive health (outlier detection): eject endpoints whose requests fail. The rules
//! ([`OutlierDetection`]), how a set applies them ([`OutlierDetector`]) and each endpoint's
//! state machine ([`Ejection`]); and slow start's ramp ([`SlowStart`]).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::{Mutex, MutexGuard};
use serde::Deserialize;
use tokio::time::Instant;

use crate::endpoint::{ACTIVE_DOWN, EJECTED, EndpointState};
use crate::rng::SharedRng;

/// When to eject an endpoint because its requests fail, and for how long.
///
/// Combines Envoy's `consecutive_5xx` outlier detection with nginx's `max_fails`/`fail_timeout`:
/// either trigger ejects. An ejected endpoint gets no traffic until its ejection time ends; then
/// exactly one probe request is let through, and only its success returns the endpoint to service
/// (a failed probe ejects it again for twice as long, up to [`max_ejection`](Self::max_ejection)).
/// With active checks on, a check that passes once the ejection time is over returns it too
/// (Envoy's `successful_active_health_check_uneject_host`, but never before the time is over), so
/// an idle endpoint does not wait for traffic. Reports ([`EndpointState::status`](crate::EndpointState::status))
/// read the ejection's end from the clock: an endpoint whose time is over reports healthy at once.
///
/// Only [`Outcome::Failure`](crate::Outcome::Failure) counts: a client's fault and a shared
/// dependency's outage (`ClientError`, `DependencyUnavailable`) neither count nor reset.
///
/// ```
/// # use herd_lb_core::OutlierDetection;
/// let od: OutlierDetection = serde_json::from_str(
///     r#"{"max_fails": 3, "fail_timeout": "30s", "base_ejection": "30s"}"#,
/// ).unwrap();
/// assert_eq!(od.consecutive_failures, Some(5));
/// assert_eq!(od.max_fails, Some(3));
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct OutlierDetection {
    /// Eject after this many failures in a row. Default `Some(5)`; `None` turns the trigger off.
    pub consecutive_failures: Option<u32>,
    /// nginx `max_fails`: eject after this many failures within [`fail_timeout`](Self::fail_timeout).
    /// Default `None` (off).
    pub max_fails: Option<u32>,
    /// nginx `fail_timeout`: the window `max_fails` is counted in. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub fail_timeout: Duration,
    /// First ejection time; doubles with each ejection in a row. Default 30 s.
    #[serde(with = "humantime_serde")]
    pub base_ejection: Duration,
    /// Upper bound of the doubled ejection time. Default 300 s.
    #[serde(with = "humantime_serde")]
    pub max_ejection: Duration,
    /// Random extra ejection time, as a fraction of the ejection time, so that endpoints ejected
    /// together do not return together. Default 0.1.
    pub jitter: f64,
    /// At most this percentage of the endpoints is ejected at once. In a set of two or more, one
    /// may always be, however low the percentage (as Envoy's `always_eject_one_host`); the only
    /// endpoint of a set of one only at 100 (its ejection would move no traffic). Default 50.
    pub max_ejection_percent: u8,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        Self {
            consecutive_failures: Some(5),
            max_fails: None,
            fail_timeout: Duration::from_secs(10),
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            jitter: 0.1,
            max_ejection_percent: 50,
        }
    }
}

impl OutlierDetection {
    /// Outlier detection that never ejects.
    pub fn disabled() -> Self {
        Self {
            consecutive_failures: None,
            max_fails: None,
            ..Self::default()
        }
    }

    /// Ejection time for the `n`-th ejection in a row (`n >= 1`), before jitter.
    pub(crate) fn ejection_time(&self, n: u32) -> Duration {
        let factor = 1u32
            .checked_shl(n.saturating_sub(1).min(20))
            .unwrap_or(u32::MAX);
        self.base_ejection
            .checked_mul(factor)
            .unwrap_or(self.max_ejection)
            .min(self.max_ejection)
    }
}

/// Outlier detection as one endpoint set runs it: its rules, and how many of its endpoints are
/// ejected now (for [`max_ejection_percent`](OutlierDetection::max_ejection_percent)).
#[derive(Debug)]
pub(crate) struct OutlierDetector {
    pub(crate) rules: OutlierDetection,
    /// Members currently ejected.
    ejected: AtomicUsize,
    /// Members of the set's current snapshot.
    members: AtomicUsize,
}

impl OutlierDetector {
    pub(crate) fn new(rules: OutlierDetection) -> Self {
        Self {
            rules,
            ejected: AtomicUsize::new(0),
            members: AtomicUsize::new(0),
        }
    }

    /// The set now has `members` endpoints.
    pub(crate) fn set_members(&self, members: usize) {
        self.members.store(members, Ordering::Relaxed);
    }

    /// Members ejected now.
    #[cfg(test)]
    pub(crate) fn ejected(&self) -> usize {
        self.ejected.load(Ordering::Relaxed)
    }

    /// Reserves an ejection slot if `max_ejection_percent` allows one more.
    ///
    /// A set of two or more may always eject one endpoint, however small its percentage comes
    /// out (Envoy's classic rule, its `always_eject_one_host` today): a small set with a low
    /// percentage still loses a single bad endpoint to peers that can take its traffic. A set of
    /// one ejects only at 100 %: ejecting its only endpoint moves no traffic (panic mode sends
    /// it back there) and would only report as unhealthy what fails the way every endpoint does.
    fn try_reserve(&self) -> bool {
        let members = self.members.load(Ordering::Relaxed);
        let percent = usize::from(self.rules.max_ejection_percent.min(100));
        let mut cap = members.saturating_mul(percent) / 100;
        if cap == 0 && members >= 2 {
            cap = 1;
        }
        self.ejected
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < cap).then_some(n + 1)
            })
            .is_ok()
    }

    /// Gives back a slot taken by [`try_reserve`](Self::try_reserve).
    fn release(&self) {
        self.ejected.fetch_sub(1, Ordering::AcqRel);
    }

    /// `base` plus the random extra of [`jitter`](OutlierDetection::jitter) (none when the
    /// jitter is not a number; at most `Duration::MAX`).
    fn jittered(&self, base: Duration, rng: &SharedRng) -> Duration {
        let jitter = match self.rules.jitter {
            j if j.is_nan() => 0.0,
            j => j.clamp(0.0, 10.0),
        };
        let factor = 1.0 + jitter * rng.unit_f64();
        Duration::try_from_secs_f64(base.as_secs_f64() * factor).unwrap_or(Duration::MAX)
    }

    /// The end of an ejection of `duration` from `now`; one past what `Instant` holds ends in
    /// 30 years (as `tokio::time::timeout` treats such a deadline).
    fn ends(now: Instant, duration: Duration) -> Instant {
        now.checked_add(duration)
            .or_else(|| now.checked_add(Duration::from_secs(30 * 365 * 86_400)))
            .unwrap_or(now)
    }
}

/// One endpoint's outlier-detection state machine: the failures that count towards an ejection,
/// the ejection, and the single probe let through when its time is over. It sets and clears the
/// endpoint's `EJECTED` flag (in the flags byte that picks read) and records its ejection
/// metrics; the endpoint feeds it each request's outcome.
// `repr(C)` and the state behind a pointer: the run of failures, read by every successful request,
// comes first and the whole is 16 bytes, so that it sits on the endpoint's first cache line
// without pushing the set's settings and the metric handles out of the next one (see
// `EndpointState`). The state is read only while an ejection is on or a request fails.
#[repr(C)]
#[derive(Debug)]
pub(crate) struct Ejection {
    consecutive_failures: AtomicU32,
    /// Still a member of its set: only a member's ejection holds a slot of the set's budget.
    member: AtomicBool,
    state: Box<Mutex<EjectionState>>,
}

#[derive(Debug, Default)]
struct EjectionState {
    window_start: Option<Instant>,
    window_failures: u32,
    /// Ejections in a row (drives the exponential backoff).
    ejections: u32,
    ejected_until: Option<Instant>,
    returned_at: Option<Instant>,
    probe_in_flight: bool,
}

impl Ejection {
    pub(crate) fn new() -> Self {
        Self {
            consecutive_failures: AtomicU32::new(0),
            member: AtomicBool::new(true),
            state: Box::new(Mutex::new(EjectionState::default())),
        }
    }

    /// When the current ejection ends, or ended (`None`: not ejected).
    pub(crate) fn until(&self) -> Option<Instant> {
        self.state.lock().ejected_until
    }

    /// The ejection's time is over and no probe is out: the next request may be the probe.
    pub(crate) fn may_probe(&self) -> bool {
        let state = self.state.lock();
        state
            .ejected_until
            .is_some_and(|until| until <= Instant::now())
            && !state.probe_in_flight
    }

    /// Takes the probe when [`may_probe`](Self::may_probe) holds; `false` otherwise.
    pub(crate) fn take_probe(&self) -> bool {
        let mut state = self.state.lock();
        let free = state
            .ejected_until
            .is_some_and(|until| until <= Instant::now())
            && !state.probe_in_flight;
        if free {
            state.probe_in_flight = true;
        }
        free
    }

    /// The probe ended without saying anything about the endpoint (cancelled, or the client's
    /// or a shared dependency's fault): the next request probes.
    pub(crate) fn probe_abandoned(&self) {
        self.state.lock().probe_in_flight = false;
    }

    /// A request succeeded: the run of failures ends, and a probe's success returns the endpoint.
    #[inline]
    pub(crate) fn on_success(&self, endpoint: &EndpointState, probe: bool) {
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
        if probe {
            let mut state = self.state.lock();
            state.probe_in_flight = false;
            self.end(
                endpoint,
                state,
                "endpoint returned after a successful probe",
            );
        }
    }

    /// A request failed: counts towards the triggers, and ejects when one fires and the set's
    /// budget allows; a failed probe ejects again for longer.
    pub(crate) fn on_failure(&self, endpoint: &EndpointState, probe: bool) {
        let consecutive = self
            .consecutive_failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        let detector = &endpoint.set().outlier;
        let rules = &detector.rules;
        let rng = &endpoint.set().rng;
        let now = Instant::now();
        let mut state = self.state.lock();
        if probe {
            state.probe_in_flight = false;
            if endpoint.flags() & EJECTED != 0 {
                state.ejections = state.ejections.saturating_add(1);
                let duration = detector.jittered(rules.ejection_time(state.ejections), rng);
                let until = OutlierDetector::ends(now, duration);
                state.ejected_until = Some(until);
                endpoint.metrics().ejections.increment(1);
                tracing::warn!(endpoint = %endpoint.label(), ejections = state.ejections, "probe failed; endpoint ejected again");
                return;
            }
        }
        if endpoint.flags() & EJECTED != 0 {
            return;
        }
        let window_expired = state
            .window_start
            .is_none_or(|start| now.saturating_duration_since(start) > rules.fail_timeout);
        if window_expired {
            state.window_start = Some(now);
            state.window_failures = 0;
        }
        state.window_failures = state.window_failures.saturating_add(1);
        let by_consecutive = rules
            .consecutive_failures
            .is_some_and(|n| consecutive >= n.max(1));
        let by_window = rules
            .max_fails
            .is_some_and(|n| state.window_failures >= n.max(1));
        if !(by_consecutive || by_window) || !self.member.load(Ordering::Relaxed) {
            return;
        }
        if !detector.try_reserve() {
            tracing::debug!(endpoint = %endpoint.label(), "not ejected: max_ejection_percent reached");
            return;
        }
        // Ejections in a row back off exponentially; a long healthy spell resets the count.
        if state
            .returned_at
            .is_some_and(|t| now.saturating_duration_since(t) > rules.max_ejection)
        {
            state.ejections = 0;
        }
        state.ejections = state.ejections.saturating_add(1);
        let duration = detector.jittered(rules.ejection_time(state.ejections), rng);
        state.ejected_until = Some(OutlierDetector::ends(now, duration));
        state.window_failures = 0;
        state.window_start = None;
        self.consecutive_failures.store(0, Ordering::Relaxed);
        endpoint.set_flags(EJECTED);
        drop(state);
        endpoint.metrics().ejections.increment(1);
        endpoint.metrics().healthy.set(0.0);
        tracing::warn!(endpoint = %endpoint.label(), ?duration, consecutive, "endpoint ejected by outlier detection");
    }

    /// An active check passed: an ejection whose time is over ends now, as a successful probe
    /// would end it, so an idle endpoint returns (its metrics and its slot under
    /// `max_ejection_percent` included) without waiting for traffic. An ejection still running
    /// is left alone: it was earned by failed requests, which a check of one path does not
    /// outweigh. A probe in flight decides instead.
    pub(crate) fn check_passed(&self, endpoint: &EndpointState) {
        if endpoint.flags() & EJECTED == 0 {
            return;
        }
        let state = self.state.lock();
        let over = state
            .ejected_until
            .is_none_or(|until| until <= Instant::now());
        if over && !state.probe_in_flight {
            self.end(
                endpoint,
                state,
                "endpoint returned: its ejection ended and an active check passed",
            );
        }
    }

    /// The endpoint left its set: an ejection of it no longer holds a slot of the set's budget.
    pub(crate) fn leave(&self, endpoint: &EndpointState) {
        let _state = self.state.lock();
        if self.member.swap(false, Ordering::AcqRel) && endpoint.flags() & EJECTED != 0 {
            endpoint.set().outlier.release();
        }
    }

    /// Ends an ejection (if one is on): frees its slot under `max_ejection_percent`, reports the
    /// endpoint healthy (unless active checks hold it down) and starts its slow start.
    fn end(
        &self,
        endpoint: &EndpointState,
        mut state: MutexGuard<'_, EjectionState>,
        why: &'static str,
    ) {
        let before = endpoint.clear_flags(EJECTED);
        if before & EJECTED == 0 {
            return;
        }
        state.ejected_until = None;
        state.returned_at = Some(Instant::now());
        state.window_failures = 0;
        if self.member.load(Ordering::Relaxed) {
            endpoint.set().outlier.release();
        }
        drop(state);
        let active_down = before & ACTIVE_DOWN != 0;
        endpoint
            .metrics()
            .healthy
            .set(if active_down { 0.0 } else { 1.0 });
        endpoint.begin_slow_start();
        tracing::info!(endpoint = %endpoint.label(), "{why}");
    }
}

/// Ramp-up of a new or recovered endpoint's weight (Envoy's slow start, nginx Plus `slow_start`).
///
/// During `window` the endpoint's effective weight grows linearly from
/// `min_weight_percent` % to 100 % of its weight.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct SlowStart {
    /// How long the ramp lasts. Default 30 s.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Effective weight at the start of the window, in percent. Default 10.
    pub min_weight_percent: u8,
}

impl Default for SlowStart {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(30),
            min_weight_percent: 10,
        }
    }
}

impl SlowStart {
    /// The weight factor in `(0, 1]` after `elapsed` of the window.
    pub(crate) fn factor(&self, elapsed: Duration) -> f64 {
        let min = f64::from(self.min_weight_percent.clamp(1, 100)) / 100.0;
        if self.window.is_zero() || elapsed >= self.window {
            return 1.0;
        }
        let progress = elapsed.as_secs_f64() / self.window.as_secs_f64();
        (min + (1.0 - min) * progress).clamp(min, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::endpoint::{Availability, EndpointStatus, Outcome, SetShared};
    use crate::ewma::EwmaConfig;

    #[test]
    fn ejection_time_doubles_up_to_the_cap() {
        let od = OutlierDetection::default();
        assert_eq!(od.ejection_time(1), Duration::from_secs(30));
        assert_eq!(od.ejection_time(2), Duration::from_secs(60));
        assert_eq!(od.ejection_time(4), Duration::from_secs(240));
        assert_eq!(od.ejection_time(5), Duration::from_secs(300));
        assert_eq!(od.ejection_time(60), Duration::from_secs(300));
    }

    #[test]
    fn jitter_and_ejection_ends_never_panic() {
        let rng = SharedRng::seeded(3);
        for jitter in [f64::NAN, f64::INFINITY, -1.0, 0.1] {
            let detector = OutlierDetector::new(OutlierDetection {
                jitter,
                ..OutlierDetection::default()
            });
            let d = detector.jittered(Duration::from_secs(30), &rng);
            assert!(
                d >= Duration::from_secs(30) && d <= Duration::from_secs(330),
                "{d:?}"
            );
            assert_eq!(detector.jittered(Duration::MAX, &rng), Duration::MAX);
        }
        let now = Instant::now();
        assert!(OutlierDetector::ends(now, Duration::MAX) > now);
    }

    #[test]
    fn slow_start_ramps_linearly() {
        let s = SlowStart::default();
        assert!((s.factor(Duration::ZERO) - 0.1).abs() < 1e-9);
        assert!((s.factor(Duration::from_secs(15)) - 0.55).abs() < 1e-9);
        assert_eq!(s.factor(Duration::from_secs(30)), 1.0);
    }

    /// An endpoint that ejects after `consecutive` failures in a row, for `base` (no jitter),
    /// in a set of `size`.
    fn strict_state(consecutive: u32, base: Duration, size: usize) -> Arc<EndpointState> {
        let outlier = OutlierDetection {
            consecutive_failures: Some(consecutive),
            base_ejection: base,
            jitter: 0.0,
            max_ejection_percent: 100,
            ..OutlierDetection::default()
        };
        let set = SetShared::new(outlier, None, EwmaConfig::default(), SharedRng::seeded(1));
        set.outlier.set_members(size);
        Arc::new(EndpointState::new("a".into(), 1.0, 0, Arc::new(set)))
    }

    fn finish(s: &Arc<EndpointState>, outcome: Outcome) {
        s.acquire(0, false, None).expect("slot").record(outcome);
    }

    #[test]
    fn client_errors_and_dependency_outages_neither_count_nor_reset() {
        let s = strict_state(2, Duration::from_secs(30), 2);
        finish(&s, Outcome::Failure);
        for _ in 0..10 {
            finish(&s, Outcome::ClientError);
            finish(&s, Outcome::DependencyUnavailable);
        }
        assert_eq!(s.status(), EndpointStatus::Healthy);
        assert_eq!(
            s.completed(),
            (21, 1),
            "counted as requests, not as failures"
        );
        // Nor did they reset the run of failures: one more ejects.
        finish(&s, Outcome::Failure);
        assert_eq!(s.status(), EndpointStatus::Ejected);
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_that_ends_in_a_client_error_leaves_the_next_request_to_probe() {
        let s = strict_state(1, Duration::from_secs(1), 2);
        finish(&s, Outcome::Failure);
        tokio::time::advance(Duration::from_secs(2)).await;
        let probe = s.acquire(0, false, None).expect("the probe");
        assert!(probe.is_probe());
        probe.record(Outcome::ClientError);
        assert!(s.ejected_until().is_none(), "its time is still over");
        assert_eq!(s.set().outlier.ejected(), 1, "not returned");
        let probe = s.acquire(0, false, None).expect("another probe");
        assert!(probe.is_probe());
        probe.success();
        assert_eq!(s.set().outlier.ejected(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_ended_ejection_reads_healthy_and_a_passing_check_returns_the_endpoint() {
        let s = strict_state(1, Duration::from_secs(10), 2);
        finish(&s, Outcome::Failure);
        assert_eq!(
            (s.status(), s.is_healthy()),
            (EndpointStatus::Ejected, false)
        );
        // A check during the ejection does not cut it short.
        s.active_check_passed();
        assert_eq!(s.status(), EndpointStatus::Ejected);
        assert!(s.ejected_until().is_some());

        tokio::time::advance(Duration::from_secs(10)).await;
        // Read from the clock: healthy at once, with no request.
        assert_eq!(
            (s.status(), s.is_healthy()),
            (EndpointStatus::Healthy, true)
        );
        assert!(s.ejected_until().is_none());
        // Picks still go by the flag (one probe) until a probe or a check returns it.
        assert!(!s.unflagged());
        assert_eq!(s.set().outlier.ejected(), 1);
        s.active_check_passed();
        assert!(s.unflagged());
        assert_eq!(s.set().outlier.ejected(), 0, "its slot is free");
        assert_eq!(s.availability(false), Availability::Ready);
    }

    #[test]
    fn max_ejection_percent_lets_a_set_of_two_or_more_eject_one_and_an_only_endpoint_none() {
        let pool = |size: usize, percent: u8| {
            let detector = OutlierDetector::new(OutlierDetection {
                max_ejection_percent: percent,
                ..OutlierDetection::default()
            });
            detector.set_members(size);
            detector
        };
        let ejectable = |d: OutlierDetector| (0..10).take_while(|_| d.try_reserve()).count();
        assert_eq!(
            ejectable(pool(1, 50)),
            0,
            "its ejection would move no traffic"
        );
        assert_eq!(ejectable(pool(1, 100)), 1);
        assert_eq!(
            ejectable(pool(2, 10)),
            1,
            "one of a small set may always go"
        );
        assert_eq!(ejectable(pool(3, 50)), 1);
        assert_eq!(ejectable(pool(4, 50)), 2);
        assert_eq!(ejectable(pool(10, 30)), 3);
    }
}
