//! herd-gateway's per-client rate limiter (`RateLimitLayer`: its own GCRA over a sharded, bounded
//! table) against what users would pick instead, tower_governor 0.8 (a tower layer over
//! governor 0.10's keyed GCRA in a `DashMap`, keyed by `PeerIpKeyExtractor`). One request through
//! each layer to an always-ready endpoint, called and polled in process on one thread. Both read
//! the client from axum's `ConnectInfo<SocketAddr>` extension and get the same quota (one request
//! per period, the same burst); requests are built before each timed chunk of 1,024, and requests
//! and responses are dropped after it.
//!
//! * `rate_limit_one_client`: one client within its quota: a burst of 10^9, which no run uses up,
//!   and 1 r/s, so the client's state stays ahead of the clock and both limiters keep it (each
//!   request finds and updates it).
//! * `rate_limit_over_quota`: one client past its burst (100 r/s, burst 200): every request is
//!   answered 429.
//! * `rate_limit_10k_clients`: 10,000 clients round-robin within the same unusable quota: 10,000
//!   states kept by both. `herd_rested`: one request per nanosecond (burst 200) instead, so every
//!   client is back at a full burst by its next request; herd forgets such states when a new
//!   client needs room, so here nearly every request is a new client to it (governor keeps the
//!   states, and its path does not change with the quota).
//! * `rate_limit_churn`: a new IPv4 client on every request (100 r/s, burst 200) after 100,000
//!   clients were tracked. herd keeps at most `max_tracked_clients` (100,000) states; governor's
//!   map grows by one state per client until `retain_recent` is called (tower_governor's README
//!   has users call it from a thread every 60 s, longer than a run, so the anchor runs without).
//!   `herd_evicting`: the same at 1 request a minute, so no state rests within the run and every
//!   new client evicts the oldest state of its shard.
//! * `rate_limit_ipv6_one_64`: a new address from one IPv6 /64 on every request (100 r/s, burst
//!   200). herd keys the /64 as one client, so after its burst it answers 429; governor keys each
//!   address and admits them all, one state each.
//!
//! * `rate_limit_shared`: one client within the unusable quota, one request after another on a
//!   current-thread tokio runtime (the driving is the same for each side, unlike the groups above,
//!   which poll once in place). `herd_local`: the local layer; `herd_shared`: the same layer with
//!   `shared` on, every decision one `EVALSHA` round trip to a Redis Cluster started by
//!   herd-testkit (3 masters on loopback); `redis_get_floor`: a bare `GET` on a cluster
//!   connection to the same nodes, the least any shared decision costs.
//!
//! herd's layer is built with `headers = false` in every group but `rate_limit_one_client`'s
//! `herd_headers` side: tower_governor adds no headers unless asked (`use_headers`), and the
//! figures stay comparable with earlier runs.
//!
//! After each side the bench prints its answers in the timed runs, the client states it keeps
//! (`tracked_clients()`, governor's `len()`) and the growth of the process's resident memory;
//! after governor's side, the time of one `retain_recent()` and the states left after it; after
//! `herd_shared`, the decisions taken locally because the cluster did not answer in time.
//!
//! Run with: `cargo bench -p herd-benches --bench rate_limit`

use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::ConnectInfo;
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, criterion_group, criterion_main};
use herd_gateway::rate_limit::{
    QuotaConfig, RateLimit, RateLimitConfig, RateLimitLayer, SharedLimitConfig, SharedStatus,
};
use herd_testkit::RedisCluster;
use http::{Request, Response, StatusCode};
use tower::{Layer, Service};
use tower_governor::GovernorLayer;
use tower_governor::governor::GovernorConfigBuilder;

/// Requests built, sent and dropped together; only the sending is timed.
const CHUNK: usize = 1024;

/// One request per `period`, `burst` at once from a rested client.
#[derive(Debug, Clone, Copy)]
struct Quota {
    period: Duration,
    burst: u32,
}

