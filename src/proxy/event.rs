//! The end of a request: its decision event (for the audit sinks) and its metrics, both taken from the
//! request context in `logging`. Only ids, counts, codes and timings leave here — never a matched value.

use std::time::{Instant, SystemTime};

use pingora::proxy::Session;

use super::RequestCtx;
use crate::audit::event::{self, Bytes, Decisions, Event, InspectUs, Latency, RuleMatch};
use crate::inspect::Decision;
use crate::metrics;
use crate::rules::{Action, Direction, Mode, RuleSet};

/// Codes of gateway answers that mean the answer could not be inspected (response decision `error`).
const RESPONSE_ERRORS: [&str; 3] = [
    "upstream_uninspectable",
    "upstream_too_large",
    "upstream_encoding",
];

/// The outcome of one request, as the event and the metrics see it.
pub struct Outcome {
    pub line: Vec<u8>,
    /// The most severe decision of both directions (the `decision` label of `promptgate_requests_total`).
    pub decision: &'static str,
    /// The decision on the answer (`promptgate_decisions_total{direction="response"}` for streams).
    pub response: &'static str,
}

fn decision_str(d: Decision) -> &'static str {
    d.as_str()
}

fn request_decision(ctx: &RequestCtx) -> &'static str {
    match &ctx.body {
        Some(b) if b.failed_open => "error",
        Some(b) => match &b.verdict {
            Some(v) if v.opaque_denied => "block",
            Some(v) => decision_str(v.decision),
            None if ctx.error_code == Some("inspection_failed") => "error",
            None => "allow",
        },
        None if ctx.error_code == Some("inspection_failed") => "error",
        None => "allow",
    }
}

fn response_decision(ctx: &RequestCtx, rules: &RuleSet) -> &'static str {
    if ctx.error_code.is_some_and(|c| RESPONSE_ERRORS.contains(&c)) {
        return "error";
    }
    if let Some(a) = &ctx.answer {
        return decision_str(a.decision);
    }
    let Some(f) = &ctx.stream else {
        return "allow";
    };
    if f.blocked_by.is_some() {
        return "block";
    }
    let mut d = "allow";
    for &r in f.hits.keys() {
        let rule = rules.rule(r);
        let enforced = rule.mode == Mode::Enforce && !ctx.monitor;
        match (rule.action, enforced) {
            (Action::Redact, true) => d = "redact",
            (Action::Redact | Action::Block, false) if d == "allow" => d = "monitor",
            _ => {}
        }
    }
    d
}

fn severity(d: &str) -> u8 {
    match d {
        "allow" => 0,
        "monitor" => 1,
        "redact" => 2,
        "block" => 3,
        _ => 4,
    }
}

fn ms(from: Instant, to: Instant) -> f64 {
    to.saturating_duration_since(from).as_secs_f64() * 1000.0
}

