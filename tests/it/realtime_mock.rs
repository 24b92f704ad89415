//! The mock upstream's Realtime endpoint, driven directly (no gateway): the handshake, the record, scripted
//! responses, cancellation, refusals and fragmented frames, as a gateway in front of it will meet them.

use std::collections::HashSet;

use futures_util::{SinkExt, StreamExt};
use promptgate::mock::MockConfig;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::error::{ProtocolError, SubProtocolError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use crate::support::{
    ws_connect, ws_events_until, ws_next, ws_next_json, ws_send_json, MockUpstream,
};

const PATH: &str = "/v1/realtime?model=gpt-4o-realtime";

async fn open(mock: &MockUpstream) -> WebSocketStream<TcpStream> {
    let (mut ws, _) = ws_connect(&mock.ws_url(PATH), &[], &["realtime"])
        .await
        .expect("upgrade");
    assert_eq!(ws_next_json(&mut ws).await["type"], "session.created");
    ws
}

fn types(events: &[Value]) -> Vec<&str> {
    events.iter().filter_map(|e| e["type"].as_str()).collect()
}

fn user_text(text: &str) -> Value {
    json!({"type": "conversation.item.create", "item": {"type": "message", "role": "user",
        "content": [{"type": "input_text", "text": text}]}})
}

#[tokio::test]
async fn handshake_selects_the_first_protocol_that_is_no_key_and_the_session_is_recorded() {
    let mock = MockUpstream::start().await;
    let (mut ws, resp) = ws_connect(
        &mock.ws_url(PATH),
        &[
            ("authorization", "Bearer sk-upstream"),
            ("openai-beta", "realtime=v1"),
            (
                "sec-websocket-extensions",
                "permessage-deflate; client_max_window_bits",
            ),
        ],
        &[
            "openai-insecure-api-key.sk-browser",
            "realtime",
            "openai-beta.realtime-v1",
        ],
    )
    .await
    .expect("upgrade");
    assert_eq!(resp.status(), 101);
    let h = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok());
    assert_eq!(h("sec-websocket-protocol"), Some("realtime"));
    assert_eq!(
        h("sec-websocket-extensions"),
        None,
        "deflate is never accepted"
    );

    let created = ws_next_json(&mut ws).await;
    assert_eq!(created["type"], "session.created");
    assert_eq!(created["session"]["model"], "gpt-4o-realtime");
    assert_eq!(created["session"]["object"], "realtime.session");
    assert!(created["session"]["id"]
        .as_str()
        .is_some_and(|id| id.starts_with("sess_")));

    ws_send_json(&mut ws, json!({"type": "session.update", "session": {"type": "realtime", "instructions": "Be brief."}})).await;
    let updated = ws_next_json(&mut ws).await;
    assert_eq!(updated["type"], "session.updated");
    assert_eq!(updated["session"]["instructions"], "Be brief.");
    assert_eq!(updated["session"]["id"], created["session"]["id"]);
    assert_eq!(updated["session"]["model"], "gpt-4o-realtime");

    ws_send_json(&mut ws, user_text("hello")).await;
    let item = ws_next_json(&mut ws).await;
    assert_eq!(item["type"], "conversation.item.created");
    assert_eq!(item["item"]["status"], "completed");
    assert!(item["item"]["id"].is_string());
    assert_eq!(item["item"]["content"][0]["text"], "hello");

    ws.send(Message::binary(vec![1u8, 2, 3]))
        .await
        .expect("binary");
    ws.send(Message::text("not json {")).await.expect("text");
    ws.send(Message::Ping(b"p".to_vec().into()))
        .await
        .expect("ping");
    // The mock answers in order: once this is answered, everything before it has been recorded.
    ws_send_json(&mut ws, json!({"type": "session.update", "session": {}})).await;
    assert_eq!(ws_next_json(&mut ws).await["type"], "session.updated");

    ws.close(Some(CloseFrame {
        code: CloseCode::Away,
        reason: "bye".into(),
    }))
    .await
    .expect("close");
    while let Some(Ok(_)) = ws.next().await {}

    let s = mock.realtime_session_when(0, |s| s["ended"] == true).await;
    assert_eq!(s["ended"], true, "{s}");
    assert_eq!(s["path"], PATH);
    assert_eq!(s["headers"]["authorization"], "Bearer sk-upstream");
    assert_eq!(s["headers"]["openai-beta"], "realtime=v1");
    assert_eq!(
        s["protocols"],
        json!([
            "openai-insecure-api-key.sk-browser",
            "realtime",
            "openai-beta.realtime-v1"
        ])
    );
    assert_eq!(s["protocol"], "realtime");
    let received = s["received"].as_array().expect("received");
    assert_eq!(received.len(), 5, "{received:?}");
    assert_eq!(received[0]["session"]["instructions"], "Be brief.");
    assert_eq!(received[1], user_text("hello"));
    assert_eq!(received[2], json!({"binary": 3}));
    assert_eq!(received[3], "not json {");
    assert_eq!(received[4]["type"], "session.update");
    assert_eq!(s["received_total"], 5);
    assert_eq!(s["pings"], 1);
    assert_eq!(s["closed"], true);
    assert_eq!(s["close_code"], 1001);

    // The upgrade is among the plain requests too, completed with its session.
    let reqs = mock.received().await;
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0]["method"], "GET");
    assert_eq!(reqs[0]["path"], "/v1/realtime");
    assert_eq!(reqs[0]["completed"], true);
}

