//! The per-hour rollup: sums of decision events per (hour, caller, tenant, model), built by reading segment
//! lines and merged across segments. Pure: it reads bytes it is given and never touches a file.
//!
//! Counted: the decision events (`chat.message`, `chat.blocked`, `chat.escalated`); every other `type` (gaps,
//! segment headers, intents, …) and every unknown field is ignored. A realtime session writes one event per
//! response (counted, with its tokens) and one more when it closes (`realtime.scope = "session"`): that one is
//! not counted, or each session would count as one request too many.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use serde::{Deserialize, Serialize};

use super::time::{parse_rfc3339, HOUR};
use crate::audit::event::{BLOCKED, ESCALATED, MESSAGE};

/// What a set of events added up to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Sums {
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub total_tokens: u64,
    /// Events of type `chat.blocked` (blocked in either direction).
    pub blocked: u64,
    /// Events whose request or answer was redacted.
    pub redacted: u64,
}

impl Sums {
    /// Adds `o` (saturating: a corrupt count never wraps to a small number).
    pub fn add(&mut self, o: &Sums) {
        self.requests = self.requests.saturating_add(o.requests);
        self.input_tokens = self.input_tokens.saturating_add(o.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(o.output_tokens);
        self.total_tokens = self.total_tokens.saturating_add(o.total_tokens);
        self.blocked = self.blocked.saturating_add(o.blocked);
        self.redacted = self.redacted.saturating_add(o.redacted);
    }

    /// The counts in a fixed order (the sidecar's columns).
    pub fn to_array(self) -> [u64; 6] {
        [
            self.requests,
            self.input_tokens,
            self.output_tokens,
            self.total_tokens,
            self.blocked,
            self.redacted,
        ]
    }

    pub fn from_array(a: [u64; 6]) -> Self {
        Self {
            requests: a[0],
            input_tokens: a[1],
            output_tokens: a[2],
            total_tokens: a[3],
            blocked: a[4],
            redacted: a[5],
        }
    }
}

/// Id of a name in a rollup's table; [`NONE`] when the event had no value.
pub type NameId = u32;
/// The id of "no value" (an event without a key id, tenant or safe model).
pub const NONE: NameId = 0;

/// A multiply-rotate hash for maps keyed by small integers (cells, groups of ids): several times cheaper than
/// the default SipHash on the query path. Never for keys a client chooses (names keep the default hasher).
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(b));
        }
    }

    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x517c_c1b7_2722_0a95);
    }

    fn write_u32(&mut self, i: u32) {
        self.write_u64(u64::from(i));
    }

    fn write_i64(&mut self, i: i64) {
        self.write_u64(i as u64);
    }
}

/// A map keyed by ids (see [`IdHasher`]).
pub type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

/// One cell of the rollup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cell {
    /// Whole hours since the Unix epoch (UTC).
    pub hour: i64,
    pub key: NameId,
    pub tenant: NameId,
    pub model: NameId,
}

/// Per-hour sums of one or more segments. Names (caller ids, tenants, models) are stored once per rollup.
#[derive(Debug, Default, Clone)]
pub struct Rollup {
    names: Vec<Box<str>>,
    ids: HashMap<Box<str>, NameId>,
    cells: IdMap<Cell, Sums>,
    /// The cells of a frozen rollup, sorted (compact, and quick to walk): a closed segment's rollup never
    /// changes, so it is kept this way.
    frozen: Vec<(Cell, Sums)>,
    /// The first and last hour of any cell.
    span: Option<(i64, i64)>,
    /// Decision events counted.
    pub events: u64,
    /// Complete lines that were not JSON objects with a `type` (counted, never fatal).
    pub unreadable: u64,
}

#[derive(Deserialize)]
struct Line<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    ts: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    key_id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    tenant: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    model: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    decision: Option<DecisionLine<'a>>,
    #[serde(default)]
    usage: Option<UsageLine>,
    #[serde(default, borrow)]
    realtime: Option<RealtimeLine<'a>>,
}

#[derive(Deserialize, Default)]
struct DecisionLine<'a> {
    #[serde(default, borrow)]
    request: Cow<'a, str>,
    #[serde(default, borrow)]
    response: Cow<'a, str>,
}

#[derive(Deserialize, Default)]
struct UsageLine {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    #[serde(default)]
    total_tokens: u64,
}

#[derive(Deserialize)]
struct RealtimeLine<'a> {
    #[serde(default, borrow)]
    scope: Cow<'a, str>,
}

impl Rollup {
    /// The id of `name`, added to the table if new.
    fn intern(&mut self, name: Option<&str>) -> NameId {
        let Some(name) = name else { return NONE };
        if let Some(id) = self.ids.get(name) {
            return *id;
        }
        self.names.push(name.into());
        let id = self.names.len() as NameId;
        self.ids.insert(name.into(), id);
        id
    }

    /// The id of `name` if any cell uses it (a filter on a name a rollup lacks skips the rollup).
    pub fn find(&self, name: &str) -> Option<NameId> {
        self.ids.get(name).copied()
    }

