//! Limits counted in a Redis (`limits.backend = "redis"`), seen from outside: a real `redis-server` started by
//! the test, the real gateway. Counters under the hash tag, the over-limit cache sparing Redis, leased permits
//! renewed and released, token settlement, the fallback of each `on_unavailable` mode with Redis down at start
//! or stopped mid-run, recovery without a restart, and a flushed script reloaded transparently.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{
    binary, chat_as, chat_body, free_port, header, key_entry, post, repo_root, Gateway,
    GatewayOpts, KeysFile, MockUpstream, Redis,
};

/// A gateway in gateway_keys mode counting in Redis at `redis_url`. Long windows: no test crosses one.
async fn redis_gateway(
    mock: &MockUpstream,
    keys: &KeysFile,
    redis_url: &str,
    on_unavailable: &str,
) -> Gateway {
    Gateway::start_with(GatewayOpts::new(mock.url()).toml(&format!(
        "[auth]\nmode = \"gateway_keys\"\nkeys_file = {:?}\n\
         [limits]\nwindow_seconds = 3600\nbackend = \"redis\"\n\
         [limits.redis]\nurl = \"{redis_url}\"\ntimeout_ms = 1000\nlease_ms = 2000\non_unavailable = \"{on_unavailable}\"\n",
        keys.path.display().to_string()
    )))
    .await
}

/// Waits (up to 15 s: a reconnect and a probe) for the backend gauge to read `want`.
async fn backend_up(gw: &Gateway, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = gw.metric("promptgate_limits_backend_up").await;
        if v == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "promptgate_limits_backend_up stayed {v:?}, want {want}: {}",
            gw.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The one key of `redis` starting with `prefix`.
fn key_with(redis: &Redis, prefix: &str) -> String {
    let keys = redis.keys();
    let found: Vec<&String> = keys.iter().filter(|k| k.starts_with(prefix)).collect();
    assert_eq!(found.len(), 1, "one key {prefix}… in {keys:?}");
    found[0].clone()
}

async fn redis_errors(gw: &Gateway) -> f64 {
    let mut sum = 0.0;
    for kind in ["timeout", "connection", "script", "other"] {
        sum += gw
            .metric(&format!(
                "promptgate_limits_redis_errors_total{{kind=\"{kind}\"}}"
            ))
            .await
            .unwrap_or(0.0);
    }
    sum
}

#[tokio::test]
async fn one_gateway_refuses_past_the_quota_with_counters_in_redis_under_the_tenant_hash_tag() {
    let redis = Redis::start();
    let mock = MockUpstream::start().await;
    let keys = KeysFile::new(&key_entry(
        "alpha",
        "pgk_alpha_secret",
        "limits = { requests_per_minute = 3 }",
    ));
    let gw = redis_gateway(&mock, &keys, &redis.url(), "deny").await;
    backend_up(&gw, 1.0).await;
    for remaining in ["2", "1", "0"] {
        let r = chat_as(&gw, "pgk_alpha_secret", &[]).await;
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "x-ratelimit-limit-requests"), Some("3"));
        assert_eq!(
            header(&r, "x-ratelimit-remaining-requests"),
            Some(remaining)
        );
    }
    let r = chat_as(&gw, "pgk_alpha_secret", &[]).await;
    assert_eq!(r.status(), 429);
    assert!(header(&r, "retry-after").is_some());
    assert_eq!(header(&r, "x-ratelimit-remaining-requests"), Some("0"));
    assert_eq!(
        mock.received().await.len(),
        3,
        "the refused request never went upstream"
    );

    // The counter lives in Redis, under the tenant's hash tag, named by the key id (never the secret).
    let counter = key_with(&redis, "{promptgate:t:team-a}:req:k:alpha:");
    assert_eq!(redis.cmd::<String>(&["GET", &counter]), "3");
    assert!(redis.keys().iter().all(|k| !k.contains("pgk_alpha_secret")));

    // Nothing left in the window: refused from the over-limit cache, without asking Redis again.
    let scripts = redis.calls("evalsha");
    let r = chat_as(&gw, "pgk_alpha_secret", &[]).await;
    assert_eq!(r.status(), 429);
    assert!(header(&r, "retry-after").is_some());
    assert_eq!(
        header(&r, "x-ratelimit-remaining-requests"),
        Some("0"),
        "a cached refusal carries the refused quota"
    );
    assert_eq!(redis.calls("evalsha"), scripts, "no Redis round trip");
    assert_eq!(
        gw.metric("promptgate_limits_over_limit_cache_hits_total")
            .await,
        Some(1.0)
    );
    assert_eq!(redis.cmd::<String>(&["GET", &counter]), "3");
}

