//! Test harness: start the mock and the gateway on ephemeral ports, talk to them, read what the mock received.

#![allow(dead_code)]

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use promptgate::mock::{self, MockConfig};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest, Message};
use tokio_tungstenite::WebSocketStream;

/// The built `promptgate` executable (`$PROMPTGATE_BIN` runs the suite against another build).
pub fn binary() -> PathBuf {
    std::env::var_os("PROMPTGATE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_promptgate")))
}

/// The repository root (tests run with the package root as working directory, but be explicit).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A port that was free a moment ago and that no other test of this run has been given. The probe listener is
/// dropped before the gateway binds the port, and the OS may hand the same port out again meanwhile: two
/// tests' gateways would then race for it, and the loser's test would talk to the winner.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("ephemeral port");
        let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// The mock upstream, running as a task of the test's runtime.
pub struct MockUpstream {
    pub addr: SocketAddr,
    client: reqwest::Client,
    mock: mock::Mock,
    config: MockConfig,
}

impl MockUpstream {
    pub async fn start() -> Self {
        Self::start_with(MockConfig::default()).await
    }

    pub async fn start_with(config: MockConfig) -> Self {
        Self::start_at("127.0.0.1:0".parse().expect("addr"), config).await
    }

    /// A mock on `addr` (any loopback address: Linux routes all of 127/8 to the loopback interface).
    pub async fn start_at(addr: SocketAddr, config: MockConfig) -> Self {
        let m = mock::start(addr, config.clone())
            .await
            .expect("mock starts");
        Self {
            addr: m.addr,
            client: reqwest::Client::new(),
            mock: m,
            config,
        }
    }

