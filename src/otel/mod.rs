//! OpenTelemetry traces (`[tracing]`): the gateway joins its callers' traces and exports its own spans over OTLP.
//!
//! - **Per request** ([`RequestTrace`], held by the request's context only when tracing is on): the trace
//!   context decided once at the start — the client's `traceparent` if valid (`context.rs`), else a new trace;
//!   sampled as the client says, else by `sampling_ratio` over the trace id — and the instants of the request's
//!   steps. The upstream gets a `traceparent` naming the upstream (CLIENT) span as its parent, sampled or not.
//! - **At its end** the proxy hands plain facts ([`Finished`]) to [`RequestTrace::spans`], which makes the
//!   SERVER span (named `{gen_ai.operation.name} {gen_ai.request.model}`) and its children (request
//!   inspection, answer inspection, the upstream exchange, the audit hand-off), and [`Tracer::submit`] puts them
//!   in a bounded queue with one `try_send` (full: dropped and counted). Nothing is recorded for an unsampled
//!   request.
//! - **Export** (`export.rs`, a background service): batches, OTLP protobuf (`proto.rs`), HTTP or gRPC.
//!
//! What a span may carry: ids, counts, codes, route-derived names and the caller's key id — never a prompt, a
//! completion or a matched value. A model name only when the decision event would write it (the same rule:
//! [`crate::audit::event::safe_model`]).
//!
//! Span status: ERROR when the gateway answers 5xx (the upstream unreachable, inspection impossible) or, on the
//! upstream span, when the upstream answered 5xx or not at all. A policy block is not an error — the gateway did
//! its job: it is `promptgate.decision = "block"` with the rule ids in `promptgate.rules`.

pub mod context;
mod export;
pub mod proto;

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tokio::sync::{mpsc, oneshot};

pub use context::{SpanId, TraceId};
pub use export::Exporter;

use crate::config::TracingConfig;
use crate::metrics;

/// The instrumentation scope of every span.
const SCOPE: &str = "promptgate";

/// The request path's handle on tracing (shared; one per process).
pub struct Tracer {
    tx: mpsc::Sender<Item>,
    ratio: f64,
}

/// What the queue carries to the exporter.
enum Item {
    /// One request's spans.
    Spans(Vec<SpanRecord>),
    /// Export everything queued so far, then stop (and say so).
    Close(oneshot::Sender<()>),
}

impl Tracer {
    /// The tracer and its exporter (to run as a background service).
    pub fn new(cfg: &TracingConfig) -> Result<(Arc<Tracer>, Exporter), crate::config::ConfigError> {
        let (tx, rx) = mpsc::channel(cfg.queue);
        let exporter = Exporter::new(cfg, rx)?;
        let tracer = Tracer {
            tx,
            ratio: cfg.sampling_ratio,
        };
        Ok((Arc::new(tracer), exporter))
    }

    /// The trace context of a request, from its headers.
    pub fn start(&self, headers: &http::HeaderMap) -> RequestTrace {
        let parent = headers
            .get("traceparent")
            .and_then(|v| context::parse_traceparent(v.as_bytes()));
        let (trace_id, parent_span, sampled, tracestate) = match parent {
            Some(p) => (
                p.trace_id,
                Some(p.span_id),
                p.sampled,
                // A tracestate belongs to the traceparent it came with: without a valid one it is dropped.
                context::tracestate(
                    headers
                        .get_all("tracestate")
                        .iter()
                        .map(http::HeaderValue::as_bytes),
                ),
            ),
            None => {
                let id = context::new_trace_id();
                (id, None, context::ratio_samples(&id, self.ratio), None)
            }
        };
        RequestTrace {
            trace_id,
            span_id: context::new_span_id(),
            parent: parent_span,
            sampled,
            tracestate,
            upstream_span: context::new_span_id(),
            started: Instant::now(),
            started_wall: SystemTime::now(),
            request_inspect: None,
            answer_inspect: None,
            response_model: None,
        }
    }

    /// Hands one request's spans to the exporter: never waits; a full queue drops them (counted).
    pub fn submit(&self, spans: Vec<SpanRecord>) {
        if spans.is_empty() {
            return;
        }
        let n = spans.len() as u64;
        if self.tx.try_send(Item::Spans(spans)).is_err() {
            metrics::TRACE_SPANS_DROPPED
                .with_label_values(&["queue_full"])
                .inc_by(n);
        }
    }

