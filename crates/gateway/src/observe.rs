//! What the gateway tells about each request, from tower-http's layers: a request id set (or a
//! client's valid one kept) and returned to the client, W3C `traceparent` passed through or
//! started, an access log line per request (method, path, status, upstream, latency, bytes) with
//! credentials marked sensitive, and response compression where configured.
//!
//! All of it is off unless [`ObserveConfig`] is given: the proxied path without it is the same
//! code as before (see `benches/README.md` for what each part costs per request).
//!
//! ```
//! use herd_gateway::observe::ObserveConfig;
//!
//! let config: ObserveConfig = toml::from_str(r#"
//!     access_log = true
//!     [compression]
//!     min_size = 1024
//! "#).unwrap();
//! assert_eq!(config.request_id_header, "x-request-id");
//! assert!(config.traceparent);
//! ```

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use pin_project_lite::pin_project;

use http::header::{
    AUTHORIZATION, COOKIE, HeaderName, HeaderValue, PROXY_AUTHORIZATION, SET_COOKIE,
};
use http::{Request, Response};
use http_body::Body;
use serde::Deserialize;
use tower::ServiceBuilder;
use tower_http::classify::{ServerErrorsAsFailures, SharedClassifier};
use tower_http::compression::predicate::{DefaultPredicate, Predicate, SizeAbove};
use tower_http::compression::{Compression, CompressionLayer};
use tower_http::request_id::{
    MakeRequestId, PropagateRequestId, PropagateRequestIdLayer, RequestId, SetRequestId,
    SetRequestIdLayer,
};
use tower_http::sensitive_headers::{
    SetSensitiveRequestHeaders, SetSensitiveRequestHeadersLayer, SetSensitiveResponseHeaders,
    SetSensitiveResponseHeadersLayer,
};
use tower_http::trace::{MakeSpan, OnResponse, Trace, TraceLayer};
use tower_layer::Layer;
use tower_service::Service;
use tracing::Span;

use crate::BoxError;
use crate::http::{AnsweredBy, ProxyBody};
use herd_lb_core::Error;

/// The W3C trace context header.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// Vendor trace state; dropped with an invalid `traceparent`, as the W3C recommendation asks.
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The longest request id kept from a client; longer ones are replaced.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// What the gateway records and adds per request (see the [module](self)).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ObserveConfig {
    /// The request id header: a client's value is kept when it is 1 to 128 visible ASCII
    /// characters of `A-Z a-z 0-9 - _ . : / + =`, else a random 128-bit hex id replaces it; the
    /// instance gets it and the client gets it back on the response. Default `x-request-id`.
    pub request_id_header: String,
    /// Pass a valid W3C `traceparent` through, start one (a random trace, sampled) when it is
    /// missing or invalid (dropping `tracestate` with an invalid one). Default on.
    pub traceparent: bool,
    /// One log line per request at INFO, target `herd_gateway::access`: method, path (never the
    /// query), status, upstream (the endpoint that answered, when the upstream's
    /// `record_endpoint` is on, as the gateway sets it with this), latency, response bytes (its `Content-Length`; `-` when
    /// streamed), request id and trace id. Credentials (`Authorization`, `Proxy-Authorization`,
    /// `Cookie`, `Set-Cookie`) are marked sensitive and never logged. Default off (it costs a
    /// span and a formatted line per request).
    pub access_log: bool,
    /// Compress responses the client accepts compressed (gzip, br), above a size, except
    /// images, gRPC and server-sent events; `None` (the default): as the instance sent them.
    pub compression: Option<CompressionConfig>,
}

impl Default for ObserveConfig {
    fn default() -> Self {
        Self {
            request_id_header: "x-request-id".to_owned(),
            traceparent: true,
            access_log: false,
            compression: None,
        }
    }
}

/// When responses are compressed (nginx `gzip`, `gzip_min_length`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CompressionConfig {
    /// Responses with a known `Content-Length` below this stay as they are. Default 1024.
    pub min_size: u64,
}

impl Default for CompressionConfig {
    fn default() -> Self {
        Self { min_size: 1024 }
    }
}

/// A random 128-bit request id in hex (32 characters).
#[derive(Debug, Clone, Copy, Default)]
pub struct RandomRequestId;

impl MakeRequestId for RandomRequestId {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        let id = format!("{:032x}", rand::random::<u128>());
        HeaderValue::from_str(&id).ok().map(RequestId::new)
    }
}

/// Whether a client's request id may be kept: 1 to [`MAX_REQUEST_ID_LEN`] characters of
/// `A-Z a-z 0-9 - _ . : / + =`, nothing that could break a log line.
pub fn valid_request_id(bytes: &[u8]) -> bool {
    !bytes.is_empty()
        && bytes.len() <= MAX_REQUEST_ID_LEN
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/+=".contains(b))
}

