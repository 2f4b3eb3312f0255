//! Statement classification: which node may run a statement.
//!
//! The classifier is conservative. A statement goes to a replica only when it is
//! provably read-only: it starts with `SELECT`, `WITH`, `VALUES`, `TABLE`, `SHOW`,
//! `EXPLAIN` (without `ANALYZE`, of a query) or a parenthesised query, and nowhere in it,
//! whatever it stands in (CTE bodies, sub-selects, set operations, `ORDER BY`/`LIMIT`/`FETCH`
//! expressions, function arguments), is there
//!
//! - a locking clause (`FOR UPDATE`, `FOR NO KEY UPDATE`, `FOR SHARE`, `FOR KEY SHARE`),
//! - a data-modifying keyword (`INSERT`, `UPDATE`, `DELETE`, `MERGE`, as in a
//!   data-modifying CTE), or `SELECT ... INTO`,
//! - a call to a writing, locking or transaction-id-assigning built-in (`nextval`,
//!   `pg_advisory_lock`, `pg_notify`, `set_config`, `txid_current`, ...), to a function on the
//!   configured write list, or to a function the server's catalog marks `VOLATILE` that is not
//!   on the [safe list](SAFE_VOLATILE) (extension and application functions included; called
//!   by name, schema-qualified, quoted, `U&"..."`-escaped, or through attribute notation
//!   `x.f`), or an operator backed by such a function; with [`FunctionPolicy::KnownReadOnly`],
//!   a call to any function not known to be read-only,
//! - something that only makes sense on the connection that made it (`EXPLAIN EXECUTE`, a
//!   `pg_temp` table),
//! - a second statement after a `;`.
//!
//! Everything else, including empty or unterminated SQL, goes to the primary: `EXECUTE`,
//! `PREPARE`, `DEALLOCATE`, `FETCH`, `MOVE`, `CLOSE`, `LISTEN`, `SET`, `RESET`, `DISCARD`
//! and every other statement kind among them. A leading `/* herd:primary */` comment forces
//! the primary.
//!
//! The lexer reads SQL as PostgreSQL's `scan.l` does (comments, quoted and `U&`
//! identifiers, every string form, dollar quotes, and plain strings with
//! `standard_conforming_strings` off, as the server reports it), so keywords inside text
//! never count and keywords outside it always do. The [`Catalog`] holds what the server
//! knows: the router reads it from the primary when it is built and every
//! `catalog_refresh`. Classifying allocates nothing; a typical statement takes well under
//! a microsecond.
//!
//! What it cannot see: a function's declared volatility is trusted (a `STABLE` function that
//! calls a volatile one is read-only to it), views and row-level security policies that call
//! volatile functions, and a temporary table named without its `pg_temp` schema (a replica
//! answers that with an error, not a wrong result). Functions created after the last catalog
//! read are judged by the compiled-in lists until the next read.

mod cache;
pub(crate) mod catalog;
mod functions;
mod lexer;

pub(crate) use cache::RouteCache;
pub use catalog::{Catalog, CatalogFunction, SAFE_VOLATILE, Volatility};

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use self::catalog::{CatalogCell, NameSet};
use self::lexer::{Lexer, Token};

/// Where a statement should run, and why.
///
/// ```
/// use herd_db_router::{classify, Reason, Route};
///
/// assert_eq!(classify("SELECT * FROM users WHERE id = $1"), Route::Replica(Reason::ReadOnly));
/// assert_eq!(classify("SELECT * FROM jobs FOR UPDATE SKIP LOCKED"), Route::Primary(Reason::LockingClause));
/// assert_eq!(classify("select nextval('orders_id_seq')"), Route::Primary(Reason::WritingFunction));
/// assert!(classify("/* herd:primary */ SELECT 1").is_primary());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    /// Provably read-only: any eligible replica may run it.
    Replica(Reason),
    /// Must run on the primary.
    Primary(Reason),
}

impl Route {
    /// `true` for [`Route::Primary`].
    pub fn is_primary(self) -> bool {
        matches!(self, Route::Primary(_))
    }

    /// `true` for [`Route::Replica`].
    pub fn is_replica(self) -> bool {
        matches!(self, Route::Replica(_))
    }

    /// Why the statement was sent where it was.
    pub fn reason(self) -> Reason {
        match self {
            Route::Replica(reason) | Route::Primary(reason) => reason,
        }
    }