    /// Makes the exporter export everything queued so far and stop, and waits (at most `limit`) until it has.
    /// Called on shutdown once no request is left. `false`: it did not finish in time.
    pub async fn close(&self, limit: std::time::Duration) -> bool {
        let (done, stopped) = oneshot::channel();
        let sent = tokio::time::timeout(limit, self.tx.send(Item::Close(done))).await;
        if !matches!(sent, Ok(Ok(()))) {
            return sent.is_ok();
        }
        tokio::time::timeout(limit, stopped).await.is_ok()
    }
}

/// One request's trace: its context, decided at its start, and when its steps ran.
#[derive(Debug)]
pub struct RequestTrace {
    pub trace_id: TraceId,
    /// The gateway's SERVER span.
    pub span_id: SpanId,
    /// The client's span, when it sent a valid `traceparent`.
    pub parent: Option<SpanId>,
    pub sampled: bool,
    /// The client's `tracestate` (bounded), passed upstream and recorded on the spans.
    pub tracestate: Option<String>,
    /// The CLIENT span of the upstream exchange: the parent the upstream is told of.
    pub upstream_span: SpanId,
    started: Instant,
    started_wall: SystemTime,
    /// Request inspection: from its start to its end.
    pub request_inspect: Option<(Instant, Instant)>,
    /// Answer inspection: from its first step to its last (a stream's steps are spread over the answer).
    pub answer_inspect: Option<(Instant, Instant)>,
    /// The model the upstream says answered (only when sampled; written only if safe).
    pub response_model: Option<String>,
}

/// The plain facts of a finished request the spans are made from.
#[derive(Debug)]
pub struct Finished<'a> {
    /// `gen_ai.operation.name`.
    pub operation: &'static str,
    /// The request's model, already judged safe to record.
    pub model: Option<&'a str>,
    /// The answer's model, already judged safe to record.
    pub response_model: Option<&'a str>,
    pub method: &'static str,
    pub status: u16,
    pub request_id: &'a str,
    pub key_id: Option<&'a str>,
    pub tenant: Option<&'a str>,
    /// `promptgate.decision`: the most severe of both sides (as metrics name it).
    pub decision: &'static str,
    /// `promptgate.decision.request` / `.response`: each side's.
    pub decision_request: &'static str,
    pub decision_response: &'static str,
    /// The ids of the rules that matched.
    pub rules: Vec<String>,
    /// `promptgate.policy`: the policy the request was checked under.
    pub policy: Option<&'a str>,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    /// The gateway's own error or refusal code.
    pub error: Option<&'static str>,
    pub upstream: Option<UpstreamFacts<'a>>,
}

/// The upstream exchange, as the CLIENT span records it.
#[derive(Debug)]
pub struct UpstreamFacts<'a> {
    pub address: &'a str,
    pub port: u16,
    pub sent: Instant,
    pub done: Option<Instant>,
    /// The status of the last answer, if one came.
    pub status: Option<u16>,
}

/// A finished span, ready for export.
#[derive(Debug, Clone)]
pub struct SpanRecord {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent: Option<SpanId>,
    /// The parent is in another process (the client's span).
    pub remote_parent: bool,
    pub tracestate: Option<String>,
    pub name: String,
    pub kind: Kind,
    pub start_ns: u64,
    pub end_ns: u64,
    pub attributes: Vec<(&'static str, Attr)>,
    /// An error's description (the span's status is ERROR).
    pub error: Option<String>,
}

/// OTLP span kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Internal = 1,
    Server = 2,
    Client = 3,
}

/// An attribute value.
#[derive(Debug, Clone, PartialEq)]
pub enum Attr {
    Str(String),
    Int(i64),
    Strs(Vec<String>),
}

impl From<&str> for Attr {
    fn from(s: &str) -> Self {
        Attr::Str(s.to_string())
    }
}

impl RequestTrace {
    /// The `traceparent` sent upstream: the upstream span as parent, the sampling decision as it is.
    pub fn upstream_traceparent(&self) -> String {
        context::traceparent(&self.trace_id, &self.upstream_span, self.sampled)
    }

    /// The trace id in hex, as events and logs write it.
    pub fn trace_id_hex(&self) -> String {
        hex::encode(self.trace_id)
    }

    /// Notes one step of answer inspection.
    pub fn answer_step(&mut self, from: Instant, to: Instant) {
        let first = self.answer_inspect.map_or(from, |(f, _)| f);
        self.answer_inspect = Some((first, to));
    }

