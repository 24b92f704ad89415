//! The verdict on one request body. Every string is inspected — keys too, and strings that hold JSON
//! (tool-call `arguments`, double-encoded payloads) are parsed and inspected as JSON, their edits spliced
//! back in place. Non-text inputs (token-id arrays, image / audio / file parts) follow an explicit policy.
//!
//! A redaction changes only the raw bytes that encode each matched span: the walk collects edits of decoded
//! text, and [`Str::source_edits`] turns them into edits of the raw body, so escapes outside a span
//! (`\u00e9`, `\/`, `\u0041`) reach the upstream as the client wrote them.

use std::collections::BTreeMap;

use crate::openai::json::{self, Edit, JsonError, Node, Str};
use crate::openai::usage::Usage;
use crate::rules::{Action, Direction, Mode, RuleSet};

/// What was decided about one direction of a request, from the least to the most severe.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum Decision {
    #[default]
    Allow,
    /// Rules in monitor mode matched: nothing changed, something would have.
    Monitor,
    Redact,
    Block,
    /// Inspection could not be done: the request went through under `policy.fail_open`, or the answer was
    /// withheld. Never produced by a verdict; see `outcome`.
    Error,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Monitor => "monitor",
            Decision::Redact => "redact",
            Decision::Block => "block",
            Decision::Error => "error",
        }
    }
}

/// The decision that matches of some rules add up to — the one rule of how hits become a decision, for
/// request bodies, held answers and streams alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Judged {
    pub decision: Decision,
    /// What would have happened with every rule enforced (differs from `decision` in monitor mode).
    pub would_be: Decision,
    /// The rule that blocked (the most severe enforced block), if any.
    pub blocked_by: Option<usize>,
}

/// Adds up `hits`: an enforced block blocks (the most severe block rule names it), an enforced redaction
/// redacts, `log` rules change nothing, and what only monitor mode kept from happening is `monitor`.
pub fn judge(set: &RuleSet, hits: &[RuleHit]) -> Judged {
    let mut decision = Decision::Allow;
    let mut would_be = Decision::Allow;
    let mut blocked_by: Option<usize> = None;
    for h in hits {
        let r = set.rule(h.rule);
        let effect = match r.action {
            Action::Block => Decision::Block,
            Action::Redact => Decision::Redact,
            Action::Log => Decision::Allow,
        };
        would_be = would_be.max(effect);
        if h.enforced {
            decision = decision.max(effect);
            if effect == Decision::Block
                && blocked_by.is_none_or(|b| {
                    (r.severity, r.action) > (set.rule(b).severity, set.rule(b).action)
                })
            {
                blocked_by = Some(h.rule);
            }
        }
    }
    if decision < would_be && decision != Decision::Block {
        // Something would have been redacted or blocked had it been enforced.
        decision = decision.max(Decision::Monitor);
    }
    Judged {
        decision,
        would_be,
        blocked_by,
    }
}

/// What to do with inputs that cannot be inspected as text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpaquePolicy {
    Pass,
    Deny,
}

#[derive(Debug, Clone)]
pub struct InspectOptions {
    /// JSON nesting bound (documents nested in strings count their own levels).
    pub max_depth: usize,
    pub opaque: OpaquePolicy,
    /// Global monitor mode: record what would happen, change nothing.
    pub monitor: bool,
}

/// Matches of one rule in one body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleHit {
    pub rule: usize,
    pub count: u32,
    /// Whether the rule's action was applied (false in monitor mode, or for a monitor-mode rule).
    pub enforced: bool,
}

/// The outcome of inspecting a body.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub decision: Decision,
    /// What would have happened with every rule enforced (differs from `decision` in monitor mode).
    pub would_be: Decision,
    pub hits: Vec<RuleHit>,
    /// The rule that blocked (the most severe enforced block), if any.
    pub blocked_by: Option<usize>,
    /// The body to forward when it was rewritten.
    pub rewritten: Option<Vec<u8>>,
    /// Non-text inputs seen (token-id arrays, image / audio / file parts).
    pub opaque_inputs: u32,
    /// The opaque-input policy refused the request.
    pub opaque_denied: bool,
    /// What the body says about itself (model, stream, size of its text).
    pub facts: Facts,
}

