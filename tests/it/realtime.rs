//! Realtime sessions (`/v1/realtime` over WebSocket) through the gateway, seen from a client: the handshake's
//! identity and refusals, client events inspected before the upstream sees them, server events through the
//! exact hold-back, blocks, limits, frames and the audit trail. The upstream is the mock's realtime endpoint,
//! which records what reached it.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::sdk::run_sdk_script;
use crate::support::{
    chat_as, key_entry, wait_file_events, ws_connect, ws_next_json, Gateway, GatewayOpts, KeysFile,
    MockUpstream,
};

const SECRET: &str = "sk-proj-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcd";
const EMAIL: &str = "bob.smith@example.com";
const PROVIDER_KEY: &str = "sk-provider-test-0123456789";

type Ws = WebSocketStream<TcpStream>;

fn ws_url(gw: &Gateway) -> String {
    gw.url("/v1/realtime?model=gpt-realtime")
        .replacen("http://", "ws://", 1)
}

async fn open(gw: &Gateway) -> Ws {
    let (ws, resp) = ws_connect(
        &ws_url(gw),
        &[("authorization", "Bearer sk-test-client")],
        &[],
    )
    .await
    .expect("the session opens");
    assert_eq!(resp.status(), 101);
    ws
}

/// The next event of one of `types`, skipping the others.
async fn until(ws: &mut Ws, types: &[&str]) -> Value {
    for _ in 0..10_000 {
        let v = ws_next_json(ws).await;
        if types.iter().any(|t| v["type"] == *t) {
            return v;
        }
    }
    panic!("no event of {types:?}");
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into()))
        .await
        .expect("send");
}

fn user_text(text: &str) -> Value {
    json!({"type": "conversation.item.create", "item": {"type": "message", "role": "user",
           "content": [{"type": "input_text", "text": text}]}})
}

/// The events of the response `response.create` starts, up to and including its `response.done`.
async fn response(ws: &mut Ws) -> Vec<Value> {
    send(ws, json!({"type": "response.create"})).await;
    let mut events = Vec::new();
    loop {
        let v = ws_next_json(ws).await;
        let done = v["type"] == "response.done";
        events.push(v);
        if done {
            return events;
        }
    }
}

/// The text the client got from a response's deltas of `kind` (`response.output_text.delta`, …).
fn deltas(events: &[Value], kind: &str) -> String {
    events
        .iter()
        .filter(|v| v["type"] == kind)
        .filter_map(|v| v["delta"].as_str())
        .collect()
}

/// Every event the mock received in its sessions, in order.
async fn received(mock: &MockUpstream) -> Vec<Value> {
    mock.realtime_sessions()
        .await
        .iter()
        .flat_map(|s| s["received"].as_array().cloned().unwrap_or_default())
        .collect()
}

/// A gateway in `gateway_keys` mode with this keys file (`PG_TEST_PROVIDER_KEY` holds the provider key).
async fn keys_gateway(mock: &MockUpstream, keys: &KeysFile) -> Gateway {
    Gateway::start_with(
        GatewayOpts::new(mock.url())
            .toml(&format!(
                "[auth]\nmode = \"gateway_keys\"\nkeys_file = {:?}\n",
                keys.path.display().to_string()
            ))
            .env("PG_TEST_PROVIDER_KEY", PROVIDER_KEY),
    )
    .await
}

async fn start() -> (MockUpstream, Gateway) {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock.url()).await;
    (mock, gw)
}

