//! [`Balancer`]: a `tower::Service` that spreads requests over an [`EndpointSet`].

mod budget;
mod future;
mod retry;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::poll_fn;
use tower::BoxError;
use tower::discover::Discover;
use tower_service::Service;
use tracing::Instrument;

use budget::RetryBudget;
pub use future::ResponseFuture;
use future::{FirstAttempt, RetryHost};
pub use retry::{Classify, ErrorsAreFailures, RetryConfig, RetryPolicy};

use crate::error::{Error, PickError};
use crate::ewma::EwmaConfig;
use crate::health::{ActiveHealth, ActiveHealthConfig, OutlierDetection, Probe, SlowStart};
use crate::policy::{Pick, Policy};
use crate::set::{EndpointKey, EndpointSet, EndpointSetBuilder, SnapshotCache, pick_from};
use crate::snapshot::{EndpointInfo, PickContext, RequestKey};

type PendingRetry<Req, Res, E> = (RetryConfig, Box<dyn RetryPolicy<Req, Res, E>>);

type KeyFn<Req> = dyn Fn(&Req) -> Option<RequestKey> + Send + Sync;

/// Load balancer over endpoint services, shared by `&self`: clone it freely (one `Arc`), no
/// `Buffer` needed. Each call picks an endpoint with the [`Policy`], clones that endpoint's service,
/// drives it to readiness and calls it; the in-flight slot, latency and outcome feed the
/// endpoint's state. Failures of the pick are [`PickError`](crate::PickError)s (boxed).
///
/// Endpoint services must be `Clone` (as hyper clients and axum routers are): cloning is how
/// many concurrent callers use one endpoint without `&mut` access.
///
/// ```
/// use std::convert::Infallible;
/// use herd_lb_core::{Balancer, P2c};
/// use tower::{service_fn, Service, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let echo = |name: &'static str| service_fn(move |req: u32| async move { Ok::<_, Infallible>((name, req)) });
/// let balancer = Balancer::builder().policy(P2c::seeded(1)).build().unwrap();
/// balancer.insert("a", echo("a"), 1.0).unwrap();
/// balancer.insert("b", echo("b"), 1.0).unwrap();
/// let (name, n) = balancer.clone().oneshot(7).await.unwrap();
/// assert!(name == "a" || name == "b");
/// assert_eq!(n, 7);
/// # }
/// ```
pub struct Balancer<K, S, Req>
where
    S: Service<Req>,
{
    inner: Arc<Inner<K, S, Req>>,
    /// This handle's view of the current snapshot (one atomic read per call while unchanged).
    /// An idle clone keeps the snapshot it saw last alive until its next call.
    snapshot: SnapshotCache<K, S>,
}

struct Inner<K, S, Req>
where
    S: Service<Req>,
{
    set: EndpointSet<K, S>,
    policy: Policy,
    /// `policy.uses_latency()`: the pick reads the clock, once for the policy and the request.
    timed: bool,
    queue_timeout: Duration,
    key: Option<Box<KeyFn<Req>>>,
    classify: Classifier<S::Response, S::Error>,
    retry: Option<Retry<Req, S::Response, S::Error>>,
}

/// The default classifier costs nothing to carry into a response future; a custom one is shared.
pub(crate) enum Classifier<Res, E> {
    Default,
    Custom(Arc<dyn Classify<Res, E>>),
}

impl<Res, E> Clone for Classifier<Res, E> {
    fn clone(&self) -> Self {
        match self {
            Self::Default => Self::Default,
            Self::Custom(c) => Self::Custom(Arc::clone(c)),
        }
    }
}

impl<Res, E> Classifier<Res, E> {
    #[inline]
    pub(crate) fn classify(&self, result: Result<&Res, &E>) -> crate::Outcome {
        match self {
            Self::Default => ErrorsAreFailures.classify(result),
            Self::Custom(c) => c.classify(result),
        }
    }
}

struct Retry<Req, Res, E> {
    max_attempts: u32,
    policy: Box<dyn RetryPolicy<Req, Res, E>>,
    budget: RetryBudget,
}

impl<K, S: Service<Req>, Req> Clone for Balancer<K, S, Req> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
            snapshot: self.snapshot.clone(),
        }
    }
}

impl<K: fmt::Debug, S: Service<Req>, Req> fmt::Debug for Balancer<K, S, Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Balancer")
            .field("policy", &self.inner.policy)
            .field("set", &self.inner.set)
            .field("queue_timeout", &self.inner.queue_timeout)
            .field(
                "retries",
                &self.inner.retry.as_ref().map(|r| r.max_attempts),
            )
            .finish_non_exhaustive()
    }
}

