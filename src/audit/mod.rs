//! Decision events and where they go.
//!
//! The request path hands each event to a bounded queue and goes on; one writer — a background service of the
//! server, on a blocking thread — turns queued events into JSON lines, appends them to the current JSONL
//! segment in batches and flushes them to disk (`fsync` after every batch, or at an interval), rotating
//! segments by size. The file is the durable record: the webhook (`webhook.rs`) is fed from it, not from
//! memory, behind a persisted cursor. An optional copy goes to stdout. On shutdown, once the last request has
//! finished, [`Audit::close`] makes the writer write and sync what is queued and stop.
//!
//! Explicit behaviour at the edges:
//! - queue full: `on_full = "block"` makes the finishing request wait for room; `"drop"` drops the event,
//!   counts it, and the writer leaves a gap record (`{"type":"audit.gap","dropped":N}`) in the file;
//! - file not writable: the batch is kept and retried every second, the failure is logged and exported
//!   (`promptgate_audit_sink_up 0`), and `on_failure = "fail_closed"` refuses new requests with 503 until a
//!   write succeeds again (`"fail_open"` serves them and counts each in `promptgate_fail_open_total`);
//! - directory locked by the gateway a graceful upgrade replaces: the writer opens it once the lock is free
//!   (that gateway has drained and written its last event), events queued meanwhile (`Audit::open`).
//!
//! Every line the writer writes is sealed into a hash chain (`chain.rs`): a `seq` and a `chain` value that
//! covers the line and the one before it, each segment opening with a header that names the previous
//! segment's last value. `promptgate audit verify` (`verify.rs`) walks it; `promptgate audit query`
//! (`query.rs`) filters it. The writer holds the chain's tip in memory and, on open, reads it back from the
//! last whole line, so a torn tail cut after a crash re-links to the last whole record.
//!
//! `durability = "write_ahead"`: before a request goes upstream, the request path hands an intent record
//! (`intent.rs`) to the same queue and waits until the writer has written *and synced* it — group commit: one
//! write and one `fsync` acknowledge every intent of the batch. An intent that cannot be made durable within
//! [`INTENT_WAIT`] refuses the request (503). The request's decision event completes it later.

pub mod chain;
pub mod event;
pub mod intent;
pub mod query;
pub mod segments;
pub mod verify;
pub mod webhook;

use std::fs::File;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::{mpsc, oneshot};

pub use event::Event;
pub use intent::Intent;

use crate::config::{AuditConfig, Fsync};
use crate::metrics;

/// Events taken from the queue per write.
const BATCH: usize = 1024;
/// While events keep coming, the writer collects them this often instead of being woken for each: with
/// `fsync = "always"` that is at most ~200 fsyncs a second, each covering everything queued since the last.
const BUSY_NAP: Duration = Duration::from_millis(5);
/// The longest a forwarded request waits for its intent to be written and synced (`write_ahead`) before it is
/// refused: a disk that hangs must not hold requests forever.
pub const INTENT_WAIT: Duration = Duration::from_secs(5);

/// Events handed to the queue and not yet written (and synced, under `fsync = "always"`): the drain on
/// shutdown waits for it to reach zero before the process exits.
pub static PENDING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// State shared by the request path and the writer.
#[derive(Debug, Default)]
struct Shared {
    /// The last write failed (cleared by the next successful one).
    failed: AtomicBool,
    /// Events dropped since the last gap record.
    dropped: AtomicU64,
}

/// What the queue carries to the writer.
enum Entry {
    Event(Box<Event>),
    /// Write and sync it, then say whether it is durable.
    Intent(Box<Intent>, oneshot::Sender<bool>),
    /// Write and sync what came before, then stop (and say so).
    Close(oneshot::Sender<()>),
}

/// The request path's handle on the audit sinks.
pub struct Audit {
    tx: Option<mpsc::Sender<Entry>>,
    block_when_full: bool,
    fail_closed: bool,
    write_ahead: bool,
    shared: Arc<Shared>,
}

impl Audit {
    /// No sinks (`audit.enabled = false`).
    pub fn disabled() -> Self {
        Self {
            tx: None,
            block_when_full: true,
            fail_closed: false,
            write_ahead: false,
            shared: Arc::default(),
        }
    }

