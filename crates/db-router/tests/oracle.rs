//! An oracle that PostgreSQL decides: generated statements that the classifier sends to a
//! replica run on a real hot standby, and must not fail as a write there (SQLSTATE 25006 or
//! a "during recovery" refusal), take a lock beyond a read's, change a setting, or call a
//! volatile function outside the safe list.
//!
//! A proptest grammar builds the statements (every statement form the classifier routes,
//! data-modifying CTEs, parenthesised and set-operation bodies, `ORDER BY`/`LIMIT`/`OFFSET`
//! expressions, sub-selects, function arguments, `EXPLAIN`, session statements), with
//! comments, quoting, `U&` escapes, casing and `standard_conforming_strings` varied, and knows
//! for each one whether it must run on the primary (its ground truth). The classifier uses
//! the catalog read from the primary, as the router does. Each replica-routed statement runs
//! in its own transaction, rolled back, followed in the same round trip by a check of
//! `pg_locks`, `pg_settings` and `pg_stat_xact_user_functions`.
//!
//! Run with: `cargo test -p herd-db-router --test oracle -- --nocapture`
//! (`HERD_ORACLE_SEED=<n>` replays a run, `HERD_ORACLE_CASES=<n>` sets its size, the default
//! being 12,000 statements; `HERD_ORACLE_CATALOG=builtin` classifies with the compiled-in
//! lists instead of the server's catalog, to see what the catalog catches;
//! `HERD_ORACLE_DUMP=<file>` writes every generated statement there, NUL-separated, each
//! preceded by its ground truth).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use herd_db_router::{Catalog, Classifier, DbRouter, NodeConfig, RouterConfig, SAFE_VOLATILE};
use herd_testkit::shared;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use sqlx::postgres::PgConnection;
use sqlx::{Connection, Either, Row};

/// The schema the statements run against (on the primary; the standbys replay it).
const SCHEMA: &str = r#"
DROP SCHEMA IF EXISTS app CASCADE;
DROP SCHEMA IF EXISTS reports CASCADE;
DROP FUNCTION IF EXISTS public.touch();
CREATE SCHEMA app;
CREATE SCHEMA reports;
CREATE TABLE app.items (id bigint PRIMARY KEY, name text, n int);
INSERT INTO app.items SELECT g, 'item ' || g, g % 7 FROM generate_series(1, 20) g;
CREATE TABLE app.log (v int);
CREATE SEQUENCE app.seq;
-- Writes, locks and session changes that no compiled-in list knows.
CREATE FUNCTION app.bump(bigint) RETURNS int LANGUAGE sql VOLATILE AS
  $$ INSERT INTO app.log VALUES ($1::int) RETURNING v $$;
CREATE FUNCTION app.lock_it(bigint) RETURNS int LANGUAGE plpgsql VOLATILE AS
  $$ BEGIN PERFORM pg_advisory_lock($1); RETURN 1; END $$;
CREATE FUNCTION app.flag_it() RETURNS text LANGUAGE sql VOLATILE AS
  $$ SELECT set_config('app.flag', 'on', false) $$;
CREATE FUNCTION app."MixedCase"() RETURNS int LANGUAGE plpgsql VOLATILE AS
  $$ BEGIN PERFORM pg_advisory_lock(77); RETURN 2; END $$;
CREATE FUNCTION reports.touch() RETURNS int LANGUAGE plpgsql VOLATILE AS
  $$ BEGIN PERFORM pg_try_advisory_lock(78); RETURN 3; END $$;
CREATE FUNCTION app.op_lock(int, int) RETURNS int LANGUAGE plpgsql VOLATILE AS
  $$ BEGIN PERFORM pg_advisory_lock($1); RETURN $2; END $$;
CREATE OPERATOR app.### (LEFTARG = int, RIGHTARG = int, FUNCTION = app.op_lock);
-- Read-only ones, and a same-named one elsewhere.
CREATE FUNCTION app.price(int) RETURNS numeric LANGUAGE sql STABLE AS $$ SELECT $1 * 1.5 $$;
CREATE FUNCTION app.pure(int) RETURNS int LANGUAGE sql IMMUTABLE AS $$ SELECT $1 + 1 $$;
CREATE FUNCTION public.touch() RETURNS int LANGUAGE sql IMMUTABLE AS $$ SELECT 4 $$;
CREATE EXTENSION IF NOT EXISTS pgcrypto;
"#;

/// A piece of SQL and, when it forces the primary, why (the generator's ground truth).
#[derive(Debug, Clone)]
struct Sql {
    text: String,
    primary: Option<&'static str>,
}

impl Sql {
    fn read(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            primary: None,
        }
    }

    fn primary(text: impl Into<String>, why: &'static str) -> Self {
        Self {
            text: text.into(),
            primary: Some(why),
        }
    }

    fn join(parts: &[&Sql]) -> Self {
        let mut text = String::new();
        let mut primary = None;
        for p in parts {
            text.push_str(&p.text);
            primary = primary.or(p.primary);
        }
        Self { text, primary }
    }

    /// The same SQL seen only as a plan (plain `EXPLAIN` runs nothing).
    fn not_executed(mut self) -> Self {
        self.primary = None;
        self
    }
}

