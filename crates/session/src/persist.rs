//! Writing a session back: create, check-and-set with field-level merge, touch, cookie.
//!
//! The merge rule: this request's changes are re-applied on top of whatever another request
//! saved meanwhile, so changes to different fields both survive. A field changed on both
//! sides (its stored value differs from the one this request loaded) is settled by
//! [`ConflictRule`] and counted in `herd_session_conflicts_total{kind="same_field"}`. A save
//! that finds the session gone (destroyed, cycled, expired) drops its changes and leaves the
//! browser's cookie alone: the request that ended the session has already sent the cookie the
//! browser should keep.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Response, StatusCode, header};
use serde_json::value::RawValue;
use tracing::Instrument as _;

use crate::config::{ConflictRule, OnStoreError, TtlExtension};
use crate::cookies::CookieAction;
use crate::error::{SessionError, StoreError};
use crate::id::{SessionId, StoreKey};
use crate::record::SessionRecord;
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
enum Plan {
    Nothing,
    /// Store a new session (first save, or `cycle_id`), deleting `old` afterwards.
    Create {
        record: SessionRecord,
        old: Option<SessionId>,
    },
    /// Check-and-set the stored session.
    Update {
        id: SessionId,
        key: StoreKey,
        base: Stored,
    },
    /// Extend the expiry of an unchanged session.
    Touch {
        id: SessionId,
        key: StoreKey,
        ttl: Duration,
    },
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
                CookieAction::Remove.apply(&shared.set_cookie, None, response.headers_mut());
            }
            return true;
        }
        if let Some(error) = self.state().failure.clone() {
            if shared.config.on_store_error == OnStoreError::ServiceUnavailable {
                *response = error_response(&SessionError::Store(error));
            }
            return true;
        }
        false
    }

    /// Called by the layer once the handler's response is ready: saves and sets the cookie,
    /// or turns the response into an error response when the store failed.
    pub(crate) async fn finish<B: From<String>>(&self, response: &mut Response<B>) {
        if self.finish_without_store(response) {
            return;
        }
        let shared = self.shared();
        let fail_closed = shared.config.on_store_error == OnStoreError::ServiceUnavailable;
        match self.persist().await {
            Ok(()) => {
                let action = std::mem::take(&mut self.state().cookie);
                action.apply(
                    &shared.set_cookie,
                    self.presented_value(),
                    response.headers_mut(),
                );
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
        #[cfg(feature = "cookie-store")]
        if let Backend::Cookie(cookie_store) = &self.shared().backend {
            return crate::cookie_store::persist(self, cookie_store);
        }
        let store = match &self.shared().backend {
            Backend::Store(store) => Arc::clone(store),
            #[cfg(feature = "cookie-store")]
            Backend::Cookie(_) => return Ok(()),
        };
        match self.plan() {
            Plan::Nothing => Ok(()),
            Plan::Create { record, old } => self.create(&*store, record, old).await,
            Plan::Update { id, key, base } => self.update(&*store, id, key, base).await,
            Plan::Touch { id, key, ttl } => self.touch(&*store, id, key, ttl).await,
        }
    }

    fn plan(&self) -> Plan {
        let config = &self.shared().config;
        let mut state = self.state();
        let Some(base) = state.base.clone() else {
            // Not stored yet: store it only once it has content (express' saveUninitialized
            // = false), so anonymous traffic costs the store nothing.
            let record = apply_changes(None, &state.changes, false, config.absolute_timeout);
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
            let mut record = apply_changes(
                Some(&base.record),
                &state.changes,
                state.cleared,
                config.absolute_timeout,
            );
            // The absolute timeout restarts with the new id (typically at log-in).
            let fresh = SessionRecord::new(config.absolute_timeout);
            record.restart_clock_from(&fresh);
            return Plan::Create {
                record,
                old: Some(id),
            };
        }
        if state.is_modified_fields() {
            return Plan::Update { id, key, base };
        }
        let Some(ttl) = base.record.ttl(config.idle_timeout) else {
            return Plan::Nothing;
        };
        let half = config.idle_timeout / 2;
        if config.ttl_extension == TtlExtension::OnEveryRequest
            && ttl.saturating_sub(base.ttl) >= half
        {
            return Plan::Touch { id, key, ttl };
        }
        if matches!(self.presented_ref(), Presented::Id { resign: true, .. })
            && state.cookie == CookieAction::Keep
        {
            // Signed with a retired key: re-sign with the newest one.
            state.cookie = self.signed_cookie(&id, base.ttl);
        }
        Plan::Nothing
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
        let span = store_span!("session.create", store);
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
        clear_changes(&mut state);
        Ok(())
    }

    async fn update(
        &self,
        store: &dyn SessionStore,
        id: SessionId,
        key: StoreKey,
        loaded: Stored,
    ) -> Result<(), SessionError> {
        let config = &self.shared().config;
        let (mut changes, cleared) = {
            let mut state = self.state();
            let changes = std::mem::take(&mut state.changes);
            let cleared = std::mem::replace(&mut state.cleared, false);
            (changes, cleared)
        };
        let restore = |session: &Session, changes, cleared| {
            let mut state = session.state();
            // Changes made while we were saving win over the ones we put back.
            let newer = std::mem::replace(&mut state.changes, changes);
            state.changes.extend(newer);
            state.cleared |= cleared;
        };
        let span = store_span!("session.save", store);
        let mut current = loaded.clone();
        let mut same_field_counted = HashSet::new();
        for attempt in 1..=config.max_save_attempts {
            // The changes move into the record (no copies) until `take_back` puts them
            // back, should the record not be saved.
            let record = record_moving_changes(&current.record, &mut changes, cleared);
            let size = record.data_len();
            if size > config.max_size {
                self.shared().metrics.save("too_large");
                take_back(&current.record, &mut changes, cleared, Arc::new(record));
                restore(self, changes, cleared);
                return Err(SessionError::TooLarge {
                    size,
                    limit: config.max_size,
                });
            }
            let Some(ttl) = record.ttl(config.idle_timeout) else {
                // The absolute deadline passed while the request ran: the session is over.
                self.shared().metrics.save("gone");
                self.forget();
                return Ok(());
            };
            let record = Arc::new(record);
            let now = if span.is_disabled() {
                store.save_loaded_now(&key, &current, &record, ttl)
            } else {
                span.in_scope(|| store.save_loaded_now(&key, &current, &record, ttl))
            };
            let outcome = match now {
                Some(outcome) => outcome,
                None => {
                    let save = store.save_loaded(&key, &current, Arc::clone(&record), ttl);
                    in_span(save, &span).await
                }
            };
            match outcome {
                Ok(SaveOutcome::Saved { version }) => {
                    self.shared().metrics.save("saved");
                    let mut state = self.state();
                    state.base = Some(Stored {
                        record,
                        version,
                        ttl,
                        lease: current.lease.clone(),
                    });
                    state.cookie = self.signed_cookie(&id, ttl);
                    return Ok(());
                }
                Ok(SaveOutcome::Conflict(latest)) => {
                    take_back(&current.record, &mut changes, cleared, record);
                    self.shared().metrics.conflict("merged");
                    let clashes: Vec<String> = changes
                        .keys()
                        .filter(|name| {
                            latest.record.field(name).map(|v| v.get())
                                != loaded.record.field(name).map(|v| v.get())
                        })
                        .cloned()
                        .collect();
                    for name in clashes {
                        if keep_stored(config.conflict_rule, &name, &changes, &latest) {
                            changes.remove(&name);
                        }
                        if same_field_counted.insert(name) {
                            self.shared().metrics.conflict("same_field");
                        }
                    }
                    tracing::debug!(
                        attempt,
                        version = latest.version,
                        "session changed concurrently; merging"
                    );
                    current = latest;
                }
                Ok(SaveOutcome::Gone) => {
                    self.shared().metrics.save("gone");
                    tracing::debug!("session was ended by another request; changes dropped");
                    self.forget();
                    return Ok(());
                }
                Err(error) => {
                    take_back(&current.record, &mut changes, cleared, record);
                    restore(self, changes, cleared);
                    return Err(store_failure(self, error));
                }
            }
        }
        self.shared().metrics.save("gave_up");
        restore(self, changes, cleared);
        Err(SessionError::Conflict {
            attempts: config.max_save_attempts,
        })
    }

    async fn touch(
        &self,
        store: &dyn SessionStore,
        id: SessionId,
        key: StoreKey,
        ttl: Duration,
    ) -> Result<(), SessionError> {
        let span = store_span!("session.touch", store);
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
        let mut state = self.state();
        *state = State {
            cookie: std::mem::take(&mut state.cookie),
            ..State::default()
        };
    }

    fn signed_cookie(&self, id: &SessionId, ttl: Duration) -> CookieAction {
        match self.presented_ref() {
            // The cookie the request came with is already this id signed by the newest key.
            Presented::Id {
                id: presented,
                resign: false,
                ..
            } if presented == id => CookieAction::Resend { ttl },
            _ => {
                let shared = self.shared();
                CookieAction::Set {
                    value: shared.keys.sign(&shared.config.cookie.name, id),
                    ttl,
                }
            }
        }
    }

    fn presented_value(&self) -> Option<&[u8]> {
        match self.presented_ref() {
            Presented::Id { value, .. } => Some(value.as_bytes()),
            _ => None,
        }
    }
}

impl State {
    fn is_modified_fields(&self) -> bool {
        self.cleared || !self.changes.is_empty()
    }
}

/// A field change: the value written, or `None` for a removed field.
type Changes = std::collections::BTreeMap<String, Option<Box<RawValue>>>;

/// `base` with `changes` applied (fields of `base` dropped first when `cleared`), moving the
/// changes into the new record (names and values) instead of copying them. What stays in
/// `changes` is the removals and the rare change that writes exactly the text `base` holds
/// (copied, since the record alone could not tell it from an unchanged field);
/// [`take_back`] restores the rest.
fn record_moving_changes(
    base: &SessionRecord,
    changes: &mut Changes,
    cleared: bool,
) -> SessionRecord {
    let mut record = base.with_fields(|name| cleared || changes.contains_key(name));
    for (name, change) in std::mem::take(changes) {
        match change {
            Some(value) if cleared || base.field(&name).map(RawValue::get) != Some(value.get()) => {
                record.set_field(name, value);
            }
            Some(value) => {
                record.set_field(name.clone(), value.clone());
                changes.insert(name, Some(value));
            }
            None => {
                changes.insert(name, None);
            }
        }
    }
    record
}

/// Undoes the moves of [`record_moving_changes`] (from `base`) for a record that was not
/// saved: every field of `record` that is not an unchanged copy of `base` goes back into
/// `changes`.
fn take_back(
    base: &SessionRecord,
    changes: &mut Changes,
    cleared: bool,
    record: Arc<SessionRecord>,
) {
    let moved = |name: &str, text: &str| {
        !changes.contains_key(name)
            && (cleared || base.field(name).map(RawValue::get) != Some(text))
    };
    // The store keeps no copy of a record it did not save, so the record is normally ours
    // alone and its fields move back; otherwise they are copied.
    let back: Vec<(String, Box<RawValue>)> = match Arc::try_unwrap(record) {
        Ok(record) => record
            .into_fields()
            .filter(|(name, value)| moved(name, value.get()))
            .collect(),
        Err(record) => record
            .fields()
            .filter(|(name, text)| moved(name, text))
            .filter_map(|(name, _)| Some((name.to_owned(), record.field(name)?.to_owned())))
            .collect(),
    };
    for (name, value) in back {
        changes.insert(name, Some(value));
    }
}

/// Whether a field changed on both sides keeps the stored value (drops this request's change).
fn keep_stored(rule: ConflictRule, name: &str, changes: &Changes, latest: &Stored) -> bool {
    #[cfg(feature = "db-router")]
    if name == crate::READ_YOUR_WRITES_FIELD {
        // The read-your-writes token only moves forward: keep the higher LSN.
        let ours = changes
            .get(name)
            .and_then(|v| v.as_deref())
            .map(|v| v.get());
        let theirs = latest.record.field(name).map(|v| v.get());
        if let (Some(ours), Some(theirs)) = (ours, theirs)
            && let Some(ours_is_higher) = crate::read_your_writes::merge(ours, theirs)
        {
            return !ours_is_higher;
        }
    }
    let _ = (name, changes, latest);
    rule == ConflictRule::FirstWriteWins
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

fn clear_changes(state: &mut State) {
    state.changes.clear();
    state.cleared = false;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(json: &str) -> Box<RawValue> {
        RawValue::from_string(json.to_owned()).unwrap()
    }

    fn fields(record: &SessionRecord) -> Vec<(String, String)> {
        record
            .fields()
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
            .collect()
    }

    #[test]
    fn moved_changes_come_back_whole() {
        let mut base = SessionRecord::new(None);
        base.set_field("kept".into(), raw("1"));
        base.set_field("same".into(), raw("2"));
        base.set_field("changed".into(), raw("3"));
        base.set_field("removed".into(), raw("4"));
        let mut original = Changes::new();
        original.insert("same".into(), Some(raw("2")));
        original.insert("changed".into(), Some(raw("30")));
        original.insert("new".into(), Some(raw("5")));
        original.insert("removed".into(), None);
        let text = |changes: &Changes| -> Vec<(String, Option<String>)> {
            changes
                .iter()
                .map(|(n, v)| (n.clone(), v.as_ref().map(|v| v.get().to_owned())))
                .collect()
        };
        for cleared in [false, true] {
            for shared in [false, true] {
                let mut changes = original.clone();
                let record = record_moving_changes(&base, &mut changes, cleared);
                let expected = apply_changes(Some(&base), &original, cleared, None);
                assert_eq!(fields(&record), fields(&expected));
                let record = Arc::new(record);
                let other = shared.then(|| Arc::clone(&record));
                take_back(&base, &mut changes, cleared, record);
                assert_eq!(text(&changes), text(&original), "cleared {cleared}");
                drop(other);
            }
        }
    }
}
