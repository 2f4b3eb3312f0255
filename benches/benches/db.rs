//! herd-db-router.
//!
//! - `db_query`: the same `SELECT` by primary key, one at a time, on a testkit cluster (a
//!   primary and one streaming replica on this machine): `direct_pool` is a plain sqlx
//!   `PgPool` on the replica (the anchor), `router_auto` is `&DbRouter` routing it
//!   automatically (classify, pick the replica with lb-core, run, record) to that same
//!   replica, through that same pool (`DbRouterBuilder::pool`), so one connection and one
//!   server process answer both. The statement repeats, as an application's do, so after the first query its
//!   route comes from the router's route cache instead of the classifier. The two are
//!   measured paired: each iteration runs one query each way and times only its own side, so
//!   both see the same load at the same moments. Goal: router_auto within 3 % of direct_pool.
//!   While it runs, one spinning thread per core at the lowest priority (`SCHED_IDLE`, set with
//!   `chrt`) keeps the cores from going idle: on a virtual machine, waking an idle core to
//!   deliver a round trip's answer costs tens of microseconds, varying from second to second,
//!   far more than the router's own work. Any other thread preempts a spinner at once, so the
//!   queries run as before, without that wake-up noise (as `idle=poll` would, machine-wide).
//!   `HERD_BENCH_SPIN=0` turns them off (under valgrind, say).
//! - `db_classify`: every statement of the classifier corpus
//!   (`crates/db-router/tests/corpus.txt`) classified by `herd` (herd_db_router::classify, the
//!   compiled-in catalog), by `herd_catalog` (a classifier holding a server-sized catalog of
//!   3,300 functions, as the router has once it has read `pg_proc`) and by `sqlparser` (parse
//!   with the PostgreSQL dialect, then decide from the AST: pgcat's approach). Throughput is
//!   per statement. Goal: herd at least 10x faster and under 200 ns per statement.
//!
//! Run with: `cargo bench -p herd-benches --bench db`

use std::hint::black_box;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use herd_db_router::{DbRouter, NodeConfig, RouterConfig};
use herd_testkit::PgCluster;
use sqlparser::ast::{Query, SetExpr, Statement};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::runtime::Runtime;

const ROWS: i32 = 1000;
const SELECT: &str = "SELECT v FROM bench_kv WHERE id = $1";
/// Pairs of the control run after `db_query` (two plain pools, paired like the group's ids).
const CONTROL_PAIRS: u32 = 20_000;

/// The corpus statements (the part after `route:reason `), as the tests read them.
fn corpus() -> Vec<&'static str> {
    include_str!("../../crates/db-router/tests/corpus.txt")
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split_once(' ').map_or("", |(_, sql)| sql))
        .collect()
}

/// pgcat-style routing from a sqlparser AST: one statement, a query without locking
/// clause, `SELECT INTO` or data-modifying CTE (or EXPLAIN without ANALYZE of one, or SHOW).
fn sqlparser_is_read(sql: &str) -> bool {
    let Ok(statements) = Parser::parse_sql(&PostgreSqlDialect {}, sql) else {
        return false;
    };
    match statements.as_slice() {
        [statement] => statement_is_read(statement),
        _ => false,
    }
}

fn statement_is_read(statement: &Statement) -> bool {
    match statement {
        Statement::Query(query) => query_is_read(query),
        Statement::Explain {
            analyze, statement, ..
        } => !analyze && statement_is_read(statement),
        Statement::ShowVariable { .. } => true,
        _ => false,
    }
}

fn query_is_read(query: &Query) -> bool {
    query.locks.is_empty()
        && query
            .with
            .as_ref()
            .is_none_or(|with| with.cte_tables.iter().all(|cte| query_is_read(&cte.query)))
        && set_expr_is_read(&query.body)
}

fn set_expr_is_read(body: &SetExpr) -> bool {
    match body {
        SetExpr::Select(select) => select.into.is_none(),
        SetExpr::Query(query) => query_is_read(query),
        SetExpr::SetOperation { left, right, .. } => {
            set_expr_is_read(left) && set_expr_is_read(right)
        }
        SetExpr::Values(_) | SetExpr::Table(_) => true,
        _ => false,
    }
}

fn classify(c: &mut Criterion) {
    let statements = corpus();
    let mut group = c.benchmark_group("db_classify");
    group.throughput(Throughput::Elements(statements.len() as u64));
    group.bench_function("herd", |b| {
        b.iter(|| {
            let mut replicas = 0;
            for sql in &statements {
                replicas += usize::from(herd_db_router::classify(black_box(sql)).is_replica());
            }
            replicas
        })
    });
    // The classifier as the router runs it once it has read a server's catalog: 3,300
    // functions, a tenth of them volatile (hash-set lookups by borrowed name).
    let with_catalog = herd_db_router::Classifier::default().with_catalog(server_sized_catalog());
    group.bench_function("herd_catalog", |b| {
        b.iter(|| {
            let mut replicas = 0;
            for sql in &statements {
                replicas += usize::from(with_catalog.classify(black_box(sql)).is_replica());
            }
            replicas
        })
    });
    group.bench_function("sqlparser", |b| {
        b.iter(|| {
            let mut replicas = 0;
            for sql in &statements {
                replicas += usize::from(sqlparser_is_read(black_box(sql)));
            }
            replicas
        })
    });
    group.finish();
}

