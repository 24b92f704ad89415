//! A usage question and its answer: the parameters (`key`, `tenant`, `model`, `from`, `to`, `group_by`,
//! `page`, `page_size`) checked once into a [`Query`], and the rows it adds up to over a set of rollups,
//! grouped, sorted and paged. The admin endpoint and the CLI share this: same names, same checks, same
//! JSON. Pure.
//!
//! Bounds are aligned to whole hours (the rollups' granularity): `from` down to the start of its hour, `to`
//! up to the end of its hour (exclusive), and the answer says which range was counted.

use std::collections::HashMap;

use serde_json::{json, Map, Value};

use super::rollup::{IdMap, NameId, Rollup, Sums, NONE};
use super::time::{self, End, HOUR};

/// Rows per page unless `page_size` says otherwise.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// The largest page.
pub const MAX_PAGE_SIZE: usize = 1000;

/// What rows are grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dim {
    Key,
    Tenant,
    Model,
    Day,
    Hour,
}

impl Dim {
    fn name(self) -> &'static str {
        match self {
            Dim::Key => "key",
            Dim::Tenant => "tenant",
            Dim::Model => "model",
            Dim::Day => "day",
            Dim::Hour => "hour",
        }
    }
}

/// A checked usage question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub key: Option<String>,
    pub tenant: Option<String>,
    pub model: Option<String>,
    /// First hour counted (hours since the epoch), inclusive.
    pub from_hour: Option<i64>,
    /// First hour not counted, exclusive.
    pub to_hour: Option<i64>,
    pub group_by: Vec<Dim>,
    /// 1-based.
    pub page: usize,
    pub page_size: usize,
}

/// A parameter that cannot be used: which one and why (a 400 naming `param`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamError {
    pub param: String,
    pub message: String,
}

fn bad(param: &str, message: impl Into<String>) -> ParamError {
    ParamError {
        param: param.to_string(),
        message: message.into(),
    }
}

/// The parameters, as names the endpoint and the CLI share.
pub const PARAMS: [&str; 8] = [
    "key",
    "tenant",
    "model",
    "from",
    "to",
    "group_by",
    "page",
    "page_size",
];

impl Query {
    /// Checks name/value pairs (a URL's query, or the CLI's flags). Unknown and repeated names are refused;
    /// `max_page_size` is [`MAX_PAGE_SIZE`] for the endpoint (the CLI may print everything).
    pub fn parse<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
        max_page_size: usize,
    ) -> Result<Self, ParamError> {
        let mut seen: HashMap<&str, &str> = HashMap::new();
        for (k, v) in pairs {
            if !PARAMS.contains(&k) {
                return Err(bad(
                    k,
                    format!(
                        "unknown parameter {k:?}; expected some of {}",
                        PARAMS.join(", ")
                    ),
                ));
            }
            if seen.insert(k, v).is_some() {
                return Err(bad(k, format!("{k} is given more than once")));
            }
        }
        let name = |p: &str| -> Result<Option<String>, ParamError> {
            match seen.get(p).copied() {
                None => Ok(None),
                Some("") => Err(bad(p, format!("{p} is empty"))),
                Some(v) if v.len() > 256 => Err(bad(p, format!("{p} is longer than 256 bytes"))),
                Some(v) => Ok(Some(v.to_string())),
            }
        };
        let bound = |p: &str, end: End| -> Result<Option<i64>, ParamError> {
            seen.get(p)
                .map(|v| time::parse_bound(v, end).map_err(|m| bad(p, m)))
                .transpose()
        };
        let from = bound("from", End::From)?;
        let to = bound("to", End::To)?;
        let from_hour = from.map(|s| s.div_euclid(HOUR));
        // Up to the end of the hour `to` falls in (exclusive): `to` on an hour boundary stays there.
        let to_hour = to.map(|s| s.div_euclid(HOUR) + i64::from(s.rem_euclid(HOUR) != 0));
        if let (Some(f), Some(t)) = (from, to) {
            if f >= t {
                return Err(bad("to", "to must be after from"));
            }
        }
        let mut group_by = Vec::new();
        if let Some(g) = seen.get("group_by") {
            for part in g.split(',').map(str::trim) {
                let dim = match part {
                    "key" => Dim::Key,
                    "tenant" => Dim::Tenant,
                    "model" => Dim::Model,
                    "day" => Dim::Day,
                    "hour" => Dim::Hour,
                    other => {
                        return Err(bad(
                            "group_by",
                            format!(
                            "{other:?}: expected key, tenant, model, day or hour (comma-separated)"
                        ),
                        ))
                    }
                };
                if group_by.contains(&dim) {
                    return Err(bad("group_by", format!("{part} is named twice")));
                }
                group_by.push(dim);
            }
            if group_by.contains(&Dim::Day) && group_by.contains(&Dim::Hour) {
                return Err(bad("group_by", "day and hour cannot be combined"));
            }
        }
        let count = |p: &str, default: usize, max: usize| -> Result<usize, ParamError> {
            match seen.get(p) {
                None => Ok(default),
                Some(v) => match v.parse::<usize>() {
                    Ok(n) if (1..=max).contains(&n) => Ok(n),
                    _ => Err(bad(
                        p,
                        format!("{p} must be a whole number from 1 to {max}"),
                    )),
                },
            }
        };
        Ok(Query {
            key: name("key")?,
            tenant: name("tenant")?,
            model: name("model")?,
            from_hour,
            to_hour,
            group_by,
            page: count("page", 1, usize::MAX)?,
            page_size: count(
                "page_size",
                DEFAULT_PAGE_SIZE.min(max_page_size),
                max_page_size,
            )?,
        })
    }
}

