//! The audit directory: numbered JSONL segments (`events-00000001.jsonl`, …), the webhook's cursor
//! (`webhook.cursor`) and a lock file that keeps a second gateway out. Every complete line of a segment is
//! one event; a line without its newline (a write cut short by a crash) is not an event and is cut off when
//! the directory is opened again. Every line is sealed into the hash chain (`chain.rs`); [`resume`] finds
//! where the chain stands so a restarted writer continues it from the last whole line.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::chain::{self, Tip};

const PREFIX: &str = "events-";
const SUFFIX: &str = ".jsonl";
const CURSOR: &str = "webhook.cursor";
const LOCK: &str = ".lock";

/// The segment numbers in `dir`, ascending.
pub fn list(dir: &Path) -> io::Result<Vec<u64>> {
    numbered(dir, SUFFIX)
}

/// The numbers `N` of the files `events-N<suffix>` in `dir`, ascending: the segments (`.jsonl`) or a file kept
/// beside each (the usage rollups, `.usage`).
pub fn numbered(dir: &Path, suffix: &str) -> io::Result<Vec<u64>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if !entry.file_type()?.is_file() {
            continue;
        }
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(n) = name
            .strip_prefix(PREFIX)
            .and_then(|r| r.strip_suffix(suffix))
            .and_then(|n| n.parse::<u64>().ok())
        {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

pub fn path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{PREFIX}{n:08}{SUFFIX}"))
}

/// Takes the directory's lock for this process (released when the file is dropped or the process dies).
pub fn lock(dir: &Path) -> io::Result<File> {
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(LOCK))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            "another gateway is writing to this directory",
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

/// Opens the last segment for appending (creating the first one), after cutting off a torn last line.
/// Returns the segment number, the file and its length.
pub fn open_last(dir: &Path) -> io::Result<(u64, File, u64)> {
    let n = list(dir)?.last().copied().unwrap_or(1);
    let p = path(dir, n);
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .append(true)
        .open(&p)?;
    let len = f.metadata()?.len();
    let kept = complete_len(&mut f, len)?;
    if kept < len {
        tracing::warn!(
            segment = %p.display(),
            cut = len - kept,
            "audit: the last event was cut short (crash); removing its partial line"
        );
        f.set_len(kept)?;
        f.sync_all()?;
    }
    Ok((n, f, kept))
}

/// The length of the file up to and including its last newline.
pub(crate) fn complete_len(f: &mut File, len: u64) -> io::Result<u64> {
    let mut end = len;
    let mut buf = vec![0u8; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(end - start) as usize];
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(chunk)?;
        if let Some(i) = memchr::memrchr(b'\n', chunk) {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

/// The longest line read back when looking for the chain's tip: far above any event the writer makes.
const MAX_LINE: u64 = 16 << 20;

/// Where a (re)opened writer continues the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resume {
    /// The last whole line's `seq` and chain value (or the start, for an empty directory).
    pub tip: Tip,
    /// The last segment ends with lines written before the chain existed: the next write starts a fresh
    /// segment, so every sealed segment is sealed from its first line.
    pub rotate: bool,
}

/// Finds the chain's tip: the last whole line of the newest segment that has one (`current` is the segment
/// being continued, `current_len` its length after a torn line was cut).
pub fn resume(dir: &Path, current: u64, current_len: u64) -> io::Result<Resume> {
    let mut candidates: Vec<u64> = list(dir)?.into_iter().filter(|n| *n <= current).collect();
    candidates.reverse();
    for n in candidates {
        let mut f = File::open(path(dir, n))?;
        let len = if n == current {
            current_len
        } else {
            let len = f.metadata()?.len();
            complete_len(&mut f, len)?
        };
        let Some(line) = last_line(&mut f, len)? else {
            continue;
        };
        return Ok(match chain::tip_of(&line) {
            Some(tip) => Resume { tip, rotate: false },
            None => Resume {
                tip: Tip::START,
                rotate: n == current,
            },
        });
    }
    Ok(Resume {
        tip: Tip::START,
        rotate: false,
    })
}

/// The last line of the first `len` bytes (which end with a newline), without its newline.
fn last_line(f: &mut File, len: u64) -> io::Result<Option<Vec<u8>>> {
    if len == 0 {
        return Ok(None);
    }
    let end = len - 1;
    let mut start = end;
    let mut buf = vec![0u8; 64 * 1024];
    // Back from the end to the newline before the last line (or the file's start).
    while start > 0 {
        let from = start.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(start - from) as usize];
        f.seek(SeekFrom::Start(from))?;
        f.read_exact(chunk)?;
        if let Some(i) = memchr::memrchr(b'\n', chunk) {
            start = from + i as u64 + 1;
            break;
        }
        start = from;
        if end - start > MAX_LINE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the last audit line is longer than 16 MiB",
            ));
        }
    }
    let mut line = vec![0u8; (end - start) as usize];
    f.seek(SeekFrom::Start(start))?;
    f.read_exact(&mut line)?;
    Ok(Some(line))
}

