//! The exact hold-back for text that arrives in pieces (a streamed answer, one per choice and per tool call):
//! release at once everything that can no longer become part of a match, redacted; hold only the suffix that
//! still could (see `rules::RuleSet::hold_from`). A value split across pieces at any byte never leaves in
//! fragments: either it is released whole and redacted, or the stream is blocked before any of it leaves.

use crate::rules::{redact, Action, Direction, Mode, PrefixCache, RuleSet};

/// The default for the most bytes held for one text (`inspect.max_stream_hold_bytes`). A value longer than
/// the cap (an unbounded pattern fed without end) is released in part: the bound keeps memory and latency
/// finite, and is far above any real secret or identifier.
pub const MAX_HELD: usize = 8 * 1024;

/// What a piece of text turned into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Release {
    /// Text to send now (possibly empty, possibly redacted), and the rules whose matches it settled.
    Text { text: String, rules: Vec<usize> },
    /// An enforced block rule matched: nothing more of this stream may leave.
    Block { rule: usize },
}

/// The held suffix of one growing text.
#[derive(Debug, Default)]
pub struct HeldText {
    pending: String,
    cache: PrefixCache,
}

impl HeldText {
    /// Bytes currently held.
    pub fn held(&self) -> usize {
        self.pending.len()
    }

    /// Adds a piece and returns what can be released; at most `cap` bytes stay held.
    pub fn push(&mut self, piece: &str, set: &RuleSet, monitor: bool, cap: usize) -> Release {
        self.pending.push_str(piece);
        let matches = set.scan(&self.pending, Direction::Response);
        if let Some(rule) = blocking(set, &matches, monitor) {
            self.pending.clear();
            return Release::Block { rule };
        }
        let mut cut = set.hold_from(&self.pending, &mut self.cache);
        if self.pending.len() - cut > cap {
            cut = self.pending.len() - cap;
            while !self.pending.is_char_boundary(cut) {
                cut += 1;
            }
        }
        // A settled match that the cut would split is held whole (matches are sorted and disjoint).
        for m in matches.iter().rev() {
            if m.start < cut && m.end > cut {
                cut = m.start;
            }
        }
        self.release(set, &matches, cut, monitor)
    }

    /// The text has ended: everything held is final; inspect it once more and release it.
    pub fn finish(&mut self, set: &RuleSet, monitor: bool) -> Release {
        let matches = set.scan(&self.pending, Direction::Response);
        if let Some(rule) = blocking(set, &matches, monitor) {
            self.pending.clear();
            return Release::Block { rule };
        }
        let all = self.pending.len();
        self.release(set, &matches, all, monitor)
    }

    fn release(
        &mut self,
        set: &RuleSet,
        matches: &[crate::rules::Match],
        cut: usize,
        monitor: bool,
    ) -> Release {
        let settled: Vec<_> = matches.iter().filter(|m| m.end <= cut).collect();
        let redactions = settled.iter().filter_map(|m| {
            let r = set.rule(m.rule);
            (r.action == Action::Redact && r.mode == Mode::Enforce && !monitor)
                .then(|| (m.range(), r.replacement.as_str()))
        });
        let text = redact(&self.pending[..cut], redactions);
        self.pending.drain(..cut);
        Release::Text {
            text,
            rules: settled.iter().map(|m| m.rule).collect(),
        }
    }
}

fn blocking(set: &RuleSet, matches: &[crate::rules::Match], monitor: bool) -> Option<usize> {
    matches
        .iter()
        .filter(|m| {
            let r = set.rule(m.rule);
            r.action == Action::Block && r.mode == Mode::Enforce && !monitor
        })
        .map(|m| m.rule)
        .max_by_key(|&i| set.rule(i).severity)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{load, Budget};

    fn pack() -> RuleSet {
        load(
            std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/rules")),
            &Budget::default(),
        )
        .expect("pack")
    }

    /// Feeds `pieces`; returns what left at each step and how it ended.
    fn run(set: &RuleSet, pieces: &[&str]) -> (Vec<String>, Option<String>) {
        let mut h = HeldText::default();
        let mut out = Vec::new();
        for p in pieces {
            match h.push(p, set, false, MAX_HELD) {
                Release::Text { text, .. } => out.push(text),
                Release::Block { rule } => return (out, Some(set.rule(rule).id.clone())),
            }
        }
        match h.finish(set, false) {
            Release::Text { text, .. } => out.push(text),
            Release::Block { rule } => return (out, Some(set.rule(rule).id.clone())),
        }
        (out, None)
    }

    #[test]
    fn a_value_split_at_every_byte_never_leaves_in_fragments() {
        let set = pack();
        let cases = [
            ("jane.doe@example.com", Some("[EMAIL]"), None),
            ("4111 1111 1111 1111", Some("[CARD]"), None),
            ("078-05-1120", Some("[SSN]"), None),
            (
                "AKIAIOSFODNN7EXAMPLE",
                None,
                Some("secret.aws_access_key_id"),
            ),
            ("Project Bluebird", None, Some("confidential.codename")),
            ("jané.dœ@exämple.com", None, None),
        ];
        for (value, replacement, block) in cases {
            let text = format!("Before the value: {value} and after it.");
            let start = text.find(value).expect("found");
            for cut in start..=start + value.len() {
                if !text.is_char_boundary(cut) {
                    continue;
                }
                let (out, blocked) = run(&set, &[&text[..cut], &text[cut..]]);
                let joined = out.concat();
                match (replacement, block) {
                    (Some(r), _) => {
                        assert_eq!(blocked, None);
                        assert_eq!(joined, text.replace(value, r), "split at {cut}");
                    }
                    (None, Some(rule)) => {
                        assert_eq!(blocked.as_deref(), Some(rule), "split at {cut}");
                        // What left before the block is a prefix of the text before the value: no fragment.
                        assert!(
                            text[..start].starts_with(&joined),
                            "{value} leaked at {cut}: {joined:?}"
                        );
                    }
                    (None, None) => assert_eq!(joined, text, "clean text passes whole at {cut}"),
                }
            }
        }
    }

    #[test]
    fn prose_is_released_at_once_except_a_possible_start() {
        let set = pack();
        let mut h = HeldText::default();
        let Release::Text { text, .. } = h.push(
            "The quarterly report is ready. Revenue grew by",
            &set,
            false,
            MAX_HELD,
        ) else {
            panic!("not blocked")
        };
        // Only the last word could still become an email: the rest leaves now.
        assert_eq!(text, "The quarterly report is ready. Revenue grew ");
        assert_eq!(h.held(), 2);
        let Release::Text { text, .. } = h.push(" 4% this year. ", &set, false, MAX_HELD) else {
            panic!()
        };
        assert_eq!(text, "by 4% this year. ");
        assert_eq!(h.held(), 0);
    }

    #[test]
    fn the_cap_bounds_what_one_text_holds() {
        let set = pack();
        let mut h = HeldText::default();
        // One endless "word" could always still become an email: only the cap releases it.
        let Release::Text { text, .. } = h.push(&"a".repeat(300), &set, false, 100) else {
            panic!()
        };
        assert_eq!(text.len(), 200);
        assert_eq!(h.held(), 100);
    }
}
