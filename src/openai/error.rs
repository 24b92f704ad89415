//! The gateway's own answers, in the OpenAI error format: every reason the gateway refuses a request or gives
//! up on an answer ([`Rejection`]), with its HTTP status, error `type`, `code`, message and retry headers, rendered
//! as a JSON body (`{"error":{"message","type","param","code"}}`) or, mid-stream, as the SSE error event the
//! OpenAI SDKs raise as `APIError`. This is the one place status codes and error bodies are decided; `proxy`
//! only writes what is rendered here. Pure: no sockets, no Pingora.

use bytes::Bytes;
use serde::Serialize;

/// A response the gateway itself produces instead of (or in place of) the upstream's.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Rejection {
    #[error("no route for {method} {path}")]
    NotFound { method: String, path: String },
    #[error("the upstream could not be reached")]
    UpstreamUnreachable,
    #[error("the upstream did not answer in time")]
    UpstreamTimeout,
    #[error("the upstream failed while answering")]
    UpstreamFailed,
    #[error("the request could not be read")]
    BadRequest,
    #[error("internal gateway error")]
    Internal,
    #[error("Request blocked by policy '{rule}': {description}")]
    PolicyBlocked { rule: String, description: String },
    #[error("Request blocked by policy 'inspect.opaque_inputs': the request carries inputs that cannot be inspected as text (token ids, images, audio or files)")]
    OpaqueInputDenied,
    #[error("This route is not allowed through the gateway (inspect.unknown_routes = \"deny\")")]
    RouteDenied,
    #[error("The request body is larger than the gateway accepts ({limit} bytes)")]
    BodyTooLarge { limit: usize },
    #[error("Content-Encoding {0:?} is not supported: use gzip, deflate, br, zstd or none")]
    UnsupportedEncoding(String),
    #[error("The request body could not be read: {0}")]
    InvalidBody(String),
    #[error("The request could not be inspected; it was not forwarded")]
    InspectionFailed,
    #[error("The upstream answered with a Content-Encoding the gateway cannot inspect")]
    UpstreamEncoding,
    #[error("Response blocked by policy '{rule}': {description}")]
    ResponseBlocked { rule: String, description: String },
    #[error("The upstream answer is larger than the gateway inspects ({limit} bytes)")]
    UpstreamTooLarge { limit: usize },
    #[error("The upstream answer could not be inspected ({0}); it was withheld")]
    UpstreamUninspectable(String),
    #[error("The response stream could not be inspected ({0}); it was ended")]
    StreamUninspectable(String),
    #[error("Invalid or missing API key: present a key issued for this gateway (Authorization: Bearer …)")]
    Unauthenticated,
    #[error("This key may not use the model '{0}'")]
    ModelNotAllowed(String),
    #[error("This key may only use some models: the request must name one")]
    ModelRequired,
    #[error("Requests from this origin are not allowed for this key")]
    OriginNotAllowed,
    #[error("Rate limit reached")]
    RateLimited(crate::limits::Limited),
    #[error("The gateway cannot record decisions right now (audit sink failing); the request was not forwarded")]
    AuditUnavailable,
    #[error("The gateway cannot check rate limits right now (limits backend unavailable); the request was not forwarded")]
    LimitsUnavailable,
    /// The caller's key or tenant names a policy the live rules do not have (fail closed).
    #[error("The policy assigned to this caller is not in the gateway's live rules; the request was not forwarded")]
    PolicyUnavailable,
    #[error("The request head did not arrive in time")]
    HeaderTimeout,
    #[error("The request body did not arrive in time")]
    BodyTimeout,
    #[error("The request's header fields are too large or too many")]
    HeadersTooLarge,
    #[error("The request is malformed: {0}")]
    MalformedRequest(String),
    #[error("The gateway has too many open connections; try again shortly")]
    TooManyConnections,
    /// No configured upstream serves the model (or, without a model, the path) of the request.
    #[error("The model '{0}' does not exist or is not served through this gateway")]
    ModelNotFound(String),
    /// Every endpoint of the upstream the request was routed to is out (failed checks or ejected).
    #[error("No healthy endpoint of upstream '{0}' is available; try again shortly")]
    NoHealthyUpstream(String),
    #[error("Connection upgrades (WebSocket) are not allowed through the gateway: what flows through an upgraded connection cannot be inspected (inspect.websocket = \"deny\")")]
    UpgradeDenied,
}

/// Everything needed to write one error response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorResponse {
    pub status: u16,
    pub body: Bytes,
    /// `x-should-retry`, which the official OpenAI SDKs obey before their own status-based retry rules.
    pub should_retry: Option<bool>,
    /// `retry-after` / `retry-after-ms`, which the SDKs wait before retrying.
    pub retry_after: Option<std::time::Duration>,
    /// The error `code` (for the decision event).
    pub code: &'static str,
}

#[derive(Serialize)]
struct Envelope<'a> {
    error: Body<'a>,
}

#[derive(Serialize)]
struct Body<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: &'a str,
    /// The rule (or setting) that refused the request, for policy errors.
    #[serde(skip_serializing_if = "Option::is_none")]
    policy: Option<&'a str>,
}

