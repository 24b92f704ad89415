//! The rule author's tools and hot reload, seen from outside: `promptgate check` and `scan`, a gateway that
//! refuses to start on a bad set, and reloads (file edits, SIGHUP, POST /reload) while traffic runs.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{binary, copy_rules, repo_root, Gateway, GatewayOpts, MockUpstream};

fn check(dir: &Path) -> (i32, String) {
    let out = Command::new(binary())
        .arg("check")
        .arg(dir)
        .output()
        .expect("check");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// How many rules the shipped pack holds: the tests below count from it, so a pack that grows keeps them honest.
fn shipped_rules() -> u64 {
    promptgate::rules::load_dir(&repo_root().join("rules"))
        .expect("the shipped rules load")
        .rules
        .len() as u64
}

/// The version `promptgate check` reports for a directory.
fn checked_version(dir: &Path) -> String {
    let (code, out) = check(dir);
    assert_eq!(code, 0, "{out}");
    out.split("version ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .expect("version")
        .to_string()
}

#[test]
fn check_passes_the_shipped_rules_and_reports_failures_with_file_line() {
    let (code, out) = check(&repo_root().join("rules"));
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.lines().count(), 1, "one-line summary: {out}");
    assert!(
        out.contains(&format!("{} rules in 4 files", shipped_rules()))
            && out.contains("3 policies")
            && out.contains("examples pass"),
        "{out}"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    copy_rules(dir.path());
    let pii = dir.path().join("pii.toml");
    let text = std::fs::read_to_string(&pii).expect("read");
    std::fs::write(
        &pii,
        text.replacen("[A-Za-z]{2,24}'", "[A-Za-z]{2,24}('", 1),
    )
    .expect("write");
    let (code, out) = check(dir.path());
    assert_eq!(code, 1);
    assert!(
        out.contains("pii.toml:8: rule 'pii.email': bad regex: regex parse error:"),
        "{out}"
    );
    assert!(out.trim_end().ends_with("1 error(s)"), "{out}");
}

#[test]
fn scan_reports_rules_spans_and_the_redacted_body() {
    let body = r#"{"model":"m","messages":[{"role":"user","content":"Mail jane.doe@example.com now"}],"user":"x"}"#;
    let mut child = Command::new(binary())
        .current_dir(repo_root())
        .args(["scan", "--json", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("scan");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), body.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(1), "1 = something matched");
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["matches"][0]["rule"], "pii.email");
    assert_eq!(v["matches"][0]["path"], "$.messages[0].content");
    assert_eq!(v["matches"][0]["start"], 5);
    assert_eq!(v["matches"][0]["end"], 25);
    assert_eq!(v["redacted"]["messages"][0]["content"], "Mail [EMAIL] now");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("jane.doe"),
        "scan never prints the raw value"
    );
}

/// `promptgate run` with `dir` as its rules (and an upstream that is never contacted).
fn run_with_rules(dir: &Path) -> std::process::Output {
    Command::new(binary())
        .current_dir(repo_root())
        .args([
            "run",
            "--upstream",
            "http://127.0.0.1:9",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:1",
        ])
        .arg("--rules")
        .arg(dir)
        .output()
        .expect("run")
}

#[tokio::test]
async fn gateway_refuses_to_start_on_an_invalid_rule_set() {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_rules(dir.path());
    std::fs::write(dir.path().join("broken.toml"), "[[rule]]\nid = \"x.y\"\n").expect("write");
    let out = run_with_rules(dir.path());
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("invalid rule set, refusing to start")
            && err.contains("broken.toml:1: missing field `description`"),
        "{err}"
    );

    let empty = tempfile::tempdir().expect("tempdir");
    let out = run_with_rules(empty.path());
    assert_eq!(
        out.status.code(),
        Some(2),
        "never run with no rules by accident"
    );
}

