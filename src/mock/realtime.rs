//! The mock's Realtime API: `GET /v1/realtime` (any query, e.g. `?model=gpt-realtime`) upgraded to a WebSocket,
//! speaking OpenAI's Realtime GA event shapes well enough to test and benchmark a gateway that inspects them.
//! RFC 6455 framing (masking, fragmentation, control frames, the closing handshake) is tungstenite's.
//!
//! **Handshake.** The mock's HTTP/1 reader has already read the request head; the 101 is written here (with
//! `Sec-WebSocket-Accept`) and any bytes the reader buffered past the head are handed to the WebSocket, so frames
//! a client sends without waiting for the 101 are not lost. Of the offered `Sec-WebSocket-Protocol`s the first
//! that does not start with `openai-insecure-api-key.` is selected (none if there is none; a strict client
//! such as tungstenite then fails the handshake, as RFC 6455 lets it). permessage-deflate is never accepted.
//! `x-mock-status: N` (or `MockConfig::status`) refuses the upgrade with that status and an OpenAI-shaped error
//! (its message `x-mock-content`), `x-mock-latency-ms` delays the answer; a GET without a valid upgrade is
//! refused with 426 or 400. The upgrade request is also recorded with the plain requests (`/__mock/requests`),
//! marked completed when its session ends.
//!
//! **Session.** On open the mock sends `session.created` (the model from the query, default `gpt-realtime`).
//! `session.update` → `session.updated` (the session object with the update's fields merged in);
//! `conversation.item.create` → `conversation.item.created` (the item with an `id` if it had none and
//! `"status":"completed"`; the last `input_text` text or `function_call_output` output is remembered);
//! `response.create` → one streamed response (below); `response.cancel` → stops the response being streamed,
//! which ends with `response.done` status `"cancelled"` (with no response streaming: an `error` event
//! `response_cancel_not_active`, as the real API answers); a `response.create` while one streams → an `error`
//! event `conversation_already_has_active_response`. Pings are answered with pongs (by tungstenite).
//!
//! **Scripts.** Each `response.create` takes the next script queued with `POST /__mock/realtime/script` (a
//! [`Script`] object or an array of them, unknown fields refused), or the default script when none waits.
//! Ids are stable per session: `resp_N`, `item_N`, `event_N` (every event has its own), `call_N`.
//!
//! **Record.** `GET /__mock/realtime` → `{"sessions":[…]}`, oldest first, each a [`SessionRecord`]: the
//! handshake (path with query, headers lower-cased, offered and selected protocols), every message received in
//! order (text: the JSON if it parses, else the string; binary: `{"binary": LEN}`), pings, the close frame and
//! whether the session has ended. `DELETE /__mock/realtime` forgets the sessions and the queued scripts.
//! Bounded: at most [`SESSION_CAP`] sessions (the oldest dropped first), [`MESSAGE_CAP`] messages kept per
//! session (the oldest dropped first; `received_total` counts them all) and [`SCRIPT_CAP`] queued scripts.
//!
//! It must not cost a thread per session or spin: a session is the connection's own task, waiting on its
//! socket, a timer or a release.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use super::http1::Request;
use super::{Behaviour, MockState};

/// The upgraded path (any query).
pub const PATH: &str = "/v1/realtime";
/// Most sessions kept in the record; the oldest is dropped first.
pub const SESSION_CAP: usize = 1_000;
/// Most received messages kept per session; the oldest is dropped first.
pub const MESSAGE_CAP: usize = 10_000;
/// Most scripts waiting for a `response.create`; more are refused with 400.
pub const SCRIPT_CAP: usize = 10_000;
/// The model of `session.created` when the query names none.
const DEFAULT_MODEL: &str = "gpt-realtime";
/// Subprotocols carrying a credential (the browsers' way to authenticate): offered, never selected.
const KEY_PROTOCOL_PREFIX: &str = "openai-insecure-api-key.";
/// The answer of a default script when the session has seen no input text.
const DEFAULT_DELTAS: [&str; 3] = ["Hello", " from", " the mock."];
/// Frames a fragmented message is cut into (at most).
const FRAGMENTS: usize = 4;
/// A session's read buffer to begin with (tungstenite's default is 128 KiB, allocated up front: 1,000 idle
/// sessions would hold 125 MiB); it grows for a larger message.
const READ_BUFFER: usize = 8 * 1024;
/// `usage.input_tokens` of a `response.done` when the script does not say.
const DEFAULT_INPUT_TOKENS: u64 = 5;

/// The realtime part of the mock's state: the record and the queued scripts.
#[derive(Default)]
pub struct Realtime {
    opened: AtomicU64,
    sessions: Mutex<VecDeque<Arc<Mutex<SessionRecord>>>>,
    scripts: Mutex<VecDeque<Script>>,
}

