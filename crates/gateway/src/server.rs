//! Running a server on its own threads and tokio runtimes, like a separate process: the
//! gateway's harness (one single-threaded runtime per core accepting on one `SO_REUSEPORT` port,
//! as nginx runs one worker per core), with bounds on what clients may hold open
//! ([`ServerLimits`]) and a graceful stop that drains open connections. With a
//! [`TlsTerminator`] ([`ServerThread::start_tls`]) it terminates TLS too.
//!
//! A server's state (pools, connections, background tasks) belongs to the runtime that created
//! it. Giving every server its own runtime makes servers in one process as independent as
//! separate processes, and lets [`ServerThread::kill`] end one abruptly (every task and
//! connection dropped at once, keep-alive connections included), as a crash would.

use std::cell::RefCell;
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;
use std::time::Duration;

#[cfg(feature = "axum")]
use axum::extract::ConnectInfo;
use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulConnection;
use pin_project_lite::pin_project;
use serde::Deserialize;
use tokio::net::TcpSocket;
use tokio::sync::{oneshot, watch};
use tower::util::Oneshot;
use tower::{Service, ServiceExt as _};

use crate::BoxError;
use crate::tls::stream::Rewound;
use crate::tls::{TLS_HANDSHAKE_FAILURES_TOTAL, TlsTerminator};

/// What a server serves: an axum `Router` (feature `axum`), or any service that a function of
/// the client's address makes for each connection (a reverse proxy's
/// [`HttpUpstream::with_peer`](crate::http::HttpUpstream::with_peer)).
pub trait App: Clone + Send + 'static {
    /// The service of one connection.
    type Service: Service<
            Request<Incoming>,
            Response = Response<Self::Body>,
            Error = Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static;

    /// The response body.
    type Body: http_body::Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static;

    /// The service for the requests of one connection from `peer`.
    fn connection(&self, peer: SocketAddr) -> Self::Service;

    /// The service for the requests of one connection from `peer` that came over TLS, which
    /// this server terminated ([`ServerThread::start_tls`]). By default the same as
    /// [`connection`](Self::connection); an app that tells the client's scheme to others
    /// overrides it (a proxy's `X-Forwarded-Proto: https`, as
    /// [`HttpUpstream`](crate::http::HttpUpstream)'s does).
    fn tls_connection(&self, peer: SocketAddr) -> Self::Service {
        self.connection(peer)
    }
}

/// The upstream alone, per connection told the client
/// ([`with_peer`](crate::http::HttpUpstream::with_peer)) and whether it came over TLS
/// ([`with_tls`](crate::http::HttpUpstream::with_tls), so `X-Forwarded-Proto` says `https`).
impl App for crate::http::HttpUpstream {
    type Service = crate::http::HttpUpstream;
    type Body = crate::http::ProxyBody;

    fn connection(&self, peer: SocketAddr) -> Self::Service {
        self.clone().with_peer(peer)
    }

    fn tls_connection(&self, peer: SocketAddr) -> Self::Service {
        self.clone().with_peer(peer).with_tls(true)
    }
}

/// A router's requests carry the client's address as `ConnectInfo<SocketAddr>`, as
/// `axum::serve` puts it.
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
impl App for axum::Router {
    type Service = WithConnectInfo<axum::Router>;
    type Body = axum::body::Body;

    fn connection(&self, peer: SocketAddr) -> Self::Service {
        WithConnectInfo::new(self.clone(), peer)
    }
}

/// `inner`, with the connection's peer put in each request as `ConnectInfo<SocketAddr>`.
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
#[derive(Debug, Clone)]
pub struct WithConnectInfo<S> {
    inner: S,
    peer: SocketAddr,
}

#[cfg(feature = "axum")]
impl<S> WithConnectInfo<S> {
    /// `inner` for requests from `peer`.
    pub fn new(inner: S, peer: SocketAddr) -> Self {
        Self { inner, peer }
    }
}

