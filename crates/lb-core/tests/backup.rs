//! Backup endpoints (nginx `server ... backup`): traffic goes to the primaries while any can take
//! it, to the backups when none can (ejected, failing active checks, draining, at its cap), and
//! back to the primaries as soon as one can again; with every policy but consistent hashing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::task::{Context, Poll};
use std::time::Duration;

use herd_lb_core::health::{ActiveHealthConfig, TcpProbe};
use herd_lb_core::{
    Balancer, BalancerConfig, ConsistentHash, EndpointSet, EndpointStatus, Error, LeastOutstanding,
    OutlierDetection, P2c, PeakEwma, Pick, PickContext, PickError, RoundRobin, WeightedRandom,
};
use tokio::net::TcpListener;
use tower::ServiceExt;

const PICKS: usize = 4_000;

fn policies() -> Vec<(&'static str, Box<dyn Pick>)> {
    vec![
        ("p2c", Box::new(P2c::seeded(7))),
        ("round_robin", Box::new(RoundRobin::seeded(7))),
        ("weighted_random", Box::new(WeightedRandom::seeded(7))),
        ("least_outstanding", Box::new(LeastOutstanding::seeded(7))),
        ("peak_ewma", Box::new(PeakEwma::seeded(7))),
    ]
}

/// Ejection after one failure, for `ejection`, and no cap on the ejected share.
fn outlier(ejection: Duration) -> OutlierDetection {
    OutlierDetection {
        consecutive_failures: Some(1),
        base_ejection: ejection,
        max_ejection: ejection,
        jitter: 0.0,
        max_ejection_percent: 100,
        ..OutlierDetection::default()
    }
}

/// Primaries `p0`, `p1` (weights 1, 2) and backups `b0`, `b1` (weights 3, 1), the backups
/// inserted first to show that insertion order does not matter.
fn set(outlier: OutlierDetection) -> EndpointSet<String> {
    let set = EndpointSet::<String>::builder()
        .outlier_detection(outlier)
        .seed(1)
        .build();
    set.insert_backup("b0".into(), (), 3.0).unwrap();
    set.insert("p0".into(), (), 1.0).unwrap();
    set.insert_backup("b1".into(), (), 1.0).unwrap();
    set.insert("p1".into(), (), 2.0).unwrap();
    set
}

/// Keys picked by `n` sequential picks (each finished with a success), counted.
fn picks(set: &EndpointSet<String>, policy: &dyn Pick, n: usize) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        let picked = set.pick(policy, &PickContext::new()).unwrap();
        let key = set
            .snapshot()
            .get(picked.guard.index())
            .unwrap()
            .key()
            .clone();
        *counts.entry(key).or_insert(0) += 1;
        picked.guard.success();
    }
    counts
}

fn eject(set: &EndpointSet<String>, key: &str) {
    let state = set.state(&key.to_string()).unwrap();
    let snapshot = set.snapshot();
    let index = snapshot.position(&key.to_string()).unwrap();
    // Pick (round robin, so every available endpoint comes up) until `key` does: the failure of
    // its request ejects it.
    let policy = RoundRobin::seeded(3);
    let mut picked = None;
    for _ in 0..set.len() {
        let p = set.pick(&policy, &PickContext::new()).unwrap();
        if p.guard.index() == index {
            picked = Some(p);
            break;
        }
        p.guard.success();
    }
    let picked = picked.unwrap_or_else(|| panic!("{key} is not picked"));
    picked.guard.failure();
    assert_eq!(state.status(), EndpointStatus::Ejected, "{key}");
}

fn keys(counts: &HashMap<String, usize>) -> Vec<&str> {
    let mut keys: Vec<&str> = counts.keys().map(String::as_str).collect();
    keys.sort_unstable();
    keys
}