/// A burst no run uses up (10^9) and 1 r/s: each request moves its client's state a second ahead
/// of the clock, so every state stays ahead even when a client comes back a second later (under
/// callgrind) and both limiters keep it.
const UNUSABLE: Quota = Quota {
    period: Duration::from_secs(1),
    burst: 1_000_000_000,
};

/// One request per nanosecond: a client is back at a full burst by its next request.
const RESTING: Quota = Quota {
    period: Duration::from_nanos(1),
    burst: 200,
};

/// 100 r/s, burst 200.
const HUNDRED_PER_SECOND: Quota = Quota {
    period: Duration::from_millis(10),
    burst: 200,
};

/// 1 request a minute, burst 200: a state stays ahead of the clock for a minute.
const ONE_PER_MINUTE: Quota = Quota {
    period: Duration::from_secs(60),
    burst: 200,
};

/// herd's layer with `quota` for every path and the default bound of 100,000 client states,
/// without the `RateLimit` response fields.
fn herd_layer(quota: Quota) -> RateLimitLayer {
    herd_layer_with(quota, |_| {})
}

/// [`herd_layer`], then `configure`.
fn herd_layer_with(quota: Quota, configure: impl FnOnce(&mut RateLimitConfig)) -> RateLimitLayer {
    let mut config = RateLimitConfig {
        default: Some(QuotaConfig {
            requests: 1,
            per: quota.period,
            burst: Some(quota.burst),
            name: None,
        }),
        max_tracked_clients: 100_000,
        headers: false,
        ..RateLimitConfig::default()
    };
    configure(&mut config);
    RateLimitLayer::new(&config).expect("valid quota")
}

/// The endpoint behind both layers: always ready; it keeps each request it is given, so that
/// dropping them (an extensions map: three frees) happens outside the timed loop.
#[derive(Debug)]
struct Endpoint {
    kept: Vec<Request<()>>,
}

/// A clone keeps requests of its own: herd's layer clones the endpoint only for a shared
/// decision (which calls the clone afterwards), so those requests are dropped with it.
impl Clone for Endpoint {
    fn clone(&self) -> Self {
        Self::new()
    }
}

impl Endpoint {
    fn new() -> Self {
        Self {
            kept: Vec::with_capacity(CHUNK),
        }
    }
}

impl Service<Request<()>> for Endpoint {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Ready<Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<()>) -> Self::Future {
        self.kept.push(req);
        ready(Ok(Response::new(Body::empty())))
    }
}

/// `GET /` from `ip`, the way axum's `into_make_service_with_connect_info` hands it over.
fn request(ip: IpAddr) -> Request<()> {
    let mut req = Request::new(());
    req.extensions_mut()
        .insert(ConnectInfo(SocketAddr::new(ip, 40_000)));
    req
}

/// `poll_ready`, `call` and one poll of the response future. Not inlined, so that callgrind can
/// count it alone (`--toggle-collect='rate_limit::call*'`).
#[inline(never)]
fn call<S>(svc: &mut S, cx: &mut Context<'_>, req: Request<()>) -> Response<Body>
where
    S: Service<Request<()>, Response = Response<Body>, Error = Infallible>,
{
    let Poll::Ready(Ok(())) = svc.poll_ready(cx) else {
        unreachable!("the endpoint is always ready");
    };
    match pin!(svc.call(req)).poll(cx) {
        Poll::Ready(Ok(res)) => res,
        Poll::Ready(Err(never)) => match never {},
        Poll::Pending => unreachable!("both layers answer at once"),
    }
}

/// How one side answered.
#[derive(Debug, Default)]
struct Answers {
    ok: u64,
    limited: u64,
}

/// Sends `iters` requests, the `n`-th from `clients(n)` (`next` counts on across calls), and
/// returns the time spent sending them.
fn run<S>(
    svc: &mut S,
    endpoint: &impl Fn(&mut S) -> &mut Endpoint,
    iters: u64,
    clients: &dyn Fn(u64) -> IpAddr,
    next: &mut u64,
    answers: &mut Answers,
) -> Duration
where
    S: Service<Request<()>, Response = Response<Body>, Error = Infallible>,
{
    let mut cx = Context::from_waker(Waker::noop());
    let mut requests = Vec::with_capacity(CHUNK);
    let mut responses = Vec::with_capacity(CHUNK);
    let mut elapsed = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(CHUNK as u64);
        requests.extend((*next..*next + n).map(|i| request(clients(i))));
        *next += n;
        let start = Instant::now();
        for req in requests.drain(..) {
            responses.push(call(svc, &mut cx, req));
        }
        elapsed += start.elapsed();
        for res in responses.drain(..) {
            match res.status() {
                StatusCode::OK => answers.ok += 1,
                StatusCode::TOO_MANY_REQUESTS => answers.limited += 1,
                other => panic!("unexpected status {other}"),
            }
        }
        endpoint(svc).kept.clear();
        left -= n;
    }
    elapsed
}

