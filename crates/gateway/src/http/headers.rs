//! Proxy header handling: hop-by-hop removal and `X-Forwarded-*`.

use std::cell::RefCell;
use std::net::IpAddr;

use http::HeaderMap;
use http::header::{CONNECTION, HeaderName, HeaderValue, TE, TRAILER, TRANSFER_ENCODING, UPGRADE};

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
pub(crate) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// `x-herd-dependency-unavailable`: the response header by which an endpoint says it failed
/// because a dependency that every endpoint shares is unavailable (PostgreSQL failing over, a
/// Redis Cluster failover), not by a fault of its own. Its value is a short token naming the
/// dependency: `postgres`, `redis`.
///
/// An instance sets it on its 503 (any 5xx counts), best with `Retry-After`. On such a response
/// [`HttpUpstream`](super::HttpUpstream):
/// - records [`Outcome::DependencyUnavailable`](herd_lb_core::Outcome::DependencyUnavailable) for the
///   endpoint, not a failure: `consecutive_failures` and `max_fails` do not move, so the
///   endpoint is not ejected (and its latency is not sampled);
/// - counts it in `herd_lb_requests_total{endpoint, outcome="dependency_unavailable"}` and in
///   `herd_lb_dependency_unavailable_total{dependency}` (the token lowercased; `other` for a
///   value that is not a token of at most 32 characters);
/// - does not retry the request on another endpoint, which shares the dependency;
/// - passes the response on without the header, which is internal detail. It is dropped from
///   every other response too, where it means nothing.
///
/// A 5xx without it and every transport error still count against the endpoint, so an
/// instance that fails while its peers succeed is ejected as before. The instance is the one
/// that knows whether its failure is its own: where Envoy separates local-origin errors from
/// the upstream's and ejects on consecutive 5xx, this header separates, among the upstream's
/// 5xx, the ones that are no endpoint's fault.
pub const X_HERD_DEPENDENCY_UNAVAILABLE: HeaderName =
    HeaderName::from_static("x-herd-dependency-unavailable");

/// Whether `name` is [`X_HERD_DEPENDENCY_UNAVAILABLE`].
#[inline]
pub(crate) fn is_dependency_signal(name: &HeaderName) -> bool {
    // The length first: one load, and almost no other name has 29 bytes.
    name.as_str().len() == 29 && *name == X_HERD_DEPENDENCY_UNAVAILABLE
}

const HOP_BY_HOP: [HeaderName; 7] = [
    CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    TE,
    TRAILER,
    TRANSFER_ENCODING,
    UPGRADE,
];

/// Whether `name` is a hop-by-hop header of every message (not counting those a `Connection`
/// header names).
pub(crate) fn is_hop_by_hop(name: &HeaderName) -> bool {
    // Their lengths first: most names have none of these, and a length is one load.
    matches!(name.as_str().len(), 2 | 7 | 10 | 16 | 17) && HOP_BY_HOP.contains(name)
}

/// Whether `name` is one of the request headers that a client must not set for the endpoint
/// to read, because the proxy sets them or they are meant for it alone: framing (`Host` when
/// replaced, `Content-Length`, `Transfer-Encoding`, `Expect`, answered in front), the
/// forwarding headers written from what the proxy knows (`X-Forwarded-Proto`,
/// `X-Forwarded-Host`), RFC 7239's `Forwarded` (dropped rather than rewritten: herd sends the
/// `X-Forwarded-*` set, and a client's `Forwarded` passed on would be believed as the proxy's),
/// `Proxy-Authorization` (credentials for the proxy, never for the endpoint; RFC 9110 §11.7.2)
/// and hop-by-hop headers. `X-Forwarded-For` and `X-Real-IP` are not among them: a caller that
/// knows the peer replaces them too.
pub(crate) fn stripped_from_requests(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "host"
            | "content-length"
            | "transfer-encoding"
            | "expect"
            | "forwarded"
            | "proxy-authorization"
            | "x-forwarded-proto"
            | "x-forwarded-host"
    ) || is_hop_by_hop(name)
}