/// One group's values, in the fixed sort order: time, key, tenant, model.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Group<'a> {
    time: i64,
    key: Option<&'a str>,
    tenant: Option<&'a str>,
    model: Option<&'a str>,
}

/// Where the answer's numbers came from.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Sources {
    /// Segments on disk (the last one is being written).
    pub segments: u64,
    /// Closed segments read from their rollup file (or from memory, already read).
    pub rollups: u64,
    /// Rollups whose segment was deleted by retention (`audit.keep_files`): usage outlives the events.
    pub orphan_rollups: u64,
    /// Rollups made again from their segment in this call (missing, stale or damaged).
    pub rebuilt: u64,
    /// Rollup files that could not be written (the directory is read-only to this process).
    pub unwritten: u64,
    /// Rollup files left out: damaged and their segment gone.
    pub unusable: u64,
    /// Bytes of the segment being written read in this call (only what was appended since the last).
    pub active_bytes_scanned: u64,
    /// Complete lines in the counted range of files that were not readable events.
    pub unreadable_lines: u64,
}

/// Adds up `rollups` for `q` and renders the answer.
pub fn answer<'a>(
    q: &Query,
    rollups: impl IntoIterator<Item = &'a Rollup>,
    sources: &Sources,
) -> Value {
    let mut groups: HashMap<Group<'a>, Sums> = HashMap::new();
    let mut totals = Sums::default();
    let has = |d: Dim| q.group_by.contains(&d);
    let (by_hour, by_day) = (has(Dim::Hour), has(Dim::Day));
    let (by_key, by_tenant, by_model) = (has(Dim::Key), has(Dim::Tenant), has(Dim::Model));
    for r in rollups {
        // A rollup wholly outside the range, or without a name a filter asks for: nothing in it matches.
        if let Some((lo, hi)) = r.span() {
            if q.from_hour.is_some_and(|f| hi < f) || q.to_hour.is_some_and(|t| lo >= t) {
                continue;
            }
        }
        let want = |f: &Option<String>| match f {
            None => Ok(None),
            Some(n) => r.find(n).map(Some).ok_or(()),
        };
        let (Ok(key), Ok(tenant), Ok(model)) = (want(&q.key), want(&q.tenant), want(&q.model))
        else {
            continue;
        };
        // Grouped by ids within the rollup first (cheap to hash), by names once per group after.
        let mut local: IdMap<(i64, NameId, NameId, NameId), Sums> = IdMap::default();
        for (c, s) in r.cells() {
            if key.is_some_and(|k| k != c.key)
                || tenant.is_some_and(|t| t != c.tenant)
                || model.is_some_and(|m| m != c.model)
                || q.from_hour.is_some_and(|f| c.hour < f)
                || q.to_hour.is_some_and(|t| c.hour >= t)
            {
                continue;
            }
            let time = if by_hour {
                c.hour
            } else if by_day {
                c.hour.div_euclid(24)
            } else {
                0
            };
            let id = |on: bool, id: NameId| if on { id } else { NONE };
            let g = (
                time,
                id(by_key, c.key),
                id(by_tenant, c.tenant),
                id(by_model, c.model),
            );
            local.entry(g).or_default().add(s);
        }
        for ((time, k, t, m), s) in local {
            totals.add(&s);
            let g = Group {
                time,
                key: r.name(k),
                tenant: r.name(t),
                model: r.name(m),
            };
            groups.entry(g).or_default().add(&s);
        }
    }
    let mut rows: Vec<(Group, Sums)> = groups.into_iter().collect();
    rows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let total_rows = rows.len();
    let skip = (q.page - 1).saturating_mul(q.page_size);
    let data: Vec<Value> = rows
        .iter()
        .skip(skip)
        .take(q.page_size)
        .map(|(g, s)| row(q, g, s))
        .collect();
    let has_more = skip.saturating_add(q.page_size) < total_rows;
    json!({
        "object": "usage",
        "range": {
            "from": q.from_hour.map(time::hour_text),
            "to": q.to_hour.map(time::hour_text),
            "granularity": "hour",
        },
        "filters": {"key": q.key, "tenant": q.tenant, "model": q.model},
        "group_by": q.group_by.iter().map(|d| d.name()).collect::<Vec<_>>(),
        "data": data,
        "totals": sums_json(&totals, Map::new()),
        "page": q.page,
        "page_size": q.page_size,
        "total_rows": total_rows,
        "has_more": has_more,
        "sources": sources,
    })
}

