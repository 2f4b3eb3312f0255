//! The retry budget: the arithmetic of tower's `TpsBudget`, with a deposit that takes no lock.
//!
//! Every request deposits, and tower's deposit locks a mutex to see whether its current slot
//! has ended; here that check is one atomic load, and the lock is taken only to move to the
//! next slot (once per tenth of the window).

use std::sync::atomic::{AtomicIsize, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

/// Slots the window is divided into, as tower does.
const SLOTS: usize = 10;

/// Retries allowed over a sliding window: a share of the requests deposited in it plus a
/// reserve of `min_per_sec` per second (tower's `TpsBudget::new` arguments, same results).
pub(super) struct RetryBudget {
    /// The slot being filled and when it started.
    generation: Mutex<Generation>,
    /// Start of the clock `slot_ends` counts on.
    epoch: Instant,
    /// When the slot being filled ends, in nanoseconds since `epoch`: before then a deposit
    /// needs no lock.
    slot_ends: AtomicU64,
    slot: Duration,
    reserve: isize,
    slots: [AtomicIsize; SLOTS],
    /// Deposits and withdrawals of the slot being filled.
    writer: AtomicIsize,
    deposit_amount: isize,
    withdraw_amount: isize,
}

struct Generation {
    index: usize,
    time: Instant,
}

impl RetryBudget {
    /// `window` within 1..=60 s and `retry_percent` within 0..=1000 (checked by the config).
    pub(super) fn new(window: Duration, min_per_sec: u32, retry_percent: f32) -> Self {
        let (deposit_amount, withdraw_amount) = if retry_percent == 0.0 {
            // Deposits gain nothing: only the reserve can be withdrawn.
            (0, 1)
        } else if retry_percent <= 1.0 {
            (1, (1.0 / retry_percent) as isize)
        } else {
            (1000, (1000.0 / retry_percent) as isize)
        };
        let reserve = (min_per_sec as isize)
            .saturating_mul(window.as_secs() as isize)
            .saturating_mul(withdraw_amount);
        let slot = window / SLOTS as u32;
        let epoch = Instant::now();
        Self {
            generation: Mutex::new(Generation {
                index: 0,
                time: epoch,
            }),
            epoch,
            slot_ends: AtomicU64::new(nanos(slot)),
            slot,
            reserve,
            slots: std::array::from_fn(|_| AtomicIsize::new(0)),
            writer: AtomicIsize::new(0),
            deposit_amount,
            withdraw_amount,
        }
    }

    /// One request: adds to what retries may spend.
    #[inline]
    pub(super) fn deposit(&self) {
        self.expire();
        self.writer.fetch_add(self.deposit_amount, Ordering::SeqCst);
    }

    /// One retry, if the budget allows it.
    pub(super) fn withdraw(&self) -> bool {
        self.expire();
        let windowed = self
            .slots
            .iter()
            .map(|slot| slot.load(Ordering::SeqCst))
            .fold(0, isize::saturating_add);
        let sum = self
            .writer
            .load(Ordering::SeqCst)
            .saturating_add(windowed)
            .saturating_add(self.reserve);
        if sum >= self.withdraw_amount {
            self.writer
                .fetch_add(-self.withdraw_amount, Ordering::SeqCst);
            true
        } else {
            false
        }
    }

    #[inline]
    fn expire(&self) {
        let now = Instant::now();
        if nanos(now.saturating_duration_since(self.epoch)) < self.slot_ends.load(Ordering::Acquire)
        {
            return;
        }
        self.rotate(now);
    }

    /// Tower's `expire`: commits the slot being filled and clears the slots that passed.
    #[cold]
    fn rotate(&self, now: Instant) {
        let mut generation = self.generation.lock();
        let mut elapsed = now.saturating_duration_since(generation.time);
        if elapsed < self.slot {
            return;
        }
        let filled = self.writer.swap(0, Ordering::SeqCst);
        self.slots[generation.index].store(filled, Ordering::SeqCst);
        let mut index = (generation.index + 1) % SLOTS;
        while elapsed > self.slot {
            self.slots[index].store(0, Ordering::SeqCst);
            elapsed -= self.slot;
            index = (index + 1) % SLOTS;
        }
        generation.index = index;
        generation.time = now;
        let ends = nanos(now.saturating_duration_since(self.epoch) + self.slot);
        self.slot_ends.store(ends, Ordering::Release);
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    //! Tower's `TpsBudget` tests, and the same sequences checked against it.
    use super::*;
    use tokio::time;
    use tower::retry::budget::{Budget, TpsBudget};

    #[test]
    fn empty() {
        let _rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let b = RetryBudget::new(Duration::from_secs(1), 0, 1.0);
        assert!(!b.withdraw());
    }

    #[tokio::test(start_paused = true)]
    async fn leaky() {
        let b = RetryBudget::new(Duration::from_secs(1), 0, 1.0);
        b.deposit();
        time::advance(Duration::from_secs(3)).await;
        assert!(!b.withdraw());
    }

    #[tokio::test(start_paused = true)]
    async fn slots() {
        let b = RetryBudget::new(Duration::from_secs(1), 0, 0.5);
        b.deposit();
        b.deposit();
        time::advance(Duration::from_millis(901)).await;
        assert!(b.withdraw(), "900 ms later the deposits still count");
        time::advance(Duration::from_millis(2001)).await;
        b.deposit();
        time::advance(Duration::from_millis(301)).await;
        b.deposit();
        time::advance(Duration::from_millis(801)).await;
        b.deposit();
        assert!(
            b.withdraw(),
            "the first expired, the second and third count"
        );
    }

    #[tokio::test]
    async fn reserve() {
        let b = RetryBudget::new(Duration::from_secs(1), 5, 1.0);
        for _ in 0..5 {
            assert!(b.withdraw());
        }
        assert!(!b.withdraw());
    }

    /// Same answers as tower's budget over an irregular sequence of deposits, withdrawals and
    /// pauses, for several settings.
    #[tokio::test(start_paused = true)]
    async fn agrees_with_tower() {
        for (window, min, percent) in [
            (1, 0, 0.2),
            (2, 1, 0.5),
            (10, 3, 1.0),
            (1, 0, 3.0),
            (5, 2, 0.0),
        ] {
            let window = Duration::from_secs(window);
            let ours = RetryBudget::new(window, min, percent);
            let tower = TpsBudget::new(window, min, percent);
            let mut x: u64 = 7;
            for step in 0..3000 {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                match (x >> 33) % 10 {
                    0..=5 => {
                        ours.deposit();
                        tower.deposit();
                    }
                    6 | 7 => assert_eq!(ours.withdraw(), tower.withdraw(), "step {step}"),
                    _ => time::advance(Duration::from_millis((x >> 40) % 400)).await,
                }
            }
        }
    }
}
