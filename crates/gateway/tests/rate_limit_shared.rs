//! Rate limits shared across gateway replicas (issue #20): two gateways built from one
//! configuration, in front of the same axum instance, keep their clients' GCRA states in a real
//! Redis Cluster (herd-testkit, 3 masters on loopback ports). Together they admit the configured
//! quota, not twice it; with every node of the cluster killed both fall back to their local
//! limits (each admitting the quota on its own) without a 5xx, counting the fallback decisions;
//! once the nodes are back, decisions are shared again. Frozen nodes (SIGSTOP: connections open,
//! no answers) make decisions wait out the timeout once, then go local until the nodes answer
//! again. Every response on a limited path carries
//! `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers-10), 429s with
//! `Retry-After` too.
#![cfg(feature = "axum")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use bytes::Bytes;
use herd_gateway::rate_limit::{RateLimitLayer, SharedStatus};
use herd_gateway::server::{ServerThread, Threads};
use herd_gateway::{GatewayConfig, app};
use herd_testkit::RedisCluster;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Ten requests at once per client, then one every 6 minutes: no request of the test is
/// admitted by a refill.
const QUOTA: u64 = 10;
const PERIOD_SECS: u64 = 360;

/// A gateway on its own server thread, with a handle on its rate limits.
struct Gateway {
    server: ServerThread,
    limits: RateLimitLayer,
}

async fn gateway(config: GatewayConfig) -> Gateway {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let server = ServerThread::start_with(
        "gateway",
        "127.0.0.1:0".parse().unwrap(),
        Threads::PerCore(1),
        move || async move {
            let app = app(&config).await.map_err(|e| e.to_string())?;
            if let tower::util::Either::Left(limited) = &app {
                let _ = tx.send(limited.layer());
            }
            Ok(app)
        },
    )
    .await
    .unwrap();
    let limits = rx.await.expect("the configuration turns rate limits on");
    Gateway { server, limits }
}

fn config(backend: SocketAddr, nodes: &[String]) -> GatewayConfig {
    toml::from_str(&format!(
        r#"
        workers = 1
        [upstream]
        endpoints = [{{ address = "{backend}" }}]
        [rate_limits]
        routes = [
            {{ path_prefix = "/login", name = "login_limit", requests = {QUOTA}, per = "{hour}s" }},
            {{ path_prefix = "/signup", name = "signup_limit", requests = {QUOTA}, per = "{hour}s" }},
        ]
        # A generous timeout: a slow answer on a busy test machine would be decided locally.
        [rate_limits.shared]
        nodes = {nodes:?}
        timeout = "2s"
        reconnect_after = "200ms"
        "#,
        hour = QUOTA * PERIOD_SECS,
    ))
    .unwrap()
}

struct Answer {
    status: StatusCode,
    policy: Option<String>,
    state: Option<String>,
    retry_after: Option<String>,
}