fn row(q: &Query, g: &Group, s: &Sums) -> Value {
    let mut m = Map::new();
    for d in &q.group_by {
        let v = match d {
            Dim::Key => json!(g.key),
            Dim::Tenant => json!(g.tenant),
            Dim::Model => json!(g.model),
            Dim::Day => json!(time::day_text(g.time)),
            Dim::Hour => json!(time::hour_text(g.time)),
        };
        m.insert(d.name().to_string(), v);
    }
    sums_json(s, m)
}

fn sums_json(s: &Sums, mut m: Map<String, Value>) -> Value {
    m.insert("requests".into(), s.requests.into());
    m.insert("input_tokens".into(), s.input_tokens.into());
    m.insert("output_tokens".into(), s.output_tokens.into());
    m.insert("total_tokens".into(), s.total_tokens.into());
    m.insert("blocked".into(), s.blocked.into());
    m.insert("redacted".into(), s.redacted.into());
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(q: &str) -> Result<Query, ParamError> {
        let pairs: Vec<(&str, &str)> = q
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| p.split_once('=').unwrap_or((p, "")))
            .collect();
        Query::parse(pairs, MAX_PAGE_SIZE)
    }

    #[test]
    fn parameters_are_checked() {
        let q = parse("").expect("no parameters");
        assert_eq!((q.page, q.page_size, q.group_by.len()), (1, 100, 0));
        let q =
            parse("key=k1&group_by=model,day&from=2026-11-03T14:30:00Z&to=2026-11-03T16:00:00Z")
                .expect("valid");
        assert_eq!(q.group_by, [Dim::Model, Dim::Day]);
        let h = time::parse_rfc3339("2026-11-03T14:00:00Z").expect("ts") / HOUR;
        assert_eq!((q.from_hour, q.to_hour), (Some(h), Some(h + 2)));
        let q = parse("to=2026-11-03T16:00:01Z").expect("valid");
        assert_eq!(
            q.to_hour,
            Some(h + 3),
            "to rounds up to the end of its hour"
        );
        let q = parse("from=2026-11-03&to=2026-11-03").expect("a whole day");
        assert_eq!(q.to_hour.zip(q.from_hour).map(|(t, f)| t - f), Some(24));
        let table = [
            ("nope=1", "nope"),
            ("key=a&key=b", "key"),
            ("key=", "key"),
            ("from=yesterday", "from"),
            ("from=2026-11-04&to=2026-11-03", "to"),
            ("from=2026-11-03T10:00:00Z&to=2026-11-03T10:00:00Z", "to"),
            ("group_by=user", "group_by"),
            ("group_by=key,key", "group_by"),
            ("group_by=day,hour", "group_by"),
            ("page=0", "page"),
            ("page=-1", "page"),
            ("page_size=1001", "page_size"),
            ("page_size=x", "page_size"),
        ];
        for (q, param) in table {
            assert_eq!(parse(q).map_err(|e| e.param), Err(param.to_string()), "{q}");
        }
    }

    fn sums(n: u64) -> Sums {
        Sums {
            requests: n,
            input_tokens: n,
            output_tokens: 2 * n,
            total_tokens: 3 * n,
            blocked: 0,
            redacted: 0,
        }
    }

    #[test]
    fn groups_sort_filter_and_page() {
        let mut a = Rollup::default();
        a.add(48, Some("k2"), Some("t"), Some("m1"), &sums(1));
        a.add(49, Some("k1"), Some("t"), Some("m2"), &sums(2));
        a.add(72, None, None, Some("m1"), &sums(4));
        let mut b = Rollup::default();
        b.add(50, Some("k1"), Some("t"), Some("m1"), &sums(8));
        let src = Sources::default();
        let run = |q: &str| answer(&parse(q).expect("query"), [&a, &b], &src);
        let v = run("group_by=key");
        let keys: Vec<&Value> = v["data"]
            .as_array()
            .expect("data")
            .iter()
            .map(|r| &r["key"])
            .collect();
        assert_eq!(keys, [&Value::Null, &json!("k1"), &json!("k2")]);
        assert_eq!(v["data"][1]["requests"], 10);
        assert_eq!(v["totals"]["total_tokens"], 45);
        let v = run("group_by=day,model&model=m1");
        assert_eq!(
            v["data"],
            json!([
                {"day": "1970-01-03", "model": "m1", "requests": 9, "input_tokens": 9, "output_tokens": 18, "total_tokens": 27, "blocked": 0, "redacted": 0},
                {"day": "1970-01-04", "model": "m1", "requests": 4, "input_tokens": 4, "output_tokens": 8, "total_tokens": 12, "blocked": 0, "redacted": 0},
            ])
        );
        // Hour bounds: [49, 50).
        let v = run("from=176400&to=180000");
        assert_eq!(v["totals"]["requests"], 2);
        assert_eq!(v["range"]["from"], "1970-01-03T01:00:00Z");
        // A name no rollup has: nothing, not everything.
        assert_eq!(run("key=zz")["totals"]["requests"], 0);
        // Pages.
        let p1 = run("group_by=hour&page_size=3");
        let p2 = run("group_by=hour&page_size=3&page=2");
        assert_eq!(
            (p1["has_more"].clone(), p2["has_more"].clone()),
            (json!(true), json!(false))
        );
        assert_eq!(p1["total_rows"], 4);
        assert_eq!(p2["data"].as_array().map(Vec::len), Some(1));
        assert_eq!(p2["data"][0]["hour"], "1970-01-04T00:00:00Z");
        assert_eq!(run("group_by=hour&page_size=4")["has_more"], false);
        assert_eq!(run("page=99")["data"], json!([]));
    }
}
