//! A held answer: any answer on a route that carries text that is not a stream — JSON, text, an error of any
//! status — read whole (bounded by `limits.max_response_bytes`), judged, and only then given its status line:
//! the upstream's with the original or redacted body, 409 when a rule blocks, 502 when it is too large or
//! cannot be inspected. Pingora writes a proxied answer's header as soon as `response_filter` returns, so this
//! needs the gateway's own exchange.

use std::time::Instant;

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;

use super::headers::{self, Framing};
use super::relay::unless_client_leaves;
use super::{Gateway, RequestCtx};
use crate::inspect::{self, InspectOptions, Side};
use crate::openai::Rejection;
use crate::upstream::Exchange;

/// Reads, judges and answers. The upstream connection goes back to the pool once the answer is read, before
/// it is judged: the upstream's part ends there (and its time with it).
pub async fn hold(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
    mut up: Exchange<'_>,
    header: &ResponseHeader,
    first: Bytes,
) -> Result<()> {
    let cap = gw.inspect.max_response_bytes;
    let read = unless_client_leaves(session, up.read_all(&first, cap)).await;
    ctx.timing.upstream_done = Some(Instant::now());
    let Some(raw) = read? else {
        // Dropping `up` unread closes its connection.
        ctx.outcome.response = Side::failed();
        return Err(Rejection::UpstreamTooLarge { limit: cap }.into_error());
    };
    up.finish().await;
    if let Some(t) = ctx.trace.as_mut().filter(|t| t.sampled) {
        t.response_model = answer_model(&raw);
    }
    let rules = ctx
        .rules
        .clone()
        .ok_or_else(|| Rejection::InspectionFailed.into_error())?;
    let opts = InspectOptions {
        monitor: ctx.admission.monitor,
        ..gw.inspect.options.clone()
    };
    let encoding = headers::content_encoding(header).map(str::to_string);
    let started = std::time::Instant::now();
    let size = raw.len();
    let judged = gw
        .offload
        .run(size, move || {
            inspect::answer::judge(&rules, raw, encoding.as_deref(), &opts, cap)
        })
        .await;
    ctx.answer_inspected(started, Instant::now());
    let Some((released, verdict)) = judged else {
        ctx.outcome.response = Side::failed();
        return Err(Rejection::InspectionFailed.into_error());
    };
    ctx.outcome.response = verdict.as_ref().map_or_else(Side::failed, Side::of);
    // Read from the document the walk parsed: the answer is parsed once.
    ctx.usage = verdict.as_ref().and_then(|v| v.facts.usage);
    let released = released.map_err(Rejection::into_error)?;
    let resp = headers::from_upstream(
        header,
        ctx,
        Framing::Length(released.body.len()),
        released.decoded,
    )?;
    session.write_response_header(Box::new(resp), false).await?;
    ctx.sent_answer_bytes();
    session.write_response_body(Some(released.body), true).await
}

/// The `model` an answer names (for a sampled trace; whether it may be recorded is judged at the end).
fn answer_model(raw: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Answer<'a> {
        #[serde(borrow)]
        model: Option<std::borrow::Cow<'a, str>>,
    }
    let a: Answer = serde_json::from_slice(raw).ok()?;
    a.model.map(std::borrow::Cow::into_owned)
}
