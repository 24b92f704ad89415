//! Property checks behind the fuzz targets (`tests/fuzz/`) and their corpus replay (`tests/it/fuzz_corpus.rs`):
//! one function per target, each taking arbitrary bytes and panicking when a property of the library does not
//! hold. The fuzzer and the replay call the same function, so a corpus file means the same thing in both.
//!
//! Not part of the product: nothing in the gateway calls this module. It reads the shipped rules (this crate's
//! `rules/`) once per process, and [`rule_files`] writes into a scratch directory of its own, removed after
//! each call; it touches no other file. It calls only the library's public API:
//!
//! - [`sse_stream`]: `inspect::stream::StreamFilter::{new, push, finish, is_ended, ending, eol}`,
//!   `openai::Rejection::render` + `openai::ErrorResponse::sse_event` (the driver's ending event),
//!   `openai::sse::SseParser::{new, push, finish}` (to read the output back), `rules::RuleSet::scan`;
//! - [`realtime_events`]: `inspect::realtime::ServerFilter::{new, on_event, close}` and
//!   `inspect::realtime::judge_client_event`, `openai::json::parse`, `rules::RuleSet::scan`;
//! - [`json_redaction`]: `inspect::inspect_json`, `openai::json::parse`, `rules::RuleSet::scan`;
//! - [`rule_files`]: `rules::load`, `rules::load_dir`, `rules::RuleSet::{scan, hold_from, rules}`;
//! - [`normalize_spans`]: `rules::View::{new, text, to_original}`, `rules::RuleSet::scan`.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::inspect::holdback::MAX_HELD;
use crate::inspect::realtime::{judge_client_event, ClientAction, ServerFilter, ServerOut};
use crate::inspect::stream::StreamFilter;
use crate::inspect::{inspect_json, Decision, InspectOptions, OpaquePolicy};
use crate::openai::json::{self, Node, Str};
use crate::openai::sse::{ends_with_blank_line, Event, SseParser};
use crate::rules::{
    self, Action, Budget, Direction, Growing, Match, Mode, PrefixCache, RuleSet, View,
};

/// The JSON nesting bound the harness inspects with (the `inspect.max_json_depth` default).
const MAX_DEPTH: usize = 64;

/// The shipped rules (`rules/`), compiled once per process.
pub fn shipped_rules() -> Arc<RuleSet> {
    static SET: OnceLock<Arc<RuleSet>> = OnceLock::new();
    SET.get_or_init(|| {
        let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/rules"));
        match rules::load(dir, &Budget::default()) {
            Ok(set) => Arc::new(set),
            Err(errors) => panic!("the shipped rules do not load: {errors:?}"),
        }
    })
    .clone()
}

/// The ids of the enforced rules with one of `actions` that match `text`, with where they match.
fn enforced(set: &RuleSet, text: &str, actions: &[Action]) -> Vec<(String, Range<usize>)> {
    set.scan(text, Direction::Response)
        .into_iter()
        .filter(|m| {
            let r = set.rule(m.rule);
            r.mode == Mode::Enforce && actions.contains(&r.action)
        })
        .map(|m| (set.rule(m.rule).id.clone(), m.range()))
        .collect()
}

/// Matches as `scan` promises them: in range, on character boundaries, sorted, not overlapping.
fn check_matches(set: &RuleSet, text: &str, matches: &[Match], what: &str) {
    let mut last = 0;
    for m in matches {
        assert!(
            m.rule < set.table().len()
                && last <= m.start
                && m.start < m.end
                && m.end <= text.len()
                && text.is_char_boundary(m.start)
                && text.is_char_boundary(m.end),
            "{what}: match {m:?} is empty, out of order, overlapping or off a character boundary \
             (text of {} bytes)",
            text.len()
        );
        last = m.end;
    }
}

// ---- sse_stream ---------------------------------------------------------------------------------------------

/// How much output one upstream byte may turn into: far above what re-serialised events, replacements and
/// the events carrying released text need (each a few times the bytes it comes from).
const MAX_GROWTH: usize = 16;
/// Output allowed on top of that: the error event that ends a cut stream.
const GROWTH_SLACK: usize = 4096;

/// Splits fuzz input into upstream reads: the first byte says how many read lengths follow, those bytes are
/// the lengths (used in turn, over and over; 0 is an empty read), the rest is the upstream's bytes. No
/// lengths (or only zeros) means the stream arrives in one read. Returns the reads and the whole stream.
fn split_reads(data: &[u8]) -> (Vec<&[u8]>, &[u8]) {
    let n = data.first().map_or(0, |&n| usize::from(n));
    let rest = data.get(1..).unwrap_or_default();
    let (lens, stream) = rest.split_at(n.min(rest.len()));
    let mut reads: Vec<&[u8]> = Vec::new();
    if lens.iter().all(|&l| l == 0) {
        reads.extend(lens.iter().map(|_| &[][..]));
        reads.push(stream);
        return (reads, stream);
    }
    let mut left = stream;
    for &len in lens.iter().cycle() {
        if left.is_empty() {
            break;
        }
        let (read, more) = left.split_at(usize::from(len).min(left.len()));
        reads.push(read);
        left = more;
    }
    (reads, stream)
}

/// `sse_stream`: upstream bytes, split into reads as [`split_reads`] says, through a [`StreamFilter`] with the
/// shipped rules, driven as `proxy/stream.rs` drives it. Never panics; the output is bounded by the input; it
/// is well-framed SSE; and no value an enforced block rule matches reaches the client, whether in an event's
/// comments and other fields, in the data of an event that is not JSON, in any decoded JSON string, or in the text a client reassembles from the deltas
/// (nor a value a redact rule matches, in that reassembled text). A delta is judged in its text: a match that
/// reaches its edge may be none there (a whole-word term glued to the delta before it).
pub fn sse_stream(data: &[u8]) {
    let set = shipped_rules();
    let (reads, stream) = split_reads(data);
    let mut filter = StreamFilter::new(set.clone(), false, MAX_HELD);
    let mut out = Vec::new();
    for read in reads {
        out.extend_from_slice(&filter.push(read));
        take_ending(&mut filter, &mut out);
        if filter.is_ended() {
            break;
        }
    }
    if !filter.is_ended() {
        out.extend_from_slice(&filter.finish());
        take_ending(&mut filter, &mut out);
    }
    check_stream_output(&set, stream, &out);
}

/// The error event the driver appends when the filter ends the stream.
fn take_ending(filter: &mut StreamFilter, out: &mut Vec<u8>) {
    if let Some(ending) = filter.ending() {
        out.extend_from_slice(&ending.render().sse_event(filter.eol()));
    }
}

