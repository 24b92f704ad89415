//! The gateway keys file (`conf/keys.toml`): which keys exist, whose they are, what they may do. Secrets are
//! never stored, only their SHA-256; the provider key a gateway key stands for is read from the environment
//! variable the entry names. The file is loaded whole and validated before it replaces the live set
//! (`KeysFile` is its source for `crate::live`), exactly like the rules: a bad edit keeps the last good set.
//! Per request only look-ups run here ([`KeySet::find`], a key's scope); reading headers and counting quotas
//! belong to `auth` and `limits`.
//!
//! ```toml
//! [[tenant]]
//! id = "team-a"
//! limits = { requests_per_minute = 600 }
//! policy = "support"                   # a [[policy]] of the rules directory; a key's own wins
//!
//! [[key]]
//! id = "team-a-app"
//! sha256 = "…64 hex digits…"          # `promptgate keys new` prints it
//! tenant = "team-a"
//! upstream_key_env = "OPENAI_API_KEY"  # injected as `Authorization: Bearer …`
//! allowed_models = ["gpt-4o-mini", "gpt-4.1*"]
//! allowed_origins = ["https://app.example.com"]
//! expires_at = 2027-01-01T00:00:00Z
//! mode = "enforce"                     # or "monitor"
//! policy = "fraud-team"                # the rules policy of this key's requests (beats its tenant's)
//! limits = { requests_per_minute = 60, tokens_per_minute = 100000, max_concurrent = 4 }
//! ```

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::HeaderValue;
use prometheus::IntCounterVec;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::limits::LimitSpec;
use crate::live::{Live, Reload, Source};
use crate::metrics;

/// The prefix of every secret `promptgate keys new` makes: recognisable in configs and secret scanners.
pub const SECRET_PREFIX: &str = "pgk_";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSpec {
    #[serde(default, rename = "tenant")]
    tenants: Vec<TenantSpec>,
    #[serde(default, rename = "key")]
    keys: Vec<KeySpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantSpec {
    id: String,
    #[serde(default)]
    limits: LimitSpec,
    #[serde(default)]
    policy: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeySpec {
    id: String,
    sha256: String,
    tenant: String,
    #[serde(default)]
    upstream_key_env: Option<String>,
    #[serde(default)]
    allowed_models: Vec<String>,
    #[serde(default)]
    allowed_origins: Vec<String>,
    #[serde(default)]
    expires_at: Option<toml::value::Datetime>,
    #[serde(default)]
    disabled: bool,
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    policy: Option<String>,
    #[serde(default)]
    limits: LimitSpec,
}

/// A model pattern: an exact name, or a prefix ending in `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelPattern {
    Exact(String),
    Prefix(String),
}

impl ModelPattern {
    pub fn parse(s: &str) -> Self {
        match s.strip_suffix('*') {
            Some(prefix) => ModelPattern::Prefix(prefix.to_string()),
            None => ModelPattern::Exact(s.to_string()),
        }
    }

    pub fn matches(&self, model: &str) -> bool {
        match self {
            ModelPattern::Exact(m) => m == model,
            ModelPattern::Prefix(p) => model.starts_with(p.as_str()),
        }
    }
}

/// The provider credential injected upstream for a key. Never printed.
#[derive(Clone)]
pub struct UpstreamCredential(pub HeaderValue);

impl std::fmt::Debug for UpstreamCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UpstreamCredential(…)")
    }
}

/// One gateway key, validated.
#[derive(Debug)]
pub struct GatewayKey {
    pub id: String,
    pub tenant: String,
    pub upstream: Option<UpstreamCredential>,
    /// Empty: any model.
    pub allowed_models: Vec<ModelPattern>,
    /// Exact origins (`scheme://host[:port]`), or `*` for any origin except `null`.
    pub allowed_origins: Vec<String>,
    pub expires_at: Option<SystemTime>,
    pub disabled: bool,
    /// Rules only record for this key (`mode = "monitor"`).
    pub monitor: bool,
    /// The rules policy this key's requests get (`policy = "…"`); before its tenant's.
    pub policy: Option<String>,
    /// The policy its tenant names, if the key names none of its own.
    pub tenant_policy: Option<String>,
    pub limits: LimitSpec,
    /// Counter names for the limiter, made once.
    pub counter: String,
    pub tenant_counter: String,
}

impl GatewayKey {
    pub fn allows_model(&self, model: &str) -> bool {
        self.allowed_models.is_empty() || self.allowed_models.iter().any(|p| p.matches(model))
    }

    pub fn allows_origin(&self, origin: &str) -> bool {
        origin_allowed(&self.allowed_origins, origin)
    }

