//! Usage: how many requests and tokens each caller, tenant and model spent, hour by hour, read from the
//! durable audit files so it survives restarts.
//!
//! The audit directory's segments are the source of truth. Each closed segment (one the writer has rotated
//! away from: immutable from then on) gets a compact per-hour rollup written beside it (`sidecar`:
//! `events-NNNNNNNN.usage`, sums per hour × caller × tenant × model), made from the segment when it is
//! missing, stale (made from a segment of another length) or damaged (checksum). The segment being written
//! is read on incrementally: the offset reached and its partial sums are kept in memory between questions (a
//! restart reads it once again). A question adds up rollups, never events (`query`), so it costs the number
//! of cells, not of events.
//!
//! Retention: `audit.keep_files` deletes old segments, not their rollups. A rollup whose segment is gone is
//! still counted (reported as `orphan_rollups`): usage outlives the raw events, which is what billing needs,
//! and a rollup holds only ids, counts and hours (no content). Rollups are small (one line per hour × caller ×
//! tenant × model seen in the segment); delete old `events-*.usage` files by hand to forget old usage.
//!
//! The gateway keeps one [`UsageIndex`] behind a mutex, brought up to date by a background service every few
//! seconds and by each `GET /usage`, always on a blocking thread (file work never runs on the admin
//! listener's or the proxy's runtime threads). `promptgate usage` builds its own from the files (and writes
//! the rollups it had to make, when it may), so it can run beside a live gateway.

pub mod cli;
pub mod index;
pub mod query;
pub mod rollup;
pub mod sidecar;
pub mod time;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

pub use index::UsageIndex;
pub use query::{ParamError, Query};

/// How often the background service brings the rollups up to date.
const REFRESH_EVERY: Duration = Duration::from_secs(10);

/// The gateway's usage of its audit directory, shared by the admin endpoint and the background service.
pub struct Usage {
    index: Arc<Mutex<UsageIndex>>,
}

impl Usage {
    pub fn new(dir: PathBuf) -> Arc<Self> {
        Arc::new(Self {
            index: Arc::new(Mutex::new(UsageIndex::new(dir))),
        })
    }

    /// Answers `q` on a blocking thread.
    pub async fn query(&self, q: Query) -> std::io::Result<serde_json::Value> {
        let index = self.index.clone();
        tokio::task::spawn_blocking(move || {
            let mut ix = index.lock().unwrap_or_else(|p| p.into_inner());
            ix.query(&q)
        })
        .await
        .map_err(std::io::Error::other)?
    }

    /// The background service that makes rollups soon after a segment is closed and keeps the active one read,
    /// so a question rarely waits for either.
    pub fn service(self: &Arc<Self>) -> RollupService {
        RollupService(self.clone())
    }
}

/// Brings the rollups up to date every [`REFRESH_EVERY`] until shutdown.
pub struct RollupService(Arc<Usage>);

#[async_trait]
impl BackgroundService for RollupService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                () = tokio::time::sleep(REFRESH_EVERY) => {}
            }
            let index = self.0.index.clone();
            let done = tokio::task::spawn_blocking(move || {
                let mut ix = index.lock().unwrap_or_else(|p| p.into_inner());
                ix.refresh()
            })
            .await;
            match done {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!("usage: cannot read the audit directory: {e}"),
                Err(e) => tracing::warn!("usage: the rollup task failed: {e}"),
            }
        }
    }
}
