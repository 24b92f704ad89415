//! Gateway configuration: the TOML file format (`file`) and the validated, internal form (`Config`).
//!
//! The file format is a firewall: it is deserialised with `deny_unknown_fields`, command-line flags are applied
//! on top of it, and only then is it turned into [`Config`] by one validation pass whose every error names the
//! source, the field and what is wrong. Nothing outside this module sees the file structs.

mod file;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

pub use file::FileConfig;

/// A configuration that cannot be used. Rendered as one line: `SOURCE: FIELD: WHAT`.
#[derive(Debug, Error)]
#[error("{source_name}: {field}: {message}")]
pub struct ConfigError {
    /// The file path, or `command line` for flags.
    pub source_name: String,
    /// The dotted field (`upstream.url`) or the flag (`--upstream`).
    pub field: String,
    pub message: String,
}

/// Values given on the command line; each overrides the matching file field.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<String>,
    pub admin: Option<String>,
    pub upstream: Option<String>,
    pub rules: Option<PathBuf>,
}

/// The validated gateway configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    /// Worker threads of the proxy service.
    pub threads: usize,
    /// How long in-flight requests and streams may run on after SIGTERM / SIGINT.
    pub grace_period: Duration,
    pub upstream: UpstreamConfig,
    pub rules: RulesConfig,
    pub inspect: InspectConfig,
    pub auth: AuthConfig,
    /// Decision events; `None` when `audit.enabled = false`.
    pub audit: Option<AuditConfig>,
    /// The span over which per-minute quotas are counted (a minute unless shortened, e.g. for tests).
    pub limit_window: Duration,
}

/// When the audit file is flushed to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// After every batch written (group commit): an event in the file has reached the disk.
    Always,
    /// At most this long after an event is written.
    Interval(Duration),
}

/// The decision-event sinks (see `audit`).
#[derive(Debug, Clone)]
pub struct AuditConfig {
    pub dir: PathBuf,
    pub fsync: Fsync,
    pub max_file_bytes: u64,
    pub keep_files: usize,
    pub queue: usize,
    /// When the queue is full: wait for room (`true`, the default) or drop the event and count it.
    pub block_when_full: bool,
    /// When the file cannot be written: refuse new requests with 503 (`true`, the default) or go on.
    pub fail_closed: bool,
    pub stdout: bool,
    pub webhook: Option<WebhookConfig>,
}

/// The webhook fed from the audit file.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub target: UpstreamConfig,
    /// The HMAC key (`X-Promptgate-Signature`).
    pub secret: String,
    /// Event types sent (`chat.message`, `chat.blocked`, `chat.escalated`).
    pub events: Vec<String>,
    pub batch_max: usize,
    pub max_backoff: Duration,
}

/// Identity settings (see `auth`).
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// `Some(path)`: gateway keys from this file; `None`: passthrough.
    pub keys_file: Option<PathBuf>,
    /// Reload the keys file when it changes.
    pub watch: bool,
    /// The environment variable holding the key of the passthrough caller hash.
    pub hash_key_env: String,
    /// Browser origins allowed in passthrough mode.
    pub allowed_origins: Vec<String>,
    /// Quotas of each passthrough caller.
    pub caller_limits: crate::limits::LimitSpec,
}

/// What to do with `/v1` routes the gateway does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownRoutes {
    Inspect,
    Pass,
    Deny,
}

/// Request inspection settings.
#[derive(Debug, Clone)]
pub struct InspectConfig {
    pub enabled: bool,
    pub unknown_routes: UnknownRoutes,
    pub options: crate::inspect::InspectOptions,
    /// Largest request body accepted, as received (compressed or not).
    pub max_body_bytes: usize,
    /// Largest request body once decoded.
    pub max_decoded_body_bytes: usize,
    /// Largest non-streamed answer held for inspection (larger → 502).
    pub max_response_bytes: usize,
    /// Most bytes of one streamed text held back while they could still become part of a match.
    pub max_stream_hold: usize,
    /// Forward uninspected (and count it) when inspection itself fails, instead of answering 503.
    pub fail_open: bool,
}

/// Where the rules live and the limits a rule set must respect.
#[derive(Debug, Clone)]
pub struct RulesConfig {
    pub dir: PathBuf,
    /// Reload when files in `dir` change.
    pub watch: bool,
    /// Quiet time after the last change before reloading (editors write in several steps).
    pub debounce: Duration,
    pub budget: crate::rules::Budget,
}