    /// Opens the directory (locks it, repairs a torn last line). The writer is returned as a background
    /// service for the server to run: nothing is written until it starts.
    ///
    /// `wait_for_lock` (a graceful upgrade): the gateway being replaced holds the directory's lock until it
    /// has drained, so the writer takes it — and opens the directory — only once it is free; events queue
    /// meanwhile, bounded by `audit.queue` like any backlog.
    pub fn open(cfg: &AuditConfig, wait_for_lock: bool) -> io::Result<(Self, WriterService)> {
        std::fs::create_dir_all(&cfg.dir)?;
        let shared = Arc::new(Shared::default());
        let writer = match Writer::open(cfg, &shared) {
            Ok(w) => Opening::Open(w),
            Err(e) if wait_for_lock && e.kind() == io::ErrorKind::WouldBlock => {
                Opening::AfterLock(Box::new(cfg.clone()), shared.clone())
            }
            Err(e) => return Err(e),
        };
        let (tx, rx) = mpsc::channel(cfg.queue);
        metrics::AUDIT_SINK_UP.set(1);
        let audit = Self {
            tx: Some(tx),
            block_when_full: cfg.block_when_full,
            fail_closed: cfg.fail_closed,
            write_ahead: cfg.write_ahead,
            shared,
        };
        Ok((audit, WriterService(Mutex::new(Some((writer, rx))))))
    }

