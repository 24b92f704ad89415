//! Realtime sessions: `/v1/realtime` over WebSocket, governed like every other request.
//!
//! The edge (`edge.rs`) reads each request head; one asking to upgrade `/v1/realtime` to a WebSocket comes here
//! with its connection instead of going to Pingora's HTTP loop. Why here: after a 101, Pingora's body filters see
//! each direction as raw bytes, one direction per hook, and nothing in either can write to the other side — but
//! a blocked upstream event must both answer the client (an `error` event) and stop the upstream
//! (`response.cancel`), at once. So the gateway holds both legs itself:
//!
//! 1. **Handshake** ([`Realtime::open`]): the request must be a WebSocket handshake (version 13, a key);
//!    the audit sink must be able to record; the caller is identified as for HTTP — `Authorization: Bearer`,
//!    `api-key`, or the browser form, the `openai-insecure-api-key.<key>` subprotocol — its origin checked, the
//!    model of the `model` query held against a scoped key, and the quotas taken: one request, and one
//!    concurrency permit held for as long as the session is open. Then the session is routed to a pool like
//!    any request (by model), an endpoint selected (a connect failure moves to another, as for HTTP), and the
//!    upstream handshake made through Pingora's connector (TLS for `https` upstreams) with the client's headers
//!    minus hop-by-hop and WebSocket fields, the provider credential injected in `gateway_keys` mode, and the
//!    client's subprotocols minus any key (a gateway key never reaches the upstream). Anything refused is an
//!    OpenAI-shaped HTTP error, before any upstream is contacted; an upstream that refuses the upgrade has
//!    its status passed on, its body inspected.
//! 2. Only then the client gets its **101**, with the subprotocol the upstream chose and no extension
//!    (permessage-deflate is never negotiated: frames are read as they are, so compression is declined on both
//!    legs).
//! 3. **Frames** ([`Session`]): RFC 6455 framing, masking, fragmentation and control frames are
//!    tokio-tungstenite's, on both legs; a message larger than `limits.max_ws_message_bytes` closes the session
//!    with 1009. Pings are passed on (each leg answers its own pongs); a close on one leg closes the other.
//!    Client events go through `inspect::realtime::judge_client_event` (forwarded, redacted, or answered with an
//!    `error` event `policy_blocked` and not forwarded), at most `limits.ws_messages_per_second` a second
//!    (beyond: an `error` event `rate_limit_exceeded`, the message dropped); upstream events through
//!    `inspect::realtime::ServerFilter` (the exact hold-back of streamed answers, per response). A block sends
//!    the client an `error` event and the upstream `response.cancel`; with `realtime.on_block = "close"`, or
//!    after `realtime.close_after_blocks` blocks, the session is closed with 1008 instead.
//! 4. **Accounting**: the tokens of each `response.done`'s usage are settled against the caller's token quota
//!    as they come; one decision event per response and one for the session when it closes (with its counts);
//!    the permit is given back on every ending (the context is dropped).

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use pingora::connectors::{ConnectorOptions, TransportConnector};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::{error, headers, Gateway, RequestCtx};
use crate::audit::event::{self, Decisions, Event, Hit, InspectUs, Latency};
use crate::config::{OnBlock, RealtimeConfig};
use crate::inspect::realtime::{
    judge_client_event, ClientAction, ResponseSummary, ServerFilter, ServerOut,
};
use crate::inspect::{judge, Decision, RuleHit};
use crate::metrics;
use crate::openai::usage::Usage;
use crate::openai::Rejection;
use crate::rules::{Direction, RuleSet};
use crate::upstream::{pool::Failure, retry, HOP_BY_HOP};

/// The path of realtime sessions.
pub const PATH: &str = "/v1/realtime";
/// The browser form of a key: a subprotocol (browsers cannot set `Authorization` on a WebSocket).
const KEY_PROTOCOL: &str = "openai-insecure-api-key.";
/// Header fields of the client's handshake that are the gateway's to set on the upstream one.
const WS_FIELDS: [&str; 5] = [
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
    "sec-websocket-extensions",
    "origin",
];
/// How long the upstream handshake may take, beyond connecting.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Per-leg read buffer: small, so that idle sessions cost little (messages larger than it are read in steps).
const READ_BUFFER: usize = 4096;

type Ws = WebSocketStream<Stream>;
/// The sending half of a leg.
type Sink = futures_util::stream::SplitSink<Ws, Message>;

/// Serves realtime sessions with the gateway's rules, callers, limits, pools and audit.
pub struct Realtime {
    pub(super) gw: Gateway,
    cfg: RealtimeConfig,
    pub(super) connector: TransportConnector,
}

/// Whether a request head asks for a realtime session: `GET /v1/realtime` (with any query) with an `Upgrade`
/// field. Read from the head's bytes; the head is parsed only when it does.
pub fn wants(head: &[u8]) -> bool {
    let Some(rest) = head.strip_prefix(b"GET ") else {
        return false;
    };
    let target_end = memchr::memchr(b' ', rest).unwrap_or(rest.len());
    let target = &rest[..target_end];
    let path_end = memchr::memchr(b'?', target).unwrap_or(target.len());
    let path = &target[..path_end];
    let path = path.strip_suffix(b"/").unwrap_or(path);
    path == PATH.as_bytes() && find_field(head, b"upgrade")
}

/// Whether the head has a field of this (lowercase) name.
pub(super) fn find_field(head: &[u8], name: &[u8]) -> bool {
    head.split(|&b| b == b'\n').skip(1).any(|line| {
        line.len() > name.len()
            && line[..name.len()].eq_ignore_ascii_case(name)
            && line[name.len()] == b':'
    })
}

/// The client's handshake, parsed.
struct Handshake {
    /// Path and query, as sent.
    target: String,
    headers: http::HeaderMap,
    /// `Sec-WebSocket-Key`.
    key: String,
    /// Offered subprotocols, in order.
    protocols: Vec<String>,
    /// The `model` query parameter.
    model: Option<String>,
    /// Bytes the client sent after its head (frames sent before the 101).
    rest: Vec<u8>,
}

