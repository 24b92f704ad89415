//! The edge: what a client connection may cost before its request reaches the proxy's hooks.
//!
//! Pingora's HTTP/1 loop reads a request head with a per-read timeout (60 s) and ceilings of 1 MiB and 256
//! headers, and no hook runs before the head is complete: a client dribbling its head a byte every few seconds
//! holds a connection for as long as it likes, and a 70 KiB head is read and forwarded. [`Edge`] wraps the
//! proxy app — `HttpProxy::process_new_http` is Pingora's entry for a custom accept loop — and, for every
//! request of a connection:
//! - caps connections, over all clients and per client address (IPv6 by /64), counted in fixed memory: a table
//!   of counters indexed by a hash of the address, where a collision can only over-count;
//! - reads the request head itself, within `server.header_timeout_ms` of its first byte, at most
//!   `limits.max_header_bytes` and `limits.max_headers`, checks its framing (not both `Content-Length` and
//!   `Transfer-Encoding`, no framing field spelled with `_`, a `Host` on HTTP/1.1), and hands it back to the
//!   stream (`rewind`) for Pingora to parse as it always does;
//! - refuses what fails with the OpenAI-shaped error of the one renderer (408, 431, 400, 503), says
//!   `Connection: close` and closes;
//! - keeps Pingora's keep-alive loop: the next request on the connection meets the same checks.
//!
//! The same holds on TLS listeners for a connection that negotiated HTTP/1.1 (or no ALPN). A connection that
//! speaks HTTP/2 — `h2` by ALPN, or the prior-knowledge preface on the plaintext listener when `server.h2c` is
//! on — goes to Pingora's HTTP/2 loop, which frames and bounds each stream's header list itself (set from the
//! same limits in `server.rs`); its streams reach the same hooks as HTTP/1 requests. The connection caps count
//! every connection, whatever it speaks.
//!
//! Scanning the head is linear: the end of the head is searched only in the bytes that just arrived, and the
//! head is parsed once, when complete.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::BytesMut;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::stream::Stream as TcpStream;
use pingora::protocols::{Stream, ALPN};
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use pingora_timeout::fast_timeout::fast_timeout;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::Gateway;
use crate::config::EdgeConfig;
use crate::metrics;
use crate::openai::Rejection;

/// How long an idle keep-alive connection waits for the first byte of its next request (as Pingora's own); an
/// idle HTTP/2 connection is closed after as long.
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);

/// What opens every prior-knowledge HTTP/2 connection, up to its blank line (RFC 9113 §3.4): an HTTP/1 head
/// to the reader of heads (`PRI * HTTP/2.0`), which is where it is recognised.
const H2_PREFACE_HEAD: &[u8] = b"PRI * HTTP/2.0\r\n\r\n";

/// Counter slots for per-address connection counts (a power of two).
const ADDRESS_SLOTS: usize = 4096;

/// The proxy app behind the edge's checks.
pub struct Edge {
    proxy: Arc<HttpProxy<Gateway>>,
    cfg: EdgeConfig,
    connections: Arc<Connections>,
    /// Prior-knowledge HTTP/2 accepted on plaintext connections (`server.h2c`).
    h2c: bool,
    /// Realtime sessions (`/v1/realtime` upgrades, when served) and tunnels (other upgrades, when passed).
    realtime: Option<Arc<super::Realtime>>,
    /// Upgrades other than realtime sessions are tunnelled (`inspect.websocket = "pass"`).
    tunnels: bool,
}

impl Edge {
    pub fn new(
        proxy: HttpProxy<Gateway>,
        cfg: EdgeConfig,
        h2c: bool,
        realtime: Option<super::Realtime>,
    ) -> Self {
        Self {
            proxy: Arc::new(proxy),
            cfg,
            h2c,
            tunnels: realtime
                .as_ref()
                .is_some_and(|r| r.gw.inspect.upgrades == crate::config::Upgrades::Pass),
            realtime: realtime.map(Arc::new),
            connections: Arc::new(Connections::new(
                cfg.max_connections,
                cfg.max_connections_per_ip,
            )),
        }
    }
}

