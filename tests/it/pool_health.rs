//! Upstream pools seen from outside: a gateway started without `--upstream`, its `[[upstream]]` pool made of
//! mock upstreams on loopback that the tests stop and start again on the same address. What is asserted is
//! what the mocks received, what clients got, the pool gauges and counters, and the `attempts` of decision
//! events — never how long anything took. A test waits for the gateway to notice something (a health check,
//! a DNS change) by polling a gauge or a counter with a generous deadline.
//!
//! Balancing (weighted round robin, least connections), active health checks taking an endpoint out and
//! bringing it back, failover when a connection is refused (the relay and Pingora's proxy loop), passive
//! ejection, 503 `no_healthy_upstream` when nothing is left, and endpoints that follow DNS.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use promptgate::mock::MockConfig;
use serde_json::{json, Value};

use crate::dns_server::TestDns;
use crate::support::{chat_body, file_events, post, Gateway, GatewayOpts, MockUpstream};

/// The pool's name in every test: the `upstream` label of its metrics and of decision events.
const POOL: &str = "p";

/// How long a test waits for the gateway to notice something before it fails.
const PATIENCE: Duration = Duration::from_secs(30);

/// A gateway whose only upstream configuration is `pool` (TOML: one `[[upstream]]` named [`POOL`]), writing
/// its decision events to `audit`.
async fn gateway(pool: &str, audit: &Path) -> Gateway {
    let toml = format!("[audit]\ndir = {:?}\n{pool}", audit.display().to_string());
    Gateway::start_with(GatewayOpts::no_upstream_flag().toml(&toml)).await
}

/// A TOML array of the mocks' URLs, each with its weight (weight 1 written as a bare URL).
fn urls(endpoints: &[(&MockUpstream, usize)]) -> String {
    let list: Vec<String> = endpoints
        .iter()
        .map(|(m, w)| match w {
            1 => format!("{:?}", m.url()),
            w => format!("{{ url = {:?}, weight = {w} }}", m.url()),
        })
        .collect();
    format!("[{}]", list.join(", "))
}

fn pool_metric(name: &str) -> String {
    format!("{name}{{upstream=\"{POOL}\"}}")
}

