//! The demo as separate processes, as the deployment guides run it: 3 × `axum-app instance` and
//! one `axum-app gateway`, on a PostgreSQL primary + replica and a Redis Cluster from herd-testkit.
//! Every process is killed (by the id this code started it with) when the deployment is dropped,
//! also when the test panics.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use herd_testkit::{PgCluster, RedisCluster};
use serde_json::Value;

/// A child process killed on drop.
pub(crate) struct Proc {
    pub(crate) name: String,
    child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// PostgreSQL, Redis Cluster, instances and a gateway, each instance and the gateway its own process.
pub(crate) struct Deployment {
    pub(crate) pg: PgCluster,
    pub(crate) redis: RedisCluster,
    pub(crate) instances: Vec<Proc>,
    pub(crate) instance_urls: Vec<String>,
    pub(crate) gateway: Proc,
    pub(crate) gateway_url: String,
}

/// A free loopback port (the kernel's choice, released at once for the child to bind).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn spawn(name: &str, args: &[String], env: &[(&str, String)]) -> Proc {
    let mut command = Command::new(env!("CARGO_BIN_EXE_axum-app"));
    command
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
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
    Proc {
        name: name.to_owned(),
        child: command.spawn().unwrap(),
    }
}

async fn wait_ready(url: &str, what: &str) {
    let started = Instant::now();
    loop {
        if let Ok(r) = reqwest::get(url).await
            && r.status().is_success()
        {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{what} not ready at {url} within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Deployment {
    /// Starts PostgreSQL (primary + 1 replica), a Redis Cluster with `redis` settings, 3 instance
    /// processes and a gateway process that believes `X-Forwarded-For` from loopback (so each test
    /// client is its own IP for the rate limits).
    pub(crate) async fn start(redis: herd_testkit::RedisClusterBuilder) -> Deployment {
        let (pg, redis) = tokio::try_join!(PgCluster::start(1), redis.start()).unwrap();
        // Without it, a commit acknowledged just before the primary dies may never reach the
        // replica: asynchronous replication loses it on failover, whatever herd does.
        pg.synchronous_commit().await.unwrap();
        // 48 bytes, standard base64: the same signing key on every instance.
        let key = "aGVyZC1kZW1vLWRyaWxsLWtleS1zaGFyZWQtYnktZXZlcnktaW5zdGFuY2UtMDE=".to_owned();
        let env = [
            ("DATABASE_URL", pg.primary_url()),
            ("REPLICA_URLS", pg.replica_urls().join(",")),
            ("REDIS_CLUSTER_NODES", redis.urls().join(",")),
            ("SESSION_KEY", key),
        ];
        let mut instances = Vec::new();
        let mut instance_urls = Vec::new();
        for i in 1..=3 {
            let port = free_port();
            let name = format!("instance-{i}");
            instances.push(spawn(
                &name,
                &[
                    "instance".into(),
                    "--port".into(),
                    port.to_string(),
                    "--name".into(),
                    name.clone(),
                    // Plain HTTP on loopback: the test client would not send `Secure` cookies.
                    "--insecure-cookies".into(),
                ],
                &env,
            ));
            instance_urls.push(format!("http://127.0.0.1:{port}"));
        }
        for url in &instance_urls {
            wait_ready(&format!("{url}/health/ready"), "instance").await;
        }
        let listen = format!("127.0.0.1:{}", free_port());
        let mut args = vec![
            "gateway".to_owned(),
            "--listen".into(),
            listen.clone(),
            "--trusted-proxy".into(),
            "127.0.0.1".into(),
        ];
        for url in &instance_urls {
            args.push("--backend".into());
            args.push(url.clone());
        }
        let gateway = spawn("gateway", &args, &[]);
        let gateway_url = format!("http://{listen}");
        wait_ready(&format!("{gateway_url}/lb-health"), "gateway").await;
        Deployment {
            pg,
            redis,
            instances,
            instance_urls,
            gateway,
            gateway_url,
        }
    }

    /// The gateway's view of the backends (`/lb-health`).
    pub(crate) async fn lb_health(&self) -> Value {
        reqwest::get(format!("{}/lb-health", self.gateway_url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

/// Watches `/lb-health` every 100 ms until dropped, counting each backend seen not healthy.
pub(crate) struct EjectionWatch {
    seen: Arc<AtomicU32>,
    task: tokio::task::JoinHandle<()>,
}

impl EjectionWatch {
    pub(crate) fn start(gateway_url: &str) -> EjectionWatch {
        let seen = Arc::new(AtomicU32::new(0));
        let url = format!("{gateway_url}/lb-health");
        let task = {
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let mut was_unhealthy = std::collections::HashSet::new();
                loop {
                    if let Ok(r) = reqwest::get(&url).await
                        && let Ok(v) = r.json::<Value>().await
                    {
                        for b in v["backends"].as_array().into_iter().flatten() {
                            let address = b["address"].as_str().unwrap_or("").to_owned();
                            if b["healthy"] == Value::Bool(false) {
                                if was_unhealthy.insert(address) {
                                    seen.fetch_add(1, Ordering::Relaxed);
                                }
                            } else {
                                was_unhealthy.remove(&address);
                            }
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        };
        EjectionWatch { seen, task }
    }

    /// How many times a backend turned unhealthy so far.
    pub(crate) fn ejections(&self) -> u32 {
        self.seen.load(Ordering::Relaxed)
    }
}

impl Drop for EjectionWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A client with a cookie jar that presents itself as `ip` to the gateway.
pub(crate) fn client(ip: &str) -> reqwest::Client {
    super::client(ip)
}