/// One generated case: the statement, and the `standard_conforming_strings` it is read with.
#[derive(Debug, Clone)]
struct Case {
    sql: Sql,
    standard_strings: bool,
    /// Lexical soup: no ground truth, the server alone decides what ran.
    soup: bool,
}

/// Whitespace between tokens: spaces, newlines, comments (`--` ended by `\n` or by `\r`).
fn gap() -> BoxedStrategy<String> {
    prop_oneof![
        12 => Just(" ".to_string()),
        2 => Just("\n".to_string()),
        1 => Just("\t".to_string()),
        1 => Just(" /* c */ ".to_string()),
        1 => Just(" /* FOR UPDATE /* nested pg_advisory_lock(1) */ still */ ".to_string()),
        1 => Just(" -- nextval('app.seq')\n".to_string()),
        1 => Just(" -- INSERT\r".to_string()),
        1 => Just("\r\n".to_string()),
    ]
    .boxed()
}

/// A keyword in a random casing.
fn kw(word: &'static str) -> BoxedStrategy<String> {
    prop_oneof![
        3 => Just(word.to_ascii_uppercase()),
        2 => Just(word.to_ascii_lowercase()),
        1 => Just(
            word.chars()
                .enumerate()
                .map(|(i, c)| if i % 2 == 0 { c.to_ascii_uppercase() } else { c.to_ascii_lowercase() })
                .collect::<String>()
        ),
    ]
    .boxed()
}

/// A function the generator calls: how to name it, its arguments, whether a call must run on
/// the primary, and a single typed argument for attribute notation.
#[derive(Debug, Clone, Copy)]
struct Function {
    schema: &'static str,
    name: &'static str,
    args: &'static str,
    primary: Option<&'static str>,
    /// `Some("(1::bigint)")` when `(1::bigint).name` calls it.
    attribute: Option<&'static str>,
    /// Only resolvable by its exact name (mixed case: quoted spellings only; schema needed).
    exact: bool,
}

const fn f(schema: &'static str, name: &'static str, args: &'static str) -> Function {
    Function {
        schema,
        name,
        args,
        primary: None,
        attribute: None,
        exact: false,
    }
}

const fn w(
    schema: &'static str,
    name: &'static str,
    args: &'static str,
    why: &'static str,
) -> Function {
    Function {
        schema,
        name,
        args,
        primary: Some(why),
        attribute: None,
        exact: false,
    }
}

const FUNCTIONS: &[Function] = &[
    f("pg_catalog", "lower", "'A'"),
    f("pg_catalog", "abs", "-3"),
    f("pg_catalog", "now", ""),
    f("pg_catalog", "random", ""),
    f("pg_catalog", "clock_timestamp", ""),
    f("pg_catalog", "pg_is_in_recovery", ""),
    f("pg_catalog", "current_setting", "'search_path'"),
    f("pg_catalog", "gen_random_uuid", ""),
    f("pg_catalog", "pg_backend_pid", ""),
    f("pg_catalog", "pg_sleep", "0"),
    f("pg_catalog", "pg_relation_size", "'app.items'"),
    f("app", "price", "2"),
    f("app", "pure", "2"),
    f("public", "touch", ""),
    f("public", "gen_random_bytes", "4"),
    Function {
        attribute: Some("(7::bigint)"),
        ..w("pg_catalog", "pg_advisory_lock", "7", "advisory lock")
    },
    Function {
        attribute: Some("(8::bigint)"),
        ..w("pg_catalog", "pg_try_advisory_lock", "8", "advisory lock")
    },
    w("pg_catalog", "pg_advisory_xact_lock", "9", "advisory lock"),
    w(
        "pg_catalog",
        "pg_advisory_lock_shared",
        "10",
        "advisory lock",
    ),
    w("pg_catalog", "set_config", "'app.x', '1', false", "setting"),
    Function {
        attribute: Some("(0.5::float8)"),
        ..w("pg_catalog", "setseed", "0.5", "random seed")
    },
    Function {
        attribute: Some("('app.seq'::regclass)"),
        ..w("pg_catalog", "nextval", "'app.seq'", "sequence")
    },
    w("pg_catalog", "txid_current", "", "transaction id"),
    w("pg_catalog", "pg_notify", "'ch', 'x'", "notify"),
    w("pg_catalog", "pg_export_snapshot", "", "snapshot"),
    w(
        "pg_catalog",
        "query_to_xml",
        "'SELECT 1', true, false, ''",
        "runs a query",
    ),
    Function {
        attribute: Some("(1::bigint)"),
        ..w("app", "bump", "1", "user function writes")
    },
    Function {
        attribute: Some("(11::bigint)"),
        ..w("app", "lock_it", "11", "user function locks")
    },
    w("app", "flag_it", "", "user function sets"),
    Function {
        exact: true,
        ..w("app", "MixedCase", "", "user function locks")
    },
    w("reports", "touch", "", "user function locks"),
];

