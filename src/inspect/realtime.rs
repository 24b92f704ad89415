//! Realtime sessions (`/v1/realtime` over WebSocket), event by event: pure logic over the text of each message,
//! driven by `proxy::realtime`, which owns the sockets.
//!
//! **Client → upstream** ([`judge_client_event`]): every string of a client event is inspected — keys too —
//! as a request body is (`inspect_json`): `conversation.item.create` texts and function-call outputs,
//! `session.update` and `response.create` instructions and tool descriptions, and whatever field the next
//! event adds. The event is forwarded as sent, forwarded redacted (only the bytes of each matched span
//! change), or not forwarded (a block). Audio appended to the input buffer (`input_audio_buffer.append`) and
//! audio or image parts follow `inspect.opaque_inputs`; the appended audio itself is left out of the
//! inspection, every other string of its event is inspected.
//!
//! **Upstream → client** ([`ServerFilter`]): the server events go through the SSE stream filter
//! (`inspect::stream`), whose Responses API handling fits the realtime events exactly — a `*.delta` event with
//! a string `delta` is a growing text with the exact hold-back, keyed by its event type and
//! `output_index` / `content_index`; a `*.done` event releases what its part or output holds before it; every
//! other string of every event is inspected whole, redacted in place or blocking. One filter per response
//! (`response_id`), so a block ends that response and not the session; one per item for the transcription of
//! the user's audio (`conversation.item.input_audio_transcription.*`, which carries no response id); one for
//! everything else. The end of each (`response.done`, the transcription's `.completed` / `.failed`) releases
//! what is held before the event goes on. A blocked response's later events are suppressed; its
//! `response.done` reaches the client emptied (`status: cancelled`, no output, its usage only if clean) so a
//! client waiting for it is not left waiting, and the driver asks the upstream to stop generating
//! (`response.cancel`).
//!
//! A client joins the deltas of a text by the ids and indices the events carry; the filters must see the same
//! texts. So what is over stays over: a response after its `response.done` (or its refusal), a transcription
//! after its end or its block, a text of the events outside both after its end — a later event of one is not
//! passed (it would start a fresh text that the client joins to what it was sent). And an event whose ids are
//! not strings, or whose indices are not whole numbers (`"0"`, `0.0`: one key to a JavaScript client), cannot
//! be filtered as the client will read it, and is not passed either.
//!
//! Output audio (`response.output_audio.delta`) cannot be inspected as text: its delta passes as it is (its
//! transcript is inspected), every other string of its event is inspected, and none of it passes after its
//! response was blocked. Upstream text that is not JSON is never passed.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Range;
use std::sync::Arc;

use bytes::BytesMut;
use serde::Deserialize;
use serde_json::{json, Value};

use super::stream::StreamFilter;
use super::{inspect_json, InspectOptions, OpaquePolicy, RuleHit, Side};
use crate::openai::json::{self, Node};
use crate::openai::sse::SseParser;
use crate::openai::Rejection;
use crate::rules::{Direction, RuleSet};

/// Responses (and transcribed items) open at once in one session: each holds a filter, so their number is
/// bounded; a session that needs more cannot be inspected.
pub const MAX_OPEN: usize = 32;

/// Client events that carry audio, never text.
const AUDIO_EVENTS: &[&str] = &["input_audio_buffer.append"];
/// Server events whose `delta` is audio (base64), never text.
const AUDIO_DELTAS: &[&str] = &["response.output_audio.delta", "response.audio.delta"];
/// The prefix of the events transcribing the user's audio (keyed by item: they carry no response id).
const TRANSCRIPTION: &str = "conversation.item.input_audio_transcription.";

/// The fields of a client event read before it is inspected, each on its own (a field of another type than
/// expected is not read, and takes no other field with it). Other fields are skipped unread.
#[derive(Deserialize, Default)]
struct ClientHead {
    #[serde(rename = "type")]
    kind: Option<Value>,
    event_id: Option<Value>,
}

/// The fields a server event is routed by.
struct Head {
    /// The event's `type` (empty when it has none, or one that is not a string).
    kind: String,
    response_id: Option<String>,
    item_id: Option<String>,
}

impl Head {
    /// Reads each field on its own. `None` when an id is there but is not a string (nor `null`): a client
    /// keys texts by it as it stands (`1` and `"1"` alike, in JavaScript), the filters by a string, so the
    /// event cannot be filtered as the client will read it.
    fn read(v: &Value) -> Option<Self> {
        fn id(v: Option<&Value>) -> Option<Option<String>> {
            match v {
                None | Some(Value::Null) => Some(None),
                Some(Value::String(s)) => Some(Some(s.clone())),
                Some(_) => None,
            }
        }
        let nested = |k: &str| v.get(k).filter(|x| x.is_object()).and_then(|x| x.get("id"));
        let (response_id, nested_response) = (id(v.get("response_id"))?, id(nested("response"))?);
        let (item_id, nested_item) = (id(v.get("item_id"))?, id(nested("item"))?);
        Some(Self {
            kind: v
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            response_id: response_id.or(nested_response),
            item_id: item_id.or(nested_item),
        })
    }
}

/// Responses and transcriptions remembered as over, at most this many (the oldest forgotten first).
const MAX_ENDED: usize = 4096;

