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

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use herd_context::TokenSlot;
use hmac::KeyInit as _;
use http::header::HeaderName;
use http::{Request, Response};
use tower_layer::Layer;
use tower_service::Service;

use self::carrier::{Carrier, CookieSettings, HmacSha256};
use self::future::ResponseFuture;
use crate::error::Error;
use crate::macros::inner_service_accessors;
use crate::router::DbRouter;
use crate::scope::Consistency;

mod carrier;
pub mod future;

/// Default header carrying the token: `x-herd-lsn`.
pub const DEFAULT_HEADER: &str = "x-herd-lsn";
/// Default cookie carrying the token: `herd_lsn`.
pub const DEFAULT_COOKIE: &str = "herd_lsn";
/// Shortest cookie signing key accepted: 32 bytes (256 bits, the HMAC-SHA256 output size).
pub const MIN_COOKIE_KEY_LEN: usize = 32;

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
    inner_service_accessors!(inner: S);
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ReadYourWrites<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let (slot, presented) = match &*self.carrier {
            Carrier::Session => {
                let slot = req.extensions().get::<TokenSlot>().cloned();
                if slot.is_none() {
                    no_session_warning();
                }
                (slot, None)
            }
            carrier => (None, carrier.read(req.headers())),
        };
        // Seeded by the response future before it first polls the inner one: the scope is
        // shared state.
        let client = Consistency::new();
        req.extensions_mut().insert(client.clone());
        ResponseFuture::new(
            self.inner.call(req),
            client,
            self.router.clone(),
            Arc::clone(&self.carrier),
            slot,
            presented,
        )
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
