//! The pools requests are routed to. One [`Pool`] per `[[upstream]]` entry: its endpoints (every resolved
//! address of every URL, from the pool's discovery), a pingora-load-balancing [`LoadBalancer`] over them, and
//! the state selection needs that the balancer does not keep — requests in flight per endpoint (for least
//! connections) and passive ejection (an endpoint whose connection failed or timed out gets no traffic for
//! `eject_ms`).
//!
//! An endpoint gets a request when it is in the current membership, passes the active health check (a `GET`
//! of the configured path, any answer below 500; [`PoolHealth`]), is not ejected, and was not already tried
//! for this request. None left: the request fails with 503 `no_healthy_upstream`.
//!
//! The request path reads only atomics and `ArcSwap` snapshots: membership and health are the balancer's
//! (lock-free on selection); the per-endpoint state is a copy-on-write map that changes only when a new
//! address is first seen. [`PoolService`] runs discovery (DNS) and the health checks in the background and
//! publishes the gauges.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::connectors::http::Connector;
use pingora::connectors::ConnectorOptions;
use pingora::http::RequestHeader;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::Result;
use pingora_load_balancing::health_check::HealthCheck;
use pingora_load_balancing::selection::RoundRobin;
use pingora_load_balancing::{Backend, Backends, LoadBalancer};
use prometheus::{IntCounter, IntGauge};

use super::dns;
use super::route::Router;
use super::Target;
use crate::auth::keys::UpstreamCredential;
use crate::config::{Balance, HealthConfig, KeyHeader, PoolConfig};
use crate::metrics;

/// The `User-Agent` of health checks: an upstream's logs (and the mock) can tell them from client requests.
pub const HEALTH_CHECK_AGENT: &str = "promptgate-health-check";

/// All pools, the router between them, and the connections the gateway's own exchanges use.
pub struct Upstreams {
    pub pools: Vec<Arc<Pool>>,
    pub router: Router,
    pub connector: Connector,
}

impl Upstreams {
    /// Builds every pool (no I/O: discovery and health checks start with the [`PoolService`]s).
    /// Fails only when a pool's resolver cannot be built (the system's resolver configuration unreadable).
    pub fn new(
        cfg: &[PoolConfig],
        options: Option<ConnectorOptions>,
    ) -> Result<Self, dns::DnsError> {
        let names: Vec<&str> = cfg.iter().map(|p| p.name.as_str()).collect();
        let pools = cfg
            .iter()
            .map(|p| {
                let fallback = p
                    .fallback
                    .as_ref()
                    .and_then(|f| names.iter().position(|n| n == f));
                Pool::new(p, fallback, options.clone()).map(Arc::new)
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            pools,
            router: Router::new(cfg),
            connector: Connector::new(options),
        })
    }

    /// The pool serving `model` on `path`, if any.
    pub fn route(&self, model: Option<&str>, path: &str) -> Option<usize> {
        self.router.route(model, path)
    }

    /// The background services: one per pool (discovery, health checks, gauges).
    pub fn services(&self) -> Vec<PoolService> {
        self.pools
            .iter()
            .map(|p| PoolService { pool: p.clone() })
            .collect()
    }
}

/// What selection needs to know of one endpoint address beyond the balancer's health.
#[derive(Debug, Default)]
struct EndpointState {
    in_flight: AtomicUsize,
    /// Milliseconds since the pool's epoch until which the endpoint is ejected (0: never ejected).
    ejected_until: AtomicU64,
}

/// Counts one request on an endpoint for as long as it lives (least connections reads the count).
#[derive(Debug)]
pub struct InFlight(Arc<EndpointState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The endpoint selected for one attempt.
pub struct Endpoint {
    pub addr: SocketAddr,
    /// Its URL's `Host`, base path and TLS name, with the peer pointed at `addr`.
    pub target: Target,
    _in_flight: InFlight,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("addr", &self.addr)
            .finish()
    }
}

/// Why an attempt on an endpoint failed, as far as the pool cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The connection could not be made (refused, unreachable, TLS, connect timeout): nothing was sent.
    Connect,
    /// The endpoint did not answer in time after the request was sent.
    Timeout,
}

