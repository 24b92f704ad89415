//! Request enforcement seen from outside: what the upstream receives (recorded by the mock) for every field,
//! shape, encoding and evasion; what the client gets back; and that nothing blocked reaches the upstream.

use std::io::Write;

use serde_json::{json, Value};

use crate::sdk::run_sdk_script;
use crate::support::{header, post, recorded_header, Gateway, GatewayOpts, MockUpstream};

const AWS: &str = "AKIAIOSFODNN7EXAMPLE";

async fn assert_blocked(resp: reqwest::Response, rule: &str) {
    assert_eq!(resp.status(), 409);
    assert_eq!(resp.headers()["x-should-retry"], "false");
    assert_eq!(resp.headers()["x-promptgate-decision"], "block");
    assert!(resp.headers().contains_key("x-request-id"));
    let v: Value = resp.json().await.expect("json");
    assert_eq!(v["error"]["code"], "policy_blocked");
    assert_eq!(v["error"]["type"], "policy_violation");
    assert_eq!(v["error"]["policy"], rule);
    assert!(v["error"]["param"].is_null());
    let msg = v["error"]["message"].as_str().expect("message");
    assert!(
        msg.starts_with(&format!("Request blocked by policy '{rule}': ")),
        "{msg}"
    );
    assert!(!msg.contains(AWS), "the message never carries the value");
}

#[tokio::test]
async fn openai_sdk_sees_one_conflict_and_the_upstream_sees_nothing_blocked() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock.url()).await;
    let out = run_sdk_script("sdk_policy.py", &gw, &[]).await;
    assert_eq!(out["blocked"], true, "{out}");
    assert_eq!(out["status"], 409);
    assert_eq!(out["code"], "policy_blocked");
    assert_eq!(
        out["requests_for_blocked"], 1,
        "x-should-retry: false stops the SDK's retries"
    );
    assert!(out["message"]
        .as_str()
        .is_some_and(|m| m.contains("secret.aws_access_key_id") && !m.contains(AWS)));
    assert_eq!(out["requests_for_redacted"], 1);

    let got = mock.received().await;
    assert_eq!(
        got.len(),
        1,
        "only the redacted request reached the upstream"
    );
    let body = got[0]["body"].as_str().expect("body");
    assert!(body.contains("Email [EMAIL] about the launch"), "{body}");
    assert!(!body.contains("jane.doe@example.com"));
}

