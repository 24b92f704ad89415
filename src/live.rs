//! One live-reloaded set (the rules, the gateway keys): opened once at start, then replaced whole by reloads
//! that load → compare the version → validate → swap, atomically, with `arc-swap`. A request takes one
//! snapshot and keeps it to its end; a failed reload leaves the last good set live. Reloads are serialised.
//!
//! This module owns the reload sequence, its outcome ([`Reload`]) and its rendering for the admin API. What a
//! set is, where it comes from and how it is checked belong to its [`Source`] (`rules::store`, `auth::keys`).
//! Nothing here runs on the request path except [`Live::snapshot`] and [`Live::peek`], which never block:
//! reloads read files and compile, so they run on a blocking thread ([`reload_off_path`]).

use std::fmt::Display;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, Guard};
use prometheus::IntCounterVec;

/// Where one kind of live set comes from, how it is checked, and what happens when a new one goes live.
///
/// Loading is split in two so that a reload of an unchanged source stops at the version, before the costly
/// part (compiling a rule set); a source whose load already does everything validates with `Ok(loaded)`.
pub trait Source: Send + Sync + 'static {
    /// What [`Source::load`] reads: enough to know the version.
    type Loaded;
    /// The validated set requests use.
    type Set: Send + Sync + 'static;
    /// One problem with a source (each names its file, line and entry where it can).
    type Error: Display;

    /// `"rules"` or `"keys"`: names the set in logs and the count's field in the admin answer.
    const NAME: &'static str;

    /// Reads the source. Blocking.
    fn load(&self) -> Result<Self::Loaded, Vec<Self::Error>>;
    /// Turns what was read into a usable set, or says everything that is wrong with it. Blocking.
    fn validate(&self, loaded: Self::Loaded) -> Result<Self::Set, Vec<Self::Error>>;
    /// The version of what was read: equal to the live set's version means nothing changed.
    fn loaded_version(loaded: &Self::Loaded) -> &str;
    /// The version of a set.
    fn version(set: &Self::Set) -> &str;
    /// How many entries (rules, keys) a set holds.
    fn count(set: &Self::Set) -> usize;
    /// Called with each set just before it goes live, at open and on reload (gauges).
    fn went_live(&self, set: &Self::Set);
    /// The reload counter, labelled by [`Reload::label`].
    fn reloads() -> &'static IntCounterVec;
    /// Logs a reload's outcome. Each source words its own lines (tracing fields and targets are fixed at
    /// compile time, and operators grep for these lines).
    fn log(&self, outcome: &Reload, took: Duration);
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// A new version is live.
    Reloaded { version: String, count: usize },
    /// The source has the live version: nothing was swapped.
    Unchanged { version: String, count: usize },
    /// The new version was refused; `version` is the last good one, still live.
    Failed {
        version: String,
        errors: Vec<String>,
    },
}

impl Reload {
    /// The `result` label of the reload counters.
    pub fn label(&self) -> &'static str {
        match self {
            Reload::Reloaded { .. } => "ok",
            Reload::Unchanged { .. } => "unchanged",
            Reload::Failed { .. } => "error",
        }
    }

    /// Whether the reload was refused (the admin API then answers 422).
    pub fn is_failed(&self) -> bool {
        matches!(self, Reload::Failed { .. })
    }

    /// The version live after the reload.
    pub fn version(&self) -> &str {
        match self {
            Reload::Reloaded { version, .. }
            | Reload::Unchanged { version, .. }
            | Reload::Failed { version, .. } => version,
        }
    }

    /// The admin API's rendering: `{"result":"reloaded"|"unchanged"|"error","version":…}` with the count
    /// under `counted` (`"rules"`, `"keys"`) or the `errors`.
    pub fn to_json(&self, counted: &str) -> serde_json::Value {
        let mut out = serde_json::json!({"result": self.result(), "version": self.version()});
        match self {
            Reload::Reloaded { count, .. } | Reload::Unchanged { count, .. } => {
                out[counted] = (*count).into();
            }
            Reload::Failed { errors, .. } => out["errors"] = errors.clone().into(),
        }
        out
    }

    fn result(&self) -> &'static str {
        match self {
            Reload::Reloaded { .. } => "reloaded",
            Reload::Unchanged { .. } => "unchanged",
            Reload::Failed { .. } => "error",
        }
    }
}

/// The live set of one source.
pub struct Live<S: Source> {
    source: S,
    current: ArcSwap<S::Set>,
    /// Held for a whole reload, so two reloads (a file event and `POST /reload`) never interleave.
    reloading: Mutex<()>,
}

impl<S: Source> Live<S> {
    /// Loads and validates the source. An error here fails the start: the gateway never runs without a
    /// valid set.
    pub fn open(source: S) -> Result<Self, Vec<S::Error>> {
        let set = source.validate(source.load()?)?;
        source.went_live(&set);
        Ok(Self {
            source,
            current: ArcSwap::from_pointee(set),
            reloading: Mutex::new(()),
        })
    }

