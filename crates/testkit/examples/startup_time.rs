//! Run with: `cargo run --release -p herd-testkit --example startup_time`
//!
//! Starts each topology 5 times and prints every start time and the median, for the README and the
//! issue notes. A start is measured from the call until the topology is ready (replicas streaming;
//! cluster state ok with all slots covered and replicas in sync); the drop is not counted.
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use herd_testkit::{PgCluster, RedisCluster, RedisServer};

const RUNS: usize = 5;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

async fn measure<T, F, Fut>(label: &str, start: F) -> herd_testkit::Result<()>
where
    F: Fn() -> Fut,
    Fut: Future<Output = herd_testkit::Result<T>>,
{
    let mut times = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let t = Instant::now();
        let topology = start().await?;
        times.push(t.elapsed());
        drop(topology);
    }
    let shown: Vec<String> = times
        .iter()
        .map(|d| format!("{:.2}s", d.as_secs_f64()))
        .collect();
    println!(
        "{label:<34} median {:.2}s  (runs: {})",
        median(times).as_secs_f64(),
        shown.join(", ")
    );
    Ok(())
}

#[tokio::main]
async fn main() -> herd_testkit::Result<()> {
    measure("PgCluster::start(2)", || PgCluster::start(2)).await?;
    measure("RedisCluster::start() (6 nodes)", RedisCluster::start).await?;
    measure("RedisServer::start()", RedisServer::start).await?;
    Ok(())
}