/// Settings of a [`Balancer`]; from [`Balancer::builder`].
pub struct BalancerBuilder<K, S, Req>
where
    S: Service<Req>,
{
    policy: Policy,
    /// The endpoint set's own settings (health, slow start, latency, caps, seed).
    set: EndpointSetBuilder,
    queue_timeout: Duration,
    key: Option<Box<KeyFn<Req>>>,
    classify: Classifier<S::Response, S::Error>,
    retry: Option<PendingRetry<Req, S::Response, S::Error>>,
    _key: std::marker::PhantomData<fn() -> K>,
}

impl<K, S: Service<Req>, Req> fmt::Debug for BalancerBuilder<K, S, Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BalancerBuilder")
            .field("policy", &self.policy)
            .field("set", &self.set)
            .field("queue_timeout", &self.queue_timeout)
            .finish_non_exhaustive()
    }
}

/// Default bounded wait for a free endpoint slot before [`PickError::Overloaded`](crate::PickError).
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(1);

impl<K, S: Service<Req>, Req> Default for BalancerBuilder<K, S, Req> {
    fn default() -> Self {
        Self {
            policy: Policy::default(),
            set: EndpointSetBuilder::default(),
            queue_timeout: DEFAULT_QUEUE_TIMEOUT,
            key: None,
            classify: Classifier::Default,
            retry: None,
            _key: std::marker::PhantomData,
        }
    }
}

impl<K: EndpointKey, S: Service<Req>, Req> BalancerBuilder<K, S, Req> {
    /// Selection policy (default: [`P2c`](crate::P2c)).
    pub fn policy(mut self, policy: impl Into<Policy>) -> Self {
        self.policy = policy.into();
        self
    }

    /// Passive health; see [`EndpointSetBuilder::outlier_detection`].
    pub fn outlier_detection(mut self, outlier: OutlierDetection) -> Self {
        self.set = self.set.outlier_detection(outlier);
        self
    }

    /// Slow start for new and recovered endpoints; see [`EndpointSetBuilder::slow_start`].
    pub fn slow_start(mut self, slow_start: Option<SlowStart>) -> Self {
        self.set = self.set.slow_start(slow_start);
        self
    }

    /// Latency measurement; see [`EndpointSetBuilder::ewma`].
    pub fn ewma(mut self, ewma: EwmaConfig) -> Self {
        self.set = self.set.ewma(ewma);
        self
    }

    /// Per-endpoint concurrency cap; see [`EndpointSetBuilder::max_in_flight`].
    pub fn max_in_flight(mut self, max: Option<usize>) -> Self {
        self.set = self.set.max_in_flight(max);
        self
    }

    /// How long a request waits for a slot when every endpoint is at its cap (default 1 s).
    pub fn queue_timeout(mut self, timeout: Duration) -> Self {
        self.queue_timeout = timeout;
        self
    }

    /// Fixed seed for ejection jitter (policies take their own seeds); see
    /// [`EndpointSetBuilder::seed`].
    pub fn seed(mut self, seed: u64) -> Self {
        self.set = self.set.seed(seed);
        self
    }

    /// Request key for consistent hashing (client IP, header, cookie, any closure).
    pub fn key(mut self, key: impl Fn(&Req) -> Option<RequestKey> + Send + Sync + 'static) -> Self {
        self.key = Some(Box::new(key));
        self
    }

    /// What counts as a failure (default: [`ErrorsAreFailures`]).
    pub fn classify(mut self, classify: impl Classify<S::Response, S::Error> + 'static) -> Self {
        self.classify = Classifier::Custom(Arc::new(classify));
        self
    }

    /// Retries on another endpoint, for the requests `policy` allows, within `config`'s budget.
    pub fn retry(
        mut self,
        config: RetryConfig,
        policy: impl RetryPolicy<Req, S::Response, S::Error> + 'static,
    ) -> Self {
        self.retry = Some((config, Box::new(policy)));
        self
    }

    /// Builds an empty balancer; add endpoints with [`Balancer::insert`] or
    /// [`Balancer::discover`]. Invalid retry settings are refused with the field named.
    pub fn build(self) -> Result<Balancer<K, S, Req>, Error> {
        if let Some((config, _)) = &self.retry {
            config.validate()?;
        }
        let retry = self.retry.and_then(|(config, policy)| {
            (config.max_attempts > 1).then(|| Retry {
                max_attempts: config.max_attempts,
                policy,
                budget: RetryBudget::new(
                    config.budget_window,
                    config.min_retries_per_second,
                    config.budget_percent / 100.0,
                ),
            })
        });
        let set: EndpointSet<K, S> = self.set.build();
        Ok(Balancer {
            snapshot: set.snapshot_cache(),
            inner: Arc::new(Inner {
                set,
                timed: self.policy.uses_latency(),
                policy: self.policy,
                queue_timeout: self.queue_timeout,
                key: self.key,
                classify: self.classify,
                retry,
            }),
        })
    }
}