/// A body with `AWS` placed in one field or shape; every one must be blocked before the upstream.
fn shapes() -> Vec<(&'static str, &'static str, Value)> {
    let tool_args = json!({"query": format!("use {AWS}")}).to_string();
    let double = json!({"inner": json!({"deeper": AWS}).to_string()}).to_string();
    vec![
        (
            "content string",
            "/v1/chat/completions",
            json!({"model": "m", "messages": [{"role": "user", "content": AWS}]}),
        ),
        (
            "content parts",
            "/v1/chat/completions",
            json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": format!("see {AWS}")}]}]}),
        ),
        (
            "system",
            "/v1/chat/completions",
            json!({"model": "m", "messages": [{"role": "system", "content": AWS}, {"role": "user", "content": "hi"}]}),
        ),
        (
            "developer",
            "/v1/chat/completions",
            json!({"model": "m", "messages": [{"role": "developer", "content": AWS}]}),
        ),
        (
            "name",
            "/v1/chat/completions",
            json!({"model": "m", "messages": [{"role": "user", "name": AWS, "content": "hi"}]}),
        ),
        (
            "tool arguments",
            "/v1/chat/completions",
            json!({"model": "m", "messages": [{"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "search", "arguments": tool_args}}]}]}),
        ),
        (
            "tool arguments double-encoded",
            "/v1/chat/completions",
            json!({"model": "m", "messages": [{"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": double}}]}]}),
        ),
        (
            "tool result",
            "/v1/chat/completions",
            json!({"model": "m", "messages": [{"role": "tool", "tool_call_id": "c1", "content": AWS}]}),
        ),
        (
            "tool description",
            "/v1/chat/completions",
            json!({"model": "m", "messages": [], "tools": [{"type": "function", "function": {"name": "f", "description": AWS, "parameters": {}}}]}),
        ),
        (
            "metadata",
            "/v1/chat/completions",
            json!({"model": "m", "messages": [], "metadata": {"note": AWS}}),
        ),
        (
            "user",
            "/v1/chat/completions",
            json!({"model": "m", "messages": [], "user": AWS}),
        ),
        (
            "a key",
            "/v1/chat/completions",
            json!({"model": "m", "messages": [], "metadata": {AWS: "x"}}),
        ),
        (
            "prompt string",
            "/v1/completions",
            json!({"model": "m", "prompt": AWS}),
        ),
        (
            "prompt list",
            "/v1/completions",
            json!({"model": "m", "prompt": ["ok", AWS]}),
        ),
        (
            "embeddings input",
            "/v1/embeddings",
            json!({"model": "m", "input": [AWS]}),
        ),
        (
            "responses input",
            "/v1/responses",
            json!({"model": "m", "input": [{"role": "user", "content": [{"type": "input_text", "text": AWS}]}]}),
        ),
        (
            "responses instructions",
            "/v1/responses",
            json!({"model": "m", "input": "hi", "instructions": AWS}),
        ),
        ("moderations", "/v1/moderations", json!({"input": AWS})),
    ]
}

#[tokio::test]
async fn every_field_and_shape_is_inspected() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock.url()).await;
    for (what, path, body) in shapes() {
        let resp = post(&gw, path, body.to_string().into_bytes(), &[]).await;
        assert_eq!(resp.status(), 409, "{what}");
        assert_blocked(resp, "secret.aws_access_key_id").await;
    }
    assert!(
        mock.received().await.is_empty(),
        "the upstream saw none of them"
    );
    assert_eq!(
        gw.metric_eventually(
            r#"promptgate_decisions_total{decision="block",direction="request"}"#,
            shapes().len() as f64
        )
        .await,
        Some(shapes().len() as f64)
    );
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(b).expect("gz");
    e.finish().expect("gz")
}

fn deflate(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(b).expect("deflate");
    e.finish().expect("deflate")
}

fn brotli(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
        w.write_all(b).expect("br");
    }
    out
}

#[tokio::test]
async fn evasions_are_caught() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock.url()).await;
    // Blocked: the key hidden by escapes, invisible characters or an encoding.
    let escaped =
        br#"{"model":"m","messages":[{"role":"user","content":"\u0041\u004bIAIOSFODNN7EXAMPLE"}]}"#
            .to_vec();
    let zero_width = json!({"model": "m", "messages": [{"role": "user", "content": "AKIA\u{200B}IOSFODNN7\u{200D}EXAMPLE"}]}).to_string();
    let plain =
        json!({"model": "m", "messages": [{"role": "user", "content": format!("key {AWS}")}]})
            .to_string();
    let blocked: Vec<(&str, Vec<u8>, Option<&str>)> = vec![
        ("json \\u escapes", escaped, None),
        ("zero-width", zero_width.into_bytes(), None),
        ("gzip", gzip(plain.as_bytes()), Some("gzip")),
        ("deflate", deflate(plain.as_bytes()), Some("deflate")),
        ("br", brotli(plain.as_bytes()), Some("br")),
        (
            "zstd",
            zstd::encode_all(plain.as_bytes(), 3).expect("zstd"),
            Some("zstd"),
        ),
    ];
    for (what, body, enc) in blocked {
        let headers: Vec<(&str, &str)> = enc
            .map(|e| vec![("content-encoding", e)])
            .unwrap_or_default();
        let resp = post(&gw, "/v1/chat/completions", body, &headers).await;
        assert_eq!(resp.status(), 409, "{what}");
    }
    assert!(mock.received().await.is_empty());

    // Redacted: personal data hidden by full-width digits, Unicode dashes and NBSP.
    let cases = [
        (
            "full-width card",
            "card ４１１１ １１１１ １１１１ １１１１ ok",
            "card [CARD] ok",
        ),
        (
            "unicode dashes ssn",
            "ssn 123\u{2013}45\u{2014}6789 ok",
            "ssn [SSN] ok",
        ),
        (
            "nbsp ssn",
            "ssn 078\u{00A0}05\u{00A0}1120 ok",
            "ssn [SSN] ok",
        ),
    ];
    for (what, text, want) in cases {
        let body =
            json!({"model": "m", "messages": [{"role": "user", "content": text}]}).to_string();
        let resp = post(&gw, "/v1/chat/completions", body.into_bytes(), &[]).await;
        assert_eq!(resp.status(), 200, "{what}");
        assert_eq!(resp.headers()["x-promptgate-decision"], "redact");
        let got = mock.received().await;
        let sent: Value = serde_json::from_str(
            got.last().expect("received")["body"]
                .as_str()
                .expect("body"),
        )
        .expect("json");
        assert_eq!(sent["messages"][0]["content"], want, "{what}");
    }
}

