//! `promptgate audit query`: the records of an audit directory that match a filter, streamed out as JSON lines
//! (each line as written, seal included) or CSV (a fixed column set, below). Streaming and bounded: one line
//! in memory at a time (and, for `--incomplete`, the open intents). Usable on a live directory: the segments
//! present when it starts are read to their last complete line; a segment removed by retention meanwhile is
//! passed over.
//!
//! Segment headers (`audit.segment`) are bookkeeping of the chain: listed only when `--type` asks for them.
//! The records hold no matched value, prompt or completion, and the CSV columns are taken from their ids,
//! codes, counts and timings only.

use std::collections::HashMap;
use std::io::{self, Write};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::chain;
use super::intent::INTENT;
use super::segments;
use super::verify::Lines;

/// Open intents kept for `--incomplete` at most.
const MAX_OPEN_INTENTS: usize = 1 << 20;

/// The CSV columns, in order (`rules`: the rule ids that matched, `;`-separated).
pub const CSV_COLUMNS: [&str; 19] = [
    "ts",
    "type",
    "seq",
    "request_id",
    "key_id",
    "tenant",
    "route",
    "method",
    "model",
    "decision_request",
    "decision_response",
    "rules",
    "status",
    "error",
    "session_id",
    "upstream",
    "total_ms",
    "prompt_tokens",
    "completion_tokens",
];

/// How records are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Jsonl,
    Csv,
}

/// What a record must match (every field given).
#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub from: Option<SystemTime>,
    pub to: Option<SystemTime>,
    pub key: Option<String>,
    pub tenant: Option<String>,
    /// In either direction.
    pub decision: Option<String>,
    pub rule: Option<String>,
    pub session: Option<String>,
    pub kind: Option<String>,
    /// Only intents that no later record completes.
    pub incomplete: bool,
}

/// Parses `--from` / `--to`: RFC 3339 or unix seconds.
pub fn parse_time(text: &str) -> Result<SystemTime, String> {
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(UNIX_EPOCH + Duration::from_secs(secs));
    }
    humantime::parse_rfc3339_weak(text)
        .map_err(|e| format!("{text:?}: expected RFC 3339 or unix seconds ({e})"))
}

fn str_field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

impl Filter {
    /// Whether a record matches (every condition but `incomplete`).
    pub fn matches(&self, v: &Value) -> bool {
        let kind = str_field(v, "type").unwrap_or("");
        match &self.kind {
            Some(k) if k != kind => return false,
            None if kind == chain::SEGMENT => return false,
            _ => {}
        }
        if self.from.is_some() || self.to.is_some() {
            let Some(ts) = str_field(v, "ts").and_then(|t| humantime::parse_rfc3339(t).ok()) else {
                return false;
            };
            if self.from.is_some_and(|f| ts < f) || self.to.is_some_and(|t| ts > t) {
                return false;
            }
        }
        let eq = |want: &Option<String>, field: &str| {
            want.as_deref()
                .is_none_or(|w| str_field(v, field) == Some(w))
        };
        if !eq(&self.key, "key_id")
            || !eq(&self.tenant, "tenant")
            || !eq(&self.session, "session_id")
        {
            return false;
        }
        if let Some(d) = &self.decision {
            let side = |s: &str| v.get("decision").and_then(|x| str_field(x, s)) == Some(d);
            if !side("request") && !side("response") {
                return false;
            }
        }
        if let Some(r) = &self.rule {
            let rules = v.get("rules").and_then(Value::as_array);
            // Decision events list `{ "id": … }` objects; intents list the ids.
            let hit = rules.is_some_and(|rs| {
                rs.iter()
                    .any(|x| x.as_str().or_else(|| str_field(x, "id")) == Some(r))
            });
            if !hit {
                return false;
            }
        }
        true
    }
}

/// One CSV row of a record.
fn csv_row(v: &Value) -> String {
    let s = |k: &str| str_field(v, k).unwrap_or("").to_string();
    let n = |x: Option<&Value>| {
        x.filter(|x| !x.is_null())
            .map_or(String::new(), Value::to_string)
    };
    let decision = |side: &str| {
        v.get("decision")
            .and_then(|d| str_field(d, side))
            .unwrap_or("")
            .to_string()
    };
    let rules = v
        .get("rules")
        .and_then(Value::as_array)
        .map(|rs| {
            rs.iter()
                .filter_map(|x| x.as_str().or_else(|| str_field(x, "id")))
                .collect::<Vec<_>>()
                .join(";")
        })
        .unwrap_or_default();
    let cells = [
        s("ts"),
        s("type"),
        n(v.get("seq")),
        s("request_id"),
        s("key_id"),
        s("tenant"),
        s("route"),
        s("method"),
        s("model"),
        decision("request"),
        decision("response"),
        rules,
        n(v.get("status")),
        s("error"),
        s("session_id"),
        s("upstream"),
        n(v.get("latency").and_then(|l| l.get("total_ms"))),
        n(v.get("usage").and_then(|u| u.get("prompt_tokens"))),
        n(v.get("usage").and_then(|u| u.get("completion_tokens"))),
    ];
    let mut row = String::new();
    for (i, c) in cells.iter().enumerate() {
        if i > 0 {
            row.push(',');
        }
        if c.contains([',', '"', '\n', '\r']) {
            row.push('"');
            row.push_str(&c.replace('"', "\"\""));
            row.push('"');
        } else {
            row.push_str(c);
        }
    }
    row
}

