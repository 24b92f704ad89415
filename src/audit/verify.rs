//! `promptgate audit verify`: walks every segment of an audit directory, line by line (bounded memory: one
//! line and the next), checks the hash chain (`chain.rs`) and names the FIRST break as `file:line` and what
//! it looks like.
//!
//! What it tells apart, at the first line that does not chain from the one before:
//! - **edited**: the line sits where its `seq` says but its bytes are not what its chain value covers;
//! - **deleted**: the line's `seq` skips ahead (the lines between are gone; at a segment's first line, the
//!   previous segment lost its end, or this segment its header);
//! - **reordered**: the line and the next are swapped (the next chains from the previous, this one from it);
//! - **inserted**: the next line chains from the previous one, so this one does not belong (or it carries
//!   no chain at all);
//! - **truncated**: a line cut short (no newline) anywhere but at the very end of the newest segment;
//! - **segment missing**: a numbered segment absent between two present ones (or a file renamed).
//!
//! Not breaks, reported as notes: the oldest segments removed by retention (the directory verifies from its
//! first present segment, whose header names the removed one's last chain value); a torn last line of the
//! newest segment (a crash while writing: the gateway cuts it when it starts again); segments written before
//! the chain existed, ahead of the first sealed one; intents without their decision event (requests in
//! flight at a crash, or still in flight on a live directory).
//!
//! What it cannot see on its own: lines cut from the very end of the newest segment at a line boundary, or a
//! directory rewritten and re-sealed from its first header on. Both need the last `seq` and chain value kept
//! elsewhere (the summary prints them; the webhook's copy holds them too).

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::chain::{self, Link, Tip, Unsealed};
use super::intent::INTENT;
use super::segments;

/// A line longer than this was not written by the gateway.
const MAX_LINE: usize = 16 << 20;
/// Open intents tracked at most (a request's intent is completed seconds later; beyond this, the count is
/// reported as a lower bound).
const MAX_OPEN_INTENTS: usize = 1 << 20;

/// What a break looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakKind {
    Edited,
    Deleted,
    Reordered,
    Inserted,
    Truncated,
    SegmentMissing,
}

impl BreakKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Edited => "edited line",
            Self::Deleted => "deleted line(s)",
            Self::Reordered => "reordered lines",
            Self::Inserted => "inserted line",
            Self::Truncated => "truncated",
            Self::SegmentMissing => "segment missing",
        }
    }
}

/// The first place the chain does not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Break {
    pub file: PathBuf,
    /// 1-based.
    pub line: u64,
    pub kind: BreakKind,
    pub detail: String,
}

/// What a walk found.
#[derive(Debug, Default)]
pub struct Report {
    pub segments: u64,
    /// Sealed lines verified (headers, events, gaps, intents).
    pub lines: u64,
    pub events: u64,
    pub intents: u64,
    pub gaps: u64,
    /// Intents no later line completes (a lower bound past [`MAX_OPEN_INTENTS`]).
    pub open_intents: usize,
    pub first_ts: Option<String>,
    pub last_ts: Option<String>,
    /// The chain's tip: the last verified line.
    pub tip: Option<Tip>,
    pub notes: Vec<String>,
    pub broken: Option<Break>,
}

/// The fields of a line that verification reads.
#[derive(Deserialize)]
struct Fields<'a> {
    #[serde(rename = "type", default, borrow)]
    kind: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default, borrow)]
    ts: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    request_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    segment: Option<u64>,
    #[serde(default, borrow)]
    prev: Option<std::borrow::Cow<'a, str>>,
}

/// One line as read: its bytes (without the newline) and whether it ended with one.
pub(crate) struct Line {
    pub bytes: Vec<u8>,
    pub complete: bool,
}

/// Reads a segment line by line, each line bounded.
pub(crate) struct Lines {
    reader: BufReader<File>,
}

impl Lines {
    pub fn open(path: &Path) -> io::Result<Self> {
        Ok(Self {
            reader: BufReader::with_capacity(256 * 1024, File::open(path)?),
        })
    }

    /// The next line, or `None` at the end.
    pub fn next_line(&mut self) -> io::Result<Option<Line>> {
        let mut bytes = Vec::new();
        let n = (&mut self.reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut bytes)?;
        if n == 0 {
            return Ok(None);
        }
        if bytes.len() > MAX_LINE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "a line longer than 16 MiB: not an audit segment",
            ));
        }
        let complete = bytes.last() == Some(&b'\n');
        if complete {
            bytes.pop();
        }
        Ok(Some(Line { bytes, complete }))
    }
}

