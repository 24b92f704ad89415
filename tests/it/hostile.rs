//! Hostile input at the edges: clients that dribble, oversize or mis-frame their requests, upgrades that would
//! tunnel past inspection, answers labelled to slip past it, credentials and free text that must not travel
//! further than they should. Each test is named after the hole it closes; raw TCP where a well-behaved client
//! library would not send what an attacker does.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{
    chat_body, key_entry, post, recorded_header, wait_file_events, ws_connect, ws_next_json,
    ws_send_json, Gateway, GatewayOpts, KeysFile, MockUpstream,
};

/// Sends raw bytes (each part followed by its pause) and reads what comes back until the gateway closes the
/// connection or `limit` passes. Runs on a blocking thread: the mock upstream shares the test's runtime.
async fn raw_exchange(gw: &Gateway, parts: &[(&[u8], Duration)], limit: Duration) -> String {
    let addr = gw.addr;
    let parts: Vec<(Vec<u8>, Duration)> = parts.iter().map(|(b, d)| (b.to_vec(), *d)).collect();
    tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(limit)).expect("timeout");
        for (bytes, pause) in parts {
            // A write may fail once the gateway has answered and closed: that is an answer too.
            if s.write_all(&bytes).is_err() {
                break;
            }
            std::thread::sleep(pause);
        }
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    })
    .await
    .expect("raw exchange")
}

/// The status and the JSON body of a raw HTTP/1.1 answer.
fn status_and_body(raw: &str) -> (u16, Value) {
    let status = raw
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok())
        .unwrap_or(Value::Null);
    (status, body)
}

#[tokio::test]
async fn slow_clients_dribbling_their_head_or_body_are_cut_with_408_and_release_their_permit() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start_with(GatewayOpts::new(mock.url()).toml(
        "[server]\nheader_timeout_ms = 600\ngrace_period_seconds = 10\n[limits]\nbody_timeout_ms = 800\n[limits.per_caller]\nmax_concurrent = 1",
    ))
    .await;
    // One byte every 200 ms: the head is never complete within 600 ms.
    let parts: Vec<(&[u8], Duration)> = b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n"
        .chunks(1)
        .map(|c| (c, Duration::from_millis(200)))
        .collect();
    let raw = raw_exchange(&gw, &parts, Duration::from_secs(10)).await;
    let (status, body) = status_and_body(&raw);
    assert_eq!(status, 408, "{raw}");
    assert_eq!(body["error"]["code"], "request_timeout");
    assert!(
        raw.to_ascii_lowercase().contains("connection: close"),
        "{raw}"
    );

    // A body promised at 200 bytes that dribbles: 408, and the caller's one concurrency permit is free again.
    let raw = raw_exchange(
        &gw,
        &[
            (
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer sk-slow\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n{\"model\":",
                Duration::from_millis(300),
            ),
            (b"\"m\",", Duration::from_millis(300)),
            (b"\"messages\":", Duration::from_millis(300)),
            (b"[", Duration::from_millis(300)),
        ],
        Duration::from_secs(10),
    )
    .await;
    let (status, body) = status_and_body(&raw);
    assert_eq!(status, 408, "{raw}");
    assert_eq!(body["error"]["code"], "request_timeout");
    let r = post(
        &gw,
        "/v1/chat/completions",
        chat_body("after").into_bytes(),
        &[("authorization", "Bearer sk-slow")],
    )
    .await;
    assert_eq!(r.status(), 200, "the permit was released");
    assert_eq!(
        gw.metric(r#"promptgate_edge_refused_total{reason="header_timeout"}"#)
            .await,
        Some(1.0)
    );
    assert_eq!(
        mock.received().await.len(),
        1,
        "only the last request went upstream"
    );
}

#[tokio::test]
async fn oversized_heads_and_too_many_headers_are_431_and_never_forwarded() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock.url()).await;
    let big = format!(
        "GET /v1/models HTTP/1.1\r\nHost: gw\r\nx-big: {}\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    let many: String = (0..150).map(|i| format!("x-h{i}: v\r\n")).collect();
    let many = format!("GET /v1/models HTTP/1.1\r\nHost: gw\r\n{many}\r\n");
    for head in [big, many] {
        let raw = raw_exchange(
            &gw,
            &[(head.as_bytes(), Duration::ZERO)],
            Duration::from_secs(5),
        )
        .await;
        let (status, body) = status_and_body(&raw);
        assert_eq!(status, 431, "{}", &raw[..raw.len().min(200)]);
        assert_eq!(body["error"]["code"], "request_header_fields_too_large");
    }
    // Within the limits, the same request goes through.
    let ok = raw_exchange(
        &gw,
        &[(
            b"GET /v1/models HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
            Duration::ZERO,
        )],
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(status_and_body(&ok).0, 200, "{ok}");
    assert_eq!(mock.received().await.len(), 1);
}

#[tokio::test]
async fn ambiguous_framing_is_refused_with_400_and_never_forwarded() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock.url()).await;
    let body = chat_body("hi");
    let cases = [
        format!("POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n{body}", body.len()),
        format!("POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Length: {}\r\nTransfer_Encoding: chunked\r\n\r\n{body}", body.len()),
        format!("POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent_Length: 5\r\nContent-Length: {}\r\n\r\n{body}", body.len()),
        format!("POST /v1/chat/completions HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}", body.len()),
    ];
    for (i, req) in cases.iter().enumerate() {
        let raw = raw_exchange(
            &gw,
            &[(req.as_bytes(), Duration::ZERO)],
            Duration::from_secs(5),
        )
        .await;
        let (status, v) = status_and_body(&raw);
        assert_eq!(status, 400, "case {i}: {raw}");
        assert_eq!(v["error"]["code"], "malformed_request", "case {i}");
    }
    assert!(mock.received().await.is_empty());
}