    /// The name of an id (`None` for [`NONE`]).
    pub fn name(&self, id: NameId) -> Option<&str> {
        match id {
            NONE => None,
            n => self.names.get(n as usize - 1).map(|s| &**s),
        }
    }

    /// The first and last hour with a cell (`None` when empty): a question outside it skips the rollup.
    pub fn span(&self) -> Option<(i64, i64)> {
        self.span
    }

    /// Packs the cells into a sorted vector: for a rollup that will only be read from now on.
    pub fn freeze(&mut self) {
        let mut cells: Vec<(Cell, Sums)> = std::mem::take(&mut self.cells).into_iter().collect();
        cells.append(&mut self.frozen);
        cells.sort_unstable_by_key(|(c, _)| *c);
        self.frozen = cells;
    }

    /// Adds `sums` to `cell`, widening the span.
    fn bump(&mut self, cell: Cell, sums: &Sums) {
        if !self.frozen.is_empty() {
            // Written to again: back into the map.
            let frozen = std::mem::take(&mut self.frozen);
            self.cells.extend(frozen);
        }
        self.span = Some(match self.span {
            None => (cell.hour, cell.hour),
            Some((lo, hi)) => (lo.min(cell.hour), hi.max(cell.hour)),
        });
        self.cells.entry(cell).or_default().add(sums);
    }

    /// The names, in id order (id 1 first).
    pub fn names(&self) -> &[Box<str>] {
        &self.names
    }

    /// Every cell (in no particular order unless frozen).
    pub fn cells(&self) -> impl Iterator<Item = (&Cell, &Sums)> {
        self.cells
            .iter()
            .chain(self.frozen.iter().map(|(c, s)| (c, s)))
    }

