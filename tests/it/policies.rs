//! Policies seen from outside: the same request under the policies of different keys and tenants (redacted,
//! passed and logged, blocked), precedence (key > tenant > route/model selector > default), passthrough
//! selection by model and route, a policy the rules lack (refused), hot edits of a policy file (the last good
//! set kept on a bad one), streamed answers under a policy, and `promptgate check` running policy examples.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::keys_limits::keys_gateway;
use crate::support::{
    binary, chat_body, copy_rules, header, key_entry, post, wait_file_events, Gateway, GatewayOpts,
    KeysFile, MockUpstream,
};

/// A card number (Luhn-valid), an email and a code name, in one prompt.
const TEXT: &str = "card 4111 1111 1111 1111, mail jane.doe@example.com, re Project Bluebird";

/// Policies for the tests: `redactor` redacts everything it matches, `watcher` only logs, `blocker` blocks
/// personal data too; `quiet` selects nothing the tests send.
const POLICIES: &str = r#"
[[policy]]
name = "redactor"
description = "Everything matched is redacted"
[[policy.override]]
tags = ["pii", "confidential", "secret"]
action = "redact"

[[policy]]
name = "watcher"
description = "Everything matched is only logged"
[[policy.override]]
tags = ["pii", "confidential", "secret"]
action = "log"

[[policy]]
name = "blocker"
description = "Personal data blocks too"
[[policy.override]]
tags = ["pii"]
action = "block"
"#;

/// A rules directory: the shipped rules and `policies` in `team.toml`.
fn rules_with(policies: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_rules(dir.path());
    std::fs::write(dir.path().join("team.toml"), policies).expect("write");
    dir
}

/// Keys of three tenants whose policies are `redactor`, `watcher` and `blocker`; `own` has a policy of its
/// own in the `redactor` tenant; `plain` is in a tenant without one; `lost` names a policy nobody has.
fn keys() -> KeysFile {
    let mut text = String::from(
        "[[tenant]]\nid = \"support\"\npolicy = \"redactor\"\n\n\
         [[tenant]]\nid = \"fraud\"\npolicy = \"watcher\"\n\n\
         [[tenant]]\nid = \"legal\"\npolicy = \"blocker\"\n\n\
         [[tenant]]\nid = \"other\"\n\n",
    );
    for (id, tenant, extra) in [
        ("s", "support", ""),
        ("f", "fraud", ""),
        ("l", "legal", ""),
        ("own", "support", "policy = \"watcher\""),
        ("plain", "other", ""),
        ("lost", "other", "policy = \"gone\""),
    ] {
        text.push_str(
            &key_entry(id, &format!("pgk_{id}_secret"), extra)
                .replace("tenant = \"team-a\"", &format!("tenant = \"{tenant}\"")),
        );
    }
    KeysFile::new(&text)
}

async fn chat(gw: &Gateway, key: &str, text: &str) -> reqwest::Response {
    let auth = format!("Bearer pgk_{key}_secret");
    post(
        gw,
        "/v1/chat/completions",
        chat_body(text).into_bytes(),
        &[("authorization", auth.as_str())],
    )
    .await
}

/// The gateway with the test keys, the rules of `dir`, its audit in `audit` and `extra` config.
async fn gateway(
    mock: &MockUpstream,
    keys: &KeysFile,
    dir: &Path,
    audit: &Path,
    extra: &str,
) -> Gateway {
    keys_gateway(
        mock,
        keys,
        &format!(
            "[rules]\ndir = {:?}\nwatch = false\n[audit]\ndir = {:?}\n{extra}",
            dir.display().to_string(),
            audit.display().to_string()
        ),
    )
    .await
}

fn sent_content(rec: &Value) -> String {
    let body: Value = serde_json::from_str(rec["body"].as_str().expect("body")).expect("json");
    body["messages"][0]["content"]
        .as_str()
        .expect("content")
        .to_string()
}

