//! Upstream HTTPS and HTTP/2: hyper-util's pooled client over hyper-rustls's connector, one per
//! upstream, for the endpoints that the hand-written HTTP/1.1 exchange ([`super::h1`]) does not
//! speak. Plain HTTP/1.1 never comes here.
//!
//! The request head is the one [`HttpUpstream`](super::HttpUpstream) writes before the pick
//! (hop-by-hop headers gone, forwarding headers set), read back into a header map: this path
//! pays a parse of the head so that the plain HTTP/1.1 path pays nothing for it. The answer
//! goes back through the balancer as any endpoint's does, so retries, timeouts, accounting and
//! blame are the same: a TLS handshake that fails is [`UpstreamErrorKind::Tls`] (the endpoint's
//! side, 502, retried elsewhere as a connect failure is), a client's body that fails is the
//! client's ([`UpstreamErrorKind::ClientBody`]).

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use herd_lb_core::Error;
use http::header::{CONNECTION, HeaderMap, HeaderName, HeaderValue, UPGRADE};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_rustls::{ConfigBuilderExt as _, FixedServerNameResolver, HttpsConnector};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::Deserialize;

use super::body::{ClientBodyError, UpstreamBody};
use super::headers::{
    connection_named, forbidden_in_trailers, is_dependency_signal, is_hop_by_hop,
};
use super::idle::IdleTimer;
use super::pool::PooledBody;
use super::upstream::{UpstreamError, UpstreamErrorKind};
use crate::BoxError;

/// How the gateway reaches its instances (nginx's `proxy_pass http://` or `https://`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamScheme {
    /// Plain TCP (default).
    #[default]
    Http,
    /// TLS, verified against [`UpstreamTlsConfig`]'s roots.
    Https,
}

/// The HTTP version spoken to the instances (nginx's `proxy_http_version`, and `grpc_pass`'s
/// HTTP/2).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 (default). Over plain TCP, the gateway's own pooled exchange (the fast path).
    #[default]
    Http1,
    /// HTTP/2 only: by ALPN `h2` over TLS, by prior knowledge (h2c) over plain TCP. Many
    /// requests share one connection per endpoint. Upgrades (WebSocket) cannot pass: HTTP/2 has
    /// no `Upgrade` (its extended CONNECT is not spoken here).
    H2,
    /// What the instance picks by ALPN, HTTP/2 or HTTP/1.1 (`scheme = "https"` only).
    Auto,
}

/// TLS to the instances (`scheme = "https"`). Every field has a default.
///
/// ```
/// use herd_gateway::http::HttpUpstreamConfig;
///
/// let config: HttpUpstreamConfig = toml::from_str(r#"
///     endpoints = [{ address = "10.0.0.7:8443" }]
///     scheme = "https"
///     protocol = "auto"
///     [tls]
///     ca_file = "/etc/herd/instances-ca.pem"
///     server_name = "api.internal"
/// "#).unwrap();
/// assert_eq!(config.tls.server_name.as_deref(), Some("api.internal"));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    /// PEM file of the CA certificates the instances' certificates must chain to
    /// (`proxy_ssl_trusted_certificate`). Default none: the system's roots.
    pub ca_file: Option<PathBuf>,
    /// The name the instances' certificates must carry, also sent as SNI (`proxy_ssl_name`).
    /// Default none: the endpoint's host (an IP address is checked against the certificate's
    /// IP addresses).
    pub server_name: Option<String>,
    /// PEM certificate chain the gateway presents to the instances (`proxy_ssl_certificate`),
    /// with [`client_key_file`](Self::client_key_file). Default none.
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key of [`client_cert_file`](Self::client_cert_file)
    /// (`proxy_ssl_certificate_key`). Default none.
    pub client_key_file: Option<PathBuf>,
}

/// What the transport needs from the upstream's settings.
pub(crate) struct TransportSettings<'a> {
    pub(crate) scheme: UpstreamScheme,
    pub(crate) protocol: UpstreamProtocol,
    pub(crate) tls: &'a UpstreamTlsConfig,
    pub(crate) connect_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) max_idle_per_host: usize,
}

type HyperClient = Client<HttpsConnector<HttpConnector>, ClientSide>;

