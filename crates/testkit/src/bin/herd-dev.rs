//! `herd-dev up [--replicas N] [--redis-cluster] [--redis]`: starts a local topology from the machine's
//! PostgreSQL and Redis binaries, prints its addresses as shell exports, and runs until Ctrl-C (or
//! SIGTERM), then stops everything and removes its files.
//!
//! ```text
//! $ eval "$(cargo run -q -p herd-testkit --bin herd-dev -- up --replicas 2 --redis-cluster)" &
//! ```

use std::process::ExitCode;

use herd_testkit::{PgCluster, RedisCluster, RedisServer};

const USAGE: &str = "usage: herd-dev up [--replicas N] [--redis-cluster] [--redis]

Starts a PostgreSQL primary with N streaming replicas (default 1) and, if asked, a 6-node Redis Cluster
and/or a standalone Redis, on free 127.0.0.1 ports. Prints DATABASE_URL, REPLICA_URLS,
REDIS_CLUSTER_NODES and REDIS_URL as shell exports, then runs until Ctrl-C and cleans up.";

struct Args {
    replicas: usize,
    redis_cluster: bool,
    redis: bool,
}

fn parse(args: &[String]) -> Result<Args, String> {
    let mut it = args.iter();
    match it.next().map(String::as_str) {
        Some("up") => {}
        Some("-h" | "--help") => return Err(String::new()),
        Some(other) => return Err(format!("unknown command `{other}`")),
        None => return Err("missing command".to_owned()),
    }
    let mut out = Args {
        replicas: 1,
        redis_cluster: false,
        redis: false,
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--replicas" => {
                let v = it.next().ok_or("--replicas needs a number")?;
                out.replicas = v
                    .parse()
                    .map_err(|_| format!("--replicas: `{v}` is not a number"))?;
            }
            "--redis-cluster" => out.redis_cluster = true,
            "--redis" => out.redis = true,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown option `{other}`")),
        }
    }
    Ok(out)
}

#[tokio::main]
async fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse(&argv) {
        Ok(a) => a,
        Err(msg) => {
            if !msg.is_empty() {
                eprintln!("herd-dev: {msg}");
            }
            eprintln!("{USAGE}");
            return if msg.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            };
        }
    };
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herd-dev: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> herd_testkit::Result<()> {
    eprintln!(
        "herd-dev: starting PostgreSQL primary + {} replica(s)...",
        args.replicas
    );
    let pg = PgCluster::start(args.replicas).await?;
    println!("export DATABASE_URL='{}'", pg.primary_url());
    println!("export REPLICA_URLS='{}'", pg.replica_urls().join(","));
    let cluster = if args.redis_cluster {
        eprintln!("herd-dev: starting a 6-node Redis Cluster...");
        let c = RedisCluster::start().await?;
        println!("export REDIS_CLUSTER_NODES='{}'", c.urls().join(","));
        Some(c)
    } else {
        None
    };
    let redis = if args.redis {
        let r = RedisServer::start().await?;
        println!("export REDIS_URL='{}'", r.url());
        Some(r)
    } else {
        None
    };
    eprintln!("herd-dev: up; press Ctrl-C to stop and clean up");
    wait_for_shutdown().await;
    eprintln!("herd-dev: stopping...");
    drop((redis, cluster, pg));
    eprintln!("herd-dev: stopped, temp dirs removed");
    Ok(())
}

async fn wait_for_shutdown() {
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
