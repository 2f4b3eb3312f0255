//! One demo topology per test binary: PostgreSQL primary + replica, a Redis Cluster, 3 instances
//! and gateways, each server on its own runtime so every `#[tokio::test]` can use them.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};

use axum_app::gateway::{self, GatewayConfig, Policy, RunningGateway};
use axum_app::instance::{self, InstanceConfig, RunningInstance};
use axum_app::topology::Topology;
use herd_session::SigningKeys;
use tokio::sync::{Mutex, OnceCell};

pub(crate) struct Demo {
    pub(crate) topology: Topology,
    pub(crate) instances: Mutex<Vec<RunningInstance>>,
    pub(crate) instance_urls: Vec<String>,
    /// P2C, rate limits on, X-Forwarded-For believed from loopback so each test is its own client.
    pub(crate) gateway: RunningGateway,
    /// Round robin, no rate limits.
    pub(crate) rr_gateway: RunningGateway,
}

static DEMO: OnceCell<Demo> = OnceCell::const_new();

fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

pub(crate) async fn demo() -> &'static Demo {
    DEMO.get_or_init(|| async {
        let topology = Topology::start_local(1).await.expect("local topology");
        let keys = SigningKeys::generate().unwrap();
        let mut instances = Vec::new();
        for i in 1..=3 {
            let config = InstanceConfig {
                name: format!("instance-{i}"),
                database_url: topology.database_url.clone(),
                replica_urls: topology.replica_urls.clone(),
                redis: topology.redis.clone(),
                session_keys: keys.clone(),
                secure_cookies: false,
            };
            instances.push(instance::spawn(config, any_port()).await.expect("instance"));
        }
        let instance_urls: Vec<String> = instances.iter().map(|i| i.server.url()).collect();
        let gateway = gateway::spawn(
            GatewayConfig::new(instance_urls.clone()).trusted_proxies(vec!["127.0.0.1".into()]),
            any_port(),
        )
        .await
        .expect("gateway");
        let rr_gateway = gateway::spawn(
            GatewayConfig::new(instance_urls.clone())
                .policy(Policy::RoundRobin)
                .rate_limits(false),
            any_port(),
        )
        .await
        .expect("rr gateway");
        Demo {
            topology,
            instances: Mutex::new(instances),
            instance_urls,
            gateway,
            rr_gateway,
        }
    })
    .await
}

/// A fresh client IP (sent as X-Forwarded-For to the gateway, which trusts loopback here).
pub(crate) fn client_ip() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("10.{}.{}.{}", (n >> 16) & 255, (n >> 8) & 255, n & 255)
}

/// A client with a cookie jar that presents itself as `ip` to the gateway.
pub(crate) fn client(ip: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("x-forwarded-for", ip.parse().unwrap());
    reqwest::Client::builder()
        .cookie_store(true)
        .default_headers(headers)
        .build()
        .unwrap()
}

pub(crate) fn unique(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Tests that pause the replica's replay take this first, so they don't resume it under each other.
pub(crate) async fn replica_lock() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::const_new(());
    LOCK.lock().await
}

/// GET `url` and decode the JSON body.
pub(crate) async fn get_json<T: serde::de::DeserializeOwned>(
    c: &reqwest::Client,
    url: String,
) -> T {
    c.get(url).send().await.unwrap().json().await.unwrap()
}
pub(crate) mod browser;
pub(crate) mod procs;

/// Per backend address: (healthy, failures) as the gateway reports them.
pub(crate) async fn backends(gw: &str) -> Vec<(String, bool, u64)> {
    let v: serde_json::Value = reqwest::get(format!("{gw}/lb-health"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["address"].as_str().unwrap().to_owned(),
                b["healthy"].as_bool().unwrap(),
                b["failures"].as_u64().unwrap(),
            )
        })
        .collect()
}
