//! The audit file's hash chain and write-ahead durability, seen from outside: `promptgate audit verify` on a
//! real gateway's directory (rotation, retention, a `kill -9` and a restart) and on tampered copies of it,
//! `promptgate audit query` filters, and `durability = "write_ahead"` through a kill loop and a failing disk.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::support::{
    binary, chat_body, post, recorded_header, wait_file_events, ws_connect, ws_next_json, Gateway,
    GatewayOpts, MockUpstream,
};

/// Runs `promptgate ARGS`: exit code and stdout (stderr appended).
fn cli(args: &[&str]) -> (i32, String) {
    let out = Command::new(binary())
        .args(args)
        .output()
        .expect("run promptgate");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

fn verify(dir: &Path) -> (i32, String) {
    cli(&["audit", "verify", &dir.display().to_string()])
}

/// `audit query DIR ARGS`: the request ids of the JSON lines printed.
fn query_ids(dir: &Path, args: &[&str]) -> Vec<String> {
    let d = dir.display().to_string();
    let mut all = vec!["audit", "query", d.as_str()];
    all.extend_from_slice(args);
    let (code, out) = cli(&all);
    assert_eq!(code, 0, "{out}");
    out.lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("a JSON line");
            v["request_id"].as_str().unwrap_or("").to_string()
        })
        .collect()
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("audit dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    v.sort();
    v
}

fn lines_of(path: &Path) -> Vec<Vec<u8>> {
    let text = std::fs::read(path).expect("segment");
    text.split_inclusive(|b| *b == b'\n')
        .filter(|l| l.ends_with(b"\n"))
        .map(|l| l[..l.len() - 1].to_vec())
        .collect()
}

fn write_lines(path: &Path, lines: &[Vec<u8>]) {
    let mut text = Vec::new();
    for l in lines {
        text.extend_from_slice(l);
        text.push(b'\n');
    }
    std::fs::write(path, text).expect("write segment");
}

/// A copy of the directory's segments.
fn copy_dir(from: &Path) -> tempfile::TempDir {
    let to = tempfile::tempdir().expect("tempdir");
    for p in segment_files(from) {
        std::fs::copy(&p, to.path().join(p.file_name().expect("name"))).expect("copy");
    }
    to
}

/// Every record's `request_id` in the directory, by type: (intents, others).
fn recorded_ids(dir: &Path) -> (HashSet<String>, HashSet<String>) {
    let (mut intents, mut events) = (HashSet::new(), HashSet::new());
    for p in segment_files(dir) {
        for l in lines_of(&p) {
            let v: Value = serde_json::from_slice(&l).expect("JSON line");
            let Some(id) = v["request_id"].as_str() else {
                continue;
            };
            if v["type"] == "audit.intent" {
                intents.insert(id.to_string());
            } else {
                events.insert(id.to_string());
            }
        }
    }
    (intents, events)
}

