//! Running a server on its own thread and tokio runtime, like a separate process.
//!
//! Each instance owns its database pools, cache connections and background tasks, which belong to
//! the runtime that created them. Giving every server its own runtime makes instances as
//! independent as separate processes, and lets [`ServerThread::kill`] end one abruptly (every
//! task and connection dropped at once, keep-alive connections included), as a crash would.

use std::future::Future;
use std::net::SocketAddr;
use std::thread::JoinHandle;
use std::time::Duration;

use axum::Router;
use tokio::sync::oneshot;

/// How a server thread ends.
#[derive(Debug)]
enum Stop {
    /// Stop accepting, finish in-flight requests (bounded), then exit.
    Graceful,
    /// Drop everything now.
    Kill,
}

/// A server running on its own thread and runtime.
#[derive(Debug)]
pub struct ServerThread {
    name: String,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<Stop>>,
    thread: Option<JoinHandle<()>>,
}

impl ServerThread {
    /// Binds `bind` (port 0 for any free port), builds the router with `build` inside the new
    /// runtime, and serves it with the client's address available as `ConnectInfo<SocketAddr>`.
    /// Returns once it accepts connections.
    ///
    /// # Errors
    /// When the port cannot be bound or `build` fails (its message, prefixed with `name`).
    pub async fn start<F, Fut>(
        name: &str,
        bind: SocketAddr,
        build: F,
    ) -> Result<ServerThread, String>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Router, String>>,
    {
        let (ready_tx, ready_rx) = oneshot::channel::<Result<SocketAddr, String>>();
        let (stop_tx, stop_rx) = oneshot::channel::<Stop>();
        let label = name.to_owned();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("{label}: runtime: {e}")));
                        return;
                    }
                };
                let stop = rt.block_on(async move {
                    let listener = match tokio::net::TcpListener::bind(bind).await {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = ready_tx.send(Err(format!("{label}: bind {bind}: {e}")));
                            return None;
                        }
                    };
                    let router = match build().await {
                        Ok(r) => r,
                        Err(e) => {
                            let _ = ready_tx.send(Err(format!("{label}: {e}")));
                            return None;
                        }
                    };
                    let addr = match listener.local_addr() {
                        Ok(a) => a,
                        Err(e) => {
                            let _ = ready_tx.send(Err(format!("{label}: {e}")));
                            return None;
                        }
                    };
                    let (graceful_tx, graceful_rx) = oneshot::channel::<()>();
                    let server = tokio::spawn(async move {
                        let app = router.into_make_service_with_connect_info::<SocketAddr>();
                        let _ = axum::serve(listener, app)
                            .with_graceful_shutdown(async {
                                let _ = graceful_rx.await;
                            })
                            .await;
                    });
                    let _ = ready_tx.send(Ok(addr));
                    let how = stop_rx.await.unwrap_or(Stop::Kill);
                    if let Stop::Graceful = how {
                        let _ = graceful_tx.send(());
                        let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
                    }
                    Some(how)
                });
                match stop {
                    // Drop every task (and with them every socket) without waiting for them.
                    Some(Stop::Kill) | None => rt.shutdown_background(),
                    Some(Stop::Graceful) => rt.shutdown_timeout(Duration::from_secs(5)),
                }
            })
            .map_err(|e| format!("{name}: spawn thread: {e}"))?;
        match ready_rx.await {
            Ok(Ok(addr)) => Ok(ServerThread {
                name: name.to_owned(),
                addr,
                stop: Some(stop_tx),
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(format!(
                    "{name}: the server thread ended before it was ready"
                ))
            }
        }
    }

    /// The server's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
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
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    fn finish(&mut self, how: Stop) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(how);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        self.finish(Stop::Kill);
    }
}
