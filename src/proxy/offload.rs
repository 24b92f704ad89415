//! Large inspections run off the I/O worker. Inspecting a body is CPU work proportional to its size; done on
//! the worker thread that also drives other connections, one multi-megabyte body would stall every request
//! that worker serves. Work on more than [`INLINE_BYTES`] goes to a blocking thread instead, with at most as
//! many running at once as the proxy has worker threads (a semaphore: excess large inspections wait their
//! turn rather than crowd out the rest). Small inspections — nearly all of them — stay inline: a thread hand-off
//! would cost more than the work.

use std::sync::Arc;

use tokio::sync::Semaphore;

/// Work on inputs up to this size runs on the worker that received them.
pub const INLINE_BYTES: usize = 128 * 1024;

/// The blocking threads large inspections run on.
#[derive(Clone)]
pub struct Offload {
    slots: Arc<Semaphore>,
}

impl Offload {
    /// At most `parallel` large inspections at once.
    pub fn new(parallel: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(parallel.max(1))),
        }
    }

    /// Runs `work` (on an input of `size` bytes) inline when small, else on a blocking thread. `None`: the work
    /// panicked or could not be run — the caller fails closed.
    pub async fn run<T: Send + 'static>(
        &self,
        size: usize,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        if size <= INLINE_BYTES {
            return Some(work());
        }
        let _slot = self.slots.acquire().await.ok()?;
        tokio::task::spawn_blocking(work).await.ok()
    }
}
