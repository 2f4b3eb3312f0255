//! Secret keys and the HMAC-SHA256 signature on the session cookie, with key rotation.
//!
//! The cookie value is `<id>.<mac>`, where `mac` is the unpadded base64url HMAC-SHA256 of
//! `"<cookie name>=<id>"` under the newest key. Verification accepts a signature from any
//! configured key, so a key can be rotated in without logging everyone out: put the new key
//! first, keep the old ones behind it until the longest session has expired, then drop them.
//! A cookie signed with an old key is re-signed with the newest on its next response.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hmac::{Hmac, KeyInit as _, Mac as _};
use serde::{Deserialize, Deserializer};
use sha2::Sha256;

use crate::error::ConfigError;
use crate::id::{ID_TEXT_LEN, SessionId, decode_43};

type HmacSha256 = Hmac<Sha256>;

/// Shortest secret accepted: 256 bits, the HMAC-SHA256 output size.
pub const MIN_KEY_LEN: usize = 32;
/// Length of the signature in the cookie: unpadded base64url of 32 bytes.
const MAC_TEXT_LEN: usize = 43;
/// Length of a signed cookie value: `<id>.<mac>`.
pub(crate) const SIGNED_VALUE_LEN: usize = ID_TEXT_LEN + 1 + MAC_TEXT_LEN;

/// One secret key (at least 32 bytes). `Debug` never prints the secret.
#[derive(Clone)]
pub struct Key {
    secret: Vec<u8>,
    /// HMAC state with the key already absorbed; cloning it saves two SHA-256 blocks per
    /// cookie compared with keying a fresh HMAC every time.
    keyed: HmacSha256,
}

impl Key {
    /// A key from raw secret bytes; fails if shorter than [`MIN_KEY_LEN`].
    pub fn from_bytes(secret: &[u8]) -> Result<Self, ConfigError> {
        if secret.len() < MIN_KEY_LEN {
            return Err(ConfigError::KeyTooShort {
                len: secret.len(),
                min: MIN_KEY_LEN,
            });
        }
        let keyed = HmacSha256::new_from_slice(secret).map_err(|_| ConfigError::KeyTooShort {
            len: secret.len(),
            min: MIN_KEY_LEN,
        })?;
        Ok(Self {
            secret: secret.to_vec(),
            keyed,
        })
    }

    /// A key from its standard base64 text (how keys are kept in configuration).
    pub fn from_base64(text: &str) -> Result<Self, ConfigError> {
        let bytes = STANDARD
            .decode(text.trim())
            .map_err(|error| ConfigError::KeyNotBase64(error.to_string()))?;
        Self::from_bytes(&bytes)
    }

    /// A fresh random 64-byte key from the OS CSPRNG, e.g. for a single-instance service or
    /// a test. Every instance sharing sessions must use the same keys, so a cluster loads them
    /// from configuration instead.
    pub fn generate() -> Result<Self, ConfigError> {
        use rand::TryRng as _;
        let mut secret = [0_u8; 64];
        rand::rngs::SysRng
            .try_fill_bytes(&mut secret)
            .map_err(|error| ConfigError::Random(error.to_string()))?;
        Self::from_bytes(&secret)
    }

    /// The secret as standard base64, the text [`from_base64`](Self::from_base64) and the
    /// [`SigningKeys`] deserializer read: how a new key gets into configuration.
    ///
    /// ```
    /// use herd_session::Key;
    /// // Once, by an operator; the text goes into every instance's secret configuration.
    /// let text = Key::generate()?.to_base64();
    /// assert_eq!(text.len(), 88); // 64 random bytes
    /// let key = Key::from_base64(&text)?;
    /// assert_eq!(key.to_base64(), text);
    /// # Ok::<(), herd_session::ConfigError>(())
    /// ```
    ///
    /// The text is the secret itself: print it only where the secret may go, and never log it
    /// (`Debug` stays redacted).
    pub fn to_base64(&self) -> String {
        STANDARD.encode(&self.secret)
    }

    /// The raw secret, for deriving other keys (the cookie store's encryption key).
    #[cfg_attr(not(feature = "cookie-store"), allow(dead_code))]
    pub(crate) fn secret(&self) -> &[u8] {
        &self.secret
    }

