//! Usage from the audit files, seen from outside: a scripted sequence over several keys, tenants and models
//! (plain, redacted, blocked, streamed), with a gateway restart in the middle on the same audit directory,
//! must add up to exactly what the clients were answered — through `GET /usage` and `promptgate usage` —
//! whatever happens to the rollup files beside the segments (made at rotation, deleted, damaged). And the
//! admin bearer token guards what acts or reveals.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{binary, post, Gateway, GatewayOpts, KeysFile, MockUpstream};

const TOKEN: &str = "adm-test-token-7f3a9c";

/// (key id, secret, tenant)
const KEYS: [(&str, &str, &str); 3] = [
    ("k-alpha", "pgk_usage_alpha_secret", "team-a"),
    ("k-beta", "pgk_usage_beta_secret", "team-a"),
    ("k-gamma", "pgk_usage_gamma_secret", "team-b"),
];

#[derive(Clone, Copy)]
enum Kind {
    Plain,
    Redacted,
    Blocked,
    Streamed,
}

/// Expected sums per (key, tenant, model), from what the clients saw.
#[derive(Default, Clone, Copy, Debug, PartialEq)]
struct Want {
    requests: u64,
    input: u64,
    output: u64,
    total: u64,
    blocked: u64,
    redacted: u64,
}

impl Want {
    fn add(&mut self, o: &Want) {
        self.requests += o.requests;
        self.input += o.input;
        self.output += o.output;
        self.total += o.total;
        self.blocked += o.blocked;
        self.redacted += o.redacted;
    }

    fn of(row: &Value) -> Want {
        let n = |f: &str| row[f].as_u64().unwrap_or_else(|| panic!("{f} in {row}"));
        Want {
            requests: n("requests"),
            input: n("input_tokens"),
            output: n("output_tokens"),
            total: n("total_tokens"),
            blocked: n("blocked"),
            redacted: n("redacted"),
        }
    }
}

type Ledger = BTreeMap<(String, String, String), Want>;

fn keys_file() -> KeysFile {
    let text: String = KEYS
        .iter()
        .map(|(id, secret, tenant)| {
            format!(
                "[[key]]\nid = \"{id}\"\nsha256 = \"{}\"\ntenant = \"{tenant}\"\n",
                promptgate::auth::keys::secret_sha256(secret)
            )
        })
        .collect();
    KeysFile::new(&text)
}

async fn start(mock: &MockUpstream, keys: &KeysFile, audit: &Path) -> Gateway {
    Gateway::start_with(
        GatewayOpts::new(mock.url())
            .toml(&format!(
                "[auth]\nmode = \"gateway_keys\"\nkeys_file = {:?}\n[audit]\ndir = {:?}\nmax_file_bytes = 4096\nkeep_files = 1000\n[admin]\ntoken_env = \"PG_TEST_ADMIN_TOKEN\"\n",
                keys.path.display().to_string(),
                audit.display().to_string()
            ))
            .env("PG_TEST_ADMIN_TOKEN", TOKEN),
    )
    .await
}

/// The usage an answer reported: a JSON body's `usage`, or a stream's last `usage` chunk.
fn reported(text: &str) -> (u64, u64, u64) {
    let usage = if let Ok(v) = serde_json::from_str::<Value>(text) {
        v["usage"].clone()
    } else {
        text.lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .filter(|v| v["usage"].is_object())
            .map(|v| v["usage"].clone())
            .next_back()
            .unwrap_or(Value::Null)
    };
    let n = |f: &str| usage[f].as_u64().unwrap_or(0);
    (
        n("prompt_tokens"),
        n("completion_tokens"),
        n("total_tokens"),
    )
}

