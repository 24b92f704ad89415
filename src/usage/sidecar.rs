//! The rollup file beside a closed segment: `events-NNNNNNNN.usage` holds the per-hour sums of
//! `events-NNNNNNNN.jsonl`. A segment is immutable once the writer has moved on to the next one, so its rollup
//! is made once and read instead of the segment from then on.
//!
//! The format is text, one line each: a JSON header (`type: "usage.rollup"`, the format version, the segment
//! number and its length in bytes when it was rolled up, the counts, the name table), one line per cell
//! (`hour key tenant model requests input output total blocked redacted`, decimal, names as 1-based indexes
//! into the table, 0 for none), and a JSON footer with the row count and an FNV-1a 64 checksum of every byte
//! before it. A file whose footer is missing (torn), whose checksum or counts disagree, or whose
//! `segment_bytes` is not the segment's length, is not used: the segment is rolled up again.
//!
//! Written atomically: a temporary file in the same directory, renamed over the old one. Not fsynced: a
//! rollup lost or torn by a power cut is detected and made again from its segment.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use super::rollup::{Cell, Rollup, Sums};

const PREFIX: &str = "events-";
const SUFFIX: &str = ".usage";
const VERSION: u32 = 1;
const HEADER: &str = "usage.rollup";
const FOOTER: &str = "usage.end";

/// The rollup file of segment `n`.
pub fn path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{PREFIX}{n:08}{SUFFIX}"))
}

/// The segment numbers that have a rollup file in `dir`, ascending.
pub fn list(dir: &Path) -> io::Result<Vec<u64>> {
    crate::audit::segments::numbered(dir, SUFFIX)
}

#[derive(Serialize, Deserialize)]
struct Header {
    #[serde(rename = "type")]
    kind: String,
    version: u32,
    segment: u64,
    segment_bytes: u64,
    events: u64,
    unreadable: u64,
    rows: u64,
    names: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct Footer {
    #[serde(rename = "type")]
    kind: String,
    rows: u64,
    checksum: String,
}

/// A rollup read back from its file.
#[derive(Debug)]
pub struct Decoded {
    pub segment: u64,
    /// The segment's length when it was rolled up.
    pub segment_bytes: u64,
    pub rollup: Rollup,
}

/// Why a rollup file is not used.
#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    #[error("not a usage rollup (header)")]
    Header,
    #[error("format version {0} (this build reads {VERSION})")]
    Version(u32),
    #[error("cut short (no footer)")]
    Torn,
    #[error("checksum mismatch")]
    Checksum,
    #[error("row {0} is malformed")]
    Row(u64),
    #[error("holds {found} rows, says {said}")]
    Count { found: u64, said: u64 },
}

/// FNV-1a, 64 bits: catches a flipped digit that would still parse.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The file's bytes for `rollup` of segment `segment` (`segment_bytes` long). Rows are sorted: the same
/// rollup always makes the same file.
pub fn encode(segment: u64, segment_bytes: u64, rollup: &Rollup) -> Vec<u8> {
    let mut rows: Vec<(&Cell, &Sums)> = rollup.cells().collect();
    rows.sort_unstable_by_key(|(c, _)| **c);
    let header = Header {
        kind: HEADER.into(),
        version: VERSION,
        segment,
        segment_bytes,
        events: rollup.events,
        unreadable: rollup.unreadable,
        rows: rows.len() as u64,
        names: rollup.names().iter().map(|n| n.to_string()).collect(),
    };
    let mut out = serde_json::to_vec(&header).unwrap_or_default();
    out.push(b'\n');
    for (c, s) in rows {
        use std::fmt::Write as _;
        let mut line = String::with_capacity(64);
        let _ = write!(line, "{} {} {} {}", c.hour, c.key, c.tenant, c.model);
        for v in s.to_array() {
            let _ = write!(line, " {v}");
        }
        line.push('\n');
        out.extend_from_slice(line.as_bytes());
    }
    let footer = Footer {
        kind: FOOTER.into(),
        rows: header.rows,
        checksum: format!("{:016x}", fnv1a(&out)),
    };
    out.extend_from_slice(&serde_json::to_vec(&footer).unwrap_or_default());
    out.push(b'\n');
    out
}

/// Reads a rollup file's bytes back, checking everything [`encode`] wrote.
pub fn decode(bytes: &[u8]) -> Result<Decoded, SidecarError> {
    let body = bytes.strip_suffix(b"\n").ok_or(SidecarError::Torn)?;
    let footer_at = memchr::memrchr(b'\n', body).ok_or(SidecarError::Torn)? + 1;
    let footer: Footer =
        serde_json::from_slice(&body[footer_at..]).map_err(|_| SidecarError::Torn)?;
    if footer.kind != FOOTER {
        return Err(SidecarError::Torn);
    }
    let covered = &bytes[..footer_at];
    if format!("{:016x}", fnv1a(covered)) != footer.checksum {
        return Err(SidecarError::Checksum);
    }
    let header_end = memchr::memchr(b'\n', covered).ok_or(SidecarError::Header)?;
    let header: Header =
        serde_json::from_slice(&covered[..header_end]).map_err(|_| SidecarError::Header)?;
    if header.kind != HEADER {
        return Err(SidecarError::Header);
    }
    if header.version != VERSION {
        return Err(SidecarError::Version(header.version));
    }
    let rows_text = &covered[header_end + 1..];
    let mut cells = Vec::with_capacity(header.rows.min(1 << 24) as usize);
    for (i, line) in rows_text.split(|b| *b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        cells.push(row(line).ok_or(SidecarError::Row(i as u64 + 1))?);
    }
    let found = cells.len() as u64;
    if found != header.rows || footer.rows != header.rows {
        return Err(SidecarError::Count {
            found,
            said: header.rows,
        });
    }
    let rollup = Rollup::from_parts(header.names, cells, header.events, header.unreadable)
        .ok_or(SidecarError::Row(0))?;
    Ok(Decoded {
        segment: header.segment,
        segment_bytes: header.segment_bytes,
        rollup,
    })
}

