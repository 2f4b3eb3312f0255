//! The HTTP upstream: forwards requests to the picked endpoint over pooled connections.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use herd_lb_core::health::{ActiveHealth, ActiveHealthConfig, TcpProbe};
use herd_lb_core::{
    Balancer, BalancerConfig, EndpointInfo, Error, Outcome, PickContext, PickError, Picked,
    RequestKey, RetryPolicy,
};
use http::header::{CONNECTION, HOST, HeaderName, HeaderValue, RETRY_AFTER, UPGRADE};
use http::uri::Authority;
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Body;
use http_body_util::BodyExt;
use serde::Deserialize;
use tower_service::Service;

use super::body::{ClientBodyError, ClientBodyErrorKind, ProxyBody, UpstreamBody};
use super::client::{
    Timeouts, Transport, TransportSettings, UpstreamProtocol, UpstreamScheme, UpstreamTlsConfig,
};
use super::client_ip::{TrustedProxies, client_behind, peer_addr};
use super::future::{EndpointFuture, ResponseFuture};
use super::h1::{
    Forwarding, Prefix, RequestFraming, end_head, write_head, write_line, write_request_line,
};
use super::headers::{
    HostError, X_FORWARDED_FOR, X_HERD_DEPENDENCY_UNAVAILABLE, X_REAL_IP, connection_lists,
    connection_named, ip_header_value, is_hop_by_hop, valid_host,
};
use super::key::{by_cookie, by_header};
use super::pool::{EndpointPool, Message, PooledBody};
use super::upgrade::{UpstreamSide, tunnel};
use crate::BoxError;
use crate::health::HttpProbe;

/// What went wrong in one attempt to one endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum UpstreamErrorKind {
    /// No connection: the request was not sent (safe to retry anything).
    Connect,
    /// The TLS handshake with the endpoint failed (its certificate is not trusted, does not
    /// name it, or the two sides share no protocol): the request was not sent. The
    /// endpoint's side (or the upstream's `tls` settings), never the client's: 502, retried
    /// on another endpoint as a connect failure is.
    Tls,
    /// No response head within the attempt timeout.
    Timeout,
    /// The request failed after it may have been sent.
    Request,
    /// The client's request body failed while it was streamed to the endpoint (broke off, did
    /// not parse, too large, too slow; the source is a [`ClientBodyError`]): the client's fault,
    /// not the endpoint's. Answered 400, 413 or 408, never retried, never counted against the
    /// endpoint.
    ClientBody,
}

impl fmt::Display for UpstreamErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Connect => "connect failed",
            Self::Tls => "TLS handshake failed",
            Self::Timeout => "timed out",
            Self::Request => "request failed",
            Self::ClientBody => "client request body failed",
        })
    }
}

/// Failure of one attempt, naming the endpoint.
#[derive(Debug, thiserror::Error)]
#[error("upstream {endpoint}: {kind}")]
pub struct UpstreamError {
    endpoint: String,
    kind: UpstreamErrorKind,
    #[source]
    source: Option<BoxError>,
}

impl UpstreamError {
    pub(crate) fn new(
        endpoint: &Authority,
        kind: UpstreamErrorKind,
        source: Option<BoxError>,
    ) -> Self {
        Self {
            endpoint: endpoint.to_string(),
            kind,
            source,
        }
    }

    /// The endpoint (`host:port`).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// What went wrong.
    pub fn kind(&self) -> UpstreamErrorKind {
        self.kind
    }

    /// The client's body error, when the client's request body is what failed
    /// ([`UpstreamErrorKind::ClientBody`]): its [`status`](ClientBodyError::status) is the answer.
    pub fn client_body(&self) -> Option<&ClientBodyError> {
        if self.kind != UpstreamErrorKind::ClientBody {
            return None;
        }
        self.source.as_deref()?.downcast_ref::<ClientBodyError>()
    }
}

/// One endpoint: keep-alive HTTP/1.1 connections to one `host:port`, pooled per thread.
#[derive(Clone)]
pub struct HttpEndpoint {
    // One `Arc`: the balancer clones the endpoint's service for every request.
    inner: Arc<EndpointInner>,
}

struct EndpointInner {
    pool: Arc<EndpointPool>,
    /// hyper's client, when the endpoints speak HTTPS or HTTP/2 (else the pool's own HTTP/1.1).
    client: Option<Arc<Transport>>,
    client_body_timeout: Duration,
    /// `Host` sent upstream (the authority), or none to keep the client's.
    host: Option<HeaderValue>,
    /// `X-Forwarded-Proto` as configured; none: `http` (a request sent to the endpoint directly
    /// says nothing of its connection, and its URI's scheme is the client's claim).
    forwarded_proto: Option<HeaderValue>,
    timeout: Duration,
    /// The endpoint's authority to put in its responses ([`HttpUpstreamConfig::record_endpoint`]).
    answered_by: Option<Authority>,
}

impl fmt::Debug for HttpEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpEndpoint")
            .field("authority", self.inner.pool.authority())
            .field("timeout", &self.inner.timeout)
            .finish_non_exhaustive()
    }
}

impl Service<Request<UpstreamBody>> for HttpEndpoint {
    type Response = Response<PooledBody>;
    type Error = UpstreamError;
    type Future = EndpointFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), UpstreamError>> {
        Poll::Ready(Ok(()))
    }

    /// Sends `req` with its `Host` pointed at this endpoint (unless the upstream preserves the
    /// client's), the client's host in `X-Forwarded-Host` and `X-Forwarded-Proto` set. These
    /// are written into the request head as it is written, per attempt, rather than set in the
    /// request's header map: the copy a retry keeps holds fewer entries, and no map is changed.
    fn call(&mut self, req: Request<UpstreamBody>) -> Self::Future {
        let inner = &*self.inner;
        if let Some(client) = &inner.client {
            return self.call_client(req, client);
        }
        let (parts, body) = req.into_parts();
        let full = body.full_bytes();
        let len = full.map_or_else(|| body.size_hint().exact(), |b| Some(b.len() as u64));
        let framing = RequestFraming::new(&parts.method, len);
        let mut bytes = Vec::with_capacity(320 + full.map_or(0, <[u8]>::len));
        match body.prefix() {
            // Written by `HttpUpstream` before the pick: all but the endpoint's `Host`.
            Some(prefix) => {
                bytes.extend_from_slice(&prefix.bytes);
                if !prefix.has_host {
                    let host = inner.host.as_ref().map_or_else(
                        || inner.pool.authority().as_str().as_bytes(),
                        HeaderValue::as_bytes,
                    );
                    write_line(&mut bytes, b"host", host);
                }
            }
            None => self.write_head(&mut bytes, &parts),
        }
        end_head(&mut bytes, framing);
        let resendable = full.is_some() && is_idempotent(&parts.method);
        let stream = match full {
            Some(data) => {
                bytes.extend_from_slice(data);
                None
            }
            None => Some(body),
        };
        let msg = Message {
            bytes,
            stream,
            framing,
            head_request: parts.method == Method::HEAD,
            resendable,
        };
        EndpointFuture::new(
            Box::pin(Arc::clone(&inner.pool).send(msg, inner.timeout)),
            inner.answered_by.clone(),
        )
    }
}

impl HttpEndpoint {
    /// The request's head for this endpoint, all but its framing and final empty line: the
    /// one written before the pick with this endpoint's `Host`, or one written now.
    fn head(&self, parts: &http::request::Parts, body: &UpstreamBody) -> Vec<u8> {
        let inner = &*self.inner;
        let mut bytes = Vec::with_capacity(320);
        match body.prefix() {
            Some(prefix) => {
                bytes.extend_from_slice(&prefix.bytes);
                if !prefix.has_host {
                    let host = inner.host.as_ref().map_or_else(
                        || inner.pool.authority().as_str().as_bytes(),
                        HeaderValue::as_bytes,
                    );
                    write_line(&mut bytes, b"host", host);
                }
            }
            None => self.write_head(&mut bytes, parts),
        }
        bytes
    }

