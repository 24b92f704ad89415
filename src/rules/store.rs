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

/// A rules directory, the budget its sets must stay within, and the policy that is the gateway's default.
pub struct RulesDir {
    dir: PathBuf,
    budget: Budget,
    /// `[inspect] policy`: a set without this policy is refused like a bad edit.
    policy: Option<String>,
}

impl RulesDir {
    /// The rules in `dir` (its `*.toml` files), held to `budget`, every rule as written by default.
    pub fn new(dir: &Path, budget: Budget) -> Self {
        Self {
            dir: dir.to_path_buf(),
            budget,
            policy: None,
        }
    }

    /// The same, with the named policy as the default of requests no key, tenant or selector assigns one.
    pub fn with_policy(mut self, policy: Option<String>) -> Self {
        self.policy = policy;
        self
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
        let set = RuleSet::compile(&loaded, &self.budget)?;
        super::policy::with_default(set, self.policy.as_deref(), &self.dir).map_err(|e| vec![e])
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
        for w in set.catalog().map(|c| c.warnings()).unwrap_or_default() {
            tracing::warn!(version = set.version(), "{w}");
        }
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
