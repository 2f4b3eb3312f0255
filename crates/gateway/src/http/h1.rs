//! HTTP/1.1 on the upstream's pooled connections: the request head written straight from the
//! request and the forwarding headers, the response head parsed with `httparse`, and response
//! bodies framed by length, by chunks or by the connection's end (RFC 9112 §6).
//!
//! The exchange runs inside the request's own future and the response body's polls, as a reverse
//! proxy's upstream side does (nginx, pingora): no connection task, no channel between the
//! request and the connection, no header map built for the request head. A general client (hyper's)
//! drives each connection from a task of its own, and a proxied request then wakes three tasks
//! and crosses two channels; here it wakes none.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};

use bytes::{Bytes, BytesMut};
use http::header::{
    CONNECTION, CONTENT_LENGTH, HOST, HeaderMap, HeaderName, HeaderValue, TRANSFER_ENCODING,
    UPGRADE,
};
use http::{Method, StatusCode, Uri, Version};
use http_body::Frame;
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;

use super::headers::{
    forbidden_in_trailers, is_dependency_signal, is_hop_by_hop, stripped_from_requests,
};

/// The largest response head read (nginx reads it into `proxy_buffer_size`, 4 or 8 KiB).
const MAX_HEAD: usize = 64 * 1024;
/// The most response headers read.
const MAX_HEADERS: usize = 100;
/// Read size: responses of common sizes arrive in one read.
const READ_SIZE: usize = 16 * 1024;
/// The most bytes of chunk extensions and trailers skipped in one body.
const MAX_CHUNK_META: u64 = 64 * 1024;

/// A protocol violation by the endpoint.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProtocolError {
    #[error("invalid response head: {0}")]
    Head(httparse::Error),
    #[error("response head larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("invalid Content-Length")]
    ContentLength,
    #[error("invalid chunked body: {0}")]
    Chunked(&'static str),
    #[error("101 Switching Protocols without an upgrade request")]
    Upgrade,
    #[error("connection closed before the response")]
    ClosedBeforeHead,
    #[error("connection closed in the response head")]
    ClosedInHead,
    #[error("connection closed {0} bytes before the end of the body")]
    ClosedInBody(u64),
}

impl ProtocolError {
    /// Whether `e` says the endpoint closed the connection without answering at all: a
    /// keep-alive connection it closed as the request went out.
    pub(crate) fn is_unanswered(e: &io::Error) -> bool {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<ProtocolError>())
            .is_some_and(|p| matches!(p, ProtocolError::ClosedBeforeHead))
    }
}

