//! Limits shared by a fleet of gateways through one Redis (or Valkey): [`RedisLimiter`], and the background
//! work it needs ([`RedisService`]: leases renewed and released, token settlements, the availability probe).
//!
//! **What is exact.** Every quota one gateway enforces, a fleet sharing one Redis enforces exactly: admission is
//! one Lua script (`admit.lua`, EVALSHA, reloaded transparently on NOSCRIPT) that, for the caller and its
//! tenant, checks concurrency, the request count and the token estimate and takes all of it or none of it,
//! atomically in Redis. It is one round trip per admitted request. Fixed windows like the local limiter, but the
//! window index and its reset come from the Redis server's clock (`TIME` in the script), so gateways with skewed
//! clocks agree. Counters expire two windows after their last use.
//!
//! **Keys and the hash tag.** Everything one request touches shares one hash tag, so the script is valid on a
//! Redis Cluster (one slot): the tenant's counter name when the caller has a tenant, else the caller's —
//! `{<prefix>:t:<tenant>}` or `{<prefix>:k:<key id>}` / `{<prefix>:c:h:<hash>}` (passthrough). Under it:
//! `…:conc:<subject>` (the permit set), `…:req:<subject>:<window>`, `…:tok:<subject>:<window>`. Subject names
//! are the ids and keyed hashes the local limiter counts by, never a credential.
//!
//! **Concurrency is leased.** A permit is a member of the subject's sorted set (member = this gateway's random
//! id and a counter, unique across the fleet; score = lease expiry in server milliseconds). The script drops
//! expired members before counting. The renewal pass extends every live permit every `lease / 3` in one
//! pipelined batch (`ZADD XX`). A gateway killed outright leaves permits that expire after the lease.
//!
//! **The end of a request** is one message to the background task, fire-and-forget: its permit and its token
//! settlement together, sent as one `settle.lua` call that removes the permit and corrects the counters of the
//! window the tokens were counted in (never below zero); a permit with nothing to settle is a `ZREM`. The task
//! takes everything pending at each wake-up and sends it as one pipeline. A new permit's registration for
//! renewal wakes nobody: it is collected at the next wake-up or renewal pass. Every channel is bounded: a full
//! one drops the message and counts it (a permit then expires with its lease); a request never waits.
//!
//! **Over-limit cache** (`over.rs`): a request or token counter Redis refused with nothing left is refused
//! locally, with no Redis traffic, until its window ends. Such a refusal carries the headers a Redis-decided one
//! would: the caller's standing as Redis last reported it in this window (remembered beside the cache; when it
//! is not known, Redis is asked once).
//!
//! **When Redis is unavailable or slow.** Every call is bounded by `timeout_ms`. An error or a timeout marks the
//! backend down (one WARN line per change of state) and the request is decided by `on_unavailable`: `local`
//! (an embedded [`LocalLimiter`] with the same quotas — each gateway then counts on its own, so a fleet of N
//! lets a caller up to N times its quota until Redis is back; permits taken meanwhile are local), `allow`, or
//! `deny` (503 `limits_unavailable`, `x-should-retry: true`, `retry-after: 1`). While down, requests do not try
//! Redis; a probe pings every connection every 500 ms and flips back when all answer (one INFO line).

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use prometheus::{Histogram, IntCounter};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, IntoConnectionInfo, RedisWrite, Script, ToRedisArgs};
use tokio::sync::mpsc;

use super::{
    Admitted, LimitKind, Limited, Limiter, LocalLimiter, OverLimitCache, Parties, Permits, Quota,
    Refused, Scope, Standing, StandingCache, Ticket,
};
use crate::config::{OnUnavailable, RedisConfig};
use crate::metrics;

/// How often the probe pings a backend marked down.
const PROBE_EVERY: Duration = Duration::from_millis(500);
/// Slots of the over-limit cache (each at most one remembered counter).
const OVER_SLOTS: usize = 4096;
/// Room in each hand-off channel (new leases, releases, settlements): beyond it, work is dropped and counted.
const QUEUE: usize = 65_536;
/// Most commands in one background batch.
const BATCH: usize = 512;

