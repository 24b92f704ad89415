//! Admission: who is calling and whether they may, decided before anything goes upstream — identity (`auth`),
//! the browser origin (`cors`), quotas (`limits`), and the model a scoped key may use. Plain functions over
//! plain data (headers, the facts of a parsed body), unit-tested without sockets; `proxy` calls them in order
//! and answers whatever they refuse.
//!
//! Quotas are taken in two steps, both before the upstream is contacted: the concurrency permit and the request
//! count when the caller is known ([`Admission::admit_caller`], before the body is read, so a refused caller
//! costs no body read), then the prompt-token estimate once the body is read ([`Admission::admit_body`]). At
//! the end, [`Admission::settle_tokens`] corrects the estimate by what the request really cost.

pub mod cors;

use std::time::SystemTime;

use http::{HeaderMap, Method};

use crate::auth::{Auth, Caller, Refusal};
use crate::inspect::Facts;
use crate::limits::{Limiter, Permits, Standing};
use crate::metrics;
use crate::openai::{Rejection, Route};

/// What admission learned about the caller of one request, kept whether or not it was admitted: a refusal
/// still names the caller in its decision event and carries the caller's quota headers.
#[derive(Debug, Default)]
pub struct Admission {
    /// Who is calling, once identified.
    pub caller: Option<Caller>,
    /// Rules only record for this request (global monitor mode, or the caller's key).
    pub monitor: bool,
    /// The request's `Origin`, when it is one the caller may answer to (echoed in CORS headers).
    pub cors_origin: Option<String>,
    /// Whether the request carried an `Origin` (responses then vary by it).
    pub has_origin: bool,
    /// The caller's quotas as they stood at admission (for the rate-limit headers).
    pub standing: Option<Standing>,
    /// Tokens counted against the caller's token quota at admission (settled at the end).
    pub tokens_counted: Option<u64>,
    /// Concurrency permits, released when the request's context is dropped.
    pub permits: Permits,
}

impl Admission {
    /// Identifies the caller, checks its browser origin, takes its concurrency permits and counts the request
    /// against its request quotas (key, then tenant). `monitor`: the global policy mode.
    pub fn admit_caller(
        &mut self,
        auth: &Auth,
        limiter: &dyn Limiter,
        headers: &HeaderMap,
        monitor: bool,
        now: SystemTime,
    ) -> Result<(), Rejection> {
        let caller = auth.identify(headers, now).map_err(refused)?;
        self.monitor = monitor || caller.monitor();
        if let Some(origin) = headers.get(http::header::ORIGIN) {
            self.has_origin = true;
            let origin = origin.to_str().unwrap_or("null");
            if auth.allows_origin(&caller, origin) {
                self.cors_origin = Some(origin.to_string());
            } else if caller.key().is_some() {
                self.caller = Some(caller);
                return Err(refused(Refusal::OriginNotAllowed));
            }
        }
        let admitted = caller
            .is_limited()
            .then(|| limiter.admit(&caller.subjects()));
        self.caller = Some(caller);
        match admitted {
            Some(Ok((permits, standing))) => {
                self.permits = permits;
                self.standing = Some(standing);
                Ok(())
            }
            Some(Err(limited)) => {
                self.standing = Some(limited.standing);
                Err(Rejection::RateLimited(limited))
            }
            None => Ok(()),
        }
    }

    /// Whether the request's body must be read for admission: a key scoped to models must see the model it
    /// names, a token quota must count the prompt.
    pub fn needs_body(&self) -> bool {
        self.caller.as_ref().is_some_and(|c| {
            c.key().is_some_and(|k| !k.allowed_models.is_empty()) || c.has_token_quota()
        })
    }