    /// `"replica"` or `"primary"`, as used in metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Route::Replica(_) => "replica",
            Route::Primary(_) => "primary",
        }
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.as_str(), self.reason())
    }
}

/// The reason behind a [`Route`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason {
    /// A read-only statement with nothing that could write or lock.
    ReadOnly,
    /// The SQL is empty or only comments.
    Empty,
    /// A leading `/* herd:primary */` hint.
    Hint,
    /// The statement does not start with a read-only keyword (`INSERT`, `CREATE`, `BEGIN`, `CALL`, ...).
    NotReadOnly,
    /// A `FOR UPDATE` / `FOR NO KEY UPDATE` / `FOR SHARE` / `FOR KEY SHARE` locking clause.
    LockingClause,
    /// `INSERT`, `UPDATE`, `DELETE` or `MERGE` inside a read statement (a data-modifying CTE).
    DataModifying,
    /// `SELECT ... INTO` creates a table.
    SelectInto,
    /// `EXPLAIN ANALYZE` executes the statement.
    ExplainAnalyze,
    /// A call to a built-in that writes, locks or needs a transaction id (`nextval`, `pg_notify`, ...).
    WritingFunction,
    /// A call to a function on the configured write list.
    ListedFunction,
    /// A call to a function not known to be read-only, under [`FunctionPolicy::KnownReadOnly`],
    /// or to one whose `U&"..."` name cannot be decoded.
    UnknownFunction,
    /// A call to a function (or an operator backed by one) that the server's catalog marks
    /// `VOLATILE` and that is not on the [safe list](SAFE_VOLATILE).
    VolatileFunction,
    /// Something that only makes sense on the connection that made it: `EXPLAIN EXECUTE` of a
    /// prepared statement, a `pg_temp` table.
    SessionBound,
    /// More than one statement in one string.
    MultipleStatements,
    /// A string, quoted identifier or comment that never ends, or a NUL byte (the server
    /// never reads past one).
    Unterminated,
    /// Sent to the primary by an [`on_primary`](crate::on_primary) scope, not by the classifier.
    Forced,
}

impl Reason {
    /// A short snake_case name, as used in metric labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::ReadOnly => "read_only",
            Reason::Empty => "empty",
            Reason::Hint => "hint",
            Reason::NotReadOnly => "not_read_only",
            Reason::LockingClause => "locking_clause",
            Reason::DataModifying => "data_modifying",
            Reason::SelectInto => "select_into",
            Reason::ExplainAnalyze => "explain_analyze",
            Reason::WritingFunction => "writing_function",
            Reason::ListedFunction => "listed_function",
            Reason::UnknownFunction => "unknown_function",
            Reason::VolatileFunction => "volatile_function",
            Reason::SessionBound => "session_bound",
            Reason::MultipleStatements => "multiple_statements",
            Reason::Unterminated => "unterminated",
            Reason::Forced => "forced",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which function calls send a read to the primary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FunctionPolicy {
    /// Writing built-ins and the configured write list go to the primary; any other
    /// function is trusted to be read-only. The default, like pgcat and Pgpool-II's
    /// `write_function_list`.
    #[default]
    WriteList,
    /// Only functions herd knows to be read-only built-ins may run on a replica; any other
    /// call (every user-defined function) goes to the primary.
    KnownReadOnly,
}

/// A configured classifier: the built-in rules, a write list, a function policy and the
/// server's [`Catalog`].
///
/// [`classify`] is this with no write list, [`FunctionPolicy::WriteList`] and the
/// compiled-in catalog. Clones share the catalog: [`set_catalog`](Self::set_catalog) on one
/// is seen by all.
///
/// ```
/// use herd_db_router::{Classifier, FunctionPolicy, Reason, Route};
///
/// let classifier = Classifier::new(["audit.log_access", "bump_counter"], FunctionPolicy::WriteList);
/// assert_eq!(classifier.classify("SELECT bump_counter(1)"), Route::Primary(Reason::ListedFunction));
/// assert_eq!(classifier.classify("SELECT audit.log_access(42)"), Route::Primary(Reason::ListedFunction));
/// assert!(classifier.classify("SELECT other.log_access(42)").is_replica());
///
/// let strict = Classifier::new(Vec::<String>::new(), FunctionPolicy::KnownReadOnly);
/// assert_eq!(strict.classify("SELECT my_func(1)"), Route::Primary(Reason::UnknownFunction));
/// assert!(strict.classify("SELECT lower(name), count(*) FROM t GROUP BY 1").is_replica());
/// ```
#[derive(Debug, Clone)]
pub struct Classifier {
    /// Exact names as PostgreSQL resolves them, either bare (`f`, any schema) or qualified
    /// (`s.f`).
    write_functions: NameSet,
    policy: FunctionPolicy,
    catalog: Arc<CatalogCell>,
}

impl Default for Classifier {
    fn default() -> Self {
        Self::new(Vec::<String>::new(), FunctionPolicy::default())
    }
}

impl Classifier {
    /// A classifier with a write list (names as written in SQL: unquoted parts fold to
    /// lowercase, `"quoted"` parts are exact; bare `f` for any schema or qualified
    /// `schema.f`), a function policy and the compiled-in catalog.
    pub fn new<I, S>(write_functions: I, policy: FunctionPolicy) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut set = NameSet::default();
        for name in write_functions {
            if let Some(name) = configured_name(name.as_ref()) {
                set.insert(&name);
            }
        }
        Self {
            write_functions: set,
            policy,
            catalog: Arc::new(CatalogCell::new(catalog::builtin_arc())),
        }
    }

