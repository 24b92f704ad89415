//! The rule file format as rule authors write it, and loading a rules directory into checked specs. Nothing
//! here compiles anything; `engine` does. Every error names `file:line`, the rule id and what is wrong.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};
use toml::Spanned;

use super::validate::Validator;

/// Which traffic a rule inspects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Request,
    Response,
    #[default]
    Both,
}

impl Direction {
    /// Whether a rule with this direction applies to traffic flowing `flow` (`Both` means "any flow").
    pub fn applies_to(self, flow: Direction) -> bool {
        self == Direction::Both || flow == Direction::Both || self == flow
    }
}

/// What a match does. Ordered by severity: `Block` > `Redact` > `Log`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Log,
    Redact,
    Block,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Log => "log",
            Action::Redact => "redact",
            Action::Block => "block",
        }
    }
}

/// `enforce` applies the action; `monitor` only records what would have happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    Enforce,
    Monitor,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Low,
    #[default]
    Medium,
    High,
    Critical,
}

impl Severity {
    /// The name rule files use.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeywordSpec {
    #[serde(default)]
    pub terms: Vec<String>,
    /// Relative to the rules directory; one term per line, `#` starts a comment.
    #[serde(default)]
    pub terms_file: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegexSpec {
    pub pattern: Spanned<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Examples {
    #[serde(default, rename = "match")]
    pub should_match: Vec<String>,
    #[serde(default)]
    pub no_match: Vec<String>,
}

/// One rule, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    pub id: String,
    pub description: String,
    #[serde(default)]
    pub keywords: Option<KeywordSpec>,
    #[serde(default)]
    pub regex: Option<RegexSpec>,
    #[serde(default)]
    pub case_sensitive: bool,
    #[serde(default)]
    pub whole_word: bool,
    #[serde(default)]
    pub validator: Option<Validator>,
    #[serde(default)]
    pub direction: Direction,
    pub action: Action,
    #[serde(default)]
    pub replacement: Option<String>,
    #[serde(default)]
    pub severity: Severity,
    #[serde(default)]
    pub mode: Mode,
    #[serde(default)]
    pub examples: Examples,
    /// Words that must (or, with `require = false`, may) stand shortly before a match.
    #[serde(default)]
    pub context: Option<ContextSpec>,
    /// Extra names policies select the rule by (the first segment of its id is always one).
    #[serde(default)]
    pub tags: Vec<String>,
}

/// The widest context window a rule may ask for, in characters: the stream hold-back keeps this much of the
/// text it released to decide the values after it, and the check reads it once per candidate.
pub const MAX_CONTEXT_WINDOW: usize = 256;

fn default_window() -> usize {
    40
}

fn yes() -> bool {
    true
}

/// `context = { words = [...], window = 40, require = true }`: words (case-insensitive, whole words) looked
/// for in the `window` characters before a candidate. Only before it: a streamed value is decided when it is
/// complete, so looking ahead would hold text back for words that may never come.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContextSpec {
    pub words: Vec<String>,
    /// Characters before the match searched for a word, 1 to [`MAX_CONTEXT_WINDOW`].
    #[serde(default = "default_window")]
    pub window: usize,
    /// `true` (the default): a candidate counts only with a context word before it. `false`: it counts either
    /// way, and with a context word its severity is `severity`.
    #[serde(default = "yes")]
    pub require: bool,
    /// With `require = false`: the severity of a match with context (above the rule's own).
    #[serde(default)]
    pub severity: Option<Severity>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    #[serde(default)]
    rule: Vec<Spanned<RuleSpec>>,
    #[serde(default)]
    policy: Vec<Spanned<PolicySpec>>,
    #[serde(default)]
    assign: Vec<Spanned<AssignSpec>>,
}

/// Which rules a policy (or one of its overrides) names: by tag and by id (an id may end in `*`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Selection {
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub ids: Vec<String>,
}

impl Selection {
    /// Whether the selection names nothing (a policy's `select` then means every rule).
    pub fn is_empty(&self) -> bool {
        self.tags.is_empty() && self.ids.is_empty()
    }
}

