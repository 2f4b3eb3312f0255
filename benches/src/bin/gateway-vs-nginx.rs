//! Run with: `cargo run --release -p herd-benches --bin gateway-vs-nginx`
//!
//! The same 3 backends behind herd's gateway (herd-gateway's `spawn`, as the demo runs it), nginx
//! and HAProxy, configured alike: least outstanding requests (`least_conn`), 32 idle
//! keep-alive connections per backend (`keepalive 32`), herd's retry rule (a failed attempt, and
//! for idempotent requests a 502/503/504, retried on another backend, at most 3 tries:
//! `proxy_next_upstream error timeout http_502 http_503 http_504; proxy_next_upstream_tries 3`)
//! and herd's request headers (`Host`, `X-Real-IP`, `X-Forwarded-For`, `-Proto`, `-Host`).
//! HAProxy gets the same: `balance leastconn`, `pool-max-conn 32` per server with
//! `http-reuse always`, `retries 2` with `retry-on conn-failure empty-response response-timeout
//! 502 503 504` and `option redispatch 1`, and the same headers; 2 threads, as nginx has 2
//! workers and herd 2 runtimes.
//!
//! A third proxy gives the floor: [`herd_benches::floor`], a bare hyper proxy on the same
//! threads, with none of a gateway's work per request (no balancing decision, header rewriting,
//! timeouts or retries). It shows what hyper's server and client and tokio cost by themselves;
//! herd's gateway uses hyper's server but speaks HTTP/1.1 to the backends itself, so it can cost
//! less than the floor.
//!
//! Each is loaded in turn with `wrk -t2 -c64 -d10s --latency` on loopback; the program prints
//! requests/s, p99 and CPU time per request (the proxy's, the backends', wrk's) for each, and
//! the ratios. The machine's cores are shared by wrk, the backends and the proxy, so throughput
//! follows the proxy's CPU time per request.
//!
//! `--tls` terminates TLS in all three (the same ECDSA P-256 certificate from a test CA made at
//! start, TLS 1.2 and 1.3, wrk's keep-alive connections: a handshake per connection, not per
//! request); the floor is left out there. `--observe ids|log` measures herd with its request ids
//! and `traceparent` on, or those plus the access log (written to a discarding writer).
//!
//! Needs `nginx`, `haproxy` and `wrk` (`apt-get install -y nginx haproxy wrk`). Options: `--duration 10s`,
//! `--connections 64`, `--rounds 1` (each round runs both, alternating which goes first),
//! `--only herd|nginx|haproxy|floor` (load just one, e.g. under a profiler), `--serve-backends` (only run the
//! backends and print their addresses) and `--backends A,B,C` (use backends running elsewhere).
#![allow(clippy::print_stdout)]

use std::net::SocketAddr;
use std::process::{Command, ExitCode, Stdio};

use axum::Router;
use axum::routing::get;
use herd_benches::floor::FloorProxy;
use herd_benches::proc::{Cpu, Proxy, clock_ticks, free_port, is_root, wait_until_serving};
use herd_gateway::config::{FileConfig, Gateway};

/// The allocator the demo's binary uses (see examples/axum-app/src/main.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use herd_gateway::server::ServerThread;

/// What wrk measured.
#[derive(Debug, Clone, Copy)]
struct Load {
    requests_per_sec: f64,
    p99_ms: f64,
    errors: u64,
    requests: u64,
    /// CPU time the proxy used during the run (user + system), in microseconds per request.
    cpu_us_per_request: f64,
    /// The user-space part of it.
    user_us_per_request: f64,
    /// CPU time of the backends (this process's `instance-*` threads) per request.
    backends_us_per_request: f64,
    /// CPU time of wrk per request.
    wrk_us_per_request: f64,
    /// Share of the machine's CPU time that was idle during the run.
    idle: f64,
}

fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn find(program: &str) -> Result<(), String> {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .ok()
        .filter(|s| s.success())
        .map(|_| ())
        .ok_or_else(|| format!("`{program}` not found: apt-get install -y nginx haproxy wrk"))
}

/// A backend like an app instance's cheapest endpoint: a small JSON body naming the instance.
async fn backend(name: &'static str) -> Result<ServerThread, String> {
    ServerThread::start(name, any_port(), move || async move {
        let body = format!("{{\"instance\":\"{name}\",\"user\":null}}");
        Ok(Router::new()
            .route("/health/ready", get(|| async { "ok" }))
            .fallback(get(move || {
                let body = body.clone();
                async move { ([("content-type", "application/json")], body) }
            })))
    })
    .await
}

