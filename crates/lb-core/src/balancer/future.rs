//! The response future of [`Balancer`](crate::Balancer).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tower_service::Service;

use super::{BoxError, Classifier};
use crate::endpoint::InFlightGuard;

type BoxedResponse<Res> = Pin<Box<dyn Future<Output = Result<Res, BoxError>> + Send>>;

pin_project! {
    /// Response future of [`Balancer`](crate::Balancer).
    ///
    /// A request without retries that found an endpoint at once is driven here without boxing
    /// (drive the endpoint to readiness, call it, record the outcome); retries and the wait for a
    /// free slot run in a boxed future.
    pub struct ResponseFuture<S, Req>
    where
        S: Service<Req>,
    {
        #[pin]
        state: State<S, Req>,
        // Kept outside `state` so that moving from readiness to the call moves only the
        // endpoint's future. `guard` records the outcome in place (freeing the
        // slot at once) and is dropped with the future.
        guard: Option<InFlightGuard>,
        classify: Classifier<S::Response, S::Error>,
        // `None` when no subscriber wants the span: nothing to enter, exit or drop.
        span: Option<tracing::Span>,
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
            req: Option<Req>,
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
    ) -> Self {
        Self {
            state: State::Ready {
                service,
                req: Some(req),
            },
            guard: Some(guard),
            classify,
            span,
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
            match state.as_mut().project() {
                StateProj::Ready { service, req } => {
                    let _entered = this.span.as_ref().map(tracing::Span::enter);
                    let ready = ready!(service.poll_ready(cx));
                    let Some(req) = req.take() else {
                        return Poll::Ready(Err(PolledAfterCompletion.into()));
                    };
                    if let Err(error) = ready {
                        if let Some(guard) = this.guard.take() {
                            guard.record(this.classify.classify(Err(&error)));
                        }
                        state.set(State::Failed { error: None });
                        return Poll::Ready(Err(error.into()));
                    }
                    let fut = service.call(req);
                    state.set(State::Called { fut });
                }
                StateProj::Called { fut } => {
                    let _entered = this.span.as_ref().map(tracing::Span::enter);
                    let result = ready!(fut.poll(cx));
                    if let Some(guard) = this.guard {
                        guard.record_in_place(this.classify.classify(result.as_ref()));
                    }
                    return Poll::Ready(result.map_err(Into::into));
                }
                StateProj::Boxed { fut } => return fut.as_mut().poll(cx),
                StateProj::Failed { error } => {
                    return Poll::Ready(Err(error
                        .take()
                        .unwrap_or_else(|| PolledAfterCompletion.into())));
                }
            }
        }
    }
}
