//! Answers: which ones a route's policy inspects, how each is handled once its header is in, and the verdict on
//! one held whole. Pure: the relay (`proxy/relay.rs`) reads the upstream and acts on what is decided here.
//!
//! How an answer is handled depends on the route (and the inspection settings) and on the answer's own bytes —
//! never on the size of the request, and never on the `Content-Type` or status the upstream chooses to send:
//! - **filter**: an answer whose first bytes are server-sent-event framing, on a route that may stream text,
//!   goes through the stream filter event by event;
//! - **hold**: any other answer on a route that carries text — JSON, plain text, an error page, an error of
//!   any status — is read whole (bounded by `limits.max_response_bytes`), inspected (JSON walked, text
//!   scanned), and only then given its status line; what cannot be inspected as text is withheld (502);
//! - **pass**: everything else (embeddings, moderations, files, audio, answers of unknown routes that are not
//!   streams) goes to the client as it arrives, unbuffered and uncapped.

use bytes::Bytes;

use super::request::MAX_REDACTION_ROUNDS;
use super::{
    decode_body, inspect_json, judge as judge_hits, ContentEncoding, Decision, InspectOptions,
    OpaquePolicy, RuleHit, Verdict,
};
use crate::config::{InspectConfig, UnknownRoutes};
use crate::openai::json::{self, Node};
use crate::openai::{Rejection, Route};
use crate::rules::{redact, Action, Direction, Mode, RuleSet};

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

    /// How an answer starting with `first` (at least [`SNIFF_BYTES`] past any leading whitespace, unless the
    /// answer is shorter) is handled.
    pub fn handling(self, first: &[u8]) -> Handling {
        if self.filter_sse && sniff(first) == Sniffed::Events {
            Handling::Filter
        } else if self.hold_json {
            Handling::Hold
        } else {
            Handling::Pass
        }
    }
}

/// How many bytes past leading whitespace decide what an answer is.
pub const SNIFF_BYTES: usize = 8;

/// What an answer's first bytes say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniffed {
    /// Server-sent events: the first line is a field (`data:`, `event:`, `id:`, `retry:`) or a comment (`:`).
    Events,
    /// A JSON object or array.
    Json,
    Other,
}

/// Reads what an answer is from its first bytes (a UTF-8 BOM and whitespace skipped).
pub fn sniff(first: &[u8]) -> Sniffed {
    let b = first.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(first);
    let b = &b[b.iter().take_while(|c| c.is_ascii_whitespace()).count()..];
    match b.first() {
        Some(b'{' | b'[') => Sniffed::Json,
        Some(b':') => Sniffed::Events,
        _ if [&b"data:"[..], b"event:", b"id:", b"retry:"]
            .iter()
            .any(|f| b.starts_with(f)) =>
        {
            Sniffed::Events
        }
        _ => Sniffed::Other,
    }
}

/// What goes to the client for a held answer that may pass.
#[derive(Debug)]
pub struct Released {
    pub body: Bytes,
    /// The upstream's `Content-Encoding` was undone (the body is sent plain).
    pub decoded: bool,
}

/// Judges a held answer (`raw`, as received, `encoding` its `Content-Encoding`) by what it is: a JSON body is
/// walked string by string, a text body scanned whole, anything else withheld. Returns what to send, or the
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
        // Not JSON (a text answer, an error page, or JSON that does not parse): scanned as text.
        Err(_) => match std::str::from_utf8(&decoded) {
            Ok(text) => judge_text(rules, text, opts.monitor),
            Err(_) => {
                let why = "not JSON and not UTF-8 text".to_string();
                return (Err(Rejection::UpstreamUninspectable(why)), None);
            }
        },
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
            body: Bytes::from(without_logprobs(body, opts.max_depth)),
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

/// The verdict on an answer that is text but not JSON: every match counts, enforced redactions rewrite it.
fn judge_text(rules: &RuleSet, text: &str, monitor: bool) -> Verdict {
    let enforced = |rule: usize| rules.rule(rule).mode == Mode::Enforce && !monitor;
    let redacts = |rule: usize| enforced(rule) && rules.rule(rule).action == Action::Redact;
    let mut counts: std::collections::BTreeMap<usize, u32> = std::collections::BTreeMap::new();
    // Redacted until nothing more matches, as a request's text is (`inspect::request`): a replacement can
    // expose a value its match hid. A text that still changes after the bound is replaced whole.
    let mut redacted: Option<String> = None;
    let mut matches = rules.scan(text, Direction::Response);
    for round in 0..=MAX_REDACTION_ROUNDS {
        for m in &matches {
            if round == 0 || redacts(m.rule) {
                *counts.entry(m.rule).or_default() += 1;
            }
        }
        let spans: Vec<_> = matches
            .iter()
            .filter(|m| redacts(m.rule))
            .map(|m| (m.range(), rules.rule(m.rule).replacement.as_str()))
            .collect();
        let Some(&(_, last)) = spans.last() else {
            break;
        };
        if round == MAX_REDACTION_ROUNDS {
            redacted = Some(last.to_string());
            break;
        }
        let next = redact(redacted.as_deref().unwrap_or(text), spans);
        matches = rules.scan(&next, Direction::Response);
        redacted = Some(next);
    }
    let hits: Vec<RuleHit> = counts
        .into_iter()
        .map(|(rule, count)| RuleHit {
            rule,
            count,
            enforced: enforced(rule),
        })
        .collect();
    let judged = judge_hits(rules, &hits);
    let rewritten = (judged.decision == Decision::Redact)
        .then(|| redacted.map(String::into_bytes))
        .flatten();
    Verdict {
        decision: judged.decision,
        would_be: judged.would_be,
        hits,
        blocked_by: judged.blocked_by,
        rewritten,
        opaque_inputs: 0,
        opaque_denied: false,
        facts: Default::default(),
    }
}