#[test]
fn passthrough_with_redis_limits_and_no_caller_hash_key_exits_2() {
    let mut f = tempfile::Builder::new()
        .suffix(".toml")
        .tempfile()
        .expect("temp");
    std::io::Write::write_all(&mut f, b"[limits]\nbackend = \"redis\"\n").expect("write");
    let out = Command::new(binary())
        .current_dir(repo_root())
        .env_remove("PROMPTGATE_CALLER_HASH_KEY")
        .args(["run", "--config"])
        .arg(f.path())
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("limits.backend") && stderr.contains("$PROMPTGATE_CALLER_HASH_KEY"),
        "{stderr}"
    );
}

#[tokio::test]
async fn passthrough_callers_are_counted_under_their_own_hash_tag_with_a_shared_hash_key() {
    let redis = Redis::start();
    let mock = MockUpstream::start().await;
    let gw = Gateway::start_with(
        GatewayOpts::new(mock.url())
            .env("PROMPTGATE_CALLER_HASH_KEY", "fleet-wide-secret")
            .toml(&format!(
                "[limits]\nwindow_seconds = 3600\nbackend = \"redis\"\n\
                 [limits.per_caller]\nrequests_per_minute = 1\n\
                 [limits.redis]\nurl = \"{}\"\ntimeout_ms = 1000\non_unavailable = \"deny\"\n",
                redis.url()
            )),
    )
    .await;
    backend_up(&gw, 1.0).await;
    assert_eq!(chat_as(&gw, "sk-client-one", &[]).await.status(), 200);
    assert_eq!(chat_as(&gw, "sk-client-one", &[]).await.status(), 429);
    let counter = key_with(&redis, "{promptgate:c:h:");
    assert!(counter.contains("}:req:c:h:"), "{counter}");
    assert!(redis.keys().iter().all(|k| !k.contains("sk-client-one")));
}

#[tokio::test]
async fn redis_down_at_start_is_decided_by_on_unavailable() {
    // Nothing listens on this port.
    let dead = format!("redis://127.0.0.1:{}/0", free_port());
    let mock = MockUpstream::start().await;
    let keys = KeysFile::new(&key_entry(
        "beta",
        "pgk_beta_secret",
        "limits = { requests_per_minute = 2 }",
    ));
    // (mode, the statuses of three requests)
    let cases: [(&str, [u16; 3]); 3] = [
        // Each gateway counts on its own with the same quotas.
        ("local", [200, 200, 429]),
        ("allow", [200, 200, 200]),
        ("deny", [503, 503, 503]),
    ];
    for (mode, want) in cases {
        let gw = redis_gateway(&mock, &keys, &dead, mode).await;
        let mut got = Vec::new();
        for _ in 0..3 {
            let r = chat_as(&gw, "pgk_beta_secret", &[]).await;
            if r.status() == 503 {
                assert_eq!(header(&r, "x-should-retry"), Some("true"), "{mode}");
                assert_eq!(header(&r, "retry-after"), Some("1"), "{mode}");
                let v: Value = r.json().await.expect("json");
                assert_eq!(v["error"]["code"], "limits_unavailable", "{mode}");
                assert_eq!(v["error"]["type"], "server_error", "{mode}");
                got.push(503);
            } else {
                got.push(r.status().as_u16());
            }
        }
        assert_eq!(got, want, "{mode}");
        assert_eq!(
            gw.metric("promptgate_limits_backend_up").await,
            Some(0.0),
            "{mode}"
        );
        assert_eq!(
            gw.metric(&format!(
                "promptgate_limits_fallback_decisions_total{{mode=\"{mode}\"}}"
            ))
            .await,
            Some(3.0),
            "{mode}"
        );
    }
}

