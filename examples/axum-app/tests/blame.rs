//! Blame goes where the fault is: a client's bad input through the gateway gets a 4xx, never
//! counts against an instance, and no answer names an internal address.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{backends, client, client_ip, demo, unique};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Sends `head` + `body` on a fresh connection, closes the write side, and returns what came
/// back (status code and the whole text).
async fn raw(gw: &str, head: &str, body: &[u8]) -> (u16, String) {
    let addr = gw.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let _ = s.shutdown().await;
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got)).await;
    let text = String::from_utf8_lossy(&got).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_bytes_and_malformed_chunked_bodies_are_4xx_and_eject_nobody() {
    let d = demo().await;
    let gw = d.gateway.server.url();
    let before = backends(&gw).await;
    let ip = client_ip();
    let c = client(&ip);
    let mut answers: Vec<(String, u16, String)> = Vec::new();

    // 20 NUL bytes in JSON strings: PostgreSQL refuses them in text (SQLSTATE 22021). The
    // gateway allows 5 sign-ups and 5 logins a minute per client: one real sign-up, 4 with a NUL,
    // 5 logins and 11 notes with one.
    let user = unique("nul");
    let r = c
        .post(format!("{gw}/api/auth/signup"))
        .json(&serde_json::json!({ "username": user, "password": "long enough" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let nul_requests = (0..4)
        .map(|i| ("/api/auth/signup", serde_json::json!({ "username": format!("nul\u{0}{i}"), "password": "long enough" })))
        .chain((0..5).map(|i| ("/api/auth/login", serde_json::json!({ "username": format!("x\u{0}{i}"), "password": "long enough" }))))
        .chain((0..11).map(|i| ("/api/notes", serde_json::json!({ "body": format!("a\u{0}b{i}") }))));
    for (i, (path, json)) in nul_requests.enumerate() {
        let r = c
            .post(format!("{gw}{path}"))
            .json(&json)
            .send()
            .await
            .unwrap();
        answers.push((
            format!("NUL {path} {i}"),
            r.status().as_u16(),
            r.text().await.unwrap(),
        ));
    }

    // 20 malformed chunked request bodies.
    let head = format!(
        "POST /api/notes HTTP/1.1\r\nHost: gateway\r\nX-Forwarded-For: {ip}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    let bodies: [(&str, &[u8]); 4] = [
        ("bad chunk size", b"zz\r\n{\"body\":\"x\"}\r\n0\r\n\r\n"),
        ("short chunk", b"40\r\n{\"body\":\"x\"}"),
        ("missing final CRLF", b"c\r\n{\"body\":\"x\"}\r\n0\r\n"),
        (
            "no CRLF after chunk data",
            b"c\r\n{\"body\":\"x\"}XX0\r\n\r\n",
        ),
    ];
    for i in 0..20 {
        let (what, body) = bodies[i % bodies.len()];
        let (status, text) = raw(&gw, &head, body).await;
        answers.push((format!("chunked {what} {i}"), status, text));
    }

    let after = backends(&gw).await;
    let instance_ports: Vec<String> = d
        .instance_urls
        .iter()
        .map(|u| u.rsplit(':').next().unwrap().to_owned())
        .collect();
    for (what, status, text) in &answers {
        assert!((400..500).contains(status), "{what}: {status} {text}");
        assert!(
            !text.contains("127.0.0.1")
                && !instance_ports.iter().any(|p| text.contains(p.as_str())),
            "{what}: an internal address in the answer: {text}"
        );
    }
    let statuses: std::collections::BTreeMap<u16, usize> =
        answers.iter().fold(Default::default(), |mut m, (_, s, _)| {
            *m.entry(*s).or_default() += 1;
            m
        });
    eprintln!(
        "{} bad requests answered {statuses:?}; backends before {before:?}, after {after:?}",
        answers.len()
    );
    assert_eq!(answers.len(), 40);
    for ((address, healthy, failures), (_, _, failures_before)) in after.iter().zip(&before) {
        assert!(healthy, "{address} is not healthy after the bad requests");
        assert_eq!(failures, failures_before, "{address} was charged failures");
    }
}