/// A policy's change to the rules it selects: their `action`, their `mode`, or both.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverrideSpec {
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub ids: Vec<String>,
    #[serde(default)]
    pub action: Option<Action>,
    #[serde(default)]
    pub mode: Option<Mode>,
}

/// What a policy example expects: the outcome of a request carrying `text`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Expected {
    Pass,
    Log,
    Redact,
    Block,
}

impl Expected {
    pub fn as_str(self) -> &'static str {
        match self {
            Expected::Pass => "pass",
            Expected::Log => "log",
            Expected::Redact => "redact",
            Expected::Block => "block",
        }
    }
}

/// One example of a policy, run by `promptgate rules check` and by every load.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyExample {
    pub text: String,
    pub outcome: Expected,
    /// The text as forwarded, when the outcome is `redact`.
    #[serde(default)]
    pub redacted: Option<String>,
}

/// A named policy, as written (`[[policy]]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    pub name: String,
    pub description: String,
    /// The rules the policy applies; empty: every rule.
    #[serde(default)]
    pub select: Selection,
    /// Rules taken out of the selection.
    #[serde(default)]
    pub exclude: Selection,
    /// Applied in order to the selected rules (a later one wins).
    #[serde(default, rename = "override")]
    pub overrides: Vec<Spanned<OverrideSpec>>,
    #[serde(default, rename = "example")]
    pub examples: Vec<Spanned<PolicyExample>>,
}

/// A header-free choice of policy for requests no key or tenant names one for (`[[assign]]`): by the model
/// the request names and/or its route. Never by a client header, which any caller could forge.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssignSpec {
    pub policy: String,
    /// Model names, or prefixes ending in `*`.
    #[serde(default)]
    pub models: Vec<String>,
    /// Request paths, or prefixes ending in `*`.
    #[serde(default)]
    pub routes: Vec<String>,
}

/// A spec read from a file, with where it stands (`file:line`).
#[derive(Debug, Clone)]
pub struct Located<T> {
    pub spec: T,
    pub file: PathBuf,
    pub line: usize,
    /// Lines of the spec's nested tables (overrides, examples), in order.
    pub lines: Vec<usize>,
}

/// A rule with where it came from and its terms resolved.
#[derive(Debug, Clone)]
pub struct LoadedRule {
    pub spec: RuleSpec,
    pub file: PathBuf,
    pub line: usize,
    /// Inline terms and the terms file's, in order.
    pub terms: Vec<String>,
}

/// What is wrong with a rule file, located for the author.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub rule: Option<String>,
    pub message: String,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
        }
        if let Some(r) = &self.rule {
            write!(f, ": rule '{r}'")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// All rules of a directory plus the content hash that names this version.
#[derive(Debug, Clone)]
pub struct LoadedSet {
    pub rules: Vec<LoadedRule>,
    /// First 12 hex digits of the SHA-256 of every file (names and contents, terms files included).
    pub version: String,
    pub files: Vec<PathBuf>,
    /// The `[[policy]]` tables of every file, in file order.
    pub policies: Vec<Located<PolicySpec>>,
    /// The `[[assign]]` tables of every file, in file order.
    pub assigns: Vec<Located<AssignSpec>>,
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Every `*.toml` directly in `dir`, sorted.
pub fn rule_files(dir: &Path) -> Result<Vec<PathBuf>, RuleError> {
    let err = |message: String| RuleError {
        file: dir.to_path_buf(),
        line: None,
        rule: None,
        message,
    };
    let entries =
        std::fs::read_dir(dir).map_err(|e| err(format!("cannot read the rules directory: {e}")))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

pub(crate) fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        })
}

/// Reads and checks every rule file of `dir`. Returns every error found, not only the first.
pub fn load_dir(dir: &Path) -> Result<LoadedSet, Vec<RuleError>> {
    let files = rule_files(dir).map_err(|e| vec![e])?;
    let mut loader = Loader {
        dir,
        hasher: Sha256::new(),
        errors: Vec::new(),
        rules: Vec::new(),
        files: files.clone(),
        policies: Vec::new(),
        assigns: Vec::new(),
    };
    for file in &files {
        loader.file(file);
    }
    loader.finish()
}