impl Realtime {
    /// Queues the script (or array of scripts) in `body`; the error says what is wrong with it.
    pub(super) fn queue(&self, body: &[u8]) -> Result<(), String> {
        let value: Value =
            serde_json::from_slice(body).map_err(|e| format!("invalid JSON: {e}"))?;
        let scripts = match value {
            Value::Array(items) => items
                .into_iter()
                .map(serde_json::from_value)
                .collect::<Result<Vec<Script>, _>>(),
            one => serde_json::from_value(one).map(|s| vec![s]),
        }
        .map_err(|e| format!("invalid script: {e}"))?;
        let mut queue = self.scripts.lock().map_err(|_| "poisoned".to_string())?;
        if queue.len() + scripts.len() > SCRIPT_CAP {
            return Err(format!("at most {SCRIPT_CAP} scripts may wait"));
        }
        queue.extend(scripts);
        Ok(())
    }

    fn next_script(&self) -> Option<Script> {
        self.scripts.lock().ok()?.pop_front()
    }

    /// `{"sessions":[…]}`, oldest first.
    pub(super) fn sessions_json(&self) -> Vec<u8> {
        // Each record is read under its own lock, not under the list's: a session never waits for a reader of
        // all the others.
        let sessions: Vec<Arc<Mutex<SessionRecord>>> = self
            .sessions
            .lock()
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        let list: Vec<Value> = sessions
            .iter()
            .filter_map(|s| s.lock().ok().and_then(|r| serde_json::to_value(&*r).ok()))
            .collect();
        serde_json::to_vec(&json!({ "sessions": list })).unwrap_or_default()
    }

    /// Forgets the recorded sessions (open ones go on, unrecorded) and the queued scripts.
    pub(super) fn clear(&self) {
        if let Ok(mut s) = self.sessions.lock() {
            s.clear();
        }
        if let Ok(mut s) = self.scripts.lock() {
            s.clear();
        }
    }

    fn open(&self, record: SessionRecord) -> Arc<Mutex<SessionRecord>> {
        let record = Arc::new(Mutex::new(record));
        if let Ok(mut s) = self.sessions.lock() {
            if s.len() >= SESSION_CAP {
                s.pop_front();
            }
            s.push_back(record.clone());
        }
        record
    }
}

/// What one `response.create` streams. Every field is optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Script {
    /// The pieces of the answer. Default: the session's last input text (an `input_text`, or a
    /// `function_call_output`'s output) cut in 3 pieces, else `["Hello", " from", " the mock."]`.
    #[serde(default)]
    pub deltas: Option<Vec<String>>,
    /// Which events carry the deltas.
    #[serde(default)]
    pub kind: Kind,
    /// Pause between deltas (the session still reads, so a `response.cancel` stops the stream).
    #[serde(default)]
    pub delay_ms: u64,
    /// After the first delta, wait for `POST /__mock/release/{hold}` or a `response.cancel`.
    #[serde(default)]
    pub hold: Option<String>,
    /// Send exactly these events instead of everything generated (a string as its own text, anything else as
    /// JSON), paced and held like deltas, then nothing else: no `response.done`.
    #[serde(default)]
    pub events: Option<Vec<Value>>,
    /// Sent as one binary message before the first delta (with `events`: before the first event).
    #[serde(default)]
    pub binary: Option<String>,
    /// `response.done`'s usage; default `input_tokens` 5, `output_tokens` the number of deltas sent.
    #[serde(default)]
    pub usage: Option<Usage>,
    /// Send each delta event (with `events`: each event) as a fragmented message: a text frame and
    /// continuation frames, cut at byte offsets (possibly inside a character).
    #[serde(default)]
    pub fragment: bool,
    /// The function's name for kind `function_call` (default `mock_tool`).
    #[serde(default)]
    pub name: Option<String>,
    /// The call id for kind `function_call` (default `call_N`).
    #[serde(default)]
    pub call_id: Option<String>,
    /// Each delta event carries `sent_at_us`: the wall-clock time it was written, in microseconds since the
    /// Unix epoch (the realtime benchmark measures what a delta gains on its way through the gateway).
    #[serde(default)]
    pub stamp: bool,
}

/// The events a script's deltas travel in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// `response.output_text.delta` / `.done` (`text`), a `message` item with a `text` part.
    #[default]
    Text,
    /// `response.output_audio_transcript.delta` / `.done` (`transcript`), a `message` item with an `audio` part.
    AudioTranscript,
    /// `response.function_call_arguments.delta` / `.done` (`arguments`), a `function_call` item.
    FunctionCall,
    /// `conversation.item.input_audio_transcription.delta` / `.completed` (`transcript`) for the last item the
    /// client created, then `response.done`: no other response events.
    InputTranscription,
}

/// Token counts of a `response.done`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
}

