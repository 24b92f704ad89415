//! Filtering a streamed answer (SSE), event by event, with the exact hold-back of `holdback`:
//!
//! - every text piece of a chat or completions chunk — `delta.content`, `delta.refusal`, each tool call's
//!   `function.arguments`, completions' `text` — goes through its own [`HeldText`] (per choice index, per
//!   tool-call index), so choices and parallel tool calls are filtered independently;
//! - an event whose pieces all leave unchanged is passed on byte for byte, unrepacked; one whose pieces were
//!   held or redacted is re-serialised in the upstream's own framing, and its `logprobs` are dropped (they
//!   would carry the held or redacted text again as tokens and bytes);
//! - held text is released, after a final inspection, before the chunk that finishes its choice, at `[DONE]`
//!   and at the end of the stream — never raw;
//! - an enforced block ends the stream: nothing after the blocked text is released, and [`StreamFilter::ending`]
//!   says why, for the driver (`proxy/stream.rs`) to end the client's stream with the error event the one
//!   renderer makes (`openai::error`; the SDKs raise it as `APIError`) and to cut the upstream;
//! - `usage` (from `stream_options.include_usage`) passes through and is kept for accounting.
//!
//! Events this filter cannot read as JSON are scanned whole: a match blocks the stream (fail closed).

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use serde_json::{json, Value};

use super::holdback::{HeldText, Release};
use super::{judge, Decision, RuleHit, Side};
use crate::openai::sse::{Event, SseParser};
use crate::openai::Rejection;
use crate::rules::{Action, Direction, Mode, RuleSet};

/// Largest SSE event accepted from the upstream.
pub const MAX_EVENT: usize = 4 << 20;

/// Which growing text a piece belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum TextKey {
    Content(u64),
    Refusal(u64),
    Tool(u64, u64),
    Text(u64),
    /// Responses API: `(output_index, content_index)` of an `*.delta` event.
    Output(u64, u64),
}

impl TextKey {
    fn choice(self) -> Option<u64> {
        match self {
            TextKey::Content(c) | TextKey::Refusal(c) | TextKey::Tool(c, _) | TextKey::Text(c) => {
                Some(c)
            }
            TextKey::Output(..) => None,
        }
    }
}

