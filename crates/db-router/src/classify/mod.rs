//! Statement classification: which node may run a statement.
//!
//! The classifier is conservative. A statement goes to a replica only when it is
//! provably read-only: it starts with `SELECT`, `WITH`, `VALUES`, `TABLE`, `SHOW`,
//! `EXPLAIN` (without `ANALYZE`) or a parenthesised query, and contains
//!
//! - no locking clause (`FOR UPDATE`, `FOR NO KEY UPDATE`, `FOR SHARE`, `FOR KEY SHARE`),
//! - no data-modifying keyword (`INSERT`, `UPDATE`, `DELETE`, `MERGE`, as in a
//!   data-modifying CTE), no `SELECT ... INTO`,
//! - no call to a writing or transaction-id-assigning built-in (`nextval`, `setval`,
//!   `pg_advisory_lock`, `pg_notify`, `set_config`, `txid_current`,
//!   `pg_current_wal_lsn`, ...), nor to a function on the configured write list, nor
//!   (with [`FunctionPolicy::KnownReadOnly`]) to any function herd does not know to be
//!   read-only,
//! - no second statement after a `;`.
//!
//! Everything else, including empty or unterminated SQL, goes to the primary. A leading
//! `/* herd:primary */` comment forces the primary.
//!
//! The lexer understands `--` and nested `/* */` comments, quoted identifiers, standard,
//! `E''` and dollar-quoted strings, so keywords inside them never count. It does not
//! allocate; classifying a typical statement takes well under a microsecond.

mod cache;
mod functions;
mod lexer;

pub(crate) use cache::RouteCache;

use std::collections::HashSet;
use std::fmt;

use serde::{Deserialize, Serialize};

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
    /// A call to a function not known to be read-only, under [`FunctionPolicy::KnownReadOnly`].
    UnknownFunction,
    /// More than one statement in one string.
    MultipleStatements,
    /// A string, quoted identifier or comment that never ends.
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

/// A configured classifier: the built-in rules plus a write list and a function policy.
///
/// [`classify`] is this with no write list and [`FunctionPolicy::WriteList`].
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
#[derive(Debug, Clone, Default)]
pub struct Classifier {
    /// Lowercase names, either bare (`f`, any schema) or qualified (`s.f`).
    write_functions: HashSet<Box<[u8]>>,
    policy: FunctionPolicy,
}

impl Classifier {
    /// A classifier with a write list (case-insensitive names, bare `f` for any schema
    /// or qualified `schema.f`) and a function policy.
    pub fn new<I, S>(write_functions: I, policy: FunctionPolicy) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let write_functions = write_functions
            .into_iter()
            .map(|name| {
                name.as_ref()
                    .trim()
                    .to_ascii_lowercase()
                    .into_bytes()
                    .into_boxed_slice()
            })
            .filter(|name| !name.is_empty())
            .collect();
        Self {
            write_functions,
            policy,
        }
    }

    /// The function policy in force.
    pub fn policy(&self) -> FunctionPolicy {
        self.policy
    }

    /// Classifies one SQL string. Never panics; anything not provably read-only
    /// goes to the primary.
    pub fn classify(&self, sql: &str) -> Route {
        Scan::new(self).run(sql)
    }

    fn listed(&self, schema: Option<&[u8]>, name: &[u8]) -> bool {
        if self.write_functions.is_empty() {
            return false;
        }
        if self.write_functions.contains(name) {
            return true;
        }
        let Some(schema) = schema else { return false };
        let mut qualified = Vec::with_capacity(schema.len() + 1 + name.len());
        qualified.extend_from_slice(schema);
        qualified.push(b'.');
        qualified.extend_from_slice(name);
        self.write_functions.contains(qualified.as_slice())
    }
}

/// Classifies one SQL string with the built-in rules.
///
/// See the [module docs](self) for the rules and [`Classifier`] for a write list or the
/// strict function policy.
pub fn classify(sql: &str) -> Route {
    static DEFAULT: std::sync::LazyLock<Classifier> = std::sync::LazyLock::new(Classifier::default);
    DEFAULT.classify(sql)
}

