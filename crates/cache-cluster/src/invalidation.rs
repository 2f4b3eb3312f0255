//! Keeping L1s of several instances coherent: every set/delete/invalidate_tag publishes the keys
//! it changed; every instance drops them from its L1. A subscription that was interrupted, or a
//! connection/topology reset, flushes the whole L1, because messages may have been missed.

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::backend::{Backend, PubSubEvent};
use crate::error::Error;
use crate::l1::L1;
use crate::metrics::{ERRORS_TOTAL, INVALIDATIONS_RECEIVED_TOTAL};
use crate::task::AbortOnDrop;

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct Invalidation {
    /// The publishing instance, which already updated its own L1.
    pub(crate) origin: u64,
    pub(crate) keys: Vec<String>,
}

impl Invalidation {
    pub(crate) fn encode(&self) -> Vec<u8> {
        // Serializing owned strings and an integer cannot fail; an empty payload would be ignored.
        postcard::to_stdvec(self).unwrap_or_default()
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        postcard::from_bytes(bytes).ok()
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
                            for key in &msg.keys {
                                l1.invalidate(key);
                            }
                            metrics::counter!(INVALIDATIONS_RECEIVED_TOTAL).increment(1);
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
        };
        assert_eq!(Invalidation::decode(&msg.encode()), Some(msg));
        assert_eq!(Invalidation::decode(b"\xff\xff\xff"), None);
    }
}