/// One row: ten decimal fields separated by single spaces (the hour may be negative).
fn row(line: &[u8]) -> Option<(Cell, Sums)> {
    let mut fields = line.split(|b| *b == b' ');
    let mut next = || -> Option<&[u8]> { fields.next() };
    let hour = {
        let f = next()?;
        match f.strip_prefix(b"-") {
            Some(rest) => -i64::try_from(number(rest)?).ok()?,
            None => i64::try_from(number(f)?).ok()?,
        }
    };
    let mut id = || -> Option<u32> { u32::try_from(number(next()?)?).ok() };
    let (key, tenant, model) = (id()?, id()?, id()?);
    let mut sums = [0u64; 6];
    for s in &mut sums {
        *s = number(fields.next()?)?;
    }
    if fields.next().is_some() {
        return None;
    }
    Some((
        Cell {
            hour,
            key,
            tenant,
            model,
        },
        Sums::from_array(sums),
    ))
}

fn number(f: &[u8]) -> Option<u64> {
    if f.is_empty() || f.len() > 20 {
        return None;
    }
    f.iter().try_fold(0u64, |acc, c| {
        if !c.is_ascii_digit() {
            return None;
        }
        acc.checked_mul(10)?.checked_add(u64::from(c - b'0'))
    })
}

/// Writes segment `n`'s rollup file atomically: a temporary file (named for this process, so a gateway and a
/// `promptgate usage` writing the same rollup at once do not write into one file) renamed over the old one.
pub fn write(dir: &Path, n: u64, bytes: &[u8]) -> io::Result<()> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let tmp = dir.join(format!(
        ".{PREFIX}{n:08}{SUFFIX}.{}.{}.tmp",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    if let Err(e) = std::fs::write(&tmp, bytes) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path(dir, n)).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Rollup {
        let mut r = Rollup::default();
        let s = |n: u64| Sums {
            requests: n,
            input_tokens: n * 3,
            output_tokens: n * 5,
            total_tokens: n * 8,
            blocked: n / 2,
            redacted: 1,
        };
        r.add(493_000, Some("k1"), Some("team a"), Some("gpt-4o"), &s(3));
        r.add(493_001, None, None, None, &s(1));
        r.add(
            -2,
            Some("a \"quoted\" name"),
            None,
            Some("k1"),
            &s(u64::MAX),
        );
        r.events = 7;
        r.unreadable = 2;
        r
    }

    type Row = (Option<String>, Option<String>, Option<String>, i64, Sums);

    fn rows(r: &Rollup) -> Vec<Row> {
        let mut v: Vec<_> = r
            .cells()
            .map(|(c, s)| {
                (
                    r.name(c.key).map(String::from),
                    r.name(c.tenant).map(String::from),
                    r.name(c.model).map(String::from),
                    c.hour,
                    *s,
                )
            })
            .collect();
        v.sort_by(|a, b| (a.3, &a.0).cmp(&(b.3, &b.0)));
        v
    }

    #[test]
    fn round_trips_and_is_deterministic() {
        let r = sample();
        let bytes = encode(7, 12_345, &r);
        assert_eq!(bytes, encode(7, 12_345, &r.clone()));
        let d = decode(&bytes).expect("decodes");
        assert_eq!((d.segment, d.segment_bytes), (7, 12_345));
        assert_eq!((d.rollup.events, d.rollup.unreadable), (7, 2));
        assert_eq!(rows(&d.rollup), rows(&r));
        let empty = decode(&encode(1, 0, &Rollup::default())).expect("empty decodes");
        assert!(empty.rollup.is_empty());
    }

    #[test]
    fn every_damage_is_refused() {
        let bytes = encode(7, 12_345, &sample());
        // Cut anywhere: refused.
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut} was accepted");
        }
        // Any one byte changed: refused.
        for at in 0..bytes.len() {
            let mut b = bytes.clone();
            b[at] = if b[at] == b'1' { b'2' } else { b'1' };
            assert!(decode(&b).is_err(), "byte {at} changed was accepted");
        }
        assert!(decode(b"").is_err());
        assert!(decode(b"garbage\n").is_err());
    }

    #[test]
    fn writes_atomically_and_lists() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), 3, b"x").expect("write");
        write(dir.path(), 12, &encode(12, 0, &sample())).expect("write");
        write(dir.path(), 12, &encode(12, 1, &sample())).expect("overwrite");
        assert_eq!(list(dir.path()).expect("list"), [3, 12]);
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("dir")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        assert_eq!(names.len(), 2, "a temporary file was left: {names:?}");
        let back = std::fs::read(path(dir.path(), 12)).expect("read");
        assert_eq!(decode(&back).expect("decodes").segment_bytes, 1);
    }
}