/// A catalog the size of a real server's `pg_proc`: 3,300 functions, a tenth volatile.
fn server_sized_catalog() -> herd_db_router::Catalog {
    use herd_db_router::{Catalog, CatalogFunction, Volatility};
    Catalog::from_functions((0..3300).map(|i| {
        let volatility = if i % 10 == 0 {
            Volatility::Volatile
        } else {
            Volatility::Stable
        };
        // Names spread over first letters and lengths like pg_proc's, so the lookups stop at
        // the (first byte, length) filter no more often than with a real catalog.
        let stem = [
            "abs", "array", "count", "date", "json", "lower", "pg", "regexp", "string", "to",
            "xml", "ts", "now", "max", "sum", "upper", "length", "coalesce",
        ][i % 18];
        CatalogFunction::new(
            format!("schema{}", i % 7),
            format!("{stem}_{i}"),
            volatility,
        )
        .one_argument(i % 3 == 0)
    }))
}

/// The benchmarked statement through any executor (`&PgPool` or `&DbRouter`).
async fn select<'e, E>(executor: E, id: i32) -> String
where
    E: sqlx::Executor<'e, Database = sqlx::Postgres>,
{
    sqlx::query_scalar(SELECT)
        .bind(id)
        .fetch_one(executor)
        .await
        .expect("select")
}

/// Every pair of the group (both ids): `[router, direct]` nanoseconds.
#[derive(Debug, Default)]
struct Pairs(std::sync::Mutex<Vec<[u64; 2]>>);

impl Pairs {
    fn add(&self, router: Duration, direct: Duration) {
        let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        if let Ok(mut pairs) = self.0.lock() {
            pairs.push([nanos(router), nanos(direct)]);
        }
    }

    /// A line with the pairs' count, the mean and median of each side, and the median of the
    /// per-pair ratios (robust to the stalls this machine throws into single queries).
    fn summary(&self, first: &str, second: &str) -> String {
        let pairs = self.0.lock().map(|p| p.clone()).unwrap_or_default();
        let n = pairs.len().max(1);
        let mean = |i: usize| pairs.iter().map(|p| p[i] as f64).sum::<f64>() / n as f64 / 1e3;
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
        };
        let side = |i: usize| median(pairs.iter().map(|p| p[i] as f64 / 1e3).collect());
        let ratio = median(
            pairs
                .iter()
                .map(|p| p[0] as f64 / (p[1].max(1)) as f64)
                .collect(),
        );
        format!(
            "{} pairs: {first} mean {:.1} µs, median {:.1} µs; {second} mean {:.1} µs, median {:.1} µs; \
             mean ratio {:.4}x, median ratio {:.4}x, median of per-pair ratios {ratio:.4}x",
            pairs.len(),
            mean(0),
            side(0),
            mean(1),
            side(1),
            mean(0) / mean(1),
            side(0) / side(1),
        )
    }
}

/// `iters` rounds of one query on each side, the `timed` side first; returns the time of the
/// `timed` side's queries. Both sides are added to `totals`.
async fn paired(
    iters: u64,
    router: &DbRouter,
    direct: &PgPool,
    timed: Side,
    totals: &[Pairs; 3],
    id: impl Fn() -> i32,
) -> Duration {
    let mut spent = Duration::ZERO;
    for _ in 0..iters {
        let (router_time, direct_time) = pair(router, direct, timed == Side::Router, &id).await;
        spent += match timed {
            Side::Router => router_time,
            Side::Direct => direct_time,
        };
        // Every pair, and the pairs of this id alone (which side ran first).
        totals[0].add(router_time, direct_time);
        totals[timed as usize + 1].add(router_time, direct_time);
    }
    spent
}

/// Which side of a pair a criterion id reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Router = 0,
    Direct = 1,
}

/// One query on `a` and one on `b`, `a` first when `a_first`; their times, `(a, b)`.
async fn pair<'a, 'b, A, B>(a: A, b: B, a_first: bool, id: impl Fn() -> i32) -> (Duration, Duration)
where
    A: sqlx::Executor<'a, Database = sqlx::Postgres>,
    B: sqlx::Executor<'b, Database = sqlx::Postgres>,
{
    if a_first {
        let a = time(select(a, id())).await;
        (a, time(select(b, id())).await)
    } else {
        let b = time(select(b, id())).await;
        (time(select(a, id())).await, b)
    }
}

async fn time(query: impl Future<Output = String>) -> Duration {
    let start = Instant::now();
    black_box(query.await);
    start.elapsed()
}