/// A permit leased in Redis, released when dropped (its `Permits` go with the request context) unless given
/// back with the request's settlement first ([`Limiter::end`]).
pub struct Lease {
    entry: Option<Arc<LeaseEntry>>,
    ends: mpsc::Sender<End>,
}

impl Lease {
    /// Takes the permit out, marked ended: the caller hands it off.
    fn take(&mut self) -> Option<Arc<LeaseEntry>> {
        let entry = self.entry.take()?;
        entry.alive.store(false, Ordering::Release);
        Some(entry)
    }
}

/// What the background task needs to renew and release one permit.
struct LeaseEntry {
    /// The permit sets holding it (one per subject with a concurrency quota; one hash tag).
    sets: Vec<String>,
    member: String,
    /// Cleared when the request ends: a release lost to a full channel is caught by the next renewal pass.
    alive: AtomicBool,
    /// Set once the release was sent, so the renewal pass does not send it again.
    released: AtomicBool,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(entry) = self.take() {
            send_end(
                &self.ends,
                End {
                    lease: Some(entry),
                    settlement: None,
                },
            );
        }
    }
}

/// The end of one request: its permit to give back and its tokens to settle (either may be absent).
struct End {
    lease: Option<Arc<LeaseEntry>>,
    settlement: Option<Settlement>,
}

/// Hands `end` off without waiting; a full channel drops it and counts what was lost.
fn send_end(ends: &mpsc::Sender<End>, end: End) {
    if let Err(e) = ends.try_send(end) {
        let end = match e {
            mpsc::error::TrySendError::Full(end) | mpsc::error::TrySendError::Closed(end) => end,
        };
        // A lost release is caught by the next renewal pass (the permit is marked ended).
        if end.lease.is_some() {
            metrics::LIMITS_REDIS_DROPPED
                .with_label_values(&["release"])
                .inc();
        }
        if end.settlement.is_some() {
            metrics::LIMITS_REDIS_DROPPED
                .with_label_values(&["settlement"])
                .inc();
        }
    }
}

/// A token correction waiting to be sent.
struct Settlement {
    keys: Vec<String>,
    delta: i64,
}

/// The receiving ends of the hand-offs, taken by [`RedisService`] when it starts.
struct Inbox {
    /// Never awaited (only drained), so a registration wakes nobody.
    leases: mpsc::Receiver<Arc<LeaseEntry>>,
    ends: mpsc::Receiver<End>,
}

/// State shared by the limiter (requests) and its background service.
struct Shared {
    client: Client,
    pool_size: usize,
    prefix: String,
    window: Duration,
    lease: Duration,
    timeout: Duration,
    on_unavailable: OnUnavailable,
    /// The connections (empty if they could not be set up), made on first use inside a runtime.
    pool: OnceLock<Box<[ConnectionManager]>>,
    next: AtomicUsize,
    up: AtomicBool,
    fallback: LocalLimiter,
    over: OverLimitCache,
    /// The first subject's last standing, for the headers of a refusal the over-limit cache gives.
    known: StandingCache,
    admit: Script,
    settle: Script,
    /// This gateway's part of every permit id (random per process).
    gateway: String,
    permits: AtomicU64,
    /// The Redis server's clock less this host's, in ms (renewals score leases in server time).
    skew_ms: AtomicI64,
    leases: mpsc::Sender<Arc<LeaseEntry>>,
    ends: mpsc::Sender<End>,
    round_trip: Histogram,
    cache_hits: IntCounter,
}

/// Limits counted in Redis (see the module doc).
pub struct RedisLimiter {
    shared: Arc<Shared>,
}

/// The background work of a [`RedisLimiter`]: the connections, the availability probe, lease renewal and
/// release, token settlement. A Pingora background service.
pub struct RedisService {
    shared: Arc<Shared>,
    inbox: Mutex<Option<Inbox>>,
}

/// The Redis key names of one request's parties.
struct Keys {
    tag: String,
}

impl Keys {
    fn new(prefix: &str, group: &str) -> Self {
        Self {
            tag: format!("{{{prefix}:{group}}}"),
        }
    }

    fn conc(&self, subject: &str) -> String {
        format!("{}:conc:{subject}", self.tag)
    }