/// The properties of a filtered stream: `out` is what the client received for upstream bytes `stream`.
fn check_stream_output(set: &RuleSet, stream: &[u8], out: &[u8]) {
    assert!(
        out.len() <= MAX_GROWTH * stream.len() + GROWTH_SLACK,
        "unbounded output: {} bytes out for {} bytes in",
        out.len(),
        stream.len()
    );
    if std::str::from_utf8(out).is_err() {
        panic!("the output is not UTF-8");
    }

    let events = read_back(stream, out);
    let mut texts: BTreeMap<String, String> = BTreeMap::new();
    for ev in &events {
        // Comments and other fields carry bytes too.
        let raw = String::from_utf8_lossy(&ev.raw);
        let fields: String = raw
            .lines()
            .filter(|l| !l.starts_with("data:"))
            .collect::<Vec<_>>()
            .join("\n");
        let leaks = enforced(set, &fields, &[Action::Block]);
        assert!(
            leaks.is_empty(),
            "blocked values in event fields: {leaks:?}"
        );
        let data = ev.data.as_deref().unwrap_or("");
        match serde_json::from_str::<Value>(data) {
            Ok(v) => {
                let mut pieces = Vec::new();
                reassemble(&v, &mut texts, &mut pieces);
                let mut strings = Vec::new();
                strings_of(&v, &mut strings);
                for s in strings {
                    // A piece of a text is judged in its text (below): a match that reaches its edge may be
                    // no match there (a whole-word term glued to the piece before it). Inside, it is one.
                    let piece = pieces.iter().any(|p| p == s);
                    let leaks: Vec<_> = enforced(set, s, &[Action::Block])
                        .into_iter()
                        .filter(|(_, r)| !piece || (r.start > 0 && r.end < s.len()))
                        .collect();
                    assert!(
                        leaks.is_empty(),
                        "blocked values in a JSON string: {leaks:?}"
                    );
                }
            }
            Err(_) => {
                let leaks = enforced(set, data, &[Action::Block]);
                assert!(leaks.is_empty(), "blocked values in event data: {leaks:?}");
            }
        }
    }
    // A text longer than the hold cap is released in part by design (`inspect.max_stream_hold_bytes`): only a
    // stream too short to have one is held to the reassembled-text property.
    if stream.len() <= MAX_HELD {
        for (key, t) in &texts {
            let leaks = enforced(set, t, &[Action::Block, Action::Redact]);
            assert!(
                leaks.is_empty(),
                "values the rules block or redact in the reassembled text of {key}: {leaks:?}"
            );
        }
    }
}

/// Reads the output back as a client would, checking its framing: every event is one the upstream sent, byte
/// for byte (its last one with the blank line it lacked), or one whose data is JSON (what the filter and the
/// driver write); only the upstream's own unterminated last event may end the output unterminated.
fn read_back(stream: &[u8], out: &[u8]) -> Vec<Event> {
    let mut parser = SseParser::new(usize::MAX);
    let mut events = match parser.push(out) {
        Ok(events) => events,
        Err(e) => panic!("the output does not read back as SSE: {e}"),
    };
    match parser.finish() {
        Ok(Some(last)) => {
            // A lone CR at the very end is a line end (the reader cannot tell it from the first half of a
            // CRLF only because nothing follows it): such an event may be terminated.
            assert!(
                ends_with_blank_line(&last.raw) || stream.ends_with(&last.raw),
                "the output ends in an unterminated event the upstream did not end with"
            );
            events.push(last);
        }
        Ok(None) => {}
        Err(e) => panic!("the output does not read back as SSE: {e}"),
    }
    let unterminated = |b: &[u8]| b.trim_ascii_end().len();
    let stream_end = &stream[..unterminated(stream)];
    for ev in &events {
        // The upstream's last event, cut short by the end of the stream, is written with the blank line it
        // lacked.
        let last = stream_end.ends_with(&ev.raw[..unterminated(&ev.raw)]);
        let verbatim = last || memchr::memmem::find(stream, &ev.raw).is_some();
        let json = ev
            .data
            .as_deref()
            .is_some_and(|d| serde_json::from_str::<serde::de::IgnoredAny>(d).is_ok());
        assert!(
            verbatim || json,
            "an output event is neither the upstream's nor JSON (merged or broken framing): {:?}",
            String::from_utf8_lossy(&ev.raw)
        );
    }
    events
}

