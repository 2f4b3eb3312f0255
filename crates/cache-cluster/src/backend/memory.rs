//! Process memory, so applications run without Redis in development and tests.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{broadcast, mpsc, watch};

use super::{NodeHealth, PubSubEvent};
use crate::error::Error;

pub(super) const NAME: &str = "memory";

/// Expired entries are swept after this many writes, so memory does not grow with dead keys.
const SWEEP_EVERY: u32 = 1024;

/// An in-memory backend. Clones share the data and the pub/sub bus, so several
/// [`Cache`](crate::Cache)s over clones of one `MemoryBackend` see each other's writes and
/// invalidations, like instances over one Redis.
#[derive(Clone)]
pub struct MemoryBackend {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    bus: broadcast::Sender<(String, Vec<u8>)>,
    resets: watch::Sender<u64>,
}

#[derive(Default)]
struct State {
    values: HashMap<String, (Vec<u8>, Instant)>,
    tags: HashMap<String, (HashSet<String>, Instant)>,
    writes: u32,
}

impl fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryBackend")
            .field("entries", &self.inner.state.lock().values.len())
            .finish()
    }
}

impl Default for MemoryBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBackend {
    /// An empty backend.
    pub fn new() -> Self {
        let (bus, _) = broadcast::channel(1024);
        let (resets, _) = watch::channel(0);
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                bus,
                resets,
            }),
        }
    }

    /// Replaces the stored bytes of `key` as they are (no encoding), e.g. to test that foreign
    /// values are treated as misses.
    pub fn insert_raw(&self, key: impl Into<String>, value: impl Into<Vec<u8>>, ttl: Duration) {
        self.write(key.into(), value.into(), ttl);
    }

    fn write(&self, key: String, value: Vec<u8>, ttl: Duration) {
        let mut state = self.inner.state.lock();
        let now = Instant::now();
        state.values.insert(key, (value, expiry(now, ttl)));
        state.writes = state.writes.wrapping_add(1);
        if state.writes.is_multiple_of(SWEEP_EVERY) {
            state.values.retain(|_, (_, until)| *until > now);
            state.tags.retain(|_, (_, until)| *until > now);
        }
    }

    fn read(&self, key: &str) -> Option<Vec<u8>> {
        let state = self.inner.state.lock();
        state
            .values
            .get(key)
            .filter(|(_, until)| *until > Instant::now())
            .map(|(v, _)| v.clone())
    }

    pub(super) async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.read(key))
    }

    pub(super) async fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), Error> {
        self.write(key.to_owned(), value.to_vec(), ttl);
        Ok(())
    }

    pub(super) async fn set_nx(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<bool, Error> {
        let mut state = self.inner.state.lock();
        let now = Instant::now();
        if state.values.get(key).is_some_and(|(_, until)| *until > now) {
            return Ok(false);
        }
        state
            .values
            .insert(key.to_owned(), (value.to_vec(), expiry(now, ttl)));
        Ok(true)
    }

    pub(super) async fn delete_if_equals(&self, key: &str, value: &[u8]) -> Result<bool, Error> {
        let mut state = self.inner.state.lock();
        if state.values.get(key).is_some_and(|(v, _)| v == value) {
            state.values.remove(key);
            return Ok(true);
        }
        Ok(false)
    }

    pub(super) async fn delete(&self, keys: &[String]) -> Result<u64, Error> {
        let mut state = self.inner.state.lock();
        let now = Instant::now();
        let removed = keys
            .iter()
            .filter(|k| {
                state
                    .values
                    .remove(k.as_str())
                    .is_some_and(|(_, until)| until > now)
            })
            .count();
        for key in keys {
            state.tags.remove(key.as_str());
        }
        Ok(removed as u64)
    }

    pub(super) async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, Error> {
        Ok(keys.iter().map(|k| self.read(k)).collect())
    }

    pub(super) async fn set_many(
        &self,
        items: &[(String, Vec<u8>)],
        ttl: Duration,
    ) -> Result<(), Error> {
        for (key, value) in items {
            self.write(key.clone(), value.clone(), ttl);
        }
        Ok(())
    }

    pub(super) async fn tag_add(
        &self,
        tag_key: &str,
        members: &[String],
        ttl: Duration,
    ) -> Result<(), Error> {
        let mut state = self.inner.state.lock();
        let until = expiry(Instant::now(), ttl);
        let (set, expiry) = state
            .tags
            .entry(tag_key.to_owned())
            .or_insert_with(|| (HashSet::new(), until));
        set.extend(members.iter().cloned());
        *expiry = (*expiry).max(until);
        Ok(())
    }

    pub(super) async fn tag_members(&self, tag_key: &str) -> Result<Vec<String>, Error> {
        let state = self.inner.state.lock();
        Ok(state
            .tags
            .get(tag_key)
            .filter(|(_, until)| *until > Instant::now())
            .map(|(set, _)| set.iter().cloned().collect())
            .unwrap_or_default())
    }

    pub(super) async fn publish(&self, channel: &str, payload: &[u8]) -> Result<(), Error> {
        // No subscriber is not an error, as with Redis.
        let _ = self.inner.bus.send((channel.to_owned(), payload.to_vec()));
        Ok(())
    }

    pub(super) async fn subscribe(
        &self,
        channel: &str,
    ) -> Result<mpsc::UnboundedReceiver<PubSubEvent>, Error> {
        let (events, rx) = mpsc::unbounded_channel();
        let mut bus = self.inner.bus.subscribe();
        let channel = channel.to_owned();
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    () = events.closed() => return,
                    received = bus.recv() => match received {
                        Ok((ch, payload)) if ch == channel => PubSubEvent::Message(payload),
                        Ok(_) => continue,
                        Err(broadcast::error::RecvError::Lagged(_)) => PubSubEvent::Interrupted,
                        Err(broadcast::error::RecvError::Closed) => return,
                    }
                };
                if events.send(event).is_err() {
                    return;
                }
            }
        });
        Ok(rx)
    }

    pub(super) fn resets(&self) -> watch::Receiver<u64> {
        self.inner.resets.subscribe()
    }

    pub(super) async fn ping_nodes(&self) -> Vec<NodeHealth> {
        vec![NodeHealth {
            node: NAME.into(),
            latency: Some(Duration::ZERO),
            error: None,
        }]
    }
}

/// When a value stored at `now` for `ttl` expires: a TTL too long for the clock (e.g.
/// `Duration::MAX`) keeps it for about a century instead of overflowing.
fn expiry(now: Instant, ttl: Duration) -> Instant {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    now.checked_add(ttl)
        .or_else(|| now.checked_add(CENTURY))
        .unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ttl_too_long_for_the_clock_neither_panics_nor_expires() {
        let backend = MemoryBackend::new();
        backend.insert_raw("k", b"v".to_vec(), Duration::MAX);
        let now = Instant::now();
        assert!(expiry(now, Duration::MAX) > now + Duration::from_secs(3600));
        assert_eq!(
            expiry(now, Duration::from_secs(5)),
            now + Duration::from_secs(5)
        );
    }
}