/// One pool: see the module doc.
pub struct Pool {
    pub name: Arc<str>,
    pub credential: Option<UpstreamCredential>,
    key_header: KeyHeader,
    pub model_map: HashMap<String, String>,
    /// The pool a 429 / 5xx answer is retried on.
    pub fallback: Option<usize>,
    /// The model ids the pool's upstream listed in its last answer to a `GET /v1/models` health check.
    listed: Arc<ArcSwap<Vec<String>>>,
    targets: Vec<Target>,
    lb: LoadBalancer<RoundRobin>,
    balance: Balance,
    state: ArcSwap<HashMap<SocketAddr, Arc<EndpointState>>>,
    /// Where least-connections starts among equals (spreads ties).
    turn: AtomicUsize,
    eject: Duration,
    epoch: Instant,
    health: Option<HealthConfig>,
    dns_refresh: Duration,
    /// The first discovery has run: until then a request waits for it (at start, briefly).
    discovered: AtomicBool,
    first: tokio::sync::Notify,
    /// Waited for the first discovery at most this long.
    connect_timeout: Duration,
    requests: IntCounter,
    ejections: IntCounter,
    endpoints_gauge: IntGauge,
    healthy_gauge: IntGauge,
}

impl Pool {
    fn new(
        cfg: &PoolConfig,
        fallback: Option<usize>,
        options: Option<ConnectorOptions>,
    ) -> Result<Self, dns::DnsError> {
        let unspecified: SocketAddr = ([0, 0, 0, 0], 0).into();
        let targets: Vec<Target> = cfg
            .endpoints
            .iter()
            .map(|e| Target::new(&e.target, unspecified))
            .collect();
        // A lookup round ends well before the next one is due.
        let timeout = cfg.dns_refresh.min(dns::DEFAULT_TIMEOUT);
        let resolver = Arc::new(dns::Resolver::new(&cfg.dns_servers, timeout)?);
        let hosts = cfg
            .endpoints
            .iter()
            .enumerate()
            .map(|(index, e)| dns::Target::new(&e.target.host, e.target.port, e.weight, index))
            .collect();
        let discovery = dns::DnsDiscovery::new(resolver, hosts, Some(Arc::from(cfg.name.as_str())));
        let mut lb = LoadBalancer::from_backends(Backends::new(Box::new(discovery)));
        let listed = Arc::new(ArcSwap::default());
        if let Some(h) = &cfg.health {
            lb.set_health_check(Box::new(PoolHealth {
                name: Arc::from(cfg.name.as_str()),
                targets: targets.clone(),
                path: h.path.clone(),
                timeout: h.timeout,
                healthy_after: h.healthy_after,
                unhealthy_after: h.unhealthy_after,
                credential: cfg.credential.clone(),
                key_header: cfg.key_header,
                listed: (h.path == "/v1/models").then(|| listed.clone()),
                connector: Connector::new(options),
            }));
        }
        let name = cfg.name.as_str();
        let errors = |kind| metrics::UPSTREAM_ATTEMPT_ERRORS.with_label_values(&[name, kind]);
        // Every kind of a pool is listed from the start (a dashboard sees zeros, not gaps).
        for kind in ["connect", "timeout", "other", "status", "no_healthy"] {
            errors(kind);
        }
        // Counted by discovery on its first failure; exported at zero until then like the others.
        metrics::UPSTREAM_DNS_FAILURES.with_label_values(&[name]);
        Ok(Self {
            name: Arc::from(name),
            credential: cfg.credential.clone(),
            key_header: cfg.key_header,
            model_map: cfg.model_map.clone().into_iter().collect(),
            fallback,
            listed,
            targets,
            lb,
            balance: cfg.balance,
            state: ArcSwap::default(),
            turn: AtomicUsize::new(0),
            eject: cfg.eject,
            epoch: Instant::now(),
            health: cfg.health.clone(),
            dns_refresh: cfg.dns_refresh,
            discovered: AtomicBool::new(false),
            first: tokio::sync::Notify::new(),
            connect_timeout: cfg
                .endpoints
                .first()
                .map_or(Duration::from_secs(5), |e| e.target.connect_timeout),
            requests: metrics::UPSTREAM_REQUESTS.with_label_values(&[name]),
            ejections: metrics::UPSTREAM_EJECTIONS.with_label_values(&[name]),
            endpoints_gauge: metrics::UPSTREAM_ENDPOINTS.with_label_values(&[name]),
            healthy_gauge: metrics::UPSTREAM_HEALTHY.with_label_values(&[name]),
        })
    }

    /// Puts a provider credential on a request to this pool, in the header the pool reads keys from.
    pub fn put_credential(&self, req: &mut RequestHeader, c: &UpstreamCredential) -> Result<()> {
        put_credential(req, self.key_header, c)
    }

    /// Counts a request routed here (once per request, whatever its attempts).
    pub fn count_request(&self) {
        self.requests.inc();
    }

    /// Counts a failed attempt of `kind` (see `UPSTREAM_ATTEMPT_ERRORS`).
    pub fn count_error(&self, kind: &str) {
        metrics::UPSTREAM_ATTEMPT_ERRORS
            .with_label_values(&[&self.name, kind])
            .inc();
    }