    fn req(&self, subject: &str) -> String {
        format!("{}:req:{subject}", self.tag)
    }

    fn tok(&self, subject: &str) -> String {
        format!("{}:tok:{subject}", self.tag)
    }

    /// The key `<tag>:<kind>:<subject>` as a command argument, written into the command without a `String`.
    fn arg<'a>(&'a self, kind: &'static str, subject: &'a str) -> KeyArg<'a> {
        KeyArg {
            tag: &self.tag,
            kind,
            subject,
        }
    }
}

/// A key name written straight into a command's buffer (the admission's keys, built for every request).
struct KeyArg<'a> {
    tag: &'a str,
    kind: &'static str,
    subject: &'a str,
}

impl ToRedisArgs for KeyArg<'_> {
    fn write_redis_args<W>(&self, out: &mut W)
    where
        W: ?Sized + RedisWrite,
    {
        use std::io::Write;
        let mut w = out.writer_for_next_arg();
        // Writing into the command's own buffer does not fail.
        let _ = write!(w, "{}:{}:{}", self.tag, self.kind, self.subject);
    }
}

impl RedisLimiter {
    /// A limiter for `cfg`, counting quotas over `window`, and the service that must run beside it. Makes no
    /// connection: the service connects once the server runs.
    pub fn new(cfg: &RedisConfig, window: Duration) -> Result<(Self, RedisService), String> {
        let mut info = cfg
            .url
            .as_str()
            .into_connection_info()
            .map_err(|e| format!("invalid Redis URL: {e}"))?;
        if let Some(p) = &cfg.password {
            let settings = info.redis_settings().clone().set_password(p);
            info = info.set_redis_settings(settings);
        }
        let client = Client::open(info).map_err(|e| format!("invalid Redis URL: {e}"))?;
        let (leases, leases_rx) = mpsc::channel(QUEUE);
        let (ends, ends_rx) = mpsc::channel(QUEUE);
        let mut id = [0u8; 8];
        if getrandom::getrandom(&mut id).is_err() {
            // Permit ids must differ across the fleet: without randomness, the pid and the time will do.
            let seed = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0)
                ^ u64::from(std::process::id()) << 32;
            id = seed.to_le_bytes();
        }
        let shared = Arc::new(Shared {
            client,
            pool_size: cfg.pool_size,
            prefix: cfg.prefix.clone(),
            window,
            lease: cfg.lease,
            timeout: cfg.timeout,
            on_unavailable: cfg.on_unavailable,
            pool: OnceLock::new(),
            next: AtomicUsize::new(0),
            // Assumed up until a call or the first probe says otherwise: the first requests are counted in
            // Redis like all others, not decided by the fallback while the probe is under way.
            up: AtomicBool::new(true),
            fallback: LocalLimiter::new(window),
            over: OverLimitCache::new(OVER_SLOTS),
            known: StandingCache::new(OVER_SLOTS),
            admit: Script::new(include_str!("admit.lua")),
            settle: Script::new(include_str!("settle.lua")),
            gateway: hex::encode(id),
            permits: AtomicU64::new(0),
            skew_ms: AtomicI64::new(0),
            leases,
            ends,
            round_trip: metrics::LIMITS_REDIS_SECONDS.clone(),
            cache_hits: metrics::LIMITS_OVER_LIMIT_CACHE_HITS.clone(),
        });
        metrics::LIMITS_BACKEND_UP.set(1);
        let service = RedisService {
            shared: shared.clone(),
            inbox: Mutex::new(Some(Inbox {
                leases: leases_rx,
                ends: ends_rx,
            })),
        };
        Ok((Self { shared }, service))
    }
}

impl Shared {
    /// The next connection of the pool, round-robin (`None`: the connections could not be set up).
    fn connection(&self) -> Option<ConnectionManager> {
        let pool = self.pool();
        if pool.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % pool.len();
        Some(pool[i].clone())
    }

