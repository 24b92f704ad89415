//! How one request makes its way through the gateway, decided once, in `request_filter`, before anything
//! goes upstream: answered by the gateway now, relayed, or proxied.
//!
//! The rule — **the gateway makes the exchange itself exactly when it consumed the request body** — and why:
//! - Pingora 0.9 forwards a body read in `request_filter` only from its retry buffer, which holds 64 KiB and
//!   silently drops the rest (pingora-proxy 0.9.1 `proxy_h1.rs`; the fix, upstream PR #816, is not released).
//!   A body the gateway read must therefore be sent by the gateway: [`Path::Relay`].
//! - A body the gateway did not read streams through Pingora's own proxy loop untouched: [`Path::Proxy`].
//! - The gateway consumes a body when it reads it to inspect it or to count it (a key scoped to models, a
//!   token quota), and on every route whose answers it inspects, even when the body is empty: such an answer
//!   must be judged before its status line or cut mid-stream, and Pingora writes a proxied answer's header as
//!   soon as `response_filter` returns (upstream issue #978) — only the gateway's own exchange can hold it.
//!
//! So the path follows from the route, the settings and the caller — never from the size of a body.

use std::time::SystemTime;

use bytes::Bytes;
use pingora::proxy::Session;

use super::{Gateway, RequestCtx};
use crate::admission::cors::{self, Preflight};
use crate::config::{InspectConfig, UnknownRoutes, Upgrades};
use crate::inspect::answer::AnswerPolicy;
use crate::inspect::body::{self, BodyInspection};
use crate::inspect::{ContentEncoding, InspectOptions, Side};
use crate::metrics;
use crate::openai::{Rejection, Route};

/// The way of one request.
#[derive(Debug)]
pub enum Path {
    /// The gateway answers now; nothing goes upstream.
    Respond(Reply),
    /// The gateway consumed the body and makes the exchange itself (`relay.rs`).
    Relay,
    /// Pingora proxies the request untouched; its body streams through.
    Proxy,
}

/// What the gateway answers by itself.
#[derive(Debug)]
pub enum Reply {
    Refuse(Rejection),
    Preflight(Preflight),
    /// A JSON answer the gateway gives itself (`GET /v1/models` over several pools).
    Json(Bytes),
}

/// What is done with a request body, known from the route, the settings and the request header.
#[derive(Debug)]
pub enum BodyPlan {
    /// Not read by the gateway.
    Untouched,
    /// Read whole (it may be empty), then judged or only measured.
    Consume(Box<BodyInspection>),
}

/// The body as the request header describes it.
#[derive(Debug, Clone, Copy, Default)]
pub struct BodyHeader<'a> {
    pub content_length: Option<usize>,
    pub chunked: bool,
    pub encoding: Option<&'a str>,
    pub content_type: Option<&'a str>,
}

impl<'a> BodyHeader<'a> {
    /// Reads the framing fields of a request header; an unreadable `Content-Length` is refused.
    pub fn of(headers: &'a http::HeaderMap) -> Result<Self, Rejection> {
        let field =
            |name: http::header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
        let content_length = match field(http::header::CONTENT_LENGTH) {
            Some(v) => Some(
                v.trim()
                    .parse::<usize>()
                    .map_err(|_| Rejection::InvalidBody("invalid Content-Length".into()))?,
            ),
            None => None,
        };
        Ok(Self {
            content_length,
            chunked: headers.contains_key(http::header::TRANSFER_ENCODING),
            encoding: field(http::header::CONTENT_ENCODING),
            content_type: field(http::header::CONTENT_TYPE),
        })
    }

    /// Whether there is a body at all.
    pub fn present(&self) -> bool {
        self.chunked || self.content_length.unwrap_or(0) > 0
    }
}