/// One session as the mock saw it.
#[derive(Debug, Serialize)]
pub struct SessionRecord {
    /// The `session.id` sent in `session.created`.
    id: String,
    /// The upgrade request's path and query.
    path: String,
    /// The upgrade request's headers, names lower-cased (repeated ones joined with `", "`).
    headers: Map<String, Value>,
    /// Every offered `Sec-WebSocket-Protocol`, in order.
    protocols: Vec<String>,
    /// The one selected, if any.
    protocol: Option<String>,
    /// The last [`MESSAGE_CAP`] messages received, in order.
    received: VecDeque<Value>,
    /// All messages received (pings, pongs and close frames not counted).
    received_total: u64,
    /// Messages sent (a fragmented one counts once).
    sent: u64,
    pings: u64,
    /// `response.create`s answered with a stream.
    responses: u64,
    /// Responses a `response.cancel` stopped.
    cancelled: u64,
    /// Whether a close frame was received.
    closed: bool,
    /// Its status code (`null`: none received, or none in it).
    close_code: Option<u16>,
    /// Whether the session is over (closed, failed, or the mock stopped).
    ended: bool,
}

impl SessionRecord {
    fn new(
        id: String,
        path: String,
        headers: Map<String, Value>,
        protocols: Vec<String>,
        protocol: Option<String>,
    ) -> Self {
        Self {
            id,
            path,
            headers,
            protocols,
            protocol,
            received: VecDeque::new(),
            received_total: 0,
            sent: 0,
            pings: 0,
            responses: 0,
            cancelled: 0,
            closed: false,
            close_code: None,
            ended: false,
        }
    }

    /// Keeps `message`, dropping the oldest kept beyond [`MESSAGE_CAP`].
    fn receive(&mut self, message: Value) {
        if self.received.len() >= MESSAGE_CAP {
            self.received.pop_front();
        }
        self.received.push_back(message);
        self.received_total += 1;
    }
}

/// Whether `req` is for the realtime endpoint (a GET of [`PATH`]; any query).
pub(super) fn wants(req: &Request) -> bool {
    req.method == "GET" && req.path.trim_end_matches('/') == PATH
}

/// Why the upgrade is refused: a status and an OpenAI-shaped error body; `None` to upgrade.
pub(super) fn refusal(req: &Request, b: &Behaviour) -> Option<(u16, Vec<u8>)> {
    if let Some(status) = b.status {
        let message = b
            .content
            .clone()
            .unwrap_or_else(|| format!("mock error {status}"));
        return Some((status, error_body(&message, "server_error", "mock_error")));
    }
    let upgrade = req
        .header("upgrade")
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"));
    let connection = req.header("connection").is_some_and(|v| {
        v.split(',')
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
    });
    if !upgrade || !connection {
        let message = "mock: /v1/realtime expects a WebSocket upgrade";
        return Some((
            426,
            error_body(message, "invalid_request_error", "upgrade_required"),
        ));
    }
    let version = req.header("sec-websocket-version").map(str::trim) == Some("13");
    let key = req
        .header("sec-websocket-key")
        .is_some_and(|k| !k.trim().is_empty());
    if !version || !key {
        let message =
            "mock: a WebSocket upgrade needs Sec-WebSocket-Version: 13 and a Sec-WebSocket-Key";
        return Some((
            400,
            error_body(message, "invalid_request_error", "invalid_upgrade"),
        ));
    }
    None
}

fn error_body(message: &str, kind: &str, code: &str) -> Vec<u8> {
    json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
        .to_string()
        .into_bytes()
}

/// Every offered subprotocol, in order (the header may repeat and holds comma-separated lists).
fn offered_protocols(req: &Request) -> Vec<String> {
    req.headers
        .iter()
        .filter(|(k, _)| k == "sec-websocket-protocol")
        .flat_map(|(_, v)| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect()
}

/// The first offered subprotocol that is not a credential.
fn select_protocol(offered: &[String]) -> Option<String> {
    offered
        .iter()
        .find(|p| !p.starts_with(KEY_PROTOCOL_PREFIX))
        .cloned()
}

/// Upgrades the connection (the handshake was checked by [`refusal`]) and runs the session until it ends.
/// `buffered` holds the bytes the HTTP reader read past the request head.
pub(super) async fn serve(
    mut stream: TcpStream,
    buffered: Vec<u8>,
    req: &Request,
    state: &Arc<MockState>,
) -> std::io::Result<()> {
    let protocols = offered_protocols(req);
    let protocol = select_protocol(&protocols);
    let key = req.header("sec-websocket-key").unwrap_or_default().trim();
    let mut head = format!(
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: {}\r\n",
        derive_accept_key(key.as_bytes())
    );
    if let Some(p) = &protocol {
        head.push_str(&format!("sec-websocket-protocol: {p}\r\n"));
    }
    head.push_str("x-mock: 1\r\n\r\n");
    stream.write_all(head.as_bytes()).await?;

    let n = state.realtime.opened.fetch_add(1, Ordering::Relaxed) + 1;
    let model = req
        .query
        .as_deref()
        .and_then(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == "model")
                .map(|(_, v)| v.into_owned())
        })
        .unwrap_or_else(|| DEFAULT_MODEL.to_string());
    let id = format!("sess_mock{n}");
    let mut headers = Map::new();
    for (k, v) in &req.headers {
        match headers.get_mut(k) {
            Some(Value::String(prev)) => {
                prev.push_str(", ");
                prev.push_str(v);
            }
            _ => {
                headers.insert(k.clone(), Value::String(v.clone()));
            }
        }
    }
    let path = match &req.query {
        Some(q) => format!("{}?{q}", req.path),
        None => req.path.clone(),
    };
    let record = state.realtime.open(SessionRecord::new(
        id.clone(),
        path,
        headers,
        protocols,
        protocol,
    ));
    let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER);
    let ws =
        WebSocketStream::from_partially_read(stream, buffered, Role::Server, Some(config)).await;
    let mut session = Session {
        ws,
        state: state.clone(),
        record,
        session: json!({"id": id, "object": "realtime.session", "model": model, "instructions": ""}),
        events: 0,
        responses: 0,
        items: 0,
        last_input: None,
        last_item_id: None,
    };
    session.run().await
}

