//! The upstream peer, built once from validated config and cloned per request (building one resolves DNS and
//! can panic; cloning does neither).

use std::sync::Arc;

use http::Uri;
use pingora::upstreams::peer::HttpPeer;

use crate::config::{ConfigError, UpstreamConfig};

/// Where requests go.
#[derive(Clone)]
pub struct Upstream {
    peer: HttpPeer,
    authority: Arc<str>,
    base_path: Arc<str>,
}

impl Upstream {
    /// Resolves the host and builds the peer; fails when the host does not resolve.
    pub fn new(cfg: &UpstreamConfig) -> Result<Self, ConfigError> {
        let mut peer = HttpPeer::new(cfg.resolve()?, cfg.tls, cfg.host.clone());
        let o = &mut peer.options;
        o.connection_timeout = Some(cfg.connect_timeout);
        o.read_timeout = Some(cfg.read_timeout);
        o.write_timeout = Some(cfg.write_timeout);
        o.idle_timeout = Some(cfg.idle_timeout);
        // Certificates are verified against the host name the operator configured, which is also the SNI.
        // The trusted roots are the system's, or only `upstream.ca_file` when set (see `server.rs`).
        o.verify_cert = true;
        o.verify_hostname = true;
        Ok(Self {
            peer,
            authority: Arc::from(cfg.authority.as_str()),
            base_path: Arc::from(cfg.base_path.as_str()),
        })
    }

    pub fn peer(&self) -> Box<HttpPeer> {
        Box::new(self.peer.clone())
    }

    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// Prepends the upstream URL's base path, if it has one.
    pub fn rewrite_uri(&self, uri: &Uri) -> Option<Uri> {
        if self.base_path.is_empty() {
            return None;
        }
        let pq = uri.path_and_query().map_or("/", |pq| pq.as_str());
        format!("{}{pq}", self.base_path).parse().ok()
    }
}
