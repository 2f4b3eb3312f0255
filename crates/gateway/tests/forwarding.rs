//! Forwarding headers come from the proxy, not the client (issue #16): `X-Forwarded-Proto` from
//! the connection, `Forwarded` and `Proxy-Authorization` dropped, `X-Forwarded-Host` from the
//! validated host, and trailers without the fields a trailer may not carry. A real hyper front
//! server on 127.0.0.1 with raw TCP clients (so absolute-form targets and trailers go on the
//! wire as an attacker writes them) and an axum backend that echoes what it received.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::routing::any;
use herd_gateway::http::{HttpUpstream, HttpUpstreamConfig};
use herd_lb_core::EndpointConfig;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// A server whose connections all live inside its task.
struct Server {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// The backend: answers every request with its headers, one `name: value` a line, then
    /// `--`, then its trailers the same way.
    async fn echo() -> Self {
        let app = Router::new().fallback(any(|req: Request| async move {
            let (parts, body) = req.into_parts();
            let collected = body.collect().await.unwrap();
            let mut out = String::new();
            for (name, value) in &parts.headers {
                out.push_str(&format!("{name}: {}\n", value.to_str().unwrap()));
            }
            out.push_str("--\n");
            for (name, value) in collected.trailers().into_iter().flatten() {
                out.push_str(&format!("{name}: {}\n", value.to_str().unwrap()));
            }
            out
        }));
        Self::serve(move |_| TowerToHyperService::new(app.clone())).await
    }

    /// A gateway: `upstream` served per connection, told the peer and whether it is TLS.
    async fn gateway(upstream: HttpUpstream, tls: bool) -> Self {
        Self::serve(move |peer| {
            TowerToHyperService::new(upstream.clone().with_peer(peer).with_tls(tls))
        })
        .await
    }

    async fn serve<S, B>(service: impl Fn(SocketAddr) -> S + Send + 'static) -> Self
    where
        S: hyper::service::Service<
                hyper::Request<hyper::body::Incoming>,
                Response = http::Response<B>,
            > + Send
            + 'static,
        S::Future: Send,
        S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, peer)) = listener.accept().await else {
                    continue;
                };
                let service = service(peer);
                connections.spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, task }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn upstream(backend: SocketAddr, configure: impl FnOnce(&mut HttpUpstreamConfig)) -> HttpUpstream {
    let mut config = HttpUpstreamConfig::default();
    config.balancer.endpoints = vec![EndpointConfig {
        address: backend.to_string(),
        weight: 1.0,
        max_in_flight: None,
    }];
    configure(&mut config);
    HttpUpstream::from_config(&config).unwrap()
}

/// Writes `bytes` on a new connection and reads the response: status, head (lowercase) and
/// body (framed by length or by chunks).
async fn exchange(addr: SocketAddr, bytes: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes.as_bytes()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), read_response(&mut stream))
        .await
        .expect("an answer within 5 s")
}

async fn read_response(stream: &mut TcpStream) -> (u16, String, String) {
    let mut buf = Vec::new();
    let mut chunk = [0_u8; 4096];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed before the head");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let status: u16 = head[9..12].parse().unwrap();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .map(|n| n.trim().parse::<usize>().unwrap());
    let mut body = buf.split_off(end);
    match length {
        Some(len) => {
            while body.len() < len {
                let n = stream.read(&mut chunk).await.unwrap();
                assert!(n > 0, "closed in the body");
                body.extend_from_slice(&chunk[..n]);
            }
        }
        // Chunked: read to the last chunk, then decode.
        None => {
            while !body.ends_with(b"0\r\n\r\n") {
                let n = stream.read(&mut chunk).await.unwrap();
                assert!(n > 0, "closed in the body");
                body.extend_from_slice(&chunk[..n]);
            }
            let mut decoded = Vec::new();
            let mut rest = &body[..];
            loop {
                let line = rest.windows(2).position(|w| w == b"\r\n").unwrap();
                let size =
                    usize::from_str_radix(std::str::from_utf8(&rest[..line]).unwrap(), 16).unwrap();
                if size == 0 {
                    break;
                }
                decoded.extend_from_slice(&rest[line + 2..line + 2 + size]);
                rest = &rest[line + 2 + size + 2..];
            }
            body = decoded;
        }
    }
    (status, head, String::from_utf8(body).unwrap())
}

/// The value of header `name` in an echo, if it came.
fn echoed<'a>(echo: &'a str, name: &str) -> Option<&'a str> {
    let headers = echo.split("--\n").next().unwrap();
    headers
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
}

