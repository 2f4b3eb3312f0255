//! Active health checks with [`TcpProbe`] against real listeners on 127.0.0.1 (the HTTP probe and
//! its tests are in herd-gateway).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use herd_lb_core::EndpointSet;
use herd_lb_core::EndpointStatus;
use herd_lb_core::health::{ActiveHealthConfig, TcpProbe};
use tokio::net::TcpListener;

#[tokio::test]
async fn tcp_checks_mark_a_closed_listener_down_and_stop_with_the_set() {
    // The kernel completes connections to a bound listener from its backlog, so no accept loop
    // is needed; dropping the listener refuses new ones, like a killed process.
    let up = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let down = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let lb: EndpointSet<String> = EndpointSet::new();
    lb.insert(up.local_addr().unwrap().to_string(), (), 1.0)
        .unwrap();
    lb.insert(down.local_addr().unwrap().to_string(), (), 1.0)
        .unwrap();
    let check = ActiveHealthConfig {
        interval: Duration::from_millis(50),
        jitter: 0.0,
        timeout: Duration::from_secs(1),
        rise: 2,
        fall: 3,
    };
    let task = lb.spawn_active_health(TcpProbe, check).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(lb.endpoints()[1].status, EndpointStatus::Healthy);

    drop(down);
    wait_for(|| lb.endpoints()[1].status == EndpointStatus::Unhealthy).await;
    assert_eq!(
        lb.endpoints()[0].status,
        EndpointStatus::Healthy,
        "the open listener stays up"
    );

    drop(lb);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(task.is_finished(), "checks stop with the set");
    drop(up);
}

async fn wait_for(mut cond: impl FnMut() -> bool) {
    for _ in 0..100 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("condition not met within 5 s");
}