#[tokio::test]
async fn default_ignorable_characters_inside_a_key_are_seen_through() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock.url()).await;
    // Tag characters, bidi controls, variation selectors, the grapheme joiner, Hangul fillers: each renders as
    // nothing, so the reader (and the model) sees the key whole.
    let hide = |z: &str| format!("key AKIA{z}IOSF{z}ODNN7{z}EXAMPLE{z}");
    let mut bodies: Vec<(String, Vec<u8>)> = [
        "\u{E0041}",
        "\u{E007F}",
        "\u{200E}\u{200F}",
        "\u{202E}",
        "\u{2066}",
        "\u{FE0F}",
        "\u{E0100}",
        "\u{034F}",
        "\u{115F}\u{1160}",
        "\u{3164}",
        "\u{FFA0}",
    ]
    .iter()
    .map(|z| {
        let body = json!({"model": "m", "messages": [{"role": "user", "content": hide(z)}]});
        (
            format!("U+{:04X}", z.chars().next().map_or(0, u32::from)),
            body.to_string().into_bytes(),
        )
    })
    .collect();
    // A tag character written as a JSON escape (a surrogate pair).
    bodies.push((
        "escaped tag".into(),
        br#"{"model":"m","messages":[{"role":"user","content":"AKIA\uDB40\uDC41IOSFODNN7EXAMPLE"}]}"#
            .to_vec(),
    ));
    for (what, body) in bodies {
        let resp = post(&gw, "/v1/chat/completions", body, &[]).await;
        assert_eq!(resp.status(), 409, "{what}");
        assert_blocked(resp, "secret.aws_access_key_id").await;
    }
    assert!(
        mock.received().await.is_empty(),
        "the upstream saw none of them"
    );

    // A redacted value takes the invisible characters inside it along; those around it stay.
    let text = "mail \u{E0020}jane\u{E0041}.doe@\u{202E}example.com\u{200F} now";
    let body = json!({"model": "m", "messages": [{"role": "user", "content": text}]}).to_string();
    let resp = post(&gw, "/v1/chat/completions", body.into_bytes(), &[]).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-promptgate-decision"], "redact");
    let got = mock.received().await;
    let sent: Value = serde_json::from_str(got[0]["body"].as_str().expect("body")).expect("json");
    assert_eq!(
        sent["messages"][0]["content"],
        "mail \u{E0020}[EMAIL]\u{200F} now"
    );
}

