//! A coarse millisecond clock for the L1 read path.
//!
//! `Instant::now()` costs 20-40 ns on virtual machines, a third of the L1 hit budget, so L1
//! expiry compares against a clock that one background thread advances every millisecond.
//! Entries can therefore live up to about a millisecond (more under heavy CPU contention) past
//! their TTL.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

static EPOCH: OnceLock<Instant> = OnceLock::new();
static NOW_MS: AtomicU64 = AtomicU64::new(0);
/// Unix milliseconds at the last tick, for value headers shared with other processes.
static UNIX_MS: AtomicU64 = AtomicU64::new(0);
/// Set when the ticker thread could not be started: fall back to reading the real clock.
static PRECISE: AtomicBool = AtomicBool::new(false);

fn epoch() -> Instant {
    *EPOCH.get_or_init(|| {
        let started = std::thread::Builder::new()
            .name("herd-cache-clock".into())
            .spawn(|| {
                loop {
                    std::thread::sleep(Duration::from_millis(1));
                    NOW_MS.store(precise_now_ms(), Ordering::Relaxed);
                    UNIX_MS.store(precise_unix_ms(), Ordering::Relaxed);
                }
            });
        if started.is_err() {
            PRECISE.store(true, Ordering::Relaxed);
        }
        UNIX_MS.store(precise_unix_ms(), Ordering::Relaxed);
        Instant::now()
    })
}

fn precise_now_ms() -> u64 {
    u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX)
}

fn precise_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Unix time in milliseconds, at most about a millisecond behind.
pub(crate) fn unix_now_ms() -> u64 {
    let _ = epoch();
    if PRECISE.load(Ordering::Relaxed) {
        return precise_unix_ms();
    }
    UNIX_MS.load(Ordering::Relaxed)
}

/// Milliseconds since the clock started, at most about a millisecond behind.
pub(crate) fn now_ms() -> u64 {
    let _ = epoch();
    if PRECISE.load(Ordering::Relaxed) {
        return precise_now_ms();
    }
    // Until the first tick, or when the ticker lags badly, the stored value is behind; it is
    // never ahead, so entries never expire early.
    NOW_MS.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advances_and_stays_close_to_the_real_clock() {
        let start = now_ms();
        std::thread::sleep(Duration::from_millis(30));
        let later = now_ms();
        assert!(later >= start + 20, "{start} -> {later}");
        assert!(later <= precise_now_ms());
        let unix = unix_now_ms();
        assert!(unix <= precise_unix_ms() && unix + 50 >= precise_unix_ms());
    }
}