#[tokio::test]
async fn one_request_three_tenants_three_outcomes() {
    let mock = MockUpstream::start().await;
    let keys = keys();
    let dir = rules_with(POLICIES);
    let audit = tempfile::tempdir().expect("tempdir");
    let gw = gateway(&mock, &keys, dir.path(), audit.path(), "").await;

    let r = chat(&gw, "s", TEXT).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-promptgate-policy"), Some("redactor"));
    assert_eq!(header(&r, "x-promptgate-decision"), Some("redact"));
    let r = chat(&gw, "f", TEXT).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-promptgate-policy"), Some("watcher"));
    assert_eq!(header(&r, "x-promptgate-decision"), Some("allow"));
    let r = chat(&gw, "l", TEXT).await;
    assert_eq!(r.status(), 409);
    assert_eq!(header(&r, "x-promptgate-policy"), Some("blocker"));

    let got = mock.received().await;
    assert_eq!(got.len(), 2, "the blocked request never went upstream");
    assert_eq!(
        sent_content(&got[0]),
        "card [CARD], mail [EMAIL], re [CONFIDENTIAL]"
    );
    assert_eq!(sent_content(&got[1]), TEXT, "log only: forwarded unchanged");

    let events = wait_file_events(audit.path(), 3).await;
    assert_eq!(events.len(), 3, "{events:?}");
    let want_rules = ["confidential.codename", "pii.email", "pii.payment_card"];
    for (policy, action) in [("redactor", "redact"), ("watcher", "log"), ("blocker", "")] {
        // Each event found by what it is, not its place: events of sequential requests may be written in
        // either order.
        let e = events
            .iter()
            .find(|e| e["policy"] == policy)
            .unwrap_or_else(|| panic!("no event of {policy}: {events:?}"));
        let mut ids: Vec<&str> = e["rules"]
            .as_array()
            .expect("rules")
            .iter()
            .map(|r| r["id"].as_str().expect("id"))
            .collect();
        ids.sort_unstable();
        if action.is_empty() {
            // A block stops at the first blocking rule: the event names it.
            assert!(!ids.is_empty(), "{e}");
            continue;
        }
        assert_eq!(ids, want_rules, "{e}");
        for r in e["rules"].as_array().expect("rules") {
            assert_eq!(r["action"], action, "{e}");
        }
    }
}

#[tokio::test]
async fn a_keys_policy_beats_its_tenants_which_beats_the_default() {
    let mock = MockUpstream::start().await;
    let keys = keys();
    let dir = rules_with(POLICIES);
    let audit = tempfile::tempdir().expect("tempdir");
    let gw = gateway(
        &mock,
        &keys,
        dir.path(),
        audit.path(),
        "[inspect]\npolicy = \"blocker\"",
    )
    .await;
    // (key, policy answered)
    for (key, want) in [("own", "watcher"), ("s", "redactor"), ("plain", "blocker")] {
        let r = chat(&gw, key, "hello").await;
        assert_eq!(r.status(), 200, "{key}");
        assert_eq!(header(&r, "x-promptgate-policy"), Some(want), "{key}");
    }
    // The policies differ in what they do, not only in their names: the key's own one lets the email pass.
    assert_eq!(
        chat(&gw, "own", "mail jane.doe@example.com").await.status(),
        200
    );
    assert_eq!(
        chat(&gw, "plain", "mail jane.doe@example.com")
            .await
            .status(),
        409
    );

    // A policy the rules do not have: refused, fail closed, never forwarded.
    let before = mock.received().await.len();
    let r = chat(&gw, "lost", "hello").await;
    assert_eq!(r.status(), 503);
    assert_eq!(header(&r, "x-should-retry"), Some("false"));
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["error"]["code"], "policy_unavailable", "{v}");
    assert_eq!(mock.received().await.len(), before);
    assert_eq!(chat(&gw, "lost", "hello").await.status(), 503);
    let line = "names a policy the live rules do not have";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !gw.stderr().contains(line) && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        gw.stderr().matches(line).count(),
        1,
        "logged once per version of the rules: {}",
        gw.stderr()
    );
}

