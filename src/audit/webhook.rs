//! The webhook sink, fed from the audit file — not from memory — behind a persisted cursor: a webhook outage,
//! a gateway crash or a restart loses nothing; delivery is at least once (a batch delivered just before a
//! crash, whose cursor was not yet saved, is sent again: recognisable by `event_id`).
//!
//! Each batch is one POST of `{"sent_at": …, "events": [ … ]}` with `X-Promptgate-Timestamp` (unix seconds)
//! and `X-Promptgate-Signature: sha256=<hex HMAC-SHA256 of the body with the shared secret>` (the body holds
//! the timestamp too, so it is signed). Failures are retried with exponential backoff, forever: the file
//! keeps the events meanwhile (retention never removes an undelivered segment).
//!
//! Deliveries go through the upstream layer (`upstream/`: its pool, timeouts and retry policy) like every
//! other exchange; the file is read on a blocking thread, never on the async worker.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use pingora::connectors::ConnectorOptions;
use pingora::http::RequestHeader;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use sha2::Sha256;

use super::segments::{self, Cursor};
use crate::config::{ConfigError, WebhookConfig};
use crate::metrics;
use crate::upstream::Upstream;

/// Bytes read from the file per batch, per event allowed in it (a batch that does not fit reads less).
const READ_PER_EVENT: usize = 2048;
/// How often an idle webhook looks for new events.
const POLL: Duration = Duration::from_millis(100);

pub struct Webhook {
    dir: PathBuf,
    cfg: WebhookConfig,
    upstream: Upstream,
}

/// What the file holds past the cursor.
enum Next {
    /// Complete lines (the bytes they take, including newlines).
    Lines { lines: Vec<Vec<u8>>, consumed: u64 },
    /// The cursor's segment is finished and a later one exists.
    Segment(u64),
    /// Nothing new yet.
    Nothing,
}

impl Webhook {
    pub fn new(dir: PathBuf, cfg: WebhookConfig) -> Result<Self, ConfigError> {
        // A few connections are plenty: one batch is in flight at a time.
        let upstream = Upstream::new(&cfg.target, Some(ConnectorOptions::new(4)))?;
        Ok(Self { dir, cfg, upstream })
    }

    /// Where delivery resumes: the saved cursor, else the start of the oldest segment.
    async fn first_cursor(&self) -> Cursor {
        let dir = self.dir.clone();
        blocking(move || {
            segments::read_cursor(&dir).unwrap_or_else(|| Cursor {
                segment: segments::list(&dir)
                    .ok()
                    .and_then(|l| l.first().copied())
                    .unwrap_or(1),
                offset: 0,
            })
        })
        .await
        .unwrap_or(Cursor {
            segment: 1,
            offset: 0,
        })
    }

    /// What the file holds past the cursor (read on a blocking thread).
    async fn read(&self, c: Cursor) -> std::io::Result<Next> {
        let (dir, batch_max) = (self.dir.clone(), self.cfg.batch_max);
        blocking(move || read_next(&dir, c, batch_max))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)))
    }

    /// Saves the cursor (on a blocking thread); a failure only means a batch may be sent again.
    async fn save(&self, c: Cursor) {
        let dir = self.dir.clone();
        let saved = blocking(move || segments::write_cursor(&dir, c)).await;
        if let Ok(Err(e)) | Err(e) = saved.map_err(std::io::Error::other) {
            tracing::error!("audit webhook: cannot save its cursor: {e}");
        }
    }
}

/// Runs blocking file work off the async worker.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, tokio::task::JoinError> {
    tokio::task::spawn_blocking(work).await
}

/// Reads complete lines past `c` (at most `batch_max`), or says the segment is finished or nothing is new.
fn read_next(dir: &Path, c: Cursor, batch_max: usize) -> std::io::Result<Next> {
    let later = || -> std::io::Result<Option<u64>> {
        Ok(segments::list(dir)?.into_iter().find(|n| *n > c.segment))
    };
    let mut f = match std::fs::File::open(segments::path(dir, c.segment)) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(later()?.map_or(Next::Nothing, Next::Segment))
        }
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    if len <= c.offset {
        return Ok(later()?.map_or(Next::Nothing, Next::Segment));
    }
    let mut want = (batch_max * READ_PER_EVENT).max(64 * 1024) as u64;
    let buf = loop {
        f.seek(SeekFrom::Start(c.offset))?;
        let mut buf = vec![0u8; (len - c.offset).min(want) as usize];
        f.read_exact(&mut buf)?;
        // An event longer than the read: read more, rather than wait forever for a newline.
        if memchr::memchr(b'\n', &buf).is_some() || buf.len() as u64 == len - c.offset {
            break buf;
        }
        want *= 4;
    };
    let mut lines = Vec::new();
    let mut consumed = 0usize;
    for line in buf.split_inclusive(|b| *b == b'\n') {
        if !line.ends_with(b"\n") || lines.len() >= batch_max {
            break;
        }
        consumed += line.len();
        let line = &line[..line.len() - 1];
        if !line.is_empty() {
            lines.push(line.to_vec());
        }
    }
    if consumed == 0 {
        return Ok(Next::Nothing);
    }
    Ok(Next::Lines {
        lines,
        consumed: consumed as u64,
    })
}

impl Webhook {
    /// Whether an event of this type goes to the webhook (`audit.webhook.events`; gap records always do).
    fn wanted(&self, kind: &str) -> bool {
        kind == "audit.gap" || self.cfg.events.iter().any(|e| e == kind)
    }