    /// An exchange through hyper's client (HTTPS, HTTP/2): out of line, so that the plain
    /// HTTP/1.1 call pays one branch for it.
    #[inline(never)]
    fn call_client(&self, req: Request<UpstreamBody>, client: &Arc<Transport>) -> EndpointFuture {
        let (parts, body) = req.into_parts();
        let head = self.head(&parts, &body);
        let timeouts = Timeouts {
            request: self.inner.timeout,
            client_body: self.inner.client_body_timeout,
        };
        let authority = self.inner.pool.authority().clone();
        EndpointFuture::new(
            Box::pin(Arc::clone(client).send(authority, head, body, timeouts)),
            self.inner.answered_by.clone(),
        )
    }

    /// Sends an upgrade request (its head asks for it, its body is buffered), never again once
    /// sent: on a connection of its own on the HTTP/1.1 path, through hyper's client over TLS.
    fn upgrade(
        &self,
        req: Request<UpstreamBody>,
    ) -> Pin<Box<dyn Future<Output = Result<Response<PooledBody>, UpstreamError>> + Send>> {
        let inner = &*self.inner;
        let (parts, body) = req.into_parts();
        let mut head = self.head(&parts, &body);
        if let Some(client) = &inner.client {
            let timeouts = Timeouts {
                request: inner.timeout,
                client_body: inner.client_body_timeout,
            };
            let authority = inner.pool.authority().clone();
            return Box::pin(Arc::clone(client).send(authority, head, body, timeouts));
        }
        let data = body.full_bytes().unwrap_or_default();
        let framing = RequestFraming::new(&parts.method, Some(data.len() as u64));
        end_head(&mut head, framing);
        head.extend_from_slice(data);
        Box::pin(Arc::clone(&inner.pool).send_upgrade(head, inner.timeout))
    }

    /// The head of a request that came without one written before the pick (one sent to this
    /// endpoint directly): its own headers, `Host` pointed here unless the client's is kept,
    /// and the forwarding headers the endpoint sets. Nothing here can answer the client, so a
    /// host that is not valid is left out of `X-Forwarded-Host` rather than refused.
    fn write_head(&self, out: &mut Vec<u8>, parts: &http::request::Parts) {
        let inner = &*self.inner;
        let proto: &[u8] = inner
            .forwarded_proto
            .as_ref()
            .map_or(b"http", HeaderValue::as_bytes);
        let client_host = client_host(parts).filter(|host| valid_host(host));
        let host = match &inner.host {
            Some(host) => Some(host.as_bytes()),
            None if parts.headers.contains_key(HOST) => None,
            None => Some(client_host.unwrap_or(inner.pool.authority().as_str().as_bytes())),
        };
        let forwarding = Forwarding {
            host,
            proto,
            forwarded_host: client_host,
        };
        write_head(out, &parts.method, &parts.uri, &parts.headers, &forwarding);
    }
}

/// The client's host: the URI's authority (an absolute-form target's, or HTTP/2's
/// `:authority`), which RFC 9112 §3.2.2 puts before `Host`, else its `Host`.
fn client_host(parts: &http::request::Parts) -> Option<&[u8]> {
    parts
        .uri
        .authority()
        .map(|a| a.as_str().as_bytes())
        .or_else(|| parts.headers.get(HOST).map(HeaderValue::as_bytes))
}

/// Retries for proxied HTTP: connect failures always (the request was not sent), and for
/// idempotent methods also timeouts, other transport errors and the configured statuses.
/// Only buffered bodies can be sent again. Never retried: a failure of the client's own body,
/// and a response carrying [`X_HERD_DEPENDENCY_UNAVAILABLE`] (every endpoint shares the
/// dependency, so another would fail alike).
#[derive(Debug, Clone)]
pub struct HttpRetry {
    statuses: Vec<StatusCode>,
}

impl HttpRetry {
    /// Retry idempotent requests on these statuses (e.g. 502, 503, 504).
    pub fn new(statuses: Vec<StatusCode>) -> Self {
        Self { statuses }
    }
}

pub(crate) fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

impl RetryPolicy<Request<UpstreamBody>, Response<PooledBody>, UpstreamError> for HttpRetry {
    fn clone_request(&self, req: &Request<UpstreamBody>) -> Option<Request<UpstreamBody>> {
        let body = req.body().try_clone()?;
        let mut copy = Request::new(body);
        if copy.body().prefix().is_some() {
            // The head is written: the method alone decides retries.
            *copy.method_mut() = req.method().clone();
            return Some(copy);
        }
        *copy.method_mut() = req.method().clone();
        *copy.uri_mut() = req.uri().clone();
        *copy.version_mut() = req.version();
        *copy.headers_mut() = req.headers().clone();
        Some(copy)
    }

    fn should_retry(
        &self,
        req: &Request<UpstreamBody>,
        result: Result<&Response<PooledBody>, &UpstreamError>,
    ) -> bool {
        match result {
            Err(e) if matches!(e.kind, UpstreamErrorKind::Connect | UpstreamErrorKind::Tls) => true,
            Err(e) if e.kind == UpstreamErrorKind::ClientBody => false,
            Err(_) => is_idempotent(req.method()),
            Ok(res) => {
                is_idempotent(req.method())
                    && self.statuses.contains(&res.status())
                    && !res.headers().contains_key(X_HERD_DEPENDENCY_UNAVAILABLE)
            }
        }
    }
}

/// Which request attribute consistent hashing uses.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HashKeyConfig {
    /// The client's IP (nginx `ip_hash`).
    ClientIp,
    /// A header's value.
    Header(String),
    /// A cookie's value.
    Cookie(String),
}

/// Active checks of an HTTP upstream: `GET path` expecting 2xx, or a TCP connect without `path`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct HttpActiveHealth {
    /// Path to GET (e.g. `/health`); none: TCP connect check.
    #[serde(default)]
    pub path: Option<String>,
    /// Interval, jitter, timeout, rise and fall.
    #[serde(flatten)]
    pub check: ActiveHealthConfig,
}