#[async_trait]
impl ServerApp for Edge {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let address = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        let Some(_slot) = self.connections.take(address) else {
            metrics::EDGE_REFUSED
                .with_label_values(&["connection_limit"])
                .inc();
            refuse(stream, &Rejection::TooManyConnections).await;
            return None;
        };
        // HTTP/2 negotiated by ALPN: Pingora's HTTP/2 loop (the slot is held until the connection ends).
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            return self.proxy.process_new(stream, shutdown).await;
        }
        let mut stream = stream;
        let mut idle = KEEPALIVE_IDLE;
        let mut first = true;
        loop {
            let head = match read_head(&mut stream, idle, &self.cfg).await {
                Head::Complete(head) => head,
                Head::Closed => return None,
                Head::Refused(reason, rejection) => {
                    metrics::EDGE_REFUSED.with_label_values(&[reason]).inc();
                    refuse(stream, &rejection).await;
                    return None;
                }
            };
            if let Some(rt) = &self.realtime {
                if rt.enabled() && super::realtime::wants(&head) {
                    // A realtime session: the gateway holds both legs (`realtime.rs`); the connection ends with
                    // it.
                    rt.serve(stream, head, shutdown).await;
                    return None;
                }
                if self.tunnels && super::tunnel::wants(&head) {
                    // Any other upgrade, passed on uninspected: also held here (`tunnel.rs` says why).
                    rt.tunnel(stream, head, shutdown).await;
                    return None;
                }
            }
            if first && self.h2c && head.starts_with(H2_PREFACE_HEAD) {
                // Prior-knowledge h2c opens a plaintext connection; the preface goes back to the stream for
                // Pingora's HTTP/2 handshake (its server options say h2c).
                let Ok(mut tcp) = stream.into_any().downcast::<TcpStream>() else {
                    return None;
                };
                tcp.rewind(&head);
                return self.proxy.process_new(tcp, shutdown).await;
            }
            first = false;
            let mut session = ServerSession::new_http1(stream);
            // Pingora parses the head from the bytes read here, then reads on from the stream.
            session.set_pipelined_prefix(head);
            let open = !*shutdown.borrow();
            // As Pingora's own loop: keep-alive unless the server is shutting down.
            session.set_keepalive(open.then_some(KEEPALIVE_IDLE.as_secs()));
            let reused = self.proxy.process_new_http(session, shutdown).await?;
            // HTTP/1.1 pipelining is off (Pingora's default): nothing of the next request was read yet.
            stream = reused.consume().0;
            idle = KEEPALIVE_IDLE;
        }
    }

    async fn cleanup(&self) {
        self.proxy.http_cleanup().await;
    }
}

/// What reading a request head came to.
enum Head {
    /// The head, and whatever followed it in the same reads.
    Complete(BytesMut),
    /// The client closed (or sent nothing while idle): nothing to answer.
    Closed,
    /// Refused, with the metric reason.
    Refused(&'static str, Rejection),
}

/// Reads one request head: its first byte within `idle`, the rest within the header timeout.
async fn read_head(stream: &mut Stream, idle: Duration, cfg: &EdgeConfig) -> Head {
    let mut buf = BytesMut::with_capacity(4096);
    // Pingora's timer wheel, not tokio's: registering a tokio timer earlier than the driver's next wake-up
    // wakes the driver through its eventfd, a write system call and an extra poll on every keep-alive request.
    match fast_timeout(idle, stream.read_buf(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => {}
        _ => return Head::Closed,
    }
    let deadline = Instant::now() + cfg.header_timeout;
    let mut searched = 0;
    loop {
        if let Some(end) = head_end(&buf, searched) {
            return match check_head(&buf[..end], cfg) {
                Ok(()) => Head::Complete(buf),
                Err(refused) => refused,
            };
        }
        if buf.len() > cfg.max_header_bytes {
            return Head::Refused("header_too_large", Rejection::HeadersTooLarge);
        }
        // The terminator may straddle reads: look again from three bytes back.
        searched = buf.len().saturating_sub(3);
        buf.reserve(4096);
        let left = deadline.saturating_duration_since(Instant::now());
        match fast_timeout(left, stream.read_buf(&mut buf)).await {
            Err(_) => return Head::Refused("header_timeout", Rejection::HeaderTimeout),
            Ok(Ok(0)) | Ok(Err(_)) => return Head::Closed,
            Ok(Ok(_)) => {}
        }
    }
}

/// The end of the head (past its blank line), looking only from `from` on.
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let tail = &buf[from..];
    let mut at = 0;
    while let Some(i) = memchr::memchr(b'\n', &tail[at..]) {
        let nl = from + at + i;
        // "\n\n" or "\n\r\n" ends the head (bare LF line endings are tolerated, as by Pingora's parser).
        match buf.get(nl + 1) {
            Some(b'\n') => return Some(nl + 2),
            Some(b'\r') if buf.get(nl + 2) == Some(&b'\n') => return Some(nl + 3),
            _ => {}
        }
        at += i + 1;
    }
    None
}

/// Checks a complete head: its size, its number of fields and its framing.
fn check_head(head: &[u8], cfg: &EdgeConfig) -> Result<(), Head> {
    if head.len() > cfg.max_header_bytes {
        return Err(Head::Refused(
            "header_too_large",
            Rejection::HeadersTooLarge,
        ));
    }
    let mut fields = vec![httparse::EMPTY_HEADER; cfg.max_headers];
    let mut req = httparse::Request::new(&mut fields);
    match req.parse(head) {
        Ok(_) => {}
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Head::Refused(
                "too_many_headers",
                Rejection::HeadersTooLarge,
            ))
        }
        // Anything else is Pingora's to refuse (400), as it would without the edge.
        Err(_) => return Ok(()),
    }
    framing(&req).map_err(|why| Head::Refused("framing", Rejection::MalformedRequest(why.into())))
}