impl Rejection {
    /// Status, OpenAI error `type` and `code` for this rejection.
    fn parts(&self) -> (u16, &'static str, &'static str) {
        match self {
            Rejection::NotFound { .. } => (404, "invalid_request_error", "not_found"),
            Rejection::UpstreamUnreachable => (502, "upstream_error", "upstream_unreachable"),
            Rejection::UpstreamFailed => (502, "upstream_error", "upstream_failed"),
            Rejection::UpstreamTimeout => (504, "upstream_error", "upstream_timeout"),
            Rejection::BadRequest => (400, "invalid_request_error", "bad_request"),
            Rejection::Internal => (500, "server_error", "internal_error"),
            Rejection::PolicyBlocked { .. } => (409, "policy_violation", "policy_blocked"),
            Rejection::OpaqueInputDenied => (409, "policy_violation", "opaque_input_denied"),
            Rejection::RouteDenied => (403, "permission_error", "route_denied"),
            Rejection::BodyTooLarge { .. } => (413, "invalid_request_error", "body_too_large"),
            Rejection::UnsupportedEncoding(_) => {
                (415, "invalid_request_error", "unsupported_encoding")
            }
            Rejection::InvalidBody(_) => (400, "invalid_request_error", "invalid_body"),
            Rejection::InspectionFailed => (503, "server_error", "inspection_failed"),
            Rejection::UpstreamEncoding => (502, "upstream_error", "upstream_encoding"),
            Rejection::ResponseBlocked { .. } => (409, "policy_violation", "policy_blocked"),
            Rejection::UpstreamTooLarge { .. } => (502, "upstream_error", "upstream_too_large"),
            Rejection::UpstreamUninspectable(_) | Rejection::StreamUninspectable(_) => {
                (502, "upstream_error", "upstream_uninspectable")
            }
            Rejection::Unauthenticated => (401, "invalid_request_error", "invalid_api_key"),
            Rejection::ModelNotAllowed(_) => (403, "permission_error", "model_not_allowed"),
            Rejection::ModelRequired => (403, "permission_error", "model_required"),
            Rejection::OriginNotAllowed => (403, "permission_error", "origin_not_allowed"),
            Rejection::RateLimited(_) => (429, "rate_limit_exceeded", "rate_limit_exceeded"),
            Rejection::AuditUnavailable => (503, "server_error", "audit_unavailable"),
            Rejection::LimitsUnavailable => (503, "server_error", "limits_unavailable"),
            Rejection::PolicyUnavailable => (503, "server_error", "policy_unavailable"),
            Rejection::HeaderTimeout | Rejection::BodyTimeout => {
                (408, "invalid_request_error", "request_timeout")
            }
            Rejection::HeadersTooLarge => (
                431,
                "invalid_request_error",
                "request_header_fields_too_large",
            ),
            Rejection::MalformedRequest(_) => (400, "invalid_request_error", "malformed_request"),
            Rejection::TooManyConnections => (503, "server_error", "too_many_connections"),
            Rejection::UpgradeDenied => (403, "permission_error", "upgrade_not_allowed"),
            Rejection::ModelNotFound(_) => (404, "invalid_request_error", "model_not_found"),
            Rejection::NoHealthyUpstream(_) => (503, "server_error", "no_healthy_upstream"),
        }
    }

    pub fn status(&self) -> u16 {
        self.parts().0
    }

