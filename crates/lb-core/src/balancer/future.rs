//! The response future of [`Balancer`](crate::Balancer).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tower_service::Service;

use super::{BoxError, Classifier};
use crate::endpoint::InFlightGuard;
use crate::snapshot::RequestKey;

pub(super) type BoxedResponse<Res> = Pin<Box<dyn Future<Output = Result<Res, BoxError>> + Send>>;

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
    /// A request that found an endpoint at once is driven here without boxing (drive the
    /// endpoint to readiness, call it, record the outcome, decide on a retry); second attempts
    /// and the wait for a free slot run in a boxed future.
    pub struct ResponseFuture<S, Req>
    where
        S: Service<Req>,
    {
        #[pin]
        state: State<S, Req>,
        // The request until it is sent. Kept outside `state`, which is then small to replace.
        req: Option<Req>,
        // Kept outside `state` so that moving from readiness to the call moves only the
        // endpoint's future. `guard` records the outcome in place (freeing the
        // slot at once) and is dropped with the future.
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
        Ready {
            service: S,
        },
        Called {
            #[pin]
            fut: S::Future,
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
    #[inline]
    pub(super) fn ready(
        service: S,
        req: Req,
        guard: InFlightGuard,
        classify: Classifier<S::Response, S::Error>,
        span: Option<tracing::Span>,
        retry: Option<FirstAttempt<S, Req>>,
    ) -> Self {
        Self {
            state: State::Ready { service },
            req: Some(req),
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
            req: None,
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
                StateProj::Ready { service } => {
                    let _entered = this.span.as_ref().map(tracing::Span::enter);
                    let ready = ready!(service.poll_ready(cx));
                    let Some(req) = this.req.take() else {
                        return Poll::Ready(Err(PolledAfterCompletion.into()));
                    };
                    match ready {
                        Ok(()) => {
                            let fut = service.call(req);
                            state.set(State::Called { fut });
                            continue;
                        }
                        Err(error) => {
                            state.set(State::Failed { error: None });
                            Err(error)
                        }
                    }
                }
                StateProj::Called { fut } => {
                    let _entered = this.span.as_ref().map(tracing::Span::enter);
                    ready!(fut.poll(cx))
                }
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
            if let Some(retry) = this.retry.take()
                && retry.host.may_retry(&retry.spare, result.as_ref())
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
