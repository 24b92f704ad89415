//! The per-request context: everything one request carries from its first hook to `logging`. It is dropped
//! when the request ends, on every path, so guards stored here (the in-flight count, concurrency-limit
//! permits) are released exactly once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::metrics;
use crate::openai::Route;
use crate::rules::RuleSet;

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

/// State of one request.
#[derive(Debug)]
pub struct RequestCtx {
    pub started: Instant,
    pub route: Route,
    /// The id echoed to the client and sent upstream: the client's if valid, else a fresh one.
    pub request_id: String,
    /// The rule set this request is checked against, taken once at its start.
    pub rules: Option<Arc<RuleSet>>,
    /// Request-body inspection, when the body is inspected.
    pub body: Option<super::body::BodyInspection>,
    /// The filter of a streamed (SSE) response.
    pub stream: Option<crate::inspect::stream::StreamFilter>,
    /// The verdict on a non-streamed answer held for inspection.
    pub answer: Option<crate::inspect::Verdict>,
    /// Who is calling, once identified.
    pub caller: Option<crate::auth::Caller>,
    /// Rules only record for this request (global monitor mode, or the caller's key).
    pub monitor: bool,
    /// The caller's quotas as they stood at admission (for the rate-limit headers).
    pub standing: Option<crate::limits::Standing>,
    /// Tokens counted against the caller's token quota at admission (settled against the reported usage).
    pub tokens_counted: Option<u64>,
    /// The token usage the upstream reported for a held answer.
    pub usage: Option<crate::openai::usage::Usage>,
    /// The request's `Origin`, when it is one the caller may answer to (echoed in CORS headers).
    pub cors_origin: Option<String>,
    /// Whether the request carried an `Origin` (responses then vary by it).
    pub has_origin: bool,
    /// The request went (or was being sent) upstream.
    pub forwarded: bool,
    /// When the request was sent upstream, and when the upstream's answer ended.
    pub upstream_sent: Option<Instant>,
    pub upstream_done: Option<Instant>,
    /// When the first answer byte went to the client.
    pub first_byte: Option<Instant>,
    /// Time spent inspecting the answer (held or streamed).
    pub response_inspect_us: u64,
    /// The code of the error or refusal the gateway answered with, if it did.
    pub error_code: Option<&'static str>,
    /// Concurrency permits, released when the context is dropped.
    pub permits: crate::limits::Permits,
    _in_flight: InFlightGuard,
}

impl RequestCtx {
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            route: Route::NotFound,
            request_id: String::new(),
            rules: None,
            body: None,
            stream: None,
            answer: None,
            caller: None,
            monitor: false,
            standing: None,
            tokens_counted: None,
            usage: None,
            cors_origin: None,
            has_origin: false,
            forwarded: false,
            upstream_sent: None,
            upstream_done: None,
            first_byte: None,
            response_inspect_us: 0,
            error_code: None,
            permits: crate::limits::Permits::none(),
            _in_flight: InFlightGuard::new(),
        }
    }

    /// The token usage the upstream reported: a held answer's, or the stream's last `usage`.
    pub fn reported_usage(&self) -> Option<crate::openai::usage::Usage> {
        self.usage.or_else(|| {
            self.stream
                .as_ref()
                .and_then(|f| f.usage.as_ref())
                .and_then(crate::openai::usage::Usage::from_value)
        })
    }
}

impl Default for RequestCtx {
    fn default() -> Self {
        Self::new()
    }
}

/// A client-supplied request id is kept only if it is short and made of safe characters, so it can go into
/// headers and logs as it is.
pub fn valid_request_id(v: &[u8]) -> bool {
    (1..=128).contains(&v.len())
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// A fresh request id (a random UUID, simple form).
pub fn new_request_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_id_validation() {
        assert!(valid_request_id(b"abc-123_X.y:z"));
        assert!(!valid_request_id(b""));
        assert!(!valid_request_id(b"has space"));
        assert!(!valid_request_id(b"new\nline"));
        assert!(!valid_request_id(&[b'a'; 129]));
        assert_eq!(new_request_id().len(), 32);
    }
}
