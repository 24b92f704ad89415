//! Several upstreams at once, seen from outside: requests routed by model (and path) to the right mock, a
//! pool's `model_map` renaming the model in the body it receives, an unroutable model refused with nothing
//! sent, `GET /v1/models` answered from the pools, a pool's provider credential (in `Authorization` or `api-key`), and the fallback pool on a 429
//! or 5xx answer that no byte of has reached the client. Each mock records what it received; the decision
//! events say where each request went and every attempt.

use futures_util::StreamExt;
use promptgate::mock::MockConfig;
use serde_json::{json, Value};

use crate::support::{
    get_json, header, key_entry, post, recorded_header, Gateway, GatewayOpts, KeysFile,
    MockUpstream,
};

/// A gateway configured only by its `[[upstream]]` entries (no `--upstream` flag), auditing into `audit`.
async fn pools_gateway(toml: &str, audit: &std::path::Path) -> Gateway {
    Gateway::start_with(GatewayOpts::no_upstream_flag().toml(&format!(
        "{toml}\n[audit]\ndir = {:?}\n",
        audit.display().to_string()
    )))
    .await
}

fn chat(model: &str, stream: bool) -> Vec<u8> {
    json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi there"}]})
        .to_string()
        .into_bytes()
}

/// The body a mock received, parsed.
fn body_of(rec: &Value) -> Value {
    serde_json::from_str(rec["body"].as_str().expect("body")).expect("json body")
}

/// Events in order of their request ids.
fn event_for<'a>(events: &'a [Value], request_id: &str) -> &'a Value {
    events
        .iter()
        .find(|e| e["request_id"] == request_id)
        .unwrap_or_else(|| panic!("no event for {request_id}"))
}

/// Two pools: `primary` (the default) falling back to `secondary`, and, with `back`, `secondary` falling back
/// to `primary` (a cycle).
async fn fallback_pair(
    primary: &MockUpstream,
    secondary: &MockUpstream,
    back: bool,
    audit: &std::path::Path,
) -> Gateway {
    let back = if back { "fallback = \"primary\"" } else { "" };
    pools_gateway(
        &format!(
            r#"
[[upstream]]
name = "primary"
url = "{}"
default = true
fallback = "secondary"

[[upstream]]
name = "secondary"
url = "{}"
models = ["local-model"]
{back}
"#,
            primary.url(),
            secondary.url()
        ),
        audit,
    )
    .await
}

async fn wait_events(dir: &std::path::Path, n: usize) -> Vec<Value> {
    crate::support::wait_file_events(dir, n).await
}

