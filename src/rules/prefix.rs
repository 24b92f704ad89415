//! Which part of a text that is still growing (a streamed answer) could yet become part of a match, decided as
//! the text arrives, in work linear in the text however it is split.
//!
//! A suffix starting at `p` must be held back if some rule could match a text that starts at `p` and runs past
//! the end of what has arrived. That is decided exactly by automata *anchored* at `p`: a lazy DFA over every
//! regex (built with `MatchKind::All`, so no match is pruned by priority) and Aho-Corasick NFAs over the
//! keyword terms. If the walk from `p` dies, nothing starting at `p` can match however the text continues; if
//! it is still alive at the end, it might. The earliest live start is where holding starts.
//!
//! Walking from every `p` separately costs the square of a run's length (a hex dump keeps an email's local
//! part alive from each of its characters). [`Growing`] walks every start at once instead: per view, a set of
//! *threads*, each an automaton state with the earliest start that reached it. Two starts in the same state
//! have the same future, so only the earlier one needs keeping: each byte steps each distinct live state once
//! and opens one thread for the start it is. The work per byte is the number of distinct live states — a
//! constant of the rule set — and the threads are carried from piece to piece, so nothing is walked twice.
//!
//! [`Growing`] also records when the earliest live start moved forward, which tells by when every start
//! before a cut was dead ([`Growing::settled_by`]): a match starting before the cut ends before then, so the
//! hold-back scans no further to settle what it releases.
//!
//! The lazy DFA's cache is per stream and shared by its texts. Clearing it (when full) invalidates the state
//! ids a text keeps between pieces: a text that sees the cache cleared walks its live suffix again, and if that
//! clears the cache once more, holds from there as if a match were still possible (safe, never exact-breaking
//! in the unsafe direction).

use std::collections::VecDeque;

use aho_corasick::automaton::{Automaton, StateID};
use aho_corasick::nfa::contiguous;
use aho_corasick::{Anchored as AcAnchored, MatchKind as AcMatchKind};
use regex_automata::hybrid::dfa::{Cache, DFA};
use regex_automata::hybrid::LazyStateID;
use regex_automata::util::start;
use regex_automata::{Anchored, MatchKind};

use super::normalize::View;

/// The automata of one rule set.
pub struct Prefixes {
    dfa: Option<DFA>,
    folded: Option<contiguous::NFA>,
    exact: Option<contiguous::NFA>,
}

/// Per-stream scratch space for the lazy DFA (each stream owns one, shared by its texts; the rule set is
/// shared by every stream).
#[derive(Default)]
pub struct PrefixCache(Option<Cache>);

impl std::fmt::Debug for PrefixCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PrefixCache")
    }
}

impl Prefixes {
    pub fn build(patterns: &[String], folded: &[String], exact: &[String]) -> Result<Self, String> {
        Self::build_with(patterns, folded, exact, None)
    }

    /// `cache_bytes` overrides the lazy DFA's cache capacity (tests use a tiny one to force clears).
    fn build_with(
        patterns: &[String],
        folded: &[String],
        exact: &[String],
        cache_bytes: Option<usize>,
    ) -> Result<Self, String> {
        let dfa = if patterns.is_empty() {
            None
        } else {
            let mut config = DFA::config().match_kind(MatchKind::All);
            if let Some(bytes) = cache_bytes {
                config = config.cache_capacity(bytes).skip_cache_capacity_check(true);
            }
            Some(
                DFA::builder()
                    .configure(config)
                    .build_many(patterns)
                    .map_err(|e| e.to_string())?,
            )
        };
        let nfa = |terms: &[String]| -> Result<Option<contiguous::NFA>, String> {
            if terms.is_empty() {
                return Ok(None);
            }
            contiguous::NFA::builder()
                .match_kind(AcMatchKind::Standard)
                .build(terms)
                .map(Some)
                .map_err(|e| e.to_string())
        };
        Ok(Self {
            dfa,
            folded: nfa(folded)?,
            exact: nfa(exact)?,
        })
    }
}

/// Where matches could still start in one growing text: its live threads, carried from piece to piece.
///
/// Offsets are byte offsets of the original text (what was fed), from its first byte.
#[derive(Debug, Default)]
pub struct Growing {
    /// Regexes and case-sensitive keywords, over the normalised view.
    norm: Lane,
    /// Case-insensitive keywords, over the folded view.
    fold: Lane,
    /// Bytes fed so far.
    now: usize,
    /// Automaton steps and view bytes so far: the work done, for budgets and tests.
    steps: u64,
}