/// Where and how requests are forwarded.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// The URL as the operator wrote it (for logs and `/healthz`).
    pub url: String,
    pub tls: bool,
    /// Host name (or IP literal) used for SNI and certificate verification.
    pub host: String,
    pub port: u16,
    /// The `Host` header sent upstream (`host` or `host:port` for a non-default port).
    pub authority: String,
    /// A path prefix prepended to every forwarded path (`""` when the URL has none).
    pub base_path: String,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    pub idle_timeout: Duration,
    /// CA certificates (PEM) trusted for an `https://` upstream instead of the system roots (a private CA).
    pub ca_file: Option<PathBuf>,
}

impl UpstreamConfig {
    /// Resolves the upstream host once, before the server starts: Pingora's peer constructor would resolve
    /// blocking on every build and panic on failure. A failure is a configuration error (exit 2).
    pub fn resolve(&self) -> Result<SocketAddr, ConfigError> {
        let err = |message: String| ConfigError {
            source_name: "upstream".into(),
            field: "url".into(),
            message,
        };
        (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| err(format!("cannot resolve {:?}: {e}", self.host)))?
            .next()
            .ok_or_else(|| err(format!("cannot resolve {:?}: no address", self.host)))
    }
}

impl Config {
    /// Loads `path` (or the built-in defaults when `path` is `None`), applies `overrides`, validates.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        let (source_name, raw) = match path {
            Some(p) => {
                let name = p.display().to_string();
                let text = std::fs::read_to_string(p).map_err(|e| ConfigError {
                    source_name: name.clone(),
                    field: "(file)".into(),
                    message: format!("cannot read: {e}"),
                })?;
                let raw = FileConfig::parse(&text).map_err(|(field, message)| ConfigError {
                    source_name: name.clone(),
                    field,
                    message,
                })?;
                (name, raw)
            }
            None => ("(defaults)".to_string(), FileConfig::default()),
        };
        Self::from_file(raw, &source_name, overrides)
    }

    /// Validates a parsed file with `overrides` applied on top.
    pub fn from_file(
        raw: FileConfig,
        source_name: &str,
        overrides: &Overrides,
    ) -> Result<Self, ConfigError> {
        let from_file = |field: &str, message: String| ConfigError {
            source_name: source_name.to_string(),
            field: field.to_string(),
            message,
        };
        let from_flag = |flag: &str, message: String| ConfigError {
            source_name: "command line".to_string(),
            field: flag.to_string(),
            message,
        };

        let listen = match &overrides.listen {
            Some(v) => parse_addr(v).map_err(|m| from_flag("--listen", m))?,
            None => parse_addr(&raw.server.listen).map_err(|m| from_file("server.listen", m))?,
        };
        let admin = match &overrides.admin {
            Some(v) => parse_addr(v).map_err(|m| from_flag("--admin", m))?,
            None => parse_addr(&raw.server.admin).map_err(|m| from_file("server.admin", m))?,
        };
        if listen == admin {
            return Err(from_file(
                "server.admin",
                format!("must differ from server.listen ({listen})"),
            ));
        }
        if raw.server.threads == 0 || raw.server.threads > 256 {
            return Err(from_file(
                "server.threads",
                format!("must be between 1 and 256, got {}", raw.server.threads),
            ));
        }

        let upstream_url = overrides.upstream.as_ref().unwrap_or(&raw.upstream.url);
        let url_err = |m: String| match &overrides.upstream {
            Some(_) => from_flag("--upstream", m),
            None => from_file("upstream.url", m),
        };
        let target = parse_upstream_url(upstream_url).map_err(url_err)?;

        let ms = |field: &str, v: u64| -> Result<Duration, ConfigError> {
            if v == 0 {
                Err(from_file(field, "must be greater than 0".into()))
            } else {
                Ok(Duration::from_millis(v))
            }
        };
        let u = &raw.upstream;
        let ca_file = match &u.ca_file {
            Some(p) if !p.is_file() => {
                return Err(from_file(
                    "upstream.ca_file",
                    format!("no such file {:?}", p.display().to_string()),
                ))
            }
            other => other.clone(),
        };
        let upstream = UpstreamConfig {
            url: upstream_url.clone(),
            tls: target.tls,
            host: target.host,
            port: target.port,
            authority: target.authority,
            base_path: target.base_path,
            connect_timeout: ms("upstream.connect_timeout_ms", u.connect_timeout_ms)?,
            read_timeout: ms("upstream.read_timeout_ms", u.read_timeout_ms)?,
            write_timeout: ms("upstream.write_timeout_ms", u.write_timeout_ms)?,
            idle_timeout: ms("upstream.idle_timeout_ms", u.idle_timeout_ms)?,
            ca_file,
        };

        let r = &raw.rules;
        let rules = RulesConfig {
            dir: overrides.rules.clone().unwrap_or_else(|| r.dir.clone()),
            watch: r.watch,
            debounce: Duration::from_millis(r.reload_debounce_ms),
            budget: crate::rules::Budget {
                max_terms: r.max_terms,
                max_regex_bytes: r.max_regex_bytes,
                max_compile: ms("rules.max_compile_ms", r.max_compile_ms)?,
            },
        };

        let i = &raw.inspect;
        let unknown_routes = match i.unknown_routes.as_str() {
            "inspect" => UnknownRoutes::Inspect,
            "pass" => UnknownRoutes::Pass,
            "deny" => UnknownRoutes::Deny,
            other => {
                return Err(from_file(
                    "inspect.unknown_routes",
                    format!("{other:?}: expected \"inspect\", \"pass\" or \"deny\""),
                ))
            }
        };
        let opaque = match i.opaque_inputs.as_str() {
            "pass" => crate::inspect::OpaquePolicy::Pass,
            "deny" => crate::inspect::OpaquePolicy::Deny,
            other => {
                return Err(from_file(
                    "inspect.opaque_inputs",
                    format!("{other:?}: expected \"pass\" or \"deny\""),
                ))
            }
        };
        let monitor = match raw.policy.mode.as_str() {
            "enforce" => false,
            "monitor" => true,
            other => {
                return Err(from_file(
                    "policy.mode",
                    format!("{other:?}: expected \"enforce\" or \"monitor\""),
                ))
            }
        };
        if !(2..=1024).contains(&i.max_json_depth) {
            return Err(from_file(
                "inspect.max_json_depth",
                format!("must be between 2 and 1024, got {}", i.max_json_depth),
            ));
        }
        if !(64..=1 << 20).contains(&i.max_stream_hold_bytes) {
            return Err(from_file(
                "inspect.max_stream_hold_bytes",
                format!(
                    "must be between 64 and 1048576, got {}",
                    i.max_stream_hold_bytes
                ),
            ));
        }
        let l = &raw.limits;
        if l.max_response_bytes == 0 {
            return Err(from_file(
                "limits.max_response_bytes",
                "must be greater than 0".into(),
            ));
        }
        if l.max_body_bytes == 0 {
            return Err(from_file(
                "limits.max_body_bytes",
                "must be greater than 0".into(),
            ));
        }
        if l.max_decoded_body_bytes < l.max_body_bytes {
            return Err(from_file(
                "limits.max_decoded_body_bytes",
                format!(
                    "must be at least limits.max_body_bytes ({})",
                    l.max_body_bytes
                ),
            ));
        }
        let inspect = InspectConfig {
            enabled: i.enabled,
            unknown_routes,
            options: crate::inspect::InspectOptions {
                max_depth: i.max_json_depth,
                opaque,
                monitor,
            },
            max_body_bytes: l.max_body_bytes,
            max_decoded_body_bytes: l.max_decoded_body_bytes,
            max_response_bytes: l.max_response_bytes,
            max_stream_hold: i.max_stream_hold_bytes,
            fail_open: raw.policy.fail_open,
        };

        let a = &raw.auth;
        let keys_file = match a.mode.as_str() {
            "passthrough" => None,
            "gateway_keys" => Some(a.keys_file.clone()),
            other => {
                return Err(from_file(
                    "auth.mode",
                    format!("{other:?}: expected \"passthrough\" or \"gateway_keys\""),
                ))
            }
        };
        if let Some(o) = a
            .allowed_origins
            .iter()
            .find(|o| o.as_str() == "null" || o.ends_with('/'))
        {
            return Err(from_file(
                "auth.allowed_origins",
                format!("{o:?} is not an origin (scheme://host[:port], or \"*\")"),
            ));
        }
        l.per_caller.validate().map_err(|m| {
            let (field, message) = m.split_once(": ").unwrap_or(("", m.as_str()));
            from_file(&format!("limits.per_caller.{field}"), message.to_string())
        })?;
        if !(1..=3600).contains(&l.window_seconds) {
            return Err(from_file(
                "limits.window_seconds",
                format!("must be between 1 and 3600, got {}", l.window_seconds),
            ));
        }
        let auth = AuthConfig {
            keys_file,
            watch: a.watch,
            hash_key_env: a.caller_hash_key_env.clone(),
            allowed_origins: a.allowed_origins.clone(),
            caller_limits: l.per_caller,
        };

        let audit = audit_config(&raw.audit, &from_file)?;

        Ok(Config {
            auth,
            audit,
            limit_window: Duration::from_secs(l.window_seconds),
            listen,
            admin,
            threads: raw.server.threads,
            grace_period: Duration::from_secs(raw.server.grace_period_seconds),
            upstream,
            rules,
            inspect,
        })
    }
}

