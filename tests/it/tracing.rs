//! OpenTelemetry traces seen from outside: OTLP receivers in the test (HTTP/1.1 with protobuf bodies, and gRPC
//! over HTTP/2) decode what the gateway exports with the published OTLP types; the mock upstream records the
//! `traceparent` it was sent. Exports are read after the gateway has shut down (its drain flushes the exporter),
//! so no test waits on a timer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::support::{
    chat_body, file_events, post, recorded_header, Gateway, GatewayOpts, MockUpstream,
};

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";
const PROMPT_MARKER: &str = "zebra-quartz-prompt-7731";
const EMAIL: &str = "jane.doe@example.com";
const AWS_KEY: &str = "AKIAIOSFODNN7EXAMPLE";
const CLIENT_SECRET: &str = "sk-seeded-client-secret-5521";
const COLLECTOR_TOKEN: &str = "collector-token-9931";

/// One export as a receiver got it: the raw body, the request headers, and the request line (HTTP) or path
/// (gRPC).
type Export = (Vec<u8>, HashMap<String, String>, String);

/// What a receiver got.
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<Export>>>);

impl Received {
    fn bodies(&self) -> Vec<Vec<u8>> {
        self.0
            .lock()
            .expect("lock")
            .iter()
            .map(|(b, _, _)| b.clone())
            .collect()
    }

    fn requests(&self) -> Vec<Export> {
        self.0.lock().expect("lock").clone()
    }

    /// Every span of every export.
    fn spans(&self) -> Vec<Span> {
        let mut out = Vec::new();
        for body in self.bodies() {
            let req = ExportTraceServiceRequest::decode(&body[..]).expect("an OTLP export");
            for rs in req.resource_spans {
                let service = rs
                    .resource
                    .as_ref()
                    .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
                    .and_then(|kv| kv.value.as_ref())
                    .and_then(|v| v.value.clone());
                assert_eq!(
                    service,
                    Some(AnyValue::StringValue("promptgate".into())),
                    "resource service.name"
                );
                for ss in rs.scope_spans {
                    out.extend(ss.spans);
                }
            }
        }
        out
    }
}

/// An OTLP/HTTP receiver: answers every `POST` with 200 (or never answers, when `silent`).
async fn http_receiver(silent: bool) -> (u16, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let received = Received::default();
    let rec = received.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let rec = rec.clone();
            tokio::spawn(async move {
                if silent {
                    // Hold the connection, read nothing, answer nothing.
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    drop(conn);
                    return;
                }
                let mut buf = Vec::new();
                loop {
                    // One request: the head, then Content-Length bytes.
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut chunk = [0u8; 8192];
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                    let mut lines = head.split("\r\n");
                    let request_line = lines.next().unwrap_or_default().to_string();
                    let headers: HashMap<String, String> = lines
                        .filter_map(|l| l.split_once(':'))
                        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                        .collect();
                    let len: usize = headers
                        .get("content-length")
                        .and_then(|v| v.parse().ok())
                        .expect("the exporter sends Content-Length");
                    while buf.len() < head_end + len {
                        let mut chunk = [0u8; 8192];
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body = buf[head_end..head_end + len].to_vec();
                    buf.drain(..head_end + len);
                    rec.0
                        .lock()
                        .expect("lock")
                        .push((body, headers, request_line));
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
                    if conn.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, received)
}

/// An OTLP/gRPC receiver: an HTTP/2 server answering `TraceService/Export` with an empty response and
/// `grpc-status: 0`.
async fn grpc_receiver() -> (u16, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let received = Received::default();
    let rec = received.clone();
    tokio::spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                return;
            };
            let rec = rec.clone();
            tokio::spawn(async move {
                let Ok(mut h2) = h2::server::handshake(conn).await else {
                    return;
                };
                while let Some(Ok((req, mut respond))) = h2.accept().await {
                    let (parts, mut body) = req.into_parts();
                    let mut data = Vec::new();
                    while let Some(Ok(chunk)) = body.data().await {
                        let _ = body.flow_control().release_capacity(chunk.len());
                        data.extend_from_slice(&chunk);
                    }
                    assert!(data.len() >= 5, "a gRPC message has a 5-byte prefix");
                    assert_eq!(data[0], 0, "not compressed");
                    let len = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
                    assert_eq!(len, data.len() - 5, "one whole message");
                    let headers = parts
                        .headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                        .collect();
                    rec.0.lock().expect("lock").push((
                        data[5..].to_vec(),
                        headers,
                        parts.uri.path().to_string(),
                    ));
                    let resp = http::Response::builder()
                        .status(200)
                        .header("content-type", "application/grpc")
                        .body(())
                        .expect("response");
                    let Ok(mut send) = respond.send_response(resp, false) else {
                        continue;
                    };
                    let _ = send.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), false);
                    let mut trailers = http::HeaderMap::new();
                    trailers.insert("grpc-status", "0".parse().expect("value"));
                    let _ = send.send_trailers(trailers);
                }
            });
        }
    });
    (port, received)
}