#[cfg(feature = "axum")]
impl<S: Service<Request<Incoming>>> Service<Request<Incoming>> for WithConnectInfo<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Incoming>) -> S::Future {
        req.extensions_mut().insert(ConnectInfo(self.peer));
        self.inner.call(req)
    }
}

/// One connection's service as hyper calls it (`&self`, one call at a time on HTTP/1.1; on
/// HTTP/2 each call returns before the next starts). A ready service is called in place; one
/// that is not ready yet (never, for the apps here) is driven to readiness and then called in
/// the request's future, and the connection goes on with a clone.
struct PerConnection<S> {
    service: RefCell<S>,
    spare: S,
}

impl<S> hyper::service::Service<Request<Incoming>> for PerConnection<S>
where
    S: Service<Request<Incoming>> + Clone,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures_util::future::Either<S::Future, Oneshot<S, Request<Incoming>>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        use futures_util::future::Either;
        // `call` never runs inside another `call`, so the borrow is always free.
        let Ok(mut service) = self.service.try_borrow_mut() else {
            return Either::Right(self.spare.clone().oneshot(req));
        };
        match service.poll_ready(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(Ok(())) => Either::Left(service.call(req)),
            // It is now waiting for readiness, and may hold a place in a queue (a semaphore's):
            // it goes on to serve this request, and the connection keeps a fresh clone.
            _ => {
                let waiting = std::mem::replace(&mut *service, self.spare.clone());
                Either::Right(waiting.oneshot(req))
            }
        }
    }
}

/// Bounds on what clients can hold open, so that slow or idle clients cannot exhaust a server
/// (a slowloris sending one header byte a second, or thousands of idle connections).
///
/// ```
/// # use herd_gateway::server::ServerLimits;
/// let limits: ServerLimits = toml::from_str(r#"
///     header_read_timeout = "10s"
///     max_connections = 4096
/// "#).unwrap();
/// assert_eq!(limits.max_head_bytes, 64 * 1024);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerLimits {
    /// Longest wait for a whole request head, idle keep-alive time before it included (default
    /// 20 s; nginx's `client_header_timeout` and `keepalive_timeout` in one). A connection that
    /// has not sent a complete head by then is closed.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Most connections open at once on one accepting thread (default 10 000; nginx's
    /// `worker_connections`). Past it a new connection is answered `503` with `Retry-After`
    /// and closed at once, without reading its request.
    pub max_connections: usize,
    /// Most bytes of a request head (default 64 KiB, at least 8 KiB; nginx allows 4 × 8 KiB
    /// `large_client_header_buffers`). A longer head is answered `431`.
    pub max_head_bytes: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            header_read_timeout: Duration::from_secs(20),
            max_connections: 10_000,
            max_head_bytes: 64 * 1024,
        }
    }
}

/// The whole answer to a connection over [`ServerLimits::max_connections`].
const OVERLOADED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\nConnection: close\r\nContent-Length: 33\r\n\r\n{\"error\":\"the server is overloaded\"}";

/// How a server thread ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// Stop accepting, finish in-flight requests (bounded), then exit.
    Graceful,
    /// Drop everything now.
    Kill,
}

/// How a server's requests are spread over threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threads {
    /// One tokio multi-thread (work-stealing) runtime with this many workers: what an app
    /// instance uses, so a slow handler never holds up the others.
    WorkStealing(usize),
    /// This many single-threaded runtimes, each accepting its own share of the connections on
    /// the same port (`SO_REUSEPORT`), like nginx's worker processes: a request and the tasks it
    /// wakes stay on one thread, which makes a proxy much cheaper per request. Shared state (the
    /// router and what it holds) is built once, on the first thread.
    PerCore(usize),
}

impl Default for Threads {
    /// Two work-stealing workers.
    fn default() -> Self {
        Threads::WorkStealing(2)
    }
}

/// A server running on its own threads and runtimes.
#[derive(Debug)]
pub struct ServerThread {
    name: String,
    addr: SocketAddr,
    tls: bool,
    stop: Option<watch::Sender<Option<Stop>>>,
    threads: Vec<JoinHandle<()>>,
}

