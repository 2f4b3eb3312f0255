//! The upstream's bodies: requests that can be sent again on a retry when they are small and
//! complete, and responses that are streamed from a pooled connection without boxing; and the
//! error of a client's request body that failed ([`ClientBodyError`]).

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::StatusCode;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::{BoxBody, UnsyncBoxBody};
use http_body_util::{BodyExt as _, Full};

use super::h1::Prefix;
use super::pool::PooledBody;
use crate::BoxError;

/// Body of a request sent upstream: either buffered (and replayable for retries) or streamed.
#[derive(Debug)]
pub struct UpstreamBody {
    kind: Kind,
    /// The request's head as [`HttpUpstream`](super::HttpUpstream) wrote it before the pick.
    prefix: Option<Prefix>,
}

#[derive(Debug)]
enum Kind {
    /// Not yet sent (`None` once sent or when empty). Not http-body-util's `Full`: the request
    /// head writer reads the bytes in place.
    Full(Option<Bytes>),
    Stream(UnsyncBoxBody<Bytes, BoxError>),
}

impl UpstreamBody {
    /// A complete body held in memory; can be replayed.
    pub fn full(bytes: Bytes) -> Self {
        Self {
            kind: Kind::Full(Some(bytes).filter(|b| !b.is_empty())),
            prefix: None,
        }
    }

    /// A streamed body; sent once, never retried.
    pub fn stream(body: UnsyncBoxBody<Bytes, BoxError>) -> Self {
        Self {
            kind: Kind::Stream(body),
            prefix: None,
        }
    }

    /// This body behind the head `prefix`.
    pub(crate) fn with_prefix(mut self, prefix: Prefix) -> Self {
        self.prefix = Some(prefix);
        self
    }

    /// The head written before the pick, if any.
    pub(crate) fn prefix(&self) -> Option<&Prefix> {
        self.prefix.as_ref()
    }

    /// The whole body, if it is buffered and not yet read.
    pub(crate) fn full_bytes(&self) -> Option<&[u8]> {
        match &self.kind {
            Kind::Full(Some(bytes)) => Some(bytes),
            Kind::Full(None) => Some(&[]),
            Kind::Stream(_) => None,
        }
    }

    /// A copy for a retry, if the body is buffered.
    pub fn try_clone(&self) -> Option<Self> {
        match &self.kind {
            Kind::Full(full) => Some(Self {
                kind: Kind::Full(full.clone()),
                prefix: self.prefix.clone(),
            }),
            Kind::Stream(_) => None,
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().kind {
            Kind::Full(full) => Poll::Ready(full.take().map(|b| Ok(Frame::data(b)))),
            Kind::Stream(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(full) => full.is_none(),
            Kind::Stream(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(full) => SizeHint::with_exact(full.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Stream(body) => body.size_hint(),
        }
    }
}

/// Body of a response from [`HttpUpstream`](super::HttpUpstream): the endpoint's body streamed
/// from its pooled connection, a short text the upstream wrote itself (its error responses), or
/// any other body, boxed ([`ProxyBody::new`]). The first two need no allocation of their own.
pub struct ProxyBody {
    kind: ProxyKind,
}

enum ProxyKind {
    Endpoint(PooledBody),
    Full(Full<Bytes>),
    Boxed(BoxBody<Bytes, BoxError>),
}

impl fmt::Debug for ProxyBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            ProxyKind::Endpoint(_) => "endpoint",
            ProxyKind::Full(_) => "full",
            ProxyKind::Boxed(_) => "boxed",
        };
        f.debug_struct("ProxyBody")
            .field("kind", &kind)
            .finish_non_exhaustive()
    }
}

/// An empty body.
impl Default for ProxyBody {
    fn default() -> Self {
        Self {
            kind: ProxyKind::Full(Full::default()),
        }
    }
}

impl ProxyBody {
    /// Any body, boxed.
    pub fn new<B>(body: B) -> Self
    where
        B: Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<BoxError>,
    {
        Self {
            kind: ProxyKind::Boxed(body.map_err(Into::into).boxed()),
        }
    }