/// A gateway tracing to `port`, its audit events in `audit` (`extra`: more `[tracing]` keys).
async fn gateway(mock: &MockUpstream, port: u16, audit: &std::path::Path, extra: &str) -> Gateway {
    let toml = format!(
        "[tracing]\nenabled = true\nendpoint = \"http://127.0.0.1:{port}\"\nflush_interval_ms = 50\n\
         headers_env = \"TRACING_TEST_HEADERS\"\n{extra}\n[audit]\ndir = {:?}\n",
        audit.display().to_string()
    );
    Gateway::start_with(GatewayOpts::new(mock.url()).toml(&toml).env(
        "TRACING_TEST_HEADERS",
        &format!("authorization=Bearer {COLLECTOR_TOKEN}"),
    ))
    .await
}

/// Stops the gateway gracefully: its drain exports what is queued before the process exits.
async fn shut_down(gw: &mut Gateway) {
    gw.signal("TERM");
    assert_eq!(
        gw.wait_exit(Duration::from_secs(30)).await,
        Some(0),
        "{}",
        gw.stderr()
    );
}

fn attr(span: &Span, key: &str) -> Option<AnyValue> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.clone())
}

fn attr_str(span: &Span, key: &str) -> Option<String> {
    match attr(span, key) {
        Some(AnyValue::StringValue(s)) => Some(s),
        _ => None,
    }
}

fn attr_int(span: &Span, key: &str) -> Option<i64> {
    match attr(span, key) {
        Some(AnyValue::IntValue(i)) => Some(i),
        _ => None,
    }
}

/// The spans of one trace, by the request id the server span carries.
fn request_spans(spans: &[Span], request_id: &str) -> (Span, Vec<Span>) {
    let server = spans
        .iter()
        .find(|s| {
            s.kind == SpanKind::Server as i32
                && attr_str(s, "promptgate.request_id").as_deref() == Some(request_id)
        })
        .unwrap_or_else(|| {
            panic!(
                "no server span for {request_id} among {} spans",
                spans.len()
            )
        })
        .clone();
    let children = spans
        .iter()
        .filter(|s| s.trace_id == server.trace_id && s.span_id != server.span_id)
        .cloned()
        .collect();
    (server, children)
}