/// Whether a field named `name` must not come through in trailers, of a request or of a
/// response (RFC 9110 §6.5.1: fields whose evaluation is needed before the content, "such as
/// those that describe message framing, routing, authentication, request modifiers, response
/// controls, or content format"). Trailers arrive after the head has been acted on, so one of
/// these, merged by a recipient that reads trailers into its headers, would be acted on
/// unchecked: a `Set-Cookie` or `Authorization` added after every check has run. herd drops
/// them, with hop-by-hop fields, the forwarding headers the proxy sets and
/// [`X_HERD_DEPENDENCY_UNAVAILABLE`] (a signal for the proxy only). Trailers are rare, so a
/// plain match does.
pub(crate) fn forbidden_in_trailers(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        // framing and content format
        "content-length"
            | "transfer-encoding"
            | "trailer"
            | "content-type"
            | "content-encoding"
            | "content-range"
            | "content-language"
            | "content-location"
            // routing and forwarding
            | "host"
            | "forwarded"
            | "via"
            | "max-forwards"
            | "x-forwarded-for"
            | "x-forwarded-host"
            | "x-forwarded-proto"
            | "x-real-ip"
            // authentication and session state
            | "authorization"
            | "proxy-authorization"
            | "www-authenticate"
            | "proxy-authenticate"
            | "authentication-info"
            | "proxy-authentication-info"
            | "cookie"
            | "set-cookie"
            // request modifiers
            | "expect"
            | "range"
            | "if-match"
            | "if-none-match"
            | "if-modified-since"
            | "if-unmodified-since"
            | "if-range"
            // response controls
            | "age"
            | "cache-control"
            | "expires"
            | "date"
            | "location"
            | "pragma"
            | "retry-after"
            | "vary"
    ) || is_hop_by_hop(name)
        || is_dependency_signal(name)
}

/// Why a request's `Host` is refused (RFC 9112 §3.2: answered 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HostError {
    /// An HTTP/1.1 request without `Host`.
    Missing,
    /// More than one `Host` field line.
    Repeated,
    /// A `Host` (or an absolute-form target's authority) that is not `host[:port]`.
    Invalid,
}

impl HostError {
    /// The `reason` label of `herd_lb_client_errors_total`, and the answer's text.
    pub(crate) fn describe(self) -> (&'static str, &'static str) {
        match self {
            Self::Missing => ("host_missing", "missing Host header\n"),
            Self::Repeated => ("host_repeated", "more than one Host header\n"),
            Self::Invalid => ("host_invalid", "invalid Host header\n"),
        }
    }
}

/// What a byte of a `Host` is, for [`valid_host`]'s one pass.
const OTHER: u8 = 0;
const REG_NAME: u8 = 1;
const COLON: u8 = 2;
const PERCENT: u8 = 3;

/// Each byte's kind: `reg-name` takes unreserved and sub-delims (RFC 3986 §3.2.2) besides
/// pct-encoded bytes.
static HOST_BYTES: [u8; 256] = {
    let mut table = [OTHER; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = if c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            ) {
            REG_NAME
        } else if c == b':' {
            COLON
        } else if c == b'%' {
            PERCENT
        } else {
            OTHER
        };
        b += 1;
    }
    table
};

/// The longest host [`valid_host`] remembers.
const KEPT_HOST: usize = 64;

/// The host this thread found valid last.
struct LastHost {
    bytes: [u8; KEPT_HOST],
    /// `usize::MAX` while none is kept.
    len: usize,
}

thread_local! {
    static LAST_HOST: RefCell<LastHost> = const {
        RefCell::new(LastHost {
            bytes: [0; KEPT_HOST],
            len: usize::MAX,
        })
    };
}

/// Whether `value` is a valid `Host` (or authority of an absolute-form target) to act on:
/// `uri-host [ ":" port ]` (RFC 9112 §3.2, RFC 3986 §3.2.2), with no userinfo, a host that is
/// not empty (nginx refuses an empty one too, and there is nothing to forward) and a port of
/// 1 to 5 digits up to 65535. `uri-host` is a reg-name (which covers IPv4 addresses) or a
/// bracketed IPv6 address or IPvFuture literal.
///
/// This runs for every request, and a connection's requests name one host: the last valid one
/// is kept per thread (as [`ip_header_value`] keeps the last address), and comparing with it
/// costs a quarter of checking it again.
pub(crate) fn valid_host(value: &[u8]) -> bool {
    LAST_HOST.with_borrow_mut(|last| {
        if last.len == value.len() && last.bytes.get(..last.len) == Some(value) {
            return true;
        }
        let valid = check_host(value);
        if valid && let Some(kept) = last.bytes.get_mut(..value.len()) {
            kept.copy_from_slice(value);
            last.len = value.len();
        }
        valid
    })
}

