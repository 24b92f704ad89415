//! Non-streamed answers: held whole, inspected, and only then given a status line — 200 with the original or
//! redacted body, 409 for a block (the body withheld), 502 when too large to inspect.

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::sdk::run_sdk_script;
use crate::support::{post, recorded_header, Gateway, GatewayOpts, MockUpstream};

async fn ask(gw: &Gateway, path: &str, content: &str) -> reqwest::Response {
    let body = match path {
        "/v1/responses" => r#"{"model":"m","input":"hi"}"#,
        "/v1/completions" => r#"{"model":"m","prompt":"hi"}"#,
        _ => r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#,
    };
    reqwest::Client::new()
        .post(gw.url(path))
        .header("content-type", "application/json")
        .header("x-mock-content", content)
        .body(body)
        .send()
        .await
        .expect("send")
}

#[tokio::test]
async fn answers_are_redacted_before_the_client_sees_them() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock.url()).await;
    let cases = [
        ("/v1/chat/completions", "/choices/0/message/content"),
        ("/v1/completions", "/choices/0/text"),
        ("/v1/responses", "/output/0/content/0/text"),
    ];
    for (path, pointer) in cases {
        let resp = ask(
            &gw,
            path,
            "Contact jane.doe@example.com or call 415-555-2671.",
        )
        .await;
        assert_eq!(resp.status(), 200, "{path}");
        assert_eq!(resp.headers()["x-promptgate-decision"], "redact");
        assert_eq!(resp.headers()["x-promptgate-rules"], "pii.email,pii.phone");
        let len: usize = resp.headers()["content-length"]
            .to_str()
            .expect("a")
            .parse()
            .expect("n");
        let text = resp.text().await.expect("text");
        assert_eq!(text.len(), len, "Content-Length is right");
        let v: Value = serde_json::from_str(&text).expect("json");
        assert_eq!(
            v.pointer(pointer).and_then(Value::as_str),
            Some("Contact [EMAIL] or call [PHONE]."),
            "{path}"
        );
    }
    // The upstream was asked for an unencoded answer.
    for rec in mock.received().await {
        assert_eq!(recorded_header(&rec, "accept-encoding"), Some("identity"));
    }
}

#[tokio::test]
async fn a_blocked_answer_is_a_409_and_its_body_is_withheld() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock.url()).await;
    let resp = ask(
        &gw,
        "/v1/chat/completions",
        "The key is AKIAIOSFODNN7EXAMPLE.",
    )
    .await;
    assert_eq!(resp.status(), 409);
    assert_eq!(resp.headers()["x-should-retry"], "false");
    assert_eq!(resp.headers()["x-promptgate-decision"], "block");
    let text = resp.text().await.expect("text");
    assert!(!text.contains("AKIA"), "{text}");
    let v: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(v["error"]["code"], "policy_blocked");
    assert_eq!(v["error"]["policy"], "secret.aws_access_key_id");
    assert_eq!(
        v["error"]["message"],
        "Response blocked by policy 'secret.aws_access_key_id': AWS access key id"
    );

    let out = run_sdk_script(
        "sdk_answer_block.py",
        &gw,
        &[("MOCK_CONTENT", "The key is AKIAIOSFODNN7EXAMPLE.")],
    )
    .await;
    assert_eq!(out["raised"], "ConflictError", "{out}");
    assert_eq!(out["requests"], 1, "no retry");
}

#[tokio::test]
async fn an_answer_too_large_to_inspect_is_a_502() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start_with(
        GatewayOpts::new(mock.url()).toml("[limits]\nmax_response_bytes = 2000"),
    )
    .await;
    let resp = ask(&gw, "/v1/chat/completions", &"x".repeat(3000)).await;
    assert_eq!(resp.status(), 502);
    let v: Value = resp.json().await.expect("json");
    assert_eq!(v["error"]["code"], "upstream_too_large");
    // Under the cap the same route answers.
    assert_eq!(
        ask(&gw, "/v1/chat/completions", "short").await.status(),
        200
    );
}

