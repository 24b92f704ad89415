//! The usage of one audit directory, kept current between questions: the rollup of every closed segment
//! (read from its rollup file, or made from the segment and written beside it) and the running rollup of the
//! segment being written, read on from where the last call stopped.
//!
//! Does file I/O: the gateway calls it on a blocking thread, never on a runtime thread.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::query::{self, Query, Sources};
use super::rollup::Rollup;
use super::sidecar;
use crate::audit::segments;

/// How much of the segment being written is read at a time.
const CHUNK: usize = 4 << 20;

/// A closed segment's rollup held in memory, with what its file looked like when it was read or written
/// (so a file deleted, replaced or damaged since is noticed).
struct Closed {
    rollup: Rollup,
    file: Option<(u64, Option<SystemTime>)>,
    segment_bytes: u64,
}

/// The segment being written: read up to `offset`.
struct Active {
    segment: u64,
    offset: u64,
    rollup: Rollup,
}

/// The usage of an audit directory.
pub struct UsageIndex {
    dir: PathBuf,
    closed: BTreeMap<u64, Closed>,
    active: Option<Active>,
}

fn file_stamp(p: &Path) -> Option<(u64, Option<SystemTime>)> {
    let m = std::fs::metadata(p).ok()?;
    Some((m.len(), m.modified().ok()))
}

impl UsageIndex {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            closed: BTreeMap::new(),
            active: None,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Brings every rollup up to date with the directory: closed segments' rollups read or made (and their
    /// files written), the segment being written read on. Returns what it did.
    pub fn refresh(&mut self) -> io::Result<Sources> {
        let mut src = Sources::default();
        let segs = segments::list(&self.dir)?;
        let cars = sidecar::list(&self.dir)?;
        let last = segs.last().copied();
        src.segments = segs.len() as u64;
        let mut numbers: Vec<u64> = segs.iter().chain(&cars).copied().collect();
        numbers.sort_unstable();
        numbers.dedup();
        self.closed.retain(|n, _| numbers.binary_search(n).is_ok());
        for n in numbers {
            if Some(n) == last {
                continue;
            }
            // Past the segment being written: a rollup file of a segment not made yet (or of another run).
            if last.is_some_and(|l| n > l) {
                src.unusable += 1;
                continue;
            }
            let segment_bytes = segs
                .binary_search(&n)
                .ok()
                .and_then(|_| std::fs::metadata(segments::path(&self.dir, n)).ok())
                .map(|m| m.len());
            self.closed_one(n, segment_bytes, &mut src);
        }
        if let Some(last) = last {
            src.active_bytes_scanned = self.read_active(last)?;
        } else {
            self.active = None;
        }
        src.rollups = self.closed.len() as u64;
        Ok(src)
    }

