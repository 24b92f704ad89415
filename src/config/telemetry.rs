//! `[tracing]` (OpenTelemetry export) and `[log]` (the log line format), validated into their internal form.
//! The collector's headers are read from the environment here, once: a bad header is a start-up error, never
//! an export failure discovered later.

use std::time::Duration;

use super::{file, parse_upstream_url, ConfigError, Source, UpstreamConfig};

/// How traces reach the collector (`tracing.protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// `POST {endpoint}/v1/traces`, `application/x-protobuf` (http or https).
    HttpProtobuf,
    /// `TraceService/Export`, one unary gRPC call over HTTP/2 in cleartext (h2c).
    Grpc,
}

/// The validated `[tracing]` section.
#[derive(Debug, Clone)]
pub struct TracingConfig {
    /// The collector: its address, TLS and base path (`/v1/traces` is appended for OTLP/HTTP).
    pub endpoint: UpstreamConfig,
    pub protocol: OtlpProtocol,
    /// Extra request headers for the collector (from `headers_env`), names lowercased.
    pub headers: Vec<(String, String)>,
    /// Root sampling: the share of new traces recorded (a client's sampled flag is followed as it is).
    pub sampling_ratio: f64,
    /// `service.name` of the resource.
    pub service_name: String,
    /// Requests whose spans may wait for export at once; more are dropped and counted.
    pub queue: usize,
    /// Spans per export call, at most.
    pub batch_max: usize,
    /// How long spans wait for a batch to fill before they are sent anyway.
    pub flush_interval: Duration,
    /// One export call's limit (connect, send, answer).
    pub timeout: Duration,
    /// Export attempts after the first failed one, before the batch is dropped (and counted).
    pub retries: u32,
}

/// `log.format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

pub(super) fn log_format(l: &file::LogSection, src: &Source) -> Result<LogFormat, ConfigError> {
    src.one_of(
        "log.format",
        &l.format,
        &[("text", LogFormat::Text), ("json", LogFormat::Json)],
    )
}

pub(super) fn tracing(
    t: &file::TracingSection,
    src: &Source,
) -> Result<Option<TracingConfig>, ConfigError> {
    if !t.enabled {
        return Ok(None);
    }
    let protocol = src.one_of(
        "tracing.protocol",
        &t.protocol,
        &[
            ("http/protobuf", OtlpProtocol::HttpProtobuf),
            ("grpc", OtlpProtocol::Grpc),
        ],
    )?;
    let target = parse_upstream_url(&t.endpoint).map_err(|m| src.error("tracing.endpoint", m))?;
    if protocol == OtlpProtocol::Grpc && target.tls {
        return Err(src.error(
            "tracing.endpoint",
            "grpc is sent in cleartext (h2c) only: use an http:// endpoint, or protocol = \"http/protobuf\" \
             for https",
        ));
    }
    if !(0.0..=1.0).contains(&t.sampling_ratio) {
        return Err(src.error(
            "tracing.sampling_ratio",
            format!("must be between 0 and 1, got {}", t.sampling_ratio),
        ));
    }
    if t.service_name.is_empty() || t.service_name.len() > 256 {
        return Err(src.error("tracing.service_name", "must be 1 to 256 characters"));
    }
    let headers = match t.headers_env.as_str() {
        "" => Vec::new(),
        var => {
            let text = std::env::var(var).map_err(|_| {
                src.error(
                    "tracing.headers_env",
                    format!("${var} is not set (expected k=v,k2=v2; or set headers_env = \"\")"),
                )
            })?;
            parse_headers(&text)
                .map_err(|m| src.error("tracing.headers_env", format!("${var}: {m}")))?
        }
    };
    let timeout = src.millis("tracing.timeout_ms", t.timeout_ms)?;
    Ok(Some(TracingConfig {
        endpoint: UpstreamConfig {
            url: t.endpoint.clone(),
            tls: target.tls,
            host: target.host,
            port: target.port,
            authority: target.authority,
            base_path: target.base_path,
            connect_timeout: timeout,
            read_timeout: timeout,
            write_timeout: timeout,
            idle_timeout: Duration::from_secs(60),
            ca_file: None,
        },
        protocol,
        headers,
        sampling_ratio: t.sampling_ratio,
        service_name: t.service_name.clone(),
        queue: src.between("tracing.queue", t.queue, (1, 1 << 20))?,
        batch_max: src.between("tracing.batch_max", t.batch_max, (1, 65_536))?,
        flush_interval: Duration::from_millis(src.between(
            "tracing.flush_interval_ms",
            t.flush_interval_ms,
            (1, 60_000),
        )?),
        timeout,
        retries: src.between("tracing.retries", t.retries, (0, 10))?,
    }))
}