/// What an incoming message asks of the session.
enum Incoming {
    Nothing,
    Respond,
    Cancel,
    Closed,
}

/// How a wait inside a response ended.
#[derive(PartialEq, Eq)]
enum Flow {
    Go,
    Cancel,
    Closed,
}

/// One open session: the connection's task owns it.
struct Session {
    ws: WebSocketStream<TcpStream>,
    state: Arc<MockState>,
    record: Arc<Mutex<SessionRecord>>,
    /// The session object, as `session.update`s have shaped it.
    session: Value,
    events: u64,
    responses: u64,
    items: u64,
    /// The last `input_text` text or `function_call_output` output the client sent.
    last_input: Option<String>,
    /// The id of the last item the client created.
    last_item_id: Option<String>,
}

impl Drop for Session {
    // Marked here so that a session dropped by the mock's stop counts as ended too.
    fn drop(&mut self) {
        self.note(|r| r.ended = true);
    }
}

fn io(e: WsError) -> std::io::Error {
    match e {
        WsError::Io(e) => e,
        WsError::ConnectionClosed | WsError::AlreadyClosed => {
            std::io::ErrorKind::NotConnected.into()
        }
        e => std::io::Error::other(e.to_string()),
    }
}

impl Session {
    fn note(&self, f: impl FnOnce(&mut SessionRecord)) {
        if let Ok(mut r) = self.record.lock() {
            f(&mut r);
        }
    }

    async fn run(&mut self) -> std::io::Result<()> {
        let created = json!({ "session": self.session });
        self.emit("session.created", created, false).await?;
        // Until the stream ends: after a close frame tungstenite answers it on the next read, then ends.
        while let Some(msg) = self.ws.next().await {
            if let Incoming::Respond = self.on_message(msg.map_err(io)?, false).await? {
                self.respond().await?;
            }
        }
        Ok(())
    }

    /// Records `msg` and answers it. `streaming`: a response is being streamed.
    async fn on_message(&mut self, msg: Message, streaming: bool) -> std::io::Result<Incoming> {
        let text = match msg {
            Message::Text(t) => t,
            Message::Binary(b) => {
                self.remember(json!({ "binary": b.len() }));
                return Ok(Incoming::Nothing);
            }
            Message::Ping(_) => {
                self.note(|r| r.pings += 1);
                return Ok(Incoming::Nothing);
            }
            Message::Pong(_) | Message::Frame(_) => return Ok(Incoming::Nothing),
            Message::Close(frame) => {
                let code = frame.map(|f| u16::from(f.code));
                self.note(|r| {
                    r.closed = true;
                    r.close_code = code;
                });
                return Ok(Incoming::Closed);
            }
        };
        let Ok(event) = serde_json::from_str::<Value>(text.as_str()) else {
            self.remember(Value::String(text.as_str().to_string()));
            return Ok(Incoming::Nothing);
        };
        let kind = event["type"].as_str().unwrap_or_default().to_string();
        let update = event.get("session").cloned();
        let item = event.get("item").cloned();
        // Recorded before it is answered: a client that saw the answer finds the message in the record.
        self.remember(event);
        match kind.as_str() {
            "session.update" => {
                if let (Value::Object(current), Some(Value::Object(update))) =
                    (&mut self.session, update)
                {
                    for (k, v) in update {
                        if k != "id" && k != "object" {
                            current.insert(k, v);
                        }
                    }
                }
                let updated = json!({ "session": self.session });
                self.emit("session.updated", updated, false).await?;
            }
            "conversation.item.create" => {
                let mut item = item.unwrap_or_else(|| json!({}));
                if let Value::Object(m) = &mut item {
                    if !m.contains_key("id") {
                        self.items += 1;
                        m.insert("id".into(), format!("item_{}", self.items).into());
                    }
                    m.insert("status".into(), "completed".into());
                }
                if let Some(text) = input_text(&item) {
                    self.last_input = Some(text);
                }
                let previous = self.last_item_id.take();
                self.last_item_id = item["id"].as_str().map(str::to_string);
                let created = json!({"previous_item_id": previous, "item": item});
                self.emit("conversation.item.created", created, false)
                    .await?;
            }
            "response.create" if streaming => {
                let error = json!({"error": {"type": "invalid_request_error", "code": "conversation_already_has_active_response",
                    "message": "Conversation already has an active response in progress.", "param": null, "event_id": null}});
                self.emit("error", error, false).await?;
            }
            "response.create" => return Ok(Incoming::Respond),
            "response.cancel" if streaming => return Ok(Incoming::Cancel),
            "response.cancel" => {
                let error = json!({"error": {"type": "invalid_request_error", "code": "response_cancel_not_active",
                    "message": "Cancellation failed: no active response found.", "param": null, "event_id": null}});
                self.emit("error", error, false).await?;
            }
            _ => {}
        }
        Ok(Incoming::Nothing)
    }

