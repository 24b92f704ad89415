//! The admin listener, on its own address: `GET /healthz` (with every upstream pool's endpoints and whether
//! each gets traffic), `GET /metrics`, `POST /reload` (rules and keys).
//! It never serves the data path, and it reaches the live sets only through `live` (never through `server`,
//! which assembles it).

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::auth::KeyStore;
use crate::live::{self, Live, Source};
use crate::metrics;
use crate::rules::RuleStore;
use crate::upstream::Upstreams;

/// Answers the admin endpoints.
pub struct AdminApp {
    started: Instant,
    rules: Arc<RuleStore>,
    keys: Option<Arc<KeyStore>>,
    upstreams: Arc<Upstreams>,
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
        let (status, content_type, body) = match (&req.method, req.uri.path()) {
            (&Method::GET, "/healthz") => (StatusCode::OK, "application/json", self.healthz()),
            (&Method::POST, "/reload") => {
                let (status, body) = self.reload().await;
                (status, "application/json", body)
            }
            (&Method::GET, "/metrics") => (
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                metrics::render(),
            ),
            _ => (
                StatusCode::NOT_FOUND,
                "application/json",
                br#"{"error":{"message":"admin endpoints: GET /healthz, GET /metrics, POST /reload","type":"invalid_request_error","param":null,"code":"not_found"}}"#.to_vec(),
            ),
        };
        Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, content_type)
            .header(http::header::CONTENT_LENGTH, body.len())
            .body(body)
            .unwrap_or_else(|_| Response::new(Vec::new()))
    }
}
