//! The intent record of `audit.durability = "write_ahead"`: written and synced before a request goes upstream,
//! so no forwarded request can leave no trace, and completed by the request's decision event (same
//! `request_id`). It names what was decided about the request before it went — never a matched value.
//!
//! Like [`super::Event`], it is built from plain values on the request path and turned into its line on the
//! writer's thread.

use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;

use super::event::rfc3339;
use crate::rules::RuleSet;

/// `type` of an intent record.
pub const INTENT: &str = "audit.intent";

/// A request about to be forwarded.
#[derive(Debug)]
pub struct Intent {
    pub at: SystemTime,
    pub request_id: String,
    pub key_id: Option<String>,
    pub tenant: Option<String>,
    pub route: &'static str,
    pub method: &'static str,
    /// As the request named it: written only if it has the shape of a model name and no rule matches it.
    pub model: Option<String>,
    /// The request's decision (`allow | redact | monitor | error`; a blocked request is never forwarded).
    pub decision: &'static str,
    pub rules: Arc<RuleSet>,
    /// Indexes into `rules` of the rules that matched the request.
    pub hits: Vec<usize>,
    /// The pool the request was routed to.
    pub upstream: Option<Arc<str>>,
}

#[derive(Serialize)]
struct Line<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    ts: String,
    request_id: &'a str,
    key_id: Option<&'a str>,
    tenant: Option<&'a str>,
    route: &'static str,
    method: &'static str,
    model: Option<&'a str>,
    decision: Decision,
    rules: Vec<&'a str>,
    rules_version: &'a str,
    upstream: Option<&'a str>,
}

/// The same shape as a decision event's `decision`, with only the side known before forwarding.
#[derive(Serialize)]
struct Decision {
    request: &'static str,
}

impl Intent {
    /// The record's JSON line (without the newline and the chain fields).
    pub fn to_line(&self) -> Vec<u8> {
        let model = self
            .model
            .as_deref()
            .filter(|m| super::event::safe_model(&self.rules, m));
        let mut rules: Vec<&str> = self
            .hits
            .iter()
            .map(|i| self.rules.rule(*i).id.as_str())
            .collect();
        rules.dedup();
        let line = Line {
            kind: INTENT,
            ts: rfc3339(self.at),
            request_id: &self.request_id,
            key_id: self.key_id.as_deref(),
            tenant: self.tenant.as_deref(),
            route: self.route,
            method: self.method,
            model,
            decision: Decision {
                request: self.decision,
            },
            rules,
            rules_version: self.rules.version(),
            upstream: self.upstream.as_deref(),
        };
        // Plain data: serialising cannot fail.
        serde_json::to_vec(&line).unwrap_or_default()
    }
}