    pub fn usable_at(&self, now: SystemTime) -> bool {
        !self.disabled && self.expires_at.is_none_or(|t| now < t)
    }
}

/// Whether `origin` is in `list` (`*` admits any origin but `null`).
pub fn origin_allowed(list: &[String], origin: &str) -> bool {
    origin != "null"
        && list
            .iter()
            .any(|o| o == "*" || o.eq_ignore_ascii_case(origin))
}

/// A validated keys file.
#[derive(Debug, Default)]
pub struct KeySet {
    version: String,
    by_hash: HashMap<[u8; 32], Arc<GatewayKey>>,
    tenants: HashMap<String, LimitSpec>,
    /// Each tenant's policy, where it names one.
    tenant_policies: HashMap<String, String>,
    /// Every origin some key allows (preflight requests carry no key).
    origins: Vec<String>,
}

impl KeySet {
    /// The key whose secret this is, if any.
    pub fn find(&self, secret: &[u8]) -> Option<&Arc<GatewayKey>> {
        let digest: [u8; 32] = Sha256::digest(secret).into();
        self.by_hash.get(&digest)
    }

    pub fn tenant_limits(&self, tenant: &str) -> Option<&LimitSpec> {
        self.tenants.get(tenant)
    }

    /// Every policy a key or tenant names, with who names it (`key "id"`, `tenant "id"`), sorted.
    pub fn policies(&self) -> Vec<(String, &str)> {
        let mut out: Vec<(String, &str)> = self
            .tenant_policies
            .iter()
            .map(|(t, p)| (format!("tenant {t:?}"), p.as_str()))
            .chain(
                self.by_hash
                    .values()
                    .filter_map(|k| k.policy.as_deref().map(|p| (format!("key {:?}", k.id), p))),
            )
            .collect();
        out.sort();
        out
    }

    /// Whether some key allows `origin` (for preflight requests, which carry no credentials).
    pub fn any_allows_origin(&self, origin: &str) -> bool {
        origin_allowed(&self.origins, origin)
    }

    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    /// Parses and validates a keys file. Every error names the file, and the key or tenant it is about.
    pub fn parse(text: &str, source: &str) -> Result<Self, Vec<String>> {
        let file = parse_toml(text, source)?;
        let mut errors = Vec::new();
        let tenant_policies = tenant_policies(&file.tenants, source, &mut errors);
        let tenants = parse_tenants(file.tenants, source, &mut errors);
        let mut by_hash = HashMap::new();
        let mut ids = HashSet::new();
        let mut origins = Vec::new();
        for spec in file.keys {
            if !valid_key_id(&spec.id) {
                errors.push(key_error(
                    source,
                    &spec.id,
                    "id: must be non-empty printable ASCII without spaces",
                ));
            }
            if !ids.insert(spec.id.clone()) {
                errors.push(key_error(source, &spec.id, "id: defined twice"));
            }
            let Some((digest, mut key)) = key_entry(spec, source, &mut errors) else {
                continue;
            };
            key.tenant_policy = tenant_policies.get(&key.tenant).cloned();
            if by_hash.contains_key(&digest) {
                errors.push(key_error(
                    source,
                    &key.id,
                    "sha256: the same secret is listed for another key",
                ));
            }
            origins.extend(key.allowed_origins.iter().cloned());
            by_hash.insert(digest, Arc::new(key));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        origins.sort();
        origins.dedup();
        Ok(Self {
            version: hex::encode(&Sha256::digest(text.as_bytes())[..6]),
            by_hash,
            tenants,
            tenant_policies,
            origins,
        })
    }

    pub fn load(path: &Path) -> Result<Self, Vec<String>> {
        let source = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| vec![format!("{source}: cannot read: {e}")])?;
        Self::parse(&text, &source)
    }
}

/// The file as TOML in the expected shape; an error names its line.
fn parse_toml(text: &str, source: &str) -> Result<FileSpec, Vec<String>> {
    toml::from_str(text).map_err(|e| {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
        vec![match line {
            Some(l) => format!("{source}:{l}: {}", e.message().trim()),
            None => format!("{source}: {}", e.message().trim()),
        }]
    })
}

/// Each tenant's policy, by tenant id (checked for shape only: whether the rules have it is the request's
/// question, answered against the live rules, and `promptgate check --keys`'s warning).
fn tenant_policies(
    specs: &[TenantSpec],
    source: &str,
    errors: &mut Vec<String>,
) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for t in specs {
        if let Some(p) = &t.policy {
            match check_policy_name(p) {
                Ok(()) => {
                    out.insert(t.id.clone(), p.clone());
                }
                Err(m) => errors.push(format!("{source}: tenant {:?}: {m}", t.id)),
            }
        }
    }
    out
}