impl Growing {
    /// A text fed from `offset` on (what came before it is context of another round, never fed).
    pub fn at(offset: usize) -> Self {
        Self {
            now: offset,
            ..Self::default()
        }
    }

    /// Feeds what arrived since the last call: `buffer` is the text from `buffer_start` (a character boundary
    /// at or before one character ahead of [`Self::hold_from`]) to the new end; the part past the previous end
    /// is new. The text before the new part is needed only to walk again after a cache clear.
    pub fn push(
        &mut self,
        p: &Prefixes,
        cache: &mut PrefixCache,
        buffer: &str,
        buffer_start: usize,
    ) {
        let Some(piece) = self
            .now
            .checked_sub(buffer_start)
            .and_then(|from| buffer.get(from..))
        else {
            return;
        };
        if piece.is_empty() {
            return;
        }
        let held = Held {
            buffer,
            start: buffer_start,
        };
        if p.dfa.is_some() || p.exact.is_some() {
            let view = View::new(piece, false);
            self.steps += view.text().len() as u64;
            let dfa = p.dfa.as_ref().map(|d| {
                let c = cache.0.get_or_insert_with(|| d.create_cache());
                (d, c)
            });
            self.norm.push(
                &view,
                (self.now, self.now + piece.len()),
                dfa,
                p.exact.as_ref(),
                &held,
                &mut self.steps,
            );
        }
        if let Some(nfa) = &p.folded {
            let view = View::new(piece, true);
            self.steps += view.text().len() as u64;
            self.fold.push(
                &view,
                (self.now, self.now + piece.len()),
                None,
                Some(nfa),
                &held,
                &mut self.steps,
            );
        }
        self.now += piece.len();
        let from = self.hold_from();
        self.norm.trim(from);
        self.fold.trim(from);
    }

    /// The earliest offset from which a match could still form as more text arrives (the end when none can).
    pub fn hold_from(&self) -> usize {
        [self.norm.earliest(), self.fold.earliest()]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(self.now)
            .min(self.now)
    }

    /// For a `cut` at or before [`Self::hold_from`]: an offset by which every start before `cut` was dead, so
    /// every match starting before `cut` ends before it (the end of the text at the latest). Calls must come
    /// with cuts that never go back.
    pub fn settled_by(&mut self, cut: usize) -> usize {
        let now = self.now;
        self.norm
            .settled_by(cut, now)
            .max(self.fold.settled_by(cut, now))
    }

    /// Gives up the starts before `cut` (the text before it was released, whatever it was going to become):
    /// their threads count from `cut` on, so what they could still become is held from there.
    pub fn forget_before(&mut self, cut: usize) {
        let now = self.now;
        self.norm.forget_before(cut, now);
        self.fold.forget_before(cut, now);
    }

    /// Bytes fed so far.
    pub fn now(&self) -> usize {
        self.now
    }

    /// Work done so far: automaton steps and bytes of views built.
    pub fn steps(&self) -> u64 {
        self.steps
    }
}

/// The text a lane may need to walk again (after a cache clear).
struct Held<'a> {
    buffer: &'a str,
    start: usize,
}

/// The threads of one view: the regex DFA's (normalised view only) and one keyword automaton's.
#[derive(Debug, Default)]
struct Lane {
    regex: Vec<(LazyStateID, usize)>,
    terms: Vec<(StateID, usize)>,
    /// A start the lazy DFA could not follow (a quit byte, a failed walk): held as if always alive.
    opaque: Option<usize>,
    /// The last view byte, the look-behind of the next start.
    prev: Option<u8>,
    /// Where the earliest live start moved forward: `(offset reached, earliest live start there)`, in order.
    moved: VecDeque<(usize, usize)>,
    /// The earliest live start of the last record.
    last: usize,
    /// The cache's clear count when the regex threads' ids were taken.
    generation: usize,
    /// Since a cache clear in the current piece, the regex threads are unknown from this start on.
    lost: Option<usize>,
    scratch_regex: Vec<(LazyStateID, usize)>,
    scratch_terms: Vec<(StateID, usize)>,
}

