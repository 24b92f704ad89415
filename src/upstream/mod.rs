//! The one exchange layer: everything the gateway knows about talking to an upstream, for every path that
//! talks to one — the relay (requests whose body the gateway consumed), Pingora's proxy loop (requests it did
//! not), and the audit webhook.
//!
//! - [`Upstreams`] (`pool.rs`, `route.rs`): the configured pools. A request is routed once to one pool by its
//!   model, its path or the default ([`route::Router`]); within the pool an endpoint is selected
//!   (pingora-load-balancing: weighted round robin, or least connections), among those passing active health
//!   checks and not passively ejected; host names are resolved again in the background (`dns.rs`).
//! - [`Target`]: where one endpoint is and the two header edits every request to it needs, whoever sends it:
//!   `Host` and the base path. [`Target::request`] builds a relayed request from the client's: hop-by-hop
//!   fields dropped ([`HOP_BY_HOP`]), the held body's length declared.
//! - [`send`]: connect (pooled), send a request with a body the gateway holds, read the response header, under
//!   the one retry policy ([`retry`]). The answer is read through the returned [`Exchange`]; its connection goes
//!   back to the pool only when the answer was read to its end ([`Exchange::finish`]). Dropping an exchange
//!   drops its connection — which is how a cut stream cancels the upstream's generation.
//! - [`Upstream`]: one fixed target with its own connections (the audit webhook).
//!
//! Pingora's proxy loop owns a connector of its own: `HttpProxy::new` creates it and pingora-proxy 0.9.1 has no
//! way to hand it one (`ProxyServiceBuilder::custom` takes only a custom-protocol connector). Requests on the
//! `Proxy` path therefore use Pingora's pool of connections to the same peers; they take the endpoint, the
//! timeouts and the retry policy from here. Everything else shares the connector of [`Upstreams`].
//!
//! Nothing here knows about inspection, callers or the client's connection.

pub mod dns;
pub mod pool;
pub mod retry;
pub mod route;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::Uri;
use pingora::connectors::http::Connector;
use pingora::connectors::ConnectorOptions;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::client::HttpSession;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, Result};

use crate::config::{ConfigError, UpstreamConfig};

pub use pool::{Endpoint, Pool, PoolService, Upstreams};

/// Hop-by-hop fields (RFC 9110 §7.6.1) and the framing fields each side sets for itself: never copied from
/// one connection to the other by the relay.
pub const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
];

/// Where one endpoint is: the `Host` it expects, its base path, and a peer template (TLS, SNI, timeouts) that
/// is pointed at one of its addresses per request.
#[derive(Clone)]
pub struct Target {
    peer: HttpPeer,
    authority: Arc<str>,
    base_path: Arc<str>,
}

impl Target {
    /// `addr`: the first address to use (a pool points the peer at each selected address in turn).
    pub fn new(cfg: &UpstreamConfig, addr: SocketAddr) -> Self {
        let mut peer = HttpPeer::new(addr, cfg.tls, cfg.host.clone());
        let o = &mut peer.options;
        o.connection_timeout = Some(cfg.connect_timeout);
        o.read_timeout = Some(cfg.read_timeout);
        o.write_timeout = Some(cfg.write_timeout);
        o.idle_timeout = Some(cfg.idle_timeout);
        // Certificates are verified against the host name the operator configured, which is also the SNI.
        o.verify_cert = true;
        o.verify_hostname = true;
        Self {
            peer,
            authority: Arc::from(cfg.authority.as_str()),
            base_path: Arc::from(cfg.base_path.as_str()),
        }
    }

    /// This endpoint at `addr` (one address of its host).
    pub fn at(&self, addr: SocketAddr) -> Target {
        let mut t = self.clone();
        t.peer._address = pingora::protocols::l4::socket::SocketAddr::Inet(addr);
        t
    }

    /// The peer (address, TLS name, timeouts) requests to this endpoint connect to.
    pub fn peer(&self) -> &HttpPeer {
        &self.peer
    }

    /// The `Host` this endpoint expects.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// The path of the endpoint's URL (`""` when it has none).
    pub fn base_path(&self) -> &str {
        &self.base_path
    }

    /// Points a request at this endpoint: `Host` set to its authority, its base path (if any) prepended.
    pub fn target(&self, req: &mut RequestHeader) -> Result<()> {
        req.insert_header(http::header::HOST, &*self.authority)?;
        if let Some(uri) = self.rewrite_uri(&req.uri) {
            req.set_uri(uri);
        }
        Ok(())
    }

    /// A request to relay with a body of `body_len` bytes the gateway holds: the client's header without its
    /// hop-by-hop and framing fields, pointed at this endpoint, with the length declared.
    pub fn request(&self, client: &RequestHeader, body_len: usize) -> Result<RequestHeader> {
        let mut req = client.clone();
        // The exchange speaks HTTP/1.1 to the upstream whatever the client spoke (an HTTP/2 request's header
        // says HTTP/2, which would go out as the request line's version).
        req.set_version(http::Version::HTTP_11);
        for h in HOP_BY_HOP {
            req.remove_header(h);
        }
        self.target(&mut req)?;
        req.insert_header(http::header::CONTENT_LENGTH, body_len.to_string())?;
        Ok(req)
    }

    /// Prepends the endpoint URL's base path, if it has one.
    fn rewrite_uri(&self, uri: &Uri) -> Option<Uri> {
        if self.base_path.is_empty() {
            return None;
        }
        let pq = uri.path_and_query().map_or("/", |pq| pq.as_str());
        format!("{}{pq}", self.base_path).parse().ok()
    }
}

/// One fixed upstream with its own pool of connections (the audit webhook's receiver).
pub struct Upstream {
    target: Target,
    connector: Connector,
}

