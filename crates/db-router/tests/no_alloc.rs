//! Classifying allocates nothing, with the compiled-in catalog or a server-sized one (the
//! catalog lookups borrow the name). Alone in its binary: the allocator's counts are global.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::alloc::System;

use herd_db_router::{Catalog, CatalogFunction, Classifier, FunctionPolicy, Volatility, classify};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// A catalog the size of a real server's: 3,300 functions, a tenth of them volatile.
fn server_sized_catalog() -> Catalog {
    Catalog::from_functions((0..3300).map(|i| {
        let volatility = if i % 10 == 0 {
            Volatility::Volatile
        } else {
            Volatility::Stable
        };
        CatalogFunction::new(
            format!("schema{}", i % 7),
            format!("function_{i}"),
            volatility,
        )
        .one_argument(i % 3 == 0)
    }))
    .with_volatile_operators(["###"])
}

#[test]
fn classifying_allocates_nothing() {
    let corpus = common::corpus();
    let with_catalog = Classifier::new(["audit.log_access", "bump"], FunctionPolicy::WriteList)
        .with_catalog(server_sized_catalog());
    let strict = Classifier::new(Vec::<String>::new(), FunctionPolicy::KnownReadOnly)
        .with_catalog(server_sized_catalog());
    // Warm up: lazily built statics are built once.
    for entry in &corpus {
        classify(&entry.sql);
        with_catalog.classify(&entry.sql);
        strict.classify(&entry.sql);
    }
    let region = Region::new(GLOBAL);
    let mut primaries = 0;
    for entry in &corpus {
        primaries += usize::from(classify(&entry.sql).is_primary());
        primaries += usize::from(with_catalog.classify(&entry.sql).is_primary());
        primaries += usize::from(strict.classify(&entry.sql).is_primary());
    }
    let change = region.change();
    assert_eq!(
        change.allocations, 0,
        "classification allocated: {change:?}"
    );
    assert!(primaries > 0);
    // The catalog lookups do find things.
    assert!(
        with_catalog
            .classify("SELECT schema3.function_10(1)")
            .is_primary()
    );
    assert!(with_catalog.classify("SELECT function_11(1)").is_replica());
    assert!(
        with_catalog
            .classify("SELECT t.function_30 FROM t")
            .is_primary()
    );
}
