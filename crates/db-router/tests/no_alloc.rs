//! Classifying allocates nothing, with the compiled-in catalog or a server-sized one (the
//! catalog lookups borrow the name); the read-your-writes layer allocates only the client's
//! scope (and its request extension) for a request that needs no I/O. Alone in their binary, one test at a time: the
//! allocator's counts are global.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::alloc::System;
use std::future::{Future, ready};
use std::pin::pin;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use herd_db_router::{
    Catalog, CatalogFunction, Classifier, DbRouter, FunctionPolicy, NodeConfig,
    ReadYourWritesLayer, RouterConfig, Volatility, classify,
};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tower::{Layer, Service};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Held by each test while it counts.
static COUNTING: Mutex<()> = Mutex::new(());

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
    let _counting = COUNTING.lock().unwrap();
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

/// A request with no token that does not write: the layer's response future is not boxed, so
/// the only allocations are the client's `Consistency` (an `Arc`) and the box `http` keeps
/// each request extension in.
#[test]
fn the_layer_allocates_only_the_scope_when_no_io_is_needed() {
    let _counting = COUNTING.lock().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // No server: the router builds (unreachable nodes are only reported) and takes no part.
    let router = runtime
        .block_on(DbRouter::connect(RouterConfig {
            primary: Some(NodeConfig::new("postgres://app@127.0.0.1:1/app")),
            check_timeout: Duration::from_millis(200),
            ..RouterConfig::default()
        }))
        .unwrap();
    let mut service =
        ReadYourWritesLayer::header(router).layer(tower::service_fn(|_: http::Request<()>| {
            ready(Ok::<_, std::convert::Infallible>(http::Response::new(())))
        }));
    let request = || {
        let mut request = http::Request::new(());
        // The extension map exists already, with room for the layer's.
        request.extensions_mut().insert(7_u8);
        request
    };
    let mut cx = Context::from_waker(Waker::noop());
    let mut serve = |request| {
        let response = pin!(service.call(request)).poll(&mut cx);
        assert!(matches!(response, Poll::Ready(Ok(_))));
    };
    serve(request()); // warm up: the scope registers with herd-context once
    let request = request();
    let region = Region::new(GLOBAL);
    serve(request);
    let change = region.change();
    assert_eq!(change.allocations, 2, "{change:?}");
}