async fn healthz(gw: &Gateway) -> (String, u64) {
    let v: Value = reqwest::get(gw.admin_url("/healthz"))
        .await
        .expect("healthz")
        .json()
        .await
        .expect("json");
    (
        v["rules"]["version"].as_str().expect("version").to_string(),
        v["rules"]["count"].as_u64().expect("count"),
    )
}

async fn wait_version(gw: &Gateway, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if healthz(gw).await.0 == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "version {want} never became live"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn reload_errors(gw: &Gateway) -> f64 {
    gw.metric(r#"promptgate_rules_reload_total{result="error"}"#)
        .await
        .unwrap_or(0.0)
}

const EXTRA: &str = "[[rule]]\nid = \"extra.word\"\ndescription = \"an added rule\"\nkeywords = { terms = [\"TERM\"] }\naction = \"log\"\nexamples = { match = [\"x TERM y\"] }\n";

#[tokio::test]
async fn edits_reload_while_traffic_runs_and_bad_edits_keep_the_last_good_set() {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_rules(dir.path());
    let mock = MockUpstream::start().await;
    let gw = Gateway::start_with(GatewayOpts::new(mock.url()).rules(dir.path())).await;
    let (v1, n1) = healthz(&gw).await;
    assert_eq!(v1, checked_version(dir.path()));
    assert_eq!(n1, shipped_rules());

    // Traffic for the whole test: every response must be a 200 carrying a version that was live at some point.
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Vec::<(u16, Option<String>)>::new()));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (stop, seen, url) = (stop.clone(), seen.clone(), gw.url("/v1/models"));
        workers.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            while !stop.load(Ordering::Relaxed) {
                let r = client.get(&url).send().await.expect("request");
                let v = r
                    .headers()
                    .get("x-promptgate-rules-version")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                seen.lock().expect("lock").push((r.status().as_u16(), v));
            }
        }));
    }
    let mut live = BTreeSet::from([v1.clone()]);

    // 1. An edit: a new file with a new rule.
    let extra = dir.path().join("extra.toml");
    std::fs::write(&extra, EXTRA).expect("write");
    let v2 = checked_version(dir.path());
    wait_version(&gw, &v2).await;
    assert_eq!(healthz(&gw).await.1, shipped_rules() + 1);
    live.insert(v2.clone());

    // 2. A bad edit: refused, counted, the last good set stays.
    let errors_before = reload_errors(&gw).await;
    std::fs::write(&extra, "[[rule]]\nid = \"extra.word\"\n").expect("write");
    let deadline = Instant::now() + Duration::from_secs(10);
    while reload_errors(&gw).await <= errors_before {
        assert!(Instant::now() < deadline, "bad edit was never counted");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(healthz(&gw).await, (v2.clone(), shipped_rules() + 1));
    assert!(
        gw.stderr()
            .contains("extra.toml:1: missing field `description`"),
        "{}",
        gw.stderr()
    );

    // 3. A deleted file: back to the original set (same content, same version).
    std::fs::remove_file(&extra).expect("rm");
    wait_version(&gw, &v1).await;
    assert_eq!(healthz(&gw).await.1, shipped_rules());

    // 4. Rapid successive edits: the final content wins.
    for i in 0..10 {
        std::fs::write(&extra, EXTRA.replace("TERM", &format!("TERM{i}"))).expect("write");
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    let v_last = checked_version(dir.path());
    wait_version(&gw, &v_last).await;
    live.insert(v_last.clone());

    // Intermediate rapid versions may have gone live for a moment: they are valid sets too.
    for i in 0..9 {
        std::fs::write(&extra, EXTRA.replace("TERM", &format!("TERM{i}"))).expect("write");
        live.insert(checked_version(dir.path()));
    }
    std::fs::write(&extra, EXTRA.replace("TERM", "TERM9")).expect("write");

    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.expect("worker");
    }
    let seen = seen.lock().expect("lock");
    assert!(seen.len() > 20, "traffic ran ({} requests)", seen.len());
    for (status, version) in seen.iter() {
        assert_eq!(*status, 200, "no request fails during reloads");
        let v = version
            .as_deref()
            .expect("every response names its rules version");
        assert!(
            live.contains(v),
            "response saw {v}, which was never a valid live set ({live:?})"
        );
    }
}

