//! The outcome of one request, as everything after inspection reports it — the response headers
//! (`x-promptgate-decision`, `x-promptgate-rules`), the decision event and the metrics: the decision on each
//! direction and the rule hits behind it.
//!
//! Each side is set once, when its inspection ends — the request's when its body is judged, the answer's when
//! a held answer is judged, a stream ends, or the answer is withheld — from the verdict, by the one rule of
//! [`super::judge`]. Everything else only reads it.

use super::{Decision, RuleHit, Verdict};
use crate::rules::RuleSet;

/// What was decided about one direction.
#[derive(Debug, Clone, Default)]
pub struct Side {
    pub decision: Decision,
    pub hits: Vec<RuleHit>,
    /// Whether this direction was inspected at all (a decision header and a decision metric exist only then).
    pub judged: bool,
}

impl Side {
    /// The side a verdict describes (a refused opaque input is a block).
    pub fn of(verdict: &Verdict) -> Self {
        Self {
            decision: if verdict.opaque_denied {
                Decision::Block
            } else {
                verdict.decision
            },
            hits: verdict.hits.clone(),
            judged: true,
        }
    }

    /// Inspection could not be done (it failed, or the answer was withheld).
    pub fn failed() -> Self {
        Self {
            decision: Decision::Error,
            hits: Vec::new(),
            judged: true,
        }
    }
}

/// Both directions of one request.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub request: Side,
    pub response: Side,
}

impl Outcome {
    /// The most severe decision of both directions.
    pub fn decision(&self) -> Decision {
        self.request.decision.max(self.response.decision)
    }

    /// Whether anything was inspected.
    pub fn judged(&self) -> bool {
        self.request.judged || self.response.judged
    }

    /// The ids of every rule that matched, in either direction, sorted, each once.
    pub fn rule_ids<'a>(&self, rules: &'a RuleSet) -> Vec<&'a str> {
        let mut ids: Vec<&str> = self
            .request
            .hits
            .iter()
            .chain(&self.response.hits)
            .map(|h| rules.rule(h.rule).id.as_str())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_most_severe_side_decides_and_errors_outrank_everything() {
        let side = |d: Decision| Side {
            decision: d,
            hits: Vec::new(),
            judged: true,
        };
        let cases = [
            (Decision::Allow, Decision::Allow, Decision::Allow),
            (Decision::Redact, Decision::Monitor, Decision::Redact),
            (Decision::Allow, Decision::Block, Decision::Block),
            (Decision::Error, Decision::Block, Decision::Error),
        ];
        for (req, resp, want) in cases {
            let o = Outcome {
                request: side(req),
                response: side(resp),
            };
            assert_eq!(o.decision(), want, "{req:?} + {resp:?}");
        }
        assert!(!Outcome::default().judged());
        assert_eq!(Side::failed().decision, Decision::Error);
    }
}
