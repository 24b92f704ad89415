//! Every metric the gateway exports, declared in one place. Labels come from closed sets (route names, status
//! codes) — never raw keys, paths or prompt text.

use std::sync::LazyLock;

use prometheus::{
    register_gauge, register_histogram, register_histogram_vec, register_int_counter,
    register_int_counter_vec, register_int_gauge, register_int_gauge_vec, Encoder, Gauge,
    Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, TextEncoder,
};

/// Requests answered, by route, HTTP status and decision (the most severe of both directions).
pub static REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "promptgate_requests_total",
        "Requests answered by the gateway, by route, HTTP status and decision.",
        &["route", "status", "decision"]
    )
    .expect("metric registers once")
});

/// Latency buckets shared by the timing histograms (seconds).
const LATENCY_BUCKETS: [f64; 18] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0, 300.0,
];

/// Time spent waiting on the upstream (request sent → last upstream byte), by route.
pub static UPSTREAM_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "promptgate_upstream_duration_seconds",
        "Time from the request sent upstream to the upstream's last byte, by route.",
        &["route"],
        LATENCY_BUCKETS.to_vec()
    )
    .expect("metric registers once")
});

/// The gateway's own share of a request: total time less the time waiting on the upstream.
pub static GATEWAY_OVERHEAD: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "promptgate_gateway_overhead_seconds",
        "Time a request spent in the gateway, not waiting on the upstream, by route.",
        &["route"],
        vec![
            0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
            1.0
        ]
    )
    .expect("metric registers once")
});

/// Time to first token of streamed answers (request received → first answer byte to the client).
pub static TTFT: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "promptgate_time_to_first_token_seconds",
        "Time from request received to the first streamed answer byte sent, by route.",
        &["route"],
        LATENCY_BUCKETS.to_vec()
    )
    .expect("metric registers once")
});

/// Rule matches by rule id (from the rule files: a bounded set), direction and action.
pub static RULE_MATCHES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "promptgate_rule_matches_total",
        "Rule matches, by rule id, direction (request, response) and action (redact, block, log).",
        &["rule", "direction", "action"]
    )
    .expect("metric registers once")
});

/// Requests let through where the gateway would fail closed, by the failing component.
pub static FAIL_OPEN: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "promptgate_fail_open_total",
        "Requests served under a fail-open policy while a component was failing (inspection, audit).",
        &["component"]
    )
    .expect("metric registers once")
});

macro_rules! counter {
    ($name:ident, $metric:literal, $help:literal) => {
        pub static $name: LazyLock<IntCounter> =
            LazyLock::new(|| register_int_counter!($metric, $help).expect("metric registers once"));
    };
}

counter!(
    AUDIT_WRITTEN,
    "promptgate_audit_events_written_total",
    "Decision events (and gap records) written to the audit file."
);
counter!(
    AUDIT_DELIVERED,
    "promptgate_audit_events_delivered_total",
    "Decision events accepted by the audit webhook."
);
counter!(
    AUDIT_WEBHOOK_FAILURES,
    "promptgate_audit_webhook_failures_total",
    "Failed audit webhook deliveries (each retried)."
);
counter!(
    AUDIT_DROPPED,
    "promptgate_audit_events_dropped_total",
    "Decision events dropped because the audit queue was full (audit.on_full = \"drop\")."
);
counter!(
    TRACE_SPANS_EXPORTED,
    "promptgate_trace_spans_exported_total",
    "Spans the OTLP collector accepted ([tracing])."
);
/// Spans given up, by reason: `queue_full` (the export queue had no room at the request's end) or
/// `export_failed` (the collector refused them or could not be reached, retries included).
pub static TRACE_SPANS_DROPPED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "promptgate_trace_spans_dropped_total",
        "Spans dropped before reaching the OTLP collector, by reason (queue_full, export_failed).",
        &["reason"]
    )
    .expect("metric registers once")
});
counter!(
    TRACE_EXPORT_ERRORS,
    "promptgate_trace_export_errors_total",
    "Failed OTLP export attempts (each retry counts)."
);
counter!(
    AUDIT_WRITE_ERRORS,
    "promptgate_audit_write_errors_total",
    "Failed attempts to write the audit file."
);

/// Events queued for the audit writer.
pub static AUDIT_QUEUE_DEPTH: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "promptgate_audit_queue_depth",
        "Decision events waiting for the audit writer."
    )
    .expect("metric registers once")
});

/// Whether the audit file is being written (0 while writes fail).
pub static AUDIT_SINK_UP: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "promptgate_audit_sink_up",
        "1 while the audit file accepts writes, 0 while they fail."
    )
    .expect("metric registers once")
});