    async fn post(&self, body: Bytes, ts: u64) -> pingora::Result<u16> {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.cfg.secret.as_bytes())
            .map_err(|_| pingora::Error::explain(pingora::ErrorType::InternalError, "bad key"))?;
        mac.update(&body);
        let signature = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        // The webhook URL's own path, as configured.
        let path = match self.upstream.target().base_path() {
            "" => "/",
            p => p,
        };
        let mut req = RequestHeader::build("POST", path.as_bytes(), Some(6))?;
        req.insert_header(http::header::HOST, self.upstream.target().authority())?;
        req.insert_header(http::header::CONTENT_TYPE, "application/json")?;
        req.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
        req.insert_header(http::header::USER_AGENT, "promptgate-audit")?;
        req.insert_header("x-promptgate-timestamp", ts.to_string())?;
        req.insert_header("x-promptgate-signature", signature)?;
        let mut exchange = self.upstream.send(&req, &body).await?;
        let status = exchange.header()?.status.as_u16();
        while exchange.read().await?.is_some() {}
        exchange.finish().await;
        Ok(status)
    }

    /// Delivers one batch, retrying with exponential backoff until it is accepted (2xx) or shutdown.
    async fn deliver(&self, events: &[Vec<u8>], shutdown: &mut ShutdownWatch) -> bool {
        let mut backoff = Duration::from_millis(250);
        let mut logged = false;
        loop {
            let now = SystemTime::now();
            let ts = now
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let mut body =
                Vec::with_capacity(events.iter().map(|e| e.len() + 1).sum::<usize>() + 64);
            body.extend_from_slice(b"{\"sent_at\":\"");
            body.extend_from_slice(super::event::rfc3339(now).as_bytes());
            body.extend_from_slice(b"\",\"timestamp\":");
            body.extend_from_slice(ts.to_string().as_bytes());
            body.extend_from_slice(b",\"events\":[");
            for (i, e) in events.iter().enumerate() {
                if i > 0 {
                    body.push(b',');
                }
                body.extend_from_slice(e);
            }
            body.extend_from_slice(b"]}");
            let outcome = match self.post(Bytes::from(body), ts).await {
                Ok(s) if (200..300).contains(&s) => return true,
                Ok(s) => format!("status {s}"),
                Err(e) => e.to_string(),
            };
            metrics::AUDIT_WEBHOOK_FAILURES.inc();
            if !logged {
                tracing::warn!(
                    url = %self.cfg.target.url,
                    "audit webhook delivery failed ({outcome}); retrying with backoff, events stay in the file"
                );
                logged = true;
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.changed() => return false,
            }
            backoff = (backoff * 2).min(self.cfg.max_backoff);
        }
    }
}

#[derive(serde::Deserialize)]
struct Head {
    #[serde(default)]
    ts: String,
}

/// The `type` of an event line. The writer puts it first (`{"type":"…",`), so it is read without parsing the
/// line; a line that does not start so is parsed.
fn event_type(line: &[u8]) -> &str {
    const PREFIX: &[u8] = b"{\"type\":\"";
    if let Some(rest) = line.strip_prefix(PREFIX) {
        if let Some(end) = memchr::memchr(b'"', rest) {
            return std::str::from_utf8(&rest[..end]).unwrap_or("");
        }
    }
    #[derive(serde::Deserialize)]
    struct Kind<'a> {
        #[serde(rename = "type", borrow)]
        kind: Option<std::borrow::Cow<'a, str>>,
    }
    match serde_json::from_slice::<Kind>(line) {
        Ok(Kind {
            kind: Some(std::borrow::Cow::Borrowed(k)),
        }) => k,
        _ => "",
    }
}

#[async_trait]
impl BackgroundService for Webhook {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut cursor = self.first_cursor().await;
        loop {
            if *shutdown.borrow() {
                return;
            }
            let next = match self.read(cursor).await {
                Ok(n) => n,
                Err(e) => {
                    tracing::error!("audit webhook: cannot read the event file: {e}");
                    Next::Nothing
                }
            };
            let (lines, consumed) = match next {
                Next::Lines { lines, consumed } => (lines, consumed),
                Next::Segment(n) => {
                    cursor = Cursor {
                        segment: n,
                        offset: 0,
                    };
                    self.save(cursor).await;
                    continue;
                }
                Next::Nothing => {
                    metrics::AUDIT_WEBHOOK_LAG.set(0.0);
                    tokio::select! {
                        _ = tokio::time::sleep(POLL) => {}
                        _ = shutdown.changed() => return,
                    }
                    continue;
                }
            };
            // Lag: the age of the oldest event in this batch (one parse per batch).
            if let Some(oldest) = lines
                .first()
                .and_then(|l| serde_json::from_slice::<Head>(l).ok())
                .and_then(|h| humantime::parse_rfc3339(&h.ts).ok())
            {
                let lag = SystemTime::now().duration_since(oldest).unwrap_or_default();
                metrics::AUDIT_WEBHOOK_LAG.set(lag.as_secs_f64());
            }
            let wanted: Vec<Vec<u8>> = lines
                .into_iter()
                .filter(|l| self.wanted(event_type(l)))
                .collect();
            if !wanted.is_empty() {
                if !self.deliver(&wanted, &mut shutdown).await {
                    return;
                }
                metrics::AUDIT_DELIVERED.inc_by(wanted.len() as u64);
            }
            cursor.offset += consumed;
            self.save(cursor).await;
        }
    }
}
