//! A mock OpenAI upstream for the demo, the tests and the benchmarks: plain tokio and `httparse`, HTTP/1.1 with
//! keep-alive, fast enough never to be the bottleneck on a small machine.
//!
//! It answers `/v1/chat/completions`, `/v1/completions` and `/v1/responses` (JSON and SSE), a stored response
//! streamed again (`GET /v1/responses/{id}?stream=true`), `/v1/embeddings`, `/v1/moderations` and
//! `/v1/models`, and records every request it receives so tests can assert what reached the upstream.
//! Per-request behaviour is steered with `x-mock-*` headers (see [`Behaviour`]).
//!
//! `GET /v1/realtime` is upgraded to a WebSocket speaking the Realtime API (see [`realtime`]): its responses
//! are scripted through the control API, and every session is recorded.
//!
//! The control endpoints live under `/__mock/`: `GET|DELETE requests` (the record), `GET health_checks`,
//! `POST release/{token}` (lets a held stream go on), `POST realtime/script` (queue a realtime response
//! script), `GET|DELETE realtime` (the realtime sessions).

mod http1;
mod openai;
pub mod realtime;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use http1::{Request, Responder};

/// Defaults for requests that do not override them with headers.
#[derive(Debug, Clone)]
pub struct MockConfig {
    /// Content deltas in a streamed answer.
    pub chunks: usize,
    /// When set, each delta is this many bytes of filler text instead of a piece of the default answer.
    pub chunk_bytes: Option<usize>,
    /// Pause between streamed events.
    pub delay: Duration,
    /// Answer every completion with what was received.
    pub echo: bool,
    /// Answer every request (health checks included) with this status and an OpenAI-shaped error, unless the
    /// request's `x-mock-status` says otherwise: an upstream that is up but failing or rate limited.
    pub status: Option<u16>,
}

impl Default for MockConfig {
    fn default() -> Self {
        Self {
            chunks: 8,
            chunk_bytes: None,
            delay: Duration::ZERO,
            echo: false,
            status: None,
        }
    }
}

/// How one request is answered, from the config and the request's `x-mock-*` headers.
#[derive(Debug, Clone)]
pub struct Behaviour {
    /// `x-mock-chunks`
    pub chunks: usize,
    /// `x-mock-chunk-bytes`
    pub chunk_bytes: Option<usize>,
    /// `x-mock-delay-ms`: between streamed events.
    pub delay: Duration,
    /// `x-mock-latency-ms`: before the response header.
    pub latency: Duration,
    /// `x-mock-status`: answer with this status and an OpenAI-shaped error (its message `x-mock-content`, if
    /// given).
    pub status: Option<u16>,
    /// `x-mock-echo: 1`
    pub echo: bool,
    /// `x-mock-content`: the assistant's answer.
    pub content: Option<String>,
    /// `x-mock-lead: UNIT*N`: the answer starts with UNIT repeated N times (at most 16 MiB), then the content:
    /// long runs (a hex dump, a long number) without a header that large.
    pub lead: Option<String>,
    /// `x-mock-hold: TOKEN`: after the first content delta, wait for `POST /__mock/release/TOKEN`.
    pub hold: Option<String>,
    /// `x-mock-reset-after: N`: drop the connection after N content deltas.
    pub reset_after: Option<usize>,
    /// `x-mock-split-at: 5,12`: stream the answer in pieces cut at these byte offsets (instead of `chunks`).
    pub split_at: Option<Vec<usize>>,
    /// `x-mock-choices: ["first", "second"]` (JSON, ASCII): one answer per choice, streamed side by side.
    pub choices: Option<Vec<String>>,
    /// `x-mock-tool-args: ["{..}", "{..}"]` (JSON, ASCII): stream parallel tool calls with these arguments.
    pub tool_args: Option<Vec<String>>,
    /// `x-mock-delta-field: reasoning_content` (a dotted path, e.g. `audio.transcript`): the field of a chat
    /// chunk's `delta` that carries the streamed answer (default `content`).
    pub delta_field: Option<String>,
    /// `x-mock-events: [{..}, "[DONE]"]` (JSON, ASCII): stream exactly these events, one `data:` event per
    /// element (a string is written as the data itself, anything else as JSON), paced like any stream.
    pub events: Option<Vec<serde_json::Value>>,
    /// `x-mock-sse: ["event: a\ndata: 1\n\n", ..]` (JSON, ASCII): stream exactly these bytes, one write per
    /// element, paced (framing, comments and other fields as a test writes them).
    pub sse: Option<Vec<String>>,
    /// `x-mock-write-bytes: N`: write the stream N bytes at a time, pausing between writes, so the reader
    /// gets it in many small reads (splitting events, characters and escapes).
    pub write_bytes: Option<usize>,
    /// `x-mock-embedding-dims: N`: embeddings of N numbers (default 8).
    pub embedding_dims: Option<usize>,
    /// `x-mock-content-type: VALUE`: label every answer so, whatever it is (`none`: no `Content-Type`).
    pub content_type: Option<String>,
}

