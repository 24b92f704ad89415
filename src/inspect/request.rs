//! The verdict on one request body. Every string is inspected — keys too, and strings that hold JSON
//! (tool-call `arguments`, double-encoded payloads) are parsed and inspected as JSON, then re-encoded in
//! place. Non-text inputs (token-id arrays, image / audio / file parts) follow an explicit policy.

use std::collections::BTreeMap;

use crate::openai::json::{self, JsonError, Node, Str};
use crate::rules::{redact, Action, Direction, Mode, RuleSet};

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
}

impl Facts {
    /// Reads the top-level fields of a parsed body.
    fn of(doc: &Node) -> Self {
        Self {
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
            ..Self::of(&doc)
        })
    }

    /// A rough prompt-token estimate (about four bytes a token), corrected later by the upstream's usage.
    pub fn estimated_tokens(&self) -> u64 {
        self.text_bytes.div_ceil(4)
    }
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

struct Walk<'a> {
    set: &'a RuleSet,
    opts: &'a InspectOptions,
    flow: Direction,
    hits: BTreeMap<usize, (u32, bool)>,
    opaque: u32,
    text_bytes: u64,
}

impl Walk<'_> {
    /// Inspects one string; returns its new value if enforced redactions changed it.
    fn text(&mut self, s: &str, nested: usize) -> Option<String> {
        let t = s.trim_start();
        if nested == 0 {
            self.text_bytes += s.len() as u64;
        }
        if nested < MAX_NESTED_DOCUMENTS && (t.starts_with('{') || t.starts_with('[')) {
            if let Ok(doc) = json::parse(s.as_bytes(), self.opts.max_depth) {
                let mut edits = Vec::new();
                self.node(&doc, None, nested + 1, &mut edits);
                return (!edits.is_empty()).then(|| {
                    String::from_utf8_lossy(&json::splice(s.as_bytes(), &edits)).into_owned()
                });
            }
        }
        let matches = self.set.scan(s, self.flow);
        if matches.is_empty() {
            return None;
        }
        let mut redactions = Vec::new();
        for m in &matches {
            let rule = self.set.rule(m.rule);
            let enforced = rule.mode == Mode::Enforce && !self.opts.monitor;
            let e = self.hits.entry(m.rule).or_insert((0, enforced));
            e.0 += 1;
            if enforced && rule.action == Action::Redact {
                redactions.push((m.range(), rule.replacement.as_str()));
            }
        }
        (!redactions.is_empty()).then(|| redact(s, redactions))
    }

    fn string(
        &mut self,
        s: &Str,
        nested: usize,
        edits: &mut Vec<(std::ops::Range<usize>, String)>,
    ) {
        if let Some(new) = self.text(&s.value, nested) {
            edits.push((s.range.clone(), json::encode_str(&new)));
        }
    }

    fn node(
        &mut self,
        n: &Node,
        key: Option<&str>,
        nested: usize,
        edits: &mut Vec<(std::ops::Range<usize>, String)>,
    ) {
        match n {
            Node::String(s) => self.string(s, nested, edits),
            Node::Array(items) => {
                // Token ids: `prompt` / `input` given as integers (or lists of them) instead of text.
                if matches!(key, Some("prompt" | "input"))
                    && !items.is_empty()
                    && items.iter().all(is_token_ids)
                {
                    self.opaque += 1;
                }
                for item in items {
                    self.node(item, None, nested, edits);
                }
            }
            Node::Object(entries) => {
                if n.get("type")
                    .and_then(Node::as_str)
                    .is_some_and(|t| OPAQUE_PART_TYPES.contains(&t))
                {
                    self.opaque += 1;
                }
                for (k, v) in entries {
                    self.string(k, nested, edits);
                    self.node(v, Some(k.value.as_str()), nested, edits);
                }
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
    };
    let mut edits = Vec::new();
    w.node(&doc, None, 0, &mut edits);
    let rewritten = (!edits.is_empty()).then(|| json::splice(body, &edits));
    Ok(w.verdict(rewritten, Facts::of(&doc)))
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
    };
    // Plain text is never parsed as a JSON document here: `nested` at the bound.
    w.text_bytes = body.len() as u64;
    let rewritten = w.text(body, MAX_NESTED_DOCUMENTS).map(String::into_bytes);
    w.verdict(rewritten, Facts::default())
}
