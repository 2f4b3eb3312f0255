//! The plain listener's answer when every request should come over TLS: `308 Permanent
//! Redirect` to the same host, path and query on `https` (nginx's
//! `return 308 https://$host$request_uri;`).

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::net::{Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use herd_lb_core::Error;
use http::uri::Authority;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::Full;
use serde::Deserialize;
use tower::Service;

use crate::server::App;

/// Where [`HttpsRedirect`] sends clients.
///
/// ```
/// # use herd_gateway::tls::RedirectConfig;
/// let config: RedirectConfig = toml::from_str(r#"
///     https_port = 8443
///     hosts = ["example.com", "www.example.com"]
/// "#).unwrap();
/// assert_eq!(config.https_port, 8443);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedirectConfig {
    /// The HTTPS listener's port as clients reach it (default 443, left out of the URL).
    pub https_port: u16,
    /// The host names (or IP literals) redirected; a request for another host is answered
    /// `400` rather than sent anywhere. Default empty: any well-formed host, which is always
    /// the request's own (its `Host`, or the authority of an absolute-form target), so no
    /// request can point the redirect at a host other than the one it asked for.
    pub hosts: Vec<String>,
}

impl Default for RedirectConfig {
    fn default() -> Self {
        Self {
            https_port: 443,
            hosts: Vec::new(),
        }
    }
}

/// Answers every request `308` to `https://HOST[:PORT]/PATH?QUERY`, HOST taken from the request
/// and checked (a well-formed name or IP literal, no user info, one of
/// [`hosts`](RedirectConfig::hosts) when given), else `400`. 308 keeps the method and body, so a
/// `POST` is re-sent as a `POST`. Serve it on the plain listener with
/// [`ServerThread::start_with_limits`](crate::server::ServerThread::start_with_limits): it is an
/// [`App`].
///
/// ```
/// # use herd_gateway::tls::{HttpsRedirect, RedirectConfig};
/// # use tower::ServiceExt as _;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let redirect = HttpsRedirect::from_config(&RedirectConfig::default()).unwrap();
/// let req = http::Request::get("/cart?id=7").header("host", "shop.example:80").body(()).unwrap();
/// let res = redirect.oneshot(req).await.unwrap();
/// assert_eq!(res.status(), 308);
/// assert_eq!(res.headers()["location"], "https://shop.example/cart?id=7");
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct HttpsRedirect {
    /// `:PORT`, or empty for 443.
    port: Arc<str>,
    /// Lowercase allowed hosts; empty: any.
    hosts: Arc<[String]>,
}

impl HttpsRedirect {
    /// The redirect `config` describes.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for `https_port` 0 or a `hosts` entry that is not a host name or
    /// IP literal.
    pub fn from_config(config: &RedirectConfig) -> Result<Self, Error> {
        let port = match config.https_port {
            0 => {
                return Err(Error::InvalidConfig {
                    field: "redirect.https_port",
                    reason: "0 is not a port clients can reach".to_owned(),
                });
            }
            443 => String::new(),
            p => format!(":{p}"),
        };
        let mut hosts = Vec::with_capacity(config.hosts.len());
        for host in &config.hosts {
            if !valid_host(host) {
                return Err(Error::InvalidConfig {
                    field: "redirect.hosts",
                    reason: format!("{host:?}: not a host name or IP literal"),
                });
            }
            hosts.push(host.to_ascii_lowercase());
        }
        Ok(Self {
            port: port.into(),
            hosts: hosts.into(),
        })
    }

    /// To `port` on the request's own host, whichever it is (a config file's
    /// `listen[].redirect_https`, checked when the file was).
    #[cfg(feature = "axum")]
    pub(crate) fn to_port(port: u16) -> Self {
        let port = match port {
            443 => String::new(),
            p => format!(":{p}"),
        };
        Self {
            port: port.into(),
            hosts: Arc::from([]),
        }
    }

    /// `308` to the request's HTTPS location, or `400` when its host is missing, malformed or
    /// not allowed.
    pub(crate) fn respond<B>(&self, req: &Request<B>) -> Response<Full<Bytes>> {
        match self.location(req) {
            Some(location) => answer(StatusCode::PERMANENT_REDIRECT, Some(location)),
            None => answer(StatusCode::BAD_REQUEST, None),
        }
    }

