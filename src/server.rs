//! Assembles and runs the Pingora server: the listeners (the proxy service, the admin service) and the
//! background services — the audit writer and webhook, the rules and keys reloads, and the drain that ends the
//! process once in-flight requests are done after SIGTERM / SIGINT and their events are on disk. Nothing here
//! starts a thread or a task of its own before Pingora runs (it may daemonise first).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::apps::http_app::HttpServer;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;

use std::sync::Arc;

use pingora::connectors::ConnectorOptions;

use crate::admin::AdminApp;
use crate::audit::webhook::Webhook;
use crate::audit::Audit;
use crate::auth::{self, Auth, KeyStore, KeysFile};
use crate::config::LimitsBackend;
use crate::config::{Config, ConfigError};
use crate::limits::{Limiter, LocalLimiter, RedisLimiter};
use crate::live::{self, Live, Source};
use crate::metrics;
use crate::proxy::{Edge, Gateway, IN_FLIGHT};
use crate::rules::{RuleError, RuleStore, RulesDir};
use crate::upstream::{retry, Upstreams};

/// Why the gateway did not start. Each is reported on stderr and ends the process with exit code 2.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("invalid rule set, refusing to start:\n{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Rules(Vec<RuleError>),
    #[error("invalid keys file, refusing to start:\n{}", .0.join("\n"))]
    Keys(Vec<String>),
    #[error("audit.dir: cannot open {dir}: {error}")]
    Audit {
        dir: std::path::PathBuf,
        error: std::io::Error,
    },
    #[error("limits.redis: {0}")]
    Limits(String),
    #[error("{field}: cannot listen on {addr}: {error}")]
    Listen {
        field: &'static str,
        addr: std::net::SocketAddr,
        error: std::io::Error,
    },
}

/// Builds the server from a validated config and runs it until shutdown. Blocks.
pub fn run(config: Config) -> Result<(), StartError> {
    let server = build(&config)?;
    start(server, &config);
    Ok(())
}

/// Like [`run`], with the mock upstream served on `mock` by a background service (the demo).
pub fn run_with_mock(config: Config, mock: std::net::TcpListener) -> Result<(), StartError> {
    let mut server = build(&config)?;
    server.add_service(background_service(
        "mock upstream",
        MockService(std::sync::Mutex::new(Some(mock))),
    ));
    start(server, &config);
    Ok(())
}

fn start(server: Server, config: &Config) {
    tracing::info!(
        listen = %config.listen,
        admin = %config.admin,
        upstreams = %config
            .upstreams
            .iter()
            .map(|p| format!("{}={}", p.name, p.endpoints.iter().map(|e| e.target.url.as_str()).collect::<Vec<_>>().join("|")))
            .collect::<Vec<_>>()
            .join(" "),
        "promptgate started"
    );
    server.run(RunArgs {
        shutdown_signal: Box::new(Signals),
    });
}

fn build(config: &Config) -> Result<Server, StartError> {
    metrics::init();
    check_addresses(config)?;
    // Fail closed: never run with no rules, or with a set that does not pass `promptgate check`.
    let store = Arc::new(
        RuleStore::open(RulesDir::new(
            &config.rules.dir,
            config.rules.budget.clone(),
        ))
        .map_err(StartError::Rules)?,
    );
    let snapshot = store.snapshot();
    tracing::info!(
        dir = %config.rules.dir.display(),
        version = snapshot.version(),
        rules = snapshot.rules().len(),
        "rules loaded"
    );
    let auth = Arc::new(auth(config)?);
    let mut server = Server::new_with_opt_and_conf(None, server_conf(config));
    server.bootstrap();

    let audit = match &config.audit {
        Some(a) => {
            let (audit, writer) = Audit::open(a).map_err(|error| StartError::Audit {
                dir: a.dir.clone(),
                error,
            })?;
            server.add_service(background_service("audit writer", writer));
            if let Some(w) = &a.webhook {
                let webhook = Webhook::new(a.dir.clone(), w.clone())?;
                server.add_service(background_service("audit webhook", webhook));
            }
            Arc::new(audit)
        }
        None => Arc::new(Audit::disabled()),
    };
    let upstreams = Arc::new(Upstreams::new(
        &config.upstreams,
        Some(ConnectorOptions::from_server_conf(&server.configuration)),
    ));
    // Per pool: endpoint discovery (DNS), health checks, gauges.
    for pool in upstreams.services() {
        server.add_service(background_service("upstream pool", pool));
    }
    let limiter: Arc<dyn Limiter> = match &config.limits_backend {
        LimitsBackend::Local => {
            metrics::LIMITS_BACKEND_UP.set(1);
            Arc::new(LocalLimiter::new(config.limit_window))
        }
        LimitsBackend::Redis(r) => {
            let (limiter, service) =
                RedisLimiter::new(r, config.limit_window).map_err(StartError::Limits)?;
            // Connections, the availability probe, lease renewal and release, token settlement.
            server.add_service(background_service("redis limits", service));
            tracing::info!(url = %r.url, prefix = %r.prefix, on_unavailable = r.on_unavailable.as_str(), "limits counted in Redis");
            Arc::new(limiter)
        }
    };
    let gateway = Gateway::new(
        upstreams,
        store.clone(),
        config.inspect.clone(),
        auth.clone(),
        limiter,
        audit.clone(),
        config.threads,
    );
    let mut proxy = pingora::proxy::HttpProxy::new(gateway, server.configuration.clone());
    proxy.handle_init_modules();
    // The edge reads each request head (bounded in time and size) before Pingora's loop parses it.
    let mut service = Service::new("promptgate".to_string(), Edge::new(proxy, config.edge));
    // Pingora sets TCP_NODELAY on accepted and on upstream connections.
    service.add_tcp(&config.listen.to_string());
    server.add_service(service);

    let mut admin = Service::new(
        "promptgate admin".to_string(),
        HttpServer::new_app(AdminApp::new(store.clone(), auth.keys().cloned())),
    );
    admin.threads = Some(1);
    admin.add_tcp(&config.admin.to_string());
    server.add_service(admin);
    server.add_service(background_service("drain", Drain { audit }));
    add_reloads(&mut server, config, &store, &auth);
    Ok(server)
}

