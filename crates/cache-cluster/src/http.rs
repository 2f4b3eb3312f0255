//! A tower layer caching HTTP `GET`/`HEAD` responses in a [`Cache`], like a reverse proxy's
//! `proxy_cache` but shared by every instance through Redis.
//!
//! ```
//! use std::time::Duration;
//! use axum::{Router, routing::get};
//! use herd_cache_cluster::{Backend, Cache, http::HttpCacheLayer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), herd_cache_cluster::Error> {
//! let cache = Cache::builder(Backend::memory()).namespace("pages").build().await?;
//! let app: Router = Router::new()
//!     .route("/products", get(|| async { "expensive page" }))
//!     .layer(
//!         HttpCacheLayer::new(cache)
//!             .default_ttl(Duration::from_secs(30))
//!             .key_headers([http::header::ACCEPT_LANGUAGE]),
//!     );
//! # drop(app);
//! # Ok(()) }
//! ```
//!
//! What is cached: `200` responses to `GET`/`HEAD` whose body is known to fit
//! [`max_body_size`](HttpCacheLayer::max_body_size), keyed by method, URI and the chosen request
//! headers, for `s-maxage`, else `max-age`, else the default TTL (minus the `Age` the response
//! already has). Never cached: `Cache-Control: no-store`, `private` or `no-cache` responses, any
//! response with `Set-Cookie`, `Vary: *`, `max-age=0`, and responses to requests with
//! `Authorization` unless marked `public` or `s-maxage`. `Vary` is honoured by keying each variant
//! by the values of the headers it names. A request with `Cache-Control: no-store` bypasses the
//! cache; with `no-cache` it skips the lookup but stores the fresh response.
//!
//! Responses carry `X-Cache: HIT` or `X-Cache: MISS`; hits also carry `Age`. The layer adds no
//! error of its own: a cache failure is a miss (fail-open), and an inner body that fails while
//! being buffered for storage becomes `502 Bad Gateway`, as a proxy would answer.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Either, Full};
use serde::{Deserialize, Serialize};
use tower_layer::Layer;
use tower_service::Service;

use crate::Cache;
use crate::codec::now_ms;

/// The response body: a cached (or buffered) body, or the inner service's body untouched.
pub type HttpCacheBody<B> = Either<Full<Bytes>, B>;

/// The `X-Cache` response header.
pub const X_CACHE: HeaderName = HeaderName::from_static("x-cache");

/// Configuration of [`HttpCache`]: which responses, for how long, under which key.
#[derive(Clone)]
pub struct HttpCacheLayer {
    cache: Cache,
    settings: Arc<Settings>,
}

#[derive(Debug, Clone)]
struct Settings {
    default_ttl: Duration,
    max_body_size: usize,
    key_headers: Vec<HeaderName>,
}

impl fmt::Debug for HttpCacheLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpCacheLayer")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl HttpCacheLayer {
    /// Caches in `cache` with a 60 s default TTL, a 1 MiB body limit and no extra key headers.
    pub fn new(cache: Cache) -> Self {
        Self {
            cache,
            settings: Arc::new(Settings {
                default_ttl: Duration::from_secs(60),
                max_body_size: 1 << 20,
                key_headers: Vec::new(),
            }),
        }
    }

    /// TTL for cacheable responses without `max-age`/`s-maxage`. Default 60 s.
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        Arc::make_mut(&mut self.settings).default_ttl = ttl;
        self
    }

    /// Largest body stored; larger bodies (or bodies of unknown size above it) pass through.
    /// Default 1 MiB.
    pub fn max_body_size(mut self, bytes: usize) -> Self {
        Arc::make_mut(&mut self.settings).max_body_size = bytes;
        self
    }

    /// Request headers whose values are part of every key (e.g. `Accept-Encoding`,
    /// `Accept-Language`), in addition to what responses name in `Vary`.
    pub fn key_headers(mut self, headers: impl IntoIterator<Item = HeaderName>) -> Self {
        Arc::make_mut(&mut self.settings).key_headers = headers.into_iter().collect();
        self
    }
}

impl<S> Layer<S> for HttpCacheLayer {
    type Service = HttpCache<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HttpCache {
            inner,
            cache: self.cache.clone(),
            settings: Arc::clone(&self.settings),
        }
    }
}

/// The service built by [`HttpCacheLayer`].
#[derive(Clone)]
pub struct HttpCache<S> {
    inner: S,
    cache: Cache,
    settings: Arc<Settings>,
}

impl<S: fmt::Debug> fmt::Debug for HttpCache<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpCache")
            .field("inner", &self.inner)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl<S> HttpCache<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, consuming the cache service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

