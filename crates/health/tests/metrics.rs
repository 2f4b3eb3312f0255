//! `/metrics` over real HTTP with the global Prometheus recorder: herd-health's own metrics,
//! the HTTP metrics layer keyed by matched route, and herd-lb-core's metrics.
//!
//! One test per binary: the global recorder can be installed once per process.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};

use axum::Router;
use axum::routing::get;
use common::{client, get as http_get, serve};
use herd_health::{
    CheckResult, Error, Health, HttpMetricsLayer, MetricsConfig, PrometheusMetrics, check,
};
use herd_lb_core::{EndpointSet, Outcome, P2c, PickContext};
use http::StatusCode;

/// One sample line: metric name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// Parses the Prometheus text exposition format strictly enough to reject malformed output:
/// `# HELP` / `# TYPE` comments, `name{label="value",...} value` samples, known types, every
/// sample belonging to a typed family. Returns the family types and the samples.
fn parse_prometheus(text: &str) -> (BTreeMap<String, String>, Vec<Sample>) {
    let mut types = BTreeMap::new();
    let mut samples = Vec::new();
    for line in text.lines().filter(|line| !line.trim().is_empty()) {
        if let Some(comment) = line.strip_prefix("# ") {
            let mut words = comment.splitn(3, ' ');
            match words.next() {
                Some("TYPE") => {
                    let name = words.next().expect("TYPE has a name");
                    let kind = words.next().expect("TYPE has a kind");
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                        "unknown type in {line}"
                    );
                    types.insert(name.to_owned(), kind.to_owned());
                }
                Some("HELP") => assert!(words.next().is_some(), "HELP without name: {line}"),
                _ => {}
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample has a value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            other => other.parse().unwrap_or_else(|e| panic!("{line}: {e}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series.to_owned(), BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect("labels end with }");
                let mut labels = BTreeMap::new();
                for pair in split_labels(body) {
                    let (key, quoted) = pair.split_once('=').expect("label has =");
                    let value = quoted
                        .strip_prefix('"')
                        .and_then(|v| v.strip_suffix('"'))
                        .unwrap_or_else(|| panic!("unquoted label value in {line}"));
                    labels.insert(key.to_owned(), value.to_owned());
                }
                (name.to_owned(), labels)
            }
        };
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name {name}"
        );
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .filter(|base| types.contains_key(*base))
            .unwrap_or(&name);
        assert!(types.contains_key(family), "sample {name} without TYPE");
        samples.push((name, labels, value));
    }
    (types, samples)
}

/// Splits `a="x",b="y,z"` on the commas outside quotes.
fn split_labels(body: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in body.char_indices() {
        match c {
            '\\' if quoted && !escaped => {
                escaped = true;
                continue;
            }
            '"' if !escaped => quoted = !quoted,
            ',' if !quoted => {
                parts.push(&body[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        escaped = false;
    }
    if start < body.len() {
        parts.push(&body[start..]);
    }
    parts
}

fn find<'a>(samples: &'a [Sample], name: &str, labels: &[(&str, &str)]) -> Vec<&'a Sample> {
    samples
        .iter()
        .filter(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .collect()
}

#[tokio::test]
async fn metrics_endpoint_renders_prometheus_text_with_herd_metrics() {
    let metrics = PrometheusMetrics::install(&MetricsConfig::default()).unwrap();
    // A second global recorder is refused with a typed error, not a panic.
    assert!(matches!(
        PrometheusMetrics::install(&MetricsConfig::default()),
        Err(Error::Prometheus(_))
    ));

    // herd-lb-core records herd_lb_* through the same facade.
    let replicas: EndpointSet<String> = EndpointSet::new();
    replicas
        .insert("10.0.0.1:5432".to_owned(), (), 1.0)
        .unwrap();
    for _ in 0..3 {
        let picked = replicas.pick(&P2c::new(), &PickContext::new()).unwrap();
        picked.guard.record(Outcome::Success);
    }

    let health = Health::builder()
        .started(true)
        .check(check::from_fn("postgres", || async { CheckResult::pass() }))
        .metrics(metrics)
        .build()
        .unwrap();
    let app = Router::new()
        .route("/users/{id}", get(|| async { "user" }))
        .merge(health.router())
        .layer(HttpMetricsLayer::new());
    let addr = serve(app).await;
    let client = client();
    for path in ["/users/1", "/users/2", "/users/3", "/health/ready"] {
        assert_eq!(http_get(&client, addr, path).await.status, StatusCode::OK);
    }
    assert_eq!(
        http_get(&client, addr, "/no/such/page").await.status,
        StatusCode::NOT_FOUND
    );

    let scrape = http_get(&client, addr, "/metrics").await;
    assert_eq!(scrape.status, StatusCode::OK);
    assert!(
        scrape.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let (types, samples) = parse_prometheus(&scrape.body);

    // Requests by matched route, never by raw path.
    let users = find(
        &samples,
        "herd_http_requests_total",
        &[
            ("method", "GET"),
            ("route", "/users/{id}"),
            ("status", "200"),
        ],
    );
    assert_eq!(users.len(), 1, "{}", scrape.body);
    assert_eq!(users[0].2, 3.0);
    assert!(
        samples.iter().all(|(_, labels, _)| labels
            .get("route")
            .is_none_or(|r| !r.starts_with("/users/1"))),
        "raw paths leaked into labels"
    );
    let unmatched = find(
        &samples,
        "herd_http_requests_total",
        &[("route", "unmatched"), ("status", "404")],
    );
    assert_eq!(unmatched.len(), 1);

    // Durations are true histograms with buckets, not summaries.
    assert_eq!(types["herd_http_request_duration_seconds"], "histogram");
    assert!(!types.values().any(|kind| kind == "summary"), "{types:?}");
    let buckets = find(
        &samples,
        "herd_http_request_duration_seconds_bucket",
        &[("route", "/users/{id}")],
    );
    let bounds: BTreeSet<&str> = buckets.iter().map(|(_, l, _)| l["le"].as_str()).collect();
    assert!(
        bounds.contains("0.001") && bounds.contains("+Inf"),
        "{bounds:?}"
    );
    let counts: Vec<f64> = buckets.iter().map(|(_, _, v)| *v).collect();
    assert!(
        counts.windows(2).all(|w| w[0] <= w[1]),
        "buckets not cumulative: {counts:?}"
    );
    assert_eq!(counts.last().copied(), Some(3.0));

    // herd-health's own check metrics and herd-lb-core's.
    assert_eq!(
        find(
            &samples,
            "herd_health_check_runs_total",
            &[("check", "postgres"), ("status", "pass")]
        )[0]
        .2,
        1.0
    );
    assert_eq!(types["herd_health_check_duration_seconds"], "histogram");
    let lb = find(
        &samples,
        "herd_lb_requests_total",
        &[("endpoint", "10.0.0.1:5432"), ("outcome", "success")],
    );
    assert_eq!(lb.len(), 1, "{}", scrape.body);
    assert_eq!(lb[0].2, 3.0);
    assert_eq!(types["herd_lb_latency_seconds"], "histogram");
}
