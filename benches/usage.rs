//! What a usage question costs over a synthetic month, and how fast a segment is rolled up.
//!
//! The month: 720 hours × 200 keys (in 10 tenants) × 5 models, written as rollup files the way the gateway
//! writes them (one closed segment per hour here: a 256 MB segment holds about an hour at 100 req/s), plus one
//! active segment of realistic size (`USAGE_BENCH_ACTIVE_MB`, default 64 MB of event lines shaped like the
//! gateway's). Timed:
//! - the first question of a process (every rollup file read and checked, the active segment read whole):
//!   what `promptgate usage` pays, and a gateway's first `/usage` after a start;
//! - questions to a warm index (what a running gateway pays: only new bytes of the active segment are read);
//! - the rollup of a segment: MB/s of event lines turned into per-hour sums (what a missing rollup costs).
//!
//! Every answer is checked against the counts the data was made with before it is timed: fast but wrong
//! fails. `cargo bench --bench usage` (results: BENCHMARKS.md §15).

use std::path::Path;
use std::time::Instant;

use promptgate::usage::query::Query;
use promptgate::usage::rollup::{Rollup, Sums};
use promptgate::usage::{sidecar, UsageIndex};

const HOURS: i64 = 720;
const KEYS: usize = 200;
const MODELS: [&str; 5] = [
    "gpt-4o",
    "gpt-4o-mini",
    "o3-mini",
    "gpt-4.1",
    "claude-sonnet",
];

fn cell_sums(hour: i64, key: usize, model: usize) -> Sums {
    let r = 1 + ((hour as usize + key * 7 + model * 13) % 5) as u64;
    Sums {
        requests: r,
        input_tokens: r * 100,
        output_tokens: r * 50,
        total_tokens: r * 150,
        blocked: u64::from(key.is_multiple_of(17)),
        redacted: u64::from(key.is_multiple_of(11)),
    }
}

/// One event line shaped like the gateway's (the fields a decision event carries, about 700 bytes).
fn event_line(i: usize) -> String {
    let key = i % KEYS;
    format!(
        concat!(
            r#"{{"type":"chat.message","event_id":"6f1c2a52-3b7e-4f0e-9a1d-{:012}","ts":"2026-12-01T06:{:02}:{:02}.123Z","#,
            r#""request_id":"req-{:016x}","key_id":"key-{:03}","tenant":"tenant-{}","route":"chat.completions","method":"POST","#,
            r#""model":"{}","stream":true,"decision":{{"request":"allow","response":"allow"}},"rules":[],"rules_version":"sha256:4be0c4a1","#,
            r#""status":200,"error":null,"blocked_mid_stream":false,"latency":{{"inspect_us":{{"request":41,"response":88}},"upstream_ms":812.5,"ttft_ms":120.25,"total_ms":815.0}},"#,
            r#""usage":{{"prompt_tokens":120,"completion_tokens":80,"total_tokens":200}},"bytes":{{"in":2048,"out":9321}},"session_id":null,"upstream":"openai","#,
            r#""attempts":[{{"upstream":"openai","endpoint":"10.0.0.7:443","status":200,"error":null}}]}}"#
        ),
        i,
        (i / 60) % 60,
        i % 60,
        i,
        key,
        key % 10,
        MODELS[i % MODELS.len()],
    )
}

fn write_month(dir: &Path) -> Sums {
    // 2026-11-01T00:00:00Z, in hours since the epoch.
    let start_hour = promptgate::usage::time::days_from_civil(2026, 11, 1) * 24;
    let mut all = Sums::default();
    for h in 0..HOURS {
        let hour = start_hour + h;
        let mut r = Rollup::default();
        for k in 0..KEYS {
            let key = format!("key-{k:03}");
            let tenant = format!("tenant-{}", k % 10);
            for (m, model) in MODELS.iter().enumerate() {
                let s = cell_sums(hour, k, m);
                all.add(&s);
                r.add(hour, Some(&key), Some(&tenant), Some(model), &s);
            }
        }
        r.events = 0;
        let n = h as u64 + 1;
        // A closed segment must exist for its rollup to be checked against it: an empty file of the length
        // the rollup records (retention would otherwise make it an orphan, read the same way).
        std::fs::write(promptgate::audit::segments::path(dir, n), b"").expect("segment");
        sidecar::write(dir, n, &sidecar::encode(n, 0, &r)).expect("rollup");
    }
    all
}