/// Settings of an [`HttpUpstream`] (nginx `upstream` + `proxy_*` equivalents). Every field has a
/// default.
///
/// ```
/// use herd_gateway::http::HttpUpstreamConfig;
///
/// let config: HttpUpstreamConfig = toml::from_str(r#"
///     policy = "p2c"
///     endpoints = [{ address = "127.0.0.1:8001" }, { address = "127.0.0.1:8002", weight = 2 }]
///     connect_timeout = "3s"
///     trusted_proxies = ["10.0.0.0/8"]
///     [outlier_detection]
///     max_fails = 3
///     fail_timeout = "30s"
///     [active_health]
///     path = "/health"
///     interval = "30s"
/// "#).unwrap();
/// assert_eq!(config.pool_max_idle_per_host, 32);
/// assert_eq!(config.balancer.retries.max_attempts, 3);
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct HttpUpstreamConfig {
    /// Policy, endpoints, passive health, slow start, caps, retries.
    #[serde(flatten)]
    pub balancer: BalancerConfig,
    /// `proxy_connect_timeout`. Default 5 s.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// The endpoint's time to answer (`proxy_read_timeout`, and `proxy_send_timeout` for a
    /// streamed body): per attempt, the time to the response head, counted from the start for
    /// a request without a streamed body and from the body's end for one with it (an upload
    /// takes the client's time, which is not the endpoint's); the longest wait for the endpoint
    /// to take each piece of a streamed request body; and the longest wait for each further
    /// piece of the response body (a body that stalls longer ends with an error). Past it the
    /// client gets 504. Default 60 s.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// The longest wait for each further piece of the client's request body, reset whenever one
    /// arrives (nginx's `client_body_timeout`, whose default this is too): a slow upload that
    /// keeps coming is forwarded however long it takes in all, and one that stalls longer than
    /// this is answered 408 Request Timeout, a client error that no endpoint is blamed for. It
    /// applies alike to bodies buffered before the pick and to bodies streamed to the endpoint.
    /// The connection's own limits (a header read timeout, a cap on connections) belong to the
    /// server in front. Default 60 s.
    #[serde(with = "humantime_serde")]
    pub client_body_timeout: Duration,
    /// Idle keep-alive connections kept per endpoint and per thread that sends requests
    /// (`keepalive`, which nginx also counts per worker process). Default 32.
    pub pool_max_idle_per_host: usize,
    /// How long an idle connection is kept (`keepalive_timeout`). Default 60 s.
    #[serde(with = "humantime_serde")]
    pub pool_idle_timeout: Duration,
    /// Request bodies up to this size are buffered so they can be retried; larger or unsized
    /// bodies are streamed and never retried. Default 64 KiB.
    pub retry_buffer_limit: usize,
    /// Statuses retried for idempotent requests. Default 502, 503, 504.
    pub retry_statuses: Vec<u16>,
    /// Proxies whose `X-Forwarded-For` is believed. Default none.
    pub trusted_proxies: TrustedProxies,
    /// Keep the client's `Host` instead of the endpoint's authority. Default false.
    pub preserve_host: bool,
    /// `X-Forwarded-Proto` value for every request, for when the scheme the client used is
    /// known to the operator and not to this server (TLS ended by a load balancer in front).
    /// Default none: the scheme of the connection the request came on, `https` for one the
    /// server marks as TLS ([`HttpUpstream::with_tls`]) and `http` otherwise. Never the
    /// request's own claim (an absolute-form `GET https://...` over plain TCP, or a client's
    /// `X-Forwarded-Proto`).
    pub forwarded_proto: Option<String>,
    /// Request key for `consistent_hash`. Default none (P2C fallback).
    pub hash_key: Option<HashKeyConfig>,
    /// Active health checks. Default off.
    pub active_health: Option<HttpActiveHealth>,
    /// `http` (default) or `https` to the instances (nginx's `proxy_pass https://`), with
    /// [`tls`](Self::tls). Plain HTTP/1.1 is the gateway's own pooled exchange; HTTPS and
    /// HTTP/2 go through hyper's pooled client (hyper-rustls).
    pub scheme: UpstreamScheme,
    /// `http1` (default), `h2` (ALPN `h2` over TLS, or h2c by prior knowledge over plain TCP),
    /// or `auto` (ALPN picks; `https` only).
    pub protocol: UpstreamProtocol,
    /// The instances' CA, the name their certificates carry (and SNI), the gateway's client
    /// certificate. Default: the system's roots, the endpoint's host, none.
    pub tls: UpstreamTlsConfig,
    /// How long an upgraded connection (a WebSocket) may carry nothing either way before the
    /// gateway closes it (nginx's `proxy_read_timeout` on an upgraded connection, HAProxy's
    /// `timeout tunnel`). Default 60 s, nginx's: a WebSocket that pings more often stays open.
    #[serde(with = "humantime_serde")]
    pub upgrade_idle_timeout: Duration,
    /// Put the endpoint that answered in each response's extensions as [`AnsweredBy`], for an
    /// access log (nginx's `$upstream_addr`; the gateway's `observe.access_log` turns it on).
    /// Default off: it costs an allocation per response.
    pub record_endpoint: bool,
    /// Endpoints from a DNS name's A/AAAA records, re-resolved on an interval (nginx Plus's
    /// `server NAME resolve`, Envoy's `STRICT_DNS` cluster): every address is an endpoint
    /// beside those listed, a new one joins, a vanished one drains, and the others keep their
    /// state; a failed or empty answer keeps the last good set. Default none.
    #[cfg(feature = "dns")]
    #[cfg_attr(docsrs, doc(cfg(feature = "dns")))]
    pub dns: Option<herd_lb_core::discover::DnsConfig>,
}

impl Default for HttpUpstreamConfig {
    fn default() -> Self {
        Self {
            balancer: BalancerConfig::default(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(60),
            client_body_timeout: Duration::from_secs(60),
            pool_max_idle_per_host: 32,
            pool_idle_timeout: Duration::from_secs(60),
            retry_buffer_limit: 64 * 1024,
            retry_statuses: vec![502, 503, 504],
            trusted_proxies: TrustedProxies::none(),
            preserve_host: false,
            forwarded_proto: None,
            hash_key: None,
            active_health: None,
            scheme: UpstreamScheme::Http,
            protocol: UpstreamProtocol::Http1,
            tls: UpstreamTlsConfig::default(),
            upgrade_idle_timeout: Duration::from_secs(60),
            record_endpoint: false,
            #[cfg(feature = "dns")]
            dns: None,
        }
    }
}

/// Which endpoint answered a response, in its extensions when
/// [`HttpUpstreamConfig::record_endpoint`] is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnsweredBy(pub Authority);

type Inner = Balancer<Authority, HttpEndpoint, Request<UpstreamBody>>;

/// A reverse-proxy service: balances `http::Request`s over HTTP endpoints.
///
/// Per request: removes hop-by-hop headers, sets `X-Forwarded-For` (appending the peer; an incoming
/// value is kept only from trusted proxies), `X-Real-IP`, `X-Forwarded-Proto` and
/// `X-Forwarded-Host`, points the URI (and by default `Host`) at the picked endpoint, streams the
/// body (buffering small bodies so they can be retried) and forwards over pooled keep-alive
/// connections. Failures become responses, as an HTTP layer should answer: 503 when no endpoint
/// can take the request, 504 on an attempt timeout, 502 on other upstream failures, and 400,
/// 413 or 408 when the client's own request body fails (see [`ClientBodyError`]; never counted
/// against an endpoint). Their bodies say what happened ("upstream connect failed") and never
/// name an endpoint; the endpoint and the error chain are logged (`tracing`). An endpoint's 5xx
/// carrying [`X_HERD_DEPENDENCY_UNAVAILABLE`] is passed on without that header and counted
/// apart, not against the endpoint (see the [module docs](super)).
///
/// Forwarding headers come from the proxy alone, never from the client's claims:
/// - `X-Forwarded-Proto` is the configured [`forwarded_proto`](HttpUpstreamConfig::forwarded_proto),
///   else the scheme of the connection (`https` when the server marked it with
///   [`with_tls`](Self::with_tls), `http` otherwise), never the request URI's scheme;
/// - `X-Forwarded-Host` (and `Host` with `preserve_host`) is the validated host: the
///   absolute-form target's authority, else `Host` (RFC 9112 §3.2.2);
/// - the client's `X-Forwarded-Proto`, `X-Forwarded-Host`, `Forwarded` (RFC 7239) and
///   `Proxy-Authorization` are dropped (`Forwarded` is not rewritten: herd speaks the
///   `X-Forwarded-*` set, and a client's `Forwarded` passed on would read as the proxy's word).
///
/// `Host` is checked as RFC 9112 §3.2 asks of a server: an HTTP/1.1 request without one, a
/// request with two `Host` lines, or one whose `Host` (or absolute-form authority) is not a valid
/// `host[:port]` is answered 400 here, before any endpoint is picked, and counted in
/// `herd_lb_client_errors_total{reason}` (`host_missing`, `host_repeated`, `host_invalid`).
/// Trailers of a streamed request body go on without the fields a trailer may not carry
/// (`Set-Cookie`, `Authorization`, `Host`, framing, hop-by-hop: RFC 9110 §6.5.1), and so do
/// the endpoint's response trailers.
///
/// Instances that speak HTTPS or HTTP/2 ([`scheme`](HttpUpstreamConfig::scheme),
/// [`protocol`](HttpUpstreamConfig::protocol), [`tls`](HttpUpstreamConfig::tls)) are reached
/// through hyper's pooled client, with all of the above alike; a failed TLS handshake is
/// [`UpstreamErrorKind::Tls`] (502). An HTTP/1.1 upgrade (a WebSocket: `Connection: upgrade`
/// and `Upgrade`, on a server that hands over the connection, as axum's `serve` and
/// [`ServerThread`](crate::server::ServerThread) do) keeps both headers; an endpoint's `101` is
/// answered `101` and the two connections are spliced until either side closes or nothing
/// passes for [`upgrade_idle_timeout`](HttpUpstreamConfig::upgrade_idle_timeout). The open
/// connection holds its endpoint's in-flight slot (so it counts in least-outstanding picks and
/// `max_in_flight`, and a drain waits for it); an upgrade is sent to another endpoint only
/// when no connection could be made.
///
/// ```no_run
/// use axum::{Router, body::Body, extract::Request};
/// use herd_gateway::http::{HttpUpstream, HttpUpstreamConfig};
/// use tower::ServiceExt;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let config: HttpUpstreamConfig = toml::from_str(r#"
///     endpoints = [{ address = "127.0.0.1:3001" }, { address = "127.0.0.1:3002" }]
/// "#)?;
/// let upstream = HttpUpstream::from_config(&config)?;
/// let app = Router::new().fallback_service(
///     upstream.map_request(|req: Request| req.map(Body::new)),
/// );
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
/// axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>()).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct HttpUpstream {
    balancer: Inner,
    settings: Arc<Settings>,
    /// The connection's peer, when this copy serves one connection ([`HttpUpstream::with_peer`]).
    peer: Option<SocketAddr>,
    /// The connection is TLS ([`HttpUpstream::with_tls`]).
    tls: bool,
}