/// A call to one of [`FUNCTIONS`] in one of the ways SQL can name it.
fn call() -> BoxedStrategy<Sql> {
    (0..FUNCTIONS.len(), 0..9u8, gap())
        .prop_map(|(i, spelling, gap)| {
            let f = FUNCTIONS[i];
            let escaped = |name: &str| {
                let mut chars = name.chars();
                let first = chars.next().unwrap_or('x');
                format!("\\{:04X}{}", u32::from(first), chars.as_str())
            };
            let text = match (spelling, f.exact) {
                (_, true) => match spelling % 3 {
                    0 => format!("\"{}\"({})", f.name, f.args),
                    1 => format!("{}.\"{}\"({})", f.schema, f.name, f.args),
                    _ => format!("U&\"{}\"{gap}({})", escaped(f.name), f.args),
                },
                (0, _) if f.schema == "public" || f.schema == "pg_catalog" => {
                    format!("{}({})", f.name, f.args)
                }
                (0 | 1, _) => format!("{}.{}({})", f.schema, f.name, f.args),
                (2, _) => format!(
                    "{}.{}({})",
                    f.schema.to_ascii_uppercase(),
                    f.name.to_ascii_uppercase(),
                    f.args
                ),
                (3, _) => format!("\"{}\".\"{}\"({})", f.schema, f.name, f.args),
                (4, _) => format!("{}.U&\"{}\"({})", f.schema, escaped(f.name), f.args),
                (5, _) => format!(
                    "{}.U&\"{}\"{gap}UESCAPE{gap}'!'{gap}({})",
                    f.schema,
                    escaped(f.name).replace('\\', "!"),
                    f.args
                ),
                (6, _) => format!("{}.{}{gap}({})", f.schema, f.name, f.args),
                (7, _) => match f.attribute {
                    Some(arg) if f.schema == "pg_catalog" || f.schema == "app" => {
                        format!("({arg}).{}", f.name)
                    }
                    _ => format!("{}.{}({})", f.schema, f.name, f.args),
                },
                _ => format!("{}.{}({})", f.schema, f.name, f.args),
            };
            match f.primary {
                Some(why) => Sql::primary(text, why),
                None => Sql::read(text),
            }
        })
        .boxed()
}

/// Text that holds what would force the primary if it were code, and is not code.
fn decoy(standard_strings: bool) -> BoxedStrategy<Sql> {
    let mut options = vec![
        "'SELECT pg_advisory_lock(1) FOR UPDATE'".to_string(),
        "'it''s; DELETE FROM app.items'".to_string(),
        "E'\\' , pg_advisory_lock(2) --'".to_string(),
        "$$ nextval('app.seq') $$".to_string(),
        "$q$ $$ INSERT $$ app.bump(1) $q$".to_string(),
        "'a'\n'continued pg_advisory_lock(3)'".to_string(),
        "E'a'\n'\\' , app.lock_it(4) --'".to_string(),
        "B'101'::text".to_string(),
        "X'1F'::text".to_string(),
    ];
    if standard_strings {
        options.push("U&'d\\0061t pg_advisory_lock(5)'".to_string());
        options.push("U&'d!0061t' UESCAPE '!'".to_string());
    } else {
        // With standard_conforming_strings off, `\'` does not end a plain string either.
        options.push("'a\\' , app.lock_it(6) --'".to_string());
        options.push("N'a\\' , nextval(''app.seq'') --'".to_string());
    }
    proptest::sample::select(options)
        .prop_map(Sql::read)
        .boxed()
}

/// A call next to text whose end only an exact lexer finds: whether the call is code is
/// decided by scan.l's rules (a comment ends at the first `*/` whatever quotes it holds,
/// comments nest, `E'\\'` ends after the escaped backslash, a `U&` string has no backslash
/// escapes, a dollar quote ends at its own tag only).
fn lexical_trap(standard_strings: bool) -> BoxedStrategy<Sql> {
    (call(), 0..7u8)
        .prop_map(move |(c, shape)| {
            let code = |text: String| Sql {
                text,
                primary: c.primary,
            };
            match shape {
                0 => code(format!("/* it's */ ({})::text", c.text)),
                1 => Sql::read(format!(
                    "/* /* */ ({})::text */ 'hidden'",
                    c.text.replace("*/", "")
                )),
                2 => code(format!("(E'\\\\' || ({})::text)", c.text)),
                3 if standard_strings => {
                    code(format!("(U&'\\' UESCAPE '!' || ({})::text)", c.text))
                }
                4 => code(format!("($a$ $b$ $a$ || ({})::text)", c.text)),
                5 => Sql::read(format!("$a$ $b$ ({})::text $b$ $a$", c.text)),
                _ => code(format!("(SELECT ({})::text AS \"it's\")", c.text)),
            }
        })
        .boxed()
}

/// Text whose code depends on `standard_conforming_strings`: with it on, the call after
/// `'a\'` is code.
fn backslash_trap(standard_strings: bool) -> BoxedStrategy<Sql> {
    call()
        .prop_map(move |c| {
            if standard_strings {
                let text = format!("'a\\' AS s, ({})::text AS t --'", c.text);
                Sql {
                    text,
                    primary: c.primary,
                }
            } else {
                // Inside the string the call's own quotes are doubled, as text.
                let text = format!(
                    "'a\\' AS s, ({})::text AS t --'",
                    c.text.replace('\'', "''")
                );
                Sql::read(text)
            }
        })
        .boxed()
}