/// Whether `value` is a `traceparent` to pass on (W3C Trace Context level 1, section 3.2): version
/// 00 exactly `00-{32 hex}-{16 hex}-{2 hex}`, lowercase, trace and parent ids not all zeros; a
/// later version (not `ff`) at least that long, with a `-` after the flags if longer.
pub fn valid_traceparent(value: &[u8]) -> bool {
    fn hex(field: &[u8]) -> bool {
        field
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
    }
    fn zeros(field: &[u8]) -> bool {
        field.iter().all(|&b| b == b'0')
    }
    if value.len() < 55 {
        return false;
    }
    let (version, trace, parent, flags) =
        (&value[0..2], &value[3..35], &value[36..52], &value[53..55]);
    let dashes = value[2] == b'-' && value[35] == b'-' && value[52] == b'-';
    let version_ok = hex(version) && version != b"ff";
    let rest_ok = match (version, value.len()) {
        (b"00", len) => len == 55,
        (_, 55) => true,
        (_, _) => value[55] == b'-',
    };
    dashes
        && version_ok
        && rest_ok
        && hex(trace)
        && !zeros(trace)
        && hex(parent)
        && !zeros(parent)
        && hex(flags)
}

/// A new sampled `traceparent` with random trace and parent ids.
fn new_traceparent() -> Option<HeaderValue> {
    let trace = rand::random::<u128>().max(1);
    let parent = rand::random::<u64>().max(1);
    HeaderValue::from_str(&format!("00-{trace:032x}-{parent:016x}-01")).ok()
}

/// Checks the ids a client sent before the layers that keep them: an invalid request id is
/// removed (so a fresh one is set), an invalid `traceparent` is replaced and its `tracestate`
/// dropped, a missing one started.
#[derive(Debug, Clone)]
pub struct Ids<S> {
    inner: S,
    request_id_header: HeaderName,
    traceparent: bool,
}

impl<S, B> Service<Request<B>> for Ids<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> S::Future {
        let headers = req.headers_mut();
        let mut ids = headers.get_all(&self.request_id_header).iter();
        let keep =
            ids.next().is_some_and(|v| valid_request_id(v.as_bytes())) && ids.next().is_none();
        if !keep {
            headers.remove(&self.request_id_header);
        }
        if self.traceparent {
            let mut parents = headers.get_all(TRACEPARENT).iter();
            let valid = parents
                .next()
                .is_some_and(|v| valid_traceparent(v.as_bytes()))
                && parents.next().is_none();
            if !valid {
                headers.remove(TRACESTATE);
                match new_traceparent() {
                    Some(value) => {
                        headers.insert(TRACEPARENT, value);
                    }
                    None => {
                        headers.remove(TRACEPARENT);
                    }
                }
            }
        }
        self.inner.call(req)
    }
}

/// The access log's span: one per request when the log is on, with the ids in it.
#[derive(Debug, Clone)]
pub struct AccessSpan {
    on: bool,
    request_id_header: HeaderName,
}

impl<B> MakeSpan<B> for AccessSpan {
    fn make_span(&mut self, req: &Request<B>) -> Span {
        if !self.on {
            return Span::none();
        }
        let header = |name: &HeaderName| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_owned()
        };
        let trace_id = req
            .headers()
            .get(TRACEPARENT)
            .and_then(|v| v.as_bytes().get(3..35))
            .and_then(|t| std::str::from_utf8(t).ok())
            .unwrap_or("-")
            .to_owned();
        tracing::info_span!(
            target: "herd_gateway::access",
            "request",
            method = %req.method(),
            path = ?req.uri().path(),
            request_id = %header(&self.request_id_header),
            trace_id = %trace_id,
        )
    }
}

/// The access log's line, when the response's head is ready.
#[derive(Debug, Clone, Copy)]
pub struct AccessLine {
    on: bool,
}

impl<B> OnResponse<B> for AccessLine {
    fn on_response(self, res: &Response<B>, latency: Duration, span: &Span) {
        if !self.on {
            return;
        }
        let bytes = res
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-");
        let upstream = res.extensions().get::<AnsweredBy>();
        let upstream = upstream.map_or("-", |a| a.0.as_str());
        tracing::info!(
            target: "herd_gateway::access",
            parent: span,
            status = res.status().as_u16(),
            upstream = %upstream,
            latency_ms = latency.as_secs_f64() * 1000.0,
            bytes = %bytes,
            "access"
        );
    }
}

/// What [`CompressionConfig`] compresses: tower-http's default predicate (not images, gRPC or
/// event streams) above the size; nothing when compression is off.
#[derive(Debug, Clone, Copy)]
pub struct WhenToCompress(Option<u64>);

impl Predicate for WhenToCompress {
    fn should_compress<B>(&self, response: &Response<B>) -> bool
    where
        B: Body,
    {
        self.0.is_some_and(|min| {
            DefaultPredicate::new()
                .and(SizeAbove::new(min))
                .should_compress(response)
        })
    }
}

type Traced<S> =
    Trace<S, SharedClassifier<ServerErrorsAsFailures>, AccessSpan, (), AccessLine, (), (), ()>;

type Stack<S> = SetSensitiveRequestHeaders<
    Ids<
        SetRequestId<
            PropagateRequestId<Traced<SetSensitiveResponseHeaders<Compression<S, WhenToCompress>>>>,
            RandomRequestId,
        >,
    >,
