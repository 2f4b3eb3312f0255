//! [`HealthLayer`]: the health endpoints in front of any HTTP service, for hyper or tower
//! stacks without a router.

use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{Either, Full};
use tower_layer::Layer;
use tower_service::Service;

use crate::future::WithHealthFuture;
use crate::health::Health;
use crate::http::HealthService;

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
    inner_service_accessors!();
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
        if self.health.get_ref().route(request.uri().path()).is_some() {
            WithHealthFuture::health(self.health.call(request))
        } else {
            WithHealthFuture::inner(self.inner.call(request))
        }
    }
}
