//! The compiled rule set: one immutable value built once per version and shared by every request.
//!
//! All keyword terms live in two Aho-Corasick automata (case-folded and exact), all regexes in one
//! multi-pattern `regex-automata` meta regex, each with a pattern-id → rule table. Matching runs on the
//! normalised views of `normalize`, validators run only on regex candidates, and spans are mapped back to the
//! original text. Construction is fallible; scanning is not.
//!
//! The matchers are the [`Core`], built once per version and shared (`Arc`) by every view of the set: a
//! [`RuleSet`] is one policy's view of it — the rule table with the policy's actions and modes, and the bitset
//! of the rules it applies, tested where a candidate is accepted (before overlaps merge, so a rule the policy
//! leaves out never hides the span of one it applies). A thousand policies are a thousand small tables over
//! one set of automata (`policy` builds them).

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind, StartKind};
use regex_automata::meta;
use regex_automata::nfa::thompson::NFA;
use regex_automata::util::prefilter::Prefilter;
use regex_automata::{Anchored, Input, Span};

use super::normalize::{normalize_term, View};
use super::plan::{self, Scope};
use super::prefix::{Growing, PrefixCache, Prefixes};
use super::spec::{
    default_replacement, Action, Direction, LoadedRule, LoadedSet, Mode, RuleError, Severity,
    MAX_CONTEXT_WINDOW,
};
use super::validate::Validator;

/// Limits a rule set must stay within to be accepted (a reload over them is refused like a bad edit).
#[derive(Debug, Clone)]
pub struct Budget {
    /// Keyword terms in all rules together.
    pub max_terms: usize,
    /// Size limit of the compiled regex program, bytes.
    pub max_regex_bytes: usize,
    /// Wall-clock time to compile the set (examples excluded).
    pub max_compile: Duration,
}

impl Default for Budget {
    fn default() -> Self {
        Self {
            max_terms: 1_000_000,
            max_regex_bytes: 64 << 20,
            max_compile: Duration::from_secs(10),
        }
    }
}

/// A compiled rule: what a match means.
#[derive(Debug, Clone)]
pub struct Rule {
    pub id: String,
    pub description: String,
    pub action: Action,
    pub mode: Mode,
    pub direction: Direction,
    pub severity: Severity,
    pub replacement: String,
    pub file: PathBuf,
    pub line: usize,
    /// The names policies select the rule by: the first segment of its id, then its `tags`.
    pub tags: Vec<String>,
    validator: Option<Validator>,
    whole_word: bool,
    context: Option<Context>,
}

/// A rule's compiled `context`: its words in one automaton (normalised and folded, searched in a folded view
/// of the window before a candidate).
#[derive(Debug, Clone)]
struct Context {
    words: AhoCorasick,
    /// Characters before the candidate searched.
    window: usize,
    require: bool,
    /// With `require = false`: the index of this rule's twin (the same rule at the context severity), which
    /// names the candidates that have a context word.
    boosted: Option<usize>,
}

/// One match, in original byte offsets (always on character boundaries).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Match {
    /// Index into [`RuleSet::rules`].
    pub rule: usize,
    pub start: usize,
    pub end: usize,
}

impl Match {
    pub fn range(&self) -> Range<usize> {
        self.start..self.end
    }
}

struct Keywords {
    ac: AhoCorasick,
    /// Pattern id → rule index.
    rules: Vec<u32>,
    /// For a few terms: where one starts (see `keywords`).
    gate: Option<Prefilter>,
}

/// One planned group of regexes (see `plan`).
struct Regexes {
    re: meta::Regex,
    /// Pattern id → rule index.
    rules: Vec<u32>,
    scope: Scope,
    /// For a `Prefixed` group: where its matches can start (see [`plan::prefix_gate`]).
    gate: Option<Prefilter>,
    /// The longest match any of its patterns reports (see [`MAX_MATCH_BYTES`]).
    reach: usize,
}

/// The compiled matchers of one version, shared by all its policies' views.
pub struct Core {
    folded: Option<Keywords>,
    exact: Option<Keywords>,
    regexes: Vec<Regexes>,
    prefixes: Prefixes,
    terms: usize,
    /// Rules as declared: `rules` holds them, then the twins of optional-context rules.
    declared: usize,
    /// The widest context window of any rule, characters (0: no rule has a context).
    context_reach: usize,
}

/// A compiled rule set as one policy sees it: the shared [`Core`], the rule table with the policy's actions
/// and modes (indexed like every view's), and which rules the policy applies.
pub struct RuleSet {
    version: String,
    core: Arc<Core>,
    rules: Vec<Rule>,
    /// Bit `i` set: rule `i` applies under this policy.
    active: Box<[u64]>,
    /// The policy's name (`default`: every rule as written).
    policy: Arc<str>,
    /// The named policies and their selectors; only on the live set (a view does not hold its siblings).
    catalog: Option<Arc<super::policy::Catalog>>,
    /// Every rule as written, for a view that leaves some out: what keeps client text out of records
    /// ([`RuleSet::everything`]) is not a policy's choice.
    all: Option<Arc<RuleSet>>,
}

impl std::fmt::Debug for RuleSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleSet")
            .field("version", &self.version)
            .field("rules", &self.rules.len())
            .field("policy", &self.policy)
            .finish()
    }
}

/// A bitset with the first `n` bits set.
pub(super) fn all_active(n: usize) -> Box<[u64]> {
    let mut bits = vec![0u64; n.div_ceil(64)];
    for i in 0..n {
        bits[i / 64] |= 1 << (i % 64);
    }
    bits.into_boxed_slice()
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80
}

/// Bytes handed to one regex search, summed per thread in tests: the work the scan's linearity tests count.
#[cfg(test)]
fn count_searched(bytes: usize) {
    SEARCHED.with(|n| n.set(n.get() + bytes));
}

