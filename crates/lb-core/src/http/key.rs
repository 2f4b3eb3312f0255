//! Request keys for consistent hashing of HTTP requests.

use http::Request;
use http::header::{COOKIE, HeaderName};

use super::client_ip::{TrustedProxies, client_ip};
use crate::snapshot::RequestKey;

/// Key = the client's IP (nginx `ip_hash`), believing `X-Forwarded-For` only from `trusted`.
pub fn by_client_ip<B>(
    trusted: TrustedProxies,
) -> impl Fn(&Request<B>) -> Option<RequestKey> + Send + Sync + 'static {
    move |req| client_ip(req, &trusted).map(|ip| RequestKey::of(&ip))
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
