//! Decision events seen from outside: the JSONL file, the stdout sink and a real webhook receiver (a Python
//! HTTP server) — their fields, that no seeded secret or PII ever reaches them, signatures, delivery through
//! an outage and across `kill -9`, a failing disk, and the metrics a scripted sequence moves.

use std::collections::HashSet;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::support::{
    chat_body, copy_rules, file_events, post, repo_root, wait_file_events, Gateway, GatewayOpts,
    MockUpstream,
};

const SECRET: &str = "webhook-test-secret";
const EMAIL: &str = "jane.doe@example.com";
const AWS_KEY: &str = "AKIAIOSFODNN7EXAMPLE";
const PROMPT_MARKER: &str = "zebra-prompt-marker";
const ANSWER_MARKER: &str = "wombat-answer-marker";

/// The Python webhook receiver.
struct Receiver {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Receiver {
    fn start(down: bool) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = Self::spawn(dir);
        r.set_down(down);
        r
    }

    fn spawn(dir: tempfile::TempDir) -> Self {
        let mut child = Command::new("python3")
            .arg(repo_root().join("tests/python/webhook_receiver.py"))
            .arg(dir.path().join("records.jsonl"))
            .arg(dir.path().join("down"))
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.as_mut().expect("stdout"))
            .read_line(&mut line)
            .expect("port line");
        let port = line.trim().parse().expect("port");
        Self { child, port, dir }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/audit", self.port)
    }

    fn set_down(&self, down: bool) {
        let flag = self.dir.path().join("down");
        if down {
            std::fs::write(flag, b"").expect("flag");
        } else {
            let _ = std::fs::remove_file(flag);
        }
    }

    /// Every POST received: (headers, raw body).
    fn posts(&self) -> Vec<(Value, String)> {
        let text =
            std::fs::read_to_string(self.dir.path().join("records.jsonl")).unwrap_or_default();
        text.lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).expect("record");
                (
                    v["headers"].clone(),
                    v["body"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }

    /// Every event delivered, in order.
    fn events(&self) -> Vec<Value> {
        self.posts()
            .iter()
            .flat_map(|(_, body)| {
                let v: Value = serde_json::from_str(body).expect("batch json");
                v["events"].as_array().cloned().unwrap_or_default()
            })
            .collect()
    }

    fn event_ids(&self) -> HashSet<String> {
        self.events()
            .iter()
            .filter_map(|e| e["event_id"].as_str().map(str::to_string))
            .collect()
    }

    /// Waits until every id in `want` has been delivered.
    async fn wait_for(&self, want: &HashSet<String>, limit: Duration) -> HashSet<String> {
        let deadline = Instant::now() + limit;
        loop {
            let got = self.event_ids();
            if want.is_subset(&got) || Instant::now() > deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn audit_toml(dir: &Path, webhook: Option<&Receiver>, extra: &str) -> String {
    let mut t = format!(
        "[audit]\ndir = {:?}\nstdout = true\n{extra}\n",
        dir.display().to_string()
    );
    if let Some(r) = webhook {
        t.push_str(&format!(
            "[audit.webhook]\nurl = {:?}\nsecret_env = \"PG_TEST_WEBHOOK_SECRET\"\nmax_backoff_ms = 300\n",
            r.url()
        ));
    }
    t
}

/// A gateway writing to `audit` and delivering to `receiver`, with the webhook's secret set.
fn webhook_opts(mock: &MockUpstream, audit: &Path, receiver: &Receiver) -> GatewayOpts {
    GatewayOpts::new(mock.url())
        .toml(&audit_toml(audit, Some(receiver), ""))
        .env("PG_TEST_WEBHOOK_SECRET", SECRET)
}

fn verify_signatures(r: &Receiver) {
    let posts = r.posts();
    assert!(!posts.is_empty());
    for (headers, body) in posts {
        let sig = headers["x-promptgate-signature"]
            .as_str()
            .expect("signature header");
        let ts = headers["x-promptgate-timestamp"]
            .as_str()
            .expect("timestamp header");
        let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("key");
        mac.update(body.as_bytes());
        let want = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        assert_eq!(sig, want, "signature does not verify");
        let v: Value = serde_json::from_str(&body).expect("json");
        assert_eq!(
            v["timestamp"].to_string(),
            ts,
            "the signed body carries the timestamp"
        );
    }
}

fn chat(text: &str, stream: bool) -> Vec<u8> {
    json!({"model": "gpt-4o-mini", "stream": stream, "user": "user-7",
           "messages": [{"role": "user", "content": text}]})
    .to_string()
    .into_bytes()
}

/// One scripted request: name, body, extra headers, expected status.
type Step = (&'static str, Vec<u8>, Vec<(&'static str, String)>, u16);

#[tokio::test]
async fn every_outcome_leaves_one_event_with_its_fields_and_no_sink_sees_a_value() {
    let mock = MockUpstream::start().await;
    let receiver = Receiver::start(false);
    let audit = tempfile::tempdir().expect("tempdir");
    let rules = tempfile::tempdir().expect("tempdir");
    copy_rules(rules.path());
    std::fs::write(
        rules.path().join("faulty.toml"),
        "[[rule]]\nid = \"test.faulty\"\ndescription = \"panics\"\nregex = { pattern = 'boom[0-9]' }\nvalidator = \"fault_injection\"\naction = \"log\"\n",
    )
    .expect("write");
    let gw = Gateway::start_with(
        webhook_opts(&mock, audit.path(), &receiver)
            .rules(rules.path())
            .toml("[limits.per_caller]\nrequests_per_minute = 5")
            .env("PROMPTGATE_ALLOW_FAULT_INJECTION", "1"),
    )
    .await;
    let answer = format!("the answer is {ANSWER_MARKER}, nothing else");
    let steps: Vec<Step> = vec![
        (
            "allow",
            chat(&format!("say hi {PROMPT_MARKER}"), false),
            vec![
                ("x-mock-content", answer.clone()),
                ("x-session-id", "conv-1".into()),
            ],
            200,
        ),
        (
            "redact",
            chat(&format!("mail {EMAIL} {PROMPT_MARKER}"), false),
            vec![],
            200,
        ),
        (
            "block",
            chat(&format!("key {AWS_KEY} {PROMPT_MARKER}"), false),
            vec![],
            409,
        ),
        (
            "mid-stream block",
            chat(PROMPT_MARKER, true),
            vec![
                ("x-mock-content", format!("here: {AWS_KEY} and more")),
                ("x-mock-chunks", "3".into()),
            ],
            200,
        ),
        ("503", chat("boom1", false), vec![], 503),
        ("429", chat("hello", false), vec![], 429),
    ];
    let mut request_ids = Vec::new();
    for (name, body, headers, status) in &steps {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = post(&gw, "/v1/chat/completions", body.clone(), &h).await;
        assert_eq!(r.status().as_u16(), *status, "{name}");
        request_ids.push(
            r.headers()["x-request-id"]
                .to_str()
                .expect("id")
                .to_string(),
        );
        let _ = r.bytes().await;
    }
    let events = wait_file_events(audit.path(), steps.len()).await;
    assert_eq!(events.len(), steps.len(), "{events:?}");
    let ids: HashSet<String> = events
        .iter()
        .map(|e| e["event_id"].as_str().expect("id").to_string())
        .collect();
    assert_eq!(ids.len(), steps.len(), "event ids are unique");

    // Events are written as requests end, not necessarily in the order they were sent.
    let step = |i: usize| {
        events
            .iter()
            .find(|e| e["request_id"] == request_ids[i].as_str())
            .unwrap_or_else(|| panic!("no event for step {}", steps[i].0))
            .clone()
    };
    let allow = &step(0);
    assert_eq!(allow["type"], "chat.message");
    assert_eq!(
        allow["decision"],
        json!({"request": "allow", "response": "allow"})
    );
    assert_eq!(allow["route"], "chat_completions");
    assert_eq!(allow["model"], "gpt-4o-mini");
    assert_eq!(allow["session_id"], "conv-1");
    assert!(allow["key_id"].as_str().is_some());
    assert!(allow["usage"]["total_tokens"]
        .as_u64()
        .is_some_and(|n| n > 0));
    assert!(allow["latency"]["upstream_ms"].as_f64().is_some());
    assert!(allow["latency"]["total_ms"].as_f64().is_some());
    assert!(allow["bytes"]["in"].as_u64().is_some_and(|n| n > 0));
    assert!(allow["bytes"]["out"].as_u64().is_some_and(|n| n > 0));
    assert!(allow["rules_version"]
        .as_str()
        .is_some_and(|v| v.len() == 12));
    let redact = &step(1);
    assert_eq!(redact["decision"]["request"], "redact");
    assert_eq!(
        redact["session_id"], "user-7",
        "the body's user field correlates"
    );
    assert_eq!(
        redact["rules"],
        json!([{"id": "pii.email", "action": "redact", "direction": "request", "count": 1, "enforced": true}])
    );
    let block = &step(2);
    assert_eq!(block["type"], "chat.blocked");
    assert_eq!(
        (block["status"].clone(), block["error"].clone()),
        (json!(409), json!("policy_blocked"))
    );
    assert_eq!(
        block["latency"]["upstream_ms"],
        Value::Null,
        "a blocked request never went upstream"
    );
    let mid = &step(3);
    assert_eq!(mid["type"], "chat.blocked");
    assert_eq!(mid["stream"], true);
    assert_eq!(mid["blocked_mid_stream"], true);
    assert_eq!(mid["decision"]["response"], "block");
    assert_eq!(
        (
            mid["rules"][0]["id"].clone(),
            mid["rules"][0]["direction"].clone()
        ),
        (json!("secret.aws_access_key_id"), json!("response")),
        "a mid-stream block names the rule that blocked"
    );
    assert!(mid["latency"]["ttft_ms"].as_f64().is_some());
    let failed = step(4);
    assert_eq!(failed["decision"]["request"], "error");
    assert_eq!(
        (failed["status"].clone(), failed["error"].clone()),
        (json!(503), json!("inspection_failed"))
    );
    let limited = step(5);
    assert_eq!(
        (limited["status"].clone(), limited["error"].clone()),
        (json!(429), json!("rate_limit_exceeded"))
    );

    // The same events reached stdout and the webhook; no sink holds a seeded value, prompt or answer text.
    let delivered = receiver.wait_for(&ids, Duration::from_secs(10)).await;
    assert!(
        ids.is_subset(&delivered),
        "not every event reached the webhook"
    );
    verify_signatures(&receiver);
    let stdout = gw.stdout();
    assert_eq!(stdout.lines().count(), steps.len());
    let file_text: String = events.iter().map(|e| e.to_string()).collect();
    let webhook_text: String = receiver.posts().into_iter().map(|(_, b)| b).collect();
    for (sink, text) in [
        ("file", &file_text),
        ("stdout", &stdout),
        ("webhook", &webhook_text),
        ("log", &gw.stderr()),
    ] {
        for value in [EMAIL, AWS_KEY, PROMPT_MARKER, ANSWER_MARKER, "boom1"] {
            assert!(!text.contains(value), "{sink} holds {value:?}");
        }
    }
}

#[tokio::test]
async fn a_webhook_outage_delays_delivery_and_loses_nothing() {
    let mock = MockUpstream::start().await;
    let receiver = Receiver::start(true);
    let audit = tempfile::tempdir().expect("tempdir");
    let gw = Gateway::start_with(webhook_opts(&mock, audit.path(), &receiver)).await;
    for i in 0..20 {
        let r = post(
            &gw,
            "/v1/chat/completions",
            chat_body(&format!("hello {i}")).into_bytes(),
            &[],
        )
        .await;
        assert_eq!(r.status(), 200);
    }
    let written: HashSet<String> = wait_file_events(audit.path(), 20)
        .await
        .iter()
        .map(|e| e["event_id"].as_str().expect("id").to_string())
        .collect();
    assert_eq!(written.len(), 20);
    // Down: deliveries fail and are retried; nothing is delivered.
    let deadline = Instant::now() + Duration::from_secs(10);
    while gw
        .metric("promptgate_audit_webhook_failures_total")
        .await
        .unwrap_or(0.0)
        < 2.0
    {
        assert!(Instant::now() < deadline, "no failed delivery was counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(receiver.posts().is_empty());
    assert!(gw
        .metric("promptgate_audit_webhook_lag_seconds")
        .await
        .is_some_and(|l| l > 0.0));
    // Up again: everything arrives, signed.
    receiver.set_down(false);
    let got = receiver.wait_for(&written, Duration::from_secs(10)).await;
    assert!(
        written.is_subset(&got),
        "missing after the outage: {:?}",
        written.difference(&got).collect::<Vec<_>>()
    );
    verify_signatures(&receiver);
    assert_eq!(
        gw.metric_eventually("promptgate_audit_events_delivered_total", 20.0)
            .await,
        Some(20.0)
    );
}

#[tokio::test]
async fn a_gateway_killed_under_load_loses_no_written_event() {
    let mock = MockUpstream::start().await;
    let receiver = Receiver::start(false);
    let audit = tempfile::tempdir().expect("tempdir");
    let opts = || webhook_opts(&mock, audit.path(), &receiver);
    let gw = Gateway::start_with(opts()).await;
    let url = gw.url("/v1/chat/completions");
    // Eight clients in a loop until the gateway dies.
    let load: Vec<_> = (0..8)
        .map(|c| {
            let url = url.clone();
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                for i in 0.. {
                    let sent = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(chat_body(&format!("client {c} request {i}")))
                        .send()
                        .await;
                    if sent.is_err() {
                        return i;
                    }
                }
                0
            })
        })
        .collect();
    wait_file_events(audit.path(), 150).await;
    gw.signal("KILL");
    let mut gw = gw;
    gw.wait_exit(Duration::from_secs(5)).await;
    for l in load {
        let _ = l.await;
    }
    // What the file held at the kill: every complete line is an event that must reach the webhook.
    let written: HashSet<String> = file_events(audit.path())
        .iter()
        .map(|e| e["event_id"].as_str().expect("id").to_string())
        .collect();
    assert!(written.len() >= 150, "{}", written.len());
    drop(gw);

    let restarted = Gateway::start_with(opts()).await;
    let got = receiver.wait_for(&written, Duration::from_secs(20)).await;
    let missing: Vec<_> = written.difference(&got).collect();
    assert!(
        missing.is_empty(),
        "{} events written before the kill never arrived",
        missing.len()
    );
    // The restarted gateway goes on writing to the same record.
    let r = post(
        &restarted,
        "/v1/chat/completions",
        chat_body("after").into_bytes(),
        &[],
    )
    .await;
    assert_eq!(r.status(), 200);
    assert!(
        wait_file_events(audit.path(), written.len() + 1)
            .await
            .len()
            > written.len()
    );
}

#[tokio::test]
async fn a_graceful_stop_writes_every_finished_requests_event_before_the_process_ends() {
    use futures_util::StreamExt;
    let mock = MockUpstream::start().await;
    let audit = tempfile::tempdir().expect("tempdir");
    // Nothing is flushed on a timer during the test: the stop itself must write what is queued.
    let mut gw = Gateway::start_with(GatewayOpts::new(mock.url()).toml(&audit_toml(
        audit.path(),
        None,
        "fsync = \"interval\"\nfsync_interval_ms = 60000",
    )))
    .await;
    for i in 0..20 {
        let r = post(
            &gw,
            "/v1/chat/completions",
            chat_body(&format!("request {i}")).into_bytes(),
            &[],
        )
        .await;
        assert_eq!(r.status(), 200);
    }
    // A stream still in flight when the stop begins: its event is recorded when it ends, during the drain.
    let resp = reqwest::Client::new()
        .post(gw.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("x-mock-hold", "drain-stream")
        .header("x-mock-content", "one two three")
        .header("x-mock-chunks", "3")
        .body(r#"{"model":"m","stream":true,"messages":[]}"#)
        .send()
        .await
        .expect("send");
    let mut stream = resp.bytes_stream();
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("one") {
        seen.extend_from_slice(&stream.next().await.expect("chunk").expect("chunk"));
    }
    gw.signal("TERM");
    tokio::time::sleep(Duration::from_millis(200)).await;
    mock.release("drain-stream").await;
    while let Some(chunk) = stream.next().await {
        chunk.expect("the stream finishes");
    }
    assert_eq!(
        gw.wait_exit(Duration::from_secs(10)).await,
        Some(0),
        "{}",
        gw.stderr()
    );
    let events = file_events(audit.path());
    assert_eq!(events.len(), 21, "every finished request left its event");
    assert_eq!(
        events[20]["stream"], true,
        "the drained stream's event is last"
    );
}

/// A gateway whose audit disk will fail: the next segment's name is taken by a directory, so the rotation
/// after 4 KiB of events cannot create it (until the returned path is removed).
async fn failing_disk(extra: &str) -> (MockUpstream, tempfile::TempDir, PathBuf, Gateway) {
    let mock = MockUpstream::start().await;
    let audit = tempfile::tempdir().expect("tempdir");
    let blocker = audit.path().join("events-00000002.jsonl");
    std::fs::create_dir(&blocker).expect("mkdir");
    let gw = Gateway::start_with(GatewayOpts::new(mock.url()).toml(&audit_toml(
        audit.path(),
        None,
        &format!("max_file_bytes = 4096\n{extra}"),
    )))
    .await;
    (mock, audit, blocker, gw)
}

#[tokio::test]
async fn a_failing_audit_disk_refuses_requests_until_it_recovers() {
    let (mock, audit, blocker, gw) = failing_disk("").await;
    let mut refused = None;
    for i in 0..100 {
        let r = post(
            &gw,
            "/v1/chat/completions",
            chat_body(&format!("n {i}")).into_bytes(),
            &[],
        )
        .await;
        if r.status() == 503 {
            let v: Value = r.json().await.expect("json");
            refused = Some(v["error"]["code"].clone());
            break;
        }
        assert_eq!(r.status(), 200);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        refused,
        Some(json!("audit_unavailable")),
        "requests were served with the audit file failing"
    );
    assert_eq!(gw.metric("promptgate_audit_sink_up").await, Some(0.0));
    assert!(gw.stderr().contains("AUDIT SINK FAILING"));
    assert!(mock.received().await.len() < 100);
    // The disk recovers: the held batch is written, requests are served again.
    std::fs::remove_dir(&blocker).expect("rmdir");
    assert_eq!(
        gw.metric_eventually("promptgate_audit_sink_up", 1.0).await,
        Some(1.0)
    );
    let r = post(
        &gw,
        "/v1/chat/completions",
        chat_body("again").into_bytes(),
        &[],
    )
    .await;
    assert_eq!(r.status(), 200);
    let served = mock.received().await.len();
    // Every request that was forwarded has its event (the batch was kept, not lost, while the disk failed).
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut ok = 0;
    while Instant::now() < deadline {
        ok = file_events(audit.path())
            .iter()
            .filter(|e| e["status"] == 200)
            .count();
        if ok == served {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ok, served);
}

#[tokio::test]
async fn metrics_follow_a_scripted_sequence() {
    let mock = MockUpstream::start().await;
    let audit = tempfile::tempdir().expect("tempdir");
    let gw =
        Gateway::start_with(GatewayOpts::new(mock.url()).toml(&audit_toml(audit.path(), None, "")))
            .await;
    let send = |body: Vec<u8>, headers: Vec<(&'static str, String)>| {
        let gw = &gw;
        async move {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let r = post(gw, "/v1/chat/completions", body, &h).await;
            let status = r.status();
            let _ = r.bytes().await;
            status
        }
    };
    assert_eq!(send(chat("plain", false), vec![]).await, 200);
    assert_eq!(
        send(chat(&format!("mail {EMAIL} and {EMAIL}"), false), vec![]).await,
        200
    );
    assert_eq!(
        send(chat(&format!("key {AWS_KEY}"), false), vec![]).await,
        409
    );
    assert_eq!(
        send(chat("stream it", true), vec![("x-mock-chunks", "4".into())]).await,
        200
    );
    let m = |s: &'static str| gw.metric_eventually(s, 1.0);
    assert_eq!(
        gw.metric_eventually(
            r#"promptgate_requests_total{decision="allow",route="chat_completions",status="200"}"#,
            2.0
        )
        .await,
        Some(2.0)
    );
    assert_eq!(
        m(r#"promptgate_requests_total{decision="redact",route="chat_completions",status="200"}"#)
            .await,
        Some(1.0)
    );
    assert_eq!(
        m(r#"promptgate_requests_total{decision="block",route="chat_completions",status="409"}"#)
            .await,
        Some(1.0)
    );
    assert_eq!(
        gw.metric_eventually(r#"promptgate_rule_matches_total{action="redact",direction="request",rule="pii.email"}"#, 2.0).await,
        Some(2.0)
    );
    assert_eq!(m(r#"promptgate_rule_matches_total{action="block",direction="request",rule="secret.aws_access_key_id"}"#).await, Some(1.0));
    assert_eq!(
        m(r#"promptgate_time_to_first_token_seconds_count{route="chat_completions"}"#).await,
        Some(1.0)
    );
    assert_eq!(
        gw.metric_eventually(
            r#"promptgate_upstream_duration_seconds_count{route="chat_completions"}"#,
            3.0
        )
        .await,
        Some(3.0)
    );
    assert_eq!(
        gw.metric_eventually(
            r#"promptgate_gateway_overhead_seconds_count{route="chat_completions"}"#,
            4.0
        )
        .await,
        Some(4.0)
    );
    assert_eq!(
        gw.metric_eventually("promptgate_audit_events_written_total", 4.0)
            .await,
        Some(4.0)
    );
    assert_eq!(gw.metric("promptgate_audit_queue_depth").await, Some(0.0));
    assert_eq!(
        gw.metric("promptgate_audit_events_dropped_total").await,
        Some(0.0)
    );
}

/// Metric names in a PromQL expression (`promptgate_…`, histogram suffixes removed).
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("promptgate_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap_or(tail.len());
        let name = tail[..end].trim_end_matches("_bucket");
        out.push(name.to_string());
        rest = &tail[end..];
    }
    out
}

#[tokio::test]
async fn the_dashboard_queries_only_metrics_the_gateway_exports() {
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("conf/grafana-dashboard.json"))
            .expect("dashboard"),
    )
    .expect("dashboard is JSON");
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock.url()).await;
    // Every family is registered at start; a counter vector shows once it has a series, so make one of each.
    let r = post(
        &gw,
        "/v1/chat/completions",
        chat(&format!("mail {EMAIL}"), false),
        &[],
    )
    .await;
    assert_eq!(r.status(), 200);
    // Metrics are recorded in the logging hook, just after the answer went out.
    gw.metric_eventually(
        r#"promptgate_requests_total{decision="redact",route="chat_completions",status="200"}"#,
        1.0,
    )
    .await;
    let text = gw.metrics_text().await;
    let declared = std::fs::read_to_string(repo_root().join("src/metrics.rs")).expect("metrics.rs");
    let panels = dash["panels"].as_array().expect("panels");
    let mut queried = 0;
    for p in panels.iter().filter(|p| p["type"] != "row") {
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {} has no query", p["title"]);
        for t in targets {
            let expr = t["expr"].as_str().expect("expr");
            for name in metric_names(expr) {
                queried += 1;
                assert!(
                    declared.contains(&format!("\"{name}\"")),
                    "panel {} queries {name}, which the gateway does not declare",
                    p["title"]
                );
            }
        }
    }
    assert!(queried >= 20, "{queried}");
    // And the families a fresh gateway exports right away are there; a pool lists its own series when it is
    // built, so the dashboard's upstream row shows zeros from the start, not gaps.
    for family in [
        "promptgate_requests_total",
        "promptgate_gateway_overhead_seconds_bucket",
        "promptgate_audit_events_written_total",
        "promptgate_audit_sink_up",
        "promptgate_rule_matches_total",
        "promptgate_upstream_requests_total{upstream=\"default\"}",
        "promptgate_upstream_attempt_errors_total{kind=\"no_healthy\",upstream=\"default\"}",
        "promptgate_upstream_endpoints{upstream=\"default\"}",
        "promptgate_upstream_healthy_endpoints{upstream=\"default\"}",
        "promptgate_upstream_ejections_total{upstream=\"default\"}",
        "promptgate_upstream_dns_failures_total{upstream=\"default\"}",
    ] {
        assert!(text.contains(family), "{family} missing from /metrics");
    }
}

#[tokio::test]
async fn fail_open_serves_through_a_failing_disk_and_dropped_events_leave_a_gap_record() {
    let (_mock, audit, blocker, gw) =
        failing_disk("queue = 4\non_full = \"drop\"\non_failure = \"fail_open\"").await;
    // Past the first rotation the writer is stuck retrying; the queue fills and the rest is dropped — and
    // every request is still served.
    for i in 0..60 {
        let r = post(
            &gw,
            "/v1/chat/completions",
            chat_body(&format!("n {i}")).into_bytes(),
            &[],
        )
        .await;
        assert_eq!(r.status(), 200, "request {i}");
    }
    let dropped = gw
        .metric("promptgate_audit_events_dropped_total")
        .await
        .expect("dropped metric");
    assert!(dropped > 0.0, "nothing was dropped");
    // Requests served while the writer knows the disk is failing are counted as served under fail-open (the
    // writer may reach the failing rotation only after the requests above: keep serving until it has).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let counted = gw
            .metric(r#"promptgate_fail_open_total{component="audit"}"#)
            .await
            .is_some_and(|n| n > 0.0);
        if counted {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no request counted as served fail-open"
        );
        let r = post(
            &gw,
            "/v1/chat/completions",
            chat_body("more").into_bytes(),
            &[],
        )
        .await;
        assert_eq!(r.status(), 200);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    std::fs::remove_dir(&blocker).expect("rmdir");
    // Events after recovery carry the gap records along with them. The writer may still be draining what it
    // queued while stuck (and drop more under a full queue): wait until what the file accounts for meets the
    // count, both read again each round.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (gap, dropped_now) = loop {
        let r = post(
            &gw,
            "/v1/chat/completions",
            chat_body("after").into_bytes(),
            &[],
        )
        .await;
        assert_eq!(r.status(), 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let dropped_now = gw
            .metric("promptgate_audit_events_dropped_total")
            .await
            .expect("metric");
        let gaps: f64 = file_events(audit.path())
            .iter()
            .filter(|e| e["type"] == "audit.gap")
            .filter_map(|e| e["dropped"].as_f64())
            .sum();
        if gaps == dropped_now || Instant::now() > deadline {
            break (gaps, dropped_now);
        }
    };
    assert!(dropped_now >= dropped);
    assert_eq!(
        gap, dropped_now,
        "gap records must account for every dropped event"
    );
}

#[tokio::test]
async fn the_webhook_sends_only_the_event_types_it_is_given() {
    let mock = MockUpstream::start().await;
    let receiver = Receiver::start(false);
    let audit = tempfile::tempdir().expect("tempdir");
    let gw = Gateway::start_with(
        webhook_opts(&mock, audit.path(), &receiver).toml("events = [\"chat.blocked\"]"),
    )
    .await;
    for (text, status) in [
        ("hello", 200),
        ("key AKIAIOSFODNN7EXAMPLE", 409),
        ("bye", 200),
    ] {
        let r = post(&gw, "/v1/chat/completions", chat(text, false), &[]).await;
        assert_eq!(r.status(), status);
    }
    let all = wait_file_events(audit.path(), 3).await;
    assert_eq!(all.len(), 3);
    let blocked: HashSet<String> = all
        .iter()
        .filter(|e| e["type"] == "chat.blocked")
        .map(|e| e["event_id"].as_str().expect("id").to_string())
        .collect();
    assert_eq!(blocked.len(), 1);
    receiver.wait_for(&blocked, Duration::from_secs(10)).await;
    // The cursor has moved past all three (the file is read in order): nothing else will come.
    assert_eq!(
        gw.metric_eventually("promptgate_audit_events_delivered_total", 1.0)
            .await,
        Some(1.0)
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.event_ids(), blocked);
}
