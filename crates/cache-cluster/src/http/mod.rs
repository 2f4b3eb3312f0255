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
//! What is cached: `200` responses to `GET`/`HEAD` whose headers and body are known to fit
//! [`max_entry_size`](HttpCacheLayer::max_entry_size), for `s-maxage`, else `max-age`, else the
//! default TTL (minus the `Age` the response already has), never longer than
//! [`max_ttl`](HttpCacheLayer::max_ttl). Never cached: `Cache-Control: no-store`, `private` or
//! `no-cache` responses, any response with `Set-Cookie`, `Vary: *`, `max-age=0`, and responses
//! to requests with `Authorization` or `Cookie` unless marked `public` or `s-maxage` (RFC 9111
//! §3.5; a `Cookie` is treated like `Authorization`, since a session cookie makes a page one
//! user's as surely). Such a request is answered from the cache only with a response stored
//! under those same explicit directives, never with one stored for an anonymous request. A
//! request with `Cache-Control: no-store` bypasses the cache; with `no-cache` it skips the
//! lookup but stores the fresh response.
//!
//! The key is the method, the URI (scheme, authority, path and query), the `Host` header, the
//! [`key_headers`](HttpCacheLayer::key_headers) and the request's values of the headers the
//! response names in `Vary`, each value kept byte for byte and length-prefixed, so distinct
//! requests never share a key. A request whose key would exceed
//! [`max_key_size`](HttpCacheLayer::max_key_size) is passed through uncached.
//!
//! Responses carry `X-Cache: HIT` or `X-Cache: MISS`; hits also carry `Age`. The layer adds no
//! error of its own: a cache failure is a miss (fail-open), and an inner body that fails while
//! being buffered for storage (or turns out longer than its size hint said) becomes
//! `502 Bad Gateway`, as a proxy would answer.

use std::fmt::{self, Write as _};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Either, Full, Limited};
use serde::{Deserialize, Serialize};
use tower_layer::Layer;
use tower_service::Service;

use crate::codec::now_ms;
use crate::{Cache, Error};

pub mod future;

pub use future::ResponseFuture;

/// The response body: a cached (or buffered) body, or the inner service's body untouched.
pub type HttpCacheBody<B> = Either<Full<Bytes>, B>;

/// The `X-Cache` response header.
pub const X_CACHE: HeaderName = HeaderName::from_static("x-cache");

/// Settings of [`HttpCacheLayer`], for [`HttpCacheLayer::with_config`]. Deserializes with
/// serde; a missing field takes the default documented on it.
///
/// ```
/// let config: herd_cache_cluster::http::HttpCacheConfig = serde_json::from_str(
///     r#"{ "default_ttl": "30s", "key_headers": ["accept-language"] }"#,
/// ).unwrap();
/// assert_eq!(config.max_ttl, std::time::Duration::from_secs(24 * 60 * 60));
/// assert_eq!(config.max_key_size, 4096);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpCacheConfig {
    /// TTL of cacheable responses without `max-age`/`s-maxage`. Default `60s`.
    #[serde(with = "humantime_serde")]
    pub default_ttl: Duration,
    /// Longest any response is stored, whatever its `max-age` or `s-maxage` says (an upstream
    /// may send `max-age=18446744073709551615`). Stored pages leave the cache only by expiry,
    /// so this bounds how long one mistaken header keeps a page. Default `1d`.
    #[serde(with = "humantime_serde")]
    pub max_ttl: Duration,
    /// Largest entry stored, in bytes: the response's header names and values plus its body.
    /// A response known to be larger, or of unknown length, is passed through uncached.
    /// Default 1 MiB.
    pub max_entry_size: usize,
    /// Largest cache key, in bytes; a request with a longer one (a long query string, many or
    /// long `Vary`-named header values) is passed through uncached, so clients cannot grow the
    /// cache's memory with long keys. A key holds the method, URI, `Host`, key headers and
    /// `Vary` values, each with its length, and bytes outside printable ASCII (and `%`, `{`,
    /// `}`) take three bytes each. Default 4096.
    pub max_key_size: usize,
    /// Request headers whose values are part of every key, e.g. `accept-encoding`, in addition
    /// to what responses name in `Vary`. Default none.
    pub key_headers: Vec<String>,
}