#[cfg(not(test))]
fn count_searched(_: usize) {}

#[cfg(test)]
thread_local! {
    static SEARCHED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// The first character boundary of `hay` at or after `at`, or `end` if none comes before it.
fn next_boundary(hay: &str, mut at: usize, end: usize) -> usize {
    while at < end && !hay.is_char_boundary(at) {
        at += 1;
    }
    at
}

/// Whether `r` in `hay` stands alone as a word (the bytes around it are not word characters).
fn at_word_boundaries(hay: &str, r: &Range<usize>) -> bool {
    let b = hay.as_bytes();
    let before_ok = r.start == 0 || !is_word_byte(b[r.start - 1]);
    let after_ok = r.end >= b.len() || !is_word_byte(b[r.end]);
    // Non-ASCII letters count as word characters on the outside, so `café` does not contain the word `caf`.
    before_ok && after_ok
}

impl RuleSet {
    /// Compiles a loaded set, refuses it if it breaks the budget, and runs every rule's examples.
    pub fn compile(loaded: &LoadedSet, budget: &Budget) -> Result<RuleSet, Vec<RuleError>> {
        let started = Instant::now();
        let mut rules = rule_table(loaded);
        let declared = rules.len();
        let context_reach = add_contexts(loaded, &mut rules)?;
        let terms = terms_within_budget(loaded, budget)?;
        let Matchers {
            folded,
            exact,
            regexes,
            prefixes,
        } = Patterns::collect(loaded)?
            .build(budget)
            .map_err(|m| set_error(loaded, m))?;
        compiled_within_budget(started.elapsed(), budget).map_err(|m| set_error(loaded, m))?;

        let active = all_active(rules.len());
        let mut set = RuleSet {
            version: loaded.version.clone(),
            core: Arc::new(Core {
                folded,
                exact,
                regexes,
                prefixes,
                terms,
                declared,
                context_reach,
            }),
            rules,
            active,
            policy: Arc::from(super::policy::DEFAULT),
            catalog: None,
            all: None,
        };
        let failures = set.check_examples(loaded);
        if !failures.is_empty() {
            return Err(failures);
        }
        // The policies are views over the matchers just built: checked, then their examples run.
        let catalog = super::policy::Catalog::build(&set, loaded)?;
        set.catalog = Some(Arc::new(catalog));
        Ok(set)
    }

    /// A view of the same matchers under a policy: `rules` indexed like this set's, `active` its bitset.
    pub(super) fn view(&self, policy: &str, rules: Vec<Rule>, active: Box<[u64]>) -> RuleSet {
        RuleSet {
            version: self.version.clone(),
            core: Arc::clone(&self.core),
            rules,
            active,
            policy: Arc::from(policy),
            catalog: None,
            all: self.all.clone(),
        }
    }

    /// This view, knowing `all` as the set with every rule as written.
    pub(super) fn with_all(mut self, all: &Arc<RuleSet>) -> RuleSet {
        self.all = Some(Arc::clone(all));
        self
    }

    /// The set with every rule as written, whatever this view's policy: for deciding whether client text
    /// (a model name, a request id) may go into a record.
    pub fn everything(&self) -> &RuleSet {
        self.all.as_deref().unwrap_or(self)
    }

    /// A copy of this view (same matchers, same table and bitset), without the catalog.
    pub(super) fn clone_view(&self) -> RuleSet {
        self.view(&self.policy, self.rules.clone(), self.active.clone())
    }

    /// This set with its catalog given to it (the live set carries the catalog, whichever view it is).
    pub(super) fn with_catalog(mut self, catalog: Option<Arc<super::policy::Catalog>>) -> RuleSet {
        self.catalog = catalog;
        self
    }

    /// The named policies of this version, on the set a load returned (views carry none).
    pub fn catalog(&self) -> Option<&Arc<super::policy::Catalog>> {
        self.catalog.as_ref()
    }

    /// The name of the policy this view applies (`default`: every rule as written).
    pub fn policy(&self) -> &str {
        &self.policy
    }

    /// Whether rule `rule` applies under this view's policy.
    pub fn is_active(&self, rule: usize) -> bool {
        self.active
            .get(rule / 64)
            .is_some_and(|w| w >> (rule % 64) & 1 == 1)
    }

    /// The shared matchers (two views of one version hold the same).
    pub fn core(&self) -> &Arc<Core> {
        &self.core
    }

    /// Runs every rule's `examples`; returns one error per example that does not behave.
    fn check_examples(&self, loaded: &LoadedSet) -> Vec<RuleError> {
        let mut errors = Vec::new();
        for (i, r) in loaded.rules.iter().enumerate() {
            let err = |message: String| rule_error(r, message);
            // A match of an optional-context rule with context is named by its twin, which has the same id.
            let named = |m: &Match| m.rule == i || self.rules[m.rule].id == r.spec.id;
            for ex in &r.spec.examples.should_match {
                if !self.candidates_in_context("", 0, ex).iter().any(named) {
                    errors.push(err(format!("example {ex:?} should match but does not")));
                }
            }
            for ex in &r.spec.examples.no_match {
                if self.candidates_in_context("", 0, ex).iter().any(named) {
                    errors.push(err(format!("example {ex:?} should not match but does")));
                }
            }
        }
        errors
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    /// The rules as declared (a match may also name the twin of an optional-context rule: see [`Self::rule`]).
    pub fn rules(&self) -> &[Rule] {
        &self.rules[..self.core.declared]
    }

    /// Every entry a match may name: the declared rules, then the twins of optional-context rules (each with
    /// its rule's id and tags, so a policy selecting the rule selects its twin).
    pub fn table(&self) -> &[Rule] {
        &self.rules
    }

    /// The rule a match names: a declared rule, or the twin of an optional-context rule (same id, the context
    /// severity).
    pub fn rule(&self, index: usize) -> &Rule {
        &self.rules[index]
    }

    /// The widest context window of any rule, in characters: a text that arrives in pieces must keep this many
    /// characters (and one more) of what it released before the text still to scan (see [`Self::scan_after`]).
    pub fn context_reach(&self) -> usize {
        self.core.context_reach
    }

    /// Keyword terms across all rules.
    pub fn term_count(&self) -> usize {
        self.core.terms
    }

    /// For a text that is still growing (a streamed answer): feeds what arrived since the last call to the
    /// text's [`Growing`] state, which then says from where a match could still form as more text arrives
    /// (`buffer` holds the text from `buffer_start` to its new end; see [`Growing::push`]).
    pub fn grow(
        &self,
        growing: &mut Growing,
        cache: &mut PrefixCache,
        buffer: &str,
        buffer_start: usize,
    ) {
        growing.push(&self.core.prefixes, cache, buffer, buffer_start);
    }

    /// Non-overlapping matches of the rules that apply to `flow`, sorted by position. Overlapping candidates
    /// merge into one match spanning both, named by the most severe rule (action, then severity, then the
    /// longer span).
    pub fn scan(&self, text: &str, flow: Direction) -> Vec<Match> {
        self.scan_after("", 0, text, flow)
    }

    /// [`Self::scan`] of `text`, which follows `before` (text already dealt with, seen only by context
    /// checks); `text[..skip]` repeats the end of `before` (a look-behind character copied in front of it), so
    /// the context of a match at `s` is `before` then `text[skip..s]`. Only the last [`Self::context_reach`]
    /// characters (and one more) of `before` matter.
    pub fn scan_after(&self, before: &str, skip: usize, text: &str, flow: Direction) -> Vec<Match> {
        let mut cands = self.candidates(text, flow);
        if self.core.context_reach > 0 {
            self.apply_context(&mut cands, before, skip, text);
        }
        if cands.len() <= 1 {
            return cands;
        }
        cands.sort_by_key(|m| (m.start, std::cmp::Reverse(m.end)));
        let rank = |m: &Match| {
            let r = &self.rules[m.rule];
            (r.action, r.severity, m.end - m.start)
        };
        let mut out: Vec<Match> = Vec::with_capacity(cands.len());
        for m in cands {
            match out.last_mut() {
                Some(last) if m.start < last.end => {
                    // Overlapping candidates merge into one span covering both, so redaction leaks no part
                    // of either; the most severe rule names it.
                    let rule = if rank(&m) > rank(last) {
                        m.rule
                    } else {
                        last.rule
                    };
                    *last = Match {
                        rule,
                        start: last.start,
                        end: last.end.max(m.end),
                    };
                }
                _ => out.push(m),
            }
        }
        out
    }

    /// Every candidate of every matcher, before overlaps are resolved.
    fn candidates(&self, text: &str, flow: Direction) -> Vec<Match> {
        let mut out = Vec::new();
        if self.core.regexes.is_empty() && self.core.exact.is_none() && self.core.folded.is_none() {
            return out;
        }
        let norm = View::new(text, false);
        for group in &self.core.regexes {
            match &group.scope {
                Scope::Prefixed | Scope::Everything => {
                    self.scan_regex(group, &norm, 0..norm.text().len(), flow, &mut out)
                }
                Scope::IfPresent { bytes } => {
                    if plan::any_byte(norm.text(), bytes) {
                        self.scan_regex(group, &norm, 0..norm.text().len(), flow, &mut out);
                    }
                }
                Scope::Windowed { bytes, reach } => {
                    for (a, b) in plan::windows(norm.text(), bytes, *reach) {
                        self.scan_regex(group, &norm, a..b, flow, &mut out);
                    }
                }
            }
        }
        if let Some(kw) = &self.core.exact {
            self.scan_keywords(kw, &norm, flow, &mut out);
        }
        if let Some(kw) = &self.core.folded {
            let folded = View::new(text, true);
            self.scan_keywords(kw, &folded, flow, &mut out);
        }
        out
    }

    /// Every candidate, context applied (for the examples, which see the candidates before merging).
    fn candidates_in_context(&self, before: &str, skip: usize, text: &str) -> Vec<Match> {
        let mut cands = self.candidates(text, Direction::Both);
        self.apply_context(&mut cands, before, skip, text);
        cands
    }

    /// Drops the candidates of rules that require a context word and have none before them; names those of
    /// optional-context rules that have one by the rule's twin. Reads at most the rule's window (and one
    /// character more) before each candidate of a context rule.
    fn apply_context(&self, cands: &mut Vec<Match>, before: &str, skip: usize, text: &str) {
        cands.retain_mut(|m| {
            let Some(ctx) = &self.rules[m.rule].context else {
                return true;
            };
            // A match starting inside the repeated look-behind: its context ends that much earlier in `before`.
            let (before, head) = if m.start >= skip {
                (before, &text[skip..m.start])
            } else {
                let mut end = before.len().saturating_sub(skip - m.start);
                while !before.is_char_boundary(end) {
                    end -= 1;
                }
                (&before[..end], "")
            };
            let found = context_found(ctx, before, head);
            if let (true, Some(twin)) = (found, ctx.boosted) {
                m.rule = twin;
            }
            found || !ctx.require
        });
    }

    fn accepts(&self, rule: usize, hay: &str, r: &Range<usize>, flow: Direction) -> bool {
        // The policy's bit first: a rule it leaves out costs no validator run.
        if self.active[rule >> 6] >> (rule & 63) & 1 == 0 {
            return false;
        }
        let rule = &self.rules[rule];
        rule.direction.applies_to(flow) && rule.validator.is_none_or(|v| v.check(&hay[r.clone()]))
    }

    /// Every accepted match of `re` inside `window` (look-arounds see the text outside it).
    fn scan_regex(
        &self,
        re: &Regexes,
        view: &View<'_>,
        window: Range<usize>,
        flow: Direction,
        out: &mut Vec<Match>,
    ) {
        let hay = view.text();
        let mut input = Input::new(hay).range(window.clone());
        if re.gate.is_some() {
            input = input.anchored(Anchored::Yes);
        }
        let mut at = window.start;
        // Every search looks at most this far ahead of where its match may start, so that however many
        // candidates overlap (one per repeat of `sk-` in `sk-sk-sk-…`), each costs a bounded search.
        let reach = re.reach;
        while at < window.end {
            let found = match &re.gate {
                // An ungated group: the leftmost match starting in the next `reach` bytes, searched in twice
                // that (a match is never longer than `reach`, so one starting there is whole). None starting
                // there: the next stretch.
                None => {
                    let stop = window.end.min(at.saturating_add(2 * reach));
                    input.set_span(at..stop);
                    count_searched(stop - at);
                    match re.re.search(&input) {
                        Some(m) if stop == window.end || m.start() < at + reach => Some(m),
                        _ if stop < window.end => {
                            at = next_boundary(hay, at + reach, window.end);
                            continue;
                        }
                        _ => None,
                    }
                }
                // A gated group: its matches start only where the gate finds a prefix, so the next match is
                // the one that starts at the next such place, found by an anchored search there (the same
                // match, preferred among patterns the same way, as the unanchored search would report).
                Some(gate) => {
                    let Some(c) = gate.find(hay.as_bytes(), Span::from(at..window.end)) else {
                        break;
                    };
                    let stop = window.end.min(c.start.saturating_add(reach));
                    input.set_span(c.start..stop);
                    count_searched(stop - c.start);
                    let found = re.re.search(&input);
                    if found.is_none() {
                        at = next_boundary(hay, c.start + 1, window.end);
                        continue;
                    }
                    found
                }
            };
            let Some(m) = found else { break };
            let rule = re.rules[m.pattern().as_usize()] as usize;
            let r = m.range();
            let accepted = self.accepts(rule, hay, &r, flow);
            if accepted {
                let o = view.to_original(r.clone());
                out.push(Match {
                    rule,
                    start: o.start,
                    end: o.end,
                });
            }
            // Leftmost-first reports one match per start; another pattern's match (more severe, or valid where
            // this one failed its validator) may start inside it. Search again just after this start: matches
            // are rare, so the rescans are short, and `scan` merges overlapping candidates. A lone pattern
            // whose match was accepted can only find its own sub-matches there: skip past it.
            at = if accepted && re.rules.len() == 1 {
                r.end
            } else {
                r.start + 1
            };
            at = next_boundary(hay, at, window.end);
        }
    }

    fn scan_keywords(&self, kw: &Keywords, view: &View<'_>, flow: Direction, out: &mut Vec<Match>) {
        let hay = view.text();
        if let Some(gate) = &kw.gate {
            let before = out.len();
            if self.scan_keywords_gated(kw, gate, view, flow, out).is_ok() {
                return;
            }
            // Only an automaton built without anchored starts refuses; `keywords` builds them with the gate.
            // Whatever it was, the plain search below still finds everything.
            out.truncate(before);
        }
        for m in kw.ac.find_overlapping_iter(hay) {
            self.keyword_candidate(kw, view, m, flow, out);
        }
    }

    /// The keyword search behind a gate: at each place where the gate finds a term starting, every term that
    /// starts there (an anchored overlapping search). The same occurrences as the plain overlapping search,
    /// ordered by start instead of by end (`scan` sorts them).
    fn scan_keywords_gated(
        &self,
        kw: &Keywords,
        gate: &Prefilter,
        view: &View<'_>,
        flow: Direction,
        out: &mut Vec<Match>,
    ) -> Result<(), aho_corasick::MatchError> {
        let hay = view.text();
        let mut at = 0;
        while let Some(c) = gate.find(hay.as_bytes(), Span::from(at..hay.len())) {
            let input = aho_corasick::Input::new(hay)
                .range(c.start..)
                .anchored(aho_corasick::Anchored::Yes);
            let mut state = aho_corasick::automaton::OverlappingState::start();
            loop {
                kw.ac.try_find_overlapping(input.clone(), &mut state)?;
                let Some(m) = state.get_match() else { break };
                self.keyword_candidate(kw, view, m, flow, out);
            }
            at = c.start + 1;
        }
        Ok(())
    }

    /// One occurrence of a term, kept if its rule applies (whole word, direction).
    fn keyword_candidate(
        &self,
        kw: &Keywords,
        view: &View<'_>,
        m: aho_corasick::Match,
        flow: Direction,
        out: &mut Vec<Match>,
    ) {
        let hay = view.text();
        let rule = kw.rules[m.pattern().as_usize()] as usize;
        let r = m.range();
        if self.rules[rule].whole_word && !at_word_boundaries(hay, &r) {
            return;
        }
        if !self.rules[rule].direction.applies_to(flow) || !self.is_active(rule) {
            return;
        }
        // A match that starts or ends inside a character's expansion (a ligature, `ß` → `ss`) widens to
        // that whole character in the original: redaction never cuts a character in half.
        let o = view.to_original(r);
        out.push(Match {
            rule,
            start: o.start,
            end: o.end,
        });
    }
}

// The steps of `RuleSet::compile`: the rule table, the budgets, the patterns collected and checked, the matchers
// built from them.

/// An error about one rule, located for its author.
fn rule_error(r: &LoadedRule, message: String) -> RuleError {
    RuleError {
        file: r.file.clone(),
        line: Some(r.line),
        rule: Some(r.spec.id.clone()),
        message,
    }
}

/// An error about the set as a whole (a budget, an automaton), reported against its first file.
fn set_error(loaded: &LoadedSet, message: String) -> Vec<RuleError> {
    vec![RuleError {
        file: loaded.files.first().cloned().unwrap_or_default(),
        line: None,
        rule: None,
        message,
    }]
}

/// What each rule means once matched, indexed like `loaded.rules`.
fn rule_table(loaded: &LoadedSet) -> Vec<Rule> {
    loaded
        .rules
        .iter()
        .map(|r| Rule {
            id: r.spec.id.clone(),
            description: r.spec.description.clone(),
            action: r.spec.action,
            mode: r.spec.mode,
            direction: r.spec.direction,
            severity: r.spec.severity,
            replacement: r
                .spec
                .replacement
                .clone()
                .unwrap_or_else(|| default_replacement(&r.spec.id)),
            file: r.file.clone(),
            line: r.line,
            tags: std::iter::once(r.spec.id.split('.').next().unwrap_or_default().to_string())
                .chain(r.spec.tags.iter().cloned())
                .collect(),
            validator: r.spec.validator,
            whole_word: r.spec.whole_word,
            context: None,
        })
        .collect()
}

/// Compiles each rule's `context` into `rules` (indexed like `loaded.rules`) and appends the twin of each
/// optional-context rule; returns the widest window.
fn add_contexts(loaded: &LoadedSet, rules: &mut Vec<Rule>) -> Result<usize, Vec<RuleError>> {
    let mut errors = Vec::new();
    let mut reach = 0;
    for (i, r) in loaded.rules.iter().enumerate() {
        let Some(spec) = &r.spec.context else {
            continue;
        };
        let words: Vec<String> = spec.words.iter().map(|w| normalize_term(w, true)).collect();
        if let Some(w) = words.iter().position(String::is_empty) {
            errors.push(rule_error(
                r,
                format!("context: word {:?} is empty once normalised", spec.words[w]),
            ));
            continue;
        }
        let words = match AhoCorasick::builder()
            .match_kind(MatchKind::Standard)
            .build(&words)
        {
            Ok(ac) => ac,
            Err(e) => {
                errors.push(rule_error(r, format!("context words: {e}")));
                continue;
            }
        };
        let boosted = match (spec.require, spec.severity) {
            (false, Some(severity)) => {
                let twin = Rule {
                    severity,
                    ..rules[i].clone()
                };
                rules.push(twin);
                Some(rules.len() - 1)
            }
            _ => None,
        };
        reach = reach.max(spec.window.min(MAX_CONTEXT_WINDOW));
        rules[i].context = Some(Context {
            words,
            window: spec.window.min(MAX_CONTEXT_WINDOW),
            require: spec.require,
            boosted,
        });
    }
    if errors.is_empty() {
        Ok(reach)
    } else {
        Err(errors)
    }
}

/// The last `n` characters of `s` (fewer if it is shorter), and how many they are.
fn last_chars(s: &str, n: usize) -> (&str, usize) {
    let mut start = s.len();
    let mut count = 0;
    for (i, _) in s.char_indices().rev().take(n) {
        start = i;
        count += 1;
    }
    (&s[start..], count)
}

/// Whether a context word stands whole in the `window` characters that end where a candidate starts: the
/// end of `before`, then `head`. One character more is read, to tell whether a word at the window's start
/// is whole (`essn` is not `ssn`).
fn context_found(ctx: &Context, before: &str, head: &str) -> bool {
    let want = ctx.window + 1;
    let (near, n) = last_chars(head, want);
    let (far, m) = if n < want {
        last_chars(before, want - n)
    } else {
        ("", 0)
    };
    let mut window = String::with_capacity(far.len() + near.len());
    window.push_str(far);
    window.push_str(near);
    // With the extra character read, a word must start after it.
    let edge = if n + m == want {
        window.chars().next().map_or(0, char::len_utf8)
    } else {
        0
    };
    let view = View::new(&window, true);
    let hay = view.text();
    ctx.words.find_overlapping_iter(hay).any(|w| {
        let r = w.range();
        at_word_boundaries(hay, &r) && !bracketed(hay, &r) && view.to_original(r).start >= edge
    })
}

/// Whether `r` stands alone in square brackets, as a replacement does (`[PHONE]`): a redaction must not make
/// the context of the value after it (the text would change again on every rescan, and a stream's later
/// rounds would judge a value differently from the whole text's first).
fn bracketed(hay: &str, r: &Range<usize>) -> bool {
    let b = hay.as_bytes();
    r.start > 0 && b[r.start - 1] == b'[' && b.get(r.end) == Some(&b']')
}

/// Keyword terms in all rules together, refused over the budget before anything is built.
fn terms_within_budget(loaded: &LoadedSet, budget: &Budget) -> Result<usize, Vec<RuleError>> {
    let terms: usize = loaded.rules.iter().map(|r| r.terms.len()).sum();
    if terms > budget.max_terms {
        return Err(set_error(
            loaded,
            format!(
                "{terms} keyword terms, over the budget of {}",
                budget.max_terms
            ),
        ));
    }
    Ok(terms)
}

/// Refuses a set whose automata and regexes took longer to build than the budget allows.
fn compiled_within_budget(took: Duration, budget: &Budget) -> Result<(), String> {
    if took > budget.max_compile {
        return Err(format!(
            "compiling took {} ms, over the budget of {} ms",
            took.as_millis(),
            budget.max_compile.as_millis()
        ));
    }
    Ok(())
}

/// The rule indexes with the patterns of more severe rules first: among matches starting at the same place,
/// the automata and the meta regex prefer the lowest pattern id.
fn severity_order(loaded: &LoadedSet) -> Vec<usize> {
    let mut order: Vec<usize> = (0..loaded.rules.len()).collect();
    order.sort_by_key(|&i| {
        std::cmp::Reverse((loaded.rules[i].spec.action, loaded.rules[i].spec.severity))
    });
    order
}

/// Keyword terms bound for one automaton: `rules[i]` is the rule of `terms[i]` (the pattern id → rule table).
#[derive(Default)]
struct Terms {
    terms: Vec<String>,
    rules: Vec<u32>,
}

/// One planned group of regex patterns (see [`add_to_plan`]), `rules[i]` the rule of `patterns[i]`.
struct Group {
    scope: Scope,
    patterns: Vec<String>,
    rules: Vec<u32>,
    /// The longest match of any of its patterns, at most [`MAX_MATCH_BYTES`].
    reach: usize,
}

/// Every pattern of a set, checked and sorted into the matchers that will run it, in severity order.
struct Patterns {
    /// Terms of case-insensitive rules, normalised and folded.
    folded: Terms,
    /// Terms of case-sensitive rules, normalised.
    exact: Terms,
    groups: Vec<Group>,
}

/// The built matchers of a set.
struct Matchers {
    folded: Option<Keywords>,
    exact: Option<Keywords>,
    regexes: Vec<Regexes>,
    prefixes: Prefixes,
}

impl Patterns {
    /// Checks every rule's terms and regex; all the problems of all rules are reported at once.
    fn collect(loaded: &LoadedSet) -> Result<Self, Vec<RuleError>> {
        let mut patterns = Patterns {
            folded: Terms::default(),
            exact: Terms::default(),
            groups: Vec::new(),
        };
        let mut errors = Vec::new();
        for i in severity_order(loaded) {
            let r = &loaded.rules[i];
            patterns.add_terms(r, i as u32, &mut errors);
            if let Some(re) = &r.spec.regex {
                match planned_regex(r, re.pattern.get_ref()) {
                    Ok((scope, pattern, reach)) => {
                        add_to_plan(&mut patterns.groups, scope, pattern, reach, i as u32)
                    }
                    Err(message) => errors.push(rule_error(r, message)),
                }
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(patterns)
    }

    fn add_terms(&mut self, r: &LoadedRule, rule: u32, errors: &mut Vec<RuleError>) {
        let (bucket, fold) = if r.spec.case_sensitive {
            (&mut self.exact, false)
        } else {
            (&mut self.folded, true)
        };
        for t in &r.terms {
            let term = normalize_term(t, fold);
            if term.is_empty() {
                errors.push(rule_error(
                    r,
                    format!("keyword {t:?} is empty once normalised"),
                ));
                continue;
            }
            bucket.terms.push(term);
            bucket.rules.push(rule);
        }
    }

    /// Builds the prefix automata (for streamed answers), the two keyword automata and the regex groups.
    fn build(self, budget: &Budget) -> Result<Matchers, String> {
        let all_patterns: Vec<String> = self
            .groups
            .iter()
            .flat_map(|g| g.patterns.iter().cloned())
            .collect();
        let prefixes = Prefixes::build(&all_patterns, &self.folded.terms, &self.exact.terms)
            .map_err(|e| format!("prefix automata: {e}"))?;
        let folded = keywords(self.folded).map_err(|e| format!("keywords: {e}"))?;
        let exact = keywords(self.exact).map_err(|e| format!("keywords: {e}"))?;
        let regexes = self
            .groups
            .into_iter()
            .map(|g| regex_group(g, budget))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Matchers {
            folded,
            exact,
            regexes,
            prefixes,
        })
    }
}

/// The longest text one regex match may cover, bytes: a pattern that could match more (`+`, `{20,}`) has its
/// matches cut here. The scan searches again just after each candidate's start (another rule's match may start
/// inside it, or a shorter valid one where a longer one failed its validator), so a match's length bounds the
/// work spent per byte: unbounded, text made of one prefix repeated (`sk-sk-sk-…`) starts a match at every
/// repeat that runs to the end of the text, and the scan turns quadratic (82 s for 240 KB of `sk-`). Bounded,
/// each start costs at most a few times this many bytes of search and of validation, and the scan is linear.
pub const MAX_MATCH_BYTES: usize = 8 << 10;

/// A rule's regex as it is compiled (word boundaries and case-insensitivity applied), and where it is
/// searched, and how long its matches can be (at most [`MAX_MATCH_BYTES`]). Refuses a pattern that does not
/// parse or can match the empty string.
fn planned_regex(r: &LoadedRule, pattern: &str) -> Result<(Scope, String, usize), String> {
    let mut p = pattern.to_string();
    if r.spec.whole_word {
        p = format!(r"(?-u:\b)(?:{p})(?-u:\b)");
    }
    if !r.spec.case_sensitive {
        p = format!("(?i:{p})");
    }
    let hir = regex_syntax::ParserBuilder::new()
        .build()
        .parse(&p)
        .map_err(|e| {
            // The regex crate's own message, flattened to one line.
            let msg = e
                .to_string()
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join(" ");
            format!("bad regex: {msg}")
        })?;
    if hir.properties().minimum_len() == Some(0) {
        return Err("regex can match the empty string".into());
    }
    let reach = hir
        .properties()
        .maximum_len()
        .map_or(MAX_MATCH_BYTES, |n| n.min(MAX_MATCH_BYTES));
    Ok((plan::scope_of(&hir), p, reach))
}

/// One keyword automaton, or none for no terms.
///
/// Folded terms meet a folded (lowercase) view, so both automata search case-sensitively: that lets the
/// crate's rare-byte prefilters work, which ASCII case-insensitivity would defeat.
fn keywords(Terms { terms, rules }: Terms) -> Result<Option<Keywords>, String> {
    if terms.is_empty() {
        return Ok(None);
    }
    // Standard semantics with overlapping search: every occurrence of every term is a candidate, so a benign
    // term can never hide an overlapping forbidden one; `scan` resolves the overlaps. A full DFA is the
    // fastest automaton and affordable for small term lists; large lists let the crate choose (a contiguous
    // NFA) to bound memory and build time.
    let kind = (terms.len() <= 5_000).then_some(AhoCorasickKind::DFA);
    // A few terms get a gate: Teddy finds where one of them starts, and the automaton, anchored there, says
    // which. The automaton's own prefilter for standard semantics skips to rare bytes, and in folded
    // (lowercase) terms those are letters that prose is full of: on the benchmark prose the automaton ran at
    // ~120 MB/s behind it, the most expensive matcher of the default pack.
    let gate = (terms.len() <= GATE_TERMS)
        .then(|| Prefilter::new(regex_automata::MatchKind::LeftmostFirst, &terms))
        .flatten()
        .filter(Prefilter::is_fast);
    let ac = AhoCorasick::builder()
        .kind(kind)
        .match_kind(MatchKind::Standard)
        .start_kind(if gate.is_some() {
            StartKind::Both
        } else {
            StartKind::Unanchored
        })
        .build(&terms)
        .map_err(|e| e.to_string())?;
    Ok(Some(Keywords { ac, rules, gate }))
}

/// The most keyword terms behind a gate: Teddy, the fast multi-literal searcher, takes up to 64.
const GATE_TERMS: usize = 64;

/// One group's meta regex, held to the regex size budget.
fn regex_group(g: Group, budget: &Budget) -> Result<Regexes, String> {
    // The lazy DFA needs a cache of ~18 bytes per NFA state at the very least; a meta regex whose NFA does not
    // fit the default 2 MiB drops it and runs the PikeVM, ~100 times slower. Long counted repetitions
    // (`[^\s@/]{1,255}` in a URI rule) make a group's NFA that large, so the cache is sized to the group.
    let states = NFA::new_many(&g.patterns).map_or(0, |nfa| nfa.states().len());
    let re = meta::Regex::builder()
        .configure(
            meta::Config::new()
                .nfa_size_limit(Some(budget.max_regex_bytes))
                .hybrid_cache_capacity((2 << 20) + 32 * states),
        )
        .build_many(&g.patterns)
        .map_err(|e| format!("regexes: {e} (over the regex size budget?)"))?;
    let gate = match g.scope {
        Scope::Prefixed => plan::prefix_gate(&g.patterns),
        _ => None,
    };
    Ok(Regexes {
        re,
        rules: g.rules,
        scope: g.scope,
        gate,
        reach: g.reach,
    })
}

/// Adds a pattern to its planned group: one group per scope kind, except `IfPresent`, one per pattern (each
/// then gets the single-pattern optimisations of the meta regex). Windowed groups share one window set: the
/// union of their bytes, the largest reach.
fn add_to_plan(groups: &mut Vec<Group>, scope: Scope, pattern: String, reach: usize, rule: u32) {
    let slot = match &scope {
        Scope::IfPresent { .. } => None,
        Scope::Prefixed => groups.iter().position(|g| g.scope == Scope::Prefixed),
        Scope::Everything => groups.iter().position(|g| g.scope == Scope::Everything),
        Scope::Windowed { .. } => groups
            .iter()
            .position(|g| matches!(g.scope, Scope::Windowed { .. })),
    };
    match slot {
        None => groups.push(Group {
            scope,
            patterns: vec![pattern],
            rules: vec![rule],
            reach,
        }),
        Some(i) => {
            let g = &mut groups[i];
            g.reach = g.reach.max(reach);
            if let (
                Scope::Windowed { bytes, reach },
                Scope::Windowed {
                    bytes: b2,
                    reach: r2,
                },
            ) = (&mut g.scope, &scope)
            {
                bytes.union(b2);
                *reach = (*reach).max(*r2);
            }
            g.patterns.push(pattern);
            g.rules.push(rule);
        }
    }
}

/// Replaces each match in `text` by its replacement. `matches` must be sorted and non-overlapping (as
/// [`RuleSet::scan`] returns them); the text between matches is kept byte for byte.
pub fn redact<'a>(
    text: &str,
    matches: impl IntoIterator<Item = (Range<usize>, &'a str)>,
) -> String {
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for (r, replacement) in matches {
        if r.start < last || r.end > text.len() {
            continue;
        }
        out.push_str(&text[last..r.start]);
        out.push_str(replacement);
        last = r.end;
    }
    out.push_str(&text[last..]);
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::rules::spec::load_dir;
    use crate::testkit::{rule_set, Rng};

    /// The shipped pack (its secret formats: literal prefixes of every kind, URIs with long counted
    /// repetitions, case-insensitive rules), compiled twice: as planned, and with every gate removed so that
    /// each group runs the plain unanchored search.
    fn grown_pack_gated_and_not() -> (RuleSet, RuleSet) {
        let here = Path::new(env!("CARGO_MANIFEST_DIR"));
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("terms")).expect("mkdir");
        for (from, to) in [
            ("rules/pii.toml", "pii.toml"),
            ("rules/secrets.toml", "secrets.toml"),
            ("rules/confidential.toml", "confidential.toml"),
            ("rules/terms/confidential.txt", "terms/confidential.txt"),
        ] {
            std::fs::copy(here.join(from), dir.path().join(to)).expect("copy");
        }
        let loaded = load_dir(dir.path()).expect("loads");
        let gated = RuleSet::compile(&loaded, &Budget::default()).expect("compiles");
        let mut plain = RuleSet::compile(&loaded, &Budget::default()).expect("compiles");
        // The policies' views share the core: without them this set is its only owner.
        plain.catalog = None;
        plain.all = None;
        let core = Arc::get_mut(&mut plain.core).expect("the set's own core");
        for group in &mut core.regexes {
            group.gate = None;
        }
        for kw in [&mut core.exact, &mut core.folded].into_iter().flatten() {
            kw.gate = None;
        }
        (gated, plain)
    }

    /// Pieces of text that start, continue, cut short or disguise the values the rules look for.
    const PIECES: &[&str] = &[
        " ",
        "the ",
        "post ",
        "redirect ",
        "key-",
        "sk-",
        "sk-ant-api03-",
        "sk_live_",
        "AKIA",
        "A3TX",
        "ghp_",
        "github_pat_",
        "xoxb-",
        "xoxp-123456789012-",
        "xoxe-1234567-",
        "glpat-",
        "AIza",
        "npm_",
        "NPM_",
        "hf_",
        "SG.",
        "dop_v1_",
        "shpat_",
        "ATATT3",
        "pypi-AgEIcHlwaS5vcmc",
        "https://discord.com/api/webhooks/",
        "https://hooks.slack.com/services/",
        "postgres://",
        "postgresql://",
        "mongodb+srv://",
        "redis://",
        "u:p@h",
        "@",
        ":",
        "=",
        "-----BEGIN RSA PRIVATE KEY-----",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.",
        "0123456789abcdef",
        "ABCDEFGHIJKLMNOP",
        "abcdefghijklmnopqrstuvwxyz",
        "4111 1111 1111 1111",
        "jane.doe@example.com",
        "Project Bluebird",
        "project bluebirds",
        "OPERATION NIGHTJAR",
        "Großbaustelle Nordhafen",
        "GROSSBAUSTELLE",
        "acme-confidential",
        "datadog_api_key = ",
        "password: ",
        "é",
        "ß",
        "\u{200B}",
        "\u{00AD}",
        "\u{E0041}",
        "４",
        "Ａ",
        "\u{0420}r\u{043E}\u{0458}\u{0435}\u{0441}t",
        "\u{2013}",
        "\u{00A0}",
        "中",
    ];

    /// The bytes one scan of `text` handed to regex searches.
    fn searched(set: &RuleSet, text: &str) -> usize {
        SEARCHED.with(|n| n.set(0));
        set.scan(text, Direction::Request);
        SEARCHED.with(std::cell::Cell::get)
    }

    /// Regression: in `sk-sk-sk-…` every repeat started an OpenAI-key candidate that ran to the end of the
    /// text, and the next search started just after it: 82 s of scan for 240 KB. Whatever a pattern's own bound
    /// (none, or the shipped pack's), the work grows with the text as the text does.
    #[test]
    fn overlapping_candidates_cost_work_linear_in_the_text() {
        let unbounded = rule_set(
            r#"
[[rule]]
id = "t.key"
description = "gated, unbounded"
regex = { pattern = '(?-u:\b)sk-[A-Za-z0-9/_-]{20,}' }
validator = "entropy"
action = "redact"

[[rule]]
id = "t.blob"
description = "ungated, unbounded"
regex = { pattern = '(?-u:\b)[A-Za-z0-9+/-]{80,}' }
action = "log"

[[rule]]
id = "t.word"
description = "ungated, shares the blob's group: every blob is searched again after its start"
regex = { pattern = '[a-z]{3,}[0-9]{3,}' }
action = "log"
"#,
        )
        .expect("compiles");
        let (shipped, _) = grown_pack_gated_and_not();
        for (name, set) in [("unbounded", &unbounded), ("shipped", &shipped)] {
            for unit in ["sk-", "a/", "sk-a/", "eyJ-"] {
                let text = |len: usize| unit.repeat(len / unit.len());
                let (small, big) = (text(24 << 10), text(96 << 10));
                let (w_small, w_big) = (searched(set, &small), searched(set, &big));
                assert!(
                    w_big <= 5 * w_small.max(small.len()),
                    "{name}, {unit:?}: 4 times the text cost {w_big} bytes of search against {w_small}"
                );
                assert!(
                    w_big <= big.len() * 2 * MAX_MATCH_BYTES,
                    "{name}, {unit:?}: {w_big} bytes searched for {} of text",
                    big.len()
                );
            }
        }
        // Cut, not lost: a candidate longer than the bound is still found (and redacted from its start).
        let long = format!("key sk-{} end", "aB3/".repeat(MAX_MATCH_BYTES));
        let found = unbounded.scan(&long, Direction::Request);
        assert_eq!(found.first().map(|m| m.start), Some(4), "{found:?}");
    }

    #[test]
    fn gated_groups_find_what_the_unanchored_search_finds() {
        let (gated, plain) = grown_pack_gated_and_not();
        assert!(
            gated.core.regexes.iter().any(|g| g.gate.is_some()),
            "the prefixed group has a gate"
        );
        assert!(
            gated.core.folded.as_ref().is_some_and(|k| k.gate.is_some()),
            "the keywords have a gate"
        );
        let mut rng = Rng(0x2545_F491_4F6C_DD1D);
        let mut found = 0;
        for round in 0..3000 {
            let len = 1 + (rng.next() % 40) as usize;
            let text: String = (0..len).map(|_| *rng.pick(PIECES)).collect();
            for flow in [Direction::Request, Direction::Response] {
                // Gated keywords come ordered by start rather than by end: compare as sets.
                let sorted = |mut c: Vec<Match>| {
                    c.sort_by_key(|m| (m.start, m.end, m.rule));
                    c
                };
                let want = sorted(plain.candidates(&text, flow));
                assert_eq!(
                    sorted(gated.candidates(&text, flow)),
                    want,
                    "round {round}: {text:?}"
                );
                assert_eq!(gated.scan(&text, flow), plain.scan(&text, flow));
                found += want.len();
            }
        }
        // The texts are made to hold values: a comparison of two empty lists would prove nothing.
        assert!(found > 1000, "only {found} candidates");
    }
}
