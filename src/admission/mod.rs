//! Admission: who is calling and whether they may, decided before anything goes upstream — identity (`auth`),
//! the browser origin (`cors`), quotas (`limits`), and the model a scoped key may use. Plain functions over
//! plain data (headers, the facts of a parsed body), unit-tested without sockets; `proxy` calls them in order
//! and answers whatever they refuse.
//!
//! Quotas are taken in one step, one [`Limiter::admit`] call (with a shared backend, one round trip): the
//! concurrency permit, the request count and the prompt-token estimate together. A caller whose admission needs
//! the body ([`Admission::needs_body`]: a token quota to count the prompt, a key scoped to models) is admitted
//! once the body is read ([`Admission::admit_body`]); any other caller when it is identified
//! ([`Admission::admit_caller`]), before the body is read, so a refused caller costs no body read. A request
//! refused for its content or its model before it was admitted is not counted. At the end, [`Admission::end`]
//! corrects the estimate by what the request really cost and gives the permits back, in one hand-off.

pub mod cors;

use std::time::SystemTime;

use http::{HeaderMap, Method};

use crate::auth::{Auth, Caller, Refusal};
use crate::inspect::Facts;
use crate::limits::{Limiter, Permits, Refused, Standing, Ticket};
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
    /// Tokens counted against token quotas at admission (settled at the end).
    pub ticket: Option<Ticket>,
    /// Concurrency permits, released when the request's context is dropped.
    pub permits: Permits,
    /// Whether the quotas were taken (at most once per request).
    admitted: bool,
}

impl Admission {
    /// Identifies the caller and checks its browser origin; a caller whose admission does not need the body
    /// is admitted against its quotas now. `monitor`: the global policy mode.
    pub async fn admit_caller(
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
        self.caller = Some(caller);
        if self.needs_body() {
            return Ok(());
        }
        self.admit(limiter, 0).await
    }

    /// Whether the request's body must be read for admission: a key scoped to models must see the model it
    /// names, a token quota must count the prompt.
    pub fn needs_body(&self) -> bool {
        self.caller.as_ref().is_some_and(|c| {
            c.key().is_some_and(|k| !k.allowed_models.is_empty()) || c.has_token_quota()
        })
    }

    /// After the body: the model scope (before a content refusal — who may ask comes first), then the quotas
    /// of a caller not admitted yet, with the body's prompt-token estimate. `early` is what reading and
    /// inspecting the body decided; `facts` what the body says about itself (`None`: the body was not read).
    pub async fn admit_body(
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
        self.admit(limiter, facts.map_or(0, Facts::estimated_tokens))
            .await
    }

    /// A realtime session, after its caller was identified: the model it names (the `model` query) against a
    /// scoped key — which must name one — then the quotas, with no token estimate (a session's tokens are
    /// settled response by response). The session holds its concurrency permit for as long as it is open.
    pub async fn admit_session(
        &mut self,
        auth: &Auth,
        limiter: &dyn Limiter,
        model: Option<&str>,
    ) -> Result<(), Rejection> {
        if let Some(caller) = &self.caller {
            auth.check_model(caller, model, true).map_err(refused)?;
        }
        self.admit(limiter, 0).await
    }

    /// Takes the caller's quotas (once), counting `tokens` against its token quotas.
    async fn admit(&mut self, limiter: &dyn Limiter, tokens: u64) -> Result<(), Rejection> {
        let Some(caller) = &self.caller else {
            return Ok(());
        };
        if self.admitted || !caller.is_limited() {
            return Ok(());
        }
        match limiter.admit(&caller.parties(), tokens).await {
            Ok(admitted) => {
                self.admitted = true;
                self.permits = admitted.permits;
                self.standing = Some(admitted.standing);
                self.ticket = admitted.ticket;
                Ok(())
            }
            Err(Refused::Limited(limited)) => {
                metrics::RATE_LIMITED
                    .with_label_values(&[limited.kind.as_str(), limited.scope.as_str()])
                    .inc();
                self.standing = Some(limited.standing);
                Err(Rejection::RateLimited(limited))
            }
            Err(Refused::Unavailable) => Err(Rejection::LimitsUnavailable),
        }
    }

