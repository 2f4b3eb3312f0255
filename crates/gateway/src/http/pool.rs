//! Keep-alive HTTP/1.1 connections to one endpoint, pooled per thread.
//!
//! Each thread that sends requests keeps its own idle connections, as nginx keeps its `keepalive`
//! connections per worker process. The exchange itself runs in the request's future and its
//! response body (see [`super::h1`]), so a request never wakes another task or thread. A
//! connection goes back to the pool as soon as its response body has been read to the end; a
//! body dropped early closes it. Idle connections older than the idle timeout, or closed by the
//! endpoint, are dropped when met at checkout.
//!
//! Each connection also keeps the timer that bounds its requests' wait for a response head. A
//! request does not touch it: it carries its own deadline, and when the timer fires before that
//! deadline (it was set for an earlier request) it is set again for the later one. A timer per
//! request would be registered in and removed from the timer wheel every time, and even a reset
//! per request costs more than the rest of the request's time keeping.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Response;
use http::uri::Authority;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt as _;
use pin_project_lite::pin_project;

use super::body::{ClientBodyError, UpstreamBody};
use super::client::ForeignBody;
use super::h1::{
    Conn, Framing, Head, LAST_CHUNK, ProtocolError, RequestFraming, write_chunk, write_last_chunk,
};
use super::upstream::{UpstreamError, UpstreamErrorKind};
use crate::BoxError;

use super::idle::{IdleTimer, Timer};

/// Where and how to connect to one endpoint.
#[derive(Debug)]
pub(crate) struct EndpointPool {
    authority: Authority,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
    /// The longest wait for each piece of a streamed request body (`client_body_timeout`).
    body_timeout: Duration,
}

struct Idle {
    conn: Conn,
    /// When the connection stops being reused (`None`: never).
    expires: Option<Instant>,
    timer: Option<Timer>,
}

thread_local! {
    /// This thread's idle connections, by endpoint (entries of dropped endpoints are pruned).
    static IDLE: RefCell<Vec<(Weak<EndpointPool>, Vec<Idle>)>> = const { RefCell::new(Vec::new()) };
}

/// A request ready for the wire: its head (with a buffered body after it) written once, so it
/// can be sent again as it is on another connection.
pub(crate) struct Message {
    /// The head, and the whole body when it is buffered.
    pub(crate) bytes: Vec<u8>,
    /// A body streamed after the head (sent once).
    pub(crate) stream: Option<UpstreamBody>,
    pub(crate) framing: RequestFraming,
    /// A `HEAD` request: its response has no body.
    pub(crate) head_request: bool,
    /// May be sent again on a new connection when a reused one closed without answering
    /// (an idempotent request with a buffered body).
    pub(crate) resendable: bool,
}

impl EndpointPool {
    pub(crate) fn new(
        authority: Authority,
        connect_timeout: Duration,
        idle_timeout: Duration,
        max_idle: usize,
        body_timeout: Duration,
    ) -> Self {
        Self {
            authority,
            connect_timeout,
            idle_timeout,
            max_idle,
            body_timeout,
        }
    }

    /// The endpoint's `host:port`.
    pub(crate) fn authority(&self) -> &Authority {
        &self.authority
    }

    fn with_idle<R>(self: &Arc<Self>, f: impl FnOnce(&mut Vec<Idle>) -> R) -> R {
        IDLE.with_borrow_mut(|all| {
            let mine = all
                .iter()
                .position(|(owner, _)| std::ptr::eq(owner.as_ptr(), Arc::as_ptr(self)));
            let i = match mine {
                Some(i) => i,
                None => {
                    all.retain(|(owner, _)| owner.strong_count() > 0);
                    all.push((Arc::downgrade(self), Vec::new()));
                    all.len() - 1
                }
            };
            f(&mut all[i].1)
        })
    }

    /// The most recently used idle connection that is still open and fresh at `now`.
    fn checkout(self: &Arc<Self>, now: Instant) -> Option<Idle> {
        self.with_idle(|idle| {
            while let Some(mut c) = idle.pop() {
                if c.expires.is_none_or(|at| now < at) && c.conn.is_reusable() {
                    return Some(c);
                }
            }
            None
        })
    }

