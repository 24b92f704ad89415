//! Headers, both ways. Every answer the client gets — proxied, relayed, refused, or failed — is decorated by
//! [`decorate`] exactly once: the request id, the rules version and policy, the decision and the rules that matched (ids
//! only, never values) when something was inspected, the caller's rate-limit headers, and CORS. Every request
//! that goes upstream gets [`to_upstream`]: the request id, the provider credential in place of a gateway
//! key, a plain (`identity`) answer when the answer will be inspected, and — when tracing is on — the gateway's
//! `traceparent` (and the client's bounded `tracestate`).

use std::time::SystemTime;

use pingora::http::{RequestHeader, ResponseHeader};
use pingora::Result;

use super::RequestCtx;
use crate::admission::cors::{self, Preflight};
use crate::upstream::{Pool, HOP_BY_HOP};

pub const REQUEST_ID: &str = "x-request-id";
const RULES_VERSION: &str = "x-promptgate-rules-version";
const DECISION: &str = "x-promptgate-decision";
const RULES: &str = "x-promptgate-rules";
const POLICY: &str = "x-promptgate-policy";

/// Adds the headers every answer carries (see the module doc).
pub fn decorate(header: &mut ResponseHeader, ctx: &RequestCtx) -> Result<()> {
    header.insert_header(REQUEST_ID, ctx.request_id.as_str())?;
    if let Some(rules) = &ctx.rules {
        header.insert_header(RULES_VERSION, rules.version())?;
        header.insert_header(POLICY, rules.policy())?;
        if ctx.outcome.judged() {
            header.insert_header(DECISION, ctx.outcome.decision().as_str())?;
            let ids = ctx.outcome.rule_ids(rules);
            if !ids.is_empty() {
                header.insert_header(RULES, ids.join(","))?;
            }
        }
    }
    let a = &ctx.admission;
    if let (Some(standing), Some(caller)) = (&a.standing, &a.caller) {
        if caller.is_limited() {
            for (name, value) in crate::limits::headers(standing, SystemTime::now()) {
                header.insert_header(name, value)?;
            }
        }
    }
    for (name, value) in cors::answer_headers(a.cors_origin.as_deref(), a.has_origin) {
        header.append_header(name, value)?;
    }
    Ok(())
}

/// Fields that carry a client's credentials: none of them reaches the upstream when the client authenticated
/// with a gateway key (the provider key goes instead).
const CREDENTIALS: [&str; 5] = [
    "authorization",
    "api-key",
    "x-api-key",
    "x-goog-api-key",
    "openai-insecure-api-key",
];

/// The gateway's edits of a request going upstream to `pool`, on either path.
pub fn to_upstream(req: &mut RequestHeader, ctx: &RequestCtx, pool: &Pool) -> Result<()> {
    // Credentials for a proxy are for this hop, never for the upstream.
    req.remove_header(&http::header::PROXY_AUTHORIZATION);
    if let Some(key) = ctx.admission.caller.as_ref().and_then(|c| c.key()) {
        // Gateway keys stay here; the upstream sees the provider key the entry names, else the pool's, if any.
        for name in CREDENTIALS {
            req.remove_header(name);
        }
        if let Some(credential) = key.upstream.as_ref().or(pool.credential.as_ref()) {
            pool.put_credential(req, credential)?;
        }
    }
    if ctx.answers.inspects() {
        // Answers are inspected: ask for them unencoded.
        req.insert_header(http::header::ACCEPT_ENCODING, "identity")?;
    }
    req.insert_header(REQUEST_ID, ctx.request_id.as_str())?;
    if let Some(t) = &ctx.trace {
        // The upstream joins the trace under the gateway's upstream span (sampled or not); the client's own
        // traceparent names a span the upstream is not a child of.
        req.insert_header("traceparent", t.upstream_traceparent())?;
        match &t.tracestate {
            Some(state) => req.insert_header("tracestate", state.as_str())?,
            None => {
                req.remove_header("tracestate");
            }
        }
    }
    Ok(())
}

/// How a relayed answer's body is framed for the client.
#[derive(Debug, Clone, Copy)]
pub enum Framing {
    /// A body of this many bytes (a held answer).
    Length(usize),
    /// The upstream's own length if it gave one, else chunked (an answer passed through as it arrives).
    AsUpstream,
    /// Chunked: the length is not known (a filtered stream).
    Chunked,
}

/// The client's header for a relayed answer: the upstream's, without its hop-by-hop fields (and without
/// `Content-Encoding` when the body was decoded), framed as said, and decorated.
pub fn from_upstream(
    up: &ResponseHeader,
    ctx: &RequestCtx,
    framing: Framing,
    decoded: bool,
) -> Result<ResponseHeader> {
    let mut resp = ResponseHeader::build(up.status, Some(up.headers.len() + 8))?;
    for (name, value) in up.headers.iter() {
        if HOP_BY_HOP.contains(&name.as_str())
            || (decoded && name == http::header::CONTENT_ENCODING)
        {
            continue;
        }
        resp.append_header(name.clone(), value.clone())?;
    }
    let length = match framing {
        Framing::Length(n) => Some(n.to_string()),
        Framing::AsUpstream => up
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        Framing::Chunked => None,
    };
    match length {
        Some(n) => resp.insert_header(http::header::CONTENT_LENGTH, n)?,
        // HTTP/1.1 clients get chunked framing (a close-delimited body would end the connection); Pingora's
        // HTTP/2 session frames the body itself and drops this field.
        None if !no_body(up.status.as_u16()) => {
            resp.insert_header(http::header::TRANSFER_ENCODING, "chunked")?
        }
        None => {}
    }
    decorate(&mut resp, ctx)?;
    Ok(resp)
}

/// Statuses whose answers never have a body.
fn no_body(status: u16) -> bool {
    (100..200).contains(&status) || status == 204 || status == 304
}

/// The `204` that answers an allowed CORS preflight.
pub fn preflight(p: &Preflight, ctx: &RequestCtx) -> Result<ResponseHeader> {
    let mut header = ResponseHeader::build(204, Some(8))?;
    for (name, value) in p.headers() {
        header.insert_header(name, value)?;
    }
    header.insert_header(http::header::CONTENT_LENGTH, "0")?;
    header.insert_header(REQUEST_ID, ctx.request_id.as_str())?;
    Ok(header)
}

/// The content type of an answer, if it says one.
pub fn content_type(h: &ResponseHeader) -> Option<&str> {
    h.headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
}

/// The content encoding of an answer, if it says one.
pub fn content_encoding(h: &ResponseHeader) -> Option<&str> {
    h.headers
        .get(http::header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
}