/// Responses and transcriptions that are over (their end came, or the gateway ended them): a text a client
/// was sent in part cannot start again in a fresh filter — the client would join the two, and a value split
/// across them would reach it whole. Kept as keyed hashes (a fixed size whatever the ids), bounded: an id
/// reused after [`MAX_ENDED`] others ended is taken for a new one.
#[derive(Default)]
struct Over {
    hasher: std::collections::hash_map::RandomState,
    /// For each, whether its later events are dropped quietly (a block already told) or each told.
    ended: HashMap<u64, bool>,
    order: VecDeque<u64>,
}

/// What an id in [`Over`] names.
#[derive(Hash, Clone, Copy)]
enum Scope {
    Response,
    Transcription,
}

impl Over {
    fn key(&self, scope: Scope, id: &str) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one((scope, id))
    }

    fn end(&mut self, scope: Scope, id: &str, quiet: bool) {
        let key = self.key(scope, id);
        if self.ended.insert(key, quiet).is_none() {
            if self.order.len() >= MAX_ENDED {
                if let Some(old) = self.order.pop_front() {
                    self.ended.remove(&old);
                }
            }
            self.order.push_back(key);
        }
    }

    /// Whether `id` is over, and if so whether quietly.
    fn get(&self, scope: Scope, id: &str) -> Option<bool> {
        self.ended.get(&self.key(scope, id)).copied()
    }
}

/// Items remembered as belonging to a blocked response (their whole-item events are suppressed with it).
const MAX_SUPPRESSED_ITEMS: usize = 1024;
/// Items remembered with the response that made them.
const MAX_OWNED_ITEMS: usize = 4096;

/// What to do with one client event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientAction {
    /// Forward it as it came.
    Forward,
    /// Forward this instead (redacted).
    Rewrite(String),
    /// Do not forward it: an enforced block rule matched.
    Block { rule: usize },
    /// Do not forward it: it carries inputs that cannot be inspected and `inspect.opaque_inputs` is `deny`.
    Opaque,
    /// Do not forward it: it is not a JSON event (or too deep to read).
    Invalid(String),
}

/// The judgement of one client event.
#[derive(Debug, Clone)]
pub struct ClientJudgement {
    pub action: ClientAction,
    pub hits: Vec<RuleHit>,
    /// The event's `type`, when it has one.
    pub kind: Option<String>,
    /// The client's `event_id`, echoed in an error about the event.
    pub event_id: Option<String>,
    /// Bytes of text inspected.
    pub text_bytes: u64,
}

/// Judges one client event (a text message).
pub fn judge_client_event(set: &RuleSet, text: &str, opts: &InspectOptions) -> ClientJudgement {
    let head: ClientHead = serde_json::from_str(text).unwrap_or_default();
    let as_string = |v: Option<Value>| match v {
        Some(Value::String(s)) => Some(s),
        _ => None,
    };
    let mut j = ClientJudgement {
        action: ClientAction::Forward,
        hits: Vec::new(),
        kind: as_string(head.kind),
        event_id: as_string(head.event_id),
        text_bytes: 0,
    };
    let audio = j.kind.as_deref().is_some_and(|k| AUDIO_EVENTS.contains(&k));
    if audio && opts.opaque == OpaquePolicy::Deny {
        j.action = ClientAction::Opaque;
        return j;
    }
    // Appended audio is sound (base64), never text: it is left out, and every other string of the event (its
    // keys, an `event_id`, any field the next version adds) is inspected as any event's is.
    let sound = if audio {
        match audio_span(text.as_bytes(), opts.max_depth) {
            Ok(span) => span,
            Err(e) => {
                j.action = ClientAction::Invalid(e.to_string());
                return j;
            }
        }
    } else {
        None
    };
    let inspected = match &sound {
        Some(span) => {
            std::borrow::Cow::Owned(format!("{}\"\"{}", &text[..span.start], &text[span.end..]))
        }
        None => std::borrow::Cow::Borrowed(text),
    };
    match inspect_json(set, inspected.as_bytes(), opts, Direction::Request) {
        Err(e) => j.action = ClientAction::Invalid(e.to_string()),
        Ok(v) => {
            j.text_bytes = v.facts.text_bytes;
            j.action = match (v.blocked_by, v.opaque_denied, v.rewritten) {
                (Some(rule), _, _) => ClientAction::Block { rule },
                (None, true, _) => ClientAction::Opaque,
                (None, false, Some(body)) => match String::from_utf8(body) {
                    Ok(s) => match &sound {
                        Some(span) => with_audio(s, &text[span.clone()], opts.max_depth),
                        None => ClientAction::Rewrite(s),
                    },
                    Err(_) => ClientAction::Invalid("the redacted event is not UTF-8".into()),
                },
                (None, false, None) => ClientAction::Forward,
            };
            j.hits = v.hits;
        }
    }
    j
}

/// The raw bytes (quotes included) of the top-level `audio` string of a client event, if it has one.
fn audio_span(src: &[u8], max_depth: usize) -> Result<Option<Range<usize>>, json::JsonError> {
    let Node::Object(entries) = json::parse(src, max_depth)? else {
        return Ok(None);
    };
    Ok(entries.into_iter().find_map(|(k, v)| match v {
        Node::String(s) if k.value == "audio" => Some(s.range),
        _ => None,
    }))
}

/// A redacted audio event (inspected with its audio left out) with its audio put back in place.
fn with_audio(redacted: String, audio: &str, max_depth: usize) -> ClientAction {
    match audio_span(redacted.as_bytes(), max_depth) {
        Ok(Some(span)) => ClientAction::Rewrite(format!(
            "{}{audio}{}",
            &redacted[..span.start],
            &redacted[span.end..]
        )),
        _ => ClientAction::Invalid("the redacted event lost its audio".into()),
    }
}

