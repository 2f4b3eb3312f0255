//! The gateway's own pages, over every upstream group: `/lb-health` (its health, from its
//! backends': 200 while some group can serve, with each group's state by name) and `/admin`, the
//! operators' dashboard: per group, live plots of each endpoint's requests/s, p99 latency and
//! errors/s with ejections marked on the timeline and the endpoints' state; then what the
//! instances report about themselves (see [`dashboard`](crate::dashboard)). Everything it needs
//! is served from the one page path, told apart by the query: `?data=series[&since=CURSOR]` (the
//! JSON the page polls) and `?asset=app.js` / `?asset=app.css`; no CDN.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Json, Response};
use axum::routing::get;
use tokio::time::Instant;

use crate::dashboard::{self, Dashboard, Group};

/// The operators' pages of one build of the gateway: their router, and their dashboard (to
/// carry its history into the next build's).
#[derive(Clone)]
pub(crate) struct Pages {
    router: Router,
    dashboard: Arc<Dashboard>,
}

impl Pages {
    /// The pages, `health_path` and `admin_path`, over the `groups`' backends (at least one; the
    /// first is the main one). Starts the dashboard's sampler on the current runtime (it ends
    /// when the router and its clones are gone). With `previous` pages and the names of the
    /// groups kept from them (same upstream), the dashboard starts with those groups' history.
    pub(crate) fn new(
        groups: Vec<Group>,
        health_path: &str,
        admin_path: &str,
        previous: Option<(&Pages, &[String])>,
    ) -> Self {
        let previous = previous.map(|(pages, kept)| (&*pages.dashboard, kept));
        let dashboard = Dashboard::start(groups, previous);
        let state = PageState {
            dashboard: Arc::clone(&dashboard),
            health_path: health_path.into(),
        };
        let router = Router::new()
            .route(health_path, get(lb_health))
            .route(admin_path, get(admin))
            .with_state(state);
        Self { router, dashboard }
    }

    /// The router serving the pages.
    pub(crate) fn router(&self) -> Router {
        self.router.clone()
    }
}

#[derive(Clone)]
struct PageState {
    dashboard: Arc<Dashboard>,
    health_path: Arc<str>,
}

#[derive(serde::Serialize)]
struct BackendState {
    /// The upstream group's name.
    group: String,
    address: String,
    healthy: bool,
    /// A backup server (nginx `server ... backup`): asked only when no primary one can be.
    backup: bool,
    status: String,
    in_flight: usize,
    ewma_ms: f64,
    requests: u64,
    failures: u64,
    ejected_for_ms: Option<u128>,
    /// The status as the dashboard names it.
    #[serde(skip)]
    state: &'static str,
}

/// Every group's backends, group by group.
fn backends(groups: &[Group]) -> Vec<BackendState> {
    let now = Instant::now();
    groups
        .iter()
        .flat_map(|g| g.upstream.endpoints().into_iter().map(|e| (&g.name, e)))
        .map(|(group, e)| BackendState {
            group: group.clone(),
            address: e.key.to_string(),
            healthy: e.healthy,
            backup: e.backup,
            status: format!("{:?}", e.status),
            in_flight: e.in_flight,
            ewma_ms: e.ewma.as_secs_f64() * 1000.0,
            requests: e.requests,
            failures: e.failures,
            ejected_for_ms: e
                .ejected_until
                .map(|t| t.saturating_duration_since(now).as_millis()),
            state: dashboard::status_name(e.status),
        })
        .collect()
}

/// One group's health in `/lb-health`.
#[derive(serde::Serialize)]
struct GroupHealth<'a> {
    name: &'a str,
    /// `pass` while one of its backends is healthy, else `fail`.
    status: &'static str,
    healthy: usize,
    backends: usize,
}