impl From<ProtocolError> for io::Error {
    fn from(e: ProtocolError) -> Self {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

/// One keep-alive connection to an endpoint and the bytes read from it but not yet used.
#[derive(Debug)]
pub(crate) struct Conn {
    io: TcpStream,
    read: BytesMut,
    /// An upgrade was asked on this connection: a `101` is the final answer (never pooled).
    upgrade: bool,
}

impl Conn {
    pub(crate) fn new(io: TcpStream) -> Self {
        Self {
            io,
            read: BytesMut::new(),
            upgrade: false,
        }
    }

    /// Takes a `101 Switching Protocols` as the final answer: the request asks an upgrade. Set
    /// only on a connection of its own, which never goes back to the pool.
    pub(crate) fn expect_upgrade(&mut self) {
        self.upgrade = true;
    }

    /// The socket and the bytes read past the response head (the upgraded protocol's first).
    pub(crate) fn into_parts(self) -> (TcpStream, BytesMut) {
        (self.io, self.read)
    }

    /// Whether an idle connection can take a request: nothing unread, and not closed by the
    /// endpoint. Costs a system call only when the socket reports itself readable.
    pub(crate) fn is_reusable(&mut self) -> bool {
        if !self.read.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        match self.io.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            // Readable while idle: closed, unasked-for bytes, or a stale readiness (then the
            // read finds nothing and clears it).
            Poll::Ready(Ok(())) => {
                let mut byte = [0_u8; 1];
                matches!(self.io.try_read(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Writes `bytes` (counting into `written`) and, whenever the endpoint stops taking them,
    /// reads what it sent meanwhile: an endpoint may answer before the whole request is sent
    /// (413, 401, a redirect) and stop reading, or answer and close. A final response head
    /// found that way ends the write, `Ok(Some(head))`; the connection must not be reused then.
    /// Costs nothing more while writes go through.
    /// `went_out`: part of the request was sent before these bytes.
    pub(crate) async fn write_watching(
        &mut self,
        bytes: &[u8],
        written: &mut usize,
        head_request: bool,
        went_out: bool,
    ) -> io::Result<Option<Head>> {
        let mut reading = true;
        let result = std::future::poll_fn(|cx| {
            self.poll_write_watching(cx, bytes, written, head_request, &mut reading)
        })
        .await;
        match result {
            // The endpoint may have answered and closed (a reset: it did not read all): its
            // answer, if it sent one, rather than the failure. The socket is broken, so the
            // read ends at once.
            Err(e) if went_out || *written > 0 => match self.read_head(head_request).await {
                Ok(head) => Ok(Some(head)),
                Err(_) => Err(e),
            },
            result => result,
        }
    }

    fn poll_write_watching(
        &mut self,
        cx: &mut Context<'_>,
        bytes: &[u8],
        written: &mut usize,
        head_request: bool,
        reading: &mut bool,
    ) -> Poll<io::Result<Option<Head>>> {
        while *written < bytes.len() {
            match Pin::new(&mut self.io).poll_write(cx, &bytes[*written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => *written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    while *reading {
                        match self.poll_fill(cx) {
                            Poll::Ready(Ok(n)) if n > 0 => {
                                if let Some(head) = self.buffered_head(head_request, &mut false)? {
                                    return Poll::Ready(Ok(Some(head)));
                                }
                            }
                            // Closed or failed: the write will tell.
                            Poll::Ready(_) => *reading = false,
                            Poll::Pending => break,
                        }
                    }
                    return Poll::Pending;
                }
            }
        }
        Poll::Ready(Ok(None))
    }

    /// A final response head from the bytes read so far, if complete. Interim ones are skipped
    /// (noted in `interim`); a `101` is refused unless the request asked an upgrade
    /// ([`Conn::expect_upgrade`]).
    fn buffered_head(
        &mut self,
        head_request: bool,
        interim: &mut bool,
    ) -> io::Result<Option<Head>> {
        while !self.read.is_empty() {
            match parse_head(&mut self.read, head_request)? {
                Some(head) if head.status == StatusCode::SWITCHING_PROTOCOLS => {
                    if self.upgrade {
                        return Ok(Some(head));
                    }
                    return Err(ProtocolError::Upgrade.into());
                }
                Some(head) if head.status.is_informational() => *interim = true,
                Some(head) => return Ok(Some(head)),
                None if self.read.len() >= MAX_HEAD => {
                    return Err(ProtocolError::HeadTooLarge.into());
                }
                None => return Ok(None),
            }
        }
        Ok(None)
    }

    /// Reads more bytes into the buffer; `Ok(0)` at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.read.capacity() - self.read.len() < READ_SIZE / 4 {
            self.read.reserve(READ_SIZE);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.read)
    }

    /// Reads the final response head (interim 1xx responses are skipped). `head_request`: the
    /// request was `HEAD`, so the response has no body whatever its headers say. Fails with
    /// [`ProtocolError::ClosedBeforeHead`] when the endpoint closed without sending a byte.
    pub(crate) async fn read_head(&mut self, head_request: bool) -> io::Result<Head> {
        // Whether an interim response came: then the request was answered, if not finally.
        let mut interim = false;
        std::future::poll_fn(|cx| self.poll_head(cx, head_request, &mut interim)).await
    }

    fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
        head_request: bool,
        interim: &mut bool,
    ) -> Poll<io::Result<Head>> {
        loop {
            if let Some(head) = self.buffered_head(head_request, interim)? {
                return Poll::Ready(Ok(head));
            }
            let empty = self.read.is_empty() && !*interim;
            match ready!(self.poll_fill(cx)) {
                Ok(0) if empty => return Poll::Ready(Err(ProtocolError::ClosedBeforeHead.into())),
                Ok(0) => return Poll::Ready(Err(ProtocolError::ClosedInHead.into())),
                Ok(_) => {}
                // A reset with nothing received is an unanswered request, as a close is.
                Err(e) if empty && e.kind() == io::ErrorKind::ConnectionReset => {
                    return Poll::Ready(Err(ProtocolError::ClosedBeforeHead.into()));
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// The next piece of a body framed by `framing` (a chunked body's trailers last), `None` at
    /// its end.
    pub(crate) fn poll_body(
        &mut self,
        cx: &mut Context<'_>,
        framing: &mut Framing,
    ) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        loop {
            match framing {
                Framing::Length(0) | Framing::Done | Framing::Upgraded | Framing::Foreign => {
                    return Poll::Ready(None);
                }
                Framing::Length(left) => {
                    if !self.read.is_empty() {
                        let n = self
                            .read
                            .len()
                            .min(usize::try_from(*left).unwrap_or(usize::MAX));
                        *left -= n as u64;
                        if *left == 0 {
                            *framing = Framing::Done;
                        }
                        return Poll::Ready(Some(Ok(Frame::data(self.read.split_to(n).freeze()))));
                    }
                    let left = *left;
                    if ready!(self.poll_fill(cx))? == 0 {
                        let e = ProtocolError::ClosedInBody(left);
                        return Poll::Ready(Some(Err(e.into())));
                    }
                }
                Framing::Chunked(decoder) => {
                    match decoder.decode(&mut self.read) {
                        Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                        Ok(Decoded::Done) => {
                            let trailers = decoder.take_trailers();
                            *framing = Framing::Done;
                            return Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))));
                        }
                        Ok(Decoded::NeedMore) => {}
                        Err(e) => return Poll::Ready(Some(Err(e.into()))),
                    }
                    if ready!(self.poll_fill(cx))? == 0 {
                        let e = ProtocolError::Chunked("connection closed in the body");
                        return Poll::Ready(Some(Err(e.into())));
                    }
                }
                Framing::Close => {
                    if !self.read.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(self.read.split().freeze()))));
                    }
                    if ready!(self.poll_fill(cx))? == 0 {
                        *framing = Framing::Done;
                        return Poll::Ready(None);
                    }
                }
            }
        }
    }

    /// Whether bytes beyond the response were read (then the connection is not reused).
    pub(crate) fn has_unread(&self) -> bool {
        !self.read.is_empty()
    }

    /// Takes `n` bytes already read (the caller checked they are there).
    pub(crate) fn take(&mut self, n: usize) -> Bytes {
        self.read.split_to(n).freeze()
    }

    /// How many bytes are read and not yet used.
    pub(crate) fn buffered(&self) -> usize {
        self.read.len()
    }
}

