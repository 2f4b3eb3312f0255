//! `Net`: hosts on network namespaces reach each other and the test process; partitions and
//! isolation drop packets silently (a connect times out, an established connection stalls) and
//! heal restores both; added latency; PostgreSQL and Redis on hosts; nothing is left behind (drop,
//! panic, a killed test process, the sweep of crashed runs).
//!
//! Needs root and `ip`: without them each test prints a loud notice and passes, unless
//! `HERD_REQUIRE_NETNS=1` (CI) makes that a failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, Write as _};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use herd_testkit::net::{self, Host, Net};
use herd_testkit::{Error, RedisCluster};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// A connect across a fault must still be pending after this long (a refused or unreachable
/// connect fails within milliseconds on one machine).
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Held around every `Net::new` of this binary (which sweeps) and by the sweep test while it
/// fakes a crashed run's leftovers, so that the sweep the test calls is the one that finds them.
static SWEEPS: Mutex<()> = Mutex::new(());

fn sweeps() -> MutexGuard<'static, ()> {
    SWEEPS.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The `Net`, or `None` with a loud notice when this machine cannot create one.
fn net_or_skip(test: &str, hosts: &[&str]) -> Option<Net> {
    let created = {
        let _sweeps = sweeps();
        Net::new(hosts)
    };
    match created {
        Ok(net) => Some(net),
        Err(e @ Error::Unsupported { .. }) => {
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

/// An echo server on `host`, run by the test's runtime (closed when the test ends).
async fn echo_on(host: &Host) -> SocketAddr {
    let ip = host.ip();
    let listener = host
        .run(move || {
            let l = std::net::TcpListener::bind((ip, 0)).unwrap();
            l.set_nonblocking(true).unwrap();
            l
        })
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let listener = TcpListener::from_std(listener).unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

fn socket_on(from: Option<&Host>) -> TcpSocket {
    match from {
        Some(h) => h.run(TcpSocket::new_v4).unwrap().unwrap(),
        None => TcpSocket::new_v4().unwrap(),
    }
}

/// Connects from `from` (a host, or the test process with `None`); panics unless that works
/// within 5 s.
async fn connect(from: Option<&Host>, to: SocketAddr) -> TcpStream {
    tokio::time::timeout(Duration::from_secs(5), socket_on(from).connect(to))
        .await
        .unwrap_or_else(|_| panic!("connect to {to} pending after 5 s"))
        .unwrap_or_else(|e| panic!("connect to {to}: {e}"))
}

/// Whether a connect from `from` to `to` is still pending after [`CONNECT_TIMEOUT`]; panics
/// when it fails in any other way (refused, unreachable: not silent).
async fn connect_times_out(from: Option<&Host>, to: SocketAddr) -> bool {
    match tokio::time::timeout(CONNECT_TIMEOUT, socket_on(from).connect(to)).await {
        Ok(Ok(_)) => false,
        Ok(Err(e)) => panic!("connect to {to} failed at once ({e}) instead of timing out"),
        Err(_) => true,
    }
}

async fn round_trip(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).await.unwrap();
    let mut buf = vec![0; msg.len()];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
        .await
        .expect("an echo within 5 s")
        .unwrap();
    assert_eq!(buf, msg);
}

fn ip_out(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn netns_exists(name: &str) -> bool {
    ip_out(&["netns", "list"])
        .lines()
        .any(|l| l.split_whitespace().next() == Some(name))
}

fn link_exists(name: &str) -> bool {
    Command::new("ip")
        .args(["link", "show", "dev", name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

/// Every name a `Net` owns: its namespaces and its root veth.
fn names_of(net: &Net) -> (Vec<String>, String) {
    let mut ns: Vec<String> = net.hosts().iter().map(|h| h.netns().to_owned()).collect();
    ns.push(net.bridge_netns().to_owned());
    (ns, net.test_link().to_owned())
}

async fn gone_within(ns: &[String], link: &str, limit: Duration) -> bool {
    let start = Instant::now();
    loop {
        if !link_exists(link) && ns.iter().all(|n| !netns_exists(n)) {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn hosts_reach_each_other_and_the_test_process_reaches_them() {
    let Some(net) = net_or_skip("hosts_reach_each_other", &["a", "b"]) else {
        return;
    };
    let (a, b) = (net.host("a").unwrap(), net.host("b").unwrap());
    assert_ne!(a.ip(), b.ip());
    let prefix = net.subnet().trim_end_matches("0/24").to_owned();
    for ip in [a.ip(), b.ip(), net.test_ip()] {
        assert!(ip.to_string().starts_with(&prefix), "{ip} in {prefix}0/24");
    }
    let (echo_a, echo_b) = (echo_on(a).await, echo_on(b).await);

    round_trip(&mut connect(Some(a), echo_b).await, b"a to b").await;
    round_trip(&mut connect(Some(b), echo_a).await, b"b to a").await;
    let mut from_test = connect(None, echo_a).await;
    round_trip(&mut from_test, b"test to a").await;
    assert_eq!(from_test.local_addr().unwrap().ip(), net.test_ip());
    round_trip(&mut connect(None, echo_b).await, b"test to b").await;
    assert!(net.host("c").is_err());

    // A server of the test process itself, on its address in the subnet, is reached by hosts.
    let listener = TcpListener::bind((net.test_ip(), 0)).await.unwrap();
    let at_test = listener.local_addr().unwrap();
    let accepted = tokio::spawn(async move { listener.accept().await.unwrap().1 });
    let _from_a = connect(Some(a), at_test).await;
    assert_eq!(accepted.await.unwrap().ip(), a.ip());
}

#[tokio::test]
async fn a_partition_drops_packets_silently_both_ways_and_heal_restores_them() {
    let Some(net) = net_or_skip("partition", &["a", "b", "c"]) else {
        return;
    };
    let (a, b, c) = (
        net.host("a").unwrap(),
        net.host("b").unwrap(),
        net.host("c").unwrap(),
    );
    let (echo_a, echo_b, echo_c) = (echo_on(a).await, echo_on(b).await, echo_on(c).await);
    let mut established = connect(Some(a), echo_b).await;
    round_trip(&mut established, b"before").await;

    net.partition("a", "b").unwrap();
    assert!(
        connect_times_out(Some(a), echo_b).await,
        "a new connect a -> b times out"
    );
    assert!(
        connect_times_out(Some(b), echo_a).await,
        "a new connect b -> a times out"
    );
    // The established connection: the write is accepted locally, then nothing: no reply, no
    // reset, no end of stream.
    established.write_all(b"during").await.unwrap();
    let mut buf = [0u8; 6];
    let read = tokio::time::timeout(CONNECT_TIMEOUT, established.read(&mut buf)).await;
    assert!(
        read.is_err(),
        "no reply, reset or EOF across a partition: {read:?}"
    );
    // Everyone else is unaffected.
    round_trip(&mut connect(Some(a), echo_c).await, b"a to c").await;
    round_trip(&mut connect(Some(c), echo_b).await, b"c to b").await;
    round_trip(&mut connect(None, echo_a).await, b"test to a").await;
    round_trip(&mut connect(None, echo_b).await, b"test to b").await;

    // Between a host and the test process only.
    net.partition_test("c").unwrap();
    assert!(connect_times_out(None, echo_c).await, "test -> c times out");
    round_trip(
        &mut connect(Some(a), echo_c).await,
        b"a to c, cut from test",
    )
    .await;

    net.heal().unwrap();
    round_trip(&mut connect(None, echo_c).await, b"test to c again").await;
    // The stalled write arrives with TCP's next retransmission, and its echo comes back.
    tokio::time::timeout(Duration::from_secs(10), established.read_exact(&mut buf))
        .await
        .expect("the stalled data is echoed within 10 s of heal")
        .unwrap();
    assert_eq!(&buf, b"during");
    round_trip(&mut established, b"after").await;
    round_trip(&mut connect(Some(a), echo_b).await, b"new a to b").await;
    round_trip(&mut connect(Some(b), echo_a).await, b"new b to a").await;
}

#[tokio::test]
async fn an_isolated_host_reaches_nobody_and_nobody_reaches_it_until_heal() {
    let Some(net) = net_or_skip("isolate", &["a", "b", "c"]) else {
        return;
    };
    let (a, b, c) = (
        net.host("a").unwrap(),
        net.host("b").unwrap(),
        net.host("c").unwrap(),
    );
    let (echo_a, echo_b, echo_c) = (echo_on(a).await, echo_on(b).await, echo_on(c).await);
    let mut established = connect(None, echo_a).await;
    round_trip(&mut established, b"before").await;

    net.isolate("a").unwrap();
    assert!(connect_times_out(None, echo_a).await, "test -> a times out");
    assert!(connect_times_out(Some(b), echo_a).await, "b -> a times out");
    assert!(connect_times_out(Some(a), echo_c).await, "a -> c times out");
    established.write_all(b"during").await.unwrap();
    let mut buf = [0u8; 6];
    let read = tokio::time::timeout(CONNECT_TIMEOUT, established.read(&mut buf)).await;
    assert!(
        read.is_err(),
        "no reply, reset or EOF from an isolated host: {read:?}"
    );
    round_trip(&mut connect(Some(b), echo_c).await, b"b to c").await;
    round_trip(&mut connect(None, echo_b).await, b"test to b").await;

    net.heal().unwrap();
    round_trip(&mut connect(None, echo_a).await, b"test to a").await;
    round_trip(&mut connect(Some(a), echo_c).await, b"a to c").await;
    tokio::time::timeout(Duration::from_secs(10), established.read_exact(&mut buf))
        .await
        .expect("the stalled data is echoed within 10 s of heal")
        .unwrap();
    assert_eq!(&buf, b"during");
}

#[tokio::test]
async fn added_latency_delays_each_direction() {
    let Some(net) = net_or_skip("latency", &["a"]) else {
        return;
    };
    let a = net.host("a").unwrap();
    // A server that notes when each byte arrives, then echoes it.
    let ip = a.ip();
    let listener = a
        .run(move || {
            let l = std::net::TcpListener::bind((ip, 0)).unwrap();
            l.set_nonblocking(true).unwrap();
            l
        })
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let listener = TcpListener::from_std(listener).unwrap();
    let (arrived_tx, mut arrived) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut byte = [0u8; 1];
        while s.read_exact(&mut byte).await.is_ok() {
            let _ = arrived_tx.send(Instant::now());
            if s.write_all(&byte).await.is_err() {
                return;
            }
        }
    });

    let each_way = Duration::from_millis(25);
    let latency = net.add_latency("a", port, each_way).unwrap();
    assert_eq!(latency.target(), SocketAddr::from((a.ip(), port)));
    assert_eq!(latency.each_way(), each_way);
    assert_eq!(latency.addr().ip(), a.ip());
    let mut s = connect(None, latency.addr()).await;
    s.set_nodelay(true).unwrap();
    for _ in 0..5 {
        let sent = Instant::now();
        s.write_all(b"x").await.unwrap();
        let mut byte = [0u8; 1];
        s.read_exact(&mut byte).await.unwrap();
        let back = Instant::now();
        let at_server = arrived.recv().await.unwrap();
        let there = at_server - sent;
        let round_trip = back - sent;
        assert!(there >= each_way, "to the server: {there:?}");
        assert!(back - at_server >= each_way, "back: {:?}", back - at_server);
        assert!(round_trip >= Duration::from_millis(50), "{round_trip:?}");
        assert!(
            round_trip < Duration::from_millis(50) + Duration::from_secs(1),
            "{round_trip:?}"
        );
    }
}

#[tokio::test]
async fn postgresql_and_redis_run_on_hosts_and_the_test_reaches_them() {
    let Some(net) = net_or_skip("servers on hosts", &["db1", "db2", "cache"]) else {
        return;
    };
    let pg = net.pg_cluster("db1", &["db2"]).await.unwrap();
    let (db1, db2) = (net.host("db1").unwrap(), net.host("db2").unwrap());
    assert_eq!(pg.primary().ip(), db1.ip());
    assert_eq!(pg.replica(0).ip(), db2.ip());
    let pool = sqlx::PgPool::connect(&pg.primary_url()).await.unwrap();
    let (server, client): (String, String) =
        sqlx::query_as("SELECT host(inet_server_addr()), host(inet_client_addr())")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        (server, client),
        (db1.ip().to_string(), net.test_ip().to_string())
    );
    // The replica streams from db1 across the bridge.
    let streaming: String = sqlx::query_scalar("SELECT host(client_addr) FROM pg_stat_replication")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(streaming, db2.ip().to_string());
    sqlx::raw_sql("CREATE TABLE t (v int); INSERT INTO t VALUES (7)")
        .execute(&pool)
        .await
        .unwrap();
    pg.wait_for_replay().await.unwrap();
    let replica = sqlx::PgPool::connect(&pg.replica_urls()[0]).await.unwrap();
    let v: i32 = sqlx::query_scalar("SELECT v FROM t")
        .fetch_one(&replica)
        .await
        .unwrap();
    assert_eq!(v, 7);

    let redis = net.redis_server("cache").await.unwrap();
    let cache = net.host("cache").unwrap();
    assert_eq!(redis.node().ip(), cache.ip());
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query_async(&mut conn)
        .await
        .unwrap();
    let got: String = redis::cmd("GET")
        .arg("k")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(got, "v");
    let info: String = redis::cmd("CLIENT")
        .arg("INFO")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        info.contains(&format!("laddr={}:{}", cache.ip(), redis.port())),
        "{info}"
    );
}

#[tokio::test]
async fn a_redis_cluster_spreads_over_hosts_and_fails_over_when_a_master_is_isolated() {
    let Some(net) = net_or_skip("redis cluster on hosts", &["r1", "r2", "r3"]) else {
        return;
    };
    let rc = net
        .redis_cluster(
            RedisCluster::builder().node_timeout(Duration::from_millis(1000)),
            &["r1", "r2", "r3"],
        )
        .await
        .unwrap();
    let ips: Vec<_> = net.hosts().iter().map(Host::ip).collect();
    for (i, node) in rc.nodes().iter().enumerate() {
        assert_eq!(node.ip(), ips[i % 3], "node {i} on host r{}", i % 3 + 1);
    }
    let client = redis::cluster::ClusterClient::new(rc.urls()).unwrap();
    let mut conn = client.get_async_connection().await.unwrap();
    for i in 0..30 {
        let _: () = redis::cmd("SET")
            .arg(format!("k{i}"))
            .arg(i)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    // A master cut off from everyone (not killed): the cluster bus across the bridge notices
    // and its replica, on another host, takes over.
    let master = rc.masters().await.unwrap()[0];
    let host = net
        .hosts()
        .iter()
        .find(|h| h.ip() == master.ip())
        .unwrap()
        .name()
        .to_owned();
    net.isolate(&host).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let masters = rc.masters().await.unwrap_or_default();
        if masters.len() == 3 && masters.iter().all(|m| m.ip() != master.ip()) {
            break;
        }
        assert!(Instant::now() < deadline, "no failover away from {host}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    net.heal().unwrap();
}

#[tokio::test]
async fn drop_removes_every_namespace_link_and_process_also_after_a_panic() {
    let Some(net) = net_or_skip("drop", &["a", "b"]) else {
        return;
    };
    let (ns, link) = names_of(&net);
    assert!(ns.iter().all(|n| netns_exists(n)) && link_exists(&link));
    let mut sleeper = net
        .host("a")
        .unwrap()
        .command("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    let watchdog = net.watchdog_pid().unwrap();
    net.add_latency("b", 1, Duration::from_millis(1)).unwrap();
    drop(net);
    assert!(!link_exists(&link), "{link} removed");
    for n in &ns {
        assert!(!netns_exists(n), "{n} removed");
    }
    // Nothing by the Net's prefixes either (the bridge's ports went with its namespace).
    let ns_prefix = link.replacen("herd", "herd-net-", 1);
    assert!(
        !ip_out(&["netns", "list"])
            .lines()
            .any(|l| l.starts_with(&format!("{ns_prefix}-"))
                || l.starts_with(&format!("{ns_prefix}."))),
        "a namespace named {ns_prefix}-* or {ns_prefix}.* is left"
    );
    assert!(!ip_out(&["-o", "link", "show"]).contains(&format!(": {link}")));
    let status = sleeper.wait().unwrap();
    assert!(!status.success(), "the process on host a was killed");
    assert!(!std::path::Path::new(&format!("/proc/{watchdog}")).exists());

    // A panic while the Net is alive: unwinding drops it.
    let names = std::thread::spawn(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        let panicked = std::thread::spawn(move || {
            let net = {
                let _sweeps = sweeps();
                Net::new(&["x"]).unwrap()
            };
            tx.send(names_of(&net)).unwrap();
            panic!("a test failing while its Net is up");
        })
        .join();
        assert!(panicked.is_err());
        rx.recv().unwrap()
    })
    .join()
    .unwrap();
    let (ns, link) = names;
    assert!(!link_exists(&link) && ns.iter().all(|n| !netns_exists(n)));
}

#[tokio::test]
async fn the_sweep_removes_what_dead_runs_left_and_nothing_of_live_ones() {
    let Some(net) = net_or_skip("sweep", &["a"]) else {
        return;
    };
    // A pid that no longer runs: a child that has exited and been reaped.
    let mut child = Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let sweeps = sweeps();
    let left_ns = format!("herd-net-{dead}-250-app");
    let left_link = format!("herd{dead}-250");
    let ip = |args: &[&str]| assert!(Command::new("ip").args(args).status().unwrap().success());
    ip(&["netns", "add", &left_ns]);
    ip(&[
        "link", "add", &left_link, "type", "veth", "peer", "name", "eth0", "netns", &left_ns,
    ]);

    let removed = net::sweep().unwrap();
    drop(sweeps);
    assert!(removed.contains(&left_ns), "{removed:?}");
    assert!(removed.contains(&left_link), "{removed:?}");
    assert!(!netns_exists(&left_ns) && !link_exists(&left_link));
    // The live Net is untouched and still works.
    let (ns, link) = names_of(&net);
    assert!(ns.iter().all(|n| netns_exists(n)) && link_exists(&link));
    let echo = echo_on(net.host("a").unwrap()).await;
    round_trip(&mut connect(None, echo).await, b"still up").await;
}

/// Run by `a_killed_test_process_leaves_nothing_behind` in a child process.
#[test]
#[ignore = "a helper: run in a child process by a_killed_test_process_leaves_nothing_behind"]
fn net_in_a_child_process() {
    if std::env::var("HERD_NET_CHILD").as_deref() != Ok("1") {
        return;
    }
    let net = Net::new(&["a", "b"]).unwrap();
    let (ns, link) = names_of(&net);
    println!("NAMES {link} {}", ns.join(" "));
    std::io::stdout().flush().unwrap();
    std::thread::sleep(Duration::from_secs(60));
}

#[tokio::test]
async fn a_killed_test_process_leaves_nothing_behind() {
    let Some(_probe) = net_or_skip("killed test process", &[]) else {
        return;
    };
    // Until the child's Net is up (its Net::new sweeps too).
    let sweeps = sweeps();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "net_in_a_child_process",
            "--ignored",
            "--nocapture",
        ])
        .env("HERD_NET_CHILD", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let line = std::io::BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("NAMES ").map(str::to_owned))
        .expect("the child reports its Net");
    let mut names = line.split_whitespace().map(str::to_owned);
    let link = names.next().unwrap();
    let ns: Vec<String> = names.collect();
    drop(sweeps);
    assert!(link_exists(&link) && ns.iter().all(|n| netns_exists(n)));
    child.kill().unwrap(); // SIGKILL: no destructor runs
    child.wait().unwrap();
    assert!(
        gone_within(&ns, &link, Duration::from_secs(10)).await,
        "the watchdog removed {link} and {ns:?}"
    );
}