    /// Makes sure closed segment `n` (of `segment_bytes`, `None` if retention deleted it) has a usable
    /// rollup in memory and on disk.
    fn closed_one(&mut self, n: u64, segment_bytes: Option<u64>, src: &mut Sources) {
        let car = sidecar::path(&self.dir, n);
        let stamp = file_stamp(&car);
        if let Some(c) = self.closed.get(&n) {
            let same_segment = segment_bytes.is_none_or(|b| b == c.segment_bytes);
            if same_segment && stamp.is_some() && stamp == c.file {
                if segment_bytes.is_none() {
                    src.orphan_rollups += 1;
                }
                return;
            }
        }
        // Read the file if it is there and agrees with its segment.
        let read = stamp.and_then(|_| match std::fs::read(&car) {
            Ok(bytes) => match sidecar::decode(&bytes) {
                Ok(d) if d.segment == n && segment_bytes.is_none_or(|b| b == d.segment_bytes) => Some(d),
                Ok(_) => {
                    tracing::info!(rollup = %car.display(), "usage: the rollup is stale; rolling the segment up again");
                    None
                }
                Err(e) => {
                    tracing::warn!(rollup = %car.display(), "usage: the rollup is unusable ({e}); rolling the segment up again");
                    None
                }
            },
            Err(_) => None,
        });
        if let Some(mut d) = read {
            d.rollup.freeze();
            if segment_bytes.is_none() {
                src.orphan_rollups += 1;
            }
            self.closed.insert(
                n,
                Closed {
                    rollup: d.rollup,
                    file: stamp,
                    segment_bytes: d.segment_bytes,
                },
            );
            return;
        }
        let Some(len) = segment_bytes else {
            // Damaged and its segment gone: nothing to make it again from.
            src.unusable += 1;
            self.closed.remove(&n);
            return;
        };
        let mut rollup = match self.closed.remove(&n) {
            // Already in memory and still right for its segment: only the file is missing or damaged.
            Some(c) if c.segment_bytes == len => c.rollup,
            _ => match self.roll_up(n, len) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(segment = n, "usage: cannot read the segment: {e}");
                    src.unusable += 1;
                    return;
                }
            },
        };
        rollup.freeze();
        src.rebuilt += 1;
        let file = match sidecar::write(&self.dir, n, &sidecar::encode(n, len, &rollup)) {
            Ok(()) => file_stamp(&car),
            Err(e) => {
                src.unwritten += 1;
                tracing::debug!(segment = n, "usage: cannot write the rollup: {e}");
                None
            }
        };
        self.closed.insert(
            n,
            Closed {
                rollup,
                file,
                segment_bytes: len,
            },
        );
    }

    /// The rollup of closed segment `n`, `len` bytes long: what was read of it while it was being written,
    /// plus the rest (or all of it).
    fn roll_up(&mut self, n: u64, len: u64) -> io::Result<Rollup> {
        let (mut rollup, offset) = match self.active.take() {
            Some(a) if a.segment == n && a.offset <= len => (a.rollup, a.offset),
            other => {
                self.active = other;
                (Rollup::default(), 0)
            }
        };
        read_lines(&segments::path(&self.dir, n), offset, len, &mut rollup)?;
        Ok(rollup)
    }

    /// Reads the segment being written on from where the last call stopped; returns the bytes read.
    fn read_active(&mut self, n: u64) -> io::Result<u64> {
        let path = segments::path(&self.dir, n);
        let len = match std::fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        let mut a = match self.active.take() {
            // The same file, not shorter (a restart cuts a torn last line: then read it again).
            Some(a) if a.segment == n && a.offset <= len => a,
            _ => Active {
                segment: n,
                offset: 0,
                rollup: Rollup::default(),
            },
        };
        let start = a.offset;
        a.offset = read_lines(&path, start, len, &mut a.rollup)?;
        let read = a.offset - start;
        self.active = Some(a);
        Ok(read)
    }

    /// Refreshes, then answers `q`.
    pub fn query(&mut self, q: &Query) -> io::Result<serde_json::Value> {
        let mut src = self.refresh()?;
        let rollups = self
            .closed
            .values()
            .map(|c| &c.rollup)
            .chain(self.active.as_ref().map(|a| &a.rollup));
        src.unreadable_lines = self
            .closed
            .values()
            .map(|c| c.rollup.unreadable)
            .chain(self.active.as_ref().map(|a| a.rollup.unreadable))
            .sum();
        Ok(query::answer(q, rollups, &src))
    }
}

