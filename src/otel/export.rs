//! The OTLP exporter: a background service that takes finished spans from the tracer's bounded queue, batches
//! them (at most `batch_max` spans, or whatever waited `flush_interval`), encodes an `ExportTraceServiceRequest`
//! and sends it — OTLP/HTTP (`POST {endpoint}/v1/traces`, `application/x-protobuf`, through the upstream layer:
//! pooled connections, https with rustls) or OTLP/gRPC (one unary `TraceService/Export` call over HTTP/2 in
//! cleartext: a 5-byte frame header and the message; `grpc-status` in the trailers). A failed export is
//! retried `retries` times with a short backoff, then its spans are dropped and counted. Never on the request
//! path; on shutdown the drain closes it, and it exports what is queued before it stops.

use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::connectors::ConnectorOptions;
use pingora::http::RequestHeader;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use prost::Message;
use tokio::sync::{mpsc, oneshot};

use super::proto;
use super::{Attr, Item, SpanRecord};
use crate::config::{ConfigError, OtlpProtocol, TracingConfig};
use crate::metrics;
use crate::upstream::Upstream;

/// The gRPC method of an OTLP trace export.
const GRPC_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
/// The most of a collector's answer read (it is discarded; a larger one is cut off).
const MAX_ANSWER: usize = 64 * 1024;
/// The first retry's wait (doubled for each next one).
const BACKOFF: Duration = Duration::from_millis(200);

/// The exporter service (see the module doc).
pub struct Exporter {
    rx: Mutex<Option<mpsc::Receiver<Item>>>,
    sink: Sink,
    headers: Vec<(String, String)>,
    resource: proto::Resource,
    batch_max: usize,
    flush_interval: Duration,
    timeout: Duration,
    retries: u32,
}

/// Where batches go.
enum Sink {
    // Boxed: the upstream (a peer and a connector) is large beside the gRPC variant.
    Http {
        upstream: Box<Upstream>,
        path: String,
    },
    Grpc {
        host: String,
        port: u16,
        authority: String,
    },
}

impl Exporter {
    pub(super) fn new(cfg: &TracingConfig, rx: mpsc::Receiver<Item>) -> Result<Self, ConfigError> {
        let e = &cfg.endpoint;
        let sink = match cfg.protocol {
            OtlpProtocol::HttpProtobuf => Sink::Http {
                // One batch is in flight at a time: a couple of connections are plenty.
                upstream: Box::new(Upstream::new(e, Some(ConnectorOptions::new(2)))?),
                path: format!("{}/v1/traces", e.base_path.trim_end_matches('/')),
            },
            OtlpProtocol::Grpc => Sink::Grpc {
                host: e.host.clone(),
                port: e.port,
                authority: e.authority.clone(),
            },
        };
        Ok(Self {
            rx: Mutex::new(Some(rx)),
            sink,
            headers: cfg.headers.clone(),
            resource: proto::Resource {
                attributes: vec![kv("service.name", Attr::Str(cfg.service_name.clone()))],
            },
            batch_max: cfg.batch_max,
            flush_interval: cfg.flush_interval,
            timeout: cfg.timeout,
            retries: cfg.retries,
        })
    }