#[tokio::test]
async fn requests_land_on_the_pool_that_serves_their_model_and_unknown_models_are_404_with_nothing_sent(
) {
    let openai = MockUpstream::start().await;
    let vllm = MockUpstream::start().await;
    let audit = tempfile::tempdir().expect("tempdir");
    let gw = pools_gateway(
        &format!(
            r#"
[[upstream]]
name = "openai"
url = "{}"
models = ["gpt-4o", "gpt-*"]
paths = ["/v1/files"]

[[upstream]]
name = "vllm"
url = ["{}"]
models = ["mistral-*"]
model_map = {{ "llama-3-70b" = "meta-llama/Meta-Llama-3-70B-Instruct" }}
"#,
            openai.url(),
            vllm.url()
        ),
        audit.path(),
    )
    .await;
    let mut ids = Vec::new();
    for (model, stream) in [
        ("gpt-4o", false),
        ("gpt-4o-mini", true),
        ("llama-3-70b", false),
        ("llama-3-70b", true),
        ("mistral-7b", false),
    ] {
        let r = post(&gw, "/v1/chat/completions", chat(model, stream), &[]).await;
        assert_eq!(r.status(), 200, "{model}");
        ids.push(header(&r, "x-request-id").expect("id").to_string());
        // Read it whole (a stream ends before its event is written).
        r.bytes().await.expect("body");
    }
    let to_openai = openai.received().await;
    let to_vllm = vllm.received().await;
    let models = |recs: &[Value]| -> Vec<String> {
        recs.iter()
            .map(|r| body_of(r)["model"].as_str().expect("model").to_string())
            .collect()
    };
    assert_eq!(models(&to_openai), ["gpt-4o", "gpt-4o-mini"]);
    // The vLLM pool knows llama by its own name: the body it receives says so, the rest is as sent.
    assert_eq!(
        models(&to_vllm),
        [
            "meta-llama/Meta-Llama-3-70B-Instruct",
            "meta-llama/Meta-Llama-3-70B-Instruct",
            "mistral-7b"
        ]
    );
    let renamed = body_of(&to_vllm[0]);
    assert_eq!(renamed["messages"][0]["content"], "hi there");
    assert_eq!(body_of(&to_vllm[1])["stream"], true);

    // A path a pool serves, with no model: routed by the path.
    let files = reqwest::get(gw.url("/v1/files")).await.expect("files");
    assert_eq!(
        header(&files, "x-mock"),
        Some("1"),
        "answered by the upstream"
    );
    assert_eq!(openai.received().await.len(), 3);
    assert_eq!(openai.received().await[2]["path"], "/v1/files");

    // No pool serves the model and none is the default: 404 model_not_found, neither upstream touched.
    for (model, path) in [
        ("claude-3-opus", "/v1/chat/completions"),
        ("text-embedding-3-small", "/v1/embeddings"),
    ] {
        let body = json!({"model": model, "messages": [], "input": "x"}).to_string();
        let r = post(&gw, path, body.into_bytes(), &[]).await;
        assert_eq!(r.status(), 404, "{model}");
        assert_eq!(header(&r, "x-should-retry"), Some("false"));
        let err: Value = r.json().await.expect("json");
        assert_eq!(err["error"]["code"], "model_not_found");
        assert!(err["error"]["message"]
            .as_str()
            .expect("message")
            .contains(model));
    }
    let batches = reqwest::get(gw.url("/v1/batches")).await.expect("batches");
    assert_eq!(batches.status(), 404, "no model, no path, no default");
    assert_eq!(header(&batches, "x-mock"), None, "answered by the gateway");
    assert_eq!(openai.received().await.len(), 3);
    assert_eq!(vllm.received().await.len(), 3);

    // The models the pools serve, from the configuration: exact names and mapped names, not patterns.
    let client = reqwest::Client::new();
    let list = get_json(&client, &gw.url("/v1/models")).await;
    let listed: Vec<(&str, &str)> = list["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|m| {
            (
                m["id"].as_str().expect("id"),
                m["owned_by"].as_str().expect("owner"),
            )
        })
        .collect();
    assert_eq!(listed, [("gpt-4o", "openai"), ("llama-3-70b", "vllm")]);
    assert_eq!(list["object"], "list");
    assert_eq!(openai.received().await.len(), 3, "answered by the gateway");

    // The admin view lists every pool with its endpoints and whether each gets traffic.
    let health = get_json(&client, &gw.admin_url("/healthz")).await;
    assert_eq!(health["upstreams"][0]["name"], "openai");
    assert_eq!(
        health["upstreams"][1]["endpoints"],
        json!([{"address": vllm.addr.to_string(), "ready": true}])
    );

    // Each decision event names the pool; the metric counts per pool.
    let events = wait_events(audit.path(), 9).await;
    let pools: Vec<&str> = ids
        .iter()
        .map(|id| {
            event_for(&events, id)["upstream"]
                .as_str()
                .expect("upstream")
        })
        .collect();
    assert_eq!(pools, ["openai", "openai", "vllm", "vllm", "vllm"]);
    let e = event_for(&events, &ids[2]);
    assert_eq!(e["attempts"].as_array().expect("attempts").len(), 1);
    assert_eq!(e["attempts"][0]["upstream"], "vllm");
    assert_eq!(e["attempts"][0]["status"], 200);
    assert_eq!(
        e["attempts"][0]["endpoint"],
        vllm.addr.to_string(),
        "the endpoint that answered"
    );
    assert_eq!(
        gw.metric("promptgate_upstream_requests_total{upstream=\"vllm\"}")
            .await,
        Some(3.0)
    );
    assert_eq!(
        gw.metric("promptgate_upstream_requests_total{upstream=\"openai\"}")
            .await,
        Some(3.0)
    );
}