impl Lane {
    /// The earliest live start, if any thread is alive (regex threads lost to a cache clear count from where
    /// they were lost).
    fn earliest(&self) -> Option<usize> {
        let regex = self.regex.iter().map(|t| t.1);
        let terms = self.terms.iter().map(|t| t.1);
        regex.chain(terms).chain(self.opaque).chain(self.lost).min()
    }

    /// Walks the view of one piece, `(base, end)` its original offsets.
    fn push(
        &mut self,
        view: &View<'_>,
        (base, end): (usize, usize),
        mut dfa: Option<(&DFA, &mut Cache)>,
        nfa: Option<&contiguous::NFA>,
        held: &Held<'_>,
        steps: &mut u64,
    ) {
        if let Some((_, cache)) = &dfa {
            if cache.clear_count() != self.generation {
                // Another text of the stream cleared the cache: these ids mean nothing now.
                self.lose(None);
                self.generation = cache.clear_count();
            }
        }
        let text = view.text();
        let bytes = text.as_bytes();
        for (p, c) in text.char_indices() {
            let len = c.len_utf8();
            let orig = view.to_original(p..p + len);
            let start = base + orig.start;
            if let Some((d, cache)) = dfa.as_mut() {
                self.spawn_regex(d, cache, start, steps);
            }
            if let Some(n) = nfa {
                *steps += 1;
                if let Ok(sid) = n.start_state(AcAnchored::Yes) {
                    if !n.is_dead(sid) {
                        self.terms.push((sid, start));
                    }
                }
            }
            for &b in &bytes[p..p + len] {
                if let Some((d, cache)) = dfa.as_mut() {
                    self.step_regex(d, cache, b, steps);
                }
                if let Some(n) = nfa {
                    self.step_terms(n, b, steps);
                }
                self.prev = Some(b);
            }
            self.record(base + orig.end);
        }
        if let (Some(from), Some((d, cache))) = (self.lost, dfa) {
            self.walk_again(d, cache, held, from, end, steps);
        }
    }

    /// Opens the thread of a start at `start`.
    fn spawn_regex(&mut self, dfa: &DFA, cache: &mut Cache, start: usize, steps: &mut u64) {
        if self.lost.is_some() {
            return;
        }
        *steps += 1;
        let config = start::Config::new()
            .anchored(Anchored::Yes)
            .look_behind(self.prev);
        match dfa.start_state(cache, &config) {
            Ok(sid) if sid.is_dead() => {}
            Ok(sid) if !sid.is_quit() => self.regex.push((sid, start)),
            _ => self.opaque = Some(self.opaque.map_or(start, |o| o.min(start))),
        }
        if cache.clear_count() != self.generation {
            self.lose(Some(start));
            self.generation = cache.clear_count();
        }
    }

    /// Steps every regex thread over `b`, keeping the earliest start per state.
    fn step_regex(&mut self, dfa: &DFA, cache: &mut Cache, b: u8, steps: &mut u64) {
        if self.lost.is_some() || self.regex.is_empty() {
            return;
        }
        let mut next = std::mem::take(&mut self.scratch_regex);
        next.clear();
        for &(sid, s) in &self.regex {
            *steps += 1;
            match dfa.next_state(cache, sid, b) {
                Ok(n) if n.is_dead() => {}
                Ok(n) if !n.is_quit() => next.push((n, s)),
                _ => self.opaque = Some(self.opaque.map_or(s, |o| o.min(s))),
            }
            if cache.clear_count() != self.generation {
                break;
            }
        }
        if cache.clear_count() != self.generation {
            // The ids taken so far (and the ones not yet stepped) are stale: walk this text again later.
            self.scratch_regex = next;
            self.lose(None);
            self.generation = cache.clear_count();
            return;
        }
        dedup(&mut next);
        self.scratch_regex = std::mem::replace(&mut self.regex, next);
    }

    fn step_terms(&mut self, nfa: &contiguous::NFA, b: u8, steps: &mut u64) {
        if self.terms.is_empty() {
            return;
        }
        let mut next = std::mem::take(&mut self.scratch_terms);
        next.clear();
        for &(sid, s) in &self.terms {
            *steps += 1;
            let n = nfa.next_state(AcAnchored::Yes, sid, b);
            if !nfa.is_dead(n) {
                next.push((n, s));
            }
        }
        dedup(&mut next);
        self.scratch_terms = std::mem::replace(&mut self.terms, next);
    }

