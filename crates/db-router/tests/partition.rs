//! Partition drills for the router (issue #22), on herd-testkit's network namespaces: the test
//! process plays the app instance, PostgreSQL runs on hosts `db1` (primary) and `db2` (replica),
//! and the faults drop packets silently (no RST, no FIN), as a dead switch port would.
//!
//! 1. The primary black-holed from the instance (not killed): writes fail within the configured
//!    bound with an error classified as 503, reads keep being served by the replica, nothing that
//!    was reported committed is lost, and writes are back within 3 s of heal.
//! 2. The replica cut from its primary but reachable by the instance: its lag grows, lag-aware
//!    routing stops reading from it within one check interval of crossing the bound,
//!    read-your-writes holds (0 stale reads in 500 rounds), and after heal it catches up and
//!    takes reads again.
//!
//! Needs root and `ip`: without them each drill prints a loud notice and passes, unless
//! `HERD_REQUIRE_NETNS=1` (CI) makes that a failure. Figures are printed:
//! `cargo test -p herd-db-router --all-features --test partition -- --nocapture`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use herd_db_router::{
    Consistency, DbRouter, Error, ErrorClass, NodeConfig, PoolConfig, ReadYourWritesConfig,
    RouterConfig,
};
use herd_testkit::net::{self, Net};
use herd_testkit::{Error as KitError, PgCluster};
use tokio::time::{Instant, sleep};

/// The monitor's check interval (and the default check timeout, 1 s).
const INTERVAL: Duration = Duration::from_secs(1);
/// The pools' `acquire_timeout`: the longest a write may wait for a connection to the primary.
const ACQUIRE: Duration = Duration::from_secs(2);
/// The pools' server-side `statement_timeout`.
const STATEMENT: Duration = Duration::from_secs(2);
/// Slack on top of a configured bound for scheduling on a loaded 2-core machine.
const SLACK: Duration = Duration::from_millis(500);
/// Any call taking this long counts as hung (and fails the drill).
const HUNG: Duration = Duration::from_secs(30);

/// The drills run one at a time: each has a cluster of its own and timing matters.
static DRILLS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The `Net`, or `None` with a loud notice when this machine cannot create one.
fn net_or_skip(test: &str, hosts: &[&str]) -> Option<Net> {
    match Net::new(hosts) {
        Ok(net) => Some(net),
        Err(e @ KitError::Unsupported { .. }) => {
            assert!(!net::required(), "HERD_REQUIRE_NETNS=1 but {e}");
            // Straight to the process's stderr: libtest captures `eprintln!`.
            let _ = writeln!(
                std::io::stderr(),
                "\n*** SKIPPED {test}: {e} (HERD_REQUIRE_NETNS=1 makes this a failure) ***\n"
            );
            None
        }
        Err(e) => panic!("Net::new: {e}"),
    }
}

fn pool() -> PoolConfig {
    PoolConfig {
        acquire_timeout: ACQUIRE,
        statement_timeout: Some(STATEMENT),
        ..PoolConfig::default()
    }
}

fn config(pg: &PgCluster) -> RouterConfig {
    RouterConfig {
        primary: Some(NodeConfig::new(pg.primary_url()).pool(pool())),
        replicas: vec![NodeConfig::new(pg.replica_urls()[0].clone()).pool(pool())],
        check_interval: INTERVAL,
        ..RouterConfig::default()
    }
}

/// The address of the server that answered a read routed by the router.
async fn read_server(router: &DbRouter) -> Result<String, sqlx::Error> {
    sqlx::query_scalar("SELECT host(inet_server_addr())")
        .fetch_one(router)
        .await
}

/// The primary's current WAL position, in bytes since `0/0`.
async fn current_lsn(primary: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint")
        .fetch_one(primary)
        .await
        .unwrap()
}