#[tokio::test]
async fn without_a_protocol_that_is_no_key_none_is_selected() {
    let mock = MockUpstream::start().await;
    // No protocol offered: none selected, the session opens.
    let (mut ws, resp) = ws_connect(&mock.ws_url("/v1/realtime"), &[], &[])
        .await
        .expect("upgrade");
    assert!(resp.headers().get("sec-websocket-protocol").is_none());
    let created = ws_next_json(&mut ws).await;
    assert_eq!(created["session"]["model"], "gpt-realtime");

    // Only a key offered: the mock selects none, and a strict client (tungstenite) fails the handshake.
    let refused = ws_connect(
        &mock.ws_url("/v1/realtime"),
        &[],
        &["openai-insecure-api-key.sk-browser"],
    )
    .await;
    match refused {
        Err(WsError::Protocol(ProtocolError::SecWebSocketSubProtocolError(
            SubProtocolError::NoSubProtocol,
        ))) => {}
        other => panic!("expected the client to refuse a missing protocol, got {other:?}"),
    }
    let sessions = mock.realtime_sessions().await;
    assert_eq!(sessions.len(), 2);
    assert_eq!(sessions[1]["protocol"], Value::Null);
    assert_eq!(
        sessions[1]["protocols"],
        json!(["openai-insecure-api-key.sk-browser"])
    );
}

#[tokio::test]
async fn a_scripted_text_response_streams_the_ga_event_sequence() {
    let mock = MockUpstream::start().await;
    mock.realtime_script(json!({"deltas": ["Hel", "lo ", "there"], "usage": {"input_tokens": 7, "output_tokens": 3}}))
        .await;
    let mut ws = open(&mock).await;
    ws_send_json(&mut ws, json!({"type": "response.create"})).await;
    let events = ws_events_until(&mut ws, "response.done").await;
    assert_eq!(
        types(&events),
        [
            "response.created",
            "response.output_item.added",
            "conversation.item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "conversation.item.done",
            "response.done",
        ]
    );
    let ids: HashSet<&str> = events
        .iter()
        .filter_map(|e| e["event_id"].as_str())
        .collect();
    assert_eq!(ids.len(), events.len(), "every event has its own event_id");
    let resp_id = events[0]["response"]["id"].as_str().expect("response id");
    assert_eq!(events[0]["response"]["status"], "in_progress");
    let item_id = events[1]["item"]["id"].as_str().expect("item id");
    assert_eq!(events[1]["item"]["status"], "in_progress");
    assert_eq!(events[3]["part"], json!({"type": "text", "text": ""}));
    for e in &events[4..7] {
        assert_eq!(e["response_id"], resp_id);
        assert_eq!(e["item_id"], item_id);
        assert_eq!(
            (&e["output_index"], &e["content_index"]),
            (&json!(0), &json!(0))
        );
    }
    let deltas: Vec<&str> = events[4..7]
        .iter()
        .filter_map(|e| e["delta"].as_str())
        .collect();
    assert_eq!(deltas, ["Hel", "lo ", "there"]);
    assert_eq!(events[7]["text"], "Hello there");
    assert_eq!(
        events[8]["part"],
        json!({"type": "text", "text": "Hello there"})
    );
    let item = json!({"id": item_id, "type": "message", "role": "assistant", "status": "completed",
        "content": [{"type": "text", "text": "Hello there"}]});
    assert_eq!(events[9]["item"], item);
    assert_eq!(events[10]["item"], item);
    let done = &events[11]["response"];
    assert_eq!(done["id"], resp_id);
    assert_eq!(done["status"], "completed");
    assert_eq!(done["output"], json!([item]));
    assert_eq!(
        done["usage"],
        json!({"total_tokens": 10, "input_tokens": 7, "output_tokens": 3})
    );

    // No script queued: the default answer echoes the last input text in three pieces.
    ws_send_json(&mut ws, user_text("abcdefghi")).await;
    assert_eq!(
        ws_next_json(&mut ws).await["type"],
        "conversation.item.created"
    );
    ws_send_json(&mut ws, json!({"type": "response.create"})).await;
    let events = ws_events_until(&mut ws, "response.done").await;
    let deltas: Vec<&str> = events
        .iter()
        .filter(|e| e["type"] == "response.output_text.delta")
        .filter_map(|e| e["delta"].as_str())
        .collect();
    assert_eq!(deltas, ["abc", "def", "ghi"]);
    assert_ne!(
        events[0]["response"]["id"], resp_id,
        "each response its own id"
    );
    assert_eq!(
        events.last().expect("done")["response"]["usage"]["output_tokens"],
        3
    );
}

