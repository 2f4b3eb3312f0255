//! The router's cost per query in instructions: `db_query`'s `SELECT` by primary key, run
//! alternately through `&DbRouter` (automatic routing to the replica) and through the plain
//! `PgPool` the router reads with, on a testkit cluster, on a current-thread runtime (so no
//! other thread takes part in a query and the count repeats from run to run).
//!
//! Run with:
//! `cargo build --release -p herd-db-router --example query_cost`, then
//! `valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*RouterSide*poll*'
//! --toggle-collect='*DirectSide*poll*' target/release/examples/query_cost` and divide the
//! inclusive cost of `RouterSide`'s and `DirectSide`'s `poll` by the query count the example prints (`HERD_QUERIES`, default 2000).

use std::error::Error;
use std::pin::{Pin, pin};
use std::task::{Context, Poll};

use herd_db_router::{DbRouter, NodeConfig, RouterConfig};
use herd_testkit::PgCluster;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

const ROWS: i32 = 1000;
const SELECT: &str = "SELECT v FROM bench_kv WHERE id = $1";

async fn router_side(router: &DbRouter, id: i32) -> Result<String, sqlx::Error> {
    let query = pin!(sqlx::query_scalar(SELECT).bind(id).fetch_one(router));
    RouterSide(query).await
}

async fn direct_side(pool: &PgPool, id: i32) -> Result<String, sqlx::Error> {
    let query = pin!(sqlx::query_scalar(SELECT).bind(id).fetch_one(pool));
    DirectSide(query).await
}

/// Polls a router query in a function of its own, for callgrind's `--toggle-collect`.
struct RouterSide<'a, F>(Pin<&'a mut F>);

impl<F: Future> Future for RouterSide<'_, F> {
    type Output = F::Output;

    #[inline(never)]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.0.as_mut().poll(cx)
    }
}

/// Polls a direct query in a function of its own, for callgrind's `--toggle-collect`.
struct DirectSide<'a, F>(Pin<&'a mut F>);

impl<F: Future> Future for DirectSide<'_, F> {
    type Output = F::Output;

    #[inline(never)]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.0.as_mut().poll(cx)
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn Error>> {
    let queries: i32 = std::env::var("HERD_QUERIES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2000);
    let cluster = PgCluster::start(1).await?;
    let primary = PgPool::connect(&cluster.primary_url()).await?;
    sqlx::raw_sql(
        "CREATE TABLE bench_kv (id int PRIMARY KEY, v text NOT NULL);
         INSERT INTO bench_kv SELECT g, md5(g::text) FROM generate_series(1, 1000) g;",
    )
    .execute(&primary)
    .await?;
    cluster.wait_for_replay().await?;
    let replica_url = cluster.replica(0).url();
    let direct = PgPoolOptions::new().connect(&replica_url).await?;
    let router = DbRouter::builder(RouterConfig {
        primary: Some(NodeConfig::new(cluster.primary_url())),
        replicas: vec![NodeConfig::new(replica_url)],
        ..RouterConfig::default()
    })
    .pool("replica1", direct.clone())
    .seed(1)
    .build()
    .await?;
    // Warm the connection, its statement cache and the router's route cache (not counted).
    for id in 1..=ROWS {
        let sql = sqlx::query_scalar::<_, String>(SELECT).bind(id);
        let expected = sql.fetch_one(&direct).await?;
        let routed = sqlx::query_scalar::<_, String>(SELECT)
            .bind(id)
            .fetch_one(&router)
            .await?;
        assert_eq!(expected, routed);
    }
    for i in 0..queries {
        let id = i % ROWS + 1;
        router_side(&router, id).await?;
        direct_side(&direct, id).await?;
    }
    println!("queries per side: {queries}");
    router.close().await;
    primary.close().await;
    drop(cluster);
    Ok(())
}