/// A request as the mock received it.
#[derive(Debug, Clone, Serialize)]
pub struct Recorded {
    pub seq: u64,
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    /// Header names lower-cased, in arrival order.
    pub headers: Vec<(String, String)>,
    /// The body, decoded as UTF-8 where possible (lossy).
    pub body: String,
    /// The exact body bytes, base64.
    pub body_b64: String,
    /// Whether the whole response has been written.
    pub completed: bool,
    /// Which TCP connection carried it (numbered from 1 in accept order): shows keep-alive reuse.
    pub connection: u64,
}

/// State shared by all connections of one mock.
#[derive(Default)]
pub struct MockState {
    config: MockConfig,
    seq: AtomicU64,
    connections: AtomicU64,
    /// The gateway's health checks: answered, counted here, never recorded (tests assert on what clients sent).
    health_checks: AtomicU64,
    recorded: Mutex<Vec<Recorded>>,
    released: Mutex<HashSet<String>>,
    release_notify: Notify,
    realtime: realtime::Realtime,
}

/// Most requests kept in the record; older ones are dropped (the benchmarks send millions).
const RECORD_CAP: usize = 10_000;

impl MockState {
    fn record(&self, req: &Request, connection: u64) -> u64 {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let rec = Recorded {
            seq,
            method: req.method.clone(),
            path: req.path.clone(),
            query: req.query.clone(),
            headers: req.headers.clone(),
            body: String::from_utf8_lossy(&req.body).into_owned(),
            body_b64: base64(&req.body),
            completed: false,
            connection,
        };
        if let Ok(mut r) = self.recorded.lock() {
            if r.len() >= RECORD_CAP {
                r.remove(0);
            }
            r.push(rec);
        }
        seq
    }

    fn complete(&self, seq: u64) {
        if let Ok(mut r) = self.recorded.lock() {
            if let Some(rec) = r.iter_mut().rev().find(|r| r.seq == seq) {
                rec.completed = true;
            }
        }
    }

    async fn wait_release(&self, token: &str) {
        loop {
            let notified = self.release_notify.notified();
            if self
                .released
                .lock()
                .map(|s| s.contains(token))
                .unwrap_or(true)
            {
                return;
            }
            notified.await;
        }
    }