#[tokio::test]
async fn the_openai_sdk_realtime_client_round_trips_and_is_governed() {
    let (mock, gw) = start().await;
    let email_text = format!("write to {EMAIL} today");
    let out = run_sdk_script(
        "sdk_realtime.py",
        &gw,
        &[("SECRET", SECRET), ("EMAIL_TEXT", &email_text)],
    )
    .await;
    assert_eq!(out["first"], "session.created", "{out}");
    assert_eq!(out["response_end"], "response.done", "{out}");
    assert_eq!(out["text"], "Hello realtime", "the item came back: {out}");
    assert_eq!(out["secret"]["type"], "error", "{out}");
    assert_eq!(out["secret"]["error"]["code"], "policy_blocked", "{out}");
    assert_eq!(out["secret"]["error"]["event_id"], "evt_secret", "{out}");
    assert!(
        !out.to_string().contains(SECRET),
        "the value never comes back"
    );
    let echoed = out["email"].to_string();
    assert!(
        echoed.contains("[EMAIL]") && !echoed.contains(EMAIL),
        "{out}"
    );
    let upstream = received(&mock).await;
    let seen = serde_json::to_string(&upstream).expect("json");
    assert!(
        !seen.contains(SECRET),
        "the secret never reached the upstream"
    );
    assert!(
        !seen.contains(EMAIL) && seen.contains("write to [EMAIL] today"),
        "{seen}"
    );
    assert!(seen.contains("Hello realtime"));
}

#[tokio::test]
async fn a_value_split_across_text_deltas_at_every_offset_never_reaches_the_client() {
    let (mock, gw) = start().await;
    let text = format!("mail {EMAIL} now");
    let mut ws = open(&gw).await;
    until(&mut ws, &["session.created"]).await;
    for cut in 1..text.len() {
        let (a, b) = text.split_at(cut);
        mock.realtime_script(json!({"deltas": [a, b]})).await;
        let events = response(&mut ws).await;
        let released = deltas(&events, "response.output_text.delta");
        assert_eq!(released, "mail [EMAIL] now", "cut {cut}");
        for v in &events {
            let s = v.to_string();
            assert!(
                !s.contains("bob.smith") && !s.contains("example.com"),
                "cut {cut}: {s}"
            );
        }
        let done = events
            .iter()
            .find(|v| v["type"] == "response.output_text.done")
            .expect("the text's done event");
        assert_eq!(
            done["text"], released,
            "cut {cut}: the done event agrees with the deltas"
        );
    }
}

