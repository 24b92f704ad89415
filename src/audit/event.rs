//! The decision event: one JSON line per request (per stream, written when it ends). It names what was
//! decided and why — rule ids, actions and counts — and never carries a matched value, a prompt or a
//! completion.

use std::time::SystemTime;

use serde::Serialize;

use crate::openai::usage::Usage;

/// `type` of an event: what a webhook can filter on.
pub const MESSAGE: &str = "chat.message";
/// Something was blocked, in either direction.
pub const BLOCKED: &str = "chat.blocked";
/// Rules in monitor mode matched (nothing enforced would have let this through unchanged).
pub const ESCALATED: &str = "chat.escalated";

#[derive(Debug, Serialize)]
pub struct Event<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub event_id: String,
    pub ts: String,
    pub request_id: &'a str,
    pub key_id: Option<&'a str>,
    pub tenant: Option<&'a str>,
    pub route: &'static str,
    pub method: &'a str,
    pub model: Option<&'a str>,
    pub stream: bool,
    pub decision: Decisions,
    pub rules: Vec<RuleMatch<'a>>,
    pub rules_version: &'a str,
    pub status: u16,
    /// The gateway's own error or refusal code (`policy_blocked`, `rate_limit_exceeded`, …), if it answered.
    pub error: Option<&'static str>,
    pub blocked_mid_stream: bool,
    pub latency: Latency,
    pub usage: Option<Usage>,
    pub bytes: Bytes,
    /// The client's conversation or session id, for correlation (dropped when a rule matches it).
    pub session_id: Option<&'a str>,
}

/// What was decided in each direction: `allow | redact | block | monitor | error`.
#[derive(Debug, Serialize)]
pub struct Decisions {
    pub request: &'static str,
    pub response: &'static str,
}

#[derive(Debug, Serialize)]
pub struct RuleMatch<'a> {
    pub id: &'a str,
    pub action: &'static str,
    pub direction: &'static str,
    pub count: u32,
    /// Applied (false in monitor mode or for a monitor-mode rule).
    pub enforced: bool,
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

impl Event<'_> {
    pub fn to_line(&self) -> Vec<u8> {
        // Plain data: serialising cannot fail; an empty line would be skipped, never half-written.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// RFC 3339 UTC with milliseconds.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}
