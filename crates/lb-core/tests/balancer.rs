//! The Balancer service: passive health with paused time, drain, slow start, retries, discovery.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use herd_lb_core::{
    Balancer, BoxError, EndpointStatus, OutlierDetection, P2c, PickError, RetryConfig, RetryPolicy,
    RoundRobin, SlowStart,
};
use tower::{Service, ServiceExt};

/// An endpoint that fails while `down` is set, counting its calls.
#[derive(Clone)]
struct Flaky {
    name: &'static str,
    down: Arc<AtomicBool>,
    calls: Arc<AtomicUsize>,
}

impl Flaky {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            down: Arc::default(),
            calls: Arc::default(),
        }
    }
}

impl Service<u32> for Flaky {
    type Response = &'static str;
    type Error = BoxError;
    type Future = std::future::Ready<Result<&'static str, BoxError>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: u32) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            std::future::ready(Err(format!("{} is down", self.name).into()))
        } else {
            std::future::ready(Ok(self.name))
        }
    }
}

fn no_jitter() -> OutlierDetection {
    OutlierDetection {
        jitter: 0.0,
        ..OutlierDetection::default()
    }
}

#[tokio::test(start_paused = true)]
async fn ejection_backs_off_and_returns_after_one_probe() {
    let a = Flaky::new("a");
    let b = Flaky::new("b");
    let lb = Balancer::builder()
        .policy(RoundRobin::seeded(1))
        .outlier_detection(no_jitter())
        .build()
        .unwrap();
    lb.insert("a", a.clone(), 1.0).unwrap();
    lb.insert("b", b.clone(), 1.0).unwrap();
    a.down.store(true, Ordering::SeqCst);

    // Round robin alternates: after 5 failures in a row "a" is ejected.
    let mut failures = 0;
    for _ in 0..10 {
        if lb.clone().oneshot(0).await.is_err() {
            failures += 1;
        }
    }
    assert_eq!(failures, 5);
    let info = &lb.endpoints()[0];
    assert_eq!(info.status, EndpointStatus::Ejected);
    assert!(!info.healthy);
    let until = info.ejected_until.unwrap();
    assert_eq!(until - tokio::time::Instant::now(), Duration::from_secs(30));

    // While ejected, everything goes to "b".
    let before = a.calls.load(Ordering::SeqCst);
    for _ in 0..20 {
        assert_eq!(lb.clone().oneshot(0).await.unwrap(), "b");
    }
    assert_eq!(a.calls.load(Ordering::SeqCst), before);

    // Time's up: exactly one probe reaches "a"; it fails, so the ejection doubles (60 s).
    tokio::time::advance(Duration::from_secs(31)).await;
    let mut probe_failures = 0;
    for _ in 0..10 {
        if lb.clone().oneshot(0).await.is_err() {
            probe_failures += 1;
        }
    }
    assert_eq!(probe_failures, 1, "one probe, not a flood");
    assert_eq!(a.calls.load(Ordering::SeqCst), before + 1);
    let until = lb.endpoints()[0].ejected_until.unwrap();
    assert_eq!(until - tokio::time::Instant::now(), Duration::from_secs(60));

    // It recovers; after the second ejection a successful probe returns it to service.
    a.down.store(false, Ordering::SeqCst);
    tokio::time::advance(Duration::from_secs(61)).await;
    let mut to_a = 0;
    for _ in 0..10 {
        to_a += usize::from(lb.clone().oneshot(0).await.unwrap() == "a");
    }
    assert!(to_a >= 4, "{to_a}");
    assert_eq!(lb.endpoints()[0].status, EndpointStatus::Healthy);
}

