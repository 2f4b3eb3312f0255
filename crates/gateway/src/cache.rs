//! The proxy cache (nginx `proxy_cache`): the responses of chosen paths kept by herd-cache-cluster's
//! HTTP cache in front of the upstream.

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use herd_cache_cluster::http::{HttpCacheConfig, HttpCacheLayer};
use herd_cache_cluster::{Backend, Cache};
use herd_lb_core::Error;
use serde::Deserialize;
use tower::ServiceExt as _;

use crate::http::HttpUpstream;

/// Which responses the gateway caches, and how.
///
/// ```
/// # use herd_gateway::cache::ProxyCacheConfig;
/// let c: ProxyCacheConfig = toml::from_str(r#"
///     paths = ["/api/stats"]
///     default_ttl = "5s"
/// "#).unwrap();
/// assert_eq!(c.http.default_ttl, std::time::Duration::from_secs(5));
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ProxyCacheConfig {
    /// Paths (exact, as the request says them) whose `GET`/`HEAD` responses are cached, as the
    /// HTTP cache's rules allow (`Cache-Control`, `Vary`, ...). Default none.
    pub paths: Vec<String>,
    /// The HTTP cache's settings (TTLs, size bounds, key headers).
    #[serde(flatten)]
    pub http: HttpCacheConfig,
}

/// The routes of `config.paths`, each `upstream` behind the HTTP cache. The responses are kept in
/// this process's memory (herd-cache-cluster's L1; a Redis Cluster shared by gateways comes
/// later).
pub(crate) async fn routes(
    upstream: &HttpUpstream,
    config: &ProxyCacheConfig,
) -> Result<Router, Error> {
    let bad = |reason: String| Error::InvalidConfig {
        field: "proxy_cache",
        reason,
    };
    let cache = Cache::builder(Backend::memory())
        .namespace("gateway")
        .build()
        .await
        .map_err(|e| bad(e.to_string()))?;
    let layer = HttpCacheLayer::with_config(cache, &config.http).map_err(|e| bad(e.to_string()))?;
    let mut router = Router::new();
    for path in &config.paths {
        let proxy = upstream
            .clone()
            .map_request(|req: Request| req.map(Body::new));
        router = router.route_service(path, proxy);
    }
    Ok(router.layer(layer))
}
