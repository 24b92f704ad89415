//! Assembles and runs the Pingora server: the listeners (the proxy service — plaintext HTTP/1.1, with
//! prior-knowledge h2c when `server.h2c` is on, and the TLS listeners, HTTP/2 or HTTP/1.1 by ALPN — and the
//! admin service) and the background services — the audit writer and webhook, the rules, keys and certificate
//! reloads, and the drain that ends the process once in-flight requests are done after SIGTERM / SIGINT and
//! their events are on disk. Nothing here starts a thread or a task of its own before Pingora runs (it may
//! daemonise first).
//!
//! Signals: SIGHUP reloads the rules, the keys and the certificates (Pingora itself does not use it: its
//! graceful upgrade is SIGQUIT); SIGTERM and SIGINT drain; SIGQUIT is Pingora's graceful upgrade.
//!
//! Graceful upgrade ([`Launch::upgrade`], `run --upgrade`): the new process asks the running one for its
//! listening sockets on `server.upgrade_sock` while it bootstraps; the running one, on SIGQUIT, sends every
//! listener Pingora bound for it — the proxy's plaintext and TLS listeners and the admin listener, all added to
//! Pingora services here, none bound outside them — keeps accepting beside the new one for a few seconds, then
//! closes its copies and drains like on SIGTERM. Both processes accept on the same sockets, so no connection is
//! refused. The audit directory's lock stays with the old process until it has drained; the new one's writer
//! takes it then (`Audit::open`), its events queued meanwhile.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::apps::http_app::HttpServer;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;

use std::sync::Arc;

use pingora::apps::HttpServerOptions;
use pingora::connectors::ConnectorOptions;
use pingora::listeners::tls::TlsSettings;
use pingora::protocols::http::v2::server::default_h2_options;

use crate::admin::AdminApp;
use crate::audit::webhook::Webhook;
use crate::audit::Audit;
use crate::auth::{self, Auth, KeyStore, KeysFile};
use crate::config::LimitsBackend;
use crate::config::{Config, ConfigError};
use crate::limits::{Limiter, LocalLimiter, RedisLimiter};
use crate::live::{self, Live, Source};
use crate::metrics;
use crate::otel::Tracer;
use crate::proxy::{Edge, Gateway, Realtime, IN_FLIGHT};
use crate::rules::{RuleError, RuleStore, RulesDir};
use crate::tls::{CertSource, ServerCert, TlsError};
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
    #[error("upstream.dns: {0}")]
    Resolver(crate::upstream::dns::DnsError),
    #[error("{field}: {error}")]
    Tls { field: String, error: TlsError },
    #[error("{field}: cannot listen on {addr}: {error}")]
    Listen {
        field: String,
        addr: std::net::SocketAddr,
        error: std::io::Error,
    },
}

/// How the process starts (`promptgate run` flags): Pingora's own options.
#[derive(Debug, Default, Clone, Copy)]
pub struct Launch {
    /// Take the listening sockets over from the running gateway (graceful upgrade): it hands them over on
    /// SIGQUIT, through `server.upgrade_sock`.
    pub upgrade: bool,
    /// Run in the background, the process id written to `server.pid_file` (systemd `Type=forking`).
    pub daemon: bool,
    /// Build everything `run` would — config, rules, keys, certificates, upstreams — then exit 0 without
    /// listening: the check before a graceful upgrade, next to a running gateway.
    pub test: bool,
}

/// How long the two sides of a graceful upgrade wait for each other on the upgrade socket, in one-second
/// tries: the new process may still be compiling its rules when the old one gets SIGQUIT (Pingora's default
/// is 5).
const UPGRADE_TRIES: usize = 60;

/// Builds the server from a validated config and runs it until shutdown. Blocks.
pub fn run(config: Config, launch: Launch) -> Result<(), StartError> {
    let server = build(&config, launch)?;
    start(server, &config);
    Ok(())
}

/// Like [`run`], with the mock upstream served on `mock` by a background service (the demo).
pub fn run_with_mock(config: Config, mock: std::net::TcpListener) -> Result<(), StartError> {
    let mut server = build(&config, Launch::default())?;
    server.add_service(background_service(
        "mock upstream",
        MockService(std::sync::Mutex::new(Some(mock))),
    ));
    start(server, &config);
    Ok(())
}