    fn remember(&self, message: Value) {
        self.note(|r| r.receive(message));
    }

    /// Sends one event: `type`, a fresh `event_id`, then `body`'s fields.
    async fn emit(&mut self, kind: &str, body: Value, fragment: bool) -> std::io::Result<()> {
        self.events += 1;
        let mut event = Map::new();
        event.insert("type".into(), kind.into());
        event.insert("event_id".into(), format!("event_{}", self.events).into());
        if let Value::Object(fields) = body {
            event.extend(fields);
        }
        self.send_text(Value::Object(event).to_string(), fragment)
            .await
    }

    async fn send_text(&mut self, text: String, fragment: bool) -> std::io::Result<()> {
        if fragment && text.len() > 1 {
            let bytes = Bytes::from(text);
            let piece = bytes.len().div_ceil(FRAGMENTS);
            let mut at = 0;
            while at < bytes.len() {
                let end = (at + piece).min(bytes.len());
                let opcode = if at == 0 { Data::Text } else { Data::Continue };
                let frame = Frame::message(
                    bytes.slice(at..end),
                    OpCode::Data(opcode),
                    end == bytes.len(),
                );
                // One flush per frame: the peer sees the pieces arrive apart.
                self.ws.send(Message::Frame(frame)).await.map_err(io)?;
                at = end;
            }
        } else {
            self.ws.send(Message::text(text)).await.map_err(io)?;
        }
        self.note(|r| r.sent += 1);
        Ok(())
    }

    async fn send_binary(&mut self, data: &str) -> std::io::Result<()> {
        let msg = Message::binary(data.as_bytes().to_vec());
        self.ws.send(msg).await.map_err(io)?;
        self.note(|r| r.sent += 1);
        Ok(())
    }

    /// Waits for `done` while still reading (and answering) the client: a `response.cancel` or the end of the
    /// session stops the wait.
    async fn until(&mut self, done: impl Future<Output = ()>) -> std::io::Result<Flow> {
        tokio::pin!(done);
        loop {
            let msg = tokio::select! {
                () = &mut done => return Ok(Flow::Go),
                msg = self.ws.next() => msg,
            };
            let Some(msg) = msg else {
                return Ok(Flow::Closed);
            };
            match self.on_message(msg.map_err(io)?, true).await? {
                Incoming::Cancel => return Ok(Flow::Cancel),
                Incoming::Closed => return Ok(Flow::Closed),
                Incoming::Nothing | Incoming::Respond => {}
            }
        }
    }

    /// The pause between two deltas (none when the delay is zero).
    async fn pause(&mut self, delay: Duration) -> std::io::Result<Flow> {
        if delay.is_zero() {
            return Ok(Flow::Go);
        }
        self.until(tokio::time::sleep(delay)).await
    }

    async fn hold(&mut self, token: &str) -> std::io::Result<Flow> {
        let state = self.state.clone();
        self.until(state.wait_release(token)).await
    }