/// How a session ended, for its event.
#[derive(Default)]
struct Counts {
    client: u64,
    upstream: u64,
    blocked: u64,
    responses: u64,
    close: Option<u16>,
}

impl Realtime {
    pub fn new(gw: Gateway, cfg: RealtimeConfig, options: Option<ConnectorOptions>) -> Self {
        Self {
            gw,
            cfg,
            connector: TransportConnector::new(options),
        }
    }

    /// Whether realtime sessions are served here (else an upgrade goes to Pingora and `inspect.websocket`).
    pub fn enabled(&self) -> bool {
        self.cfg.enabled
    }

    fn ws_config(&self) -> WebSocketConfig {
        let max = self.cfg.max_message_bytes;
        WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER)
            // Every message is written at once: a held delta released is not left in a buffer.
            .write_buffer_size(0)
            .max_write_buffer_size(2 * max + (1 << 20))
            .max_message_size(Some(max))
            .max_frame_size(Some(max))
    }

    /// Serves one session on a client connection whose request head is `head` (read by the edge).
    pub async fn serve(&self, mut stream: Stream, head: BytesMut, shutdown: &ShutdownWatch) {
        let mut ctx = RequestCtx::new();
        let rules = self.gw.rules.snapshot();
        ctx.rules = Some(rules.clone());
        ctx.route = crate::openai::Route::OtherV1;
        let parsed = parse(&head);
        // Everything needed was copied out; the head's buffer is not kept for the session's life.
        drop(head);
        let hs = match parsed {
            Ok(hs) => hs,
            Err(r) => {
                ctx.request_id = super::ctx::new_request_id();
                self.refuse(&mut stream, &mut ctx, None, r).await;
                return;
            }
        };
        ctx.request_id = self.request_id(&hs.headers, &rules);
        if let Some(tracer) = &self.gw.tracer {
            ctx.trace = Some(Box::new(tracer.start(&hs.headers)));
        }
        let upstream = match self.open(&mut ctx, &hs).await {
            Ok(up) => up,
            Err(Opened::Refused(r)) => {
                self.refuse(&mut stream, &mut ctx, hs.model.as_deref(), r)
                    .await;
                return;
            }
            Err(Opened::UpstreamAnswered(status, body)) => {
                metrics::REALTIME_HANDSHAKES
                    .with_label_values(&["upstream_refused"])
                    .inc();
                self.pass_refusal(&mut stream, &mut ctx, hs.model.as_deref(), status, body)
                    .await;
                return;
            }
        };
        let (up, chosen) = upstream;
        // The 101: the client's key accepted, the subprotocol the upstream chose if the client offered it.
        let mut resp = match ResponseHeader::build(101, Some(6)) {
            Ok(r) => r,
            Err(_) => return,
        };
        let accept = derive_accept_key(hs.key.as_bytes());
        let protocol = chosen.filter(|p| hs.protocols.iter().any(|o| o == p));
        let built = resp
            .insert_header(http::header::UPGRADE, "websocket")
            .and_then(|()| resp.insert_header(http::header::CONNECTION, "Upgrade"))
            .and_then(|()| resp.insert_header("sec-websocket-accept", accept.as_str()))
            .and_then(|()| match &protocol {
                Some(p) => resp.insert_header("sec-websocket-protocol", p.as_str()),
                None => Ok(()),
            })
            .and_then(|()| headers::decorate(&mut resp, &ctx));
        if built.is_err() || write_head(&mut stream, &resp, &[]).await.is_err() {
            return;
        }
        metrics::REALTIME_HANDSHAKES
            .with_label_values(&["opened"])
            .inc();
        ctx.forwarded = true;
        ctx.sent_answer_bytes();
        let client = WebSocketStream::from_partially_read(
            stream,
            hs.rest,
            Role::Server,
            Some(self.ws_config()),
        )
        .await;
        metrics::REALTIME_SESSIONS.inc();
        // Only the model is needed from here on: the handshake's fields are not kept for the session's life.
        let model = hs.model;
        drop((hs.headers, hs.target, hs.protocols));
        let mut session = Session::new(self, &mut ctx, model.clone());
        let counts = session.run(client, up, shutdown.clone()).await;
        let request_hits = std::mem::take(&mut session.all_request_hits);
        let loose = session.filter.loose_hits.clone();
        drop(session);
        metrics::REALTIME_SESSIONS.dec();
        // The quotas' permits go back first (the session's tokens were settled response by response), then
        // the session's event is handed over (which may wait for room in the audit queue).
        ctx.admission.end(&*self.gw.limiter, true, None, None);
        self.trace_session(&ctx, "realtime", model.as_deref(), 101);
        self.session_event(&mut ctx, model, counts, request_hits, loose)
            .await;
    }

    /// The client's request id when it is a safe one, else a new one.
    pub(super) fn request_id(&self, headers: &http::HeaderMap, rules: &RuleSet) -> String {
        match headers
            .get(headers::REQUEST_ID)
            .and_then(|v| v.to_str().ok())
        {
            Some(v)
                if crate::openai::is_safe_id(v.as_bytes())
                    && rules.everything().scan(v, Direction::Request).is_empty() =>
            {
                v.to_string()
            }
            _ => super::ctx::new_request_id(),
        }
    }

    /// The session's (or tunnel's) one SERVER span (a sampled one's), from its start to now.
    pub(super) fn trace_session(
        &self,
        ctx: &RequestCtx,
        operation: &'static str,
        model: Option<&str>,
        status: u16,
    ) {
        let (Some(tracer), Some(t)) = (&self.gw.tracer, &ctx.trace) else {
            return;
        };
        let rules = ctx.rules.as_deref();
        let caller = ctx.admission.caller.as_ref();
        let finished = crate::otel::Finished {
            operation,
            model: model.filter(|m| rules.is_some_and(|r| event::safe_model(r, m))),
            response_model: None,
            method: "GET",
            status,
            request_id: &ctx.request_id,
            key_id: caller.map(|c| c.id()),
            tenant: caller.and_then(|c| c.tenant()),
            decision: ctx.outcome.decision().as_str(),
            decision_request: ctx.outcome.request.decision.as_str(),
            decision_response: ctx.outcome.response.decision.as_str(),
            rules: Vec::new(),
            policy: rules.map(|r| r.policy()),
            input_tokens: None,
            output_tokens: None,
            error: ctx.error_code,
            upstream: None,
        };
        tracer.submit(t.spans(&finished, Instant::now()));
    }

    /// Everything before the 101: the handshake checked, the caller admitted, the upstream's handshake made.
    async fn open(
        &self,
        ctx: &mut RequestCtx,
        hs: &Handshake,
    ) -> Result<(Ws, Option<String>), Opened> {
        let gw = &self.gw;
        if gw.audit.refuses_requests() {
            return Err(Opened::Refused(Rejection::AuditUnavailable));
        }
        // The browser form of a key counts as `Authorization: Bearer` when there is none.
        let mut identity = hs.headers.clone();
        if !identity.contains_key(http::header::AUTHORIZATION) {
            if let Some(key) = hs
                .protocols
                .iter()
                .find_map(|p| p.strip_prefix(KEY_PROTOCOL))
            {
                if let Ok(v) = http::HeaderValue::from_str(&format!("Bearer {key}")) {
                    identity.insert(http::header::AUTHORIZATION, v);
                }
            }
        }
        ctx.admission
            .admit_caller(
                &gw.auth,
                &*gw.limiter,
                &identity,
                gw.inspect.options.monitor,
                SystemTime::now(),
            )
            .await
            .map_err(Opened::Refused)?;
        ctx.admission
            .admit_session(&gw.auth, &*gw.limiter, hs.model.as_deref())
            .await
            .map_err(Opened::Refused)?;
        super::policy::choose(ctx, PATH, hs.model.as_deref()).map_err(Opened::Refused)?;
        let Some(i) = gw.upstreams.route(hs.model.as_deref(), PATH) else {
            return Err(Opened::Refused(Rejection::ModelNotFound(
                hs.model.clone().unwrap_or_default(),
            )));
        };
        ctx.pool = Some(i);
        let pool = gw.upstreams.pools[i].clone();
        pool.count_request();
        // Before the upstream handshake: under `write_ahead`, not before the session's intent is durable.
        if !super::intent::make_durable(
            gw,
            ctx,
            &http::Method::GET,
            "realtime",
            hs.model.as_deref(),
        )
        .await
        {
            return Err(Opened::Refused(Rejection::AuditUnavailable));
        }
        // A gateway key stays here: in `gateway_keys` mode no key subprotocol is passed on.
        let gateway_key = ctx
            .admission
            .caller
            .as_ref()
            .is_some_and(|c| c.key().is_some());
        let protocols: Vec<&str> = hs
            .protocols
            .iter()
            .map(String::as_str)
            .filter(|p| !(gateway_key && p.starts_with(KEY_PROTOCOL)))
            .collect();
        loop {
            let Some(endpoint) = pool.select(&ctx.tried).await else {
                if ctx.tried.is_empty() {
                    pool.count_error("no_healthy");
                    return Err(Opened::Refused(Rejection::NoHealthyUpstream(
                        pool.name.to_string(),
                    )));
                }
                return Err(Opened::Refused(Rejection::UpstreamUnreachable));
            };
            let addr = endpoint.addr;
            ctx.timing.upstream_sent.get_or_insert_with(Instant::now);
            let connected = self.connector.new_stream(endpoint.target.peer()).await;
            let stream = match connected {
                Ok(s) => s,
                Err(e) => {
                    // Nothing was sent: another endpoint of the pool may take the session.
                    let why = retry::failure(&e).unwrap_or(Failure::Connect);
                    pool.failed(addr, why);
                    ctx.tried.push(addr);
                    ctx.attempts_log
                        .push(super::attempt(&pool, addr, None, Some(&e)));
                    if ctx.tried.len() < retry::ENDPOINT_ATTEMPTS && pool.has_untried(&ctx.tried) {
                        continue;
                    }
                    metrics::REALTIME_HANDSHAKES
                        .with_label_values(&["upstream_failed"])
                        .inc();
                    return Err(Opened::Refused(
                        Rejection::from_error(&e).unwrap_or(Rejection::UpstreamUnreachable),
                    ));
                }
            };
            let request = self
                .upstream_request(ctx, hs, &endpoint.target, &pool, &protocols)
                .map_err(|_| Opened::Refused(Rejection::Internal))?;
            ctx.endpoint = Some(endpoint);
            ctx.attempts += 1;
            let shaken = tokio::time::timeout(
                HANDSHAKE_TIMEOUT,
                tokio_tungstenite::client_async_with_config(
                    request,
                    stream,
                    Some(self.ws_config()),
                ),
            )
            .await;
            return match shaken {
                Ok(Ok((ws, resp))) => {
                    ctx.attempts_log
                        .push(super::attempt(&pool, addr, Some(101), None));
                    let chosen = resp
                        .headers()
                        .get("sec-websocket-protocol")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    Ok((ws, chosen))
                }
                Ok(Err(WsError::Http(resp))) => {
                    let status = resp.status().as_u16();
                    ctx.attempts_log
                        .push(super::attempt(&pool, addr, Some(status), None));
                    Err(Opened::UpstreamAnswered(
                        status,
                        resp.into_body().unwrap_or_default(),
                    ))
                }
                Ok(Err(e)) => {
                    tracing::warn!(upstream = %pool.name, "realtime handshake with the upstream failed: {e}");
                    metrics::REALTIME_HANDSHAKES
                        .with_label_values(&["upstream_failed"])
                        .inc();
                    Err(Opened::Refused(Rejection::UpstreamFailed))
                }
                Err(_) => {
                    pool.failed(addr, Failure::Timeout);
                    metrics::REALTIME_HANDSHAKES
                        .with_label_values(&["upstream_failed"])
                        .inc();
                    Err(Opened::Refused(Rejection::UpstreamTimeout))
                }
            };
        }
    }

    /// The upstream's handshake: the client's fields minus hop-by-hop and WebSocket ones, pointed at the
    /// endpoint, with the pool's credential and the request id, and the WebSocket fields of our own.
    fn upstream_request(
        &self,
        ctx: &RequestCtx,
        hs: &Handshake,
        target: &crate::upstream::Target,
        pool: &crate::upstream::Pool,
        protocols: &[&str],
    ) -> pingora::Result<http::Request<()>> {
        let mut req = RequestHeader::build("GET", hs.target.as_bytes(), Some(hs.headers.len()))?;
        for (name, value) in &hs.headers {
            let n = name.as_str();
            if HOP_BY_HOP.contains(&n) || WS_FIELDS.contains(&n) {
                continue;
            }
            req.append_header(name.clone(), value.clone())?;
        }
        target.target(&mut req)?;
        headers::to_upstream(&mut req, ctx, pool)?;
        // tungstenite wants an absolute `ws://` URI; it writes only its path and query on the wire (the
        // connection, TLS included, is already made, and `Host` is the endpoint's).
        let uri = format!(
            "ws://{}{}",
            target.authority(),
            req.uri.path_and_query().map_or("/", |p| p.as_str())
        );
        let mut out = http::Request::builder().method(http::Method::GET).uri(uri);
        for (name, value) in req.headers.iter() {
            out = out.header(name, value);
        }
        out = out
            .header(http::header::CONNECTION, "Upgrade")
            .header(http::header::UPGRADE, "websocket")
            .header("Sec-WebSocket-Version", "13")
            .header("Sec-WebSocket-Key", generate_key());
        if !protocols.is_empty() {
            out = out.header("Sec-WebSocket-Protocol", protocols.join(", "));
        }
        out.body(())
            .map_err(|e| pingora::Error::explain(pingora::ErrorType::InternalError, e.to_string()))
    }

    /// Answers a refused handshake with the OpenAI-shaped error, records it, and closes.
    async fn refuse(
        &self,
        stream: &mut Stream,
        ctx: &mut RequestCtx,
        model: Option<&str>,
        r: Rejection,
    ) {
        metrics::REALTIME_HANDSHAKES
            .with_label_values(&["refused"])
            .inc();
        let resp = r.render();
        ctx.error_code = Some(resp.code);
        if let Ok(mut header) = error::header(&resp, ctx) {
            let _ = header.insert_header(http::header::CONNECTION, "close");
            let _ = write_head(stream, &header, &resp.body).await;
        }
        self.refusal_event(ctx, model, resp.status).await;
    }

    /// The upstream refused the upgrade: its status goes to the client, with its body if that passes
    /// inspection (an error message can echo input), else the gateway's own error for that status.
    pub(super) async fn pass_refusal(
        &self,
        stream: &mut Stream,
        ctx: &mut RequestCtx,
        model: Option<&str>,
        status: u16,
        body: Vec<u8>,
    ) {
        let Some(rules) = ctx.rules.clone() else {
            return;
        };
        let opts = self.gw.inspect.options.clone();
        let clean = crate::inspect::inspect_json(&rules, &body, &opts, Direction::Response)
            .ok()
            .filter(|v| v.blocked_by.is_none())
            .map(|v| v.rewritten.unwrap_or(body));
        let body = clean.unwrap_or_else(|| {
            let msg = "The upstream refused the upgrade";
            json!({"error": {"message": msg, "type": "api_error", "param": null, "code": "upstream_refused"}})
                .to_string()
                .into_bytes()
        });
        let Ok(mut header) = ResponseHeader::build(status, Some(4)) else {
            return;
        };
        let built = header
            .insert_header(http::header::CONTENT_TYPE, "application/json")
            .and_then(|()| {
                header.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())
            })
            .and_then(|()| header.insert_header(http::header::CONNECTION, "close"))
            .and_then(|()| headers::decorate(&mut header, ctx));
        if built.is_ok() {
            let _ = write_head(stream, &header, &body).await;
        }
        self.refusal_event(ctx, model, status).await;
    }

    async fn refusal_event(&self, ctx: &mut RequestCtx, model: Option<&str>, status: u16) {
        self.trace_session(ctx, "realtime", model, status);
        if !self.gw.audit.enabled() {
            return;
        }
        let counts = Counts::default();
        if let Some(mut ev) = self.event(ctx, model.map(str::to_string), status) {
            ev.realtime = Some(realtime_facts("session", None, &counts, false));
            self.gw.audit.record(Box::new(ev)).await;
        }
    }

    /// The event common to a session and its responses (the caller fills in the rest).
    pub(super) fn event(
        &self,
        ctx: &RequestCtx,
        model: Option<String>,
        status: u16,
    ) -> Option<Event> {
        let rules = ctx.rules.clone()?;
        let caller = ctx.admission.caller.as_ref();
        let now = Instant::now();
        let ms = |from: Instant| now.saturating_duration_since(from).as_secs_f64() * 1000.0;
        Some(Event {
            kind: event::MESSAGE,
            at: SystemTime::now(),
            request_id: ctx.request_id.clone(),
            key_id: caller.map(|c| c.id().to_string()),
            tenant: caller.and_then(|c| c.tenant()).map(str::to_string),
            route: "realtime",
            method: "GET",
            model,
            stream: true,
            decision: Decisions {
                request: "allow",
                response: "allow",
            },
            rules,
            hits: Vec::new(),
            status,
            error: ctx.error_code,
            blocked_mid_stream: false,
            latency: Latency {
                inspect_us: InspectUs {
                    request: 0,
                    response: 0,
                },
                upstream_ms: ctx.timing.upstream_sent.map(ms),
                ttft_ms: ctx
                    .timing
                    .first_byte
                    .map(|t| t.saturating_duration_since(ctx.started).as_secs_f64() * 1000.0),
                total_ms: ms(ctx.started),
            },
            usage: None,
            bytes: event::Bytes {
                received: 0,
                sent: 0,
            },
            session_id: None,
            upstream: ctx
                .pool
                .and_then(|i| self.gw.upstreams.pools.get(i))
                .map(|p| p.name.clone()),
            attempts: ctx.attempts_log.clone(),
            realtime: None,
            trace_id: ctx.trace_id(),
        })
    }

    async fn session_event(
        &self,
        ctx: &mut RequestCtx,
        model: Option<String>,
        counts: Counts,
        request_hits: BTreeMap<usize, u32>,
        loose_hits: BTreeMap<usize, u32>,
    ) {
        if !self.gw.audit.enabled() {
            return;
        }
        let Some(mut ev) = self.event(ctx, model, 101) else {
            return;
        };
        let Some(rules) = ctx.rules.clone() else {
            return;
        };
        let monitor = ctx.admission.monitor;
        let req = hits_of(&rules, &request_hits, monitor);
        let resp = hits_of(&rules, &loose_hits, monitor);
        fill_decisions(&mut ev, &rules, &req, &resp, counts.blocked > 0);
        ev.realtime = Some(realtime_facts("session", None, &counts, false));
        self.gw.audit.record(Box::new(ev)).await;
    }
}

