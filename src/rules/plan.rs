//! How the regexes of a rule set are run. One multi-pattern automaton over every byte is the general way, but
//! on prose most patterns can be ruled out almost for free: a secret starts with a known prefix (`AKIA`,
//! `sk-`), a card number or a phone number cannot exist where there is no digit, an email not where there is
//! no `@`. So patterns are planned into groups at compile time, each a single `meta::Regex` (multi-pattern
//! where there are several):
//!
//! - `Prefixed`: every match starts with one of a small set of literals of 3+ bytes. One multi-pattern regex;
//!   its prefilter (Teddy / Aho-Corasick over the union of prefixes) skips the rest of the text.
//! - `Windowed`: bounded patterns (longest match `reach` bytes) of which every match contains a byte of a rare
//!   set (digits, `@`, `+`…). One multi-pattern regex, run only on the windows `[p - reach, p + reach]`
//!   around the positions of those bytes. Exact: a match containing byte `p` lies inside its window, and
//!   adjacent windows merge, so nothing is cut.
//! - `IfPresent`: unbounded patterns with a rare required byte: run alone (the meta regex then finds its own
//!   inner-literal prefilter), and not at all when the text has none of those bytes.
//! - `Everything`: the rest, one multi-pattern regex over the whole text.

use regex_automata::util::prefilter::Prefilter;
use regex_automata::MatchKind;
use regex_syntax::hir::literal::Extractor;
use regex_syntax::hir::{Class, Hir, HirKind};

/// A set of bytes: a lookup table, and the same set as ranges for the block-wise search of [`ByteSet::find`].
#[derive(Clone)]
pub struct ByteSet {
    table: Box<[bool; 256]>,
    /// `(first, last - first)` of each run of consecutive bytes in the set, in order.
    ranges: Vec<(u8, u8)>,
}

impl PartialEq for ByteSet {
    fn eq(&self, other: &Self) -> bool {
        self.table == other.table
    }
}

impl Eq for ByteSet {}

impl std::fmt::Debug for ByteSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let bytes: String = (0u8..=127)
            .filter(|&b| self.contains(b))
            .map(|b| b as char)
            .collect();
        write!(
            f,
            "ByteSet({bytes:?}{})",
            if self.contains(200) { "+non-ascii" } else { "" }
        )
    }
}

/// The bytes a block-wise search looks at before it looks closer: small enough to stay in registers, large
/// enough that a block without a byte of the set costs a few vector instructions per range.
const BLOCK: usize = 64;

/// Past this many ranges, testing a block range by range costs more than the table, byte by byte.
const MAX_RANGES: usize = 6;

impl ByteSet {
    fn empty() -> Self {
        Self::from_table(Box::new([false; 256]))
    }

    fn single(b: u8) -> Self {
        Self::from_fn(|x| x == b)
    }

    /// The set of the bytes for which `f` holds.
    pub fn from_fn(f: impl Fn(u8) -> bool) -> Self {
        let mut table = Box::new([false; 256]);
        for b in 0..=255u8 {
            table[b as usize] = f(b);
        }
        Self::from_table(table)
    }

    fn from_table(table: Box<[bool; 256]>) -> Self {
        let mut ranges: Vec<(u8, u8)> = Vec::new();
        for b in 0..=255u8 {
            if !table[b as usize] {
                continue;
            }
            match ranges.last_mut() {
                Some((first, len)) if u16::from(*first) + u16::from(*len) + 1 == u16::from(b) => {
                    *len += 1
                }
                _ => ranges.push((b, 0)),
            }
        }
        ByteSet { table, ranges }
    }

    pub fn union(&mut self, other: &ByteSet) {
        let mut table = self.table.clone();
        for (a, b) in table.iter_mut().zip(other.table.iter()) {
            *a |= *b;
        }
        *self = Self::from_table(table);
    }

    /// How common the set's bytes are in prose: lower is rarer.
    fn score(&self) -> u32 {
        (0..256usize)
            .filter(|&b| self.table[b])
            .map(|b| match b as u8 {
                b' ' | b'\n' | b'\t' => 200,
                b'a'..=b'z' => 20,
                b'A'..=b'Z' => 3,
                b'.' | b',' | b'\'' | b'"' => 20,
                0x80..=0xFF => 1,
                _ => 1,
            })
            .sum()
    }

    /// Whether the bytes are rare enough in prose for skipping to them to pay.
    fn is_rare(&self) -> bool {
        self.score() <= 16
    }

    pub fn contains(&self, b: u8) -> bool {
        self.table[b as usize]
    }

