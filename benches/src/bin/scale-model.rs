//! Run with: `cargo build --release -p axum-app && cargo run --release -p herd-benches --bin scale-model`
//!
//! The measured scale model of `docs/scale.md` (issue #22): the demo's deployment on network
//! namespaces (herd-testkit's `Net`, so it needs root), at the largest size this 2-core machine
//! holds, first idle for `--idle` and then under a light steady load for `--load`, with the
//! per-unit costs read from counters, not timed:
//!
//! - each host's `eth0` counters (`/proc/net/dev` read inside its namespace): bytes and packets
//!   per gateway, per application host, per PostgreSQL node and per Redis node;
//! - PostgreSQL's own: transactions per node from `pg_stat_database` (the db-router monitor's
//!   check is one transaction), connections per node by client address and `application_name`
//!   from `pg_stat_activity`, each backend's private memory from `/proc/PID/smaps_rollup`;
//! - Redis' own: `INFO commandstats` (calls per command, `CLUSTER SLOTS` among them), `INFO stats`
//!   (client bytes), `CLIENT LIST` (connections by client address), `CLUSTER INFO` (bus messages);
//! - each instance's `/metrics` (`herd_http_requests_total` of `/health/ready`: the gateways'
//!   checks it answered) and resident memory (`VmRSS`), and each gateway's resident memory.
//!
//! Topology (the defaults): `--instances 12` processes of `axum-app instance` spread over
//! `--app-hosts 4`, `--gateways 2` processes of `axum-app gateway` (each on its own host, every
//! instance a backend of both), a PostgreSQL primary and `--replicas 3` (each on its own host),
//! and a Redis Cluster of `--redis-masters 3` with `--redis-replicas 2` each (9 nodes over 3
//! hosts). The load (`--rate 20` requests/s in all, from `--users 8` logged-in users, in the
//! test's own namespace through the gateways): `GET /api/notes`, every fifth request a
//! `POST /api/notes`.
//!
//! `axum-app instance` listens on 127.0.0.1 only, so this program relays each instance's port
//! from its host's address to its loopback inside the host's namespace (the gateways reach it
//! across the bridge; the relay's bytes are not in any process's figures, and only loopback
//! traffic is added on the application host).
//!
//! After the measurements it prints the model: the same per-unit figures multiplied out for
//! `--model-instances 100`, `--model-replicas 10`, `--model-redis-nodes 30`, `--model-gateways 4`.
//! Everything started is removed at the end (the `Net` kills what runs in its namespaces).
//! `--app PATH` names the `axum-app` binary (default: beside this one).
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use herd_testkit::net::{Host, Net};
use herd_testkit::{PgCluster, RedisCluster};

/// The demo's allocator, as in the other bench programs.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// First port of the instances on each application host (the namespaces are separate, so every
/// host uses the same ports).
const FIRST_INSTANCE_PORT: u16 = 3001;
/// The gateways' port on their hosts.
const GATEWAY_PORT: u16 = 8080;
/// The demo's settings that the extrapolation divides by (examples/axum-app: `gateway.rs`
/// `active_health.interval`, `instance.rs` `check_interval`; herd-cache-cluster's default
/// `topology_refresh_interval`).
const DEMO_GATEWAY_CHECK_INTERVAL: Duration = Duration::from_millis(500);
const DEMO_DB_CHECK_INTERVAL: Duration = Duration::from_millis(250);
/// herd-db-router's default `pool.max_connections` per node (the demo keeps it).
const POOL_MAX_CONNECTIONS: u64 = 10;
/// Session key shared by the instances (48 bytes, base64): only this run's processes use it.
const SESSION_KEY: &str = "aGVyZC1zY2FsZS1tb2RlbC1rZXktc2hhcmVkLWJ5LWV2ZXJ5LWluc3RhbmNlLTAx";

#[derive(Debug, Clone)]
struct Options {
    instances: usize,
    app_hosts: usize,
    gateways: usize,
    replicas: usize,
    redis_masters: usize,
    redis_replicas: usize,
    idle: Duration,
    load: Duration,
    settle: Duration,
    rate: f64,
    users: usize,
    app: PathBuf,
    model_instances: f64,
    model_replicas: f64,
    model_redis_nodes: f64,
    model_gateways: f64,
}

fn parse_secs(text: &str) -> Result<Duration, String> {
    let number = text.strip_suffix('s').unwrap_or(text);
    number
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s > 0.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("`{text}` is not a number of seconds"))
}

fn parse_count(arg: &str, text: &str) -> Result<usize, String> {
    text.parse::<usize>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{arg} {text}: needs a whole number above 0"))
}

fn options() -> Result<Options, String> {
    let beside_me = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("axum-app")))
        .unwrap_or_else(|| PathBuf::from("axum-app"));
    let mut o = Options {
        instances: 12,
        app_hosts: 4,
        gateways: 2,
        replicas: 3,
        redis_masters: 3,
        redis_replicas: 2,
        idle: Duration::from_secs(60),
        load: Duration::from_secs(30),
        settle: Duration::from_secs(10),
        rate: 20.0,
        users: 8,
        app: beside_me,
        model_instances: 100.0,
        model_replicas: 10.0,
        model_redis_nodes: 30.0,
        model_gateways: 4.0,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().ok_or_else(|| format!("{arg} needs a value"))?;
        let float = |v: &str| {
            v.parse::<f64>()
                .ok()
                .filter(|f| f.is_finite() && *f > 0.0)
                .ok_or_else(|| format!("{arg} {v}: needs a number above 0"))
        };
        match arg.as_str() {
            "--instances" => o.instances = parse_count(&arg, &value)?,
            "--app-hosts" => o.app_hosts = parse_count(&arg, &value)?,
            "--gateways" => o.gateways = parse_count(&arg, &value)?,
            "--replicas" => o.replicas = parse_count(&arg, &value)?,
            "--redis-masters" => o.redis_masters = parse_count(&arg, &value)?,
            "--redis-replicas" => {
                o.redis_replicas = value
                    .parse()
                    .map_err(|_| format!("{arg} {value}: needs a whole number"))?;
            }
            "--idle" => o.idle = parse_secs(&value)?,
            "--load" => o.load = parse_secs(&value)?,
            "--settle" => o.settle = parse_secs(&value)?,
            "--rate" => o.rate = float(&value)?,
            "--users" => o.users = parse_count(&arg, &value)?,
            "--app" => o.app = PathBuf::from(value),
            "--model-instances" => o.model_instances = float(&value)?,
            "--model-replicas" => o.model_replicas = float(&value)?,
            "--model-redis-nodes" => o.model_redis_nodes = float(&value)?,
            "--model-gateways" => o.model_gateways = float(&value)?,
            _ => return Err(format!("unknown option {arg}")),
        }
    }
    if o.redis_masters < 3 {
        return Err("--redis-masters: Redis Cluster needs at least 3".to_owned());
    }
    if o.app_hosts > o.instances {
        o.app_hosts = o.instances;
    }
    Ok(o)
}

