//! The end of a request (`logging`, always the last hook, on every path): the token settlement and the permits
//! given back, the metrics
//! and the decision event, all read from the request's one outcome. Only ids, counts, codes and timings leave
//! here — never a matched value.

use std::time::{Instant, SystemTime};

use pingora::proxy::Session;
use pingora::Error;

use super::{Gateway, RequestCtx};
use crate::audit::event::{self, Decisions, Event, Hit, InspectUs, Latency};
use crate::inspect::Decision;
use crate::metrics;
use crate::openai::Rejection;
use crate::otel::{Finished, RequestTrace, SpanRecord, UpstreamFacts};
use crate::rules::Direction;

/// Settles, counts and records the request.
pub async fn finish(gw: &Gateway, session: &Session, e: Option<&Error>, ctx: &mut RequestCtx) {
    let reported = ctx.reported_usage().map(|u| u.total_tokens);
    let streamed = ctx.stream.as_ref().map(|f| f.text_bytes);
    ctx.admission
        .end(&*gw.limiter, ctx.forwarded, reported, streamed);
    if let Some(f) = &ctx.stream {
        // A stream's side is decided when it ends, which is now.
        ctx.outcome.response = f.side();
        if f.events > 0 {
            metrics::STREAM_HELD_BYTES.observe(f.held_sum as f64 / f.events as f64);
        }
    }
    let status = session
        .response_written()
        .map(|r| r.status.as_u16())
        .or_else(|| e.and_then(Rejection::from_error).map(|r| r.status()))
        .unwrap_or(0);
    let protocol = match session.req_header().version {
        http::Version::HTTP_2 => "h2",
        _ => "h1",
    };
    metrics::PROTOCOLS.with_label_values(&[protocol]).inc();
    let end = Instant::now();
    let latency = latency(ctx, end);
    count(ctx, status, &latency);
    // The request's own log line (debug: off by default; nothing is formatted unless it is on).
    tracing::debug!(
        request_id = %ctx.request_id,
        trace_id = ctx.trace_id(),
        route = ctx.route.label(),
        status,
        decision = ctx.outcome.decision().as_str(),
        "request finished"
    );
    // Made before the event takes what it needs out of the context; handed over after the event.
    let mut spans = match (&gw.tracer, &ctx.trace) {
        (Some(_), Some(t)) if t.sampled => spans(session, ctx, t, status, end),
        _ => Vec::new(),
    };
    if gw.audit.enabled() {
        if let Some(event) = event(gw, session, ctx, status, latency) {
            let handed = Instant::now();
            gw.audit.record(Box::new(event)).await;
            if let (Some(t), false) = (&ctx.trace, spans.is_empty()) {
                t.audit_span(&mut spans, handed, Instant::now());
            }
        }
    }
    if let Some(tracer) = &gw.tracer {
        tracer.submit(spans);
    }
}

/// The request's spans (a sampled request's), from what its context holds; only names and values the
/// decision event would write.
fn spans(
    session: &Session,
    ctx: &RequestCtx,
    t: &RequestTrace,
    status: u16,
    end: Instant,
) -> Vec<SpanRecord> {
    let rules = ctx.rules.as_deref();
    let safe = |m: &&str| rules.is_some_and(|r| event::safe_model(r, m));
    let model = ctx
        .body
        .as_ref()
        .and_then(|b| b.facts.model.as_deref())
        .filter(safe);
    let caller = ctx.admission.caller.as_ref();
    let o = &ctx.outcome;
    let usage = ctx.reported_usage();
    let upstream = match (ctx.timing.upstream_sent, &ctx.endpoint) {
        (Some(sent), Some(e)) => Some((sent, e.addr, Some(host_of(e.target.authority())))),
        (Some(sent), None) => ctx.attempts_log.last().map(|a| (sent, a.endpoint, None)),
        _ => None,
    };
    let address;
    let upstream = match upstream {
        Some((sent, addr, host)) => {
            address = host.map_or_else(|| addr.ip().to_string(), str::to_string);
            Some(UpstreamFacts {
                address: &address,
                port: addr.port(),
                sent,
                done: ctx.timing.upstream_done,
                status: ctx.attempts_log.last().and_then(|a| a.status),
            })
        }
        None => None,
    };
    let rule_ids = match rules {
        Some(r) => o.rule_ids(r).into_iter().map(str::to_string).collect(),
        None => Vec::new(),
    };
    let finished = Finished {
        operation: crate::otel::operation(ctx.route),
        model,
        response_model: t.response_model.as_deref().filter(safe),
        method: method_label(&session.req_header().method),
        status,
        request_id: &ctx.request_id,
        key_id: caller.map(|c| c.id()),
        tenant: caller.and_then(|c| c.tenant()),
        decision: o.decision().as_str(),
        decision_request: o.request.decision.as_str(),
        decision_response: o.response.decision.as_str(),
        rules: rule_ids,
        policy: rules.map(|r| r.policy()),
        input_tokens: usage.map(|u| u.prompt_tokens),
        output_tokens: usage.map(|u| u.completion_tokens),
        error: ctx.error_code,
        upstream,
    };
    t.spans(&finished, end)
}

/// The host of an authority (`host:port`, `[v6]:port` or a bare host).
fn host_of(authority: &str) -> &str {
    match authority.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    }
}