    /// After the body: the model scope (before a content refusal — who may ask comes first), then the token
    /// quota with the body's prompt-token estimate. `early` is what reading and inspecting the body decided;
    /// `facts` what the body says about itself (`None`: the body was not read).
    pub fn admit_body(
        &mut self,
        auth: &Auth,
        limiter: &dyn Limiter,
        route: Route,
        method: &Method,
        facts: Option<&Facts>,
        early: Result<(), Rejection>,
    ) -> Result<(), Rejection> {
        let content_refusal = matches!(
            early,
            Err(Rejection::PolicyBlocked { .. } | Rejection::OpaqueInputDenied)
        );
        if early.is_err() && !content_refusal {
            return early;
        }
        let Some(caller) = &self.caller else {
            return early;
        };
        let required = method == Method::POST && route.names_model();
        let model = facts.and_then(|f| f.model.as_deref());
        auth.check_model(caller, model, required).map_err(refused)?;
        early?;
        if !caller.has_token_quota() {
            return Ok(());
        }
        let subjects = caller.subjects();
        let estimate = facts.map_or(0, Facts::estimated_tokens);
        match limiter.admit_tokens(&subjects, estimate) {
            Ok(quota) => {
                self.standing.get_or_insert_with(Default::default).tokens = quota;
                self.tokens_counted = Some(estimate);
                Ok(())
            }
            Err(limited) => {
                self.standing = Some(limited.standing);
                Err(Rejection::RateLimited(limited))
            }
        }
    }

    /// Corrects the token estimate counted at admission by what the request really cost: nothing if it was
    /// never forwarded, else the usage the upstream reported, else the estimate plus the streamed text (about
    /// four bytes a token), else the estimate stands.
    pub fn settle_tokens(
        &self,
        limiter: &dyn Limiter,
        forwarded: bool,
        reported_total: Option<u64>,
        streamed_bytes: Option<u64>,
    ) {
        let (Some(caller), Some(counted)) = (&self.caller, self.tokens_counted) else {
            return;
        };
        let actual = if !forwarded {
            Some(0)
        } else {
            reported_total.or_else(|| streamed_bytes.map(|b| counted + b.div_ceil(4)))
        };
        if let Some(actual) = actual {
            let delta = actual.min(i64::MAX as u64) as i64 - counted.min(i64::MAX as u64) as i64;
            limiter.settle_tokens(&caller.subjects(), delta);
        }
    }
}

