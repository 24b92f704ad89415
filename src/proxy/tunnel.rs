//! Tunnels: upgrades other than realtime sessions, passed on uninspected when `inspect.websocket = "pass"`.
//!
//! The edge (`edge.rs`) hands such a request here with its connection instead of going to Pingora's HTTP loop.
//! Why not Pingora's loop: in Pingora 0.9 an HTTP/1 upgrade is torn down right after its 101 whenever the
//! upstream's answer is read before the proxy has passed on the upgrade request's own (empty) body — the end of
//! that body is taken for the end of the tunnel (cloudflare/pingora#946). A fast upstream that speaks first (a
//! WebSocket server greeting its client) loses its session at random, more often the busier the machine. So the
//! gateway holds both legs of a tunnel itself, as it does for realtime sessions:
//!
//! 1. the head is parsed and checked, the route must be one the gateway forwards, the audit sink must be able to
//!    record; the caller is identified, its model scope and quotas taken as for any request without a body,
//!    and the request routed to a pool by its path;
//! 2. an endpoint is selected (a refused connection moves to another), and the client's head is written to it
//!    with hop-by-hop fields removed (the upgrade's own `Connection`/`Upgrade` put back), the upstream's `Host`
//!    and base path, the provider credential in `gateway_keys` mode, the request id and trace context;
//! 3. the upstream's answer head is read (bounded, within 10 s). A 101 goes to the client with the gateway's
//!    headers added, then bytes are copied both ways, as they come, until either side closes or the gateway shuts
//!    down. Any other answer is passed on like a refused realtime handshake: its body if it passes inspection,
//!    else the gateway's own error for that status;
//! 4. one decision event for the tunnel when it ends (status, bytes each way), the permits given back.

use std::time::{Duration, Instant};

use bytes::BytesMut;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::realtime::{lists_token, parse_head, write_head, RawHead, Realtime};
use super::{error, headers, RequestCtx};
use crate::metrics;
use crate::openai::{Rejection, Route};
use crate::upstream::{pool::Failure, retry, HOP_BY_HOP};

/// How long the upstream may take to answer the upgrade, beyond connecting.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest upstream answer head read.
const MAX_ANSWER_HEAD: usize = 64 << 10;
/// The largest body of an upstream answer that refuses the upgrade (read to be inspected).
const MAX_REFUSAL_BODY: usize = 1 << 20;
/// Per-direction copy buffer.
const COPY_BUFFER: usize = 16 << 10;

/// Whether a request head asks to upgrade its connection (it has an `Upgrade` field).
pub fn wants(head: &[u8]) -> bool {
    super::realtime::find_field(head, b"upgrade")
}

/// The client's request, parsed.
struct Head {
    method: http::Method,
    /// Path and query, as sent.
    target: String,
    headers: http::HeaderMap,
    /// Bytes the client sent after its head.
    rest: Vec<u8>,
}

/// What the upstream answered the upgrade with.
struct Answer {
    header: ResponseHeader,
    /// Bytes read after the answer's head.
    rest: Vec<u8>,
}