/// How a response body ends.
#[derive(Debug)]
pub(crate) enum Framing {
    /// After this many more bytes.
    Length(u64),
    /// At the last chunk.
    Chunked(ChunkedDecoder),
    /// When the endpoint closes the connection.
    Close,
    /// Ended.
    Done,
    /// None: the connection switched protocols (`101`) and is the upgraded stream's now.
    Upgraded,
    /// Not on this connection: a body from hyper's client (an HTTPS or HTTP/2 endpoint).
    Foreign,
}

/// A response head.
#[derive(Debug)]
pub(crate) struct Head {
    pub(crate) status: StatusCode,
    pub(crate) version: Version,
    /// Without hop-by-hop headers.
    pub(crate) headers: HeaderMap,
    pub(crate) framing: Framing,
    /// The connection may carry another request after this response.
    pub(crate) keep_alive: bool,
}

/// Parses a response head from the front of `buf` (consuming it), or `None` if incomplete.
pub(crate) fn parse_head(buf: &mut BytesMut, head_request: bool) -> io::Result<Option<Head>> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut res, buf, &mut slots)
    {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(ProtocolError::Head(e).into()),
    };
    let code = res.code.unwrap_or(0);
    let status =
        StatusCode::from_u16(code).map_err(|_| ProtocolError::Head(httparse::Error::Status))?;
    let version = if res.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    // Header values are kept as slices of the head's bytes, without copies: note where they
    // are, then take the head out of the buffer.
    let base = buf.as_ptr() as usize;
    let mut found: Vec<(HeaderName, usize, usize)> = Vec::with_capacity(res.headers.len());
    let mut length: Option<u64> = None;
    // The Content-Length values were one plain number (forwarded as they came).
    let mut plain_length = true;
    let mut chunked = false;
    let mut encoded = false;
    let mut close = false;
    let mut keep_alive_token = false;
    let mut named = false;
    // The dependency signal is kept only where it means something (and is removed before the
    // client sees it): on a 5xx.
    let server_error = status.is_server_error();
    for h in res.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| ProtocolError::Head(httparse::Error::HeaderName))?;
        if name == CONTENT_LENGTH {
            let n = content_length(h.value).ok_or(ProtocolError::ContentLength)?;
            if length.is_some_and(|m| m != n) {
                return Err(ProtocolError::ContentLength.into());
            }
            plain_length &= length.is_none() && h.value.iter().all(u8::is_ascii_digit);
            if length.is_some() {
                // A repeat: one value goes on (RFC 9110 §8.6), the first one or the number.
                length = Some(n);
                continue;
            }
            length = Some(n);
        } else if name == TRANSFER_ENCODING {
            encoded = true;
            chunked = last_token(h.value).eq_ignore_ascii_case(b"chunked");
            continue;
        } else if name == CONNECTION {
            for token in h.value.split(|b| *b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive_token = true;
                } else if !token.is_empty() && !switches_to(status, token) {
                    named = true;
                }
            }
            continue;
        } else if is_hop_by_hop(&name) || (!server_error && is_dependency_signal(&name)) {
            // A `101` keeps the protocol it switches to, for the client's own `101`.
            if !(name == UPGRADE && status == StatusCode::SWITCHING_PROTOCOLS) {
                continue;
            }
        }
        let start = h.value.as_ptr() as usize - base;
        found.push((name, start, start + h.value.len()));
    }
    let head = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(found.len());
    for (name, start, end) in found {
        if encoded && name == CONTENT_LENGTH {
            // Transfer-Encoding overrides Content-Length (RFC 9112 §6.3).
            continue;
        }
        let value = HeaderValue::from_maybe_shared(head.slice(start..end))
            .map_err(|_| ProtocolError::Head(httparse::Error::HeaderValue))?;
        headers.append(name, value);
    }
    if let (Some(n), false, false) = (length, encoded, plain_length) {
        headers.insert(CONTENT_LENGTH, HeaderValue::from(n));
    }
    if named {
        remove_connection_named(&head, &mut headers);
    }
    let framing = if head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        if status == StatusCode::SWITCHING_PROTOCOLS {
            Framing::Upgraded
        } else {
            Framing::Length(0)
        }
    } else if chunked {
        Framing::Chunked(ChunkedDecoder::default())
    } else if encoded {
        Framing::Close
    } else {
        length.map_or(Framing::Close, Framing::Length)
    };
    // HTTP/1.0 closes unless asked not to; `close` wins over `keep-alive`. Framing that says two
    // things (Transfer-Encoding with Content-Length, or in HTTP/1.0: RFC 9112 §6.1, §6.3) is
    // read as Transfer-Encoding says, but the connection is not trusted with another request.
    let close = close
        || (version == Version::HTTP_10 && (!keep_alive_token || encoded))
        || (encoded && length.is_some());
    let keep_alive = !close && !matches!(framing, Framing::Close);
    Ok(Some(Head {
        status,
        version,
        headers,
        framing,
        keep_alive,
    }))
}

