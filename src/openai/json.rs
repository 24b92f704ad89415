//! A strict JSON reader that remembers where every string came from, so an inspected body can be rewritten
//! by splicing only the raw bytes that encode each changed span of a string — everything else, escapes of
//! the same string included, stays byte for byte as the client sent it.
//!
//! Stricter than serde_json where a gateway must be: duplicate keys and nesting deeper than a bound are
//! errors (two parsers disagreeing on which duplicate wins is a classic way to smuggle a value past a check).

use std::ops::Range;

/// Why a body is not acceptable JSON. The message is for the client; it never quotes the body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    #[error("invalid JSON at byte {0}: {1}")]
    Syntax(usize, &'static str),
    #[error("JSON nested deeper than {0} levels")]
    TooDeep(usize),
    #[error("duplicate key in a JSON object at byte {0}")]
    DuplicateKey(usize),
    #[error("the body is not valid UTF-8")]
    Utf8,
}

/// A JSON string: its decoded value and the byte range of the token (quotes included) in the source.
#[derive(Debug, Clone, PartialEq)]
pub struct Str {
    pub value: String,
    pub range: Range<usize>,
}

/// A parsed JSON value that keeps the source ranges of its strings.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    Null,
    Bool(bool),
    /// Whether the number is an integer (token ids are).
    Number {
        integer: bool,
    },
    String(Str),
    Array(Vec<Node>),
    Object(Vec<(Str, Node)>),
}

impl Node {
    /// The value of `key` in an object.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match self {
            Node::Object(entries) => entries.iter().find(|(k, _)| k.value == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Node::String(s) => Some(&s.value),
            _ => None,
        }
    }
}

/// Parses a whole document (one value, whitespace around it allowed).
pub fn parse(src: &[u8], max_depth: usize) -> Result<Node, JsonError> {
    let text = std::str::from_utf8(src).map_err(|_| JsonError::Utf8)?;
    let mut p = Parser {
        s: text.as_bytes(),
        i: 0,
        max_depth,
    };
    p.ws();
    let v = p.value(0)?;
    p.ws();
    if p.i != p.s.len() {
        return Err(JsonError::Syntax(
            p.i,
            "trailing characters after the JSON value",
        ));
    }
    Ok(v)
}

/// The byte range of the value of the object member whose key token ends at `key_end` (a key's
/// [`Str::range`] end in `src`, a document [`parse`] accepted): lets a caller replace one whole value — an
/// object or array included — without re-encoding anything around it.
pub fn member_value(src: &[u8], key_end: usize, max_depth: usize) -> Option<Range<usize>> {
    let mut p = Parser {
        s: src,
        i: key_end,
        max_depth,
    };
    p.ws();
    if p.s.get(p.i) != Some(&b':') {
        return None;
    }
    p.i += 1;
    p.ws();
    let start = p.i;
    p.value(0).ok()?;
    Some(start..p.i)
}

/// The value of four hex digits — exactly four: `u32::from_str_radix` alone would also take a sign
/// (`\u+041`), which a strict reader upstream refuses.
fn hex4(h: &[u8]) -> Option<u32> {
    if h.len() != 4 || !h.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    h.iter()
        .try_fold(0u32, |v, &b| Some((v << 4) | char::from(b).to_digit(16)?))
}

