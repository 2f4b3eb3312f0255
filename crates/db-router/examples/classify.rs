//! Classifies SQL statements read from stdin, one per line, printing `replica` or
//! `primary` for each line and nothing else.
//!
//! Run with: `cargo run -p herd-db-router --example classify < statements.sql`
//!
//! Options:
//! - `--reasons`: print `route:reason` (as in `tests/corpus.txt`) instead of the route alone;
//! - `--nul`: statements are separated by NUL bytes instead of newlines (so they may hold
//!   newlines, as in the oracle's `HERD_ORACLE_DUMP` files, whose `why:scs:` prefixes are
//!   skipped);
//! - `--standard-conforming-strings=off`: read plain `'...'` strings with backslash escapes;
//! - `DATABASE_URL=postgres://...` in the environment: classify with that server's catalog
//!   (`pg_proc`, volatile operators, its `standard_conforming_strings`), as the router does.

use std::io::{self, BufRead, BufWriter, Read, Write};

use herd_db_router::{Catalog, Classifier, FunctionPolicy};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let reasons = args.iter().any(|a| a == "--reasons");
    let nul = args.iter().any(|a| a == "--nul");
    let scs_off = args
        .iter()
        .any(|a| a == "--standard-conforming-strings=off");
    let mut catalog = match std::env::var("DATABASE_URL") {
        Ok(url) => load(&url)?,
        Err(_) => Catalog::builtin(),
    };
    if scs_off {
        catalog = catalog.with_standard_conforming_strings(false);
    }
    let classifier =
        Classifier::new(Vec::<String>::new(), FunctionPolicy::WriteList).with_catalog(catalog);
    let mut out = BufWriter::new(io::stdout().lock());
    let mut print = |sql: &str| -> io::Result<()> {
        let route = classifier.classify(sql);
        if reasons {
            writeln!(out, "{}:{}", route.as_str(), route.reason())
        } else {
            writeln!(out, "{}", route.as_str())
        }
    };
    if nul {
        let mut input = String::new();
        io::stdin().lock().read_to_string(&mut input)?;
        for record in input.split('\0').filter(|r| !r.is_empty()) {
            // An oracle dump's `why:scs:` prefix.
            let sql = match record.splitn(3, ':').collect::<Vec<_>>().as_slice() {
                [_, "true" | "false", sql] => sql,
                _ => record,
            };
            print(sql)?;
        }
    } else {
        for line in io::stdin().lock().lines() {
            print(&line?)?;
        }
    }
    out.flush()?;
    Ok(())
}

fn load(url: &str) -> Result<Catalog, Box<dyn std::error::Error>> {
    use sqlx::Connection;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut conn = sqlx::PgConnection::connect(url).await?;
        Ok(Catalog::load(&mut conn).await?)
    })
}
