//! What the classifier knows of the server: which functions and operators are `VOLATILE`,
//! and how `'...'` strings are read.
//!
//! A [`Catalog`] is read from the primary's `pg_proc`, `pg_namespace`, `pg_aggregate`,
//! `pg_operator` and `standard_conforming_strings` when the router is built and again every
//! [`catalog_refresh`](crate::RouterConfig::catalog_refresh), and swapped into the
//! classifier atomically; the route cache forgets every route classified before the swap.
//! Until the first read succeeds, [`Catalog::builtin`] stands in: the volatile functions of
//! PostgreSQL 15 and its contrib extensions, compiled in.
//!
//! Lookups borrow the name (folded into a stack buffer by the lexer) and allocate nothing:
//! each set is a hash set of exact names behind a bitmap of (first byte, length) pairs, so most
//! names that are not in a set cost one table lookup.

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, LazyLock};

use foldhash::fast::FixedState;

use super::functions;

/// How PostgreSQL may optimise calls to a function (`pg_proc.provolatile`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Volatility {
    /// `IMMUTABLE`: the same result for the same arguments, forever.
    Immutable,
    /// `STABLE`: the same result within one statement; PostgreSQL refuses writes in it.
    Stable,
    /// `VOLATILE`: anything, writes and locks included.
    Volatile,
}

impl Volatility {
    /// From `pg_proc.provolatile` (`i`, `s`, `v`); anything else counts as volatile.
    pub fn from_provolatile(code: &str) -> Self {
        match code {
            "i" => Volatility::Immutable,
            "s" => Volatility::Stable,
            _ => Volatility::Volatile,
        }
    }
}

/// One function as the catalog lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogFunction {
    schema: String,
    name: String,
    volatility: Volatility,
    one_argument: bool,
    extension: Option<String>,
}

impl CatalogFunction {
    /// A function `schema.name` (exact, as in `pg_proc.proname`) of the given volatility,
    /// that takes no single argument and belongs to no extension.
    pub fn new(schema: impl Into<String>, name: impl Into<String>, volatility: Volatility) -> Self {
        Self {
            schema: schema.into(),
            name: name.into(),
            volatility,
            one_argument: false,
            extension: None,
        }
    }

    /// Whether it can be called with exactly one argument, which makes it callable through
    /// attribute notation too (`x.f` is `f(x)`).
    pub fn one_argument(mut self, yes: bool) -> Self {
        self.one_argument = yes;
        self
    }

    /// The extension that installed it (for the [safe list](SAFE_VOLATILE)).
    pub fn extension(mut self, extension: Option<String>) -> Self {
        self.extension = extension;
        self
    }
}

pub use super::functions::SAFE_VOLATILE;

/// A set of names with a cheap first test: a bit per (first byte, length) pair present.
#[derive(Clone, Default)]
pub(crate) struct NameSet {
    names: HashSet<Box<[u8]>, FixedState>,
    /// Bit `min(len, 63)` of entry `first byte`.
    shapes: Option<Box<[u64; 256]>>,
}

impl fmt::Debug for NameSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NameSet")
            .field("len", &self.names.len())
            .finish()
    }
}

impl NameSet {
    pub(crate) fn insert(&mut self, name: &[u8]) {
        let Some(&first) = name.first() else { return };
        let shapes = self.shapes.get_or_insert_with(|| Box::new([0; 256]));
        if let Some(bits) = shapes.get_mut(usize::from(first)) {
            *bits |= 1 << name.len().min(63);
        }
        self.names.insert(name.into());
    }

    /// `false` when no name of this first byte and length (at most 63) is in the set.
    #[inline]
    pub(crate) fn maybe(&self, first: u8, len: usize) -> bool {
        self.shapes.as_ref().is_some_and(|shapes| {
            shapes
                .get(usize::from(first))
                .is_some_and(|bits| bits & (1 << len.min(63)) != 0)
        })
    }

    #[inline]
    pub(crate) fn contains(&self, name: &[u8]) -> bool {
        let (Some(shapes), Some(&first)) = (&self.shapes, name.first()) else {
            return false;
        };
        let maybe = shapes
            .get(usize::from(first))
            .is_some_and(|bits| bits & (1 << name.len().min(63)) != 0);
        maybe && self.names.contains(name)
    }