#[tokio::test]
async fn function_call_argument_deltas_are_held_and_redacted_like_text() {
    let (mock, gw) = start().await;
    let args = format!(r#"{{"to":"{EMAIL}","body":"hi"}}"#);
    let mut ws = open(&gw).await;
    until(&mut ws, &["session.created"]).await;
    for cut in (1..args.len()).step_by(3) {
        let (a, b) = args.split_at(cut);
        mock.realtime_script(json!({"kind": "function_call", "deltas": [a, b]}))
            .await;
        let events = response(&mut ws).await;
        let released = deltas(&events, "response.function_call_arguments.delta");
        assert!(
            !events.iter().any(|v| v.to_string().contains("bob.smith")),
            "cut {cut}"
        );
        let parsed: Value = serde_json::from_str(&released).expect("the arguments stay JSON");
        assert_eq!(parsed["to"], "[EMAIL]", "cut {cut}");
    }
}

#[tokio::test]
async fn a_block_mid_response_cancels_it_upstream_and_nothing_after_it_leaves() {
    let (mock, gw) = start().await;
    let (a, b) = SECRET.split_at(12);
    let mut ws = open(&gw).await;
    until(&mut ws, &["session.created"]).await;
    mock.realtime_script(json!({
        "deltas": ["Here it is: ", a, b, " and more text after it"],
        "hold": "after-first",
    }))
    .await;
    send(&mut ws, json!({"type": "response.create"})).await;
    let first = until(&mut ws, &["response.output_text.delta"]).await;
    assert!(
        first["delta"]
            .as_str()
            .is_some_and(|d| d.starts_with("Here")),
        "{first}"
    );
    mock.release("after-first").await;
    let err = until(&mut ws, &["error"]).await;
    assert_eq!(err["error"]["code"], "policy_blocked");
    assert!(!err.to_string().contains(SECRET));
    // Then only the emptied end of the response: nothing of the secret, nothing after it.
    let mut rest = Vec::new();
    loop {
        let v = ws_next_json(&mut ws).await;
        let done = v["type"] == "response.done";
        rest.push(v);
        if done {
            break;
        }
    }
    let after = serde_json::to_string(&rest).expect("json");
    assert!(
        !after.contains("sk-proj") && !after.contains("more text"),
        "{after}"
    );
    let done = rest.last().expect("done");
    assert_eq!(done["response"]["status"], "cancelled");
    // The upstream was asked to stop generating.
    let got = received(&mock).await;
    assert!(
        got.iter().any(|e| e["type"] == "response.cancel"),
        "response.cancel reached the upstream: {got:?}"
    );
    // The session goes on.
    mock.realtime_script(json!({"deltas": ["still ", "here"]}))
        .await;
    let events = response(&mut ws).await;
    assert_eq!(deltas(&events, "response.output_text.delta"), "still here");
}

#[tokio::test]
async fn client_events_are_inspected_in_every_text_field_before_the_upstream_sees_them() {
    let (mock, gw) = start().await;
    let mut ws = open(&gw).await;
    until(&mut ws, &["session.created"]).await;
    let blocked = [
        json!({"type": "session.update", "event_id": "e1", "session": {"instructions": format!("use {SECRET}")}}),
        json!({"type": "response.create", "event_id": "e2", "response": {"tools": [{"type": "function", "name": "f", "description": SECRET}]}}),
        json!({"type": "conversation.item.create", "event_id": "e3", "item": {"type": "function_call_output", "call_id": "c1", "output": SECRET}}),
    ];
    for (i, ev) in blocked.iter().enumerate() {
        send(&mut ws, ev.clone()).await;
        let err = until(&mut ws, &["error"]).await;
        assert_eq!(err["error"]["code"], "policy_blocked", "event {i}");
        assert_eq!(err["error"]["event_id"], format!("e{}", i + 1));
    }
    // Redacted in place: the upstream gets the event with the span replaced.
    send(
        &mut ws,
        json!({"type": "session.update", "session": {"instructions": format!("reply to {EMAIL}")}}),
    )
    .await;
    let updated = until(&mut ws, &["session.updated"]).await;
    assert!(
        updated.to_string().contains("reply to [EMAIL]"),
        "{updated}"
    );
    let got = serde_json::to_string(&received(&mock).await).expect("json");
    assert!(!got.contains(SECRET) && !got.contains(EMAIL), "{got}");
    assert!(got.contains("reply to [EMAIL]"));
}

#[tokio::test]
async fn a_gateway_key_in_the_browser_subprotocol_identifies_and_never_reaches_the_upstream() {
    let mock = MockUpstream::start().await;
    let secret = "pgk_realtime_browser_secret";
    let keys = KeysFile::new(&key_entry(
        "browser-app",
        secret,
        "upstream_key_env = \"PG_TEST_PROVIDER_KEY\"",
    ));
    let gw = keys_gateway(&mock, &keys).await;
    let key_protocol = format!("openai-insecure-api-key.{secret}");
    let (mut ws, resp) = ws_connect(&ws_url(&gw), &[], &["realtime", &key_protocol])
        .await
        .expect("the session opens with the key in a subprotocol");
    assert_eq!(resp.status(), 101);
    assert_eq!(
        resp.headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok()),
        Some("realtime")
    );
    until(&mut ws, &["session.created"]).await;
    let sessions = mock.realtime_sessions().await;
    let hs = serde_json::to_string(&sessions[0]).expect("json");
    assert!(
        !hs.contains(secret),
        "the gateway key never reaches the upstream: {hs}"
    );
    assert_eq!(
        sessions[0]["headers"]["authorization"],
        format!("Bearer {PROVIDER_KEY}"),
        "the provider key is injected instead"
    );
    // Without a key, or with a wrong one: refused before the upstream is contacted.
    for protocols in [
        vec!["realtime"],
        vec!["realtime", "openai-insecure-api-key.wrong"],
    ] {
        let err = ws_connect(&ws_url(&gw), &[], &protocols)
            .await
            .expect_err("refused");
        let tokio_tungstenite::tungstenite::Error::Http(resp) = err else {
            panic!("an HTTP refusal: {err:?}");
        };
        assert_eq!(resp.status(), 401);
        let body: Value = serde_json::from_slice(resp.body().as_deref().unwrap_or_default())
            .expect("an OpenAI-shaped error");
        assert_eq!(body["error"]["code"], "invalid_api_key");
    }
    assert_eq!(mock.realtime_sessions().await.len(), 1);
}