/// `last seq N` from a verify summary.
fn last_seq(summary: &str) -> u64 {
    summary
        .lines()
        .find_map(|l| l.strip_prefix("last seq "))
        .and_then(|r| r.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no last seq in {summary}"))
}

fn audit_toml(dir: &Path, extra: &str) -> String {
    format!("[audit]\ndir = {:?}\n{extra}\n", dir.display().to_string())
}

/// Eight clients posting in a loop until the gateway stops answering.
fn load(gw: &Gateway) -> Vec<tokio::task::JoinHandle<u64>> {
    let url = gw.url("/v1/chat/completions");
    (0..8)
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
        .collect()
}

async fn kill(mut gw: Gateway, clients: Vec<tokio::task::JoinHandle<u64>>) {
    gw.signal("KILL");
    gw.wait_exit(Duration::from_secs(5)).await;
    for c in clients {
        let _ = c.await;
    }
}

async fn stop(mut gw: Gateway) {
    gw.signal("TERM");
    assert!(
        gw.wait_exit(Duration::from_secs(20)).await.is_some(),
        "the gateway did not stop"
    );
}

#[tokio::test]
async fn verify_passes_on_a_rotated_retained_directory_and_names_each_tampering_at_its_line() {
    let mock = MockUpstream::start().await;
    let audit = tempfile::tempdir().expect("tempdir");
    let gw = Gateway::start_with(GatewayOpts::new(mock.url()).toml(&audit_toml(
        audit.path(),
        "max_file_bytes = 4096\nkeep_files = 3",
    )))
    .await;
    // In rounds of eight at once, so that the writer takes several events in one batch: a batch is not a
    // unit of rotation.
    for round in 0..5 {
        let answers = futures_util::future::join_all((0..8).map(|i| {
            post(
                &gw,
                "/v1/chat/completions",
                chat_body(&format!("request {round}.{i}")).into_bytes(),
                &[],
            )
        }))
        .await;
        assert!(answers.iter().all(|r| r.status() == 200));
    }
    stop(gw).await;
    let files = segment_files(audit.path());
    assert_eq!(files.len(), 3, "retention keeps 3 segments: {files:?}");
    for f in &files {
        let len = std::fs::metadata(f).expect("meta").len();
        assert!(
            len <= 4096,
            "{} holds {len} bytes, over max_file_bytes",
            f.display()
        );
    }
    assert_ne!(
        files[0].file_name().expect("name"),
        "events-00000001.jsonl",
        "nothing was rotated away"
    );
    let (code, out) = verify(audit.path());
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(": OK"), "{out}");
    assert!(out.contains("retention"), "{out}");

    let middle = files[1].file_name().expect("name").to_owned();
    let lines = lines_of(&files[1]);
    assert!(
        lines.len() >= 4,
        "{} lines in the middle segment",
        lines.len()
    );
    type Tamper = fn(&mut Vec<Vec<u8>>);
    let cases: Vec<(&str, Tamper, usize, &str)> = vec![
        (
            "edited",
            |l| {
                let text = String::from_utf8(l[2].clone()).expect("utf8");
                assert!(text.contains("\"status\":200"));
                l[2] = text
                    .replace("\"status\":200", "\"status\":201")
                    .into_bytes();
            },
            3,
            "edited line",
        ),
        (
            "deleted",
            |l| {
                l.remove(2);
            },
            3,
            "deleted line(s)",
        ),
        ("swapped", |l| l.swap(2, 3), 3, "reordered lines"),
        (
            "inserted",
            |l| {
                let copy = l[1].clone();
                l.insert(3, copy);
            },
            4,
            "inserted line",
        ),
    ];
    for (name, tamper, at, kind) in cases {
        let copy = copy_dir(audit.path());
        let mut l = lines.clone();
        tamper(&mut l);
        write_lines(&copy.path().join(&middle), &l);
        let (code, out) = verify(copy.path());
        assert_eq!(code, 1, "{name}: {out}");
        let want = format!("BROKEN at {}:{at}: {kind}", middle.to_string_lossy());
        assert!(out.contains(&want), "{name}: want {want:?} in {out}");
    }
    // A middle segment cut inside its last line, and one cut at a line boundary (seen at the next file).
    let copy = copy_dir(audit.path());
    let p = copy.path().join(&middle);
    let len = std::fs::metadata(&p).expect("meta").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .and_then(|f| f.set_len(len - 10))
        .expect("truncate");
    let (code, out) = verify(copy.path());
    assert_eq!(code, 1, "{out}");
    let want = format!(
        "BROKEN at {}:{}: truncated",
        middle.to_string_lossy(),
        lines.len()
    );
    assert!(out.contains(&want), "want {want:?} in {out}");
    let copy = copy_dir(audit.path());
    write_lines(&copy.path().join(&middle), &lines[..lines.len() - 1]);
    let (code, out) = verify(copy.path());
    assert_eq!(code, 1, "{out}");
    let want = format!(
        "BROKEN at {}:1: deleted line(s)",
        files[2].file_name().expect("name").to_string_lossy()
    );
    assert!(out.contains(&want), "want {want:?} in {out}");
    // A segment missing between two present ones.
    let copy = copy_dir(audit.path());
    std::fs::remove_file(copy.path().join(&middle)).expect("rm");
    let (code, out) = verify(copy.path());
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(":1: segment missing"), "{out}");
}

#[tokio::test]
async fn a_gateway_killed_under_load_verifies_and_its_chain_continues_after_restart() {
    let mock = MockUpstream::start().await;
    let audit = tempfile::tempdir().expect("tempdir");
    let opts = || GatewayOpts::new(mock.url()).toml(&audit_toml(audit.path(), ""));
    let gw = Gateway::start_with(opts()).await;
    let clients = load(&gw);
    wait_file_events(audit.path(), 150).await;
    kill(gw, clients).await;
    let (code, out) = verify(audit.path());
    assert_eq!(code, 0, "after the kill: {out}");
    let before = last_seq(&out);
    assert!(before >= 150, "{out}");

    let gw = Gateway::start_with(opts()).await;
    for i in 0..5 {
        let r = post(
            &gw,
            "/v1/chat/completions",
            chat_body(&format!("after {i}")).into_bytes(),
            &[("x-request-id", &format!("after-restart-{i}"))],
        )
        .await;
        assert_eq!(r.status(), 200);
    }
    stop(gw).await;
    let (code, out) = verify(audit.path());
    assert_eq!(code, 0, "after the restart: {out}");
    assert_eq!(
        last_seq(&out),
        before + 5,
        "the restarted gateway's events continue the chain: {out}"
    );
    assert!(
        !out.contains("torn"),
        "the torn tail was cut on restart: {out}"
    );
}