/// Every string of a JSON value, object keys included.
fn strings_of<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::String(s) => out.push(s),
        Value::Array(items) => items.iter().for_each(|i| strings_of(i, out)),
        Value::Object(entries) => {
            for (k, v) in entries {
                out.push(k);
                strings_of(v, out);
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// Appends an event's text deltas to the texts a client reassembles: per choice (by `index`) its `text`,
/// `delta.content`, `delta.refusal` and each tool call's (by `index`) `function.arguments`; per Responses API
/// `*.delta` event type, `output_index` and `content_index` its `delta`.
///
/// Indexes are told apart as a JavaScript client tells them apart (property keys: `0`, `0.0` and `"0"` are
/// one; a missing index, `null` and `-1` are others). Telling apart what a client joins could see a value in
/// text no client assembles; joining only what it joins keeps the texts a client shows.
fn reassemble(v: &Value, texts: &mut BTreeMap<String, String>, pieces: &mut Vec<String>) {
    let written = js_key;
    let mut add = |key: String, piece: Option<&str>| {
        if let Some(p) = piece {
            texts.entry(key).or_default().push_str(p);
            pieces.push(p.to_string());
        }
    };
    if let (Some(kind), Some(delta)) = (v.get("type").and_then(Value::as_str), v.get("delta")) {
        if kind.ends_with(".delta") {
            let (o, c) = (written(v, "output_index"), written(v, "content_index"));
            add(format!("{kind} output {o} content {c}"), delta.as_str());
        }
    }
    for choice in v
        .get("choices")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let i = written(choice, "index");
        add(
            format!("choice {i} text"),
            choice.get("text").and_then(Value::as_str),
        );
        let delta = choice.get("delta");
        for field in ["content", "refusal"] {
            add(
                format!("choice {i} {field}"),
                delta.and_then(|d| d.get(field)).and_then(Value::as_str),
            );
        }
        let calls = delta
            .and_then(|d| d.get("tool_calls"))
            .and_then(Value::as_array);
        for call in calls.into_iter().flatten() {
            add(
                format!("choice {i} tool call {} arguments", written(call, "index")),
                call.get("function")
                    .and_then(|f| f.get("arguments"))
                    .and_then(Value::as_str),
            );
        }
    }
}

/// Field `key` of `v` as a JavaScript client writes it as a property key: `0`, `0.0`, `-0` and `"0"` are one;
/// a missing field is `undefined`, `null` is `null`.
fn js_key(v: &Value, key: &str) -> String {
    match v.get(key) {
        None => "undefined".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => match n.as_f64() {
            // Integers as JavaScript writes them (`-0` and `1.0` included); other numbers by value.
            Some(f) if f.fract() == 0.0 && f.abs() < 1e21 => format!("{}", f as i128),
            Some(f) => format!("{f}"),
            None => n.to_string(),
        },
        Some(other) => other.to_string(),
    }
}

// ---- realtime_events ----------------------------------------------------------------------------------------

/// A first byte at or above this makes a `realtime_events` input raw lines; below, a planted text.
const RAW_MODE: u8 = 0xC0;

/// Server events whose `delta` is audio (base64): a client decodes it as sound, never shows it as text.
const AUDIO_DELTAS: &[&str] = &["response.output_audio.delta", "response.audio.delta"];

/// A realtime session to replay: the upstream's events in order, and client events to judge.
#[derive(Debug, Default)]
struct RtSession {
    server: Vec<String>,
    client: Vec<String>,
}

/// Decodes a `realtime_events` input (see the README's table):
///
/// - first byte `>= 0xC0`: the rest, split at `\n`, is the session's events verbatim (lossy UTF-8): each
///   line an upstream event, and each line also a client event to judge;
/// - otherwise a planted text ([`planted_session`]): the first byte says what the events look like, the
///   second how many cut bytes follow, the cut bytes how the text is cut into deltas and where each goes, and
///   the rest is the text.
fn realtime_session(data: &[u8]) -> RtSession {
    match data.split_first() {
        None => RtSession::default(),
        Some((&mode, rest)) if mode >= RAW_MODE => {
            let lines: Vec<String> = rest
                .split(|&b| b == b'\n')
                .map(|l| String::from_utf8_lossy(l).into_owned())
                .collect();
            RtSession {
                client: lines.clone(),
                server: lines,
            }
        }
        Some((&shape, rest)) => planted_session(shape, rest),
    }
}

/// One kind of growing text a planted session streams: its delta event, the event that ends it and that
/// event's field holding the whole text, whether its events name a response, and whether a second part of
/// it is a second content part (`content_index`) or a second output (`output_index`).
struct Family {
    delta: &'static str,
    done: &'static str,
    field: &'static str,
    response: bool,
    content: bool,
}

const FAMILIES: [Family; 4] = [
    Family {
        delta: "response.output_text.delta",
        done: "response.output_text.done",
        field: "text",
        response: true,
        content: true,
    },
    Family {
        delta: "response.output_audio_transcript.delta",
        done: "response.output_audio_transcript.done",
        field: "transcript",
        response: true,
        content: true,
    },
    Family {
        delta: "response.function_call_arguments.delta",
        done: "response.function_call_arguments.done",
        field: "arguments",
        response: true,
        content: false,
    },
    Family {
        delta: "conversation.item.input_audio_transcription.delta",
        done: "conversation.item.input_audio_transcription.completed",
        field: "transcript",
        response: false,
        content: true,
    },
];

/// Where a planted text goes: response (and item) 1 or 2, part 0 or 1.
type Lane = (u8, u64);

/// Builds the events of a planted session. `shape`: bits 0–1 the [`FAMILIES`] entry; bit 2 the opening
/// events (`response.created`, `response.output_item.added`, `response.content_part.added`); bit 3 the
/// closing events of every text (its `.done` with the whole text, then the part's, the item's and
/// `conversation.item.done`); bit 4 `response.done` of every response (else the session closes with them
/// open); bit 5 how lane 3 writes its indices (`"0"` or `0.0`). `rest`: a count byte, that many cut bytes
/// (used in turn, over and over; a zero length only on the first pass), then the text. Each cut byte: the low
/// 5 bits the piece's length in bytes (moved on to a character boundary; 0 is an empty delta), the high 3 bits
/// its lane:
///
/// 0 response 1, part 0 · 1 response 1, part 1 · 2 response 2 · 3 part 0 of response 1 with its indices
/// written another way · 4 part 0 after its `.done` · 5 part 0 after `response.done` of response 1 (or the
/// transcription's `.completed`) · 6 the piece in a field beside an audio delta of response 1 · 7 part 0 in
/// an event with a numeric `event_id`.
///
/// The client events judged: a `conversation.item.create` with the text, a function call output with it,
/// and an `input_audio_buffer.append` with it beside the audio.
fn planted_session(shape: u8, rest: &[u8]) -> RtSession {
    let family = &FAMILIES[usize::from(shape & 3)];
    let n = rest.first().map_or(0, |&n| usize::from(n));
    let rest = rest.get(1..).unwrap_or_default();
    let (cuts, text) = rest.split_at(n.min(rest.len()));
    let text = String::from_utf8_lossy(text).into_owned();
    let mut p = Planter {
        family,
        odd_float: shape & 0x20 != 0,
        events: Vec::new(),
        sent: BTreeMap::new(),
        responses: Vec::new(),
    };
    if shape & 4 != 0 {
        p.open(1);
    }
    // Every cut once (a zero length is an empty delta), then those with a length over and over; without one,
    // the rest of the text in one piece.
    let mut at = 0;
    let next = |at: usize, len: usize| {
        let mut end = (at + len).min(text.len());
        while !text.is_char_boundary(end) {
            end += 1;
        }
        end
    };
    for &c in cuts {
        let end = next(at, usize::from(c & 0x1F));
        p.piece(c >> 5, &text[at..end]);
        at = end;
    }
    if cuts.iter().any(|c| c & 0x1F != 0) {
        for &c in cuts.iter().filter(|c| *c & 0x1F != 0).cycle() {
            if at >= text.len() {
                break;
            }
            let end = next(at, usize::from(c & 0x1F));
            p.piece(c >> 5, &text[at..end]);
            at = end;
        }
    } else if at < text.len() || cuts.is_empty() {
        p.piece(0, &text[at..]);
    }
    if shape & 8 != 0 {
        p.close_texts();
    }
    if shape & 0x10 != 0 {
        for r in p.responses.clone() {
            p.response_done(r);
        }
    }
    let client = vec![
        json!({"type": "conversation.item.create", "item": {"type": "message", "role": "user",
               "content": [{"type": "input_text", "text": text}]}})
        .to_string(),
        json!({"type": "conversation.item.create", "item": {"type": "function_call_output",
               "call_id": "call_1", "output": text}})
        .to_string(),
        json!({"type": "input_audio_buffer.append", "audio": "AAAA", "note": text}).to_string(),
    ];
    RtSession {
        server: p.events,
        client,
    }
}

/// Writes the events of a planted session, remembering what each lane was sent.
struct Planter {
    family: &'static Family,
    odd_float: bool,
    events: Vec<String>,
    /// The text sent so far to each lane (as a client joins it: lane 3 is part 0).
    sent: BTreeMap<Lane, String>,
    /// The responses opened, in order.
    responses: Vec<u8>,
}

impl Planter {
    fn push(&mut self, mut v: Value) {
        v["event_id"] = json!(format!("event_{}", self.events.len() + 1));
        self.events.push(v.to_string());
    }

    fn open(&mut self, r: u8) {
        if self.responses.contains(&r) {
            return;
        }
        self.responses.push(r);
        if !self.family.response {
            return;
        }
        let item = json!({"id": format!("item_{r}"), "type": "message", "role": "assistant",
                          "status": "in_progress", "content": []});
        self.push(
            json!({"type": "response.created", "response": {"id": format!("resp_{r}"),
                         "object": "realtime.response", "status": "in_progress", "output": []}}),
        );
        self.push(
            json!({"type": "response.output_item.added", "response_id": format!("resp_{r}"),
                         "output_index": 0, "item": item}),
        );
        self.push(
            json!({"type": "response.content_part.added", "response_id": format!("resp_{r}"),
                         "item_id": format!("item_{r}"), "output_index": 0, "content_index": 0,
                         "part": {"type": "text", "text": ""}}),
        );
    }

    /// The fields naming where a text of `lane` belongs; `odd`: indices written as strings or floats.
    fn address(&self, (r, part): Lane, odd: bool) -> Map<String, Value> {
        let index = |i: u64| match (odd, self.odd_float) {
            (false, _) => json!(i),
            (true, false) => json!(i.to_string()),
            (true, true) => json!(i as f64),
        };
        let mut m = Map::new();
        if self.family.response {
            m.insert("response_id".into(), json!(format!("resp_{r}")));
        }
        m.insert("item_id".into(), json!(format!("item_{r}")));
        match (self.family.response, self.family.content) {
            (true, true) => {
                m.insert("output_index".into(), index(0));
                m.insert("content_index".into(), index(part));
            }
            (true, false) => {
                m.insert("output_index".into(), index(part));
                m.insert("call_id".into(), json!(format!("call_{r}_{part}")));
            }
            (false, _) => {
                m.insert("content_index".into(), index(part));
            }
        }
        m
    }

    fn piece(&mut self, lane: u8, piece: &str) {
        let target: Lane = match lane {
            1 => (1, 1),
            2 => (2, 0),
            _ => (1, 0),
        };
        self.open(target.0);
        match lane {
            4 => self.text_done(target),
            5 if self.family.response => self.response_done(target.0),
            5 => self.text_done(target),
            _ => {}
        }
        let mut m = self.address(target, lane == 3);
        if lane == 6 {
            m.insert("type".into(), json!("response.output_audio.delta"));
            m.insert("delta".into(), json!("AAAA"));
            m.insert("transcript".into(), json!(piece));
            self.push(Value::Object(m));
            return;
        }
        m.insert("type".into(), json!(self.family.delta));
        m.insert("delta".into(), json!(piece));
        let mut v = Value::Object(m);
        v["event_id"] = json!(0);
        if lane == 7 {
            // A numeric `event_id` (the upstream's, kept as it came).
            self.events.push(v.to_string());
        } else {
            self.push(v);
        }
        self.sent.entry(target).or_default().push_str(piece);
    }

    /// The event ending the text of `lane`, with the whole text sent so far.
    fn text_done(&mut self, lane: Lane) {
        let whole = self.sent.get(&lane).cloned().unwrap_or_default();
        let mut m = self.address(lane, false);
        m.insert("type".into(), json!(self.family.done));
        m.insert(self.family.field.into(), json!(whole));
        self.push(Value::Object(m));
    }

    /// The closing events of every text, then of each item.
    fn close_texts(&mut self) {
        let lanes: Vec<Lane> = self.sent.keys().copied().collect();
        for lane in lanes {
            self.text_done(lane);
        }
        if !self.family.response {
            return;
        }
        for r in self.responses.clone() {
            let whole = self.sent.get(&(r, 0)).cloned().unwrap_or_default();
            let item = json!({"id": format!("item_{r}"), "type": "message", "role": "assistant",
                              "status": "completed", "content": [{"type": "text", "text": whole}]});
            let mut part = self.address((r, 0), false);
            part.insert("type".into(), json!("response.content_part.done"));
            part.insert("part".into(), json!({"type": "text", "text": whole}));
            self.push(Value::Object(part));
            self.push(
                json!({"type": "response.output_item.done", "response_id": format!("resp_{r}"),
                             "output_index": 0, "item": item}),
            );
            self.push(json!({"type": "conversation.item.done", "item": item}));
        }
    }

    fn response_done(&mut self, r: u8) {
        if !self.family.response {
            return;
        }
        let output: Vec<Value> = [0, 1]
            .iter()
            .filter_map(|&part| self.sent.get(&(r, part)))
            .map(|t| json!({"type": "message", "content": [{"type": "text", "text": t}]}))
            .collect();
        self.push(
            json!({"type": "response.done", "response": {"id": format!("resp_{r}"),
                         "status": "completed", "output": output,
                         "usage": {"total_tokens": 7, "input_tokens": 3, "output_tokens": 4}}}),
        );
    }
}

/// `realtime_events`: a session decoded as [`realtime_session`] says, its upstream events through a
/// [`ServerFilter`] with the shipped rules and the default hold cap, as `proxy/realtime.rs` drives it, then
/// `close()`; and its client events through [`judge_client_event`]. See [`check_realtime_output`] and
/// [`check_client_event`] for the properties.
pub fn realtime_events(data: &[u8]) {
    let set = shipped_rules();
    let session = realtime_session(data);
    let mut filter = ServerFilter::new(set.clone(), false, MAX_HELD);
    let mut outs = Vec::new();
    for ev in &session.server {
        filter.on_event(ev, &mut outs);
    }
    let during = outs.len();
    filter.close(&mut outs);
    check_realtime_output(&set, &session.server, &outs, during);
    for ev in &session.client {
        check_client_event(&set, ev);
    }
}

/// A realtime text as a client joins its deltas: response, item, output index, content index, event type,
/// and the summary index of a reasoning summary's text (where the protocol addresses parts by it).
type RtKey = (
    Option<String>,
    Option<String>,
    String,
    String,
    String,
    String,
);

/// An id field: absent and `null` are none (a client's `??`), a string is itself, anything else its JSON.
fn id_field(v: Option<&Value>) -> Option<String> {
    match v {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => Some(other.to_string()),
    }
}

/// The response a server event belongs to: a `response.*` event's `response_id`, or its `response.id`.
fn response_of(v: &Value) -> Option<String> {
    let kind = v.get("type").and_then(Value::as_str)?;
    if !kind.starts_with("response.") {
        return None;
    }
    id_field(v.get("response_id")).or_else(|| id_field(v.get("response").and_then(|r| r.get("id"))))
}

/// The properties of one filtered session: `outs` is what the filter asked for while the `events` came (the
/// first `during`) and at `close()` (the rest).
///
/// - every client message is JSON, the whole output (client and upstream messages) is bounded by the input;
/// - no JSON string of any client message (keys too) holds a value an enforced block rule matches (nor a
///   redact rule's, within the hold cap), but the `delta` of an audio delta (sound, never shown as text);
///   a text delta is judged in the text a client joins it to (per response, item, output index, content
///   index and type, indices as a JavaScript client writes them), which holds no value a block or redact
///   rule matches (within the hold cap);
/// - after `Ended` names a response, no client message of it but its emptied `response.done`; after a
///   `Finished` reports it, none at all (a response does not start again);
/// - `close()` sends nothing and reports, unfinished, every response the client heard of (a message or an
///   ending) and was not told the end of (a `Finished`), once each.
fn check_realtime_output(set: &RuleSet, events: &[String], outs: &[ServerOut], during: usize) {
    let in_bytes: usize = events.iter().map(|e| e.len() + 1).sum();
    let mut out_bytes = 0;
    let mut texts: BTreeMap<RtKey, String> = BTreeMap::new();
    let mut ended: std::collections::BTreeSet<String> = Default::default();
    let mut open: std::collections::BTreeSet<String> = Default::default();
    let mut reported: std::collections::BTreeSet<String> = Default::default();
    let mut finished: std::collections::BTreeSet<String> = Default::default();
    for (i, o) in outs.iter().enumerate() {
        let closing = i >= during;
        match o {
            ServerOut::Client(s) => {
                assert!(!closing, "close() sent the client a message: {s}");
                out_bytes += s.len();
                let v: Value = match serde_json::from_str(s) {
                    Ok(v) => v,
                    Err(e) => panic!("a client message is not JSON ({e}): {s:?}"),
                };
                let response = response_of(&v);
                if let Some(r) = &response {
                    assert!(
                        !finished.contains(r),
                        "a message of response {r:?} after it was reported finished: {s}"
                    );
                    if ended.contains(r) {
                        let emptied = v["type"] == "response.done"
                            && v["response"]["status"] == "cancelled"
                            && v["response"]["output"] == json!([]);
                        assert!(
                            emptied,
                            "a message of response {r:?} after its ending (not its emptied `response.done`): {s}"
                        );
                    }
                    open.insert(r.clone());
                }
                check_client_message(set, &v, &mut texts);
            }
            ServerOut::Upstream(s) => {
                out_bytes += s.len();
                let v: Value = match serde_json::from_str(s) {
                    Ok(v) => v,
                    Err(e) => panic!("an upstream message is not JSON ({e}): {s:?}"),
                };
                assert_eq!(v["type"], "response.cancel", "an upstream message: {s}");
            }
            ServerOut::Ended { response, .. } => {
                if let Some(r) = response {
                    ended.insert(r.clone());
                    open.insert(r.clone());
                }
            }
            ServerOut::Finished(summary) => {
                let r = &summary.response_id;
                if closing {
                    assert!(
                        summary.unfinished,
                        "close() reports response {r:?} finished"
                    );
                    assert!(
                        reported.insert(r.clone()),
                        "close() reports response {r:?} twice"
                    );
                }
                open.remove(r);
                finished.insert(r.clone());
            }
        }
    }
    assert!(
        open.is_empty(),
        "close() does not report the open responses {open:?}"
    );
    assert!(
        out_bytes <= MAX_GROWTH * in_bytes + GROWTH_SLACK,
        "unbounded output: {out_bytes} bytes out for {in_bytes} bytes in"
    );
    for (key, t) in &texts {
        if t.len() > MAX_HELD {
            // Released in part by design past the cap (`inspect.max_stream_hold_bytes`).
            continue;
        }
        let leaks = enforced(set, t, &[Action::Block, Action::Redact]);
        assert!(
            leaks.is_empty(),
            "values the rules block or redact in the text a client joins for {key:?}: {leaks:?}"
        );
    }
}

/// One client message: its text delta joined to its text, and every string of it judged (a delta in its
/// text: a match reaching its edge may be none there).
fn check_client_message(set: &RuleSet, v: &Value, texts: &mut BTreeMap<RtKey, String>) {
    let kind = v.get("type").and_then(Value::as_str).unwrap_or("");
    let audio = AUDIO_DELTAS.contains(&kind);
    let mut v = v.clone();
    let mut piece = None;
    if kind.ends_with(".delta") {
        if let Some(Value::String(d)) = v.get("delta") {
            if audio {
                // Sound: a client decodes it, never shows it.
                v.as_object_mut().map(|o| o.remove("delta"));
            } else {
                let key = (
                    id_field(v.get("response_id")),
                    id_field(v.get("item_id")),
                    js_key(&v, "output_index"),
                    js_key(&v, "content_index"),
                    kind.to_string(),
                    if kind.contains("summary") {
                        js_key(&v, "summary_index")
                    } else {
                        String::new()
                    },
                );
                texts.entry(key).or_default().push_str(d);
                piece = Some(d.clone());
            }
        }
    }
    let mut strings = Vec::new();
    strings_of(&v, &mut strings);
    for s in strings {
        let is_piece = piece.as_deref() == Some(s);
        let actions: &[Action] = if s.len() <= MAX_HELD && !is_piece {
            &[Action::Block, Action::Redact]
        } else {
            &[Action::Block]
        };
        let leaks: Vec<_> = enforced(set, s, actions)
            .into_iter()
            .filter(|(_, r)| !is_piece || (r.start > 0 && r.end < s.len()))
            .collect();
        assert!(
            leaks.is_empty(),
            "values the rules block or redact in a string of a client message: {leaks:?} in {v}"
        );
    }
}

/// The properties of judging one client event: a rewrite is valid JSON that judges again to `Forward`; a
/// block only for an event some string of which (or of a JSON document nested in one) an enforced rule
/// matches; what is forwarded (as sent or rewritten) holds no value an enforced block rule matches in any
/// string but the `audio` of an `input_audio_buffer.append`.
fn check_client_event(set: &RuleSet, text: &str) {
    let opts = InspectOptions {
        max_depth: MAX_DEPTH,
        opaque: OpaquePolicy::Pass,
        monitor: false,
    };
    let j = judge_client_event(set, text, &opts);
    match &j.action {
        ClientAction::Rewrite(new) => {
            if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(new) {
                panic!("a rewritten client event is not JSON ({e}): {new:?}");
            }
            let again = judge_client_event(set, new, &opts);
            assert_eq!(
                again.action,
                ClientAction::Forward,
                "a rewritten client event judges again to {:?}: {new:?}",
                again.action
            );
            check_forwarded(set, new);
        }
        ClientAction::Forward => check_forwarded(set, text),
        ClientAction::Block { rule } => {
            let mut strings = Vec::new();
            client_strings(text.as_bytes(), 0, false, &mut strings);
            let matched = strings.iter().any(|s| {
                set.scan(s, Direction::Request).iter().any(|m| {
                    let r = set.rule(m.rule);
                    r.mode == Mode::Enforce && r.action != Action::Log
                })
            });
            assert!(
                matched,
                "a client event is blocked ({}) though no string of it matches: {text:?}",
                set.rule(*rule).id
            );
        }
        ClientAction::Opaque | ClientAction::Invalid(_) => {}
    }
}

/// What a client event forwards carries no value an enforced block rule matches (the audio of an append is
/// sound, never text).
fn check_forwarded(set: &RuleSet, text: &str) {
    let mut strings = Vec::new();
    client_strings(text.as_bytes(), 0, true, &mut strings);
    for s in &strings {
        let leaks = enforced(set, s, &[Action::Block]);
        assert!(
            leaks.is_empty(),
            "a forwarded client event carries values the rules block: {leaks:?} in {text:?}"
        );
    }
}

/// Every string of JSON document `src` (keys too) and of the documents nested in them, as far as the request
/// inspector reads nested documents; `skip_audio`: not the top-level `audio` of an `input_audio_buffer.append`.
fn client_strings(src: &[u8], nested: usize, skip_audio: bool, out: &mut Vec<String>) {
    /// How deep the request inspector reads JSON documents nested in strings.
    const NESTED: usize = 4;
    fn walk(n: &Node, nested: usize, skip: Option<&str>, out: &mut Vec<String>) {
        match n {
            Node::String(s) => {
                out.push(s.value.clone());
                let t = s.value.trim_start();
                if nested < NESTED && (t.starts_with('{') || t.starts_with('[')) {
                    client_strings(s.value.as_bytes(), nested + 1, false, out);
                }
            }
            Node::Array(items) => items.iter().for_each(|i| walk(i, nested, None, out)),
            Node::Object(entries) => {
                for (k, v) in entries {
                    out.push(k.value.clone());
                    if skip != Some(k.value.as_str()) {
                        walk(v, nested, None, out);
                    }
                }
            }
            Node::Null | Node::Bool(_) | Node::Number { .. } => {}
        }
    }
    let Ok(doc) = json::parse(src, MAX_DEPTH) else {
        return;
    };
    let append =
        skip_audio && doc.get("type").and_then(Node::as_str) == Some("input_audio_buffer.append");
    walk(&doc, nested, append.then_some("audio"), out);
}

// ---- json_redaction -----------------------------------------------------------------------------------------

/// `json_redaction`: arbitrary bytes as a request body through [`inspect_json`] with the shipped rules. Never
/// panics; when it rewrites, the rewritten body is valid JSON (keys still unique), differs from the input only
/// inside strings that enforced redact rules match, and inspecting it again finds nothing to redact or block.
pub fn json_redaction(data: &[u8]) {
    let set = shipped_rules();
    let opts = InspectOptions {
        max_depth: MAX_DEPTH,
        opaque: OpaquePolicy::Pass,
        monitor: false,
    };
    let Ok(verdict) = inspect_json(&set, data, &opts, Direction::Request) else {
        return;
    };
    let Some(new) = verdict.rewritten else {
        return;
    };
    if let Err(e) = json::parse(&new, MAX_DEPTH) {
        panic!("the rewritten body is not valid JSON to our reader: {e}");
    }
    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&new) {
        panic!("the rewritten body is not valid JSON to serde_json: {e}");
    }
    let mut spans = Vec::new();
    redactable_spans(&set, data, &mut spans);
    assert!(
        changed_only_within(data, &new, &spans),
        "the rewritten body differs from the original outside the matched spans {spans:?}"
    );
    let again = match inspect_json(&set, &new, &opts, Direction::Request) {
        Ok(v) => v,
        Err(e) => panic!("the rewritten body does not inspect: {e}"),
    };
    let rules: Vec<&str> = again
        .hits
        .iter()
        .map(|h| set.rule(h.rule).id.as_str())
        .collect();
    assert!(
        !matches!(again.decision, Decision::Redact | Decision::Block),
        "inspecting the rewritten body again decides {:?} (rules {rules:?})",
        again.decision
    );
}

