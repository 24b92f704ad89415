//! Streamed answers through the gateway: values split across deltas at every byte, across small TCP reads,
//! per choice and per tool call, a mid-stream block seen by the official SDK, and an upstream that dies
//! mid-stream — no fragment of a forbidden value ever reaches the client.

use serde_json::Value;

use crate::sdk::run_sdk_script;
use crate::support::{Gateway, GatewayOpts, MockUpstream};

/// Streams `content` through the gateway with the given mock steering headers; returns the client's text per
/// choice (content), the tool-call arguments per tool index, any error event, and the raw stream.
async fn stream(
    gw: &Gateway,
    content: &str,
    headers: &[(&str, String)],
) -> (Vec<String>, Vec<String>, Option<Value>, String) {
    let url = gw.url("/v1/chat/completions");
    stream_via(&reqwest::Client::new(), &url, content, headers).await
}

/// [`stream`] with the client and the URL given (HTTP/2, TLS).
async fn stream_via(
    client: &reqwest::Client,
    url: &str,
    content: &str,
    headers: &[(&str, String)],
) -> (Vec<String>, Vec<String>, Option<Value>, String) {
    let mut req = client
        .post(url)
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
    let url = gw.url("/v1/chat/completions");
    split_values_never_leak(&reqwest::Client::new(), &url).await;
}

/// Values redacted or blocked, each split across two deltas at every byte, through `client` to the chat
/// completions `url`: no fragment reaches the client, a redacted stream is whole, a blocked one ends at the
/// block. Shared by the HTTP/1.1 and the HTTP/2 (`tls.rs`) runs.
pub async fn split_values_never_leak(client: &reqwest::Client, url: &str) {
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
                stream_via(client, url, &text, &[("x-mock-split-at", cut.to_string())]).await;
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

/// Posts a streamed request to `path` through the gateway with the given mock headers; returns the raw stream.
async fn raw_stream(gw: &Gateway, path: &str, headers: &[(&str, String)]) -> String {
    let mut req = reqwest::Client::new()
        .post(gw.url(path))
        .header("content-type", "application/json")
        .body(r#"{"model":"m","stream":true,"input":"go","messages":[{"role":"user","content":"go"}]}"#);
    for (k, v) in headers {
        req = req.header(*k, v.as_str());
    }
    let resp = req.send().await.expect("send");
    assert_eq!(resp.status(), 200);
    resp.text().await.expect("a cleanly ended stream")
}

/// The JSON events of a raw stream.
fn json_events(raw: &str) -> Vec<Value> {
    raw.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).expect("each event is JSON"))
        .collect()
}

/// The error event of a raw stream, if any.
fn error_event(raw: &str) -> Option<Value> {
    json_events(raw)
        .into_iter()
        .find(|v| v.get("error").is_some())
}

/// The string at `path` inside choice 0's delta, accumulated over every chunk (what a client reads).
fn delta_field(raw: &str, path: &[&str]) -> String {
    json_events(raw)
        .iter()
        .filter_map(|v| {
            let mut at = v.get("choices")?.get(0)?.get("delta")?;
            for k in path {
                at = at.get(k)?;
            }
            at.as_str().map(str::to_string)
        })
        .collect()
}

/// Asserts two long texts are equal, showing where they first differ (not the whole texts).
fn assert_same(got: &str, want: &str, what: &str) {
    if got == want {
        return;
    }
    let at = got
        .bytes()
        .zip(want.bytes())
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    let around = |s: &str| {
        s.get(at.saturating_sub(30)..(at + 30).min(s.len()))
            .unwrap_or("")
            .to_string()
    };
    panic!(
        "{what}: {} bytes, want {}; first difference at {at}: {:?} vs {:?}",
        got.len(),
        want.len(),
        around(got),
        around(want)
    );
}

