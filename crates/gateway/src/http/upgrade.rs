//! Upgraded connections (WebSocket and any other `Upgrade`): once the endpoint has answered
//! `101 Switching Protocols` and the client has been told the same, the client's connection
//! and the endpoint's are spliced, bytes copied both ways as they come, until either side
//! closes or nothing passes for the idle timeout (nginx's `proxy_read_timeout` on an upgraded
//! connection, HAProxy's `timeout tunnel`). The endpoint's in-flight slot is held the whole time,
//! so balancing by load sees the open connections; the tunnel's length is no latency sample.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use herd_lb_core::InFlightGuard;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::TcpStream;

/// The endpoint's side of an upgraded connection.
pub(crate) enum UpstreamSide {
    /// From the HTTP/1.1 path: the socket and the bytes read past the `101` head (the upgraded
    /// protocol's first, which go to the client before anything else).
    Raw(TcpStream, BytesMut),
    /// From hyper's client (HTTPS): the upgrade it hands over.
    Hyper(OnUpgrade),
}

/// Splices the client's upgraded connection (`client`, hyper's server hands it over once the
/// `101` is written) with the endpoint's, holding `guard` (the endpoint's in-flight slot) until
/// the tunnel closes. Dropped without a record: the slot is freed, and the tunnel's length is
/// not taken for the endpoint's latency.
pub(crate) async fn tunnel(
    client: OnUpgrade,
    upstream: UpstreamSide,
    guard: InFlightGuard,
    idle_timeout: Duration,
) {
    let endpoint = guard.state().label().to_owned();
    let client = match client.await {
        Ok(upgraded) => TokioIo::new(upgraded),
        Err(error) => {
            tracing::debug!(%endpoint, %error, "upgrade: the client's connection was not handed over");
            return;
        }
    };
    let result = match upstream {
        UpstreamSide::Raw(stream, read) => splice(client, stream, read, idle_timeout).await,
        UpstreamSide::Hyper(on) => match on.await {
            Ok(upgraded) => {
                splice(
                    client,
                    TokioIo::new(upgraded),
                    BytesMut::new(),
                    idle_timeout,
                )
                .await
            }
            Err(error) => {
                tracing::debug!(%endpoint, %error, "upgrade: the endpoint's connection was not handed over");
                return;
            }
        },
    };
    match result {
        Ok(Closed::ByClient(to_endpoint)) => {
            tracing::debug!(%endpoint, to_endpoint, "upgraded connection closed by the client");
        }
        Ok(Closed::ByEndpoint(to_client)) => {
            tracing::debug!(%endpoint, to_client, "upgraded connection closed by the endpoint");
        }
        Ok(Closed::Idle) => {
            tracing::debug!(%endpoint, ?idle_timeout, "upgraded connection closed: idle");
        }
        Err(error) => tracing::debug!(%endpoint, %error, "upgraded connection failed"),
    }
    drop(guard);
}

/// How a tunnel ended.
#[derive(Debug, PartialEq, Eq)]
enum Closed {
    /// The client closed its side, after this many bytes to the endpoint.
    ByClient(u64),
    /// The endpoint closed its side, after this many bytes to the client.
    ByEndpoint(u64),
    /// Nothing passed for the idle timeout.
    Idle,
}

/// Copies both ways between `client` and `endpoint` (`read`: the endpoint's bytes already read,
/// sent to the client first) until either side closes (what it sent is passed on and the other
/// side's writing is shut, then both are closed, as nginx ends an upgraded connection), or
/// until nothing passes for `idle`.
async fn splice<C, E>(
    mut client: C,
    endpoint: E,
    read: BytesMut,
    idle: Duration,
) -> io::Result<Closed>
where
    C: AsyncRead + AsyncWrite + Unpin,
    E: AsyncRead + AsyncWrite + Unpin,
{
    if !read.is_empty() {
        client.write_all(&read).await?;
    }
    let activity = Activity::new();
    let mut client = Watched {
        io: client,
        activity: &activity,
    };
    let mut endpoint = Watched {
        io: endpoint,
        activity: &activity,
    };
    let (mut client_read, mut client_write) = tokio::io::split(&mut client);
    let (mut endpoint_read, mut endpoint_write) = tokio::io::split(&mut endpoint);
    let up = async {
        let sent = tokio::io::copy(&mut client_read, &mut endpoint_write).await?;
        endpoint_write.shutdown().await?;
        Ok::<_, io::Error>(sent)
    };
    let down = async {
        let sent = tokio::io::copy(&mut endpoint_read, &mut client_write).await?;
        client_write.shutdown().await?;
        Ok::<_, io::Error>(sent)
    };
    tokio::select! {
        sent = up => sent.map(Closed::ByClient),
        sent = down => sent.map(Closed::ByEndpoint),
        () = activity.idle_for(idle) => Ok(Closed::Idle),
    }
}

/// When bytes last passed through a tunnel, either way.
struct Activity {
    started: tokio::time::Instant,
    /// Milliseconds from `started`.
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            started: tokio::time::Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Ends once nothing has passed for `idle`: one timer, set again past each activity.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let seen = self.last_ms.load(Ordering::Relaxed);
            let Some(at) = self
                .started
                .checked_add(Duration::from_millis(seen))
                .and_then(|t| t.checked_add(idle))
            else {
                return std::future::pending().await;
            };
            tokio::time::sleep_until(at).await;
            if self.last_ms.load(Ordering::Relaxed) == seen {
                return;
            }
        }
    }
}

/// A connection whose reads count as the tunnel's activity (each byte written was read first).
struct Watched<'a, T> {
    io: T,
    activity: &'a Activity,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<'_, T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<'_, T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt as _;

    #[tokio::test]
    async fn splices_both_ways_with_the_bytes_read_ahead_first() {
        let (client, mut client_peer) = tokio::io::duplex(1024);
        let (endpoint, mut endpoint_peer) = tokio::io::duplex(1024);
        let ahead = BytesMut::from(&b"first"[..]);
        let spliced = tokio::spawn(splice(client, endpoint, ahead, Duration::from_secs(30)));
        let mut got = [0_u8; 5];
        client_peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"first");
        client_peer.write_all(b"ping").await.unwrap();
        let mut got = [0_u8; 4];
        endpoint_peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
        endpoint_peer.write_all(b"pong!").await.unwrap();
        let mut got = [0_u8; 5];
        client_peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"pong!");
        // The endpoint closes: the client reads to the end, and the tunnel is over.
        drop(endpoint_peer);
        let mut rest = Vec::new();
        client_peer.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        assert_eq!(spliced.await.unwrap().unwrap(), Closed::ByEndpoint(5));
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_tunnel_closes_and_an_active_one_stays() {
        let (client, mut client_peer) = tokio::io::duplex(1024);
        let (endpoint, mut endpoint_peer) = tokio::io::duplex(1024);
        let idle = Duration::from_secs(10);
        let spliced = tokio::spawn(splice(client, endpoint, BytesMut::new(), idle));
        // Traffic every 6 s keeps it open past 10 s.
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(6)).await;
            client_peer.write_all(b"x").await.unwrap();
            let mut got = [0_u8; 1];
            endpoint_peer.read_exact(&mut got).await.unwrap();
        }
        assert!(!spliced.is_finished());
        // Then 10 s of nothing closes it.
        assert_eq!(spliced.await.unwrap().unwrap(), Closed::Idle);
    }
}
