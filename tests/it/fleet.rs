//! A fleet: two gateways (real processes) sharing one Redis enforce every quota one gateway enforces, exactly —
//! request and token quotas of a key and of a tenant, concurrency permits as leases that every ending gives
//! back and a killed gateway's lease gives back by itself — and go on serving when Redis stalls or goes away.
//!
//! Each test starts its own `redis-server` (support's [`Redis`]) and mock upstream. Exactness tests use a long
//! window (60 s) so a window edge never splits a run, a generous Redis timeout and `on_unavailable = "deny"`:
//! a Redis answer that came too late shows as a 503, never as a count that quietly went local.
//!
//! `PROMPTGATE_FLEET_BACKEND=local` runs the same tests with each gateway counting on its own: the exactness
//! tests then fail, which shows they see per-instance counting.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{
    chat_body, key_entry, resp_roundtrip, Gateway, GatewayOpts, KeysFile, MockUpstream, Redis, Resp,
};

/// The key prefix every fleet gateway is given.
const PREFIX: &str = "pgfleet";

/// Every key a fleet gateway writes (a SCAN pattern): under the prefix, inside the hash tag
/// (`{pgfleet:k:<id>}…`).
const UNDER_PREFIX: &str = "{pgfleet:*";

/// The permits in Redis now (a future, for [`poll_until`]).
async fn permits(redis: &Redis) -> i64 {
    redis.permits(UNDER_PREFIX)
}

fn backend() -> String {
    std::env::var("PROMPTGATE_FLEET_BACKEND").unwrap_or_else(|_| "redis".into())
}

/// The `[limits]` section of a fleet member: `window` seconds, the Redis backend with `redis_extra` lines
/// (which override the defaults given here, being later keys would be duplicates: pass only what differs).
fn limits_toml(redis: &Redis, window: u64, redis_extra: &str) -> String {
    let mut redis_lines = String::new();
    for (k, v) in [
        ("timeout_ms", "2000"),
        ("lease_ms", "30000"),
        ("on_unavailable", "\"deny\""),
    ] {
        if !redis_extra
            .lines()
            .any(|l| l.trim_start().starts_with(&format!("{k} ")))
        {
            redis_lines.push_str(&format!("{k} = {v}\n"));
        }
    }
    format!(
        "[limits]\nwindow_seconds = {window}\nbackend = \"{}\"\n[limits.redis]\nurl = \"{}\"\nprefix = \"{PREFIX}\"\n{redis_lines}{redis_extra}\n",
        backend(),
        redis.url()
    )
}

/// Two gateways in gateway_keys mode on one keys file and one Redis.
async fn fleet(
    mock: &MockUpstream,
    redis: &Redis,
    keys: &KeysFile,
    window: u64,
    redis_extra: &str,
) -> [Gateway; 2] {
    let toml = format!(
        "[auth]\nmode = \"gateway_keys\"\nkeys_file = {:?}\n{}",
        keys.path.display().to_string(),
        limits_toml(redis, window, redis_extra)
    );
    let (a, b) = tokio::join!(
        Gateway::start_with(GatewayOpts::new(mock.url()).toml(&toml)),
        Gateway::start_with(GatewayOpts::new(mock.url()).toml(&toml)),
    );
    let gws = [a, b];
    wait_backend_up(&gws).await;
    gws
}

/// Waits until every gateway reports Redis reachable, so a run starts from a fleet that counts in Redis (the
/// gauge is also what a deployment would watch).
async fn wait_backend_up(gws: &[Gateway]) {
    for (i, g) in gws.iter().enumerate() {
        assert_eq!(
            poll_until(Duration::from_secs(10), Some(1.0), || g
                .metric("promptgate_limits_backend_up"))
            .await,
            Some(1.0),
            "gateway {i} never reached Redis: {}",
            g.stderr()
        );
    }
}

/// One answer, read whole.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn num(&self, name: &str) -> Option<u64> {
        self.header(name).and_then(|v| v.parse().ok())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

async fn send(req: reqwest::RequestBuilder) -> Answer {
    let r = req.send().await.expect("send");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r.text().await.unwrap_or_default();
    Answer {
        status,
        headers,
        body,
    }
}