#[tokio::test(start_paused = true)]
async fn max_fails_within_fail_timeout_ejects_and_the_cap_holds() {
    let eps: Vec<Flaky> = ["a", "b", "c", "d"].into_iter().map(Flaky::new).collect();
    let lb = Balancer::builder()
        .policy(RoundRobin::seeded(1))
        .outlier_detection(OutlierDetection {
            consecutive_failures: None,
            max_fails: Some(3),
            fail_timeout: Duration::from_secs(30),
            max_ejection_percent: 50,
            ..no_jitter()
        })
        .build()
        .unwrap();
    for e in &eps {
        lb.insert(e.name, e.clone(), 1.0).unwrap();
        e.down.store(true, Ordering::SeqCst);
    }
    for _ in 0..40 {
        let _ = lb.clone().oneshot(0).await;
    }
    let ejected = lb
        .endpoints()
        .iter()
        .filter(|e| e.status == EndpointStatus::Ejected)
        .count();
    assert_eq!(ejected, 2, "max_ejection_percent = 50 of 4 endpoints");

    // Failures spread wider than fail_timeout never reach max_fails.
    let slow = Flaky::new("slow");
    let lb2 = Balancer::builder()
        .outlier_detection(OutlierDetection {
            consecutive_failures: None,
            max_fails: Some(3),
            fail_timeout: Duration::from_secs(10),
            ..no_jitter()
        })
        .build()
        .unwrap();
    lb2.insert("slow", slow.clone(), 1.0).unwrap();
    slow.down.store(true, Ordering::SeqCst);
    for _ in 0..6 {
        let _ = lb2.clone().oneshot(0).await;
        tokio::time::advance(Duration::from_secs(6)).await;
    }
    assert_eq!(lb2.endpoints()[0].status, EndpointStatus::Healthy);
}

#[tokio::test(start_paused = true)]
async fn all_ejected_falls_back_to_panic_mode() {
    let a = Flaky::new("a");
    // The only endpoint of a set is ejected only at 100 %.
    let lb = Balancer::builder()
        .outlier_detection(OutlierDetection {
            max_ejection_percent: 100,
            ..no_jitter()
        })
        .build()
        .unwrap();
    lb.insert("a", a.clone(), 1.0).unwrap();
    a.down.store(true, Ordering::SeqCst);
    for _ in 0..5 {
        let _ = lb.clone().oneshot(0).await;
    }
    assert_eq!(lb.endpoints()[0].status, EndpointStatus::Ejected);
    a.down.store(false, Ordering::SeqCst);
    // The only endpoint is ejected: health is ignored rather than failing every request.
    assert_eq!(lb.clone().oneshot(0).await.unwrap(), "a");
}

#[tokio::test]
async fn drain_waits_for_in_flight_requests_then_removes() {
    let release = Arc::new(tokio::sync::Notify::new());
    let started = Arc::new(tokio::sync::Notify::new());
    let svc = {
        let release = Arc::clone(&release);
        let started = Arc::clone(&started);
        tower::service_fn(move |_: u32| {
            let release = Arc::clone(&release);
            let started = Arc::clone(&started);
            async move {
                started.notify_one();
                release.notified().await;
                Ok::<_, Infallible>("slow")
            }
        })
    };
    let lb = Balancer::builder().build().unwrap();
    lb.insert("slow", svc, 1.0).unwrap();
    let in_flight = tokio::spawn(lb.clone().oneshot(1));
    started.notified().await;

    let drained = lb.drain(&"slow").unwrap();
    let drained = tokio::spawn(drained);
    tokio::task::yield_now().await;
    assert_eq!(lb.endpoints()[0].status, EndpointStatus::Draining);
    // No new requests go to a draining endpoint.
    let err = lb.clone().oneshot(2).await.unwrap_err();
    assert_eq!(
        *err.downcast::<PickError>().unwrap(),
        PickError::NoEndpoints
    );
    assert!(!drained.is_finished());

    release.notify_one();
    assert_eq!(in_flight.await.unwrap().unwrap(), "slow");
    tokio::time::timeout(Duration::from_secs(5), drained)
        .await
        .unwrap()
        .unwrap();
    assert!(lb.endpoints().is_empty(), "drained endpoint removed");
}

#[tokio::test(start_paused = true)]
async fn overloaded_after_a_bounded_wait() {
    let release = Arc::new(tokio::sync::Notify::new());
    let svc = {
        let release = Arc::clone(&release);
        tower::service_fn(move |_: u32| {
            let release = Arc::clone(&release);
            async move {
                release.notified().await;
                Ok::<_, Infallible>("done")
            }
        })
    };
    let lb = Balancer::builder()
        .max_in_flight(Some(1))
        .queue_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    lb.insert("one", svc, 1.0).unwrap();
    let first = tokio::spawn(lb.clone().oneshot(1));
    tokio::task::yield_now().await;
    let started = tokio::time::Instant::now();
    let err = lb.clone().oneshot(2).await.unwrap_err();
    assert!(matches!(
        *err.downcast::<PickError>().unwrap(),
        PickError::Overloaded { .. }
    ));
    assert_eq!(started.elapsed(), Duration::from_millis(200));

    // A waiter gets the slot as soon as the first request ends.
    let second = tokio::spawn(lb.clone().oneshot(3));
    tokio::task::yield_now().await;
    release.notify_one();
    assert_eq!(first.await.unwrap().unwrap(), "done");
    tokio::task::yield_now().await;
    release.notify_one();
    assert_eq!(second.await.unwrap().unwrap(), "done");
}

