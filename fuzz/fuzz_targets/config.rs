//! Configuration parsing: TOML text into herd's public configuration types (the gateway's
//! config file with its `${NAME}` substitution, the HTTP upstream and its balancer, rate limits,
//! request observation, sessions and their cookies, the database router, the cache
//! and its HTTP layer), then into the services they configure where that needs no network.
//! Whatever the text, parsing and building may refuse it with an error and must never panic.
#![no_main]

use std::sync::OnceLock;

use herd_cache_cluster::http::{HttpCacheConfig, HttpCacheLayer};
use herd_cache_cluster::{Backend, Cache, CacheConfig};
use herd_db_router::RouterConfig;
use herd_gateway::config::FileConfig;
use herd_gateway::http::{HttpUpstream, HttpUpstreamConfig};
use herd_gateway::observe::{ObserveConfig, ObserveLayer};
use herd_gateway::rate_limit::{RateLimitConfig, RateLimitLayer};
use herd_lb_core::BalancerConfig;
use herd_session::{CookieConfig, Key, MemoryStore, SessionConfig, SessionLayer, SigningKeys};
use libfuzzer_sys::fuzz_target;

/// A stand-in endpoint service: only the balancer's construction is under test.
type Endpoint = tower::util::BoxCloneSyncService<(), (), std::convert::Infallible>;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("runtime: {e}"))
    })
}

fn keys() -> SigningKeys {
    SigningKeys::new(Key::from_bytes(&[7_u8; 32]).unwrap_or_else(|e| panic!("key: {e}")))
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Each type from the whole text, and from the table of its own name if there is one.
    let doc: Option<toml::Table> = toml::from_str(text).ok();
    let section = |name: &str| -> Option<String> {
        let table = doc.as_ref()?.get(name)?.as_table()?;
        toml::to_string(table).ok()
    };
    let texts = |name: &str| [Some(text.to_owned()), section(name)].into_iter().flatten();

    for text in texts("upstream") {
        if let Ok(config) = toml::from_str::<HttpUpstreamConfig>(&text) {
            // No runtime here: active health checks are refused, everything else is built.
            let _ = HttpUpstream::from_config(&config);
        }
    }
    for text in texts("balancer") {
        if let Ok(config) = toml::from_str::<BalancerConfig>(&text) {
            let _ = config
                .builder::<String, Endpoint, ()>()
                .and_then(|b| b.build());
        }
    }
    // The gateway's whole file, `${NAME}` substitution included (names read back as values,
    // unset ones refused), and the summary `--check` prints.
    let vars = |name: &str| (name.len() % 2 == 0).then(|| format!("v{name}"));
    if let Ok(config) = FileConfig::parse_with_vars(text, vars) {
        let _ = config.summary();
    }
    for text in texts("observe") {
        if let Ok(config) = toml::from_str::<ObserveConfig>(&text) {
            let _ = ObserveLayer::new(&config);
        }
    }
    for text in texts("rate_limit") {
        if let Ok(config) = toml::from_str::<RateLimitConfig>(&text) {
            let _ = RateLimitLayer::new(&config);
        }
    }
    for text in texts("session") {
        if let Ok(config) = toml::from_str::<SessionConfig>(&text) {
            let _ = config.validate();
            let _ = SessionLayer::builder(MemoryStore::new(), keys())
                .config(config)
                .build();
        }
    }
    for text in texts("cookie") {
        let _ = toml::from_str::<CookieConfig>(&text);
    }
    for text in texts("database") {
        let _ = toml::from_str::<RouterConfig>(&text);
    }
    for text in texts("cache") {
        if let Ok(config) = toml::from_str::<CacheConfig>(&text) {
            let built =
                runtime().block_on(Cache::builder(Backend::memory()).config(config).build());
            if let Ok(cache) = built {
                for text in texts("http_cache") {
                    if let Ok(config) = toml::from_str::<HttpCacheConfig>(&text) {
                        let _ = HttpCacheLayer::with_config(cache.clone(), &config);
                    }
                }
            }
        }
    }
});