/// A line with its seal taken off and the fields verification reads.
struct Sealed {
    unsealed: Unsealed,
    seq: u64,
}

fn sealed(line: &[u8]) -> Option<Sealed> {
    let unsealed = chain::unseal(line)?;
    let seq = serde_json::from_slice::<Fields>(&unsealed.body).ok()?.seq?;
    Some(Sealed { unsealed, seq })
}

/// Whether `line` is the line that follows `tip`.
fn follows(tip: &Tip, line: &Sealed) -> bool {
    line.seq == tip.seq + 1 && chain::link(&tip.link, &line.unsealed.body) == line.unsealed.chain
}

/// What the line at the break looks like, given the line expected to follow `tip` and the next line.
fn classify(tip: &Tip, this: Option<&Sealed>, next: Option<&Sealed>) -> (BreakKind, String) {
    let want = tip.seq + 1;
    let next_follows = next.is_some_and(|n| follows(tip, n));
    let Some(this) = this else {
        return if next_follows {
            (
                BreakKind::Inserted,
                "a line without a chain value; the next line continues the chain".into(),
            )
        } else {
            (
                BreakKind::Edited,
                format!("the line's chain value is damaged or missing (seq {want} expected)"),
            )
        };
    };
    if next_follows {
        let swapped = next.is_some_and(|n| {
            this.seq == want + 1
                && chain::link(&n.unsealed.chain, &this.unsealed.body) == this.unsealed.chain
        });
        return if swapped {
            (
                BreakKind::Reordered,
                format!(
                    "this line (seq {}) and the next (seq {want}) are swapped",
                    this.seq
                ),
            )
        } else {
            (
                BreakKind::Inserted,
                format!(
                    "this line (seq {}) does not belong: the next line continues the chain from seq {}",
                    this.seq, tip.seq
                ),
            )
        };
    }
    if this.seq == want {
        return (
            BreakKind::Edited,
            format!("seq {want}: the line's bytes are not what its chain value covers"),
        );
    }
    if this.seq > want {
        let n = this.seq - want;
        return (
            BreakKind::Deleted,
            format!(
                "{n} line(s) missing before this one (seq {want}..={} expected, found seq {})",
                this.seq - 1,
                this.seq
            ),
        );
    }
    (
        BreakKind::Inserted,
        format!(
            "seq {} again (seq {want} expected): a copied or replayed line",
            this.seq
        ),
    )
}

