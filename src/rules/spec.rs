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
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    #[serde(default)]
    rule: Vec<Spanned<RuleSpec>>,
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

fn valid_id(id: &str) -> bool {
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
    let mut errors = Vec::new();
    let mut rules: Vec<LoadedRule> = Vec::new();
    let mut hasher = Sha256::new();
    let mut all_files = files.clone();
    for file in &files {
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) => {
                errors.push(RuleError {
                    file: file.clone(),
                    line: None,
                    rule: None,
                    message: format!("cannot read: {e}"),
                });
                continue;
            }
        };
        hasher.update(
            file.file_name()
                .map(|n| n.as_encoded_bytes())
                .unwrap_or_default(),
        );
        hasher.update([0]);
        hasher.update(text.as_bytes());
        hasher.update([0]);
        let parsed: RuleFile = match toml::from_str(&text) {
            Ok(p) => p,
            Err(e) => {
                errors.push(RuleError {
                    file: file.clone(),
                    line: e.span().map(|s| line_of(&text, s.start)),
                    rule: None,
                    message: e.message().trim().to_string(),
                });
                continue;
            }
        };
        for spanned in parsed.rule {
            let line = line_of(&text, spanned.span().start);
            let spec = spanned.into_inner();
            let at = |message: String| RuleError {
                file: file.clone(),
                line: Some(line),
                rule: Some(spec.id.clone()),
                message,
            };
            if !valid_id(&spec.id) {
                errors.push(at(
                    "invalid id: use lowercase dotted names like `pii.email` (a-z, 0-9, _, -)"
                        .into(),
                ));
            }
            if let Some(prev) = rules.iter().find(|r| r.spec.id == spec.id) {
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
                (Some(_), Some(_)) => errors.push(at("a rule has one matcher: `keywords` or `regex`, not both".into())),
                (None, None) => errors.push(at("no matcher: add `keywords = { terms = [...] }` or `regex = { pattern = '...' }`".into())),
                (Some(k), None) => {
                    terms.extend(k.terms.iter().cloned());
                    if let Some(tf) = &k.terms_file {
                        let path = dir.join(tf);
                        match std::fs::read_to_string(&path) {
                            Ok(t) => {
                                hasher.update(tf.as_bytes());
                                hasher.update([0]);
                                hasher.update(t.as_bytes());
                                hasher.update([0]);
                                all_files.push(path);
                                terms.extend(
                                    t.lines()
                                        .map(|l| l.split('#').next().unwrap_or("").trim())
                                        .filter(|l| !l.is_empty())
                                        .map(str::to_string),
                                );
                            }
                            Err(e) => errors.push(at(format!("terms_file {tf:?}: {e}"))),
                        }
                    }
                    if let Some(empty) = terms.iter().position(|t| t.trim().is_empty()) {
                        errors.push(at(format!("keyword term #{} is empty", empty + 1)));
                    }
                    if terms.is_empty() && errors.iter().all(|e| e.rule.as_deref() != Some(&spec.id)) {
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
            if let Some(r) = &spec.replacement {
                if r.contains(['\n', '\r']) {
                    errors.push(at("replacement must be one line".into()));
                }
            }
            rules.push(LoadedRule {
                spec,
                file: file.clone(),
                line,
                terms,
            });
        }
    }
    if rules.is_empty() && errors.is_empty() {
        errors.push(RuleError {
            file: dir.to_path_buf(),
            line: None,
            rule: None,
            message: "no rules: the directory has no *.toml file with a [[rule]] (refusing to run with no rules)".into(),
        });
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let digest = hasher.finalize();
    let version = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    Ok(LoadedSet {
        rules,
        version,
        files: all_files,
    })
}

/// The default replacement: `[KIND]` from the last segment of the id (`pii.email` → `[EMAIL]`).
pub fn default_replacement(id: &str) -> String {
    let kind = id.rsplit('.').next().unwrap_or(id);
    format!("[{}]", kind.to_ascii_uppercase().replace('-', "_"))
}
