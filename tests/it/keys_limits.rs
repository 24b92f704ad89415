//! Identity, scope and limits, seen from a client: gateway keys from a hot-reloaded keys file, passthrough
//! callers, 401 / 403 / 429 answers with their headers, concurrency permits released on every ending, CORS.

use std::time::Duration;

use serde_json::Value;

use crate::sdk::run_sdk_script;
use crate::support::{
    chat_as, chat_body, header, key_entry, post, recorded_header, Gateway, GatewayOpts, KeysFile,
    MockUpstream,
};

const PROVIDER_KEY: &str = "sk-provider-test-0123456789";

/// A gateway in `gateway_keys` mode with `keys` (and `extra` TOML), forwarding to `mock`.
pub(crate) async fn keys_gateway(mock: &MockUpstream, keys: &KeysFile, extra: &str) -> Gateway {
    Gateway::start_with(
        GatewayOpts::new(mock.url())
            .toml(&format!(
                "[auth]\nmode = \"gateway_keys\"\nkeys_file = {:?}\n{extra}",
                keys.path.display().to_string()
            ))
            .env("PG_TEST_PROVIDER_KEY", PROVIDER_KEY),
    )
    .await
}

/// A mock upstream and a gateway whose keys file holds one key.
async fn with_one_key(id: &str, secret: &str, extra: &str) -> (MockUpstream, KeysFile, Gateway) {
    let mock = MockUpstream::start().await;
    let keys = KeysFile::new(&key_entry(id, secret, extra));
    let gw = keys_gateway(&mock, &keys, "").await;
    (mock, keys, gw)
}

fn bearer(secret: &str) -> String {
    format!("Bearer {secret}")
}

#[tokio::test]
async fn the_gateway_key_stays_and_the_provider_key_goes_upstream() {
    let mock = MockUpstream::start().await;
    let secret = "pgk_swap_test_secret";
    let keys = KeysFile::new(&key_entry(
        "app",
        secret,
        "upstream_key_env = \"PG_TEST_PROVIDER_KEY\"",
    ));
    let gw = keys_gateway(&mock, &keys, "").await;
    let r = chat_as(&gw, secret, &[]).await;
    assert_eq!(r.status(), 200);
    // The Azure-style header is a credential too.
    let r = post(
        &gw,
        "/v1/chat/completions",
        chat_body("Say hello").into_bytes(),
        &[("api-key", secret)],
    )
    .await;
    assert_eq!(r.status(), 200);
    let received = mock.received().await;
    assert_eq!(received.len(), 2);
    for rec in &received {
        assert_eq!(
            recorded_header(rec, "authorization"),
            Some(format!("Bearer {PROVIDER_KEY}").as_str())
        );
        assert_eq!(recorded_header(rec, "api-key"), None);
        assert!(
            !rec.to_string().contains(secret),
            "the gateway key reached the upstream: {rec}"
        );
    }
    assert!(!gw.stderr().contains(secret) && !gw.stderr().contains(PROVIDER_KEY));
}

#[tokio::test]
async fn missing_unknown_expired_and_disabled_keys_get_one_identical_401() {
    let mock = MockUpstream::start().await;
    let keys = KeysFile::new(&format!(
        "{}{}{}",
        key_entry("good", "pgk_good", ""),
        key_entry("old", "pgk_expired", "expires_at = 2020-01-01T00:00:00Z"),
        key_entry("off", "pgk_disabled", "disabled = true"),
    ));
    let gw = keys_gateway(&mock, &keys, "").await;
    let mut bodies = Vec::new();
    for auth in [
        None,
        Some("Bearer pgk_unknown"),
        Some("Bearer pgk_expired"),
        Some("Bearer pgk_disabled"),
        Some("Basic cGdrX2dvb2Q="),
    ] {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
        let r = post(
            &gw,
            "/v1/chat/completions",
            chat_body("hi").into_bytes(),
            &headers,
        )
        .await;
        assert_eq!(r.status(), 401, "{auth:?}");
        assert_eq!(header(&r, "x-should-retry"), Some("false"));
        bodies.push(r.bytes().await.expect("body"));
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]), "{bodies:?}");
    let v: Value = serde_json::from_slice(&bodies[0]).expect("json");
    assert_eq!(v["error"]["code"], "invalid_api_key");
    assert!(v["error"]["param"].is_null() && v["error"]["message"].is_string());
    assert!(
        mock.received().await.is_empty(),
        "the upstream was contacted"
    );
    assert_eq!(chat_as(&gw, "pgk_good", &[]).await.status(), 200);
    assert_eq!(
        gw.metric("promptgate_auth_refused_total{reason=\"unauthenticated\"}")
            .await,
        Some(5.0)
    );
}