fn query(q: &str) -> Query {
    let pairs: Vec<(&str, &str)> = q
        .split('&')
        .filter(|p| !p.is_empty())
        .filter_map(|p| p.split_once('='))
        .collect();
    Query::parse(pairs, 1000).expect("query")
}

fn main() {
    let active_mb: usize = std::env::var("USAGE_BENCH_ACTIVE_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let t = Instant::now();
    let month = write_month(d);
    let rollup_bytes: u64 = sidecar::list(d)
        .expect("list")
        .iter()
        .map(|n| {
            std::fs::metadata(sidecar::path(d, *n))
                .map(|m| m.len())
                .unwrap_or(0)
        })
        .sum();
    println!(
        "month written: {} rollups, {} cells, {:.1} MB of rollup files, in {:.1} s",
        HOURS,
        HOURS as usize * KEYS * MODELS.len(),
        rollup_bytes as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    // The active segment.
    let mut seg = Vec::with_capacity(active_mb << 20);
    let mut events = 0u64;
    while seg.len() < active_mb << 20 {
        seg.extend_from_slice(event_line(events as usize).as_bytes());
        seg.push(b'\n');
        events += 1;
    }
    let active_n = HOURS as u64 + 1;
    std::fs::write(promptgate::audit::segments::path(d, active_n), &seg).expect("active");
    println!(
        "active segment: {:.1} MB, {events} events ({} bytes per line)",
        seg.len() as f64 / 1e6,
        seg.len() as u64 / events
    );

    // Rollup speed over the active segment's bytes, checked.
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        let mut r = Rollup::default();
        let used = r.scan(&seg);
        let secs = t.elapsed().as_secs_f64();
        assert_eq!((used, r.events), (seg.len(), events));
        best = best.min(secs);
    }
    println!(
        "rollup of a segment: {:.0} MB/s ({:.2} M events/s), best of 3",
        seg.len() as f64 / 1e6 / best,
        events as f64 / 1e6 / best
    );

    let want_total = month.requests + events;
    // First question of a process: every rollup read, the active segment read whole.
    let t = Instant::now();
    let mut ix = UsageIndex::new(d);
    let v = ix.query(&query("")).expect("query");
    let cold = t.elapsed().as_secs_f64();
    assert_eq!(
        v["totals"]["requests"].as_u64(),
        Some(want_total),
        "{}",
        v["totals"]
    );
    assert_eq!(v["sources"]["rebuilt"], 0);
    println!(
        "first question (cold: {HOURS} rollups + the active segment): {:.0} ms",
        cold * 1e3
    );

    let mut times: Vec<f64> = (0..5)
        .map(|_| {
            let t = Instant::now();
            ix.refresh().expect("refresh");
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    println!(
        "warm refresh alone (the directory listed, every file checked, nothing new): median {:.1} ms",
        times[2]
    );
    // (name, question, rows the answer must have)
    let cases: [(&str, &str, u64); 5] = [
        ("total", "", 1),
        ("one key, by day", "key=key-042&group_by=day", 31),
        (
            "a week, by key and model",
            "from=2026-11-23&to=2026-11-29&group_by=key,model&page_size=1000",
            1000,
        ),
        (
            "one tenant and model, by hour",
            "tenant=tenant-3&model=gpt-4o&group_by=hour",
            720,
        ),
        (
            "everything by key,model,day",
            "group_by=key,model,day",
            30 * 1000 + 200,
        ),
    ];
    for (name, q, rows) in cases {
        let q = query(q);
        let v = ix.query(&q).expect("query");
        assert_eq!(v["total_rows"].as_u64(), Some(rows), "{name}");
        if q.key.is_none() && q.tenant.is_none() && q.model.is_none() && q.from_hour.is_none() {
            assert_eq!(v["totals"]["requests"].as_u64(), Some(want_total), "{name}");
        }
        let mut times: Vec<f64> = (0..5)
            .map(|_| {
                let t = Instant::now();
                let v = ix.query(&q).expect("query");
                std::hint::black_box(&v);
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        times.sort_by(f64::total_cmp);
        println!(
            "warm question, {name}: median {:.1} ms (min {:.1}, max {:.1})",
            times[2], times[0], times[4]
        );
    }
}
