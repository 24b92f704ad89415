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
//! - [`json_redaction`]: `inspect::inspect_json`, `openai::json::parse`, `rules::RuleSet::scan`;
//! - [`rule_files`]: `rules::load`, `rules::load_dir`, `rules::RuleSet::{scan, hold_from, rules}`;
//! - [`normalize_spans`]: `rules::View::{new, text, to_original}`, `rules::RuleSet::scan`.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde_json::Value;

use crate::inspect::holdback::MAX_HELD;
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
            m.rule < set.rules().len()
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
    let written = |v: &Value, key: &str| match v.get(key) {
        None => "undefined".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => match n.as_f64() {
            // Integers as JavaScript writes them (`-0` and `1.0` included); other numbers by value.
            Some(f) if f.fract() == 0.0 && f.abs() < 1e21 => format!("{}", f as i128),
            Some(f) => format!("{f}"),
            None => n.to_string(),
        },
        Some(other) => other.to_string(),
    };
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