/// What `Realtime::open` came to when no session opened.
enum Opened {
    /// The gateway refuses (nothing, or only a failed connection, reached the upstream).
    Refused(Rejection),
    /// The upstream answered the handshake with this status and body.
    UpstreamAnswered(u16, Vec<u8>),
}

fn realtime_facts(
    scope: &'static str,
    response_id: Option<String>,
    c: &Counts,
    unfinished: bool,
) -> event::Realtime {
    event::Realtime {
        scope,
        response_id,
        client_messages: c.client,
        upstream_messages: c.upstream,
        blocked: c.blocked,
        responses: c.responses,
        unfinished,
        close_code: c.close,
    }
}

/// Matches per rule as the rule set weighs them.
fn hits_of(
    rules: &crate::rules::RuleSet,
    hits: &BTreeMap<usize, u32>,
    monitor: bool,
) -> Vec<RuleHit> {
    hits.iter()
        .map(|(&rule, &count)| RuleHit {
            rule,
            count,
            enforced: rules.rule(rule).mode == crate::rules::Mode::Enforce && !monitor,
        })
        .collect()
}

/// Sets an event's decisions, hits and type from the matches of each direction.
fn fill_decisions(
    ev: &mut Event,
    rules: &crate::rules::RuleSet,
    req: &[RuleHit],
    resp: &[RuleHit],
    blocked: bool,
) {
    let jr = judge(rules, req);
    let js = judge(rules, resp);
    ev.decision = Decisions {
        request: jr.decision.as_str(),
        response: js.decision.as_str(),
    };
    ev.kind = if blocked || jr.decision == Decision::Block || js.decision == Decision::Block {
        event::BLOCKED
    } else if jr.decision == Decision::Monitor || js.decision == Decision::Monitor {
        event::ESCALATED
    } else {
        event::MESSAGE
    };
    ev.hits = req
        .iter()
        .map(|h| (h, Direction::Request))
        .chain(resp.iter().map(|h| (h, Direction::Response)))
        .map(|(h, direction)| Hit {
            rule: h.rule,
            direction,
            count: h.count,
            enforced: h.enforced,
        })
        .collect();
}

