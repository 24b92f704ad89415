//! `[upstream]` / `[[upstream]]`, validated: the pools requests are routed to (see `upstream/`). Each entry is
//! a pool — one or more endpoint URLs serving the same models — with what it serves (models, path prefixes,
//! the default), how its endpoints are balanced and checked, and its credential and timeouts.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use super::file::{self, Upstreams};
use super::{parse_upstream_url, ConfigError, Overrides, Source, UpstreamConfig};
use crate::auth::keys::{credential_from_env, ModelPattern, UpstreamCredential};

/// How a pool picks the endpoint of a request (`balance`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    /// Weighted round robin (pingora-load-balancing's `Weighted<RoundRobin>`).
    RoundRobin,
    /// The ready endpoint with the fewest requests in flight per unit of weight.
    LeastConnections,
}

/// The header a pool's upstream reads its key from (`key_header`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyHeader {
    /// `Authorization: Bearer KEY` (OpenAI and most OpenAI-compatible servers).
    Authorization,
    /// `api-key: KEY` (Azure OpenAI keys).
    ApiKey,
}

/// The active health check of a pool's endpoints (`[upstream.health]`).
#[derive(Debug, Clone)]
pub struct HealthConfig {
    /// `GET` of this path; any answer below 500 is healthy (an upstream that wants a key answers 401: it is up).
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive passed checks that bring an unhealthy endpoint back.
    pub healthy_after: usize,
    /// Consecutive failed checks that take a healthy endpoint out.
    pub unhealthy_after: usize,
}

/// One endpoint of a pool.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    pub target: UpstreamConfig,
    pub weight: usize,
}

/// One pool, validated.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Unique; the `upstream` of decision events and the label of metrics.
    pub name: String,
    pub endpoints: Vec<EndpointConfig>,
    /// The models it serves: exact names and `prefix*` patterns.
    pub models: Vec<ModelPattern>,
    /// Path prefixes it serves (requests whose model is not known or not listed anywhere).
    pub paths: Vec<String>,
    /// It serves what no other pool does.
    pub default: bool,
    /// The header the provider credential goes in (`key_header`).
    pub key_header: KeyHeader,
    /// The provider credential sent in place of a gateway key (a key's own `upstream_key_env` wins).
    pub credential: Option<UpstreamCredential>,
    /// Client model name → the name this pool knows the model by.
    pub model_map: BTreeMap<String, String>,
    /// The pool a 429 or 5xx answer is retried on, before any byte of it reached the client.
    pub fallback: Option<String>,
    pub balance: Balance,
    /// `None`: endpoints are only taken out passively.
    pub health: Option<HealthConfig>,
    /// How long an endpoint that failed a connection or timed out gets no traffic.
    pub eject: Duration,
    /// How often host names are resolved again.
    pub dns_refresh: Duration,
    /// Name servers to ask (empty: the system's).
    pub dns_servers: Vec<SocketAddr>,
}

/// Validates every entry; `--upstream` replaces the URL of the one entry (it is refused when there are several).
pub(super) fn pools(
    u: &Upstreams,
    overrides: &Overrides,
    src: &Source,
) -> Result<Vec<PoolConfig>, ConfigError> {
    if u.list.is_empty() {
        return Err(src.error("upstream", "at least one [[upstream]] is needed"));
    }
    if overrides.upstream.is_some() && u.list.len() > 1 {
        return Err(ConfigError {
            source_name: "command line".into(),
            field: "--upstream".into(),
            message: format!(
                "replaces the URL of the one upstream, but {} are configured",
                u.list.len()
            ),
        });
    }
    let mut pools = Vec::with_capacity(u.list.len());
    for (i, p) in u.list.iter().enumerate() {
        let at = if u.array {
            format!("upstream[{i}]")
        } else {
            "upstream".to_string()
        };
        pools.push(pool(p, &at, overrides, src)?);
    }
    // A single entry serves everything that reaches the gateway, as the one upstream always did.
    if let [only] = pools.as_mut_slice() {
        only.default = true;
    }
    let names: Vec<&str> = pools.iter().map(|p| p.name.as_str()).collect();
    for (i, p) in pools.iter().enumerate() {
        if names[..i].contains(&p.name.as_str()) {
            return Err(src.error(
                &format!("upstream[{i}].name"),
                format!("{:?} names two upstreams", p.name),
            ));
        }
        if let Some(f) = &p.fallback {
            if f == &p.name || !names.contains(&f.as_str()) {
                return Err(src.error(
                    &format!("upstream[{i}].fallback"),
                    format!("{f:?}: expected the name of another upstream, one of {names:?}"),
                ));
            }
        }
        if !p.default && p.models.is_empty() && p.paths.is_empty() {
            return Err(src.error(
                &format!("upstream[{i}]"),
                format!(
                    "{:?} serves nothing: give it models, paths, or default = true",
                    p.name
                ),
            ));
        }
    }
    if pools.iter().filter(|p| p.default).count() > 1 {
        return Err(src.error("upstream", "only one upstream can be the default"));
    }
    // Pingora's proxy loop trusts one set of CA certificates for every upstream.
    let mut cas = pools
        .iter()
        .filter_map(|p| p.endpoints[0].target.ca_file.as_ref());
    if let Some(first) = cas.next() {
        if cas.any(|c| c != first) {
            return Err(src.error(
                "upstream.ca_file",
                "every upstream must name the same ca_file (one set of roots is trusted)",
            ));
        }
    }
    Ok(pools)
}