#[tokio::test]
async fn write_ahead_leaves_a_trace_of_every_request_the_upstream_received_across_kill_loops() {
    let mock = MockUpstream::start().await;
    let audit = tempfile::tempdir().expect("tempdir");
    let opts = || {
        GatewayOpts::new(mock.url()).toml(&audit_toml(
            audit.path(),
            "durability = \"write_ahead\"\nmax_file_bytes = 65536",
        ))
    };
    for round in 0..4 {
        let gw = Gateway::start_with(opts()).await;
        let start = mock.received().await.len();
        let clients = load(&gw);
        let deadline = Instant::now() + Duration::from_secs(20);
        while mock.received().await.len() < start + 60 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            mock.received().await.len() > start,
            "round {round}: nothing was forwarded"
        );
        kill(gw, clients).await;
    }
    let received: HashSet<String> = mock
        .received()
        .await
        .iter()
        .filter_map(|r| recorded_header(r, "x-request-id").map(str::to_string))
        .collect();
    assert!(received.len() >= 240, "{}", received.len());
    let (intents, events) = recorded_ids(audit.path());
    let untraced: Vec<&String> = received
        .iter()
        .filter(|id| !intents.contains(*id) && !events.contains(*id))
        .collect();
    assert!(
        untraced.is_empty(),
        "{} of {} forwarded requests left no trace: {untraced:?}",
        untraced.len(),
        received.len()
    );
    assert!(
        received.is_subset(&intents),
        "a forwarded request has no intent"
    );
    let (code, out) = verify(audit.path());
    assert_eq!(code, 0, "{out}");
    // `query --incomplete`: exactly the intents no decision event completes.
    let open: HashSet<String> = query_ids(audit.path(), &["--incomplete"])
        .into_iter()
        .collect();
    let want: HashSet<String> = intents.difference(&events).cloned().collect();
    assert_eq!(open, want);
}

#[tokio::test]
async fn write_ahead_refuses_to_forward_when_its_intent_cannot_be_written_even_under_fail_open() {
    let mock = MockUpstream::start().await;
    let audit = tempfile::tempdir().expect("tempdir");
    // The second segment's name is taken by a directory: the first rotation fails.
    let blocker = audit.path().join("events-00000002.jsonl");
    std::fs::create_dir(&blocker).expect("mkdir");
    let gw = Gateway::start_with(GatewayOpts::new(mock.url()).toml(&audit_toml(
        audit.path(),
        "durability = \"write_ahead\"\nmax_file_bytes = 4096\non_failure = \"fail_open\"",
    )))
    .await;
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
        assert_eq!(r.status(), 200, "request {i}");
    }
    assert_eq!(refused, Some(serde_json::json!("audit_unavailable")));
    let forwarded = mock.received().await.len();
    let r = post(
        &gw,
        "/v1/chat/completions",
        chat_body("x").into_bytes(),
        &[],
    )
    .await;
    assert_eq!(r.status(), 503, "served without a durable intent");
    assert_eq!(mock.received().await.len(), forwarded);
    // Every request the upstream saw has its intent in the file.
    let received: HashSet<String> = mock
        .received()
        .await
        .iter()
        .filter_map(|r| recorded_header(r, "x-request-id").map(str::to_string))
        .collect();
    let (intents, _) = recorded_ids(audit.path());
    assert!(received.is_subset(&intents));
    // The disk recovers: requests are forwarded again.
    std::fs::remove_dir(&blocker).expect("rmdir");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut status = 0;
    while Instant::now() < deadline {
        status = post(
            &gw,
            "/v1/chat/completions",
            chat_body("y").into_bytes(),
            &[],
        )
        .await
        .status()
        .as_u16();
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 200);
}

