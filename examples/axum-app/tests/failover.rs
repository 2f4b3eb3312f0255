//! One of the three instances crashes under load: every request through the gateway still succeeds.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{client, client_ip, demo, get_json};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_instance_under_load_fails_no_request() {
    let d = demo().await;
    let gw = d.gateway.server.url();
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (gw, stop) = (gw.clone(), Arc::clone(&stop));
        workers.push(tokio::spawn(async move {
            // Each worker is its own client IP, paced to ~50 r/s: under the 100 r/s per-IP limit.
            let c = client(&client_ip());
            let (mut ok, mut failed, mut by_instance) = (0u32, Vec::new(), HashMap::new());
            while !stop.load(Ordering::Relaxed) {
                match c.get(format!("{gw}/api/whoami")).send().await {
                    Ok(r) if r.status() == 200 => {
                        let v: Value = r.json().await.unwrap();
                        *by_instance
                            .entry(v["instance"].as_str().unwrap().to_owned())
                            .or_insert(0u32) += 1;
                        ok += 1;
                    }
                    Ok(r) => failed.push(format!("status {}", r.status())),
                    Err(e) => failed.push(e.to_string()),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (ok, failed, by_instance)
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let victim = {
        let mut instances = d.instances.lock().await;
        let victim = instances[1].server.name().to_owned();
        instances[1].server.kill();
        assert!(!instances[1].server.is_running());
        victim
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Counts from here on must not include the dead instance.
    let after_kill_c = client(&client_ip());
    let mut after: HashMap<String, u32> = HashMap::new();
    for _ in 0..60 {
        let v: Value = get_json(&after_kill_c, format!("{gw}/api/whoami")).await;
        *after
            .entry(v["instance"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);

    let (mut ok, mut failed, mut total) = (0, Vec::new(), HashMap::<String, u32>::new());
    for w in workers {
        let (o, f, by) = w.await.unwrap();
        ok += o;
        failed.extend(f);
        for (k, v) in by {
            *total.entry(k).or_default() += v;
        }
    }
    eprintln!("{ok} requests succeeded; by instance {total:?}; after the kill {after:?}");
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        ok as usize + failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(ok > 300, "the load really ran ({ok})");
    assert!(
        total.get(&victim).copied().unwrap_or(0) > 0,
        "the victim served before it died"
    );
    assert!(
        !after.contains_key(&victim),
        "a dead instance served requests: {after:?}"
    );
    assert_eq!(after.len(), 2, "both survivors take traffic: {after:?}");
}
