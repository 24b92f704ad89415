//! The admin listener, on its own address: `GET /healthz` and `GET /metrics`. It never serves the data path.

use std::time::Instant;

use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::metrics;

/// Answers the admin endpoints.
pub struct AdminApp {
    started: Instant,
}

impl AdminApp {
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
        }
    }

    fn healthz(&self) -> Vec<u8> {
        serde_json::json!({
            "status": "ok",
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_seconds": self.started.elapsed().as_secs(),
        })
        .to_string()
        .into_bytes()
    }
}

impl Default for AdminApp {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let (status, content_type, body) = match (&req.method, req.uri.path()) {
            (&Method::GET, "/healthz") => (StatusCode::OK, "application/json", self.healthz()),
            (&Method::GET, "/metrics") => (
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                metrics::render(),
            ),
            _ => (
                StatusCode::NOT_FOUND,
                "application/json",
                br#"{"error":{"message":"admin endpoints: GET /healthz, GET /metrics","type":"invalid_request_error","param":null,"code":"not_found"}}"#.to_vec(),
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