#[tokio::test]
async fn redaction_rewrites_only_the_matched_span_and_the_length_is_right() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock.url()).await;
    // Odd spacing and key order must survive: only the string with the email changes.
    let body = "{ \"model\" : \"m\",\n  \"messages\": [ {\"content\": \"mail jane@example.com now\", \"role\":\"user\"} ],\"temperature\":0.5 }";
    let resp = post(&gw, "/v1/chat/completions", body.as_bytes().to_vec(), &[]).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-promptgate-decision"], "redact");
    assert_eq!(resp.headers()["x-promptgate-rules"], "pii.email");
    let got = mock.received().await;
    let want = body.replace("jane@example.com", "[EMAIL]");
    assert_eq!(got[0]["body"], want.as_str());
    assert_eq!(
        recorded_header(&got[0], "content-length"),
        Some(want.len().to_string().as_str())
    );

    // Tool arguments: redacted inside the nested document, the edit spliced into the outer string.
    let args = json!({"to": "jane@example.com", "n": 1}).to_string();
    let body = json!({"model": "m", "messages": [{"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "send", "arguments": args}}]}]}).to_string();
    post(&gw, "/v1/chat/completions", body.into_bytes(), &[]).await;
    let got = mock.received().await;
    let sent: Value = serde_json::from_str(got[1]["body"].as_str().expect("body")).expect("json");
    let args: Value = serde_json::from_str(
        sent["messages"][0]["tool_calls"][0]["function"]["arguments"]
            .as_str()
            .expect("args"),
    )
    .expect("args json");
    assert_eq!(args, json!({"to": "[EMAIL]", "n": 1}));
}

/// A redacted string was re-encoded whole: escapes outside the matched span (`\u00e9`, `\/`, `\u0041`, a
/// surrogate pair) reached the upstream rewritten. Only the raw bytes of the span may change — in keys, in
/// values and inside tool-call arguments (a JSON document in a string, whose own escapes stay too).
#[tokio::test]
async fn redaction_keeps_escapes_outside_the_matched_span() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock.url()).await;
    let cases: &[(&str, &str)] = &[
        (
            r#"{"model":"m","messages":[{"role":"user","content":"caf\u00e9 \/ mail jane@example.com \u0041\u00E9 \ud83d\ude00\t\u001f"}]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"caf\u00e9 \/ mail [EMAIL] \u0041\u00E9 \ud83d\ude00\t\u001f"}]}"#,
        ),
        // An escape inside the span goes with it; the ones around it stay.
        (
            r#"{"model":"m","input":"\u004dail \u006aane@example.co\u006d\/x","metadata":{"k\u00e9y jane@example.com":"v"}}"#,
            r#"{"model":"m","input":"\u004dail [EMAIL]\/x","metadata":{"k\u00e9y [EMAIL]":"v"}}"#,
        ),
        (
            r#"{"model":"m","messages":[{"role":"assistant","content":null,"tool_calls":[{"id":"c","type":"function","function":{"name":"send","arguments":"{\"to\": \"jane@example.com\", \"note\": \"caf\\u00e9 \\/ \u00e9\"}"}}]}]}"#,
            r#"{"model":"m","messages":[{"role":"assistant","content":null,"tool_calls":[{"id":"c","type":"function","function":{"name":"send","arguments":"{\"to\": \"[EMAIL]\", \"note\": \"caf\\u00e9 \\/ \u00e9\"}"}}]}]}"#,
        ),
        (
            r#"{"model":"m","messages":[{"role":"tool","tool_call_id":"c","content":"{\u0022to\u0022:\u0022jane@example.com\u0022}"}]}"#,
            r#"{"model":"m","messages":[{"role":"tool","tool_call_id":"c","content":"{\u0022to\u0022:\u0022[EMAIL]\u0022}"}]}"#,
        ),
    ];
    for (i, (body, want)) in cases.iter().enumerate() {
        let resp = post(&gw, "/v1/chat/completions", body.as_bytes().to_vec(), &[]).await;
        assert_eq!(resp.status(), 200, "{body}");
        assert_eq!(resp.headers()["x-promptgate-decision"], "redact", "{body}");
        let got = mock.received().await;
        assert_eq!(got[i]["body"], *want);
        assert_eq!(
            recorded_header(&got[i], "content-length"),
            Some(want.len().to_string().as_str())
        );
    }
}

#[tokio::test]
async fn clean_requests_arrive_byte_identical() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock.url()).await;
    let bodies: Vec<Vec<u8>> = vec![
        br#"{"model":"m","messages":[{"role":"user","content":"hello"}]}"#.to_vec(),
        "{\n  \"messages\" : [ { \"role\" : \"user\", \"content\" : \"caf\\u00e9 \\\"quoted\\\" \\/ \u{2713}\" } ],\n  \"model\":\"m\", \"temperature\": 1e0 }".as_bytes().to_vec(),
        json!({"model": "m", "messages": [{"role": "user", "content": "order 1234-5678, version gpt-4o-2024-08-06, id 550e8400-e29b-41d4-a716-446655440000"}]}).to_string().into_bytes(),
        json!({"model": "m", "input": "x".repeat(200_000)}).to_string().into_bytes(),
    ];
    for body in &bodies {
        let resp = post(&gw, "/v1/chat/completions", body.clone(), &[]).await;
        let status = resp.status();
        let decision = resp.headers().get("x-promptgate-decision").cloned();
        assert!(!resp.headers().contains_key("x-promptgate-rules"));
        assert_eq!(status, 200, "{}", resp.text().await.unwrap_or_default());
        assert_eq!(decision.expect("decision"), "allow");
    }
    let got = mock.received().await;
    assert_eq!(got.len(), bodies.len());
    for (rec, body) in got.iter().zip(&bodies) {
        let b64 = rec["body_b64"].as_str().expect("b64");
        assert_eq!(b64, base64(body), "byte-identical");
    }
}

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            s.push(if i <= c.len() {
                T[(n >> (18 - 6 * i) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    s
}

#[tokio::test]
async fn bad_bodies_are_refused_before_the_upstream() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start_with(GatewayOpts::new(mock.url()).toml("[limits]\nmax_body_bytes = 100000\nmax_decoded_body_bytes = 1000000\n[inspect]\nmax_json_depth = 8")).await;
    let deep = format!("{}1{}", "[".repeat(20), "]".repeat(20));
    /// (what, body, headers, status, error code)
    type Case = (
        &'static str,
        Vec<u8>,
        Vec<(&'static str, &'static str)>,
        u16,
        &'static str,
    );
    let cases: Vec<Case> = vec![
        (
            "invalid json",
            b"{\"model\": ".to_vec(),
            vec![],
            400,
            "invalid_body",
        ),
        (
            "duplicate keys",
            br#"{"model":"m","model":"n"}"#.to_vec(),
            vec![],
            400,
            "invalid_body",
        ),
        ("too deep", deep.into_bytes(), vec![], 400, "invalid_body"),
        (
            "invalid utf-8",
            b"{\"model\":\"\xff\"}".to_vec(),
            vec![],
            400,
            "invalid_body",
        ),
        (
            "oversize with length",
            vec![b' '; 100_001],
            vec![],
            413,
            "body_too_large",
        ),
        (
            "oversize chunked",
            vec![b' '; 150_000],
            vec![("transfer-encoding", "chunked")],
            413,
            "body_too_large",
        ),
        (
            "unknown encoding",
            b"{}".to_vec(),
            vec![("content-encoding", "compress")],
            415,
            "unsupported_encoding",
        ),
        (
            "gzip bomb",
            gzip(&vec![b' '; 5_000_000]),
            vec![("content-encoding", "gzip")],
            413,
            "body_too_large",
        ),
    ];
    for (what, body, headers, status, code) in cases {
        let resp = post(&gw, "/v1/chat/completions", body, &headers).await;
        assert_eq!(resp.status(), status, "{what}");
        assert_eq!(resp.headers()["x-should-retry"], "false", "{what}");
        let v: Value = resp.json().await.expect("json");
        assert_eq!(v["error"]["code"], code, "{what}");
    }
    assert!(mock.received().await.is_empty());
}

#[tokio::test]
async fn a_large_blocked_body_never_reaches_the_upstream() {
    // Over 64 KiB the body is held in `request_body_filter`: the upstream may see the header, never the body.
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock.url()).await;
    let body = json!({"model": "m", "messages": [{"role": "user", "content": format!("{} {AWS}", "x".repeat(100_000))}]}).to_string();
    for headers in [vec![], vec![("transfer-encoding", "chunked")]] {
        let resp = post(
            &gw,
            "/v1/chat/completions",
            body.clone().into_bytes(),
            &headers,
        )
        .await;
        assert_blocked(resp, "secret.aws_access_key_id").await;
    }
    assert!(
        mock.received().await.is_empty(),
        "no body byte reached the upstream"
    );
}

const FAULTY_RULE: &str = "[[rule]]\nid = \"test.faulty\"\ndescription = \"panics on every candidate\"\nregex = { pattern = 'boom[0-9]' }\nvalidator = \"fault_injection\"\naction = \"log\"\n";

#[tokio::test]
async fn a_failing_rule_fails_closed_unless_fail_open_is_set() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("faulty.toml"), FAULTY_RULE).expect("write");
    let mock = MockUpstream::start().await;
    let body =
        json!({"model": "m", "messages": [{"role": "user", "content": "boom1"}]}).to_string();

    let gw = Gateway::start_with(
        GatewayOpts::new(mock.url())
            .rules(dir.path())
            .env("PROMPTGATE_ALLOW_FAULT_INJECTION", "1"),
    )
    .await;
    let resp = post(&gw, "/v1/chat/completions", body.clone().into_bytes(), &[]).await;
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["x-should-retry"], "false");
    let v: Value = resp.json().await.expect("json");
    assert_eq!(v["error"]["code"], "inspection_failed");
    assert!(mock.received().await.is_empty());
    assert_eq!(
        gw.metric_eventually(
            r#"promptgate_inspection_errors_total{outcome="fail_closed"}"#,
            1.0
        )
        .await,
        Some(1.0)
    );
    // The gateway keeps serving.
    let ok = post(
        &gw,
        "/v1/chat/completions",
        br#"{"model":"m","messages":[]}"#.to_vec(),
        &[],
    )
    .await;
    assert_eq!(ok.status(), 200);
    drop(gw);

    let gw = Gateway::start_with(
        GatewayOpts::new(mock.url())
            .rules(dir.path())
            .env("PROMPTGATE_ALLOW_FAULT_INJECTION", "1")
            .toml("[policy]\nfail_open = true"),
    )
    .await;
    let resp = post(&gw, "/v1/chat/completions", body.clone().into_bytes(), &[]).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-promptgate-decision"], "error");
    assert_eq!(
        gw.metric_eventually(
            r#"promptgate_inspection_errors_total{outcome="fail_open"}"#,
            1.0
        )
        .await,
        Some(1.0)
    );
    assert_eq!(
        mock.received().await.last().expect("forwarded")["body"],
        body.as_str()
    );

    // Without the test switch the rule cannot even load.
    let (code, out) = {
        let out = std::process::Command::new(crate::support::binary())
            .arg("check")
            .arg(dir.path())
            .output()
            .expect("check");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    assert_eq!(code, Some(1));
    assert!(out.contains("fault_injection\" is for tests only"), "{out}");
}