    /// The set a request evaluates against, from its start to its end. Lock-free.
    pub fn snapshot(&self) -> Arc<S::Set> {
        self.current.load_full()
    }

    /// A short look at the live set, cheaper than [`Live::snapshot`]: for a look that ends before the next
    /// `.await` (a guard held long slows the writers down).
    pub fn peek(&self) -> Guard<Arc<S::Set>> {
        self.current.load()
    }

    /// Where the set is loaded from.
    pub fn source(&self) -> &S {
        &self.source
    }

    /// Reloads from the source, counts and logs the outcome. Blocking (reads files, compiles): call it from
    /// a blocking thread, e.g. through [`reload_off_path`].
    pub fn reload(&self) -> Reload {
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let started = Instant::now();
        let live = self.current.load();
        let outcome = match self.source.load() {
            Ok(loaded) if S::loaded_version(&loaded) == S::version(&live) => Reload::Unchanged {
                version: S::version(&live).to_string(),
                count: S::count(&live),
            },
            Ok(loaded) => match self.source.validate(loaded) {
                Ok(set) => {
                    let version = S::version(&set).to_string();
                    let count = S::count(&set);
                    self.source.went_live(&set);
                    self.current.store(Arc::new(set));
                    Reload::Reloaded { version, count }
                }
                Err(errors) => failed::<S>(&live, &errors),
            },
            Err(errors) => failed::<S>(&live, &errors),
        };
        S::reloads().with_label_values(&[outcome.label()]).inc();
        self.source.log(&outcome, started.elapsed());
        outcome
    }
}

fn failed<S: Source>(live: &S::Set, errors: &[S::Error]) -> Reload {
    Reload::Failed {
        version: S::version(live).to_string(),
        errors: errors.iter().map(ToString::to_string).collect(),
    }
}