/// The length of the run of `s` before its first quote, backslash or control character: `memchr` finds the
/// first two (a string is text up to its closing quote, so this is the whole string when it has no escape), and
/// control characters, which JSON refuses inside strings, are looked for in blocks the compiler vectorises,
/// the exact place only when a block holds one. A byte at a time, this loop was the costliest part of parsing
/// a chat body (BENCHMARKS.md §18).
fn plain_run(s: &[u8]) -> usize {
    let end = memchr::memchr2(b'"', b'\\', s).unwrap_or(s.len());
    let mut at = 0;
    for block in s[..end].chunks(32) {
        if block.iter().fold(false, |any, &b| any | (b < 0x20)) {
            return at + block.iter().position(|&b| b < 0x20).unwrap_or(block.len());
        }
        at += block.len();
    }
    end
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
    max_depth: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.s.get(self.i) {
            self.i += 1;
        }
    }

    fn err(&self, what: &'static str) -> JsonError {
        JsonError::Syntax(self.i, what)
    }

    fn value(&mut self, depth: usize) -> Result<Node, JsonError> {
        match self.s.get(self.i) {
            Some(b'{') => self.object(depth + 1),
            Some(b'[') => self.array(depth + 1),
            Some(b'"') => self.string().map(Node::String),
            Some(b't') => self.literal(b"true", Node::Bool(true)),
            Some(b'f') => self.literal(b"false", Node::Bool(false)),
            Some(b'n') => self.literal(b"null", Node::Null),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => Err(self.err("unexpected character")),
            None => Err(self.err("unexpected end of input")),
        }
    }

    fn literal(&mut self, word: &[u8], node: Node) -> Result<Node, JsonError> {
        if self.s[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(node)
        } else {
            Err(self.err("invalid literal"))
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while let Some(b'0'..=b'9') = self.s.get(self.i) {
            self.i += 1;
        }
        self.i - start
    }

    fn number(&mut self) -> Result<Node, JsonError> {
        if self.s.get(self.i) == Some(&b'-') {
            self.i += 1;
        }
        match self.s.get(self.i) {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(self.err("invalid number")),
        }
        let mut integer = true;
        if self.s.get(self.i) == Some(&b'.') {
            self.i += 1;
            integer = false;
            if self.digits() == 0 {
                return Err(self.err("invalid number"));
            }
        }
        if let Some(b'e' | b'E') = self.s.get(self.i) {
            self.i += 1;
            integer = false;
            if let Some(b'+' | b'-') = self.s.get(self.i) {
                self.i += 1;
            }
            if self.digits() == 0 {
                return Err(self.err("invalid number"));
            }
        }
        Ok(Node::Number { integer })
    }

    fn hex4(&mut self) -> Result<u32, JsonError> {
        let h = self
            .s
            .get(self.i..self.i + 4)
            .ok_or_else(|| self.err("truncated \\u escape"))?;
        let v = hex4(h).ok_or_else(|| self.err("invalid \\u escape"))?;
        self.i += 4;
        Ok(v)
    }

    fn string(&mut self) -> Result<Str, JsonError> {
        let start = self.i;
        self.i += 1;
        let mut out = String::new();
        loop {
            // Copy the run of plain characters at once.
            let run_start = self.i;
            self.i += plain_run(&self.s[self.i..]);
            // The source is valid UTF-8 and the run stops only at ASCII bytes, so it is a char boundary.
            out.push_str(
                std::str::from_utf8(&self.s[run_start..self.i]).map_err(|_| JsonError::Utf8)?,
            );
            match self.s.get(self.i) {
                Some(b'"') => {
                    self.i += 1;
                    return Ok(Str {
                        value: out,
                        range: start..self.i,
                    });
                }
                Some(b'\\') => {
                    self.i += 1;
                    let e = *self
                        .s
                        .get(self.i)
                        .ok_or_else(|| self.err("truncated escape"))?;
                    self.i += 1;
                    match e {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let hi = self.hex4()?;
                            let cp = if (0xD800..0xDC00).contains(&hi) {
                                if self.s.get(self.i..self.i + 2) != Some(b"\\u") {
                                    return Err(self.err("lone surrogate in \\u escape"));
                                }
                                self.i += 2;
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return Err(self.err("invalid surrogate pair"));
                                }
                                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                            } else if (0xDC00..0xE000).contains(&hi) {
                                return Err(self.err("lone surrogate in \\u escape"));
                            } else {
                                hi
                            };
                            out.push(
                                char::from_u32(cp).ok_or_else(|| self.err("invalid \\u escape"))?,
                            );
                        }
                        _ => return Err(self.err("invalid escape")),
                    }
                }
                Some(_) => return Err(self.err("control character in string")),
                None => return Err(self.err("unterminated string")),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<Node, JsonError> {
        if depth > self.max_depth {
            return Err(JsonError::TooDeep(self.max_depth));
        }
        self.i += 1;
        let mut items = Vec::new();
        self.ws();
        if self.s.get(self.i) == Some(&b']') {
            self.i += 1;
            return Ok(Node::Array(items));
        }
        loop {
            self.ws();
            items.push(self.value(depth)?);
            self.ws();
            match self.s.get(self.i) {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    return Ok(Node::Array(items));
                }
                _ => return Err(self.err("expected ',' or ']'")),
            }
        }
    }

    fn object(&mut self, depth: usize) -> Result<Node, JsonError> {
        if depth > self.max_depth {
            return Err(JsonError::TooDeep(self.max_depth));
        }
        self.i += 1;
        let mut entries: Vec<(Str, Node)> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        self.ws();
        if self.s.get(self.i) == Some(&b'}') {
            self.i += 1;
            return Ok(Node::Object(entries));
        }
        loop {
            self.ws();
            if self.s.get(self.i) != Some(&b'"') {
                return Err(self.err("expected a string key"));
            }
            let key_at = self.i;
            let key = self.string()?;
            if !seen.insert(key.value.clone()) {
                return Err(JsonError::DuplicateKey(key_at));
            }
            self.ws();
            if self.s.get(self.i) != Some(&b':') {
                return Err(self.err("expected ':'"));
            }
            self.i += 1;
            self.ws();
            let v = self.value(depth)?;
            entries.push((key, v));
            self.ws();
            match self.s.get(self.i) {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(Node::Object(entries));
                }
                _ => return Err(self.err("expected ',' or '}'")),
            }
        }
    }
}