/// A text-typed expression.
fn expr(standard_strings: bool) -> BoxedStrategy<Sql> {
    let leaf = prop_oneof![
        3 => call().prop_map(|c| Sql { text: format!("({})::text", c.text), ..c }),
        2 => decoy(standard_strings).prop_map(|d| Sql::read(format!("({})::text", d.text))),
        1 => Just(Sql::read("i.name")),
        1 => Just(Sql::read("'7'")),
        1 => Just(Sql::read("(1 OPERATOR(app.###) 2)::text")).prop_map(|s| Sql { primary: Some("volatile operator"), ..s }),
        2 => lexical_trap(standard_strings),
    ];
    leaf.prop_recursive(2, 6, 2, move |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(a, b)| Sql::join(&[
                &Sql::read("("),
                &a,
                &Sql::read(" || "),
                &b,
                &Sql::read(")")
            ])),
            inner
                .clone()
                .prop_map(|a| Sql::join(&[&Sql::read("(SELECT "), &a, &Sql::read(")")])),
            inner.clone().prop_map(|a| Sql::join(&[
                &Sql::read("coalesce("),
                &a,
                &Sql::read(", 'x')")
            ])),
            (inner, gap()).prop_map(|(a, g)| Sql::join(&[
                &Sql::read(format!("(SELECT max(x){g}FROM (SELECT ")),
                &a,
                &Sql::read(" AS x) s)")
            ])),
        ]
    })
    .boxed()
}

fn lock_clause() -> BoxedStrategy<Sql> {
    prop_oneof![
        (kw("for"), kw("update")).prop_map(|(a, b)| format!("{a} {b}")),
        (kw("for"), kw("share")).prop_map(|(a, b)| format!("{a} {b}")),
        (kw("for"), kw("no"), kw("key"), kw("update"))
            .prop_map(|(a, b, c, d)| format!("{a} {b} {c} {d}")),
        (kw("for"), kw("key"), kw("share"), gap())
            .prop_map(|(a, b, c, g)| format!("{a}{g}{b} {c}")),
    ]
    .prop_map(|text| Sql::primary(text, "locking clause"))
    .boxed()
}

/// A plain query (no set operation), text columns.
fn select(standard_strings: bool) -> BoxedStrategy<Sql> {
    (
        kw("select"),
        expr(standard_strings),
        proptest::option::weighted(0.3, expr(standard_strings)),
        proptest::option::weighted(0.3, expr(standard_strings)),
        proptest::option::weighted(0.3, expr(standard_strings)),
        proptest::option::weighted(0.2, expr(standard_strings)),
        proptest::option::weighted(0.1, lock_clause()),
        proptest::option::weighted(0.1, backslash_trap(standard_strings)),
        gap(),
        gap(),
    )
        .prop_map(
            |(select, target, cond, order, limit, offset, lock, trap, g1, g2)| {
                let mut parts = vec![
                    Sql::read(format!("{select}{g1}")),
                    target,
                    Sql::read(" AS c"),
                ];
                if let Some(trap) = trap {
                    parts.push(Sql::read(", "));
                    parts.push(trap);
                    parts.push(Sql::read("\n"));
                }
                parts.push(Sql::read(format!("{g2}FROM app.items i")));
                if let Some(cond) = cond {
                    parts.push(Sql::read(" WHERE "));
                    parts.push(cond);
                    parts.push(Sql::read(" IS NOT NULL"));
                }
                if let Some(order) = order {
                    parts.push(Sql::read(" ORDER BY "));
                    parts.push(order);
                }
                if let Some(limit) = limit {
                    parts.push(Sql::read(" LIMIT (SELECT length("));
                    parts.push(limit);
                    parts.push(Sql::read(") + 1 FROM app.items i LIMIT 1)"));
                }
                if let Some(offset) = offset {
                    parts.push(Sql::read(" OFFSET (SELECT length("));
                    parts.push(offset);
                    parts.push(Sql::read(") * 0 FROM app.items i LIMIT 1)"));
                }
                if let Some(lock) = lock {
                    parts.push(Sql::read(" "));
                    parts.push(lock);
                }
                let refs: Vec<&Sql> = parts.iter().collect();
                Sql::join(&refs)
            },
        )
        .boxed()
}

/// A data-modifying statement (as a CTE body or on its own).
fn dml() -> BoxedStrategy<Sql> {
    prop_oneof![
        kw("insert").prop_map(|k| format!("{k} INTO app.log VALUES (1) RETURNING v::text AS c")),
        kw("update")
            .prop_map(|k| format!("{k} app.items SET n = n WHERE id = 1 RETURNING name AS c")),
        kw("delete").prop_map(|k| format!("{k} FROM app.log WHERE v < 0 RETURNING v::text AS c")),
    ]
    .prop_map(|text| Sql::primary(text, "data-modifying"))
    .boxed()
}