/// The first keyword of a statement, as far as routing cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Select,
    With,
    Explain,
    Other,
}

/// One pass over the tokens, keeping only the last three for context.
struct Scan<'c, 'a> {
    classifier: &'c Classifier,
    kind: Kind,
    depth: u32,
    /// In `WITH a AS (...), b(x) AS (...)` before the main statement: a word followed by
    /// `(` at depth 0 names a CTE, not a function.
    in_with_header: bool,
    after_semicolon: bool,
    /// The last tokens in a ring (`Other` before the start); see [`Scan::prev`].
    ring: [Token<'a>; 4],
    head: usize,
}

impl<'c, 'a> Scan<'c, 'a> {
    fn new(classifier: &'c Classifier) -> Self {
        Self {
            classifier,
            kind: Kind::Other,
            depth: 0,
            in_with_header: false,
            after_semicolon: false,
            ring: [Token::Other; 4],
            head: 0,
        }
    }

    fn run(mut self, sql: &'a str) -> Route {
        let mut lexer = Lexer::new(sql);
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
            Some(Token::Unterminated) => return Route::Primary(Reason::Unterminated),
            Some(first) => first,
        };
        self.kind = match first {
            Token::Word(w) => match (w.len(), w.first().map(u8::to_ascii_lowercase)) {
                (6, Some(b's')) if eq(w, b"select") => Kind::Select,
                (6, Some(b'v')) if eq(w, b"values") => Kind::Select,
                (5, Some(b't')) if eq(w, b"table") => Kind::Select,
                (4, Some(b's')) if eq(w, b"show") => Kind::Select,
                (4, Some(b'w')) if eq(w, b"with") => Kind::With,
                (7, Some(b'e')) if eq(w, b"explain") => Kind::Explain,
                _ => return Route::Primary(Reason::NotReadOnly),
            },
            Token::LParen => Kind::Select,
            _ => return Route::Primary(Reason::NotReadOnly),
        };
        self.in_with_header = self.kind == Kind::With;
        self.step(first);
        for token in lexer {
            if let Some(reason) = self.step(token) {
                return Route::Primary(reason);
            }
        }
        Route::Replica(Reason::ReadOnly)
    }