/// Whether `token` of a `Connection` header is the `upgrade` of a `101`, whose `Upgrade` stays
/// (the protocol switched to, for the client's own `101`).
fn switches_to(status: StatusCode, token: &[u8]) -> bool {
    status == StatusCode::SWITCHING_PROTOCOLS && token.eq_ignore_ascii_case(b"upgrade")
}

/// Removes the headers a `Connection` header of `head` names (rare: parsed again).
fn remove_connection_named(head: &Bytes, headers: &mut HeaderMap) {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut []);
    if httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut res, head, &mut slots)
        .is_err()
    {
        return;
    }
    for h in res.headers.iter() {
        if h.name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|b| *b == b',') {
                if let Ok(name) = HeaderName::from_bytes(token.trim_ascii()) {
                    headers.remove(name);
                }
            }
        }
    }
}

/// A `Content-Length` value: digits, or a list of equal ones (RFC 9110 §8.6).
fn content_length(value: &[u8]) -> Option<u64> {
    let mut found = None;
    for part in value.split(|b| *b == b',') {
        let part = part.trim_ascii();
        if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = part.iter().fold(0_u64, |n, d| n * 10 + u64::from(d - b'0'));
        if found.is_some_and(|m| m != n) {
            return None;
        }
        found = Some(n);
    }
    found
}

fn last_token(value: &[u8]) -> &[u8] {
    value
        .rsplit(|b| *b == b',')
        .next()
        .unwrap_or_default()
        .trim_ascii()
}

/// What [`ChunkedDecoder::decode`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decoded {
    Data(Bytes),
    NeedMore,
    Done,
}

/// Decodes a chunked body (RFC 9112 §7.1) as its bytes arrive: chunk data is passed on as it
/// comes, extensions are skipped and trailers kept (both bounded), line ends must be CRLF.
#[derive(Debug, Default)]
pub(crate) struct ChunkedDecoder {
    state: ChunkState,
    /// Bytes of extensions and trailers read so far.
    meta: u64,
    /// The trailer section's lines, each with its CRLF.
    trailers: Vec<u8>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// At the start of a chunk-size line.
    #[default]
    Start,
    /// In the size's hex digits (`size` so far, `digits` read).
    Size {
        size: u64,
        digits: u8,
    },
    /// Whitespace after the size: more of it, `;` or CR.
    SizeLws {
        size: u64,
    },
    /// In the extensions, up to CR.
    Ext {
        size: u64,
    },
    /// CR read after the size line.
    SizeLf {
        size: u64,
    },
    Data {
        left: u64,
    },
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    Trailer,
    /// In a trailer line.
    TrailerLine,
    TrailerLf,
    EndLf,
    Done,
}

