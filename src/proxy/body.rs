//! Request-body enforcement: the glue between Pingora's body hooks and the pure `inspect` module.
//!
//! Where the body is inspected, and why there: the body is read whole in `request_filter` (bounded by
//! `limits.max_body_bytes`), before any upstream connection exists, so a blocked request never contacts the
//! upstream at all. Pingora forwards a body read there only through its retry buffer, which holds at most
//! 64 KiB (`BODY_BUF_LIMIT`): we enable it before reading, and when Pingora replays that buffer into
//! `request_body_filter` we replace it with the inspected bytes. A body larger than that cannot take the proxy
//! path; `held.rs` makes the upstream exchange for it instead.
//!
//! The upstream receives the original bytes when nothing matched, the rewritten body when a rule redacted,
//! and nothing when a rule blocked.

use std::panic::AssertUnwindSafe;
use std::time::Instant;

use bytes::Bytes;

use crate::config::{InspectConfig, UnknownRoutes};
use crate::inspect::{self, ContentEncoding, Decision, Verdict};
use crate::metrics;
use crate::openai::Route;
use crate::rules::RuleSet;

use super::Rejection;

/// Request-body inspection state of one request.
#[derive(Debug)]
pub struct BodyInspection {
    pub encoding: ContentEncoding,
    /// Non-JSON bodies are refused on the known API routes.
    pub json_required: bool,
    pub held: Vec<u8>,
    /// What goes upstream, once decided.
    pub forward: Option<Bytes>,
    /// Whether `forward` is a decoded (re-encoded as plain) body rather than the bytes received.
    pub forward_decoded: bool,
    pub verdict: Option<Verdict>,
    pub inspect_us: u64,
    /// Inspection failed and `policy.fail_open` let the request through uninspected.
    pub failed_open: bool,
    /// Model, stream flag and text size of the body (default when it could not be read as JSON).
    pub facts: inspect::Facts,
}

/// What `request_filter` should do with a request, from its route and headers alone.
pub enum Plan {
    /// No body to inspect (or a route configured to pass).
    Skip,
    Inspect(Box<BodyInspection>),
}

/// Decides from the header whether and how the body will be inspected; refuses what can be refused already.
/// `need_model`: the caller's scope needs the body's model, so the body is read even with inspection off.
pub fn plan(
    cfg: &InspectConfig,
    route: Route,
    content_length: Option<usize>,
    chunked: bool,
    content_encoding: Option<&str>,
    need_model: bool,
) -> Result<Plan, Rejection> {
    if (!cfg.enabled && !need_model) || (content_length.unwrap_or(0) == 0 && !chunked) {
        return Ok(Plan::Skip);
    }
    let json_required = match route {
        Route::ChatCompletions
        | Route::Completions
        | Route::Embeddings
        | Route::Responses
        | Route::Moderations => true,
        Route::Models | Route::OtherV1 => match cfg.unknown_routes {
            UnknownRoutes::Pass => return Ok(Plan::Skip),
            UnknownRoutes::Deny => return Err(Rejection::RouteDenied),
            UnknownRoutes::Inspect => false,
        },
        Route::NotFound => return Ok(Plan::Skip),
    };
    if content_length.is_some_and(|n| n > cfg.max_body_bytes) {
        return Err(Rejection::BodyTooLarge {
            limit: cfg.max_body_bytes,
        });
    }
    let encoding = ContentEncoding::parse(content_encoding).ok_or_else(|| {
        Rejection::UnsupportedEncoding(content_encoding.unwrap_or("").chars().take(32).collect())
    })?;
    Ok(Plan::Inspect(Box::new(BodyInspection {
        encoding,
        json_required,
        held: Vec::new(),
        forward: None,
        forward_decoded: false,
        verdict: None,
        inspect_us: 0,
        failed_open: false,
        facts: inspect::Facts::default(),
    })))
}

/// Appends a received chunk, refusing the body as soon as it is over the limit.
pub fn hold(insp: &mut BodyInspection, chunk: &[u8], limit: usize) -> Result<(), Rejection> {
    if insp.held.len() + chunk.len() > limit {
        return Err(Rejection::BodyTooLarge { limit });
    }
    insp.held.extend_from_slice(chunk);
    Ok(())
}

