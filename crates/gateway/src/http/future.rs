//! The response futures of [`HttpUpstream`](super::HttpUpstream) and
//! [`HttpEndpoint`].

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::uri::Authority;
use http::{Request, Response, StatusCode};
use pin_project_lite::pin_project;

use super::body::{ProxyBody, UpstreamBody};
use super::pool::PooledBody;
use super::upstream::{AnsweredBy, HttpEndpoint, UpstreamError, error_response, respond};

/// What an attempt on an [`HttpEndpoint`] resolves to.
type Exchange = Pin<Box<dyn Future<Output = Result<Response<PooledBody>, UpstreamError>> + Send>>;

/// Response future of [`HttpEndpoint`]: one HTTP/1.1 exchange with the
/// endpoint, on a pooled connection.
///
/// Boxed: the exchange is the connection pool's `async fn`, whose future type has no name on
/// stable Rust, and it is large (the request's head, the connection, the response reader), so
/// the balancer's future, which holds it, moves a pointer rather than the whole of it. One
/// allocation per attempt, next to the exchange's system calls.
pub struct EndpointFuture {
    exchange: Exchange,
    /// Put in the response's extensions ([`AnsweredBy`]) when recorded.
    answered_by: Option<Authority>,
}

impl EndpointFuture {
    pub(super) fn new(exchange: Exchange, answered_by: Option<Authority>) -> Self {
        Self {
            exchange,
            answered_by,
        }
    }
}

impl fmt::Debug for EndpointFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointFuture").finish_non_exhaustive()
    }
}

impl Future for EndpointFuture {
    type Output = Result<Response<PooledBody>, UpstreamError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut result = ready!(self.exchange.as_mut().poll(cx));
        if let (Ok(res), Some(authority)) = (&mut result, self.answered_by.take()) {
            res.extensions_mut().insert(AnsweredBy(authority));
        }
        Poll::Ready(result)
    }
}

pin_project! {
    /// Response future of [`HttpUpstream`](super::HttpUpstream).
    ///
    /// A request without a body goes to the balancer at once and is driven here without
    /// boxing; one refused before the pick for its `Host` is answered from here. One with a body
    /// has it read first (buffered when small enough to retry), then goes to the balancer, in a
    /// boxed future: an `async` block, whose type has no name on stable Rust, and a rarer path
    /// that already allocates for the body.
    pub struct ResponseFuture {
        #[pin]
        kind: Kind,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind {
        Balanced {
            #[pin]
            fut: herd_lb_core::future::ResponseFuture<HttpEndpoint, Request<UpstreamBody>>,
        },
        Answered {
            res: Option<Response<ProxyBody>>,
        },
        WithBody {
            fut: Pin<Box<dyn Future<Output = Response<ProxyBody>> + Send>>,
        },
    }
}

impl ResponseFuture {
    pub(super) fn balanced(
        fut: herd_lb_core::future::ResponseFuture<HttpEndpoint, Request<UpstreamBody>>,
    ) -> Self {
        Self {
            kind: Kind::Balanced { fut },
        }
    }

    pub(super) fn answered(res: Response<ProxyBody>) -> Self {
        Self {
            kind: Kind::Answered { res: Some(res) },
        }
    }

    pub(super) fn with_body(
        fut: Pin<Box<dyn Future<Output = Response<ProxyBody>> + Send>>,
    ) -> Self {
        Self {
            kind: Kind::WithBody { fut },
        }
    }
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl Future for ResponseFuture {
    type Output = Result<Response<ProxyBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Balanced { fut } => Poll::Ready(Ok(respond(ready!(fut.poll(cx))))),
            KindProj::Answered { res } => Poll::Ready(Ok(res.take().unwrap_or_else(|| {
                error_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "response future polled after completion\n",
                )
            }))),
            KindProj::WithBody { fut } => fut.as_mut().poll(cx).map(Ok),
        }
    }
}
