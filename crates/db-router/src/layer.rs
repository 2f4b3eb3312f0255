//! [`ReadYourWritesLayer`]: read-your-writes across requests and instances, as a tower layer.
//!
//! Each request runs in a [`Consistency`] scope seeded from the client's token (a WAL
//! position). Reads through the [`DbRouter`] in that request, and in work herd runs for it
//! in other tasks (cache loaders, background refreshes, [`herd_context::spawn`]), go to a
//! replica that has replayed the token, so a user sees their own writes even when the next
//! request lands on another instance. When the request wrote through the router, the token
//! moves to the primary's WAL position after the request's commits.
//!
//! # Where the token lives: pick one
//!
//! 1. **In the herd session** ([`session`](ReadYourWritesLayer::session), recommended when
//!    the service has herd-session's `SessionLayer`): no second cookie, nothing for the client
//!    to do, and the token is as safe as the session. Put this layer *inside* the session
//!    layer (added before it), so it finds the session and the token is saved with it:
//!
//!    ```no_run
//!    # fn demo(router: herd_db_router::DbRouter, session_layer: tower_layer::Identity) {
//!    use herd_db_router::ReadYourWritesLayer;
//!    let app: axum::Router = axum::Router::new()
//!        .route("/profile", axum::routing::get(|| async { "..." }))
//!        .layer(ReadYourWritesLayer::session(router.clone())) // inner: runs second
//!        .layer(session_layer); // e.g. herd_session::SessionLayer, outer: runs first
//!    # }
//!    ```
//!
//!    herd-session puts a [`herd_context::TokenSlot`] in every request it serves; herd-session
//!    and herd-db-router do not depend on each other.
//! 2. **In a signed cookie** ([`cookie`](ReadYourWritesLayer::cookie)) for browser clients of a
//!    service without sessions: `herd_lsn`, HMAC-SHA256-signed with your key (rotation: give
//!    old keys after the new one), `Secure; HttpOnly; SameSite=Lax` by default.
//! 3. **In a header** ([`header`](ReadYourWritesLayer::header), `x-herd-lsn`) for API clients
//!    and gateways that carry it themselves: the response always carries the current token.
//!
//! Whatever carries it, a token is checked with [`DbRouter::check_token`] before use: one
//! beyond every WAL position the primary has reported is ignored, so a forged or far-future
//! token cannot make each of its client's reads wait `read_your_writes.max_wait`. A token
//! within that range can only make its own client's reads more careful.
//!
//! The layer adds no failure mode: the inner service's errors pass through, and when the new
//! token cannot be read or stored (the primary just died, the session store is down) the
//! response goes out without it and a warning is logged.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cookie::{Cookie, SameSite};
use herd_context::TokenSlot;
use hmac::{Hmac, KeyInit as _, Mac as _};
use http::header::{COOKIE, HeaderName, HeaderValue, SET_COOKIE};
use http::{HeaderMap, Request, Response};
use sha2::Sha256;
use tower_layer::Layer;
use tower_service::Service;

use crate::error::Error;
use crate::lsn::Lsn;
use crate::router::DbRouter;
use crate::scope::Consistency;

/// Default header carrying the token: `x-herd-lsn`.
pub const DEFAULT_HEADER: &str = "x-herd-lsn";
/// Default cookie carrying the token: `herd_lsn`.
pub const DEFAULT_COOKIE: &str = "herd_lsn";
/// Shortest cookie signing key accepted: 32 bytes (256 bits, the HMAC-SHA256 output size).
pub const MIN_COOKIE_KEY_LEN: usize = 32;

type HmacSha256 = Hmac<Sha256>;

/// How the token travels between the client and the service.
#[derive(Clone)]
enum Carrier {
    /// Read from the request header, set on the response (echoed when unchanged) for the
    /// client to send back.
    Header(HeaderName),
    /// Read from the `Cookie` header, set with `Set-Cookie` after a write; signed.
    Cookie(CookieSettings),
    /// Kept by the request's [`TokenSlot`] (the herd session).
    Session,
}