fn audit_config(
    a: &file::AuditSection,
    from_file: &dyn Fn(&str, String) -> ConfigError,
) -> Result<Option<AuditConfig>, ConfigError> {
    if !a.enabled {
        return Ok(None);
    }
    let fsync = match a.fsync.as_str() {
        "always" => Fsync::Always,
        "interval" if a.fsync_interval_ms > 0 => {
            Fsync::Interval(Duration::from_millis(a.fsync_interval_ms))
        }
        "interval" => {
            return Err(from_file(
                "audit.fsync_interval_ms",
                "must be greater than 0".into(),
            ))
        }
        other => {
            return Err(from_file(
                "audit.fsync",
                format!("{other:?}: expected \"always\" or \"interval\""),
            ))
        }
    };
    let choice = |field: &str, v: &str, yes: &str, no: &str| -> Result<bool, ConfigError> {
        if v == yes {
            Ok(true)
        } else if v == no {
            Ok(false)
        } else {
            Err(from_file(
                field,
                format!("{v:?}: expected \"{yes}\" or \"{no}\""),
            ))
        }
    };
    let block_when_full = choice("audit.on_full", &a.on_full, "block", "drop")?;
    let fail_closed = choice(
        "audit.on_failure",
        &a.on_failure,
        "fail_closed",
        "fail_open",
    )?;
    if a.max_file_bytes < 4096 {
        return Err(from_file(
            "audit.max_file_bytes",
            format!("must be at least 4096, got {}", a.max_file_bytes),
        ));
    }
    if a.keep_files < 2 {
        return Err(from_file(
            "audit.keep_files",
            format!("must be at least 2, got {}", a.keep_files),
        ));
    }
    if a.queue == 0 {
        return Err(from_file("audit.queue", "must be greater than 0".into()));
    }
    let w = &a.webhook;
    let webhook = if w.url.is_empty() {
        None
    } else {
        let t = parse_upstream_url(&w.url).map_err(|m| from_file("audit.webhook.url", m))?;
        let secret = std::env::var(&w.secret_env).unwrap_or_default();
        if secret.is_empty() {
            return Err(from_file(
                "audit.webhook.secret_env",
                format!("${} must hold the webhook's signing secret", w.secret_env),
            ));
        }
        const TYPES: [&str; 3] = ["chat.message", "chat.blocked", "chat.escalated"];
        if let Some(bad) = w.events.iter().find(|e| !TYPES.contains(&e.as_str())) {
            return Err(from_file(
                "audit.webhook.events",
                format!("{bad:?}: expected some of {TYPES:?}"),
            ));
        }
        if w.timeout_ms == 0 || w.batch_max == 0 {
            return Err(from_file(
                "audit.webhook",
                "timeout_ms and batch_max must be greater than 0".into(),
            ));
        }
        let timeout = Duration::from_millis(w.timeout_ms);
        Some(WebhookConfig {
            target: UpstreamConfig {
                url: w.url.clone(),
                tls: t.tls,
                host: t.host,
                port: t.port,
                authority: t.authority,
                base_path: t.base_path,
                connect_timeout: timeout,
                read_timeout: timeout,
                write_timeout: timeout,
                idle_timeout: Duration::from_secs(60),
                ca_file: None,
            },
            secret,
            events: w.events.clone(),
            batch_max: w.batch_max,
            max_backoff: Duration::from_millis(w.max_backoff_ms.max(100)),
        })
    };
    Ok(Some(AuditConfig {
        dir: a.dir.clone(),
        fsync,
        max_file_bytes: a.max_file_bytes,
        keep_files: a.keep_files,
        queue: a.queue,
        block_when_full,
        fail_closed,
        stdout: a.stdout,
        webhook,
    }))
}

