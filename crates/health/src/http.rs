//! The endpoints over HTTP: a plain tower [`HealthService`] for hyper and, with the `axum`
//! feature, [`Health::router`].
//!
//! Responses are `application/health+json`, 200 for `pass` and `warn`, 503 for `fail`, with
//! `Cache-Control: no-store` so no proxy answers a probe from its cache. Per-check details are
//! shown according to [`ShowDetails`](crate::ShowDetails).

use std::convert::Infallible;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;

use crate::config::ShowDetails;
use crate::future::ResponseFuture;
use crate::health::{Health, Probe};
use crate::report::{HEALTH_JSON, HealthReport};

/// What a request path asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    Probe(Probe),
    Group(String),
    #[cfg_attr(not(feature = "prometheus"), allow(dead_code))]
    Metrics,
}

impl Health {
    /// Maps a request path to an endpoint, or `None` for paths this service does not serve.
    pub(crate) fn route(&self, path: &str) -> Option<Route> {
        let config = self.config();
        if path == config.metrics_path {
            return Some(Route::Metrics);
        }
        // A base path of "/" serves `/`, `/live`, `/ready`...
        let base = config.base_path.trim_end_matches('/');
        let rest = path.strip_prefix(base)?;
        match rest {
            "" => Some(Route::Probe(Probe::Deep)),
            "/" if base.is_empty() => Some(Route::Probe(Probe::Deep)),
            "/live" => Some(Route::Probe(Probe::Live)),
            "/ready" => Some(Route::Probe(Probe::Ready)),
            "/startup" => Some(Route::Probe(Probe::Startup)),
            _ => rest
                .strip_prefix('/')
                .filter(|group| self.groups().any(|known| known == *group))
                .map(|group| Route::Group(group.to_owned())),
        }
    }

    /// Whether this request may see per-check details.
    pub(crate) fn details_allowed(&self, headers: &HeaderMap) -> bool {
        let config = self.config();
        match config.show_details {
            ShowDetails::Never => false,
            ShowDetails::Always => true,
            ShowDetails::WhenAuthorized => {
                let Some(token) = config.details_token.as_deref() else {
                    return false;
                };
                headers
                    .get_all(header::AUTHORIZATION)
                    .iter()
                    .filter_map(|value| value.to_str().ok())
                    .filter_map(|value| value.strip_prefix("Bearer "))
                    .any(|given| {
                        subtle::ConstantTimeEq::ct_eq(given.as_bytes(), token.as_bytes()).into()
                    })
            }
        }
    }

    /// The HTTP response for a route.
    pub(crate) async fn respond(&self, route: Route, details: bool) -> Response<Full<Bytes>> {
        if let Some(response) = self.respond_now(&route, details) {
            return response;
        }
        let report = match route {
            Route::Probe(probe) => self.report(probe, details).await,
            Route::Group(name) => match self.group_report(&name, details).await {
                Some(report) => report,
                None => return not_found(),
            },
            Route::Metrics => return self.metrics_response(),
        };
        report_response(&report)
    }

    /// The HTTP response for a route that needs no check to run (liveness, startup, readiness
    /// while starting or draining, `/metrics`), or `None`.
    fn respond_now(&self, route: &Route, details: bool) -> Option<Response<Full<Bytes>>> {
        match route {
            Route::Probe(probe) => self
                .report_now(*probe, details)
                .map(|report| report_response(&report)),
            Route::Metrics => Some(self.metrics_response()),
            Route::Group(_) => None,
        }
    }

    #[cfg(feature = "prometheus")]
    fn metrics_response(&self) -> Response<Full<Bytes>> {
        match self.prometheus() {
            Some(metrics) => {
                let mut response = Response::new(Full::new(Bytes::from(metrics.render())));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                response
            }
            None => not_found(),
        }
    }

    #[cfg(not(feature = "prometheus"))]
    fn metrics_response(&self) -> Response<Full<Bytes>> {
        not_found()
    }

    /// A tower `Service` answering every endpoint by path, for hyper or any tower stack.
    pub fn service(&self) -> HealthService {
        HealthService {
            health: self.clone(),
        }
    }

    /// An axum `Router` with every endpoint, ready to `merge` into the application's router
    /// (or to `nest`, which prefixes the configured paths).
    ///
    /// Routes: `{base_path}`, `{base_path}/live`, `/ready`, `/startup`, `/{group}` (including
    /// `/replication`) and, when metrics are configured, `{metrics_path}`. `GET` and `HEAD`.
    #[cfg(feature = "axum")]
    #[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
    pub fn router<S>(&self) -> axum::Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        use axum::routing::get;

        let base = self.config().base_path.trim_end_matches('/');
        let endpoint = |route: Route| {
            let health = self.clone();
            get(move |headers: HeaderMap| {
                let health = health.clone();
                let route = route.clone();
                async move {
                    let details = health.details_allowed(&headers);
                    health.respond(route, details).await
                }
            })
        };
        let group = {
            let health = self.clone();
            get(
                move |axum::extract::Path(name): axum::extract::Path<String>,
                      headers: HeaderMap| {
                    let health = health.clone();
                    async move {
                        let details = health.details_allowed(&headers);
                        health.respond(Route::Group(name), details).await
                    }
                },
            )
        };
        let root = if base.is_empty() { "/" } else { base };
        #[cfg_attr(not(feature = "prometheus"), allow(unused_mut))]
        let mut router = axum::Router::new()
            .route(root, endpoint(Route::Probe(Probe::Deep)))
            .route(&format!("{base}/live"), endpoint(Route::Probe(Probe::Live)))
            .route(
                &format!("{base}/ready"),
                endpoint(Route::Probe(Probe::Ready)),
            )
            .route(
                &format!("{base}/startup"),
                endpoint(Route::Probe(Probe::Startup)),
            )
            .route(&format!("{base}/{{group}}"), group);
        #[cfg(feature = "prometheus")]
        if self.prometheus().is_some() {
            router = router.route(&self.config().metrics_path, endpoint(Route::Metrics));
        }
        router
    }
}

