//! Redis Cluster failover drills for the cache: callers keep setting, reading and loading
//! through the cache while the master holding the most keys is SIGKILLed (or, in the second
//! drill, SIGSTOPped: it hangs with its connections open). With the default failover wait no
//! caller sees an error, a fail-open miss or a needless load; then, with no replica left to
//! take over, the wait runs out with a typed error naming the node. Plus: a
//! command error (WRONGTYPE) is not mistaken for a failover and fails at once.
//!
//! Run with: `cargo test -p herd-cache-cluster --test failover_wait -- --nocapture` (prints
//! figures).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herd_cache_cluster::{Backend, Cache, CacheConfig, Error, RedisConfig};
use herd_testkit::{RedisCluster, RedisNode, shared};

const WORKERS: usize = 8;
const RATE: u32 = 20;
const DRILL: Duration = Duration::from_secs(15);
const KILL_AT: Duration = Duration::from_secs(5);
/// Keys written before the drill and only read through `get_or_load` during it.
const PRELOADED: usize = 60;
const TTL: Duration = Duration::from_secs(600);

#[derive(Default)]
struct Tally {
    operations: u64,
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
async fn killing_the_busiest_master_surfaces_no_error_and_loses_no_value() {
    let _one_at_a_time = DRILLS.lock().await;
    drill(Fault::Kill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_master_surfaces_no_error_and_loses_no_value() {
    let _one_at_a_time = DRILLS.lock().await;
    drill(Fault::Hang).await;
}

async fn drill(fault: Fault) {
    let started = Instant::now();
    let rc = RedisCluster::builder()
        .node_timeout(Duration::from_secs(2))
        .start()
        .await
        .unwrap();
    let backend = Backend::cluster(RedisConfig::new(rc.urls())).await.unwrap();
    let Backend::Cluster(cluster) = &backend else {
        unreachable!()
    };
    assert_eq!(
        cluster.failover_timeout(),
        Duration::from_secs(6),
        "default: 1.5 x the cluster's node timeout (read from it) plus 3 s"
    );
    // No L1: every call goes to the cluster.
    let cache = Cache::builder(backend)
        .config(CacheConfig {
            namespace: "drill".into(),
            l1: None,
            ..CacheConfig::default()
        })
        .build()
        .await
        .unwrap();
    for j in 0..PRELOADED {
        cache
            .set(&format!("pre:{j}"), &format!("pre {j}"), TTL)
            .await
            .unwrap();
    }
    let loads = Arc::new(AtomicU64::new(0));
    let circuit_opened = Arc::new(AtomicBool::new(false));

    // Each worker cycles through set -> get (must read what it set) -> get_or_load of a
    // preloaded key (must be a hit: a load means the read failed open).
    let drill_start = Instant::now();
    let tallies: Vec<Arc<Mutex<Tally>>> = (0..WORKERS).map(|_| Arc::default()).collect();
    let mut workers = Vec::new();
    for (w, tally) in tallies.iter().enumerate() {
        let (cache, tally, loads) = (cache.clone(), Arc::clone(tally), Arc::clone(&loads));
        let circuit_opened = Arc::clone(&circuit_opened);
        workers.push(tokio::spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_secs(1) / RATE);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut i = 0_usize;
            while drill_start.elapsed() < DRILL {
                ticks.tick().await;
                // A set and the get after it share a key.
                let key = format!("w{w}:k{}", (i / 3) % 30);
                let value = format!("{w}/{i}");
                let sent = Instant::now();
                let failure = match i % 3 {
                    0 => cache
                        .set(&key, &value, TTL)
                        .await
                        .err()
                        .map(|e| format!("set {key}: {e}")),
                    1 => {
                        let expected = format!("{w}/{}", i - 1);
                        match cache.get::<String>(&key).await {
                            Some(got) if got == expected => None,
                            other => Some(format!("get {key}: {other:?}, expected {expected}")),
                        }
                    }
                    _ => {
                        let j = (w * 7 + i) % PRELOADED;
                        let loads = Arc::clone(&loads);
                        let loaded = cache
                            .get_or_load(&format!("pre:{j}"), TTL, move || async move {
                                loads.fetch_add(1, Ordering::Relaxed);
                                Ok::<_, std::io::Error>(Some(format!("pre {j}")))
                            })
                            .await;
                        match loaded {
                            Ok(Some(v)) if v == format!("pre {j}") => None,
                            other => Some(format!("get_or_load pre:{j}: {other:?}")),
                        }
                    }
                };
                let took = sent.elapsed();
                i += 1;
                if cache.circuit_open() {
                    circuit_opened.store(true, Ordering::Relaxed);
                }
                let mut tally = tally.lock().unwrap();
                tally.operations += 1;
                tally.slowest = tally.slowest.max(took);
                if let Some(failure) = failure {
                    tally.failures.push(format!(
                        "{failure} at {:?} (took {took:?})",
                        drill_start.elapsed()
                    ));
                }
            }
        }));
    }

