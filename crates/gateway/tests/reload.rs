//! Reloading the gateway's configuration without dropping connections: a connection open across
//! the reload finishes on the old configuration, new connections get the new one, a bad new
//! configuration keeps the old one (its error names the key), and a group whose settings did not
//! change is kept. Once in process ([`Gateway::reload`]) and once with SIGHUP to the real
//! `herd-gateway` binary.
#![cfg(feature = "cli")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::any;
use bytes::Bytes;
use herd_gateway::config::{FileConfig, Gateway};
use herd_gateway::server::ServerThread;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;

/// A real axum instance answering its name.
async fn instance(name: &'static str) -> ServerThread {
    let app = Router::new().fallback(any(move || async move { name }));
    ServerThread::start(name, "127.0.0.1:0".parse().unwrap(), move || async {
        Ok(app)
    })
    .await
    .unwrap()
}

/// A keep-alive HTTP/1.1 client connection.
struct Client {
    sender: http1::SendRequest<Empty<Bytes>>,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Self {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(connection);
        Self { sender }
    }

    /// The body of `GET path`.
    async fn get(&mut self, path: &str) -> String {
        self.sender.ready().await.unwrap();
        let req = http::Request::get(path)
            .header("host", "test.local")
            .body(Empty::new())
            .unwrap();
        let res = self.sender.send_request(req).await.unwrap();
        assert_eq!(res.status(), 200);
        let body = res.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8_lossy(&body).into_owned()
    }
}

