//! Per-caller limits: requests and tokens per window, and requests in flight.
//!
//! Limits sit behind [`Limiter`] so the counting can move (a fleet of gateways sharing counts through Redis)
//! without the proxy changing. [`LocalLimiter`] counts in this process with `pingora-limits`: fixed-memory
//! count-min sketches whose collisions only over-count, so a limit can refuse early under heavy key churn but
//! never lets a caller past it. Counters live as long as the process; reloaded keys bring only new thresholds.
//!
//! Quotas are taken in two steps, both before the upstream is contacted (`admission` calls them):
//! [`Limiter::admit`] when the caller is known (concurrency and request rate, before the body is read), then
//! [`Limiter::admit_tokens`] once the body gives a prompt-token estimate. When the answer reports its usage,
//! [`Limiter::settle_tokens`] corrects the estimate.

use std::time::{Duration, SystemTime};

use pingora_limits::inflight::{Guard, Inflight};
use pingora_limits::rate::Rate;

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

/// One counted party of a request: its counter name (already scoped, e.g. `k:<id>`) and its quotas.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub name: &'a str,
    pub scope: Scope,
    pub spec: &'a LimitSpec,
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

/// A refused request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limited {
    pub kind: LimitKind,
    pub scope: Scope,
    pub limit: u64,
    pub retry_after: Duration,
    pub standing: Standing,
}

/// Concurrency permits of an admitted request, released when dropped: the request context owns them, so they
/// go on every ending (success, error, block, client gone, timeout, panic).
pub struct Permits {
    guards: Vec<Guard>,
}

impl Permits {
    pub fn none() -> Self {
        Self { guards: Vec::new() }
    }

    fn push(&mut self, g: Guard) {
        metrics::LIMIT_PERMITS.inc();
        self.guards.push(g);
    }
}

impl Default for Permits {
    fn default() -> Self {
        Self::none()
    }
}

impl Drop for Permits {
    fn drop(&mut self) {
        metrics::LIMIT_PERMITS.sub(self.guards.len() as i64);
    }
}

impl std::fmt::Debug for Permits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permits")
            .field("held", &self.guards.len())
            .finish()
    }
}