struct Settings {
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle_per_host: usize,
    request_timeout: Duration,
    client_body_timeout: Duration,
    preserve_host: bool,
    retry_buffer_limit: usize,
    trusted_proxies: TrustedProxies,
    forwarded_proto: Option<HeaderValue>,
    /// `hash_key = "client_ip"`: the pick reads `X-Real-IP` from the request's headers.
    hash_client_ip: bool,
    active_health: Option<ActiveHealth>,
    /// hyper's client for HTTPS or HTTP/2 endpoints; none for plain HTTP/1.1.
    transport: Option<Arc<Transport>>,
    /// Upgrades can pass (not to HTTP/2-only endpoints).
    upgrades: bool,
    upgrade_idle_timeout: Duration,
    /// The balancer's request key, for upgrades (picked outside the balancer's call).
    key: Option<RequestKeyFn>,
    /// Attempts at an upgrade whose connection fails (`retries.max_attempts`).
    upgrade_attempts: usize,
    /// Responses say which endpoint answered ([`HttpUpstreamConfig::record_endpoint`]).
    record_endpoint: bool,
}

/// A request's key for consistent hashing.
type RequestKeyFn = Arc<dyn Fn(&Request<UpstreamBody>) -> Option<RequestKey> + Send + Sync>;

impl Drop for Settings {
    fn drop(&mut self) {
        if let Some(h) = &self.active_health {
            h.stop();
        }
    }
}

impl fmt::Debug for HttpUpstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpUpstream")
            .field("balancer", &self.balancer)
            .field("request_timeout", &self.settings.request_timeout)
            .finish_non_exhaustive()
    }
}

impl HttpUpstream {
    /// Builds the upstream, its endpoints and (if configured) its active health task, which needs
    /// a tokio runtime. Bad addresses, weights and settings are refused with the field named.
    pub fn from_config(config: &HttpUpstreamConfig) -> Result<Self, Error> {
        let mut statuses = Vec::new();
        for code in &config.retry_statuses {
            statuses.push(
                StatusCode::from_u16(*code).map_err(|_| Error::InvalidConfig {
                    field: "retry_statuses",
                    reason: format!("{code} is not an HTTP status"),
                })?,
            );
        }
        // Blame where the fault is: the client's body, and a dependency every endpoint shares,
        // are no endpoint's failure (the success path is the first arm, one status check).
        let classify = |result: Result<&Response<PooledBody>, &UpstreamError>| match result {
            Ok(res) if !res.status().is_server_error() => Outcome::Success,
            Ok(res) if res.headers().contains_key(X_HERD_DEPENDENCY_UNAVAILABLE) => {
                Outcome::DependencyUnavailable
            }
            Err(e) if e.kind() == UpstreamErrorKind::ClientBody => Outcome::ClientError,
            _ => Outcome::Failure,
        };
        let mut builder = config
            .balancer
            .builder::<Authority, HttpEndpoint, Request<UpstreamBody>>()?
            .classify(classify)
            .retry(config.balancer.retries.clone(), HttpRetry::new(statuses));
        let key: Option<RequestKeyFn> = match &config.hash_key {
            None => None,
            // The client as `rewrite` found it (behind trusted proxies too): it sets `X-Real-IP`
            // on every request before the pick, and never passes on the client's own.
            Some(HashKeyConfig::ClientIp) => Some(Arc::new(by_header(X_REAL_IP))),
            Some(HashKeyConfig::Header(name)) => {
                let name =
                    HeaderName::from_bytes(name.as_bytes()).map_err(|_| Error::InvalidConfig {
                        field: "hash_key.header",
                        reason: format!("{name} is not a header name"),
                    })?;
                Some(Arc::new(by_header(name)))
            }
            Some(HashKeyConfig::Cookie(name)) => Some(Arc::new(by_cookie(name.clone()))),
        };
        if let Some(key) = &key {
            let key = Arc::clone(key);
            builder = builder.key(move |req: &Request<UpstreamBody>| key(req));
        }
        let transport = Transport::new(&TransportSettings {
            scheme: config.scheme,
            protocol: config.protocol,
            tls: &config.tls,
            connect_timeout: config.connect_timeout,
            idle_timeout: config.pool_idle_timeout,
            max_idle_per_host: config.pool_max_idle_per_host,
        })?;
        if config.scheme == UpstreamScheme::Https
            && config
                .active_health
                .as_ref()
                .is_some_and(|a| a.path.is_some())
        {
            return Err(Error::InvalidConfig {
                field: "active_health.path",
                reason: "the HTTP probe speaks plain HTTP/1.1; with scheme = \"https\" use a TCP \
                         check (no path)"
                    .into(),
            });
        }
        let balancer = builder.build()?;
        let forwarded_proto = config
            .forwarded_proto
            .as_deref()
            .map(HeaderValue::from_str)
            .transpose()
            .map_err(|_| Error::InvalidConfig {
                field: "forwarded_proto",
                reason: "not a valid header value".into(),
            })?;
        let mut settings = Settings {
            connect_timeout: config.connect_timeout,
            idle_timeout: config.pool_idle_timeout,
            max_idle_per_host: config.pool_max_idle_per_host,
            request_timeout: config.request_timeout,
            client_body_timeout: config.client_body_timeout,
            preserve_host: config.preserve_host,
            retry_buffer_limit: config.retry_buffer_limit,
            trusted_proxies: config.trusted_proxies.clone(),
            forwarded_proto,
            hash_client_ip: config.hash_key == Some(HashKeyConfig::ClientIp),
            active_health: None,
            upgrades: transport.as_ref().is_none_or(|t| t.upgrades()),
            transport,
            upgrade_idle_timeout: config.upgrade_idle_timeout,
            key,
            upgrade_attempts: usize::try_from(config.balancer.retries.max_attempts)
                .unwrap_or(usize::MAX)
                .max(1),
            record_endpoint: config.record_endpoint,
        };
        config
            .balancer
            .insert_endpoints(&balancer, |authority: &Authority| {
                endpoint_for(&settings, authority.clone())
            })?;
        if let Some(active) = &config.active_health {
            if tokio::runtime::Handle::try_current().is_err() {
                return Err(Error::InvalidConfig {
                    field: "active_health",
                    reason: "active health checks need a tokio runtime".into(),
                });
            }
            let handle = match &active.path {
                Some(path) => balancer
                    .spawn_active_health(HttpProbe::new(path.clone()), active.check.clone())?,
                None => balancer.spawn_active_health(TcpProbe, active.check.clone())?,
            };
            settings.active_health = Some(handle);
        }
        let settings = Arc::new(settings);
        #[cfg(feature = "dns")]
        if let Some(dns) = &config.dns {
            follow_dns(&balancer, &settings, dns)?;
        }
        Ok(Self {
            balancer,
            settings,
            peer: None,
            tls: false,
        })
    }

