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

use regex_syntax::hir::literal::Extractor;
use regex_syntax::hir::{Class, Hir, HirKind};

/// A set of bytes, as a lookup table.
#[derive(Clone, PartialEq, Eq)]
pub struct ByteSet(pub Box<[bool; 256]>);

impl std::fmt::Debug for ByteSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let bytes: String = (0u8..=127)
            .filter(|&b| self.0[b as usize])
            .map(|b| b as char)
            .collect();
        write!(
            f,
            "ByteSet({bytes:?}{})",
            if self.0[200] { "+non-ascii" } else { "" }
        )
    }
}

impl ByteSet {
    fn empty() -> Self {
        ByteSet(Box::new([false; 256]))
    }

    fn single(b: u8) -> Self {
        let mut s = Self::empty();
        s.0[b as usize] = true;
        s
    }

    pub fn union(&mut self, other: &ByteSet) {
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            *a |= *b;
        }
    }

    /// How common the set's bytes are in prose: lower is rarer.
    fn score(&self) -> u32 {
        (0..256usize)
            .filter(|&b| self.0[b])
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
        self.0[b as usize]
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
        HirKind::Class(Class::Bytes(c)) => {
            let mut s = ByteSet::empty();
            for r in c.ranges() {
                for b in r.start()..=r.end() {
                    s.0[b as usize] = true;
                }
            }
            vec![s]
        }
        HirKind::Class(Class::Unicode(c)) => {
            let mut s = ByteSet::empty();
            for r in c.ranges() {
                let (start, end) = (u32::from(r.start()), u32::from(r.end()));
                for cp in start..=end.min(0x7F) {
                    s.0[cp as usize] = true;
                }
                if end > 0x7F {
                    // Any non-ASCII character: its UTF-8 bytes are all >= 0x80.
                    for b in 0x80..=0xFF {
                        s.0[b] = true;
                    }
                }
            }
            vec![s]
        }
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

/// Merged windows `[p - reach, p + reach + 1)` around every byte of `bytes` in `hay`, on char boundaries.
pub fn windows(hay: &str, bytes: &ByteSet, reach: usize) -> Vec<(usize, usize)> {
    let b = hay.as_bytes();
    let mut out: Vec<(usize, usize)> = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if !bytes.contains(b[i]) {
            i += 1;
            continue;
        }
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
        i += 1;
    }
    out
}

/// Whether `hay` contains any byte of `bytes`.
pub fn any_byte(hay: &str, bytes: &ByteSet) -> bool {
    hay.bytes().any(|b| bytes.contains(b))
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
        let mut digits = ByteSet::empty();
        for b in b'0'..=b'9' {
            digits.0[b as usize] = true;
        }
        assert_eq!(
            windows("abc 1 def 2 ghi", &digits, 2),
            vec![(2, 7), (8, 13)]
        );
        assert_eq!(windows("ab12cd", &digits, 1), vec![(1, 5)]);
        let w = windows("é1é", &digits, 1);
        assert_eq!(w, vec![(0, 5)]);
        assert!(windows("no digits", &digits, 5).is_empty());
    }
}
