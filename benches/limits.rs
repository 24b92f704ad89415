//! What limits cost one request, without the network: identifying the caller among 1,000 gateway keys (the
//! work done with limits off) next to identifying it *and* admitting it in one step — its concurrency permit,
//! the request and its token estimate against key and tenant quotas, and rendering the rate-limit headers (limits
//! on). Keys rotate on every iteration, as in `benches/limits.sh`. The difference is the limiter's cost per
//! request; BENCHMARKS.md sets it against the gateway's measured time per request.
//!
//! `cargo bench --bench limits`

use std::time::{Duration, SystemTime};

use criterion::{criterion_group, criterion_main, Criterion};
use http::HeaderMap;
use promptgate::auth::keys::secret_sha256;
use promptgate::auth::{Auth, KeyStore, KeysFile, Mode};
use promptgate::limits::{headers, LimitSpec, LocalLimiter};

const KEYS: usize = 1000;

fn keys_file(dir: &std::path::Path) -> std::path::PathBuf {
    let mut text = String::new();
    for t in 0..10 {
        text.push_str(&format!(
            "[[tenant]]\nid = \"tenant-{t}\"\nlimits = {{ requests_per_minute = 1000000000, max_concurrent = 100000 }}\n\n"
        ));
    }
    for i in 0..KEYS {
        text.push_str(&format!(
            "[[key]]\nid = \"bench-{i}\"\nsha256 = \"{}\"\ntenant = \"tenant-{}\"\nlimits = {{ requests_per_minute = 1000000000, tokens_per_minute = 1000000000000, max_concurrent = 10000 }}\n\n",
            secret_sha256(&format!("pgk_bench_{i:04}")),
            i % 10
        ));
    }
    let path = dir.join("keys.toml");
    std::fs::write(&path, text).expect("write keys");
    path
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = KeyStore::open(KeysFile::new(&keys_file(dir.path()))).expect("keys");
    let auth = Auth::new(
        Mode::GatewayKeys(std::sync::Arc::new(store)),
        LimitSpec::default(),
        Vec::new(),
        [0; 32],
    );
    let limiter = LocalLimiter::new(Duration::from_secs(60));
    let requests: Vec<HeaderMap> = (0..KEYS)
        .map(|i| {
            let mut h = HeaderMap::new();
            h.insert(
                http::header::AUTHORIZATION,
                format!("Bearer pgk_bench_{i:04}").parse().expect("header"),
            );
            h
        })
        .collect();
    // Every key is known, and every quota admits (checked before timing).
    for h in &requests {
        let caller = auth.identify(h, SystemTime::now()).expect("known key");
        limiter.admit_now(&caller.parties(), 0).expect("admitted");
    }

    let mut g = c.benchmark_group("per request, 1000 keys");
    let mut i = 0;
    g.bench_function("limits off: identify", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            auth.identify(&requests[i], SystemTime::now())
                .map(|c| c.is_limited())
        })
    });
    g.bench_function(
        "limits on: identify + admit + tokens + settle + headers",
        |b| {
            b.iter(|| {
                i = (i + 1) % KEYS;
                let caller = auth
                    .identify(&requests[i], SystemTime::now())
                    .expect("known");
                let parties = caller.parties();
                let admitted = limiter.admit_now(&parties, 1000).expect("admitted");
                let n = headers(&admitted.standing, SystemTime::now()).len();
                limiter.settle_now(&parties, 200);
                drop(admitted);
                n
            })
        },
    );
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
