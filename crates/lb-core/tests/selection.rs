//! Seeded distribution and membership tests of the selection API (no tower involved).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;

use herd_lb_core::{
    ConsistentHash, EndpointSet, Error, LeastOutstanding, P2c, PeakEwma, Pick, PickContext,
    PickError, RequestKey, RoundRobin, WeightedRandom,
};

const PICKS: usize = 100_000;

fn set_with(weights: &[f64]) -> EndpointSet<String> {
    let set = EndpointSet::<String>::builder().seed(1).build();
    for (i, w) in weights.iter().enumerate() {
        set.insert(format!("ep{i}"), (), *w).unwrap();
    }
    set
}

/// Shares of `PICKS` sequential picks (each request finishes before the next).
fn shares(set: &EndpointSet<String>, policy: &dyn Pick) -> Vec<f64> {
    let mut counts = vec![0usize; set.len()];
    for _ in 0..PICKS {
        let picked = set.pick(policy, &PickContext::new()).unwrap();
        counts[picked.guard.index()] += 1;
        picked.guard.success();
    }
    counts.iter().map(|&c| c as f64 / PICKS as f64).collect()
}

fn assert_shares(name: &str, got: &[f64], weights: &[f64]) {
    let total: f64 = weights.iter().sum();
    for (i, (g, w)) in got.iter().zip(weights).enumerate() {
        let want = w / total;
        assert!(
            (g - want).abs() <= 0.02,
            "{name}: endpoint {i} got {g:.4}, want {want:.4} ± 0.02 ({got:?})"
        );
    }
}

#[test]
fn weighted_shares_hold_for_every_weighted_policy() {
    for weights in [vec![3.0, 2.0, 1.0], vec![0.99, 0.005, 0.005], vec![1.0; 8]] {
        let policies: Vec<(&str, Box<dyn Pick>)> = vec![
            ("p2c", Box::new(P2c::seeded(7))),
            ("round_robin", Box::new(RoundRobin::seeded(7))),
            ("weighted_random", Box::new(WeightedRandom::seeded(7))),
            ("least_outstanding", Box::new(LeastOutstanding::seeded(7))),
        ];
        for (name, policy) in policies {
            let set = set_with(&weights);
            let got = shares(&set, policy.as_ref());
            assert_shares(name, &got, &weights);
        }
    }
}