#[tokio::test]
async fn every_kind_carries_its_deltas_in_its_own_events() {
    let mock = MockUpstream::start().await;
    // (kind, delta event, done event, the done event's text field)
    let cases = [
        (
            "audio_transcript",
            "response.output_audio_transcript.delta",
            "response.output_audio_transcript.done",
            "transcript",
        ),
        (
            "function_call",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "arguments",
        ),
        (
            "input_transcription",
            "conversation.item.input_audio_transcription.delta",
            "conversation.item.input_audio_transcription.completed",
            "transcript",
        ),
    ];
    let mut ws = open(&mock).await;
    for (kind, delta, done, field) in cases {
        mock.realtime_script(json!({"kind": kind, "deltas": ["{\"a\":", "1}"], "name": "lookup"}))
            .await;
        ws_send_json(&mut ws, json!({"type": "response.create"})).await;
        let events = ws_events_until(&mut ws, "response.done").await;
        let deltas: Vec<&str> = events
            .iter()
            .filter(|e| e["type"] == delta)
            .filter_map(|e| e["delta"].as_str())
            .collect();
        assert_eq!(deltas, ["{\"a\":", "1}"], "{kind}: {events:?}");
        let done_event = events
            .iter()
            .find(|e| e["type"] == done)
            .unwrap_or_else(|| panic!("{kind}: no {done} in {events:?}"));
        assert_eq!(done_event[field], "{\"a\":1}", "{kind}");
        assert_eq!(
            events.last().expect("done")["response"]["status"],
            "completed"
        );
        match kind {
            "function_call" => {
                assert_eq!(done_event["name"], "lookup");
                let item = &events.last().expect("done")["response"]["output"][0];
                assert_eq!(item["type"], "function_call");
                assert_eq!(item["call_id"], done_event["call_id"]);
            }
            "input_transcription" => {
                assert_eq!(
                    types(&events).len(),
                    4,
                    "no response events but done: {events:?}"
                );
            }
            _ => {
                let part = events
                    .iter()
                    .find(|e| e["type"] == "response.content_part.done")
                    .expect("part done");
                assert_eq!(
                    part["part"],
                    json!({"type": "audio", "transcript": "{\"a\":1}"})
                );
            }
        }
    }
}

