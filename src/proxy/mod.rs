//! The only module that knows Pingora's proxy: the [`ProxyHttp`] implementation whose hooks are glue around
//! pure logic elsewhere, the per-request context, the error renderer and the upstream peer.
//!
//! Data flow of one request: classify the route and settle the request id (`early_request_filter`) → refuse
//! what is not ours (`request_filter`) → pick the peer (`upstream_peer`) → set `Host`, the base path and the
//! request id (`upstream_request_filter`) → stream the response back, request id added (`response_filter`) →
//! metrics (`logging`) → context dropped.

mod body;
mod ctx;
mod error;
mod event;
mod held;
mod upstream;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};

pub use ctx::{RequestCtx, IN_FLIGHT};
pub use error::{ErrorResponse, Rejection};
pub use upstream::Upstream;

use std::sync::Arc;
use std::time::SystemTime;

use crate::audit::Audit;
use crate::auth::{Auth, Refusal};
use crate::config::InspectConfig;
use crate::limits::Limiter;
use crate::metrics;
use crate::openai::Route;
use crate::rules::RuleStore;

const REQUEST_ID: &str = "x-request-id";
const RULES_VERSION: &str = "x-promptgate-rules-version";

/// The gateway's proxy logic.
pub struct Gateway {
    upstream: Upstream,
    rules: Arc<RuleStore>,
    inspect: InspectConfig,
    auth: Arc<Auth>,
    limiter: Arc<dyn Limiter>,
    audit: Arc<Audit>,
    /// Upstream connections for answers held for inspection (see `held.rs`); the proxy path has its own.
    connector: pingora::connectors::http::Connector,
}

impl Gateway {
    pub fn new(
        upstream: Upstream,
        rules: Arc<RuleStore>,
        inspect: InspectConfig,
        auth: Arc<Auth>,
        limiter: Arc<dyn Limiter>,
        audit: Arc<Audit>,
        server: &pingora::server::configuration::ServerConf,
    ) -> Self {
        let connector = pingora::connectors::http::Connector::new(Some(
            pingora::connectors::ConnectorOptions::from_server_conf(server),
        ));
        Self {
            upstream,
            rules,
            inspect,
            auth,
            limiter,
            audit,
            connector,
        }
    }

    /// Identifies the caller, checks its origin and takes its concurrency permit and request count. Runs
    /// before the body is read, so a refused caller costs no body read and no upstream connection.
    fn admit_caller(&self, session: &Session, ctx: &mut RequestCtx) -> Result<(), Rejection> {
        let req = session.req_header();
        let caller = self
            .auth
            .identify(&req.headers, SystemTime::now())
            .map_err(refused)?;
        ctx.monitor = self.inspect.options.monitor || caller.monitor();
        if let Some(origin) = req.headers.get(http::header::ORIGIN) {
            ctx.has_origin = true;
            let origin = origin.to_str().unwrap_or("null");
            if self.auth.allows_origin(&caller, origin) {
                ctx.cors_origin = Some(origin.to_string());
            } else if caller.key().is_some() {
                return Err(refused(Refusal::OriginNotAllowed));
            }
        }
        let admitted = if caller.is_limited() {
            Some(self.limiter.admit(&caller.subjects()))
        } else {
            None
        };
        ctx.caller = Some(caller);
        match admitted {
            Some(Ok((permits, standing))) => {
                ctx.permits = permits;
                ctx.standing = Some(standing);
            }
            Some(Err(limited)) => {
                ctx.standing = Some(limited.standing);
                return Err(Rejection::RateLimited(limited));
            }
            None => {}
        }
        Ok(())
    }

    /// After the body: the model scope (before a content refusal: who may ask comes first), then the token
    /// quota with the body's prompt-token estimate.
    fn admit_body(
        &self,
        session: &Session,
        ctx: &mut RequestCtx,
        early: Result<(), Rejection>,
    ) -> Result<(), Rejection> {
        let content_refusal = matches!(
            early,
            Err(Rejection::PolicyBlocked { .. } | Rejection::OpaqueInputDenied)
        );
        if early.is_err() && !content_refusal {
            return early;
        }
        let Some(caller) = &ctx.caller else {
            return early;
        };
        let required = session.req_header().method == http::Method::POST
            && matches!(
                ctx.route,
                Route::ChatCompletions | Route::Completions | Route::Embeddings | Route::Responses
            );
        let model = ctx.body.as_ref().and_then(|b| b.facts.model.as_deref());
        self.auth
            .check_model(caller, model, required)
            .map_err(refused)?;
        early?;
        let subjects = caller.subjects();
        if !subjects.iter().any(|s| s.spec.tokens_per_minute.is_some()) {
            return Ok(());
        }
        let estimate = ctx.body.as_ref().map_or(0, |b| b.facts.estimated_tokens());
        let admitted = self.limiter.admit_tokens(&subjects, estimate);
        match admitted {
            Ok(quota) => {
                ctx.standing.get_or_insert_with(Default::default).tokens = quota;
                ctx.tokens_counted = Some(estimate);
                Ok(())
            }
            Err(limited) => {
                ctx.standing = Some(limited.standing);
                Err(Rejection::RateLimited(limited))
            }
        }
    }

