//! Gateway configuration: the TOML file format (`file`) and the validated, internal form (`Config`).
//!
//! The file format is a firewall: it is deserialised with `deny_unknown_fields`, command-line flags are applied
//! on top of it, and only then is it turned into [`Config`] by one validation function per section, each of
//! whose errors names the source, the field and what is wrong. Nothing outside this module sees the file structs.
//!
//! Errors in the text name their place too, in three steps (`FileConfig::parse`): the text is first parsed into
//! an `outline` that keeps where every key is written (a syntax error names `(file)` and its line); then each
//! top-level key must be a known section and a table, so an unknown `[metrics]` or an `[[upstream]]` is named as
//! itself, with its line; only then is the typed file deserialised, and the byte offset serde reports is turned
//! into the dotted field it is about by the outline (the key there, or the key the value there was written
//! after), whatever the nesting: `[a.b]` headers, inline tables, dotted or quoted keys, values over several lines.

mod file;
mod outline;
mod pools;
mod telemetry;

use std::fmt::Display;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

pub use file::FileConfig;
pub use pools::{Balance, EndpointConfig, HealthConfig, KeyHeader, PoolConfig};
pub use telemetry::{LogFormat, OtlpProtocol, TracingConfig};

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
    /// What a client connection may cost before its request is admitted.
    pub edge: EdgeConfig,
    /// The TLS listeners (`[[server.tls]]`), each with its certificate; HTTP/2 or HTTP/1.1 by ALPN.
    pub tls: Vec<TlsListener>,
    /// Prior-knowledge HTTP/2 in cleartext on `listen` (`server.h2c`).
    pub h2c: bool,
    /// How long in-flight requests and streams may run on after SIGTERM / SIGINT.
    pub grace_period: Duration,
    /// The Unix socket a graceful upgrade hands the listeners over on (`server.upgrade_sock`), absolute.
    pub upgrade_sock: PathBuf,
    /// Where `run --daemon` writes its process id (`server.pid_file`), absolute.
    pub pid_file: PathBuf,
    /// The pools requests are routed to (at least one).
    pub upstreams: Vec<PoolConfig>,
    pub rules: RulesConfig,
    pub inspect: InspectConfig,
    pub auth: AuthConfig,
    /// Decision events; `None` when `audit.enabled = false`.
    pub audit: Option<AuditConfig>,
    /// The span over which per-minute quotas are counted (a minute unless shortened, e.g. for tests).
    pub limit_window: Duration,
    /// Where quotas are counted.
    pub limits_backend: LimitsBackend,
    /// Realtime sessions (`/v1/realtime` over WebSocket).
    pub realtime: RealtimeConfig,
    /// OpenTelemetry traces; `None` when `tracing.enabled = false`.
    pub tracing: Option<TracingConfig>,
    /// How log lines are written (`log.format`).
    pub log_format: LogFormat,
    /// The bearer token the admin endpoints that act or reveal require (`admin.token_env`); `None`: open.
    pub admin_token: Option<AdminToken>,
}

/// The admin bearer token, read from the environment at start. Never printed.
#[derive(Clone)]
pub struct AdminToken(pub String);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(…)")
    }
}

/// Where quotas are counted (`limits.backend`).
#[derive(Debug, Clone)]
pub enum LimitsBackend {
    /// In this process (each gateway on its own).
    Local,
    /// In a Redis shared by the fleet.
    Redis(RedisConfig),
}

/// `[limits.redis]`, validated.
#[derive(Clone)]
pub struct RedisConfig {
    /// `redis://` or `rediss://` (TLS), without a password.
    pub url: String,
    /// From the environment variable `password_env` names; never printed.
    pub password: Option<String>,
    pub prefix: String,
    pub pool_size: usize,
    /// The most a request waits for Redis.
    pub timeout: Duration,
    /// How long a concurrency permit lives unless renewed.
    pub lease: Duration,
    pub on_unavailable: OnUnavailable,
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &self.url)
            .field("password", &self.password.as_ref().map(|_| "…"))
            .field("prefix", &self.prefix)
            .field("pool_size", &self.pool_size)
            .field("timeout", &self.timeout)
            .field("lease", &self.lease)
            .field("on_unavailable", &self.on_unavailable)
            .finish()
    }
}

/// How requests are decided while Redis cannot be reached (`limits.redis.on_unavailable`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnUnavailable {
    /// Each gateway counts on its own with the same quotas (a fleet of N then allows up to N times a quota).
    Local,
    /// Admit without counting.
    Allow,
    /// Refuse with 503 `limits_unavailable`.
    Deny,
}

impl OnUnavailable {
    /// The name in the config file (and the `mode` label of the fallback metric).
    pub fn as_str(self) -> &'static str {
        match self {
            OnUnavailable::Local => "local",
            OnUnavailable::Allow => "allow",
            OnUnavailable::Deny => "deny",
        }
    }
}

/// Bounds on client connections and request heads, enforced before a request is parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EdgeConfig {
    /// The whole request head (request line and headers) must arrive within this, from its first byte.
    pub header_timeout: Duration,
    /// Largest request head (request line and headers), in bytes.
    pub max_header_bytes: usize,
    /// Most header fields in one request.
    pub max_headers: usize,
    /// Client connections open at once, over all clients.
    pub max_connections: usize,
    /// Client connections open at once from one IP address.
    pub max_connections_per_ip: usize,
}

/// One TLS listener: its address and its certificate's files (checked at start: readable, parsed, the key
/// the certificate's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsListener {
    pub listen: SocketAddr,
    pub files: crate::tls::CertFiles,
}

/// What happens to a request asking to upgrade its connection (a WebSocket).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upgrades {
    /// Refused with 403: the gateway cannot inspect what would flow through the upgraded connection.
    Deny,
    /// Proxied as a tunnel, uninspected.
    Pass,
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
    /// `durability = "write_ahead"`: a forwarded request first makes an intent record durable (else 503).
    pub write_ahead: bool,
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
    /// Requests asking to upgrade to a WebSocket.
    pub upgrades: Upgrades,
    /// A request body must have arrived whole within this, from the request head.
    pub body_timeout: Duration,
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
    /// `[inspect] policy`: the default policy (`None`: every rule as written).
    pub policy: Option<String>,
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

