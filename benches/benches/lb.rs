//! herd-lb-core against tower::balance::p2c: one request routed through the balancer Service to
//! an always-ready trivial endpoint, on one thread, for 8, 100 and 1000 endpoints.
//!
//! Run with: cargo bench -p herd-benches --bench lb

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::hint::black_box;
use std::time::Instant;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use herd_lb_core::{Balancer, ConsistentHash, P2c, PeakEwma, Policy, RequestKey, RoundRobin};
use tower::balance::p2c::Balance;
use tower::discover::ServiceList;
use tower::load::{CompleteOnResponse, PendingRequests};
use tower::{Service, ServiceExt};

/// The endpoint: always ready, answers at once (so the figures are the balancer's own cost).
#[derive(Clone, Copy, Debug)]
struct Trivial;

impl Service<u64> for Trivial {
    type Response = u64;
    type Error = Infallible;
    type Future = Ready<Result<u64, Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: u64) -> Self::Future {
        ready(Ok(req))
    }
}

fn herd(n: usize, policy: Policy, hashed: bool) -> Balancer<usize, Trivial, u64> {
    let mut builder = Balancer::<usize, Trivial, u64>::builder()
        .policy(policy)
        .seed(1);
    if hashed {
        builder = builder.key(|req: &u64| Some(RequestKey(*req)));
    }
    let balancer = builder.build().expect("valid settings");
    for i in 0..n {
        balancer.insert(i, Trivial, 1.0).expect("valid weight");
    }
    balancer
}

fn lb_pick(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("lb_pick");
    for n in [8usize, 100, 1000] {
        let services: Vec<_> = (0..n)
            .map(|_| PendingRequests::new(Trivial, CompleteOnResponse::default()))
            .collect();
        let mut tower_p2c = Balance::new(ServiceList::new(services));
        group.bench_function(BenchmarkId::new("tower_p2c", n), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let ready = tower_p2c.ready().await.expect("tower balance ready");
                        black_box(ready.call(black_box(1)).await.expect("tower call"));
                    }
                    start.elapsed()
                })
            })
        });

        let herd_cases: [(&str, Policy, bool); 4] = [
            ("herd_p2c", P2c::seeded(1).into(), false),
            ("herd_rr", RoundRobin::seeded(1).into(), false),
            ("herd_ewma", PeakEwma::seeded(1).into(), false),
            (
                "herd_hash",
                ConsistentHash::seeded(1.25, 1).expect("factor > 1").into(),
                true,
            ),
        ];
        for (name, policy, hashed) in herd_cases {
            let mut balancer = herd(n, policy, hashed);
            let mut key = 0u64;
            group.bench_function(BenchmarkId::new(name, n), |b| {
                b.iter_custom(|iters| {
                    rt.block_on(async {
                        let start = Instant::now();
                        for _ in 0..iters {
                            key = key.wrapping_add(0x9E37_79B9_7F4A_7C15);
                            let ready = balancer.ready().await.expect("herd balancer ready");
                            black_box(ready.call(black_box(key)).await.expect("herd call"));
                        }
                        start.elapsed()
                    })
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, lb_pick);
criterion_main!(benches);