    /// The regex threads are lost (their ids are stale): from the earliest of them (or `also`), they will be
    /// walked again at the end of the piece.
    fn lose(&mut self, also: Option<usize>) {
        let earliest = self.regex.iter().map(|t| t.1).chain(also).min();
        self.regex.clear();
        self.lost = match (self.lost, earliest) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }

    /// Rebuilds the regex threads by walking the text from `from` to `end` again; a second clear on the way
    /// makes `from` opaque (held as if a match were still possible from there).
    fn walk_again(
        &mut self,
        dfa: &DFA,
        cache: &mut Cache,
        held: &Held<'_>,
        from: usize,
        end: usize,
        steps: &mut u64,
    ) {
        self.lost = None;
        self.regex.clear();
        let text = from
            .checked_sub(held.start)
            .zip(end.checked_sub(held.start))
            .and_then(|(a, b)| held.buffer.get(a..b).map(|t| (a, t)));
        let Some((at, text)) = text else {
            self.opaque = Some(self.opaque.map_or(from, |o| o.min(from)));
            return;
        };
        // The look-behind of the first start: the last view byte before it, past characters the view drops
        // (a zero-width space must not hide the word before it). If the buffer holds no such byte but the text
        // had bytes before the buffer, the look-behind is unknown: hold from `from` as if a match could start.
        let before = held.buffer[..at].chars().rev().find_map(|c| {
            let mut buf = [0u8; 4];
            View::new(c.encode_utf8(&mut buf), false)
                .text()
                .bytes()
                .next_back()
        });
        if before.is_none() && held.start > 0 {
            self.opaque = Some(self.opaque.map_or(from, |o| o.min(from)));
            return;
        }
        let saved_prev = std::mem::replace(&mut self.prev, before);
        let generation = cache.clear_count();
        self.generation = generation;
        let view = View::new(text, false);
        *steps += view.text().len() as u64;
        let bytes = view.text().as_bytes();
        for (p, c) in view.text().char_indices() {
            let orig = view.to_original(p..p + c.len_utf8());
            self.spawn_regex(dfa, cache, from + orig.start, steps);
            for &b in &bytes[p..p + c.len_utf8()] {
                self.step_regex(dfa, cache, b, steps);
                self.prev = Some(b);
            }
            if self.lost.is_some() {
                break;
            }
        }
        self.prev = saved_prev;
        if self.lost.take().is_some() {
            // Cleared again while walking: this text's states do not fit the cache; stop following them.
            self.regex.clear();
            self.opaque = Some(self.opaque.map_or(from, |o| o.min(from)));
            self.generation = cache.clear_count();
        }
    }

    /// Notes the earliest live start after the text up to `reached`, if it moved forward.
    fn record(&mut self, reached: usize) {
        let earliest = self.earliest().unwrap_or(reached);
        if earliest > self.last {
            self.last = earliest;
            self.moved.push_back((reached, earliest));
        }
    }

    fn settled_by(&mut self, cut: usize, now: usize) -> usize {
        while let Some(&(reached, earliest)) = self.moved.front() {
            if earliest >= cut {
                return reached;
            }
            self.moved.pop_front();
        }
        now
    }

    /// Drops records no later cut can ask about (cuts never go before `from`, the text's earliest live start),
    /// keeping the one that answers for `from` itself.
    fn trim(&mut self, from: usize) {
        while self.moved.len() > 1 && self.moved[1].1 <= from {
            self.moved.pop_front();
        }
    }

    fn forget_before(&mut self, cut: usize, now: usize) {
        for t in &mut self.regex {
            t.1 = t.1.max(cut);
        }
        for t in &mut self.terms {
            t.1 = t.1.max(cut);
        }
        self.opaque = self.opaque.map(|o| o.max(cut));
        self.lost = self.lost.map(|o| o.max(cut));
        self.record(now);
    }
}

