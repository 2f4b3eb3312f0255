//! A PostgreSQL lexer that reads SQL the way the server's own scanner does, for every token
//! class that decides a route.
//!
//! The rules follow `src/backend/parser/scan.l`; each one below names the scan.l rule it
//! mirrors. What the lexer must never get wrong is where code ends and text begins: a keyword
//! or a call inside a comment, a string or a quoted identifier never counts, and one outside
//! them always does. Where PostgreSQL versions read the same text differently (a number
//! followed by letters is an error since PostgreSQL 15 and two tokens before; `\v` is
//! whitespace since 16), the lexer takes the reading under which the statement can run at
//! all, or the one that shows more code.
//!
//! It never allocates, never fails half-way and takes time linear in the input: an
//! unterminated string, identifier or comment ends the token stream with
//! [`Token::Unterminated`], which the classifier sends to the primary.

/// One significant token. Whitespace and comments are skipped, except that a
/// leading comment is reported once through [`Lexer::leading_comments`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Token<'a> {
    /// An unquoted word (`{identifier}`): keyword or identifier, as written (case preserved).
    Word(&'a [u8]),
    /// A `"quoted identifier"` (`{xdstart}`), without the quotes; doubled quotes are left as
    /// written.
    QuotedIdent(&'a [u8]),
    /// A `U&"identifier"` with Unicode escapes (`{xuistart}`): the body as written and the
    /// escape character (`\` unless a `UESCAPE 'c'` clause follows, which the lexer takes in).
    /// `escape` is 0 when the `UESCAPE` clause could not be read (the name is then unknown).
    UnicodeIdent {
        /// The text between the quotes, doubled quotes as written.
        body: &'a [u8],
        /// The escape character.
        escape: u8,
    },
    /// Any string constant (`''`, `E''`, `N''`, `B''`, `X''`, `U&''`, `$$`), including
    /// continuation segments; its content never matters.
    Literal,
    /// A number or a `$1` parameter.
    Number,
    /// `(`
    LParen,
    /// `)`
    RParen,
    /// `,`
    Comma,
    /// `;`
    Semicolon,
    /// `.`
    Dot,
    /// `::`
    Cast,
    /// An operator (`{operator}`), cut where scan.l cuts it; one-character `self` tokens other
    /// than those above (`+`, `-`, `*`, `/`, `%`, `^`, `<`, `>`, `=`, `[`, `]`, `:`) too.
    Op(&'a [u8]),
    /// Any other character (`{other}`), including a `$` that starts no parameter or quote.
    Other,
    /// A NUL byte: the server never sees past it, so the text is not what it would run.
    Nul,
    /// A string, identifier or comment that never ends.
    Unterminated,
}

/// How the body of a single-quoted string is read (scan.l's exclusive states).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StringMode {
    /// `<xq>` and `<xus>`: only a doubled quote stands for a quote.
    Standard,
    /// `<xe>`: a backslash escapes the next character, a quote included.
    Escape,
    /// `<xb>` and `<xh>`: no escapes at all and no doubled quotes; the first quote ends it.
    Bits,
}

/// Iterator over the significant tokens of one SQL string.
#[derive(Debug)]
pub(crate) struct Lexer<'a> {
    src: &'a [u8],
    pos: usize,
    /// The server's `standard_conforming_strings`: when off, `'...'` reads backslash escapes.
    standard_strings: bool,
}

impl<'a> Lexer<'a> {
    /// A lexer with `standard_conforming_strings` on (the server default since 9.1).
    #[cfg(test)]
    pub(crate) fn new(sql: &'a str) -> Self {
        Self::with_settings(sql, true)
    }

    /// A lexer with the server's `standard_conforming_strings` setting.
    pub(crate) fn with_settings(sql: &'a str, standard_conforming_strings: bool) -> Self {
        Self {
            src: sql.as_bytes(),
            pos: 0,
            standard_strings: standard_conforming_strings,
        }
    }

    /// Skips whitespace and comments at the start and returns the bodies of the
    /// block comments found there (for `/* herd:primary */` hints) through `each`.
    /// Returns `false` if a comment never ends.
    pub(crate) fn leading_comments(&mut self, mut each: impl FnMut(&'a [u8])) -> bool {
        loop {
            self.skip_whitespace();
            match (self.peek(0), self.peek(1)) {
                (Some(b'-'), Some(b'-')) => self.skip_line_comment(),
                (Some(b'/'), Some(b'*')) => {
                    let start = self.pos + 2;
                    if !self.skip_block_comment() {
                        return false;
                    }
                    let end = self.pos.saturating_sub(2).max(start);
                    each(self.src.get(start..end).unwrap_or_default());
                }
                _ => return true,
            }
        }
    }

    /// The unread input (empty past the end, so a skip that overshoots cannot panic).
    #[inline]
    fn rest(&self) -> &'a [u8] {
        self.src.get(self.pos..).unwrap_or_default()
    }

    #[inline]
    fn peek(&self, ahead: usize) -> Option<u8> {
        self.src.get(self.pos + ahead).copied()
    }

    /// `{space}+`: `[ \t\n\r\f]`, and `\v` (whitespace since PostgreSQL 16, a syntax error
    /// before: reading it as a space shows the most code).
    #[inline]
    fn skip_whitespace(&mut self) {
        let rest = self.rest();
        self.pos += rest
            .iter()
            .position(|&b| class(b) & SPACE == 0)
            .unwrap_or(rest.len());
    }

