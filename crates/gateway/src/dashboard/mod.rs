//! The admin dashboard's data: a sampler that reads every endpoint's counters once a second into
//! bounded time series (requests/s, p99, errors/s, state changes), and a poller that reads each
//! instance's deep health every few seconds, for every upstream group (one clock for all of them,
//! so one cursor serves the whole page). Both are background tasks on the runtime that built
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
pub(crate) const PAGE_HTML: &str = include_str!("assets/index.html");
pub(crate) const APP_JS: &str = include_str!("assets/app.js");
pub(crate) const APP_CSS: &str = include_str!("assets/app.css");

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

/// One upstream group shown on the pages: its name (the config file's `[upstreams.NAME]`) and
/// its upstream.
#[derive(Debug, Clone)]
pub(crate) struct Group {
    pub(crate) name: String,
    pub(crate) upstream: HttpUpstream,
}

/// The dashboard's state, shared by the page handler and the background tasks.
#[derive(Debug)]
pub(crate) struct Dashboard {
    groups: Vec<Group>,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// The last time stamp handed out (ms since the epoch), so stamps only go up and a reader's
    /// cursor never skips a point written after it read.
    last_stamp: u64,
    /// Per group, in the order of [`Dashboard::groups`].
    series: Vec<Series>,
    /// Per group, likewise.
    instances: Vec<Instances>,
    /// Whether the background tasks run (not without a runtime).
    sampling: bool,
    /// When the endpoints were last sampled (the rates of the next sample are over the time
    /// since).
    last_sample: Option<tokio::time::Instant>,
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
    /// The dashboard over the `groups`' endpoints, its sampler and poller started on the current
    /// runtime (without one, the page shows the endpoints' state but no series). With a
    /// `previous` dashboard and the names of the groups kept from it (the same upstream), those
    /// groups start with its series and instances' reports (copied: the previous one goes on
    /// unchanged while it serves), and its cursors stay valid.
    pub(crate) fn start(
        groups: Vec<Group>,
        previous: Option<(&Dashboard, &[String])>,
    ) -> Arc<Self> {
        let runtime = tokio::runtime::Handle::try_current().ok();
        let mut state = State {
            last_stamp: 0,
            series: groups.iter().map(|_| Series::new(SAMPLES)).collect(),
            instances: groups.iter().map(|_| Instances::new(POLLS)).collect(),
            sampling: runtime.is_some(),
            last_sample: None,
        };
        if let Some((previous, kept)) = previous {
            let old = previous.state.lock();
            state.last_stamp = old.last_stamp;
            state.last_sample = old.last_sample;
            for (i, group) in groups.iter().enumerate() {
                let at = previous.groups.iter().position(|g| g.name == group.name);
                let Some(at) = at.filter(|_| kept.contains(&group.name)) else {
                    continue;
                };
                if let (Some(series), Some(old_series)) =
                    (state.series.get_mut(i), old.series.get(at))
                {
                    *series = old_series.clone();
                }
                if let (Some(instances), Some(old_instances)) =
                    (state.instances.get_mut(i), old.instances.get(at))
                {
                    *instances = old_instances.clone();
                }
            }
        }
        let dashboard = Arc::new(Dashboard {
            state: Mutex::new(state),
            groups,
        });
        if let Some(runtime) = runtime {
            runtime.spawn(sample(Arc::downgrade(&dashboard)));
            runtime.spawn(poll(Arc::downgrade(&dashboard)));
        }
        dashboard
    }

    /// The groups whose endpoints are shown, in the gateway's order (the first is the one a
    /// [`GatewayConfig`](crate::GatewayConfig)'s or a config file's main route goes to).
    pub(crate) fn groups(&self) -> &[Group] {
        &self.groups
    }

