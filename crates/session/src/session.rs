//! The [`Session`] handle a request works with.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use http::HeaderMap;
use parking_lot::Mutex;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use tokio::sync::OnceCell;

use crate::config::{OnStoreError, SessionConfig};
use crate::cookies::{self, Candidate, CookieAction, SetCookieTemplate};
use crate::error::{SessionError, StoreError};
use crate::id::{SessionId, SessionIdGenerator, StoreKey};
use crate::keys::SigningKeys;
use crate::merge::MergeRules;
use crate::metrics::Metrics;
use crate::record::{FieldChanges, SessionRecord, unix_ms};
use crate::store::{SessionStore, Stored};

/// What the layer shares with every request.
pub(crate) struct Shared {
    pub(crate) backend: Backend,
    pub(crate) config: SessionConfig,
    pub(crate) keys: SigningKeys,
    pub(crate) ids: SessionIdGenerator,
    pub(crate) set_cookie: SetCookieTemplate,
    pub(crate) metrics: Metrics,
    /// Per-field rules for fields changed on both sides of a concurrent save.
    pub(crate) merge_rules: MergeRules,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("backend", &self.backend)
            .field("config", &self.config)
            .field("keys", &self.keys)
            .field("ids", &self.ids)
            .field("merge_rules", &self.merge_rules)
            .finish()
    }
}

/// Where sessions are kept.
#[derive(Debug)]
pub(crate) enum Backend {
    /// Server side, under a hashed id carried in a signed cookie.
    Store(Arc<dyn SessionStore>),
    /// Client side, the whole session encrypted in the cookie.
    #[cfg(feature = "cookie-store")]
    Cookie(crate::cookie_store::CookieStore),
}

impl Backend {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Backend::Store(store) => store.name(),
            #[cfg(feature = "cookie-store")]
            Backend::Cookie(_) => "cookie",
        }
    }

    /// The bundled [`MemoryStore`](crate::MemoryStore), which the layer reads and saves in
    /// place on the request path: no boxed future, and a save changes the stored record
    /// without copying it. Every other store (a wrapper around a `MemoryStore` too) is awaited
    /// through [`SessionStore`].
    #[cfg(feature = "memory")]
    pub(crate) fn in_place(&self) -> Option<&crate::MemoryStore> {
        match self {
            Backend::Store(store) => (&**store as &dyn std::any::Any).downcast_ref(),
            #[cfg(feature = "cookie-store")]
            Backend::Cookie(_) => None,
        }
    }

    /// The session under `key`, read in place when the store is the `MemoryStore`; `None`
    /// when the store has to be awaited.
    fn load_in_place(&self, key: &StoreKey) -> Option<Option<Stored>> {
        #[cfg(feature = "memory")]
        if let Some(memory) = self.in_place() {
            return Some(memory.load_entry(key));
        }
        let _ = key; // used only with the `memory` feature
        None
    }
}

/// What a load found: the session (with its id and key when it came from a store), nothing,
/// or a store failure.
type Loaded = Result<Option<(Option<(SessionId, StoreKey)>, Stored)>, StoreError>;

/// What the request's cookie said.
#[derive(Debug)]
pub(crate) enum Presented {
    /// No session cookie.
    Nothing,
    /// A cookie that is malformed or carries a bad signature (or cannot be decrypted).
    Rejected,
    /// Several cookies with the session's name: none is used, and none is cleared (a
    /// removal could only reach this host's own cookie).
    Ambiguous,
    /// A correctly signed id; `resign` when an older key signed it.
    Id { id: SessionId, resign: bool },
    /// The cookie store's sealed session, opened lazily.
    #[cfg(feature = "cookie-store")]
    Sealed(String),
}