/// The gateway's own health, as a load balancer in front of it reads it: 200 while at least one
/// group has a healthy backend (the gateway can still serve part of the site: taking it out of
/// rotation would not help, as its peers see the same backends), else 503. The JSON says
/// `pass` when every group has a healthy backend, `warn` when only some have, `fail` when none
/// has, and lists each group's state by name and every backend with its group.
async fn lb_health(State(pages): State<PageState>) -> Response {
    let groups = pages.dashboard.groups();
    let list = backends(groups);
    let per_group: Vec<GroupHealth<'_>> = groups
        .iter()
        .map(|g| {
            let mine = list.iter().filter(|b| b.group == g.name);
            let (healthy, backends) = mine.fold((0usize, 0usize), |(h, n), b| {
                (
                    h.saturating_add(usize::from(b.healthy)),
                    n.saturating_add(1),
                )
            });
            GroupHealth {
                name: &g.name,
                status: if healthy > 0 { "pass" } else { "fail" },
                healthy,
                backends,
            }
        })
        .collect();
    let serving = per_group.iter().filter(|g| g.healthy > 0).count();
    let (status, word) = if serving == 0 {
        (StatusCode::SERVICE_UNAVAILABLE, "fail")
    } else if serving < per_group.len() {
        (StatusCode::OK, "warn")
    } else {
        (StatusCode::OK, "pass")
    };
    let healthy = list.iter().filter(|b| b.healthy).count();
    let body = serde_json::json!({
        "status": word,
        "healthy": healthy,
        "groups": per_group,
        "backends": list,
    });
    (status, Json(body)).into_response()
}

/// What the admin page's query asks for.
#[derive(Debug, serde::Deserialize)]
struct AdminQuery {
    /// `series`: the dashboard's data as JSON.
    data: Option<String>,
    /// Only what was sampled after this cursor (from an earlier answer).
    since: Option<u64>,
    /// `app.js` or `app.css`.
    asset: Option<String>,
}

/// The page may load only its own script, style sheet and data, and be framed by no one.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self'; frame-ancestors 'none'; base-uri 'none'";

fn text(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        body,
    )
        .into_response()
}

fn not_found(what: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(serde_json::json!({ "error": format!("no such {what}") })),
    )
        .into_response()
}

/// The dashboard, its assets (`?asset=`) and its data (`?data=series`).
async fn admin(State(pages): State<PageState>, Query(query): Query<AdminQuery>) -> Response {
    if let Some(asset) = &query.asset {
        return match asset.as_str() {
            "app.js" => text("text/javascript; charset=utf-8", dashboard::APP_JS),
            "app.css" => text("text/css; charset=utf-8", dashboard::APP_CSS),
            _ => not_found("asset"),
        };
    }
    if let Some(data) = &query.data {
        if data != "series" {
            return not_found("data");
        }
        let body = pages.dashboard.data(query.since.unwrap_or(0));
        return (
            [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
            Json(body),
        )
            .into_response();
    }
    // The state table is filled in here too: it reads without the script, and the script
    // replaces it on its first update.
    // With several groups, each group's rows follow a row naming it.
    let groups = pages.dashboard.groups();
    let mut rows = String::new();
    let mut group: Option<String> = None;
    for b in backends(groups) {
        if groups.len() > 1 && group.as_deref() != Some(b.group.as_str()) {
            let _ = write!(
                rows,
                "<tr class=\"group\" data-group=\"{name}\"><th colspan=\"10\">{name}</th></tr>",
                name = escape(&b.group),
            );
            group = Some(b.group.clone());
        }
        let status = b.state;
        let _ = write!(
            rows,
            "<tr data-endpoint=\"{address}\"><td></td><td>{address}</td>\
             <td><span class=\"badge s-{status}\">{status}</span></td><td>–</td><td>–</td>\
             <td>–</td><td>{}</td><td>{:.2}</td><td>{} / {}</td><td></td></tr>",
            b.in_flight,
            b.ewma_ms,
            b.requests,
            b.failures,
            address = escape(&b.address),
        );
    }
    let health_path = escape(&pages.health_path);
    let page = dashboard::PAGE_HTML
        .replace("{{HEALTH_PATH}}", &health_path)
        .replace("{{ROWS}}", &rows);
    (
        [
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CSP),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        Html(page),
    )
        .into_response()
}

/// `s` safe inside HTML text and double-quoted attributes.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn addresses_are_escaped_for_html() {
        assert_eq!(escape("a<b>\"&'"), "a&lt;b&gt;&quot;&amp;&#39;");
        assert_eq!(escape("127.0.0.1:3001"), "127.0.0.1:3001");
    }
}
