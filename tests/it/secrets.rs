//! The secret formats of the default pack through the real gateway: a request carrying one credential of each
//! family is refused with 409 naming its rule and nothing reaches the upstream; the redact-only families are
//! forwarded with the value replaced; an answer carrying one is withheld (block) or rewritten (redact).
//!
//! The checksummed tokens were minted outside this code base (Python's `binascii.crc32` and a base62 encoder),
//! so the validator is checked against an independent implementation, not against itself.

use serde_json::{json, Value};

use crate::support::{post, Gateway, MockUpstream};

/// One credential of each blocked family, in the kind of text it arrives in, and the rule that must name it.
const BLOCKED: &[(&str, &str)] = &[
    ("secret.github_token", "token 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 ok"),
    ("secret.npm_token", "//registry.npmjs.org/:_authToken=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"),
    ("secret.google_api_key", "maps key AIza1VOqg6YYZYn9ZhyiA4uoRgnatmUdjAWtGSU please"),
    (
        "secret.gcp_service_account_key_id",
        r#"my key file: {"type": "service_account", "private_key_id": "7f505aef9ebdd25b001a3ff416d4a3baf69dad81"}"#,
    ),
    (
        "secret.private_key",
        r#"{"private_key": "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----\n"}"#,
    ),
    (
        "secret.azure_storage_account_key",
        "DefaultEndpointsProtocol=https;AccountName=acme;AccountKey=W7sH/QfKR3hCMbGa9Fhyzu+5/Fn0+V0UOBo6eDJWNHuf/Oac1wB66KdYzKQV1ake6GPItsAzeuMtb8qiVRbN8g==;EndpointSuffix=core.windows.net",
    ),
    (
        "secret.azure_sas_token",
        "https://acme.blob.core.windows.net/c/f?sv=2022-11-02&ss=b&srt=co&sp=rl&se=2026-12-31T00:00:00Z&spr=https&sig=%2BLhldma%2B8hW5KCv%2BIAcml%2Bd3zqclnNOY%2Bnmo71knjIw%3D",
    ),
    ("secret.stripe_live_key", "STRIPE_KEY=sk_live_ibaZUPgHV7iB3m03nbqnsGpW"),
    ("secret.gitlab_token", "use glpat-ZR1zTOlUcR64cXQLioDn for the API"),
    (
        "secret.pypi_token",
        "twine upload -p pypi-AgEIcHlwaS5vcmcDxp63OHm1FZuG296c0xPbX_neGBuzSm6A8cVR06AxYpThGJWZhbj11THnCMZCY7Bvqiy8CsT07Lq8",
    ),
    ("secret.huggingface_token", "HF token 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 here"),
    ("secret.twilio_api_key", "sid SKe58b081006f7e3dfc967a64cb14028d5"),
    ("secret.twilio_auth_token", "TWILIO_AUTH_TOKEN=2824c1c099724caf4941d4072014b3ce"),
    (
        "secret.sendgrid_api_key",
        "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",
    ),
    ("secret.mailgun_api_key", "api:key-3b7ffc050fec94dbca3a0aac36098b2c"),
    ("secret.shopify_token", "X-Shopify-Access-Token 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"),
    ("secret.datadog_api_key", "DD_API_KEY=8a7f770d9106fd287db7f1adbc60926f"),
    (
        "secret.digitalocean_token",
        "dop_v1_e530282bd36cb9d21f6be6abf0d7c1c1e21862ab8a18a8902073fec8df4f5094",
    ),
    ("secret.heroku_api_key", "HEROKU_API_KEY=32cbe540-14c2-b54b-9552-3cf6941fa1c2"),
    (
        "secret.atlassian_api_token",
        "ATATT3rdioyq_KvCiSGuPJ6sG9AHEOVezxZuJPWvHogU5nGYVHWVsUQk4DwgLGNOaeCtL31Ugq_DfcgaTMnTC0MrAU8urbFt5misIZHbhS4-FvafhdZxEuhnbzs0z1wNiMg9aW37k5wCnHDepQHgI3HLBkbvHEzuPyXQEW88ad3DNBYjvsedonu=B4001412",
    ),
    (
        "secret.discord_bot_token",
        "Authorization: Bot OTYxMjYxMzcyNjAwNDgxMTc3.iUziXn.FAAoeelK9mqmALOR2HcSGKgVP8Kd0d3mS8gBlK",
    ),
    (
        "secret.discord_webhook",
        "https://discord.com/api/webhooks/8143840891298607972/azKgaS_m_x-SHuKBD-vok_nPTmZYl2dVAMH2vWD6qeSPt5Pv74GDqQ7EyIMttFPSuEPy",
    ),
    ("secret.telegram_bot_token", "bot 4373171779:AAvnzXtsMM3JznnJAX7ebZ3CL7csGZaF31D"),
    ("secret.database_url", "DATABASE_URL=postgres://app:Xk29fLq0pZ@db.internal:5432/app"),
];

