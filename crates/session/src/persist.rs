//! Writing a session back: create, check-and-set with field-level merge, touch, cookie.
//!
//! The merge: this request's changes are re-applied on top of whatever another request saved
//! meanwhile, so changes to different fields both survive. A field changed on both sides (its
//! stored value differs from the one this request loaded) is settled by the field's
//! [`MergeRule`](crate::MergeRule), else by [`ConflictRule`](crate::ConflictRule), and counted
//! in `herd_session_conflicts_total{kind="same_field"}`. A save that finds the session gone
//! (destroyed, cycled, expired) drops its changes and leaves the browser's cookie alone: the
//! request that ended the session has already sent the cookie the browser should keep.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Response, StatusCode, header};
use serde_json::value::RawValue;
use tracing::Instrument as _;

use crate::config::{OnStoreError, TtlExtension};
use crate::cookies::CookieAction;
use crate::error::{SessionError, StoreError};
use crate::id::{SessionId, StoreKey};
use crate::merge::Keep;
use crate::record::{FieldChanges, SessionRecord};
use crate::session::{Backend, Presented, Session, State, apply_changes};
use crate::store::{SaveOutcome, SessionStore, Stored};

/// A DEBUG span for one store call, or none at all when DEBUG is off: even a disabled span
/// records its fields for tracing's `log` fallback, on every store call.
macro_rules! store_span {
    ($name:literal, $store:expr) => {
        if tracing::level_enabled!(tracing::Level::DEBUG) {
            tracing::debug_span!($name, store = $store.name())
        } else {
            tracing::Span::none()
        }
    };
}

/// New ids tried when `create` finds its key taken (a 256-bit collision: never in practice).
const CREATE_ATTEMPTS: u32 = 3;

/// What a save has to do, decided under the state lock.
pub(crate) enum Plan {
    Nothing,
    /// Store a new session (first save, or `cycle_id`), deleting `old` afterwards.
    Create {
        record: SessionRecord,
        old: Option<SessionId>,
    },
    /// Check-and-set the stored session with this request's field changes.
    Update {
        id: SessionId,
        key: StoreKey,
    },
    /// Extend the expiry of an unchanged session.
    Touch {
        id: SessionId,
        key: StoreKey,
        ttl: Duration,
    },
}

/// The outcome of one attempt at a field-level save, with what the next attempt needs.
enum Attempt {
    Done(Result<(), SessionError>),
    /// Another request saved first: merge with this and try again.
    Conflict(Stored),
}

impl Session {
    /// The part of [`finish`](Self::finish) that needs no store: returns `true` when the
    /// response is complete without a save (the handler never used the session, or its load
    /// failed), so the layer only builds the saving future when there is something to save.
    pub(crate) fn finish_without_store<B: From<String>>(&self, response: &mut Response<B>) -> bool {
        let shared = self.shared();
        if !self.is_loaded() {
            // The handler never looked at the session: nothing to save or touch. A cookie that
            // failed its signature check is dropped so the browser stops sending it.
            if matches!(self.presented_ref(), Presented::Rejected) {
                self.send_cookie(&CookieAction::Remove, response.headers_mut());
            }
            return true;
        }
        if let Some(error) = self.failure() {
            if shared.config.on_store_error == OnStoreError::ServiceUnavailable {
                *response = error_response(&SessionError::Store(error));
            }
            return true;
        }
        false
    }

    /// Saves and sets the cookie on `response` as far as that needs no waiting: everything
    /// when the store is the [`MemoryStore`](crate::MemoryStore) (saved in place) or there is
    /// nothing to store. Otherwise returns the store work left for
    /// [`finish_plan`](Self::finish_plan), so the layer boxes a future only for that.
    pub(crate) fn finish_now<B: From<String>>(
        &self,
        response: &mut Response<B>,
    ) -> Result<(), Plan> {
        if self.finish_without_store(response) {
            return Ok(());
        }
        let result = self.persist_now()?;
        self.finish_with(result, response);
        Ok(())
    }

    /// The rest of [`finish_now`](Self::finish_now): carries out `plan`, then sets the cookie
    /// or turns the response into an error response.
    pub(crate) async fn finish_plan<B: From<String>>(
        &self,
        plan: Plan,
        response: &mut Response<B>,
    ) {
        let result = self.persist_plan(plan).await;
        self.finish_with(result, response);
    }