#[tokio::test]
async fn connections_over_the_per_address_cap_are_refused_and_the_cap_is_given_back() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start_with(
        GatewayOpts::new(mock.url())
            .toml("[server]\nmax_connections_per_ip = 2\ngrace_period_seconds = 10"),
    )
    .await;
    // The readiness probe's connection holds a place until the gateway reads its close: wait for that.
    assert_eq!(
        gw.metric_eventually("promptgate_connections_open", 0.0)
            .await,
        Some(0.0)
    );
    // Two idle connections hold both places.
    let a = TcpStream::connect(gw.addr).expect("a");
    let b = TcpStream::connect(gw.addr).expect("b");
    // The gateway counts a connection when its accept loop hands it over, not when the kernel completes it.
    let open = gw
        .metric_eventually("promptgate_connections_open", 2.0)
        .await;
    assert_eq!(open, Some(2.0), "both idle connections are counted");
    let raw = raw_exchange(
        &gw,
        &[(
            b"GET /v1/models HTTP/1.1\r\nHost: gw\r\n\r\n",
            Duration::ZERO,
        )],
        Duration::from_secs(5),
    )
    .await;
    let (status, v) = status_and_body(&raw);
    assert_eq!(status, 503, "{raw}");
    assert_eq!(v["error"]["code"], "too_many_connections");
    drop((a, b));
    // The gateway notices the two closes when it next reads them: wait for that (no timing assumed).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        let r = reqwest::get(gw.url("/v1/models")).await.expect("get");
        if r.status() == 200 || std::time::Instant::now() > deadline {
            break r.status();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status, 200, "the places were given back");
}