/// Redact-only families: (rule, text, the text as the upstream or the client must see it).
const REDACTED: &[(&str, &str, &str)] = &[
    (
        "secret.generic_assignment",
        "config: password=Xk29fLq0pZ!m then",
        "config: [CREDENTIAL] then",
    ),
    (
        "secret.stripe_test_key",
        "try sk_test_TPQxjq4i9DoV8gz4FkQ1okTB now",
        "try [STRIPE_TEST_KEY] now",
    ),
];

fn chat(text: &str) -> Vec<u8> {
    json!({"model": "m", "messages": [{"role": "user", "content": text}]})
        .to_string()
        .into_bytes()
}

/// The distinctive middle of a credential in `text` (never the context words around it), to assert absence.
fn value_part(text: &str) -> &str {
    text.split([' ', '=', '"', '?', '/'])
        .max_by_key(|w| w.len())
        .unwrap_or(text)
}

#[tokio::test]
async fn a_request_with_a_credential_of_each_family_is_refused_before_the_upstream() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock.url()).await;
    for (rule, text) in BLOCKED {
        let resp = post(&gw, "/v1/chat/completions", chat(text), &[]).await;
        assert_eq!(resp.status(), 409, "{rule}: {text}");
        assert_eq!(resp.headers()["x-promptgate-decision"], "block", "{rule}");
        let v: Value = resp.json().await.expect("json");
        assert_eq!(v["error"]["code"], "policy_blocked", "{rule}");
        assert_eq!(v["error"]["policy"], *rule, "{text}");
        let msg = v["error"]["message"].as_str().expect("message");
        assert!(!msg.contains(value_part(text)), "{rule}: {msg}");
    }
    assert!(
        mock.received().await.is_empty(),
        "no blocked request reached the upstream"
    );
}

#[tokio::test]
async fn near_misses_of_the_checksummed_and_placeholder_forms_pass_untouched() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock.url()).await;
    // One character changed (the checksum no longer agrees), docs stand-ins, and names without a password.
    let texts = [
        "token ghp_Ky9Pf34qY6Nb3wWD25RQ4F5ZR3qa7y3gm1IM ok",
        "npm_ugM1yTMAd7V3DnI8lFPPwtV5ASPZHu0FecsY",
        "STRIPE_KEY=sk_live_xxxxxxxxxxxxxxxxxxxxxxxx",
        "password=changeme and token=null and api_key=<your key here>",
        "DATABASE_URL=postgres://app@db:5432/app",
        "postgres://user:${DB_PASSWORD}@db/app",
    ];
    for text in texts {
        let resp = post(&gw, "/v1/chat/completions", chat(text), &[]).await;
        assert_eq!(resp.status(), 200, "{text}");
        assert_eq!(resp.headers()["x-promptgate-decision"], "allow", "{text}");
    }
    let got = mock.received().await;
    assert_eq!(got.len(), texts.len());
    for (rec, text) in got.iter().zip(texts) {
        let sent: Value = serde_json::from_str(rec["body"].as_str().expect("body")).expect("json");
        assert_eq!(sent["messages"][0]["content"], text, "forwarded as it was");
    }
}

#[tokio::test]
async fn redact_only_families_reach_the_upstream_with_the_value_replaced() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock.url()).await;
    for (rule, text, want) in REDACTED {
        let resp = post(&gw, "/v1/chat/completions", chat(text), &[]).await;
        assert_eq!(resp.status(), 200, "{rule}");
        assert_eq!(resp.headers()["x-promptgate-decision"], "redact", "{rule}");
        assert_eq!(resp.headers()["x-promptgate-rules"], *rule);
        let got = mock.received().await;
        let sent: Value = serde_json::from_str(
            got.last().expect("received")["body"]
                .as_str()
                .expect("body"),
        )
        .expect("json");
        assert_eq!(sent["messages"][0]["content"], *want, "{rule}");
    }
}

async fn answer(gw: &Gateway, content: &str) -> reqwest::Response {
    post(
        gw,
        "/v1/chat/completions",
        chat("hi"),
        &[("x-mock-content", content)],
    )
    .await
}

#[tokio::test]
async fn an_answer_carrying_a_credential_is_withheld_or_rewritten() {
    let mock = MockUpstream::start().await;
    let gw = Gateway::start(&mock.url()).await;
    for (rule, text) in BLOCKED {
        let resp = answer(&gw, text).await;
        assert_eq!(resp.status(), 409, "{rule}: {text}");
        let body = resp.text().await.expect("text");
        assert!(!body.contains(value_part(text)), "{rule}: withheld");
        let v: Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["error"]["policy"], *rule, "{text}");
    }
    for (rule, text, want) in REDACTED {
        let resp = answer(&gw, text).await;
        assert_eq!(resp.status(), 200, "{rule}");
        assert_eq!(resp.headers()["x-promptgate-decision"], "redact", "{rule}");
        let v: Value = resp.json().await.expect("json");
        assert_eq!(v["choices"][0]["message"]["content"], *want, "{rule}");
    }
}
