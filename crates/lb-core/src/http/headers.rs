//! Proxy header handling: hop-by-hop removal and `X-Forwarded-*`.

use std::cell::RefCell;
use std::net::IpAddr;

use http::HeaderMap;
use http::header::{CONNECTION, HeaderName, HeaderValue, TE, TRAILER, TRANSFER_ENCODING, UPGRADE};

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
pub(crate) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub(crate) const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// `x-herd-dependency-unavailable`: the response header by which an endpoint says it failed
/// because a dependency that every endpoint shares is unavailable (PostgreSQL failing over, a
/// Redis Cluster failover), not by a fault of its own. Its value is a short token naming the
/// dependency: `postgres`, `redis`.
///
/// An instance sets it on its 503 (any 5xx counts), best with `Retry-After`. On such a response
/// [`HttpUpstream`](super::HttpUpstream):
/// - records [`Outcome::DependencyUnavailable`](crate::Outcome::DependencyUnavailable) for the
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
    fn every_hop_by_hop_name_is_known_as_one() {
        for name in HOP_BY_HOP {
            assert!(is_hop_by_hop(&name), "{name}");
        }
        for name in ["host", "x-te", "content-length", "accept"] {
            assert!(!is_hop_by_hop(&HeaderName::from_static(name)), "{name}");
        }
    }
}
