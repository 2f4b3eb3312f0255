//! Run with: `cargo run --release -p herd-benches --bin ws-echo`
//!
//! WebSocket echo round trips through herd's gateway (herd-gateway's `spawn`, 2 runtimes) and
//! through nginx (2 workers, `proxy_http_version 1.1` with `Upgrade`/`Connection` passed on, as
//! nginx's WebSocket guide configures it), to the same axum echo backend (axum's `ws`).
//!
//! Each proxy in turn gets `--connections` WebSockets (64) opened through it; each sends a
//! `--size`-byte text message (32), waits for its echo, and sends the next, for `--duration`
//! (10s). The program prints messages/s (round trips), p50 and p99 round-trip time, the time to
//! open all the WebSockets, and the proxy's CPU time per round trip, then the ratios. The client
//! runs in this process (tokio-tungstenite), on the same cores as the proxies and the backend,
//! so throughput follows the CPU time per round trip.
//!
//! Needs `nginx` (`apt-get install -y nginx`). Options: `--duration 10s`, `--connections 64`,
//! `--size 32`, `--only herd|nginx`.
#![allow(clippy::print_stdout)]

use std::net::SocketAddr;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::routing::get;
use futures_util::{SinkExt as _, StreamExt as _};
use herd_benches::proc::{Cpu, Proxy, clock_ticks, free_port, is_root, wait_until_serving};
use herd_gateway::GatewayConfig;
use herd_gateway::server::ServerThread;
use tokio_tungstenite::tungstenite::Message;

/// The allocator the demo's binary uses (see examples/axum-app/src/main.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// What one load run measured.
#[derive(Debug, Clone, Copy)]
struct Load {
    round_trips: u64,
    per_sec: f64,
    p50_us: f64,
    p99_us: f64,
    open_ms: f64,
    /// The proxy's CPU time (user + system) per round trip, in microseconds.
    cpu_us_per_round_trip: f64,
}

/// The echo backend: `/ws` sends back every message it gets.
async fn backend() -> Result<ServerThread, String> {
    ServerThread::start(
        "instance-ws",
        SocketAddr::from(([127, 0, 0, 1], 0)),
        || async {
            Ok(Router::new()
                .route("/health/ready", get(|| async { "ok" }))
                .route(
                    "/ws",
                    get(|ws: WebSocketUpgrade| async move { ws.on_upgrade(echo) }),
                ))
        },
    )
    .await
}

async fn echo(mut socket: WebSocket) {
    while let Some(Ok(msg)) = socket.recv().await {
        let reply = match msg {
            WsMessage::Text(text) => WsMessage::Text(text),
            WsMessage::Binary(data) => WsMessage::Binary(data),
            _ => continue,
        };
        if socket.send(reply).await.is_err() {
            return;
        }
    }
}

/// nginx as its WebSocket proxying guide has it, with herd's forwarding headers.
fn start_nginx(port: u16, backend: SocketAddr) -> Result<Proxy, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    let p = dir.path().display().to_string();
    let user = if is_root() { "user root;\n" } else { "" };
    let conf = format!(
        "{user}worker_processes 2;
pid {p}/nginx.pid;
error_log {p}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {p}/body;
    proxy_temp_path {p}/proxy;
    fastcgi_temp_path {p}/fastcgi;
    uwsgi_temp_path {p}/uwsgi;
    scgi_temp_path {p}/scgi;
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        '' close;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://{backend};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $host;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_connect_timeout 1s;
            proxy_read_timeout 60s;
        }}
    }}
}}
"
    );
    let conf_path = dir.path().join("nginx.conf");
    std::fs::write(&conf_path, conf).map_err(|e| format!("write nginx.conf: {e}"))?;
    let child = Command::new("nginx")
        .arg("-p")
        .arg(dir.path())
        .arg("-e")
        .arg(dir.path().join("error.log"))
        .arg("-c")
        .arg(&conf_path)
        .args(["-g", "daemon off;"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("start nginx (apt-get install -y nginx): {e}"))?;
    Ok(Proxy { child, dir })
}