    /// Whether `block` holds a byte of the set. Written as one branch-free pass per range so that the compiler
    /// vectorises it: a block of prose without the set's bytes (the common case) costs a few instructions per
    /// 16 or 32 bytes instead of a table lookup per byte.
    fn in_block(&self, block: &[u8]) -> bool {
        if self.ranges.len() > MAX_RANGES {
            return block.iter().any(|&b| self.contains(b));
        }
        self.ranges.iter().any(|&(first, len)| {
            block.iter().fold(0u8, |seen, &b| {
                seen | u8::from(b.wrapping_sub(first) <= len)
            }) != 0
        })
    }

    /// The positions in `hay` of the set's bytes, in order. Blocks without any are skipped whole.
    pub fn positions<'h>(&'h self, hay: &'h [u8]) -> impl Iterator<Item = usize> + 'h {
        hay.chunks(BLOCK)
            .enumerate()
            .filter(|(_, block)| self.in_block(block))
            .flat_map(move |(i, block)| {
                block
                    .iter()
                    .enumerate()
                    .filter(|&(_, &b)| self.contains(b))
                    .map(move |(k, _)| i * BLOCK + k)
            })
    }
}

/// How one group of patterns is searched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Prefixed,
    Windowed { bytes: ByteSet, reach: usize },
    IfPresent { bytes: ByteSet },
    Everything,
}

/// Byte sets such that every match of `hir` contains at least one byte of each.
fn required_sets(hir: &Hir) -> Vec<ByteSet> {
    match hir.kind() {
        HirKind::Empty | HirKind::Look(_) => Vec::new(),
        HirKind::Literal(lit) => lit.0.iter().map(|&b| ByteSet::single(b)).collect(),
        HirKind::Class(Class::Bytes(c)) => vec![ByteSet::from_fn(|b| {
            c.ranges()
                .iter()
                .any(|r| (r.start()..=r.end()).contains(&b))
        })],
        HirKind::Class(Class::Unicode(c)) => vec![ByteSet::from_fn(|b| {
            c.ranges().iter().any(|r| {
                let (start, end) = (u32::from(r.start()), u32::from(r.end()));
                // A non-ASCII character: its UTF-8 bytes are all >= 0x80.
                (start..=end).contains(&u32::from(b)) || (b >= 0x80 && end > 0x7F)
            })
        })],
        HirKind::Repetition(r) if r.min >= 1 => required_sets(&r.sub),
        HirKind::Repetition(_) => Vec::new(),
        HirKind::Capture(c) => required_sets(&c.sub),
        HirKind::Concat(subs) => subs.iter().flat_map(required_sets).collect(),
        HirKind::Alternation(alts) => {
            let mut union = ByteSet::empty();
            for alt in alts {
                match rarest(required_sets(alt)) {
                    Some(s) => union.union(&s),
                    None => return Vec::new(),
                }
            }
            vec![union]
        }
    }
}

fn rarest(sets: Vec<ByteSet>) -> Option<ByteSet> {
    sets.into_iter().min_by_key(ByteSet::score)
}

/// Whether every match starts with one of a few literals of at least 3 bytes.
fn has_good_prefixes(hir: &Hir) -> bool {
    let seq = Extractor::new().extract(hir);
    match (seq.literals(), seq.min_literal_len()) {
        (Some(lits), Some(min)) => !lits.is_empty() && lits.len() <= 64 && min >= 3,
        _ => false,
    }
}

/// The scope a pattern belongs to (its parsed HIR and its longest match, if bounded).
pub fn scope_of(hir: &Hir) -> Scope {
    if has_good_prefixes(hir) {
        return Scope::Prefixed;
    }
    match rarest(required_sets(hir)) {
        Some(bytes) if bytes.is_rare() => match hir.properties().maximum_len() {
            Some(reach) => Scope::Windowed { bytes, reach },
            None => Scope::IfPresent { bytes },
        },
        _ => Scope::Everything,
    }
}

/// The most literals a gate keeps: Teddy, the fastest multi-literal searcher, takes up to 64.
const GATE_LITERALS: usize = 64;