/// A small chat completion as `secret`.
async fn chat(client: &reqwest::Client, gw: &Gateway, secret: &str) -> Answer {
    chat_text(client, gw, secret, "Say hello").await
}

async fn chat_text(client: &reqwest::Client, gw: &Gateway, secret: &str, text: &str) -> Answer {
    send(
        client
            .post(gw.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {secret}"))
            .body(chat_body(text)),
    )
    .await
}

/// A streamed chat completion as `secret`, returned as soon as its head arrived (the body still coming).
async fn open_stream(gw: &Gateway, secret: &str, extra: &[(&str, &str)]) -> reqwest::Response {
    let body = serde_json::json!({"model": "gpt-4o-mini", "stream": true,
        "messages": [{"role": "user", "content": "stream please"}]});
    let mut req = reqwest::Client::new()
        .post(gw.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {secret}"))
        .body(body.to_string());
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    req.send().await.expect("send")
}

/// Sums one metric sample over the gateways (absent counts as 0), once it reads `want` or 5 s passed.
async fn fleet_metric(gws: &[Gateway], sample: &str, want: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut sum = 0.0;
        for g in gws {
            sum += g.metric(sample).await.unwrap_or(0.0);
        }
        if sum == want || Instant::now() > deadline {
            return sum;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `probe` until it returns `want` or `limit` passed; returns the last value.
async fn poll_until<T, F, Fut>(limit: Duration, want: T, mut probe: F) -> T
where
    T: PartialEq + std::fmt::Debug,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let deadline = Instant::now() + limit;
    loop {
        let v = probe().await;
        if v == want || Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Fallback decisions a gateway made so far, over every mode.
async fn fallbacks(gw: &Gateway) -> f64 {
    let mut n = 0.0;
    for mode in ["local", "allow", "deny"] {
        n += gw
            .metric(&format!(
                "promptgate_limits_fallback_decisions_total{{mode=\"{mode}\"}}"
            ))
            .await
            .unwrap_or(0.0);
    }
    n
}

/// Asserts that a run was decided by Redis alone: no gateway fell back.
async fn assert_no_fallback(gws: &[Gateway]) {
    for (i, g) in gws.iter().enumerate() {
        assert_eq!(
            fallbacks(g).await,
            0.0,
            "gateway {i} fell back (Redis too slow on a busy machine?): {}",
            g.stderr()
        );
    }
}

/// A 429 carries what a client needs to wait the right time, and the caller's own limit.
fn assert_refusal_headers(a: &Answer, limit_header: &str, limit: u64, window: u64) {
    assert_retry_after(a, window);
    assert_eq!(a.num(limit_header), Some(limit), "{a:?}");
}

/// A 429 says how long to wait: within the window, in seconds and milliseconds that agree.
fn assert_retry_after(a: &Answer, window: u64) {
    assert_eq!(a.status, 429, "{a:?}");
    let retry_after = a.num("retry-after").expect("retry-after");
    let retry_ms = a.num("retry-after-ms").expect("retry-after-ms");
    assert!((1..=window).contains(&retry_after), "{a:?}");
    assert!(
        retry_ms > 0 && retry_ms <= window * 1000 && retry_ms.div_ceil(1000) == retry_after,
        "{a:?}"
    );
    assert_eq!(a.json()["error"]["type"], "rate_limit_exceeded", "{a:?}");
}

#[tokio::test]
async fn a_key_gets_exactly_its_requests_across_two_gateways_under_concurrent_load() {
    const N: u64 = 25;
    let secret = "pgk_fleet_rate_secret";
    let (mock, redis) = (MockUpstream::start().await, Redis::start());
    let keys = KeysFile::new(&key_entry(
        "fleet-rate",
        secret,
        &format!("limits = {{ requests_per_minute = {N} }}"),
    ));
    let gws = Arc::new(fleet(&mock, &redis, &keys, 60, "").await);

    // Eight clients, ten requests each, every client alternating between the gateways.
    let tasks = (0..8).map(|t| {
        let gws = gws.clone();
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut out = Vec::new();
            for j in 0..10 {
                out.push(chat(&client, &gws[(t + j) % 2], secret).await);
            }
            out
        })
    });
    let answers: Vec<Answer> = futures_util::future::join_all(tasks)
        .await
        .into_iter()
        .flat_map(|r| r.expect("task"))
        .collect();

    let (ok, refused): (Vec<&Answer>, Vec<&Answer>) = answers.iter().partition(|a| a.status == 200);
    assert_eq!(ok.len() as u64, N, "successes across the fleet");
    assert_eq!(refused.len(), 80 - N as usize);
    // One count for the fleet: each success saw a different remaining value, 24 down to 0.
    let mut remaining: Vec<u64> = ok
        .iter()
        .map(|a| a.num("x-ratelimit-remaining-requests").expect("remaining"))
        .collect();
    remaining.sort_unstable();
    assert_eq!(remaining, (0..N).collect::<Vec<_>>());
    for a in &refused {
        assert_refusal_headers(a, "x-ratelimit-limit-requests", N, 60);
        assert_eq!(a.num("x-ratelimit-remaining-requests"), Some(0), "{a:?}");
        assert!(a.body.contains("requests per minute on this key"), "{a:?}");
    }
    assert_eq!(mock.received().await.len() as u64, N);
    assert_eq!(
        fleet_metric(
            &gws[..],
            "promptgate_rate_limited_total{limit=\"requests\",scope=\"key\"}",
            (80 - N) as f64
        )
        .await,
        (80 - N) as f64
    );
    assert_no_fallback(&gws[..]).await;
    // The counters are in Redis, under the prefix, and no key name holds the secret.
    let names = redis.keys();
    assert!(
        names.iter().any(|k| k.contains(PREFIX)),
        "no counter in Redis: {names:?}"
    );
    assert!(!names.iter().any(|k| k.contains(secret)), "{names:?}");
}

#[tokio::test]
async fn a_tenant_quota_is_shared_by_its_keys_across_two_gateways() {
    const TENANT: u64 = 20;
    let (mock, redis) = (MockUpstream::start().await, Redis::start());
    let secrets = ["pgk_fleet_tenant_one", "pgk_fleet_tenant_two"];
    let keys = KeysFile::new(&format!(
        "[[tenant]]\nid = \"team-a\"\nlimits = {{ requests_per_minute = {TENANT} }}\n\n{}{}",
        key_entry("one", secrets[0], "limits = { requests_per_minute = 1000 }"),
        key_entry("two", secrets[1], "limits = { requests_per_minute = 1000 }"),
    ));
    let gws = Arc::new(fleet(&mock, &redis, &keys, 60, "").await);

    // Eight clients, eight requests each: clients alternate the key, requests alternate the gateway.
    let tasks = (0..8).map(|t| {
        let gws = gws.clone();
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut out = Vec::new();
            for j in 0..8 {
                out.push((
                    t % 2,
                    chat(&client, &gws[(t + j) % 2], secrets[t % 2]).await,
                ));
            }
            out
        })
    });
    let answers: Vec<(usize, Answer)> = futures_util::future::join_all(tasks)
        .await
        .into_iter()
        .flat_map(|r| r.expect("task"))
        .collect();

    let ok = answers.iter().filter(|(_, a)| a.status == 200).count() as u64;
    assert_eq!(ok, TENANT, "successes of the tenant across the fleet");
    for (key, a) in &answers {
        if a.status == 200 {
            continue;
        }
        assert_retry_after(a, 60);
        assert!(
            a.body.contains("requests per minute on this tenant"),
            "{a:?}"
        );
        // Every refusal tells the key's own quota, whether Redis decided it or the gateway remembered that
        // the tenant is over: a tenant refusal does not count against the key.
        let remaining = a.num("x-ratelimit-remaining-requests");
        assert_eq!(a.num("x-ratelimit-limit-requests"), Some(1000), "{a:?}");
        assert!(
            remaining.is_some_and(|r| r >= 1000 - TENANT),
            "key {key}: {a:?}"
        );
        assert!(a.num("x-ratelimit-reset").is_some(), "{a:?}");
    }
    // Each key's own count is exact across the fleet too: its successes saw 999, 998, … once each.
    for key in 0..2 {
        let mut remaining: Vec<u64> = answers
            .iter()
            .filter(|(k, a)| *k == key && a.status == 200)
            .map(|(_, a)| a.num("x-ratelimit-remaining-requests").expect("remaining"))
            .collect();
        remaining.sort_unstable();
        let n = remaining.len() as u64;
        assert_eq!(remaining, (1000 - n..1000).collect::<Vec<_>>(), "key {key}");
    }
    let refused = 64 - TENANT;
    assert_eq!(
        fleet_metric(
            &gws[..],
            "promptgate_rate_limited_total{limit=\"requests\",scope=\"tenant\"}",
            refused as f64
        )
        .await,
        refused as f64
    );
    // Some of those refusals came from the over-limit cache: the assertions above covered that path.
    let cached = fleet_metric(
        &gws[..],
        "promptgate_limits_over_limit_cache_hits_total",
        -1.0,
    )
    .await;
    assert!(cached > 0.0, "no refusal came from the over-limit cache");
    assert_eq!(mock.received().await.len() as u64, TENANT);
    assert_no_fallback(&gws[..]).await;
}

#[tokio::test]
async fn settled_token_usage_on_one_gateway_is_seen_by_the_other() {
    const TPM: u64 = 1000;
    let secret = "pgk_fleet_tokens";
    let (mock, redis) = (MockUpstream::start().await, Redis::start());
    let keys = KeysFile::new(&key_entry(
        "tokens",
        secret,
        &format!("limits = {{ tokens_per_minute = {TPM} }}"),
    ));
    let gws = fleet(&mock, &redis, &keys, 60, "").await;
    let client = reqwest::Client::new();

    // About 500 estimated tokens on the first gateway; the mock reports its own count, which settles.
    let a = chat_text(
        &client,
        &gws[0],
        secret,
        &"lorem ipsum dolor sit amet ".repeat(74),
    )
    .await;
    assert_eq!(a.status, 200, "{a:?}");
    let used = a.json()["usage"]["total_tokens"].as_u64().expect("usage");
    assert!(used > 300 && used < TPM, "{used}");
    let want = Some(TPM - used);
    // The second gateway's view of the quota is the settled one.
    let (client_ref, second) = (&client, &gws[1]);
    let seen = poll_until(Duration::from_secs(10), want, move || async move {
        send(
            client_ref
                .get(second.url("/v1/models"))
                .header("authorization", format!("Bearer {secret}")),
        )
        .await
        .num("x-ratelimit-remaining-tokens")
    })
    .await;
    assert_eq!(seen, want, "the second gateway's remaining tokens");

    // A prompt that fits the whole quota but not what the first gateway left is refused by the second.
    let b = chat_text(
        &client,
        &gws[1],
        secret,
        &"lorem ipsum dolor sit amet ".repeat(100),
    )
    .await;
    assert_refusal_headers(&b, "x-ratelimit-limit-tokens", TPM, 60);
    assert!(b.body.contains("tokens per minute on this key"), "{b:?}");
    assert_eq!(b.num("x-ratelimit-remaining-tokens"), want, "{b:?}");
    let chats = mock
        .received()
        .await
        .iter()
        .filter(|r| r["path"] == "/v1/chat/completions")
        .count();
    assert_eq!(chats, 1, "the refused prompt reached the upstream");
    assert_no_fallback(&gws[..]).await;
}

#[tokio::test]
async fn concurrent_streams_are_counted_across_the_fleet_and_every_ending_gives_its_lease_back() {
    let secret = "pgk_fleet_streams";
    let (mock, redis) = (MockUpstream::start().await, Redis::start());
    let keys = KeysFile::new(&key_entry(
        "streams",
        secret,
        "limits = { max_concurrent = 3 }",
    ));
    let gws = fleet(&mock, &redis, &keys, 60, "").await;

    // Three streams held open by the upstream, two through the first gateway and one through the second: one
    // the client will abort, one the upstream will reset, one that will be blocked mid-stream.
    let aborted = open_stream(&gws[0], secret, &[("x-mock-hold", "abort")]).await;
    let mut reset = open_stream(
        &gws[1],
        secret,
        &[
            ("x-mock-hold", "reset"),
            ("x-mock-reset-after", "2"),
            ("x-mock-chunks", "6"),
        ],
    )
    .await;
    let mut blocked = open_stream(
        &gws[0],
        secret,
        &[
            ("x-mock-hold", "block"),
            (
                "x-mock-content",
                "here is a key: AKIAIOSFODNN7EXAMPLE and more text",
            ),
            ("x-mock-chunks", "4"),
        ],
    )
    .await;
    for r in [&aborted, &reset, &blocked] {
        assert_eq!(r.status(), 200);
    }
    assert_eq!(redis.permits(UNDER_PREFIX), 3, "leases in Redis");
    // The fourth is refused on either gateway, whichever holds fewer of the three.
    for gw in &gws {
        let extra = open_stream(gw, secret, &[]).await;
        assert_eq!(extra.status(), 429);
        let v: Value = extra.json().await.expect("json");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("concurrent requests on this key")),
            "{v}"
        );
    }

    // The client leaves while the upstream still holds its answer.
    drop(aborted);
    assert_eq!(
        poll_until(Duration::from_secs(10), 2, || permits(&redis)).await,
        2,
        "the aborted stream kept its lease"
    );
    // The upstream resets mid-stream.
    mock.release("reset").await;
    while let Ok(Some(_)) = reset.chunk().await {}
    assert_eq!(
        poll_until(Duration::from_secs(10), 1, || permits(&redis)).await,
        1,
        "the reset stream kept its lease"
    );
    // A block mid-stream.
    mock.release("block").await;
    let mut seen = Vec::new();
    while let Ok(Some(c)) = blocked.chunk().await {
        seen.extend_from_slice(&c);
    }
    let seen = String::from_utf8_lossy(&seen);
    assert!(seen.contains("policy_blocked") && !seen.contains("AKIAIOSFODNN7EXAMPLE"));
    assert_eq!(
        poll_until(Duration::from_secs(10), 0, || permits(&redis)).await,
        0,
        "the blocked stream kept its lease"
    );
    mock.release("abort").await;

    // The key has its whole concurrency again, across the fleet.
    let held: Vec<reqwest::Response> = futures_util::future::join_all([
        open_stream(&gws[0], secret, &[("x-mock-hold", "again")]),
        open_stream(&gws[1], secret, &[("x-mock-hold", "again")]),
        open_stream(&gws[1], secret, &[("x-mock-hold", "again")]),
    ])
    .await;
    for r in &held {
        assert_eq!(r.status(), 200);
    }
    assert_eq!(open_stream(&gws[0], secret, &[]).await.status(), 429);
    mock.release("again").await;
    for mut r in held {
        while let Ok(Some(_)) = r.chunk().await {}
    }
    assert_eq!(
        poll_until(Duration::from_secs(10), 0, || permits(&redis)).await,
        0,
        "finished streams kept their leases"
    );
    assert_eq!(
        fleet_metric(
            &gws[..],
            "promptgate_rate_limited_total{limit=\"concurrency\",scope=\"key\"}",
            3.0
        )
        .await,
        3.0
    );
    assert_no_fallback(&gws[..]).await;
}