/// A request head read by the edge, parsed: its method, target (path and query as sent), fields, and length.
pub(super) struct RawHead {
    pub method: http::Method,
    pub target: String,
    pub headers: http::HeaderMap,
    /// Bytes of the head: what follows is what the client sent after it.
    pub len: usize,
}

/// Parses a request head (at most 256 fields, as the edge allows).
pub(super) fn parse_head(head: &[u8]) -> Result<RawHead, Rejection> {
    let malformed = |why: &str| Rejection::MalformedRequest(why.to_string());
    let mut fields = [httparse::EMPTY_HEADER; 256];
    let mut req = httparse::Request::new(&mut fields);
    let len = match req.parse(head) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return Err(malformed("the request head cannot be parsed")),
    };
    let method = http::Method::from_bytes(req.method.unwrap_or("GET").as_bytes())
        .map_err(|_| malformed("the request method is invalid"))?;
    let target = req.path.unwrap_or("/").to_string();
    let mut headers = http::HeaderMap::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let name = http::header::HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| malformed("a header field name is invalid"))?;
        let value = http::HeaderValue::from_bytes(h.value)
            .map_err(|_| malformed("a header field value is invalid"))?;
        headers.append(name, value);
    }
    Ok(RawHead {
        method,
        target,
        headers,
        len,
    })
}

