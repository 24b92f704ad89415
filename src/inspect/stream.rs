//! Filtering a streamed answer (SSE), event by event, with the exact hold-back of `holdback`:
//!
//! - every string of a chat or completions choice — at any depth of its `delta` (`content`, `refusal`,
//!   `reasoning_content`, `audio.transcript`, each tool call's `function.arguments`, and whatever field the next
//!   server adds) and completions' `text` — is a growing text with its own [`HeldText`], keyed by the choice
//!   index and the string's path (array elements by their `index`, as tool calls are), so choices, fields and
//!   parallel tool calls are filtered exactly and independently. Identifiers that arrive whole (`role`, `id`,
//!   `type`, `name`) are inspected as they are, never held;
//! - tool-call arguments are JSON text: they are matched on what the client's JSON parser will decode
//!   (escapes included) and sent as they came, cut only between escapes (`holdback::Form::Json`);
//! - Responses API `*.delta` events with a string `delta`: one growing text per event type and
//!   `output_index` / `content_index` (and `summary_index`, for a reasoning summary's texts), the
//!   `*arguments.delta` ones JSON text; a `*.done` event releases what its part or output holds before it, and
//!   the final events (`response.completed`, `.incomplete`, `.failed`, `error`) release everything first;
//! - texts are keyed as a client joins them: an index that is not a whole number (`"0"`, `0.0`, which a
//!   JavaScript client reads as `0`) ends the stream as uninspectable, and a text over (released at its end,
//!   or dropped when the stream ended) never starts again — not in this filter, nor in its
//!   [`StreamFilter::successor`];
//! - an event whose pieces all leave unchanged is passed on byte for byte, unrepacked; one whose pieces were
//!   held or redacted is re-serialised in the upstream's own framing, and its `logprobs` are dropped (they
//!   would carry the held or redacted text again as tokens and bytes);
//! - held text is released, after a final inspection, before the chunk that finishes its choice, at `[DONE]`
//!   and at the end of the stream — never raw;
//! - an enforced block ends the stream: nothing after the blocked text is released, and [`StreamFilter::ending`]
//!   says why, for the driver (`proxy/stream.rs`) to end the client's stream with the error event the one
//!   renderer makes (`openai::error`; the SDKs raise it as `APIError`) and to cut the upstream;
//! - a text that costs more inspection work than its budget (see `holdback`), or more growing texts than
//!   [`MAX_TEXTS`], ends the stream as uninspectable — never passed uninspected;
//! - `usage` (from `stream_options.include_usage`) passes through and is kept for accounting.
//!
//! Events this filter cannot read as JSON are scanned whole: a match blocks the stream (fail closed).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use serde_json::{json, Map, Value};

use super::holdback::{Form, HeldText, Holding, Release};
use super::{judge, Decision, RuleHit, Side};
use crate::openai::sse::{ends_with_blank_line, write_event, Event, SseParser};
use crate::openai::Rejection;
use crate::rules::{Action, Direction, Mode, PrefixCache, RuleSet};

/// Largest SSE event accepted from the upstream.
pub const MAX_EVENT: usize = 4 << 20;

/// The most growing texts one stream may have open at once (choices × fields × tool calls): each holds a
/// buffer, so their number is bounded; a stream that needs more cannot be inspected.
pub const MAX_TEXTS: usize = 256;
/// Most texts one answer may end (each remembered, so that none can start again).
const MAX_OVER: usize = 16 * MAX_TEXTS;

/// Fields of a delta that carry an identifier sent whole, not a growing text: inspected as they are.
const WHOLE_FIELDS: &[&str] = &["role", "id", "type", "name"];

/// One step of a string's path inside a choice.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Seg {
    Key(String),
    /// The array element whose `index` is this (tool calls: the same call across chunks).
    Indexed(u64),
    /// The array element at this position (elements without an `index`).
    At(usize),
}

/// Which growing text a piece belongs to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum TextKey {
    /// A string of a chat or completions choice: the choice index and the string's path inside the choice
    /// (`delta.content`, `delta.tool_calls[index 1].function.arguments`, `text`…).
    Choice(u64, Vec<Seg>),
    /// A Responses API `*.delta` event's text.
    Output(OutputKey),
}

/// A Responses API text: the event type without `.delta`, and the indices the event carries.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct OutputKey {
    family: String,
    output: Option<u64>,
    content: Option<u64>,
    summary: Option<u64>,
}

impl OutputKey {
    /// The key of a Responses API event of type `kind` minus its last dotted part (`.delta`, `.done`); `None`
    /// when one of its indices is not a whole number (see [`index`]). A `summary_index` addresses a part of a
    /// reasoning summary, and counts only there: on any other event a client keys nothing by it, and two
    /// pieces that differ only in it are one text to the client.
    fn of(v: &Value, family: &str) -> Option<Self> {
        Some(Self {
            family: family.to_string(),
            output: index(v, "output_index")?,
            content: index(v, "content_index")?,
            summary: if family.contains("summary") {
                index(v, "summary_index")?
            } else {
                None
            },
        })
    }

    /// Whether a `.done` event (as a key) closes this text: the same text, or the part or output it belongs
    /// to (`response.content_part.done`, `response.output_item.done`).
    fn closed_by(&self, done: &OutputKey) -> bool {
        if self == done {
            return true;
        }
        let within = |mine: Option<u64>, theirs: Option<u64>| theirs.is_none() || mine == theirs;
        done.output.is_some()
            && self.output == done.output
            && within(self.content, done.content)
            && within(self.summary, done.summary)
    }
}

impl TextKey {
    fn choice(&self) -> Option<u64> {
        match self {
            TextKey::Choice(c, _) => Some(*c),
            TextKey::Output(_) => None,
        }
    }

    /// Tool-call arguments are JSON text; everything else is plain.
    fn form(&self) -> Form {
        let json = match self {
            TextKey::Choice(_, path) => {
                matches!(path.last(), Some(Seg::Key(k)) if k == "arguments")
            }
            TextKey::Output(o) => o.family.ends_with("arguments"),
        };
        if json {
            Form::Json
        } else {
            Form::Plain
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    /// Ended by a block or a failure: nothing more leaves.
    Ended,
    Done,
}

/// What to do next while walking the strings of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Go,
    /// The stream ended (a block or a failure): stop.
    Stop,
}

/// The filter of one streamed response.
pub struct StreamFilter {
    rules: Arc<RuleSet>,
    monitor: bool,
    max_hold: usize,
    parser: SseParser,
    texts: BTreeMap<TextKey, HeldText>,
    /// The choices the chunk being read finishes.
    closing: Vec<u64>,
    /// Texts already over (released at their end): a later piece of one would start a fresh text whose
    /// start a client joins to what was sent, so it ends the stream instead.
    over: std::collections::BTreeSet<TextKey>,
    /// A text ended that `over` could not hold (it was full).
    forgot_ends: bool,
    /// The lazy-DFA scratch space every text of this stream shares.
    cache: PrefixCache,
    /// The last chunk's envelope (id, object, model, …), to carry released text in chunks of our own.
    envelope: Option<Value>,
    /// Responses API: the last `*.delta` event of each text and its `event` name, to carry released text.
    output_envelopes: BTreeMap<OutputKey, (Value, Option<String>)>,
    /// The last event's lines other than its data, found clean: the same lines again (an `event` name on
    /// every event of a stream) need no second scan.
    clean_fields: String,
    /// Short strings inspected whole and found to match nothing (ids, model names, keys, finish reasons: the
    /// same on every chunk), so they are not scanned again. Bounded.
    clean: HashSet<String>,
    eol: &'static str,
    state: State,
    /// Why the stream was ended (a block or a failure), until the driver takes it.
    ending: Option<Rejection>,
    /// The stream could not be inspected (its ending is a failure, not a block).
    failed: bool,
    /// Inspection work of the texts already over.
    work_done: u64,
    /// Matches settled so far, per rule.
    pub hits: BTreeMap<usize, u32>,
    /// The rule that blocked the stream.
    pub blocked_by: Option<usize>,
    /// The usage the upstream reported.
    pub usage: Option<Value>,
    /// Bytes of generated text seen (for token accounting when the upstream reports no usage).
    pub text_bytes: u64,
    /// Sum over events of the bytes held after the event, and the number of events (mean hold-back).
    pub held_sum: u64,
    pub events: u64,
}

impl std::fmt::Debug for StreamFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamFilter")
            .field("state", &self.state)
            .field("held", &self.held())
            .finish()
    }
}

