//! The whole session in an encrypted cookie: no server state. See
//! [`SessionLayer::cookie_store_builder`](crate::SessionLayer::cookie_store_builder) for what
//! this mode gives and what it cannot.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use cookie::{Cookie, CookieJar};
use hmac::{Hmac, KeyInit as _, Mac as _};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::config::TtlExtension;
use crate::cookies::CookieAction;
use crate::error::SessionError;
use crate::keys::SigningKeys;
use crate::record::{SessionRecord, duration_ms, unix_ms};
use crate::session::{Session, apply_changes};
use crate::store::Stored;

/// Largest `name=value` the cookie store sends: the 4096 bytes browsers guarantee per cookie.
/// A bearer token is held to the same bound.
pub const MAX_COOKIE_LEN: usize = 4096;

/// What a bearer token is sealed under instead of the cookie name, so that a session cookie is
/// not a bearer token and a bearer token not a cookie.
pub(crate) const BEARER_LABEL: &str = "herd-session bearer token";

/// Seals and opens sessions kept in the cookie.
pub(crate) struct CookieStore {
    /// Newest first.
    keys: Vec<cookie::Key>,
}

impl std::fmt::Debug for CookieStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CookieStore")
            .field("keys", &self.keys.len())
            .finish()
    }
}

#[derive(Serialize, Deserialize)]
struct Sealed {
    /// Idle deadline, milliseconds since the Unix epoch.
    #[serde(rename = "e")]
    expires_at_ms: u64,
    #[serde(rename = "r")]
    record: SessionRecord,
}

impl CookieStore {
    pub(crate) fn new(keys: &SigningKeys) -> Self {
        Self {
            keys: keys.all().filter_map(|key| derive(key.secret())).collect(),
        }
    }

    /// The session in a cookie value, if it opens under one of the keys and has not expired.
    pub(crate) fn open(&self, name: &str, value: &str) -> Option<Stored> {
        let mut jar = CookieJar::new();
        jar.add_original(Cookie::new(name.to_owned(), value.to_owned()));
        let plain = self
            .keys
            .iter()
            .find_map(|key| jar.private(key).get(name))?;
        let sealed: Sealed = serde_json::from_str(plain.value()).ok()?;
        let now = unix_ms(SystemTime::now());
        let left = sealed.expires_at_ms.checked_sub(now).filter(|ms| *ms > 0)?;
        Some(Stored {
            record: Arc::new(sealed.record),
            version: 0,
            ttl: Duration::from_millis(left),
            lease: None,
        })
    }

    /// The cookie value for `record`, expiring after `ttl`.
    fn seal(&self, name: &str, record: &SessionRecord, ttl: Duration) -> Option<String> {
        let sealed = Sealed {
            expires_at_ms: unix_ms(SystemTime::now()).saturating_add(duration_ms(ttl)),
            record: record.clone(),
        };
        let json = serde_json::to_string(&sealed).ok()?;
        let key = self.keys.first()?;
        let mut jar = CookieJar::new();
        jar.private_mut(key).add(Cookie::new(name.to_owned(), json));
        jar.get(name).map(|cookie| cookie.value().to_owned())
    }
}

/// A 64-byte `cookie::Key` (encryption half used) from a signing secret, under its own label
/// so the cookie's encryption key never equals its signing key.
fn derive(secret: &[u8]) -> Option<cookie::Key> {
    let block = |counter: u8| -> Option<[u8; 32]> {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).ok()?;
        mac.update(b"herd-session cookie-store key v1");
        mac.update(&[counter]);
        Some(mac.finalize().into_bytes().into())
    };
    let mut material = [0_u8; 64];
    let (first, second) = material.split_at_mut(32);
    first.copy_from_slice(&block(1)?);
    second.copy_from_slice(&block(2)?);
    cookie::Key::try_from(&material[..]).ok()
}