/// Regression: one delta carrying a long run of word characters (a hex dump) cost the square of the run's
/// length to filter. A 128 KiB run, in one delta or cut anywhere, reaches the client whole, and the address
/// after it is still redacted.
#[tokio::test]
async fn a_long_run_arrives_whole_however_it_is_split_and_values_after_it_are_filtered() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock.url()).await;
    let run = "0123456789abcdef".repeat(8192);
    // (A header value loses its leading spaces: the tail starts with a semicolon.)
    let tail = "; end, mail jane.doe@example.com.";
    let at_email = run.len() + tail.find("doe").expect("found");
    for split in [
        ("x-mock-chunks", "1".to_string()),
        ("x-mock-chunks", "2048".to_string()),
        ("x-mock-split-at", format!("100,65536,{at_email}")),
    ] {
        let raw = raw_stream(
            &gw,
            "/v1/chat/completions",
            &[
                ("x-mock-lead", "0123456789abcdef*8192".into()),
                ("x-mock-content", tail.into()),
                split.clone(),
            ],
        )
        .await;
        assert!(error_event(&raw).is_none(), "{split:?}");
        assert_same(
            &delta_field(&raw, &["content"]),
            &format!("{run}; end, mail [EMAIL]."),
            &format!("{split:?}"),
        );
        assert_no_fragment(&raw, "jane.doe@example.com", "after a long run");
        assert!(raw.ends_with("data: [DONE]\n\n"), "{split:?}");
    }
}

/// Regression: nothing bounded the inspection work of one text. A rule that keeps a thousand automaton states
/// alive over a run of `a` costs a thousand steps per byte: the stream ends as uninspectable, like a stream
/// that cannot be read — never passed.
#[tokio::test]
async fn a_text_over_its_inspection_budget_ends_the_stream_uninspectable() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("costly.toml"),
        "[[rule]]\nid = \"test.costly\"\ndescription = \"A long bounded repetition\"\nregex = { pattern = 'a{1000,1200}b' }\naction = \"redact\"\n",
    )
    .expect("rules");
    let mock = MockUpstream::start().await;
    let gw = Gateway::start_with(GatewayOpts::new(mock.url()).rules(dir.path())).await;
    let raw = raw_stream(
        &gw,
        "/v1/chat/completions",
        &[
            ("x-mock-lead", "a*16384".into()),
            ("x-mock-content", "; done".into()),
            ("x-mock-chunks", "1".into()),
        ],
    )
    .await;
    let error = error_event(&raw).unwrap_or_else(|| panic!("not ended: {}", &raw[..200]));
    assert_eq!(error["error"]["code"], "upstream_uninspectable", "{error}");
    assert!(!raw.contains("aaaa") && !raw.contains("[DONE]"));
    // Prose under the same rule costs little: it passes.
    let raw = raw_stream(
        &gw,
        "/v1/chat/completions",
        &[("x-mock-content", "a bad cab, a bab ".repeat(500))],
    )
    .await;
    assert!(error_event(&raw).is_none());
    assert!(raw.ends_with("data: [DONE]\n\n"));
}

