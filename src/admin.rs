//! The admin listener, on its own address: `GET /healthz` (with every upstream pool's endpoints and whether
//! each gets traffic), `GET /metrics`, `POST /reload` (rules and keys), `GET /usage` (requests and tokens
//! per caller, tenant, model and time, from the audit files: see `usage`).
//! It never serves the data path, and it reaches the live sets only through `live` (never through `server`,
//! which assembles it).
//!
//! With `admin.token_env` set, the endpoints that act or reveal (`/reload`, `/usage`, `/metrics`) require
//! `Authorization: Bearer <token>` (compared in constant time; 401 with `WWW-Authenticate: Bearer`
//! otherwise). `/healthz` stays open for probes, but without the token it answers only `{"status":"ok"}`:
//! the pools' addresses, versions and counts are for token holders.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use sha2::{Digest, Sha256};

use crate::auth::KeyStore;
use crate::live::{self, Live, Source};
use crate::metrics;
use crate::rules::RuleStore;
use crate::upstream::Upstreams;
use crate::usage::{query::MAX_PAGE_SIZE, Query, Usage};

/// Answers the admin endpoints.
pub struct AdminApp {
    started: Instant,
    rules: Arc<RuleStore>,
    keys: Option<Arc<KeyStore>>,
    upstreams: Arc<Upstreams>,
    /// SHA-256 of the admin token: presented tokens are hashed and compared in constant time.
    token: Option<[u8; 32]>,
    /// `None` when the audit file is off (`/usage` has nothing to read).
    usage: Option<Arc<Usage>>,
}

/// An admin answer: status, content type, body, and whether it asks for a bearer token.
struct Answer {
    status: StatusCode,
    content_type: &'static str,
    body: Vec<u8>,
    challenge: bool,
}

impl Answer {
    fn json(status: StatusCode, body: Vec<u8>) -> Self {
        Self {
            status,
            content_type: "application/json",
            body,
            challenge: false,
        }
    }

    /// An OpenAI-shaped error.
    fn error(status: StatusCode, message: &str, param: Option<&str>, code: &str) -> Self {
        let kind = match status {
            StatusCode::UNAUTHORIZED => "authentication_error",
            s if s.is_server_error() => "server_error",
            _ => "invalid_request_error",
        };
        let body = serde_json::json!({"error": {"message": message, "type": kind, "param": param, "code": code}});
        Self::json(status, body.to_string().into_bytes())
    }
}

impl AdminApp {
    pub fn new(
        rules: Arc<RuleStore>,
        keys: Option<Arc<KeyStore>>,
        upstreams: Arc<Upstreams>,
    ) -> Self {
        Self {
            started: Instant::now(),
            rules,
            keys,
            upstreams,
            token: None,
            usage: None,
        }
    }

    /// Requires `Authorization: Bearer <token>` on the endpoints that act or reveal.
    pub fn with_token(mut self, token: Option<&str>) -> Self {
        self.token = token.map(|t| Sha256::digest(t.as_bytes()).into());
        self
    }

    /// Serves `GET /usage` from this audit directory's usage.
    pub fn with_usage(mut self, usage: Option<Arc<Usage>>) -> Self {
        self.usage = usage;
        self
    }