/// Age of the oldest event the webhook has not delivered yet.
pub static AUDIT_WEBHOOK_LAG: LazyLock<Gauge> = LazyLock::new(|| {
    register_gauge!(
        "promptgate_audit_webhook_lag_seconds",
        "Age of the oldest decision event not yet delivered to the webhook (0 when caught up)."
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

/// Failed DNS lookups of upstream hosts, by pool (`upstream`: the pool's name from the config, a bounded set).
/// The pool kept the host's last good addresses.
pub static UPSTREAM_DNS_FAILURES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "promptgate_upstream_dns_failures_total",
        "Failed DNS lookups of upstream hosts (the last good addresses were kept), by pool.",
        &["upstream"]
    )
    .expect("metric registers once")
});

/// Inspection decisions by direction and decision.
/// Requests routed to each upstream (the configured `name`: a bounded label), counted once per request.
pub static UPSTREAM_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "promptgate_upstream_requests_total",
        "Requests routed to each upstream pool.",
        &["upstream"]
    )
    .expect("metric registers once")
});

/// Failed attempts per upstream and kind: `connect`, `timeout`, `other`, `status` (a 429/5xx answer that sent
/// the request to the fallback pool), `no_healthy` (no endpoint was ready).
pub static UPSTREAM_ATTEMPT_ERRORS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "promptgate_upstream_attempt_errors_total",
        "Failed attempts to reach an upstream pool, by kind.",
        &["upstream", "kind"]
    )
    .expect("metric registers once")
});

/// Endpoints of each pool (every resolved address of every URL).
pub static UPSTREAM_ENDPOINTS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "promptgate_upstream_endpoints",
        "Endpoints (resolved addresses) of each upstream pool.",
        &["upstream"]
    )
    .expect("metric registers once")
});

/// Endpoints of each pool that get traffic now (passing health checks, not ejected).
pub static UPSTREAM_HEALTHY: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "promptgate_upstream_healthy_endpoints",
        "Endpoints of each upstream pool that are healthy and not ejected.",
        &["upstream"]
    )
    .expect("metric registers once")
});

/// Endpoints taken out of a pool after a failed connection or a timeout.
pub static UPSTREAM_EJECTIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "promptgate_upstream_ejections_total",
        "Endpoints ejected from an upstream pool after a connect error or a timeout.",
        &["upstream"]
    )
    .expect("metric registers once")
});

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

/// Certificate reloads of the TLS listeners by result (`ok`, `unchanged`, `error`: refused, the last good
/// certificate still served).
pub static TLS_RELOADS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "promptgate_tls_reload_total",
        "Certificate reloads of the TLS listeners, by result.",
        &["result"]
    )
    .expect("metric registers once")
});

/// Requests by the HTTP version the client spoke (`h1`, `h2`).
pub static PROTOCOLS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "promptgate_requests_by_protocol_total",
        "Requests by the HTTP version the client spoke.",
        &["protocol"]
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

/// Whether the limits backend can be asked (1; always 1 for `limits.backend = "local"`) or requests are being
/// decided by `limits.redis.on_unavailable` (0).
pub static LIMITS_BACKEND_UP: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "promptgate_limits_backend_up",
        "Whether the limits backend answers (1) or requests are decided by limits.redis.on_unavailable (0)."
    )
    .expect("metric registers once")
});

/// Round trips of admission to Redis (one per request that asks Redis), answered or timed out.
pub static LIMITS_REDIS_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "promptgate_limits_redis_seconds",
        "Round trip of one admission to Redis (the admission script), in seconds.",
        vec![
            0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
            1.0
        ]
    )
    .expect("metric registers once")
});

/// Failed Redis calls, by kind (`timeout`, `connection`, `script`, `other`).
pub static LIMITS_REDIS_ERRORS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "promptgate_limits_redis_errors_total",
        "Failed Redis calls of the limits backend, by kind (timeout, connection, script, other).",
        &["kind"]
    )
    .expect("metric registers once")
});

/// Requests decided without Redis while it was unavailable, by `limits.redis.on_unavailable`.
pub static LIMITS_FALLBACK: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "promptgate_limits_fallback_decisions_total",
        "Requests decided without Redis while it was unavailable, by mode (local, allow, deny).",
        &["mode"]
    )
    .expect("metric registers once")
});

/// Requests refused from the over-limit cache, with no Redis round trip.
pub static LIMITS_OVER_LIMIT_CACHE_HITS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "promptgate_limits_over_limit_cache_hits_total",
        "Requests refused from the over-limit cache (a counter Redis refused with nothing left), without Redis."
    )
    .expect("metric registers once")
});