/// Where the webhook has delivered up to: a segment and a byte offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Cursor {
    pub segment: u64,
    pub offset: u64,
}

pub fn read_cursor(dir: &Path) -> Option<Cursor> {
    let text = std::fs::read(dir.join(CURSOR)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Persists the cursor atomically (a temporary file renamed over the old one). Not fsynced: delivery is at
/// least once, so a cursor lost to a power cut only means a batch is sent again.
pub fn write_cursor(dir: &Path, c: Cursor) -> io::Result<()> {
    let tmp = dir.join(format!("{CURSOR}.tmp"));
    let mut f = File::create(&tmp)?;
    f.write_all(&serde_json::to_vec(&c).map_err(io::Error::other)?)?;
    std::fs::rename(&tmp, dir.join(CURSOR))
}

/// Deletes the oldest segments beyond `keep`, but never one at or past `protect` (the webhook cursor's
/// segment: not yet delivered) nor the segment being written.
pub fn enforce_retention(dir: &Path, keep: usize, protect: Option<u64>, current: u64) {
    let Ok(all) = list(dir) else { return };
    if all.len() <= keep {
        return;
    }
    for n in &all[..all.len() - keep] {
        if *n >= current || protect.is_some_and(|p| *n >= p) {
            break;
        }
        if let Err(e) = std::fs::remove_file(path(dir, *n)) {
            tracing::warn!("audit: cannot remove an old segment: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_torn_last_line_is_cut_and_the_lock_is_exclusive() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(path(dir.path(), 3), b"{\"a\":1}\n{\"b\":").expect("write");
        std::fs::write(path(dir.path(), 2), b"{\"old\":1}\n").expect("write");
        let (n, _f, len) = open_last(dir.path()).expect("open");
        assert_eq!((n, len), (3, 8));
        assert_eq!(
            std::fs::read(path(dir.path(), 3)).expect("read"),
            b"{\"a\":1}\n"
        );
        let _held = lock(dir.path()).expect("first lock");
        assert!(lock(dir.path()).is_err(), "a second lock was granted");
        write_cursor(
            dir.path(),
            Cursor {
                segment: 2,
                offset: 5,
            },
        )
        .expect("cursor");
        assert_eq!(
            read_cursor(dir.path()),
            Some(Cursor {
                segment: 2,
                offset: 5
            })
        );
        enforce_retention(dir.path(), 1, Some(2), 3);
        assert_eq!(
            list(dir.path()).expect("list"),
            [2, 3],
            "an undelivered segment was removed"
        );
        enforce_retention(dir.path(), 1, None, 3);
        assert_eq!(list(dir.path()).expect("list"), [3]);
    }
}

#[cfg(test)]
mod resume_tests {
    use super::*;

    #[test]
    fn resume_continues_from_the_last_whole_line_of_the_newest_segment_that_has_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut tip = Tip::START;
        let mut text = tip.seal(chain::header(1, &tip.link, "t"));
        text.push(b'\n');
        text.extend_from_slice(&tip.seal(br#"{"type":"chat.message"}"#.to_vec()));
        text.push(b'\n');
        std::fs::write(path(dir.path(), 1), &text).expect("write");
        // A crash right after a rotation: the new segment is empty.
        std::fs::write(path(dir.path(), 2), b"").expect("write");
        let (n, _f, len) = open_last(dir.path()).expect("open");
        assert_eq!(
            resume(dir.path(), n, len).expect("resume"),
            Resume { tip, rotate: false }
        );
        // Lines from before the chain: start it afresh, in a new segment.
        std::fs::write(path(dir.path(), 2), b"{\"type\":\"chat.message\"}\n").expect("write");
        let (n, _f, len) = open_last(dir.path()).expect("open");
        assert_eq!(
            resume(dir.path(), n, len).expect("resume"),
            Resume {
                tip: Tip::START,
                rotate: true
            }
        );
    }
}