    /// Keeps a connection whose exchange is over, if the pool has room. `since` is when the
    /// exchange started: its idle time is counted from then, which retires it a little early
    /// rather than late, for one clock read per request instead of two.
    fn checkin(self: &Arc<Self>, conn: Conn, since: Instant, timer: Option<Timer>) {
        self.with_idle(|idle| {
            if idle.len() < self.max_idle {
                idle.push(Idle {
                    conn,
                    expires: since.checked_add(self.idle_timeout),
                    timer,
                });
            }
        });
    }

    async fn connect(&self) -> Result<Conn, BoxError> {
        let port = self.authority.port_u16().unwrap_or(80);
        let connect = tokio::net::TcpStream::connect((self.authority.host(), port));
        let stream = tokio::time::timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| format!("no connection within {:?}", self.connect_timeout))??;
        stream.set_nodelay(true)?;
        Ok(Conn::new(stream))
    }

    /// Sends `msg` on an idle connection, or a new one, and waits at most `timeout` for the
    /// response head: from the start, or, when a body is streamed after the head, from the
    /// body's end. While a body streams, each wait for its next piece is bounded by the pool's
    /// body timeout (the client's: 408) and each wait for the endpoint to take one by
    /// `timeout` (the endpoint's: 504), so an upload may take as long as it keeps moving. A
    /// request that a reused connection could not take (closed meanwhile, so nothing was sent,
    /// or closed unanswered when the request may be sent again) goes out again on another; a
    /// failure before anything was sent is a [`UpstreamErrorKind::Connect`], safe to retry.
    pub(crate) async fn send(
        self: Arc<Self>,
        mut msg: Message,
        timeout: Duration,
    ) -> Result<Response<PooledBody>, UpstreamError> {
        // One clock reading: tokio's instant wraps the standard one.
        let now = tokio::time::Instant::now();
        let started = now.into_std();
        let mut deadline = after(now, timeout);
        let failed = |kind, source| UpstreamError::new(&self.authority, kind, source);
        let mut timer: Option<Timer> = None;
        loop {
            let (mut conn, reused) = match self.checkout(started) {
                Some(c) => {
                    if timer.is_none() {
                        timer = c.timer;
                    }
                    (c.conn, true)
                }
                None => {
                    let t =
                        timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                    // Boxed: new connections are rare, and their state would make every
                    // request's future larger.
                    match before(t, deadline, Box::pin(self.connect())).await {
                        Some(Ok(conn)) => (conn, false),
                        Some(Err(e)) => return Err(failed(UpstreamErrorKind::Connect, Some(e))),
                        None => return Err(failed(UpstreamErrorKind::Timeout, None)),
                    }
                }
            };
            let t = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            let mut written = 0;
            let early = before(
                t,
                deadline,
                conn.write_watching(&msg.bytes, &mut written, msg.head_request, false),
            );
            match early.await {
                Some(Ok(None)) => {}
                Some(Ok(Some(mut head))) => {
                    // Answered before the whole request went out: the connection is done.
                    head.keep_alive = false;
                    return Ok(self.response(conn, head, started, timer.take(), timeout));
                }
                Some(Err(_)) if reused && written == 0 => continue,
                Some(Err(e)) => {
                    let kind = if written == 0 {
                        UpstreamErrorKind::Connect
                    } else {
                        UpstreamErrorKind::Request
                    };
                    return Err(failed(kind, Some(e.into())));
                }
                None => return Err(failed(UpstreamErrorKind::Timeout, None)),
            }
            if let Some(body) = msg.stream.take() {
                let waits = BodyWaits {
                    client: self.body_timeout,
                    endpoint: timeout,
                };
                // Boxed: streamed bodies are the rarer kind, and their state would make every
                // request's future larger.
                let sending = send_body(&mut conn, body, msg.framing, msg.head_request, t, waits);
                match Box::pin(sending).await {
                    Ok(None) => {}
                    Ok(Some(mut head)) => {
                        head.keep_alive = false;
                        return Ok(self.response(conn, head, started, timer.take(), timeout));
                    }
                    Err(BodyFailure::Client(e)) => {
                        return Err(failed(UpstreamErrorKind::ClientBody, Some(e.into())));
                    }
                    Err(BodyFailure::Endpoint(e)) => {
                        return Err(failed(UpstreamErrorKind::Request, Some(e.into())));
                    }
                    Err(BodyFailure::EndpointTimeout) => {
                        return Err(failed(UpstreamErrorKind::Timeout, None));
                    }
                }
                // The upload took the client's time: the endpoint's starts at its end.
                deadline = deadline_after(timeout);
            }
            match before(t, deadline, conn.read_head(msg.head_request)).await {
                Some(Ok(head)) => {
                    return Ok(self.response(conn, head, started, timer.take(), timeout));
                }
                Some(Err(e)) if reused && msg.resendable && ProtocolError::is_unanswered(&e) => {
                    continue;
                }
                Some(Err(e)) => return Err(failed(UpstreamErrorKind::Request, Some(e.into()))),
                None => return Err(failed(UpstreamErrorKind::Timeout, None)),
            }
        }
    }

    /// Sends an upgrade request (`bytes`: its whole head, and its body if it has a small one)
    /// on a connection of its own, which never goes back to the pool, and reads the answer
    /// within `timeout`. A `101` comes with its connection in the body, for
    /// [`PooledBody::take_upgraded`]; anything else is an ordinary response, its connection
    /// closed at its end. Never sent again: a failure before anything went out is a
    /// [`UpstreamErrorKind::Connect`] (the caller may try another endpoint), any later one is
    /// final.
    pub(crate) async fn send_upgrade(
        self: Arc<Self>,
        bytes: Vec<u8>,
        timeout: Duration,
    ) -> Result<Response<PooledBody>, UpstreamError> {
        let started = Instant::now();
        let failed = |kind, source| UpstreamError::new(&self.authority, kind, source);
        let mut conn = self
            .connect()
            .await
            .map_err(|e| failed(UpstreamErrorKind::Connect, Some(e)))?;
        conn.expect_upgrade();
        let exchange = async {
            let mut written = 0;
            match conn
                .write_watching(&bytes, &mut written, false, false)
                .await
            {
                Ok(Some(head)) => Ok(head),
                Ok(None) => conn.read_head(false).await.map_err(|e| (written, e)),
                Err(e) => Err((written, e)),
            }
        };
        let head = match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(head)) => head,
            Ok(Err((0, e))) => return Err(failed(UpstreamErrorKind::Connect, Some(e.into()))),
            Ok(Err((_, e))) => return Err(failed(UpstreamErrorKind::Request, Some(e.into()))),
            Err(_) => return Err(failed(UpstreamErrorKind::Timeout, None)),
        };
        let mut head = head;
        head.keep_alive = false;
        Ok(self.response(conn, head, started, None, timeout))
    }

    /// The response to hand on. A body already read whole (the common case) is taken out now,
    /// and the connection goes back to the pool before the response is on its way.
    fn response(
        self: Arc<Self>,
        mut conn: Conn,
        head: Head,
        since: Instant,
        timer: Option<Timer>,
        read_timeout: Duration,
    ) -> Response<PooledBody> {
        let mut framing = head.framing;
        let mut data = None;
        if let Framing::Length(n) = framing
            && usize::try_from(n).is_ok_and(|n| n <= conn.buffered())
        {
            if n > 0 {
                data = Some(conn.take(n as usize));
            }
            framing = Framing::Done;
        }
        let mut body = PooledBody {
            data,
            framing,
            keep_alive: head.keep_alive,
            connection: Some(Connection {
                conn,
                pool: self,
                since,
                idle: IdleTimer::new(read_timeout, timer),
            }),
            foreign: None,
        };
        if matches!(body.framing, Framing::Done) {
            body.release();
        }
        let mut res = Response::new(body);
        *res.status_mut() = head.status;
        *res.version_mut() = head.version;
        *res.headers_mut() = head.headers;
        res
    }
}