/// One change to a text: the byte range it replaces and what goes there.
pub type Edit = (Range<usize>, String);

/// Replaces byte ranges of `src` (sorted, non-overlapping) with new bytes; keeps everything else.
pub fn splice(src: &[u8], edits: &[Edit]) -> Vec<u8> {
    let extra: usize = edits.iter().map(|(_, s)| s.len()).sum();
    let mut out = Vec::with_capacity(src.len() + extra);
    let mut last = 0;
    for (r, text) in edits {
        // Clamped rather than trusted: an edit that overlapped the one before would still have the union of
        // both replaced (never less), and a bad range cannot panic the data path.
        let start = r.start.clamp(last, src.len());
        let end = r.end.clamp(start, src.len());
        out.extend_from_slice(&src[last..start]);
        out.extend_from_slice(text.as_bytes());
        last = end;
    }
    out.extend_from_slice(&src[last..]);
    out
}

impl Str {
    /// Turns edits of the decoded `value` (byte ranges of it, sorted and non-overlapping, each with its new
    /// decoded text) into edits of `src`, the text this string was parsed from, appended to `out` in order.
    ///
    /// Each edit replaces only the raw bytes that encode its range, with the new text JSON-escaped; every
    /// other raw byte of the string stays as sent (`\u00e9` stays `\u00e9`, `\/` stays `\/`). The walk over
    /// the raw bytes is linear and only done for strings that change.
    pub fn source_edits(&self, src: &[u8], edits: &[Edit], out: &mut Vec<Edit>) {
        let mark = out.len();
        if self.map_edits(src, edits, out).is_none() {
            // Not reachable for a string parsed from `src` (its escapes were checked by the parser); kept so a
            // misuse rewrites the whole string — still every span replaced — instead of cutting wrong bytes.
            out.truncate(mark);
            let new = splice(self.value.as_bytes(), edits);
            out.push((
                self.range.clone(),
                encode_str(&String::from_utf8_lossy(&new)),
            ));
        }
    }

    fn map_edits(&self, src: &[u8], edits: &[Edit], out: &mut Vec<Edit>) -> Option<()> {
        let body = self.range.start + 1..self.range.end.checked_sub(1)?;
        if src.get(self.range.start) != Some(&b'"') || src.get(body.end) != Some(&b'"') {
            return None;
        }
        let mut at = RawCursor {
            raw: src.get(body.clone())?,
            raw_at: 0,
            decoded_at: 0,
        };
        for (span, text) in edits {
            let start = at.seek(span.start, Round::Down)?;
            let end = at.seek(span.end, Round::Up)?;
            let mut escaped = String::with_capacity(text.len());
            escape_into(&mut escaped, text);
            out.push((body.start + start..body.start + end, escaped));
        }
        Some(())
    }
}