    /// Stops the mock as a crashed upstream stops (its connections dropped) and returns once its address
    /// refuses connections. What it recorded is gone with it.
    pub async fn stop(&self) {
        self.mock.stop();
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(self.addr).await.is_ok() {
            assert!(
                Instant::now() < deadline,
                "mock on {} did not stop",
                self.addr
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Serves again on the same address, with the same config and an empty record.
    pub async fn restart(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) => assert!(Instant::now() < deadline, "rebind {}: {e}", self.addr),
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        self.mock = mock::serve(listener, self.config.clone()).expect("mock restarts");
    }

    /// The gateway's health checks this mock has answered (never among [`MockUpstream::received`]).
    pub async fn health_checks(&self) -> u64 {
        self.control("health_checks").await["count"]
            .as_u64()
            .expect("count")
    }

    /// `GET /__mock/{what}`, as JSON.
    async fn control(&self, what: &str) -> Value {
        get_json(&self.client, &format!("{}/__mock/{what}", self.url())).await
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request the mock has received, oldest first.
    pub async fn received(&self) -> Vec<Value> {
        self.control("requests")
            .await
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Waits until a recorded request that `pick` chooses is marked completed. The mock marks an answer
    /// completed once its last write has returned, which can be after the client has read the answer's end, so
    /// a test that reads the mark right after the answer races it. Panics after 30 s.
    pub async fn wait_completed(&self, what: &str, pick: impl Fn(&Value) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self
            .received()
            .await
            .iter()
            .any(|r| r["completed"] == true && pick(r))
        {
            assert!(Instant::now() < deadline, "never completed: {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `ws://` and this mock's address, then `path`.
    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    /// Queues a realtime response script (an object, or an array of them; see `promptgate::mock::realtime`):
    /// each `response.create` takes the next one. Panics if the mock refuses it.
    pub async fn realtime_script(&self, script: Value) {
        let r = self
            .client
            .post(format!("{}/__mock/realtime/script", self.url()))
            .json(&script)
            .send()
            .await
            .expect("queue realtime script");
        let status = r.status();
        assert_eq!(
            status,
            200,
            "mock refused the script: {}",
            r.text().await.unwrap_or_default()
        );
    }

    /// Every realtime session the mock has held (open or ended), oldest first.
    pub async fn realtime_sessions(&self) -> Vec<Value> {
        self.control("realtime").await["sessions"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Waits up to 10 s for the realtime session at `index` to satisfy `done` and returns it (the last seen
    /// state if it never does): a session's record trails what its client has seen by a moment.
    pub async fn realtime_session_when(
        &self,
        index: usize,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = self
                .realtime_sessions()
                .await
                .get(index)
                .cloned()
                .unwrap_or(Value::Null);
            if done(&s) || Instant::now() > deadline {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Forgets the realtime sessions and the queued scripts.
    pub async fn realtime_clear(&self) {
        self.client
            .delete(format!("{}/__mock/realtime", self.url()))
            .send()
            .await
            .expect("clear realtime");
    }

    pub async fn release(&self, token: &str) {
        self.client
            .post(format!("{}/__mock/release/{token}", self.url()))
            .send()
            .await
            .expect("release");
    }
}

/// A header of a recorded request.
pub fn recorded_header<'a>(rec: &'a Value, name: &str) -> Option<&'a str> {
    rec["headers"]
        .as_array()?
        .iter()
        .find(|h| h[0] == name)
        .and_then(|h| h[1].as_str())
}

/// A running `promptgate run` process. Killed on drop.
pub struct Gateway {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    _config: tempfile::NamedTempFile,
    pub stderr_path: PathBuf,
    _dir: tempfile::TempDir,
}

/// What to start the gateway with.
pub struct GatewayOpts {
    pub upstream: String,
    /// Extra TOML, appended to the generated config.
    pub toml: String,
    /// Rules directory (default: the shipped `rules/`).
    pub rules: Option<PathBuf>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
}

impl GatewayOpts {
    pub fn new(upstream: impl Into<String>) -> Self {
        Self {
            upstream: upstream.into(),
            toml: String::new(),
            rules: None,
            env: Vec::new(),
        }
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.to_string(), v.to_string()));
        self
    }

    pub fn rules(mut self, dir: &std::path::Path) -> Self {
        self.rules = Some(dir.to_path_buf());
        self
    }

    pub fn toml(mut self, t: &str) -> Self {
        self.toml.push_str(t);
        self.toml.push('\n');
        self
    }

    /// No `--upstream` on the command line: the config's `[[upstream]]` entries stand (the flag replaces the
    /// URL of the one entry and is refused with several).
    pub fn no_upstream_flag() -> Self {
        Self::new("")
    }
}

/// `--upstream URL`, or nothing for an empty URL (see [`GatewayOpts::no_upstream_flag`]).
fn upstream_flag(url: &str) -> Vec<&str> {
    if url.is_empty() {
        Vec::new()
    } else {
        vec!["--upstream", url]
    }
}

impl Gateway {
    pub async fn start(upstream: &str) -> Self {
        Self::start_with(GatewayOpts::new(upstream)).await
    }

    pub async fn start_with(opts: GatewayOpts) -> Self {
        let port = free_port();
        let admin_port = free_port();
        let mut config = tempfile::Builder::new()
            .suffix(".toml")
            .tempfile()
            .expect("temp config");
        let toml = if opts.toml.contains("[server]") {
            opts.toml.clone()
        } else {
            format!("[server]\ngrace_period_seconds = 10\n{}", opts.toml)
        };
        let dir = tempfile::tempdir().expect("tempdir");
        // Every gateway gets its own audit directory unless the test configures one.
        let toml = if toml.contains("[audit]") {
            toml
        } else {
            format!(
                "{toml}\n[audit]\ndir = {:?}\n",
                dir.path().join("audit").display().to_string()
            )
        };
        config.write_all(toml.as_bytes()).expect("write config");
        let stderr_path = dir.path().join("stderr.log");
        let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
        let mut cmd = Command::new(binary());
        if let Some(dir) = &opts.rules {
            cmd.arg("run").arg("--rules").arg(dir);
        } else {
            cmd.arg("run");
        }
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let child = cmd
            .current_dir(repo_root())
            .arg("--config")
            .arg(config.path())
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--admin", &format!("127.0.0.1:{admin_port}")])
            .args(upstream_flag(&opts.upstream))
            .stdout(std::fs::File::create(dir.path().join("stdout.log")).expect("stdout file"))
            .stderr(stderr)
            .spawn()
            .expect("spawn promptgate");
        let mut gw = Gateway {
            child,
            addr: format!("127.0.0.1:{port}").parse().expect("addr"),
            admin: format!("127.0.0.1:{admin_port}").parse().expect("addr"),
            _config: config,
            stderr_path,
            _dir: dir,
        };
        gw.wait_ready().await;
        gw
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let client = reqwest::Client::new();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("gateway exited during start ({status}): {}", self.stderr());
            }
            let admin_up = client
                .get(self.admin_url("/healthz"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
            let proxy_up = std::net::TcpStream::connect(self.addr).is_ok();
            if admin_up && proxy_up {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "gateway not ready: {}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `ws://` and the gateway's address, then `path`.
    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// What the gateway printed on stdout (the stdout audit sink).
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.stderr_path.with_file_name("stdout.log")).unwrap_or_default()
    }

    /// Sends a signal by name (`TERM`, `INT`, `KILL`).
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{name} failed");
    }

    /// Waits for the process to exit and returns its exit code.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The value of a metric sample line now, e.g. `promptgate_requests_total{route="models",status="200"}`.
    pub async fn metric(&self, sample: &str) -> Option<f64> {
        self.metric_now(sample).await
    }

    /// Waits up to 15 s for `sample` to read `want` and returns the last value seen: metrics are recorded in the
    /// `logging` hook, just after the response went out, so a client can be a moment ahead of them. (It returns
    /// as soon as the value is there; the bound is for a machine busy with a whole suite, where 5 s once fell
    /// short.)
    pub async fn metric_eventually(&self, sample: &str, want: f64) -> Option<f64> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let v = self.metric_now(sample).await;
            if v == Some(want) || Instant::now() > deadline {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The whole `/metrics` exposition (empty if it cannot be read).
    pub async fn metrics_text(&self) -> String {
        match reqwest::get(self.admin_url("/metrics")).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// `POST /reload` on the admin address.
    pub async fn reload(&self) -> reqwest::Response {
        reqwest::Client::new()
            .post(self.admin_url("/reload"))
            .send()
            .await
            .expect("reload")
    }

    async fn metric_now(&self, sample: &str) -> Option<f64> {
        let text = self.metrics_text().await;
        text.lines().find_map(|l| {
            l.strip_prefix(sample)
                .and_then(|rest| rest.trim().parse().ok())
        })
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Copies the shipped rule files into `to`.
pub fn copy_rules(to: &std::path::Path) {
    let sh = format!(
        "cp -r {}/. {}",
        repo_root().join("rules").display(),
        to.display()
    );
    assert!(Command::new("sh")
        .args(["-c", &sh])
        .status()
        .expect("cp")
        .success());
}

/// A `chat.completions` body of about `size` bytes.
pub fn chat_body(text: &str) -> String {
    serde_json::json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]})
        .to_string()
}

/// POSTs a JSON body to the gateway with extra headers.
pub async fn post(
    gw: &Gateway,
    path: &str,
    body: Vec<u8>,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut req = reqwest::Client::new()
        .post(gw.url(path))
        .header("content-type", "application/json")
        .body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.expect("send")
}

/// A keys file in a temp directory, rewritable during a test.
pub struct KeysFile {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl KeysFile {
    pub fn new(text: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keys.toml");
        std::fs::write(&path, text).expect("write keys");
        Self { _dir: dir, path }
    }

    /// Replaces the file the way editors do: a temporary, then a rename.
    pub fn replace(&self, text: &str) {
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, text).expect("write");
        std::fs::rename(&tmp, &self.path).expect("rename");
    }
}

/// `GET url`, answered with JSON.
pub async fn get_json(client: &reqwest::Client, url: &str) -> Value {
    client
        .get(url)
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json")
}

/// One `[[key]]` entry for `secret`, with extra TOML lines.
pub fn key_entry(id: &str, secret: &str, extra: &str) -> String {
    format!(
        "[[key]]\nid = \"{id}\"\nsha256 = \"{}\"\ntenant = \"team-a\"\n{extra}\n",
        promptgate::auth::keys::secret_sha256(secret)
    )
}

/// Every complete record line in the audit directory, but the segment headers of the hash chain (bookkeeping,
/// one per file: `audit verify` checks them, `tests/it/audit_chain.rs` sees them).
pub fn file_events(dir: &Path) -> Vec<Value> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("audit dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    names.sort();
    let mut out = Vec::new();
    for p in names {
        let text = std::fs::read(&p).expect("segment");
        for line in text.split_inclusive(|b| *b == b'\n') {
            if line.ends_with(b"\n") {
                let v: Value = serde_json::from_slice(line).expect("event line is JSON");
                if v["type"] != "audit.segment" {
                    out.push(v);
                }
            }
        }
    }
    out
}

pub async fn wait_file_events(dir: &Path, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ev = file_events(dir);
        if ev.len() >= n || Instant::now() > deadline {
            return ev;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A `redis-server` of the test's own on a free port (no persistence), killed on drop. It must be installed:
/// a missing server fails the test, it never skips it.
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Redis {
    pub fn start() -> Self {
        let mut r = Redis {
            port: free_port(),
            child: None,
            dir: tempfile::tempdir().expect("tempdir"),
        };
        r.restart();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Starts the server (again) on its port, empty, and waits until it answers.
    pub fn restart(&mut self) {
        self.stop();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            // `DEBUG SLEEP` stands in for a stalled server; Redis 7 refuses DEBUG unless enabled.
            .args(["--enable-debug-command", "local"])
            .current_dir(self.dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let up = redis::Client::open(self.url())
                .and_then(|c| c.get_connection())
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            if up.is_ok() {
                return;
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server outright (as a crash would).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Runs one command, e.g. `["GET", key]`.
    pub fn cmd<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        let mut con = redis::Client::open(self.url())
            .and_then(|c| c.get_connection())
            .expect("connect to the test's redis");
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query(&mut con).expect("redis command")
    }

    /// Every key, sorted.
    pub fn keys(&self) -> Vec<String> {
        let mut k: Vec<String> = self.cmd(&["KEYS", "*"]);
        k.sort();
        k
    }

    /// Every key matching `pattern` (SCAN, of one TYPE if given), sorted.
    pub fn scan(&self, pattern: &str, of_type: Option<&str>) -> Vec<String> {
        let mut cursor = "0".to_string();
        let mut out = Vec::new();
        loop {
            let mut args = vec!["SCAN", &cursor, "MATCH", pattern, "COUNT", "1000"];
            if let Some(t) = of_type {
                args.extend(["TYPE", t]);
            }
            let (next, keys): (String, Vec<String>) = self.cmd(&args);
            out.extend(keys);
            if next == "0" {
                break;
            }
            cursor = next;
        }
        out.sort();
        out.dedup();
        out
    }

    /// Members of every sorted set matching `pattern` (the concurrency permits), summed.
    pub fn permits(&self, pattern: &str) -> i64 {
        self.scan(pattern, Some("zset"))
            .iter()
            .map(|k| self.cmd::<i64>(&["ZCARD", k]))
            .sum()
    }

    /// Calls of a command so far (`INFO commandstats`), e.g. `evalsha`.
    pub fn calls(&self, command: &str) -> u64 {
        let info: String = self.cmd(&["INFO", "commandstats"]);
        let prefix = format!("cmdstat_{command}:calls=");
        info.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One RESP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Resp>>),
}

impl Resp {
    /// The reply as text (simple or bulk string), if it is one.
    pub fn text(&self) -> Option<String> {
        match self {
            Resp::Simple(s) => Some(s.clone()),
            Resp::Bulk(Some(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        }
    }

    pub fn int(&self) -> Option<i64> {
        match self {
            Resp::Int(n) => Some(*n),
            _ => None,
        }
    }

    pub fn items(&self) -> &[Resp] {
        match self {
            Resp::Array(Some(v)) => v,
            _ => &[],
        }
    }
}

/// Parses one reply from the front of `buf`: the reply and the bytes it took, or `None` if incomplete.
fn parse_resp(buf: &[u8]) -> Option<(Resp, usize)> {
    let end = buf.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&buf[1..end]).expect("RESP line is UTF-8");
    let after = end + 2;
    match *buf.first()? {
        b'+' => Some((Resp::Simple(line.to_string()), after)),
        b'-' => Some((Resp::Error(line.to_string()), after)),
        b':' => Some((Resp::Int(line.parse().expect("RESP integer")), after)),
        b'$' => {
            let n: i64 = line.parse().expect("RESP length");
            if n < 0 {
                return Some((Resp::Bulk(None), after));
            }
            let n = n as usize;
            if buf.len() < after + n + 2 {
                return None;
            }
            Some((
                Resp::Bulk(Some(buf[after..after + n].to_vec())),
                after + n + 2,
            ))
        }
        b'*' => {
            let n: i64 = line.parse().expect("RESP length");
            if n < 0 {
                return Some((Resp::Array(None), after));
            }
            let mut at = after;
            let mut items = Vec::with_capacity(n as usize);
            for _ in 0..n {
                let (item, used) = parse_resp(&buf[at..])?;
                items.push(item);
                at += used;
            }
            Some((Resp::Array(Some(items)), at))
        }
        other => panic!("unexpected RESP type byte {other:?}"),
    }
}

/// One command in RESP form.
fn encode_resp(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Sends one command on `stream` and reads its reply.
pub async fn resp_roundtrip(
    stream: &mut tokio::net::TcpStream,
    args: &[&str],
) -> std::io::Result<Resp> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(&encode_resp(args)).await?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some((reply, _)) = parse_resp(&buf) {
            return Ok(reply);
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A chat completion sent with gateway key `secret` (and `extra` headers).
pub async fn chat_as(gw: &Gateway, secret: &str, extra: &[(&str, &str)]) -> reqwest::Response {
    let auth = format!("Bearer {secret}");
    let mut headers = vec![("authorization", auth.as_str())];
    headers.extend_from_slice(extra);
    post(
        gw,
        "/v1/chat/completions",
        chat_body("Say hello").into_bytes(),
        &headers,
    )
    .await
}

/// A response header as text.
pub fn header<'a>(r: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    r.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Opens a WebSocket to a plain `ws://` URL with extra request headers and offered subprotocols (sent as one
/// `Sec-WebSocket-Protocol` list). A refused upgrade is `Err(tungstenite::Error::Http(response))`, its body
/// included; tungstenite fails the handshake if protocols were offered and the server selected none.
pub async fn ws_connect(
    url: &str,
    headers: &[(&str, &str)],
    protocols: &[&str],
) -> Result<(WebSocketStream<TcpStream>, http::Response<Option<Vec<u8>>>), tungstenite::Error> {
    let mut req = url.into_client_request()?;
    for (k, v) in headers {
        let name = http::HeaderName::from_bytes(k.as_bytes()).map_err(http::Error::from)?;
        let value = http::HeaderValue::from_str(v).map_err(http::Error::from)?;
        req.headers_mut().append(name, value);
    }
    if !protocols.is_empty() {
        let value =
            http::HeaderValue::from_str(&protocols.join(", ")).map_err(http::Error::from)?;
        req.headers_mut().insert("sec-websocket-protocol", value);
    }
    let host = req
        .uri()
        .host()
        .ok_or(tungstenite::Error::Url(
            tungstenite::error::UrlError::NoHostName,
        ))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = req.uri().port_u16().unwrap_or(80);
    let stream = TcpStream::connect((host.as_str(), port)).await?;
    stream.set_nodelay(true)?;
    // A small read buffer to begin with (it grows as needed): tests and benchmarks hold many sessions open.
    let config = WebSocketConfig::default().read_buffer_size(8 * 1024);
    tokio_tungstenite::client_async_with_config(req, stream, Some(config)).await
}

/// The next message that is not a ping or a pong (a close frame included). Panics after 10 s, at the end of
/// the stream, or on an error.
pub async fn ws_next(ws: &mut WebSocketStream<TcpStream>) -> Message {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => panic!("no WebSocket message within 10 s"),
            Ok(None) => panic!("the WebSocket ended while a message was awaited"),
            Ok(Some(Err(e))) => panic!("WebSocket error while a message was awaited: {e}"),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
            Ok(Some(Ok(m))) => return m,
        }
    }
}

/// The next text message, parsed as JSON (pings and pongs skipped). Panics after 10 s, on anything else, or if
/// the text is not JSON.
pub async fn ws_next_json(ws: &mut WebSocketStream<TcpStream>) -> Value {
    match ws_next(ws).await {
        Message::Text(t) => serde_json::from_str(t.as_str())
            .unwrap_or_else(|e| panic!("WebSocket text is not JSON ({e}): {}", t.as_str())),
        other => panic!("expected a JSON text message, got {other:?}"),
    }
}

/// Sends `event` as one text message.
pub async fn ws_send_json(ws: &mut WebSocketStream<TcpStream>, event: Value) {
    ws.send(Message::text(event.to_string()))
        .await
        .expect("send on the WebSocket");
}

/// Reads JSON events until one of type `last` (included), panicking on anything that is not JSON text.
pub async fn ws_events_until(ws: &mut WebSocketStream<TcpStream>, last: &str) -> Vec<Value> {
    let mut events = Vec::new();
    loop {
        let e = ws_next_json(ws).await;
        let done = e["type"] == last;
        events.push(e);
        if done {
            return events;
        }
    }
}