#[test]
fn p2c_prefers_the_less_loaded_of_two() {
    let set = set_with(&[1.0, 1.0]);
    let busy = set
        .pick(&|_: &_, _: &PickContext<'_>| Some(0), &PickContext::new())
        .unwrap();
    let policy = P2c::seeded(3);
    let mut to_idle = 0;
    for _ in 0..1000 {
        let p = set.pick(&policy, &PickContext::new()).unwrap();
        if p.guard.index() == 1 {
            to_idle += 1;
        }
    }
    // With equal weights the two draws are both endpoints: the busy one never wins.
    assert_eq!(to_idle, 1000);
    drop(busy);

    // Among three, the busy one loses every pick too (drawn with replacement, it would keep the
    // 1/9 where both draws land on it); the other two share them.
    let set = set_with(&[1.0, 1.0, 1.0]);
    let busy = set
        .pick(&|_: &_, _: &PickContext<'_>| Some(2), &PickContext::new())
        .unwrap();
    let mut counts = [0_usize; 3];
    for _ in 0..3000 {
        let p = set.pick(&policy, &PickContext::new()).unwrap();
        counts[p.guard.index()] += 1;
    }
    assert_eq!(counts[2], 0, "{counts:?}");
    assert!(counts[0] > 1200 && counts[1] > 1200, "{counts:?}");
    drop(busy);
}

#[test]
fn peak_ewma_avoids_a_slow_endpoint() {
    let set = set_with(&[1.0, 1.0]);
    let slow = set
        .pick(&|_: &_, _: &PickContext<'_>| Some(0), &PickContext::new())
        .unwrap();
    // Latency is measured on the real clock (a TSC clock, not tokio's), so really wait.
    std::thread::sleep(std::time::Duration::from_millis(300));
    slow.guard.success();
    let infos = set.endpoints();
    assert!(
        (300..400).contains(&infos[0].ewma.as_millis()),
        "peak: the slow sample is taken at once: {:?}",
        infos[0].ewma
    );
    assert_eq!(
        infos[1].ewma.as_millis(),
        30,
        "unsampled endpoints start at 30 ms"
    );
    let policy = PeakEwma::seeded(9);
    let mut to_fast = 0;
    for _ in 0..1000 {
        let p = set.pick(&policy, &PickContext::new()).unwrap();
        to_fast += usize::from(p.guard.index() == 1);
    }
    // The two draws are both endpoints: the slow one never wins.
    assert_eq!(to_fast, 1000);
}

#[test]
fn smooth_round_robin_interleaves_like_nginx() {
    let set = set_with(&[5.0, 1.0, 1.0]);
    let policy = RoundRobin::seeded(1);
    let order: Vec<usize> = (0..7)
        .map(|_| {
            set.pick(&policy, &PickContext::new())
                .unwrap()
                .guard
                .index()
        })
        .collect();
    assert_eq!(order, vec![0, 0, 1, 0, 2, 0, 0]);
}

#[test]
fn round_robin_keeps_its_rotation_across_updates() {
    let set = set_with(&[2.0, 1.0]);
    let policy = RoundRobin::seeded(1);
    let first = set
        .pick(&policy, &PickContext::new())
        .unwrap()
        .guard
        .index();
    // An unrelated membership change must not restart the rotation (pingora does).
    set.insert("other".to_string(), (), 1.0).unwrap();
    set.remove(&"other".to_string());
    let next: Vec<usize> = (0..2)
        .map(|_| {
            set.pick(&policy, &PickContext::new())
                .unwrap()
                .guard
                .index()
        })
        .collect();
    assert_eq!((first, next), (0, vec![1, 0]));
}

fn keys_owner(set: &EndpointSet<String>, policy: &ConsistentHash, keys: usize) -> Vec<String> {
    let snapshot = set.snapshot();
    (0..keys)
        .map(|k| {
            let ctx = PickContext::new().with_key(Some(RequestKey::of(k.to_string())));
            let picked = set.pick(policy, &ctx).unwrap();
            snapshot.get(picked.guard.index()).unwrap().key().clone()
        })
        .collect()
}

#[test]
fn consistent_hashing_moves_about_one_nth_of_keys() {
    let n = 10;
    let set = set_with(&vec![1.0; n]);
    let policy = ConsistentHash::seeded(1.25, 1).unwrap();
    let before = keys_owner(&set, &policy, 20_000);
    // Every endpoint owns a fair part of the keys.
    let mut per: HashMap<&String, usize> = HashMap::new();
    for k in &before {
        *per.entry(k).or_default() += 1;
    }
    assert_eq!(per.len(), n);
    assert!(per.values().all(|&c| c > 1_000 && c < 3_000), "{per:?}");

    set.remove(&"ep3".to_string());
    let after = keys_owner(&set, &policy, 20_000);
    let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
    let moved_not_from_removed = before
        .iter()
        .zip(&after)
        .filter(|(b, a)| b != a && b.as_str() != "ep3")
        .count();
    assert_eq!(
        moved_not_from_removed, 0,
        "only the removed endpoint's keys move"
    );
    assert!(moved as f64 <= 20_000.0 / n as f64 * 1.3, "moved {moved}");
}

/// Pinned: the key -> endpoint mapping of a fixed ring. Gateways in a rolling upgrade must map
/// keys alike, so a change of hash algorithm, seeds, point count or ring walk fails here. The
/// expected owners were computed apart from herd, from the documented algorithm with the
/// reference C XXH3 (libxxhash 0.8.1).
#[test]
fn consistent_hashing_maps_fixed_keys_to_fixed_endpoints() {
    let set: EndpointSet<String> = EndpointSet::new();
    for (address, weight) in [
        ("10.0.0.1:8000", 1.0),
        ("10.0.0.2:8000", 1.0),
        ("10.0.0.3:8000", 2.0),
    ] {
        set.insert(address.to_string(), (), weight).unwrap();
    }
    let policy = ConsistentHash::seeded(1.25, 1).unwrap();
    let snapshot = set.snapshot();
    let owners: Vec<&str> = (0..12)
        .map(|k| {
            let key = RequestKey::of(format!("user-{k}"));
            let picked = set.pick(&policy, &PickContext::new().with_key(Some(key)));
            let index = picked.unwrap().guard.index();
            snapshot.get(index).unwrap().key().as_str()
        })
        .collect();
    let [a, b, c] = ["10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000"];
    assert_eq!(owners, [a, b, a, c, c, b, c, b, c, c, c, b]);
    // The endpoints' own hashes: XXH3-64 of the printed key.
    let candidates = snapshot.candidates();
    assert_eq!(candidates.key_hash(0), 0xb11b_d3b3_7e70_3127);
}

#[test]
fn bounded_load_never_exceeds_its_factor() {
    let factor = 1.25;
    let weights = [1.0, 1.0, 2.0, 1.0];
    let set = set_with(&weights);
    let policy = ConsistentHash::seeded(factor, 5).unwrap();
    let total_weight: f64 = weights.iter().sum();
    let mut held = Vec::new();
    // A few hot keys: without the bound they would pile onto two endpoints.
    for r in 0..400 {
        let ctx = PickContext::new().with_key(Some(RequestKey::of((r % 3).to_string())));
        held.push(set.pick(&policy, &ctx).unwrap().guard);
        let total = held.len() as f64;
        for (i, e) in set.endpoints().iter().enumerate() {
            let bound = (factor * total * weights[i] / total_weight).ceil();
            assert!(
                e.in_flight as f64 <= bound,
                "request {r}: {} has {} > {bound}",
                e.key,
                e.in_flight
            );
        }
    }
}

#[test]
fn missing_hash_key_falls_back_to_p2c() {
    let set = set_with(&[1.0, 1.0, 1.0]);
    let policy = ConsistentHash::seeded(1.5, 2).unwrap();
    let got = shares(&set, &policy);
    assert_shares("hash without key", &got, &[1.0, 1.0, 1.0]);
}

#[test]
fn bad_input_is_refused_with_the_endpoint_named() {
    let set: EndpointSet<String> = EndpointSet::new();
    for w in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let err = set.insert("api-1".into(), (), w).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidWeight { endpoint, .. } if endpoint == "api-1"),
            "{err}"
        );
        assert!(err.to_string().contains("api-1"));
    }
    for f in [1.0, 0.5, f64::NAN, -2.0] {
        assert!(matches!(
            ConsistentHash::new(f),
            Err(Error::InvalidConfig {
                field: "policy.balance_factor",
                ..
            })
        ));
    }
    assert_eq!(
        set.pick(&P2c::seeded(1), &PickContext::new()).unwrap_err(),
        PickError::NoEndpoints
    );
    let err = set.set_weight(&"nope".into(), 1.0).unwrap_err();
    assert!(err.to_string().contains("nope"));
}

