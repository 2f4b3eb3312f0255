//! The bad-input suite: 100 hostile requests through a gateway in front of the demo's instances,
//! each from a client address of its own. None may get a 5xx, none may see an internal address or
//! an error's internals, no instance may be charged a failure or ejected, every instance is
//! healthy afterwards, and another client is served all along.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use axum_app::gateway::{self, GatewayConfig};
use common::{backends, client, client_ip, demo};
use herd_gateway::server::ServerLimits;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};

/// What a case may be answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    /// A 4xx, or the connection closed without an answer.
    Refused,
    /// Anything but a 5xx (a legal if odd request).
    NotServerError,
}

/// How a case's bytes are sent.
#[derive(Debug, Clone, Copy)]
enum Send {
    /// All at once (hyper drops a request whose client half-closes, so the write side stays
    /// open; requests say `Connection: close`).
    Whole,
    /// All at once, then the write side is closed (a client that goes away mid-request).
    ThenClose,
    /// All at once, the write side left open (the server must end it).
    KeepOpen,
    /// One byte every 100 ms for at most 3 s (a slowloris).
    Trickle,
}

struct Case {
    name: String,
    bytes: Vec<u8>,
    send: Send,
    want: Want,
}

fn case(name: &str, bytes: impl Into<Vec<u8>>, want: Want) -> Case {
    Case {
        name: name.to_owned(),
        bytes: bytes.into(),
        send: Send::Whole,
        want,
    }
}

/// A request head for `method target` with `extra` header lines, as client `ip`.
fn head(method: &str, target: &str, ip: &str, extra: &str) -> String {
    format!(
        "{method} {target} HTTP/1.1\r\nHost: gateway\r\nX-Forwarded-For: {ip}\r\nConnection: close\r\n{extra}\r\n"
    )
}

/// A JSON POST with an exact body.
fn post_json(path: &str, ip: &str, body: &[u8]) -> Vec<u8> {
    let mut bytes = head(
        "POST",
        path,
        ip,
        &format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ),
    )
    .into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// A chunked POST with a raw body.
