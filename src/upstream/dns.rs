//! Upstream host names resolved in the background: every A and AAAA record of every URL of a pool, asked
//! again on each round of the load balancer's discovery, so that a pool follows its upstream's DNS.
//!
//! - [`Resolver`]: one asynchronous stub resolver (the system's `resolv.conf` and hosts file, or the name
//!   servers the operator names). [`Resolver::lookup`] returns all addresses of a name, asks both families,
//!   is bounded in time, and keeps **no cache**: the gateway re-resolves on its own interval, and a cache
//!   could only answer it with something older than what the name server says now (see [`Resolver::new`]).
//! - [`DnsDiscovery`]: pingora-load-balancing's [`ServiceDiscovery`] over a pool's [`Target`]s — one
//!   [`Backend`] per resolved address, tagged with the [`TargetIndex`] of the URL it came from. A target whose
//!   lookup fails keeps its last good addresses: a DNS outage must not empty a pool that still works.
//!
//! This module never runs on a request's path: the load balancer's background service calls
//! [`DnsDiscovery::discover`], and requests read the membership it published. Nothing here knows about
//! requests, peers or TLS; the caller maps a backend back to its URL (host header, SNI, base path) through
//! [`target_index`].

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::join_all;
use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig,
    ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::NetError;
use hickory_resolver::TokioResolver;
use pingora::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora::{Error, ErrorType};
use pingora_load_balancing::discovery::ServiceDiscovery;
use pingora_load_balancing::{Backend, Extensions};

use crate::metrics;

/// How long one lookup may take when the caller has no opinion: both families, every retry, all name servers.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// A failed resolution. Messages name the host, never more of the URL.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// The system's resolver configuration (`/etc/resolv.conf`) could not be read.
    #[error("cannot read the system's DNS configuration: {0}")]
    SystemConfig(#[source] NetError),
    /// The resolver could not be built from its configuration.
    #[error("cannot build the DNS resolver: {0}")]
    Build(#[source] NetError),
    /// The name server answered with an error, or none answered.
    #[error("{host:?} did not resolve: {source}")]
    Lookup {
        /// The host name asked for.
        host: String,
        /// What the resolver reported.
        #[source]
        source: NetError,
    },
    /// No answer within the lookup's time bound.
    #[error("{host:?} did not resolve within {timeout:?}")]
    Timeout {
        /// The host name asked for.
        host: String,
        /// The bound that ran out.
        timeout: Duration,
    },
    /// The name exists but has neither an A nor an AAAA record.
    #[error("{host:?} has no A or AAAA record")]
    NoAddress {
        /// The host name asked for.
        host: String,
    },
}

/// An asynchronous DNS resolver for upstream host names: all A and AAAA records, no cache, bounded in time.
pub struct Resolver {
    inner: TokioResolver,
    timeout: Duration,
}

impl Resolver {
    /// Builds a resolver. `name_servers` empty: the system's configuration (`/etc/resolv.conf` for the name
    /// servers, search domains and `ndots`; `/etc/hosts` consulted first), both read once, here. Otherwise
    /// exactly those servers (UDP, TCP for truncated answers), no search domains and no hosts file: an
    /// operator who names the servers gets their answers. `timeout` bounds each [`Resolver::lookup`]
    /// whole (both families, the retry, every server); zero is raised to one millisecond.
    ///
    /// The resolver keeps no cache: its size is zero, and every TTL is capped at zero so that an entry the
    /// cache has not evicted yet is already stale when read. Each lookup therefore asks the name servers.
    /// That is what a re-resolution on the gateway's interval is for — a cached answer held past a short
    /// record TTL, or past the interval, would keep a pool on addresses the name server no longer gives.
    /// The cost is two queries per target per interval; a caching stub on the host (nscd, systemd-resolved)
    /// still answers from its own cache within the record's TTL, which is the TTL honoured.
    pub fn new(name_servers: &[SocketAddr], timeout: Duration) -> Result<Self, DnsError> {
        let timeout = timeout.max(Duration::from_millis(1));
        let provider = TokioRuntimeProvider::default();
        let mut builder = if name_servers.is_empty() {
            TokioResolver::builder_tokio().map_err(DnsError::SystemConfig)?
        } else {
            let servers = name_servers.iter().map(name_server).collect();
            let mut b = TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(servers),
                provider,
            );
            b.options_mut().use_hosts_file = ResolveHosts::Never;
            b
        };
        configure(builder.options_mut(), timeout);
        Ok(Self {
            inner: builder.build().map_err(DnsError::Build)?,
            timeout,
        })
    }

    /// The addresses of `host`, sorted, without duplicates: an IP literal (with or without the brackets of
    /// a URL's IPv6 host) as it is, without a query; otherwise every A and AAAA record, both families asked
    /// at once. One family alone is an answer; neither is an error. Bounded by the resolver's timeout.
    pub async fn lookup(&self, host: &str) -> Result<Vec<IpAddr>, DnsError> {
        if let Some(ip) = ip_literal(host) {
            return Ok(vec![ip]);
        }
        let answer = tokio::time::timeout(self.timeout, self.inner.lookup_ip(host))
            .await
            .map_err(|_| DnsError::Timeout {
                host: host.to_string(),
                timeout: self.timeout,
            })?
            .map_err(|source| DnsError::Lookup {
                host: host.to_string(),
                source,
            })?;
        let mut ips: Vec<IpAddr> = answer.iter().collect();
        ips.sort_unstable();
        ips.dedup();
        if ips.is_empty() {
            return Err(DnsError::NoAddress {
                host: host.to_string(),
            });
        }
        Ok(ips)
    }
}