    fn finish_with<B: From<String>>(
        &self,
        result: Result<(), SessionError>,
        response: &mut Response<B>,
    ) {
        let shared = self.shared();
        let fail_closed = shared.config.on_store_error == OnStoreError::ServiceUnavailable;
        match result {
            Ok(()) => {
                let action = std::mem::take(&mut self.state().cookie);
                self.send_cookie(&action, response.headers_mut());
            }
            Err(error @ (SessionError::Store(_) | SessionError::Conflict { .. }))
                if !fail_closed =>
            {
                tracing::warn!(%error, "session save failed; response sent without it (fail open)");
            }
            Err(error) => {
                tracing::error!(%error, "session save failed");
                *response = error_response(&error);
            }
        }
    }

    /// Saves whatever the request changed (or touches an unchanged session that needs it).
    pub(crate) async fn persist(&self) -> Result<(), SessionError> {
        match self.persist_now() {
            Ok(done) => done,
            Err(plan) => self.persist_plan(plan).await,
        }
    }

    /// [`persist`](Self::persist) as far as it needs no waiting; `Err` carries the store work
    /// left.
    fn persist_now(&self) -> Result<Result<(), SessionError>, Plan> {
        #[cfg(feature = "cookie-store")]
        if let Backend::Cookie(cookie_store) = &self.shared().backend {
            return Ok(crate::cookie_store::persist(self, cookie_store));
        }
        // One lock for planning and a save the store answers in place.
        let mut state = self.state();
        match self.plan(&mut state) {
            Plan::Nothing => Ok(Ok(())),
            #[cfg(feature = "memory")]
            Plan::Update { id, key } => match self.shared().backend.in_place() {
                Some(memory) => Ok(self.update_in_place(memory, &id, &key, &mut state)),
                None => Err(Plan::Update { id, key }),
            },
            plan => Err(plan),
        }
    }

    async fn persist_plan(&self, plan: Plan) -> Result<(), SessionError> {
        let store = match &self.shared().backend {
            Backend::Store(store) => Arc::clone(store),
            #[cfg(feature = "cookie-store")]
            Backend::Cookie(_) => return Ok(()),
        };
        match plan {
            Plan::Nothing => Ok(()),
            Plan::Create { record, old } => self.create(&*store, record, old).await,
            Plan::Update { id, key } => self.update(&*store, id, key).await,
            Plan::Touch { id, key, ttl } => self.touch(&*store, id, key, ttl).await,
        }
    }

    fn plan(&self, state: &mut State) -> Plan {
        let config = &self.shared().config;
        let Some(base) = &state.base else {
            // Not stored yet: store it only once it has content (express' saveUninitialized
            // = false), so anonymous traffic costs the store nothing.
            let record = apply_changes(None, &state.changes, config.absolute_timeout);
            if record.is_empty() {
                let rejected = matches!(self.presented_ref(), Presented::Rejected);
                if (rejected || state.stale_cookie) && state.cookie == CookieAction::Keep {
                    // Forged, unknown or expired cookie: the browser can drop it.
                    state.cookie = CookieAction::Remove;
                }
                return Plan::Nothing;
            }
            return Plan::Create { record, old: None };
        };
        let Some(id) = state.id.clone() else {
            return Plan::Nothing;
        };
        let key = state.key.unwrap_or_else(|| id.store_key());
        if state.cycle {
            let mut record =
                apply_changes(Some(&base.record), &state.changes, config.absolute_timeout);
            // The absolute timeout restarts with the new id (typically at log-in).
            let fresh = SessionRecord::new(config.absolute_timeout);
            record.restart_clock_from(&fresh);
            return Plan::Create {
                record,
                old: Some(id),
            };
        }
        if !state.changes.is_empty() {
            return Plan::Update { id, key };
        }
        let Some((ttl, extended)) = self.next_expiry(base, state.loaded_at_ms) else {
            return Plan::Nothing;
        };
        if extended && config.ttl_extension == TtlExtension::OnEveryRequest {
            return Plan::Touch { id, key, ttl };
        }
        let base_ttl = base.ttl;
        if matches!(self.presented_ref(), Presented::Id { resign: true, .. })
            && state.cookie == CookieAction::Keep
        {
            // Signed with a retired key: re-sign with the newest one.
            state.cookie = self.signed_cookie(&id, base_ttl);
        }
        Plan::Nothing
    }

