//! Keep-alive HTTP/1.1 connections to one endpoint, pooled per thread.
//!
//! Each thread that sends requests keeps its own idle connections, as nginx keeps its `keepalive`
//! connections per worker process: a request reuses a connection whose I/O task runs on its own
//! thread, so sending it and reading the answer never wakes another thread (or, when a server
//! runs one single-threaded runtime per core, another runtime). A connection goes back to the
//! pool when its response body has been read to the end and dropped; a body dropped early
//! closes it. Idle connections older than the idle timeout, or closed by the endpoint, are
//! dropped when met at checkout.
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
use http::uri::Authority;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use pin_project_lite::pin_project;
use tokio::time::Sleep;

use super::body::UpstreamBody;
use super::upstream::{UpstreamError, UpstreamErrorKind};
use crate::balancer::BoxError;

type Sender = SendRequest<UpstreamBody>;

/// A connection's request timer (boxed: it is pinned and moves with the connection).
type Timer = Pin<Box<Sleep>>;

/// Where and how to connect to one endpoint.
#[derive(Debug)]
pub(crate) struct EndpointPool {
    authority: Authority,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
}

struct Idle {
    sender: Sender,
    /// When the connection stops being reused (`None`: never).
    expires: Option<Instant>,
    timer: Option<Timer>,
}

thread_local! {
    /// This thread's idle connections, by endpoint (entries of dropped endpoints are pruned).
    static IDLE: RefCell<Vec<(Weak<EndpointPool>, Vec<Idle>)>> = const { RefCell::new(Vec::new()) };
}

impl EndpointPool {
    pub(crate) fn new(
        authority: Authority,
        connect_timeout: Duration,
        idle_timeout: Duration,
        max_idle: usize,
    ) -> Self {
        Self {
            authority,
            connect_timeout,
            idle_timeout,
            max_idle,
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
            while let Some(c) = idle.pop() {
                if !c.sender.is_closed() && c.expires.is_none_or(|at| now < at) {
                    return Some(c);
                }
            }
            None
        })
    }

    /// Keeps a connection whose exchange is over, if it is open and the pool has room. `since`
    /// is when the exchange started: its idle time is counted from then, which retires it a
    /// little early rather than late, for one clock read per request instead of two.
    fn checkin(self: &Arc<Self>, sender: Sender, since: Instant, timer: Option<Timer>) {
        if sender.is_closed() {
            return;
        }
        self.with_idle(|idle| {
            if idle.len() < self.max_idle {
                idle.push(Idle {
                    sender,
                    expires: since.checked_add(self.idle_timeout),
                    timer,
                });
            }
        });
    }

    async fn connect(&self) -> Result<Sender, BoxError> {
        let port = self.authority.port_u16().unwrap_or(80);
        let connect = tokio::net::TcpStream::connect((self.authority.host(), port));
        let stream = tokio::time::timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| format!("no connection within {:?}", self.connect_timeout))??;
        stream.set_nodelay(true)?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "upstream connection ended");
            }
        });
        Ok(sender)
    }

    /// Sends `req` (origin-form URI, `Host` set) on an idle connection, or a new one, and waits
    /// at most `timeout` for the response head. A request that a reused connection could not
    /// take (closed meanwhile) is sent again on another; a failure before anything was sent is a
    /// [`UpstreamErrorKind::Connect`], safe to retry.
    pub(crate) async fn send(
        self: Arc<Self>,
        mut req: Request<UpstreamBody>,
        timeout: Duration,
    ) -> Result<Response<PooledBody>, UpstreamError> {
        // One clock reading: tokio's instant wraps the standard one.
        let now = tokio::time::Instant::now();
        let started = now.into_std();
        // As `tokio::time::timeout` does, a deadline past what `Instant` holds means never.
        let deadline = now
            .checked_add(timeout)
            .unwrap_or_else(|| now + Duration::from_secs(30 * 365 * 86_400));
        let failed = |kind, source| UpstreamError::new(&self.authority, kind, source);
        let mut timer: Option<Timer> = None;
        loop {
            let (mut sender, reused) = match self.checkout(started) {
                Some(c) => {
                    if timer.is_none() {
                        timer = c.timer;
                    }
                    (c.sender, true)
                }
                None => {
                    let t =
                        timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                    // Boxed: new connections are rare, and their state would make every
                    // request's future larger.
                    match before(t, deadline, Box::pin(self.connect())).await {
                        Some(Ok(sender)) => (sender, false),
                        Some(Err(e)) => return Err(failed(UpstreamErrorKind::Connect, Some(e))),
                        None => return Err(failed(UpstreamErrorKind::Timeout, None)),
                    }
                }
            };
            let t = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            match before(t, deadline, sender.ready()).await {
                Some(Ok(())) => {}
                Some(Err(_)) if reused => continue,
                Some(Err(e)) => return Err(failed(UpstreamErrorKind::Connect, Some(e.into()))),
                None => return Err(failed(UpstreamErrorKind::Timeout, None)),
            }
            match before(t, deadline, sender.try_send_request(req)).await {
                Some(Ok(res)) => {
                    return Ok(res.map(|body| PooledBody {
                        body,
                        done: false,
                        connection: Some(Connection {
                            sender,
                            pool: self,
                            since: started,
                            timer: timer.take(),
                        }),
                    }));
                }
                Some(Err(mut e)) => match e.take_message() {
                    Some(unsent) if reused => req = unsent,
                    Some(_) => {
                        let source = e.into_error().into();
                        return Err(failed(UpstreamErrorKind::Connect, Some(source)));
                    }
                    None => {
                        let source = e.into_error().into();
                        return Err(failed(UpstreamErrorKind::Request, Some(source)));
                    }
                },
                None => return Err(failed(UpstreamErrorKind::Timeout, None)),
            }
        }
    }
}

