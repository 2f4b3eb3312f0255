//! DNS discovery against a real DNS server (herd-testkit's, on 127.0.0.1) whose zone the test
//! changes, with real listeners on 127.0.0.1, 127.0.0.2 and 127.0.0.3 behind the name.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use herd_lb_core::discover::{DiscoverFeed, DnsConfig, DnsDiscover};
use herd_lb_core::{EndpointSet, EndpointStatus, P2c, PickContext};
use herd_testkit::DnsServer;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

const NAME: &str = "app.herd.test.";
/// How long the set may take to follow the zone: a few resolution intervals.
const FOLLOW: Duration = Duration::from_secs(5);

/// One listener per address, all on one port (DNS gives addresses, the port is configured).
async fn listeners(ips: &[&str]) -> (u16, Vec<TcpListener>) {
    for _ in 0..20 {
        let first = TcpListener::bind((ips[0], 0)).await.unwrap();
        let port = first.local_addr().unwrap().port();
        let mut all = vec![first];
        for ip in &ips[1..] {
            match TcpListener::bind((*ip, port)).await {
                Ok(l) => all.push(l),
                Err(_) => break,
            }
        }
        if all.len() == ips.len() {
            return (port, all);
        }
    }
    panic!("no port free on all of {ips:?}");
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn keys(set: &EndpointSet<SocketAddr, SocketAddr>) -> BTreeSet<IpAddr> {
    set.endpoints().iter().map(|e| e.key.ip()).collect()
}

async fn wait_for(
    set: &EndpointSet<SocketAddr, SocketAddr>,
    want: &[&str],
    what: &str,
) -> Duration {
    let want: BTreeSet<IpAddr> = want.iter().map(|s| ip(s)).collect();
    let start = Instant::now();
    while keys(set) != want {
        assert!(
            start.elapsed() < FOLLOW,
            "{what}: the set is {:?} after {FOLLOW:?}, expected {want:?}",
            keys(set)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

#[tokio::test]
async fn endpoints_follow_the_zone_keep_their_state_and_survive_a_resolver_outage() {
    let (port, _listeners) = listeners(&["127.0.0.1", "127.0.0.2", "127.0.0.3"]).await;
    let dns = DnsServer::start().await.unwrap();
    dns.set(NAME, &[ip("127.0.0.1"), ip("127.0.0.2")]);

    let config = DnsConfig::new(NAME, port)
        .nameserver(dns.addr())
        .interval(Duration::from_millis(200))
        .min_interval(Duration::from_millis(100))
        .timeout(Duration::from_millis(300));
    let set: EndpointSet<SocketAddr, SocketAddr> = EndpointSet::new();
    let feed = tokio::spawn(DiscoverFeed::new(&set).run(DnsDiscover::seeded(config, 1).unwrap()));

    let took = wait_for(&set, &["127.0.0.1", "127.0.0.2"], "two A records").await;
    println!("first resolution: {took:?}");
    // Every endpoint is a real listener at the configured port.
    let policy = P2c::seeded(5);
    for _ in 0..4 {
        let picked = set.pick(&policy, &PickContext::new()).unwrap();
        assert_eq!(picked.service.port(), port);
        TcpStream::connect(picked.service).await.unwrap();
        picked.guard.success();
    }

    // State that must survive membership changes: a request in flight on 127.0.0.1 and a
    // failure counted on it.
    let first: SocketAddr = (ip("127.0.0.1"), port).into();
    let state = set.state(&first).unwrap();
    // (P2c prefers the less loaded endpoint: the failure first, then the request kept.)
    let on_first = || loop {
        let picked = set.pick(&policy, &PickContext::new()).unwrap();
        if picked.service == first {
            break picked.guard;
        }
    };
    on_first().failure();
    let in_flight = on_first();
    assert_eq!(state.in_flight(), 1);
    assert_eq!(state.completed().1, 1, "one failure counted");
    let completed_before = state.completed();

    // A third address appears.
    dns.set(NAME, &[ip("127.0.0.1"), ip("127.0.0.2"), ip("127.0.0.3")]);
    let took = wait_for(
        &set,
        &["127.0.0.1", "127.0.0.2", "127.0.0.3"],
        "a third A record",
    )
    .await;
    println!("addition followed in {took:?}");
    let kept = set.state(&first).unwrap();
    assert!(Arc::ptr_eq(&kept, &state), "127.0.0.1 keeps its state");
    assert_eq!(kept.in_flight(), 1);
    assert_eq!(kept.completed(), completed_before);

    // One address goes (idle: it leaves at once), another goes with a request in flight (it
    // drains: no new request, in the set until its request ends).
    dns.set(NAME, &[ip("127.0.0.3")]);
    let start = Instant::now();
    while state.status() != EndpointStatus::Draining {
        assert!(start.elapsed() < FOLLOW, "127.0.0.1 never started draining");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_for(
        &set,
        &["127.0.0.1", "127.0.0.3"],
        "127.0.0.2 removed, 127.0.0.1 draining",
    )
    .await;
    for _ in 0..20 {
        let picked = set.pick(&policy, &PickContext::new()).unwrap();
        assert_eq!(
            picked.service.ip(),
            ip("127.0.0.3"),
            "no request for a draining endpoint"
        );
    }
    in_flight.success();
    let took = wait_for(&set, &["127.0.0.3"], "127.0.0.1 drained").await;
    println!("drained endpoint left {took:?} after its last request");
    let third: SocketAddr = (ip("127.0.0.3"), port).into();
    let third_state = set.state(&third).unwrap();

    // The resolver stops answering, then the name vanishes: the last good set stays.
    let asked = dns.queries();
    dns.set_answering(false);
    let start = Instant::now();
    while dns.queries() < asked + 3 {
        assert!(start.elapsed() < FOLLOW, "the resolver stopped asking");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(keys(&set), BTreeSet::from([ip("127.0.0.3")]));
    dns.remove(NAME);
    dns.set_answering(true);
    let asked = dns.queries();
    while dns.queries() < asked + 3 {
        assert!(start.elapsed() < 2 * FOLLOW, "the resolver stopped asking");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        keys(&set),
        BTreeSet::from([ip("127.0.0.3")]),
        "NXDOMAIN keeps the set"
    );
    assert!(Arc::ptr_eq(&set.state(&third).unwrap(), &third_state));

    // Back to answering with a new set: followed again.
    dns.set(NAME, &[ip("127.0.0.2"), ip("127.0.0.3")]);
    wait_for(&set, &["127.0.0.2", "127.0.0.3"], "after the outage").await;
    assert!(Arc::ptr_eq(&set.state(&third).unwrap(), &third_state));

    // The feed ends with the set.
    drop(set);
    tokio::time::timeout(FOLLOW, feed)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
