use super::*;

fn route(sql: &str) -> Route {
    classify(sql)
}

#[test]
fn reads_go_to_replicas() {
    for sql in [
        "SELECT 1",
        "with a as (select 1) select * from a",
        "VALUES (1)",
        "TABLE t",
        "SHOW x",
        "EXPLAIN SELECT 1",
        "(SELECT 1)",
    ] {
        assert_eq!(route(sql), Route::Replica(Reason::ReadOnly), "{sql}");
    }
}

#[test]
fn hint_only_counts_before_the_statement() {
    assert_eq!(
        route("-- why\n/* herd:primary */ SELECT 1"),
        Route::Primary(Reason::Hint)
    );
    assert_eq!(
        route("/* note */ /* herd:primary */ SELECT 1"),
        Route::Primary(Reason::Hint)
    );
    assert_eq!(
        route("/* herd:primaryx */ SELECT 1"),
        Route::Replica(Reason::ReadOnly)
    );
    assert_eq!(
        route("SELECT /* herd:primary */ 1"),
        Route::Replica(Reason::ReadOnly)
    );
}

#[test]
fn line_comment_hides_the_rest_of_its_line_only() {
    assert_eq!(
        route("SELECT 1 -- FOR UPDATE\n"),
        Route::Replica(Reason::ReadOnly)
    );
    assert_eq!(
        route("SELECT * FROM t FOR -- c\n UPDATE"),
        Route::Primary(Reason::LockingClause)
    );
    assert_eq!(
        route("SELECT 1 -- c\n; SELECT 2"),
        Route::Primary(Reason::MultipleStatements)
    );
}

#[test]
fn cte_names_with_column_lists_are_not_calls() {
    let strict = Classifier::new(Vec::<String>::new(), FunctionPolicy::KnownReadOnly);
    for sql in [
        "WITH t(a, b) AS (SELECT 1, 2) SELECT a FROM t",
        "WITH RECURSIVE t(n) AS (VALUES (1) UNION ALL SELECT n + 1 FROM t WHERE n < 3) SELECT n FROM t",
        "WITH a AS (SELECT 1), b(x) AS (SELECT 2) SELECT * FROM a, b",
        "SELECT x::numeric(10, 2), CAST(y AS varchar(3)) FROM t",
        "SELECT * FROM generate_series(1, 3) AS g(i)",
        "SELECT count(*) FILTER (WHERE a) OVER (PARTITION BY b) FROM t",
        "SELECT * FROM t WHERE a IN (1, 2) AND EXISTS (SELECT 1) AND b = ANY (ARRAY[1])",
    ] {
        assert_eq!(
            strict.classify(sql),
            Route::Replica(Reason::ReadOnly),
            "{sql}"
        );
    }
}

#[test]
fn strict_policy_sends_unknown_and_quoted_calls_to_the_primary() {
    let strict = Classifier::new(Vec::<String>::new(), FunctionPolicy::KnownReadOnly);
    assert_eq!(
        strict.classify("SELECT refresh_cache()"),
        Route::Primary(Reason::UnknownFunction)
    );
    assert_eq!(
        strict.classify("SELECT app.f(1)"),
        Route::Primary(Reason::UnknownFunction)
    );
    assert_eq!(
        strict.classify(r#"SELECT "Lower"('x')"#),
        Route::Primary(Reason::UnknownFunction)
    );
    assert_eq!(
        strict.classify("SELECT LOWER('x')"),
        Route::Replica(Reason::ReadOnly)
    );
    assert_eq!(strict.policy(), FunctionPolicy::KnownReadOnly);
}

#[test]
fn write_list_matches_bare_and_qualified_names_case_insensitively() {
    let c = Classifier::new([" Audit.Touch ", "bump", ""], FunctionPolicy::WriteList);
    assert_eq!(
        c.classify("SELECT BUMP(1)"),
        Route::Primary(Reason::ListedFunction)
    );
    assert_eq!(
        c.classify("SELECT app.bump(1)"),
        Route::Primary(Reason::ListedFunction)
    );
    assert_eq!(
        c.classify("SELECT audit.touch(1)"),
        Route::Primary(Reason::ListedFunction)
    );
    assert_eq!(
        c.classify(r#"SELECT "audit".touch(1)"#),
        Route::Primary(Reason::ListedFunction)
    );
    assert_eq!(
        c.classify("SELECT touch(1)"),
        Route::Replica(Reason::ReadOnly)
    );
    assert_eq!(
        c.classify("SELECT bump FROM t"),
        Route::Replica(Reason::ReadOnly)
    );
}

#[test]
fn overlong_names_are_unknown_not_a_panic() {
    let long = "f".repeat(200);
    assert_eq!(
        route(&format!("SELECT {long}(1)")),
        Route::Replica(Reason::ReadOnly)
    );
    let strict = Classifier::new(Vec::<String>::new(), FunctionPolicy::KnownReadOnly);
    assert_eq!(
        strict.classify(&format!("SELECT {long}(1)")),
        Route::Primary(Reason::UnknownFunction)
    );
}

#[test]
fn route_helpers_and_display() {
    let r = route("SELECT 1 FOR UPDATE");
    assert!(r.is_primary() && !r.is_replica());
    assert_eq!(r.as_str(), "primary");
    assert_eq!(r.reason(), Reason::LockingClause);
    assert_eq!(r.to_string(), "primary (locking_clause)");
    assert_eq!(route("SELECT 1").to_string(), "replica (read_only)");
}

/// Every string over a small alphabet of SQL-significant characters, up to length 6:
/// classification never panics, and anything with an unbalanced quote is never a replica read.
#[test]
fn never_panics_on_any_short_input() {
    const ALPHABET: &[u8] = b"S'\"$-/*\\;(e) ";
    let mut buf = Vec::new();
    fn go(buf: &mut Vec<u8>, depth: usize) {
        let sql = String::from_utf8_lossy(buf).into_owned();
        let _ = classify(&sql);
        let _ = Classifier::new(["x"], FunctionPolicy::KnownReadOnly).classify(&sql);
        if depth == 0 {
            return;
        }
        for &b in ALPHABET {
            buf.push(b);
            go(buf, depth - 1);
            buf.pop();
        }
    }
    go(&mut buf, 5);
    // Non-ASCII and invalid-looking input.
    for sql in ["SÉLECT 1", "SELECT 'é", "\u{0}", "SELECT $é$ x $é$", "E'\\"] {
        let _ = classify(sql);
    }
}