#[test]
fn primaries_come_first_and_endpoint_info_names_the_backups() {
    let set = set(OutlierDetection::disabled());
    let snapshot = set.snapshot();
    assert_eq!(snapshot.primaries(), 2);
    assert_eq!(snapshot.candidates().len(), 2);
    assert_eq!(snapshot.backups().map(|b| b.len()), Some(2));
    let info: Vec<(String, bool)> = set
        .endpoints()
        .into_iter()
        .map(|e| (e.key, e.backup))
        .collect();
    assert_eq!(
        info,
        [
            ("p0".to_string(), false),
            ("p1".to_string(), false),
            ("b0".to_string(), true),
            ("b1".to_string(), true),
        ]
    );
    // Without backups there is no backup view at all.
    let plain: EndpointSet<&str> = EndpointSet::new();
    plain.insert("a", (), 1.0).unwrap();
    assert!(plain.snapshot().backups().is_none());
    assert!(!plain.endpoints()[0].backup);
}

#[test]
fn only_primaries_get_traffic_while_any_is_healthy() {
    for (name, policy) in policies() {
        let set = set(outlier(Duration::from_secs(600)));
        let counts = picks(&set, policy.as_ref(), PICKS);
        assert_eq!(keys(&counts), ["p0", "p1"], "{name}: {counts:?}");
        // One primary out: the other takes everything, still no backup.
        eject(&set, "p0");
        let counts = picks(&set, policy.as_ref(), PICKS);
        assert_eq!(keys(&counts), ["p1"], "{name}: {counts:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn backups_take_over_when_every_primary_is_ejected_and_a_recovered_primary_takes_back() {
    for (name, policy) in policies() {
        let set = set(outlier(Duration::from_secs(30)));
        eject(&set, "p0");
        eject(&set, "p1");
        let counts = picks(&set, policy.as_ref(), PICKS);
        assert_eq!(keys(&counts), ["b0", "b1"], "{name}: {counts:?}");
        if name != "least_outstanding" && name != "peak_ewma" {
            // Sequential picks leave loads equal: the backups' weights (3:1) decide.
            let b0 = counts["b0"] as f64 / PICKS as f64;
            assert!((b0 - 0.75).abs() < 0.05, "{name}: b0 share {b0}");
        }
        // The ejection ends (virtual time): the next pick probes a primary, whose success
        // brings it back; from then on no request goes to a backup.
        tokio::time::advance(Duration::from_secs(31)).await;
        let counts = picks(&set, policy.as_ref(), PICKS);
        assert!(
            counts.get("p0").is_some_and(|&n| n > 0),
            "{name}: {counts:?}"
        );
        let counts = picks(&set, policy.as_ref(), PICKS);
        assert_eq!(keys(&counts), ["p0", "p1"], "{name}: {counts:?}");
    }
}

#[test]
fn primaries_at_their_cap_overflow_to_backups_and_get_new_requests_once_free() {
    for (name, policy) in policies() {
        let set = set(OutlierDetection::disabled());
        set.set_max_in_flight(&"p0".to_string(), Some(1)).unwrap();
        set.set_max_in_flight(&"p1".to_string(), Some(1)).unwrap();
        let first = set.pick(policy.as_ref(), &PickContext::new()).unwrap();
        let second = set.pick(policy.as_ref(), &PickContext::new()).unwrap();
        let mut held = [first.guard.index(), second.guard.index()];
        held.sort_unstable();
        assert_eq!(held, [0, 1], "{name}: both primaries first");
        let third = set.pick(policy.as_ref(), &PickContext::new()).unwrap();
        assert!(third.guard.index() >= 2, "{name}: full primaries overflow");
        third.guard.success();
        second.guard.success();
        let fourth = set.pick(policy.as_ref(), &PickContext::new()).unwrap();
        assert!(
            fourth.guard.index() < 2,
            "{name}: a freed primary comes first"
        );
        fourth.guard.success();
        first.guard.success();
    }
}

#[tokio::test]
async fn draining_the_last_primary_sends_new_requests_to_the_backup() {
    let set = EndpointSet::<String>::builder().seed(1).build();
    set.insert("primary".into(), (), 1.0).unwrap();
    set.insert_backup("backup".into(), (), 1.0).unwrap();
    let policy = RoundRobin::seeded(1);
    let in_flight = set.pick(&policy, &PickContext::new()).unwrap();
    assert_eq!(in_flight.guard.index(), 0);
    let drained = set.drain(&"primary".to_string()).unwrap();
    let counts = picks(&set, &policy, 100);
    assert_eq!(keys(&counts), ["backup"]);
    in_flight.guard.success();
    drained.await;
    assert_eq!(set.len(), 1, "the drained primary is gone");
    // A new primary takes the traffic back from the backup.
    set.insert("replacement".into(), (), 1.0).unwrap();
    let counts = picks(&set, &policy, 100);
    assert_eq!(keys(&counts), ["replacement"]);
}

#[test]
fn a_retry_goes_to_a_backup_once_every_primary_was_tried() {
    let set = set(OutlierDetection::disabled());
    for (name, policy) in policies() {
        let tried = [0, 1];
        let ctx = PickContext::new().excluding(&tried);
        let picked = set.pick(policy.as_ref(), &ctx).unwrap();
        assert!(picked.guard.index() >= 2, "{name}");
        picked.guard.success();
        // Everything tried: exclusions are lifted, and the primaries come first again.
        let all = [0, 1, 2, 3];
        let picked = set
            .pick(policy.as_ref(), &PickContext::new().excluding(&all))
            .unwrap();
        assert!(picked.guard.index() < 2, "{name}");
        picked.guard.success();
    }
}

#[test]
fn panic_mode_starts_only_when_backups_are_unhealthy_too() {
    let set = set(outlier(Duration::from_secs(600)));
    for key in ["p0", "p1", "b0"] {
        eject(&set, key);
    }
    let counts = picks(&set, &P2c::seeded(1), 200);
    assert_eq!(keys(&counts), ["b1"], "a healthy backup, no panic mode");
    eject(&set, "b1");
    // Nothing healthy: panic mode ignores health, among the primaries first.
    let counts = picks(&set, &RoundRobin::seeded(1), 200);
    assert_eq!(keys(&counts), ["p0", "p1"]);
}

#[test]
fn a_set_of_backups_only_serves_from_them_and_an_empty_one_fails() {
    let set = EndpointSet::<String>::builder().seed(1).build();
    set.insert_backup("b".into(), (), 1.0).unwrap();
    let counts = picks(&set, &P2c::seeded(1), 50);
    assert_eq!(keys(&counts), ["b"]);
    set.remove(&"b".to_string());
    assert!(matches!(
        set.pick(&P2c::seeded(1), &PickContext::new()),
        Err(PickError::NoEndpoints)
    ));
}

#[test]
fn moving_an_endpoint_between_primaries_and_backups_keeps_its_state() {
    let set = set(OutlierDetection::disabled());
    let state = set.state(&"p0".to_string()).unwrap();
    set.insert_backup("p0".into(), (), 5.0).unwrap();
    let moved = set.state(&"p0".to_string()).unwrap();
    assert!(std::sync::Arc::ptr_eq(&state, &moved));
    assert_eq!(moved.weight(), 5.0);
    assert_eq!(set.snapshot().primaries(), 1);
    let counts = picks(&set, &RoundRobin::seeded(1), 100);
    assert_eq!(keys(&counts), ["p1"]);
    set.insert("b1".into(), (), 1.0).unwrap();
    assert_eq!(set.snapshot().primaries(), 2);
    let counts = picks(&set, &RoundRobin::seeded(1), 100);
    assert_eq!(keys(&counts), ["b1", "p1"]);
    assert!(matches!(
        set.insert_backup("bad".into(), (), 0.0),
        Err(Error::InvalidWeight { .. })
    ));
}

#[tokio::test]
async fn active_checks_run_on_backups_and_move_traffic_both_ways() {
    // The kernel completes connections to a bound listener from its backlog; dropping one
    // refuses new connections, like a killed process, and binding its port again revives it.
    let primary = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backup = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let primary_addr = primary.local_addr().unwrap().to_string();
    let backup_addr = backup.local_addr().unwrap().to_string();
    let set = EndpointSet::<String>::builder().seed(1).build();
    set.insert(primary_addr.clone(), (), 1.0).unwrap();
    set.insert_backup(backup_addr.clone(), (), 1.0).unwrap();
    let check = ActiveHealthConfig {
        interval: Duration::from_millis(30),
        jitter: 0.0,
        timeout: Duration::from_secs(1),
        rise: 1,
        fall: 1,
    };
    let task = set.spawn_active_health(TcpProbe, check).unwrap();
    let status = |key: &str| set.state(&key.to_string()).unwrap().status();

    drop(primary);
    wait_for(|| status(&primary_addr) == EndpointStatus::Unhealthy).await;
    let counts = picks(&set, &P2c::seeded(1), 100);
    assert_eq!(keys(&counts), [backup_addr.as_str()]);

    let primary = TcpListener::bind(&primary_addr).await.unwrap();
    wait_for(|| status(&primary_addr) == EndpointStatus::Healthy).await;
    let counts = picks(&set, &P2c::seeded(1), 100);
    assert_eq!(keys(&counts), [primary_addr.as_str()]);

    // The backup is checked too.
    drop(backup);
    wait_for(|| status(&backup_addr) == EndpointStatus::Unhealthy).await;
    task.stop();
    drop(primary);
}

async fn wait_for(mut cond: impl FnMut() -> bool) {
    for _ in 0..200 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("condition not met within 5 s");
}

/// An endpoint that answers with its name.
#[derive(Clone)]
struct Named(&'static str);

impl tower::Service<u32> for Named {
    type Response = &'static str;
    type Error = Infallible;
    type Future = std::future::Ready<Result<&'static str, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: u32) -> Self::Future {
        std::future::ready(Ok(self.0))
    }
}

#[tokio::test]
async fn a_balancer_from_config_answers_from_its_primaries_and_refuses_backups_with_hashing() {
    let config: BalancerConfig = toml::from_str(
        r#"
        policy = "round_robin"
        endpoints = [{ address = "primary" }]
        backups = [{ address = "backup", weight = 2 }]
        "#,
    )
    .unwrap();
    let lb = config
        .builder::<String, Named, u32>()
        .unwrap()
        .build()
        .unwrap();
    config
        .insert_endpoints(&lb, |key: &String| {
            Named(if key == "primary" {
                "primary"
            } else {
                "backup"
            })
        })
        .unwrap();
    for _ in 0..20 {
        assert_eq!(lb.clone().oneshot(1).await.unwrap(), "primary");
    }
    let info = lb.endpoints();
    assert_eq!(info.iter().filter(|e| e.backup).count(), 1);
    let drained = lb.drain(&"primary".to_string()).unwrap();
    drained.await;
    assert_eq!(lb.clone().oneshot(1).await.unwrap(), "backup");

    // nginx refuses `backup` with `hash` and `ip_hash`; so do the config and the balancer.
    let hashing: BalancerConfig = toml::from_str(
        r#"
        policy = { consistent_hash = { balance_factor = 1.25 } }
        endpoints = [{ address = "primary" }]
        backups = [{ address = "backup" }]
        "#,
    )
    .unwrap();
    let refused = hashing.builder::<String, Named, u32>();
    assert!(
        matches!(
            refused,
            Err(Error::InvalidConfig {
                field: "backups",
                ..
            })
        ),
        "{refused:?}"
    );
    let lb = Balancer::<String, Named, u32>::builder()
        .policy(ConsistentHash::seeded(1.25, 1).unwrap())
        .build()
        .unwrap();
    lb.insert("primary".into(), Named("primary"), 1.0).unwrap();
    let refused = lb.insert_backup("backup".into(), Named("backup"), 1.0);
    assert!(
        matches!(
            refused,
            Err(Error::InvalidConfig {
                field: "backups",
                ..
            })
        ),
        "{refused:?}"
    );
    assert_eq!(lb.endpoints().len(), 1);

    // An address the key type refuses names the backup list.
    let bad: BalancerConfig = toml::from_str(
        r#"
        backups = [{ address = "not a number" }]
        "#,
    )
    .unwrap();
    let lb = bad.builder::<u16, Named, u32>().unwrap().build().unwrap();
    let refused = bad.insert_endpoints(&lb, |_| Named("x"));
    assert!(
        matches!(
            refused,
            Err(Error::InvalidConfig {
                field: "backups.address",
                ..
            })
        ),
        "{refused:?}"
    );
}
