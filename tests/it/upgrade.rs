//! Graceful upgrade seen from outside: a second `promptgate run --upgrade` takes the listening sockets over from
//! the running gateway (which gets SIGQUIT) — plaintext, TLS and admin — under a steady client load, with a
//! stream in flight on the old one.

use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::Value;

use crate::support::{binary, file_events, free_port, repo_root, MockUpstream};

/// One gateway process of the two, its stderr in a file.
struct Process {
    child: Child,
    stderr: std::path::PathBuf,
}

impl Process {
    fn spawn(config: &std::path::Path, dir: &std::path::Path, name: &str, extra: &[&str]) -> Self {
        let stderr = dir.join(format!("{name}.stderr"));
        let child = Command::new(binary())
            .current_dir(repo_root())
            .arg("run")
            .args(extra)
            .arg("--config")
            .arg(config)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("spawn promptgate");
        Self { child, stderr }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{name}");
    }

    async fn wait_for_log(&mut self, line: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.stderr().contains(line) {
            assert!(
                self.child.try_wait().expect("wait").is_none(),
                "exited before logging {line:?}: {}",
                self.stderr()
            );
            assert!(Instant::now() < deadline, "no {line:?}: {}", self.stderr());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_exit(&mut self) -> Option<i32> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The process id the admin listener's `/healthz` reports (whichever process accepted the connection).
async fn healthz_pid(client: &reqwest::Client, admin: &str) -> Option<u64> {
    let r = client.get(format!("{admin}/healthz")).send().await.ok()?;
    let v: Value = r.json().await.ok()?;
    v["pid"].as_u64()
}

/// One chat completion; its request id when it succeeded.
async fn chat(client: &reqwest::Client, url: &str) -> Result<String, String> {
    let r = client
        .post(url)
        .header("content-type", "application/json")
        .body(r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello"}]}"#)
        .send()
        .await
        .map_err(|e| format!("send: {e}"))?;
    let status = r.status();
    let id = r
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = r.bytes().await.map_err(|e| format!("body: {e}"))?;
    match (status.as_u16(), id) {
        (200, Some(id)) if !body.is_empty() => Ok(id),
        (s, _) => Err(format!("status {s}: {}", String::from_utf8_lossy(&body))),
    }
}

#[tokio::test]
async fn an_upgrade_under_load_drops_nothing_and_the_old_process_finishes_its_stream() {
    let mock = MockUpstream::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (port, admin_port, tls_port) = (free_port(), free_port(), free_port());
    let audit = dir.path().join("audit");
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).expect("cert");
    let (cert_file, key_file) = (dir.path().join("gw.crt"), dir.path().join("gw.key"));
    std::fs::write(&cert_file, cert.cert.pem()).expect("cert file");
    std::fs::write(&key_file, cert.key_pair.serialize_pem()).expect("key file");
    let config = dir.path().join("promptgate.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nadmin = \"127.0.0.1:{admin_port}\"\n\
             grace_period_seconds = 60\nupgrade_sock = {:?}\n\
             [[server.tls]]\nlisten = \"127.0.0.1:{tls_port}\"\ncert_file = {:?}\nkey_file = {:?}\n\
             [upstream]\nurl = {:?}\n[audit]\ndir = {:?}\n",
            dir.path().join("upgrade.sock").display().to_string(),
            cert_file.display().to_string(),
            key_file.display().to_string(),
            mock.url(),
            audit.display().to_string(),
        ),
    )
    .expect("config");
    let url = format!("http://127.0.0.1:{port}/v1/chat/completions");
    let tls_url = format!("https://127.0.0.1:{tls_port}/v1/chat/completions");
    let root = reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).expect("root");
    let admin = format!("http://127.0.0.1:{admin_port}");
    let client = reqwest::Client::new();

    let mut old = Process::spawn(&config, dir.path(), "old", &[]);
    let old_pid = u64::from(old.child.id());
    let deadline = Instant::now() + Duration::from_secs(20);
    while healthz_pid(&client, &admin).await != Some(old_pid) {
        assert!(Instant::now() < deadline, "old not ready: {}", old.stderr());
        assert!(
            old.child.try_wait().expect("wait").is_none(),
            "{}",
            old.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A stream in flight on the old process, held by the mock after its first piece.
    let held = client
        .post(&url)
        .header("content-type", "application/json")
        .header("x-mock-hold", "upgrade")
        .header("x-mock-content", "one two three")
        .header("x-mock-chunks", "3")
        .body(
            r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
        )
        .send()
        .await
        .expect("stream");
    assert_eq!(held.status(), 200);
    let held_id = held.headers()["x-request-id"]
        .to_str()
        .expect("id")
        .to_string();
    let mut stream = held.bytes_stream();
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("one") {
        seen.extend_from_slice(&stream.next().await.expect("chunk").expect("chunk"));
    }

    // The steady load: three clients in a loop — one opening a new connection per request, one keeping its
    // connections alive (the old process answers a request on one of them with `Connection: close` once it
    // drains, so the client's next request opens a connection to the new one), one on the TLS listener with a
    // handshake per request.
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(Mutex::new(Vec::<String>::new()));
    let failed = Arc::new(Mutex::new(Vec::<String>::new()));
    let tls_served = Arc::new(AtomicUsize::new(0));
    let clients = [
        (
            reqwest::Client::builder().pool_max_idle_per_host(0),
            &url,
            false,
        ),
        (
            reqwest::Client::builder().pool_max_idle_per_host(8),
            &url,
            false,
        ),
        (
            reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .add_root_certificate(root),
            &tls_url,
            true,
        ),
    ];
    let mut load = Vec::new();
    for (builder, url, tls) in clients {
        let client = builder.build().expect("client");
        let (stop, served, failed, url) =
            (stop.clone(), served.clone(), failed.clone(), url.clone());
        let tls_served = tls_served.clone();
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Acquire) {
                match chat(&client, &url).await {
                    Ok(id) => {
                        served.lock().expect("lock").push(id);
                        if tls {
                            tls_served.fetch_add(1, Ordering::AcqRel);
                        }
                    }
                    Err(e) => failed.lock().expect("lock").push(format!("{url}: {e}")),
                }
                // Paced, so the new process's queued events (its writer waits for the old one's lock) stay few.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }));
    }
    let count = |v: &Arc<Mutex<Vec<String>>>| v.lock().expect("lock").len();
    // Waits for `more` requests served (the load's own failures are asserted at the end).
    let wait_served = |more: usize| {
        let served = served.clone();
        async move {
            let target = served.lock().expect("lock").len() + more;
            let deadline = Instant::now() + Duration::from_secs(60);
            while served.lock().expect("lock").len() < target {
                assert!(Instant::now() < deadline, "the load stalled");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    wait_served(20).await;

    // The upgrade: the new process waits on the upgrade socket; SIGQUIT makes the old one hand over.
    let mut new = Process::spawn(&config, dir.path(), "new", &["--upgrade"]);
    let new_pid = u64::from(new.child.id());
    old.signal("QUIT");
    let deadline = Instant::now() + Duration::from_secs(60);
    while healthz_pid(&client, &admin).await != Some(new_pid) {
        assert!(
            Instant::now() < deadline,
            "new never answered: {}\n{}",
            new.stderr(),
            old.stderr()
        );
        assert!(
            new.child.try_wait().expect("wait").is_none(),
            "new exited: {}",
            new.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The old process closes its listeners a few seconds after the hand-over, and drains.
    old.wait_for_log("listeners closed; finishing in-flight requests")
        .await;
    wait_served(20).await;
    assert!(
        old.child.try_wait().expect("wait").is_none(),
        "the old process exited with a stream in flight: {}",
        old.stderr()
    );
    // Every new connection is the new process's now: the proxy listener and the admin one.
    for _ in 0..10 {
        assert_eq!(healthz_pid(&client, &admin).await, Some(new_pid));
    }

    // The held stream finishes, complete, on the old process, which then exits.
    mock.release("upgrade").await;
    while let Some(chunk) = stream.next().await {
        seen.extend_from_slice(&chunk.expect("the in-flight stream finishes"));
    }
    let text = String::from_utf8(seen).expect("utf8");
    assert!(
        text.contains("three") && text.ends_with("data: [DONE]\n\n"),
        "{text}"
    );
    assert_eq!(old.wait_exit().await, Some(0), "{}", old.stderr());

    // The new process takes the audit directory over once the old one let it go, and serves on, on every
    // listener (the old one is gone: each was handed over).
    new.wait_for_log("audit: directory taken over").await;
    let tls_before = tls_served.load(Ordering::Acquire);
    wait_served(20).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while tls_served.load(Ordering::Acquire) < tls_before + 5 {
        assert!(Instant::now() < deadline, "the TLS load stalled");
        assert!(
            failed.lock().expect("lock").is_empty(),
            "{:?}",
            failed.lock().expect("lock")
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(healthz_pid(&client, &admin).await, Some(new_pid));
    stop.store(true, Ordering::Release);
    for task in load {
        task.await.expect("load task");
    }
    let failures = failed.lock().expect("lock").clone();
    assert!(
        failures.is_empty(),
        "{} failed: {failures:?}",
        failures.len()
    );

    // Every request is in the audit trail, once: the old process's, then the new one's.
    new.signal("TERM");
    assert_eq!(new.wait_exit().await, Some(0), "{}", new.stderr());
    let events = file_events(&audit);
    let mut logged: Vec<&str> = events
        .iter()
        .filter_map(|e| e["request_id"].as_str())
        .collect();
    logged.sort_unstable();
    let mut want: Vec<String> = served.lock().expect("lock").clone();
    want.push(held_id);
    want.sort_unstable();
    assert_eq!(
        logged,
        want,
        "{} events for {} requests",
        logged.len(),
        count(&served) + 1
    );
}

/// `promptgate run --test` with `config`: its exit code and stderr.
fn run_test(config: &std::path::Path) -> (Option<i32>, String) {
    let out = Command::new(binary())
        .current_dir(repo_root())
        .args(["run", "--test", "--config"])
        .arg(config)
        .output()
        .expect("run --test");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn run_test_checks_a_config_next_to_the_running_gateway_and_leaves_it_serving() {
    let mock = MockUpstream::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (port, admin_port) = (free_port(), free_port());
    let good = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nadmin = \"127.0.0.1:{admin_port}\"\nupgrade_sock = {:?}\n\
         [upstream]\nurl = {:?}\n[audit]\ndir = {:?}\n",
        dir.path().join("upgrade.sock").display().to_string(),
        mock.url(),
        dir.path().join("audit").display().to_string(),
    );
    let config = dir.path().join("promptgate.toml");
    std::fs::write(&config, &good).expect("config");
    let mut running = Process::spawn(&config, dir.path(), "running", &[]);
    let client = reqwest::Client::new();
    let admin = format!("http://127.0.0.1:{admin_port}");
    let pid = u64::from(running.child.id());
    let deadline = Instant::now() + Duration::from_secs(20);
    while healthz_pid(&client, &admin).await != Some(pid) {
        assert!(Instant::now() < deadline, "not ready: {}", running.stderr());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let url = format!("http://127.0.0.1:{port}/v1/chat/completions");
    chat(&client, &url).await.expect("served");

    // The same config, its addresses and audit directory in use: valid, and nothing taken.
    let (code, stderr) = run_test(&config);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("--test: the config, rules, keys and certificates are valid"),
        "{stderr}"
    );
    // A rule set that does not compile, and a keys file that does not parse: refused, naming what is wrong.
    let rules = dir.path().join("rules");
    std::fs::create_dir(&rules).expect("rules dir");
    std::fs::write(rules.join("bad.toml"), "[[rule]]\nid = \"x\"\n").expect("bad rule");
    let keys = dir.path().join("keys.toml");
    std::fs::write(
        &keys,
        "[[key]]\nid = \"k\"\nsha256 = \"not-hex\"\ntenant = \"t\"\n",
    )
    .expect("bad keys");
    for (extra, want) in [
        (
            format!("[rules]\ndir = {:?}\n", rules.display().to_string()),
            "invalid rule set",
        ),
        (
            format!(
                "[auth]\nmode = \"gateway_keys\"\nkeys_file = {:?}\n",
                keys.display().to_string()
            ),
            "invalid keys file",
        ),
    ] {
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, format!("{good}{extra}")).expect("bad config");
        let (code, stderr) = run_test(&bad);
        assert_eq!(code, Some(2), "{want}: {stderr}");
        assert!(stderr.contains(want), "{want}: {stderr}");
    }

    // The running gateway saw none of it: same process, still serving, its audit directory still its own.
    assert!(
        running.child.try_wait().expect("wait").is_none(),
        "{}",
        running.stderr()
    );
    assert_eq!(healthz_pid(&client, &admin).await, Some(pid));
    let id = chat(&client, &url).await.expect("still served");
    running.signal("TERM");
    assert_eq!(running.wait_exit().await, Some(0), "{}", running.stderr());
    let events = file_events(&dir.path().join("audit"));
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[1]["request_id"], id.as_str());
}