/// Reads and parses a config file: its name (for errors) and its sections, not yet validated.
fn read_file(p: &Path) -> Result<(String, FileConfig), ConfigError> {
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
    Ok((name, raw))
}

impl Config {
    /// Loads `path` (or the built-in defaults when `path` is `None`), applies `overrides`, validates.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        let (source_name, raw) = match path {
            Some(p) => read_file(p)?,
            None => ("(defaults)".to_string(), FileConfig::default()),
        };
        Self::from_file(raw, &source_name, overrides)
    }

    /// The audit directory a config file names (`audit.dir`, or its default), without validating the rest:
    /// `promptgate usage` reads it on hosts where the gateway's secrets are not in the environment.
    pub fn audit_dir(path: Option<&Path>) -> Result<PathBuf, ConfigError> {
        let raw = match path {
            Some(p) => read_file(p)?.1,
            None => FileConfig::default(),
        };
        Ok(raw.audit.dir)
    }

    /// Validates a parsed file with `overrides` applied on top: one step per section, in the order of the file.
    pub fn from_file(
        raw: FileConfig,
        source_name: &str,
        overrides: &Overrides,
    ) -> Result<Self, ConfigError> {
        let src = Source { name: source_name };
        let (listen, admin, threads, grace_period) = server(&raw.server, overrides, &src)?;
        let edge = edge(&raw.server, &raw.limits, &src)?;
        let tls = tls_listeners(&raw.server.tls, [listen, admin], &src)?;
        let (upgrade_sock, pid_file) = process_files(&raw.server, &src)?;
        let upstreams = pools::pools(&raw.upstream, overrides, &src)?;
        let rules = rules(&raw.rules, raw.inspect.policy.as_deref(), overrides, &src)?;
        let inspect = inspect(&raw.inspect, &raw.policy, &raw.limits, &src)?;
        let (auth, limit_window) = auth(&raw.auth, &raw.limits, &src)?;
        let limits_backend = limits_backend(&raw.limits, &auth, &src)?;
        let audit = audit(&raw.audit, &src)?;
        let realtime = realtime(&raw.realtime, &raw.limits, &src)?;
        let tracing = telemetry::tracing(&raw.tracing, &src)?;
        let log_format = telemetry::log_format(&raw.log, &src)?;
        let admin_token = admin_token(&raw.admin, &src)?;
        Ok(Config {
            listen,
            admin,
            threads,
            edge,
            tls,
            h2c: raw.server.h2c,
            grace_period,
            upgrade_sock,
            pid_file,
            upstreams,
            rules,
            inspect,
            auth,
            audit,
            limit_window,
            limits_backend,
            realtime,
            tracing,
            log_format,
            admin_token,
        })
    }
}

/// The file being validated: names its errors and holds the checks the sections share.
struct Source<'a> {
    name: &'a str,
}

impl Source<'_> {
    fn error(&self, field: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            source_name: self.name.to_string(),
            field: field.to_string(),
            message: message.into(),
        }
    }

    /// The flag's value when it is given, else the file's; an error names whichever was used.
    fn flag_or_file<T>(
        &self,
        (flag, given): (&str, Option<&str>),
        (field, in_file): (&str, &str),
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        match given {
            Some(v) => parse(v).map_err(|message| ConfigError {
                source_name: "command line".to_string(),
                field: flag.to_string(),
                message,
            }),
            None => parse(in_file).map_err(|m| self.error(field, m)),
        }
    }

    fn positive<T: Default + PartialEq>(&self, field: &str, v: T) -> Result<T, ConfigError> {
        if v == T::default() {
            return Err(self.error(field, "must be greater than 0"));
        }
        Ok(v)
    }

    /// A duration in milliseconds, which must be greater than 0.
    fn millis(&self, field: &str, v: u64) -> Result<Duration, ConfigError> {
        self.positive(field, v).map(Duration::from_millis)
    }

    fn at_least<T: PartialOrd + Display>(
        &self,
        field: &str,
        v: T,
        min: T,
    ) -> Result<T, ConfigError> {
        if v < min {
            return Err(self.error(field, format!("must be at least {min}, got {v}")));
        }
        Ok(v)
    }

    fn between<T: PartialOrd + Display>(
        &self,
        field: &str,
        v: T,
        (min, max): (T, T),
    ) -> Result<T, ConfigError> {
        if v < min || v > max {
            return Err(self.error(field, format!("must be between {min} and {max}, got {v}")));
        }
        Ok(v)
    }

    /// The value paired with the string the file gave; an error lists the strings allowed.
    fn one_of<T: Copy>(
        &self,
        field: &str,
        v: &str,
        choices: &[(&str, T)],
    ) -> Result<T, ConfigError> {
        if let Some(&(_, value)) = choices.iter().find(|(name, _)| *name == v) {
            return Ok(value);
        }
        let names: Vec<String> = choices
            .iter()
            .map(|(name, _)| format!("{name:?}"))
            .collect();
        let expected = match names.split_last() {
            Some((last, [])) => last.clone(),
            Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
            None => String::new(),
        };
        Err(self.error(field, format!("{v:?}: expected {expected}")))
    }
}

/// The edge bounds: `server.header_timeout_ms`, the connection caps, `limits.max_header_bytes` and
/// `limits.max_headers`.
fn edge(
    s: &file::ServerSection,
    l: &file::LimitsSection,
    src: &Source,
) -> Result<EdgeConfig, ConfigError> {
    Ok(EdgeConfig {
        header_timeout: src.millis("server.header_timeout_ms", s.header_timeout_ms)?,
        max_header_bytes: src.between(
            "limits.max_header_bytes",
            l.max_header_bytes,
            (1024, 1 << 20),
        )?,
        max_headers: src.between("limits.max_headers", l.max_headers, (8, 256))?,
        max_connections: src.positive("server.max_connections", s.max_connections)?,
        max_connections_per_ip: src
            .positive("server.max_connections_per_ip", s.max_connections_per_ip)?,
    })
}

