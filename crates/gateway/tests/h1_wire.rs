//! The HTTP upstream's own HTTP/1.1 exchange against scripted endpoints on 127.0.0.1: each
//! answers with exact bytes, so framing, interim responses, connection reuse and broken
//! answers are checked on the wire.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use herd_gateway::http::{ClientAddr, HttpUpstream, HttpUpstreamConfig};
use herd_lb_core::EndpointConfig;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt;

/// What the endpoint does with a request.
enum Reply {
    /// Writes these bytes and keeps the connection open.
    Keep(&'static str),
    /// Writes these bytes and closes the connection.
    Close(&'static str),
    /// Closes the connection without answering.
    Drop,
}

/// A request as the endpoint read it.
#[derive(Debug, Clone)]
struct Seen {
    connection: usize,
    head: String,
    body: Vec<u8>,
}

/// An endpoint answering the `n`th request overall with `script(n)`.
struct Scripted {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Scripted {
    async fn start(script: fn(usize) -> Reply) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            for connection in 1.. {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let log = Arc::clone(&log);
                connections.spawn(serve(stream, connection, log, script));
            }
        });
        Self { addr, seen, task }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn connections(&self) -> usize {
        self.seen().iter().map(|s| s.connection).max().unwrap_or(0)
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    mut stream: TcpStream,
    connection: usize,
    log: Arc<Mutex<Vec<Seen>>>,
    script: fn(usize) -> Reply,
) {
    let mut buf = Vec::new();
    loop {
        let Some((head, body)) = read_request(&mut stream, &mut buf).await else {
            return;
        };
        let n = {
            let mut log = log.lock().unwrap();
            log.push(Seen {
                connection,
                head,
                body,
            });
            log.len()
        };
        match script(n) {
            Reply::Keep(bytes) => stream.write_all(bytes.as_bytes()).await.unwrap(),
            Reply::Close(bytes) => {
                stream.write_all(bytes.as_bytes()).await.unwrap();
                return;
            }
            Reply::Drop => return,
        }
    }
}

/// Reads one request (head, and a body framed by length or chunks); `None` at the end.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(String, Vec<u8>)> {
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        fill(stream, buf).await?;
    };
    let head = String::from_utf8(buf.drain(..end).collect()).unwrap();
    let lower = head.to_ascii_lowercase();
    let mut body = Vec::new();
    if let Some(len) = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
    {
        let len: usize = len.trim().parse().unwrap();
        while buf.len() < len {
            fill(stream, buf).await?;
        }
        body = buf.drain(..len).collect();
    } else if lower.contains("transfer-encoding: chunked") {
        loop {
            let line_end = loop {
                if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                fill(stream, buf).await?;
            };
            let size =
                usize::from_str_radix(std::str::from_utf8(&buf[..line_end]).unwrap(), 16).unwrap();
            while buf.len() < line_end + 2 + size + 2 {
                fill(stream, buf).await?;
            }
            body.extend_from_slice(&buf[line_end + 2..line_end + 2 + size]);
            buf.drain(..line_end + 2 + size + 2);
            if size == 0 {
                break;
            }
        }
    }
    Some((head, body))
}

async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0_u8; 4096];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => None,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Some(())
        }
    }
}

fn upstream(addr: SocketAddr) -> HttpUpstream {
    upstream_with_timeout(addr, Duration::from_secs(5))
}

fn upstream_with_timeout(addr: SocketAddr, timeout: Duration) -> HttpUpstream {
    let mut config = HttpUpstreamConfig::default();
    config.balancer.endpoints = vec![EndpointConfig {
        address: addr.to_string(),
        weight: 1.0,
        max_in_flight: None,
    }];
    // One attempt: what the exchange itself does is under test, not the balancer's retries.
    config.balancer.retries.max_attempts = 1;
    config.request_timeout = timeout;
    HttpUpstream::from_config(&config).unwrap()
}

fn request(method: &str, body: Body) -> Request<Body> {
    let mut req = Request::builder()
        .method(method)
        .uri("/x")
        .header("host", "client.example")
        .body(body)
        .unwrap();
    req.extensions_mut()
        .insert(ClientAddr("127.0.0.1:1".parse().unwrap()));
    req
}

/// Status and body text, or the body's error.
async fn send(upstream: &HttpUpstream, req: Request<Body>) -> (StatusCode, Result<String, String>) {
    let res = upstream.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let body = match res.into_body().collect().await {
        Ok(b) => Ok(String::from_utf8(b.to_bytes().to_vec()).unwrap()),
        Err(e) => Err(e.to_string()),
    };
    (status, body)
}

