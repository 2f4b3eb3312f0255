//! Run with: `cargo run -p axum-app`
//!
//! With no arguments (`all`): starts a throwaway PostgreSQL primary + replica and a 6-node Redis
//! Cluster (or uses `DATABASE_URL`, `REPLICA_URLS`, `REDIS_CLUSTER_NODES`/`REDIS_URL`), 3 app
//! instances on 127.0.0.1:3001-3003 and the gateway on 127.0.0.1:8080, and cleans up on Ctrl-C.
//! `axum-app instance --port 3001` and `axum-app gateway --backend ... --backend ...` run the
//! pieces as separate processes, as the deployment guides do.
#![allow(clippy::print_stdout)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use axum_app::gateway::{GatewayConfig, Policy};
use axum_app::instance::{self, InstanceConfig};
use axum_app::topology::{RedisTarget, Topology};
use clap::{Parser, Subcommand};
use herd_session::SigningKeys;

/// mimalloc: a proxied request makes a few dozen short-lived allocations (hyper's buffers and
/// header maps, futures), which it serves in a fraction of glibc malloc's time.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    version,
    about = "herd's demo: a gateway, 3 stateless instances, PostgreSQL primary/replica, Redis Cluster"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Everything on this machine (the default).
    All {
        /// Gateway port (0: any free port).
        #[arg(long, default_value_t = 8080)]
        gateway_port: u16,
        /// First instance port; the 3 instances use it and the next two (0: any free ports).
        #[arg(long, default_value_t = 3001)]
        first_instance_port: u16,
        /// Balancing policy of the gateway.
        #[arg(long, value_enum, default_value_t = Policy::P2c)]
        policy: Policy,
    },
    /// One app instance; back ends from DATABASE_URL, REPLICA_URLS, REDIS_CLUSTER_NODES or REDIS_URL.
    Instance {
        /// Port to listen on.
        #[arg(long, env = "INSTANCE_PORT")]
        port: u16,
        /// Address to listen on: loopback by default; `0.0.0.0` in a container, where the
        /// gateway and Prometheus connect from other hosts.
        #[arg(long, env = "INSTANCE_HOST", default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
        host: IpAddr,
        /// Name shown by /api/whoami (default instance-PORT).
        #[arg(long, env = "INSTANCE_NAME")]
        name: Option<String>,
        /// Session signing key shared by all instances (base64, at least 32 bytes);
        /// without one, a fresh key is used and sessions work on this instance only.
        #[arg(long, env = "SESSION_KEY", hide_env_values = true)]
        session_key: Option<String>,
        /// Session cookies without `Secure` (and without the `__Host-` name), for plain-HTTP
        /// local tries only: behind TLS, leave it off.
        #[arg(long)]
        insecure_cookies: bool,
    },
    /// The gateway in front of running instances.
    Gateway {
        /// Listen address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// A backend base URL (repeat for each instance), e.g. http://127.0.0.1:3001.
        #[arg(long = "backend", required = true)]
        backends: Vec<String>,
        /// Balancing policy.
        #[arg(long, value_enum, default_value_t = Policy::P2c)]
        policy: Policy,
        /// A proxy in front of the gateway (IP or CIDR; repeat for each) whose
        /// `X-Forwarded-For` is believed for the client IP that rate limits key on.
        #[arg(long = "trusted-proxy")]
        trusted_proxies: Vec<String>,
        /// A network (IP or CIDR; repeat for each) whose connections may reach `/admin`,
        /// `/lb-health` and the instances' `/metrics` and `/health*` (default: loopback).
        #[arg(long = "admin-network")]
        admin_networks: Vec<String>,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,axum_app=info".into()),
        )
        .init();
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::All {
        gateway_port: 8080,
        first_instance_port: 3001,
        policy: Policy::P2c,
    }) {
        Command::All {
            gateway_port,
            first_instance_port,
            policy,
        } => run_all(gateway_port, first_instance_port, policy).await,
        Command::Instance {
            port,
            host,
            name,
            session_key,
            insecure_cookies,
        } => {
            run_instance(
                SocketAddr::new(host, port),
                name,
                session_key,
                !insecure_cookies,
            )
            .await
        }
        Command::Gateway {
            listen,
            backends,
            policy,
            trusted_proxies,
            admin_networks,
        } => {
            let mut config = GatewayConfig::new(backends)
                .policy(policy)
                .trusted_proxies(trusted_proxies);
            if !admin_networks.is_empty() {
                config = config.admin_networks(admin_networks);
            }
            run_gateway(listen, config).await
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("axum-app: {e}");
            ExitCode::FAILURE
        }
    }
}