    /// This upstream for the requests of one connection from `peer`: they are forwarded as
    /// coming from `peer`, with no [`ClientAddr`](super::ClientAddr) extension needed. A server
    /// that makes a service per connection (a hyper accept loop) saves an extension map per
    /// request this way. A clone shares everything else (endpoints, pools, health).
    #[must_use]
    pub fn with_peer(mut self, peer: SocketAddr) -> Self {
        self.peer = Some(peer);
        self
    }

    /// This upstream for the requests of one connection that came over TLS (`tls = true`) or
    /// plain TCP: the server in front knows which of its listeners took the connection, and
    /// `X-Forwarded-Proto` says `https` or `http` accordingly (unless
    /// [`forwarded_proto`](HttpUpstreamConfig::forwarded_proto) is configured). A copy made
    /// without it forwards as from plain TCP. A clone shares everything else.
    ///
    /// ```
    /// # use herd_gateway::http::{HttpUpstream, HttpUpstreamConfig};
    /// # let upstream = HttpUpstream::from_config(&HttpUpstreamConfig::default()).unwrap();
    /// # let peer = "127.0.0.1:50000".parse().unwrap();
    /// // In the accept loop of a TLS listener, once per connection:
    /// let per_connection = upstream.clone().with_peer(peer).with_tls(true);
    /// ```
    #[must_use]
    pub fn with_tls(mut self, tls: bool) -> Self {
        self.tls = tls;
        self
    }

    /// Adds an endpoint (`host:port`) or changes its weight.
    pub fn insert(&self, authority: Authority, weight: f64) -> Result<(), Error> {
        let endpoint = endpoint_for(&self.settings, authority.clone());
        self.balancer.insert(authority, endpoint, weight)
    }

    /// The balancer underneath (membership, drain, weights, policy).
    pub fn balancer(&self) -> &Inner {
        &self.balancer
    }

    /// Every endpoint's state, for health reporting.
    pub fn endpoints(&self) -> Vec<EndpointInfo<Authority>> {
        self.balancer.endpoints()
    }

    /// The request's head as every endpoint gets it, written once before the pick (see
    /// [`Prefix`]): the request line; the client's headers but hop-by-hop ones (also those its
    /// `Connection` names) and those set here; `X-Forwarded-For` with the peer appended (an
    /// incoming value is kept only from a trusted proxy); `X-Real-IP`; `X-Forwarded-Proto`;
    /// `X-Forwarded-Host`; and the client's `Host` when it is kept. With `hash_key =
    /// "client_ip"` the `X-Real-IP` value also goes into the request's headers, for the pick.
    /// A request whose `Host` RFC 9112 §3.2 refuses is an error (answered 400). An upgrade
    /// that can pass (`Connection: upgrade` and `Upgrade` on HTTP/1.1, from a server that can
    /// hand over the connection) keeps both, and takes its own way ([`Detour::Upgrade`]).
    pub(crate) fn prefix<B>(&self, req: &mut Request<B>) -> Result<Prefix, Detour> {
        let settings = &self.settings;
        let peer = self.peer.or_else(|| peer_addr(req)).map(|a| a.ip());
        let headers = req.headers();
        let client = peer.map(|ip| client_behind(ip, headers, &settings.trusted_proxies));
        let mut out = Vec::with_capacity(256);
        write_request_line(&mut out, req.method(), req.uri());
        // One pass over the headers, which also finds `Host` (and whether it repeats) and
        // `Connection`.
        let start = out.len();
        let mut host_header = None;
        let mut repeated_host = false;
        let mut connection = false;
        for (name, value) in headers {
            if name == HOST {
                repeated_host |= host_header.is_some();
                host_header = Some(value.as_bytes());
            } else if name == CONNECTION {
                connection = true;
            } else if !set_by_proxy(name) {
                write_line(&mut out, name.as_str().as_bytes(), value.as_bytes());
            }
        }
        if connection {
            // Rare: headers the client's `Connection` names are hop-by-hop too.
            let named = connection_named(headers);
            if !named.is_empty() {
                out.truncate(start);
                for (name, value) in headers {
                    if !set_by_proxy(name) && !named.contains(name) {
                        write_line(&mut out, name.as_str().as_bytes(), value.as_bytes());
                    }
                }
            }
            if self.upgrade_asked(req) {
                // Kept for the endpoint: the protocol asked, and the hop that asks for it.
                write_line(&mut out, b"connection", b"upgrade");
                for value in headers.get_all(UPGRADE) {
                    write_line(&mut out, b"upgrade", value.as_bytes());
                }
                let (prefix, real_ip) = self
                    .prefix_rest(req, out, host_header, repeated_host, peer, client)
                    .map_err(Detour::Host)?;
                if self.settings.hash_client_ip {
                    match real_ip {
                        Some(value) => req.headers_mut().insert(X_REAL_IP, value),
                        None => req.headers_mut().remove(X_REAL_IP),
                    };
                }
                return Err(Detour::Upgrade(Box::new(prefix)));
            }
        }
        let (prefix, real_ip) = self
            .prefix_rest(req, out, host_header, repeated_host, peer, client)
            .map_err(Detour::Host)?;
        if settings.hash_client_ip {
            match real_ip {
                Some(value) => req.headers_mut().insert(X_REAL_IP, value),
                None => req.headers_mut().remove(X_REAL_IP),
            };
        }
        Ok(prefix)
    }

    /// Whether `req` asks for an upgrade that can pass: HTTP/1.1 with `Connection: upgrade`
    /// and `Upgrade`, from a server that hands over the connection after a `101` (hyper's
    /// `OnUpgrade`), to endpoints not spoken to over HTTP/2 only. Not `Upgrade: h2c` (RFC 9113
    /// drops it): each HTTP/2 request is balanced on its own, not tunnelled to one instance.
    /// Any other keeps the hop-by-hop headers out, as always.
    #[cold]
    fn upgrade_asked<B>(&self, req: &Request<B>) -> bool {
        let headers = req.headers();
        self.settings.upgrades
            && req.version() == Version::HTTP_11
            && headers.get(UPGRADE).is_some_and(|v| {
                !v.as_bytes()
                    .split(|b| *b == b',')
                    .any(|p| p.trim_ascii().eq_ignore_ascii_case(b"h2c"))
            })
            && connection_lists(headers, b"upgrade")
            && req
                .extensions()
                .get::<hyper::upgrade::OnUpgrade>()
                .is_some()
    }

    /// The rest of [`prefix`](Self::prefix) once the client's own headers are written: `Host`
    /// checked, and the forwarding headers; the `X-Real-IP` value with it.
    #[inline(always)]
    fn prefix_rest<B>(
        &self,
        req: &Request<B>,
        mut out: Vec<u8>,
        host_header: Option<&[u8]>,
        repeated_host: bool,
        peer: Option<std::net::IpAddr>,
        client: Option<std::net::IpAddr>,
    ) -> Result<(Prefix, Option<HeaderValue>), HostError> {
        let settings = &self.settings;
        let headers = req.headers();
        let client_host = checked_host(req.version(), req.uri(), host_header, repeated_host)?;
        let has_host = settings.preserve_host && client_host.is_some();
        if let Some(host) = client_host.filter(|_| has_host) {
            write_line(&mut out, b"host", host);
        }
        let peer_value = peer.map(ip_header_value);
        if let (Some(ip), Some(peer_value)) = (peer, &peer_value) {
            out.extend_from_slice(b"x-forwarded-for: ");
            if settings.trusted_proxies.contains(ip) {
                for value in headers.get_all(X_FORWARDED_FOR) {
                    let value = value.as_bytes().trim_ascii();
                    if !value.is_empty() {
                        out.extend_from_slice(value);
                        out.extend_from_slice(b", ");
                    }
                }
            }
            out.extend_from_slice(peer_value.as_bytes());
            out.extend_from_slice(b"\r\n");
        } else {
            // No peer to add: the incoming value goes on as it came.
            for value in headers.get_all(X_FORWARDED_FOR) {
                write_line(&mut out, b"x-forwarded-for", value.as_bytes());
            }
        }
        // Never the client's own claim: none when the client is unknown.
        let real_ip = match (client, peer_value) {
            (Some(client), Some(value)) if Some(client) == peer => Some(value),
            (client, _) => client.map(ip_header_value),
        };
        if let Some(value) = &real_ip {
            write_line(&mut out, b"x-real-ip", value.as_bytes());
        }
        // What the connection is, as the server said; never the request URI's scheme.
        let proto: &[u8] = match &settings.forwarded_proto {
            Some(proto) => proto.as_bytes(),
            None if self.tls => b"https",
            None => b"http",
        };
        write_line(&mut out, b"x-forwarded-proto", proto);
        if let Some(host) = client_host {
            write_line(&mut out, b"x-forwarded-host", host);
        }
        let prefix = Prefix {
            bytes: Bytes::from(out),
            has_host,
        };
        Ok((prefix, real_ip))
    }
}