/// `fut`'s output, or `None` once `deadline` has passed first (as `timer` tells: a timer set
/// for an earlier deadline is set again when it fires, one set for a later one at once).
fn before<F: Future>(timer: &mut Timer, deadline: tokio::time::Instant, fut: F) -> Before<'_, F> {
    if timer.deadline() > deadline {
        timer.as_mut().reset(deadline);
    }
    Before {
        fut,
        timer,
        deadline,
    }
}

pin_project! {
    /// [`before`]'s future: a struct rather than an `async fn`, which would hold `fut` twice
    /// and make every request's (boxed, moved) future larger.
    struct Before<'t, F> {
        #[pin]
        fut: F,
        timer: &'t mut Timer,
        deadline: tokio::time::Instant,
    }
}

impl<F: Future> Future for Before<'_, F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.fut.poll(cx) {
            return Poll::Ready(Some(out));
        }
        loop {
            ready!(this.timer.as_mut().poll(cx));
            if this.timer.deadline() >= *this.deadline {
                return Poll::Ready(None);
            }
            // Set for an earlier request: now for this one.
            let deadline = *this.deadline;
            this.timer.as_mut().reset(deadline);
        }
    }
}

/// A connection on loan to a response body.
struct Connection {
    sender: Sender,
    pool: Arc<EndpointPool>,
    /// When its exchange started.
    since: Instant,
    timer: Option<Timer>,
}

/// Body of an endpoint's response: streamed from its connection, which goes back to the pool
/// once the body has been read to the end.
pub struct PooledBody {
    body: Incoming,
    done: bool,
    connection: Option<Connection>,
}

impl std::fmt::Debug for PooledBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledBody")
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.done = true,
            // A failed body leaves the connection in an unknown state: never reuse it.
            Poll::Ready(Some(Err(_))) => this.connection = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        if (self.done || self.body.is_end_stream())
            && let Some(c) = self.connection.take()
        {
            c.pool.checkin(c.sender, c.since, c.timer);
        }
    }
}
