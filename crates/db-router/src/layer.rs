//! [`ReadYourWritesLayer`]: read-your-writes across requests and instances, as a tower layer.
//!
//! Each request runs in a [`Consistency`] scope seeded from the client's token (a WAL
//! position, carried in a header or a cookie). Reads through the [`DbRouter`] in that
//! request go to a replica that has replayed the token, so a user sees their own writes
//! even when the next request lands on another instance. When the request wrote through
//! the router, the response carries the new token (the primary's WAL position after the
//! request's commits).
//!
//! The layer adds no failure mode: the inner service's errors pass through, and when the
//! new token cannot be read (the primary just died) the response goes out without one and
//! a warning is logged.
//!
//! ```no_run
//! use axum::{Router, routing::get};
//! use herd_db_router::{DbRouter, ReadYourWritesLayer};
//!
//! # async fn demo(router: DbRouter) {
//! let app: Router = Router::new()
//!     .route("/profile", get(|| async { "..." }))
//!     .layer(ReadYourWritesLayer::cookie(router.clone()));
//! # }
//! ```
//!
//! A forged token can only affect its own client: reads wait up to
//! `read_your_writes.max_wait` for replicas, then use the primary.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use cookie::{Cookie, SameSite};
use http::header::{COOKIE, HeaderName, HeaderValue, SET_COOKIE};
use http::{HeaderMap, Request, Response};
use tower_layer::Layer;
use tower_service::Service;

use crate::lsn::Lsn;
use crate::router::DbRouter;
use crate::scope::Consistency;

/// Default header carrying the token: `x-herd-lsn`.
pub const DEFAULT_HEADER: &str = "x-herd-lsn";
/// Default cookie carrying the token: `herd_lsn`.
pub const DEFAULT_COOKIE: &str = "herd_lsn";

/// How the token travels between the client and the service.
#[derive(Debug, Clone)]
enum Carrier {
    /// Read from the request header, set on the response (echoed when unchanged) for the
    /// client to send back.
    Header(HeaderName),
    /// Read from the `Cookie` header, set with `Set-Cookie` after a write.
    Cookie(CookieSettings),
}

#[derive(Debug, Clone)]
struct CookieSettings {
    name: String,
    path: String,
    max_age: Duration,
    secure: bool,
}

impl Carrier {
    fn read(&self, headers: &HeaderMap) -> Option<Lsn> {
        match self {
            Carrier::Header(name) => headers.get(name)?.to_str().ok()?.parse().ok(),
            Carrier::Cookie(settings) => headers
                .get_all(COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(Cookie::split_parse)
                .filter_map(Result::ok)
                .filter(|c| c.name() == settings.name)
                .filter_map(|c| c.value().parse::<Lsn>().ok())
                .max(),
        }
    }

    fn write(&self, headers: &mut HeaderMap, token: Lsn, changed: bool) {
        match self {
            Carrier::Header(name) => {
                if let Ok(value) = HeaderValue::from_str(&token.to_string()) {
                    headers.insert(name.clone(), value);
                }
            }
            Carrier::Cookie(settings) if changed => {
                let max_age = i64::try_from(settings.max_age.as_secs()).unwrap_or(i64::MAX);
                let cookie = Cookie::build((settings.name.as_str(), token.to_string()))
                    .path(settings.path.as_str())
                    .max_age(cookie::time::Duration::seconds(max_age))
                    .http_only(true)
                    .secure(settings.secure)
                    .same_site(SameSite::Lax)
                    .build();
                if let Ok(value) = HeaderValue::from_str(&cookie.to_string()) {
                    headers.append(SET_COOKIE, value);
                }
            }
            Carrier::Cookie(_) => {}
        }
    }
}

/// Applies [`ReadYourWrites`] to a service; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct ReadYourWritesLayer {
    router: DbRouter,
    carrier: Arc<Carrier>,
}

impl ReadYourWritesLayer {
    /// Token in the `x-herd-lsn` header: the service sets it on responses, the client (or a
    /// gateway) sends it back.
    pub fn header(router: DbRouter) -> Self {
        Self {
            router,
            carrier: Arc::new(Carrier::Header(HeaderName::from_static(DEFAULT_HEADER))),
        }
    }

    /// Token in a header of your choice.
    pub fn header_named(router: DbRouter, name: HeaderName) -> Self {
        Self {
            router,
            carrier: Arc::new(Carrier::Header(name)),
        }
    }

    /// Token in the `herd_lsn` cookie (path `/`, `HttpOnly`, `SameSite=Lax`, max age 5 min,
    /// not `Secure`; change with the builder methods). Browsers carry it with no client code.
    pub fn cookie(router: DbRouter) -> Self {
        Self {
            router,
            carrier: Arc::new(Carrier::Cookie(CookieSettings {
                name: DEFAULT_COOKIE.to_string(),
                path: "/".to_string(),
                max_age: Duration::from_secs(300),
                secure: false,
            })),
        }
    }

