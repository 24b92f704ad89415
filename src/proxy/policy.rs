//! Which policy a request is checked under, chosen once, after admission: its key's, else its tenant's, else
//! the `[[assign]]` selector its route and model match, else the gateway's default (the live set itself). The
//! chosen view replaces the request's rules snapshot, so every later step — the body, the answer held or
//! streamed, a realtime session, the event and the headers — uses it. Nothing here reads a client header to
//! choose: any caller could forge one.

use super::RequestCtx;
use crate::openai::Rejection;
use crate::rules::Chooser;

/// Whether the choice must wait for the model the body names (a selector chooses by model, and neither the
/// key nor its tenant names a policy, which would decide first).
pub fn needs_model(ctx: &RequestCtx) -> bool {
    let Some(catalog) = ctx.rules.as_deref().and_then(|r| r.catalog()) else {
        return false;
    };
    let (key, tenant) = named(ctx);
    key.or(tenant).is_none() && catalog.chooses_by_model()
}

/// Chooses the request's policy for `route` (its path) and `model`, and puts its view in `ctx.rules`. Done
/// once: a view carries no catalog, so a second call changes nothing. A key or tenant naming a policy the live
/// rules lack is refused (fail closed).
pub fn choose(ctx: &mut RequestCtx, route: &str, model: Option<&str>) -> Result<(), Rejection> {
    let Some(live) = ctx.rules.clone() else {
        return Err(Rejection::InspectionFailed);
    };
    let Some(catalog) = live.catalog() else {
        return Ok(());
    };
    let (key, tenant) = named(ctx);
    let chosen = catalog.choose(&Chooser {
        key,
        tenant,
        route,
        model,
    });
    match chosen {
        Ok(Some(view)) => ctx.rules = Some(view),
        Ok(None) => {}
        Err(_) => return Err(Rejection::PolicyUnavailable),
    }
    Ok(())
}

/// The policies the caller's key and its tenant name.
fn named(ctx: &RequestCtx) -> (Option<&str>, Option<&str>) {
    match ctx.admission.caller.as_ref().and_then(|c| c.key()) {
        Some(k) => (k.policy.as_deref(), k.tenant_policy.as_deref()),
        None => (None, None),
    }
}