    /// The pool, made by whichever comes first — the first request or the background service — in the tokio
    /// runtime it runs on (a connection's driver task lives there). Lazily connected: a Redis that is down is
    /// only a failed call, never a failed start.
    fn pool(&self) -> &[ConnectionManager] {
        self.pool.get_or_init(|| {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(self.timeout.max(Duration::from_millis(250))))
                .set_response_timeout(None)
                .set_number_of_retries(1)
                .set_max_delay(PROBE_EVERY);
            let mut pool = Vec::with_capacity(self.pool_size);
            for _ in 0..self.pool_size {
                match ConnectionManager::new_lazy_with_config(self.client.clone(), config.clone()) {
                    Ok(c) => pool.push(c),
                    Err(e) => {
                        tracing::error!("limits: cannot set up the Redis connections: {e}");
                        return Box::default();
                    }
                }
            }
            pool.into_boxed_slice()
        })
    }

    /// Marks the backend down after a failed call (logged once per change of state).
    fn failed(&self, kind: &'static str, detail: &dyn std::fmt::Display) {
        metrics::LIMITS_REDIS_ERRORS
            .with_label_values(&[kind])
            .inc();
        if self.up.swap(false, Ordering::AcqRel) {
            metrics::LIMITS_BACKEND_UP.set(0);
            let mode = self.on_unavailable.as_str();
            tracing::warn!(
                error = %detail,
                kind,
                on_unavailable = mode,
                "limits: Redis unavailable; deciding by limits.redis.on_unavailable until it answers again"
            );
        }
    }

    fn recovered(&self) {
        if !self.up.swap(true, Ordering::AcqRel) {
            metrics::LIMITS_BACKEND_UP.set(1);
            tracing::info!("limits: Redis available; counting in Redis again");
        }
    }

    /// Decides a request while Redis cannot be asked.
    fn unavailable(&self, parties: &Parties<'_>, tokens: u64) -> Result<Admitted, Refused> {
        metrics::LIMITS_FALLBACK
            .with_label_values(&[self.on_unavailable.as_str()])
            .inc();
        match self.on_unavailable {
            OnUnavailable::Local => self
                .fallback
                .admit_now(parties, tokens)
                .map_err(Refused::Limited),
            OnUnavailable::Allow => Ok(Admitted::default()),
            OnUnavailable::Deny => Err(Refused::Unavailable),
        }
    }

    /// A refusal the over-limit cache can give without asking Redis, with the headers Redis would have given:
    /// the first subject's standing as last reported in this window (the refused quota at nothing left). When
    /// that standing is not known, Redis is asked after all (which makes it known).
    fn cached_refusal(&self, parties: &Parties<'_>, keys: &Keys) -> Option<Limited> {
        if self.over.is_empty() {
            return None;
        }
        let now = Instant::now();
        for (i, s) in parties.subjects.iter().enumerate() {
            for (kind, limit, key) in [
                (
                    LimitKind::Requests,
                    s.spec.requests_per_minute,
                    keys.req(s.name),
                ),
                (
                    LimitKind::Tokens,
                    s.spec.tokens_per_minute,
                    keys.tok(s.name),
                ),
            ] {
                let Some(limit) = limit else { continue };
                let Some(retry_after) = self.over.over(&key, limit, now) else {
                    continue;
                };
                let own = (i == 0).then_some((kind, retry_after));
                let standing = self.standing_for(parties, now, own)?;
                self.cache_hits.inc();
                return Some(Limited {
                    kind,
                    scope: s.scope,
                    limit,
                    retry_after,
                    standing,
                });
            }
        }
        None
    }

    /// The first subject's standing for a cached refusal: its last known one when read in this window under its
    /// current limits, with `refused` (its own quota the cache refuses, and until when) at nothing left. `None`:
    /// one of its quotas is not known.
    fn standing_for(
        &self,
        parties: &Parties<'_>,
        now: Instant,
        refused: Option<(LimitKind, Duration)>,
    ) -> Option<Standing> {
        let Some(first) = parties.subjects.first() else {
            return Some(Standing::default());
        };
        let known = self.known.get(first.name, now);
        let mut standing = Standing::default();
        for (kind, limit, slot) in [
            (
                LimitKind::Requests,
                first.spec.requests_per_minute,
                &mut standing.requests,
            ),
            (
                LimitKind::Tokens,
                first.spec.tokens_per_minute,
                &mut standing.tokens,
            ),
        ] {
            let Some(limit) = limit else { continue };
            let last = known.and_then(|k| match kind {
                LimitKind::Requests => k.requests,
                _ => k.tokens,
            });
            // A standing read under another limit (a reload since) says nothing of this one.
            let last = last.filter(|q| q.limit == limit);
            *slot = match refused {
                Some((k, reset)) if k == kind => Some(Quota {
                    limit,
                    remaining: 0,
                    reset,
                }),
                _ => Some(last?),
            };
        }
        Some(standing)
    }

    /// Reads the script's reply (see `admit.lua`).
    fn reply(
        &self,
        parties: &Parties<'_>,
        keys: &Keys,
        lease: Option<Arc<LeaseEntry>>,
        tokens: u64,
        r: &[i64],
    ) -> Result<Admitted, Refused> {
        let at = |i: usize| r.get(i).copied().unwrap_or(0).max(0) as u64;
        let reset = Duration::from_millis(at(3).max(1));
        let quota = |limit: u64, remaining: u64| {
            (limit > 0).then_some(Quota {
                limit,
                remaining,
                reset,
            })
        };
        let standing = Standing {
            requests: quota(at(4), at(5)),
            tokens: quota(at(6), at(7)),
        };
        if let Some(first) = parties.subjects.first() {
            if standing != Standing::default() {
                self.known
                    .remember(first.name, standing, Instant::now() + reset);
            }
        }
        let local_ms = unix_ms(SystemTime::now());
        self.skew_ms
            .store(at(1) as i64 - local_ms, Ordering::Relaxed);
        if at(0) == 1 {
            let has_tokens = parties
                .subjects
                .iter()
                .any(|s| s.spec.tokens_per_minute.is_some());
            let permits = match lease {
                Some(entry) => {
                    let held = entry.sets.len();
                    if self.leases.try_send(entry.clone()).is_err() {
                        // Not renewed: a request outliving the lease loses its permit early.
                        metrics::LIMITS_REDIS_DROPPED
                            .with_label_values(&["lease"])
                            .inc();
                    }
                    let lease = Lease {
                        entry: Some(entry),
                        ends: self.ends.clone(),
                    };
                    Permits::leased(lease, held)
                }
                None => Permits::none(),
            };
            return Ok(Admitted {
                permits,
                standing,
                ticket: has_tokens.then_some(Ticket {
                    tokens,
                    window: Some(at(2)),
                }),
            });
        }
        let (kind, index, limit) = (at(8), at(9) as usize, at(10));
        let retry_after = Duration::from_millis(at(11).max(1));
        let subject = parties.subjects.get(index.saturating_sub(1));
        let kind = match kind {
            1 => LimitKind::Requests,
            2 => LimitKind::Tokens,
            _ => LimitKind::Concurrency,
        };
        if let Some(s) = subject {
            // Nothing left in the window: remember it, and spare Redis this counter's requests until it ends.
            if at(12) == 0 {
                let key = match kind {
                    LimitKind::Requests => Some(keys.req(s.name)),
                    LimitKind::Tokens => Some(keys.tok(s.name)),
                    LimitKind::Concurrency => None,
                };
                if let Some(key) = key {
                    self.over
                        .remember(&key, limit, Instant::now() + retry_after);
                }
            }
        }
        Err(Refused::Limited(Limited {
            kind,
            scope: subject.map_or(Scope::Key, |s| s.scope),
            limit,
            retry_after,
            standing,
        }))
    }
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The `kind` label of `promptgate_limits_redis_errors_total`.
fn error_kind(e: &redis::RedisError) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
        "connection"
    } else if matches!(e.kind(), redis::ErrorKind::Server(_)) {
        "script"
    } else {
        "other"
    }
}

