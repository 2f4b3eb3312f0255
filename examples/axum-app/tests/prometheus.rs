//! deploy/'s Prometheus files against the running demo: a real Prometheus (the machine's
//! `prometheus` binary, a temp storage dir, a free port, a 1 s scrape interval) scrapes the
//! demo's 3 instances and its gateway's `/metrics`, loads `deploy/prometheus/rules.yml`, and
//! must then hold a series for every herd metric the rules and the Grafana dashboard
//! (`deploy/grafana/herd-dashboard.json`) query. The names are parsed out of those files (the
//! rules' queries as Prometheus itself read them, from `/api/v1/rules`), never listed here.
//!
//! Some series exist only after an event. This test drives the demo to produce every one of
//! them rather than accepting a HELP line: metrics-exporter-prometheus prints HELP only beside a
//! sample, so a described but never recorded metric shows nothing at all. The events: a
//! read-your-writes read while the replica is paused (`herd_db_fallback_to_primary_total`),
//! logins past the per-IP limit (`herd_lb_rate_limited_total`), and, last, the whole Redis
//! Cluster killed (`herd_cache_errors_total`, `herd_cache_circuit_opened_total`,
//! `herd_session_store_errors_total`).
//!
//! Without `prometheus` on the PATH the test prints a loud SKIPPED notice and passes;
//! `HERD_REQUIRE_PROMETHEUS=1` (set by `.ci/run`) makes that a failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{client, client_ip, demo, replica_lock};
use serde_json::{Value, json};

fn deploy_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy")
        .join(path)
}

/// `prometheus` on the PATH, or the reason it is missing (a failure under
/// `HERD_REQUIRE_PROMETHEUS=1`, else a loud skip).
fn prometheus_binary() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("prometheus"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        let why = "`prometheus` is not on the PATH (Debian: apt-get install -y prometheus)";
        if std::env::var("HERD_REQUIRE_PROMETHEUS").is_ok_and(|v| v == "1") {
            panic!("HERD_REQUIRE_PROMETHEUS=1 but {why}");
        }
        eprintln!(
            "\n**********\nSKIPPED: deploy/'s Prometheus check: {why}\n\
             (set HERD_REQUIRE_PROMETHEUS=1 to make this a failure)\n**********\n"
        );
    }
    found
}