    /// Renders the OpenAI-shaped error: `{"error":{"message","type","param","code"}}`.
    pub fn render(&self) -> ErrorResponse {
        let (status, kind, code) = self.parts();
        let message = match self {
            Rejection::NotFound { method, path } => format!(
                "Unknown route {method} {}: promptgate forwards OpenAI API paths under /v1",
                sanitize_path(path)
            ),
            Rejection::ModelNotAllowed(model) => {
                format!("This key may not use the model '{}'", sanitize_path(model))
            }
            Rejection::ModelNotFound(model) if model.is_empty() => {
                "No upstream serves this request: it names no model and no upstream is the default"
                    .to_string()
            }
            Rejection::ModelNotFound(model) => format!(
                "The model '{}' does not exist or is not served through this gateway",
                sanitize_path(model)
            ),
            Rejection::RateLimited(l) => {
                let what = match l.kind {
                    crate::limits::LimitKind::Requests => "requests per minute",
                    crate::limits::LimitKind::Tokens => "tokens per minute",
                    crate::limits::LimitKind::Concurrency => "concurrent requests",
                };
                format!(
                    "Rate limit reached for {what} on this {}: limit {}. Try again in {}.",
                    l.scope.as_str(),
                    l.limit,
                    crate::limits::format_reset(l.retry_after)
                )
            }
            other => other.to_string(),
        };
        let body = serde_json::to_vec(&Envelope {
            error: Body {
                message: &message,
                kind,
                param: None,
                code,
                policy: match self {
                    Rejection::PolicyBlocked { rule, .. } | Rejection::ResponseBlocked { rule, .. } => {
                        Some(rule.as_str())
                    }
                    Rejection::OpaqueInputDenied => Some("inspect.opaque_inputs"),
                    Rejection::UpgradeDenied => Some("inspect.websocket"),
                    _ => None,
                },
            },
        })
        .map(Bytes::from)
        // Serialising plain strings cannot fail; keep a valid body even if it ever did.
        .unwrap_or_else(|_| Bytes::from_static(br#"{"error":{"message":"internal gateway error","type":"server_error","param":null,"code":"internal_error"}}"#));
        ErrorResponse {
            status,
            body,
            should_retry: match self {
                // The official OpenAI SDKs retry 409 (and 5xx) unless told not to; a policy decision or a bad
                // request will not change on retry.
                Rejection::NotFound { .. }
                | Rejection::BadRequest
                | Rejection::PolicyBlocked { .. }
                | Rejection::ResponseBlocked { .. }
                | Rejection::OpaqueInputDenied
                | Rejection::RouteDenied
                | Rejection::BodyTooLarge { .. }
                | Rejection::UnsupportedEncoding(_)
                | Rejection::InvalidBody(_)
                | Rejection::InspectionFailed
                | Rejection::Unauthenticated
                | Rejection::ModelNotAllowed(_)
                | Rejection::ModelRequired
                | Rejection::OriginNotAllowed
                | Rejection::HeadersTooLarge
                | Rejection::MalformedRequest(_)
                | Rejection::ModelNotFound(_)
                // Until an operator fixes the keys file or the rules, a retry meets the same refusal.
                | Rejection::PolicyUnavailable
                | Rejection::UpgradeDenied => Some(false),
                // The shared limits come back on their own: a retry after a moment will likely be admitted.
                Rejection::LimitsUnavailable => Some(true),
                _ => None,
            },
            retry_after: match self {
                Rejection::RateLimited(l) => Some(l.retry_after),
                Rejection::TooManyConnections
                | Rejection::LimitsUnavailable
                | Rejection::NoHealthyUpstream(_) => Some(std::time::Duration::from_secs(1)),
                _ => None,
            },
            code,
        }
    }

    /// The `kind` label of `promptgate_upstream_errors_total`, for upstream failures.
    pub fn upstream_kind(&self) -> Option<&'static str> {
        match self {
            Rejection::UpstreamUnreachable => Some("connect"),
            Rejection::UpstreamTimeout => Some("timeout"),
            Rejection::UpstreamFailed => Some("other"),
            _ => None,
        }
    }
}

impl ErrorResponse {
    /// The same error as a server-sent event (`data: {"error":…}` and a blank line, in the stream's own line
    /// ending): how a stream that already answered 200 ends on a block or a failure. The OpenAI SDKs raise it
    /// as `APIError`.
    pub fn sse_event(&self, eol: &str) -> Bytes {
        let mut out = Vec::with_capacity(self.body.len() + 6 + 2 * eol.len());
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(&self.body);
        out.extend_from_slice(eol.as_bytes());
        out.extend_from_slice(eol.as_bytes());
        Bytes::from(out)
    }
}

/// Paths and model names are client input: keep error messages short and printable.
fn sanitize_path(path: &str) -> String {
    let mut s: String = path
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(128)
        .collect();
    if path.len() > 128 {
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_openai_shaped() {
        let cases = [
            (Rejection::UpstreamUnreachable, 502, "upstream_unreachable"),
            (Rejection::UpstreamTimeout, 504, "upstream_timeout"),
            (
                Rejection::NotFound {
                    method: "GET".into(),
                    path: "/x".into(),
                },
                404,
                "not_found",
            ),
            (Rejection::Internal, 500, "internal_error"),
            (
                Rejection::StreamUninspectable("event too large".into()),
                502,
                "upstream_uninspectable",
            ),
        ];
        for (r, status, code) in cases {
            let resp = r.render();
            assert_eq!(resp.status, status);
            let v: serde_json::Value = serde_json::from_slice(&resp.body).expect("json");
            assert_eq!(v["error"]["code"], code);
            assert!(v["error"]["message"].is_string());
            assert!(v["error"]["type"].is_string());
            assert!(v["error"]["param"].is_null());
        }
    }

    #[test]
    fn the_sse_form_is_one_event_with_the_same_body() {
        let r = Rejection::ResponseBlocked {
            rule: "secret.x".into(),
            description: "a secret".into(),
        }
        .render();
        for eol in ["\n", "\r\n"] {
            let ev = r.sse_event(eol);
            let text = std::str::from_utf8(&ev).expect("utf8");
            let data = text
                .strip_prefix("data: ")
                .and_then(|t| t.strip_suffix(&format!("{eol}{eol}")))
                .expect("one event");
            assert_eq!(data.as_bytes(), &r.body[..]);
            let v: serde_json::Value = serde_json::from_str(data).expect("json");
            assert_eq!(v["error"]["code"], "policy_blocked");
            assert_eq!(v["error"]["policy"], "secret.x");
        }
    }
}