#[tokio::test]
async fn a_killed_gateways_leases_expire_and_the_key_gets_its_slots_back_on_the_other() {
    const LEASE_MS: u64 = 2000;
    let secret = "pgk_fleet_crash";
    let (mock, redis) = (MockUpstream::start().await, Redis::start());
    let keys = KeysFile::new(&key_entry(
        "crash",
        secret,
        "limits = { max_concurrent = 2 }",
    ));
    let [a, b] = fleet(&mock, &redis, &keys, 60, &format!("lease_ms = {LEASE_MS}")).await;

    let held = futures_util::future::join_all([
        open_stream(&a, secret, &[("x-mock-hold", "crash")]),
        open_stream(&a, secret, &[("x-mock-hold", "crash")]),
    ])
    .await;
    for r in &held {
        assert_eq!(r.status(), 200);
    }
    assert_eq!(open_stream(&b, secret, &[]).await.status(), 429);
    // Living streams keep their leases past the lease time: they are renewed.
    // (Past two leases: also past the permit set's own expiry, were a renewal to forget it.)
    tokio::time::sleep(Duration::from_millis(5 * LEASE_MS / 2)).await;
    assert_eq!(
        open_stream(&b, secret, &[]).await.status(),
        429,
        "a live stream's lease ran out"
    );
    assert_eq!(redis.permits(UNDER_PREFIX), 2);

    // The gateway holding both dies without a word.
    a.signal("KILL");
    let client = reqwest::Client::new();
    let (client_ref, b_ref) = (&client, &b);
    let status = poll_until(Duration::from_secs(30), 200, move || async move {
        chat(client_ref, b_ref, secret).await.status
    })
    .await;
    assert_eq!(status, 200, "the dead gateway's leases never expired");
    // Both slots are back (none leaked), and no more than both.
    let again = futures_util::future::join_all([
        open_stream(&b, secret, &[("x-mock-hold", "after")]),
        open_stream(&b, secret, &[("x-mock-hold", "after")]),
    ])
    .await;
    for r in &again {
        assert_eq!(r.status(), 200);
    }
    assert_eq!(open_stream(&b, secret, &[]).await.status(), 429);
    assert_eq!(
        redis.permits(UNDER_PREFIX),
        2,
        "the dead gateway's leases stayed"
    );
    mock.release("after").await;
    mock.release("crash").await;
    for mut r in again {
        while let Ok(Some(_)) = r.chunk().await {}
    }
    drop(held);
    assert_eq!(
        poll_until(Duration::from_secs(10), 0, || permits(&redis)).await,
        0
    );
    drop(a);
}