#[tokio::test(start_paused = true)]
async fn slow_start_ramps_a_new_endpoint() {
    let lb = Balancer::builder()
        .policy(P2c::seeded(4))
        .slow_start(Some(SlowStart {
            window: Duration::from_secs(100),
            min_weight_percent: 10,
        }))
        .build()
        .unwrap();
    lb.insert("old", Flaky::new("old"), 1.0).unwrap();
    lb.insert("new", Flaky::new("new"), 1.0).unwrap();
    let share_of_new = |lb: Balancer<&'static str, Flaky, u32>| async move {
        let mut n = 0;
        for _ in 0..4000 {
            n += usize::from(lb.clone().oneshot(0).await.unwrap() == "new");
        }
        n as f64 / 4000.0
    };
    let at_start = share_of_new(lb.clone()).await;
    assert!(at_start < 0.15, "{at_start}");
    tokio::time::advance(Duration::from_secs(50)).await;
    let halfway = share_of_new(lb.clone()).await;
    assert!(halfway > 0.3 && halfway < 0.42, "{halfway}");
    tokio::time::advance(Duration::from_secs(60)).await;
    let after = share_of_new(lb.clone()).await;
    assert!((after - 0.5).abs() < 0.04, "{after}");
    assert_eq!(lb.endpoints()[1].status, EndpointStatus::Healthy);
}

struct RetryAll;

impl RetryPolicy<u32, &'static str, BoxError> for RetryAll {
    fn clone_request(&self, req: &u32) -> Option<u32> {
        Some(*req)
    }

    fn should_retry(&self, _: &u32, result: Result<&&'static str, &BoxError>) -> bool {
        result.is_err()
    }
}

#[tokio::test]
async fn retries_go_to_another_endpoint_within_max_attempts() {
    let eps: Vec<Flaky> = ["a", "b", "c"].into_iter().map(Flaky::new).collect();
    let lb = Balancer::builder()
        .policy(P2c::seeded(2))
        .outlier_detection(OutlierDetection::disabled())
        .retry(RetryConfig::default(), RetryAll)
        .build()
        .unwrap();
    for e in &eps {
        lb.insert(e.name, e.clone(), 1.0).unwrap();
    }
    eps[0].down.store(true, Ordering::SeqCst);
    eps[1].down.store(true, Ordering::SeqCst);
    for _ in 0..50 {
        assert_eq!(
            lb.clone().oneshot(0).await.unwrap(),
            "c",
            "retried until the healthy one"
        );
    }
    // All down: 3 attempts (the default), each on a different endpoint, then the last error.
    eps[2].down.store(true, Ordering::SeqCst);
    let calls_before: usize = eps.iter().map(|e| e.calls.load(Ordering::SeqCst)).sum();
    assert!(lb.clone().oneshot(0).await.is_err());
    let calls_after: usize = eps.iter().map(|e| e.calls.load(Ordering::SeqCst)).sum();
    assert_eq!(calls_after - calls_before, 3);
    for e in &eps {
        assert!(e.calls.load(Ordering::SeqCst) > 0);
    }
}

#[tokio::test]
async fn retry_budget_limits_retries() {
    let a = Flaky::new("a");
    a.down.store(true, Ordering::SeqCst);
    let lb = Balancer::builder()
        .outlier_detection(OutlierDetection::disabled())
        .retry(
            RetryConfig {
                max_attempts: 3,
                budget_percent: 10.0,
                min_retries_per_second: 1,
                budget_window: Duration::from_secs(10),
            },
            RetryAll,
        )
        .build()
        .unwrap();
    lb.insert("a", a.clone(), 1.0).unwrap();
    for _ in 0..100 {
        let _ = lb.clone().oneshot(0).await;
    }
    let calls = a.calls.load(Ordering::SeqCst);
    // 100 first attempts + at most 10 % of them + the floor (10 s × 1/s) as retries.
    assert!((100..=100 + 10 + 10 + 1).contains(&calls), "{calls}");
    let bad = Balancer::<&str, Flaky, u32>::builder()
        .retry(
            RetryConfig {
                max_attempts: 0,
                ..RetryConfig::default()
            },
            RetryAll,
        )
        .build();
    assert!(
        bad.unwrap_err()
            .to_string()
            .contains("retries.max_attempts")
    );
}

