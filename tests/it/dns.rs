//! Upstream DNS against a real name server (the test server of `dns_server`): the resolver's answers (all A
//! and AAAA records, no cache, IP literals without a query) and DNS discovery of a pool's backends (one per
//! address, the URL's index on each, the last good addresses kept through failures, lookups concurrent).

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use pingora_load_balancing::discovery::ServiceDiscovery;
use pingora_load_balancing::Backend;
use promptgate::metrics::UPSTREAM_DNS_FAILURES;
use promptgate::upstream::dns::{target_index, DnsDiscovery, Resolver, Target};

use crate::dns_server::TestDns;

/// Long enough for a loaded machine to answer over loopback; only the tests of a silent server wait it out.
const TIMEOUT: Duration = Duration::from_secs(2);

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn ips(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|s| ip(s)).collect()
}

fn resolver(dns: &TestDns) -> Arc<Resolver> {
    Arc::new(Resolver::new(&[dns.addr()], TIMEOUT).expect("resolver"))
}

fn discovery(dns: &TestDns, targets: Vec<Target>, pool: &str) -> DnsDiscovery {
    DnsDiscovery::new(resolver(dns), targets, Some(Arc::from(pool)))
}

/// The backends of one discovery round as (address, weight, URL index), sorted.
async fn discover(d: &DnsDiscovery) -> Vec<(SocketAddr, usize, Option<usize>)> {
    let (set, readiness) = d.discover().await.expect("discovery succeeds");
    assert!(readiness.is_empty(), "discovery has no readiness opinion");
    view(&set)
}

fn view(set: &BTreeSet<Backend>) -> Vec<(SocketAddr, usize, Option<usize>)> {
    let mut v: Vec<_> = set
        .iter()
        .map(|b| {
            let addr = *b.addr.as_inet().expect("inet backend");
            (addr, b.weight, target_index(b))
        })
        .collect();
    v.sort();
    v
}

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("socket addr")
}

fn failures(pool: &str) -> u64 {
    UPSTREAM_DNS_FAILURES.with_label_values(&[pool]).get()
}

#[tokio::test]
async fn a_name_with_two_a_records_gives_two_backends() {
    let dns = TestDns::start().await;
    dns.set("api.test", ips(&["127.0.0.2", "127.0.0.3"]));
    assert_eq!(
        resolver(&dns).lookup("api.test").await.expect("resolves"),
        ips(&["127.0.0.2", "127.0.0.3"])
    );
    let d = discovery(&dns, vec![Target::new("api.test", 8443, 5, 0)], "dns-two-a");
    assert_eq!(
        discover(&d).await,
        vec![
            (sa("127.0.0.2:8443"), 5, Some(0)),
            (sa("127.0.0.3:8443"), 5, Some(0))
        ]
    );
}

#[tokio::test]
async fn a_changed_address_is_followed_by_the_next_discovery() {
    let dns = TestDns::start().await;
    dns.set("api.test", ips(&["127.0.0.2"]));
    let d = discovery(
        &dns,
        vec![Target::new("api.test", 443, 1, 0)],
        "dns-changed",
    );
    assert_eq!(discover(&d).await, vec![(sa("127.0.0.2:443"), 1, Some(0))]);
    dns.set("api.test", ips(&["127.0.0.4"]));
    assert_eq!(discover(&d).await, vec![(sa("127.0.0.4:443"), 1, Some(0))]);
}

#[tokio::test]
async fn a_removed_name_keeps_its_previous_addresses_and_the_failure_is_counted() {
    let dns = TestDns::start().await;
    dns.set("api.test", ips(&["127.0.0.2", "127.0.0.3"]));
    let pool = "dns-removed";
    let d = discovery(&dns, vec![Target::new("api.test", 443, 1, 0)], pool);
    let before = discover(&d).await;
    assert_eq!(before.len(), 2);
    assert_eq!(failures(pool), 0);

    dns.clear("api.test");
    assert!(
        resolver(&dns).lookup("api.test").await.is_err(),
        "NXDOMAIN is a failure"
    );
    assert_eq!(discover(&d).await, before);
    assert_eq!(failures(pool), 1);
    // It stays kept on every failed round, and the name coming back is followed.
    assert_eq!(discover(&d).await, before);
    assert_eq!(failures(pool), 2);
    dns.set("api.test", ips(&["127.0.0.5"]));
    assert_eq!(discover(&d).await, vec![(sa("127.0.0.5:443"), 1, Some(0))]);
    assert_eq!(failures(pool), 2);
}

#[tokio::test]
async fn a_silent_name_server_keeps_the_previous_addresses() {
    let dns = TestDns::start().await;
    dns.set("api.test", ips(&["127.0.0.2"]));
    let pool = "dns-silent";
    let d = discovery(&dns, vec![Target::new("api.test", 443, 1, 0)], pool);
    let before = discover(&d).await;

    dns.set_silent(true);
    dns.set("api.test", ips(&["127.0.0.9"]));
    let asked = dns.queries("api.test");
    assert_eq!(discover(&d).await, before, "the lookup timed out");
    assert!(dns.queries("api.test") > asked, "the server was asked");
    assert_eq!(failures(pool), 1);

    dns.set_silent(false);
    assert_eq!(discover(&d).await, vec![(sa("127.0.0.9:443"), 1, Some(0))]);
}

