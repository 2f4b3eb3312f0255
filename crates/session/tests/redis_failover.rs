//! Redis Cluster failover drills for the session layer: logged-in clients keep reading and
//! saving their sessions while the master holding the most sessions is SIGKILLed (or, in the
//! second drill, SIGSTOPped: it hangs with its connections open); no request may fail, no
//! session may be lost, no save may be lost. Plus: a command error (WRONGTYPE) is
//! not mistaken for a failover and fails at once.
//!
//! Run with: `cargo test -p herd-session --test redis_failover -- --nocapture` (prints figures).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use herd_session::{
    RedisStore, RedisStoreConfig, SessionIdGenerator, SessionRecord, SessionStore, StoreOperation,
};
use herd_testkit::{RedisCluster, RedisNode, RedisServer, shared};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

use common::scenarios;
use common::{Browser, app, serve};

/// Logged-in clients in the drill, each making `RATE` requests a second.
const CLIENTS: usize = 8;
const RATE: u32 = 20;
const DRILL: Duration = Duration::from_secs(15);
/// When the master is killed, counted from the start of the drill.
const KILL_AT: Duration = Duration::from_secs(5);
/// Sessions logged in before the kill and left alone until the end.
const RESTING: usize = 60;

fn snapshotter() -> &'static Snapshotter {
    static SNAPSHOTTER: OnceLock<Snapshotter> = OnceLock::new();
    SNAPSHOTTER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder.install().unwrap();
        snapshotter
    })
}

/// Per metric name: the sum of its counters and the largest value of its histograms, over
/// all label sets. (A snapshot drains what it reads, so take one and look everything up in it.)
fn metrics() -> std::collections::HashMap<String, (u64, f64)> {
    let mut out = std::collections::HashMap::<String, (u64, f64)>::new();
    for (key, _, _, value) in snapshotter().snapshot().into_vec() {
        let entry = out.entry(key.key().name().to_owned()).or_default();
        match value {
            DebugValue::Counter(n) => entry.0 += n,
            DebugValue::Histogram(values) => {
                for v in values {
                    entry.1 = entry.1.max(v.into_inner());
                }
            }
            _ => {}
        }
    }
    out
}

/// What one client saw.
#[derive(Default)]
struct Tally {
    requests: u64,
    failures: Vec<String>,
    slowest: Duration,
}

/// How the busiest master is taken down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// SIGKILL: its connections break at once.
    Kill,
    /// SIGSTOP: it stops answering but its connections stay open (like a master cut off by the
    /// network), so clients only see timeouts.
    Hang,
}

