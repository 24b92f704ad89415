//! What routing and balancing cost one request, without the network: `Router::route` over 1 pool (the single
//! default) and over 5 pools with exact names, `prefix*` patterns, a `model_map`, path prefixes and a default
//! (a lookup of each kind); and `Pool::select_now` plus dropping the selected endpoint (its in-flight count),
//! for pools of 1 and 3 endpoints, weighted round robin and least connections.
//!
//! Pools are built from TOML as the gateway builds them; their membership is filled by one discovery round of
//! the pool's own background service (IP literals: no DNS query), which is then shut down, so nothing runs
//! beside the timed loop. Every route is checked against its expected pool, and every pool must spread 3,000
//! selections evenly over its endpoints, before timing: a fast but wrong router or balancer fails here.
//!
//! `cargo bench --bench pools` (results set against the gateway's CPU per request: BENCHMARKS.md).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use pingora::services::background::BackgroundService;
use promptgate::config::{Config, FileConfig, Overrides, PoolConfig};
use promptgate::upstream::route::Router;
use promptgate::upstream::{Pool, Upstreams};

/// The pools of a config text (`[[upstream]]` entries only; every other section keeps its default).
fn pools(toml: &str) -> Vec<PoolConfig> {
    let raw = FileConfig::parse(toml).expect("bench config parses");
    Config::from_file(raw, "bench", &Overrides::default())
        .expect("bench config validates")
        .upstreams
}

const ONE_POOL: &str = r#"
[[upstream]]
name = "openai"
url = "http://127.0.0.1:9001"
"#;

/// Five providers, as a gateway in front of several might route them.
const FIVE_POOLS: &str = r#"
[[upstream]]
name = "openai"
url = "http://127.0.0.1:9001"
models = ["gpt-4o", "gpt-4o-mini", "gpt-4.1*", "o1*", "o3*"]
default = true

[[upstream]]
name = "azure"
url = "http://127.0.0.1:9002"
models = ["gpt-35-turbo", "azure-*"]
model_map = { "azure-4o" = "deployment-4o", "azure-4o-mini" = "deployment-4o-mini" }

[[upstream]]
name = "anthropic"
url = "http://127.0.0.1:9003"
models = ["claude-3-5-sonnet-latest", "claude-*"]

[[upstream]]
name = "local"
url = "http://127.0.0.1:9004"
models = ["llama-*", "mistral-*", "qwen-*"]
paths = ["/v1/embeddings"]

[[upstream]]
name = "audio"
url = "http://127.0.0.1:9005"
models = ["whisper-1", "tts-1*"]
paths = ["/v1/audio"]
"#;

/// A pool of `n` endpoints (one mock address each) balanced by `balance`, health checks off (the bench has no
/// upstream to probe; the balancer then counts every member as healthy).
fn pool_toml(n: usize, balance: &str) -> String {
    let urls: Vec<String> = (1..=n)
        .map(|i| format!("\"http://127.0.0.{i}:9000\""))
        .collect();
    format!(
        "[[upstream]]\nname = \"bench\"\nurl = [{}]\nbalance = \"{balance}\"\nhealth.enabled = false\n",
        urls.join(", ")
    )
}

/// Builds the pool of `toml` and fills its membership: the pool's service runs until its first discovery has
/// published every endpoint, then is told to shut down.
fn discovered_pool(rt: &tokio::runtime::Runtime, toml: &str, endpoints: usize) -> Arc<Pool> {
    let upstreams = Upstreams::new(&pools(toml), None).expect("pool builds");
    let pool = upstreams.pools[0].clone();
    let service = upstreams.services().remove(0);
    rt.block_on(async {
        let (stop, watch) = tokio::sync::watch::channel(false);
        let running = tokio::spawn(async move { service.start(watch).await });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while pool.members().len() < endpoints {
            assert!(
                tokio::time::Instant::now() < deadline,
                "discovery found {:?}",
                pool.members()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        stop.send(true).expect("service listens");
        running.await.expect("service stops");
    });
    assert!(
        pool.members().iter().all(|(_, ready)| *ready),
        "every endpoint ready: {:?}",
        pool.members()
    );
    pool
}

fn route(c: &mut Criterion) {
    let chat = "/v1/chat/completions";
    let one = Router::new(&pools(ONE_POOL));
    let five = Router::new(&pools(FIVE_POOLS));
    // (router, model, path, expected pool): checked before timing.
    let cases: [(&str, &Router, Option<&str>, &str, usize); 6] = [
        (
            "1 pool: any model → default",
            &one,
            Some("gpt-4o-mini"),
            chat,
            0,
        ),
        (
            "5 pools: exact name",
            &five,
            Some("claude-3-5-sonnet-latest"),
            chat,
            2,
        ),
        (
            "5 pools: model_map name",
            &five,
            Some("azure-4o-mini"),
            chat,
            1,
        ),
        (
            "5 pools: glob (6th of 9 prefixes)",
            &five,
            Some("qwen-2.5-72b"),
            chat,
            3,
        ),
        (
            "5 pools: no model, path prefix",
            &five,
            None,
            "/v1/audio/speech",
            4,
        ),
        (
            "5 pools: unknown model → default",
            &five,
            Some("gemini-2.0"),
            chat,
            0,
        ),
    ];
    for (name, router, model, path, want) in cases {
        assert_eq!(router.route(model, path), Some(want), "{name}");
    }
    let mut g = c.benchmark_group("route");
    for (name, router, model, path, _) in cases {
        g.bench_function(name, |b| {
            b.iter(|| router.route(black_box(model), black_box(path)))
        });
    }
    g.finish();
}

fn select(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut g = c.benchmark_group("select_now + drop");
    for (balance, label) in [
        ("round_robin", "round robin"),
        ("least_connections", "least connections"),
    ] {
        for n in [1, 3] {
            let pool = discovered_pool(&rt, &pool_toml(n, balance), n);
            // Sequential requests (each ends before the next): both policies spread them evenly.
            let mut seen: HashMap<SocketAddr, usize> = HashMap::new();
            for _ in 0..3000 {
                let e = pool.select_now(&[]).expect("an endpoint is ready");
                *seen.entry(e.addr).or_default() += 1;
            }
            assert_eq!(seen.len(), n, "{label}, {n}: {seen:?}");
            assert!(
                seen.values().all(|&k| k == 3000 / n),
                "{label}, {n}: {seen:?}"
            );
            let endpoints = if n == 1 { "endpoint" } else { "endpoints" };
            g.bench_function(format!("{label}, {n} {endpoints}"), |b| {
                b.iter(|| pool.select_now(black_box(&[])).map(|e| e.addr))
            });
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = route, select
}
criterion_main!(benches);
