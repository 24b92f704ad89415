//! `promptgate check` and `promptgate scan`: the rule author's tools. They print spans and rule ids, and the
//! redacted text — never a matched value on its own.

use std::io::Read;
use std::path::Path;

use serde_json::{json, Value};

use super::{load, redact, Budget, Direction, RuleSet};

/// Validates `dir` (rules, policies and both kinds of examples); prints every error (`file:line: rule 'id':
/// what`), a warning per policy that selects no rule, and a one-line summary. With `keys`, also warns of keys
/// and tenants naming a policy the rules lack (their requests would be refused).
pub fn check(dir: &Path, keys: Option<&Path>) -> i32 {
    let started = std::time::Instant::now();
    match load(dir, &Budget::default()) {
        Ok(set) => {
            let files = super::spec::rule_files(dir).map(|f| f.len()).unwrap_or(0);
            let catalog = set.catalog();
            for w in catalog.map(|c| c.warnings()).unwrap_or_default() {
                println!("warning: {w}");
            }
            if let Some(keys) = keys {
                match crate::auth::keys::KeySet::load(keys) {
                    Ok(k) => {
                        for (whose, name) in k.policies() {
                            if catalog.is_none_or(|c| c.get(name).is_none()) {
                                println!(
                                    "warning: {}: {whose} names policy '{name}', which the rules do not have (its requests would be refused: 503 policy_unavailable)",
                                    keys.display()
                                );
                            }
                        }
                    }
                    Err(errors) => {
                        for e in &errors {
                            println!("{e}");
                        }
                        return 1;
                    }
                }
            }
            println!(
                "{}: ok — {} rules in {} files, {} keyword terms, {} policies, examples pass, version {} ({} ms)",
                dir.display(),
                set.rules().len(),
                files,
                set.term_count(),
                catalog.map(|c| c.names().len()).unwrap_or(0),
                set.version(),
                started.elapsed().as_millis()
            );
            0
        }
        Err(errors) => {
            for e in &errors {
                println!("{e}");
            }
            println!("{}: {} error(s)", dir.display(), errors.len());
            1
        }
    }
}

/// One string found in the input, with where it was.
struct Found {
    path: String,
    text: String,
}

fn walk(v: &Value, path: &str, out: &mut Vec<Found>) {
    match v {
        Value::String(s) => out.push(Found {
            path: path.to_string(),
            text: s.clone(),
        }),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .for_each(|(i, x)| walk(x, &format!("{path}[{i}]"), out)),
        Value::Object(o) => {
            for (k, x) in o {
                let p = format!("{path}.{k}");
                out.push(Found {
                    path: format!("{p} (key)"),
                    text: k.clone(),
                });
                walk(x, &p, out);
            }
        }
        _ => {}
    }
}

fn redact_value(v: &mut Value, set: &RuleSet, flow: Direction) {
    match v {
        Value::String(s) => *s = redact_text(s, set, flow),
        Value::Array(a) => a.iter_mut().for_each(|x| redact_value(x, set, flow)),
        Value::Object(o) => {
            let entries: Vec<(String, Value)> = std::mem::take(o).into_iter().collect();
            for (k, mut x) in entries {
                redact_value(&mut x, set, flow);
                o.insert(redact_text(&k, set, flow), x);
            }
        }
        _ => {}
    }
}

fn redact_text(s: &str, set: &RuleSet, flow: Direction) -> String {
    let matches = set.scan(s, flow);
    redact(
        s,
        matches
            .iter()
            .map(|m| (m.range(), set.rule(m.rule).replacement.as_str())),
    )
}

/// Scans a file or standard input. A JSON object is walked string by string (keys too); anything else is one
/// text. Exit 0 when nothing matched, 1 when something did, 2 on a usage or rules error.
pub fn scan(rules: &Path, input: Option<&Path>, as_json: bool, direction: &str) -> i32 {
    let flow = match direction {
        "request" => Direction::Request,
        "response" => Direction::Response,
        "both" => Direction::Both,
        other => {
            eprintln!(
                "promptgate: scan: --direction {other:?}: expected request, response or both"
            );
            return 2;
        }
    };
    let set = match load(rules, &Budget::default()) {
        Ok(s) => s,
        Err(errors) => {
            for e in errors {
                eprintln!("promptgate: {e}");
            }
            return 2;
        }
    };
    let mut text = String::new();
    let read = match input {
        Some(p) if p != Path::new("-") => std::fs::read_to_string(p).map(|t| text = t),
        _ => std::io::stdin().read_to_string(&mut text).map(|_| ()),
    };
    if let Err(e) = read {
        eprintln!("promptgate: scan: cannot read input: {e}");
        return 2;
    }
    let parsed: Option<Value> = serde_json::from_str::<Value>(&text)
        .ok()
        .filter(|v| v.is_object());
    let found = match &parsed {
        Some(v) => {
            let mut out = Vec::new();
            walk(v, "$", &mut out);
            out
        }
        None => vec![Found {
            path: "text".into(),
            text: text.clone(),
        }],
    };
    let mut report = Vec::new();
    for f in &found {
        for m in set.scan(&f.text, flow) {
            let rule = set.rule(m.rule);
            report.push(json!({
                "path": f.path, "rule": rule.id, "action": rule.action.as_str(),
                "mode": format!("{:?}", rule.mode).to_lowercase(), "start": m.start, "end": m.end,
            }));
        }
    }
    let redacted = match parsed {
        Some(mut v) => {
            redact_value(&mut v, &set, flow);
            v
        }
        None => Value::String(redact_text(&text, &set, flow)),
    };
    if as_json {
        println!(
            "{}",
            json!({"version": set.version(), "matches": report, "redacted": redacted})
        );
    } else {
        if report.is_empty() {
            println!("no matches (rules version {})", set.version());
        }
        for r in &report {
            println!(
                "{:<28} {:<7} bytes {}..{}  at {}",
                r["rule"].as_str().unwrap_or(""),
                r["action"].as_str().unwrap_or(""),
                r["start"],
                r["end"],
                r["path"].as_str().unwrap_or("")
            );
        }
        match &redacted {
            Value::String(s) => println!("redacted: {s}"),
            v => println!("redacted: {v}"),
        }
    }
    i32::from(!report.is_empty())
}