/// Reloads on a blocking thread, so the caller's runtime keeps serving. A reload that panicked is a failed
/// one: counted, logged, and the set live before it stays live.
pub async fn reload_off_path<S: Source>(live: &Arc<Live<S>>) -> Reload {
    let task = Arc::clone(live);
    match tokio::task::spawn_blocking(move || task.reload()).await {
        Ok(outcome) => outcome,
        Err(e) => {
            let error = format!("reload task failed: {e}");
            tracing::error!("{} {error}", S::NAME);
            S::reloads().with_label_values(&["error"]).inc();
            Reload::Failed {
                version: S::version(&live.peek()).to_string(),
                errors: vec![error],
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::LazyLock;

    use prometheus::Opts;

    use super::*;

    /// Not registered: only these tests count into it.
    static RELOADS: LazyLock<IntCounterVec> = LazyLock::new(|| {
        IntCounterVec::new(Opts::new("test_reload_total", "test"), &["result"])
            .expect("valid metric")
    });

    #[derive(Debug, PartialEq, Eq)]
    struct Set {
        version: String,
        count: usize,
    }

    /// A source without files: it holds version `n` (0: unreadable), refuses one version when validating,
    /// panics on another, and records what its hooks saw.
    struct Counter {
        n: AtomicUsize,
        refuse: AtomicUsize,
        panic_on: AtomicUsize,
        went_live: AtomicUsize,
        logged: Mutex<Vec<&'static str>>,
    }

    impl Counter {
        fn at(n: usize) -> Self {
            Self {
                n: AtomicUsize::new(n),
                refuse: AtomicUsize::new(usize::MAX),
                panic_on: AtomicUsize::new(usize::MAX),
                went_live: AtomicUsize::new(0),
                logged: Mutex::new(Vec::new()),
            }
        }
    }

    impl Source for Counter {
        type Loaded = (usize, String);
        type Set = Set;
        type Error = String;
        const NAME: &'static str = "things";

        fn load(&self) -> Result<(usize, String), Vec<String>> {
            let n = self.n.load(Ordering::SeqCst);
            assert_ne!(n, self.panic_on.load(Ordering::SeqCst), "load panicked");
            if n == 0 {
                return Err(vec!["things.toml: cannot read".into()]);
            }
            Ok((n, format!("v{n}")))
        }

        fn validate(&self, (n, version): (usize, String)) -> Result<Set, Vec<String>> {
            if n == self.refuse.load(Ordering::SeqCst) {
                return Err(vec![format!("things.toml:1: {version} is refused")]);
            }
            Ok(Set {
                version,
                count: n * 10,
            })
        }

        fn loaded_version((_, version): &(usize, String)) -> &str {
            version
        }

        fn version(set: &Set) -> &str {
            &set.version
        }

        fn count(set: &Set) -> usize {
            set.count
        }

        fn went_live(&self, _: &Set) {
            self.went_live.fetch_add(1, Ordering::SeqCst);
        }

        fn reloads() -> &'static IntCounterVec {
            &RELOADS
        }

        fn log(&self, outcome: &Reload, _: Duration) {
            if let Ok(mut l) = self.logged.lock() {
                l.push(outcome.label());
            }
        }
    }

    fn open(n: usize) -> Live<Counter> {
        Live::open(Counter::at(n)).expect("opens")
    }

    fn set_to(live: &Live<Counter>, n: usize) {
        live.source().n.store(n, Ordering::SeqCst);
    }

    #[test]
    fn an_unreadable_source_fails_the_open() {
        let errors = Live::open(Counter::at(0)).err().expect("refused");
        assert_eq!(errors, ["things.toml: cannot read"]);
    }

    #[test]
    fn a_new_version_is_swapped_in() {
        let live = open(1);
        set_to(&live, 2);
        assert_eq!(
            live.reload(),
            Reload::Reloaded {
                version: "v2".into(),
                count: 20
            }
        );
        assert_eq!(live.snapshot().version, "v2");
        assert_eq!(live.peek().count, 20);
        assert_eq!(live.source().went_live.load(Ordering::SeqCst), 2);
        assert_eq!(*live.source().logged.lock().expect("log"), ["ok"]);
    }

    #[test]
    fn the_same_version_is_not_swapped() {
        let live = open(1);
        let before = live.snapshot();
        assert_eq!(
            live.reload(),
            Reload::Unchanged {
                version: "v1".into(),
                count: 10
            }
        );
        assert!(Arc::ptr_eq(&before, &live.snapshot()), "no swap");
        assert_eq!(live.source().went_live.load(Ordering::SeqCst), 1);
        assert_eq!(*live.source().logged.lock().expect("log"), ["unchanged"]);
    }

    #[test]
    fn a_failed_reload_keeps_the_last_good_set_and_names_it() {
        let live = open(1);
        set_to(&live, 2);
        live.reload();
        // Unreadable, then read but refused by validation: both keep v2 live.
        set_to(&live, 0);
        assert_eq!(
            live.reload(),
            Reload::Failed {
                version: "v2".into(),
                errors: vec!["things.toml: cannot read".into()]
            }
        );
        live.source().refuse.store(3, Ordering::SeqCst);
        set_to(&live, 3);
        assert_eq!(
            live.reload(),
            Reload::Failed {
                version: "v2".into(),
                errors: vec!["things.toml:1: v3 is refused".into()]
            }
        );
        assert_eq!(live.snapshot().version, "v2");
        assert_eq!(live.source().went_live.load(Ordering::SeqCst), 2);
        assert_eq!(
            *live.source().logged.lock().expect("log"),
            ["ok", "error", "error"]
        );
    }

    #[test]
    fn a_snapshot_taken_before_a_swap_keeps_the_old_set() {
        let live = open(1);
        let old = live.snapshot();
        set_to(&live, 2);
        live.reload();
        assert_eq!(
            *old,
            Set {
                version: "v1".into(),
                count: 10
            }
        );
        assert_eq!(live.snapshot().version, "v2");
    }

    #[tokio::test]
    async fn a_reload_that_panics_is_a_failed_reload_and_the_next_one_works() {
        let live = Arc::new(open(1));
        live.source().panic_on.store(2, Ordering::SeqCst);
        set_to(&live, 2);
        let outcome = reload_off_path(&live).await;
        assert!(outcome.is_failed(), "{outcome:?}");
        assert_eq!(outcome.version(), "v1");
        assert_eq!(live.snapshot().version, "v1");
        // The lock the panicked reload held is taken again.
        set_to(&live, 3);
        assert_eq!(
            reload_off_path(&live).await,
            Reload::Reloaded {
                version: "v3".into(),
                count: 30
            }
        );
    }

    /// The admin answer keeps the shape it always had.
    #[test]
    fn outcomes_render_as_the_admin_api_answers() {
        let cases = [
            (
                Reload::Reloaded {
                    version: "abc".into(),
                    count: 3,
                },
                serde_json::json!({"result": "reloaded", "version": "abc", "rules": 3}),
            ),
            (
                Reload::Unchanged {
                    version: "abc".into(),
                    count: 3,
                },
                serde_json::json!({"result": "unchanged", "version": "abc", "rules": 3}),
            ),
            (
                Reload::Failed {
                    version: "abc".into(),
                    errors: vec!["r.toml:1: bad".into()],
                },
                serde_json::json!({"result": "error", "version": "abc", "errors": ["r.toml:1: bad"]}),
            ),
        ];
        for (outcome, want) in cases {
            assert_eq!(outcome.to_json("rules").to_string(), want.to_string());
        }
        let keys = Reload::Unchanged {
            version: "k".into(),
            count: 2,
        };
        assert_eq!(
            keys.to_json("keys").to_string(),
            serde_json::json!({"result": "unchanged", "version": "k", "keys": 2}).to_string()
        );
    }
}