    /// `{comment}`: `--` and everything up to a newline, where scan.l's `{newline}` is
    /// `[\n\r]` (a lone carriage return ends the comment too).
    fn skip_line_comment(&mut self) {
        let rest = self.rest();
        match rest.iter().position(|&b| b == b'\n' || b == b'\r') {
            Some(i) => self.pos += i + 1,
            None => self.pos = self.src.len(),
        }
    }

    /// `{xcstart}` ... `{xcstop}`: a `/* */` comment that starts at `pos`, nesting as
    /// scan.l's `xcdepth` does. Returns `false` if it never ends (`<xc><<EOF>>`).
    fn skip_block_comment(&mut self) -> bool {
        let mut depth = 0usize;
        self.pos += 2;
        while let Some(b) = self.peek(0) {
            match (b, self.peek(1)) {
                (b'/', Some(b'*')) => {
                    depth += 1;
                    self.pos += 2;
                }
                (b'*', Some(b'/')) => {
                    self.pos += 2;
                    match depth.checked_sub(1) {
                        Some(d) => depth = d,
                        None => return true,
                    }
                }
                _ => self.pos += 1,
            }
        }
        false
    }

    /// Reads a single-quoted string body from just after its opening quote up to and
    /// including the closing quote, then any continuation segments (`{quotecontinue}`: a
    /// quote after whitespace that holds a newline continues the same string, in the same
    /// mode). Returns `false` if it never ends.
    fn string_body(&mut self, mode: StringMode) -> bool {
        loop {
            let rest = self.rest();
            let found = match mode {
                StringMode::Escape => rest.iter().position(|&b| b == b'\'' || b == b'\\'),
                StringMode::Standard | StringMode::Bits => memchr(b'\'', rest),
            };
            let Some(i) = found else {
                self.pos = self.src.len();
                return false;
            };
            self.pos += i;
            if self.peek(0) == Some(b'\\') {
                // `{xeescape}`, `{xeoctesc}`, `{xehexesc}`, `{xeunicode}`: the character
                // after a backslash never ends the string; longer escapes hold no quote.
                if self.peek(1).is_none() {
                    self.pos = self.src.len();
                    return false;
                }
                self.pos += 2;
                continue;
            }
            // At a quote: `{xqdouble}` (not in bit strings), else the end of this segment.
            if mode != StringMode::Bits && self.peek(1) == Some(b'\'') {
                self.pos += 2;
                continue;
            }
            self.pos += 1;
            match self.continuation() {
                Some(next) => self.pos = next + 1,
                None => return true,
            }
        }
    }

    /// `{quotecontinue}` after a closing quote: `{whitespace_with_newline}{quote}`, that is
    /// horizontal space and `--` comments, a newline, then any whitespace or `--` comments
    /// that end in a newline, then a quote. Returns the position of that quote.
    fn continuation(&self) -> Option<usize> {
        let src = self.src;
        let mut i = self.pos;
        let mut newline = false;
        loop {
            match src.get(i).copied() {
                Some(b' ' | b'\t' | 0x0C | 0x0B) => i += 1,
                Some(b'\n' | b'\r') => {
                    newline = true;
                    i += 1;
                }
                Some(b'-') if src.get(i + 1) == Some(&b'-') => {
                    let end = src
                        .get(i..)
                        .unwrap_or_default()
                        .iter()
                        .position(|&b| b == b'\n' || b == b'\r')?;
                    // A comment is part of the whitespace only up to its newline.
                    i += end;
                }
                Some(b'\'') if newline => return Some(i),
                _ => return None,
            }
        }
    }

