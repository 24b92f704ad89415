//! The official `openai` Node package (pinned in `tests/node/package-lock.json`, installed by `.ci/setup`)
//! pointed at the gateway: what half the applications behind it see. Each script in `tests/node` prints one
//! JSON object; its custom `fetch` counts the HTTP requests the SDK sent, retries included.

use serde_json::Value;

use crate::keys_limits::keys_gateway;
use crate::sdk::run_client;
use crate::support::{key_entry, Gateway, KeysFile, MockUpstream};

/// Runs `tests/node/<script>` with node against the gateway.
async fn run_node_script(script: &str, gw: &Gateway, env: &[(&str, &str)]) -> Value {
    run_client(
        "node",
        &format!("node/{script}"),
        "is node installed and tests/node/node_modules there? `bash .ci/setup` runs npm ci",
        gw,
        env,
    )
    .await
}

#[tokio::test]
async fn node_sdk_plain_and_streamed_chat_through_the_gateway() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock.url()).await;
    let content = "Pingora says hello to Node through promptgate, streamed in pieces.";
    let out = run_node_script("sdk_chat.mjs", &gw, &[("MOCK_CONTENT", content)]).await;
    assert_eq!(out["plain"], content, "{out}");
    assert_eq!(out["stream"], content, "{out}");
    assert!(
        out["stream_events"].as_u64().is_some_and(|n| n >= 2),
        "{out}"
    );
    // The gateway's request id reaches the SDK (`x-request-id`).
    assert!(
        out["plain_request_id"]
            .as_str()
            .is_some_and(|id| id.len() == 32),
        "{out}"
    );
    assert_eq!(out["requests"], 2, "{out}");
    let got = mock.received().await;
    assert_eq!(got.len(), 2, "one request each, no retries");
    let second: Value = serde_json::from_str(got[1]["body"].as_str().expect("body")).expect("json");
    assert_eq!(second["stream"], true);
}

#[tokio::test]
async fn node_sdk_raises_one_conflict_error_and_does_not_retry_a_block() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock.url()).await;
    let out = run_node_script("sdk_policy.mjs", &gw, &[]).await;
    assert_eq!(out["blocked"], true, "ConflictError: {out}");
    assert_eq!(out["status"], 409);
    assert_eq!(out["code"], "policy_blocked");
    assert_eq!(out["policy"], "secret.aws_access_key_id");
    // The SDK retries a 409 by default; the gateway's `x-should-retry: false` stops it.
    assert_eq!(out["requests"], 1, "{out}");
    let msg = out["message"].as_str().expect("message");
    assert!(msg.contains("secret.aws_access_key_id"), "{msg}");
    assert!(!msg.contains("AKIAIOSFODNN7EXAMPLE"), "{msg}");
    assert!(
        mock.received().await.is_empty(),
        "nothing reached the upstream"
    );
}

#[tokio::test]
async fn node_sdk_raises_api_error_on_a_mid_stream_block() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock.url()).await;
    let content = "Sure. The deploy key is AKIAIOSFODNN7EXAMPLE and it expires soon.";
    let out = run_node_script("sdk_stream_block.mjs", &gw, &[("MOCK_CONTENT", content)]).await;
    assert_eq!(out["is_api_error"], true, "{out}");
    let msg = out["message"].as_str().expect("message");
    assert!(
        msg.contains("Response blocked by policy 'secret.aws_access_key_id'"),
        "{msg}"
    );
    let received = out["received"].as_str().expect("received");
    assert!(
        "Sure. The deploy key is ".starts_with(received),
        "only text before the key arrived: {received:?}"
    );
    assert!(!received.contains("AKIA"));
    assert_eq!(out["requests"], 1, "{out}");
}

#[tokio::test]
async fn node_sdk_waits_retry_after_ms_and_succeeds() {
    let mock = MockUpstream::start().await;
    let keys = KeysFile::new(&key_entry(
        "node",
        "pgk_node",
        "limits = { requests_per_minute = 1 }",
    ));
    // A five-second window stands in for the minute: long enough that the SDK's own backoff (about 0.5 s,
    // then 1 s) would spend both retries inside it, so only waiting `retry-after-ms` succeeds.
    let gw = keys_gateway(&mock, &keys, "[limits]\nwindow_seconds = 5").await;
    let out = run_node_script("sdk_rate_limit.mjs", &gw, &[("PROMPTGATE_KEY", "pgk_node")]).await;
    assert_eq!(out["first_requests"], 1, "{out}");
    assert!(out["second"].is_string(), "{out}");
    // At least one 429 before the success, and the success within the SDK's two retries.
    let second = out["second_requests"].as_u64().expect("count");
    assert!((2..=3).contains(&second), "{out}");
    let limited = gw
        .metric("promptgate_rate_limited_total{limit=\"requests\",scope=\"key\"}")
        .await
        .expect("metric");
    assert_eq!(
        limited as u64,
        second - 1,
        "every attempt but the last was a 429"
    );
    assert_eq!(mock.received().await.len(), 2);
}

#[tokio::test]
async fn node_sdk_raises_authentication_error_for_an_unknown_gateway_key() {
    let mock = MockUpstream::start().await;
    let keys = KeysFile::new(&key_entry("node", "pgk_node", ""));
    let gw = keys_gateway(&mock, &keys, "").await;
    let out = run_node_script("sdk_auth.mjs", &gw, &[("PROMPTGATE_KEY", "pgk_not_a_key")]).await;
    assert_eq!(out["authentication_error"], true, "{out}");
    assert_eq!(out["status"], 401);
    assert_eq!(out["code"], "invalid_api_key");
    assert_eq!(out["requests"], 1, "a 401 is not retried: {out}");
    assert!(mock.received().await.is_empty());
}