/// The replica's replayed WAL position, in bytes since `0/0`.
async fn replayed_lsn(replica: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '0/0')::bigint")
        .fetch_one(replica)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_black_holed_from_the_instance_fails_writes_fast_and_keeps_reads() {
    let _one_at_a_time = DRILLS.lock().await;
    let Some(net) = net_or_skip("db-router primary black-holed", &["db1", "db2"]) else {
        return;
    };
    let pg = net.pg_cluster("db1", &["db2"]).await.unwrap();
    let replica_ip = net.host("db2").unwrap().ip().to_string();
    let router = DbRouter::connect(config(&pg)).await.unwrap();
    sqlx::raw_sql("CREATE TABLE drill (id bigint PRIMARY KEY)")
        .execute(&router)
        .await
        .unwrap();
    let mut next_id = 0_i64;
    let mut committed = BTreeSet::new();
    let mut refused = BTreeSet::new();
    for _ in 0..20 {
        sqlx::query("INSERT INTO drill VALUES ($1)")
            .bind(next_id)
            .execute(&router)
            .await
            .unwrap();
        committed.insert(next_id);
        next_id += 1;
    }
    pg.wait_for_replay().await.unwrap();
    assert_eq!(read_server(&router).await.unwrap(), replica_ip);

    // --- The primary's packets to and from the instance vanish; it keeps running. ---
    net.partition_test("db1").unwrap();
    let cut = Instant::now();
    let (mut failed, mut slowest_failure, mut reads, mut replica_ejected) =
        (0_u32, Duration::ZERO, 0_u32, false);
    while cut.elapsed() < Duration::from_secs(6) {
        let id = next_id;
        next_id += 1;
        let sent = Instant::now();
        let write = tokio::time::timeout(
            HUNG,
            sqlx::query("INSERT INTO drill VALUES ($1)")
                .bind(id)
                .execute(&router),
        )
        .await
        .unwrap_or_else(|_| panic!("a write hung for {HUNG:?} during the partition"));
        let took = sent.elapsed();
        match write {
            Ok(_) => {
                committed.insert(id);
            }
            Err(e) => {
                let class = ErrorClass::of(&e);
                assert_eq!(class, ErrorClass::Unavailable, "write {id}: {e}");
                assert_eq!(class.status(), 503);
                assert!(
                    matches!(
                        Error::from_sqlx(&e),
                        Some(Error::NoPrimary { .. } | Error::NodeDown { .. })
                    ) || matches!(e, sqlx::Error::PoolTimedOut),
                    "a typed error saying the primary is unavailable: {e}"
                );
                failed += 1;
                slowest_failure = slowest_failure.max(took);
                refused.insert(id);
            }
        }
        // Reads carry on from the replica.
        let read = tokio::time::timeout(HUNG, read_server(&router))
            .await
            .unwrap_or_else(|_| panic!("a read hung for {HUNG:?} during the partition"));
        assert_eq!(read.unwrap(), replica_ip, "reads are served by the replica");
        reads += 1;
        replica_ejected |= !router.status().node("replica1").unwrap().eligible;
        sleep(Duration::from_millis(50)).await;
    }
    let status = router.status();
    eprintln!(
        "drill 1: primary black-holed for {:?}: {failed} writes failed (503), the slowest after \
         {slowest_failure:?} (bound: acquire_timeout {ACQUIRE:?}, check {INTERVAL:?}); \
         {reads} reads all served by the replica; write node seen: {:?}",
        cut.elapsed(),
        status.primary
    );
    assert!(
        failed > 0,
        "writes must fail while the primary is unreachable"
    );
    assert!(
        slowest_failure <= ACQUIRE + SLACK,
        "a failed write took {slowest_failure:?}, past the configured bound {ACQUIRE:?}"
    );
    assert!(!replica_ejected, "the monitor must not eject the replica");
    assert!(
        !status.node("primary").unwrap().reachable,
        "the monitor saw the primary down"
    );

    // --- Heal: writes are back within 3 s. ---
    net.heal().unwrap();
    let healed = Instant::now();
    let back = loop {
        let id = next_id;
        next_id += 1;
        let write = tokio::time::timeout(
            HUNG,
            sqlx::query("INSERT INTO drill VALUES ($1)")
                .bind(id)
                .execute(&router),
        )
        .await
        .expect("a write hung after heal");
        match write {
            Ok(_) => {
                committed.insert(id);
                break healed.elapsed();
            }
            Err(e) => {
                assert_eq!(ErrorClass::of(&e), ErrorClass::Unavailable, "{e}");
                refused.insert(id);
            }
        }
        assert!(
            healed.elapsed() < Duration::from_secs(10),
            "no write within 10 s of heal"
        );
        sleep(Duration::from_millis(20)).await;
    };
    eprintln!("drill 1: writes back {back:?} after heal");
    assert!(back <= Duration::from_secs(3), "writes back after {back:?}");

    // Nothing reported committed is lost, and nothing reported failed was written (a refused
    // write was never sent), on the primary and, once replayed, on the replica.
    pg.wait_for_replay().await.unwrap();
    for url in [pg.primary_url(), pg.replica_urls()[0].clone()] {
        let direct = sqlx::PgPool::connect(&url).await.unwrap();
        let stored: BTreeSet<i64> = sqlx::query_scalar("SELECT id FROM drill")
            .fetch_all(&direct)
            .await
            .unwrap()
            .into_iter()
            .collect();
        assert_eq!(
            stored, committed,
            "{url}: rows = the writes reported committed"
        );
        assert!(stored.is_disjoint(&refused));
        direct.close().await;
    }
    eprintln!(
        "drill 1: {} writes committed, all present; {} refused, none present",
        committed.len(),
        refused.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_cut_from_its_primary_leaves_the_read_set_and_reads_stay_fresh() {
    let _one_at_a_time = DRILLS.lock().await;
    let Some(net) = net_or_skip("db-router replica cut from primary", &["db1", "db2"]) else {
        return;
    };
    const MAX_LAG_BYTES: u64 = 1024 * 1024;
    const ROUNDS: usize = 500;
    let pg = net.pg_cluster("db1", &["db2"]).await.unwrap();
    let replica_ip = net.host("db2").unwrap().ip().to_string();
    let router = DbRouter::connect(RouterConfig {
        max_lag_bytes: MAX_LAG_BYTES,
        // Only the byte bound decides here.
        max_lag: Duration::from_secs(600),
        read_your_writes: ReadYourWritesConfig {
            max_wait: Duration::from_millis(20),
            ..ReadYourWritesConfig::default()
        },
        ..config(&pg)
    })
    .await
    .unwrap();
    sqlx::raw_sql(
        "CREATE TABLE filler (pad text);
         CREATE TABLE counters (id int PRIMARY KEY, v bigint NOT NULL);
         INSERT INTO counters SELECT g, 0 FROM generate_series(1, 10) g;",
    )
    .execute(&router)
    .await
    .unwrap();
    pg.wait_for_replay().await.unwrap();
    let primary = sqlx::PgPool::connect(&pg.primary_url()).await.unwrap();
    let replica = sqlx::PgPool::connect(&pg.replica_urls()[0]).await.unwrap();
    // Eligible and used before the fault.
    let took = wait_for("replica eligible", Duration::from_secs(5), || {
        router.status().node("replica1").unwrap().eligible
    })
    .await;
    assert!(took < Duration::from_secs(5));
    assert_eq!(read_server(&router).await.unwrap(), replica_ip);

    // --- Replication cut; the instance still reaches both. WAL keeps coming. ---
    net.partition("db1", "db2").unwrap();
    let cut = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let generator = tokio::spawn({
        let (primary, stop) = (primary.clone(), Arc::clone(&stop));
        async move {
            while !stop.load(Ordering::Relaxed) {
                sqlx::query(
                    "INSERT INTO filler SELECT repeat('x', 1000) FROM generate_series(1, 100)",
                )
                .execute(&primary)
                .await
                .unwrap();
                sleep(Duration::from_millis(50)).await;
            }
        }
    });
    // The lag as PostgreSQL itself reports it, and when the router drops the replica.
    let watcher = tokio::spawn({
        let (primary, replica, router) = (primary.clone(), replica.clone(), router.clone());
        async move {
            let (mut crossed, mut left) = (None, None);
            let mut lag_at_crossing = 0;
            while left.is_none() || crossed.is_none() {
                assert!(
                    cut.elapsed() < Duration::from_secs(20),
                    "no exclusion in 20 s"
                );
                let current = current_lsn(&primary).await;
                let replayed = replayed_lsn(&replica).await;
                let lag = u64::try_from(current - replayed).unwrap_or(0);
                if crossed.is_none() && lag > MAX_LAG_BYTES {
                    crossed = Some(Instant::now());
                    lag_at_crossing = lag;
                }
                if left.is_none() && !router.status().node("replica1").unwrap().eligible {
                    left = Some(Instant::now());
                }
                sleep(Duration::from_millis(20)).await;
            }
            (crossed.unwrap(), left.unwrap(), lag_at_crossing)
        }
    });

    // Read-your-writes: one client writes then reads its own row, 500 times. A client without a
    // token doing the same read (the control) shows what the lagging replica serves meanwhile.
    let client = Consistency::new();
    let (mut stale, mut stale_without_token) = (0, 0);
    for round in 0..ROUNDS {
        let id = 1 + (round % 10) as i32;
        let (written, read) = client
            .scope(async {
                let written: i64 =
                    sqlx::query_scalar("UPDATE counters SET v = v + 1 WHERE id = $1 RETURNING v")
                        .bind(id)
                        .fetch_one(&router)
                        .await
                        .unwrap();
                let read: i64 = sqlx::query_scalar("SELECT v FROM counters WHERE id = $1")
                    .bind(id)
                    .fetch_one(&router)
                    .await
                    .unwrap();
                (written, read)
            })
            .await;
        if read != written {
            stale += 1;
        }
        let control: i64 = sqlx::query_scalar("SELECT v FROM counters WHERE id = $1")
            .bind(id)
            .fetch_one(&router)
            .await
            .unwrap();
        if control != written {
            stale_without_token += 1;
        }
    }
    let rounds_took = cut.elapsed();
    let (crossed, left, lag_at_crossing) = watcher.await.unwrap();
    let status = router.status();
    let lag_seen = status.node("replica1").unwrap().lag_bytes.unwrap_or(0);
    let lag_now =
        u64::try_from(current_lsn(&primary).await - replayed_lsn(&replica).await).unwrap_or(0);
    let after_bound = left.saturating_duration_since(crossed);
    eprintln!(
        "drill 2: replica cut from its primary: lag {lag_at_crossing} B when it crossed the \
         bound ({MAX_LAG_BYTES} B) {:?} after the cut, {lag_now} B {:?} after the cut (router \
         saw {lag_seen} B); out of the read set {after_bound:?} after crossing (check interval \
         {INTERVAL:?}); {stale} stale reads in {ROUNDS} write-then-read rounds ({:?}); \
         {stale_without_token} stale without a token",
        crossed - cut,
        cut.elapsed(),
        rounds_took
    );
    assert!(lag_now > lag_at_crossing, "the lag grows while cut off");
    assert!(
        lag_seen > MAX_LAG_BYTES,
        "the router saw the lag past the bound"
    );
    assert!(
        after_bound <= INTERVAL + SLACK,
        "out of the read set {after_bound:?} after crossing the bound"
    );
    assert_eq!(stale, 0, "read-your-writes: stale reads");
    assert!(
        stale_without_token > 0,
        "control: without a token some reads hit the lagging replica while it was eligible"
    );
    for _ in 0..20 {
        assert_ne!(
            read_server(&router).await.unwrap(),
            replica_ip,
            "no reads from the excluded replica"
        );
    }

    // --- Heal: the replica catches up and takes reads again. ---
    stop.store(true, Ordering::Relaxed);
    generator.await.unwrap();
    net.heal().unwrap();
    let healed = Instant::now();
    let target = current_lsn(&primary).await;
    let caught_up = loop {
        if replayed_lsn(&replica).await >= target {
            break healed.elapsed();
        }
        assert!(
            healed.elapsed() < Duration::from_secs(30),
            "no catch-up in 30 s"
        );
        sleep(Duration::from_millis(20)).await;
    };
    wait_for(
        "replica eligible after heal",
        Duration::from_secs(30),
        || router.status().node("replica1").unwrap().eligible,
    )
    .await;
    let eligible = healed.elapsed();
    let mut on_replica = 0;
    for _ in 0..20 {
        if read_server(&router).await.unwrap() == replica_ip {
            on_replica += 1;
        }
    }
    eprintln!(
        "drill 2: after heal the replica caught up in {caught_up:?}, was eligible again after \
         {eligible:?}; {on_replica}/20 reads on it"
    );
    assert_eq!(on_replica, 20, "the only replica takes the reads again");
    primary.close().await;
    replica.close().await;
}

/// A write already sent when the primary is black-holed: the server finishes it (here it
/// commits; a slower one `statement_timeout` would cancel), but that answer never arrives, and
/// TCP would keep the call waiting for minutes. The router bounds the wait for a sent
/// statement's answer at `statement_timeout + check_timeout`, then closes the connection (it
/// leaves the pool) and returns `Error::OutcomeUnknown` (a 503). The write did commit: the
/// error says the outcome is unknown, not that it failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_in_flight_when_the_primary_is_black_holed_ends_within_the_bound() {
    let _one_at_a_time = DRILLS.lock().await;
    let Some(net) = net_or_skip("db-router write in flight", &["db1", "db2"]) else {
        return;
    };
    let pg = net.pg_cluster("db1", &["db2"]).await.unwrap();
    let router = DbRouter::connect(config(&pg)).await.unwrap();
    sqlx::raw_sql("CREATE TABLE drill (id bigint)")
        .execute(&router)
        .await
        .unwrap();
    let bound = STATEMENT + RouterConfig::default().check_timeout;
    let write = tokio::spawn({
        let router = router.clone();
        async move {
            let sent = Instant::now();
            let outcome = sqlx::query("INSERT INTO drill SELECT 1 FROM pg_sleep(1)")
                .execute(&router)
                .await;
            (sent.elapsed(), outcome.map(drop))
        }
    });
    // The partition starts once the server is running the statement (it was sent).
    let direct = sqlx::PgPool::connect(&pg.primary_url()).await.unwrap();
    let started = Instant::now();
    loop {
        let running: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE state = 'active' AND query LIKE 'INSERT INTO drill%'",
        )
        .fetch_one(&direct)
        .await
        .unwrap();
        if running == 1 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the write never started"
        );
        sleep(Duration::from_millis(10)).await;
    }
    direct.close().await;
    let size_before = router.status().node("primary").unwrap().pool_size;
    net.partition_test("db1").unwrap();
    let ended = tokio::time::timeout(HUNG, write).await;
    let (took, outcome) = match ended {
        Ok(joined) => joined.unwrap(),
        Err(_) => {
            net.heal().unwrap();
            panic!("the write sent before the partition was still pending after {HUNG:?}");
        }
    };
    eprintln!("write in flight: ended after {took:?} (bound {bound:?}): {outcome:?}");
    // Still partitioned: the abandoned connection leaves the pool (closed, not kept for later;
    // the pool's other connections are idle).
    let left = wait_for(
        "the connection of the unanswered write leaves the pool",
        Duration::from_secs(6),
        || {
            let status = router.status();
            let primary = status.node("primary").unwrap();
            (primary.pool_size, primary.pool_in_use) == (size_before - 1, 0)
        },
    )
    .await;
    net.heal().unwrap();
    eprintln!("write in flight: its connection left the pool {left:?} later");
    let e = outcome.expect_err("no answer can arrive during the partition");
    assert!(
        took >= bound,
        "gave up after {took:?}, before the bound {bound:?}"
    );
    assert!(
        took <= bound + SLACK,
        "ended after {took:?}, past the bound {bound:?}"
    );
    let class = ErrorClass::of(&e);
    assert_eq!(class, ErrorClass::Unavailable, "{e}");
    assert_eq!(class.status(), 503);
    assert!(
        matches!(
            Error::from_sqlx(&e),
            Some(Error::OutcomeUnknown { node, waited, .. }) if node == "primary" && *waited == bound
        ),
        "a typed error saying the outcome is unknown: {e}"
    );
    assert!(
        e.to_string().contains("may or may not have committed"),
        "{e}"
    );

    // After heal, writes are back, and the unanswered write turns out to have committed.
    let healed = Instant::now();
    loop {
        match sqlx::query("INSERT INTO drill VALUES (2)")
            .execute(&router)
            .await
        {
            Ok(_) => break,
            Err(e) => assert_eq!(ErrorClass::of(&e), ErrorClass::Unavailable, "{e}"),
        }
        assert!(
            healed.elapsed() < Duration::from_secs(10),
            "no write within 10 s of heal"
        );
        sleep(Duration::from_millis(20)).await;
    }
    let direct = sqlx::PgPool::connect(&pg.primary_url()).await.unwrap();
    let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM drill ORDER BY id")
        .fetch_all(&direct)
        .await
        .unwrap();
    assert_eq!(ids, [1, 2], "the write reported as unknown did commit");
    direct.close().await;
}

