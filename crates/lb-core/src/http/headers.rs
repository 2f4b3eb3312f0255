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

/// Removes hop-by-hop headers (RFC 9110 §7.6.1), including those the `Connection` header names.
pub(crate) fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one pass over the names is cheaper than seven removals.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
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

/// Appends `peer` to `X-Forwarded-For` (nginx `$proxy_add_x_forwarded_for`); an incoming value
/// is kept only when it came from a trusted proxy. `value` is `peer` as a header value.
pub(crate) fn append_forwarded_for(
    headers: &mut HeaderMap,
    peer: IpAddr,
    value: HeaderValue,
    keep_incoming: bool,
) {
    if !keep_incoming || !headers.contains_key(&X_FORWARDED_FOR) {
        headers.insert(X_FORWARDED_FOR, value);
        return;
    }
    let mut joined = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(", ");
    if !joined.is_empty() {
        joined.push_str(", ");
    }
    joined.push_str(&peer.to_string());
    // `insert` replaces every incoming value.
    headers.insert(
        X_FORWARDED_FOR,
        HeaderValue::from_str(&joined).unwrap_or(value),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_including_connection_named_ones() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive, x-secret"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn forwarded_for_appends_or_replaces() {
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR, HeaderValue::from_static("1.1.1.1"));
        let add = |h: &mut HeaderMap, ip: IpAddr, keep| {
            append_forwarded_for(h, ip, ip_header_value(ip), keep)
        };
        add(&mut h, [10, 0, 0, 2].into(), true);
        assert_eq!(h[&X_FORWARDED_FOR], "1.1.1.1, 10.0.0.2");
        add(&mut h, [9, 9, 9, 9].into(), false);
        assert_eq!(h[&X_FORWARDED_FOR], "9.9.9.9");
        let mut h = HeaderMap::new();
        add(&mut h, "::1".parse().unwrap(), true);
        assert_eq!(h[&X_FORWARDED_FOR], "::1");
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

    #[test]
    fn messages_without_hop_by_hop_headers_are_left_alone() {
        let mut h = HeaderMap::new();
        h.insert("x-kept", HeaderValue::from_static("1"));
        h.insert(http::header::HOST, HeaderValue::from_static("a"));
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2);
        h.insert(TE, HeaderValue::from_static("trailers"));
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2);
    }
}
