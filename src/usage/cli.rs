//! `promptgate usage`: the `/usage` question asked of an audit directory directly (no gateway needed, and
//! safe beside a running one: it only reads segments, and writes rollup files atomically).
//!
//! Exit codes: 0 answered, 1 the directory could not be read, 2 a usage or configuration error.

use std::path::PathBuf;

use clap::Args;
use serde_json::Value;

use super::{Query, UsageIndex};

#[derive(Args)]
pub struct UsageArgs {
    /// The audit directory (default: `audit.dir` of the config file).
    #[arg(long, conflicts_with = "config")]
    dir: Option<PathBuf>,
    /// Config file whose `audit.dir` is read (default: conf/promptgate.toml when it exists).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Only this caller (a gateway key id, or a passthrough caller's hash id).
    #[arg(long)]
    key: Option<String>,
    /// Only this tenant.
    #[arg(long)]
    tenant: Option<String>,
    /// Only this model.
    #[arg(long)]
    model: Option<String>,
    /// From (inclusive; aligned down to its hour): RFC 3339, a date YYYY-MM-DD (UTC) or Unix seconds.
    #[arg(long)]
    from: Option<String>,
    /// To (exclusive; aligned up to the end of its hour; a date means the end of that day).
    #[arg(long)]
    to: Option<String>,
    /// Group rows by key, tenant, model, day or hour (comma-separated); none: one total.
    #[arg(long)]
    group_by: Option<String>,
    /// Page (1-based) of `--page-size` rows; without `--page-size` every row is printed.
    #[arg(long)]
    page: Option<String>,
    #[arg(long)]
    page_size: Option<String>,
    /// `table` or `json` (the shape `GET /usage` answers with).
    #[arg(long, default_value = "table")]
    format: String,
}

/// Runs `promptgate usage`; returns the exit code.
pub fn run(args: &UsageArgs) -> i32 {
    let json = match args.format.as_str() {
        "json" => true,
        "table" => false,
        other => {
            eprintln!("promptgate: usage: --format {other:?}: expected table or json");
            return 2;
        }
    };
    let dir = match crate::cli::audit_dir(args.dir.clone(), args.config.clone()) {
        Ok(d) => d,
        Err(code) => return code,
    };
    let all = usize::MAX.to_string();
    let mut pairs: Vec<(&str, &str)> = [
        ("key", &args.key),
        ("tenant", &args.tenant),
        ("model", &args.model),
        ("from", &args.from),
        ("to", &args.to),
        ("group_by", &args.group_by),
        ("page", &args.page),
        ("page_size", &args.page_size),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.as_deref().map(|v| (k, v)))
    .collect();
    if args.page_size.is_none() {
        pairs.push(("page_size", &all));
    }
    let q = match Query::parse(pairs, usize::MAX) {
        Ok(q) => q,
        Err(e) => {
            eprintln!(
                "promptgate: usage: --{}: {}",
                e.param.replace('_', "-"),
                e.message
            );
            return 2;
        }
    };
    if !dir.is_dir() {
        eprintln!("promptgate: usage: {}: not a directory", dir.display());
        return 1;
    }
    let answer = match UsageIndex::new(&dir).query(&q) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("promptgate: usage: {}: {e}", dir.display());
            return 1;
        }
    };
    if json {
        println!("{answer:#}");
    } else {
        print!("{}", table(&answer));
    }
    0
}

/// The answer as an aligned text table: the groups' columns, the counts, then the totals.
fn table(v: &Value) -> String {
    const COUNTS: [&str; 6] = [
        "requests",
        "input_tokens",
        "output_tokens",
        "total_tokens",
        "blocked",
        "redacted",
    ];
    let dims: Vec<&str> = v["group_by"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let cell = |r: &Value, c: &str| match &r[c] {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_string(),
        other => other.to_string(),
    };
    let header: Vec<String> = dims
        .iter()
        .chain(COUNTS.iter())
        .map(|s| s.to_string())
        .collect();
    let mut lines: Vec<Vec<String>> = vec![header];
    for r in v["data"].as_array().into_iter().flatten() {
        lines.push(
            dims.iter()
                .chain(COUNTS.iter())
                .map(|c| cell(r, c))
                .collect(),
        );
    }
    let mut total: Vec<String> = dims.iter().map(|_| String::new()).collect();
    if let Some(first) = total.first_mut() {
        *first = "total".to_string();
    }
    total.extend(COUNTS.iter().map(|c| cell(&v["totals"], c)));
    lines.push(total);
    let widths: Vec<usize> = (0..lines[0].len())
        .map(|i| lines.iter().map(|l| l[i].len()).max().unwrap_or(0))
        .collect();
    let range = |e: &str, open: &str| v["range"][e].as_str().unwrap_or(open).to_string();
    let mut out = format!(
        "# usage from {} to {} (whole hours, UTC){}\n",
        range("from", "the first event"),
        range("to", "the last"),
        if v["has_more"] == true {
            "; more pages follow"
        } else {
            ""
        }
    );
    for l in &lines {
        let cols: Vec<String> = l
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i < dims.len() {
                    format!("{c:<w$}", w = widths[i])
                } else {
                    format!("{c:>w$}", w = widths[i])
                }
            })
            .collect();
        out.push_str(cols.join("  ").trim_end());
        out.push('\n');
    }
    out
}