#[tokio::test]
async fn upgrades_other_than_realtime_sessions_are_refused_by_default_counted_and_recorded() {
    let mock = MockUpstream::start().await;
    let audit = tempfile::tempdir().expect("tempdir");
    let gw = Gateway::start_with(GatewayOpts::new(mock.url()).toml(&format!(
        "[audit]\ndir = {:?}\n",
        audit.path().display().to_string()
    )))
    .await;
    // Realtime sessions are the gateway's own (tests/it/realtime.rs); any other upgrade is a tunnel it cannot
    // see into.
    let handshake = b"GET /v1/socket?model=gpt-4o-realtime HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    let raw = raw_exchange(&gw, &[(handshake, Duration::ZERO)], Duration::from_secs(5)).await;
    let (status, v) = status_and_body(&raw);
    assert_eq!(status, 403, "{raw}");
    assert_eq!(v["error"]["code"], "upgrade_not_allowed");
    assert_eq!(v["error"]["policy"], "inspect.websocket");
    assert!(
        mock.received().await.is_empty(),
        "never reached the upstream"
    );
    let events = wait_file_events(audit.path(), 1).await;
    assert_eq!(events[0]["error"], "upgrade_not_allowed");
    assert_eq!(events[0]["status"], 403);
    assert_eq!(
        gw.metric_eventually(r#"promptgate_upgrades_total{outcome="refused"}"#, 1.0)
            .await,
        Some(1.0)
    );
    drop(gw);
    // Tunnelled by the gateway when the operator says so (here with realtime sessions off, so that the mock's
    // realtime endpoint is reached through the tunnel): the mock upgrades it and records the session.
    // The mock speaks first (its `session.created` follows its 101 at once): the tunnel must survive an upstream
    // whose answer is read before anything else happens.
    let audit = tempfile::tempdir().expect("tempdir");
    let gw = Gateway::start_with(GatewayOpts::new(mock.url()).toml(&format!(
        "[inspect]\nwebsocket = \"pass\"\n[realtime]\nenabled = false\n[audit]\ndir = {:?}\n",
        audit.path().display().to_string()
    )))
    .await;
    let (mut ws, resp) = ws_connect(&gw.ws_url("/v1/realtime?model=gpt-4o-realtime"), &[], &[])
        .await
        .expect("upgrade passed on");
    assert_eq!(resp.status(), 101);
    assert!(resp.headers().contains_key("x-request-id"), "{resp:?}");
    assert_eq!(ws_next_json(&mut ws).await["type"], "session.created");
    // Both ways, uninspected: the operator chose a tunnel.
    ws_send_json(
        &mut ws,
        json!({"type": "session.update", "session": {"instructions": "through the tunnel"}}),
    )
    .await;
    let updated = ws_next_json(&mut ws).await;
    assert_eq!(updated["type"], "session.updated", "{updated}");
    assert!(updated.to_string().contains("through the tunnel"));
    assert_eq!(mock.received().await.len(), 1);
    assert_eq!(mock.realtime_sessions().await.len(), 1);
    drop(ws);
    let events = wait_file_events(audit.path(), 1).await;
    assert_eq!(events[0]["status"], 101, "{:?}", events[0]);
    // Bytes each way through the tunnel: the client's event in, the upstream's two events out.
    assert!(
        events[0]["bytes"]["in"].as_u64() > Some(0),
        "{:?}",
        events[0]
    );
    assert!(events[0]["bytes"]["out"].as_u64() > events[0]["bytes"]["in"].as_u64());
    assert_eq!(
        gw.metric_eventually(r#"promptgate_upgrades_total{outcome="passed"}"#, 1.0)
            .await,
        Some(1.0)
    );
}

#[tokio::test]
async fn answers_labelled_to_skip_inspection_are_inspected_all_the_same() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock.url()).await;
    let client = reqwest::Client::new();
    let chat = |stream: bool| {
        serde_json::json!({"model": "m", "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
            .to_string()
    };
    // Streams with no Content-Type, or labelled as bytes or JSON: filtered (a block ends them).
    for label in [
        "none",
        "application/octet-stream",
        "application/json",
        "text/plain",
    ] {
        let raw = client
            .post(gw.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .header("x-mock-content-type", label)
            .header("x-mock-content", "one AKIAIOSFODNN7EXAMPLE two")
            .body(chat(true))
            .send()
            .await
            .expect("send")
            .text()
            .await
            .expect("text");
        assert!(!raw.contains("AKIA"), "{label}: {raw}");
        assert!(raw.contains("policy_blocked"), "{label}: {raw}");
    }
    // JSON answers labelled as text, HTML or nothing: held and inspected (the email redacted).
    for label in [
        "text/plain",
        "text/html",
        "none",
        "application/octet-stream",
    ] {
        let r = client
            .post(gw.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .header("x-mock-content-type", label)
            .header("x-mock-content", "write to jane.doe@example.com")
            .body(chat(false))
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 200, "{label}");
        let text = r.text().await.expect("text");
        assert!(!text.contains("jane.doe"), "{label}: {text}");
        assert!(text.contains("[EMAIL]"), "{label}: {text}");
    }
    // Upstream errors carry their bodies through inspection too.
    for status in ["400", "500", "503"] {
        let r = client
            .post(gw.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .header("x-mock-status", status)
            .header("x-mock-content", "failed near AKIAIOSFODNN7EXAMPLE")
            .body(chat(false))
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 409, "{status}");
        let text = r.text().await.expect("text");
        assert!(!text.contains("AKIA"), "{status}: {text}");
    }
    // A clean upstream error keeps its status and body.
    let r = client
        .post(gw.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("x-mock-status", "503")
        .header("x-mock-content", "overloaded")
        .body(chat(false))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 503);
    assert!(r.text().await.expect("text").contains("overloaded"));
}

#[tokio::test]
async fn every_client_credential_is_stripped_for_gateway_keys_and_proxy_credentials_always() {
    let mock = MockUpstream::start().await;
    let secret = "pgk_strip_secret";
    let keys = KeysFile::new(&key_entry(
        "strip",
        secret,
        "upstream_key_env = \"PG_TEST_PROVIDER_KEY\"",
    ));
    let gw = Gateway::start_with(
        GatewayOpts::new(mock.url())
            .toml(&format!(
                "[auth]\nmode = \"gateway_keys\"\nkeys_file = {:?}\n",
                keys.path.display().to_string()
            ))
            .env("PG_TEST_PROVIDER_KEY", "sk-provider"),
    )
    .await;
    let bearer = format!("Bearer {secret}");
    let r = post(
        &gw,
        "/v1/chat/completions",
        chat_body("hi").into_bytes(),
        &[
            ("authorization", bearer.as_str()),
            ("x-api-key", secret),
            ("proxy-authorization", "Basic cHJveHk6c2VjcmV0"),
            ("x-goog-api-key", secret),
        ],
    )
    .await;
    assert_eq!(r.status(), 200);
    let rec = &mock.received().await[0];
    assert_eq!(
        recorded_header(rec, "authorization"),
        Some("Bearer sk-provider")
    );
    for h in [
        "x-api-key",
        "proxy-authorization",
        "x-goog-api-key",
        "api-key",
    ] {
        assert_eq!(recorded_header(rec, h), None, "{h} reached the upstream");
    }
    assert!(
        !rec.to_string().contains(secret),
        "the gateway key reached the upstream"
    );
}

#[tokio::test]
async fn a_multipart_upload_naming_a_model_outside_the_keys_scope_is_403() {
    let mock = MockUpstream::start().await;
    let secret = "pgk_multipart_secret";
    let keys = KeysFile::new(&key_entry(
        "scoped",
        secret,
        "allowed_models = [\"whisper-1\"]",
    ));
    let gw = Gateway::start_with(GatewayOpts::new(mock.url()).toml(&format!(
        "[auth]\nmode = \"gateway_keys\"\nkeys_file = {:?}\n",
        keys.path.display().to_string()
    )))
    .await;
    let form = |model: &str| {
        format!("--B\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n{model}\r\n--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.mp3\"\r\nContent-Type: audio/mpeg\r\n\r\nID3\r\n--B--\r\n")
    };
    let send = |model: &'static str| {
        let gw = &gw;
        async move {
            reqwest::Client::new()
                .post(gw.url("/v1/audio/transcriptions"))
                .header("authorization", format!("Bearer {secret}"))
                .header("content-type", "multipart/form-data; boundary=B")
                .body(form(model))
                .send()
                .await
                .expect("send")
        }
    };
    let r = send("gpt-4o-transcribe").await;
    assert_eq!(r.status(), 403);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["error"]["code"], "model_not_allowed");
    assert!(mock.received().await.is_empty());
    // The model it may use goes through (the mock reads only JSON bodies: its 400 shows it got the request).
    let r = send("whisper-1").await;
    assert_eq!(r.status(), 400);
    assert!(r
        .text()
        .await
        .expect("text")
        .contains("mock: invalid JSON body"));
    assert_eq!(mock.received().await.len(), 1);
}

#[tokio::test]
async fn an_empty_body_on_a_json_route_is_400_and_never_forwarded() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock.url()).await;
    for path in ["/v1/chat/completions", "/v1/embeddings", "/v1/responses"] {
        let r = post(&gw, path, Vec::new(), &[]).await;
        assert_eq!(r.status(), 400, "{path}");
        let v: Value = r.json().await.expect("json");
        assert_eq!(v["error"]["code"], "invalid_body", "{path}");
    }
    // Listing stored completions has no body and is not refused.
    let r = reqwest::get(gw.url("/v1/chat/completions"))
        .await
        .expect("get");
    assert_ne!(r.status(), 400);
    assert_eq!(mock.received().await.len(), 1);
}