#[tokio::test]
async fn a_response_cancel_while_held_ends_the_response_cancelled() {
    let mock = MockUpstream::start().await;
    mock.realtime_script(json!({"deltas": ["one", " two", " three"], "hold": "rt-cancel-held"}))
        .await;
    let mut ws = open(&mock).await;
    ws_send_json(&mut ws, json!({"type": "response.create"})).await;
    let first = ws_events_until(&mut ws, "response.output_text.delta").await;
    assert_eq!(first.last().expect("delta")["delta"], "one");
    ws_send_json(&mut ws, json!({"type": "response.cancel"})).await;
    let rest = ws_events_until(&mut ws, "response.done").await;
    assert_eq!(types(&rest), ["response.done"], "no delta after the cancel");
    let done = &rest[0]["response"];
    assert_eq!(done["status"], "cancelled");
    assert_eq!(done["output"][0]["status"], "incomplete");
    assert_eq!(done["output"][0]["content"][0]["text"], "one");
    assert_eq!(done["usage"]["output_tokens"], 1);

    // The session goes on: releasing the token later streams nothing more, a new response streams whole.
    mock.release("rt-cancel-held").await;
    ws_send_json(&mut ws, json!({"type": "response.create"})).await;
    let next = ws_events_until(&mut ws, "response.done").await;
    assert_eq!(next[0]["type"], "response.created");
    assert_eq!(
        next.last().expect("done")["response"]["status"],
        "completed"
    );

    let s = mock.realtime_sessions().await.remove(0);
    assert_eq!(s["cancelled"], 1);
    assert_eq!(s["responses"], 2);
    assert_eq!(s["received"][1], json!({"type": "response.cancel"}));
}

#[tokio::test]
async fn a_response_cancel_during_a_pause_between_deltas_stops_the_stream() {
    let mock = MockUpstream::start().await;
    // A pause far longer than the test may take: only a mock that reads while pausing ends this response.
    mock.realtime_script(json!({"deltas": ["a", "b"], "delay_ms": 3_600_000}))
        .await;
    let mut ws = open(&mock).await;
    ws_send_json(&mut ws, json!({"type": "response.create"})).await;
    ws_events_until(&mut ws, "response.output_text.delta").await;
    // Answered during the pause, then the cancel.
    ws_send_json(&mut ws, user_text("meanwhile")).await;
    assert_eq!(
        ws_next_json(&mut ws).await["type"],
        "conversation.item.created"
    );
    ws_send_json(&mut ws, json!({"type": "response.create"})).await;
    let busy = ws_next_json(&mut ws).await;
    assert_eq!(busy["type"], "error");
    assert_eq!(
        busy["error"]["code"],
        "conversation_already_has_active_response"
    );
    ws_send_json(&mut ws, json!({"type": "response.cancel"})).await;
    let rest = ws_events_until(&mut ws, "response.done").await;
    assert_eq!(types(&rest), ["response.done"]);
    assert_eq!(rest[0]["response"]["status"], "cancelled");
}

#[tokio::test]
async fn a_held_response_goes_on_when_released() {
    let mock = MockUpstream::start().await;
    mock.realtime_script(json!({"deltas": ["x", "y"], "hold": "rt-release"}))
        .await;
    let mut ws = open(&mock).await;
    ws_send_json(&mut ws, json!({"type": "response.create"})).await;
    ws_events_until(&mut ws, "response.output_text.delta").await;
    mock.release("rt-release").await;
    let rest = ws_events_until(&mut ws, "response.done").await;
    assert_eq!(rest[0]["delta"], "y");
    assert_eq!(
        rest.last().expect("done")["response"]["status"],
        "completed"
    );
}

#[tokio::test]
async fn scripted_events_and_binary_frames_are_sent_as_written() {
    let mock = MockUpstream::start().await;
    mock.realtime_script(json!([
        {"events": ["{\"type\":\"response.output_text.delta\",\"delta\":\"raw\"}", "not json", {"type": "x.custom"}],
         "binary": "AUDIO"},
        {"deltas": ["d"], "binary": "\u{1}\u{2}"}
    ]))
    .await;
    let mut ws = open(&mock).await;
    ws_send_json(&mut ws, json!({"type": "response.create"})).await;
    assert_eq!(ws_next(&mut ws).await, Message::binary(b"AUDIO".to_vec()));
    assert_eq!(
        ws_next(&mut ws).await,
        Message::text("{\"type\":\"response.output_text.delta\",\"delta\":\"raw\"}")
    );
    assert_eq!(ws_next(&mut ws).await, Message::text("not json"));
    assert_eq!(ws_next_json(&mut ws).await, json!({"type": "x.custom"}));
    // Nothing else: the next message answers the next request.
    ws_send_json(&mut ws, json!({"type": "session.update", "session": {}})).await;
    assert_eq!(ws_next_json(&mut ws).await["type"], "session.updated");

    // Generated: the binary frame comes between the opening events and the first delta.
    ws_send_json(&mut ws, json!({"type": "response.create"})).await;
    let opening = ws_events_until(&mut ws, "response.content_part.added").await;
    assert_eq!(opening.len(), 4);
    assert_eq!(ws_next(&mut ws).await, Message::binary(vec![1u8, 2]));
    assert_eq!(ws_next_json(&mut ws).await["delta"], "d");
}