    /// `schema.name` looked up without allocating (names are at most 63 bytes each).
    #[inline]
    pub(crate) fn contains_qualified(&self, schema: &[u8], name: &[u8]) -> bool {
        if self.shapes.is_none() {
            return false;
        }
        let mut buf = [0u8; 128];
        let len = schema.len() + 1 + name.len();
        let Some(out) = buf.get_mut(..len) else {
            return false;
        };
        let (s, rest) = out.split_at_mut(schema.len());
        s.copy_from_slice(schema);
        if let Some((dot, n)) = rest.split_first_mut() {
            *dot = b'.';
            n.copy_from_slice(name);
        }
        self.contains(out)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    fn len(&self) -> usize {
        self.names.len()
    }
}

/// What the classifier knows of one server: its functions' and operators' volatility and
/// its `standard_conforming_strings` setting.
///
/// ```
/// use herd_db_router::{Catalog, CatalogFunction, Classifier, FunctionPolicy, Reason, Route, Volatility};
///
/// let catalog = Catalog::from_functions([
///     CatalogFunction::new("app", "bump_counter", Volatility::Volatile).one_argument(true),
///     CatalogFunction::new("app", "price_of", Volatility::Stable),
/// ]);
/// let classifier = Classifier::new(Vec::<String>::new(), FunctionPolicy::WriteList).with_catalog(catalog);
/// assert_eq!(classifier.classify("SELECT app.bump_counter(1)"), Route::Primary(Reason::VolatileFunction));
/// assert_eq!(classifier.classify("SELECT t.bump_counter FROM t"), Route::Primary(Reason::VolatileFunction));
/// assert!(classifier.classify("SELECT price_of(2)").is_replica());
/// ```
#[derive(Clone)]
pub struct Catalog {
    /// Bare names with at least one volatile, non-safe function of that name.
    calls: NameSet,
    /// `schema.name` of volatile, non-safe functions.
    qualified: NameSet,
    /// `schema.name` of every function the catalog lists.
    listed_qualified: NameSet,
    /// Bare names of volatile, non-safe functions that take one argument.
    attributes: NameSet,
    /// Operators whose function is volatile and not safe.
    operators: NameSet,
    /// Bare names whose every function is stable, immutable or safe.
    read_only: NameSet,
    standard_conforming_strings: bool,
    functions: usize,
    from_server: bool,
}

impl fmt::Debug for Catalog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Catalog")
            .field("functions", &self.functions)
            .field("volatile_names", &self.calls.len())
            .field("volatile_operators", &self.operators.len())
            .field(
                "standard_conforming_strings",
                &self.standard_conforming_strings,
            )
            .field("from_server", &self.from_server)
            .finish_non_exhaustive()
    }
}

/// The compiled-in catalog, built once and shared.
pub(crate) fn builtin_arc() -> Arc<Catalog> {
    static BUILTIN: LazyLock<Arc<Catalog>> = LazyLock::new(|| {
        let mut catalog = Catalog::empty();
        for &(name, one) in functions::VOLATILE_BUILTINS {
            catalog.calls.insert(name.as_bytes());
            catalog
                .qualified
                .insert(format!("pg_catalog.{name}").as_bytes());
            if one {
                catalog.attributes.insert(name.as_bytes());
            }
        }
        catalog.functions = functions::VOLATILE_BUILTINS.len();
        Arc::new(catalog)
    });
    Arc::clone(&BUILTIN)
}

impl Default for Catalog {
    fn default() -> Self {
        Self::builtin()
    }
}

impl Catalog {
    /// The compiled-in catalog: PostgreSQL 15's and its contrib extensions' volatile
    /// functions, `standard_conforming_strings` on. What a classifier uses until the router
    /// has read the server's own catalog.
    pub fn builtin() -> Self {
        Catalog::clone(&builtin_arc())
    }

    fn empty() -> Self {
        Self {
            calls: NameSet::default(),
            qualified: NameSet::default(),
            listed_qualified: NameSet::default(),
            attributes: NameSet::default(),
            operators: NameSet::default(),
            read_only: NameSet::default(),
            standard_conforming_strings: true,
            functions: 0,
            from_server: false,
        }
    }

    /// A catalog of exactly these functions (no operators; `standard_conforming_strings` on).
    /// Volatile functions on the [safe list](SAFE_VOLATILE) count as read-only.
    pub fn from_functions(functions: impl IntoIterator<Item = CatalogFunction>) -> Self {
        let mut catalog = Self::empty();
        let mut volatile_names: HashSet<String, FixedState> = HashSet::default();
        let mut all_names: HashSet<String, FixedState> = HashSet::default();
        for f in functions {
            catalog.functions += 1;
            let qualified = format!("{}.{}", f.schema, f.name);
            catalog.listed_qualified.insert(qualified.as_bytes());
            all_names.insert(f.name.clone());
            let origin = f.extension.as_deref().unwrap_or(&f.schema);
            let hazardous = f.volatility == Volatility::Volatile
                && !functions::is_safe_volatile(origin, &f.name);
            if hazardous {
                catalog.calls.insert(f.name.as_bytes());
                catalog.qualified.insert(qualified.as_bytes());
                if f.one_argument {
                    catalog.attributes.insert(f.name.as_bytes());
                }
                volatile_names.insert(f.name);
            }
        }
        for name in all_names.difference(&volatile_names) {
            catalog.read_only.insert(name.as_bytes());
        }
        catalog
    }