/// hyper's client for one upstream's endpoints, with its pool (per endpoint authority).
pub(crate) struct Transport {
    client: HyperClient,
    scheme: Scheme,
    /// HTTP/2 only: no upgrades.
    h2_only: bool,
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transport")
            .field("scheme", &self.scheme)
            .field("h2_only", &self.h2_only)
            .finish_non_exhaustive()
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> Error {
    Error::InvalidConfig {
        field,
        reason: reason.into(),
    }
}

impl Transport {
    /// The client for `settings`, or none when the endpoints speak plain HTTP/1.1 (the pooled
    /// fast path serves them). Unreadable or empty certificate files are refused with the
    /// field named.
    pub(crate) fn new(settings: &TransportSettings<'_>) -> Result<Option<Arc<Self>>, Error> {
        let tls_set = *settings.tls != UpstreamTlsConfig::default();
        let (scheme, h2_only) = match (settings.scheme, settings.protocol) {
            (UpstreamScheme::Http, UpstreamProtocol::Http1) if tls_set => {
                return Err(invalid("tls", "set, but scheme is \"http\""));
            }
            (UpstreamScheme::Http, UpstreamProtocol::Http1) => return Ok(None),
            (UpstreamScheme::Http, UpstreamProtocol::Auto) => {
                return Err(invalid(
                    "protocol",
                    "\"auto\" is chosen by TLS ALPN and needs scheme = \"https\"; plain HTTP/2 \
                     is \"h2\" (prior knowledge)",
                ));
            }
            (UpstreamScheme::Http, UpstreamProtocol::H2) if tls_set => {
                return Err(invalid("tls", "set, but scheme is \"http\""));
            }
            (UpstreamScheme::Http, UpstreamProtocol::H2) => (Scheme::HTTP, true),
            (UpstreamScheme::Https, protocol) => (Scheme::HTTPS, protocol == UpstreamProtocol::H2),
        };
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(settings.connect_timeout));
        let tls = tls_config(settings.tls)?;
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http();
        let builder = match &settings.tls.server_name {
            Some(name) => {
                let name = ServerName::try_from(name.clone())
                    .map_err(|e| invalid("tls.server_name", format!("{name}: {e}")))?;
                builder.with_server_name_resolver(FixedServerNameResolver::new(name))
            }
            None => builder,
        };
        let connector = match settings.protocol {
            UpstreamProtocol::Http1 => builder.enable_http1().wrap_connector(http),
            UpstreamProtocol::H2 => builder.enable_http2().wrap_connector(http),
            UpstreamProtocol::Auto => builder.enable_all_versions().wrap_connector(http),
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(settings.idle_timeout)
            .pool_max_idle_per_host(settings.max_idle_per_host)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .http2_only(h2_only)
            .build(connector);
        Ok(Some(Arc::new(Self {
            client,
            scheme,
            h2_only,
        })))
    }

    /// Whether upgrades (WebSocket) can pass: not over HTTP/2 only.
    pub(crate) fn upgrades(&self) -> bool {
        !self.h2_only
    }

    /// Sends the request whose HTTP/1.1 head (request line and headers, no final empty line)
    /// is `head` to `authority`, and waits for the response head within `timeouts.request`
    /// (from the start, or from the last piece of a streamed body that the endpoint took).
    pub(crate) async fn send(
        self: Arc<Self>,
        authority: Authority,
        head: Vec<u8>,
        body: UpstreamBody,
        timeouts: Timeouts,
    ) -> Result<Response<PooledBody>, UpstreamError> {
        {
            let failed = |kind, source| UpstreamError::new(&authority, kind, source);
            let shared = body.full_bytes().is_none().then(|| Arc::new(Shared::new()));
            let body = ClientSide {
                body,
                idle: IdleTimer::new(timeouts.client_body, None),
                shared: shared.clone(),
            };
            let req = request_from_head(&head, &self.scheme, &authority, body)
                .map_err(|e| failed(UpstreamErrorKind::Request, Some(e)))?;
            let sent = self.client.request(req);
            let result = bounded(sent, timeouts.request, shared.as_deref()).await;
            match result {
                None => Err(failed(UpstreamErrorKind::Timeout, None)),
                Some(Ok(res)) => Ok(into_pooled(res, &authority, timeouts.request)),
                Some(Err(e)) => {
                    if let Some(client) = shared.as_ref().and_then(|s| s.failed.lock().take()) {
                        return Err(failed(
                            UpstreamErrorKind::ClientBody,
                            Some(Box::new(client)),
                        ));
                    }
                    let kind = if !e.is_connect() {
                        UpstreamErrorKind::Request
                    } else if find::<rustls::Error>(&e).is_some() {
                        UpstreamErrorKind::Tls
                    } else {
                        UpstreamErrorKind::Connect
                    };
                    Err(failed(kind, Some(Box::new(e))))
                }
            }
        }
    }
}

/// The waits of one exchange.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    /// For the endpoint: the response head, each piece of a streamed body taken, each piece
    /// of the response body.
    pub(crate) request: Duration,
    /// For the client: each piece of its streamed request body.
    pub(crate) client_body: Duration,
}