    /// Streams one response for a `response.create`.
    async fn respond(&mut self) -> std::io::Result<()> {
        let script = self.state.realtime.next_script().unwrap_or_default();
        self.note(|r| r.responses += 1);
        let delay = Duration::from_millis(script.delay_ms);
        if let Some(events) = &script.events {
            if let Some(b) = &script.binary {
                self.send_binary(b).await?;
            }
            for (i, event) in events.iter().enumerate() {
                if i > 0 && self.pause(delay).await? != Flow::Go {
                    return Ok(());
                }
                let text = match event {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                self.send_text(text, script.fragment).await?;
                if i == 0 {
                    if let Some(token) = &script.hold {
                        if self.hold(token).await? != Flow::Go {
                            return Ok(());
                        }
                    }
                }
            }
            return Ok(());
        }

        self.responses += 1;
        let item_id = match (script.kind, &self.last_item_id) {
            (Kind::InputTranscription, Some(id)) => id.clone(),
            _ => {
                self.items += 1;
                format!("item_{}", self.items)
            }
        };
        let reply = Reply {
            kind: script.kind,
            response_id: format!("resp_{}", self.responses),
            item_id,
            call_id: script
                .call_id
                .clone()
                .unwrap_or_else(|| format!("call_{}", self.responses)),
            name: script.name.clone().unwrap_or_else(|| "mock_tool".into()),
        };
        let deltas = script
            .deltas
            .clone()
            .unwrap_or_else(|| default_deltas(self.last_input.as_deref()));
        for (kind, body) in reply.opening() {
            self.emit(kind, body, false).await?;
        }
        if let Some(b) = &script.binary {
            self.send_binary(b).await?;
        }
        let mut text = String::new();
        let mut sent = 0u64;
        let mut flow = Flow::Go;
        for (i, delta) in deltas.iter().enumerate() {
            if i > 0 {
                flow = self.pause(delay).await?;
                if flow != Flow::Go {
                    break;
                }
            }
            let (kind, mut body) = reply.delta(delta);
            if script.stamp {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_micros() as u64);
                body["sent_at_us"] = json!(now);
            }
            self.emit(kind, body, script.fragment).await?;
            text.push_str(delta);
            sent += 1;
            if let (0, Some(token)) = (i, &script.hold) {
                flow = self.hold(token).await?;
                if flow != Flow::Go {
                    break;
                }
            }
        }
        let usage = script.usage.unwrap_or(Usage {
            input_tokens: DEFAULT_INPUT_TOKENS,
            output_tokens: sent,
        });
        match flow {
            Flow::Closed => Ok(()),
            Flow::Go => {
                for (kind, body) in reply.closing(&text) {
                    self.emit(kind, body, false).await?;
                }
                let (kind, body) = reply.done(false, &text, usage);
                self.emit(kind, body, false).await
            }
            Flow::Cancel => {
                self.note(|r| r.cancelled += 1);
                let (kind, body) = reply.done(true, &text, usage);
                self.emit(kind, body, false).await
            }
        }
    }
}

/// The text a client item carries for the default answer to echo.
fn input_text(item: &Value) -> Option<String> {
    if item["type"] == "function_call_output" {
        return item["output"].as_str().map(str::to_string);
    }
    item["content"]
        .as_array()?
        .iter()
        .filter(|c| c["type"] == "input_text")
        .filter_map(|c| c["text"].as_str())
        .next_back()
        .map(str::to_string)
}

/// The default script's deltas: `input` cut in 3 pieces at character boundaries (empty pieces left out), or
/// the fixed greeting when the session has seen no input text.
fn default_deltas(input: Option<&str>) -> Vec<String> {
    let Some(input) = input else {
        return DEFAULT_DELTAS.iter().map(|d| d.to_string()).collect();
    };
    let chars = input.chars().count();
    let cut = |k: usize| {
        input
            .char_indices()
            .nth(chars * k / 3)
            .map_or(input.len(), |(i, _)| i)
    };
    let (a, b) = (cut(1), cut(2));
    [&input[..a], &input[a..b], &input[b..]]
        .into_iter()
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect()
}

/// The generated events of one response (pure: ids in, event bodies out; `event_id`s are added on sending).
struct Reply {
    kind: Kind,
    response_id: String,
    item_id: String,
    call_id: String,
    name: String,
}

impl Reply {
    /// The output item, in progress (`text` `None`: no content yet) or finished.
    fn item(&self, status: &str, text: Option<&str>) -> Value {
        match self.kind {
            Kind::FunctionCall => {
                json!({"id": self.item_id, "type": "function_call", "status": status,
                "name": self.name, "call_id": self.call_id, "arguments": text.unwrap_or_default()})
            }
            _ => {
                let content: Vec<Value> = text.map(|t| self.part(t)).into_iter().collect();
                json!({"id": self.item_id, "type": "message", "role": "assistant", "status": status, "content": content})
            }
        }
    }

    /// The content part of a message item.
    fn part(&self, text: &str) -> Value {
        match self.kind {
            Kind::AudioTranscript => json!({"type": "audio", "transcript": text}),
            _ => json!({"type": "text", "text": text}),
        }
    }

    /// Where a delta belongs (the fields every delta and done event of a message part shares).
    fn part_address(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("response_id".into(), self.response_id.clone().into());
        m.insert("item_id".into(), self.item_id.clone().into());
        m.insert("output_index".into(), 0.into());
        m.insert("content_index".into(), 0.into());
        m
    }

    fn with(mut m: Map<String, Value>, fields: Value) -> Value {
        if let Value::Object(f) = fields {
            m.extend(f);
        }
        Value::Object(m)
    }

    /// The events before the first delta.
    fn opening(&self) -> Vec<(&'static str, Value)> {
        if self.kind == Kind::InputTranscription {
            return Vec::new();
        }
        let item = self.item("in_progress", None);
        let mut events = vec![
            (
                "response.created",
                json!({"response": {"id": self.response_id, "object": "realtime.response", "status": "in_progress", "output": []}}),
            ),
            (
                "response.output_item.added",
                json!({"response_id": self.response_id, "output_index": 0, "item": item}),
            ),
            ("conversation.item.added", json!({ "item": item })),
        ];
        if self.kind != Kind::FunctionCall {
            events.push((
                "response.content_part.added",
                Self::with(self.part_address(), json!({"part": self.part("")})),
            ));
        }
        events
    }