    /// Adds operators (`pg_operator.oprname`, exact) whose function is volatile: using one in
    /// a statement sends it to the primary.
    pub fn with_volatile_operators<S: AsRef<str>>(
        mut self,
        operators: impl IntoIterator<Item = S>,
    ) -> Self {
        for op in operators {
            self.operators.insert(op.as_ref().as_bytes());
        }
        self
    }

    /// The same catalog with the server's `standard_conforming_strings` setting: when off,
    /// a backslash escapes the next character in plain `'...'` strings too.
    pub fn with_standard_conforming_strings(mut self, on: bool) -> Self {
        self.standard_conforming_strings = on;
        self
    }

    /// The `standard_conforming_strings` setting the lexer follows.
    pub fn standard_conforming_strings(&self) -> bool {
        self.standard_conforming_strings
    }

    /// How many functions it lists.
    pub fn functions(&self) -> usize {
        self.functions
    }

    /// `true` when read from a server by [`Catalog::load`], `false` for the compiled-in one
    /// and hand-made ones.
    pub fn is_from_server(&self) -> bool {
        self.from_server
    }

    /// Reads the catalog from a server over `conn`: every function's volatility (an aggregate
    /// counts as volatile when a support function is), the operators backed by volatile
    /// functions, and `standard_conforming_strings`.
    pub async fn load(conn: &mut sqlx::PgConnection) -> Result<Catalog, sqlx::Error> {
        let rows: Vec<(String, String, String, bool, Option<String>)> =
            sqlx::query_as(FUNCTIONS_SQL).fetch_all(&mut *conn).await?;
        let operators: Vec<String> = sqlx::query_scalar(OPERATORS_SQL)
            .fetch_all(&mut *conn)
            .await?;
        let scs: String =
            sqlx::query_scalar("SELECT current_setting('standard_conforming_strings')")
                .fetch_one(&mut *conn)
                .await?;
        let functions = rows
            .into_iter()
            .map(|(schema, name, volatility, one, extension)| {
                CatalogFunction::new(schema, name, Volatility::from_provolatile(&volatility))
                    .one_argument(one)
                    .extension(extension)
            });
        let mut catalog = Catalog::from_functions(functions)
            .with_volatile_operators(operators)
            .with_standard_conforming_strings(scs.eq_ignore_ascii_case("on"));
        catalog.from_server = true;
        Ok(catalog)
    }

    #[inline]
    pub(crate) fn volatile_call(&self, schema: Option<&[u8]>, name: &[u8]) -> bool {
        match schema {
            Some(schema) => {
                self.qualified.contains_qualified(schema, name)
                    // A schema the catalog does not know (or a function created since the last
                    // read): judge by the name alone.
                    || (!self.listed_qualified.contains_qualified(schema, name) && self.calls.contains(name))
            }
            None => self.calls.contains(name),
        }
    }

    #[inline]
    pub(crate) fn maybe_attribute(&self, first: u8, len: usize) -> bool {
        self.attributes.maybe(first, len)
    }

    #[inline]
    pub(crate) fn volatile_attribute(&self, name: &[u8]) -> bool {
        self.attributes.contains(name)
    }

    #[inline]
    pub(crate) fn volatile_operator(&self, op: &[u8]) -> bool {
        !self.operators.is_empty() && self.operators.contains(op)
    }

    #[inline]
    pub(crate) fn known_read_only(&self, name: &[u8]) -> bool {
        self.read_only.contains(name)
    }
}

/// Every function with its schema, effective volatility, whether one argument calls it, and
/// its extension. An aggregate's own `provolatile` says nothing of its support functions, so
/// it counts as volatile when one of them is. (Joins rather than correlated sub-queries: about
/// 15 ms for the 3,600 functions of PostgreSQL 15 with every contrib extension, not 150.)
const FUNCTIONS_SQL: &str = "\
WITH ext AS (
    SELECT d.objid, min(e.extname::text) AS extname
    FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid
    WHERE d.classid = 'pg_catalog.pg_proc'::regclass AND d.deptype = 'e'
    GROUP BY d.objid),
volatile_aggregates AS (
    SELECT DISTINCT a.aggfnoid
    FROM pg_catalog.pg_aggregate a
    JOIN pg_catalog.pg_proc s ON s.oid IN (a.aggtransfn, a.aggfinalfn, a.aggcombinefn,
                                          a.aggmtransfn, a.aggminvtransfn, a.aggmfinalfn)
    WHERE s.provolatile = 'v')