#[tokio::test]
async fn the_session_holds_one_permit_released_when_the_client_vanishes_mid_response() {
    let mock = MockUpstream::start().await;
    let secret = "pgk_realtime_permit";
    let keys = KeysFile::new(&key_entry(
        "one-at-a-time",
        secret,
        "limits = { max_concurrent = 1 }",
    ));
    let gw = keys_gateway(&mock, &keys).await;
    let bearer = format!("Bearer {secret}");
    let (mut ws, _) = ws_connect(&ws_url(&gw), &[("authorization", &bearer)], &[])
        .await
        .expect("opens");
    until(&mut ws, &["session.created"]).await;
    // A second session of the same key is over the concurrency limit.
    let err = ws_connect(&ws_url(&gw), &[("authorization", &bearer)], &[])
        .await
        .expect_err("over the limit");
    let tokio_tungstenite::tungstenite::Error::Http(resp) = err else {
        panic!("an HTTP refusal: {err:?}");
    };
    assert_eq!(resp.status(), 429);
    // The client vanishes in the middle of a response.
    mock.realtime_script(json!({"deltas": ["one ", "two"], "hold": "vanish"}))
        .await;
    send(&mut ws, json!({"type": "response.create"})).await;
    until(&mut ws, &["response.output_text.delta"]).await;
    drop(ws);
    // The upstream leg is closed and the permit given back: a new session opens.
    let upstream = mock.realtime_session_when(0, |s| s["ended"] == true).await;
    assert_eq!(upstream["ended"], true, "the upstream leg was closed");
    // The permit goes back as the session's end is recorded, a moment after its legs close.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match ws_connect(&ws_url(&gw), &[("authorization", &bearer)], &[]).await {
            Ok(_) => break,
            Err(e) => assert!(
                tokio::time::Instant::now() < deadline,
                "the permit was never given back: {e:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn oversize_messages_close_with_1009_and_a_ping_is_answered_while_a_delta_is_held() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start_with(
        GatewayOpts::new(mock.url()).toml("[limits]\nmax_ws_message_bytes = 4096\n"),
    )
    .await;
    let mut ws = open(&gw).await;
    until(&mut ws, &["session.created"]).await;
    mock.realtime_script(json!({"deltas": ["mail bob.smith@exa", "mple.com"], "hold": "held"}))
        .await;
    send(&mut ws, json!({"type": "response.create"})).await;
    until(&mut ws, &["response.created"]).await;
    ws.send(Message::Ping(b"still there?".to_vec().into()))
        .await
        .expect("ping");
    let pong = loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("an answer in time")
            .expect("open")
            .expect("frame");
        match m {
            Message::Pong(p) => break p,
            Message::Text(t) => assert!(!t.contains("bob.smith"), "nothing held leaks: {t}"),
            _ => {}
        }
    };
    assert_eq!(&pong[..], b"still there?");
    mock.release("held").await;
    let done = until(&mut ws, &["response.output_text.done"]).await;
    assert_eq!(done["text"], "mail [EMAIL]");
    until(&mut ws, &["response.done"]).await;
    // A message over the limit closes the session with 1009.
    let big = "x".repeat(8192);
    send(&mut ws, user_text(&big)).await;
    let code = loop {
        match ws.next().await {
            Some(Ok(Message::Close(f))) => break f.map(|f| f.code),
            Some(Ok(_)) => continue,
            other => panic!("a close frame: {other:?}"),
        }
    };
    assert_eq!(code, Some(CloseCode::Size));
    let got = serde_json::to_string(&received(&mock).await).expect("json");
    assert!(
        !got.contains(&big),
        "the oversize message was not forwarded"
    );
}