/// The `(output_index, content_index)` of a Responses API event.
fn output_key(v: &Value) -> TextKey {
    let n = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
    TextKey::Output(n("output_index"), n("content_index"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    /// Ended by a block or a failure: nothing more leaves.
    Ended,
    Done,
}

/// The filter of one streamed response.
pub struct StreamFilter {
    rules: Arc<RuleSet>,
    monitor: bool,
    max_hold: usize,
    parser: SseParser,
    texts: BTreeMap<TextKey, HeldText>,
    /// The last chunk's envelope (id, object, model, …), to carry released text in chunks of our own.
    envelope: Option<Value>,
    /// Responses API: the last `*.delta` event of each output, to carry released text.
    output_envelopes: BTreeMap<TextKey, Value>,
    eol: &'static str,
    state: State,
    /// Why the stream was ended (a block or a failure), until the driver takes it.
    ending: Option<Rejection>,
    /// The stream could not be inspected (its ending is a failure, not a block).
    failed: bool,
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
            .field(
                "held",
                &self.texts.values().map(HeldText::held).sum::<usize>(),
            )
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
            envelope: None,
            output_envelopes: BTreeMap::new(),
            eol: "\n",
            state: State::Open,
            ending: None,
            failed: false,
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
            Ok(Some(ev)) => self.on_event(ev, &mut out),
            Ok(None) => {}
            Err(e) => self.fail(&e.to_string()),
        }
        if self.state == State::Open {
            let keys: Vec<TextKey> = self.texts.keys().copied().collect();
            self.flush(&keys, &mut out);
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
        if ev.is_keepalive() {
            out.extend_from_slice(&ev.raw);
            return;
        }
        if ev.is_done() {
            let keys: Vec<TextKey> = self.texts.keys().copied().collect();
            self.flush(&keys, out);
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
            if kind.ends_with(".delta") && v.get("delta").is_some_and(Value::is_string) {
                self.on_output_delta(v, &ev.raw, out);
                return;
            }
            if kind.ends_with(".done") {
                // That output's text is complete: release what it holds before the event that closes it.
                let key = output_key(&v);
                if self.texts.contains_key(&key) {
                    self.flush(&[key], out);
                    if self.state != State::Open {
                        return;
                    }
                }
            }
        }
        if v.get("choices").is_some_and(Value::is_array) {
            self.on_chunk(v, &ev.raw, out);
        } else {
            // Not a chat or completions chunk (an error, a Responses API event): every string of it is
            // inspected as final text, redacted in place or blocking the stream.
            self.walk_whole(data, &ev.raw, out);
        }
    }

    /// A chat or completions chunk: each text piece of each choice through its hold-back.
    fn on_chunk(&mut self, mut v: Value, raw: &Bytes, out: &mut BytesMut) {
        let finishing = self.finishing(&v);
        let mut envelope = v.clone();
        envelope["choices"] = json!([]);
        envelope.as_object_mut().map(|o| o.remove("usage"));
        self.envelope = Some(envelope);
        // Held text of a choice that finishes now is released before this chunk.
        if !finishing.is_empty() {
            self.flush(&finishing, out);
            if self.state != State::Open {
                return;
            }
        }
        let Some(choices) = v.get_mut("choices").and_then(Value::as_array_mut) else {
            return;
        };
        let mut changed = false;
        for choice in choices.iter_mut() {
            let mut choice_changed = false;
            for (key, val) in pieces(choice) {
                let piece = val.as_str().unwrap_or("").to_string();
                let Some(text) = self.release(key, &piece) else {
                    return;
                };
                if text != piece {
                    *val = Value::String(text);
                    choice_changed = true;
                }
            }
            if choice_changed {
                if let Some(lp) = choice.get_mut("logprobs") {
                    *lp = Value::Null;
                }
                changed = true;
            }
        }
        self.held_sum += self.held();
        if changed {
            out.extend_from_slice(format!("data: {v}{e}{e}", e = self.eol).as_bytes());
        } else {
            out.extend_from_slice(raw);
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
                    .copied()
                    .filter(move |k| k.choice() == Some(i))
            })
            .collect()
    }

    /// One piece of a growing text through its hold-back: the text to send now (possibly empty or
    /// redacted), or `None` when an enforced block matched (the stream is then ended).
    fn release(&mut self, key: TextKey, piece: &str) -> Option<String> {
        self.text_bytes += piece.len() as u64;
        let held = self.texts.entry(key).or_default();
        match held.push(piece, &self.rules, self.monitor, self.max_hold) {
            Release::Block { rule } => {
                self.end_blocked(rule);
                None
            }
            Release::Text { text, rules } => {
                for r in rules {
                    *self.hits.entry(r).or_default() += 1;
                }
                Some(text)
            }
        }
    }

    /// Bytes held back across every text now.
    fn held(&self) -> u64 {
        self.texts.values().map(|h| h.held() as u64).sum()
    }

    /// Releases the held text of `keys` (their texts are over), each in a chunk of our own.
    fn flush(&mut self, keys: &[TextKey], out: &mut BytesMut) {
        for key in keys {
            let Some(mut held) = self.texts.remove(key) else {
                continue;
            };
            match held.finish(&self.rules, self.monitor) {
                Release::Block { rule } => {
                    self.end_blocked(rule);
                    return;
                }
                Release::Text { text, rules } => {
                    for r in rules {
                        *self.hits.entry(r).or_default() += 1;
                    }
                    if !text.is_empty() {
                        let ev = self.carrier(*key, text);
                        out.extend_from_slice(format!("data: {ev}{e}{e}", e = self.eol).as_bytes());
                    }
                }
            }
        }
    }

    /// An event of our own carrying released `text` of `key`, in the shape the upstream's own events had.
    fn carrier(&self, key: TextKey, text: String) -> Value {
        let choice = match key {
            TextKey::Content(i) => {
                json!({"index": i, "delta": {"content": text}, "logprobs": null, "finish_reason": null})
            }
            TextKey::Refusal(i) => {
                json!({"index": i, "delta": {"refusal": text}, "logprobs": null, "finish_reason": null})
            }
            TextKey::Tool(i, t) => {
                json!({"index": i, "delta": {"tool_calls": [{"index": t, "function": {"arguments": text}}]}, "logprobs": null, "finish_reason": null})
            }
            TextKey::Text(i) => {
                json!({"index": i, "text": text, "logprobs": null, "finish_reason": null})
            }
            TextKey::Output(..) => {
                let mut ev = self
                    .output_envelopes
                    .get(&key)
                    .cloned()
                    .unwrap_or_else(|| json!({}));
                ev["delta"] = Value::String(text);
                ev.as_object_mut().map(|o| o.remove("logprobs"));
                return ev;
            }
        };
        let mut ev = self.envelope.clone().unwrap_or_else(|| json!({}));
        ev["choices"] = json!([choice]);
        ev
    }

    /// A Responses API `*.delta` event: its `delta` goes through the hold-back of its output.
    fn on_output_delta(&mut self, mut v: Value, raw: &Bytes, out: &mut BytesMut) {
        let key = output_key(&v);
        let piece = v
            .get("delta")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        self.output_envelopes.insert(key, v.clone());
        let Some(text) = self.release(key, &piece) else {
            return;
        };
        self.held_sum += self.held();
        if text == piece {
            out.extend_from_slice(raw);
        } else {
            v["delta"] = Value::String(text);
            v.as_object_mut().map(|o| o.remove("logprobs"));
            out.extend_from_slice(format!("data: {v}{e}{e}", e = self.eol).as_bytes());
        }
    }

    /// A JSON event without pieces to hold: inspected whole as final text (every string, keys too).
    fn walk_whole(&mut self, data: &str, raw: &Bytes, out: &mut BytesMut) {
        let opts = super::InspectOptions {
            max_depth: 128,
            opaque: super::OpaquePolicy::Pass,
            monitor: self.monitor,
        };
        let Ok(verdict) =
            super::inspect_json(&self.rules, data.as_bytes(), &opts, Direction::Response)
        else {
            self.scan_whole(data, raw, out);
            return;
        };
        for h in &verdict.hits {
            *self.hits.entry(h.rule).or_default() += h.count;
        }
        match (verdict.blocked_by, &verdict.rewritten) {
            (Some(rule), _) => self.end_blocked(rule),
            (None, Some(body)) => {
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(body);
                out.extend_from_slice(format!("{e}{e}", e = self.eol).as_bytes());
            }
            (None, None) => out.extend_from_slice(raw),
        }
    }

    /// An event without text pieces we know: every match in it counts; a block (or any match that would
    /// need a rewrite we cannot do safely) ends the stream.
    fn scan_whole(&mut self, data: &str, raw: &Bytes, out: &mut BytesMut) {
        let matches = self.rules.scan(data, Direction::Response);
        let enforced = matches.iter().map(|m| m.rule).find(|&r| {
            let rule = self.rules.rule(r);
            rule.mode == Mode::Enforce && !self.monitor && rule.action != Action::Log
        });
        for m in &matches {
            *self.hits.entry(m.rule).or_default() += 1;
        }
        match enforced {
            Some(rule) => self.end_blocked(rule),
            None => out.extend_from_slice(raw),
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
        self.texts.clear();
    }

    fn fail(&mut self, why: &str) {
        tracing::error!("response stream could not be inspected ({why}); ending it");
        self.ending = Some(Rejection::StreamUninspectable(why.to_string()));
        self.failed = true;
        self.state = State::Ended;
        self.texts.clear();
    }
}

/// The text pieces of one choice of a chunk, each with the growing text it belongs to: completions' `text`,
/// `delta.content`, `delta.refusal`, and each tool call's `function.arguments`.
fn pieces(choice: &mut Value) -> Vec<(TextKey, &mut Value)> {
    let index = choice.get("index").and_then(Value::as_u64).unwrap_or(0);
    let mut out: Vec<(TextKey, &mut Value)> = Vec::new();
    let Some(obj) = choice.as_object_mut() else {
        return out;
    };
    let mut delta = None;
    for (k, val) in obj.iter_mut() {
        match k.as_str() {
            "delta" => delta = Some(val),
            "text" if val.is_string() => out.push((TextKey::Text(index), val)),
            _ => {}
        }
    }
    let Some(d) = delta.and_then(Value::as_object_mut) else {
        return out;
    };
    for (k, val) in d.iter_mut() {
        match k.as_str() {
            "content" if val.is_string() => out.push((TextKey::Content(index), val)),
            "refusal" if val.is_string() => out.push((TextKey::Refusal(index), val)),
            "tool_calls" => {
                for call in val.as_array_mut().into_iter().flatten() {
                    let t = call.get("index").and_then(Value::as_u64).unwrap_or(0);
                    if let Some(args) = call
                        .get_mut("function")
                        .and_then(|f| f.get_mut("arguments"))
                        .filter(|a| a.is_string())
                    {
                        out.push((TextKey::Tool(index, t), args));
                    }
                }
            }
            _ => {}
        }
    }
    out
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
}
