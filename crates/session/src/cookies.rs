//! Reading the session cookie from a request and writing `Set-Cookie` on the response.

use std::time::Duration;

use cookie::Cookie;
use http::header::{COOKIE, SET_COOKIE};
use http::{HeaderMap, HeaderValue};

use crate::config::CookieConfig;

/// The response header carrying a new bearer token (see `SessionConfig::bearer_tokens`):
/// `x-session-token`; an empty value means the session ended.
pub const SESSION_TOKEN_HEADER: &str = "x-session-token";

/// Every value the request carries for cookie `name`, in header order (a browser sends the
/// most specific path first when several cookies share a name), as the header's bytes: the
/// signed cookie's reader checks them character by character anyway, and the cookie store
/// checks its value is UTF-8.
pub(crate) fn request_values<'a>(
    headers: &'a HeaderMap,
    name: &'a str,
) -> impl Iterator<Item = &'a [u8]> + 'a {
    headers
        .get_all(COOKIE)
        .iter()
        .flat_map(move |header| NamedValues {
            rest: header.as_bytes(),
            name: name.as_bytes(),
        })
}

/// The session cookie a request carries, by the rule documented on
/// [`CookieConfig`](crate::CookieConfig): one value, none, or more than one (ambiguous).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Candidate<'a> {
    /// No cookie of that name.
    Absent,
    /// Exactly one value.
    One(&'a [u8]),
    /// Several values: none of them is used.
    Ambiguous,
}

/// The one value of cookie `name` in `headers`. Scanning stops at a second value, so a header
/// repeating the name thousands of times costs no more than one that repeats it twice, and
/// nothing is verified here.
pub(crate) fn session_cookie<'a>(headers: &'a HeaderMap, name: &'a str) -> Candidate<'a> {
    let mut values = request_values(headers, name);
    match (values.next(), values.next()) {
        (None, _) => Candidate::Absent,
        (Some(value), None) => Candidate::One(value),
        (Some(_), Some(_)) => Candidate::Ambiguous,
    }
}

/// The values of one cookie in one `Cookie` header. The header is scanned as bytes, split at
/// `;` eight bytes at a time, and only pairs that start with the name are looked at further.
struct NamedValues<'a> {
    rest: &'a [u8],
    name: &'a [u8],
}

impl<'a> Iterator for NamedValues<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        while !self.rest.is_empty() {
            let (pair, rest) = match find_semicolon(self.rest) {
                Some(at) => (
                    self.rest.get(..at).unwrap_or_default(),
                    self.rest.get(at + 1..).unwrap_or_default(),
                ),
                None => (self.rest, &[][..]),
            };
            self.rest = rest;
            if let Some(value) = value_of(pair, self.name) {
                return Some(value);
            }
        }
        None
    }
}

/// The value of a `name=value` pair if its name is `name` (whitespace around the name and
/// the value allowed, double quotes around the value removed).
fn value_of<'a>(pair: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let value = pair
        .trim_ascii_start()
        .strip_prefix(name)?
        .trim_ascii_start()
        .strip_prefix(b"=")?
        .trim_ascii();
    Some(
        value
            .strip_prefix(b"\"")
            .and_then(|v| v.strip_suffix(b"\""))
            .unwrap_or(value),
    )
}

/// Index of the first `;` in `bytes`, testing eight bytes at a time for one (a cookie header is
/// mostly one long value).
fn find_semicolon(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH_BITS: u64 = u64::from_ne_bytes([0x80; 8]);
    const SEMICOLONS: u64 = u64::from_ne_bytes([b';'; 8]);
    let mut start = 0;
    for chunk in bytes.chunks_exact(8) {
        let mut word = [0_u8; 8];
        word.copy_from_slice(chunk);
        // Zero bytes where the chunk has a `;`; the classic test for a zero byte.
        let word = u64::from_ne_bytes(word) ^ SEMICOLONS;
        if word.wrapping_sub(ONES) & !word & HIGH_BITS != 0 {
            break;
        }
        start += 8;
    }
    bytes
        .get(start..)?
        .iter()
        .position(|&b| b == b';')
        .map(|at| start + at)
}

