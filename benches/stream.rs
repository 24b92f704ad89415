//! Streaming overhead: streams of small deltas from the paced mock, read directly and through the gateway
//! with the default rule pack filtering the answer; reports added time to first token (p50, p99), added
//! inter-delta gap p99, and the mean bytes held back (from the gateway's own metric). Every stream's text is
//! checked: the gateway must deliver exactly what the mock sent (it contains nothing the rules match).
//!
//! Then long runs (a hex dump of 16, 64 and 128 KiB followed by text, in one delta and in 64-byte deltas):
//! the time to receive the whole answer directly and through the gateway, whose filtering work must stay
//! linear in the run's length (an address after the run must still arrive redacted).
//!
//! `cargo bench --bench stream` (under `cargo test` it runs one short stream as a smoke test);
//! `PROMPTGATE_BIN=path/to/promptgate cargo bench --bench stream` measures another build of the gateway.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use promptgate::mock::{self, MockConfig};

/// Token-like deltas, as models stream them: each starts with its space (" quarterly").
const WORDS: &[&str] = &[
    "The",
    " quarterly",
    " report",
    " covers",
    " growth",
    " and",
    " plans",
    " for",
    " next",
    " year.",
];

struct Sample {
    ttft: Duration,
    gaps: Vec<Duration>,
}

async fn run_stream(client: &reqwest::Client, url: &str, cuts: &str, content: &str) -> Sample {
    let started = Instant::now();
    let resp = client
        .post(format!("{url}/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("x-mock-content", content)
        .header("x-mock-split-at", cuts)
        .header("x-mock-delay-ms", "1")
        .body(r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"go"}]}"#)
        .send()
        .await
        .expect("send");
    let mut body = resp.bytes_stream();
    let mut buf = String::new();
    let mut text = String::new();
    let mut arrivals = Vec::new();
    while let Some(chunk) = body.next().await {
        buf.push_str(&String::from_utf8_lossy(&chunk.expect("chunk")));
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            let Some(data) = event.trim().strip_prefix("data: ") else {
                continue;
            };
            if data == "[DONE]" {
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(data).expect("json");
            if let Some(t) = v["choices"][0]["delta"]["content"]
                .as_str()
                .filter(|t| !t.is_empty())
            {
                text.push_str(t);
                arrivals.push(started.elapsed());
            }
        }
    }
    assert_eq!(text, content, "the stream arrives complete and unchanged");
    let gaps = arrivals.windows(2).map(|w| w[1] - w[0]).collect();
    Sample {
        ttft: arrivals[0],
        gaps,
    }
}

/// One answer opening with a `kib` KiB hex run, in `chunks` deltas; returns the time to read all of it.
async fn run_long(
    client: &reqwest::Client,
    url: &str,
    kib: usize,
    chunks: usize,
    redacted: bool,
) -> Duration {
    let tail = "; end, mail jane.doe@example.com.";
    let started = Instant::now();
    let resp = client
        .post(format!("{url}/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("x-mock-lead", format!("0123456789abcdef*{}", kib * 64))
        .header("x-mock-content", tail)
        .header("x-mock-chunks", chunks.to_string())
        .body(r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"go"}]}"#)
        .send()
        .await
        .expect("send");
    let body = resp.text().await.expect("body");
    let elapsed = started.elapsed();
    let text: String = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    let want_tail = if redacted {
        "; end, mail [EMAIL]."
    } else {
        tail
    };
    assert_eq!(
        text.len(),
        kib * 1024 + want_tail.len(),
        "the run arrives whole"
    );
    assert!(
        text.ends_with(want_tail),
        "the address after the run is filtered"
    );
    elapsed
}

