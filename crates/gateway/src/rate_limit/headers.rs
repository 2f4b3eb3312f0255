//! The `RateLimit-Policy` and `RateLimit` response fields of draft-ietf-httpapi-ratelimit-headers-10
//! (<https://datatracker.ietf.org/doc/draft-ietf-httpapi-ratelimit-headers/10/>, September 2025):
//! structured-field lists of one item each, the policy's name as an sf-string with parameters.
//!
//! ```text
//! RateLimit-Policy: "login_limit";q=5;w=60
//! RateLimit: "login_limit";r=3;t=24
//! ```
//!
//! A GCRA quota maps onto them as: `q`, the burst (requests a rested client may send at once);
//! `w`, the seconds a full burst takes to refill (`burst × period`, rounded up); `r`, the requests
//! the client may still send at once; `t`, the seconds until its state is back to a full burst
//! (the draft's reset), rounded up. On a 429 `r` is 0 and `Retry-After` says when the next request
//! is admitted.

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};

/// `RateLimit-Policy`.
pub(super) const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit`.
pub(super) const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// A zone's name as an sf-string (RFC 8941 §3.3.3: printable ASCII, `"` and `\` escaped), or
/// `None` when it holds another character.
pub(super) fn sf_string(name: &str) -> Option<String> {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for c in name.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => return None,
        }
    }
    out.push('"');
    Some(out)
}

/// Whole seconds in `ns`, rounded up.
#[inline]
pub(super) fn ceil_secs(ns: u64) -> u64 {
    ns.div_ceil(1_000_000_000)
}

/// The two fields of one response.
#[derive(Debug, Clone)]
pub(crate) struct RateHeaders {
    policy: HeaderValue,
    state: HeaderValue,
}

impl RateHeaders {
    /// `policy` (the zone's precomputed `RateLimit-Policy`), and `RateLimit` for `name` (an
    /// sf-string) with `remaining` requests and `reset` seconds.
    pub(super) fn new(
        policy: &HeaderValue,
        name: &str,
        remaining: u64,
        reset: u64,
    ) -> Option<Self> {
        let state = HeaderValue::try_from(format!("{name};r={remaining};t={reset}")).ok()?;
        Some(Self {
            policy: policy.clone(),
            state,
        })
    }

    /// Puts both fields in `headers`, replacing any the inner service set.
    pub(crate) fn apply(self, headers: &mut HeaderMap) {
        headers.insert(RATELIMIT_POLICY, self.policy);
        headers.insert(RATELIMIT, self.state);
    }
}

/// The `RateLimit-Policy` value of a quota named `name` (an sf-string).
pub(super) fn policy(name: &str, burst: u32, period_ns: u64) -> Option<HeaderValue> {
    let window = ceil_secs(period_ns.saturating_mul(u64::from(burst))).max(1);
    HeaderValue::try_from(format!("{name};q={burst};w={window}")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_sf_strings_and_fields_follow_the_draft() {
        assert_eq!(sf_string("login_limit").as_deref(), Some("\"login_limit\""));
        assert_eq!(sf_string("a\"b\\c").as_deref(), Some(r#""a\"b\\c""#));
        assert_eq!(sf_string("caf\u{e9}"), None);
        assert_eq!(sf_string("tab\there"), None);
        // 5 a minute, burst 5: a full burst refills in 60 s.
        let p = policy("\"login\"", 5, 12_000_000_000).unwrap();
        assert_eq!(p, "\"login\";q=5;w=60");
        let h = RateHeaders::new(&p, "\"login\"", 3, 24).unwrap();
        let mut map = HeaderMap::new();
        h.apply(&mut map);
        assert_eq!(map["ratelimit"], "\"login\";r=3;t=24");
        assert_eq!(map["ratelimit-policy"], "\"login\";q=5;w=60");
        assert_eq!(ceil_secs(1), 1);
        assert_eq!(ceil_secs(0), 0);
        assert_eq!(ceil_secs(2_000_000_000), 2);
    }
}