SELECT n.nspname::text, p.proname::text,
       CASE WHEN p.provolatile = 'v' OR va.aggfnoid IS NOT NULL THEN 'v' ELSE p.provolatile::text END,
       p.pronargs - p.pronargdefaults <= 1 AND (p.pronargs >= 1 OR p.provariadic <> 0),
       ext.extname
FROM pg_catalog.pg_proc p
JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
LEFT JOIN ext ON ext.objid = p.oid
LEFT JOIN volatile_aggregates va ON va.aggfnoid = p.oid
WHERE p.prokind <> 'p'";

const OPERATORS_SQL: &str = "\
SELECT DISTINCT o.oprname::text FROM pg_catalog.pg_operator o
JOIN pg_catalog.pg_proc p ON p.oid = o.oprcode WHERE p.provolatile = 'v'";

/// The classifier's catalog cell, shared by a classifier's clones, and the generation the
/// route cache compares with.
#[derive(Debug)]
pub(crate) struct CatalogCell {
    current: arc_swap::ArcSwap<Catalog>,
    /// When the router last read the catalog into this cell.
    pub(crate) refresh: parking_lot::Mutex<RefreshState>,
}

impl CatalogCell {
    pub(crate) fn new(catalog: Arc<Catalog>) -> Self {
        Self {
            current: arc_swap::ArcSwap::new(catalog),
            refresh: parking_lot::Mutex::new(RefreshState::default()),
        }
    }

    #[inline]
    pub(crate) fn load(&self) -> arc_swap::Guard<Arc<Catalog>> {
        self.current.load()
    }

    pub(crate) fn store(&self, catalog: Catalog) {
        self.current.store(Arc::new(catalog));
    }
}

/// When the catalog was last read, for the monitor's catalog reads.
#[derive(Debug, Default)]
pub(crate) struct RefreshState {
    pub(crate) running: bool,
    pub(crate) last_attempt: Option<tokio::time::Instant>,
    pub(crate) last_success: Option<tokio::time::Instant>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_sets_find_exact_names_only() {
        let mut set = NameSet::default();
        assert!(!set.contains(b"x"));
        set.insert(b"pg_advisory_lock");
        set.insert(b"app.bump");
        assert!(set.contains(b"pg_advisory_lock"));
        assert!(!set.contains(b"pg_advisory_locks"));
        assert!(!set.contains(b"PG_ADVISORY_LOCK"));
        assert!(!set.contains(b""));
        assert!(set.contains_qualified(b"app", b"bump"));
        assert!(!set.contains_qualified(b"app", b"bum"));
        let long = [b'a'; 64];
        assert!(!set.contains_qualified(&long, &long));
    }

    #[test]
    fn safe_volatile_functions_and_aggregates() {
        let catalog = Catalog::from_functions([
            CatalogFunction::new("pg_catalog", "random", Volatility::Volatile),
            CatalogFunction::new("public", "random", Volatility::Stable),
            CatalogFunction::new("public", "gen_random_bytes", Volatility::Volatile)
                .extension(Some("pgcrypto".into())),
            CatalogFunction::new("app", "gen_random_bytes", Volatility::Volatile),
            CatalogFunction::new("app", "touch", Volatility::Volatile).one_argument(true),
            CatalogFunction::new("other", "touch", Volatility::Immutable),
        ]);
        assert!(!catalog.volatile_call(None, b"random"));
        assert!(catalog.known_read_only(b"random"));
        assert!(
            catalog.volatile_call(None, b"gen_random_bytes"),
            "app's is not the extension's"
        );
        assert!(!catalog.volatile_call(Some(b"public"), b"gen_random_bytes"));
        assert!(catalog.volatile_call(Some(b"app"), b"touch"));
        assert!(!catalog.volatile_call(Some(b"other"), b"touch"));
        assert!(catalog.volatile_call(Some(b"unknown"), b"touch"));
        assert!(catalog.volatile_call(None, b"touch"));
        assert!(!catalog.known_read_only(b"touch"));
        assert!(catalog.volatile_attribute(b"touch"));
        assert!(!catalog.volatile_attribute(b"random"));
    }

    #[test]
    fn builtin_catalog_has_the_volatile_builtins() {
        let catalog = Catalog::builtin();
        assert!(catalog.volatile_call(None, b"setseed"));
        assert!(catalog.volatile_call(None, b"dblink_exec"));
        assert!(catalog.volatile_call(Some(b"pg_catalog"), b"pg_export_snapshot"));
        assert!(catalog.volatile_attribute(b"pg_advisory_lock"));
        assert!(!catalog.volatile_call(None, b"random"));
        assert!(!catalog.volatile_call(None, b"lower"));
        assert!(catalog.standard_conforming_strings());
        assert!(!catalog.is_from_server());
    }
}