/// The drills run one at a time: each has a cluster of its own and both want the 2 cores.
static DRILLS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_busiest_master_fails_no_request_and_loses_no_session() {
    let _one_at_a_time = DRILLS.lock().await;
    drill(Fault::Kill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_master_fails_no_request_and_loses_no_session() {
    let _one_at_a_time = DRILLS.lock().await;
    drill(Fault::Hang).await;
}

async fn drill(fault: Fault) {
    snapshotter();
    let started = Instant::now();
    let rc = RedisCluster::builder()
        .node_timeout(Duration::from_secs(2))
        .start()
        .await
        .unwrap();
    // Two app instances, each with its own store connection, as in a deployment.
    let mut instances = Vec::new();
    for _ in 0..2 {
        let store = RedisStore::cluster(rc.urls(), RedisStoreConfig::default())
            .await
            .unwrap();
        assert_eq!(
            store.failover_timeout(),
            Duration::from_secs(6),
            "default: 1.5 x the cluster's node timeout (read from it) plus 3 s"
        );
        instances.push(
            serve(app(
                scenarios::builder(&store).build().unwrap(),
                Arc::default(),
            ))
            .await,
        );
    }

    // Sessions that rest through the drill: logged in, counted once, then left alone.
    let mut resting = Vec::new();
    for i in 0..RESTING {
        let browser = Browser::new();
        let addr = instances[i % 2];
        assert_eq!(
            browser.post(addr, &format!("/login/rest{i}")).await.status,
            200
        );
        assert_eq!(browser.post(addr, "/count").await.body, "1");
        resting.push(browser);
    }

    // The drill: each client alternates a logged-in read (`/whoami`) and a load + save
    // (`/count`, whose answer must go up by exactly one each time: a lost save would repeat).
    let drill_start = Instant::now();
    let tallies: Vec<Arc<Mutex<Tally>>> = (0..CLIENTS).map(|_| Arc::default()).collect();
    let mut clients = Vec::new();
    for (c, tally) in tallies.iter().enumerate() {
        let (tally, instances) = (Arc::clone(tally), instances.clone());
        clients.push(tokio::spawn(async move {
            let browser = Browser::new();
            let user = format!("user{c}");
            let reply = browser
                .post(instances[c % 2], &format!("/login/{user}"))
                .await;
            assert_eq!((reply.status, reply.body.as_str()), (200, user.as_str()));
            let mut ticks = tokio::time::interval(Duration::from_secs(1) / RATE);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut count = 0_u64;
            let mut i = c;
            while drill_start.elapsed() < DRILL {
                ticks.tick().await;
                let addr = instances[i % 2];
                i += 1;
                let sent = Instant::now();
                let (path, reply) = if i % 2 == 0 {
                    ("/whoami", browser.get(addr, "/whoami").await)
                } else {
                    ("/count", browser.post(addr, "/count").await)
                };
                let took = sent.elapsed();
                let expected = if path == "/whoami" {
                    user.clone()
                } else {
                    count += 1;
                    count.to_string()
                };
                let mut tally = tally.lock().unwrap();
                tally.requests += 1;
                tally.slowest = tally.slowest.max(took);
                if reply.status != 200 || reply.body != expected {
                    tally.failures.push(format!(
                        "{user} {path} at {:?}: {} {:?} (expected {expected:?}, took {took:?})",
                        drill_start.elapsed(),
                        reply.status,
                        reply.body
                    ));
                    if path == "/count" && reply.status == 200 {
                        // Carry on from what the store has, to report each loss once.
                        count = reply.body.parse().unwrap_or(count);
                    }
                }
            }
        }));
    }

    tokio::time::sleep_until((drill_start + KILL_AT).into()).await;
    let (victim, sessions_on_victim) = busiest_master(&rc).await;
    let downed = Instant::now();
    let failover = take_down(&rc, victim, fault).await;
    println!(
        "{fault:?}: took down {} ({sessions_on_victim} sessions) {:?} into the drill; its \
         slots had a new master after {failover:?}",
        victim.name(),
        downed - drill_start
    );
    for client in clients {
        client.await.unwrap();
    }

    let mut requests = 0;
    let mut failures = Vec::new();
    let mut slowest = Duration::ZERO;
    for tally in &tallies {
        let tally = tally.lock().unwrap();
        requests += tally.requests;
        failures.extend(tally.failures.iter().cloned());
        slowest = slowest.max(tally.slowest);
    }
    // Every resting session is still there with its data, through either instance.
    let mut lost = Vec::new();
    for (i, browser) in resting.iter().enumerate() {
        let addr = instances[(i + 1) % 2];
        let who = browser.get(addr, "/whoami").await;
        let peek = browser.get(addr, "/peek").await;
        if who.body != format!("rest{i}") || peek.body != "1" {
            lost.push(format!(
                "rest{i}: whoami {:?}, peek {:?}",
                who.body, peek.body
            ));
        }
    }
    let metrics = metrics();
    let metric = |name: &str| metrics.get(name).copied().unwrap_or_default();
    let (retries, _) = metric("herd_session_store_failover_retries_total");
    let (waits, _) = metric("herd_session_store_failover_waits_total");
    let (_, longest_wait) = metric("herd_session_store_failover_wait_seconds");
    let (refreshes, _) = metric("herd_session_store_topology_refreshes_total");
    println!(
        "{fault:?}: {requests} requests from {CLIENTS} clients at {RATE}/s over {DRILL:?}: {} failed; \
         slowest request {slowest:?}; {waits} store operations waited out the failover \
         ({retries} retries, {refreshes} fresh slot maps, longest wait {:.3} s); {} of \
         {RESTING} resting sessions lost; \
         test took {:?}",
        failures.len(),
        longest_wait,
        lost.len(),
        started.elapsed()
    );
    assert!(
        failures.is_empty(),
        "failed requests:\n{}",
        failures.join("\n")
    );
    assert!(lost.is_empty(), "lost sessions:\n{}", lost.join("\n"));
    assert!(
        requests >= (CLIENTS as u64) * u64::from(RATE) * DRILL.as_secs() / 2,
        "the clients kept going: {requests} requests"
    );
    assert!(waits > 0, "some operation met the failover");
}

/// Takes `victim` down and waits until no slot is served by it any more; returns how long
/// that took.
async fn take_down(rc: &RedisCluster, victim: &RedisNode, fault: Fault) -> Duration {
    let started = Instant::now();
    match fault {
        Fault::Kill => victim.kill().unwrap(),
        Fault::Hang => {
            let pid = victim.pid().unwrap().to_string();
            let stopped = std::process::Command::new("kill")
                .args(["-STOP", &pid])
                .status()
                .unwrap();
            assert!(stopped.success());
        }
    }
    let others: Vec<&RedisNode> = rc
        .nodes()
        .iter()
        .filter(|n| n.port() != victim.port() && n.is_running())
        .collect();
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no failover within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        let Some(slots) = cluster_slots(others[0]).await else {
            continue;
        };
        if !slots.contains(&format!(":{}", victim.port())) {
            return started.elapsed();
        }
    }
}

/// `CLUSTER SLOTS` of `node` as debug text, `None` when it does not answer.
async fn cluster_slots(node: &RedisNode) -> Option<String> {
    let client = redis::Client::open(node.url()).ok()?;
    let mut connection = client.get_multiplexed_async_connection().await.ok()?;
    let slots: redis::Value = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(&mut connection)
        .await
        .ok()?;
    // Ports show up as integers after the host; render them as `:PORT` to search.
    let mut text = String::new();
    render(&slots, &mut text);
    Some(text)
}

fn render(value: &redis::Value, out: &mut String) {
    match value {
        redis::Value::Array(items) => items.iter().for_each(|item| render(item, out)),
        redis::Value::Int(n) => out.push_str(&format!(":{n} ")),
        _ => {}
    }
}

/// The running master holding the most keys, and how many it holds.
async fn busiest_master(rc: &RedisCluster) -> (&RedisNode, u64) {
    let mut busiest = None;
    for master in rc.masters().await.unwrap() {
        let client = redis::Client::open(master.url()).unwrap();
        let mut connection = client.get_multiplexed_async_connection().await.unwrap();
        let keys: u64 = redis::cmd("DBSIZE")
            .query_async(&mut connection)
            .await
            .unwrap();
        if busiest.as_ref().is_none_or(|(_, most)| keys > *most) {
            busiest = Some((master, keys));
        }
    }
    busiest.unwrap()
}

/// A command error is no failover: `WRONGTYPE` fails at once, not after the failover wait.
#[tokio::test]
async fn a_command_error_fails_at_once() {
    let cluster = shared::redis_cluster().await.unwrap();
    let wait = Duration::from_secs(10);
    let store = RedisStore::cluster(
        cluster.urls(),
        RedisStoreConfig {
            failover_timeout: Some(wait),
            ..RedisStoreConfig::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(store.failover_timeout(), wait);
    let key = SessionIdGenerator::new().generate().unwrap().store_key();
    // Something else wrote a plain string where the session's hash would be.
    let client = redis::cluster::ClusterClient::new(cluster.urls()).unwrap();
    let mut connection = client.get_async_connection().await.unwrap();
    let _: () = redis::cmd("SET")
        .arg(store.redis_key(&key))
        .arg("not a session")
        .query_async(&mut connection)
        .await
        .unwrap();

    let record = Arc::new(SessionRecord::new(None));
    let ttl = Duration::from_secs(60);
    let started = Instant::now();
    let load = store.load(&key).await.unwrap_err();
    let save = store.save(&key, 1, record, ttl).await.unwrap_err();
    let took = started.elapsed();
    for (error, operation) in [(load, StoreOperation::Load), (save, StoreOperation::Save)] {
        assert_eq!(error.operation(), operation);
        assert!(
            !error.is_timeout() && !error.is_failover_timeout(),
            "{error}"
        );
        assert!(error.to_string().contains("WRONGTYPE"), "{error}");
    }
    assert!(
        took < Duration::from_secs(1),
        "two command errors took {took:?}: they were waited on as if a failover explained them"
    );
}

/// Past the failover wait the operation fails with an error that says so and names the node.
#[tokio::test]
async fn a_failover_wait_that_runs_out_fails_with_a_typed_error() {
    let server = RedisServer::start().await.unwrap();
    let wait = Duration::from_millis(400);
    let store = RedisStore::standalone(
        &server.url(),
        RedisStoreConfig {
            failover_timeout: Some(wait),
            operation_timeout: Duration::from_millis(200),
            ..RedisStoreConfig::default()
        },
    )
    .await
    .unwrap();
    let key = SessionIdGenerator::new().generate().unwrap().store_key();
    assert!(store.load(&key).await.unwrap().is_none());
    server.kill().unwrap();
    let started = Instant::now();
    let error = store.load(&key).await.unwrap_err();
    let took = started.elapsed();
    assert!(error.is_failover_timeout() && error.is_timeout(), "{error}");
    assert_eq!(error.operation(), StoreOperation::Load);
    assert_eq!(error.node(), Some(server.addr().as_str()), "{error}");
    assert!(error.to_string().contains("failover wait"), "{error}");
    assert!(
        took >= wait && took < wait + Duration::from_secs(1),
        "gave up after {took:?} (wait {wait:?})"
    );
    // Health probes do not wait: they report the store as it is now.
    let started = Instant::now();
    assert!(!store.ping().await.unwrap_err().is_failover_timeout());
    assert!(started.elapsed() < wait);
}