/// The request's latencies: upstream time ends at the upstream's last byte on every path (or now, if it never
/// came); the gateway's own time is the rest.
fn latency(ctx: &RequestCtx, now: Instant) -> Latency {
    let ms = |from: Instant, to: Instant| to.saturating_duration_since(from).as_secs_f64() * 1000.0;
    let t = &ctx.timing;
    Latency {
        inspect_us: InspectUs {
            request: ctx.body.as_ref().map_or(0, |b| b.inspect_us),
            response: t.response_inspect_us,
        },
        upstream_ms: t
            .upstream_sent
            .map(|sent| ms(sent, t.upstream_done.unwrap_or(now))),
        ttft_ms: t.first_byte.map(|at| ms(ctx.started, at)),
        total_ms: ms(ctx.started, now),
    }
}

/// The end-of-request metrics.
fn count(ctx: &RequestCtx, status: u16, latency: &Latency) {
    let route = ctx.route.label();
    let o = &ctx.outcome;
    for (side, direction) in [(&o.request, "request"), (&o.response, "response")] {
        if side.judged {
            metrics::DECISIONS
                .with_label_values(&[direction, side.decision.as_str()])
                .inc();
        }
        if let Some(rules) = &ctx.rules {
            for h in &side.hits {
                let r = rules.rule(h.rule);
                metrics::RULE_MATCHES
                    .with_label_values(&[r.id.as_str(), direction, r.action.as_str()])
                    .inc_by(u64::from(h.count));
            }
        }
    }
    metrics::REQUESTS
        .with_label_values(&[route, status_label(status), o.decision().as_str()])
        .inc();
    metrics::REQUEST_DURATION
        .with_label_values(&[route])
        .observe(latency.total_ms / 1000.0);
    if let Some(u) = latency.upstream_ms {
        metrics::UPSTREAM_DURATION
            .with_label_values(&[route])
            .observe(u / 1000.0);
    }
    metrics::GATEWAY_OVERHEAD
        .with_label_values(&[route])
        .observe((latency.total_ms - latency.upstream_ms.unwrap_or(0.0)).max(0.0) / 1000.0);
    if let (Some(t), Some(_)) = (latency.ttft_ms, &ctx.stream) {
        metrics::TTFT
            .with_label_values(&[route])
            .observe(t / 1000.0);
    }
}

/// The decision event (`None` before the request had a rule snapshot, which never happens past the first
/// hook). What the request no longer needs is moved out of its context, which is dropped next.
fn event(
    gw: &Gateway,
    session: &Session,
    ctx: &mut RequestCtx,
    status: u16,
    latency: Latency,
) -> Option<Event> {
    let rules = ctx.rules.clone()?;
    let o = &ctx.outcome;
    let kind = if o.request.decision == Decision::Block || o.response.decision == Decision::Block {
        event::BLOCKED
    } else if o.request.decision == Decision::Monitor || o.response.decision == Decision::Monitor {
        event::ESCALATED
    } else {
        event::MESSAGE
    };
    let hits = [
        (&o.request, Direction::Request),
        (&o.response, Direction::Response),
    ]
    .into_iter()
    .flat_map(|(side, direction)| {
        side.hits.iter().map(move |h| Hit {
            rule: h.rule,
            direction,
            count: h.count,
            enforced: h.enforced,
        })
    })
    .collect();
    let req = session.req_header();
    let facts = ctx.body.as_mut().map(|b| std::mem::take(&mut b.facts));
    let session_id = req
        .headers
        .get("x-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| facts.as_ref().and_then(|f| f.session.clone()));
    let caller = ctx.admission.caller.as_ref();
    Some(Event {
        kind,
        at: SystemTime::now(),
        request_id: std::mem::take(&mut ctx.request_id),
        key_id: caller.map(|c| c.id().to_string()),
        tenant: caller.and_then(|c| c.tenant()).map(str::to_string),
        route: ctx.route.label(),
        method: method_label(&req.method),
        stream: facts.as_ref().is_some_and(|f| f.stream) || ctx.stream.is_some(),
        model: facts.and_then(|f| f.model),
        decision: Decisions {
            request: o.request.decision.as_str(),
            response: o.response.decision.as_str(),
        },
        rules,
        hits,
        status,
        error: ctx.error_code,
        blocked_mid_stream: ctx.stream.as_ref().is_some_and(|f| f.blocked_by.is_some()),
        latency,
        usage: ctx.reported_usage(),
        bytes: event::Bytes {
            received: session.as_ref().body_bytes_read() as u64,
            sent: session.as_ref().body_bytes_sent() as u64,
        },
        session_id,
        upstream: ctx
            .pool
            .and_then(|i| gw.upstreams.pools.get(i))
            .map(|p| p.name.clone()),
        attempts: std::mem::take(&mut ctx.attempts_log),
        realtime: None,
        trace_id: ctx.trace_id(),
    })
}

/// A request method as events and logs name it: the standard ones, else `OTHER` (an extension method is client
/// text and could carry anything).
pub fn method_label(m: &http::Method) -> &'static str {
    match m.as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "PATCH" => "PATCH",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        "CONNECT" => "CONNECT",
        "TRACE" => "TRACE",
        _ => "OTHER",
    }
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