/// A whole query: a plain one, set operations, parenthesised ones, WITH clauses.
fn query(standard_strings: bool) -> BoxedStrategy<Sql> {
    let s = move || select(standard_strings);
    prop_oneof![
        4 => s(),
        1 => (s(), s(), kw("union"), proptest::option::weighted(0.3, expr(standard_strings))).prop_map(|(a, b, u, order)| {
            let order = order.unwrap_or_else(|| Sql::read("1"));
            Sql::join(&[&Sql::read("("), &a, &Sql::read(format!(") {u} ALL (")), &b, &Sql::read(") ORDER BY "), &order])
        }),
        1 => (kw("with"), s(), prop_oneof![s(), dml()], expr(standard_strings), 0..4u8, gap()).prop_map(
            |(with, body, cte, tail, shape, g)| {
                let head = Sql::join(&[
                    &Sql::read(format!("{with}{g}a AS (")),
                    &cte,
                    &Sql::read("), b(c) AS (SELECT 'x') "),
                ]);
                match shape {
                    // A parenthesised body with ORDER BY / LIMIT expressions after it.
                    0 => Sql::join(&[&head, &Sql::read("(SELECT c FROM a) ORDER BY "), &tail]),
                    1 => Sql::join(&[&head, &Sql::read("(TABLE a) UNION (SELECT c FROM b) LIMIT length("), &tail, &Sql::read(")")]),
                    2 => Sql::join(&[&head, &Sql::read("SELECT * FROM a UNION ALL "), &body]),
                    _ => Sql::join(&[&head, &Sql::read("SELECT c FROM a WHERE EXISTS ("), &body, &Sql::read(")")]),
                }
            }
        ),
        1 => (s(), gap()).prop_map(|(q, g)| Sql::join(&[&Sql::read(format!("({g}")), &q, &Sql::read(")")])),
    ]
    .boxed()
}

/// Statements that only make sense on the connection that made them, or change it.
fn session() -> BoxedStrategy<Sql> {
    proptest::sample::select(vec![
        "SET app.x = '1'",
        "SET LOCAL statement_timeout = '5s'",
        "RESET ALL",
        "DISCARD ALL",
        "PREPARE q AS SELECT 1",
        "EXECUTE q",
        "DEALLOCATE q",
        "LISTEN ch",
        "UNLISTEN *",
        "DECLARE c CURSOR FOR SELECT 1",
        "FETCH NEXT FROM c",
        "MOVE NEXT IN c",
        "CLOSE c",
        "SELECT * FROM pg_temp.scratch",
        "EXPLAIN EXECUTE q",
        "EXPLAIN (COSTS OFF) EXECUTE q(1)",
        "LOCK TABLE app.items IN ACCESS SHARE MODE",
        "NOTIFY ch",
        "CREATE TEMP TABLE scratch (a int)",
        "SELECT 1 AS a INTO TEMP scratch2",
        "SELECT pg_advisory_unlock_all()",
    ])
    .prop_map(|text| Sql::primary(text, "session"))
    .boxed()
}

/// One whole statement.
fn statement(standard_strings: bool) -> BoxedStrategy<Sql> {
    let body = prop_oneof![
        10 => query(standard_strings),
        2 => (kw("explain"), proptest::option::of(Just("(COSTS OFF) ")), query(standard_strings))
            .prop_map(|(e, o, q)| Sql::join(&[&Sql::read(format!("{e} {}", o.unwrap_or(""))), &q.not_executed()])),
        1 => (kw("values"), call()).prop_map(|(v, c)| Sql::join(&[&Sql::read(format!("{v} ((")), &c, &Sql::read(")::text)")])),
        1 => kw("table").prop_map(|t| Sql::read(format!("{t} app.items"))),
        1 => kw("show").prop_map(|s| Sql::read(format!("{s} search_path"))),
        2 => session(),
        1 => dml(),
    ];
    (
        proptest::option::weighted(0.2, Just("/* leading */ ")),
        body,
        proptest::sample::select(vec!["", ";", " ;", "; -- done", ";;"]),
    )
        .prop_map(|(lead, body, end)| Sql {
            text: format!("{}{}{end}", lead.unwrap_or(""), body.text),
            primary: body.primary,
        })
        .boxed()
}

fn case() -> BoxedStrategy<Case> {
    prop_oneof![
        8 => statement(true).prop_map(|sql| Case { sql, standard_strings: true, soup: false }),
        2 => statement(false).prop_map(|sql| Case { sql, standard_strings: false, soup: false }),
        1 => (soup(), any::<bool>()).prop_map(|(sql, standard_strings)| Case { sql, standard_strings, soup: true }),
    ]
    .boxed()
}

/// A call between random runs of the characters that open and close text in SQL (quotes,
/// dollar tags, escapes, comment marks, newlines): whether the call is code is for the
/// server to say (most of these fail to parse; those that run and call a hazard are caught by
/// the checks on the standby).
fn soup() -> BoxedStrategy<Sql> {
    let atoms = vec![
        "'", "''", "\"", "$$", "$a$", "$b$", "E'", "e'", "\\", "\\'", "--", "/*", "*/", "\n", "\r",
        " ", "U&'", "U&\"", "B'", "N'", "x", "1", "(", ")", ",", "-", "*", "/", "AS y", "'a'",
    ];
    let run = move || proptest::collection::vec(proptest::sample::select(atoms.clone()), 0..6);
    (run(), call(), run())
        .prop_map(|(before, call, after)| {
            Sql::read(format!(
                "SELECT {}({})::text{} AS z",
                before.concat(),
                call.text,
                after.concat()
            ))
        })
        .boxed()
}