    /// The expiry a save or touch of `base` gives the session, and whether that extends it
    /// (then the cookie's Max-Age has to follow). `None` once the absolute deadline has passed.
    ///
    /// With [`TtlExtension::OnEveryRequest`] the expiry moves only when that gains at least
    /// half the idle timeout, for saves as for touches: a busy session then costs at most one
    /// expiry update and one `Set-Cookie` per half idle timeout, and the store's expiry and the
    /// cookie's stay in step. With [`TtlExtension::OnStateChanges`] every save extends it.
    ///
    /// `now_ms` is when the session was loaded (the clock is read when `None`).
    fn next_expiry(&self, base: &Stored, now_ms: Option<u64>) -> Option<(Duration, bool)> {
        let config = &self.shared().config;
        let full = base.record.ttl_at(config.idle_timeout, now_ms)?;
        let due = full.saturating_sub(base.ttl) >= config.idle_timeout / 2;
        if config.ttl_extension == TtlExtension::OnEveryRequest && !due {
            Some((base.ttl.min(full), false))
        } else {
            Some((full, true))
        }
    }

    async fn create(
        &self,
        store: &dyn SessionStore,
        record: SessionRecord,
        old: Option<SessionId>,
    ) -> Result<(), SessionError> {
        let shared = self.shared();
        let config = &shared.config;
        let size = record.data_len();
        if size > config.max_size {
            self.shared().metrics.save("too_large");
            return Err(SessionError::TooLarge {
                size,
                limit: config.max_size,
            });
        }
        // Validated config guarantees absolute >= idle, so a new record has time left.
        let ttl = record
            .ttl(config.idle_timeout)
            .unwrap_or(config.idle_timeout);
        let record = Arc::new(record);
        let span = store_span!("herd.session.create", store);
        let mut created = None;
        for _ in 0..CREATE_ATTEMPTS {
            let id = shared.ids.generate()?;
            let key = id.store_key();
            let done = in_span(store.create(&key, Arc::clone(&record), ttl), &span)
                .await
                .map_err(|error| store_failure(self, error))?;
            if done {
                created = Some((id, key));
                break;
            }
        }
        let Some((id, key)) = created else {
            return Err(StoreError::new(
                store.name(),
                crate::StoreOperation::Create,
                "every new session id was already taken",
            )
            .into());
        };
        if let Some(old) = old {
            // Fixation defence: the old id must stop working. If that fails, report it rather
            // than hand out the new id with the old one still live.
            in_span(store.delete(&old.store_key()), &span)
                .await
                .map_err(|error| store_failure(self, error))?;
        }
        self.shared().metrics.save("created");
        let mut state = self.state();
        state.cookie = self.signed_cookie(&id, ttl);
        state.id = Some(id);
        state.key = Some(key);
        state.base = Some(Stored {
            record,
            version: 1,
            ttl,
            lease: None,
        });
        state.cycle = false;
        state.changes.clear();
        Ok(())
    }

    /// The field-level save to the [`MemoryStore`](crate::MemoryStore): every attempt runs
    /// under the state lock on the state's own base and changes, so nothing is copied or taken
    /// out, and the store changes its record in place.
    #[cfg(feature = "memory")]
    fn update_in_place(
        &self,
        store: &crate::MemoryStore,
        id: &SessionId,
        key: &StoreKey,
        state: &mut State,
    ) -> Result<(), SessionError> {
        let config = &self.shared().config;
        let span = store_span!("herd.session.save", store);
        // The record this request loaded, kept once a conflict needs it for the clash rule.
        let mut loaded: Option<Arc<SessionRecord>> = None;
        // Built at the first clash: a hasher costs on every save, clashes are rare.
        let mut same_field_counted = None;
        for attempt in 1..=config.max_save_attempts {
            let State {
                base,
                changes,
                loaded_at_ms,
                ..
            } = &mut *state;
            let Some(base) = base.as_mut() else {
                return Ok(());
            };
            let ttl = match self.check_save(base, changes, *loaded_at_ms) {
                Ok(ttl) => ttl,
                Err(done) => {
                    if done.is_ok() {
                        forget_state(state);
                    }
                    return done;
                }
            };
            let (ttl, extended) = ttl;
            let outcome = Ok(if span.is_disabled() {
                store.save_changes_entry(key, base, changes, ttl)
            } else {
                span.in_scope(|| store.save_changes_entry(key, base, changes, ttl))
            });
            let latest = match self.settle(outcome, id, ttl, extended, state) {
                Attempt::Done(done) => return done,
                Attempt::Conflict(latest) => latest,
            };
            let State { base, changes, .. } = &mut *state;
            let Some(base) = base.as_mut() else {
                return Ok(());
            };
            let loaded = loaded.get_or_insert_with(|| Arc::clone(&base.record));
            self.merge(attempt, changes, loaded, &latest, &mut same_field_counted);
            *base = latest;
        }
        self.shared().metrics.save("gave_up");
        Err(SessionError::Conflict {
            attempts: config.max_save_attempts,
        })
    }