#[tokio::test]
async fn a_stalled_redis_makes_requests_fall_back_before_the_stall_ends() {
    const STALL_SECONDS: u64 = 3;
    let secret = "pgk_fleet_slow";
    let (mock, redis) = (MockUpstream::start().await, Redis::start());
    let keys = KeysFile::new(&key_entry(
        "slow",
        secret,
        "limits = { requests_per_minute = 100000, max_concurrent = 1000 }",
    ));
    let gws = fleet(
        &mock,
        &redis,
        &keys,
        60,
        "timeout_ms = 100\non_unavailable = \"local\"",
    )
    .await;
    let client = reqwest::Client::new();
    for gw in &gws {
        assert_eq!(chat(&client, gw, secret).await.status, 200);
    }
    assert!(!redis.scan(UNDER_PREFIX, None).is_empty());
    let before = [fallbacks(&gws[0]).await, fallbacks(&gws[1]).await];

    // Redis stops answering for a while (a side connection puts it to sleep).
    let mut side = tokio::net::TcpStream::connect(("127.0.0.1", redis.port))
        .await
        .expect("connect");
    let stall = tokio::spawn(async move {
        let reply = resp_roundtrip(&mut side, &["DEBUG", "SLEEP", &STALL_SECONDS.to_string()])
            .await
            .expect("debug sleep");
        (reply, Instant::now())
    });
    // Proof that it sleeps: a PING gets no answer.
    let mut probe = tokio::net::TcpStream::connect(("127.0.0.1", redis.port))
        .await
        .expect("connect");
    assert!(
        tokio::time::timeout(
            Duration::from_millis(300),
            resp_roundtrip(&mut probe, &["PING"])
        )
        .await
        .is_err(),
        "Redis answered during DEBUG SLEEP"
    );

    let mut finished = Vec::new();
    for i in 0..10 {
        let a = chat(&client, &gws[i % 2], secret).await;
        assert_eq!(a.status, 200, "{a:?}");
        finished.push(Instant::now());
    }
    let (reply, stall_end) = stall.await.expect("stall task");
    assert_eq!(reply, Resp::Simple("OK".into()));
    // An ordering fact, not a latency figure: every request was answered while Redis still slept.
    assert!(
        finished.iter().all(|t| *t < stall_end),
        "a request waited for the stalled Redis"
    );
    for (i, gw) in gws.iter().enumerate() {
        assert!(
            fallbacks(gw).await > before[i],
            "gateway {i} did not fall back"
        );
    }
    // Redis is back: the gateways notice by themselves.
    for gw in &gws {
        assert_eq!(
            gw.metric_eventually("promptgate_limits_backend_up", 1.0)
                .await,
            Some(1.0)
        );
    }
}

