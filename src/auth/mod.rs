//! Who is calling. Two modes:
//!
//! - **passthrough** (default): the client's own provider credential (`Authorization: Bearer …` or `api-key`)
//!   goes upstream untouched; the caller is named by a keyed hash of it (`h:` and 16 hex digits), never the
//!   credential itself, so limits and decisions can tell callers apart. No credential: the caller
//!   `anonymous`.
//! - **gateway_keys**: the client presents a gateway key listed in the keys file (`keys.rs`); the gateway
//!   checks it, its scope (models, origins) and its limits, and injects the provider key the entry names.
//!   The client's credential never goes upstream. Missing, unknown, disabled and expired keys all get the
//!   same 401.
//!
//! This module says who a caller is and what its key allows; `admission` applies it to a request (with the
//! limits and CORS).

pub mod keys;

use std::sync::Arc;
use std::time::SystemTime;

use hmac::{Hmac, Mac};
use http::HeaderMap;
use sha2::Sha256;

pub use keys::{GatewayKey, KeyStore, KeysFile};

use crate::limits::{LimitSpec, Parties, Scope, Subject};

/// How callers are identified.
pub enum Mode {
    Passthrough,
    GatewayKeys(Arc<KeyStore>),
}

/// Identity settings and the live keys.
pub struct Auth {
    mode: Mode,
    /// Quotas of each passthrough caller.
    caller_limits: LimitSpec,
    /// Origins browsers may call from in passthrough mode.
    origins: Vec<String>,
    /// The key of the caller hash (passthrough).
    hash_key: [u8; 32],
}

/// Why a request is refused before it is forwarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Missing, unknown, disabled or expired key: one answer for all.
    Unauthenticated,
    ModelNotAllowed(String),
    ModelRequired,
    OriginNotAllowed,
}

impl Refusal {
    /// The `reason` label of `promptgate_auth_refused_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Unauthenticated => "unauthenticated",
            Refusal::ModelNotAllowed(_) | Refusal::ModelRequired => "model",
            Refusal::OriginNotAllowed => "origin",
        }
    }
}

/// The caller of one request.
#[derive(Debug, Clone)]
pub struct Caller {
    who: Who,
    /// The tenant's quotas, where the keys file sets them.
    tenant_limits: Option<LimitSpec>,
}

/// A gateway key, or a passthrough caller (its id and counter name made per request).
#[derive(Debug, Clone)]
enum Who {
    Key(Arc<GatewayKey>),
    Passthrough {
        id: String,
        counter: String,
        limits: LimitSpec,
    },
}

impl Caller {
    /// The key id, `h:<hash prefix>` of a passthrough credential, or `anonymous`.
    pub fn id(&self) -> &str {
        match &self.who {
            Who::Key(k) => &k.id,
            Who::Passthrough { id, .. } => id,
        }
    }

    pub fn tenant(&self) -> Option<&str> {
        match &self.who {
            Who::Key(k) => Some(&k.tenant),
            Who::Passthrough { .. } => None,
        }
    }

    /// The gateway key (gateway_keys mode).
    pub fn key(&self) -> Option<&Arc<GatewayKey>> {
        match &self.who {
            Who::Key(k) => Some(k),
            Who::Passthrough { .. } => None,
        }
    }

    /// Everyone who counts this request against a quota: the caller, then its tenant.
    pub fn subjects(&self) -> Vec<Subject<'_>> {
        let mut out = Vec::with_capacity(2);
        let (name, limits, tenant_name) = match &self.who {
            Who::Key(k) => (k.counter.as_str(), &k.limits, k.tenant_counter.as_str()),
            Who::Passthrough {
                counter, limits, ..
            } => (counter.as_str(), limits, ""),
        };
        if !limits.is_empty() {
            out.push(Subject {
                name,
                scope: Scope::Key,
                spec: limits,
            });
        }
        if let Some(spec) = &self.tenant_limits {
            out.push(Subject {
                name: tenant_name,
                scope: Scope::Tenant,
                spec,
            });
        }
        out
    }

    /// The subjects and the group that keeps their counters together: the tenant's counter name for a gateway
    /// key (every key has a tenant, whether or not the tenant has quotas, so a key's counters do not move when
    /// its tenant gains some), else the caller's.
    pub fn parties(&self) -> Parties<'_> {
        let group = match &self.who {
            Who::Key(k) => k.tenant_counter.as_str(),
            Who::Passthrough { counter, .. } => counter.as_str(),
        };
        Parties {
            subjects: self.subjects(),
            group,
        }
    }

    /// Whether any quota applies (the rate-limit headers are sent only then).
    pub fn is_limited(&self) -> bool {
        let own = match &self.who {
            Who::Key(k) => &k.limits,
            Who::Passthrough { limits, .. } => limits,
        };
        !own.is_empty() || self.tenant_limits.is_some()
    }

    /// Whether a token quota applies (the caller's own or its tenant's): the prompt must then be counted.
    pub fn has_token_quota(&self) -> bool {
        let own = match &self.who {
            Who::Key(k) => &k.limits,
            Who::Passthrough { limits, .. } => limits,
        };
        own.tokens_per_minute.is_some()
            || self
                .tenant_limits
                .is_some_and(|t| t.tokens_per_minute.is_some())
    }

    /// Rules only record for this caller.
    pub fn monitor(&self) -> bool {
        self.key().is_some_and(|k| k.monitor)
    }
}

impl Auth {
    pub fn new(
        mode: Mode,
        caller_limits: LimitSpec,
        origins: Vec<String>,
        hash_key: [u8; 32],
    ) -> Self {
        Self {
            mode,
            caller_limits,
            origins,
            hash_key,
        }
    }

