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
                errors.push(err(
                    p.line,
                    format!("duplicate name: also defined at {prev}"),
                ));
            }
            match policy_view(base, p) {
                Ok(view) => {
                    let view = view.with_all(&all);
                    if view
                        .rules()
                        .iter()
                        .enumerate()
                        .all(|(i, _)| !view.is_active(i))
                    {
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
    let rules = base.table();
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
    if a.spec
        .models
        .iter()
        .chain(&a.spec.routes)
        .any(|s| s.is_empty() || s == "*")
    {
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
    let view = catalog
        .as_ref()
        .and_then(|c| c.get(name))
        .ok_or_else(|| RuleError {
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

#[cfg(test)]
mod tests {
    use super::super::{load, Action, Budget};
    use super::*;

    /// A card, an email and a codename in one text (the card is Luhn-valid).
    const TEXT: &str = "card 4111 1111 1111 1111, mail jane@example.com, re Project Bluebird";

    const RULES: &str = r#"
[[rule]]
id = "pii.email"
description = "Email"
regex = { pattern = '[a-z]+@[a-z]+\.com' }
action = "redact"

[[rule]]
id = "pii.payment_card"
description = "Card"
regex = { pattern = '[0-9]{4}(?: [0-9]{4}){3}' }
validator = "payment_card"
action = "redact"

[[rule]]
id = "confidential.codename"
description = "Codename"
keywords = { terms = ["Project Bluebird"] }
tags = ["legal"]
action = "block"

[[rule]]
id = "secret.token"
description = "Token"
regex = { pattern = 'tok_[a-z0-9]{8}' }
action = "block"
"#;

    fn set(policies: &str) -> Result<RuleSet, Vec<RuleError>> {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("a.toml"), RULES).expect("write");
        std::fs::write(dir.path().join("policies.toml"), policies).expect("write");
        load(dir.path(), &Budget::default())
    }

    fn ok(policies: &str) -> RuleSet {
        set(policies).unwrap_or_else(|e| panic!("{e:?}"))
    }

    fn errors(policies: &str) -> Vec<String> {
        set(policies)
            .expect_err("refused")
            .iter()
            .map(|e| {
                format!(
                    "{}:{}: {}",
                    e.file.file_name().and_then(|f| f.to_str()).unwrap_or(""),
                    e.line.unwrap_or(0),
                    e.message
                )
            })
            .collect()
    }

    fn view(set: &RuleSet, name: &str) -> Arc<RuleSet> {
        Arc::clone(set.catalog().and_then(|c| c.get(name)).expect("policy"))
    }

    const TEAMS: &str = r#"
[[policy]]
name = "support"
description = "Support bot: personal data redacted, secrets and codenames blocked"
[[policy.override]]
tags = ["pii"]
action = "redact"
[[policy.override]]
tags = ["secret", "legal"]
action = "block"

[[policy]]
name = "fraud-team"
description = "Fraud team sees card numbers"
[[policy.override]]
ids = ["pii.payment_card"]
action = "log"

[[policy]]
name = "contractors"
description = "Codenames only"
select = { tags = ["confidential"] }
"#;

    #[test]
    fn each_policy_gives_its_own_outcome_for_the_same_text() {
        let s = ok(TEAMS);
        assert_eq!(outcome(&s, TEXT).0, Expected::Block, "as written");
        assert_eq!(outcome(&view(&s, "support"), TEXT).0, Expected::Block);
        assert_eq!(
            outcome(
                &view(&s, "contractors"),
                "mail jane@example.com, card 4111 1111 1111 1111"
            ),
            (
                Expected::Pass,
                "mail jane@example.com, card 4111 1111 1111 1111".into()
            ),
            "contractors select only the codename rule"
        );
        let fraud = view(&s, "fraud-team");
        assert_eq!(
            outcome(&fraud, "card 4111 1111 1111 1111, mail jane@example.com"),
            (
                Expected::Redact,
                "card 4111 1111 1111 1111, mail [EMAIL]".into()
            )
        );
        assert_eq!(outcome(&fraud, "card 4111 1111 1111 1111").0, Expected::Log);
        // The view's table carries the override; the live set's does not change.
        let card = s
            .rules()
            .iter()
            .position(|r| r.id == "pii.payment_card")
            .expect("card");
        assert_eq!(fraud.rule(card).action, Action::Log);
        assert_eq!(s.rule(card).action, Action::Redact);
    }

    #[test]
    fn every_view_shares_the_one_compiled_core() {
        let s = ok(TEAMS);
        let c = s.catalog().expect("catalog");
        for name in c.names().into_iter().chain([DEFAULT]) {
            assert!(Arc::ptr_eq(s.core(), view(&s, name).core()), "{name}");
        }
    }

    #[test]
    fn a_thousand_policies_build_one_core() {
        let mut text = String::new();
        for i in 0..1000 {
            text.push_str(&format!(
                "[[policy]]\nname = \"p{i}\"\ndescription = \"d\"\nselect = {{ ids = [\"{}\"] }}\n",
                ["pii.*", "secret.token", "confidential.codename"][i % 3]
            ));
        }
        let s = ok(&text);
        let c = s.catalog().expect("catalog");
        assert_eq!(c.names().len(), 1000);
        // One core for all: the automata were built once (a view holds a table and a bitset).
        assert!(c
            .names()
            .iter()
            .all(|n| Arc::ptr_eq(s.core(), view(&s, n).core())));
        assert_eq!(
            Arc::strong_count(s.core()),
            1000 + 2,
            "the set, `default`, each policy"
        );
        assert_eq!(outcome(&view(&s, "p1"), "tok_abcdefgh").0, Expected::Block);
        assert_eq!(outcome(&view(&s, "p0"), "tok_abcdefgh").0, Expected::Pass);
    }

    #[test]
    fn a_rule_left_out_never_hides_the_span_of_one_applied() {
        // The codename is inside a longer span of a rule the policy leaves out: it must still be found.
        let rules = r#"
[[rule]]
id = "wide.quote"
description = "A quoted line"
regex = { pattern = 'QUOTE\[[^\]]*\]' }
action = "block"
severity = "critical"

[[rule]]
id = "narrow.codename"
description = "Codename"
keywords = { terms = ["bluebird"] }
action = "redact"

[[policy]]
name = "narrow"
description = "Only the codename"
exclude = { ids = ["wide.*"] }
"#;
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("a.toml"), rules).expect("write");
        let s = load(dir.path(), &Budget::default()).expect("set");
        let text = "QUOTE[the bluebird flies]";
        let all = s.scan(text, Direction::Request);
        assert_eq!(all.len(), 1);
        assert_eq!(
            s.rule(all[0].rule).id,
            "wide.quote",
            "merged, named by the severe rule"
        );
        let narrow = view(&s, "narrow");
        let m = narrow.scan(text, Direction::Request);
        assert_eq!(m.len(), 1);
        assert_eq!(narrow.rule(m[0].rule).id, "narrow.codename");
        assert_eq!(&text[m[0].range()], "bluebird");
    }

    #[test]
    fn precedence_key_then_tenant_then_selector_then_default() {
        let s = ok(&format!(
            "{TEAMS}
[[assign]]
policy = \"contractors\"
routes = [\"/v1/embeddings\"]

[[assign]]
policy = \"fraud-team\"
models = [\"gpt-4o*\"]

[[assign]]
policy = \"support\"
models = [\"gpt-4o-mini\"]
routes = [\"/v1/chat/completions\"]

[[assign]]
policy = \"contractors\"
models = [\"gpt-4o*\"]
"
        ));
        let c = s.catalog().expect("catalog");
        let name = |who: Chooser<'_>| -> Option<String> {
            c.choose(&who)
                .expect("chosen")
                .map(|v| v.policy().to_string())
        };
        let chat = "/v1/chat/completions";
        let base = Chooser {
            key: None,
            tenant: None,
            route: chat,
            model: Some("gpt-4o-mini"),
        };
        // (who, policy chosen; None: the gateway's default)
        let cases = [
            (
                Chooser {
                    key: Some("contractors"),
                    tenant: Some("support"),
                    ..base
                },
                Some("contractors"),
            ),
            (
                Chooser {
                    tenant: Some("fraud-team"),
                    ..base
                },
                Some("fraud-team"),
            ),
            (
                Chooser {
                    key: Some("default"),
                    tenant: Some("support"),
                    ..base
                },
                Some("default"),
            ),
            // model + route beats model alone, whatever the file order.
            (base, Some("support")),
            // model alone beats route alone; the first of equals wins.
            (
                Chooser {
                    route: "/v1/embeddings",
                    ..base
                },
                Some("fraud-team"),
            ),
            (
                Chooser {
                    model: Some("gpt-4o"),
                    ..base
                },
                Some("fraud-team"),
            ),
            (
                Chooser {
                    model: None,
                    route: "/v1/embeddings",
                    ..base
                },
                Some("contractors"),
            ),
            (
                Chooser {
                    model: Some("o1"),
                    ..base
                },
                None,
            ),
            (
                Chooser {
                    model: None,
                    ..base
                },
                None,
            ),
        ];
        for (who, want) in cases {
            assert_eq!(name(who).as_deref(), want, "{who:?}");
        }
        assert_eq!(
            c.choose(&Chooser {
                key: Some("gone"),
                ..base
            })
            .err(),
            Some(PolicyUnavailable("gone".into()))
        );
        assert!(c.chooses_by_model());
    }

    #[test]
    fn bad_policies_are_refused_naming_file_and_line() {
        let cases: [(&str, &[&str]); 7] = [
            (
                "[[policy]]\nname = \"p\"\ndescription = \"d\"\nselect = { tags = [\"secrets\"], ids = [\"pii.nope\"] }\n",
                &[
                    "policies.toml:1: policy 'p': select: unknown tag 'secrets' (did you mean 'secret'?)",
                    "policies.toml:1: policy 'p': select: unknown rule id 'pii.nope'",
                ],
            ),
            (
                "[[policy]]\nname = \"p\"\ndescription = \"d\"\n\n[[policy]]\nname = \"p\"\ndescription = \"d\"\n",
                &["policies.toml:5: policy 'p': duplicate name: also defined at"],
            ),
            (
                "[[policy]]\nname = \"p\"\ndescription = \"d\"\n[[policy.override]]\ntags = [\"pii\"]\n",
                &["policies.toml:4: policy 'p': override changes nothing"],
            ),
            (
                "[[policy]]\nname = \"p\"\ndescription = \"d\"\n[[policy.override]]\naction = \"log\"\n",
                &["policies.toml:4: policy 'p': override selects no rule"],
            ),
            (
                "[[policy]]\nname = \"p\"\ndescription = \"d\"\n[[policy.override]]\ntags = [\"pii\"]\naction = \"shout\"\n",
                &["policies.toml:6: unknown variant `shout`"],
            ),
            (
                "[[policy]]\nname = \"default\"\ndescription = \"d\"\n",
                &["policies.toml:1: policy 'default': the name `default` is reserved"],
            ),
            (
                "[[assign]]\npolicy = \"nobody\"\nmodels = [\"x\"]\n",
                &["policies.toml:1: assign of policy 'nobody': no such policy"],
            ),
        ];
        for (text, want) in cases {
            let got = errors(text);
            assert_eq!(got.len(), want.len(), "{text}\n{got:#?}");
            for (g, w) in got.iter().zip(want.iter()) {
                assert!(g.starts_with(w), "{text}\ngot  {g}\nwant {w}");
            }
        }
    }

    #[test]
    fn examples_run_and_a_failing_one_names_its_line() {
        let good = "[[policy]]\nname = \"p\"\ndescription = \"d\"\n[[policy.override]]\ntags = [\"pii\"]\naction = \"log\"\n[[policy.example]]\ntext = \"mail jane@example.com\"\noutcome = \"log\"\n[[policy.example]]\ntext = \"tok_abcdefgh\"\noutcome = \"block\"\n";
        ok(good);
        let bad = good.replace("outcome = \"block\"", "outcome = \"pass\"");
        assert_eq!(
            errors(&bad),
            ["policies.toml:10: policy 'p': example \"tok_abcdefgh\": expected pass, got block"]
        );
        let redacted = "[[policy]]\nname = \"p\"\ndescription = \"d\"\n[[policy.example]]\ntext = \"to jane@example.com\"\noutcome = \"redact\"\nredacted = \"to [X]\"\n";
        assert_eq!(
            errors(redacted),
            ["policies.toml:4: policy 'p': example \"to jane@example.com\": expected the text \"to [X]\", got \"to [EMAIL]\""]
        );
    }

    #[test]
    fn a_policy_selecting_no_rule_is_a_warning_not_an_error() {
        let s = ok("[[policy]]\nname = \"none\"\ndescription = \"d\"\nselect = { tags = [\"legal\"] }\nexclude = { tags = [\"confidential\"] }\n");
        let w = s.catalog().expect("catalog").warnings();
        assert_eq!(w.len(), 1);
        assert!(
            w[0].ends_with("policies.toml:1: policy 'none' selects no rule"),
            "{w:?}"
        );
    }

    #[test]
    fn the_gateway_default_is_a_named_policy_or_every_rule() {
        let dir = std::path::Path::new("rules");
        let s = with_default(ok(TEAMS), Some("contractors"), dir).expect("default");
        assert_eq!(s.policy(), "contractors");
        assert!(s.catalog().is_some(), "the live set keeps the catalog");
        assert_eq!(outcome(&s, "mail jane@example.com").0, Expected::Pass);
        // What keeps client text out of records is every rule, whatever the policy.
        assert_eq!(s.everything().policy(), DEFAULT);
        assert!(!s
            .everything()
            .scan("jane@example.com", Direction::Request)
            .is_empty());
        let e = with_default(ok(TEAMS), Some("gone"), dir).expect_err("refused");
        assert!(e.message.contains("[inspect] policy = \"gone\""), "{e}");
        assert_eq!(
            with_default(ok(TEAMS), None, dir)
                .expect("as written")
                .policy(),
            DEFAULT
        );
    }
}