#[tokio::test]
async fn a_redis_outage_under_load_fails_no_request_and_redis_is_used_again_after_its_restart() {
    let secret = "pgk_fleet_outage";
    let (mock, mut redis) = (MockUpstream::start().await, Redis::start());
    let keys = KeysFile::new(&key_entry(
        "outage",
        secret,
        "limits = { requests_per_minute = 1000000, tokens_per_minute = 1000000000, max_concurrent = 1000 }",
    ));
    let gws = Arc::new(
        fleet(
            &mock,
            &redis,
            &keys,
            60,
            "timeout_ms = 200\non_unavailable = \"local\"",
        )
        .await,
    );
    for gw in gws.iter() {
        assert_eq!(gw.metric("promptgate_limits_backend_up").await, Some(1.0));
    }

    // Two clients load both gateways until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let load = (0..2).map(|t| {
        let (gws, stop, sent) = (gws.clone(), stop.clone(), sent.clone());
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut failed = Vec::new();
            let mut j = t;
            while !stop.load(Ordering::Relaxed) {
                let a = chat(&client, &gws[j % 2], secret).await;
                if a.status != 200 {
                    failed.push(a);
                }
                sent.fetch_add(1, Ordering::Relaxed);
                j += 1;
            }
            failed
        })
    });
    let load: Vec<_> = load.collect();
    let wait_sent = |n: usize| {
        let sent = sent.clone();
        async move {
            let sent = &sent;
            poll_until(Duration::from_secs(30), true, move || async move {
                sent.load(Ordering::Relaxed) >= n
            })
            .await
        }
    };

    assert!(wait_sent(20).await);
    redis.stop();
    for (i, gw) in gws.iter().enumerate() {
        assert_eq!(
            poll_until(Duration::from_secs(10), Some(0.0), || gw
                .metric("promptgate_limits_backend_up"))
            .await,
            Some(0.0),
            "gateway {i} still thinks Redis is up"
        );
    }
    let n = sent.load(Ordering::Relaxed);
    assert!(wait_sent(n + 20).await);
    for (i, gw) in gws.iter().enumerate() {
        assert!(
            gw.metric("promptgate_limits_fallback_decisions_total{mode=\"local\"}")
                .await
                .is_some_and(|v| v > 0.0),
            "gateway {i} made no local decision while Redis was down"
        );
    }

    // Redis comes back on the same port, empty: counters appear in it again with no gateway restart.
    redis.restart();
    for (i, gw) in gws.iter().enumerate() {
        assert_eq!(
            poll_until(Duration::from_secs(20), Some(1.0), || gw
                .metric("promptgate_limits_backend_up"))
            .await,
            Some(1.0),
            "gateway {i} did not see Redis come back"
        );
    }
    let fallback_after = [fallbacks(&gws[0]).await, fallbacks(&gws[1]).await];
    let n = sent.load(Ordering::Relaxed);
    assert!(wait_sent(n + 20).await);
    stop.store(true, Ordering::Relaxed);
    let mut failed = Vec::new();
    for t in load {
        failed.extend(t.await.expect("load task"));
    }
    assert!(failed.is_empty(), "requests failed: {failed:?}");
    assert!(
        !redis.scan(UNDER_PREFIX, None).is_empty(),
        "nothing counted in the restarted Redis"
    );
    assert_eq!(
        [fallbacks(&gws[0]).await, fallbacks(&gws[1]).await],
        fallback_after,
        "fallback decisions went on after Redis was back"
    );
    for gw in gws.iter() {
        let health = reqwest::get(gw.admin_url("/healthz"))
            .await
            .expect("healthz");
        assert_eq!(health.status(), 200, "{}", gw.stderr());
    }
}