fn parse_addr(v: &str) -> Result<SocketAddr, String> {
    v.parse::<SocketAddr>()
        .map_err(|_| format!("invalid address {v:?} (expected IP:PORT, e.g. 127.0.0.1:8080)"))
}

struct UpstreamTarget {
    tls: bool,
    host: String,
    port: u16,
    authority: String,
    base_path: String,
}

fn parse_upstream_url(v: &str) -> Result<UpstreamTarget, String> {
    let url = url::Url::parse(v).map_err(|e| format!("invalid URL {v:?} ({e})"))?;
    let tls = match url.scheme() {
        "http" => false,
        "https" => true,
        other => {
            return Err(format!(
                "invalid URL {v:?} (scheme {other:?}: only http and https are supported)"
            ))
        }
    };
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "invalid URL {v:?} (credentials in the URL are not supported)"
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "invalid URL {v:?} (a query or fragment is not allowed)"
        ));
    }
    let host = match url.host() {
        Some(url::Host::Domain(d)) => d.to_string(),
        Some(url::Host::Ipv4(ip)) => ip.to_string(),
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
        None => return Err(format!("invalid URL {v:?} (no host)")),
    };
    let port = url
        .port_or_known_default()
        .ok_or_else(|| format!("invalid URL {v:?} (no port)"))?;
    let authority = match url.port() {
        Some(p) => match url.host() {
            Some(url::Host::Ipv6(_)) => format!("[{host}]:{p}"),
            _ => format!("{host}:{p}"),
        },
        None => host.clone(),
    };
    let base_path = url.path().trim_end_matches('/').to_string();
    Ok(UpstreamTarget {
        tls,
        host,
        port,
        authority,
        base_path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(text: &str, o: &Overrides) -> Result<Config, String> {
        let raw = FileConfig::parse(text).map_err(|(f, m)| format!("x.toml: {f}: {m}"))?;
        Config::from_file(raw, "x.toml", o).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_valid() {
        let c = load_str("", &Overrides::default()).expect("defaults");
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.admin.to_string(), "127.0.0.1:9901");
    }

    #[test]
    fn bad_values_name_the_field() {
        let cases = [
            (
                "[upstream]\nurl = \"htp://x\"",
                "x.toml: upstream.url: invalid URL \"htp://x\"",
            ),
            (
                "[server]\nlisten = \"nope\"",
                "x.toml: server.listen: invalid address \"nope\"",
            ),
            (
                "[server]\nthreads = 0",
                "x.toml: server.threads: must be between 1 and 256",
            ),
            (
                "[upstream]\nread_timeout_ms = 0",
                "x.toml: upstream.read_timeout_ms: must be greater",
            ),
            (
                "[server]\nlisen = \"x\"",
                "x.toml: server.lisen: unknown field",
            ),
            ("[upstream]\nurl = 5", "x.toml: upstream.url: invalid type"),
        ];
        for (text, want) in cases {
            let got = load_str(text, &Overrides::default()).expect_err(text);
            assert!(
                got.starts_with(want),
                "{text:?}: got {got:?}, want prefix {want:?}"
            );
        }
    }

    #[test]
    fn flags_override_the_file_and_are_named_when_bad() {
        let o = Overrides {
            listen: Some("127.0.0.1:1".into()),
            upstream: Some("http://127.0.0.1:9/base/".into()),
            ..Default::default()
        };
        let c = load_str("[server]\nlisten = \"127.0.0.1:2\"", &o).expect("valid");
        assert_eq!(c.listen.port(), 1);
        assert_eq!(c.upstream.base_path, "/base");
        assert_eq!(c.upstream.authority, "127.0.0.1:9");
        let bad = Overrides {
            upstream: Some("ftp://x".into()),
            ..Default::default()
        };
        let err = load_str("", &bad).expect_err("bad flag");
        assert!(
            err.starts_with("command line: --upstream: invalid URL"),
            "{err}"
        );
    }

    #[test]
    fn https_upstream_keeps_host_for_sni() {
        let o = Overrides {
            upstream: Some("https://127.0.0.1".into()),
            ..Default::default()
        };
        let c = load_str("", &o).expect("valid");
        assert!(c.upstream.tls);
        assert_eq!(c.upstream.port, 443);
        assert_eq!(c.upstream.authority, "127.0.0.1");
    }
}
