//! The admin listener, on its own address: `GET /healthz`, `GET /metrics`, `POST /reload` (rules and keys). It never serves the data path.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::auth::{KeyStore, KeysReload};
use crate::metrics;
use crate::rules::{ReloadOutcome, RuleStore};

/// Answers the admin endpoints.
pub struct AdminApp {
    started: Instant,
    rules: Arc<RuleStore>,
    keys: Option<Arc<KeyStore>>,
}

impl AdminApp {
    pub fn new(rules: Arc<RuleStore>, keys: Option<Arc<KeyStore>>) -> Self {
        Self {
            started: Instant::now(),
            rules,
            keys,
        }
    }

    fn healthz(&self) -> Vec<u8> {
        let set = self.rules.snapshot();
        let keys = self.keys.as_ref().map(|k| {
            let k = k.snapshot();
            serde_json::json!({"version": k.version(), "count": k.len()})
        });
        serde_json::json!({
            "status": "ok",
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_seconds": self.started.elapsed().as_secs(),
            "rules": {"version": set.version(), "count": set.rules().len()},
            "keys": keys,
        })
        .to_string()
        .into_bytes()
    }

    async fn reload(&self) -> (StatusCode, Vec<u8>) {
        let outcome = crate::server::reload_off_path(&self.rules).await;
        let keys = match &self.keys {
            Some(k) => Some(crate::server::reload_keys_off_path(k).await),
            None => None,
        };
        let keys_failed = matches!(keys, Some(KeysReload::Failed { .. }));
        let keys_json = keys.map(|k| match k {
            KeysReload::Reloaded { version, keys } => {
                serde_json::json!({"result": "reloaded", "version": version, "keys": keys})
            }
            KeysReload::Unchanged { version, keys } => {
                serde_json::json!({"result": "unchanged", "version": version, "keys": keys})
            }
            KeysReload::Failed { version, errors } => {
                serde_json::json!({"result": "error", "version": version, "errors": errors})
            }
        });
        let (mut status, mut body) = match outcome {
            ReloadOutcome::Reloaded { version, rules } => (
                StatusCode::OK,
                serde_json::json!({"result": "reloaded", "version": version, "rules": rules}),
            ),
            ReloadOutcome::Unchanged { version, rules } => (
                StatusCode::OK,
                serde_json::json!({"result": "unchanged", "version": version, "rules": rules}),
            ),
            ReloadOutcome::Failed { version, errors } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                serde_json::json!({"result": "error", "version": version, "errors": errors}),
            ),
        };
        if let Some(k) = keys_json {
            body["keys"] = k;
            if keys_failed {
                status = StatusCode::UNPROCESSABLE_ENTITY;
            }
        }
        (status, body.to_string().into_bytes())
    }
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