    /// Ends the admission: corrects the token estimate counted at admission by what the request really cost —
    /// nothing if it was never forwarded, else the usage the upstream reported, else the estimate plus the
    /// streamed text (about four bytes a token), else the estimate stands — and gives the permits back, both
    /// in one call to the limiter (one hand-off for a shared backend).
    pub fn end(
        &mut self,
        limiter: &dyn Limiter,
        forwarded: bool,
        reported_total: Option<u64>,
        streamed_bytes: Option<u64>,
    ) {
        let Some(caller) = &self.caller else {
            return;
        };
        let settlement = self.ticket.and_then(|ticket| {
            let counted = ticket.tokens;
            let actual = if !forwarded {
                Some(0)
            } else {
                reported_total.or_else(|| streamed_bytes.map(|b| counted + b.div_ceil(4)))
            };
            actual.map(|actual| {
                let delta =
                    actual.min(i64::MAX as u64) as i64 - counted.min(i64::MAX as u64) as i64;
                (ticket, delta)
            })
        });
        // Taken once: a second call settles nothing more and the permits are already back.
        self.ticket = None;
        let permits = std::mem::take(&mut self.permits);
        limiter.end(&caller.parties(), settlement, permits);
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

    #[tokio::test]
    async fn a_caller_past_its_request_quota_is_refused_with_its_standing() {
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
            .await
            .expect("first");
        let mut second = Admission::default();
        let refused = second
            .admit_caller(&a, &limiter, &h, false, SystemTime::now())
            .await;
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

    #[tokio::test]
    async fn origins_are_echoed_only_when_allowed() {
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
        .await
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
            .await
            .expect("served");
        assert!(other.cors_origin.is_none() && other.has_origin);
    }

    #[tokio::test]
    async fn token_quota_counts_the_estimate_and_settles_to_the_reported_usage() {
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
            .await
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
            .await
            .expect("80 of 100");
        assert_eq!(first.ticket.map(|t| t.tokens), Some(80));
        // The upstream reported 10: 70 go back.
        first.end(&limiter, true, Some(10), None);
        let mut second = Admission::default();
        second
            .admit_caller(&a, &limiter, &h, false, SystemTime::now())
            .await
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
            .await
            .expect("10 + 80 of 100");
        let mut third = Admission::default();
        third
            .admit_caller(&a, &limiter, &h, false, SystemTime::now())
            .await
            .expect("caller");
        let refused = third
            .admit_body(
                &a,
                &limiter,
                Route::ChatCompletions,
                &post,
                Some(&facts("m", 320)),
                Ok(()),
            )
            .await;
        assert!(matches!(refused, Err(Rejection::RateLimited(_))));
        // A request never forwarded gives its whole estimate back.
        second.end(&limiter, false, None, None);
        third
            .admit_body(
                &a,
                &limiter,
                Route::ChatCompletions,
                &post,
                Some(&facts("m", 320)),
                Ok(()),
            )
            .await
            .expect("after the refund");
    }

    #[tokio::test]
    async fn who_may_ask_comes_before_what_was_asked() {
        // A content refusal from the body still lets the scope speak first; other early errors stand.
        let a = auth(LimitSpec::default(), &[]);
        let limiter = LocalLimiter::new(Duration::from_secs(60));
        let mut adm = Admission::default();
        adm.admit_caller(&a, &limiter, &headers(&[]), false, SystemTime::now())
            .await
            .expect("anonymous");
        let blocked = Err(Rejection::PolicyBlocked {
            rule: "r".into(),
            description: "d".into(),
        });
        let r = adm
            .admit_body(
                &a,
                &limiter,
                Route::ChatCompletions,
                &Method::POST,
                Some(&facts("m", 4)),
                blocked,
            )
            .await;
        assert!(matches!(r, Err(Rejection::PolicyBlocked { .. })));
        let r = adm
            .admit_body(
                &a,
                &limiter,
                Route::ChatCompletions,
                &Method::POST,
                None,
                Err(Rejection::BodyTooLarge { limit: 1 }),
            )
            .await;
        assert!(matches!(r, Err(Rejection::BodyTooLarge { .. })));
    }
}
