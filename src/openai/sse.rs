//! Incremental server-sent-events framing: bytes in as the upstream writes them (events split across reads,
//! several in one read), complete events out, each with its exact original bytes so an event that needs no
//! change is passed on as it came, in the upstream's own framing (LF, CRLF or CR).
//!
//! Only whole events are handed on, so a `data:` JSON split inside a multi-byte character or a `\u` escape is
//! always seen reassembled. The buffer is bounded: an event larger than the limit is an error, never an
//! unbounded allocation.

use bytes::{Bytes, BytesMut};

/// One complete event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The event's bytes as received, blank-line terminator included.
    pub raw: Bytes,
    /// The `data` field: its lines joined with `\n`; `None` when the event has no `data` line.
    pub data: Option<String>,
    /// The `event` field, if any.
    pub name: Option<String>,
    /// Whether the event has lines other than its `data` fields (see [`Event::other_lines`]).
    pub has_other_lines: bool,
}

impl Event {
    /// Whether the event carries only comments and other fields (a keep-alive): nothing to inspect.
    pub fn is_keepalive(&self) -> bool {
        self.data.is_none()
    }

    /// Whether this is the OpenAI end-of-stream sentinel.
    pub fn is_done(&self) -> bool {
        self.data.as_deref().is_some_and(|d| d.trim() == "[DONE]")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    #[error("an SSE event is larger than {0} bytes")]
    TooLarge(usize),
    #[error("an SSE event is not valid UTF-8")]
    Utf8,
}

/// The framing state of one stream.
#[derive(Debug)]
pub struct SseParser {
    buf: BytesMut,
    /// Where to resume looking for the end of the event being buffered.
    scanned: usize,
    max_event: usize,
}

impl SseParser {
    pub fn new(max_event: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            scanned: 0,
            max_event,
        }
    }

    /// Bytes received but not yet part of a complete event.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Feeds a chunk; returns the events it completed, in order.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<Event>, SseError> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        while let Some(end) = self.event_end() {
            let raw = self.buf.split_to(end).freeze();
            self.scanned = 0;
            out.push(parse_event(raw)?);
        }
        if self.buf.len() > self.max_event {
            return Err(SseError::TooLarge(self.max_event));
        }
        Ok(out)
    }

    /// At the end of the stream: the unterminated remainder, if any, as a last event.
    pub fn finish(&mut self) -> Result<Option<Event>, SseError> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let raw = self.buf.split().freeze();
        self.scanned = 0;
        parse_event(raw).map(Some)
    }

    /// The length of the first complete event in the buffer (through its blank line), if there is one.
    fn event_end(&mut self) -> Option<usize> {
        let b = &self.buf[..];
        let mut i = self.scanned;
        // `line_start` is where the current line began; an empty line ends the event.
        let mut line_start = line_start_before(b, i);
        while i < b.len() {
            match b[i] {
                b'\n' => {
                    if i == line_start {
                        return Some(i + 1);
                    }
                    i += 1;
                    line_start = i;
                }
                b'\r' => {
                    // CR LF is one terminator; a CR at the very end may be the first half of one.
                    let len = match b.get(i + 1) {
                        Some(b'\n') => 2,
                        Some(_) => 1,
                        None => {
                            self.scanned = line_start;
                            return None;
                        }
                    };
                    if i == line_start {
                        return Some(i + len);
                    }
                    i += len;
                    line_start = i;
                }
                _ => i += 1,
            }
        }
        self.scanned = line_start;
        None
    }
}

impl Event {
    /// The event's lines other than its `data` fields (comments, `event`, `id`, `retry`, unknown fields), in
    /// order, without their line ends.
    pub fn other_lines(&self) -> impl Iterator<Item = &str> + '_ {
        other_lines(if self.has_other_lines { &self.raw } else { &[] })
    }
}

/// The lines of an event's bytes other than its `data` fields, split as [`SseParser`] splits them.
fn other_lines(raw: &[u8]) -> impl Iterator<Item = &str> + '_ {
    std::str::from_utf8(raw)
        .unwrap_or_default()
        .split(['\n', '\r'])
        .filter(|l| !l.is_empty() && !is_data_line(l))
}

/// Whether a line is a `data` field (`data`, or `data:` and its value).
fn is_data_line(line: &str) -> bool {
    line.strip_prefix("data")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(':'))
}

/// Writes one event: `lines` as they are, then `data` as `data:` lines (one per line of it: a multi-line value
/// stays one field, never a line a reader takes for another field), then the blank line; every line ended by
/// `eol`.
pub fn write_event<'a>(
    out: &mut BytesMut,
    lines: impl IntoIterator<Item = &'a str>,
    data: &[u8],
    eol: &str,
) {
    for line in lines {
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(eol.as_bytes());
    }
    let mut rest = data;
    loop {
        let (line, next) = match memchr::memchr2(b'\n', b'\r', rest) {
            Some(i) => {
                let len = if rest[i..].starts_with(b"\r\n") { 2 } else { 1 };
                (&rest[..i], Some(&rest[i + len..]))
            }
            None => (rest, None),
        };
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line);
        out.extend_from_slice(eol.as_bytes());
        match next {
            Some(n) => rest = n,
            None => break,
        }
    }
    out.extend_from_slice(eol.as_bytes());
}

/// Whether an event's bytes (from its start), read at the end of a stream, end with a blank line: a complete
/// event. A lone CR at the end counts as a line end (nothing follows it to make it half of a CRLF).
pub fn ends_with_blank_line(raw: &[u8]) -> bool {
    let Some(rest) = strip_line_end(raw) else {
        return false;
    };
    rest.is_empty() || rest.ends_with(b"\n") || rest.ends_with(b"\r")
}