/// The gate of a `Prefixed` group: one searcher over the prefix literals of all its patterns, without those
/// another one starts, cut only as short as needed (down to 3 bytes) to keep at most [`GATE_LITERALS`], so that
/// however many patterns the group holds the set stays small enough for Teddy while the literals stay long
/// enough to be rare in prose (`postgres://` cut to 4 bytes would stop at every "post"). Every match of the group starts
/// where the gate finds a literal, so one pass of the gate over the text, with an anchored search of the
/// group at each place it reports, finds every match: the group's automaton never walks the text between
/// them, however large it is. `None` when a pattern has no finite prefix set (it is then not `Prefixed`).
pub fn prefix_gate(patterns: &[String]) -> Option<Prefilter> {
    let mut literals: Vec<Vec<u8>> = Vec::new();
    for p in patterns {
        let hir = regex_syntax::parse(p).ok()?;
        let seq = Extractor::new().extract(&hir);
        literals.extend(seq.literals()?.iter().map(|l| l.as_bytes().to_vec()));
    }
    // Families are cut, the largest first, until the set fits; only then is every literal cut short.
    for family in [FAMILY, 2, 1] {
        literals = families_cut(literals, family);
        if literals.len() <= GATE_LITERALS {
            break;
        }
    }
    let mut cut = Vec::new();
    for keep in [usize::MAX, 8, 6, 5, 4, 3] {
        cut = literals
            .iter()
            .map(|l| l[..l.len().min(keep)].to_vec())
            .collect();
        cut.sort();
        // Sorted, a literal that another starts comes right after it, or after others it starts too.
        let mut kept: Vec<Vec<u8>> = Vec::with_capacity(cut.len());
        for l in cut {
            if !kept.last().is_some_and(|k| l.starts_with(k)) {
                kept.push(l);
            }
        }
        cut = kept;
        if cut.len() <= GATE_LITERALS {
            break;
        }
    }
    if cut.iter().any(Vec::is_empty) {
        return None;
    }
    Prefilter::new(MatchKind::LeftmostFirst, &cut)
}

/// More literals than this with the same first 3 bytes are one family (`xox[abprse]-` is six), searched for
/// by their common prefix; smaller families are cut too, largest first, while the gate holds too many.
const FAMILY: usize = 4;

/// `literals` with each family of more than `family` members (see [`FAMILY`]) replaced by the longest prefix
/// its members share, so that the gate stays within [`GATE_LITERALS`] without cutting every literal short:
/// `postgres://` stays whole and rare in prose while `xoxa-`…`xoxs-` become `xox`.
fn families_cut(mut literals: Vec<Vec<u8>>, family: usize) -> Vec<Vec<u8>> {
    literals.sort();
    literals.dedup();
    let mut out: Vec<Vec<u8>> = Vec::with_capacity(literals.len());
    for members in literals.chunk_by(|a, b| a.len() >= 3 && b.len() >= 3 && a[..3] == b[..3]) {
        if members.len() <= family {
            out.extend(members.iter().cloned());
            continue;
        }
        let first = &members[0];
        let common = members
            .iter()
            .map(|l| l.iter().zip(first).take_while(|(a, b)| a == b).count())
            .min()
            .unwrap_or(0);
        out.push(first[..common].to_vec());
    }
    out
}

/// Merged windows `[p - reach, p + reach + 1)` around every byte of `bytes` in `hay`, on char boundaries.
pub fn windows(hay: &str, bytes: &ByteSet, reach: usize) -> Vec<(usize, usize)> {
    let b = hay.as_bytes();
    let mut out: Vec<(usize, usize)> = Vec::new();
    for i in bytes.positions(b) {
        let mut start = i.saturating_sub(reach);
        while start > 0 && !hay.is_char_boundary(start) {
            start -= 1;
        }
        let mut end = (i + reach + 1).min(b.len());
        while end < b.len() && !hay.is_char_boundary(end) {
            end += 1;
        }
        match out.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => out.push((start, end)),
        }
    }
    out
}

