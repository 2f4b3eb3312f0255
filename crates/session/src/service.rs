//! [`SessionLayer`] and the [`SessionService`] it wraps around an HTTP service.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use tower_layer::Layer;
use tower_service::Service;

use crate::config::{ConflictRule, OnStoreError, SameSite, SessionConfig, TtlExtension};
use crate::cookies::SetCookieTemplate;
use crate::error::ConfigError;
use crate::future;
use crate::id::SessionIdGenerator;
use crate::keys::SigningKeys;
use crate::macros::inner_service_accessors;
use crate::merge::{MergeRule, MergeRules};
use crate::metrics::Metrics;
use crate::session::{Backend, Session, Shared};
use crate::store::SessionStore;

/// Gives every request a [`Session`], loaded lazily and saved after the handler.
///
/// The session goes into the request's extensions (and is an axum extractor with the
/// `axum` feature), with a [`herd_context::TokenSlot`] backed by it: herd-db-router's
/// `ReadYourWritesLayer::session`, added before this layer, keeps the read-your-writes token
/// in the session through it (see [`Session::read_your_writes`]). Store failures are answered by the layer itself with an HTTP status, as
/// tower-http layers do, so the wrapped service's error type passes through unchanged:
/// `503 Service Unavailable` when the store cannot be reached (unless
/// [`OnStoreError::FailOpen`] is configured), `500` when the session is over its size limit.
///
/// Build one with [`SessionLayer::new`] (defaults) or [`SessionLayer::builder`].
#[derive(Debug, Clone)]
pub struct SessionLayer {
    shared: Arc<Shared>,
}

impl SessionLayer {
    /// A layer over `store` with the default [`SessionConfig`], signing cookies with `keys`.
    pub fn new(store: impl SessionStore, keys: SigningKeys) -> Self {
        let config = SessionConfig::default();
        let metrics = Metrics::new(store.name());
        Self {
            shared: Arc::new(Shared {
                backend: Backend::Store(Arc::new(store)),
                set_cookie: SetCookieTemplate::new(&config.cookie),
                metrics,
                config,
                keys,
                ids: SessionIdGenerator::new(),
                merge_rules: MergeRules::with_defaults(),
            }),
        }
    }

    /// A builder over `store`, for settings other than the defaults.
    pub fn builder(store: impl SessionStore, keys: SigningKeys) -> SessionLayerBuilder {
        SessionLayerBuilder {
            backend: Backend::Store(Arc::new(store)),
            config: SessionConfig::default(),
            keys,
            ids: SessionIdGenerator::new(),
            merge_rules: MergeRules::with_defaults(),
        }
    }

    /// A builder keeping the whole session in an encrypted cookie instead of a store (the
    /// `CookieStore` mode: no server state).
    ///
    /// The cookie value is the session and its idle deadline sealed with AES-256-GCM, the
    /// cookie name bound in. Encryption keys are derived from `keys` under a label of their
    /// own, so they rotate the same way as signing: seal with the newest, open with any.
    /// What a cookie cannot give, plainly:
    /// * no revocation: [`Session::destroy`] clears the browser's cookie, but a copy taken
    ///   earlier stays valid until its own idle or absolute deadline (both sealed inside it);
    /// * no merge: concurrent requests each send back their own cookie and the browser keeps
    ///   the last;
    /// * size: the data limit defaults to [`MAX_COOKIE_LEN`](crate::MAX_COOKIE_LEN) and the
    ///   sealed `name=value` may not exceed it either (browsers keep about 4 KiB per cookie):
    ///   [`SessionError::TooLarge`](crate::SessionError::TooLarge) otherwise.
    ///
    /// For API clients (the stateless "JWT" setup, without a JWT library), turn on
    /// [`bearer_tokens`](SessionLayerBuilder::bearer_tokens): the same sealed session is then
    /// also read from `Authorization: Bearer <token>`, with the same keys, rotation, idle and
    /// absolute expiry, and a tampered or expired token is a fresh empty session as a bad
    /// cookie is. A log-in handler calls [`Session::use_bearer_token`](crate::Session::use_bearer_token)
    /// to hand the client its token in the [`SESSION_TOKEN_HEADER`](crate::SESSION_TOKEN_HEADER)
    /// response header; a request that brings a token gets a new one there whenever the session
    /// changes or its expiry rolls. Tokens and cookies are sealed under different labels, so
    /// neither is accepted as the other.
    ///
    /// ```
    /// use herd_session::{SessionLayer, SigningKeys};
    /// let layer = SessionLayer::cookie_store_builder(SigningKeys::generate()?).build()?;
    /// # Ok::<(), herd_session::ConfigError>(())
    /// ```
    #[cfg(feature = "cookie-store")]
    #[cfg_attr(docsrs, doc(cfg(feature = "cookie-store")))]
    pub fn cookie_store_builder(keys: SigningKeys) -> SessionLayerBuilder {
        let config = SessionConfig {
            max_size: crate::cookie_store::MAX_COOKIE_LEN,
            ..SessionConfig::default()
        };
        SessionLayerBuilder {
            backend: Backend::Cookie(crate::cookie_store::CookieStore::new(&keys)),
            config,
            keys,
            ids: SessionIdGenerator::new(),
            merge_rules: MergeRules::with_defaults(),
        }
    }