impl ChunkedDecoder {
    /// Decodes from the front of `buf`, consuming what it used.
    pub(crate) fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, ProtocolError> {
        use ChunkState as S;
        let mut i = 0;
        let result = loop {
            if let S::Data { left } = self.state {
                if i < buf.len() {
                    let n = (buf.len() - i).min(usize::try_from(left).unwrap_or(usize::MAX));
                    let _ = buf.split_to(i);
                    let data = buf.split_to(n).freeze();
                    self.state = if left == n as u64 {
                        S::DataCr
                    } else {
                        S::Data {
                            left: left - n as u64,
                        }
                    };
                    return Ok(Decoded::Data(data));
                }
                break Decoded::NeedMore;
            }
            if self.state == S::Done {
                break Decoded::Done;
            }
            let Some(&b) = buf.get(i) else {
                break Decoded::NeedMore;
            };
            i += 1;
            self.state = match self.state {
                S::Start => match hex(b) {
                    Some(d) => S::Size {
                        size: u64::from(d),
                        digits: 1,
                    },
                    None => return Err(ProtocolError::Chunked("chunk size expected")),
                },
                S::Size { size, digits } => match hex(b) {
                    Some(_) if digits >= 15 => {
                        return Err(ProtocolError::Chunked("chunk size too large"));
                    }
                    Some(d) => S::Size {
                        size: size << 4 | u64::from(d),
                        digits: digits + 1,
                    },
                    None => self.after_size(size, b)?,
                },
                S::SizeLws { size } => self.after_size(size, b)?,
                S::Ext { size } => match b {
                    b'\r' => S::SizeLf { size },
                    b'\n' => return Err(ProtocolError::Chunked("bare LF in chunk extensions")),
                    _ => {
                        self.count_meta()?;
                        S::Ext { size }
                    }
                },
                S::SizeLf { size } => match b {
                    b'\n' if size == 0 => S::Trailer,
                    b'\n' => S::Data { left: size },
                    _ => return Err(ProtocolError::Chunked("LF expected after chunk size")),
                },
                S::DataCr => match b {
                    b'\r' => S::DataLf,
                    _ => return Err(ProtocolError::Chunked("CRLF expected after chunk data")),
                },
                S::DataLf => match b {
                    b'\n' => S::Start,
                    _ => return Err(ProtocolError::Chunked("CRLF expected after chunk data")),
                },
                S::Trailer => match b {
                    b'\r' => S::EndLf,
                    b'\n' => return Err(ProtocolError::Chunked("bare LF in trailers")),
                    _ => {
                        self.count_meta()?;
                        self.trailers.push(b);
                        S::TrailerLine
                    }
                },
                S::TrailerLine => {
                    self.count_meta()?;
                    self.trailers.push(b);
                    match b {
                        b'\r' => S::TrailerLf,
                        b'\n' => return Err(ProtocolError::Chunked("bare LF in trailers")),
                        _ => S::TrailerLine,
                    }
                }
                S::TrailerLf => match b {
                    b'\n' => {
                        self.trailers.push(b);
                        S::Trailer
                    }
                    _ => return Err(ProtocolError::Chunked("LF expected in trailers")),
                },
                S::EndLf => match b {
                    b'\n' => S::Done,
                    _ => return Err(ProtocolError::Chunked("LF expected at the end")),
                },
                // Handled before a byte is read.
                S::Data { .. } | S::Done => return Err(ProtocolError::Chunked("decoder state")),
            };
        };
        let _ = buf.split_to(i);
        Ok(result)
    }

    /// The trailer fields, once the body has ended: those that parse as header fields, without
    /// the ones a trailer may not carry (framing, routing, credentials, cookies, hop-by-hop:
    /// RFC 9110 §6.5.1; see [`forbidden_in_trailers`]).
    pub(crate) fn take_trailers(&mut self) -> Option<HeaderMap> {
        if self.trailers.is_empty() {
            return None;
        }
        self.trailers.extend_from_slice(b"\r\n");
        let mut slots = [httparse::EMPTY_HEADER; 32];
        let Ok(httparse::Status::Complete((_, fields))) =
            httparse::parse_headers(&self.trailers, &mut slots)
        else {
            tracing::debug!("chunked body: trailers that do not parse are dropped");
            return None;
        };
        let mut map = HeaderMap::with_capacity(fields.len());
        for field in fields {
            let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(field.name.as_bytes()),
                HeaderValue::from_bytes(field.value),
            ) else {
                continue;
            };
            if !forbidden_in_trailers(&name) {
                map.append(name, value);
            }
        }
        (!map.is_empty()).then_some(map)
    }

    /// The state after byte `b` that follows a chunk size (or its extensions).
    fn after_size(&mut self, size: u64, b: u8) -> Result<ChunkState, ProtocolError> {
        match b {
            b'\r' => Ok(ChunkState::SizeLf { size }),
            b'\n' => Err(ProtocolError::Chunked("bare LF after chunk size")),
            b';' => {
                self.count_meta()?;
                Ok(ChunkState::Ext { size })
            }
            b' ' | b'\t' => {
                self.count_meta()?;
                Ok(ChunkState::SizeLws { size })
            }
            _ => Err(ProtocolError::Chunked("invalid chunk size line")),
        }
    }

    fn count_meta(&mut self) -> Result<(), ProtocolError> {
        self.meta += 1;
        if self.meta > MAX_CHUNK_META {
            return Err(ProtocolError::Chunked("extensions or trailers too long"));
        }
        Ok(())
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// How a request body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestFraming {
    /// No body and no framing header (a `GET` without a body).
    None,
    Length(u64),
    Chunked,
}