/// The state of one load: what was read (hashed into the version), the rules so far, the errors so far.
struct Loader<'a> {
    dir: &'a Path,
    hasher: Sha256,
    errors: Vec<RuleError>,
    rules: Vec<LoadedRule>,
    /// Every file the set was read from (rule files and terms files).
    files: Vec<PathBuf>,
    policies: Vec<Located<PolicySpec>>,
    assigns: Vec<Located<AssignSpec>>,
}

impl Loader<'_> {
    /// Hashes `name` and `text` into the version (with separators, so moving bytes between them changes it).
    fn hash(&mut self, name: &[u8], text: &str) {
        self.hasher.update(name);
        self.hasher.update([0]);
        self.hasher.update(text.as_bytes());
        self.hasher.update([0]);
    }

    /// One rule file: read, hashed, parsed, each rule checked.
    fn file(&mut self, file: &Path) {
        let error = |line: Option<usize>, message: String| RuleError {
            file: file.to_path_buf(),
            line,
            rule: None,
            message,
        };
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) => return self.errors.push(error(None, format!("cannot read: {e}"))),
        };
        let name = file
            .file_name()
            .map(|n| n.as_encoded_bytes())
            .unwrap_or_default();
        self.hash(name, &text);
        let parsed: RuleFile = match toml::from_str(&text) {
            Ok(p) => p,
            Err(e) => {
                let line = e.span().map(|s| line_of(&text, s.start));
                return self
                    .errors
                    .push(error(line, e.message().trim().to_string()));
            }
        };
        for spanned in parsed.rule {
            let line = line_of(&text, spanned.span().start);
            self.rule(file, line, spanned.into_inner());
        }
        for spanned in parsed.policy {
            let line = line_of(&text, spanned.span().start);
            let spec = spanned.into_inner();
            let lines = spec
                .overrides
                .iter()
                .map(|o| line_of(&text, o.span().start))
                .chain(spec.examples.iter().map(|e| line_of(&text, e.span().start)))
                .collect();
            self.policies.push(Located {
                spec,
                file: file.to_path_buf(),
                line,
                lines,
            });
        }
        for spanned in parsed.assign {
            let line = line_of(&text, spanned.span().start);
            self.assigns.push(Located {
                spec: spanned.into_inner(),
                file: file.to_path_buf(),
                line,
                lines: Vec::new(),
            });
        }
    }

    /// One rule: its id, description, matcher, validator and replacement checked; its terms gathered.
    fn rule(&mut self, file: &Path, line: usize, spec: RuleSpec) {
        let at = |message: String| RuleError {
            file: file.to_path_buf(),
            line: Some(line),
            rule: Some(spec.id.clone()),
            message,
        };
        let mut errors = Vec::new();
        if !valid_id(&spec.id) {
            errors.push(at(
                "invalid id: use lowercase dotted names like `pii.email` (a-z, 0-9, _, -)".into(),
            ));
        }
        if let Some(prev) = self.rules.iter().find(|r| r.spec.id == spec.id) {
            errors.push(at(format!(
                "duplicate id: also defined at {}:{}",
                prev.file.display(),
                prev.line
            )));
        }
        if spec.description.trim().is_empty() {
            errors.push(at("description is empty".into()));
        }
        let mut terms = Vec::new();
        match (&spec.keywords, &spec.regex) {
            (Some(_), Some(_)) => errors.push(at(
                "a rule has one matcher: `keywords` or `regex`, not both".into(),
            )),
            (None, None) => errors.push(at(
                "no matcher: add `keywords = { terms = [...] }` or `regex = { pattern = '...' }`"
                    .into(),
            )),
            (Some(k), None) => {
                terms = self.terms(k, &at, &mut errors);
                if let Some(empty) = terms.iter().position(|t| t.trim().is_empty()) {
                    errors.push(at(format!("keyword term #{} is empty", empty + 1)));
                }
                if terms.is_empty() && errors.is_empty() {
                    errors.push(at("keywords: no terms".into()));
                }
            }
            (None, Some(_)) => {}
        }
        if spec.validator == Some(Validator::FaultInjection)
            && std::env::var("PROMPTGATE_ALLOW_FAULT_INJECTION").as_deref() != Ok("1")
        {
            errors.push(at("validator \"fault_injection\" is for tests only".into()));
        }
        if spec.keywords.is_some() && spec.validator.is_some() {
            errors.push(at("validators apply to regex rules only".into()));
        }
        if let Some(c) = &spec.context {
            errors.extend(context_errors(c, spec.severity).into_iter().map(&at));
        }
        if spec
            .replacement
            .as_ref()
            .is_some_and(|r| r.contains(['\n', '\r']))
        {
            errors.push(at("replacement must be one line".into()));
        }
        for tag in spec.tags.iter().filter(|t| !valid_id(t)) {
            errors.push(at(format!(
                "invalid tag {tag:?}: use lowercase names like ids (a-z, 0-9, _, -, dots)"
            )));
        }
        self.errors.extend(errors);
        self.rules.push(LoadedRule {
            spec,
            file: file.to_path_buf(),
            line,
            terms,
        });
    }

    /// A keyword rule's terms: the inline ones, then those of its `terms_file` (one per line, `#` comments),
    /// which is hashed into the version and listed with the set's files.
    fn terms(
        &mut self,
        k: &KeywordSpec,
        at: &impl Fn(String) -> RuleError,
        errors: &mut Vec<RuleError>,
    ) -> Vec<String> {
        let mut terms = k.terms.clone();
        let Some(tf) = &k.terms_file else {
            return terms;
        };
        let path = self.dir.join(tf);
        match std::fs::read_to_string(&path) {
            Ok(t) => {
                self.hash(tf.as_bytes(), &t);
                self.files.push(path);
                terms.extend(
                    t.lines()
                        .map(|l| l.split('#').next().unwrap_or("").trim())
                        .filter(|l| !l.is_empty())
                        .map(str::to_string),
                );
            }
            Err(e) => errors.push(at(format!("terms_file {tf:?}: {e}"))),
        }
        terms
    }

    /// The set, or every error found.
    fn finish(mut self) -> Result<LoadedSet, Vec<RuleError>> {
        if self.rules.is_empty() && self.errors.is_empty() {
            self.errors.push(RuleError {
                file: self.dir.to_path_buf(),
                line: None,
                rule: None,
                message: "no rules: the directory has no *.toml file with a [[rule]] (refusing to run with no rules)".into(),
            });
        }
        if !self.errors.is_empty() {
            return Err(self.errors);
        }
        let digest = self.hasher.finalize();
        let version = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
        Ok(LoadedSet {
            rules: self.rules,
            version,
            files: self.files,
            policies: self.policies,
            assigns: self.assigns,
        })
    }
}