/// Counts an identity or scope refusal and turns it into the answer.
pub fn refused(r: Refusal) -> Rejection {
    metrics::AUTH_REFUSED.with_label_values(&[r.reason()]).inc();
    match r {
        Refusal::Unauthenticated => Rejection::Unauthenticated,
        Refusal::ModelNotAllowed(m) => Rejection::ModelNotAllowed(m),
        Refusal::ModelRequired => Rejection::ModelRequired,
        Refusal::OriginNotAllowed => Rejection::OriginNotAllowed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Mode;
    use crate::limits::{LimitSpec, LocalLimiter};
    use std::time::Duration;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().expect("header"));
        }
        h
    }

    fn auth(limits: LimitSpec, origins: &[&str]) -> Auth {
        Auth::new(
            Mode::Passthrough,
            limits,
            origins.iter().map(|o| o.to_string()).collect(),
            [1; 32],
        )
    }

    fn facts(model: &str, text_bytes: u64) -> Facts {
        Facts {
            model: Some(model.into()),
            text_bytes,
            ..Facts::default()
        }
    }

    #[test]
    fn a_caller_past_its_request_quota_is_refused_with_its_standing() {
        let a = auth(
            LimitSpec {
                requests_per_minute: Some(1),
                ..LimitSpec::default()
            },
            &[],
        );
        let limiter = LocalLimiter::new(Duration::from_secs(60));
        let h = headers(&[("authorization", "Bearer sk-1")]);
        let mut first = Admission::default();
        first
            .admit_caller(&a, &limiter, &h, false, SystemTime::now())
            .expect("first");
        let mut second = Admission::default();
        let refused = second.admit_caller(&a, &limiter, &h, false, SystemTime::now());
        assert!(matches!(refused, Err(Rejection::RateLimited(_))));
        assert!(second.caller.is_some(), "a refusal still names the caller");
        assert_eq!(
            second
                .standing
                .and_then(|s| s.requests)
                .map(|q| q.remaining),
            Some(0)
        );
    }

    #[test]
    fn origins_are_echoed_only_when_allowed() {
        let a = auth(LimitSpec::default(), &["https://app.example.com"]);
        let limiter = LocalLimiter::new(Duration::from_secs(60));
        let mut ok = Admission::default();
        ok.admit_caller(
            &a,
            &limiter,
            &headers(&[("origin", "https://app.example.com")]),
            false,
            SystemTime::now(),
        )
        .expect("allowed");
        assert_eq!(ok.cors_origin.as_deref(), Some("https://app.example.com"));
        let mut other = Admission::default();
        // Passthrough callers from other origins are served, without CORS headers (the browser decides).
        other
            .admit_caller(
                &a,
                &limiter,
                &headers(&[("origin", "https://evil.example.com")]),
                false,
                SystemTime::now(),
            )
            .expect("served");
        assert!(other.cors_origin.is_none() && other.has_origin);
    }

    #[test]
    fn token_quota_counts_the_estimate_and_settles_to_the_reported_usage() {
        let a = auth(
            LimitSpec {
                tokens_per_minute: Some(100),
                ..LimitSpec::default()
            },
            &[],
        );
        let limiter = LocalLimiter::new(Duration::from_secs(60));
        let h = headers(&[("authorization", "Bearer sk-t")]);
        let post = Method::POST;
        let mut first = Admission::default();
        first
            .admit_caller(&a, &limiter, &h, false, SystemTime::now())
            .expect("caller");
        assert!(first.needs_body());
        first
            .admit_body(
                &a,
                &limiter,
                Route::ChatCompletions,
                &post,
                Some(&facts("m", 320)),
                Ok(()),
            )
            .expect("80 of 100");
        assert_eq!(first.tokens_counted, Some(80));
        // The upstream reported 10: 70 go back.
        first.settle_tokens(&limiter, true, Some(10), None);
        let mut second = Admission::default();
        second
            .admit_caller(&a, &limiter, &h, false, SystemTime::now())
            .expect("caller");
        second
            .admit_body(
                &a,
                &limiter,
                Route::ChatCompletions,
                &post,
                Some(&facts("m", 320)),
                Ok(()),
            )
            .expect("10 + 80 of 100");
        let mut third = Admission::default();
        third
            .admit_caller(&a, &limiter, &h, false, SystemTime::now())
            .expect("caller");
        let refused = third.admit_body(
            &a,
            &limiter,
            Route::ChatCompletions,
            &post,
            Some(&facts("m", 320)),
            Ok(()),
        );
        assert!(matches!(refused, Err(Rejection::RateLimited(_))));
        // A request never forwarded gives its whole estimate back.
        second.settle_tokens(&limiter, false, None, None);
        third
            .admit_body(
                &a,
                &limiter,
                Route::ChatCompletions,
                &post,
                Some(&facts("m", 320)),
                Ok(()),
            )
            .expect("after the refund");
    }

    #[test]
    fn who_may_ask_comes_before_what_was_asked() {
        // A content refusal from the body still lets the scope speak first; other early errors stand.
        let a = auth(LimitSpec::default(), &[]);
        let limiter = LocalLimiter::new(Duration::from_secs(60));
        let mut adm = Admission::default();
        adm.admit_caller(&a, &limiter, &headers(&[]), false, SystemTime::now())
            .expect("anonymous");
        let blocked = Err(Rejection::PolicyBlocked {
            rule: "r".into(),
            description: "d".into(),
        });
        let r = adm.admit_body(
            &a,
            &limiter,
            Route::ChatCompletions,
            &Method::POST,
            Some(&facts("m", 4)),
            blocked,
        );
        assert!(matches!(r, Err(Rejection::PolicyBlocked { .. })));
        let r = adm.admit_body(
            &a,
            &limiter,
            Route::ChatCompletions,
            &Method::POST,
            None,
            Err(Rejection::BodyTooLarge { limit: 1 }),
        );
        assert!(matches!(r, Err(Rejection::BodyTooLarge { .. })));
    }
}
