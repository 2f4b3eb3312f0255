//! The endpoints' time series: one point per endpoint per sample (requests/s, p99, errors/s, in
//! flight, EWMA) in a ring of bounded length, and the endpoints' state changes (ejections,
//! drains, recoveries) as events on the same timeline.

use std::collections::VecDeque;

use herd_lb_core::{EndpointInfo, EndpointStatus, LatencyCounts};
use http::uri::Authority;
use serde::Serialize;

/// Most events kept, whatever their age (a flapping endpoint must not grow memory).
const MAX_EVENTS: usize = 1000;

/// The name of a status on the page and in the JSON.
pub(crate) fn status_name(status: EndpointStatus) -> &'static str {
    match status {
        EndpointStatus::Healthy => "healthy",
        EndpointStatus::SlowStart => "slow_start",
        EndpointStatus::Ejected => "ejected",
        EndpointStatus::Unhealthy => "unhealthy",
        EndpointStatus::Draining => "draining",
    }
}

/// One sample of one endpoint.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Point {
    t: u64,
    rps: f64,
    errors: f64,
    p99_ms: Option<f64>,
    in_flight: u64,
    ewma_ms: f64,
}

/// What the previous sample read, to turn counters into rates.
#[derive(Debug, Clone)]
struct Last {
    requests: u64,
    failures: u64,
    latency: LatencyCounts,
    status: &'static str,
}

#[derive(Debug, Clone)]
struct EndpointSeries {
    address: String,
    last: Last,
    healthy: bool,
    /// A backup endpoint (nginx `server ... backup`).
    backup: bool,
    in_flight: u64,
    ewma_ms: f64,
    weight: f64,
    points: VecDeque<Point>,
}

/// A state change of one endpoint (`from` is `None` when it joined, `to` is `"removed"` when it
/// left).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(super) struct Event {
    pub(super) t: u64,
    pub(super) endpoint: String,
    pub(super) from: Option<&'static str>,
    pub(super) to: &'static str,
}

/// Every endpoint's series and the state changes, over the last `window` samples.
#[derive(Debug, Clone)]
pub(super) struct Series {
    window: usize,
    endpoints: Vec<EndpointSeries>,
    events: VecDeque<Event>,
    /// Samples taken so far (the first one only sets the baselines).
    samples: u64,
}

fn round(x: f64, places: i32) -> f64 {
    let scale = 10f64.powi(places);
    (x * scale).round() / scale
}

impl Series {
    /// Keeps `window` samples per endpoint.
    pub(super) fn new(window: usize) -> Self {
        Self {
            window: window.max(1),
            endpoints: Vec::new(),
            events: VecDeque::new(),
            samples: 0,
        }
    }