#[tokio::test]
async fn query_filters_return_exactly_the_matching_records() {
    let mock = MockUpstream::start().await;
    let audit = tempfile::tempdir().expect("tempdir");
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let gw =
        Gateway::start_with(GatewayOpts::new(mock.url()).toml(&audit_toml(audit.path(), ""))).await;
    let steps = [
        ("q-allow-1", "say hello", 200, Some("sess-a")),
        ("q-allow-2", "say bye", 200, None),
        ("q-redact", "mail jane.doe@example.com", 200, None),
        ("q-block", "key AKIAIOSFODNN7EXAMPLE", 409, None),
    ];
    for (id, text, status, session) in steps {
        let mut h = vec![("x-request-id", id)];
        if let Some(s) = session {
            h.push(("x-session-id", s));
        }
        let r = post(
            &gw,
            "/v1/chat/completions",
            chat_body(text).into_bytes(),
            &h,
        )
        .await;
        assert_eq!(r.status(), status, "{id}");
    }
    stop(gw).await;
    let dir = audit.path();
    let q = |args: &[&str]| {
        let mut ids = query_ids(dir, args);
        ids.sort();
        ids
    };
    let all = ["q-allow-1", "q-allow-2", "q-block", "q-redact"];
    assert_eq!(q(&[]), all);
    assert_eq!(q(&["--decision", "block"]), ["q-block"]);
    assert_eq!(q(&["--decision", "redact"]), ["q-redact"]);
    assert_eq!(q(&["--rule", "pii.email"]), ["q-redact"]);
    assert_eq!(q(&["--rule", "secret.aws_access_key_id"]), ["q-block"]);
    assert_eq!(q(&["--session", "sess-a"]), ["q-allow-1"]);
    assert_eq!(q(&["--type", "chat.blocked"]), ["q-block"]);
    assert_eq!(
        q(&["--type", "chat.message", "--decision", "block"]),
        [""; 0]
    );
    let from = (started - 1).to_string();
    assert_eq!(q(&["--from", &from]), all);
    assert_eq!(q(&["--to", &from]), [""; 0]);
    assert_eq!(q(&["--from", "2999-01-01T00:00:00Z"]), [""; 0]);
    assert_eq!(q(&["--type", "audit.segment"]), [""]);

    let d = dir.display().to_string();
    let (code, out) = cli(&[
        "audit",
        "query",
        &d,
        "--decision",
        "redact",
        "--format",
        "csv",
    ]);
    assert_eq!(code, 0, "{out}");
    let rows: Vec<&str> = out.lines().collect();
    assert_eq!(rows.len(), 2, "{out}");
    let header: Vec<&str> = rows[0].split(',').collect();
    let row: Vec<&str> = rows[1].split(',').collect();
    assert_eq!(header.len(), row.len());
    let col = |name: &str| row[header.iter().position(|h| *h == name).expect(name)];
    assert_eq!(col("request_id"), "q-redact");
    assert_eq!(col("decision_request"), "redact");
    assert_eq!(col("rules"), "pii.email");
    assert_eq!(col("status"), "200");
    assert!(!out.contains("jane.doe"), "a matched value in the export");
    let (code, out) = cli(&["audit", "query", &d, "--decision", "maybe"]);
    assert_eq!(code, 2, "{out}");
}

#[tokio::test]
async fn write_ahead_makes_a_realtime_sessions_intent_durable_before_its_upstream_handshake() {
    let mock = MockUpstream::start().await;
    let audit = tempfile::tempdir().expect("tempdir");
    let gw = Gateway::start_with(
        GatewayOpts::new(mock.url())
            .toml(&audit_toml(audit.path(), "durability = \"write_ahead\"")),
    )
    .await;
    let url = gw
        .url("/v1/realtime?model=gpt-realtime")
        .replacen("http://", "ws://", 1);
    let (mut ws, resp) = ws_connect(&url, &[("authorization", "Bearer sk-test-client")], &[])
        .await
        .expect("the session opens");
    assert_eq!(resp.status(), 101);
    assert_eq!(ws_next_json(&mut ws).await["type"], "session.created");
    ws.close(None).await.expect("close");
    let records = wait_file_events(audit.path(), 2).await;
    let session = records
        .iter()
        .find(|r| r["route"] == "realtime" && r["type"] != "audit.intent")
        .expect("the session's event");
    let intent = records
        .iter()
        .find(|r| r["type"] == "audit.intent")
        .expect("the session's intent");
    assert_eq!(intent["route"], "realtime");
    assert_eq!(intent["request_id"], session["request_id"]);
    assert_eq!(intent["model"], "gpt-realtime");
    assert!(
        intent["seq"].as_u64() < session["seq"].as_u64(),
        "the intent was written after the session's event"
    );
    let (code, out) = verify(audit.path());
    assert_eq!(code, 0, "{out}");
}