    /// One delta event.
    fn delta(&self, delta: &str) -> (&'static str, Value) {
        match self.kind {
            Kind::Text => (
                "response.output_text.delta",
                Self::with(self.part_address(), json!({ "delta": delta })),
            ),
            Kind::AudioTranscript => (
                "response.output_audio_transcript.delta",
                Self::with(self.part_address(), json!({ "delta": delta })),
            ),
            Kind::FunctionCall => (
                "response.function_call_arguments.delta",
                json!({"response_id": self.response_id, "item_id": self.item_id, "output_index": 0,
                    "call_id": self.call_id, "delta": delta}),
            ),
            Kind::InputTranscription => (
                "conversation.item.input_audio_transcription.delta",
                json!({"item_id": self.item_id, "content_index": 0, "delta": delta}),
            ),
        }
    }

    /// The events after the last delta of a completed response, before `response.done`.
    fn closing(&self, text: &str) -> Vec<(&'static str, Value)> {
        let item = self.item("completed", Some(text));
        let item_done = [
            (
                "response.output_item.done",
                json!({"response_id": self.response_id, "output_index": 0, "item": item}),
            ),
            ("conversation.item.done", json!({ "item": item })),
        ];
        let part_done = (
            "response.content_part.done",
            Self::with(self.part_address(), json!({"part": self.part(text)})),
        );
        match self.kind {
            Kind::Text => {
                let done = (
                    "response.output_text.done",
                    Self::with(self.part_address(), json!({ "text": text })),
                );
                [done, part_done].into_iter().chain(item_done).collect()
            }
            Kind::AudioTranscript => {
                let done = (
                    "response.output_audio_transcript.done",
                    Self::with(self.part_address(), json!({ "transcript": text })),
                );
                [done, part_done].into_iter().chain(item_done).collect()
            }
            Kind::FunctionCall => {
                let done = (
                    "response.function_call_arguments.done",
                    json!({"response_id": self.response_id, "item_id": self.item_id, "output_index": 0,
                        "call_id": self.call_id, "name": self.name, "arguments": text}),
                );
                [done].into_iter().chain(item_done).collect()
            }
            Kind::InputTranscription => vec![(
                "conversation.item.input_audio_transcription.completed",
                json!({"item_id": self.item_id, "content_index": 0, "transcript": text}),
            )],
        }
    }