    /// A complete body held in memory.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        Self {
            kind: ProxyKind::Full(Full::new(bytes.into())),
        }
    }

    pub(crate) fn endpoint(body: PooledBody) -> Self {
        Self {
            kind: ProxyKind::Endpoint(body),
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().kind {
            ProxyKind::Endpoint(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            ProxyKind::Full(full) => Pin::new(full)
                .poll_frame(cx)
                .map_err(|never| match never {}),
            ProxyKind::Boxed(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            ProxyKind::Endpoint(body) => body.is_end_stream(),
            ProxyKind::Full(full) => full.is_end_stream(),
            ProxyKind::Boxed(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            ProxyKind::Endpoint(body) => body.size_hint(),
            ProxyKind::Full(full) => full.size_hint(),
            ProxyKind::Boxed(body) => body.size_hint(),
        }
    }
}

/// How a client's request body failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientBodyErrorKind {
    /// It broke off (the client went away), did not parse (malformed chunked framing: a bad
    /// chunk size, a chunk shorter than its size, a missing CRLF) or disagreed with its own
    /// length: 400 Bad Request.
    Invalid,
    /// It went past a size limit (a body wrapped in `http_body_util::Limited`, as tower-http's
    /// `RequestBodyLimit` does): 413 Content Too Large.
    TooLarge,
    /// It stalled: no further piece of it came within the upstream's `client_body_timeout`
    /// (reset by each piece, as nginx's `client_body_timeout`): 408 Request Timeout.
    Timeout,
}

impl fmt::Display for ClientBodyErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Invalid => "invalid or incomplete",
            Self::TooLarge => "too large",
            Self::Timeout => "timed out",
        })
    }
}

/// The client's request body failed while it was read to be forwarded: the client's fault,
/// never the endpoint's.
///
/// Made where the body is read (the error the client's body yields is wrapped as it comes out,
/// so it is never mistaken for a failure of the connection to the endpoint). It is the source
/// of an [`UpstreamError`](super::UpstreamError) of kind
/// [`ClientBody`](super::UpstreamErrorKind::ClientBody) (see
/// [`UpstreamError::client_body`](super::UpstreamError::client_body)), and
/// [`HttpUpstream`](super::HttpUpstream) answers it with [`status`](Self::status) itself,
/// records [`Outcome::ClientError`](herd_lb_core::Outcome::ClientError) for the endpoint and never
/// retries it.
#[derive(Debug, thiserror::Error)]
#[error("client request body {kind}")]
pub struct ClientBodyError {
    kind: ClientBodyErrorKind,
    #[source]
    source: Option<BoxError>,
}

impl ClientBodyError {
    /// The error a client's body yielded: [`TooLarge`](ClientBodyErrorKind::TooLarge) when an
    /// `http_body_util::LengthLimitError` is in its chain, else
    /// [`Invalid`](ClientBodyErrorKind::Invalid).
    pub fn from_body_error(error: BoxError) -> Self {
        let mut next: Option<&(dyn std::error::Error + 'static)> = Some(&*error);
        let mut kind = ClientBodyErrorKind::Invalid;
        while let Some(e) = next {
            if e.is::<http_body_util::LengthLimitError>() {
                kind = ClientBodyErrorKind::TooLarge;
                break;
            }
            next = e.source();
        }
        Self {
            kind,
            source: Some(error),
        }
    }

    /// A body whose frames disagree with its framing (longer or shorter than its length).
    pub(crate) fn invalid(reason: &'static str) -> Self {
        Self {
            kind: ClientBodyErrorKind::Invalid,
            source: Some(reason.into()),
        }
    }

    /// A body that stalled past the client body timeout.
    pub(crate) fn timeout() -> Self {
        Self {
            kind: ClientBodyErrorKind::Timeout,
            source: None,
        }
    }

    /// How the body failed.
    pub fn kind(&self) -> ClientBodyErrorKind {
        self.kind
    }

    /// The status the client is answered with: 400, 413 or 408.
    pub fn status(&self) -> StatusCode {
        match self.kind {
            ClientBodyErrorKind::Invalid => StatusCode::BAD_REQUEST,
            ClientBodyErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ClientBodyErrorKind::Timeout => StatusCode::REQUEST_TIMEOUT,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body error that wraps another, as a server's own body error type does.
    #[derive(Debug, thiserror::Error)]
    #[error("body failed")]
    struct Wrapped(#[source] BoxError);

    #[tokio::test]
    async fn client_body_errors_answer_400_413_or_408() {
        let broken = ClientBodyError::from_body_error("invalid chunk size".into());
        assert_eq!(broken.kind(), ClientBodyErrorKind::Invalid);
        assert_eq!(broken.status(), StatusCode::BAD_REQUEST);

        let over = http_body_util::Limited::new(Full::new(Bytes::from_static(b"abc")), 2);
        let Err(limit) = over.collect().await else {
            panic!("3 bytes over a limit of 2");
        };
        let too_large = ClientBodyError::from_body_error(Box::new(Wrapped(limit)));
        assert_eq!(too_large.kind(), ClientBodyErrorKind::TooLarge);
        assert_eq!(too_large.status(), StatusCode::PAYLOAD_TOO_LARGE);

        assert_eq!(
            ClientBodyError::timeout().status(),
            StatusCode::REQUEST_TIMEOUT
        );
        assert_eq!(
            ClientBodyError::invalid("request body shorter than its length").to_string(),
            "client request body invalid or incomplete"
        );
    }
}
