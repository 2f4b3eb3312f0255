//! The upstream's bodies: requests that can be sent again on a retry when they are small and
//! complete, and responses that are streamed from a pooled connection without boxing.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::{BoxBody, UnsyncBoxBody};
use http_body_util::{BodyExt as _, Full};

use super::h1::Prefix;
use super::pool::PooledBody;
use crate::balancer::BoxError;

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