    /// The same classifier with `catalog` in a cell of its own (not shared with the clones
    /// made before).
    pub fn with_catalog(mut self, catalog: Catalog) -> Self {
        self.catalog = Arc::new(CatalogCell::new(Arc::new(catalog)));
        self
    }

    /// Swaps in a new catalog, atomically, for this classifier and its clones.
    pub fn set_catalog(&self, catalog: Catalog) {
        self.catalog.store(catalog);
    }

    /// The catalog in force.
    pub fn catalog(&self) -> Arc<Catalog> {
        Arc::clone(&self.catalog.load())
    }

    pub(crate) fn catalog_cell(&self) -> &CatalogCell {
        &self.catalog
    }

    /// The function policy in force.
    pub fn policy(&self) -> FunctionPolicy {
        self.policy
    }

    /// Classifies one SQL string. Never panics, allocates nothing, and takes time linear in
    /// the input; anything not provably read-only goes to the primary.
    pub fn classify(&self, sql: &str) -> Route {
        let catalog = self.catalog.load();
        Scan::new(self, &catalog).run(sql)
    }

    #[inline]
    fn maybe_listed(&self, first: u8, len: usize) -> bool {
        self.write_functions.maybe(first, len)
    }

    fn listed(&self, schema: Option<&[u8]>, name: &[u8]) -> bool {
        if self.write_functions.is_empty() {
            return false;
        }
        self.write_functions.contains(name)
            || schema.is_some_and(|schema| self.write_functions.contains_qualified(schema, name))
    }
}

/// A configured write-list name as PostgreSQL would resolve it written in SQL: each
/// dot-separated part folded to lowercase unless `"quoted"`.
fn configured_name(name: &str) -> Option<Vec<u8>> {
    let name = name.trim();
    if name.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(name.len());
    let mut lexer = Lexer::with_settings(name, true);
    for token in &mut lexer {
        let mut buf = [0u8; 64];
        match token {
            Token::Dot => out.push(b'.'),
            Token::Word(_) | Token::QuotedIdent(_) | Token::UnicodeIdent { .. } => {
                out.extend_from_slice(lexer::identifier(token, &mut buf)?);
            }
            _ => return Some(name.to_ascii_lowercase().into_bytes()),
        }
    }
    Some(out)
}

/// Classifies one SQL string with the built-in rules and the compiled-in catalog.
///
/// See the [module docs](self) for the rules and [`Classifier`] for a write list, the
/// strict function policy or a server's catalog.
pub fn classify(sql: &str) -> Route {
    static DEFAULT: std::sync::LazyLock<Classifier> = std::sync::LazyLock::new(Classifier::default);
    DEFAULT.classify(sql)
}

/// The first keyword of a statement, as far as routing cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Select,
    Explain,
}