#[tokio::test]
async fn secrets_in_free_text_fields_never_reach_an_event_a_log_or_a_metric() {
    const KEY: &str = "AKIAIOSFODNN7EXAMPLE";
    const EMAIL: &str = "jane.doe@example.com";
    let mock = MockUpstream::start().await;
    let audit = tempfile::tempdir().expect("tempdir");
    let gw = Gateway::start_with(GatewayOpts::new(mock.url()).toml(&format!(
        "[upstream]\nread_timeout_ms = 300\n[audit]\ndir = {:?}\nstdout = true\n",
        audit.path().display().to_string()
    )))
    .await;
    let client = reqwest::Client::new();
    // 1. Secrets in the query, the request id, the session id and the user agent (a clean body, so the
    //    request goes on); the upstream times out, so the failure is logged too.
    let body = serde_json::json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]});
    let r = client
        .post(gw.url(&format!("/v1/chat/completions?api_key={KEY}")))
        .header("content-type", "application/json")
        .header("x-request-id", KEY)
        .header("x-session-id", KEY)
        .header("user-agent", format!("app/{KEY}"))
        .header("x-mock-latency-ms", "1000")
        .body(body.to_string())
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 504);
    let id = r.headers()["x-request-id"]
        .to_str()
        .expect("id")
        .to_string();
    assert_ne!(id, KEY, "a request id a rule matches is replaced");
    // 2. A secret as the model (the request is blocked; the event must not name the model).
    let r = post(
        &gw,
        "/v1/chat/completions",
        serde_json::json!({"model": KEY, "messages": [{"role": "user", "content": "hi"}]})
            .to_string()
            .into_bytes(),
        &[],
    )
    .await;
    assert_eq!(r.status(), 409);
    // 3. An email as the model: the shape of a name, but a rule matches it.
    let r = post(
        &gw,
        "/v1/embeddings",
        serde_json::json!({"model": EMAIL, "input": "hi"})
            .to_string()
            .into_bytes(),
        &[],
    )
    .await;
    assert!(
        r.status().is_success() || r.status() == 409,
        "{}",
        r.status()
    );
    // 4. A secret as an extension method.
    let raw = raw_exchange(
        &gw,
        &[(
            format!("{KEY} /v1/models HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
                .as_bytes(),
            Duration::ZERO,
        )],
        Duration::from_secs(5),
    )
    .await;
    assert!(!raw.is_empty());

    let events = wait_file_events(audit.path(), 4).await;
    assert_eq!(events.len(), 4, "{events:?}");
    // Each found by what it is, not by its place: a request's event is written when it has finished, so the
    // timed-out first request's may come after the next one's.
    let event = |what: &str, pick: &dyn Fn(&Value) -> bool| {
        let found: Vec<&Value> = events.iter().filter(|e| pick(e)).collect();
        assert_eq!(found.len(), 1, "{what}: {events:?}");
        found[0].clone()
    };
    let timed_out = event("the timed-out request", &|e| e["request_id"] == id.as_str());
    assert!(timed_out["session_id"].is_null());
    let blocked = event("the secret as the model", &|e| {
        e["status"] == 409 && e["route"] != "embeddings"
    });
    assert!(blocked["model"].is_null());
    let embeddings = event("the email as the model", &|e| e["route"] == "embeddings");
    assert!(embeddings["model"].is_null());
    event("the extension method", &|e| e["method"] == "OTHER");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = gw.stderr();
    assert!(
        log.contains(&format!("request_id={id}")),
        "the failure was logged: {log}"
    );
    let sinks = [
        (
            "the audit file",
            std::fs::read_dir(audit.path())
                .expect("dir")
                .filter_map(|e| e.ok())
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .collect::<String>(),
        ),
        ("stdout", gw.stdout()),
        ("the log", log),
        ("the metrics", gw.metrics_text().await),
    ];
    for (sink, text) in sinks {
        for secret in [KEY, EMAIL] {
            assert!(!text.contains(secret), "{secret} reached {sink}");
        }
    }
}