impl Default for HttpCacheConfig {
    fn default() -> Self {
        Self {
            default_ttl: Duration::from_secs(60),
            max_ttl: Duration::from_secs(24 * 60 * 60),
            max_entry_size: 1 << 20,
            max_key_size: 4096,
            key_headers: Vec::new(),
        }
    }
}

/// Configuration of [`HttpCache`]: which responses, for how long, under which key.
#[derive(Clone)]
pub struct HttpCacheLayer {
    cache: Cache,
    settings: Arc<Settings>,
}

#[derive(Debug, Clone)]
struct Settings {
    default_ttl: Duration,
    max_ttl: Duration,
    max_entry_size: usize,
    max_key_size: usize,
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
    /// Caches in `cache` with the defaults of [`HttpCacheConfig`]: 60 s default TTL, 1 day
    /// longest TTL, 1 MiB entries, 4096-byte keys and no extra key headers.
    pub fn new(cache: Cache) -> Self {
        let defaults = HttpCacheConfig::default();
        Self {
            cache,
            settings: Arc::new(Settings {
                default_ttl: defaults.default_ttl,
                max_ttl: defaults.max_ttl,
                max_entry_size: defaults.max_entry_size,
                max_key_size: defaults.max_key_size,
                key_headers: Vec::new(),
            }),
        }
    }