    /// At a `$`: `{dolqdelim}` (a `$tag$` body that ends at the first identical tag),
    /// `{param}` (`$1`), or `{dolqfailed}` / `{other}` (a lone `$`).
    fn dollar(&mut self) -> Token<'a> {
        let start = self.pos;
        let mut end = start + 1;
        if self.src.get(end).is_some_and(u8::is_ascii_digit) {
            while self.src.get(end).is_some_and(u8::is_ascii_digit) {
                end += 1;
            }
            // `{param_junk}` is an error since PostgreSQL 15, two tokens before.
            self.pos = end;
            return Token::Number;
        }
        // A tag is an identifier without `$`; it may not start with a digit (handled above).
        while self
            .src
            .get(end)
            .is_some_and(|&b| is_ident_byte(b) && b != b'$')
        {
            end += 1;
        }
        if self.src.get(end) != Some(&b'$') {
            // `{dolqfailed}`: the `$` alone is `{other}`; the rest is read again.
            self.pos = start + 1;
            return Token::Other;
        }
        let tag = self.src.get(start..=end).unwrap_or_default();
        let body_start = end + 1;
        // Every `$` in the body starts a token in `<xdolq>`, and a `{dolqdelim}` there is the
        // longest `$ident$` at that `$`: so the body ends at the first occurrence of the tag.
        match find(self.src.get(body_start..).unwrap_or_default(), tag) {
            Some(i) => {
                self.pos = body_start + i + tag.len();
                Token::Literal
            }
            None => {
                self.pos = self.src.len();
                Token::Unterminated
            }
        }
    }

    /// `{identifier}`, or a one-letter string prefix: `{xbstart}`, `{xhstart}`, `{xnstart}`,
    /// `{xestart}`, `{xusstart}`, `{xuistart}` (and `{xufailed}`, which is the identifier
    /// `u` followed by `&`).
    fn word(&mut self) -> Token<'a> {
        let start = self.pos;
        let rest = self.rest();
        self.pos += rest
            .iter()
            .position(|&b| !is_ident_byte(b))
            .unwrap_or(rest.len());
        let word = self.src.get(start..self.pos).unwrap_or_default();
        if word.len() != 1 {
            return Token::Word(word);
        }
        match (word, self.peek(0)) {
            ([b'e' | b'E'], Some(b'\'')) => self.literal(StringMode::Escape),
            ([b'b' | b'B' | b'x' | b'X'], Some(b'\'')) => self.literal(StringMode::Bits),
            // `{xnstart}` eats only the `n`; the string after it is a plain `{xqstart}`.
            ([b'n' | b'N'], Some(b'\'')) => self.literal(self.plain_mode()),
            ([b'u' | b'U'], Some(b'&')) => match self.peek(1) {
                Some(b'\'') => {
                    // `{xusstart}`: `<xus>` reads like `<xq>` (an error with
                    // standard_conforming_strings off, wherever it ends).
                    self.pos += 1;
                    match self.literal(StringMode::Standard) {
                        Token::Literal => {
                            self.uescape();
                            Token::Literal
                        }
                        other => other,
                    }
                }
                Some(b'"') => {
                    self.pos += 1;
                    match self.quoted_ident() {
                        Token::QuotedIdent(body) => Token::UnicodeIdent {
                            body,
                            escape: self.uescape(),
                        },
                        other => other,
                    }
                }
                _ => Token::Word(word),
            },
            _ => Token::Word(word),
        }
    }

    /// The mode of a plain `'...'` string: `<xq>`, or `<xe>` with standard_conforming_strings
    /// off (scan.l's `{xqstart}` action).
    #[inline]
    fn plain_mode(&self) -> StringMode {
        if self.standard_strings {
            StringMode::Standard
        } else {
            StringMode::Escape
        }
    }

    /// After a `U&` string or identifier: the grammar's `UESCAPE 'c'` clause (taken in by
    /// parser.c's look-ahead, with any whitespace or comments between). Consumes it when
    /// present and returns the escape character: `\` without a clause, 0 when the clause is
    /// there but its string is not one plain character (the server rejects most such
    /// clauses; the classifier treats the name as unknown).
    fn uescape(&mut self) -> u8 {
        let saved = self.pos;
        let mut ahead = Lexer {
            src: self.src,
            pos: self.pos,
            standard_strings: self.standard_strings,
        };
        if !ahead.leading_comments(|_| {}) {
            return b'\\';
        }
        match ahead.next() {
            Some(Token::Word(w)) if w.eq_ignore_ascii_case(b"uescape") => {}
            _ => {
                self.pos = saved;
                return b'\\';
            }
        }
        if !ahead.leading_comments(|_| {}) {
            self.pos = ahead.pos;
            return 0;
        }
        let string_start = ahead.pos;
        let token = ahead.next();
        self.pos = ahead.pos;
        match (token, self.src.get(string_start..ahead.pos)) {
            (Some(Token::Literal), Some([b'\'', c, b'\'']))
                if *c != b'\\' || self.standard_strings =>
            {
                *c
            }
            _ => 0,
        }
    }

    fn literal(&mut self, mode: StringMode) -> Token<'a> {
        self.pos += 1; // the opening quote
        if self.string_body(mode) {
            Token::Literal
        } else {
            Token::Unterminated
        }
    }

    /// `{xdstart}` ... `{xdstop}`: a quoted identifier that starts at `pos` (on the quote);
    /// `{xddouble}` stands for one quote.
    fn quoted_ident(&mut self) -> Token<'a> {
        let start = self.pos + 1;
        self.pos = start;
        loop {
            let Some(i) = memchr(b'"', self.rest()) else {
                self.pos = self.src.len();
                return Token::Unterminated;
            };
            self.pos += i;
            if self.peek(1) == Some(b'"') {
                self.pos += 2;
                continue;
            }
            let end = self.pos;
            self.pos += 1;
            return Token::QuotedIdent(self.src.get(start..end).unwrap_or_default());
        }
    }

    /// `{decinteger}`, `{hexinteger}`, `{octinteger}`, `{bininteger}`, `{numeric}`, `{real}`.
    /// The `*_junk` and `*fail` rules are errors since PostgreSQL 15; before, the letters
    /// after a number were a token of their own (`1e'...'` was `1` and `E'...'`), so the
    /// lexer stops the number where a valid one stops and reads on from there.
    fn number(&mut self) -> Token<'a> {
        let digits = |lexer: &mut Self, radix_ok: fn(u8) -> bool| {
            let start = lexer.pos;
            while let Some(b) = lexer.peek(0) {
                if radix_ok(b) || (b == b'_' && lexer.peek(1).is_some_and(radix_ok)) {
                    lexer.pos += 1;
                } else {
                    break;
                }
            }
            lexer.pos > start
        };
        if self.peek(0) == Some(b'0') {
            let radix: Option<fn(u8) -> bool> = match self.peek(1) {
                Some(b'x' | b'X') => Some(|b: u8| b.is_ascii_hexdigit()),
                Some(b'o' | b'O') => Some(|b: u8| (b'0'..=b'7').contains(&b)),
                Some(b'b' | b'B') => Some(|b: u8| b == b'0' || b == b'1'),
                _ => None,
            };
            if let Some(ok) = radix {
                let at = self.pos;
                self.pos += 2;
                if self.peek(0) == Some(b'_') {
                    self.pos += 1;
                }
                if digits(self, ok) {
                    return Token::Number;
                }
                self.pos = at; // `{hexfail}` and kin: `0`, then the rest read again
            }
        }
        let integer = digits(self, |b| b.is_ascii_digit());
        // `{numericfail}`: `1..` is an integer followed by `..`.
        if self.peek(0) == Some(b'.') && self.peek(1) != Some(b'.') {
            let at = self.pos;
            self.pos += 1;
            let fraction = digits(self, |b| b.is_ascii_digit());
            if !integer && !fraction {
                self.pos = at;
                return Token::Dot;
            }
        }
        if let Some(b'e' | b'E') = self.peek(0) {
            let at = self.pos;
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek(0) {
                self.pos += 1;
            }
            if !digits(self, |b| b.is_ascii_digit()) {
                self.pos = at; // `{realfail}`
            }
        }
        Token::Number
    }

    /// `{operator}`: a run of `op_chars`, cut before an embedded `/*` or `--`, and without
    /// trailing `+`/`-` unless the run holds one of `~!@#^&|\`?%`. A single character that
    /// is also in `self` stays that character.
    fn operator(&mut self) -> Token<'a> {
        let start = self.pos;
        let mut end = start;
        while let Some(&b) = self.src.get(end) {
            let next = self.src.get(end + 1).copied();
            let comment = matches!((b, next), (b'-', Some(b'-')) | (b'/', Some(b'*')));
            if is_operator_byte(b) && !comment {
                end += 1;
            } else {
                break;
            }
        }
        let run = self.src.get(start..end).unwrap_or_default();
        let mut len = run.len();
        if len > 1 && matches!(run.last(), Some(b'+' | b'-')) {
            let special = run.iter().any(|b| {
                matches!(
                    b,
                    b'~' | b'!' | b'@' | b'#' | b'^' | b'&' | b'|' | b'`' | b'?' | b'%'
                )
            });
            if !special {
                while len > 1 && matches!(run.get(len - 1), Some(b'+' | b'-')) {
                    len -= 1;
                }
            }
        }
        // Never empty: the caller saw an operator byte that starts no comment.
        let len = len.max(1);
        self.pos = start + len;
        Token::Op(self.src.get(start..start + len).unwrap_or_default())
    }
}

