//! The response future of [`RateLimit`](super::RateLimit).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::header::{HeaderValue, RETRY_AFTER};
use http::{Response, StatusCode};
use pin_project_lite::pin_project;

pin_project! {
    /// Response future of [`RateLimit`](super::RateLimit): the inner service's future for an
    /// admitted request, driven in place (no allocation), or the 429 of a limited one.
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
        },
        Limited {
            // Whole seconds until the client may send again (at least 1).
            retry_after: u64,
        },
    }
}

impl<F> ResponseFuture<F> {
    pub(super) fn admitted(fut: F) -> Self {
        Self {
            kind: Kind::Admitted { fut },
        }
    }

    pub(super) fn limited(retry_after: u64) -> Self {
        Self {
            kind: Kind::Limited { retry_after },
        }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Admitted { .. } => "admitted",
            Kind::Limited { .. } => "limited",
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

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Admitted { fut } => fut.poll(cx),
            // Built here rather than held: the future stays the size of the inner one, and one
            // polled again answers 429 again instead of panicking.
            KindProj::Limited { retry_after } => {
                let mut res = Response::new(B::default());
                *res.status_mut() = StatusCode::TOO_MANY_REQUESTS;
                res.headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from(*retry_after));
                Poll::Ready(Ok(res))
            }
        }
    }
}