    fn behaviour(&self, req: &Request) -> Behaviour {
        let num = |name: &str| req.header(name).and_then(|v| v.trim().parse::<u64>().ok());
        Behaviour {
            chunks: num("x-mock-chunks")
                .map_or(self.config.chunks, |n| n as usize)
                .max(1),
            chunk_bytes: num("x-mock-chunk-bytes")
                .map(|n| n as usize)
                .or(self.config.chunk_bytes),
            delay: num("x-mock-delay-ms").map_or(self.config.delay, Duration::from_millis),
            latency: num("x-mock-latency-ms").map_or(Duration::ZERO, Duration::from_millis),
            status: num("x-mock-status")
                .and_then(|s| u16::try_from(s).ok())
                .or(self.config.status),
            echo: self.config.echo
                || req
                    .header("x-mock-echo")
                    .is_some_and(|v| v == "1" || v == "true"),
            content: req.header("x-mock-content").map(str::to_string),
            lead: req.header("x-mock-lead").and_then(|v| {
                let (unit, n) = v.rsplit_once('*')?;
                let n: usize = n.trim().parse().ok()?;
                (unit.len().saturating_mul(n) <= 16 << 20).then(|| unit.repeat(n))
            }),
            hold: req.header("x-mock-hold").map(str::to_string),
            reset_after: num("x-mock-reset-after").map(|n| n as usize),
            split_at: req
                .header("x-mock-split-at")
                .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect()),
            choices: req
                .header("x-mock-choices")
                .and_then(|v| serde_json::from_str(v).ok()),
            tool_args: req
                .header("x-mock-tool-args")
                .and_then(|v| serde_json::from_str(v).ok()),
            delta_field: req
                .header("x-mock-delta-field")
                .map(str::to_string)
                .filter(|f| !f.is_empty()),
            events: req
                .header("x-mock-events")
                .and_then(|v| serde_json::from_str(v).ok()),
            sse: req
                .header("x-mock-sse")
                .and_then(|v| serde_json::from_str(v).ok()),
            write_bytes: num("x-mock-write-bytes").map(|n| n.max(1) as usize),
            embedding_dims: num("x-mock-embedding-dims").map(|n| n.min(1 << 22) as usize),
            content_type: req.header("x-mock-content-type").map(str::to_string),
        }
    }
}