#[tokio::test]
async fn x_mock_status_refuses_the_upgrade_with_an_openai_error() {
    let mock = MockUpstream::start().await;
    let refused = ws_connect(
        &mock.ws_url(PATH),
        &[("x-mock-status", "429"), ("x-mock-content", "slow down")],
        &["realtime"],
    )
    .await;
    let resp = match refused {
        Err(WsError::Http(resp)) => resp,
        other => panic!("expected an HTTP refusal, got {other:?}"),
    };
    assert_eq!(resp.status(), 429);
    let body: Value = serde_json::from_slice(resp.body().as_deref().unwrap_or_default())
        .expect("JSON error body");
    assert_eq!(body["error"]["message"], "slow down");
    assert_eq!(body["error"]["code"], "mock_error");
    assert!(mock.realtime_sessions().await.is_empty());
    assert_eq!(
        mock.received().await.len(),
        1,
        "the refused upgrade is recorded"
    );

    // The mock's configured status refuses every upgrade.
    let failing = MockUpstream::start_with(MockConfig {
        status: Some(503),
        ..MockConfig::default()
    })
    .await;
    match ws_connect(&failing.ws_url(PATH), &[], &[]).await {
        Err(WsError::Http(resp)) => assert_eq!(resp.status(), 503),
        other => panic!("expected 503, got {other:?}"),
    }

    // A GET without an upgrade is refused too (426), as an OpenAI-shaped error.
    let plain = reqwest::get(format!("{}{PATH}", mock.url()))
        .await
        .expect("get");
    assert_eq!(plain.status(), 426);
    let body: Value = plain.json().await.expect("json");
    assert_eq!(body["error"]["code"], "upgrade_required");
}

/// One frame as the server wrote it (server frames are not masked).
struct RawFrame {
    fin: bool,
    opcode: u8,
    payload: Vec<u8>,
}