/// A stored response.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredResponse {
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    stored_at_ms: u64,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for HttpCache<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<crate::BoxError>,
{
    type Response = Response<HttpCacheBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        // The clone is not ready; the instance we polled is, so that one serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let cache = self.cache.clone();
        let settings = Arc::clone(&self.settings);
        Box::pin(async move {
            let request_cc = CacheControl::parse(req.headers());
            if !(req.method() == Method::GET || req.method() == Method::HEAD) || request_cc.no_store
            {
                return inner.call(req).await.map(|res| res.map(Either::Right));
            }
            let base = base_key(&req, &settings.key_headers);
            let vary_key = format!("http-vary:{base}");
            if !request_cc.no_cache
                && let Some(vary) = cache.get::<Vec<String>>(&vary_key).await
                && let Some(stored) = cache
                    .get::<StoredResponse>(&variant_key(&base, &vary, req.headers()))
                    .await
            {
                return Ok(hit(stored));
            }
            let authorized = req.headers().contains_key(header::AUTHORIZATION);
            let request_headers = req.headers().clone();
            let response = inner.call(req).await?;
            let Some((ttl, vary)) = storable(&response, authorized, &settings) else {
                return Ok(miss(response.map(Either::Right)));
            };
            let fits = response
                .body()
                .size_hint()
                .upper()
                .is_some_and(|n| n <= settings.max_body_size as u64);
            if !fits {
                return Ok(miss(response.map(Either::Right)));
            }
            let (parts, body) = response.into_parts();
            let body = match body.collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(error) => {
                    let error: crate::BoxError = error.into();
                    tracing::warn!(%error, "upstream body failed while buffering it for the cache");
                    let mut bad = Response::new(Either::Left(Full::new(Bytes::new())));
                    *bad.status_mut() = StatusCode::BAD_GATEWAY;
                    return Ok(bad);
                }
            };
            let stored = StoredResponse {
                headers: parts
                    .headers
                    .iter()
                    .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
                    .collect(),
                body: body.to_vec(),
                stored_at_ms: now_ms(),
            };
            // Fail-open: a failed store leaves the response as it is.
            let _ = cache.set(&vary_key, &vary, ttl).await;
            let _ = cache
                .set(&variant_key(&base, &vary, &request_headers), &stored, ttl)
                .await;
            Ok(miss(Response::from_parts(
                parts,
                Either::Left(Full::new(body)),
            )))
        })
    }
}

fn hit<B>(stored: StoredResponse) -> Response<HttpCacheBody<B>> {
    let mut response = Response::new(Either::Left(Full::new(Bytes::from(stored.body))));
    let headers = response.headers_mut();
    for (name, value) in stored.headers {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(name), HeaderValue::from_bytes(&value))
        {
            headers.append(name, value);
        }
    }
    let age = now_ms().saturating_sub(stored.stored_at_ms) / 1000;
    headers.insert(header::AGE, HeaderValue::from(age));
    headers.insert(X_CACHE, HeaderValue::from_static("HIT"));
    response
}

fn miss<B>(mut response: Response<B>) -> Response<B> {
    response
        .headers_mut()
        .insert(X_CACHE, HeaderValue::from_static("MISS"));
    response
}

/// `METHOD URI` plus the configured key headers.
fn base_key<B>(req: &Request<B>, key_headers: &[HeaderName]) -> String {
    let mut key = format!("{} {}", req.method(), req.uri());
    for name in key_headers {
        key.push('\n');
        key.push_str(name.as_str());
        key.push('=');
        append_values(&mut key, req.headers(), name.as_str());
    }
    key
}

/// The base key plus the request's values of the headers the response varied on.
fn variant_key(base: &str, vary: &[String], headers: &HeaderMap) -> String {
    let mut key = base.to_owned();
    for name in vary {
        key.push_str("\nvary:");
        key.push_str(name);
        key.push('=');
        append_values(&mut key, headers, name);
    }
    key
}

fn append_values(key: &mut String, headers: &HeaderMap, name: &str) {
    for (i, value) in headers.get_all(name).iter().enumerate() {
        if i > 0 {
            key.push(',');
        }
        key.push_str(&String::from_utf8_lossy(value.as_bytes()));
    }
}

