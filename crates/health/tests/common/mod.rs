//! Helpers shared by the integration tests: a real HTTP client and the draft's field rules.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

pub type HttpClient = Client<HttpConnector, Empty<Bytes>>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

pub async fn request(
    client: &HttpClient,
    method: http::Method,
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
) -> Answer {
    let mut builder = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    if let Some(token) = token {
        builder = builder.header("authorization", format!("Bearer {token}"));
    }
    let response = client
        .request(builder.body(Empty::new()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        headers,
        body: String::from_utf8(body.to_vec()).unwrap(),
    }
}

pub async fn get(client: &HttpClient, addr: SocketAddr, path: &str) -> Answer {
    request(client, http::Method::GET, addr, path, None).await
}

/// Serves an axum router on 127.0.0.1, port 0.
pub async fn serve(router: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

const STATUSES: [&str; 3] = ["pass", "warn", "fail"];
const TOP_LEVEL: [&str; 9] = [
    "status",
    "version",
    "releaseId",
    "notes",
    "output",
    "checks",
    "links",
    "serviceId",
    "description",
];
const CHECK_FIELDS: [&str; 9] = [
    "componentId",
    "componentType",
    "observedValue",
    "observedUnit",
    "status",
    "affectedEndpoints",
    "time",
    "output",
    "links",
];

/// Asserts that `body` follows the field rules of draft-inadarei-api-health-check: a required
/// `status` of pass/warn/fail, only the draft's top-level and per-check fields with their
/// types, `checks` keyed `component` or `component:measurement` with arrays of objects, times
/// in RFC 3339, `observedUnit` only beside an `observedValue`.
pub fn assert_draft_body(body: &Value) {
    let top = body.as_object().expect("body is a JSON object");
    let status = top["status"].as_str().expect("status is a string");
    assert!(STATUSES.contains(&status), "status {status}");
    for (field, value) in top {
        assert!(
            TOP_LEVEL.contains(&field.as_str()),
            "unknown top-level field {field}"
        );
        match field.as_str() {
            "version" | "releaseId" | "output" | "serviceId" | "description" => {
                assert!(value.is_string(), "{field} must be a string")
            }
            "notes" => assert!(value.as_array().unwrap().iter().all(Value::is_string)),
            _ => {}
        }
    }
    let Some(checks) = top.get("checks") else {
        return;
    };
    for (key, entries) in checks.as_object().expect("checks is an object") {
        let mut parts = key.split(':');
        let component = parts.next().unwrap();
        assert!(!component.is_empty(), "empty component in {key}");
        assert!(
            parts.next().is_none_or(|m| !m.is_empty()),
            "empty measurement in {key}"
        );
        assert!(parts.next().is_none(), "more than one ':' in {key}");
        let entries = entries.as_array().expect("check values are arrays");
        assert!(!entries.is_empty(), "{key} has no entries");
        for entry in entries {
            let entry = entry.as_object().expect("check entries are objects");
            for (field, value) in entry {
                assert!(
                    CHECK_FIELDS.contains(&field.as_str()),
                    "unknown field {field} in {key}"
                );
                match field.as_str() {
                    "componentId" | "componentType" | "observedUnit" | "output" => {
                        assert!(value.is_string(), "{key}.{field} must be a string")
                    }
                    "status" => assert!(STATUSES.contains(&value.as_str().unwrap())),
                    "time" => {
                        humantime_serde::re::humantime::parse_rfc3339(value.as_str().unwrap())
                            .unwrap_or_else(|e| panic!("{key}.time {value}: {e}"));
                    }
                    _ => {}
                }
            }
            assert!(entry.contains_key("status"), "{key} entry without status");
            if entry.contains_key("observedUnit") {
                assert!(
                    entry.contains_key("observedValue"),
                    "{key}: unit without value"
                );
            }
        }
    }
}
