//! Limits counted in this process ([`LocalLimiter`]), with `pingora-limits`: fixed-memory count-min sketches
//! whose collisions only over-count, so a limit can refuse early under heavy key churn but never lets a caller
//! past it. Counters live as long as the process; reloaded keys bring only new thresholds. Also the fallback of
//! the Redis limiter while Redis cannot be reached (`limits.redis.on_unavailable = "local"`).

use std::time::Duration;

use async_trait::async_trait;
use pingora_limits::inflight::Inflight;
use pingora_limits::rate::Rate;

use super::{
    Admitted, LimitKind, Limited, Limiter, Parties, Permits, Quota, Refused, Standing, Subject,
    Ticket,
};

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

    /// Admits one request, all or nothing (see [`Limiter::admit`]); never waits.
    pub fn admit_now(&self, parties: &Parties<'_>, tokens: u64) -> Result<Admitted, Limited> {
        let subjects = &parties.subjects[..];
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
        let mut standing = Standing::default();
        let mut counted: Vec<&str> = Vec::new();
        for (i, s) in subjects.iter().enumerate() {
            if let Some(max) = s.spec.requests_per_minute {
                let count = self.requests.observe(&s.name, 1);
                if count > max as isize {
                    self.requests.observe(&s.name, -1);
                    self.uncount(&self.requests, &counted, 1);
                    return Err(self.refuse(subjects, s, LimitKind::Requests));
                }
                if i == 0 {
                    standing.requests = Some(Quota {
                        limit: max,
                        remaining: max.saturating_sub(count.max(0) as u64),
                        reset: self.peek(&self.requests, s.name).1,
                    });
                }
                counted.push(s.name);
            }
        }
        let requests_counted = counted;
        let n = tokens.min(isize::MAX as u64) as isize;
        let mut counted: Vec<&str> = Vec::new();
        let mut ticket = None;
        for (i, s) in subjects.iter().enumerate() {
            if let Some(max) = s.spec.tokens_per_minute {
                let total = self.tokens.observe(&s.name, n);
                // Refused when this request does not fit, or when nothing is left (an empty estimate).
                if total > max as isize || (n == 0 && total >= max as isize) {
                    self.tokens.observe(&s.name, -n);
                    self.uncount(&self.tokens, &counted, n);
                    self.uncount(&self.requests, &requests_counted, 1);
                    return Err(self.refuse(subjects, s, LimitKind::Tokens));
                }
                if i == 0 {
                    standing.tokens = Some(Quota {
                        limit: max,
                        remaining: max.saturating_sub(total.max(0) as u64),
                        reset: self.peek(&self.tokens, s.name).1,
                    });
                }
                ticket = Some(Ticket {
                    tokens,
                    window: None,
                });
                counted.push(s.name);
            }
        }
        Ok(Admitted {
            permits,
            standing,
            ticket,
        })
    }

    /// Corrects a token count by `delta` (see [`Limiter::settle_tokens`]).
    pub fn settle_now(&self, parties: &Parties<'_>, delta: i64) {
        if delta == 0 {
            return;
        }
        let d = delta.clamp(isize::MIN as i64, isize::MAX as i64) as isize;
        for s in &parties.subjects {
            if s.spec.tokens_per_minute.is_some() {
                // Never below zero: an over-estimate is given back only as far as it was counted.
                let (used, _) = self.peek(&self.tokens, s.name);
                let d = d.max(-(used.min(isize::MAX as u64) as isize));
                self.tokens.observe(&s.name, d);
            }
        }
    }

    fn uncount(&self, rate: &Rate, names: &[&str], n: isize) {
        for name in names {
            rate.observe(name, -n);
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
        Limited {
            kind,
            scope: s.scope,
            limit,
            retry_after,
            standing: self.standing(subjects.first()),
        }
    }
}

#[async_trait]
impl Limiter for LocalLimiter {
    async fn admit(&self, parties: &Parties<'_>, tokens: u64) -> Result<Admitted, Refused> {
        self.admit_now(parties, tokens).map_err(Refused::Limited)
    }