fn report_response(report: &HealthReport) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(report.to_json()));
    *response.status_mut() = report.status.http_status();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(HEALTH_JSON));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn not_found() -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(b"not found")));
    *response.status_mut() = StatusCode::NOT_FOUND;
    response
}

fn method_not_allowed() -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    response
}

/// The health endpoints as a plain tower `Service` (see [`Health::service`]): routes by path,
/// answers 404 for other paths and 405 for methods other than `GET` and `HEAD`. It never
/// fails; every outcome is a status code.
///
/// ```no_run
/// # async fn serve() -> std::io::Result<()> {
/// use hyper_util::rt::{TokioExecutor, TokioIo};
/// use hyper_util::server::conn::auto;
/// use hyper_util::service::TowerToHyperService;
///
/// let health = herd_health::Health::builder().started(true).build().unwrap();
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8081").await?;
/// loop {
///     let (stream, _) = listener.accept().await?;
///     let service = TowerToHyperService::new(health.service());
///     tokio::spawn(async move {
///         let _ = auto::Builder::new(TokioExecutor::new())
///             .serve_connection(TokioIo::new(stream), service)
///             .await;
///     });
/// }
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct HealthService {
    health: Health,
}

impl HealthService {
    /// The registry this service answers for.
    pub fn get_ref(&self) -> &Health {
        &self.health
    }
}

impl<B> tower_service::Service<Request<B>> for HealthService {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let Some(route) = self.health.route(request.uri().path()) else {
            return ResponseFuture::ready(not_found());
        };
        let head = request.method() == Method::HEAD;
        if !head && request.method() != Method::GET {
            return ResponseFuture::ready(method_not_allowed());
        }
        let details = self.health.details_allowed(request.headers());
        let without_body = move |mut response: Response<Full<Bytes>>| {
            if head {
                *response.body_mut() = Full::new(Bytes::new());
            }
            response
        };
        if let Some(response) = self.health.respond_now(&route, details) {
            return ResponseFuture::ready(without_body(response));
        }
        let health = self.health.clone();
        ResponseFuture::evaluating(
            async move { without_body(health.respond(route, details).await) },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::HealthConfig;

    fn health(base_path: &str) -> Health {
        Health::builder()
            .config(HealthConfig {
                base_path: base_path.to_owned(),
                ..HealthConfig::default()
            })
            .build()
            .unwrap()
    }

    #[test]
    fn paths_map_to_endpoints_under_any_base() {
        let default = health("/health");
        assert_eq!(default.route("/health"), Some(Route::Probe(Probe::Deep)));
        assert_eq!(
            default.route("/health/ready"),
            Some(Route::Probe(Probe::Ready))
        );
        assert_eq!(
            default.route("/health/replication"),
            Some(Route::Group("replication".to_owned()))
        );
        assert_eq!(default.route("/health/other"), None);
        assert_eq!(default.route("/healthz"), None);
        assert_eq!(default.route("/metrics"), Some(Route::Metrics));

        let root = health("/");
        assert_eq!(root.route("/"), Some(Route::Probe(Probe::Deep)));
        assert_eq!(root.route("/live"), Some(Route::Probe(Probe::Live)));
        assert_eq!(root.route("/startup"), Some(Route::Probe(Probe::Startup)));
    }

    #[tokio::test]
    async fn probes_that_run_no_check_are_answered_without_a_boxed_future() {
        use tower_service::Service;

        let health = Health::builder()
            .check(crate::check::from_fn("queue", || async {
                crate::CheckResult::pass()
            }))
            .started(true)
            .build()
            .unwrap();
        let mut service = health.service();
        let mut call = |method: Method, path: &str| {
            let request = Request::builder()
                .method(method)
                .uri(path)
                .body(())
                .unwrap();
            service.call(request)
        };
        for path in ["/health/live", "/health/startup", "/nowhere"] {
            assert!(
                format!("{:?}", call(Method::GET, path)).contains("ready"),
                "{path}"
            );
        }
        let ready = call(Method::GET, "/health/ready");
        assert!(format!("{ready:?}").contains("evaluating"));
        assert_eq!(ready.await.unwrap().status(), StatusCode::OK);

        let head = call(Method::HEAD, "/health/live").await.unwrap();
        assert_eq!(head.status(), StatusCode::OK);
        let body = http_body_util::BodyExt::collect(head.into_body())
            .await
            .unwrap();
        assert!(body.to_bytes().is_empty());

        health.drain();
        let draining = call(Method::HEAD, "/health/ready");
        assert!(format!("{draining:?}").contains("ready"));
        let draining = draining.await.unwrap();
        assert_eq!(draining.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = http_body_util::BodyExt::collect(draining.into_body())
            .await
            .unwrap();
        assert!(body.to_bytes().is_empty());
    }

    #[test]
    fn details_need_the_exact_bearer_token() {
        let health = Health::builder()
            .config(HealthConfig {
                show_details: ShowDetails::WhenAuthorized,
                details_token: Some("t0ken".to_owned()),
                ..HealthConfig::default()
            })
            .build()
            .unwrap();
        let mut headers = HeaderMap::new();
        assert!(!health.details_allowed(&headers));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer t0ke"),
        );
        assert!(!health.details_allowed(&headers));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic t0ken"),
        );
        assert!(!health.details_allowed(&headers));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer t0ken"),
        );
        assert!(health.details_allowed(&headers));
    }
}