/// The rustls client configuration of `tls`: its roots (the CA file's, else the system's) and
/// its client certificate. ALPN is set by the connector.
fn tls_config(tls: &UpstreamTlsConfig) -> Result<rustls::ClientConfig, Error> {
    match (&tls.client_cert_file, &tls.client_key_file) {
        (Some(_), None) => {
            return Err(invalid(
                "tls.client_key_file",
                "client_cert_file is set without it",
            ));
        }
        (None, Some(_)) => {
            return Err(invalid(
                "tls.client_cert_file",
                "client_key_file is set without it",
            ));
        }
        _ => {}
    }
    // The process's provider when the application installed one, else *ring*, the workspace's
    // (it builds without cmake; rustls 0.23.48 deprecates it for lacking post-quantum key
    // exchange).
    #[expect(deprecated, reason = "ring is the workspace's provider; see above")]
    let ring = rustls::crypto::ring::default_provider;
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(ring()));
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("tls", e.to_string()))?;
    let builder = match &tls.ca_file {
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            let shown = path.display();
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| invalid("tls.ca_file", format!("{shown}: {e}")))?;
            for cert in certs {
                let cert = cert.map_err(|e| invalid("tls.ca_file", format!("{shown}: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| invalid("tls.ca_file", format!("{shown}: {e}")))?;
            }
            if roots.is_empty() {
                return Err(invalid(
                    "tls.ca_file",
                    format!("{shown}: no PEM certificate in it"),
                ));
            }
            builder.with_root_certificates(roots)
        }
        None => builder.with_native_roots().map_err(|e| {
            invalid(
                "tls.ca_file",
                format!("none set and the system's roots could not be loaded: {e}"),
            )
        })?,
    };
    match (&tls.client_cert_file, &tls.client_key_file) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(Iterator::collect::<Result<Vec<_>, _>>)
                .map_err(|e| invalid("tls.client_cert_file", format!("{}: {e}", cert.display())))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| invalid("tls.client_key_file", format!("{}: {e}", key.display())))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| invalid("tls.client_key_file", e.to_string()))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// The request whose HTTP/1.1 head is `head`, for `scheme://authority` (the connection; the
/// `Host` line of the head is what the endpoint reads).
fn request_from_head(
    head: &[u8],
    scheme: &Scheme,
    authority: &Authority,
    body: ClientSide,
) -> Result<Request<ClientSide>, BoxError> {
    let mut text = Vec::with_capacity(head.len() + 2);
    text.extend_from_slice(head);
    text.extend_from_slice(b"\r\n");
    // Every header the server in front let through, and the forwarding ones.
    let mut slots = vec![httparse::EMPTY_HEADER; 512];
    let mut parsed = httparse::Request::new(&mut slots);
    if !parsed.parse(&text)?.is_complete() {
        return Err("request head incomplete".into());
    }
    let method = Method::from_bytes(parsed.method.unwrap_or("GET").as_bytes())?;
    let target = PathAndQuery::try_from(parsed.path.unwrap_or("/"))?;
    let uri = Uri::builder()
        .scheme(scheme.clone())
        .authority(authority.clone())
        .path_and_query(target)
        .build()?;
    let mut headers = HeaderMap::with_capacity(parsed.headers.len());
    for h in parsed.headers.iter() {
        headers.append(
            HeaderName::from_bytes(h.name.as_bytes())?,
            HeaderValue::from_bytes(h.value)?,
        );
    }
    let mut req = Request::new(body);
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.headers_mut() = headers;
    Ok(req)
}