fn get() -> Request<Body> {
    request("GET", Body::empty())
}

#[tokio::test]
async fn chunked_and_close_delimited_responses_arrive_whole() {
    let server = Scripted::start(|n| match n {
        1 => Reply::Keep(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=1\r\n world\r\n0\r\nx-trailer: 1\r\n\r\n",
        ),
        2 => Reply::Close("HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil the end"),
        _ => Reply::Keep("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"),
    })
    .await;
    let upstream = upstream(server.addr);
    assert_eq!(
        send(&upstream, get()).await,
        (StatusCode::OK, Ok("hello world".into()))
    );
    // The chunked response left the connection reusable.
    assert_eq!(
        send(&upstream, get()).await,
        (StatusCode::OK, Ok("until the end".into()))
    );
    assert_eq!(server.connections(), 1);
    // A body that ends with the connection retires it.
    assert_eq!(
        send(&upstream, get()).await,
        (StatusCode::OK, Ok("ok".into()))
    );
    assert_eq!(server.connections(), 2);
}

#[tokio::test]
async fn interim_responses_are_skipped_and_head_responses_have_no_body() {
    let server = Scripted::start(|n| match n {
        1 => Reply::Keep(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok",
        ),
        // HEAD: the length describes a body that is not sent.
        2 => Reply::Keep("HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n"),
        3 => Reply::Keep("HTTP/1.1 204 No Content\r\n\r\n"),
        _ => Reply::Keep("HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nnext"),
    })
    .await;
    let upstream = upstream(server.addr);
    let mut post = request("POST", Body::from("data"));
    post.headers_mut()
        .insert("expect", "100-continue".parse().unwrap());
    assert_eq!(
        send(&upstream, post).await,
        (StatusCode::CREATED, Ok("ok".into()))
    );
    let res = upstream
        .clone()
        .oneshot(request("HEAD", Body::empty()))
        .await
        .unwrap();
    assert_eq!(res.headers()["content-length"], "10");
    assert!(
        res.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .is_empty()
    );
    assert_eq!(
        send(&upstream, get()).await,
        (StatusCode::NO_CONTENT, Ok(String::new()))
    );
    assert_eq!(
        send(&upstream, get()).await,
        (StatusCode::OK, Ok("next".into()))
    );
    assert_eq!(server.connections(), 1);
    let seen = server.seen();
    assert_eq!(seen[0].body, b"data");
    assert!(!seen[0].head.contains("expect"), "{}", seen[0].head);
    assert!(
        seen[0].head.contains("content-length: 4\r\n"),
        "{}",
        seen[0].head
    );
}

