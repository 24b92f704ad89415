//! Per-caller limits: requests and tokens per window, and requests in flight.
//!
//! Limits sit behind [`Limiter`] so the counting can move without the proxy changing: [`LocalLimiter`]
//! (`local.rs`) counts in this process; [`RedisLimiter`] (`redis.rs`) counts in a Redis (or Valkey) shared by a
//! fleet of gateways, so N replicas give a caller its quota once, not N times.
//!
//! **One request is admitted in one call**: [`Limiter::admit`] takes the concurrency permit, counts the request
//! and counts the prompt-token estimate for the caller and its tenant — all of it or none of it. With Redis that
//! is one round trip (one Lua script). Callers whose admission needs the body (a token quota, a key scoped to
//! models: `admission`) are admitted once the body is read, with its estimate; the others before the body is
//! read, so a refused caller costs no body read. When the answer reports its usage, [`Limiter::settle_tokens`]
//! corrects the estimate, fire-and-forget.
//!
//! This module owns the vocabulary (subjects, quotas, refusals, permits) and the rate-limit headers; it knows
//! nothing of HTTP requests or Pingora.

mod local;
mod over;
pub mod redis;

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use pingora_limits::inflight::Guard;

pub use local::LocalLimiter;
pub use over::{OverLimitCache, StandingCache};
pub use redis::{RedisLimiter, RedisService};

use crate::metrics;

/// The quotas of one caller (a key, a passthrough caller or a tenant). `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSpec {
    pub requests_per_minute: Option<u64>,
    pub tokens_per_minute: Option<u64>,
    pub max_concurrent: Option<u64>,
}

impl LimitSpec {
    pub fn is_empty(&self) -> bool {
        self.requests_per_minute.is_none()
            && self.tokens_per_minute.is_none()
            && self.max_concurrent.is_none()
    }

    /// `FIELD: message` for a zero quota (refusing everything is `disabled = true`, not a limit of 0).
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("requests_per_minute", self.requests_per_minute),
            ("tokens_per_minute", self.tokens_per_minute),
            ("max_concurrent", self.max_concurrent),
        ] {
            if v == Some(0) {
                return Err(format!("{name}: must be at least 1 (omit it for no limit)"));
            }
        }
        Ok(())
    }
}

/// Who a quota belongs to: the caller itself or its tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Key,
    Tenant,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Key => "key",
            Scope::Tenant => "tenant",
        }
    }
}

/// Which quota refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    Requests,
    Tokens,
    Concurrency,
}

impl LimitKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LimitKind::Requests => "requests",
            LimitKind::Tokens => "tokens",
            LimitKind::Concurrency => "concurrency",
        }
    }
}

/// One counted party of a request: its counter name (already scoped and never a credential: `k:<key id>`,
/// `t:<tenant>`, `c:<hashed caller>`) and its quotas.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub name: &'a str,
    pub scope: Scope,
    pub spec: &'a LimitSpec,
}

/// Everyone one request counts against — the caller first (when it has quotas of its own), then its tenant —
/// and the group whose counters are kept together: the tenant's counter name when the caller has a tenant,
/// else the caller's (the Redis hash tag, see `redis.rs`).
#[derive(Debug, Clone)]
pub struct Parties<'a> {
    pub subjects: Vec<Subject<'a>>,
    pub group: &'a str,
}

/// Where a quota stands after admission: the values behind the rate-limit headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub limit: u64,
    pub remaining: u64,
    /// Until the window's counts start over.
    pub reset: Duration,
}

/// The caller's own quotas as they stand, for the response headers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Standing {
    pub requests: Option<Quota>,
    pub tokens: Option<Quota>,
}

/// A request refused by a quota.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limited {
    pub kind: LimitKind,
    pub scope: Scope,
    pub limit: u64,
    pub retry_after: Duration,
    pub standing: Standing,
}

/// Why admission refused a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// A quota is used up (429).
    Limited(Limited),
    /// The shared counts cannot be reached and `limits.redis.on_unavailable = "deny"` (503).
    Unavailable,
}

/// The tokens counted at admission, kept to settle them against the same counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    /// The estimate counted.
    pub tokens: u64,
    /// The Redis window the tokens were counted in; `None`: counted in this process.
    pub window: Option<u64>,
}

/// An admitted request: its permits, its caller's standing, and its counted tokens (when a token quota applies).
#[derive(Debug, Default)]
pub struct Admitted {
    pub permits: Permits,
    pub standing: Standing,
    pub ticket: Option<Ticket>,
}