/// Walks the directory. `Err` only when it cannot be read at all.
pub fn verify(dir: &Path) -> io::Result<Report> {
    let mut report = Report::default();
    let numbers = segments::list(dir)?;
    let mut tip: Option<Tip> = None;
    let mut open: HashSet<String> = HashSet::new();
    let mut open_overflow = false;
    let mut legacy_lines = 0u64;
    let mut previous: Option<u64> = None;
    let last_segment = numbers.last().copied();
    for &n in &numbers {
        let path = segments::path(dir, n);
        let name = path.file_name().map(PathBuf::from).unwrap_or_default();
        let at = |line: u64, kind: BreakKind, detail: String| Break {
            file: name.clone(),
            line,
            kind,
            detail,
        };
        // On a live directory retention may remove the oldest segments while this walk starts.
        let mut lines = match Lines::open(&path) {
            Ok(l) => l,
            Err(e) if e.kind() == io::ErrorKind::NotFound && previous.is_none() => continue,
            Err(e) => return Err(e),
        };
        match previous {
            None if n > 1 => report.notes.push(format!(
                "starts at segment {n}: earlier segments were removed (retention); verified from its header"
            )),
            Some(p) if n != p + 1 && tip.is_some() => {
                report.broken = Some(at(
                    1,
                    BreakKind::SegmentMissing,
                    format!("segment(s) {}..={} missing between present ones", p + 1, n - 1),
                ));
                return Ok(finish(report, open.len(), open_overflow));
            }
            _ => {}
        }
        previous = Some(n);
        report.segments += 1;
        let mut current = lines.next_line()?;
        let mut line_no = 0u64;
        let mut legacy = false;
        while let Some(line) = current.take() {
            line_no += 1;
            let next = lines.next_line()?;
            if !line.complete {
                if Some(n) == last_segment && next.is_none() {
                    report.notes.push(format!(
                        "{}:{line_no}: a torn last line (a write cut short by a crash, or being written now): \
                         not a record; the gateway cuts it when it starts again",
                        name.display()
                    ));
                    break;
                }
                report.broken = Some(at(
                    line_no,
                    BreakKind::Truncated,
                    "a line cut short (no newline) before the end of the newest segment".into(),
                ));
                return Ok(finish(report, open.len(), open_overflow));
            }
            if line.bytes.is_empty() {
                // The writer never writes an empty line.
                report.broken = Some(at(line_no, BreakKind::Inserted, "an empty line".into()));
                return Ok(finish(report, open.len(), open_overflow));
            }
            let this = sealed(&line.bytes);
            // Before the first sealed line: a segment from before the chain is passed over whole.
            if tip.is_none() && line_no == 1 && this.is_none() {
                legacy = true;
            }
            if legacy {
                legacy_lines += 1;
                current = next;
                continue;
            }
            let fields = this
                .as_ref()
                .and_then(|s| serde_json::from_slice::<Fields>(&s.unsealed.body).ok());
            let is_header = fields.as_ref().and_then(|f| f.kind.as_deref()) == Some(chain::SEGMENT);
            let expected = match tip {
                Some(t) => t,
                None => {
                    // The first sealed line of the directory must be a segment header: it names the chain
                    // value it follows, so it verifies on its own.
                    let anchor = fields
                        .as_ref()
                        .filter(|_| is_header)
                        .and_then(|f| f.prev.as_deref().and_then(chain::parse_link))
                        .zip(this.as_ref().map(|s| s.seq));
                    let Some((prev, seq)) = anchor else {
                        report.broken = Some(at(
                            line_no,
                            BreakKind::Deleted,
                            "the oldest segment does not open with its header: nothing to verify it from"
                                .into(),
                        ));
                        return Ok(finish(report, open.len(), open_overflow));
                    };
                    Tip {
                        link: prev,
                        seq: seq.saturating_sub(1),
                    }
                }
            };
            let ok = this.as_ref().is_some_and(|s| follows(&expected, s));
            if !ok {
                let next_sealed = next.as_ref().and_then(|l| sealed(&l.bytes));
                let (kind, mut detail) = classify(&expected, this.as_ref(), next_sealed.as_ref());
                if line_no == 1 && kind == BreakKind::Deleted {
                    detail.push_str(
                        "; at a segment's first line: the previous segment lost its end, or this one its header",
                    );
                }
                report.broken = Some(at(line_no, kind, detail));
                return Ok(finish(report, open.len(), open_overflow));
            }
            // Chained: now the line's place in its segment.
            let (Some(sealed_line), Some(fields)) = (this.as_ref(), fields) else {
                // `ok` implies both are present.
                return Ok(finish(report, open.len(), open_overflow));
            };
            if is_header != (line_no == 1) {
                let detail = if is_header {
                    "a segment header inside a segment".to_string()
                } else {
                    "the segment does not open with its header".to_string()
                };
                report.broken = Some(at(line_no, BreakKind::Inserted, detail));
                return Ok(finish(report, open.len(), open_overflow));
            }
            if is_header {
                let prev_ok =
                    fields.prev.as_deref().and_then(chain::parse_link) == Some(expected.link);
                if fields.segment != Some(n) || !prev_ok {
                    report.broken = Some(at(
                        line_no,
                        BreakKind::SegmentMissing,
                        format!(
                            "the header names segment {:?}, not {n} (a file renamed or replaced)",
                            fields.segment
                        ),
                    ));
                    return Ok(finish(report, open.len(), open_overflow));
                }
            } else {
                count(&mut report, &fields, &mut open, &mut open_overflow);
            }
            tip = Some(Tip {
                link: sealed_line.unsealed.chain,
                seq: sealed_line.seq,
            });
            report.lines += 1;
            current = next;
        }
        if legacy {
            report.notes.push(format!(
                "{}: written before the hash chain: not verifiable",
                name.display()
            ));
        }
    }
    if legacy_lines > 0 {
        report
            .notes
            .push(format!("{legacy_lines} line(s) from before the hash chain"));
    }
    report.tip = tip;
    Ok(finish(report, open.len(), open_overflow))
}