#[tokio::test]
async fn fragmented_masked_frames_are_reassembled_and_unmasked_ones_refused() {
    let (mock, gw) = start().await;
    let mut tcp = TcpStream::connect(gw.addr).await.expect("connect");
    let head = "GET /v1/realtime?model=gpt-realtime HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nAuthorization: Bearer sk-test-client\r\n\r\n";
    tcp.write_all(head.as_bytes()).await.expect("head");
    let mut buf = vec![0u8; 4096];
    let n = tcp.read(&mut buf).await.expect("101");
    let resp = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(resp.starts_with("HTTP/1.1 101"), "{resp}");
    assert!(
        resp.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "the key accepted per RFC 6455: {resp}"
    );
    // One event in three masked fragments (text, continuation, final continuation), an email across them.
    let event = user_text(&format!("fragments carry {EMAIL} along")).to_string();
    let bytes = event.as_bytes();
    let (a, rest) = bytes.split_at(bytes.len() / 3);
    let (b, c) = rest.split_at(rest.len() / 2);
    for (i, (part, opcode)) in [(a, 0x1u8), (b, 0x0), (c, 0x0)].into_iter().enumerate() {
        let fin = i == 2;
        tcp.write_all(&frame(fin, opcode, part, Some([1, 2, 3, 4])))
            .await
            .expect("fragment");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let got = loop {
        let got = serde_json::to_string(&received(&mock).await).expect("json");
        if got.contains("fragments carry") || tokio::time::Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(got.contains("fragments carry [EMAIL] along"), "{got}");
    assert!(!got.contains(EMAIL));
    // An unmasked client frame breaks RFC 6455: the session is closed with 1002.
    tcp.write_all(&frame(true, 0x1, br#"{"type":"x"}"#, None))
        .await
        .expect("unmasked");
    let mut all = Vec::new();
    let closed = loop {
        let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf))
            .await
            .expect("in time")
            .unwrap_or(0);
        if n == 0 {
            break false;
        }
        all.extend_from_slice(&buf[..n]);
        // A close frame from the server (unmasked): 0x88, length, code 1002.
        if let Some(i) = all.windows(2).position(|w| w[0] == 0x88) {
            if all.len() >= i + 4 {
                break u16::from_be_bytes([all[i + 2], all[i + 3]]) == 1002;
            }
        }
    };
    assert!(closed, "closed with 1002");
}

/// One WebSocket frame (payloads under 126 bytes), masked with `mask` if given.
fn frame(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mut out = vec![(u8::from(fin) << 7) | opcode];
    match mask {
        Some(m) => {
            out.push(0x80 | payload.len() as u8);
            out.extend_from_slice(&m);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ m[i % 4]));
        }
        None => {
            out.push(payload.len() as u8);
            out.extend_from_slice(payload);
        }
    }
    out
}

#[tokio::test]
async fn messages_over_the_rate_are_dropped_with_an_error_event() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start_with(
        GatewayOpts::new(mock.url()).toml("[limits]\nws_messages_per_second = 2\n"),
    )
    .await;
    let mut ws = open(&gw).await;
    until(&mut ws, &["session.created"]).await;
    for i in 0..6 {
        send(&mut ws, user_text(&format!("message {i}"))).await;
    }
    // Six messages sent at once meet at most two one-second windows: at least two are dropped.
    let mut limited = 0;
    let mut created = 0;
    while limited + created < 6 {
        let v = until(&mut ws, &["error", "conversation.item.created"]).await;
        if v["type"] == "error" {
            assert_eq!(v["error"]["code"], "rate_limit_exceeded", "{v}");
            limited += 1;
        } else {
            created += 1;
        }
    }
    assert!(
        limited >= 2 && created <= 4,
        "limited {limited}, created {created}"
    );
    let got = received(&mock).await;
    assert_eq!(
        got.iter()
            .filter(|e| e["type"] == "conversation.item.create")
            .count(),
        created
    );
}

