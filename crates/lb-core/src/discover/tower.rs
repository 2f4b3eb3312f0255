//! [`DiscoverFeed`]: an [`EndpointSet`] that follows a `tower::discover::Discover` stream.

use std::fmt;
use std::future::poll_fn;
use std::pin::{Pin, pin};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, ready};

use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, Stream, StreamExt};
use tower::discover::{Change, Discover};

use crate::endpoint::{EndpointState, EndpointStatus};
use crate::error::Error;
use crate::set::{EndpointKey, EndpointSet, SetInner, check_weight};

/// What a feed does with an endpoint its stream removes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Removal {
    /// No new request at once; it leaves the set when its in-flight requests have finished
    /// ([`EndpointSet::drain`]). The default: a scaled-down instance finishes what it took.
    #[default]
    Drain,
    /// Leaves the set at once ([`EndpointSet::remove`]); requests in flight still finish.
    Remove,
}

/// Feeds an [`EndpointSet`] from a `tower::discover::Discover` stream: `Change::Insert`
/// inserts (or replaces the service of) an endpoint, `Change::Remove` drains it (see
/// [`Removal`]).
///
/// Endpoints that stay keep their state; an endpoint inserted again while it drains takes
/// requests again, with its state. Unlike [`Balancer::discover`](crate::Balancer::discover),
/// which removes at once, removals here let in-flight requests finish first.
///
/// ```
/// use herd_lb_core::EndpointSet;
/// use herd_lb_core::discover::DiscoverFeed;
/// use tower::discover::Change;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let set: EndpointSet<&str> = EndpointSet::new();
/// let changes = futures_util::stream::iter([
///     Ok::<_, std::convert::Infallible>(Change::Insert("a", ())),
///     Ok(Change::Insert("b", ())),
///     Ok(Change::Remove("a")),
/// ]);
/// DiscoverFeed::new(&set).run(changes).await.unwrap();
/// assert_eq!(set.endpoints().iter().map(|e| e.key).collect::<Vec<_>>(), ["b"]);
/// # }
/// ```
pub struct DiscoverFeed<K, S> {
    set: Weak<SetInner<K, S>>,
    weight: f64,
    removal: Removal,
}

impl<K: fmt::Debug, S> fmt::Debug for DiscoverFeed<K, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DiscoverFeed")
            .field("weight", &self.weight)
            .field("removal", &self.removal)
            .finish_non_exhaustive()
    }
}

/// An endpoint whose drain has finished: removed if it is still the same and still draining.
type Drained<K> = (K, Arc<EndpointState>);