/// The raw byte ranges of JSON document `src` that a redaction may change: the contents of every string (keys
/// too) where an enforced redact rule matches its decoded text or, when the string itself parses as a JSON
/// document, the strings inside it — both readings, whichever the walk takes.
fn redactable_spans(set: &RuleSet, src: &[u8], out: &mut Vec<Range<usize>>) {
    fn strings<'a>(n: &'a Node, out: &mut Vec<&'a Str>) {
        match n {
            Node::String(s) => out.push(s),
            Node::Array(items) => items.iter().for_each(|i| strings(i, out)),
            Node::Object(entries) => {
                for (k, v) in entries {
                    out.push(k);
                    strings(v, out);
                }
            }
            Node::Null | Node::Bool(_) | Node::Number { .. } => {}
        }
    }
    let Ok(doc) = json::parse(src, MAX_DEPTH) else {
        return;
    };
    let mut all = Vec::new();
    strings(&doc, &mut all);
    for s in all {
        let raw = raw_offsets(src, s);
        let mut decoded: Vec<Range<usize>> = set
            .scan(&s.value, Direction::Request)
            .into_iter()
            .filter(|m| {
                let r = set.rule(m.rule);
                r.mode == Mode::Enforce && r.action == Action::Redact
            })
            .map(|m| m.range())
            .collect();
        redactable_spans(set, s.value.as_bytes(), &mut decoded);
        // A replacement can expose a value its match hid (a word boundary it creates, a shorter match
        // inside the taken one): the walk then redacts the string again until nothing more matches, so any
        // byte of a string with a match may change — and no byte of any other string, nor of the structure.
        if !decoded.is_empty() {
            out.push(raw[0]..raw[s.value.len()]);
        }
    }
}