#[tokio::test]
async fn sighup_and_post_reload_reload_on_demand() {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_rules(dir.path());
    let mock = MockUpstream::start().await;
    let gw = Gateway::start_with(
        GatewayOpts::new(mock.url())
            .rules(dir.path())
            .toml("[rules]\nwatch = false"),
    )
    .await;
    let (v1, _) = healthz(&gw).await;
    std::fs::write(dir.path().join("extra.toml"), EXTRA).expect("write");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        healthz(&gw).await.0,
        v1,
        "not watching: nothing reloads by itself"
    );

    gw.signal("HUP");
    let v2 = checked_version(dir.path());
    wait_version(&gw, &v2).await;

    let r = gw.reload().await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["result"], "unchanged");
    assert_eq!(v["version"], v2.as_str());

    std::fs::write(dir.path().join("extra.toml"), "not toml [[[").expect("write");
    let r = gw.reload().await;
    assert_eq!(r.status(), 422);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["result"], "error");
    assert_eq!(v["version"], v2.as_str(), "the last good set stays live");
    assert!(
        v["errors"][0]
            .as_str()
            .expect("error")
            .contains("extra.toml:1:"),
        "{v}"
    );

    std::fs::remove_file(dir.path().join("extra.toml")).expect("rm");
    let r = gw.reload().await;
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["result"], "reloaded");
    assert_eq!(v["version"], v1.as_str());
    assert_eq!(
        gw.metric(r#"promptgate_rules_info{version=""#.to_string().as_str())
            .await,
        None
    );
    let text = gw.metrics_text().await;
    assert!(
        text.contains(&format!("promptgate_rules_info{{version=\"{v1}\"}} 1")),
        "{text}"
    );
    assert!(
        text.contains(&format!("promptgate_rules {}", shipped_rules())),
        "{text}"
    );
    assert!(
        text.contains("promptgate_rules_reload_total{result=\"error\"} 1"),
        "{text}"
    );
}

/// A writer that never paused for as long as the debounce (a file rewritten every 100 ms by a generator, a
/// sync loop) held reloads off for as long as it wrote: each change restarted the wait. A burst of changes now
/// delays a reload by a bounded time, so the new rules go live while the writer is still writing.
#[tokio::test]
async fn a_writer_that_never_pauses_does_not_hold_reloads_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_rules(dir.path());
    let mock = MockUpstream::start().await;
    let gw = Gateway::start_with(GatewayOpts::new(mock.url()).rules(dir.path())).await;
    let (v1, _) = healthz(&gw).await;
    let writing = Arc::new(AtomicBool::new(true));
    let writer = {
        let (dir, writing) = (dir.path().to_path_buf(), writing.clone());
        std::thread::spawn(move || {
            let until = Instant::now() + Duration::from_secs(20);
            let mut n = 0u64;
            while writing.load(Ordering::Relaxed) && Instant::now() < until {
                n += 1;
                let text = EXTRA.replace("an added rule", &format!("an added rule, edit {n}"));
                let tmp = dir.join(".extra.toml.tmp");
                std::fs::write(&tmp, text).expect("write");
                std::fs::rename(&tmp, dir.join("extra.toml")).expect("rename");
                std::thread::sleep(Duration::from_millis(100));
            }
            writing.store(false, Ordering::Relaxed);
        })
    };
    let changed_while_writing = loop {
        let still = writing.load(Ordering::Relaxed);
        if healthz(&gw).await.0 != v1 {
            break still;
        }
        if !still {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    writing.store(false, Ordering::Relaxed);
    writer.join().expect("writer");
    assert!(
        changed_while_writing,
        "the rules reloaded only once the writer stopped"
    );
    assert_eq!(reload_errors(&gw).await, 0.0);
    assert_eq!(healthz(&gw).await.1, shipped_rules() + 1);
}
