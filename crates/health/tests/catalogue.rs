//! `docs/metrics.md` against the code: every metric-name constant in a crate's `src/metrics.rs`
//! is in the catalogue with the type and unit the code gives it, and nothing else is; each one
//! is described (`describe_*!`) once, with that type and unit; each histogram's buckets in the
//! catalogue are those `MetricsConfig::default()` gives it. Then the Prometheus recorder
//! renders descriptions, per-metric buckets and state gauges as the catalogue says.
//!
//! The constants and the descriptions are read from the sources (no list is repeated here), so
//! a metric added, renamed or removed in code and not in the catalogue fails this test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use herd_health::{CheckResult, HERD_BUCKETS, Health, MetricsConfig, PrometheusMetrics, check};

/// The workspace root (this crate is `crates/health`).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A metric as the code declares it.
#[derive(Debug)]
struct Constant {
    /// The crate directory it is declared in.
    krate: String,
    /// The Rust identifier.
    ident: String,
    /// `counter`, `gauge` or `histogram`, from the first word of its doc comment.
    kind: String,
}

/// A `describe_*!` call: the metric's kind and unit (`count`, `seconds`, `bytes` or `-`).
#[derive(Debug, PartialEq)]
struct Described {
    kind: String,
    unit: String,
}

/// A catalogue row.
#[derive(Debug)]
struct Row {
    kind: String,
    unit: String,
}