    /// Adds one sample at `t` (ms since the epoch), `elapsed_s` seconds after the previous.
    pub(super) fn sample(&mut self, t: u64, elapsed_s: f64, infos: &[EndpointInfo<Authority>]) {
        let first = self.samples == 0;
        self.samples = self.samples.saturating_add(1);
        // Endpoints that left the set since the last sample.
        let mut kept = Vec::with_capacity(self.endpoints.len());
        for series in self.endpoints.drain(..) {
            if infos.iter().any(|i| i.key.as_str() == series.address) {
                kept.push(series);
            } else {
                self.events.push_back(Event {
                    t,
                    endpoint: series.address,
                    from: Some(series.last.status),
                    to: "removed",
                });
            }
        }
        self.endpoints = kept;
        for info in infos {
            let status = status_name(info.status);
            let address = info.key.as_str();
            let Some(series) = self.endpoints.iter_mut().find(|s| s.address == address) else {
                if !first {
                    self.events.push_back(Event {
                        t,
                        endpoint: address.to_owned(),
                        from: None,
                        to: status,
                    });
                }
                self.endpoints.push(EndpointSeries {
                    address: address.to_owned(),
                    last: Last {
                        requests: info.requests,
                        failures: info.failures,
                        latency: info.latency.clone(),
                        status,
                    },
                    healthy: info.healthy,
                    backup: info.backup,
                    in_flight: info.in_flight as u64,
                    ewma_ms: info.ewma.as_secs_f64() * 1000.0,
                    weight: info.weight,
                    points: VecDeque::with_capacity(self.window.min(64)),
                });
                continue;
            };
            let per_second = |now: u64, before: u64| {
                if elapsed_s > 0.0 {
                    round(now.saturating_sub(before) as f64 / elapsed_s, 2)
                } else {
                    0.0
                }
            };
            let ewma_ms = round(info.ewma.as_secs_f64() * 1000.0, 3);
            let point = Point {
                t,
                rps: per_second(info.requests, series.last.requests),
                errors: per_second(info.failures, series.last.failures),
                p99_ms: info
                    .latency
                    .since(&series.last.latency)
                    .quantile(0.99)
                    .map(|d| round(d.as_secs_f64() * 1000.0, 3)),
                in_flight: info.in_flight as u64,
                ewma_ms,
            };
            if series.points.len() >= self.window {
                series.points.pop_front();
            }
            series.points.push_back(point);
            if series.last.status != status {
                self.events.push_back(Event {
                    t,
                    endpoint: series.address.clone(),
                    from: Some(series.last.status),
                    to: status,
                });
            }
            series.last = Last {
                requests: info.requests,
                failures: info.failures,
                latency: info.latency.clone(),
                status,
            };
            series.healthy = info.healthy;
            series.backup = info.backup;
            series.in_flight = info.in_flight as u64;
            series.ewma_ms = ewma_ms;
            series.weight = info.weight;
        }
        self.trim_events();
    }

    /// Drops events older than the oldest point kept, and beyond [`MAX_EVENTS`].
    fn trim_events(&mut self) {
        let oldest = self
            .endpoints
            .iter()
            .filter_map(|s| s.points.front().map(|p| p.t))
            .min();
        while self.events.len() > MAX_EVENTS
            || oldest.is_some_and(|o| self.events.front().is_some_and(|e| e.t < o))
        {
            self.events.pop_front();
        }
    }

    /// The series and events with `t` after `since`, as the page reads them.
    pub(super) fn view(&self, since: u64, metrics_path: &str) -> (Vec<EndpointView>, Vec<Event>) {
        let endpoints = self
            .endpoints
            .iter()
            .map(|s| {
                let start = s.points.partition_point(|p| p.t <= since);
                let points = s.points.range(start..);
                let mut view = EndpointView {
                    address: s.address.clone(),
                    status: s.last.status,
                    healthy: s.healthy,
                    backup: s.backup,
                    in_flight: s.in_flight,
                    ewma_ms: s.ewma_ms,
                    weight: s.weight,
                    requests: s.last.requests,
                    failures: s.last.failures,
                    metrics_url: format!("http://{}{metrics_path}", s.address),
                    t: Vec::new(),
                    rps: Vec::new(),
                    p99_ms: Vec::new(),
                    errors: Vec::new(),
                    in_flight_points: Vec::new(),
                };
                for p in points {
                    view.t.push(p.t);
                    view.rps.push(p.rps);
                    view.p99_ms.push(p.p99_ms);
                    view.errors.push(p.errors);
                    view.in_flight_points.push(p.in_flight);
                }
                view
            })
            .collect();
        let events = self
            .events
            .iter()
            .filter(|e| e.t > since)
            .cloned()
            .collect();
        (endpoints, events)
    }

    /// Points kept for `address` (for tests).
    #[cfg(test)]
    fn len_of(&self, address: &str) -> usize {
        self.endpoints
            .iter()
            .find(|s| s.address == address)
            .map_or(0, |s| s.points.len())
    }
}