#[tokio::test]
async fn a_model_outside_the_keys_scope_is_403_and_never_forwarded() {
    let (mock, _keys, gw) = with_one_key(
        "mini-only",
        "pgk_scoped",
        "allowed_models = [\"gpt-4o-mini\", \"o1-*\"]",
    )
    .await;
    let auth = bearer("pgk_scoped");
    let ask = |model: Option<&str>| {
        let mut body = serde_json::json!({"messages": [{"role": "user", "content": "hi"}]});
        if let Some(m) = model {
            body["model"] = m.into();
        }
        body.to_string().into_bytes()
    };
    for (model, code) in [
        (Some("gpt-4o"), "model_not_allowed"),
        (None, "model_required"),
    ] {
        let r = post(
            &gw,
            "/v1/chat/completions",
            ask(model),
            &[("authorization", &auth)],
        )
        .await;
        assert_eq!(r.status(), 403, "{model:?}");
        assert_eq!(header(&r, "x-should-retry"), Some("false"));
        let v: Value = r.json().await.expect("json");
        assert_eq!(v["error"]["code"], code);
    }
    // Scope comes before content: a blocked prompt to a forbidden model is still a 403.
    let secret_prompt = serde_json::json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "AKIAIOSFODNN7EXAMPLE"}]});
    let r = post(
        &gw,
        "/v1/chat/completions",
        secret_prompt.to_string().into_bytes(),
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(r.status(), 403);
    assert!(
        mock.received().await.is_empty(),
        "the upstream was contacted"
    );
    for model in ["gpt-4o-mini", "o1-preview"] {
        let r = post(
            &gw,
            "/v1/chat/completions",
            ask(Some(model)),
            &[("authorization", &auth)],
        )
        .await;
        assert_eq!(r.status(), 200, "{model}");
    }
    assert_eq!(mock.received().await.len(), 2);
}

#[tokio::test]
async fn a_burst_over_the_rate_gets_429_with_every_header_and_other_keys_go_on() {
    let mock = MockUpstream::start().await;
    let others: Vec<String> = (0..40).map(|i| format!("pgk_other_{i}")).collect();
    let mut file = key_entry(
        "bursty",
        "pgk_bursty",
        "limits = { requests_per_minute = 3 }",
    );
    for (i, s) in others.iter().enumerate() {
        file.push_str(&key_entry(
            &format!("other-{i}"),
            s,
            "limits = { requests_per_minute = 3 }",
        ));
    }
    let keys = KeysFile::new(&file);
    let gw = keys_gateway(&mock, &keys, "").await;

    let mut remaining = Vec::new();
    for _ in 0..3 {
        let r = chat_as(&gw, "pgk_bursty", &[]).await;
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "x-ratelimit-limit-requests"), Some("3"));
        assert_eq!(header(&r, "x-ratelimit-limit"), Some("3"));
        remaining.push(header(&r, "x-ratelimit-remaining-requests").map(str::to_string));
    }
    assert_eq!(
        remaining,
        [Some("2"), Some("1"), Some("0")].map(|s| s.map(String::from))
    );
    for _ in 0..2 {
        let r = chat_as(&gw, "pgk_bursty", &[]).await;
        assert_eq!(r.status(), 429);
        let retry_after: u64 = header(&r, "retry-after")
            .and_then(|v| v.parse().ok())
            .expect("retry-after");
        let retry_ms: u64 = header(&r, "retry-after-ms")
            .and_then(|v| v.parse().ok())
            .expect("retry-after-ms");
        assert!((1..=60).contains(&retry_after), "{retry_after}");
        assert!(retry_ms > 0 && retry_ms <= 60_000 && retry_ms.div_ceil(1000) == retry_after);
        assert_eq!(header(&r, "x-ratelimit-remaining-requests"), Some("0"));
        assert_eq!(header(&r, "x-ratelimit-remaining"), Some("0"));
        assert!(header(&r, "x-ratelimit-reset-requests").is_some_and(|v| v.ends_with('s')));
        let reset: u64 = header(&r, "x-ratelimit-reset")
            .and_then(|v| v.parse().ok())
            .expect("x-ratelimit-reset");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        assert!(reset >= now && reset <= now + 61, "{reset} vs {now}");
        let v: Value = r.json().await.expect("json");
        assert_eq!(v["error"]["type"], "rate_limit_exceeded");
        assert_eq!(v["error"]["code"], "rate_limit_exceeded");
        assert!(v["error"]["param"].is_null());
    }
    // Forty other callers at once: none is limited by the first one's burst.
    let sends = others.iter().map(|s| chat_as(&gw, s, &[]));
    for r in futures_util::future::join_all(sends).await {
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "x-ratelimit-remaining-requests"), Some("2"));
    }
    assert_eq!(mock.received().await.len(), 43);
    assert_eq!(
        gw.metric_eventually(
            "promptgate_rate_limited_total{limit=\"requests\",scope=\"key\"}",
            2.0
        )
        .await,
        Some(2.0)
    );
}