#[tokio::test]
async fn follows_a_discover_stream() {
    use tower::discover::Change;
    let (tx, rx) =
        tokio::sync::mpsc::unbounded_channel::<Result<Change<&'static str, Flaky>, Infallible>>();
    let stream =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
    let lb = Balancer::builder().build().unwrap();
    let follower = tokio::spawn(lb.discover(stream));
    tx.send(Ok(Change::Insert("a", Flaky::new("a")))).unwrap();
    tx.send(Ok(Change::Insert("b", Flaky::new("b")))).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(lb.endpoints().len(), 2);
    // An idle endpoint's drain is over at once: it leaves the set.
    tx.send(Ok(Change::Remove("a"))).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let keys: Vec<_> = lb.endpoints().into_iter().map(|e| e.key).collect();
    assert_eq!(keys, vec!["b"]);
    drop(tx);
    follower.await.unwrap().unwrap();
}

#[tokio::test]
async fn empty_balancer_fails_with_no_endpoints() {
    let lb = Balancer::<&str, Flaky, u32>::builder().build().unwrap();
    let err = lb.oneshot(0).await.unwrap_err();
    assert_eq!(
        *err.downcast::<PickError>().unwrap(),
        PickError::NoEndpoints
    );
}

/// An endpoint whose readiness is gated: not ready while `closed`, failing readiness while
/// `refuse` is set.
#[derive(Clone, Default)]
struct Gated {
    closed: Arc<AtomicBool>,
    refuse: Arc<AtomicBool>,
    waiting: Arc<std::sync::Mutex<Option<std::task::Waker>>>,
    calls: Arc<AtomicUsize>,
}

impl Gated {
    fn open(&self) {
        self.closed.store(false, Ordering::SeqCst);
        if let Some(w) = self.waiting.lock().unwrap().take() {
            w.wake();
        }
    }
}

impl Service<u32> for Gated {
    type Response = &'static str;
    type Error = BoxError;
    type Future = std::future::Ready<Result<&'static str, BoxError>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        if self.refuse.load(Ordering::SeqCst) {
            return std::task::Poll::Ready(Err("not taking requests".into()));
        }
        if self.closed.load(Ordering::SeqCst) {
            *self.waiting.lock().unwrap() = Some(cx.waker().clone());
            return std::task::Poll::Pending;
        }
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: u32) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Ok("gated"))
    }
}

#[tokio::test]
async fn an_endpoint_not_ready_yet_is_called_once_it_is() {
    let gated = Gated::default();
    gated.closed.store(true, Ordering::SeqCst);
    let lb = Balancer::builder().build().unwrap();
    lb.insert("g", gated.clone(), 1.0).unwrap();
    let pending = tokio::spawn(lb.clone().oneshot(7));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!pending.is_finished(), "waits for readiness");
    assert_eq!(
        gated.calls.load(Ordering::SeqCst),
        0,
        "not called before it is ready"
    );
    gated.open();
    assert_eq!(pending.await.unwrap().unwrap(), "gated");
    assert_eq!(gated.calls.load(Ordering::SeqCst), 1);
    // Ready at once: called at once.
    assert_eq!(lb.clone().oneshot(8).await.unwrap(), "gated");
    assert_eq!(gated.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_readiness_failure_counts_as_a_failed_attempt_and_is_retried() {
    let refusing = Gated::default();
    refusing.refuse.store(true, Ordering::SeqCst);
    let ok = Flaky::new("ok");
    let lb: Balancer<&str, tower::util::Either<Gated, Flaky>, u32> = Balancer::builder()
        .policy(RoundRobin::seeded(3))
        .outlier_detection(OutlierDetection::disabled())
        .retry(RetryConfig::default(), RetryAll)
        .build()
        .unwrap();
    lb.insert("refusing", tower::util::Either::Left(refusing.clone()), 1.0)
        .unwrap();
    lb.insert("ok", tower::util::Either::Right(ok.clone()), 1.0)
        .unwrap();
    for _ in 0..10 {
        assert_eq!(lb.clone().oneshot(0).await.unwrap(), "ok");
    }
    assert_eq!(refusing.calls.load(Ordering::SeqCst), 0, "never called");
    let failures: u64 = lb
        .endpoints()
        .iter()
        .filter(|e| e.key == "refusing")
        .map(|e| e.failures)
        .sum();
    assert!(
        failures >= 4,
        "round robin sent about half there first: {failures}"
    );
}
