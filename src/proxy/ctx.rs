//! The per-request context: everything one request carries from its first hook to `logging`. It is dropped
//! when the request ends, on every path, so the guards stored here (the in-flight count, concurrency-limit
//! permits) are released exactly once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::admission::Admission;
use crate::audit::event::Attempt;
use crate::inspect::answer::AnswerPolicy;
use crate::inspect::body::BodyInspection;
use crate::inspect::stream::StreamFilter;
use crate::inspect::Outcome;
use crate::metrics;
use crate::openai::usage::Usage;
use crate::openai::Route;
use crate::otel::RequestTrace;
use crate::rules::RuleSet;
use crate::upstream::Endpoint;

/// Requests in flight in this process: the drain on shutdown waits for it to reach zero.
pub static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// Counts one request as in flight for as long as it lives.
#[derive(Debug)]
pub struct InFlightGuard(());

impl InFlightGuard {
    fn new() -> Self {
        IN_FLIGHT.fetch_add(1, Ordering::AcqRel);
        metrics::IN_FLIGHT.inc();
        Self(())
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::AcqRel);
        metrics::IN_FLIGHT.dec();
    }
}

/// When things happened to a request, for its latencies.
#[derive(Debug, Default, Clone, Copy)]
pub struct Timing {
    /// The request went upstream (the first attempt).
    pub upstream_sent: Option<Instant>,
    /// The upstream's last answer byte arrived (or the upstream failed).
    pub upstream_done: Option<Instant>,
    /// The first answer byte went to the client.
    pub first_byte: Option<Instant>,
    /// Time spent inspecting the answer (held or streamed).
    pub response_inspect_us: u64,
}

/// State of one request.
#[derive(Debug)]
pub struct RequestCtx {
    pub started: Instant,
    pub route: Route,
    /// The id echoed to the client and sent upstream: the client's if valid, else a fresh one.
    pub request_id: String,
    /// The rule set this request is checked against, taken once at its start.
    pub rules: Option<Arc<RuleSet>>,
    /// Who is calling and what admission decided about them.
    pub admission: Admission,
    /// The request body, when the gateway consumed it (`Path::Relay`).
    pub body: Option<BodyInspection>,
    /// Which answers of this route are inspected.
    pub answers: AnswerPolicy,
    /// The filter of a streamed answer.
    pub stream: Option<StreamFilter>,
    /// The token usage the upstream reported for an answer read whole.
    pub usage: Option<Usage>,
    /// What was decided in each direction (headers, event and metrics read it).
    pub outcome: Outcome,
    /// The request went (or was being sent) upstream.
    pub forwarded: bool,
    /// Attempts made to send it upstream on Pingora's proxy loop (the retry policy counts them).
    pub attempts: usize,
    /// The pool the request is routed to (an index into `Upstreams::pools`), decided once.
    pub pool: Option<usize>,
    /// The endpoint of the current attempt (holds its in-flight count until the request ends).
    pub endpoint: Option<Endpoint>,
    /// Endpoints already tried for this request (a failover never picks one twice).
    pub tried: Vec<std::net::SocketAddr>,
    /// Every attempt, for the decision event.
    pub attempts_log: Vec<Attempt>,
    pub timing: Timing,
    /// The code of the error or refusal the gateway answered with, if it did.
    pub error_code: Option<&'static str>,
    /// The request's trace context and step times (`None` when tracing is off: nothing allocated).
    pub trace: Option<Box<RequestTrace>>,
    _in_flight: InFlightGuard,
}

impl RequestCtx {
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            route: Route::NotFound,
            request_id: String::new(),
            rules: None,
            admission: Admission::default(),
            body: None,
            answers: AnswerPolicy::default(),
            stream: None,
            usage: None,
            outcome: Outcome::default(),
            forwarded: false,
            attempts: 0,
            pool: None,
            endpoint: None,
            tried: Vec::new(),
            attempts_log: Vec::new(),
            timing: Timing::default(),
            error_code: None,
            trace: None,
            _in_flight: InFlightGuard::new(),
        }
    }

    /// The token usage the upstream reported: an answer's, or the stream's last `usage`.
    pub fn reported_usage(&self) -> Option<Usage> {
        self.usage.or_else(|| {
            self.stream
                .as_ref()
                .and_then(|f| f.usage.as_ref())
                .and_then(Usage::from_value)
        })
    }

    /// Notes an answer piece going to the client now (the first one sets the time to first byte).
    pub fn sent_answer_bytes(&mut self) {
        if self.timing.first_byte.is_none() {
            self.timing.first_byte = Some(Instant::now());
        }
    }

    /// Runs one step of answer inspection, adding its time to the answer's inspection time.
    pub fn timed<T>(&mut self, f: impl FnOnce() -> T) -> T {
        let started = Instant::now();
        let out = f();
        self.answer_inspected(started, Instant::now());
        out
    }

    /// Adds one step of answer inspection (from `started` to `ended`) to the answer's inspection time.
    pub fn answer_inspected(&mut self, started: Instant, ended: Instant) {
        self.timing.response_inspect_us +=
            ended.saturating_duration_since(started).as_micros() as u64;
        if let Some(t) = &mut self.trace {
            t.answer_step(started, ended);
        }
    }

    /// The trace id the upstream was told of, in hex (`None` when tracing is off).
    pub fn trace_id(&self) -> Option<String> {
        self.trace.as_ref().map(|t| t.trace_id_hex())
    }
}

impl Default for RequestCtx {
    fn default() -> Self {
        Self::new()
    }
}

/// A fresh request id (a random UUID, simple form).
pub fn new_request_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}