impl<K, S> DiscoverFeed<K, S>
where
    K: EndpointKey,
    S: Clone + Send + Sync + 'static,
{
    /// A feed into `set` (weight 1, removals drained). The feed does not keep the set alive:
    /// [`run`](Self::run) ends when the set is dropped.
    pub fn new(set: &EndpointSet<K, S>) -> Self {
        Self {
            set: set.downgrade(),
            weight: 1.0,
            removal: Removal::Drain,
        }
    }

    /// The weight of inserted endpoints (default 1). A weight that is not finite and > 0 is
    /// refused.
    pub fn weight(mut self, weight: f64) -> Result<Self, Error> {
        check_weight(&"discovered endpoints", weight)?;
        self.weight = weight;
        Ok(self)
    }

    /// What happens to removed endpoints (default [`Removal::Drain`]).
    pub fn removal(mut self, removal: Removal) -> Self {
        self.removal = removal;
        self
    }

    /// Applies the stream's changes until it ends (then waits for the drains it started),
    /// fails (returning its error, after those drains) or the set is dropped (noticed when the
    /// stream next wakes the feed). Spawn it.
    pub async fn run<D>(self, discover: D) -> Result<(), D::Error>
    where
        D: Discover<Key = K, Service = S>,
    {
        let mut discover = pin!(discover);
        // Drains are awaited here, not in spawned tasks, so that every change this feed makes
        // happens in order: a drain never removes an endpoint the stream has since inserted.
        let mut drains: FuturesUnordered<BoxFuture<'static, Drained<K>>> = FuturesUnordered::new();
        let ended = loop {
            let event = poll_fn(|cx| {
                // Checked at every wake-up (a stream with timers, such as DNS, wakes the feed
                // even when nothing changes), so the feed ends soon after the set is dropped.
                if self.set.strong_count() == 0 {
                    return Poll::Ready(Event::SetDropped);
                }
                if let Poll::Ready(Some(done)) = drains.poll_next_unpin(cx) {
                    return Poll::Ready(Event::Drained(done));
                }
                discover.as_mut().poll_discover(cx).map(Event::Changed)
            })
            .await;
            let Some(set) = EndpointSet::upgrade(&self.set) else {
                return Ok(());
            };
            match event {
                Event::SetDropped => return Ok(()),
                Event::Drained((key, state)) => finish_drain(&set, &key, &state),
                Event::Changed(None) => break Ok(()),
                Event::Changed(Some(Err(e))) => break Err(e),
                Event::Changed(Some(Ok(Change::Insert(key, service)))) => {
                    if let Some(state) = set.state(&key)
                        && state.status() == EndpointStatus::Draining
                    {
                        state.stop_draining();
                        tracing::info!(endpoint = %key, "discovery: draining endpoint is back");
                    }
                    if let Err(err) = set.insert(key, service, self.weight) {
                        tracing::warn!(%err, "discovery: insert refused");
                    }
                }
                Event::Changed(Some(Ok(Change::Remove(key)))) => match self.removal {
                    Removal::Remove => {
                        set.remove(&key);
                    }
                    Removal::Drain => {
                        let Some(state) = set.state(&key) else {
                            continue;
                        };
                        if state.status() == EndpointStatus::Draining {
                            continue; // already on its way out
                        }
                        state.start_draining();
                        tracing::info!(endpoint = %key, in_flight = state.in_flight(), "discovery: draining endpoint");
                        drains.push(Box::pin(async move {
                            state.wait_drained().await;
                            (key, state)
                        }));
                    }
                },
            }
        };
        while let Some((key, state)) = drains.next().await {
            let Some(set) = EndpointSet::upgrade(&self.set) else {
                break;
            };
            finish_drain(&set, &key, &state);
        }
        ended
    }
}

enum Event<K, S, E> {
    SetDropped,
    Drained(Drained<K>),
    Changed(Option<Result<Change<K, S>, E>>),
}

/// Removes a drained endpoint unless it came back meanwhile (no longer draining) or was
/// replaced by another with the same key.
fn finish_drain<K: EndpointKey, S: Clone>(
    set: &EndpointSet<K, S>,
    key: &K,
    state: &Arc<EndpointState>,
) {
    let same = set.state(key).is_some_and(|s| Arc::ptr_eq(&s, state));
    if same && state.status() == EndpointStatus::Draining {
        set.remove(key);
    }
}

pin_project_lite::pin_project! {
    /// A `Discover` stream whose inserted services are mapped by a function: for example the
    /// addresses of [`DnsDiscover`](crate::discover::DnsDiscover) into clients of them.
    ///
    /// ```
    /// use herd_lb_core::discover::MapService;
    /// use tower::discover::Change;
    /// use futures_util::StreamExt;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let addresses = futures_util::stream::iter([Ok::<_, std::convert::Infallible>(Change::Insert(1, "10.0.0.1"))]);
    /// let mut clients = MapService::new(addresses, |addr: &str| format!("client of {addr}"));
    /// let Some(Ok(Change::Insert(_, client))) = clients.next().await else { unreachable!() };
    /// assert_eq!(client, "client of 10.0.0.1");
    /// # }
    /// ```
    pub struct MapService<D, F> {
        #[pin]
        inner: D,
        map: F,
    }
}

impl<D, F> MapService<D, F> {
    /// `inner` with each inserted service passed through `map`.
    pub fn new(inner: D, map: F) -> Self {
        Self { inner, map }
    }
}