#[tokio::test]
async fn an_over_limit_key_hammered_after_its_first_refusals_costs_redis_almost_nothing() {
    const N: u64 = 5;
    let secret = "pgk_fleet_flood";
    let (mock, redis) = (MockUpstream::start().await, Redis::start());
    let keys = KeysFile::new(&key_entry(
        "flood",
        secret,
        &format!("limits = {{ requests_per_minute = {N} }}"),
    ));
    let gws = Arc::new(fleet(&mock, &redis, &keys, 60, "").await);
    let client = reqwest::Client::new();
    let mut statuses = Vec::new();
    for i in 0..N as usize + 4 {
        statuses.push(chat(&client, &gws[i % 2], secret).await.status);
    }
    let mut want = vec![200; N as usize];
    want.extend([429; 4]);
    assert_eq!(statuses, want);
    let scripts = || redis.calls("evalsha") + redis.calls("eval");
    let before = scripts();

    // 500 more, from ten clients over both gateways.
    let tasks = (0..10).map(|t| {
        let gws = gws.clone();
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut out = Vec::new();
            for j in 0..50 {
                out.push(chat(&client, &gws[(t + j) % 2], secret).await);
            }
            out
        })
    });
    for r in futures_util::future::join_all(tasks).await {
        for a in r.expect("task") {
            assert_refusal_headers(&a, "x-ratelimit-limit-requests", N, 60);
            assert_eq!(a.num("x-ratelimit-remaining-requests"), Some(0), "{a:?}");
        }
    }
    let after = scripts();
    assert!(
        after - before <= 4,
        "500 refusals of a key known to be over cost {} script calls",
        after - before
    );
    assert_eq!(mock.received().await.len() as u64, N);
    assert_eq!(
        fleet_metric(
            &gws[..],
            "promptgate_rate_limited_total{limit=\"requests\",scope=\"key\"}",
            504.0
        )
        .await,
        504.0
    );
    let hits = fleet_metric(
        &gws[..],
        "promptgate_limits_over_limit_cache_hits_total",
        502.0,
    )
    .await;
    assert!(hits >= 500.0, "refusals from the over-limit cache: {hits}");
    assert_no_fallback(&gws[..]).await;
}