/// An absolute-form `https://` target and a forged `X-Forwarded-Proto` over plain TCP are the
/// client's claims: the endpoint hears `http`. A connection the server marks as TLS, or a
/// configured value, says `https`.
#[tokio::test]
async fn forwarded_proto_comes_from_the_connection_never_the_request() {
    let backend = Server::echo().await;
    let plain = Server::gateway(upstream(backend.addr, |_| {}), false).await;
    let claims = [
        "GET https://gateway.example/echo HTTP/1.1\r\nhost: gateway.example\r\n\r\n",
        "GET /echo HTTP/1.1\r\nhost: gateway.example\r\nx-forwarded-proto: https\r\n\r\n",
        "GET https://gateway.example/echo HTTP/1.1\r\nhost: gateway.example\r\nx-forwarded-proto: https\r\n\r\n",
    ];
    for claim in claims {
        let (status, _, echo) = exchange(plain.addr, claim).await;
        assert_eq!(status, 200, "{claim:?}: {echo}");
        assert_eq!(
            echoed(&echo, "x-forwarded-proto"),
            Some("http"),
            "{claim:?}"
        );
    }

    let tls = Server::gateway(upstream(backend.addr, |_| {}), true).await;
    let (_, _, echo) = exchange(
        tls.addr,
        "GET http://gateway.example/echo HTTP/1.1\r\nhost: gateway.example\r\nx-forwarded-proto: http\r\n\r\n",
    )
    .await;
    assert_eq!(echoed(&echo, "x-forwarded-proto"), Some("https"), "{echo}");

    // TLS ended by a load balancer in front: the operator says so.
    let configured = upstream(backend.addr, |c| c.forwarded_proto = Some("https".into()));
    let behind_lb = Server::gateway(configured, false).await;
    let (_, _, echo) = exchange(
        behind_lb.addr,
        "GET /echo HTTP/1.1\r\nhost: gateway.example\r\n\r\n",
    )
    .await;
    assert_eq!(echoed(&echo, "x-forwarded-proto"), Some("https"), "{echo}");
}

/// `Forwarded` (RFC 7239) and `Proxy-Authorization` never reach the endpoint;
/// `X-Forwarded-Host` is the host the proxy validated, not the client's header.
#[tokio::test]
async fn forwarded_and_proxy_credentials_are_dropped_and_the_forwarded_host_is_validated() {
    let backend = Server::echo().await;
    let gateway = Server::gateway(upstream(backend.addr, |_| {}), false).await;
    let (status, _, echo) = exchange(
        gateway.addr,
        "GET /echo HTTP/1.1\r\nhost: gateway.example\r\n\
         forwarded: for=6.6.6.6;proto=https;host=evil.example\r\n\
         Forwarded: for=7.7.7.7\r\n\
         proxy-authorization: Basic dXNlcjpwYXNz\r\n\
         x-forwarded-host: evil.example\r\n\
         authorization: Bearer kept\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{echo}");
    assert_eq!(echoed(&echo, "forwarded"), None, "{echo}");
    assert_eq!(echoed(&echo, "proxy-authorization"), None, "{echo}");
    assert_eq!(
        echoed(&echo, "x-forwarded-host"),
        Some("gateway.example"),
        "{echo}"
    );
    assert_eq!(
        echoed(&echo, "authorization"),
        Some("Bearer kept"),
        "{echo}"
    );
    assert_eq!(echo.matches("x-forwarded-host:").count(), 1, "{echo}");

    // An absolute-form target's authority is the host (RFC 9112 §3.2.2), checked as Host is.
    let (status, _, echo) = exchange(
        gateway.addr,
        "GET http://target.example:8080/echo HTTP/1.1\r\nhost: gateway.example\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{echo}");
    assert_eq!(
        echoed(&echo, "x-forwarded-host"),
        Some("target.example:8080"),
        "{echo}"
    );
    let (status, _, body) = exchange(
        gateway.addr,
        "GET http://user:pw@target.example/echo HTTP/1.1\r\nhost: gateway.example\r\n\r\n",
    )
    .await;
    assert_eq!(status, 400, "{body}");
}

/// A chunked upload's trailers reach the endpoint without `Set-Cookie`, `Authorization`,
/// `Cookie`, `Host`, framing, hop-by-hop or forwarding fields; the others go on.
#[tokio::test]
async fn request_trailers_go_on_without_the_fields_a_trailer_may_not_carry() {
    let backend = Server::echo().await;
    let gateway = Server::gateway(upstream(backend.addr, |_| {}), false).await;
    let (status, _, echo) = exchange(
        gateway.addr,
        "POST /upload HTTP/1.1\r\nhost: gateway.example\r\ntransfer-encoding: chunked\r\n\
         te: trailers\r\n\r\n\
         5\r\nhello\r\n0\r\n\
         x-checksum: abc\r\n\
         set-cookie: sid=forged\r\n\
         authorization: Bearer forged\r\n\
         proxy-authorization: Basic Zm9yZ2Vk\r\n\
         cookie: sid=forged\r\n\
         host: evil.example\r\n\
         content-length: 999\r\n\
         connection: close\r\n\
         x-forwarded-for: 6.6.6.6\r\n\
         grpc-status: 0\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{echo}");
    let trailers = echo.split("--\n").nth(1).unwrap();
    assert_eq!(trailers, "x-checksum: abc\ngrpc-status: 0\n", "{echo}");
}