fn localhost(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// Start-up progress: one line per step, with the seconds since the start.
struct Progress(Instant);

impl Progress {
    fn step(&self, what: impl std::fmt::Display) {
        println!("  {:>5.1}s  {what}", self.0.elapsed().as_secs_f64());
    }
}

async fn run_all(gateway_port: u16, first: u16, policy: Policy) -> Result<(), String> {
    let progress = Progress(Instant::now());
    println!("herd demo: starting (Ctrl-C stops it and removes what it started)");
    if std::env::var_os("DATABASE_URL").is_none() {
        println!(
            "  a PostgreSQL primary + replica and a 6-node Redis Cluster from this machine's binaries, on free ports..."
        );
    }
    let topology = Topology::from_env_or_start(1, &|line| progress.step(line))
        .await
        .map_err(|e| e.to_string())?;
    instance::apply_schema(&topology.database_url)
        .await
        .map_err(|e| format!("schema on {}: {e}", topology.database_url))?;
    progress.step("schema applied");
    let keys = SigningKeys::generate().map_err(|e| e.to_string())?;
    let mut instances = Vec::new();
    for i in 0..3u16 {
        // 0 asks for any free port, for each instance (the tests' choice).
        let port = match first {
            0 => 0,
            _ => first
                .checked_add(i)
                .ok_or_else(|| format!("--first-instance-port {first}: no room for 3 ports"))?,
        };
        let config = InstanceConfig {
            name: format!("instance-{}", i + 1),
            database_url: topology.database_url.clone(),
            replica_urls: topology.replica_urls.clone(),
            redis: topology.redis.clone(),
            session_keys: keys.clone(),
            // The all-in-one demo serves plain HTTP on localhost: `Secure` cookies would never
            // come back from curl or a test client there.
            secure_cookies: false,
        };
        let running = instance::spawn(config, localhost(port)).await?;
        progress.step(format_args!(
            "{:<20} {}",
            running.server.name(),
            running.server.url()
        ));
        instances.push(running);
    }
    let backends: Vec<String> = instances.iter().map(|i| i.server.url()).collect();
    let gateway = axum_app::gateway::spawn(
        GatewayConfig::new(backends.clone()).policy(policy),
        localhost(gateway_port),
    )
    .await?;
    progress.step(format_args!("{:<20} {}", "gateway", gateway.server.url()));
    print_banner(&topology, &backends, &gateway.server.url(), policy);

    shutdown_signal().await;
    println!("\nshutting down: instances report not-ready, then stop; the topology is removed");
    for i in &instances {
        i.health.drain();
    }
    // Give the gateway's active checks time to see the drain before instances stop accepting.
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(gateway);
    for mut i in instances {
        i.server.stop();
    }
    drop(topology);
    Ok(())
}

/// What the README shows under "The demo: what you will see" (`tests/banner.rs` keeps the two
/// alike).
fn print_banner(topology: &Topology, backends: &[String], gateway: &str, policy: Policy) {
    println!();
    println!("herd demo is up (gateway policy: {policy:?})");
    println!("  gateway     {gateway}   (admin page {gateway}/admin, {gateway}/lb-health)");
    for (i, b) in backends.iter().enumerate() {
        println!(
            "  instance-{}  {b}   (health {b}/health, metrics {b}/metrics)",
            i + 1
        );
    }
    println!("  postgres    primary {}", topology.database_url);
    for r in &topology.replica_urls {
        println!("              replica {r}");
    }
    match &topology.redis {
        RedisTarget::Cluster(nodes) => println!("  redis       cluster {}", nodes.join(",")),
        RedisTarget::Standalone(url) => println!("  redis       {url}"),
    }
    println!();
    println!("try:");
    println!("  open {gateway}/ in a browser");
    println!("  curl -s {gateway}/api/whoami");
    println!(
        "  curl -s -c /tmp/herd.jar -H 'content-type: application/json' -d '{{\"username\":\"ada\",\"password\":\"lovelace1\"}}' {gateway}/api/auth/signup"
    );
    println!(
        "  curl -s -b /tmp/herd.jar -H 'content-type: application/json' -d '{{\"body\":\"hello\"}}' {gateway}/api/notes"
    );
    println!("  curl -s -b /tmp/herd.jar {gateway}/api/notes");
    println!("  curl -s {gateway}/api/stats -i | grep -i x-cache");
    println!(
        "  curl -s {}/health | jq .",
        backends.first().map_or(gateway, String::as_str)
    );
    println!();
    println!("Ctrl-C stops everything and removes the local databases.");
}

async fn run_instance(
    bind: SocketAddr,
    name: Option<String>,
    key: Option<String>,
    secure_cookies: bool,
) -> Result<(), String> {
    let topology = Topology::from_env_or_start(1, &|line| println!("{line}"))
        .await
        .map_err(|e| e.to_string())?;
    let keys = match key {
        Some(text) => herd_session::Key::from_base64(&text)
            .map(SigningKeys::new)
            .map_err(|e| format!("SESSION_KEY: {e}"))?,
        None => {
            eprintln!(
                "axum-app: no SESSION_KEY: sessions made here will not be accepted by other instances"
            );
            SigningKeys::generate().map_err(|e| e.to_string())?
        }
    };
    let config = InstanceConfig {
        name: name.unwrap_or_else(|| format!("instance-{}", bind.port())),
        database_url: topology.database_url.clone(),
        replica_urls: topology.replica_urls.clone(),
        redis: topology.redis.clone(),
        session_keys: keys,
        secure_cookies,
    };
    let mut running = instance::spawn(config, bind).await?;
    println!(
        "{} listening on {}",
        running.server.name(),
        running.server.url()
    );
    shutdown_signal().await;
    running.health.drain();
    tokio::time::sleep(Duration::from_secs(1)).await;
    running.server.stop();
    drop(topology);
    Ok(())
}

async fn run_gateway(listen: SocketAddr, config: GatewayConfig) -> Result<(), String> {
    let gateway = axum_app::gateway::spawn(config, listen).await?;
    println!("gateway listening on {}", gateway.server.url());
    shutdown_signal().await;
    drop(gateway);
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