impl<D: fmt::Debug, F> fmt::Debug for MapService<D, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MapService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<D, F, T> Stream for MapService<D, F>
where
    D: Discover,
    F: FnMut(D::Service) -> T,
{
    type Item = Result<Change<D::Key, T>, D::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.project();
        Poll::Ready(match ready!(this.inner.poll_discover(cx)) {
            None => None,
            Some(Err(e)) => Some(Err(e)),
            Some(Ok(Change::Insert(key, service))) => {
                Some(Ok(Change::Insert(key, (this.map)(service))))
            }
            Some(Ok(Change::Remove(key))) => Some(Ok(Change::Remove(key))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tokio::sync::mpsc;

    use crate::{P2c, PickContext};

    type Item = Result<Change<&'static str, ()>, Infallible>;

    fn channel() -> (mpsc::UnboundedSender<Item>, impl Stream<Item = Item>) {
        let (tx, mut rx) = mpsc::unbounded_channel();
        (
            tx,
            futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)),
        )
    }

    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_removed_endpoint_drains_then_leaves_and_the_others_keep_their_state() {
        let set: EndpointSet<&str> = EndpointSet::new();
        let (tx, changes) = channel();
        let feed = tokio::spawn(DiscoverFeed::new(&set).run(changes));
        tx.send(Ok(Change::Insert("a", ()))).unwrap();
        tx.send(Ok(Change::Insert("b", ()))).unwrap();
        settle().await;
        assert_eq!(set.len(), 2);
        let a = set.state(&"a").unwrap();
        let b = set.state(&"b").unwrap();
        // One request in flight on each.
        let policy = P2c::seeded(3);
        let mut guards = Vec::new();
        while guards.len() < 2 {
            let picked = set.pick(&policy, &PickContext::new()).unwrap();
            if picked.guard.state().in_flight() == 1 {
                guards.push(picked.guard);
            }
        }
        tx.send(Ok(Change::Remove("a"))).unwrap();
        settle().await;
        assert_eq!(a.status(), EndpointStatus::Draining);
        assert_eq!(set.len(), 2, "a stays while its request runs");
        for _ in 0..20 {
            let picked = set.pick(&policy, &PickContext::new()).unwrap();
            assert_eq!(
                picked.guard.state().label(),
                "b",
                "a draining endpoint takes no request"
            );
        }
        let (on_a, on_b): (Vec<_>, Vec<_>) =
            guards.into_iter().partition(|g| Arc::ptr_eq(g.state(), &a));
        on_a.into_iter().for_each(|g| g.success());
        settle().await;
        assert_eq!(
            set.endpoints().iter().map(|e| e.key).collect::<Vec<_>>(),
            ["b"]
        );
        assert!(
            Arc::ptr_eq(&set.state(&"b").unwrap(), &b),
            "b kept its state"
        );
        assert_eq!(b.in_flight(), 1);
        on_b.into_iter().for_each(|g| g.success());
        drop(tx);
        feed.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn an_endpoint_back_while_draining_stays_with_its_state() {
        let set: EndpointSet<&str> = EndpointSet::new();
        let (tx, changes) = channel();
        let feed = tokio::spawn(DiscoverFeed::new(&set).run(changes));
        tx.send(Ok(Change::Insert("a", ()))).unwrap();
        settle().await;
        let a = set.state(&"a").unwrap();
        let guard = set
            .pick(&P2c::seeded(1), &PickContext::new())
            .unwrap()
            .guard;
        tx.send(Ok(Change::Remove("a"))).unwrap();
        settle().await;
        assert_eq!(a.status(), EndpointStatus::Draining);
        tx.send(Ok(Change::Insert("a", ()))).unwrap();
        settle().await;
        guard.success();
        settle().await;
        let now = set.state(&"a").expect("a is back");
        assert!(Arc::ptr_eq(&now, &a));
        assert_ne!(now.status(), EndpointStatus::Draining);
        assert_eq!(
            now.completed().0,
            1,
            "its one request is counted on the same state"
        );
        drop(tx);
        feed.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn removal_remove_cuts_at_once_and_the_feed_ends_with_the_set() {
        let set: EndpointSet<&str> = EndpointSet::new();
        let (tx, changes) = channel();
        let feed = tokio::spawn(
            DiscoverFeed::new(&set)
                .removal(Removal::Remove)
                .run(changes),
        );
        tx.send(Ok(Change::Insert("a", ()))).unwrap();
        settle().await;
        let _guard = set
            .pick(&P2c::seeded(1), &PickContext::new())
            .unwrap()
            .guard;
        tx.send(Ok(Change::Remove("a"))).unwrap();
        settle().await;
        assert!(set.is_empty());
        drop(set);
        tx.send(Ok(Change::Insert("b", ()))).unwrap();
        feed.await.unwrap().unwrap();
    }

    #[test]
    fn a_bad_weight_is_refused() {
        let set: EndpointSet<&str> = EndpointSet::new();
        assert!(DiscoverFeed::new(&set).weight(0.0).is_err());
        assert!(DiscoverFeed::new(&set).weight(2.0).is_ok());
    }
}