/// A policy name as the rules spell them.
fn check_policy_name(p: &str) -> Result<(), String> {
    let ok = !p.is_empty()
        && p.len() <= 64
        && p.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-' | b'.')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "policy: {p:?}: expected a policy name of the rules (a-z, 0-9, _, -, .)"
        ))
    }
}

/// Each tenant's limits, by tenant id.
fn parse_tenants(
    specs: Vec<TenantSpec>,
    source: &str,
    errors: &mut Vec<String>,
) -> HashMap<String, LimitSpec> {
    let mut tenants = HashMap::new();
    for t in specs {
        if let Err(m) = t.limits.validate() {
            errors.push(format!("{source}: tenant {:?}: limits.{m}", t.id));
        }
        if tenants.insert(t.id.clone(), t.limits).is_some() {
            errors.push(format!("{source}: tenant {:?}: defined twice", t.id));
        }
    }
    tenants
}

/// One key entry checked on its own (what involves other keys, duplicate ids and secrets, is `parse`'s), with
/// the digest of its secret. Its errors go to `errors`. `None` only when the digest is unusable: a key with
/// other errors is still returned, so that a later entry listing the same secret is named too.
fn key_entry(
    spec: KeySpec,
    source: &str,
    errors: &mut Vec<String>,
) -> Option<([u8; 32], GatewayKey)> {
    let mut err = |m: String| errors.push(key_error(source, &spec.id, &m));
    if spec.tenant.is_empty() {
        err("tenant: must not be empty".into());
    }
    let digest = secret_digest(&spec.sha256).map_err(&mut err).ok();
    let monitor = monitor_mode(spec.mode.as_deref())
        .map_err(&mut err)
        .unwrap_or(false);
    let upstream = spec
        .upstream_key_env
        .as_deref()
        .and_then(|var| credential_from_env(var).map_err(&mut err).ok());
    let expires_at = spec
        .expires_at
        .as_ref()
        .and_then(|dt| expiry(dt).map_err(&mut err).ok());
    for o in &spec.allowed_origins {
        if let Err(m) = check_origin(o) {
            err(m);
        }
    }
    if let Err(m) = spec.limits.validate() {
        err(format!("limits.{m}"));
    }
    if let Some(Err(m)) = spec.policy.as_deref().map(check_policy_name) {
        err(m);
    }
    let digest = digest?;
    Some((
        digest,
        GatewayKey {
            counter: format!("k:{}", spec.id),
            tenant_counter: format!("t:{}", spec.tenant),
            id: spec.id,
            tenant: spec.tenant,
            upstream,
            allowed_models: spec
                .allowed_models
                .iter()
                .map(|m| ModelPattern::parse(m))
                .collect(),
            allowed_origins: spec.allowed_origins,
            expires_at,
            disabled: spec.disabled,
            monitor,
            policy: spec.policy,
            tenant_policy: None,
            limits: spec.limits,
        },
    ))
}

/// An error about one key: the file, the key id, what is wrong.
fn key_error(source: &str, id: &str, message: &str) -> String {
    format!("{source}: key {id:?}: {message}")
}

/// Key ids appear in logs, decision events and limiter counters: one printable token.
fn valid_key_id(id: &str) -> bool {
    !id.is_empty() && id.chars().all(|c| c.is_ascii_graphic())
}

/// The SHA-256 an entry lists for its secret.
fn secret_digest(sha256: &str) -> Result<[u8; 32], String> {
    hex::decode(sha256.trim())
        .ok()
        .and_then(|d| <[u8; 32]>::try_from(d).ok())
        .ok_or_else(|| "sha256: must be 64 hex digits (the SHA-256 of the secret)".to_string())
}

/// `mode`: whether the key's rule hits are only recorded (`monitor`) rather than enforced.
fn monitor_mode(mode: Option<&str>) -> Result<bool, String> {
    match mode {
        None | Some("enforce") => Ok(false),
        Some("monitor") => Ok(true),
        Some(other) => Err(format!(
            "mode: {other:?}: expected \"enforce\" or \"monitor\""
        )),
    }
}

/// The provider key in `$var` as the header sent upstream, marked sensitive so that it is never logged.
pub fn credential_from_env(var: &str) -> Result<UpstreamCredential, String> {
    let value = std::env::var(var)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .ok_or_else(|| format!("upstream_key_env: ${var} is not set"))?;
    let mut header = HeaderValue::from_str(&format!("Bearer {}", value.trim())).map_err(|_| {
        format!("upstream_key_env: ${var} holds characters not allowed in a header")
    })?;
    header.set_sensitive(true);
    Ok(UpstreamCredential(header))
}