    /// `response.done`, completed or cancelled (`text`: what was sent).
    fn done(&self, cancelled: bool, text: &str, usage: Usage) -> (&'static str, Value) {
        let output: Vec<Value> = match self.kind {
            Kind::InputTranscription => Vec::new(),
            _ => vec![self.item(
                if cancelled { "incomplete" } else { "completed" },
                Some(text),
            )],
        };
        let mut response = json!({"id": self.response_id, "object": "realtime.response",
            "status": if cancelled { "cancelled" } else { "completed" }, "output": output,
            "usage": {"total_tokens": usage.input_tokens + usage.output_tokens,
                "input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens}});
        if cancelled {
            response["status_details"] = json!({"type": "cancelled", "reason": "client_cancelled"});
        }
        ("response.done", json!({ "response": response }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(kind: Kind) -> Reply {
        Reply {
            kind,
            response_id: "resp_1".into(),
            item_id: "item_1".into(),
            call_id: "call_1".into(),
            name: "lookup".into(),
        }
    }

    /// Every event type of a whole response, in order.
    fn sequence(kind: Kind, deltas: &[&str]) -> Vec<&'static str> {
        let r = reply(kind);
        let text: String = deltas.concat();
        let usage = Usage {
            input_tokens: 5,
            output_tokens: deltas.len() as u64,
        };
        r.opening()
            .into_iter()
            .chain(deltas.iter().map(|d| r.delta(d)))
            .chain(r.closing(&text))
            .chain([r.done(false, &text, usage)])
            .map(|(k, _)| k)
            .collect()
    }

    #[test]
    fn each_kind_streams_its_own_event_sequence() {
        let cases: [(Kind, &[&str]); 4] = [
            (
                Kind::Text,
                &[
                    "response.created",
                    "response.output_item.added",
                    "conversation.item.added",
                    "response.content_part.added",
                    "response.output_text.delta",
                    "response.output_text.delta",
                    "response.output_text.done",
                    "response.content_part.done",
                    "response.output_item.done",
                    "conversation.item.done",
                    "response.done",
                ],
            ),
            (
                Kind::AudioTranscript,
                &[
                    "response.created",
                    "response.output_item.added",
                    "conversation.item.added",
                    "response.content_part.added",
                    "response.output_audio_transcript.delta",
                    "response.output_audio_transcript.delta",
                    "response.output_audio_transcript.done",
                    "response.content_part.done",
                    "response.output_item.done",
                    "conversation.item.done",
                    "response.done",
                ],
            ),
            (
                Kind::FunctionCall,
                &[
                    "response.created",
                    "response.output_item.added",
                    "conversation.item.added",
                    "response.function_call_arguments.delta",
                    "response.function_call_arguments.delta",
                    "response.function_call_arguments.done",
                    "response.output_item.done",
                    "conversation.item.done",
                    "response.done",
                ],
            ),
            (
                Kind::InputTranscription,
                &[
                    "conversation.item.input_audio_transcription.delta",
                    "conversation.item.input_audio_transcription.delta",
                    "conversation.item.input_audio_transcription.completed",
                    "response.done",
                ],
            ),
        ];
        for (kind, want) in cases {
            assert_eq!(sequence(kind, &["a", "b"]), want, "{kind:?}");
        }
    }

    #[test]
    fn finished_text_carries_the_concatenated_deltas() {
        let r = reply(Kind::FunctionCall);
        let closing = r.closing("{\"q\":1}");
        assert_eq!(closing[0].1["arguments"], "{\"q\":1}");
        assert_eq!(closing[0].1["name"], "lookup");
        assert_eq!(closing[1].1["item"]["arguments"], "{\"q\":1}");
        let r = reply(Kind::AudioTranscript);
        let closing = r.closing("hi there");
        assert_eq!(closing[0].1["transcript"], "hi there");
        assert_eq!(
            closing[1].1["part"],
            json!({"type": "audio", "transcript": "hi there"})
        );
    }

    #[test]
    fn a_cancelled_response_is_done_with_what_was_sent() {
        let usage = Usage {
            input_tokens: 5,
            output_tokens: 1,
        };
        let (kind, body) = reply(Kind::Text).done(true, "Hel", usage);
        assert_eq!(kind, "response.done");
        assert_eq!(body["response"]["status"], "cancelled");
        assert_eq!(body["response"]["output"][0]["status"], "incomplete");
        assert_eq!(body["response"]["output"][0]["content"][0]["text"], "Hel");
        assert_eq!(body["response"]["usage"]["total_tokens"], 6);
    }

    #[test]
    fn default_deltas_echo_the_input_in_three_pieces_at_character_boundaries() {
        let cases: [(Option<&str>, &[&str]); 5] = [
            (None, &["Hello", " from", " the mock."]),
            (Some("abcdefghi"), &["abc", "def", "ghi"]),
            (Some("héllo wörld"), &["hél", "lo w", "örld"]),
            (Some("ab"), &["a", "b"]),
            (Some(""), &[]),
        ];
        for (input, want) in cases {
            let got = default_deltas(input);
            assert_eq!(got, want, "{input:?}");
            assert_eq!(got.concat(), input.unwrap_or("Hello from the mock."));
        }
    }

    #[test]
    fn credential_subprotocols_are_never_selected() {
        let p = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let cases: [(&[&str], Option<&str>); 4] = [
            (
                &["openai-insecure-api-key.sk-x", "realtime"],
                Some("realtime"),
            ),
            (&["realtime", "openai-beta.realtime-v1"], Some("realtime")),
            (&["openai-insecure-api-key.sk-x"], None),
            (&[], None),
        ];
        for (offered, want) in cases {
            assert_eq!(select_protocol(&p(offered)).as_deref(), want, "{offered:?}");
        }
    }

    #[test]
    fn the_record_keeps_the_newest_sessions_and_messages() {
        let rt = Realtime::default();
        let rec =
            |i: usize| SessionRecord::new(format!("s{i}"), String::new(), Map::new(), vec![], None);
        for i in 0..SESSION_CAP + 2 {
            rt.open(rec(i));
        }
        let listed: Value = serde_json::from_slice(&rt.sessions_json()).expect("json");
        let ids: Vec<&str> = listed["sessions"]
            .as_array()
            .expect("sessions")
            .iter()
            .filter_map(|s| s["id"].as_str())
            .collect();
        assert_eq!(ids.len(), SESSION_CAP);
        assert_eq!((ids[0], ids[SESSION_CAP - 1]), ("s2", "s1001"));

        let mut r = rec(0);
        for i in 0..MESSAGE_CAP + 3 {
            r.receive(json!(i));
        }
        assert_eq!(r.received.len(), MESSAGE_CAP);
        assert_eq!(r.received.front(), Some(&json!(3)));
        assert_eq!(r.received_total, (MESSAGE_CAP + 3) as u64);
        rt.clear();
        assert_eq!(rt.sessions_json(), br#"{"sessions":[]}"#);
    }

    #[test]
    fn scripts_with_unknown_fields_or_kinds_are_refused() {
        let rt = Realtime::default();
        assert!(rt
            .queue(br#"{"deltas": ["a"], "kind": "function_call"}"#)
            .is_ok());
        assert!(rt.queue(br#"[{"delay_ms": 5}, {"hold": "t"}]"#).is_ok());
        assert!(rt.queue(br#"{"delta": ["a"]}"#).is_err());
        assert!(rt.queue(br#"{"kind": "video"}"#).is_err());
        assert!(rt.queue(b"{").is_err());
        let queued: Vec<Kind> = std::iter::from_fn(|| rt.next_script())
            .map(|s| s.kind)
            .collect();
        assert_eq!(queued, [Kind::FunctionCall, Kind::Text, Kind::Text]);
    }
}