async fn read_raw_frame(stream: &mut TcpStream, buf: &mut Vec<u8>) -> RawFrame {
    loop {
        if buf.len() >= 2 {
            let len7 = (buf[1] & 0x7f) as usize;
            assert_eq!(buf[1] & 0x80, 0, "server frames are not masked");
            let (len, at) = match len7 {
                126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
                127 if buf.len() >= 10 => {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&buf[2..10]);
                    (u64::from_be_bytes(b) as usize, 10)
                }
                126 | 127 => (usize::MAX, 0),
                n => (n, 2),
            };
            if len != usize::MAX && buf.len() >= at + len {
                let frame = RawFrame {
                    fin: buf[0] & 0x80 != 0,
                    opcode: buf[0] & 0x0f,
                    payload: buf[at..at + len].to_vec(),
                };
                buf.drain(..at + len);
                return frame;
            }
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .expect("a frame within 10 s")
            .expect("read");
        assert!(n > 0, "connection closed while a frame was awaited");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A client text frame (masked, as RFC 6455 requires of clients).
fn masked_text(text: &str) -> Vec<u8> {
    let payload = text.as_bytes();
    assert!(payload.len() < 126);
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let mut f = vec![0x81, 0x80 | payload.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Writes an upgrade request and `then` in one write, and returns the stream past the 101 and what was read
/// beyond it.
async fn raw_upgrade(mock: &MockUpstream, then: &[u8]) -> (TcpStream, Vec<u8>) {
    let mut stream = TcpStream::connect(mock.addr).await.expect("connect");
    let mut req = format!(
        "GET {PATH} HTTP/1.1\r\nhost: {}\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
         sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        mock.addr
    )
    .into_bytes();
    req.extend_from_slice(then);
    stream.write_all(&req).await.expect("write");
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.expect("read");
        assert!(n > 0, "closed before the 101");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    // RFC 6455's own example key and accept value.
    assert!(
        head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    (stream, buf.split_off(head_end))
}

#[tokio::test]
async fn frames_sent_with_the_upgrade_request_are_not_lost() {
    let mock = MockUpstream::start().await;
    let early = user_text("early");
    let (stream, rest) = raw_upgrade(&mock, &masked_text(&early.to_string())).await;
    let mut ws = WebSocketStream::from_partially_read(stream, rest, Role::Client, None).await;
    assert_eq!(ws_next_json(&mut ws).await["type"], "session.created");
    let created = ws_next_json(&mut ws).await;
    assert_eq!(created["type"], "conversation.item.created");
    assert_eq!(created["item"]["content"][0]["text"], "early");
    let s = mock.realtime_sessions().await.remove(0);
    assert_eq!(s["received"], json!([early]));
}

#[tokio::test]
async fn a_fragmented_delta_arrives_in_continuation_frames_and_reassembles() {
    let mock = MockUpstream::start().await;
    let script = json!({"deltas": ["héllo wörld, a delta long enough to cut"], "fragment": true});
    mock.realtime_script(script.clone()).await;
    mock.realtime_script(script).await;

    // On the wire: a text frame without FIN, then continuation frames, the last with FIN.
    let create = json!({"type": "response.create"}).to_string();
    let (mut stream, mut buf) = raw_upgrade(&mock, &masked_text(&create)).await;
    let mut frames = Vec::new();
    loop {
        let f = read_raw_frame(&mut stream, &mut buf).await;
        let done = f.fin && String::from_utf8_lossy(&f.payload).contains("\"response.done\"");
        frames.push(f);
        if done {
            break;
        }
    }
    let start = frames
        .iter()
        .position(|f| f.opcode == 1 && !f.fin)
        .expect("a text frame without FIN");
    let end = start
        + frames[start..]
            .iter()
            .position(|f| f.fin)
            .expect("a final frame");
    assert!(end - start >= 2, "several continuation frames");
    assert!(frames[start + 1..=end].iter().all(|f| f.opcode == 0));
    let whole: Vec<u8> = frames[start..=end]
        .iter()
        .flat_map(|f| f.payload.clone())
        .collect();
    let delta: Value = serde_json::from_slice(&whole).expect("the pieces make one JSON event");
    assert_eq!(delta["type"], "response.output_text.delta");
    assert!(
        frames.iter().all(|f| f.opcode == 1 || f.opcode == 0),
        "text frames only"
    );
    let unfragmented = frames.iter().filter(|f| f.opcode == 1 && f.fin).count();
    assert_eq!(
        unfragmented + 1,
        frames.len() - (end - start),
        "only the delta is cut"
    );

    // A client reassembles it.
    let mut ws = open(&mock).await;
    ws_send_json(&mut ws, json!({"type": "response.create"})).await;
    let events = ws_events_until(&mut ws, "response.done").await;
    let delta = events
        .iter()
        .find(|e| e["type"] == "response.output_text.delta")
        .expect("delta");
    assert_eq!(delta["delta"], "héllo wörld, a delta long enough to cut");
}

#[tokio::test]
async fn scripts_are_checked_and_the_record_cleared() {
    let mock = MockUpstream::start().await;
    let client = reqwest::Client::new();
    let url = format!("{}/__mock/realtime/script", mock.url());
    for bad in [r#"{"deltas": "not a list"}"#, r#"{"deltaz": []}"#, "{"] {
        let r = client.post(&url).body(bad).send().await.expect("post");
        assert_eq!(r.status(), 400, "{bad}");
    }
    let mut ws = open(&mock).await;
    ws_send_json(&mut ws, json!({"type": "response.cancel"})).await;
    let e = ws_next_json(&mut ws).await;
    assert_eq!(e["error"]["code"], "response_cancel_not_active");
    // None of the refused scripts was queued: the default answer.
    ws_send_json(&mut ws, json!({"type": "response.create"})).await;
    let events = ws_events_until(&mut ws, "response.done").await;
    assert_eq!(
        events.last().expect("done")["response"]["output"][0]["content"][0]["text"],
        "Hello from the mock."
    );
    assert_eq!(mock.realtime_sessions().await.len(), 1);
    mock.realtime_clear().await;
    assert!(mock.realtime_sessions().await.is_empty());
}
