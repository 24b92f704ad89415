//! The decision event: one JSON line per request (per stream, written when it ends). It names what was
//! decided and why — rule ids, actions and counts — and never carries a matched value, a prompt or a
//! completion.
//!
//! The request path builds an [`Event`] from plain values it already holds and hands it over; the writer turns
//! it into its line (id, timestamp, rule ids, JSON) off the request path, so a keep-alive connection's next
//! request does not wait for serialisation.

use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;

use crate::openai::usage::Usage;
use crate::rules::{Direction, RuleSet};

/// `type` of an event: what a webhook can filter on.
pub const MESSAGE: &str = "chat.message";
/// Something was blocked, in either direction.
pub const BLOCKED: &str = "chat.blocked";
/// Rules in monitor mode matched (nothing enforced would have let this through unchanged).
pub const ESCALATED: &str = "chat.escalated";

/// One request's decision, as handed to the writer.
#[derive(Debug)]
pub struct Event {
    pub kind: &'static str,
    pub at: SystemTime,
    pub request_id: String,
    pub key_id: Option<String>,
    pub tenant: Option<String>,
    pub route: &'static str,
    pub method: &'static str,
    /// The model the request named, as it named it: written only if it has the shape of a model name and no
    /// rule matches it.
    pub model: Option<String>,
    pub stream: bool,
    pub decision: Decisions,
    /// The rule set the request was checked against: names the rules of `hits` and the version.
    pub rules: Arc<RuleSet>,
    pub hits: Vec<Hit>,
    pub status: u16,
    /// The gateway's own error or refusal code (`policy_blocked`, `rate_limit_exceeded`, …), if it answered.
    pub error: Option<&'static str>,
    pub blocked_mid_stream: bool,
    pub latency: Latency,
    pub usage: Option<Usage>,
    pub bytes: Bytes,
    /// The client's conversation or session id, as it sent it: written only if it is a safe id that no rule
    /// matches (a `user` field holding an email address is not an id to copy into the audit trail).
    pub session_id: Option<String>,
    /// The pool the request was routed to (its configured name), if it was routed.
    pub upstream: Option<Arc<str>>,
    /// Every attempt to reach an upstream, in order (a failover or a fallback makes more than one).
    pub attempts: Vec<Attempt>,
    /// A realtime session's event: what it covers and its counts.
    pub realtime: Option<Realtime>,
    /// The trace id (hex) the upstream was told of, when tracing is on (sampled or not).
    pub trace_id: Option<String>,
}

/// What a realtime event covers: one response of a session, or the whole session (written when it closes).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Realtime {
    /// `response` or `session`.
    pub scope: &'static str,
    /// The upstream's id of the response (written only if it is a safe id that no rule matches).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_id: Option<String>,
    /// Messages from the client, and from the upstream.
    pub client_messages: u64,
    pub upstream_messages: u64,
    /// Events blocked (client events not forwarded, responses ended).
    pub blocked: u64,
    /// Responses finished in the session.
    pub responses: u64,
    /// The response ended before its `response.done` (the session closed).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub unfinished: bool,
    /// How the session was closed (the WebSocket close code), for a session event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub close_code: Option<u16>,
}

/// One attempt to reach an upstream: where it went and how it ended.
#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    pub upstream: Arc<str>,
    /// The endpoint's address.
    pub endpoint: std::net::SocketAddr,
    /// The status of the answer, when one came.
    pub status: Option<u16>,
    /// Why no answer came: `connect`, `timeout` or `other`.
    pub error: Option<&'static str>,
}

/// Matches of one rule in one direction.
#[derive(Debug, Clone, Copy)]
pub struct Hit {
    pub rule: usize,
    pub direction: Direction,
    pub count: u32,
    /// Applied (false in monitor mode or for a monitor-mode rule).
    pub enforced: bool,
}

/// What was decided in each direction: `allow | redact | block | monitor | error`.
#[derive(Debug, Serialize)]
pub struct Decisions {
    pub request: &'static str,
    pub response: &'static str,
}

#[derive(Debug, Serialize)]
pub struct Latency {
    pub inspect_us: InspectUs,
    /// From the request sent upstream to the upstream's last byte.
    pub upstream_ms: Option<f64>,
    /// From the request received to the first answer byte sent to the client.
    pub ttft_ms: Option<f64>,
    pub total_ms: f64,
}