    /// The model ids the upstream listed in its last `GET /v1/models` health check (empty until one answered
    /// 200 with a list: e.g. a check without a key gets 401).
    pub fn listed_models(&self) -> Arc<Vec<String>> {
        self.listed.load_full()
    }

    /// The name this pool knows `model` by, when its `model_map` renames it.
    pub fn mapped_model(&self, model: &str) -> Option<&str> {
        self.model_map.get(model).map(String::as_str)
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Waits (at most the connect timeout) for the first discovery, then selects an endpoint for a request
    /// that already tried `tried`.
    pub async fn select(&self, tried: &[SocketAddr]) -> Option<Endpoint> {
        if !self.discovered.load(Ordering::Acquire) {
            let first = self.first.notified();
            tokio::pin!(first);
            // Registered before the flag is read again: a notification in between is not missed.
            first.as_mut().enable();
            if !self.discovered.load(Ordering::Acquire) {
                let _ = tokio::time::timeout(self.connect_timeout, first).await;
            }
        }
        self.select_now(tried)
    }

    /// Selects an endpoint that is ready (member, healthy, not ejected) and not in `tried`. Ejection never
    /// empties a pool: when every healthy endpoint is ejected, they are all candidates again (only failed
    /// health checks take a pool's last endpoints out) — a pool of one is not closed for `eject_ms` by one
    /// timeout.
    pub fn select_now(&self, tried: &[SocketAddr]) -> Option<Endpoint> {
        let now = self.now_ms();
        self.pick(tried, Some(now))
            .or_else(|| self.pick(tried, None))
    }

    /// Whether some healthy endpoint is not in `tried` (what [`Pool::select_now`] would find, ejected ones
    /// included), without selecting it: no balancer turn is taken, no request counted.
    pub fn has_untried(&self, tried: &[SocketAddr]) -> bool {
        self.lb
            .backends()
            .get_backend()
            .iter()
            .any(|b| self.lb.backends().ready(b) && b.as_inet().is_some_and(|a| !tried.contains(a)))
    }

    /// The balancer's pick among healthy endpoints not in `tried` (and, with `now`, not ejected at `now`).
    fn pick(&self, tried: &[SocketAddr], now: Option<u64>) -> Option<Endpoint> {
        let state = self.state.load();
        let usable = |b: &Backend, healthy: bool| {
            healthy
                && b.as_inet().is_some_and(|a| {
                    !tried.contains(a) && now.is_none_or(|now| !ejected(&state, a, now))
                })
        };
        let backend = match self.balance {
            Balance::RoundRobin => self.lb.select_with(b"", 256, usable)?,
            Balance::LeastConnections => {
                let all = self.lb.backends().get_backend();
                let n = all.len().max(1);
                let start = self.turn.fetch_add(1, Ordering::Relaxed) % n;
                let load = |b: &Backend| {
                    let flying = b
                        .as_inet()
                        .and_then(|a| state.get(a))
                        .map_or(0, |s| s.in_flight.load(Ordering::Relaxed));
                    // in_flight / weight, compared in thousandths.
                    (flying as u64 * 1000) / b.weight.max(1) as u64
                };
                all.iter()
                    .skip(start)
                    .chain(all.iter().take(start))
                    .filter(|b| usable(b, self.lb.backends().ready(b)))
                    .min_by_key(|b| load(b))?
                    .clone()
            }
        };
        let addr = *backend.as_inet()?;
        let index = dns::target_index(&backend).unwrap_or(0);
        let target = self.targets.get(index)?.at(addr);
        let st = self.state_of(addr);
        st.in_flight.fetch_add(1, Ordering::Relaxed);
        Some(Endpoint {
            addr,
            target,
            _in_flight: InFlight(st),
        })
    }

    /// The state of `addr`, created when it is first seen (the only write: copy-on-write, pruned to the
    /// current membership so the map stays bounded).
    fn state_of(&self, addr: SocketAddr) -> Arc<EndpointState> {
        if let Some(s) = self.state.load().get(&addr) {
            return s.clone();
        }
        let members = self.lb.backends().get_backend();
        let mut made = None;
        self.state.rcu(|map| {
            let mut map: HashMap<SocketAddr, Arc<EndpointState>> = map
                .iter()
                .filter(|(a, _)| members.iter().any(|b| b.as_inet() == Some(a)))
                .map(|(a, s)| (*a, s.clone()))
                .collect();
            let s = map.entry(addr).or_default().clone();
            made = Some(s);
            map
        });
        made.unwrap_or_default()
    }

    /// A failed attempt: the endpoint gets no traffic for the ejection period.
    pub fn failed(&self, addr: SocketAddr, why: Failure) {
        self.count_error(match why {
            Failure::Connect => "connect",
            Failure::Timeout => "timeout",
        });
        let until = self.now_ms() + self.eject.as_millis() as u64;
        let st = self.state_of(addr);
        if st.ejected_until.swap(until, Ordering::Relaxed) <= self.now_ms() {
            self.ejections.inc();
            tracing::warn!(upstream = %self.name, endpoint = %addr, ?why, eject_ms = self.eject.as_millis() as u64, "endpoint ejected");
            self.publish();
        }
    }

    /// Endpoints now, and those that would get traffic.
    fn counts(&self) -> (usize, usize) {
        let all = self.lb.backends().get_backend();
        let now = self.now_ms();
        let state = self.state.load();
        let ready = all
            .iter()
            .filter(|b| {
                self.lb.backends().ready(b) && b.as_inet().is_some_and(|a| !ejected(&state, a, now))
            })
            .count();
        (all.len(), ready)
    }

    fn publish(&self) {
        let (all, ready) = self.counts();
        self.endpoints_gauge.set(all as i64);
        self.healthy_gauge.set(ready as i64);
    }

    /// One discovery round; the first one releases the requests waiting for it.
    async fn discover(&self) -> bool {
        let ok = match self.lb.update().await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(upstream = %self.name, "endpoint discovery failed, the last endpoints stay: {e}");
                false
            }
        };
        if !self.discovered.swap(true, Ordering::AcqRel) {
            self.first.notify_waiters();
        }
        ok
    }
}