/// What went wrong with one replica-routed statement.
#[derive(Debug)]
struct Misroute {
    index: usize,
    sql: String,
    standard_strings: bool,
    what: String,
}

/// A standby connection set up for the checks.
struct Standby {
    conn: PgConnection,
}

/// What the session looks like: settings (a digest) and the user functions called so far
/// (`pg_stat_xact_user_functions` holds the backend's pending counts, which may span
/// transactions, so the check compares before and after the statement).
const SNAPSHOT: &str = "(SELECT md5(string_agg(name || '=' || coalesce(setting, ''), ',' ORDER BY name)) FROM pg_settings),
  (SELECT coalesce(string_agg(schemaname || '.' || funcname || '=' || calls, ',' ORDER BY funcname), '')
     FROM pg_stat_xact_user_functions)";

/// Locks beyond a read's: a virtual transaction id and `AccessShareLock` on relations.
const LOCKS: &str = "(SELECT count(*) FROM pg_locks WHERE pid = pg_backend_pid()
     AND NOT ((locktype = 'virtualxid' AND mode = 'ExclusiveLock')
           OR (locktype = 'relation' AND mode = 'AccessShareLock')))::text";

/// `schema.name=calls,...` as a map.
fn calls(list: &str) -> std::collections::HashMap<&str, i64> {
    list.split(',')
        .filter_map(|entry| entry.rsplit_once('='))
        .map(|(name, n)| (name, n.parse().unwrap_or(0)))
        .collect()
}

impl Standby {
    async fn connect(url: &str, standard_strings: bool) -> Standby {
        let mut conn = PgConnection::connect(url).await.unwrap();
        let scs = if standard_strings { "on" } else { "off" };
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "SET track_functions = 'all'; SET standard_conforming_strings = {scs}; SET escape_string_warning = off; \
             LOAD 'plpgsql'"
        )))
        .execute(&mut conn)
        .await
        .unwrap();
        Standby { conn }
    }

    /// Runs one statement in a transaction that is rolled back, with the checks before and
    /// after it in the same round trip. `Ok(true)` when it ran, `Ok(false)` when it failed in
    /// a way the primary would fail too, `Err` describes a misroute.
    async fn run(&mut self, sql: &str, volatile: &HashSet<String>) -> Result<bool, String> {
        let batch = format!(
            "BEGIN;\nSELECT 'herd-oracle-before', '', {SNAPSHOT};\n{sql}\n;\nSELECT 'herd-oracle-after', {LOCKS}, {SNAPSHOT};\nROLLBACK"
        );
        let mut before: Option<(String, String)> = None;
        let mut after: Option<(String, String, String)> = None;
        let outcome = {
            let mut stream = sqlx::raw_sql(sqlx::AssertSqlSafe(batch)).fetch_many(&mut self.conn);
            loop {
                match stream.try_next().await {
                    Ok(Some(Either::Right(row))) => {
                        if row.columns().len() != 4 {
                            continue;
                        }
                        let text = |i: usize| {
                            row.try_get::<Option<String>, _>(i)
                                .ok()
                                .flatten()
                                .unwrap_or_default()
                        };
                        match text(0).as_str() {
                            "herd-oracle-before" => before = Some((text(2), text(3))),
                            "herd-oracle-after" => after = Some((text(1), text(2), text(3))),
                            _ => {}
                        }
                    }
                    Ok(Some(Either::Left(_))) => {}
                    Ok(None) => break Ok(()),
                    Err(e) => break Err(e),
                }
            }
        };
        let verdict = match outcome {
            Err(e) => {
                let _ = sqlx::raw_sql("ROLLBACK").execute(&mut self.conn).await;
                let db = e.as_database_error();
                let code = db
                    .and_then(|d| d.code())
                    .map(|c| c.into_owned())
                    .unwrap_or_default();
                let message = db
                    .map(|d| d.message().to_string())
                    .unwrap_or_else(|| e.to_string());
                // Syntax (42xxx) and data (22xxx) errors are raised whatever the server's state,
                // and their messages quote the statement's text: a generated statement that
                // mentions `pg_is_in_recovery` would otherwise read as a standby's refusal.
                let about_the_text = code.starts_with("42") || code.starts_with("22");
                if code == "25006"
                    || (!about_the_text
                        && (message.contains("recovery")
                            || message.contains("read-only transaction")
                            || message.contains("hot standby")))
                {
                    Err(format!("failed on the standby: {code} {message}"))
                } else {
                    // An error the primary would raise too (the generator's types are loose):
                    // not a routing question.
                    if std::env::var_os("HERD_ORACLE_VERBOSE").is_some() {
                        eprintln!("oracle: other error {code} {message}: {sql:?}");
                    }
                    Ok(false)
                }
            }
            Ok(()) => match (before, after) {
                (Some((settings_before, calls_before)), Some((locks, settings, calls_after))) => {
                    let mut problems = Vec::new();
                    if locks != "0" {
                        problems.push(format!("took {locks} lock(s) beyond a read's"));
                    }
                    if settings != settings_before {
                        problems.push("changed a setting".to_string());
                    }
                    let was = calls(&calls_before);
                    for (f, n) in calls(&calls_after) {
                        if n > was.get(f).copied().unwrap_or(0) && volatile.contains(f) {
                            problems.push(format!("called the volatile function {f}"));
                        }
                    }
                    if problems.is_empty() {
                        Ok(true)
                    } else {
                        Err(problems.join("; "))
                    }
                }
                _ => Err(
                    "the statement swallowed the checks around it: the server read it differently"
                        .into(),
                ),
            },
        };
        if verdict.is_err() {
            // Session-level effects outlive the rollback: undo them for the next statement.
            let _ = sqlx::raw_sql("SELECT pg_advisory_unlock_all()")
                .execute(&mut self.conn)
                .await;
        }
        verdict
    }
}