/// A Prometheus server this test started, killed (by its own child handle) on drop, also when
/// the test panics; its storage goes with the temp dir.
struct Prometheus {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Prometheus {
    /// Starts Prometheus scraping `instances` (job `herd-instance`) and `gateway` (job
    /// `herd-gateway`) every second, with deploy's rules, and waits until it is ready. A port
    /// taken between choosing and binding it is retried with another.
    async fn start(binary: &Path, instances: &[String], gateway: &str) -> Prometheus {
        let rules = deploy_file("prometheus/rules.yml").canonicalize().unwrap();
        let target = |url: &str| format!("\"{}\"", url.trim_start_matches("http://"));
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files: [\"{}\"]\n\
             scrape_configs:\n\
             \x20 - job_name: herd-instance\n    static_configs: [{{ targets: [{}] }}]\n\
             \x20 - job_name: herd-gateway\n    static_configs: [{{ targets: [{}] }}]\n",
            rules.display(),
            instances
                .iter()
                .map(|i| target(i.as_str()))
                .collect::<Vec<_>>()
                .join(", "),
            target(gateway),
        );
        let mut last_log = String::new();
        for _ in 0..3 {
            let dir = tempfile::tempdir().unwrap();
            let config_path = dir.path().join("prometheus.yml");
            std::fs::write(&config_path, &config).unwrap();
            let log_path = dir.path().join("prometheus.log");
            let port = free_port();
            let child = Command::new(binary)
                .arg(format!("--config.file={}", config_path.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log_path).unwrap())
                .spawn()
                .expect("start prometheus");
            let mut prometheus = Prometheus {
                child,
                url: format!("http://127.0.0.1:{port}"),
                _dir: dir,
            };
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = prometheus.child.try_wait() {
                    break;
                }
                let ready = reqwest::get(format!("{}/-/ready", prometheus.url)).await;
                if ready.is_ok_and(|r| r.status().is_success()) {
                    return prometheus;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            last_log = std::fs::read_to_string(&log_path).unwrap_or_default();
            drop(prometheus);
        }
        panic!("prometheus did not become ready in 3 tries; its last log:\n{last_log}");
    }

    /// GET `/api/v1/<path>` and its `data`, after checking `status` is `success`.
    async fn api(&self, path: &str, query: &[(&str, &str)]) -> Value {
        let url =
            reqwest::Url::parse_with_params(&format!("{}/api/v1/{path}", self.url), query).unwrap();
        let v: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
        assert_eq!(v["status"], "success", "{path} {query:?}: {v}");
        v["data"].clone()
    }

    /// How many series named `name` Prometheus holds now.
    async fn series(&self, name: &str) -> usize {
        let query = format!("{{__name__=\"{name}\"}}");
        self.api("query", &[("query", &query)]).await["result"]
            .as_array()
            .map_or(0, Vec::len)
    }
}

/// Every `herd_...` metric name in `text` (a PromQL expression).
fn herd_names(text: &str, into: &mut BTreeSet<String>) {
    let mut rest = text;
    while let Some(at) = rest.find("herd_") {
        // A name starts at a non-identifier character (not inside `xherd_` or a label value
        // like `"a_herd_b"`, which has an identifier character before it).
        let before = rest[..at].chars().next_back();
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            into.insert(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
}

/// The herd names every query of the dashboard uses: panel targets and template variables.
fn dashboard_names() -> BTreeSet<String> {
    let text = std::fs::read_to_string(deploy_file("grafana/herd-dashboard.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).unwrap();
    let mut names = BTreeSet::new();
    fn walk(v: &Value, names: &mut BTreeSet<String>) {
        match v {
            Value::Object(map) => {
                for (key, value) in map {
                    match (key.as_str(), value) {
                        ("expr" | "query" | "definition", Value::String(q)) => herd_names(q, names),
                        _ => walk(value, names),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|i| walk(i, names)),
            _ => {}
        }
    }
    walk(&dashboard, &mut names);
    names
}

/// The herd names the loaded rules query, as Prometheus parsed them, once every rule has been
/// evaluated without an error (a query that parses but fails at run time, e.g. a many-to-many
/// match, shows as `health: err`).
async fn rule_names(prometheus: &Prometheus) -> BTreeSet<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let data = prometheus.api("rules", &[]).await;
        let rules: Vec<Value> = data["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        assert!(!rules.is_empty(), "prometheus loaded no rules: {data}");
        let failing: Vec<String> = rules
            .iter()
            .filter(|r| r["health"] == "err")
            .map(|r| format!("{}: {}", r["name"], r["lastError"]))
            .collect();
        assert!(
            failing.is_empty(),
            "rules failing to evaluate: {failing:#?}"
        );
        if rules.iter().all(|r| r["health"] == "ok") {
            let mut names = BTreeSet::new();
            for rule in &rules {
                herd_names(rule["query"].as_str().unwrap(), &mut names);
            }
            return names;
        }
        assert!(
            Instant::now() < deadline,
            "rules not all evaluated after 20 s: {rules:#?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits until Prometheus has scraped every target successfully at least once.
async fn wait_for_scrapes(prometheus: &Prometheus, targets: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let up = prometheus.api("query", &[("query", "up == 1")]).await;
        let n = up["result"].as_array().map_or(0, Vec::len);
        if n == targets {
            return;
        }
        let all = prometheus.api("targets", &[]).await;
        assert!(
            Instant::now() < deadline,
            "{n} of {targets} targets up after 20 s: {all}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Ordinary traffic through the gateway: sign-up, notes, lists, stats, whoami from many
/// clients (requests, balancer samples, statements, cache lookups, session loads).
async fn drive_traffic(gateway: &str) {
    let c = client(&client_ip());
    let name = common::unique("prom");
    let r = c
        .post(format!("{gateway}/api/auth/signup"))
        .json(&json!({ "username": name, "password": "correct horse" }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "sign-up: {}", r.status());
    for i in 0..5 {
        let r = c
            .post(format!("{gateway}/api/notes"))
            .json(&json!({ "body": format!("note {i}") }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let r = c.get(format!("{gateway}/api/notes")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let r = c.get(format!("{gateway}/api/stats")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    // The balancer times 1 request in its EWMA sampling with p2c: enough of them that every
    // endpoint's latency histogram has samples.
    for _ in 0..60 {
        let r = client(&client_ip())
            .get(format!("{gateway}/api/whoami"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
}

/// A read-your-writes read while the replica is paused goes to the primary, counted in
/// `herd_db_fallback_to_primary_total{reason="read_your_writes"}`.
async fn drive_fallback(gateway: &str) {
    let d = demo().await;
    let c = client(&client_ip());
    let name = common::unique("prom-ryw");
    let r = c
        .post(format!("{gateway}/api/auth/signup"))
        .json(&json!({ "username": name, "password": "correct horse" }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let pg = d.topology.local_pg.as_ref().unwrap();
    let replica = pg.replica(0);
    let _paused = replica_lock().await;
    replica.pause_replay().await.unwrap();
    let r = c
        .post(format!("{gateway}/api/notes"))
        .json(&json!({ "body": "written while the replica is paused" }))
        .send()
        .await
        .unwrap();
    let created = r.status();
    let listed = c.get(format!("{gateway}/api/notes")).send().await.unwrap();
    replica.resume_replay().await.unwrap();
    assert_eq!(created, 201);
    assert_eq!(listed.status(), 200);
    pg.wait_for_replay().await.unwrap();
}

/// Logins past the per-IP limit (5 a minute) are answered 429.
async fn drive_rate_limit(gateway: &str) {
    let c = client(&client_ip());
    let mut limited = 0;
    for _ in 0..7 {
        let r = c
            .post(format!("{gateway}/api/auth/login"))
            .json(&json!({ "username": "nobody", "password": "whatever1" }))
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            limited += 1;
        }
    }
    assert!(limited > 0, "7 logins in a row were never limited");
}

/// Kills every Redis node, then calls the cache and the session store on one instance until
/// its /metrics shows cache errors, an opened circuit and session store errors. Last: the
/// demo's Redis is gone for the rest of this test binary.
async fn drive_redis_outage(instance: &str, gateway: &str) {
    let d = demo().await;
    // A session to load: made while Redis still answers.
    let c = client(&client_ip());
    let name = common::unique("prom-outage");
    let r = c
        .post(format!("{gateway}/api/auth/signup"))
        .json(&json!({ "username": name, "password": "correct horse" }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let anonymous = reqwest::Client::new();
    for node in d.topology.local_redis.as_ref().unwrap().nodes() {
        node.kill().unwrap();
    }
    let wanted = [
        "herd_cache_errors_total",
        "herd_cache_circuit_opened_total",
        "herd_session_store_errors_total",
    ];
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        // Each call waits out what looks like a failover (the cluster's node timeout x 1.5 + 3 s)
        // before failing: a batch at once makes the failures consecutive for the circuit.
        // The stats calls carry no cookie: with one, the read-your-writes middleware would load
        // the session first and answer 503 before the cache is asked.
        let calls = (0..8).map(|i| {
            let (c, url) = if i < 6 {
                (anonymous.clone(), format!("{instance}/api/stats"))
            } else {
                (c.clone(), format!("{instance}/api/whoami"))
            };
            async move { c.get(url).send().await.map(|r| r.status()) }
        });
        futures_util::future::join_all(calls).await;
        let text = reqwest::get(format!("{instance}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let missing: Vec<&str> = wanted
            .iter()
            .copied()
            .filter(|m| !text.lines().any(|l| l.starts_with(m)))
            .collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "40 s after killing Redis, {instance}/metrics still lacks {missing:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_herd_series_the_rules_and_dashboard_query_is_scraped_from_the_demo() {
    let started = Instant::now();
    let Some(binary) = prometheus_binary() else {
        return;
    };
    let d = demo().await;
    let gateway = d.gateway.server.url();
    let prometheus = Prometheus::start(&binary, &d.instance_urls, &gateway).await;
    wait_for_scrapes(&prometheus, d.instance_urls.len() + 1).await;

    let mut names = dashboard_names();
    let from_rules = rule_names(&prometheus).await;
    assert!(
        !names.is_empty() && !from_rules.is_empty(),
        "no herd names parsed: dashboard {names:?}, rules {from_rules:?}"
    );
    names.extend(from_rules);

    drive_traffic(&gateway).await;
    drive_fallback(&gateway).await;
    drive_rate_limit(&gateway).await;
    drive_redis_outage(&d.instance_urls[0], &gateway).await;

    // A few scrapes (1 s apart) bring in what the events recorded.
    let deadline = Instant::now() + Duration::from_secs(15);
    let missing = loop {
        let mut missing = Vec::new();
        for name in &names {
            if prometheus.series(name).await == 0 {
                missing.push(name.clone());
            }
        }
        if missing.is_empty() || Instant::now() >= deadline {
            break missing;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!(
        "prometheus check: {} herd series names from deploy/'s rules and dashboard, {} missing, {:.1} s",
        names.len(),
        missing.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        missing.is_empty(),
        "Prometheus holds no series for {missing:?} (queried by deploy/prometheus/rules.yml or \
         deploy/grafana/herd-dashboard.json); every name it checked: {names:?}"
    );
}

/// Offline half of the check, with or without Prometheus: every herd name the rules and the
/// dashboard mention is a metric-name constant in some crate's `src/metrics.rs` (histogram
/// series by their base name), so a renamed metric fails here before any alert goes quiet.
#[test]
fn every_name_in_the_rules_and_dashboard_is_a_herd_metric_constant() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../crates");
    let mut constants = BTreeSet::new();
    for entry in std::fs::read_dir(&crates).unwrap() {
        let file = entry.unwrap().path().join("src/metrics.rs");
        if let Ok(text) = std::fs::read_to_string(&file) {
            for line in text.lines() {
                let line = line.trim();
                if line.starts_with("pub const ")
                    && line.contains(": &str = \"herd_")
                    && let Some(name) = line.split('"').nth(1)
                {
                    constants.insert(name.to_owned());
                }
            }
        }
    }
    assert!(
        constants.len() > 20,
        "found only {constants:?} in {crates:?}"
    );
    let mut names = dashboard_names();
    let rules = std::fs::read_to_string(deploy_file("prometheus/rules.yml")).unwrap();
    for line in rules.lines() {
        let line = line.trim_start();
        // Comments name settings, not series.
        if !line.starts_with('#') {
            herd_names(line, &mut names);
        }
    }
    let unknown: Vec<&String> = names
        .iter()
        .filter(|n| {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| n.strip_suffix(s))
                .unwrap_or(n);
            !constants.contains(*n) && !constants.contains(base)
        })
        .collect();
    assert!(
        unknown.is_empty(),
        "deploy/ names metrics no crate defines: {unknown:?}"
    );
}