#[tokio::test]
async fn a_pools_credential_goes_upstream_unless_the_key_names_its_own() {
    let openai = MockUpstream::start().await;
    let azure = MockUpstream::start().await;
    let keys = KeysFile::new(&format!(
        "{}{}{}",
        key_entry("own", "pgk_own_secret", "upstream_key_env = \"PG_KEY_OWN\""),
        key_entry("plain", "pgk_plain_secret", ""),
        key_entry(
            "scoped",
            "pgk_scoped_secret",
            "allowed_models = [\"gpt-4o\", \"gpt-4o-*\"]"
        )
    ));
    let audit = tempfile::tempdir().expect("tempdir");
    let gw = Gateway::start_with(
        GatewayOpts::no_upstream_flag()
            .toml(&format!(
                r#"
[[upstream]]
name = "openai"
url = "{}"
default = true
key_env = "PG_POOL_OPENAI"

[[upstream]]
name = "azure"
url = "{}"
models = ["gpt-4o", "o3-mini"]
key_env = "PG_POOL_AZURE"
key_header = "api-key"

[auth]
mode = "gateway_keys"
keys_file = {:?}
[audit]
dir = {:?}
"#,
                openai.url(),
                azure.url(),
                keys.path.display().to_string(),
                audit.path().display().to_string()
            ))
            .env("PG_KEY_OWN", "sk-own-key")
            .env("PG_POOL_OPENAI", "sk-pool-openai")
            .env("PG_POOL_AZURE", "sk-pool-azure"),
    )
    .await;
    for (secret, model) in [
        ("pgk_plain_secret", "gpt-4o"),
        ("pgk_plain_secret", "gpt-3.5-turbo"),
        ("pgk_own_secret", "gpt-4o"),
    ] {
        let r = post(
            &gw,
            "/v1/chat/completions",
            chat(model, false),
            &[("authorization", &format!("Bearer {secret}"))],
        )
        .await;
        assert_eq!(r.status(), 200, "{secret} {model}");
    }
    let auth = |recs: Vec<Value>| -> Vec<String> {
        recs.iter()
            .map(|r| {
                recorded_header(r, "authorization")
                    .expect("authorization")
                    .to_string()
            })
            .collect()
    };
    // The Azure-style pool reads its key from `api-key`: the pool's, or the key entry's own, goes there, and
    // no `Authorization` goes with it.
    let to_azure = azure.received().await;
    let api_keys: Vec<&str> = to_azure
        .iter()
        .map(|r| recorded_header(r, "api-key").expect("api-key"))
        .collect();
    assert_eq!(api_keys, ["sk-pool-azure", "sk-own-key"]);
    assert!(to_azure
        .iter()
        .all(|r| recorded_header(r, "authorization").is_none()));
    assert_eq!(auth(openai.received().await), ["Bearer sk-pool-openai"]);

    // The models list shows a key only the models it may use.
    let list = |secret: &'static str| {
        let gw = &gw;
        async move {
            let v: Value = reqwest::Client::new()
                .get(gw.url("/v1/models"))
                .header("authorization", format!("Bearer {secret}"))
                .send()
                .await
                .expect("models")
                .json()
                .await
                .expect("json");
            v["data"]
                .as_array()
                .expect("data")
                .iter()
                .map(|m| m["id"].as_str().expect("id").to_string())
                .collect::<Vec<_>>()
        }
    };
    // The default pool's upstream lists its own models (the mock: `mock-gpt`) to the health check, which
    // carries the pool's key: the list learns them once a check has answered.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut plain = list("pgk_plain_secret").await;
    while plain.len() < 3 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        plain = list("pgk_plain_secret").await;
    }
    assert_eq!(plain, ["gpt-4o", "mock-gpt", "o3-mini"]);
    assert_eq!(list("pgk_scoped_secret").await, ["gpt-4o"]);
    let models = get_json(&reqwest::Client::new(), &gw.url("/v1/models")).await;
    assert_eq!(
        models["error"]["code"], "invalid_api_key",
        "no key, no list"
    );
}