/// An endpoint's response as the balancer and the client get it: hop-by-hop headers (but the
/// `Upgrade` of a `101`) and the dependency signal of anything but a 5xx dropped, as the
/// HTTP/1.1 path drops them when it reads a head.
fn into_pooled(
    res: Response<Incoming>,
    authority: &Authority,
    timeout: Duration,
) -> Response<PooledBody> {
    let (mut parts, body) = res.into_parts();
    let switching = parts.status == StatusCode::SWITCHING_PROTOCOLS;
    let headers = &mut parts.headers;
    for name in connection_named(headers) {
        headers.remove(name);
    }
    let upgrade = if switching {
        headers.remove(UPGRADE)
    } else {
        None
    };
    let dropped: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            is_hop_by_hop(name) || (!parts.status.is_server_error() && is_dependency_signal(name))
        })
        .cloned()
        .collect();
    for name in dropped {
        headers.remove(name);
    }
    if let Some(upgrade) = upgrade {
        headers.insert(UPGRADE, upgrade);
    }
    headers.remove(CONNECTION);
    // The client's connection has its own version: the server in front writes it.
    parts.version = Version::HTTP_11;
    let body = ForeignBody {
        body,
        authority: authority.clone(),
        idle: IdleTimer::new(timeout, None),
    };
    Response::from_parts(parts, PooledBody::foreign(body))
}

/// The first error of type `T` in `error`'s chain, looking inside I/O errors too (whose
/// `source` skips the error they wrap).
fn find<'a, T: std::error::Error + 'static>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            && let Some(found) = find::<T>(inner)
        {
            return Some(found);
        }
        next = e.source();
    }
    None
}

/// What a streamed request body tells the exchange: when the endpoint last took a piece of it
/// (the endpoint's wait starts again then), and the client's error if it failed.
struct Shared {
    started: tokio::time::Instant,
    /// Milliseconds from `started` to the last piece taken.
    taken_ms: AtomicU64,
    failed: parking_lot::Mutex<Option<ClientBodyError>>,
}

impl Shared {
    fn new() -> Self {
        Self {
            started: tokio::time::Instant::now(),
            taken_ms: AtomicU64::new(0),
            failed: parking_lot::Mutex::new(None),
        }
    }

    fn taken(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.taken_ms.store(ms, Ordering::Relaxed);
    }
}

/// `fut`'s output, or `None` once `timeout` passed with no piece of a streamed body taken.
async fn bounded<F: Future>(
    fut: F,
    timeout: Duration,
    shared: Option<&Shared>,
) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    let start = tokio::time::Instant::now();
    let mut seen = 0;
    loop {
        let from = shared.map_or(start, |s| {
            s.started
                .checked_add(Duration::from_millis(seen))
                .unwrap_or(start)
        });
        let deadline = from.checked_add(timeout);
        let wait = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            out = &mut fut => return Some(out),
            () = wait => {
                let now = shared.map_or(seen, |s| s.taken_ms.load(Ordering::Relaxed));
                if now == seen {
                    return None;
                }
                seen = now;
            }
        }
    }
}

/// The client's request body as hyper's client reads it: each wait for a piece bounded by the
/// client body timeout (408), its errors kept as the client's (see [`Shared`]).
pub(crate) struct ClientSide {
    body: UpstreamBody,
    idle: IdleTimer,
    shared: Option<Arc<Shared>>,
}

impl ClientSide {
    fn fail(
        &mut self,
        error: ClientBodyError,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        let kind = error.kind();
        if let Some(shared) = &self.shared {
            *shared.failed.lock() = Some(error);
        }
        Poll::Ready(Some(Err(match kind {
            super::ClientBodyErrorKind::Timeout => ClientBodyError::timeout(),
            _ => ClientBodyError::invalid("the client's request body failed"),
        })))
    }
}