impl Realtime {
    /// Serves one tunnel on a client connection whose request head is `head` (read by the edge).
    pub async fn tunnel(&self, mut stream: Stream, head: BytesMut, shutdown: &ShutdownWatch) {
        let mut ctx = RequestCtx::new();
        let rules = self.gw.rules.snapshot();
        ctx.rules = Some(rules.clone());
        let parsed = parse(&head);
        drop(head);
        let h = match parsed {
            Ok(h) => h,
            Err(r) => {
                ctx.request_id = super::ctx::new_request_id();
                self.refuse_tunnel(&mut stream, &mut ctx, r).await;
                return;
            }
        };
        ctx.route = Route::classify(h.target.split('?').next().unwrap_or("/"));
        ctx.request_id = self.request_id(&h.headers, &rules);
        if let Some(tracer) = &self.gw.tracer {
            ctx.trace = Some(Box::new(tracer.start(&h.headers)));
        }
        metrics::UPGRADES.with_label_values(&["passed"]).inc();
        let (mut up, answer) = match self.open_tunnel(&mut ctx, &h).await {
            Ok(opened) => opened,
            Err(r) => {
                self.refuse_tunnel(&mut stream, &mut ctx, r).await;
                return;
            }
        };
        let status = answer.header.status.as_u16();
        if status != 101 {
            let body = read_refusal_body(&mut up, &answer).await;
            self.pass_refusal(&mut stream, &mut ctx, None, status, body)
                .await;
            ctx.admission.end(&*self.gw.limiter, true, None, None);
            return;
        }
        let mut header = answer.header;
        if headers::decorate(&mut header, &ctx).is_err()
            || write_head(&mut stream, &header, &answer.rest)
                .await
                .is_err()
        {
            ctx.admission.end(&*self.gw.limiter, true, None, None);
            return;
        }
        ctx.sent_answer_bytes();
        let early = h.rest.len() as u64;
        let mut client_rest = h.rest;
        let mut shutdown = shutdown.clone();
        let copied = async {
            if !client_rest.is_empty() {
                up.write_all(&client_rest).await?;
                client_rest.clear();
            }
            tokio::io::copy_bidirectional_with_sizes(&mut stream, &mut up, COPY_BUFFER, COPY_BUFFER)
                .await
        };
        let (received, sent) = tokio::select! {
            r = copied => r.unwrap_or_default(),
            _ = shutdown.changed() => (0, 0),
        };
        ctx.admission.end(&*self.gw.limiter, true, None, None);
        self.trace_session(&ctx, "upgrade", None, 101);
        if self.gw.audit.enabled() {
            if let Some(mut ev) = self.event(&ctx, None, 101) {
                ev.route = ctx.route.label();
                ev.method = super::finish::method_label(&h.method);
                // What each side sent the other through the tunnel.
                ev.bytes = crate::audit::event::Bytes {
                    received: early + received,
                    sent: answer.rest.len() as u64 + sent,
                };
                self.gw.audit.record(Box::new(ev)).await;
            }
        }
    }