/// Why a request does not go straight to the balancer from [`HttpUpstream::prefix`].
#[derive(Debug)]
pub(crate) enum Detour {
    /// Its `Host` is refused: 400.
    Host(HostError),
    /// It asks for an upgrade that can pass: its head, with `Connection: upgrade` and
    /// `Upgrade` kept. Boxed: the detour's size is what every request's `prefix` result carries.
    Upgrade(Box<Prefix>),
}

impl Detour {
    /// A short name of the detour (the metric reason of a refused `Host`).
    #[cfg_attr(not(feature = "fuzzing"), allow(dead_code))]
    pub(crate) fn describe(&self) -> &'static str {
        match self {
            Self::Host(e) => e.describe().0,
            Self::Upgrade(_) => "upgrade",
        }
    }
}

/// The client's host as RFC 9112 §3.2 lets a server act on it: the absolute-form target's
/// authority (§3.2.2: it overrides `Host`), else the one `Host`. Refused: two `Host` lines, a
/// `Host` or an authority that is not a valid `host[:port]`, and an HTTP/1.1 request without
/// `Host` (an HTTP/2 request carries its host as `:authority`, in the URI; HTTP/1.0 may have
/// none).
fn checked_host<'a>(
    version: Version,
    uri: &'a http::Uri,
    host_header: Option<&'a [u8]>,
    repeated: bool,
) -> Result<Option<&'a [u8]>, HostError> {
    if repeated {
        return Err(HostError::Repeated);
    }
    match (uri.authority(), host_header) {
        (None, Some(host)) if valid_host(host) => Ok(Some(host)),
        (None, None) if version != Version::HTTP_11 => Ok(None),
        (None, None) => Err(HostError::Missing),
        (Some(authority), host) => {
            let authority = authority.as_str().as_bytes();
            if !valid_host(authority) || host.is_some_and(|h| !valid_host(h)) {
                return Err(HostError::Invalid);
            }
            if host.is_none() && version == Version::HTTP_11 {
                return Err(HostError::Missing);
            }
            Ok(Some(authority))
        }
        (None, Some(_)) => Err(HostError::Invalid),
    }
}

/// The answer to a request whose `Host` is refused: 400, counted in
/// `herd_lb_client_errors_total{reason}`.
#[cold]
fn host_error_response(error: HostError) -> Response<ProxyBody> {
    let (reason, message) = error.describe();
    tracing::debug!(reason, "request refused for its Host");
    metrics::counter!(crate::metrics::CLIENT_ERRORS_TOTAL, "reason" => reason).increment(1);
    error_response(StatusCode::BAD_REQUEST, message)
}

/// Headers the proxy sets or frames itself, or that are meant for it alone, never passed on as
/// the client sent them (`headers::stripped_from_requests`, and the client-address headers). `Expect:
/// 100-continue` is answered by the server in front (hyper sends `100 Continue` when the body is
/// read) and the body follows the head at once, as nginx does.
pub(crate) fn set_by_proxy(name: &HeaderName) -> bool {
    // One match over every name (not `stripped_from_requests` and then these two): this runs
    // for each header of every request. A test keeps the two lists in step.
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
            | "x-forwarded-for"
            | "x-real-ip"
    ) || is_hop_by_hop(name)
}

/// The endpoint's answer as the client gets it (hop-by-hop headers dropped), or the failure as
/// an error response.
pub(super) fn respond(result: Result<Response<PooledBody>, BoxError>) -> Response<ProxyBody> {
    match result {
        // Hop-by-hop headers were left out as the head was read, and the dependency signal
        // from any but a 5xx.
        Ok(mut res) => {
            if res.status().is_server_error() {
                take_dependency_signal(&mut res);
            }
            res.map(ProxyBody::endpoint)
        }
        Err(e) => failure_response(&e),
    }
}

/// Removes [`X_HERD_DEPENDENCY_UNAVAILABLE`] from an endpoint's 5xx before the client sees it,
/// counting the outage by the dependency it names.
#[cold]
fn take_dependency_signal(res: &mut Response<PooledBody>) {
    let Some(value) = res.headers_mut().remove(X_HERD_DEPENDENCY_UNAVAILABLE) else {
        return;
    };
    let dependency = dependency_label(value.as_bytes());
    tracing::debug!(%dependency, status = %res.status(), "an endpoint reports a shared dependency unavailable");
    metrics::counter!(crate::metrics::DEPENDENCY_UNAVAILABLE_TOTAL, "dependency" => dependency)
        .increment(1);
}

/// The dependency a signal names, as a metric label: a short token (letters, digits, `-`, `_`,
/// `.`; at most 32), lowercased, else `other` (a label's values must stay few).
fn dependency_label(value: &[u8]) -> metrics::SharedString {
    let token = value.trim_ascii();
    let valid = (1..=32).contains(&token.len())
        && token
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !valid {
        return metrics::SharedString::const_str("other");
    }
    let mut label = String::from_utf8_lossy(token).into_owned();
    label.make_ascii_lowercase();
    metrics::SharedString::from(label)
}

/// Spawns the task that keeps `balancer`'s endpoints in step with `dns`'s name. It ends when
/// the upstream is dropped (the settings first: the stream ends; or the set: the feed ends).
#[cfg(feature = "dns")]
fn follow_dns(
    balancer: &Inner,
    settings: &Arc<Settings>,
    dns: &herd_lb_core::discover::DnsConfig,
) -> Result<(), Error> {
    use futures_util::StreamExt as _;
    use herd_lb_core::discover::{Change, DnsDiscover};
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return Err(Error::InvalidConfig {
            field: "dns",
            reason: "following a DNS name needs a tokio runtime".into(),
        });
    };
    let discover = Box::pin(DnsDiscover::new(dns.clone())?);
    let settings = Arc::downgrade(settings);
    let authority = |addr: SocketAddr| Authority::try_from(addr.to_string());
    let changes = futures_util::stream::unfold(discover, move |mut discover| {
        let settings = settings.clone();
        async move {
            loop {
                let change = match discover.next().await? {
                    Ok(change) => change,
                    Err(never) => match never {},
                };
                let settings = settings.upgrade()?;
                // A socket address is always a valid authority; skip one that is not.
                let change = match change {
                    Change::Insert(addr, _) => match authority(addr) {
                        Ok(a) => Change::Insert(a.clone(), endpoint_for(&settings, a)),
                        Err(_) => continue,
                    },
                    Change::Remove(addr) => match authority(addr) {
                        Ok(a) => Change::Remove(a),
                        Err(_) => continue,
                    },
                };
                return Some((Ok::<_, Infallible>(change), discover));
            }
        }
    });
    runtime.spawn(balancer.discover(changes));
    Ok(())
}