#[tokio::test]
async fn a_cached_refusal_ends_when_its_retry_after_has_passed() {
    let secret = "pgk_fleet_cache_end";
    let (mock, redis) = (MockUpstream::start().await, Redis::start());
    let keys = KeysFile::new(&key_entry(
        "cache-end",
        secret,
        "limits = { requests_per_minute = 1 }",
    ));
    // A two-second window, so the test waits for resets.
    let gws = fleet(&mock, &redis, &keys, 2, "").await;
    let client = reqwest::Client::new();
    // Each gateway in turn: refused twice in a row (the second time from what it remembers), then served
    // right after waiting what it was told — a remembered refusal ends with its window.
    for (i, gw) in gws.iter().enumerate() {
        let other = &gws[1 - i];
        let mut refused = Vec::new();
        for _ in 0..50 {
            // The other gateway takes the window's only request (or is refused: the window is already spent).
            chat(&client, other, secret).await;
            let a = chat(&client, gw, secret).await;
            let b = chat(&client, gw, secret).await;
            if a.status == 429 && b.status == 429 {
                refused = vec![a, b];
                break;
            }
        }
        assert_eq!(refused.len(), 2, "gateway {i} never refused twice in a row");
        for a in &refused {
            assert_refusal_headers(a, "x-ratelimit-limit-requests", 1, 2);
        }
        let wait = refused
            .iter()
            .map(|a| a.num("retry-after-ms").expect("retry-after-ms"))
            .max()
            .expect("two");
        tokio::time::sleep(Duration::from_millis(wait + 50)).await;
        let served = chat(&client, gw, secret).await;
        assert_eq!(
            served.status, 200,
            "gateway {i} after waiting {wait} ms: {served:?}"
        );
    }
}