/// Top-level facts of an OpenAI request body, gathered during the walk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// `model`, when a string.
    pub model: Option<String>,
    /// `stream: true`.
    pub stream: bool,
    /// Bytes of text inspected (the basis of the prompt-token estimate).
    pub text_bytes: u64,
    /// The client's conversation id: `user`, or `metadata.session_id` / `metadata.conversation_id`.
    pub session: Option<String>,
    /// The token counts an answer reports (`usage`), read from the walked document so that an answer is
    /// parsed once.
    pub usage: Option<Usage>,
}

impl Facts {
    /// Reads the top-level fields of a parsed body (`src`, the document `doc` was parsed from).
    fn of(doc: &Node, src: &[u8], max_depth: usize) -> Self {
        Self {
            usage: top_level_usage(doc, src, max_depth),
            model: doc.get("model").and_then(Node::as_str).map(str::to_string),
            stream: matches!(doc.get("stream"), Some(Node::Bool(true))),
            text_bytes: 0,
            session: doc
                .get("metadata")
                .and_then(|m| m.get("session_id").or_else(|| m.get("conversation_id")))
                .or_else(|| doc.get("user"))
                .and_then(Node::as_str)
                .map(str::to_string),
        }
    }

    /// Facts of a body that is not inspected (inspection off): parsed, its strings measured (the basis of the
    /// token estimate when the caller has a token quota), not scanned.
    pub fn read(body: &[u8], max_depth: usize) -> Result<Self, JsonError> {
        fn text_bytes(n: &Node) -> u64 {
            match n {
                Node::String(s) => s.value.len() as u64,
                Node::Array(items) => items.iter().map(text_bytes).sum(),
                Node::Object(entries) => entries
                    .iter()
                    .map(|(k, v)| k.value.len() as u64 + text_bytes(v))
                    .sum(),
                Node::Null | Node::Bool(_) | Node::Number { .. } => 0,
            }
        }
        json::parse(body, max_depth).map(|doc| Self {
            text_bytes: text_bytes(&doc),
            ..Self::of(&doc, body, max_depth)
        })
    }

    /// A rough prompt-token estimate (about four bytes a token), corrected later by the upstream's usage.
    pub fn estimated_tokens(&self) -> u64 {
        self.text_bytes.div_ceil(4)
    }
}

/// The `usage` member of a document's top-level object: only its value is parsed again (numbers are not kept
/// in the tree), not the whole answer.
fn top_level_usage(doc: &Node, src: &[u8], max_depth: usize) -> Option<Usage> {
    let Node::Object(entries) = doc else {
        return None;
    };
    let (key, _) = entries.iter().find(|(k, _)| k.value == "usage")?;
    let value = json::member_value(src, key.range.end, max_depth)?;
    let usage: serde_json::Value = serde_json::from_slice(&src[value]).ok()?;
    Usage::from_value(&usage)
}

const OPAQUE_PART_TYPES: &[&str] = &[
    "image_url",
    "input_image",
    "input_audio",
    "file",
    "input_file",
    "image",
];
/// Strings nested in strings are parsed as JSON this deep at most.
const MAX_NESTED_DOCUMENTS: usize = 4;

/// Scans of one text after its first redaction, at most (see [`Walk::text`]).
pub(crate) const MAX_REDACTION_ROUNDS: usize = 8;

/// `s` with `edits` (sorted, non-overlapping byte ranges of it, on character boundaries) applied.
fn apply(s: &str, edits: &[Edit]) -> String {
    String::from_utf8(json::splice(s.as_bytes(), edits)).unwrap_or_default()
}

/// One edit turning `old` into `new`: the part between their common prefix and common suffix (whole
/// characters), so the bytes around it stay as they were.
fn difference(old: &str, new: &str) -> Edit {
    let prefix: usize = old
        .chars()
        .zip(new.chars())
        .take_while(|(a, b)| a == b)
        .map(|(a, _)| a.len_utf8())
        .sum();
    let suffix: usize = old[prefix..]
        .chars()
        .rev()
        .zip(new[prefix..].chars().rev())
        .take_while(|(a, b)| a == b)
        .map(|(a, _)| a.len_utf8())
        .sum();
    (
        prefix..old.len() - suffix,
        new[prefix..new.len() - suffix].to_string(),
    )
}