fn endpoint_for(settings: &Settings, authority: Authority) -> HttpEndpoint {
    let host = if settings.preserve_host {
        None
    } else {
        HeaderValue::from_str(authority.as_str()).ok()
    };
    let answered_by = settings.record_endpoint.then(|| authority.clone());
    HttpEndpoint {
        inner: Arc::new(EndpointInner {
            pool: Arc::new(EndpointPool::new(
                authority,
                settings.connect_timeout,
                settings.idle_timeout,
                settings.max_idle_per_host,
                settings.client_body_timeout,
            )),
            client: settings.transport.clone(),
            client_body_timeout: settings.client_body_timeout,
            host,
            forwarded_proto: settings.forwarded_proto.clone(),
            timeout: settings.request_timeout,
            answered_by,
        }),
    }
}

/// Buffers a complete small body (so it can be retried), waiting at most `body_timeout` for
/// each piece of it (nginx's `client_body_timeout`: between two reads, not for the whole);
/// streams anything else (the endpoint's send bounds each piece the same way). Fails only by
/// the client's fault. A buffered body's trailers are dropped: it goes with a `Content-Length`,
/// as every body nginx buffers does (a body of a known small size has none on HTTP/1.1).
async fn prepare_body<B>(
    body: B,
    limit: usize,
    body_timeout: Duration,
) -> Result<UpstreamBody, ClientBodyError>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let small = body.size_hint().upper().is_some_and(|n| n <= limit as u64);
    if !small {
        return Ok(UpstreamBody::stream(
            body.map_err(Into::into).boxed_unsync(),
        ));
    }
    let mut body = std::pin::pin!(body);
    // One piece (the common case) is kept as it came; more are joined.
    let mut first: Option<Bytes> = None;
    let mut joined = BytesMut::new();
    loop {
        let data = match within(body_timeout, body.frame()).await {
            None => return Err(ClientBodyError::timeout()),
            Some(None) => break,
            Some(Some(Err(e))) => return Err(ClientBodyError::from_body_error(e.into())),
            Some(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) if !data.is_empty() => data,
                _ => continue,
            },
        };
        if first.is_none() && joined.is_empty() {
            first = Some(data);
            continue;
        }
        let held = first.as_ref().map_or(0, Bytes::len) + joined.len();
        if held.saturating_add(data.len()) > limit {
            // A body longer than its own size hint said.
            return Err(ClientBodyError::invalid(
                "request body longer than its size",
            ));
        }
        if let Some(first) = first.take() {
            joined.extend_from_slice(&first);
        }
        joined.extend_from_slice(&data);
    }
    Ok(UpstreamBody::full(first.unwrap_or_else(|| joined.freeze())))
}

/// `fut`'s output, or `None` once `timeout` has passed. The timer starts only when `fut` is not
/// ready at once: a body that came with its head costs no timer and no clock reading.
async fn within<F: Future>(timeout: Duration, fut: F) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    let mut timer = std::pin::pin!(None::<tokio::time::Sleep>);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = fut.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        if timer.is_none() {
            timer.set(Some(tokio::time::sleep(timeout)));
        }
        match timer.as_mut().as_pin_mut() {
            Some(sleep) => sleep.poll(cx).map(|()| None),
            None => Poll::Pending,
        }
    })
    .await
}

/// A response the upstream writes itself: `message` (a line) as plain text.
pub(super) fn error_response(status: StatusCode, message: &'static str) -> Response<ProxyBody> {
    let mut res = Response::new(ProxyBody::full(Bytes::from_static(message.as_bytes())));
    *res.status_mut() = status;
    res.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

/// The answer to a failure. Its body says what happened and nothing more: no endpoint address
/// and no error internals, which go to the log (with the endpoint and the error's chain).
fn failure_response(error: &BoxError) -> Response<ProxyBody> {
    if let Some(pick) = error.downcast_ref::<PickError>() {
        tracing::debug!(error = %pick, "no endpoint could take the request");
        let message = match pick {
            PickError::NoEndpoints => "no upstream endpoint available\n",
            _ => "all upstream endpoints are busy\n",
        };
        let mut res = error_response(StatusCode::SERVICE_UNAVAILABLE, message);
        res.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
        return res;
    }
    if let Some(upstream) = error.downcast_ref::<UpstreamError>() {
        if let Some(client) = upstream.client_body() {
            tracing::debug!(endpoint = upstream.endpoint(), error = %Chain(client), "the client's request body failed");
            return client_error_response(client);
        }
        tracing::warn!(endpoint = upstream.endpoint(), error = %Chain(upstream), "upstream request failed");
        let (status, message) = match upstream.kind() {
            UpstreamErrorKind::Timeout => (StatusCode::GATEWAY_TIMEOUT, "upstream timed out\n"),
            UpstreamErrorKind::Connect => (StatusCode::BAD_GATEWAY, "upstream connect failed\n"),
            UpstreamErrorKind::Tls => (StatusCode::BAD_GATEWAY, "upstream TLS handshake failed\n"),
            _ => (StatusCode::BAD_GATEWAY, "upstream request failed\n"),
        };
        return error_response(status, message);
    }
    tracing::warn!(error = %Chain(&**error), "upstream request failed");
    error_response(StatusCode::BAD_GATEWAY, "upstream request failed\n")
}

/// The answer to a client whose request body failed (400, 413 or 408), counted in
/// `herd_lb_client_errors_total{reason}`.
#[cold]
fn client_error_response(error: &ClientBodyError) -> Response<ProxyBody> {
    let (reason, message) = match error.kind() {
        ClientBodyErrorKind::TooLarge => ("body_too_large", "request body too large\n"),
        ClientBodyErrorKind::Timeout => ("body_timeout", "request body timed out\n"),
        _ => ("body_invalid", "invalid or incomplete request body\n"),
    };
    metrics::counter!(crate::metrics::CLIENT_ERRORS_TOTAL, "reason" => reason).increment(1);
    error_response(error.status(), message)
}

/// An error and its sources, `error: source: source ...`, for logs.
struct Chain<'a>(&'a (dyn std::error::Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(e) = source {
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
}

impl<B> Service<Request<B>> for HttpUpstream
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The balancer is always ready (it picks when called); its failures become responses.
        self.balancer.poll_ready(cx).map(|_| Ok(()))
    }

    fn call(&mut self, mut req: Request<B>) -> ResponseFuture {
        let (prefix, refused) = match self.prefix(&mut req) {
            Ok(prefix) => (prefix, None),
            Err(e) => (Prefix::default(), Some(e)),
        };
        // One test for both rare cases, and no early return before the common one: its
        // future is then built in place.
        if refused.is_none() && req.body().is_end_stream() {
            // No body (most requests): straight to the balancer, nothing to read first.
            let body = UpstreamBody::full(Bytes::new()).with_prefix(prefix);
            return ResponseFuture::balanced(self.balancer.call(req.map(|_| body)));
        }
        self.not_at_once(req, prefix, refused)
    }
}