impl fmt::Debug for Carrier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Carrier::Header(name) => f.debug_tuple("Header").field(name).finish(),
            Carrier::Cookie(settings) => f
                .debug_struct("Cookie")
                .field("name", &settings.name)
                .field("path", &settings.path)
                .field("max_age", &settings.max_age)
                .field("secure", &settings.secure)
                .field("keys", &settings.keys.len())
                .finish(),
            Carrier::Session => f.write_str("Session"),
        }
    }
}

#[derive(Clone)]
struct CookieSettings {
    name: String,
    path: String,
    max_age: Duration,
    secure: bool,
    /// HMAC states keyed with each secret; the first signs, all verify.
    keys: Vec<HmacSha256>,
}

impl CookieSettings {
    fn mac(key: &HmacSha256, name: &str, lsn: &str) -> HmacSha256 {
        let mut mac = key.clone();
        mac.update(name.as_bytes());
        mac.update(b"=");
        mac.update(lsn.as_bytes());
        mac
    }

    /// `<lsn>.<mac>`
    fn sign(&self, token: Lsn) -> Option<String> {
        let lsn = token.to_string();
        let key = self.keys.first()?;
        let tag = Self::mac(key, &self.name, &lsn).finalize().into_bytes();
        Some(format!("{lsn}.{}", URL_SAFE_NO_PAD.encode(tag)))
    }

    /// The token in a signed value, if any key signed it.
    fn verify(&self, value: &str) -> Option<Lsn> {
        let (lsn, tag) = value.rsplit_once('.')?;
        // An HMAC-SHA256 tag is 43 characters: anything longer is not decoded.
        if tag.len() != 43 || lsn.len() > 17 {
            return None;
        }
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        // `verify_slice` compares in constant time.
        self.keys
            .iter()
            .any(|key| Self::mac(key, &self.name, lsn).verify_slice(&tag).is_ok())
            .then(|| lsn.parse().ok())
            .flatten()
    }
}

impl Carrier {
    /// The token the request carries in a header or cookie (the session carrier reads later).
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
                // A request can hold a handful of cookies, not thousands worth verifying.
                .take(4)
                .filter_map(|c| settings.verify(c.value()))
                .max(),
            Carrier::Session => None,
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
                let Some(value) = settings.sign(token) else {
                    return;
                };
                let max_age = i64::try_from(settings.max_age.as_secs()).unwrap_or(i64::MAX);
                let cookie = Cookie::build((settings.name.as_str(), value))
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
            Carrier::Cookie(_) | Carrier::Session => {}
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
    /// Token in the herd session (recommended with herd-session): read from the request's
    /// [`TokenSlot`] before the handler, advanced after a write. Add this layer before
    /// herd-session's `SessionLayer` (so it runs inside it); see the [module docs](self).
    ///
    /// A request with a session has it read at its start (one store read, which the handler's
    /// own use of the session then reuses, and the session's rolling expiry counts the
    /// request); a request without one costs nothing. A request that finds no slot (no session
    /// layer around this one) runs with no token, and a warning is logged once.
    pub fn session(router: DbRouter) -> Self {
        Self {
            router,
            carrier: Arc::new(Carrier::Session),
        }
    }

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

