//! Streamed answers through the gateway: values split across deltas at every byte, across small TCP reads,
//! per choice and per tool call, a mid-stream block seen by the official SDK, and an upstream that dies
//! mid-stream — no fragment of a forbidden value ever reaches the client.

use serde_json::Value;

use crate::sdk::run_sdk_script;
use crate::support::{Gateway, MockUpstream};

/// Streams `content` through the gateway with the given mock steering headers; returns the client's text per
/// choice (content), the tool-call arguments per tool index, any error event, and the raw stream.
async fn stream(
    gw: &Gateway,
    content: &str,
    headers: &[(&str, String)],
) -> (Vec<String>, Vec<String>, Option<Value>, String) {
    let mut req = reqwest::Client::new()
        .post(gw.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .header(
            "x-mock-content",
            reqwest::header::HeaderValue::from_bytes(content.as_bytes()).expect("header"),
        )
        .body(r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"go"}]}"#);
    for (k, v) in headers {
        req = req.header(*k, v.as_str());
    }
    let resp = req.send().await.expect("send");
    assert_eq!(resp.status(), 200);
    // An upstream that dies mid-stream ends the client's stream with an error: keep what arrived before.
    let mut raw = String::new();
    let mut body = resp.bytes_stream();
    while let Some(Ok(chunk)) = futures_util::StreamExt::next(&mut body).await {
        raw.push_str(&String::from_utf8_lossy(&chunk));
    }
    let mut texts: Vec<String> = Vec::new();
    let mut tools: Vec<String> = Vec::new();
    let mut error = None;
    for data in raw.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if data == "[DONE]" {
            continue;
        }
        let v: Value = serde_json::from_str(data).expect("each event is JSON");
        if v.get("error").is_some() {
            error = Some(v);
            continue;
        }
        for c in v["choices"].as_array().into_iter().flatten() {
            let i = c["index"].as_u64().unwrap_or(0) as usize;
            if let Some(t) = c["delta"]["content"].as_str() {
                if texts.len() <= i {
                    texts.resize(i + 1, String::new());
                }
                texts[i].push_str(t);
            }
            for call in c["delta"]["tool_calls"].as_array().into_iter().flatten() {
                let t = call["index"].as_u64().unwrap_or(0) as usize;
                if tools.len() <= t {
                    tools.resize(t + 1, String::new());
                }
                tools[t].push_str(call["function"]["arguments"].as_str().unwrap_or(""));
            }
        }
    }
    (texts, tools, error, raw)
}

fn assert_no_fragment(raw: &str, value: &str, what: &str) {
    for n in (6..=value.len()).filter(|&n| value.is_char_boundary(n)) {
        assert!(
            !raw.contains(&value[..n]),
            "{what}: fragment {:?} reached the client",
            &value[..n]
        );
    }
}

#[tokio::test]
async fn a_value_split_across_two_deltas_at_every_byte_never_leaks() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock.url()).await;
    let cases: [(&str, Option<&str>); 5] = [
        ("jane.doe@example.com", Some("[EMAIL]")),
        ("4111 1111 1111 1111", Some("[CARD]")),
        ("078-05-1120", Some("[SSN]")),
        ("sk-proj-AbCdEfGhIjKlMnOpQrStUvWx0123", None),
        ("Project Bluebird", None),
    ];
    for (value, replacement) in cases {
        let text = format!("Here you go: {value} — that is all.");
        let start = text.find(value).expect("found");
        for cut in (start..=start + value.len()).filter(|&c| text.is_char_boundary(c)) {
            let (texts, _, error, raw) =
                stream(&gw, &text, &[("x-mock-split-at", cut.to_string())]).await;
            let what = format!("{value} cut at {cut}");
            assert_no_fragment(&raw, value, &what);
            match replacement {
                Some(r) => {
                    assert!(error.is_none(), "{what}: {raw}");
                    assert_eq!(texts[0], text.replace(value, r), "{what}");
                    assert!(raw.ends_with("data: [DONE]\n\n"), "{what}");
                }
                None => {
                    let e = error.unwrap_or_else(|| panic!("{what}: not blocked: {raw}"));
                    assert_eq!(e["error"]["code"], "policy_blocked");
                    assert!(
                        text[..start].starts_with(texts.first().map_or("", String::as_str)),
                        "{what}: {texts:?}"
                    );
                    assert!(
                        !raw.contains("[DONE]") && !raw.contains("that is all"),
                        "{what}: nothing after the block"
                    );
                }
            }
        }
    }
}

#[tokio::test]
async fn splits_inside_characters_escapes_and_tcp_reads_change_nothing() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock.url()).await;
    // Multi-byte characters around the value; the mock writes the stream 3 bytes at a time, so reads split
    // events, UTF-8 sequences and JSON escapes.
    let text = "Ünïcødé ✓ «jane.doe@example.com» — “quoted” \\ done";
    let start = text.find("jane").expect("found");
    for cut in [start - 2, start + 3, start + 9, start + 20] {
        let cut = (cut..)
            .find(|&c| text.is_char_boundary(c))
            .expect("boundary");
        let (texts, _, error, raw) = stream(
            &gw,
            text,
            &[
                ("x-mock-split-at", cut.to_string()),
                ("x-mock-write-bytes", "3".into()),
            ],
        )
        .await;
        assert!(error.is_none());
        assert_no_fragment(&raw, "jane.doe@example.com", "small reads");
        assert_eq!(texts[0], text.replace("jane.doe@example.com", "[EMAIL]"));
    }
}

