//! A real browser (headless Chromium over WebDriver) opens the gateway's admin dashboard while the
//! demo (PostgreSQL primary + replica, a Redis Cluster, 3 instances) is under load, and checks in
//! the DOM what the page's own script drew: every endpoint's requests/s and p99 plots have points,
//! each instance's card shows its database roles, and when an instance is stopped its ejection
//! appears on the state timeline and in the table.
//!
//! Needs Debian's `chromium` and `chromium-driver` packages; without them the test says so loudly
//! on stderr and passes, unless `HERD_REQUIRE_BROWSER=1`. `HERD_DASHBOARD_SCREENSHOT=path.png`
//! saves what the browser saw at the end.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::browser::{browser_available, connect, start_chromedriver};
use common::{client, client_ip, demo};
use fantoccini::{Client, Locator};
use serde_json::Value;

/// Stops the load on drop (also when an assertion fails).
struct Load(Arc<AtomicBool>);

impl Drop for Load {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// An attribute the page's script sets, parsed as JSON (`Null` until it is there).
async fn json_attr(b: &Client, selector: &str, attr: &str) -> Value {
    match b.find(Locator::Css(selector)).await {
        Ok(e) => e
            .attr(attr)
            .await
            .ok()
            .flatten()
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or(Value::Null),
        Err(_) => Value::Null,
    }
}

/// Re-reads the page's state until `done` holds (at most `secs` seconds).
async fn wait_until<F, Fut>(secs: u64, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let why = match check().await {
            Ok(()) => return,
            Err(why) => why,
        };
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} within {secs} s: {why}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dashboard_plots_each_endpoint_and_marks_a_stopped_instances_ejection() {
    if !browser_available("dashboard browser test") {
        return;
    }
    let d = demo().await;
    // The round-robin gateway: every instance gets its share, and no rate limit slows the load.
    let gw = d.rr_gateway.server.url();
    let addresses: Vec<String> = d
        .instance_urls
        .iter()
        .map(|u| u.trim_start_matches("http://").to_owned())
        .collect();

    let stop = Arc::new(AtomicBool::new(false));
    let _load = Load(Arc::clone(&stop));
    for i in 0..4 {
        let (c, gw, stop) = (client(&client_ip()), gw.clone(), Arc::clone(&stop));
        tokio::spawn(async move {
            let path = if i == 0 { "/api/stats" } else { "/api/whoami" };
            while !stop.load(Ordering::Relaxed) {
                if let Ok(res) = c.get(format!("{gw}{path}")).send().await {
                    let _ = res.bytes().await;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
    }

    let driver = start_chromedriver();
    // A laptop's screen: the dashboard must be readable without scrolling.
    let browser = connect(&driver, &["--window-size=1440,900"]).await;
    // The checks run as a task of their own, so that a failed one still lets the browser be
    // closed below before the failure is reported.
    let b = browser.clone();
    let checks = tokio::spawn(async move {
        b.goto(&format!("{gw}/admin")).await?;

        // Every endpoint's line has points on the requests/s and the p99 plots.
        wait_until(40, "every endpoint plotted", || async {
            for plot in ["#plot-rps", "#plot-p99"] {
                let drawn = json_attr(&b, plot, "data-points").await;
                for a in &addresses {
                    let n = drawn[a.as_str()].as_u64().unwrap_or(0);
                    if n < 3 {
                        return Err(format!("{plot} has {n} points for {a}: {drawn}"));
                    }
                }
            }
            Ok(())
        })
        .await;
        let max: f64 = b
            .find(Locator::Css("#plot-rps"))
            .await?
            .attr("data-max")
            .await?
            .and_then(|m| m.parse().ok())
            .unwrap_or(0.0);
        assert!(max > 0.0, "the requests/s axis is scaled to the traffic");

        // Each instance's card: its database roles (the primary among them) and Redis nodes.
        wait_until(30, "the instances' cards", || async {
            let cards = b
                .find_all(Locator::Css("[data-instance]"))
                .await
                .unwrap_or_default();
            let mut texts = HashMap::new();
            for card in cards {
                let address = card
                    .attr("data-instance")
                    .await
                    .ok()
                    .flatten()
                    .unwrap_or_default();
                texts.insert(address, card.text().await.unwrap_or_default());
            }
            for a in &addresses {
                match texts.get(a) {
                    Some(t) if t.contains("primary") && t.contains("Redis nodes") => {}
                    other => return Err(format!("card of {a}: {other:?}")),
                }
            }
            Ok(())
        })
        .await;

        // Stop one instance: its ejection (passive, or the active check's verdict) shows on the
        // timeline and in the table.
        let victim = {
            let mut instances = d.instances.lock().await;
            instances[2].server.kill();
            addresses[2].clone()
        };
        wait_until(
            60,
            "the stopped instance's ejection on the timeline",
            || async {
                let events = json_attr(&b, "#timeline", "data-events").await;
                let marked = events.as_array().into_iter().flatten().any(|e| {
                    e["endpoint"] == victim.as_str()
                        && (e["to"] == "ejected" || e["to"] == "unhealthy")
                });
                if marked {
                    Ok(())
                } else {
                    Err(format!("events drawn: {events}"))
                }
            },
        )
        .await;
        let row = b
            .find(Locator::Css(&format!("tr[data-endpoint=\"{victim}\"]")))
            .await?
            .text()
            .await?;
        assert!(
            row.contains("ejected") || row.contains("unhealthy"),
            "table row: {row}"
        );
        let listed = b.find(Locator::Css("#events")).await?.text().await?;
        assert!(listed.contains(&victim), "state changes: {listed}");
        // The others keep their lines.
        let drawn = json_attr(&b, "#plot-rps", "data-points").await;
        for a in &addresses[..2] {
            assert!(drawn[a.as_str()].as_u64().unwrap_or(0) >= 3, "{drawn}");
        }
        if let Ok(path) = std::env::var("HERD_DASHBOARD_SCREENSHOT") {
            std::fs::write(path, b.screenshot().await?).unwrap();
        }
        Ok::<_, fantoccini::error::CmdError>(())
    });
    let result = checks.await;
    let _ = browser.close().await;
    match result {
        Ok(checked) => checked.unwrap(),
        Err(failed) => std::panic::resume_unwind(failed.into_panic()),
    }
}