/// Every `pub const NAME: &str = "herd_...";` in `crates/*/src/metrics.rs`, by metric name,
/// and every `describe_*!(NAME, ...)` there, by metric name.
fn read_code() -> (BTreeMap<String, Constant>, BTreeMap<String, Vec<Described>>) {
    let mut constants = BTreeMap::new();
    let mut described: BTreeMap<String, Vec<Described>> = BTreeMap::new();
    let mut crates: Vec<PathBuf> = std::fs::read_dir(root().join("crates"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    crates.sort();
    let mut files = 0;
    for dir in crates {
        let path = dir.join("src/metrics.rs");
        let Ok(source) = std::fs::read_to_string(&path) else {
            continue;
        };
        files += 1;
        let krate = dir.file_name().unwrap().to_string_lossy().into_owned();
        let mut idents = BTreeMap::new();
        let mut doc: Vec<&str> = Vec::new();
        for line in source.lines().map(str::trim) {
            if let Some(text) = line.strip_prefix("///") {
                doc.push(text.trim());
                continue;
            }
            if let Some(rest) = line.strip_prefix("pub const ")
                && let Some((ident, value)) = rest.split_once(": &str = \"")
            {
                let name = value.trim_end_matches("\";").to_owned();
                assert!(
                    name.starts_with("herd_"),
                    "{krate}: {ident} = {name:?} lacks the herd_ prefix"
                );
                let first = doc.first().copied().unwrap_or_default();
                let kind = first
                    .split([':', ' '])
                    .next()
                    .unwrap_or_default()
                    .to_lowercase();
                assert!(
                    ["counter", "gauge", "histogram"].contains(&kind.as_str()),
                    "{krate}: the doc comment of {ident} must open with Counter:, Gauge: or \
                     Histogram:, not {first:?}"
                );
                idents.insert(ident.to_owned(), name.clone());
                let previous = constants.insert(
                    name.clone(),
                    Constant {
                        krate: krate.clone(),
                        ident: ident.to_owned(),
                        kind,
                    },
                );
                assert!(previous.is_none(), "{name} is declared twice");
            }
            doc.clear();
        }
        // `describe_counter!(\n NAME,\n Unit::Seconds,\n "...")`: the name, then the unit
        // when the second argument is one.
        let flat: String = source.split_whitespace().collect::<Vec<_>>().join(" ");
        for kind in ["counter", "gauge", "histogram"] {
            let call = format!("describe_{kind}!(");
            for (_, after) in flat.match_indices(&call).map(|(i, _)| flat.split_at(i)) {
                let args = &after[call.len()..];
                let mut parts = args.splitn(3, ',').map(str::trim);
                let ident = parts.next().unwrap();
                let second = parts.next().unwrap_or_default();
                let unit = match second.strip_prefix("Unit::") {
                    Some(unit) => unit.to_lowercase(),
                    None => "-".to_owned(),
                };
                let Some(name) = idents.get(ident) else {
                    panic!(
                        "{krate}: describe_{kind}!({ident}) names no metric constant of this file"
                    );
                };
                described.entry(name.clone()).or_default().push(Described {
                    kind: kind.to_owned(),
                    unit,
                });
            }
        }
    }
    assert!(files >= 6, "found only {files} metrics.rs files");
    (constants, described)
}

/// The catalogue's metric rows (`| `herd_...` | type | unit | ...`) and its bucket rows
/// (`| `herd_...` | default or bounds | why |`), by metric name.
fn read_catalogue() -> (BTreeMap<String, Row>, BTreeMap<String, String>) {
    let text = std::fs::read_to_string(root().join("docs/metrics.md")).unwrap();
    let mut rows = BTreeMap::new();
    let mut buckets = BTreeMap::new();
    let mut in_buckets = false;
    for line in text.lines() {
        if line.starts_with("## ") {
            in_buckets = line == "## Histogram buckets";
            continue;
        }
        let Some(rest) = line.strip_prefix("| `herd_") else {
            continue;
        };
        let cells: Vec<&str> = rest.split('|').map(str::trim).collect();
        let name = format!("herd_{}", cells[0].trim_end_matches('`'));
        if in_buckets {
            let previous = buckets.insert(name.clone(), cells[1].to_owned());
            assert!(previous.is_none(), "{name} has two bucket rows");
        } else {
            let row = Row {
                kind: cells[1].to_owned(),
                unit: cells[2].to_owned(),
            };
            let previous = rows.insert(name.clone(), row);
            assert!(previous.is_none(), "{name} is in the catalogue twice");
        }
    }
    (rows, buckets)
}

#[test]
fn every_metric_in_code_is_in_the_catalogue_and_nothing_else() {
    let (constants, described) = read_code();
    let (rows, buckets) = read_catalogue();

    let missing: Vec<String> = constants
        .iter()
        .filter(|(name, _)| !rows.contains_key(*name))
        .map(|(name, c)| format!("{name} ({}::{})", c.krate, c.ident))
        .collect();
    assert!(missing.is_empty(), "not in docs/metrics.md: {missing:?}");
    let unknown: Vec<&String> = rows
        .keys()
        .filter(|n| !constants.contains_key(*n))
        .collect();
    assert!(
        unknown.is_empty(),
        "in docs/metrics.md but no crate's src/metrics.rs declares them: {unknown:?}"
    );

    for (name, constant) in &constants {
        let row = &rows[name];
        assert_eq!(
            row.kind, constant.kind,
            "{name}: the catalogue says {}, the code {}",
            row.kind, constant.kind
        );
        let descriptions = described.get(name).map_or(&[][..], Vec::as_slice);
        assert_eq!(
            descriptions.len(),
            1,
            "{name} ({}::{}) must be described exactly once by its crate's describe(): {descriptions:?}",
            constant.krate,
            constant.ident
        );
        let description = &descriptions[0];
        assert_eq!(
            description.kind, constant.kind,
            "{name}: described as another type"
        );
        assert_eq!(
            description.unit, row.unit,
            "{name}: described with unit {}, the catalogue says {}",
            description.unit, row.unit
        );
        // The unit is the name's suffix (before `_total`), as Prometheus' naming asks: the text
        // format has no unit line.
        let stem = name.strip_suffix("_total").unwrap_or(name);
        match row.unit.as_str() {
            "seconds" | "bytes" => assert!(
                stem.ends_with(&format!("_{}", row.unit)),
                "{name}: unit {} but no _{} suffix",
                row.unit,
                row.unit
            ),
            "count" | "-" => assert!(
                !stem.ends_with("_seconds") && !stem.ends_with("_bytes"),
                "{name}: a unit suffix without that unit"
            ),
            other => panic!("{name}: unit {other:?} is not one of seconds, bytes, count, -"),
        }
        if constant.kind == "counter" {
            assert!(
                name.ends_with("_total"),
                "counter {name} must end in _total"
            );
        }
    }

    // Buckets: a row for every histogram and only for histograms, with the bounds the default
    // configuration gives it.
    let config = MetricsConfig::default();
    for (name, constant) in &constants {
        let Some(bounds) = buckets.get(name) else {
            assert_ne!(
                constant.kind, "histogram",
                "histogram {name} has no bucket row"
            );
            continue;
        };
        assert_eq!(
            constant.kind, "histogram",
            "{name} has a bucket row but is no histogram"
        );
        let expected = config.buckets_for(name);
        let listed: Vec<f64> = if bounds == "default" {
            config.buckets.clone()
        } else {
            bounds
                .split(',')
                .map(|b| {
                    b.trim()
                        .parse()
                        .unwrap_or_else(|e| panic!("{name}: {b:?}: {e}"))
                })
                .collect()
        };
        assert_eq!(
            listed, expected,
            "{name}: the catalogue's buckets differ from the code's"
        );
    }
    assert!(
        buckets.keys().all(|name| constants.contains_key(name)),
        "bucket rows for unknown metrics: {buckets:?}"
    );
    for (name, _) in HERD_BUCKETS {
        assert_eq!(
            constants.get(*name).map(|c| c.kind.as_str()),
            Some("histogram"),
            "HERD_BUCKETS names {name}, which is no herd histogram"
        );
    }
    println!(
        "docs/metrics.md: {} metrics ({} counters, {} gauges, {} histograms)",
        constants.len(),
        constants.values().filter(|c| c.kind == "counter").count(),
        constants.values().filter(|c| c.kind == "gauge").count(),
        constants.values().filter(|c| c.kind == "histogram").count(),
    );
}

/// The lines of `text` for the family `name`: its `# HELP`, `# TYPE` and samples.
fn family<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
    text.lines()
        .filter(|line| {
            let series = line
                .strip_prefix("# HELP ")
                .or_else(|| line.strip_prefix("# TYPE "))
                .unwrap_or(line);
            series
                .strip_prefix(name)
                .is_some_and(|rest| rest.starts_with([' ', '{', '_']))
        })
        .collect()
}

#[test]
fn the_recorder_renders_descriptions_buckets_and_state_gauges() {
    let (metrics, recorder) = PrometheusMetrics::build(&MetricsConfig::default()).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorder, || {
        runtime.block_on(async {
            // Building a Health describes herd-health's metrics; the checks' runs record them.
            let health = Health::builder()
                .started(true)
                .check(check::from_fn("ok", || async { CheckResult::pass() }))
                .check(check::from_fn("broken", || async {
                    CheckResult::fail("down")
                }))
                .build()
                .unwrap();
            health.refresh_all().await;
            // Building a set describes herd-lb-core's.
            let set: herd_lb_core::EndpointSet<String> = herd_lb_core::EndpointSet::new();
            set.insert("10.0.0.1:80".to_owned(), (), 1.0).unwrap();
        });
        for (name, bounds) in HERD_BUCKETS {
            metrics::histogram!(*name).record(bounds[0]);
        }
    });
    let text = metrics.render();

    // HELP and TYPE for the metrics recorded.
    for (name, kind) in [
        ("herd_health_check_runs_total", "counter"),
        ("herd_health_check_duration_seconds", "histogram"),
        ("herd_health_check_state", "gauge"),
        ("herd_health_draining", "gauge"),
        ("herd_lb_endpoint_healthy", "gauge"),
        ("herd_lb_in_flight", "gauge"),
    ] {
        let lines = family(&text, name);
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(&format!("# HELP {name} ")) && l.len() > 20),
            "no HELP for {name}:\n{text}"
        );
        assert!(
            lines.contains(&format!("# TYPE {name} {kind}").as_str()),
            "no TYPE {kind} for {name}:\n{text}"
        );
    }

    // One series per state, exactly one of them 1.
    for (check, on) in [("ok", "pass"), ("broken", "fail")] {
        for state in ["pass", "warn", "fail"] {
            let series = format!("herd_health_check_state{{check=\"{check}\",state=\"{state}\"}}");
            let want = if state == on { "1" } else { "0" };
            assert!(
                text.lines().any(|l| l == format!("{series} {want}")),
                "want {series} {want}:\n{text}"
            );
        }
    }

    // Per-metric buckets: each of HERD_BUCKETS' histograms has exactly its own bounds.
    for (name, bounds) in HERD_BUCKETS {
        let les: Vec<f64> = family(&text, &format!("{name}_bucket"))
            .iter()
            .filter_map(|line| line.split("le=\"").nth(1)?.split('"').next())
            .filter(|le| *le != "+Inf")
            .map(|le| le.parse().unwrap())
            .collect();
        assert_eq!(les, bounds.to_vec(), "{name}'s buckets:\n{text}");
    }
}