/// `NAME-w`, at most 15 bytes (the kernel's limit for a thread name), so per-thread CPU time can
/// be told apart as it could for processes.
fn worker_thread_name(name: &str) -> String {
    let mut base: String = name.chars().take(13).collect();
    while base.len() > 13 {
        base.pop();
    }
    format!("{base}-w")
}

/// A listener on `bind`; with `reuse_port` other sockets can listen on the same port and the
/// kernel spreads new connections over them.
fn listen(bind: SocketAddr, reuse_port: bool) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if bind.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    // `SO_REUSEPORT` is a unix option; elsewhere `Threads::PerCore(n)` with n > 1 fails to bind.
    #[cfg(unix)]
    if reuse_port {
        socket.set_reuseport(true)?;
    }
    #[cfg(not(unix))]
    let _ = reuse_port;
    socket.set_nodelay(true)?;
    socket.bind(bind)?;
    socket.listen(1024)
}

/// A server's open connections, to be told to finish their requests and close.
///
/// hyper-util's `GracefulShutdown` does this with a watch channel whose receiver every
/// connection polls each time it runs, which takes a lock per poll. Here a connection reads
/// one flag per poll, and takes the lock only to register its task's waker when it changes
/// (in practice once).
#[derive(Default)]
struct Connections {
    draining: AtomicBool,
    /// The open connections' wakers, by connection id.
    wakers: Mutex<HashMap<u64, Waker>>,
    next_id: AtomicU64,
    open: AtomicUsize,
}

impl Connections {
    /// `connection`, ended gracefully once [`drain`](Self::drain) is called.
    fn watch<C: GracefulConnection>(connection: C, slot: OpenSlot) -> Watched<C> {
        Watched {
            connection,
            id: slot.0.next_id.fetch_add(1, Ordering::Relaxed),
            shared: slot,
            waker: None,
            draining: false,
        }
    }

    /// Counts a connection as open until the slot is dropped.
    fn open(self: &Arc<Self>) -> OpenSlot {
        self.open.fetch_add(1, Ordering::AcqRel);
        OpenSlot(Arc::clone(self))
    }

    /// Tells every connection to finish and waits until all have closed.
    async fn drain(&self) {
        self.draining.store(true, Ordering::Release);
        let wakers = std::mem::take(&mut *self.wakers());
        for waker in wakers.into_values() {
            waker.wake();
        }
        while self.open.load(Ordering::Acquire) > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The wakers' map (a panic elsewhere while it was held leaves it usable).
    fn wakers(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Waker>> {
        self.wakers.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One open connection, counted from its accept (before its first byte) to its end.
struct OpenSlot(Arc<Connections>);

impl std::ops::Deref for OpenSlot {
    type Target = Connections;

    fn deref(&self) -> &Connections {
        &self.0
    }
}

impl Drop for OpenSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

pin_project! {
    /// A connection that finishes gracefully when its [`Connections`] drain.
    struct Watched<C> {
        #[pin]
        connection: C,
        shared: OpenSlot,
        id: u64,
        waker: Option<Waker>,
        draining: bool,
    }

    impl<C> PinnedDrop for Watched<C> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if this.waker.is_some() {
                this.shared.wakers().remove(this.id);
            }
        }
    }
}

impl<C: GracefulConnection> Future for Watched<C> {
    type Output = C::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let mut this = self.project();
        if !*this.draining {
            if !this.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                this.shared.wakers().insert(*this.id, cx.waker().clone());
                *this.waker = Some(cx.waker().clone());
            }
            // Read after registering: a drain that set the flag before finds the waker, or is
            // seen here.
            if this.shared.draining.load(Ordering::Acquire) {
                *this.draining = true;
                this.connection.as_mut().graceful_shutdown();
            }
        }
        this.connection.poll(cx)
    }
}