/// What the response must do with the session cookie.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) enum CookieAction {
    /// Leave the browser's cookie as it is.
    #[default]
    Keep,
    /// Send this value, expiring with the session after `ttl`.
    Set { value: String, ttl: Duration },
    /// Tell the browser to drop the cookie.
    Remove,
}

impl CookieAction {
    /// Adds the `Set-Cookie` header.
    pub(crate) fn apply(&self, template: &SetCookieTemplate, headers: &mut HeaderMap) {
        let header = match self {
            CookieAction::Keep => return,
            CookieAction::Set { value, ttl } => template.render(value.as_bytes(), Some(*ttl)),
            CookieAction::Remove => template.render(b"", Some(Duration::ZERO)),
        };
        match HeaderValue::try_from(header) {
            Ok(value) => {
                headers.append(SET_COOKIE, value);
            }
            // Config validation and our own values (base64) rule this out.
            Err(error) => tracing::error!(%error, "session cookie is not a valid header value"),
        }
    }
}

impl CookieAction {
    /// Puts the action in the bearer-token response header instead of a cookie: the new token,
    /// or an empty value when the session ended (the client drops its token). A response that
    /// carries a token is not to be stored by caches.
    pub(crate) fn apply_bearer(&self, headers: &mut HeaderMap) {
        let value = match self {
            CookieAction::Keep => return,
            CookieAction::Set { value, .. } => match HeaderValue::from_str(value) {
                Ok(value) => value,
                Err(error) => {
                    tracing::error!(%error, "session token is not a valid header value");
                    return;
                }
            },
            CookieAction::Remove => HeaderValue::from_static(""),
        };
        headers.insert(SESSION_TOKEN_HEADER, value);
        if !headers.contains_key(http::header::CACHE_CONTROL) {
            headers.insert(
                http::header::CACHE_CONTROL,
                HeaderValue::from_static("no-store"),
            );
        }
    }
}

/// The session's `Set-Cookie` with its attributes rendered once (by the `cookie` crate) when
/// the layer is built; each response only adds the value and Max-Age.
#[derive(Debug, Clone)]
pub(crate) struct SetCookieTemplate {
    name: String,
    /// `; HttpOnly; SameSite=Lax; Secure; Path=/...`
    attributes: String,
    persistent: bool,
}

impl SetCookieTemplate {
    pub(crate) fn new(config: &CookieConfig) -> Self {
        let empty = set_cookie(config, "", None);
        let name = config.effective_name();
        let attributes = empty
            .strip_prefix(&format!("{name}="))
            .unwrap_or_default()
            .to_owned();
        Self {
            name: name.to_owned(),
            attributes,
            persistent: config.persistent,
        }
    }

    /// The header's bytes (`HeaderValue` checks them as it takes them over).
    fn render(&self, value: &[u8], max_age: Option<Duration>) -> Vec<u8> {
        // A removal always carries Max-Age=0; a browser-session cookie has no Max-Age.
        // Round up: a fraction of a second left must not become Max-Age=0 (delete now).
        let seconds = max_age
            .filter(|age| age.is_zero() || self.persistent)
            .map(|age| age.as_secs() + u64::from(age.subsec_nanos() > 0));
        let max_age_len = seconds.map_or(0, |s| "; Max-Age=".len() + decimal_len(s));
        // Exactly sized: `HeaderValue` takes the buffer over only when nothing is spare
        // (otherwise `Bytes` allocates again).
        let mut header = Vec::with_capacity(
            self.name.len() + 1 + value.len() + self.attributes.len() + max_age_len,
        );
        header.extend_from_slice(self.name.as_bytes());
        header.push(b'=');
        header.extend_from_slice(value);
        header.extend_from_slice(self.attributes.as_bytes());
        if let Some(seconds) = seconds {
            header.extend_from_slice(b"; Max-Age=");
            push_decimal(&mut header, seconds);
        }
        header
    }
}