#[async_trait]
impl Limiter for RedisLimiter {
    async fn admit(&self, parties: &Parties<'_>, tokens: u64) -> Result<Admitted, Refused> {
        let s = &*self.shared;
        let keys = Keys::new(&s.prefix, parties.group);
        if let Some(limited) = s.cached_refusal(parties, &keys) {
            return Err(Refused::Limited(limited));
        }
        if !s.up.load(Ordering::Acquire) {
            return s.unavailable(parties, tokens);
        }
        let Some(mut conn) = s.connection() else {
            return s.unavailable(parties, tokens);
        };
        let sets: Vec<String> = parties
            .subjects
            .iter()
            .filter(|p| p.spec.max_concurrent.is_some())
            .map(|p| keys.conc(p.name))
            .collect();
        let member = if sets.is_empty() {
            String::new()
        } else {
            let n = s.permits.fetch_add(1, Ordering::Relaxed);
            format!("{}:{n}", s.gateway)
        };
        let mut call = s.admit.prepare_invoke();
        for p in &parties.subjects {
            call.key(keys.arg("conc", p.name))
                .key(keys.arg("req", p.name))
                .key(keys.arg("tok", p.name));
        }
        call.arg(s.window.as_millis() as u64)
            .arg(s.lease.as_millis() as u64)
            .arg(&member)
            .arg(tokens);
        for p in &parties.subjects {
            call.arg(p.spec.max_concurrent.unwrap_or(0))
                .arg(p.spec.requests_per_minute.unwrap_or(0))
                .arg(p.spec.tokens_per_minute.unwrap_or(0));
        }
        let started = Instant::now();
        let answered =
            tokio::time::timeout(s.timeout, call.invoke_async::<Vec<i64>>(&mut conn)).await;
        s.round_trip.observe(started.elapsed().as_secs_f64());
        let lease = (!sets.is_empty()).then(|| {
            Arc::new(LeaseEntry {
                sets,
                member,
                alive: AtomicBool::new(true),
                released: AtomicBool::new(false),
            })
        });
        let failed = |kind: &'static str, detail: &dyn std::fmt::Display| {
            s.failed(kind, detail);
            // The script may have run after all: give back a permit it may have taken (it would expire anyway).
            if let Some(entry) = &lease {
                entry.alive.store(false, Ordering::Release);
                send_end(
                    &s.ends,
                    End {
                        lease: Some(entry.clone()),
                        settlement: None,
                    },
                );
            }
        };
        match answered {
            Err(_) => {
                failed("timeout", &"no answer within limits.redis.timeout_ms");
                s.unavailable(parties, tokens)
            }
            Ok(Err(e)) => {
                failed(error_kind(&e), &e);
                s.unavailable(parties, tokens)
            }
            Ok(Ok(r)) => s.reply(parties, &keys, lease, tokens, &r),
        }
    }

    fn settle_tokens(&self, parties: &Parties<'_>, ticket: Ticket, delta: i64) {
        if let Some(settlement) = self.shared.settlement(parties, ticket, delta) {
            send_end(
                &self.shared.ends,
                End {
                    lease: None,
                    settlement: Some(settlement),
                },
            );
        }
    }

    fn end(&self, parties: &Parties<'_>, settlement: Option<(Ticket, i64)>, mut permits: Permits) {
        let s = &*self.shared;
        let settlement = settlement.and_then(|(t, delta)| s.settlement(parties, t, delta));
        let lease = permits.take_lease().and_then(|mut l| l.take());
        drop(permits);
        if lease.is_some() || settlement.is_some() {
            send_end(&s.ends, End { lease, settlement });
        }
    }
}