/// Waits until the pool's `metric` reads `want`.
async fn until_metric(gw: &Gateway, metric: &str, want: f64) {
    let sample = pool_metric(metric);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let v = gw.metric(&sample).await;
        if v == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{sample} stays at {v:?}, expected {want}; gateway log:\n{}",
            gw.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the mock has answered `n` more health checks than `since`.
async fn until_health_checked(mock: &MockUpstream, since: u64, n: u64) {
    let deadline = Instant::now() + PATIENCE;
    while mock.health_checks().await < since + n {
        assert!(
            Instant::now() < deadline,
            "{} is not health checked",
            mock.addr
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A relayed (inspected) chat completion carrying the request id `id`.
async fn chat(gw: &Gateway, id: &str) -> reqwest::Response {
    post(
        gw,
        "/v1/chat/completions",
        chat_body("Say hello").into_bytes(),
        &[("x-request-id", id)],
    )
    .await
}

/// `GET /v1/models`: no body, an answer nothing inspects — Pingora's own proxy loop makes the exchange.
async fn proxied(gw: &Gateway, id: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(gw.url("/v1/models"))
        .header("x-request-id", id)
        .send()
        .await
        .expect("send")
}

/// Requests on `path` the mock received.
async fn received_on(mock: &MockUpstream, path: &str) -> usize {
    mock.received()
        .await
        .iter()
        .filter(|r| r["path"] == path)
        .count()
}

/// The decision event of request `id` (waited for: events are written after the response).
async fn event(audit: &Path, id: &str) -> Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(e) = file_events(audit)
            .into_iter()
            .find(|e| e["request_id"] == id)
        {
            return e;
        }
        assert!(Instant::now() < deadline, "no decision event for {id}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One attempt of an event: (endpoint, status, error).
type Attempt = (String, Option<u64>, Option<String>);

fn attempts(event: &Value) -> Vec<Attempt> {
    event["attempts"]
        .as_array()
        .expect("attempts is a list")
        .iter()
        .map(|a| {
            assert_eq!(a["upstream"], POOL, "{a}");
            (
                a["endpoint"].as_str().expect("endpoint").to_string(),
                a["status"].as_u64(),
                a["error"].as_str().map(str::to_string),
            )
        })
        .collect()
}

fn ok_on(addr: SocketAddr) -> Attempt {
    (addr.to_string(), Some(200), None)
}

fn refused_by(addr: SocketAddr) -> Attempt {
    (addr.to_string(), None, Some("connect".to_string()))
}

async fn three_mocks() -> Vec<MockUpstream> {
    vec![
        MockUpstream::start().await,
        MockUpstream::start().await,
        MockUpstream::start().await,
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_requests_over_every_endpoint_by_weight() {
    let m = three_mocks().await;
    let audit = tempfile::tempdir().expect("tempdir");
    let pool = format!(
        "[[upstream]]\nname = \"{POOL}\"\nurl = {}\nbalance = \"round_robin\"\n",
        urls(&[(&m[0], 1), (&m[1], 1), (&m[2], 3)])
    );
    let gw = gateway(&pool, audit.path()).await;
    for i in 0..30 {
        let r = chat(&gw, &format!("rr-{i}")).await;
        assert_eq!(
            r.status(),
            200,
            "request {i}: {}",
            r.text().await.unwrap_or_default()
        );
    }
    let mut got = Vec::new();
    for mock in &m {
        got.push(received_on(mock, "/v1/chat/completions").await);
    }
    assert_eq!(
        got.iter().sum::<usize>(),
        30,
        "every request reached one endpoint: {got:?}"
    );
    assert!(
        got.iter().all(|&n| n > 0),
        "every endpoint got some: {got:?}"
    );
    assert!(
        got[2] > got[0] && got[2] > got[1],
        "the weight-3 endpoint gets more than each weight-1 one: {got:?}"
    );
    assert_eq!(
        gw.metric_eventually(&pool_metric("promptgate_upstream_requests_total"), 30.0)
            .await,
        Some(30.0)
    );
    // Each request's event names the pool and the one endpoint that answered it.
    let e = event(audit.path(), "rr-29").await;
    assert_eq!(e["upstream"], POOL);
    let a = attempts(&e);
    assert_eq!(a.len(), 1, "{a:?}");
    assert!(m.iter().any(|mock| a[0] == ok_on(mock.addr)), "{a:?}");
}

/// An endpoint whose health checks fail is taken out (the gauge drops, no request is even tried on it), and
/// comes back when they pass again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_endpoint_is_taken_out_by_health_checks_and_comes_back_when_it_restarts() {
    let mut m = three_mocks().await;
    let audit = tempfile::tempdir().expect("tempdir");
    let pool = format!(
        "[[upstream]]\nname = \"{POOL}\"\nurl = {}\n\
         [upstream.health]\npath = \"/v1/models\"\ninterval_ms = 200\ntimeout_ms = 2000\n\
         healthy_after = 1\nunhealthy_after = 1\n",
        urls(&[(&m[0], 1), (&m[1], 1), (&m[2], 1)])
    );
    let gw = gateway(&pool, audit.path()).await;
    until_metric(&gw, "promptgate_upstream_endpoints", 3.0).await;
    until_metric(&gw, "promptgate_upstream_healthy_endpoints", 3.0).await;
    for mock in &m {
        until_health_checked(mock, 0, 1).await;
    }
    // Both exchanges keep pooled connections to every endpoint, the one about to stop included.
    for i in 0..6 {
        assert_eq!(chat(&gw, &format!("warm-{i}")).await.status(), 200);
        assert_eq!(
            proxied(&gw, &format!("warm-proxied-{i}")).await.status(),
            200
        );
    }
    assert!(received_on(&m[2], "/v1/models").await > 0);

    let stopped = m[2].addr;
    m[2].stop().await;
    until_metric(&gw, "promptgate_upstream_healthy_endpoints", 2.0).await;
    let before = [
        received_on(&m[0], "/v1/chat/completions").await,
        received_on(&m[1], "/v1/chat/completions").await,
    ];
    for i in 0..12 {
        let id = format!("out-{i}");
        let r = chat(&gw, &id).await;
        assert_eq!(r.status(), 200, "{id}");
        let r = proxied(&gw, &format!("out-proxied-{i}")).await;
        assert_eq!(r.status(), 200, "out-proxied-{i}");
    }
    let after = [
        received_on(&m[0], "/v1/chat/completions").await,
        received_on(&m[1], "/v1/chat/completions").await,
    ];
    assert_eq!(
        after[0] - before[0] + after[1] - before[1],
        12,
        "the two live endpoints took every request"
    );
    for i in 0..12 {
        for id in [format!("out-{i}"), format!("out-proxied-{i}")] {
            let a = attempts(&event(audit.path(), &id).await);
            assert_eq!(a.len(), 1, "{id}: one attempt, on a live endpoint: {a:?}");
            assert_ne!(
                a[0].0,
                stopped.to_string(),
                "{id}: the stopped endpoint was tried"
            );
            assert_eq!(a[0].1, Some(200), "{id}: {a:?}");
        }
    }
    // Taken out by its health checks, not by a failed request.
    assert_eq!(
        gw.metric(&format!(
            "promptgate_upstream_attempt_errors_total{{kind=\"connect\",upstream=\"{POOL}\"}}"
        ))
        .await,
        Some(0.0)
    );

    m[2].restart().await;
    until_health_checked(&m[2], 0, 1).await;
    until_metric(&gw, "promptgate_upstream_healthy_endpoints", 3.0).await;
    for i in 0..12 {
        assert_eq!(chat(&gw, &format!("back-{i}")).await.status(), 200);
        assert_eq!(
            proxied(&gw, &format!("back-proxied-{i}")).await.status(),
            200
        );
    }
    for path in ["/v1/chat/completions", "/v1/models"] {
        let back = received_on(&m[2], path).await;
        assert!(
            back > 0,
            "the restarted endpoint receives requests again ({path})"
        );
    }
}

/// The gateway does not know yet (its health checks are an hour apart): a request sent to the stopped
/// endpoint has its connection refused and moves to another endpoint — nothing was sent, so this is safe on
/// any method — and the endpoint is ejected: no later request tries it. Both exchanges: the relay (an
/// inspected chat completion) and Pingora's proxy loop (`GET /v1/models`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_moves_the_request_to_another_endpoint_and_ejects_the_endpoint() {
    let m = [
        MockUpstream::start().await,
        MockUpstream::start().await,
        MockUpstream::start().await,
        MockUpstream::start().await,
    ];
    let audit = tempfile::tempdir().expect("tempdir");
    let pool = format!(
        "[[upstream]]\nname = \"{POOL}\"\nurl = {}\neject_ms = 600000\n\
         [upstream.health]\ninterval_ms = 3600000\n",
        urls(&[(&m[0], 1), (&m[1], 1), (&m[2], 1), (&m[3], 1)])
    );
    let gw = gateway(&pool, audit.path()).await;
    until_metric(&gw, "promptgate_upstream_healthy_endpoints", 4.0).await;

    let relayed = m[2].addr;
    let proxied_to = m[3].addr;
    m[2].stop().await;
    for i in 0..8 {
        let r = chat(&gw, &format!("relay-{i}")).await;
        assert_eq!(
            r.status(),
            200,
            "relay-{i}: {}",
            r.text().await.unwrap_or_default()
        );
    }
    let mut relayed_served = 0;
    for mock in [&m[0], &m[1], &m[3]] {
        relayed_served += received_on(mock, "/v1/chat/completions").await;
    }
    assert_eq!(
        relayed_served, 8,
        "every relayed request was answered by a live endpoint"
    );
    m[3].stop().await;
    for i in 0..8 {
        let r = proxied(&gw, &format!("proxy-{i}")).await;
        assert_eq!(
            r.status(),
            200,
            "proxy-{i}: {}",
            r.text().await.unwrap_or_default()
        );
    }

    for (prefix, down) in [("relay", relayed), ("proxy", proxied_to)] {
        let mut failovers = 0;
        for i in 0..8 {
            let id = format!("{prefix}-{i}");
            let a = attempts(&event(audit.path(), &id).await);
            let last = a.last().expect("an attempt");
            assert_eq!(last.1, Some(200), "{id}: {a:?}");
            assert!(
                m.iter().any(|mock| *last == ok_on(mock.addr)) && last.0 != down.to_string(),
                "{id}: answered by a live endpoint: {a:?}"
            );
            match a.len() {
                1 => {}
                2 => {
                    assert_eq!(a[0], refused_by(down), "{id}: {a:?}");
                    failovers += 1;
                }
                _ => panic!("{id}: {a:?}"),
            }
        }
        // Round robin reaches the stopped endpoint within four requests; ejected, it is not tried again.
        assert_eq!(
            failovers, 1,
            "{prefix}: one request met the stopped endpoint"
        );
    }
    assert_eq!(
        gw.metric(&pool_metric("promptgate_upstream_ejections_total"))
            .await,
        Some(2.0)
    );
    assert_eq!(
        gw.metric(&format!(
            "promptgate_upstream_attempt_errors_total{{kind=\"connect\",upstream=\"{POOL}\"}}"
        ))
        .await,
        Some(2.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_endpoint_down_requests_get_503_no_healthy_upstream() {
    let m = [MockUpstream::start().await, MockUpstream::start().await];
    let audit = tempfile::tempdir().expect("tempdir");
    let pool = format!(
        "[[upstream]]\nname = \"{POOL}\"\nurl = {}\n\
         [upstream.health]\ninterval_ms = 200\nunhealthy_after = 1\n",
        urls(&[(&m[0], 1), (&m[1], 1)])
    );
    let gw = gateway(&pool, audit.path()).await;
    until_metric(&gw, "promptgate_upstream_healthy_endpoints", 2.0).await;
    assert_eq!(chat(&gw, "up").await.status(), 200);
    m[0].stop().await;
    m[1].stop().await;
    until_metric(&gw, "promptgate_upstream_healthy_endpoints", 0.0).await;

    for (id, r) in [
        ("down-relay", chat(&gw, "down-relay").await),
        ("down-proxy", proxied(&gw, "down-proxy").await),
    ] {
        assert_eq!(r.status(), 503, "{id}");
        let v: Value = r.json().await.expect("an OpenAI-shaped JSON body");
        assert_eq!(v["error"]["code"], "no_healthy_upstream", "{id}: {v}");
        assert_eq!(v["error"]["type"], "server_error", "{id}: {v}");
        assert!(v["error"]["message"].is_string(), "{id}: {v}");
        let e = event(audit.path(), id).await;
        assert_eq!(e["status"], 503, "{id}: {e}");
        assert_eq!(e["upstream"], POOL, "{id}: {e}");
        assert_eq!(
            attempts(&e),
            Vec::<Attempt>::new(),
            "{id}: nothing was tried"
        );
    }
    assert_eq!(
        gw.metric(&format!(
            "promptgate_upstream_attempt_errors_total{{kind=\"no_healthy\",upstream=\"{POOL}\"}}"
        ))
        .await,
        Some(2.0)
    );
}

/// A streamed chat completion the mock holds after its first delta until `token` is released; returns the
/// whole body the client got.
fn held_stream(gw: &Gateway, token: &str) -> tokio::task::JoinHandle<(u16, String)> {
    let url = gw.url("/v1/chat/completions");
    let body = json!({"model": "gpt-4o-mini", "stream": true,
        "messages": [{"role": "user", "content": "Say hello"}]})
    .to_string();
    let token = token.to_string();
    tokio::spawn(async move {
        let r = reqwest::Client::new()
            .post(url)
            .header("content-type", "application/json")
            .header("x-mock-hold", token)
            .body(body)
            .send()
            .await
            .expect("send");
        let status = r.status().as_u16();
        (status, r.text().await.expect("the whole stream"))
    })
}

/// Which of `mocks` received the request held with `token` (waited for).
async fn holder(mocks: &[MockUpstream], token: &str) -> usize {
    let deadline = Instant::now() + PATIENCE;
    loop {
        for (i, mock) in mocks.iter().enumerate() {
            let held = mock.received().await.iter().any(|r| {
                r["headers"]
                    .as_array()
                    .is_some_and(|h| h.iter().any(|h| h[0] == "x-mock-hold" && h[1] == token))
            });
            if held {
                return i;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no mock received the request held by {token}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the gateway has exactly `n` requests in flight (a request is counted until its context is
/// dropped, after its endpoint's own in-flight count).
async fn until_in_flight(gw: &Gateway, n: f64) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let v = gw.metric("promptgate_requests_in_flight").await;
        if v == Some(n) {
            return;
        }
        assert!(Instant::now() < deadline, "in flight: {v:?}, expected {n}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Two requests held open, one on each of two endpoints: every new request goes to the third, the one with
/// nothing in flight. (Round robin would give the held endpoints two of every three.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_sends_new_requests_away_from_endpoints_with_requests_in_flight() {
    let m = three_mocks().await;
    let audit = tempfile::tempdir().expect("tempdir");
    let pool = format!(
        "[[upstream]]\nname = \"{POOL}\"\nurl = {}\nbalance = \"least_connections\"\n",
        urls(&[(&m[0], 1), (&m[1], 1), (&m[2], 1)])
    );
    let gw = gateway(&pool, audit.path()).await;
    let first = held_stream(&gw, "hold-1");
    let a = holder(&m, "hold-1").await;
    let second = held_stream(&gw, "hold-2");
    let b = holder(&m, "hold-2").await;
    assert_ne!(
        a, b,
        "the second held request went to an endpoint with nothing in flight"
    );
    let free = 3 - a - b;
    until_in_flight(&gw, 2.0).await;

    let before = received_on(&m[free], "/v1/chat/completions").await;
    for i in 0..9 {
        let r = chat(&gw, &format!("lc-{i}")).await;
        assert_eq!(r.status(), 200);
        // The next request must not see this one still counted on its endpoint.
        until_in_flight(&gw, 2.0).await;
    }
    assert_eq!(
        received_on(&m[free], "/v1/chat/completions").await - before,
        9,
        "every new request went to the endpoint without a request in flight"
    );
    for held in [a, b] {
        assert_eq!(
            received_on(&m[held], "/v1/chat/completions").await,
            1,
            "endpoint {held} got only its held request"
        );
    }

    for mock in &m {
        mock.release("hold-1").await;
        mock.release("hold-2").await;
    }
    for stream in [first, second] {
        let (status, body) = stream.await.expect("held request");
        assert_eq!(status, 200);
        assert!(body.contains("data: [DONE]"), "{body}");
    }
}

/// Endpoints follow DNS without a restart. The pool's URL names `svc.test`, which the test's own name server
/// (`TestDns`, named in `[upstream.dns] servers`, asked again every 200 ms) answers with 127.0.0.1; mock A
/// listens on 127.0.0.1:PORT and mock B on 127.0.0.2:PORT — the same port on another loopback address (Linux
/// routes all of 127/8 to the loopback interface), so the URL and the `Host` stay the same and only the
/// record tells the two apart. A streamed request is held open on A, the record is changed to 127.0.0.2,
/// requests are sent until one reaches B (the deadline is generous; nothing times the change), and from then
/// on every request reaches B; the held request, released only then, completes from A — a change of
/// address drops no connection in use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_follow_dns_and_requests_in_flight_finish_on_the_old_address() {
    let a = MockUpstream::start().await;
    let port = a.addr.port();
    let b = MockUpstream::start_at(
        SocketAddr::from(([127, 0, 0, 2], port)),
        MockConfig::default(),
    )
    .await;
    let dns = TestDns::start().await;
    dns.set("svc.test", vec![a.addr.ip()]);
    let audit = tempfile::tempdir().expect("tempdir");
    let pool = format!(
        "[[upstream]]\nname = \"{POOL}\"\nurl = \"http://svc.test:{port}\"\n\
         [upstream.dns]\nrefresh_ms = 200\nservers = [\"{}\"]\n",
        dns.addr()
    );
    let gw = gateway(&pool, audit.path()).await;
    for i in 0..3 {
        let r = chat(&gw, &format!("dns-a-{i}")).await;
        assert_eq!(r.status(), 200);
    }
    assert_eq!(received_on(&a, "/v1/chat/completions").await, 3);
    assert_eq!(received_on(&b, "/v1/chat/completions").await, 0);
    let held = held_stream(&gw, "across");
    holder(std::slice::from_ref(&a), "across").await;

    dns.set("svc.test", vec![b.addr.ip()]);
    let deadline = Instant::now() + PATIENCE;
    let mut n = 0;
    while received_on(&b, "/v1/chat/completions").await == 0 {
        assert!(
            Instant::now() < deadline,
            "the pool never followed the DNS change"
        );
        let r = chat(&gw, &format!("dns-switch-{n}")).await;
        assert_eq!(r.status(), 200);
        n += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let on_a = received_on(&a, "/v1/chat/completions").await;
    for i in 0..6 {
        let r = chat(&gw, &format!("dns-b-{i}")).await;
        assert_eq!(r.status(), 200);
        let e = event(audit.path(), &format!("dns-b-{i}")).await;
        assert_eq!(attempts(&e), vec![ok_on(b.addr)]);
    }
    assert_eq!(
        received_on(&a, "/v1/chat/completions").await,
        on_a,
        "after the change no request reaches the old address"
    );
    assert_eq!(
        gw.metric(&pool_metric("promptgate_upstream_endpoints"))
            .await,
        Some(1.0)
    );

    a.release("across").await;
    let (status, body) = held.await.expect("held request");
    assert_eq!(status, 200);
    assert!(body.contains("data: [DONE]"), "the stream finished: {body}");
    a.wait_completed(
        "A finished answering the request held across the change",
        |r| recorded_completed(r, "across"),
    )
    .await;
    assert_eq!(
        gw.metric(&pool_metric("promptgate_upstream_dns_failures_total"))
            .await,
        Some(0.0)
    );
}

fn recorded_completed(r: &Value, token: &str) -> bool {
    r["completed"] == true
        && r["headers"]
            .as_array()
            .is_some_and(|h| h.iter().any(|h| h[0] == "x-mock-hold" && h[1] == token))
}

/// Every per-pool series is exported from the start, at zero: a dashboard or an alert on a rate sees zeros,
/// not a series that appears with its first failure. (The DNS failure count was missing until a lookup failed.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_pool_series_is_exported_at_zero_before_anything_happens() {
    let m = MockUpstream::start().await;
    let audit = tempfile::tempdir().expect("tempdir");
    let pool = format!("[[upstream]]\nname = \"{POOL}\"\nurl = {:?}\n", m.url());
    let gw = gateway(&pool, audit.path()).await;
    until_metric(&gw, "promptgate_upstream_endpoints", 1.0).await;
    let text = gw.metrics_text().await;
    let mut series = vec![
        pool_metric("promptgate_upstream_requests_total"),
        pool_metric("promptgate_upstream_ejections_total"),
        pool_metric("promptgate_upstream_dns_failures_total"),
    ];
    for kind in ["connect", "timeout", "other", "status", "no_healthy"] {
        series.push(format!(
            "promptgate_upstream_attempt_errors_total{{kind=\"{kind}\",upstream=\"{POOL}\"}}"
        ));
    }
    for s in series {
        let line = format!("{s} 0");
        assert!(
            text.lines().any(|l| l == line),
            "{line} is not exported:\n{}",
            text.lines()
                .filter(|l| l.starts_with("promptgate_upstream"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

/// Every endpoint refuses connections and the health checks have not noticed yet: each endpoint is tried
/// once, then the client gets 502 `upstream_unreachable` — on both exchanges, with every attempt recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_endpoint_refuses_each_is_tried_once_then_502_upstream_unreachable() {
    let m = [MockUpstream::start().await, MockUpstream::start().await];
    let audit = tempfile::tempdir().expect("tempdir");
    let pool = format!(
        "[[upstream]]\nname = \"{POOL}\"\nurl = {}\n[upstream.health]\ninterval_ms = 3600000\n",
        urls(&[(&m[0], 1), (&m[1], 1)])
    );
    let gw = gateway(&pool, audit.path()).await;
    until_metric(&gw, "promptgate_upstream_healthy_endpoints", 2.0).await;
    m[0].stop().await;
    m[1].stop().await;
    for (id, r) in [
        ("refused-relay", chat(&gw, "refused-relay").await),
        ("refused-proxy", proxied(&gw, "refused-proxy").await),
    ] {
        assert_eq!(r.status(), 502, "{id}");
        let v: Value = r.json().await.expect("an OpenAI-shaped JSON body");
        assert_eq!(v["error"]["code"], "upstream_unreachable", "{id}: {v}");
        let mut a = attempts(&event(audit.path(), id).await);
        a.sort();
        let mut want = vec![refused_by(m[0].addr), refused_by(m[1].addr)];
        want.sort();
        assert_eq!(a, want, "{id}: each endpoint tried once");
    }
}

/// The health check is a `GET` of the configured path, healthy on any answer below 500: an endpoint that
/// answers 500 is taken out, one that wants a key it was not given (401) is up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_health_check_answered_with_a_server_error_takes_the_endpoint_out_and_401_does_not() {
    let failing = MockUpstream::start_with(MockConfig {
        status: Some(500),
        ..MockConfig::default()
    })
    .await;
    let locked = MockUpstream::start_with(MockConfig {
        status: Some(401),
        ..MockConfig::default()
    })
    .await;
    let good = MockUpstream::start().await;
    let audit = tempfile::tempdir().expect("tempdir");
    let pool = format!(
        "[[upstream]]\nname = \"{POOL}\"\nurl = {}\n\
         [upstream.health]\npath = \"/healthz\"\ninterval_ms = 200\nunhealthy_after = 1\n",
        urls(&[(&failing, 1), (&locked, 1), (&good, 1)])
    );
    let gw = gateway(&pool, audit.path()).await;
    until_metric(&gw, "promptgate_upstream_healthy_endpoints", 2.0).await;
    until_health_checked(&failing, 0, 1).await;
    until_health_checked(&locked, 0, 1).await;
    for i in 0..6 {
        let r = chat(&gw, &format!("hc-{i}")).await;
        let status = r.status().as_u16();
        assert!(status == 200 || status == 401, "hc-{i}: {status}");
    }
    assert_eq!(received_on(&failing, "/v1/chat/completions").await, 0);
    let (to_locked, to_good) = (
        received_on(&locked, "/v1/chat/completions").await,
        received_on(&good, "/v1/chat/completions").await,
    );
    assert!(
        to_locked > 0 && to_good > 0 && to_locked + to_good == 6,
        "{to_locked} {to_good}"
    );
    // The checks asked for the configured path; they are not among the recorded requests.
    assert!(failing.received().await.is_empty());
}