/// [`valid_host`] without the kept host: one pass over the bytes with a table.
fn check_host(value: &[u8]) -> bool {
    if let [b'[', rest @ ..] = value {
        return valid_bracketed(rest);
    }
    let mut i = 0;
    while i < value.len() {
        match HOST_BYTES[usize::from(value[i])] {
            REG_NAME => i += 1,
            COLON => return i > 0 && valid_port(&value[i + 1..]),
            PERCENT if valid_pct(value, i) => i += 3,
            _ => return false,
        }
    }
    i > 0
}

/// Whether a `%` at `i` starts a pct-encoded byte (two hex digits).
fn valid_pct(value: &[u8], i: usize) -> bool {
    let hex = |j: usize| value.get(j).is_some_and(u8::is_ascii_hexdigit);
    hex(i + 1) && hex(i + 2)
}

/// After `[`: an IP literal, `]`, and an optional port.
#[cold]
fn valid_bracketed(rest: &[u8]) -> bool {
    let Some(end) = rest.iter().position(|&b| b == b']') else {
        return false;
    };
    valid_ip_literal(&rest[..end])
        && match &rest[end + 1..] {
            [] => true,
            [b':', port @ ..] => valid_port(port),
            _ => false,
        }
}

fn valid_ip_literal(literal: &[u8]) -> bool {
    match literal {
        // IPvFuture: "v" 1*HEXDIG "." 1*( unreserved / sub-delims / ":" )
        [b'v' | b'V', rest @ ..] => {
            let Some(dot) = rest.iter().position(|&b| b == b'.') else {
                return false;
            };
            let (version, tail) = (&rest[..dot], &rest[dot + 1..]);
            !version.is_empty()
                && version.iter().all(u8::is_ascii_hexdigit)
                && !tail.is_empty()
                && tail
                    .iter()
                    .all(|&b| matches!(HOST_BYTES[usize::from(b)], REG_NAME | COLON))
        }
        _ => std::str::from_utf8(literal).is_ok_and(|s| s.parse::<std::net::Ipv6Addr>().is_ok()),
    }
}

fn valid_port(port: &[u8]) -> bool {
    if !(1..=5).contains(&port.len()) {
        return false;
    }
    let mut n: u32 = 0;
    for &b in port {
        let digit = b.wrapping_sub(b'0');
        if digit > 9 {
            return false;
        }
        n = n * 10 + u32::from(digit);
    }
    n <= 65_535
}

/// The headers a message's `Connection` header names: hop-by-hop too (RFC 9110 §7.6.1). Those
/// hop-by-hop anyway (`keep-alive`, `upgrade`) are left out.
pub(crate) fn connection_named(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .filter_map(|name| HeaderName::from_bytes(name.trim_ascii()).ok())
        .filter(|name| !is_hop_by_hop(name))
        .collect()
}

