//! Classifies SQL statements read from stdin, one per line, printing `replica` or
//! `primary` for each line and nothing else.
//!
//! Run with: `cargo run -p herd-db-router --example classify < statements.sql`

use std::io::{self, BufRead, BufWriter, Write};

fn main() -> io::Result<()> {
    let stdin = io::stdin().lock();
    let mut out = BufWriter::new(io::stdout().lock());
    for line in stdin.lines() {
        let route = herd_db_router::classify(&line?);
        writeln!(out, "{}", route.as_str())?;
    }
    out.flush()
}
