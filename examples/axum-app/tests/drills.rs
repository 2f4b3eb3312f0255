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