/// Background Redis work dropped because its queue was full (`lease`: a permit not renewed, `release`: a
/// permit left to expire, `settlement`: a token correction not applied).
pub static LIMITS_REDIS_DROPPED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "promptgate_limits_redis_dropped_total",
        "Background Redis work of the limits backend dropped (queue full or Redis unavailable), by what.",
        &["what"]
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

/// Client connections refused at the edge, before their request was parsed, by reason (`connection_limit`,
/// `header_timeout`, `header_too_large`, `too_many_headers`, `framing`).
pub static EDGE_REFUSED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "promptgate_edge_refused_total",
        "Client connections or request heads refused before the request was parsed, by reason.",
        &["reason"]
    )
    .expect("metric registers once")
});

/// Client connections open now.
pub static CONNECTIONS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "promptgate_connections_open",
        "Client connections open now."
    )
    .expect("metric registers once")
});

/// Requests asking to upgrade their connection (WebSocket), by outcome (`refused`, `passed`).
pub static UPGRADES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "promptgate_upgrades_total",
        "Requests asking to upgrade their connection (WebSocket), by outcome (refused, passed).",
        &["outcome"]
    )
    .expect("metric registers once")
});

/// Realtime sessions (`/v1/realtime`) open now.
pub static REALTIME_SESSIONS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "promptgate_realtime_sessions_open",
        "Realtime sessions (WebSocket, /v1/realtime) open now."
    )
    .expect("metric registers once")
});

/// Realtime session handshakes, by outcome (`opened`, `refused`, `upstream_refused`, `upstream_failed`).
pub static REALTIME_HANDSHAKES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "promptgate_realtime_handshakes_total",
        "Realtime session handshakes, by outcome (opened, refused, upstream_refused, upstream_failed).",
        &["outcome"]
    )
    .expect("metric registers once")
});

/// Realtime messages, by direction (`client`: from the client; `upstream`: from the upstream) and what became
/// of them (`forwarded`, `redacted`, `blocked`, `dropped`).
pub static REALTIME_MESSAGES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "promptgate_realtime_messages_total",
        "Realtime messages by direction (client, upstream) and outcome (forwarded, redacted, blocked, dropped).",
        &["direction", "outcome"]
    )
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
    LazyLock::force(&UPSTREAM_DNS_FAILURES);
    LazyLock::force(&RULES_RELOADS);
    LazyLock::force(&TLS_RELOADS);
    LazyLock::force(&PROTOCOLS);
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
    LazyLock::force(&UPSTREAM_DURATION);
    LazyLock::force(&GATEWAY_OVERHEAD);
    LazyLock::force(&TTFT);
    LazyLock::force(&RULE_MATCHES);
    LazyLock::force(&FAIL_OPEN);
    LazyLock::force(&AUDIT_WRITTEN);
    LazyLock::force(&AUDIT_DELIVERED);
    LazyLock::force(&AUDIT_WEBHOOK_FAILURES);
    LazyLock::force(&AUDIT_DROPPED);
    LazyLock::force(&AUDIT_WRITE_ERRORS);
    LazyLock::force(&TRACE_SPANS_EXPORTED);
    LazyLock::force(&TRACE_EXPORT_ERRORS);
    for reason in ["queue_full", "export_failed"] {
        TRACE_SPANS_DROPPED.with_label_values(&[reason]);
    }
    LazyLock::force(&AUDIT_QUEUE_DEPTH);
    LazyLock::force(&AUDIT_SINK_UP);
    LazyLock::force(&AUDIT_WEBHOOK_LAG);
    LazyLock::force(&EDGE_REFUSED);
    LazyLock::force(&CONNECTIONS);
    LazyLock::force(&UPGRADES);
    LazyLock::force(&REALTIME_SESSIONS);
    for outcome in ["opened", "refused", "upstream_refused", "upstream_failed"] {
        REALTIME_HANDSHAKES.with_label_values(&[outcome]);
    }
    for direction in ["client", "upstream"] {
        for outcome in ["forwarded", "redacted", "blocked", "dropped"] {
            REALTIME_MESSAGES.with_label_values(&[direction, outcome]);
        }
    }
    LazyLock::force(&LIMITS_BACKEND_UP);
    LazyLock::force(&LIMITS_REDIS_SECONDS);
    LazyLock::force(&LIMITS_OVER_LIMIT_CACHE_HITS);
    // Closed label sets: every series shows from the first scrape.
    for kind in ["timeout", "connection", "script", "other"] {
        LIMITS_REDIS_ERRORS.with_label_values(&[kind]);
    }
    for mode in ["local", "allow", "deny"] {
        LIMITS_FALLBACK.with_label_values(&[mode]);
    }
    for what in ["lease", "release", "settlement"] {
        LIMITS_REDIS_DROPPED.with_label_values(&[what]);
    }
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