/// One HTTP/1.1 answer read off a kept-alive connection: framed by `Content-Length` or chunked, never by the
/// connection closing (a close-delimited answer has no end a pooled client can wait for).
struct Answer {
    status: u16,
    head: String,
    body: String,
}

fn read_answer(r: &mut impl std::io::BufRead) -> Answer {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        assert!(
            r.read_line(&mut line).expect("head") > 0,
            "closed mid-head: {head}"
        );
        if line == "\r\n" {
            break;
        }
        head.push_str(&line.to_ascii_lowercase());
    }
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let field = |name: &str| {
        head.lines().find_map(|l| {
            l.strip_prefix(&format!("{name}: "))
                .map(|v| v.trim().to_string())
        })
    };
    let mut body = Vec::new();
    if let Some(len) = field("content-length") {
        body.resize(len.parse().expect("length"), 0);
        r.read_exact(&mut body).expect("body");
    } else {
        assert_eq!(
            field("transfer-encoding").as_deref(),
            Some("chunked"),
            "unframed answer: {head}"
        );
        loop {
            let mut size = String::new();
            r.read_line(&mut size).expect("chunk size");
            let n = usize::from_str_radix(size.trim(), 16).expect("hex size");
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk).expect("chunk");
            body.extend_from_slice(&chunk[..n]);
            if n == 0 {
                break;
            }
        }
    }
    Answer {
        status,
        head,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

#[tokio::test]
async fn answers_refused_or_streamed_are_framed_so_a_kept_alive_connection_goes_on() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock.url()).await;
    let addr = gw.addr;
    const KEY: &str = "AKIAIOSFODNN7EXAMPLE";
    // (stream?, what the upstream answers, the status the client must see, what the body must hold)
    let cases = [
        (false, format!("the key is {KEY}"), 409, "policy_blocked"),
        (
            true,
            format!("the key is {KEY} indeed"),
            200,
            "policy_blocked",
        ),
        (true, "a clean streamed answer".to_string(), 200, "[DONE]"),
        (false, "a clean answer".to_string(), 200, "a clean answer"),
    ];
    let answers = tokio::task::spawn_blocking(move || {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        let mut w = s.try_clone().expect("clone");
        let mut r = std::io::BufReader::new(s);
        let mut answers = Vec::new();
        for (stream, content, ..) in &cases {
            let body = serde_json::json!({"model": "gpt-4o-mini", "stream": stream,
                "messages": [{"role": "user", "content": "hi"}]})
            .to_string();
            let head = format!(
                "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nx-mock-content: {content}\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            w.write_all(format!("{head}{body}").as_bytes()).expect("write");
            let a = read_answer(&mut r);
            let closes = a.head.contains("connection: close");
            answers.push(a);
            if closes {
                break;
            }
        }
        (cases, answers)
    })
    .await
    .expect("exchange");
    let (cases, answers) = answers;
    assert_eq!(
        answers.len(),
        cases.len(),
        "the connection ended early: {}",
        answers.last().map_or("", |a| &a.head)
    );
    for ((stream, _, status, holds), a) in cases.iter().zip(&answers) {
        assert_eq!(a.status, *status, "{}", a.head);
        assert!(a.body.contains(holds), "{}", a.body);
        assert!(!a.body.contains(KEY));
        if *stream {
            assert!(a.head.contains("transfer-encoding: chunked"), "{}", a.head);
        }
    }
    assert_eq!(mock.received().await.len(), cases.len());
}

