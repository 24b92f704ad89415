//! False positives of a rules directory on ordinary prose: scans every paragraph (outside fenced code blocks)
//! of the Markdown files under a directory (`README.md` only, or every `*.md` with `--all-md`) and counts, per
//! rule, the paragraphs it fires on.
//!
//! ```sh
//! cargo run --release --example rule_fp -- rules/optional ~/.cargo/registry/src [--all-md] [--show]
//! ```
//!
//! A measurement, not a test: its figures depend on the prose it is given. `--show` prints each match (the
//! prose is public README text).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use promptgate::rules::{load, Budget, Direction};

/// Every `README.md` (or, `all`, every `*.md`) under `dir`, at most `depth` levels down, sorted.
fn markdown(dir: &Path, depth: usize, all: bool, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
    paths.sort();
    for p in paths {
        if p.is_dir() && depth > 0 {
            markdown(&p, depth - 1, all, out);
        } else if p
            .file_name()
            .is_some_and(|n| n.eq_ignore_ascii_case("README.md"))
            || (all && p.extension().is_some_and(|x| x == "md"))
        {
            out.push(p);
        }
    }
}

/// The paragraphs of a Markdown text outside fenced code blocks.
fn paragraphs(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        if line.trim().is_empty() {
            if !current.trim().is_empty() {
                out.push(std::mem::take(&mut current));
            }
            current.clear();
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    if !current.trim().is_empty() {
        out.push(current);
    }
    out
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let show = args.iter().any(|a| a == "--show");
    let all = args.iter().any(|a| a == "--all-md");
    let args: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let (Some(rules), Some(prose)) = (args.first(), args.get(1)) else {
        eprintln!("usage: rule_fp RULES_DIR PROSE_DIR [--all-md] [--show]");
        std::process::exit(2);
    };
    let set = match load(Path::new(rules), &Budget::default()) {
        Ok(set) => set,
        Err(errors) => {
            for e in errors {
                eprintln!("{e}");
            }
            std::process::exit(1);
        }
    };
    let mut files = Vec::new();
    markdown(Path::new(prose), 5, all, &mut files);
    let mut hits: BTreeMap<String, usize> = set.rules().iter().map(|r| (r.id.clone(), 0)).collect();
    let (mut count, mut bytes) = (0usize, 0usize);
    for file in &files {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for p in paragraphs(&text) {
            count += 1;
            bytes += p.len();
            let mut fired: Vec<String> = Vec::new();
            for m in set.scan(&p, Direction::Request) {
                let id = set.rule(m.rule).id.clone();
                if show {
                    println!("{id}\t{}\t{:?}", file.display(), &p[m.range()]);
                }
                if !fired.contains(&id) {
                    fired.push(id);
                }
            }
            for id in fired {
                *hits.entry(id).or_default() += 1;
            }
        }
    }
    println!(
        "{} Markdown files, {count} paragraphs, {:.1} MB of prose",
        files.len(),
        bytes as f64 / 1e6
    );
    println!("{:<40} {:>10} {:>14}", "rule", "paragraphs", "per 10 000");
    for (id, n) in hits {
        let rate = if count == 0 {
            0.0
        } else {
            n as f64 * 10_000.0 / count as f64
        };
        println!("{id:<40} {n:>10} {rate:>14.2}");
    }
}
