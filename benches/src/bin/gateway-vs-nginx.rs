//! Run with: `cargo run --release -p herd-benches --bin gateway-vs-nginx`
//!
//! The same 3 backends behind herd's gateway (examples/axum-app's, built on herd-lb-core's HTTP
//! upstream) and behind nginx, configured alike: least outstanding requests (`least_conn`), 32 idle
//! keep-alive connections per backend (`keepalive 32`), and a failed connection retried on another
//! backend, at most 3 tries (`proxy_next_upstream error timeout; proxy_next_upstream_tries 3`).
//! Each is loaded in turn with `wrk -t2 -c64 -d10s --latency` on loopback; the program prints
//! requests/s and p99 for both, and the ratios.
//!
//! Needs `nginx` and `wrk` (`apt-get install -y nginx wrk`). Options: `--duration 10s`,
//! `--connections 64`, `--rounds 1` (each round runs both, alternating which goes first),
//! `--only herd|nginx` (load just one, e.g. under a profiler), `--serve-backends` (only run the
//! backends and print their addresses) and `--backends A,B,C` (use backends running elsewhere).
#![allow(clippy::print_stdout)]

use std::net::SocketAddr;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use axum_app::gateway::{GatewayConfig, Policy};
use axum_app::server::ServerThread;

/// What wrk measured.
#[derive(Debug, Clone, Copy)]
struct Load {
    requests_per_sec: f64,
    p99_ms: f64,
    errors: u64,
    requests: u64,
    /// CPU time the proxy used during the run (user + system), in microseconds per request.
    cpu_us_per_request: f64,
}

/// Clock ticks per second of `/proc/*/stat` times (`getconf CLK_TCK`, 100 on Linux).
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime (ticks) from a `/proc/.../stat` line; the command name may hold spaces, so
/// fields are counted after its closing parenthesis.
fn stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After `(comm)`: state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// Where a proxy's CPU time is read from.
#[derive(Clone, Copy)]
enum Cpu {
    /// Threads of this process whose name starts with the prefix (the gateway's runtime).
    Threads(&'static str),
    /// A process and its children (nginx's master and workers).
    Process(u32),
}

impl Cpu {
    fn ticks(self) -> u64 {
        match self {
            Cpu::Threads(prefix) => std::fs::read_dir("/proc/self/task")
                .into_iter()
                .flatten()
                .flatten()
                .filter(|t| {
                    std::fs::read_to_string(t.path().join("comm"))
                        .is_ok_and(|c| c.starts_with(prefix))
                })
                .filter_map(|t| stat_ticks(&std::fs::read_to_string(t.path().join("stat")).ok()?))
                .sum(),
            Cpu::Process(master) => {
                let children =
                    std::fs::read_to_string(format!("/proc/{master}/task/{master}/children"))
                        .unwrap_or_default();
                std::iter::once(master)
                    .chain(children.split_whitespace().filter_map(|p| p.parse().ok()))
                    .filter_map(|pid| {
                        stat_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
                    })
                    .sum()
            }
        }
    }
}

fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("find a free port: {e}"))
}

fn find(program: &str) -> Result<(), String> {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .ok()
        .filter(|s| s.success())
        .map(|_| ())
        .ok_or_else(|| format!("`{program}` not found: apt-get install -y nginx wrk"))
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

/// nginx in the foreground with its own prefix dir; stopped by its pid on drop.
struct Nginx {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM is nginx's fast shutdown: the master stops its workers, then exits. (SIGKILL on
        // the master alone would orphan the workers.)
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        for _ in 0..100 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_nginx(port: u16, backends: &[SocketAddr]) -> Result<Nginx, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    let p = dir.path().display().to_string();
    let servers: String = backends
        .iter()
        .map(|b| format!("        server {b} max_fails=1 fail_timeout=10s;\n"))
        .collect();
    let user = if nix_is_root() { "user root;\n" } else { "" };
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
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_connect_timeout 1s;
            proxy_read_timeout 10s;
            proxy_next_upstream error timeout;
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
    Ok(Nginx { child, _dir: dir })
}

fn nix_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

async fn wait_until_serving(url: &str) -> Result<(), String> {
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(url.trim_start_matches("http://"))
            .await
            .is_ok()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("{url} never accepted connections"))
}

fn wrk(url: &str, duration: &str, connections: u32, cpu: Cpu) -> Result<Load, String> {
    let before = cpu.ticks();
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
    let used = cpu.ticks().saturating_sub(before) as f64 / clock_ticks();
    let mut load =
        parse_wrk(&text).ok_or_else(|| format!("could not read wrk's output:\n{text}"))?;
    load.cpu_us_per_request = used * 1e6 / load.requests.max(1) as f64;
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
    /// Load only one of them (`herd` or `nginx`), e.g. to profile it.
    only: Option<String>,
    /// Only start the 3 backends, print their addresses and wait (to be killed).
    serve_backends: bool,
    /// Backends started elsewhere (`--serve-backends`), so a profiler sees only the gateway.
    backends: Vec<SocketAddr>,
}

