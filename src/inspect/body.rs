//! A request body the gateway consumed: held whole (bounded by `limits.max_body_bytes`), then judged — every
//! string walked and checked against the rules — and what goes upstream decided: the original bytes when
//! nothing matched, the rewritten body when a rule redacted, nothing when a rule blocked. With inspection off a
//! body is only consumed to read its facts (the model a scoped key must name, the size a token quota counts).
//!
//! Inspection is CPU work on data the gateway does not control: a panic inside it never lets the request
//! through uninspected (fail closed, 503), unless `policy.fail_open` says so (counted).

use std::panic::AssertUnwindSafe;
use std::time::Instant;

use bytes::Bytes;

use crate::config::InspectConfig;
use crate::inspect::{self, ContentEncoding, Decision, Verdict};
use crate::metrics;
use crate::openai::{multipart, Rejection};
use crate::rules::RuleSet;

/// Request-body inspection state of one request.
#[derive(Debug)]
pub struct BodyInspection {
    /// Judged against the rules (inspection on); `false`: read only for its facts.
    pub inspect: bool,
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
    /// The boundary of a `multipart/form-data` body (its `model` field is read for the key's scope).
    pub multipart: Option<String>,
}

impl BodyInspection {
    /// A body about to be read: judged against the rules when `inspect`, else only read for its facts.
    pub fn new(inspect: bool, encoding: ContentEncoding, json_required: bool) -> Self {
        Self {
            inspect,
            encoding,
            json_required,
            held: Vec::new(),
            forward: None,
            forward_decoded: false,
            verdict: None,
            inspect_us: 0,
            failed_open: false,
            facts: inspect::Facts::default(),
            multipart: None,
        }
    }
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
/// what goes upstream (stored in `insp.forward`). A body consumed only for its facts is only parsed.
pub fn decide(
    insp: &mut BodyInspection,
    rules: &RuleSet,
    cfg: &InspectConfig,
    opts: &inspect::InspectOptions,
) -> Result<(), Rejection> {
    let started = Instant::now();
    let raw = std::mem::take(&mut insp.held);
    if !insp.inspect {
        let decoded = inspect::decode_body(insp.encoding, &raw, cfg.max_decoded_body_bytes)
            .map_err(|e| Rejection::InvalidBody(e.to_string()))?;
        insp.facts = match &insp.multipart {
            Some(boundary) => inspect::Facts {
                model: multipart::field(&decoded, boundary, "model"),
                text_bytes: decoded.len() as u64,
                ..Default::default()
            },
            None => inspect::Facts::read(&decoded, opts.max_depth).unwrap_or_default(),
        };
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
            // Logged by the caller, which knows the request (its id and trace id).
            insp.failed_open = true;
            insp.forward = Some(Bytes::from(raw));
            return Ok(());
        }
        Err(_) => {
            metrics::INSPECTION_ERRORS
                .with_label_values(&["fail_closed"])
                .inc();
            // Logged by the caller, which knows the request (its id and trace id).
            return Err(Rejection::InspectionFailed);
        }
    };
    insp.facts = verdict.facts.clone();
    if let (Some(boundary), None) = (&insp.multipart, &insp.facts.model) {
        // A form upload names its model in a field; a key's model scope applies to it as to a JSON body. (An
        // encoded upload is inspected decoded, but only a plain one is searched for the field.)
        if insp.encoding == ContentEncoding::Identity {
            insp.facts.model = multipart::field(&raw, boundary, "model");
        }
    }
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

/// `body` (what would be forwarded for `insp`) with its top-level `model` set to `to`, for a pool that knows
/// the model by another name: decoded if it was not, parsed and serialised again. `None` when it is not a JSON
/// object (a form upload keeps its model field).
pub fn with_model(insp: &BodyInspection, body: &[u8], cap: usize, to: &str) -> Option<Vec<u8>> {
    let plain = if insp.forward_decoded {
        std::borrow::Cow::Borrowed(body)
    } else {
        std::borrow::Cow::Owned(inspect::decode_body(insp.encoding, body, cap).ok()?)
    };
    let mut doc: serde_json::Value = serde_json::from_slice(&plain).ok()?;
    doc.as_object_mut()?
        .insert("model".to_string(), serde_json::Value::from(to));
    serde_json::to_vec(&doc).ok()
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
