//! The live rule set: a rules directory as a [`Source`] of [`crate::live::Live`]. A reload reads and hashes the
//! files, stops there if the version is the live one, and otherwise compiles and checks the examples before
//! the swap. This file says what a rules reload is and how it is logged and measured; the reload sequence
//! itself lives in `live`. It does not watch the directory (`server` does).

use std::path::{Path, PathBuf};
use std::time::Duration;

use prometheus::IntCounterVec;

use super::engine::{Budget, RuleSet};
use super::spec::{load_dir, LoadedSet, RuleError};
use crate::live::{Live, Reload, Source};
use crate::metrics;

/// The live rule set of one rules directory.
pub type RuleStore = Live<RulesDir>;

/// A rules directory and the budget its sets must stay within.
pub struct RulesDir {
    dir: PathBuf,
    budget: Budget,
}

impl RulesDir {
    /// The rules in `dir` (its `*.toml` files), held to `budget`.
    pub fn new(dir: &Path, budget: Budget) -> Self {
        Self {
            dir: dir.to_path_buf(),
            budget,
        }
    }

    /// The directory the rules are read from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Source for RulesDir {
    type Loaded = LoadedSet;
    type Set = RuleSet;
    type Error = RuleError;
    const NAME: &'static str = "rules";

    fn load(&self) -> Result<LoadedSet, Vec<RuleError>> {
        load_dir(&self.dir)
    }

    /// Compiling is the costly step: it only runs for a version that is not the live one.
    fn validate(&self, loaded: LoadedSet) -> Result<RuleSet, Vec<RuleError>> {
        RuleSet::compile(&loaded, &self.budget)
    }

    fn loaded_version(loaded: &LoadedSet) -> &str {
        &loaded.version
    }

    fn version(set: &RuleSet) -> &str {
        set.version()
    }

    fn count(set: &RuleSet) -> usize {
        set.rules().len()
    }

    fn went_live(&self, set: &RuleSet) {
        metrics::set_rules_version(set.version(), set.rules().len());
    }

    fn reloads() -> &'static IntCounterVec {
        &metrics::RULES_RELOADS
    }

    fn log(&self, outcome: &Reload, took: Duration) {
        match outcome {
            Reload::Reloaded { version, count } => tracing::info!(
                version,
                rules = count,
                took_ms = took.as_millis() as u64,
                "rules reloaded"
            ),
            Reload::Unchanged { .. } => {}
            Reload::Failed { version, errors } => tracing::error!(
                kept_version = version,
                "rules reload refused, keeping the last good set: {}",
                errors.join("; ")
            ),
        }
    }
}