/// For each byte offset of a string's decoded value (and its end), the offset in `src` of the raw bytes that
/// encode it: an escape's start for every byte it decodes to, the closing quote for the end.
fn raw_offsets(src: &[u8], s: &Str) -> Vec<usize> {
    let body = s.range.start + 1..s.range.end - 1;
    let raw = &src[body.clone()];
    let mut map = Vec::with_capacity(s.value.len() + 1);
    let mut i = 0;
    while i < raw.len() {
        let (raw_len, decoded_len) = if raw[i] == b'\\' {
            escape_lengths(&raw[i..])
        } else {
            (1, 1)
        };
        map.extend(std::iter::repeat_n(body.start + i, decoded_len));
        i += raw_len;
    }
    map.push(body.end);
    assert_eq!(
        map.len(),
        s.value.len() + 1,
        "harness: the raw form of a string does not decode to its value"
    );
    map
}

/// Raw and decoded lengths of the escape `raw` starts with (the parser has checked it).
fn escape_lengths(raw: &[u8]) -> (usize, usize) {
    let hex = |at: usize| {
        raw.get(at..at + 4)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u32::from_str_radix(h, 16).ok())
    };
    match raw.get(1) {
        Some(b'u') => match hex(2) {
            Some(hi @ 0xD800..=0xDBFF) => match (raw.get(6..8), hex(8)) {
                (Some(b"\\u"), Some(0xDC00..=0xDFFF)) => (12, 4),
                _ => (6, char::from_u32(hi).map_or(3, char::len_utf8)),
            },
            Some(cp) => (6, char::from_u32(cp).map_or(3, char::len_utf8)),
            None => (2, 1),
        },
        _ => (2, 1),
    }
}