/// Decides what happens to a request body (see the module doc). `admission_needs_body`: the caller's scope or
/// token quota needs to read it. Refuses what can be refused from the header alone.
pub fn plan(
    cfg: &InspectConfig,
    route: Route,
    body: &BodyHeader<'_>,
    admission_needs_body: bool,
) -> Result<BodyPlan, Rejection> {
    let unknown = route.is_unknown();
    if cfg.enabled && unknown && cfg.unknown_routes == UnknownRoutes::Deny {
        return Err(Rejection::RouteDenied);
    }
    let inspect = cfg.enabled
        && (route.has_json_body() || (unknown && cfg.unknown_routes == UnknownRoutes::Inspect));
    let consume = AnswerPolicy::for_route(route, cfg).inspects()
        || (body.present() && (inspect || admission_needs_body));
    if !consume {
        return Ok(BodyPlan::Untouched);
    }
    if body.content_length.is_some_and(|n| n > cfg.max_body_bytes) {
        return Err(Rejection::BodyTooLarge {
            limit: cfg.max_body_bytes,
        });
    }
    let encoding = ContentEncoding::parse(body.encoding).ok_or_else(|| {
        Rejection::UnsupportedEncoding(body.encoding.unwrap_or("").chars().take(32).collect())
    })?;
    let mut insp = BodyInspection::new(inspect, encoding, route.has_json_body());
    insp.multipart = body
        .content_type
        .and_then(crate::openai::multipart::boundary)
        .map(str::to_string);
    Ok(BodyPlan::Consume(Box::new(insp)))
}

/// Admits the request and reads its body if the plan says so, and returns its path.
pub async fn choose(gw: &Gateway, session: &mut Session, ctx: &mut RequestCtx) -> Path {
    let req = session.req_header();
    if !ctx.route.is_forwarded() {
        return refuse(Rejection::NotFound {
            method: req.method.to_string(),
            path: req.uri.path().to_string(),
        });
    }
    if gw.audit.refuses_requests() {
        // No durable record can be made: refuse rather than serve unaudited (audit.on_failure).
        return refuse(Rejection::AuditUnavailable);
    }
    if let Some(preflight) = cors::preflight(&req.method, &req.headers, &gw.auth) {
        return match preflight {
            Ok(p) => Path::Respond(Reply::Preflight(p)),
            Err(r) => refuse(r),
        };
    }
    if is_upgrade(&req.headers) {
        match gw.inspect.upgrades {
            Upgrades::Deny => {
                metrics::UPGRADES.with_label_values(&["refused"]).inc();
                return refuse(Rejection::UpgradeDenied);
            }
            // A tunnel the gateway cannot see into: Pingora proxies it (inspect.websocket = "pass").
            Upgrades::Pass => metrics::UPGRADES.with_label_values(&["passed"]).inc(),
        }
    }
    let admitted = ctx
        .admission
        .admit_caller(
            &gw.auth,
            &*gw.limiter,
            &req.headers,
            gw.inspect.options.monitor,
            SystemTime::now(),
        )
        .await;
    if let Err(r) = admitted {
        return refuse(r);
    }
    // The policy, unless a selector needs the model the body names (then once the body is read).
    let by_model = super::policy::needs_model(ctx);
    if !by_model {
        let path = session.req_header().uri.path().to_string();
        if let Err(r) = super::policy::choose(ctx, &path, None) {
            return refuse(r);
        }
    }
    let req = session.req_header();
    if gw.answers_models
        && ctx.route == Route::Models
        && req.uri.path() == "/v1/models"
        && req.method == http::Method::GET
    {
        let key = ctx.admission.caller.as_ref().and_then(|c| c.key());
        let body = super::models_list(&gw.upstreams, |m| key.is_none_or(|k| k.allows_model(m)));
        return Path::Respond(Reply::Json(body));
    }
    if is_upgrade(&req.headers) {
        // No body to read: a caller whose admission waits for one is admitted now, with no token estimate.
        let method = req.method.clone();
        if by_model {
            let path = req.uri.path().to_string();
            if let Err(r) = super::policy::choose(ctx, &path, None) {
                return refuse(r);
            }
        }
        let admitted = ctx
            .admission
            .admit_body(&gw.auth, &*gw.limiter, ctx.route, &method, None, Ok(()))
            .await
            .and_then(|()| route(gw, ctx, session.req_header().uri.path()));
        return match admitted {
            Ok(()) => Path::Proxy,
            Err(r) => refuse(r),
        };
    }
    ctx.answers = AnswerPolicy::for_route(ctx.route, &gw.inspect);
    let method = req.method.clone();
    let unframed = unframed_body(session);
    let req = session.req_header();
    let planned = BodyHeader::of(&req.headers).and_then(|mut h| {
        h.chunked |= unframed;
        if gw.inspect.enabled
            && method == http::Method::POST
            && ctx.route.has_json_body()
            && !h.present()
        {
            return Err(Rejection::InvalidBody("the request has no body".into()));
        }
        // Pools chosen by model: the gateway reads a JSON body to learn it.
        let needs_body = ctx.admission.needs_body()
            || (gw.upstreams.router.by_model() && ctx.route.has_json_body());
        plan(&gw.inspect, ctx.route, &h, needs_body).map(|p| (p, h.present()))
    });
    let (consumed, early) = match planned {
        Err(r) => (false, Err(r)),
        Ok((BodyPlan::Untouched, _)) => {
            // No body to learn the model from but the path's (`/v1/models/{model}`).
            let path = session.req_header().uri.path().to_string();
            let model = path
                .strip_prefix("/v1/models/")
                .filter(|m| !m.contains('/'));
            (false, super::policy::choose(ctx, &path, model))
        }
        Ok((BodyPlan::Consume(insp), present)) => {
            (true, consume(gw, session, ctx, *insp, present).await)
        }
    };
    let facts = ctx.body.as_ref().map(|b| &b.facts);
    let admitted = ctx
        .admission
        .admit_body(&gw.auth, &*gw.limiter, ctx.route, &method, facts, early)
        .await
        .and_then(|()| route(gw, ctx, session.req_header().uri.path()));
    match admitted {
        Err(r) => refuse(r),
        Ok(()) if consumed => Path::Relay,
        Ok(()) => Path::Proxy,
    }
}