/// Which side failed while a request body streamed.
enum BodyFailure {
    /// The client's body: its fault (it broke, or stalled past the client body timeout).
    Client(ClientBodyError),
    /// The connection to the endpoint.
    Endpoint(std::io::Error),
    /// The endpoint took no more of the body within the request timeout.
    EndpointTimeout,
}

/// The longest waits while a request body streams.
#[derive(Clone, Copy)]
struct BodyWaits {
    /// For the client's next piece (`client_body_timeout`).
    client: Duration,
    /// For the endpoint to take a piece (`request_timeout`, as nginx's `proxy_send_timeout`).
    endpoint: Duration,
}

impl From<std::io::Error> for BodyFailure {
    fn from(e: std::io::Error) -> Self {
        Self::Endpoint(e)
    }
}

/// Streams a request body after its head, framed as the head said, with the client's trailers
/// (those a trailer may carry) after a chunked one; a final response head that arrives while
/// the endpoint stops reading ends it (see [`Conn::write_watching`]). Each wait is bounded on
/// its own (`waits`, on the connection's `timer`), so which side stalled is known; an error of
/// the client's body is wrapped as it comes out of the body. Neither is blamed on the endpoint.
async fn send_body(
    conn: &mut Conn,
    mut body: UpstreamBody,
    framing: RequestFraming,
    head_request: bool,
    timer: &mut Timer,
    waits: BodyWaits,
) -> Result<Option<Head>, BodyFailure> {
    macro_rules! write {
        ($bytes:expr) => {{
            let mut written = 0;
            let write = conn.write_watching($bytes, &mut written, head_request, true);
            match within(timer, waits.endpoint, write).await {
                None => return Err(BodyFailure::EndpointTimeout),
                Some(result) => {
                    if let Some(head) = result? {
                        return Ok(Some(head));
                    }
                }
            }
        }};
    }
    let mut chunk = Vec::new();
    let mut sent: u64 = 0;
    let mut trailers = None;
    loop {
        let frame = match within(timer, waits.client, body.frame()).await {
            None => return Err(BodyFailure::Client(ClientBodyError::timeout())),
            Some(None) => break,
            Some(Some(Ok(frame))) => frame,
            Some(Some(Err(e))) => {
                return Err(BodyFailure::Client(ClientBodyError::from_body_error(e)));
            }
        };
        let data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                // A framing by length has no place for trailers; they are dropped then.
                trailers = frame.into_trailers().ok();
                continue;
            }
        };
        if data.is_empty() {
            continue;
        }
        sent += data.len() as u64;
        match framing {
            RequestFraming::Chunked => {
                chunk.clear();
                write_chunk(&mut chunk, &data);
                write!(&chunk);
            }
            RequestFraming::Length(n) if sent <= n => write!(&data),
            _ => {
                let e = ClientBodyError::invalid("request body longer than its length");
                return Err(BodyFailure::Client(e));
            }
        }
    }
    match framing {
        RequestFraming::Chunked => match &trailers {
            Some(trailers) => {
                chunk.clear();
                write_last_chunk(&mut chunk, trailers);
                write!(&chunk);
            }
            None => {
                write!(LAST_CHUNK);
            }
        },
        RequestFraming::Length(n) if sent != n => {
            let e = ClientBodyError::invalid("request body shorter than its length");
            return Err(BodyFailure::Client(e));
        }
        _ => {}
    }
    Ok(None)
}

