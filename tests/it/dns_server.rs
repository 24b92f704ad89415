//! A minimal authoritative DNS server for the tests: UDP on `127.0.0.1:0`, a task of the test's runtime,
//! answering A and AAAA questions from a table the test edits while it runs (`set`, `clear`), with NXDOMAIN
//! for names it does not know, and counting the questions it received per name. The wire format is written
//! by hand (RFC 1035 §4): a header, the question echoed, answers pointing back at it — nothing else.
//!
//! Point a resolver at [`TestDns::addr`] (`promptgate::upstream::dns::Resolver::new(&[dns.addr()], …)`),
//! or a gateway's name-server setting, then change the table and watch what follows it.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;
const RCODE_NXDOMAIN: u16 = 3;
const RCODE_FORMERR: u16 = 1;

#[derive(Default)]
struct State {
    records: HashMap<String, Vec<IpAddr>>,
    queries: HashMap<String, usize>,
    ttl: u32,
    silent: bool,
    /// Questions held unanswered until this many distinct names have been asked (0: answer at once).
    hold_until_names: usize,
    held: Vec<(SocketAddr, Vec<u8>)>,
}

/// The test DNS server. Dropping it stops it.
pub struct TestDns {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

impl TestDns {
    /// Binds `127.0.0.1:0` and starts answering (TTL 1, empty table).
    pub async fn start() -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind dns");
        let addr = socket.local_addr().expect("dns addr");
        let state = Arc::new(Mutex::new(State {
            ttl: 1,
            ..State::default()
        }));
        let task = tokio::spawn(serve(socket, state.clone()));
        Self { addr, state, task }
    }

    /// Where the server listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `name` now resolves to `ips` (A records for the IPv4 ones, AAAA for the IPv6 ones).
    pub fn set(&self, name: &str, ips: Vec<IpAddr>) {
        self.state().records.insert(normalise(name), ips);
    }

    /// `name` is unknown from now on (NXDOMAIN).
    pub fn clear(&self, name: &str) {
        self.state().records.remove(&normalise(name));
    }

    /// The TTL of every answer from now on (1 at start).
    pub fn set_ttl(&self, ttl: u32) {
        self.state().ttl = ttl;
    }

    /// While `silent`, questions are counted and never answered (a name server that went away).
    pub fn set_silent(&self, silent: bool) {
        self.state().silent = silent;
    }

    /// Holds every question unanswered until questions for `names` distinct names have arrived, then answers
    /// them all: a client that asks for several names one after the other never gets its first answer.
    pub fn hold_until_names(&self, names: usize) {
        self.state().hold_until_names = names;
    }

    /// Questions received for `name`, of any type.
    pub fn queries(&self, name: &str) -> usize {
        self.state()
            .queries
            .get(&normalise(name))
            .copied()
            .unwrap_or(0)
    }

    /// Questions received, all names.
    pub fn total_queries(&self) -> usize {
        self.state().queries.values().sum()
    }
}

impl Drop for TestDns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Lower case, no trailing dot: how the table keys names (DNS names compare case-insensitively).
fn normalise(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

async fn serve(socket: UdpSocket, state: Arc<Mutex<State>>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let replies = {
            let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
            handle(&mut s, &buf[..n], peer)
        };
        for (to, reply) in replies {
            // A lost reply is what UDP does; the client retries or times out.
            let _ = socket.send_to(&reply, to).await;
        }
    }
}

/// The replies to send after `query` arrived from `peer` (none, one, or all the held ones).
fn handle(s: &mut State, query: &[u8], peer: SocketAddr) -> Vec<(SocketAddr, Vec<u8>)> {
    let Some(q) = parse_question(query) else {
        return match query.get(..2) {
            Some(id) => vec![(peer, error_reply(id, RCODE_FORMERR))],
            None => Vec::new(),
        };
    };
    *s.queries.entry(q.name.clone()).or_default() += 1;
    if s.silent {
        return Vec::new();
    }
    let reply = answer(s, query, &q);
    if s.hold_until_names > s.queries.len() {
        s.held.push((peer, reply));
        return Vec::new();
    }
    let mut out = std::mem::take(&mut s.held);
    out.push((peer, reply));
    out
}