#[tokio::test]
async fn tokens_of_each_response_are_settled_against_the_callers_quota() {
    let mock = MockUpstream::start().await;
    let secret = "pgk_realtime_tokens";
    let keys = KeysFile::new(&key_entry(
        "tokens",
        secret,
        "limits = { tokens_per_minute = 100 }",
    ));
    let gw = keys_gateway(&mock, &keys).await;
    let bearer = format!("Bearer {secret}");
    let (mut ws, _) = ws_connect(&ws_url(&gw), &[("authorization", &bearer)], &[])
        .await
        .expect("opens");
    until(&mut ws, &["session.created"]).await;
    assert_eq!(
        chat_as(&gw, secret, &[]).await.status(),
        200,
        "under the quota"
    );
    mock.realtime_script(
        json!({"deltas": ["a", "b"], "usage": {"input_tokens": 150, "output_tokens": 50}}),
    )
    .await;
    let events = response(&mut ws).await;
    assert_eq!(
        events.last().expect("done")["response"]["usage"]["total_tokens"],
        200
    );
    let r = chat_as(&gw, secret, &[]).await;
    assert_eq!(r.status(), 429, "the response's 200 tokens were counted");
}

#[tokio::test]
async fn each_response_and_the_session_leave_a_decision_event_without_the_values() {
    let mock = MockUpstream::start().await;
    let audit = tempfile::tempdir().expect("tempdir");
    let gw = Gateway::start_with(GatewayOpts::new(mock.url()).toml(&format!(
        "[audit]\ndir = {:?}\n",
        audit.path().display().to_string()
    )))
    .await;
    let mut ws = open(&gw).await;
    until(&mut ws, &["session.created"]).await;
    send(&mut ws, user_text(&format!("to {EMAIL}"))).await;
    until(&mut ws, &["conversation.item.created"]).await;
    mock.realtime_script(json!({"deltas": ["call ", EMAIL]}))
        .await;
    response(&mut ws).await;
    let (a, b) = SECRET.split_at(10);
    mock.realtime_script(json!({"deltas": [a, b]})).await;
    response(&mut ws).await;
    assert_eq!(
        gw.metric("promptgate_realtime_sessions_open").await,
        Some(1.0)
    );
    ws.close(None).await.expect("close");
    let events = wait_file_events(audit.path(), 3).await;
    let all = serde_json::to_string(&events).expect("json");
    assert!(!all.contains(EMAIL) && !all.contains(SECRET), "{all}");
    let realtime: Vec<&Value> = events.iter().filter(|e| e["route"] == "realtime").collect();
    assert_eq!(realtime.len(), 3, "{all}");
    let (first, second, session) = (realtime[0], realtime[1], realtime[2]);
    assert_eq!(first["realtime"]["scope"], "response");
    assert_eq!(first["decision"]["request"], "redact");
    assert_eq!(first["decision"]["response"], "redact");
    assert_eq!(second["type"], "chat.blocked");
    assert_eq!(second["blocked_mid_stream"], true);
    assert_eq!(second["rules"][0]["id"], "secret.openai_api_key");
    assert_eq!(session["realtime"]["scope"], "session");
    assert_eq!(session["realtime"]["responses"], 2);
    assert_eq!(session["realtime"]["blocked"], 1);
    assert_eq!(session["model"], "gpt-realtime");
    assert_eq!(
        gw.metric_eventually("promptgate_realtime_sessions_open", 0.0)
            .await,
        Some(0.0)
    );
}

#[tokio::test]
async fn other_upgrades_still_meet_inspect_websocket_and_realtime_can_be_turned_off() {
    let mock = MockUpstream::start().await;
    let gw =
        Gateway::start_with(GatewayOpts::new(mock.url()).toml("[realtime]\nenabled = false\n"))
            .await;
    let err = ws_connect(
        &ws_url(&gw),
        &[("authorization", "Bearer sk-test-client")],
        &[],
    )
    .await
    .expect_err("refused");
    let tokio_tungstenite::tungstenite::Error::Http(resp) = err else {
        panic!("an HTTP refusal: {err:?}");
    };
    assert_eq!(resp.status(), 403, "inspect.websocket = deny");
    assert!(mock.realtime_sessions().await.is_empty());
}

#[tokio::test]
async fn a_shutdown_closes_open_sessions_with_1001_and_the_gateway_exits() {
    let (mock, mut gw) = start().await;
    let mut ws = open(&gw).await;
    until(&mut ws, &["session.created"]).await;
    gw.signal("TERM");
    let code = loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("closed in time")
        {
            Some(Ok(Message::Close(f))) => break f.map(|f| f.code),
            Some(Ok(_)) => continue,
            other => panic!("a close frame: {other:?}"),
        }
    };
    assert_eq!(code, Some(CloseCode::Away));
    assert_eq!(
        gw.wait_exit(Duration::from_secs(10)).await,
        Some(0),
        "{}",
        gw.stderr()
    );
    let upstream = mock.realtime_session_when(0, |s| s["ended"] == true).await;
    assert_eq!(upstream["ended"], true, "the upstream leg was closed too");
}

