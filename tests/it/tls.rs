//! The client edge over TLS and HTTP/2: `[[server.tls]]` listeners with certificates made here by a test CA
//! (rcgen), HTTP/2 or HTTP/1.1 by ALPN, prior-knowledge h2c only when `server.h2c` is on, every feature the
//! same over HTTP/2 (inspection, blocks, redaction, stream filtering), and certificates replaced under a
//! running gateway: new handshakes see the new one, open connections carry on, a broken replacement is refused.

use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::tls::TlsInfo;
use reqwest::Version;
use serde_json::Value;

use crate::sdk::run_sdk_script;
use crate::streams::split_values_never_leak;
use crate::support::{chat_body, free_port, Gateway, GatewayOpts, MockUpstream};

const AWS: &str = "AKIAIOSFODNN7EXAMPLE";

/// A certificate authority of the test.
struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("self-signed");
        Self { cert, key }
    }

    fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A server certificate for `127.0.0.1` and `gw.test`, signed by this CA.
    fn leaf(&self, cn: &str, serial: u64) -> Leaf {
        let mut params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "gw.test".to_string()])
                .expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.serial_number = Some(rcgen::SerialNumber::from(serial));
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("signed");
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }
}

struct Leaf {
    cert: String,
    key: String,
    der: Vec<u8>,
}

/// A gateway with one TLS listener.
struct TlsGateway {
    gw: Gateway,
    port: u16,
    cert_file: PathBuf,
    key_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl TlsGateway {
    async fn start(upstream: &str, leaf: &Leaf, server_toml: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert_file, key_file) = (dir.path().join("gw.crt"), dir.path().join("gw.key"));
        std::fs::write(&cert_file, &leaf.cert).expect("write cert");
        std::fs::write(&key_file, &leaf.key).expect("write key");
        let port = free_port();
        let toml = format!(
            "[server]\ngrace_period_seconds = 10\n{server_toml}\n[[server.tls]]\nlisten = \"127.0.0.1:{port}\"\ncert_file = {:?}\nkey_file = {:?}\n",
            cert_file.display().to_string(),
            key_file.display().to_string()
        );
        let gw = Gateway::start_with(GatewayOpts::new(upstream).toml(&toml)).await;
        // The TLS listener is bound with the plaintext one; wait for it all the same.
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Self {
            gw,
            port,
            cert_file,
            key_file,
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }

    /// Replaces the certificate and key the way a deploy does: each written whole, then moved into place.
    fn replace(&self, cert: &str, key: &str) {
        for (path, text) in [(&self.key_file, key), (&self.cert_file, cert)] {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, text).expect("write");
            std::fs::rename(&tmp, path).expect("rename");
        }
    }
}

/// A client that trusts only `ca` (no system roots) and reports the certificate it was shown.
fn client(ca: &str, alpn: Alpn) -> reqwest::Client {
    let b = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).expect("ca"))
        .tls_info(true);
    match alpn {
        Alpn::Both => b,
        Alpn::Http11Only => b.http1_only(),
    }
    .build()
    .expect("client")
}

#[derive(Clone, Copy)]
enum Alpn {
    /// h2 and http/1.1 offered (reqwest's default).
    Both,
    /// Only http/1.1 offered.
    Http11Only,
}

async fn chat(client: &reqwest::Client, url: &str, text: &str) -> reqwest::Response {
    client
        .post(url)
        .header("content-type", "application/json")
        .body(chat_body(text))
        .send()
        .await
        .expect("send")
}

/// The DER of the certificate the server presented on the response's connection.
fn peer_cert(resp: &reqwest::Response) -> Vec<u8> {
    resp.extensions()
        .get::<TlsInfo>()
        .and_then(|i| i.peer_certificate())
        .expect("tls info")
        .to_vec()
}