fn seed() -> u64 {
    match std::env::var("HERD_ORACLE_SEED") {
        Ok(s) => s.trim().parse().expect("HERD_ORACLE_SEED is a u64"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(17),
    }
}

fn cases() -> usize {
    std::env::var("HERD_ORACLE_CASES")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(12_000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_routed_statements_are_harmless_on_a_hot_standby() {
    let seed = seed();
    let total = cases();
    println!("oracle: seed {seed} (replay with HERD_ORACLE_SEED={seed}), {total} statements");
    let started = Instant::now();
    let pg = shared::pg().await.unwrap();
    let mut primary = PgConnection::connect(&pg.primary_url()).await.unwrap();
    sqlx::raw_sql(SCHEMA).execute(&mut primary).await.unwrap();
    pg.wait_for_replay().await.unwrap();
    // The classifier as the router runs it: the catalog read from the primary.
    let catalog = Catalog::load(&mut primary).await.unwrap();
    assert!(
        catalog.is_from_server() && catalog.functions() > 2000,
        "{catalog:?}"
    );
    let catalog = if std::env::var("HERD_ORACLE_CATALOG").as_deref() == Ok("builtin") {
        Catalog::builtin()
    } else {
        catalog
    };
    let on = Classifier::default().with_catalog(catalog.clone());
    let off = Classifier::default().with_catalog(catalog.with_standard_conforming_strings(false));
    // PostgreSQL's own list of volatile functions, for the function check.
    let rows: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT n.nspname::text, p.proname::text, (SELECT e.extname::text FROM pg_depend d \
           JOIN pg_extension e ON e.oid = d.refobjid WHERE d.classid = 'pg_proc'::regclass \
           AND d.objid = p.oid AND d.deptype = 'e' LIMIT 1) \
         FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
         WHERE p.provolatile = 'v' AND n.nspname NOT IN ('pg_catalog', 'information_schema')",
    )
    .fetch_all(&mut primary)
    .await
    .unwrap();
    let volatile: HashSet<String> = rows
        .into_iter()
        .filter(|(schema, name, extension)| {
            let origin = extension.as_deref().unwrap_or(schema);
            !SAFE_VOLATILE.contains(&(origin, name.as_str()))
        })
        .map(|(schema, name, _)| format!("{schema}.{name}"))
        .collect();

    // Generate and classify everything first.
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes(seed)),
    );
    let strategy = case();
    let mut to_run: Vec<(usize, Case)> = Vec::new();
    let mut failures: Vec<Misroute> = Vec::new();
    let mut ground_primary = 0usize;
    let mut conservative = 0usize;
    let mut dump = String::new();
    for index in 0..total {
        let case = strategy.new_tree(&mut runner).unwrap().current();
        if std::env::var_os("HERD_ORACLE_DUMP").is_some() {
            let _ = write!(
                dump,
                "{}:{}:{}\0",
                case.sql.primary.unwrap_or("-"),
                case.standard_strings,
                case.sql.text
            );
        }
        let classifier = if case.standard_strings { &on } else { &off };
        let route = classifier.classify(&case.sql.text);
        ground_primary += usize::from(case.sql.primary.is_some());
        if route.is_primary() {
            if case.sql.primary.is_none() && !case.soup {
                conservative += 1;
                if std::env::var_os("HERD_ORACLE_VERBOSE").is_some() {
                    eprintln!("oracle: conservative {route}: {:?}", case.sql.text);
                }
            }
            continue;
        }
        if let Some(why) = case.sql.primary {
            failures.push(Misroute {
                index,
                sql: case.sql.text.clone(),
                standard_strings: case.standard_strings,
                what: format!("routed to a replica but must run on the primary ({why})"),
            });
        }
        to_run.push((index, case));
    }
    let classified = started.elapsed();
    if let Some(path) = std::env::var_os("HERD_ORACLE_DUMP") {
        std::fs::write(path, dump).unwrap();
    }

    // Run the replica-routed ones on the standbys, over four connections.
    let urls = pg.replica_urls();
    let lanes = 4;
    let mut tasks = Vec::new();
    for lane in 0..lanes {
        let url = urls[lane % urls.len()].clone();
        let mine: Vec<(usize, Case)> = to_run.iter().skip(lane).step_by(lanes).cloned().collect();
        let volatile = volatile.clone();
        tasks.push(tokio::spawn(async move {
            let mut on = Standby::connect(&url, true).await;
            let mut off = Standby::connect(&url, false).await;
            let mut found = Vec::new();
            let mut succeeded = 0usize;
            for (index, case) in mine {
                let standby = if case.standard_strings {
                    &mut on
                } else {
                    &mut off
                };
                match standby.run(&case.sql.text, &volatile).await {
                    Ok(ran) => succeeded += usize::from(ran),
                    Err(what) => found.push(Misroute {
                        index,
                        sql: case.sql.text,
                        standard_strings: case.standard_strings,
                        what,
                    }),
                }
            }
            (found, succeeded)
        }));
    }
    let mut succeeded = 0;
    for task in tasks {
        let (found, ok) = task.await.unwrap();
        failures.extend(found);
        succeeded += ok;
    }
    failures.sort_by_key(|m| m.index);
    println!(
        "oracle: {total} generated ({ground_primary} must run on the primary), {} sent to a replica and run on a standby \
         ({succeeded} ran without error), {conservative} safe ones sent to the primary; {} misroutes; \
         classified in {classified:?}, all in {:?}",
        to_run.len(),
        failures.len(),
        started.elapsed()
    );
    let mut report = String::new();
    for m in failures.iter().take(20) {
        let _ = writeln!(
            report,
            "#{} (standard_conforming_strings {}): {}\n    {:?}",
            m.index,
            if m.standard_strings { "on" } else { "off" },
            m.what,
            m.sql
        );
    }
    assert!(
        failures.is_empty(),
        "seed {seed}: {} misroutes (replay with HERD_ORACLE_SEED={seed}):\n{report}",
        failures.len()
    );
    assert!(
        to_run.len() >= total / 10,
        "too few replica statements: {}",
        to_run.len()
    );
}