/// Whether a comma-separated field lists `token` (case-insensitive), in any of its lines.
pub(super) fn lists_token(
    headers: &http::HeaderMap,
    name: http::header::HeaderName,
    token: &str,
) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// Parses the client's handshake and checks that it is one (RFC 6455 §4.2.1).
fn parse(head: &[u8]) -> Result<Handshake, Rejection> {
    let malformed = |why: &str| Rejection::MalformedRequest(why.to_string());
    let RawHead {
        target,
        headers,
        len,
        ..
    } = parse_head(head)?;
    if !lists_token(&headers, http::header::UPGRADE, "websocket")
        || !lists_token(&headers, http::header::CONNECTION, "upgrade")
    {
        return Err(malformed(
            "a realtime session is a WebSocket: Upgrade: websocket and Connection: Upgrade are required",
        ));
    }
    if headers
        .get("sec-websocket-version")
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return Err(malformed("Sec-WebSocket-Version must be 13"));
    }
    let key = headers
        .get("sec-websocket-key")
        .and_then(|v| v.to_str().ok())
        .map(|k| k.trim().to_string())
        .filter(|k| k.len() == 24)
        .ok_or_else(|| malformed("Sec-WebSocket-Key is missing or invalid"))?;
    let protocols = headers
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect();
    let model = target.split_once('?').and_then(|(_, q)| {
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "model")
            .map(|(_, v)| v.into_owned())
    });
    Ok(Handshake {
        target,
        headers,
        key,
        protocols,
        model,
        rest: head[len..].to_vec(),
    })
}