/// Waits until the client has sent enough to tell HTTP/1 from HTTP/2 (one byte that does not
/// begin the HTTP/2 preface, or the whole preface), for up to `within`; `false` when it did not
/// (closed, or too slow).
async fn first_bytes(stream: &tokio::net::TcpStream, within: Duration) -> bool {
    const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let decided = async {
        let mut buf = [0_u8; 24];
        loop {
            match stream.peek(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) if n == buf.len() || !H2_PREFACE.starts_with(&buf[..n]) => return true,
                // Part of the preface: real HTTP/2 clients send it whole, so this is rare.
                Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    };
    tokio::time::timeout(within, decided).await.unwrap_or(false)
}

/// Serves `app` on `listener` (HTTP/1.1 and HTTP/2, with upgrades; over TLS with `tls`) until
/// told to stop; returns how it was stopped. A graceful stop closes the listener and lets open
/// connections finish their requests, for up to 10 s.
async fn serve<A: App>(
    listener: tokio::net::TcpListener,
    app: A,
    limits: ServerLimits,
    tls: Option<TlsTerminator>,
    mut stop: watch::Receiver<Option<Stop>>,
) -> Stop {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Without a timer hyper applies no header read timeout at all.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_head_bytes.max(8 * 1024));
    builder.http2().timer(TokioTimer::new());
    let connections = Arc::new(Connections::default());
    let how = loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) if connections.open.load(Ordering::Acquire) >= limits.max_connections => {
                    // One non-blocking write into the fresh socket's empty send buffer, then
                    // close: an overloaded server spends nothing more on it. A TLS client
                    // could not read it (it waits for a ServerHello): closed at once.
                    if tls.is_none() {
                        let _ = stream.try_write(OVERLOADED);
                    }
                    tracing::debug!("connection refused: max_connections reached");
                }
                Ok((stream, peer)) if let Some(tls) = &tls => {
                    let _ = stream.set_nodelay(true);
                    let slot = connections.open();
                    let accepted = Accepted { stream, peer, slot };
                    let service = app.tls_connection(peer);
                    let (acceptor, builder) = (tls.acceptor(), builder.clone());
                    let within = limits.header_read_timeout;
                    tokio::spawn(serve_tls(accepted, acceptor, within, builder, service));
                }
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let slot = connections.open();
                    let service = app.connection(peer);
                    let builder = builder.clone();
                    tokio::spawn(async move {
                        // hyper's header timeout starts once it knows the protocol: a client
                        // that sends nothing (or a never-ending HTTP/2 preface) is bounded here.
                        if !first_bytes(&stream, limits.header_read_timeout).await {
                            return;
                        }
                        let service = PerConnection {
                            service: RefCell::new(service.clone()),
                            spare: service,
                        };
                        let connection = builder
                            .serve_connection_with_upgrades(TokioIo::new(stream), service);
                        if let Err(error) = Connections::watch(connection, slot).await {
                            tracing::debug!(%error, %peer, "connection ended with an error");
                        }
                    });
                }
                // Out of file descriptors and the like: back off instead of spinning.
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            how = stop.wait_for(Option::is_some) => {
                break how.map_or(Stop::Kill, |how| how.unwrap_or(Stop::Kill));
            }
        }
    };
    drop(listener);
    if how == Stop::Graceful {
        let _ = tokio::time::timeout(Duration::from_secs(10), connections.drain()).await;
    }
    how
}

/// A connection just accepted, counted as open.
struct Accepted {
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    slot: OpenSlot,
}