    /// Everything before the upstream's answer: the caller admitted, the request routed, the head sent.
    async fn open_tunnel(
        &self,
        ctx: &mut RequestCtx,
        h: &Head,
    ) -> Result<(Stream, Answer), Rejection> {
        let gw = &self.gw;
        if !ctx.route.is_forwarded() {
            return Err(Rejection::NotFound {
                method: h.method.to_string(),
                path: h.target.split('?').next().unwrap_or("/").to_string(),
            });
        }
        if gw.audit.refuses_requests() {
            return Err(Rejection::AuditUnavailable);
        }
        ctx.admission
            .admit_caller(
                &gw.auth,
                &*gw.limiter,
                &h.headers,
                gw.inspect.options.monitor,
                std::time::SystemTime::now(),
            )
            .await?;
        ctx.admission
            .admit_body(&gw.auth, &*gw.limiter, ctx.route, &h.method, None, Ok(()))
            .await?;
        let path = h.target.split('?').next().unwrap_or("/");
        super::path::route(gw, ctx, path)?;
        let Some(pool) = ctx.pool.and_then(|i| gw.upstreams.pools.get(i)).cloned() else {
            return Err(Rejection::Internal);
        };
        if !super::intent::make_durable(gw, ctx, &h.method, ctx.route.label(), None).await {
            return Err(Rejection::AuditUnavailable);
        }
        loop {
            let Some(endpoint) = pool.select(&ctx.tried).await else {
                if ctx.tried.is_empty() {
                    pool.count_error("no_healthy");
                    return Err(Rejection::NoHealthyUpstream(pool.name.to_string()));
                }
                return Err(Rejection::UpstreamUnreachable);
            };
            let addr = endpoint.addr;
            ctx.timing.upstream_sent.get_or_insert_with(Instant::now);
            let mut up = match self.connector.new_stream(endpoint.target.peer()).await {
                Ok(s) => s,
                Err(e) => {
                    // Nothing was sent: another endpoint of the pool may take the request.
                    pool.failed(addr, retry::failure(&e).unwrap_or(Failure::Connect));
                    ctx.tried.push(addr);
                    ctx.attempts_log
                        .push(super::attempt(&pool, addr, None, Some(&e)));
                    if ctx.tried.len() < retry::ENDPOINT_ATTEMPTS && pool.has_untried(&ctx.tried) {
                        continue;
                    }
                    return Err(Rejection::from_error(&e).unwrap_or(Rejection::UpstreamUnreachable));
                }
            };
            let mut req = upstream_request(h).map_err(|_| Rejection::Internal)?;
            endpoint
                .target
                .target(&mut req)
                .and_then(|()| headers::to_upstream(&mut req, ctx, &pool))
                .map_err(|_| Rejection::Internal)?;
            ctx.endpoint = Some(endpoint);
            ctx.attempts += 1;
            ctx.forwarded = true;
            let answered = tokio::time::timeout(ANSWER_TIMEOUT, async {
                up.write_all(&serialize(&req)).await?;
                up.flush().await?;
                read_answer(&mut up).await
            })
            .await;
            return match answered {
                Ok(Ok(answer)) => {
                    ctx.attempts_log.push(super::attempt(
                        &pool,
                        addr,
                        Some(answer.header.status.as_u16()),
                        None,
                    ));
                    Ok((up, answer))
                }
                Ok(Err(e)) => {
                    tracing::warn!(upstream = %pool.name, "upgrade: the upstream's answer cannot be read: {e}");
                    Err(Rejection::UpstreamFailed)
                }
                Err(_) => {
                    pool.failed(addr, Failure::Timeout);
                    Err(Rejection::UpstreamTimeout)
                }
            };
        }
    }

    /// Answers a refused tunnel with the OpenAI-shaped error, records it, and closes.
    async fn refuse_tunnel(&self, stream: &mut Stream, ctx: &mut RequestCtx, r: Rejection) {
        let resp = r.render();
        ctx.error_code = Some(resp.code);
        if let Ok(mut header) = error::header(&resp, ctx) {
            let _ = header.insert_header(http::header::CONNECTION, "close");
            let _ = write_head(stream, &header, &resp.body).await;
        }
        self.trace_session(ctx, "upgrade", None, resp.status);
        if self.gw.audit.enabled() {
            if let Some(mut ev) = self.event(ctx, None, resp.status) {
                ev.route = ctx.route.label();
                self.gw.audit.record(Box::new(ev)).await;
            }
        }
    }
}

/// Parses the client's head; an upgrade must say so in `Connection` too.
fn parse(head: &[u8]) -> Result<Head, Rejection> {
    let RawHead {
        method,
        target,
        headers,
        len,
    } = parse_head(head)?;
    if !lists_token(&headers, http::header::CONNECTION, "upgrade") {
        return Err(Rejection::MalformedRequest(
            "an upgrade needs `Connection: Upgrade` next to its `Upgrade` field".to_string(),
        ));
    }
    Ok(Head {
        method,
        target,
        headers,
        rest: head[len..].to_vec(),
    })
}

/// The upstream's head: the client's fields minus hop-by-hop ones, the upgrade's own put back.
fn upstream_request(h: &Head) -> pingora::Result<RequestHeader> {
    let mut req =
        RequestHeader::build(h.method.clone(), h.target.as_bytes(), Some(h.headers.len()))?;
    for (name, value) in &h.headers {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            req.append_header(name.clone(), value.clone())?;
        }
    }
    for value in h.headers.get_all(http::header::UPGRADE) {
        req.append_header(http::header::UPGRADE, value.clone())?;
    }
    req.insert_header(http::header::CONNECTION, "Upgrade")?;
    Ok(req)
}