/// What the server filter asks the driver to do, in order.
#[derive(Debug, Clone)]
pub enum ServerOut {
    /// Send this text message to the client.
    Client(String),
    /// Send this text message to the upstream (`response.cancel` for a blocked response).
    Upstream(String),
    /// Something was blocked (or could not be inspected): the driver tells the client with an `error` event
    /// (or closes the session, as configured). `response`: the response it ended, if any.
    Ended {
        response: Option<String>,
        rejection: Rejection,
    },
    /// A response is over: what was decided about it, for its decision event.
    Finished(Box<ResponseSummary>),
}

/// One response, as its decision event reports it.
#[derive(Debug, Clone)]
pub struct ResponseSummary {
    pub response_id: String,
    pub side: Side,
    /// The rule that blocked it, if one did.
    pub blocked_by: Option<usize>,
    /// `response.done`'s `usage`, when it came.
    pub usage: Option<Value>,
    /// Bytes of generated text seen.
    pub text_bytes: u64,
    /// The response ended before its `response.done` (the session closed).
    pub unfinished: bool,
}

/// A response being filtered, or one whose block suppresses the rest of its events.
enum Open {
    Filtering(Box<StreamFilter>),
    Suppressed { summary: Box<ResponseSummary> },
}

/// The filter of every server event of one session.
pub struct ServerFilter {
    rules: Arc<RuleSet>,
    monitor: bool,
    max_hold: usize,
    responses: HashMap<String, Open>,
    /// Transcriptions of the user's audio, by item.
    items: HashMap<String, StreamFilter>,
    /// Every other event (session, conversation items, errors, rate limits).
    loose: StreamFilter,
    /// Matches of the events outside responses, per rule (the session's decision event).
    pub loose_hits: BTreeMap<usize, u32>,
    /// Events that were not passed because they could not be inspected.
    pub uninspectable: u64,
    /// Audio deltas passed uninspected.
    pub audio_deltas: u64,
    /// The response each item came from (bounded: forgotten wholesale when full).
    item_owner: HashMap<String, String>,
    /// Items of blocked responses, oldest first (bounded): events about them carry no response id
    /// (`conversation.item.done`), and are suppressed with their response.
    suppressed_items: VecDeque<String>,
    /// Responses and transcriptions that are over.
    over: Over,
    sse_out: SseParser,
}

impl ServerFilter {
    pub fn new(rules: Arc<RuleSet>, monitor: bool, max_hold: usize) -> Self {
        Self {
            loose: StreamFilter::new(rules.clone(), monitor, max_hold),
            rules,
            monitor,
            max_hold,
            responses: HashMap::new(),
            items: HashMap::new(),
            loose_hits: BTreeMap::new(),
            uninspectable: 0,
            audio_deltas: 0,
            item_owner: HashMap::new(),
            suppressed_items: VecDeque::new(),
            over: Over::default(),
            sse_out: SseParser::new(usize::MAX),
        }
    }

    /// Bytes of text held back now, over every response and item.
    pub fn held(&self) -> usize {
        self.responses
            .values()
            .map(|o| match o {
                Open::Filtering(f) => f.held_bytes(),
                Open::Suppressed { .. } => 0,
            })
            .sum::<usize>()
            + self
                .items
                .values()
                .map(StreamFilter::held_bytes)
                .sum::<usize>()
            + self.loose.held_bytes()
    }

    fn filter(&self) -> StreamFilter {
        StreamFilter::new(self.rules.clone(), self.monitor, self.max_hold)
    }

    /// One server event (a text message): what to send where.
    pub fn on_event(&mut self, text: &str, out: &mut Vec<ServerOut>) {
        let parsed: Result<Value, _> = serde_json::from_str(text);
        let Ok(mut value) = parsed else {
            self.refuse(None, "an upstream event is not JSON", out);
            return;
        };
        let Some(head) = Head::read(&value) else {
            self.refuse(
                None,
                "an upstream event names its response or item with something other than a string",
                out,
            );
            return;
        };
        let kind = head.kind.as_str();
        let response_id = head
            .response_id
            .clone()
            .filter(|_| kind.starts_with("response."));
        match (&response_id, &head.item_id) {
            (Some(r), Some(i)) => {
                if self.item_owner.len() >= MAX_OWNED_ITEMS {
                    self.item_owner.clear();
                }
                self.item_owner.insert(i.clone(), r.clone());
                if matches!(self.responses.get(r), Some(Open::Suppressed { .. })) {
                    self.suppress_item(i.clone());
                }
            }
            (None, Some(i)) if self.suppressed_items.contains(i) => return,
            _ => {}
        }
        let transcribed = match (&response_id, &head.item_id) {
            (None, Some(item)) if kind.starts_with(TRANSCRIPTION) => Some(item.clone()),
            _ => None,
        };
        // What is over does not start again (see `Over`).
        let over = match (&response_id, &transcribed) {
            (Some(r), _) => self.over.get(Scope::Response, r),
            (None, Some(i)) => self.over.get(Scope::Transcription, i),
            (None, None) => None,
        };
        match over {
            Some(true) => return,
            Some(false) => {
                // Not an ending of the response (it ended before): the driver tells the client, no more.
                self.refuse(
                    None,
                    "an event of a response or transcription that has ended",
                    out,
                );
                return;
            }
            None => {}
        }
        // Output audio: its delta is sound (base64), never text, and passes as it is; every other string of the
        // event goes through the filter (without the delta), and the delta is put back into what comes out.
        let sound = match value.get("delta") {
            Some(Value::String(_)) if AUDIO_DELTAS.contains(&kind) => {
                value.as_object_mut().and_then(|o| o.remove("delta"))
            }
            _ => None,
        };
        // The filters read SSE: the event as one `data:` line (compact JSON has no raw line break).
        let line = if sound.is_some() || text.contains(['\n', '\r']) {
            value.to_string()
        } else {
            text.to_string()
        };
        let mut framed = BytesMut::with_capacity(line.len() + 8);
        framed.extend_from_slice(b"data: ");
        framed.extend_from_slice(line.as_bytes());
        framed.extend_from_slice(b"\n\n");
        let start = out.len();
        if let Some(id) = response_id {
            self.on_response_event(id, kind, &value, &framed, out);
        } else if let Some(item) = transcribed {
            self.on_transcription_event(item, kind, &framed, out);
        } else {
            let released = self.loose.push(&framed);
            self.emit(&released, out);
            if self.loose.is_ended() {
                // The next filter knows the texts this one ended: none of them starts again.
                let next = self.loose.successor();
                let ended = std::mem::replace(&mut self.loose, next);
                self.end_loose(ended, None, out);
            }
        }
        if let Some(sound) = sound {
            self.restore_audio(kind, sound, &mut out[start..]);
        }
    }

