//! The gateway's own pages: `/lb-health` (its health, from its backends') and `/admin` (a page
//! listing the backends and their state).

use std::fmt::Write as _;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Json, Response};
use axum::routing::get;
use tokio::time::Instant;

use crate::http::HttpUpstream;

/// The pages' router, `health_path` and `admin_path` over `upstream`'s backends.
pub(crate) fn router(upstream: HttpUpstream, health_path: &str, admin_path: &str) -> Router {
    Router::new()
        .route(health_path, get(lb_health))
        .route(admin_path, get(admin))
        .with_state(upstream)
}

#[derive(serde::Serialize)]
struct BackendState {
    address: String,
    healthy: bool,
    status: String,
    in_flight: usize,
    ewma_ms: f64,
    requests: u64,
    failures: u64,
    ejected_for_ms: Option<u128>,
}

fn backends(upstream: &HttpUpstream) -> Vec<BackendState> {
    let now = Instant::now();
    upstream
        .endpoints()
        .into_iter()
        .map(|e| BackendState {
            address: e.key.to_string(),
            healthy: e.healthy,
            status: format!("{:?}", e.status),
            in_flight: e.in_flight,
            ewma_ms: e.ewma.as_secs_f64() * 1000.0,
            requests: e.requests,
            failures: e.failures,
            ejected_for_ms: e
                .ejected_until
                .map(|t| t.saturating_duration_since(now).as_millis()),
        })
        .collect()
}

/// The gateway's own health: 200 while at least one backend is healthy, else 503.
async fn lb_health(State(upstream): State<HttpUpstream>) -> Response {
    let list = backends(&upstream);
    let healthy = list.iter().filter(|b| b.healthy).count();
    let status = if healthy > 0 {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "status": if healthy > 0 { "pass" } else { "fail" },
        "healthy": healthy,
        "backends": list,
    });
    (status, Json(body)).into_response()
}

/// A page listing the backends and their state.
async fn admin(State(upstream): State<HttpUpstream>) -> Html<String> {
    let mut rows = String::new();
    for b in backends(&upstream) {
        let _ = write!(
            rows,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1}</td><td>{}</td><td>{}</td></tr>",
            b.address,
            if b.healthy { "healthy" } else { "unhealthy" },
            b.status,
            b.in_flight,
            b.ewma_ms,
            b.requests,
            b.failures
        );
    }
    Html(format!(
        "<!doctype html><meta charset=utf-8><title>herd gateway</title>\
         <meta http-equiv=refresh content=2>\
         <h1>Backends</h1><table border=1 cellpadding=4>\
         <tr><th>address</th><th>health</th><th>state</th><th>in flight</th><th>EWMA ms</th>\
         <th>requests</th><th>failures</th></tr>{rows}</table>"
    ))
}
