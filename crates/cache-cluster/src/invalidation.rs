//! Keeping L1s of several instances coherent: every set/delete/invalidate_tag publishes the keys
//! it changed; every instance drops them from its L1. A subscription that was interrupted, or a
//! connection/topology reset, flushes the whole L1, because messages may have been missed.

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::backend::{Backend, PubSubEvent};
use crate::error::Error;
use crate::l1::L1;
use crate::metrics::{ERRORS_TOTAL, INVALIDATIONS_KEPT_TOTAL, INVALIDATIONS_RECEIVED_TOTAL};
use crate::task::AbortOnDrop;

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct Invalidation {
    /// The publishing instance, which already updated its own L1.
    pub(crate) origin: u64,
    pub(crate) keys: Vec<String>,
    /// Per key, the [fingerprint](crate::codec::fingerprint) of the value the write stored;
    /// `None` (or missing) for a delete. An instance whose L1 entry already holds that value
    /// (it read it from Redis before this message came) keeps it, instead of dropping the
    /// value it has just loaded. Last, so that a reader without this field (postcard ignores
    /// trailing bytes) still reads `origin` and `keys`.
    pub(crate) written: Vec<Option<u64>>,
}

/// A message from an instance that sends no fingerprints (every entry is dropped).
#[derive(Deserialize)]
struct KeysOnly {
    origin: u64,
    keys: Vec<String>,
}

impl Invalidation {
    pub(crate) fn encode(&self) -> Vec<u8> {
        // Serializing owned strings and integers cannot fail; an empty payload would be ignored.
        postcard::to_stdvec(self).unwrap_or_default()
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        postcard::from_bytes(bytes).ok().or_else(|| {
            let KeysOnly { origin, keys } = postcard::from_bytes(bytes).ok()?;
            Some(Self {
                origin,
                keys,
                written: Vec::new(),
            })
        })
    }

    /// The keys, each with the fingerprint of its written value when the message has one.
    fn entries(&self) -> impl Iterator<Item = (&str, Option<u64>)> {
        self.keys
            .iter()
            .enumerate()
            .map(|(i, key)| (key.as_str(), self.written.get(i).copied().flatten()))
    }
}

/// Subscribes to `channel` (when `subscribe` is set) and listens for backend resets.
pub(crate) async fn start(
    backend: &Backend,
    channel: Option<&str>,
    origin: u64,
    l1: L1,
) -> Result<AbortOnDrop, Error> {
    let mut events = match channel {
        Some(channel) => Some(backend.subscribe(channel).await?),
        None => None,
    };
    let mut resets = backend.resets();
    Ok(AbortOnDrop(tokio::spawn(async move {
        loop {
            tokio::select! {
                event = next(&mut events) => match event {
                    Some(PubSubEvent::Message(bytes)) => match Invalidation::decode(&bytes) {
                        Some(msg) if msg.origin != origin => {
                            let kept = msg
                                .entries()
                                .filter(|&(key, written)| l1.invalidate_unless_written(key, written))
                                .count();
                            metrics::counter!(INVALIDATIONS_RECEIVED_TOTAL).increment(1);
                            if kept > 0 {
                                metrics::counter!(INVALIDATIONS_KEPT_TOTAL).increment(kept as u64);
                            }
                        }
                        Some(_) => {}
                        None => metrics::counter!(ERRORS_TOTAL, "kind" => "invalidation_decode").increment(1),
                    },
                    Some(PubSubEvent::Interrupted) => {
                        tracing::info!("cache invalidation subscription was interrupted; flushing L1");
                        l1.invalidate_all();
                    }
                    None => events = None,
                },
                changed = resets.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    tracing::info!("cache backend connections were reset; flushing L1");
                    l1.invalidate_all();
                }
            }
        }
    })))
}

async fn next(events: &mut Option<mpsc::UnboundedReceiver<PubSubEvent>>) -> Option<PubSubEvent> {
    match events {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_garbage_is_rejected() {
        let msg = Invalidation {
            origin: 42,
            keys: vec!["a".into(), "b".into()],
            written: vec![Some(7), None],
        };
        let decoded = Invalidation::decode(&msg.encode()).unwrap();
        assert_eq!(
            decoded.entries().collect::<Vec<_>>(),
            [("a", Some(7)), ("b", None)]
        );
        assert_eq!(decoded, msg);
        assert_eq!(Invalidation::decode(b"\xff\xff\xff"), None);
    }

    #[test]
    fn messages_without_fingerprints_drop_every_key() {
        #[derive(Serialize)]
        struct KeysOnly<'a> {
            origin: u64,
            keys: &'a [&'a str],
        }
        let old = postcard::to_stdvec(&KeysOnly {
            origin: 42,
            keys: &["a", "b"],
        })
        .unwrap();
        let decoded = Invalidation::decode(&old).unwrap();
        assert_eq!(decoded.origin, 42);
        assert_eq!(
            decoded.entries().collect::<Vec<_>>(),
            [("a", None), ("b", None)]
        );
        // And a reader that knows no fingerprints reads a new message.
        let new = Invalidation {
            origin: 1,
            keys: vec!["k".into()],
            written: vec![Some(3)],
        }
        .encode();
        let read: (u64, Vec<String>) = postcard::from_bytes(&new).unwrap();
        assert_eq!(read, (1, vec!["k".to_owned()]));
    }
}