/// Serves one connection over TLS: the handshake and the first bytes after it within `within`
/// (the header read timeout; hyper's own starts once it knows the protocol, which the client's
/// ALPN choice and first bytes tell it), then HTTP/1.1 or HTTP/2 as on a plain connection.
/// Failed handshakes are counted and logged at debug: they are the client's business.
async fn serve_tls<S, B>(
    accepted: Accepted,
    acceptor: tokio_rustls::TlsAcceptor,
    within: Duration,
    builder: auto::Builder<TokioExecutor>,
    service: S,
) where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static,
{
    let Accepted { stream, peer, slot } = accepted;
    let started = tokio::time::Instant::now();
    // Counted before the socket closes: whoever sees the close sees the count.
    let mut handshake = std::pin::pin!(acceptor.accept(stream).into_fallible());
    let stream = match tokio::time::timeout(within, handshake.as_mut()).await {
        Ok(Ok(stream)) => stream,
        Ok(Err((error, _socket))) => {
            let reason = match error.kind() {
                std::io::ErrorKind::UnexpectedEof
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::BrokenPipe => "closed",
                // rustls reports what it refused as invalid data.
                std::io::ErrorKind::InvalidData => "protocol",
                _ => "io",
            };
            metrics::counter!(TLS_HANDSHAKE_FAILURES_TOTAL, "reason" => reason).increment(1);
            tracing::debug!(%error, %peer, reason, "TLS handshake failed");
            return;
        }
        Err(_) => {
            metrics::counter!(TLS_HANDSHAKE_FAILURES_TOTAL, "reason" => "timeout").increment(1);
            tracing::debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let left = within.saturating_sub(started.elapsed());
    let Some(stream) = Rewound::first_bytes(stream, left).await else {
        tracing::debug!(%peer, "no request after the TLS handshake");
        return;
    };
    let service = PerConnection {
        service: RefCell::new(service.clone()),
        spare: service,
    };
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    if let Err(error) = Connections::watch(connection, slot).await {
        tracing::debug!(%error, %peer, "TLS connection ended with an error");
    }
}

/// Starts a thread named after `name` with its own runtime (`workers` work-stealing workers, or
/// single-threaded for `None`) that runs `body` and then ends the runtime the way `body` says.
/// A runtime that cannot be built is reported on `ready` as `label: runtime: …`.
fn spawn_thread<T, F, Fut>(
    name: &str,
    label: String,
    workers: Option<usize>,
    ready: oneshot::Sender<Result<T, String>>,
    body: F,
) -> Result<JoinHandle<()>, String>
where
    T: Send + 'static,
    F: FnOnce(oneshot::Sender<Result<T, String>>) -> Fut + Send + 'static,
    Fut: Future<Output = Stop>,
{
    let thread_name = worker_thread_name(name);
    std::thread::Builder::new()
        .name(thread_name.clone())
        .spawn(move || {
            let mut builder = match workers {
                None => tokio::runtime::Builder::new_current_thread(),
                Some(n) => {
                    let mut b = tokio::runtime::Builder::new_multi_thread();
                    b.worker_threads(n);
                    b
                }
            };
            let rt = match builder.thread_name(thread_name).enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready.send(Err(format!("{label}: runtime: {e}")));
                    return;
                }
            };
            let how = rt.block_on(body(ready));
            shut_down(rt, how);
        })
        .map_err(|e| format!("{name}: spawn thread: {e}"))
}

/// Ends a runtime the way its server was stopped.
fn shut_down(rt: tokio::runtime::Runtime, how: Stop) {
    match how {
        // Drop every task (and with them every socket) without waiting for them.
        Stop::Kill => rt.shutdown_background(),
        Stop::Graceful => rt.shutdown_timeout(Duration::from_secs(5)),
    }
}

impl ServerThread {
    /// Binds `bind` (port 0 for any free port), builds the app (an axum `Router`, or any
    /// [`App`]) with `build` inside a new runtime with two work-stealing workers, and serves it with the client's address available
    /// as `ConnectInfo<SocketAddr>`. Returns once it accepts connections.
    ///
    /// # Errors
    /// When the port cannot be bound or `build` fails (its message, prefixed with `name`).
    pub async fn start<F, Fut, A>(
        name: &str,
        bind: SocketAddr,
        build: F,
    ) -> Result<ServerThread, String>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<A, String>>,
        A: App,
    {
        Self::start_with(name, bind, Threads::default(), build).await
    }

    /// [`start`](Self::start) with a choice of [`Threads`].
    ///
    /// # Errors
    /// When the port cannot be bound, a thread or runtime cannot be started, or `build` fails.
    pub async fn start_with<F, Fut, A>(
        name: &str,
        bind: SocketAddr,
        threads: Threads,
        build: F,
    ) -> Result<ServerThread, String>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<A, String>>,
        A: App,
    {
        Self::start_with_limits(name, bind, threads, ServerLimits::default(), build).await
    }