/// Counts the complete lines of `path` between `from` and `to` into `rollup`, a bounded chunk at a time;
/// returns where the last complete line ended.
fn read_lines(path: &Path, from: u64, to: u64, rollup: &mut Rollup) -> io::Result<u64> {
    if to <= from {
        return Ok(from);
    }
    let mut f = File::open(path)?;
    f.seek(SeekFrom::Start(from))?;
    let mut f = f.take(to - from);
    let mut buf: Vec<u8> = Vec::with_capacity(CHUNK.min((to - from) as usize + 1));
    let mut done = from;
    loop {
        let have = buf.len();
        let want = CHUNK.max(have + CHUNK / 4);
        buf.resize(want, 0);
        let n = f.read(&mut buf[have..])?;
        buf.truncate(have + n);
        if n == 0 {
            break;
        }
        let used = rollup.scan(&buf);
        done += used as u64;
        buf.drain(..used);
        // A line longer than the buffer grows it (an event line is bounded by what the writer writes).
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::query::MAX_PAGE_SIZE;

    fn ev(key: &str, hour: u32, tokens: u64) -> String {
        format!(
            "{{\"type\":\"chat.message\",\"ts\":\"2026-11-03T{hour:02}:10:00.000Z\",\"key_id\":\"{key}\",\"tenant\":\"t\",\"model\":\"m\",\"decision\":{{\"request\":\"allow\",\"response\":\"allow\"}},\"usage\":{{\"prompt_tokens\":{tokens},\"completion_tokens\":1,\"total_tokens\":{}}}}}\n",
            tokens + 1
        )
    }

    fn total(ix: &mut UsageIndex) -> (u64, u64, serde_json::Value) {
        let q = Query::parse([], MAX_PAGE_SIZE).expect("query");
        let v = ix.query(&q).expect("query");
        (
            v["totals"]["requests"].as_u64().unwrap_or(0),
            v["totals"]["input_tokens"].as_u64().unwrap_or(0),
            v["sources"].clone(),
        )
    }

    #[test]
    fn closed_segments_get_rollups_the_active_one_is_read_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        std::fs::write(segments::path(d, 1), ev("a", 1, 10) + &ev("b", 2, 20)).expect("w");
        std::fs::write(segments::path(d, 2), ev("a", 3, 5)).expect("w");
        let mut ix = UsageIndex::new(d);
        let (req, tok, src) = total(&mut ix);
        assert_eq!((req, tok), (3, 35));
        assert_eq!(src["rebuilt"], 1);
        assert!(sidecar::path(d, 1).is_file());
        assert!(
            !sidecar::path(d, 2).exists(),
            "the active segment got a rollup"
        );
        // Appended, with a line still being written.
        let mut more = ev("a", 3, 7);
        more.push_str("{\"type\":\"chat.mess");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(segments::path(d, 2))
            .expect("open");
        std::io::Write::write_all(&mut f, more.as_bytes()).expect("append");
        let (req, tok, src) = total(&mut ix);
        assert_eq!((req, tok), (4, 42));
        assert_eq!(src["rebuilt"], 0);
        assert_eq!(src["active_bytes_scanned"], ev("a", 3, 7).len());
        // The line finished; then rotation.
        let rest = ev("c", 4, 100);
        let tail = &rest["{\"type\":\"chat.mess".len()..];
        std::io::Write::write_all(&mut f, tail.as_bytes()).expect("append");
        std::fs::write(segments::path(d, 3), ev("z", 5, 1000)).expect("w");
        let (req, tok, src) = total(&mut ix);
        assert_eq!((req, tok), (6, 1142));
        assert_eq!(src["rebuilt"], 1);
        // A fresh reader (another process) gets the same from the files.
        let (req2, tok2, src2) = total(&mut UsageIndex::new(d));
        assert_eq!((req2, tok2), (req, tok));
        assert_eq!(src2["rebuilt"], 0);
        // Damaged rollup: made again; deleted: made again from memory.
        std::fs::write(sidecar::path(d, 1), b"{\"type\":\"usage.rollup\"}\n").expect("w");
        let (req, _, src) = total(&mut ix);
        assert_eq!((req, src["rebuilt"].as_u64()), (6, Some(1)));
        std::fs::remove_file(sidecar::path(d, 2)).expect("rm");
        let (req, _, src) = total(&mut ix);
        assert_eq!((req, src["rebuilt"].as_u64()), (6, Some(1)));
        assert!(sidecar::path(d, 2).is_file());
        // Retention deleted segment 1: its rollup still counts.
        std::fs::remove_file(segments::path(d, 1)).expect("rm");
        let (req, _, src) = total(&mut UsageIndex::new(d));
        assert_eq!((req, src["orphan_rollups"].as_u64()), (6, Some(1)));
    }

    #[test]
    fn a_stale_rollup_is_made_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        std::fs::write(segments::path(d, 1), ev("a", 1, 10)).expect("w");
        std::fs::write(segments::path(d, 2), b"").expect("w");
        let mut r = Rollup::default();
        r.scan(ev("a", 1, 999).as_bytes());
        // A rollup of a segment of another length (the directory was reused).
        std::fs::write(sidecar::path(d, 1), sidecar::encode(1, 3, &r)).expect("w");
        let (req, tok, src) = total(&mut UsageIndex::new(d));
        assert_eq!((req, tok, src["rebuilt"].as_u64()), (1, 10, Some(1)));
    }
}