/// The bound never pre-empts the server's own answer: a statement past `statement_timeout` on a
/// healthy connection gets PostgreSQL's cancel (57014), and its connection stays in the pool, as
/// does the connection of a statement its caller dropped before the bound. Needs no network
/// namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_past_statement_timeout_gets_the_servers_answer_within_the_bound() {
    let pg = PgCluster::start(0).await.unwrap();
    // One connection, so that the statement after the timeout shows whether it was kept.
    let router = DbRouter::connect(RouterConfig {
        primary: Some(NodeConfig::new(pg.primary_url()).pool(PoolConfig {
            max_connections: 1,
            ..pool()
        })),
        check_interval: INTERVAL,
        ..RouterConfig::default()
    })
    .await
    .unwrap();
    let backend = || sqlx::query_scalar::<_, i32>("SELECT pg_backend_pid()").fetch_one(&router);
    let before = backend().await.unwrap();
    let sent = Instant::now();
    let e = sqlx::query("SELECT pg_sleep(30)")
        .execute(&router)
        .await
        .expect_err("statement_timeout cancels it");
    let took = sent.elapsed();
    eprintln!("statement past statement_timeout: {took:?}: {e}");
    let code = match &e {
        sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
        _ => None,
    };
    assert_eq!(code.as_deref(), Some("57014"), "the server's cancel: {e}");
    assert!(took >= STATEMENT, "{took:?}");
    assert_eq!(
        backend().await.unwrap(),
        before,
        "the connection that answered is kept in the pool"
    );
    // A statement the caller gives up on before the bound leaves its connection to sqlx, which
    // pools it again once the answer arrives.
    let dropped = tokio::time::timeout(
        Duration::from_millis(200),
        sqlx::query("SELECT pg_sleep(1)").execute(&router),
    )
    .await;
    assert!(dropped.is_err(), "the caller stopped waiting");
    assert_eq!(
        backend().await.unwrap(),
        before,
        "a statement dropped by its caller keeps its connection"
    );
    router.close().await;
}

/// Polls `cond` every 20 ms for up to `limit`; returns how long it took.
async fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if cond() {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        sleep(Duration::from_millis(20)).await;
    }
}