/// The session of the current request.
///
/// The layer puts one into every request's extensions; with the `axum` feature it is also an
/// extractor. It is a cheap handle (clone it freely) and it is lazy: the store is read the
/// first time a method needs the data, and written once after the handler returns, only if
/// something changed (or a rolling expiry needs a touch).
///
/// Values are stored as JSON, one field at a time:
///
/// ```
/// # async fn demo(session: herd_session::Session) -> Result<(), herd_session::SessionError> {
/// let visits: u64 = session.get("visits").await?.unwrap_or(0);
/// session.insert("visits", visits + 1).await?;
/// session.remove("flash").await?;
/// # Ok(()) }
/// ```
///
/// Log in with [`cycle_id`](Self::cycle_id) (a new id against fixation) and log out with
/// [`destroy`](Self::destroy). Every method that may read the store returns
/// [`SessionError`], which with the `axum` feature is a response: `?` in a handler answers
/// `503` when the store is down.
#[derive(Clone)]
pub struct Session {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    presented: Presented,
    /// Set once the session is loaded the asynchronous way (a store that has to be waited
    /// for, or the cookie store).
    loaded: OnceCell<()>,
    /// Set once the session is loaded at once (a store that answers in place, or nothing to
    /// load), or destroyed: no semaphore to take and close for the common case.
    loaded_now: AtomicBool,
    /// Set when a store failure is recorded in the state, so that the checks for one on every
    /// session call need no lock while there is none.
    failed: AtomicBool,
    /// The session travels as a bearer token this request (it came as one, or the handler
    /// asked for one), not as a cookie.
    bearer: AtomicBool,
    state: Mutex<State>,
}

#[derive(Default)]
pub(crate) struct State {
    /// The id the session is stored under; `None` until it is stored.
    pub(crate) id: Option<SessionId>,
    /// The store key of `id`, hashed once per request.
    pub(crate) key: Option<StoreKey>,
    /// The stored session as last read or written; `None` for a session not stored yet.
    pub(crate) base: Option<Stored>,
    /// Changes not saved yet (and whether `clear()` was called).
    pub(crate) changes: FieldChanges,
    /// `cycle_id()` was called: the next save moves the session to a new id.
    pub(crate) cycle: bool,
    /// A store failure this request met (load, destroy); with
    /// [`OnStoreError::ServiceUnavailable`] the response becomes a 503.
    pub(crate) failure: Option<StoreError>,
    /// What the response must do with the cookie.
    pub(crate) cookie: CookieAction,
    /// The cookie named a session the store does not have (unknown or expired): the browser
    /// can drop it unless a new session replaces it.
    pub(crate) stale_cookie: bool,
    /// When the session was loaded (milliseconds since the Unix epoch): the time its
    /// absolute deadline is checked against for the rest of the request.
    pub(crate) loaded_at_ms: Option<u64>,
    /// The handler asked for the session as a bearer token: seal it even if unchanged.
    pub(crate) reseal: bool,
}

impl State {
    fn is_modified(&self) -> bool {
        self.cycle || !self.changes.is_empty()
    }

    fn field(&self, name: &str) -> Option<&RawValue> {
        match self.changes.fields.get(name) {
            Some(change) => change.as_deref(),
            None if self.changes.cleared => None,
            None => self.base.as_ref().and_then(|base| base.record.field(name)),
        }
    }
}

