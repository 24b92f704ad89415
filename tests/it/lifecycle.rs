//! The process seen from outside: bad configs exit 2 naming the field, SIGTERM / SIGINT drain in-flight
//! streams while refusing new connections, and `https://` upstreams are verified.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;

use crate::support::{binary, free_port, repo_root, Gateway, GatewayOpts, MockUpstream};

fn run_with_config(toml: &str, extra: &[&str]) -> (Option<i32>, String) {
    let mut f = tempfile::Builder::new()
        .suffix(".toml")
        .tempfile()
        .expect("temp");
    std::io::Write::write_all(&mut f, toml.as_bytes()).expect("write");
    let out = Command::new(binary())
        .current_dir(repo_root())
        .args(["run", "--config"])
        .arg(f.path())
        .args(extra)
        .output()
        .expect("run");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_config_exits_2_naming_the_field() {
    let cases: [(&str, &[&str], &str); 9] = [
        (
            "[upstream]\nurl = \"htp://x\"\n",
            &[],
            "upstream.url: invalid URL \"htp://x\"",
        ),
        (
            "[server]\nlisen = \"127.0.0.1:1\"\n",
            &[],
            "server.lisen: unknown field `lisen`",
        ),
        (
            "[server]\nthreads = \"two\"\n",
            &[],
            "server.threads: invalid type",
        ),
        (
            "[audit]\nenabled = false\n[metrics]\nlisten = \"127.0.0.1:1\"\n",
            &[],
            ": metrics: unknown section [metrics] (line 3)",
        ),
        // [admin] holds the token only; its address is server.admin.
        (
            "[audit]\nenabled = false\n[admin]\nlisten = \"127.0.0.1:1\"\n",
            &[],
            ": admin.listen: unknown field `listen`, expected `token_env` (line 4)",
        ),
        // A syntax error is reported on one line too (toml's message spans two).
        (
            "[server]\nthreads = two\n",
            &[],
            ": (file): invalid string; expected",
        ),
        (
            "[upstream]\nconnect_timeout_ms = 0\n",
            &[],
            "upstream.connect_timeout_ms: must be greater than 0",
        ),
        (
            "",
            &["--listen", "localhost"],
            "command line: --listen: invalid address \"localhost\"",
        ),
        (
            "",
            &["--upstream", "ftp://example.com"],
            "command line: --upstream: invalid URL",
        ),
    ];
    for (toml, flags, want) in cases {
        let (code, stderr) = run_with_config(toml, flags);
        assert_eq!(code, Some(2), "{toml:?} {flags:?}: {stderr}");
        assert!(
            stderr.contains(want),
            "{toml:?} {flags:?}: want {want:?} in {stderr:?}"
        );
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr:?}");
    }
    let out = Command::new(binary())
        .args(["run", "--config", "/nonexistent/promptgate.toml"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("/nonexistent/promptgate.toml: (file): cannot read"));
}

#[test]
fn a_busy_address_fails_at_start() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = busy.local_addr().expect("addr").to_string();
    let admin = format!("127.0.0.1:{}", free_port());
    let (code, stderr) = run_with_config(
        "",
        &[
            "--listen",
            &addr,
            "--admin",
            &admin,
            "--upstream",
            "http://127.0.0.1:9",
        ],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("server.listen: cannot listen on {addr}")),
        "{stderr}"
    );
}

#[test]
fn shipped_config_is_valid() {
    let (code, stderr) = run_with_config(
        &std::fs::read_to_string(repo_root().join("conf/promptgate.toml"))
            .expect("conf/promptgate.toml"),
        &["--listen", "999.0.0.1:1"],
    );
    // Everything in the shipped file validates; the deliberately bad flag is the one error reported.
    assert_eq!(code, Some(2));
    assert!(stderr.contains("command line: --listen"), "{stderr}");
}