impl<K, S, Req> Balancer<K, S, Req>
where
    K: EndpointKey,
    S: Service<Req>,
{
    /// Settings for a new balancer.
    pub fn builder() -> BalancerBuilder<K, S, Req> {
        BalancerBuilder::default()
    }

    /// The endpoint set (membership, snapshots, per-endpoint state).
    pub fn set(&self) -> &EndpointSet<K, S> {
        &self.inner.set
    }

    /// The selection policy.
    pub fn policy(&self) -> &Policy {
        &self.inner.policy
    }

    /// Every endpoint's key, weight, health, ejection, in-flight count and latency estimate.
    pub fn endpoints(&self) -> Vec<EndpointInfo<K>> {
        self.inner.set.endpoints()
    }

    /// Adds an endpoint or replaces its service and weight (keeping its state).
    pub fn insert(&self, key: K, service: S, weight: f64) -> Result<(), Error>
    where
        S: Clone,
    {
        self.inner.set.insert(key, service, weight)
    }

    /// Adds a backup endpoint (nginx `server ... backup`) or makes an existing one a backup;
    /// see [`EndpointSet::insert_backup`]. Refused with [`Error::InvalidConfig`] when the
    /// policy is [`ConsistentHash`](crate::ConsistentHash), as nginx refuses `backup` with
    /// `hash` and `ip_hash`: the ring already sends an unavailable endpoint's keys to the next
    /// endpoint, and a backup would take keys only while every primary is out, then hand them
    /// all back at once.
    pub fn insert_backup(&self, key: K, service: S, weight: f64) -> Result<(), Error>
    where
        S: Clone,
    {
        if matches!(self.inner.policy, Policy::ConsistentHash(_)) {
            return Err(Error::InvalidConfig {
                field: "backups",
                reason: format!(
                    "{key}: backup endpoints cannot be used with consistent hashing (nginx \
                     refuses backup with hash and ip_hash)"
                ),
            });
        }
        self.inner.set.insert_backup(key, service, weight)
    }

    /// Removes an endpoint at once; see [`drain`](Self::drain) for a graceful removal.
    pub fn remove(&self, key: &K) -> bool
    where
        S: Clone,
    {
        self.inner.set.remove(key)
    }

    /// Changes an endpoint's weight.
    pub fn set_weight(&self, key: &K, weight: f64) -> Result<(), Error>
    where
        S: Clone,
    {
        self.inner.set.set_weight(key, weight)
    }

    /// No new requests to `key`; the future resolves once its in-flight requests finish, and
    /// removes it.
    pub fn drain(&self, key: &K) -> Result<impl Future<Output = ()> + Send + 'static, Error>
    where
        S: Clone + Send + Sync + 'static,
    {
        self.inner.set.drain(key)
    }

    /// Starts active health checks in a background task that ends when the balancer is dropped;
    /// see [`EndpointSet::spawn_active_health`].
    pub fn spawn_active_health<C>(
        &self,
        probe: C,
        config: ActiveHealthConfig,
    ) -> Result<ActiveHealth, Error>
    where
        C: Probe<K>,
        S: Send + Sync + 'static,
    {
        self.inner.set.spawn_active_health(probe, config)
    }

    /// Follows a `tower::discover::Discover` stream: inserts endpoints (weight 1) and drains the
    /// ones it removes (no new request; they leave the set once idle), as
    /// [`DiscoverFeed`](crate::discover::DiscoverFeed) does, which has the other settings. Spawn
    /// the returned future; it ends when the stream ends or fails (returning the stream's
    /// error, once the drains it started are over), or when the balancer is dropped.
    pub fn discover<D>(
        &self,
        discover: D,
    ) -> impl Future<Output = Result<(), D::Error>> + Send + 'static
    where
        D: Discover<Key = K, Service = S> + Send + 'static,
        D::Error: Send,
        S: Clone + Send + Sync + 'static,
    {
        crate::discover::DiscoverFeed::new(&self.inner.set).run(discover)
    }
}