/// Benchmarks `svc` under `id`, after `prefill` untimed requests; returns the answers in the
/// timed runs, or `None` when criterion's filter skipped `id`.
fn bench_side<S>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    id: &str,
    svc: &mut S,
    endpoint: impl Fn(&mut S) -> &mut Endpoint,
    clients: &dyn Fn(u64) -> IpAddr,
    prefill: u64,
) -> Option<Answers>
where
    S: Service<Request<()>, Response = Response<Body>, Error = Infallible>,
{
    let mut next = 0;
    let mut answers = None;
    group.bench_function(id, |b| {
        // Here rather than before: a filtered-out id costs nothing.
        let answers = answers.get_or_insert_with(|| {
            let mut prefilled = Answers::default();
            run(svc, &endpoint, prefill, clients, &mut next, &mut prefilled);
            Answers::default()
        });
        b.iter_custom(|iters| run(svc, &endpoint, iters, clients, &mut next, answers))
    });
    answers
}

/// The process's resident memory in KiB (0 where `/proc` has none).
fn resident_kib() -> i64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}

fn print_side(group: &str, id: &str, answers: Option<Answers>, tracked: usize, since_kib: i64) {
    let Some(answers) = answers else { return };
    println!(
        "{group}/{id}: timed requests {} ok, {} answered 429; {tracked} client states kept; \
         resident memory {:+.1} MiB over the side's run",
        answers.ok,
        answers.limited,
        (resident_kib() - since_kib) as f64 / 1024.0,
    );
}

/// Benchmarks herd under `id` in `group`.
fn bench_herd(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    id: &str,
    quota: Quota,
    clients: &dyn Fn(u64) -> IpAddr,
    prefill: u64,
) {
    bench_herd_with(group, name, id, herd_layer(quota), clients, prefill);
}

/// Benchmarks `layer` under `id` in `group`.
fn bench_herd_with(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    id: &str,
    layer: RateLimitLayer,
    clients: &dyn Fn(u64) -> IpAddr,
    prefill: u64,
) {
    let before = resident_kib();
    let mut herd = layer.layer(Endpoint::new());
    let answers = bench_side(group, id, &mut herd, RateLimit::get_mut, clients, prefill);
    print_side(name, id, answers, layer.tracked_clients(), before);
}

