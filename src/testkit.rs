//! What the unit tests of several modules share: a rule set from one rule file's text, and a seeded random
//! source for generated cases.

use crate::rules::{load, Budget, RuleError, RuleSet};

/// xorshift64: reproducible randomness without a dependency, so that a failing case can be replayed from its
/// seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number below `n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// One of `from`.
    pub fn pick<'a, T>(&mut self, from: &'a [T]) -> &'a T {
        &from[self.below(from.len())]
    }
}

/// The rule set of one rule file with the text `toml`, loaded (validated, compiled, examples run) from a
/// temporary directory.
pub fn rule_set(toml: &str) -> Result<RuleSet, Vec<RuleError>> {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("r.toml"), toml).expect("write");
    load(dir.path(), &Budget::default())
}
