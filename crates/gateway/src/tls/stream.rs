//! A decrypted stream whose first bytes were read ahead (to bound the wait for them) and are
//! handed to hyper again before the rest.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, ReadBuf};

/// The HTTP/2 connection preface: what must be read to tell HTTP/2 from HTTP/1.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// `inner`, with `head[pos..len]` read first.
#[derive(Debug)]
pub(crate) struct Rewound<S> {
    head: [u8; 24],
    pos: usize,
    len: usize,
    inner: S,
}

impl<S: AsyncRead + Unpin> Rewound<S> {
    /// Reads from `inner` until it is clear whether HTTP/2 follows (one byte that does not
    /// begin its preface, or the whole preface), for up to `within`; `None` when the client
    /// closed, failed or was too slow. hyper's own header timeout starts only once it knows
    /// the protocol, so this bounds a client that completes a handshake and sends nothing.
    pub(crate) async fn first_bytes(mut inner: S, within: Duration) -> Option<Self> {
        let mut head = [0_u8; 24];
        let read = async {
            let mut len = 0;
            loop {
                match inner.read(&mut head[len..]).await {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => len += n,
                }
                if len == head.len() || !H2_PREFACE.starts_with(&head[..len]) {
                    return Some(len);
                }
            }
        };
        let len = tokio::time::timeout(within, read).await.ok().flatten()?;
        Some(Self {
            head,
            pos: 0,
            len,
            inner,
        })
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewound<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pos < this.len {
            let ahead = &this.head[this.pos..this.len];
            let n = ahead.len().min(buf.remaining());
            buf.put_slice(&ahead[..n]);
            this.pos += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewound<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use tokio::io::AsyncWriteExt as _;

    #[tokio::test]
    async fn the_bytes_read_ahead_come_first() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let mut rewound = Rewound::first_bytes(server, Duration::from_secs(5))
            .await
            .unwrap();
        client.write_all(b"Host: x\r\n\r\n").await.unwrap();
        drop(client);
        let mut all = Vec::new();
        rewound.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    }

    #[tokio::test]
    async fn the_whole_preface_is_waited_for_and_silence_is_bounded() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(&H2_PREFACE[..10]).await.unwrap();
        let waiting = Rewound::first_bytes(server, Duration::from_millis(200));
        assert!(waiting.await.is_none(), "half a preface, then nothing");
        let (_client, server) = tokio::io::duplex(64);
        assert!(
            Rewound::first_bytes(server, Duration::from_millis(200))
                .await
                .is_none()
        );
    }
}