/// Fields that decide how a request is framed or routed: spelled with `_` they would be taken for the real
/// thing by servers that read `_` as `-`, and disagree with what the gateway saw.
const FRAMING: [&str; 8] = [
    "content-length",
    "transfer-encoding",
    "host",
    "connection",
    "upgrade",
    "te",
    "trailer",
    "expect",
];

/// The framing rules nginx and Envoy apply at the edge.
fn framing(req: &httparse::Request<'_, '_>) -> Result<(), &'static str> {
    let (mut length, mut chunked, mut host) = (false, false, false);
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            length = true;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = true;
        } else if name.eq_ignore_ascii_case("host") {
            host = true;
        } else if name.contains('_') {
            let dashed = name.replace('_', "-");
            if FRAMING.iter().any(|f| dashed.eq_ignore_ascii_case(f)) {
                return Err("a framing header field is spelled with an underscore");
            }
        }
    }
    if length && chunked {
        return Err("both Content-Length and Transfer-Encoding are present");
    }
    if !host && req.version == Some(1) {
        return Err("an HTTP/1.1 request must carry a Host header");
    }
    Ok(())
}

/// Writes a refusal on a connection whose request was never parsed, and closes it.
async fn refuse<S>(mut stream: S, rejection: &Rejection)
where
    S: tokio::io::AsyncWrite + Unpin,
{
    let resp = rejection.render();
    let reason = http::StatusCode::from_u16(resp.status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    let mut out = format!(
        "HTTP/1.1 {} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
        resp.status,
        resp.body.len()
    );
    if let Some(retry) = resp.should_retry {
        out.push_str(&format!("x-should-retry: {retry}\r\n"));
    }
    if let Some(after) = resp.retry_after {
        let ms = after.as_millis().max(1);
        out.push_str(&format!(
            "retry-after: {}\r\nretry-after-ms: {ms}\r\n",
            ms.div_ceil(1000)
        ));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&resp.body);
    // Best effort: the client may already be gone.
    let written = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(&bytes).await?;
        stream.flush().await?;
        stream.shutdown().await
    })
    .await;
    if !matches!(written, Ok(Ok(()))) {
        tracing::debug!("could not answer a refused connection");
    }
}

/// Open client connections, over all and per address.
struct Connections {
    total: AtomicUsize,
    per_address: Box<[AtomicU32]>,
    max_total: usize,
    max_per_address: usize,
}

/// One open connection's place in the counts, given back when dropped.
struct Slot {
    connections: Arc<Connections>,
    address: Option<usize>,
}

impl Connections {
    fn new(max_total: usize, max_per_address: usize) -> Self {
        Self {
            total: AtomicUsize::new(0),
            per_address: (0..ADDRESS_SLOTS).map(|_| AtomicU32::new(0)).collect(),
            max_total,
            max_per_address,
        }
    }