fn pct(mut v: Vec<Duration>, p: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let (streams, chunks) = if bench { (30, 500) } else { (1, 20) };
    let tokens: Vec<&str> = (0..chunks).map(|i| WORDS[i % WORDS.len()]).collect();
    let content: String = tokens.concat();
    // The mock cuts its answer where each token starts.
    let cuts: Vec<String> = tokens
        .iter()
        .scan(0, |at, t| {
            *at += t.len();
            Some(at.to_string())
        })
        .take(chunks - 1)
        .collect();
    let cuts = cuts.join(",");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mock = mock::start("127.0.0.1:0".parse().expect("addr"), MockConfig::default()).await.expect("mock");
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
        let admin = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
        // `$PROMPTGATE_BIN` measures another build of the gateway (e.g. an earlier commit's).
        let bin = std::env::var_os("PROMPTGATE_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_promptgate").into());
        let mut gw = Command::new(bin)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["run", "--listen", &format!("127.0.0.1:{port}"), "--admin", &format!("127.0.0.1:{admin}")])
            .args(["--upstream", &format!("http://{}", mock.addr)])
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("gateway");
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while client.get(format!("http://127.0.0.1:{admin}/healthz")).send().await.is_err() {
            assert!(Instant::now() < deadline, "gateway did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let direct = format!("http://{}", mock.addr);
        let via = format!("http://127.0.0.1:{port}");
        // Alternate direct and gateway runs so drift affects both alike; one warm-up each.
        run_stream(&client, &direct, &cuts, &content).await;
        run_stream(&client, &via, &cuts, &content).await;
        let (mut d, mut g) = (Vec::new(), Vec::new());
        for _ in 0..streams {
            d.push(run_stream(&client, &direct, &cuts, &content).await);
            g.push(run_stream(&client, &via, &cuts, &content).await);
        }
        let metrics = client.get(format!("http://127.0.0.1:{admin}/metrics")).send().await.expect("metrics").text().await.expect("text");
        let metric = |name: &str| -> f64 {
            metrics.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok())).unwrap_or(0.0)
        };
        let held_mean = metric("promptgate_stream_held_bytes_sum") / metric("promptgate_stream_held_bytes_count").max(1.0);
        let ttft = |s: &[Sample]| s.iter().map(|x| x.ttft).collect::<Vec<_>>();
        let gaps = |s: &[Sample]| s.iter().flat_map(|x| x.gaps.clone()).collect::<Vec<_>>();
        println!("streams: {streams} × {chunks} deltas, 1 ms apart, default rule pack active on the gateway");
        println!("| measure | direct | gateway | added |");
        println!("|---|---:|---:|---:|");
        for (name, p) in [("TTFT p50 (ms)", 0.5), ("TTFT p99 (ms)", 0.99)] {
            let (a, b) = (pct(ttft(&d), p), pct(ttft(&g), p));
            println!("| {name} | {:.3} | {:.3} | {:.3} |", ms(a), ms(b), ms(b) - ms(a));
        }
        for (name, p) in [("inter-delta gap p50 (ms)", 0.5), ("inter-delta gap p99 (ms)", 0.99)] {
            let (a, b) = (pct(gaps(&d), p), pct(gaps(&g), p));
            println!("| {name} | {:.3} | {:.3} | {:.3} |", ms(a), ms(b), ms(b) - ms(a));
        }
        println!("| mean bytes held back per event | — | {held_mean:.2} | |");
        let sizes: &[usize] = if bench { &[16, 64, 128] } else { &[16] };
        println!();
        println!("long runs: a hex dump then an address, read whole (best of 3)");
        println!("| run | deltas | direct (ms) | gateway (ms) |");
        println!("|---|---:|---:|---:|");
        for &kib in sizes {
            for chunks in [1, kib * 16] {
                let mut best = (Duration::MAX, Duration::MAX);
                for _ in 0..if bench { 3 } else { 1 } {
                    best.0 = best.0.min(run_long(&client, &direct, kib, chunks, false).await);
                    best.1 = best.1.min(run_long(&client, &via, kib, chunks, true).await);
                }
                println!("| {kib} KiB | {chunks} | {:.1} | {:.1} |", ms(best.0), ms(best.1));
            }
        }
        let _ = gw.kill();
        let _ = gw.wait();
    });
}