impl RequestFraming {
    /// For a body of `len` bytes if known.
    pub(crate) fn new(method: &Method, len: Option<u64>) -> Self {
        match len {
            Some(0) if !matches!(*method, Method::POST | Method::PUT | Method::PATCH) => Self::None,
            Some(n) => Self::Length(n),
            None => Self::Chunked,
        }
    }
}

/// The request head's headers that the endpoint sets, written after the request's own.
#[derive(Debug)]
pub(crate) struct Forwarding<'a> {
    /// `Host` to send instead of the request's (none: keep the request's).
    pub(crate) host: Option<&'a [u8]>,
    pub(crate) proto: &'a [u8],
    /// `X-Forwarded-Host`.
    pub(crate) forwarded_host: Option<&'a [u8]>,
}

/// The front of a request head written once, before the endpoint is picked: everything but a
/// `Host` that names the endpoint, the framing header and the final empty line. A retry's copy
/// of the request is then this (shared) and the body, with no header map to clone.
#[derive(Debug, Clone, Default)]
pub(crate) struct Prefix {
    pub(crate) bytes: Bytes,
    /// It holds the `Host` line (the client's, kept): else the endpoint writes its own.
    pub(crate) has_host: bool,
}

/// Appends `name: value` and CRLF.
pub(crate) fn write_line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Appends the request line over HTTP/1.1 with `uri` in origin form (`/path?query`), as nginx's
/// `proxy_http_version 1.1` sends: the path is `/` when the URI has none (`http://host?q`
/// included); `*` (asterisk-form) stays.
pub(crate) fn write_request_line(out: &mut Vec<u8>, method: &Method, uri: &Uri) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(match uri.path() {
        "" => b"/",
        path => path.as_bytes(),
    });
    if let Some(query) = uri.query() {
        out.push(b'?');
        out.extend_from_slice(query.as_bytes());
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
}