/// Writes a response head (and body) on the raw connection, best effort.
pub(super) async fn write_head(
    stream: &mut Stream,
    h: &ResponseHeader,
    body: &[u8],
) -> std::io::Result<()> {
    let reason = h.status.canonical_reason().unwrap_or("Unknown");
    let mut out = format!("HTTP/1.1 {} {reason}\r\n", h.status.as_u16()).into_bytes();
    for (name, value) in h.headers.iter() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    tokio::time::timeout(Duration::from_secs(5), async {
        stream.write_all(&out).await?;
        stream.flush().await
    })
    .await
    .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}

/// One open session: both legs, the filters and the counts.
struct Session<'a> {
    rt: &'a Realtime,
    ctx: &'a mut RequestCtx,
    model: Option<String>,
    filter: ServerFilter,
    counts: Counts,
    /// Client-event matches since the last response ended (they go into the next response's event).
    request_hits: BTreeMap<usize, u32>,
    /// Every client-event match of the session.
    all_request_hits: BTreeMap<usize, u32>,
    /// The current second of the message rate, and the messages counted in it.
    second: Instant,
    in_second: u32,
}

/// What the loop does after a message.
enum Next {
    Go,
    /// Close both legs with this code.
    Close(CloseCode, &'static str),
    /// A leg closed or failed: close the other (with this frame, when one came).
    Ended(Option<CloseFrame>),
}

impl<'a> Session<'a> {
    fn new(rt: &'a Realtime, ctx: &'a mut RequestCtx, model: Option<String>) -> Self {
        let rules = ctx.rules.clone().unwrap_or_else(|| rt.gw.rules.snapshot());
        let monitor = ctx.admission.monitor;
        Self {
            filter: ServerFilter::new(rules, monitor, rt.gw.inspect.max_stream_hold),
            rt,
            ctx,
            model,
            counts: Counts::default(),
            request_hits: BTreeMap::new(),
            all_request_hits: BTreeMap::new(),
            second: Instant::now(),
            in_second: 0,
        }
    }