    /// Puts an audio delta back into its event as the filter let it out (if it did).
    fn restore_audio(&mut self, kind: &str, sound: Value, outs: &mut [ServerOut]) {
        for o in outs {
            let ServerOut::Client(s) = o else {
                continue;
            };
            let Ok(Value::Object(mut ev)) = serde_json::from_str::<Value>(s) else {
                continue;
            };
            if ev.get("type").and_then(Value::as_str) == Some(kind) && !ev.contains_key("delta") {
                ev.insert("delta".into(), sound);
                *s = Value::Object(ev).to_string();
                self.audio_deltas += 1;
                return;
            }
        }
    }

    /// An event that is not passed (it cannot be inspected): counted, and the driver told.
    fn refuse(&mut self, response: Option<String>, why: &str, out: &mut Vec<ServerOut>) {
        self.uninspectable += 1;
        out.push(ServerOut::Ended {
            response,
            rejection: Rejection::StreamUninspectable(why.into()),
        });
    }

    fn on_response_event(
        &mut self,
        id: String,
        kind: &str,
        value: &Value,
        framed: &[u8],
        out: &mut Vec<ServerOut>,
    ) {
        let last = kind == "response.done";
        if !self.responses.contains_key(&id) {
            if self.responses.len() >= MAX_OPEN {
                // Refused whole: it is over before it began, and reported as such.
                self.refuse(Some(id.clone()), "too many responses open at once", out);
                self.over.end(Scope::Response, &id, false);
                out.push(ServerOut::Finished(Box::new(ResponseSummary {
                    response_id: id,
                    side: Side::failed(),
                    blocked_by: None,
                    usage: None,
                    text_bytes: 0,
                    unfinished: false,
                })));
                return;
            }
            let f = self.filter();
            self.responses
                .insert(id.clone(), Open::Filtering(Box::new(f)));
        }
        let Some(open) = self.responses.get_mut(&id) else {
            return;
        };
        match open {
            Open::Suppressed { summary } => {
                if last {
                    summary.usage = usage(value);
                    let done = self.emptied_done(value, &id);
                    out.extend(done.map(ServerOut::Client));
                    self.over.end(Scope::Response, &id, false);
                    if let Some(Open::Suppressed { summary }) = self.responses.remove(&id) {
                        out.push(ServerOut::Finished(summary));
                    }
                }
            }
            Open::Filtering(f) => {
                let mut released = BytesMut::new();
                if last {
                    released.extend_from_slice(&f.release_held());
                }
                if !f.is_ended() {
                    released.extend_from_slice(&f.push(framed));
                }
                if last && !f.is_ended() {
                    released.extend_from_slice(&f.finish());
                }
                self.emit(&released, out);
                let Some(Open::Filtering(f)) = self.responses.get_mut(&id) else {
                    return;
                };
                if f.is_ended() {
                    let rejection = f.ending().unwrap_or(Rejection::Internal);
                    let summary = summary_of(f, &id, usage(value));
                    out.push(ServerOut::Ended {
                        response: Some(id.clone()),
                        rejection,
                    });
                    if last {
                        // Nothing more will come: the client still gets the response's end, emptied.
                        let done = self.emptied_done(value, &id);
                        out.extend(done.map(ServerOut::Client));
                        self.responses.remove(&id);
                        self.over.end(Scope::Response, &id, false);
                        out.push(ServerOut::Finished(Box::new(summary)));
                    } else {
                        out.push(ServerOut::Upstream(
                            json!({"type": "response.cancel", "response_id": id}).to_string(),
                        ));
                        let owned: Vec<String> = self
                            .item_owner
                            .iter()
                            .filter(|(_, r)| **r == id)
                            .map(|(i, _)| i.clone())
                            .collect();
                        for i in owned {
                            self.suppress_item(i);
                        }
                        self.responses.insert(
                            id,
                            Open::Suppressed {
                                summary: Box::new(summary),
                            },
                        );
                    }
                } else if last {
                    let summary = summary_of(f, &id, usage(value));
                    self.responses.remove(&id);
                    self.over.end(Scope::Response, &id, false);
                    out.push(ServerOut::Finished(Box::new(summary)));
                }
            }
        }
    }