async fn graceful_stop(signal: &str) {
    let mock = MockUpstream::start().await;
    let mut gw = Gateway::start(&mock.url()).await;
    let token = format!("drain-{signal}");
    let resp = reqwest::Client::new()
        .post(gw.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("x-mock-hold", &token)
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

    gw.signal(signal);
    // New connections are refused while the stream is still open.
    let mut refused = false;
    for _ in 0..200 {
        if std::net::TcpStream::connect(gw.addr).is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "listener still accepting after SIG{signal}");
    assert_eq!(
        gw.child.try_wait().expect("wait"),
        None,
        "gateway exited with a stream in flight"
    );

    mock.release(&token).await;
    while let Some(chunk) = stream.next().await {
        seen.extend_from_slice(&chunk.expect("the in-flight stream finishes"));
    }
    let text = String::from_utf8(seen).expect("utf8");
    assert!(
        text.contains("three") && text.ends_with("data: [DONE]\n\n"),
        "{text}"
    );
    assert_eq!(
        gw.wait_exit(Duration::from_secs(8)).await,
        Some(0),
        "{}",
        gw.stderr()
    );
}

#[tokio::test]
async fn sigterm_drains_in_flight_streams_and_refuses_new_connections() {
    graceful_stop("TERM").await;
}

#[tokio::test]
async fn sigint_drains_in_flight_streams_too() {
    graceful_stop("INT").await;
}

/// A CA and a server certificate for `name`, made with the openssl command line.
fn make_certs(dir: &Path, name: &str) {
    let sh = format!(
        "set -e; cd {d}; \
         openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=promptgate-test-ca 2>/dev/null; \
         openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN={name} 2>/dev/null; \
         printf 'subjectAltName=DNS:{name}\\nbasicConstraints=CA:FALSE\\n' > ext.cnf; \
         openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile ext.cnf 2>/dev/null",
        d = dir.display()
    );
    let ok = Command::new("sh")
        .args(["-c", &sh])
        .status()
        .expect("openssl")
        .success();
    assert!(ok, "certificate generation failed");
}

struct TlsUpstream {
    child: std::process::Child,
    port: u16,
}

impl TlsUpstream {
    fn start(dir: &Path) -> Self {
        let port = free_port();
        let mut child = Command::new("python3")
            .arg(repo_root().join("tests/python/tls_upstream.py"))
            .arg(port.to_string())
            .arg(dir.join("server.pem"))
            .arg(dir.join("server.key"))
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout");
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("ready line");
        assert_eq!(line.trim(), "ready");
        Self { child, port }
    }
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn https_upstream_is_verified_and_gets_sni() {
    let dir = tempfile::tempdir().expect("tempdir");
    make_certs(dir.path(), "localhost");
    let up = TlsUpstream::start(dir.path());
    let url = format!("https://localhost:{}", up.port);
    let ca = dir.path().join("ca.pem");

    // Trusted CA: forwarded, with SNI and Host set to the upstream's name.
    let gw = Gateway::start_with(GatewayOpts::new(&url).toml(&format!(
        "[upstream]\nca_file = {:?}",
        ca.display().to_string()
    )))
    .await;
    let resp = reqwest::get(gw.url("/v1/models")).await.expect("send");
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.expect("json");
    assert_eq!(v["data"][0]["id"], "tls-model");
    assert_eq!(v["sni"], "localhost");
    assert_eq!(v["host"], format!("localhost:{}", up.port));
    drop(gw);

    // The system roots do not know the test CA: the certificate is refused, nothing is forwarded.
    let gw = Gateway::start(&url).await;
    let resp = reqwest::get(gw.url("/v1/models")).await.expect("send");
    assert_eq!(resp.status(), 502);
    let v: Value = resp.json().await.expect("json");
    assert_eq!(v["error"]["code"], "upstream_unreachable");
}

#[tokio::test]
async fn https_upstream_with_the_wrong_name_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    make_certs(dir.path(), "not-localhost.example");
    let up = TlsUpstream::start(dir.path());
    let ca = dir.path().join("ca.pem");
    let gw = Gateway::start_with(
        GatewayOpts::new(format!("https://localhost:{}", up.port)).toml(&format!(
            "[upstream]\nca_file = {:?}",
            ca.display().to_string()
        )),
    )
    .await;
    let resp = reqwest::get(gw.url("/v1/models")).await.expect("send");
    assert_eq!(resp.status(), 502);
}
