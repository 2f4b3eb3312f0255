//! Partition drills for the gateway (issue #22), on herd-testkit's network namespaces: three
//! real axum instances run on hosts `app1`, `app2`, `app3`; the gateway (the TOML-configured
//! [`Gateway`]) runs in the test process, which reaches the hosts over the testkit's bridge, and
//! eight keep-alive clients load it with GET loops.
//!
//! 1. One instance isolated under load (its packets dropped silently both ways, no RST): 0 failed
//!    GETs (connect and read timeouts retried on another instance, active health takes it
//!    out), and after heal it serves requests again within its health check's bound: the check
//!    in flight at heal (`timeout`), then `rise` passing rounds (`interval` + jitter each).
//! 2. 50 ms added each way on one instance's link (the gateway's endpoint for it is the
//!    testkit's latency relay): with `p2c` and with `peak_ewma` its share of requests falls
//!    below 15 % over 3 s of steady load; a `round_robin` control run (blind to latency) shows
//!    the measurement sees the slow instance (about a third). Shares are counted where the
//!    answers arrive (the clients), by the instance named in the body. With equal weights
//!    lb-core's two draws are two different servers, so the slow one is picked only where it is
//!    the better of its pair (drawn with replacement it kept a floor of 1/9, 11.1 %, whatever
//!    its latency: the drills measured 10 to 13 % then).
//!
//! Needs root and `ip`: without them each drill prints a loud notice and passes, unless
//! `HERD_REQUIRE_NETNS=1` (CI) makes that a failure. Figures are printed:
//! `cargo test -p herd-gateway --all-features --test partition -- --nocapture`.
#![cfg(feature = "config")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use axum::Router;
use axum::routing::{any, get};
use bytes::Bytes;
use herd_gateway::config::{FileConfig, Gateway};
use herd_testkit::Error as KitError;
use herd_testkit::net::{self, Host, Net};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::sync::oneshot;
use tokio::time::{Instant, sleep};

/// Concurrent GET loops.
const LOOPS: usize = 8;
/// Any GET taking this long counts as hung (and failed).
const HUNG: Duration = Duration::from_secs(15);
/// The upstream group's `connect_timeout`: a connect to an isolated instance gives up then.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(250);
/// The upstream group's `read_timeout`: a request stalled on an isolated instance gives up then.
const READ_TIMEOUT: Duration = Duration::from_secs(1);
/// Active health: time between rounds (plus up to 10 % jitter, lb-core's default).
const INTERVAL: Duration = Duration::from_millis(500);
/// Active health: a check slower than this fails.
const CHECK_TIMEOUT: Duration = Duration::from_millis(250);
/// Active health: passing rounds in a row that bring an instance back.
const RISE: u32 = 2;
/// Active health: failing rounds in a row that take an instance out.
const FALL: u32 = 2;
/// lb-core's default jitter of the active health interval.
const JITTER: f64 = 0.1;
/// Slack for scheduling on a loaded 2-core machine.
const SLACK: Duration = Duration::from_millis(500);
/// Latency added each way on the slow instance's link.
const EACH_WAY: Duration = Duration::from_millis(50);
/// Steady load before the shares are measured.
const WARM_UP: Duration = Duration::from_secs(1);
/// How long the shares are measured.
const MEASURE: Duration = Duration::from_secs(3);

/// The drills run one at a time: each has hosts of its own and timing matters.
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