    fn on_transcription_event(
        &mut self,
        item: String,
        kind: &str,
        framed: &[u8],
        out: &mut Vec<ServerOut>,
    ) {
        let last = kind.ends_with(".completed") || kind.ends_with(".failed");
        if !self.items.contains_key(&item) {
            if self.items.len() >= MAX_OPEN {
                self.refuse(None, "too many transcriptions open at once", out);
                self.over.end(Scope::Transcription, &item, false);
                return;
            }
            let f = self.filter();
            self.items.insert(item.clone(), f);
        }
        let Some(f) = self.items.get_mut(&item) else {
            return;
        };
        let mut released = BytesMut::new();
        if last {
            released.extend_from_slice(&f.release_held());
        }
        released.extend_from_slice(&f.push(framed));
        if last {
            released.extend_from_slice(&f.finish());
        }
        let ended = f.is_ended();
        self.emit(&released, out);
        if ended || last {
            // A transcription ended by a block has its later events dropped quietly (the block was told).
            self.over.end(Scope::Transcription, &item, ended && !last);
            if let Some(f) = self.items.remove(&item) {
                self.end_loose(f, None, out);
            }
        }
    }

    /// A filter outside responses is over: its matches count for the session; if it was ended by a block or a
    /// failure, the driver is told.
    fn end_loose(
        &mut self,
        mut f: StreamFilter,
        response: Option<String>,
        out: &mut Vec<ServerOut>,
    ) {
        for (&rule, &n) in &f.hits {
            *self.loose_hits.entry(rule).or_default() += n;
        }
        if let Some(rejection) = f.ending() {
            out.push(ServerOut::Ended {
                response,
                rejection,
            });
        }
    }

    /// The session ends: every open response is reported unfinished (what is held is dropped, never sent).
    pub fn close(&mut self, out: &mut Vec<ServerOut>) {
        for (id, open) in self.responses.drain() {
            let mut summary = match open {
                Open::Filtering(f) => summary_of(&f, &id, None),
                Open::Suppressed { summary } => *summary,
            };
            summary.unfinished = true;
            out.push(ServerOut::Finished(Box::new(summary)));
        }
        let items: Vec<StreamFilter> = self.items.drain().map(|(_, f)| f).collect();
        for f in items {
            self.end_loose(f, None, out);
        }
        let fresh = self.filter();
        let loose = std::mem::replace(&mut self.loose, fresh);
        for (&rule, &n) in &loose.hits {
            *self.loose_hits.entry(rule).or_default() += n;
        }
    }

    /// The `response.done` of a blocked response as the client gets it: cancelled, without its output (which
    /// holds the blocked text), its usage kept if it is clean. Not sent (`None`) when the response's id is
    /// itself a value the rules block or redact: the driver's error event has told the client.
    fn emptied_done(&self, v: &Value, id: &str) -> Option<String> {
        let clean = |text: &str| {
            let opts = InspectOptions {
                max_depth: 64,
                opaque: OpaquePolicy::Pass,
                monitor: self.monitor,
            };
            inspect_json(&self.rules, text.as_bytes(), &opts, Direction::Response)
                .is_ok_and(|v| v.blocked_by.is_none() && v.rewritten.is_none())
        };
        if !clean(&Value::String(id.to_string()).to_string()) {
            return None;
        }
        let mut response = json!({
            "id": id,
            "object": "realtime.response",
            "status": "cancelled",
            "status_details": {"type": "cancelled", "reason": "policy_blocked"},
            "output": [],
        });
        // The usage is the upstream's: inspected like anything else it sends, left out if it is not clean.
        if let Some(u) = usage(v).filter(|u| clean(&u.to_string())) {
            response["usage"] = u;
        }
        Some(json!({"type": "response.done", "response": response}).to_string())
    }

    fn suppress_item(&mut self, item: String) {
        if self.suppressed_items.contains(&item) {
            return;
        }
        if self.suppressed_items.len() >= MAX_SUPPRESSED_ITEMS {
            self.suppressed_items.pop_front();
        }
        self.suppressed_items.push_back(item);
    }

    /// Turns what a filter released (SSE) into client messages; a text delta held whole (empty) is not sent.
    fn emit(&mut self, released: &[u8], out: &mut Vec<ServerOut>) {
        if released.is_empty() {
            return;
        }
        let Ok(events) = self.sse_out.push(released) else {
            return;
        };
        for ev in events {
            let Some(data) = ev.data else {
                continue;
            };
            if data.contains("\"delta\":\"\"") && is_empty_delta(&data) {
                continue;
            }
            out.push(ServerOut::Client(data));
        }
    }
}

/// Whether an event is a text delta with nothing in it (all of its piece is held back).
fn is_empty_delta(data: &str) -> bool {
    serde_json::from_str::<Value>(data).is_ok_and(|v| {
        v.get("type")
            .and_then(Value::as_str)
            .is_some_and(|t| t.ends_with(".delta"))
            && v.get("delta").and_then(Value::as_str) == Some("")
    })
}

fn usage(v: &Value) -> Option<Value> {
    v.get("response")
        .and_then(|r| r.get("usage"))
        .filter(|u| !u.is_null())
        .cloned()
}