/// `timeout` after `now`; as `tokio::time::timeout` does, a deadline past what `Instant` holds
/// means never.
fn after(now: tokio::time::Instant, timeout: Duration) -> tokio::time::Instant {
    now.checked_add(timeout)
        .unwrap_or_else(|| now + Duration::from_secs(30 * 365 * 86_400))
}

/// `timeout` from now.
pub(super) fn deadline_after(timeout: Duration) -> tokio::time::Instant {
    after(tokio::time::Instant::now(), timeout)
}

/// `fut`'s output, or `None` once `deadline` has passed first (as `timer` tells: a timer set
/// for an earlier deadline is set again when it fires, one set for a later one at once).
fn before<F: Future>(timer: &mut Timer, deadline: tokio::time::Instant, fut: F) -> Bounded<'_, F> {
    Bounded {
        fut,
        timer,
        deadline: Some(deadline),
        timeout: Duration::ZERO,
    }
}

/// `fut`'s output, or `None` once `timeout` has passed from the first time it was not ready
/// (on `timer`, as [`before`]): one wait that costs no clock reading when `fut` is ready at
/// once, as a piece of a body that has already arrived is.
fn within<F: Future>(timer: &mut Timer, timeout: Duration, fut: F) -> Bounded<'_, F> {
    Bounded {
        fut,
        timer,
        deadline: None,
        timeout,
    }
}

pin_project! {
    /// [`before`]'s and [`within`]'s future: a struct rather than an `async fn`, which would
    /// hold `fut` twice and make every request's (boxed, moved) future larger.
    struct Bounded<'t, F> {
        #[pin]
        fut: F,
        timer: &'t mut Timer,
        // None until a deadline `timeout` from the first wait is set.
        deadline: Option<tokio::time::Instant>,
        timeout: Duration,
    }
}

