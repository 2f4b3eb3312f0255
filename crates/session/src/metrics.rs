//! The crate's metrics, through the `metrics` facade (the application installs the exporter).
//!
//! | name | labels | counts |
//! |---|---|---|
//! | `herd_session_loads_total` | `store`, `outcome` = `hit`/`miss`/`expired`/`error` | session reads |
//! | `herd_session_saves_total` | `store`, `outcome` = `created`/`saved`/`touched`/`gone`/`too_large`/`gave_up`/`error` | writes and their results |
//! | `herd_session_conflicts_total` | `store`, `kind` = `merged`/`same_field` | saves that met a concurrent change; fields changed on both sides |
//! | `herd_session_store_errors_total` | `store`, `operation` | failed store operations |
//! | `herd_session_cookies_rejected_total` | `reason` = `forged`/`unknown` | cookies that did not lead to a session |

use metrics::counter;

pub(crate) fn load(store: &'static str, outcome: &'static str) {
    counter!("herd_session_loads_total", "store" => store, "outcome" => outcome).increment(1);
}

pub(crate) fn save(store: &'static str, outcome: &'static str) {
    counter!("herd_session_saves_total", "store" => store, "outcome" => outcome).increment(1);
}

pub(crate) fn conflict(store: &'static str, kind: &'static str, count: u64) {
    counter!("herd_session_conflicts_total", "store" => store, "kind" => kind).increment(count);
}

pub(crate) fn store_error(store: &'static str, operation: &'static str) {
    counter!("herd_session_store_errors_total", "store" => store, "operation" => operation)
        .increment(1);
}

pub(crate) fn cookie_rejected(reason: &'static str) {
    counter!("herd_session_cookies_rejected_total", "reason" => reason).increment(1);
}