/// A real axum instance on a host: answers its name, `/healthz` with `ok`, and counts the
/// requests it answered (not the health checks). Its listener is bound inside the host's
/// namespace; it runs on a thread and runtime of its own, stopped on drop.
struct Instance {
    name: &'static str,
    addr: SocketAddr,
    hits: Arc<AtomicU64>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Instance {
    fn start(host: &Host, name: &'static str) -> Self {
        let ip = host.ip();
        let listener = host
            .run(move || std::net::TcpListener::bind((ip, 0)))
            .unwrap()
            .unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&hits);
        let app = Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .fallback(any(move || {
                counter.fetch_add(1, Ordering::SeqCst);
                async move { name }
            }));
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("instance-{name}"))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                // Dropping the runtime at the end drops every connection's task too.
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                    tokio::select! {
                        _ = axum::serve(listener, app) => {}
                        _ = stopped => {}
                    }
                });
            })
            .unwrap();
        Self {
            name,
            addr,
            hits,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The gateway's file: `/` to group `app` over `servers` with `policy`, and `extra` lines in
/// the group's table.
fn gateway_config(servers: &[SocketAddr], policy: &str, extra: &str) -> FileConfig {
    let servers: Vec<String> = servers
        .iter()
        .map(|s| format!("{{ address = \"{s}\" }}"))
        .collect();
    let text = format!(
        r#"
workers = 2
[[listen]]
address = "127.0.0.1:0"
[upstreams.app]
servers = [{servers}]
policy = "{policy}"
connect_timeout = "{connect}ms"
read_timeout = "{read}ms"
{extra}
[[routes]]
prefix = "/"
upstream = "app"
"#,
        servers = servers.join(", "),
        connect = CONNECT_TIMEOUT.as_millis(),
        read = READ_TIMEOUT.as_millis(),
    );
    FileConfig::parse(&text).unwrap()
}

/// What the GET loops saw.
#[derive(Debug, Default)]
struct LoadReport {
    ok: u64,
    failures: Vec<String>,
    slowest: Duration,
}

/// Answers the clients got, by instance (`app1`, `app2`, `app3`): counted where the response
/// arrived, so a request an instance received but whose answer was lost (a stalled connection's
/// retransmission after heal) does not count.
type Answered = Arc<[AtomicU64; 3]>;

/// `LOOPS` keep-alive clients sending GET `/` to the gateway until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    answered: Answered,
    tasks: Vec<tokio::task::JoinHandle<LoadReport>>,
}

impl Load {
    fn start(gateway: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let answered: Answered = Arc::new(Default::default());
        let tasks = (0..LOOPS)
            .map(|_| {
                let stop = Arc::clone(&stop);
                let ok = Arc::clone(&ok);
                let answered = Arc::clone(&answered);
                tokio::spawn(get_loop(gateway, stop, ok, answered))
            })
            .collect();
        Self {
            stop,
            ok,
            answered,
            tasks,
        }
    }

    /// Answers the clients got from instance `i` (0 for `app1`) so far.
    fn answered(&self, i: usize) -> u64 {
        self.answered[i].load(Ordering::SeqCst)
    }

    /// [`Load::answered`] of every instance.
    fn answered_all(&self) -> [u64; 3] {
        [0, 1, 2].map(|i| self.answered(i))
    }

    /// Successful GETs so far.
    fn ok(&self) -> u64 {
        self.ok.load(Ordering::SeqCst)
    }

