//! What the instances report about themselves: each one's deep health (`application/health+json`,
//! herd-health's `/health`: database roles and replica lag, cache and Redis nodes, session
//! store), polled directly, not through the gateway. The latest report is kept whole; its numeric
//! measurements (replica lag, hit ratio, node latencies ...) and a few states (database roles,
//! the cluster's state) also as time series, so the page can show them over time.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use serde_json::Value;

/// Largest health body read (a report lists a few dozen measurements).
const MAX_BODY: usize = 1 << 20;
/// Most series kept per instance (a report that names ever new components must not grow
/// memory).
const MAX_SERIES: usize = 64;
/// Measurements whose text value is kept over time (the others' text changes with every write,
/// as WAL positions do, and says little on a plot).
const STATES: [&str; 3] = ["role", "clusterState", "circuit"];

/// What one poll of one instance gave.
#[derive(Debug)]
pub(super) enum Polled {
    /// The report (a 503 with a body is a report too: `fail` is still news).
    Report(Value),
    /// No report: why.
    Failed(String),
}

/// The client that polls the instances.
#[derive(Debug, Clone)]
pub(super) struct Poller {
    client: Client<HttpConnector, Empty<Bytes>>,
    timeout: Duration,
}

impl Poller {
    pub(super) fn new(timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(1)
            .build(connector);
        Self { client, timeout }
    }

    /// `GET http://{address}{path}`, read as JSON.
    pub(super) async fn poll(&self, address: &str, path: &str) -> Polled {
        let uri = format!("http://{address}{path}");
        match tokio::time::timeout(self.timeout, self.fetch(&uri)).await {
            Ok(Ok(report)) => Polled::Report(report),
            Ok(Err(e)) => Polled::Failed(format!("GET {uri}: {e}")),
            Err(_) => Polled::Failed(format!("GET {uri}: no answer in {:?}", self.timeout)),
        }
    }

    async fn fetch(&self, uri: &str) -> Result<Value, String> {
        let parsed: Uri = uri.parse().map_err(|e| format!("bad URI: {e}"))?;
        let req = Request::get(parsed)
            .header(http::header::ACCEPT, "application/health+json")
            .header(http::header::USER_AGENT, "herd-gateway-dashboard")
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let res = self.client.request(req).await.map_err(|e| e.to_string())?;
        let status = res.status();
        let body = Limited::new(res.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| format!("status {status}, body: {e}"))?
            .to_bytes();
        serde_json::from_slice::<Value>(&body)
            .ok()
            .filter(|v| v.get("status").is_some_and(Value::is_string))
            .ok_or_else(|| format!("status {status}, not a health+json report"))
    }
}

/// One numeric measurement over time.
#[derive(Debug, Clone, Serialize)]
struct NumberSeries {
    unit: Option<String>,
    t: VecDeque<u64>,
    v: VecDeque<f64>,
}

/// One text measurement (a role) over time.
#[derive(Debug, Clone, Serialize)]
struct TextSeries {
    t: VecDeque<u64>,
    v: VecDeque<String>,
}

#[derive(Debug, Clone)]
struct Instance {
    address: String,
    polled_at: Option<u64>,
    status: Option<String>,
    error: Option<String>,
    report: Option<Value>,
    numbers: BTreeMap<String, NumberSeries>,
    texts: BTreeMap<String, TextSeries>,
}

/// Every instance's latest report and series over the last `window` polls.
#[derive(Debug, Clone)]
pub(super) struct Instances {
    window: usize,
    list: Vec<Instance>,
}

/// A series' key: `check:measurement` and, when the entry names one, `@componentId`.
fn series_key(check: &str, entry: &Value) -> String {
    match entry.get("componentId").and_then(Value::as_str) {
        Some(id) => format!("{check}@{id}"),
        None => check.to_owned(),
    }
}

fn push_bounded<T>(queue: &mut VecDeque<T>, value: T, window: usize) {
    if queue.len() >= window {
        queue.pop_front();
    }
    queue.push_back(value);
}

impl Instances {
    pub(super) fn new(window: usize) -> Self {
        Self {
            window: window.max(1),
            list: Vec::new(),
        }
    }

    /// Keeps the instances at `addresses` (in that order), forgetting the others.
    pub(super) fn retain(&mut self, addresses: &[String]) {
        self.list.retain(|i| addresses.contains(&i.address));
        for address in addresses {
            if !self.list.iter().any(|i| &i.address == address) {
                self.list.push(Instance {
                    address: address.clone(),
                    polled_at: None,
                    status: None,
                    error: None,
                    report: None,
                    numbers: BTreeMap::new(),
                    texts: BTreeMap::new(),
                });
            }
        }
        self.list
            .sort_by_key(|i| addresses.iter().position(|a| a == &i.address));
    }