fn options() -> Result<Options, String> {
    let mut o = Options {
        duration: "10s".into(),
        connections: 64,
        rounds: 1,
        only: None,
        serve_backends: false,
        backends: Vec::new(),
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
                which @ ("herd" | "nginx") => o.only = Some(which.to_owned()),
                other => return Err(format!("--only: herd or nginx, not {other}")),
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
    let gateway = axum_app::gateway::spawn(
        GatewayConfig::new(addrs.iter().map(|a| format!("http://{a}")).collect())
            .policy(Policy::LeastOutstanding)
            .rate_limits(false)
            .response_cache(false),
        any_port(),
    )
    .await?;
    let nginx_port = free_port()?;
    let nginx = start_nginx(nginx_port, &addrs)?;
    let herd_url = gateway.server.url();
    let nginx_url = format!("http://127.0.0.1:{nginx_port}");
    wait_until_serving(&herd_url).await?;
    wait_until_serving(&nginx_url).await?;
    let herd_cpu = Cpu::Threads("gateway");
    let nginx_cpu = Cpu::Process(nginx.child.id());
    // Warm both up (connection pools, caches) before measuring.
    wrk(&herd_url, "2s", o.connections, herd_cpu)?;
    wrk(&nginx_url, "2s", o.connections, nginx_cpu)?;

    println!(
        "wrk -t2 -c{} -d{} --latency on loopback, 3 backends, least outstanding, keepalive 32",
        o.connections, o.duration
    );
    let mut herd = Vec::new();
    let mut nginx_loads = Vec::new();
    for round in 0..o.rounds {
        let order: [(&str, &str, Cpu); 2] = if round % 2 == 0 {
            [
                ("herd", &herd_url, herd_cpu),
                ("nginx", &nginx_url, nginx_cpu),
            ]
        } else {
            [
                ("nginx", &nginx_url, nginx_cpu),
                ("herd", &herd_url, herd_cpu),
            ]
        };
        for (name, url, cpu) in order {
            if o.only.as_deref().is_some_and(|only| only != name) {
                continue;
            }
            let load = wrk(url, &o.duration, o.connections, cpu)?;
            println!(
                "  round {} {name:<5} {:>10.0} req/s   p99 {:>7.2} ms   proxy CPU {:>6.1} us/request   errors {}",
                round + 1,
                load.requests_per_sec,
                load.p99_ms,
                load.cpu_us_per_request,
                load.errors
            );
            if name == "herd" {
                herd.push(load)
            } else {
                nginx_loads.push(load)
            }
        }
    }
    if o.only.is_some() {
        return Ok(());
    }
    let mean = |v: &[Load], f: fn(&Load) -> f64| v.iter().map(f).sum::<f64>() / v.len() as f64;
    let (h_rps, n_rps) = (
        mean(&herd, |l| l.requests_per_sec),
        mean(&nginx_loads, |l| l.requests_per_sec),
    );
    let (h_p99, n_p99) = (mean(&herd, |l| l.p99_ms), mean(&nginx_loads, |l| l.p99_ms));
    let (h_cpu, n_cpu) = (
        mean(&herd, |l| l.cpu_us_per_request),
        mean(&nginx_loads, |l| l.cpu_us_per_request),
    );
    println!();
    println!("| proxy | requests/s | p99 | proxy CPU per request |");
    println!("|---|---|---|---|");
    println!("| herd gateway | {h_rps:.0} | {h_p99:.2} ms | {h_cpu:.1} us |");
    println!("| nginx (2 workers) | {n_rps:.0} | {n_p99:.2} ms | {n_cpu:.1} us |");
    println!(
        "throughput herd/nginx = {:.2}x; p99 herd/nginx = {:.2}x; CPU per request herd/nginx = {:.2}x",
        h_rps / n_rps,
        h_p99 / n_p99,
        h_cpu / n_cpu
    );
    Ok(())
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
        assert_eq!(
            stat_ticks("42 (tokio w) S 1 1 1 0 -1 4194560 10 0 0 0 250 75 0 0 20 0"),
            Some(325)
        );
        assert_eq!(parse_duration_ms("850.00us"), Some(0.85));
        assert_eq!(parse_duration_ms("1.20s"), Some(1200.0));
        assert!(parse_wrk("garbage").is_none());
    }
}
