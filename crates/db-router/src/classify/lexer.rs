//! A PostgreSQL lexer that knows just enough to classify a statement.
//!
//! It never allocates and never fails half-way: an unterminated string, identifier or
//! comment ends the token stream with [`Token::Unterminated`], which the classifier sends
//! to the primary. What it must be right about is where code ends and text begins:
//! `--` comments, nested `/* */` comments, `"quoted identifiers"`, standard `'strings'`,
//! `E'escape strings'` (where `\'` does not end the string) and `$tag$dollar quoted$tag$`
//! bodies, so that a keyword inside any of them is never mistaken for code.

/// One significant token. Whitespace and comments are skipped, except that a
/// leading comment is reported once through [`Lexer::leading_comments`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Token<'a> {
    /// An unquoted word: keyword or identifier, as written (case preserved).
    Word(&'a [u8]),
    /// A `"quoted identifier"`, without the quotes (doubled quotes left as written).
    QuotedIdent(&'a [u8]),
    /// Any string literal or dollar-quoted body; its content never matters.
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
    /// Any other operator or punctuation.
    Other,
    /// A string, identifier or comment that never ends.
    Unterminated,
}

/// Iterator over the significant tokens of one SQL string.
#[derive(Debug)]
pub(crate) struct Lexer<'a> {
    src: &'a [u8],
    pos: usize,
}

impl<'a> Lexer<'a> {
    pub(crate) fn new(sql: &'a str) -> Self {
        Self {
            src: sql.as_bytes(),
            pos: 0,
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

    #[inline]
    fn skip_whitespace(&mut self) {
        let rest = self.rest();
        self.pos += rest
            .iter()
            .position(|&b| class(b) & SPACE == 0)
            .unwrap_or(rest.len());
    }

    fn skip_line_comment(&mut self) {
        match memchr(b'\n', self.rest()) {
            Some(i) => self.pos += i + 1,
            None => self.pos = self.src.len(),
        }
    }

    /// Skips a `/* */` comment that starts at `pos`, honouring nesting as PostgreSQL
    /// does. Returns `false` if it never ends.
    fn skip_block_comment(&mut self) -> bool {
        let mut depth = 0usize;
        while self.pos < self.src.len() {
            match (self.peek(0), self.peek(1)) {
                (Some(b'/'), Some(b'*')) => {
                    depth += 1;
                    self.pos += 2;
                }
                (Some(b'*'), Some(b'/')) => {
                    depth -= 1;
                    self.pos += 2;
                    if depth == 0 {
                        return true;
                    }
                }
                _ => self.pos += 1,
            }
        }
        false
    }

    /// Skips a quoted run that starts at `pos` (on the opening quote). A doubled quote
    /// stands for itself; with `backslash_escapes`, `\x` never ends the run.
    fn skip_quoted(&mut self, quote: u8, backslash_escapes: bool) -> bool {
        self.pos += 1;
        loop {
            let rest = self.rest();
            let found = if backslash_escapes {
                rest.iter().position(|&b| b == quote || b == b'\\')
            } else {
                memchr(quote, rest)
            };
            let Some(i) = found else {
                self.pos = self.src.len();
                return false;
            };
            self.pos += i;
            if self.peek(0) == Some(b'\\') {
                self.pos += 2;
                continue;
            }
            if self.peek(1) == Some(quote) {
                self.pos += 2;
                continue;
            }
            self.pos += 1;
            return true;
        }
    }

    /// At a `$`: a dollar-quoted body (`$$...$$`, `$tag$...$tag$`) or a `$1` parameter.
    fn dollar(&mut self) -> Token<'a> {
        let start = self.pos;
        let mut end = start + 1;
        match self.src.get(end) {
            Some(b) if b.is_ascii_digit() => {
                while self.src.get(end).is_some_and(u8::is_ascii_digit) {
                    end += 1;
                }
                self.pos = end;
                return Token::Number;
            }
            _ => {}
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
            // A lone `$` is not valid SQL; treat it as punctuation.
            self.pos = start + 1;
            return Token::Other;
        }
        let tag = self.src.get(start..=end).unwrap_or_default();
        let body_start = end + 1;
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
        // String prefixes: E'..' (backslash escapes), B'..', X'..', N'..', U&'..' / U&"..".
        match (word, self.peek(0)) {
            ([b'e' | b'E'], Some(b'\'')) => self.literal(true),
            ([b'b' | b'B' | b'x' | b'X' | b'n' | b'N'], Some(b'\'')) => self.literal(false),
            ([b'u' | b'U'], Some(b'&')) => match self.peek(1) {
                Some(b'\'') => {
                    self.pos += 1;
                    self.literal(false)
                }
                Some(b'"') => {
                    self.pos += 1;
                    self.quoted_ident()
                }
                _ => Token::Word(word),
            },
            _ => Token::Word(word),
        }
    }

    fn literal(&mut self, backslash_escapes: bool) -> Token<'a> {
        if self.skip_quoted(b'\'', backslash_escapes) {
            Token::Literal
        } else {
            Token::Unterminated
        }
    }

