//! W3C Trace Context: the `traceparent` a client sends, parsed strictly; the one the gateway sends upstream;
//! `tracestate` kept within bounds; the root sampling decision. Pure functions over bytes.

/// A trace id (never all zeros).
pub type TraceId = [u8; 16];
/// A span id (never all zeros).
pub type SpanId = [u8; 8];

/// What a valid `traceparent` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parent {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// The caller recorded its part of the trace (flag bit 0).
    pub sampled: bool,
}

/// The length of a version-00 `traceparent`: `00-<32 hex>-<16 hex>-<2 hex>`.
const LEN: usize = 55;

/// Parses a `traceparent` value. `None` for anything that is not valid by the W3C rules: lowercase hex only,
/// version `ff` forbidden, version `00` exactly 55 characters, a later version at least 55 with a `-` after them
/// (its extra fields ignored), an all-zero trace id or span id.
pub fn parse_traceparent(v: &[u8]) -> Option<Parent> {
    if v.len() < LEN || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let version = hex_byte(&v[0..2])?;
    match version {
        0xff => return None,
        0 if v.len() != LEN => return None,
        0 => {}
        _ if v.len() > LEN && v[LEN] != b'-' => return None,
        _ => {}
    }
    let mut trace_id = [0u8; 16];
    for (i, b) in trace_id.iter_mut().enumerate() {
        *b = hex_byte(&v[3 + 2 * i..5 + 2 * i])?;
    }
    let mut span_id = [0u8; 8];
    for (i, b) in span_id.iter_mut().enumerate() {
        *b = hex_byte(&v[36 + 2 * i..38 + 2 * i])?;
    }
    let flags = hex_byte(&v[53..55])?;
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some(Parent {
        trace_id,
        span_id,
        sampled: flags & 1 == 1,
    })
}

/// Two lowercase hex digits.
fn hex_byte(two: &[u8]) -> Option<u8> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    Some(digit(two[0])? << 4 | digit(two[1])?)
}

/// The `traceparent` naming `span_id` as the parent (version 00).
pub fn traceparent(trace_id: &TraceId, span_id: &SpanId, sampled: bool) -> String {
    let mut s = String::with_capacity(LEN);
    s.push_str("00-");
    s.push_str(&hex::encode(trace_id));
    s.push('-');
    s.push_str(&hex::encode(span_id));
    s.push_str(if sampled { "-01" } else { "-00" });
    s
}

/// The longest `tracestate` passed on (the W3C minimum a vendor must propagate); a longer one is dropped.
pub const MAX_TRACESTATE: usize = 512;
/// The most list members a `tracestate` may have (W3C).
const MAX_MEMBERS: usize = 32;

/// The client's `tracestate` (its header lines joined with `,`), kept when it is within bounds and made of
/// printable ASCII; `None` otherwise (a bad `tracestate` never invalidates the `traceparent`).
pub fn tracestate<'a>(lines: impl Iterator<Item = &'a [u8]>) -> Option<String> {
    let mut out = String::new();
    for line in lines {
        if !line.iter().all(|b| (0x20..0x7f).contains(b)) {
            return None;
        }
        let line = std::str::from_utf8(line).ok()?.trim();
        if line.is_empty() {
            continue;
        }
        if out.len() + line.len() + 1 > MAX_TRACESTATE {
            return None;
        }
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(line);
    }
    let members = out.split(',').filter(|m| !m.trim().is_empty()).count();
    if out.is_empty() || members > MAX_MEMBERS {
        return None;
    }
    Some(out)
}

/// Whether a new trace is recorded at `ratio`: decided by the trace id alone (its last 8 bytes), as
/// OpenTelemetry's `TraceIdRatioBased` does, so every service sampling at the same ratio agrees.
pub fn ratio_samples(trace_id: &TraceId, ratio: f64) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    if ratio <= 0.0 {
        return false;
    }
    let mut low = [0u8; 8];
    low.copy_from_slice(&trace_id[8..]);
    let x = u64::from_be_bytes(low) >> 1;
    x < (ratio * (1u64 << 63) as f64) as u64
}

