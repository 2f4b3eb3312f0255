//! Nodes from DNS: a real PostgreSQL primary and two replicas (herd-testkit) behind a name
//! served by the kit's DNS server, which the test changes while the router runs.
//!
//! A records carry addresses, not ports, so every node must answer on one port: each server
//! is reached through a small TCP relay of its own on 127.0.0.2, .3 and .4 at one common
//! port (the kit places every local server on 127.0.0.1 at a port of its own).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use herd_db_router::{DbRouter, DnsConfig, DnsNodes, NodeConfig, RouterConfig};
use herd_testkit::{DnsServer, PgCluster};
use sqlx::Row;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;

const NAME: &str = "db.herd.test";
/// How long the router may take to follow the zone: a few resolution and check intervals.
const FOLLOW: Duration = Duration::from_secs(10);

/// Relays stopped when dropped.
struct Relays(Vec<JoinHandle<()>>);

impl Drop for Relays {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// One relay per (listen address, target), all listening on one port.
async fn relays(ips: &[&str], targets: &[SocketAddr]) -> (u16, Relays) {
    for _ in 0..20 {
        let first = TcpListener::bind((ips[0], 0)).await.unwrap();
        let port = first.local_addr().unwrap().port();
        let mut listeners = vec![first];
        for ip in &ips[1..] {
            match TcpListener::bind((*ip, port)).await {
                Ok(l) => listeners.push(l),
                Err(_) => break,
            }
        }
        if listeners.len() < ips.len() {
            continue;
        }
        let tasks = listeners
            .into_iter()
            .zip(targets.iter().copied())
            .map(|(listener, target)| {
                tokio::spawn(async move {
                    while let Ok((mut client, _)) = listener.accept().await {
                        tokio::spawn(async move {
                            if let Ok(mut server) = TcpStream::connect(target).await {
                                let _ =
                                    tokio::io::copy_bidirectional(&mut client, &mut server).await;
                            }
                        });
                    }
                })
            })
            .collect();
        return (port, Relays(tasks));
    }
    panic!("no port free on all of {ips:?}");
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The PostgreSQL ports that `reads` automatically routed reads ran on (all on replicas).
async fn read_ports(router: &DbRouter, reads: usize) -> HashSet<u16> {
    let mut seen = HashSet::new();
    for _ in 0..reads {
        let row = sqlx::query("SELECT pg_is_in_recovery() AS standby, inet_server_port() AS port")
            .fetch_one(router)
            .await
            .unwrap();
        assert!(row.get::<bool, _>("standby"), "a read ran on the primary");
        seen.insert(row.get::<i32, _>("port") as u16);
    }
    seen
}

/// Waits until the router's eligible replicas are `want` (node names).
async fn wait_replicas(router: &DbRouter, want: &[String], what: &str) -> Duration {
    let want: HashSet<&str> = want.iter().map(String::as_str).collect();
    let start = Instant::now();
    loop {
        let status = router.status();
        let eligible: HashSet<&str> = status
            .nodes
            .iter()
            .filter(|n| n.eligible)
            .map(|n| n.name.as_str())
            .collect();
        if eligible == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < FOLLOW,
            "{what}: eligible replicas {eligible:?} after {FOLLOW:?}, expected {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn replicas_found_in_dns_take_reads_and_leave_without_a_restart() {
    let pg = PgCluster::start(2).await.unwrap();
    let addr = |n: &herd_testkit::PgNode| SocketAddr::from((n.ip(), n.port()));
    let (port, _relays) = relays(
        &["127.0.0.2", "127.0.0.3", "127.0.0.4"],
        &[addr(pg.primary()), addr(pg.replica(0)), addr(pg.replica(1))],
    )
    .await;
    let node = |last: u8| format!("127.0.0.{last}:{port}");
    let dns = DnsServer::start().await.unwrap();
    dns.set(NAME, &[ip("127.0.0.2"), ip("127.0.0.3")]);

    let config = RouterConfig {
        check_interval: Duration::from_millis(200),
        ..RouterConfig::default()
    };
    let nodes = DnsNodes::new(format!("postgres://postgres@{NAME}:{port}/postgres")).dns(
        DnsConfig::default()
            .nameserver(dns.addr())
            .interval(Duration::from_millis(200))
            .min_interval(Duration::from_millis(100))
            .timeout(Duration::from_millis(500)),
    );
    // No configured node: the name's nodes are found before `build` returns.
    let router = DbRouter::builder(config)
        .seed(3)
        .dns(nodes)
        .build()
        .await
        .unwrap();
    let status = router.status();
    assert_eq!(status.primary.as_deref(), Some(node(2).as_str()));
    assert_eq!(status.nodes.len(), 2);
    wait_replicas(&router, &[node(3)], "the first replica").await;
    assert_eq!(
        read_ports(&router, 10).await,
        HashSet::from([pg.replica(0).port()])
    );
    sqlx::query("CREATE TABLE IF NOT EXISTS dns_t (id int)")
        .execute(&router)
        .await
        .unwrap();

    // A second replica appears in DNS: it takes reads, with no restart.
    dns.set(NAME, &[ip("127.0.0.2"), ip("127.0.0.3"), ip("127.0.0.4")]);
    let took = wait_replicas(&router, &[node(3), node(4)], "a new replica").await;
    println!("new replica eligible after {took:?}");
    assert_eq!(
        read_ports(&router, 40).await,
        HashSet::from([pg.replica(0).port(), pg.replica(1).port()]),
        "both replicas take reads"
    );
    assert_eq!(router.status().primary.as_deref(), Some(node(2).as_str()));

    // The first replica leaves DNS: it takes no more reads and leaves the status; the primary
    // (writes) and the other replica are untouched.
    dns.set(NAME, &[ip("127.0.0.2"), ip("127.0.0.4")]);
    let took = wait_replicas(&router, &[node(4)], "a removed replica").await;
    println!("removed replica out after {took:?}");
    assert!(router.status().nodes.iter().all(|n| n.name != node(3)));
    assert_eq!(
        read_ports(&router, 20).await,
        HashSet::from([pg.replica(1).port()])
    );
    sqlx::query("INSERT INTO dns_t VALUES (1)")
        .execute(&router)
        .await
        .unwrap();

    // The resolver goes silent: the nodes stay.
    let asked = dns.queries();
    dns.set_answering(false);
    let start = Instant::now();
    while dns.queries() < asked + 3 {
        assert!(start.elapsed() < FOLLOW, "the router stopped asking");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(router.status().nodes.len(), 2);
    assert_eq!(
        read_ports(&router, 5).await,
        HashSet::from([pg.replica(1).port()])
    );

    // It answers again with the first replica back: a node again, taking reads.
    dns.set(NAME, &[ip("127.0.0.2"), ip("127.0.0.3"), ip("127.0.0.4")]);
    dns.set_answering(true);
    wait_replicas(&router, &[node(3), node(4)], "a replica back").await;
    assert_eq!(
        read_ports(&router, 40).await,
        HashSet::from([pg.replica(0).port(), pg.replica(1).port()])
    );
    router.close().await;
}

#[tokio::test]
async fn nodes_are_added_and_removed_through_the_api() {
    let pg = PgCluster::start(1).await.unwrap();
    let config = RouterConfig {
        primary: Some(NodeConfig::new(pg.primary_url())),
        check_interval: Duration::from_millis(200),
        ..RouterConfig::default()
    };
    let router = DbRouter::builder(config).seed(5).build().await.unwrap();
    // No replica yet: reads fall back to the primary.
    assert!(!router.replica().unwrap().is_replica());

    let name = router
        .add_node(NodeConfig::new(pg.replica(0).url()).name("late-replica"))
        .await
        .unwrap();
    assert_eq!(name, "late-replica");
    let duplicate = router
        .add_node(NodeConfig::new(pg.replica(0).url()).name("late-replica"))
        .await;
    assert!(duplicate.unwrap_err().to_string().contains("already"));
    wait_replicas(&router, std::slice::from_ref(&name), "an added replica").await;
    assert_eq!(
        read_ports(&router, 5).await,
        HashSet::from([pg.replica(0).port()])
    );

    // A pick held across the removal keeps working; new reads go to the primary.
    let held = router.replica().unwrap();
    assert_eq!(held.node(), "late-replica");
    assert!(router.remove_node("late-replica").await);
    assert!(!router.remove_node("late-replica").await, "already gone");
    assert!(!router.replica().unwrap().is_replica());
    let port: i32 = sqlx::query_scalar("SELECT inet_server_port()")
        .fetch_one(&*held)
        .await
        .unwrap();
    assert_eq!(port as u16, pg.replica(0).port());
    drop(held);
    assert!(
        router
            .status()
            .nodes
            .iter()
            .all(|n| n.name != "late-replica")
    );

    // Added again under the same name: it takes reads again.
    router
        .add_node(NodeConfig::new(pg.replica(0).url()).name("late-replica"))
        .await
        .unwrap();
    wait_replicas(&router, &[name], "a replica added again").await;
    router.close().await;
}