fn count(report: &mut Report, f: &Fields<'_>, open: &mut HashSet<String>, overflow: &mut bool) {
    let kind = f.kind.as_deref().unwrap_or("");
    match kind {
        INTENT => {
            report.intents += 1;
            if let Some(id) = f.request_id.as_deref() {
                if open.len() < MAX_OPEN_INTENTS {
                    open.insert(id.to_string());
                } else {
                    *overflow = true;
                }
            }
        }
        "audit.gap" => report.gaps += 1,
        _ => {
            report.events += 1;
            if let Some(id) = f.request_id.as_deref() {
                open.remove(id);
            }
        }
    }
    if let Some(ts) = f.ts.as_deref() {
        // RFC 3339 UTC with milliseconds: fixed width, so text order is time order.
        if report.first_ts.as_deref().is_none_or(|t| ts < t) {
            report.first_ts = Some(ts.to_string());
        }
        if report.last_ts.as_deref().is_none_or(|t| ts > t) {
            report.last_ts = Some(ts.to_string());
        }
    }
}

fn finish(mut report: Report, open: usize, overflow: bool) -> Report {
    report.open_intents = open;
    if open > 0 {
        report.notes.push(format!(
            "{open}{} intent(s) without their decision event: requests in flight at a crash, or still in flight",
            if overflow { "+" } else { "" }
        ));
    }
    report
}

impl Report {
    /// The human summary (stdout), and the exit code: 0 verified, 1 broken.
    pub fn print(&self, dir: &Path, out: &mut impl io::Write) -> io::Result<i32> {
        match &self.broken {
            Some(b) => writeln!(
                out,
                "audit verify: {}: BROKEN at {}:{}: {}: {}",
                dir.display(),
                b.file.display(),
                b.line,
                b.kind.as_str(),
                b.detail
            )?,
            None => writeln!(out, "audit verify: {}: OK", dir.display())?,
        }
        writeln!(
            out,
            "segments {}, lines {} verified (events {}, intents {}, gaps {})",
            self.segments, self.lines, self.events, self.intents, self.gaps
        )?;
        if let (Some(a), Some(b)) = (&self.first_ts, &self.last_ts) {
            writeln!(out, "first {a}, last {b}")?;
        }
        if let Some(t) = &self.tip {
            writeln!(out, "last seq {}, chain {}", t.seq, hex::encode(t.link))?;
        }
        for n in &self.notes {
            writeln!(out, "note: {n}")?;
        }
        Ok(if self.broken.is_some() { 1 } else { 0 })
    }
}

