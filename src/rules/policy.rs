//! Named policies: which rules apply to a request, and with which action and mode, chosen per key, per tenant,
//! or — for requests no key or tenant names one for — by the route and model the request names (`[[assign]]`),
//! never by a client header (any caller could forge one).
//!
//! A policy is a view of the one compiled set (`engine::RuleSet::view`): the rule table with its overrides
//! applied and a bitset of the rules it selects. Building one costs a table, not an automaton. This module
//! checks the `[[policy]]` and `[[assign]]` tables of a load (unknown ids and tags, duplicate names, empty
//! overrides are errors naming `file:line`; a policy that selects no rule is a warning), builds the views, runs
//! the policies' examples, and answers which view a request gets ([`Catalog::choose`]). Pure: no I/O.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::engine::{all_active, redact, Rule, RuleSet};
use super::spec::{
    valid_id, AssignSpec, Direction, Expected, LoadedSet, Located, Mode, PolicySpec, RuleError,
    Selection,
};

/// The name of the policy that applies every rule as written (the default when `[inspect] policy` names none).
pub const DEFAULT: &str = "default";

/// The policies of one version of the rules, and the selectors that choose among them.
pub struct Catalog {
    views: HashMap<String, Arc<RuleSet>>,
    /// In file order; [`Catalog::choose`] takes the most specific match, ties to the first.
    assigns: Vec<Assign>,
    /// Policies that select no rule (printed by `rules check`, logged at reload).
    warnings: Vec<String>,
    /// Policy names a key or tenant asked for that this version lacks, already logged (once per version).
    logged_missing: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog")
            .field("policies", &self.views.len())
            .field("assigns", &self.assigns.len())
            .finish()
    }
}

/// One `[[assign]]`, checked.
#[derive(Debug, Clone)]
struct Assign {
    policy: String,
    models: Vec<Pattern>,
    routes: Vec<Pattern>,
}

impl Assign {
    /// How specific a matching selector is (model + route > model > route), or `None` when it does not match.
    fn specificity(&self, route: &str, model: Option<&str>) -> Option<u8> {
        let model_ok = match (self.models.is_empty(), model) {
            (true, _) => true,
            (false, Some(m)) => self.models.iter().any(|p| p.matches(m)),
            (false, None) => false,
        };
        let route_ok = self.routes.is_empty() || self.routes.iter().any(|p| p.matches(route));
        if !(model_ok && route_ok) {
            return None;
        }
        Some(match (self.models.is_empty(), self.routes.is_empty()) {
            (false, false) => 3,
            (false, true) => 2,
            (true, false) => 1,
            (true, true) => 0,
        })
    }
}

/// An exact name, or a prefix ending in `*`.
#[derive(Debug, Clone)]
enum Pattern {
    Exact(String),
    Prefix(String),
}

impl Pattern {
    fn parse(s: &str) -> Self {
        match s.strip_suffix('*') {
            Some(p) => Pattern::Prefix(p.to_string()),
            None => Pattern::Exact(s.to_string()),
        }
    }

    fn matches(&self, s: &str) -> bool {
        match self {
            Pattern::Exact(e) => e == s,
            Pattern::Prefix(p) => s.starts_with(p.as_str()),
        }
    }
}

/// Who a request is, as far as choosing its policy goes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Chooser<'a> {
    /// The policy the caller's key names.
    pub key: Option<&'a str>,
    /// The policy the caller's tenant names.
    pub tenant: Option<&'a str>,
    /// The request's path.
    pub route: &'a str,
    /// The model the request names, once known.
    pub model: Option<&'a str>,
}

/// A key or tenant names a policy the live rules do not have: the request is refused (fail closed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyUnavailable(pub String);