#[tokio::test]
async fn passthrough_callers_are_told_apart_by_their_own_credential() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start_with(
        GatewayOpts::new(mock.url()).toml("[limits.per_caller]\nrequests_per_minute = 2"),
    )
    .await;
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(chat_as(&gw, "sk-caller-a", &[]).await.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 429]);
    for i in 0..10 {
        let r = chat_as(&gw, &format!("sk-caller-{i}"), &[]).await;
        assert_eq!(r.status(), 200);
    }
    // Passthrough: each caller's own credential goes upstream as it came.
    let received = mock.received().await;
    assert_eq!(received.len(), 12);
    assert_eq!(
        recorded_header(&received[11], "authorization"),
        Some("Bearer sk-caller-9")
    );
}

#[tokio::test]
async fn concurrent_streams_past_the_limit_get_429_and_every_ending_releases_its_permit() {
    let (mock, _keys, gw) = with_one_key(
        "streamer",
        "pgk_streamer",
        "limits = { max_concurrent = 3 }",
    )
    .await;
    let stream_body = |text: &str| {
        serde_json::json!({"model": "gpt-4o-mini", "stream": true, "messages": [{"role": "user", "content": text}]})
            .to_string()
            .into_bytes()
    };
    let auth = bearer("pgk_streamer");
    let open = |extra: Vec<(&'static str, String)>| {
        let mut headers: Vec<(&str, &str)> = vec![("authorization", auth.as_str())];
        headers.extend(extra.iter().map(|(k, v)| (*k, v.as_str())));
        let body = stream_body("stream please");
        let headers: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let gw_url = gw.url("/v1/chat/completions");
        async move {
            let mut req = reqwest::Client::new()
                .post(gw_url)
                .header("content-type", "application/json")
                .body(body);
            for (k, v) in &headers {
                req = req.header(k, v);
            }
            req.send().await.expect("send")
        }
    };
    // Three streams held open by the upstream: one the client will abort, one the upstream will reset, one
    // that will be blocked mid-stream.
    let aborted = open(vec![("x-mock-hold", "abort".into())]).await;
    let mut reset = open(vec![
        ("x-mock-hold", "reset".into()),
        ("x-mock-reset-after", "2".into()),
        ("x-mock-chunks", "6".into()),
    ])
    .await;
    let mut blocked = open(vec![
        ("x-mock-hold", "block".into()),
        (
            "x-mock-content",
            "here is a key: AKIAIOSFODNN7EXAMPLE and more text".into(),
        ),
        ("x-mock-chunks", "4".into()),
    ])
    .await;
    for r in [&aborted, &reset, &blocked] {
        assert_eq!(r.status(), 200);
    }
    assert_eq!(
        gw.metric("promptgate_limit_permits_in_flight").await,
        Some(3.0)
    );
    let extra = open(vec![]).await;
    assert_eq!(extra.status(), 429);
    let v: Value = extra.json().await.expect("json");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("concurrent")),
        "{v}"
    );

    // The client leaves while the upstream is still holding its answer: the permit goes at once.
    drop(aborted);
    assert_eq!(
        gw.metric_eventually("promptgate_limit_permits_in_flight", 2.0)
            .await,
        Some(2.0),
        "the aborted stream kept its permit"
    );
    // The upstream resets mid-stream.
    mock.release("reset").await;
    while let Ok(Some(_)) = reset.chunk().await {}
    assert_eq!(
        gw.metric_eventually("promptgate_limit_permits_in_flight", 1.0)
            .await,
        Some(1.0),
        "the reset stream kept its permit"
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
        gw.metric_eventually("promptgate_limit_permits_in_flight", 0.0)
            .await,
        Some(0.0),
        "the blocked stream kept its permit"
    );
    mock.release("abort").await;
    // The key has its full concurrency again.
    let again = futures_util::future::join_all((0..3).map(|_| open(vec![]))).await;
    for r in again {
        assert_eq!(r.status(), 200);
    }
    assert_eq!(
        gw.metric("promptgate_rate_limited_total{limit=\"concurrency\",scope=\"key\"}")
            .await,
        Some(1.0)
    );
}