    /// Queues one event. Never does I/O; waits only when the queue is full and `on_full = "block"`.
    pub async fn record(&self, event: Box<Event>) {
        let Some(tx) = &self.tx else { return };
        metrics::AUDIT_QUEUE_DEPTH.inc();
        PENDING.fetch_add(1, Ordering::AcqRel);
        let entry = Entry::Event(event);
        let sent = if self.block_when_full {
            tx.send(entry).await.is_ok()
        } else {
            tx.try_send(entry).is_ok()
        };
        if !sent {
            PENDING.fetch_sub(1, Ordering::AcqRel);
            metrics::AUDIT_QUEUE_DEPTH.dec();
            metrics::AUDIT_DROPPED.inc();
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Whether new requests must be refused: the file cannot be written and `on_failure = "fail_closed"`.
    /// Under `fail_open`, counts the request served without a durable record.
    pub fn refuses_requests(&self) -> bool {
        if !self.shared.failed.load(Ordering::Relaxed) {
            return false;
        }
        if self.fail_closed {
            return true;
        }
        metrics::FAIL_OPEN.with_label_values(&["audit"]).inc();
        false
    }

    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Whether forwarded requests must first make an intent durable (`durability = "write_ahead"`).
    pub fn write_ahead(&self) -> bool {
        self.write_ahead && self.tx.is_some()
    }

    /// Hands an intent to the writer and waits until it is written and synced (at most [`INTENT_WAIT`],
    /// waiting for room in the queue whatever `on_full` says: an intent is never dropped). `false`: it is
    /// not durable, and the request must not go upstream.
    pub async fn intend(&self, intent: Box<Intent>) -> bool {
        let Some(tx) = &self.tx else { return true };
        if self.shared.failed.load(Ordering::Relaxed) {
            // The writer is retrying a failed write: nothing queued now is synced before it succeeds.
            return false;
        }
        let (ack, durable) = oneshot::channel();
        let waited = tokio::time::timeout(INTENT_WAIT, async {
            // Room first: counted as pending only once it is surely queued.
            let Ok(permit) = tx.reserve().await else {
                return false;
            };
            metrics::AUDIT_QUEUE_DEPTH.inc();
            PENDING.fetch_add(1, Ordering::AcqRel);
            permit.send(Entry::Intent(intent, ack));
            durable.await.unwrap_or(false)
        })
        .await;
        waited.unwrap_or(false)
    }

    /// Makes the writer write and sync everything queued so far and stop, and waits (at most `limit`) until
    /// it has. Called once no request is left to record. `false`: it did not finish in time.
    pub async fn close(&self, limit: Duration) -> bool {
        let Some(tx) = &self.tx else { return true };
        let (done, stopped) = oneshot::channel();
        if tx.send(Entry::Close(done)).await.is_err() {
            return true;
        }
        tokio::time::timeout(limit, stopped).await.is_ok()
    }
}

/// The writer, run by the server as a background service (on a blocking thread: it writes and syncs files).
pub struct WriterService(Mutex<Option<(Opening, mpsc::Receiver<Entry>)>>);

/// The writer, or what it opens once the directory's lock is free (a graceful upgrade).
enum Opening {
    Open(Writer),
    AfterLock(Box<AuditConfig>, Arc<Shared>),
}

/// How often the writer of an upgraded gateway tries the lock its predecessor holds while it drains.
const LOCK_RETRY: Duration = Duration::from_millis(50);

#[async_trait]
impl BackgroundService for WriterService {
    async fn start(&self, _shutdown: ShutdownWatch) {
        // Not stopped by the shutdown signal itself: requests finishing in the grace period still record
        // their events. The drain closes it (`Audit::close`) once the last one is done.
        let taken = self.0.lock().ok().and_then(|mut w| w.take());
        let Some((opening, rx)) = taken else { return };
        let run = move || {
            let writer = match opening {
                Opening::Open(w) => w,
                Opening::AfterLock(cfg, shared) => Writer::open_when_free(&cfg, shared),
            };
            writer.run(rx)
        };
        if let Err(e) = tokio::task::spawn_blocking(run).await {
            tracing::error!("AUDIT SINK FAILING: the writer stopped: {e}");
            metrics::AUDIT_SINK_UP.set(0);
        }
    }
}

/// The writer's state.
pub struct Writer {
    dir: PathBuf,
    fsync: Fsync,
    max_bytes: u64,
    keep: usize,
    protect_undelivered: bool,
    stdout: bool,
    segment: u64,
    file: File,
    len: u64,
    last_sync: Instant,
    /// Written but not yet synced.
    dirty: bool,
    /// The chain's tip: the last line written.
    tip: chain::Tip,
    /// The next write starts a new segment (the current one holds lines from before the chain).
    rotate_next: bool,
    shared: Arc<Shared>,
    _lock: File,
}

impl Writer {
    /// Locks the directory and opens its last segment for appending.
    fn open(cfg: &AuditConfig, shared: &Arc<Shared>) -> io::Result<Self> {
        let lock = segments::lock(&cfg.dir)?;
        let (segment, file, len) = segments::open_last(&cfg.dir)?;
        let resume = segments::resume(&cfg.dir, segment, len)?;
        Ok(Writer {
            dir: cfg.dir.clone(),
            fsync: cfg.fsync,
            max_bytes: cfg.max_file_bytes,
            keep: cfg.keep_files,
            protect_undelivered: cfg.webhook.is_some(),
            stdout: cfg.stdout,
            segment,
            file,
            len,
            last_sync: Instant::now(),
            dirty: false,
            tip: resume.tip,
            rotate_next: resume.rotate,
            shared: shared.clone(),
            _lock: lock,
        })
    }

    /// [`Writer::open`] once the gateway being replaced has released the lock (it does when it has drained
    /// and written its last event, so the two never append to one file at once). Any other failure is retried
    /// every second, reported as a failing sink like a write that fails.
    fn open_when_free(cfg: &AuditConfig, shared: Arc<Shared>) -> Self {
        tracing::info!(dir = %cfg.dir.display(), "audit: waiting for the gateway being replaced to release the directory; events queue meanwhile");
        let mut logged = false;
        loop {
            match Self::open(cfg, &shared) {
                Ok(w) => {
                    tracing::info!(dir = %cfg.dir.display(), "audit: directory taken over");
                    return w;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(LOCK_RETRY),
                Err(e) => {
                    shared.failed.store(true, Ordering::Relaxed);
                    metrics::AUDIT_SINK_UP.set(0);
                    if !logged {
                        tracing::error!(dir = %cfg.dir.display(), "AUDIT SINK FAILING: cannot open the directory ({e}); retrying every second");
                        logged = true;
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
    }

    fn run(mut self, mut rx: mpsc::Receiver<Entry>) {
        let tick = match self.fsync {
            Fsync::Always => Duration::from_secs(3600),
            Fsync::Interval(d) => d,
        };
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!("AUDIT SINK FAILING: cannot start the writer: {e}");
                self.shared.failed.store(true, Ordering::Relaxed);
                metrics::AUDIT_SINK_UP.set(0);
                return;
            }
        };
        let mut batch: Vec<Vec<u8>> = Vec::with_capacity(BATCH);
        // The intents of the batch, acknowledged once it is synced.
        let mut waiters: Vec<oneshot::Sender<bool>> = Vec::new();
        let mut busy = false;
        let mut closing: Option<oneshot::Sender<()>> = None;
        loop {
            // Busy: take what arrived over a short nap without being woken for each event (a wake-up is a
            // syscall on the request's thread). Idle: wait to be woken by the next event, or for the
            // interval to flush what is written.
            if busy {
                std::thread::sleep(BUSY_NAP);
            } else {
                match recv_timeout(&rt, &mut rx, tick) {
                    Recv::Entry(Entry::Event(e)) => batch.push(e.to_line()),
                    Recv::Entry(Entry::Intent(i, ack)) => {
                        batch.push(i.to_line());
                        waiters.push(ack);
                    }
                    Recv::Entry(Entry::Close(done)) => closing = Some(done),
                    Recv::Timeout => {
                        self.sync_if_due(true);
                        continue;
                    }
                    Recv::Closed => break,
                }
            }
            let mut closed = closing.is_some();
            while batch.len() < BATCH && !closed {
                match rx.try_recv() {
                    // Serialised here, on the writer's thread, not on the request's.
                    Ok(Entry::Event(e)) => batch.push(e.to_line()),
                    Ok(Entry::Intent(i, ack)) => {
                        batch.push(i.to_line());
                        waiters.push(ack);
                    }
                    Ok(Entry::Close(done)) => {
                        closing = Some(done);
                        closed = true;
                    }
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        closed = true;
                        break;
                    }
                }
            }
            // Requests waiting on intents (write_ahead) are not made to wait out a nap as well: the next
            // group forms while this one is written and synced.
            busy = !batch.is_empty() && waiters.is_empty();
            if !batch.is_empty() {
                let taken = batch.len() as i64;
                let dropped = self.shared.dropped.swap(0, Ordering::Relaxed);
                if dropped > 0 {
                    batch.push(gap_record(dropped));
                }
                self.write_until_done(&batch, &mut waiters);
                metrics::AUDIT_QUEUE_DEPTH.sub(taken);
                PENDING.fetch_sub(taken as usize, Ordering::AcqRel);
                batch.clear();
            }
            if closed {
                break;
            }
        }
        self.sync_if_due(true);
        if let Some(done) = closing {
            let _ = done.send(());
        }
    }

    /// Writes a batch, retrying every second while the disk refuses; the batch is never given up. Its intents
    /// are acknowledged once it is synced, or refused at the first failure (their requests are not held for
    /// the retries). A retry resumes after the lines already written.
    fn write_until_done(&mut self, batch: &[Vec<u8>], waiters: &mut Vec<oneshot::Sender<bool>>) {
        let mut logged = false;
        let mut done = 0;
        loop {
            match self.write(batch, &mut done) {
                Ok(()) => {
                    if !waiters.is_empty() {
                        // Durable only once synced, whatever `fsync` says for plain events.
                        let durable = self.sync_now();
                        for w in waiters.drain(..) {
                            let _ = w.send(durable);
                        }
                    }
                    if self.shared.failed.swap(false, Ordering::Relaxed) {
                        tracing::warn!("audit: the event file is writable again");
                    }
                    metrics::AUDIT_SINK_UP.set(1);
                    metrics::AUDIT_WRITTEN.inc_by(batch.len() as u64);
                    return;
                }
                Err(e) => {
                    self.shared.failed.store(true, Ordering::Relaxed);
                    metrics::AUDIT_SINK_UP.set(0);
                    metrics::AUDIT_WRITE_ERRORS.inc();
                    for w in waiters.drain(..) {
                        let _ = w.send(false);
                    }
                    if !logged {
                        tracing::error!(
                            dir = %self.dir.display(),
                            "AUDIT SINK FAILING: cannot write decision events ({e}); retrying every second; \
                             audit.on_failure decides whether requests are refused meanwhile"
                        );
                        logged = true;
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
    }

    /// Seals the batch's lines from `done` on into the chain and appends them, rotating wherever the next
    /// line would take the segment past `max_file_bytes` (a batch is not a unit of rotation: however many
    /// events a busy moment gathers, a segment holds at most its size, or one line larger than it). A
    /// segment's first write opens with its header. `done` counts the lines written; on failure the file is
    /// cut back to its last complete line and the chain's tip restored, so a retry writes the same sequence.
    fn write(&mut self, batch: &[Vec<u8>], done: &mut usize) -> io::Result<()> {
        // What sealing adds per line: `,"seq":N,"chain":"<64 hex>"` and the newline.
        const SEAL: u64 = 100;
        // A segment's sealed header line, at most (its segment number, previous link and time).
        const HEADER: u64 = 160 + SEAL;
        while *done < batch.len() {
            let first = batch[*done].len() as u64 + SEAL;
            if self.rotate_next || (self.len > 0 && self.len + first > self.max_bytes) {
                self.rotate()?;
            }
            // The lines that fit in this segment (at least one).
            let mut size = first + if self.len == 0 { HEADER } else { 0 };
            let mut end = *done + 1;
            while let Some(line) = batch.get(end) {
                let next = line.len() as u64 + SEAL;
                if self.len + size + next > self.max_bytes {
                    break;
                }
                size += next;
                end += 1;
            }
            self.append(&batch[*done..end], size)?;
            *done = end;
        }
        Ok(())
    }

    fn append(&mut self, lines: &[Vec<u8>], size: u64) -> io::Result<()> {
        let before = self.tip;
        let mut buf = Vec::with_capacity(size as usize + 256);
        if self.len == 0 {
            let header = chain::header(
                self.segment,
                &self.tip.link,
                &event::rfc3339(SystemTime::now()),
            );
            buf.extend_from_slice(&self.tip.seal(header));
            buf.push(b'\n');
        }
        let header_len = buf.len();
        for line in lines {
            buf.extend_from_slice(&self.tip.seal(line.clone()));
            buf.push(b'\n');
        }
        if let Err(e) = self.file.write_all(&buf) {
            // A partial write leaves a torn line: cut back to the last complete event before retrying.
            let _ = self.file.set_len(self.len);
            self.tip = before;
            return Err(e);
        }
        self.len += buf.len() as u64;
        self.dirty = true;
        self.sync_if_due(false);
        if self.stdout {
            // The records, not the file's segment headers.
            let mut out = io::stdout().lock();
            let _ = out.write_all(&buf[header_len..]).and_then(|()| out.flush());
        }
        Ok(())
    }

    /// Syncs now if anything is unsynced; whether what was written is on disk.
    fn sync_now(&mut self) -> bool {
        if self.dirty {
            if let Err(e) = self.file.sync_data() {
                tracing::error!("audit: fsync failed: {e}");
                self.shared.failed.store(true, Ordering::Relaxed);
                metrics::AUDIT_SINK_UP.set(0);
                return false;
            }
            self.dirty = false;
            self.last_sync = Instant::now();
        }
        true
    }

    fn sync_if_due(&mut self, idle: bool) {
        if !self.dirty {
            return;
        }
        let due = match self.fsync {
            Fsync::Always => true,
            Fsync::Interval(d) => idle || self.last_sync.elapsed() >= d,
        };
        if due {
            if let Err(e) = self.file.sync_data() {
                tracing::error!("audit: fsync failed: {e}");
                self.shared.failed.store(true, Ordering::Relaxed);
                metrics::AUDIT_SINK_UP.set(0);
                return;
            }
            self.dirty = false;
            self.last_sync = Instant::now();
        }
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file.sync_data()?;
        let next = self.segment + 1;
        let file = std::fs::OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(segments::path(&self.dir, next))?;
        if let Ok(d) = File::open(&self.dir) {
            let _ = d.sync_all();
        }
        self.file = file;
        self.segment = next;
        self.len = 0;
        self.rotate_next = false;
        let protect = if self.protect_undelivered {
            // Not delivered yet: from the cursor's segment on (or everything, before the first delivery).
            Some(segments::read_cursor(&self.dir).map_or(0, |c| c.segment))
        } else {
            None
        };
        segments::enforce_retention(&self.dir, self.keep, protect, self.segment);
        Ok(())
    }
}

enum Recv {
    Entry(Entry),
    Timeout,
    Closed,
}

/// A blocking receive with a timeout, on the writer thread's own small runtime.
fn recv_timeout(
    rt: &tokio::runtime::Runtime,
    rx: &mut mpsc::Receiver<Entry>,
    limit: Duration,
) -> Recv {
    match rt.block_on(async { tokio::time::timeout(limit, rx.recv()).await }) {
        Ok(Some(e)) => Recv::Entry(e),
        Ok(None) => Recv::Closed,
        Err(_) => Recv::Timeout,
    }
}

/// The record left where events were dropped (`audit.on_full = "drop"`).
fn gap_record(dropped: u64) -> Vec<u8> {
    serde_json::json!({
        "type": "audit.gap",
        "event_id": uuid::Uuid::new_v4().to_string(),
        "ts": event::rfc3339(SystemTime::now()),
        "dropped": dropped,
    })
    .to_string()
    .into_bytes()
}