    /// The field-level save for a store that has to be waited for. The changes are taken out
    /// of the state while the store works (changes made meanwhile stay apart and are not
    /// marked saved), and put back, merged, when the save does not go through.
    async fn update(
        &self,
        store: &dyn SessionStore,
        id: SessionId,
        key: StoreKey,
    ) -> Result<(), SessionError> {
        let config = &self.shared().config;
        let (mut changes, mut current, loaded_at_ms) = {
            let mut state = self.state();
            let Some(base) = state.base.clone() else {
                return Ok(());
            };
            (std::mem::take(&mut state.changes), base, state.loaded_at_ms)
        };
        let restore = |session: &Session, changes: FieldChanges| {
            let mut state = session.state();
            // Changes made while we were saving win over the ones we put back.
            let newer = std::mem::replace(&mut state.changes, changes);
            state.changes.cleared |= newer.cleared;
            if newer.cleared {
                state.changes.fields.clear();
            }
            state.changes.fields.extend(newer.fields);
        };
        let span = store_span!("herd.session.save", store);
        let loaded = Arc::clone(&current.record);
        // Built at the first clash: a hasher costs on every save, clashes are rare.
        let mut same_field_counted = None;
        for attempt in 1..=config.max_save_attempts {
            let (ttl, extended) = match self.check_save(&current, &changes, loaded_at_ms) {
                Ok(ttl) => ttl,
                Err(done) => {
                    if done.is_ok() {
                        self.forget();
                    } else {
                        restore(self, changes);
                    }
                    return done;
                }
            };
            let save = store.save_changes(&key, &mut current, &mut changes, ttl);
            let outcome = in_span(save, &span).await;
            let saved = matches!(outcome, Ok(SaveOutcome::Saved { .. }));
            let latest = {
                let mut state = self.state();
                if saved {
                    state.base = Some(current.clone());
                }
                match self.settle(outcome, &id, ttl, extended, &mut state) {
                    Attempt::Done(done) => {
                        drop(state);
                        if done.is_err() {
                            restore(self, changes);
                        }
                        return done;
                    }
                    Attempt::Conflict(latest) => latest,
                }
            };
            self.merge(
                attempt,
                &mut changes,
                &loaded,
                &latest,
                &mut same_field_counted,
            );
            current = latest;
        }
        self.shared().metrics.save("gave_up");
        restore(self, changes);
        Err(SessionError::Conflict {
            attempts: config.max_save_attempts,
        })
    }

    /// Checks a save of `changes` onto `base` before it goes to the store: the size limit
    /// and the absolute deadline. `Ok` with the expiry to save with (and whether it extends
    /// the session); `Err(Ok(()))` when the session is over (the caller forgets it),
    /// `Err(Err(..))` over the size limit.
    fn check_save(
        &self,
        base: &Stored,
        changes: &FieldChanges,
        now_ms: Option<u64>,
    ) -> Result<(Duration, bool), Result<(), SessionError>> {
        let config = &self.shared().config;
        let size = changes.data_len_after(&base.record);
        if size > config.max_size {
            self.shared().metrics.save("too_large");
            return Err(Err(SessionError::TooLarge {
                size,
                limit: config.max_size,
            }));
        }
        match self.next_expiry(base, now_ms) {
            Some(expiry) => Ok(expiry),
            None => {
                // The absolute deadline passed while the request ran: the session is over.
                self.shared().metrics.save("gone");
                Err(Ok(()))
            }
        }
    }

    /// What one save attempt's `outcome` means for the request (under the state lock).
    fn settle(
        &self,
        outcome: Result<SaveOutcome, StoreError>,
        id: &SessionId,
        ttl: Duration,
        extended: bool,
        state: &mut State,
    ) -> Attempt {
        match outcome {
            Ok(SaveOutcome::Saved { .. }) => {
                self.shared().metrics.save("saved");
                let resign = !matches!(
                    self.presented_ref(),
                    Presented::Id { id: presented, resign: false, .. } if presented == id
                );
                // The cookie follows the expiry when it moved; otherwise the browser's cookie
                // already names this session and expires with it.
                if extended || (resign && state.cookie == CookieAction::Keep) {
                    state.cookie = self.signed_cookie(id, ttl);
                }
                Attempt::Done(Ok(()))
            }
            Ok(SaveOutcome::Conflict(latest)) => {
                self.shared().metrics.conflict("merged");
                Attempt::Conflict(latest)
            }
            Ok(SaveOutcome::Gone) => {
                self.shared().metrics.save("gone");
                tracing::debug!("session was ended by another request; changes dropped");
                forget_state(state);
                Attempt::Done(Ok(()))
            }
            Err(error) => Attempt::Done(Err(store_failure(self, error))),
        }
    }