/// `expires_at` as a point in time.
fn expiry(dt: &toml::value::Datetime) -> Result<SystemTime, String> {
    datetime_to_system(dt).ok_or_else(|| {
        "expires_at: must be a date or a date-time with an offset (2027-01-01T00:00:00Z)"
            .to_string()
    })
}

/// An `allowed_origins` entry: `*`, or an origin as browsers send it.
fn check_origin(o: &str) -> Result<(), String> {
    if o == "*" || valid_origin(o) {
        Ok(())
    } else {
        Err(format!(
            "allowed_origins: {o:?} is not an origin (scheme://host[:port], or \"*\")"
        ))
    }
}

fn valid_origin(o: &str) -> bool {
    match url::Url::parse(o) {
        Ok(u) => {
            matches!(u.scheme(), "http" | "https")
                && u.host().is_some()
                && u.path() == "/"
                && !o.ends_with('/')
                && u.query().is_none()
        }
        Err(_) => false,
    }
}

/// A TOML date (midnight UTC) or offset date-time as a point in time.
fn datetime_to_system(dt: &toml::value::Datetime) -> Option<SystemTime> {
    let date = dt.date?;
    let days = days_from_civil(i64::from(date.year), date.month.into(), date.day.into());
    let mut secs = days * 86_400;
    if let Some(t) = dt.time {
        secs += i64::from(t.hour) * 3600 + i64::from(t.minute) * 60 + i64::from(t.second);
        match dt.offset? {
            toml::value::Offset::Z => {}
            toml::value::Offset::Custom { minutes } => secs -= i64::from(minutes) * 60,
        }
    }
    let secs = u64::try_from(secs).ok()?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The live keys of one keys file.
pub type KeyStore = Live<KeysFile>;

/// A keys file as a live-reloaded source. Reading it validates it whole (the provider keys it names are
/// read from the environment then), so a reload compares versions after validating.
pub struct KeysFile {
    path: PathBuf,
}

impl KeysFile {
    /// The keys file at `path`.
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
        }
    }

    /// The file the keys are read from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Source for KeysFile {
    type Loaded = KeySet;
    type Set = KeySet;
    type Error = String;
    const NAME: &'static str = "keys";

    fn load(&self) -> Result<KeySet, Vec<String>> {
        KeySet::load(&self.path)
    }

    fn validate(&self, set: KeySet) -> Result<KeySet, Vec<String>> {
        Ok(set)
    }

    fn loaded_version(set: &KeySet) -> &str {
        set.version()
    }

    fn version(set: &KeySet) -> &str {
        set.version()
    }

    fn count(set: &KeySet) -> usize {
        set.len()
    }

    fn went_live(&self, set: &KeySet) {
        metrics::KEYS_COUNT.set(set.len() as i64);
    }

    fn reloads() -> &'static IntCounterVec {
        &metrics::KEYS_RELOADS
    }

    fn log(&self, outcome: &Reload, _took: Duration) {
        match outcome {
            Reload::Reloaded { version, count } => {
                tracing::info!(version, keys = count, "keys reloaded")
            }
            Reload::Unchanged { .. } => {}
            Reload::Failed { version, errors } => tracing::error!(
                kept_version = version,
                "keys reload refused, keeping the last good keys: {}",
                errors.join("; ")
            ),
        }
    }
}

/// A fresh secret: the prefix and 32 random bytes in hex.
pub fn new_secret() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes)?;
    Ok(format!("{SECRET_PREFIX}{}", hex::encode(bytes)))
}