/// A running mock: its address and state.
pub struct Mock {
    pub addr: SocketAddr,
    pub state: Arc<MockState>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Mock {
    /// Stops serving: the listener closes (new connections are refused) and open connections are dropped,
    /// as when the upstream process dies. A new mock can be started on the same address.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

use crate::upstream::pool::HEALTH_CHECK_AGENT;

/// Binds `addr` and serves until the runtime stops.
pub async fn start(addr: SocketAddr, config: MockConfig) -> std::io::Result<Mock> {
    serve(TcpListener::bind(addr).await?, config)
}

/// Serves on an already bound listener until the runtime stops.
pub fn serve(listener: TcpListener, config: MockConfig) -> std::io::Result<Mock> {
    let addr = listener.local_addr()?;
    let state = Arc::new(MockState {
        config,
        ..MockState::default()
    });
    let st = state.clone();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut stop_accepting = stopped.clone();
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                () = stopped_by(&mut stop_accepting) => return,
            };
            match accepted {
                Ok((stream, _)) => {
                    let st = st.clone();
                    let mut stop_serving = stopped.clone();
                    tokio::spawn(async move {
                        tokio::select! {
                            served = serve_connection(stream, st) => if let Err(e) = served {
                                tracing::debug!("mock connection ended: {e}");
                            },
                            () = stopped_by(&mut stop_serving) => {}
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!("mock accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    });
    Ok(Mock { addr, state, stop })
}

/// Resolves when the mock is stopped; never when its handle was dropped without stopping it.
async fn stopped_by(rx: &mut tokio::sync::watch::Receiver<bool>) {
    if rx.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn serve_connection(mut stream: TcpStream, state: Arc<MockState>) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    // Numbered when its first recorded request arrives: a health check's connection is not counted.
    let mut connection = None;
    let mut conn = http1::Connection::new();
    while let Some(req) = conn.read_request(&mut stream).await? {
        let keep_alive = req.keep_alive;
        if realtime::wants(&req) {
            let id = *connection
                .get_or_insert_with(|| state.connections.fetch_add(1, Ordering::Relaxed) + 1);
            let seq = state.record(&req, id);
            let b = state.behaviour(&req);
            if !b.latency.is_zero() {
                tokio::time::sleep(b.latency).await;
            }
            if let Some((status, body)) = realtime::refusal(&req, &b) {
                Responder::new(&mut stream, keep_alive)
                    .json(status, &body)
                    .await?;
                state.complete(seq);
                if keep_alive {
                    continue;
                }
                break;
            }
            // The session takes the connection over: its socket, and what was read past the request head.
            let served = realtime::serve(stream, conn.into_buffered(), &req, &state).await;
            state.complete(seq);
            return served;
        }
        let mut out = Responder::new(&mut stream, keep_alive);
        let finished = if req.header("user-agent") == Some(HEALTH_CHECK_AGENT) {
            state.health_checks.fetch_add(1, Ordering::Relaxed);
            let b = state.behaviour(&req);
            openai::answer(&req, &b, &state, &mut out).await?
        } else {
            let id = *connection
                .get_or_insert_with(|| state.connections.fetch_add(1, Ordering::Relaxed) + 1);
            route(&req, id, &state, &mut out).await?
        };
        if !finished || !keep_alive {
            break;
        }
    }
    stream.shutdown().await.ok();
    Ok(())
}

/// Answers one request. Returns `false` when the connection must be closed (a simulated reset).
async fn route(
    req: &Request,
    connection: u64,
    state: &MockState,
    out: &mut Responder<'_>,
) -> std::io::Result<bool> {
    if let Some(ctl) = req.path.strip_prefix("/__mock/") {
        return control(ctl, req, state, out).await.map(|()| true);
    }
    let seq = state.record(req, connection);
    let b = state.behaviour(req);
    if !b.latency.is_zero() {
        tokio::time::sleep(b.latency).await;
    }
    out.set_write_bytes(b.write_bytes);
    out.set_content_type(b.content_type.as_deref());
    let finished = openai::answer(req, &b, state, out).await?;
    state.complete(seq);
    Ok(finished)
}

async fn control(
    ctl: &str,
    req: &Request,
    state: &MockState,
    out: &mut Responder<'_>,
) -> std::io::Result<()> {
    match (req.method.as_str(), ctl) {
        ("GET", "requests") => {
            let body = state
                .recorded
                .lock()
                .map(|r| serde_json::to_vec(&*r).unwrap_or_default())
                .unwrap_or_default();
            out.json(200, &body).await
        }
        ("GET", "health_checks") => {
            let n = state.health_checks.load(Ordering::Relaxed);
            out.json(200, format!("{{\"count\":{n}}}").as_bytes()).await
        }
        ("DELETE", "requests") => {
            if let Ok(mut r) = state.recorded.lock() {
                r.clear();
            }
            out.json(200, b"{}").await
        }
        ("POST", "realtime/script") => match state.realtime.queue(&req.body) {
            Ok(()) => out.json(200, b"{}").await,
            Err(e) => {
                let body = serde_json::json!({"error": {"message": format!("mock: {e}"), "type": "invalid_request_error", "param": null, "code": "invalid_script"}});
                out.json(400, body.to_string().as_bytes()).await
            }
        },
        ("GET", "realtime") => out.json(200, &state.realtime.sessions_json()).await,
        ("DELETE", "realtime") => {
            state.realtime.clear();
            out.json(200, b"{}").await
        }
        ("POST", c) if c.starts_with("release/") => {
            let token = &c["release/".len()..];
            if let Ok(mut s) = state.released.lock() {
                s.insert(token.to_string());
            }
            state.release_notify.notify_waiters();
            out.json(200, b"{}").await
        }
        _ => out.json(404, br#"{"error":{"message":"unknown mock control","type":"invalid_request_error","param":null,"code":"not_found"}}"#).await,
    }
}

/// Standard base64 with padding (the record's exact-bytes field).
fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                s.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_rfc4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foobar", "Zm9vYmFy"),
        ];
        for (i, o) in cases {
            assert_eq!(super::base64(i.as_bytes()), o);
        }
    }
}
