//! Values that count only after a word that names them (rule `context`), through the real gateway: a request
//! is redacted or forwarded unchanged, and a streamed answer split anywhere leaves as the whole answer would.

use serde_json::{json, Value};

use crate::support::{post, Gateway, MockUpstream};

/// What the upstream received as the first message's content.
async fn forwarded(mock: &MockUpstream) -> String {
    let got = mock.received().await;
    let body: Value = serde_json::from_str(
        got.last().expect("received")["body"]
            .as_str()
            .expect("body"),
    )
    .expect("json");
    body["messages"][0]["content"]
        .as_str()
        .expect("content")
        .to_string()
}

#[tokio::test]
async fn a_bare_ssn_is_redacted_after_its_name_and_forwarded_as_an_order_number() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock.url()).await;
    let cases = [
        ("my SSN is 123456789", Some("my SSN is [SSN]")),
        ("order 123456789", None),
        ("call me at 4155552671", Some("call me at [PHONE]")),
        ("invoice 4155552671", None),
    ];
    for (text, redacted) in cases {
        let body = json!({"model": "m", "messages": [{"role": "user", "content": text}]});
        let resp = post(
            &gw,
            "/v1/chat/completions",
            body.to_string().into_bytes(),
            &[],
        )
        .await;
        assert_eq!(resp.status(), 200, "{text}");
        let decision = resp.headers()["x-promptgate-decision"]
            .to_str()
            .expect("ascii")
            .to_string();
        match redacted {
            Some(want) => {
                assert_eq!(decision, "redact", "{text}");
                assert_eq!(forwarded(&mock).await, want);
            }
            None => {
                assert_ne!(decision, "redact", "{text}");
                assert_eq!(forwarded(&mock).await, text);
            }
        }
    }
}

/// The streamed answer's text as the client reads it.
async fn streamed(gw: &Gateway, content: &str, split_at: &str) -> String {
    let resp = reqwest::Client::new()
        .post(gw.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("x-mock-content", content)
        .header("x-mock-split-at", split_at)
        .body(r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"go"}]}"#)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    let raw = resp.text().await.expect("body");
    let mut text = String::new();
    for data in raw.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if data == "[DONE]" {
            continue;
        }
        let v: Value = serde_json::from_str(data).expect("each event is JSON");
        assert!(v.get("error").is_none(), "{raw}");
        if let Some(t) = v["choices"][0]["delta"]["content"].as_str() {
            text.push_str(t);
        }
    }
    text
}

#[tokio::test]
async fn a_streamed_answer_split_anywhere_judges_a_value_by_the_words_before_it() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock.url()).await;
    let answer = "Your SSN is 123456789 and your order is 987654321.";
    let want = "Your SSN is [SSN] and your order is 987654321.";
    // Every single cut, and a few three-piece cuts through the word and the value.
    let mut splits: Vec<String> = (1..answer.len()).map(|c| c.to_string()).collect();
    splits.extend(["2,6", "5,9", "7,14", "10,16", "13,20", "4,12,21,30"].map(String::from));
    for split in splits {
        assert_eq!(
            streamed(&gw, answer, &split).await,
            want,
            "split at {split}"
        );
    }
}
