use super::*;
use crate::{Catalog, CatalogFunction, Volatility};

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
    const ALPHABET: &[u8] = b"S'\"$-/*\\;(e)U&\r ";
    let mut buf = Vec::new();
    let strict = Classifier::new(["x"], FunctionPolicy::KnownReadOnly)
        .with_catalog(Catalog::builtin().with_standard_conforming_strings(false));
    fn go(buf: &mut Vec<u8>, depth: usize, strict: &Classifier) {
        let sql = String::from_utf8_lossy(buf).into_owned();
        let _ = classify(&sql);
        let _ = strict.classify(&sql);
        if depth == 0 {
            return;
        }
        for &b in ALPHABET {
            buf.push(b);
            go(buf, depth - 1, strict);
            buf.pop();
        }
    }
    go(&mut buf, 5, &strict);
    // Non-ASCII and invalid-looking input.
    for sql in ["SÉLECT 1", "SELECT 'é", "\u{0}", "SELECT $é$ x $é$", "E'\\"] {
        let _ = classify(sql);
    }
}

/// The grammar traps of issue #17: the main statement, locking clauses and calls are found
/// wherever they stand.
#[test]
fn calls_and_clauses_count_wherever_they_stand() {
    for (sql, reason) in [
        // A WITH followed by a parenthesised body: ORDER BY / LIMIT after it are not CTE names.
        (
            "WITH a AS (SELECT 1) (SELECT * FROM a) ORDER BY pg_try_advisory_lock(1)",
            Reason::WritingFunction,
        ),
        (
            "WITH a AS (SELECT 1) (SELECT 1) UNION (SELECT 2) LIMIT nextval('s')",
            Reason::WritingFunction,
        ),
        (
            "WITH a(x) AS (SELECT 1), b(y) AS (SELECT 2) (TABLE a) OFFSET setseed(0.5)::int",
            Reason::VolatileFunction,
        ),
        (
            "WITH x AS (SELECT 1) (SELECT * FROM x FOR SHARE)",
            Reason::LockingClause,
        ),
        (
            "(SELECT 1) UNION (SELECT 2 FOR UPDATE)",
            Reason::LockingClause,
        ),
        ("TABLE t FOR NO KEY UPDATE", Reason::LockingClause),
        (
            "SELECT * FROM t WHERE EXISTS (WITH d AS (DELETE FROM q RETURNING 1) SELECT 1 FROM d)",
            Reason::DataModifying,
        ),
        // A call after an `OPERATOR(...)` group is an operand, not an alias.
        (
            "SELECT true OPERATOR(pg_catalog.=) pg_try_advisory_lock(1)",
            Reason::WritingFunction,
        ),
        // Attribute notation: `x.f` calls `f(x)`.
        (
            "SELECT (1::bigint).pg_advisory_lock",
            Reason::VolatileFunction,
        ),
        (
            "SELECT ('orders_id_seq'::regclass).nextval",
            Reason::VolatileFunction,
        ),
        (
            "SELECT (1::bigint).\"pg_advisory_lock\" AS x",
            Reason::VolatileFunction,
        ),
        // Less-known built-ins and extension functions.
        ("SELECT setseed(0.5)", Reason::VolatileFunction),
        ("SELECT pg_export_snapshot()", Reason::VolatileFunction),
        (
            "SELECT brin_summarize_new_values('i'::regclass)",
            Reason::VolatileFunction,
        ),
        (
            "SELECT query_to_xml('DELETE FROM t RETURNING 1', true, false, '')",
            Reason::VolatileFunction,
        ),
        (
            "SELECT * FROM dblink('dbname=x', 'SELECT 1') AS t(a int)",
            Reason::WritingFunction,
        ),
        // Names written with Unicode escapes or quotes resolve as the server resolves them.
        (
            r#"SELECT U&"\0070g_advisory_lock"(1)"#,
            Reason::WritingFunction,
        ),
        (
            "SELECT U&\"!0070g_advisory_lock\" UESCAPE '!' (1)",
            Reason::WritingFunction,
        ),
        (r#"SELECT "pg_advisory_lock"(1)"#, Reason::WritingFunction),
        (
            r#"SELECT U&"\0070g_advisory_lock" UESCAPE 'ab' (1)"#,
            Reason::UnknownFunction,
        ),
        // Only on the connection that made it.
        ("SELECT * FROM pg_temp.scratch", Reason::SessionBound),
        ("SELECT * FROM \"pg_temp_3\".scratch", Reason::SessionBound),
        ("EXPLAIN EXECUTE q(1)", Reason::SessionBound),
        ("EXPLAIN (COSTS OFF) EXECUTE q", Reason::SessionBound),
        (
            "EXPLAIN (COSTS OFF, ANALYZE) SELECT 1",
            Reason::ExplainAnalyze,
        ),
        (
            "EXPLAIN VERBOSE DECLARE c CURSOR FOR SELECT 1",
            Reason::NotReadOnly,
        ),
        // scan.l ends a `--` comment at a carriage return too.
        ("SELECT 1 -- c\rFOR UPDATE", Reason::LockingClause),
        ("SELECT 1 -- c\r; SELECT 2", Reason::MultipleStatements),
        ("SELECT 1\0", Reason::Unterminated),
    ] {
        assert_eq!(route(sql), Route::Primary(reason), "{sql}");
    }
    for sql in [
        "SELECT x.status, x.total, u.id FROM t x JOIN u ON u.id = x.user_id",
        "SELECT t.random, (1).abs FROM t",
        "WITH a AS (SELECT 1) (SELECT * FROM a) ORDER BY 1 LIMIT 5",
        r#"SELECT U&"d\0061t" FROM t"#,
        "SELECT * FROM generate_series(1, 3) WITH ORDINALITY AS g(i, n)",
        "SELECT pg_temporary.x FROM pg_temporary",
        "EXPLAIN (FORMAT JSON, COSTS OFF) WITH a AS (SELECT 1) SELECT * FROM a",
        "SELECT 'a' -- c\n'b' AS continued",
    ] {
        assert_eq!(route(sql), Route::Replica(Reason::ReadOnly), "{sql}");
    }
}

#[test]
fn strict_policy_knows_syntax_from_calls() {
    let strict = Classifier::new(Vec::<String>::new(), FunctionPolicy::KnownReadOnly);
    for sql in [
        "WITH t(a) AS (SELECT 1) (SELECT * FROM t) ORDER BY my_func(1)",
        "SELECT 1 OPERATOR(pg_catalog.+) my_func(1)",
        "WITH a AS (SELECT 1) SELECT 1 SEARCH DEPTH FIRST BY x SET o (SELECT 1) ORDER BY my_func(1)",
    ] {
        assert_eq!(
            strict.classify(sql),
            Route::Primary(Reason::UnknownFunction),
            "{sql}"
        );
    }
    for sql in [
        "SELECT * FROM (WITH t(a) AS (SELECT 1) SELECT a FROM t) s(b)",
        "SELECT x::pg_catalog.numeric(10, 2) FROM t",
        "SELECT lower(a) FROM generate_series(1, 2) WITH ORDINALITY AS t(a, n)",
    ] {
        assert_eq!(
            strict.classify(sql),
            Route::Replica(Reason::ReadOnly),
            "{sql}"
        );
    }
}

fn app_catalog() -> Catalog {
    Catalog::from_functions([
        CatalogFunction::new("app", "bump", Volatility::Volatile).one_argument(true),
        CatalogFunction::new("app", "MixedCase", Volatility::Volatile),
        CatalogFunction::new("app", "price", Volatility::Stable),
        CatalogFunction::new("reports", "touch", Volatility::Volatile),
        CatalogFunction::new("public", "touch", Volatility::Immutable),
        CatalogFunction::new("pg_catalog", "random", Volatility::Volatile),
        CatalogFunction::new("pg_catalog", "lower", Volatility::Immutable),
    ])
    .with_volatile_operators(["###"])
}

#[test]
fn catalog_volatile_functions_go_to_the_primary_by_any_name() {
    let c = Classifier::default().with_catalog(app_catalog());
    for sql in [
        "SELECT bump(1)",
        "SELECT app.bump(1)",
        "SELECT APP.BUMP(1)",
        "SELECT \"app\".\"bump\"(1)",
        r#"SELECT U&"\0062ump"(1)"#,
        "SELECT t.bump FROM t",
        "SELECT \"MixedCase\"()",
        "SELECT app.\"MixedCase\"()",
        "SELECT touch()",
        "SELECT reports.touch()",
        "SELECT 1 ### 2",
        "SELECT 1 OPERATOR(app.###) 2",
        "SELECT * FROM t ORDER BY app.bump(t.id)",
    ] {
        assert_eq!(
            c.classify(sql),
            Route::Primary(Reason::VolatileFunction),
            "{sql}"
        );
    }
    for sql in [
        "SELECT mixedcase()",
        "SELECT public.touch()",
        "SELECT price(1), random(), lower('x')",
        "SELECT 1 ## 2",
        // The write list still works beside the catalog; built-ins keep their reasons.
    ] {
        assert_eq!(c.classify(sql), Route::Replica(Reason::ReadOnly), "{sql}");
    }
    assert_eq!(
        c.classify("SELECT nextval('s')"),
        Route::Primary(Reason::WritingFunction)
    );
    // With the catalog read, built-ins the server does not mark volatile are read-only to the
    // strict policy too, and unknown names are not.
    let strict = Classifier::new(Vec::<String>::new(), FunctionPolicy::KnownReadOnly)
        .with_catalog(app_catalog());
    assert!(strict.classify("SELECT price(1), touch()").is_primary());
    assert!(
        strict
            .classify("SELECT price(1), public.touch()")
            .is_primary(),
        "touch is volatile in reports"
    );
    assert!(strict.classify("SELECT price(1)").is_replica());
    assert_eq!(
        strict.classify("SELECT nobody(1)"),
        Route::Primary(Reason::UnknownFunction)
    );
}

#[test]
fn catalog_swaps_are_shared_by_clones() {
    let c = Classifier::default();
    let clone = c.clone();
    assert!(clone.classify("SELECT bump(1)").is_replica());
    c.set_catalog(app_catalog());
    assert!(clone.classify("SELECT bump(1)").is_primary());
    assert_eq!(clone.catalog().functions(), 7);
}

/// scan.l `{xqstart}`: with standard_conforming_strings off, `\'` does not end a plain string.
#[test]
fn standard_conforming_strings_off_is_honoured() {
    let on = Classifier::default();
    let off = Classifier::default()
        .with_catalog(Catalog::builtin().with_standard_conforming_strings(false));
    let hidden = r"SELECT 'a\' , pg_advisory_lock(1) --'";
    assert_eq!(on.classify(hidden), Route::Primary(Reason::WritingFunction));
    assert_eq!(off.classify(hidden), Route::Replica(Reason::ReadOnly));
    let shown = r"SELECT 'a\'' , pg_advisory_lock(1) -- '";
    assert_eq!(off.classify(shown), Route::Primary(Reason::WritingFunction));
    assert!(on.classify(shown).is_replica());
}

#[test]
fn explain_without_a_statement_is_not_a_read() {
    for sql in [
        "EXPLAIN",
        "EXPLAIN (COSTS OFF)",
        "EXPLAIN 'x'",
        "EXPLAIN VERBOSE",
    ] {
        assert_eq!(route(sql), Route::Primary(Reason::NotReadOnly), "{sql}");
    }
}
