//! A policy's cost: scanning the same 16 KB prompt (the shipped pack, planted matches) under every rule as
//! written and under a policy view of the same compiled set — the view adds one bit test per candidate — and
//! building a thousand policies over one compiled set (tables and bitsets, no automaton). The match counts
//! are checked before timing: a fast but wrong view fails here.
//!
//! `cargo bench --bench policies`.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use promptgate::rules::{load, Budget, Direction, RuleSet};

/// About 16 KB of prose with a card, an email and a code name every ~2 KB.
fn prompt() -> String {
    let filler =
        "the quarterly report covers revenue growth across regions and plans for next year; ";
    let mut text = String::new();
    let mut planted = 0;
    while text.len() < 16 * 1024 {
        for _ in 0..24 {
            text.push_str(filler);
        }
        text.push_str(match planted % 3 {
            0 => "card 4111 1111 1111 1111 ",
            1 => "mail jane.doe@example.com ",
            _ => "re Project Bluebird ",
        });
        planted += 1;
    }
    text
}

/// The shipped rules and `policies` in one directory, loaded.
fn rules_with(policies: &str) -> RuleSet {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    for e in std::fs::read_dir(&root).expect("rules") {
        let p = e.expect("entry").path();
        if p.is_file() {
            std::fs::copy(&p, dir.path().join(p.file_name().expect("name"))).expect("copy");
        } else {
            let to = dir.path().join(p.file_name().expect("name"));
            std::fs::create_dir_all(&to).expect("mkdir");
            for f in std::fs::read_dir(&p).expect("dir") {
                let f = f.expect("entry").path();
                std::fs::copy(&f, to.join(f.file_name().expect("name"))).expect("copy");
            }
        }
    }
    std::fs::write(dir.path().join("bench.toml"), policies).expect("write");
    load(dir.path(), &Budget::default()).expect("rules")
}

fn view(set: &RuleSet, name: &str) -> Arc<RuleSet> {
    Arc::clone(set.catalog().and_then(|c| c.get(name)).expect("policy"))
}

fn scanning(c: &mut Criterion) {
    let set = rules_with(
        "[[policy]]\nname = \"cards-only\"\ndescription = \"d\"\nselect = { ids = [\"pii.payment_card\"] }\n\n\
         [[policy]]\nname = \"log-all\"\ndescription = \"d\"\n[[policy.override]]\ntags = [\"pii\", \"confidential\", \"secret\"]\naction = \"log\"\n",
    );
    let text = prompt();
    let all = set.scan(&text, Direction::Request).len();
    let cards = view(&set, "cards-only");
    let log_all = view(&set, "log-all");
    let planted = text.matches("card 4111").count();
    assert_eq!(cards.scan(&text, Direction::Request).len(), planted);
    assert_eq!(log_all.scan(&text, Direction::Request).len(), all);
    assert!(all >= 3 * planted - 2, "{all} matches for {planted} cards");

    let mut g = c.benchmark_group("policy_scan_16k");
    g.throughput(Throughput::Bytes(text.len() as u64));
    g.bench_function("as_written", |b| {
        b.iter(|| set.scan(&text, Direction::Request))
    });
    g.bench_function("policy_all_rules_overridden", |b| {
        b.iter(|| log_all.scan(&text, Direction::Request))
    });
    g.bench_function("policy_one_rule", |b| {
        b.iter(|| cards.scan(&text, Direction::Request))
    });
    g.finish();
}

fn building(c: &mut Criterion) {
    let mut policies = String::new();
    for i in 0..1000 {
        policies.push_str(&format!(
            "[[policy]]\nname = \"p{i}\"\ndescription = \"d\"\nselect = {{ tags = [\"{}\"] }}\n",
            ["pii", "secret", "confidential"][i % 3]
        ));
    }
    let count = rules_with("").rules().len();
    let many = rules_with(&policies);
    // The thousand and the three shipped in rules/policies.toml.
    assert_eq!(many.catalog().expect("catalog").names().len(), 1003);
    let mut g = c.benchmark_group("policy_build");
    g.sample_size(10);
    // Load and compile, with no policy and with a thousand: the difference is what the policies cost.
    let dir_of = |policies: String| {
        move || {
            let set = rules_with(&policies);
            assert_eq!(set.rules().len(), count);
            set
        }
    };
    g.bench_function("compile_no_policy", |b| b.iter(dir_of(String::new())));
    g.bench_function("compile_1000_policies", |b| {
        b.iter(dir_of(policies.clone()))
    });
    g.finish();
}

criterion_group!(benches, scanning, building);
criterion_main!(benches);