    tokio::time::sleep_until((drill_start + KILL_AT).into()).await;
    let (victim, keys_on_victim) = busiest_master(&rc).await;
    // A key of the victim's, to find its successor later.
    let mut victim_key = None;
    for n in 0.. {
        let key = format!("w0:k{n}");
        if owner_port(&rc, &cache.backend_key(&key)).await == victim.port() {
            victim_key = Some(key);
            break;
        }
    }
    let victim_key = victim_key.unwrap();
    let downed = Instant::now();
    let failover = take_down(&rc, victim, fault).await;
    println!(
        "{fault:?}: took down {} ({keys_on_victim} keys) {:?} into the drill; its slots had a \
         new master after {failover:?}",
        victim.name(),
        downed - drill_start
    );
    for worker in workers {
        worker.await.unwrap();
    }
    let (mut operations, mut failures, mut slowest) = (0, Vec::new(), Duration::ZERO);
    for tally in &tallies {
        let tally = tally.lock().unwrap();
        operations += tally.operations;
        failures.extend(tally.failures.iter().cloned());
        slowest = slowest.max(tally.slowest);
    }
    let stats = cache.stats();
    let mut missing = 0;
    for j in 0..PRELOADED {
        if cache.get::<String>(&format!("pre:{j}")).await != Some(format!("pre {j}")) {
            missing += 1;
        }
    }
    println!(
        "{fault:?}: {operations} cache calls from {WORKERS} workers at {RATE}/s over {DRILL:?}: {} \
         failed, {} backend errors counted, {} loader calls, circuit opened: {}; slowest call \
         {slowest:?}; {missing} of {PRELOADED} preloaded values missing; drill done {:?} after \
         the start",
        failures.len(),
        stats.errors,
        loads.load(Ordering::Relaxed),
        circuit_opened.load(Ordering::Relaxed),
        started.elapsed()
    );
    assert!(
        failures.is_empty(),
        "failed calls:\n{}",
        failures.join("\n")
    );
    assert_eq!(
        stats.errors, 0,
        "no backend error, not even one failed open"
    );
    assert_eq!(
        loads.load(Ordering::Relaxed),
        0,
        "no read failed open into a load"
    );
    assert!(!circuit_opened.load(Ordering::Relaxed));
    assert_eq!(missing, 0);
    assert!(
        operations >= (WORKERS as u64) * u64::from(RATE) * DRILL.as_secs() / 2,
        "the workers kept going: {operations} calls"
    );
    assert!(
        slowest > Duration::from_millis(500),
        "some call must have met (and waited out) the failover; slowest {slowest:?}"
    );