/// Whether `addr` is ejected at `now` (ms since the pool's epoch).
fn ejected(state: &HashMap<SocketAddr, Arc<EndpointState>>, addr: &SocketAddr, now: u64) -> bool {
    state
        .get(addr)
        .is_some_and(|s| s.ejected_until.load(Ordering::Relaxed) > now)
}

/// The largest model list a health check reads.
const MAX_MODEL_LIST_BYTES: usize = 1 << 20;

/// The ids of an OpenAI model list (`{"data": [{"id": …}, …]}`), at most 10,000, each a plausible model name.
fn model_ids(body: &[u8]) -> Option<Vec<String>> {
    let doc: serde_json::Value = serde_json::from_slice(body).ok()?;
    let ids = doc
        .get("data")?
        .as_array()?
        .iter()
        .filter_map(|m| m.get("id")?.as_str())
        .filter(|id| crate::openai::is_safe_name(id))
        .take(10_000)
        .map(str::to_string)
        .collect();
    Some(ids)
}

/// `Authorization: Bearer KEY`, or `api-key: KEY` (the credential holds the bearer form; its key is what
/// follows `Bearer `).
fn put_credential(
    req: &mut RequestHeader,
    header: KeyHeader,
    c: &UpstreamCredential,
) -> Result<()> {
    match header {
        KeyHeader::Authorization => req.insert_header(http::header::AUTHORIZATION, c.0.clone()),
        KeyHeader::ApiKey => {
            let raw = c.0.as_bytes();
            let key = raw.strip_prefix(b"Bearer ").unwrap_or(raw);
            let mut value = http::HeaderValue::from_bytes(key).map_err(|_| {
                pingora::Error::explain(pingora::ErrorType::InternalError, "invalid credential")
            })?;
            value.set_sensitive(true);
            req.insert_header("api-key", value)
        }
    }
}

/// The active health check of a pool's endpoints: `GET path` with the pool's `Host` and credential, healthy on
/// any answer below 500 within the timeout.
struct PoolHealth {
    name: Arc<str>,
    targets: Vec<Target>,
    path: String,
    timeout: Duration,
    healthy_after: usize,
    unhealthy_after: usize,
    credential: Option<UpstreamCredential>,
    key_header: KeyHeader,
    /// Where the model ids of a `GET /v1/models` check go (the check path is `/v1/models`).
    listed: Option<Arc<ArcSwap<Vec<String>>>>,
    connector: Connector,
}