fn request_id(resp: &reqwest::Response) -> String {
    resp.headers()["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_string()
}

/// The `traceparent` the upstream got with the request carrying `marker` in its body.
async fn upstream_traceparent(mock: &MockUpstream, marker: &str) -> Option<String> {
    mock.received()
        .await
        .iter()
        .find(|r| r.to_string().contains(marker))
        .and_then(|r| recorded_header(r, "traceparent").map(str::to_string))
}

#[tokio::test]
async fn spans_join_the_clients_trace_and_the_upstream_is_a_child_of_the_upstream_span() {
    let mock = MockUpstream::start().await;
    let (port, received) = http_receiver(false).await;
    let audit = tempfile::tempdir().expect("tempdir");
    let mut gw = gateway(&mock, port, audit.path(), "").await;
    let traceparent = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    let resp = post(
        &gw,
        "/v1/chat/completions",
        chat_body("first marker-one").into_bytes(),
        &[("traceparent", &traceparent), ("tracestate", "vendor=abc")],
    )
    .await;
    assert_eq!(resp.status(), 200);
    let rid = request_id(&resp);
    let sent = upstream_traceparent(&mock, "marker-one")
        .await
        .expect("the upstream got a traceparent");
    let upstream_tracestate = mock
        .received()
        .await
        .iter()
        .find(|r| r.to_string().contains("marker-one"))
        .and_then(|r| recorded_header(r, "tracestate").map(str::to_string));
    shut_down(&mut gw).await;

    let spans = received.spans();
    let (server, children) = request_spans(&spans, &rid);
    assert_eq!(
        hex::encode(&server.trace_id),
        CLIENT_TRACE,
        "the client's trace"
    );
    assert_eq!(
        hex::encode(&server.parent_span_id),
        CLIENT_SPAN,
        "the client's span is the parent"
    );
    assert_eq!(server.trace_state, "vendor=abc");
    assert_eq!(server.name, "chat gpt-4o-mini");
    for c in &children {
        assert_eq!(
            c.parent_span_id, server.span_id,
            "{} points to the server span",
            c.name
        );
    }
    let names: Vec<&str> = children.iter().map(|s| s.name.as_str()).collect();
    for want in ["inspect request", "inspect answer", "audit"] {
        assert!(names.contains(&want), "{want} among {names:?}");
    }
    let client: Vec<&Span> = children
        .iter()
        .filter(|s| s.kind == SpanKind::Client as i32)
        .collect();
    assert_eq!(client.len(), 1, "one upstream span");
    let client = client[0];
    // The upstream saw the same trace, with the upstream span as its parent, sampled; and the tracestate.
    assert_eq!(
        sent,
        format!("00-{CLIENT_TRACE}-{}-01", hex::encode(&client.span_id))
    );
    assert_eq!(upstream_tracestate.as_deref(), Some("vendor=abc"));

    // GenAI and HTTP attributes.
    for s in [&server, client] {
        assert_eq!(
            attr_str(s, "gen_ai.operation.name").as_deref(),
            Some("chat")
        );
        assert_eq!(
            attr_str(s, "gen_ai.provider.name").as_deref(),
            Some("openai")
        );
        assert_eq!(attr_str(s, "gen_ai.system").as_deref(), Some("openai"));
        assert_eq!(
            attr_str(s, "gen_ai.request.model").as_deref(),
            Some("gpt-4o-mini")
        );
        assert_eq!(
            attr_str(s, "gen_ai.response.model").as_deref(),
            Some("gpt-4o-mini")
        );
        assert!(attr_int(s, "gen_ai.usage.input_tokens").is_some_and(|n| n > 0));
        assert!(attr_int(s, "gen_ai.usage.output_tokens").is_some_and(|n| n > 0));
        assert_eq!(attr_str(s, "http.request.method").as_deref(), Some("POST"));
        assert_eq!(attr_int(s, "http.response.status_code"), Some(200));
    }
    // The upstream's address is the CLIENT span's (the SERVER span's server.* would be the gateway's own).
    assert_eq!(
        attr_str(client, "server.address").as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(
        attr_int(client, "server.port"),
        Some(i64::from(mock.addr.port()))
    );
    assert_eq!(attr_str(&server, "server.address"), None);
    assert_eq!(
        attr_str(&server, "promptgate.decision").as_deref(),
        Some("allow")
    );
    assert_eq!(
        attr_str(&server, "promptgate.decision.request").as_deref(),
        Some("allow")
    );
    assert_eq!(
        attr_str(&server, "promptgate.decision.response").as_deref(),
        Some("allow")
    );
    assert!(server.start_time_unix_nano <= client.start_time_unix_nano);
    assert!(client.end_time_unix_nano <= server.end_time_unix_nano);

    // The decision event names the trace the upstream saw.
    let events = file_events(audit.path());
    let ev = events
        .iter()
        .find(|e| e["request_id"] == rid.as_str())
        .expect("the event");
    assert_eq!(ev["trace_id"], CLIENT_TRACE);
    assert_eq!(
        attr_str(&server, "promptgate.key_id").as_deref(),
        ev["key_id"].as_str(),
        "the key id the event writes"
    );

    // The collector got its header, on the OTLP/HTTP path.
    let (_, headers, line) = &received.requests()[0];
    assert_eq!(line, "POST /v1/traces HTTP/1.1");
    assert_eq!(headers["content-type"], "application/x-protobuf");
    assert_eq!(
        headers["authorization"],
        format!("Bearer {COLLECTOR_TOKEN}")
    );
}

#[tokio::test]
async fn a_request_without_a_valid_traceparent_starts_a_new_trace() {
    let mock = MockUpstream::start().await;
    let (port, received) = http_receiver(false).await;
    let audit = tempfile::tempdir().expect("tempdir");
    let mut gw = gateway(&mock, port, audit.path(), "").await;
    let none = post(
        &gw,
        "/v1/chat/completions",
        chat_body("no parent marker-two").into_bytes(),
        &[],
    )
    .await;
    // All-zero trace id: invalid, so a new trace (and the tracestate that came with it is dropped).
    let zero = format!("00-{}-{CLIENT_SPAN}-01", "0".repeat(32));
    let invalid = post(
        &gw,
        "/v1/chat/completions",
        chat_body("zero parent marker-three").into_bytes(),
        &[("traceparent", &zero), ("tracestate", "vendor=abc")],
    )
    .await;
    let (rid_none, rid_invalid) = (request_id(&none), request_id(&invalid));
    let sent_none = upstream_traceparent(&mock, "marker-two")
        .await
        .expect("sent");
    let sent_invalid = upstream_traceparent(&mock, "marker-three")
        .await
        .expect("sent");
    let state_invalid = mock
        .received()
        .await
        .iter()
        .find(|r| r.to_string().contains("marker-three"))
        .and_then(|r| recorded_header(r, "tracestate").map(str::to_string));
    assert_eq!(
        state_invalid, None,
        "a tracestate without a valid traceparent is dropped"
    );
    shut_down(&mut gw).await;

    let spans = received.spans();
    let mut traces = Vec::new();
    for (rid, sent) in [(&rid_none, &sent_none), (&rid_invalid, &sent_invalid)] {
        let (server, children) = request_spans(&spans, rid);
        assert!(server.parent_span_id.is_empty(), "a root span");
        let trace = hex::encode(&server.trace_id);
        assert_ne!(trace, "0".repeat(32));
        let client = children
            .iter()
            .find(|s| s.kind == SpanKind::Client as i32)
            .expect("upstream span");
        assert_eq!(
            *sent,
            format!("00-{trace}-{}-01", hex::encode(&client.span_id))
        );
        traces.push(trace);
    }
    assert_ne!(traces[0], traces[1], "each request its own trace");
}

#[tokio::test]
async fn no_secret_or_prompt_reaches_the_exported_spans_and_a_block_names_its_rule() {
    let mock = MockUpstream::start().await;
    let (port, received) = http_receiver(false).await;
    let audit = tempfile::tempdir().expect("tempdir");
    let mut gw = gateway(&mock, port, audit.path(), "").await;
    let auth = format!("Bearer {CLIENT_SECRET}");
    let redacted = post(
        &gw,
        "/v1/chat/completions",
        chat_body(&format!("{PROMPT_MARKER} write to {EMAIL}")).into_bytes(),
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(redacted.status(), 200);
    let blocked = post(
        &gw,
        "/v1/chat/completions",
        chat_body(&format!("{PROMPT_MARKER} my key is {AWS_KEY}")).into_bytes(),
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(blocked.status(), 409);
    let rules: Vec<String> = blocked.headers()["x-promptgate-rules"]
        .to_str()
        .expect("ascii")
        .split(',')
        .map(str::to_string)
        .collect();
    let (rid_redacted, rid_blocked) = (request_id(&redacted), request_id(&blocked));
    // A model name that a rule matches is not recorded (the event's rule).
    let secret_model =
        serde_json::json!({"model": AWS_KEY, "messages": [{"role": "user", "content": "hi"}]});
    let _ = post(
        &gw,
        "/v1/chat/completions",
        secret_model.to_string().into_bytes(),
        &[("authorization", &auth)],
    )
    .await;
    shut_down(&mut gw).await;

    let raw: Vec<u8> = received.bodies().concat();
    assert!(!raw.is_empty());
    for seeded in [PROMPT_MARKER, EMAIL, AWS_KEY, CLIENT_SECRET, "sk-seeded"] {
        assert!(
            !raw.windows(seeded.len()).any(|w| w == seeded.as_bytes()),
            "{seeded} in the exported bytes"
        );
    }
    let spans = received.spans();
    let (server, _) = request_spans(&spans, &rid_redacted);
    assert_eq!(
        attr_str(&server, "promptgate.decision").as_deref(),
        Some("redact")
    );
    let (server, children) = request_spans(&spans, &rid_blocked);
    assert_eq!(
        attr_str(&server, "promptgate.decision").as_deref(),
        Some("block")
    );
    assert_eq!(
        attr_str(&server, "promptgate.decision.request").as_deref(),
        Some("block")
    );
    assert_eq!(attr_int(&server, "http.response.status_code"), Some(409));
    let Some(AnyValue::ArrayValue(ids)) = attr(&server, "promptgate.rules") else {
        panic!("promptgate.rules is a list");
    };
    let ids: Vec<String> = ids
        .values
        .iter()
        .filter_map(|v| match &v.value {
            Some(AnyValue::StringValue(s)) => Some(s.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(ids, rules, "the rule ids the client was told");
    assert!(
        children.iter().all(|s| s.kind != SpanKind::Client as i32),
        "a blocked request never went upstream"
    );
    assert!(
        server.status.as_ref().is_none_or(|s| s.code != 2),
        "a block is not an error"
    );
}

#[tokio::test]
async fn tracing_off_exports_nothing_and_leaves_the_clients_traceparent_alone() {
    let mock = MockUpstream::start().await;
    let (port, received) = http_receiver(false).await;
    let audit = tempfile::tempdir().expect("tempdir");
    let toml = format!(
        "[tracing]\nenabled = false\nendpoint = \"http://127.0.0.1:{port}\"\n[audit]\ndir = {:?}\n",
        audit.path().display().to_string()
    );
    let mut gw = Gateway::start_with(GatewayOpts::new(mock.url()).toml(&toml)).await;
    let traceparent = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    let with = post(
        &gw,
        "/v1/chat/completions",
        chat_body("off marker-four").into_bytes(),
        &[("traceparent", &traceparent)],
    )
    .await;
    assert_eq!(with.status(), 200);
    let without = post(
        &gw,
        "/v1/chat/completions",
        chat_body("off marker-five").into_bytes(),
        &[],
    )
    .await;
    assert_eq!(without.status(), 200);
    assert_eq!(
        upstream_traceparent(&mock, "marker-four").await,
        Some(traceparent),
        "passed on as the client sent it"
    );
    assert_eq!(upstream_traceparent(&mock, "marker-five").await, None);
    shut_down(&mut gw).await;
    assert!(received.bodies().is_empty(), "nothing exported");
    let events = file_events(audit.path());
    assert_eq!(events.len(), 2);
    assert!(events.iter().all(|e| e.get("trace_id").is_none()));
}

#[tokio::test]
async fn unsampled_requests_propagate_but_record_nothing() {
    let mock = MockUpstream::start().await;
    let (port, received) = http_receiver(false).await;
    let audit = tempfile::tempdir().expect("tempdir");
    let mut gw = gateway(&mock, port, audit.path(), "sampling_ratio = 0.0").await;
    // The client's unsampled decision is followed...
    let unsampled = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-00");
    let a = post(
        &gw,
        "/v1/chat/completions",
        chat_body("unsampled marker-six").into_bytes(),
        &[("traceparent", &unsampled)],
    )
    .await;
    // ...a new trace at ratio 0 is not recorded...
    let b = post(
        &gw,
        "/v1/chat/completions",
        chat_body("root marker-seven").into_bytes(),
        &[],
    )
    .await;
    // ...and a sampled parent is recorded whatever the ratio.
    let sampled = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    let c = post(
        &gw,
        "/v1/chat/completions",
        chat_body("sampled marker-eight").into_bytes(),
        &[("traceparent", &sampled)],
    )
    .await;
    let sent_a = upstream_traceparent(&mock, "marker-six")
        .await
        .expect("sent");
    let sent_b = upstream_traceparent(&mock, "marker-seven")
        .await
        .expect("sent");
    assert!(sent_a.starts_with(&format!("00-{CLIENT_TRACE}-")) && sent_a.ends_with("-00"));
    assert!(
        !sent_a.contains(CLIENT_SPAN),
        "the gateway's span is the parent"
    );
    assert!(sent_b.ends_with("-00"), "{sent_b}");
    shut_down(&mut gw).await;

    let spans = received.spans();
    let ids = |s: &Span| attr_str(s, "promptgate.request_id");
    let recorded: Vec<String> = spans.iter().filter_map(ids).collect();
    assert!(!recorded.contains(&request_id(&a)));
    assert!(!recorded.contains(&request_id(&b)));
    assert!(recorded.contains(&request_id(&c)));
    // The events carry the trace id the upstream saw, recorded or not.
    let events = file_events(audit.path());
    let trace_of = |rid: String| {
        events
            .iter()
            .find(|e| e["request_id"] == rid.as_str())
            .and_then(|e| e["trace_id"].as_str().map(str::to_string))
    };
    assert_eq!(trace_of(request_id(&a)).as_deref(), Some(CLIENT_TRACE));
    assert_eq!(trace_of(request_id(&b)).as_deref(), Some(&sent_b[3..35]));
}

#[tokio::test]
async fn a_grpc_collector_receives_the_spans() {
    let mock = MockUpstream::start().await;
    let (port, received) = grpc_receiver().await;
    let audit = tempfile::tempdir().expect("tempdir");
    let mut gw = gateway(&mock, port, audit.path(), "protocol = \"grpc\"").await;
    let resp = post(
        &gw,
        "/v1/chat/completions",
        chat_body("grpc marker-nine").into_bytes(),
        &[],
    )
    .await;
    assert_eq!(resp.status(), 200);
    let rid = request_id(&resp);
    shut_down(&mut gw).await;
    let (server, children) = request_spans(&received.spans(), &rid);
    assert_eq!(server.name, "chat gpt-4o-mini");
    assert!(children.iter().any(|s| s.kind == SpanKind::Client as i32));
    let (_, headers, path) = &received.requests()[0];
    assert_eq!(
        path,
        "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
    );
    assert_eq!(headers["content-type"], "application/grpc");
    assert_eq!(
        headers["authorization"],
        format!("Bearer {COLLECTOR_TOKEN}")
    );
}

#[tokio::test]
async fn a_collector_that_never_answers_fills_the_queue_and_drops_are_counted() {
    let mock = MockUpstream::start().await;
    let (port, received) = http_receiver(true).await;
    let audit = tempfile::tempdir().expect("tempdir");
    let gw = gateway(
        &mock,
        port,
        audit.path(),
        "queue = 1\nbatch_max = 1\nretries = 0\ntimeout_ms = 60000",
    )
    .await;
    // The exporter holds at most one batch in flight (stuck) and the queue one request: of six requests, at
    // least four find the queue full.
    for i in 0..6 {
        let resp = post(
            &gw,
            "/v1/chat/completions",
            chat_body(&format!("overflow {i}")).into_bytes(),
            &[],
        )
        .await;
        assert_eq!(
            resp.status(),
            200,
            "requests are served whatever the collector does"
        );
    }
    let sample = "promptgate_trace_spans_dropped_total{reason=\"queue_full\"}";
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let dropped = loop {
        let v = gw.metric(sample).await.unwrap_or(0.0);
        if v > 0.0 || std::time::Instant::now() > deadline {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Each request makes at least the server span; four requests dropped at least.
    assert!(dropped >= 4.0, "dropped {dropped}");
    assert_eq!(
        gw.metric("promptgate_trace_spans_exported_total").await,
        Some(0.0)
    );
    assert!(received.bodies().is_empty());
}

#[tokio::test]
async fn json_logs_of_the_request_path_carry_the_request_and_trace_ids() {
    let mock = MockUpstream::start().await;
    let (port, _received) = http_receiver(false).await;
    let audit = tempfile::tempdir().expect("tempdir");
    let toml = format!(
        "[log]\nformat = \"json\"\n[tracing]\nenabled = true\nendpoint = \"http://127.0.0.1:{port}\"\n\
         [audit]\ndir = {:?}\n",
        audit.path().display().to_string()
    );
    let mut gw = Gateway::start_with(
        GatewayOpts::new(mock.url())
            .toml(&toml)
            .env("RUST_LOG", "info,promptgate=debug"),
    )
    .await;
    let traceparent = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    // A block: the request path logs it (at debug).
    let resp = post(
        &gw,
        "/v1/chat/completions",
        chat_body(&format!("my key is {AWS_KEY}")).into_bytes(),
        &[("traceparent", &traceparent)],
    )
    .await;
    assert_eq!(resp.status(), 409);
    let rid = request_id(&resp);
    shut_down(&mut gw).await;
    let stderr = gw.stderr();
    let lines: Vec<Value> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines
        .iter()
        .any(|l| l["fields"]["message"] == "promptgate started"));
    let ours: Vec<&Value> = lines
        .iter()
        .filter(|l| l["fields"]["request_id"] == rid.as_str())
        .collect();
    assert!(!ours.is_empty(), "a line of the blocked request: {stderr}");
    assert!(ours.iter().all(|l| l["fields"]["trace_id"] == CLIENT_TRACE));
    assert!(!stderr.contains(AWS_KEY));
}