    fn unix_ns(&self, at: Instant) -> u64 {
        let wall = match at.checked_duration_since(self.started) {
            Some(d) => self.started_wall + d,
            None => self.started_wall - self.started.duration_since(at),
        };
        wall.duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    }

    /// The request's spans (none when it is not sampled): the SERVER span ending at `end`, then its children.
    pub fn spans(&self, f: &Finished<'_>, end: Instant) -> Vec<SpanRecord> {
        if !self.sampled {
            return Vec::new();
        }
        let name = match f.model {
            Some(m) => format!("{} {m}", f.operation),
            None => f.operation.to_string(),
        };
        let span = |span_id, parent, name: String, kind, from: Instant, to: Instant| SpanRecord {
            trace_id: self.trace_id,
            span_id,
            parent,
            remote_parent: false,
            tracestate: self.tracestate.clone(),
            name,
            kind,
            start_ns: self.unix_ns(from),
            end_ns: self.unix_ns(to),
            attributes: Vec::new(),
            error: None,
        };
        let mut server = span(
            self.span_id,
            self.parent,
            name.clone(),
            Kind::Server,
            self.started,
            end,
        );
        server.remote_parent = self.parent.is_some();
        let mut a = gen_ai(f);
        a.push(("http.request.method", f.method.into()));
        a.push(("http.response.status_code", Attr::Int(i64::from(f.status))));
        a.push(("promptgate.request_id", f.request_id.into()));
        a.push(("promptgate.decision", f.decision.into()));
        a.push(("promptgate.decision.request", f.decision_request.into()));
        a.push(("promptgate.decision.response", f.decision_response.into()));
        if !f.rules.is_empty() {
            a.push(("promptgate.rules", Attr::Strs(f.rules.clone())));
        }
        if let Some(p) = f.policy {
            a.push(("promptgate.policy", p.into()));
        }
        if let Some(k) = f.key_id {
            a.push(("promptgate.key_id", k.into()));
        }
        if let Some(t) = f.tenant {
            a.push(("promptgate.tenant", t.into()));
        }
        if let Some(e) = f.error {
            a.push(("promptgate.error", e.into()));
        }
        if f.status >= 500 {
            let why = f.error.unwrap_or("server error");
            a.push(("error.type", why.into()));
            server.error = Some(why.to_string());
        }
        server.attributes = a;
        let mut out = vec![server];
        if let Some((from, to)) = self.request_inspect {
            let mut s = span(
                context::new_span_id(),
                Some(self.span_id),
                "inspect request".into(),
                Kind::Internal,
                from,
                to,
            );
            s.attributes
                .push(("promptgate.decision", f.decision_request.into()));
            out.push(s);
        }
        if let Some(u) = &f.upstream {
            let mut s = span(
                self.upstream_span,
                Some(self.span_id),
                name,
                Kind::Client,
                u.sent,
                u.done.unwrap_or(end).max(u.sent),
            );
            let mut a = gen_ai(f);
            a.push(("server.address", u.address.into()));
            a.push(("server.port", Attr::Int(i64::from(u.port))));
            a.push(("http.request.method", f.method.into()));
            match u.status {
                Some(status) => {
                    a.push(("http.response.status_code", Attr::Int(i64::from(status))));
                    if status >= 500 {
                        a.push(("error.type", Attr::Str(status.to_string())));
                        s.error = Some(format!("upstream answered {status}"));
                    }
                }
                None => {
                    a.push(("error.type", "no_answer".into()));
                    s.error = Some("no answer from the upstream".into());
                }
            }
            s.attributes = a;
            out.push(s);
        }
        if let Some((from, to)) = self.answer_inspect {
            let mut s = span(
                context::new_span_id(),
                Some(self.span_id),
                "inspect answer".into(),
                Kind::Internal,
                from,
                to,
            );
            s.attributes
                .push(("promptgate.decision", f.decision_response.into()));
            out.push(s);
        }
        out
    }

    /// Adds the audit hand-off (the decision event queued from `from` to `to`) to the spans made by
    /// [`RequestTrace::spans`]; the SERVER span (the first) is stretched to cover it.
    pub fn audit_span(&self, spans: &mut Vec<SpanRecord>, from: Instant, to: Instant) {
        let Some(server) = spans.first_mut() else {
            return;
        };
        let (start_ns, end_ns) = (self.unix_ns(from), self.unix_ns(to));
        server.end_ns = server.end_ns.max(end_ns);
        spans.push(SpanRecord {
            trace_id: self.trace_id,
            span_id: context::new_span_id(),
            parent: Some(self.span_id),
            remote_parent: false,
            tracestate: self.tracestate.clone(),
            name: "audit".into(),
            kind: Kind::Internal,
            start_ns,
            end_ns,
            attributes: Vec::new(),
            error: None,
        });
    }
}