    /// The settings in use.
    pub fn config(&self) -> &SessionConfig {
        &self.shared.config
    }
}

impl<S> Layer<S> for SessionLayer {
    type Service = SessionService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SessionService {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// Builds a [`SessionLayer`]; [`build`](Self::build) checks the settings.
#[derive(Debug)]
pub struct SessionLayerBuilder {
    backend: Backend,
    config: SessionConfig,
    keys: SigningKeys,
    ids: SessionIdGenerator,
    merge_rules: MergeRules,
}

impl SessionLayerBuilder {
    /// Replaces every setting at once (e.g. with a config loaded from a file).
    pub fn config(mut self, config: SessionConfig) -> Self {
        self.config = config;
        self
    }

    /// Cookie name. Default: `__Host-sid` for a Secure cookie with `Path=/` and no Domain (the
    /// defaults), `__Secure-sid` for a Secure one with another path or a Domain, `sid` when
    /// not Secure; see [`CookieConfig::name`](crate::CookieConfig::name). A `__Host-` or
    /// `__Secure-` name whose attributes break its prefix's rules fails
    /// [`build`](Self::build) with [`ConfigError::InvalidConfig`] naming the rule.
    pub fn cookie_name(mut self, name: impl Into<String>) -> Self {
        self.config.cookie.name = Some(name.into());
        self
    }

    /// Secure attribute. Default `true`; `secure(false)` is the explicit opt-out for
    /// plain-HTTP local development, and also makes the default cookie name `sid` (the
    /// `__Host-` prefix requires Secure). [`build`](Self::build) logs a warning when it is off.
    pub fn secure(mut self, secure: bool) -> Self {
        self.config.cookie.secure = secure;
        self
    }

    /// HttpOnly attribute (default `true`).
    pub fn http_only(mut self, http_only: bool) -> Self {
        self.config.cookie.http_only = http_only;
        self
    }

    /// SameSite attribute (default Lax).
    pub fn same_site(mut self, same_site: SameSite) -> Self {
        self.config.cookie.same_site = same_site;
        self
    }

    /// Path attribute (default `/`).
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.config.cookie.path = path.into();
        self
    }

    /// Domain attribute (default none: the exact host).
    pub fn domain(mut self, domain: impl Into<String>) -> Self {
        self.config.cookie.domain = Some(domain.into());
        self
    }

    /// Persistent cookie with Max-Age (default) or browser-session cookie.
    pub fn persistent_cookie(mut self, persistent: bool) -> Self {
        self.config.cookie.persistent = persistent;
        self
    }

    /// Idle timeout (default 30 minutes).
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.config.idle_timeout = timeout;
        self
    }