/// Regression: streamed tool-call arguments carrying JSON escapes (`\u0041KIA…`) reached the client, whose JSON
/// parser decodes them to the secret. They are matched decoded, split at any byte (inside escapes and
/// surrogate pairs too), and sent as they came around a redaction.
#[tokio::test]
async fn escaped_tool_call_arguments_are_matched_decoded_split_at_every_byte() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock.url()).await;
    let cases: [(&str, Result<&str, &str>); 3] = [
        (
            r#"{"key":"\u0041\u004b\u0049\u0041IOSFODNN7EXAMPLE"}"#,
            Err(r#"{"key":""#),
        ),
        (
            r#"{"note":"caf\u00e9 \/ \"q\"","to":"jane\u002edoe@example\u002ecom"}"#,
            Ok(r#"{"note":"caf\u00e9 \/ \"q\"","to":"[EMAIL]"}"#),
        ),
        (
            r#"{"t":"\ud83d\ude00 jane.doe@example.com \ud83d\ude00"}"#,
            Ok(r#"{"t":"\ud83d\ude00 [EMAIL] \ud83d\ude00"}"#),
        ),
    ];
    for (args, want) in cases {
        for cut in 0..=args.len() {
            let (_, tools, error, raw) = stream(
                &gw,
                "ok",
                &[
                    (
                        "x-mock-tool-args",
                        serde_json::to_string(&[args]).expect("json"),
                    ),
                    ("x-mock-split-at", cut.to_string()),
                ],
            )
            .await;
            let sent = tools.first().map_or("", String::as_str);
            match want {
                Ok(redacted) => {
                    assert!(error.is_none(), "cut {cut}: {raw}");
                    assert_eq!(sent, redacted, "cut {cut}");
                }
                Err(before) => {
                    let e = error.unwrap_or_else(|| panic!("cut {cut}: not blocked: {raw}"));
                    assert_eq!(e["error"]["code"], "policy_blocked");
                    assert!(before.starts_with(sent), "cut {cut}: leaked {sent:?}");
                    assert!(!raw.contains("IOSFODNN"), "cut {cut}");
                }
            }
        }
    }
}

/// Regression: only `content`, `refusal` and tool arguments were held back; reasoning (`reasoning_content`,
/// `reasoning`), audio transcripts and any other delta field passed unfiltered. Each is held back exactly like
/// content, split at every byte.
#[tokio::test]
async fn reasoning_and_every_other_delta_field_are_held_back_like_content() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock.url()).await;
    let fields = [
        "reasoning_content",
        "reasoning",
        "audio.transcript",
        "x_vendor.thoughts.text",
    ];
    let values: [(&str, Option<&str>); 2] = [
        ("jane.doe@example.com", Some("[EMAIL]")),
        ("sk-proj-AbCdEfGhIjKlMnOpQrStUvWx0123", None),
    ];
    for field in fields {
        let path: Vec<&str> = field.split('.').collect();
        for (value, replacement) in values {
            let text = format!("Let me think: {value} — fine.");
            let start = text.find(value).expect("found");
            for cut in (start..=start + value.len()).filter(|&c| text.is_char_boundary(c)) {
                let raw = raw_stream(
                    &gw,
                    "/v1/chat/completions",
                    &[
                        ("x-mock-content", text.clone()),
                        ("x-mock-delta-field", field.into()),
                        ("x-mock-split-at", cut.to_string()),
                    ],
                )
                .await;
                let what = format!("{field}: {value} cut at {cut}");
                assert_no_fragment(&raw, value, &what);
                let got = delta_field(&raw, &path);
                match replacement {
                    Some(r) => {
                        assert!(error_event(&raw).is_none(), "{what}: {raw}");
                        assert_eq!(got, text.replace(value, r), "{what}");
                    }
                    None => {
                        let e = error_event(&raw).unwrap_or_else(|| panic!("{what}: {raw}"));
                        assert_eq!(e["error"]["code"], "policy_blocked", "{what}");
                        assert!(text[..start].starts_with(&got), "{what}: {got:?}");
                    }
                }
            }
        }
    }
}

/// Regression: Responses API deltas other than output text — reasoning summaries, and function-call arguments
/// whose JSON escapes spell a secret — are held back per text, split at every byte.
#[tokio::test]
async fn responses_api_deltas_of_every_type_are_held_back() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock.url()).await;
    let ev = |kind: &str, extra: Value, d: &str| {
        let mut v =
            serde_json::json!({"type": kind, "item_id": "it_1", "output_index": 0, "delta": d});
        for (k, x) in extra.as_object().into_iter().flatten() {
            v[k] = x.clone();
        }
        v
    };
    let completed = serde_json::json!({"type": "response.completed", "response": {"id": "resp_1", "status": "completed"}});
    let text = "Plan: write to jane.doe@example.com today.";
    let start = text.find("jane").expect("found");
    for cut in start..=start + "jane.doe@example.com".len() {
        let kind = "response.reasoning_summary_text.delta";
        let extra = serde_json::json!({"summary_index": 0});
        let events = serde_json::json!([
            ev(kind, extra.clone(), &text[..cut]),
            ev(kind, extra.clone(), &text[cut..]),
            completed,
        ]);
        let raw = raw_stream(
            &gw,
            "/v1/responses",
            &[("x-mock-events", events.to_string())],
        )
        .await;
        assert_no_fragment(&raw, "jane.doe@example.com", "reasoning summary");
        let deltas: String = json_events(&raw)
            .iter()
            .filter(|v| v["type"] == kind)
            .filter_map(|v| v["delta"].as_str().map(str::to_string))
            .collect();
        assert_eq!(deltas, "Plan: write to [EMAIL] today.", "cut {cut}");
        assert_eq!(
            json_events(&raw).last().expect("events")["type"],
            "response.completed",
            "held text leaves before the response ends"
        );
    }
    let args = r#"{"key":"\u0041KIAIOSFODNN7EXAMPLE"}"#;
    for cut in 0..=args.len() {
        let kind = "response.function_call_arguments.delta";
        let events = serde_json::json!([
            ev(kind, Value::Null, &args[..cut]),
            ev(kind, Value::Null, &args[cut..]),
            completed,
        ]);
        let raw = raw_stream(
            &gw,
            "/v1/responses",
            &[("x-mock-events", events.to_string())],
        )
        .await;
        let e = error_event(&raw).unwrap_or_else(|| panic!("cut {cut}: not blocked: {raw}"));
        assert_eq!(e["error"]["code"], "policy_blocked");
        assert!(!raw.contains("IOSFODNN"), "cut {cut}: {raw}");
    }
}