#[tokio::test]
async fn audio_and_images_follow_the_opaque_inputs_policy() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start_with(
        GatewayOpts::new(mock.url()).toml("[inspect]\nopaque_inputs = \"deny\"\n"),
    )
    .await;
    let mut ws = open(&gw).await;
    until(&mut ws, &["session.created"]).await;
    let opaque = [
        json!({"type": "input_audio_buffer.append", "event_id": "a1", "audio": "UklGRiQAAABXQVZF"}),
        json!({"type": "conversation.item.create", "event_id": "a2", "item": {"type": "message", "role": "user",
               "content": [{"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo="}]}}),
    ];
    for ev in &opaque {
        send(&mut ws, ev.clone()).await;
        let err = until(&mut ws, &["error"]).await;
        assert_eq!(err["error"]["code"], "opaque_input_denied", "{ev}");
        assert_eq!(err["error"]["event_id"], ev["event_id"]);
    }
    // Text still goes through.
    send(&mut ws, user_text("plain words")).await;
    until(&mut ws, &["conversation.item.created"]).await;
    let got = received(&mock).await;
    assert!(
        !got.iter()
            .any(|e| e["type"] == "input_audio_buffer.append"
                || e.to_string().contains("input_image")),
        "{got:?}"
    );
    drop(gw);
    // With the default (`pass`), the same audio reaches the upstream untouched.
    let gw = Gateway::start(&mock.url()).await;
    let mut ws = open(&gw).await;
    until(&mut ws, &["session.created"]).await;
    send(&mut ws, opaque[0].clone()).await;
    send(&mut ws, user_text("after the audio")).await;
    until(&mut ws, &["conversation.item.created"]).await;
    let got = received(&mock).await;
    assert!(got.contains(&opaque[0]), "{got:?}");
}

/// The HTTP refusal of a handshake: its status and error code.
async fn refused(url: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let err = ws_connect(url, headers, &[]).await.expect_err("refused");
    let tokio_tungstenite::tungstenite::Error::Http(resp) = err else {
        panic!("an HTTP refusal: {err:?}");
    };
    let body: Value = serde_json::from_slice(resp.body().as_deref().unwrap_or_default())
        .expect("an OpenAI-shaped error");
    (resp.status().as_u16(), body["error"]["code"].clone())
}

#[tokio::test]
async fn a_keys_model_scope_and_origins_are_checked_before_the_upstream_is_contacted() {
    let mock = MockUpstream::start().await;
    let secret = "pgk_realtime_scoped";
    let keys = KeysFile::new(&key_entry(
        "scoped",
        secret,
        "allowed_models = [\"gpt-realtime-mini\"]\nallowed_origins = [\"https://app.example.com\"]",
    ));
    let gw = keys_gateway(&mock, &keys).await;
    let bearer = format!("Bearer {secret}");
    let base = gw.ws_url("/v1/realtime");
    let auth = ("authorization", bearer.as_str());
    let good_origin = ("origin", "https://app.example.com");
    assert_eq!(
        refused(&format!("{base}?model=gpt-realtime"), &[auth, good_origin]).await,
        (403, json!("model_not_allowed"))
    );
    assert_eq!(
        refused(&base, &[auth, good_origin]).await,
        (403, json!("model_required"))
    );
    assert_eq!(
        refused(
            &format!("{base}?model=gpt-realtime-mini"),
            &[auth, ("origin", "https://evil.example")]
        )
        .await,
        (403, json!("origin_not_allowed"))
    );
    assert!(
        mock.realtime_sessions().await.is_empty(),
        "nothing reached the upstream"
    );
    let (mut ws, _) = ws_connect(
        &format!("{base}?model=gpt-realtime-mini"),
        &[auth, good_origin],
        &[],
    )
    .await
    .expect("in scope, from its origin");
    until(&mut ws, &["session.created"]).await;
}

