//! Non-streamed answers, held whole and inspected before the client sees their status line.
//!
//! Why this path exists: in Pingora 0.9 the response header is handed to the client as soon as
//! `response_filter` returns, before any body byte is seen, and no hook can hold it back — so a proxied answer
//! cannot turn into a 409 once its body turns out to carry a secret. For a request whose body was read and
//! inspected in `request_filter` (see `body.rs`) and that does not ask for a stream, the gateway therefore
//! makes the upstream exchange itself with Pingora's own HTTP connector (pooled, with the peer's timeouts),
//! reads the whole answer (bounded), inspects it, and only then writes the status line: 200 with the
//! original or redacted body, 409 for a block, 502 when it cannot be inspected. Streams, larger requests and
//! other routes take the ordinary proxy path.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::protocols::http::client::HttpSession;
use pingora::proxy::Session;
use serde::Deserialize;

use super::{body, decision_headers, Gateway, Rejection, RequestCtx, REQUEST_ID};
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

#[derive(Deserialize)]
struct StreamFlag {
    #[serde(default)]
    stream: bool,
}

/// Whether this request's answer is held: its body was inspected early, it does not ask for a stream, and
/// its route answers with text.
pub fn applies(gw: &Gateway, ctx: &RequestCtx) -> bool {
    if !gw.inspect.enabled
        || !matches!(
            ctx.route,
            Route::ChatCompletions | Route::Completions | Route::Responses
        )
    {
        return false;
    }
    let Some(insp) = &ctx.body else {
        return false;
    };
    let Some(forward) = &insp.forward else {
        return false;
    };
    if insp.mode != body::BodyMode::Early || insp.failed_open {
        return false;
    }
    // An encoded body that went upstream as it came cannot be peeked at cheaply; it takes the proxy path.
    if insp.encoding != ContentEncoding::Identity && !insp.forward_decoded {
        return false;
    }
    serde_json::from_slice::<StreamFlag>(forward).is_ok_and(|f| !f.stream)
}

/// Makes the upstream exchange, inspects the answer, writes the response. `Err` goes to `fail_to_proxy`.
pub async fn answer(gw: &Gateway, session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
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

    let (status, headers, raw) = exchange(gw, &req, forward, gw.inspect.max_response_bytes).await?;
    let outcome = inspect_answer(gw, ctx, &headers, &raw);
    let body = match outcome {
        Ok(body) => body,
        Err(rejection) => return Err(rejection.into_error()),
    };

    let mut resp = ResponseHeader::build(status, Some(headers.headers.len() + 4))?;
    for (name, value) in headers.headers.iter() {
        if HOP_BY_HOP.contains(&name.as_str()) {
            continue;
        }
        if name == http::header::CONTENT_ENCODING && body.decoded {
            continue;
        }
        resp.append_header(name.clone(), value.clone())?;
    }
    resp.insert_header(http::header::CONTENT_LENGTH, body.bytes.len().to_string())?;
    resp.insert_header(REQUEST_ID, ctx.request_id.as_str())?;
    decision_headers(&mut resp, ctx)?;
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body.bytes), true).await
}

/// What goes to the client.
struct Answer {
    bytes: Bytes,
    /// The upstream's Content-Encoding was undone.
    decoded: bool,
}

/// One request / answer with the upstream, on a pooled connection; a stale pooled connection is retried once
/// on a fresh one.
async fn exchange(
    gw: &Gateway,
    req: &pingora::http::RequestHeader,
    body: Bytes,
    cap: usize,
) -> Result<(u16, ResponseHeader, Vec<u8>)> {
    let peer = gw.upstream.peer();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let (mut up, reused) = gw
            .connector
            .get_http_session(&*peer)
            .await
            .map_err(|e| e.into_up())?;
        if let HttpSession::H1(s) = &mut up {
            s.read_timeout = peer.options.read_timeout;
            s.write_timeout = peer.options.write_timeout;
        }
        match round_trip(&mut up, req, body.clone(), cap).await {
            Ok((status, header, raw)) => {
                if let HttpSession::H1(s) = &mut up {
                    s.respect_keepalive();
                }
                gw.connector
                    .release_http_session(up, &*peer, peer.options.idle_timeout)
                    .await;
                return Ok((status, header, raw));
            }
            // A pooled connection the upstream had already closed: one fresh try.
            Err(e)
                if reused
                    && attempt == 1
                    && !matches!(
                        e.etype(),
                        ErrorType::ReadTimedout | ErrorType::HTTPStatus(_)
                    ) =>
            {
                continue
            }
            Err(e) => return Err(e),
        }
    }
}

async fn round_trip(
    up: &mut HttpSession,
    req: &pingora::http::RequestHeader,
    body: Bytes,
    cap: usize,
) -> Result<(u16, ResponseHeader, Vec<u8>)> {
    up.write_request_header(Box::new(req.clone()))
        .await
        .map_err(|e| e.into_up())?;
    up.write_request_body(body, true)
        .await
        .map_err(|e| e.into_up())?;
    up.finish_request_body().await.map_err(|e| e.into_up())?;
    up.read_response_header().await.map_err(|e| e.into_up())?;
    let header = up.response_header().cloned().ok_or_else(|| {
        Error::explain(ErrorType::InvalidHTTPHeader, "no response header").into_up()
    })?;
    let mut raw = Vec::new();
    while let Some(chunk) = up.read_response_body().await.map_err(|e| e.into_up())? {
        if raw.len() + chunk.len() > cap {
            return Err(Rejection::UpstreamTooLarge { limit: cap }.into_error());
        }
        raw.extend_from_slice(&chunk);
    }
    Ok((header.status.as_u16(), header, raw))
}

/// Inspects a held answer: successful JSON answers are walked string by string; anything else (errors,
/// other types) is returned as it came.
fn inspect_answer(
    gw: &Gateway,
    ctx: &mut RequestCtx,
    header: &ResponseHeader,
    raw: &[u8],
) -> Result<Answer, Rejection> {
    let rules = ctx.rules.clone().ok_or(Rejection::InspectionFailed)?;
    let is_json = header
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("json"));
    if !header.status.is_success() || !is_json {
        return Ok(Answer {
            bytes: Bytes::copy_from_slice(raw),
            decoded: false,
        });
    }
    let encoding = header
        .headers
        .get(http::header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok());
    let encoding = ContentEncoding::parse(encoding).ok_or(Rejection::UpstreamEncoding)?;
    let decoded = inspect::decode_body(encoding, raw, gw.inspect.max_response_bytes)
        .map_err(|e| Rejection::UpstreamUninspectable(e.to_string()))?;
    let opts = inspect::InspectOptions {
        opaque: OpaquePolicy::Pass,
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
                bytes: Bytes::from(body.clone()),
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