/// The TTL and `Vary` header names when the response may be stored.
fn storable<B>(
    response: &Response<B>,
    authorized: bool,
    settings: &Settings,
) -> Option<(Duration, Vec<String>)> {
    if response.status() != StatusCode::OK || response.headers().contains_key(header::SET_COOKIE) {
        return None;
    }
    let cc = CacheControl::parse(response.headers());
    if cc.no_store || cc.private || cc.no_cache {
        return None;
    }
    if authorized && !(cc.public || cc.s_maxage.is_some()) {
        return None;
    }
    let mut vary = Vec::new();
    for value in response.headers().get_all(header::VARY) {
        for name in value
            .to_str()
            .ok()?
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
        {
            if name == "*" {
                return None;
            }
            vary.push(name.to_ascii_lowercase());
        }
    }
    vary.sort();
    vary.dedup();
    let lifetime = cc
        .s_maxage
        .or(cc.max_age)
        .map_or(settings.default_ttl, Duration::from_secs);
    let already = response
        .headers()
        .get(header::AGE)
        .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
        .map_or(Duration::ZERO, Duration::from_secs);
    let ttl = lifetime.saturating_sub(already);
    (!ttl.is_zero()).then_some((ttl, vary))
}

/// The `Cache-Control` directives the layer acts on.
#[derive(Debug, Default, PartialEq)]
struct CacheControl {
    no_store: bool,
    no_cache: bool,
    private: bool,
    public: bool,
    max_age: Option<u64>,
    s_maxage: Option<u64>,
}

impl CacheControl {
    fn parse(headers: &HeaderMap) -> Self {
        let mut cc = Self::default();
        for value in headers.get_all(header::CACHE_CONTROL) {
            let Ok(value) = value.to_str() else { continue };
            for directive in value.split(',') {
                let (name, arg) = match directive.split_once('=') {
                    Some((name, arg)) => (name.trim(), Some(arg.trim().trim_matches('"'))),
                    None => (directive.trim(), None),
                };
                let seconds = || arg.and_then(|a| a.parse::<u64>().ok());
                match name.to_ascii_lowercase().as_str() {
                    "no-store" => cc.no_store = true,
                    // `no-cache="field"` only restricts those fields; treat any form as no-cache.
                    "no-cache" => cc.no_cache = true,
                    "private" => cc.private = true,
                    "public" => cc.public = true,
                    // An unparsable value makes the response stale (RFC 9111 §4.2.1): age 0.
                    "max-age" => cc.max_age = Some(seconds().unwrap_or(0)),
                    "s-maxage" => cc.s_maxage = Some(seconds().unwrap_or(0)),
                    _ => {}
                }
            }
        }
        if headers
            .get(header::PRAGMA)
            .is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"no-cache"))
        {
            cc.no_cache = true;
        }
        cc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        map
    }

    #[test]
    fn parses_cache_control() {
        let cc = CacheControl::parse(&headers(&[
            ("cache-control", "public, max-age=60"),
            ("cache-control", "s-maxage=\"120\""),
        ]));
        assert_eq!(
            cc,
            CacheControl {
                public: true,
                max_age: Some(60),
                s_maxage: Some(120),
                ..Default::default()
            }
        );
        let cc = CacheControl::parse(&headers(&[("cache-control", "No-Store, max-age=abc")]));
        assert!(cc.no_store);
        assert_eq!(cc.max_age, Some(0));
        assert!(CacheControl::parse(&headers(&[("pragma", "no-cache")])).no_cache);
    }

    #[test]
    fn storable_rules() {
        let settings = Settings {
            default_ttl: Duration::from_secs(60),
            max_body_size: 10,
            key_headers: vec![],
        };
        let response = |pairs: &[(&'static str, &'static str)]| {
            let mut r = Response::new(());
            *r.headers_mut() = headers(pairs);
            r
        };
        assert_eq!(
            storable(&response(&[]), false, &settings),
            Some((Duration::from_secs(60), vec![]))
        );
        assert_eq!(
            storable(
                &response(&[("cache-control", "max-age=10, s-maxage=20"), ("age", "5")]),
                false,
                &settings
            ),
            Some((Duration::from_secs(15), vec![]))
        );
        assert_eq!(
            storable(
                &response(&[("vary", "Accept-Encoding, accept-language")]),
                false,
                &settings
            ),
            Some((
                Duration::from_secs(60),
                vec!["accept-encoding".into(), "accept-language".into()]
            ))
        );
        assert_eq!(
            storable(&response(&[("vary", "*")]), false, &settings),
            None
        );
        assert_eq!(
            storable(&response(&[("set-cookie", "a=b")]), false, &settings),
            None
        );
        assert_eq!(
            storable(&response(&[("cache-control", "private")]), false, &settings),
            None
        );
        assert_eq!(
            storable(
                &response(&[("cache-control", "max-age=0")]),
                false,
                &settings
            ),
            None
        );
        assert_eq!(
            storable(&response(&[]), true, &settings),
            None,
            "authorized and not public"
        );
        assert!(storable(&response(&[("cache-control", "public")]), true, &settings).is_some());
        let mut not_ok = response(&[]);
        *not_ok.status_mut() = StatusCode::NOT_FOUND;
        assert_eq!(storable(&not_ok, false, &settings), None);
    }
}