/// One endpoint as the JSON shows it: its state now and its points, column by column.
#[derive(Debug, Serialize)]
pub(super) struct EndpointView {
    address: String,
    status: &'static str,
    healthy: bool,
    /// A backup endpoint (nginx `server ... backup`).
    backup: bool,
    in_flight: u64,
    ewma_ms: f64,
    weight: f64,
    requests: u64,
    failures: u64,
    metrics_url: String,
    t: Vec<u64>,
    rps: Vec<f64>,
    p99_ms: Vec<Option<f64>>,
    errors: Vec<f64>,
    #[serde(rename = "in_flight_series")]
    in_flight_points: Vec<u64>,
}

impl EndpointView {
    /// Whether the endpoint takes requests now.
    pub(super) fn healthy(&self) -> bool {
        self.healthy
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use herd_lb_core::{EndpointSet, EwmaConfig, OutlierDetection, PickContext, RoundRobin};

    #[test]
    fn points_are_bounded_and_events_follow_state_changes() {
        // Two endpoints, so that ejecting one is allowed (at most 50 % are ejected); every
        // request timed, so every interval has a p99.
        let endpoints: EndpointSet<Authority> = EndpointSet::<Authority>::builder()
            .ewma(EwmaConfig {
                sampling: 1,
                ..EwmaConfig::default()
            })
            .outlier_detection(OutlierDetection {
                consecutive_failures: Some(3),
                ..OutlierDetection::default()
            })
            .build();
        let a: Authority = "127.0.0.1:1".parse().unwrap();
        let b: Authority = "127.0.0.1:2".parse().unwrap();
        endpoints.insert(a.clone(), (), 1.0).unwrap();
        endpoints.insert(b.clone(), (), 1.0).unwrap();
        let policy = RoundRobin::default();
        let mut series = Series::new(5);
        series.sample(1000, 1.0, &endpoints.endpoints());
        for i in 0..10u64 {
            for _ in 0..20 {
                endpoints
                    .pick(&policy, &PickContext::new())
                    .unwrap()
                    .guard
                    .success();
            }
            series.sample(2000 + i * 1000, 1.0, &endpoints.endpoints());
        }
        assert_eq!(
            series.len_of("127.0.0.1:1"),
            5,
            "the window holds 5 samples"
        );
        let (view, events) = series.view(0, "/metrics");
        assert_eq!(view.len(), 2);
        let rates: Vec<f64> = (0..5).map(|i| view[0].rps[i] + view[1].rps[i]).collect();
        assert_eq!(rates, [20.0; 5], "requests/s over both endpoints");
        assert!(
            view[0]
                .p99_ms
                .iter()
                .chain(&view[1].p99_ms)
                .all(Option::is_some)
        );
        assert!(events.is_empty());
        let (view, _) = series.view(10_000, "/metrics");
        assert_eq!(view[0].t, [11_000]);
        assert_eq!(view[0].metrics_url, "http://127.0.0.1:1/metrics");

        // Three failures in a row on `a` eject it; the next sample marks it.
        let state = endpoints.state(&a).unwrap();
        while state.status() != EndpointStatus::Ejected {
            let picked = endpoints.pick(&policy, &PickContext::new()).unwrap();
            if picked.guard.state().label() == "127.0.0.1:1" {
                picked.guard.failure();
            } else {
                picked.guard.success();
            }
        }
        series.sample(12_000, 1.0, &endpoints.endpoints());
        assert!(endpoints.remove(&b));
        series.sample(13_000, 1.0, &endpoints.endpoints());
        let (view, events) = series.view(11_000, "/metrics");
        assert_eq!(view.len(), 1);
        assert!(view[0].errors[0] >= 3.0, "{:?}", view[0].errors);
        let ejected = Event {
            t: 12_000,
            endpoint: "127.0.0.1:1".into(),
            from: Some("healthy"),
            to: "ejected",
        };
        let removed = Event {
            t: 13_000,
            endpoint: "127.0.0.1:2".into(),
            from: Some("healthy"),
            to: "removed",
        };
        assert_eq!(events, [ejected, removed]);
    }
}
