//! Request keys for consistent hashing of HTTP requests.

use herd_lb_core::RequestKey;
use http::Request;
use http::header::{COOKIE, HeaderName};

use super::client_ip::{TrustedProxies, client_ip};

/// Key = the client's IP (nginx `ip_hash`), believing `X-Forwarded-For` only from `trusted`.
pub fn by_client_ip<B>(
    trusted: TrustedProxies,
) -> impl Fn(&Request<B>) -> Option<RequestKey> + Send + Sync + 'static {
    move |req| client_ip(req, &trusted).map(RequestKey::of_ip)
}

/// Key = the value of header `name` (e.g. `x-user-id`); no header, no key.
pub fn by_header<B>(
    name: HeaderName,
) -> impl Fn(&Request<B>) -> Option<RequestKey> + Send + Sync + 'static {
    move |req| {
        req.headers()
            .get(&name)
            .map(|v| RequestKey::of(v.as_bytes()))
    }
}

/// Key = the value of cookie `name` (sticky sessions); no cookie, no key.
pub fn by_cookie<B>(
    name: impl Into<String>,
) -> impl Fn(&Request<B>) -> Option<RequestKey> + Send + Sync + 'static {
    let name = name.into();
    move |req| {
        req.headers()
            .get_all(COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(cookie::Cookie::split_parse)
            .filter_map(Result::ok)
            .find(|c| c.name() == name)
            .map(|c| RequestKey::of(c.value()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::ClientAddr;

    #[test]
    fn keys_come_from_cookie_header_or_client_ip() {
        let mut req = Request::get("/")
            .header(COOKIE, "theme=dark; session=abc123")
            .header("x-user-id", "42")
            .body(())
            .unwrap();
        req.extensions_mut()
            .insert(ClientAddr("192.0.2.1:999".parse().unwrap()));
        assert_eq!(by_cookie("session")(&req), Some(RequestKey::of("abc123")));
        assert_eq!(by_cookie("missing")(&req), None);
        assert_eq!(
            by_header(HeaderName::from_static("x-user-id"))(&req),
            Some(RequestKey::of(b"42".as_slice()))
        );
        let ip: std::net::IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(
            by_client_ip(TrustedProxies::none())(&req),
            Some(RequestKey::of_ip(ip))
        );
        // The port does not matter: the same client keeps its key across connections.
        req.extensions_mut()
            .insert(ClientAddr("192.0.2.1:1000".parse().unwrap()));
        assert_eq!(
            by_client_ip(TrustedProxies::none())(&req),
            Some(RequestKey::of_ip(ip))
        );
    }
}