/// `b` without the line end it ends with, if it ends with one (CRLF, LF or CR).
fn strip_line_end(b: &[u8]) -> Option<&[u8]> {
    b.strip_suffix(b"\r\n")
        .or_else(|| b.strip_suffix(b"\n"))
        .or_else(|| b.strip_suffix(b"\r"))
}

/// The start of the line containing `i` (resuming a scan must restart at a line start).
fn line_start_before(b: &[u8], i: usize) -> usize {
    b[..i.min(b.len())]
        .iter()
        .rposition(|&c| c == b'\n' || c == b'\r')
        .map_or(0, |p| p + 1)
}

fn parse_event(raw: Bytes) -> Result<Event, SseError> {
    let text = std::str::from_utf8(&raw).map_err(|_| SseError::Utf8)?;
    let mut data: Option<String> = None;
    let mut name = None;
    let mut has_other_lines = false;
    for line in text.split(['\n', '\r']) {
        if line.is_empty() {
            continue;
        }
        has_other_lines |= !is_data_line(line);
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => match &mut data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => data = Some(value.to_string()),
            },
            "event" => name = Some(value.to_string()),
            _ => {}
        }
    }
    Ok(Event {
        raw,
        data,
        name,
        has_other_lines,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM_LF: &str = ": keep-alive\n\ndata: {\"a\":\"h\u{e9}llo \\u00e9\"}\n\nevent: ping\ndata: line one\ndata: line two\n\ndata: [DONE]\n\n";

    fn all_events(chunks: &[&[u8]]) -> Vec<Event> {
        let mut p = SseParser::new(1 << 20);
        let mut out = Vec::new();
        for c in chunks {
            out.extend(p.push(c).expect("valid"));
        }
        out.extend(p.finish().expect("valid"));
        out
    }

    fn check(events: &[Event], stream: &str) {
        assert_eq!(events.len(), 4, "{events:?}");
        assert!(events[0].is_keepalive());
        let v: serde_json::Value =
            serde_json::from_str(events[1].data.as_deref().expect("data")).expect("json");
        assert_eq!(v["a"], "héllo é");
        assert_eq!(events[2].data.as_deref(), Some("line one\nline two"));
        assert_eq!(events[2].name.as_deref(), Some("ping"));
        assert!(events[3].is_done());
        let raw: Vec<u8> = events.iter().flat_map(|e| e.raw.to_vec()).collect();
        assert_eq!(
            raw,
            stream.as_bytes(),
            "the raw bytes reassemble to the stream exactly"
        );
    }

    #[test]
    fn every_split_point_gives_the_same_events() {
        for stream in [
            STREAM_LF.to_string(),
            STREAM_LF.replace('\n', "\r\n"),
            STREAM_LF.replace('\n', "\r"),
        ] {
            let b = stream.as_bytes();
            check(&all_events(&[b]), &stream);
            for i in 0..=b.len() {
                check(&all_events(&[&b[..i], &b[i..]]), &stream);
            }
            // One byte at a time: splits inside the multi-byte é and inside the \u escape included.
            let bytes: Vec<&[u8]> = b.chunks(1).collect();
            check(&all_events(&bytes), &stream);
        }
    }

    #[test]
    fn an_unterminated_last_event_comes_out_at_the_end() {
        let events = all_events(&[b"data: one\n\ndata: two"]);
        assert_eq!(events.len(), 2);
        assert_eq!(events[1].data.as_deref(), Some("two"));
    }

    #[test]
    fn a_written_event_reads_back_with_its_fields_and_data() {
        let mut out = BytesMut::new();
        write_event(
            &mut out,
            ["event: response.output_text.delta", "id: 7"],
            b"{\n\"a\":\r\n 1\r}",
            "\r\n",
        );
        let events = all_events(&[&out]);
        assert_eq!(events.len(), 1, "{out:?}");
        assert_eq!(
            events[0].name.as_deref(),
            Some("response.output_text.delta")
        );
        assert_eq!(events[0].data.as_deref(), Some("{\n\"a\":\n 1\n}"));
        let others: Vec<&str> = events[0].other_lines().collect();
        assert_eq!(others, ["event: response.output_text.delta", "id: 7"]);
        let ev = &all_events(&[b": hi\ndata\ndatum: x\ndata: y\n\n"])[0];
        assert_eq!(ev.other_lines().collect::<Vec<_>>(), [": hi", "datum: x"]);
    }

    #[test]
    fn a_blank_line_at_the_end_is_read_as_a_reader_reads_it() {
        for done in [
            "x\n\n",
            "x\r\n\r\n",
            "x\r\r",
            "x\n\r",
            "x\r\n\n",
            "x\r\n\r",
            "\n",
            "\r",
        ] {
            assert!(ends_with_blank_line(done.as_bytes()), "{done:?}");
        }
        for open in ["", "x", "x\n", "x\r", "x\r\n", "x\n\rx"] {
            assert!(!ends_with_blank_line(open.as_bytes()), "{open:?}");
        }
    }

    #[test]
    fn limits_and_utf8() {
        let mut p = SseParser::new(16);
        assert_eq!(
            p.push(b"data: 0123456789abcdef"),
            Err(SseError::TooLarge(16))
        );
        let mut p = SseParser::new(1024);
        assert_eq!(p.push(b"data: \xff\n\n"), Err(SseError::Utf8));
    }
}