    pub fn len(&self) -> usize {
        self.cells.len() + self.frozen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds `sums` to the cell of (hour, key, tenant, model).
    pub fn add(
        &mut self,
        hour: i64,
        key: Option<&str>,
        tenant: Option<&str>,
        model: Option<&str>,
        sums: &Sums,
    ) {
        let cell = Cell {
            hour,
            key: self.intern(key),
            tenant: self.intern(tenant),
            model: self.intern(model),
        };
        self.bump(cell, sums);
    }

    /// A frozen rollup from a decoded table: `names[i]` is id `i + 1`. `None` if a cell names an id outside it.
    pub fn from_parts(
        names: Vec<String>,
        cells: Vec<(Cell, Sums)>,
        events: u64,
        unreadable: u64,
    ) -> Option<Self> {
        let mut r = Rollup {
            events,
            unreadable,
            ..Rollup::default()
        };
        for n in names {
            r.ids.insert(n.as_str().into(), r.names.len() as NameId + 1);
            r.names.push(n.into());
        }
        let max = r.names.len() as NameId;
        let mut span: Option<(i64, i64)> = None;
        for (cell, _) in &cells {
            if cell.key > max || cell.tenant > max || cell.model > max {
                return None;
            }
            span = Some(span.map_or((cell.hour, cell.hour), |(lo, hi)| {
                (lo.min(cell.hour), hi.max(cell.hour))
            }));
        }
        // Frozen as read: a rollup file's cells are the sorted cells of a closed segment.
        r.frozen = cells;
        r.span = span;
        r.freeze();
        Some(r)
    }

    /// Adds every cell of `other` (names mapped onto this rollup's table).
    pub fn merge(&mut self, other: &Rollup) {
        let map: Vec<NameId> = other.names.iter().map(|n| self.intern(Some(n))).collect();
        let id = |n: NameId| match n {
            NONE => NONE,
            n => map[n as usize - 1],
        };
        for (c, s) in other.cells() {
            let cell = Cell {
                hour: c.hour,
                key: id(c.key),
                tenant: id(c.tenant),
                model: id(c.model),
            };
            self.bump(cell, s);
        }
        self.events = self.events.saturating_add(other.events);
        self.unreadable = self.unreadable.saturating_add(other.unreadable);
    }

    /// Counts the complete lines of `bytes` (each ending in a newline) and returns how many bytes they took:
    /// a last line without its newline is still being written and is left for the next call.
    pub fn scan(&mut self, bytes: &[u8]) -> usize {
        let mut at = 0;
        for end in memchr::memchr_iter(b'\n', bytes) {
            self.line(&bytes[at..end]);
            at = end + 1;
        }
        at
    }

    fn line(&mut self, line: &[u8]) {
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        let Ok(l) = serde_json::from_slice::<Line>(line) else {
            self.unreadable += 1;
            return;
        };
        if !matches!(&*l.kind, MESSAGE | BLOCKED | ESCALATED) {
            return;
        }
        if l.realtime.as_ref().is_some_and(|r| r.scope == "session") {
            return;
        }
        let Some(secs) = l.ts.as_deref().and_then(parse_rfc3339) else {
            self.unreadable += 1;
            return;
        };
        let u = l.usage.unwrap_or_default();
        let d = l.decision.unwrap_or_default();
        let sums = Sums {
            requests: 1,
            input_tokens: u.prompt_tokens,
            output_tokens: u.completion_tokens,
            total_tokens: u.total_tokens,
            blocked: u64::from(l.kind == BLOCKED),
            redacted: u64::from(d.request == "redact" || d.response == "redact"),
        };
        self.events += 1;
        self.add(
            secs.div_euclid(HOUR),
            l.key_id.as_deref(),
            l.tenant.as_deref(),
            l.model.as_deref(),
            &sums,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: &str, ts: &str, key: &str, model: &str, extra: &str) -> String {
        let decision = if extra.contains("\"decision\"") {
            ""
        } else {
            r#","decision":{"request":"allow","response":"allow"}"#
        };
        format!(
            r#"{{"type":"{kind}","seq":3,"chain":"ab","ts":"{ts}","key_id":"{key}","tenant":"t1","model":"{model}"{decision}{extra}}}"#
        )
    }

    fn totals(r: &Rollup) -> Sums {
        let mut s = Sums::default();
        for (_, c) in r.cells() {
            s.add(c);
        }
        s
    }

    #[test]
    fn counts_decision_events_only_and_leaves_a_partial_line() {
        let usage = r#","usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}"#;
        let text = [
            ev("chat.message", "2026-11-03T14:59:59.999Z", "k1", "m", usage),
            ev("chat.blocked", "2026-11-03T15:00:00.000Z", "k1", "m", ""),
            ev(
                "chat.message",
                "2026-11-03T15:10:00Z",
                "k2",
                "m",
                r#","decision":{"request":"redact","response":"allow"},"x":[1,{"y":2}]"#,
            ),
            r#"{"type":"audit.gap","ts":"2026-11-03T15:00:00Z","dropped":4}"#.to_string(),
            r#"{"type":"audit.segment","segment":2}"#.to_string(),
            r#"{"type":"audit.intent","ts":"2026-11-03T15:00:00Z","key_id":"k1"}"#.to_string(),
            ev(
                "chat.message",
                "2026-11-03T15:10:00Z",
                "k2",
                "m",
                r#","realtime":{"scope":"session"}"#,
            ),
            "not json".to_string(),
            String::new(),
        ]
        .join("\n");
        let partial = ev("chat.message", "2026-11-03T15:00:00Z", "k1", "m", usage);
        let bytes = format!("{text}\n{partial}");
        let mut r = Rollup::default();
        let used = r.scan(bytes.as_bytes());
        assert_eq!(used, text.len() + 1, "the partial last line was consumed");
        assert_eq!((r.events, r.unreadable), (3, 1));
        assert_eq!(
            totals(&r),
            Sums {
                requests: 3,
                input_tokens: 3,
                output_tokens: 4,
                total_tokens: 7,
                blocked: 1,
                redacted: 1
            }
        );
        let hour14 = crate::usage::time::parse_rfc3339("2026-11-03T14:00:00Z").map(|s| s / HOUR);
        let hours: Vec<i64> = r.cells().map(|(c, _)| c.hour).collect();
        assert_eq!(hours.iter().filter(|h| Some(**h) == hour14).count(), 1);
        assert_eq!(r.len(), 3, "hour 14 k1, hour 15 k1, hour 15 k2");
        r.scan(format!("{partial}\n").as_bytes());
        assert_eq!(totals(&r).requests, 4);
    }

    #[test]
    fn merge_maps_names_and_adds_cells() {
        let s = |n: u64| Sums {
            requests: n,
            input_tokens: 10 * n,
            output_tokens: 100 * n,
            total_tokens: 110 * n,
            blocked: 0,
            redacted: n,
        };
        let mut a = Rollup::default();
        a.add(5, Some("k1"), Some("t"), Some("m1"), &s(1));
        a.add(5, None, None, None, &s(2));
        let mut b = Rollup::default();
        // Other ids for the same names, and a new name.
        b.add(6, Some("m2"), None, Some("k1"), &s(4));
        b.add(5, Some("k1"), Some("t"), Some("m1"), &s(8));
        b.add(5, None, None, None, &s(16));
        let mut m = a.clone();
        m.freeze();
        b.freeze();
        m.merge(&b);
        assert_eq!(m.len(), 3);
        let find = |r: &Rollup, k: Option<&str>, model: Option<&str>, hour: i64| {
            r.cells()
                .find(|(c, _)| r.name(c.key) == k && r.name(c.model) == model && c.hour == hour)
                .map(|(_, s)| *s)
        };
        assert_eq!(find(&m, Some("k1"), Some("m1"), 5), Some(s(9)));
        assert_eq!(find(&m, None, None, 5), Some(s(18)));
        assert_eq!(find(&m, Some("m2"), Some("k1"), 6), Some(s(4)));
        // Merging is order-free.
        let mut m2 = b.clone();
        m2.merge(&a);
        assert_eq!(totals(&m), totals(&m2));
        assert_eq!(totals(&m), s(31));
    }

    #[test]
    fn sums_saturate() {
        let mut a = Sums {
            requests: u64::MAX - 1,
            ..Sums::default()
        };
        a.add(&Sums {
            requests: 5,
            ..Sums::default()
        });
        assert_eq!(a.requests, u64::MAX);
    }
}