    /// Relays until either leg closes, the session is closed for a block, or the server shuts down.
    async fn run(&mut self, client: Ws, upstream: Ws, mut shutdown: ShutdownWatch) -> Counts {
        let (mut c_tx, mut c_rx) = client.split();
        let (mut u_tx, mut u_rx) = upstream.split();
        let next = loop {
            let step = tokio::select! {
                m = c_rx.next() => self.on_client(m, &mut c_tx, &mut u_tx).await,
                m = u_rx.next() => self.on_upstream(m, &mut c_tx, &mut u_tx).await,
                _ = shutdown.changed() => Next::Close(CloseCode::Away, "the gateway is shutting down"),
            };
            match step {
                Next::Go => continue,
                other => break other,
            }
        };
        let (to_client, to_upstream) = match next {
            Next::Close(code, why) => {
                let frame = CloseFrame {
                    code,
                    reason: why.into(),
                };
                (Some(frame.clone()), Some(frame))
            }
            Next::Ended(frame) => (frame.clone(), frame),
            Next::Go => (None, None),
        };
        self.counts.close = to_client.as_ref().map(|f| u16::from(f.code));
        // Best effort, bounded: either leg may already be gone.
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let _ = c_tx.send(Message::Close(to_client)).await;
            let _ = u_tx.send(Message::Close(to_upstream)).await;
            let _ = c_tx.close().await;
            let _ = u_tx.close().await;
        })
        .await;
        let mut outs = Vec::new();
        self.filter.close(&mut outs);
        for o in outs {
            if let ServerOut::Finished(s) = o {
                self.settle(&s);
                self.response_event(*s).await;
            }
        }
        std::mem::take(&mut self.counts)
    }

    /// One message (or the end) of the client leg.
    async fn on_client(
        &mut self,
        m: Option<Result<Message, WsError>>,
        c_tx: &mut Sink,
        u_tx: &mut Sink,
    ) -> Next {
        let m = match m {
            None => return Next::Ended(None),
            Some(Err(e)) => return closing_error(&e),
            Some(Ok(m)) => m,
        };
        match m {
            Message::Text(text) => {
                self.counts.client += 1;
                if self.over_rate() {
                    count("client", "dropped");
                    let message = format!(
                        "More than {} messages a second on this session: the message was dropped",
                        self.rt.cfg.messages_per_second
                    );
                    let error = json!({"type": "invalid_request_error", "code": "rate_limit_exceeded",
                                       "message": message, "param": null});
                    return send_or_end(c_tx, error_event(error, None)).await;
                }
                let Some(rules) = self.ctx.rules.clone() else {
                    return Next::Close(CloseCode::Error, "no rules");
                };
                let mut opts = self.rt.gw.inspect.options.clone();
                opts.monitor = self.ctx.admission.monitor;
                let j = judge_client_event(&rules, text.as_str(), &opts);
                for h in &j.hits {
                    *self.request_hits.entry(h.rule).or_default() += h.count;
                    *self.all_request_hits.entry(h.rule).or_default() += h.count;
                }
                match j.action {
                    ClientAction::Forward => {
                        count("client", "forwarded");
                        forward(u_tx, Message::Text(text)).await
                    }
                    ClientAction::Rewrite(t) => {
                        count("client", "redacted");
                        forward(u_tx, Message::Text(t.into())).await
                    }
                    ClientAction::Block { rule } => {
                        let r = rules.rule(rule);
                        let rejection = Rejection::PolicyBlocked {
                            rule: r.id.clone(),
                            description: r.description.clone(),
                        };
                        self.blocked(c_tx, &rejection, j.event_id).await
                    }
                    ClientAction::Opaque => {
                        self.blocked(c_tx, &Rejection::OpaqueInputDenied, j.event_id)
                            .await
                    }
                    ClientAction::Invalid(why) => {
                        count("client", "dropped");
                        let r = Rejection::MalformedRequest(format!(
                            "the event is not a JSON object: {why}"
                        ));
                        send_or_end(c_tx, rejection_event(&r, j.event_id)).await
                    }
                }
            }
            Message::Binary(data) => {
                // Realtime events are text; a binary message cannot be inspected as one.
                self.counts.client += 1;
                if self.rt.gw.inspect.options.opaque == crate::inspect::OpaquePolicy::Deny {
                    return self
                        .blocked(c_tx, &Rejection::OpaqueInputDenied, None)
                        .await;
                }
                count("client", "forwarded");
                forward(u_tx, Message::Binary(data)).await
            }
            Message::Ping(p) => forward(u_tx, Message::Ping(p)).await,
            Message::Pong(_) | Message::Frame(_) => Next::Go,
            Message::Close(frame) => Next::Ended(frame),
        }
    }

    /// One message (or the end) of the upstream leg.
    async fn on_upstream(
        &mut self,
        m: Option<Result<Message, WsError>>,
        c_tx: &mut Sink,
        u_tx: &mut Sink,
    ) -> Next {
        let m = match m {
            None => return Next::Ended(Some(close(CloseCode::Error, "the upstream closed"))),
            Some(Err(e)) => return closing_error(&e),
            Some(Ok(m)) => m,
        };
        let text = match m {
            Message::Text(t) => t,
            Message::Binary(_) => {
                // Not an event the gateway can inspect: never passed.
                self.counts.upstream += 1;
                count("upstream", "dropped");
                let r = Rejection::StreamUninspectable("a binary message from the upstream".into());
                return send_or_end(c_tx, rejection_event(&r, None)).await;
            }
            Message::Ping(p) => return forward(c_tx, Message::Ping(p)).await,
            Message::Pong(_) | Message::Frame(_) => return Next::Go,
            Message::Close(frame) => return Next::Ended(frame),
        };
        self.counts.upstream += 1;
        let started = Instant::now();
        let mut outs = Vec::new();
        self.filter.on_event(text.as_str(), &mut outs);
        self.ctx.timing.response_inspect_us += started.elapsed().as_micros() as u64;
        // Tokens are settled before the response's end reaches the client: a caller that reads
        // `response.done` and sends its next request finds them counted.
        for o in &outs {
            if let ServerOut::Finished(s) = o {
                self.settle(s);
            }
        }
        let mut sent = false;
        for o in outs {
            let next = match o {
                ServerOut::Client(s) => {
                    sent = true;
                    forward(c_tx, Message::Text(s.into())).await
                }
                ServerOut::Upstream(s) => forward(u_tx, Message::Text(s.into())).await,
                ServerOut::Ended { rejection, .. } => {
                    count("upstream", "blocked");
                    self.blocked(c_tx, &rejection, None).await
                }
                ServerOut::Finished(s) => {
                    self.response_event(*s).await;
                    Next::Go
                }
            };
            if !matches!(next, Next::Go) {
                return next;
            }
        }
        count("upstream", if sent { "forwarded" } else { "dropped" });
        Next::Go
    }

    /// A block (either direction): the client's `error` event, or the session closed as configured.
    async fn blocked(
        &mut self,
        c_tx: &mut Sink,
        rejection: &Rejection,
        event_id: Option<String>,
    ) -> Next {
        if matches!(
            rejection,
            Rejection::PolicyBlocked { .. } | Rejection::OpaqueInputDenied
        ) {
            count("client", "blocked");
        }
        self.counts.blocked += 1;
        let cfg = &self.rt.cfg;
        let limit = cfg.close_after_blocks;
        if cfg.on_block == OnBlock::Close || (limit > 0 && self.counts.blocked >= u64::from(limit))
        {
            let _ = c_tx
                .send(Message::Text(rejection_event(rejection, event_id).into()))
                .await;
            return Next::Close(CloseCode::Policy, "blocked by policy");
        }
        send_or_end(c_tx, rejection_event(rejection, event_id)).await
    }

    /// Whether a client message goes over the session's messages a second.
    fn over_rate(&mut self) -> bool {
        let limit = self.rt.cfg.messages_per_second;
        if limit == 0 {
            return false;
        }
        let now = Instant::now();
        if now.duration_since(self.second) >= Duration::from_secs(1) {
            self.second = now;
            self.in_second = 0;
        }
        self.in_second += 1;
        self.in_second > limit
    }

    /// Counts a finished response's tokens (its `response.done` usage) against the caller's token quotas.
    fn settle(&self, s: &ResponseSummary) {
        let usage = s.usage.as_ref().and_then(Usage::from_value);
        if let (Some(u), Some(caller), Some(ticket)) = (
            usage,
            self.ctx.admission.caller.as_ref(),
            self.ctx.admission.ticket,
        ) {
            let delta = u.total_tokens.min(i64::MAX as u64) as i64;
            self.rt
                .gw
                .limiter
                .settle_tokens(&caller.parties(), ticket, delta);
        }
    }

    /// A response is over (its tokens already settled): its decision event.
    async fn response_event(&mut self, s: ResponseSummary) {
        self.counts.responses += 1;
        let usage = s.usage.as_ref().and_then(Usage::from_value);
        if !self.rt.gw.audit.enabled() {
            return;
        }
        let Some(rules) = self.ctx.rules.clone() else {
            return;
        };
        let Some(mut ev) = self.rt.event(self.ctx, self.model.clone(), 101) else {
            return;
        };
        let req = hits_of(
            &rules,
            &std::mem::take(&mut self.request_hits),
            self.ctx.admission.monitor,
        );
        fill_decisions(&mut ev, &rules, &req, &s.side.hits, s.blocked_by.is_some());
        if s.side.decision == Decision::Error {
            ev.decision.response = Decision::Error.as_str();
        }
        ev.blocked_mid_stream = s.blocked_by.is_some();
        ev.usage = usage;
        ev.attempts = Vec::new();
        ev.realtime = Some(realtime_facts(
            "response",
            Some(s.response_id),
            &self.counts,
            s.unfinished,
        ));
        self.rt.gw.audit.record(Box::new(ev)).await;
    }
}