#[tokio::test]
async fn a_value_split_into_the_chunk_that_finishes_its_choice_never_leaks() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock.url()).await;
    let text = "mail jane.doe@example.com ok";
    let start = text.find("jane").expect("found");
    for cut in start..=start + "jane.doe@example.com".len() {
        let events = serde_json::json!([
            {"choices": [{"index": 0, "delta": {"content": &text[..cut]}, "finish_reason": null}]},
            {"choices": [{"index": 0, "delta": {"content": &text[cut..]}, "finish_reason": "stop"}]},
            "[DONE]",
        ]);
        let raw = raw_stream(
            &gw,
            "/v1/chat/completions",
            &[("x-mock-events", events.to_string())],
        )
        .await;
        assert_no_fragment(&raw, "jane.doe@example.com", "finishing chunk");
        let chunks = json_events(&raw);
        let content: String = chunks
            .iter()
            .filter_map(|v| {
                v["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(str::to_string)
            })
            .collect();
        assert_eq!(content, "mail [EMAIL] ok", "cut {cut}");
        // Nothing of the text comes after the chunk that finishes the choice.
        let finish = chunks
            .iter()
            .position(|v| v["choices"][0]["finish_reason"] == "stop")
            .expect("finish chunk");
        assert!(
            chunks[finish + 1..]
                .iter()
                .all(|v| v["choices"][0]["delta"]["content"]
                    .as_str()
                    .unwrap_or("")
                    .is_empty()),
            "cut {cut}: {raw}"
        );
    }
}

/// One event as a client reads it: its `event` name, its data (`data` lines joined), its other lines.
#[derive(Debug, Default)]
struct ReadEvent {
    name: Option<String>,
    data: Option<String>,
    others: Vec<String>,
}

/// Reads a stream as an SSE client does (LF, CRLF or lone CR line ends; a blank line ends an event).
fn read_events(raw: &str) -> Vec<ReadEvent> {
    let mut events = Vec::new();
    let mut ev = ReadEvent::default();
    let mut pending = false;
    for line in raw.replace("\r\n", "\n").replace('\r', "\n").split('\n') {
        if line.is_empty() {
            if pending {
                events.push(std::mem::take(&mut ev));
                pending = false;
            }
            continue;
        }
        pending = true;
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "data" => match &mut ev.data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => ev.data = Some(value.to_string()),
            },
            "event" => ev.name = Some(value.to_string()),
            _ => ev.others.push(line.to_string()),
        }
    }
    if pending {
        events.push(ev);
    }
    events
}

/// A value outside an event's data — in a comment, its name, its id, an unknown field, around `[DONE]` or
/// non-JSON data — was passed on uninspected; and a rewritten event lost its `event` name (or a multi-line
/// data became lines a client reads as other fields).
#[tokio::test]
async fn every_line_of_an_event_is_inspected_and_kept_when_its_data_is_rewritten() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock.url()).await;
    let secret = "AKIAIOSFODNN7EXAMPLE";
    let clean = r#"data: {"choices":[{"index":0,"delta":{"content":"hello "},"finish_reason":null}]}