#[tokio::test]
async fn passthrough_requests_get_their_policy_by_model_and_route() {
    let mock = MockUpstream::start().await;
    let dir = rules_with(&format!(
        "{POLICIES}
[[assign]]
policy = \"watcher\"
routes = [\"/v1/embeddings\"]

[[assign]]
policy = \"redactor\"
models = [\"gpt-4o*\"]

[[assign]]
policy = \"blocker\"
models = [\"gpt-4o-mini\"]
routes = [\"/v1/chat/completions\"]
"
    ));
    let gw = Gateway::start_with(GatewayOpts::new(mock.url()).rules(dir.path())).await;
    let send = |path: &'static str, model: &'static str| {
        let body = serde_json::json!({
            "model": model,
            "messages": [{"role": "user", "content": "mail jane.doe@example.com"}],
            "input": "mail jane.doe@example.com",
        });
        let gw = &gw;
        async move { post(gw, path, body.to_string().into_bytes(), &[]).await }
    };
    // (route, model, policy, status)
    let cases = [
        ("/v1/chat/completions", "gpt-4o-mini", "blocker", 409),
        ("/v1/chat/completions", "gpt-4o", "redactor", 200),
        ("/v1/embeddings", "gpt-4o", "redactor", 200),
        ("/v1/embeddings", "text-embedding-3-small", "watcher", 200),
        ("/v1/chat/completions", "o1", "default", 200),
    ];
    for (path, model, policy, status) in cases {
        let r = send(path, model).await;
        assert_eq!(r.status(), status, "{path} {model}");
        assert_eq!(
            header(&r, "x-promptgate-policy"),
            Some(policy),
            "{path} {model}"
        );
    }
    // A client header cannot choose: there is none to send.
    let got = mock.received().await;
    let last = got.last().expect("received");
    assert!(
        last["body"].as_str().expect("body").contains("[EMAIL]"),
        "the default redacts the email: {last}"
    );
}

#[tokio::test]
async fn a_policy_edit_applies_without_restart_and_a_bad_one_is_refused() {
    let mock = MockUpstream::start().await;
    let keys = keys();
    let dir = rules_with(POLICIES);
    let audit = tempfile::tempdir().expect("tempdir");
    let gw = gateway(&mock, &keys, dir.path(), audit.path(), "").await;
    let card = "card 4111 1111 1111 1111";
    assert_eq!(chat(&gw, "f", card).await.status(), 200);
    let v1 = header(&chat(&gw, "f", "hi").await, "x-promptgate-rules-version")
        .expect("version")
        .to_string();

    // The fraud team's policy now blocks cards.
    std::fs::write(
        dir.path().join("team.toml"),
        POLICIES.replacen("action = \"log\"", "action = \"block\"", 1),
    )
    .expect("write");
    let r = gw.reload().await;
    assert_eq!(r.status(), 200);
    let r = chat(&gw, "f", card).await;
    assert_eq!(r.status(), 409);
    let v2 = header(&r, "x-promptgate-rules-version")
        .expect("version")
        .to_string();
    assert_ne!(v1, v2);

    // An override naming a tag no rule has: refused, the last good set keeps serving.
    std::fs::write(
        dir.path().join("team.toml"),
        POLICIES.replacen("tags = [\"pii\"]", "tags = [\"pii\", \"nosuch\"]", 1),
    )
    .expect("write");
    let r = gw.reload().await;
    assert_eq!(r.status(), 422);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["version"], v2.as_str());
    assert!(
        v["errors"][0]
            .as_str()
            .expect("error")
            .contains("team.toml:19: policy 'blocker': override: unknown tag 'nosuch'"),
        "{v}"
    );
    let r = chat(&gw, "f", card).await;
    assert_eq!(r.status(), 409, "the edited policy still applies");
    assert_eq!(header(&r, "x-promptgate-rules-version"), Some(v2.as_str()));
    assert_eq!(
        gw.metric(r#"promptgate_rules_reload_total{result="error"}"#)
            .await,
        Some(1.0)
    );
}

/// Streams `answer` back to `key` and returns the text the client read.
async fn streamed(gw: &Gateway, key: &str, answer: &str) -> String {
    let resp = reqwest::Client::new()
        .post(gw.url("/v1/chat/completions"))
        .header("authorization", format!("Bearer pgk_{key}_secret"))
        .header("content-type", "application/json")
        .header("x-mock-content", answer)
        .header("x-mock-chunks", "7")
        .body(r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"go"}]}"#)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    let raw = resp.text().await.expect("text");
    let mut text = String::new();
    for data in raw.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if let Ok(v) = serde_json::from_str::<Value>(data) {
            if let Some(t) = v["choices"][0]["delta"]["content"].as_str() {
                text.push_str(t);
            }
        }
    }
    text
}

#[tokio::test]
async fn a_streamed_answer_follows_the_requests_policy() {
    let mock = MockUpstream::start().await;
    let keys = keys();
    let dir = rules_with(POLICIES);
    let audit = tempfile::tempdir().expect("tempdir");
    let gw = gateway(&mock, &keys, dir.path(), audit.path(), "").await;
    let answer = "your card 4111 1111 1111 1111 is on file";
    assert_eq!(streamed(&gw, "f", answer).await, answer, "log only");
    assert_eq!(
        streamed(&gw, "s", answer).await,
        "your card [CARD] is on file",
        "redacted"
    );
}

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

#[test]
fn check_warns_of_a_policy_selecting_nothing_and_runs_policy_examples() {
    let dir = rules_with(
        "[[policy]]\nname = \"empty\"\ndescription = \"d\"\nselect = { ids = [\"pii.email\"] }\nexclude = { tags = [\"pii\"] }\n\n\
         [[policy]]\nname = \"cards\"\ndescription = \"d\"\nselect = { ids = [\"pii.payment_card\"] }\n\
         [[policy.example]]\ntext = \"4111 1111 1111 1111\"\noutcome = \"redact\"\nredacted = \"[CARD]\"\n",
    );
    let (code, out) = check(dir.path());
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("warning: ") && out.contains("team.toml:1: policy 'empty' selects no rule"),
        "{out}"
    );

    let path = dir.path().join("team.toml");
    let text = std::fs::read_to_string(&path).expect("read");
    std::fs::write(
        &path,
        text.replace("outcome = \"redact\"", "outcome = \"pass\""),
    )
    .expect("write");
    let (code, out) = check(dir.path());
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("team.toml:11: policy 'cards': example \"4111 1111 1111 1111\": expected pass, got redact"),
        "{out}"
    );

    // With the keys file: a key or tenant naming a policy the rules lack is a warning.
    let keys = keys();
    let team = rules_with(POLICIES);
    let out = Command::new(binary())
        .arg("check")
        .arg(team.path())
        .arg("--keys")
        .arg(&keys.path)
        .output()
        .expect("check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("key \"lost\" names policy 'gone'"),
        "{stdout}"
    );
}