impl Shared {
    /// The correction to send for `delta` tokens (`None`: nothing to send — no change, or counted locally).
    fn settlement(&self, parties: &Parties<'_>, ticket: Ticket, delta: i64) -> Option<Settlement> {
        let Some(window) = ticket.window else {
            // Counted by the fallback while Redis was unavailable.
            self.fallback.settle_now(parties, delta);
            return None;
        };
        if delta == 0 {
            return None;
        }
        let keys = Keys::new(&self.prefix, parties.group);
        let counters = parties
            .subjects
            .iter()
            .filter(|p| p.spec.tokens_per_minute.is_some());
        if delta < 0 {
            // Tokens came back: a counter this gateway remembers as over may not be any more.
            for p in counters.clone() {
                self.over.forget(&keys.tok(p.name));
            }
        }
        let keys: Vec<String> = counters
            .map(|p| format!("{}:{window}", keys.tok(p.name)))
            .collect();
        (!keys.is_empty()).then_some(Settlement { keys, delta })
    }
}

impl RedisService {
    /// Pings every connection (and reads the server clock); the backend is up when all answer in time.
    async fn probe(&self) {
        let s = &*self.shared;
        let pool = s.pool();
        if pool.is_empty() {
            return;
        }
        // The first probe and a recovering server may need a connection made: allow more than one request's
        // budget, the probe is nobody's request.
        let budget = s.timeout.max(Duration::from_millis(250));
        for c in pool.iter() {
            let mut c = c.clone();
            let pinged =
                tokio::time::timeout(budget, redis::cmd("TIME").query_async::<(i64, i64)>(&mut c))
                    .await;
            match pinged {
                Ok(Ok((secs, micros))) => {
                    let server = secs * 1000 + micros / 1000;
                    s.skew_ms
                        .store(server - unix_ms(SystemTime::now()), Ordering::Relaxed);
                }
                Ok(Err(e)) => return s.failed(error_kind(&e), &e),
                Err(_) => return s.failed("timeout", &"no answer to the probe"),
            }
        }
        s.recovered();
    }

