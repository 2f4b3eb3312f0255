//! Keep-alive HTTP/1.1 connections to one endpoint, pooled per thread.
//!
//! Each thread that sends requests keeps its own idle connections, as nginx keeps its `keepalive`
//! connections per worker process: a request reuses a connection whose I/O task runs on its own
//! thread, so sending it and reading the answer never wakes another thread (or, when a server
//! runs one single-threaded runtime per core, another runtime). A connection goes back to the
//! pool when its response body has been read to the end and dropped; a body dropped early
//! closes it. Idle connections older than the idle timeout, or closed by the endpoint, are
//! dropped when met at checkout.

use std::cell::RefCell;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::Authority;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;

use super::body::UpstreamBody;
use super::upstream::UpstreamErrorKind;
use crate::balancer::BoxError;

type Sender = SendRequest<UpstreamBody>;

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
    since: Instant,
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
    fn checkout(self: &Arc<Self>, now: Instant) -> Option<Sender> {
        self.with_idle(|idle| {
            while let Some(c) = idle.pop() {
                if !c.sender.is_closed() && now.duration_since(c.since) < self.idle_timeout {
                    return Some(c.sender);
                }
            }
            None
        })
    }

    /// Keeps a connection whose exchange is over, if it is open and the pool has room. `since`
    /// is when the exchange started: its idle time is counted from then, which retires it a
    /// little early rather than late, for one clock read per request instead of two.
    fn checkin(self: &Arc<Self>, sender: Sender, since: Instant) {
        if sender.is_closed() {
            return;
        }
        self.with_idle(|idle| {
            if idle.len() < self.max_idle {
                idle.push(Idle { sender, since });
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

    /// Sends `req` (origin-form URI, `Host` set) on an idle connection, or a new one. A request
    /// that a reused connection could not take (closed meanwhile) is sent again on another; a
    /// failure before anything was sent is a [`UpstreamErrorKind::Connect`], safe to retry.
    pub(crate) async fn send(
        self: Arc<Self>,
        mut req: Request<UpstreamBody>,
    ) -> Result<Response<PooledBody>, (UpstreamErrorKind, BoxError)> {
        let started = Instant::now();
        loop {
            let (mut sender, reused) = match self.checkout(started) {
                Some(sender) => (sender, true),
                None => match self.connect().await {
                    Ok(sender) => (sender, false),
                    Err(e) => return Err((UpstreamErrorKind::Connect, e)),
                },
            };
            if let Err(e) = sender.ready().await {
                if reused {
                    continue;
                }
                return Err((UpstreamErrorKind::Connect, e.into()));
            }
            match sender.try_send_request(req).await {
                Ok(res) => {
                    return Ok(res.map(|body| PooledBody {
                        body,
                        done: false,
                        connection: Some((sender, self, started)),
                    }));
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) if reused => req = unsent,
                    Some(_) => return Err((UpstreamErrorKind::Connect, e.into_error().into())),
                    None => return Err((UpstreamErrorKind::Request, e.into_error().into())),
                },
            }
        }
    }
}

/// Body of an endpoint's response: streamed from its connection, which goes back to the pool
/// once the body has been read to the end.
pub struct PooledBody {
    body: Incoming,
    done: bool,
    connection: Option<(Sender, Arc<EndpointPool>, Instant)>,
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
            && let Some((sender, pool, since)) = self.connection.take()
        {
            pool.checkin(sender, since);
        }
    }
}
