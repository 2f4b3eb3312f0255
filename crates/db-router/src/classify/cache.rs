//! A small per-router memo of routes for repeated SQL text.
//!
//! Applications send the same few statements over and over, so the router remembers the
//! route of recently seen SQL instead of lexing it again. The cache is direct-mapped (one
//! entry per slot, the newest wins), bounded in entries and in statement length, and keyed
//! by a hash of the text; a hit also compares the whole text, so a hash collision can only
//! cost a miss, never a wrong route. Slots are `ArcSwap`s: readers on many threads never
//! write to shared memory.
//!
//! A route depends on the server's catalog too (which functions are volatile, how strings
//! are read). Each entry carries the cache's generation from before it was classified;
//! [`RouteCache::invalidate`], called after a new catalog is swapped in, moves the
//! generation on, so no route classified with the old catalog is served again, even one
//! stored after the swap by a reader that started before it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwapOption;

use super::Route;

/// Number of slots: enough for an application's hot statements, small enough to stay cheap.
const SLOTS: usize = 128;
/// Longer statements are classified every time, so the cache holds at most
/// `SLOTS * MAX_LEN` bytes of SQL.
const MAX_LEN: usize = 2048;

#[derive(Debug)]
struct Entry {
    hash: u64,
    generation: u64,
    sql: Box<str>,
    route: Route,
}

/// Remembers the route of recently classified SQL text.
#[derive(Debug)]
pub(crate) struct RouteCache {
    slots: Box<[ArcSwapOption<Entry>]>,
    generation: AtomicU64,
}

impl RouteCache {
    pub(crate) fn new() -> Self {
        Self {
            slots: (0..SLOTS).map(|_| ArcSwapOption::empty()).collect(),
            generation: AtomicU64::new(0),
        }
    }

    /// Forgets every route remembered so far (the catalog changed).
    pub(crate) fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        for slot in self.slots.iter() {
            slot.store(None);
        }
    }

    /// The route of `sql`: remembered, or computed by `classify` and remembered.
    pub(crate) fn route(&self, sql: &str, classify: impl FnOnce(&str) -> Route) -> Route {
        if sql.len() > MAX_LEN {
            return classify(sql);
        }
        // Read before classifying: see the module docs.
        let generation = self.generation.load(Ordering::Acquire);
        let hash = hash(sql.as_bytes());
        // `SLOTS` is a power of two: the low bits pick the slot.
        let Some(slot) = self.slots.get(hash as usize & (SLOTS - 1)) else {
            return classify(sql);
        };
        if let Some(entry) = &*slot.load()
            && entry.hash == hash
            && entry.generation == generation
            && *entry.sql == *sql
        {
            return entry.route;
        }
        let route = classify(sql);
        slot.store(Some(Arc::new(Entry {
            hash,
            generation,
            sql: sql.into(),
            route,
        })));
        route
    }
}

/// A fast, non-cryptographic hash of the SQL bytes (eight at a time). Not exposed to
/// attackers in any way that matters: a collision only costs a reclassification.
fn hash(bytes: &[u8]) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let mix = |h: u64, word: u64| (h.rotate_left(5) ^ word).wrapping_mul(K);
    let word = |chunk: &[u8]| <[u8; 8]>::try_from(chunk).map_or(0, u64::from_le_bytes);
    let mut h = bytes.len() as u64;
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        h = mix(h, word(chunk));
    }
    let rest = chunks.remainder().len();
    if rest != 0 {
        // The last eight bytes (overlapping the last whole word) cover the rest in one read;
        // shorter statements are padded with zeros (the length is in the hash already).
        let last = match bytes.len().checked_sub(8) {
            Some(start) => bytes.get(start..).map_or(0, word),
            None => {
                let mut padded = [0_u8; 8];
                for (to, from) in padded.iter_mut().zip(bytes) {
                    *to = *from;
                }
                u64::from_le_bytes(padded)
            }
        };
        h = mix(h, last);
    }
    // Fold the high bits (the best mixed) into the low ones used to pick a slot.
    h ^ (h >> 32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::{Reason, classify};

    #[test]
    fn remembers_routes_and_tells_statements_apart() {
        let cache = RouteCache::new();
        let statements = [
            "SELECT v FROM kv WHERE id = $1",
            "SELECT v FROM kv WHERE id = $1 FOR UPDATE",
            "UPDATE kv SET v = $2 WHERE id = $1",
            "",
            "select 1",
        ];
        for _ in 0..3 {
            for sql in statements {
                assert_eq!(cache.route(sql, classify), classify(sql), "{sql}");
            }
        }
        // A hit does not classify again.
        cache.route(statements[0], classify);
        assert_eq!(
            cache.route(statements[0], |_| unreachable!("cached")),
            classify(statements[0])
        );
    }

    #[test]
    fn more_statements_than_slots_and_long_statements_stay_correct() {
        let cache = RouteCache::new();
        for round in 0..2 {
            for i in 0..(SLOTS * 3) {
                let sql = if i % 2 == 0 {
                    format!("SELECT {i}")
                } else {
                    format!("DELETE FROM t WHERE id = {i}")
                };
                assert_eq!(
                    cache.route(&sql, classify),
                    classify(&sql),
                    "round {round}: {sql}"
                );
            }
        }
        let long = format!("SELECT 1 {}", " ".repeat(MAX_LEN));
        assert_eq!(cache.route(&long, classify), classify(&long));
        assert_eq!(
            cache.route("SELECT 1 FOR UPDATE", classify),
            classify("SELECT 1 FOR UPDATE")
        );
    }

    #[test]
    fn invalidate_forgets_routes_even_those_stored_late() {
        let cache = RouteCache::new();
        let sql = "SELECT app.touch(1)";
        assert!(
            cache
                .route(sql, |_| Route::Replica(Reason::ReadOnly))
                .is_replica()
        );
        assert!(cache.route(sql, |_| unreachable!("cached")).is_replica());
        cache.invalidate();
        assert!(
            cache
                .route(sql, |_| Route::Primary(Reason::VolatileFunction))
                .is_primary()
        );
        // A reader that classified with the old catalog and stores after the swap.
        let stale = cache.route("SELECT 2", |_| {
            cache.invalidate();
            Route::Replica(Reason::ReadOnly)
        });
        assert!(stale.is_replica());
        assert!(
            cache
                .route("SELECT 2", |_| Route::Primary(Reason::VolatileFunction))
                .is_primary()
        );
    }

    #[test]
    fn hash_depends_on_every_byte() {
        assert_ne!(hash(b"SELECT 1"), hash(b"SELECT 2"));
        assert_ne!(hash(b"SELECT 1 "), hash(b"SELECT 1"));
        assert_ne!(hash(b"abcdefgh1"), hash(b"abcdefgh2"));
        // Every byte of a tail counts, whatever the length.
        let sql = b"SELECT v FROM bench_kv WHERE id = $1";
        for len in 0..=sql.len() {
            for i in 0..len {
                let mut changed = sql[..len].to_vec();
                changed[i] ^= 1;
                assert_ne!(hash(&sql[..len]), hash(&changed), "len {len}, byte {i}");
            }
        }
    }
}