/// A redacted answer's `logprobs` would carry the redacted text again, token by token and byte by byte:
/// they are replaced by `null` in every choice — only those values' bytes change, the rest stays as written.
fn without_logprobs(body: &[u8], max_depth: usize) -> Vec<u8> {
    let Ok(root) = json::parse(body, max_depth) else {
        return body.to_vec();
    };
    let Some(Node::Array(choices)) = root.get("choices") else {
        return body.to_vec();
    };
    let edits: Vec<json::Edit> = choices
        .iter()
        .filter_map(|choice| match choice {
            Node::Object(members) => members
                .iter()
                .find(|(k, v)| k.value == "logprobs" && *v != Node::Null),
            _ => None,
        })
        .filter_map(|(k, _)| json::member_value(body, k.range.end, max_depth))
        .map(|range| (range, "null".to_string()))
        .collect();
    json::splice(body, &edits)
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
            upgrades: crate::config::Upgrades::Deny,
            body_timeout: std::time::Duration::from_secs(30),
        }
    }

    #[test]
    fn a_text_answer_is_redacted_until_nothing_more_matches() {
        // Regression: a text answer was redacted once, so a value a replacement exposed (a phone number that
        // stood glued to the email match's last letters) went to the client.
        let rules = crate::harness::shipped_rules();
        let opts = cfg(true, UnknownRoutes::Inspect).options;
        let text = b"mail jane.doe@example.coiE354 394 0044 please".to_vec();
        let (released, verdict) = judge(&rules, text, None, &opts, 1 << 20);
        let body = released.expect("released").body;
        assert_eq!(&body[..], b"mail [EMAIL][PHONE] please");
        let verdict = verdict.expect("verdict");
        let ids: Vec<&str> = verdict
            .hits
            .iter()
            .map(|h| rules.rule(h.rule).id.as_str())
            .collect();
        assert!(ids.contains(&"pii.phone"), "{ids:?}");
    }

    #[test]
    fn handling_depends_on_the_route_and_the_bytes_never_on_labels_or_size() {
        use Handling::*;
        let on = cfg(true, UnknownRoutes::Inspect);
        let sse = b"data: {\"choices\":[]}\n\n".as_slice();
        let json = b"  {\"id\": \"x\"}".as_slice();
        let html = b"<html><body>upstream error</body></html>".as_slice();
        // (route, first bytes, handling)
        let cases: [(Route, &[u8], Handling); 14] = [
            (Route::ChatCompletions, json, Hold),
            (Route::ChatCompletions, sse, Filter),
            (Route::ChatCompletions, b": ping\n\ndata: x", Filter),
            (
                Route::Responses,
                b"\xEF\xBB\xBFevent: response.created\n",
                Filter,
            ),
            (Route::Completions, html, Hold),
            (Route::Completions, b"", Hold),
            (Route::ChatCompletions, b"\x00\x01binary", Hold),
            (Route::Embeddings, json, Pass),
            (Route::Embeddings, sse, Pass),
            (Route::Moderations, json, Pass),
            (Route::OtherV1, sse, Filter),
            (Route::OtherV1, b"retry: 100\ndata: x\n\n", Filter),
            (Route::OtherV1, json, Pass),
            (Route::Models, json, Pass),
        ];
        for (route, first, want) in cases {
            let p = AnswerPolicy::for_route(route, &on);
            assert_eq!(
                p.handling(first),
                want,
                "{route:?} {:?}",
                String::from_utf8_lossy(first)
            );
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

    #[test]
    fn sniffing() {
        let cases: [(&[u8], Sniffed); 8] = [
            (b"{}", Sniffed::Json),
            (b"\r\n [1]", Sniffed::Json),
            (b"data: x", Sniffed::Events),
            (b"event: e", Sniffed::Events),
            (b"id: 1", Sniffed::Events),
            (b": comment", Sniffed::Events),
            (b"database", Sniffed::Other),
            (b"<!doctype html>", Sniffed::Other),
        ];
        for (b, want) in cases {
            assert_eq!(sniff(b), want, "{:?}", String::from_utf8_lossy(b));
        }
    }

    #[test]
    fn dropping_logprobs_changes_only_their_values() {
        let body = br#"{"choices":[{"index":0,"message":{"content":"Caf\u00e9 \/ [EMAIL]"},"logprobs" : {"content":[{"token":"x","bytes":[120]}]},"finish_reason":"stop"},{"index":1,"logprobs":null},{"index":2,"logprobs":[1, {"a":"}"}]}],"usage":{}}"#;
        let out = without_logprobs(body, 64);
        let want = br#"{"choices":[{"index":0,"message":{"content":"Caf\u00e9 \/ [EMAIL]"},"logprobs" : null,"finish_reason":"stop"},{"index":1,"logprobs":null},{"index":2,"logprobs":null}],"usage":{}}"#;
        assert_eq!(String::from_utf8_lossy(&out), String::from_utf8_lossy(want));
        // Not JSON, or no choices: unchanged.
        assert_eq!(without_logprobs(b"{\"x\":1", 64), b"{\"x\":1");
        assert_eq!(
            without_logprobs(b"{\"logprobs\":{}}", 64),
            b"{\"logprobs\":{}}"
        );
    }
}
