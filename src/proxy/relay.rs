//! The relay: the gateway's own exchange with the upstream, for every request whose body it consumed
//! (`Path::Relay`). It sends the held body through the upstream layer (`upstream/`: pooled connection, retry
//! policy), then hands the answer to one of three handlings, chosen from the route and the answer itself
//! (`inspect::answer`):
//! - **hold** (`answer.rs`): read whole, judged, only then given its status line;
//! - **filter** (`stream.rs`): filtered event by event, cut at a block;
//! - **pass** (here): to the client as it arrives, unbuffered and uncapped.
//!
//! While it waits on the upstream, the relay watches the client: a client that leaves ends the exchange at
//! once — the upstream connection is dropped (cancelling a generation) and the request's permits released.

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::{Error, ErrorType, Result};

use super::headers::{self, Framing};
use super::{answer, stream, Gateway, RequestCtx};
use crate::inspect::answer::{Handling, SNIFF_BYTES};
use crate::openai::usage::Usage;
use crate::openai::Rejection;
use crate::upstream::pool::Failure;
use crate::upstream::Exchange;
use crate::upstream::{retry, Pool};

/// Makes the upstream exchange and answers the client. `Err` goes to `fail_to_proxy` (which maps upstream
/// failures to 502 / 504 and writes rejections).
pub async fn run(gw: &Gateway, session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
    let body = ctx
        .body
        .as_mut()
        .and_then(|b| b.forward.take())
        .unwrap_or_default();
    ctx.forwarded = true;
    ctx.timing.upstream_sent = Some(Instant::now());
    let sent = exchange(gw, session, ctx, body).await;
    let mut up = sent.inspect_err(|_| ctx.timing.upstream_done = Some(Instant::now()))?;
    let header = up.header()?.clone();
    // What an inspected route's answer is, its first bytes say (not the label the upstream put on it).
    let first = if ctx.answers.inspects() {
        let read = unless_client_leaves(session, first_bytes(&mut up)).await;
        read.inspect_err(|_| ctx.timing.upstream_done = Some(Instant::now()))?
    } else {
        Bytes::new()
    };
    match ctx.answers.handling(&first) {
        Handling::Hold => answer::hold(gw, session, ctx, up, &header, first).await,
        Handling::Filter => stream::filter(gw, session, ctx, up, &header, first).await,
        Handling::Pass => pass(session, ctx, up, &header, first).await,
    }
}

/// Sends the request to its pool and returns the answer whose header came: on another endpoint of the pool
/// when a connection cannot be made (nothing was sent), on the pool's fallback when the answer is a 429 or a
/// 5xx (nothing of it has reached the client yet). Every attempt goes into the decision event.
async fn exchange<'g>(
    gw: &'g Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
    body: Bytes,
) -> Result<Exchange<'g>> {
    let mut at = ctx.pool.ok_or_else(|| Rejection::Internal.into_error())?;
    // Each pool at most once: fallbacks that point back end the chain.
    let mut visited = vec![at];
    loop {
        let pool = &gw.upstreams.pools[at];
        let up = attempt_pool(gw, session, ctx, pool, &body).await?;
        let status = up.header()?.status.as_u16();
        match pool.fallback {
            Some(next)
                if (status == 429 || status >= 500)
                    && !visited.contains(&next)
                    && visited.len() < retry::POOL_ATTEMPTS =>
            {
                visited.push(next);
                // Dropped unread: its connection closes; the client has seen nothing of it.
                pool.count_error("status");
                drop(up);
                ctx.endpoint = None;
                at = next;
                gw.upstreams.pools[at].count_request();
            }
            _ => {
                ctx.pool = Some(at);
                return Ok(up);
            }
        }
    }
}