/// Keeps one thread per state, the one with the earliest start.
fn dedup<S: Ord + Copy>(threads: &mut Vec<(S, usize)>) {
    if threads.len() > 1 {
        threads.sort_unstable();
        threads.dedup_by_key(|t| t.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::Rng;

    /// The walk from every start, one at a time: the definition the incremental walk must agree with.
    fn reference(p: &Prefixes, text: &str) -> usize {
        let mut cache = p.dfa.as_ref().map(DFA::create_cache);
        let mut earliest = text.len();
        let first_live = |view: &View<'_>, alive: &mut dyn FnMut(&[u8], usize) -> bool| {
            let hay = view.text();
            (0..hay.len())
                .find(|&i| hay.is_char_boundary(i) && alive(hay.as_bytes(), i))
                .map(|i| view.to_original(i..i + 1).start)
        };
        let norm = View::new(text, false);
        if let (Some(dfa), Some(cache)) = (&p.dfa, cache.as_mut()) {
            let mut alive = |hay: &[u8], i: usize| {
                let cfg = start::Config::new()
                    .anchored(Anchored::Yes)
                    .look_behind(i.checked_sub(1).map(|j| hay[j]));
                let Ok(mut sid) = dfa.start_state(cache, &cfg) else {
                    return true;
                };
                for &b in &hay[i..] {
                    let Ok(n) = dfa.next_state(cache, sid, b) else {
                        return true;
                    };
                    sid = n;
                    if sid.is_dead() {
                        return false;
                    }
                }
                true
            };
            if let Some(i) = first_live(&norm, &mut alive) {
                earliest = earliest.min(i);
            }
        }
        let terms = |nfa: &contiguous::NFA, view: &View<'_>| {
            first_live(view, &mut |hay: &[u8], i: usize| {
                let Ok(mut sid) = nfa.start_state(AcAnchored::Yes) else {
                    return true;
                };
                for &b in &hay[i..] {
                    sid = nfa.next_state(AcAnchored::Yes, sid, b);
                    if nfa.is_dead(sid) {
                        return false;
                    }
                }
                true
            })
        };
        if let Some(nfa) = &p.exact {
            if let Some(i) = terms(nfa, &norm) {
                earliest = earliest.min(i);
            }
        }
        if let Some(nfa) = &p.folded {
            if let Some(i) = terms(nfa, &View::new(text, true)) {
                earliest = earliest.min(i);
            }
        }
        earliest
    }

    /// The default pack's regexes and terms, compiled the way the engine compiles them.
    fn pack_patterns() -> (Vec<String>, Vec<String>, Vec<String>) {
        let patterns = vec![
            r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,24}".to_string(),
            r"(?-u:\b)(?:[0-9]{12,19}|[0-9]{4}(?:[ -][0-9]{4}){2}[ -][0-9]{1,4}(?:[ -][0-9]{1,3})?)(?-u:\b)"
                .to_string(),
            r"(?-u:\b)(?:AKIA|ASIA)[A-Z0-9]{16}(?-u:\b)".to_string(),
            r"(?-u:\b)sk-(?:proj-)?[A-Za-z0-9_-]{20,}".to_string(),
            r"(?-u:\b)[0-9]{3}-[0-9]{2}-[0-9]{4}(?-u:\b)".to_string(),
            // A term that must be glued to a word: its look-behind decides whether it can start at all.
            r"(?-u:\B)ret[a-z]{2}".to_string(),
        ];
        let folded = vec!["project bluebird".to_string(), "strasse".to_string()];
        let exact = vec!["TopSecret".to_string()];
        (patterns, folded, exact)
    }

    /// Texts made of what the patterns care about: word runs, digits, `@`, dots, dashes, spaces, prefixes of
    /// secrets and terms, case changes, non-ASCII letters and an invisible character.
    fn random_text(rng: &mut Rng) -> String {
        const ATOMS: &[&str] = &[
            "a",
            "Z",
            "7",
            "0",
            "@",
            ".",
            "-",
            " ",
            "_",
            "AKIA",
            "sk-",
            "proj-",
            "com",
            "Project Blue",
            "bird",
            "STRAẞE",
            "é",
            "\u{200B}",
            "４",
            "ﬁ",
            "TopSec",
            "ret",
            "4111",
            "\n",
            "/",
        ];
        let n = 1 + rng.below(60);
        (0..n).map(|_| ATOMS[rng.below(ATOMS.len())]).collect()
    }

    /// Splits `text` at random character boundaries.
    fn random_pieces<'t>(rng: &mut Rng, text: &'t str) -> Vec<&'t str> {
        let mut cuts: Vec<usize> = (0..rng.below(8))
            .map(|_| rng.below(text.len() + 1))
            .filter(|&c| text.is_char_boundary(c))
            .collect();
        cuts.sort_unstable();
        cuts.dedup();
        let mut out = Vec::new();
        let mut at = 0;
        for c in cuts.into_iter().chain([text.len()]) {
            out.push(&text[at..c]);
            at = c;
        }
        out
    }

    fn feed(p: &Prefixes, g: &mut Growing, cache: &mut PrefixCache, text: &str) {
        g.push(p, cache, text, 0);
    }

    #[test]
    fn the_incremental_walk_agrees_with_walking_from_every_start() {
        let (patterns, folded, exact) = pack_patterns();
        let p = Prefixes::build(&patterns, &folded, &exact).expect("build");
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..3000 {
            let text = random_text(&mut rng);
            let mut g = Growing::default();
            let mut cache = PrefixCache::default();
            let mut end = 0;
            for piece in random_pieces(&mut rng, &text) {
                end += piece.len();
                feed(&p, &mut g, &mut cache, &text[..end]);
                assert_eq!(
                    g.hold_from(),
                    reference(&p, &text[..end]),
                    "{:?} after {end} bytes",
                    &text
                );
            }
        }
    }

    #[test]
    fn every_match_starting_before_a_cut_ends_before_settled_by() {
        let (patterns, folded, exact) = pack_patterns();
        let p = Prefixes::build(&patterns, &folded, &exact).expect("build");
        let all: Vec<regex_automata::meta::Regex> = patterns
            .iter()
            .map(|r| regex_automata::meta::Regex::new(r).expect("regex"))
            .collect();
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        for _ in 0..3000 {
            let text = random_text(&mut rng);
            let view = View::new(&text, false);
            // Every match of every pattern at every start, in original offsets.
            let mut spans = Vec::new();
            for re in &all {
                for s in 0..view.text().len() {
                    let input = regex_automata::Input::new(view.text())
                        .range(s..)
                        .anchored(regex_automata::Anchored::Yes);
                    if let Some(m) = re.search(&input) {
                        spans.push(view.to_original(m.range()));
                    }
                }
            }
            let mut g = Growing::default();
            let mut cache = PrefixCache::default();
            let mut end = 0;
            for piece in random_pieces(&mut rng, &text) {
                end += piece.len();
                feed(&p, &mut g, &mut cache, &text[..end]);
                let cut = g.hold_from();
                let by = g.settled_by(cut);
                assert!(by <= end);
                for r in spans.iter().filter(|r| r.start < cut) {
                    assert!(
                        r.end < by,
                        "{text:?}: match {r:?} starts before {cut} but ends after {by}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_tiny_cache_that_keeps_clearing_never_holds_less() {
        let (patterns, folded, exact) = pack_patterns();
        let p = Prefixes::build_with(&patterns, &folded, &exact, Some(0)).expect("build");
        let mut rng = Rng(0x1234_5678_9abc_def1);
        let mut cleared = 0;
        for _ in 0..500 {
            let text = random_text(&mut rng);
            let mut g = Growing::default();
            let mut cache = PrefixCache::default();
            let mut end = 0;
            for piece in random_pieces(&mut rng, &text) {
                end += piece.len();
                feed(&p, &mut g, &mut cache, &text[..end]);
                assert!(
                    g.hold_from() <= reference(&p, &text[..end]),
                    "{text:?} after {end}"
                );
            }
            cleared += cache.0.as_ref().map_or(0, Cache::clear_count);
        }
        assert!(cleared > 0, "the cache was cleared on the way");
    }

    #[test]
    fn texts_sharing_a_cache_that_clears_walk_again_and_stay_exact() {
        // Two texts of one stream, fed in turns, share a small cache: each one's clears invalidate the other's
        // state ids, which it must notice and walk its live suffix again.
        let (patterns, folded, exact) = pack_patterns();
        let p = Prefixes::build_with(&patterns, &folded, &exact, Some(30_000)).expect("build");
        let mut rng = Rng(0x0bad_cafe_dead_beef);
        let mut cache = PrefixCache::default();
        for _ in 0..400 {
            let texts = [random_text(&mut rng), random_text(&mut rng)];
            let pieces = [
                random_pieces(&mut rng, &texts[0]),
                random_pieces(&mut rng, &texts[1]),
            ];
            let mut growing = [Growing::default(), Growing::default()];
            let mut ends = [0, 0];
            for step in 0..pieces[0].len().max(pieces[1].len()) {
                for t in 0..2 {
                    let Some(piece) = pieces[t].get(step) else {
                        continue;
                    };
                    ends[t] += piece.len();
                    feed(&p, &mut growing[t], &mut cache, &texts[t][..ends[t]]);
                    assert_eq!(
                        growing[t].hold_from(),
                        reference(&p, &texts[t][..ends[t]]),
                        "{:?} after {}",
                        texts[t],
                        ends[t]
                    );
                }
            }
        }
        assert!(
            cache.0.as_ref().map_or(0, Cache::clear_count) > 0,
            "the cache was cleared"
        );
    }

    #[test]
    fn walking_again_after_a_clear_looks_behind_characters_the_view_drops() {
        // Regression: after a cache clear the live suffix is walked again with the character before it as
        // look-behind; a zero-width space there hid the word before it, and a start that needs a word before
        // it (`\B`) was taken for dead and released.
        let p = Prefixes::build(&[r"(?-u:\B)ret[a-z]{2}".to_string()], &[], &[]).expect("build");
        let Some(dfa) = &p.dfa else {
            panic!("a regex set")
        };
        let mut cache = dfa.create_cache();
        let text = "a\u{200B}ret";
        let held = Held {
            buffer: text,
            start: 0,
        };
        let mut lane = Lane::default();
        let mut steps = 0;
        lane.walk_again(dfa, &mut cache, &held, 4, text.len(), &mut steps);
        assert_eq!(lane.earliest(), Some(4), "{lane:?}");
        // Where the buffer holds nothing visible before the start but the text had bytes before it, the
        // look-behind is unknown: held as if a match could start there.
        let held = Held {
            buffer: &text[1..],
            start: 1,
        };
        let mut lane = Lane::default();
        lane.walk_again(dfa, &mut cache, &held, 4, text.len(), &mut steps);
        assert_eq!(lane.earliest(), Some(4), "{lane:?}");
    }

    #[test]
    fn a_long_run_costs_steps_linear_in_its_length_however_it_is_split() {
        let (patterns, folded, exact) = pack_patterns();
        let p = Prefixes::build(&patterns, &folded, &exact).expect("build");
        let n = 64 << 10;
        let runs: [(&str, String); 3] = [
            (
                "hex",
                (0..n)
                    .map(|i| b"0123456789abcdef"[i % 16] as char)
                    .collect(),
            ),
            (
                "digits",
                (0..n)
                    .map(|i| (b'0' + (i * 7 % 10) as u8) as char)
                    .collect(),
            ),
            (
                "base64",
                (0..n)
                    .map(|i| {
                        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
                            [(i * 37) % 64] as char
                    })
                    .collect(),
            ),
        ];
        for (name, run) in runs {
            let text = run + " end";
            for piece in [text.len(), 1, 7] {
                let mut g = Growing::default();
                let mut cache = PrefixCache::default();
                let mut end = 0;
                for c in text.as_bytes().chunks(piece) {
                    end += c.len();
                    g.push(&p, &mut cache, &text[..end], 0);
                }
                // Nothing of the run can start a match once " end" arrived, except the last word.
                assert_eq!(g.hold_from(), text.len() - 3, "{name}");
                let per_byte = g.steps() as f64 / text.len() as f64;
                assert!(
                    g.steps() <= 64 * text.len() as u64,
                    "{name} in pieces of {piece}: {per_byte:.1} steps per byte"
                );
            }
        }
    }

    #[test]
    fn views_are_made_character_by_character() {
        // The walk builds the view of each piece on its own: that must be the view of the whole text.
        let texts = [
            "plain ascii",
            "jane\u{200B}.doe@exa\u{200D}mple.com",
            "STRAẞE ΟΔΥΣΣΕΥΣ ４１１１ ﬁle",
            "e\u{301}t\u{E0041}é",
        ];
        for t in texts {
            for fold in [false, true] {
                let whole = View::new(t, fold).text().to_string();
                for cut in (0..=t.len()).filter(|&c| t.is_char_boundary(c)) {
                    let joined = format!(
                        "{}{}",
                        View::new(&t[..cut], fold).text(),
                        View::new(&t[cut..], fold).text()
                    );
                    assert_eq!(joined, whole, "{t:?} cut at {cut}");
                }
            }
        }
    }
}