/// Sends one scripted request and books what the client saw.
async fn send(gw: &Gateway, ledger: &mut Ledger, key: usize, model: &str, kind: Kind, i: usize) {
    let (id, secret, tenant) = KEYS[key];
    let text = match kind {
        Kind::Plain | Kind::Streamed => format!("Say hello, number {i}"),
        Kind::Redacted => format!("Email jane.doe{i}@example.com about launch {i}"),
        Kind::Blocked => "my key is AKIAIOSFODNN7EXAMPLE".to_string(),
    };
    let mut body = json!({"model": model, "messages": [{"role": "user", "content": text}]});
    if matches!(kind, Kind::Streamed) {
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
    }
    let auth = format!("Bearer {secret}");
    let r = post(
        gw,
        "/v1/chat/completions",
        body.to_string().into_bytes(),
        &[("authorization", &auth)],
    )
    .await;
    let status = r.status().as_u16();
    let answer = r.text().await.expect("answer");
    let want_status = if matches!(kind, Kind::Blocked) {
        409
    } else {
        200
    };
    assert_eq!(status, want_status, "{answer}");
    let (input, output, total) = reported(&answer);
    if !matches!(kind, Kind::Blocked) {
        assert!(total > 0, "the mock reported no usage: {answer}");
    }
    let entry = ledger
        .entry((id.to_string(), tenant.to_string(), model.to_string()))
        .or_default();
    entry.add(&Want {
        requests: 1,
        input,
        output,
        total,
        blocked: u64::from(matches!(kind, Kind::Blocked)),
        redacted: u64::from(matches!(kind, Kind::Redacted)),
    });
}

/// A phase of the script: every key, both models, every kind, in a fixed interleaving.
async fn phase(gw: &Gateway, ledger: &mut Ledger, offset: usize) {
    let kinds = [
        Kind::Plain,
        Kind::Streamed,
        Kind::Redacted,
        Kind::Plain,
        Kind::Blocked,
    ];
    for i in 0..15 {
        let key = (i + offset) % 3;
        let model = if (i / 3 + offset).is_multiple_of(2) {
            "gpt-4o-mini"
        } else {
            "gpt-4o"
        };
        send(
            gw,
            ledger,
            key,
            model,
            kinds[i % kinds.len()],
            i + offset * 100,
        )
        .await;
    }
}

/// The decision events on disk (other line types left out).
fn decision_lines(dir: &Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(dir).expect("audit dir").flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "jsonl") {
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            n += text
                .lines()
                .filter(|l| l.contains("\"type\":\"chat."))
                .count();
        }
    }
    n
}