    /// [`start_with`](Self::start_with) with [`ServerLimits`] of its own.
    ///
    /// # Errors
    /// When the port cannot be bound, a thread or runtime cannot be started, or `build` fails.
    pub async fn start_with_limits<F, Fut, A>(
        name: &str,
        bind: SocketAddr,
        threads: Threads,
        limits: ServerLimits,
        build: F,
    ) -> Result<ServerThread, String>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<A, String>>,
        A: App,
    {
        Self::start_inner(name, bind, threads, limits, None, build).await
    }

    /// [`start_with_limits`](Self::start_with_limits) over TLS: every connection is a TLS
    /// handshake with `tls`'s certificate at the time (ALPN choosing HTTP/2 or HTTP/1.1), under
    /// the [header read timeout](ServerLimits::header_read_timeout), and its requests are served
    /// by [`App::tls_connection`]. A failed handshake closes the connection, counted in
    /// [`TLS_HANDSHAKE_FAILURES_TOTAL`] and logged
    /// at debug. When [`reload_interval`](crate::tls::TlsConfig::reload_interval) is not zero
    /// the server polls the certificate's files and reloads them on a change, for as long as it
    /// runs; keep a clone of `tls` to [`reload`](TlsTerminator::reload) it yourself (on
    /// `SIGHUP`).
    ///
    /// # Errors
    /// As [`start_with_limits`](Self::start_with_limits).
    pub async fn start_tls<F, Fut, A>(
        name: &str,
        bind: SocketAddr,
        threads: Threads,
        limits: ServerLimits,
        tls: TlsTerminator,
        build: F,
    ) -> Result<ServerThread, String>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<A, String>>,
        A: App,
    {
        Self::start_inner(name, bind, threads, limits, Some(tls), build).await
    }

    async fn start_inner<F, Fut, A>(
        name: &str,
        bind: SocketAddr,
        threads: Threads,
        limits: ServerLimits,
        tls: Option<TlsTerminator>,
        build: F,
    ) -> Result<ServerThread, String>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<A, String>>,
        A: App,
    {
        let (workers, per_core) = match threads {
            Threads::WorkStealing(n) => (n.max(1), false),
            Threads::PerCore(n) => (n.max(1), true),
        };
        let (ready_tx, ready_rx) = oneshot::channel::<Result<(SocketAddr, A), String>>();
        let (stop_tx, stop_rx) = watch::channel::<Option<Stop>>(None);
        let label = name.to_owned();
        let first_stop = stop_rx.clone();
        let first_tls = tls.clone();
        let first = spawn_thread(
            name,
            name.to_owned(),
            (!per_core).then_some(workers),
            ready_tx,
            move |ready_tx| async move {
                let listener = match listen(bind, per_core) {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("{label}: bind {bind}: {e}")));
                        return Stop::Kill;
                    }
                };
                let app = match build().await {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("{label}: {e}")));
                        return Stop::Kill;
                    }
                };
                let addr = match listener.local_addr() {
                    Ok(a) => a,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("{label}: {e}")));
                        return Stop::Kill;
                    }
                };
                let _ = ready_tx.send(Ok((addr, app.clone())));
                // Polls for as long as this runtime runs, which is as long as the server.
                let _poller = first_tls.as_ref().and_then(TlsTerminator::spawn_poller);
                serve(listener, app, limits, first_tls, first_stop).await
            },
        )?;
        let mut server = ServerThread {
            name: name.to_owned(),
            addr: bind,
            tls: tls.is_some(),
            stop: Some(stop_tx),
            threads: vec![first],
        };
        let app = match ready_rx.await {
            Ok(Ok((addr, app))) => {
                server.addr = addr;
                app
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(format!(
                    "{name}: the server thread ended before it was ready"
                ));
            }
        };
        if per_core {
            for i in 1..workers {
                let (ready_tx, ready_rx) = oneshot::channel::<Result<(), String>>();
                let (app, stop, addr) = (app.clone(), stop_rx.clone(), server.addr);
                let tls = tls.clone();
                let label = format!("{name} thread {i}");
                let thread = spawn_thread(
                    name,
                    label.clone(),
                    None,
                    ready_tx,
                    move |ready_tx| async move {
                        match listen(addr, true) {
                            Ok(listener) => {
                                let _ = ready_tx.send(Ok(()));
                                serve(listener, app, limits, tls, stop).await
                            }
                            Err(e) => {
                                let _ = ready_tx.send(Err(format!("{label}: bind {addr}: {e}")));
                                Stop::Kill
                            }
                        }
                    },
                )?;
                server.threads.push(thread);
                match ready_rx.await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err(e),
                    Err(_) => return Err(format!("{name}: thread {i} ended before it was ready")),
                }
            }
        }
        Ok(server)
    }

    /// The server's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`, or `https://ADDR` when it terminates TLS.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Ends the server abruptly, as a crash: open connections are dropped, nothing is finished.
    pub fn kill(&mut self) {
        self.finish(Stop::Kill);
    }

    /// Stops accepting, lets in-flight requests finish (up to 10 s), then ends.
    pub fn stop(&mut self) {
        self.finish(Stop::Graceful);
    }

    /// Whether it still runs.
    pub fn is_running(&self) -> bool {
        !self.threads.is_empty() && self.threads.iter().all(|t| !t.is_finished())
    }

    fn finish(&mut self, how: Stop) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(Some(how));
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        self.finish(Stop::Kill);
    }
}