    /// Exports one batch, with retries; counts the outcome.
    async fn export(
        &self,
        batch: Vec<SpanRecord>,
        grpc: &mut Option<h2::client::SendRequest<Bytes>>,
    ) {
        if batch.is_empty() {
            return;
        }
        let n = batch.len() as u64;
        let body = Bytes::from(self.encode(batch));
        let mut backoff = BACKOFF;
        for attempt in 0..=self.retries {
            if attempt > 0 {
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
            let sent = tokio::time::timeout(self.timeout, self.send(&body, grpc)).await;
            match sent {
                Ok(Ok(())) => {
                    metrics::TRACE_SPANS_EXPORTED.inc_by(n);
                    return;
                }
                Ok(Err(why)) => {
                    tracing::debug!("trace export failed: {why}");
                }
                Err(_) => {
                    tracing::debug!("trace export timed out");
                    // The connection may be stuck: start a new one.
                    *grpc = None;
                }
            }
            metrics::TRACE_EXPORT_ERRORS.inc();
        }
        tracing::warn!(
            spans = n,
            "trace export failed after retries; spans dropped"
        );
        metrics::TRACE_SPANS_DROPPED
            .with_label_values(&["export_failed"])
            .inc_by(n);
    }

    fn encode(&self, batch: Vec<SpanRecord>) -> Vec<u8> {
        let req = proto::ExportTraceServiceRequest {
            resource_spans: vec![proto::ResourceSpans {
                resource: Some(self.resource.clone()),
                scope_spans: vec![proto::ScopeSpans {
                    scope: Some(proto::InstrumentationScope {
                        name: super::SCOPE.into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                    }),
                    spans: batch.into_iter().map(span).collect(),
                }],
            }],
        };
        req.encode_to_vec()
    }

    async fn send(
        &self,
        body: &Bytes,
        grpc: &mut Option<h2::client::SendRequest<Bytes>>,
    ) -> Result<(), String> {
        match &self.sink {
            Sink::Http { upstream, path } => self.send_http(upstream, path, body).await,
            Sink::Grpc {
                host,
                port,
                authority,
            } => {
                let result = self.send_grpc(host, *port, authority, body, grpc).await;
                if result.is_err() {
                    *grpc = None;
                }
                result
            }
        }
    }

    async fn send_http(&self, upstream: &Upstream, path: &str, body: &Bytes) -> Result<(), String> {
        let e = |e: Box<pingora::Error>| e.to_string();
        let mut req = RequestHeader::build("POST", path.as_bytes(), Some(5 + self.headers.len()))
            .map_err(e)?;
        req.insert_header(http::header::HOST, upstream.target().authority())
            .map_err(e)?;
        req.insert_header(http::header::CONTENT_TYPE, "application/x-protobuf")
            .map_err(e)?;
        req.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())
            .map_err(e)?;
        req.insert_header(http::header::USER_AGENT, "promptgate-otlp")
            .map_err(e)?;
        for (k, v) in &self.headers {
            req.insert_header(k.clone(), v.as_str()).map_err(e)?;
        }
        let mut exchange = upstream.send(&req, body).await.map_err(e)?;
        let status = exchange.header().map_err(e)?.status.as_u16();
        let mut read = 0;
        while let Some(chunk) = exchange.read().await.map_err(e)? {
            read += chunk.len();
            if read > MAX_ANSWER {
                // Dropping the exchange closes its connection.
                break;
            }
        }
        if read <= MAX_ANSWER {
            exchange.finish().await;
        }
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(format!("the collector answered {status}"))
        }
    }

    async fn send_grpc(
        &self,
        host: &str,
        port: u16,
        authority: &str,
        body: &Bytes,
        grpc: &mut Option<h2::client::SendRequest<Bytes>>,
    ) -> Result<(), String> {
        let client = match grpc.take() {
            Some(c) => c,
            None => {
                let tcp = tokio::net::TcpStream::connect((host, port))
                    .await
                    .map_err(|e| format!("connect: {e}"))?;
                let _ = tcp.set_nodelay(true);
                let (client, connection) = h2::client::handshake(tcp)
                    .await
                    .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
                // The connection is driven by its own task; it ends when the client half is dropped.
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!("OTLP gRPC connection ended: {e}");
                    }
                });
                client
            }
        };
        let mut client = client.ready().await.map_err(|e| e.to_string())?;
        let mut req = http::Request::builder()
            .method("POST")
            .uri(format!("http://{authority}{GRPC_PATH}"))
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header(http::header::TE, "trailers")
            .header(http::header::USER_AGENT, "promptgate-otlp");
        for (k, v) in &self.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let req = req.body(()).map_err(|e| e.to_string())?;
        let (answer, mut stream) = client.send_request(req, false).map_err(|e| e.to_string())?;
        // Length-prefixed message: not compressed (0), then the length, big-endian.
        let mut framed = Vec::with_capacity(5 + body.len());
        framed.push(0);
        framed.extend_from_slice(&(body.len() as u32).to_be_bytes());
        framed.extend_from_slice(body);
        stream
            .send_data(Bytes::from(framed), true)
            .map_err(|e| e.to_string())?;
        let answer = answer.await.map_err(|e| e.to_string())?;
        let (parts, mut recv) = answer.into_parts();
        if parts.status != http::StatusCode::OK {
            return Err(format!("the collector answered HTTP {}", parts.status));
        }
        // A trailers-only answer carries grpc-status in its headers.
        let mut status = grpc_status(&parts.headers).map(str::to_string);
        if status.is_none() {
            let mut read = 0;
            while let Some(chunk) = recv.data().await {
                let chunk = chunk.map_err(|e| e.to_string())?;
                read += chunk.len();
                let _ = recv.flow_control().release_capacity(chunk.len());
                if read > MAX_ANSWER {
                    return Err("the collector's answer is too large".into());
                }
            }
            let trailers = recv.trailers().await.map_err(|e| e.to_string())?;
            status = trailers.as_ref().and_then(grpc_status).map(str::to_string);
        }
        *grpc = Some(client);
        match status.as_deref() {
            Some("0") => Ok(()),
            Some(code) => Err(format!("grpc-status {code}")),
            None => Err("no grpc-status".into()),
        }
    }
}