#[tokio::test]
async fn a_and_aaaa_records_are_both_returned() {
    let dns = TestDns::start().await;
    dns.set("dual.test", ips(&["127.0.0.2", "fd00::2", "fd00::3"]));
    dns.set("v6only.test", ips(&["fd00::7"]));
    let r = resolver(&dns);
    assert_eq!(
        r.lookup("dual.test").await.expect("resolves"),
        ips(&["127.0.0.2", "fd00::2", "fd00::3"])
    );
    // One family alone is an answer.
    assert_eq!(
        r.lookup("v6only.test").await.expect("resolves"),
        ips(&["fd00::7"])
    );

    let d = discovery(&dns, vec![Target::new("dual.test", 443, 1, 0)], "dns-dual");
    assert_eq!(
        discover(&d).await,
        vec![
            (sa("127.0.0.2:443"), 1, Some(0)),
            (sa("[fd00::2]:443"), 1, Some(0)),
            (sa("[fd00::3]:443"), 1, Some(0))
        ]
    );
}

#[tokio::test]
async fn a_name_without_any_address_record_is_an_error() {
    let dns = TestDns::start().await;
    dns.set("empty.test", Vec::new());
    assert!(resolver(&dns).lookup("empty.test").await.is_err());
    assert!(resolver(&dns).lookup("unknown.test").await.is_err());
}

#[tokio::test]
async fn each_lookup_asks_the_name_server_again_even_within_the_ttl() {
    let dns = TestDns::start().await;
    // A TTL any cache would hold: the second lookup must still reach the server, positive and negative.
    dns.set_ttl(3600);
    dns.set("api.test", ips(&["127.0.0.2"]));
    let r = resolver(&dns);
    r.lookup("api.test").await.expect("resolves");
    let first = dns.queries("api.test");
    assert!(first >= 2, "A and AAAA both asked: {first}");
    dns.set("api.test", ips(&["127.0.0.3"]));
    assert_eq!(
        r.lookup("api.test").await.expect("resolves"),
        ips(&["127.0.0.3"])
    );
    assert!(
        dns.queries("api.test") >= 2 * first,
        "both families asked again"
    );

    r.lookup("gone.test").await.expect_err("NXDOMAIN");
    let first = dns.queries("gone.test");
    dns.set("gone.test", ips(&["127.0.0.4"]));
    assert_eq!(
        r.lookup("gone.test").await.expect("resolves now"),
        ips(&["127.0.0.4"])
    );
    assert!(dns.queries("gone.test") > first);
}

#[tokio::test]
async fn an_ip_literal_target_is_not_looked_up() {
    let dns = TestDns::start().await;
    let d = discovery(
        &dns,
        vec![
            Target::new("127.0.0.8", 80, 1, 0),
            Target::new("[::1]", 81, 1, 1),
        ],
        "dns-literal",
    );
    assert_eq!(
        discover(&d).await,
        vec![
            (sa("127.0.0.8:80"), 1, Some(0)),
            (sa("[::1]:81"), 1, Some(1))
        ]
    );
    assert_eq!(dns.total_queries(), 0);
}

#[tokio::test]
async fn discovery_fails_until_some_host_has_resolved() {
    let dns = TestDns::start().await;
    let pool = "dns-never";
    let d = discovery(
        &dns,
        vec![
            Target::new("a.test", 443, 1, 0),
            Target::new("b.test", 443, 1, 1),
        ],
        pool,
    );
    assert!(d.discover().await.is_err(), "nothing resolved yet");
    assert_eq!(failures(pool), 2);
    dns.set("b.test", ips(&["127.0.0.3"]));
    assert_eq!(discover(&d).await, vec![(sa("127.0.0.3:443"), 1, Some(1))]);
    // Once something resolved, a round where everything fails keeps it rather than failing.
    dns.clear("b.test");
    assert_eq!(discover(&d).await, vec![(sa("127.0.0.3:443"), 1, Some(1))]);
}

#[tokio::test]
async fn one_failing_target_keeps_its_addresses_while_the_others_follow_dns() {
    let dns = TestDns::start().await;
    dns.set("a.test", ips(&["127.0.0.2"]));
    dns.set("b.test", ips(&["127.0.0.3"]));
    let pool = "dns-one-failing";
    let d = discovery(
        &dns,
        vec![
            Target::new("a.test", 443, 2, 0),
            Target::new("b.test", 8080, 1, 1),
        ],
        pool,
    );
    discover(&d).await;
    dns.clear("a.test");
    dns.set("b.test", ips(&["127.0.0.4"]));
    assert_eq!(
        discover(&d).await,
        vec![
            (sa("127.0.0.2:443"), 2, Some(0)),
            (sa("127.0.0.4:8080"), 1, Some(1))
        ]
    );
    assert_eq!(failures(pool), 1);
}

#[tokio::test]
async fn two_urls_on_the_same_address_collapse_into_one_backend_of_the_first() {
    let dns = TestDns::start().await;
    dns.set("a.test", ips(&["127.0.0.2"]));
    dns.set("b.test", ips(&["127.0.0.2"]));
    let d = discovery(
        &dns,
        vec![
            Target::new("a.test", 443, 1, 0),
            Target::new("b.test", 443, 1, 1),
        ],
        "dns-collapse",
    );
    assert_eq!(discover(&d).await, vec![(sa("127.0.0.2:443"), 1, Some(0))]);
}

#[tokio::test]
async fn the_lookups_of_one_discovery_run_concurrently() {
    let dns = TestDns::start().await;
    dns.set("a.test", ips(&["127.0.0.2"]));
    dns.set("b.test", ips(&["127.0.0.3"]));
    // No answer until both names were asked: lookups made one after the other would time out on the first.
    dns.hold_until_names(2);
    let pool = "dns-concurrent";
    let d = discovery(
        &dns,
        vec![
            Target::new("a.test", 443, 1, 0),
            Target::new("b.test", 443, 1, 1),
        ],
        pool,
    );
    assert_eq!(
        discover(&d).await,
        vec![
            (sa("127.0.0.2:443"), 1, Some(0)),
            (sa("127.0.0.3:443"), 1, Some(1))
        ]
    );
    assert_eq!(failures(pool), 0);
}