/// A process started on a host, killed (by its own pid) when dropped.
#[derive(Debug)]
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The end of its log, to say why it did not come up.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One application instance: the process, its host and port.
#[derive(Debug)]
struct Instance {
    proc: Proc,
    host: Host,
    port: u16,
    /// Bytes relayed to and from it (both directions).
    relayed: Arc<AtomicU64>,
}

impl Instance {
    fn url(&self) -> String {
        format!("http://{}:{}", self.host.ip(), self.port)
    }
}

/// Everything started, dropped in field order: processes and relays first, then the servers,
/// then the namespaces.
struct Deployment {
    relays: Vec<tokio::task::JoinHandle<()>>,
    instances: Vec<Instance>,
    gateways: Vec<(Proc, Host)>,
    pg: PgCluster,
    redis: RedisCluster,
    /// Each PostgreSQL node's server log (its stderr), in node order.
    pg_logs: Vec<PathBuf>,
    net: Net,
    _logs: tempfile::TempDir,
}

impl Drop for Deployment {
    fn drop(&mut self) {
        for relay in &self.relays {
            relay.abort();
        }
    }
}

fn spawn_on(
    host: &Host,
    name: &str,
    app: &Path,
    args: &[String],
    env: &[(&str, String)],
    logs: &Path,
) -> Result<Proc, String> {
    let log = logs.join(format!("{name}.log"));
    let file = std::fs::File::create(&log).map_err(|e| format!("create {}: {e}", log.display()))?;
    let mut command = host.command(app);
    command
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file);
    for var in [
        "DATABASE_URL",
        "REPLICA_URLS",
        "REDIS_CLUSTER_NODES",
        "REDIS_URL",
    ] {
        command.env_remove(var);
    }
    for (k, v) in env {
        command.env(k, v);
    }
    let child = command
        .spawn()
        .map_err(|e| format!("start {name} ({}) on {}: {e}", app.display(), host.name()))?;
    Ok(Proc {
        name: name.to_owned(),
        child,
        log,
    })
}

/// Relays `host`'s address:`port` to 127.0.0.1:`port` inside the host (where the instance
/// listens). Each accepted connection gets its upstream socket made inside the namespace.
async fn relay(host: Host, listener: std::net::TcpListener, port: u16, relayed: Arc<AtomicU64>) {
    let Ok(listener) = listener
        .set_nonblocking(true)
        .and_then(|()| tokio::net::TcpListener::from_std(listener))
    else {
        return;
    };
    while let Ok((client, _)) = listener.accept().await {
        let host = host.clone();
        let relayed = Arc::clone(&relayed);
        tokio::spawn(async move {
            let connect = tokio::task::spawn_blocking(move || {
                host.run(|| std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)))
            })
            .await;
            let Ok(Ok(Ok(upstream))) = connect else {
                return;
            };
            let Ok(upstream) = upstream
                .set_nonblocking(true)
                .and_then(|()| tokio::net::TcpStream::from_std(upstream))
            else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = upstream.set_nodelay(true);
            let (client_read, client_write) = client.into_split();
            let (upstream_read, upstream_write) = upstream.into_split();
            // Counted as it flows: keep-alive connections (the checks') last the whole run.
            tokio::join!(
                pump(client_read, upstream_write, &relayed),
                pump(upstream_read, client_write, &relayed)
            );
        });
    }
}

/// Copies `from` to `to` until either ends, adding each chunk's size to `counter`.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    counter: &AtomicU64,
) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut buf = vec![0_u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let Some(chunk) = buf.get(..n) else { break };
        if to.write_all(chunk).await.is_err() {
            break;
        }
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
    let _ = to.shutdown().await;
}