/// One name server at `addr`: UDP first, TCP when an answer comes back truncated.
fn name_server(addr: &SocketAddr) -> NameServerConfig {
    let mut udp = ConnectionConfig::udp();
    udp.port = addr.port();
    let mut tcp = ConnectionConfig::tcp();
    tcp.port = addr.port();
    NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
}

/// The options every [`Resolver`] shares, whatever the system configuration said.
fn configure(o: &mut ResolverOpts, timeout: Duration) {
    // Both families in parallel; either alone is an answer (hickory returns the one that succeeded).
    o.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    // No cache (see `Resolver::new`). The TTL caps make a stale entry unreadable even before eviction.
    o.cache_size = 0;
    o.positive_max_ttl = Some(Duration::ZERO);
    o.negative_max_ttl = Some(Duration::ZERO);
    // Two tries of half the budget each: a lost UDP datagram costs one try, not the whole lookup. The
    // outer bound in `lookup` holds whatever the pool of servers does.
    o.attempts = 2;
    o.timeout = (timeout / 2).max(Duration::from_millis(1));
}

/// `host` as an IP address if it is one: `10.0.0.1`, `::1`, or `[::1]` as a URL writes it.
fn ip_literal(host: &str) -> Option<IpAddr> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse().ok()
}

/// One URL of a pool, as discovery sees it: the host to resolve, the port and weight its backends get, and
/// the position of the URL in its pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Host name or IP literal of the URL.
    pub host: String,
    /// Port of the URL (explicit or the scheme's default).
    pub port: u16,
    /// Weight of each backend the host resolves to.
    pub weight: usize,
    /// Which URL of the pool this is; carried into [`Backend::ext`] as a [`TargetIndex`].
    pub index: usize,
}

impl Target {
    pub fn new(host: &str, port: u16, weight: usize, index: usize) -> Self {
        Self {
            host: host.to_string(),
            port,
            weight,
            index,
        }
    }
}

/// The index of the URL a [`Backend`] came from, stored in its `ext`. Read it with [`target_index`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TargetIndex(pub usize);

/// Which URL of the pool `backend` belongs to (`None` for a backend this module did not build).
pub fn target_index(backend: &Backend) -> Option<usize> {
    backend.ext.get::<TargetIndex>().map(|t| t.0)
}