/// herd's gateway as the demo runs it, in front of `backend`, idle WebSockets kept 60 s as
/// nginx's `proxy_read_timeout`.
fn herd_config(backend: SocketAddr) -> Result<GatewayConfig, String> {
    toml::from_str(&format!(
        "workers = 2
[upstream]
policy = \"least_outstanding\"
endpoints = [{{ address = \"{backend}\" }}]
connect_timeout = \"1s\"
upgrade_idle_timeout = \"60s\"
"
    ))
    .map_err(|e| format!("herd's gateway configuration: {e}"))
}

/// Opens `connections` WebSockets to `ws://addr/ws` and echoes `size`-byte messages on each,
/// one at a time, for `duration`.
async fn load(
    addr: &str,
    connections: usize,
    size: usize,
    duration: Duration,
    cpu: Cpu,
) -> Result<Load, String> {
    let url = format!("ws://{addr}/ws");
    let opening = Instant::now();
    let mut sockets = Vec::with_capacity(connections);
    for _ in 0..connections {
        let (ws, _) = tokio_tungstenite::connect_async(&url)
            .await
            .map_err(|e| format!("open {url}: {e}"))?;
        sockets.push(ws);
    }
    let open_ms = opening.elapsed().as_secs_f64() * 1e3;
    let before = cpu.ticks();
    let started = Instant::now();
    let deadline = started + duration;
    let payload = "x".repeat(size);
    let mut tasks = tokio::task::JoinSet::new();
    for mut ws in sockets {
        let payload = payload.clone();
        tasks.spawn(async move {
            let mut rtts = Vec::new();
            while Instant::now() < deadline {
                let sent = Instant::now();
                ws.send(Message::text(payload.as_str()))
                    .await
                    .map_err(|e| format!("send: {e}"))?;
                match ws.next().await {
                    Some(Ok(Message::Text(echoed))) if echoed.len() == payload.len() => {}
                    other => return Err(format!("expected the echo, got {other:?}")),
                }
                rtts.push(u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX));
            }
            let _ = ws.close(None).await;
            Ok::<_, String>(rtts)
        });
    }
    let mut rtts = Vec::new();
    while let Some(done) = tasks.join_next().await {
        rtts.extend(done.map_err(|e| format!("load task: {e}"))??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let after = cpu.ticks();
    rtts.sort_unstable();
    let at = |q: f64| {
        let i = ((rtts.len() as f64 * q) as usize).min(rtts.len().saturating_sub(1));
        rtts.get(i).copied().map_or(0.0, f64::from)
    };
    let round_trips = rtts.len() as u64;
    let ticks = (after.user + after.system).saturating_sub(before.user + before.system);
    Ok(Load {
        round_trips,
        per_sec: round_trips as f64 / elapsed,
        p50_us: at(0.50),
        p99_us: at(0.99),
        open_ms,
        cpu_us_per_round_trip: ticks as f64 / clock_ticks() * 1e6 / round_trips.max(1) as f64,
    })
}

struct Options {
    duration: Duration,
    connections: usize,
    size: usize,
    only: Option<String>,
}

fn options() -> Result<Options, String> {
    let mut o = Options {
        duration: Duration::from_secs(10),
        connections: 64,
        size: 32,
        only: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--duration" => {
                let v = value()?;
                let secs: f64 = v
                    .trim_end_matches('s')
                    .parse()
                    .map_err(|_| format!("--duration: {v} is not like 10s"))?;
                o.duration = Duration::try_from_secs_f64(secs)
                    .map_err(|_| format!("--duration: {v} is not like 10s"))?;
            }
            "--connections" => {
                o.connections = value()?
                    .parse()
                    .map_err(|_| "--connections: a number".to_owned())?;
            }
            "--size" => {
                o.size = value()?
                    .parse()
                    .map_err(|_| "--size: a number of bytes".to_owned())?;
            }
            "--only" => match value()?.as_str() {
                which @ ("herd" | "nginx") => o.only = Some(which.to_owned()),
                other => return Err(format!("--only: herd or nginx, not {other}")),
            },
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(o)
}

async fn run() -> Result<(), String> {
    let o = options()?;
    let instance = backend().await?;
    let backend_addr = instance.addr();
    let gateway = herd_gateway::spawn(
        herd_config(backend_addr)?,
        SocketAddr::from(([127, 0, 0, 1], 0)),
    )
    .await?;
    let herd_addr = gateway.server.addr().to_string();
    let selected = |name: &str| o.only.as_deref().is_none_or(|only| only == name);
    let nginx = if selected("nginx") {
        let port = free_port()?;
        Some((
            start_nginx(port, backend_addr)?,
            format!("127.0.0.1:{port}"),
        ))
    } else {
        None
    };
    wait_until_serving(&herd_addr).await?;
    let mut proxies = Vec::new();
    if selected("herd") {
        proxies.push(("herd", herd_addr.clone(), Cpu::Threads("gateway")));
    }
    if let Some((nginx, addr)) = &nginx {
        wait_until_serving(addr).await?;
        proxies.push(("nginx", addr.clone(), Cpu::Process(nginx.child.id())));
    }
    // Warm up: connections, allocators, nginx's workers.
    for (_, addr, cpu) in &proxies {
        load(addr, o.connections, o.size, Duration::from_secs(1), *cpu).await?;
    }
    println!(
        "WebSocket echo, {} connections, {}-byte text messages, one in flight per connection, {:?} each, on loopback",
        o.connections, o.size, o.duration
    );
    println!(
        "{:<22} {:>12} {:>10} {:>10} {:>10} {:>14}",
        "proxy", "round trips/s", "p50 us", "p99 us", "open ms", "CPU us/trip"
    );
    let mut results = Vec::new();
    for (name, addr, cpu) in &proxies {
        let l = load(addr, o.connections, o.size, o.duration, *cpu).await?;
        let label = match *name {
            "herd" => "herd (2 runtimes)",
            _ => "nginx (2 workers)",
        };
        println!(
            "{label:<22} {:>12.0} {:>10.0} {:>10.0} {:>10.1} {:>14.2}",
            l.per_sec, l.p50_us, l.p99_us, l.open_ms, l.cpu_us_per_round_trip
        );
        results.push((*name, l));
    }
    if let [("herd", herd), ("nginx", nginx)] = results.as_slice() {
        println!(
            "round trips/s herd/nginx = {:.2}x; p99 herd/nginx = {:.2}x; CPU per round trip herd/nginx = {:.2}x ({} and {} round trips)",
            herd.per_sec / nginx.per_sec,
            herd.p99_us / nginx.p99_us.max(1.0),
            herd.cpu_us_per_round_trip / nginx.cpu_us_per_round_trip.max(f64::MIN_POSITIVE),
            herd.round_trips,
            nginx.round_trips,
        );
    }
    drop(nginx);
    drop(gateway);
    drop(instance);
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ws-echo: {e}");
            ExitCode::FAILURE
        }
    }
}