/// Where an `EXPLAIN` is before its statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Explain {
    /// Not in an `EXPLAIN` prefix (or not an `EXPLAIN`).
    Done,
    /// After `EXPLAIN` (and `ANALYZE`/`VERBOSE`), at depth 0.
    Prefix,
    /// Inside `EXPLAIN ( ... )` options, not yet past the first token of the group.
    OptionsStart,
    /// Inside `EXPLAIN ( ... )` options.
    Options,
}

/// One pass over the tokens, keeping only the last four for context.
struct Scan<'c, 'a> {
    classifier: &'c Classifier,
    catalog: &'c Catalog,
    strict: bool,
    kind: Kind,
    explain: Explain,
    depth: u32,
    /// Bit `d`: a `WITH` clause's CTE list is open at depth `d` (its `name(cols)` are not
    /// calls). Depths from 64 on are never marked (their `name(` count as calls).
    with_header: u64,
    /// Bit `d`: the `(` that opened depth `d` followed `OPERATOR`.
    operator_groups: u64,
    /// The last `)` closed an `OPERATOR(...)` group: a `name(` after it is a call, not an alias.
    closed_operator: bool,
    /// The previous token was a name after a `.`: if no `(` follows, it is attribute notation.
    attribute: bool,
    after_semicolon: bool,
    /// The last tokens in a ring (`Other` before the start); see [`Scan::prev`].
    ring: [Token<'a>; 4],
    head: usize,
}

impl<'c, 'a> Scan<'c, 'a> {
    fn new(classifier: &'c Classifier, catalog: &'c Catalog) -> Self {
        Self {
            classifier,
            catalog,
            strict: classifier.policy == FunctionPolicy::KnownReadOnly,
            kind: Kind::Select,
            explain: Explain::Done,
            depth: 0,
            with_header: 0,
            operator_groups: 0,
            closed_operator: false,
            attribute: false,
            after_semicolon: false,
            ring: [Token::Other; 4],
            head: 0,
        }
    }

    fn run(mut self, sql: &'a str) -> Route {
        let mut lexer = Lexer::with_settings(sql, self.catalog.standard_conforming_strings());
        let mut hint = false;
        let terminated = lexer.leading_comments(|body| hint |= is_primary_hint(body));
        if hint {
            return Route::Primary(Reason::Hint);
        }
        if !terminated {
            return Route::Primary(Reason::Unterminated);
        }
        let first = match lexer.next() {
            None => return Route::Primary(Reason::Empty),
            Some(Token::Unterminated | Token::Nul) => return Route::Primary(Reason::Unterminated),
            Some(first) => first,
        };
        match first {
            Token::Word(w) => match (w.len(), w.first().map(u8::to_ascii_lowercase)) {
                (6, Some(b's')) if eq(w, b"select") => {}
                (6, Some(b'v')) if eq(w, b"values") => {}
                (5, Some(b't')) if eq(w, b"table") => {}
                (4, Some(b's')) if eq(w, b"show") => {}
                (4, Some(b'w')) if eq(w, b"with") => self.with_header = 1,
                (7, Some(b'e')) if eq(w, b"explain") => {
                    self.kind = Kind::Explain;
                    self.explain = Explain::Prefix;
                }
                _ => return Route::Primary(Reason::NotReadOnly),
            },
            Token::LParen => {}
            _ => return Route::Primary(Reason::NotReadOnly),
        }
        if let Some(reason) = self.step(first) {
            return Route::Primary(reason);
        }
        for token in lexer {
            if let Some(reason) = self.step(token) {
                return Route::Primary(reason);
            }
        }
        if let Some(reason) = self.finish() {
            return Route::Primary(reason);
        }
        Route::Replica(Reason::ReadOnly)
    }

    /// The token `back` places before the current one (0: the previous token; at most 3).
    #[inline]
    fn prev(&self, back: usize) -> Token<'a> {
        self.ring[self.head.wrapping_sub(back) & 3]
    }

    #[inline]
    fn prev_is(&self, back: usize, keyword: &[u8]) -> bool {
        matches!(self.prev(back), Token::Word(p) if eq(p, keyword))
    }

