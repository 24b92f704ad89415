//! The only module that implements Pingora's [`ProxyHttp`]: the hooks are glue, a few lines each, around the
//! request's way through the gateway, which reads in file names:
//!
//! `early_request_filter` (one rule snapshot, the route, the request id) → `request_filter`, which decides the
//! request's [`path`] once — admission (`admission/`), the body consumed and judged (`inspect/body.rs`) — and
//! then either answers now (`error.rs`), relays (`relay.rs`: the exchange through `upstream/`, the answer
//! held by `answer.rs`, filtered by `stream.rs`, or passed through), or lets Pingora proxy it untouched (the
//! remaining hooks: `upstream_peer`, `upstream_request_filter`, `response_filter`) → `logging` (`finish.rs`:
//! tokens settled, metrics, the decision event to `audit/`) → the context (`ctx.rs`) is dropped, permits
//! released. Every answer's headers are decorated in one place (`headers.rs`).

mod answer;
mod ctx;
mod edge;
mod error;
mod finish;
mod headers;
mod intent;
mod offload;
mod path;
mod policy;
mod realtime;
mod relay;
mod stream;
mod tunnel;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};

pub use ctx::{RequestCtx, IN_FLIGHT};
pub use edge::{Edge, KEEPALIVE_IDLE};
pub use path::Path;
pub use realtime::Realtime;

use crate::audit::Audit;
use crate::auth::Auth;
use crate::config::InspectConfig;
use crate::limits::Limiter;
use crate::metrics;
use crate::openai::{Rejection, Route};
use crate::otel::Tracer;
use crate::rules::{Direction, RuleStore};
use crate::upstream::{retry, Pool, Upstreams};
use path::Reply;

/// The gateway's proxy logic and everything it consults (cheap to clone: shared parts; realtime sessions,
/// served beside Pingora's loop, hold a clone).
#[derive(Clone)]
pub struct Gateway {
    upstreams: Arc<Upstreams>,
    /// The gateway answers `GET /v1/models` itself (several pools: the union of their models).
    pub(crate) answers_models: bool,
    rules: Arc<RuleStore>,
    inspect: InspectConfig,
    auth: Arc<Auth>,
    limiter: Arc<dyn Limiter>,
    audit: Arc<Audit>,
    /// Where large inspections run (off the I/O workers).
    offload: offload::Offload,
    /// OpenTelemetry traces (`None`: tracing off, nothing done per request).
    tracer: Option<Arc<Tracer>>,
}

impl Gateway {
    /// `threads`: the proxy's worker threads (as many large inspections may run at once).
    pub fn new(
        upstreams: Arc<Upstreams>,
        rules: Arc<RuleStore>,
        inspect: InspectConfig,
        auth: Arc<Auth>,
        limiter: Arc<dyn Limiter>,
        audit: Arc<Audit>,
        threads: usize,
    ) -> Self {
        Self {
            answers_models: upstreams.pools.len() > 1,
            upstreams,
            rules,
            inspect,
            auth,
            limiter,
            audit,
            offload: offload::Offload::new(threads),
            tracer: None,
        }
    }

    /// Traces requests with `tracer` (`[tracing]` on).
    pub fn with_tracer(mut self, tracer: Option<Arc<Tracer>>) -> Self {
        self.tracer = tracer;
        self
    }

    /// Answers a request the gateway does not forward.
    async fn respond(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        reply: Reply,
    ) -> Result<()> {
        match reply {
            Reply::Refuse(rejection) => {
                // A body refused before it was read whole is still on the connection: do not reuse it.
                if !session.is_body_done() {
                    session.set_keepalive(None);
                }
                error::write(session, ctx, &rejection.render()).await
            }
            Reply::Preflight(p) => {
                let header = headers::preflight(&p, ctx)?;
                session.write_response_header(Box::new(header), true).await
            }
            Reply::Json(body) => {
                let mut header = pingora::http::ResponseHeader::build(200, Some(4))?;
                header.insert_header(http::header::CONTENT_TYPE, "application/json")?;
                header.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
                headers::decorate(&mut header, ctx)?;
                ctx.sent_answer_bytes();
                session
                    .write_response_header(Box::new(header), false)
                    .await?;
                session.write_response_body(Some(body), true).await
            }
        }
    }

    /// The pool the request was routed to.
    fn pool(&self, ctx: &RequestCtx) -> Result<&Arc<Pool>> {
        ctx.pool
            .and_then(|i| self.upstreams.pools.get(i))
            .ok_or_else(|| Rejection::Internal.into_error())
    }
}