/// One pool's attempts: endpoints tried in turn while connections cannot be made, at most
/// `retry::ENDPOINT_ATTEMPTS`.
async fn attempt_pool<'g>(
    gw: &'g Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
    pool: &Pool,
    body: &Bytes,
) -> Result<Exchange<'g>> {
    // The pool knows the model by another name: the body is sent with it (decoded, re-serialised).
    let renamed = ctx.body.as_ref().and_then(|insp| {
        let to = pool.mapped_model(insp.facts.model.as_deref()?)?;
        crate::inspect::body::with_model(insp, body, gw.inspect.max_decoded_body_bytes, to)
    });
    let decoded = renamed.is_some() || ctx.body.as_ref().is_some_and(|b| b.forward_decoded);
    let body = renamed.map_or_else(|| body.clone(), Bytes::from);
    let mut tries = 0;
    loop {
        let Some(endpoint) = pool.select(&ctx.tried).await else {
            pool.count_error("no_healthy");
            return Err(Rejection::NoHealthyUpstream(pool.name.to_string()).into_error());
        };
        let mut req = endpoint.target.request(session.req_header(), body.len())?;
        if decoded {
            // The body goes as the gateway rewrote it: plain.
            req.remove_header(&http::header::CONTENT_ENCODING);
        }
        headers::to_upstream(&mut req, ctx, pool)?;
        let peer = endpoint.target.peer().clone();
        let sent = unless_client_leaves(
            session,
            crate::upstream::send(&gw.upstreams.connector, peer, &req, &body),
        )
        .await;
        match sent {
            Ok(up) => {
                let status = up.header()?.status.as_u16();
                ctx.attempts_log
                    .push(super::attempt(pool, endpoint.addr, Some(status), None));
                ctx.endpoint = Some(endpoint);
                return Ok(up);
            }
            // The client left: nothing to try again for.
            Err(e) if e.esource() == &pingora::ErrorSource::Downstream => return Err(e),
            Err(e) => {
                let why = retry::failure(&e);
                match why {
                    Some(why) => pool.failed(endpoint.addr, why),
                    None => pool.count_error("other"),
                }
                ctx.attempts_log
                    .push(super::attempt(pool, endpoint.addr, None, Some(&e)));
                ctx.tried.push(endpoint.addr);
                tries += 1;
                let another = why == Some(Failure::Connect)
                    && tries < retry::ENDPOINT_ATTEMPTS
                    && pool.has_untried(&ctx.tried);
                if !another {
                    return Err(e);
                }
            }
        }
    }
}

/// The first bytes of an answer: enough past leading whitespace to tell what it is (or all of it, when it is
/// shorter; at most 1 KiB of whitespace is read waiting).
async fn first_bytes(up: &mut Exchange<'_>) -> Result<Bytes> {
    let mut first = BytesMut::new();
    while let Some(chunk) = up.read().await? {
        first.extend_from_slice(&chunk);
        let lead = first.iter().take_while(|b| b.is_ascii_whitespace()).count();
        if first.len() - lead >= SNIFF_BYTES || first.len() >= 1024 {
            break;
        }
    }
    Ok(first.freeze())
}

/// An answer nothing inspects, to the client as it arrives. When the caller's token quota needs the reported
/// usage, a copy of a JSON answer is kept on the side (bounded) to read it at the end.
async fn pass(
    session: &mut Session,
    ctx: &mut RequestCtx,
    mut up: Exchange<'_>,
    header: &ResponseHeader,
    first: Bytes,
) -> Result<()> {
    let resp = headers::from_upstream(header, ctx, Framing::AsUpstream, false)?;
    let wants_usage = ctx.admission.ticket.is_some()
        && headers::content_type(header).is_some_and(|ct| ct.contains("json"));
    let mut tap = UsageTap::new(wants_usage);
    session.write_response_header(Box::new(resp), false).await?;
    if !first.is_empty() {
        tap.push(&first);
        ctx.sent_answer_bytes();
        session.write_response_body(Some(first), false).await?;
    }
    loop {
        let read = unless_client_leaves(session, up.read()).await;
        match read.inspect_err(|_| ctx.timing.upstream_done = Some(Instant::now()))? {
            Some(chunk) => {
                tap.push(&chunk);
                ctx.sent_answer_bytes();
                session.write_response_body(Some(chunk), false).await?;
            }
            None => {
                ctx.timing.upstream_done = Some(Instant::now());
                ctx.usage = tap.usage();
                // Pooled before the client hears the end: its next request may want this connection.
                up.finish().await;
                return session.write_response_body(None, true).await;
            }
        }
    }
}

/// A bounded copy of a passed-through JSON answer, for its `usage`.
struct UsageTap {
    copy: Option<Vec<u8>>,
}

impl UsageTap {
    /// Answers larger than this are not copied (their usage is then not read; the estimate stands).
    const MAX: usize = 4 << 20;

    fn new(wanted: bool) -> Self {
        Self {
            copy: wanted.then(Vec::new),
        }
    }

    fn push(&mut self, chunk: &[u8]) {
        if let Some(copy) = &mut self.copy {
            if copy.len() + chunk.len() > Self::MAX {
                self.copy = None;
            } else {
                copy.extend_from_slice(chunk);
            }
        }
    }

    fn usage(self) -> Option<Usage> {
        self.copy.as_deref().and_then(Usage::from_body)
    }
}

/// Runs `work` (an upstream exchange) unless the client leaves first: then the work is dropped — and with it
/// the upstream connection, which cancels a generation — and a downstream `ConnectionClosed` error ends the
/// request (nothing is written; its context, permits included, is released at once).
pub async fn unless_client_leaves<T>(
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
                // HTTP/1: the connection closed. HTTP/2: the stream was reset or the connection ended (an
                // HTTP/2 session's idle wait only ever ends that way).
                Err(e) if matches!(e.etype(), ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::H2Error) => {
                    return Err(Error::explain(ErrorType::ConnectionClosed, "the client left").into_down());
                }
                // Anything else (a pipelined request's bytes): stop watching, finish the work.
                _ => watch_client = false,
            },
        }
    }
}
