//! The admin dashboard's JSON (`/admin?data=series`), read over plain HTTP from a running
//! gateway in front of two real axum backends under load: each endpoint gets one point a second
//! with its requests/s and p99, a stopped backend's ejection shows as an event on the timeline,
//! the cursor returns only what is new, each instance's health report is polled into series,
//! and the page's assets are served from the binary.
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
    let stop = Arc::new(AtomicBool::new(false));
    let _load = Load(Arc::clone(&stop));
    for _ in 0..2 {
        let (c, url, stop) = (c.clone(), format!("{gw}/"), Arc::clone(&stop));
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(res) = c.get(url.parse().unwrap()).await {
                    let _ = res.into_body().collect().await;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
    }

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
    assert!(css.contains("#plots"));
    for bad in ["?asset=../Cargo.toml", "?data=everything"] {
        let (status, _, _) = get_text(&c, &format!("{gw}/admin{bad}")).await;
        assert_eq!(status, 404, "{bad}");
    }
    drop(a);
}
