//! The official `openai` Python package pointed at the gateway (installed by the README's test command).

use std::process::Command;

use serde_json::Value;

use crate::support::{repo_root, Gateway, MockUpstream};

/// Runs a script from `tests/python` against the gateway and returns its JSON output.
pub async fn run_sdk_script(script: &str, gw: &Gateway, env: &[(&str, &str)]) -> Value {
    run_client(
        "python3",
        &format!("python/{script}"),
        "is the openai package installed? the README's test command installs it",
        gw,
        env,
    )
    .await
}

/// Runs `tests/<script>` with `program` (an SDK's interpreter), `PROMPTGATE_BASE_URL` pointing at the
/// gateway, and returns the one JSON value it prints. A failing script fails the test with its stderr and
/// `hint`.
pub async fn run_client(
    program: &str,
    script: &str,
    hint: &str,
    gw: &Gateway,
    env: &[(&str, &str)],
) -> Value {
    let path = repo_root().join("tests").join(script);
    let mut cmd = Command::new(program);
    cmd.arg(&path).env("PROMPTGATE_BASE_URL", gw.url("/v1"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join")
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{script} failed ({hint}):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{script} prints JSON ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

#[tokio::test]
async fn openai_sdk_plain_and_streamed_chat_through_the_gateway() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock.url()).await;
    let content = "Pingora says hello through promptgate, streamed in pieces.";
    let out = run_sdk_script("sdk_chat.py", &gw, &[("MOCK_CONTENT", content)]).await;
    assert_eq!(out["plain"], content);
    assert_eq!(out["stream"], content);
    assert!(
        out["stream_events"].as_u64().is_some_and(|n| n >= 2),
        "{out}"
    );
    assert!(
        out["plain_request_id"]
            .as_str()
            .is_some_and(|id| id.len() == 32),
        "{out}"
    );

    let got = mock.received().await;
    assert_eq!(got.len(), 2, "one request each, no retries");
    let second: Value = serde_json::from_str(got[1]["body"].as_str().expect("body")).expect("json");
    assert_eq!(second["stream"], true);
}
