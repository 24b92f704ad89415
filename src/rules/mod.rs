//! Rules: the file format rule authors write (`spec`), the normalised views matching runs on (`normalize`),
//! validators (`validate`), the compiled matcher (`engine`) and the rules directory as a live-reloaded source
//! (`store`, swapped in by `crate::live`), and named policies, views of the one compiled set (`policy`). Pure
//! except for `spec` and `store`, which read files.

pub mod cli;
mod engine;
mod normalize;
mod plan;
mod policy;
mod prefix;
mod spec;
mod store;
mod validate;

pub use engine::{redact, Budget, Core, Match, Rule, RuleSet};
pub use normalize::View;
pub use policy::{Catalog, Chooser, PolicyUnavailable, DEFAULT as DEFAULT_POLICY};
pub use prefix::{Growing, PrefixCache};
pub use spec::{load_dir, Action, Direction, Expected, LoadedSet, Mode, RuleError, Severity};
pub use store::{RuleStore, RulesDir};
pub use validate::Validator;

/// Loads, compiles and checks a rules directory: the one path from files to a usable [`RuleSet`].
pub fn load(dir: &std::path::Path, budget: &Budget) -> Result<RuleSet, Vec<RuleError>> {
    let loaded = load_dir(dir)?;
    RuleSet::compile(&loaded, budget)
}
#[cfg(test)]
mod detection_tests;
