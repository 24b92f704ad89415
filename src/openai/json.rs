//! A strict JSON reader that remembers where every string came from, so an inspected body can be rewritten
//! by splicing only the strings that change — everything else stays byte for byte as the client sent it.
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

/// The value of four hex digits — exactly four: `u32::from_str_radix` alone would also take a sign
/// (`\u+041`), which a strict reader upstream refuses.
fn hex4(h: &[u8]) -> Option<u32> {
    if h.len() != 4 || !h.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    h.iter()
        .try_fold(0u32, |v, &b| Some((v << 4) | char::from(b).to_digit(16)?))
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
            while let Some(&b) = self.s.get(self.i) {
                if b == b'"' || b == b'\\' || b < 0x20 {
                    break;
                }
                self.i += 1;
            }
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

/// Replaces byte ranges of `src` (sorted, non-overlapping) with new bytes; keeps everything else.
pub fn splice(src: &[u8], edits: &[(Range<usize>, String)]) -> Vec<u8> {
    let extra: usize = edits.iter().map(|(_, s)| s.len()).sum();
    let mut out = Vec::with_capacity(src.len() + extra);
    let mut last = 0;
    for (r, text) in edits {
        out.extend_from_slice(&src[last..r.start]);
        out.extend_from_slice(text.as_bytes());
        last = r.end;
    }
    out.extend_from_slice(&src[last..]);
    out
}

/// A string as a JSON token (quoted, escaped).
pub fn encode_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
