//! Which pool serves a request, decided once per request from what the gateway knows of it: the model its body
//! names (when the gateway read the body), then its path, then the default. Built once from the configuration;
//! a lookup is a hash probe and two short scans, no allocation.
//!
//! Order: an exact model name (in some pool's `models`, or a key of its `model_map`) → the longest `prefix*`
//! pattern that matches the model → the longest path prefix → the default pool. A request whose model no pool
//! serves and that no path or default catches is not routable (404 `model_not_found`, nothing sent).

use std::collections::HashMap;

use crate::auth::keys::ModelPattern;
use crate::config::PoolConfig;

/// Model and path → pool index.
#[derive(Debug, Default)]
pub struct Router {
    exact: HashMap<String, usize>,
    /// Longest first.
    prefixes: Vec<(String, usize)>,
    /// Longest first.
    paths: Vec<(String, usize)>,
    default: Option<usize>,
}

impl Router {
    /// The first pool to list a name or pattern keeps it (the configuration's order decides a tie).
    pub fn new(pools: &[PoolConfig]) -> Self {
        let mut r = Router::default();
        for (i, p) in pools.iter().enumerate() {
            for m in &p.models {
                match m {
                    ModelPattern::Exact(name) => {
                        r.exact.entry(name.clone()).or_insert(i);
                    }
                    ModelPattern::Prefix(pre) => {
                        if !r.prefixes.iter().any(|(x, _)| x == pre) {
                            r.prefixes.push((pre.clone(), i));
                        }
                    }
                }
            }
            for name in p.model_map.keys() {
                r.exact.entry(name.clone()).or_insert(i);
            }
            for path in &p.paths {
                if !r.paths.iter().any(|(x, _)| x == path) {
                    r.paths.push((path.clone(), i));
                }
            }
            if p.default && r.default.is_none() {
                r.default = Some(i);
            }
        }
        // Stable: among equal lengths the configuration's order stands.
        r.prefixes.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        r.paths.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        r
    }

    /// The pool for a request naming `model` (if the gateway knows it) on `path`.
    pub fn route(&self, model: Option<&str>, path: &str) -> Option<usize> {
        if let Some(m) = model {
            if let Some(&i) = self.exact.get(m) {
                return Some(i);
            }
            if let Some((_, i)) = self
                .prefixes
                .iter()
                .find(|(p, _)| m.starts_with(p.as_str()))
            {
                return Some(*i);
            }
        }
        self.paths
            .iter()
            .find(|(p, _)| under(path, p))
            .map(|(_, i)| *i)
            .or(self.default)
    }

    /// Whether any pool is chosen by model: then the gateway reads a JSON body to learn it.
    pub fn by_model(&self) -> bool {
        !self.exact.is_empty() || !self.prefixes.is_empty()
    }

    /// The exact model names the pools serve, sorted, with the pool of each (for `GET /v1/models`).
    pub fn models(&self) -> Vec<(&str, usize)> {
        let mut v: Vec<(&str, usize)> = self.exact.iter().map(|(m, i)| (m.as_str(), *i)).collect();
        v.sort_unstable();
        v
    }
}

/// Whether `path` is `prefix` or below it (`/v1/audio` covers `/v1/audio/speech`, not `/v1/audiobooks`).
fn under(path: &str, prefix: &str) -> bool {
    let p = prefix.trim_end_matches('/');
    path.strip_prefix(p)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/') || p.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Balance, PoolConfig};

    fn pool(models: &[&str], paths: &[&str], map: &[(&str, &str)], default: bool) -> PoolConfig {
        PoolConfig {
            name: "p".into(),
            endpoints: Vec::new(),
            models: models.iter().map(|m| ModelPattern::parse(m)).collect(),
            paths: paths.iter().map(|p| p.to_string()).collect(),
            default,
            key_header: crate::config::KeyHeader::Authorization,
            credential: None,
            model_map: map
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            fallback: None,
            balance: Balance::RoundRobin,
            health: None,
            eject: std::time::Duration::from_secs(1),
            dns_refresh: std::time::Duration::from_secs(1),
            dns_servers: Vec::new(),
        }
    }

    #[test]
    fn exact_names_then_longest_prefix_then_path_then_default() {
        let pools = [
            pool(&["gpt-4o", "gpt-*"], &[], &[], true),
            pool(
                &["gpt-4o-mini*", "llama-*"],
                &["/v1/audio"],
                &[("azure-4o", "dep-1")],
                false,
            ),
            pool(&["gpt-4o"], &["/v1/audio/speech"], &[], false),
        ];
        let r = Router::new(&pools);
        let cases = [
            (Some("gpt-4o"), "/v1/chat/completions", Some(0)),
            (Some("gpt-4o-mini-2024"), "/v1/chat/completions", Some(1)),
            (Some("gpt-3.5"), "/v1/chat/completions", Some(0)),
            (Some("llama-3"), "/v1/chat/completions", Some(1)),
            (Some("azure-4o"), "/v1/chat/completions", Some(1)),
            (Some("mistral"), "/v1/chat/completions", Some(0)),
            (None, "/v1/audio/speech", Some(2)),
            (None, "/v1/audio/transcriptions", Some(1)),
            (None, "/v1/audiobooks", Some(0)),
            (Some("whisper-1"), "/v1/audio/transcriptions", Some(1)),
        ];
        for (model, path, want) in cases {
            assert_eq!(r.route(model, path), want, "{model:?} {path}");
        }
        // Without a default, what no pool serves is not routable.
        let r = Router::new(&pools[1..]);
        assert_eq!(r.route(Some("mistral"), "/v1/chat/completions"), None);
        assert_eq!(r.route(None, "/v1/files"), None);
        assert!(r.by_model());
        assert_eq!(
            r.models(),
            vec![("azure-4o", 0), ("gpt-4o", 1)],
            "exact names and mapped names, not patterns"
        );
    }
}