impl Catalog {
    /// Checks the policies and selectors of `loaded` against the rules of `base` (every rule as written) and
    /// builds a view for each; runs every policy's examples. All problems are reported at once.
    pub(super) fn build(base: &RuleSet, loaded: &LoadedSet) -> Result<Catalog, Vec<RuleError>> {
        let mut errors = Vec::new();
        let mut warnings = Vec::new();
        let mut views: HashMap<String, Arc<RuleSet>> = HashMap::new();
        // `default` names the rules as written, whatever `[inspect] policy` makes the gateway's default.
        let all = Arc::new(base.clone_view());
        views.insert(DEFAULT.to_string(), Arc::clone(&all));
        let mut where_defined: HashMap<&str, String> = HashMap::new();
        for p in &loaded.policies {
            let err = |line: usize, message: String| RuleError {
                file: p.file.clone(),
                line: Some(line),
                rule: None,
                message: format!("policy '{}': {message}", p.spec.name),
            };
            let at = format!("{}:{}", p.file.display(), p.line);
            if !valid_id(&p.spec.name) {
                errors.push(err(
                    p.line,
                    "invalid name: use lowercase names like `support` or `fraud-team` (a-z, 0-9, _, -, dots)"
                        .into(),
                ));
            }
            if p.spec.name == DEFAULT {
                errors.push(err(
                    p.line,
                    "the name `default` is reserved (every rule as written)".into(),
                ));
            }
            if p.spec.description.trim().is_empty() {
                errors.push(err(p.line, "description is empty".into()));
            }
            if let Some(prev) = where_defined.insert(&p.spec.name, at) {
                errors.push(err(p.line, format!("duplicate name: also defined at {prev}")));
            }
            match policy_view(base, p) {
                Ok(view) => {
                    let view = view.with_all(&all);
                    if view.rules().iter().enumerate().all(|(i, _)| !view.is_active(i)) {
                        warnings.push(format!(
                            "{}:{}: policy '{}' selects no rule",
                            p.file.display(),
                            p.line,
                            p.spec.name
                        ));
                    }
                    errors.extend(check_examples(&view, p));
                    views.insert(p.spec.name.clone(), Arc::new(view));
                }
                Err(mut e) => errors.append(&mut e),
            }
        }
        let assigns = loaded
            .assigns
            .iter()
            .filter_map(|a| match check_assign(a, &views) {
                Ok(a) => Some(a),
                Err(e) => {
                    errors.push(e);
                    None
                }
            })
            .collect();
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Catalog {
            views,
            assigns,
            warnings,
            logged_missing: Mutex::new(HashSet::new()),
        })
    }

    /// The view of policy `name`, if this version has it.
    pub fn get(&self, name: &str) -> Option<&Arc<RuleSet>> {
        self.views.get(name)
    }

    /// The names of every policy written in the rules, sorted (`default` not among them).
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .views
            .keys()
            .map(String::as_str)
            .filter(|n| *n != DEFAULT)
            .collect();
        names.sort_unstable();
        names
    }

    /// Policies that select no rule: one line each, `file:line: …`.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The policy a request gets by precedence: its key's, else its tenant's, else the most specific
    /// `[[assign]]` matching its route and model (model + route > model > route; ties to the first in file
    /// order). `Ok(None)`: none of these names one, the gateway's default applies. `default` names the rules
    /// as written. A named policy this version lacks is an error.
    pub fn choose(&self, who: &Chooser<'_>) -> Result<Option<Arc<RuleSet>>, PolicyUnavailable> {
        if let Some(name) = who.key.or(who.tenant) {
            return self.named(name);
        }
        let mut best: Option<(u8, &Assign)> = None;
        for a in &self.assigns {
            if let Some(s) = a.specificity(who.route, who.model) {
                if best.is_none_or(|(b, _)| s > b) {
                    best = Some((s, a));
                }
            }
        }
        match best {
            Some((_, a)) => self.named(&a.policy),
            None => Ok(None),
        }
    }

    /// Whether a selector chooses by model (then the model must be known before a body is judged).
    pub fn chooses_by_model(&self) -> bool {
        self.assigns.iter().any(|a| !a.models.is_empty())
    }

    fn named(&self, name: &str) -> Result<Option<Arc<RuleSet>>, PolicyUnavailable> {
        match self.views.get(name) {
            Some(v) => Ok(Some(Arc::clone(v))),
            None => {
                self.log_missing(name);
                Err(PolicyUnavailable(name.to_string()))
            }
        }
    }

    /// Logs a missing policy once for this version of the rules. Only the refusal path takes the lock, and
    /// never waits for it: a contended lock means another request is logging.
    fn log_missing(&self, name: &str) {
        if let Ok(mut seen) = self.logged_missing.try_lock() {
            if seen.len() < 1024 && seen.insert(name.to_string()) {
                tracing::error!(
                    policy = name,
                    "a key or tenant names a policy the live rules do not have: its requests are refused (503 policy_unavailable)"
                );
            }
        }
    }
}

