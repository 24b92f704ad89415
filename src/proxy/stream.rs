//! The one stream driver: a streamed answer (SSE) read from the upstream, filtered event by event
//! (`inspect::stream`), and written to the client as the filter releases it.
//!
//! How a stream ends:
//! - the upstream finishes: what is held is released after a final inspection, the connection is pooled;
//! - a rule blocks: the client's stream ends cleanly with the error event of the one renderer (the SDKs raise
//!   it as `APIError`), nothing after the blocked text is sent, and the upstream connection is dropped, which
//!   cancels the generation;
//! - the stream cannot be inspected (an event too large, not UTF-8): the same, with an `upstream_uninspectable`
//!   error event — never passed uninspected;
//! - the upstream fails mid-stream: what is held leaves after its final inspection, then the client's stream
//!   breaks off as the upstream's did;
//! - the client leaves: the upstream connection is dropped at once.

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::{ErrorSource, Result};

use super::headers::{self, Framing};
use super::relay::unless_client_leaves;
use super::{Gateway, RequestCtx};
use crate::inspect::stream::StreamFilter;
use crate::inspect::Side;
use crate::openai::Rejection;
use crate::upstream::Exchange;

/// Filters a streamed answer to the client; see the module doc for how it ends.
pub async fn filter(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
    mut up: Exchange<'_>,
    header: &ResponseHeader,
    first: Bytes,
) -> Result<()> {
    if encoded(header) {
        // Asked for identity and got something else: never pass what cannot be inspected.
        ctx.outcome.response = Side::failed();
        return Err(Rejection::UpstreamEncoding.into_error());
    }
    let rules = ctx
        .rules
        .clone()
        .ok_or_else(|| Rejection::InspectionFailed.into_error())?;
    let mut filter = StreamFilter::new(rules, ctx.admission.monitor, gw.inspect.max_stream_hold);
    let mut resp = headers::from_upstream(header, ctx, Framing::Chunked, false)?;
    // It is a stream whatever the upstream called it: the client is told so.
    resp.insert_header(http::header::CONTENT_TYPE, "text/event-stream")?;
    session.write_response_header(Box::new(resp), false).await?;
    // The filter goes into the context on every ending: its hits, usage and ending feed the outcome.
    let result = drive(session, ctx, &mut up, &mut filter, first).await;
    let ended = match result {
        Ok(ended) => ended,
        Err(e) => {
            ctx.stream = Some(filter);
            return Err(e);
        }
    };
    ctx.stream = Some(filter);
    match ended {
        Ended::Finished(last) => {
            // Pooled before the client hears the end: its next request may want this connection.
            up.finish().await;
            if !last.is_empty() {
                ctx.sent_answer_bytes();
            }
            session.write_response_body(Some(last), true).await
        }
        // Cut: dropping `up` closes its connection, which ends the upstream's generation.
        Ended::Cut(last) => {
            drop(up);
            session.write_response_body(Some(last), true).await
        }
    }
}

/// How the upstream's part of a stream ended, with the last bytes for the client.
enum Ended {
    /// The upstream finished its answer.
    Finished(Bytes),
    /// The stream was cut: a block, or an answer that cannot be inspected.
    Cut(Bytes),
}

/// Relays the stream through its filter until the upstream finishes or the filter ends it; the last bytes are
/// left for the caller to write once the upstream connection is dealt with.
async fn drive(
    session: &mut Session,
    ctx: &mut RequestCtx,
    up: &mut Exchange<'_>,
    filter: &mut StreamFilter,
    first: Bytes,
) -> Result<Ended> {
    let mut first = (!first.is_empty()).then_some(first);
    loop {
        // The bytes read to tell what the answer is come first.
        if let Some(chunk) = first.take() {
            let out = with_ending(ctx.timed(|| filter.push(&chunk)), filter);
            if filter.is_ended() {
                return Ok(Ended::Cut(out));
            }
            if !out.is_empty() {
                ctx.sent_answer_bytes();
                session.write_response_body(Some(out), false).await?;
            }
            continue;
        }
        let read = match unless_client_leaves(session, up.read()).await {
            Ok(read) => read,
            // The client left: nothing more to write; dropping the upstream cancels the generation.
            Err(e) if e.esource() == &ErrorSource::Downstream => return Err(e),
            Err(e) => {
                ctx.timing.upstream_done = Some(Instant::now());
                let out = ctx.timed(|| filter.finish());
                let out = with_ending(out, filter);
                if !out.is_empty() {
                    let _ = session.write_response_body(Some(out), false).await;
                }
                return Err(e);
            }
        };
        let Some(chunk) = read else {
            ctx.timing.upstream_done = Some(Instant::now());
            let out = ctx.timed(|| filter.finish());
            return Ok(Ended::Finished(with_ending(out, filter)));
        };
        let out = with_ending(ctx.timed(|| filter.push(&chunk)), filter);
        if filter.is_ended() {
            if !out.is_empty() {
                ctx.sent_answer_bytes();
            }
            return Ok(Ended::Cut(out));
        }
        if !out.is_empty() {
            ctx.sent_answer_bytes();
            session.write_response_body(Some(out), false).await?;
        }
    }
}

/// `out`, followed by the event that ends the stream when the filter just ended it.
fn with_ending(out: Bytes, filter: &mut StreamFilter) -> Bytes {
    let Some(ending) = filter.ending() else {
        return out;
    };
    let event = ending.render().sse_event(filter.eol());
    let mut all = BytesMut::with_capacity(out.len() + event.len());
    all.extend_from_slice(&out);
    all.extend_from_slice(&event);
    all.freeze()
}

/// Whether an answer carries a `Content-Encoding` other than identity (the gateway asks for identity when it
/// inspects answers).
fn encoded(header: &ResponseHeader) -> bool {
    headers::content_encoding(header).is_some_and(|v| !v.trim().eq_ignore_ascii_case("identity"))
}