impl Upstream {
    /// Resolves the host (once: the webhook's receiver is resolved at start) and builds the peer. `options`
    /// configure the pool (its size) and TLS (the trusted roots); `None` takes Pingora's defaults.
    pub fn new(
        cfg: &UpstreamConfig,
        options: Option<ConnectorOptions>,
    ) -> Result<Self, ConfigError> {
        use std::net::ToSocketAddrs;
        let err = |message: String| ConfigError {
            source_name: "upstream".into(),
            field: "url".into(),
            message,
        };
        let addr = (cfg.host.as_str(), cfg.port)
            .to_socket_addrs()
            .map_err(|e| err(format!("cannot resolve {:?}: {e}", cfg.host)))?
            .next()
            .ok_or_else(|| err(format!("cannot resolve {:?}: no address", cfg.host)))?;
        Ok(Self {
            target: Target::new(cfg, addr),
            connector: Connector::new(options),
        })
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Sends `req` and `body` (see [`send`]).
    pub async fn send(&self, req: &RequestHeader, body: &Bytes) -> Result<Exchange<'_>> {
        send(&self.connector, self.target.peer.clone(), req, body).await
    }
}

/// Connects to `peer` (reusing a pooled connection when one is idle), sends `req` and `body`, and reads the
/// response header. Failures are retried as [`retry`] says; errors come back marked as the upstream's.
pub async fn send<'a>(
    connector: &'a Connector,
    peer: HttpPeer,
    req: &RequestHeader,
    body: &Bytes,
) -> Result<Exchange<'a>> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let (mut session, reused) = connector
            .get_http_session(&peer)
            .await
            .map_err(|e| e.into_up())?;
        if let HttpSession::H1(s) = &mut session {
            s.read_timeout = peer.options.read_timeout;
            s.write_timeout = peer.options.write_timeout;
        }
        let sent = async {
            session.write_request_header(Box::new(req.clone())).await?;
            session.write_request_body(body.clone(), true).await?;
            session.finish_request_body().await?;
            session.read_response_header().await
        }
        .await
        .map_err(|e| e.into_up());
        match sent {
            Ok(()) => {
                return Ok(Exchange {
                    connector,
                    peer,
                    session,
                })
            }
            Err(e) if retry::again(&e, reused, attempt, true) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// One answer being read from the upstream. Dropped before its end, it takes its connection with it.
pub struct Exchange<'a> {
    connector: &'a Connector,
    peer: HttpPeer,
    session: HttpSession,
}

impl Exchange<'_> {
    /// The response header (read by [`send`]).
    pub fn header(&self) -> Result<&ResponseHeader> {
        self.session.response_header().ok_or_else(|| {
            Error::explain(ErrorType::InvalidHTTPHeader, "no response header").into_up()
        })
    }

    /// The next piece of the answer; `None` at its end.
    pub async fn read(&mut self) -> Result<Option<Bytes>> {
        self.session
            .read_response_body()
            .await
            .map_err(|e| e.into_up())
    }

    /// The whole answer, `first` (what was read of it already) included, if it is at most `cap` bytes
    /// (`Ok(None)` as soon as it is known to be larger).
    pub async fn read_all(&mut self, first: &[u8], cap: usize) -> Result<Option<Vec<u8>>> {
        if first.len() > cap {
            return Ok(None);
        }
        let mut all = first.to_vec();
        while let Some(chunk) = self.read().await? {
            if all.len() + chunk.len() > cap {
                return Ok(None);
            }
            all.extend_from_slice(&chunk);
        }
        Ok(Some(all))
    }

    /// The answer was read to its end: the connection goes back to the pool (unless the upstream said it
    /// closes it).
    pub async fn finish(mut self) {
        if let HttpSession::H1(s) = &mut self.session {
            s.respect_keepalive();
        }
        let idle = self.peer.options.idle_timeout;
        self.connector
            .release_http_session(self.session, &self.peer, idle)
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(url_base: &str) -> Target {
        let cfg = UpstreamConfig {
            url: format!("http://127.0.0.1:9{url_base}"),
            tls: false,
            host: "127.0.0.1".into(),
            port: 9,
            authority: "127.0.0.1:9".into(),
            base_path: url_base.into(),
            connect_timeout: std::time::Duration::from_secs(1),
            read_timeout: std::time::Duration::from_secs(1),
            write_timeout: std::time::Duration::from_secs(1),
            idle_timeout: std::time::Duration::from_secs(1),
            ca_file: None,
        };
        Target::new(&cfg, "127.0.0.1:9".parse().expect("addr"))
    }

    #[test]
    fn relayed_requests_lose_hop_by_hop_fields_and_declare_their_length() {
        let up = upstream("/base");
        let mut client =
            RequestHeader::build("POST", b"/v1/chat/completions?x=1", None).expect("req");
        for (k, v) in [
            ("host", "gateway.local"),
            ("connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("authorization", "Bearer sk-x"),
        ] {
            client.insert_header(k, v).expect("header");
        }
        let req = up.request(&client, 42).expect("request");
        for h in ["connection", "transfer-encoding", "te", "upgrade"] {
            assert!(req.headers.get(h).is_none(), "{h} is hop-by-hop");
        }
        assert_eq!(req.headers["host"], "127.0.0.1:9");
        assert_eq!(req.headers["content-length"], "42");
        assert_eq!(req.headers["authorization"], "Bearer sk-x");
        assert_eq!(req.uri.to_string(), "/base/v1/chat/completions?x=1");
        // Without a base path the URI is left alone.
        let req = upstream("").request(&client, 0).expect("request");
        assert_eq!(req.uri.to_string(), "/v1/chat/completions?x=1");
    }
}