    /// Looks at one token; `Some(reason)` when it proves the statement needs the primary.
    #[inline]
    fn step(&mut self, token: Token<'a>) -> Option<Reason> {
        if self.after_semicolon && token != Token::Semicolon {
            return Some(Reason::MultipleStatements);
        }
        if self.attribute {
            self.attribute = false;
            if token != Token::LParen
                && let Some(reason) = self.attribute_call()
            {
                return Some(reason);
            }
        }
        if self.explain == Explain::Prefix && !matches!(token, Token::Word(_) | Token::LParen) {
            // `EXPLAIN` followed by anything but options or a statement.
            return Some(Reason::NotReadOnly);
        }
        let verdict = match token {
            Token::Word(word) => self.word(word),
            Token::QuotedIdent(_) | Token::UnicodeIdent { .. } => {
                self.attribute = matches!(self.prev(0), Token::Dot);
                None
            }
            Token::LParen => self.open(),
            Token::RParen => {
                // Headers and operator groups opened inside the group end with it.
                let inner = self.depth;
                self.closed_operator = inner < 64 && self.operator_groups & (1 << inner) != 0;
                let outer = if inner < 64 {
                    (1u64 << inner) - 1
                } else {
                    u64::MAX
                };
                self.operator_groups &= outer;
                self.with_header &= outer;
                self.depth = self.depth.saturating_sub(1);
                if matches!(self.explain, Explain::Options | Explain::OptionsStart)
                    && self.depth == 0
                {
                    self.explain = Explain::Prefix;
                }
                None
            }
            Token::Dot => self.dot(),
            Token::Op(op) if self.catalog.volatile_operator(op) => Some(Reason::VolatileFunction),
            Token::Semicolon => {
                self.after_semicolon = true;
                None
            }
            Token::Unterminated | Token::Nul => Some(Reason::Unterminated),
            _ => None,
        };
        if self.explain == Explain::OptionsStart && !matches!(token, Token::LParen | Token::RParen)
        {
            self.explain = Explain::Options;
        }
        // A ring, so recording a token is one store instead of shifting three.
        self.head = (self.head + 1) & 3;
        self.ring[self.head] = token;
        verdict
    }

    /// After the last token: a name after a `.` that ended the statement is attribute notation.
    fn finish(&mut self) -> Option<Reason> {
        if self.explain != Explain::Done {
            // `EXPLAIN` with no statement after it.
            return Some(Reason::NotReadOnly);
        }
        if self.attribute {
            self.attribute = false;
            // The name is the last token recorded: `prev(0)` from here.
            return self.attribute_call();
        }
        None
    }

    fn word(&mut self, word: &'a [u8]) -> Option<Reason> {
        if matches!(self.prev(0), Token::Dot) {
            self.attribute = true;
        }
        if self.explain != Explain::Done
            && let Some(verdict) = self.explain_word(word)
        {
            return verdict;
        }
        // Dispatch on length and first letter: most words are skipped after one compare.
        let (len, first) = match word {
            [first, ..] if (4..=7).contains(&word.len()) => {
                (word.len(), first.to_ascii_lowercase())
            }
            _ => return None,
        };
        match (len, first) {
            (4, b'i') if eq(word, b"into") => Some(Reason::SelectInto),
            (4, b'w') if eq(word, b"with") => {
                // A WITH clause starts a statement, a parenthesised query or EXPLAIN's
                // statement; `WITH ORDINALITY`, `WITH TIME ZONE` are not one.
                if self.prev(0) == Token::LParen && self.depth < 64 {
                    self.with_header |= 1 << self.depth;
                }
                None
            }
            (5, b's')
                if eq(word, b"share") && (self.prev_is(0, b"for") || self.prev_is(0, b"key")) =>
            {
                Some(Reason::LockingClause)
            }
            (5, b'm') if eq(word, b"merge") => Some(Reason::DataModifying),
            (6, b'u') if eq(word, b"update") => {
                if self.prev_is(0, b"for") || self.prev_is(0, b"key") {
                    Some(Reason::LockingClause)
                } else {
                    Some(Reason::DataModifying)
                }
            }
            (6, b'i') if eq(word, b"insert") => Some(Reason::DataModifying),
            (6, b'd') if eq(word, b"delete") => Some(Reason::DataModifying),
            (6, b's' | b'v') | (5, b't')
                if eq(word, b"select") || eq(word, b"values") || eq(word, b"table") =>
            {
                // The main statement of a WITH clause at this depth: its CTE list is over.
                if self.depth < 64 {
                    self.with_header &= !(1 << self.depth);
                }
                None
            }
            (7, b'a')
                if self.kind == Kind::Explain && (eq(word, b"analyze") || eq(word, b"analyse")) =>
            {
                Some(Reason::ExplainAnalyze)
            }
            _ => None,
        }
    }

