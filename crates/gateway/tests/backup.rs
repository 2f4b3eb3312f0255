//! nginx's `server ... backup` from a TOML file, against real axum instances: the backup gets no
//! request while the primary is up, takes every request once the primary is killed, and loses
//! them again when the primary comes back on its address (TCP health checks); `backup` with
//! hashing is refused with the key named.
#![cfg(feature = "config")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use herd_gateway::config::{FileConfig, Gateway};
use herd_gateway::server::ServerThread;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;

/// A real axum instance answering its name on `/`, counting those requests.
struct Instance {
    server: ServerThread,
    hits: Arc<AtomicUsize>,
}

impl Instance {
    async fn start(name: &'static str, addr: SocketAddr) -> Self {
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&hits);
        let app = Router::new().route(
            "/",
            get(move || {
                counter.fetch_add(1, Ordering::SeqCst);
                async move { name }
            }),
        );
        let server = ServerThread::start(name, addr, move || async { Ok(app) })
            .await
            .unwrap();
        Self { server, hits }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// `GET /` through the gateway on a new connection: status and body.
async fn get_root(gateway: SocketAddr) -> (http::StatusCode, String) {
    get_path(gateway, "/").await
}

/// `GET path` from the gateway on a new connection: status and body.
async fn get_path(gateway: SocketAddr, path: &str) -> (http::StatusCode, String) {
    let stream = tokio::net::TcpStream::connect(gateway).await.unwrap();
    let (mut sender, connection) = http1::handshake(TokioIo::new(stream)).await.unwrap();
    let connection = tokio::spawn(connection);
    let req = http::Request::get(path)
        .header("host", "test.local")
        .body(Full::<Bytes>::default())
        .unwrap();
    let res = sender.send_request(req).await.unwrap();
    let status = res.status();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    drop(sender);
    let _ = connection.await;
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Sends requests until one is answered by `name` (at most 10 s), returning how many it took.
async fn until_answered_by(gateway: SocketAddr, name: &str) -> usize {
    for attempt in 1..=400 {
        let (status, body) = get_root(gateway).await;
        if status == 200 && body == name {
            return attempt;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("no answer from {name} within 10 s");
}

async fn answers(gateway: SocketAddr, n: usize) -> Vec<(u16, String)> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let (status, body) = get_root(gateway).await;
        out.push((status.as_u16(), body));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backup_serves_only_while_the_primary_is_down() {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut primary = Instance::start("primary", any).await;
    let backup = Instance::start("backup", any).await;
    let primary_addr = primary.server.addr();
    let text = format!(
        r#"
workers = 1
[[listen]]
address = "127.0.0.1:0"

[upstreams.app]
servers = [{{ address = "{primary_addr}" }}, {{ address = "{backup}", backup = true }}]
max_fails = 1
fail_timeout = "1s"
health_check = {{ interval = "50ms", timeout = "1s", rise = 1, fall = 1 }}

[[routes]]
prefix = "/"
upstream = "app"
"#,
        backup = backup.server.addr(),
    );
    let config = FileConfig::parse(&text).unwrap();
    let gateway = Gateway::start(config).await.unwrap();
    let addr = gateway.addrs()[0];

    let all = |name: &str| vec![(200, name.to_string()); 20];
    assert_eq!(answers(addr, 20).await, all("primary"));
    assert_eq!(primary.hits(), 20);
    assert_eq!(
        backup.hits(),
        0,
        "no request to the backup while the primary is up"
    );

    // The operators' page says which server is the backup.
    let (status, body) = get_path(addr, "/lb-health").await;
    assert_eq!(status, 200, "{body}");
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    let flags: Vec<(String, bool)> = health["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            let address = b["address"].as_str().unwrap().to_owned();
            (address, b["backup"].as_bool().unwrap())
        })
        .collect();
    assert_eq!(
        flags,
        [
            (primary_addr.to_string(), false),
            (backup.server.addr().to_string(), true)
        ]
    );

    // The primary dies: its failures and the health checks take it out; the backup answers.
    primary.server.kill();
    until_answered_by(addr, "backup").await;
    assert_eq!(answers(addr, 20).await, all("backup"));

    // The primary comes back on its address: the checks return it and it takes every request.
    let primary = Instance::start("primary", primary_addr).await;
    until_answered_by(addr, "primary").await;
    let backup_hits = backup.hits();
    assert_eq!(answers(addr, 20).await, all("primary"));
    assert_eq!(backup.hits(), backup_hits, "the backup is idle again");
    drop(gateway);
    drop(primary);
}

#[test]
fn backup_with_hashing_is_refused_with_the_key_named() {
    for policy in ["hash\"\nhash_key = \"client_ip", "ip_hash"] {
        let text = format!(
            "[[listen]]\naddress = \"127.0.0.1:0\"\n[upstreams.app]\nservers = [{{ address = \"127.0.0.1:8\" }}, {{ address = \"127.0.0.1:9\", backup = true }}]\npolicy = \"{policy}\"\n[[routes]]\nprefix = \"/\"\nupstream = \"app\""
        );
        let err = FileConfig::parse(&text).unwrap_err().to_string();
        assert!(err.contains("upstreams.app.servers[1].backup"), "{err}");
        assert!(err.contains("ip_hash"), "{err}");
    }
    // With any other policy a backup is accepted.
    let text = "[[listen]]\naddress = \"127.0.0.1:0\"\n[upstreams.app]\nservers = [{ address = \"127.0.0.1:8\" }, { address = \"127.0.0.1:9\", backup = true }]\npolicy = \"least_conn\"\n[[routes]]\nprefix = \"/\"\nupstream = \"app\"";
    FileConfig::parse(text).unwrap();
}