/// A fresh random trace id.
pub fn new_trace_id() -> TraceId {
    fastrand::u128(1..).to_be_bytes()
}

/// A fresh random span id.
pub fn new_span_id() -> SpanId {
    fastrand::u64(1..).to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_a_valid_traceparent() {
        let p = parse_traceparent(GOOD.as_bytes()).expect("valid");
        assert_eq!(hex::encode(p.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex::encode(p.span_id), "00f067aa0ba902b7");
        assert!(p.sampled);
        let unsampled = GOOD.replace("-01", "-00");
        assert!(
            !parse_traceparent(unsampled.as_bytes())
                .expect("valid")
                .sampled
        );
        // Only bit 0 is the sampled flag.
        let other = GOOD.replace("-01", "-02");
        assert!(!parse_traceparent(other.as_bytes()).expect("valid").sampled);
        assert_eq!(
            traceparent(&p.trace_id, &p.span_id, true),
            GOOD,
            "formats back the same"
        );
    }

    #[test]
    fn refuses_invalid_traceparents() {
        let cases = [
            ("", "empty"),
            (&GOOD[..54], "short"),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
                "version 00 with a tail",
            ),
            (
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "version ff",
            ),
            (
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                "zero trace id",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                "zero span id",
            ),
            (
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                "uppercase",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
                "not hex",
            ),
            (
                "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "bad separator",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x",
                "bad flags",
            ),
            (
                "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "bad version",
            ),
            (
                "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
                "later version, no dash",
            ),
            (
                " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "leading space",
            ),
        ];
        for (v, why) in cases {
            assert_eq!(parse_traceparent(v.as_bytes()), None, "{why}: {v:?}");
        }
    }

    #[test]
    fn later_versions_keep_the_known_fields() {
        let v = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra";
        assert!(parse_traceparent(v.as_bytes()).is_some());
        let v = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert!(parse_traceparent(v.as_bytes()).is_some());
    }

    #[test]
    fn tracestate_bounds() {
        let one = |s: &str| tracestate(std::iter::once(s.as_bytes()));
        assert_eq!(
            one("congo=t61rcWkgMzE").as_deref(),
            Some("congo=t61rcWkgMzE")
        );
        assert_eq!(
            tracestate(["a=1", "b=2"].iter().map(|s| s.as_bytes())).as_deref(),
            Some("a=1,b=2")
        );
        assert_eq!(one(&"x".repeat(MAX_TRACESTATE + 1)), None, "too long");
        assert_eq!(one("a=\u{e9}"), None, "not ASCII");
        assert_eq!(one(""), None);
        let many: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
        assert_eq!(one(&many.join(",")), None, "too many members");
    }

    #[test]
    fn ratio_sampling_follows_the_trace_id() {
        let id = |low: u64| {
            let mut t = [1u8; 16];
            t[8..].copy_from_slice(&low.to_be_bytes());
            t
        };
        assert!(ratio_samples(&id(u64::MAX), 1.0));
        assert!(!ratio_samples(&id(0), 0.0));
        assert!(ratio_samples(&id(0), 0.5));
        assert!(!ratio_samples(&id(u64::MAX), 0.5));
        // About half of random ids at 0.5 (a count, not a timing): 10_000 draws, far from the bounds.
        let n = (0..10_000)
            .filter(|_| ratio_samples(&new_trace_id(), 0.5))
            .count();
        assert!((4_000..6_000).contains(&n), "{n}");
    }

    #[test]
    fn fresh_ids_are_never_zero() {
        for _ in 0..1000 {
            assert_ne!(new_trace_id(), [0; 16]);
            assert_ne!(new_span_id(), [0; 8]);
        }
    }
}
