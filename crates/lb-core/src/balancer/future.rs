//! The response future of [`Balancer`](crate::Balancer).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker, ready};

use pin_project_lite::pin_project;
use tower_service::Service;

use super::{BoxError, Classifier};
use crate::endpoint::InFlightGuard;
use crate::snapshot::RequestKey;

/// Attempts after the first, and a request that waits for a free slot: `Inner::route`, an
/// `async fn` (a loop of picks, waits on the set's `Notify` and calls), whose future type has
/// no name on stable Rust. Boxed rather than written out as a state machine because these paths
/// are rare (a failed attempt within the retry budget, a set at its concurrency caps) and the
/// request that takes one has already waited or failed; the common path, one attempt on a ready
/// endpoint, is not boxed.
pub(super) type BoxedResponse<Res> = Pin<Box<dyn Future<Output = Result<Res, BoxError>> + Send>>;

/// An endpoint that was not ready at once, driven to readiness and then called. Boxed so that
/// the response future does not hold the endpoint's service and the request on every call for
/// a case that is rare (an HTTP endpoint is always ready).
type BoxedCall<S, Req> = Pin<
    Box<
        dyn Future<Output = Result<<S as Service<Req>>::Future, <S as Service<Req>>::Error>> + Send,
    >,
>;

/// The balancer, as the first attempt sees it: whether to retry, and the boxed rest of the
/// attempts (rare, so boxing them keeps the common future small).
pub(super) trait RetryHost<S: Service<Req>, Req>: Send + Sync {
    /// Whether the first attempt's result is retried (policy and budget).
    fn may_retry(&self, req: &Req, result: Result<&S::Response, &S::Error>) -> bool;

    /// Attempts 2 and later, avoiding the endpoint `tried`.
    fn retry(
        self: Arc<Self>,
        req: Req,
        key: Option<RequestKey>,
        tried: usize,
    ) -> BoxedResponse<S::Response>;
}

/// What a retry after the first attempt needs.
pub(super) struct FirstAttempt<S: Service<Req>, Req> {
    pub(super) host: Arc<dyn RetryHost<S, Req>>,
    /// The copy sent on a retry.
    pub(super) spare: Req,
    pub(super) key: Option<RequestKey>,
}

pin_project! {
    /// Response future of [`Balancer`](crate::Balancer).
    ///
    /// A request that found a ready endpoint at once was sent when the balancer was called, and
    /// is driven here without boxing (the endpoint's future, the outcome recorded, a retry
    /// decided); an endpoint that was not ready yet, second attempts and the wait for a free
    /// slot run in boxed futures. The request itself is never held here, which keeps the future
    /// small to move.
    pub struct ResponseFuture<S, Req>
    where
        S: Service<Req>,
    {
        #[pin]
        state: State<S, Req>,
        // `guard` records the outcome in place (freeing the slot at once) and is dropped with
        // the future.
        guard: Option<InFlightGuard>,
        classify: Classifier<S::Response, S::Error>,
        // `None` when no subscriber wants the span: nothing to enter, exit or drop.
        span: Option<tracing::Span>,
        // With retries: what the first attempt needs to start a second one.
        retry: Option<FirstAttempt<S, Req>>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, Req>
    where
        S: Service<Req>,
    {
        // The endpoint was not ready when called: waiting for it, then calling it.
        Calling {
            call: BoxedCall<S, Req>,
        },
        Called {
            #[pin]
            fut: S::Future,
        },
        // The endpoint failed its readiness: the attempt's result, still to be recorded.
        Refused {
            error: Option<S::Error>,
        },
        Boxed {
            fut: BoxedResponse<S::Response>,
        },
        Failed {
            error: Option<BoxError>,
        },
    }
}

impl<S: Service<Req>, Req> fmt::Debug for ResponseFuture<S, Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ResponseFuture")
    }
}

impl<S: Service<Req>, Req> ResponseFuture<S, Req> {
    /// The first attempt on `service`: called now if it is ready now (an HTTP endpoint always
    /// is), else once it is, in a boxed future.
    #[inline]
    pub(super) fn start(
        mut service: S,
        req: Req,
        guard: InFlightGuard,
        classify: Classifier<S::Response, S::Error>,
        span: Option<tracing::Span>,
        retry: Option<FirstAttempt<S, Req>>,
    ) -> Self
    where
        S: Send + 'static,
        Req: Send + 'static,
    {
        let state = {
            let _entered = span.as_ref().map(tracing::Span::enter);
            match service.poll_ready(&mut Context::from_waker(Waker::noop())) {
                Poll::Ready(Ok(())) => State::Called {
                    fut: service.call(req),
                },
                Poll::Ready(Err(error)) => State::Refused { error: Some(error) },
                Poll::Pending => State::Calling {
                    call: Box::pin(async move {
                        std::future::poll_fn(|cx| service.poll_ready(cx)).await?;
                        Ok(service.call(req))
                    }),
                },
            }
        };
        Self {
            state,
            guard: Some(guard),
            classify,
            span,
            retry,
        }
    }

    pub(super) fn boxed(fut: BoxedResponse<S::Response>) -> Self {
        Self::other(State::Boxed { fut })
    }

    pub(super) fn failed(error: BoxError) -> Self {
        Self::other(State::Failed { error: Some(error) })
    }

    fn other(state: State<S, Req>) -> Self {
        Self {
            state,
            guard: None,
            classify: Classifier::Default,
            span: None,
            retry: None,
        }
    }
}

/// Polled again after it completed.
#[derive(Debug)]
struct PolledAfterCompletion;

impl fmt::Display for PolledAfterCompletion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("balancer response future polled after completion")
    }
}

impl std::error::Error for PolledAfterCompletion {}

impl<S, Req> Future for ResponseFuture<S, Req>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut state = this.state;
        loop {
            let result = match state.as_mut().project() {
                StateProj::Calling { call } => {
                    let _entered = this.span.as_ref().map(tracing::Span::enter);
                    match ready!(call.as_mut().poll(cx)) {
                        Ok(fut) => {
                            state.set(State::Called { fut });
                            continue;
                        }
                        Err(error) => {
                            state.set(State::Refused { error: None });
                            Err(error)
                        }
                    }
                }
                StateProj::Called { fut } => {
                    let _entered = this.span.as_ref().map(tracing::Span::enter);
                    ready!(fut.poll(cx))
                }
                StateProj::Refused { error } => match error.take() {
                    Some(error) => Err(error),
                    None => return Poll::Ready(Err(PolledAfterCompletion.into())),
                },
                StateProj::Boxed { fut } => return fut.as_mut().poll(cx),
                StateProj::Failed { error } => {
                    return Poll::Ready(Err(error
                        .take()
                        .unwrap_or_else(|| PolledAfterCompletion.into())));
                }
            };
            let Some(guard) = this.guard else {
                return Poll::Ready(result.map_err(Into::into));
            };
            guard.record_in_place(this.classify.classify(result.as_ref()));
            if this
                .retry
                .as_ref()
                .is_some_and(|r| r.host.may_retry(&r.spare, result.as_ref()))
                && let Some(retry) = this.retry.take()
            {
                // The failed answer goes before the next attempt starts.
                drop(result);
                let tried = guard.index();
                *this.guard = None;
                *this.span = None;
                let fut = retry.host.retry(retry.spare, retry.key, tried);
                state.set(State::Boxed { fut });
                continue;
            }
            return Poll::Ready(result.map_err(Into::into));
        }
    }
}
