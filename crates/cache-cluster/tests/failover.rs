//! SIGKILL a master of a cluster of our own while `get_or_load` runs steadily, with the
//! failover wait turned off: calls fail open and the dead shard's circuit opens.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use herd_cache_cluster::{Backend, Cache, CacheConfig, RedisConfig};
use herd_testkit::RedisCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_master_fails_no_call_and_hits_resume_after_failover() {
    let node_timeout = Duration::from_millis(1000);
    let rc = RedisCluster::builder()
        .node_timeout(node_timeout)
        .start()
        .await
        .unwrap();
    // The failover wait off: this test is about failing open (per-shard circuits) when calls
    // do fail; `tests/failover_wait.rs` drills the default, which waits the failover out.
    let no_wait = RedisConfig {
        failover_timeout: Some(Duration::ZERO),
        ..RedisConfig::new(rc.urls())
    };
    let backend = Backend::cluster(no_wait).await.unwrap();
    // No L1: every hit must come from the cluster, so the measurement is about Redis.
    let config = CacheConfig {
        namespace: "failover".into(),
        l1: None,
        ..CacheConfig::default()
    };
    let cache = Cache::new(backend, config).await.unwrap();
    // Two instances with an L1, to check the flush on topology change and pub/sub afterwards.
    let l1_config = CacheConfig {
        namespace: "failover".into(),
        ..CacheConfig::default()
    };
    let with_l1 = Cache::new(
        Backend::cluster(RedisConfig::new(rc.urls())).await.unwrap(),
        l1_config.clone(),
    )
    .await
    .unwrap();
    let other_l1 = Cache::new(
        Backend::cluster(RedisConfig::new(rc.urls())).await.unwrap(),
        l1_config,
    )
    .await
    .unwrap();

    let keys: Vec<String> = (0..60).map(|i| format!("key:{i}")).collect();
    for key in &keys {
        cache
            .set(key, &format!("value of {key}"), Duration::from_secs(600))
            .await
            .unwrap();
    }
    // The victim: the master serving keys[0]; watch the keys it serves.
    let client = redis::Client::open(rc.urls()[0].as_str()).unwrap();
    let mut admin = client.get_multiplexed_async_connection().await.unwrap();
    let slots: redis::Value = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(&mut admin)
        .await
        .unwrap();
    let mut owners = Vec::new();
    for key in &keys {
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(cache.backend_key(key))
            .query_async(&mut admin)
            .await
            .unwrap();
        owners.push(master_port_for(&slots, slot).expect("slot owner"));
    }
    // The victim: the master serving keys[0]; watch the keys it serves.
    let victim_port = owners[0];
    let victim = rc.nodes().iter().find(|n| n.port() == victim_port).unwrap();
    let watched: Vec<String> = keys
        .iter()
        .zip(&owners)
        .filter(|(_, port)| **port == victim_port)
        .map(|(k, _)| k.clone())
        .collect();
    assert!(!watched.is_empty());
    let healthy: Vec<String> = keys
        .iter()
        .zip(&owners)
        .filter(|(_, port)| **port != victim_port)
        .map(|(k, _)| k.clone())
        .collect();
    for key in &healthy {
        assert!(with_l1.get::<String>(key).await.is_some());
    }
    assert_eq!(with_l1.l1_entry_count(), healthy.len() as u64);

    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for worker in 0..8 {
        let (cache, stop, calls, failed) =
            (cache.clone(), stop.clone(), calls.clone(), failed.clone());
        let keys = if worker % 2 == 0 {
            watched.clone()
        } else {
            keys.clone()
        };
        workers.push(tokio::spawn(async move {
            let mut i = worker;
            while !stop.load(Ordering::Relaxed) {
                let key = &keys[i % keys.len()];
                i += 1;
                let value = format!("value of {key}");
                let result = cache
                    .get_or_load(key, Duration::from_secs(600), move || async move {
                        Ok::<_, std::io::Error>(Some(value))
                    })
                    .await;
                calls.fetch_add(1, Ordering::Relaxed);
                match result {
                    Ok(Some(v)) if v == format!("value of {key}") => {}
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }));
    }

    tokio::time::sleep(Duration::from_millis(500)).await;
    let before_kill = calls.load(Ordering::Relaxed);
    let killed = Instant::now();
    victim.kill().unwrap();
    // A probe: plain `get`s (no loader, no L1) of the killed master's keys until one is a hit.
    let probe = {
        let (cache, watched) = (cache.clone(), watched.clone());
        tokio::spawn(async move {
            let mut j = 0;
            loop {
                if cache
                    .get::<String>(&watched[j % watched.len()])
                    .await
                    .is_some()
                {
                    return killed.elapsed();
                }
                j += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    // While the shard is down, the other shards keep answering: failures open only the dead
    // shard's circuit.
    let mut opened = false;
    for _ in 0..200 {
        if cache.circuit_open() {
            opened = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(opened, "the dead shard's circuit never opened");
    for key in &healthy {
        assert!(
            cache.get::<String>(key).await.is_some(),
            "{key} on a healthy master"
        );
    }
    println!(
        "circuit of the dead shard open {:?} after the kill; healthy shards still served",
        killed.elapsed()
    );
    let failover = rc.wait_for_failover(Duration::from_secs(30)).await.unwrap();
    let failover_done = killed.elapsed();
    let resumed = tokio::time::timeout(Duration::from_secs(20), probe)
        .await
        .expect("hits never resumed on the failed-over shard")
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }

    // The topology change flushed the L1 (its entries may be out of date).
    let mut flushed = false;
    for _ in 0..300 {
        if with_l1.l1_entry_count() == 0 {
            flushed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        flushed,
        "L1 still holds {} entries after the failover",
        with_l1.l1_entry_count()
    );
    // Invalidation still reaches the other instance after the failover (the subscription moved).
    let key = &watched[0];
    assert!(other_l1.get::<String>(key).await.is_some());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    with_l1
        .set(key, &"after failover".to_string(), Duration::from_secs(600))
        .await
        .unwrap();
    let mut seen = None;
    for _ in 0..100 {
        seen = other_l1.get::<String>(key).await;
        if seen.as_deref() == Some("after failover") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(
        seen.as_deref(),
        Some("after failover"),
        "invalidation after the failover"
    );

    let total = calls.load(Ordering::Relaxed);
    println!(
        "node timeout {node_timeout:?}: cluster failover done {failover_done:?} after the SIGKILL \
         (testkit wait {failover:?}); hits on the killed master's keys resumed {resumed:?} after the kill; \
         {total} get_or_load calls ({before_kill} before the kill), {} failed",
        failed.load(Ordering::Relaxed)
    );
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "every call got its value (fail-open)"
    );
    assert!(
        total > before_kill + 100,
        "calls went on during the failover"
    );
    assert!(
        resumed <= failover_done + Duration::from_secs(2),
        "hits resumed {resumed:?} after the kill, more than 2 s after the failover ({failover_done:?})"
    );
}

fn master_port_for(slots: &redis::Value, slot: u16) -> Option<u16> {
    let redis::Value::Array(ranges) = slots else {
        return None;
    };
    for range in ranges {
        let redis::Value::Array(parts) = range else {
            continue;
        };
        let (
            Some(redis::Value::Int(start)),
            Some(redis::Value::Int(end)),
            Some(redis::Value::Array(master)),
        ) = (parts.first(), parts.get(1), parts.get(2))
        else {
            continue;
        };
        if (*start..=*end).contains(&i64::from(slot))
            && let Some(redis::Value::Int(port)) = master.get(1)
        {
            return u16::try_from(*port).ok();
        }
    }
    None
}