    /// Absolute timeout (default 12 hours; `None` for none).
    pub fn absolute_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.config.absolute_timeout = timeout;
        self
    }

    /// What extends the idle timeout (default every request).
    pub fn ttl_extension(mut self, extension: TtlExtension) -> Self {
        self.config.ttl_extension = extension;
        self
    }

    /// Size limit of the session data in bytes (default 64 KiB).
    pub fn max_size(mut self, bytes: usize) -> Self {
        self.config.max_size = bytes;
        self
    }

    /// What requests get when the store fails (default 503).
    pub fn on_store_error(mut self, policy: OnStoreError) -> Self {
        self.config.on_store_error = policy;
        self
    }

    /// How a field changed on both sides of a concurrent save is settled when it has no
    /// [`merge_rule`](Self::merge_rule) (default last write wins).
    pub fn conflict_rule(mut self, rule: ConflictRule) -> Self {
        self.config.conflict_rule = rule;
        self
    }

    /// How `field`, when changed on both sides of a concurrent save, is settled: by `rule`
    /// (a closure `Fn(Option<&str>, Option<&str>) -> Option<Keep>` over this request's and
    /// the stored JSON text, or a [`ConflictRule`] for this field alone), falling back to
    /// [`conflict_rule`](Self::conflict_rule) where it answers `None`. Replaces an earlier rule
    /// for the same field, including the one every layer starts with for
    /// [`READ_YOUR_WRITES_FIELD`](crate::READ_YOUR_WRITES_FIELD) (the newer token stays). See
    /// [`MergeRule`].
    ///
    /// The cookie store keeps no server state and merges nothing: the rule is not used there.
    pub fn merge_rule(mut self, field: impl Into<String>, rule: impl MergeRule) -> Self {
        self.merge_rules.set(field.into(), Arc::new(rule));
        self
    }

    /// Also take the session from `Authorization: Bearer <token>` and answer such requests
    /// with the new token in a header (default `false`; cookie store only); see
    /// [`SessionConfig::bearer_tokens`].
    pub fn bearer_tokens(mut self, on: bool) -> Self {
        self.config.bearer_tokens = on;
        self
    }

    /// Check-and-set attempts per save (default 64).
    pub fn max_save_attempts(mut self, attempts: u32) -> Self {
        self.config.max_save_attempts = attempts;
        self
    }

    /// Where new ids come from (default: the OS CSPRNG). A seeded generator is for tests and
    /// benchmarks only.
    pub fn id_generator(mut self, ids: SessionIdGenerator) -> Self {
        self.ids = ids;
        self
    }

    /// Checks the settings and builds the layer.
    ///
    /// # Errors
    /// [`ConfigError::InvalidConfig`] naming the first setting that cannot work, e.g.
    /// `cookie.name` for a `__Host-` cookie that is not Secure, has another path than `/` or
    /// has a Domain, or `bearer_tokens` with a session store.
    pub fn build(self) -> Result<SessionLayer, ConfigError> {
        self.config.validate()?;
        if self.config.bearer_tokens && matches!(self.backend, Backend::Store(_)) {
            return Err(ConfigError::invalid(
                "bearer_tokens",
                "bearer tokens are sealed sessions: they need the cookie store \
                 (SessionLayer::cookie_store_builder)",
            ));
        }
        if !self.config.cookie.secure {
            // Secure is the default and turning it off is an explicit choice (local plain-HTTP
            // development), so this is said once per process, not warned per layer.
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                tracing::info!(
                    cookie = self.config.cookie.effective_name(),
                    "session cookies are not Secure: browsers send them over plain HTTP; use \
                     this only for local development"
                );
            });
        }
        let store_name = self.backend.name();
        Ok(SessionLayer {
            shared: Arc::new(Shared {
                backend: self.backend,
                set_cookie: SetCookieTemplate::new(&self.config.cookie),
                metrics: Metrics::new(store_name),
                config: self.config,
                keys: self.keys,
                ids: self.ids,
                merge_rules: self.merge_rules,
            }),
        })
    }
}

/// The service made by [`SessionLayer`].
#[derive(Debug, Clone)]
pub struct SessionService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> SessionService<S> {
    inner_service_accessors!();
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for SessionService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: From<String> + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = future::ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let session = Session::from_headers(Arc::clone(&self.shared), request.headers());
        // Where herd-db-router's `ReadYourWritesLayer::session` finds the client's token.
        request.extensions_mut().insert(session.token_slot());
        request.extensions_mut().insert(session.clone());
        // Nothing is awaited before the inner call (the session loads lazily, in the
        // handler), so the service that was driven to readiness is called right here: no
        // clone of it has to move into the response future.
        future::ResponseFuture::new(self.inner.call(request), session)
    }
}
