//! The write-ahead intent (`audit.durability = "write_ahead"`): made durable after the request's path is
//! decided and before anything goes upstream — for a relayed or proxied request and for a realtime session's
//! upstream handshake. A request that is answered by the gateway itself (refused, blocked) needs none: it
//! never reaches the upstream, and its decision event records it.

use std::time::SystemTime;

use super::{finish, Gateway, RequestCtx};
use crate::audit::Intent;

/// Makes the request's intent durable; `false`: it could not be, and the request must be refused (503).
/// Always `true` when the audit is not in `write_ahead`.
/// `route` and `model`: as the decision event will name them (a realtime session's are not in `ctx`).
pub async fn make_durable(
    gw: &Gateway,
    ctx: &RequestCtx,
    method: &http::Method,
    route: &'static str,
    model: Option<&str>,
) -> bool {
    if !gw.audit.write_ahead() {
        return true;
    }
    let Some(rules) = ctx.rules.clone() else {
        return false;
    };
    let caller = ctx.admission.caller.as_ref();
    let intent = Intent {
        at: SystemTime::now(),
        request_id: ctx.request_id.clone(),
        key_id: caller.map(|c| c.id().to_string()),
        tenant: caller.and_then(|c| c.tenant()).map(str::to_string),
        route,
        method: finish::method_label(method),
        model: model
            .or_else(|| ctx.body.as_ref().and_then(|b| b.facts.model.as_deref()))
            .map(str::to_string),
        decision: ctx.outcome.request.decision.as_str(),
        rules,
        hits: ctx.outcome.request.hits.iter().map(|h| h.rule).collect(),
        upstream: ctx
            .pool
            .and_then(|i| gw.upstreams.pools.get(i))
            .map(|p| p.name.clone()),
    };
    let durable = gw.audit.intend(Box::new(intent)).await;
    if !durable {
        // Per request, so not above debug: the writer logs the disk's failure once, and the request's decision
        // event records the 503 `audit_unavailable`.
        tracing::debug!(
            request_id = %ctx.request_id,
            "audit: the request's intent could not be made durable (durability = \"write_ahead\"); refusing it"
        );
    }
    durable
}