/// Which raw boundary a decoded offset inside an escape maps to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Round {
    /// The escape's start (a span's start: the whole escape is taken into the span).
    Down,
    /// The escape's end (a span's end: likewise).
    Up,
}

/// Walks the raw bytes of one string literal (between its quotes) alongside its decoded text. Plain bytes
/// decode to themselves; each escape decodes to exactly one character from 2 raw bytes (`\n`), 6 (`\u00e9`)
/// or 12 (`\ud83d\ude00`, a surrogate pair).
struct RawCursor<'a> {
    raw: &'a [u8],
    raw_at: usize,
    decoded_at: usize,
}

impl RawCursor<'_> {
    /// The raw offset of decoded offset `target`, moving forward only: a target behind the cursor maps to the
    /// cursor, so the ranges built from successive calls never overlap. `None` if the literal ends first.
    ///
    /// Matches are cut on character boundaries (the rule engine never splits a character) and an escape
    /// decodes to one character, so a target never falls inside the decoded bytes of an escape. Were that
    /// ever violated, `round` widens the span to the whole escape: the character is replaced whole, never cut
    /// in two and never left out.
    fn seek(&mut self, target: usize, round: Round) -> Option<usize> {
        while self.decoded_at < target {
            let rest = self.raw.get(self.raw_at..)?;
            let (raw_len, decoded_len) = if rest.first() == Some(&b'\\') {
                escape_len(rest)?
            } else {
                // A run of plain bytes maps one to one; only look as far as the target, so that many
                // spans in one long string cost one pass over it.
                let want = target - self.decoded_at;
                let run = rest
                    .iter()
                    .take(want)
                    .position(|&b| b == b'\\')
                    .unwrap_or(want.min(rest.len()));
                if run == 0 {
                    return None;
                }
                (run, run)
            };
            if self.decoded_at + decoded_len > target && round == Round::Down {
                break;
            }
            self.raw_at += raw_len;
            self.decoded_at += decoded_len;
        }
        Some(self.raw_at)
    }
}

/// Raw and decoded lengths of the escape that `raw` starts with.
fn escape_len(raw: &[u8]) -> Option<(usize, usize)> {
    match raw.get(1)? {
        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Some((2, 1)),
        b'u' => {
            let hi = hex4(raw.get(2..6)?)?;
            if (0xD800..0xDC00).contains(&hi) {
                if raw.get(6..8)? != b"\\u" {
                    return None;
                }
                let lo = hex4(raw.get(8..12)?)?;
                (0xDC00..0xE000).contains(&lo).then_some((12, 4))
            } else {
                Some((6, char::from_u32(hi)?.len_utf8()))
            }
        }
        _ => None,
    }
}

/// Appends `s` JSON-escaped (without quotes): `"`, `\` and control characters, nothing else — the form
/// serde_json writes.
pub fn escape_into(out: &mut String, s: &str) {
    use std::fmt::Write as _;
    let mut last = 0;
    for (i, b) in s.bytes().enumerate() {
        let short = match b {
            b'"' => Some("\\\""),
            b'\\' => Some("\\\\"),
            b'\n' => Some("\\n"),
            b'\r' => Some("\\r"),
            b'\t' => Some("\\t"),
            0x08 => Some("\\b"),
            0x0c => Some("\\f"),
            0..=0x1f => None,
            _ => continue,
        };
        // `i` is at an ASCII byte: a character boundary.
        out.push_str(&s[last..i]);
        match short {
            Some(e) => out.push_str(e),
            // Writing to a String cannot fail.
            None => {
                let _ = write!(out, "\\u{b:04x}");
            }
        }
        last = i + 1;
    }
    out.push_str(&s[last..]);
}