    /// Corrects the token estimate counted at admission by what the request really cost: the usage the
    /// upstream reported, else the streamed text (about four bytes a token); nothing if never forwarded.
    fn settle_tokens(&self, ctx: &RequestCtx) {
        let (Some(caller), Some(counted)) = (&ctx.caller, ctx.tokens_counted) else {
            return;
        };
        let reported = ctx.reported_usage().map(|u| u.total_tokens);
        let actual = if !ctx.forwarded {
            Some(0)
        } else {
            reported.or_else(|| {
                ctx.stream
                    .as_ref()
                    .map(|f| counted + f.text_bytes.div_ceil(4))
            })
        };
        if let Some(actual) = actual {
            let delta = actual.min(i64::MAX as u64) as i64 - counted.min(i64::MAX as u64) as i64;
            self.limiter.settle_tokens(&caller.subjects(), delta);
        }
    }

    /// Answers a CORS preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) from the allowed
    /// origins; it is never forwarded. `false`: not a preflight.
    async fn preflight(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let req = session.req_header();
        if req.method != http::Method::OPTIONS
            || !req
                .headers
                .contains_key(http::header::ACCESS_CONTROL_REQUEST_METHOD)
        {
            return Ok(false);
        }
        let Some(origin) = req
            .headers
            .get(http::header::ORIGIN)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
        else {
            return Ok(false);
        };
        if !self.auth.preflight_allows(&origin) {
            metrics::AUTH_REFUSED.with_label_values(&["origin"]).inc();
            write_error(session, ctx, &Rejection::OriginNotAllowed.render()).await?;
            return Ok(true);
        }
        let asked = req
            .headers
            .get(http::header::ACCESS_CONTROL_REQUEST_HEADERS)
            .and_then(|v| v.to_str().ok())
            .filter(|v| {
                v.len() <= 1024
                    && v.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_, ".contains(&b))
            })
            .unwrap_or("authorization, content-type")
            .to_string();
        let mut header = ResponseHeader::build(204, Some(8))?;
        header.insert_header(http::header::ACCESS_CONTROL_ALLOW_ORIGIN, origin)?;
        header.insert_header(
            http::header::ACCESS_CONTROL_ALLOW_METHODS,
            "GET, POST, PUT, PATCH, DELETE, OPTIONS",
        )?;
        header.insert_header(http::header::ACCESS_CONTROL_ALLOW_HEADERS, asked)?;
        header.insert_header(http::header::ACCESS_CONTROL_MAX_AGE, "600")?;
        header.insert_header(
            http::header::VARY,
            "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
        )?;
        header.insert_header(http::header::CONTENT_LENGTH, "0")?;
        header.insert_header(REQUEST_ID, ctx.request_id.as_str())?;
        session
            .write_response_header(Box::new(header), true)
            .await?;
        Ok(true)
    }

    /// The last edits of the request header before it goes upstream (by the proxy, or by `held`).
    fn prepare_upstream_request(
        &self,
        upstream_request: &mut RequestHeader,
        ctx: &RequestCtx,
    ) -> Result<()> {
        if let Some(insp) = &ctx.body {
            match &insp.forward {
                Some(forward) => {
                    upstream_request
                        .insert_header(http::header::CONTENT_LENGTH, forward.len().to_string())?;
                    upstream_request.remove_header(&http::header::TRANSFER_ENCODING);
                    if insp.forward_decoded {
                        upstream_request.remove_header(&http::header::CONTENT_ENCODING);
                    }
                }
                // Not decided (it always is by now): promise no length.
                None => {
                    upstream_request.remove_header(&http::header::CONTENT_LENGTH);
                }
            }
        }
        if let Some(key) = ctx.caller.as_ref().and_then(|c| c.key()) {
            // Gateway keys stay here; the upstream sees the provider key the entry names, if any.
            upstream_request.remove_header(&http::header::AUTHORIZATION);
            upstream_request.remove_header("api-key");
            if let Some(credential) = &key.upstream {
                upstream_request
                    .insert_header(http::header::AUTHORIZATION, credential.0.clone())?;
            }
        }
        if self.inspect.enabled {
            // Answers are inspected: ask for them unencoded.
            upstream_request.insert_header(http::header::ACCEPT_ENCODING, "identity")?;
        }
        upstream_request.insert_header(http::header::HOST, self.upstream.authority())?;
        upstream_request.insert_header(REQUEST_ID, ctx.request_id.as_str())?;
        if let Some(uri) = self.upstream.rewrite_uri(&upstream_request.uri) {
            upstream_request.set_uri(uri);
        }
        Ok(())
    }