/// Builds the event, records the end-of-request metrics, and returns the line for the sinks.
pub fn finish(session: &Session, ctx: &RequestCtx, status: u16) -> Outcome {
    let now = Instant::now();
    let route = ctx.route.label();
    let Some(rules) = ctx.rules.as_deref() else {
        return Outcome {
            line: Vec::new(),
            decision: "allow",
            response: "allow",
        };
    };
    let request = request_decision(ctx);
    let response = response_decision(ctx, rules);
    let overall = if severity(response) > severity(request) {
        response
    } else {
        request
    };

    let mut matches = Vec::new();
    let mut add = |rule: usize, count: u32, enforced: bool, direction: Direction| {
        let r = rules.rule(rule);
        let dir = match direction {
            Direction::Request => "request",
            _ => "response",
        };
        metrics::RULE_MATCHES
            .with_label_values(&[r.id.as_str(), dir, r.action.as_str()])
            .inc_by(u64::from(count));
        matches.push(RuleMatch {
            id: r.id.as_str(),
            action: r.action.as_str(),
            direction: dir,
            count,
            enforced,
        });
    };
    if let Some(v) = ctx.body.as_ref().and_then(|b| b.verdict.as_ref()) {
        for h in &v.hits {
            add(h.rule, h.count, h.enforced, Direction::Request);
        }
    }
    if let Some(a) = &ctx.answer {
        for h in &a.hits {
            add(h.rule, h.count, h.enforced, Direction::Response);
        }
    }
    if let Some(f) = &ctx.stream {
        for (&rule, &count) in &f.hits {
            let enforced = rules.rule(rule).mode == Mode::Enforce && !ctx.monitor;
            add(rule, count, enforced, Direction::Response);
        }
    }

    let upstream = match (ctx.upstream_sent, ctx.upstream_done) {
        (Some(a), Some(b)) => Some(ms(a, b)),
        (Some(a), None) => Some(ms(a, now)),
        _ => None,
    };
    let total = ms(ctx.started, now);
    metrics::REQUEST_DURATION
        .with_label_values(&[route])
        .observe(total / 1000.0);
    if let Some(u) = upstream {
        metrics::UPSTREAM_DURATION
            .with_label_values(&[route])
            .observe(u / 1000.0);
    }
    metrics::GATEWAY_OVERHEAD
        .with_label_values(&[route])
        .observe((total - upstream.unwrap_or(0.0)).max(0.0) / 1000.0);
    let ttft = ctx.first_byte.map(|t| ms(ctx.started, t));
    if let (Some(t), Some(_)) = (ttft, &ctx.stream) {
        metrics::TTFT
            .with_label_values(&[route])
            .observe(t / 1000.0);
    }

    let facts = ctx.body.as_ref().map(|b| &b.facts);
    let usage = ctx.reported_usage();
    let kind = if request == "block" || response == "block" {
        event::BLOCKED
    } else if request == "monitor" || response == "monitor" {
        event::ESCALATED
    } else {
        event::MESSAGE
    };
    let ev = Event {
        kind,
        event_id: uuid::Uuid::new_v4().to_string(),
        ts: event::rfc3339(SystemTime::now()),
        request_id: &ctx.request_id,
        key_id: ctx.caller.as_ref().map(|c| c.id()),
        tenant: ctx.caller.as_ref().and_then(|c| c.tenant()),
        route,
        method: session.req_header().method.as_str(),
        model: facts.and_then(|f| f.model.as_deref()),
        stream: facts.is_some_and(|f| f.stream) || ctx.stream.is_some(),
        decision: Decisions { request, response },
        rules: matches,
        rules_version: rules.version(),
        status,
        error: ctx.error_code,
        blocked_mid_stream: ctx.stream.as_ref().is_some_and(|f| f.blocked_by.is_some()),
        latency: Latency {
            inspect_us: InspectUs {
                request: ctx.body.as_ref().map_or(0, |b| b.inspect_us),
                response: ctx.response_inspect_us,
            },
            upstream_ms: upstream,
            ttft_ms: ttft,
            total_ms: total,
        },
        usage,
        bytes: Bytes {
            received: session.as_ref().body_bytes_read() as u64,
            sent: session.as_ref().body_bytes_sent() as u64,
        },
        session_id: session_id(session, ctx, rules),
    };
    Outcome {
        line: ev.to_line(),
        decision: overall,
        response,
    }
}

/// The client's conversation or session id: `x-session-id`, else the body's `user` or
/// `metadata.session_id` / `metadata.conversation_id`. Kept only when short, made of safe characters, and
/// matched by no rule (a `user` field holding an email address is not an id to copy into the audit trail).
fn session_id<'a>(session: &'a Session, ctx: &'a RequestCtx, rules: &RuleSet) -> Option<&'a str> {
    let header = session
        .req_header()
        .headers
        .get("x-session-id")
        .and_then(|v| v.to_str().ok());
    let id = header.or_else(|| ctx.body.as_ref().and_then(|b| b.facts.session.as_deref()))?;
    (super::ctx::valid_request_id(id.as_bytes()) && rules.scan(id, Direction::Request).is_empty())
        .then_some(id)
}