impl Body for ClientSide {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.idle.progress();
                if let Some(shared) = &this.shared {
                    shared.taken();
                }
                let frame = match frame.into_trailers() {
                    Ok(mut trailers) => {
                        strip_trailers(&mut trailers);
                        Frame::trailers(trailers)
                    }
                    Err(frame) => frame,
                };
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => this.fail(ClientBodyError::from_body_error(e)),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                ready!(this.idle.poll_expired(cx));
                this.fail(ClientBodyError::timeout())
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Drops the fields a trailer may not carry (RFC 9110 §6.5.1).
fn strip_trailers(trailers: &mut HeaderMap) {
    let forbidden: Vec<HeaderName> = trailers
        .keys()
        .filter(|name| forbidden_in_trailers(name))
        .cloned()
        .collect();
    for name in forbidden {
        trailers.remove(name);
    }
}

/// An endpoint's response body read by hyper's client: each wait for a piece bounded by the
/// request timeout (`proxy_read_timeout`), its failures the endpoint's.
pub(crate) struct ForeignBody {
    body: Incoming,
    authority: Authority,
    idle: IdleTimer,
}

impl Body for ForeignBody {
    type Data = Bytes;
    type Error = UpstreamError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.idle.progress();
                let frame = match frame.into_trailers() {
                    Ok(mut trailers) => {
                        strip_trailers(&mut trailers);
                        trailers.remove(super::X_HERD_DEPENDENCY_UNAVAILABLE);
                        Frame::trailers(trailers)
                    }
                    Err(frame) => frame,
                };
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(UpstreamError::new(
                &this.authority,
                UpstreamErrorKind::Request,
                Some(Box::new(e)),
            )))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                ready!(this.idle.poll_expired(cx));
                Poll::Ready(Some(Err(UpstreamError::new(
                    &this.authority,
                    UpstreamErrorKind::Timeout,
                    None,
                ))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(
        scheme: UpstreamScheme,
        protocol: UpstreamProtocol,
        tls: &UpstreamTlsConfig,
    ) -> TransportSettings<'_> {
        TransportSettings {
            scheme,
            protocol,
            tls,
            connect_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            max_idle_per_host: 1,
        }
    }

    fn field(result: Result<Option<Arc<Transport>>, Error>) -> &'static str {
        match result {
            Err(Error::InvalidConfig { field, .. }) => field,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn settings_that_cannot_work_are_refused_with_their_field() {
        let none = UpstreamTlsConfig::default();
        let plain = settings(UpstreamScheme::Http, UpstreamProtocol::Http1, &none);
        assert!(
            Transport::new(&plain).unwrap().is_none(),
            "plain HTTP/1.1 is the fast path"
        );
        let h2c = settings(UpstreamScheme::Http, UpstreamProtocol::H2, &none);
        assert!(!Transport::new(&h2c).unwrap().unwrap().upgrades());
        let auto = settings(UpstreamScheme::Http, UpstreamProtocol::Auto, &none);
        assert_eq!(field(Transport::new(&auto)), "protocol");
        let with_ca = UpstreamTlsConfig {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..UpstreamTlsConfig::default()
        };
        let tls_on_plain = settings(UpstreamScheme::Http, UpstreamProtocol::Http1, &with_ca);
        assert_eq!(field(Transport::new(&tls_on_plain)), "tls");
        let missing_ca = settings(UpstreamScheme::Https, UpstreamProtocol::Http1, &with_ca);
        assert_eq!(field(Transport::new(&missing_ca)), "tls.ca_file");
        let half_cert = UpstreamTlsConfig {
            client_cert_file: Some("/nonexistent/cert.pem".into()),
            ..with_ca.clone()
        };
        let half = settings(UpstreamScheme::Https, UpstreamProtocol::Auto, &half_cert);
        assert_eq!(field(Transport::new(&half)), "tls.client_key_file");
    }

    #[test]
    fn heads_read_back_into_requests() {
        let head = b"POST /a?b=1 HTTP/1.1\r\nx-one: 1\r\nx-one: 2\r\nhost: api.example\r\n";
        let body = ClientSide {
            body: UpstreamBody::full(Bytes::new()),
            idle: IdleTimer::new(Duration::from_secs(1), None),
            shared: None,
        };
        let authority = Authority::from_static("127.0.0.1:8443");
        let req = request_from_head(head, &Scheme::HTTPS, &authority, body).unwrap();
        assert_eq!(req.method(), Method::POST);
        assert_eq!(req.uri(), "https://127.0.0.1:8443/a?b=1");
        assert_eq!(req.headers().get_all("x-one").iter().count(), 2);
        assert_eq!(req.headers()["host"], "api.example");
    }
}