    /// Applies the merge after a conflict: a field this request changed whose stored value
    /// moved away from the one it loaded was changed on both sides; the field's
    /// [`MergeRule`](crate::MergeRule), else the [`ConflictRule`](crate::ConflictRule), says which
    /// side keeps it.
    fn merge(
        &self,
        attempt: u32,
        changes: &mut FieldChanges,
        loaded: &SessionRecord,
        latest: &Stored,
        same_field_counted: &mut Option<HashSet<String>>,
    ) {
        let config = &self.shared().config;
        let clashes: Vec<String> = changes
            .fields
            .keys()
            .filter(|name| {
                latest.record.field(name).map(|v| v.get()) != loaded.field(name).map(|v| v.get())
            })
            .cloned()
            .collect();
        for name in clashes {
            let ours = changes.fields.get(&name).and_then(|v| v.as_deref());
            let stored = latest.record.field(&name);
            let keep = self.shared().merge_rules.keep(
                &name,
                ours.map(RawValue::get),
                stored.map(RawValue::get),
                config.conflict_rule,
            );
            if keep == Keep::Stored {
                changes.fields.remove(&name);
            }
            if same_field_counted
                .get_or_insert_with(HashSet::new)
                .insert(name)
            {
                self.shared().metrics.conflict("same_field");
            }
        }
        tracing::debug!(
            attempt,
            version = latest.version,
            "session changed concurrently; merging"
        );
    }

    async fn touch(
        &self,
        store: &dyn SessionStore,
        id: SessionId,
        key: StoreKey,
        ttl: Duration,
    ) -> Result<(), SessionError> {
        let span = store_span!("herd.session.touch", store);
        let touched = in_span(store.touch(&key, ttl), &span)
            .await
            .map_err(|error| store_failure(self, error))?;
        if !touched {
            self.shared().metrics.save("gone");
            self.forget();
            return Ok(());
        }
        self.shared().metrics.save("touched");
        let mut state = self.state();
        if let Some(base) = &mut state.base {
            base.ttl = ttl;
        }
        state.cookie = self.signed_cookie(&id, ttl);
        Ok(())
    }

    /// The session ended elsewhere: drop it (and its changes) without touching the cookie.
    fn forget(&self) {
        forget_state(&mut self.state());
    }

    /// The cookie naming `id`, signed with the newest key, expiring after `ttl`. Signed
    /// afresh: the cookie is only sent when the id is new or the expiry moves (at most once
    /// per half idle timeout), so keeping the request's cookie around for it would cost more.
    fn signed_cookie(&self, id: &SessionId, ttl: Duration) -> CookieAction {
        let shared = self.shared();
        CookieAction::Set {
            value: shared.keys.sign(shared.config.cookie.effective_name(), id),
            ttl,
        }
    }
}

/// The session ended elsewhere: drop it (and its changes) without touching the cookie.
fn forget_state(state: &mut State) {
    *state = State {
        cookie: std::mem::take(&mut state.cookie),
        ..State::default()
    };
}

/// Runs a store call inside `span`, or bare when no subscriber wants the span: entering a
/// disabled span on every poll still costs (tracing's `log` fallback checks run each time),
/// and the save runs on every request.
async fn in_span<F: std::future::Future>(future: F, span: &tracing::Span) -> F::Output {
    if span.is_disabled() {
        future.await
    } else {
        future.instrument(span.clone()).await
    }
}

fn store_failure(session: &Session, error: StoreError) -> SessionError {
    session
        .shared()
        .metrics
        .store_error(error.operation().as_str());
    tracing::warn!(%error, "session store operation failed");
    SessionError::Store(error)
}

/// The plain-text response for a session failure met by the layer.
pub(crate) fn error_response<B: From<String>>(error: &SessionError) -> Response<B> {
    let mut response = Response::new(B::from(error.public_message()));
    *response.status_mut() = error.status();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if error.status() == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}