/// Benchmarks herd (`herd`) and tower_governor (`tower_governor`) side by side in `group`.
fn compare(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    quota: Quota,
    clients: &dyn Fn(u64) -> IpAddr,
    prefill: u64,
) {
    bench_herd(group, name, "herd", quota, clients, prefill);

    let before = resident_kib();
    let config = Arc::new(
        GovernorConfigBuilder::default()
            .period(quota.period)
            .burst_size(quota.burst)
            .finish()
            .expect("valid quota"),
    );
    let mut governor = GovernorLayer::<_, _, Body>::new(Arc::clone(&config)).layer(Endpoint::new());
    let answers = bench_side(
        group,
        "tower_governor",
        &mut governor,
        |g| &mut g.inner,
        clients,
        prefill,
    );
    let Some(answers) = answers else { return };
    let limiter = config.limiter();
    let tracked = limiter.len();
    print_side(name, "tower_governor", Some(answers), tracked, before);
    let start = Instant::now();
    limiter.retain_recent();
    println!(
        "{name}/tower_governor: retain_recent() took {:.1} ms, {tracked} -> {} states",
        start.elapsed().as_secs_f64() * 1e3,
        limiter.len(),
    );
}

fn ipv4(n: u64) -> IpAddr {
    // From 1.0.0.0 up: every request of a run gets an address of its own.
    IpAddr::V4(Ipv4Addr::from((1 << 24) + n as u32))
}

fn one_client(c: &mut Criterion) {
    let name = "rate_limit_one_client";
    let mut group = c.benchmark_group(name);
    compare(&mut group, name, UNUSABLE, &|_| ipv4(1), 0);
    // The default configuration: `RateLimit-Policy` and `RateLimit` on every response.
    let layer = herd_layer_with(UNUSABLE, |c| c.headers = true);
    bench_herd_with(&mut group, name, "herd_headers", layer, &|_| ipv4(1), 0);
    group.finish();
}

fn over_quota(c: &mut Criterion) {
    let name = "rate_limit_over_quota";
    let mut group = c.benchmark_group(name);
    // The burst is spent before the timed runs.
    let burst = u64::from(HUNDRED_PER_SECOND.burst);
    compare(&mut group, name, HUNDRED_PER_SECOND, &|_| ipv4(1), burst);
    group.finish();
}

fn ten_thousand_clients(c: &mut Criterion) {
    let name = "rate_limit_10k_clients";
    let mut group = c.benchmark_group(name);
    let clients = |n| ipv4(n % 10_000);
    compare(&mut group, name, UNUSABLE, &clients, 0);
    bench_herd(&mut group, name, "herd_rested", RESTING, &clients, 0);
    group.finish();
}

fn churn(c: &mut Criterion) {
    let name = "rate_limit_churn";
    let mut group = c.benchmark_group(name);
    // Requests 0..100,000 are the clients tracked before the timed runs; every later one is new.
    compare(&mut group, name, HUNDRED_PER_SECOND, &ipv4, 100_000);
    bench_herd(
        &mut group,
        name,
        "herd_evicting",
        ONE_PER_MINUTE,
        &ipv4,
        100_000,
    );
    group.finish();
}

fn ipv6_one_64(c: &mut Criterion) {
    let name = "rate_limit_ipv6_one_64";
    let mut group = c.benchmark_group(name);
    // 2001:db8:1:2::/64, the interface identifier counting up.
    let net = u128::from(Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 0, 0, 0, 0));
    compare(
        &mut group,
        name,
        HUNDRED_PER_SECOND,
        &|n| IpAddr::V6(Ipv6Addr::from(net | u128::from(n))),
        0,
    );
    group.finish();
}

/// Sends `iters` requests from one client, one after another on `rt`, and returns the time
/// spent sending them (requests built and responses dropped outside it).
fn run_on<S>(
    rt: &tokio::runtime::Runtime,
    svc: &mut S,
    endpoint: &impl Fn(&mut S) -> &mut Endpoint,
    iters: u64,
    answers: &mut Answers,
) -> Duration
where
    S: Service<Request<()>, Response = Response<Body>, Error = Infallible>,
{
    let mut requests = Vec::with_capacity(CHUNK);
    let mut responses = Vec::with_capacity(CHUNK);
    let mut elapsed = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(CHUNK as u64);
        requests.extend((0..n).map(|_| request(ipv4(1))));
        let start = Instant::now();
        rt.block_on(async {
            for req in requests.drain(..) {
                let Ok(()) = std::future::poll_fn(|cx| svc.poll_ready(cx)).await;
                let Ok(res) = svc.call(req).await;
                responses.push(res);
            }
        });
        elapsed += start.elapsed();
        for res in responses.drain(..) {
            match res.status() {
                StatusCode::OK => answers.ok += 1,
                StatusCode::TOO_MANY_REQUESTS => answers.limited += 1,
                other => panic!("unexpected status {other}"),
            }
        }
        endpoint(svc).kept.clear();
        left -= n;
    }
    elapsed
}