fn pool(
    p: &file::UpstreamSection,
    at: &str,
    overrides: &Overrides,
    src: &Source,
) -> Result<PoolConfig, ConfigError> {
    let f = |field: &str| format!("{at}.{field}");
    let name = if p.name.is_empty() {
        if at == "upstream" {
            "default".to_string()
        } else {
            return Err(src.error(&f("name"), "every [[upstream]] needs a name"));
        }
    } else if p.name.len() > 64
        || !p
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(src.error(
            &f("name"),
            "letters, digits, '-', '_' and '.' only, at most 64",
        ));
    } else {
        p.name.clone()
    };
    if let Some(path) = p.ca_file.as_ref().filter(|path| !path.is_file()) {
        return Err(src.error(
            &f("ca_file"),
            format!("no such file {:?}", path.display().to_string()),
        ));
    }
    let timeouts = (
        src.millis(&f("connect_timeout_ms"), p.connect_timeout_ms)?,
        src.millis(&f("read_timeout_ms"), p.read_timeout_ms)?,
        src.millis(&f("write_timeout_ms"), p.write_timeout_ms)?,
        src.millis(&f("idle_timeout_ms"), p.idle_timeout_ms)?,
    );
    let urls: Vec<file::EndpointSection> = match overrides.upstream.as_deref() {
        Some(url) => vec![file::EndpointSection {
            url: url.to_string(),
            weight: 1,
        }],
        None => p.url.clone(),
    };
    if urls.is_empty() {
        return Err(src.error(&f("url"), "at least one URL is needed"));
    }
    let mut endpoints = Vec::with_capacity(urls.len());
    for e in &urls {
        let t = parse_upstream_url(&e.url).map_err(|m| match overrides.upstream {
            Some(_) => ConfigError {
                source_name: "command line".into(),
                field: "--upstream".into(),
                message: m,
            },
            None => src.error(&f("url"), m),
        })?;
        if e.weight == 0 || e.weight > 1000 {
            return Err(src.error(&f("url"), "weight: between 1 and 1000"));
        }
        endpoints.push(EndpointConfig {
            target: UpstreamConfig {
                url: e.url.clone(),
                tls: t.tls,
                host: t.host,
                port: t.port,
                authority: t.authority,
                base_path: t.base_path,
                connect_timeout: timeouts.0,
                read_timeout: timeouts.1,
                write_timeout: timeouts.2,
                idle_timeout: timeouts.3,
                ca_file: p.ca_file.clone(),
            },
            weight: e.weight,
        });
    }
    for m in &p.models {
        if m.is_empty() || m == "*" || m[..m.len() - 1].contains('*') {
            return Err(src.error(
                &f("models"),
                format!(
                    "{m:?}: an exact name or a prefix ending in '*' (use default = true for all)"
                ),
            ));
        }
    }
    if let Some(bad) = p.paths.iter().find(|x| !x.starts_with('/')) {
        return Err(src.error(&f("paths"), format!("{bad:?}: must start with '/'")));
    }
    let credential = if p.key_env.is_empty() {
        None
    } else {
        Some(credential_from_env(&p.key_env).map_err(|m| src.error(&f("key_env"), m))?)
    };
    let key_header = match p.key_header.as_str() {
        "authorization" => KeyHeader::Authorization,
        "api-key" => KeyHeader::ApiKey,
        other => {
            return Err(src.error(
                &f("key_header"),
                format!("{other:?}: expected \"authorization\" or \"api-key\""),
            ))
        }
    };
    let balance = match p.balance.as_str() {
        "round_robin" => Balance::RoundRobin,
        "least_connections" => Balance::LeastConnections,
        other => {
            return Err(src.error(
                &f("balance"),
                format!("{other:?}: expected \"round_robin\" or \"least_connections\""),
            ))
        }
    };
    let h = &p.health;
    let health = if h.enabled {
        if !h.path.starts_with('/') {
            return Err(src.error(&f("health.path"), "must start with '/'"));
        }
        Some(HealthConfig {
            path: h.path.clone(),
            interval: src.millis(&f("health.interval_ms"), h.interval_ms)?,
            timeout: src.millis(&f("health.timeout_ms"), h.timeout_ms)?,
            healthy_after: src.positive(&f("health.healthy_after"), h.healthy_after)?,
            unhealthy_after: src.positive(&f("health.unhealthy_after"), h.unhealthy_after)?,
        })
    } else {
        None
    };
    let dns_servers = p
        .dns
        .servers
        .iter()
        .map(|s| {
            super::parse_addr(s)
                .or_else(|_| {
                    s.parse::<std::net::IpAddr>()
                        .map(|ip| SocketAddr::new(ip, 53))
                        .map_err(|_| ())
                })
                .map_err(|_| src.error(&f("dns.servers"), format!("{s:?}: expected IP or IP:PORT")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(PoolConfig {
        name,
        endpoints,
        models: p.models.iter().map(|m| ModelPattern::parse(m)).collect(),
        paths: p.paths.clone(),
        default: p.default,
        key_header,
        credential,
        model_map: p.model_map.clone(),
        fallback: (!p.fallback.is_empty()).then(|| p.fallback.clone()),
        balance,
        health,
        eject: src.millis(&f("eject_ms"), p.eject_ms)?,
        dns_refresh: src.millis(&f("dns.refresh_ms"), p.dns.refresh_ms)?,
        dns_servers,
    })
}