/// The cookie store's save: seal the changed session into the cookie, re-seal an unchanged one
/// when the rolling expiry is due, or drop a cookie that did not open.
pub(crate) fn persist(session: &Session, store: &CookieStore) -> Result<(), SessionError> {
    let config = &session.shared().config;
    let name = session.sealing_name();
    let mut state = session.state();
    // A session asked for as a bearer token is sealed again even when unchanged.
    let modified = state.cycle || !state.changes.is_empty() || state.reseal;
    let (record, ttl) = if modified {
        let mut record = apply_changes(
            state.base.as_ref().map(|base| &*base.record),
            &state.changes,
            config.absolute_timeout,
        );
        if state.cycle {
            record.restart_clock_from(&SessionRecord::new(config.absolute_timeout));
        }
        if record.is_empty() && state.base.is_none() {
            if state.stale_cookie && state.cookie == CookieAction::Keep {
                state.cookie = CookieAction::Remove;
            }
            return Ok(());
        }
        let size = record.data_len();
        if size > config.max_size {
            session.shared().metrics.save("too_large");
            return Err(SessionError::TooLarge {
                size,
                limit: config.max_size,
            });
        }
        let Some(ttl) = record.ttl(config.idle_timeout) else {
            state.cookie = CookieAction::Remove;
            return Ok(());
        };
        (record, ttl)
    } else {
        let Some(base) = &state.base else {
            if state.stale_cookie && state.cookie == CookieAction::Keep {
                state.cookie = CookieAction::Remove;
            }
            return Ok(());
        };
        let Some(ttl) = base.record.ttl(config.idle_timeout) else {
            return Ok(());
        };
        let due = ttl.saturating_sub(base.ttl) >= config.idle_timeout / 2;
        if config.ttl_extension != TtlExtension::OnEveryRequest || !due {
            return Ok(());
        }
        ((*base.record).clone(), ttl)
    };
    let value = store
        .seal(name, &record, ttl)
        .ok_or_else(|| SessionError::Random("sealing the session cookie failed".to_owned()))?;
    let size = name.len() + 1 + value.len();
    if size > MAX_COOKIE_LEN {
        session.shared().metrics.save("too_large");
        return Err(SessionError::TooLarge {
            size,
            limit: MAX_COOKIE_LEN,
        });
    }
    session
        .shared()
        .metrics
        .save(if modified { "saved" } else { "touched" });
    state.cookie = CookieAction::Set { value, ttl };
    state.base = Some(Stored {
        record: Arc::new(record),
        version: 0,
        ttl,
        lease: None,
    });
    state.changes.clear();
    state.cycle = false;
    state.reseal = false;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Key;
    use serde_json::value::RawValue;

    fn keys(byte: u8) -> SigningKeys {
        SigningKeys::new(Key::from_bytes(&[byte; 32]).unwrap())
    }

    fn record() -> SessionRecord {
        let mut record = SessionRecord::new(None);
        record.set_field(
            "user".into(),
            RawValue::from_string("\"ann\"".into()).unwrap(),
        );
        record
    }

    #[test]
    fn sealed_cookie_opens_only_with_the_right_key_and_name() {
        let store = CookieStore::new(&keys(1));
        let value = store
            .seal("sid", &record(), Duration::from_secs(60))
            .unwrap();
        assert!(!value.contains("ann"), "the content must be encrypted");
        let opened = store.open("sid", &value).unwrap();
        assert_eq!(opened.record.field("user").unwrap().get(), "\"ann\"");
        assert!(opened.ttl > Duration::from_secs(58));
        assert!(
            store.open("other", &value).is_none(),
            "bound to the cookie name"
        );
        assert!(CookieStore::new(&keys(2)).open("sid", &value).is_none());
        assert!(store.open("sid", "garbage").is_none());
        let mut tampered = value.into_bytes();
        tampered[10] ^= 1;
        assert!(
            store
                .open("sid", &String::from_utf8_lossy(&tampered))
                .is_none()
        );
    }

    #[test]
    fn rotation_opens_old_cookies_and_expired_ones_do_not_open() {
        let old = CookieStore::new(&keys(1));
        let value = old.seal("sid", &record(), Duration::from_secs(60)).unwrap();
        let rotated = SigningKeys::with_rotation(vec![
            Key::from_bytes(&[2; 32]).unwrap(),
            Key::from_bytes(&[1; 32]).unwrap(),
        ])
        .unwrap();
        assert!(CookieStore::new(&rotated).open("sid", &value).is_some());
        let expired = old.seal("sid", &record(), Duration::ZERO).unwrap();
        assert!(old.open("sid", &expired).is_none());
    }
}