impl PoolHealth {
    async fn probe(&self, target: &Backend) -> Result<u16> {
        use pingora::{Error, ErrorType};
        let addr = *target
            .as_inet()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "not an inet address"))?;
        let index = dns::target_index(target).unwrap_or(0);
        let t = self
            .targets
            .get(index)
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "unknown endpoint"))?;
        let mut peer = t.at(addr).peer().clone();
        peer.options.connection_timeout = Some(self.timeout);
        peer.options.read_timeout = Some(self.timeout);
        let mut req = RequestHeader::build("GET", self.path.as_bytes(), None)?;
        t.target(&mut req)?;
        req.insert_header(http::header::USER_AGENT, HEALTH_CHECK_AGENT)?;
        if let Some(c) = &self.credential {
            put_credential(&mut req, self.key_header, c)?;
        }
        // A fresh connection each time (this connector never gets one back to pool): a check proves the endpoint
        // accepts connections now.
        let (mut session, _) = self.connector.get_http_session(&peer).await?;
        session.write_request_header(Box::new(req)).await?;
        session.finish_request_body().await?;
        session.read_response_header().await?;
        let status = session.response_header().map_or(0, |h| h.status.as_u16());
        if let (Some(listed), 200) = (&self.listed, status) {
            // The check asked for the model list: keep what it says (bounded; an unreadable answer keeps the
            // last list).
            let mut body = Vec::new();
            while let Some(chunk) = session.read_response_body().await? {
                if body.len() + chunk.len() > MAX_MODEL_LIST_BYTES {
                    return Ok(status);
                }
                body.extend_from_slice(&chunk);
            }
            if let Some(ids) = model_ids(&body) {
                listed.store(Arc::new(ids));
            }
        }
        Ok(status)
    }
}

#[async_trait]
impl HealthCheck for PoolHealth {
    async fn check(&self, target: &Backend) -> Result<()> {
        use pingora::{Error, ErrorType};
        match tokio::time::timeout(self.timeout, self.probe(target)).await {
            Ok(Ok(status)) if (1..500).contains(&status) => Ok(()),
            Ok(Ok(status)) => Error::e_explain(
                ErrorType::HTTPStatus(status),
                "health check answered with a server error",
            ),
            Ok(Err(e)) => Err(e),
            Err(_) => Error::e_explain(ErrorType::ReadTimedout, "health check timed out"),
        }
    }

    async fn health_status_change(&self, target: &Backend, healthy: bool) {
        if healthy {
            tracing::info!(upstream = %self.name, endpoint = %target.addr, "endpoint healthy");
        } else {
            tracing::warn!(upstream = %self.name, endpoint = %target.addr, "endpoint unhealthy");
        }
    }

    fn backend_summary(&self, target: &Backend) -> String {
        format!("upstream {} endpoint {}", self.name, target.addr)
    }

    fn health_threshold(&self, success: bool) -> usize {
        if success {
            self.healthy_after
        } else {
            self.unhealthy_after
        }
    }
}

/// Discovery and health checks of one pool, in the background; publishes its gauges after each round.
pub struct PoolService {
    pool: Arc<Pool>,
}

#[async_trait]
impl BackgroundService for PoolService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let p = &self.pool;
        let mut next_discovery = tokio::time::Instant::now();
        let mut next_check = next_discovery;
        loop {
            let now = tokio::time::Instant::now();
            if now >= next_discovery {
                let ok = p.discover().await;
                // Nothing known yet (a name that does not resolve at start): ask again soon.
                let empty = p.lb.backends().get_backend().is_empty();
                let wait = if ok && !empty {
                    p.dns_refresh
                } else {
                    p.dns_refresh.min(Duration::from_secs(1))
                };
                next_discovery = tokio::time::Instant::now() + wait;
            }
            if let Some(h) = &p.health {
                if now >= next_check {
                    p.lb.backends().run_health_check(true).await;
                    next_check = tokio::time::Instant::now() + h.interval;
                }
            }
            p.publish();
            let next = match &p.health {
                Some(_) => next_discovery.min(next_check),
                None => next_discovery,
            };
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

impl Pool {
    /// Every member of the pool with whether it gets traffic now (the admin view).
    pub fn members(&self) -> BTreeSet<(SocketAddr, bool)> {
        let now = self.now_ms();
        let state = self.state.load();
        self.lb
            .backends()
            .get_backend()
            .iter()
            .filter_map(|b| {
                let a = *b.as_inet()?;
                Some((a, self.lb.backends().ready(b) && !ejected(&state, &a, now)))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_list_keeps_only_ids_shaped_like_model_names() {
        let body = br#"{"object":"list","data":[{"id":"gpt-4o"},{"id":"meta-llama/Llama-3-70B"},{"id":"bad id\n"},{"id":7},{"nope":1},{"id":""}]}"#;
        assert_eq!(
            model_ids(body),
            Some(vec![
                "gpt-4o".to_string(),
                "meta-llama/Llama-3-70B".to_string()
            ])
        );
        assert_eq!(model_ids(b"{\"data\": 5}"), None);
        assert_eq!(model_ids(b"not json"), None);
    }
}