    fn mac(&self, cookie_name: &str, id_text: &[u8]) -> HmacSha256 {
        #[cfg(test)]
        MACS.with(|macs| macs.set(macs.get() + 1));
        let mut mac = self.keyed.clone();
        mac.update(cookie_name.as_bytes());
        mac.update(b"=");
        mac.update(id_text);
        mac
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(<redacted>)")
    }
}

/// The keys that sign session cookies: the first signs, all of them verify.
///
/// Deserializes from a list of standard base64 strings, newest first.
#[derive(Clone)]
pub struct SigningKeys {
    newest: Key,
    older: Vec<Key>,
}

impl SigningKeys {
    /// One key that both signs and verifies.
    pub fn new(key: Key) -> Self {
        Self {
            newest: key,
            older: Vec::new(),
        }
    }

    /// Keys newest first: `keys[0]` signs, every key verifies. Fails on an empty list.
    pub fn with_rotation(keys: Vec<Key>) -> Result<Self, ConfigError> {
        let mut keys = keys.into_iter();
        let newest = keys.next().ok_or(ConfigError::NoKeys)?;
        Ok(Self {
            newest,
            older: keys.collect(),
        })
    }

    /// A single freshly generated key (see [`Key::generate`]).
    pub fn generate() -> Result<Self, ConfigError> {
        Ok(Self::new(Key::generate()?))
    }

    /// The key that signs (the newest).
    pub(crate) fn newest(&self) -> &Key {
        &self.newest
    }

    /// Every key, newest first.
    pub(crate) fn all(&self) -> impl Iterator<Item = &Key> {
        std::iter::once(&self.newest).chain(&self.older)
    }

    /// The cookie value for `id`: `<id>.<mac>`, signed with the newest key.
    pub(crate) fn sign(&self, cookie_name: &str, id: &SessionId) -> String {
        let id_text = id.to_text();
        let tag = self
            .newest()
            .mac(cookie_name, id_text.as_bytes())
            .finalize()
            .into_bytes();
        let mut value = String::with_capacity(SIGNED_VALUE_LEN);
        value.push_str(&id_text);
        value.push('.');
        URL_SAFE_NO_PAD.encode_string(tag, &mut value);
        value
    }

    /// Checks a cookie value. Returns the id and whether it was signed by an older key
    /// (so the caller re-signs it); `None` for anything malformed or forged.
    pub(crate) fn verify(&self, cookie_name: &str, value: impl AsRef<[u8]>) -> Option<Verified> {
        let value = value.as_ref();
        if value.len() != SIGNED_VALUE_LEN || value.get(ID_TEXT_LEN) != Some(&b'.') {
            return None;
        }
        let (id_text, mac_text) = value.split_at(ID_TEXT_LEN);
        let id = SessionId::parse_bytes(id_text)?;
        let tag = decode_43(mac_text.get(1..)?)?;
        // `verify_slice` compares in constant time.
        let index = self
            .all()
            .position(|key| key.mac(cookie_name, id_text).verify_slice(&tag).is_ok())?;
        Some(Verified {
            id,
            signed_with_old_key: index > 0,
        })
    }
}

impl fmt::Debug for SigningKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKeys")
            .field("keys", &(1 + self.older.len()))
            .finish()
    }
}

impl<'de> Deserialize<'de> for SigningKeys {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let texts = Vec::<String>::deserialize(deserializer)?;
        let keys = texts
            .iter()
            .map(|text| Key::from_base64(text))
            .collect::<Result<Vec<_>, _>>()
            .map_err(serde::de::Error::custom)?;
        SigningKeys::with_rotation(keys).map_err(serde::de::Error::custom)
    }
}

/// A cookie value that passed verification.
#[derive(Debug)]
pub(crate) struct Verified {
    pub(crate) id: SessionId,
    pub(crate) signed_with_old_key: bool,
}