/// The interface the proxy uses. `subjects` lists the caller first, then its tenant.
pub trait Limiter: Send + Sync {
    /// Takes a concurrency permit and counts one request, or refuses (and counts nothing).
    fn admit(&self, subjects: &[Subject<'_>]) -> Result<(Permits, Standing), Limited>;
    /// Counts `estimate` tokens against the token quotas, or refuses (and counts nothing). Returns the
    /// caller's own token quota as it stands.
    fn admit_tokens(
        &self,
        subjects: &[Subject<'_>],
        estimate: u64,
    ) -> Result<Option<Quota>, Limited>;
    /// Corrects an earlier estimate by what the upstream reported (`delta` may be negative).
    fn settle_tokens(&self, subjects: &[Subject<'_>], delta: i64);
}

/// Sketch width of the rate counters: with 1,000 active callers the chance that one is over-counted (all
/// four of its cells shared) is about 1 in 10^5; wider sketches cost cache misses on every request.
const RATE_SLOTS: usize = 1 << 14;

/// Counts in this process.
pub struct LocalLimiter {
    window: Duration,
    requests: Rate,
    tokens: Rate,
    inflight: Inflight,
}

impl LocalLimiter {
    /// `window` is the span the per-minute quotas are counted over (one minute unless shortened for tests).
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            requests: Rate::new_with_estimator_config(window, 4, RATE_SLOTS),
            tokens: Rate::new_with_estimator_config(window, 4, RATE_SLOTS),
            inflight: Inflight::new(),
        }
    }

    /// Count so far in the current window, and the time until it starts over.
    fn peek(&self, rate: &Rate, name: &str) -> (u64, Duration) {
        rate.rate_with(&name, |c| {
            let left = (1.0 - c.current_interval_fraction).clamp(0.0, 1.0);
            (
                c.curr_samples.max(0) as u64,
                self.window.mul_f64(left).max(Duration::from_millis(1)),
            )
        })
    }

    fn quota(&self, rate: &Rate, name: &str, limit: Option<u64>) -> Option<Quota> {
        let limit = limit?;
        let (used, reset) = self.peek(rate, name);
        Some(Quota {
            limit,
            remaining: limit.saturating_sub(used),
            reset,
        })
    }

    /// The caller's request quota as it stands, from the count `observe` returned.
    fn request_quota(&self, s: &Subject<'_>, count: isize) -> Option<Quota> {
        let limit = s.spec.requests_per_minute?;
        Some(Quota {
            limit,
            remaining: limit.saturating_sub(count.max(0) as u64),
            reset: self.peek(&self.requests, s.name).1,
        })
    }

    fn standing(&self, caller: Option<&Subject<'_>>) -> Standing {
        let Some(s) = caller else {
            return Standing::default();
        };
        Standing {
            requests: self.quota(&self.requests, s.name, s.spec.requests_per_minute),
            tokens: self.quota(&self.tokens, s.name, s.spec.tokens_per_minute),
        }
    }

    fn refuse(&self, subjects: &[Subject<'_>], s: &Subject<'_>, kind: LimitKind) -> Limited {
        let (limit, retry_after) = match kind {
            LimitKind::Requests => (
                s.spec.requests_per_minute.unwrap_or(0),
                self.peek(&self.requests, s.name).1,
            ),
            LimitKind::Tokens => (
                s.spec.tokens_per_minute.unwrap_or(0),
                self.peek(&self.tokens, s.name).1,
            ),
            // No window to wait for: a slot frees when some request ends.
            LimitKind::Concurrency => (s.spec.max_concurrent.unwrap_or(0), Duration::from_secs(1)),
        };
        metrics::RATE_LIMITED
            .with_label_values(&[kind.as_str(), s.scope.as_str()])
            .inc();
        Limited {
            kind,
            scope: s.scope,
            limit,
            retry_after,
            standing: self.standing(subjects.first()),
        }
    }
}

impl Limiter for LocalLimiter {
    fn admit(&self, subjects: &[Subject<'_>]) -> Result<(Permits, Standing), Limited> {
        let mut permits = Permits::none();
        for s in subjects {
            if let Some(max) = s.spec.max_concurrent {
                let (guard, count) = self.inflight.incr(s.name, 1);
                if count > max as isize {
                    return Err(self.refuse(subjects, s, LimitKind::Concurrency));
                }
                permits.push(guard);
            }
        }
        let mut counted: Vec<&str> = Vec::new();
        let mut standing = Standing::default();
        for (i, s) in subjects.iter().enumerate() {
            if let Some(max) = s.spec.requests_per_minute {
                let count = self.requests.observe(&s.name, 1);
                if count > max as isize {
                    self.requests.observe(&s.name, -1);
                    for name in &counted {
                        self.requests.observe(name, -1);
                    }
                    return Err(self.refuse(subjects, s, LimitKind::Requests));
                }
                if i == 0 {
                    standing.requests = self.request_quota(s, count);
                }
                counted.push(s.name);
            }
        }
        // The token quota is reported by `admit_tokens`, once the estimate is counted.
        Ok((permits, standing))
    }

    fn admit_tokens(
        &self,
        subjects: &[Subject<'_>],
        estimate: u64,
    ) -> Result<Option<Quota>, Limited> {
        let n = estimate.min(isize::MAX as u64) as isize;
        let mut counted: Vec<&str> = Vec::new();
        let mut quota = None;
        for (i, s) in subjects.iter().enumerate() {
            if let Some(max) = s.spec.tokens_per_minute {
                let total = self.tokens.observe(&s.name, n);
                // Refused when this request does not fit, or when nothing is left (an empty estimate).
                if total > max as isize || (n == 0 && total >= max as isize) {
                    self.tokens.observe(&s.name, -n);
                    for name in &counted {
                        self.tokens.observe(name, -n);
                    }
                    return Err(self.refuse(subjects, s, LimitKind::Tokens));
                }
                if i == 0 {
                    quota = Some(Quota {
                        limit: max,
                        remaining: max.saturating_sub(total.max(0) as u64),
                        reset: self.peek(&self.tokens, s.name).1,
                    });
                }
                counted.push(s.name);
            }
        }
        Ok(quota)
    }

    fn settle_tokens(&self, subjects: &[Subject<'_>], delta: i64) {
        if delta == 0 {
            return;
        }
        let d = delta.clamp(isize::MIN as i64, isize::MAX as i64) as isize;
        for s in subjects {
            if s.spec.tokens_per_minute.is_some() {
                // Never below zero: an over-estimate is given back only as far as it was counted.
                let (used, _) = self.peek(&self.tokens, s.name);
                let d = d.max(-(used.min(isize::MAX as u64) as isize));
                self.tokens.observe(&s.name, d);
            }
        }
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

    fn spec(rpm: Option<u64>, tpm: Option<u64>, conc: Option<u64>) -> LimitSpec {
        LimitSpec {
            requests_per_minute: rpm,
            tokens_per_minute: tpm,
            max_concurrent: conc,
        }
    }

    #[test]
    fn requests_are_refused_past_the_quota_and_not_counted() {
        let l = LocalLimiter::new(Duration::from_secs(60));
        let s = spec(Some(2), None, None);
        let subj = [Subject {
            name: "k:a",
            scope: Scope::Key,
            spec: &s,
        }];
        let (_, st) = l.admit(&subj).expect("1");
        assert_eq!(st.requests.map(|q| q.remaining), Some(1));
        l.admit(&subj).expect("2");
        let refused = l.admit(&subj).expect_err("3");
        assert_eq!(refused.kind, LimitKind::Requests);
        assert_eq!(refused.standing.requests.map(|q| q.remaining), Some(0));
        assert!(refused.retry_after <= Duration::from_secs(60));
        // Another caller is not affected.
        let other = [Subject {
            name: "k:b",
            ..subj[0]
        }];
        l.admit(&other).expect("other caller");
    }

    #[test]
    fn concurrency_permits_release_on_drop() {
        let l = LocalLimiter::new(Duration::from_secs(60));
        let s = spec(None, None, Some(1));
        let subj = [Subject {
            name: "k:c",
            scope: Scope::Key,
            spec: &s,
        }];
        let (p, _) = l.admit(&subj).expect("first");
        assert_eq!(
            l.admit(&subj).expect_err("second").kind,
            LimitKind::Concurrency
        );
        drop(p);
        l.admit(&subj).expect("after release");
    }

    #[test]
    fn a_tenant_refusal_uncounts_the_key() {
        let l = LocalLimiter::new(Duration::from_secs(60));
        let key = spec(Some(10), Some(100), None);
        let tenant = spec(Some(1), None, None);
        let subj = [
            Subject {
                name: "k:d",
                scope: Scope::Key,
                spec: &key,
            },
            Subject {
                name: "t:d",
                scope: Scope::Tenant,
                spec: &tenant,
            },
        ];
        l.admit(&subj).expect("first");
        let refused = l.admit(&subj).expect_err("tenant full");
        assert_eq!(refused.scope, Scope::Tenant);
        assert_eq!(refused.standing.requests.map(|q| q.remaining), Some(9));
        // Tokens: estimate, refusal, settlement.
        l.admit_tokens(&subj[..1], 60).expect("60 of 100");
        assert_eq!(
            l.admit_tokens(&subj[..1], 60).expect_err("120").kind,
            LimitKind::Tokens
        );
        l.settle_tokens(&subj[..1], -50);
        let q = l.admit_tokens(&subj[..1], 60).expect("10 + 60");
        assert_eq!(q.map(|q| q.remaining), Some(30));
    }

    #[test]
    fn reset_format() {
        assert_eq!(format_reset(Duration::from_millis(250)), "250ms");
        assert_eq!(format_reset(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_reset(Duration::from_secs(6)), "6s");
        assert_eq!(format_reset(Duration::from_secs(360)), "6m0s");
    }
}
