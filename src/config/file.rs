//! The on-disk TOML format. Every section rejects unknown keys; defaults live here and nowhere else. Parsing names
//! the place of each error (see `FileConfig::parse`); what the values mean is checked by the caller.

use std::path::PathBuf;

use serde::Deserialize;

use super::outline::{line_of, Node, Outline};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    pub server: ServerSection,
    pub upstream: Upstreams,
    pub rules: RulesSection,
    pub inspect: InspectSection,
    pub policy: PolicySection,
    pub limits: LimitsSection,
    pub auth: AuthSection,
    pub audit: AuditSection,
    pub realtime: RealtimeSection,
    pub tracing: TracingSection,
    pub log: LogSection,
    pub admin: AdminSection,
}

/// `[tracing]`: OpenTelemetry traces exported over OTLP.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracingSection {
    pub enabled: bool,
    pub endpoint: String,
    pub protocol: String,
    pub headers_env: String,
    pub sampling_ratio: f64,
    pub service_name: String,
    pub queue: usize,
    pub batch_max: usize,
    pub flush_interval_ms: u64,
    pub timeout_ms: u64,
    pub retries: u32,
}

impl Default for TracingSection {
    fn default() -> Self {
        Self {
            enabled: false,
            endpoint: "http://127.0.0.1:4318".into(),
            protocol: "http/protobuf".into(),
            headers_env: String::new(),
            sampling_ratio: 1.0,
            service_name: "promptgate".into(),
            queue: 2048,
            batch_max: 512,
            flush_interval_ms: 1000,
            timeout_ms: 10_000,
            retries: 2,
        }
    }
}

/// `[log]`: how the gateway's own log lines are written (stderr).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    pub format: String,
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            format: "text".into(),
        }
    }
}

/// `[admin]`: the admin listener's access (its address is `server.admin`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSection {
    /// The environment variable holding the admin bearer token; empty: no token.
    pub token_env: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RealtimeSection {
    pub enabled: bool,
    pub on_block: String,
    pub close_after_blocks: u32,
}