/// `/` to group `target` of two groups `a` and `b`; `extra` appended.
fn config_text(a: &ServerThread, b: &ServerThread, target: &str, extra: &str) -> String {
    format!(
        r#"
workers = 1
[[listen]]
address = "127.0.0.1:0"
[upstreams.a]
servers = [{{ address = "{a}" }}]
[upstreams.b]
servers = [{{ address = "{b}" }}]
[[routes]]
prefix = "/"
upstream = "{target}"
{extra}
"#,
        a = a.addr(),
        b = b.addr()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_open_connections_on_the_old_config() {
    let a = instance("instance-a").await;
    let b = instance("instance-b").await;
    let config = FileConfig::parse(&config_text(&a, &b, "a", "")).unwrap();
    let mut gateway = Gateway::start(config).await.unwrap();
    let addr = gateway.addrs()[0];

    let mut open = Client::connect(addr).await;
    assert_eq!(open.get("/").await, "instance-a");

    let report = gateway
        .reload(FileConfig::parse(&config_text(&a, &b, "b", "")).unwrap())
        .await
        .unwrap();
    // Neither group's settings changed: both are kept with their state.
    assert_eq!(report.kept, ["a", "b"]);
    assert!(report.rebuilt.is_empty() && report.need_restart.is_empty());

    // The connection opened before the reload goes on with the old routes...
    assert_eq!(open.get("/").await, "instance-a");
    // ...and a new one gets the new routes.
    let mut fresh = Client::connect(addr).await;
    assert_eq!(fresh.get("/").await, "instance-b");
    assert_eq!(open.get("/x").await, "instance-a");

    // A bad file is refused with its key named, and the running config stays.
    let bad = config_text(&a, &b, "c", "");
    let err = FileConfig::parse(&bad).unwrap_err().to_string();
    assert!(err.contains("routes[0].upstream"), "{err}");
    let mut after = Client::connect(addr).await;
    assert_eq!(after.get("/").await, "instance-b");

    // A changed group is rebuilt, the other kept; a listener change takes a restart.
    let changed = config_text(&a, &b, "b", "").replace(
        &format!("servers = [{{ address = \"{}\" }}]", b.addr()),
        &format!(
            "servers = [{{ address = \"{}\" }}]\nkeepalive = 8",
            b.addr()
        ),
    );
    let changed = changed.replace("workers = 1", "workers = 2");
    let report = gateway
        .reload(FileConfig::parse(&changed).unwrap())
        .await
        .unwrap();
    assert_eq!(report.kept, ["a"]);
    assert_eq!(report.rebuilt, ["b"]);
    assert_eq!(report.need_restart, ["workers"]);
    assert_eq!(Client::connect(addr).await.get("/").await, "instance-b");
    assert_eq!(open.get("/").await, "instance-a");
    gateway.stop();
}

/// The binary, killed on drop; its stderr lines go to a channel.
struct Binary {
    child: Child,
    stderr: mpsc::Receiver<String>,
    addr: SocketAddr,
}

impl Binary {
    fn start(config: &std::path::Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_herd-gateway"))
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, stderr) = mpsc::channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let addr = line
            .trim()
            .strip_prefix("herd-gateway listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .unwrap();
        // Keep reading stdout so the binary never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sink = String::new();
            while stdout.read_line(&mut sink).is_ok_and(|n| n > 0) {
                sink.clear();
            }
        });
        Self {
            child,
            stderr,
            addr,
        }
    }

    fn hangup(&self) {
        let status = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// The first stderr line holding `text`, waiting up to 30 s.
    fn wait_log(&self, text: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) if line.contains(text) => return line,
                Ok(_) => {}
                Err(e) => panic!("no log line with {text:?}: {e}"),
            }
        }
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_binary_without_dropping_connections() {
    let a = instance("instance-a").await;
    let b = instance("instance-b").await;
    let dir = std::env::temp_dir().join(format!("herd-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let _cleanup = RemoveDir(dir.clone());
    let file = dir.join("gateway.toml");
    std::fs::write(&file, config_text(&a, &b, "a", "")).unwrap();

    let binary = tokio::task::block_in_place(|| Binary::start(&file));
    let mut open = Client::connect(binary.addr).await;
    assert_eq!(open.get("/").await, "instance-a");

    std::fs::write(&file, config_text(&a, &b, "b", "")).unwrap();
    binary.hangup();
    let line = tokio::task::block_in_place(|| binary.wait_log("configuration reloaded"));
    assert!(line.contains("kept"), "{line}");
    assert_eq!(
        Client::connect(binary.addr).await.get("/").await,
        "instance-b"
    );
    assert_eq!(open.get("/").await, "instance-a");

    // A bad file: the error names the key and the problem; the running config stays.
    std::fs::write(&file, config_text(&a, &b, "b", "bogus_key = 1")).unwrap();
    binary.hangup();
    let line = tokio::task::block_in_place(|| binary.wait_log("reload refused"));
    assert!(line.contains("bogus_key"), "{line}");
    std::fs::write(&file, config_text(&a, &b, "nowhere", "")).unwrap();
    binary.hangup();
    let line = tokio::task::block_in_place(|| binary.wait_log("reload refused"));
    assert!(
        line.contains("routes[0].upstream") && line.contains("nowhere"),
        "{line}"
    );
    assert_eq!(
        Client::connect(binary.addr).await.get("/").await,
        "instance-b"
    );
    assert_eq!(open.get("/").await, "instance-a");

    // The binary's own metrics, after the reloads: described, with the requests it balanced.
    let page = Client::connect(binary.addr)
        .await
        .get("/gateway/metrics")
        .await;
    let requests = page
        .lines()
        .filter(|l| l.starts_with("herd_lb_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>();
    assert!(requests >= 5.0, "{requests} requests in:\n{page}");
    assert!(
        page.contains("# HELP herd_lb_requests_total "),
        "no HELP line:\n{page}"
    );
}

/// The `/lb-health` page's view of `dead`: whether it is ejected now.
async fn ejected(addr: SocketAddr, dead: &str) -> bool {
    let mut client = Client::connect(addr).await;
    client.sender.ready().await.unwrap();
    let req = http::Request::get("/lb-health")
        .header("host", "test.local")
        .body(Empty::new())
        .unwrap();
    let res = client.sender.send_request(req).await.unwrap();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let page: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let backend = page["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["address"] == dead)
        .unwrap_or_else(|| panic!("{dead} not on {page}"))
        .clone();
    !backend["ejected_for_ms"].is_null()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_group_keeps_its_endpoints_state_across_a_reload() {
    let live = instance("instance-live").await;
    // A port nobody listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let text = |extra_route: &str, keepalive: u32| {
        format!(
            r#"
workers = 1
[[listen]]
address = "127.0.0.1:0"
[upstreams.a]
policy = "round_robin"
servers = [{{ address = "{live}" }}, {{ address = "{dead}" }}]
max_fails = 1
fail_timeout = "60s"
keepalive = {keepalive}
[[routes]]
prefix = "/"
upstream = "a"
{extra_route}
"#,
            live = live.addr()
        )
    };
    let mut gateway = Gateway::start(FileConfig::parse(&text("", 32)).unwrap())
        .await
        .unwrap();
    let addr = gateway.addrs()[0];
    let mut client = Client::connect(addr).await;
    // The dead server's connect failure is retried on the live one, and takes it out.
    let mut tries = 0;
    while !ejected(addr, &dead).await {
        assert_eq!(client.get("/").await, "instance-live");
        tries += 1;
        assert!(tries < 20, "{dead} never ejected");
    }

    // A reload that changes the routes only keeps the group, and its ejection.
    let more = "[[routes]]\nprefix = \"/other\"\nupstream = \"a\"";
    let report = gateway
        .reload(FileConfig::parse(&text(more, 32)).unwrap())
        .await
        .unwrap();
    assert_eq!(report.kept, ["a"]);
    assert!(ejected(addr, &dead).await);

    // A change to the group's settings builds it anew: nothing is ejected then.
    let report = gateway
        .reload(FileConfig::parse(&text(more, 8)).unwrap())
        .await
        .unwrap();
    assert_eq!(report.rebuilt, ["a"]);
    assert!(!ejected(addr, &dead).await);
    gateway.stop();
}