impl StreamFilter {
    /// A filter for one response; at most `max_hold` bytes of each text are held back.
    pub fn new(rules: Arc<RuleSet>, monitor: bool, max_hold: usize) -> Self {
        Self {
            rules,
            monitor,
            max_hold,
            parser: SseParser::new(MAX_EVENT),
            texts: BTreeMap::new(),
            closing: Vec::new(),
            over: std::collections::BTreeSet::new(),
            forgot_ends: false,
            cache: PrefixCache::default(),
            envelope: None,
            output_envelopes: BTreeMap::new(),
            clean_fields: String::new(),
            clean: HashSet::new(),
            eol: "\n",
            state: State::Open,
            ending: None,
            failed: false,
            work_done: 0,
            hits: BTreeMap::new(),
            blocked_by: None,
            usage: None,
            text_bytes: 0,
            held_sum: 0,
            events: 0,
        }
    }

    /// Whether the stream was ended by a block or a failure.
    pub fn is_ended(&self) -> bool {
        self.state == State::Ended
    }

    /// Why the stream ended early, once: the driver renders it as the stream's last event.
    pub fn ending(&mut self) -> Option<Rejection> {
        self.ending.take()
    }

    /// The stream's line ending (LF or CRLF, as the upstream writes it), for events the driver adds.
    pub fn eol(&self) -> &'static str {
        self.eol
    }

    /// Inspection work done on this stream's texts so far (automaton steps, bytes of views, scans and
    /// decoding): linear in [`Self::text_bytes`] whatever the text and its pieces (see `holdback`).
    pub fn work(&self) -> u64 {
        self.work_done + self.texts.values().map(HeldText::work).sum::<u64>()
    }

    /// What was decided about this answer so far, by the same rule as every verdict.
    pub fn side(&self) -> Side {
        if self.failed {
            return Side::failed();
        }
        let hits: Vec<RuleHit> = self
            .hits
            .iter()
            .map(|(&rule, &count)| RuleHit {
                rule,
                count,
                enforced: self.rules.rule(rule).mode == Mode::Enforce && !self.monitor,
            })
            .collect();
        let judged = judge(&self.rules, &hits);
        Side {
            // An event scanned whole blocks on any enforced match it cannot rewrite: a block, whatever the rule.
            decision: if self.blocked_by.is_some() {
                Decision::Block
            } else {
                judged.decision
            },
            hits,
            judged: true,
        }
    }

    /// Feeds upstream bytes; returns what to send downstream now.
    pub fn push(&mut self, chunk: &[u8]) -> Bytes {
        let mut out = BytesMut::new();
        if self.state != State::Open {
            return out.freeze();
        }
        match self.parser.push(chunk) {
            Ok(events) => {
                for ev in events {
                    self.on_event(ev, &mut out);
                }
            }
            Err(e) => self.fail(&e.to_string()),
        }
        out.freeze()
    }

    /// The upstream ended (with or without `[DONE]`): release what is held, after inspection.
    pub fn finish(&mut self) -> Bytes {
        let mut out = BytesMut::new();
        if self.state != State::Open {
            return out.freeze();
        }
        match self.parser.finish() {
            // The upstream's last event lacked its blank line: it gets one, or whatever the gateway writes
            // after it (held text, an ending) would read as part of it.
            Ok(Some(mut ev)) => {
                ev.raw = terminated(ev.raw, self.eol);
                self.on_event(ev, &mut out)
            }
            Ok(None) => {}
            Err(e) => self.fail(&e.to_string()),
        }
        if self.state == State::Open {
            self.flush_all(&mut out);
        }
        out.freeze()
    }

    /// One complete event: keep-alives and `[DONE]` pass (held text released first), JSON events go to the
    /// handler of their kind, anything else is scanned whole.
    fn on_event(&mut self, ev: Event, out: &mut BytesMut) {
        if self.state != State::Open {
            return;
        }
        if self.events == 0 && ev.raw.windows(2).any(|w| w == b"\r\n") {
            self.eol = "\r\n";
        }
        self.events += 1;
        // Comments, names, ids and unknown fields reach the client too: inspected like data, whatever the
        // event is (a keep-alive and `[DONE]` included).
        if !self.fields_clean(&ev) {
            return;
        }
        if ev.is_keepalive() {
            out.extend_from_slice(&ev.raw);
            return;
        }
        if ev.is_done() {
            self.flush_all(out);
            if self.state == State::Open {
                out.extend_from_slice(&ev.raw);
                self.state = State::Done;
            }
            return;
        }
        let data = ev.data.as_deref().unwrap_or("");
        let Ok(v) = serde_json::from_str::<Value>(data) else {
            self.scan_whole(data, &ev.raw, out);
            return;
        };
        // Chat chunks carry `usage` at the top; the Responses API inside `response.completed`.
        let usage = v
            .get("usage")
            .or_else(|| v.get("response").and_then(|r| r.get("usage")));
        if let Some(u) = usage.filter(|u| !u.is_null()) {
            self.usage = Some(u.clone());
        }
        if let Some(kind) = v.get("type").and_then(Value::as_str) {
            if let Some(family) = kind.strip_suffix(".delta") {
                if v.get("delta").is_some_and(Value::is_string) {
                    let Some(key) = OutputKey::of(&v, family) else {
                        self.fail(ODD_INDEX);
                        return;
                    };
                    self.on_output_delta(key, v, &ev, out);
                    return;
                }
            }
            // What an event closes is released before it: a part or output its `.done` names, or everything
            // at the end of the response.
            let closes: Vec<TextKey> = if let Some(family) = kind.strip_suffix(".done") {
                let Some(done) = OutputKey::of(&v, family) else {
                    self.fail(ODD_INDEX);
                    return;
                };
                self.texts
                    .keys()
                    .filter(|k| matches!(k, TextKey::Output(o) if o.closed_by(&done)))
                    .cloned()
                    .collect()
            } else if matches!(
                kind,
                "response.completed" | "response.incomplete" | "response.failed" | "error"
            ) {
                self.texts.keys().cloned().collect()
            } else {
                Vec::new()
            };
            if !closes.is_empty() {
                self.flush(&closes, out);
                if self.state != State::Open {
                    return;
                }
            }
        }
        if v.get("choices").is_some_and(Value::is_array) {
            self.on_chunk(v, &ev, out);
        } else {
            // Not a chat or completions chunk (an error, a Responses API event): every string of it is
            // inspected as final text, redacted in place or blocking the stream.
            self.walk_whole(data, &ev, out);
        }
    }

    /// A chat or completions chunk: every string of each choice's `text` and `delta` through its hold-back,
    /// every other string and every key inspected whole.
    fn on_chunk(&mut self, mut v: Value, ev: &Event, out: &mut BytesMut) {
        let mut changed = false;
        if let Some(top) = v.as_object_mut() {
            // The envelope (every field but the choices and usage) is most often the last chunk's, already
            // inspected (and as it left): then only a usage is new.
            let enveloped = |k: &String| k != "choices" && k != "usage";
            let same = self
                .envelope
                .as_ref()
                .and_then(Value::as_object)
                .is_some_and(|prev| {
                    top.keys().filter(|k| enveloped(k)).count() + 1 == prev.len()
                        && top
                            .iter()
                            .filter(|(k, _)| enveloped(k))
                            .all(|(k, x)| prev.get(k) == Some(x))
                });
            for (k, x) in top.iter_mut() {
                let new = k == "usage" || (!same && k != "choices");
                if new && self.whole_strings(x, true, &mut changed) == Flow::Stop {
                    return;
                }
            }
            if !same {
                if self.whole_keys(top, &mut changed) == Flow::Stop {
                    return;
                }
                let mut envelope: Map<String, Value> = top
                    .iter()
                    .filter(|(k, _)| enveloped(k))
                    .map(|(k, x)| (k.clone(), x.clone()))
                    .collect();
                envelope.insert("choices".into(), json!([]));
                self.envelope = Some(Value::Object(envelope));
            } else if top.contains_key("usage") && self.whole_keys(top, &mut changed) == Flow::Stop
            {
                // `usage`'s key is one the last envelope did not have.
                return;
            }
        }
        // A choice that finishes now: a text this chunk continues ends in it (its held text and the chunk's
        // piece are one text, judged whole and sent in this chunk — never split in two at the finish); a text
        // it does not continue is released before it (below).
        self.closing = finishing_choices(&v);
        let Some(choices) = v.get_mut("choices").and_then(Value::as_array_mut) else {
            self.closing.clear();
            return;
        };
        for choice in choices.iter_mut() {
            let Some(index) = index(choice, "index") else {
                self.closing.clear();
                self.fail(ODD_INDEX);
                return;
            };
            let index = index.unwrap_or(0);
            let Some(obj) = choice.as_object_mut() else {
                continue;
            };
            let mut choice_changed = false;
            for field in ["text", "delta"] {
                let Some(val) = obj.get_mut(field) else {
                    continue;
                };
                let mut path = vec![Seg::Key(field.to_string())];
                let flow = self.walk_strings(val, &mut path, &mut |f, path, s| {
                    f.piece(
                        TextKey::Choice(index, path.to_vec()),
                        s,
                        &mut choice_changed,
                    )
                });
                if flow == Flow::Stop {
                    self.closing.clear();
                    return;
                }
            }
            if choice_changed {
                if let Some(lp) = obj.get_mut("logprobs") {
                    *lp = Value::Null;
                }
                changed = true;
            }
            // The rest of the choice (a refusal, logprobs, fields of any name) and the keys inside its texts.
            for (k, x) in obj.iter_mut() {
                let pieces = k == "text" || k == "delta";
                if self.whole_strings(x, !pieces, &mut changed) == Flow::Stop {
                    self.closing.clear();
                    return;
                }
            }
            if self.whole_keys(obj, &mut changed) == Flow::Stop {
                self.closing.clear();
                return;
            }
        }
        self.closing.clear();
        let finishing = self.finishing(&v);
        if !finishing.is_empty() {
            self.flush(&finishing, out);
            if self.state != State::Open {
                return;
            }
        }
        self.held_sum += self.held();
        if changed {
            write_event(out, ev.other_lines(), v.to_string().as_bytes(), self.eol);
        } else {
            out.extend_from_slice(&ev.raw);
        }
    }

    /// Calls `on` for every string in `v` (at any depth), with its path from the choice.
    fn walk_strings(
        &mut self,
        v: &mut Value,
        path: &mut Vec<Seg>,
        on: &mut dyn FnMut(&mut Self, &[Seg], &mut String) -> Flow,
    ) -> Flow {
        match v {
            Value::String(s) => on(self, path, s),
            Value::Object(map) => {
                for (k, child) in map.iter_mut() {
                    path.push(Seg::Key(k.clone()));
                    let flow = self.walk_strings(child, path, on);
                    path.pop();
                    if flow == Flow::Stop {
                        return flow;
                    }
                }
                Flow::Go
            }
            Value::Array(items) => {
                for (at, child) in items.iter_mut().enumerate() {
                    let seg = match index(child, "index") {
                        Some(Some(i)) if child.is_object() => Seg::Indexed(i),
                        None => {
                            self.fail(ODD_INDEX);
                            return Flow::Stop;
                        }
                        _ => Seg::At(at),
                    };
                    path.push(seg);
                    let flow = self.walk_strings(child, path, on);
                    path.pop();
                    if flow == Flow::Stop {
                        return flow;
                    }
                }
                Flow::Go
            }
            _ => Flow::Go,
        }
    }

    /// One string of a chunk: an identifier sent whole is inspected as it is; anything else is a piece of its
    /// growing text. Rewrites `s` with what may leave now and notes whether it changed.
    fn piece(&mut self, key: TextKey, s: &mut String, changed: &mut bool) -> Flow {
        let whole = matches!(
            &key,
            TextKey::Choice(_, path)
                if matches!(path.last(), Some(Seg::Key(k)) if WHOLE_FIELDS.contains(&k.as_str()))
        );
        let out = if whole {
            self.whole(s)
        } else {
            self.release(key, s)
        };
        match out {
            Some(text) => {
                if text != *s {
                    *s = text;
                    *changed = true;
                }
                Flow::Go
            }
            None => Flow::Stop,
        }
    }

    /// The texts held for choices that this chunk finishes.
    fn finishing(&self, v: &Value) -> Vec<TextKey> {
        let Some(choices) = v.get("choices").and_then(Value::as_array) else {
            return Vec::new();
        };
        choices
            .iter()
            .filter(|c| c.get("finish_reason").is_some_and(|f| !f.is_null()))
            .filter_map(|c| c.get("index").and_then(Value::as_u64))
            .flat_map(|i| {
                self.texts
                    .keys()
                    .filter(move |k| k.choice() == Some(i))
                    .cloned()
            })
            .collect()
    }

    /// One piece of a growing text through its hold-back: the text to send now (possibly empty or
    /// redacted), or `None` when the stream was ended (an enforced block, or a text it cannot inspect).
    fn release(&mut self, key: TextKey, piece: &str) -> Option<String> {
        self.text_bytes += piece.len() as u64;
        if !piece.is_empty() && self.over.contains(&key) {
            self.fail("a text went on after the event that ended it");
            return None;
        }
        if !self.texts.contains_key(&key) && self.texts.len() >= MAX_TEXTS {
            self.fail(&format!("more than {MAX_TEXTS} texts in one answer"));
            return None;
        }
        let form = key.form();
        let closing = key.choice().is_some_and(|c| self.closing.contains(&c));
        let held = self
            .texts
            .entry(key.clone())
            .or_insert_with(|| HeldText::new(form));
        let mut h = Holding {
            rules: &self.rules,
            cache: &mut self.cache,
            monitor: self.monitor,
            cap: self.max_hold,
        };
        let released = held.push(piece, &mut h);
        if !closing {
            return self.settle(released);
        }
        // The text ends with this piece: the rest of it is judged as a whole text now.
        let rest = held.finish(&mut h);
        self.work_done += held.work();
        self.texts.remove(&key);
        self.end_text(key);
        let mut text = self.settle(released)?;
        text.push_str(&self.settle(rest)?);
        Some(text)
    }

    /// Remembers that `key`'s text is over (at most [`MAX_OVER`] of them; past that the stream ends).
    fn end_text(&mut self, key: TextKey) {
        if self.over.len() >= MAX_OVER {
            self.forgot_ends = true;
            self.fail(&format!("more than {MAX_OVER} texts in one answer"));
            return;
        }
        self.over.insert(key);
    }

    /// Acts on what a text released: counts its hits, or ends the stream.
    fn settle(&mut self, released: Release) -> Option<String> {
        match released {
            Release::Block { rule } => {
                // The match that blocks is a hit too: the decision event names the rule.
                *self.hits.entry(rule).or_default() += 1;
                self.end_blocked(rule);
                None
            }
            Release::OverBudget => {
                self.fail("an answer's text went over its inspection budget");
                None
            }
            Release::Text { text, rules, .. } => {
                for r in rules {
                    *self.hits.entry(r).or_default() += 1;
                }
                Some(text)
            }
        }
    }

    /// Inspects as whole strings what the hold-back does not see: every key in `v` and, with `values`, every
    /// string (inside a choice's `text` and `delta` the strings are pieces of growing texts: keys only).
    fn whole_strings(&mut self, v: &mut Value, values: bool, changed: &mut bool) -> Flow {
        match v {
            Value::String(s) if values => match self.whole_once(s) {
                Some(Some(text)) => {
                    *s = text;
                    *changed = true;
                    Flow::Go
                }
                Some(None) => Flow::Go,
                None => Flow::Stop,
            },
            Value::Array(items) => {
                for x in items {
                    if self.whole_strings(x, values, changed) == Flow::Stop {
                        return Flow::Stop;
                    }
                }
                Flow::Go
            }
            Value::Object(m) => {
                for x in m.values_mut() {
                    if self.whole_strings(x, values, changed) == Flow::Stop {
                        return Flow::Stop;
                    }
                }
                self.whole_keys(m, changed)
            }
            _ => Flow::Go,
        }
    }

    /// The keys of one object inspected whole; a redacted key is renamed (two keys redacted to one name end
    /// the stream: a value would be lost).
    fn whole_keys(&mut self, m: &mut Map<String, Value>, changed: &mut bool) -> Flow {
        let mut renamed = Vec::new();
        for k in m.keys() {
            match self.whole_once(k) {
                Some(Some(text)) => renamed.push((k.clone(), text)),
                Some(None) => {}
                None => return Flow::Stop,
            }
        }
        for (old, new) in renamed {
            if m.contains_key(&new) {
                self.fail("two keys of an answer's object redact to one name");
                return Flow::Stop;
            }
            if let Some(x) = m.remove(&old) {
                m.insert(new, x);
            }
            *changed = true;
        }
        Flow::Go
    }

    /// [`Self::whole`], remembering short strings that match nothing: `Some(None)` when `s` stays as it is,
    /// `Some(Some(new))` when it changes, `None` when the stream ended.
    fn whole_once(&mut self, s: &str) -> Option<Option<String>> {
        const MAX_CLEAN: usize = 256;
        const MAX_CLEAN_LEN: usize = 128;
        if self.clean.contains(s) {
            return Some(None);
        }
        let released = self.whole_release(s);
        let nothing = matches!(&released, Release::Text { rules, .. } if rules.is_empty());
        if nothing && s.len() <= MAX_CLEAN_LEN && self.clean.len() < MAX_CLEAN {
            self.clean.insert(s.to_string());
        }
        self.settle(released)
            .map(|text| (text != s).then_some(text))
    }

    /// A string sent whole (an identifier): inspected as final text, redacted in place or ending the stream.
    fn whole(&mut self, s: &str) -> Option<String> {
        let released = self.whole_release(s);
        self.settle(released)
    }

    /// What a string sent whole becomes (not yet counted: `settle` does that).
    fn whole_release(&mut self, s: &str) -> Release {
        let mut h = Holding {
            rules: &self.rules,
            cache: &mut self.cache,
            monitor: self.monitor,
            cap: self.max_hold,
        };
        HeldText::whole(s, &mut h)
    }

    /// Bytes held back across every text now.
    fn held(&self) -> u64 {
        self.texts.values().map(|h| h.held() as u64).sum()
    }

    /// Bytes of text held back now.
    pub fn held_bytes(&self) -> usize {
        self.texts.values().map(HeldText::held).sum()
    }

    /// Releases every held text now, after its final inspection, as [`Self::finish`] does at the end of a
    /// stream — for a driver that knows the answer is over before its last event (a realtime `response.done`).
    pub fn release_held(&mut self) -> Bytes {
        let mut out = BytesMut::new();
        if self.state == State::Open {
            self.flush_all(&mut out);
        }
        out.freeze()
    }

    fn flush_all(&mut self, out: &mut BytesMut) {
        let keys: Vec<TextKey> = self.texts.keys().cloned().collect();
        self.flush(&keys, out);
    }

    /// Releases the held text of `keys` (their texts are over), each in an event of our own.
    fn flush(&mut self, keys: &[TextKey], out: &mut BytesMut) {
        for key in keys {
            let Some(mut held) = self.texts.remove(key) else {
                continue;
            };
            self.end_text(key.clone());
            let mut h = Holding {
                rules: &self.rules,
                cache: &mut self.cache,
                monitor: self.monitor,
                cap: self.max_hold,
            };
            let released = held.finish(&mut h);
            self.work_done += held.work();
            let Some(text) = self.settle(released) else {
                return;
            };
            if !text.is_empty() {
                let (ev, name) = self.carrier(key, text);
                let name = name.map(|n| format!("event: {n}"));
                write_event(out, name.as_deref(), ev.to_string().as_bytes(), self.eol);
            }
            if let TextKey::Output(o) = key {
                self.output_envelopes.remove(o);
            }
        }
    }

    /// An event of our own carrying released `text` of `key`, in the shape the upstream's own events had, and
    /// the `event` name they had.
    fn carrier(&self, key: &TextKey, text: String) -> (Value, Option<String>) {
        match key {
            TextKey::Choice(index, path) => {
                let mut choice = Map::new();
                choice.insert("index".into(), json!(index));
                let mut value = Value::String(text);
                // Built from the inside out: the string, then each step of its path around it.
                for (i, seg) in path.iter().enumerate().rev() {
                    value = match seg {
                        Seg::Key(k) if i == 0 => {
                            choice.insert(k.clone(), value);
                            break;
                        }
                        Seg::Key(k) => json!({ k.as_str(): value }),
                        Seg::Indexed(n) => {
                            let mut element = match value {
                                Value::Object(m) => m,
                                other => Map::from_iter([("value".to_string(), other)]),
                            };
                            element.insert("index".into(), json!(n));
                            json!([element])
                        }
                        Seg::At(n) => {
                            let mut items = vec![json!({}); *n];
                            items.push(value);
                            Value::Array(items)
                        }
                    };
                }
                choice.insert("logprobs".into(), Value::Null);
                choice.insert("finish_reason".into(), Value::Null);
                let mut ev = self.envelope.clone().unwrap_or_else(|| json!({}));
                ev["choices"] = json!([choice]);
                (ev, None)
            }
            TextKey::Output(o) => {
                let (mut ev, name) = self
                    .output_envelopes
                    .get(o)
                    .cloned()
                    .unwrap_or_else(|| (json!({"type": format!("{}.delta", o.family)}), None));
                ev["delta"] = Value::String(text);
                ev.as_object_mut().map(|m| m.remove("logprobs"));
                (ev, name)
            }
        }
    }

    /// A Responses API `*.delta` event: its `delta` goes through the hold-back of its text.
    fn on_output_delta(&mut self, key: OutputKey, mut v: Value, ev: &Event, out: &mut BytesMut) {
        // Every string but the delta, and every key, inspected whole.
        let mut changed = false;
        if let Some(obj) = v.as_object_mut() {
            for (k, x) in obj.iter_mut() {
                if self.whole_strings(x, k != "delta", &mut changed) == Flow::Stop {
                    return;
                }
            }
            if self.whole_keys(obj, &mut changed) == Flow::Stop {
                return;
            }
        }
        let piece = v
            .get("delta")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        // The envelope is kept without its text (a delta can be large), until its text is released.
        let mut envelope = v.clone();
        envelope["delta"] = Value::String(String::new());
        self.output_envelopes
            .insert(key.clone(), (envelope, ev.name.clone()));
        let Some(text) = self.release(TextKey::Output(key), &piece) else {
            return;
        };
        self.held_sum += self.held();
        if text == piece && !changed {
            out.extend_from_slice(&ev.raw);
        } else {
            v["delta"] = Value::String(text);
            v.as_object_mut().map(|o| o.remove("logprobs"));
            write_event(out, ev.other_lines(), v.to_string().as_bytes(), self.eol);
        }
    }

    /// A JSON event without pieces to hold: inspected whole as final text (every string, keys too).
    fn walk_whole(&mut self, data: &str, ev: &Event, out: &mut BytesMut) {
        let opts = super::InspectOptions {
            max_depth: 128,
            opaque: super::OpaquePolicy::Pass,
            monitor: self.monitor,
        };
        let Ok(verdict) =
            super::inspect_json(&self.rules, data.as_bytes(), &opts, Direction::Response)
        else {
            self.scan_whole(data, &ev.raw, out);
            return;
        };
        for h in &verdict.hits {
            *self.hits.entry(h.rule).or_default() += h.count;
        }
        match (verdict.blocked_by, &verdict.rewritten) {
            (Some(rule), _) => self.end_blocked(rule),
            (None, Some(body)) => write_event(out, ev.other_lines(), body, self.eol),
            (None, None) => out.extend_from_slice(&ev.raw),
        }
    }

    /// An event without text pieces we know: every match in it counts; a block (or any match that would
    /// need a rewrite we cannot do safely) ends the stream.
    fn scan_whole(&mut self, data: &str, raw: &Bytes, out: &mut BytesMut) {
        match self.judge_whole(data).0 {
            Some(rule) => self.end_blocked(rule),
            None => out.extend_from_slice(raw),
        }
    }

    /// Counts every match in `text` (passed on as it is, never rewritten); returns an enforced rule that
    /// would change or stop it, and whether anything matched at all.
    fn judge_whole(&mut self, text: &str) -> (Option<usize>, bool) {
        let matches = self.rules.scan(text, Direction::Response);
        for m in &matches {
            *self.hits.entry(m.rule).or_default() += 1;
        }
        let enforced = matches.iter().map(|m| m.rule).find(|&r| {
            let rule = self.rules.rule(r);
            rule.mode == Mode::Enforce && !self.monitor && rule.action != Action::Log
        });
        (enforced, !matches.is_empty())
    }

    /// Inspects an event's lines other than its data; a match that would change them ends the stream (they
    /// are passed on verbatim or not at all).
    fn fields_clean(&mut self, ev: &Event) -> bool {
        let mut lines = ev.other_lines();
        let Some(first) = lines.next() else {
            return true;
        };
        let mut text = first.to_string();
        for line in lines {
            text.push('\n');
            text.push_str(line);
        }
        if text == self.clean_fields {
            return true;
        }
        match self.judge_whole(&text) {
            (Some(rule), _) => {
                self.end_blocked(rule);
                false
            }
            (None, matched) => {
                // Only lines nothing matches are skipped next time: a logged match is counted every time.
                if !matched {
                    self.clean_fields = text;
                }
                true
            }
        }
    }

    /// Ends the stream on an enforced block. What the current event released before the block is dropped with
    /// it: nothing after the blocked text may leave, and an event is sent whole or not at all.
    fn end_blocked(&mut self, rule: usize) {
        let r = self.rules.rule(rule);
        self.ending = Some(Rejection::ResponseBlocked {
            rule: r.id.clone(),
            description: r.description.clone(),
        });
        self.blocked_by = Some(rule);
        self.state = State::Ended;
        self.drop_texts();
    }

    fn fail(&mut self, why: &str) {
        tracing::error!("response stream could not be inspected ({why}); ending it");
        self.ending = Some(Rejection::StreamUninspectable(why.to_string()));
        self.failed = true;
        self.state = State::Ended;
        self.drop_texts();
    }

    /// The stream ended early: what is held is dropped, never sent. The texts dropped are over too: what was
    /// released of them was released for what followed it then, and a filter after this one
    /// ([`Self::successor`]) must not take a later piece of one for the start of a fresh text.
    fn drop_texts(&mut self) {
        self.work_done += self.texts.values().map(HeldText::work).sum::<u64>();
        let texts = std::mem::take(&mut self.texts);
        for key in texts.into_keys() {
            if self.over.len() >= MAX_OVER {
                self.forgot_ends = true;
                break;
            }
            self.over.insert(key);
        }
        self.output_envelopes.clear();
    }

    /// A fresh filter for what comes after this one on the same channel (a realtime session's events outside
    /// responses, after a block or a failure ended this filter): it knows every text this one ended, so a later
    /// piece of one ends it too — a client joins that piece to what it was sent. One that cannot know them all
    /// starts ended.
    pub fn successor(&self) -> StreamFilter {
        let mut next = StreamFilter::new(self.rules.clone(), self.monitor, self.max_hold);
        next.over = self.over.clone();
        next.forgot_ends = self.forgot_ends;
        if next.forgot_ends {
            next.fail(&format!("more than {MAX_OVER} texts ended"));
        }
        next
    }
}