/// Whether `hay` contains any byte of `bytes`.
pub fn any_byte(hay: &str, bytes: &ByteSet) -> bool {
    hay.as_bytes()
        .chunks(BLOCK)
        .any(|block| bytes.in_block(block))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(p: &str) -> Scope {
        scope_of(&regex_syntax::parse(p).expect("parses"))
    }

    #[test]
    fn patterns_are_planned_by_their_cheapest_filter() {
        assert_eq!(scope(r"(?-u:\b)(?:AKIA|ASIA)[A-Z0-9]{16}"), Scope::Prefixed);
        assert_eq!(scope(r"sk-[A-Za-z0-9]{20,}"), Scope::Prefixed);
        assert!(matches!(
            scope(r"(?-u:\b)[0-9]{3}-[0-9]{2}-[0-9]{4}"),
            Scope::Windowed { reach: 11, .. }
        ));
        assert!(matches!(
            scope(r"[a-z]+@[a-z]+\.[a-z]{2,}"),
            Scope::IfPresent { .. }
        ));
        assert_eq!(scope(r"[a-z]+ing"), Scope::Everything);
        assert_eq!(scope(r"hello|[0-9]+"), Scope::Everything);
    }

    #[test]
    fn windows_merge_and_respect_char_boundaries() {
        let digits = ByteSet::from_fn(|b| b.is_ascii_digit());
        assert_eq!(
            windows("abc 1 def 2 ghi", &digits, 2),
            vec![(2, 7), (8, 13)]
        );
        assert_eq!(windows("ab12cd", &digits, 1), vec![(1, 5)]);
        let w = windows("é1é", &digits, 1);
        assert_eq!(w, vec![(0, 5)]);
        assert!(windows("no digits", &digits, 5).is_empty());
    }

    #[test]
    fn block_search_agrees_with_the_table_byte_by_byte() {
        // Sets of one range, several ranges, and more ranges than the block-wise test takes (the table then),
        // over texts long enough to span several blocks, with hits at block edges.
        let sets = [
            ByteSet::from_fn(|b| b.is_ascii_digit()),
            ByteSet::single(b'@'),
            ByteSet::from_fn(|b| matches!(b, b':' | b'=' | b'+' | b'0'..=b'9')),
            ByteSet::from_fn(|b| b >= 0x80),
            ByteSet::from_fn(|b| b.is_multiple_of(7)),
        ];
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for round in 0..2000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 300) as usize;
            let density = 1 + (x >> 20) % 64;
            let hay: Vec<u8> = (0..len)
                .map(|i| {
                    let h = x.wrapping_mul(i as u64 + 1).rotate_left(17);
                    if h.is_multiple_of(density) {
                        (h >> 8) as u8
                    } else {
                        b"the quick brown fox "[i % 20]
                    }
                })
                .collect();
            for set in &sets {
                let want: Vec<usize> = (0..hay.len()).filter(|&i| set.contains(hay[i])).collect();
                let got: Vec<usize> = set.positions(&hay).collect();
                assert_eq!(got, want, "round {round}: {set:?}");
                let text = String::from_utf8_lossy(&hay);
                assert_eq!(
                    any_byte(&text, set),
                    text.bytes().any(|b| set.contains(b)),
                    "round {round}"
                );
            }
        }
    }

    #[test]
    fn large_literal_families_are_cut_to_their_common_prefix_and_the_rest_kept_whole() {
        let lits = |l: &[&str]| l.iter().map(|s| s.as_bytes().to_vec()).collect::<Vec<_>>();
        let mut input = lits(&["postgres://", "postgresql://", "ghp_", "gho_", "A3T"]);
        input.extend((b'A'..=b'Z').map(|c| [b"A3T".as_slice(), &[c]].concat()));
        input.extend(lits(&[
            "xoxa-", "xoxb-", "xoxp-", "xoxr-", "xoxs-", "xoxe-",
        ]));
        let mut want = lits(&["A3T", "gho_", "ghp_", "postgres://", "postgresql://", "xox"]);
        want.sort();
        assert_eq!(families_cut(input, FAMILY), want);
    }

    #[test]
    fn the_gate_stops_at_every_place_a_prefixed_match_starts() {
        let patterns: Vec<String> = [
            r"(?-u:\b)(?:AKIA|ASIA|ABIA|ACCA|A3T[A-Z0-9])[A-Z0-9]{16}(?-u:\b)",
            r"(?i:(?-u:\b)npm_[a-z0-9]{36}(?-u:\b))",
            r"postgres(?:ql)?://[^\s:@/]{1,64}:[^\s@/]{1,128}@[^\s/]{1,255}",
            r"sk-ant-(?:api|admin|oat)[0-9]{2}-[A-Za-z0-9_-]{32,}",
            r"sk-[A-Za-z0-9_-]{20,}",
        ]
        .iter()
        .map(|p| p.to_string())
        .collect();
        let gate = prefix_gate(&patterns).expect("a gate");
        let re = regex_automata::meta::Regex::new_many(&patterns).expect("compiles");
        let hay = "x AKIAIOSFODNN7EXAMPLE nPm_abcdefghijklmnopqrstuvwxyz0123456789 \
                   postgresql://u:p@db sk-ant-api03-abcdefghijklmnopqrstuvwxyz0123456789 \
                   sk-abcdefghijklmnopqrstuvwxyz post A3TXABCDEFGHIJKLMNOP";
        let starts: Vec<usize> = re.find_iter(hay).map(|m| m.start()).collect();
        assert_eq!(starts.len(), 6, "{starts:?}");
        let mut stops = Vec::new();
        let mut at = 0;
        while let Some(c) = gate.find(hay.as_bytes(), regex_automata::Span::from(at..hay.len())) {
            stops.push(c.start);
            at = c.start + 1;
        }
        for s in starts {
            assert!(stops.contains(&s), "no stop at {s}: {stops:?}");
        }
    }
}