    /// Counts a new connection from `address`, unless a cap is reached.
    fn take(self: &Arc<Self>, address: Option<IpAddr>) -> Option<Slot> {
        if self.total.fetch_add(1, Ordering::AcqRel) >= self.max_total {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        metrics::CONNECTIONS.inc();
        let mut slot = Slot {
            connections: self.clone(),
            address: None,
        };
        if let Some(a) = address {
            let i = address_slot(a);
            let before = self.per_address[i].fetch_add(1, Ordering::AcqRel);
            slot.address = Some(i);
            if before as usize >= self.max_per_address {
                // Dropping `slot` gives both counts back.
                return None;
            }
        }
        Some(slot)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let c = &self.connections;
        if let Some(i) = self.address {
            c.per_address[i].fetch_sub(1, Ordering::AcqRel);
        }
        c.total.fetch_sub(1, Ordering::AcqRel);
        metrics::CONNECTIONS.dec();
    }
}

/// The counter slot of an address: IPv4 whole, IPv6 by its /64 (one host's addresses share one count).
fn address_slot(a: IpAddr) -> usize {
    let key: u64 = match a {
        IpAddr::V4(v4) => u64::from(u32::from(v4)),
        IpAddr::V6(v6) => (u128::from(v6) >> 64) as u64 ^ 0x9e37_79b9_7f4a_7c15,
    };
    // A multiplicative hash: the high bits are well mixed.
    (key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - ADDRESS_SLOTS.trailing_zeros())) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> EdgeConfig {
        EdgeConfig {
            header_timeout: Duration::from_secs(10),
            max_header_bytes: 1024,
            max_headers: 8,
            max_connections: 3,
            max_connections_per_ip: 2,
        }
    }

    fn reason(r: Result<(), Head>) -> &'static str {
        match r {
            Ok(()) => "ok",
            Err(Head::Refused(reason, _)) => reason,
            Err(_) => "other",
        }
    }

    #[test]
    fn the_head_ends_at_its_blank_line_whatever_the_reads() {
        let head = b"POST /v1/x HTTP/1.1\r\nHost: a\r\n\r\nbody";
        // Any search start up to three bytes before the blank line's end finds it (reads resume 3 bytes back).
        for from in 0..=29 {
            assert_eq!(head_end(head, from), Some(32), "{from}");
        }
        assert_eq!(head_end(b"GET / HTTP/1.1\nHost: a\n\nrest", 0), Some(24));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n", 0), None);
    }

    #[test]
    fn heads_are_refused_for_size_count_and_framing() {
        let c = cfg();
        let ok = b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\n\r\n";
        assert_eq!(reason(check_head(ok, &c)), "ok");
        let many: String = (0..9).map(|i| format!("x-h{i}: v\r\n")).collect();
        let many = format!("GET / HTTP/1.1\r\nHost: gw\r\n{many}\r\n");
        assert_eq!(reason(check_head(many.as_bytes(), &c)), "too_many_headers");
        let big = format!(
            "GET / HTTP/1.1\r\nHost: gw\r\nx-big: {}\r\n\r\n",
            "a".repeat(1100)
        );
        assert_eq!(reason(check_head(big.as_bytes(), &c)), "header_too_large");
        let cases: [&[u8]; 5] = [
            b"POST / HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: gw\r\nTransfer_Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: gw\r\ncontent_length: 5\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: y\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: gw\r\nUpgrade_: x\r\nHOST_NAME: z\r\n\r\n",
        ];
        for (i, head) in cases.iter().enumerate() {
            let want = if i == 4 { "ok" } else { "framing" };
            assert_eq!(reason(check_head(head, &c)), want, "case {i}");
        }
        // HTTP/1.0 may omit Host.
        assert_eq!(reason(check_head(b"GET / HTTP/1.0\r\n\r\n", &c)), "ok");
    }

    #[test]
    fn connection_caps_count_and_give_back() {
        let c = Arc::new(Connections::new(3, 2));
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let b: IpAddr = "10.0.0.2".parse().expect("ip");
        let s1 = c.take(Some(a)).expect("1");
        let s2 = c.take(Some(a)).expect("2");
        assert!(c.take(Some(a)).is_none(), "per address");
        let s3 = c.take(Some(b)).expect("another address");
        assert!(c.take(Some(b)).is_none(), "over all");
        drop(s1);
        let again = c.take(Some(a)).expect("given back");
        drop((s2, s3, again));
        assert_eq!(c.total.load(Ordering::Acquire), 0);
        assert!(c.per_address.iter().all(|n| n.load(Ordering::Acquire) == 0));
        // IPv6 addresses of one /64 share a count.
        let x: IpAddr = "2001:db8::1".parse().expect("ip");
        let y: IpAddr = "2001:db8::ffff".parse().expect("ip");
        assert_eq!(address_slot(x), address_slot(y));
    }
}