    /// A word in `EXPLAIN`'s prefix; `Some(verdict)` when it decided, `None` to go on with
    /// the general rules.
    fn explain_word(&mut self, word: &[u8]) -> Option<Option<Reason>> {
        match self.explain {
            Explain::Prefix => {
                if eq(word, b"explain") || eq(word, b"verbose") {
                    return Some(None);
                }
                if eq(word, b"analyze") || eq(word, b"analyse") {
                    return Some(Some(Reason::ExplainAnalyze));
                }
                self.explain = Explain::Done;
                if eq(word, b"select") || eq(word, b"values") || eq(word, b"table") {
                    return Some(None);
                }
                if eq(word, b"with") {
                    self.with_header |= 1;
                    return Some(None);
                }
                if eq(word, b"execute") {
                    return Some(Some(Reason::SessionBound));
                }
                if eq(word, b"insert")
                    || eq(word, b"update")
                    || eq(word, b"delete")
                    || eq(word, b"merge")
                {
                    return Some(Some(Reason::DataModifying));
                }
                Some(Some(Reason::NotReadOnly))
            }
            Explain::OptionsStart => {
                // `EXPLAIN (SELECT ...)`: a parenthesised query, not options.
                if eq(word, b"select")
                    || eq(word, b"values")
                    || eq(word, b"table")
                    || eq(word, b"with")
                {
                    self.explain = Explain::Done;
                    if eq(word, b"with") {
                        self.with_header |= 1 << 1;
                    }
                    return Some(None);
                }
                self.explain = Explain::Options;
                self.explain_option(word)
            }
            Explain::Options => self.explain_option(word),
            Explain::Done => None,
        }
    }

    fn explain_option(&self, word: &[u8]) -> Option<Option<Reason>> {
        if eq(word, b"analyze") || eq(word, b"analyse") {
            return Some(Some(Reason::ExplainAnalyze));
        }
        Some(None)
    }

    /// At a `(`: a call to check, then one level deeper.
    fn open(&mut self) -> Option<Reason> {
        let verdict = self.call();
        let depth = self.depth;
        if depth < 64 {
            let bit = 1u64 << depth;
            // In a CTE list, a `(` that is neither a column list nor a CTE body starts the
            // main statement: `WITH a AS (...) (SELECT ...)`.
            if self.with_header & bit != 0 && !self.cte_column_list() && !self.cte_body() {
                self.with_header &= !bit;
            }
        }
        if self.depth < 63 && self.prev_is(0, b"operator") {
            self.operator_groups |= 1 << (self.depth + 1);
        }
        match self.explain {
            Explain::Prefix if self.depth == 0 => self.explain = Explain::OptionsStart,
            Explain::OptionsStart => self.explain = Explain::Done, // `EXPLAIN ((SELECT ...))`
            _ => {}
        }
        self.depth = self.depth.saturating_add(1);
        verdict
    }

    /// `WITH [RECURSIVE] name (` or `, name (` in an open CTE list.
    fn cte_column_list(&self) -> bool {
        self.depth < 64
            && self.with_header & (1 << self.depth) != 0
            && is_name(self.prev(0))
            && (self.prev_is(1, b"with")
                || self.prev_is(1, b"recursive")
                || self.prev(1) == Token::Comma)
    }

    /// `AS (` or `MATERIALIZED (` in an open CTE list.
    fn cte_body(&self) -> bool {
        self.prev_is(0, b"as") || self.prev_is(0, b"materialized")
    }

    /// At a `.`: `pg_temp.x` names a temporary table of one connection.
    fn dot(&mut self) -> Option<Reason> {
        // Most qualifiers are short table aliases: look closer only at what could fold to
        // `pg_temp...`.
        let maybe = match self.prev(0) {
            Token::Word(w) => {
                w.len() >= 7 && w.first().is_some_and(|b| b.eq_ignore_ascii_case(&b'p'))
            }
            Token::QuotedIdent(b) => b.starts_with(b"pg_temp"),
            Token::UnicodeIdent { .. } => true,
            _ => false,
        };
        if !maybe {
            return None;
        }
        let mut buf = [0u8; 64];
        let schema = lexer::identifier(self.prev(0), &mut buf)?;
        let temp = schema.strip_prefix(b"pg_temp")?;
        (temp.is_empty()
            || (temp.first() == Some(&b'_') && temp.iter().skip(1).all(u8::is_ascii_digit)))
        .then_some(Reason::SessionBound)
    }