    /// Decides from the response header whether the body is filtered as a stream.
    fn handle_response_header(
        &self,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<(), Rejection> {
        if !self.inspect.enabled || !resp.status.is_success() {
            return Ok(());
        }
        let is_sse = resp
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.trim_start()
                    .to_ascii_lowercase()
                    .starts_with("text/event-stream")
            });
        if !is_sse {
            return Ok(());
        }
        if encoded(resp) {
            // Asked for identity and got something else: never pass what cannot be inspected.
            return Err(Rejection::UpstreamEncoding);
        }
        let rules = ctx.rules.clone().ok_or(Rejection::InspectionFailed)?;
        ctx.stream = Some(crate::inspect::stream::StreamFilter::new(
            rules,
            ctx.monitor,
            self.inspect.max_stream_hold,
        ));
        resp.remove_header(&http::header::CONTENT_LENGTH);
        Ok(())
    }

    /// Plans body inspection from the header; for small declared bodies, reads and inspects the body now,
    /// before any upstream connection (see `body.rs`). `Err` is a rejection to answer with.
    async fn handle_request_body_early(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<(), Rejection> {
        let req = session.req_header();
        let header =
            |name: http::header::HeaderName| req.headers.get(name).and_then(|v| v.to_str().ok());
        let content_length = match header(http::header::CONTENT_LENGTH) {
            Some(v) => Some(
                v.trim()
                    .parse::<usize>()
                    .map_err(|_| Rejection::InvalidBody("invalid Content-Length".into()))?,
            ),
            None => None,
        };
        let chunked = header(http::header::TRANSFER_ENCODING).is_some();
        let encoding = header(http::header::CONTENT_ENCODING).map(str::to_string);
        let need_model = ctx
            .caller
            .as_ref()
            .is_some_and(|c| self.auth.scopes_models(c));
        let mut insp = match body::plan(
            &self.inspect,
            ctx.route,
            content_length,
            chunked,
            encoding.as_deref(),
            need_model,
        )? {
            body::Plan::Skip => return Ok(()),
            body::Plan::Inspect(i) => *i,
        };
        // Pingora forwards a body read here only through its retry buffer: enable it before reading.
        session.as_mut().enable_retry_buffering();
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) => body::hold(&mut insp, &chunk, self.inspect.max_body_bytes)?,
                Ok(None) => break,
                Err(e) => {
                    return Err(Rejection::InvalidBody(format!(
                        "reading the body failed ({})",
                        e.etype().as_str()
                    )))
                }
            }
        }
        let rules = ctx.rules.clone().ok_or(Rejection::InspectionFailed)?;
        let opts = crate::inspect::InspectOptions {
            monitor: ctx.monitor,
            ..self.inspect.options.clone()
        };
        let decided = body::decide(&mut insp, &rules, &self.inspect, &opts);
        ctx.body = Some(insp);
        decided
    }
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
        ctx.monitor = self.inspect.options.monitor;
        let req = session.req_header();
        ctx.route = Route::classify(req.uri.path());
        ctx.request_id = match req.headers.get(REQUEST_ID) {
            Some(v) if ctx::valid_request_id(v.as_bytes()) => {
                String::from_utf8_lossy(v.as_bytes()).into_owned()
            }
            _ => ctx::new_request_id(),
        };
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        if !ctx.route.is_forwarded() {
            let req = session.req_header();
            let rejection = Rejection::NotFound {
                method: req.method.to_string(),
                path: req.uri.path().to_string(),
            };
            write_error(session, ctx, &rejection.render()).await?;
            return Ok(true);
        }
        if self.audit.refuses_requests() {
            // No durable record can be made: refuse rather than serve unaudited (audit.on_failure).
            write_error(session, ctx, &Rejection::AuditUnavailable.render()).await?;
            return Ok(true);
        }
        if self.preflight(session, ctx).await? {
            return Ok(true);
        }
        let admitted = match self.admit_caller(session, ctx) {
            Ok(()) => {
                let early = self.handle_request_body_early(session, ctx).await;
                self.admit_body(session, ctx, early)
            }
            Err(rejection) => Err(rejection),
        };
        if let Err(rejection) = admitted {
            // A body refused before it was read whole is still on the connection: do not reuse it.
            if !session.is_body_done() {
                session.set_keepalive(None);
            }
            write_error(session, ctx, &rejection.render()).await?;
            return Ok(true);
        }
        if held::applies(self, session, ctx) {
            return held::relay(self, session, ctx).await.map(|()| true);
        }
        Ok(false)
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let Some(insp) = ctx.body.as_ref() else {
            return Ok(());
        };
        // The decided body replaces whatever Pingora has (its retry buffer); it is cloned so an upstream retry
        // sends it again.
        *body = if end_of_stream {
            insp.forward.clone()
        } else {
            Some(Bytes::new())
        };
        Ok(())
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        Ok(self.upstream.peer())
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.forwarded = true;
        ctx.upstream_sent = Some(std::time::Instant::now());
        self.prepare_upstream_request(upstream_request, ctx)
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        upstream_response.insert_header(REQUEST_ID, ctx.request_id.as_str())?;
        decision_headers(upstream_response, ctx)?;
        self.handle_response_header(upstream_response, ctx)
            .map_err(Rejection::into_error)?;
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<std::time::Duration>> {
        if end_of_stream {
            ctx.upstream_done = Some(std::time::Instant::now());
        }
        if ctx.first_byte.is_none() && body.as_ref().is_some_and(|b| !b.is_empty()) {
            ctx.first_byte = Some(std::time::Instant::now());
        }
        let Some(filter) = ctx.stream.as_mut() else {
            return Ok(None);
        };
        let started = std::time::Instant::now();
        // After a block the filter drops everything (nothing after the policy error event leaves). The upstream
        // is not cut from here: an `Err` would discard the batch of chunks Pingora is about to write, the
        // error event with it. It ends when the client stops reading (the SDKs do at the error event) or when
        // the upstream finishes; the client's stream then ends properly.
        let mut out = bytes::BytesMut::new();
        if let Some(chunk) = body.take() {
            out.extend_from_slice(&filter.push(&chunk));
        }
        if end_of_stream {
            out.extend_from_slice(&filter.finish());
        }
        *body = Some(out.freeze());
        ctx.response_inspect_us += started.elapsed().as_micros() as u64;
        Ok(None)
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
        if session.response_written().is_none() {
            if let Err(write_err) = write_error(session, ctx, &resp).await {
                tracing::debug!("could not write the error response: {write_err}");
            }
        }
        FailToProxy {
            error_code: resp.status,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        self.settle_tokens(ctx);
        if let Some(f) = &ctx.stream {
            if f.events > 0 {
                metrics::STREAM_HELD_BYTES.observe(f.held_sum as f64 / f.events as f64);
            }
        }
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .or_else(|| e.and_then(Rejection::from_error).map(|r| r.status()))
            .unwrap_or(0);
        let outcome = event::finish(session, ctx, status);
        if ctx.stream.is_some() {
            metrics::DECISIONS
                .with_label_values(&["response", outcome.response])
                .inc();
        }
        metrics::REQUESTS
            .with_label_values(&[ctx.route.label(), status_label(status), outcome.decision])
            .inc();
        if !outcome.line.is_empty() {
            self.audit.record(outcome.line).await;
        }
    }
}