fn start_nginx(port: u16, backends: &[SocketAddr], tls: Option<&Certs>) -> Result<Proxy, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    let p = dir.path().display().to_string();
    let servers: String = backends
        .iter()
        .map(|b| format!("        server {b} max_fails=1 fail_timeout=10s;\n"))
        .collect();
    let user = if is_root() { "user root;\n" } else { "" };
    let ssl = if tls.is_some() { " ssl" } else { "" };
    let ssl_files = tls.map_or_else(String::new, |c| {
        format!(
            "        ssl_certificate {};\n        ssl_certificate_key {};\n        ssl_protocols TLSv1.2 TLSv1.3;\n",
            c.cert.display(),
            c.key.display()
        )
    });
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
    upstream app {{
        least_conn;
{servers}        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{port}{ssl};
{ssl_files}        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_set_header Host $host;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $host;
            proxy_connect_timeout 1s;
            proxy_read_timeout 10s;
            proxy_next_upstream error timeout http_502 http_503 http_504;
            proxy_next_upstream_tries 3;
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
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("start nginx: {e}"))?;
    Ok(Proxy { child, dir })
}

/// HAProxy configured as nginx is above (see the module's documentation).
fn start_haproxy(port: u16, backends: &[SocketAddr], tls: Option<&Certs>) -> Result<Proxy, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    let servers: String = backends
        .iter()
        .enumerate()
        .map(|(i, b)| format!("    server s{i} {b} pool-max-conn 32\n"))
        .collect();
    // HAProxy reads the certificate and its key from one file.
    let ssl = tls.map_or_else(String::new, |c| {
        format!(
            " ssl crt {} alpn h2,http/1.1 ssl-min-ver TLSv1.2",
            c.combined.display()
        )
    });
    let proto = if tls.is_some() { "https" } else { "http" };
    let conf = format!(
        "global
    nbthread 2
    maxconn 4096
defaults
    mode http
    timeout connect 1s
    timeout client 30s
    timeout server 10s
    timeout http-keep-alive 30s
    option http-keep-alive
frontend web
    bind 127.0.0.1:{port}{ssl}
    default_backend app
backend app
    balance leastconn
    http-reuse always
    retries 2
    retry-on conn-failure empty-response response-timeout 502 503 504
    option redispatch 1
    option forwardfor
    http-request set-header X-Real-IP %[src]
    http-request set-header X-Forwarded-Proto {proto}
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
{servers}"
    );
    let conf_path = dir.path().join("haproxy.cfg");
    std::fs::write(&conf_path, conf).map_err(|e| format!("write haproxy.cfg: {e}"))?;
    let child = Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&conf_path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("start haproxy: {e}"))?;
    Ok(Proxy { child, dir })
}

/// A test CA's certificate for `127.0.0.1` and `localhost`, in the files each proxy reads.
struct Certs {
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    /// Certificate then key, for HAProxy.
    combined: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn make_certs() -> Result<Certs, String> {
    let err = |e: rcgen::Error| format!("test certificate: {e}");
    let ca_key = rcgen::KeyPair::generate().map_err(err)?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).map_err(err)?;
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().map_err(err)?;
    let params =
        rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .map_err(err)?;
    let cert = params.signed_by(&key, &issuer).map_err(err)?;
    let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    let chain = format!("{}{}", cert.pem(), ca.pem());
    let files = Certs {
        cert: dir.path().join("cert.pem"),
        key: dir.path().join("key.pem"),
        combined: dir.path().join("combined.pem"),
        _dir: dir,
    };
    let write = |path: &std::path::Path, text: &str| {
        std::fs::write(path, text).map_err(|e| format!("write {}: {e}", path.display()))
    };
    write(&files.cert, &chain)?;
    write(&files.key, &key.serialize_pem())?;
    write(&files.combined, &format!("{chain}{}", key.serialize_pem()))?;
    Ok(files)
}

/// (idle, all) ticks of the whole machine, from the `cpu` line of `/proc/stat`.
fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    (idle, fields.iter().take(8).sum())
}

/// CPU ticks of this process's waited-for children (wrk), from `/proc/self/stat`.
fn children_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = stat.rfind(')').map_or("", |i| &stat[i + 2..]);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After `(comm)`, cutime and cstime follow utime and stime.
    [13, 14]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum()
}