/// Pingora retries a busy address in the background and the rest of the server comes up without it: check
/// both addresses first, so a gateway that cannot listen fails at start with a clear line.
fn check_addresses(config: &Config) -> Result<(), StartError> {
    for (field, addr) in [
        ("server.listen", config.listen),
        ("server.admin", config.admin),
    ] {
        std::net::TcpListener::bind(addr).map_err(|error| StartError::Listen {
            field,
            addr,
            error,
        })?;
    }
    Ok(())
}

/// Who is calling: passthrough callers named by a keyed hash of their credential, or gateway keys from the
/// keys file (which must be valid for the gateway to start).
fn auth(config: &Config) -> Result<Auth, StartError> {
    let mode = match &config.auth.keys_file {
        Some(path) => {
            let keys = Arc::new(KeyStore::open(KeysFile::new(path)).map_err(StartError::Keys)?);
            tracing::info!(file = %path.display(), keys = keys.snapshot().len(), "gateway keys loaded");
            auth::Mode::GatewayKeys(keys)
        }
        None => auth::Mode::Passthrough,
    };
    Ok(Auth::new(
        mode,
        config.auth.caller_limits,
        config.auth.allowed_origins.clone(),
        // Only passthrough callers are named by a hash of their credential.
        if config.auth.keys_file.is_none() {
            auth::hash_key_from_env(&config.auth.hash_key_env)
        } else {
            [0; 32]
        },
    ))
}

/// Pingora's own settings.
fn server_conf(config: &Config) -> ServerConf {
    ServerConf {
        threads: config.threads,
        // Pingora sleeps for the whole grace period after a graceful signal; the drain service below ends the
        // process as soon as the last in-flight request finishes, so this is an upper bound, not a wait.
        grace_period_seconds: Some(config.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(1),
        // Pingora's proxy loop follows the one retry policy (`upstream::retry`): this caps its attempts.
        max_retries: retry::PROXY_ATTEMPTS,
        // One set of roots for every upstream (the configuration refuses different CA files).
        ca_file: config
            .upstreams
            .iter()
            .find_map(|p| p.endpoints[0].target.ca_file.as_ref())
            .map(|p| p.display().to_string()),
        ..ServerConf::default()
    }
}

/// The rules and keys reloads (file watch, SIGHUP), as background services.
fn add_reloads(server: &mut Server, config: &Config, store: &Arc<RuleStore>, auth: &Arc<Auth>) {
    let rules_reload = Reload {
        live: store.clone(),
        dir: config.rules.dir.clone(),
        file: None,
        watch: config.rules.watch,
        debounce: config.rules.debounce,
    };
    server.add_service(background_service("rules reload", rules_reload));
    if let (Some(keys), Some(path)) = (auth.keys().cloned(), &config.auth.keys_file) {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => std::path::PathBuf::from("."),
        };
        let reload = Reload {
            live: keys,
            dir,
            file: path.file_name().map(|f| f.to_os_string()),
            watch: config.auth.watch,
            debounce: config.rules.debounce,
        };
        server.add_service(background_service("keys reload", reload));
    }
}

/// Reloads one live set (rules, keys) when its files change (if watching) and on SIGHUP, never on the
/// request path.
struct Reload<S: Source> {
    live: Arc<Live<S>>,
    /// The directory watched.
    dir: std::path::PathBuf,
    /// Only changes to this file in `dir` count (`None`: any file under `dir`).
    file: Option<std::ffi::OsString>,
    watch: bool,
    debounce: Duration,
}

impl<S: Source> Reload<S> {
    async fn run_off_path(&self) {
        // The reload logs and counts its own outcome.
        live::reload_off_path(&self.live).await;
    }
}