/// Concurrency permits of an admitted request, released when dropped: the request context owns them, so they
/// go on every ending (success, error, block, client gone, timeout, panic).
pub struct Permits {
    /// Permits counted in this process.
    guards: Vec<Guard>,
    /// A permit leased in Redis (one lease covers the caller's and the tenant's concurrency).
    lease: Option<redis::Lease>,
    /// How many subjects' permits are held (the in-flight gauge).
    held: usize,
}

impl Permits {
    pub fn none() -> Self {
        Self {
            guards: Vec::new(),
            lease: None,
            held: 0,
        }
    }

    fn push(&mut self, g: Guard) {
        metrics::LIMIT_PERMITS.inc();
        self.held += 1;
        self.guards.push(g);
    }

    /// The Redis lease, taken out to be given back with the request's settlement (the gauge stays with these
    /// permits until they drop).
    fn take_lease(&mut self) -> Option<redis::Lease> {
        self.lease.take()
    }

    fn leased(lease: redis::Lease, subjects: usize) -> Self {
        metrics::LIMIT_PERMITS.add(subjects as i64);
        Self {
            guards: Vec::new(),
            lease: Some(lease),
            held: subjects,
        }
    }
}

impl Default for Permits {
    fn default() -> Self {
        Self::none()
    }
}

impl Drop for Permits {
    fn drop(&mut self) {
        metrics::LIMIT_PERMITS.sub(self.held as i64);
    }
}

impl std::fmt::Debug for Permits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permits")
            .field("held", &self.held)
            .field("leased", &self.lease.is_some())
            .finish()
    }
}

/// The interface the proxy uses (through `admission`).
#[async_trait]
pub trait Limiter: Send + Sync {
    /// Admits one request: a concurrency permit for each party with a concurrency quota, one request against
    /// each request quota, `tokens` against each token quota — all or none. A refusal counts nothing.
    async fn admit(&self, parties: &Parties<'_>, tokens: u64) -> Result<Admitted, Refused>;
    /// Corrects the tokens counted at admission by `delta` (negative: fewer were used), never below zero.
    /// Never waits: the correction may be applied later, or dropped and counted when the backend is saturated.
    fn settle_tokens(&self, parties: &Parties<'_>, ticket: Ticket, delta: i64);
    /// Ends an admitted request: settles its tokens (when `settlement` says by how much) and gives `permits`
    /// back. A shared backend hands both off at once; never waits.
    fn end(&self, parties: &Parties<'_>, settlement: Option<(Ticket, i64)>, permits: Permits) {
        if let Some((ticket, delta)) = settlement {
            self.settle_tokens(parties, ticket, delta);
        }
        drop(permits);
    }
}

/// OpenAI's reset format (`1s`, `6m0s`, `250ms`).
pub fn format_reset(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = d.as_secs_f64();
    if secs < 60.0 {
        let s = format!("{secs:.3}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        return format!("{s}s");
    }
    let whole = d.as_secs();
    if whole < 3600 {
        format!("{}m{}s", whole / 60, whole % 60)
    } else {
        format!("{}h{}m{}s", whole / 3600, (whole % 3600) / 60, whole % 60)
    }
}

/// The headers that describe a caller's quotas, in OpenAI's names (`x-ratelimit-*-requests|tokens`) and the
/// common `X-RateLimit-*` trio (requests, reset in unix seconds).
pub fn headers(standing: &Standing, now: SystemTime) -> Vec<(&'static str, String)> {
    let mut out = Vec::with_capacity(9);
    if let Some(q) = standing.requests {
        out.push(("x-ratelimit-limit-requests", q.limit.to_string()));
        out.push(("x-ratelimit-remaining-requests", q.remaining.to_string()));
        out.push(("x-ratelimit-reset-requests", format_reset(q.reset)));
    }
    if let Some(q) = standing.tokens {
        out.push(("x-ratelimit-limit-tokens", q.limit.to_string()));
        out.push(("x-ratelimit-remaining-tokens", q.remaining.to_string()));
        out.push(("x-ratelimit-reset-tokens", format_reset(q.reset)));
    }
    if let Some(q) = standing.requests.or(standing.tokens) {
        let reset_at = now + q.reset;
        let unix = reset_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs() + u64::from(d.subsec_nanos() > 0))
            .unwrap_or(0);
        out.push(("x-ratelimit-limit", q.limit.to_string()));
        out.push(("x-ratelimit-remaining", q.remaining.to_string()));
        out.push(("x-ratelimit-reset", unix.to_string()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_format() {
        assert_eq!(format_reset(Duration::from_millis(250)), "250ms");
        assert_eq!(format_reset(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_reset(Duration::from_secs(6)), "6s");
        assert_eq!(format_reset(Duration::from_secs(360)), "6m0s");
    }
}