struct Walk<'a> {
    set: &'a RuleSet,
    opts: &'a InspectOptions,
    flow: Direction,
    hits: BTreeMap<usize, (u32, bool)>,
    opaque: u32,
    text_bytes: u64,
    /// The rule of the last redaction made (its replacement stands in for a text that never settles).
    last_redaction: usize,
}

impl Walk<'_> {
    /// Inspects one string; returns what enforced redactions change in it, as edits of `s` (sorted,
    /// non-overlapping, each a byte range of `s` and its new text). Empty when nothing changes.
    fn text(&mut self, s: &str, nested: usize) -> Vec<Edit> {
        let t = s.trim_start();
        if nested == 0 {
            self.text_bytes += s.len() as u64;
        }
        if nested < MAX_NESTED_DOCUMENTS && (t.starts_with('{') || t.starts_with('[')) {
            if let Ok(doc) = json::parse(s.as_bytes(), self.opts.max_depth) {
                // `s` is the nested document's source: its edits are already edits of `s`.
                let mut edits = Vec::new();
                self.node(&doc, s.as_bytes(), None, nested + 1, &mut edits);
                return edits;
            }
        }
        let edits = self.scan(s, false);
        if edits.is_empty() {
            return edits;
        }
        // A replacement can expose a value its match hid: a word boundary it creates (`…@example.coE354 394…`
        // becomes `[EMAIL]354 394…`, a phone number), or a shorter value inside a longer match. The redacted
        // text is scanned again until nothing more matches; what the other side receives never holds a value
        // a rule redacts. Each round replaces at least one match, so this ends; a text that still changes
        // after the bound is replaced whole (fail closed).
        let mut text = apply(s, &edits);
        let mut rounds = 0;
        loop {
            let more = self.scan(&text, true);
            if more.is_empty() {
                break;
            }
            rounds += 1;
            if rounds == MAX_REDACTION_ROUNDS {
                text = self.set.rule(self.last_redaction).replacement.clone();
                break;
            }
            text = apply(&text, &more);
        }
        if rounds == 0 {
            return edits;
        }
        vec![difference(s, &text)]
    }

    /// One scan of `s`: counts its matches and returns the edits of enforced redactions. `again`: `s` is a text
    /// already redacted — only what the redaction exposed counts (redactions, and blocks not seen yet).
    fn scan(&mut self, s: &str, again: bool) -> Vec<Edit> {
        let mut edits = Vec::new();
        for m in self.set.scan(s, self.flow) {
            let rule = self.set.rule(m.rule);
            let enforced = rule.mode == Mode::Enforce && !self.opts.monitor;
            let redacts = enforced && rule.action == Action::Redact;
            if again && !redacts && self.hits.contains_key(&m.rule) {
                continue;
            }
            let e = self.hits.entry(m.rule).or_insert((0, enforced));
            e.0 += 1;
            if redacts {
                // `scan` returns matches sorted and non-overlapping, on character boundaries.
                edits.push((m.range(), rule.replacement.clone()));
                self.last_redaction = m.rule;
            }
        }
        edits
    }

    /// Inspects the keys of one object: their edits of `src`, in order. Redacted keys that would come out
    /// equal — two emails as keys of one object, both `[EMAIL]` — are told apart by a suffix (` (2)`, …): a
    /// duplicate key is refused by strict readers and silently loses a value in the others.
    fn keys(&mut self, entries: &[(Str, Node)], src: &[u8], nested: usize, edits: &mut Vec<Edit>) {
        let mut changed: Vec<(usize, Vec<Edit>, String)> = Vec::new();
        for (i, (k, _)) in entries.iter().enumerate() {
            let e = self.text(&k.value, nested);
            if !e.is_empty() {
                let new = apply(&k.value, &e);
                changed.push((i, e, new));
            }
        }
        // Linear in the keys: unchanged keys by a mark per entry, and each name's next free suffix remembered.
        let mut redacted = vec![false; entries.len()];
        for (i, ..) in &changed {
            redacted[*i] = true;
        }
        let mut taken: std::collections::HashSet<String> = entries
            .iter()
            .zip(&redacted)
            .filter(|(_, r)| !**r)
            .map(|((k, _), _)| k.value.clone())
            .collect();
        let mut next: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
        for (i, e, new) in &mut changed {
            let mut name = new.clone();
            if taken.contains(&name) {
                let n = next.entry(new.clone()).or_insert(1);
                loop {
                    *n += 1;
                    name = format!("{new} ({n})");
                    if !taken.contains(&name) {
                        break;
                    }
                }
                *e = vec![difference(&entries[*i].0.value, &name)];
            }
            taken.insert(name);
        }
        let mut changed = changed.into_iter().peekable();
        for (i, (k, v)) in entries.iter().enumerate() {
            if let Some((_, e, _)) = changed.next_if(|(c, ..)| *c == i) {
                k.source_edits(src, &e, edits);
            }
            self.node(v, src, Some(k.value.as_str()), nested, edits);
        }
    }

    /// Inspects a string token of `src`; its changes become edits of `src` that touch only the raw bytes of
    /// the changed spans.
    fn string(&mut self, s: &Str, src: &[u8], nested: usize, edits: &mut Vec<Edit>) {
        let changed = self.text(&s.value, nested);
        if !changed.is_empty() {
            s.source_edits(src, &changed, edits);
        }
    }

    /// Inspects a value parsed from `src`, collecting the edits of `src` in order.
    fn node(
        &mut self,
        n: &Node,
        src: &[u8],
        key: Option<&str>,
        nested: usize,
        edits: &mut Vec<Edit>,
    ) {
        match n {
            Node::String(s) => self.string(s, src, nested, edits),
            Node::Array(items) => {
                // Token ids: `prompt` / `input` given as integers (or lists of them) instead of text.
                if matches!(key, Some("prompt" | "input"))
                    && !items.is_empty()
                    && items.iter().all(is_token_ids)
                {
                    self.opaque += 1;
                }
                for item in items {
                    self.node(item, src, None, nested, edits);
                }
            }
            Node::Object(entries) => {
                if n.get("type")
                    .and_then(Node::as_str)
                    .is_some_and(|t| OPAQUE_PART_TYPES.contains(&t))
                {
                    self.opaque += 1;
                }
                self.keys(entries, src, nested, edits);
            }
            Node::Null | Node::Bool(_) | Node::Number { .. } => {}
        }
    }

    fn verdict(self, rewritten: Option<Vec<u8>>, mut facts: Facts) -> Verdict {
        facts.text_bytes = self.text_bytes;
        let hits: Vec<RuleHit> = self
            .hits
            .into_iter()
            .map(|(rule, (count, enforced))| RuleHit {
                rule,
                count,
                enforced,
            })
            .collect();
        let Judged {
            decision,
            would_be,
            blocked_by,
        } = judge(self.set, &hits);
        let opaque_denied =
            self.opaque > 0 && self.opts.opaque == OpaquePolicy::Deny && !self.opts.monitor;
        let rewritten = if decision == Decision::Redact {
            rewritten
        } else {
            None
        };
        Verdict {
            decision,
            would_be,
            hits,
            blocked_by,
            rewritten,
            opaque_inputs: self.opaque,
            opaque_denied,
            facts,
        }
    }
}