impl Default for RealtimeSection {
    fn default() -> Self {
        Self {
            enabled: true,
            on_block: "error".into(),
            close_after_blocks: 0,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditSection {
    pub enabled: bool,
    pub dir: PathBuf,
    pub fsync: String,
    pub fsync_interval_ms: u64,
    pub max_file_bytes: u64,
    pub keep_files: usize,
    pub queue: usize,
    pub on_full: String,
    pub on_failure: String,
    pub durability: String,
    pub stdout: bool,
    pub webhook: WebhookSection,
}

impl Default for AuditSection {
    fn default() -> Self {
        Self {
            enabled: true,
            dir: PathBuf::from("audit"),
            fsync: "always".into(),
            fsync_interval_ms: 1000,
            max_file_bytes: 64 << 20,
            keep_files: 16,
            queue: 65_536,
            on_full: "block".into(),
            on_failure: "fail_closed".into(),
            durability: "async".into(),
            stdout: false,
            webhook: WebhookSection::default(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookSection {
    pub url: String,
    pub secret_env: String,
    pub events: Vec<String>,
    pub batch_max: usize,
    pub timeout_ms: u64,
    pub max_backoff_ms: u64,
}

impl Default for WebhookSection {
    fn default() -> Self {
        Self {
            url: String::new(),
            secret_env: "PROMPTGATE_WEBHOOK_SECRET".into(),
            events: vec![
                "chat.message".into(),
                "chat.blocked".into(),
                "chat.escalated".into(),
            ],
            batch_max: 100,
            timeout_ms: 10_000,
            max_backoff_ms: 30_000,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSection {
    pub mode: String,
    pub keys_file: PathBuf,
    pub watch: bool,
    pub caller_hash_key_env: String,
    pub allowed_origins: Vec<String>,
}

impl Default for AuthSection {
    fn default() -> Self {
        Self {
            mode: "passthrough".into(),
            keys_file: PathBuf::from("conf/keys.toml"),
            watch: true,
            caller_hash_key_env: "PROMPTGATE_CALLER_HASH_KEY".into(),
            allowed_origins: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InspectSection {
    pub enabled: bool,
    pub unknown_routes: String,
    pub opaque_inputs: String,
    pub max_json_depth: usize,
    pub max_stream_hold_bytes: usize,
    pub websocket: String,
    pub policy: Option<String>,
}

impl Default for InspectSection {
    fn default() -> Self {
        Self {
            enabled: true,
            unknown_routes: "inspect".into(),
            opaque_inputs: "pass".into(),
            max_json_depth: 64,
            max_stream_hold_bytes: 8192,
            websocket: "deny".into(),
            policy: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicySection {
    pub mode: String,
    pub fail_open: bool,
}

impl Default for PolicySection {
    fn default() -> Self {
        Self {
            mode: "enforce".into(),
            fail_open: false,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    pub max_body_bytes: usize,
    pub max_decoded_body_bytes: usize,
    pub max_response_bytes: usize,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub body_timeout_ms: u64,
    pub window_seconds: u64,
    pub per_caller: crate::limits::LimitSpec,
    pub backend: String,
    pub redis: RedisSection,
    pub max_ws_message_bytes: usize,
    pub ws_messages_per_second: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisSection {
    pub url: String,
    pub password_env: String,
    pub prefix: String,
    pub pool_size: usize,
    pub timeout_ms: u64,
    pub lease_ms: u64,
    pub on_unavailable: String,
}

impl Default for RedisSection {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379/0".into(),
            password_env: String::new(),
            prefix: "promptgate".into(),
            pool_size: 4,
            timeout_ms: 5,
            lease_ms: 30_000,
            on_unavailable: "local".into(),
        }
    }
}

impl Default for LimitsSection {
    fn default() -> Self {
        Self {
            max_body_bytes: 8 << 20,
            max_decoded_body_bytes: 32 << 20,
            max_response_bytes: 32 << 20,
            max_header_bytes: 60 << 10,
            max_headers: 100,
            body_timeout_ms: 30_000,
            window_seconds: 60,
            per_caller: crate::limits::LimitSpec::default(),
            backend: "local".into(),
            redis: RedisSection::default(),
            max_ws_message_bytes: 16 << 20,
            ws_messages_per_second: 200,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    pub listen: String,
    pub admin: String,
    pub threads: usize,
    pub grace_period_seconds: u64,
    pub header_timeout_ms: u64,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// `[[server.tls]]`: the TLS listeners.
    pub tls: Vec<TlsListenerSection>,
    /// Prior-knowledge HTTP/2 in cleartext on `server.listen`.
    pub h2c: bool,
    /// The Unix socket the listeners are handed over on in a graceful upgrade (`run --upgrade`).
    pub upgrade_sock: String,
    /// Where `run --daemon` writes its process id.
    pub pid_file: String,
}

/// One `[[server.tls]]` entry.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsListenerSection {
    pub listen: String,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            admin: "127.0.0.1:9901".into(),
            threads: 2,
            grace_period_seconds: 30,
            header_timeout_ms: 10_000,
            max_connections: 10_000,
            max_connections_per_ip: 1_000,
            tls: Vec::new(),
            h2c: false,
            upgrade_sock: "/tmp/promptgate-upgrade.sock".into(),
            pid_file: "/tmp/promptgate.pid".into(),
        }
    }
}

/// The upstreams: `[upstream]` (one) or `[[upstream]]` (several, each a pool of endpoints serving some models).
#[derive(Debug)]
pub struct Upstreams {
    pub list: Vec<UpstreamSection>,
    /// Written as an array of tables (`[[upstream]]`), whose entries are then named by index.
    pub array: bool,
}

impl Default for Upstreams {
    fn default() -> Self {
        Self {
            list: vec![UpstreamSection::default()],
            array: false,
        }
    }
}

impl<'de> Deserialize<'de> for Upstreams {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Upstreams;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a table [upstream] or an array of tables [[upstream]]")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Upstreams, A::Error> {
                let one = UpstreamSection::deserialize(
                    serde::de::value::MapAccessDeserializer::new(map),
                )?;
                Ok(Upstreams {
                    list: vec![one],
                    array: false,
                })
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                seq: A,
            ) -> Result<Upstreams, A::Error> {
                let list = Vec::<UpstreamSection>::deserialize(
                    serde::de::value::SeqAccessDeserializer::new(seq),
                )?;
                Ok(Upstreams { list, array: true })
            }
        }
        d.deserialize_any(V)
    }
}

/// One endpoint of a pool: a URL, or `{ url = "…", weight = N }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSection {
    pub url: String,
    pub weight: usize,
}

/// `url`: one URL, or a list of URLs and `{ url, weight }` tables.
fn endpoints<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<EndpointSection>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Entry {
        Url(String),
        Weighted { url: String, weight: usize },
    }
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Urls {
        One(String),
        Many(Vec<Entry>),
    }
    let urls = Urls::deserialize(d).map_err(|_| {
        serde::de::Error::custom(
            "expected a URL, or a list of URLs and { url = \"…\", weight = N } tables",
        )
    })?;
    Ok(match urls {
        Urls::One(url) => vec![EndpointSection { url, weight: 1 }],
        Urls::Many(list) => list
            .into_iter()
            .map(|e| match e {
                Entry::Url(url) => EndpointSection { url, weight: 1 },
                Entry::Weighted { url, weight } => EndpointSection { url, weight },
            })
            .collect(),
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamSection {
    pub name: String,
    #[serde(deserialize_with = "endpoints")]
    pub url: Vec<EndpointSection>,
    pub models: Vec<String>,
    pub paths: Vec<String>,
    pub default: bool,
    pub key_env: String,
    pub key_header: String,
    pub model_map: std::collections::BTreeMap<String, String>,
    pub fallback: String,
    pub balance: String,
    pub eject_ms: u64,
    pub health: HealthSection,
    pub dns: DnsSection,
    pub connect_timeout_ms: u64,
    pub read_timeout_ms: u64,
    pub write_timeout_ms: u64,
    pub idle_timeout_ms: u64,
    pub ca_file: Option<PathBuf>,
}

impl Default for UpstreamSection {
    fn default() -> Self {
        Self {
            name: String::new(),
            url: vec![EndpointSection {
                url: "https://api.openai.com".into(),
                weight: 1,
            }],
            models: Vec::new(),
            paths: Vec::new(),
            default: false,
            key_env: String::new(),
            key_header: "authorization".into(),
            model_map: Default::default(),
            fallback: String::new(),
            balance: "round_robin".into(),
            eject_ms: 10_000,
            health: HealthSection::default(),
            dns: DnsSection::default(),
            connect_timeout_ms: 5_000,
            // A non-streamed completion can think for minutes before its first byte.
            read_timeout_ms: 300_000,
            write_timeout_ms: 30_000,
            idle_timeout_ms: 60_000,
            ca_file: None,
        }
    }
}

/// `[upstream.health]`: the active check of every endpoint of a pool.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthSection {
    pub enabled: bool,
    pub path: String,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub healthy_after: usize,
    pub unhealthy_after: usize,
}

impl Default for HealthSection {
    fn default() -> Self {
        Self {
            enabled: true,
            path: "/v1/models".into(),
            interval_ms: 5_000,
            timeout_ms: 2_000,
            healthy_after: 1,
            unhealthy_after: 2,
        }
    }
}

/// `[upstream.dns]`: how a pool's host names are resolved again.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsSection {
    pub refresh_ms: u64,
    pub servers: Vec<String>,
}

impl Default for DnsSection {
    fn default() -> Self {
        Self {
            refresh_ms: 30_000,
            servers: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RulesSection {
    pub dir: PathBuf,
    pub watch: bool,
    pub reload_debounce_ms: u64,
    pub max_terms: usize,
    pub max_regex_bytes: usize,
    pub max_compile_ms: u64,
}

impl Default for RulesSection {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("rules"),
            watch: true,
            reload_debounce_ms: 250,
            max_terms: 1_000_000,
            max_regex_bytes: 64 << 20,
            max_compile_ms: 10_000,
        }
    }
}

/// The sections of the file: every top-level key is one of them, and a table. The fields of [`FileConfig`], in
/// order (`sections_are_the_fields_of_file_config` keeps the two equal).
const SECTIONS: [&str; 12] = [
    "server", "upstream", "rules", "inspect", "policy", "limits", "auth", "audit", "realtime",
    "tracing", "log", "admin",
];

impl FileConfig {
    /// Parses TOML text. On error returns `(field, message)`: the dotted field the error is about (`(file)` for
    /// text that is not TOML) and a one-line message that carries the line number.
    ///
    /// Three steps, each naming the place of its errors: the text is parsed into an `Outline` (syntax errors,
    /// with their line); the top-level keys are checked against `SECTIONS`, each a table; only then is the
    /// typed `FileConfig` deserialised, and the offset of a serde error is turned into its dotted field by the
    /// outline.
    pub fn parse(text: &str) -> Result<Self, (String, String)> {
        let outline = Outline::parse(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start));
            ("(file)".to_string(), one_line(&e, line))
        })?;
        check_sections(&outline)?;
        toml::from_str(text).map_err(|e| {
            let at = e.span().map(|s| s.start);
            let field = at.and_then(|a| outline.field_at(a)).unwrap_or("(file)");
            (field.to_string(), one_line(&e, at.map(|a| outline.line(a))))
        })
    }
}

/// Every top-level key must be a known section, written as a table (`[name]`, an inline table or dotted keys).
fn check_sections(outline: &Outline) -> Result<(), (String, String)> {
    for (name, line, node) in outline.top() {
        if !SECTIONS.contains(&name) {
            return Err((
                name.to_string(),
                format!(
                    "unknown section [{name}] (line {line}); expected one of {}",
                    SECTIONS.join(", ")
                ),
            ));
        }
        let found = match node {
            Node::Table(_) => continue,
            // The one section that may list several entries.
            Node::Array if name == "upstream" && outline.opens_array_of_tables(line) => continue,
            Node::Array if outline.opens_array_of_tables(line) => {
                format!("an array of tables [[{name}]]")
            }
            Node::Array => "an array".to_string(),
            Node::Value(what) => what.to_string(),
        };
        return Err((
            name.to_string(),
            format!("must be a table [{name}], found {found} (line {line})"),
        ));
    }
    Ok(())
}

/// toml's message on one line (a syntax error's spans two: what, then what was expected), with the line.
fn one_line(e: &toml::de::Error, line: Option<usize>) -> String {
    let message = e
        .message()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    match line {
        Some(l) => format!("{message} (line {l})"),
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_are_the_fields_of_file_config() {
        let err = toml::from_str::<FileConfig>("nope = 1").expect_err("unknown field");
        let fields: Vec<String> = SECTIONS.iter().map(|s| format!("`{s}`")).collect();
        assert_eq!(
            err.message().trim(),
            format!(
                "unknown field `nope`, expected one of {}",
                fields.join(", ")
            )
        );
    }
}
