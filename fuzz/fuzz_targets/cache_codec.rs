//! herd-cache-cluster's stored-value codec (a 16-byte header, then postcard), through the
//! public cache over the in-memory backend: arbitrary bytes stored raw under a key are read
//! back as several value types (a foreign, truncated or mistyped value must be a miss, never a
//! panic), and arbitrary values with arbitrary TTLs written through the cache must read back
//! equal while fresh.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use arbitrary::Arbitrary;
use herd_cache_cluster::{Backend, Cache, MemoryBackend};
use libfuzzer_sys::fuzz_target;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Arbitrary)]
struct Record {
    id: u64,
    name: String,
    tags: Vec<String>,
    score: Option<i32>,
    blob: Vec<u8>,
    nested: Option<Box<Record>>,
    flag: bool,
}

#[derive(Debug, Arbitrary)]
enum Op<'a> {
    /// These bytes under the key, then read as each type.
    Raw { bytes: &'a [u8], ttl_ms: u32 },
    /// A record through the cache; it must come back while fresh.
    Record { value: Record, ttl_s: u64 },
    /// A string through the cache.
    Text { value: String, ttl_s: u64 },
}

struct Fixture {
    runtime: tokio::runtime::Runtime,
    backend: MemoryBackend,
    cache: Cache,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("runtime: {e}"));
        let backend = MemoryBackend::new();
        let cache = runtime
            .block_on(
                Cache::builder(Backend::Memory(backend.clone()))
                    .namespace("fuzz")
                    .without_l1()
                    .build(),
            )
            .unwrap_or_else(|e| panic!("cache: {e}"));
        Fixture {
            runtime,
            backend,
            cache,
        }
    })
}

fuzz_target!(|ops: Vec<Op<'_>>| {
    let f = fixture();
    f.runtime.block_on(async {
        for op in ops {
            match op {
                Op::Raw { bytes, ttl_ms } => {
                    let ttl = Duration::from_millis(u64::from(ttl_ms).max(1));
                    f.backend
                        .insert_raw(f.cache.backend_key("raw"), bytes.to_vec(), ttl);
                    let _ = f.cache.get::<Record>("raw").await;
                    let _ = f.cache.get::<String>("raw").await;
                    let _ = f.cache.get::<Vec<u64>>("raw").await;
                    let _ = f.cache.get::<(u8, Option<bool>, f64)>("raw").await;
                    let _ = f.cache.get::<()>("raw").await;
                }
                Op::Record { value, ttl_s } => {
                    let ttl = Duration::from_secs(ttl_s.max(3600));
                    if f.cache.set("record", &value, ttl).await.is_ok() {
                        let back = f.cache.get::<Record>("record").await;
                        assert_eq!(back.as_ref(), Some(&value), "ttl {ttl:?}");
                    }
                }
                Op::Text { value, ttl_s } => {
                    let ttl = Duration::from_secs(ttl_s.max(3600));
                    if f.cache.set("text", &value, ttl).await.is_ok() {
                        let back = f.cache.get::<String>("text").await;
                        assert_eq!(back.as_ref(), Some(&value), "ttl {ttl:?}");
                    }
                }
            }
        }
    });
});