impl Session {
    /// The session for a request with these headers.
    pub(crate) fn from_headers(shared: Arc<Shared>, headers: &HeaderMap) -> Self {
        let (presented, bearer) = match Self::bearer_presented(&shared, headers) {
            Some(presented) => (presented, true),
            None => (Self::presented(&shared, headers), false),
        };
        Self {
            inner: Arc::new(Inner {
                shared,
                presented,
                loaded: OnceCell::new(),
                loaded_now: AtomicBool::new(false),
                failed: AtomicBool::new(false),
                bearer: AtomicBool::new(bearer),
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// The session a bearer token presents, when bearer tokens are on and the request has
    /// one (`None`: look at the cookie). A bearer token wins over a cookie: it is an explicit
    /// credential, which a browser never sends on its own. Several `Authorization: Bearer`
    /// values give no session (as with several session cookies).
    #[cfg(feature = "cookie-store")]
    fn bearer_presented(shared: &Shared, headers: &HeaderMap) -> Option<Presented> {
        if !shared.config.bearer_tokens || !matches!(shared.backend, Backend::Cookie(_)) {
            return None;
        }
        let mut tokens = headers
            .get_all(http::header::AUTHORIZATION)
            .iter()
            .filter_map(|value| {
                let value = value.to_str().ok()?.trim();
                let (scheme, token) = value.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            });
        match (tokens.next(), tokens.next()) {
            (None, _) => None,
            (Some(token), None) => Some(Presented::Sealed(token.to_owned())),
            (Some(_), Some(_)) => {
                shared.metrics.cookie_rejected("ambiguous");
                Some(Presented::Ambiguous)
            }
        }
    }

    #[cfg(not(feature = "cookie-store"))]
    fn bearer_presented(_shared: &Shared, _headers: &HeaderMap) -> Option<Presented> {
        None
    }

    /// Whether the session travels as a bearer token in this request.
    pub(crate) fn is_bearer(&self) -> bool {
        self.inner.bearer.load(Ordering::Acquire)
    }

    /// The name the session is sealed under: the cookie's, or the bearer tokens' label.
    #[cfg_attr(not(feature = "cookie-store"), allow(dead_code))]
    pub(crate) fn sealing_name(&self) -> &str {
        #[cfg(feature = "cookie-store")]
        if self.is_bearer() {
            return crate::cookie_store::BEARER_LABEL;
        }
        self.shared().config.cookie.effective_name()
    }

    /// Sends `action` the way the session travels: `Set-Cookie`, or the bearer-token header.
    pub(crate) fn send_cookie(&self, action: &CookieAction, headers: &mut HeaderMap) {
        if self.is_bearer() {
            action.apply_bearer(headers);
        } else {
            action.apply(&self.shared().set_cookie, headers);
        }
    }

    /// What the request's cookie says. At most one value is ever looked at: several values
    /// of the session cookie give no session at all (see [`CookieConfig`](crate::CookieConfig)
    /// for why), so a request costs at most one verification however many it sends.
    fn presented(shared: &Shared, headers: &HeaderMap) -> Presented {
        let name = shared.config.cookie.effective_name();
        let value = match cookies::session_cookie(headers, name) {
            Candidate::Absent => return Presented::Nothing,
            Candidate::Ambiguous => {
                shared.metrics.cookie_rejected("ambiguous");
                return Presented::Ambiguous;
            }
            Candidate::One(value) => value,
        };
        match &shared.backend {
            Backend::Store(_) => match shared.keys.verify(name, value) {
                Some(verified) => Presented::Id {
                    id: verified.id,
                    resign: verified.signed_with_old_key,
                },
                None => {
                    shared.metrics.cookie_rejected("forged");
                    Presented::Rejected
                }
            },
            #[cfg(feature = "cookie-store")]
            Backend::Cookie(_) => match std::str::from_utf8(value) {
                Ok(value) => Presented::Sealed(value.to_owned()),
                Err(_) => Presented::Nothing,
            },
        }
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    pub(crate) fn presented_ref(&self) -> &Presented {
        &self.inner.presented
    }

    pub(crate) fn state(&self) -> parking_lot::MutexGuard<'_, State> {
        self.inner.state.lock()
    }

    /// Whether a method has needed the stored data yet.
    pub(crate) fn is_loaded(&self) -> bool {
        self.inner.loaded_now.load(Ordering::Acquire) || self.inner.loaded.initialized()
    }

    /// The store failure this request met, if any.
    #[inline]
    pub(crate) fn failure(&self) -> Option<StoreError> {
        if self.inner.failed.load(Ordering::Acquire) {
            self.state().failure.clone()
        } else {
            None
        }
    }

    fn record_failure(&self, state: &mut State, error: StoreError) {
        state.failure = Some(error);
        self.inner.failed.store(true, Ordering::Release);
    }

    /// Reads the session from the store, once per request.
    pub(crate) async fn ensure_loaded(&self) -> Result<(), SessionError> {
        if !self.is_loaded() && !self.load_now() {
            self.inner.loaded.get_or_init(|| self.load()).await;
        }
        match self.failure() {
            Some(error) => Err(SessionError::Store(error)),
            None => Ok(()),
        }
    }

    /// The load answered at once, without the once-cell's semaphore and futures: nothing to
    /// read (no valid cookie), or the [`MemoryStore`](crate::MemoryStore), read in place.
    /// Returns `false` when the load has to go the asynchronous way (a session always loads
    /// the same way: its cookie and store decide).
    fn load_now(&self) -> bool {
        let shared = self.shared();
        let loaded = match (&self.inner.presented, &shared.backend) {
            (Presented::Id { id, .. }, backend @ Backend::Store(_)) => {
                let key = id.store_key();
                match backend.load_in_place(&key) {
                    Some(stored) => Some((id, key, stored)),
                    None => return false,
                }
            }
            #[cfg(feature = "cookie-store")]
            (Presented::Sealed(_), Backend::Cookie(_)) => return false,
            _ => None,
        };
        // Under the state lock, so that a task which sees the flag set and then reads the
        // state finds it filled in.
        let mut state = self.state();
        if self.is_loaded() {
            // Loaded (or destroyed) meanwhile: use that.
            return true;
        }
        if let Some((id, key, stored)) = loaded {
            self.apply_load(
                &mut state,
                Ok(stored.map(|stored| (Some((id.clone(), key)), stored))),
            );
        }
        self.inner.loaded_now.store(true, Ordering::Release);
        true
    }

    async fn load(&self) {
        let shared = self.shared();
        let loaded = match (&self.inner.presented, &shared.backend) {
            (Presented::Id { id, .. }, Backend::Store(store)) => {
                let key = id.store_key();
                // Through `&dyn`: `Arc`'s own impl would box a second future around the store's.
                let store: &dyn SessionStore = store.as_ref();
                let loaded = store.load(&key).await;
                loaded.map(|stored| stored.map(|stored| (Some((id.clone(), key)), stored)))
            }
            #[cfg(feature = "cookie-store")]
            (Presented::Sealed(value), Backend::Cookie(cookie_store)) => Ok(cookie_store
                .open(self.sealing_name(), value)
                .map(|s| (None, s))),
            _ => return,
        };
        let mut state = self.state();
        self.apply_load(&mut state, loaded);
    }

    /// Records what the load found.
    fn apply_load(&self, state: &mut State, loaded: Loaded) {
        let shared = self.shared();
        match loaded {
            Ok(Some((id, stored))) => {
                // This clock reading serves the rest of the request too: the save's expiry is
                // capped by the absolute deadline as seen now, so the store may keep the record
                // up to the request's duration past it, and the next load ends it anyway.
                let now_ms = unix_ms(SystemTime::now());
                state.loaded_at_ms = Some(now_ms);
                if stored
                    .record
                    .ttl_at(shared.config.idle_timeout, Some(now_ms))
                    .is_some()
                {
                    shared.metrics.load("hit");
                    if let Some((id, key)) = id {
                        state.id = Some(id);
                        state.key = Some(key);
                    }
                    state.base = Some(stored);
                } else {
                    // Past its absolute deadline: treat as gone; a new session gets a new id.
                    shared.metrics.load("expired");
                    state.stale_cookie = true;
                }
            }
            Ok(None) => {
                shared.metrics.load("miss");
                shared.metrics.cookie_rejected("unknown");
                state.stale_cookie = true;
            }
            Err(error) => {
                shared.metrics.load("error");
                shared.metrics.store_error(error.operation().as_str());
                tracing::warn!(%error, "session load failed");
                if shared.config.on_store_error == OnStoreError::ServiceUnavailable {
                    self.record_failure(state, error);
                }
            }
        }
    }

    /// The value of `field`, deserialized; `None` if the session has no such field.
    pub async fn get<T: DeserializeOwned>(&self, field: &str) -> Result<Option<T>, SessionError> {
        self.ensure_loaded().await?;
        let state = self.state();
        state
            .field(field)
            .map(|raw| serde_json::from_str(raw.get()))
            .transpose()
            .map_err(|source| SessionError::Decode {
                field: field.to_owned(),
                source,
            })
    }

    /// Sets `field` to `value` (stored as JSON). Fails at once with
    /// [`SessionError::TooLarge`] when this one value is over the size limit; the whole
    /// session is checked again at save.
    pub async fn insert<T: Serialize>(&self, field: &str, value: T) -> Result<(), SessionError> {
        let raw = to_raw_value(&value).map_err(|source| SessionError::Encode {
            field: field.to_owned(),
            source,
        })?;
        let limit = self.shared().config.max_size;
        let size = field.len() + raw.get().len();
        if size > limit {
            return Err(SessionError::TooLarge { size, limit });
        }
        self.ensure_loaded().await?;
        let mut state = self.state();
        // Writing the value that is already there changes nothing and costs no save.
        if state.field(field).map(RawValue::get) == Some(raw.get()) {
            return Ok(());
        }
        state.changes.fields.insert(field.to_owned(), Some(raw));
        Ok(())
    }

    /// Removes `field`.
    pub async fn remove(&self, field: &str) -> Result<(), SessionError> {
        self.ensure_loaded().await?;
        let mut state = self.state();
        if state.field(field).is_some() {
            state.changes.fields.insert(field.to_owned(), None);
        }
        Ok(())
    }

    /// Removes `field` and returns its value.
    pub async fn take<T: DeserializeOwned>(&self, field: &str) -> Result<Option<T>, SessionError> {
        let value = self.get(field).await?;
        self.remove(field).await?;
        Ok(value)
    }

    /// Whether the session has `field`.
    pub async fn contains(&self, field: &str) -> Result<bool, SessionError> {
        self.ensure_loaded().await?;
        Ok(self.state().field(field).is_some())
    }

    /// The names of all fields.
    pub async fn fields(&self) -> Result<Vec<String>, SessionError> {
        self.ensure_loaded().await?;
        let state = self.state();
        let mut names: Vec<String> = match (&state.base, state.changes.cleared) {
            (Some(base), false) => base
                .record
                .fields()
                .filter(|(name, _)| !state.changes.fields.contains_key(name))
                .map(|(name, _)| name.to_owned())
                .collect(),
            _ => Vec::new(),
        };
        names.extend(
            state
                .changes
                .fields
                .iter()
                .filter(|(_, change)| change.is_some())
                .map(|(name, _)| name.clone()),
        );
        names.sort_unstable();
        Ok(names)
    }

    /// Whether the session has no fields.
    pub async fn is_empty(&self) -> Result<bool, SessionError> {
        Ok(self.fields().await?.is_empty())
    }

    /// Removes every field; the session itself (its id and cookie) stays.
    pub async fn clear(&self) -> Result<(), SessionError> {
        self.ensure_loaded().await?;
        let mut state = self.state();
        state.changes.fields.clear();
        state.changes.cleared = true;
        Ok(())
    }

    /// Moves the session to a new id when it is saved, removing the record under the old id:
    /// call it whenever privileges change (log-in, sudo) so an id planted or seen before
    /// cannot ride along (session fixation). The absolute timeout restarts from the new id.
    pub async fn cycle_id(&self) -> Result<(), SessionError> {
        self.ensure_loaded().await?;
        self.state().cycle = true;
        Ok(())
    }

    /// Ends the session now: deletes it from the store and tells the browser to drop the
    /// cookie. A request still holding the old session cannot save it back. Writing to the
    /// session afterwards starts a new one with a new id.
    pub async fn destroy(&self) -> Result<(), SessionError> {
        // Nothing stored yet means nothing to read: mark the session loaded (and empty).
        self.inner.loaded_now.store(true, Ordering::Release);
        let id = match &self.inner.presented {
            Presented::Id { id, .. } => Some(id.clone()),
            _ => None,
        };
        let id = self.state().id.clone().or(id);
        if let (Some(id), Backend::Store(store)) = (id, &self.shared().backend)
            && let Err(error) = store.as_ref().delete(&id.store_key()).await
        {
            self.shared()
                .metrics
                .store_error(error.operation().as_str());
            if self.shared().config.on_store_error == OnStoreError::ServiceUnavailable {
                self.record_failure(&mut self.state(), error.clone());
            }
            return Err(error.into());
        }
        let mut state = self.state();
        *state = State {
            cookie: CookieAction::Remove,
            failure: state.failure.take(),
            ..State::default()
        };
        Ok(())
    }

    /// Answers this request's session as a bearer token instead of a cookie: the response
    /// carries it, sealed, in the [`SESSION_TOKEN_HEADER`](crate::SESSION_TOKEN_HEADER) header,
    /// for an API client to send back as `Authorization: Bearer <token>` (typically from a
    /// log-in handler). Needs the cookie store with
    /// [`bearer_tokens`](crate::SessionConfig::bearer_tokens) on; otherwise it does nothing
    /// but log a warning. Requests that come with a bearer token are answered this way
    /// without it.
    ///
    /// ```no_run
    /// # async fn login(session: herd_session::Session) -> Result<(), herd_session::SessionError> {
    /// session.insert("user_id", 42).await?;
    /// session.use_bearer_token().await?; // the response carries `x-session-token: <token>`
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`get`](Self::get): the session is loaded first.
    pub async fn use_bearer_token(&self) -> Result<(), SessionError> {
        let shared = self.shared();
        let sealed = match &shared.backend {
            Backend::Store(_) => false,
            #[cfg(feature = "cookie-store")]
            Backend::Cookie(_) => true,
        };
        if !(sealed && shared.config.bearer_tokens) {
            tracing::warn!(
                "Session::use_bearer_token needs the cookie store with bearer_tokens on; \
                 the session stays in its cookie"
            );
            return Ok(());
        }
        self.ensure_loaded().await?;
        if !self.inner.bearer.swap(true, Ordering::AcqRel) {
            self.state().reseal = true;
        }
        Ok(())
    }

    /// Saves now instead of after the handler, so the handler sees errors such as
    /// [`SessionError::TooLarge`] itself. The layer's own save afterwards then only writes
    /// what changed since.
    pub async fn save(&self) -> Result<(), SessionError> {
        self.ensure_loaded().await?;
        self.persist().await
    }

    /// Whether the session has changes not saved yet.
    pub fn is_modified(&self) -> bool {
        self.state().is_modified()
    }

    /// When the session was created, once it is stored.
    pub async fn created_at(&self) -> Result<Option<std::time::SystemTime>, SessionError> {
        self.ensure_loaded().await?;
        Ok(self
            .state()
            .base
            .as_ref()
            .map(|base| base.record.created_at()))
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state();
        f.debug_struct("Session")
            .field("id", &state.id)
            .field("loaded", &self.is_loaded())
            .field("modified", &state.is_modified())
            .finish_non_exhaustive()
    }
}

/// `value` as JSON text. A short value is written on the stack and copied out once, exactly
/// sized: `serde_json::value::to_raw_value` starts a 128-byte buffer and then shrinks it,
/// which costs an allocation off the allocator's fast path on every `insert`.
fn to_raw_value<T: Serialize>(value: &T) -> Result<Box<RawValue>, serde_json::Error> {
    let mut buffer = [0_u8; 64];
    let left = {
        let mut rest = &mut buffer[..];
        serde_json::to_writer(&mut rest, value)
            .ok()
            .map(|()| rest.len())
    };
    let written = left.and_then(|left| buffer.get(..buffer.len() - left));
    match written.and_then(|text| std::str::from_utf8(text).ok()) {
        Some(text) => serde_json::from_str(text),
        // Longer than the buffer (or an error, which this call reports).
        None => serde_json::value::to_raw_value(value),
    }
}

/// A new record holding `base` (if any) with `changes` applied.
pub(crate) fn apply_changes(
    base: Option<&SessionRecord>,
    changes: &FieldChanges,
    absolute_timeout: Option<std::time::Duration>,
) -> SessionRecord {
    match base {
        Some(base) => changes.applied_to(base),
        None => changes.applied_to(&SessionRecord::new(absolute_timeout)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_values_match_serde_json_short_and_long() {
        let long = "x".repeat(100);
        let texts = [
            to_raw_value(&7_u64).unwrap(),
            to_raw_value(&"caf\u{e9} \"quoted\"\n").unwrap(),
            to_raw_value(&long).unwrap(),
            to_raw_value(&vec![1, 2, 3]).unwrap(),
            to_raw_value(&Option::<u8>::None).unwrap(),
        ];
        let expected = [
            serde_json::value::to_raw_value(&7_u64).unwrap(),
            serde_json::value::to_raw_value(&"caf\u{e9} \"quoted\"\n").unwrap(),
            serde_json::value::to_raw_value(&long).unwrap(),
            serde_json::value::to_raw_value(&vec![1, 2, 3]).unwrap(),
            serde_json::value::to_raw_value(&Option::<u8>::None).unwrap(),
        ];
        for (text, expected) in texts.iter().zip(&expected) {
            assert_eq!(text.get(), expected.get());
        }
        // Errors are serde_json's own (a map key that is not a string).
        let bad: std::collections::BTreeMap<Vec<u8>, u8> = [(vec![1], 1)].into_iter().collect();
        assert!(to_raw_value(&bad).is_err());
    }

    #[cfg(feature = "memory")]
    #[test]
    fn only_the_bundled_memory_store_is_answered_in_place() {
        let memory = crate::MemoryStore::new();
        assert!(
            Backend::Store(Arc::new(memory.clone()))
                .in_place()
                .is_some()
        );
        // A wrapper (here an `Arc` of it) is a store of its own: awaited like any other.
        let wrapped: Arc<dyn SessionStore> = Arc::new(Arc::new(memory));
        assert!(Backend::Store(wrapped).in_place().is_none());
    }

    #[cfg(feature = "memory")]
    mod cookies {
        use std::convert::Infallible;

        use http::header::{COOKIE, SET_COOKIE};
        use http::{HeaderValue, Request, Response};
        use tower::{Layer as _, ServiceExt as _};

        use super::*;
        use crate::keys::{Key, MACS};
        use crate::{CookieConfig, MemoryStore, SessionLayer};

        fn keys() -> SigningKeys {
            SigningKeys::with_rotation(vec![
                Key::from_bytes(&[1; 32]).unwrap(),
                Key::from_bytes(&[2; 32]).unwrap(),
                Key::from_bytes(&[3; 32]).unwrap(),
            ])
            .unwrap()
        }

        fn shared(config: SessionConfig) -> Arc<Shared> {
            Arc::new(Shared {
                backend: Backend::Store(Arc::new(MemoryStore::new())),
                set_cookie: SetCookieTemplate::new(&config.cookie),
                metrics: Metrics::new("memory"),
                config,
                keys: keys(),
                ids: SessionIdGenerator::seeded(9),
                merge_rules: MergeRules::with_defaults(),
            })
        }

        fn headers(cookie: &str) -> HeaderMap {
            let mut headers = HeaderMap::new();
            headers.insert(COOKIE, HeaderValue::from_str(cookie).unwrap());
            headers
        }

        /// What `cookie` presents, and how many HMACs that took.
        fn presented(shared: &Shared, cookie: &str) -> (Presented, usize) {
            MACS.with(|macs| macs.set(0));
            let presented = Session::presented(shared, &headers(cookie));
            (presented, MACS.with(std::cell::Cell::get))
        }

        fn signed(shared: &Shared, seed: u64) -> String {
            let id = SessionIdGenerator::seeded(seed).generate().unwrap();
            shared.keys.sign(shared.config.cookie.effective_name(), &id)
        }

        #[test]
        fn one_signed_cookie_is_the_session() {
            let shared = shared(SessionConfig::default());
            let value = signed(&shared, 1);
            let (got, macs) = presented(&shared, &format!("__Host-sid={value}"));
            assert!(
                matches!(got, Presented::Id { resign: false, .. }),
                "{got:?}"
            );
            assert_eq!(macs, 1);
            // The default name is `__Host-sid`: a plain `sid` is some other cookie.
            let (got, macs) = presented(&shared, &format!("sid={value}"));
            assert!(matches!(got, Presented::Nothing), "{got:?}");
            assert_eq!(macs, 0);
        }

        #[test]
        fn a_planted_second_cookie_never_wins() {
            // A sibling subdomain plants a cookie it got by signing in itself: validly signed.
            let config = SessionConfig {
                cookie: CookieConfig {
                    name: Some("sid".into()),
                    ..CookieConfig::default()
                },
                ..SessionConfig::default()
            };
            let shared = shared(config);
            let victim = signed(&shared, 1);
            let planted = signed(&shared, 2);
            for header in [
                format!("sid={planted}; sid={victim}"),
                format!("sid={victim}; sid={planted}"),
                format!("sid={victim}; other=1; sid=garbage"),
                format!("sid=garbage; sid={victim}"),
            ] {
                let (got, macs) = presented(&shared, &header);
                assert!(matches!(got, Presented::Ambiguous), "{header}: {got:?}");
                assert_eq!(macs, 0, "nothing is verified once it is ambiguous");
            }
        }

        #[test]
        fn thousands_of_session_cookies_cost_no_hmac() {
            let shared = shared(SessionConfig::default());
            // Well formed, signed with a key the layer does not have.
            let id = SessionIdGenerator::seeded(4).generate().unwrap();
            let other = SigningKeys::new(Key::from_bytes(&[9; 32]).unwrap());
            let forged = format!("__Host-sid={}", other.sign("__Host-sid", &id));
            let header = vec![forged.as_str(); 2_000].join("; ");
            let (got, macs) = presented(&shared, &header);
            assert!(matches!(got, Presented::Ambiguous), "{got:?}");
            assert_eq!(macs, 0);
            // One forged value: one HMAC per signing key (three here), never more.
            let (got, macs) = presented(&shared, &forged);
            assert!(matches!(got, Presented::Rejected), "{got:?}");
            assert_eq!(macs, 3);
        }

        async fn call(layer: &SessionLayer, cookie: Option<String>) -> Response<String> {
            let service = layer.layer(tower::service_fn(|req: Request<()>| async move {
                // Never touches the session: only the cookie decides the response's cookie.
                drop(req);
                Ok::<_, Infallible>(Response::new(String::new()))
            }));
            let mut request = Request::get("/").body(()).unwrap();
            if let Some(cookie) = cookie {
                request
                    .headers_mut()
                    .insert(COOKIE, HeaderValue::from_str(&cookie).unwrap());
            }
            service.oneshot(request).await.unwrap()
        }

        async fn login(layer: &SessionLayer) -> String {
            let service = layer.layer(tower::service_fn(|req: Request<()>| async move {
                let session = req.extensions().get::<Session>().cloned().unwrap();
                session.insert("user", 7).await.unwrap();
                Ok::<_, Infallible>(Response::new(String::new()))
            }));
            let response = service
                .oneshot(Request::get("/").body(()).unwrap())
                .await
                .unwrap();
            let header = response.headers()[SET_COOKIE].to_str().unwrap().to_owned();
            header.split(';').next().unwrap().to_owned()
        }

        #[tokio::test]
        async fn the_default_cookie_is_host_prefixed_and_secure() {
            let layer = SessionLayer::builder(MemoryStore::new(), keys())
                .build()
                .unwrap();
            let service = layer.layer(tower::service_fn(|req: Request<()>| async move {
                let session = req.extensions().get::<Session>().cloned().unwrap();
                session.insert("user", 7).await.unwrap();
                Ok::<_, Infallible>(Response::new(String::new()))
            }));
            let response = service
                .oneshot(Request::get("/").body(()).unwrap())
                .await
                .unwrap();
            let set_cookie = response.headers()[SET_COOKIE].to_str().unwrap();
            assert!(set_cookie.starts_with("__Host-sid="), "{set_cookie}");
            assert!(set_cookie.contains("; Secure"), "{set_cookie}");
            assert!(set_cookie.contains("; Path=/"), "{set_cookie}");
            assert!(!set_cookie.contains("Domain"), "{set_cookie}");

            // The explicit opt-out: not Secure, plain `sid`.
            let local = SessionLayer::builder(MemoryStore::new(), keys())
                .secure(false)
                .build()
                .unwrap();
            assert!(login(&local).await.starts_with("sid="));
            // A `__Host-` name that breaks its rules does not build.
            let error = SessionLayer::builder(MemoryStore::new(), keys())
                .cookie_name("__Host-sid")
                .secure(false)
                .build()
                .unwrap_err();
            assert_eq!(error.field(), Some("cookie.name"), "{error}");
            let error = SessionLayer::builder(MemoryStore::new(), keys())
                .domain("example.com")
                .cookie_name("__Host-sid")
                .build()
                .unwrap_err();
            assert!(error.to_string().contains("Domain"), "{error}");
        }

        #[tokio::test]
        async fn duplicates_give_no_session_and_are_not_cleared() {
            let layer = SessionLayer::builder(MemoryStore::new(), keys())
                .cookie_name("sid")
                .build()
                .unwrap();
            let mine = login(&layer).await;
            let theirs = login(&layer).await;
            // Alone, each cookie is a session: the response needs no cookie change.
            let alone = call(&layer, Some(mine.clone())).await;
            assert!(alone.headers().get(SET_COOKIE).is_none());
            // Together: no session, and no removal that would leave only the other one.
            let both = call(&layer, Some(format!("{theirs}; {mine}"))).await;
            assert!(both.headers().get(SET_COOKIE).is_none());
            // A forged cookie on its own is still cleared.
            let forged = call(&layer, Some("sid=forged".into())).await;
            let removal = forged.headers()[SET_COOKIE].to_str().unwrap();
            assert!(removal.contains("Max-Age=0"), "{removal}");
        }

        #[tokio::test]
        async fn duplicates_do_not_reach_the_handler_as_a_session() {
            let layer = SessionLayer::builder(MemoryStore::new(), keys())
                .cookie_name("sid")
                .build()
                .unwrap();
            let mine = login(&layer).await;
            let theirs = login(&layer).await;
            let service = layer.layer(tower::service_fn(|req: Request<()>| async move {
                let session = req.extensions().get::<Session>().cloned().unwrap();
                let user: Option<u32> = session.get("user").await.unwrap();
                Ok::<_, Infallible>(Response::new(format!("{user:?}")))
            }));
            for (cookie, expected) in [
                (mine.clone(), "Some(7)"),
                (format!("{mine}; {theirs}"), "None"),
                (format!("{theirs}; {mine}"), "None"),
            ] {
                let mut request = Request::get("/").body(()).unwrap();
                request
                    .headers_mut()
                    .insert(COOKIE, HeaderValue::from_str(&cookie).unwrap());
                let response = service.clone().oneshot(request).await.unwrap();
                assert_eq!(response.into_body(), expected, "{cookie}");
            }
        }
    }
}