#[tokio::test]
async fn refusals_and_clients_that_leave_are_not_error_lines_but_upstream_failures_are() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock.url()).await;
    let client = reqwest::Client::new();
    let chat = |content: &str, stream: bool| {
        client
            .post(gw.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .header("x-mock-content", content.to_string())
            .body(
                serde_json::json!({"model": "gpt-4o-mini", "stream": stream,
                    "messages": [{"role": "user", "content": "hi"}]})
                .to_string(),
            )
    };
    // Refused by policy, on the request and on the answer.
    let r = post(
        &gw,
        "/v1/chat/completions",
        chat_body("my key AKIAIOSFODNN7EXAMPLE").into_bytes(),
        &[],
    )
    .await;
    assert_eq!(r.status(), 409);
    let r = chat("the key is AKIAIOSFODNN7EXAMPLE", false)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 409);
    // A client that leaves in the middle of a slow stream.
    let r = chat("a long and slow answer", true)
        .header("x-mock-chunks", "50")
        .header("x-mock-delay-ms", "50")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    drop(r);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!gw.stderr().contains("ERROR"), "{}", gw.stderr());
    // An upstream failure is an error line.
    let dead = Gateway::start("http://127.0.0.1:9").await;
    let r = post(
        &dead,
        "/v1/chat/completions",
        chat_body("hi").into_bytes(),
        &[],
    )
    .await;
    assert_eq!(r.status(), 502);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(dead.stderr().contains("ERROR"), "{}", dead.stderr());
}