async fn wait_events(dir: &Path, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while decision_lines(dir) < n {
        assert!(Instant::now() < deadline, "events not on disk");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn usage_status(
    gw: &Gateway,
    query: &str,
    token: Option<&str>,
) -> (u16, Option<String>, Value) {
    let mut req = reqwest::Client::new().get(gw.admin_url(&format!("/usage?{query}")));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.expect("usage");
    let status = r.status().as_u16();
    let challenge = crate::support::header(&r, "www-authenticate").map(String::from);
    (status, challenge, r.json().await.expect("json"))
}

async fn usage(gw: &Gateway, query: &str) -> Value {
    let (status, _, v) = usage_status(gw, query, Some(TOKEN)).await;
    assert_eq!(status, 200, "{v}");
    v
}

fn cli(dir: &Path, args: &[&str]) -> Value {
    let out = Command::new(binary())
        .arg("usage")
        .arg("--dir")
        .arg(dir)
        .args(["--format", "json"])
        .args(args)
        .output()
        .expect("promptgate usage");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

/// What the ledger adds up to, grouped by `f` (a row's group values as JSON).
fn grouped(
    ledger: &Ledger,
    f: impl Fn(&(String, String, String)) -> Value,
) -> BTreeMap<String, Want> {
    let mut out: BTreeMap<String, Want> = BTreeMap::new();
    for (k, w) in ledger {
        out.entry(f(k).to_string()).or_default().add(w);
    }
    out
}

/// An answer's rows keyed by their group values (the `dims` fields as JSON).
fn rows(v: &Value, dims: &[&str]) -> BTreeMap<String, Want> {
    v["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|r| {
            let mut g = serde_json::Map::new();
            for d in dims {
                g.insert(d.to_string(), r[*d].clone());
            }
            (Value::Object(g).to_string(), Want::of(r))
        })
        .collect()
}

fn sidecars(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .expect("dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "usage"))
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn usage_adds_up_exactly_across_a_restart_and_whatever_happens_to_the_rollups() {
    let mock = MockUpstream::start().await;
    let keys = keys_file();
    let dir = tempfile::tempdir().expect("tempdir");
    let audit = dir.path().join("audit");
    let mut ledger = Ledger::new();

    let mut gw = start(&mock, &keys, &audit).await;
    phase(&gw, &mut ledger, 0).await;
    gw.signal("TERM");
    assert_eq!(
        gw.wait_exit(Duration::from_secs(15)).await,
        Some(0),
        "{}",
        gw.stderr()
    );
    drop(gw);
    let gw = start(&mock, &keys, &audit).await;
    phase(&gw, &mut ledger, 1).await;
    let n: u64 = ledger.values().map(|w| w.requests).sum();
    wait_events(&audit, n as usize).await;

    let mut all = Want::default();
    ledger.values().for_each(|w| all.add(w));
    assert!(all.blocked > 0 && all.redacted > 0 && all.input > 0);

    // Totals, by key, by tenant and model within a tenant, one key and model.
    let v = usage(&gw, "").await;
    assert_eq!(Want::of(&v["totals"]), all, "{v}");
    assert_eq!(v["data"].as_array().map(Vec::len), Some(1));
    let v = usage(&gw, "group_by=key").await;
    assert_eq!(
        rows(&v, &["key"]),
        grouped(&ledger, |k| json!({"key": k.0}))
    );
    let v = usage(&gw, "group_by=tenant,model&tenant=team-a").await;
    let want = grouped(
        &ledger
            .iter()
            .filter(|(k, _)| k.1 == "team-a")
            .map(|(k, w)| (k.clone(), *w))
            .collect(),
        |k| json!({"tenant": k.1, "model": k.2}),
    );
    assert_eq!(rows(&v, &["tenant", "model"]), want);
    let v = usage(&gw, "key=k-gamma&model=gpt-4o").await;
    let want = ledger
        .get(&("k-gamma".into(), "team-b".into(), "gpt-4o".into()))
        .copied()
        .unwrap_or_default();
    assert!(want.requests > 0);
    assert_eq!(Want::of(&v["totals"]), want);
    // Time: everything is within the last day; nothing before.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let v = usage(
        &gw,
        &format!("from={}&to={}&group_by=day", now - 86_400, now + 3600),
    )
    .await;
    assert_eq!(Want::of(&v["totals"]), all);
    assert!(
        v["range"]["from"]
            .as_str()
            .is_some_and(|s| s.ends_with(":00:00Z")),
        "{v}"
    );
    let v = usage(&gw, &format!("to={}", now - 86_400)).await;
    assert_eq!(Want::of(&v["totals"]), Want::default());
    assert_eq!(v["data"], json!([]));

    // Pages of two: together, the whole answer; has_more only before the last.
    let whole = usage(&gw, "group_by=key,model").await;
    let mut paged = Vec::new();
    for page in 1.. {
        let v = usage(&gw, &format!("group_by=key,model&page_size=2&page={page}")).await;
        paged.extend(v["data"].as_array().cloned().unwrap_or_default());
        let more = v["has_more"].as_bool().expect("has_more");
        assert_eq!(
            more,
            paged.len() < whole["data"].as_array().map_or(0, Vec::len)
        );
        if !more {
            break;
        }
    }
    assert_eq!(Value::Array(paged), whole["data"]);
    assert_eq!(rows(&whole, &["key", "model"]).len(), ledger.len());

    // Bad parameters: 400, OpenAI-shaped, naming the parameter.
    for (q, param) in [
        ("group_by=user", "group_by"),
        ("from=someday", "from"),
        ("page_size=5000", "page_size"),
        ("kye=x", "kye"),
    ] {
        let (status, _, v) = usage_status(&gw, q, Some(TOKEN)).await;
        assert_eq!(
            (status, v["error"]["param"].as_str()),
            (400, Some(param)),
            "{q}: {v}"
        );
        assert_eq!(v["error"]["type"], "invalid_request_error");
    }

    // Rotation made rollups; the CLI agrees with the endpoint while the gateway runs.
    let made = sidecars(&audit);
    assert!(made.len() >= 2, "no rollups beside the segments: {made:?}");
    let by_key = usage(&gw, "group_by=key").await;
    let from_cli = cli(&audit, &["--group-by", "key"]);
    assert_eq!(from_cli["data"], by_key["data"]);
    assert_eq!(from_cli["sources"]["rebuilt"], 0, "{from_cli}");

    // A damaged rollup (a digit changed, still well-formed): the running gateway refuses it, answers the
    // same, and writes it again (the CLI then finds nothing to make).
    let damage = |p: &Path| {
        let mut text = std::fs::read_to_string(p).expect("read");
        let at = text.lines().next().map_or(0, str::len) + 1;
        let digit = text[at..]
            .find(|c: char| c.is_ascii_digit())
            .expect("a digit")
            + at;
        let d = text.as_bytes()[digit];
        text.replace_range(digit..=digit, if d == b'9' { "8" } else { "9" });
        std::fs::write(p, text).expect("write");
    };
    damage(&made[1]);
    let v = usage(&gw, "group_by=key").await;
    assert_eq!(v["data"], by_key["data"]);
    assert_eq!(
        cli(&audit, &[])["sources"]["rebuilt"],
        0,
        "the gateway did not write the rollup again"
    );

    // The gateway stopped (nothing else writes rollups now): deleted rollups are made again from the
    // segments by the CLI, a damaged one too; same totals every time.
    let mut gw = gw;
    gw.signal("TERM");
    assert_eq!(
        gw.wait_exit(Duration::from_secs(15)).await,
        Some(0),
        "{}",
        gw.stderr()
    );
    for p in &made {
        std::fs::remove_file(p).expect("rm");
    }
    let v = cli(&audit, &["--group-by", "key"]);
    assert_eq!(v["data"], by_key["data"]);
    assert_eq!(v["sources"]["rebuilt"].as_u64(), Some(made.len() as u64));
    assert_eq!(sidecars(&audit), made, "the rollups were not written again");
    damage(&made[0]);
    let v = cli(&audit, &["--group-by", "key"]);
    assert_eq!(v["data"], by_key["data"]);
    assert_eq!(v["sources"]["rebuilt"].as_u64(), Some(1));
    let v = cli(&audit, &["--group-by", "key"]);
    assert_eq!(
        (v["data"].clone(), v["sources"]["rebuilt"].as_u64()),
        (by_key["data"].clone(), Some(0))
    );
}

#[tokio::test]
async fn the_admin_token_guards_reload_usage_and_metrics() {
    let mock = MockUpstream::start().await;
    let keys = keys_file();
    let dir = tempfile::tempdir().expect("tempdir");
    let gw = start(&mock, &keys, &dir.path().join("audit")).await;
    let client = reqwest::Client::new();
    for (method, path) in [("POST", "/reload"), ("GET", "/usage"), ("GET", "/metrics")] {
        for token in [
            None,
            Some("wrong"),
            Some(""),
            Some(&TOKEN[..TOKEN.len() - 1]),
        ] {
            let mut req = client.request(method.parse().expect("method"), gw.admin_url(path));
            if let Some(t) = token {
                req = req.header("authorization", format!("Bearer {t}"));
            }
            let r = req.send().await.expect("send");
            assert_eq!(r.status(), 401, "{method} {path} with {token:?}");
            assert_eq!(
                crate::support::header(&r, "www-authenticate"),
                Some("Bearer")
            );
            let v: Value = r.json().await.expect("json");
            assert_eq!(v["error"]["code"], "invalid_admin_token");
        }
        let r = client
            .request(method.parse().expect("method"), gw.admin_url(path))
            .header("authorization", format!("bearer {TOKEN}"))
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 200, "{method} {path} with the token");
    }
    // Probes get a bare status; token holders the details.
    let open: Value = client
        .get(gw.admin_url("/healthz"))
        .send()
        .await
        .expect("healthz")
        .json()
        .await
        .expect("json");
    assert_eq!(open, json!({"status": "ok"}));
    let full: Value = client
        .get(gw.admin_url("/healthz"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("healthz")
        .json()
        .await
        .expect("json");
    assert!(
        full["rules"]["count"].as_u64().is_some_and(|n| n > 0),
        "{full}"
    );
}

#[tokio::test]
async fn an_admin_token_env_that_is_unset_or_empty_stops_the_gateway_with_exit_2() {
    for value in [None, Some(""), Some("  ")] {
        let cfg = tempfile::Builder::new()
            .suffix(".toml")
            .tempfile()
            .expect("config");
        std::fs::write(
            cfg.path(),
            "[admin]\ntoken_env = \"PG_TEST_ADMIN_TOKEN_UNSET\"\n[audit]\nenabled = false\n",
        )
        .expect("write");
        let mut cmd = Command::new(binary());
        cmd.args(["run", "--config"])
            .arg(cfg.path())
            .env_remove("PG_TEST_ADMIN_TOKEN_UNSET");
        if let Some(v) = value {
            cmd.env("PG_TEST_ADMIN_TOKEN_UNSET", v);
        }
        let out = cmd.output().expect("run");
        assert_eq!(out.status.code(), Some(2), "{value:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("admin.token_env"));
    }
}
