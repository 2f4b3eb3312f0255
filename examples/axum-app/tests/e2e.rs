//! The demo end to end, over real HTTP, against a real PostgreSQL primary + replica and a real
//! Redis Cluster: health through the gateway, spread, one login for every instance,
//! read-your-writes while the replica is paused, per-IP login limits, deep health.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{client, client_ip, demo, get_json, replica_lock, unique};
use serde_json::{Value, json};

async fn sign_up(c: &reqwest::Client, base: &str) -> String {
    let name = unique("user");
    let r = c
        .post(format!("{base}/api/auth/signup"))
        .json(&json!({ "username": name, "password": "correct horse" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
    name
}

#[tokio::test]
async fn health_answers_through_the_gateway() {
    let d = demo().await;
    let c = client(&client_ip());
    let r = c
        .get(format!("{}/health/ready", d.gateway.server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"].to_str().unwrap(),
        "application/health+json"
    );
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "pass");

    let lb: Value = get_json(&c, format!("{}/lb-health", d.gateway.server.url())).await;
    assert_eq!(lb["healthy"], 3, "{lb}");
    let admin = c
        .get(format!("{}/admin", d.gateway.server.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for url in &d.instance_urls {
        assert!(admin.contains(url.trim_start_matches("http://")), "{admin}");
    }

    // The cacheable route goes through the gateway's response cache: the first answer is
    // fetched, the next one comes from the cache, with the same body.
    let stats = format!("{}/api/stats", d.gateway.server.url());
    let first = c.get(&stats).send().await.unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["x-cache"], "MISS");
    let first_body = first.text().await.unwrap();
    let second = c.get(&stats).send().await.unwrap();
    assert_eq!(second.headers()["x-cache"], "HIT");
    assert_eq!(second.text().await.unwrap(), first_body);
}

#[tokio::test]
async fn round_robin_spreads_300_requests_over_every_instance() {
    let d = demo().await;
    let c = reqwest::Client::new();
    let mut seen: HashMap<String, u32> = HashMap::new();
    for _ in 0..300 {
        let v: Value = get_json(&c, format!("{}/api/whoami", d.rr_gateway.server.url())).await;
        *seen
            .entry(v["instance"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
    for (name, n) in &seen {
        let share = f64::from(*n) / 300.0;
        assert!(
            (0.25..=0.42).contains(&share),
            "{name} got {share:.2} of 300: {seen:?}"
        );
    }
}

#[tokio::test]
async fn one_login_works_on_every_instance_and_logout_ends_it_everywhere() {
    let d = demo().await;
    let c = client(&client_ip());
    let name = sign_up(&c, &d.gateway.server.url()).await;
    // The same cookie jar, straight to each instance: the session is in the Redis Cluster.
    for url in &d.instance_urls {
        let v: Value = get_json(&c, format!("{url}/api/whoami")).await;
        assert_eq!(v["user"], name.as_str(), "{url}: {v}");
    }
    // Log in again on instance 2 (new session id), then log out on instance 3.
    let r = c
        .post(format!("{}/api/auth/login", d.instance_urls[1]))
        .json(&json!({ "username": name, "password": "correct horse" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .post(format!("{}/api/auth/logout", d.instance_urls[2]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    for url in &d.instance_urls {
        let v: Value = get_json(&c, format!("{url}/api/whoami")).await;
        assert_eq!(v["user"], Value::Null, "{url}: {v}");
    }
    let r = c
        .post(format!("{}/api/auth/login", d.gateway.server.url()))
        .json(&json!({ "username": name, "password": "wrong password" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn a_new_note_is_always_listed_at_once_while_the_replica_is_paused() {
    let d = demo().await;
    let c = client(&client_ip());
    let gw = d.gateway.server.url();
    sign_up(&c, &gw).await;
    let replica = d.topology.local_pg.as_ref().unwrap().replica(0);

    let _paused = replica_lock().await;
    replica.pause_replay().await.unwrap();
    let mut stale = 0;
    for i in 0..40 {
        let body = format!("note {i}");
        let r = c
            .post(format!("{gw}/api/notes"))
            .json(&json!({ "body": body }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let list: Vec<Value> = get_json(&c, format!("{gw}/api/notes")).await;
        if !list.iter().any(|n| n["body"] == body.as_str()) {
            stale += 1;
        }
    }
    let lag = d
        .topology
        .local_pg
        .as_ref()
        .unwrap()
        .lag_bytes()
        .await
        .unwrap()[0];
    replica.resume_replay().await.unwrap();
    assert_eq!(stale, 0, "notes missing right after they were created");
    assert!(lag > 0, "the replica really was behind during the test");

    // Once the replica has caught up the notes are served from it too.
    d.topology
        .local_pg
        .as_ref()
        .unwrap()
        .wait_for_replay()
        .await
        .unwrap();
    let list: Vec<Value> = get_json(&c, format!("{gw}/api/notes")).await;
    assert_eq!(list.len(), 40);
}

#[tokio::test]
async fn the_sixth_login_in_a_minute_from_one_ip_gets_429() {
    let d = demo().await;
    let c = client(&client_ip());
    let gw = d.gateway.server.url();
    for i in 1..=5 {
        let r = c
            .post(format!("{gw}/api/auth/login"))
            .json(&json!({ "username": "nobody", "password": "whatever1" }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "login {i} is let through (and fails)");
    }
    let r = c
        .post(format!("{gw}/api/auth/login"))
        .json(&json!({ "username": "nobody", "password": "whatever1" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let retry_after: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    // Another client is not affected, and other routes of the limited client still work.
    let other = client(&client_ip());
    let r = other
        .post(format!("{gw}/api/auth/login"))
        .json(&json!({ "username": "nobody", "password": "whatever1" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c.get(format!("{gw}/api/whoami")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn deep_health_shows_replica_lag() {
    let d = demo().await;
    let c = reqwest::Client::new();
    let pg = d.topology.local_pg.as_ref().unwrap();
    let replica = pg.replica(0);
    let _paused = replica_lock().await;
    replica.pause_replay().await.unwrap();
    // Write enough WAL that the lag is visible, straight on the primary.
    let pool = sqlx::PgPool::connect(&pg.primary_url()).await.unwrap();
    sqlx::query("CREATE TABLE IF NOT EXISTS ballast (x text)")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO ballast SELECT repeat('x', 100) FROM generate_series(1, 2000)")
        .execute(&pool)
        .await
        .unwrap();
    // The health cache and the router's monitor refresh within a second or two.
    let mut lag = 0.0;
    for _ in 0..40 {
        let v: Value = get_json(&c, format!("{}/health/replication", d.instance_urls[0])).await;
        let checks = v["checks"].as_object().cloned().unwrap_or_default();
        lag = checks
            .iter()
            .filter(|(k, _)| k.ends_with(":lag"))
            .flat_map(|(_, list)| list.as_array().cloned().unwrap_or_default())
            .filter(|m| m["componentId"] == "db2")
            .filter_map(|m| m["observedValue"].as_f64())
            .fold(0.0, f64::max);
        if lag > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    replica.resume_replay().await.unwrap();
    assert!(
        lag > 0.0,
        "/health/replication never showed the replica (db2) lagging"
    );
}
