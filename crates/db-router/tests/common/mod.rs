//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

/// One corpus line: expected route and reason, and the statement.
#[derive(Debug)]
pub struct Entry {
    pub line: usize,
    pub route: String,
    pub reason: String,
    pub sql: String,
}

/// Parses `tests/corpus.txt`.
pub fn corpus() -> Vec<Entry> {
    include_str!("../corpus.txt")
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.starts_with('#') && !l.is_empty())
        .map(|(i, l)| {
            let (expect, sql) = l.split_once(' ').unwrap_or((l, ""));
            let (route, reason) = expect.split_once(':').expect("route:reason");
            Entry {
                line: i + 1,
                route: route.into(),
                reason: reason.into(),
                sql: sql.into(),
            }
        })
        .collect()
}