impl<'a> Iterator for Lexer<'a> {
    type Item = Token<'a>;

    fn next(&mut self) -> Option<Token<'a>> {
        loop {
            self.skip_whitespace();
            let b = self.peek(0)?;
            // Words are most tokens: take them before the punctuation dispatch.
            if is_ident_start(b) {
                return Some(self.word());
            }
            let token = match b {
                b'-' if self.peek(1) == Some(b'-') => {
                    self.skip_line_comment();
                    continue;
                }
                b'/' if self.peek(1) == Some(b'*') => {
                    if self.skip_block_comment() {
                        continue;
                    }
                    Token::Unterminated
                }
                b'\'' => self.literal(self.plain_mode()),
                b'"' => self.quoted_ident(),
                b'$' => self.dollar(),
                b'(' => self.single(Token::LParen),
                b')' => self.single(Token::RParen),
                b',' => self.single(Token::Comma),
                b';' => self.single(Token::Semicolon),
                b':' if self.peek(1) == Some(b':') => {
                    self.pos += 2;
                    Token::Cast
                }
                b':' | b'[' | b']' => {
                    self.pos += 1;
                    Token::Op(self.src.get(self.pos - 1..self.pos).unwrap_or_default())
                }
                b'.' if self.peek(1).is_some_and(|d| d.is_ascii_digit()) => self.number(),
                b'.' => self.single(Token::Dot),
                b'0'..=b'9' => self.number(),
                0 => self.single(Token::Nul),
                b if is_operator_byte(b) => self.operator(),
                _ => self.single(Token::Other),
            };
            return Some(token);
        }
    }
}

impl<'a> Lexer<'a> {
    #[inline]
    fn single(&mut self, token: Token<'a>) -> Token<'a> {
        self.pos += 1;
        token
    }
}

const SPACE: u8 = 1;
const IDENT_START: u8 = 2;
const IDENT: u8 = 4;
const OPERATOR: u8 = 8;

/// Character classes of every byte, so the hot loops do one lookup per byte.
static CLASSES: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0usize;
    while b < 256 {
        let c = b as u8;
        let mut class = 0;
        // scan.l `{space}`, plus `\v` (PostgreSQL 16's `{space}`).
        if matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0C | 0x0B) {
            class |= SPACE;
        }
        // `ident_start`: `[A-Za-z\200-\377_]`.
        if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 {
            class |= IDENT_START | IDENT;
        }
        // `ident_cont` adds `[0-9\$]`.
        if c.is_ascii_digit() || c == b'$' {
            class |= IDENT;
        }
        // `op_chars`: `[\~\!\@\#\^\&\|\`\?\+\-\*\/\%\<\>\=]`.
        if matches!(
            c,
            b'~' | b'!'
                | b'@'
                | b'#'
                | b'^'
                | b'&'
                | b'|'
                | b'`'
                | b'?'
                | b'+'
                | b'-'
                | b'*'
                | b'/'
                | b'%'
                | b'<'
                | b'>'
                | b'='
        ) {
            class |= OPERATOR;
        }
        table[b] = class;
        b += 1;
    }
    table
};

#[inline]
fn class(b: u8) -> u8 {
    CLASSES[b as usize]
}