/// Discovery of a pool's backends through DNS, for a `pingora_load_balancing::LoadBalancer`.
///
/// Each [`ServiceDiscovery::discover`] resolves every target at once and returns one [`Backend`] per
/// address, weighted as its target, tagged with its target's [`TargetIndex`]. Backend identity is the
/// address and the weight only (`ext` is ignored by the crate's `Eq`/`Ord`/`Hash`): two URLs that resolve to
/// the same address with the same weight collapse into one backend, tagged with the URL listed first.
///
/// A target whose lookup fails keeps the addresses of its last successful lookup; the failure is logged at
/// warn (the host name) and counted in `promptgate_upstream_dns_failures_total`. When no target has ever
/// resolved, `discover` fails, and the load balancer keeps the membership it had.
pub struct DnsDiscovery {
    resolver: Arc<Resolver>,
    targets: Vec<Target>,
    pool: Arc<str>,
    /// The last good addresses of each target (same order as `targets`; `None`: never resolved). Written
    /// only after every lookup of a round has finished, so a round cancelled mid-way changes nothing.
    last: Mutex<Vec<Option<Vec<IpAddr>>>>,
}

/// Label of the failure counter for a discovery built without a pool name.
const UNNAMED_POOL: &str = "default";

impl DnsDiscovery {
    /// Discovery of `targets` with `resolver`. `pool` names the pool in the failure counter's `upstream`
    /// label and in logs (`"default"` when `None`).
    pub fn new(resolver: Arc<Resolver>, targets: Vec<Target>, pool: Option<Arc<str>>) -> Self {
        let last = Mutex::new(vec![None; targets.len()]);
        Self {
            resolver,
            targets,
            pool: pool.unwrap_or_else(|| Arc::from(UNNAMED_POOL)),
            last,
        }
    }

    /// The targets, in the order given.
    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// Resolves every target at once and folds the answers into the last good sets; the backends of
    /// the resulting sets, or `None` when no target has ever resolved.
    async fn refresh(&self) -> Option<BTreeSet<Backend>> {
        let answers = join_all(self.targets.iter().map(|t| self.resolver.lookup(&t.host))).await;
        // Not held across an await: the lookups are done.
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        for ((target, answer), slot) in self.targets.iter().zip(answers).zip(last.iter_mut()) {
            match answer {
                Ok(ips) => {
                    if slot.as_ref() != Some(&ips) {
                        tracing::info!(pool = %self.pool, host = %target.host, addresses = ips.len(),
                            "upstream host resolved to a new set of addresses");
                    }
                    *slot = Some(ips);
                }
                Err(e) => {
                    metrics::UPSTREAM_DNS_FAILURES
                        .with_label_values(&[&*self.pool])
                        .inc();
                    tracing::warn!(pool = %self.pool, host = %target.host, error = %e,
                        kept = slot.as_ref().map_or(0, Vec::len),
                        "upstream host did not resolve; keeping its last addresses");
                }
            }
        }
        backends(&self.targets, &last)
    }
}

/// The backends of `targets` given each one's addresses (`None`: never resolved, contributes nothing), or
/// `None` when no target has any. Targets are visited in order, and a set keeps the first of equal
/// backends: of two URLs collapsing into one backend, the one listed first tags it.
fn backends(targets: &[Target], addresses: &[Option<Vec<IpAddr>>]) -> Option<BTreeSet<Backend>> {
    if addresses.iter().all(Option::is_none) {
        return None;
    }
    let mut set = BTreeSet::new();
    for (target, ips) in targets.iter().zip(addresses) {
        for ip in ips.iter().flatten() {
            let mut ext = Extensions::new();
            ext.insert(TargetIndex(target.index));
            set.insert(Backend {
                addr: PeerAddr::Inet(SocketAddr::new(*ip, target.port)),
                weight: target.weight,
                ext,
            });
        }
    }
    Some(set)
}