impl HttpUpstream {
    /// A request not sent at once: one refused before the pick for its `Host` is answered; one
    /// with a body has it read (buffered when small) before the pick, in a boxed future.
    #[inline(never)]
    fn not_at_once<B>(
        &self,
        req: Request<B>,
        prefix: Prefix,
        refused: Option<Detour>,
    ) -> ResponseFuture
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        match refused {
            Some(Detour::Host(e)) => return ResponseFuture::answered(host_error_response(e)),
            Some(Detour::Upgrade(prefix)) => return self.upgrade(req, *prefix),
            None => {}
        }
        let (parts, body) = req.into_parts();
        let mut balancer = self.balancer.clone();
        let limit = self.settings.retry_buffer_limit;
        let body_timeout = self.settings.client_body_timeout;
        let fut = Box::pin(async move {
            let body = match prepare_body(body, limit, body_timeout).await {
                Ok(body) => body.with_prefix(prefix),
                Err(e) => {
                    tracing::debug!(error = %Chain(&e), "the client's request body failed");
                    return client_error_response(&e);
                }
            };
            if let Err(e) = std::future::poll_fn(|cx| balancer.poll_ready(cx)).await {
                return failure_response(&e);
            }
            respond(balancer.call(Request::from_parts(parts, body)).await)
        });
        ResponseFuture::with_body(fut)
    }

    /// An upgrade (a WebSocket): its endpoint picked here rather than by the balancer's call,
    /// so that its in-flight slot stays taken while the upgraded connection is open. Sent again
    /// on another endpoint only when no connection could be made (nothing was sent); a `101`
    /// is answered `101` and the two connections are spliced in a task of their own
    /// ([`tunnel`]) until either side closes or nothing passes for `upgrade_idle_timeout`; any
    /// other answer is relayed as a response is, and recorded as the balancer records one.
    #[cold]
    fn upgrade<B>(&self, req: Request<B>, prefix: Prefix) -> ResponseFuture
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let (mut parts, body) = req.into_parts();
        let Some(on_client) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>() else {
            return ResponseFuture::answered(error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "upgrade not possible on this connection\n",
            ));
        };
        let balancer = self.balancer.clone();
        let settings = Arc::clone(&self.settings);
        let fut = Box::pin(async move {
            let limit = settings.retry_buffer_limit;
            let body = match prepare_body(body, limit, settings.client_body_timeout).await {
                Ok(body) if body.full_bytes().is_some() => body.with_prefix(prefix),
                Ok(_) => {
                    return error_response(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "upgrade request body too large\n",
                    );
                }
                Err(e) => return client_error_response(&e),
            };
            let req = Request::from_parts(parts, body);
            let key = settings.key.as_ref().and_then(|key| key(&req));
            let mut tried: Vec<usize> = Vec::new();
            loop {
                let ctx = PickContext::new().with_key(key).excluding(&tried);
                let Picked { guard, service } = match balancer.set().pick(balancer.policy(), &ctx) {
                    Ok(picked) => picked,
                    Err(e) => return failure_response(&(Box::new(e) as BoxError)),
                };
                let Some(copy) = HttpRetry::new(Vec::new()).clone_request(&req) else {
                    return error_response(StatusCode::INTERNAL_SERVER_ERROR, "upgrade failed\n");
                };
                match service.upgrade(copy).await {
                    Err(e)
                        if matches!(
                            e.kind(),
                            UpstreamErrorKind::Connect | UpstreamErrorKind::Tls
                        ) && tried.len() + 1 < settings.upgrade_attempts =>
                    {
                        tracing::debug!(endpoint = e.endpoint(), error = %Chain(&e), "upgrade: no connection, trying another endpoint");
                        tried.push(guard.index());
                        guard.record(Outcome::Failure);
                    }
                    Err(e) => {
                        let outcome = if e.kind() == UpstreamErrorKind::ClientBody {
                            Outcome::ClientError
                        } else {
                            Outcome::Failure
                        };
                        guard.record(outcome);
                        return failure_response(&(Box::new(e) as BoxError));
                    }
                    Ok(mut res) if res.status() == StatusCode::SWITCHING_PROTOCOLS => {
                        let upstream = match res.body_mut().take_upgraded() {
                            Some((stream, read)) => UpstreamSide::Raw(stream, read),
                            None => UpstreamSide::Hyper(hyper::upgrade::on(&mut res)),
                        };
                        let idle = settings.upgrade_idle_timeout;
                        tokio::spawn(tunnel(on_client, upstream, guard, idle));
                        let (mut head, _) = res.into_parts();
                        head.headers
                            .insert(CONNECTION, HeaderValue::from_static("upgrade"));
                        return Response::from_parts(head, ProxyBody::default());
                    }
                    Ok(res) => {
                        let outcome = if !res.status().is_server_error() {
                            Outcome::Success
                        } else if res.headers().contains_key(X_HERD_DEPENDENCY_UNAVAILABLE) {
                            Outcome::DependencyUnavailable
                        } else {
                            Outcome::Failure
                        };
                        guard.record(outcome);
                        return respond(Ok(res));
                    }
                }
            }
        });
        ResponseFuture::with_body(fut)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proxy_sets_or_drops_every_header_stripped_from_requests() {
        for name in [
            "host",
            "content-length",
            "transfer-encoding",
            "expect",
            "forwarded",
            "proxy-authorization",
            "x-forwarded-proto",
            "x-forwarded-host",
            "connection",
            "keep-alive",
            "te",
            "upgrade",
            "accept",
            "cookie",
            "authorization",
        ] {
            let name = HeaderName::from_static(name);
            assert!(
                !super::super::headers::stripped_from_requests(&name) || set_by_proxy(&name),
                "{name}"
            );
        }
        assert!(set_by_proxy(&X_FORWARDED_FOR) && set_by_proxy(&X_REAL_IP));
        assert!(!set_by_proxy(&HeaderName::from_static("authorization")));
    }

    #[test]
    fn hosts_are_checked_as_rfc_9112_asks() {
        let origin: http::Uri = "/a".parse().unwrap();
        let absolute: http::Uri = "https://target.example:8443/a".parse().unwrap();
        let userinfo: http::Uri = "http://user:pw@target.example/a".parse().unwrap();
        let h11 = Version::HTTP_11;
        let ok = |v, u, h| checked_host(v, u, h, false);
        assert_eq!(
            ok(h11, &origin, Some(b"a.example")),
            Ok(Some(&b"a.example"[..]))
        );
        assert_eq!(ok(h11, &origin, None), Err(HostError::Missing));
        assert_eq!(ok(Version::HTTP_10, &origin, None), Ok(None));
        assert_eq!(ok(h11, &origin, Some(b"a b")), Err(HostError::Invalid));
        assert_eq!(ok(h11, &origin, Some(b"")), Err(HostError::Invalid));
        assert_eq!(
            checked_host(h11, &origin, Some(b"a.example"), true),
            Err(HostError::Repeated)
        );
        // The absolute-form target's authority wins over Host, which must still be valid.
        assert_eq!(
            ok(h11, &absolute, Some(b"other.example")),
            Ok(Some(&b"target.example:8443"[..]))
        );
        assert_eq!(
            ok(h11, &absolute, Some(b"bad host")),
            Err(HostError::Invalid)
        );
        assert_eq!(ok(h11, &absolute, None), Err(HostError::Missing));
        assert_eq!(
            ok(Version::HTTP_2, &absolute, None),
            Ok(Some(&b"target.example:8443"[..]))
        );
        assert_eq!(ok(h11, &userinfo, Some(b"x")), Err(HostError::Invalid));
    }

    #[test]
    fn dependency_labels_are_short_lowercase_tokens() {
        assert_eq!(&*dependency_label(b"postgres"), "postgres");
        assert_eq!(&*dependency_label(b" Redis "), "redis");
        assert_eq!(
            &*dependency_label(b"redis-cluster.sessions_1"),
            "redis-cluster.sessions_1"
        );
        assert_eq!(&*dependency_label(b""), "other");
        assert_eq!(&*dependency_label(b"postgres: 10.0.0.7 down"), "other");
        assert_eq!(&*dependency_label(&[b'a'; 33]), "other");
    }

    #[tokio::test]
    async fn error_responses_say_what_happened_and_never_where() {
        let authority = Authority::from_static("10.1.2.3:8080");
        let refused: BoxError = Box::new(UpstreamError::new(
            &authority,
            UpstreamErrorKind::Connect,
            Some("connection refused (os error 111)".into()),
        ));
        let res = failure_response(&refused);
        assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
        let client: BoxError = Box::new(UpstreamError::new(
            &authority,
            UpstreamErrorKind::ClientBody,
            Some(Box::new(ClientBodyError::timeout())),
        ));
        assert_eq!(
            failure_response(&client).status(),
            StatusCode::REQUEST_TIMEOUT
        );
        let other: BoxError = "something internal at 10.1.2.3".into();
        assert_eq!(failure_response(&other).status(), StatusCode::BAD_GATEWAY);
        let mut bodies = Vec::new();
        for error in [&refused, &client, &other] {
            let body = failure_response(error).into_body().collect().await;
            bodies.push(body.map(|b| b.to_bytes()).unwrap_or_default());
        }
        assert_eq!(
            bodies,
            [
                "upstream connect failed\n",
                "request body timed out\n",
                "upstream request failed\n"
            ]
        );
    }
}
