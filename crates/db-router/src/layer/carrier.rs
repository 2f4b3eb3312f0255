//! Where the read-your-writes token travels: a header, a signed cookie, or the herd session.

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cookie::{Cookie, SameSite};
use hmac::{Hmac, Mac as _};
use http::HeaderMap;
use http::header::{COOKIE, HeaderName, HeaderValue, SET_COOKIE};
use sha2::Sha256;

use crate::lsn::Lsn;

pub(super) type HmacSha256 = Hmac<Sha256>;

/// How the token travels between the client and the service.
#[derive(Clone)]
pub(super) enum Carrier {
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
pub(super) struct CookieSettings {
    pub(super) name: String,
    pub(super) path: String,
    pub(super) max_age: Duration,
    pub(super) secure: bool,
    /// HMAC states keyed with each secret; the first signs, all verify.
    pub(super) keys: Vec<HmacSha256>,
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
    pub(super) fn read(&self, headers: &HeaderMap) -> Option<Lsn> {
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

    /// Sets `token` on the response's headers; `changed`: the request wrote, so the token moved.
    pub(super) fn write(&self, headers: &mut HeaderMap, token: Lsn, changed: bool) {
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

#[cfg(test)]
mod tests {
    use hmac::KeyInit as _;

    use super::super::DEFAULT_HEADER;
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
