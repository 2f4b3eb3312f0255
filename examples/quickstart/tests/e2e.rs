//! The quickstart end to end, as a user runs it: the binary against a real PostgreSQL primary
//! with one streaming replica (replay paused while it matters) and a Redis Cluster from
//! herd-testkit, driven over HTTP by a client that keeps cookies.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Stdio;
use std::time::Duration;

use herd_db_router::sqlx;
use herd_testkit::{PgCluster, RedisCluster};
use reqwest::StatusCode;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::time::{Instant, timeout};

/// A client like a browser: keeps the session cookie.
fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_five_parts_work_first_time() {
    let pg = PgCluster::start(1).await.unwrap();
    let redis = RedisCluster::start().await.unwrap();
    let key = herd_session::Key::generate().unwrap().to_base64();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_quickstart"))
        .env("DATABASE_URL", pg.primary_url())
        .env("REPLICA_URLS", pg.replica_urls().join(","))
        .env("REDIS_CLUSTER_NODES", redis.urls().join(","))
        .env("SESSION_KEY", key)
        .env("HERD_DEV", "1")
        .env("LISTEN", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let base = timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(url) = line.strip_prefix("listening on ") {
                return url.to_owned();
            }
        }
        panic!("the quickstart exited before listening");
    })
    .await
    .expect("the quickstart did not start within 60 s");
    let http = browser();
    let get = |path: &str| http.get(format!("{base}{path}")).send();

    // --- Health: ready, every check listed, the replication group served, start-up metrics kept.
    assert_eq!(get("/health/ready").await.unwrap().status(), StatusCode::OK);
    let metrics = get("/metrics").await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains("herd_db_queries_total"),
        "the start-up query's metric was lost: install the recorder first\n{metrics}"
    );
    let health = get("/health").await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let health = health.text().await.unwrap();
    for check in ["database:", "cache:", "session-store:"] {
        assert!(
            health.contains(check),
            "/health lacks {check} (development shows details): {health}"
        );
    }
    let replication = get("/health/replication").await.unwrap();
    assert_eq!(
        replication.status(),
        StatusCode::OK,
        "the router check serves /health/replication"
    );
    assert!(replication.text().await.unwrap().contains("replayLsn"));

    // --- Read-your-writes through the session, into the cache's loader, with a stale replica.
    // A fresh replayed commit first, so the paused replica stays within the lag bounds (and
    // eligible for reads) for the next few seconds.
    let primary = sqlx::PgPool::connect(&pg.primary_url()).await.unwrap();
    sqlx::raw_sql("CREATE TABLE IF NOT EXISTS warm (x int); INSERT INTO warm VALUES (1);")
        .execute(&primary)
        .await
        .unwrap();
    pg.wait_for_replay().await.unwrap();
    pg.replica(0).pause_replay().await.unwrap();

    let writer = browser();
    let note = |writer: &reqwest::Client, body: &'static str| {
        writer.post(format!("{base}/notes")).body(body).send()
    };
    let created: serde_json::Value = note(&writer, "first").await.unwrap().json().await.unwrap();
    let first = created["id"].as_i64().unwrap();
    let second = note(&writer, "second")
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap()["id"]
        .as_i64()
        .unwrap();
    // Control: a client without this user's token reads the stale replica.
    let stranger = browser()
        .get(format!("{base}/notes/{second}"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        stranger.status(),
        StatusCode::NOT_FOUND,
        "control: the replica is not stale"
    );
    // The writer sees both notes at once, though the loader runs as its own task.
    for (id, body) in [(first, "first"), (second, "second")] {
        let read = writer
            .get(format!("{base}/notes/{id}"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            read.status(),
            StatusCode::OK,
            "note {id}: the writer's read was stale"
        );
        let read: serde_json::Value = read.json().await.unwrap();
        assert_eq!(read["body"], body);
    }
    pg.replica(0).resume_replay().await.unwrap();

    // --- Sessions in the Redis Cluster.
    let visit = |c: &reqwest::Client| c.get(format!("{base}/visits")).send();
    assert_eq!(visit(&writer).await.unwrap().text().await.unwrap(), "1");
    assert_eq!(visit(&writer).await.unwrap().text().await.unwrap(), "2");
    assert_eq!(visit(&browser()).await.unwrap().text().await.unwrap(), "1");

    // --- Ctrl-C in development stops the server at once (no drain delay).
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id().unwrap()).unwrap());
    let started = Instant::now();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("the quickstart did not stop")
        .unwrap();
    assert!(status.success(), "{status}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "stopping took {:?}",
        started.elapsed()
    );
}