/// Writes a gateway-made error response with the headers every response carries.
async fn write_error(
    session: &mut Session,
    ctx: &mut RequestCtx,
    resp: &ErrorResponse,
) -> Result<()> {
    ctx.error_code = Some(resp.code);
    let mut header = ResponseHeader::build(resp.status, Some(4))?;
    header.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    header.insert_header(http::header::CONTENT_LENGTH, resp.body.len().to_string())?;
    header.insert_header(REQUEST_ID, ctx.request_id.as_str())?;
    decision_headers(&mut header, ctx)?;
    if let Some(retry) = resp.should_retry {
        header.insert_header("x-should-retry", if retry { "true" } else { "false" })?;
    }
    if let Some(after) = resp.retry_after {
        let ms = after.as_millis().max(1);
        header.insert_header(http::header::RETRY_AFTER, ms.div_ceil(1000).to_string())?;
        header.insert_header("retry-after-ms", ms.to_string())?;
    }
    session
        .write_response_header(Box::new(header), false)
        .await?;
    session
        .write_response_body(Some(Bytes::clone(&resp.body)), true)
        .await
}

/// Headers every response carries: `x-promptgate-rules-version`; `x-promptgate-decision` and
/// `x-promptgate-rules` (ids only, never values) when the request body was inspected; the caller's
/// rate-limit headers when it has quotas; CORS headers for an allowed browser origin.
fn decision_headers(header: &mut ResponseHeader, ctx: &RequestCtx) -> Result<()> {
    caller_headers(header, ctx)?;
    let Some(rules) = &ctx.rules else {
        return Ok(());
    };
    header.insert_header(RULES_VERSION, rules.version())?;
    let Some(insp) = &ctx.body else {
        return Ok(());
    };
    if insp.failed_open {
        header.insert_header("x-promptgate-decision", "error")?;
        return Ok(());
    }
    let Some(v) = &insp.verdict else {
        return Ok(());
    };
    // A held answer's verdict joins the request's: the most severe decision, every rule id once.
    let answer = ctx.answer.as_ref();
    let mut decision = v
        .decision
        .max(answer.map_or(crate::inspect::Decision::Allow, |a| a.decision));
    if v.opaque_denied {
        decision = crate::inspect::Decision::Block;
    }
    header.insert_header("x-promptgate-decision", decision.as_str())?;
    let mut ids: Vec<&str> = v
        .hits
        .iter()
        .chain(answer.into_iter().flat_map(|a| a.hits.iter()))
        .map(|h| rules.rule(h.rule).id.as_str())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    if !ids.is_empty() {
        header.insert_header("x-promptgate-rules", ids.join(","))?;
    }
    Ok(())
}

