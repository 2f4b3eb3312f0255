//! The README's "Adding each crate" section is this example: its `rust` blocks, in order, are
//! `src/main.rs`, and its `Cargo.toml` lines name the same crates with the same features (and
//! versions the workspace uses) as this package's dependencies.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

const README: &str = include_str!("../../../README.md");
const MAIN: &str = include_str!("../src/main.rs");
const MANIFEST: &str = include_str!("../Cargo.toml");
const WORKSPACE: &str = include_str!("../../../Cargo.toml");
const UPSTREAM: &str = include_str!("../../../crates/gateway/src/http/upstream.rs");
const HEADING: &str = "### Adding each crate to your own axum app\n";

/// The section: from its heading to the next `## ` heading.
fn section() -> &'static str {
    let start = README.find(HEADING).expect("the README has the section");
    let rest = &README[start + HEADING.len()..];
    let end = rest.find("\n## ").unwrap_or(rest.len());
    &rest[..end]
}

/// The bodies of the blocks fenced exactly with "```{lang}".
fn blocks(text: &str, lang: &str) -> Vec<String> {
    let fence = format!("```{lang}\n");
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find(&fence) {
        let body = &rest[at + fence.len()..];
        let end = body.find("```\n").expect("a closed block");
        out.push(body[..end].trim_end_matches('\n').to_owned());
        rest = &body[end..];
    }
    out
}

#[test]
fn the_readme_code_is_the_quickstart_code() {
    let parts = blocks(section(), "rust");
    assert!(parts.len() > 1, "the section shows the quickstart in parts");
    let shown = parts.join("\n\n") + "\n";
    if shown != MAIN {
        let differs = shown
            .lines()
            .zip(MAIN.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(shown.lines().count().min(MAIN.lines().count()));
        panic!(
            "README.md's \"Adding each crate\" rust blocks differ from examples/quickstart/src/main.rs \
             from line {}: copy the file's code into the section",
            differs + 1
        );
    }
    let lines = MAIN.lines().count();
    let said = section().split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        said.contains(&format!("({lines} lines)")),
        "the section states the file's line count ({lines})"
    );
}

/// `(name, features, version)` of each dependency in a `[dependencies]` table.
fn dependencies(table: &toml::Table) -> Vec<(String, BTreeSet<String>, Option<String>)> {
    table
        .iter()
        .map(|(name, spec)| {
            let (features, version) = match spec {
                toml::Value::String(version) => (BTreeSet::new(), Some(version.clone())),
                toml::Value::Table(spec) => (
                    spec.get("features")
                        .and_then(toml::Value::as_array)
                        .map(|f| {
                            f.iter()
                                .filter_map(|f| f.as_str().map(str::to_owned))
                                .collect()
                        })
                        .unwrap_or_default(),
                    spec.get("version")
                        .and_then(toml::Value::as_str)
                        .map(str::to_owned),
                ),
                other => panic!("{name}: unexpected dependency spec {other}"),
            };
            (name.clone(), features, version)
        })
        .collect()
}

#[test]
fn the_readme_cargo_lines_are_the_quickstarts_dependencies() {
    let shown = blocks(section(), "toml");
    assert_eq!(shown.len(), 1, "one Cargo.toml block in the section");
    let shown: toml::Table = toml::from_str(&shown[0]).unwrap();
    let shown = dependencies(shown["dependencies"].as_table().unwrap());
    let manifest: toml::Table = toml::from_str(MANIFEST).unwrap();
    let used = dependencies(manifest["dependencies"].as_table().unwrap());
    let workspace: toml::Table = toml::from_str(WORKSPACE).unwrap();
    let versions = workspace["workspace"]["dependencies"].as_table().unwrap();

    let names = |deps: &[(String, BTreeSet<String>, Option<String>)]| {
        deps.iter().map(|d| d.0.clone()).collect::<BTreeSet<_>>()
    };
    assert_eq!(
        names(&shown),
        names(&used),
        "the README lists exactly the crates the quickstart uses"
    );
    for (name, features, version) in &shown {
        let (_, used_features, _) = used.iter().find(|d| &d.0 == name).unwrap();
        assert_eq!(
            features, used_features,
            "{name}: features differ from the quickstart's"
        );
        let version = version
            .as_deref()
            .unwrap_or_else(|| panic!("{name}: no version"));
        let pinned = match &versions[name.as_str()] {
            toml::Value::String(v) => v.clone(),
            toml::Value::Table(t) => t["version"].as_str().unwrap().to_owned(),
            other => panic!("{name}: {other}"),
        };
        assert!(
            pinned.starts_with(version),
            "{name}: the README says {version}, the workspace builds with {pinned}"
        );
    }
    // No sqlx line: the router's re-export is the one sqlx. Its version is named in the text.
    assert!(names(&shown).iter().all(|n| n != "sqlx"));
    let sqlx = versions["sqlx"]["version"].as_str().unwrap();
    assert!(
        section().contains(&format!("sqlx **{sqlx}**")),
        "the section names sqlx {sqlx}, the version &DbRouter implements"
    );
}

/// The README's gateway block is `HttpUpstream`'s doctest (compiled by `cargo test --doc`), its
/// hidden lines aside.
#[test]
fn the_readme_gateway_block_is_the_compiled_upstream_example() {
    let at = README
        .find("Balance over instances (a gateway)")
        .expect("the README has the gateway paragraph");
    let shown = blocks(&README[at..], "rust")
        .into_iter()
        .next()
        .expect("a rust block after it");
    let start = UPSTREAM
        .find("/// ```no_run\n/// use axum::{Router, body::Body, extract::Request};")
        .expect("HttpUpstream's doc example");
    let doc: Vec<&str> = UPSTREAM[start..]
        .lines()
        .skip(1)
        .take_while(|l| l.trim() != "/// ```")
        .map(|l| l.trim_start().strip_prefix("///").unwrap_or(l))
        .map(|l| l.strip_prefix(' ').unwrap_or(l))
        .filter(|l| !l.starts_with("# ") && *l != "#")
        .collect();
    assert_eq!(
        shown,
        doc.join("\n").trim_end(),
        "README.md's gateway block differs from HttpUpstream's doc example"
    );
}