/// Appends `n` in decimal (what `write!` does, without the formatting machinery).
fn push_decimal(out: &mut Vec<u8>, n: u64) {
    let mut digits = [0_u8; 20];
    let mut rest = n;
    let mut start = digits.len();
    for slot in digits.iter_mut().rev() {
        *slot = b'0' + (rest % 10) as u8;
        rest /= 10;
        start -= 1;
        if rest == 0 {
            break;
        }
    }
    out.extend_from_slice(digits.get(start..).unwrap_or_default());
}

/// Number of decimal digits of `n`.
fn decimal_len(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |digits| digits as usize + 1)
}

/// The `Set-Cookie` text for `value`, with every configured attribute.
pub(crate) fn set_cookie(config: &CookieConfig, value: &str, max_age: Option<Duration>) -> String {
    let mut cookie = Cookie::build((config.effective_name(), value))
        .http_only(config.http_only)
        .secure(config.secure)
        .same_site(config.same_site.into())
        .path(config.path.as_str());
    if let Some(domain) = &config.domain {
        cookie = cookie.domain(domain.as_str());
    }
    if let Some(max_age) = max_age {
        let seconds = i64::try_from(max_age.as_secs()).unwrap_or(i64::MAX);
        cookie = cookie.max_age(cookie::time::Duration::seconds(seconds));
    }
    cookie.build().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SameSite;

    #[test]
    fn finds_every_value_of_the_named_cookie() {
        let mut headers = HeaderMap::new();
        headers.append(COOKIE, HeaderValue::from_static("a=1; sid=first;b=2"));
        headers.append(COOKIE, HeaderValue::from_static("sid=\"second\"; sidx=no"));
        headers.append(
            COOKIE,
            HeaderValue::from_static(" sid = third ;sid=;x=sid=no"),
        );
        let values: Vec<_> = request_values(&headers, "sid").collect();
        assert_eq!(values, [&b"first"[..], b"second", b"third", b""]);
        assert_eq!(request_values(&headers, "missing").count(), 0);
        assert_eq!(
            request_values(&headers, "x").collect::<Vec<_>>(),
            [b"sid=no"]
        );
    }

    #[test]
    fn one_value_or_ambiguous() {
        let headers = |values: &[&'static str]| {
            let mut headers = HeaderMap::new();
            for value in values {
                headers.append(COOKIE, HeaderValue::from_static(value));
            }
            headers
        };
        assert_eq!(
            session_cookie(&headers(&["a=1; b=2"]), "sid"),
            Candidate::Absent
        );
        assert_eq!(
            session_cookie(&headers(&["a=1; sid=x; b=2"]), "sid"),
            Candidate::One(b"x")
        );
        // Two in one header, or one in each of two headers, or an empty second one.
        for case in [
            &["sid=x; sid=y"][..],
            &["sid=x", "sid=y"],
            &["sid=x; sid="],
            &["sid=x; sid=x"],
        ] {
            assert_eq!(
                session_cookie(&headers(case), "sid"),
                Candidate::Ambiguous,
                "{case:?}"
            );
        }
        // Other names, and names that merely start alike, are not candidates.
        assert_eq!(
            session_cookie(&headers(&["sidx=1; __Host-sid=2; sid=3"]), "sid"),
            Candidate::One(b"3")
        );
        assert_eq!(
            session_cookie(&headers(&["__host-sid=1; __Host-sid=2"]), "__Host-sid"),
            Candidate::One(b"2")
        );
    }

    #[test]
    fn thousands_of_values_are_scanned_only_up_to_the_second() {
        // 8 KiB of `sid=` pairs: the scan ends at the second pair, long before the end.
        let pair = format!("sid={}.{}; ", "A".repeat(43), "B".repeat(43));
        let pairs = pair.repeat(90);
        let mut headers = HeaderMap::new();
        headers.append(COOKIE, HeaderValue::from_str(&pairs).unwrap());
        assert_eq!(session_cookie(&headers, "sid"), Candidate::Ambiguous);
        let mut scanned = request_values(&headers, "sid");
        scanned.next();
        scanned.next();
        // Nothing past the second value was read: the rest is still ahead of the iterator.
        assert_eq!(scanned.count(), 88);
    }

    #[test]
    fn semicolons_are_found_at_every_position() {
        for len in 0..40 {
            let mut text = vec![b'a'; len];
            assert_eq!(find_semicolon(&text), None);
            for at in 0..len {
                text.fill(b'a');
                text[at] = b';';
                if at + 3 < len {
                    text[at + 3] = b';';
                }
                assert_eq!(find_semicolon(&text), Some(at), "len {len} at {at}");
            }
        }
        // Bytes one above and below `;`, and high bytes, are not taken for one.
        assert_eq!(find_semicolon(b":<:<\xbb\x3a\x3c\xff;"), Some(8));
    }

    #[test]
    fn set_cookie_carries_every_attribute() {
        let mut config = CookieConfig {
            domain: Some("example.com".into()),
            same_site: SameSite::Strict,
            ..CookieConfig::default()
        };
        let text = set_cookie(&config, "v.s", Some(Duration::from_secs(90)));
        for part in [
            "sid=v.s",
            "HttpOnly",
            "Secure",
            "SameSite=Strict",
            "Path=/",
            "Domain=example.com",
            "Max-Age=90",
        ] {
            assert!(text.contains(part), "{text} lacks {part}");
        }
        config.secure = false;
        config.domain = None;
        let mut headers = HeaderMap::new();
        CookieAction::Remove.apply(&SetCookieTemplate::new(&config), &mut headers);
        let removal = headers.get(SET_COOKIE).unwrap().to_str().unwrap();
        assert!(
            removal.starts_with("sid=;") && removal.contains("Max-Age=0"),
            "{removal}"
        );
        let almost_gone =
            SetCookieTemplate::new(&config).render(b"v", Some(Duration::from_millis(300)));
        let almost_gone = String::from_utf8(almost_gone).unwrap();
        assert!(almost_gone.contains("Max-Age=1"), "{almost_gone}");
        let template = SetCookieTemplate::new(&CookieConfig::default())
            .render(b"a.b", Some(Duration::from_secs(60)));
        let template = String::from_utf8(template).unwrap();
        assert_eq!(
            template,
            "__Host-sid=a.b; HttpOnly; SameSite=Lax; Secure; Path=/; Max-Age=60"
        );
        assert!(!removal.contains("Secure") && !removal.contains("Domain"));
    }

    #[test]
    fn rendered_cookie_is_exactly_sized() {
        let template = SetCookieTemplate::new(&CookieConfig::default());
        for seconds in [0, 1, 9, 10, 99, 100, 1800, 43_200, u64::MAX] {
            let text = template.render(b"a.b", Some(Duration::from_secs(seconds)));
            assert_eq!(text.len(), text.capacity());
            let text = String::from_utf8(text).unwrap();
            assert!(text.ends_with(&format!("; Max-Age={seconds}")), "{text}");
        }
        let text = template.render(b"a.b", None);
        assert_eq!(text.len(), text.capacity());
    }

    #[test]
    fn browser_session_cookies_have_no_max_age() {
        let config = CookieConfig {
            persistent: false,
            ..CookieConfig::default()
        };
        let mut headers = HeaderMap::new();
        CookieAction::Set {
            value: "x".into(),
            ttl: Duration::from_secs(5),
        }
        .apply(&SetCookieTemplate::new(&config), &mut headers);
        assert!(
            !headers
                .get(SET_COOKIE)
                .unwrap()
                .to_str()
                .unwrap()
                .contains("Max-Age")
        );
    }
}
