//! Failure drills on the demo run as separate processes (3 × `axum-app instance`, `axum-app
//! gateway`): a PostgreSQL failover and a Redis Cluster master failover under logged-in load.
//! Each drill prints its figures (requests, failures, seconds to writes-back, ejections).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::procs::{Deployment, EjectionWatch, client};
use common::{client_ip, unique};
use herd_testkit::RedisCluster;
use serde_json::Value;

async fn sign_up(c: &reqwest::Client, gateway: &str) -> String {
    let user = unique("drill");
    let r = c
        .post(format!("{gateway}/api/auth/signup"))
        .json(&serde_json::json!({ "username": user, "password": "correct horse" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    user
}

/// SIGKILL the primary's postmaster while a logged-in client writes a note every 50 ms, promote
/// the replica 2 s later: writes are back within 3 s of the promote with no restart, reads keep
/// being answered meanwhile, every acknowledged (201) note is there afterwards, and no instance
/// is ejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_failover_needs_no_restart_and_loses_no_acknowledged_write() {
    let d = Deployment::start(RedisCluster::builder()).await;
    let gw = d.gateway_url.clone();
    let writer = client(&client_ip());
    sign_up(&writer, &gw).await;
    let reader = client(&client_ip());
    sign_up(&reader, &gw).await;
    let watch = EjectionWatch::start(&gw);

    let start = Instant::now();
    let kill_at = Duration::from_secs(2);
    let promote_at = kill_at + Duration::from_secs(2);
    let end_at = promote_at + Duration::from_secs(5);
    let (mut killed, mut promoted) = (false, None::<Instant>);
    let mut acknowledged = BTreeSet::new();
    let mut failed_writes = Vec::new();
    let mut first_write_after_promote = None;
    let (mut reads, mut failed_reads) = (0, Vec::new());
    let mut i = 0;
    while start.elapsed() < end_at {
        if !killed && start.elapsed() >= kill_at {
            d.pg.primary().kill().unwrap();
            killed = true;
        }
        if killed && promoted.is_none() && start.elapsed() >= promote_at {
            d.pg.replica(0).promote().await.unwrap();
            promoted = Some(Instant::now());
        }
        i += 1;
        let body = format!("note {i}");
        let write = writer
            .post(format!("{gw}/api/notes"))
            .json(&serde_json::json!({ "body": body }))
            .send();
        let read = reader.get(format!("{gw}/api/notes")).send();
        let (write, read) = tokio::join!(write, read);
        match write {
            Ok(r) if r.status() == 201 => {
                acknowledged.insert(body);
                if let Some(p) = promoted
                    && first_write_after_promote.is_none()
                {
                    first_write_after_promote = Some(p.elapsed());
                }
            }
            Ok(r) => {
                let status = r.status();
                failed_writes.push(format!("{status} {}", r.text().await.unwrap_or_default()));
            }
            Err(e) => failed_writes.push(e.to_string()),
        }
        reads += 1;
        match read {
            Ok(r) if r.status() == 200 => {}
            Ok(r) => failed_reads.push(format!("{} at {:?}", r.status(), start.elapsed())),
            Err(e) => failed_reads.push(e.to_string()),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ejections = watch.ejections();
    let notes: Vec<Value> = writer
        .get(format!("{gw}/api/notes"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let stored: BTreeSet<String> = notes
        .iter()
        .map(|n| n["body"].as_str().unwrap().to_owned())
        .collect();
    let lost: Vec<_> = acknowledged.difference(&stored).collect();
    eprintln!(
        "postgres failover: {i} writes, {} acknowledged, {} failed; writes back {:?} after the promote; \
         {reads} reads, {} failed; {} acknowledged notes lost; {ejections} ejections",
        acknowledged.len(),
        failed_writes.len(),
        first_write_after_promote,
        failed_reads.len(),
        lost.len()
    );
    let back = first_write_after_promote.expect("no write succeeded after the promote");
    assert!(back <= Duration::from_secs(3), "writes back after {back:?}");
    assert!(lost.is_empty(), "acknowledged notes lost: {lost:?}");
    assert!(failed_reads.is_empty(), "reads failed: {failed_reads:?}");
    assert_eq!(
        ejections, 0,
        "an instance was ejected for the shared database's failover"
    );
    for f in &failed_writes {
        assert!(
            f.starts_with("503") && !f.contains("127.0.0.1"),
            "a write failed other than with a clean 503: {f}"
        );
    }
    // The instances' readiness never depended on the shared database; deep health is back.
    for url in &d.instance_urls {
        let r = reqwest::get(format!("{url}/health")).await.unwrap();
        assert_eq!(r.status(), 200, "{url}/health after the failover");
    }
}

/// The number of keys a Redis node holds (`redis-cli DBSIZE`).
fn dbsize(port: u16) -> u64 {
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &port.to_string(), "DBSIZE"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

/// 8 logged-in clients × 20 r/s of `/api/whoami` and `/api/notes` for 15 s; the Redis master
/// holding the most keys is SIGKILLed 5 s in. Its replica takes over after `cluster-node-timeout`
/// (2 s here) and the instances wait for the new topology: no request fails, nobody is logged
/// out, no instance is ejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_master_failover_fails_no_request_and_logs_nobody_out() {
    let d = Deployment::start(RedisCluster::builder()).await;
    let gw = d.gateway_url.clone();
    let mut clients = Vec::new();
    for _ in 0..8 {
        let c = client(&client_ip());
        let user = sign_up(&c, &gw).await;
        clients.push((c, user));
    }
    let watch = EjectionWatch::start(&gw);
    let start = Instant::now();
    let run_for = Duration::from_secs(15);
    let mut workers = Vec::new();
    for (c, user) in clients {
        let gw = gw.clone();
        workers.push(tokio::spawn(async move {
            let (mut ok, mut failed, mut logouts) = (0_u32, Vec::new(), 0_u32);
            let mut slowest = Duration::ZERO;
            let mut i = 0_u32;
            while start.elapsed() < run_for {
                i += 1;
                let path = if i.is_multiple_of(2) {
                    "/api/whoami"
                } else {
                    "/api/notes"
                };
                let sent = Instant::now();
                match c.get(format!("{gw}{path}")).send().await {
                    Ok(r) if r.status() == 200 => {
                        let v: Value = r.json().await.unwrap();
                        if path == "/api/whoami" && v["user"].as_str() != Some(user.as_str()) {
                            logouts += 1;
                        }
                        ok += 1;
                    }
                    Ok(r) if r.status() == 401 => logouts += 1,
                    Ok(r) => {
                        failed.push(format!("{path}: {} at {:?}", r.status(), start.elapsed()))
                    }
                    Err(e) => failed.push(format!("{path}: {e}")),
                }
                slowest = slowest.max(sent.elapsed());
                tokio::time::sleep(Duration::from_millis(50).saturating_sub(sent.elapsed())).await;
            }
            (ok, failed, logouts, slowest)
        }));
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let masters = d.redis.masters().await.unwrap();
    let victim = masters
        .iter()
        .max_by_key(|m| dbsize(m.port()))
        .copied()
        .unwrap();
    let victim_port = victim.port();
    victim.kill().unwrap();
    let killed = Instant::now();
    let failover = d
        .redis
        .wait_for_failover(Duration::from_secs(30))
        .await
        .unwrap();
    let (mut ok, mut failed, mut logouts, mut slowest) = (0, Vec::new(), 0, Duration::ZERO);
    for w in workers {
        let (o, f, l, s) = w.await.unwrap();
        ok += o;
        failed.extend(f);
        logouts += l;
        slowest = slowest.max(s);
    }
    let ejections = watch.ejections();
    eprintln!(
        "redis failover (master :{victim_port} killed, cluster recovered {failover:?} / {:?} after): \
         {ok} requests ok, {} failed, {logouts} logouts, {ejections} ejections, slowest {slowest:?}",
        killed.elapsed(),
        failed.len()
    );
    assert!(ok > 1500, "too few requests to mean anything: {ok}");
    assert!(failed.is_empty(), "failed: {failed:?}");
    assert_eq!(logouts, 0, "users were logged out");
    assert_eq!(
        ejections, 0,
        "an instance was ejected for the shared Redis failover"
    );
}