#[tokio::test]
async fn tls_listener_forwards_redacts_and_blocks_over_h2_and_h1_by_alpn() {
    let mock = MockUpstream::start().await;
    let ca = Ca::new("test CA");
    let leaf = ca.leaf("gw-1", 1);
    let gw = TlsGateway::start(&mock.url(), &leaf, "").await;
    let url = gw.url("/v1/chat/completions");
    for (alpn, version, label) in [
        (Alpn::Both, Version::HTTP_2, "h2"),
        (Alpn::Http11Only, Version::HTTP_11, "h1"),
    ] {
        let c = client(&ca.pem(), alpn);
        let ok = chat(&c, &url, "Say hello").await;
        assert_eq!(ok.status(), 200, "{label}");
        assert_eq!(ok.version(), version, "{label}");
        assert_eq!(peer_cert(&ok), leaf.der, "{label}");
        let _ = ok.bytes().await;

        let redacted = chat(&c, &url, "Email jane.doe@example.com about the launch").await;
        assert_eq!(redacted.status(), 200, "{label}");
        let _ = redacted.bytes().await;

        let blocked = chat(&c, &url, &format!("my key is {AWS}")).await;
        assert_eq!(blocked.status(), 409, "{label}");
        assert_eq!(blocked.version(), version, "{label}");
        assert_eq!(blocked.headers()["x-promptgate-decision"], "block");
        let v: Value = blocked.json().await.expect("the 409 body is JSON");
        assert_eq!(v["error"]["code"], "policy_blocked", "{label}");
        assert_eq!(v["error"]["policy"], "secret.aws_access_key_id", "{label}");
    }
    // Per protocol: the plain and the redacted requests reached the upstream, the blocked one did not.
    let got = mock.received().await;
    assert_eq!(got.len(), 4, "{got:?}");
    for rec in got.iter().skip(1).step_by(2) {
        let body = rec["body"].as_str().expect("body");
        assert!(body.contains("Email [EMAIL] about the launch"), "{body}");
    }
    assert!(got
        .iter()
        .all(|r| !r["body"].as_str().unwrap_or("").contains(AWS)));
    for (label, n) in [("h2", 3.0), ("h1", 3.0)] {
        let sample = format!("promptgate_requests_by_protocol_total{{protocol=\"{label}\"}}");
        assert_eq!(
            gw.gw.metric_eventually(&sample, n).await,
            Some(n),
            "{label}"
        );
    }
}

#[tokio::test]
async fn h2_streams_are_filtered_exactly_like_h1_ones() {
    let mock = MockUpstream::start().await;
    let ca = Ca::new("test CA");
    let gw = TlsGateway::start(&mock.url(), &ca.leaf("gw-1", 1), "").await;
    let c = client(&ca.pem(), Alpn::Both);
    let url = gw.url("/v1/chat/completions");
    let probe = chat(&c, &url, "hello").await;
    assert_eq!(probe.version(), Version::HTTP_2);
    split_values_never_leak(&c, &url).await;
}

/// HTTP/2 frames a body without `Content-Length` or `Transfer-Encoding`: a request streamed that way was
/// taken for one with no body (refused 400 on chat completions; on a route whose body is read only when
/// present it would have gone upstream unread).
#[tokio::test]
async fn an_h2_body_without_content_length_is_inspected_not_passed() {
    let mock = MockUpstream::start().await;
    let ca = Ca::new("test CA");
    let gw = TlsGateway::start(&mock.url(), &ca.leaf("gw-1", 1), "").await;
    let c = client(&ca.pem(), Alpn::Both);
    let send = |text: String| {
        let body = chat_body(&text).into_bytes();
        // Two chunks from a stream: the client cannot announce a length.
        let (a, b) = body.split_at(body.len() / 2);
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> = vec![Ok(a.to_vec()), Ok(b.to_vec())];
        c.post(gw.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                chunks,
            )))
            .send()
    };
    let blocked = send(format!("my key is {AWS}")).await.expect("send");
    assert_eq!(blocked.version(), Version::HTTP_2);
    assert_eq!(blocked.status(), 409);
    let ok = send("Email jane.doe@example.com about the launch".into())
        .await
        .expect("send");
    assert_eq!(ok.status(), 200);
    let got = mock.received().await;
    assert_eq!(got.len(), 1, "only the allowed request went upstream");
    let body = got[0]["body"].as_str().expect("body");
    assert!(
        body.contains("[EMAIL]") && !body.contains("jane.doe"),
        "{body}"
    );
}