    fn with_cookie(mut self, change: impl FnOnce(&mut CookieSettings)) -> Self {
        if let Carrier::Cookie(settings) = Arc::make_mut(&mut self.carrier) {
            change(settings);
        }
        self
    }

    /// Cookie name (cookie carrier only).
    pub fn cookie_name(self, name: impl Into<String>) -> Self {
        let name = name.into();
        self.with_cookie(|s| s.name = name)
    }

    /// Cookie path (default `/`; cookie carrier only).
    pub fn cookie_path(self, path: impl Into<String>) -> Self {
        let path = path.into();
        self.with_cookie(|s| s.path = path)
    }

    /// How long the cookie lives (default 5 min; cookie carrier only). After that every
    /// replica within the lag bounds has long replayed the write.
    pub fn cookie_max_age(self, max_age: Duration) -> Self {
        self.with_cookie(|s| s.max_age = max_age)
    }

    /// Marks the cookie `Secure` (cookie carrier only).
    pub fn cookie_secure(self, secure: bool) -> Self {
        self.with_cookie(|s| s.secure = secure)
    }
}

impl<S> Layer<S> for ReadYourWritesLayer {
    type Service = ReadYourWrites<S>;

    fn layer(&self, inner: S) -> ReadYourWrites<S> {
        ReadYourWrites {
            inner,
            router: self.router.clone(),
            carrier: Arc::clone(&self.carrier),
        }
    }
}

/// Runs each request in the client's [`Consistency`] scope and hands out its new token.
///
/// The scope is also put in the request's extensions, for handlers that use pools from
/// [`DbRouter::primary`] directly (call [`Consistency::mark_write`] after writing).
#[derive(Debug, Clone)]
pub struct ReadYourWrites<S> {
    inner: S,
    router: DbRouter,
    carrier: Arc<Carrier>,
}

impl<S> ReadYourWrites<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, consuming the middleware.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

/// Response future of [`ReadYourWrites`].
pub struct ResponseFuture<R, E> {
    inner: Pin<Box<dyn Future<Output = Result<R, E>> + Send>>,
}

impl<R, E> fmt::Debug for ResponseFuture<R, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<R, E> Future for ResponseFuture<R, E> {
    type Output = Result<R, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ReadYourWrites<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<Response<ResBody>, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let token = self.carrier.read(req.headers());
        let client = token.map_or_else(Consistency::new, Consistency::after);
        req.extensions_mut().insert(client.clone());
        let fut = self.inner.call(req);
        let router = self.router.clone();
        let carrier = Arc::clone(&self.carrier);
        ResponseFuture {
            inner: Box::pin(async move {
                let mut response = client.scope(fut).await?;
                match router.settle(&client).await {
                    Ok(Some(token)) => carrier.write(response.headers_mut(), token, client.wrote()),
                    Ok(None) => {}
                    Err(error) => {
                        tracing::warn!(%error, "read-your-writes: no token for this response")
                    }
                }
                Ok(response)
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cookie_carrier() -> Carrier {
        Carrier::Cookie(CookieSettings {
            name: "herd_lsn".into(),
            path: "/".into(),
            max_age: Duration::from_secs(60),
            secure: true,
        })
    }

    #[test]
    fn header_carrier_reads_and_writes() {
        let carrier = Carrier::Header(HeaderName::from_static(DEFAULT_HEADER));
        let mut headers = HeaderMap::new();
        assert_eq!(carrier.read(&headers), None);
        headers.insert(DEFAULT_HEADER, HeaderValue::from_static("0/3000060"));
        assert_eq!(carrier.read(&headers), Some(Lsn::new(0x300_0060)));
        headers.insert(DEFAULT_HEADER, HeaderValue::from_static("garbage"));
        assert_eq!(
            carrier.read(&headers),
            None,
            "a bad token is ignored, not an error"
        );
        let mut out = HeaderMap::new();
        carrier.write(&mut out, Lsn::new(0x1_0000_0010), false);
        assert_eq!(out.get(DEFAULT_HEADER).unwrap(), "1/10");
    }

    #[test]
    fn cookie_carrier_reads_the_highest_and_sets_only_after_a_write() {
        let carrier = cookie_carrier();
        let mut headers = HeaderMap::new();
        headers.append(COOKIE, HeaderValue::from_static("a=b; herd_lsn=0/10"));
        headers.append(COOKIE, HeaderValue::from_static("herd_lsn=0/20; other=1"));
        assert_eq!(carrier.read(&headers), Some(Lsn::new(0x20)));
        let mut out = HeaderMap::new();
        carrier.write(&mut out, Lsn::new(0x30), false);
        assert!(out.get(SET_COOKIE).is_none());
        carrier.write(&mut out, Lsn::new(0x30), true);
        let set = out.get(SET_COOKIE).unwrap().to_str().unwrap();
        for part in [
            "herd_lsn=0/30",
            "HttpOnly",
            "Secure",
            "SameSite=Lax",
            "Max-Age=60",
            "Path=/",
        ] {
            assert!(set.contains(part), "{set} lacks {part}");
        }
    }
}
