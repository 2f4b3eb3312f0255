//! Response futures of the crate's tower services.
//!
//! tower names a service's future `ResponseFuture` in the service's `future` module. Three
//! services share this crate's module, so the endpoints' own service ([`HealthService`]) keeps
//! that name and the two middleware futures are named after their services, as in
//! `tower::util::future`.
//!
//! [`HealthService`]: crate::HealthService

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::Bytes;
use http::Response;
use http_body_util::{Either, Full};
use pin_project_lite::pin_project;

use crate::metrics::{HTTP_REQUEST_DURATION_SECONDS, HTTP_REQUESTS_TOTAL};

/// A health answer: the JSON report (or the Prometheus text) in one buffer.
type Answer = Response<Full<Bytes>>;

/// An answer that runs checks first.
///
/// Boxed because it awaits `Health::respond`, an `async fn` whose future has no name; the
/// checks it awaits are boxed `async_trait` futures anyway. Only readiness of a serving
/// instance, deep health and groups take this path; liveness, startup, readiness while
/// starting or draining, `/metrics`, 404 and 405 are answered without an allocated future.
type Evaluating = Pin<Box<dyn Future<Output = Answer> + Send>>;

/// Response future of [`HealthService`](crate::HealthService): never fails (every outcome is a
/// status code).
pub struct ResponseFuture {
    state: State,
}

enum State {
    /// Answered without running a check (404, 405, liveness, startup, `/metrics`...).
    Ready(Option<Answer>),
    /// Running the checks a probe needs.
    Evaluating(Evaluating),
}

impl ResponseFuture {
    pub(crate) fn ready(answer: Answer) -> Self {
        ResponseFuture {
            state: State::Ready(Some(answer)),
        }
    }

    pub(crate) fn evaluating(future: impl Future<Output = Answer> + Send + 'static) -> Self {
        ResponseFuture {
            state: State::Evaluating(Box::pin(future)),
        }
    }
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Ready(_) => "ready",
            State::Evaluating(_) => "evaluating",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

impl Future for ResponseFuture {
    type Output = Result<Answer, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.state {
            // Taken only here; a future is not polled after it completed (like
            // `std::future::Ready`, this one panics if it is: a caller bug).
            State::Ready(answer) => Poll::Ready(Ok(answer
                .take()
                .expect("ResponseFuture polled after completion"))),
            State::Evaluating(future) => future.as_mut().poll(cx).map(Ok),
        }
    }
}

pin_project! {
    /// Response future of [`WithHealth`](crate::WithHealth): the health answer or the inner
    /// service's response.
    pub struct WithHealthFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProjection]
    enum Kind<F> {
        Health { future: ResponseFuture },
        Inner { #[pin] future: F },
    }
}

impl<F> WithHealthFuture<F> {
    pub(crate) fn health(future: ResponseFuture) -> Self {
        WithHealthFuture {
            kind: Kind::Health { future },
        }
    }

    pub(crate) fn inner(future: F) -> Self {
        WithHealthFuture {
            kind: Kind::Inner { future },
        }
    }
}

impl<F> fmt::Debug for WithHealthFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Health { .. } => "health",
            Kind::Inner { .. } => "inner",
        };
        f.debug_struct("WithHealthFuture")
            .field("kind", &kind)
            .finish()
    }
}

impl<F, ResBody, E> Future for WithHealthFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<Either<Full<Bytes>, ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProjection::Health { future } => {
                let Ok(response) = ready!(Pin::new(future).poll(cx));
                Poll::Ready(Ok(response.map(Either::Left)))
            }
            KindProjection::Inner { future } => {
                let response = ready!(future.poll(cx))?;
                Poll::Ready(Ok(response.map(Either::Right)))
            }
        }
    }
}

pin_project! {
    /// Response future of [`HttpMetrics`](crate::HttpMetrics): records the request's count and
    /// duration when the inner service answers.
    pub struct HttpMetricsFuture<F> {
        #[pin]
        inner: F,
        method: &'static str,
        route: Option<String>,
        started: Instant,
    }
}

impl<F> HttpMetricsFuture<F> {
    pub(crate) fn new(inner: F, method: &'static str, route: String) -> Self {
        HttpMetricsFuture {
            inner,
            method,
            route: Some(route),
            started: Instant::now(),
        }
    }
}

impl<F: fmt::Debug> fmt::Debug for HttpMetricsFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpMetricsFuture")
            .field("inner", &self.inner)
            .field("method", &self.method)
            .field("route", &self.route)
            .finish_non_exhaustive()
    }
}

impl<F, ResBody, E> Future for HttpMetricsFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<ResBody>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let output = ready!(this.inner.poll(cx));
        let status = match &output {
            Ok(response) => response.status().as_u16().to_string(),
            Err(_) => "error".to_owned(),
        };
        let route = this
            .route
            .take()
            .unwrap_or_else(|| crate::http_metrics::UNMATCHED.to_owned());
        let labels = [
            ("method", this.method.to_string()),
            ("route", route),
            ("status", status),
        ];
        metrics::counter!(HTTP_REQUESTS_TOTAL, &labels).increment(1);
        metrics::histogram!(HTTP_REQUEST_DURATION_SECONDS, &labels)
            .record(this.started.elapsed().as_secs_f64());
        Poll::Ready(output)
    }
}