fn post_chunked(path: &str, ip: &str, body: &[u8]) -> Vec<u8> {
    let mut bytes = head(
        "POST",
        path,
        ip,
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n",
    )
    .into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

fn cases() -> Vec<Case> {
    use Want::{NotServerError as Any, Refused};
    let ip = client_ip;
    let mut c = Vec::new();
    let login = "/api/auth/login";
    let signup = "/api/auth/signup";

    // --- Smuggling and framing of the request head. ---
    for (name, headers, body) in [
        (
            "CL and TE",
            "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
            "0\r\n\r\n",
        ),
        (
            "two different CL",
            "Content-Length: 5\r\nContent-Length: 6\r\n",
            "{}{}{}",
        ),
        ("CL list", "Content-Length: 5, 6\r\n", "{}{}{}"),
        ("CL plus sign", "Content-Length: +2\r\n", "{}"),
        ("CL negative", "Content-Length: -1\r\n", "{}"),
        ("CL hex", "Content-Length: 0x2\r\n", "{}"),
        (
            "CL overflow",
            "Content-Length: 99999999999999999999999\r\n",
            "{}",
        ),
        (
            "TE not chunked last",
            "Transfer-Encoding: chunked, identity\r\n",
            "0\r\n\r\n",
        ),
        ("TE unknown", "Transfer-Encoding: xchunked\r\n", "0\r\n\r\n"),
        (
            "TE twice",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
            "0\r\n\r\n",
        ),
        (
            "space before colon",
            "Transfer-Encoding : chunked\r\n",
            "0\r\n\r\n",
        ),
        ("obs-fold", "X-Folded: a\r\n b\r\n", ""),
        ("header without colon", "X-No-Colon\r\n", ""),
        ("space in header name", "X Bad: b\r\n", ""),
        ("NUL in header value", "X-Nul: a\0b\r\n", ""),
        ("CR in header value", "X-Cr: a\rb\r\n", ""),
    ] {
        let mut bytes = head("POST", login, &ip(), headers).into_bytes();
        bytes.extend_from_slice(body.as_bytes());
        c.push(case(name, bytes, Refused));
    }
    c.push(case(
        "TE in HTTP/1.0",
        format!(
            "POST {login} HTTP/1.0\r\nHost: g\r\nX-Forwarded-For: {}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            ip()
        ),
        Refused,
    ));
    for (name, line) in [
        ("double space in request line", "GET  /api/whoami HTTP/1.1"),
        ("bad method character", "G(T /api/whoami HTTP/1.1"),
        ("HTTP/1.2", "GET /api/whoami HTTP/1.2"),
        ("HTTP/2.0 over HTTP/1", "GET /api/whoami HTTP/2.0"),
        ("HTTP/0.9", "GET /api/whoami"),
        ("no version", "GET /api/whoami HTTP/"),
        (
            "method of 2000 bytes",
            &format!("{} / HTTP/1.1", "A".repeat(2000)),
        ),
        ("raw non-ASCII in the target", "GET /api/\u{e9} HTTP/1.1"),
    ] {
        c.push(case(
            name,
            format!("{line}\r\nHost: g\r\nX-Forwarded-For: {}\r\n\r\n", ip()),
            Refused,
        ));
    }
    c.push(case(
        "TLS hello to a plain port",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec(),
        Refused,
    ));
    c.push(case("empty lines only", b"\r\n\r\n\r\n".to_vec(), Refused));
    c.push(case(
        "binary garbage",
        (0..=255u8).collect::<Vec<u8>>(),
        Refused,
    ));
    c.push(case(
        "target of 70 KiB",
        head(
            "GET",
            &format!("/api/whoami?q={}", "a".repeat(70 * 1024)),
            &ip(),
            "",
        ),
        Refused,
    ));
    c.push(case(
        "header of 70 KiB",
        head(
            "GET",
            "/api/whoami",
            &ip(),
            &format!("X-Big: {}\r\n", "a".repeat(70 * 1024)),
        ),
        Refused,
    ));
    c.push(case(
        "300 headers",
        head(
            "GET",
            "/api/whoami",
            &ip(),
            &(0..300)
                .map(|i| format!("X-H{i}: v\r\n"))
                .collect::<String>(),
        ),
        Refused,
    ));

    // --- Host and forwarding headers. ---
    c.push(case(
        "no Host in HTTP/1.1",
        format!(
            "GET /api/whoami HTTP/1.1\r\nX-Forwarded-For: {}\r\n\r\n",
            ip()
        ),
        Refused,
    ));
    c.push(case(
        "two Host headers",
        head("GET", "/api/whoami", &ip(), "Host: other\r\n"),
        Refused,
    ));
    for (name, host) in [
        ("Host with userinfo", "user@gateway"),
        ("Host with a space", "gate way"),
        ("Host with a path", "gateway/x"),
        ("empty Host", ""),
    ] {
        c.push(case(
            name,
            format!(
                "GET /api/whoami HTTP/1.1\r\nHost: {host}\r\nX-Forwarded-For: {}\r\n\r\n",
                ip()
            ),
            Refused,
        ));
    }
    for (name, target, extra) in [
        ("absolute-form http", "http://evil.example/api/whoami", ""),
        (
            "absolute-form https over plain TCP",
            "https://gateway/api/whoami",
            "",
        ),
        (
            "Forwarded header",
            "/api/whoami",
            "Forwarded: for=1.2.3.4;proto=https\r\n",
        ),
        (
            "Proxy-Authorization",
            "/api/whoami",
            "Proxy-Authorization: Basic YTpi\r\n",
        ),
        (
            "X-Forwarded-Host spoof",
            "/api/whoami",
            "X-Forwarded-Host: evil.example\r\n",
        ),
        (
            "X-Forwarded-Proto spoof",
            "/api/whoami",
            "X-Forwarded-Proto: https\r\n",
        ),
        ("X-Real-IP spoof", "/api/whoami", "X-Real-IP: 1.2.3.4\r\n"),
        (
            "1000 X-Forwarded-For entries",
            "/api/whoami",
            &format!("X-Forwarded-For: {}\r\n", vec!["1.2.3.4"; 1000].join(", ")),
        ),
        (
            "garbage X-Forwarded-For",
            "/api/whoami",
            "X-Forwarded-For: <script>, ::::, 999.1.1.1\r\n",
        ),
        ("OPTIONS", "/api/whoami", ""),
        ("HEAD", "/api/whoami", ""),
        (
            "query of 40 KiB",
            &format!("/api/whoami?q={}", "b".repeat(40 * 1024)),
            "",
        ),
    ] {
        let method = match name {
            "OPTIONS" => "OPTIONS",
            "HEAD" => "HEAD",
            _ => "GET",
        };
        c.push(case(name, head(method, target, &ip(), extra), Any));
    }
    c.push(case(
        "OPTIONS *",
        format!(
            "OPTIONS * HTTP/1.1\r\nHost: g\r\nX-Forwarded-For: {}\r\n\r\n",
            ip()
        ),
        Any,
    ));
    c.push(case(
        "CONNECT",
        head("CONNECT", "evil.example:443", &ip(), ""),
        Refused,
    ));
    c.push(case(
        "TRACE",
        head("TRACE", "/api/whoami", &ip(), ""),
        Refused,
    ));

    // --- Chunked bodies. ---
    for (name, body) in [
        (
            "chunk size overflow",
            &b"ffffffffffffffffffffff\r\nx\r\n0\r\n\r\n"[..],
        ),
        ("chunk size negative", b"-5\r\nhello\r\n0\r\n\r\n"),
        ("chunk size with junk", b"5x\r\nhello\r\n0\r\n\r\n"),
        ("chunk size with a space", b"5 \r\nhello\r\n0\r\n\r\n"),
        ("no CRLF after chunk data", b"2\r\n{}XX0\r\n\r\n"),
        ("short chunk then close", b"40\r\n{\"username\""),
        ("no last chunk", b"2\r\n{}\r\n"),
        ("missing final CRLF", b"2\r\n{}\r\n0\r\n"),
        (
            "trailer with Set-Cookie",
            b"2\r\n{}\r\n0\r\nSet-Cookie: a=b\r\n\r\n",
        ),
        (
            "trailer with Content-Length",
            b"2\r\n{}\r\n0\r\nContent-Length: 5\r\n\r\n",
        ),
    ] {
        let mut case = case(name, post_chunked(login, &ip(), body), Refused);
        if matches!(
            name,
            "short chunk then close" | "no last chunk" | "missing final CRLF"
        ) {
            case.send = Send::ThenClose;
        }
        c.push(case);
    }
    let mut long_ext = b"2;".to_vec();
    long_ext.extend(std::iter::repeat_n(b'e', 20 * 1024));
    long_ext.extend_from_slice(b"\r\n{}\r\n0\r\n\r\n");
    c.push(case(
        "chunk extension of 20 KiB",
        post_chunked(login, &ip(), &long_ext),
        Refused,
    ));
    let mut tiny = Vec::new();
    for _ in 0..5000 {
        tiny.extend_from_slice(b"1\r\n \r\n");
    }
    tiny.extend_from_slice(b"0\r\n\r\n");
    c.push(case(
        "5000 one-byte chunks",
        post_chunked(login, &ip(), &tiny),
        Refused,
    ));

    // --- JSON and bodies (answered by an instance). ---
    for (name, body) in [
        ("truncated JSON", &b"{"[..]),
        ("a JSON array", b"[1,2]"),
        ("wrong JSON types", b"{\"username\":1,\"password\":[]}"),
        ("empty body", b""),
        (
            "invalid UTF-8",
            b"{\"username\":\"\xff\xfe\",\"password\":\"aaaaaaaa\"}",
        ),
        (
            "lone surrogate",
            b"{\"username\":\"\\ud800\",\"password\":\"aaaaaaaa\"}",
        ),
        (
            "NUL in a string",
            b"{\"username\":\"a\\u0000b\",\"password\":\"aaaaaaaa\"}",
        ),
        ("huge number", b"{\"username\":1e999999,\"password\":\"x\"}"),
    ] {
        c.push(case(name, post_json(login, &ip(), body), Refused));
    }
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    c.push(case(
        "JSON nested 10000 deep",
        post_json(login, &ip(), deep.as_bytes()),
        Refused,
    ));
    c.push(case(
        "password of 3 MiB",
        post_json(
            signup,
            &ip(),
            format!(
                "{{\"username\":\"big\",\"password\":\"{}\"}}",
                "p".repeat(3 << 20)
            )
            .as_bytes(),
        ),
        Refused,
    ));
    c.push(case(
        "password of 2000 bytes",
        post_json(
            signup,
            &ip(),
            format!(
                "{{\"username\":\"long-pw\",\"password\":\"{}\"}}",
                "p".repeat(2000)
            )
            .as_bytes(),
        ),
        Refused,
    ));
    c.push(case(
        "username of 10 KiB",
        post_json(
            signup,
            &ip(),
            format!(
                "{{\"username\":\"{}\",\"password\":\"aaaaaaaa\"}}",
                "u".repeat(10240)
            )
            .as_bytes(),
        ),
        Refused,
    ));
    c.push(case(
        "login as nobody",
        post_json(
            login,
            &ip(),
            b"{\"username\":\"nobody-at-all\",\"password\":\"whatever1\"}",
        ),
        Refused,
    ));
    for (name, ct) in [("text/plain body", "text/plain"), ("no content type", "")] {
        let extra = if ct.is_empty() {
            "Content-Length: 2\r\n".to_owned()
        } else {
            format!("Content-Type: {ct}\r\nContent-Length: 2\r\n")
        };
        let mut bytes = head("POST", login, &ip(), &extra).into_bytes();
        bytes.extend_from_slice(b"{}");
        c.push(case(name, bytes, Refused));
    }
    let mut short = head(
        "POST",
        login,
        &ip(),
        "Content-Type: application/json\r\nContent-Length: 100\r\n",
    )
    .into_bytes();
    short.extend_from_slice(b"{\"username\"");
    c.push(Case {
        send: Send::ThenClose,
        ..case("body shorter than its length, then close", short, Refused)
    });
    let mut huge_cl = head(
        "POST",
        login,
        &ip(),
        "Content-Type: application/json\r\nContent-Length: 3000000000\r\n",
    )
    .into_bytes();
    huge_cl.extend_from_slice(b"{}");
    c.push(Case {
        send: Send::ThenClose,
        ..case("Content-Length of 3 GB, then close", huge_cl, Refused)
    });
    c.push(Case {
        send: Send::ThenClose,
        ..case(
            "Expect 100-continue and no body",
            head(
                "POST",
                login,
                &ip(),
                "Content-Type: application/json\r\nContent-Length: 10\r\nExpect: 100-continue\r\n",
            ),
            Refused,
        )
    });
    let mut odd_expect = head(
        "POST",
        login,
        &ip(),
        "Content-Type: application/json\r\nContent-Length: 2\r\nExpect: 200-ok\r\n",
    )
    .into_bytes();
    odd_expect.extend_from_slice(b"{}");
    c.push(case("Expect something else", odd_expect, Refused));

    // --- Paths and methods. ---
    for (name, method, target) in [
        ("id not a number", "GET", "/api/notes/abc"),
        ("id overflow", "GET", "/api/notes/99999999999999999999999"),
        ("negative id, logged out", "GET", "/api/notes/-1"),
        ("dot segments", "GET", "/../../etc/passwd"),
        ("encoded dot segments", "GET", "/%2e%2e/%2e%2e/etc/passwd"),
        ("encoded NUL", "GET", "/api/%00"),
        ("unknown path", "GET", "/wp-login.php"),
        ("PUT on a GET route", "PUT", "/api/whoami"),
        ("DELETE on the list", "DELETE", "/api/notes"),
        ("PATCH on the page", "PATCH", "/"),
        ("admin page", "GET", "/admin"),
        ("gateway health page", "GET", "/lb-health"),
        ("metrics", "GET", "/metrics"),
        ("deep health", "GET", "/health"),
        ("readiness", "GET", "/health/ready"),
        ("replication health", "GET", "/health/replication"),
        ("stats with a bad method", "POST", "/api/stats"),
    ] {
        c.push(case(
            name,
            head(method, target, &ip(), "Content-Length: 0\r\n"),
            Refused,
        ));
    }

    // --- Cookies and credentials. ---
    for (name, cookie) in [
        (
            "forged session cookie",
            "Cookie: sid=forged.signature\r\n".to_owned(),
        ),
        (
            "session cookie of 8 KiB",
            format!("Cookie: sid={}\r\n", "A".repeat(8192)),
        ),
        (
            "1000 session cookies",
            format!("Cookie: {}\r\n", vec!["sid=x.y"; 1000].join("; ")),
        ),
        (
            "__Host- cookie twice",
            "Cookie: __Host-sid=a.b; __Host-sid=c.d\r\n".to_owned(),
        ),
        (
            "two Cookie headers",
            "Cookie: sid=a.b\r\nCookie: sid=c.d\r\n".to_owned(),
        ),
        ("empty cookie pairs", "Cookie: ;;;;=;=x;\r\n".to_owned()),
        (
            "bearer garbage",
            "Authorization: Bearer ....\r\n".to_owned(),
        ),
    ] {
        // Answered 200 as a logged-out visitor: the cookie is ignored, not an error.
        c.push(case(name, head("GET", "/api/whoami", &ip(), &cookie), Any));
        c.push(case(
            &format!("{name} on a logged-in route"),
            head("GET", "/api/notes", &ip(), &cookie),
            Refused,
        ));
    }

    // --- Slow and idle clients (the gateway's header timeout is 1 s here). ---
    c.push(Case {
        name: "slowloris head".into(),
        bytes: head(
            "GET",
            "/api/whoami",
            &ip(),
            "X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
        )
        .into_bytes(),
        send: Send::Trickle,
        want: Refused,
    });
    c.push(Case {
        name: "connection that sends nothing".into(),
        bytes: Vec::new(),
        send: Send::KeepOpen,
        want: Refused,
    });
    c.push(Case {
        name: "partial HTTP/2 preface".into(),
        bytes: b"PRI * HTTP/2.0\r\n".to_vec(),
        send: Send::KeepOpen,
        want: Refused,
    });
    c.push(Case {
        name: "head without its last CRLF".into(),
        bytes: format!(
            "GET /api/whoami HTTP/1.1\r\nHost: g\r\nX-Forwarded-For: {}\r\n",
            ip()
        )
        .into_bytes(),
        send: Send::KeepOpen,
        want: Refused,
    });
    // Bodies that stall (the gateway's client body timeout is 1 s here): 408, not a hang.
    for (name, headers, sent) in [
        ("declared body never sent", "Content-Length: 100\r\n", ""),
        (
            "Expect 100-continue, body never sent",
            "Content-Length: 10\r\nExpect: 100-continue\r\n",
            "",
        ),
        (
            "3 GB declared, 2 bytes sent",
            "Content-Length: 3000000000\r\n",
            "{}",
        ),
        (
            "chunked body that stops",
            "Transfer-Encoding: chunked\r\n",
            "5\r\n{\"a\":",
        ),
    ] {
        let mut bytes = head(
            "POST",
            login,
            &ip(),
            &format!("Content-Type: application/json\r\n{headers}"),
        )
        .into_bytes();
        bytes.extend_from_slice(sent.as_bytes());
        c.push(Case {
            name: name.to_owned(),
            bytes,
            send: Send::KeepOpen,
            want: Refused,
        });
    }
    let pipelined: Vec<u8> = (0..50)
        .flat_map(|_| head("GET", "/api/whoami", &ip(), "").into_bytes())
        .collect();
    c.push(case("50 pipelined requests", pipelined, Any));
    c
}

/// Sends a case from 127.0.0.2 (not an admin network here) and returns what came back.
async fn send(gw: std::net::SocketAddr, case: &Case) -> (Option<u16>, String, Duration) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut stream: TcpStream = socket.connect(gw).await.unwrap();
    let started = Instant::now();
    match case.send {
        Send::ThenClose => {
            let _ = stream.write_all(&case.bytes).await;
            let _ = stream.shutdown().await;
        }
        Send::Whole | Send::KeepOpen => {
            let _ = stream.write_all(&case.bytes).await;
        }
        Send::Trickle => {
            for b in &case.bytes {
                if stream.write_all(&[*b]).await.is_err()
                    || started.elapsed() > Duration::from_secs(3)
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(15), stream.read_to_end(&mut got)).await;
    assert!(
        read.is_ok(),
        "{}: the gateway kept the connection open for 15 s",
        case.name
    );
    let text = String::from_utf8_lossy(&got).into_owned();
    // The final answer: after any interim 100 Continue.
    let all = statuses(&text);
    let status = all
        .iter()
        .copied()
        .find(|s| *s >= 200)
        .or(all.first().copied());
    (status, text, started.elapsed())
}

/// Every status line in a (possibly pipelined) answer.
fn statuses(text: &str) -> Vec<u16> {
    text.match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| text.get(i + 9..i + 12).and_then(|c| c.parse().ok()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_hostile_requests_get_4xx_leak_nothing_and_eject_nobody() {
    let d = demo().await;
    // A gateway of its own in front of the demo's instances: operators' pages only for
    // 127.0.0.1 (the cases come from 127.0.0.2), X-Forwarded-For believed from loopback (each
    // case is its own client for the rate limits), 1 s header and body timeouts for the slow cases.
    let gw = gateway::spawn(
        GatewayConfig::new(d.instance_urls.clone())
            .trusted_proxies(vec!["127.0.0.0/8".into()])
            .admin_networks(vec!["127.0.0.1/32".into()])
            .server_limits(ServerLimits {
                header_read_timeout: Duration::from_secs(1),
                ..ServerLimits::default()
            })
            .client_body_timeout(Duration::from_secs(1)),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let gw_url = gw.server.url();
    let gw_addr: std::net::SocketAddr = gw_url.trim_start_matches("http://").parse().unwrap();
    let before = backends(&gw_url).await;

    // Another client, served all along.
    let stop = Arc::new(AtomicBool::new(false));
    let (served, missed) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let bystander = {
        let (stop, served, missed, url) =
            (stop.clone(), served.clone(), missed.clone(), gw_url.clone());
        tokio::spawn(async move {
            let c = client(&client_ip());
            while !stop.load(Ordering::Relaxed) {
                match c.get(format!("{url}/api/whoami")).send().await {
                    Ok(r) if r.status() == 200 => served.fetch_add(1, Ordering::Relaxed),
                    _ => missed.fetch_add(1, Ordering::Relaxed),
                };
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    let cases = cases();
    assert!(cases.len() >= 90, "{} cases", cases.len());
    let ports: Vec<String> = d
        .instance_urls
        .iter()
        .map(|u| format!(":{}", u.rsplit(':').next().unwrap()))
        .collect();
    let leaks = [
        "127.0.0.1",
        "sqlx",
        "SQLSTATE",
        "error returned from database",
        "panicked",
        "hyper::",
        "Error {",
    ];
    let mut problems = Vec::new();
    let mut tally = std::collections::BTreeMap::<String, u32>::new();
    // Eight at a time: the slow cases wait on timeouts.
    for chunk in cases.chunks(8) {
        let answers = futures_util::future::join_all(chunk.iter().map(|c| send(gw_addr, c))).await;
        for (case, (status, text, took)) in chunk.iter().zip(answers) {
            *tally
                .entry(status.map_or("closed".into(), |s| s.to_string()))
                .or_default() += 1;
            if std::env::var_os("HOSTILE_VERBOSE").is_some() {
                let shown: String = text.chars().take(100).collect();
                eprintln!("{:>45} -> {status:?} in {took:?}: {shown:?}", case.name);
            }
            for s in statuses(&text) {
                if s >= 500 {
                    problems.push(format!(
                        "{}: {s} ({took:?}): {}",
                        case.name,
                        text.chars().take(300).collect::<String>()
                    ));
                }
            }
            if case.want == Want::Refused && status.is_some_and(|s| !(400..500).contains(&s)) {
                problems.push(format!("{}: wanted a 4xx, got {status:?}", case.name));
            }
            if let Some(leak) = leaks
                .iter()
                .chain(ports.iter().map(String::as_str).collect::<Vec<_>>().iter())
                .find(|l| text.contains(**l))
            {
                problems.push(format!(
                    "{}: the answer holds {leak:?}: {}",
                    case.name,
                    text.chars().take(300).collect::<String>()
                ));
            }
            if matches!(case.send, Send::Trickle | Send::KeepOpen) && took > Duration::from_secs(5)
            {
                problems.push(format!("{}: held for {took:?}", case.name));
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    bystander.await.unwrap();
    let after = backends(&gw_url).await;
    eprintln!(
        "{} hostile cases: answers {tally:?}; bystander served {}, missed {}; backends {after:?}",
        cases.len(),
        served.load(Ordering::Relaxed),
        missed.load(Ordering::Relaxed)
    );
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
    assert_eq!(
        missed.load(Ordering::Relaxed),
        0,
        "the bystander was not served"
    );
    assert!(served.load(Ordering::Relaxed) > 10);
    for ((address, healthy, failures), (_, _, failures_before)) in after.iter().zip(&before) {
        assert!(healthy, "{address} is not healthy afterwards");
        assert_eq!(failures, failures_before, "{address} was charged failures");
    }
    for url in &d.instance_urls {
        assert_eq!(
            reqwest::get(format!("{url}/health/ready"))
                .await
                .unwrap()
                .status(),
            200,
            "{url}"
        );
    }
}