#[cfg(all(test, feature = "axum"))]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use axum::routing::get;
    use http_body_util::{BodyExt as _, Empty};
    use hyper::client::conn::http1;
    use std::time::Instant;

    type Sender = http1::SendRequest<Empty<Bytes>>;

    /// A keep-alive client connection to `addr`, its I/O task spawned.
    async fn connect(addr: SocketAddr) -> (Sender, tokio::task::JoinHandle<()>) {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.unwrap();
        let task = tokio::spawn(async move {
            let _ = conn.await;
        });
        (sender, task)
    }

    async fn fetch(sender: &mut Sender, path: &str) -> (http::StatusCode, String) {
        sender.ready().await.unwrap();
        let req = Request::get(path)
            .header("host", "test")
            .body(Empty::new())
            .unwrap();
        let res = sender.send_request(req).await.unwrap();
        let status = res.status();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn a_graceful_stop_finishes_requests_and_closes_idle_connections_at_once() {
        let app = || async {
            Ok(axum::Router::new()
                .route("/", get(|| async { "hi" }))
                .route(
                    "/slow",
                    get(|| async {
                        tokio::time::sleep(Duration::from_millis(400)).await;
                        "done"
                    }),
                ))
        };
        let mut server = ServerThread::start("graceful", "127.0.0.1:0".parse().unwrap(), app)
            .await
            .unwrap();
        let addr = server.addr();
        // One connection idle after a request, one with a request in flight.
        let (mut idle, idle_task) = connect(addr).await;
        assert_eq!(fetch(&mut idle, "/").await.1, "hi");
        let (mut busy, _busy_task) = connect(addr).await;
        let in_flight = tokio::spawn(async move { fetch(&mut busy, "/slow").await });
        tokio::time::sleep(Duration::from_millis(100)).await;

        let started = Instant::now();
        let stopped = tokio::task::spawn_blocking(move || {
            server.stop();
            server
        });
        // The request in flight is answered, not cut.
        assert_eq!(
            in_flight.await.unwrap(),
            (http::StatusCode::OK, "done".to_string())
        );
        // The idle connection is closed by the server (it is woken to see the drain), so
        // the stop takes about as long as the slow request, not the 10 s bound.
        tokio::time::timeout(Duration::from_secs(3), idle_task)
            .await
            .expect("the idle connection was closed")
            .unwrap();
        let server = stopped.await.unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        assert!(!server.is_running());
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "no longer accepting"
        );
    }

    async fn limited(limits: ServerLimits) -> ServerThread {
        let app = || async { Ok(axum::Router::new().route("/", get(|| async { "hi" }))) };
        ServerThread::start_with_limits(
            "limited",
            "127.0.0.1:0".parse().unwrap(),
            Threads::WorkStealing(1),
            limits,
            app,
        )
        .await
        .unwrap()
    }

    /// Reads until the server closes the connection (or 10 s pass); what it sent.
    async fn read_to_close(stream: &mut tokio::net::TcpStream) -> String {
        use tokio::io::AsyncReadExt as _;
        let mut got = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut got)).await;
        String::from_utf8_lossy(&got).into_owned()
    }

    #[tokio::test]
    async fn a_slowloris_head_and_an_idle_connection_are_closed_at_the_header_timeout() {
        use tokio::io::AsyncWriteExt as _;
        let server = limited(ServerLimits {
            header_read_timeout: Duration::from_millis(300),
            ..ServerLimits::default()
        })
        .await;
        // One header byte every 100 ms: never a whole head.
        let mut slow = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
        let started = Instant::now();
        let trickle = async {
            for b in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
                if slow.write_all(&[*b]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), trickle).await;
        // Closed (hyper sends nothing more), long before the trickle would have ended.
        assert_eq!(read_to_close(&mut slow).await, "");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        // A connection that sends nothing is closed too.
        let mut idle = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
        let started = Instant::now();
        assert_eq!(read_to_close(&mut idle).await, "");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn past_max_connections_a_new_connection_gets_503_and_the_others_are_served() {
        let server = limited(ServerLimits {
            max_connections: 2,
            ..ServerLimits::default()
        })
        .await;
        let (mut a, _a) = connect(server.addr()).await;
        let (mut b, _b) = connect(server.addr()).await;
        assert_eq!(fetch(&mut a, "/").await.1, "hi");
        assert_eq!(fetch(&mut b, "/").await.1, "hi");
        let mut third = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
        let answer = read_to_close(&mut third).await;
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
        assert!(answer.contains("Retry-After: 1"), "{answer:?}");
        let body = answer.split("\r\n\r\n").nth(1).unwrap();
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(body).unwrap()["error"],
            "the server is overloaded"
        );
        // The open connections are still served; a closed one frees its place.
        assert_eq!(fetch(&mut a, "/").await.1, "hi");
        drop(b);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (mut c, _c) = connect(server.addr()).await;
        assert_eq!(fetch(&mut c, "/").await.1, "hi");
    }

    #[tokio::test]
    async fn a_service_not_ready_at_once_is_driven_to_readiness_before_its_call() {
        // One request at a time: the second call finds the service busy.
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let rx = Arc::new(tokio::sync::Mutex::new(Some(rx)));
        let inner = tower::ServiceBuilder::new()
            .concurrency_limit(1)
            .service(tower::service_fn(move |req: Request<Incoming>| {
                let rx = Arc::clone(&rx);
                async move {
                    if req.uri().path() == "/first"
                        && let Some(rx) = rx.lock().await.take()
                    {
                        let _ = rx.await;
                    }
                    Ok::<_, Infallible>(Response::new(req.uri().path().to_owned()))
                }
            }));
        // Requests need a real `Incoming` body: serve over a socket, one `PerConnection` per
        // connection as `serve` does (the limit's clones share their one slot).
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let connection = PerConnection {
                    service: RefCell::new(inner.clone()),
                    spare: inner.clone(),
                };
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), connection)
                        .await;
                });
            }
        });
        let (mut a, _ta) = connect(addr).await;
        let (mut b, _tb) = connect(addr).await;
        let first = tokio::spawn(async move { fetch(&mut a, "/first").await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let second = tokio::spawn(async move { fetch(&mut b, "/second").await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!second.is_finished(), "waits for the busy service");
        tx.send(()).unwrap();
        let within = |task| tokio::time::timeout(Duration::from_secs(5), task);
        assert_eq!(
            within(first).await.expect("first answered").unwrap().1,
            "/first"
        );
        assert_eq!(
            within(second)
                .await
                .expect("second answered, not stuck behind a lost waiter")
                .unwrap()
                .1,
            "/second"
        );
    }
}