/// `[server]`: the two listeners (flags first), the worker threads, the grace period.
fn server(
    s: &file::ServerSection,
    overrides: &Overrides,
    src: &Source,
) -> Result<(SocketAddr, SocketAddr, usize, Duration), ConfigError> {
    let listen = src.flag_or_file(
        ("--listen", overrides.listen.as_deref()),
        ("server.listen", &s.listen),
        parse_addr,
    )?;
    let admin = src.flag_or_file(
        ("--admin", overrides.admin.as_deref()),
        ("server.admin", &s.admin),
        parse_addr,
    )?;
    if listen == admin {
        return Err(src.error(
            "server.admin",
            format!("must differ from server.listen ({listen})"),
        ));
    }
    let threads = src.between("server.threads", s.threads, (1, 256))?;
    let grace_period = Duration::from_secs(s.grace_period_seconds);
    Ok((listen, admin, threads, grace_period))
}

/// The longest path a Unix socket address holds (`sun_path` is 108 bytes on Linux, with its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// `server.upgrade_sock` and `server.pid_file`: absolute (a relative path is taken from the working directory
/// now, since a daemon changes its own to `/`), in a directory that exists; the socket's path short enough
/// for a Unix socket address.
fn process_files(s: &file::ServerSection, src: &Source) -> Result<(PathBuf, PathBuf), ConfigError> {
    let absolute = |field: &str, p: &str| -> Result<PathBuf, ConfigError> {
        if p.is_empty() {
            return Err(src.error(field, "must not be empty"));
        }
        let path = std::path::absolute(p).map_err(|e| src.error(field, format!("{p:?}: {e}")))?;
        match path.parent() {
            Some(dir) if dir.is_dir() => Ok(path),
            _ => Err(src.error(
                field,
                format!("{}: its directory does not exist", path.display()),
            )),
        }
    };
    let sock = absolute("server.upgrade_sock", &s.upgrade_sock)?;
    let len = sock.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(src.error(
            "server.upgrade_sock",
            format!(
                "{}: {len} bytes, a Unix socket path holds at most {MAX_SOCKET_PATH}",
                sock.display()
            ),
        ));
    }
    Ok((sock, absolute("server.pid_file", &s.pid_file)?))
}

/// `[[server.tls]]`: each listener's address (not one already taken) and its certificate, read and checked
/// now so that a bad pair fails the start (and `promptgate check`) naming the field.
fn tls_listeners(
    entries: &[file::TlsListenerSection],
    taken: [SocketAddr; 2],
    src: &Source,
) -> Result<Vec<TlsListener>, ConfigError> {
    let mut out: Vec<TlsListener> = Vec::with_capacity(entries.len());
    for (i, t) in entries.iter().enumerate() {
        let field = |name: &str| format!("server.tls[{i}].{name}");
        let listen = parse_addr(&t.listen).map_err(|m| src.error(&field("listen"), m))?;
        if taken.contains(&listen) || out.iter().any(|o| o.listen == listen) {
            return Err(src.error(
                &field("listen"),
                format!("{listen} is already server.listen, server.admin or another TLS listener"),
            ));
        }
        for (name, path) in [("cert_file", &t.cert_file), ("key_file", &t.key_file)] {
            if path.as_os_str().is_empty() {
                return Err(src.error(&field(name), "is required (a PEM file)"));
            }
        }
        let files = crate::tls::CertFiles {
            cert: t.cert_file.clone(),
            key: t.key_file.clone(),
        };
        files.load().map_err(|(which, e)| {
            let name = match which {
                crate::tls::Which::Cert => "cert_file",
                crate::tls::Which::Key => "key_file",
            };
            src.error(&field(name), e.to_string())
        })?;
        out.push(TlsListener { listen, files });
    }
    Ok(out)
}

/// `[rules]`: where the rules live (the flag first), reloading, the budget of a rule set; and `[inspect]
/// policy`, the policy of requests nothing else assigns one (its existence is the rule set's to check).
fn rules(
    r: &file::RulesSection,
    policy: Option<&str>,
    overrides: &Overrides,
    src: &Source,
) -> Result<RulesConfig, ConfigError> {
    if policy.is_some_and(|p| p.trim().is_empty()) {
        return Err(src.error(
            "inspect.policy",
            "must name a policy of the rules directory (leave it out for every rule as written)",
        ));
    }
    Ok(RulesConfig {
        policy: policy.map(str::to_string),
        dir: overrides.rules.clone().unwrap_or_else(|| r.dir.clone()),
        watch: r.watch,
        debounce: Duration::from_millis(r.reload_debounce_ms),
        budget: crate::rules::Budget {
            max_terms: r.max_terms,
            max_regex_bytes: r.max_regex_bytes,
            max_compile: src.millis("rules.max_compile_ms", r.max_compile_ms)?,
        },
    })
}

