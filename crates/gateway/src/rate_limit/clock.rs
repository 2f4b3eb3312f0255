//! The limiter's clock: raw TSC ticks from one process-wide calibrated `quanta::Clock` (a bare
//! `rdtsc` per read; `std::time::Instant` is a `clock_gettime` call), read once per request.
//! herd-lb-core keeps an identical clock of its own for latencies; the two calibrate apart,
//! which costs one calibration more and couples no API.

use std::sync::OnceLock;

static CLOCK: OnceLock<quanta::Clock> = OnceLock::new();

#[inline]
fn get() -> &'static quanta::Clock {
    CLOCK.get_or_init(quanta::Clock::new)
}

/// Now, in raw ticks (compare only through [`ns_between`]).
#[inline]
pub(super) fn raw() -> u64 {
    get().raw()
}

/// Nanoseconds from `start` to `end` (raw ticks; 0 if `end` is not later).
#[inline]
pub(super) fn ns_between(start: u64, end: u64) -> u64 {
    get().delta_as_nanos(start, end)
}