#[async_trait]
impl ServiceDiscovery for DnsDiscovery {
    async fn discover(&self) -> pingora::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        match self.refresh().await {
            // No readiness opinion: health checks, if any, decide.
            Some(set) => Ok((set, HashMap::new())),
            None => Err(Error::explain(
                ErrorType::Custom("upstream DNS"),
                format!("no host of pool {:?} has resolved yet", &*self.pool),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn ip_literals_are_recognised_with_or_without_brackets() {
        let cases: [(&str, Option<&str>); 7] = [
            ("10.0.0.1", Some("10.0.0.1")),
            ("::1", Some("::1")),
            ("[::1]", Some("::1")),
            ("[2001:db8::5]", Some("2001:db8::5")),
            ("api.example.com", None),
            ("[api.example.com]", None),
            ("10.0.0.1.nip.io", None),
        ];
        for (host, want) in cases {
            assert_eq!(ip_literal(host), want.map(ip), "{host}");
        }
    }

    #[test]
    fn one_backend_per_address_with_the_targets_port_weight_and_index() {
        let targets = [Target::new("a", 443, 3, 0), Target::new("b", 8080, 1, 1)];
        let addrs = [
            Some(vec![ip("10.0.0.1"), ip("2001:db8::1")]),
            Some(vec![ip("10.0.0.2")]),
        ];
        let set = backends(&targets, &addrs).expect("resolved");
        let got: Vec<(String, usize, Option<usize>)> = set
            .iter()
            .map(|b| (b.addr.to_string(), b.weight, target_index(b)))
            .collect();
        let mut want = vec![
            ("10.0.0.1:443".to_string(), 3, Some(0)),
            ("[2001:db8::1]:443".to_string(), 3, Some(0)),
            ("10.0.0.2:8080".to_string(), 1, Some(1)),
        ];
        want.sort();
        let mut got_sorted = got.clone();
        got_sorted.sort();
        assert_eq!(got_sorted, want);
    }

    #[test]
    fn a_target_never_resolved_contributes_nothing_and_none_resolved_is_none() {
        let targets = [Target::new("a", 80, 1, 0), Target::new("b", 80, 1, 1)];
        assert!(backends(&targets, &[None, None]).is_none());
        let set = backends(&targets, &[None, Some(vec![ip("10.0.0.9")])]).expect("one resolved");
        assert_eq!(set.len(), 1);
        assert_eq!(set.iter().next().and_then(target_index), Some(1));
    }

    #[test]
    fn two_urls_on_one_address_and_weight_collapse_into_the_first_listed() {
        let targets = [Target::new("a", 443, 1, 0), Target::new("b", 443, 1, 1)];
        let same = Some(vec![ip("10.0.0.1")]);
        let set = backends(&targets, &[same.clone(), same]).expect("resolved");
        assert_eq!(set.len(), 1);
        assert_eq!(set.iter().next().and_then(target_index), Some(0));
        // A different weight is a different backend: both stay.
        let targets = [Target::new("a", 443, 1, 0), Target::new("b", 443, 2, 1)];
        let same = Some(vec![ip("10.0.0.1")]);
        assert_eq!(
            backends(&targets, &[same.clone(), same]).map(|s| s.len()),
            Some(2)
        );
    }

    #[test]
    fn a_backend_built_elsewhere_has_no_target_index() {
        let b = Backend::new("127.0.0.1:80").expect("backend");
        assert_eq!(target_index(&b), None);
    }

    #[tokio::test]
    async fn an_ip_literal_resolves_to_itself_without_a_name_server() {
        // A name server nobody listens on: any query would time out, and the literal must not ask.
        let r = Resolver::new(
            &["127.0.0.1:9".parse().expect("addr")],
            Duration::from_secs(1),
        )
        .expect("resolver");
        assert_eq!(r.lookup("[::1]").await.expect("literal"), vec![ip("::1")]);
        assert_eq!(
            r.lookup("192.0.2.7").await.expect("literal"),
            vec![ip("192.0.2.7")]
        );
    }
}