/// Streams the matching records of `dir` to `out`; returns how many were printed.
pub fn run(dir: &Path, filter: &Filter, format: Format, out: &mut impl Write) -> io::Result<u64> {
    if format == Format::Csv {
        writeln!(out, "{}", CSV_COLUMNS.join(","))?;
    }
    let mut printed = 0u64;
    let mut emit = |line: &[u8], v: &Value, out: &mut dyn Write| -> io::Result<()> {
        printed += 1;
        match format {
            Format::Jsonl => {
                out.write_all(line)?;
                out.write_all(b"\n")
            }
            Format::Csv => writeln!(out, "{}", csv_row(v)),
        }
    };
    // `--incomplete`: intents held until a record of the same request completes them.
    let mut open: HashMap<String, Vec<u8>> = HashMap::new();
    for n in segments::list(dir)? {
        let mut lines = match Lines::open(&segments::path(dir, n)) {
            Ok(l) => l,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        while let Some(line) = lines.next_line()? {
            if !line.complete {
                // Being written (or torn by a crash): not a record yet.
                break;
            }
            let Ok(v) = serde_json::from_slice::<Value>(&line.bytes) else {
                continue;
            };
            if filter.incomplete {
                let kind = str_field(&v, "type").unwrap_or("");
                let Some(id) = str_field(&v, "request_id") else {
                    continue;
                };
                if kind == INTENT {
                    if filter.matches(&v) && open.len() < MAX_OPEN_INTENTS {
                        open.insert(id.to_string(), line.bytes);
                    }
                } else if kind != chain::SEGMENT {
                    open.remove(id);
                }
                continue;
            }
            if filter.matches(&v) {
                emit(&line.bytes, &v, out)?;
            }
        }
    }
    if filter.incomplete {
        let mut rest: Vec<Vec<u8>> = open.into_values().collect();
        // In the order they were written.
        rest.sort_by_key(|l| chain::tip_of(l).map_or(0, |t| t.seq));
        for line in rest {
            if let Ok(v) = serde_json::from_slice::<Value>(&line) {
                emit(&line, &v, out)?;
            }
        }
    }
    out.flush()?;
    Ok(printed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn filters_match_fields_in_either_direction_and_csv_quotes() {
        let ev = json!({"type":"chat.blocked","ts":"2026-01-01T00:00:10.000Z","request_id":"r1",
            "key_id":"k1","tenant":"t1","decision":{"request":"allow","response":"block"},
            "rules":[{"id":"pii.email"}],"session_id":"s1","status":409,
            "usage":{"prompt_tokens":3,"completion_tokens":null}});
        let f = |m: fn(&mut Filter)| {
            let mut f = Filter::default();
            m(&mut f);
            f.matches(&ev)
        };
        assert!(f(|_| {}));
        assert!(f(|f| f.decision = Some("block".into())));
        assert!(f(|f| f.decision = Some("allow".into())));
        assert!(!f(|f| f.decision = Some("redact".into())));
        assert!(f(|f| f.rule = Some("pii.email".into())));
        assert!(!f(|f| f.rule = Some("pii".into())));
        assert!(!f(|f| f.key = Some("k2".into())));
        assert!(f(
            |f| f.from = Some(UNIX_EPOCH + Duration::from_secs(1_767_225_610))
        ));
        assert!(!f(
            |f| f.from = Some(UNIX_EPOCH + Duration::from_secs(1_767_225_611))
        ));
        assert!(!f(
            |f| f.to = Some(UNIX_EPOCH + Duration::from_secs(1_767_225_609))
        ));
        assert!(!f(|f| f.kind = Some("chat.message".into())));
        let header = json!({"type":"audit.segment"});
        assert!(!Filter::default().matches(&header));
        let row = csv_row(&ev);
        assert_eq!(row.split(',').count(), CSV_COLUMNS.len());
        assert!(row.starts_with("2026-01-01T00:00:10.000Z,chat.blocked,,r1,k1,t1,"));
        assert!(row.ends_with(",409,,s1,,,3,"), "{row}");
        assert_eq!(
            parse_time("2026-01-01T00:00:10Z"),
            Ok(UNIX_EPOCH + Duration::from_secs(1_767_225_610))
        );
    }
}
