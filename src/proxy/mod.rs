//! The only module that knows Pingora's proxy: the [`ProxyHttp`] implementation whose hooks are glue around
//! pure logic elsewhere, the per-request context, the error renderer and the upstream peer.
//!
//! Data flow of one request: classify the route and settle the request id (`early_request_filter`) → refuse
//! what is not ours (`request_filter`) → pick the peer (`upstream_peer`) → set `Host`, the base path and the
//! request id (`upstream_request_filter`) → stream the response back, request id added (`response_filter`) →
//! metrics (`logging`) → context dropped.

mod ctx;
mod error;
mod upstream;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};

pub use ctx::{RequestCtx, IN_FLIGHT};
pub use error::{ErrorResponse, Rejection};
pub use upstream::Upstream;

use std::sync::Arc;

use crate::metrics;
use crate::openai::Route;
use crate::rules::RuleStore;

const REQUEST_ID: &str = "x-request-id";
const RULES_VERSION: &str = "x-promptgate-rules-version";

/// The gateway's proxy logic.
pub struct Gateway {
    upstream: Upstream,
    rules: Arc<RuleStore>,
}

impl Gateway {
    pub fn new(upstream: Upstream, rules: Arc<RuleStore>) -> Self {
        Self { upstream, rules }
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new()
    }

    async fn early_request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // One snapshot per request: a reload during the request does not change what it is checked against.
        ctx.rules = Some(self.rules.snapshot());
        let req = session.req_header();
        ctx.route = Route::classify(req.uri.path());
        ctx.request_id = match req.headers.get(REQUEST_ID) {
            Some(v) if ctx::valid_request_id(v.as_bytes()) => {
                String::from_utf8_lossy(v.as_bytes()).into_owned()
            }
            _ => ctx::new_request_id(),
        };
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        if !ctx.route.is_forwarded() {
            let req = session.req_header();
            let rejection = Rejection::NotFound {
                method: req.method.to_string(),
                path: req.uri.path().to_string(),
            };
            write_error(session, ctx, &rejection.render()).await?;
            return Ok(true);
        }
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        Ok(self.upstream.peer())
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        upstream_request.insert_header(http::header::HOST, self.upstream.authority())?;
        upstream_request.insert_header(REQUEST_ID, ctx.request_id.as_str())?;
        if let Some(uri) = self.upstream.rewrite_uri(&upstream_request.uri) {
            upstream_request.set_uri(uri);
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        upstream_response.insert_header(REQUEST_ID, ctx.request_id.as_str())?;
        if let Some(rules) = &ctx.rules {
            upstream_response.insert_header(RULES_VERSION, rules.version())?;
        }
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let Some(rejection) = Rejection::from_error(e) else {
            // The client is gone: nothing to write.
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        };
        if let Some(kind) = rejection.upstream_kind() {
            metrics::UPSTREAM_ERRORS.with_label_values(&[kind]).inc();
        }
        let resp = rejection.render();
        if session.response_written().is_none() {
            if let Err(write_err) = write_error(session, ctx, &resp).await {
                tracing::debug!("could not write the error response: {write_err}");
            }
        }
        FailToProxy {
            error_code: resp.status,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .or_else(|| e.and_then(Rejection::from_error).map(|r| r.status()))
            .unwrap_or(0);
        let route = ctx.route.label();
        metrics::REQUESTS
            .with_label_values(&[route, status_label(status)])
            .inc();
        metrics::REQUEST_DURATION
            .with_label_values(&[route])
            .observe(ctx.started.elapsed().as_secs_f64());
    }
}

/// Writes a gateway-made error response with the headers every response carries.
async fn write_error(session: &mut Session, ctx: &RequestCtx, resp: &ErrorResponse) -> Result<()> {
    let mut header = ResponseHeader::build(resp.status, Some(4))?;
    header.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    header.insert_header(http::header::CONTENT_LENGTH, resp.body.len().to_string())?;
    header.insert_header(REQUEST_ID, ctx.request_id.as_str())?;
    if let Some(retry) = resp.should_retry {
        header.insert_header("x-should-retry", if retry { "true" } else { "false" })?;
    }
    session
        .write_response_header(Box::new(header), false)
        .await?;
    session
        .write_response_body(Some(Bytes::clone(&resp.body)), true)
        .await
}

/// Status codes as static labels: a closed set, whatever the upstream sends.
fn status_label(status: u16) -> &'static str {
    const KNOWN: [(u16, &str); 15] = [
        (200, "200"),
        (201, "201"),
        (204, "204"),
        (400, "400"),
        (401, "401"),
        (403, "403"),
        (404, "404"),
        (409, "409"),
        (413, "413"),
        (415, "415"),
        (429, "429"),
        (500, "500"),
        (502, "502"),
        (503, "503"),
        (504, "504"),
    ];
    if let Some((_, label)) = KNOWN.iter().find(|(code, _)| *code == status) {
        return label;
    }
    match status / 100 {
        0 => "none",
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        _ => "5xx",
    }
}