    /// The `Location` for `req`, or `None` when its host is missing, malformed or not allowed.
    fn location<B>(&self, req: &Request<B>) -> Option<String> {
        // An absolute-form target's authority wins over `Host` (RFC 9112 3.2.2); HTTP/2's
        // `:authority` arrives there too.
        let authority = match req.uri().authority() {
            Some(a) => a.clone(),
            None => {
                let host = req.headers().get_all(header::HOST);
                let mut values = host.iter();
                let (Some(value), None) = (values.next(), values.next()) else {
                    return None;
                };
                Authority::try_from(value.as_bytes()).ok()?
            }
        };
        // `Authority` accepts `user@host`: a redirect must never carry it.
        if authority.as_str().contains('@') {
            return None;
        }
        let host = authority.host().to_ascii_lowercase();
        if !valid_host(&host) || (!self.hosts.is_empty() && !self.hosts.contains(&host)) {
            return None;
        }
        let path = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .filter(|p| p.starts_with('/'))
            .unwrap_or("/");
        Some(format!("https://{host}{}{path}", self.port))
    }
}

/// A DNS name (letters, digits, `-`, `.`, at most 253 bytes), an IPv4 address (the same
/// characters), or a bracketed IPv6 literal.
fn valid_host(host: &str) -> bool {
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6.parse::<Ipv6Addr>().is_ok();
    }
    !host.is_empty()
        && host.len() <= 253
        && !host.starts_with(['.', '-'])
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

fn answer(status: StatusCode, location: Option<String>) -> Response<Full<Bytes>> {
    let body = match status {
        StatusCode::PERMANENT_REDIRECT => Bytes::new(),
        _ => Bytes::from_static(b"{\"error\":\"missing or unknown host\"}"),
    };
    let mut res = Response::new(Full::new(body));
    *res.status_mut() = status;
    if let Some(location) = location.and_then(|l| HeaderValue::try_from(l).ok()) {
        res.headers_mut().insert(header::LOCATION, location);
    } else if status != StatusCode::PERMANENT_REDIRECT {
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    res
}

impl<B> Service<Request<B>> for HttpsRedirect {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        ready(Ok(self.respond(&req)))
    }
}

/// Every connection gets the same redirect.
impl App for HttpsRedirect {
    type Service = HttpsRedirect;
    type Body = Full<Bytes>;

    fn connection(&self, _peer: SocketAddr) -> Self::Service {
        self.clone()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn location(redirect: &HttpsRedirect, target: &str, host: Option<&str>) -> Option<String> {
        let mut req = Request::get(target);
        if let Some(host) = host {
            req = req.header(header::HOST, host);
        }
        redirect.location(&req.body(()).unwrap())
    }

    #[test]
    fn the_location_keeps_host_path_and_query_and_sets_the_port() {
        let any = HttpsRedirect::from_config(&RedirectConfig::default()).unwrap();
        assert_eq!(
            location(&any, "/a/b?x=1&y", Some("Example.COM:8080")).as_deref(),
            Some("https://example.com/a/b?x=1&y")
        );
        assert_eq!(
            location(&any, "/", Some("[::1]:80")).as_deref(),
            Some("https://[::1]/")
        );
        let on_8443 = HttpsRedirect::from_config(&RedirectConfig {
            https_port: 8443,
            hosts: vec!["example.com".to_owned()],
        })
        .unwrap();
        assert_eq!(
            location(&on_8443, "//evil.example/x", Some("example.com")).as_deref(),
            Some("https://example.com:8443//evil.example/x")
        );
        // An absolute-form target names the host (and must be an allowed one).
        assert_eq!(
            location(&on_8443, "http://example.com/p", Some("other.example")).as_deref(),
            Some("https://example.com:8443/p")
        );
    }

    #[test]
    fn bad_or_foreign_hosts_get_no_location() {
        let any = HttpsRedirect::from_config(&RedirectConfig::default()).unwrap();
        for host in [
            None,
            Some(""),
            Some("evil.example@good.example"),
            Some("a b"),
            Some("good.example/evil"),
            Some("[not-v6]"),
            Some("-x.example"),
        ] {
            assert_eq!(location(&any, "/", host), None, "{host:?}");
        }
        let only = HttpsRedirect::from_config(&RedirectConfig {
            https_port: 443,
            hosts: vec!["good.example".to_owned()],
        })
        .unwrap();
        assert_eq!(location(&only, "/", Some("evil.example")), None);
        assert_eq!(
            location(&only, "http://evil.example/", Some("good.example")),
            None
        );
        let mut twice = Request::get("/");
        twice = twice
            .header("host", "good.example")
            .header("host", "evil.example");
        assert_eq!(only.location(&twice.body(()).unwrap()), None);
    }

    #[test]
    fn the_config_is_checked() {
        let zero = RedirectConfig {
            https_port: 0,
            hosts: vec![],
        };
        assert!(HttpsRedirect::from_config(&zero).is_err());
        let bad = RedirectConfig {
            https_port: 443,
            hosts: vec!["bad host".to_owned()],
        };
        let err = HttpsRedirect::from_config(&bad).unwrap_err();
        assert!(err.to_string().contains("redirect.hosts"), "{err}");
    }
}