async fn wait_ready(url: &str, what: &Proc, within: Duration) -> Result<(), String> {
    let client = reqwest::Client::new();
    let started = Instant::now();
    loop {
        if let Ok(r) = client.get(url).timeout(Duration::from_secs(2)).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        if started.elapsed() > within {
            return Err(format!(
                "{} not ready at {url} within {within:?}; its log ends:\n{}",
                what.name,
                what.log_tail()
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn deploy(o: &Options) -> Result<Deployment, String> {
    if !o.app.exists() {
        return Err(format!(
            "no axum-app binary at {}: build it first (`cargo build --release -p axum-app`) or pass --app PATH",
            o.app.display()
        ));
    }
    let pg_hosts: Vec<String> = (0..=o.replicas).map(|i| format!("pg{i}")).collect();
    let redis_hosts: Vec<String> = (1..=3).map(|i| format!("redis{i}")).collect();
    let app_hosts: Vec<String> = (1..=o.app_hosts).map(|i| format!("app{i}")).collect();
    let gw_hosts: Vec<String> = (1..=o.gateways).map(|i| format!("gw{i}")).collect();
    let names: Vec<&str> = pg_hosts
        .iter()
        .chain(&redis_hosts)
        .chain(&app_hosts)
        .chain(&gw_hosts)
        .map(String::as_str)
        .collect();
    let net = Net::new(&names).map_err(|e| format!("network namespaces: {e}"))?;
    let logs = tempfile::tempdir().map_err(|e| format!("log directory: {e}"))?;
    println!(
        "  {} hosts on {} (this process is {})",
        names.len(),
        net.subnet(),
        net.test_ip()
    );

    let replica_hosts: Vec<&str> = pg_hosts[1..].iter().map(String::as_str).collect();
    let redis_on: Vec<&str> = redis_hosts.iter().map(String::as_str).collect();
    let (pg, redis) = tokio::try_join!(
        net.pg_cluster(&pg_hosts[0], &replica_hosts),
        net.redis_cluster(
            RedisCluster::builder()
                .masters(o.redis_masters)
                .replicas_per_master(o.redis_replicas),
            &redis_on
        )
    )
    .map_err(|e| format!("servers: {e}"))?;
    println!(
        "  PostgreSQL primary + {} replicas, Redis Cluster of {} nodes",
        pg.replicas().len(),
        redis.nodes().len()
    );

    let env = [
        ("DATABASE_URL", pg.primary_url()),
        ("REPLICA_URLS", pg.replica_urls().join(",")),
        ("REDIS_CLUSTER_NODES", redis.urls().join(",")),
        ("SESSION_KEY", SESSION_KEY.to_owned()),
    ];
    let mut deployment = Deployment {
        relays: Vec::new(),
        instances: Vec::new(),
        gateways: Vec::new(),
        pg_logs: Vec::new(),
        pg,
        redis,
        net,
        _logs: logs,
    };
    // Every statement into the servers' logs (`log_min_duration_statement = 0`), to count what
    // the monitor sends: pg_stat_database leaves it out (a transaction that reads no table and
    // writes no WAL never flushes its count in PostgreSQL 15).
    for node in deployment.pg.nodes() {
        let url = node.url();
        psql(&url, "ALTER SYSTEM SET log_min_duration_statement = 0")?;
        psql(&url, "SELECT pg_reload_conf()")?;
        let pid = node
            .pid()
            .ok_or_else(|| format!("{}: not running", node.name()))?;
        let log = std::fs::read_link(format!("/proc/{pid}/fd/2"))
            .map_err(|e| format!("{}: its log (stderr of {pid}): {e}", node.name()))?;
        deployment.pg_logs.push(log);
    }
    let logs = deployment._logs.path().to_owned();
    for i in 0..o.instances {
        let host = deployment
            .net
            .host(&app_hosts[i % o.app_hosts])
            .map_err(|e| e.to_string())?
            .clone();
        let port = FIRST_INSTANCE_PORT
            + u16::try_from(i / o.app_hosts).map_err(|_| "too many instances")?;
        let name = format!("instance-{}", i + 1);
        let proc = spawn_on(
            &host,
            &name,
            &o.app,
            &[
                "instance".into(),
                "--port".into(),
                port.to_string(),
                "--name".into(),
                name.clone(),
                "--insecure-cookies".into(),
            ],
            &env,
            &logs,
        )?;
        let ip = host.ip();
        let listener = host
            .run(|| std::net::TcpListener::bind((ip, port)))
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("relay for {name} on {ip}:{port}: {e}"))?;
        let relayed = Arc::new(AtomicU64::new(0));
        deployment.relays.push(tokio::spawn(relay(
            host.clone(),
            listener,
            port,
            Arc::clone(&relayed),
        )));
        let instance = Instance {
            proc,
            host,
            port,
            relayed,
        };
        // The first applies the schema; the rest start together once it is there.
        if i == 0 {
            wait_ready(
                &format!("{}/health/ready", instance.url()),
                &instance.proc,
                Duration::from_secs(120),
            )
            .await?;
        }
        deployment.instances.push(instance);
    }
    for instance in &deployment.instances {
        wait_ready(
            &format!("{}/health/ready", instance.url()),
            &instance.proc,
            Duration::from_secs(180),
        )
        .await?;
    }
    println!("  {} instances ready", deployment.instances.len());

    let test_ip = deployment.net.test_ip().to_string();
    for name in &gw_hosts {
        let host = deployment
            .net
            .host(name)
            .map_err(|e| e.to_string())?
            .clone();
        let mut args = vec![
            "gateway".to_owned(),
            "--listen".into(),
            format!("{}:{GATEWAY_PORT}", host.ip()),
            "--trusted-proxy".into(),
            test_ip.clone(),
            "--admin-network".into(),
            test_ip.clone(),
        ];
        for instance in &deployment.instances {
            args.push("--backend".into());
            args.push(instance.url());
        }
        let proc = spawn_on(&host, &format!("gateway-{name}"), &o.app, &args, &[], &logs)?;
        let url = format!("http://{}:{GATEWAY_PORT}/lb-health", host.ip());
        wait_ready(&url, &proc, Duration::from_secs(60)).await?;
        deployment.gateways.push((proc, host));
    }
    println!("  {} gateways ready", deployment.gateways.len());
    Ok(deployment)
}

/// Interface counters of one `eth0` (or the test link).
#[derive(Debug, Clone, Copy, Default)]
struct Link {
    rx_bytes: u64,
    rx_packets: u64,
    tx_bytes: u64,
    tx_packets: u64,
}

/// The counters of `name` in a `/proc/net/dev` text.
fn parse_net_dev(text: &str, name: &str) -> Option<Link> {
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{name}:")))?;
    let fields: Vec<u64> = line
        .split_once(':')?
        .1
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    Some(Link {
        rx_bytes: *fields.first()?,
        rx_packets: *fields.get(1)?,
        tx_bytes: *fields.get(8)?,
        tx_packets: *fields.get(9)?,
    })
}

fn host_link(host: &Host) -> Link {
    host.run(|| std::fs::read_to_string("/proc/thread-self/net/dev"))
        .ok()
        .and_then(Result::ok)
        .and_then(|t| parse_net_dev(&t, "eth0"))
        .unwrap_or_default()
}

/// One PostgreSQL client backend.
#[derive(Debug, Clone)]
struct Backend {
    pid: u32,
    client: String,
    application: String,
}

#[derive(Debug, Clone, Default)]
struct PgNodeSnap {
    /// Length of the node's server log (every statement is logged during the run).
    log_len: u64,
    transactions: u64,
    backends: Vec<Backend>,
}

fn psql(url: &str, sql: &str) -> Result<String, String> {
    let out = std::process::Command::new("psql")
        .args([url, "-X", "-At", "-F", "\t", "-c", sql])
        .output()
        .map_err(|e| format!("psql: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "psql {url} `{sql}`: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn pg_snapshot(url: &str) -> Result<PgNodeSnap, String> {
    let transactions = psql(
        url,
        "SELECT sum(xact_commit + xact_rollback)::bigint FROM pg_stat_database",
    )?
    .trim()
    .parse()
    .unwrap_or(0);
    let backends = psql(
        url,
        "SELECT pid, coalesce(host(client_addr), 'local'), application_name FROM pg_stat_activity \
         WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
    )?
    .lines()
    .filter_map(|l| {
        let mut f = l.split('\t');
        Some(Backend {
            pid: f.next()?.parse().ok()?,
            client: f.next()?.to_owned(),
            application: f.next().unwrap_or("").to_owned(),
        })
    })
    .collect();
    Ok(PgNodeSnap {
        log_len: 0,
        transactions,
        backends,
    })
}

#[derive(Debug, Clone, Default)]
struct RedisNodeSnap {
    /// `INFO commandstats`: calls per command, and microseconds in it.
    calls: BTreeMap<String, (u64, u64)>,
    net_in: u64,
    net_out: u64,
    connections_received: u64,
    connected_clients: u64,
    used_memory_rss: u64,
    /// `CLIENT LIST`: connections by client address.
    clients_by_ip: BTreeMap<String, u64>,
    bus_sent: u64,
}

fn redis_cli(ip: Ipv4Addr, port: u16, args: &[&str]) -> Result<String, String> {
    let out = std::process::Command::new("redis-cli")
        .args(["-h", &ip.to_string(), "-p", &port.to_string()])
        .args(args)
        .output()
        .map_err(|e| format!("redis-cli: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "redis-cli {ip}:{port} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `key:value` lines of an `INFO`-shaped reply.
fn info_fields(text: &str) -> BTreeMap<&str, &str> {
    text.lines()
        .filter_map(|l| l.trim().split_once(':'))
        .collect()
}

fn redis_snapshot(ip: Ipv4Addr, port: u16) -> Result<RedisNodeSnap, String> {
    let info = redis_cli(ip, port, &["INFO", "all"])?;
    let fields = info_fields(&info);
    let num = |k: &str| {
        fields
            .get(k)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let mut calls = BTreeMap::new();
    for (k, v) in &fields {
        if let Some(command) = k.strip_prefix("cmdstat_") {
            let part = |name: &str| {
                v.split(',')
                    .find_map(|p| p.strip_prefix(&format!("{name}=")))
                    .and_then(|n| n.parse::<f64>().ok())
                    .unwrap_or(0.0)
            };
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            calls.insert(
                command.to_owned(),
                (part("calls") as u64, part("usec") as u64),
            );
        }
    }
    let mut clients_by_ip = BTreeMap::new();
    for line in redis_cli(ip, port, &["CLIENT", "LIST"])?.lines() {
        // `id=.. addr=IP:PORT laddr=.. ...`; the bus' own links are not clients.
        if let Some(addr) = line.split(' ').find_map(|f| f.strip_prefix("addr="))
            && let Some((client, _)) = addr.rsplit_once(':')
        {
            *clients_by_ip.entry(client.to_owned()).or_insert(0) += 1;
        }
    }
    let cluster = redis_cli(ip, port, &["CLUSTER", "INFO"])?;
    let cfields = info_fields(&cluster);
    let cnum = |k: &str| {
        cfields
            .get(k)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok(RedisNodeSnap {
        calls,
        net_in: num("total_net_input_bytes"),
        net_out: num("total_net_output_bytes"),
        connections_received: num("total_connections_received"),
        connected_clients: num("connected_clients"),
        used_memory_rss: num("used_memory_rss"),
        clients_by_ip,
        bus_sent: cnum("cluster_stats_messages_sent"),
    })
}

/// `VmRSS` of `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    kib_field(&format!("/proc/{pid}/status"), "VmRSS:")
}

/// Private memory (clean + dirty) of `pid` in KiB: what one PostgreSQL backend adds.
fn private_kib(pid: u32) -> u64 {
    let path = format!("/proc/{pid}/smaps_rollup");
    kib_field(&path, "Private_Clean:") + kib_field(&path, "Private_Dirty:")
}

fn kib_field(path: &str, field: &str) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// `herd_http_requests_total` of route `/health/ready` in a Prometheus text.
fn ready_requests(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("herd_http_requests_total{") && l.contains("route=\"/health/ready\"")
        })
        .filter_map(|l| l.rsplit(' ').next())
        .filter_map(|v| v.parse::<f64>().ok())
        .map(|v| {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let n = v as u64;
            n
        })
        .sum()
}

#[derive(Debug, Clone)]
struct InstanceSnap {
    ready_checks: u64,
    rss_kib: u64,
    relayed: u64,
}

/// All counters at one moment.
#[derive(Debug, Clone)]
struct Snapshot {
    at: Instant,
    links: BTreeMap<String, Link>,
    test_link: Link,
    pg: Vec<PgNodeSnap>,
    redis: Vec<RedisNodeSnap>,
    instances: Vec<InstanceSnap>,
    gateway_rss_kib: Vec<u64>,
}

async fn snapshot(d: &Deployment, http: &reqwest::Client) -> Result<Snapshot, String> {
    // Interface counters first, so the snapshot's own queries fall into the window that follows
    // (at most a few kB a node; the test link's row shows them).
    let at = Instant::now();
    let links = d
        .net
        .hosts()
        .iter()
        .map(|h| (h.name().to_owned(), host_link(h)))
        .collect();
    let test_link = std::fs::read_to_string("/proc/net/dev")
        .ok()
        .and_then(|t| parse_net_dev(&t, d.net.test_link()))
        .unwrap_or_default();
    let mut instances = Vec::new();
    for i in &d.instances {
        let metrics = http
            .get(format!("{}/metrics", i.url()))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .map_err(|e| format!("{} /metrics: {e}", i.proc.name))?
            .text()
            .await
            .map_err(|e| format!("{} /metrics: {e}", i.proc.name))?;
        instances.push(InstanceSnap {
            ready_checks: ready_requests(&metrics),
            rss_kib: rss_kib(i.proc.pid()),
            relayed: i.relayed.load(Ordering::Relaxed),
        });
    }
    let pg_urls: Vec<String> = d.pg.nodes().map(herd_testkit::PgNode::url).collect();
    let redis_addrs: Vec<(Ipv4Addr, u16)> =
        d.redis.nodes().iter().map(|n| (n.ip(), n.port())).collect();
    let pg_logs = d.pg_logs.clone();
    let (pg, redis) = tokio::task::spawn_blocking(move || {
        let mut pg = Vec::new();
        for (url, log) in pg_urls.iter().zip(&pg_logs) {
            // The log's length first: the snapshot's own statements then fall after it, and are
            // told apart by what they read.
            let log_len = std::fs::metadata(log).map_or(0, |m| m.len());
            pg.push(PgNodeSnap {
                log_len,
                ..pg_snapshot(url)?
            });
        }
        let redis = redis_addrs
            .iter()
            .map(|(ip, port)| redis_snapshot(*ip, *port))
            .collect::<Result<Vec<_>, _>>()?;
        Ok::<_, String>((pg, redis))
    })
    .await
    .map_err(|e| format!("snapshot: {e}"))??;
    Ok(Snapshot {
        at,
        links,
        test_link,
        pg,
        redis,
        instances,
        gateway_rss_kib: d.gateways.iter().map(|(p, _)| rss_kib(p.pid())).collect(),
    })
}

/// What the load did.
#[derive(Debug, Default)]
struct LoadCount {
    ok: AtomicU64,
    failed: AtomicU64,
}

/// Signs up `users` users through the gateways in turn; each gets its own client address
/// (`X-Forwarded-For`, believed from this process) so the sign-up limit is per user.
async fn sign_up(d: &Deployment, users: usize) -> Result<Vec<(reqwest::Client, String)>, String> {
    let mut out = Vec::new();
    for u in 0..users {
        let mut headers = reqwest::header::HeaderMap::new();
        let ip = format!("10.1.{}.{}", u / 250, u % 250 + 1);
        headers.insert(
            "x-forwarded-for",
            ip.parse().map_err(|_| "client address header")?,
        );
        let client = reqwest::Client::builder()
            .cookie_store(true)
            .default_headers(headers)
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| format!("http client: {e}"))?;
        let (_, gw) = &d.gateways[u % d.gateways.len()];
        let base = format!("http://{}:{GATEWAY_PORT}", gw.ip());
        let r = client
            .post(format!("{base}/api/auth/signup"))
            .json(&serde_json::json!({
                "username": format!("scale-{}-{u}", std::process::id()),
                "password": "correct horse battery",
            }))
            .send()
            .await
            .map_err(|e| format!("sign-up through {base}: {e}"))?;
        if r.status() != 201 {
            return Err(format!("sign-up through {base}: {}", r.status()));
        }
        out.push((client, base));
    }
    Ok(out)
}

/// Each user sends `rate / users` requests a second until aborted: `GET /api/notes`, every fifth a
/// `POST /api/notes`.
fn start_load(
    users: Vec<(reqwest::Client, String)>,
    rate: f64,
    count: &Arc<LoadCount>,
) -> Vec<tokio::task::JoinHandle<()>> {
    #[allow(clippy::cast_precision_loss)]
    let per_user = rate / users.len().max(1) as f64;
    let gap = Duration::from_secs_f64(1.0 / per_user);
    users
        .into_iter()
        .enumerate()
        .map(|(u, (client, base))| {
            let count = Arc::clone(count);
            tokio::spawn(async move {
                // Users start spread over one gap, not in lockstep.
                #[allow(clippy::cast_precision_loss)]
                tokio::time::sleep(gap.mul_f64(u as f64 / 8.0 % 1.0)).await;
                let mut ticker = tokio::time::interval(gap);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut i = 0_u64;
                loop {
                    ticker.tick().await;
                    i += 1;
                    let sent = if i.is_multiple_of(5) {
                        client
                            .post(format!("{base}/api/notes"))
                            .json(&serde_json::json!({ "body": format!("note {i}") }))
                            .send()
                            .await
                    } else {
                        client.get(format!("{base}/api/notes")).send().await
                    };
                    match sent {
                        Ok(r) if r.status().is_success() => {
                            let _ = r.bytes().await;
                            count.ok.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {
                            count.failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect()
}

/// Per-second rates and per-unit figures between two snapshots.
struct Window<'a> {
    name: &'a str,
    a: &'a Snapshot,
    b: &'a Snapshot,
}

impl Window<'_> {
    fn secs(&self) -> f64 {
        self.b.at.duration_since(self.a.at).as_secs_f64()
    }

    fn per_sec(&self, a: u64, b: u64) -> f64 {
        #[allow(clippy::cast_precision_loss)]
        let d = b.saturating_sub(a) as f64;
        d / self.secs()
    }

    /// Bytes/s and packets/s in and out of the hosts whose names start with `prefix`, averaged
    /// over those hosts.
    fn link_rates(&self, prefix: &str) -> (f64, f64, f64, f64, usize) {
        let mut sums = (0.0, 0.0, 0.0, 0.0);
        let mut n = 0;
        for (name, b) in &self.b.links {
            if !name.starts_with(prefix) {
                continue;
            }
            let a = self.a.links.get(name).copied().unwrap_or_default();
            sums.0 += self.per_sec(a.rx_bytes, b.rx_bytes);
            sums.1 += self.per_sec(a.tx_bytes, b.tx_bytes);
            sums.2 += self.per_sec(a.rx_packets, b.rx_packets);
            sums.3 += self.per_sec(a.tx_packets, b.tx_packets);
            n += 1;
        }
        #[allow(clippy::cast_precision_loss)]
        let k = n.max(1) as f64;
        (sums.0 / k, sums.1 / k, sums.2 / k, sums.3 / k, n)
    }

    /// Statements node `node` logged in the window: (monitor checks, LSN reads, others), each
    /// per second. This program's own statements are left out.
    fn pg_statements(&self, node: usize, log: &Path) -> (f64, f64, f64) {
        let from = self.a.pg.get(node).map_or(0, |p| p.log_len);
        let to = self.b.pg.get(node).map_or(0, |p| p.log_len);
        let text = read_range(log, from, to);
        let (mut monitor, mut lsn, mut other) = (0_u64, 0_u64, 0_u64);
        for line in text.lines() {
            // `duration: .. ms  execute <name>: SQL` (extended protocol) or `statement: SQL`.
            let Some(sql) = line
                .split_once("  execute ")
                .and_then(|(_, r)| r.split_once(": "))
                .map(|(_, sql)| sql)
                .or_else(|| line.split_once("  statement: ").map(|(_, sql)| sql))
            else {
                continue;
            };
            if sql.contains("pg_stat_database")
                || sql.contains("pg_stat_activity")
                || sql.contains("pg_reload_conf")
                || sql.starts_with("SHOW ")
            {
                continue;
            } else if sql.contains("pg_is_in_recovery()") {
                monitor += 1;
            } else if sql.trim() == "SELECT pg_current_wal_lsn()::text"
                || sql.trim() == "SELECT pg_last_wal_replay_lsn()::text"
            {
                lsn += 1;
            } else {
                other += 1;
            }
        }
        (
            self.per_sec(0, monitor),
            self.per_sec(0, lsn),
            self.per_sec(0, other),
        )
    }

    fn pg_transactions(&self, node: usize) -> f64 {
        let get = |s: &Snapshot| s.pg.get(node).map_or(0, |p| p.transactions);
        self.per_sec(get(self.a), get(self.b))
    }

    /// Redis calls/s per command, summed over all nodes, and microseconds per call.
    fn redis_calls(&self) -> BTreeMap<String, (f64, f64)> {
        let mut out: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for (i, b) in self.b.redis.iter().enumerate() {
            for (command, (calls, usec)) in &b.calls {
                let (ca, ua) = self
                    .a
                    .redis
                    .get(i)
                    .and_then(|a| a.calls.get(command))
                    .copied()
                    .unwrap_or((0, 0));
                let e = out.entry(command.clone()).or_default();
                e.0 += calls.saturating_sub(ca);
                e.1 += usec.saturating_sub(ua);
            }
        }
        out.into_iter()
            .filter(|(_, (c, _))| *c > 0)
            .map(|(k, (c, u))| {
                #[allow(clippy::cast_precision_loss)]
                let per_call = u as f64 / c as f64;
                (k, (self.per_sec(0, c), per_call))
            })
            .collect()
    }
}

/// Bytes `from..to` of `path` as text (empty when unreadable).
fn read_range(path: &Path, from: u64, to: u64) -> String {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let Ok(mut file) = std::fs::File::open(path) else {
        return String::new();
    };
    if file.seek(SeekFrom::Start(from)).is_err() {
        return String::new();
    }
    let mut bytes = Vec::new();
    let _ = file.take(to.saturating_sub(from)).read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}

fn kib(bytes_per_sec: f64) -> String {
    format!("{:.2} kB/s", bytes_per_sec / 1000.0)
}

fn mib(kib: f64) -> String {
    format!("{:.1} MiB", kib / 1024.0)
}

#[allow(clippy::cast_precision_loss, clippy::too_many_lines)]
fn report(o: &Options, d: &Deployment, w: &Window<'_>, out: &mut String) -> Measured {
    let n_inst = d.instances.len() as f64;
    let n_gw = d.gateways.len() as f64;
    let n_pg = d.pg.nodes().count() as f64;
    let n_redis = d.redis.nodes().len() as f64;
    let _ = writeln!(out, "\n## {} window: {:.1} s\n", w.name, w.secs());
    let _ = writeln!(out, "| figure | value | read from |");
    let _ = writeln!(out, "|---|---|---|");
    let mut row = |figure: String, value: String, from: &str| {
        let _ = writeln!(out, "| {figure} | {value} | {from} |");
    };

    // Gateway checks.
    let checks: u64 =
        w.b.instances
            .iter()
            .zip(&w.a.instances)
            .map(|(b, a)| b.ready_checks.saturating_sub(a.ready_checks))
            .sum();
    let checks_per_sec = checks as f64 / w.secs();
    row(
        "health checks answered, all instances".into(),
        format!(
            "{checks_per_sec:.1} /s ({:.2} /s per instance, {:.1} /s sent per gateway)",
            checks_per_sec / n_inst,
            checks_per_sec / n_gw
        ),
        "instances' /metrics, herd_http_requests_total{route=\"/health/ready\"}",
    );
    let relayed: u64 =
        w.b.instances
            .iter()
            .zip(&w.a.instances)
            .map(|(b, a)| b.relayed.saturating_sub(a.relayed))
            .sum();
    row(
        "HTTP bytes to and from the instances (connections closed in the window)".into(),
        kib(relayed as f64 / w.secs()),
        "this program's relays",
    );
    let (gw_rx, gw_tx, gw_rxp, gw_txp, _) = w.link_rates("gw");
    row(
        "per gateway host: in / out".into(),
        format!(
            "{} / {} ({:.0} / {:.0} packets/s)",
            kib(gw_rx),
            kib(gw_tx),
            gw_rxp,
            gw_txp
        ),
        "eth0 in the host's namespace (/proc/net/dev)",
    );
    let (app_rx, app_tx, app_rxp, app_txp, app_hosts) = w.link_rates("app");
    let per_host = n_inst / app_hosts.max(1) as f64;
    row(
        "per instance: in / out".into(),
        format!(
            "{} / {} ({:.0} / {:.0} packets/s)",
            kib(app_rx / per_host),
            kib(app_tx / per_host),
            app_rxp / per_host,
            app_txp / per_host
        ),
        "application hosts' eth0 ÷ instances on each",
    );

    // PostgreSQL.
    let mut db_per_instance_node = Vec::new();
    for (i, name) in d.pg.nodes().map(|n| n.name().to_owned()).enumerate() {
        let tps = w.pg_transactions(i);
        let (monitor, lsn, other) = d
            .pg_logs
            .get(i)
            .map_or((0.0, 0.0, 0.0), |log| w.pg_statements(i, log));
        db_per_instance_node.push(monitor / n_inst);
        row(
            format!("PostgreSQL {name}: statements, monitor / LSN reads / others"),
            format!(
                "{monitor:.1} / {lsn:.1} / {other:.1} /s ({:.2} monitor checks /s per instance); transactions counted {tps:.1} /s",
                monitor / n_inst
            ),
            "the server's statement log (log_min_duration_statement = 0); pg_stat_database xact_commit + xact_rollback",
        );
    }
    let (pg_rx, pg_tx, _, _, _) = w.link_rates("pg");
    row(
        "per PostgreSQL host: in / out".into(),
        format!("{} / {}", kib(pg_rx), kib(pg_tx)),
        "eth0",
    );

    // Connections to PostgreSQL at the window's end, by instance host and application name.
    let app_ips: BTreeMap<String, String> = d
        .net
        .hosts()
        .iter()
        .filter(|h| h.name().starts_with("app"))
        .map(|h| (h.ip().to_string(), h.name().to_owned()))
        .collect();
    let mut pool_conns = 0_u64;
    let mut monitor_conns = 0_u64;
    let mut backend_private = Vec::new();
    let mut max_per_node = 0_u64;
    for node in &w.b.pg {
        let mut on_node = 0;
        for b in node
            .backends
            .iter()
            .filter(|b| app_ips.contains_key(&b.client))
        {
            on_node += 1;
            if b.application.ends_with("monitor") {
                monitor_conns += 1;
            } else {
                pool_conns += 1;
            }
            backend_private.push(private_kib(b.pid));
        }
        max_per_node = max_per_node.max(on_node);
    }
    row(
        "connections to PostgreSQL, all instances, all nodes: pool / monitor".into(),
        format!(
            "{pool_conns} / {monitor_conns} ({:.2} pool + {:.2} monitor per instance per node; busiest node {max_per_node})",
            pool_conns as f64 / n_inst / n_pg,
            monitor_conns as f64 / n_inst / n_pg
        ),
        "pg_stat_activity by client_addr and application_name",
    );
    let avg_private = if backend_private.is_empty() {
        0.0
    } else {
        backend_private.iter().sum::<u64>() as f64 / backend_private.len() as f64
    };
    row(
        "private memory per PostgreSQL backend (mean)".into(),
        mib(avg_private),
        "/proc/PID/smaps_rollup Private_Clean + Private_Dirty",
    );

    // Redis.
    let calls = w.redis_calls();
    let total_calls: f64 = calls.values().map(|(c, _)| c).sum();
    let mut listed: Vec<(&String, &(f64, f64))> = calls.iter().collect();
    listed.sort_by(|x, y| y.1.0.total_cmp(&x.1.0));
    let by_command = listed
        .iter()
        .take(8)
        // `cluster|slots`: the bar escaped, since the rows are a Markdown table.
        .map(|(k, (c, u))| format!("{} {c:.1}/s ({u:.0} µs)", k.replace('|', "\\|")))
        .collect::<Vec<_>>()
        .join(", ");
    row(
        "Redis commands, all nodes".into(),
        format!(
            "{total_calls:.1} /s ({:.2} /s per instance): {by_command}",
            total_calls / n_inst
        ),
        "INFO commandstats (calls, usec_per_call)",
    );
    let slots = calls.get("cluster|slots").map_or(0.0, |c| c.0);
    let shards = calls.get("cluster|shards").map_or(0.0, |c| c.0);
    row(
        "topology reads (CLUSTER SLOTS + CLUSTER SHARDS)".into(),
        format!(
            "{slots:.2} + {shards:.2} /s ({:.3} /s per instance)",
            (slots + shards) / n_inst
        ),
        "INFO commandstats",
    );
    let client_in: f64 =
        w.b.redis
            .iter()
            .zip(&w.a.redis)
            .map(|(b, a)| w.per_sec(a.net_in, b.net_in))
            .sum::<f64>();
    let client_out: f64 =
        w.b.redis
            .iter()
            .zip(&w.a.redis)
            .map(|(b, a)| w.per_sec(a.net_out, b.net_out))
            .sum::<f64>();
    row(
        "Redis client bytes, all nodes: in / out".into(),
        format!(
            "{} / {} ({} / {} per instance)",
            kib(client_in),
            kib(client_out),
            kib(client_in / n_inst),
            kib(client_out / n_inst)
        ),
        "INFO stats total_net_input_bytes / total_net_output_bytes",
    );
    let bus: f64 =
        w.b.redis
            .iter()
            .zip(&w.a.redis)
            .map(|(b, a)| w.per_sec(a.bus_sent, b.bus_sent))
            .sum::<f64>();
    let (r_rx, r_tx, _, _, redis_hosts) = w.link_rates("redis");
    row(
        "Redis Cluster bus messages sent, per node".into(),
        format!("{:.1} /s", bus / n_redis),
        "CLUSTER INFO cluster_stats_messages_sent",
    );
    row(
        "per Redis node, interface: in / out".into(),
        format!(
            "{} / {}",
            kib(r_rx * redis_hosts as f64 / n_redis),
            kib(r_tx * redis_hosts as f64 / n_redis)
        ),
        "Redis hosts' eth0 ÷ nodes on each (client and bus traffic)",
    );
    let accepted: f64 =
        w.b.redis
            .iter()
            .zip(&w.a.redis)
            .map(|(b, a)| w.per_sec(a.connections_received, b.connections_received))
            .sum::<f64>();
    row(
        "new Redis connections accepted, all nodes".into(),
        format!(
            "{accepted:.2} /s ({:.3} /s per instance)",
            accepted / n_inst
        ),
        "INFO stats total_connections_received",
    );
    let mut redis_conns = 0_u64;
    let mut redis_conns_max_node = 0_u64;
    for node in &w.b.redis {
        let n: u64 = node
            .clients_by_ip
            .iter()
            .filter(|(ip, _)| app_ips.contains_key(*ip))
            .map(|(_, c)| c)
            .sum();
        redis_conns += n;
        redis_conns_max_node = redis_conns_max_node.max(n);
    }
    let redis_conns_per_instance_node = redis_conns as f64 / n_inst / n_redis;
    row(
        "connections to Redis from instances".into(),
        format!(
            "{redis_conns} ({redis_conns_per_instance_node:.2} per instance per node; busiest node {redis_conns_max_node}; connected_clients on the nodes {})",
            w.b.redis
                .iter()
                .map(|r| r.connected_clients.to_string())
                .collect::<Vec<_>>()
                .join(" ")
        ),
        "CLIENT LIST by addr",
    );
    let redis_rss: f64 =
        w.b.redis
            .iter()
            .map(|r| r.used_memory_rss as f64)
            .sum::<f64>()
            / n_redis;
    row(
        "Redis node memory (mean RSS)".into(),
        mib(redis_rss / 1024.0),
        "INFO memory used_memory_rss",
    );

    // Memory.
    let rss: Vec<u64> = w.b.instances.iter().map(|i| i.rss_kib).collect();
    let mean_rss = rss.iter().sum::<u64>() as f64 / n_inst;
    row(
        "instance memory (RSS): mean, min–max".into(),
        format!(
            "{} ({}–{})",
            mib(mean_rss),
            mib(rss.iter().copied().min().unwrap_or(0) as f64),
            mib(rss.iter().copied().max().unwrap_or(0) as f64)
        ),
        "/proc/PID/status VmRSS",
    );
    let gw_rss = w.b.gateway_rss_kib.iter().sum::<u64>() as f64 / n_gw;
    row(
        "gateway memory (RSS), mean".into(),
        mib(gw_rss),
        "/proc/PID/status VmRSS",
    );
    let test_rx = w.per_sec(w.a.test_link.rx_bytes, w.b.test_link.rx_bytes);
    let test_tx = w.per_sec(w.a.test_link.tx_bytes, w.b.test_link.tx_bytes);
    row(
        "this program's link (load, snapshots): in / out".into(),
        format!("{} / {}", kib(test_rx), kib(test_tx)),
        "the test veth in the root namespace",
    );
    let _ = o;
    Measured {
        checks_per_sec_per_gateway_per_instance: checks_per_sec / n_gw / n_inst,
        app_bytes_per_instance: (app_rx + app_tx) / per_host,
        db_tps_per_instance_node: db_per_instance_node,
        pool_per_instance_node: pool_conns as f64 / n_inst / n_pg,
        monitor_per_instance_node: monitor_conns as f64 / n_inst / n_pg,
        redis_calls_per_instance: total_calls / n_inst,
        topology_reads_per_instance: (slots + shards) / n_inst,
        topology_usec: calls.get("cluster|slots").map_or(0.0, |c| c.1),
        redis_conns_per_instance_node,
        instance_rss_kib: mean_rss,
        gateway_rss_kib: gw_rss,
        backend_private_kib: avg_private,
        bus_per_node: bus / n_redis,
    }
}

/// The per-unit figures the model multiplies.
#[derive(Debug, Clone)]
struct Measured {
    checks_per_sec_per_gateway_per_instance: f64,
    app_bytes_per_instance: f64,
    db_tps_per_instance_node: Vec<f64>,
    pool_per_instance_node: f64,
    monitor_per_instance_node: f64,
    redis_calls_per_instance: f64,
    topology_reads_per_instance: f64,
    topology_usec: f64,
    redis_conns_per_instance_node: f64,
    instance_rss_kib: f64,
    gateway_rss_kib: f64,
    backend_private_kib: f64,
    bus_per_node: f64,
}

#[allow(clippy::cast_precision_loss)]
fn model(o: &Options, d: &Deployment, idle: &Measured, load: &Measured, out: &mut String) {
    let (n, r, rn, g) = (
        o.model_instances,
        o.model_replicas,
        o.model_redis_nodes,
        o.model_gateways,
    );
    let pg_nodes = r + 1.0;
    let _ = writeln!(
        out,
        "\n## Model: {n} instances × {pg_nodes} PostgreSQL nodes (primary + {r}) × {rn} Redis nodes × {g} gateways\n"
    );
    let _ = writeln!(out, "| figure | demo settings | formula |");
    let _ = writeln!(out, "|---|---|---|");
    let mut row = |figure: &str, value: String, formula: String| {
        let _ = writeln!(out, "| {figure} | {value} | {formula} |");
    };
    let per_gw_inst = idle.checks_per_sec_per_gateway_per_instance;
    row(
        "health checks sent per gateway",
        format!("{:.0} /s", per_gw_inst * n),
        format!(
            "instances × {per_gw_inst:.2}/s measured (1 / {:?} interval + jitter)",
            DEMO_GATEWAY_CHECK_INTERVAL
        ),
    );
    row(
        "health checks answered per instance",
        format!("{:.1} /s", per_gw_inst * g),
        format!("gateways × {per_gw_inst:.2}/s"),
    );
    let per_node_monitor = idle
        .db_tps_per_instance_node
        .iter()
        .skip(1)
        .copied()
        .fold(0.0, f64::max);
    row(
        "monitor queries per PostgreSQL replica",
        format!("{:.0} /s", per_node_monitor * n),
        format!(
            "instances × {per_node_monitor:.2}/s measured idle (1 / {DEMO_DB_CHECK_INTERVAL:?} check_interval); primary {:.2}/s per instance",
            idle.db_tps_per_instance_node
                .first()
                .copied()
                .unwrap_or(0.0)
        ),
    );
    row(
        "monitor queries, all nodes",
        format!("{:.0} /s", per_node_monitor * n * pg_nodes),
        "instances × nodes × per-instance rate".into(),
    );
    let max_conn =
        d.pg.nodes()
            .next()
            .and_then(|p| psql(&p.url(), "SHOW max_connections").ok())
            .and_then(|t| t.trim().parse::<f64>().ok())
            .unwrap_or(100.0);
    row(
        "PostgreSQL connections per node, measured steady state",
        format!(
            "{:.0} (pool {:.2} + monitor {:.2} per instance, loaded window)",
            n * (load.pool_per_instance_node + load.monitor_per_instance_node),
            load.pool_per_instance_node,
            load.monitor_per_instance_node
        ),
        format!("this run's max_connections: {max_conn}; PostgreSQL's default 100"),
    );
    row(
        "PostgreSQL connections per node, pools full",
        format!("{:.0}", n * (POOL_MAX_CONNECTIONS as f64 + 1.0)),
        format!("instances × (pool.max_connections {POOL_MAX_CONNECTIONS} + 1 monitor)"),
    );
    row(
        "Redis connections per node",
        format!(
            "{:.0}",
            n * idle
                .redis_conns_per_instance_node
                .max(load.redis_conns_per_instance_node)
        ),
        format!(
            "instances × {:.2} measured per instance per node (maxclients default 10000)",
            idle.redis_conns_per_instance_node
                .max(load.redis_conns_per_instance_node)
        ),
    );
    row(
        "topology reads (CLUSTER SLOTS), all nodes",
        format!(
            "{:.0} /s, ≈ {:.1} ms of Redis CPU per second spread over the nodes (per call {:.0} µs at {} nodes; the reply grows with the masters)",
            idle.topology_reads_per_instance * n,
            idle.topology_reads_per_instance * n * idle.topology_usec / 1000.0 * rn
                / d.redis.nodes().len() as f64,
            idle.topology_usec,
            d.redis.nodes().len()
        ),
        format!(
            "instances × {:.2}/s measured; per-call cost scaled by nodes",
            idle.topology_reads_per_instance
        ),
    );
    row(
        "Redis background commands, all nodes (idle)",
        format!("{:.0} /s", idle.redis_calls_per_instance * n),
        format!(
            "instances × {:.2}/s measured idle",
            idle.redis_calls_per_instance
        ),
    );
    let nodes_now = d.redis.nodes().len() as f64;
    row(
        "Redis Cluster bus messages sent per node",
        format!(
            "≈ {:.0} /s",
            idle.bus_per_node * (rn - 1.0) / (nodes_now - 1.0).max(1.0)
        ),
        format!(
            "{:.1}/s measured at {nodes_now} nodes × (nodes − 1) / ({nodes_now} − 1): with cluster-node-timeout 2 s each node pings every other about once a second",
            idle.bus_per_node
        ),
    );
    row(
        "instances' background traffic, all instances (idle)",
        kib(idle.app_bytes_per_instance * n),
        format!(
            "instances × {} measured per instance at {} gateways (checks, monitor, Redis)",
            kib(idle.app_bytes_per_instance),
            d.gateways.len()
        ),
    );
    row(
        "memory, all instances",
        format!(
            "{} (+ {} for the gateways)",
            mib(idle.instance_rss_kib.max(load.instance_rss_kib) * n),
            mib(idle.gateway_rss_kib.max(load.gateway_rss_kib) * g)
        ),
        format!(
            "instances × {} measured RSS",
            mib(idle.instance_rss_kib.max(load.instance_rss_kib))
        ),
    );
    row(
        "PostgreSQL backend memory per node, pools full",
        mib(n
            * (POOL_MAX_CONNECTIONS as f64 + 1.0)
            * load.backend_private_kib.max(idle.backend_private_kib)),
        format!(
            "connections × {} private per backend measured",
            mib(load.backend_private_kib.max(idle.backend_private_kib))
        ),
    );
}

async fn run(o: Options) -> Result<(), String> {
    let started = Instant::now();
    println!("scale-model: starting the deployment (options: {o:?})");
    let d = deploy(&o).await?;
    let http = reqwest::Client::new();
    let users = sign_up(&d, o.users).await?;
    println!(
        "  {} users signed up; settling for {:?}",
        users.len(),
        o.settle
    );
    tokio::time::sleep(o.settle).await;

    let idle_a = snapshot(&d, &http).await?;
    println!("  idle window: {:?}", o.idle);
    tokio::time::sleep(o.idle).await;
    let idle_b = snapshot(&d, &http).await?;

    let count = Arc::new(LoadCount::default());
    let load = start_load(users, o.rate, &count);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let load_a = snapshot(&d, &http).await?;
    let (ok_a, failed_a) = (
        count.ok.load(Ordering::Relaxed),
        count.failed.load(Ordering::Relaxed),
    );
    println!("  load window: {:?} at {} requests/s", o.load, o.rate);
    tokio::time::sleep(o.load).await;
    let load_b = snapshot(&d, &http).await?;
    let (ok_b, failed_b) = (
        count.ok.load(Ordering::Relaxed),
        count.failed.load(Ordering::Relaxed),
    );
    for task in &load {
        task.abort();
    }

    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n# scale-model: {} instances on {} hosts, {} gateways, PostgreSQL primary + {} replicas, Redis Cluster of {} nodes",
        d.instances.len(),
        o.app_hosts,
        d.gateways.len(),
        d.pg.replicas().len(),
        d.redis.nodes().len()
    );
    let _ = writeln!(
        out,
        "demo settings: gateway checks every {DEMO_GATEWAY_CHECK_INTERVAL:?} (+ up to 10 % jitter), db-router check_interval {DEMO_DB_CHECK_INTERVAL:?}, cache topology refresh 1 s"
    );
    let idle = report(
        &o,
        &d,
        &Window {
            name: "idle",
            a: &idle_a,
            b: &idle_b,
        },
        &mut out,
    );
    let lw = Window {
        name: "loaded",
        a: &load_a,
        b: &load_b,
    };
    #[allow(clippy::cast_precision_loss)]
    let _ = writeln!(
        out,
        "\nload: {:.1} requests/s answered 2xx, {} failed, in the loaded window",
        (ok_b - ok_a) as f64 / lw.secs(),
        failed_b - failed_a
    );
    let loaded = report(&o, &d, &lw, &mut out);
    model(&o, &d, &idle, &loaded, &mut out);
    let _ = writeln!(
        out,
        "\n(total run {:.0} s; everything started is removed now)",
        started.elapsed().as_secs_f64()
    );
    print!("{out}");
    drop(d);
    Ok(())
}

fn main() -> ExitCode {
    let o = match options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("scale-model: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("scale-model: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(o)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("scale-model: {e}");
            ExitCode::FAILURE
        }
    }
}
