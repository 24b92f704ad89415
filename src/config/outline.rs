//! The outline of a TOML document: its keys, how they nest, and where each is written. It lets the file format
//! check the document's shape before serde sees it, and turn the byte offset of a serde error into the dotted
//! field it is about. It knows no section of our format and validates nothing itself.

use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use toml::Spanned;

/// A TOML value as far as the outline cares: a table keeps its keys (with where each is written); an array is
/// only an array, since no field of our format lies inside one; anything else keeps what it is.
pub(super) enum Node {
    Table(Vec<(Spanned<String>, Node)>),
    Array,
    /// What the value is, for messages: "a string", "an integer" …
    Value(&'static str),
}

/// One key reachable from the top through tables (keys inside arrays are not kept).
struct Key {
    path: String,
    start: usize,
}

/// A parsed document: its top-level entries and every key in the order written.
pub(super) struct Outline<'t> {
    text: &'t str,
    top: Vec<(Spanned<String>, Node)>,
    keys: Vec<Key>,
}

impl<'t> Outline<'t> {
    /// Parses `text`; a syntax error (or a key given twice) is toml's error, with its span.
    pub(super) fn parse(text: &'t str) -> Result<Self, toml::de::Error> {
        let mut top = match toml::from_str(text)? {
            Node::Table(entries) => entries,
            // A document is always a table.
            _ => Vec::new(),
        };
        top.sort_by_key(|(k, _)| k.span().start);
        let mut keys = Vec::new();
        index("", &top, &mut keys);
        keys.sort_by_key(|k| k.start);
        Ok(Self { text, top, keys })
    }

    /// The top-level entries in the order written: the key, the line it is on, the value.
    pub(super) fn top(&self) -> impl Iterator<Item = (&str, usize, &Node)> + '_ {
        self.top
            .iter()
            .map(|(k, v)| (k.get_ref().as_str(), self.line(k.span().start), v))
    }

    /// Whether `line` opens an array of tables (`[[name]]`).
    pub(super) fn opens_array_of_tables(&self, line: usize) -> bool {
        self.text
            .lines()
            .nth(line.saturating_sub(1))
            .is_some_and(|l| l.trim_start().starts_with("[["))
    }

    /// The 1-based line of byte offset `at`.
    pub(super) fn line(&self, at: usize) -> usize {
        line_of(self.text, at)
    }

    /// The dotted field an error at byte offset `at` is about. A value is always written after its key, so it
    /// belongs to the last key written at or before it, except a table opened by a header (`[a.b]`, `[[a.b]]`):
    /// its span starts at the bracket, before its own keys, so there it is the header's last key.
    pub(super) fn field_at(&self, at: usize) -> Option<&str> {
        let text = self.text;
        let at = at.min(text.len());
        let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
        let line_end = text[at..].find('\n').map_or(text.len(), |i| at + i);
        // Only a header puts a bracket first on a line with keys after it: keys inside arrays are not indexed.
        let header = text[at..].starts_with('[') && text[line_start..at].trim().is_empty();
        let of_header = || {
            self.keys
                .iter()
                .rfind(|k| (at..line_end).contains(&k.start))
        };
        header
            .then(of_header)
            .flatten()
            .or_else(|| self.keys.iter().rfind(|k| k.start <= at))
            .map(|k| k.path.as_str())
    }
}

/// The 1-based line of byte offset `at` in `text`.
pub(super) fn line_of(text: &str, at: usize) -> usize {
    text[..at.min(text.len())].matches('\n').count() + 1
}

/// Adds the keys of `entries` (and of the tables under them) to `keys` as dotted paths under `prefix`.
fn index(prefix: &str, entries: &[(Spanned<String>, Node)], keys: &mut Vec<Key>) {
    for (key, node) in entries {
        let path = match prefix {
            "" => key.get_ref().clone(),
            _ => format!("{prefix}.{}", key.get_ref()),
        };
        if let Node::Table(inner) = node {
            index(&path, inner, keys);
        }
        keys.push(Key {
            path,
            start: key.span().start,
        });
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a TOML value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        loop {
            let key = match map.next_key::<Spanned<String>>() {
                Ok(Some(key)) => key,
                Ok(None) => return Ok(Node::Table(entries)),
                // toml hands a date-time over as a one-entry map whose key has no place in the text, so it
                // cannot be spanned; every key of a parsed table has one.
                Err(_) if entries.is_empty() => return Ok(Node::Value("a date-time")),
                Err(e) => return Err(e),
            };
            entries.push((key, map.next_value()?));
        }
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Node::Array)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Node, E> {
        Ok(Node::Value("a boolean"))
    }

    fn visit_i64<E>(self, _: i64) -> Result<Node, E> {
        Ok(Node::Value("an integer"))
    }

    fn visit_u64<E>(self, _: u64) -> Result<Node, E> {
        Ok(Node::Value("an integer"))
    }

    fn visit_f64<E>(self, _: f64) -> Result<Node, E> {
        Ok(Node::Value("a float"))
    }

    fn visit_str<E>(self, _: &str) -> Result<Node, E> {
        Ok(Node::Value("a string"))
    }
}