/// Whether `new` is `orig` with only bytes inside `spans` changed: the bytes between the spans appear in `new`
/// in order, the first at its start and the last at its end, with anything in the spans' places.
fn changed_only_within(orig: &[u8], new: &[u8], spans: &[Range<usize>]) -> bool {
    let mut spans = spans.to_vec();
    spans.sort_by_key(|r| r.start);
    let mut kept: Vec<&[u8]> = Vec::new();
    let mut last = 0;
    for r in &spans {
        if r.end <= last {
            continue;
        }
        kept.push(&orig[last..r.start.max(last)]);
        last = r.end;
    }
    let Some((&first, middle)) = kept.split_first() else {
        return orig == new;
    };
    let end = &orig[last..];
    if new.len() < first.len() + end.len() || !new.starts_with(first) || !new.ends_with(end) {
        return false;
    }
    let mut at = first.len();
    let stop = new.len() - end.len();
    for k in middle {
        match memchr::memmem::find(&new[at..stop], k) {
            Some(p) => at += p + k.len(),
            None => return false,
        }
    }
    true
}

// ---- rule_files ---------------------------------------------------------------------------------------------

/// The terms file the scratch directory offers to fuzzed rule files (`terms_file = "terms.txt"`).
const TERMS: &str = "# two terms\nProject Bluebird\nACME-CONFIDENTIAL\n";

/// A scratch rules directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "promptgate-harness-rules-{}-{n}",
            std::process::id()
        ));
        let made = std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::write(dir.join("terms.txt"), TERMS));
        if let Err(e) = made {
            panic!("harness: cannot make {}: {e}", dir.display());
        }
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Whether every `terms_file` the text names (anywhere, however spelled) is a plain name inside the scratch
/// directory: the harness must not read the machine's files (`/dev/zero`, `../..`). A text that is not TOML
/// is refused by the loader before any terms file is read.
fn names_only_scratch_files(text: &str) -> bool {
    fn plain(name: &str) -> bool {
        !name.is_empty()
            && name != "."
            && name != ".."
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    }
    fn walk(v: &toml::Value) -> bool {
        match v {
            toml::Value::Table(t) => t
                .iter()
                .all(|(k, v)| (k != "terms_file" || v.as_str().is_none_or(plain)) && walk(v)),
            toml::Value::Array(items) => items.iter().all(walk),
            _ => true,
        }
    }
    match toml::from_str::<toml::Table>(text) {
        Ok(t) => walk(&toml::Value::Table(t)),
        Err(_) => true,
    }
}