#[cfg(test)]
thread_local! {
    /// HMACs computed on this thread, for tests that bound the work a request causes.
    pub(crate) static MACS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::SessionIdGenerator;

    fn key(byte: u8) -> Key {
        Key::from_bytes(&[byte; 32]).unwrap()
    }

    #[test]
    fn short_keys_and_empty_key_lists_are_rejected() {
        assert!(matches!(
            Key::from_bytes(&[0; 31]),
            Err(ConfigError::KeyTooShort { len: 31, min: 32 })
        ));
        assert!(matches!(
            SigningKeys::with_rotation(vec![]),
            Err(ConfigError::NoKeys)
        ));
        assert!(matches!(
            Key::from_base64("not base64!"),
            Err(ConfigError::KeyNotBase64(_))
        ));
    }

    #[test]
    fn signed_value_verifies_and_tampering_fails() {
        let keys = SigningKeys::new(key(1));
        let id = SessionIdGenerator::seeded(1).generate().unwrap();
        let value = keys.sign("sid", &id);
        let verified = keys.verify("sid", &value).unwrap();
        assert_eq!(verified.id, id);
        assert!(!verified.signed_with_old_key);

        // Another cookie name, another key, a flipped character, garbage: all rejected.
        assert!(keys.verify("other", &value).is_none());
        assert!(SigningKeys::new(key(2)).verify("sid", &value).is_none());
        let mut flipped = value.clone().into_bytes();
        flipped[3] = if flipped[3] == b'A' { b'B' } else { b'A' };
        assert!(keys.verify("sid", flipped).is_none());
        // The last character carries 4 bits; the same bits with a low bit set (not the
        // canonical encoding of the signature) must not pass either.
        let mut noncanonical = value.clone().into_bytes();
        let last = noncanonical.len() - 1;
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let position = alphabet
            .iter()
            .position(|c| *c == noncanonical[last])
            .unwrap();
        noncanonical[last] = alphabet[position | 1];
        assert!(keys.verify("sid", noncanonical).is_none());
        for bad in [
            "",
            ".",
            "abc",
            &value[..50],
            &format!("{value}x"),
            &id.to_text(),
        ] {
            assert!(keys.verify("sid", bad).is_none(), "accepted {bad:?}");
        }
    }

    #[test]
    fn rotation_verifies_old_signatures_and_signs_with_the_newest() {
        let id = SessionIdGenerator::seeded(2).generate().unwrap();
        let old_value = SigningKeys::new(key(1)).sign("sid", &id);
        let rotated = SigningKeys::with_rotation(vec![key(2), key(1)]).unwrap();
        let verified = rotated.verify("sid", &old_value).unwrap();
        assert_eq!(verified.id, id);
        assert!(verified.signed_with_old_key);
        let new_value = rotated.sign("sid", &id);
        assert_eq!(new_value, SigningKeys::new(key(2)).sign("sid", &id));
        assert!(
            !rotated
                .verify("sid", &new_value)
                .unwrap()
                .signed_with_old_key
        );
    }

    #[test]
    fn generated_keys_print_as_base64_and_read_back() {
        let key = Key::generate().unwrap();
        let text = key.to_base64();
        assert!(
            text.bytes().all(|b| b.is_ascii_graphic()),
            "printable: {text}"
        );
        assert_eq!(STANDARD.decode(&text).unwrap().len(), 64);
        let read = Key::from_base64(&text).unwrap();
        let id = SessionIdGenerator::seeded(3).generate().unwrap();
        let value = SigningKeys::new(key.clone()).sign("sid", &id);
        assert!(SigningKeys::new(read).verify("sid", &value).is_some());
        // Two generated keys differ, and the text round-trips through configuration.
        assert_ne!(Key::generate().unwrap().to_base64(), text);
        let keys: SigningKeys = serde_json::from_str(&format!("[\"{text}\"]")).unwrap();
        assert!(keys.verify("sid", &value).is_some());
        assert!(!format!("{key:?}").contains(&text));
    }

    #[test]
    fn keys_deserialize_from_base64_and_debug_hides_them() {
        let a = STANDARD.encode([7_u8; 32]);
        let b = STANDARD.encode([8_u8; 48]);
        let keys: SigningKeys = serde_json::from_str(&format!("[\"{a}\", \"{b}\"]")).unwrap();
        assert_eq!(keys.all().count(), 2);
        assert!(!format!("{keys:?}").contains(&a));
        assert!(!format!("{:?}", keys.newest()).contains('7'));
        assert!(serde_json::from_str::<SigningKeys>("[]").is_err());
        let short = STANDARD.encode([1_u8; 8]);
        assert!(serde_json::from_str::<SigningKeys>(&format!("[\"{short}\"]")).is_err());
    }
}
