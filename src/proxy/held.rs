//! Upstream exchanges the gateway makes itself, with Pingora's own HTTP connector (pooled, with the peer's
//! timeouts), for the requests the proxy path cannot serve right:
//!
//! - **Non-streamed answers**, held whole and inspected before the client sees their status line. In Pingora
//!   0.9 the response header is handed to the client as soon as `response_filter` returns, before any body
//!   byte is seen, and no hook can hold it back — so a proxied answer could not turn into a 409 once its body
//!   turns out to carry a secret. Here the whole answer is read (bounded), inspected, and only then the status
//!   line is written: 200 with the original or redacted body, 409 for a block, 502 when it cannot be inspected.
//! - **Streamed answers**, filtered event by event (`inspect::stream`) and written as they are released. Here a
//!   block also stops reading the upstream and drops its connection, which cancels the generation; on the
//!   proxy path an `Err` from `response_body_filter` would discard the batch that carries the error event.
//! - **Bodies over 64 KiB** on any route: read and inspected in `request_filter`, they cannot be handed to the
//!   proxy path, which forwards such a body only from its 64 KiB retry buffer.
//!
//! Uninspected requests, and inspected ones on routes that answer without text (embeddings, moderations,
//! other `/v1` routes), take the ordinary proxy path (whose streamed answers are filtered too).

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::protocols::http::client::HttpSession;
use pingora::proxy::Session;
use pingora::ErrorSource;

use super::{decision_headers, Gateway, Rejection, RequestCtx, REQUEST_ID};
use crate::inspect::{self, ContentEncoding, Decision, OpaquePolicy};
use crate::metrics;
use crate::openai::Route;
use crate::rules::Direction;

/// Hop-by-hop headers: never copied between the two connections.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
];

/// Whether this request is relayed here (see the module doc) rather than by the proxy path.
pub fn applies(gw: &Gateway, session: &Session, ctx: &RequestCtx) -> bool {
    let Some(insp) = &ctx.body else {
        return false;
    };
    if insp.forward.is_none() {
        return false;
    }
    if session.as_ref().retry_buffer_truncated() {
        return true;
    }
    gw.inspect.enabled && text_route(ctx.route) && !insp.failed_open
}

fn text_route(route: Route) -> bool {
    matches!(
        route,
        Route::ChatCompletions | Route::Completions | Route::Responses
    )
}

/// Makes the upstream exchange and answers the client. `Err` goes to `fail_to_proxy` (502 / 504 mapping).
pub async fn relay(gw: &Gateway, session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
    let forward = ctx
        .body
        .as_ref()
        .and_then(|b| b.forward.clone())
        .ok_or_else(|| Rejection::InspectionFailed.into_error())?;
    let mut req = session.req_header().clone();
    for h in HOP_BY_HOP {
        req.remove_header(h);
    }
    gw.prepare_upstream_request(&mut req, ctx)?;
    ctx.forwarded = true;
    ctx.upstream_sent = Some(std::time::Instant::now());
    let peer = gw.upstream.peer();
    let mut up = unless_client_leaves(session, send(gw, &peer, &req, forward)).await?;
    let header = up.response_header().cloned().ok_or_else(|| {
        Error::explain(ErrorType::InvalidHTTPHeader, "no response header").into_up()
    })?;
    let content_type = header
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let inspected = gw.inspect.enabled && header.status.is_success();
    if inspected && content_type.starts_with("text/event-stream") {
        return relay_stream(gw, session, ctx, up, &peer, header).await;
    }
    let raw =
        unless_client_leaves(session, read_all(&mut up, gw.inspect.max_response_bytes)).await?;
    release(gw, up, &peer).await;
    if header.status.is_success() && content_type.contains("json") {
        ctx.usage = crate::openai::usage::Usage::from_body(&raw);
    }
    let body = if inspected && content_type.contains("json") && text_route(ctx.route) {
        let started = std::time::Instant::now();
        let answer = inspect_answer(gw, ctx, &header, &raw);
        ctx.response_inspect_us += started.elapsed().as_micros() as u64;
        answer.map_err(Rejection::into_error)?
    } else {
        Answer {
            bytes: Bytes::from(raw),
            decoded: false,
        }
    };
    let mut resp = client_header(&header, ctx, body.decoded)?;
    resp.insert_header(http::header::CONTENT_LENGTH, body.bytes.len().to_string())?;
    session.write_response_header(Box::new(resp), false).await?;
    ctx.first_byte = Some(std::time::Instant::now());
    session.write_response_body(Some(body.bytes), true).await
}