fn wrk(url: &str, duration: &str, connections: u32, cpu: Cpu) -> Result<Load, String> {
    let before = cpu.ticks();
    let backends_before = Cpu::Threads("instance").ticks();
    let machine_before = machine_ticks();
    let children_before = children_ticks();
    let out = Command::new("wrk")
        .args([
            "-t2",
            &format!("-c{connections}"),
            &format!("-d{duration}"),
            "--latency",
        ])
        .arg(format!("{url}/api/whoami"))
        .output()
        .map_err(|e| format!("run wrk: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "wrk failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let after = cpu.ticks();
    let backends_after = Cpu::Threads("instance").ticks();
    let machine_after = machine_ticks();
    let children_after = children_ticks();
    let mut load =
        parse_wrk(&text).ok_or_else(|| format!("could not read wrk's output:\n{text}"))?;
    let per_request = |ticks: u64| ticks as f64 / clock_ticks() * 1e6 / load.requests.max(1) as f64;
    let user = after.user.saturating_sub(before.user);
    let system = after.system.saturating_sub(before.system);
    load.cpu_us_per_request = per_request(user + system);
    load.user_us_per_request = per_request(user);
    load.backends_us_per_request = per_request(
        (backends_after.user + backends_after.system)
            .saturating_sub(backends_before.user + backends_before.system),
    );
    load.wrk_us_per_request = per_request(children_after.saturating_sub(children_before));
    let all = machine_after.1.saturating_sub(machine_before.1).max(1);
    load.idle = machine_after.0.saturating_sub(machine_before.0) as f64 / all as f64;
    Ok(load)
}

/// Reads `Requests/sec:`, the `99%` latency line and any `Non-2xx`/socket errors.
fn parse_wrk(text: &str) -> Option<Load> {
    let mut rps = None;
    let mut p99 = None;
    let mut errors = 0;
    let mut requests = None;
    for line in text.lines().map(str::trim) {
        if let Some((n, _)) = line.split_once(" requests in ") {
            requests = n.trim().parse().ok();
        } else if let Some(v) = line.strip_prefix("Requests/sec:") {
            rps = v.trim().parse().ok();
        } else if let Some(v) = line.strip_prefix("99%") {
            p99 = parse_duration_ms(v.trim());
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            errors += v.trim().parse::<u64>().unwrap_or(0);
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            errors += v
                .split(',')
                .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    Some(Load {
        requests_per_sec: rps?,
        p99_ms: p99?,
        errors,
        requests: requests?,
        cpu_us_per_request: 0.0,
        user_us_per_request: 0.0,
        backends_us_per_request: 0.0,
        wrk_us_per_request: 0.0,
        idle: 0.0,
    })
}

fn parse_duration_ms(v: &str) -> Option<f64> {
    let (num, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic())?);
    let n: f64 = num.trim().parse().ok()?;
    Some(match unit.trim() {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => return None,
    })
}

struct Options {
    duration: String,
    connections: u32,
    rounds: u32,
    /// Load only one of them (`herd`, `nginx`, `haproxy` or `floor`), e.g. to profile it.
    only: Option<String>,
    /// Only start the 3 backends, print their addresses and wait (to be killed).
    serve_backends: bool,
    /// Backends started elsewhere (`--serve-backends`), so a profiler sees only the gateway.
    backends: Vec<SocketAddr>,
    /// Terminate TLS in the proxies.
    tls: bool,
    /// herd's `[observe]`: none, `ids` (request ids, traceparent) or `log` (and the access log).
    observe: Option<String>,
}

fn options() -> Result<Options, String> {
    let mut o = Options {
        duration: "10s".into(),
        connections: 64,
        rounds: 1,
        only: None,
        serve_backends: false,
        backends: Vec::new(),
        tls: false,
        observe: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--duration" => o.duration = value()?,
            "--connections" => {
                o.connections = value()?.parse().map_err(|_| "--connections: a number")?
            }
            "--rounds" => o.rounds = value()?.parse().map_err(|_| "--rounds: a number")?,
            "--serve-backends" => o.serve_backends = true,
            "--tls" => o.tls = true,
            "--observe" => match value()?.as_str() {
                which @ ("ids" | "log") => o.observe = Some(which.to_owned()),
                other => return Err(format!("--observe: ids or log, not {other}")),
            },
            "--backends" => {
                o.backends = value()?
                    .split(',')
                    .map(|a| {
                        a.trim()
                            .parse()
                            .map_err(|_| format!("--backends: bad address {a}"))
                    })
                    .collect::<Result<_, _>>()?
            }
            "--only" => match value()?.as_str() {
                which @ ("herd" | "nginx" | "haproxy" | "floor") => o.only = Some(which.to_owned()),
                other => {
                    return Err(format!(
                        "--only: herd, nginx, haproxy or floor, not {other}"
                    ));
                }
            },
            "--bench" => {} // passed by `cargo bench`; this program is run with `cargo run`
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(o)
}

async fn run() -> Result<(), String> {
    let o = options()?;
    find("nginx")?;
    find("haproxy")?;
    find("wrk")?;
    let mut backends = Vec::new();
    let addrs: Vec<SocketAddr> = if o.backends.is_empty() {
        for name in ["instance-1", "instance-2", "instance-3"] {
            backends.push(backend(name).await?);
        }
        backends.iter().map(ServerThread::addr).collect()
    } else {
        o.backends.clone()
    };
    if o.serve_backends {
        println!(
            "backends: {}",
            addrs
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(",")
        );
        std::future::pending::<()>().await;
    }
    let certs = if o.tls { Some(make_certs()?) } else { None };
    if o.observe.as_deref() == Some("log") {
        // The access log's lines formatted as in production, written nowhere.
        tracing_subscriber::fmt()
            .with_writer(std::io::sink)
            .with_max_level(tracing::Level::INFO)
            .init();
    }
    let gateway = Gateway::start(herd_config(&addrs, certs.as_ref(), o.observe.as_deref())?)
        .await
        .map_err(|e| format!("herd's gateway: {e}"))?;
    let scheme = if o.tls { "https" } else { "http" };
    let nginx_port = free_port()?;
    let nginx = start_nginx(nginx_port, &addrs, certs.as_ref())?;
    let haproxy_port = free_port()?;
    let haproxy = start_haproxy(haproxy_port, &addrs, certs.as_ref())?;
    let herd_url = format!(
        "{scheme}://{}",
        gateway
            .addrs()
            .first()
            .ok_or("herd's gateway has no listener")?
    );
    let nginx_url = format!("{scheme}://127.0.0.1:{nginx_port}");
    let haproxy_url = format!("{scheme}://127.0.0.1:{haproxy_port}");
    wait_until_serving(&herd_url).await?;
    wait_until_serving(&nginx_url).await?;
    wait_until_serving(&haproxy_url).await?;
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let floor = FloorProxy::start(addrs.clone(), cores)?;
    let floor_url = floor.url();
    wait_until_serving(&floor_url).await?;
    let proxies = [
        ("herd", herd_url.as_str(), Cpu::Threads("gateway")),
        ("nginx", nginx_url.as_str(), Cpu::Process(nginx.child.id())),
        (
            "haproxy",
            haproxy_url.as_str(),
            Cpu::Process(haproxy.child.id()),
        ),
        ("floor", floor_url.as_str(), Cpu::Threads("floor")),
    ];
    let tls = o.tls;
    let selected =
        |name: &str| o.only.as_deref().is_none_or(|only| only == name) && !(tls && name == "floor");
    // Warm them up (connection pools, caches) before measuring.
    for (name, url, cpu) in proxies {
        if selected(name) {
            wrk(url, "2s", o.connections, cpu)?;
        }
    }

    println!(
        "wrk -t2 -c{} -d{} --latency on loopback, 3 backends, least outstanding, keepalive 32{}{}",
        o.connections,
        o.duration,
        if o.tls { ", TLS terminated" } else { "" },
        o.observe
            .as_deref()
            .map_or(String::new(), |w| format!(", herd observe: {w}"))
    );
    let mut loads: [Vec<Load>; 4] = Default::default();
    for round in 0..o.rounds as usize {
        // Each round starts with the next proxy, so none is always first or last.
        for i in (0..proxies.len()).map(|i| (i + round) % proxies.len()) {
            let (name, url, cpu) = proxies[i];
            if !selected(name) {
                continue;
            }
            let load = wrk(url, &o.duration, o.connections, cpu)?;
            println!(
                "  round {} {name:<7} {:>8.0} req/s  p99 {:>6.2} ms  CPU us/request: proxy {:>4.1} (user {:.1}), backends {:.1}, wrk {:.1}; machine idle {:.0}%  errors {}",
                round + 1,
                load.requests_per_sec,
                load.p99_ms,
                load.cpu_us_per_request,
                load.user_us_per_request,
                load.backends_us_per_request,
                load.wrk_us_per_request,
                load.idle * 100.0,
                load.errors
            );
            loads[i].push(load);
        }
    }
    if o.only.is_some() {
        return Ok(());
    }
    let mean = |v: &[Load], f: fn(&Load) -> f64| v.iter().map(f).sum::<f64>() / v.len() as f64;
    let rps = loads.each_ref().map(|l| mean(l, |l| l.requests_per_sec));
    let p99 = loads.each_ref().map(|l| mean(l, |l| l.p99_ms));
    let cpu = loads.each_ref().map(|l| mean(l, |l| l.cpu_us_per_request));
    let user = loads.each_ref().map(|l| mean(l, |l| l.user_us_per_request));
    println!();
    println!("| proxy | requests/s | p99 | proxy CPU per request | of which user |");
    println!("|---|---|---|---|---|");
    for (i, label) in [
        "herd gateway",
        "nginx (2 workers)",
        "HAProxy (2 threads)",
        "floor: bare hyper proxy (2 threads)",
    ]
    .iter()
    .enumerate()
    .filter(|(i, _)| !loads[*i].is_empty())
    {
        println!(
            "| {label} | {:.0} | {:.2} ms | {:.1} us | {:.1} us |",
            rps[i], p99[i], cpu[i], user[i]
        );
    }
    println!(
        "throughput herd/nginx = {:.2}x; p99 herd/nginx = {:.2}x; CPU per request herd/nginx = {:.2}x",
        rps[0] / rps[1],
        p99[0] / p99[1],
        cpu[0] / cpu[1]
    );
    println!(
        "throughput herd/haproxy = {:.2}x; p99 herd/haproxy = {:.2}x; CPU per request herd/haproxy = {:.2}x",
        rps[0] / rps[2],
        p99[0] / p99[2],
        cpu[0] / cpu[2]
    );
    if o.tls {
        return Ok(());
    }
    println!(
        "floor/nginx: throughput {:.2}x, CPU per request {:.2}x; herd/floor: throughput {:.2}x, CPU per request {:.2}x",
        rps[3] / rps[1],
        cpu[3] / cpu[1],
        rps[0] / rps[3],
        cpu[0] / cpu[3]
    );
    Ok(())
}

/// herd's gateway from a config file as the `herd-gateway` binary reads it, on these backends:
/// least outstanding requests (`least_conn`), 32 idle keep-alive connections per backend, the
/// same retry rule, the demo's timeouts and its active checks of `/health/ready` every 500 ms;
/// no rate limits or proxy cache; 2 accepting threads, as nginx has 2 workers.
fn herd_config(
    backends: &[SocketAddr],
    tls: Option<&Certs>,
    observe: Option<&str>,
) -> Result<FileConfig, String> {
    let servers: Vec<String> = backends
        .iter()
        .map(|a| format!("{{ address = \"{a}\" }}"))
        .collect();
    let tls = tls.map_or_else(String::new, |c| {
        format!(
            "tls = {{ cert = {:?}, key = {:?}, reload_interval = \"0s\" }}\n",
            c.cert.display().to_string(),
            c.key.display().to_string()
        )
    });
    let observe = match observe {
        None => "",
        Some("ids") => "[observe]\n",
        Some(_) => "[observe]\naccess_log = true\n",
    };
    let text = format!(
        "workers = 2
[[listen]]
address = \"127.0.0.1:0\"
{tls}
[upstreams.app]
policy = \"least_conn\"
servers = [{}]
keepalive = 32
next_upstream = [\"error\", \"timeout\", \"http_502\", \"http_503\", \"http_504\"]
next_upstream_tries = 3
connect_timeout = \"1s\"
read_timeout = \"10s\"
health_check = {{ path = \"/health/ready\", interval = \"500ms\", timeout = \"1s\" }}
{observe}",
        servers.join(", ")
    );
    FileConfig::parse(&text).map_err(|e| format!("herd's gateway configuration: {e}"))
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gateway-vs-nginx: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrk_output() {
        let text = "Running 10s test @ http://127.0.0.1:8080/api/whoami
  2 threads and 64 connections
  Latency Distribution
     50%  1.10ms
     75%  1.50ms
     90%  2.00ms
     99%    4.53ms
  120000 requests in 10.00s, 20.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 3
Requests/sec:  12000.50
Transfer/sec:      2.00MB";
        let l = parse_wrk(text).unwrap();
        assert!((l.requests_per_sec - 12000.5).abs() < 1e-9);
        assert!((l.p99_ms - 4.53).abs() < 1e-9);
        assert_eq!(l.errors, 6);
        assert_eq!(l.requests, 120000);
        assert_eq!(parse_duration_ms("850.00us"), Some(0.85));
        assert_eq!(parse_duration_ms("1.20s"), Some(1200.0));
        assert!(parse_wrk("garbage").is_none());
    }
}