#[tokio::test]
async fn a_429_or_5xx_goes_to_the_fallback_pool_before_any_byte_reaches_the_client() {
    // The primary is up but refuses everything (429 to its health checks too: it is up, so it stays in).
    let primary = MockUpstream::start_with(MockConfig {
        status: Some(429),
        ..MockConfig::default()
    })
    .await;
    let secondary = MockUpstream::start().await;
    let audit = tempfile::tempdir().expect("tempdir");
    let gw = fallback_pair(&primary, &secondary, false, audit.path()).await;
    let r = post(&gw, "/v1/chat/completions", chat("gpt-4o", false), &[]).await;
    assert_eq!(r.status(), 200);
    let id = header(&r, "x-request-id").expect("id").to_string();
    let answer: Value = r.json().await.expect("json");
    assert_eq!(answer["object"], "chat.completion");
    // A stream whose answer is a 429 has sent nothing yet: it goes to the fallback too.
    let r = post(&gw, "/v1/chat/completions", chat("gpt-4o", true), &[]).await;
    assert_eq!(r.status(), 200);
    let sid = header(&r, "x-request-id").expect("id").to_string();
    let text = String::from_utf8(r.bytes().await.expect("stream").to_vec()).expect("utf8");
    assert!(text.contains("[DONE]"), "{text}");
    assert_eq!(primary.received().await.len(), 2);
    assert_eq!(secondary.received().await.len(), 2);
    let events = wait_events(audit.path(), 2).await;
    for id in [&id, &sid] {
        let e = event_for(&events, id);
        assert_eq!(e["upstream"], "secondary", "the pool that answered");
        let attempts: Vec<(String, u64)> = e["attempts"]
            .as_array()
            .expect("attempts")
            .iter()
            .map(|a| {
                (
                    a["upstream"].as_str().expect("upstream").to_string(),
                    a["status"].as_u64().expect("status"),
                )
            })
            .collect();
        assert_eq!(
            attempts,
            [("primary".to_string(), 429), ("secondary".to_string(), 200)]
        );
    }
    assert_eq!(
        gw.metric("promptgate_upstream_attempt_errors_total{kind=\"status\",upstream=\"primary\"}")
            .await,
        Some(2.0)
    );
}

#[tokio::test]
async fn a_stream_that_sent_an_event_is_never_replayed_and_fallbacks_are_bounded() {
    let primary = MockUpstream::start().await;
    let secondary = MockUpstream::start().await;
    let audit = tempfile::tempdir().expect("tempdir");
    let gw = fallback_pair(&primary, &secondary, true, audit.path()).await;
    // The primary's stream breaks after its first delta: that delta is the client's; no other pool sees it.
    let r = post(
        &gw,
        "/v1/chat/completions",
        chat("gpt-4o", true),
        &[("x-mock-reset-after", "1")],
    )
    .await;
    assert_eq!(r.status(), 200);
    let mut body = r.bytes_stream();
    let mut got = Vec::new();
    while let Some(Ok(chunk)) = body.next().await {
        got.extend_from_slice(&chunk);
    }
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.contains("\"delta\""),
        "the first delta arrived: {text}"
    );
    assert!(
        !text.contains("[DONE]"),
        "the stream did not finish: {text}"
    );
    assert_eq!(primary.received().await.len(), 1);
    assert!(secondary.received().await.is_empty(), "never replayed");

    // Every pool fails: primary, then secondary, then no more (each pool is tried once: the cycle ends).
    let r = post(
        &gw,
        "/v1/chat/completions",
        chat("gpt-4o", false),
        &[("x-mock-status", "503")],
    )
    .await;
    assert_eq!(r.status(), 503, "the last answer is the client's");
    assert_eq!(primary.received().await.len(), 2);
    assert_eq!(secondary.received().await.len(), 1);
}