/// The client's response header: the upstream's, less hop-by-hop fields (and Content-Encoding when the body
/// was decoded), plus the request id and the decision headers.
fn client_header(up: &ResponseHeader, ctx: &RequestCtx, decoded: bool) -> Result<ResponseHeader> {
    let mut resp = ResponseHeader::build(up.status, Some(up.headers.len() + 4))?;
    for (name, value) in up.headers.iter() {
        if HOP_BY_HOP.contains(&name.as_str())
            || (decoded && name == http::header::CONTENT_ENCODING)
        {
            continue;
        }
        resp.append_header(name.clone(), value.clone())?;
    }
    resp.insert_header(REQUEST_ID, ctx.request_id.as_str())?;
    decision_headers(&mut resp, ctx)?;
    Ok(resp)
}

/// A streamed answer, filtered event by event. A block stops reading the upstream: its connection is dropped,
/// not returned to the pool, which ends the upstream's generation.
async fn relay_stream(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
    mut up: HttpSession,
    peer: &pingora::upstreams::peer::HttpPeer,
    header: ResponseHeader,
) -> Result<()> {
    if super::encoded(&header) {
        return Err(Rejection::UpstreamEncoding.into_error());
    }
    let rules = ctx
        .rules
        .clone()
        .ok_or_else(|| Rejection::InspectionFailed.into_error())?;
    let mut filter =
        crate::inspect::stream::StreamFilter::new(rules, ctx.monitor, gw.inspect.max_stream_hold);
    let resp = client_header(&header, ctx, false)?;
    session.write_response_header(Box::new(resp), false).await?;
    // The filter goes into the context on every ending (its hits, usage and block feed the decision event).
    let result = stream_loop(session, ctx, &mut up, &mut filter).await;
    ctx.stream = Some(filter);
    match result {
        Ok(true) => {
            release(gw, up, peer).await;
            Ok(())
        }
        // Blocked: `up` is dropped, not pooled, which ends the upstream's generation.
        Ok(false) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Relays a stream through its filter. `Ok(true)`: the upstream finished; `Ok(false)`: blocked.
async fn stream_loop(
    session: &mut Session,
    ctx: &mut RequestCtx,
    up: &mut HttpSession,
    filter: &mut crate::inspect::stream::StreamFilter,
) -> Result<bool> {
    loop {
        let read = match unless_client_leaves(session, up.read_response_body()).await {
            Ok(read) => read,
            // The client left: nothing more to write; dropping the upstream session cancels the generation.
            Err(e) if e.esource() == &ErrorSource::Downstream => return Err(e),
            Err(e) => {
                // The upstream failed mid-stream: what is held leaves after its final inspection, then the
                // client's stream breaks off as the upstream's did.
                ctx.upstream_done = Some(std::time::Instant::now());
                let out = timed(ctx, || filter.finish());
                if !out.is_empty() {
                    let _ = session.write_response_body(Some(out), false).await;
                }
                return Err(e.into_up());
            }
        };
        let (out, end) = match read {
            Some(chunk) => (timed(ctx, || filter.push(&chunk)), filter.is_blocked()),
            None => {
                ctx.upstream_done = Some(std::time::Instant::now());
                (timed(ctx, || filter.finish()), true)
            }
        };
        if !out.is_empty() && ctx.first_byte.is_none() {
            ctx.first_byte = Some(std::time::Instant::now());
        }
        if end {
            session.write_response_body(Some(out), true).await?;
            return Ok(!filter.is_blocked());
        }
        if !out.is_empty() {
            session.write_response_body(Some(out), false).await?;
        }
    }
}

/// Runs one filter step, adding its time to the response's inspection time.
fn timed<T>(ctx: &mut RequestCtx, f: impl FnOnce() -> T) -> T {
    let started = std::time::Instant::now();
    let out = f();
    ctx.response_inspect_us += started.elapsed().as_micros() as u64;
    out
}

/// Runs `work` (an upstream exchange) unless the client leaves first: then the work is dropped — and with it
/// the upstream connection, which cancels the generation — and a downstream `ConnectionClosed` error ends the
/// request (nothing is written; its context, permits included, is released at once).
async fn unless_client_leaves<T>(
    session: &mut Session,
    work: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    tokio::pin!(work);
    let mut watch_client = true;
    loop {
        tokio::select! {
            done = &mut work => return done,
            // The request body is read whole by now: the only thing the client can still send is its close.
            idle = session.as_mut().read_body_or_idle(true), if watch_client => match idle {
                Err(e) if e.etype() == &ErrorType::ConnectionClosed || e.etype() == &ErrorType::ReadError => {
                    return Err(Error::explain(ErrorType::ConnectionClosed, "the client left").into_down());
                }
                // Anything else (a pipelined request's bytes): stop watching, finish the work.
                _ => watch_client = false,
            },
        }
    }
}

/// Connects (pooled), sends the request, reads the response header. A pooled connection the upstream had
/// already closed is retried once on a fresh one.
async fn send(
    gw: &Gateway,
    peer: &pingora::upstreams::peer::HttpPeer,
    req: &pingora::http::RequestHeader,
    body: Bytes,
) -> Result<HttpSession> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let (mut up, reused) = gw
            .connector
            .get_http_session(peer)
            .await
            .map_err(|e| e.into_up())?;
        if let HttpSession::H1(s) = &mut up {
            s.read_timeout = peer.options.read_timeout;
            s.write_timeout = peer.options.write_timeout;
        }
        let sent = async {
            up.write_request_header(Box::new(req.clone())).await?;
            up.write_request_body(body.clone(), true).await?;
            up.finish_request_body().await?;
            up.read_response_header().await
        }
        .await
        .map_err(|e| e.into_up());
        match sent {
            Ok(()) => return Ok(up),
            Err(e) if reused && attempt == 1 && !matches!(e.etype(), ErrorType::ReadTimedout) => {
                continue
            }
            Err(e) => return Err(e),
        }
    }
}