/// Why a stream ends when an index is not a whole number.
const ODD_INDEX: &str = "an index in an event is not a whole number";

/// Field `key` of `v` as an index: `Some(None)` when absent or `null`, `Some(Some(n))` for a whole number,
/// `None` for anything else. A client keys its texts by the index as it stands — a JavaScript client by
/// `"0"`, `0.0` and `0` alike — so a piece with such an index cannot be told a text the way the client will
/// join it: the stream cannot be inspected.
fn index(v: &Value, key: &str) -> Option<Option<u64>> {
    match v.get(key) {
        None | Some(Value::Null) => Some(None),
        Some(x) => x.as_u64().map(Some),
    }
}

/// The indexes of the choices a chunk finishes (a non-null `finish_reason`).
fn finishing_choices(v: &Value) -> Vec<u64> {
    v.get("choices")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|c| c.get("finish_reason").is_some_and(|f| !f.is_null()))
        .filter_map(|c| c.get("index").and_then(Value::as_u64))
        .collect()
}

/// `raw` ending with a blank line: the terminator an event cut short by the end of its stream lacks. Line ends
/// are added until a reader sees one: a lone CR the event ends with and an LF added after it would read as one
/// CRLF, not two line ends.
fn terminated(raw: Bytes, eol: &str) -> Bytes {
    if ends_with_blank_line(&raw) {
        return raw;
    }
    let mut out = BytesMut::with_capacity(raw.len() + 3 * eol.len());
    out.extend_from_slice(&raw);
    while !ends_with_blank_line(&out) {
        out.extend_from_slice(eol.as_bytes());
    }
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{load, Budget};

    fn pack() -> Arc<RuleSet> {
        Arc::new(
            load(
                std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/rules")),
                &Budget::default(),
            )
            .expect("pack"),
        )
    }

    fn chunk(choices: Value) -> String {
        format!(
            "data: {}\n\n",
            json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": choices})
        )
    }

    /// An SSE stream with `deltas[i]` as content pieces of choice `i % n`.
    fn stream(deltas: &[(u64, &str)]) -> String {
        let mut s = chunk(
            json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]),
        );
        for (i, d) in deltas {
            s += &chunk(
                json!([{"index": i, "delta": {"content": d}, "logprobs": {"content": [{"token": d, "logprob": -0.1, "bytes": d.as_bytes()}]}, "finish_reason": null}]),
            );
        }
        s += &chunk(json!([{"index": 0, "delta": {}, "logprobs": null, "finish_reason": "stop"}]));
        s += "data: [DONE]\n\n";
        s
    }

    /// The error event that ends a blocked or failed stream, rendered as the driver renders it.
    fn ending(f: &mut StreamFilter) -> Option<String> {
        f.ending()
            .map(|r| String::from_utf8(r.render().sse_event(f.eol()).to_vec()).expect("utf8"))
    }

    /// Runs a stream through the filter in reads of `read` bytes; returns every output and the client's
    /// reconstructed content per choice (and any error event).
    fn filter(
        set: &Arc<RuleSet>,
        s: &str,
        read: usize,
    ) -> (Vec<String>, BTreeMap<u64, String>, Option<Value>) {
        let mut f = StreamFilter::new(set.clone(), false, crate::inspect::holdback::MAX_HELD);
        let mut outs = Vec::new();
        for c in s.as_bytes().chunks(read) {
            outs.push(String::from_utf8(f.push(c).to_vec()).expect("utf8"));
            outs.extend(ending(&mut f));
        }
        outs.push(String::from_utf8(f.finish().to_vec()).expect("utf8"));
        outs.extend(ending(&mut f));
        let all = outs.concat();
        let mut content: BTreeMap<u64, String> = BTreeMap::new();
        let mut error = None;
        for line in all.lines().filter_map(|l| l.strip_prefix("data: ")) {
            if line == "[DONE]" {
                continue;
            }
            let v: Value = serde_json::from_str(line).expect("every event is JSON");
            if v.get("error").is_some() {
                error = Some(v);
                continue;
            }
            for c in v["choices"].as_array().expect("choices") {
                if let Some(t) = c["delta"]["content"].as_str() {
                    content
                        .entry(c["index"].as_u64().expect("index"))
                        .or_default()
                        .push_str(t);
                }
                if let Some(lp) = c["logprobs"]["content"].as_array() {
                    for tok in lp {
                        let t = tok["token"].as_str().unwrap_or("");
                        assert!(
                            !t.contains('@') && !t.contains("AKIA"),
                            "logprobs carry held or redacted text: {t}"
                        );
                    }
                }
            }
        }
        (outs, content, error)
    }

    #[test]
    fn values_split_across_deltas_and_reads_never_leak() {
        let set = pack();
        let cases = [
            ("jane.doe@example.com", Some("[EMAIL]")),
            ("AKIAIOSFODNN7EXAMPLE", None),
            ("4111 1111 1111 1111", Some("[CARD]")),
        ];
        for (value, replacement) in cases {
            let text = format!("Here it is: {value} — done.");
            let start = text.find(value).expect("found");
            for cut in (start..=start + value.len()).filter(|&c| text.is_char_boundary(c)) {
                for read in [1, 7, 4096] {
                    let s = stream(&[(0, &text[..cut]), (0, &text[cut..])]);
                    let (outs, content, error) = filter(&set, &s, read);
                    let all = outs.concat();
                    match replacement {
                        Some(r) => {
                            assert!(error.is_none());
                            assert_eq!(
                                content[&0],
                                text.replace(value, r),
                                "cut {cut} read {read}"
                            );
                        }
                        None => {
                            assert_eq!(error.expect("blocked")["error"]["code"], "policy_blocked");
                            assert!(
                                text[..start]
                                    .starts_with(content.get(&0).map_or("", String::as_str)),
                                "leak at cut {cut}: {content:?}"
                            );
                            assert!(!all.contains("[DONE]"), "nothing after the block");
                        }
                    }
                    // No fragment of the value (6+ bytes: shorter ones occur in the JSON envelope) in any output.
                    for n in 6..=value.len() {
                        if value.is_char_boundary(n) {
                            assert!(
                                !all.contains(&value[..n]),
                                "prefix {:?} leaked (cut {cut}, read {read})",
                                &value[..n]
                            );
                            assert!(
                                !all.contains(&value[value.len() - n..]),
                                "suffix {:?} leaked (cut {cut}, read {read}): {all}",
                                &value[value.len() - n..]
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn choices_are_filtered_independently_and_clean_events_pass_unchanged() {
        let set = pack();
        let s = stream(&[
            (0, "mail jane@"),
            (1, "hello "),
            (0, "example.com ok"),
            (1, "world"),
        ]);
        let (outs, content, error) = filter(&set, &s, 4096);
        assert!(error.is_none());
        assert_eq!(content[&0], "mail [EMAIL] ok");
        assert_eq!(content[&1], "hello world");
        let clean = stream(&[(0, "Nothing to see. "), (0, "Still nothing.")]);
        let (outs2, _, _) = filter(&set, &clean, 4096);
        // Pieces that end in a word are held until the word ends; events with nothing held pass as they came.
        assert!(outs2.concat().contains(&chunk(json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]))));
        assert!(!outs.concat().contains("jane@"));
    }

    #[test]
    fn held_text_is_flushed_at_eof_without_done() {
        let set = pack();
        let s = stream(&[(0, "contact jane@example.com")]);
        let cut = s
            .find("data: {\"choices\":[{\"delta\":{},")
            .or_else(|| s.rfind("data: {"))
            .expect("finish event");
        let truncated = &s[..cut];
        let (_, content, _) = filter(&set, truncated, 4096);
        assert_eq!(content[&0], "contact [EMAIL]");
    }

    #[test]
    fn responses_api_deltas_are_held_back_per_output() {
        let set = pack();
        let ev = |v: Value| format!("data: {v}\n\n");
        let delta = |d: &str| json!({"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 0, "content_index": 0, "delta": d});
        let s = [
            ev(json!({"type": "response.created", "response": {"id": "resp_1", "status": "in_progress"}})),
            ev(delta("Write to jane.doe@exa")),
            ev(delta("mple.com please")),
            ev(json!({"type": "response.output_text.done", "item_id": "msg_1", "output_index": 0, "content_index": 0, "text": "Write to jane.doe@example.com please"})),
            ev(json!({"type": "response.completed", "response": {"output": [{"content": [{"type": "output_text", "text": "Write to jane.doe@example.com please"}]}]}})),
        ]
        .concat();
        let mut f = StreamFilter::new(set, false, crate::inspect::holdback::MAX_HELD);
        let mut all = String::from_utf8(f.push(s.as_bytes()).to_vec()).expect("utf8");
        all.push_str(std::str::from_utf8(&f.finish()).expect("utf8"));
        assert!(!all.contains("jane"), "{all}");
        let deltas: String = all
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .filter(|v| v["type"] == "response.output_text.delta")
            .filter_map(|v| v["delta"].as_str().map(str::to_string))
            .collect();
        assert_eq!(deltas, "Write to [EMAIL] please");
        assert!(
            all.contains("\"text\":\"Write to [EMAIL] please\""),
            "done and completed events are redacted whole"
        );
    }

    /// Runs raw SSE through the filter in one read; returns everything sent and the filter.
    fn through(set: &Arc<RuleSet>, s: &str) -> (String, StreamFilter) {
        let mut f = StreamFilter::new(set.clone(), false, crate::inspect::holdback::MAX_HELD);
        let mut all = String::from_utf8(f.push(s.as_bytes()).to_vec()).expect("utf8");
        all.extend(ending(&mut f));
        all.push_str(std::str::from_utf8(&f.finish()).expect("utf8"));
        all.extend(ending(&mut f));
        (all, f)
    }

    /// The JSON events of a filtered stream.
    fn events(all: &str) -> Vec<Value> {
        all.lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str(d).expect("every event is JSON"))
            .collect()
    }

    /// The string at `path` in choice 0 of every chunk, joined (what a client accumulating it reads).
    fn joined(all: &str, path: &[&str]) -> String {
        events(all)
            .iter()
            .filter_map(|v| {
                let mut at = v.get("choices")?.get(0)?;
                for k in path {
                    at = at.get(k)?;
                }
                at.as_str().map(str::to_string)
            })
            .collect()
    }

    /// A chunk whose choice 0 carries `delta`.
    fn delta_chunk(delta: Value) -> String {
        chunk(json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": null}]))
    }

    /// `value` nested at `path` (`["audio", "transcript"]` → `{"audio": {"transcript": value}}`).
    fn nest(path: &[&str], value: &str) -> Value {
        path.iter()
            .rev()
            .fold(Value::String(value.to_string()), |v, k| json!({ *k: v }))
    }

    #[test]
    fn every_string_of_a_delta_is_held_back_per_path() {
        let set = pack();
        let fields: [&[&str]; 5] = [
            &["reasoning_content"],
            &["reasoning"],
            &["audio", "transcript"],
            &["x_next_server", "thoughts", "text"],
            &["content"],
        ];
        let text = "Thinking: mail jane.doe@example.com later.";
        let start = text.find("jane").expect("found");
        for path in fields {
            for cut in start..=start + "jane.doe@example.com".len() {
                let s = [
                    delta_chunk(json!({"role": "assistant", "content": ""})),
                    delta_chunk(nest(path, &text[..cut])),
                    delta_chunk(nest(path, &text[cut..])),
                    chunk(json!([{"index": 0, "delta": {}, "logprobs": null, "finish_reason": "stop"}])),
                    "data: [DONE]\n\n".to_string(),
                ]
                .concat();
                let (all, _) = through(&set, &s);
                let mut full = vec!["delta"];
                full.extend_from_slice(path);
                assert_eq!(
                    joined(&all, &full),
                    "Thinking: mail [EMAIL] later.",
                    "{path:?} cut at {cut}"
                );
                for n in 6..="jane.doe@example.com".len() {
                    assert!(
                        !all.contains(&"jane.doe@example.com"[..n]),
                        "{path:?} cut at {cut}: {all}"
                    );
                }
                // The role arrives in the first chunk, as sent.
                assert_eq!(events(&all)[0]["choices"][0]["delta"]["role"], "assistant");
            }
        }
    }

    #[test]
    fn tool_call_identifiers_pass_whole_and_arguments_are_matched_decoded() {
        let set = pack();
        let call = |args: &str, first: bool| {
            let mut c = json!({"index": 1, "function": {"arguments": args}});
            if first {
                c["id"] = json!("call_abc");
                c["type"] = json!("function");
                c["function"]["name"] = json!("send_mail");
            }
            delta_chunk(json!({"tool_calls": [c]}))
        };
        let args = r#"{"to":"jane\u002edoe@example.com","note":"caf\u00e9"}"#;
        for cut in 0..=args.len() {
            let s = [
                call(&args[..cut], true),
                call(&args[cut..], false),
                chunk(json!([{"index": 0, "delta": {}, "logprobs": null, "finish_reason": "tool_calls"}])),
                "data: [DONE]\n\n".to_string(),
            ]
            .concat();
            let (all, _) = through(&set, &s);
            let evs = events(&all);
            let first = &evs[0]["choices"][0]["delta"]["tool_calls"][0];
            assert_eq!(first["id"], "call_abc", "cut at {cut}");
            assert_eq!(first["function"]["name"], "send_mail");
            let sent: String = evs
                .iter()
                .filter_map(|v| {
                    v["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str()
                })
                .collect();
            assert_eq!(
                sent, r#"{"to":"[EMAIL]","note":"caf\u00e9"}"#,
                "cut at {cut}"
            );
        }
        // An AWS key spelled in escapes blocks, whatever the split.
        let args = r#"{"key":"\u0041\u004b\u0049\u0041IOSFODNN7EXAMPLE"}"#;
        for cut in 0..=args.len() {
            let s = [call(&args[..cut], true), call(&args[cut..], false)].concat();
            let (all, _) = through(&set, &s);
            let error = events(&all).into_iter().find(|v| v.get("error").is_some());
            assert_eq!(
                error.expect("blocked")["error"]["code"],
                "policy_blocked",
                "cut at {cut}"
            );
            assert!(!all.contains("IOSFODNN"), "cut at {cut}: {all}");
        }
    }

    #[test]
    fn responses_api_deltas_of_every_type_are_held_back() {
        let set = pack();
        let ev = |v: Value| format!("data: {v}\n\n");
        let summary = |d: &str| json!({"type": "response.reasoning_summary_text.delta", "item_id": "rs_1", "output_index": 0, "summary_index": 0, "delta": d});
        let transcript = |d: &str| json!({"type": "response.audio.transcript.delta", "delta": d});
        let text = "ask jane.doe@example.com now";
        let cut = text.find("doe").expect("cut");
        for make in [summary, transcript] {
            let s = [
                ev(make(&text[..cut])),
                ev(make(&text[cut..])),
                ev(json!({"type": "response.completed", "response": {"status": "completed"}})),
            ]
            .concat();
            let (all, _) = through(&set, &s);
            let deltas: String = events(&all)
                .iter()
                .filter_map(|v| v["delta"].as_str().map(str::to_string))
                .collect();
            assert_eq!(deltas, "ask [EMAIL] now");
            assert!(!all.contains("jane"), "{all}");
            // Released before the event that ends the response.
            assert!(
                all.trim_end().ends_with(r#""type":"response.completed"}"#),
                "{all}"
            );
        }
        let args = r#"{"key":"\u0041KIAIOSFODNN7EXAMPLE"}"#;
        for cut in 0..=args.len() {
            let call = |d: &str| {
                ev(
                    json!({"type": "response.function_call_arguments.delta", "item_id": "fc_1", "output_index": 1, "delta": d}),
                )
            };
            let (all, _) = through(&set, &[call(&args[..cut]), call(&args[cut..])].concat());
            assert!(all.contains("policy_blocked"), "cut at {cut}: {all}");
            assert!(!all.contains("IOSFODNN"), "cut at {cut}: {all}");
        }
    }

    #[test]
    fn an_index_that_is_not_a_whole_number_ends_the_stream() {
        // A text ended (its `.done`, its choice's finish), then a piece of it again under an index a JavaScript
        // client reads as the same (`"1"`, `1.0`): the client joins the two, the filter saw another text.
        let set = pack();
        let ev = |v: Value| format!("data: {v}\n\n");
        let odd_forms: [fn(u64) -> Value; 2] = [|n| json!(n.to_string()), |n| json!(n as f64)];
        for odd in odd_forms {
            let output = |i: Value, d: &str| {
                ev(
                    json!({"type": "response.output_text.delta", "output_index": i, "content_index": 0, "delta": d}),
                )
            };
            let responses = [
                output(json!(0), "key AKIAIOSF"),
                ev(json!({"type": "response.output_text.done", "output_index": 0, "content_index": 0, "text": "key AKIAIOSF"})),
                output(odd(0), "ODNN7EXAMPLE and more. "),
            ]
            .concat();
            let choice = |i: Value, d: &str| {
                chunk(json!([{"index": i, "delta": {"content": d}, "finish_reason": null}]))
            };
            let chat = [
                choice(json!(1), "key AKIAIOSF"),
                chunk(json!([{"index": 1, "delta": {}, "finish_reason": "stop"}])),
                choice(odd(1), "ODNN7EXAMPLE and more. "),
            ]
            .concat();
            let call = |i: Value, d: &str| {
                delta_chunk(json!({"tool_calls": [{"index": i, "function": {"arguments": d}}]}))
            };
            let tools = [
                call(json!(0), r#"{"k":"AKIAIOSF"#),
                chunk(json!([{"index": 0, "delta": {}, "finish_reason": "tool_calls"}])),
                call(odd(0), r#"ODNN7EXAMPLE"}"#),
            ]
            .concat();
            for s in [responses, chat, tools] {
                let (all, f) = through(&set, &s);
                assert!(!all.contains("ODNN7EXAMPLE"), "{s}\n→ {all}");
                assert!(f.is_ended() && f.blocked_by.is_none(), "{all}");
            }
        }
    }

    #[test]
    fn a_summary_index_splits_only_the_texts_of_a_reasoning_summary() {
        let set = pack();
        let ev = |v: Value| format!("data: {v}\n\n");
        // On an output text it addresses nothing: pieces that differ only in it are one text to a client.
        let text = |n: u64, d: &str| {
            ev(
                json!({"type": "response.output_text.delta", "output_index": 0, "content_index": 0, "summary_index": n, "delta": d}),
            )
        };
        let s = [
            text(0, "key AKIAIOSF"),
            ev(json!({"type": "response.output_text.done", "output_index": 0, "content_index": 0, "summary_index": 0, "text": "key AKIAIOSF"})),
            text(1, "ODNN7EXAMPLE and more. "),
        ]
        .concat();
        let (all, f) = through(&set, &s);
        assert!(!all.contains("ODNN7EXAMPLE"), "{all}");
        assert!(f.is_ended(), "{all}");
        // A reasoning summary's parts are texts of their own: the second starts after the first's end.
        let part = |n: u64, d: &str| {
            ev(
                json!({"type": "response.reasoning_summary_text.delta", "item_id": "rs_1", "output_index": 0, "summary_index": n, "delta": d}),
            )
        };
        let s = [
            part(0, "first part. "),
            ev(json!({"type": "response.reasoning_summary_text.done", "item_id": "rs_1", "output_index": 0, "summary_index": 0, "text": "first part. "})),
            part(1, "second part. "),
            ev(json!({"type": "response.completed", "response": {"status": "completed"}})),
        ]
        .concat();
        let (all, f) = through(&set, &s);
        assert!(!f.is_ended(), "{all}");
        let deltas: String = events(&all)
            .iter()
            .filter_map(|v| v["delta"].as_str().map(str::to_string))
            .collect();
        assert_eq!(deltas, "first part. second part. ");
    }

    #[test]
    fn filter_work_stays_linear_in_the_text_however_the_deltas_split_it() {
        let set = pack();
        let run: String = (0..64 << 10)
            .map(|i| b"0123456789abcdef"[i % 16] as char)
            .collect();
        let text = format!("dump: {run} end, mail jane@example.com.");
        for piece in [text.len(), 1, 7] {
            let deltas: Vec<(u64, &str)> = text
                .as_bytes()
                .chunks(piece)
                .map(|c| (0, std::str::from_utf8(c).expect("ascii")))
                .collect();
            let (all, f) = through(&set, &stream(&deltas));
            assert_eq!(
                joined(&all, &["delta", "content"]),
                text.replace("jane@example.com", "[EMAIL]"),
                "pieces of {piece}"
            );
            assert_eq!(f.text_bytes, text.len() as u64);
            assert!(
                f.work() <= 32 * f.text_bytes,
                "pieces of {piece}: {} work for {} bytes",
                f.work(),
                f.text_bytes
            );
        }
    }

    #[test]
    fn a_text_over_its_inspection_budget_ends_the_stream_uninspectable() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("r.toml"),
            "[[rule]]\nid = \"t.long\"\ndescription = \"d\"\nregex = { pattern = 'a{1000,1200}b' }\naction = \"redact\"\n",
        )
        .expect("write");
        let set = Arc::new(load(dir.path(), &Budget::default()).expect("rules"));
        let run = "a".repeat(8192);
        let (all, f) = through(&set, &stream(&[(0, "ok "), (0, &run), (0, "b")]));
        let error = events(&all).into_iter().find(|v| v.get("error").is_some());
        assert_eq!(
            error.expect("ended")["error"]["code"],
            "upstream_uninspectable",
            "{all}"
        );
        assert!(!all.contains("aaaa") && !all.contains("[DONE]"), "{all}");
        assert_eq!(f.side().decision, Decision::Error);
    }

    #[test]
    fn more_texts_than_the_bound_end_the_stream_uninspectable() {
        let set = pack();
        let fields: Map<String, Value> = (0..MAX_TEXTS + 1)
            .map(|i| (format!("f{i}"), json!("word")))
            .collect();
        let (all, f) = through(&set, &delta_chunk(Value::Object(fields)));
        assert!(all.contains("upstream_uninspectable"), "{all}");
        assert!(f.is_ended());
    }
}