    /// Everything after `since` (a `cursor` of an earlier answer; 0: everything kept), with the
    /// cursor to ask from next time. Every endpoint, event and instance names its `group`;
    /// `groups` lists the groups in order with their endpoints counted.
    pub(crate) fn data(&self, since: u64) -> Value {
        let state = self.state.lock();
        let mut endpoints = Vec::new();
        let mut events = Vec::new();
        let mut instances = Vec::new();
        let mut groups = Vec::with_capacity(self.groups.len());
        for ((group, series), polled) in self.groups.iter().zip(&state.series).zip(&state.instances)
        {
            let (group_endpoints, group_events) = series.view(since, METRICS_PATH);
            let healthy = group_endpoints.iter().filter(|e| e.healthy()).count();
            groups.push(serde_json::json!({
                "name": group.name,
                "endpoints": group_endpoints.len(),
                "healthy": healthy,
            }));
            endpoints.extend(tagged(group_endpoints, &group.name));
            events.extend(tagged(group_events, &group.name));
            instances.extend(tagged(polled.view(since, METRICS_PATH), &group.name));
        }
        serde_json::json!({
            "cursor": state.last_stamp,
            "sampling": state.sampling,
            "sample_ms": SAMPLE_EVERY.as_millis() as u64,
            "window_s": (SAMPLE_EVERY * SAMPLES as u32).as_secs(),
            "poll_ms": POLL_EVERY.as_millis() as u64,
            "health_path": HEALTH_PATH,
            "groups": groups,
            "endpoints": endpoints,
            "events": events,
            "instances": instances,
        })
    }
}

/// `items` as JSON objects, each with `"group": group` added.
fn tagged<T: serde::Serialize>(items: Vec<T>, group: &str) -> Vec<Value> {
    items
        .into_iter()
        .filter_map(|item| {
            // These are structs of plain fields: serializing them cannot fail.
            let mut value = serde_json::to_value(item).ok()?;
            if let Value::Object(map) = &mut value {
                map.insert("group".to_owned(), Value::String(group.to_owned()));
            }
            Some(value)
        })
        .collect()
}

/// Samples the endpoints every [`SAMPLE_EVERY`] until the dashboard is gone.
async fn sample(dashboard: Weak<Dashboard>) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(dashboard) = dashboard.upgrade() else {
            return;
        };
        let infos: Vec<_> = dashboard
            .groups
            .iter()
            .map(|g| g.upstream.endpoints())
            .collect();
        let now = tokio::time::Instant::now();
        let mut state = dashboard.state.lock();
        let elapsed = state.last_sample.map_or(0.0, |last| {
            now.saturating_duration_since(last).as_secs_f64()
        });
        state.last_sample = Some(now);
        let t = state.stamp();
        for (series, infos) in state.series.iter_mut().zip(&infos) {
            series.sample(t, elapsed, infos);
        }
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
        // Per group, its instances' addresses.
        let addresses: Vec<Vec<String>> = match dashboard.upgrade() {
            Some(d) => {
                let addresses: Vec<Vec<String>> = d
                    .groups
                    .iter()
                    .map(|g| {
                        g.upstream
                            .endpoints()
                            .into_iter()
                            .map(|e| e.key.to_string())
                            .collect()
                    })
                    .collect();
                let mut state = d.state.lock();
                for (instances, addresses) in state.instances.iter_mut().zip(&addresses) {
                    instances.retain(addresses);
                }
                addresses
            }
            None => return,
        };
        let poller = &poller;
        let polls = addresses.iter().enumerate().flat_map(|(group, addresses)| {
            addresses.iter().map(move |address| {
                let poller = poller.clone();
                async move { (group, address, poller.poll(address, HEALTH_PATH).await) }
            })
        });
        let results = futures_util::future::join_all(polls).await;
        let Some(dashboard) = dashboard.upgrade() else {
            return;
        };
        let mut state = dashboard.state.lock();
        let t = state.stamp();
        for (group, address, polled) in results {
            if let Some(instances) = state.instances.get_mut(group) {
                instances.record(address, t, polled);
            }
        }
    }
}
