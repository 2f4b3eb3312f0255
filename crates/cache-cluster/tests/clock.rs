//! The L1's clock thread belongs to the caches that use it: it ends with the last of them.
//! (A test binary of its own: no other cache in the process keeps the thread alive.)
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use herd_cache_cluster::{Backend, Cache};

/// Threads of this process whose name starts with the clock's (`comm` keeps 15 bytes).
fn clock_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("herd-cache-clo"))
        .count()
}

async fn wait_for_clock_threads(n: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while clock_threads() != n {
        assert!(
            Instant::now() < deadline,
            "{} clock threads, expected {n}",
            clock_threads()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test]
async fn the_clock_thread_ends_with_the_last_cache_and_restarts_with_the_next() {
    assert_eq!(clock_threads(), 0);
    let without_l1 = Cache::builder(Backend::memory())
        .without_l1()
        .build()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(clock_threads(), 0, "a cache without an L1 needs no clock");

    let a = Cache::builder(Backend::memory()).build().await.unwrap();
    let b = Cache::builder(Backend::memory()).build().await.unwrap();
    // The thread names itself once it runs.
    wait_for_clock_threads(1).await;
    a.set("k", &1u32, Duration::from_secs(60)).await.unwrap();
    assert_eq!(a.get::<u32>("k").await, Some(1));

    drop(a);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        clock_threads(),
        1,
        "b still uses it, and one thread serves both"
    );
    drop(b);
    wait_for_clock_threads(0).await;

    // The next cache starts it again, and its L1 entries expire by it.
    let c = Cache::builder(Backend::memory()).build().await.unwrap();
    wait_for_clock_threads(1).await;
    c.set("short", &2u32, Duration::from_millis(30))
        .await
        .unwrap();
    assert_eq!(c.get::<u32>("short").await, Some(2));
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert_eq!(c.get::<u32>("short").await, None);
    drop((c, without_l1));
    wait_for_clock_threads(0).await;
}
