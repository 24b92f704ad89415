//! Which part of a text that is still growing (a streamed answer) could yet become part of a match.
//!
//! A suffix starting at `p` must be held back if some rule could match a text that starts at `p` and runs past
//! the end of what has arrived. That is decided exactly, per position, by walking automata *anchored* at `p`:
//! a lazy DFA over every regex (built with `MatchKind::All`, so no match is pruned by priority) and
//! Aho-Corasick NFAs over the keyword terms. If the walk dies before the end of the text, nothing starting at
//! `p` can match however the text continues; if it is still alive at the end, it might. The earliest live
//! position is where holding starts; everything before it can be released (after redaction) at once.

use aho_corasick::automaton::Automaton;
use aho_corasick::nfa::contiguous;
use aho_corasick::{Anchored as AcAnchored, MatchKind as AcMatchKind};
use regex_automata::hybrid::dfa::{Cache, DFA};
use regex_automata::util::start;
use regex_automata::{Anchored, MatchKind};

use super::normalize::View;

/// The automata of one rule set.
pub struct Prefixes {
    dfa: Option<DFA>,
    folded: Option<contiguous::NFA>,
    exact: Option<contiguous::NFA>,
}

/// Per-stream scratch space for the lazy DFA (each stream owns one; the rule set is shared).
#[derive(Default)]
pub struct PrefixCache(Option<Cache>);

impl std::fmt::Debug for PrefixCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PrefixCache")
    }
}

impl Prefixes {
    pub fn build(patterns: &[String], folded: &[String], exact: &[String]) -> Result<Self, String> {
        let dfa = if patterns.is_empty() {
            None
        } else {
            Some(
                DFA::builder()
                    .configure(DFA::config().match_kind(MatchKind::All))
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

    /// The earliest byte offset of `text` from which a match could still form as more text arrives
    /// (`text.len()` when none can).
    pub fn hold_from(&self, text: &str, cache: &mut PrefixCache) -> usize {
        let mut earliest = text.len();
        if self.dfa.is_some() || self.exact.is_some() {
            let view = View::new(text, false);
            if let Some(dfa) = &self.dfa {
                let cache = cache.0.get_or_insert_with(|| dfa.create_cache());
                if let Some(p) = first_live(&view, |hay, p| regex_alive(dfa, cache, hay, p)) {
                    earliest = earliest.min(p);
                }
            }
            if let Some(nfa) = &self.exact {
                if let Some(p) = first_live(&view, |hay, p| terms_alive(nfa, hay, p)) {
                    earliest = earliest.min(p);
                }
            }
        }
        if let Some(nfa) = &self.folded {
            let view = View::new(text, true);
            if let Some(p) = first_live(&view, |hay, p| terms_alive(nfa, hay, p)) {
                earliest = earliest.min(p);
            }
        }
        earliest
    }
}

/// The original offset of the first view position (on a character boundary) where `alive` holds.
fn first_live(view: &View<'_>, mut alive: impl FnMut(&[u8], usize) -> bool) -> Option<usize> {
    let hay = view.text();
    (0..hay.len())
        .find(|&p| hay.is_char_boundary(p) && alive(hay.as_bytes(), p))
        .map(|p| view.to_original(p..p + 1).start)
}

fn regex_alive(dfa: &DFA, cache: &mut Cache, hay: &[u8], p: usize) -> bool {
    let cfg = start::Config::new()
        .anchored(Anchored::Yes)
        .look_behind(p.checked_sub(1).map(|i| hay[i]));
    // Any failure of the lazy DFA (a cache that gave up) counts as "alive": holding is the safe side.
    let Ok(mut sid) = dfa.start_state(cache, &cfg) else {
        return true;
    };
    for &b in &hay[p..] {
        sid = match dfa.next_state(cache, sid, b) {
            Ok(s) => s,
            Err(_) => return true,
        };
        if sid.is_dead() {
            return false;
        }
        if sid.is_quit() {
            return true;
        }
    }
    true
}

fn terms_alive(nfa: &contiguous::NFA, hay: &[u8], p: usize) -> bool {
    let Ok(mut sid) = nfa.start_state(AcAnchored::Yes) else {
        return true;
    };
    for &b in &hay[p..] {
        sid = nfa.next_state(AcAnchored::Yes, sid, b);
        if nfa.is_dead(sid) {
            return false;
        }
    }
    true
}