/// Inspects the complete body held in `insp` under `opts` (the config's, with the caller's mode) and decides
/// what goes upstream (stored in `insp.forward`). With inspection off the body is only read for its facts.
pub fn decide(
    insp: &mut BodyInspection,
    rules: &RuleSet,
    cfg: &InspectConfig,
    opts: &inspect::InspectOptions,
) -> Result<(), Rejection> {
    let started = Instant::now();
    let raw = std::mem::take(&mut insp.held);
    if !cfg.enabled {
        let decoded = inspect::decode_body(insp.encoding, &raw, cfg.max_decoded_body_bytes)
            .map_err(|e| Rejection::InvalidBody(e.to_string()))?;
        insp.facts = inspect::Facts::read(&decoded, opts.max_depth).unwrap_or_default();
        insp.forward = Some(Bytes::from(raw));
        return Ok(());
    }
    // Inspection is CPU work on data we do not control: a panic anywhere in it must not pass the request.
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
        inspect_raw(&raw, insp, rules, cfg, opts)
    }));
    insp.inspect_us = started.elapsed().as_micros() as u64;
    let verdict = match outcome {
        Ok(Ok(v)) => v,
        Ok(Err(rejection)) => return Err(rejection),
        Err(_) if cfg.fail_open => {
            metrics::INSPECTION_ERRORS
                .with_label_values(&["fail_open"])
                .inc();
            metrics::FAIL_OPEN.with_label_values(&["inspection"]).inc();
            tracing::error!(
                "request inspection failed; forwarding uninspected (policy.fail_open = true)"
            );
            insp.failed_open = true;
            insp.forward = Some(Bytes::from(raw));
            return Ok(());
        }
        Err(_) => {
            metrics::INSPECTION_ERRORS
                .with_label_values(&["fail_closed"])
                .inc();
            tracing::error!("request inspection failed; refusing the request (fail closed)");
            return Err(Rejection::InspectionFailed);
        }
    };
    metrics::DECISIONS
        .with_label_values(&["request", verdict.decision.as_str()])
        .inc();
    insp.facts = verdict.facts.clone();
    let result = if verdict.opaque_denied {
        Err(Rejection::OpaqueInputDenied)
    } else if let (Decision::Block, Some(rule)) = (verdict.decision, verdict.blocked_by) {
        let r = rules.rule(rule);
        Err(Rejection::PolicyBlocked {
            rule: r.id.clone(),
            description: r.description.clone(),
        })
    } else {
        match &verdict.rewritten {
            Some(body) => {
                insp.forward = Some(Bytes::from(body.clone()));
                insp.forward_decoded = true;
            }
            None => insp.forward = Some(Bytes::from(raw)),
        }
        Ok(())
    };
    insp.verdict = Some(verdict);
    result
}

fn inspect_raw(
    raw: &[u8],
    insp: &BodyInspection,
    rules: &RuleSet,
    cfg: &InspectConfig,
    opts: &inspect::InspectOptions,
) -> Result<Verdict, Rejection> {
    let decoded = inspect::decode_body(insp.encoding, raw, cfg.max_decoded_body_bytes).map_err(
        |e| match e {
            inspect::DecodeError::TooLarge(limit) => Rejection::BodyTooLarge { limit },
            other => Rejection::InvalidBody(other.to_string()),
        },
    )?;
    let first = decoded.iter().find(|b| !b.is_ascii_whitespace()).copied();
    let looks_json = matches!(first, Some(b'{') | Some(b'['));
    if looks_json || insp.json_required {
        return inspect::inspect_json(rules, &decoded, opts, crate::rules::Direction::Request)
            .map_err(|e| Rejection::InvalidBody(e.to_string()));
    }
    match std::str::from_utf8(&decoded) {
        Ok(text) => Ok(inspect::inspect_text(rules, text, opts)),
        // Binary on an unknown route (an upload): opaque, under the opaque-input policy.
        Err(_) => Ok(Verdict {
            decision: Decision::Allow,
            would_be: Decision::Allow,
            hits: Vec::new(),
            blocked_by: None,
            rewritten: None,
            opaque_inputs: 1,
            opaque_denied: opts.opaque == inspect::OpaquePolicy::Deny && !opts.monitor,
            facts: inspect::Facts {
                text_bytes: decoded.len() as u64,
                ..Default::default()
            },
        }),
    }
}