fn count(direction: &str, outcome: &str) {
    metrics::REALTIME_MESSAGES
        .with_label_values(&[direction, outcome])
        .inc();
}

fn close(code: CloseCode, why: &'static str) -> CloseFrame {
    CloseFrame {
        code,
        reason: why.into(),
    }
}

/// How a failed leg closes the session: a message over the size limit with 1009, anything else with 1002
/// (a protocol error) or as the connection ended.
fn closing_error(e: &WsError) -> Next {
    match e {
        WsError::Capacity(CapacityError::MessageTooLong { .. })
        | WsError::Capacity(CapacityError::TooManyHeaders) => Next::Close(
            CloseCode::Size,
            "message larger than limits.max_ws_message_bytes",
        ),
        WsError::Protocol(_) | WsError::Utf8(_) => {
            Next::Close(CloseCode::Protocol, "protocol error")
        }
        _ => Next::Ended(None),
    }
}

/// Sends a message on a leg; a leg that cannot take it ends the session.
async fn forward(tx: &mut Sink, m: Message) -> Next {
    match tx.send(m).await {
        Ok(()) => Next::Go,
        Err(WsError::Capacity(_)) => Next::Close(
            CloseCode::Size,
            "message larger than limits.max_ws_message_bytes",
        ),
        Err(_) => Next::Ended(None),
    }
}

async fn send_or_end(tx: &mut Sink, text: String) -> Next {
    forward(tx, Message::Text(text.into())).await
}

/// A realtime `error` event carrying what the one renderer says of a rejection (its code, type, message and
/// the rule that refused), about the client's event `event_id` if it named one.
fn rejection_event(r: &Rejection, event_id: Option<String>) -> String {
    let resp = r.render();
    let error = serde_json::from_slice::<Value>(&resp.body)
        .ok()
        .and_then(|mut v| v.get_mut("error").map(Value::take))
        .unwrap_or_else(|| json!({"type": "server_error", "code": resp.code, "message": r.to_string(), "param": null}));
    error_event(error, event_id)
}

/// A realtime `error` event with this `error` object, naming the client's event if it is a safe id.
fn error_event(mut error: Value, event_id: Option<String>) -> String {
    if let Some(id) = event_id.filter(|id| crate::openai::is_safe_id(id.as_bytes())) {
        error["event_id"] = Value::String(id);
    }
    json!({"type": "error", "event_id": gateway_event_id(), "error": error}).to_string()
}

/// An event id of the gateway's own (`event_pg_…`).
fn gateway_event_id() -> String {
    format!("event_pg_{}", uuid::Uuid::new_v4().simple())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn realtime_heads_are_told_from_the_rest_by_their_bytes() {
        let yes = [
            "GET /v1/realtime?model=gpt-realtime HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n",
            "GET /v1/realtime HTTP/1.1\r\nupgrade: websocket\r\n\r\n",
            "GET /v1/realtime/ HTTP/1.1\r\nUPGRADE: websocket\r\n\r\n",
        ];
        let no = [
            "GET /v1/realtime HTTP/1.1\r\nHost: x\r\n\r\n",
            "POST /v1/realtime HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
            "GET /v1/realtime/sessions HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
            "GET /v1/realtimex HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
            "GET /v1/chat HTTP/1.1\r\nX-Upgrade: websocket\r\n\r\n",
        ];
        for h in yes {
            assert!(wants(h.as_bytes()), "{h}");
        }
        for h in no {
            assert!(!wants(h.as_bytes()), "{h}");
        }
    }

    #[test]
    fn handshakes_are_checked_and_the_model_read_from_the_query() {
        let ok = "GET /v1/realtime?model=gpt%2Drealtime&x=1 HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: realtime, openai-insecure-api-key.pg-1\r\n\r\n";
        let hs = parse(ok.as_bytes()).expect("a handshake");
        assert_eq!(hs.model.as_deref(), Some("gpt-realtime"));
        assert_eq!(hs.protocols, ["realtime", "openai-insecure-api-key.pg-1"]);
        for bad in [
            ok.replace("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8"),
            ok.replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", ""),
            ok.replace("Connection: keep-alive, Upgrade", "Connection: keep-alive"),
        ] {
            assert!(
                matches!(parse(bad.as_bytes()), Err(Rejection::MalformedRequest(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn error_events_carry_the_rule_and_the_clients_event_id_never_the_value() {
        let r = Rejection::PolicyBlocked {
            rule: "secrets.openai_key".into(),
            description: "OpenAI API key".into(),
        };
        let v: Value =
            serde_json::from_str(&rejection_event(&r, Some("evt_1".into()))).expect("json");
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["code"], "policy_blocked");
        assert_eq!(v["error"]["event_id"], "evt_1");
        assert!(v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("secrets.openai_key")));
    }
}