fn is_token_ids(n: &Node) -> bool {
    match n {
        Node::Number { integer } => *integer,
        Node::Array(inner) => {
            !inner.is_empty()
                && inner
                    .iter()
                    .all(|x| matches!(x, Node::Number { integer: true }))
        }
        _ => false,
    }
}

/// Inspects a JSON body flowing `flow` (a request, or a non-streamed answer). For requests the errors are the
/// client's (invalid JSON, duplicate keys, too deep): answer 400.
pub fn inspect_json(
    set: &RuleSet,
    body: &[u8],
    opts: &InspectOptions,
    flow: Direction,
) -> Result<Verdict, JsonError> {
    let doc = json::parse(body, opts.max_depth)?;
    let mut w = Walk {
        set,
        opts,
        flow,
        hits: BTreeMap::new(),
        opaque: 0,
        text_bytes: 0,
        last_redaction: 0,
    };
    let mut edits = Vec::new();
    w.node(&doc, body, None, 0, &mut edits);
    let rewritten = (!edits.is_empty()).then(|| json::splice(body, &edits));
    Ok(w.verdict(rewritten, Facts::of(&doc, body, opts.max_depth)))
}

/// Inspects a body that is text but not JSON.
pub fn inspect_text(set: &RuleSet, body: &str, opts: &InspectOptions) -> Verdict {
    let mut w = Walk {
        set,
        opts,
        flow: Direction::Request,
        hits: BTreeMap::new(),
        opaque: 0,
        text_bytes: 0,
        last_redaction: 0,
    };
    // Plain text is never parsed as a JSON document here: `nested` at the bound.
    w.text_bytes = body.len() as u64;
    let edits = w.text(body, MAX_NESTED_DOCUMENTS);
    let rewritten = (!edits.is_empty()).then(|| json::splice(body.as_bytes(), &edits));
    w.verdict(rewritten, Facts::default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{load, redact, Budget};
    use crate::testkit::Rng;
    use serde_json::Value;

    /// A small pack: a redaction whose replacement needs escaping, a plain one, and a monitor-mode rule
    /// that must change nothing.
    const PACK: &str = r#"
[[rule]]
id = "t.email"
description = "Email address"
regex = { pattern = '[a-z]+@[a-z]+\.[a-z]{2,4}' }
case_sensitive = true
action = "redact"
replacement = "[EMAIL]"

[[rule]]
id = "t.word"
description = "A word whose replacement must be escaped in JSON"
keywords = { terms = ["hunter2", "straße"] }
action = "redact"
replacement = "<\"\\\t\u0001é>"

[[rule]]
id = "t.watch"
description = "Seen, never changed"
keywords = { terms = ["watch"] }
action = "redact"
mode = "monitor"
"#;

    fn pack() -> RuleSet {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("t.toml"), PACK).expect("write");
        load(dir.path(), &Budget::default()).expect("pack")
    }

    fn opts() -> InspectOptions {
        InspectOptions {
            max_depth: 32,
            opaque: OpaquePolicy::Pass,
            monitor: false,
        }
    }

    /// What reaches the other side: the rewritten body, or the original when nothing changed.
    fn forwarded(set: &RuleSet, body: &str, flow: Direction) -> String {
        let v = inspect_json(set, body.as_bytes(), &opts(), flow).expect("valid JSON");
        let out = v.rewritten.unwrap_or_else(|| body.as_bytes().to_vec());
        String::from_utf8(out).expect("utf-8")
    }

    fn shipped() -> RuleSet {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
        load(&dir, &Budget::default()).expect("shipped rules")
    }

    #[test]
    fn values_a_replacement_exposes_are_redacted_too() {
        let set = shipped();
        // The email's match takes the letter glued to the number; once it is `[EMAIL]`, the number stands
        // alone and is a phone number.
        let body = r#"{"messages":[{"role":"user","content":"mail jane.doe@example.coiE354 394 0044 0266 0130 00 now"}]}"#;
        let out = forwarded(&set, body, Direction::Request);
        assert!(
            out.contains(r#""role":"user","content":"mail [EMAIL][PHONE]"#),
            "{out}"
        );
        assert!(out.ends_with(r#" now"}]}"#), "{out}");
        let again = inspect_json(&set, out.as_bytes(), &opts(), Direction::Request).expect("json");
        assert_eq!(again.decision, Decision::Allow, "{out}");
    }

    #[test]
    fn redacted_keys_of_one_object_stay_distinct() {
        let set = shipped();
        let body =
            r#"{"metadata":{"jane.doe@example.com":1,"john.roe@example.com":2,"[EMAIL] (2)":3}}"#;
        let out = forwarded(&set, body, Direction::Request);
        assert_eq!(
            out,
            r#"{"metadata":{"[EMAIL]":1,"[EMAIL] (3)":2,"[EMAIL] (2)":3}}"#
        );
        json::parse(out.as_bytes(), 8).expect("keys unique");
    }

    /// `(body, what must be forwarded)`: escapes outside a matched span reach the other side as sent;
    /// only the raw bytes of the span change.
    #[test]
    fn redaction_keeps_escapes_outside_the_matched_span() {
        let cases: &[(&str, &str)] = &[
            (
                r#"{"messages":[{"role":"user","content":"caf\u00e9 \/ jane@x.io \u0041\u00E9 \ud83d\ude00\n"}]}"#,
                r#"{"messages":[{"role":"user","content":"caf\u00e9 \/ [EMAIL] \u0041\u00E9 \ud83d\ude00\n"}]}"#,
            ),
            // Keys are redacted the same way.
            (r#"{"k\u00e9y jane@x.io":1}"#, r#"{"k\u00e9y [EMAIL]":1}"#),
            // Escapes inside the span go with it, invisible characters included.
            (
                r#"["\u006aane@x.io", "jane\u200b@x.io \/"]"#,
                r#"["[EMAIL]", "[EMAIL] \/"]"#,
            ),
            // A replacement is escaped as JSON needs, and nothing around it moves.
            (
                r#"{"input":"my hunter2 \ud83d\ude00 \/"}"#,
                r#"{"input":"my <\"\\\t\u0001é> \ud83d\ude00 \/"}"#,
            ),
            // Tool-call arguments: the nested document's edit is spliced into the outer string, whose other
            // raw bytes stay as sent (here `\u0022` for its quotes, `\\u00e9` and `\\/` inside).
            (
                r#"{"arguments":"{\"to\":\"jane@x.io\",\"note\":\"caf\\u00e9 \\/\"}"}"#,
                r#"{"arguments":"{\"to\":\"[EMAIL]\",\"note\":\"caf\\u00e9 \\/\"}"}"#,
            ),
            (
                r#"{"arguments":"{\u0022to\u0022:\u0022jane@x.io\u0022, \u0022n\u0022:1}"}"#,
                r#"{"arguments":"{\u0022to\u0022:\u0022[EMAIL]\u0022, \u0022n\u0022:1}"}"#,
            ),
            // A replacement inside a nested document is escaped twice: once for each level.
            (
                r#"{"arguments":"{\"p\":\"hunter2\", \"q\":\"\u00e9\"}"}"#,
                r#"{"arguments":"{\"p\":\"<\\\"\\\\\\t\\u0001é>\", \"q\":\"\u00e9\"}"}"#,
            ),
        ];
        let set = pack();
        for (body, want) in cases {
            for flow in [Direction::Request, Direction::Response] {
                assert_eq!(&forwarded(&set, body, flow), want, "{flow:?}: {body}");
            }
        }
        // The nested replacement decodes to the rule's replacement.
        let out: Value = serde_json::from_str(cases[6].1).expect("json");
        let args: Value =
            serde_json::from_str(out["arguments"].as_str().expect("args")).expect("args json");
        assert_eq!(args["p"], "<\"\\\t\u{1}é>");
    }

    /// Text the generated strings are made of: matches, near misses, escapable and multi-byte characters.
    const ATOMS: &[&str] = &[
        "hello",
        " ",
        "jane@x.io",
        "ab@cd.efg",
        "hunter2",
        "HUNTER2",
        "STRASSE",
        "straße",
        "watch",
        "é",
        "€",
        "😀",
        "\n",
        "\t",
        "\"",
        "\\",
        "/",
        "\u{1}",
        "\u{8}",
        "\u{c}",
        "\u{200b}",
        "\u{7f}",
        "a",
        "@",
        ":",
        ",",
        "\u{2028}",
    ];

    /// One stretch of a generated document: its raw bytes, and what a correct redaction puts there instead.
    struct Piece {
        raw: String,
        redacted: Option<String>,
    }

    /// A generated value: its pieces, and its value before and after redaction.
    struct Gen {
        pieces: Vec<Piece>,
        before: Value,
        after: Value,
    }

    /// One of the ways JSON may write `c`, chosen at random.
    fn encode_char(rng: &mut Rng, c: char) -> String {
        let mut forms: Vec<String> = Vec::new();
        if c >= ' ' && c != '"' && c != '\\' {
            forms.push(c.to_string());
        }
        if let Some(short) = match c {
            '"' => Some("\\\""),
            '\\' => Some("\\\\"),
            '/' => Some("\\/"),
            '\n' => Some("\\n"),
            '\t' => Some("\\t"),
            '\r' => Some("\\r"),
            '\u{8}' => Some("\\b"),
            '\u{c}' => Some("\\f"),
            _ => None,
        } {
            forms.push(short.to_string());
        }
        let mut units = [0u16; 2];
        let units = c.encode_utf16(&mut units);
        forms.push(units.iter().map(|u| format!("\\u{u:04x}")).collect());
        forms.push(units.iter().map(|u| format!("\\u{u:04X}")).collect());
        rng.pick(&forms).clone()
    }

    /// The pieces of a string literal encoding `stretches` (decoded text, and what replaces it if it
    /// changes), each character written in a random form.
    fn literal(rng: &mut Rng, stretches: &[(String, Option<String>)]) -> Vec<Piece> {
        let mut pieces = vec![Piece {
            raw: "\"".into(),
            redacted: None,
        }];
        for (text, new) in stretches {
            let raw: String = text.chars().map(|c| encode_char(rng, c)).collect();
            let redacted = new.as_ref().map(|n| {
                let mut e = String::new();
                json::escape_into(&mut e, n);
                e
            });
            pieces.push(Piece { raw, redacted });
        }
        pieces.push(Piece {
            raw: "\"".into(),
            redacted: None,
        });
        pieces
    }

    /// A string of random atoms (after `prefix`), with the spans the rules redact worked out from the decoded
    /// text alone.
    fn plain_string(rng: &mut Rng, set: &RuleSet, prefix: &str) -> Gen {
        let mut text = prefix.to_string();
        for _ in 0..rng.below(7) {
            let atom = *rng.pick(ATOMS);
            text.push_str(atom);
        }
        let spans: Vec<(std::ops::Range<usize>, &str)> = set
            .scan(&text, Direction::Request)
            .into_iter()
            .filter(|m| {
                let r = set.rule(m.rule);
                r.mode == Mode::Enforce && r.action == Action::Redact
            })
            .map(|m| (m.range(), set.rule(m.rule).replacement.as_str()))
            .collect();
        let mut stretches = Vec::new();
        let mut last = 0;
        for (r, new) in &spans {
            stretches.push((text[last..r.start].to_string(), None));
            stretches.push((text[r.clone()].to_string(), Some(new.to_string())));
            last = r.end;
        }
        stretches.push((text[last..].to_string(), None));
        Gen {
            pieces: literal(rng, &stretches),
            after: Value::String(redact(&text, spans.iter().cloned())),
            before: Value::String(text),
        }
    }

    /// A string that holds a JSON document: the document's own pieces become the stretches of the outer
    /// literal, so a change inside it changes only the outer bytes that encode the changed inner bytes.
    fn nested_string(rng: &mut Rng, set: &RuleSet, depth: usize) -> Gen {
        let inner = container(rng, set, depth, 1);
        let stretches: Vec<(String, Option<String>)> = inner
            .pieces
            .into_iter()
            .map(|p| (p.raw, p.redacted))
            .collect();
        let text: String = stretches.iter().map(|(t, _)| t.as_str()).collect();
        let after: String = stretches
            .iter()
            .map(|(t, n)| n.as_deref().unwrap_or(t))
            .collect();
        Gen {
            pieces: literal(rng, &stretches),
            before: Value::String(text),
            after: Value::String(after),
        }
    }

    fn value(rng: &mut Rng, set: &RuleSet, depth: usize, nested: usize) -> Gen {
        match rng.below(if depth == 0 { 3 } else { 6 }) {
            0 => {
                let lit = *rng.pick(&["0", "-1", "2.5e3", "true", "false", "null"]);
                let v: Value = serde_json::from_str(lit).expect("literal");
                Gen {
                    pieces: vec![Piece {
                        raw: lit.into(),
                        redacted: None,
                    }],
                    before: v.clone(),
                    after: v,
                }
            }
            1 | 2 => plain_string(rng, set, ""),
            // Documents in strings, two levels at most (the walk parses four).
            3 if nested < 2 => nested_string(rng, set, depth - 1),
            _ => container(rng, set, depth - 1, nested),
        }
    }

    /// An object or an array of random values, with random whitespace.
    fn container(rng: &mut Rng, set: &RuleSet, depth: usize, nested: usize) -> Gen {
        let ws = |rng: &mut Rng| Piece {
            raw: rng.pick(&["", " ", "\n  ", "\t"]).to_string(),
            redacted: None,
        };
        let punct = |s: &str| Piece {
            raw: s.into(),
            redacted: None,
        };
        let object = rng.below(3) != 0;
        let mut pieces = vec![ws(rng), punct(if object { "{" } else { "[" })];
        let (mut before_map, mut after_map) = (serde_json::Map::new(), serde_json::Map::new());
        let (mut before_list, mut after_list) = (Vec::new(), Vec::new());
        for i in 0..rng.below(4) {
            if i > 0 {
                pieces.push(punct(","));
            }
            pieces.push(ws(rng));
            if object {
                // Distinct prefixes keep keys distinct (duplicates are refused).
                let key = plain_string(rng, set, &format!("k{i}_"));
                pieces.extend(key.pieces);
                pieces.push(ws(rng));
                pieces.push(punct(":"));
                pieces.push(ws(rng));
                let v = value(rng, set, depth, nested);
                pieces.extend(v.pieces);
                let (Value::String(kb), Value::String(ka)) = (key.before, key.after) else {
                    unreachable!("keys are strings")
                };
                before_map.insert(kb, v.before);
                after_map.insert(ka, v.after);
            } else {
                let v = value(rng, set, depth, nested);
                pieces.extend(v.pieces);
                before_list.push(v.before);
                after_list.push(v.after);
            }
            pieces.push(ws(rng));
        }
        pieces.push(punct(if object { "}" } else { "]" }));
        let (before, after) = if object {
            (Value::Object(before_map), Value::Object(after_map))
        } else {
            (Value::Array(before_list), Value::Array(after_list))
        };
        Gen {
            pieces,
            before,
            after,
        }
    }

    /// The round-trip property, on random documents: the forwarded body is valid JSON, equals the original
    /// with exactly the raw bytes of each matched span replaced (so it differs nowhere else), and decodes to
    /// the decoded original with each span replaced.
    #[test]
    fn redaction_round_trip_on_random_documents() {
        let set = pack();
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut changed = 0;
        for case in 0..3000 {
            let g = container(&mut rng, &set, 3, 0);
            let original: String = g.pieces.iter().map(|p| p.raw.as_str()).collect();
            let want: String = g
                .pieces
                .iter()
                .map(|p| p.redacted.as_deref().unwrap_or(&p.raw))
                .collect();
            // The generator itself: what it wrote decodes to what it meant.
            let decoded: Value = serde_json::from_str(&original).expect("generated JSON");
            assert_eq!(decoded, g.before, "case {case}: {original}");

            let v = inspect_json(&set, original.as_bytes(), &opts(), Direction::Request)
                .expect("valid");
            let got = v.rewritten.map(|b| String::from_utf8(b).expect("utf-8"));
            if want == original {
                assert_eq!(got, None, "case {case}: {original}");
                continue;
            }
            changed += 1;
            assert_eq!(v.decision, Decision::Redact);
            let got = got.expect("rewritten");
            assert_eq!(got, want, "case {case}: {original}");
            let back: Value = serde_json::from_str(&got).expect("valid JSON");
            assert_eq!(back, g.after, "case {case}: {original}");
            json::parse(got.as_bytes(), 32).expect("our reader accepts it too");
        }
        // The generator must exercise redaction, not only clean documents.
        assert!(changed > 500, "only {changed} documents changed");
    }
}