/// One busy thread per core at `SCHED_IDLE` priority, for as long as it lives.
struct Spinners {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Spinners {
    /// Starts them, unless `HERD_BENCH_SPIN=0` (e.g. under valgrind, which runs one thread at a
    /// time).
    fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let cores = if std::env::var("HERD_BENCH_SPIN").is_ok_and(|v| v == "0") {
            0
        } else {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        };
        let threads = (0..cores)
            .map(|_| {
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    // `/proc/thread-self` links to `PID/task/TID`.
                    let tid = std::fs::read_link("/proc/thread-self")
                        .ok()
                        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
                    let idle = tid.is_some_and(|tid| {
                        Command::new("chrt")
                            .args(["--idle", "--pid", "0", &tid])
                            .status()
                            .is_ok_and(|s| s.success())
                    });
                    if !idle {
                        // Spinning at normal priority would take the benchmark's CPU time.
                        eprintln!(
                            "db bench: could not lower a spinner to SCHED_IDLE; running without"
                        );
                        return;
                    }
                    while !stop.load(Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                })
            })
            .collect();
        Spinners { stop, threads }
    }
}

impl Drop for Spinners {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn query(c: &mut Criterion) {
    let rt = Runtime::new().expect("tokio runtime");
    let (cluster, direct, twin, router) = rt.block_on(async {
        let cluster = PgCluster::start(1).await.expect("testkit postgres cluster");
        let primary = PgPool::connect(&cluster.primary_url())
            .await
            .expect("primary pool");
        sqlx::raw_sql(
            "CREATE TABLE bench_kv (id int PRIMARY KEY, v text NOT NULL);
             INSERT INTO bench_kv SELECT g, md5(g::text) FROM generate_series(1, 1000) g;",
        )
        .execute(&primary)
        .await
        .expect("bench table");
        cluster.wait_for_replay().await.expect("replay");
        let replica_url = cluster.replica(0).url();
        let direct = PgPoolOptions::new()
            .connect(&replica_url)
            .await
            .expect("replica pool");
        let twin = PgPoolOptions::new()
            .connect(&replica_url)
            .await
            .expect("second replica pool");
        // The router reads through the very pool the direct side uses: the same connection and
        // server process answer both, so only the router's own work differs.
        let router = DbRouter::builder(RouterConfig {
            primary: Some(NodeConfig::new(cluster.primary_url())),
            replicas: vec![NodeConfig::new(replica_url)],
            ..RouterConfig::default()
        })
        .pool("replica1", direct.clone())
        .seed(1)
        .build()
        .await
        .expect("router");
        // Same work on both sides before measuring: warm connections and statement caches.
        for id in 1..=ROWS {
            let a = select(&direct, id).await;
            assert_eq!(a, select(&router, id).await);
            assert_eq!(a, select(&twin, id).await);
        }
        (cluster, direct, twin, router)
    });
    assert_eq!(router.status().eligible_replicas(), vec!["replica1"]);

    let mut group = c.benchmark_group("db_query");
    group.measurement_time(Duration::from_secs(10));
    let next = AtomicI32::new(0);
    let id = || next.fetch_add(1, Ordering::Relaxed) % ROWS + 1;
    // Paired: every iteration runs one query each way and reports the time of its own, so both
    // ids see the same mix of work; only the reported side differs.
    let (direct, twin, router) = (&direct, &twin, &router);
    let totals = &<[Pairs; 3]>::default();
    let spinners = Spinners::start();
    group.bench_function("direct_pool", |b| {
        b.to_async(&rt)
            .iter_custom(|iters| paired(iters, router, direct, Side::Direct, totals, id))
    });
    group.bench_function("router_auto", |b| {
        b.to_async(&rt)
            .iter_custom(|iters| paired(iters, router, direct, Side::Router, totals, id))
    });
    group.finish();
    // The two ids run one after the other, seconds apart, and this machine's round trips drift
    // by more than the 3 % asked between such windows. Over every pair of both ids, each router
    // query ran next to a direct one, at the same moments: that ratio does not drift.
    println!(
        "db_query paired over both ids: {}",
        totals[0].summary("router_auto", "direct_pool")
    );
    // The same by id: a difference between the two is what running first or second in a
    // pair costs here (the two ids run different numbers of pairs, so it can tilt the line
    // above).
    println!(
        "db_query paired, router_auto's pairs (router first): {}",
        totals[1].summary("router_auto", "direct_pool")
    );
    println!(
        "db_query paired, direct_pool's pairs (direct first): {}",
        totals[2].summary("router_auto", "direct_pool")
    );
    // The control: the same pairing between two plain pools on the same replica, each with its
    // own connection and server process. What it shows away from 1.0 is what two connections
    // alone differ by here, which sharing the pool keeps out of the group's ratio.
    let control = Pairs::default();
    rt.block_on(async {
        for i in 0..CONTROL_PAIRS {
            let (a, b) = pair(direct, twin, i % 2 == 0, &id).await;
            control.add(a, b);
        }
    });
    println!(
        "db_query control, two plain pools paired alike: {}",
        control.summary("direct_pool", "second_pool")
    );
    drop(spinners);
    rt.block_on(async {
        router.close().await;
        direct.close().await;
        twin.close().await;
    });
    drop(cluster);
}

criterion_group!(benches, classify, query);
criterion_main!(benches);
