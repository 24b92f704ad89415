//! Answers: which ones a route's policy inspects, how each is handled once its header is in, and the verdict on
//! one held whole. Pure: the relay (`proxy/relay.rs`) reads the upstream and acts on what is decided here.
//!
//! How an answer is handled depends on the route (and the inspection settings) and on what the answer is —
//! never on the size of the request:
//! - **hold**: a successful JSON answer on a route that carries text is read whole (bounded by
//!   `limits.max_response_bytes`), inspected, and only then given a status line (200, 409 or 502);
//! - **filter**: a successful stream (`text/event-stream`) on a route that may stream text goes through the
//!   stream filter event by event;
//! - **pass**: everything else (embeddings, moderations, files, audio, upstream errors) goes to the client as
//!   it arrives, unbuffered and uncapped.

use bytes::Bytes;

use super::{decode_body, inspect_json, ContentEncoding, InspectOptions, OpaquePolicy, Verdict};
use crate::config::{InspectConfig, UnknownRoutes};
use crate::openai::{Rejection, Route};
use crate::rules::{Direction, RuleSet};

/// What the relay does with one answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handling {
    Hold,
    Filter,
    Pass,
}

/// Which answers of a route are inspected, known before the upstream answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AnswerPolicy {
    hold_json: bool,
    filter_sse: bool,
}

impl AnswerPolicy {
    /// The policy for `route` under `cfg`: routes that carry text have their JSON answers held and their
    /// streams filtered; unknown routes under `unknown_routes = "inspect"` have their streams filtered (a
    /// stored response can be streamed back from one); nothing else is inspected.
    pub fn for_route(route: Route, cfg: &InspectConfig) -> Self {
        if !cfg.enabled {
            return Self::default();
        }
        Self {
            hold_json: route.carries_text(),
            filter_sse: route.carries_text()
                || (route.streams() && cfg.unknown_routes == UnknownRoutes::Inspect),
        }
    }

    /// Whether some answer of this route is inspected (the gateway must then make the exchange itself).
    pub fn inspects(self) -> bool {
        self.hold_json || self.filter_sse
    }

    /// How an answer with this status and `Content-Type` is handled.
    pub fn handling(self, status: u16, content_type: Option<&str>) -> Handling {
        if !(200..300).contains(&status) {
            return Handling::Pass;
        }
        let ct = content_type.unwrap_or("").trim_start().to_ascii_lowercase();
        if self.filter_sse && ct.starts_with("text/event-stream") {
            Handling::Filter
        } else if self.hold_json && ct.contains("json") {
            Handling::Hold
        } else {
            Handling::Pass
        }
    }
}

/// What goes to the client for a held answer that may pass.
#[derive(Debug)]
pub struct Released {
    pub body: Bytes,
    /// The upstream's `Content-Encoding` was undone (the body is sent plain).
    pub decoded: bool,
}

/// Judges a held answer (`raw`, as received, `encoding` its `Content-Encoding`). Returns what to send, or the
/// rejection to answer with instead, and the verdict when inspection got that far.
pub fn judge(
    rules: &RuleSet,
    raw: Vec<u8>,
    encoding: Option<&str>,
    opts: &InspectOptions,
    max_bytes: usize,
) -> (Result<Released, Rejection>, Option<Verdict>) {
    let Some(encoding) = ContentEncoding::parse(encoding) else {
        return (Err(Rejection::UpstreamEncoding), None);
    };
    let decoded = match decode_body(encoding, &raw, max_bytes) {
        Ok(d) => d,
        Err(e) => return (Err(Rejection::UpstreamUninspectable(e.to_string())), None),
    };
    let opts = InspectOptions {
        opaque: OpaquePolicy::Pass,
        ..opts.clone()
    };
    let verdict = match inspect_json(rules, &decoded, &opts, Direction::Response) {
        Ok(v) => v,
        Err(e) => return (Err(Rejection::UpstreamUninspectable(e.to_string())), None),
    };
    let released = match (verdict.blocked_by, &verdict.rewritten) {
        (Some(rule), _) => {
            let r = rules.rule(rule);
            Err(Rejection::ResponseBlocked {
                rule: r.id.clone(),
                description: r.description.clone(),
            })
        }
        (None, Some(body)) => Ok(Released {
            body: Bytes::from(without_logprobs(body)),
            decoded: true,
        }),
        (None, None) if encoding != ContentEncoding::Identity => Ok(Released {
            body: Bytes::from(raw),
            decoded: false,
        }),
        (None, None) => Ok(Released {
            body: Bytes::from(decoded),
            decoded: false,
        }),
    };
    (released, Some(verdict))
}

/// A redacted answer's `logprobs` would carry the redacted text again, token by token and byte by byte:
/// they are dropped (`null`) from every choice.
fn without_logprobs(body: &[u8]) -> Vec<u8> {
    let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return body.to_vec();
    };
    let mut changed = false;
    for choice in v
        .get_mut("choices")
        .and_then(|c| c.as_array_mut())
        .into_iter()
        .flatten()
    {
        if let Some(lp) = choice.get_mut("logprobs").filter(|lp| !lp.is_null()) {
            *lp = serde_json::Value::Null;
            changed = true;
        }
    }
    if changed {
        serde_json::to_vec(&v).unwrap_or_else(|_| body.to_vec())
    } else {
        body.to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(enabled: bool, unknown: UnknownRoutes) -> InspectConfig {
        InspectConfig {
            enabled,
            unknown_routes: unknown,
            options: InspectOptions {
                max_depth: 64,
                opaque: OpaquePolicy::Pass,
                monitor: false,
            },
            max_body_bytes: 1 << 20,
            max_decoded_body_bytes: 1 << 20,
            max_response_bytes: 1 << 20,
            max_stream_hold: 8192,
            fail_open: false,
        }
    }

    #[test]
    fn handling_depends_on_route_and_answer_never_on_size() {
        use Handling::*;
        let on = cfg(true, UnknownRoutes::Inspect);
        let sse = Some("text/event-stream; charset=utf-8");
        let json = Some("application/json");
        // (route, status, content type, handling)
        let cases = [
            (Route::ChatCompletions, 200, json, Hold),
            (Route::ChatCompletions, 200, sse, Filter),
            (Route::Responses, 200, Some(" Text/Event-Stream"), Filter),
            (
                Route::Completions,
                200,
                Some("application/octet-stream"),
                Pass,
            ),
            (Route::ChatCompletions, 500, json, Pass),
            (Route::Embeddings, 200, json, Pass),
            (Route::Embeddings, 200, sse, Pass),
            (Route::Moderations, 200, json, Pass),
            (Route::OtherV1, 200, sse, Filter),
            (Route::OtherV1, 200, json, Pass),
            (Route::Models, 200, json, Pass),
        ];
        for (route, status, ct, want) in cases {
            let p = AnswerPolicy::for_route(route, &on);
            assert_eq!(p.handling(status, ct), want, "{route:?} {status} {ct:?}");
        }
        assert!(!AnswerPolicy::for_route(
            Route::ChatCompletions,
            &cfg(false, UnknownRoutes::Inspect)
        )
        .inspects());
        assert!(
            !AnswerPolicy::for_route(Route::OtherV1, &cfg(true, UnknownRoutes::Pass)).inspects()
        );
        assert!(!AnswerPolicy::for_route(Route::Embeddings, &on).inspects());
        assert!(AnswerPolicy::for_route(Route::OtherV1, &on).inspects());
    }
}