#[tokio::test]
async fn choices_and_parallel_tool_calls_are_filtered_independently() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock.url()).await;
    let choices = r#"["mail jane.doe@example.com today", "nothing to hide here", "card 4111 1111 1111 1111 ok"]"#;
    let tools =
        r#"["{\"to\": \"bob@example.org\", \"n\": 1}", "{\"query\": \"weather in Paris\"}"]"#;
    let (texts, args, error, raw) = stream(
        &gw,
        "unused",
        &[
            ("x-mock-choices", choices.into()),
            ("x-mock-tool-args", tools.into()),
            ("x-mock-chunks", "5".into()),
        ],
    )
    .await;
    assert!(error.is_none(), "{raw}");
    assert_eq!(
        texts,
        [
            "mail [EMAIL] today",
            "nothing to hide here",
            "card [CARD] ok"
        ]
    );
    assert_eq!(
        args,
        [
            r#"{"to": "[EMAIL]", "n": 1}"#,
            r#"{"query": "weather in Paris"}"#
        ]
    );
    assert_no_fragment(&raw, "bob@example.org", "tool args");
}

#[tokio::test]
async fn the_openai_sdk_raises_api_error_on_a_mid_stream_block() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock.url()).await;
    let content = "Sure. The deploy key is AKIAIOSFODNN7EXAMPLE and it expires soon.";
    let out = run_sdk_script("sdk_stream_block.py", &gw, &[("MOCK_CONTENT", content)]).await;
    assert_eq!(out["raised"], "APIError", "{out}");
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
}

#[tokio::test]
async fn an_upstream_dying_mid_stream_releases_held_text_only_after_inspection() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock.url()).await;
    // The first piece ends inside an email; the mock then drops the connection. What was held leaves only
    // after a final inspection: an incomplete address is no match and is released; a complete one is redacted.
    for (text, want) in [
        (
            "first part jane.doe@exa|mple.com and more",
            "first part jane.doe@exa",
        ),
        (
            "first part jane.doe@example.com|, more",
            "first part [EMAIL]",
        ),
    ] {
        let cut = text.find('|').expect("cut");
        let text = text.replace('|', "");
        let (texts, _, _, raw) = stream(
            &gw,
            &text,
            &[
                ("x-mock-split-at", cut.to_string()),
                ("x-mock-reset-after", "1".into()),
            ],
        )
        .await;
        assert_eq!(texts.first().map(String::as_str), Some(want), "{raw}");
        assert!(
            !raw.contains("[DONE]"),
            "the client's stream breaks off as the upstream's did"
        );
    }
}

#[tokio::test]
async fn usage_chunks_pass_through() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock.url()).await;
    let resp = reqwest::Client::new()
        .post(gw.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(
            r#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[]}"#,
        )
        .send()
        .await
        .expect("send");
    let raw = resp.text().await.expect("text");
    assert!(raw.contains(r#""usage":{"completion_tokens""#), "{raw}");
}

/// The content deltas of choice 0 in a raw stream, joined.
fn content_of(raw: &str) -> String {
    raw.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect()
}

/// A chat request with `pad` bytes of padding in the prompt (over 64 KiB takes the gateway's own relay).
fn padded_request(pad: usize, stream: bool) -> String {
    serde_json::json!({"model": "m", "stream": stream, "messages": [{"role": "user", "content": "x".repeat(pad)}]}).to_string()
}

#[tokio::test]
async fn large_requests_get_their_streams_filtered_and_a_block_cuts_the_upstream() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock.url()).await;
    let client = reqwest::Client::new();
    let text = "Write to jane.doe@example.com today.";
    let cut = text.find("example").expect("cut");
    let resp = client
        .post(gw.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("x-mock-content", text)
        .header("x-mock-split-at", cut.to_string())
        .body(padded_request(100_000, true))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-promptgate-decision"], "allow");
    let raw = resp.text().await.expect("text");
    assert!(!raw.contains("jane"), "{raw}");
    assert_eq!(content_of(&raw), "Write to [EMAIL] today.");
    assert!(raw.ends_with("data: [DONE]\n\n"));

    // A block mid-stream: the client's stream ends with the error event, and the upstream is cut off before
    // it finished sending (the mock never completes its answer).
    let resp = client
        .post(gw.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .header(
            "x-mock-content",
            "one two AKIAIOSFODNN7EXAMPLE three four five six seven",
        )
        .header("x-mock-chunks", "8")
        .header("x-mock-delay-ms", "30")
        .body(padded_request(100_000, true))
        .send()
        .await
        .expect("send");
    let raw = resp.text().await.expect("a cleanly ended stream");
    let last = raw
        .trim_end()
        .lines()
        .last()
        .and_then(|l| l.strip_prefix("data: "))
        .expect("an event");
    let last: Value = serde_json::from_str(last).expect("json");
    assert_eq!(
        last["error"]["policy"], "secret.aws_access_key_id",
        "the error event ends the stream: {raw}"
    );
    assert!(!raw.contains("AKIA") && !raw.contains("seven"));
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let recs = mock.received().await;
    assert_eq!(
        recs.last().expect("received")["completed"],
        false,
        "the upstream was cut off mid-answer"
    );
}

#[tokio::test]
async fn large_requests_get_their_answers_inspected_too() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock.url()).await;
    let resp = reqwest::Client::new()
        .post(gw.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("x-mock-content", "Reach me at jane.doe@example.com.")
        .body(padded_request(100_000, false))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.expect("json");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "Reach me at [EMAIL]."
    );
}
