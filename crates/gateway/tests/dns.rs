//! A group's servers from a DNS name (`[upstreams.NAME] dns = { ... }`), against herd-testkit's
//! DNS server and real axum instances on 127.0.0.1 and 127.0.0.2 at one port: both answer, one
//! removed from the zone gets no more requests, one added joins, without a reload.
#![cfg(all(feature = "config", feature = "dns"))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use herd_gateway::config::{FileConfig, Gateway};
use herd_gateway::server::ServerThread;
use herd_testkit::DnsServer;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

const NAME: &str = "app.herd.test.";

/// An axum instance on `addr` answering its name.
async fn instance(name: &'static str, addr: SocketAddr) -> Option<ServerThread> {
    let app = Router::new().route("/", get(move || async move { name }));
    ServerThread::start(name, addr, move || async { Ok(app) })
        .await
        .ok()
}

/// Two instances on one port, at 127.0.0.1 and 127.0.0.2.
async fn two_instances() -> (u16, ServerThread, ServerThread) {
    for _ in 0..20 {
        let Some(a) = instance("a", "127.0.0.1:0".parse().unwrap()).await else {
            continue;
        };
        let port = a.addr().port();
        if let Some(b) = instance("b", SocketAddr::from(([127, 0, 0, 2], port))).await {
            return (port, a, b);
        }
    }
    panic!("no port free on both 127.0.0.1 and 127.0.0.2");
}

/// Which instance answered `GET /` on a new connection, or the gateway's status when none did.
async fn answer(gateway: SocketAddr) -> String {
    let stream = tokio::net::TcpStream::connect(gateway).await.unwrap();
    let (mut sender, connection) = http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(connection);
    let req = http::Request::get("/")
        .header("host", "test.local")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = sender.send_request(req).await.unwrap();
    if res.status() != 200 {
        return format!("status {}", res.status());
    }
    let body = res.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

/// The instances that answer 40 requests once they settle to `want`, waiting up to 10 s.
async fn until_answered_by(gateway: SocketAddr, want: &[&str]) {
    let want: BTreeSet<String> = want.iter().map(|s| (*s).to_owned()).collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut seen = BTreeSet::new();
        for _ in 0..40 {
            seen.insert(answer(gateway).await);
        }
        if seen == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "answered by {seen:?}, not {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_follows_its_dns_name() {
    let dns = DnsServer::start().await.unwrap();
    let (port, _a, _b) = two_instances().await;
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    dns.set(NAME, &[ip("127.0.0.1")]);
    let text = format!(
        r#"
workers = 1
[[listen]]
address = "127.0.0.1:0"
[upstreams.app]
policy = "round_robin"
dns = {{ name = "{NAME}", port = {port}, interval = "200ms", min_interval = "100ms", nameservers = ["{ns}"] }}
"#,
        ns = dns.addr()
    );
    let config = FileConfig::parse(&text).unwrap();
    assert!(config.summary().contains("every address of app.herd.test."));
    let gateway = Gateway::start(config).await.unwrap();
    let addr = gateway.addrs()[0];

    // The gateway starts with the first answer in: no 503 for want of a server.
    assert_eq!(answer(addr).await, "a");
    until_answered_by(addr, &["a"]).await;
    // A new address joins without a reload.
    dns.set(NAME, &[ip("127.0.0.1"), ip("127.0.0.2")]);
    until_answered_by(addr, &["a", "b"]).await;
    // A vanished one leaves.
    dns.set(NAME, &[ip("127.0.0.2")]);
    until_answered_by(addr, &["b"]).await;
    // The name server goes silent: the last good set stays.
    dns.set_answering(false);
    tokio::time::sleep(Duration::from_millis(600)).await;
    until_answered_by(addr, &["b"]).await;
}

#[test]
fn a_group_needs_servers_or_a_dns_name() {
    let err = FileConfig::parse(
        "[[listen]]\naddress = \"127.0.0.1:0\"\n[upstreams.app]\ndns = { name = \"app.test.\" }",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("upstreams.app.dns.port"), "{err}");
    let err = FileConfig::parse("[[listen]]\naddress = \"127.0.0.1:0\"\n[upstreams.app]\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("upstreams.app.servers"), "{err}");
}