#[inline]
fn is_ident_start(b: u8) -> bool {
    class(b) & IDENT_START != 0
}

#[inline]
fn is_ident_byte(b: u8) -> bool {
    class(b) & IDENT != 0
}

#[inline]
fn is_operator_byte(b: u8) -> bool {
    class(b) & OPERATOR != 0
}

#[inline]
fn memchr(needle: u8, haystack: &[u8]) -> Option<usize> {
    haystack.iter().position(|&b| b == needle)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    let (&first, tail) = needle.split_first()?;
    let mut from = 0;
    // Jump from `$` to `$` rather than comparing at every byte: bounded by the body's length
    // times the tag's, and most bodies hold few `$`.
    while let Some(i) = haystack.get(from..).and_then(|h| memchr(first, h)) {
        let at = from + i;
        if haystack.get(at + 1..at + 1 + tail.len()) == Some(tail) {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

/// The longest prefix of `name` that PostgreSQL keeps of an identifier (`NAMEDATALEN - 1`,
/// 63 bytes), cut at a character boundary as `truncate_identifier` does for UTF-8.
pub(crate) fn truncate_identifier(name: &[u8]) -> &[u8] {
    const MAX: usize = 63;
    if name.len() <= MAX {
        return name;
    }
    let mut end = MAX;
    while end > 0 && name.get(end).is_some_and(|b| b & 0xC0 == 0x80) {
        end -= 1;
    }
    name.get(..end).unwrap_or_default()
}

/// The name an identifier token stands for, as PostgreSQL resolves it, written into `buf`:
/// unquoted words fold ASCII letters to lowercase (`downcase_identifier` for UTF-8), quoted
/// ones are exact with doubled quotes undone, `U&` ones have their escapes decoded
/// (`str_udeescape`); all are cut to 63 bytes. `None` for a token that names nothing or a
/// `U&` name that cannot be decoded.
pub(crate) fn identifier<'b>(token: Token<'_>, buf: &'b mut [u8; 64]) -> Option<&'b [u8]> {
    // The common cases first: an unquoted word, a quoted name without doubled quotes.
    match token {
        Token::Word(word) => {
            let mut len = 0;
            for (out, b) in buf.iter_mut().zip(word) {
                *out = b.to_ascii_lowercase();
                len += 1;
            }
            return Some(truncate_identifier(buf.get(..len)?));
        }
        Token::QuotedIdent(body) if memchr(b'"', body).is_none() => {
            let len = body.len().min(64);
            let out = buf.get_mut(..len)?;
            out.copy_from_slice(body.get(..len)?);
            return Some(truncate_identifier(out));
        }
        _ => {}
    }
    let mut len = 0usize;
    let mut push = |b: u8, len: &mut usize| -> bool {
        // Keep one byte beyond 63 so the cut below can see a character boundary.
        if let Some(slot) = buf.get_mut(*len) {
            *slot = b;
            *len += 1;
            true
        } else {
            false
        }
    };
    match token {
        Token::Word(word) => {
            for &b in word {
                if !push(b.to_ascii_lowercase(), &mut len) {
                    break;
                }
            }
        }
        Token::QuotedIdent(body) => {
            let mut bytes = body.iter();
            while let Some(&b) = bytes.next() {
                if b == b'"' {
                    bytes.next(); // `""` stands for one quote
                }
                if !push(b, &mut len) {
                    break;
                }
            }
        }
        Token::UnicodeIdent { body, escape } => {
            if escape == 0 {
                return None;
            }
            let mut rest = body;
            let mut pending_high: Option<u32> = None;
            while let Some((&b, tail)) = rest.split_first() {
                rest = tail;
                let b = if b == b'"' {
                    rest = rest.get(1..).unwrap_or_default();
                    b'"'
                } else {
                    b
                };
                if b != escape {
                    if pending_high.is_some() {
                        return None;
                    }
                    if !push(b, &mut len) {
                        break;
                    }
                    continue;
                }
                // `\\`, `\XXXX` or `\+XXXXXX`.
                let code = match rest.first() {
                    Some(&c) if c == escape => {
                        rest = rest.get(1..).unwrap_or_default();
                        if pending_high.is_some() || !push(escape, &mut len) {
                            return None;
                        }
                        continue;
                    }
                    Some(b'+') => {
                        let code = hex(rest.get(1..7)?)?;
                        rest = rest.get(7..).unwrap_or_default();
                        code
                    }
                    _ => {
                        let code = hex(rest.get(..4)?)?;
                        rest = rest.get(4..).unwrap_or_default();
                        code
                    }
                };
                let code = match (pending_high.take(), code) {
                    (None, 0xD800..=0xDBFF) => {
                        pending_high = Some(code);
                        continue;
                    }
                    (Some(high), 0xDC00..=0xDFFF) => {
                        0x10000 + ((high - 0xD800) << 10) + (code - 0xDC00)
                    }
                    (Some(_), _) | (None, 0xDC00..=0xDFFF) => return None,
                    (None, code) => code,
                };
                let c = char::from_u32(code).filter(|&c| c != '\0')?;
                let mut utf8 = [0u8; 4];
                for &b in c.encode_utf8(&mut utf8).as_bytes() {
                    if !push(b, &mut len) {
                        break;
                    }
                }
            }
            if pending_high.is_some() {
                return None;
            }
        }
        _ => return None,
    }
    let name = buf.get(..len)?;
    Some(truncate_identifier(name))
}

fn hex(digits: &[u8]) -> Option<u32> {
    digits.iter().try_fold(0u32, |acc, &d| {
        let v = (d as char).to_digit(16)?;
        Some(acc * 16 + v)
    })
}

#[cfg(test)]
mod tests {
    use super::Token::*;
    use super::*;

    fn tokens(sql: &str) -> Vec<Token<'_>> {
        Lexer::new(sql).collect()
    }

    fn tokens_scs_off(sql: &str) -> Vec<Token<'_>> {
        Lexer::with_settings(sql, false).collect()
    }

    fn name(token: Token<'_>) -> Option<Vec<u8>> {
        let mut buf = [0u8; 64];
        identifier(token, &mut buf).map(<[u8]>::to_vec)
    }

    #[test]
    fn words_and_punctuation() {
        assert_eq!(
            tokens("SELECT a.b, f(1)::int;"),
            vec![
                Word(b"SELECT"),
                Word(b"a"),
                Dot,
                Word(b"b"),
                Comma,
                Word(b"f"),
                LParen,
                Number,
                RParen,
                Cast,
                Word(b"int"),
                Semicolon
            ]
        );
    }

    /// scan.l `{identifier}`: `ident_start` then `ident_cont`, which holds `$` and digits;
    /// bytes from 0x80 up are letters.
    #[test]
    fn rule_identifier() {
        assert_eq!(
            tokens("a$b _x1 ñame"),
            vec![Word(b"a$b"), Word(b"_x1"), Word("ñame".as_bytes())]
        );
        assert_eq!(name(Word(b"NextVal")), Some(b"nextval".to_vec()));
        // `downcase_identifier` folds ASCII only in UTF-8.
        assert_eq!(name(Word("ÉA".as_bytes())), Some("Éa".as_bytes().to_vec()));
    }

    /// scan.l `{comment}`: `"--"{non_newline}*` where `non_newline` is `[^\n\r]`.
    #[test]
    fn rule_comment_ends_at_newline_or_carriage_return() {
        assert_eq!(tokens("a -- update\n b"), vec![Word(b"a"), Word(b"b")]);
        assert_eq!(tokens("a -- update\r b"), vec![Word(b"a"), Word(b"b")]);
        assert_eq!(tokens("a -- x\x0b for update"), vec![Word(b"a")]);
        assert_eq!(tokens("a--b"), vec![Word(b"a")]);
    }

    /// scan.l `{xcstart}`, `<xc>{xcstart}` (depth + 1), `<xc>{xcstop}`, `<xc><<EOF>>`.
    #[test]
    fn rule_xc_nested_comments() {
        assert_eq!(
            tokens("a /* x /* update */ still comment */ b"),
            vec![Word(b"a"), Word(b"b")]
        );
        assert_eq!(tokens("a /* never ends"), vec![Word(b"a"), Unterminated]);
        assert_eq!(tokens("a /* /* */ b"), vec![Word(b"a"), Unterminated]);
        assert_eq!(
            tokens("a /**/ b /***/ c /*/ d */ e"),
            vec![Word(b"a"), Word(b"b"), Word(b"c"), Word(b"e")]
        );
        // `{operator}` stops before a comment start.
        assert_eq!(tokens("1-/**/-2"), vec![Number, Op(b"-"), Op(b"-"), Number]);
        assert_eq!(tokens("1 +/* c */2"), vec![Number, Op(b"+"), Number]);
    }

    /// scan.l `{space}`: `[ \t\n\r\f]` (and `\v` since PostgreSQL 16).
    #[test]
    fn rule_space() {
        assert_eq!(tokens("a\t\n\r\x0c\x0bb"), vec![Word(b"a"), Word(b"b")]);
    }

    /// scan.l `{xqstart}` with standard_conforming_strings on: `<xq>`, where only `''`
    /// stands for a quote and a backslash is an ordinary character.
    #[test]
    fn rule_xq_standard_strings() {
        assert_eq!(tokens("'it''s; update'"), vec![Literal]);
        assert_eq!(tokens(r"'a\' x"), vec![Literal, Word(b"x")]);
        assert_eq!(tokens("'never ends"), vec![Unterminated]);
    }

    /// scan.l `{xqstart}` with standard_conforming_strings off: `<xe>`, backslash escapes.
    #[test]
    fn rule_xqstart_without_standard_conforming_strings() {
        assert_eq!(tokens_scs_off(r"'a\' x"), vec![Unterminated]);
        assert_eq!(
            tokens_scs_off(r"'a\' , f(1) --' x"),
            vec![Literal, Word(b"x")]
        );
        assert_eq!(
            tokens(r"'a\' , f(1) --' x"),
            vec![Literal, Comma, Word(b"f"), LParen, Number, RParen]
        );
        assert_eq!(tokens_scs_off(r"'a\\' x"), vec![Literal, Word(b"x")]);
        // `{xnstart}` eats only the `n`: the string after it follows the setting too.
        assert_eq!(tokens_scs_off(r"N'a\' x' y"), vec![Literal, Word(b"y")]);
        assert_eq!(
            tokens(r"N'a\' z' y"),
            vec![Literal, Word(b"z"), Unterminated]
        );
        // ... and `x'` there starts a hexadecimal string (`{xhstart}`), as in the server.
        assert_eq!(tokens(r"N'a\' x' y"), vec![Literal, Unterminated]);
    }

    /// scan.l `{xestart}`: `<xe>` with `{xeescape}`, `{xeoctesc}`, `{xehexesc}`, `{xeunicode}`.
    #[test]
    fn rule_xe_escape_strings() {
        assert_eq!(tokens(r"E'it\'s; update' x"), vec![Literal, Word(b"x")]);
        assert_eq!(tokens(r"e'\\' x"), vec![Literal, Word(b"x")]);
        assert_eq!(tokens(r"E'\x27\047\u0027' x"), vec![Literal, Word(b"x")]);
        assert_eq!(tokens(r"E'ends with \"), vec![Unterminated]);
        assert_eq!(tokens(r"E'\"), vec![Unterminated]);
    }

    /// scan.l `{xbstart}` / `{xhstart}`: `[^']*` then the first quote ends the body; there is
    /// no `{xqdouble}` in `<xb>` and `<xh>`.
    #[test]
    fn rule_xb_xh_bit_strings() {
        assert_eq!(tokens("B'101' X'ff'"), vec![Literal, Literal]);
        assert_eq!(tokens(r"b'1\' x"), vec![Literal, Word(b"x")]);
        // `B'1'` then a new plain string `' , f(1) , '`.
        assert_eq!(
            tokens_scs_off(r"B'1''\' , f(1) --'"),
            vec![Literal, Literal]
        );
    }

    /// scan.l `{quotecontinue}`: a quote after whitespace holding a newline continues the
    /// string in the same state (so an `E''` string's continuation reads escapes too).
    #[test]
    fn rule_quotecontinue() {
        assert_eq!(tokens("'a'\n'b' x"), vec![Literal, Word(b"x")]);
        assert_eq!(tokens("'a' -- c\n 'b' x"), vec![Literal, Word(b"x")]);
        assert_eq!(
            tokens("'a' 'b'"),
            vec![Literal, Literal],
            "no newline: two strings"
        );
        assert_eq!(
            tokens("'a' /* c */\n'b'"),
            vec![Literal, Literal],
            "block comments do not continue"
        );
        assert_eq!(tokens("E'a'\n'\\' , f(1) --' x"), vec![Literal, Word(b"x")]);
        assert_eq!(
            tokens("'a'\n'\\' , f(1) --' x"),
            vec![Literal, Comma, Word(b"f"), LParen, Number, RParen]
        );
        assert_eq!(tokens("'a'\r\n\t'b'"), vec![Literal]);
    }

    /// scan.l `{dolqdelim}`, `<xdolq>{dolqdelim}` (a different tag is text), `{dolqfailed}`.
    #[test]
    fn rule_dollar_quotes() {
        assert_eq!(tokens("$$ update; $$ x"), vec![Literal, Word(b"x")]);
        assert_eq!(tokens("$fn$ a $$ b $fn$ x"), vec![Literal, Word(b"x")]);
        assert_eq!(tokens("$b$ $a$b$ x"), vec![Literal, Word(b"x")]);
        assert_eq!(tokens("$a$ never"), vec![Unterminated]);
        assert_eq!(tokens("$é$ x $é$ y"), vec![Literal, Word(b"y")]);
        assert_eq!(tokens("$ x"), vec![Other, Word(b"x")]);
        assert_eq!(tokens("$a x"), vec![Other, Word(b"a"), Word(b"x")]);
        // A tag cannot start with a digit; after a number a `$` starts a quote.
        assert_eq!(tokens("1$a$ x $a$ y"), vec![Number, Literal, Word(b"y")]);
    }

    /// scan.l `{param}` (and `{param_junk}`, an error since 15, two tokens before).
    #[test]
    fn rule_param() {
        assert_eq!(tokens("$1 $23"), vec![Number, Number]);
        assert_eq!(tokens("$1for"), vec![Number, Word(b"for")]);
    }

    /// scan.l `{xdstart}`, `{xddouble}`, `{xdstop}`, `<xd><<EOF>>`; names are exact and cut at
    /// 63 bytes (`truncate_identifier`).
    #[test]
    fn rule_xd_quoted_identifiers() {
        assert_eq!(
            tokens(r#""Update" "a""b""#),
            vec![QuotedIdent(b"Update"), QuotedIdent(b"a\"\"b")]
        );
        assert_eq!(tokens(r#""open"#), vec![Unterminated]);
        assert_eq!(name(QuotedIdent(b"a\"\"b")), Some(b"a\"b".to_vec()));
        assert_eq!(name(QuotedIdent(b"NextVal")), Some(b"NextVal".to_vec()));
        let long = format!("{}x", "é".repeat(31)); // 62 bytes of é, then x: 63
        assert_eq!(
            name(QuotedIdent(long.as_bytes())).map(|n| n.len()),
            Some(63)
        );
        let longer = "é".repeat(40); // 80 bytes: cut to 62 at a character boundary
        assert_eq!(
            name(QuotedIdent(longer.as_bytes())).map(|n| n.len()),
            Some(62)
        );
        let words = "a".repeat(70);
        assert_eq!(name(Word(words.as_bytes())).map(|n| n.len()), Some(63));
    }

    /// scan.l `{xuistart}` and parser.c's `UESCAPE` look-ahead with `str_udeescape`.
    #[test]
    fn rule_xui_unicode_identifiers() {
        let t = tokens(r#"U&"\0070g_advisory_lock"(1)"#);
        assert_eq!(
            t[0],
            UnicodeIdent {
                body: br"\0070g_advisory_lock",
                escape: b'\\'
            }
        );
        assert_eq!(t[1], LParen);
        assert_eq!(name(t[0]), Some(b"pg_advisory_lock".to_vec()));
        let t = tokens(
            r#"u&"!0070g_sleep" /* c */ UESCAPE -- c
            '!' (1)"#,
        );
        assert_eq!(
            t[0],
            UnicodeIdent {
                body: b"!0070g_sleep",
                escape: b'!'
            }
        );
        assert_eq!(t[1], LParen);
        assert_eq!(name(t[0]), Some(b"pg_sleep".to_vec()));
        assert_eq!(
            name(tokens(r#"U&"a\+000062\\""""#)[0]),
            Some(br#"ab\""#.to_vec())
        );
        assert_eq!(
            name(tokens(r#"U&"\D83D\DE00""#)[0]),
            Some("😀".as_bytes().to_vec())
        );
        assert_eq!(
            name(tokens(r#"U&"\D83Dx""#)[0]),
            None,
            "a lone surrogate is an error"
        );
        assert_eq!(name(tokens(r#"U&"\00""#)[0]), None);
        assert_eq!(name(tokens(r#"U&"x" UESCAPE 'ab'"#)[0]), None);
        // `{xufailed}`: `u&` not followed by a quote is the identifier `u` and `&`.
        assert_eq!(tokens("u&x"), vec![Word(b"u"), Op(b"&"), Word(b"x")]);
    }

    /// scan.l `{xusstart}`: `<xus>` reads like `<xq>`; an optional `UESCAPE` string follows.
    #[test]
    fn rule_xus_unicode_strings() {
        assert_eq!(tokens(r"U&'d\0061t\+000061' x"), vec![Literal, Word(b"x")]);
        assert_eq!(tokens(r"U&'a\' x"), vec![Literal, Word(b"x")]);
        assert_eq!(tokens("U&'!0061' UESCAPE '!' x"), vec![Literal, Word(b"x")]);
        assert_eq!(
            tokens("U&'a'\n'b' UESCAPE '!' , x"),
            vec![Literal, Comma, Word(b"x")]
        );
    }

    /// scan.l `{decinteger}`, `{numeric}`, `{real}`, `{hexinteger}`, `{numericfail}`,
    /// `{realfail}` and the `*_junk` rules (letters after a number are a token of their own,
    /// as before PostgreSQL 15).
    #[test]
    fn rule_numbers() {
        assert_eq!(
            tokens("1 1.5 .5 1e5 1.5E-3 1_000 0x1F 0o17 0b101"),
            vec![Number; 9]
        );
        assert_eq!(tokens("1..5"), vec![Number, Dot, Number]);
        assert_eq!(
            tokens("1for update"),
            vec![Number, Word(b"for"), Word(b"update")]
        );
        assert_eq!(tokens(r"1e'\' x'"), vec![Number, Literal]);
        assert_eq!(tokens("1e"), vec![Number, Word(b"e")]);
        assert_eq!(tokens("0x"), vec![Number, Word(b"x")]);
        assert_eq!(tokens("0x'ff'"), vec![Number, Literal]);
        assert_eq!(tokens("1.x"), vec![Number, Word(b"x")]);
    }

    /// scan.l `{operator}` and `{self}`: embedded comment starts cut the run; trailing `+`/`-`
    /// are dropped unless the run holds a non-SQL operator character.
    #[test]
    fn rule_operator() {
        assert_eq!(tokens("a ### b"), vec![Word(b"a"), Op(b"###"), Word(b"b")]);
        assert_eq!(tokens("a=-1"), vec![Word(b"a"), Op(b"="), Op(b"-"), Number]);
        assert_eq!(tokens("a?-1"), vec![Word(b"a"), Op(b"?-"), Number]);
        assert_eq!(tokens("a<>b"), vec![Word(b"a"), Op(b"<>"), Word(b"b")]);
        assert_eq!(
            tokens("a[1]:b"),
            vec![Word(b"a"), Op(b"["), Number, Op(b"]"), Op(b":"), Word(b"b")]
        );
        assert_eq!(
            tokens("a @-- c\n b"),
            vec![Word(b"a"), Op(b"@"), Word(b"b")]
        );
    }

    #[test]
    fn nul_is_a_token_of_its_own() {
        assert_eq!(tokens("a\0b"), vec![Word(b"a"), Nul, Word(b"b")]);
    }

    #[test]
    fn leading_comments_report_block_bodies() {
        let mut lexer = Lexer::new("-- c\n /* herd:primary */ /* x */ SELECT");
        let mut bodies = Vec::new();
        assert!(lexer.leading_comments(|b| bodies.push(b)));
        assert_eq!(bodies, vec![&b" herd:primary "[..], &b" x "[..]]);
        assert_eq!(lexer.next(), Some(Word(b"SELECT")));
    }

    #[test]
    fn multibyte_text_never_splits() {
        assert_eq!(
            tokens("SELECT 'é' AS ñame"),
            vec![
                Word(b"SELECT"),
                Literal,
                Word(b"AS"),
                Word("ñame".as_bytes())
            ]
        );
    }

    /// Bounded time on hostile input: many `$` in a dollar body, deep comment nesting.
    #[test]
    fn linear_on_hostile_input() {
        let body = "$a".repeat(100_000);
        let sql = format!("$ab${body}");
        let start = std::time::Instant::now();
        assert_eq!(tokens(&sql), vec![Unterminated]);
        let nested = "/*".repeat(100_000);
        assert_eq!(tokens(&nested), vec![Unterminated]);
        let quotes = "'\n".repeat(100_000);
        let _ = tokens(&quotes);
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
    }
}
