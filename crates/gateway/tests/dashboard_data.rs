//! The admin dashboard's JSON (`/admin?data=series`), read over plain HTTP from a running
//! gateway in front of two real axum backends under load: each endpoint gets one point a second
//! with its requests/s and p99, a stopped backend's ejection shows as an event on the timeline,
//! the cursor returns only what is new, each instance's health report is polled into series,
//! and the page's assets are served from the binary. With two upstream groups (a config file's
//! `[upstreams.NAME]`), every endpoint, event and instance names its group, and `/lb-health`
//! reports each group by name: 200 `pass`, then 200 `warn` once one group has no healthy
//! backend, then 503 `fail` once neither has.
#![cfg(feature = "axum")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use herd_gateway::GatewayConfig;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::net::TcpListener;

/// A real axum backend on 127.0.0.1 that answers `/` and reports its health as herd-health's
/// `/health` does; aborted (all its connections with it) on drop or `kill`.
struct Backend {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    async fn start(name: &'static str) -> Self {
        let health = serde_json::json!({
            "status": "pass",
            "checks": {
                "database:role": [
                    {"componentId": "primary", "observedValue": "primary", "status": "pass"}
                ],
                "database:lagTime": [
                    {"componentId": "replica-1", "observedValue": 0.25, "observedUnit": "s",
                     "status": "pass"}
                ]
            }
        })
        .to_string();
        let app = Router::new()
            .route("/", get(move || async move { name }))
            .fallback(move || async move { name })
            .route(
                "/health",
                get(move || async move {
                    (
                        [(http::header::CONTENT_TYPE, "application/health+json")],
                        health,
                    )
                }),
            );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, task }
    }

    fn kill(&self) {
        self.task.abort();
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Stops the load on drop (also when an assertion fails).
struct Load(Arc<AtomicBool>);

impl Load {
    /// Requests to each of `urls` in a loop, one client each, until dropped.
    fn start(c: &HttpClient, urls: &[String]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        for url in urls {
            let (c, url, stop) = (c.clone(), url.clone(), Arc::clone(&stop));
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(res) = c.get(url.parse().unwrap()).await {
                        let _ = res.into_body().collect().await;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            });
        }
        Self(stop)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

async fn get_text(c: &HttpClient, url: &str) -> (http::StatusCode, http::HeaderMap, String) {
    let res = c.get(url.parse().unwrap()).await.unwrap();
    let (parts, body) = res.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8(body.to_vec()).unwrap(),
    )
}

async fn series(c: &HttpClient, gw: &str, since: u64) -> Value {
    let (status, headers, body) =
        get_text(c, &format!("{gw}/admin?data=series&since={since}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers[http::header::CONTENT_TYPE], "application/json");
    serde_json::from_str(&body).unwrap()
}

fn endpoint<'a>(data: &'a Value, address: &str) -> Option<&'a Value> {
    data["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["address"] == address)
}

/// Polls the series until `done` holds (at most `secs` seconds); returns the last answer.
async fn wait_for(
    c: &HttpClient,
    gw: &str,
    secs: u64,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let data = series(c, gw, 0).await;
        if done(&data) {
            return data;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} within {secs} s; last answer: {data:#}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_series_show_rates_p99_and_the_ejection_of_a_stopped_backend() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let (a_addr, b_addr) = (a.addr.to_string(), b.addr.to_string());
    let config: GatewayConfig = toml::from_str(&format!(
        r#"
        workers = 1
        [upstream]
        endpoints = [{{ address = "{a_addr}" }}, {{ address = "{b_addr}" }}]
        connect_timeout = "500ms"
        [upstream.outlier_detection]
        consecutive_failures = 3
        base_ejection = "60s"
        "#
    ))
    .unwrap();
    let gateway = herd_gateway::spawn(config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let gw = gateway.server.url();
    let c = client();

    // Steady load from two clients until the test ends.
    let _load = Load::start(&c, &[format!("{gw}/"), format!("{gw}/")]);

    // Both endpoints get points with traffic and a p99; the instances' reports are read.
    let has_points = |data: &Value, address: &str| {
        endpoint(data, address).is_some_and(|e| {
            let busy = e["rps"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|v| v.as_f64() > Some(0.0));
            let p99 = e["p99_ms"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|v| v.is_number());
            busy.count() >= 3 && p99.count() >= 3
        })
    };
    let instance = |data: &Value, address: &str| -> Option<Value> {
        data["instances"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["address"] == address)
            .cloned()
    };
    let data = wait_for(&c, &gw, 30, "3 busy samples with a p99 per endpoint", |d| {
        has_points(d, &a_addr)
            && has_points(d, &b_addr)
            && instance(d, &a_addr).is_some_and(|i| i["status"] == "pass")
    })
    .await;
    for address in [&a_addr, &b_addr] {
        let e = endpoint(&data, address).unwrap();
        assert_eq!(e["status"], "healthy");
        assert_eq!(e["metrics_url"], format!("http://{address}/metrics"));
        let n = e["t"].as_array().unwrap().len();
        for column in ["rps", "p99_ms", "errors", "in_flight_series"] {
            assert_eq!(e[column].as_array().unwrap().len(), n, "{column}");
        }
        for p99 in e["p99_ms"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_f64)
        {
            assert!(p99 > 0.0 && p99 < 10_000.0, "p99 {p99} ms");
        }
    }
    assert_eq!(data["sample_ms"], 1000);
    let a_instance = instance(&data, &a_addr).unwrap();
    assert_eq!(
        a_instance["numbers"]["database:lagTime@replica-1"]["v"][0],
        0.25
    );
    assert_eq!(
        a_instance["texts"]["database:role@primary"]["v"][0],
        "primary"
    );
    assert_eq!(
        a_instance["metrics_url"],
        format!("http://{a_addr}/metrics")
    );

    // Only what is newer than the cursor comes back.
    let cursor = data["cursor"].as_u64().unwrap();
    let newer = series(&c, &gw, cursor).await;
    for e in newer["endpoints"].as_array().unwrap() {
        for t in e["t"].as_array().unwrap() {
            assert!(t.as_u64().unwrap() > cursor);
        }
    }
    assert!(newer["cursor"].as_u64().unwrap() >= cursor);

    // Stop b: its failures eject it, and the timeline says so; its instance report is gone.
    b.kill();
    let data = wait_for(&c, &gw, 30, "the ejection of the stopped backend", |d| {
        d["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["endpoint"] == b_addr.as_str() && e["to"] == "ejected")
            && instance(d, &b_addr).is_some_and(|i| i["error"].is_string())
    })
    .await;
    let ejection = data["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["endpoint"] == b_addr.as_str())
        .unwrap();
    assert_eq!(ejection["from"], "healthy");
    assert_eq!(endpoint(&data, &b_addr).unwrap()["status"], "ejected");
    let errors: f64 = endpoint(&data, &b_addr).unwrap()["errors"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_f64)
        .sum();
    assert!(errors > 0.0, "the failures show as errors/s");
    assert_eq!(endpoint(&data, &a_addr).unwrap()["status"], "healthy");

    // The page, its assets, and what is not there.
    let (status, headers, page) = get_text(&c, &format!("{gw}/admin")).await;
    assert_eq!(status, 200);
    assert!(page.contains(&a_addr) && page.contains(&b_addr), "{page}");
    assert!(page.contains("?asset=app.js"));
    assert!(
        headers[http::header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .contains("script-src 'self'")
    );
    let (status, headers, js) = get_text(&c, &format!("{gw}/admin?asset=app.js")).await;
    assert_eq!(status, 200);
    assert!(
        headers[http::header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    assert!(js.contains("data=series"));
    let (status, _, css) = get_text(&c, &format!("{gw}/admin?asset=app.css")).await;
    assert_eq!(status, 200);
    assert!(css.contains(".plots"));
    for bad in ["?asset=../Cargo.toml", "?data=everything"] {
        let (status, _, _) = get_text(&c, &format!("{gw}/admin{bad}")).await;
        assert_eq!(status, 404, "{bad}");
    }
    drop(a);
}

/// `/lb-health`: its status code and JSON.
async fn lb_health(c: &HttpClient, gw: &str) -> (http::StatusCode, Value) {
    let (status, _, body) = get_text(c, &format!("{gw}/lb-health")).await;
    (status, serde_json::from_str(&body).unwrap())
}

/// Polls `/lb-health` until it answers `want` with `status` (at most 30 s); returns the JSON.
async fn wait_for_health(c: &HttpClient, gw: &str, want: u16, status: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (code, page) = lb_health(c, gw).await;
        if code == want && page["status"] == status {
            return page;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/lb-health {want} {status} within 30 s; last answer: {code} {page:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `page["groups"]` as `(name, status, healthy, backends)`.
fn groups_of(page: &Value) -> Vec<(String, String, u64, u64)> {
    page["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["name"].as_str().unwrap().to_owned(),
                g["status"].as_str().unwrap().to_owned(),
                g["healthy"].as_u64().unwrap(),
                g["backends"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[cfg(feature = "config")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_upstream_group_has_its_series_and_its_health_by_name() {
    use herd_gateway::config::{FileConfig, Gateway};

    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let api = Backend::start("api").await;
    let (a_addr, b_addr, api_addr) = (a.addr.to_string(), b.addr.to_string(), api.addr.to_string());
    // Fast active checks, so that a stopped backend is out within a second.
    let check = "health_check = { path = \"/health\", interval = \"200ms\", timeout = \"500ms\", \
                 rise = 1, fall = 1 }";
    let text = |api_keepalive: u32| {
        format!(
            r#"
workers = 1
[[listen]]
address = "127.0.0.1:0"
[upstreams.web]
servers = [{{ address = "{a_addr}" }}, {{ address = "{b_addr}" }}]
{check}
[upstreams.api]
servers = [{{ address = "{api_addr}" }}]
keepalive = {api_keepalive}
{check}
[[routes]]
prefix = "/"
upstream = "web"
[[routes]]
prefix = "/api/"
upstream = "api"
"#
        )
    };
    let config = FileConfig::parse(&text(32)).unwrap();
    let mut gateway = Gateway::start(config).await.unwrap();
    let gw = format!("http://{}", gateway.addrs()[0]);
    let c = client();
    let _load = Load::start(&c, &[format!("{gw}/"), format!("{gw}/api/items")]);

    // Each group's endpoints get busy points with a p99, and name their group; so do the
    // instances' reports.
    let busy = |data: &Value, address: &str, group: &str| {
        endpoint(data, address).is_some_and(|e| {
            let rps = e["rps"].as_array().unwrap();
            let p99 = e["p99_ms"].as_array().unwrap();
            e["group"] == group
                && rps.iter().filter(|v| v.as_f64() > Some(0.0)).count() >= 3
                && p99.iter().filter(|v| v.is_number()).count() >= 3
        })
    };
    let reported = |data: &Value, address: &str, group: &str| {
        data["instances"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["address"] == address && i["group"] == group && i["status"] == "pass")
    };
    let data = wait_for(
        &c,
        &gw,
        30,
        "busy samples and reports in both groups",
        |d| {
            busy(d, &a_addr, "web")
                && busy(d, &b_addr, "web")
                && busy(d, &api_addr, "api")
                && reported(d, &a_addr, "web")
                && reported(d, &api_addr, "api")
        },
    )
    .await;
    let names: Vec<&str> = data["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["web", "api"], "the main route's group first");
    assert_eq!(data["groups"][0]["endpoints"], 2);
    assert_eq!(data["groups"][1]["endpoints"], 1);
    assert_eq!(data["endpoints"].as_array().unwrap().len(), 3);

    // Every group serves: 200 pass, each group by name, each backend with its group.
    let (status, page) = lb_health(&c, &gw).await;
    assert_eq!(status, 200, "{page:#}");
    assert_eq!(page["status"], "pass");
    assert_eq!(page["healthy"], 3);
    assert_eq!(
        groups_of(&page),
        [
            ("web".to_owned(), "pass".to_owned(), 2, 2),
            ("api".to_owned(), "pass".to_owned(), 1, 1)
        ]
    );
    let group_of = |page: &Value, address: &str| {
        page["backends"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["address"] == address)
            .map(|b| b["group"].clone())
    };
    assert_eq!(group_of(&page, &a_addr), Some("web".into()));
    assert_eq!(group_of(&page, &api_addr), Some("api".into()));

    // The page's table names both groups and lists every endpoint.
    let (status, _, html) = get_text(&c, &format!("{gw}/admin")).await;
    assert_eq!(status, 200);
    for needle in [
        "data-group=\"web\"",
        "data-group=\"api\"",
        &a_addr,
        &b_addr,
        &api_addr,
    ] {
        assert!(html.contains(needle), "{needle} in {html}");
    }

    // A reload that rebuilds only the api group: the web group's history goes on, the api
    // group's starts anew, and the page's cursor stays valid. (A new client: the old one's
    // connections keep the old configuration.)
    let cursor = data["cursor"].as_u64().unwrap();
    let first_t = |data: &Value, address: &str| endpoint(data, address).unwrap()["t"][0].clone();
    let web_since = first_t(&data, &a_addr);
    let report = gateway
        .reload(FileConfig::parse(&text(8)).unwrap())
        .await
        .unwrap();
    assert_eq!(
        (report.kept, report.rebuilt),
        (vec!["web".to_owned()], vec!["api".to_owned()])
    );
    let c = client();
    let data = wait_for(&c, &gw, 10, "the new pages' first sample", |d| {
        endpoint(d, &api_addr).is_some()
    })
    .await;
    assert_eq!(
        first_t(&data, &a_addr),
        web_since,
        "the web group's history is kept"
    );
    assert!(data["cursor"].as_u64().unwrap() >= cursor);
    let api_points = endpoint(&data, &api_addr).unwrap()["t"]
        .as_array()
        .unwrap()
        .clone();
    assert!(
        api_points.iter().all(|t| t.as_u64().unwrap() > cursor),
        "the rebuilt api group starts anew: {api_points:?} after {cursor}"
    );

    // The api group's only backend stops: the gateway still serves the web group, so it stays
    // in rotation (200) but says `warn`, and the api group `fail`. The state change is on the
    // api group's timeline.
    api.kill();
    let page = wait_for_health(&c, &gw, 200, "warn").await;
    assert_eq!(
        groups_of(&page),
        [
            ("web".to_owned(), "pass".to_owned(), 2, 2),
            ("api".to_owned(), "fail".to_owned(), 0, 1)
        ]
    );
    let data = wait_for(&c, &gw, 30, "the api backend's state change", |d| {
        d["events"].as_array().unwrap().iter().any(|e| {
            e["endpoint"] == api_addr.as_str() && e["from"] == "healthy" && e["group"] == "api"
        })
    })
    .await;
    assert_eq!(data["groups"][1]["healthy"], 0);
    assert_eq!(data["groups"][0]["healthy"], 2);
    assert!(
        data["events"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["endpoint"] == api_addr.as_str()),
        "the web group had no state change: {:#}",
        data["events"]
    );

    // Neither group can serve: 503 fail.
    a.kill();
    b.kill();
    let page = wait_for_health(&c, &gw, 503, "fail").await;
    assert_eq!(page["healthy"], 0);
    assert!(groups_of(&page).iter().all(|g| g.1 == "fail" && g.2 == 0));
    gateway.stop();
}