struct Question {
    /// The name, normalised.
    name: String,
    qtype: u16,
    qclass: u16,
    /// Where the question section ends in the query (header + question).
    end: usize,
}

/// The first question of a query: header (12 bytes), then QNAME as labels, QTYPE, QCLASS.
fn parse_question(msg: &[u8]) -> Option<Question> {
    let qdcount = u16::from_be_bytes([*msg.get(4)?, *msg.get(5)?]);
    let is_query = msg.get(2)? & 0x80 == 0;
    if qdcount == 0 || !is_query {
        return None;
    }
    let mut pos = 12;
    let mut labels = Vec::new();
    loop {
        let len = *msg.get(pos)? as usize;
        pos += 1;
        if len == 0 {
            break;
        }
        // Queries carry no compression pointers (their name is the first in the message).
        if len > 63 {
            return None;
        }
        labels.push(std::str::from_utf8(msg.get(pos..pos + len)?).ok()?);
        pos += len;
    }
    let qtype = u16::from_be_bytes([*msg.get(pos)?, *msg.get(pos + 1)?]);
    let qclass = u16::from_be_bytes([*msg.get(pos + 2)?, *msg.get(pos + 3)?]);
    Some(Question {
        name: normalise(&labels.join(".")),
        qtype,
        qclass,
        end: pos + 4,
    })
}

/// The reply to a parsed query: the header with QR and AA set (RD echoed), the question echoed, then one
/// answer per matching address (NXDOMAIN for an unknown name; no answer for a known name without records
/// of the type asked: NODATA).
fn answer(s: &State, query: &[u8], q: &Question) -> Vec<u8> {
    let Some(ips) = s.records.get(&q.name) else {
        let mut reply = header(query, RCODE_NXDOMAIN, 0);
        reply.extend_from_slice(&query[12..q.end]);
        return reply;
    };
    let records: Vec<&IpAddr> = ips
        .iter()
        .filter(|ip| {
            q.qclass == CLASS_IN
                && match ip {
                    IpAddr::V4(_) => q.qtype == TYPE_A,
                    IpAddr::V6(_) => q.qtype == TYPE_AAAA,
                }
        })
        .collect();
    let count = u16::try_from(records.len()).expect("few records");
    let mut reply = header(query, 0, count);
    reply.extend_from_slice(&query[12..q.end]);
    for ip in records {
        // NAME: a pointer to the question's name, at offset 12.
        reply.extend_from_slice(&[0xC0, 12]);
        reply.extend_from_slice(&q.qtype.to_be_bytes());
        reply.extend_from_slice(&CLASS_IN.to_be_bytes());
        reply.extend_from_slice(&s.ttl.to_be_bytes());
        match ip {
            IpAddr::V4(v4) => {
                reply.extend_from_slice(&4u16.to_be_bytes());
                reply.extend_from_slice(&v4.octets());
            }
            IpAddr::V6(v6) => {
                reply.extend_from_slice(&16u16.to_be_bytes());
                reply.extend_from_slice(&v6.octets());
            }
        }
    }
    reply
}

/// A reply header for `query`: same id and opcode, QR and AA set, RD echoed, RA clear, one question,
/// `answers` answers, no authority or additional records.
fn header(query: &[u8], rcode: u16, answers: u16) -> Vec<u8> {
    let flags_in = u16::from_be_bytes([query[2], query[3]]);
    let opcode_and_rd = flags_in & 0x7900;
    let flags = 0x8000 | 0x0400 | opcode_and_rd | rcode;
    let mut h = Vec::with_capacity(512);
    h.extend_from_slice(&query[..2]);
    h.extend_from_slice(&flags.to_be_bytes());
    h.extend_from_slice(&1u16.to_be_bytes());
    h.extend_from_slice(&answers.to_be_bytes());
    h.extend_from_slice(&[0, 0, 0, 0]);
    h
}

/// A bare error reply (no question echoed) for a query that could not be parsed.
fn error_reply(id: &[u8], rcode: u16) -> Vec<u8> {
    let mut h = Vec::with_capacity(12);
    h.extend_from_slice(id);
    h.extend_from_slice(&(0x8000 | rcode).to_be_bytes());
    h.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]);
    h
}