#[tokio::test]
async fn token_quota_refuses_large_prompts_and_is_corrected_by_reported_usage() {
    let (mock, _keys, gw) = with_one_key(
        "tokens",
        "pgk_tokens",
        "limits = { tokens_per_minute = 1000 }",
    )
    .await;
    // About 1,250 estimated tokens: more than the whole quota.
    let big = chat_body(&"lorem ipsum dolor sit amet ".repeat(185));
    let r = post(
        &gw,
        "/v1/chat/completions",
        big.into_bytes(),
        &[("authorization", "Bearer pgk_tokens")],
    )
    .await;
    assert_eq!(r.status(), 429);
    assert_eq!(header(&r, "x-ratelimit-limit-tokens"), Some("1000"));
    let v: Value = r.json().await.expect("json");
    assert!(v["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("tokens")));
    assert!(mock.received().await.is_empty());

    let r = chat_as(&gw, "pgk_tokens", &[]).await;
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.expect("json");
    let used = answer["usage"]["total_tokens"].as_u64().expect("usage");
    // Once the answer is settled, the quota reflects the upstream's count, not the estimate.
    let want = (1000 - used).to_string();
    let mut last = None;
    for _ in 0..100 {
        let r = reqwest::Client::new()
            .get(gw.url("/v1/models"))
            .header("authorization", "Bearer pgk_tokens")
            .send()
            .await
            .expect("send");
        last = header(&r, "x-ratelimit-remaining-tokens").map(str::to_string);
        if last.as_deref() == Some(want.as_str()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(last.as_deref(), Some(want.as_str()));
}

#[tokio::test]
async fn cors_preflights_are_answered_from_the_keys_origins_and_never_forwarded() {
    let (mock, _keys, gw) = with_one_key(
        "browser",
        "pgk_browser",
        "allowed_origins = [\"https://app.example.com\"]",
    )
    .await;
    let client = reqwest::Client::new();
    let preflight = |origin: &'static str| {
        client
            .request(reqwest::Method::OPTIONS, gw.url("/v1/chat/completions"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type",
            )
            .send()
    };
    let ok = preflight("https://app.example.com").await.expect("send");
    assert_eq!(ok.status(), 204);
    assert_eq!(
        header(&ok, "access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert!(header(&ok, "vary").is_some_and(|v| v.contains("Origin")));
    assert!(
        header(&ok, "access-control-allow-headers").is_some_and(|v| v.contains("authorization"))
    );
    assert_eq!(header(&ok, "access-control-allow-credentials"), None);
    for origin in ["https://evil.example.com", "null"] {
        let r = preflight(origin).await.expect("send");
        assert_eq!(r.status(), 403, "{origin}");
        assert_eq!(header(&r, "access-control-allow-origin"), None);
    }
    assert!(
        mock.received().await.is_empty(),
        "a preflight was forwarded"
    );

    let r = chat_as(&gw, "pgk_browser", &[("origin", "https://app.example.com")]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert!(header(&r, "access-control-expose-headers").is_some_and(|v| v.contains("x-request-id")));
    let r = chat_as(
        &gw,
        "pgk_browser",
        &[("origin", "https://evil.example.com")],
    )
    .await;
    assert_eq!(r.status(), 403);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["error"]["code"], "origin_not_allowed");
    assert_eq!(mock.received().await.len(), 1);
}

#[tokio::test]
async fn a_keys_edit_is_picked_up_and_a_bad_one_keeps_the_last_good_keys() {
    let mock = MockUpstream::start().await;
    let keys = KeysFile::new(&key_entry("first", "pgk_first", ""));
    let gw = keys_gateway(&mock, &keys, "").await;
    assert_eq!(chat_as(&gw, "pgk_second", &[]).await.status(), 401);

    // A good edit, seen by the file watcher.
    keys.replace(&format!(
        "{}{}",
        key_entry("first", "pgk_first", ""),
        key_entry("second", "pgk_second", "")
    ));
    assert_eq!(
        gw.metric_eventually("promptgate_keys", 2.0).await,
        Some(2.0)
    );
    assert_eq!(chat_as(&gw, "pgk_second", &[]).await.status(), 200);

    // A bad edit: refused, the two keys stay.
    keys.replace(&format!(
        "{}[[key]]\nid = \"broken\"\nsha256 = \"not-hex\"\ntenant = \"t\"\n",
        key_entry("first", "pgk_first", "")
    ));
    let r = gw.reload().await;
    assert_eq!(r.status(), 422);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["keys"]["result"], "error");
    assert!(v["keys"]["errors"].to_string().contains("broken"), "{v}");
    for secret in ["pgk_first", "pgk_second"] {
        assert_eq!(chat_as(&gw, secret, &[]).await.status(), 200, "{secret}");
    }
    assert_eq!(gw.metric("promptgate_keys").await, Some(2.0));
    assert!(gw.stderr().contains("keys reload refused"));
}

#[tokio::test]
async fn the_openai_sdk_waits_retry_after_ms_and_succeeds() {
    let mock = MockUpstream::start().await;
    let keys = KeysFile::new(&key_entry(
        "sdk",
        "pgk_sdk",
        "limits = { requests_per_minute = 1 }",
    ));
    // A two-second window stands in for the minute, so the SDK's wait is short.
    let gw = keys_gateway(&mock, &keys, "[limits]\nwindow_seconds = 2").await;
    let out = run_sdk_script("sdk_rate_limit.py", &gw, &[("PROMPTGATE_KEY", "pgk_sdk")]).await;
    assert_eq!(out["first_retries"], 0, "{out}");
    assert!(out["second"].is_string(), "{out}");
    assert!(
        out["second_retries"].as_u64().is_some_and(|n| n >= 1),
        "{out}"
    );
    assert!(gw
        .metric("promptgate_rate_limited_total{limit=\"requests\",scope=\"key\"}")
        .await
        .is_some_and(|n| n >= 1.0));
    assert_eq!(mock.received().await.len(), 2);
}

#[tokio::test]
async fn keys_new_prints_a_secret_whose_entry_the_gateway_accepts() {
    let out = std::process::Command::new(crate::support::binary())
        .args(["keys", "new", "--id", "cli-key", "--tenant", "team-cli"])
        .output()
        .expect("run");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let secret = text
        .lines()
        .find(|l| l.starts_with("pgk_"))
        .expect("secret line")
        .to_string();
    let entry: String = text
        .lines()
        .skip_while(|l| !l.starts_with("[[key]]"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(!entry.contains(&secret), "the entry holds the secret");
    let mock = MockUpstream::start().await;
    let keys = KeysFile::new(&entry);
    let gw = keys_gateway(&mock, &keys, "").await;
    assert_eq!(chat_as(&gw, &secret, &[]).await.status(), 200);
}