#[tokio::test]
async fn an_idle_connection_the_endpoint_closed_is_not_used() {
    // The endpoint closes each connection after answering, without saying so.
    let server =
        Scripted::start(|_| Reply::Close("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")).await;
    let upstream = upstream(server.addr);
    for method in ["GET", "POST", "GET", "POST"] {
        let (status, body) = send(&upstream, request(method, Body::from("b"))).await;
        assert_eq!(
            (status, body),
            (StatusCode::OK, Ok("ok".into())),
            "{method}"
        );
        // Let the close arrive before the next request.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(server.connections(), 4);
    assert_eq!(upstream.endpoints()[0].failures, 0);
}

#[tokio::test]
async fn a_request_a_reused_connection_leaves_unanswered_goes_again_only_if_idempotent() {
    // Every second request on a connection is read and left unanswered as it closes: the
    // keep-alive race, where the endpoint closes as a request arrives.
    let server = Scripted::start(|n| {
        if n % 3 == 2 {
            Reply::Drop
        } else {
            Reply::Keep("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        }
    })
    .await;
    let upstream = upstream(server.addr);
    // 1: answered; 2: dropped on the reused connection, so sent again on a new one (3).
    assert_eq!(
        send(&upstream, get()).await,
        (StatusCode::OK, Ok("ok".into()))
    );
    assert_eq!(
        send(&upstream, get()).await,
        (StatusCode::OK, Ok("ok".into()))
    );
    assert_eq!(server.seen().len(), 3);
    assert_eq!(server.connections(), 2);
    // 4: answered on the new connection; 5, a POST, is dropped: it may have been acted on, so it
    // fails rather than going out twice.
    assert_eq!(
        send(&upstream, get()).await,
        (StatusCode::OK, Ok("ok".into()))
    );
    let (status, _) = send(&upstream, request("POST", Body::from("once"))).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let posts = server
        .seen()
        .iter()
        .filter(|s| s.head.starts_with("POST"))
        .count();
    assert_eq!(posts, 1);
}

#[tokio::test]
async fn broken_responses_become_502_without_the_endpoint_address() {
    for reply in [
        "NOT HTTP AT ALL\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok",
        "HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\nok",
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-le",
    ] {
        static REPLY: Mutex<&str> = Mutex::new("");
        *REPLY.lock().unwrap() = reply;
        let server = Scripted::start(|_| Reply::Close(*REPLY.lock().unwrap())).await;
        let upstream = upstream(server.addr);
        let (status, body) = send(&upstream, get()).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{reply}");
        // What happened, not where: the address and the parse error stay in the log.
        assert_eq!(body.unwrap(), "upstream request failed\n", "{reply}");
    }
}

#[tokio::test]
async fn a_body_cut_short_is_an_error_and_extra_bytes_retire_the_connection() {
    let server = Scripted::start(|n| match n {
        1 => Reply::Keep("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokEXTRA"),
        2 => Reply::Close("HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort"),
        3 => Reply::Close("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel"),
        _ => Reply::Keep("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"),
    })
    .await;
    let upstream = upstream(server.addr);
    assert_eq!(
        send(&upstream, get()).await,
        (StatusCode::OK, Ok("ok".into()))
    );
    let (status, body) = send(&upstream, get()).await;
    assert_eq!(status, StatusCode::OK);
    let error = body.unwrap_err();
    assert!(error.contains(&server.addr.to_string()), "{error}");
    let (_, body) = send(&upstream, get()).await;
    assert!(body.is_err());
    assert_eq!(
        send(&upstream, get()).await,
        (StatusCode::OK, Ok("ok".into()))
    );
    // Each of the first three retired its connection.
    assert_eq!(server.connections(), 4);
}

#[tokio::test]
async fn streamed_request_bodies_go_chunked_or_by_length() {
    let server =
        Scripted::start(|_| Reply::Keep("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")).await;
    let upstream = upstream(server.addr);
    // Larger than the retry buffer and of unknown length: streamed in chunks.
    let big = vec![b'x'; 100 * 1024];
    let pieces: Vec<Result<bytes::Bytes, std::io::Error>> = big
        .chunks(10_000)
        .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
        .collect();
    let body = Body::from_stream(futures_util::stream::iter(pieces));
    assert_eq!(
        send(&upstream, request("PUT", body)).await.0,
        StatusCode::OK
    );
    let seen = server.seen();
    assert!(
        seen[0]
            .head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
    );
    assert_eq!(seen[0].body, big);
    // A small one is buffered (it can be retried) and sent with its length.
    assert_eq!(
        send(&upstream, request("PUT", Body::from("small"))).await.0,
        StatusCode::OK
    );
    let seen = server.seen();
    assert!(
        seen[1].head.contains("content-length: 5\r\n"),
        "{}",
        seen[1].head
    );
    assert_eq!(seen[1].body, b"small");
    assert_eq!(server.connections(), 1);
}

#[tokio::test]
async fn a_request_sent_to_an_endpoint_directly_gets_its_host_and_forwarding_headers() {
    let server =
        Scripted::start(|_| Reply::Keep("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")).await;
    let upstream = upstream(server.addr);
    // Through the balancer underneath, without the head `HttpUpstream` writes before the pick.
    let mut req = Request::post("/direct?q=1")
        .header("host", "client.example")
        .header("x-forwarded-proto", "spoofed")
        .header("content-length", "99")
        .body(herd_gateway::http::UpstreamBody::full("abc".into()))
        .unwrap();
    *req.version_mut() = http::Version::HTTP_10;
    let res = upstream.balancer().clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let head = server.seen()[0].head.clone();
    assert!(head.starts_with("POST /direct?q=1 HTTP/1.1\r\n"), "{head}");
    for line in [
        &format!("host: {}\r\n", server.addr),
        "x-forwarded-proto: http\r\n",
        "x-forwarded-host: client.example\r\n",
        "content-length: 3\r\n",
    ] {
        assert_eq!(head.matches(line).count(), 1, "{line} in {head}");
    }
    // Not `99` alone: the endpoint's port may hold it.
    assert!(
        !head.contains("spoofed") && !head.contains("content-length: 99"),
        "{head}"
    );
    assert_eq!(server.seen()[0].body, b"abc");
}

/// An endpoint that reads one request head only, answers with `reply` at once (without reading
/// the request body), then either closes (`close`) or holds the connection open unread.
async fn early_responder(reply: &'static str, close: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    if fill(&mut stream, &mut buf).await.is_none() {
                        return;
                    }
                }
                stream.write_all(reply.as_bytes()).await.unwrap();
                if !close {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
            });
        }
    });
    addr
}

