//! Rule-engine throughput: the default pack (every shipped rule file), on 1 KB to 256 KB of prose (ASCII and
//! accented), on
//! 1.8 MB bodies (ASCII prose, accented prose, and U+FDFA, one code point that NFKC makes 18: the cost of
//! the normalised views must stay linear whatever the text), 10k and 100k keyword terms, and compiling 100k
//! terms — each next to a `memchr` pass over the same text, measured in the same run (the floor). Every scanned text has a known number of planted matches, checked before
//! timing: a fast but wrong engine fails here.
//!
//! `cargo bench --bench engine` (results and ratios: BENCHMARKS.md).

use std::path::Path;
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, SamplingMode,
    Throughput,
};
use promptgate::rules::{load, Budget, Direction, RuleSet};

const WORDS: &[&str] = &[
    "the",
    "quarterly",
    "report",
    "covers",
    "revenue",
    "growth",
    "across",
    "regions",
    "and",
    "plan",
    "for",
    "next",
    "year",
    "our",
    "team",
    "will",
    "review",
    "customer",
    "feedback",
    "before",
    "launch",
    "please",
    "summarise",
    "key",
    "points",
    "in",
    "a",
    "short",
    "paragraph",
    "with",
    "clear",
    "language",
    "model",
    "should",
    "answer",
    "questions",
    "about",
    "product",
    "pricing",
    "support",
    "tickets",
    "were",
    "resolved",
    "quickly",
    "during",
    "holiday",
    "season",
    "while",
    "engineers",
    "improved",
    "latency",
    "of",
    "service",
];

const ACCENTED: &[&str] = &[
    "café", "naïve", "Größe", "déjà", "über", "façade", "résumé", "São", "Ærø", "niño",
];

/// Deterministic prose of exactly `size` bytes (xorshift word picks), with `plant` inserted every `every`
/// bytes. Returns the text and how many plants it holds.
fn prose(size: usize, accented: bool, plant: &str, every: usize) -> (String, usize) {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut s = String::with_capacity(size + 64);
    let mut planted = 0;
    let mut next_plant = every / 2;
    while s.len() < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if s.len() >= next_plant && s.len() + plant.len() + 2 < size {
            s.push_str(plant);
            s.push(' ');
            planted += 1;
            next_plant += every;
            continue;
        }
        let w = if accented && x.is_multiple_of(5) {
            ACCENTED[(x >> 8) as usize % ACCENTED.len()]
        } else {
            WORDS[(x >> 8) as usize % WORDS.len()]
        };
        s.push_str(w);
        s.push(if x.is_multiple_of(11) { '.' } else { ' ' });
    }
    while s.len() > size {
        s.pop();
    }
    while s.len() < size {
        s.push(' ');
    }
    (s, planted)
}

/// `unit` repeated to exactly `size` bytes (spaces pad the end), with ` plant ` inserted every `every` bytes.
/// Returns the text and how many plants it holds.
fn repeated(size: usize, unit: &str, plant: &str, every: usize) -> (String, usize) {
    let mut s = String::with_capacity(size + 64);
    let mut planted = 0;
    let mut next_plant = every / 2;
    while s.len() + unit.len() <= size {
        if s.len() >= next_plant && s.len() + plant.len() + 2 < size {
            s.push(' ');
            s.push_str(plant);
            s.push(' ');
            planted += 1;
            next_plant += every;
            continue;
        }
        s.push_str(unit);
    }
    while s.len() < size {
        s.push(' ');
    }
    (s, planted)
}

fn default_pack() -> RuleSet {
    load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("rules"),
        &Budget::default(),
    )
    .expect("default pack")
}

fn keyword_set(dir: &Path, n: usize) -> RuleSet {
    std::fs::create_dir_all(dir.join("terms")).expect("mkdir");
    let terms: String = (0..n).map(|i| format!("codename {i:06}zq\n")).collect();
    std::fs::write(dir.join("terms/big.txt"), terms).expect("write");
    std::fs::write(
        dir.join("k.toml"),
        "[[rule]]\nid = \"bench.keywords\"\ndescription = \"many terms\"\nkeywords = { terms_file = \"terms/big.txt\" }\naction = \"redact\"\n",
    )
    .expect("write");
    load(dir, &Budget::default()).expect("keyword set")
}