async fn read_all(up: &mut HttpSession, cap: usize) -> Result<Vec<u8>> {
    let mut raw = Vec::new();
    while let Some(chunk) = up.read_response_body().await.map_err(|e| e.into_up())? {
        if raw.len() + chunk.len() > cap {
            return Err(Rejection::UpstreamTooLarge { limit: cap }.into_error());
        }
        raw.extend_from_slice(&chunk);
    }
    Ok(raw)
}

async fn release(gw: &Gateway, mut up: HttpSession, peer: &pingora::upstreams::peer::HttpPeer) {
    if let HttpSession::H1(s) = &mut up {
        s.respect_keepalive();
    }
    gw.connector
        .release_http_session(up, peer, peer.options.idle_timeout)
        .await;
}

/// What goes to the client.
struct Answer {
    bytes: Bytes,
    /// The upstream's Content-Encoding was undone.
    decoded: bool,
}

/// A redacted answer's `logprobs` would carry the redacted text again, token by token and byte by byte:
/// they are dropped (`null`) from every choice.
fn without_logprobs(body: &[u8]) -> Vec<u8> {
    let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return body.to_vec();
    };
    let mut changed = false;
    for choice in v
        .get_mut("choices")
        .and_then(|c| c.as_array_mut())
        .into_iter()
        .flatten()
    {
        if let Some(lp) = choice.get_mut("logprobs").filter(|lp| !lp.is_null()) {
            *lp = serde_json::Value::Null;
            changed = true;
        }
    }
    if changed {
        serde_json::to_vec(&v).unwrap_or_else(|_| body.to_vec())
    } else {
        body.to_vec()
    }
}

/// Inspects a held answer (`relay` calls it for successful JSON answers only), walked string by string.
fn inspect_answer(
    gw: &Gateway,
    ctx: &mut RequestCtx,
    header: &ResponseHeader,
    raw: &[u8],
) -> Result<Answer, Rejection> {
    let rules = ctx.rules.clone().ok_or(Rejection::InspectionFailed)?;
    let encoding = header
        .headers
        .get(http::header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok());
    let encoding = ContentEncoding::parse(encoding).ok_or(Rejection::UpstreamEncoding)?;
    let decoded = inspect::decode_body(encoding, raw, gw.inspect.max_response_bytes)
        .map_err(|e| Rejection::UpstreamUninspectable(e.to_string()))?;
    let opts = inspect::InspectOptions {
        opaque: OpaquePolicy::Pass,
        monitor: ctx.monitor,
        ..gw.inspect.options.clone()
    };
    let verdict = inspect::inspect_json(&rules, &decoded, &opts, Direction::Response)
        .map_err(|e| Rejection::UpstreamUninspectable(e.to_string()))?;
    metrics::DECISIONS
        .with_label_values(&["response", verdict.decision.as_str()])
        .inc();
    let result = match (verdict.decision, verdict.blocked_by) {
        (Decision::Block, Some(rule)) => {
            let r = rules.rule(rule);
            Err(Rejection::ResponseBlocked {
                rule: r.id.clone(),
                description: r.description.clone(),
            })
        }
        _ => Ok(match &verdict.rewritten {
            Some(body) => Answer {
                bytes: Bytes::from(without_logprobs(body)),
                decoded: true,
            },
            None if encoding != ContentEncoding::Identity => Answer {
                bytes: Bytes::copy_from_slice(raw),
                decoded: false,
            },
            None => Answer {
                bytes: Bytes::from(decoded),
                decoded: false,
            },
        }),
    };
    ctx.answer = Some(verdict);
    result
}