#[async_trait]
impl<S: Source> BackgroundService for Reload<S> {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        // One pending notice is all a reload needs: the watcher's further notices while one waits are dropped.
        let (tx, mut changes) = tokio::sync::mpsc::channel::<()>(1);
        // The watcher lives as long as this service; its callback runs on notify's own thread.
        let _watcher = if self.watch {
            match watch(&self.dir, self.file.clone(), tx) {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::error!(dir = %self.dir.display(), "cannot watch for {} changes ({e}); reload with SIGHUP or POST /reload", S::NAME);
                    None
                }
            }
        } else {
            None
        };
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!("cannot listen for SIGHUP: {e}");
                None
            }
        };
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                Some(()) = changes.recv() => {
                    // Debounce: editors and `git checkout` write in several steps. A writer that never
                    // pauses for as long as the debounce holds reloads off no longer than MAX_DEBOUNCES of it.
                    let deadline = tokio::time::Instant::now() + self.debounce * MAX_DEBOUNCES;
                    loop {
                        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                        match tokio::time::timeout(self.debounce.min(left), changes.recv()).await {
                            Ok(Some(())) if !left.is_zero() => continue,
                            _ => break,
                        }
                    }
                    self.run_off_path().await;
                }
                Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    tracing::info!("SIGHUP: reloading {}", S::NAME);
                    self.run_off_path().await;
                }
            }
        }
    }
}

/// The longest a stream of changes delays a reload, in debounce periods (2.5 s with the default 250 ms).
const MAX_DEBOUNCES: u32 = 10;

fn watch(
    dir: &std::path::Path,
    file: Option<std::ffi::OsString>,
    tx: tokio::sync::mpsc::Sender<()>,
) -> notify::Result<notify::RecommendedWatcher> {
    use notify::{EventKind, RecursiveMode, Watcher};
    let mode = if file.is_some() {
        RecursiveMode::NonRecursive
    } else {
        RecursiveMode::Recursive
    };
    let mut w = notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
        Ok(ev) if matches!(ev.kind, EventKind::Access(_)) => {}
        // Editors replace files through temporaries: any event naming the file counts.
        Ok(ev)
            if file.as_ref().is_some_and(|f| {
                !ev.paths
                    .iter()
                    .any(|p| p.file_name() == Some(f.as_os_str()))
            }) => {}
        Ok(_) => {
            // Full: a notice is already waiting, which covers this change too.
            let _ = tx.try_send(());
        }
        Err(e) => tracing::warn!("rules watcher: {e}"),
    })?;
    w.watch(dir, mode)?;
    Ok(w)
}

/// Serves the mock upstream inside the server's runtime until shutdown.
struct MockService(std::sync::Mutex<Option<std::net::TcpListener>>);

#[async_trait]
impl BackgroundService for MockService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(listener) = self.0.lock().ok().and_then(|mut l| l.take()) else {
            return;
        };
        let served = listener
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpListener::from_std(listener))
            .and_then(|l| crate::mock::serve(l, crate::mock::MockConfig::default()));
        if let Err(e) = served {
            tracing::error!("mock upstream failed to start: {e}");
            return;
        }
        let _ = shutdown.changed().await;
    }
}

/// SIGTERM and SIGINT both shut down gracefully (Pingora's default makes SIGINT a fast stop, which would cut
/// streams); SIGQUIT keeps Pingora's graceful upgrade.
struct Signals;

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int), Ok(mut quit)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::quit()),
        ) else {
            tracing::error!("cannot install signal handlers; shutting down");
            return ShutdownSignal::FastShutdown;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: finishing in-flight requests"),
            _ = int.recv() => tracing::info!("SIGINT: finishing in-flight requests"),
            _ = quit.recv() => return ShutdownSignal::GracefulUpgrade,
        }
        ShutdownSignal::GracefulTerminate
    }
}

/// Once shutdown starts (listeners are closed by then), waits for in-flight requests to reach zero, stops the
/// audit writer once it has written and synced every event, and ends the process, so a drained gateway does
/// not sit out the rest of the grace period.
struct Drain {
    audit: Arc<Audit>,
}

#[async_trait]
impl BackgroundService for Drain {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                return;
            }
        }
        let since = Instant::now();
        // A connection accepted just before the listeners closed may not have reached `new_ctx` yet.
        tokio::time::sleep(Duration::from_millis(100)).await;
        while IN_FLIGHT.load(Ordering::Acquire) > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Every finished request's decision event reaches the file before the process ends (bounded: a
        // failing disk must not hold the shutdown forever; what is left is reported).
        if !self.audit.close(Duration::from_secs(10)).await {
            let unwritten = crate::audit::PENDING.load(Ordering::Acquire);
            tracing::error!(
                unwritten,
                "exiting with decision events not written (audit sink failing)"
            );
        }
        tracing::info!("drained in {:?}; exiting", since.elapsed());
        std::process::exit(0);
    }
}
