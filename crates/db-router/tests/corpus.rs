//! The statement corpus (`tests/corpus.txt`) classifies as expected.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use herd_db_router::classify;

#[test]
fn corpus_routes_and_reasons() {
    let corpus = common::corpus();
    assert!(
        corpus.len() >= 150,
        "the corpus must hold at least 150 statements, has {}",
        corpus.len()
    );
    let mut wrong = Vec::new();
    for entry in &corpus {
        let got = classify(&entry.sql);
        if got.as_str() != entry.route || got.reason().as_str() != entry.reason {
            wrong.push(format!(
                "line {}: {:?} expected {}:{} got {}:{}",
                entry.line,
                entry.sql,
                entry.route,
                entry.reason,
                got.as_str(),
                got.reason()
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} misclassified:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}