#[tokio::test]
async fn upstream_errors_pass_through_as_they_are() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock.url()).await;
    let resp = post(
        &gw,
        "/v1/chat/completions",
        br#"{"model":"m","messages":[]}"#.to_vec(),
        &[("x-mock-status", "429")],
    )
    .await;
    assert_eq!(resp.status(), 429);
    let v: Value = resp.json().await.expect("json");
    assert_eq!(v["error"]["code"], "mock_error");
}

#[tokio::test]
async fn logprobs_of_a_redacted_answer_do_not_carry_the_value() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock.url()).await;
    let send = |content: &'static str| {
        let gw = &gw;
        async move {
            reqwest::Client::new()
                .post(gw.url("/v1/chat/completions"))
                .header("content-type", "application/json")
                .header("x-mock-content", content)
                .body(
                    r#"{"model":"m","logprobs":true,"messages":[{"role":"user","content":"hi"}]}"#,
                )
                .send()
                .await
                .expect("send")
                .text()
                .await
                .expect("text")
        }
    };
    let redacted = send("mail jane.doe@example.com now").await;
    assert!(
        !redacted.contains("jane") && !redacted.contains("106,97,110,101"),
        "{redacted}"
    );
    let v: Value = serde_json::from_str(&redacted).expect("json");
    assert_eq!(v["choices"][0]["message"]["content"], "mail [EMAIL] now");
    assert!(v["choices"][0]["logprobs"].is_null());
    // Nothing redacted: logprobs pass untouched.
    let clean: Value = serde_json::from_str(&send("all clear here").await).expect("json");
    assert_eq!(
        clean["choices"][0]["logprobs"]["content"][1]["token"],
        "clear "
    );
}

/// An upstream that answers every request with `body`, byte for byte. The mock writes its answers with
/// serde_json, which never writes `\u00e9` or `\/`; other upstreams do (Python's `json.dumps` escapes every
/// non-ASCII character).
async fn verbatim_upstream(body: &'static str) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                // Read the whole request (head, then a Content-Length or chunked body) before answering.
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = sock.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_ascii_lowercase();
                    let Some(head_end) = text.find("\r\n\r\n").map(|i| i + 4) else {
                        continue;
                    };
                    let length = text[..head_end]
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok());
                    let done = match length {
                        Some(n) => buf.len() >= head_end + n,
                        None => {
                            !text.contains("transfer-encoding: chunked")
                                || text.ends_with("0\r\n\r\n")
                        }
                    };
                    if done {
                        break;
                    }
                }
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(answer.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    format!("http://{addr}")
}

/// A redacted answer was re-encoded whole: escapes outside the matched span (`\u00e9`, `\/`, a surrogate
/// pair, `\u2014`) reached the client rewritten. Only the raw bytes of the span may change.
#[tokio::test]
async fn answer_redaction_keeps_escapes_outside_the_matched_span() {
    const ANSWER: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1700000000,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"Caf\u00e9 \/ write to \u006aane.doe@example.com \u2014 \ud83d\ude00\n","tool_calls":[{"id":"c","type":"function","function":{"name":"send","arguments":"{\"to\":\"jane.doe@example.com\",\"note\":\"\\u00e9\"}"}}]},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#;
    let upstream = verbatim_upstream(ANSWER).await;
    let gw = Gateway::start(&upstream).await;
    let resp = post(
        &gw,
        "/v1/chat/completions",
        br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#.to_vec(),
        &[],
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-promptgate-decision"], "redact");
    let len = resp.headers()["content-length"]
        .to_str()
        .expect("a")
        .to_string();
    let text = resp.text().await.expect("text");
    let want = ANSWER
        .replace(r"\u006aane.doe@example.com", "[EMAIL]")
        .replace("jane.doe@example.com", "[EMAIL]");
    assert_eq!(text, want);
    assert_eq!(len, want.len().to_string());
}