/// Whether a `Connection` header of `headers` lists `token` (ASCII case-insensitive), as
/// `Connection: upgrade` does.
pub(crate) fn connection_lists(headers: &HeaderMap, token: &[u8]) -> bool {
    headers
        .get_all(CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

thread_local! {
    /// The address this thread formatted last, and its value.
    static LAST_IP: RefCell<Option<(IpAddr, HeaderValue)>> = const { RefCell::new(None) };
}

/// `ip` as a header value. This runs for every proxied request, and a connection's requests
/// share their client, so the last one formatted on this thread is kept: a clone of it is a
/// reference count, where formatting is a check and an allocation.
pub(crate) fn ip_header_value(ip: IpAddr) -> HeaderValue {
    LAST_IP.with_borrow_mut(|last| match last {
        Some((cached, value)) if *cached == ip => value.clone(),
        _ => {
            let value = format_ip(ip);
            *last = Some((ip, value.clone()));
            value
        }
    })
}

/// `ip` formatted, without `fmt` for IPv4.
fn format_ip(ip: IpAddr) -> HeaderValue {
    match ip {
        IpAddr::V4(v4) => {
            let mut buf = [0_u8; 15];
            let mut len = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[len] = b'.';
                    len += 1;
                }
                let digits = [octet / 100, octet / 10 % 10, octet % 10];
                let skip = if octet >= 100 {
                    0
                } else if octet >= 10 {
                    1
                } else {
                    2
                };
                for d in &digits[skip..] {
                    buf[len] = b'0' + d;
                    len += 1;
                }
            }
            HeaderValue::from_bytes(&buf[..len])
                .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
        }
        IpAddr::V6(_) => HeaderValue::from_str(&ip.to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_names_its_own_hop_by_hop_headers() {
        let mut h = HeaderMap::new();
        h.append(CONNECTION, HeaderValue::from_static("keep-alive, X-Secret"));
        h.append(CONNECTION, HeaderValue::from_static(" upgrade ,,bad name"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        assert_eq!(connection_named(&h), [HeaderName::from_static("x-secret")]);
        assert!(connection_named(&HeaderMap::new()).is_empty());
    }

    #[test]
    fn ip_values_match_display() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.30.40",
            "255.255.255.255",
            "1.100.9.99",
            "2001:db8::7",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(format_ip(ip), ip.to_string().as_str());
            assert_eq!(ip_header_value(ip), ip.to_string().as_str());
        }
    }

    #[test]
    fn the_kept_ip_value_follows_the_address() {
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for ip in [a, a, b, b, a, b] {
            assert_eq!(ip_header_value(ip), ip.to_string().as_str());
        }
    }

    #[test]
    fn hosts_are_valid_authorities_without_userinfo() {
        // Twice each: once checked, once (for a valid one) found as the kept host.
        for good in [
            "example.com",
            "example.com:8080",
            "EXAMPLE.com:1",
            "127.0.0.1",
            "127.0.0.1:65535",
            "[::1]",
            "[::1]:3000",
            "[2001:db8::7]:443",
            "[v1.fe80::a+en1]",
            "xn--bcher-kva.example",
            "a%20b",
            "sub_domain.example",
            "a!$&'()*+,;=b",
        ] {
            assert!(valid_host(good.as_bytes()), "{good}");
            assert!(valid_host(good.as_bytes()), "{good}");
            assert!(check_host(good.as_bytes()), "{good}");
        }
        for bad in [
            "",
            ":80",
            "example.com:",
            "example.com:65536",
            "example.com:123456",
            "example.com:8o",
            "user@example.com",
            "user:pw@example.com",
            "exa mple.com",
            "example.com/path",
            "example.com?q",
            "example.com#f",
            "a%2",
            "a%zz",
            "[::1",
            "::1",
            "[::1]x",
            "[::1]:",
            "[zz::1]",
            "[v.x]",
            "[v1.]",
            "ex\"ample",
            "ex\tample",
            "ex\u{e9}mple",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad:?}");
            assert!(!check_host(bad.as_bytes()), "{bad:?}");
            // A valid host kept before does not make a bad one pass.
            assert!(valid_host(b"example.com"));
            assert!(!valid_host(bad.as_bytes()), "{bad:?}");
        }
        let long = "a".repeat(KEPT_HOST + 1);
        assert!(valid_host(long.as_bytes()) && valid_host(long.as_bytes()));
        assert!(!valid_host(b"a\xffb"));
    }

    #[test]
    fn trailers_never_carry_framing_routing_or_credentials() {
        for name in [
            "set-cookie",
            "cookie",
            "authorization",
            "proxy-authorization",
            "host",
            "content-length",
            "transfer-encoding",
            "trailer",
            "connection",
            "te",
            "x-forwarded-for",
            "x-herd-dependency-unavailable",
            "cache-control",
            "location",
        ] {
            assert!(
                forbidden_in_trailers(&HeaderName::from_static(name)),
                "{name}"
            );
        }
        for name in ["grpc-status", "grpc-message", "x-checksum", "server-timing"] {
            assert!(
                !forbidden_in_trailers(&HeaderName::from_static(name)),
                "{name}"
            );
        }
    }

    #[test]
    fn every_hop_by_hop_name_is_known_as_one() {
        for name in HOP_BY_HOP {
            assert!(is_hop_by_hop(&name), "{name}");
        }
        for name in ["host", "x-te", "content-length", "accept"] {
            assert!(!is_hop_by_hop(&HeaderName::from_static(name)), "{name}");
        }
    }
}