/// `k=v,k2=v2` as OTEL_EXPORTER_OTLP_HEADERS writes it (values may be percent-encoded; spaces around names and
/// values are trimmed). Every name and value must be a valid HTTP header; the message never repeats a value
/// (it may be a credential).
fn parse_headers(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (i, pair) in text.split(',').enumerate() {
        if pair.trim().is_empty() {
            continue;
        }
        let Some((k, v)) = pair.split_once('=') else {
            return Err(format!("entry {} has no '=' (expected k=v)", i + 1));
        };
        let name = k.trim().to_ascii_lowercase();
        let value = percent_decode(v.trim())
            .ok_or_else(|| format!("the value of {name:?} is not valid percent-encoded UTF-8"))?;
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(format!("{name:?} is not a valid header name"));
        }
        if http::HeaderValue::from_str(&value).is_err() {
            return Err(format!("the value of {name:?} is not a valid header value"));
        }
        out.push((name, value));
    }
    Ok(out)
}

fn percent_decode(v: &str) -> Option<String> {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FileConfig;

    /// `[tracing]` and `[log]` of a file, validated; an error as the one line the gateway prints.
    fn check(text: &str) -> Result<(Option<TracingConfig>, LogFormat), String> {
        let raw = FileConfig::parse(text).map_err(|(f, m)| format!("x.toml: {f}: {m}"))?;
        let src = Source { name: "x.toml" };
        let t = tracing(&raw.tracing, &src).map_err(|e| e.to_string())?;
        let l = log_format(&raw.log, &src).map_err(|e| e.to_string())?;
        Ok((t, l))
    }

    #[test]
    fn tracing_is_off_by_default_and_validated_when_on() {
        assert!(matches!(check(""), Ok((None, LogFormat::Text))));
        assert!(matches!(
            check("[log]\nformat = \"json\""),
            Ok((None, LogFormat::Json))
        ));
        let on = check("[tracing]\nenabled = true\nendpoint = \"https://otel.example:4318/base/\"")
            .expect("valid")
            .0
            .expect("on");
        assert_eq!(on.protocol, OtlpProtocol::HttpProtobuf);
        assert!(on.endpoint.tls);
        assert_eq!(on.endpoint.base_path, "/base");
        let bad = [
            (
                "[tracing]\nenabled = true\nprotocol = \"thrift\"",
                "tracing.protocol",
            ),
            (
                "[tracing]\nenabled = true\nprotocol = \"grpc\"\nendpoint = \"https://c:4317\"",
                "tracing.endpoint",
            ),
            (
                "[tracing]\nenabled = true\nendpoint = \"ftp://c\"",
                "tracing.endpoint",
            ),
            (
                "[tracing]\nenabled = true\nsampling_ratio = 1.5",
                "tracing.sampling_ratio",
            ),
            (
                "[tracing]\nenabled = true\nsampling_ratio = -0.1",
                "tracing.sampling_ratio",
            ),
            ("[tracing]\nenabled = true\nqueue = 0", "tracing.queue"),
            (
                "[tracing]\nenabled = true\nbatch_max = 0",
                "tracing.batch_max",
            ),
            (
                "[tracing]\nenabled = true\nflush_interval_ms = 0",
                "tracing.flush_interval_ms",
            ),
            (
                "[tracing]\nenabled = true\ntimeout_ms = 0",
                "tracing.timeout_ms",
            ),
            (
                "[tracing]\nenabled = true\nservice_name = \"\"",
                "tracing.service_name",
            ),
            (
                "[tracing]\nenabled = true\nheaders_env = \"PROMPTGATE_TEST_UNSET_OTLP_HEADERS\"",
                "tracing.headers_env",
            ),
            ("[tracing]\nenabeld = true", "tracing.enabeld"),
            ("[log]\nformat = \"xml\"", "log.format"),
        ];
        for (text, field) in bad {
            let err = check(text).expect_err(text);
            assert!(
                err.starts_with(&format!("x.toml: {field}: ")),
                "{text}: {err}"
            );
            assert!(!err.contains('\n'), "one line: {err}");
        }
    }

    #[test]
    fn otlp_headers() {
        assert_eq!(
            parse_headers("Authorization=Bearer%20abc, x-tenant = t1 ,").as_deref(),
            Ok(&[
                ("authorization".to_string(), "Bearer abc".to_string()),
                ("x-tenant".to_string(), "t1".to_string())
            ][..])
        );
        assert!(parse_headers("novalue").is_err());
        assert!(parse_headers("bad name=v").is_err());
        assert!(parse_headers("k=%zz").is_err());
        assert!(parse_headers("k=a\nb").is_err());
        assert_eq!(parse_headers(""), Ok(Vec::new()));
    }
}