fn start(server: Server, config: &Config) {
    let tls: Vec<String> = config.tls.iter().map(|t| t.listen.to_string()).collect();
    tracing::info!(
        listen = %config.listen,
        tls = %tls.join(","),
        h2c = config.h2c,
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

fn build(config: &Config, launch: Launch) -> Result<Server, StartError> {
    metrics::init();
    // Upgrading, the addresses are the running gateway's, and its sockets are handed over (an address new in
    // this config is bound by Pingora, which logs and retries it in the background if it is taken).
    if !launch.upgrade && !launch.test {
        check_addresses(config)?;
    }
    // Fail closed: never run with no rules, or with a set that does not pass `promptgate check`.
    let store = Arc::new(
        RuleStore::open(
            RulesDir::new(&config.rules.dir, config.rules.budget.clone())
                .with_policy(config.rules.policy.clone()),
        )
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
    let opt = Opt {
        upgrade: launch.upgrade,
        daemon: launch.daemon,
        test: launch.test,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, server_conf(config));

    let audit = match &config.audit {
        Some(a) => {
            let (audit, writer) =
                Audit::open(a, launch.upgrade || launch.test).map_err(|error| {
                    StartError::Audit {
                        dir: a.dir.clone(),
                        error,
                    }
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
    let upstreams = Arc::new(
        Upstreams::new(
            &config.upstreams,
            Some(ConnectorOptions::from_server_conf(&server.configuration)),
        )
        .map_err(StartError::Resolver)?,
    );
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
    let tracer = match &config.tracing {
        Some(t) => {
            let (tracer, exporter) = Tracer::new(t)?;
            server.add_service(background_service("trace exporter", exporter));
            Some(tracer)
        }
        None => None,
    };
    let gateway = Gateway::new(
        upstreams.clone(),
        store.clone(),
        config.inspect.clone(),
        auth.clone(),
        limiter,
        audit.clone(),
        config.threads,
    )
    .with_tracer(tracer.clone());
    let realtime = Realtime::new(
        gateway.clone(),
        config.realtime,
        Some(ConnectorOptions::from_server_conf(&server.configuration)),
    );
    let mut proxy = pingora::proxy::HttpProxy::new(gateway, server.configuration.clone());
    proxy.handle_init_modules();
    client_protocols(&mut proxy, config);
    // The edge reads each HTTP/1 request head (bounded in time and size) before Pingora's loop parses it.
    let mut service = Service::new(
        "promptgate".to_string(),
        Edge::new(proxy, config.edge, config.h2c, Some(realtime)),
    );
    // Pingora sets TCP_NODELAY on accepted and on upstream connections.
    service.add_tcp(&config.listen.to_string());
    let certs = add_tls_listeners(&mut service, config)?;
    server.add_service(service);

    // Usage from the audit files: rollups kept current in the background, questions on the admin listener.
    let usage = config
        .audit
        .as_ref()
        .map(|a| crate::usage::Usage::new(a.dir.clone()));
    if let Some(u) = &usage {
        server.add_service(background_service("usage rollups", u.service()));
    }
    let mut admin = Service::new(
        "promptgate admin".to_string(),
        HttpServer::new_app(
            AdminApp::new(store.clone(), auth.keys().cloned(), upstreams)
                .with_token(config.admin_token.as_ref().map(|t| t.0.as_str()))
                .with_usage(usage),
        ),
    );
    admin.threads = Some(1);
    admin.add_tcp(&config.admin.to_string());
    server.add_service(admin);
    server.add_service(background_service("drain", Drain { audit, tracer }));
    add_reloads(&mut server, config, &store, &auth);
    add_cert_reloads(&mut server, config, certs);
    // Last, once nothing can fail any more: upgrading, this takes the running gateway's sockets (waiting at
    // most UPGRADE_TRIES seconds for them; without them Pingora exits with status 1), and from then on that
    // gateway stops accepting within seconds. A config, rules, keys, certificate or resolver error ends this
    // process before (exit 2), the running gateway untouched. `--test` ends here (Pingora exits 0).
    if launch.test {
        tracing::info!("--test: the config, rules, keys and certificates are valid; exiting");
    }
    server.bootstrap();
    Ok(server)
}

/// HTTP/2 for the proxy: prior-knowledge h2c on the plaintext listener when `server.h2c` is on (on TLS
/// listeners ALPN decides); a request's header list bounded like an HTTP/1 head (`limits.max_header_bytes`);
/// an idle connection closed after as long as an idle HTTP/1 keep-alive one.
fn client_protocols(proxy: &mut pingora::proxy::HttpProxy<Gateway>, config: &Config) {
    let mut options = HttpServerOptions::default();
    options.h2c = config.h2c;
    options.h2_idle_timeout = Some(crate::proxy::KEEPALIVE_IDLE);
    proxy.server_options = Some(options);
    let mut h2 = default_h2_options();
    h2.max_header_list_size(u32::try_from(config.edge.max_header_bytes).unwrap_or(u32::MAX));
    proxy.h2_options = Some(h2);
}

/// The TLS listeners: each presents its live certificate (swapped by reloads, never read on the handshake
/// path) and offers h2 and http/1.1 by ALPN.
fn add_tls_listeners(
    service: &mut Service<Edge>,
    config: &Config,
) -> Result<Vec<Arc<Live<CertSource>>>, StartError> {
    let mut certs = Vec::with_capacity(config.tls.len());
    for (i, t) in config.tls.iter().enumerate() {
        let source = CertSource {
            listen: t.listen,
            files: t.files.clone(),
        };
        // Checked with the config already; the files may have changed since.
        let live = Arc::new(Live::open(source).map_err(|mut errors| StartError::Tls {
            field: format!("server.tls[{i}]"),
            error: errors.remove(0),
        })?);
        let mut settings = TlsSettings::intermediate("", "").map_err(|e| StartError::Tls {
            field: format!("server.tls[{i}]"),
            error: TlsError::Listener(e.to_string()),
        })?;
        settings.set_cert_resolver(Arc::new(ServerCert(live.clone())));
        settings.enable_h2();
        service.add_tls_with_settings(&t.listen.to_string(), None, settings);
        tracing::info!(listen = %t.listen, cert = %t.files.cert.display(), version = live.peek().version, "TLS listener");
        certs.push(live);
    }
    Ok(certs)
}

/// Pingora retries a busy address in the background and the rest of the server comes up without it: check
/// every address first, so a gateway that cannot listen fails at start with a clear line.
fn check_addresses(config: &Config) -> Result<(), StartError> {
    let tls = config
        .tls
        .iter()
        .enumerate()
        .map(|(i, t)| (format!("server.tls[{i}].listen"), t.listen));
    let plain = [
        ("server.listen".to_string(), config.listen),
        ("server.admin".to_string(), config.admin),
    ];
    for (field, addr) in plain.into_iter().chain(tls) {
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
        upgrade_sock: config.upgrade_sock.display().to_string(),
        upgrade_sock_connect_accept_max_retries: Some(UPGRADE_TRIES),
        pid_file: config.pid_file.display().to_string(),
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
        watched: vec![Watched {
            dir: config.rules.dir.clone(),
            file: None,
            recursive: true,
        }],
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
            watched: vec![Watched {
                dir,
                file: path.file_name().map(|f| f.to_os_string()),
                recursive: false,
            }],
            watch: config.auth.watch,
            debounce: config.rules.debounce,
        };
        server.add_service(background_service("keys reload", reload));
    }
}

/// The certificate reloads, one per TLS listener: on SIGHUP, and whenever anything changes in the directory
/// of its certificate or key file (not only the files themselves: a Kubernetes secret is swapped through a
/// `..data` symlink, and a reload of unchanged files stops at their hash).
fn add_cert_reloads(server: &mut Server, config: &Config, certs: Vec<Arc<Live<CertSource>>>) {
    for live in certs {
        let files = &live.source().files;
        let mut watched: Vec<Watched> = Vec::with_capacity(2);
        for path in [&files.cert, &files.key] {
            let dir = parent_dir(path);
            if !watched.iter().any(|w| w.dir == dir) {
                watched.push(Watched {
                    dir,
                    file: None,
                    recursive: false,
                });
            }
        }
        let reload = Reload {
            live,
            watched,
            watch: true,
            debounce: config.rules.debounce,
        };
        server.add_service(background_service("certificate reload", reload));
    }
}

/// The directory a file is in (`.` for a bare name).
fn parent_dir(path: &std::path::Path) -> std::path::PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    }
}

/// Reloads one live set (rules, keys, a certificate) when its files change (if watching) and on SIGHUP,
/// never on the request path.
struct Reload<S: Source> {
    live: Arc<Live<S>>,
    /// The directories watched.
    watched: Vec<Watched>,
    watch: bool,
    debounce: Duration,
}

/// One directory a reload watches.
struct Watched {
    dir: std::path::PathBuf,
    /// Only changes to this file in `dir` count (`None`: any file in `dir`).
    file: Option<std::ffi::OsString>,
    /// Whether changes in `dir`'s subdirectories count.
    recursive: bool,
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
        let _watchers: Vec<_> = if self.watch {
            self.watched
                .iter()
                .filter_map(|w| match watch(w, tx.clone()) {
                    Ok(w) => Some(w),
                    Err(e) => {
                        tracing::error!(dir = %w.dir.display(), "cannot watch for {} changes ({e}); reload with SIGHUP (or POST /reload for rules and keys)", S::NAME);
                        None
                    }
                })
                .collect()
        } else {
            Vec::new()
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
    watched: &Watched,
    tx: tokio::sync::mpsc::Sender<()>,
) -> notify::Result<notify::RecommendedWatcher> {
    use notify::{EventKind, RecursiveMode, Watcher};
    let mode = if watched.recursive {
        RecursiveMode::Recursive
    } else {
        RecursiveMode::NonRecursive
    };
    let file = watched.file.clone();
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
    w.watch(&watched.dir, mode)?;
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
    tracer: Option<Arc<Tracer>>,
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
        tracing::info!(
            in_flight = IN_FLIGHT.load(Ordering::Acquire),
            "listeners closed; finishing in-flight requests"
        );
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
        // The spans of the last requests go to the collector too (bounded like the audit: a collector that
        // does not answer must not hold the shutdown).
        if let Some(t) = &self.tracer {
            if !t.close(Duration::from_secs(10)).await {
                tracing::warn!("exiting with spans not exported (collector not answering)");
            }
        }
        tracing::info!("drained in {:?}; exiting", since.elapsed());
        std::process::exit(0);
    }
}
