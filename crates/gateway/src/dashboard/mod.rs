//! The admin dashboard's data: a sampler that reads every endpoint's counters once a second into
//! bounded time series (requests/s, p99, errors/s, state changes), and a poller that reads each
//! instance's deep health every few seconds. Both are background tasks on the runtime that built
//! the pages; they hold the dashboard only weakly and end once the gateway's service is gone
//! (or its runtime stops). The page itself and its assets are in `assets/`, compiled in.

mod instances;
mod series;

use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde_json::Value;

use crate::http::HttpUpstream;
use instances::{Instances, Poller};
use series::Series;

pub(crate) use series::status_name;

/// The page, its script and its style sheet.
pub(super) const PAGE_HTML: &str = include_str!("assets/index.html");
pub(super) const APP_JS: &str = include_str!("assets/app.js");
pub(super) const APP_CSS: &str = include_str!("assets/app.css");

/// How often the endpoints are sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// Samples kept per endpoint: 10 minutes.
const SAMPLES: usize = 600;
/// How often each instance's health is read.
const POLL_EVERY: Duration = Duration::from_secs(3);
/// Polls kept per instance: 10 minutes.
const POLLS: usize = 200;
/// The instances' deep health path (herd-health's) and metrics path.
const HEALTH_PATH: &str = "/health";
const METRICS_PATH: &str = "/metrics";

/// The dashboard's state, shared by the page handler and the background tasks.
#[derive(Debug)]
pub(super) struct Dashboard {
    upstream: HttpUpstream,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// The last time stamp handed out (ms since the epoch), so stamps only go up and a reader's
    /// cursor never skips a point written after it read.
    last_stamp: u64,
    series: Series,
    instances: Instances,
    /// Whether the background tasks run (not without a runtime).
    sampling: bool,
}

impl State {
    fn stamp(&mut self) -> u64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.last_stamp = now.max(self.last_stamp.saturating_add(1));
        self.last_stamp
    }
}

impl Dashboard {
    /// The dashboard over `upstream`'s endpoints, its sampler and poller started on the current
    /// runtime (without one, the page shows the endpoints' state but no series).
    pub(super) fn start(upstream: HttpUpstream) -> Arc<Self> {
        let runtime = tokio::runtime::Handle::try_current().ok();
        let dashboard = Arc::new(Dashboard {
            upstream,
            state: Mutex::new(State {
                last_stamp: 0,
                series: Series::new(SAMPLES),
                instances: Instances::new(POLLS),
                sampling: runtime.is_some(),
            }),
        });
        if let Some(runtime) = runtime {
            runtime.spawn(sample(Arc::downgrade(&dashboard)));
            runtime.spawn(poll(Arc::downgrade(&dashboard)));
        }
        dashboard
    }

    /// The upstream whose endpoints are shown.
    pub(super) fn upstream(&self) -> &HttpUpstream {
        &self.upstream
    }

    /// Everything after `since` (a `cursor` of an earlier answer; 0: everything kept), with the
    /// cursor to ask from next time.
    pub(super) fn data(&self, since: u64) -> Value {
        let state = self.state.lock();
        let (endpoints, events) = state.series.view(since, METRICS_PATH);
        serde_json::json!({
            "cursor": state.last_stamp,
            "sampling": state.sampling,
            "sample_ms": SAMPLE_EVERY.as_millis() as u64,
            "window_s": (SAMPLE_EVERY * SAMPLES as u32).as_secs(),
            "poll_ms": POLL_EVERY.as_millis() as u64,
            "health_path": HEALTH_PATH,
            "endpoints": endpoints,
            "events": events,
            "instances": state.instances.view(since, METRICS_PATH),
        })
    }
}

/// Samples the endpoints every [`SAMPLE_EVERY`] until the dashboard is gone.
async fn sample(dashboard: Weak<Dashboard>) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = tokio::time::Instant::now();
    loop {
        tick.tick().await;
        let Some(dashboard) = dashboard.upgrade() else {
            return;
        };
        let infos = dashboard.upstream.endpoints();
        let now = tokio::time::Instant::now();
        let elapsed = now.saturating_duration_since(last).as_secs_f64();
        last = now;
        let mut state = dashboard.state.lock();
        let t = state.stamp();
        state.series.sample(t, elapsed, &infos);
    }
}

/// Reads every instance's health every [`POLL_EVERY`] until the dashboard is gone. The polls run
/// without holding the dashboard, so a gateway that stops is not kept alive by one.
async fn poll(dashboard: Weak<Dashboard>) {
    let poller = Poller::new(Duration::from_secs(2));
    let mut tick = tokio::time::interval(POLL_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let addresses: Vec<String> = match dashboard.upgrade() {
            Some(d) => {
                let addresses: Vec<String> = d
                    .upstream
                    .endpoints()
                    .into_iter()
                    .map(|e| e.key.to_string())
                    .collect();
                d.state.lock().instances.retain(&addresses);
                addresses
            }
            None => return,
        };
        let polls = addresses.iter().map(|address| {
            let poller = poller.clone();
            async move { (address, poller.poll(address, HEALTH_PATH).await) }
        });
        let results = futures_util::future::join_all(polls).await;
        let Some(dashboard) = dashboard.upgrade() else {
            return;
        };
        let mut state = dashboard.state.lock();
        let t = state.stamp();
        for (address, polled) in results {
            state.instances.record(address, t, polled);
        }
    }
}
