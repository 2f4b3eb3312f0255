//! A tower layer counting and timing HTTP requests by method, matched route and status.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::future::HttpMetricsFuture;
use http::{Method, Request, Response};
use tower_layer::Layer;
use tower_service::Service;

type RouteFn = dyn Fn(&http::request::Parts) -> Option<String> + Send + Sync;

/// Layer that applies [`HttpMetrics`]: `herd_http_requests_total{method,route,status}` and
/// `herd_http_request_duration_seconds{method,route,status}` for every request.
///
/// The `route` label is the route template that matched (axum's `MatchedPath`, e.g.
/// `/users/{id}`), never the raw path, so the number of series stays bounded however many ids
/// clients send. Requests that matched no route are labelled `unmatched`. Add the layer with
/// `Router::layer` (it then sees `MatchedPath`) or wrap any tower service with a
/// [`route_fn`](HttpMetricsLayer::route_fn) that names its routes.
///
/// ```
/// use axum::{Router, routing::get};
/// use herd_health::HttpMetricsLayer;
///
/// let app: Router = Router::new()
///     .route("/users/{id}", get(|| async { "user" }))
///     .layer(HttpMetricsLayer::new());
/// ```
#[derive(Clone, Default)]
pub struct HttpMetricsLayer {
    route_fn: Option<Arc<RouteFn>>,
}

impl fmt::Debug for HttpMetricsLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpMetricsLayer")
            .field("route_fn", &self.route_fn.as_ref().map(|_| ".."))
            .finish()
    }
}

impl HttpMetricsLayer {
    /// Labels routes with axum's `MatchedPath` (with the `axum` feature), else `unmatched`.
    pub fn new() -> Self {
        HttpMetricsLayer::default()
    }

    /// Names routes with `f` when `MatchedPath` is absent (plain hyper or tower stacks). `f`
    /// must return a bounded set of names (templates, not raw paths); `None` means
    /// `unmatched`.
    pub fn route_fn<F>(mut self, f: F) -> Self
    where
        F: Fn(&http::request::Parts) -> Option<String> + Send + Sync + 'static,
    {
        self.route_fn = Some(Arc::new(f));
        self
    }
}

impl<S> Layer<S> for HttpMetricsLayer {
    type Service = HttpMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HttpMetrics {
            inner,
            route_fn: self.route_fn.clone(),
        }
    }
}

/// Records request count and duration by method, matched route and status; see
/// [`HttpMetricsLayer`]. Adds no failure mode: the inner service's errors pass through
/// (counted with status `error`).
#[derive(Clone)]
pub struct HttpMetrics<S> {
    inner: S,
    route_fn: Option<Arc<RouteFn>>,
}

impl<S: fmt::Debug> fmt::Debug for HttpMetrics<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpMetrics")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S> HttpMetrics<S> {
    /// Wraps `inner`, labelling routes with axum's `MatchedPath`.
    pub fn new(inner: S) -> Self {
        HttpMetrics {
            inner,
            route_fn: None,
        }
    }

    inner_service_accessors!();

    fn route_of<B>(&self, request: Request<B>) -> (Request<B>, String) {
        #[cfg(feature = "axum")]
        if let Some(matched) = request.extensions().get::<axum::extract::MatchedPath>() {
            let route = matched.as_str().to_owned();
            return (request, route);
        }
        let Some(route_fn) = &self.route_fn else {
            return (request, UNMATCHED.to_owned());
        };
        let (parts, body) = request.into_parts();
        let route = route_fn(&parts).unwrap_or_else(|| UNMATCHED.to_owned());
        (Request::from_parts(parts, body), route)
    }
}

pub(crate) const UNMATCHED: &str = "unmatched";

/// Bounded method label: the standard methods by name, anything else `other`.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

impl<S, B, ResBody> Service<Request<B>> for HttpMetrics<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = HttpMetricsFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let method = method_label(request.method());
        let (request, route) = self.route_of(request);
        HttpMetricsFuture::new(self.inner.call(request), method, route)
    }
}

#[cfg(all(test, feature = "prometheus"))]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    #[test]
    fn route_fn_names_routes_for_plain_tower_stacks() {
        let (metrics, recorder) =
            crate::PrometheusMetrics::build(&crate::MetricsConfig::default()).unwrap();
        let inner = tower::service_fn(|request: Request<()>| async move {
            let status = if request.uri().path().starts_with("/items/") {
                200
            } else {
                404
            };
            let mut response = Response::new(());
            *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
            Ok::<_, std::convert::Infallible>(response)
        });
        let mut service = HttpMetricsLayer::new()
            .route_fn(|parts| {
                parts
                    .uri
                    .path()
                    .starts_with("/items/")
                    .then(|| "/items/{id}".to_owned())
            })
            .layer(inner);
        metrics::with_local_recorder(&recorder, || {
            for path in ["/items/1", "/items/2", "/elsewhere"] {
                let request = Request::builder()
                    .method(Method::PATCH)
                    .uri(path)
                    .body(())
                    .unwrap();
                service.call(request).now_or_never().unwrap().unwrap();
            }
        });
        let text = metrics.render();
        assert!(
            text.contains(
                r#"herd_http_requests_total{method="PATCH",route="/items/{id}",status="200"} 2"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"herd_http_requests_total{method="PATCH",route="unmatched",status="404"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains("herd_http_request_duration_seconds_bucket"),
            "{text}"
        );
    }
}