/// Response headers that exposes to a browser page (CORS).
const EXPOSED_HEADERS: &str = "x-request-id, x-promptgate-decision, x-promptgate-rules, x-promptgate-rules-version, retry-after, retry-after-ms, x-ratelimit-limit-requests, x-ratelimit-remaining-requests, x-ratelimit-reset-requests, x-ratelimit-limit-tokens, x-ratelimit-remaining-tokens, x-ratelimit-reset-tokens, x-ratelimit-limit, x-ratelimit-remaining, x-ratelimit-reset";

fn caller_headers(header: &mut ResponseHeader, ctx: &RequestCtx) -> Result<()> {
    if let (Some(standing), Some(caller)) = (&ctx.standing, &ctx.caller) {
        if caller.is_limited() {
            for (name, value) in crate::limits::headers(standing, SystemTime::now()) {
                header.insert_header(name, value)?;
            }
        }
    }
    if let Some(origin) = &ctx.cors_origin {
        header.insert_header(http::header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.as_str())?;
        header.insert_header(http::header::ACCESS_CONTROL_EXPOSE_HEADERS, EXPOSED_HEADERS)?;
    }
    if ctx.has_origin {
        header.append_header(http::header::VARY, "Origin")?;
    }
    Ok(())
}

/// Whether an answer carries a Content-Encoding other than identity (the gateway asks for identity when it
/// inspects answers).
fn encoded(header: &ResponseHeader) -> bool {
    header
        .headers
        .get(http::header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| !v.trim().eq_ignore_ascii_case("identity"))
}

/// Counts an identity or scope refusal and turns it into the response.
fn refused(r: Refusal) -> Rejection {
    metrics::AUTH_REFUSED.with_label_values(&[r.reason()]).inc();
    r.into()
}

/// Status codes as static labels: a closed set, whatever the upstream sends.
fn status_label(status: u16) -> &'static str {
    const KNOWN: [(u16, &str); 15] = [
        (200, "200"),
        (201, "201"),
        (204, "204"),
        (400, "400"),
        (401, "401"),
        (403, "403"),
        (404, "404"),
        (409, "409"),
        (413, "413"),
        (415, "415"),
        (429, "429"),
        (500, "500"),
        (502, "502"),
        (503, "503"),
        (504, "504"),
    ];
    if let Some((_, label)) = KNOWN.iter().find(|(code, _)| *code == status) {
        return label;
    }
    match status / 100 {
        0 => "none",
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        _ => "5xx",
    }
}