    /// The renewal pass: every live permit's lease extended from now (one pipelined batch); permits whose
    /// request ended but whose release was lost are released instead.
    async fn renew(&self, live: &mut Vec<Arc<LeaseEntry>>) {
        let s = &*self.shared;
        let ended: Vec<Arc<LeaseEntry>> = live
            .iter()
            .filter(|e| !e.alive.load(Ordering::Acquire) && !e.released.load(Ordering::Acquire))
            .cloned()
            .collect();
        live.retain(|e| e.alive.load(Ordering::Acquire));
        if !ended.is_empty() {
            self.release(&ended).await;
        }
        if live.is_empty() || !s.up.load(Ordering::Acquire) {
            return;
        }
        let Some(mut conn) = s.connection() else {
            return;
        };
        let expiry = unix_ms(SystemTime::now())
            + s.skew_ms.load(Ordering::Relaxed)
            + s.lease.as_millis() as i64;
        for chunk in live.chunks(BATCH) {
            let mut pipe = redis::pipe();
            for e in chunk {
                for set in &e.sets {
                    pipe.cmd("ZADD")
                        .arg(set)
                        .arg("XX")
                        .arg(expiry)
                        .arg(&e.member)
                        .ignore();
                    pipe.cmd("PEXPIRE")
                        .arg(set)
                        .arg(s.lease.as_millis() as u64 * 2)
                        .ignore();
                }
            }
            self.send(&mut conn, &pipe).await;
        }
    }

    /// Removes ended permits from their sets (pipelined).
    async fn release(&self, ended: &[Arc<LeaseEntry>]) {
        let s = &*self.shared;
        for e in ended {
            e.released.store(true, Ordering::Release);
        }
        if !s.up.load(Ordering::Acquire) {
            // They expire with their lease.
            return;
        }
        let Some(mut conn) = s.connection() else {
            return;
        };
        for chunk in ended.chunks(BATCH) {
            let mut pipe = redis::pipe();
            for e in chunk {
                for set in &e.sets {
                    pipe.cmd("ZREM").arg(set).arg(&e.member).ignore();
                }
            }
            self.send(&mut conn, &pipe).await;
        }
    }