#[tokio::test]
async fn monitor_mode_forwards_unchanged_and_says_what_would_have_happened() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start_with(GatewayOpts::new(mock.url()).toml("[policy]\nmode = \"monitor\""))
        .await;
    let body = json!({"model": "m", "messages": [{"role": "user", "content": format!("{AWS} and jane@example.com")}]}).to_string();
    let resp = post(&gw, "/v1/chat/completions", body.clone().into_bytes(), &[]).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-promptgate-decision"], "monitor");
    assert_eq!(
        resp.headers()["x-promptgate-rules"],
        "pii.email,secret.aws_access_key_id"
    );
    assert_eq!(mock.received().await[0]["body"], body.as_str());
}

#[tokio::test]
async fn per_rule_monitor_mode_and_log_actions_pass_unchanged() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("r.toml"),
        "[[rule]]\nid = \"t.watch\"\ndescription = \"watched\"\nkeywords = { terms = [\"watchword\"] }\naction = \"block\"\nmode = \"monitor\"\n\n[[rule]]\nid = \"t.log\"\ndescription = \"logged\"\nkeywords = { terms = [\"logword\"] }\naction = \"log\"\n",
    )
    .expect("write");
    let mock = MockUpstream::start().await;
    let gw = Gateway::start_with(GatewayOpts::new(mock.url()).rules(dir.path())).await;
    let say = |text: &'static str| {
        let gw = &gw;
        async move {
            let body =
                json!({"model": "m", "messages": [{"role": "user", "content": text}]}).to_string();
            let r = post(gw, "/v1/chat/completions", body.into_bytes(), &[]).await;
            let decision = r.headers()["x-promptgate-decision"]
                .to_str()
                .expect("ascii")
                .to_string();
            (r.status().as_u16(), decision, r)
        }
    };
    let (status, decision, _) = say("the watchword").await;
    assert_eq!((status, decision.as_str()), (200, "monitor"));
    let (status, decision, r) = say("the logword").await;
    assert_eq!((status, decision.as_str()), (200, "allow"));
    assert_eq!(r.headers()["x-promptgate-rules"], "t.log");
    assert_eq!(mock.received().await.len(), 2);
}