/// Routes the request to its pool, once: by the model its body names (or `/v1/models/{model}`), its path, or
/// the default. Not routable: 404 `model_not_found`, nothing sent.
pub(super) fn route(gw: &Gateway, ctx: &mut RequestCtx, path: &str) -> Result<(), Rejection> {
    let model = ctx
        .body
        .as_ref()
        .and_then(|b| b.facts.model.as_deref())
        .or_else(|| {
            path.strip_prefix("/v1/models/")
                .filter(|m| !m.is_empty() && !m.contains('/'))
        });
    match gw.upstreams.route(model, path) {
        Some(i) => {
            ctx.pool = Some(i);
            gw.upstreams.pools[i].count_request();
            Ok(())
        }
        None => Err(Rejection::ModelNotFound(model.unwrap_or("").to_string())),
    }
}

/// Whether the request has a body its header does not announce: HTTP/2 frames a body with neither
/// `Content-Length` nor `Transfer-Encoding`, so a stream not ended with its header has one of unknown length,
/// which is planned, bounded and inspected like a chunked one (never taken for "no body").
fn unframed_body(session: &mut Session) -> bool {
    let req = session.req_header();
    req.version == http::Version::HTTP_2
        && !req.headers.contains_key(http::header::CONTENT_LENGTH)
        && !session.as_mut().is_body_empty()
}