    pub fn keys(&self) -> Option<&Arc<KeyStore>> {
        match &self.mode {
            Mode::GatewayKeys(store) => Some(store),
            Mode::Passthrough => None,
        }
    }

    /// Identifies the caller of a request from its headers.
    pub fn identify(&self, headers: &HeaderMap, now: SystemTime) -> Result<Caller, Refusal> {
        let credential = credential(headers);
        match &self.mode {
            Mode::Passthrough => {
                let id = match credential {
                    Some(c) => {
                        let mut mac = Hmac::<Sha256>::new_from_slice(&self.hash_key)
                            .map_err(|_| Refusal::Unauthenticated)?;
                        mac.update(c);
                        let digest = mac.finalize().into_bytes();
                        format!("h:{}", hex::encode(&digest[..8]))
                    }
                    None => "anonymous".to_string(),
                };
                Ok(Caller {
                    who: Who::Passthrough {
                        counter: format!("c:{id}"),
                        id,
                        limits: self.caller_limits,
                    },
                    tenant_limits: None,
                })
            }
            Mode::GatewayKeys(store) => {
                let set = store.peek();
                let key = credential
                    .and_then(|c| set.find(c))
                    .filter(|k| k.usable_at(now))
                    .ok_or(Refusal::Unauthenticated)?;
                let tenant_limits = set
                    .tenant_limits(&key.tenant)
                    .filter(|l| !l.is_empty())
                    .copied();
                Ok(Caller {
                    tenant_limits,
                    who: Who::Key(key.clone()),
                })
            }
        }
    }

    /// Whether a browser request from `origin` may be answered for this caller.
    pub fn allows_origin(&self, caller: &Caller, origin: &str) -> bool {
        match caller.key() {
            Some(k) => k.allows_origin(origin),
            None => keys::origin_allowed(&self.origins, origin),
        }
    }

    /// Whether a preflight from `origin` is answered (it carries no key: any key allowing the origin will do).
    pub fn preflight_allows(&self, origin: &str) -> bool {
        match &self.mode {
            Mode::Passthrough => keys::origin_allowed(&self.origins, origin),
            Mode::GatewayKeys(store) => store.peek().any_allows_origin(origin),
        }
    }

    /// Checks the model a request names against the caller's scope. `required`: the route always names one.
    pub fn check_model(
        &self,
        caller: &Caller,
        model: Option<&str>,
        required: bool,
    ) -> Result<(), Refusal> {
        let Some(key) = caller.key() else {
            return Ok(());
        };
        if key.allowed_models.is_empty() {
            return Ok(());
        }
        match model {
            Some(m) if key.allows_model(m) => Ok(()),
            Some(m) => Err(Refusal::ModelNotAllowed(m.chars().take(64).collect())),
            None if required => Err(Refusal::ModelRequired),
            None => Ok(()),
        }
    }

    /// Whether the model of the body must be known before forwarding (some key restricts models).
    pub fn scopes_models(&self, caller: &Caller) -> bool {
        caller.key().is_some_and(|k| !k.allowed_models.is_empty())
    }
}

/// The credential a client presents: `Authorization: Bearer X` or `api-key: X`.
fn credential(headers: &HeaderMap) -> Option<&[u8]> {
    if let Some(v) = headers.get(http::header::AUTHORIZATION) {
        let v = v.as_bytes();
        if v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer ") {
            let token = v[7..].trim_ascii();
            if !token.is_empty() {
                return Some(token);
            }
        }
    }
    headers
        .get("api-key")
        .map(|v| v.as_bytes().trim_ascii())
        .filter(|v| !v.is_empty())
}

/// The caller-hash key: from the environment variable when set (stable across restarts and gateways), else
/// random for this process.
pub fn hash_key_from_env(var: &str) -> [u8; 32] {
    use sha2::Digest;
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Sha256::digest(v.as_bytes()).into(),
        _ => {
            let mut k = [0u8; 32];
            if getrandom::getrandom(&mut k).is_err() {
                // No randomness: fall back to a per-process value; ids then only need to differ per caller.
                let seed = format!("{:?}{}", SystemTime::now(), std::process::id());
                k = Sha256::digest(seed.as_bytes()).into();
            }
            tracing::info!(
                "${var} is not set: passthrough caller ids are keyed with a random per-process key"
            );
            k
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().expect("header"));
        }
        h
    }

    #[test]
    fn passthrough_names_callers_by_a_keyed_hash() {
        let auth = Auth::new(Mode::Passthrough, LimitSpec::default(), vec![], [7; 32]);
        let now = SystemTime::now();
        let a = auth
            .identify(&headers(&[("authorization", "Bearer sk-aaa")]), now)
            .expect("a");
        let a2 = auth
            .identify(&headers(&[("api-key", "sk-aaa")]), now)
            .expect("a2");
        let b = auth
            .identify(&headers(&[("authorization", "bearer sk-bbb")]), now)
            .expect("b");
        assert_eq!(a.id(), a2.id());
        assert_ne!(a.id(), b.id());
        assert!(a.id().starts_with("h:") && !a.id().contains("aaa"));
        assert_eq!(
            auth.identify(&headers(&[]), now).expect("anon").id(),
            "anonymous"
        );
        let other_key = Auth::new(Mode::Passthrough, LimitSpec::default(), vec![], [8; 32]);
        assert_ne!(
            other_key
                .identify(&headers(&[("authorization", "Bearer sk-aaa")]), now)
                .expect("a")
                .id(),
            a.id()
        );
    }
}
