//! The least work a reverse proxy built on hyper and tokio does per request: the floor under
//! herd's gateway in `gateway-vs-nginx`.
//!
//! One single-threaded runtime per core (as herd's gateway runs, and nginx's workers), each
//! accepting its share of the connections on one port (`SO_REUSEPORT`). Every client connection
//! gets its own keep-alive connection to a backend, chosen round robin when the client connects,
//! and its requests are sent on it unchanged, one after the other, as HTTP/1.1 serves them. No
//! per-request balancing, header rewriting, retries, timeouts, metrics or routing: what is left
//! is hyper's server and client connections and tokio's I/O. It is a measuring stick, not a
//! proxy to deploy (a failed backend fails its clients' requests).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Mutex;

/// A running floor proxy. Its threads serve until the process ends.
#[derive(Debug)]
pub struct FloorProxy {
    addr: SocketAddr,
}

impl FloorProxy {
    /// Starts `threads` server threads on one free port of 127.0.0.1, forwarding to `backends`.
    ///
    /// # Errors
    /// A message naming what failed (runtime, bind).
    pub fn start(backends: Vec<SocketAddr>, threads: usize) -> Result<Self, String> {
        if backends.is_empty() {
            return Err("floor proxy: no backends".to_owned());
        }
        let backends: Arc<[SocketAddr]> = backends.into();
        let next = Arc::new(AtomicUsize::new(0));
        let mut addr = SocketAddr::from(([127, 0, 0, 1], 0));
        for i in 0..threads.max(1) {
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            let (backends, next) = (Arc::clone(&backends), Arc::clone(&next));
            std::thread::Builder::new()
                .name(format!("floor-w{i}"))
                .spawn(move || {
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(runtime) => runtime,
                        Err(e) => {
                            let _ = ready_tx.send(Err(format!("floor proxy runtime: {e}")));
                            return;
                        }
                    };
                    runtime.block_on(async move {
                        let listener = match listen(addr) {
                            Ok(l) => l,
                            Err(e) => {
                                let _ = ready_tx.send(Err(format!("floor proxy bind {addr}: {e}")));
                                return;
                            }
                        };
                        let _ = ready_tx.send(listener.local_addr().map_err(|e| e.to_string()));
                        accept(listener, backends, next).await;
                    });
                })
                .map_err(|e| format!("floor proxy thread: {e}"))?;
            addr = ready_rx
                .recv()
                .map_err(|_| "floor proxy thread ended".to_owned())??;
        }
        Ok(Self { addr })
    }

    /// `http://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

async fn accept(listener: TcpListener, backends: Arc<[SocketAddr]>, next: Arc<AtomicUsize>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        let backend = backends[next.fetch_add(1, Ordering::Relaxed) % backends.len()];
        tokio::spawn(async move {
            if let Err(e) = serve(client, backend).await {
                eprintln!("floor proxy: {e}");
            }
        });
    }
}

/// Serves one client connection over one backend connection.
async fn serve(client: TcpStream, backend: SocketAddr) -> Result<(), String> {
    client.set_nodelay(true).map_err(|e| e.to_string())?;
    let upstream = TcpStream::connect(backend)
        .await
        .map_err(|e| format!("connect {backend}: {e}"))?;
    upstream.set_nodelay(true).map_err(|e| e.to_string())?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(upstream))
        .await
        .map_err(|e| format!("handshake {backend}: {e}"))?;
    tokio::spawn(connection);
    let sender = Arc::new(Mutex::new(sender));
    let forward = service_fn(move |req: Request<Incoming>| {
        let sender = Arc::clone(&sender);
        async move { send(&sender, req).await }
    });
    match hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(client), forward)
        .await
    {
        // wrk closes its connections mid-request when its time is up.
        Err(e) if !e.is_incomplete_message() => Err(e.to_string()),
        _ => Ok(()),
    }
}

async fn send(
    sender: &Mutex<SendRequest<Incoming>>,
    req: Request<Incoming>,
) -> Result<Response<Incoming>, hyper::Error> {
    let mut sender = sender.lock().await;
    sender.ready().await?;
    sender.send_request(req).await
}