    /// Sends the ends of requests as one pipeline: a permit with a settlement is one `settle.lua` call, a permit
    /// alone its `ZREM`s, a settlement alone a `settle.lua` call (the script loaded again if Redis lost it).
    async fn end(&self, batch: &[End]) {
        let s = &*self.shared;
        for e in batch.iter().filter_map(|e| e.lease.as_ref()) {
            e.released.store(true, Ordering::Release);
        }
        if !s.up.load(Ordering::Acquire) {
            // Permits expire with their lease; the corrections are lost.
            let lost = batch.iter().filter(|e| e.settlement.is_some()).count();
            metrics::LIMITS_REDIS_DROPPED
                .with_label_values(&["settlement"])
                .inc_by(lost as u64);
            return;
        }
        let Some(mut conn) = s.connection() else {
            return;
        };
        let mut pipe = redis::pipe();
        let mut scripted = false;
        for end in batch {
            match (&end.lease, &end.settlement) {
                (lease, Some(st)) => {
                    let mut call = s.settle.prepare_invoke();
                    let (sets, member) = lease
                        .as_ref()
                        .map_or((&[][..], ""), |l| (&l.sets[..], l.member.as_str()));
                    for k in sets.iter().chain(&st.keys) {
                        call.key(k);
                    }
                    call.arg(st.delta).arg(sets.len()).arg(member);
                    pipe.invoke_script(&call).ignore();
                    scripted = true;
                }
                (Some(l), None) => {
                    for set in &l.sets {
                        pipe.cmd("ZREM").arg(set).arg(&l.member).ignore();
                    }
                }
                (None, None) => {}
            }
        }
        let budget = s.timeout.max(Duration::from_millis(250));
        let sent = tokio::time::timeout(budget, pipe.query_async::<()>(&mut conn)).await;
        if let Ok(Err(e)) = &sent {
            if scripted && e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) {
                // SCRIPT FLUSH or a restarted server: load it and send the batch once more (a permit removed
                // twice is removed once; a settlement that failed was not applied).
                let loaded = tokio::time::timeout(budget, s.settle.load_async(&mut conn)).await;
                if matches!(loaded, Ok(Ok(_))) {
                    let again = tokio::time::timeout(budget, pipe.query_async::<()>(&mut conn));
                    return Self::report(s, again.await);
                }
            }
        }
        Self::report(s, sent);
    }

    /// Takes the permits registered since the last call into the renewal list (without waiting).
    fn register(live: &mut Vec<Arc<LeaseEntry>>, leases: &mut mpsc::Receiver<Arc<LeaseEntry>>) {
        let before = live.len();
        while let Ok(entry) = leases.try_recv() {
            if entry.alive.load(Ordering::Acquire) {
                live.push(entry);
            }
        }
        // Ended permits leave the list at each renewal pass; on a busy gateway drop them sooner, whenever the
        // list grew past a power of two, so it stays near the number of requests in flight.
        if live.len() > 1024 && live.len().ilog2() > before.max(1).ilog2() {
            live.retain(|e| e.alive.load(Ordering::Acquire));
        }
    }

    async fn send(&self, conn: &mut ConnectionManager, pipe: &redis::Pipeline) {
        let s = &*self.shared;
        let budget = s.timeout.max(Duration::from_millis(250));
        let sent = tokio::time::timeout(budget, pipe.query_async::<()>(conn)).await;
        Self::report(s, sent);
    }

    fn report(s: &Shared, sent: Result<redis::RedisResult<()>, tokio::time::error::Elapsed>) {
        match sent {
            Ok(Ok(())) => {}
            Ok(Err(e)) => s.failed(error_kind(&e), &e),
            Err(_) => s.failed("timeout", &"no answer to a background batch"),
        }
    }
}

#[async_trait]
impl BackgroundService for RedisService {
    async fn start(&self, _shutdown: ShutdownWatch) {
        let Some(mut inbox) = self.inbox.lock().ok().and_then(|mut i| i.take()) else {
            return;
        };
        // The first probe says whether Redis is there; until then requests ask it (bounded by the timeout).
        self.probe().await;
        let mut live: Vec<Arc<LeaseEntry>> = Vec::new();
        let mut probe = tokio::time::interval(PROBE_EVERY);
        let mut renew = tokio::time::interval(self.shared.lease / 3);
        probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ended = Vec::with_capacity(BATCH);
        // Runs through shutdown: requests still draining release their permits and settle their tokens; the
        // drain service ends the process.
        loop {
            tokio::select! {
                _ = probe.tick() => {
                    if !self.shared.up.load(Ordering::Acquire) {
                        self.probe().await;
                    }
                }
                _ = renew.tick() => {
                    Self::register(&mut live, &mut inbox.leases);
                    self.renew(&mut live).await;
                }
                n = inbox.ends.recv_many(&mut ended, BATCH) => {
                    if n > 0 {
                        self.end(&ended).await;
                        ended.clear();
                    }
                    Self::register(&mut live, &mut inbox.leases);
                }
            }
        }
    }
}