fn seed_bytes(seed: u64) -> [u8; 32] {
    let mut bytes = [0u8; 32];
    for (i, chunk) in bytes.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(
            &(seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)).to_le_bytes(),
        );
    }
    bytes
}

/// The router reads the catalog when it is built and again every `catalog_refresh`, and a
/// catalog change leaves no stale route in the route cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_follows_catalog_changes_without_stale_routes() {
    let pg = shared::pg().await.unwrap();
    let mut primary = PgConnection::connect(&pg.primary_url()).await.unwrap();
    sqlx::raw_sql(
        "CREATE SCHEMA IF NOT EXISTS cat;
         CREATE OR REPLACE FUNCTION cat.where_am_i(int) RETURNS bool LANGUAGE sql STABLE AS
           $$ SELECT pg_is_in_recovery() $$;
         CREATE OR REPLACE FUNCTION cat.writes_now() RETURNS int LANGUAGE plpgsql VOLATILE AS
           $$ BEGIN PERFORM pg_advisory_xact_lock(5); RETURN 1; END $$;",
    )
    .execute(&mut primary)
    .await
    .unwrap();
    pg.wait_for_replay().await.unwrap();
    let config = RouterConfig {
        primary: Some(NodeConfig::new(pg.primary_url())),
        replicas: pg.replica_urls().into_iter().map(NodeConfig::new).collect(),
        check_interval: Duration::from_millis(100),
        catalog_refresh: Some(Duration::from_millis(300)),
        ..RouterConfig::default()
    };
    let router = DbRouter::connect(config).await.unwrap();
    // Read at build: the volatile user function goes to the primary from the first statement.
    assert!(router.classify("SELECT cat.writes_now()").is_primary());
    assert!(
        router
            .classify("SELECT \"cat\".\"writes_now\"()")
            .is_primary()
    );
    let sql = "SELECT cat.where_am_i(1)";
    for _ in 0..3 {
        let on_replica: bool = sqlx::query_scalar(sql).fetch_one(&router).await.unwrap();
        assert!(on_replica, "a stable function's call reads on a replica");
    }
    // The function becomes volatile: after the next catalog read, the cached route is gone.
    sqlx::raw_sql(
        "CREATE OR REPLACE FUNCTION cat.where_am_i(int) RETURNS bool LANGUAGE sql VOLATILE AS
           $$ SELECT pg_is_in_recovery() $$",
    )
    .execute(&mut primary)
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let on_replica: bool = sqlx::query_scalar(sql).fetch_one(&router).await.unwrap();
        if !on_replica {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still routed to a replica after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(router.classify(sql).is_primary());
    router.close().await;

    // Without catalog reads, the compiled-in lists decide.
    let config = RouterConfig {
        primary: Some(NodeConfig::new(pg.primary_url())),
        replicas: pg.replica_urls().into_iter().map(NodeConfig::new).collect(),
        catalog_refresh: None,
        ..RouterConfig::default()
    };
    let router = DbRouter::connect(config).await.unwrap();
    assert!(router.classify("SELECT cat.writes_now()").is_replica());
    assert!(router.classify("SELECT setseed(0.5)").is_primary());
    router.close().await;
}