#[tokio::test]
async fn h2c_prior_knowledge_is_served_only_when_enabled() {
    let mock = MockUpstream::start().await;
    let prior = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("client");

    let on = Gateway::start_with(
        GatewayOpts::new(mock.url()).toml("[server]\ngrace_period_seconds = 10\nh2c = true"),
    )
    .await;
    let url = on.url("/v1/chat/completions");
    let r = chat(&prior, &url, "Say hello").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), Version::HTTP_2);
    let _ = r.bytes().await;
    let blocked = chat(&prior, &url, &format!("my key is {AWS}")).await;
    assert_eq!(blocked.status(), 409);
    // HTTP/1.1 clients are still served on the same port.
    let h1 = chat(&reqwest::Client::new(), &url, "Say hello").await;
    assert_eq!(h1.status(), 200);
    assert_eq!(h1.version(), Version::HTTP_11);

    let off = Gateway::start(&mock.url()).await;
    let refused = prior
        .post(off.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(chat_body("Say hello"))
        .send()
        .await;
    assert!(
        refused.is_err(),
        "without server.h2c the preface is not HTTP/2: {refused:?}"
    );
    assert_eq!(mock.received().await.len(), 2, "nothing more went upstream");
}

#[tokio::test]
async fn a_replaced_certificate_serves_new_connections_while_open_ones_carry_on() {
    let mock = MockUpstream::start().await;
    let (ca1, ca2) = (Ca::new("CA one"), Ca::new("CA two"));
    let first = ca1.leaf("gw-1", 1);
    let gw = TlsGateway::start(&mock.url(), &first, "").await;
    let url = gw.url("/v1/chat/completions");
    let reloads = |result: &str| format!("promptgate_tls_reload_total{{result=\"{result}\"}}");

    // A connection opened before the swap (HTTP/2: every request of this client goes on it).
    let open = client(&ca1.pem(), Alpn::Both);
    let r = chat(&open, &url, "before").await;
    assert_eq!(peer_cert(&r), first.der);
    let _ = r.bytes().await;

    // Same CA, another serial and name: picked up from the file change alone.
    let second = ca1.leaf("gw-2", 2);
    gw.replace(&second.cert, &second.key);
    assert_eq!(
        gw.gw.metric_eventually(&reloads("ok"), 1.0).await,
        Some(1.0)
    );
    let fresh = chat(&client(&ca1.pem(), Alpn::Both), &url, "after").await;
    assert_eq!(fresh.status(), 200);
    assert_eq!(
        peer_cert(&fresh),
        second.der,
        "a new connection sees the new certificate"
    );
    let r = chat(&open, &url, "still open").await;
    assert_eq!(
        r.status(),
        200,
        "the connection opened before the swap carries on"
    );
    assert_eq!(peer_cert(&r), first.der, "on the session it negotiated");
    let _ = r.bytes().await;

    // Another CA, picked up on SIGHUP: a client trusting only the first CA now fails, one trusting the second
    // works.
    let third = ca2.leaf("gw-3", 3);
    std::fs::write(&gw.key_file, &third.key).expect("write");
    std::fs::write(&gw.cert_file, &third.cert).expect("write");
    gw.gw.signal("HUP");
    let mut seen = None;
    for _ in 0..200 {
        if let Ok(r) = client(&ca2.pem(), Alpn::Both)
            .get(gw.url("/v1/models"))
            .send()
            .await
        {
            seen = Some(peer_cert(&r));
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        seen,
        Some(third.der.clone()),
        "the second CA's certificate is served"
    );
    let old_ca = client(&ca1.pem(), Alpn::Both)
        .get(gw.url("/v1/models"))
        .send()
        .await;
    assert!(
        old_ca.is_err(),
        "a client trusting only the first CA is refused"
    );

    // A broken replacement (a key of another certificate, then a truncated certificate) is refused: the last
    // good certificate is still served, and the refusals are counted.
    let errors_before = gw.gw.metric(&reloads("error")).await.unwrap_or(0.0);
    let stranger = ca1.leaf("stranger", 4);
    gw.replace(&third.cert, &stranger.key);
    let refused = gw
        .gw
        .metric_eventually(&reloads("error"), errors_before + 1.0)
        .await;
    assert!(refused.is_some_and(|n| n > errors_before), "{refused:?}");
    gw.replace(&third.cert[..third.cert.len() / 2], &third.key);
    gw.gw.signal("HUP");
    let refused_again = refused.unwrap_or(0.0) + 1.0;
    let n = gw
        .gw
        .metric_eventually(&reloads("error"), refused_again)
        .await;
    assert!(n.is_some_and(|n| n >= refused_again), "{n:?}");
    let r = client(&ca2.pem(), Alpn::Both)
        .get(gw.url("/v1/models"))
        .send()
        .await
        .expect("the last good certificate still serves");
    assert_eq!(peer_cert(&r), third.der);
    assert!(gw.gw.stderr().contains("certificate reload refused"));
}

#[tokio::test]
async fn openai_sdk_plain_and_streamed_chat_over_https() {
    let mock = MockUpstream::start().await;
    let ca = Ca::new("test CA");
    let gw = TlsGateway::start(&mock.url(), &ca.leaf("gw-1", 1), "").await;
    let ca_file = gw._dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).expect("write ca");
    let base = gw.url("/v1");
    let content = "Pingora says hello over TLS, streamed in pieces.";
    let out = run_sdk_script(
        "sdk_chat.py",
        &gw.gw,
        &[
            ("PROMPTGATE_BASE_URL", &base),
            ("PROMPTGATE_CA_FILE", &path_str(&ca_file)),
            ("MOCK_CONTENT", content),
        ],
    )
    .await;
    assert_eq!(out["plain"], content, "{out}");
    assert_eq!(out["stream"], content, "{out}");
    assert!(
        out["stream_events"].as_u64().is_some_and(|n| n >= 2),
        "{out}"
    );
    assert_eq!(mock.received().await.len(), 2);
}