/// What is wrong with a rule's `context`, one message per problem.
fn context_errors(c: &ContextSpec, severity: Severity) -> Vec<String> {
    let mut errors = Vec::new();
    if c.words.is_empty() {
        errors.push("context: no words (add `words = [\"...\"]` or remove `context`)".to_string());
    }
    if let Some(i) = c.words.iter().position(|w| w.trim().is_empty()) {
        errors.push(format!("context: word #{} is empty", i + 1));
    }
    if !(1..=MAX_CONTEXT_WINDOW).contains(&c.window) {
        errors.push(format!(
            "context: window = {} is outside 1..={MAX_CONTEXT_WINDOW} (characters before the match)",
            c.window
        ));
    }
    match (c.require, c.severity) {
        (true, Some(_)) => errors.push(
            "context: `severity` applies with `require = false` only (a required context changes no severity)"
                .to_string(),
        ),
        (false, None) => errors.push(
            "context: `require = false` needs `severity` (what a match with context becomes)".to_string(),
        ),
        (false, Some(s)) if s <= severity => errors.push(format!(
            "context: severity \"{}\" is not above the rule's own (\"{}\"); use a higher one",
            s.as_str(),
            severity.as_str()
        )),
        _ => {}
    }
    errors
}

/// The default replacement: `[KIND]` from the last segment of the id (`pii.email` → `[EMAIL]`).
pub fn default_replacement(id: &str) -> String {
    let kind = id.rsplit('.').next().unwrap_or(id);
    format!("[{}]", kind.to_ascii_uppercase().replace('-', "_"))
}