fn summary_of(f: &StreamFilter, id: &str, usage: Option<Value>) -> ResponseSummary {
    ResponseSummary {
        response_id: id.to_string(),
        side: f.side(),
        blocked_by: f.blocked_by,
        usage,
        text_bytes: f.text_bytes,
        unfinished: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{load, Budget};

    const PACK: &str = r#"
[[rule]]
id = "t.email"
description = "Email address"
regex = { pattern = '[a-z]+@[a-z]+\.com' }
case_sensitive = true
action = "redact"
replacement = "[EMAIL]"

[[rule]]
id = "t.secret"
description = "Secret key"
regex = { pattern = 'sk-[A-Za-z0-9]{20}' }
case_sensitive = true
action = "block"
"#;

    fn rules() -> Arc<RuleSet> {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("t.toml"), PACK).expect("write");
        Arc::new(load(dir.path(), &Budget::default()).expect("pack"))
    }

    fn opts() -> InspectOptions {
        InspectOptions {
            max_depth: 64,
            opaque: OpaquePolicy::Pass,
            monitor: false,
        }
    }

    const SECRET: &str = "sk-ABCDEFGHIJKLMNOPQRST";

    #[test]
    fn client_events_are_forwarded_redacted_or_blocked_by_any_string() {
        let set = rules();
        let plain = r#"{"type":"conversation.item.create","item":{"type":"message","role":"user","content":[{"type":"input_text","text":"hello"}]}}"#;
        assert_eq!(
            judge_client_event(&set, plain, &opts()).action,
            ClientAction::Forward
        );
        let email = plain.replace("hello", "write to bob@example.com");
        let j = judge_client_event(&set, &email, &opts());
        let ClientAction::Rewrite(r) = j.action else {
            panic!("{:?}", j.action)
        };
        assert!(r.contains("[EMAIL]") && !r.contains("bob@"), "{r}");
        // Instructions, tool descriptions, a function output: every string counts.
        for ev in [
            format!(r#"{{"type":"session.update","session":{{"instructions":"use {SECRET}"}}}}"#),
            format!(
                r#"{{"type":"response.create","response":{{"tools":[{{"type":"function","name":"f","description":"{SECRET}"}}]}}}}"#
            ),
            format!(
                r#"{{"type":"conversation.item.create","item":{{"type":"function_call_output","call_id":"c","output":"{SECRET}"}}}}"#
            ),
        ] {
            let j = judge_client_event(&set, &ev, &opts());
            assert!(matches!(j.action, ClientAction::Block { .. }), "{ev}");
        }
        assert!(matches!(
            judge_client_event(&set, "not json", &opts()).action,
            ClientAction::Invalid(_)
        ));
    }

    #[test]
    fn appended_audio_follows_the_opaque_policy() {
        let set = rules();
        let ev = r#"{"type":"input_audio_buffer.append","audio":"c2stQUJD"}"#;
        assert_eq!(
            judge_client_event(&set, ev, &opts()).action,
            ClientAction::Forward
        );
        let deny = InspectOptions {
            opaque: OpaquePolicy::Deny,
            ..opts()
        };
        assert_eq!(
            judge_client_event(&set, ev, &deny).action,
            ClientAction::Opaque
        );
    }

    fn delta(resp: &str, piece: &str) -> String {
        json!({"type": "response.output_text.delta", "response_id": resp, "item_id": "i1",
               "output_index": 0, "content_index": 0, "delta": piece})
        .to_string()
    }

    fn done(resp: &str, text: &str) -> String {
        json!({"type": "response.output_text.done", "response_id": resp, "item_id": "i1",
               "output_index": 0, "content_index": 0, "text": text})
        .to_string()
    }

    fn response_done(resp: &str, text: &str) -> String {
        json!({"type": "response.done", "response": {"id": resp, "status": "completed",
               "output": [{"type": "message", "content": [{"type": "text", "text": text}]}],
               "usage": {"total_tokens": 7, "input_tokens": 3, "output_tokens": 4}}})
        .to_string()
    }

    /// The responses the filter reported over.
    fn finished(out: &[ServerOut]) -> Vec<&ResponseSummary> {
        out.iter()
            .filter_map(|o| match o {
                ServerOut::Finished(s) => Some(&**s),
                _ => None,
            })
            .collect()
    }

    /// Runs events through a filter: the client's messages, and everything else.
    fn run(events: &[String]) -> (Vec<Value>, Vec<ServerOut>) {
        let mut f = ServerFilter::new(rules(), false, 8192);
        let mut out = Vec::new();
        for e in events {
            f.on_event(e, &mut out);
        }
        let client = out
            .iter()
            .filter_map(|o| match o {
                ServerOut::Client(s) => serde_json::from_str(s).ok(),
                _ => None,
            })
            .collect();
        (client, out)
    }

    fn released_text(client: &[Value]) -> String {
        client
            .iter()
            .filter(|v| v["type"] == "response.output_text.delta")
            .filter_map(|v| v["delta"].as_str())
            .collect()
    }

    #[test]
    fn a_value_split_across_deltas_at_every_offset_leaves_whole_and_redacted() {
        let text = "mail bob@example.com now";
        for cut in 1..text.len() {
            let (a, b) = text.split_at(cut);
            let (client, _) = run(&[
                delta("r1", a),
                delta("r1", b),
                done("r1", text),
                response_done("r1", text),
            ]);
            let released = released_text(&client);
            assert_eq!(released, "mail [EMAIL] now", "cut {cut}");
            for v in &client {
                assert!(!v.to_string().contains("bob@"), "cut {cut}: {v}");
            }
            let done = client
                .iter()
                .find(|v| v["type"] == "response.output_text.done")
                .expect("done");
            assert_eq!(
                done["text"], released,
                "the done event agrees with the deltas"
            );
        }
    }

    #[test]
    fn a_block_mid_response_cancels_it_and_suppresses_the_rest() {
        let (a, b) = SECRET.split_at(9);
        let (client, out) = run(&[
            delta("r1", "fine "),
            delta("r1", a),
            delta("r1", b),
            delta("r1", " after"),
            done("r1", "whatever"),
            json!({"type": "conversation.item.done", "item": {"id": "i1", "type": "message",
                   "content": [{"type": "text", "text": SECRET}]}})
            .to_string(),
            response_done("r1", "whatever"),
            delta("r2", "next response"),
            done("r2", "next response"),
            response_done("r2", "next response"),
        ]);
        assert!(out.iter().any(|o| matches!(o, ServerOut::Upstream(s) if s.contains("response.cancel") && s.contains("r1"))));
        let ended: Vec<&ServerOut> = out
            .iter()
            .filter(|o| matches!(o, ServerOut::Ended { .. }))
            .collect();
        assert!(
            matches!(ended[..], [ServerOut::Ended { response: Some(r), rejection: Rejection::ResponseBlocked { .. } }] if r == "r1"),
            "one block, told once (the item's own events are suppressed with it): {ended:?}"
        );
        let r1: Vec<&Value> = client
            .iter()
            .filter(|v| v["response_id"] == "r1" || v["response"]["id"] == "r1")
            .collect();
        let text: String = r1.iter().filter_map(|v| v["delta"].as_str()).collect();
        assert_eq!(text, "fine ", "nothing of the secret nor after it");
        assert!(!client.iter().any(|v| v.to_string().contains(SECRET)));
        let last = r1.last().expect("r1 ends");
        assert_eq!(last["type"], "response.done");
        assert_eq!(last["response"]["status"], "cancelled");
        assert_eq!(last["response"]["usage"]["total_tokens"], 7);
        // The session goes on: the next response is filtered as usual.
        assert_eq!(
            client
                .iter()
                .filter(|v| v["response_id"] == "r2")
                .filter_map(|v| v["delta"].as_str())
                .collect::<String>(),
            "next response"
        );
        let finished = finished(&out);
        assert_eq!(finished.len(), 2);
        assert!(finished[0].blocked_by.is_some());
        assert!(finished[1].blocked_by.is_none());
    }

    #[test]
    fn whole_item_events_and_transcriptions_are_inspected() {
        let item = json!({"type": "conversation.item.done", "item": {"id": "i9", "type": "message",
            "content": [{"type": "input_text", "text": "to bob@example.com"}]}})
        .to_string();
        let (client, _) = run(&[item]);
        assert!(client[0].to_string().contains("[EMAIL]"));
        let t = |kind: &str, field: &str, s: &str| {
            json!({"type": format!("conversation.item.input_audio_transcription.{kind}"),
                   "item_id": "i2", "content_index": 0, field: s})
            .to_string()
        };
        let (client, _) = run(&[
            t("delta", "delta", "it is bob@exa"),
            t("delta", "delta", "mple.com ok"),
            t("completed", "transcript", "it is bob@example.com ok"),
        ]);
        assert!(
            !client.iter().any(|v| v.to_string().contains("bob@")),
            "{client:?}"
        );
        let deltas: String = client.iter().filter_map(|v| v["delta"].as_str()).collect();
        assert_eq!(deltas, "it is [EMAIL] ok");
    }

    #[test]
    fn output_audio_passes_and_non_json_never_does() {
        let audio = json!({"type": "response.output_audio.delta", "response_id": "r1", "delta": "c2stQUJDREVGR0hJSktMTU5PUFFSU1Q="}).to_string();
        let (client, out) = run(&[audio, "plain text".to_string()]);
        assert_eq!(client.len(), 1);
        assert!(out.iter().any(|o| matches!(
            o,
            ServerOut::Ended {
                rejection: Rejection::StreamUninspectable(_),
                ..
            }
        )));
    }

    /// Whether any client message carries `needle`.
    fn sent(client: &[Value], needle: &str) -> bool {
        client.iter().any(|v| v.to_string().contains(needle))
    }

    fn uninspectable(out: &[ServerOut]) -> usize {
        out.iter()
            .filter(|o| {
                matches!(
                    o,
                    ServerOut::Ended {
                        rejection: Rejection::StreamUninspectable(_),
                        ..
                    }
                )
            })
            .count()
    }

    #[test]
    fn the_strings_beside_an_output_audio_delta_are_inspected() {
        // The delta is sound and passes as it is; a field beside it is text like any other.
        let audio = |extra: &str| {
            json!({"type": "response.output_audio.delta", "response_id": "r1", "item_id": "i1",
                   "output_index": 0, "content_index": 0, "delta": "c2stQUJDREVGR0hJSktMTU5PUFFSU1Q=",
                   "note": extra})
            .to_string()
        };
        let (client, _) = run(&[audio("mail bob@example.com")]);
        assert_eq!(client.len(), 1, "{client:?}");
        assert_eq!(client[0]["note"], "mail [EMAIL]");
        assert_eq!(client[0]["delta"], "c2stQUJDREVGR0hJSktMTU5PUFFSU1Q=");
        let (client, out) = run(&[audio(SECRET), audio("fine")]);
        assert!(client.is_empty(), "{client:?}");
        assert!(out.iter().any(|o| matches!(o, ServerOut::Ended { response: Some(r), rejection: Rejection::ResponseBlocked { .. } } if r == "r1")));
    }

    #[test]
    fn the_strings_beside_appended_audio_are_inspected() {
        let set = rules();
        let append = |extra: &str| {
            json!({"type": "input_audio_buffer.append", "audio": "c2stQUJD/+sk-ABCDEFGHIJKLMNOPQRST", "note": extra})
                .to_string()
        };
        assert!(matches!(
            judge_client_event(&set, &append(SECRET), &opts()).action,
            ClientAction::Block { .. }
        ));
        let j = judge_client_event(&set, &append("to bob@example.com"), &opts());
        assert_eq!(
            j.action,
            ClientAction::Rewrite(append("to [EMAIL]")),
            "redacted beside the audio, the audio as it came"
        );
        // The audio itself is sound, whatever its bytes spell.
        assert_eq!(
            judge_client_event(&set, &append("fine"), &opts()).action,
            ClientAction::Forward
        );
    }

    #[test]
    fn what_has_ended_does_not_start_again_in_a_fresh_filter() {
        // A text released whole at its end, then a piece of it again: a client joins the two. Responses,
        // transcriptions and the events outside both.
        let (a, b) = ("key sk-ABCDEFGHIJ", "KLMNOPQRST more text");
        let transcription = |kind: &str, field: &str, s: &str| {
            json!({"type": format!("conversation.item.input_audio_transcription.{kind}"),
                   "item_id": "t1", "content_index": 0, field: s})
            .to_string()
        };
        let loose = |s: &str| json!({"type": "response.output_text.delta", "delta": s}).to_string();
        let sessions = [
            vec![delta("r1", a), response_done("r1", a), delta("r1", b)],
            vec![
                transcription("delta", "delta", a),
                transcription("completed", "transcript", a),
                transcription("delta", "delta", b),
            ],
            vec![
                loose(a),
                json!({"type": "response.output_text.done", "text": a}).to_string(),
                loose("KL"),
                loose("MNOPQRST more text"),
            ],
        ];
        for events in sessions {
            let (client, out) = run(&events);
            let joined: String = client.iter().filter_map(|v| v["delta"].as_str()).collect();
            assert!(!joined.contains("sk-ABCDEFGHIJKLMNOPQRST"), "{joined}");
            assert!(!joined.contains("MNOPQRST"), "{joined}");
            assert!(uninspectable(&out) > 0, "{out:?}");
        }
    }

    #[test]
    fn an_id_of_another_type_does_not_move_an_event_out_of_its_response() {
        let (a, b) = ("key sk-ABCDEFGHIJ", "KLMNOPQRST more text");
        let mut late: Value = serde_json::from_str(&delta("r1", b)).expect("json");
        late["event_id"] = json!(3);
        let (client, out) = run(&[delta("r1", a), done("r1", a), late.to_string()]);
        assert!(!sent(&client, "KLMNOPQRST"), "{client:?}");
        assert!(uninspectable(&out) > 0);
        // An id that is not a string: the event cannot be keyed as a client keys it.
        let mut odd: Value = serde_json::from_str(&delta("r1", "hello")).expect("json");
        odd["response_id"] = json!(1);
        let (client, out) = run(&[odd.to_string()]);
        assert!(client.is_empty(), "{client:?}");
        assert_eq!(uninspectable(&out), 1);
    }

    #[test]
    fn the_emptied_done_carries_nothing_the_rules_block_or_redact() {
        let (client, _) = run(&[
            delta("r1", SECRET),
            json!({"type": "response.done", "response": {"id": "r1", "status": "completed",
                   "usage": {"total_tokens": 7, "note": "bob@example.com"}}})
            .to_string(),
        ]);
        let done = client
            .iter()
            .find(|v| v["type"] == "response.done")
            .expect("emptied done");
        assert_eq!(done["response"]["status"], "cancelled");
        assert!(!sent(&client, "bob@"), "{client:?}");
        // A response whose id is itself a value the rules block.
        let (client, out) = run(&[
            delta(SECRET, "hello"),
            json!({"type": "response.done", "response": {"id": SECRET}}).to_string(),
        ]);
        assert!(!sent(&client, SECRET), "{client:?}");
        assert!(out.iter().any(|o| matches!(o, ServerOut::Finished(_))));
    }

    #[test]
    fn a_response_refused_for_too_many_open_is_reported_and_not_started_later() {
        let mut f = ServerFilter::new(rules(), false, 8192);
        let mut out = Vec::new();
        for i in 0..MAX_OPEN {
            f.on_event(&delta(&format!("r{i}"), "sk-ABC"), &mut out);
        }
        f.on_event(&delta("late", "hello"), &mut out);
        let finished = finished(&out);
        assert!(
            matches!(finished[..], [s] if s.response_id == "late" && s.side.decision == super::super::Decision::Error),
            "{out:?}"
        );
        out.clear();
        f.on_event(&response_done("r0", ""), &mut out);
        f.on_event(&delta("late", " world"), &mut out);
        assert!(
            !out.iter()
                .any(|o| matches!(o, ServerOut::Client(s) if s.contains("world"))),
            "{out:?}"
        );
    }
}