fn path_str(p: &Path) -> String {
    p.display().to_string()
}

/// Limits and decision events over HTTP/2, where one connection carries many requests at once: each stream is
/// one request to the limiter and one event in the audit trail, exactly as each HTTP/1.1 request is.
#[tokio::test]
async fn limits_and_decision_events_count_each_h2_stream_as_one_request() {
    let mock = MockUpstream::start().await;
    let ca = Ca::new("test CA");
    let audit = tempfile::tempdir().expect("tempdir");
    let gw = TlsGateway::start(
        &mock.url(),
        &ca.leaf("gw-1", 1),
        &format!(
            "[limits.per_caller]\nrequests_per_minute = 4\n[audit]\ndir = {:?}\n",
            audit.path().display().to_string()
        ),
    )
    .await;
    let c = client(&ca.pem(), Alpn::Both);
    let url = gw.url("/v1/chat/completions");
    // Ten requests at once on one HTTP/2 connection (reqwest multiplexes them), from one caller.
    let sends = (0..10).map(|i| {
        let c = c.clone();
        let url = url.clone();
        async move {
            c.post(&url)
                .header("content-type", "application/json")
                .header("authorization", "Bearer sk-caller-one")
                .body(chat_body(&format!("request {i}")))
                .send()
                .await
                .expect("send")
        }
    });
    let answers = futures_util::future::join_all(sends).await;
    assert!(answers.iter().all(|r| r.version() == Version::HTTP_2));
    let ok = answers.iter().filter(|r| r.status() == 200).count();
    let limited: Vec<&reqwest::Response> = answers.iter().filter(|r| r.status() == 429).collect();
    assert_eq!((ok, limited.len()), (4, 6), "the quota, exactly");
    assert!(limited
        .iter()
        .all(|r| r.headers().contains_key("x-ratelimit-limit-requests")));
    assert_eq!(mock.received().await.len(), 4);
    let events = crate::support::wait_file_events(audit.path(), 10).await;
    assert_eq!(events.len(), 10, "one event per stream");
    let codes = events
        .iter()
        .filter(|e| e["error"] == "rate_limit_exceeded")
        .count();
    assert_eq!(codes, 6);
}