async fn get(client: &Client<HttpConnector, Empty<Bytes>>, gw: &Gateway, path: &str) -> Answer {
    let req = Request::get(format!("{}{path}", gw.server.url()))
        .body(Empty::new())
        .unwrap();
    let res = client.request(req).await.unwrap();
    let header = |name: &str| {
        res.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let answer = Answer {
        status: res.status(),
        policy: header("ratelimit-policy"),
        state: header("ratelimit"),
        retry_after: header("retry-after"),
    };
    let _ = res.into_body().collect().await.unwrap();
    answer
}

/// Waits (up to `within`) until `ready` holds for every gateway.
async fn wait_until(gateways: &[&Gateway], within: Duration, ready: impl Fn(&Gateway) -> bool) {
    let deadline = Instant::now() + within;
    while !gateways.iter().all(|g| ready(g)) {
        assert!(
            Instant::now() < deadline,
            "not ready within {within:?}: {:?}",
            gateways
                .iter()
                .map(|g| g.limits.shared_status())
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Checks one answer of zone `zone` whose quota has `admitted` requests admitted so far
/// (counting this one when it was): 200 or 429, never anything else, with the fields.
fn check(answer: &Answer, zone: &str, admitted: u64) {
    assert_eq!(
        answer.policy.as_deref(),
        Some(format!("\"{zone}\";q={QUOTA};w={}", QUOTA * PERIOD_SECS).as_str()),
        "RateLimit-Policy"
    );
    match answer.status {
        StatusCode::OK => {
            // `admitted` requests pushed the client's state `admitted` periods ahead.
            let expected = format!(
                "\"{zone}\";r={};t={}",
                QUOTA - admitted,
                admitted * PERIOD_SECS
            );
            assert_eq!(
                answer.state.as_deref(),
                Some(expected.as_str()),
                "RateLimit"
            );
            assert_eq!(answer.retry_after, None);
        }
        StatusCode::TOO_MANY_REQUESTS => {
            let expected = format!("\"{zone}\";r=0;t={}", QUOTA * PERIOD_SECS);
            assert_eq!(
                answer.state.as_deref(),
                Some(expected.as_str()),
                "RateLimit"
            );
            assert_eq!(
                answer.retry_after.as_deref(),
                Some(PERIOD_SECS.to_string().as_str()),
                "Retry-After"
            );
        }
        other => panic!("{other}: only 200 and 429 are expected"),
    }
}

/// Sends `count` requests for `path`, round robin over `gateways`; returns how many were
/// admitted, checking every answer's fields against that count.
async fn send(
    client: &Client<HttpConnector, Empty<Bytes>>,
    gateways: &[&Gateway],
    path: &str,
    zone: &str,
    count: usize,
) -> u64 {
    let mut admitted = 0;
    for i in 0..count {
        let answer = get(client, gateways[i % gateways.len()], path).await;
        admitted += u64::from(answer.status == StatusCode::OK);
        check(&answer, zone, admitted);
    }
    admitted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_share_one_quota_and_fall_back_to_local_limits_while_the_cluster_is_down() {
    let cluster = RedisCluster::builder()
        .masters(3)
        .replicas_per_master(0)
        .start()
        .await
        .unwrap();
    let backend = ServerThread::start("backend", "127.0.0.1:0".parse().unwrap(), || async {
        Ok(Router::new().fallback(|| async { "ok" }))
    })
    .await
    .unwrap();
    let config = config(backend.addr(), &cluster.urls());
    let a = gateway(config.clone()).await;
    let b = gateway(config).await;
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();

    wait_until(&[&a, &b], Duration::from_secs(30), |g| {
        g.limits.shared_status() == Some(SharedStatus::Shared)
    })
    .await;

    // Shared: 20 requests of one client alternating over both gateways, 10 admitted in all;
    // the fields count the other gateway's admissions too.
    let admitted = send(&client, &[&a, &b], "/login", "login_limit", 20).await;
    assert_eq!(
        admitted, QUOTA,
        "two gateways admit the quota once, not twice"
    );
    assert_eq!(a.limits.fallback_decisions(), 0);
    assert_eq!(b.limits.fallback_decisions(), 0);

    // The whole cluster down: each gateway limits on its own (its local state for the client
    // is fresh: the shared decisions did not touch it), and nothing is answered 5xx.
    for node in cluster.nodes() {
        node.kill().unwrap();
    }
    let admitted_a = send(&client, &[&a], "/login", "login_limit", 12).await;
    let admitted_b = send(&client, &[&b], "/login", "login_limit", 12).await;
    assert_eq!(
        (admitted_a, admitted_b),
        (QUOTA, QUOTA),
        "each gateway applies the quota locally"
    );
    for g in [&a, &b] {
        assert_eq!(g.limits.shared_status(), Some(SharedStatus::Local));
        assert_eq!(g.limits.fallback_decisions(), 12);
    }

    // The nodes back (empty: persistence is off): decisions are shared again.
    for node in cluster.nodes() {
        node.start().await.unwrap();
    }
    cluster
        .wait_for_failover(Duration::from_secs(60))
        .await
        .unwrap();
    // Reconnected, and a decision on a path of the default quota went to the cluster.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        wait_until(&[&a, &b], Duration::from_secs(30), |g| {
            g.limits.shared_status() == Some(SharedStatus::Shared)
        })
        .await;
        let before = (a.limits.fallback_decisions(), b.limits.fallback_decisions());
        for g in [&a, &b] {
            assert_eq!(get(&client, g, "/probe").await.status, StatusCode::OK);
        }
        let after = (a.limits.fallback_decisions(), b.limits.fallback_decisions());
        if before == after {
            break;
        }
        assert!(Instant::now() < deadline, "decisions stay local");
    }
    let fallbacks = (a.limits.fallback_decisions(), b.limits.fallback_decisions());
    let admitted = send(&client, &[&b, &a], "/signup", "signup_limit", 20).await;
    assert_eq!(admitted, QUOTA, "shared again after the outage");
    assert_eq!(
        (a.limits.fallback_decisions(), b.limits.fallback_decisions()),
        fallbacks
    );
}

/// Sends `signal` (`STOP` or `CONT`) to every node of `cluster` (processes this test started).
fn signal_nodes(cluster: &RedisCluster, signal: &str) {
    for node in cluster.nodes() {
        let pid = node.pid().expect("the node runs");
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} {pid}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_slower_than_the_timeout_is_decided_locally() {
    let cluster = RedisCluster::builder()
        .masters(3)
        .replicas_per_master(0)
        .start()
        .await
        .unwrap();
    let backend = ServerThread::start("backend", "127.0.0.1:0".parse().unwrap(), || async {
        Ok(Router::new().fallback(|| async { "ok" }))
    })
    .await
    .unwrap();
    let mut config = config(backend.addr(), &cluster.urls());
    let shared = config
        .rate_limits
        .as_mut()
        .and_then(|r| r.shared.as_mut())
        .unwrap();
    shared.timeout = Duration::from_millis(300);
    let gw = gateway(config).await;
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    wait_until(&[&gw], Duration::from_secs(30), |g| {
        g.limits.shared_status() == Some(SharedStatus::Shared)
    })
    .await;
    check(&get(&client, &gw, "/login").await, "login_limit", 1);

    // Frozen nodes accept connections and never answer: the first decision waits out the
    // timeout, then it and the next ones are local (a fresh local state: r counts from 9).
    signal_nodes(&cluster, "STOP");
    for admitted in 1..=3 {
        let answer = get(&client, &gw, "/login").await;
        assert_eq!(answer.status, StatusCode::OK);
        check(&answer, "login_limit", admitted);
    }
    assert_eq!(gw.limits.shared_status(), Some(SharedStatus::Local));
    assert_eq!(gw.limits.fallback_decisions(), 3);

    // Thawed: decisions are shared again. (The script sent before the timeout may run once the
    // node reads it: a decision that timed out can still count in the cluster, so `/login`'s
    // shared count is 2 or 3 now; a fresh zone shows the decision is the cluster's.)
    signal_nodes(&cluster, "CONT");
    wait_until(&[&gw], Duration::from_secs(30), |g| {
        g.limits.shared_status() == Some(SharedStatus::Shared)
    })
    .await;
    check(&get(&client, &gw, "/signup").await, "signup_limit", 1);
    assert_eq!(gw.limits.fallback_decisions(), 3);
}