/// `[inspect]` and `[policy]`, with the `[limits]` on body and answer sizes that inspection works within.
fn inspect(
    i: &file::InspectSection,
    policy: &file::PolicySection,
    l: &file::LimitsSection,
    src: &Source,
) -> Result<InspectConfig, ConfigError> {
    use crate::inspect::OpaquePolicy;
    let unknown_routes = src.one_of(
        "inspect.unknown_routes",
        &i.unknown_routes,
        &[
            ("inspect", UnknownRoutes::Inspect),
            ("pass", UnknownRoutes::Pass),
            ("deny", UnknownRoutes::Deny),
        ],
    )?;
    let opaque = src.one_of(
        "inspect.opaque_inputs",
        &i.opaque_inputs,
        &[("pass", OpaquePolicy::Pass), ("deny", OpaquePolicy::Deny)],
    )?;
    let monitor = src.one_of(
        "policy.mode",
        &policy.mode,
        &[("enforce", false), ("monitor", true)],
    )?;
    let max_depth = src.between("inspect.max_json_depth", i.max_json_depth, (2, 1024))?;
    let max_stream_hold = src.between(
        "inspect.max_stream_hold_bytes",
        i.max_stream_hold_bytes,
        (64, 1 << 20),
    )?;
    let max_response_bytes = src.positive("limits.max_response_bytes", l.max_response_bytes)?;
    let max_body_bytes = src.positive("limits.max_body_bytes", l.max_body_bytes)?;
    if l.max_decoded_body_bytes < max_body_bytes {
        return Err(src.error(
            "limits.max_decoded_body_bytes",
            format!("must be at least limits.max_body_bytes ({max_body_bytes})"),
        ));
    }
    let upgrades = src.one_of(
        "inspect.websocket",
        &i.websocket,
        &[("deny", Upgrades::Deny), ("pass", Upgrades::Pass)],
    )?;
    let body_timeout = src.millis("limits.body_timeout_ms", l.body_timeout_ms)?;
    Ok(InspectConfig {
        enabled: i.enabled,
        upgrades,
        body_timeout,
        unknown_routes,
        options: crate::inspect::InspectOptions {
            max_depth,
            opaque,
            monitor,
        },
        max_body_bytes,
        max_decoded_body_bytes: l.max_decoded_body_bytes,
        max_response_bytes,
        max_stream_hold,
        fail_open: policy.fail_open,
    })
}

/// How the gateway governs realtime sessions (`[realtime]` and the WebSocket `limits`).
#[derive(Debug, Clone, Copy)]
pub struct RealtimeConfig {
    /// `/v1/realtime` upgrades are served (inspected); off, they meet `inspect.websocket` like any upgrade.
    pub enabled: bool,
    /// What a blocked event does to the session.
    pub on_block: OnBlock,
    /// Close the session (1008) after this many blocks; 0: never.
    pub close_after_blocks: u32,
    /// The largest message either side may send (`limits.max_ws_message_bytes`); over it: close 1009.
    pub max_message_bytes: usize,
    /// Client messages per second per session (`limits.ws_messages_per_second`); 0: unlimited.
    pub messages_per_second: u32,
}

/// What a blocked event does to a realtime session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnBlock {
    /// The client gets an `error` event; the session goes on.
    Error,
    /// The session is closed with 1008 (policy violation).
    Close,
}

fn realtime(
    r: &file::RealtimeSection,
    l: &file::LimitsSection,
    src: &Source<'_>,
) -> Result<RealtimeConfig, ConfigError> {
    Ok(RealtimeConfig {
        enabled: r.enabled,
        on_block: src.one_of(
            "realtime.on_block",
            &r.on_block,
            &[("error", OnBlock::Error), ("close", OnBlock::Close)],
        )?,
        close_after_blocks: r.close_after_blocks,
        max_message_bytes: src.between(
            "limits.max_ws_message_bytes",
            l.max_ws_message_bytes,
            (1024, 256 << 20),
        )?,
        messages_per_second: l.ws_messages_per_second,
    })
}

/// `[auth]`, with the `[limits]` of passthrough callers: the quotas and the window they are counted over.
fn auth(
    a: &file::AuthSection,
    l: &file::LimitsSection,
    src: &Source,
) -> Result<(AuthConfig, Duration), ConfigError> {
    let gateway_keys = src.one_of(
        "auth.mode",
        &a.mode,
        &[("passthrough", false), ("gateway_keys", true)],
    )?;
    if let Some(o) = a
        .allowed_origins
        .iter()
        .find(|o| o.as_str() == "null" || o.ends_with('/'))
    {
        return Err(src.error(
            "auth.allowed_origins",
            format!("{o:?} is not an origin (scheme://host[:port], or \"*\")"),
        ));
    }
    l.per_caller.validate().map_err(|m| {
        let (field, message) = m.split_once(": ").unwrap_or(("", m.as_str()));
        src.error(&format!("limits.per_caller.{field}"), message)
    })?;
    let window = src.between("limits.window_seconds", l.window_seconds, (1, 3600))?;
    let auth = AuthConfig {
        keys_file: gateway_keys.then(|| a.keys_file.clone()),
        watch: a.watch,
        hash_key_env: a.caller_hash_key_env.clone(),
        allowed_origins: a.allowed_origins.clone(),
        caller_limits: l.per_caller,
    };
    Ok((auth, Duration::from_secs(window)))
}

