//! Every metric the gateway exports, declared in one place. Labels come from closed sets (route names, status
//! codes) — never raw keys, paths or prompt text.

use std::sync::LazyLock;

use prometheus::{
    register_histogram_vec, register_int_counter_vec, register_int_gauge, register_int_gauge_vec,
    Encoder, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, TextEncoder,
};

/// Requests answered, by route and HTTP status.
pub static REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "promptgate_requests_total",
        "Requests answered by the gateway, by route and HTTP status.",
        &["route", "status"]
    )
    .expect("metric registers once")
});

/// Whole-request latency as the client sees it (header in → last byte out), by route.
pub static REQUEST_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "promptgate_request_duration_seconds",
        "Time from request received to response finished, by route.",
        &["route"],
        vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            30.0, 60.0, 120.0, 300.0
        ]
    )
    .expect("metric registers once")
});

/// Requests currently being handled (header received, response not finished).
pub static IN_FLIGHT: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "promptgate_requests_in_flight",
        "Requests currently being handled."
    )
    .expect("metric registers once")
});

/// Upstream failures by kind (`connect`, `timeout`, `other`).
pub static UPSTREAM_ERRORS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "promptgate_upstream_errors_total",
        "Upstream failures seen by the gateway, by kind.",
        &["kind"]
    )
    .expect("metric registers once")
});

/// Inspection decisions by direction and decision.
pub static DECISIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "promptgate_decisions_total",
        "Inspection decisions, by direction and decision.",
        &["direction", "decision"]
    )
    .expect("metric registers once")
});

/// Inspections that failed inside the gateway (the request was refused, or forwarded under fail-open).
pub static INSPECTION_ERRORS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "promptgate_inspection_errors_total",
        "Inspections that failed inside the gateway, by outcome (fail_closed, fail_open).",
        &["outcome"]
    )
    .expect("metric registers once")
});

/// Mean bytes held back per event over one streamed response (one observation per stream).
pub static STREAM_HELD_BYTES: LazyLock<prometheus::Histogram> = LazyLock::new(|| {
    prometheus::register_histogram!(
        "promptgate_stream_held_bytes",
        "Mean bytes of answer text held back per event, per streamed response.",
        vec![0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0, 8192.0]
    )
    .expect("metric registers once")
});

/// Rule-set reloads by result (`ok`, `unchanged`, `error`).
pub static RULES_RELOADS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "promptgate_rules_reload_total",
        "Rule-set reloads, by result.",
        &["result"]
    )
    .expect("metric registers once")
});

/// The live rule-set version: one series with value 1.
pub static RULES_INFO: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "promptgate_rules_info",
        "The live rule-set version (value 1).",
        &["version"]
    )
    .expect("metric registers once")
});

/// Rules in the live set.
pub static RULES_COUNT: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!("promptgate_rules", "Rules in the live rule set.")
        .expect("metric registers once")
});

/// Requests refused by a limit, by limit kind (`requests`, `tokens`, `concurrency`) and scope (`key`,
/// `tenant`).
pub static RATE_LIMITED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "promptgate_rate_limited_total",
        "Requests refused with 429 by a limit, by limit kind and scope.",
        &["limit", "scope"]
    )
    .expect("metric registers once")
});

/// Concurrency permits held by requests in flight (one per limited key or tenant of each request).
pub static LIMIT_PERMITS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "promptgate_limit_permits_in_flight",
        "Concurrency-limit permits held by requests in flight."
    )
    .expect("metric registers once")
});

/// Requests refused by authentication or scope, by reason (`unauthenticated`, `model`, `origin`).
pub static AUTH_REFUSED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "promptgate_auth_refused_total",
        "Requests refused before forwarding for identity or scope, by reason.",
        &["reason"]
    )
    .expect("metric registers once")
});

/// Keys-file reloads by result (`ok`, `unchanged`, `error`).
pub static KEYS_RELOADS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "promptgate_keys_reload_total",
        "Gateway keys file reloads, by result.",
        &["result"]
    )
    .expect("metric registers once")
});

/// Gateway keys in the live keys file.
pub static KEYS_COUNT: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!("promptgate_keys", "Gateway keys in the live keys file.")
        .expect("metric registers once")
});

/// Records a newly live rule-set version.
pub fn set_rules_version(version: &str, rules: usize) {
    RULES_INFO.reset();
    RULES_INFO.with_label_values(&[version]).set(1);
    RULES_COUNT.set(rules as i64);
}

/// Forces registration so that every metric shows on `/metrics` from the first scrape.
pub fn init() {
    LazyLock::force(&REQUESTS);
    LazyLock::force(&REQUEST_DURATION);
    LazyLock::force(&IN_FLIGHT);
    LazyLock::force(&UPSTREAM_ERRORS);
    LazyLock::force(&RULES_RELOADS);
    LazyLock::force(&DECISIONS);
    LazyLock::force(&STREAM_HELD_BYTES);
    LazyLock::force(&INSPECTION_ERRORS);
    LazyLock::force(&RULES_INFO);
    LazyLock::force(&RULES_COUNT);
    LazyLock::force(&RATE_LIMITED);
    LazyLock::force(&LIMIT_PERMITS);
    LazyLock::force(&AUTH_REFUSED);
    LazyLock::force(&KEYS_RELOADS);
    LazyLock::force(&KEYS_COUNT);
}

/// The Prometheus text exposition of every registered metric.
pub fn render() -> Vec<u8> {
    let mut out = Vec::with_capacity(8 * 1024);
    // Encoding into a Vec cannot fail on I/O; a metric family that cannot be encoded is skipped.
    if let Err(e) = TextEncoder::new().encode(&prometheus::gather(), &mut out) {
        tracing::error!("metrics encoding failed: {e}");
    }
    out
}