/// The rules a selection names (by tag and by id, an id may end in `*`), or the errors of the names that
/// match no rule.
fn selected(rules: &[Rule], sel: &Selection, what: &str) -> Result<Vec<bool>, Vec<String>> {
    let mut on = vec![false; rules.len()];
    let mut errors = Vec::new();
    for tag in &sel.tags {
        let mut any = false;
        for (i, r) in rules.iter().enumerate() {
            if r.tags.iter().any(|t| t == tag) {
                on[i] = true;
                any = true;
            }
        }
        if !any {
            // The implicit tag of `secret.*` rules is `secret`: say so to whoever wrote `secrets`.
            let hint = tag
                .strip_suffix('s')
                .filter(|s| rules.iter().any(|r| r.tags.iter().any(|t| t == s)))
                .map(|s| format!(" (did you mean '{s}'?)"))
                .unwrap_or_default();
            errors.push(format!("{what}: unknown tag '{tag}'{hint}"));
        }
    }
    for id in &sel.ids {
        let mut any = false;
        for (i, r) in rules.iter().enumerate() {
            let hit = match id.strip_suffix('*') {
                Some(prefix) => r.id.starts_with(prefix),
                None => r.id == *id,
            };
            if hit {
                on[i] = true;
                any = true;
            }
        }
        if !any {
            errors.push(format!("{what}: unknown rule id '{id}'"));
        }
    }
    if errors.is_empty() {
        Ok(on)
    } else {
        Err(errors)
    }
}