    /// Records what a poll of `address` at `t` gave.
    pub(super) fn record(&mut self, address: &str, t: u64, polled: Polled) {
        let window = self.window;
        let Some(instance) = self.list.iter_mut().find(|i| i.address == address) else {
            return;
        };
        instance.polled_at = Some(t);
        let report = match polled {
            Polled::Failed(error) => {
                instance.status = None;
                instance.error = Some(error);
                return;
            }
            Polled::Report(report) => report,
        };
        instance.error = None;
        instance.status = report
            .get("status")
            .and_then(Value::as_str)
            .map(str::to_owned);
        if let Some(checks) = report.get("checks").and_then(Value::as_object) {
            for (check, entries) in checks {
                let Some(entries) = entries.as_array() else {
                    continue;
                };
                let measurement = check.rsplit(':').next().unwrap_or(check);
                for entry in entries {
                    let key = series_key(check, entry);
                    match entry.get("observedValue") {
                        Some(Value::Number(n)) => {
                            let Some(v) = n.as_f64() else { continue };
                            let len = instance.numbers.len() + instance.texts.len();
                            if len >= MAX_SERIES && !instance.numbers.contains_key(&key) {
                                continue;
                            }
                            let series =
                                instance.numbers.entry(key).or_insert_with(|| NumberSeries {
                                    unit: entry
                                        .get("observedUnit")
                                        .and_then(Value::as_str)
                                        .map(str::to_owned),
                                    t: VecDeque::new(),
                                    v: VecDeque::new(),
                                });
                            push_bounded(&mut series.t, t, window);
                            push_bounded(&mut series.v, v, window);
                        }
                        Some(Value::String(s)) if STATES.contains(&measurement) => {
                            let len = instance.numbers.len() + instance.texts.len();
                            if len >= MAX_SERIES && !instance.texts.contains_key(&key) {
                                continue;
                            }
                            let series = instance.texts.entry(key).or_insert_with(|| TextSeries {
                                t: VecDeque::new(),
                                v: VecDeque::new(),
                            });
                            push_bounded(&mut series.t, t, window);
                            push_bounded(&mut series.v, s.clone(), window);
                        }
                        _ => {}
                    }
                }
            }
        }
        instance.report = Some(report);
    }

    /// The instances as the page reads them: series points after `since` only.
    pub(super) fn view(&self, since: u64, metrics_path: &str) -> Vec<Value> {
        self.list
            .iter()
            .map(|i| {
                let numbers: serde_json::Map<String, Value> = i
                    .numbers
                    .iter()
                    .map(|(key, s)| {
                        let start = s.t.partition_point(|t| *t <= since);
                        let value = serde_json::json!({
                            "unit": s.unit,
                            "t": s.t.range(start..).collect::<Vec<_>>(),
                            "v": s.v.range(start..).collect::<Vec<_>>(),
                        });
                        (key.clone(), value)
                    })
                    .collect();
                let texts: serde_json::Map<String, Value> = i
                    .texts
                    .iter()
                    .map(|(key, s)| {
                        let start = s.t.partition_point(|t| *t <= since);
                        let value = serde_json::json!({
                            "t": s.t.range(start..).collect::<Vec<_>>(),
                            "v": s.v.range(start..).collect::<Vec<_>>(),
                        });
                        (key.clone(), value)
                    })
                    .collect();
                serde_json::json!({
                    "address": i.address,
                    "metrics_url": format!("http://{}{metrics_path}", i.address),
                    "polled_at": i.polled_at,
                    "status": i.status,
                    "error": i.error,
                    "checks": i.report.as_ref().and_then(|r| r.get("checks")),
                    "numbers": numbers,
                    "texts": texts,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn report(role: &str, lag: f64) -> Value {
        serde_json::json!({
            "status": "pass",
            "checks": {
                "database:role": [
                    {"componentId": "primary", "observedValue": "primary", "status": "pass"},
                    {"componentId": "replica-1", "observedValue": role, "status": "pass"}
                ],
                "database:lagTime": [
                    {"componentId": "replica-1", "observedValue": lag, "observedUnit": "s",
                     "status": "pass"}
                ],
                "database:replayLsn": [
                    {"componentId": "replica-1", "observedValue": "0/3000060", "status": "pass"}
                ],
                "cache:hitRatio": [{"observedValue": 75.0, "observedUnit": "percent",
                                    "status": "pass"}]
            }
        })
    }

    #[test]
    fn numbers_and_roles_become_bounded_series() {
        let mut instances = Instances::new(3);
        instances.retain(&["a:1".into(), "b:2".into()]);
        for (t, lag) in [(1, 0.5), (2, 1.5), (3, 2.5), (4, 3.5)] {
            let role = if t < 4 { "replica" } else { "primary" };
            instances.record("a:1", t, Polled::Report(report(role, lag)));
        }
        instances.record(
            "b:2",
            4,
            Polled::Failed("GET http://b:2/health: refused".into()),
        );
        let view = instances.view(0, "/metrics");
        let a = &view[0];
        assert_eq!(a["status"], "pass");
        assert_eq!(a["metrics_url"], "http://a:1/metrics");
        let lag = &a["numbers"]["database:lagTime@replica-1"];
        assert_eq!(lag["v"], serde_json::json!([1.5, 2.5, 3.5]), "3 polls kept");
        assert_eq!(lag["unit"], "s");
        assert_eq!(a["numbers"]["cache:hitRatio"]["v"][2], 75.0);
        let roles = &a["texts"]["database:role@replica-1"];
        assert_eq!(
            roles["v"],
            serde_json::json!(["replica", "replica", "primary"])
        );
        assert!(a["texts"].get("database:replayLsn@replica-1").is_none());
        assert_eq!(view[1]["error"], "GET http://b:2/health: refused");
        let later = instances.view(3, "/metrics");
        assert_eq!(
            later[0]["numbers"]["database:lagTime@replica-1"]["t"],
            serde_json::json!([4])
        );

        instances.retain(&["b:2".into()]);
        assert_eq!(instances.view(0, "/metrics").len(), 1);
    }
}
