//! [`HealthLayer`]: the health endpoints in front of any HTTP service, for hyper or tower
//! stacks without a router.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{Either, Full};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::health::Health;
use crate::http::{HealthFuture, HealthService};

/// Answers the health endpoints (and `/metrics`) itself and passes every other request to the
/// wrapped service, so a plain hyper application gets probes on its own port without a
/// router. Responses are `Either::Left` for health answers and `Either::Right` for the inner
/// service's bodies.
///
/// ```
/// use std::convert::Infallible;
/// use herd_health::Health;
/// use http::{Request, Response};
/// use tower::{Layer, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let health = Health::builder().started(true).build().unwrap();
/// let app = service_fn(|_: Request<()>| async {
///     Ok::<_, Infallible>(Response::new(http_body_util::Full::new(bytes::Bytes::from("app"))))
/// });
/// let service = health.layer().layer(app);
/// let ready = service.clone().oneshot(Request::get("/health/ready").body(()).unwrap()).await.unwrap();
/// assert_eq!(ready.status(), 200);
/// let other = service.oneshot(Request::get("/orders").body(()).unwrap()).await.unwrap();
/// assert!(matches!(other.body(), http_body_util::Either::Right(_)));
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct HealthLayer {
    health: Health,
}

impl Health {
    /// A layer serving the health endpoints in front of another service; see [`HealthLayer`].
    pub fn layer(&self) -> HealthLayer {
        HealthLayer {
            health: self.clone(),
        }
    }
}

impl<S> Layer<S> for HealthLayer {
    type Service = WithHealth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        WithHealth {
            health: self.health.service(),
            inner,
        }
    }
}

/// Service built by [`HealthLayer`]. Adds no failure mode: errors are the inner service's.
#[derive(Debug, Clone)]
pub struct WithHealth<S> {
    health: HealthService,
    inner: S,
}

impl<S> WithHealth<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B, ResBody> Service<Request<B>> for WithHealth<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
{
    type Response = Response<Either<Full<Bytes>, ResBody>>;
    type Error = S::Error;
    type Future = WithHealthFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let kind = if self.health.get_ref().route(request.uri().path()).is_some() {
            Kind::Health {
                future: self.health.call(request),
            }
        } else {
            Kind::Inner {
                future: self.inner.call(request),
            }
        };
        WithHealthFuture { kind }
    }
}

pin_project! {
    /// Response future of [`WithHealth`].
    pub struct WithHealthFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProjection]
    enum Kind<F> {
        Health { future: HealthFuture },
        Inner { #[pin] future: F },
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
                let answered: Result<_, Infallible> = std::task::ready!(future.as_mut().poll(cx));
                let Ok(response) = answered;
                Poll::Ready(Ok(response.map(Either::Left)))
            }
            KindProjection::Inner { future } => {
                let response = std::task::ready!(future.poll(cx))?;
                Poll::Ready(Ok(response.map(Either::Right)))
            }
        }
    }
}