/// `GET /v1/models` as the gateway answers it with several pools, owned by the pool that serves each: every
/// exact name in the pools' `models` and `model_map`, and every id a pool's upstream listed in its last
/// `/v1/models` health check that routing would send to that pool (so a `prefix*` or default pool lists the
/// models its upstream really has) — only those the caller's key may use. Sorted by id.
pub(crate) fn models_list(u: &Upstreams, allowed: impl Fn(&str) -> bool) -> Bytes {
    let mut seen = std::collections::HashSet::new();
    let mut models: Vec<(String, usize)> = Vec::new();
    for (id, i) in u.router.models() {
        if seen.insert(id.to_string()) {
            models.push((id.to_string(), i));
        }
    }
    for (i, pool) in u.pools.iter().enumerate() {
        for id in pool.listed_models().iter() {
            if u.route(Some(id), "/v1/models") == Some(i) && seen.insert(id.clone()) {
                models.push((id.clone(), i));
            }
        }
    }
    models.sort_unstable();
    let data: Vec<serde_json::Value> = models
        .iter()
        .filter(|(id, _)| allowed(id))
        .map(|(id, i)| {
            serde_json::json!({
                "id": id,
                "object": "model",
                "created": 0,
                "owned_by": &*u.pools[*i].name,
            })
        })
        .collect();
    let list = serde_json::json!({ "object": "list", "data": data });
    Bytes::from(serde_json::to_vec(&list).unwrap_or_default())
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new()
    }

    async fn early_request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // One snapshot per request: a reload during the request does not change what it is checked against.
        ctx.rules = Some(self.rules.snapshot());
        let req = session.req_header();
        if let Some(tracer) = &self.tracer {
            ctx.trace = Some(Box::new(tracer.start(&req.headers)));
        }
        ctx.route = Route::classify(req.uri.path());
        // The client's request id is kept when it is a safe shape that no rule matches: it goes into events,
        // logs and the upstream request.
        ctx.request_id = match req
            .headers
            .get(headers::REQUEST_ID)
            .and_then(|v| v.to_str().ok())
        {
            Some(v)
                if crate::openai::is_safe_id(v.as_bytes())
                    && ctx
                        .rules
                        .as_ref()
                        .is_some_and(|r| r.everything().scan(v, Direction::Request).is_empty()) =>
            {
                v.to_string()
            }
            _ => ctx::new_request_id(),
        };
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let path = match path::choose(self, session, ctx).await {
            // Going upstream: under `write_ahead`, not before its intent is durable.
            Path::Relay | Path::Proxy
                if !intent::make_durable(
                    self,
                    ctx,
                    &session.req_header().method,
                    ctx.route.label(),
                    None,
                )
                .await =>
            {
                Path::Respond(Reply::Refuse(Rejection::AuditUnavailable))
            }
            path => path,
        };
        match path {
            Path::Respond(reply) => self.respond(session, ctx, reply).await.map(|()| true),
            Path::Relay => relay::run(self, session, ctx).await.map(|()| true),
            Path::Proxy => {
                // Pingora reads the body as it forwards it: no read may stall longer than the body timeout,
                // and `request_body_filter` holds the whole body to it.
                session
                    .as_mut()
                    .set_read_timeout(Some(self.inspect.body_timeout));
                Ok(false)
            }
        }
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if ctx.started.elapsed() > self.inspect.body_timeout {
            return Err(Rejection::BodyTimeout.into_error());
        }
        Ok(())
    }

    // The `Proxy` path from here on: Pingora makes the exchange with the body untouched.

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let pool = self.pool(ctx)?;
        match pool.select(&ctx.tried).await {
            Some(endpoint) => {
                let peer = Box::new(endpoint.target.peer().clone());
                ctx.endpoint = Some(endpoint);
                Ok(peer)
            }
            None if !ctx.tried.is_empty() => Err(Rejection::UpstreamUnreachable.into_error()),
            None => {
                pool.count_error("no_healthy");
                Err(Rejection::NoHealthyUpstream(pool.name.to_string()).into_error())
            }
        }
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.forwarded = true;
        ctx.attempts += 1;
        ctx.timing.upstream_sent.get_or_insert_with(Instant::now);
        let pool = self.pool(ctx)?;
        if let Some(e) = &ctx.endpoint {
            e.target.target(upstream_request)?;
        }
        headers::to_upstream(upstream_request, ctx, pool)
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let (Some(endpoint), Ok(pool)) = (&ctx.endpoint, self.pool(ctx)) {
            let status = upstream_response.status.as_u16();
            ctx.attempts_log
                .push(attempt(pool, endpoint.addr, Some(status), None));
        }
        headers::decorate(upstream_response, ctx)
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        if body.as_ref().is_some_and(|b| !b.is_empty()) {
            ctx.sent_answer_bytes();
        }
        if end_of_stream {
            ctx.timing.upstream_done = Some(Instant::now());
        }
        Ok(None)
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // No connection: nothing was sent. The endpoint is ejected and the request moves to another one of
        // the pool, if there is one it has not tried (see `upstream::retry`).
        let failed = ctx.endpoint.take();
        if let (Some(endpoint), Ok(pool)) = (failed, self.pool(ctx)) {
            let why = retry::failure(&e).unwrap_or(crate::upstream::pool::Failure::Connect);
            pool.failed(endpoint.addr, why);
            ctx.tried.push(endpoint.addr);
            ctx.attempts_log
                .push(attempt(pool, endpoint.addr, None, Some(&e)));
        }
        let another = self.pool(ctx).is_ok_and(|p| p.has_untried(&ctx.tried));
        e.set_retry(another && ctx.tried.len() < retry::ENDPOINT_ATTEMPTS);
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        let before_answer = session.response_written().is_none();
        let replayable = !session.as_ref().retry_buffer_truncated();
        let again = before_answer && retry::again(&e, client_reused, ctx.attempts, replayable);
        if let (Some(endpoint), Ok(pool)) = (&ctx.endpoint, self.pool(ctx)) {
            if let Some(why @ crate::upstream::pool::Failure::Timeout) = retry::failure(&e) {
                pool.failed(endpoint.addr, why);
            }
            if !again {
                ctx.attempts_log
                    .push(attempt(pool, endpoint.addr, None, Some(&e)));
            }
        }
        e.set_retry(again);
        e
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let Some(rejection) = Rejection::from_error(e) else {
            // The client is gone: nothing to write.
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        };
        if let Some(kind) = rejection.upstream_kind() {
            metrics::UPSTREAM_ERRORS.with_label_values(&[kind]).inc();
        }
        let resp = rejection.render();
        ctx.error_code = Some(resp.code);
        // The connection stays usable only when the gateway read the whole request itself and answers it
        // whole now (a relayed request refused on its answer); otherwise the answer says it closes.
        let reusable =
            ctx.body.is_some() && session.is_body_done() && session.response_written().is_none();
        if !reusable {
            session.set_keepalive(None);
        }
        if session.response_written().is_none() {
            if let Err(write_err) = error::write(session, ctx, &resp).await {
                tracing::debug!(
                    request_id = %ctx.request_id,
                    trace_id = ctx.trace.as_ref().map(|t| t.trace_id_hex()),
                    "could not write the error response: {write_err}"
                );
            }
        }
        FailToProxy {
            error_code: resp.status,
            can_reuse_downstream: reusable,
        }
    }

    /// Pingora logs every failed exchange at ERROR. Only failures an operator must look at stay there — the
    /// gateway's own 5xx (an upstream down, inspection impossible); a client that hangs up and the refusals
    /// policy makes (4xx: blocked, over a limit, a malformed request) are the normal course of traffic, counted
    /// in metrics and recorded in the decision event, and logged at debug.
    fn suppress_error_log(&self, session: &Session, ctx: &RequestCtx, e: &Error) -> bool {
        let routine = Rejection::from_error(e).is_none_or(|r| r.status() < 500);
        if routine {
            tracing::debug!(
                request_id = %ctx.request_id,
                trace_id = ctx.trace.as_ref().map(|t| t.trace_id_hex()),
                "{e}, {}",
                self.request_summary(session, ctx)
            );
        }
        routine
    }

    /// What Pingora's own log lines say about a request: never its path, query or headers (client input that
    /// may carry a secret), only the method, the route and the request id.
    fn request_summary(&self, session: &Session, ctx: &RequestCtx) -> String {
        let trace_id = ctx.trace.as_ref().map(|t| t.trace_id_hex());
        format!(
            "{} {} request_id={}{}{}",
            finish::method_label(&session.req_header().method),
            ctx.route.label(),
            ctx.request_id,
            if trace_id.is_some() { " trace_id=" } else { "" },
            trace_id.unwrap_or_default()
        )
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        finish::finish(self, session, e, ctx).await;
    }
}

/// One attempt, for the decision event.
fn attempt(
    pool: &Pool,
    endpoint: std::net::SocketAddr,
    status: Option<u16>,
    e: Option<&Error>,
) -> crate::audit::event::Attempt {
    crate::audit::event::Attempt {
        upstream: pool.name.clone(),
        endpoint,
        status,
        error: e.map(|e| match retry::failure(e) {
            Some(crate::upstream::pool::Failure::Connect) => "connect",
            Some(crate::upstream::pool::Failure::Timeout) => "timeout",
            None => "other",
        }),
    }
}
