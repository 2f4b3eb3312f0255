//! herd-db-router's SQL lexer and classifier (`classify`, `Classifier::classify`) on arbitrary
//! text. Must not panic, must give the same answer twice, and a stricter configuration must
//! never send to a replica what a looser one sends to the primary: the strict function policy
//! and a write list only ever move statements to the primary.
#![no_main]

use std::sync::OnceLock;

use herd_db_router::{Classifier, FunctionPolicy, classify};
use libfuzzer_sys::fuzz_target;

struct Classifiers {
    strict: Classifier,
    write_list: Classifier,
}

fn classifiers() -> &'static Classifiers {
    static CLASSIFIERS: OnceLock<Classifiers> = OnceLock::new();
    CLASSIFIERS.get_or_init(|| Classifiers {
        strict: Classifier::new(Vec::<String>::new(), FunctionPolicy::KnownReadOnly),
        write_list: Classifier::new(
            ["bump_counter", "audit.\"Log\"", "f"],
            FunctionPolicy::WriteList,
        ),
    })
}

fuzz_target!(|data: &[u8]| {
    let sql = String::from_utf8_lossy(data);
    let route = classify(&sql);
    assert_eq!(route, classify(&sql), "not deterministic: {sql:?}");
    let c = classifiers();
    let strict = c.strict.classify(&sql);
    let listed = c.write_list.classify(&sql);
    if strict.is_replica() {
        assert!(
            route.is_replica(),
            "strict policy sends {sql:?} to a replica, the default to the primary ({route:?})"
        );
    }
    if listed.is_replica() {
        assert!(
            route.is_replica(),
            "a write list sends {sql:?} to a replica, none to the primary ({route:?})"
        );
    }
});