/// The text sizes of the pack benchmarks: chat messages are often 1 KB or less, so the per-scan fixed cost
/// shows there; the larger sizes show the per-byte cost.
const SIZES: [(&str, usize); 5] = [
    ("1KB", 1 << 10),
    ("4KB", 4 << 10),
    ("16KB", 16 << 10),
    ("64KB", 64 << 10),
    ("256KB", 256 << 10),
];

fn floor(text: &str) -> usize {
    memchr::memchr_iter(b'\x00', text.as_bytes()).count()
}

fn bench_scan(c: &mut Criterion, group: &str, set: &RuleSet, cases: &[(String, String, usize)]) {
    let mut g = c.benchmark_group(group);
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    scan_cases(&mut g, group, set, cases);
    g.finish();
}

fn scan_cases(
    g: &mut BenchmarkGroup<'_, WallTime>,
    group: &str,
    set: &RuleSet,
    cases: &[(String, String, usize)],
) {
    for (name, text, planted) in cases {
        let found = set.scan(text, Direction::Request).len();
        assert_eq!(
            found, *planted,
            "{group}/{name}: expected {planted} matches, found {found}"
        );
        g.throughput(Throughput::Bytes(text.len() as u64));
        g.bench_with_input(BenchmarkId::new("memchr", name), text, |b, t| {
            b.iter(|| floor(t))
        });
        g.bench_with_input(BenchmarkId::new("scan", name), text, |b, t| {
            b.iter(|| set.scan(t, Direction::Request).len())
        });
    }
}

fn engine(c: &mut Criterion) {
    let pack = default_pack();
    let email = "jane.doe@example.com";
    let mut cases = Vec::new();
    for (name, size) in SIZES {
        let (t, n) = prose(size, false, email, 4096.min(size));
        cases.push((name.to_string(), t, n));
    }
    let (t, n) = prose(16 << 10, true, email, 4096);
    cases.push(("16KB-accented".to_string(), t, n));
    bench_scan(c, "default_pack", &pack, &cases);

    // Request bodies of 1.8 MB: one scan takes milliseconds, so a few samples of one iteration each.
    let size = 1_800_000;
    let every = 64 << 10;
    let (ascii, n_ascii) = prose(size, false, email, every);
    let (accented, n_accented) = prose(size, true, email, every);
    let (fdfa, n_fdfa) = repeated(size, "\u{FDFA}", email, every);
    let large = [
        ("ascii".to_string(), ascii, n_ascii),
        ("accented".to_string(), accented, n_accented),
        ("U+FDFA".to_string(), fdfa, n_fdfa),
    ];
    let mut g = c.benchmark_group("default_pack_1.8MB");
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    scan_cases(&mut g, "default_pack_1.8MB", &pack, &large);
    g.finish();

    for n in [10_000usize, 100_000] {
        let dir = tempfile::tempdir().expect("tempdir");
        let set = keyword_set(dir.path(), n);
        let plant = format!("codename {:06}zq", n / 2);
        let (t, k) = prose(16 << 10, false, &plant, 4096);
        bench_scan(
            c,
            &format!("keywords_{}k", n / 1000),
            &set,
            &[("16KB".to_string(), t, k)],
        );
    }

    let dir = tempfile::tempdir().expect("tempdir");
    keyword_set(dir.path(), 100_000);
    let mut g = c.benchmark_group("compile");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(5));
    g.bench_function("100k_terms", |b| {
        b.iter(|| {
            load(dir.path(), &Budget::default())
                .expect("compiles")
                .term_count()
        })
    });
    g.bench_function("default_pack", |b| b.iter(|| default_pack().rules().len()));
    g.finish();
}

criterion_group!(benches, engine);
criterion_main!(benches);