/// The chain value a header states as its `prev` (for tests and tools).
pub fn header_prev(line: &[u8]) -> Option<Link> {
    let u = chain::unseal(line)?;
    let f: Fields = serde_json::from_slice(&u.body).ok()?;
    f.prev.as_deref().and_then(chain::parse_link)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes segments the way the writer does: each opens with its sealed header.
    fn write_dir(dir: &Path, segments: &[(u64, usize)]) -> Vec<Vec<Vec<u8>>> {
        let mut tip = Tip::START;
        let mut out = Vec::new();
        for &(n, events) in segments {
            let mut lines = vec![tip.seal(chain::header(n, &tip.link, "2026-01-01T00:00:00.000Z"))];
            for i in 0..events {
                let rec = format!(
                    r#"{{"type":"chat.message","request_id":"r{n}-{i}","ts":"2026-01-01T00:00:0{i}.000Z"}}"#
                );
                lines.push(tip.seal(rec.into_bytes()));
            }
            out.push(lines);
        }
        for (lines, &(n, _)) in out.iter().zip(segments) {
            store(dir, n, lines, true);
        }
        out
    }

    fn store(dir: &Path, n: u64, lines: &[Vec<u8>], newline_at_end: bool) {
        let mut text = lines.join(&b'\n');
        if newline_at_end {
            text.push(b'\n');
        }
        std::fs::write(segments::path(dir, n), text).expect("write");
    }

    fn broken(dir: &Path) -> (String, u64, BreakKind) {
        let r = verify(dir).expect("verify");
        let b = r
            .broken
            .unwrap_or_else(|| panic!("not broken: {:?}", r.notes));
        (b.file.display().to_string(), b.line, b.kind)
    }

    #[test]
    fn an_intact_directory_verifies_and_counts() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_dir(dir.path(), &[(1, 3), (2, 2)]);
        let r = verify(dir.path()).expect("verify");
        assert!(r.broken.is_none(), "{:?}", r.broken);
        assert_eq!((r.segments, r.lines, r.events), (2, 7, 5));
        assert_eq!(r.tip.map(|t| t.seq), Some(7));
    }

    #[test]
    fn each_kind_of_tampering_is_named_at_its_line() {
        type Tamper = fn(&mut Vec<Vec<Vec<u8>>>);
        let cases: Vec<(&str, Tamper, (&str, u64, BreakKind))> = vec![
            (
                "edited",
                |s| {
                    let l = String::from_utf8(s[0][2].clone()).expect("utf8");
                    s[0][2] = l.replace("r1-1", "r1-X").into_bytes();
                },
                ("events-00000001.jsonl", 3, BreakKind::Edited),
            ),
            (
                "deleted",
                |s| {
                    s[0].remove(2);
                },
                ("events-00000001.jsonl", 3, BreakKind::Deleted),
            ),
            (
                "swapped",
                |s| s[0].swap(1, 2),
                ("events-00000001.jsonl", 2, BreakKind::Reordered),
            ),
            (
                "inserted copy",
                |s| {
                    let copy = s[0][1].clone();
                    s[0].insert(3, copy);
                },
                ("events-00000001.jsonl", 4, BreakKind::Inserted),
            ),
            (
                "inserted unsealed",
                |s| s[1].insert(2, br#"{"type":"chat.message"}"#.to_vec()),
                ("events-00000002.jsonl", 3, BreakKind::Inserted),
            ),
            (
                "end of a middle segment cut at a line boundary",
                |s| {
                    s[0].pop();
                },
                ("events-00000002.jsonl", 1, BreakKind::Deleted),
            ),
            (
                "header deleted",
                |s| {
                    s[1].remove(0);
                },
                ("events-00000002.jsonl", 1, BreakKind::Deleted),
            ),
        ];
        for (name, tamper, want) in cases {
            let dir = tempfile::tempdir().expect("tempdir");
            let mut segs = write_dir(dir.path(), &[(1, 3), (2, 3)]);
            tamper(&mut segs);
            store(dir.path(), 1, &segs[0], true);
            store(dir.path(), 2, &segs[1], true);
            let got = broken(dir.path());
            assert_eq!((got.0.as_str(), got.1, got.2), want, "{name}");
        }
    }

    #[test]
    fn a_torn_tail_is_a_note_at_the_end_and_a_break_in_the_middle() {
        let dir = tempfile::tempdir().expect("tempdir");
        let segs = write_dir(dir.path(), &[(1, 2), (2, 2)]);
        let mut torn = segs[1].clone();
        torn.push(b"{\"type\":\"chat.mes".to_vec());
        store(dir.path(), 2, &torn, false);
        let r = verify(dir.path()).expect("verify");
        assert!(r.broken.is_none(), "{:?}", r.broken);
        assert!(r.notes.iter().any(|n| n.contains("torn")), "{:?}", r.notes);
        let mut cut = segs[0].clone();
        let last = cut.len() - 1;
        cut[last].truncate(20);
        store(dir.path(), 1, &cut, false);
        assert_eq!(
            broken(dir.path()),
            ("events-00000001.jsonl".into(), 3, BreakKind::Truncated)
        );
    }

    #[test]
    fn retention_is_a_note_and_a_missing_middle_segment_a_break() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_dir(dir.path(), &[(1, 1), (2, 1), (3, 1), (4, 1)]);
        std::fs::remove_file(segments::path(dir.path(), 1)).expect("rm");
        let r = verify(dir.path()).expect("verify");
        assert!(r.broken.is_none(), "{:?}", r.broken);
        assert!(r.notes.iter().any(|n| n.contains("retention")));
        std::fs::remove_file(segments::path(dir.path(), 3)).expect("rm");
        assert_eq!(
            broken(dir.path()),
            ("events-00000004.jsonl".into(), 1, BreakKind::SegmentMissing)
        );
    }

    #[test]
    fn legacy_segments_before_the_chain_are_a_note() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            segments::path(dir.path(), 1),
            b"{\"type\":\"chat.message\"}\n{\"type\":\"chat.message\"}\n",
        )
        .expect("write");
        let mut tip = Tip::START;
        let lines = [
            tip.seal(chain::header(2, &tip.link, "t")),
            tip.seal(br#"{"type":"audit.intent","request_id":"a"}"#.to_vec()),
        ];
        store(dir.path(), 2, &lines, true);
        let r = verify(dir.path()).expect("verify");
        assert!(r.broken.is_none(), "{:?}", r.broken);
        assert_eq!((r.intents, r.open_intents), (1, 1));
        assert!(r.notes.iter().any(|n| n.contains("before the hash chain")));
    }
}