    if fault == Fault::Hang {
        return;
    }
    // Now kill the promoted master, which has no replica: nothing can take over, so a write to
    // its slots waits out the bound and fails with an error that says so.
    let key = victim_key.as_str();
    let port = owner_port(&rc, &cache.backend_key(key)).await;
    assert_ne!(port, victim.port(), "the victim's slots moved");
    let orphan = rc.nodes().iter().find(|n| n.port() == port).unwrap();
    orphan.kill().unwrap();
    let started = Instant::now();
    let error = cache.set(key, &"x".to_owned(), TTL).await.unwrap_err();
    let took = started.elapsed();
    println!("with no replica left: {error} (after {took:?})");
    match &error {
        Error::FailoverTimeout {
            operation, target, ..
        } => {
            assert_eq!(*operation, "SET");
            assert_eq!(*target, orphan.addr(), "{error}");
        }
        other => panic!("expected FailoverTimeout, got {other}"),
    }
    assert!(
        took >= Duration::from_secs(6) && took < Duration::from_secs(8),
        "{took:?}"
    );
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
    let other = rc
        .nodes()
        .iter()
        .find(|n| n.port() != victim.port() && n.is_running())
        .unwrap();
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no failover within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        let Ok(client) = redis::Client::open(other.url()) else {
            continue;
        };
        let Ok(mut connection) = client.get_multiplexed_async_connection().await else {
            continue;
        };
        let Ok(slots) = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async::<Vec<Vec<redis::Value>>>(&mut connection)
            .await
        else {
            continue;
        };
        let victim_port = redis::Value::Int(i64::from(victim.port()));
        let served_by_victim = slots.iter().any(|range| {
            matches!(range.get(2), Some(redis::Value::Array(master)) if master.get(1) == Some(&victim_port))
        });
        if !served_by_victim {
            return started.elapsed();
        }
    }
}

/// The running master holding the most keys, and how many it holds.
async fn busiest_master(rc: &RedisCluster) -> (&RedisNode, u64) {
    let mut busiest = None;
    for master in rc.masters().await.unwrap() {
        let keys: u64 = query(master, &redis::cmd("DBSIZE")).await;
        if busiest.as_ref().is_none_or(|(_, most)| keys > *most) {
            busiest = Some((master, keys));
        }
    }
    busiest.unwrap()
}

/// The port of the master serving `key`'s slot, as the cluster says now.
async fn owner_port(rc: &RedisCluster, key: &str) -> u16 {
    let node = rc.masters().await.unwrap()[0];
    let slot: i64 = query(node, redis::cmd("CLUSTER").arg("KEYSLOT").arg(key)).await;
    let ranges: Vec<Vec<redis::Value>> = query(node, redis::cmd("CLUSTER").arg("SLOTS")).await;
    ranges
        .iter()
        .find_map(|range| match (range.first(), range.get(1), range.get(2)) {
            (
                Some(redis::Value::Int(start)),
                Some(redis::Value::Int(end)),
                Some(redis::Value::Array(master)),
            ) if (*start..=*end).contains(&slot) => match master.get(1) {
                Some(redis::Value::Int(port)) => u16::try_from(*port).ok(),
                _ => None,
            },
            _ => None,
        })
        .unwrap()
}

async fn query<T: redis::FromRedisValue>(node: &RedisNode, cmd: &redis::Cmd) -> T {
    let client = redis::Client::open(node.url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    cmd.query_async(&mut connection).await.unwrap()
}

/// A command error is no failover: `WRONGTYPE` fails (open) at once, not after the wait.
#[tokio::test]
async fn a_command_error_fails_at_once() {
    let rc = shared::redis_cluster().await.unwrap();
    let config = RedisConfig {
        failover_timeout: Some(Duration::from_secs(10)),
        ..RedisConfig::new(rc.urls())
    };
    let cache = Cache::builder(Backend::cluster(config).await.unwrap())
        .config(CacheConfig {
            namespace: "wrongtype".into(),
            l1: None,
            ..CacheConfig::default()
        })
        .build()
        .await
        .unwrap();
    // Something else keeps a hash where the cache's string would be.
    let client = redis::cluster::ClusterClient::new(rc.urls()).unwrap();
    let mut connection = client.get_async_connection().await.unwrap();
    let _: () = redis::cmd("HSET")
        .arg(cache.backend_key("taken"))
        .arg("field")
        .arg("value")
        .query_async(&mut connection)
        .await
        .unwrap();
    let started = Instant::now();
    assert_eq!(cache.get::<String>("taken").await, None, "fails open");
    let took = started.elapsed();
    assert_eq!(cache.stats().errors, 1, "counted as a backend error");
    assert!(
        took < Duration::from_secs(1),
        "WRONGTYPE took {took:?}: it was waited on as if a failover explained it"
    );
}