    /// Whether the request may use the guarded endpoints: no token configured, or the right one presented.
    fn authorized(&self, headers: &http::HeaderMap) -> bool {
        let Some(want) = &self.token else { return true };
        let presented = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim())
            .unwrap_or("");
        // Both sides hashed to 32 bytes, then every byte compared: the time taken says nothing of the token.
        let got: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let diff = want
            .iter()
            .zip(got.iter())
            .fold(0u8, |d, (a, b)| d | (a ^ b));
        diff == 0 && !presented.is_empty()
    }

    async fn usage(&self, query: Option<&str>) -> Answer {
        let Some(usage) = &self.usage else {
            return Answer::error(
                StatusCode::NOT_FOUND,
                "usage is read from the audit files, and audit.enabled = false",
                None,
                "usage_unavailable",
            );
        };
        let pairs: Vec<(String, String)> =
            url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
        let q = match Query::parse(
            pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            MAX_PAGE_SIZE,
        ) {
            Ok(q) => q,
            Err(e) => {
                return Answer::error(
                    StatusCode::BAD_REQUEST,
                    &e.message,
                    Some(&e.param),
                    "invalid_parameter",
                )
            }
        };
        match usage.query(q).await {
            Ok(v) => Answer::json(StatusCode::OK, v.to_string().into_bytes()),
            Err(e) => {
                tracing::warn!("usage: {e}");
                Answer::error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the audit directory could not be read",
                    None,
                    "usage_failed",
                )
            }
        }
    }

    fn healthz(&self) -> Vec<u8> {
        let set = self.rules.snapshot();
        let keys = self.keys.as_ref().map(|k| {
            let k = k.peek();
            serde_json::json!({"version": k.version(), "count": k.len()})
        });
        // Every pool's endpoints (resolved addresses) and whether each gets traffic now.
        let upstreams: Vec<serde_json::Value> = self
            .upstreams
            .pools
            .iter()
            .map(|p| {
                let endpoints: Vec<serde_json::Value> = p
                    .members()
                    .into_iter()
                    .map(|(addr, ready)| serde_json::json!({"address": addr.to_string(), "ready": ready}))
                    .collect();
                serde_json::json!({"name": &*p.name, "endpoints": endpoints})
            })
            .collect();
        serde_json::json!({
            "status": "ok",
            "upstreams": upstreams,
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_seconds": self.started.elapsed().as_secs(),
            // Which process answered: two share the listeners during a graceful upgrade.
            "pid": std::process::id(),
            "rules": {"version": set.version(), "count": set.rules().len()},
            "keys": keys,
        })
        .to_string()
        .into_bytes()
    }

    /// Reloads the rules, then the keys; 422 if either was refused (the last good set stays live).
    async fn reload(&self) -> (StatusCode, Vec<u8>) {
        let (mut failed, mut body) = reload_one(&self.rules).await;
        if let Some(keys) = &self.keys {
            let (keys_failed, keys) = reload_one(keys).await;
            body["keys"] = keys;
            failed |= keys_failed;
        }
        let status = if failed {
            StatusCode::UNPROCESSABLE_ENTITY
        } else {
            StatusCode::OK
        };
        (status, body.to_string().into_bytes())
    }
}

/// Reloads one live set off the request path: whether it failed, and its part of the answer.
async fn reload_one<S: Source>(live: &Arc<Live<S>>) -> (bool, serde_json::Value) {
    let outcome = live::reload_off_path(live).await;
    (outcome.is_failed(), outcome.to_json(S::NAME))
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let authorized = self.authorized(&req.headers);
        let path = req.uri.path().to_string();
        let query = req.uri.query().map(str::to_string);
        let guarded = matches!(path.as_str(), "/reload" | "/usage" | "/metrics");
        let a = match (&req.method, path.as_str()) {
            _ if guarded && !authorized => Answer {
                challenge: true,
                ..Answer::error(
                    StatusCode::UNAUTHORIZED,
                    "this admin endpoint requires Authorization: Bearer <admin token>",
                    None,
                    "invalid_admin_token",
                )
            },
            (&Method::GET, "/healthz") if authorized => {
                Answer::json(StatusCode::OK, self.healthz())
            }
            (&Method::GET, "/healthz") => {
                Answer::json(StatusCode::OK, br#"{"status":"ok"}"#.to_vec())
            }
            (&Method::POST, "/reload") => {
                let (status, body) = self.reload().await;
                Answer::json(status, body)
            }
            (&Method::GET, "/metrics") => Answer {
                content_type: "text/plain; version=0.0.4; charset=utf-8",
                ..Answer::json(StatusCode::OK, metrics::render())
            },
            (&Method::GET, "/usage") => self.usage(query.as_deref()).await,
            _ => Answer::error(
                StatusCode::NOT_FOUND,
                "admin endpoints: GET /healthz, GET /metrics, POST /reload, GET /usage",
                None,
                "not_found",
            ),
        };
        let mut r = Response::builder()
            .status(a.status)
            .header(http::header::CONTENT_TYPE, a.content_type)
            .header(http::header::CONTENT_LENGTH, a.body.len());
        if a.challenge {
            r = r.header(http::header::WWW_AUTHENTICATE, "Bearer");
        }
        r.body(a.body).unwrap_or_else(|_| Response::new(Vec::new()))
    }
}