    /// Caches in `cache` with `config`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the field: a key header that is not a header name, a zero
    /// `max_entry_size` or `max_key_size`.
    pub fn with_config(cache: Cache, config: &HttpCacheConfig) -> Result<Self, Error> {
        let key_headers = config
            .key_headers
            .iter()
            .map(|name| {
                HeaderName::try_from(name.as_str()).map_err(|_| Error::InvalidConfig {
                    field: "key_headers",
                    reason: format!("{name:?} is not a header name"),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        for (field, value) in [
            ("max_entry_size", config.max_entry_size),
            ("max_key_size", config.max_key_size),
        ] {
            if value == 0 {
                return Err(Error::InvalidConfig {
                    field,
                    reason: "must be at least 1".into(),
                });
            }
        }
        Ok(Self {
            cache,
            settings: Arc::new(Settings {
                default_ttl: config.default_ttl,
                max_ttl: config.max_ttl,
                max_entry_size: config.max_entry_size,
                max_key_size: config.max_key_size,
                key_headers,
            }),
        })
    }

    /// TTL for cacheable responses without `max-age`/`s-maxage`. Default 60 s.
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        Arc::make_mut(&mut self.settings).default_ttl = ttl;
        self
    }

    /// Longest TTL of any stored response; see [`HttpCacheConfig::max_ttl`]. Default 1 day.
    pub fn max_ttl(mut self, ttl: Duration) -> Self {
        Arc::make_mut(&mut self.settings).max_ttl = ttl;
        self
    }

    /// Largest entry stored (header names and values plus body); larger responses, or
    /// responses of unknown length, pass through. Default 1 MiB.
    pub fn max_entry_size(mut self, bytes: usize) -> Self {
        Arc::make_mut(&mut self.settings).max_entry_size = bytes;
        self
    }

    /// Largest cache key; requests with longer keys pass through uncached. See
    /// [`HttpCacheConfig::max_key_size`]. Default 4096 bytes.
    pub fn max_key_size(mut self, bytes: usize) -> Self {
        Arc::make_mut(&mut self.settings).max_key_size = bytes;
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
    inner_service_accessors!();
}

/// A stored response.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredResponse {
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    stored_at_ms: u64,
    /// The response said `public` or `s-maxage`: it may answer requests with credentials.
    explicitly_shared: bool,
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
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let request_cc = CacheControl::parse(req.headers());
        if !(req.method() == Method::GET || req.method() == Method::HEAD) || request_cc.no_store {
            return ResponseFuture::bypass(self.inner.call(req), false);
        }
        let settings = Arc::clone(&self.settings);
        let Some(base) = base_key(&req, &settings.key_headers, settings.max_key_size) else {
            // Too long to be a key: served, never stored.
            return ResponseFuture::bypass(self.inner.call(req), true);
        };
        // The clone is not ready; the instance we polled is, so that one serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let cache = self.cache.clone();
        ResponseFuture::cache(Box::pin(async move {
            let vary_key = format!("vary:{base}");
            // RFC 9111 §3.5: a response to a request with credentials is stored only when it
            // says a shared cache may, and such a request is answered only with such a response.
            let credentials = req.headers().contains_key(header::AUTHORIZATION)
                || req.headers().contains_key(header::COOKIE);
            if !request_cc.no_cache
                && let Some(vary) = cache.get::<Vec<String>>(&vary_key).await
                && let Some(page_key) = page_key(&base, &vary, req.headers(), settings.max_key_size)
                && let Some(stored) = cache.get::<StoredResponse>(&page_key).await
                && (stored.explicitly_shared || !credentials)
            {
                return Ok(hit(stored));
            }
            let request_headers = req.headers().clone();
            let response = inner.call(req).await?;
            let Some(rule) = storable(&response, credentials, &settings) else {
                return Ok(miss(response.map(Either::Right)));
            };
            let Some(page_key) =
                page_key(&base, &rule.vary, &request_headers, settings.max_key_size)
            else {
                return Ok(miss(response.map(Either::Right)));
            };
            let header_bytes = response
                .headers()
                .iter()
                .map(|(name, value)| name.as_str().len().saturating_add(value.len()))
                .fold(0_usize, usize::saturating_add);
            let Some(body_budget) = settings.max_entry_size.checked_sub(header_bytes) else {
                return Ok(miss(response.map(Either::Right)));
            };
            let fits = response
                .body()
                .size_hint()
                .upper()
                .is_some_and(|n| n <= body_budget as u64);
            if !fits {
                return Ok(miss(response.map(Either::Right)));
            }
            let (parts, body) = response.into_parts();
            // The size hint is the body's word; `Limited` holds it to it.
            let body = match Limited::new(body, body_budget).collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(error) => {
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
                explicitly_shared: rule.explicitly_shared,
            };
            // Fail-open: a failed store leaves the response as it is.
            let _ = cache.set(&vary_key, &rule.vary, rule.ttl).await;
            let _ = cache.set(&page_key, &stored, rule.ttl).await;
            Ok(miss(Response::from_parts(
                parts,
                Either::Left(Full::new(body)),
            )))
        }))
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

/// A cache key under construction: a sequence of parts, each written as its length, `:`, and
/// its bytes with everything outside printable ASCII (and `%`, `{`, `}`) as `%XX`. The escape is
/// one-to-one and the length says where a part ends, so two sequences of parts never give the
/// same key; no `{` survives, so a client cannot choose the Redis Cluster slot with a hash tag.
struct KeyWriter {
    key: String,
    max: usize,
}

/// The key would exceed the configured bound.
struct TooLong;

impl KeyWriter {
    fn new(prefix: &str, max: usize) -> Self {
        Self {
            key: prefix.to_owned(),
            max,
        }
    }

    fn part(&mut self, bytes: &[u8]) -> Result<(), TooLong> {
        // Escaping only lengthens a part: a part already too long is refused before the work.
        if self.key.len().saturating_add(bytes.len()) > self.max {
            return Err(TooLong);
        }
        let escaped_len: usize = bytes.iter().map(|&b| if is_plain(b) { 1 } else { 3 }).sum();
        let _ = write!(self.key, "{escaped_len}:");
        for &b in bytes {
            if is_plain(b) {
                self.key.push(char::from(b));
            } else {
                let _ = write!(self.key, "%{b:02X}");
            }
        }
        if self.key.len() > self.max {
            return Err(TooLong);
        }
        Ok(())
    }

    fn count(&mut self, n: usize) -> Result<(), TooLong> {
        self.part(n.to_string().as_bytes())
    }

    /// Every value of header `name`, with their number first (`a, b` on one line and `a`
    /// and `b` on two stay apart).
    fn values(&mut self, headers: &HeaderMap, name: &str) -> Result<(), TooLong> {
        let values = headers.get_all(name);
        self.count(values.iter().count())?;
        for value in values {
            self.part(value.as_bytes())?;
        }
        Ok(())
    }
}

fn is_plain(b: u8) -> bool {
    b.is_ascii_graphic() && !matches!(b, b'%' | b'{' | b'}')
}

/// Method, URI, `Host` and the configured key headers; `None` when longer than `max`.
fn base_key<B>(req: &Request<B>, key_headers: &[HeaderName], max: usize) -> Option<String> {
    let build = || -> Result<String, TooLong> {
        let uri = req.uri();
        let mut key = KeyWriter::new("", max);
        key.part(req.method().as_str().as_bytes())?;
        key.part(uri.scheme_str().unwrap_or_default().as_bytes())?;
        key.part(uri.authority().map_or("", |a| a.as_str()).as_bytes())?;
        key.values(req.headers(), header::HOST.as_str())?;
        key.part(uri.path_and_query().map_or("", |pq| pq.as_str()).as_bytes())?;
        key.count(key_headers.len())?;
        for name in key_headers {
            key.part(name.as_str().as_bytes())?;
            key.values(req.headers(), name.as_str())?;
        }
        Ok(key.key)
    };
    build().ok()
}

/// The key of the stored page: the base key plus the request's values of the headers the
/// response varied on; `None` when longer than `max`.
fn page_key(base: &str, vary: &[String], headers: &HeaderMap, max: usize) -> Option<String> {
    let build = || -> Result<String, TooLong> {
        let mut key = KeyWriter::new("page:", max);
        key.key.push_str(base);
        if key.key.len() > max {
            return Err(TooLong);
        }
        key.count(vary.len())?;
        for name in vary {
            key.part(name.as_bytes())?;
            key.values(headers, name)?;
        }
        Ok(key.key)
    };
    build().ok()
}

/// How a response may be stored.
#[derive(Debug, PartialEq)]
struct StoreRule {
    ttl: Duration,
    /// The `Vary` header names, lower case, sorted, once each.
    vary: Vec<String>,
    /// `public` or `s-maxage`: it may answer requests with credentials.
    explicitly_shared: bool,
}

/// How the response may be stored, or `None` when it may not.
fn storable<B>(
    response: &Response<B>,
    credentials: bool,
    settings: &Settings,
) -> Option<StoreRule> {
    if response.status() != StatusCode::OK || response.headers().contains_key(header::SET_COOKIE) {
        return None;
    }
    let cc = CacheControl::parse(response.headers());
    if cc.no_store || cc.private || cc.no_cache {
        return None;
    }
    let explicitly_shared = cc.public || cc.s_maxage.is_some();
    if credentials && !explicitly_shared {
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
        .and_then(|v| delta_seconds(v.as_bytes()))
        .map_or(Duration::ZERO, Duration::from_secs);
    let ttl = lifetime.saturating_sub(already).min(settings.max_ttl);
    (!ttl.is_zero()).then_some(StoreRule {
        ttl,
        vary,
        explicitly_shared,
    })
}

/// A `delta-seconds` value (RFC 9111 §1.2.2): digits only; one too large for a `u64` is the
/// largest `u64`, as the RFC asks ("the greatest positive integer it can conveniently
/// represent"), never a wrap or a parse failure.
fn delta_seconds(text: &[u8]) -> Option<u64> {
    let text = text.trim_ascii();
    if text.is_empty() || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(text.iter().fold(0_u64, |n, &digit| {
        n.saturating_mul(10).saturating_add(u64::from(digit - b'0'))
    }))
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
                let seconds = || arg.and_then(|a| delta_seconds(a.as_bytes()));
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

    fn settings() -> Settings {
        Settings {
            default_ttl: Duration::from_secs(60),
            max_ttl: Duration::from_secs(3600),
            max_entry_size: 1024,
            max_key_size: 4096,
            key_headers: vec![],
        }
    }

    fn response(pairs: &[(&'static str, &'static str)]) -> Response<()> {
        let mut r = Response::new(());
        *r.headers_mut() = headers(pairs);
        r
    }

    fn rule(ttl: u64, vary: &[&str], explicitly_shared: bool) -> Option<StoreRule> {
        Some(StoreRule {
            ttl: Duration::from_secs(ttl),
            vary: vary.iter().map(|v| (*v).to_owned()).collect(),
            explicitly_shared,
        })
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
        assert_eq!(
            CacheControl::parse(&headers(&[("cache-control", "max-age=-1")])).max_age,
            Some(0)
        );
        assert!(CacheControl::parse(&headers(&[("pragma", "no-cache")])).no_cache);
    }

    #[test]
    fn delta_seconds_saturate_instead_of_failing() {
        assert_eq!(delta_seconds(b"0"), Some(0));
        assert_eq!(delta_seconds(b" 42 "), Some(42));
        assert_eq!(delta_seconds(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(delta_seconds(b"99999999999999999999999999"), Some(u64::MAX));
        for bad in [&b""[..], b"-1", b"1.5", b"+3", b"0x10", b"1 2"] {
            assert_eq!(delta_seconds(bad), None, "{bad:?}");
        }
        let cc = CacheControl::parse(&headers(&[(
            "cache-control",
            "max-age=99999999999999999999999999",
        )]));
        assert_eq!(cc.max_age, Some(u64::MAX));
    }

    #[test]
    fn storable_rules() {
        let settings = settings();
        assert_eq!(
            storable(&response(&[]), false, &settings),
            rule(60, &[], false)
        );
        assert_eq!(
            storable(
                &response(&[("cache-control", "max-age=10, s-maxage=20"), ("age", "5")]),
                false,
                &settings
            ),
            rule(15, &[], true)
        );
        assert_eq!(
            storable(
                &response(&[("vary", "Accept-Encoding, accept-language")]),
                false,
                &settings
            ),
            rule(60, &["accept-encoding", "accept-language"], false)
        );
        for never in [
            &[("vary", "*")][..],
            &[("set-cookie", "a=b")],
            &[
                ("set-cookie", "a=b"),
                ("cache-control", "public, max-age=60"),
            ],
            &[("cache-control", "private")],
            &[("cache-control", "max-age=0")],
            &[("cache-control", "no-cache")],
            &[
                ("cache-control", "max-age=60"),
                ("age", "99999999999999999999"),
            ],
        ] {
            assert_eq!(
                storable(&response(never), false, &settings),
                None,
                "{never:?}"
            );
        }
        let mut not_ok = response(&[]);
        *not_ok.status_mut() = StatusCode::NOT_FOUND;
        assert_eq!(storable(&not_ok, false, &settings), None);
    }

    #[test]
    fn requests_with_credentials_store_only_explicitly_shared_responses() {
        let settings = settings();
        // A request with `Cookie` or `Authorization` (`credentials`): nothing without `public`
        // or `s-maxage`, even with max-age.
        assert_eq!(storable(&response(&[]), true, &settings), None);
        assert_eq!(
            storable(
                &response(&[("cache-control", "max-age=60")]),
                true,
                &settings
            ),
            None
        );
        assert_eq!(
            storable(&response(&[("cache-control", "public")]), true, &settings),
            rule(60, &[], true)
        );
        assert_eq!(
            storable(
                &response(&[("cache-control", "s-maxage=30")]),
                true,
                &settings
            ),
            rule(30, &[], true)
        );
        // Set-Cookie is never stored, public or not.
        assert_eq!(
            storable(
                &response(&[("cache-control", "public"), ("set-cookie", "sid=1")]),
                true,
                &settings
            ),
            None
        );
    }

    #[test]
    fn ttls_saturate_and_are_capped() {
        let settings = settings();
        // `now + ttl` once overflowed here; now the TTL is capped at max_ttl.
        for huge in [
            "max-age=18446744073709551615",
            "max-age=99999999999999999999999",
            "s-maxage=18446744073709551615",
        ] {
            assert_eq!(
                storable(&response(&[("cache-control", huge)]), false, &settings).map(|r| r.ttl),
                Some(Duration::from_secs(3600)),
                "{huge}"
            );
        }
        let long_default = Settings {
            default_ttl: Duration::MAX,
            ..settings
        };
        assert_eq!(
            storable(&response(&[("age", "1")]), false, &long_default).map(|r| r.ttl),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(
            HttpCacheConfig::default().max_ttl,
            Duration::from_secs(86_400)
        );
    }

    fn request(uri: &str, pairs: &[(&'static str, &[u8])]) -> Request<()> {
        let mut req = Request::get(uri).body(()).unwrap();
        for (name, value) in pairs {
            req.headers_mut().append(
                HeaderName::from_static(name),
                HeaderValue::from_bytes(value).unwrap(),
            );
        }
        req
    }

    fn full_key(req: &Request<()>, key_headers: &[HeaderName], vary: &[&str]) -> String {
        let base = base_key(req, key_headers, 4096).unwrap();
        let vary: Vec<String> = vary.iter().map(|v| (*v).to_owned()).collect();
        page_key(&base, &vary, req.headers(), 4096).unwrap()
    }

    #[test]
    fn distinct_requests_never_share_a_key() {
        let lang = [header::ACCEPT_LANGUAGE];
        let keys = [
            // Host is in the key, as header or as the URI's authority.
            full_key(&request("/p", &[("host", b"a.example")]), &[], &[]),
            full_key(&request("/p", &[("host", b"b.example")]), &[], &[]),
            full_key(&request("http://a.example/p", &[]), &[], &[]),
            full_key(&request("/p", &[]), &[], &[]),
            // Values are exact bytes: invalid UTF-8 no longer all reads as U+FFFD.
            full_key(&request("/p", &[("accept-language", b"\xff")]), &lang, &[]),
            full_key(&request("/p", &[("accept-language", b"\xfe")]), &lang, &[]),
            full_key(&request("/p", &[("accept-language", b"%FF")]), &lang, &[]),
            // One header line `a,b` against two lines `a` and `b`.
            full_key(&request("/p", &[("accept-language", b"a,b")]), &lang, &[]),
            full_key(
                &request(
                    "/p",
                    &[("accept-language", b"a"), ("accept-language", b"b")],
                ),
                &lang,
                &[],
            ),
            full_key(&request("/p", &[]), &lang, &[]),
            full_key(&request("/p", &[("accept-language", b"")]), &lang, &[]),
            // Values that spell this format's parts.
            full_key(
                &request("/p", &[("accept-language", b"1:a1:b")]),
                &lang,
                &[],
            ),
            full_key(
                &request(
                    "/p",
                    &[("accept-language", b"1:a"), ("accept-language", b"1:b")],
                ),
                &lang,
                &[],
            ),
            // Vary values are in the page key.
            full_key(&request("/p", &[("x-tenant", b"1")]), &[], &["x-tenant"]),
            full_key(&request("/p", &[("x-tenant", b"2")]), &[], &["x-tenant"]),
            full_key(&request("/p?q=1", &[]), &[], &[]),
            full_key(&request("/p?q=2", &[]), &[], &[]),
        ];
        for (i, a) in keys.iter().enumerate() {
            for (j, b) in keys.iter().enumerate().skip(i + 1) {
                assert_ne!(a, b, "keys {i} and {j} collide");
            }
            assert!(!a.contains(['{', '}']), "a client could pick the slot: {a}");
        }
        // The same request gives the same key.
        assert_eq!(
            full_key(&request("/p", &[("x-tenant", b"\x80")]), &[], &["x-tenant"]),
            full_key(&request("/p", &[("x-tenant", b"\x80")]), &[], &["x-tenant"]),
        );
        // No hash tag from the URI either.
        assert!(!full_key(&request("/p?{tag}", &[]), &[], &[]).contains('{'));
    }

    #[test]
    fn long_keys_are_refused() {
        let long = format!("/p?q={}", "a".repeat(5000));
        assert!(base_key(&request(&long, &[]), &[], 4096).is_none());
        assert!(base_key(&request("/p", &[]), &[], 4096).is_some());
        // Escaping counts: 1500 high bytes take 4500.
        let high = [0x80_u8; 1500];
        let req = request("/p", &[("x-tenant", &high)]);
        let base = base_key(&req, &[], 4096).unwrap();
        assert!(page_key(&base, &["x-tenant".to_owned()], req.headers(), 4096).is_none());
        assert!(page_key(&base, &["x-tenant".to_owned()], req.headers(), 5000).is_some());
        // So do Vary names.
        let many: Vec<String> = (0..1000).map(|i| format!("x-h{i}")).collect();
        assert!(page_key(&base, &many, req.headers(), 4096).is_none());
    }

    #[test]
    fn config_deserializes_and_is_checked() {
        let config: HttpCacheConfig = serde_json::from_str(
            r#"{ "default_ttl": "30s", "max_ttl": "1h", "max_entry_size": 2048,
                 "max_key_size": 512, "key_headers": ["accept-language"] }"#,
        )
        .unwrap();
        assert_eq!(config.default_ttl, Duration::from_secs(30));
        assert_eq!(config.max_ttl, Duration::from_secs(3600));
        assert_eq!((config.max_entry_size, config.max_key_size), (2048, 512));
        let defaults: HttpCacheConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(defaults, HttpCacheConfig::default());
        assert_eq!(defaults.max_entry_size, 1 << 20);
        assert!(serde_json::from_str::<HttpCacheConfig>(r#"{ "max_body": 1 }"#).is_err());
    }
}
