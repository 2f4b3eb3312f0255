//! Fault tests, each on its own PostgreSQL cluster from herd-testkit: replay paused past the lag
//! bound, read-your-writes through the tower layer with a lagging replica, all replicas down,
//! and failover to a promoted replica.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::routing::{get, post};
use herd_db_router::health::RouterCheck;
use herd_db_router::{DbRouter, Error, NodeConfig, ReadYourWritesLayer, Role, RouterConfig};
use herd_health::{HealthCheck, Status};
use herd_testkit::PgCluster;
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::time::{Instant, sleep};

const INTERVAL: Duration = Duration::from_secs(1);
/// The read-your-writes cookie's signing key, shared by both instances.
const COOKIE_KEY: &[u8] = &[9; 32];

async fn port_of(router: &DbRouter) -> u16 {
    let port: i32 = sqlx::query_scalar("SELECT inet_server_port()")
        .fetch_one(router)
        .await
        .unwrap();
    port as u16
}

/// Polls `cond` every 20 ms for up to `limit`; returns how long it took.
async fn within(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if cond() {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_bound_and_read_your_writes_through_the_layer() {
    let pg = PgCluster::start(2).await.unwrap();
    let (r1, r2) = (pg.replica(0), pg.replica(1));
    let config = RouterConfig {
        primary: Some(NodeConfig::new(pg.primary_url())),
        replicas: pg.replica_urls().into_iter().map(NodeConfig::new).collect(),
        check_interval: INTERVAL,
        max_lag_bytes: 1024 * 1024,
        max_lag: Duration::from_secs(600),
        ..RouterConfig::default()
    };
    let router = DbRouter::builder(config.clone())
        .seed(1)
        .build()
        .await
        .unwrap();
    sqlx::raw_sql(
        "CREATE TABLE filler (id int, pad text);
         CREATE TABLE counters (id int PRIMARY KEY, v bigint NOT NULL);
         INSERT INTO counters SELECT g, 0 FROM generate_series(1, 10) g;",
    )
    .execute(&router)
    .await
    .unwrap();
    pg.wait_for_replay().await.unwrap();

    // --- Replay paused on replica1: out of reads within one interval of crossing the bound. ---
    r1.pause_replay().await.unwrap();
    sqlx::query("INSERT INTO filler SELECT g, repeat('x', 1000) FROM generate_series(1, 3000) g")
        .execute(&router)
        .await
        .unwrap();
    let lag = pg.lag_bytes().await.unwrap();
    assert!(
        lag[0] > 1024 * 1024,
        "replica1 should be past the bound, lag {lag:?}"
    );
    let took = within(INTERVAL * 2, "replica1 ineligible", || {
        !router.status().node("replica1").unwrap().eligible
    })
    .await;
    assert!(
        took <= INTERVAL + Duration::from_millis(300),
        "replica1 left the read set after {took:?}"
    );
    for _ in 0..50 {
        assert_eq!(
            port_of(&router).await,
            r2.port(),
            "a read went to the paused replica"
        );
    }
    let status = router.status();
    assert!(status.node("replica1").unwrap().lag_bytes.unwrap() > 1024 * 1024);
    assert!(status.node("replica2").unwrap().eligible);

    r1.resume_replay().await.unwrap();
    pg.wait_for_replay().await.unwrap();
    let took = within(INTERVAL * 2, "replica1 eligible again", || {
        router.status().node("replica1").unwrap().eligible
    })
    .await;
    assert!(
        took <= INTERVAL + Duration::from_millis(300),
        "replica1 came back after {took:?}"
    );
    let mut ports = HashSet::new();
    for _ in 0..50 {
        ports.insert(port_of(&router).await);
    }
    assert!(
        ports.contains(&r1.port()),
        "replica1 takes reads again after resume"
    );

    // --- Read-your-writes through the layer: two instances, a paused (but eligible) replica. ---
    r1.pause_replay().await.unwrap();
    let replica_ports: HashSet<u16> = [r1.port(), r2.port()].into();
    let instance_a = DbRouter::builder(config.clone())
        .seed(2)
        .build()
        .await
        .unwrap();
    let instance_b = DbRouter::builder(config.clone())
        .seed(3)
        .build()
        .await
        .unwrap();
    let header_apps = [
        serve(app(
            instance_a.clone(),
            ReadYourWritesLayer::header(instance_a.clone()),
        ))
        .await,
        serve(app(
            instance_b.clone(),
            ReadYourWritesLayer::header(instance_b.clone()),
        ))
        .await,
    ];
    let client: Client<HttpConnector, Body> = Client::builder(TokioExecutor::new()).build_http();
    let (stale, on_replicas) =
        rounds(&client, &header_apps, 1000, Carry::Header, &replica_ports).await;
    assert_eq!(stale, 0, "stale reads through the header carrier");
    assert!(
        on_replicas > 0,
        "read-your-writes must not pin every read to the primary"
    );
    assert!(
        router.status().node("replica1").unwrap().eligible,
        "the paused replica stayed eligible: the token protected the reads"
    );

    let cookie_apps = [
        serve(app(
            instance_a.clone(),
            ReadYourWritesLayer::cookie(instance_a.clone(), [COOKIE_KEY]).unwrap(),
        ))
        .await,
        serve(app(
            instance_b.clone(),
            ReadYourWritesLayer::cookie(instance_b.clone(), [COOKIE_KEY]).unwrap(),
        ))
        .await,
    ];
    let (stale, _) = rounds(&client, &cookie_apps, 100, Carry::Cookie, &replica_ports).await;
    assert_eq!(stale, 0, "stale reads through the cookie carrier");

    // Control: without a token the same pattern does read stale data from the paused
    // replica, so the rounds above really exercised it.
    let mut stale_without = 0;
    for i in 0..50 {
        let id = 1 + (i % 10);
        let written: i64 =
            sqlx::query_scalar("UPDATE counters SET v = v + 1 WHERE id = $1 RETURNING v")
                .bind(id)
                .fetch_one(&instance_a)
                .await
                .unwrap();
        let read: i64 = sqlx::query_scalar("SELECT v FROM counters WHERE id = $1")
            .bind(id)
            .fetch_one(&instance_b)
            .await
            .unwrap();
        if read != written {
            stale_without += 1;
        }
    }
    assert!(
        stale_without > 0,
        "control: without a token some reads should hit the paused replica"
    );
    r1.resume_replay().await.unwrap();
}

#[derive(Clone, Copy)]
enum Carry {
    Header,
    Cookie,
}

type AppState = DbRouter;

fn app(router: DbRouter, layer: ReadYourWritesLayer) -> axum::Router {
    axum::Router::new()
        .route(
            "/write/{id}",
            post(
                |State(db): State<AppState>, Path(id): Path<i32>| async move {
                    let v: i64 = sqlx::query_scalar(
                        "UPDATE counters SET v = v + 1 WHERE id = $1 RETURNING v",
                    )
                    .bind(id)
                    .fetch_one(&db)
                    .await
                    .unwrap();
                    v.to_string()
                },
            ),
        )
        .route(
            "/read/{id}",
            get(
                |State(db): State<AppState>, Path(id): Path<i32>| async move {
                    let (v, port): (i64, i32) =
                        sqlx::query_as("SELECT v, inet_server_port() FROM counters WHERE id = $1")
                            .bind(id)
                            .fetch_one(&db)
                            .await
                            .unwrap();
                    format!("{v} {port}")
                },
            ),
        )
        .layer(layer)
        .with_state(router)
}

async fn serve(app: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// `n` rounds of write-on-one-instance, read-on-the-other, carrying the token like a client
/// would. Returns (stale reads, reads served by a replica).
async fn rounds(
    client: &Client<HttpConnector, Body>,
    apps: &[SocketAddr; 2],
    n: usize,
    carry: Carry,
    replicas: &HashSet<u16>,
) -> (usize, usize) {
    let mut token: Option<String> = None;
    let (mut stale, mut on_replicas) = (0, 0);
    for i in 0..n {
        let id = 1 + (i % 10);
        let (write_to, read_from) = (apps[i % 2], apps[(i + 1) % 2]);
        let (body, next) = call(
            client,
            "POST",
            write_to,
            &format!("/write/{id}"),
            carry,
            token.as_deref(),
        )
        .await;
        token = next.or(token);
        let written: i64 = body.parse().unwrap();
        let (body, next) = call(
            client,
            "GET",
            read_from,
            &format!("/read/{id}"),
            carry,
            token.as_deref(),
        )
        .await;
        token = next.or(token);
        let (v, port) = body.split_once(' ').unwrap();
        if v.parse::<i64>().unwrap() != written {
            stale += 1;
        }
        if replicas.contains(&port.parse::<u16>().unwrap()) {
            on_replicas += 1;
        }
    }
    (stale, on_replicas)
}

async fn call(
    client: &Client<HttpConnector, Body>,
    method: &str,
    addr: SocketAddr,
    path: &str,
    carry: Carry,
    token: Option<&str>,
) -> (String, Option<String>) {
    let mut req = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    if let Some(token) = token {
        req = match carry {
            Carry::Header => req.header("x-herd-lsn", token),
            Carry::Cookie => req.header("cookie", format!("herd_lsn={token}")),
        };
    }
    let resp = client
        .request(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert!(
        resp.status().is_success(),
        "{method} {path}: {}",
        resp.status()
    );
    let next = match carry {
        Carry::Header => resp
            .headers()
            .get("x-herd-lsn")
            .map(|v| v.to_str().unwrap().to_string()),
        Carry::Cookie => resp.headers().get("set-cookie").and_then(|v| {
            let c = cookie::Cookie::parse(v.to_str().unwrap().to_string()).unwrap();
            (c.name() == "herd_lsn").then(|| c.value().to_string())
        }),
    };
    let body: Bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (String::from_utf8(body.to_vec()).unwrap(), next)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_replicas_down_then_failover_to_a_promoted_replica() {
    let pg = PgCluster::start(2).await.unwrap();
    let (primary, r1, r2) = (pg.primary(), pg.replica(0), pg.replica(1));
    let config = RouterConfig {
        nodes: [pg.primary_url(), r1.url(), r2.url()]
            .into_iter()
            .zip(["primary", "replica1", "replica2"])
            .map(|(url, name)| NodeConfig::new(url).name(name).role(Role::Auto))
            .collect(),
        check_interval: INTERVAL,
        ..RouterConfig::default()
    };
    let router = DbRouter::builder(config).seed(9).build().await.unwrap();
    assert_eq!(
        router.status().primary.as_deref(),
        Some("primary"),
        "auto roles find the writable node"
    );
    sqlx::query("CREATE TABLE events (id bigserial PRIMARY KEY, at timestamptz DEFAULT now())")
        .execute(&router)
        .await
        .unwrap();
    pg.wait_for_replay().await.unwrap();
    // Warm the replica pools so the kill leaves broken pooled connections behind.
    for _ in 0..10 {
        assert_ne!(port_of(&router).await, primary.port());
    }

    // --- All replicas down: every read is answered (by the primary), zero errors. ---
    r1.kill().unwrap();
    r2.kill().unwrap();
    let mut last_port = 0;
    for i in 0..200 {
        let port: Result<i32, _> = sqlx::query_scalar("SELECT inet_server_port()")
            .fetch_one(&router)
            .await;
        match port {
            Ok(p) => last_port = p as u16,
            Err(e) => panic!("read {i} failed with every replica down: {e}"),
        }
    }
    assert_eq!(last_port, primary.port());
    assert!(router.status().eligible_replicas().is_empty());
    let check = RouterCheck::new(router.clone());
    assert_eq!(
        check.check().await.status(),
        Status::Warn,
        "no replica: degraded, not failed"
    );

    r1.start().await.unwrap();
    r2.start().await.unwrap();
    pg.wait_for_replay().await.unwrap();
    within(INTERVAL * 3, "replicas eligible after restart", || {
        router.status().eligible_replicas().len() == 2
    })
    .await;

    // --- Kill the primary: writes fail fast with a typed error, not a hang. ---
    primary.kill().unwrap();
    let killed = Instant::now();
    let mut saw_no_primary = false;
    while killed.elapsed() < INTERVAL * 3 {
        let attempt = Instant::now();
        let result = sqlx::query("INSERT INTO events DEFAULT VALUES")
            .execute(&router)
            .await;
        let err = result.expect_err("a write succeeded with the primary dead");
        assert!(
            attempt.elapsed() < INTERVAL * 2,
            "a write hung for {:?}",
            attempt.elapsed()
        );
        if matches!(Error::from_sqlx(&err), Some(Error::NoPrimary { .. })) {
            saw_no_primary = true;
            assert!(err.to_string().contains("no writable primary"), "{err}");
            break;
        }
        sleep(Duration::from_millis(50)).await;
    }
    assert!(
        saw_no_primary,
        "writes should fail with Error::NoPrimary once the monitor saw the primary die"
    );
    assert!(router.status().primary.is_none());
    assert_eq!(
        check.check().await.status(),
        Status::Fail,
        "no primary: the check fails"
    );
    // Reads still work meanwhile, from the replicas.
    assert_ne!(port_of(&router).await, primary.port());

    // --- Promote replica1: writes go to it within 3 s. ---
    r1.promote().await.unwrap();
    let promoted = Instant::now();
    let port = loop {
        match sqlx::query_scalar::<_, i32>(
            "INSERT INTO events DEFAULT VALUES RETURNING inet_server_port()",
        )
        .fetch_one(&router)
        .await
        {
            Ok(port) => break port as u16,
            Err(_) => {
                assert!(
                    promoted.elapsed() < Duration::from_secs(3),
                    "writes did not resume within 3 s of the promotion"
                );
                sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(port, r1.port(), "writes go to the promoted replica");
    assert!(
        promoted.elapsed() <= INTERVAL * 2 + Duration::from_millis(500),
        "took {:?}",
        promoted.elapsed()
    );
    assert_eq!(router.status().primary.as_deref(), Some("replica1"));

    // --- The old primary returns (writable, on the old timeline): it is not written to. ---
    primary.start().await.unwrap();
    sleep(INTERVAL * 2 + Duration::from_millis(300)).await;
    assert_eq!(
        router.status().primary.as_deref(),
        Some("replica1"),
        "{:#?}",
        router.status()
    );
    let port: i32 =
        sqlx::query_scalar("INSERT INTO events DEFAULT VALUES RETURNING inet_server_port()")
            .fetch_one(&router)
            .await
            .unwrap();
    assert_eq!(port as u16, r1.port());
    let old = router.status();
    let old = old.node("primary").unwrap();
    assert!(
        old.reachable && !old.is_write_node && !old.eligible,
        "{old:#?}"
    );
}

/// A monitor check is made to fail again and again while 500 writes run: the primary's backend
/// serving the monitor's connection is paused (SIGSTOP) past `check_timeout`, then resumed. Each
/// failed check marks the primary down, which stops new writes from starting, but a write already
/// sent is never abandoned. So the table holds exactly the acknowledged writes: none is lost, and
/// none reported failed was committed (a client's retry would have duplicated it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_monitor_checks_abort_no_write_in_flight() {
    let pg = PgCluster::start(0).await.unwrap();
    let config = RouterConfig {
        nodes: vec![NodeConfig::new(pg.primary_url()).name("db")],
        check_interval: Duration::from_millis(40),
        check_timeout: Duration::from_millis(100),
        ..RouterConfig::default()
    };
    let router = DbRouter::connect(config).await.unwrap();
    sqlx::query("CREATE TABLE burst (k int PRIMARY KEY)")
        .execute(&router)
        .await
        .unwrap();
    let admin = sqlx::PgPool::connect(&pg.primary_url()).await.unwrap();

    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pauser = {
        let (admin, done) = (admin.clone(), done.clone());
        tokio::spawn(async move {
            let mut paused = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let pids: Vec<i32> = sqlx::query_scalar(
                    "SELECT pid FROM pg_stat_activity WHERE application_name = 'herd-db-router monitor'",
                )
                .fetch_all(&admin)
                .await
                .unwrap();
                for pid in &pids {
                    signal(*pid, "-STOP");
                }
                sleep(Duration::from_millis(150)).await;
                for pid in &pids {
                    signal(*pid, "-CONT");
                }
                paused += pids.len();
                sleep(Duration::from_millis(60)).await;
            }
            paused
        })
    };
    let mut writers = Vec::new();
    for w in 0..10_i32 {
        let router = router.clone();
        writers.push(tokio::spawn(async move {
            let (mut acked, mut failed) = (Vec::new(), Vec::new());
            for i in 0..50_i32 {
                let k = w * 50 + i;
                // Long enough (20 ms on the server) for checks to fail while it runs.
                let result = sqlx::query("INSERT INTO burst (k) SELECT $1 FROM pg_sleep(0.02)")
                    .bind(k)
                    .execute(&router)
                    .await;
                match result {
                    Ok(_) => acked.push(k),
                    Err(e) => {
                        failed.push((k, e.to_string()));
                        sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            (acked, failed)
        }));
    }
    let (mut acked, mut failed) = (HashSet::new(), Vec::new());
    for w in writers {
        let (a, f) = w.await.unwrap();
        acked.extend(a);
        failed.extend(f);
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let paused = pauser.await.unwrap();
    let stored: HashSet<i32> = sqlx::query_scalar("SELECT k FROM burst")
        .fetch_all(&admin)
        .await
        .unwrap()
        .into_iter()
        .collect();
    eprintln!(
        "500 writes: {} acknowledged, {} failed, {} stored; the monitor's backend paused {paused} times",
        acked.len(),
        failed.len(),
        stored.len()
    );
    assert!(
        paused >= 3,
        "the drill needs failed checks during the burst"
    );
    assert!(
        !failed.is_empty(),
        "no write was refused while the primary was marked down: the checks did not fail"
    );
    assert_eq!(acked.len() + failed.len(), 500);
    let lost: Vec<_> = acked.difference(&stored).collect();
    assert!(lost.is_empty(), "acknowledged but not stored: {lost:?}");
    let committed_but_failed: Vec<_> = failed.iter().filter(|(k, _)| stored.contains(k)).collect();
    assert!(
        committed_but_failed.is_empty(),
        "reported failed but committed: {committed_but_failed:?}"
    );
    for (_, e) in &failed {
        assert!(
            e.contains("no writable primary") || e.contains("went down"),
            "a write failed for another reason: {e}"
        );
    }
}

/// Sends a signal (`-STOP`, `-CONT`) to a server process of the test's own cluster.
fn signal(pid: i32, which: &str) {
    let status = std::process::Command::new("kill")
        .args([which, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {which} {pid}");
}