    /// Token in the `herd_lsn` cookie, signed with HMAC-SHA256 under `keys` (each at least
    /// [`MIN_COOKIE_KEY_LEN`] bytes; the first signs, every one verifies, so a key rotates in
    /// ahead of the old one). Path `/`, `HttpOnly`, `SameSite=Lax`, `Secure`, max age 5 min;
    /// change them with the builder methods (`cookie_secure(false)` for plain-HTTP development
    /// only). Browsers carry it with no client code. A cookie that does not verify is ignored.
    ///
    /// ```
    /// # async fn demo(router: herd_db_router::DbRouter) -> Result<(), herd_db_router::Error> {
    /// let key = std::env::var("LSN_COOKIE_KEY").unwrap_or_default(); // 32+ bytes, shared by every instance
    /// let layer = herd_db_router::ReadYourWritesLayer::cookie(router, [key.as_bytes()])?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when no key is given or one is shorter than
    /// [`MIN_COOKIE_KEY_LEN`].
    pub fn cookie<I>(router: DbRouter, keys: I) -> Result<Self, Error>
    where
        I: IntoIterator,
        I::Item: AsRef<[u8]>,
    {
        const FIELD: &str = "ReadYourWritesLayer::cookie";
        let keys = keys
            .into_iter()
            .enumerate()
            .map(|(i, key)| {
                let key = key.as_ref();
                if key.len() < MIN_COOKIE_KEY_LEN {
                    return Err(Error::invalid_config(
                        FIELD,
                        format!(
                            "key {} is {} bytes; at least {MIN_COOKIE_KEY_LEN} needed",
                            i.saturating_add(1),
                            key.len()
                        ),
                    ));
                }
                HmacSha256::new_from_slice(key).map_err(|e| {
                    Error::invalid_config(FIELD, format!("key {}: {e}", i.saturating_add(1)))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if keys.is_empty() {
            return Err(Error::invalid_config(FIELD, "no key given"));
        }
        Ok(Self {
            router,
            carrier: Arc::new(Carrier::Cookie(CookieSettings {
                name: DEFAULT_COOKIE.to_string(),
                path: "/".to_string(),
                max_age: Duration::from_secs(300),
                secure: true,
                keys,
            })),
        })
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

    /// Whether the cookie is `Secure` (default `true`; cookie carrier only). Turn it off only
    /// for plain-HTTP development: a browser then sends it over any connection.
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

/// Where the request's token comes from.
enum Source {
    /// Read from the request already (header or cookie).
    Presented(Option<Lsn>),
    /// To be loaded from the request's session.
    Slot(TokenSlot),
    /// The session carrier found no session.
    Missing,
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
        let source = match &*self.carrier {
            Carrier::Session => match req.extensions().get::<TokenSlot>() {
                Some(slot) => Source::Slot(slot.clone()),
                None => Source::Missing,
            },
            carrier => Source::Presented(carrier.read(req.headers())),
        };
        // Seeded below, before the inner future is first polled: the scope is shared state.
        let client = Consistency::new();
        req.extensions_mut().insert(client.clone());
        let fut = self.inner.call(req);
        let router = self.router.clone();
        let carrier = Arc::clone(&self.carrier);
        ResponseFuture {
            inner: Box::pin(async move {
                let presented = match &source {
                    Source::Presented(token) => *token,
                    Source::Slot(slot) => match slot.load().await {
                        Ok(token) => token.map(Lsn::new),
                        Err(error) => {
                            tracing::warn!(%error, "read-your-writes: the session's token cannot be read; none used");
                            None
                        }
                    },
                    Source::Missing => {
                        no_session_warning();
                        None
                    }
                };
                if let Some(token) = presented
                    && let Some(token) = router.check_token(token).await
                {
                    client.advance(token);
                }
                let mut response = client.scope(fut).await?;
                match router.settle(&client).await {
                    Ok(Some(token)) => match &source {
                        Source::Slot(slot) => {
                            if client.wrote()
                                && let Err(error) = slot.advance(token.into()).await
                            {
                                tracing::warn!(%error, "read-your-writes: the token cannot be stored in the session");
                            }
                        }
                        Source::Missing => {}
                        Source::Presented(_) => {
                            carrier.write(response.headers_mut(), token, client.wrote())
                        }
                    },
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

/// Logs, once per process, that the session carrier found no session.
fn no_session_warning() {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            "ReadYourWritesLayer::session found no session in the request: add it before \
             herd-session's SessionLayer (so it runs inside it); reads run without a token"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(keys: &[&[u8]]) -> CookieSettings {
        CookieSettings {
            name: "herd_lsn".into(),
            path: "/".into(),
            max_age: Duration::from_secs(60),
            secure: true,
            keys: keys
                .iter()
                .map(|k| HmacSha256::new_from_slice(k).unwrap())
                .collect(),
        }
    }

    const KEY: &[u8] = &[7; 32];
    const OLD_KEY: &[u8] = &[8; 32];

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

    fn signed(carrier: &Carrier, token: Lsn) -> String {
        let mut out = HeaderMap::new();
        carrier.write(&mut out, token, true);
        let set = out.get(SET_COOKIE).unwrap().to_str().unwrap();
        Cookie::parse(set.to_owned()).unwrap().value().to_owned()
    }

    fn cookie_header(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        let pairs: Vec<String> = values.iter().map(|v| format!("herd_lsn={v}")).collect();
        headers.append(
            COOKIE,
            HeaderValue::from_str(&format!("a=b; {}", pairs.join("; "))).unwrap(),
        );
        headers
    }

    #[test]
    fn cookie_carrier_signs_and_sets_only_after_a_write() {
        let carrier = Carrier::Cookie(settings(&[KEY]));
        let mut out = HeaderMap::new();
        carrier.write(&mut out, Lsn::new(0x30), false);
        assert!(out.get(SET_COOKIE).is_none());
        carrier.write(&mut out, Lsn::new(0x30), true);
        let set = out.get(SET_COOKIE).unwrap().to_str().unwrap();
        for part in [
            "herd_lsn=0/30.",
            "HttpOnly",
            "Secure",
            "SameSite=Lax",
            "Max-Age=60",
            "Path=/",
        ] {
            assert!(set.contains(part), "{set} lacks {part}");
        }
        let value = signed(&carrier, Lsn::new(0x30));
        assert_eq!(
            carrier.read(&cookie_header(&[&value])),
            Some(Lsn::new(0x30))
        );
    }

    #[test]
    fn cookie_carrier_ignores_unsigned_forged_and_foreign_values() {
        let carrier = Carrier::Cookie(settings(&[KEY]));
        let good = signed(&carrier, Lsn::new(0x20));
        // Unsigned, as the cookie used to be: ignored.
        assert_eq!(carrier.read(&cookie_header(&["0/10"])), None);
        // Another position under a valid tag: ignored.
        let (_, tag) = good.rsplit_once('.').unwrap();
        assert_eq!(
            carrier.read(&cookie_header(&[&format!("FFFFFFFF/0.{tag}")])),
            None
        );
        // One flipped tag character: ignored.
        let mut tampered = good.clone().into_bytes();
        let last = tampered.len() - 1;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).unwrap();
        assert_eq!(carrier.read(&cookie_header(&[&tampered])), None);
        // Signed under another key, or for another cookie name: ignored.
        let other = Carrier::Cookie(settings(&[OLD_KEY]));
        assert_eq!(
            other.read(&cookie_header(&[&good])),
            None,
            "another key's cookie verified"
        );
        let mut renamed = settings(&[KEY]);
        renamed.name = "other".into();
        assert_eq!(renamed.verify(&good), None, "bound to the cookie name");
        // Garbage of every shape: ignored, no panic.
        for junk in ["", ".", "0/1.", "0/1.!!!", "x.y.z", &"A".repeat(10_000)] {
            assert_eq!(carrier.read(&cookie_header(&[junk])), None, "{junk:.20}");
        }
        // With a good value among forged ones, the good one is read.
        assert_eq!(
            carrier.read(&cookie_header(&["0/99999", &good])),
            Some(Lsn::new(0x20))
        );
    }

    #[test]
    fn cookie_keys_rotate() {
        let old = Carrier::Cookie(settings(&[OLD_KEY]));
        let rotated = Carrier::Cookie(settings(&[KEY, OLD_KEY]));
        let from_old = signed(&old, Lsn::new(0x40));
        assert_eq!(
            rotated.read(&cookie_header(&[&from_old])),
            Some(Lsn::new(0x40)),
            "a cookie signed with the old key still verifies"
        );
        let from_new = signed(&rotated, Lsn::new(0x50));
        assert_eq!(
            old.read(&cookie_header(&[&from_new])),
            None,
            "the new key signs"
        );
    }
}