/// Writes an HTTP/1.1 request head to `out`, all but its end ([`end_head`]): origin-form
/// target, the request's headers (but those [`stripped_from_requests`], its `Host` only when
/// `forwarding` replaces it) and `forwarding`'s.
pub(crate) fn write_head(
    out: &mut Vec<u8>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    forwarding: &Forwarding<'_>,
) {
    write_request_line(out, method, uri);
    if let Some(host) = forwarding.host {
        write_line(out, b"host", host);
    }
    for (name, value) in headers {
        let replaced = if name == HOST {
            forwarding.host.is_some()
        } else {
            stripped_from_requests(name)
        };
        if !replaced {
            write_line(out, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    write_line(out, b"x-forwarded-proto", forwarding.proto);
    if let Some(host) = forwarding.forwarded_host {
        write_line(out, b"x-forwarded-host", host);
    }
}

/// Ends a request head: its framing header and the empty line.
pub(crate) fn end_head(out: &mut Vec<u8>, framing: RequestFraming) {
    match framing {
        RequestFraming::None => {}
        RequestFraming::Length(n) => write_line(out, b"content-length", itoa_u64(n, &mut [0; 20])),
        RequestFraming::Chunked => write_line(out, b"transfer-encoding", b"chunked"),
    }
    out.extend_from_slice(b"\r\n");
}

/// `n` in decimal, in `buf`.
fn itoa_u64(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// Appends one chunk of a chunked request body (`data` not empty) to `out`.
pub(crate) fn write_chunk(out: &mut Vec<u8>, data: &[u8]) {
    let mut size = [0_u8; 16];
    let mut i = size.len();
    let mut n = data.len();
    loop {
        i -= 1;
        size[i] = b"0123456789abcdef"[n & 15];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&size[i..]);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The end of a chunked body.
pub(crate) const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Appends the end of a chunked request body with the client's `trailers`, but those a trailer
/// may not carry ([`forbidden_in_trailers`]).
pub(crate) fn write_last_chunk(out: &mut Vec<u8>, trailers: &HeaderMap) {
    out.extend_from_slice(b"0\r\n");
    for (name, value) in trailers {
        if !forbidden_in_trailers(name) {
            write_line(out, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[&[u8]]) -> Result<(Vec<u8>, bool), ProtocolError> {
        let mut decoder = ChunkedDecoder::default();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for piece in input {
            buf.extend_from_slice(piece);
            loop {
                match decoder.decode(&mut buf)? {
                    Decoded::Data(d) => out.extend_from_slice(&d),
                    Decoded::NeedMore => break,
                    Decoded::Done => return Ok((out, true)),
                }
            }
        }
        Ok((out, false))
    }

    #[test]
    fn chunked_bodies_decode_whole_and_byte_by_byte() {
        let body = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nx-trailer: 1\r\n\r\n";
        assert_eq!(
            decode_all(&[body]).unwrap(),
            (b"hello, world".to_vec(), true)
        );
        let bytes: Vec<&[u8]> = body.chunks(1).collect();
        assert_eq!(
            decode_all(&bytes).unwrap(),
            (b"hello, world".to_vec(), true)
        );
        let lws = b"5 \t;a=b \r\nhello\r\n0 \r\n\r\n";
        assert_eq!(decode_all(&[lws]).unwrap(), (b"hello".to_vec(), true));
        let upper = b"A\r\n0123456789\r\n0\r\n\r\n";
        assert_eq!(
            decode_all(&[upper]).unwrap(),
            (b"0123456789".to_vec(), true)
        );
    }

    #[test]
    fn trailers_are_kept_without_the_fields_a_trailer_may_not_carry() {
        let mut decoder = ChunkedDecoder::default();
        let mut buf =
            BytesMut::from(&b"0\r\ngrpc-status: 0\r\ncontent-length: 5\r\nx-sum: ab\r\n\r\n"[..]);
        assert_eq!(decoder.decode(&mut buf).unwrap(), Decoded::Done);
        let trailers = decoder.take_trailers().unwrap();
        assert_eq!(trailers.len(), 2, "{trailers:?}");
        assert_eq!(trailers["grpc-status"], "0");
        assert_eq!(trailers["x-sum"], "ab");
        let mut none = ChunkedDecoder::default();
        assert_eq!(
            none.decode(&mut BytesMut::from(&b"0\r\n\r\n"[..])).unwrap(),
            Decoded::Done
        );
        assert!(none.take_trailers().is_none());
    }

    #[test]
    fn chunked_decoding_stops_at_the_end_and_leaves_what_follows() {
        let mut decoder = ChunkedDecoder::default();
        let mut buf = BytesMut::from(&b"1\r\na\r\n0\r\n\r\nHTTP/1.1"[..]);
        assert_eq!(
            decoder.decode(&mut buf).unwrap(),
            Decoded::Data(Bytes::from("a"))
        );
        assert_eq!(decoder.decode(&mut buf).unwrap(), Decoded::Done);
        assert_eq!(&buf[..], b"HTTP/1.1");
    }

    #[test]
    fn malformed_chunked_bodies_are_refused() {
        for bad in [
            &b"x\r\n"[..],
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhelloXX0\r\n\r\n",
            b"fffffffffffffffff\r\n",
            b"0\r\n\rX",
            b"0x5\r\nhello\r\n0\r\n\r\n",
            b"5 x\r\nhello\r\n0\r\n\r\n",
            b"5;a\nhello\r\n0\r\n\r\n",
        ] {
            assert!(
                decode_all(&[bad]).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long_ext = [b"1;".as_slice(), &vec![b'e'; 70_000], b"\r\n"].concat();
        assert!(decode_all(&[&long_ext]).is_err());
    }

    #[test]
    fn request_trailers_keep_only_what_a_trailer_may_carry() {
        let mut trailers = HeaderMap::new();
        trailers.insert("x-checksum", HeaderValue::from_static("abc"));
        trailers.insert("set-cookie", HeaderValue::from_static("sid=forged"));
        trailers.insert("authorization", HeaderValue::from_static("Bearer x"));
        trailers.insert("content-length", HeaderValue::from_static("0"));
        let mut out = Vec::new();
        write_last_chunk(&mut out, &trailers);
        assert_eq!(out, b"0\r\nx-checksum: abc\r\n\r\n");
        out.clear();
        write_last_chunk(&mut out, &HeaderMap::new());
        assert_eq!(out, LAST_CHUNK);
    }

    #[test]
    fn response_trailers_lose_cookies_credentials_and_signals() {
        let mut decoder = ChunkedDecoder::default();
        let mut buf = BytesMut::from(
            &b"0\r\nset-cookie: sid=forged\r\nauthorization: x\r\nwww-authenticate: y\r\n\
               x-herd-dependency-unavailable: postgres\r\ngrpc-status: 0\r\n\r\n"[..],
        );
        assert_eq!(decoder.decode(&mut buf).unwrap(), Decoded::Done);
        let trailers = decoder.take_trailers().unwrap();
        assert_eq!(trailers.len(), 1, "{trailers:?}");
        assert_eq!(trailers["grpc-status"], "0");
    }

    #[test]
    fn chunks_encode_with_hex_sizes() {
        let mut out = Vec::new();
        write_chunk(&mut out, &[b'x'; 26]);
        assert!(out.starts_with(b"1a\r\nxxx"));
        out.extend_from_slice(LAST_CHUNK);
        let (decoded, done) = decode_all(&[&out]).unwrap();
        assert_eq!((decoded.len(), done), (26, true));
    }

    fn head(text: &str, head_request: bool) -> io::Result<Option<Head>> {
        parse_head(&mut BytesMut::from(text), head_request)
    }

    #[test]
    fn response_heads_give_their_framing_and_lose_hop_by_hop_headers() {
        let h = head(
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: keep-alive, x-hop\r\nx-hop: 1\r\nkeep-alive: timeout=5\r\nx-kept: 2\r\n\r\nhello",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.status, StatusCode::OK);
        assert!(matches!(h.framing, Framing::Length(5)));
        assert!(h.keep_alive);
        assert_eq!(h.headers.len(), 2, "{:?}", h.headers);
        assert_eq!(h.headers["x-kept"], "2");

        let h = head(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 9\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert!(matches!(h.framing, Framing::Chunked(_)));
        assert!(h.headers.is_empty(), "{:?}", h.headers);

        let h = head("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert!(matches!(h.framing, Framing::Close) && !h.keep_alive);

        let h = head("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert!(!h.keep_alive);
        let h = head(
            "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert!(h.keep_alive);

        let h = head(
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert!(!h.keep_alive);

        let h = head("HTTP/1.1 200 OK\r\n\r\n", false).unwrap().unwrap();
        assert!(matches!(h.framing, Framing::Close) && !h.keep_alive);
    }

    #[test]
    fn the_dependency_signal_is_read_from_a_5xx_only() {
        let text = "HTTP/1.1 {status}\r\nx-herd-dependency-unavailable: postgres\r\nx-kept: 1\r\ncontent-length: 0\r\n\r\n";
        let h = head(&text.replace("{status}", "503 Service Unavailable"), false)
            .unwrap()
            .unwrap();
        assert_eq!(h.headers["x-herd-dependency-unavailable"], "postgres");
        for status in ["200 OK", "404 Not Found"] {
            let h = head(&text.replace("{status}", status), false)
                .unwrap()
                .unwrap();
            assert!(
                !h.headers.contains_key("x-herd-dependency-unavailable"),
                "{status}"
            );
            assert_eq!(h.headers["x-kept"], "1");
        }
    }

    #[test]
    fn bodiless_responses_have_no_body_whatever_their_headers_say() {
        for (text, head_request) in [
            ("HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n", true),
            ("HTTP/1.1 204 No Content\r\n\r\n", false),
            (
                "HTTP/1.1 304 Not Modified\r\ncontent-length: 10\r\n\r\n",
                false,
            ),
        ] {
            let h = head(text, head_request).unwrap().unwrap();
            assert!(matches!(h.framing, Framing::Length(0)), "{text}");
            assert!(h.keep_alive);
        }
    }

    #[test]
    fn bad_response_heads_are_refused_and_partial_ones_wait() {
        assert!(
            head("HTTP/1.1 200 OK\r\ncontent-len", false)
                .unwrap()
                .is_none()
        );
        for bad in [
            "HTTX/1.1 200 OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 5, 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999\r\n\r\n",
        ] {
            assert!(head(bad, false).is_err(), "{bad}");
        }
        assert!(matches!(
            head("HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\n\r\n", false)
                .unwrap()
                .unwrap()
                .framing,
            Framing::Length(5)
        ));
    }

    #[test]
    fn request_heads_carry_the_forwarding_headers_once() {
        let mut headers = HeaderMap::new();
        headers.insert(HOST, HeaderValue::from_static("client.example"));
        headers.insert("x-forwarded-proto", HeaderValue::from_static("spoofed"));
        headers.insert(
            "forwarded",
            HeaderValue::from_static("for=6.6.6.6;proto=https"),
        );
        headers.insert(
            "proxy-authorization",
            HeaderValue::from_static("Basic c2VjcmV0"),
        );
        headers.insert(CONTENT_LENGTH, HeaderValue::from_static("99"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        let mut out = Vec::new();
        let forwarding = Forwarding {
            host: Some(b"10.0.0.1:80"),
            proto: b"https",
            forwarded_host: Some(b"client.example"),
        };
        let uri: http::Uri = "/a?b=1".parse().unwrap();
        write_head(&mut out, &Method::POST, &uri, &headers, &forwarding);
        end_head(&mut out, RequestFraming::new(&Method::POST, Some(3)));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /a?b=1 HTTP/1.1\r\nhost: 10.0.0.1:80\r\nx-kept: 1\r\n\
             x-forwarded-proto: https\r\nx-forwarded-host: client.example\r\n\
             content-length: 3\r\n\r\n"
        );
        assert_eq!(
            RequestFraming::new(&Method::GET, Some(0)),
            RequestFraming::None
        );
        assert_eq!(
            RequestFraming::new(&Method::POST, Some(0)),
            RequestFraming::Length(0)
        );
        assert_eq!(
            RequestFraming::new(&Method::GET, None),
            RequestFraming::Chunked
        );
    }
}
