//! The response future of [`HttpCache`](super::HttpCache).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures_util::future::BoxFuture;
use http::Response;
use http::header::HeaderValue;
use http_body_util::Either;
use pin_project_lite::pin_project;

use super::{HttpCacheBody, X_CACHE};

pin_project! {
    /// Response future of [`HttpCache`](super::HttpCache).
    ///
    /// A request the cache does not serve (not `GET`/`HEAD`, `Cache-Control: no-store`, a key
    /// over `max_key_size`) polls the inner service's future in place. A request the cache may
    /// serve runs boxed: it awaits the cache's lookups, possibly the inner service, the body
    /// and the stores, and those futures (the cache's `async fn`s) have no names to keep them
    /// in a state machine of ours. One allocation next to a cache lookup (a Redis round trip,
    /// or an L1 hit with two key encodings) is cheap; the pass-through path has none.
    pub struct ResponseFuture<F, B, E> {
        #[pin]
        kind: Kind<F, B, E>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, B, E> {
        Bypass {
            #[pin]
            future: F,
            // `X-Cache: MISS` on the response: the cache was asked, but cannot keep it.
            mark_miss: bool,
        },
        Cache {
            future: BoxFuture<'static, Result<Response<HttpCacheBody<B>>, E>>,
        },
    }
}

impl<F, B, E> ResponseFuture<F, B, E> {
    /// The inner service's response, passed through (with `X-Cache: MISS` when `mark_miss`).
    pub(super) fn bypass(future: F, mark_miss: bool) -> Self {
        Self {
            kind: Kind::Bypass { future, mark_miss },
        }
    }

    /// The cache's lookup, call and store.
    pub(super) fn cache(future: BoxFuture<'static, Result<Response<HttpCacheBody<B>>, E>>) -> Self {
        Self {
            kind: Kind::Cache { future },
        }
    }
}

impl<F, B, E> fmt::Debug for ResponseFuture<F, B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Bypass { .. } => "bypass",
            Kind::Cache { .. } => "cache",
        };
        f.debug_struct("ResponseFuture")
            .field("kind", &kind)
            .finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<HttpCacheBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Bypass { future, mark_miss } => {
                let mut response = ready!(future.poll(cx))?.map(Either::Right);
                if *mark_miss {
                    response
                        .headers_mut()
                        .insert(X_CACHE, HeaderValue::from_static("MISS"));
                }
                Poll::Ready(Ok(response))
            }
            KindProj::Cache { future } => future.as_mut().poll(cx),
        }
    }
}