fn big_stream_body() -> Body {
    let pieces: Vec<Result<bytes::Bytes, std::io::Error>> = (0..512)
        .map(|_| Ok(bytes::Bytes::from(vec![b'x'; 16 * 1024])))
        .collect();
    Body::from_stream(futures_util::stream::iter(pieces))
}

/// an endpoint that refuses an upload early (413, then closes without reading the body)
/// must have its answer reach the client, as hyper's client delivered it.
#[tokio::test]
async fn an_early_final_response_to_an_upload_reaches_the_client() {
    let addr = early_responder(
        "HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        true,
    )
    .await;
    let upstream = upstream(addr);
    let (status, body) = send(&upstream, request("PUT", big_stream_body())).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body:?}");
}

/// the same when the endpoint answers and keeps the connection without reading: the proxy
/// must not sit writing until the attempt timeout.
#[tokio::test]
async fn an_early_response_while_the_endpoint_stops_reading_is_not_a_timeout() {
    let addr = early_responder(
        "HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\n\r\n",
        false,
    )
    .await;
    let upstream = upstream_with_timeout(addr, Duration::from_secs(2));
    let (status, body) = send(&upstream, request("PUT", big_stream_body())).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body:?}");
}

/// RFC 9112 §6.1: Transfer-Encoding in an HTTP/1.0 message means faulty framing: the
/// connection must not be reused (hyper refused the response).
#[tokio::test]
async fn transfer_encoding_in_an_http10_response_never_leaves_the_connection_reusable() {
    let server = Scripted::start(|_| {
        Reply::Keep(
            "HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        )
    })
    .await;
    let upstream = upstream(server.addr);
    let _ = send(&upstream, get()).await;
    let _ = send(&upstream, get()).await;
    assert_eq!(
        server.connections(),
        2,
        "an HTTP/1.0 + TE connection was reused"
    );
}

/// a chunk-size line must be hex digits then BWS/`;`/CR. `0x5` is not size 0 with an
/// extension `x5` (hyper: "Invalid chunk size line").
#[tokio::test]
async fn junk_after_a_chunk_size_is_refused() {
    let server = Scripted::start(|_| {
        Reply::Keep(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
        )
    })
    .await;
    let upstream = upstream(server.addr);
    let (status, body) = send(&upstream, get()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.is_err(), "accepted as {body:?}");
}

/// a reused connection that answered with an interim response and then closed did answer:
/// the request reached the endpoint's application (103 Early Hints) and is not "unanswered".
#[tokio::test]
async fn an_interim_response_then_close_is_not_an_unanswered_request() {
    let server = Scripted::start(|n| match n {
        2 => Reply::Close("HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n"),
        _ => Reply::Keep("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"),
    })
    .await;
    let upstream = upstream(server.addr);
    let _ = send(&upstream, get()).await;
    let _ = send(&upstream, get()).await;
    assert_eq!(server.seen().len(), 2, "the request went out again");
}

/// an absolute-form URI without a path but with a query (`http://h?x=1`) must be sent as
/// `/?x=1` (hyper wrote the URI's Display), never as the request-target `?x=1`.
#[tokio::test]
async fn a_query_without_a_path_gets_a_slash() {
    let server =
        Scripted::start(|_| Reply::Keep("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")).await;
    let upstream = upstream(server.addr);
    let mut req = get();
    *req.uri_mut() = "http://client.example?x=1".parse().unwrap();
    let _ = send(&upstream, req).await;
    let seen = server.seen();
    assert!(
        seen[0].head.starts_with("GET /?x=1 HTTP/1.1\r\n"),
        "{}",
        seen[0].head
    );
}

/// RFC 9110 §8.6: a recipient that accepts duplicated equal Content-Length values must
/// forward a single one.
#[tokio::test]
async fn duplicate_content_lengths_are_forwarded_as_one() {
    let server = Scripted::start(|n| match n {
        1 => Reply::Keep("HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 2\r\n\r\nok"),
        _ => Reply::Keep("HTTP/1.1 200 OK\r\ncontent-length: 2, 2\r\n\r\nok"),
    })
    .await;
    let upstream = upstream(server.addr);
    for _ in 0..2 {
        let res = upstream.clone().oneshot(get()).await.unwrap();
        let values: Vec<_> = res.headers().get_all("content-length").iter().collect();
        assert_eq!(values, ["2"]);
    }
}

/// response trailers of a chunked body reach the client's body as a trailers frame, as
/// they did through hyper's `Incoming`.
#[tokio::test]
async fn response_trailers_are_passed_on() {
    let server = Scripted::start(|_| {
        Reply::Keep(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: grpc-status\r\n\r\n2\r\nok\r\n0\r\ngrpc-status: 0\r\n\r\n",
        )
    })
    .await;
    let upstream = upstream(server.addr);
    let mut req = get();
    req.headers_mut().insert("te", "trailers".parse().unwrap());
    let res = upstream.clone().oneshot(req).await.unwrap();
    let collected = res.into_body().collect().await.unwrap();
    assert_eq!(
        collected
            .trailers()
            .and_then(|t| t.get("grpc-status"))
            .map(|v| v.as_bytes().to_vec()),
        Some(b"0".to_vec())
    );
}

/// Response trailers lose what a trailer may not carry (RFC 9110 §6.5.1): a `Set-Cookie` or
/// an `Authorization` after the body would reach a client that merges trailers into the head
/// unchecked, and the dependency signal is the proxy's alone.
#[tokio::test]
async fn response_trailers_lose_cookies_credentials_and_framing() {
    let server = Scripted::start(|_| {
        Reply::Keep(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\
             set-cookie: sid=forged; Path=/\r\nauthorization: Bearer x\r\n\
             www-authenticate: Basic\r\ncontent-length: 99\r\nlocation: /elsewhere\r\n\
             x-herd-dependency-unavailable: postgres\r\ngrpc-status: 0\r\n\r\n",
        )
    })
    .await;
    let upstream = upstream(server.addr);
    let res = upstream.clone().oneshot(get()).await.unwrap();
    let collected = res.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let names: Vec<&str> = trailers.keys().map(|n| n.as_str()).collect();
    assert_eq!(names, ["grpc-status"], "{trailers:?}");
}

/// RFC 9112 §6.3: a response with both Transfer-Encoding and Content-Length "ought to be
/// handled as an error"; a proxy that forwards it should at least not reuse the connection
/// (pingora, nginx close it).
#[tokio::test]
async fn te_and_cl_together_retire_the_connection() {
    let server = Scripted::start(|_| {
        Reply::Keep(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        )
    })
    .await;
    let upstream = upstream(server.addr);
    let _ = send(&upstream, get()).await;
    let _ = send(&upstream, get()).await;
    assert_eq!(server.connections(), 2);
}

/// HTTP/1.0 `Connection: close` wins over a `keep-alive` token in the same response.
#[tokio::test]
async fn http10_close_wins_over_keep_alive() {
    let server = Scripted::start(|_| {
        Reply::Keep("HTTP/1.0 200 OK\r\nconnection: close\r\nconnection: keep-alive\r\ncontent-length: 2\r\n\r\nok")
    })
    .await;
    let upstream = upstream(server.addr);
    let _ = send(&upstream, get()).await;
    let _ = send(&upstream, get()).await;
    assert_eq!(server.connections(), 2);
}

/// A body that stalls longer than the request timeout ends with an error naming the endpoint
/// (nginx's `proxy_read_timeout`), instead of holding the client forever; a body that keeps
/// coming is not cut.
#[tokio::test]
async fn a_stalled_body_times_out_between_reads() {
    let server =
        Scripted::start(|_| Reply::Keep("HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")).await;
    let timeout = Duration::from_millis(300);
    let upstream = upstream_with_timeout(server.addr, timeout);
    let res = upstream.clone().oneshot(get()).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let started = std::time::Instant::now();
    let collected = tokio::time::timeout(Duration::from_secs(5), res.into_body().collect())
        .await
        .expect("the body must not hang");
    let error = collected.unwrap_err().to_string();
    assert!(
        error.contains("timed out") && error.contains(&server.addr.to_string()),
        "{error}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );

    // A body sent in pieces 200 ms apart, each within the timeout, arrives whole.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        read_request(&mut stream, &mut buf).await;
        stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n")
            .await
            .unwrap();
        for piece in [b"x", b"y", b"z"] {
            tokio::time::sleep(Duration::from_millis(200)).await;
            stream.write_all(piece).await.unwrap();
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    });
    let upstream = upstream_with_timeout(addr, timeout);
    assert_eq!(
        send(&upstream, get()).await,
        (StatusCode::OK, Ok("xyz".into()))
    );
}