"#;
    for carrier in [
        format!(": note {secret}\n\n"),
        format!("event: {secret}\ndata: {{\"choices\":[]}}\n\n"),
        format!("id: {secret}\ndata: {{\"choices\":[]}}\n\n"),
        format!("x-trace: {secret}\r\ndata: {{\"type\":\"response.created\"}}\r\n\r\n"),
        format!(": {secret}\ndata: [DONE]\n\n"),
        format!("event: note {secret}\ndata: not json\n\n"),
        format!("retry: 1\r{secret}\r\r"),
    ] {
        let sse = serde_json::json!([clean, carrier, "data: [DONE]\n\n"]);
        let raw = raw_stream(
            &gw,
            "/v1/chat/completions",
            &[("x-mock-sse", sse.to_string())],
        )
        .await;
        assert_no_fragment(&raw, secret, &format!("carrier {carrier:?}"));
        let e = error_event(&raw).unwrap_or_else(|| panic!("{carrier:?}: not blocked: {raw}"));
        assert_eq!(e["error"]["code"], "policy_blocked", "{carrier:?}");
    }

    // A Responses stream keeps every event's name when its data is redacted, and on the events that carry
    // held text; a multi-line data is rewritten as one field.
    let delta = |d: &str| {
        format!(
            "event: response.output_text.delta\ndata: {}\n\n",
            serde_json::json!({"type": "response.output_text.delta", "item_id": "it_1", "output_index": 0, "content_index": 0, "delta": d})
        )
    };
    let done = "event: response.completed\ndata: {\"type\": \"response.completed\",\ndata:  \"response\": {\"id\": \"r\", \"note\": \"from bob@example.org\"}}\n\n";
    let sse = serde_json::json!([
        delta("write to jane.doe@exa"),
        delta("mple.com and to "),
        delta("joe@example.net"),
        done
    ]);
    let raw = raw_stream(&gw, "/v1/responses", &[("x-mock-sse", sse.to_string())]).await;
    let events = read_events(&raw);
    let mut text = String::new();
    for ev in &events {
        let data = ev
            .data
            .as_deref()
            .unwrap_or_else(|| panic!("an event without data: {raw}"));
        let v: Value =
            serde_json::from_str(data).unwrap_or_else(|e| panic!("{e}: {data:?} in {raw}"));
        assert_eq!(
            ev.name.as_deref(),
            v["type"].as_str(),
            "an event lost its name: {raw}"
        );
        assert!(ev.others.is_empty(), "stray lines {:?}: {raw}", ev.others);
        if let Some(d) = v["delta"].as_str() {
            text.push_str(d);
        }
        if v["type"] == "response.completed" {
            assert_eq!(v["response"]["note"], "from [EMAIL]", "{raw}");
        }
    }
    assert_eq!(text, "write to [EMAIL] and to [EMAIL]", "{raw}");
    assert_eq!(
        events.last().and_then(|e| e.name.as_deref()),
        Some("response.completed")
    );
}

/// The upstream's last event ended in a lone CR with no blank line: the line end the gateway added read as
/// the second half of a CRLF, so the held text it released next joined that event (and took its name).
#[tokio::test]
async fn an_upstream_event_cut_short_after_a_lone_cr_stays_apart_from_what_follows() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock.url()).await;
    let chunk = |c: &str| {
        format!(
            "data: {}\n\n",
            serde_json::json!({"choices": [{"index": 0, "delta": {"content": c}, "finish_reason": null}]})
        )
    };
    for eol in ["\n", "\r\n"] {
        let sse = serde_json::json!([
            chunk("mail jane.doe@exa").replace('\n', eol),
            chunk("mple.com").replace('\n', eol),
            "event: ping\r"
        ]);
        let raw = raw_stream(
            &gw,
            "/v1/chat/completions",
            &[("x-mock-sse", sse.to_string())],
        )
        .await;
        let events = read_events(&raw);
        let mut content = String::new();
        for ev in &events {
            let Some(data) = &ev.data else { continue };
            assert_eq!(
                ev.name, None,
                "data joined the upstream's `ping` event: {raw:?}"
            );
            let v: Value = serde_json::from_str(data).unwrap_or_else(|e| panic!("{e}: {raw:?}"));
            content.push_str(v["choices"][0]["delta"]["content"].as_str().unwrap_or(""));
        }
        assert_eq!(content, "mail [EMAIL]", "{raw:?}");
        assert!(
            events
                .iter()
                .any(|e| e.name.as_deref() == Some("ping") && e.data.is_none()),
            "{raw:?}"
        );
    }
}