/// `limits.backend` and `[limits.redis]`.
fn limits_backend(
    l: &file::LimitsSection,
    auth: &AuthConfig,
    src: &Source,
) -> Result<LimitsBackend, ConfigError> {
    let redis = src.one_of(
        "limits.backend",
        &l.backend,
        &[("local", false), ("redis", true)],
    )?;
    if !redis {
        return Ok(LimitsBackend::Local);
    }
    let r = &l.redis;
    let url = url::Url::parse(&r.url)
        .map_err(|e| src.error("limits.redis.url", format!("invalid URL {:?} ({e})", r.url)))?;
    if !matches!(url.scheme(), "redis" | "rediss") {
        return Err(src.error(
            "limits.redis.url",
            format!(
                "invalid URL {:?} (scheme {:?}: expected redis:// or rediss:// for TLS)",
                r.url,
                url.scheme()
            ),
        ));
    }
    if url.password().is_some() {
        return Err(src.error(
            "limits.redis.url",
            "a password in the URL is not allowed: name an environment variable holding it in \
             limits.redis.password_env",
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(src.error(
            "limits.redis.url",
            format!("invalid URL {:?} (no host)", r.url),
        ));
    }
    let password = match r.password_env.as_str() {
        "" => None,
        var => match std::env::var(var) {
            Ok(p) if !p.is_empty() => Some(p),
            _ => {
                return Err(src.error(
                    "limits.redis.password_env",
                    format!("${var} must hold the Redis password (or set password_env = \"\")"),
                ))
            }
        },
    };
    if r.prefix.is_empty()
        || r.prefix.contains(['{', '}'])
        || r.prefix.contains(char::is_whitespace)
    {
        return Err(src.error(
            "limits.redis.prefix",
            format!(
                "{:?}: expected a non-empty name without braces or spaces",
                r.prefix
            ),
        ));
    }
    // Callers must have the same id on every gateway, or each would count them under another name.
    if auth.keys_file.is_none()
        && std::env::var(&auth.hash_key_env)
            .unwrap_or_default()
            .is_empty()
    {
        return Err(src.error(
            "limits.backend",
            format!(
                "\"redis\" with auth.mode = \"passthrough\" needs ${} set to the same secret on every \
                 gateway (callers are counted by a keyed hash of their credential; a per-process key would \
                 name each caller differently on each gateway)",
                auth.hash_key_env
            ),
        ));
    }
    Ok(LimitsBackend::Redis(RedisConfig {
        url: r.url.clone(),
        password,
        prefix: r.prefix.clone(),
        pool_size: src.between("limits.redis.pool_size", r.pool_size, (1, 64))?,
        timeout: Duration::from_millis(src.between(
            "limits.redis.timeout_ms",
            r.timeout_ms,
            (1, 60_000),
        )?),
        lease: Duration::from_millis(src.between(
            "limits.redis.lease_ms",
            r.lease_ms,
            (1000, 3_600_000),
        )?),
        on_unavailable: src.one_of(
            "limits.redis.on_unavailable",
            &r.on_unavailable,
            &[
                ("local", OnUnavailable::Local),
                ("allow", OnUnavailable::Allow),
                ("deny", OnUnavailable::Deny),
            ],
        )?,
    }))
}

/// `[admin]`: the token named by `token_env` must be set and non-empty when a name is given.
fn admin_token(a: &file::AdminSection, src: &Source) -> Result<Option<AdminToken>, ConfigError> {
    if a.token_env.is_empty() {
        return Ok(None);
    }
    match std::env::var(&a.token_env) {
        Ok(t) if !t.trim().is_empty() => Ok(Some(AdminToken(t.trim().to_string()))),
        _ => Err(src.error(
            "admin.token_env",
            format!(
                "${} must hold the admin bearer token (set it, or remove admin.token_env to leave the \
                 admin endpoints open)",
                a.token_env
            ),
        )),
    }
}

/// `[audit]`: `None` when disabled.
fn audit(a: &file::AuditSection, src: &Source) -> Result<Option<AuditConfig>, ConfigError> {
    if !a.enabled {
        return Ok(None);
    }
    let interval = src.one_of(
        "audit.fsync",
        &a.fsync,
        &[("always", false), ("interval", true)],
    )?;
    let fsync = match interval {
        true => Fsync::Interval(src.millis("audit.fsync_interval_ms", a.fsync_interval_ms)?),
        false => Fsync::Always,
    };
    let block_when_full = src.one_of(
        "audit.on_full",
        &a.on_full,
        &[("block", true), ("drop", false)],
    )?;
    let fail_closed = src.one_of(
        "audit.on_failure",
        &a.on_failure,
        &[("fail_closed", true), ("fail_open", false)],
    )?;
    let write_ahead = src.one_of(
        "audit.durability",
        &a.durability,
        &[("async", false), ("write_ahead", true)],
    )?;
    Ok(Some(AuditConfig {
        dir: a.dir.clone(),
        fsync,
        max_file_bytes: src.at_least("audit.max_file_bytes", a.max_file_bytes, 4096)?,
        keep_files: src.at_least("audit.keep_files", a.keep_files, 2)?,
        queue: src.positive("audit.queue", a.queue)?,
        block_when_full,
        fail_closed,
        write_ahead,
        stdout: a.stdout,
        webhook: webhook(&a.webhook, src)?,
    }))
}

/// `[audit.webhook]`: `None` when it has no URL.
fn webhook(w: &file::WebhookSection, src: &Source) -> Result<Option<WebhookConfig>, ConfigError> {
    if w.url.is_empty() {
        return Ok(None);
    }
    let t = parse_upstream_url(&w.url).map_err(|m| src.error("audit.webhook.url", m))?;
    let secret = std::env::var(&w.secret_env).unwrap_or_default();
    if secret.is_empty() {
        return Err(src.error(
            "audit.webhook.secret_env",
            format!("${} must hold the webhook's signing secret", w.secret_env),
        ));
    }
    const TYPES: [&str; 4] = [
        "chat.message",
        "chat.blocked",
        "chat.escalated",
        "audit.intent",
    ];
    if let Some(bad) = w.events.iter().find(|e| !TYPES.contains(&e.as_str())) {
        return Err(src.error(
            "audit.webhook.events",
            format!("{bad:?}: expected some of {TYPES:?}"),
        ));
    }
    if w.timeout_ms == 0 || w.batch_max == 0 {
        return Err(src.error(
            "audit.webhook",
            "timeout_ms and batch_max must be greater than 0",
        ));
    }
    let timeout = Duration::from_millis(w.timeout_ms);
    Ok(Some(WebhookConfig {
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

    /// The shipped file documents every key with its default: parsed, it must equal no file at all.
    #[test]
    fn the_shipped_config_states_the_defaults() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/promptgate.toml");
        let text = std::fs::read_to_string(path).expect("conf/promptgate.toml");
        let shipped = FileConfig::parse(&text).map_err(|(f, m)| format!("{f}: {m}"));
        assert_eq!(
            format!("{:?}", shipped.expect("parses")),
            format!("{:?}", FileConfig::default())
        );
    }

    #[test]
    fn tls_listeners_are_checked_at_start_naming_the_field() {
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).expect("write");
            p.display().to_string()
        };
        let a = rcgen::generate_simple_self_signed(vec!["a.test".into()]).expect("cert");
        let b = rcgen::generate_simple_self_signed(vec!["b.test".into()]).expect("cert");
        let (cert, key) = (
            write("a.crt", &a.cert.pem()),
            write("a.key", &a.key_pair.serialize_pem()),
        );
        let other_key = write("b.key", &b.key_pair.serialize_pem());
        let junk = write("junk.pem", "not pem");
        let entry = |listen: &str, cert: &str, key: &str| {
            format!("[[server.tls]]\nlisten = \"{listen}\"\ncert_file = \"{cert}\"\nkey_file = \"{key}\"\n")
        };
        let ok = entry("127.0.0.1:8443", &cert, &key);
        let c = load_str(&ok, &Overrides::default()).expect("valid");
        assert_eq!(c.tls.len(), 1);
        assert_eq!(c.tls[0].listen.port(), 8443);
        assert!(!c.h2c);
        let cases = [
            (
                entry("127.0.0.1:8443", &cert, &other_key),
                "server.tls[0].key_file: ",
            ),
            (
                entry("127.0.0.1:8443", &junk, &key),
                "server.tls[0].cert_file: ",
            ),
            (
                entry("127.0.0.1:8443", "/nonexistent/c.pem", &key),
                "server.tls[0].cert_file: cannot read",
            ),
            (
                entry("127.0.0.1:8443", &cert, ""),
                "server.tls[0].key_file: is required",
            ),
            (
                entry("127.0.0.1:8080", &cert, &key),
                "server.tls[0].listen: 127.0.0.1:8080 is already",
            ),
            (
                format!("{ok}{}", entry("127.0.0.1:8443", &cert, &key)),
                "server.tls[1].listen: ",
            ),
            (
                entry("nope", &cert, &key),
                "server.tls[0].listen: invalid address",
            ),
        ];
        for (text, want) in cases {
            let err = load_str(&text, &Overrides::default()).expect_err(want);
            assert!(err.starts_with(&format!("x.toml: {want}")), "{want}: {err}");
        }
    }

    #[test]
    fn upgrade_socket_and_pid_file_are_absolute_in_a_directory_that_exists() {
        let c = load_str("", &Overrides::default()).expect("defaults");
        assert_eq!(
            c.upgrade_sock,
            PathBuf::from("/tmp/promptgate-upgrade.sock")
        );
        assert_eq!(c.pid_file, PathBuf::from("/tmp/promptgate.pid"));
        // Relative: from the working directory at start (a daemon moves to `/` later).
        let c = load_str(
            "[server]\nupgrade_sock = \"up.sock\"",
            &Overrides::default(),
        )
        .expect("relative");
        assert_eq!(
            c.upgrade_sock,
            std::env::current_dir().expect("cwd").join("up.sock")
        );
        let long = format!("/tmp/{}.sock", "s".repeat(110));
        let cases = [
            (
                "upgrade_sock = \"\"",
                "server.upgrade_sock: must not be empty",
            ),
            (
                "upgrade_sock = \"/nonexistent/dir/up.sock\"",
                "server.upgrade_sock: /nonexistent/dir/up.sock: its directory",
            ),
            (
                &*format!("upgrade_sock = \"{long}\""),
                "server.upgrade_sock: /tmp/sss",
            ),
            (
                "pid_file = \"/nonexistent/p.pid\"",
                "server.pid_file: /nonexistent/p.pid: its directory",
            ),
        ];
        for (line, want) in cases {
            let err =
                load_str(&format!("[server]\n{line}"), &Overrides::default()).expect_err(want);
            assert!(err.starts_with(&format!("x.toml: {want}")), "{want}: {err}");
        }
    }

    #[test]
    fn defaults_are_valid() {
        let c = load_str("", &Overrides::default()).expect("defaults");
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.admin.to_string(), "127.0.0.1:9901");
    }

    #[test]
    fn bad_values_name_the_field() {
        // (file, the error's start `x.toml: FIELD: WHAT`, the line named when the error is about the text)
        let cases: &[(&str, &str, Option<usize>)] = &[
            (
                "[upstream]\nurl = \"htp://x\"",
                "x.toml: upstream.url: invalid URL \"htp://x\"",
                None,
            ),
            (
                "[server]\nlisten = \"nope\"",
                "x.toml: server.listen: invalid address \"nope\"",
                None,
            ),
            (
                "[server]\nthreads = 0",
                "x.toml: server.threads: must be between 1 and 256",
                None,
            ),
            (
                "[upstream]\nread_timeout_ms = 0",
                "x.toml: upstream.read_timeout_ms: must be greater",
                None,
            ),
            (
                "[server]\nlisen = \"x\"",
                "x.toml: server.lisen: unknown field",
                Some(2),
            ),
            (
                "[upstream]\nurl = 5",
                "x.toml: upstream.url: expected a URL, or a list of URLs",
                Some(2),
            ),
            // The file's shape: each top-level key is one of the sections, and a table.
            (
                "[audit]\nenabled = true\n[metrics]\nx = 1",
                "x.toml: metrics: unknown section [metrics] (line 3); expected one of server, upstream, rules, \
                 inspect, policy, limits, auth, audit",
                Some(3),
            ),
            (
                "metrics.x = 1\n[server]\nthreads = 2",
                "x.toml: metrics: unknown section [metrics]",
                Some(1),
            ),
            (
                "[[audit]]\ndir = \"x\"",
                "x.toml: audit: must be a table [audit], found an array of tables [[audit]]",
                Some(1),
            ),
            (
                "server = 5",
                "x.toml: server: must be a table [server], found an integer",
                Some(1),
            ),
            (
                "[server]\nthreads = 2\n[rules]\nwatch = true\n[[limits]]",
                "x.toml: limits: must be a table [limits], found an array of tables [[limits]]",
                Some(5),
            ),
            (
                "upstream = [\"http://x\"]",
                "x.toml: upstream: must be a table [upstream], found an array",
                Some(1),
            ),
            (
                "\naudit = 1979-05-27",
                "x.toml: audit: must be a table [audit], found a date-time",
                Some(2),
            ),
            (
                "[rules]\nwatch = true\n[audit]\nenabled = true\n[inspect]\n\npolcy = \"x\"\nrules = [1]",
                "x.toml: inspect.polcy: unknown field",
                Some(7),
            ),
            // Nested tables, inline tables, dotted and quoted keys, values over several lines.
            (
                "[audit.webhook]\nurl = \"http://x\"\nsecert_env = \"S\"",
                "x.toml: audit.webhook.secert_env: unknown field `secert_env`",
                Some(3),
            ),
            (
                "[limits.per_caller]\nrequests_per_min = 5",
                "x.toml: limits.per_caller.requests_per_min: unknown field",
                Some(2),
            ),
            (
                "[audit.webhook]\nbatch_max = \"x\"",
                "x.toml: audit.webhook.batch_max: invalid type",
                Some(2),
            ),
            (
                "audit = { webhook = { batch_max = \"x\" } }",
                "x.toml: audit.webhook.batch_max: invalid type",
                Some(1),
            ),
            (
                "[limits]\nper_caller = { requests_per_minute = \"x\" }",
                "x.toml: limits.per_caller.requests_per_minute: invalid type",
                Some(2),
            ),
            (
                "server.listen = 5",
                "x.toml: server.listen: invalid type",
                Some(1),
            ),
            (
                "[audit]\nwebhook.url = 5",
                "x.toml: audit.webhook.url: invalid type",
                Some(2),
            ),
            (
                "[server] # the listeners\nlisen = 1",
                "x.toml: server.lisen: unknown field",
                Some(2),
            ),
            (
                "[server]\n\"lisen\" = 1",
                "x.toml: server.lisen: unknown field",
                Some(2),
            ),
            (
                "[audit.webhook]\nevents = [\n  \"chat.message\",\n  5,\n]",
                "x.toml: audit.webhook.events: invalid type",
                Some(4),
            ),
            (
                "[server.listen]\nx = 1",
                "x.toml: server.listen: invalid type",
                Some(1),
            ),
            (
                "[server]\nthreads = 2\n[server.listen]\nx = 1",
                "x.toml: server.listen: invalid type",
                Some(3),
            ),
            (
                "[server]\nthreads = 2\n\nadmin.x = 1",
                "x.toml: server.admin: invalid type",
                Some(4),
            ),
            (
                "[audit]\nenabled = true\n\n[[audit.webhook]]\nurl = \"http://x\"",
                "x.toml: audit.webhook: invalid type",
                Some(4),
            ),
            (
                "[server]\nlisten = 1979-05-27",
                "x.toml: server.listen: invalid type",
                Some(2),
            ),
            // Not TOML: no field to name, the line says where.
            (
                "[server]\nthreads = two",
                "x.toml: (file): invalid string",
                Some(2),
            ),
            (
                "[server]\nlisten = \"127.0.0.1:1\"\nlisten = \"127.0.0.1:2\"",
                "x.toml: (file): duplicate key `listen`",
                Some(3),
            ),
        ];
        let mut wrong = Vec::new();
        for &(text, want, line) in cases {
            let got = load_str(text, &Overrides::default()).expect_err(text);
            let line_ok = line.is_none_or(|l| got.contains(&format!("(line {l})")));
            if !got.starts_with(want) || !line_ok || got.contains('\n') {
                wrong.push(format!(
                    "{text:?}\n   got  {got:?}\n   want {want:?} at line {line:?}"
                ));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
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
        assert_eq!(c.upstreams[0].endpoints[0].target.base_path, "/base");
        assert_eq!(c.upstreams[0].endpoints[0].target.authority, "127.0.0.1:9");
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
    fn redis_limits_are_validated() {
        const KEYS: &str = "[auth]\nmode = \"gateway_keys\"\n";
        let cases: &[(&str, &str)] = &[
            (
                "[limits]\nbackend = \"memcached\"",
                "x.toml: limits.backend: \"memcached\": expected \"local\" or \"redis\"",
            ),
            (
                "[limits]\nbackend = \"redis\"\n[limits.redis]\nurl = \"http://127.0.0.1:6379\"",
                "x.toml: limits.redis.url: invalid URL \"http://127.0.0.1:6379\" (scheme \"http\"",
            ),
            (
                "[limits]\nbackend = \"redis\"\n[limits.redis]\nurl = \"redis://:hunter2@127.0.0.1/0\"",
                "x.toml: limits.redis.url: a password in the URL is not allowed",
            ),
            (
                "[limits]\nbackend = \"redis\"\n[limits.redis]\ntimeout_ms = 0",
                "x.toml: limits.redis.timeout_ms: must be between 1 and",
            ),
            (
                "[limits]\nbackend = \"redis\"\n[limits.redis]\nlease_ms = 999",
                "x.toml: limits.redis.lease_ms: must be between 1000 and",
            ),
            (
                "[limits]\nbackend = \"redis\"\n[limits.redis]\npool_size = 0",
                "x.toml: limits.redis.pool_size: must be between 1 and",
            ),
            (
                "[limits]\nbackend = \"redis\"\n[limits.redis]\non_unavailable = \"hope\"",
                "x.toml: limits.redis.on_unavailable: \"hope\": expected \"local\", \"allow\" or \"deny\"",
            ),
            (
                "[limits]\nbackend = \"redis\"\n[limits.redis]\nprefix = \"a{b}\"",
                "x.toml: limits.redis.prefix:",
            ),
            (
                "[limits]\nbackend = \"redis\"\n[limits.redis]\npassword_env = \"PROMPTGATE_TEST_NEVER_SET\"",
                "x.toml: limits.redis.password_env: $PROMPTGATE_TEST_NEVER_SET must hold the Redis password",
            ),
            (
                "[limits.redis]\npassword = \"x\"",
                "x.toml: limits.redis.password: unknown field",
            ),
        ];
        let mut wrong = Vec::new();
        for &(text, want) in cases {
            let text = format!("{KEYS}{text}");
            match load_str(&text, &Overrides::default()) {
                Err(got) if got.starts_with(want) => {}
                other => wrong.push(format!("{text:?}\n   got  {other:?}\n   want {want:?}")),
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
        // Valid: a TLS URL, the password from the environment (PATH is always set), the test's short lease.
        let c = load_str(
            &format!(
                "{KEYS}[limits]\nbackend = \"redis\"\n[limits.redis]\nurl = \"rediss://cache.internal:6380/2\"\n\
                 password_env = \"PATH\"\nlease_ms = 2000\ntimeout_ms = 50\non_unavailable = \"deny\""
            ),
            &Overrides::default(),
        )
        .expect("valid");
        let LimitsBackend::Redis(r) = c.limits_backend else {
            panic!("redis backend expected");
        };
        assert_eq!(r.lease, Duration::from_millis(2000));
        assert_eq!(r.on_unavailable, OnUnavailable::Deny);
        assert!(r.password.is_some());
        assert!(
            !format!("{r:?}").contains(&std::env::var("PATH").unwrap_or_default()),
            "the password is never printed"
        );
    }

    #[test]
    fn redis_limits_need_one_caller_hash_key_across_the_fleet() {
        // Passthrough callers are named by a keyed hash: without a shared key each gateway names them apart.
        let text = |env: &str| {
            format!("[auth]\ncaller_hash_key_env = \"{env}\"\n[limits]\nbackend = \"redis\"")
        };
        let err = load_str(&text("PROMPTGATE_TEST_NEVER_SET"), &Overrides::default())
            .expect_err("no caller hash key");
        assert!(
            err.starts_with("x.toml: limits.backend: \"redis\" with auth.mode = \"passthrough\" needs $PROMPTGATE_TEST_NEVER_SET"),
            "{err}"
        );
        load_str(&text("PATH"), &Overrides::default()).expect("a key set in the environment");
        load_str("[limits]\nbackend = \"local\"", &Overrides::default()).expect("local needs none");
    }

    #[test]
    fn upstream_pools_are_checked_naming_the_entry_at_fault() {
        let two = |a: &str, b: &str| {
            format!("[[upstream]]\nname = \"a\"\nurl = \"http://127.0.0.1:1\"\n{a}\n[[upstream]]\nname = \"b\"\nurl = \"http://127.0.0.1:2\"\n{b}\n")
        };
        let none = Overrides::default();
        let cases = [
            (two("default = true", "models = [\"m\"]"), None),
            (
                two("default = true", ""),
                Some("x.toml: upstream[1]: \"b\" serves nothing"),
            ),
            (
                two("default = true", "default = true"),
                Some("only one upstream can be the default"),
            ),
            (
                two("default = true\nfallback = \"c\"", "paths = [\"/v1/x\"]"),
                Some("upstream[0].fallback: \"c\""),
            ),
            (
                two("default = true\nfallback = \"a\"", "paths = [\"/v1/x\"]"),
                Some("upstream[0].fallback"),
            ),
            (
                two("models = [\"a*b\"]", "default = true"),
                Some("upstream[0].models: \"a*b\""),
            ),
            (
                two("models = [\"*\"]", "default = true"),
                Some("upstream[0].models"),
            ),
            (
                two("paths = [\"v1\"]", "default = true"),
                Some("upstream[0].paths"),
            ),
            (
                two("balance = \"random\"", "default = true"),
                Some("upstream[0].balance"),
            ),
            (
                two(
                    "default = true\nkey_env = \"PG_TEST_UNSET_POOL_KEY\"",
                    "models = [\"m\"]",
                ),
                Some("upstream[0].key_env"),
            ),
            (
                two(
                    "default = true\n[upstream.health]\ninterval_ms = 0",
                    "models = [\"m\"]",
                ),
                Some("upstream[0].health.interval_ms"),
            ),
            (
                two(
                    "default = true\n[upstream.dns]\nservers = [\"x\"]",
                    "models = [\"m\"]",
                ),
                Some("upstream[0].dns.servers"),
            ),
            (
                "[[upstream]]\nname = \"a\"\nurl = []\ndefault = true".to_string(),
                Some("upstream[0].url: at least one URL"),
            ),
            (
                "[[upstream]]\nurl = \"http://x\"".to_string(),
                Some("upstream[0].name: every [[upstream]] needs a name"),
            ),
            (
                "[[upstream]]\nname = \"a b\"\nurl = \"http://x\"".to_string(),
                Some("upstream[0].name"),
            ),
            (
                two("default = true", "models = [\"m\"]").replace("name = \"b\"", "name = \"a\""),
                Some("upstream[1].name: \"a\" names two upstreams"),
            ),
            (
                "[[upstream]]\nname = \"a\"\nurl = [{ url = \"http://x\", weight = 0 }]"
                    .to_string(),
                Some("weight"),
            ),
        ];
        for (text, want) in &cases {
            let got = load_str(text, &none);
            match (want, &got) {
                (None, Ok(_)) => {}
                (Some(w), Err(e)) if e.contains(w) => {}
                _ => panic!("{text}\n got {got:?}\n want {want:?}"),
            }
        }
        // `--upstream` replaces the one pool's URL; with several it is refused.
        let flag = Overrides {
            upstream: Some("http://127.0.0.1:9".into()),
            ..Overrides::default()
        };
        let err = load_str(&two("default = true", "models = [\"m\"]"), &flag).expect_err("several");
        assert!(
            err.starts_with("command line: --upstream: replaces the URL of the one upstream"),
            "{err}"
        );
        // Weighted endpoints and a single table's implicit name and default.
        let c = load_str(
            "[upstream]\nurl = [\"http://127.0.0.1:1\", { url = \"https://h.example:8443/v1\", weight = 3 }]",
            &none,
        )
        .expect("valid");
        let p = &c.upstreams[0];
        assert_eq!((p.name.as_str(), p.default), ("default", true));
        let eps: Vec<(&str, usize, bool)> = p
            .endpoints
            .iter()
            .map(|e| (e.target.authority.as_str(), e.weight, e.target.tls))
            .collect();
        assert_eq!(
            eps,
            [("127.0.0.1:1", 1, false), ("h.example:8443", 3, true)]
        );
        assert_eq!(p.endpoints[1].target.base_path, "/v1");
    }

    #[test]
    fn https_upstream_keeps_host_for_sni() {
        let o = Overrides {
            upstream: Some("https://127.0.0.1".into()),
            ..Default::default()
        };
        let c = load_str("", &o).expect("valid");
        assert!(c.upstreams[0].endpoints[0].target.tls);
        assert_eq!(c.upstreams[0].endpoints[0].target.port, 443);
        assert_eq!(c.upstreams[0].endpoints[0].target.authority, "127.0.0.1");
    }
}