    async fn finish(mut self) -> LoadReport {
        self.stop.store(true, Ordering::SeqCst);
        let mut report = LoadReport::default();
        for task in self.tasks.drain(..) {
            let one = task.await.unwrap();
            report.ok += one.ok;
            report.failures.extend(one.failures);
            report.slowest = report.slowest.max(one.slowest);
        }
        report
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn get_loop(
    gateway: SocketAddr,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    answered: Answered,
) -> LoadReport {
    let mut report = LoadReport::default();
    let mut sender: Option<http1::SendRequest<Empty<Bytes>>> = None;
    while !stop.load(Ordering::SeqCst) {
        let started = Instant::now();
        let result = match tokio::time::timeout(HUNG, one_get(&mut sender, gateway)).await {
            Ok(result) => result,
            Err(_) => Err(format!("GET hung for {HUNG:?}")),
        };
        report.slowest = report.slowest.max(started.elapsed());
        match result {
            Ok(i) => {
                report.ok += 1;
                ok.fetch_add(1, Ordering::SeqCst);
                answered[i].fetch_add(1, Ordering::SeqCst);
            }
            Err(e) => {
                report.failures.push(e);
                sender = None;
            }
        }
    }
    report
}

/// One GET `/` on the loop's connection (opened first if there is none): for a 200, the index
/// of the instance that answered (its body names it).
async fn one_get(
    sender: &mut Option<http1::SendRequest<Empty<Bytes>>>,
    gateway: SocketAddr,
) -> Result<usize, String> {
    if sender.as_ref().is_none_or(|s| s.is_closed()) {
        let stream = tokio::net::TcpStream::connect(gateway)
            .await
            .map_err(|e| format!("connect to the gateway: {e}"))?;
        let (s, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(connection);
        *sender = Some(s);
    }
    let s = sender.as_mut().ok_or("no connection")?;
    s.ready().await.map_err(|e| format!("connection: {e}"))?;
    let req = http::Request::get("/")
        .header("host", "drill.local")
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let res = s.send_request(req).await.map_err(|e| format!("GET: {e}"))?;
    let status = res.status();
    let body = res
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    if status != http::StatusCode::OK {
        return Err(format!(
            "status {status}: {}",
            String::from_utf8_lossy(&body)
        ));
    }
    match &body[..] {
        b"app1" => Ok(0),
        b"app2" => Ok(1),
        b"app3" => Ok(2),
        other => Err(format!("200 from no instance: {other:?}")),
    }
}

/// The gateway's `/lb-health` entry for backend `addr`.
async fn backend(gateway: SocketAddr, addr: SocketAddr) -> serde_json::Value {
    let stream = tokio::net::TcpStream::connect(gateway).await.unwrap();
    let (mut sender, connection) = http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(connection);
    let req = http::Request::get("/lb-health")
        .header("host", "drill.local")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = sender.send_request(req).await.unwrap();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let page: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let address = addr.to_string();
    page["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["address"] == address.as_str())
        .cloned()
        .unwrap_or_else(|| panic!("{address} is not in /lb-health: {page}"))
}

/// Polls every 10 ms until `cond` holds; the time it took, or a panic naming `what` past `limit`.
async fn wait_until<F, Fut>(what: &str, limit: Duration, mut cond: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if cond().await {
            return started.elapsed();
        }
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_isolated_under_load_fails_no_get_and_returns_within_its_check_bound() {
    let _one_at_a_time = DRILLS.lock().await;
    let Some(net) = net_or_skip("gateway instance isolated", &["app1", "app2", "app3"]) else {
        return;
    };
    let instances: Vec<Instance> = ["app1", "app2", "app3"]
        .into_iter()
        .map(|name| Instance::start(net.host(name).unwrap(), name))
        .collect();
    let addrs: Vec<SocketAddr> = instances.iter().map(|i| i.addr).collect();
    let extra = format!(
        r#"fail_timeout = "1s"
[upstreams.app.health_check]
path = "/healthz"
interval = "{interval}ms"
timeout = "{timeout}ms"
rise = {RISE}
fall = {FALL}"#,
        interval = INTERVAL.as_millis(),
        timeout = CHECK_TIMEOUT.as_millis(),
    );
    let mut gateway = Gateway::start(gateway_config(&addrs, "p2c", &extra))
        .await
        .unwrap();
    let gw = gateway.addrs()[0];
    let isolated = &instances[0];

    // Warm up: every instance serves, and the retry budget fills with successful requests.
    let load = Load::start(gw);
    wait_until("every instance serves", Duration::from_secs(10), || async {
        load.answered_all().iter().all(|&n| n >= 50) && load.ok() >= 1000
    })
    .await;

    let ok_before = load.ok();
    let isolated_at = Instant::now();
    net.isolate(isolated.name).unwrap();
    let isolate_took = isolated_at.elapsed();
    let marked_down = wait_until(
        "the gateway marks the isolated instance down",
        Duration::from_secs(10),
        || async { backend(gw, isolated.addr).await["healthy"] == false },
    )
    .await;
    // Keep it isolated until active health alone holds it out: no passive ejection (1 s,
    // doubling while it lasts) outlives the heal, so the bound below is the active check's.
    wait_until(
        "the isolated instance is out by active health only",
        Duration::from_secs(20),
        || async {
            let b = backend(gw, isolated.addr).await;
            b["status"] == "Unhealthy" && b["ejected_for_ms"].is_null()
        },
    )
    .await;
    let others_during = load.answered(1) + load.answered(2);
    wait_until(
        "the other instances keep serving",
        Duration::from_secs(10),
        || async { load.answered(1) + load.answered(2) >= others_during + 500 },
    )
    .await;
    let isolated_for = isolated_at.elapsed();
    let ok_isolated = load.ok() - ok_before;

    let answered_at_heal = load.answered(0);
    let received_at_heal = isolated.hits();
    let healed_at = Instant::now();
    net.heal().unwrap();
    let bound = CHECK_TIMEOUT + INTERVAL.mul_f64(1.0 + JITTER) * RISE + SLACK;
    wait_until(
        "the healed instance serves again",
        Duration::from_secs(30),
        || async { load.answered(0) > answered_at_heal },
    )
    .await;
    // From the start of heal (its `ip` runs included) to the first answer from it that reached
    // a client.
    let back = healed_at.elapsed();
    // What it received by then includes requests the gateway gave up on while it was isolated
    // (retransmitted by the kernel once healed): they are not "used again".
    let received_by_then = isolated.hits() - received_at_heal;
    // A little steady load after the return, then the totals.
    let ok_after_heal = load.ok();
    wait_until(
        "load goes on after heal",
        Duration::from_secs(10),
        || async { load.ok() >= ok_after_heal + 500 },
    )
    .await;
    let answered = load.answered_all();
    let report = load.finish().await;
    gateway.stop();

    eprintln!(
        "drill: instance isolated under load ({LOOPS} GET loops, p2c, connect_timeout \
         {CONNECT_TIMEOUT:?}, read_timeout {READ_TIMEOUT:?}, health every {INTERVAL:?} \
         timeout {CHECK_TIMEOUT:?} rise {RISE} fall {FALL}): {} GETs ok, {} failed, slowest \
         {:?}; marked down {marked_down:?} after isolate; {ok_isolated} GETs ok during {:?} \
         of isolation (isolate() itself took {isolate_took:?}); answered a client again {back:?} after heal (bound {bound:?}; it had \
         received {received_by_then} requests since heal by then, retransmissions of requests \
         the gateway had given up on included); answers by instance {answered:?}, requests \
         received by instance {:?}",
        report.ok,
        report.failures.len(),
        report.slowest,
        isolated_for,
        instances
            .iter()
            .map(|i| (i.name, i.hits()))
            .collect::<Vec<_>>(),
    );
    assert!(
        report.failures.is_empty(),
        "{} failed GETs, first: {:?}",
        report.failures.len(),
        report.failures.first()
    );
    assert!(
        report.slowest < READ_TIMEOUT * 2 + CONNECT_TIMEOUT + SLACK,
        "a GET took {:?}: longer than a stalled try plus a retry",
        report.slowest
    );
    assert!(
        back <= bound,
        "the healed instance served again {back:?} after heal, past {bound:?}"
    );
}

/// The slow instance's share of the answers the clients got in `MEASURE` of steady load through
/// a gateway with `policy` (after `WARM_UP`), the three shares, and the answers counted.
async fn shares(endpoints: &[SocketAddr], policy: &str, slow: usize) -> (f64, Vec<f64>, u64) {
    let mut gateway = Gateway::start(gateway_config(endpoints, policy, ""))
        .await
        .unwrap();
    let load = Load::start(gateway.addrs()[0]);
    sleep(WARM_UP).await;
    let before = load.answered_all();
    sleep(MEASURE).await;
    let after = load.answered_all();
    let report = load.finish().await;
    gateway.stop();
    assert!(
        report.failures.is_empty(),
        "{policy}: {} failed GETs, first: {:?}",
        report.failures.len(),
        report.failures.first()
    );
    let counts: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    let total: u64 = counts.iter().sum();
    assert!(
        total >= 100,
        "{policy}: only {total} requests in {MEASURE:?}"
    );
    let shares: Vec<f64> = counts.iter().map(|&c| c as f64 / total as f64).collect();
    (shares[slow], shares, total)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2c_and_peak_ewma_move_traffic_away_from_an_instance_with_added_latency() {
    let _one_at_a_time = DRILLS.lock().await;
    let Some(net) = net_or_skip("gateway added latency", &["app1", "app2", "app3"]) else {
        return;
    };
    let instances: Vec<Instance> = ["app1", "app2", "app3"]
        .into_iter()
        .map(|name| Instance::start(net.host(name).unwrap(), name))
        .collect();
    let slow = 2;
    let relay = net
        .add_latency("app3", instances[slow].addr.port(), EACH_WAY)
        .unwrap();
    // The gateway reaches app3 only through the relay: 2 x 50 ms more per round trip.
    let mut endpoints: Vec<SocketAddr> = instances.iter().map(|i| i.addr).collect();
    endpoints[slow] = relay.addr();

    let mut figures = Vec::new();
    for policy in ["round_robin", "p2c", "peak_ewma"] {
        let (share, all, total) = shares(&endpoints, policy, slow).await;
        eprintln!(
            "drill: {EACH_WAY:?} each way on app3's link, {policy}: app3's share {:.1} % of \
             {total} requests in {MEASURE:?} (shares app1/app2/app3: {:.1} / {:.1} / {:.1} %)",
            share * 100.0,
            all[0] * 100.0,
            all[1] * 100.0,
            all[2] * 100.0,
        );
        figures.push((policy, share));
    }
    for (policy, share) in figures {
        if policy == "round_robin" {
            // The control: a policy blind to latency keeps sending it a third, so the
            // measurement does see the slow instance.
            assert!(
                share > 0.25,
                "round_robin gave the slow instance only {share:.3}: the measurement is off"
            );
        } else {
            assert!(
                share < 0.15,
                "{policy} still sends {:.1} % to the instance with {EACH_WAY:?} each way",
                share * 100.0
            );
        }
    }
}