#[derive(Debug, Serialize)]
pub struct InspectUs {
    pub request: u64,
    pub response: u64,
}

#[derive(Debug, Serialize)]
pub struct Bytes {
    #[serde(rename = "in")]
    pub received: u64,
    #[serde(rename = "out")]
    pub sent: u64,
}

/// The line as written: field order is the file format (`type` first, for readers that skip by type).
#[derive(Serialize)]
struct Line<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    event_id: String,
    ts: String,
    request_id: &'a str,
    key_id: Option<&'a str>,
    tenant: Option<&'a str>,
    route: &'static str,
    method: &'static str,
    model: Option<&'a str>,
    stream: bool,
    decision: &'a Decisions,
    rules: Vec<RuleLine<'a>>,
    rules_version: &'a str,
    /// The policy the request was checked under (`default`: every rule as written).
    policy: &'a str,
    status: u16,
    error: Option<&'static str>,
    blocked_mid_stream: bool,
    latency: &'a Latency,
    usage: Option<Usage>,
    bytes: &'a Bytes,
    session_id: Option<&'a str>,
    upstream: Option<&'a str>,
    attempts: &'a [Attempt],
    #[serde(skip_serializing_if = "Option::is_none")]
    realtime: Option<Realtime>,
    #[serde(skip_serializing_if = "Option::is_none")]
    trace_id: Option<&'a str>,
}

#[derive(Serialize)]
struct RuleLine<'a> {
    id: &'a str,
    action: &'static str,
    direction: &'static str,
    count: u32,
    enforced: bool,
}

impl Event {
    /// The event's JSON line (without the newline), with a fresh `event_id`.
    pub fn to_line(&self) -> Vec<u8> {
        let rules = self
            .hits
            .iter()
            .map(|h| {
                let r = self.rules.rule(h.rule);
                RuleLine {
                    id: r.id.as_str(),
                    action: r.action.as_str(),
                    direction: direction(h.direction),
                    count: h.count,
                    enforced: h.enforced,
                }
            })
            .collect();
        // Client text goes into the record only in a safe shape and when no rule matches it.
        let clean = |v: &str| {
            self.rules
                .everything()
                .scan(v, Direction::Request)
                .is_empty()
        };
        let session_id = self
            .session_id
            .as_deref()
            .filter(|id| crate::openai::is_safe_id(id.as_bytes()) && clean(id));
        let model = self.model.as_deref().filter(|m| safe_model(&self.rules, m));
        let line = Line {
            kind: self.kind,
            event_id: uuid::Uuid::new_v4().to_string(),
            ts: rfc3339(self.at),
            request_id: &self.request_id,
            key_id: self.key_id.as_deref(),
            tenant: self.tenant.as_deref(),
            route: self.route,
            method: self.method,
            model,
            stream: self.stream,
            decision: &self.decision,
            rules,
            rules_version: self.rules.version(),
            policy: self.rules.policy(),
            status: self.status,
            error: self.error,
            blocked_mid_stream: self.blocked_mid_stream,
            latency: &self.latency,
            usage: self.usage,
            bytes: &self.bytes,
            session_id,
            upstream: self.upstream.as_deref(),
            attempts: &self.attempts,
            realtime: self.realtime.clone().map(|mut r| {
                r.response_id = r
                    .response_id
                    .filter(|id| crate::openai::is_safe_id(id.as_bytes()) && clean(id));
                r
            }),
            trace_id: self.trace_id.as_deref(),
        };
        // Plain data: serialising cannot fail; an empty line would be skipped, never half-written.
        serde_json::to_vec(&line).unwrap_or_default()
    }
}

/// Whether a client-supplied model name may be recorded (events, spans): the shape of a model name, and no
/// rule matches it (any rule as written: a policy chooses what is enforced, not what is recorded).
pub fn safe_model(rules: &RuleSet, m: &str) -> bool {
    crate::openai::is_safe_name(m) && rules.everything().scan(m, Direction::Request).is_empty()
}

/// The `direction` of a rule match, as events and metrics name it.
pub fn direction(d: Direction) -> &'static str {
    match d {
        Direction::Request => "request",
        _ => "response",
    }
}

/// RFC 3339 UTC with milliseconds.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}