/// The GenAI attributes the SERVER and CLIENT spans share.
fn gen_ai(f: &Finished<'_>) -> Vec<(&'static str, Attr)> {
    let mut a = vec![
        ("gen_ai.operation.name", f.operation.into()),
        ("gen_ai.provider.name", "openai".into()),
        ("gen_ai.system", "openai".into()),
    ];
    if let Some(m) = f.model {
        a.push(("gen_ai.request.model", m.into()));
    }
    if let Some(m) = f.response_model {
        a.push(("gen_ai.response.model", m.into()));
    }
    if let Some(n) = f.input_tokens {
        a.push(("gen_ai.usage.input_tokens", Attr::Int(n as i64)));
    }
    if let Some(n) = f.output_tokens {
        a.push(("gen_ai.usage.output_tokens", Attr::Int(n as i64)));
    }
    a
}

/// `gen_ai.operation.name` of a route (the GenAI names where there is one, else the route's own).
pub fn operation(route: crate::openai::Route) -> &'static str {
    use crate::openai::Route;
    match route {
        Route::ChatCompletions => "chat",
        Route::Completions => "text_completion",
        Route::Embeddings => "embeddings",
        Route::Responses => "responses",
        Route::Moderations => "moderations",
        Route::Models => "models",
        Route::OtherV1 => "other",
        Route::NotFound => "not_found",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finished() -> Finished<'static> {
        Finished {
            operation: "chat",
            model: Some("gpt-4o"),
            response_model: None,
            method: "POST",
            status: 200,
            request_id: "r1",
            key_id: Some("k1"),
            tenant: None,
            decision: "allow",
            decision_request: "allow",
            decision_response: "allow",
            rules: Vec::new(),
            policy: None,
            input_tokens: Some(3),
            output_tokens: Some(4),
            error: None,
            upstream: None,
        }
    }

    fn trace(headers: &[(&str, &str)], ratio: f64) -> RequestTrace {
        let (tx, _rx) = mpsc::channel(1);
        let tracer = Tracer { tx, ratio };
        let mut h = http::HeaderMap::new();
        for (k, v) in headers {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                v.parse().expect("value"),
            );
        }
        tracer.start(&h)
    }

    #[test]
    fn the_clients_decision_is_followed() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        let t = trace(&[("traceparent", tp), ("tracestate", "a=1")], 1.0);
        assert!(!t.sampled, "unsampled parent, ratio 1: not recorded");
        assert!(t.spans(&finished(), Instant::now()).is_empty());
        assert!(t.upstream_traceparent().ends_with("-00"));
        assert_eq!(t.tracestate.as_deref(), Some("a=1"));
        let sampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let t = trace(&[("traceparent", sampled)], 0.0);
        assert!(t.sampled, "sampled parent, ratio 0: recorded");
        assert_eq!(
            t.parent,
            Some([0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7])
        );
    }

    #[test]
    fn a_bad_traceparent_starts_a_new_trace_without_its_tracestate() {
        let t = trace(&[("traceparent", "00-xyz"), ("tracestate", "a=1")], 1.0);
        assert_eq!(t.parent, None);
        assert_eq!(t.tracestate, None);
        assert!(t.sampled);
    }

    #[test]
    fn children_point_to_the_server_span() {
        let mut t = trace(&[], 1.0);
        let now = Instant::now();
        t.request_inspect = Some((now, now));
        let mut f = finished();
        f.upstream = Some(UpstreamFacts {
            address: "up.example",
            port: 443,
            sent: now,
            done: None,
            status: Some(502),
        });
        let mut spans = t.spans(&f, Instant::now());
        t.audit_span(&mut spans, now, Instant::now());
        assert_eq!(spans.len(), 4);
        assert_eq!(spans[0].name, "chat gpt-4o");
        assert_eq!(spans[0].kind, Kind::Server);
        assert!(spans[1..].iter().all(|s| s.parent == Some(t.span_id)));
        let client = spans
            .iter()
            .find(|s| s.kind == Kind::Client)
            .expect("client");
        assert_eq!(client.span_id, t.upstream_span);
        assert!(
            client.error.is_some(),
            "a 502 from the upstream is an error"
        );
        assert!(spans[0].error.is_none(), "the gateway answered 200");
    }
}