#[test]
fn endpoint_state_survives_membership_changes() {
    let set = set_with(&[1.0, 1.0]);
    let picked = set
        .pick(&|_: &_, _: &PickContext<'_>| Some(1), &PickContext::new())
        .unwrap();
    set.insert("ep2".into(), (), 1.0).unwrap();
    set.set_weight(&"ep0".into(), 4.0).unwrap();
    let infos = set.endpoints();
    assert_eq!(infos[1].in_flight, 1, "in-flight count kept across updates");
    assert_eq!(infos[0].weight, 4.0);
    drop(picked);
    assert_eq!(set.endpoints()[1].in_flight, 0);
}

#[test]
fn concurrency_cap_gives_overloaded() {
    let set: EndpointSet<String> = EndpointSet::<String>::builder()
        .max_in_flight(Some(1))
        .build();
    set.insert("a".into(), (), 1.0).unwrap();
    let policy = P2c::seeded(1);
    let held = set.pick(&policy, &PickContext::new()).unwrap();
    assert!(matches!(
        set.pick(&policy, &PickContext::new()),
        Err(PickError::Overloaded { .. })
    ));
    drop(held);
    assert!(set.pick(&policy, &PickContext::new()).is_ok());
}

#[test]
fn a_full_set_does_not_fall_back_to_ejected_endpoints() {
    let set: EndpointSet<String> = EndpointSet::<String>::builder()
        .max_in_flight(Some(1))
        .seed(3)
        .build();
    set.insert("healthy".into(), (), 1.0).unwrap();
    set.insert("broken".into(), (), 1.0).unwrap();
    let to_broken = |_: &_, _: &PickContext<'_>| Some(1);
    for _ in 0..5 {
        set.pick(&to_broken, &PickContext::new())
            .unwrap()
            .guard
            .failure();
    }
    assert_eq!(
        set.endpoints()[1].status,
        herd_lb_core::EndpointStatus::Ejected
    );
    let policy = P2c::seeded(1);
    let held = set.pick(&policy, &PickContext::new()).unwrap();
    assert_eq!(held.guard.index(), 0);
    // The healthy endpoint is full: that is overload, not a reason for panic mode.
    assert!(matches!(
        set.pick(&policy, &PickContext::new()),
        Err(PickError::Overloaded { .. })
    ));
    drop(held);
    // With no healthy endpoint left at all, panic mode does use the ejected one.
    set.remove(&"healthy".to_string());
    assert_eq!(
        set.pick(&policy, &PickContext::new())
            .unwrap()
            .guard
            .index(),
        0
    );
}
