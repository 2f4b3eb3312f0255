//! The latency relay: a TCP forwarder in a host's namespace that delays each direction.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::mpsc as std_mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use nix::sched::CloneFlags;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::{Host, netns_path};
use crate::error::{Error, Result};

/// Largest chunk read (and delayed) at once.
const CHUNK: usize = 16 * 1024;
/// Chunks in flight per direction: the relay's buffer, hence its throughput bound.
const IN_FLIGHT: usize = 64;

/// Latency added in front of a server by [`Net::add_latency`](super::Net::add_latency).
#[derive(Debug, Clone)]
pub struct Latency {
    addr: SocketAddr,
    target: SocketAddr,
    each_way: Duration,
}

impl Latency {
    /// Where clients connect to see the latency: the host's address and the relay's port.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server the relay forwards to.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// The delay added in each direction.
    pub fn each_way(&self) -> Duration {
        self.each_way
    }
}

/// The relay's thread; stopped (its connections closed) on drop.
#[derive(Debug)]
pub(crate) struct Relay {
    latency: Latency,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Relay {
    pub(crate) fn start(host: &Host, target: SocketAddr, each_way: Duration) -> Result<Relay> {
        let what = format!("start the latency relay to {target} on host {}", host.name);
        let netns =
            std::fs::File::open(netns_path(&host.netns)).map_err(|e| Error::io(what.clone(), e))?;
        let ip = host.ip;
        let (ready_tx, ready_rx) = std_mpsc::channel::<std::io::Result<SocketAddr>>();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("herd-relay-{target}"))
            .spawn(move || {
                let setup = || -> std::io::Result<(tokio::runtime::Runtime, StdListener)> {
                    nix::sched::setns(&netns, CloneFlags::CLONE_NEWNET)?;
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    let listener = StdListener::bind((ip, 0))?;
                    listener.set_nonblocking(true)?;
                    Ok((runtime, listener))
                };
                let (runtime, listener) = match setup() {
                    Ok(v) => v,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let listener = match listener
                        .local_addr()
                        .and_then(|addr| Ok((TcpListener::from_std(listener)?, addr)))
                    {
                        Ok((l, addr)) => {
                            let _ = ready_tx.send(Ok(addr));
                            l
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    tokio::select! {
                        _ = stop_rx => {}
                        () = accept_loop(listener, target, each_way) => {}
                    }
                });
                // Dropping the runtime cancels every connection task: their sockets close.
            })
            .map_err(|e| Error::io(what.clone(), e))?;
        let addr = match ready_rx.recv() {
            Ok(Ok(addr)) => addr,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(Error::io(what, e));
            }
            Err(_) => {
                let _ = thread.join();
                return Err(Error::io(
                    what,
                    std::io::Error::other("the relay thread ended before binding"),
                ));
            }
        };
        Ok(Relay {
            latency: Latency {
                addr,
                target,
                each_way,
            },
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    pub(crate) fn latency(&self) -> &Latency {
        &self.latency
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept_loop(listener: TcpListener, target: SocketAddr, each_way: Duration) {
    loop {
        // A failed accept (e.g. out of file descriptors) is retried after a pause.
        let Ok((client, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        tokio::spawn(async move {
            // The server refused or is unreachable: the client's connection is closed.
            let Ok(server) = TcpStream::connect(target).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            tokio::join!(
                delayed_copy(client_read, server_write, each_way),
                delayed_copy(server_read, client_write, each_way),
            );
        });
    }
}

/// Copies `from` to `to`, each chunk written `delay` after it was read, in order; the end of
/// `from` (or a read error) is passed on as a write shutdown, as late as the data before it.
async fn delayed_copy(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    delay: Duration,
) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Option<Vec<u8>>)>(IN_FLIGHT);
    let due = move || {
        let now = Instant::now();
        now.checked_add(delay).unwrap_or(now)
    };
    let reader = async move {
        loop {
            let mut buf = vec![0; CHUNK];
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    let _ = tx.send((due(), None)).await;
                    return;
                }
                Ok(n) => {
                    buf.truncate(n);
                    if tx.send((due(), Some(buf))).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    let writer = async move {
        while let Some((at, chunk)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            match chunk {
                Some(bytes) => {
                    if to.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
                None => {
                    let _ = to.shutdown().await;
                    return;
                }
            }
        }
    };
    tokio::join!(reader, writer);
}
