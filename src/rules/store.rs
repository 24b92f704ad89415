//! The live rule set and how it changes: load → compile → check examples → swap, atomically, with `arc-swap`.
//! A request takes one snapshot and keeps it to the end; a failed reload leaves the last good set in place.
//! Reloads are serialised and run off the request path (a blocking thread).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;

use super::engine::{Budget, RuleSet};
use super::spec::RuleError;
use crate::metrics;

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// A new version is live.
    Reloaded { version: String, rules: usize },
    /// The files hash to the live version: nothing to do.
    Unchanged { version: String, rules: usize },
    /// The edit was refused; the previous version stays live.
    Failed {
        version: String,
        errors: Vec<String>,
    },
}

/// The live rule set of one rules directory.
pub struct RuleStore {
    dir: PathBuf,
    budget: Budget,
    current: ArcSwap<RuleSet>,
    reloading: Mutex<()>,
}

impl RuleStore {
    /// Loads the directory. Fails (and the gateway does not start) if the set is not valid.
    pub fn open(dir: &Path, budget: Budget) -> Result<Self, Vec<RuleError>> {
        let set = super::load(dir, &budget)?;
        metrics::set_rules_version(set.version(), set.rules().len());
        Ok(Self {
            dir: dir.to_path_buf(),
            budget,
            current: ArcSwap::from_pointee(set),
            reloading: Mutex::new(()),
        })
    }

    /// The set a request evaluates against, from its start to its end.
    pub fn snapshot(&self) -> Arc<RuleSet> {
        self.current.load_full()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reloads from disk. Blocking (reads files, compiles): call it from a blocking thread.
    pub fn reload(&self) -> ReloadOutcome {
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let started = Instant::now();
        let live = self.current.load();
        let outcome = match super::spec::load_dir(&self.dir) {
            Ok(loaded) if loaded.version == live.version() => ReloadOutcome::Unchanged {
                version: live.version().to_string(),
                rules: live.rules().len(),
            },
            Ok(loaded) => match RuleSet::compile(&loaded, &self.budget) {
                Ok(set) => {
                    let version = set.version().to_string();
                    let rules = set.rules().len();
                    metrics::set_rules_version(&version, rules);
                    self.current.store(Arc::new(set));
                    ReloadOutcome::Reloaded { version, rules }
                }
                Err(errors) => failed(live.version(), errors),
            },
            Err(errors) => failed(live.version(), errors),
        };
        match &outcome {
            ReloadOutcome::Reloaded { version, rules } => {
                metrics::RULES_RELOADS.with_label_values(&["ok"]).inc();
                tracing::info!(
                    version,
                    rules,
                    took_ms = started.elapsed().as_millis() as u64,
                    "rules reloaded"
                );
            }
            ReloadOutcome::Unchanged { .. } => {
                metrics::RULES_RELOADS
                    .with_label_values(&["unchanged"])
                    .inc();
            }
            ReloadOutcome::Failed { version, errors } => {
                metrics::RULES_RELOADS.with_label_values(&["error"]).inc();
                tracing::error!(
                    kept_version = version,
                    "rules reload refused, keeping the last good set: {}",
                    errors.join("; ")
                );
            }
        }
        outcome
    }
}

fn failed(live_version: &str, errors: Vec<RuleError>) -> ReloadOutcome {
    ReloadOutcome::Failed {
        version: live_version.to_string(),
        errors: errors.iter().map(ToString::to_string).collect(),
    }
}