/// `rule_files`: arbitrary text (read lossily as UTF-8) as the one rule file of a directory, through
/// [`rules::load`]. Never panics (errors are fine, but there is at least one); a set that compiles scans each
/// rule's own examples in every direction with matches as `scan` promises them, each `match` example matching,
/// and says where a growing text could still match on a character boundary.
pub fn rule_files(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if !names_only_scratch_files(&text) {
        return;
    }
    let dir = Scratch::new();
    if let Err(e) = std::fs::write(dir.0.join("fuzz.toml"), text.as_bytes()) {
        panic!("harness: cannot write the rule file: {e}");
    }
    // Budgets small enough to keep each run short, large enough for any rule file a fuzzer writes.
    let budget = Budget {
        max_terms: 10_000,
        max_regex_bytes: 1 << 20,
        max_compile: Duration::from_secs(10),
    };
    let set = match rules::load(&dir.0, &budget) {
        Ok(set) => set,
        Err(errors) => {
            assert!(!errors.is_empty(), "a refused set names no error");
            return;
        }
    };
    let loaded = match rules::load_dir(&dir.0) {
        Ok(loaded) => loaded,
        Err(errors) => panic!("a set that compiled does not load again: {errors:?}"),
    };
    for rule in &loaded.rules {
        let examples = &rule.spec.examples;
        for (ex, should) in examples
            .should_match
            .iter()
            .map(|e| (e, true))
            .chain(examples.no_match.iter().map(|e| (e, false)))
        {
            for flow in [Direction::Request, Direction::Response, Direction::Both] {
                let found = set.scan(ex, flow);
                check_matches(&set, ex, &found, "an example");
                assert!(
                    !should || flow != Direction::Both || !found.is_empty(),
                    "a `match` example of a compiled set matches nothing"
                );
            }
            let mut growing = Growing::default();
            set.grow(&mut growing, &mut PrefixCache::default(), ex, 0);
            let from = growing.hold_from();
            assert!(
                from <= ex.len() && ex.is_char_boundary(from),
                "hold_from {from} is off a character boundary of an example of {} bytes",
                ex.len()
            );
        }
    }
}

// ---- normalize_spans ----------------------------------------------------------------------------------------

/// `normalize_spans`: arbitrary text (read lossily as UTF-8) through both [`View`]s (normalised and folded):
/// each view byte maps back to an original range on character boundaries, monotonically; the view is the
/// concatenation of each mapped range's own view, and what lies between the mapped ranges (or before the
/// first, after the last) has an empty view — so the ranges cover the original. Matches of the shipped rules
/// are on character boundaries.
pub fn normalize_spans(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    for fold in [false, true] {
        check_view(&text, fold);
    }
    let set = shipped_rules();
    for flow in [Direction::Request, Direction::Response] {
        check_matches(&set, &text, &set.scan(&text, flow), "a scan");
    }
}

fn check_view(original: &str, fold: bool) {
    check_view_of(original, &View::new(original, fold), fold);
}