#[tokio::test]
async fn compression_is_declined_on_both_legs() {
    let (mock, gw) = start().await;
    let mut tcp = TcpStream::connect(gw.addr).await.expect("connect");
    let head = "GET /v1/realtime?model=gpt-realtime HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\nAuthorization: Bearer sk-test-client\r\n\r\n";
    tcp.write_all(head.as_bytes()).await.expect("head");
    let mut buf = vec![0u8; 4096];
    let n = tcp.read(&mut buf).await.expect("101");
    let resp = String::from_utf8_lossy(&buf[..n]).to_lowercase();
    assert!(resp.starts_with("http/1.1 101"), "{resp}");
    assert!(
        !resp.contains("sec-websocket-extensions"),
        "no extension accepted: {resp}"
    );
    let sessions = mock.realtime_session_when(0, |s| s.is_object()).await;
    assert!(
        sessions["headers"]
            .get("sec-websocket-extensions")
            .is_none(),
        "the upstream was offered none: {sessions}"
    );
}

#[tokio::test]
async fn on_block_close_ends_the_session_with_1008() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start_with(
        GatewayOpts::new(mock.url()).toml("[realtime]\non_block = \"close\"\n"),
    )
    .await;
    let mut ws = open(&gw).await;
    until(&mut ws, &["session.created"]).await;
    send(&mut ws, user_text(&format!("key {SECRET}"))).await;
    let err = until(&mut ws, &["error"]).await;
    assert_eq!(err["error"]["code"], "policy_blocked");
    let code = loop {
        match ws.next().await {
            Some(Ok(Message::Close(f))) => break f.map(|f| f.code),
            Some(Ok(_)) => continue,
            other => panic!("a close frame: {other:?}"),
        }
    };
    assert_eq!(code, Some(CloseCode::Policy));
    let got = serde_json::to_string(&received(&mock).await).expect("json");
    assert!(!got.contains(SECRET));
}

#[tokio::test]
async fn a_realtime_session_is_inspected_under_the_policy_its_route_selects() {
    let dir = tempfile::tempdir().expect("tempdir");
    crate::support::copy_rules(dir.path());
    std::fs::write(
        dir.path().join("team.toml"),
        "[[policy]]\nname = \"watcher\"\ndescription = \"Personal data only logged\"\n\
         [[policy.override]]\ntags = [\"pii\"]\naction = \"log\"\n\n\
         [[assign]]\npolicy = \"watcher\"\nroutes = [\"/v1/realtime\"]\n",
    )
    .expect("write");
    let mock = MockUpstream::start().await;
    let gw = Gateway::start_with(GatewayOpts::new(mock.url()).rules(dir.path())).await;
    let (mut ws, resp) = ws_connect(
        &ws_url(&gw),
        &[("authorization", "Bearer sk-test-client")],
        &[],
    )
    .await
    .expect("the session opens");
    assert_eq!(resp.status(), 101);
    assert_eq!(
        resp.headers()
            .get("x-promptgate-policy")
            .and_then(|v| v.to_str().ok()),
        Some("watcher")
    );
    until(&mut ws, &["session.created"]).await;
    // Logged, not redacted: the upstream gets the email as sent; a secret still blocks.
    send(
        &mut ws,
        json!({"type": "session.update", "session": {"instructions": format!("reply to {EMAIL}")}}),
    )
    .await;
    let updated = until(&mut ws, &["session.updated"]).await;
    assert!(updated.to_string().contains(EMAIL), "{updated}");
    send(
        &mut ws,
        json!({"type": "session.update", "event_id": "e1", "session": {"instructions": format!("use {SECRET}")}}),
    )
    .await;
    let err = until(&mut ws, &["error"]).await;
    assert_eq!(err["error"]["code"], "policy_blocked");
    let got = serde_json::to_string(&received(&mock).await).expect("json");
    assert!(got.contains(&format!("reply to {EMAIL}")), "{got}");
    assert!(!got.contains(SECRET), "{got}");
}