#[tokio::test]
async fn redis_stopped_mid_run_falls_back_and_is_used_again_once_it_returns() {
    let mut redis = Redis::start();
    let mock = MockUpstream::start().await;
    let keys = KeysFile::new(&key_entry(
        "gamma",
        "pgk_gamma_secret",
        "limits = { requests_per_minute = 100 }",
    ));
    let gw = redis_gateway(&mock, &keys, &redis.url(), "deny").await;
    backend_up(&gw, 1.0).await;
    assert_eq!(chat_as(&gw, "pgk_gamma_secret", &[]).await.status(), 200);

    redis.stop();
    let r = chat_as(&gw, "pgk_gamma_secret", &[]).await;
    assert_eq!(r.status(), 503, "deny while Redis is gone");
    assert_eq!(gw.metric("promptgate_limits_backend_up").await, Some(0.0));
    let errors = redis_errors(&gw).await;
    assert!(errors >= 1.0, "the failed call is counted");
    // While down, requests do not try Redis: no more errors, one more fallback decision each.
    let r = chat_as(&gw, "pgk_gamma_secret", &[]).await;
    assert_eq!(r.status(), 503);
    assert_eq!(
        gw.metric("promptgate_limits_fallback_decisions_total{mode=\"deny\"}")
            .await,
        Some(2.0)
    );
    let log = gw.stderr();
    assert_eq!(
        log.matches("limits: Redis unavailable").count(),
        1,
        "one line per change of state: {log}"
    );

    redis.restart();
    backend_up(&gw, 1.0).await;
    let r = chat_as(&gw, "pgk_gamma_secret", &[]).await;
    assert_eq!(r.status(), 200, "used again, no gateway restart");
    // A fresh server: the request counted there is the only one.
    let counter = key_with(&redis, "{promptgate:t:team-a}:req:k:gamma:");
    assert_eq!(redis.cmd::<String>(&["GET", &counter]), "1");
    assert!(gw.stderr().contains("limits: Redis available"));
}