/// A string as a JSON token (quoted, escaped).
pub fn encode_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    escape_into(&mut out, s);
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_run_stops_where_the_byte_by_byte_scan_does() {
        let naive = |s: &[u8]| {
            s.iter()
                .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
                .unwrap_or(s.len())
        };
        for len in [0, 1, 31, 32, 33, 64, 100] {
            for at in 0..=len {
                for stop in [b'"', b'\\', b'\n', 0x1f, 0x00, b'a'] {
                    let mut s = vec![b'x'; len];
                    if at < len {
                        s[at] = stop;
                    }
                    s.extend_from_slice(b"tail\"");
                    assert_eq!(plain_run(&s), naive(&s), "{len} {at} {stop}");
                }
            }
        }
    }

    #[test]
    fn strings_keep_their_source_ranges_and_decode_escapes() {
        let src = br#"{"a": "x\u0041y", "k\u00e9": ["\ud83d\ude00", 1, 2.5, true, null]}"#;
        let v = parse(src, 16).expect("valid");
        let Node::Object(e) = &v else {
            panic!("object")
        };
        assert_eq!(e[0].1.as_str(), Some("xAy"));
        let Node::String(s) = &e[0].1 else {
            panic!("string")
        };
        assert_eq!(&src[s.range.clone()], br#""x\u0041y""#);
        assert_eq!(e[1].0.value, "ké");
        let Node::Array(a) = &e[1].1 else {
            panic!("array")
        };
        assert_eq!(a[0].as_str(), Some("😀"));
        assert_eq!(a[1], Node::Number { integer: true });
        assert_eq!(a[2], Node::Number { integer: false });
    }

    #[test]
    fn strictness_table() {
        let cases: &[(&[u8], &str)] = &[
            (br#"{"a":1,"a":2}"#, "duplicate key"),
            (b"[[[[1]]]]", "nested deeper"),
            (br#"{"a":}"#, "unexpected character"),
            (br#"{"a":1} x"#, "trailing"),
            (b"\"\xff\"", "UTF-8"),
            (br#""\ud800""#, "surrogate"),
            (br#""\u+041""#, "invalid \\u escape"),
            (br#""\u-041""#, "invalid \\u escape"),
            (br#""\u00g1""#, "invalid \\u escape"),
            (b"\"a\nb\"", "control character"),
            (b"01", "trailing"),
            (b"", "end of input"),
        ];
        for (src, want) in cases {
            let e = parse(src, 3)
                .expect_err(&String::from_utf8_lossy(src))
                .to_string();
            assert!(e.contains(want), "{:?}: {e}", String::from_utf8_lossy(src));
        }
    }

    #[test]
    fn splice_keeps_the_rest() {
        let src = br#"{"a": "secret",  "b" : 1}"#;
        let v = parse(src, 4).expect("valid");
        let Node::String(s) = v.get("a").expect("a") else {
            panic!()
        };
        let out = splice(src, &[(s.range.clone(), encode_str("[X]"))]);
        assert_eq!(out, br#"{"a": "[X]",  "b" : 1}"#);
    }
    /// The string token of a one-string document, with its source.
    fn token(src: &str) -> Str {
        match parse(src.as_bytes(), 4) {
            Ok(Node::String(s)) => s,
            other => panic!("{src}: {other:?}"),
        }
    }

    /// Applies decoded edits through `source_edits`.
    fn rewrite(src: &str, edits: &[(Range<usize>, &str)]) -> String {
        let s = token(src);
        let edits: Vec<Edit> = edits
            .iter()
            .map(|(r, t)| (r.clone(), t.to_string()))
            .collect();
        let mut out = Vec::new();
        s.source_edits(src.as_bytes(), &edits, &mut out);
        String::from_utf8(splice(src.as_bytes(), &out)).expect("utf-8")
    }

    /// `(source token, decoded span, replacement, expected token)`: only the raw bytes of the span change.
    #[test]
    fn source_edits_replace_only_the_raw_bytes_of_each_span() {
        let cases: &[(&str, Range<usize>, &str, &str)] = &[
            // Escapes before and after the span stay as sent.
            (
                r#""caf\u00e9 \/ x@y.io \u0041\t""#,
                8..14,
                "[E]",
                r#""caf\u00e9 \/ [E] \u0041\t""#,
            ),
            // An escape at the span's first or last character goes with the span, whole.
            (r#""\u006Aane@y.io!""#, 0..9, "[E]", r#""[E]!""#),
            (r#""ab\u0063""#, 1..3, "[E]", r#""a[E]""#),
            // A surrogate pair is one character from twelve raw bytes.
            (
                r#""\ud83d\ude00 key \uD83D\uDE00""#,
                5..8,
                "K",
                r#""\ud83d\ude00 K \uD83D\uDE00""#,
            ),
            (r#""\ud83d\ude00 key""#, 0..4, "", r#"" key""#),
            // Multi-byte characters written raw map one to one.
            (r#""é€😀 key ü""#, 10..13, "[K]", r#""é€😀 [K] ü""#),
            // The replacement is escaped the way serde_json would.
            (
                r#""a\/b secret c""#,
                4..10,
                "q\"\\\t\u{1}é",
                r#""a\/b q\"\\\t\u0001é c""#,
            ),
            // The whole string, and an empty one at its end.
            (r#""\u0073ecret""#, 0..6, "[S]", r#""[S]""#),
            (r#""x""#, 1..1, "+", r#""x+""#),
        ];
        for (src, span, new, want) in cases {
            assert_eq!(
                &rewrite(src, &[(span.clone(), new)]),
                want,
                "{src} {span:?}"
            );
        }
        // Many spans in one string, each mapped past the escapes between them.
        let src = r#""a\u0062c \"d\" ef\u00e9 gh""#;
        assert_eq!(token(src).value, "abc \"d\" efé gh");
        let got = rewrite(
            src,
            &[(0..3, "1"), (5..6, "2"), (8..12, "3"), (13..15, "4")],
        );
        assert_eq!(got, r#""1 \"2\" 3 4""#);
    }

    /// The engine never cuts a character, so a span boundary inside an escape's decoded bytes cannot happen;
    /// if it did, the whole escape goes with the span: nothing of the character is left, nothing is split.
    #[test]
    fn a_span_that_would_split_an_escaped_character_takes_the_whole_escape() {
        // "é" is two decoded bytes from six raw ones.
        assert_eq!(rewrite(r#""a\u00e9b""#, &[(2..3, "X")]), r#""aXb""#);
        assert_eq!(rewrite(r#""a\u00e9b""#, &[(1..2, "X")]), r#""aXb""#);
        // Two spans inside one surrogate pair: the first takes it whole, the second starts after it.
        let got = rewrite(r#""<\ud83d\ude00>""#, &[(1..2, "X"), (3..4, "Y")]);
        assert_eq!(got, r#""<XY>""#);
    }

    #[test]
    fn source_edits_of_a_foreign_token_rewrite_the_whole_string() {
        // A `Str` whose range is not a string of `src`: the misuse still replaces every span, never cuts
        // wrong bytes.
        let s = Str {
            value: "key secret".into(),
            range: 2..14,
        };
        let src = br#"[1, "key \u0073ecret"]"#;
        let mut out = Vec::new();
        s.source_edits(src, &[(4..10, "[S]".into())], &mut out);
        assert_eq!(out, vec![(2..14, r#""key [S]""#.to_string())]);
    }

    #[test]
    fn encode_str_writes_what_serde_json_writes() {
        let mut all: String = (0u8..0x80).map(char::from).collect();
        all.push_str("é€😀\u{2028}\u{7f}");
        for s in [all.as_str(), "", "plain", "\"\\/", "\u{1f}x\u{0}"] {
            assert_eq!(
                encode_str(s),
                serde_json::to_string(s).expect("serde"),
                "{s:?}"
            );
        }
    }

    #[test]
    fn splice_never_keeps_bytes_an_overlapping_edit_covers() {
        let src = b"0123456789";
        let edits = vec![(2..6, "a".to_string()), (4..8, "b".to_string())];
        assert_eq!(splice(src, &edits), b"01ab89");
        assert_eq!(splice(src, &[(8..99, "z".to_string())]), b"01234567z");
    }
}