#[tokio::test]
async fn opaque_inputs_and_unknown_routes_follow_their_policy() {
    let mock = MockUpstream::start().await;
    let image = json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}]}).to_string();
    let tokens = json!({"model": "m", "prompt": [[1, 2, 3], [4, 5]]}).to_string();

    let gw = Gateway::start(&mock.url()).await;
    assert_eq!(
        post(&gw, "/v1/chat/completions", image.clone().into_bytes(), &[])
            .await
            .status(),
        200,
        "pass by default"
    );
    drop(gw);

    let gw = Gateway::start_with(
        GatewayOpts::new(mock.url())
            .toml("[inspect]\nopaque_inputs = \"deny\"\nunknown_routes = \"deny\""),
    )
    .await;
    for (path, body) in [
        ("/v1/chat/completions", &image),
        ("/v1/completions", &tokens),
    ] {
        let r = post(&gw, path, body.clone().into_bytes(), &[]).await;
        assert_eq!(r.status(), 409, "{path}");
        let v: Value = r.json().await.expect("json");
        assert_eq!(v["error"]["code"], "opaque_input_denied");
        assert_eq!(v["error"]["policy"], "inspect.opaque_inputs");
    }
    let r = post(&gw, "/v1/files", b"{}".to_vec(), &[]).await;
    assert_eq!(r.status(), 403);
    // Denied whatever the body: a request without one is refused too.
    let r = reqwest::get(gw.url("/v1/files")).await.expect("get");
    assert_eq!(r.status(), 403);
    drop(gw);

    let gw = Gateway::start_with(
        GatewayOpts::new(mock.url()).toml("[inspect]\nunknown_routes = \"pass\""),
    )
    .await;
    let secret = json!({"note": AWS}).to_string();
    // The mock has no /v1/files: its 404 shows the request was forwarded uninspected.
    assert_eq!(
        post(&gw, "/v1/files", secret.clone().into_bytes(), &[])
            .await
            .status(),
        404,
        "pass: forwarded uninspected"
    );
    drop(gw);
    let gw = Gateway::start(&mock.url()).await;
    assert_eq!(
        post(&gw, "/v1/files", secret.into_bytes(), &[])
            .await
            .status(),
        409,
        "inspect (default)"
    );
    let paths: Vec<String> = mock
        .received()
        .await
        .iter()
        .map(|r| r["path"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(paths, ["/v1/chat/completions", "/v1/files"]);
}

/// A compressed body that a rule redacts is rewritten from its decoded text: it must go upstream as the plain
/// JSON it now is, without the `Content-Encoding` the client gave the original (an upstream would otherwise try
/// to gunzip plain JSON and refuse the request). A clean compressed body goes as it came.
#[tokio::test]
async fn a_redacted_compressed_body_goes_upstream_plain_without_its_encoding() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock.url()).await;
    let text = "my ssn is 078-05-1120 thanks";
    let redacted =
        json!({"model": "m", "messages": [{"role": "user", "content": text}]}).to_string();
    let clean =
        json!({"model": "m", "messages": [{"role": "user", "content": "hello"}]}).to_string();
    for (what, body, enc) in [
        ("gzip", gzip(redacted.as_bytes()), "gzip"),
        ("br", brotli(redacted.as_bytes()), "br"),
    ] {
        let resp = post(
            &gw,
            "/v1/chat/completions",
            body,
            &[("content-encoding", enc)],
        )
        .await;
        assert_eq!(resp.status(), 200, "{what}");
        assert_eq!(resp.headers()["x-promptgate-decision"], "redact", "{what}");
        let got = mock.received().await;
        let rec = got.last().expect("received");
        assert_eq!(recorded_header(rec, "content-encoding"), None, "{what}");
        let sent: Value =
            serde_json::from_str(rec["body"].as_str().expect("body")).expect("plain JSON");
        assert_eq!(
            sent["messages"][0]["content"], "my ssn is [SSN] thanks",
            "{what}"
        );
    }
    let resp = post(
        &gw,
        "/v1/chat/completions",
        gzip(clean.as_bytes()),
        &[("content-encoding", "gzip")],
    )
    .await;
    // (The mock does not decode bodies: it refuses this one, but it received it.)
    assert_eq!(header(&resp, "x-mock"), Some("1"));
    let got = mock.received().await;
    assert_eq!(
        recorded_header(got.last().expect("received"), "content-encoding"),
        Some("gzip"),
        "a body the gateway did not change goes as it came"
    );
}