    /// A name after a `.` with no `(` after it: attribute notation calls `name(x)`.
    fn attribute_call(&self) -> Option<Reason> {
        // Most `x.name` are columns: rule them out on the unfolded word's shape first.
        if let Token::Word(w) = self.prev(0) {
            let first = w.first().map_or(0, u8::to_ascii_lowercase);
            let len = w.len().min(63);
            if !self.catalog.maybe_attribute(first, len)
                && !self.classifier.maybe_listed(first, len)
            {
                return None;
            }
        }
        let mut buf = [0u8; 64];
        let Some(name) = lexer::identifier(self.prev(0), &mut buf) else {
            return Some(Reason::UnknownFunction);
        };
        if self.catalog.volatile_attribute(name) {
            return Some(Reason::VolatileFunction);
        }
        if self.classifier.listed(None, name) {
            return Some(Reason::ListedFunction);
        }
        None
    }

    /// At a `(`: is the previous token a function name, and may that function run on a replica?
    fn call(&self) -> Option<Reason> {
        let name_token = self.prev(0);
        if !is_name(name_token) {
            return None;
        }
        let qualified = self.prev(1) == Token::Dot && is_name(self.prev(2));
        let mut buf = [0u8; 64];
        let Some(name) = lexer::identifier(name_token, &mut buf) else {
            return Some(Reason::UnknownFunction);
        };
        let mut schema_buf = [0u8; 64];
        let schema = if qualified {
            match lexer::identifier(self.prev(2), &mut schema_buf) {
                Some(schema) => Some(schema),
                None => return Some(Reason::UnknownFunction),
            }
        } else {
            None
        };
        // Hazards count wherever the `name(` stands: as a CTE or alias name it costs a read
        // on the primary at worst.
        if functions::is_writing_builtin(name) {
            return Some(Reason::WritingFunction);
        }
        if self.classifier.listed(schema, name) {
            return Some(Reason::ListedFunction);
        }
        if self.catalog.volatile_call(schema, name) {
            return Some(Reason::VolatileFunction);
        }
        if !self.strict || self.not_a_call(qualified) {
            return None;
        }
        let quoted = !matches!(name_token, Token::Word(_));
        if functions::is_not_a_call(name, quoted)
            || functions::is_read_only_builtin(name)
            || self.catalog.known_read_only(name)
        {
            return None;
        }
        Some(Reason::UnknownFunction)
    }

    /// Syntax where `name(` is not a call: a CTE's column list, a type modifier
    /// (`x::numeric(10, 2)`, `CAST(x AS varchar(3))`) or an alias's column list
    /// (`AS t(a, b)`, `f(x) t(a)`).
    fn not_a_call(&self, qualified: bool) -> bool {
        if !qualified && self.cte_column_list() {
            return true;
        }
        let before = if qualified {
            self.prev(3)
        } else {
            self.prev(1)
        };
        match before {
            Token::Cast => true,
            Token::RParen => !self.closed_operator,
            Token::Word(w) => eq(w, b"as"),
            _ => false,
        }
    }
}

/// An identifier token (a name that can be called or qualified).
#[inline]
fn is_name(token: Token<'_>) -> bool {
    matches!(
        token,
        Token::Word(_) | Token::QuotedIdent(_) | Token::UnicodeIdent { .. }
    )
}

/// Case-insensitive comparison against a lowercase keyword.
#[inline]
fn eq(word: &[u8], lowercase_keyword: &[u8]) -> bool {
    word.len() == lowercase_keyword.len()
        && word
            .iter()
            .zip(lowercase_keyword)
            .all(|(a, b)| a.to_ascii_lowercase() == *b)
}

/// `/* herd:primary */`, with any surrounding space and in any case.
fn is_primary_hint(body: &[u8]) -> bool {
    eq(body.trim_ascii(), b"herd:primary")
}

#[cfg(test)]
mod tests;