/// A request head as HTTP/1.1 bytes.
fn serialize(req: &RequestHeader) -> Vec<u8> {
    let target = req.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut out = format!("{} {target} HTTP/1.1\r\n", req.method).into_bytes();
    for (name, value) in req.headers.iter() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Reads the upstream's answer head (at most [`MAX_ANSWER_HEAD`]); informational answers other than 101 are
/// skipped.
async fn read_answer(up: &mut Stream) -> std::io::Result<Answer> {
    let invalid = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_string());
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        if up.read_buf(&mut buf).await? == 0 {
            return Err(invalid("the upstream closed before answering"));
        }
        loop {
            let mut fields = [httparse::EMPTY_HEADER; 256];
            let mut resp = httparse::Response::new(&mut fields);
            let len = match resp.parse(&buf) {
                Ok(httparse::Status::Complete(n)) => n,
                Ok(httparse::Status::Partial) => break,
                Err(_) => return Err(invalid("the upstream's answer head cannot be parsed")),
            };
            let status = resp.code.unwrap_or(0);
            if (100..200).contains(&status) && status != 101 {
                let _ = buf.split_to(len);
                continue;
            }
            let mut header = ResponseHeader::build(status, Some(resp.headers.len()))
                .map_err(|_| invalid("the upstream's status is invalid"))?;
            for f in resp.headers.iter() {
                header
                    .append_header(f.name.to_string(), f.value)
                    .map_err(|_| invalid("an upstream header field is invalid"))?;
            }
            return Ok(Answer {
                header,
                rest: buf[len..].to_vec(),
            });
        }
        if buf.len() > MAX_ANSWER_HEAD {
            return Err(invalid("the upstream's answer head is too large"));
        }
        buf.reserve(4096);
    }
}

/// The body of an answer refusing the upgrade, as far as its `Content-Length` says (at most
/// [`MAX_REFUSAL_BODY`]; a body without a length is not read: the gateway's own error replaces it).
async fn read_refusal_body(up: &mut Stream, answer: &Answer) -> Vec<u8> {
    let len = answer
        .header
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok());
    let Some(len) = len.filter(|&l| l <= MAX_REFUSAL_BODY) else {
        return Vec::new();
    };
    let mut body = answer.rest.clone();
    body.truncate(len);
    let read = tokio::time::timeout(ANSWER_TIMEOUT, async {
        let mut chunk = [0u8; 4096];
        while body.len() < len {
            let n = up.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n.min(len - body.len())]);
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    match read {
        Ok(Ok(())) if body.len() == len => body,
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upgrade_head_keeps_its_upgrade_and_loses_other_hop_by_hop_fields() {
        let h = parse(
            b"GET /v1/socket?x=1 HTTP/1.1\r\nHost: gw\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\nKeep-Alive: 5\r\nSec-WebSocket-Key: k\r\n\r\nearly",
        )
        .expect("parsed");
        assert_eq!(h.rest, b"early");
        let req = upstream_request(&h).expect("built");
        let text = String::from_utf8(serialize(&req)).expect("utf8");
        assert!(
            text.starts_with("GET /v1/socket?x=1 HTTP/1.1\r\n"),
            "{text}"
        );
        assert!(text.contains("upgrade: websocket\r\n"), "{text}");
        assert!(text.contains("connection: Upgrade\r\n"), "{text}");
        assert!(text.contains("sec-websocket-key: k\r\n"), "{text}");
        assert!(!text.to_ascii_lowercase().contains("keep-alive"), "{text}");
    }

    #[test]
    fn an_upgrade_field_without_connection_upgrade_is_malformed() {
        let r = parse(b"GET /v1/x HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\n\r\n");
        assert!(matches!(r, Err(Rejection::MalformedRequest(_))));
    }
}