>;

/// A service behind the observation layers (see the [module](self)), answering with the
/// gateway's [`ProxyBody`]. Make it with [`ObserveLayer`].
#[derive(Clone)]
pub struct Observe<S> {
    inner: Stack<S>,
}

impl<S> fmt::Debug for Observe<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Observe").finish_non_exhaustive()
    }
}

impl<S> Service<Request<Incoming>> for Observe<S>
where
    S: Service<Request<Incoming>, Response = Response<ProxyBody>, Error = Infallible>,
{
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = ObserveFuture<<Stack<S> as Service<Request<Incoming>>>::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        ObserveFuture {
            inner: self.inner.call(req),
        }
    }
}

pin_project! {
    /// Future of [`Observe`]: the layers' future, its response body boxed into a [`ProxyBody`].
    pub struct ObserveFuture<F> {
        #[pin]
        inner: F,
    }
}

impl<F> fmt::Debug for ObserveFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObserveFuture").finish_non_exhaustive()
    }
}

impl<F, B> Future for ObserveFuture<F>
where
    F: Future<Output = Result<Response<B>, Infallible>>,
    B: Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    type Output = Result<Response<ProxyBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project()
            .inner
            .poll(cx)
            .map(|res| res.map(|res| res.map(ProxyBody::new)))
    }
}

/// Puts [`Observe`] around a service.
#[derive(Debug, Clone)]
pub struct ObserveLayer {
    request_id_header: HeaderName,
    traceparent: bool,
    access_log: bool,
    compression: Option<u64>,
}

impl ObserveLayer {
    /// The layers `config` asks for.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a request id header that is not a valid header name.
    pub fn new(config: &ObserveConfig) -> Result<Self, Error> {
        let request_id_header =
            HeaderName::try_from(config.request_id_header.as_str()).map_err(|_| {
                Error::InvalidConfig {
                    field: "observe.request_id_header",
                    reason: format!("{:?} is not a header name", config.request_id_header),
                }
            })?;
        Ok(Self {
            request_id_header,
            traceparent: config.traceparent,
            access_log: config.access_log,
            compression: config.compression.as_ref().map(|c| c.min_size),
        })
    }

    fn stack<S>(&self, inner: S) -> Stack<S> {
        ServiceBuilder::new()
            .layer(SetSensitiveRequestHeadersLayer::new([
                AUTHORIZATION,
                PROXY_AUTHORIZATION,
                COOKIE,
            ]))
            .layer_fn(|inner| Ids {
                inner,
                request_id_header: self.request_id_header.clone(),
                traceparent: self.traceparent,
            })
            .layer(SetRequestIdLayer::new(
                self.request_id_header.clone(),
                RandomRequestId,
            ))
            .layer(PropagateRequestIdLayer::new(self.request_id_header.clone()))
            .layer(
                TraceLayer::new_for_http()
                    .make_span_with(AccessSpan {
                        on: self.access_log,
                        request_id_header: self.request_id_header.clone(),
                    })
                    .on_request(())
                    .on_response(AccessLine {
                        on: self.access_log,
                    })
                    .on_body_chunk(())
                    .on_eos(())
                    .on_failure(()),
            )
            .layer(SetSensitiveResponseHeadersLayer::new([SET_COOKIE]))
            .layer(CompressionLayer::new().compress_when(WhenToCompress(self.compression)))
            .service(inner)
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner: self.stack(inner),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_are_checked_as_the_recommendation_says() {
        let ok = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert!(valid_traceparent(ok.as_bytes()));
        // A later version may be longer, with a `-` after the flags.
        assert!(valid_traceparent(
            b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-whatever"
        ));
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-zz",
        ] {
            assert!(!valid_traceparent(bad.as_bytes()), "{bad}");
        }
        for _ in 0..100 {
            let made = new_traceparent().unwrap();
            assert!(valid_traceparent(made.as_bytes()), "{made:?}");
        }
    }

    #[test]
    fn request_ids_are_bounded_and_plain() {
        let ok = |s: &str| valid_request_id(s.as_bytes());
        assert!(ok("f81d4fae-7dec-11d0-a765-00a0c91e6bf6"));
        assert!(ok(&"a".repeat(MAX_REQUEST_ID_LEN)));
        assert!(!ok(&"a".repeat(MAX_REQUEST_ID_LEN + 1)));
        assert!(!ok(""));
        assert!(!ok("a b"));
        assert!(!ok("a\"b"));
        let made = RandomRequestId.make_request_id(&Request::new(())).unwrap();
        assert!(valid_request_id(made.header_value().as_bytes()));
        assert_eq!(made.header_value().len(), 32);
    }

    #[test]
    fn a_bad_header_name_is_a_config_error() {
        let config = ObserveConfig {
            request_id_header: "bad header".to_owned(),
            ..ObserveConfig::default()
        };
        let err = ObserveLayer::new(&config).unwrap_err().to_string();
        assert!(err.contains("observe.request_id_header"), "{err}");
    }
}
