//! The response future of [`RateLimit`](super::RateLimit).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures_util::future::BoxFuture;
use http::header::{HeaderValue, RETRY_AFTER};
use http::{Response, StatusCode};
use pin_project_lite::pin_project;

use super::headers::RateHeaders;

/// What a quota decided for one request.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Call the inner service; put these fields on its response.
    Admitted(Option<RateHeaders>),
    /// Answer 429 with `Retry-After: retry_after` (whole seconds, at least 1) and these fields.
    Limited {
        retry_after: u64,
        headers: Option<RateHeaders>,
    },
}

/// The inner service's call, made once the shared limiter has admitted the request.
type DeferredCall<F> = Box<dyn FnOnce() -> F + Send>;

pin_project! {
    /// Response future of [`RateLimit`](super::RateLimit): the inner service's future for an
    /// admitted request, driven in place (no allocation by the local limiter), or the 429 of a
    /// limited one; with shared limits, first the cluster's decision (boxed), then either.
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Admitted {
            #[pin]
            fut: F,
            headers: Option<RateHeaders>,
        },
        Limited {
            // Whole seconds until the client may send again (at least 1).
            retry_after: u64,
            headers: Option<RateHeaders>,
        },
        Deciding {
            decision: BoxFuture<'static, Outcome>,
            call: Option<DeferredCall<F>>,
        },
    }
}

impl<F> ResponseFuture<F> {
    pub(super) fn admitted(fut: F, headers: Option<RateHeaders>) -> Self {
        Self {
            kind: Kind::Admitted { fut, headers },
        }
    }

    pub(super) fn limited(retry_after: u64, headers: Option<RateHeaders>) -> Self {
        Self {
            kind: Kind::Limited {
                retry_after,
                headers,
            },
        }
    }

    pub(super) fn deciding(decision: BoxFuture<'static, Outcome>, call: DeferredCall<F>) -> Self {
        Self {
            kind: Kind::Deciding {
                decision,
                call: Some(call),
            },
        }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Admitted { .. } => "admitted",
            Kind::Limited { .. } => "limited",
            Kind::Deciding { .. } => "deciding",
        };
        f.debug_struct("ResponseFuture")
            .field("kind", &kind)
            .finish()
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Default,
{
    type Output = Result<Response<B>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let next = match self.as_mut().project().kind.project() {
                KindProj::Admitted { fut, headers } => {
                    let mut res = ready!(fut.poll(cx))?;
                    if let Some(headers) = headers.take() {
                        headers.apply(res.headers_mut());
                    }
                    return Poll::Ready(Ok(res));
                }
                // Built here rather than held: the future stays the size of the inner one, and
                // one polled again answers 429 again instead of panicking.
                KindProj::Limited {
                    retry_after,
                    headers,
                } => {
                    let mut res = Response::new(B::default());
                    *res.status_mut() = StatusCode::TOO_MANY_REQUESTS;
                    res.headers_mut()
                        .insert(RETRY_AFTER, HeaderValue::from(*retry_after));
                    if let Some(headers) = headers.clone() {
                        headers.apply(res.headers_mut());
                    }
                    return Poll::Ready(Ok(res));
                }
                KindProj::Deciding { decision, call } => match ready!(decision.as_mut().poll(cx)) {
                    Outcome::Admitted(headers) => match call.take() {
                        Some(call) => Kind::Admitted {
                            fut: call(),
                            headers,
                        },
                        // Only taken on the way to `Admitted`: cannot happen; refuse rather
                        // than panic.
                        None => Kind::Limited {
                            retry_after: 1,
                            headers,
                        },
                    },
                    Outcome::Limited {
                        retry_after,
                        headers,
                    } => Kind::Limited {
                        retry_after,
                        headers,
                    },
                },
            };
            self.as_mut().project().kind.set(next);
        }
    }
}