fn grpc_status(h: &http::HeaderMap) -> Option<&str> {
    h.get("grpc-status").and_then(|v| v.to_str().ok())
}

fn kv(key: &str, value: Attr) -> proto::KeyValue {
    proto::KeyValue {
        key: key.to_string(),
        value: Some(any(value)),
    }
}

fn any(value: Attr) -> proto::AnyValue {
    let v = match value {
        Attr::Str(s) => proto::Value::StringValue(s),
        Attr::Int(i) => proto::Value::IntValue(i),
        Attr::Strs(l) => proto::Value::ArrayValue(proto::ArrayValue {
            values: l.into_iter().map(|s| any(Attr::Str(s))).collect(),
        }),
    };
    proto::AnyValue { value: Some(v) }
}

/// One span in OTLP form.
fn span(s: SpanRecord) -> proto::Span {
    // W3C flags: sampled (only sampled spans are recorded); bit 8: the parent's remoteness is known, bit 9: it
    // is remote.
    let flags = 1 | 0x100 | if s.remote_parent { 0x200 } else { 0 };
    proto::Span {
        trace_id: s.trace_id.to_vec(),
        span_id: s.span_id.to_vec(),
        trace_state: s.tracestate.unwrap_or_default(),
        parent_span_id: s.parent.map(|p| p.to_vec()).unwrap_or_default(),
        name: s.name,
        kind: s.kind as i32,
        start_time_unix_nano: s.start_ns,
        end_time_unix_nano: s.end_ns,
        attributes: s.attributes.into_iter().map(|(k, v)| kv(k, v)).collect(),
        status: s.error.map(|message| proto::Status { message, code: 2 }),
        flags,
    }
}

#[async_trait]
impl BackgroundService for Exporter {
    async fn start(&self, _shutdown: ShutdownWatch) {
        // Not stopped by the shutdown signal itself: requests finishing in the grace period still hand over
        // their spans. The drain closes it (`Tracer::close`) once the last one is done.
        let taken = self.rx.lock().ok().and_then(|mut r| r.take());
        let Some(mut rx) = taken else { return };
        let mut batch: Vec<SpanRecord> = Vec::with_capacity(self.batch_max.min(4096));
        let mut grpc = None;
        let mut closing: Option<oneshot::Sender<()>> = None;
        let mut deadline = tokio::time::Instant::now() + self.flush_interval;
        loop {
            let item = tokio::select! {
                item = rx.recv() => item,
                _ = tokio::time::sleep_until(deadline) => {
                    let full = std::mem::take(&mut batch);
                    self.export(full, &mut grpc).await;
                    deadline = tokio::time::Instant::now() + self.flush_interval;
                    continue;
                }
            };
            match item {
                Some(Item::Spans(spans)) => {
                    if batch.is_empty() {
                        deadline = tokio::time::Instant::now() + self.flush_interval;
                    }
                    batch.extend(spans);
                    while batch.len() >= self.batch_max {
                        let rest = batch.split_off(self.batch_max);
                        let full = std::mem::replace(&mut batch, rest);
                        self.export(full, &mut grpc).await;
                    }
                }
                Some(Item::Close(done)) => closing = Some(done),
                None => {
                    // The tracer is gone: nothing more can come.
                    let rest = std::mem::take(&mut batch);
                    self.export(rest, &mut grpc).await;
                    return;
                }
            }
            if let Some(done) = closing.take() {
                // What was queued before the close: in batches, then stop.
                while let Ok(Item::Spans(spans)) = rx.try_recv() {
                    batch.extend(spans);
                }
                while !batch.is_empty() {
                    let rest = batch.split_off(self.batch_max.min(batch.len()));
                    let full = std::mem::replace(&mut batch, rest);
                    self.export(full, &mut grpc).await;
                }
                let _ = done.send(());
                return;
            }
        }
    }
}