/// The model a held body names, read before it is judged (only when a policy selector chooses by model: the
/// body is then decoded and parsed once more). A body that does not read names none.
fn model_of(insp: &BodyInspection, cap: usize, max_depth: usize) -> Option<String> {
    let decoded = crate::inspect::decode_body(insp.encoding, &insp.held, cap).ok()?;
    match &insp.multipart {
        Some(boundary) => crate::openai::multipart::field(&decoded, boundary, "model"),
        None => crate::inspect::Facts::read(&decoded, max_depth).ok()?.model,
    }
}

fn refuse(r: Rejection) -> Path {
    Path::Respond(Reply::Refuse(r))
}

/// Whether a request asks to upgrade its connection (a WebSocket handshake, or any other protocol).
fn is_upgrade(headers: &http::HeaderMap) -> bool {
    headers.contains_key(http::header::UPGRADE)
}

/// Reads the body whole (bounded) and judges it; the request side of the outcome is set here, once.
async fn consume(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
    mut insp: BodyInspection,
    present: bool,
) -> Result<(), Rejection> {
    if !present {
        if super::policy::needs_model(ctx) {
            // No body, no model: the route's selector or the default.
            let path = session.req_header().uri.path().to_string();
            super::policy::choose(ctx, &path, None)?;
        }
        insp.forward = Some(Bytes::new());
        ctx.body = Some(insp);
        return Ok(());
    }
    // The whole body within the body timeout, counted from the request's start: a client dribbling it holds
    // nothing for longer (408).
    let deadline = ctx.started + gw.inspect.body_timeout;
    loop {
        // Pingora's timer wheel (see `edge::read_head`); it starts only if the read has to wait.
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let read =
            pingora_timeout::fast_timeout::fast_timeout(left, session.read_request_body()).await;
        match read {
            Err(_) => return Err(Rejection::BodyTimeout),
            Ok(Ok(Some(chunk))) => body::hold(&mut insp, &chunk, gw.inspect.max_body_bytes)?,
            Ok(Ok(None)) => break,
            Ok(Err(e)) => {
                return Err(Rejection::InvalidBody(format!(
                    "reading the body failed ({})",
                    e.etype().as_str()
                )))
            }
        }
    }
    if super::policy::needs_model(ctx) {
        let model = model_of(
            &insp,
            gw.inspect.max_decoded_body_bytes,
            gw.inspect.options.max_depth,
        );
        let path = session.req_header().uri.path().to_string();
        super::policy::choose(ctx, &path, model.as_deref())?;
    }
    let rules = ctx.rules.clone().ok_or(Rejection::InspectionFailed)?;
    let opts = InspectOptions {
        monitor: ctx.admission.monitor,
        ..gw.inspect.options.clone()
    };
    let cfg = gw.inspect.clone();
    let size = insp.held.len();
    let started = std::time::Instant::now();
    let judged = gw
        .offload
        .run(size, move || {
            let decided = body::decide(&mut insp, &rules, &cfg, &opts);
            (insp, decided)
        })
        .await;
    if let Some(t) = &mut ctx.trace {
        t.request_inspect = Some((started, std::time::Instant::now()));
    }
    let Some((insp, decided)) = judged else {
        ctx.outcome.request = Side::failed();
        return Err(Rejection::InspectionFailed);
    };
    if insp.failed_open {
        tracing::error!(
            request_id = %ctx.request_id,
            trace_id = ctx.trace_id(),
            "request inspection failed; forwarding uninspected (policy.fail_open = true)"
        );
    } else if matches!(decided, Err(Rejection::InspectionFailed)) {
        tracing::error!(
            request_id = %ctx.request_id,
            trace_id = ctx.trace_id(),
            "request inspection failed; refusing the request (fail closed)"
        );
    }
    if let Some(v) = &insp.verdict {
        ctx.outcome.request = Side::of(v);
    } else if insp.failed_open || matches!(decided, Err(Rejection::InspectionFailed)) {
        ctx.outcome.request = Side::failed();
    }
    ctx.body = Some(insp);
    decided
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspect::OpaquePolicy;

    fn cfg(enabled: bool, unknown: UnknownRoutes) -> InspectConfig {
        InspectConfig {
            enabled,
            unknown_routes: unknown,
            options: InspectOptions {
                max_depth: 64,
                opaque: OpaquePolicy::Pass,
                monitor: false,
            },
            max_body_bytes: 1000,
            max_decoded_body_bytes: 4000,
            max_response_bytes: 1 << 20,
            max_stream_hold: 8192,
            fail_open: false,
            upgrades: crate::config::Upgrades::Deny,
            body_timeout: std::time::Duration::from_secs(30),
        }
    }

    /// `Relay` (consume), `Proxy` (untouched) or the code of a refusal.
    fn way(c: &InspectConfig, route: Route, body: BodyHeader<'_>, needs: bool) -> &'static str {
        match plan(c, route, &body, needs) {
            Ok(BodyPlan::Consume(_)) => "relay",
            Ok(BodyPlan::Untouched) => "proxy",
            Err(r) => r.render().code,
        }
    }

    #[test]
    fn the_path_follows_route_settings_and_caller_never_size() {
        use Route::*;
        let on = cfg(true, UnknownRoutes::Inspect);
        let off = cfg(false, UnknownRoutes::Inspect);
        let pass = cfg(true, UnknownRoutes::Pass);
        let deny = cfg(true, UnknownRoutes::Deny);
        let none = BodyHeader::default();
        let small = BodyHeader {
            content_length: Some(10),
            ..BodyHeader::default()
        };
        let chunked = BodyHeader {
            chunked: true,
            ..BodyHeader::default()
        };
        // (settings, route, body, admission needs the body, way)
        let cases = [
            (&on, ChatCompletions, small, false, "relay"),
            (&on, ChatCompletions, chunked, false, "relay"),
            // Answers on text routes are judged: relayed even without a body (e.g. listing stored completions).
            (&on, ChatCompletions, none, false, "relay"),
            (&on, Embeddings, small, false, "relay"),
            (&on, Embeddings, none, false, "proxy"),
            (&on, Moderations, small, false, "relay"),
            (&on, Models, none, false, "proxy"),
            (&on, OtherV1, small, false, "relay"),
            // A stored response can be streamed back from an unknown route: its answer is filtered.
            (&on, OtherV1, none, false, "relay"),
            (&pass, OtherV1, small, false, "proxy"),
            (&pass, Models, none, false, "proxy"),
            (&deny, OtherV1, none, false, "route_denied"),
            (&deny, Models, none, false, "route_denied"),
            (&off, ChatCompletions, small, false, "proxy"),
            (&off, OtherV1, small, false, "proxy"),
            (&off, Models, none, true, "proxy"),
            // With inspection off, a body is still read to count it or check the model it names.
            (&off, ChatCompletions, small, true, "relay"),
            (&off, Embeddings, chunked, true, "relay"),
            (&off, OtherV1, small, true, "relay"),
        ];
        for (c, route, body, needs, want) in cases {
            assert_eq!(
                way(c, route, body, needs),
                want,
                "{route:?} {body:?} needs={needs}"
            );
        }
        // Size only ever refuses (413), it never changes the path.
        for len in [1, 999, 1000] {
            let b = BodyHeader {
                content_length: Some(len),
                ..BodyHeader::default()
            };
            assert_eq!(way(&on, Embeddings, b, false), "relay", "{len}");
            assert_eq!(way(&off, Embeddings, b, false), "proxy", "{len}");
        }
        let big = BodyHeader {
            content_length: Some(1001),
            ..BodyHeader::default()
        };
        assert_eq!(way(&on, ChatCompletions, big, false), "body_too_large");
        let zip = BodyHeader {
            content_length: Some(10),
            encoding: Some("compress"),
            ..BodyHeader::default()
        };
        assert_eq!(
            way(&on, ChatCompletions, zip, false),
            "unsupported_encoding"
        );
    }
}