/// A policy's view: its selection minus its exclusions, its overrides applied in order.
fn policy_view(base: &RuleSet, p: &Located<PolicySpec>) -> Result<RuleSet, Vec<RuleError>> {
    let rules = base.rules();
    let err = |line: usize, message: String| RuleError {
        file: p.file.clone(),
        line: Some(line),
        rule: None,
        message: format!("policy '{}': {message}", p.spec.name),
    };
    let mut errors = Vec::new();
    let mut on = if p.spec.select.is_empty() {
        vec![true; rules.len()]
    } else {
        selected(rules, &p.spec.select, "select").unwrap_or_else(|e| {
            errors.extend(e.into_iter().map(|m| err(p.line, m)));
            vec![false; rules.len()]
        })
    };
    match selected(rules, &p.spec.exclude, "exclude") {
        Ok(off) => on.iter_mut().zip(off).for_each(|(o, x)| *o &= !x),
        Err(e) => errors.extend(e.into_iter().map(|m| err(p.line, m))),
    }
    let mut table: Vec<Rule> = rules.to_vec();
    for (n, o) in p.spec.overrides.iter().enumerate() {
        let line = p.lines.get(n).copied().unwrap_or(p.line);
        let o = o.get_ref();
        if o.action.is_none() && o.mode.is_none() {
            errors.push(err(
                line,
                "override changes nothing: give it `action` and/or `mode`".into(),
            ));
        }
        let sel = Selection {
            tags: o.tags.clone(),
            ids: o.ids.clone(),
        };
        if sel.is_empty() {
            errors.push(err(
                line,
                "override selects no rule: give it `tags` and/or `ids`".into(),
            ));
            continue;
        }
        match selected(rules, &sel, "override") {
            Ok(hit) => {
                for (i, h) in hit.into_iter().enumerate() {
                    if h && on[i] {
                        if let Some(a) = o.action {
                            table[i].action = a;
                        }
                        if let Some(m) = o.mode {
                            table[i].mode = m;
                        }
                    }
                }
            }
            Err(e) => errors.extend(e.into_iter().map(|m| err(line, m))),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let mut active = all_active(rules.len());
    for (i, o) in on.iter().enumerate() {
        if !o {
            active[i / 64] &= !(1 << (i % 64));
        }
    }
    Ok(base.view(&p.spec.name, table, active))
}

/// What a request carrying `text` would get under `view`: blocked, redacted (and how), logged, or passed.
pub fn outcome(view: &RuleSet, text: &str) -> (Expected, String) {
    let matches = view.scan(text, Direction::Request);
    let enforced = |i: usize| view.rule(i).mode == Mode::Enforce;
    let action = |i: usize| view.rule(i).action;
    use super::spec::Action;
    if matches
        .iter()
        .any(|m| enforced(m.rule) && action(m.rule) == Action::Block)
    {
        return (Expected::Block, String::new());
    }
    let redacting: Vec<_> = matches
        .iter()
        .filter(|m| enforced(m.rule) && action(m.rule) == Action::Redact)
        .map(|m| (m.range(), view.rule(m.rule).replacement.as_str()))
        .collect();
    if !redacting.is_empty() {
        return (Expected::Redact, redact(text, redacting));
    }
    if matches.is_empty() {
        (Expected::Pass, text.to_string())
    } else {
        (Expected::Log, text.to_string())
    }
}

/// Runs a policy's examples against its view; one error per example that does not behave.
fn check_examples(view: &RuleSet, p: &Located<PolicySpec>) -> Vec<RuleError> {
    let first = p.spec.overrides.len();
    let mut errors = Vec::new();
    for (n, ex) in p.spec.examples.iter().enumerate() {
        let line = p.lines.get(first + n).copied().unwrap_or(p.line);
        let ex = ex.get_ref();
        let (got, text) = outcome(view, &ex.text);
        let mut wrong = Vec::new();
        if got != ex.outcome {
            wrong.push(format!(
                "expected {}, got {}",
                ex.outcome.as_str(),
                got.as_str()
            ));
        }
        if let Some(want) = ex.redacted.as_ref().filter(|w| **w != text) {
            wrong.push(format!("expected the text {want:?}, got {text:?}"));
        }
        if !wrong.is_empty() {
            errors.push(RuleError {
                file: p.file.clone(),
                line: Some(line),
                rule: None,
                message: format!(
                    "policy '{}': example {:?}: {}",
                    p.spec.name,
                    ex.text,
                    wrong.join("; ")
                ),
            });
        }
    }
    errors
}

/// An `[[assign]]` checked: it names a policy this version has (or `default`) and selects by something.
fn check_assign(
    a: &Located<AssignSpec>,
    views: &HashMap<String, Arc<RuleSet>>,
) -> Result<Assign, RuleError> {
    let err = |message: String| RuleError {
        file: a.file.clone(),
        line: Some(a.line),
        rule: None,
        message: format!("assign of policy '{}': {message}", a.spec.policy),
    };
    if !views.contains_key(&a.spec.policy) {
        return Err(err("no such policy".into()));
    }
    if a.spec.models.is_empty() && a.spec.routes.is_empty() {
        return Err(err(
            "selects every request: give it `models` and/or `routes` (or name the policy in [inspect] policy)"
                .into(),
        ));
    }
    if let Some(r) = a.spec.routes.iter().find(|r| !r.starts_with('/')) {
        return Err(err(format!("route {r:?} must be a path starting with '/'")));
    }
    if a.spec.models.iter().chain(&a.spec.routes).any(|s| s.is_empty() || s == "*") {
        return Err(err(
            "an empty pattern, or `*` alone, selects everything: leave the list out instead".into(),
        ));
    }
    Ok(Assign {
        policy: a.spec.policy.clone(),
        models: a.spec.models.iter().map(|m| Pattern::parse(m)).collect(),
        routes: a.spec.routes.iter().map(|r| Pattern::parse(r)).collect(),
    })
}

/// The live set for a gateway whose `[inspect] policy` is `name`: that policy's view carrying the catalog,
/// or the set as written (`None` or `default`). An unknown name is an error naming the rules directory.
pub fn with_default(set: RuleSet, name: Option<&str>, dir: &Path) -> Result<RuleSet, RuleError> {
    let Some(name) = name.filter(|n| *n != DEFAULT) else {
        return Ok(set);
    };
    let catalog = set.catalog().cloned();
    let view = catalog.as_ref().and_then(|c| c.get(name)).ok_or_else(|| RuleError {
        file: dir.to_path_buf(),
        line: None,
        rule: None,
        message: format!(
            "[inspect] policy = {name:?}: no policy of that name in the rules (refusing the set)"
        ),
    })?;
    let view = (**view).clone_view();
    Ok(view.with_catalog(catalog))
}