    /// The token `back` places before the current one (0: the previous token; at most 2).
    #[inline]
    fn prev(&self, back: usize) -> Token<'a> {
        self.ring[self.head.wrapping_sub(back) & 3]
    }

    /// Looks at one token; `Some(reason)` when it proves the statement needs the primary.
    #[inline]
    fn step(&mut self, token: Token<'a>) -> Option<Reason> {
        if self.after_semicolon && token != Token::Semicolon {
            return Some(Reason::MultipleStatements);
        }
        let verdict = match token {
            Token::Word(word) => self.word(word),
            Token::LParen => {
                let verdict = self.call();
                self.depth += 1;
                verdict
            }
            Token::RParen => {
                self.depth = self.depth.saturating_sub(1);
                None
            }
            Token::Semicolon => {
                self.after_semicolon = true;
                None
            }
            Token::Unterminated => Some(Reason::Unterminated),
            _ => None,
        };
        // A ring, so recording a token is one store instead of shifting three.
        self.head = (self.head + 1) & 3;
        self.ring[self.head] = token;
        verdict
    }

    fn word(&mut self, word: &[u8]) -> Option<Reason> {
        // Dispatch on length and first letter: most words are skipped after one compare.
        let (len, first) = match word {
            [first, ..] if (4..=7).contains(&word.len()) => {
                (word.len(), first.to_ascii_lowercase())
            }
            _ => return None,
        };
        let prev_is = |kw: &[u8]| matches!(self.prev(0), Token::Word(p) if eq(p, kw));
        match (len, first) {
            (4, b'i') if eq(word, b"into") => Some(Reason::SelectInto),
            (5, b's') if eq(word, b"share") && (prev_is(b"for") || prev_is(b"key")) => {
                Some(Reason::LockingClause)
            }
            (5, b'm') if eq(word, b"merge") => Some(Reason::DataModifying),
            (6, b'u') if eq(word, b"update") => {
                if prev_is(b"for") || prev_is(b"key") {
                    Some(Reason::LockingClause)
                } else {
                    Some(Reason::DataModifying)
                }
            }
            (6, b'i') if eq(word, b"insert") => Some(Reason::DataModifying),
            (6, b'd') if eq(word, b"delete") => Some(Reason::DataModifying),
            (6, b's' | b'v') | (5, b't')
                if self.in_with_header
                    && self.depth == 0
                    && (eq(word, b"select") || eq(word, b"values") || eq(word, b"table")) =>
            {
                self.in_with_header = false;
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

    /// At a `(`: is the previous token a function name, and may that function run on a replica?
    fn call(&self) -> Option<Reason> {
        let name = match self.prev(0) {
            Token::Word(name) => Name::Unquoted(name),
            Token::QuotedIdent(name) => Name::Quoted(name),
            _ => return None,
        };
        if self.in_with_header && self.depth == 0 {
            return None; // `WITH t(a, b) AS (...)`: a CTE name with its column list
        }
        // `x::numeric(10, 2)`, `CAST(x AS varchar(20))`, `AS alias(a, b)`, `f(x) alias(a)`:
        // a type or an alias, not a call.
        match self.prev(1) {
            Token::Cast | Token::RParen => return None,
            Token::Word(w) if eq(w, b"as") => return None,
            _ => {}
        }
        let schema = match (self.prev(1), self.prev(2)) {
            (Token::Dot, Token::Word(s) | Token::QuotedIdent(s)) => Some(s),
            _ => None,
        };
        let strict = self.classifier.policy == FunctionPolicy::KnownReadOnly;
        let mut buf = [0u8; 64];
        let Some(lower) = name.lowercase(&mut buf) else {
            // Longer than any name PostgreSQL keeps: on no list, so unknown.
            return strict.then_some(Reason::UnknownFunction);
        };
        if functions::is_writing_builtin(lower) {
            return Some(Reason::WritingFunction);
        }
        let mut schema_buf = [0u8; 64];
        let schema_lower = schema.and_then(|s| ascii_lowercase(s, &mut schema_buf));
        if self.classifier.listed(schema_lower, lower) {
            return Some(Reason::ListedFunction);
        }
        if strict
            && !functions::is_not_a_call(lower, name.is_quoted())
            && !functions::is_read_only_builtin(lower)
        {
            return Some(Reason::UnknownFunction);
        }
        None
    }
}

/// A function name as written.
#[derive(Clone, Copy)]
enum Name<'a> {
    Unquoted(&'a [u8]),
    Quoted(&'a [u8]),
}

impl<'a> Name<'a> {
    fn is_quoted(self) -> bool {
        matches!(self, Name::Quoted(_))
    }

    /// The name as PostgreSQL resolves it: unquoted names fold to lowercase, quoted ones
    /// are exact. `None` when longer than any identifier PostgreSQL keeps (63 bytes):
    /// such a name can be on no list, so the caller treats it as unknown.
    fn lowercase(self, buf: &mut [u8; 64]) -> Option<&[u8]> {
        match self {
            Name::Unquoted(name) => ascii_lowercase(name, buf),
            Name::Quoted(name) => {
                let out = buf.get_mut(..name.len())?;
                out.copy_from_slice(name);
                Some(out)
            }
        }
    }
}

fn ascii_lowercase<'b>(word: &[u8], buf: &'b mut [u8; 64]) -> Option<&'b [u8]> {
    let out = buf.get_mut(..word.len())?;
    for (o, b) in out.iter_mut().zip(word) {
        *o = b.to_ascii_lowercase();
    }
    Some(out)
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