/// The checks of [`normalize_spans`] on `view`, claimed to be a view of `original`.
fn check_view_of(original: &str, view: &View<'_>, fold: bool) {
    let v = view.text();
    let empty_view = |r: Range<usize>| View::new(&original[r], fold).text().is_empty();
    let mut covered = 0;
    let mut i = 0;
    while i < v.len() {
        let r = view.to_original(i..i + 1);
        assert!(
            v.is_char_boundary(i)
                && r.start < r.end
                && r.end <= original.len()
                && original.is_char_boundary(r.start)
                && original.is_char_boundary(r.end),
            "fold {fold}: view byte {i} maps to {r:?}, off a character boundary (original of {} bytes)",
            original.len()
        );
        assert!(
            r.start >= covered,
            "fold {fold}: view byte {i} maps to {r:?}, before {covered} (not monotonic)"
        );
        assert!(
            empty_view(covered..r.start),
            "fold {fold}: original {:?} is not covered by any view byte",
            covered..r.start
        );
        let mut j = i + 1;
        while j < v.len() && view.to_original(j..j + 1) == r {
            j += 1;
        }
        assert!(
            v.is_char_boundary(j) && v[i..j] == *View::new(&original[r.clone()], fold).text(),
            "fold {fold}: view bytes {:?} are not the view of their original {r:?}",
            i..j
        );
        covered = r.end;
        i = j;
    }
    assert!(
        empty_view(covered..original.len()),
        "fold {fold}: the original after {covered} is not covered by any view byte"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fails(f: impl FnOnce() + std::panic::UnwindSafe) -> bool {
        std::panic::catch_unwind(f).is_err()
    }

    #[test]
    fn reads_follow_the_length_bytes_in_turn() {
        let (reads, stream) = split_reads(b"\x02\x01\x03abcdefg");
        assert_eq!(stream, b"abcdefg");
        assert_eq!(reads, [&b"a"[..], b"bcd", b"e", b"fg"]);
        let (reads, _) = split_reads(b"\x02\x00\x00abc");
        assert_eq!(reads, [&b""[..], b"", b"abc"]);
        let (reads, _) = split_reads(b"");
        assert_eq!(reads, [&b""[..]]);
    }

    #[test]
    fn the_stream_checks_catch_leaks_merges_and_growth() {
        let set = shipped_rules();
        let ok = b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\n";
        check_stream_output(&set, ok, ok);
        // A value split across two deltas, each clean alone.
        let split = b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"AKIAIOSF\"}}]}\n\n\
                      data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"ODNN7EXAMPLE\"}}]}\n\n";
        assert!(fails(|| check_stream_output(&set, split, split)));
        // The same halves in two choices are two texts: nothing leaks.
        let apart = b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"AKIAIOSF\"}}]}\n\n\
                      data: {\"choices\":[{\"index\":1,\"delta\":{\"content\":\"ODNN7EXAMPLE\"}}]}\n\n";
        check_stream_output(&set, apart, apart);
        // An escaped value is a value.
        let escaped = b"data: {\"x\":\"\\u0041KIAIOSFODNN7EXAMPLE\"}\n\n";
        assert!(fails(|| check_stream_output(&set, escaped, escaped)));
        // A comment carries bytes too.
        let comment = b": AKIAIOSFODNN7EXAMPLE\n\n";
        assert!(fails(|| check_stream_output(&set, comment, comment)));
        // An unterminated upstream event followed by one of ours reads back as one broken event.
        let upstream = b"data: x";
        let merged = b"data: xdata: {\"a\":1}\n\n";
        check_stream_output(&set, upstream, upstream);
        assert!(fails(|| check_stream_output(&set, upstream, merged)));
        assert!(fails(|| check_stream_output(&set, b"", b"data: {}")));
        assert!(fails(|| check_stream_output(&set, b"x", &[b' '; 8192])));
    }

    #[test]
    fn changes_outside_the_spans_are_caught() {
        let orig = b"{\"a\":\"mail x@y.io now\",\"b\":1}";
        let new = b"{\"a\":\"mail [EMAIL] now\",\"b\":1}";
        let range = 11..17;
        let span = std::slice::from_ref(&range);
        assert!(changed_only_within(orig, new, span));
        assert!(changed_only_within(orig, orig, span));
        assert!(!changed_only_within(orig, new, &[]));
        assert!(!changed_only_within(
            orig,
            b"{\"a\":\"mail [EMAIL] now\",\"b\":2}",
            span
        ));
        assert!(!changed_only_within(
            orig,
            b"{\"a\":\"Mail [EMAIL] now\",\"b\":1}",
            span
        ));
    }

    #[test]
    fn raw_offsets_step_over_escapes() {
        let src = br#""a\u00e9\n\ud83d\ude00b""#;
        let Node::String(s) = json::parse(src, 4).expect("json") else {
            panic!("a string")
        };
        // a, é (2 bytes), \n, 😀 (4 bytes), b, end.
        assert_eq!(raw_offsets(src, &s), [1, 2, 2, 8, 10, 10, 10, 10, 22, 23]);
    }

    #[test]
    fn rule_files_never_reads_outside_its_directory() {
        assert!(names_only_scratch_files(
            "[[rule]]\nkeywords = { terms_file = \"terms.txt\" }"
        ));
        assert!(!names_only_scratch_files(
            "[[rule]]\nkeywords = { terms_file = \"/dev/zero\" }"
        ));
        assert!(!names_only_scratch_files(
            "[[rule]]\n[rule.keywords]\n\"terms\\u005ffile\" = \"../x\""
        ));
        assert!(names_only_scratch_files("not = = toml"));
    }

    #[test]
    fn planted_sessions_cut_the_text_as_the_cut_bytes_say() {
        let deltas = |data: &[u8]| -> Vec<(String, String)> {
            realtime_session(data)
                .server
                .iter()
                .map(|e| serde_json::from_str::<Value>(e).expect("json"))
                .filter(|v| v["type"] == "response.output_text.delta")
                .map(|v| {
                    let r = v["response_id"].as_str().unwrap_or_default().to_string();
                    (r, v["delta"].as_str().unwrap_or_default().to_string())
                })
                .collect()
        };
        let r = |r: &str, d: &str| (r.to_string(), d.to_string());
        // Lane 0 three bytes, lane 2 two bytes, then the cuts with a length over again.
        assert_eq!(
            deltas(b"\x00\x02\x03\x42abcdefgh"),
            [r("resp_1", "abc"), r("resp_2", "de"), r("resp_1", "fgh")]
        );
        // A zero length is an empty delta, once; no length at all: the rest in one piece.
        assert_eq!(
            deltas(b"\x00\x01\x00abc"),
            [r("resp_1", ""), r("resp_1", "abc")]
        );
        // A cut inside a character moves to its end.
        assert_eq!(deltas("\x00\x01\x01é".as_bytes()), [r("resp_1", "é")]);
        // Raw lines, verbatim.
        let raw = realtime_session(b"\xC0{\"a\":1}\nnot json");
        assert_eq!(raw.server, ["{\"a\":1}", "not json"]);
    }

    #[test]
    fn the_realtime_checks_catch_leaks_late_messages_and_lost_responses() {
        let set = shipped_rules();
        let events = vec!["x".repeat(400)];
        let delta = |r: &str, index: Value, piece: &str| {
            ServerOut::Client(
                json!({"type": "response.output_text.delta", "response_id": r, "item_id": "i1",
                       "output_index": index, "content_index": 0, "delta": piece})
                .to_string(),
            )
        };
        let finished = |r: &str| {
            ServerOut::Finished(Box::new(crate::inspect::realtime::ResponseSummary {
                response_id: r.to_string(),
                side: crate::inspect::Side::failed(),
                blocked_by: None,
                usage: None,
                text_bytes: 0,
                unfinished: false,
            }))
        };
        let ended = |r: &str| ServerOut::Ended {
            response: Some(r.to_string()),
            rejection: crate::openai::Rejection::Internal,
        };
        let check = |outs: Vec<ServerOut>| {
            let n = outs.len();
            check_realtime_output(&set, &events, &outs, n)
        };
        let ok = |outs: Vec<ServerOut>| check(outs);
        let caught = |outs: Vec<ServerOut>| fails(move || check(outs));
        ok(vec![
            delta("r1", json!(0), "AKIAIOSF"),
            delta("r2", json!(0), "ODNN7EXAMPLE"),
            finished("r1"),
            finished("r2"),
        ]);
        // One text to a JavaScript client: `0` and `"0"` are one index.
        assert!(caught(vec![
            delta("r1", json!(0), "AKIAIOSF"),
            delta("r1", json!("0"), "ODNN7EXAMPLE"),
            finished("r1"),
        ]));
        assert!(caught(vec![
            delta("r1", json!(0), "mail jane.doe@example.com"),
            finished("r1")
        ]));
        // The sound of an audio delta is not text; a field beside it is.
        let audio = |field: &str| {
            ServerOut::Client(
                json!({"type": "response.output_audio.delta", "response_id": "r1", field: "AKIAIOSFODNN7EXAMPLE"})
                    .to_string(),
            )
        };
        ok(vec![audio("delta"), finished("r1")]);
        assert!(caught(vec![audio("note"), finished("r1")]));
        // After an ending, only the emptied `response.done`; after a `Finished`, nothing.
        let emptied = ServerOut::Client(
            json!({"type": "response.done", "response": {"id": "r1", "status": "cancelled", "output": []}})
                .to_string(),
        );
        ok(vec![ended("r1"), emptied, finished("r1")]);
        assert!(caught(vec![
            ended("r1"),
            delta("r1", json!(0), "more"),
            finished("r1")
        ]));
        assert!(caught(vec![finished("r1"), delta("r1", json!(0), "more")]));
        // A response the client heard of and was never told the end of.
        assert!(caught(vec![delta("r1", json!(0), "hello")]));
        assert!(caught(vec![ended("r1")]));
        assert!(caught(vec![ServerOut::Client("not json".into())]));
        assert!(caught(vec![ServerOut::Client(format!(
            "{{\"a\":\"{}\"}}",
            "y".repeat(16 * 401 + 4096)
        ))]));
    }

    #[test]
    fn the_client_checks_catch_forwarded_values_beside_the_audio() {
        let set = shipped_rules();
        let append = |field: &str| {
            json!({"type": "input_audio_buffer.append", "audio": "AAAA", field: "AKIAIOSFODNN7EXAMPLE"})
                .to_string()
        };
        check_forwarded(&set, &append("audio"));
        assert!(fails(|| check_forwarded(&set, &append("note"))));
        // A value nested as a JSON document in a string, escaped.
        let nested = json!({"arguments": "{\"k\":\"\\u0041KIAIOSFODNN7EXAMPLE\"}"}).to_string();
        assert!(fails(|| check_forwarded(&set, &nested)));
    }

    #[test]
    fn views_that_are_not_the_original_s_are_caught() {
        let text = "jane\u{200B}.doe@exa\u{200D}mple.com — ŞTRAẞE ﬁ ４１ \u{FEFF}";
        check_view(text, false);
        check_view(text, true);
        // A character with a view of its own that no view byte maps to.
        assert!(fails(|| check_view_of(
            "abc",
            &View::new("ab", false),
            false
        )));
        // View bytes that are not the view of the original they map to.
        assert!(fails(|| check_view_of(
            "ab",
            &View::new("ba", false),
            false
        )));
        assert!(fails(|| check_view_of("AB", &View::new("AB", true), false)));
    }
}