/// The SHA-256 of a secret, as the keys file stores it.
pub fn secret_sha256(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "pgk_test";

    fn file(extra: &str) -> String {
        format!(
            "[[tenant]]\nid = \"t\"\nlimits = {{ requests_per_minute = 5 }}\n\n[[key]]\nid = \"a\"\nsha256 = \"{}\"\ntenant = \"t\"\n{extra}",
            secret_sha256(SECRET)
        )
    }

    #[test]
    fn finds_keys_by_secret_and_checks_scope() {
        let set = KeySet::parse(
            &file("allowed_models = [\"gpt-4o-mini\", \"o1*\"]\nallowed_origins = [\"https://app.example.com\"]\nexpires_at = 2999-01-01T00:00:00Z\n"),
            "k.toml",
        )
        .expect("valid");
        let k = set.find(SECRET.as_bytes()).expect("found");
        assert!(set.find(b"pgk_other").is_none());
        assert!(k.allows_model("gpt-4o-mini") && k.allows_model("o1-preview"));
        assert!(!k.allows_model("gpt-4o"));
        assert!(k.allows_origin("https://app.example.com"));
        assert!(!k.allows_origin("https://evil.example.com") && !k.allows_origin("null"));
        assert!(set.any_allows_origin("https://app.example.com"));
        assert!(k.usable_at(SystemTime::now()));
        assert_eq!(
            set.tenant_limits("t").and_then(|l| l.requests_per_minute),
            Some(5)
        );
    }

    #[test]
    fn expiry_and_disabled() {
        let set = KeySet::parse(&file("expires_at = 2020-01-01T00:00:00+01:00\n"), "k.toml")
            .expect("valid");
        let k = set.find(SECRET.as_bytes()).expect("found");
        let expiry = SystemTime::UNIX_EPOCH + Duration::from_secs(1_577_833_200);
        assert_eq!(k.expires_at, Some(expiry));
        assert!(!k.usable_at(SystemTime::now()));
        let set = KeySet::parse(&file("disabled = true\n"), "k.toml").expect("valid");
        assert!(!set
            .find(SECRET.as_bytes())
            .expect("found")
            .usable_at(SystemTime::now()));
    }

    #[test]
    fn bad_entries_are_named() {
        let cases = [
            ("mode = \"audit\"\n", "key \"a\": mode: \"audit\""),
            (
                "upstream_key_env = \"PROMPTGATE_TEST_UNSET_VAR\"\n",
                "$PROMPTGATE_TEST_UNSET_VAR is not set",
            ),
            (
                "allowed_origins = [\"app.example.com\"]\n",
                "is not an origin",
            ),
            (
                "limits = { max_concurrent = 0 }\n",
                "limits.max_concurrent: must be at least 1",
            ),
            ("colour = 1\n", "k.toml:9: unknown field `colour`"),
            (
                "expires_at = 2027-01-01T00:00:00\n",
                "key \"a\": expires_at: must be a date or a date-time with an offset",
            ),
        ];
        for (extra, want) in cases {
            let errs = KeySet::parse(&file(extra), "k.toml").expect_err(extra);
            assert!(errs.iter().any(|e| e.contains(want)), "{extra:?}: {errs:?}");
        }
        let twice = format!(
            "{}\n[[key]]\nid = \"a\"\nsha256 = \"{}\"\ntenant = \"t\"\n",
            file(""),
            secret_sha256("x")
        );
        let errs = KeySet::parse(&twice, "k.toml").expect_err("duplicate id");
        assert!(
            errs.iter().any(|e| e.contains("id: defined twice")),
            "{errs:?}"
        );
    }

    /// Entries are checked one by one, and against each other (ids, secrets, tenants).
    #[test]
    fn every_problem_of_every_entry_is_named() {
        let entry = |id: &str, sha: &str, tenant: &str, extra: &str| {
            format!("[[key]]\nid = {id:?}\nsha256 = {sha:?}\ntenant = {tenant:?}\n{extra}\n")
        };
        let text = format!(
            "[[tenant]]\nid = \"t\"\n[[tenant]]\nid = \"t\"\nlimits = {{ max_concurrent = 0 }}\n{}{}{}",
            entry("a b", &secret_sha256(SECRET), "t", "mode = \"x\""),
            entry("c", &secret_sha256(SECRET), "t", ""),
            entry("d", "abc", "", ""),
        );
        let errs = KeySet::parse(&text, "k.toml").expect_err("refused");
        assert_eq!(
            errs,
            [
                "k.toml: tenant \"t\": limits.max_concurrent: must be at least 1 (omit it for no limit)",
                "k.toml: tenant \"t\": defined twice",
                "k.toml: key \"a b\": id: must be non-empty printable ASCII without spaces",
                "k.toml: key \"a b\": mode: \"x\": expected \"enforce\" or \"monitor\"",
                "k.toml: key \"c\": sha256: the same secret is listed for another key",
                "k.toml: key \"d\": tenant: must not be empty",
                "k.toml: key \"d\": sha256: must be 64 hex digits (the SHA-256 of the secret)",
            ]
        );
    }

    #[test]
    fn secrets_are_fresh_and_prefixed() {
        let a = new_secret().expect("random");
        let b = new_secret().expect("random");
        assert!(a.starts_with(SECRET_PREFIX) && a.len() == SECRET_PREFIX.len() + 64);
        assert_ne!(a, b);
    }
}
