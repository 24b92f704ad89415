//! Browser origins (CORS): preflights answered from the allowed origins and never forwarded, and the headers
//! an allowed origin gets on every answer. The origin is always echoed concretely (never `*`), `null` is never
//! allowed, and no credentials flag is sent.

use http::{HeaderMap, Method};

use crate::auth::Auth;
use crate::metrics;
use crate::openai::Rejection;

/// Response headers a browser page may read (`Access-Control-Expose-Headers`).
pub const EXPOSED_HEADERS: &str = "x-request-id, x-promptgate-decision, x-promptgate-rules, x-promptgate-rules-version, retry-after, retry-after-ms, x-ratelimit-limit-requests, x-ratelimit-remaining-requests, x-ratelimit-reset-requests, x-ratelimit-limit-tokens, x-ratelimit-remaining-tokens, x-ratelimit-reset-tokens, x-ratelimit-limit, x-ratelimit-remaining, x-ratelimit-reset";

/// The answer to an allowed preflight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preflight {
    pub origin: String,
    /// The request headers the page may send: the ones it asked for when they look like header names.
    pub allow_headers: String,
}

impl Preflight {
    /// The headers of the `204` that answers it.
    pub fn headers(&self) -> [(http::HeaderName, String); 5] {
        use http::header::*;
        [
            (ACCESS_CONTROL_ALLOW_ORIGIN, self.origin.clone()),
            (
                ACCESS_CONTROL_ALLOW_METHODS,
                "GET, POST, PUT, PATCH, DELETE, OPTIONS".into(),
            ),
            (ACCESS_CONTROL_ALLOW_HEADERS, self.allow_headers.clone()),
            (ACCESS_CONTROL_MAX_AGE, "600".into()),
            (
                VARY,
                "Origin, Access-Control-Request-Method, Access-Control-Request-Headers".into(),
            ),
        ]
    }
}

/// A CORS preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`), answered from the allowed
/// origins (a preflight carries no key: any key allowing the origin will do). `None`: not a preflight.
pub fn preflight(
    method: &Method,
    headers: &HeaderMap,
    auth: &Auth,
) -> Option<Result<Preflight, Rejection>> {
    if method != Method::OPTIONS
        || !headers.contains_key(http::header::ACCESS_CONTROL_REQUEST_METHOD)
    {
        return None;
    }
    let origin = headers
        .get(http::header::ORIGIN)
        .and_then(|v| v.to_str().ok())?;
    if !auth.preflight_allows(origin) {
        metrics::AUTH_REFUSED.with_label_values(&["origin"]).inc();
        return Some(Err(Rejection::OriginNotAllowed));
    }
    let allow_headers = headers
        .get(http::header::ACCESS_CONTROL_REQUEST_HEADERS)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            v.len() <= 1024
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_, ".contains(&b))
        })
        .unwrap_or("authorization, content-type")
        .to_string();
    Some(Ok(Preflight {
        origin: origin.to_string(),
        allow_headers,
    }))
}

/// The CORS headers of an answer: the allowed origin echoed with the exposed headers, and `Vary: Origin`
/// whenever the request carried one.
pub fn answer_headers(
    allowed_origin: Option<&str>,
    has_origin: bool,
) -> impl Iterator<Item = (http::HeaderName, &str)> {
    use http::header::*;
    let allowed = allowed_origin.into_iter().flat_map(|o| {
        [
            (ACCESS_CONTROL_ALLOW_ORIGIN, o),
            (ACCESS_CONTROL_EXPOSE_HEADERS, EXPOSED_HEADERS),
        ]
    });
    allowed.chain(has_origin.then_some((VARY, "Origin")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Mode;
    use crate::limits::LimitSpec;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().expect("header"));
        }
        h
    }

    #[test]
    fn preflights_are_told_apart_and_answered_from_the_allowed_origins() {
        let auth = Auth::new(
            Mode::Passthrough,
            LimitSpec::default(),
            vec!["https://app.example.com".into()],
            [0; 32],
        );
        let ask = |origin: &str, asked: &str| {
            headers(&[
                ("origin", origin),
                ("access-control-request-method", "POST"),
                ("access-control-request-headers", asked),
            ])
        };
        // Not a preflight: another method, or no Access-Control-Request-Method.
        assert!(preflight(&Method::POST, &ask("https://app.example.com", "x"), &auth).is_none());
        assert!(preflight(
            &Method::OPTIONS,
            &headers(&[("origin", "https://app.example.com")]),
            &auth
        )
        .is_none());
        let ok = preflight(
            &Method::OPTIONS,
            &ask("https://app.example.com", "authorization, x-stainless-os"),
            &auth,
        )
        .expect("a preflight")
        .expect("allowed");
        assert_eq!(ok.origin, "https://app.example.com");
        assert_eq!(ok.allow_headers, "authorization, x-stainless-os");
        // Asked headers that do not look like names fall back to the two the SDKs need.
        let odd = preflight(
            &Method::OPTIONS,
            &ask("https://app.example.com", "x:y"),
            &auth,
        )
        .expect("a preflight")
        .expect("allowed");
        assert_eq!(odd.allow_headers, "authorization, content-type");
        let refused = preflight(
            &Method::OPTIONS,
            &ask("https://evil.example.com", "x"),
            &auth,
        )
        .expect("a preflight");
        assert!(matches!(refused, Err(Rejection::OriginNotAllowed)));
        let null = preflight(&Method::OPTIONS, &ask("null", "x"), &auth).expect("a preflight");
        assert!(null.is_err(), "null is never an allowed origin");
    }

    #[test]
    fn answers_echo_an_allowed_origin_and_vary_by_any() {
        let h: Vec<_> = answer_headers(Some("https://a.example"), true).collect();
        assert_eq!(h.len(), 3);
        assert_eq!(h[0].1, "https://a.example");
        let h: Vec<_> = answer_headers(None, true).collect();
        assert_eq!(h, vec![(http::header::VARY, "Origin")]);
        assert_eq!(answer_headers(None, false).count(), 0);
    }
}