    fn quoted_ident(&mut self) -> Token<'a> {
        let start = self.pos + 1;
        if self.skip_quoted(b'"', false) {
            let end = self.pos.saturating_sub(1);
            Token::QuotedIdent(self.src.get(start..end).unwrap_or_default())
        } else {
            Token::Unterminated
        }
    }

    fn number(&mut self) -> Token<'a> {
        // Digits, a decimal point, exponents and `_` separators; precision is irrelevant.
        while let Some(b) = self.peek(0) {
            let exponent_sign = (b == b'+' || b == b'-')
                && matches!(
                    self.pos.checked_sub(1).and_then(|i| self.src.get(i)),
                    Some(b'e' | b'E')
                );
            if b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || exponent_sign {
                self.pos += 1;
            } else {
                break;
            }
        }
        Token::Number
    }

    fn operator(&mut self) -> Token<'a> {
        // An operator run ends before a comment start, as in PostgreSQL's lexer.
        while let Some(b) = self.peek(0) {
            let comment = matches!((b, self.peek(1)), (b'-', Some(b'-')) | (b'/', Some(b'*')));
            if is_operator_byte(b) && !comment {
                self.pos += 1;
            } else {
                break;
            }
        }
        Token::Other
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
                b'\'' => self.literal(false),
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
                b'.' if self.peek(1).is_some_and(|d| d.is_ascii_digit()) => self.number(),
                b'.' => self.single(Token::Dot),
                b'0'..=b'9' => self.number(),
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
        if c.is_ascii_whitespace() || c == 0x0B {
            class |= SPACE;
        }
        if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 {
            class |= IDENT_START | IDENT;
        }
        if c.is_ascii_digit() || c == b'$' {
            class |= IDENT;
        }
        if matches!(
            c,
            b'+' | b'-'
                | b'*'
                | b'/'
                | b'<'
                | b'>'
                | b'='
                | b'~'
                | b'!'
                | b'@'
                | b'#'
                | b'%'
                | b'^'
                | b'&'
                | b'|'
                | b'`'
                | b'?'
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
    if needle.is_empty() || haystack.len() < needle.len() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::Token::*;
    use super::*;

    fn tokens(sql: &str) -> Vec<Token<'_>> {
        Lexer::new(sql).collect()
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

    #[test]
    fn comments_are_skipped_and_nest() {
        assert_eq!(tokens("a -- update\n b"), vec![Word(b"a"), Word(b"b")]);
        assert_eq!(
            tokens("a /* x /* update */ still comment */ b"),
            vec![Word(b"a"), Word(b"b")]
        );
        assert_eq!(tokens("a /* never ends"), vec![Word(b"a"), Unterminated]);
        assert_eq!(tokens("a--b"), vec![Word(b"a")]);
        assert_eq!(tokens("1-/**/-2"), vec![Number, Other, Other, Number]);
    }

    #[test]
    fn strings_hide_their_content() {
        assert_eq!(tokens("'it''s; update'"), vec![Literal]);
        assert_eq!(tokens(r"E'it\'s; update' x"), vec![Literal, Word(b"x")]);
        // In a standard string a backslash is just a character.
        assert_eq!(tokens(r"'a\' x"), vec![Literal, Word(b"x")]);
        assert_eq!(tokens("'never ends"), vec![Unterminated]);
        assert_eq!(tokens("U&'d\\0061t' x"), vec![Literal, Word(b"x")]);
        assert_eq!(tokens("B'101' X'ff'"), vec![Literal, Literal]);
    }

    #[test]
    fn dollar_quotes_and_parameters() {
        assert_eq!(tokens("$$ update; $$ x"), vec![Literal, Word(b"x")]);
        assert_eq!(
            tokens("$fn$ a $$ b $fn$ x"),
            vec![Literal, Word(b"x")],
            "an inner $$ does not end a tagged body"
        );
        assert_eq!(tokens("$1 $23"), vec![Number, Number]);
        assert_eq!(tokens("$a$ never"), vec![Unterminated]);
        assert_eq!(tokens("a$b"), vec![Word(b"a$b")]);
    }

    #[test]
    fn quoted_identifiers() {
        assert_eq!(
            tokens(r#""Update" "a""b""#),
            vec![QuotedIdent(b"Update"), QuotedIdent(b"a\"\"b")]
        );
        assert_eq!(tokens(r#""open"#), vec![Unterminated]);
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
}