    fn settle_tokens(&self, parties: &Parties<'_>, _ticket: Ticket, delta: i64) {
        self.settle_now(parties, delta);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::{LimitSpec, Scope};

    fn spec(rpm: Option<u64>, tpm: Option<u64>, conc: Option<u64>) -> LimitSpec {
        LimitSpec {
            requests_per_minute: rpm,
            tokens_per_minute: tpm,
            max_concurrent: conc,
        }
    }

    fn one<'a>(name: &'a str, spec: &'a LimitSpec) -> Parties<'a> {
        Parties {
            subjects: vec![Subject {
                name,
                scope: Scope::Key,
                spec,
            }],
            group: name,
        }
    }

    #[test]
    fn requests_are_refused_past_the_quota_and_not_counted() {
        let l = LocalLimiter::new(Duration::from_secs(60));
        let s = spec(Some(2), None, None);
        let p = one("k:a", &s);
        let first = l.admit_now(&p, 0).expect("1");
        assert_eq!(first.standing.requests.map(|q| q.remaining), Some(1));
        assert_eq!(first.ticket, None, "no token quota, nothing to settle");
        l.admit_now(&p, 0).expect("2");
        let refused = l.admit_now(&p, 0).expect_err("3");
        assert_eq!(refused.kind, LimitKind::Requests);
        assert_eq!(refused.standing.requests.map(|q| q.remaining), Some(0));
        assert!(refused.retry_after <= Duration::from_secs(60));
        // Another caller is not affected.
        l.admit_now(&one("k:b", &s), 0).expect("other caller");
    }

    #[test]
    fn concurrency_permits_release_on_drop() {
        let l = LocalLimiter::new(Duration::from_secs(60));
        let s = spec(None, None, Some(1));
        let p = one("k:c", &s);
        let held = l.admit_now(&p, 0).expect("first");
        assert_eq!(
            l.admit_now(&p, 0).expect_err("second").kind,
            LimitKind::Concurrency
        );
        drop(held);
        l.admit_now(&p, 0).expect("after release");
    }

    #[test]
    fn a_tenant_refusal_uncounts_the_key() {
        let l = LocalLimiter::new(Duration::from_secs(60));
        let key = spec(Some(10), Some(100), None);
        let tenant = spec(Some(1), None, None);
        let both = Parties {
            subjects: vec![
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
            ],
            group: "t:d",
        };
        l.admit_now(&both, 10).expect("first");
        let refused = l.admit_now(&both, 10).expect_err("tenant full");
        assert_eq!(refused.scope, Scope::Tenant);
        assert_eq!(refused.standing.requests.map(|q| q.remaining), Some(9));
        assert_eq!(
            refused.standing.tokens.map(|q| q.remaining),
            Some(90),
            "the refused request's tokens were not counted"
        );
        // Tokens: estimate, refusal, settlement.
        let key_only = one("k:d", &key);
        let t = l.admit_now(&key_only, 50).expect("10 + 50 of 100");
        assert_eq!(
            t.ticket,
            Some(Ticket {
                tokens: 50,
                window: None
            })
        );
        assert_eq!(
            l.admit_now(&key_only, 60).expect_err("120").kind,
            LimitKind::Tokens
        );
        l.settle_now(&key_only, -50);
        let t = l.admit_now(&key_only, 60).expect("10 + 60");
        assert_eq!(t.standing.tokens.map(|q| q.remaining), Some(30));
    }

    #[test]
    fn a_token_refusal_takes_no_permit_and_counts_no_request() {
        // One step, all or none: the permit and the request count taken before the tokens are checked go back.
        let l = LocalLimiter::new(Duration::from_secs(60));
        let s = spec(Some(5), Some(100), Some(1));
        let p = one("k:e", &s);
        let refused = l.admit_now(&p, 101).expect_err("too many tokens");
        assert_eq!(refused.kind, LimitKind::Tokens);
        let ok = l.admit_now(&p, 100).expect("the permit was given back");
        assert_eq!(
            ok.standing.requests.map(|q| q.remaining),
            Some(4),
            "only the admitted request was counted"
        );
    }

    #[test]
    fn an_empty_estimate_is_refused_when_nothing_is_left() {
        let l = LocalLimiter::new(Duration::from_secs(60));
        let s = spec(None, Some(10), None);
        let p = one("k:f", &s);
        l.admit_now(&p, 10).expect("all of it");
        assert_eq!(
            l.admit_now(&p, 0).expect_err("nothing left").kind,
            LimitKind::Tokens
        );
    }
}