impl<F: Future> Future for Bounded<'_, F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.fut.poll(cx) {
            return Poll::Ready(Some(out));
        }
        let timeout = *this.timeout;
        let deadline = *this.deadline.get_or_insert_with(|| deadline_after(timeout));
        if this.timer.deadline() > deadline {
            this.timer.as_mut().reset(deadline);
        }
        loop {
            ready!(this.timer.as_mut().poll(cx));
            if this.timer.deadline() >= deadline {
                return Poll::Ready(None);
            }
            // Set for an earlier wait: now for this one.
            this.timer.as_mut().reset(deadline);
        }
    }
}

/// A connection on loan to a response body.
struct Connection {
    conn: Conn,
    pool: Arc<EndpointPool>,
    /// When its exchange started.
    since: Instant,
    /// Each wait for more of the body (`proxy_read_timeout`), on the connection's timer.
    idle: IdleTimer,
}

/// Body of an endpoint's response: read from its connection, which goes back to the pool as
/// soon as the body has been read to its end (a body dropped before that closes it).
pub struct PooledBody {
    /// Bytes read with the head, passed on first.
    data: Option<Bytes>,
    framing: Framing,
    /// The endpoint keeps the connection open after this response.
    keep_alive: bool,
    connection: Option<Connection>,
    /// A body from hyper's client (HTTPS and HTTP/2 endpoints), read once `connection` is none.
    foreign: Option<Box<ForeignBody>>,
}

impl std::fmt::Debug for PooledBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledBody")
            .field("framing", &self.framing)
            .finish_non_exhaustive()
    }
}

impl PooledBody {
    /// A body hyper's client reads (an HTTPS or HTTP/2 endpoint's).
    pub(crate) fn foreign(body: ForeignBody) -> Self {
        Self {
            data: None,
            framing: Framing::Foreign,
            keep_alive: false,
            connection: None,
            foreign: Some(Box::new(body)),
        }
    }

    /// The connection of a `101 Switching Protocols` from the pooled path, for the upgraded
    /// stream: its socket and the bytes already read past the head. `None` for any other
    /// response.
    pub(crate) fn take_upgraded(&mut self) -> Option<(tokio::net::TcpStream, bytes::BytesMut)> {
        if !matches!(self.framing, Framing::Upgraded) {
            return None;
        }
        self.framing = Framing::Done;
        self.connection.take().map(|c| c.conn.into_parts())
    }

    /// The exchange is over: the connection goes back to the pool if it can carry another.
    fn release(&mut self) {
        if let Some(c) = self.connection.take()
            && self.keep_alive
            && !c.conn.has_unread()
        {
            c.pool.checkin(c.conn, c.since, c.idle.into_timer());
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = UpstreamError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        let this = self.get_mut();
        if let Some(data) = this.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        let Some(c) = this.connection.as_mut() else {
            return match this.foreign.as_mut() {
                Some(foreign) => Pin::new(&mut **foreign).poll_frame(cx),
                None => Poll::Ready(None),
            };
        };
        let polled = match c.conn.poll_body(cx, &mut this.framing) {
            Poll::Ready(polled) => {
                c.idle.progress();
                polled
            }
            Poll::Pending => {
                ready!(c.idle.poll_expired(cx));
                this.framing = Framing::Done;
                let authority = c.pool.authority().clone();
                this.connection = None;
                let kind = UpstreamErrorKind::Timeout;
                return Poll::Ready(Some(Err(UpstreamError::new(&authority, kind, None))));
            }
        };
        match polled {
            Some(Ok(frame)) => {
                if matches!(this.framing, Framing::Done) {
                    this.release();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            None => {
                this.release();
                Poll::Ready(None)
            }
            Some(Err(e)) => {
                // A failed body leaves the connection in an unknown state: never reuse it.
                this.framing = Framing::Done;
                let authority = c.pool.authority().clone();
                this.connection = None;
                let kind = UpstreamErrorKind::Request;
                Poll::Ready(Some(Err(UpstreamError::new(
                    &authority,
                    kind,
                    Some(e.into()),
                ))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && matches!(self.framing, Framing::Done)
    }

    fn size_hint(&self) -> SizeHint {
        let read = self.data.as_ref().map_or(0, |d| d.len() as u64);
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(read + n),
            Framing::Done => SizeHint::with_exact(read),
            Framing::Foreign => self
                .foreign
                .as_ref()
                .map_or_else(SizeHint::default, |f| f.size_hint()),
            _ => {
                let mut hint = SizeHint::new();
                hint.set_lower(read);
                hint
            }
        }
    }
}