/// The cluster and a runtime, started by the first side that runs.
struct SharedBench {
    rt: tokio::runtime::Runtime,
    cluster: RedisCluster,
}

impl SharedBench {
    fn start() -> Self {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let cluster = rt
            .block_on(
                RedisCluster::builder()
                    .masters(3)
                    .replicas_per_master(0)
                    .start(),
            )
            .expect("redis cluster (redis-server and redis-cli on PATH)");
        Self { rt, cluster }
    }
}

fn shared(c: &mut Criterion) {
    let name = "rate_limit_shared";
    let mut group = c.benchmark_group(name);
    let mut bench: Option<SharedBench> = None;

    let before = resident_kib();
    let mut local = herd_layer(UNUSABLE).layer(Endpoint::new());
    let mut answers = None;
    group.bench_function("herd_local", |b| {
        let bench = bench.get_or_insert_with(SharedBench::start);
        let answers = answers.get_or_insert_with(Answers::default);
        b.iter_custom(|iters| run_on(&bench.rt, &mut local, &RateLimit::get_mut, iters, answers));
    });
    print_side(name, "herd_local", answers, 1, before);

    let before = resident_kib();
    let mut answers = None;
    let mut layer = None;
    group.bench_function("herd_shared", |b| {
        let bench = bench.get_or_insert_with(SharedBench::start);
        let layer = layer.get_or_insert_with(|| {
            let _runtime = bench.rt.enter();
            let layer = herd_layer_with(UNUSABLE, |c| {
                c.shared = Some(SharedLimitConfig {
                    timeout: Duration::from_millis(250),
                    key_prefix: format!("herd:bench:{}:", std::process::id()),
                    ..SharedLimitConfig::new(bench.cluster.urls())
                });
            });
            bench.rt.block_on(async {
                while layer.shared_status() != Some(SharedStatus::Shared) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            });
            layer
        });
        let mut svc = layer.layer(Endpoint::new());
        let answers = answers.get_or_insert_with(Answers::default);
        b.iter_custom(|iters| run_on(&bench.rt, &mut svc, &RateLimit::get_mut, iters, answers));
    });
    if let Some(layer) = &layer {
        print_side(
            name,
            "herd_shared",
            answers,
            layer.tracked_clients(),
            before,
        );
        println!(
            "{name}/herd_shared: {} decisions taken locally (the cluster did not answer in time)",
            layer.fallback_decisions()
        );
    }

    group.bench_function("redis_get_floor", |b| {
        let bench = bench.get_or_insert_with(SharedBench::start);
        let client =
            redis::cluster::ClusterClient::new(bench.cluster.urls()).expect("cluster urls");
        let mut conn = bench
            .rt
            .block_on(client.get_async_connection())
            .expect("connect");
        b.iter_custom(|iters| {
            let start = Instant::now();
            bench.rt.block_on(async {
                for _ in 0..iters {
                    let _: Option<String> = redis::cmd("GET")
                        .arg("herd:bench:floor")
                        .query_async(&mut conn)
                        .await
                        .expect("GET");
                }
            });
            start.elapsed()
        });
    });
    group.finish();
}

criterion_group!(
    benches,
    one_client,
    over_quota,
    ten_thousand_clients,
    churn,
    ipv6_one_64,
    shared
);
criterion_main!(benches);