#[tokio::test]
async fn a_flushed_script_is_loaded_again_transparently() {
    let redis = Redis::start();
    let mock = MockUpstream::start().await;
    let keys = KeysFile::new(&key_entry(
        "delta",
        "pgk_delta_secret",
        "limits = { requests_per_minute = 100 }",
    ));
    let gw = redis_gateway(&mock, &keys, &redis.url(), "deny").await;
    backend_up(&gw, 1.0).await;
    assert_eq!(chat_as(&gw, "pgk_delta_secret", &[]).await.status(), 200);
    let _: String = redis.cmd(&["SCRIPT", "FLUSH"]);
    let r = chat_as(&gw, "pgk_delta_secret", &[]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-ratelimit-remaining-requests"), Some("98"));
    let counter = key_with(&redis, "{promptgate:t:team-a}:req:k:delta:");
    assert_eq!(redis.cmd::<String>(&["GET", &counter]), "2");
    assert_eq!(redis_errors(&gw).await, 0.0);
    assert_eq!(gw.metric("promptgate_limits_backend_up").await, Some(1.0));
}

#[tokio::test]
async fn a_permit_is_a_lease_renewed_while_its_stream_lives_and_released_when_it_ends() {
    let redis = Redis::start();
    let mock = MockUpstream::start().await;
    let keys = KeysFile::new(&key_entry(
        "eps",
        "pgk_eps_secret",
        "limits = { max_concurrent = 1 }",
    ));
    let gw = redis_gateway(&mock, &keys, &redis.url(), "deny").await;
    backend_up(&gw, 1.0).await;
    let body = serde_json::json!({"model": "gpt-4o-mini", "stream": true, "messages": [{"role": "user", "content": "stream please"}]})
        .to_string()
        .into_bytes();
    let held = post(
        &gw,
        "/v1/chat/completions",
        body,
        &[
            ("authorization", "Bearer pgk_eps_secret"),
            ("x-mock-hold", "lease"),
        ],
    )
    .await;
    assert_eq!(held.status(), 200);
    let set = key_with(&redis, "{promptgate:t:team-a}:conc:k:eps");
    assert_eq!(redis.cmd::<u64>(&["ZCARD", &set]), 1);
    assert_eq!(chat_as(&gw, "pgk_eps_secret", &[]).await.status(), 429);
    // Past the 2 s lease the stream still holds its permit: it was renewed.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let r = chat_as(&gw, "pgk_eps_secret", &[]).await;
    assert_eq!(
        r.status(),
        429,
        "the living stream's permit outlived its first lease"
    );
    assert_eq!(redis.cmd::<u64>(&["ZCARD", &set]), 1);

    mock.release("lease").await;
    let _ = held.bytes().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while redis.cmd::<u64>(&["ZCARD", &set]) != 0 {
        assert!(Instant::now() < deadline, "the permit was not released");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(chat_as(&gw, "pgk_eps_secret", &[]).await.status(), 200);
}

#[tokio::test]
async fn the_token_estimate_is_settled_in_redis_to_the_reported_usage() {
    let redis = Redis::start();
    let mock = MockUpstream::start().await;
    let keys = KeysFile::new(&key_entry(
        "zeta",
        "pgk_zeta_secret",
        "limits = { tokens_per_minute = 100000 }",
    ));
    let gw = redis_gateway(&mock, &keys, &redis.url(), "deny").await;
    backend_up(&gw, 1.0).await;
    let long = chat_body(&"lorem ipsum dolor sit amet ".repeat(40));
    let r = post(
        &gw,
        "/v1/chat/completions",
        long.into_bytes(),
        &[("authorization", "Bearer pgk_zeta_secret")],
    )
    .await;
    assert_eq!(r.status(), 200);
    let estimated = 100_000
        - header(&r, "x-ratelimit-remaining-tokens")
            .and_then(|v| v.parse::<u64>().ok())
            .expect("remaining tokens");
    let answer: Value = r.json().await.expect("json");
    let used = answer["usage"]["total_tokens"].as_u64().expect("usage");
    assert_ne!(
        estimated, used,
        "the test needs an estimate the usage corrects"
    );
    let counter = key_with(&redis, "{promptgate:t:team-a}:tok:k:zeta:");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let v: String = redis.cmd(&["GET", &counter]);
        if v == used.to_string() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "counter {v}, want the reported {used} (estimated {estimated})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ttl: i64 = redis.cmd(&["PTTL", &counter]);
    assert!(ttl > 0, "the settled counter keeps its expiry");
}

/// The commands clients sent, as `MONITOR` (`redis-cli monitor`) wrote them to `log`: a script's own commands
/// (`[0 lua]`) and the test's (`ZCARD`, `MONITOR`) left out.
fn sent(log: &std::path::Path) -> Vec<String> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter(|l| !l.contains(" lua] "))
        .filter_map(|l| l.split("] \"").nth(1))
        .filter_map(|rest| rest.split('"').next())
        .map(str::to_ascii_uppercase)
        .filter(|c| !["ZCARD", "MONITOR"].contains(&c.as_str()))
        .collect()
}

#[tokio::test]
async fn a_request_with_every_quota_costs_redis_two_commands_its_admission_and_its_end() {
    const N: usize = 6;
    let redis = Redis::start();
    let mock = MockUpstream::start().await;
    let keys = KeysFile::new(&key_entry(
        "eta",
        "pgk_eta_secret",
        "limits = { requests_per_minute = 1000, tokens_per_minute = 1000000, max_concurrent = 10 }",
    ));
    // One connection, and a lease no renewal pass comes round for while the test runs.
    let gw = Gateway::start_with(GatewayOpts::new(mock.url()).toml(&format!(
        "[auth]\nmode = \"gateway_keys\"\nkeys_file = {:?}\n\
         [limits]\nwindow_seconds = 3600\nbackend = \"redis\"\n\
         [limits.redis]\nurl = \"{}\"\ntimeout_ms = 1000\nlease_ms = 600000\npool_size = 1\non_unavailable = \"deny\"\n",
        keys.path.display().to_string(),
        redis.url()
    )))
    .await;
    backend_up(&gw, 1.0).await;
    let long = chat_body(&"lorem ipsum dolor sit amet ".repeat(40));
    let send = || {
        post(
            &gw,
            "/v1/chat/completions",
            long.clone().into_bytes(),
            &[("authorization", "Bearer pgk_eta_secret")],
        )
    };
    let set = "{promptgate:t:team-a}:conc:k:eta";
    let released = || async {
        let deadline = Instant::now() + Duration::from_secs(5);
        while redis.cmd::<u64>(&["ZCARD", set]) != 0 {
            assert!(Instant::now() < deadline, "a permit was not released");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    // One request first connects and loads both scripts; then every command is logged, from zero.
    assert_eq!(send().await.status(), 200);
    released().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("monitor.log");
    let mut monitor = Command::new("redis-cli")
        .args(["-u", &redis.url(), "monitor"])
        .stdout(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("redis-cli monitor");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .starts_with("OK")
    {
        assert!(Instant::now() < deadline, "MONITOR did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    for _ in 0..N {
        let r = send().await;
        assert_eq!(r.status(), 200);
        let remaining = header(&r, "x-ratelimit-remaining-tokens").map(str::to_owned);
        let answer: Value = r.json().await.expect("json");
        let used = answer["usage"]["total_tokens"].as_u64().expect("usage");
        assert!(
            remaining.is_some() && used > 0,
            "every request has tokens to settle"
        );
        released().await;
    }
    // The permit went back in the same call as the settlement, so once it is gone both were sent.
    let want = vec!["EVALSHA".to_owned(); 2 * N];
    let deadline = Instant::now() + Duration::from_secs(5);
    while sent(&log).len() < want.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = monitor.kill();
    let _ = monitor.wait();
    let mut got = sent(&log);
    got.sort();
    assert_eq!(got, want, "one admission and one end each, nothing else");
    assert_eq!(redis_errors(&gw).await, 0.0);
}
