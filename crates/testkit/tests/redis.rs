//! RedisCluster and RedisServer against the machine's real redis-server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::time::Duration;

use herd_testkit::{RedisCluster, shared};
use redis::AsyncCommands;
use redis::cluster::ClusterClient;

#[tokio::test]
async fn a_value_set_through_the_cluster_client_is_read_back() {
    let rc = shared::redis_cluster().await.unwrap();
    assert_eq!(rc.nodes().len(), 6);
    assert_eq!(rc.masters().await.unwrap().len(), 3);
    let client = ClusterClient::new(rc.urls()).unwrap();
    let mut conn = client.get_async_connection().await.unwrap();
    for i in 0..100 {
        let _: () = conn.set(format!("key:{i}"), i).await.unwrap();
    }
    for i in 0..100 {
        let v: i32 = conn.get(format!("key:{i}")).await.unwrap();
        assert_eq!(v, i);
    }
    // The keys really are spread: every master holds some.
    for m in rc.masters().await.unwrap() {
        let mut c = redis::Client::open(m.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let n: i64 = redis::cmd("DBSIZE").query_async(&mut c).await.unwrap();
        assert!(n > 0, "{} holds no keys", m.name());
    }
}

#[tokio::test]
async fn after_sigkill_of_a_master_its_replica_takes_over() {
    let rc = RedisCluster::builder()
        .node_timeout(Duration::from_millis(1000))
        .start()
        .await
        .unwrap();
    assert_eq!(rc.node_timeout(), Duration::from_millis(1000));
    let client = ClusterClient::builder(rc.urls())
        .retries(10)
        .build()
        .unwrap();
    let mut conn = client.get_async_connection().await.unwrap();
    for i in 0..50 {
        let _: () = conn.set(format!("k{i}"), i).await.unwrap();
    }
    // Make sure the writes reached the replicas before the crash (replication is asynchronous).
    for m in rc.masters().await.unwrap() {
        let mut c = redis::Client::open(m.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let acked: i64 = redis::cmd("WAIT")
            .arg(1)
            .arg(5000)
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(acked, 1, "{} has a synced replica", m.name());
    }

    let masters_before: HashSet<u16> = rc
        .masters()
        .await
        .unwrap()
        .iter()
        .map(|m| m.port())
        .collect();
    let victim = rc.masters().await.unwrap()[0];
    let victim_port = victim.port();
    victim.kill().unwrap();
    assert!(!victim.is_running());
    let took = rc.wait_for_failover(Duration::from_secs(30)).await.unwrap();
    eprintln!("failover after SIGKILL took {took:?}");
    let masters_after: Vec<u16> = rc
        .masters()
        .await
        .unwrap()
        .iter()
        .map(|m| m.port())
        .collect();
    assert_eq!(masters_after.len(), 3, "a replica was promoted");
    assert!(!masters_after.contains(&victim_port));
    assert!(masters_after.iter().any(|p| !masters_before.contains(p)));

    // The data survived on the promoted replica, and the cluster takes writes again.
    let mut conn = client.get_async_connection().await.unwrap();
    for i in 0..50 {
        let v: i32 = conn.get(format!("k{i}")).await.unwrap();
        assert_eq!(v, i);
    }
    let _: () = conn.set("after", 1).await.unwrap();

    // The killed node restarts and rejoins as a replica.
    victim.start().await.unwrap();
    rc.wait_for_failover(Duration::from_secs(30)).await.unwrap();
    let masters_final: Vec<u16> = rc
        .masters()
        .await
        .unwrap()
        .iter()
        .map(|m| m.port())
        .collect();
    assert!(!masters_final.contains(&victim_port));
}

#[tokio::test]
async fn a_standalone_server_answers_and_can_be_killed() {
    let r = shared::redis().await.unwrap();
    let mut c = redis::Client::open(r.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = c.set("standalone", "yes").await.unwrap();
    let v: String = c.get("standalone").await.unwrap();
    assert_eq!(v, "yes");

    let own = herd_testkit::RedisServer::start().await.unwrap();
    assert!(own.node().is_running());
    own.kill().unwrap();
    assert!(!own.node().is_running());
    assert!(
        redis::Client::open(own.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .is_err()
    );
}