/// A streamed answer was redacted once: a replacement that exposed a value (an email match ending in letters
/// glued to a number; once it was `[EMAIL]` the number stood alone, a phone number) let that value through,
/// where the same answer unstreamed was redacted until nothing more matched.
#[tokio::test]
async fn what_a_redaction_exposes_in_a_stream_is_redacted_as_in_a_whole_answer() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock.url()).await;
    let text = "mail jane.doe@example.coiE354 394 0044 0266 0130 00 please";
    let whole: Value = reqwest::Client::new()
        .post(gw.url("/v1/chat/completions"))
        .header("x-mock-content", text)
        .json(&serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    let want = whole["choices"][0]["message"]["content"]
        .as_str()
        .expect("content")
        .to_string();
    assert!(!want.contains("394 0044"), "{want}");
    for cut in (0..=text.len()).step_by(3) {
        let raw = raw_stream(
            &gw,
            "/v1/chat/completions",
            &[
                ("x-mock-content", text.to_string()),
                ("x-mock-split-at", cut.to_string()),
            ],
        )
        .await;
        assert_eq!(delta_field(&raw, &["content"]), want, "cut {cut}: {raw}");
    }
}

/// Only a choice's `text` and `delta` strings were inspected: a string beside them (a field of any name, a
/// refusal, logprobs), in the chunk's envelope (`model`, `id`, any field), a key anywhere, or a Responses
/// event's field other than `delta` passed uninspected (found by fuzzing: `\u0041KIA…` in an unknown field).
#[tokio::test]
async fn every_string_and_key_of_a_chunk_is_inspected_not_only_the_texts() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock.url()).await;
    let secret = "\\u0041KIAIOSFODNN7EXAMPLE";
    let clean = r#"{"choices":[{"index":0,"delta":{"content":"hello "},"finish_reason":null}]}"#;
    let carriers = [
        format!(r#"{{"choices":[{{"index":0,"derefusallta":{{"content":"{secret}"}}}}]}}"#),
        format!(r#"{{"choices":[{{"index":0,"delta":{{}},"refusal":"{secret}"}}]}}"#),
        format!(
            r#"{{"choices":[{{"index":0,"delta":{{}},"logprobs":{{"content":[{{"token":"x","top_logprobs":[{{"token":"{secret}"}}]}}]}}}}]}}"#
        ),
        format!(r#"{{"model":"{secret}","choices":[{{"index":0,"delta":{{"content":"x"}}}}]}}"#),
        format!(r#"{{"x":{{"y":["{secret}"]}},"choices":[]}}"#),
        format!(r#"{{"{secret}":1,"choices":[]}}"#),
        format!(r#"{{"choices":[{{"index":0,"delta":{{"{secret}":"x"}}}}]}}"#),
    ];
    for carrier in &carriers {
        let events = serde_json::json!([
            serde_json::from_str::<Value>(clean).expect("clean"),
            serde_json::from_str::<Value>(carrier).expect("carrier"),
            "[DONE]"
        ]);
        let raw = raw_stream(
            &gw,
            "/v1/chat/completions",
            &[("x-mock-events", events.to_string())],
        )
        .await;
        assert!(!raw.contains("IOSFODNN"), "{carrier}: {raw}");
        let e = error_event(&raw).unwrap_or_else(|| panic!("{carrier}: not blocked: {raw}"));
        assert_eq!(e["error"]["code"], "policy_blocked", "{carrier}");
    }
    // A Responses event's other fields.
    let ev = format!(
        r#"{{"type":"response.output_text.delta","item_id":"{secret}","output_index":0,"content_index":0,"delta":"hi"}}"#
    );
    let events = serde_json::json!([serde_json::from_str::<Value>(&ev).expect("ev")]);
    let raw = raw_stream(
        &gw,
        "/v1/responses",
        &[("x-mock-events", events.to_string())],
    )
    .await;
    assert!(!raw.contains("IOSFODNN"), "{raw}");
    assert!(error_event(&raw).is_some(), "{raw}");
    // A value a rule redacts is redacted in place, and the chunks carrying held text carry it redacted.
    let events = serde_json::json!([
        {"model": "for jane.doe@example.com", "choices": [{"index": 0, "delta": {"content": "mail bob@exa"}, "finish_reason": null}]},
        {"model": "for jane.doe@example.com", "choices": [{"index": 0, "delta": {"content": "mple.org"}, "finish_reason": null}]},
        "[DONE]"
    ]);
    let raw = raw_stream(
        &gw,
        "/v1/chat/completions",
        &[("x-mock-events", events.to_string())],
    )
    .await;
    assert!(!raw.contains("jane.doe") && !raw.contains("bob@"), "{raw}");
    for v in json_events(&raw) {
        assert_eq!(v["model"], "for [EMAIL]", "{raw}");
    }
    assert_eq!(delta_field(&raw, &["content"]), "mail [EMAIL]", "{raw}");
}