#[tokio::test]
async fn passthrough_callers_share_one_count_across_gateways_with_the_same_hash_key() {
    let (mock, redis) = (MockUpstream::start().await, Redis::start());
    let toml = format!(
        "{}[limits.per_caller]\nrequests_per_minute = 3\n",
        limits_toml(&redis, 60, "")
    );
    let start = || {
        Gateway::start_with(
            GatewayOpts::new(mock.url())
                .toml(&toml)
                .env("PROMPTGATE_CALLER_HASH_KEY", "fleet-shared-hash-key"),
        )
    };
    let (a, b) = tokio::join!(start(), start());
    let gws = [a, b];
    wait_backend_up(&gws).await;
    let [a, b] = gws;
    let client = reqwest::Client::new();
    let caller = "sk-fleet-passthrough-caller-0123456789";
    let mut statuses = Vec::new();
    for i in 0..6 {
        statuses.push(
            chat(&client, if i % 2 == 0 { &a } else { &b }, caller)
                .await
                .status,
        );
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429, 429]);
    assert_eq!(chat(&client, &b, "sk-fleet-other-caller").await.status, 200);
    let names = redis.keys();
    assert!(!names.is_empty());
    assert!(!names.iter().any(|k| k.contains("sk-fleet")), "{names:?}");
}