impl<K, S, Req> Service<Req> for Balancer<K, S, Req>
where
    K: EndpointKey,
    S: Service<Req> + Clone + Send + Sync + 'static,
    S::Future: Send,
    S::Response: Send + 'static,
    S::Error: Into<BoxError> + Send + 'static,
    Req: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, Req>;

    /// Always ready: readiness is decided per endpoint inside the call, so one slow endpoint
    /// never blocks the balancer (a pick that finds none fails with a typed error instead).
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let inner = &self.inner;
        let key = inner.key.as_ref().and_then(|f| f(&req));
        if let Some(retry) = &inner.retry {
            retry.budget.deposit();
        }
        // The common case picks now and drives the first attempt without boxing; only a full set
        // (waiting for a slot) and a second attempt take the boxed path.
        let ctx = PickContext::new().with_key(key);
        let ctx = if inner.timed { ctx.timed() } else { ctx };
        match pick_from(self.snapshot.load(), &inner.policy, &ctx) {
            Ok(picked) => {
                let span = request_span(picked.guard.state().label(), 1);
                // A spare copy for a retry: `Retry` exists only with `max_attempts > 1`.
                let retry = inner.retry.as_ref().and_then(|r| {
                    let spare = r.policy.clone_request(&req)?;
                    let host: Arc<dyn RetryHost<S, Req>> = Arc::clone(inner) as _;
                    Some(FirstAttempt { host, spare, key })
                });
                return ResponseFuture::start(
                    picked.service,
                    req,
                    picked.guard,
                    inner.classify.clone(),
                    span,
                    retry,
                );
            }
            Err(PickError::Overloaded { .. }) if !inner.queue_timeout.is_zero() => {}
            Err(error) => return ResponseFuture::failed(error.into()),
        }
        let inner = Arc::clone(inner);
        ResponseFuture::boxed(Box::pin(async move {
            inner.route(req, key, Vec::new(), 1).await
        }))
    }
}

/// The per-request span (`herd.lb.request`, DEBUG, with the endpoint and the attempt number).
///
/// Built only when a subscriber may want DEBUG spans: otherwise tracing still returns a disabled
/// span that carries its metadata, and with tracing's `log` feature (which a dependency may turn
/// on) that span formats its fields on creation and emits `log` checks on every enter and exit,
/// which together cost more than the rest of a pick. `None` costs nothing to carry.
#[inline]
fn request_span(endpoint: &str, attempt: u32) -> Option<tracing::Span> {
    tracing::level_enabled!(tracing::Level::DEBUG)
        .then(|| tracing::debug_span!("herd.lb.request", endpoint, attempt))
}

impl<K, S, Req> Inner<K, S, Req>
where
    K: EndpointKey,
    S: Service<Req> + Clone + Send + Sync + 'static,
    S::Future: Send,
    S::Response: Send + 'static,
    S::Error: Into<BoxError> + Send + 'static,
    Req: Send + 'static,
{
    /// Attempt `attempt` and any further ones, avoiding the endpoints in `tried`.
    async fn route(
        &self,
        mut req: Req,
        key: Option<RequestKey>,
        mut tried: Vec<usize>,
        mut attempt: u32,
    ) -> Result<S::Response, BoxError> {
        loop {
            let spare = match &self.retry {
                Some(r) if attempt < r.max_attempts => r.policy.clone_request(&req),
                _ => None,
            };
            let ctx = PickContext::new().with_key(key).excluding(&tried);
            // The common case picks synchronously; only a full set waits (bounded) for a slot.
            let picked = match self.set.pick(&self.policy, &ctx) {
                Err(PickError::Overloaded { .. }) if !self.queue_timeout.is_zero() => {
                    self.set
                        .pick_wait(&self.policy, &ctx, self.queue_timeout)
                        .await?
                }
                other => other?,
            };
            let index = picked.guard.index();
            let span = request_span(picked.guard.state().label(), attempt)
                .unwrap_or_else(tracing::Span::none);
            let mut service = picked.service;
            let result = async {
                poll_fn(|cx| service.poll_ready(cx)).await?;
                service.call(req).await
            }
            .instrument(span)
            .await;
            picked.guard.record(self.classify.classify(result.as_ref()));
            if let Some(next) = spare
                && self.may_retry(&next, result.as_ref(), attempt)
            {
                tried.push(index);
                attempt += 1;
                req = next;
                continue;
            }
            return result.map_err(Into::into);
        }
    }

    /// Whether attempt `attempt`'s result is retried: the policy wants it and the budget allows.
    fn may_retry(&self, req: &Req, result: Result<&S::Response, &S::Error>, attempt: u32) -> bool {
        let Some(retry) = &self.retry else {
            return false;
        };
        if !retry.policy.should_retry(req, result) {
            return false;
        }
        if retry.budget.withdraw() {
            tracing::debug!(attempt, "retrying on another endpoint");
            return true;
        }
        tracing::debug!(attempt, "retry budget exhausted");
        false
    }
}

impl<K, S, Req> RetryHost<S, Req> for Inner<K, S, Req>
where
    K: EndpointKey,
    S: Service<Req> + Clone + Send + Sync + 'static,
    S::Future: Send,
    S::Response: Send + 'static,
    S::Error: Into<BoxError> + Send + 'static,
    Req: Send + 'static,
{
    fn may_retry(&self, req: &Req, result: Result<&S::Response, &S::Error>) -> bool {
        Inner::may_retry(self, req, result, 1)
    }

    fn retry(
        self: Arc<Self>,
        req: Req,
        key: Option<RequestKey>,
        tried: usize,
    ) -> future::BoxedResponse<S::Response> {
        Box::pin(async move { self.route(req, key, vec![tried], 2).await })
    }
}
