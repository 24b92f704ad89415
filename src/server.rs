//! Assembles and runs the Pingora server: the proxy service, the admin service, and the drain that ends the
//! process once in-flight requests are done after SIGTERM / SIGINT.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::apps::http_app::HttpServer;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;

use crate::admin::AdminApp;
use crate::config::{Config, ConfigError};
use crate::metrics;
use crate::proxy::{Gateway, Upstream, IN_FLIGHT};

/// Builds the server from a validated config and runs it until shutdown. Blocks.
pub fn run(config: Config) -> Result<(), ConfigError> {
    let server = build(&config)?;
    start(server, &config);
    Ok(())
}

/// Like [`run`], with the mock upstream served on `mock` by a background service (the demo).
pub fn run_with_mock(config: Config, mock: std::net::TcpListener) -> Result<(), ConfigError> {
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
        upstream = %config.upstream.url,
        "promptgate started"
    );
    server.run(RunArgs {
        shutdown_signal: Box::new(Signals),
    });
}

fn build(config: &Config) -> Result<Server, ConfigError> {
    metrics::init();
    let upstream = Upstream::new(&config.upstream)?;
    let conf = ServerConf {
        threads: config.threads,
        // Pingora sleeps for the whole grace period after a graceful signal; the drain service below ends the
        // process as soon as the last in-flight request finishes, so this is an upper bound, not a wait.
        grace_period_seconds: Some(config.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(1),
        ca_file: config
            .upstream
            .ca_file
            .as_ref()
            .map(|p| p.display().to_string()),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let gateway = Gateway::new(upstream);
    let mut proxy =
        pingora::proxy::http_proxy_service_with_name(&server.configuration, gateway, "promptgate");
    // Pingora sets TCP_NODELAY on accepted and on upstream connections.
    proxy.add_tcp(&config.listen.to_string());

    let mut admin = Service::new(
        "promptgate admin".to_string(),
        HttpServer::new_app(AdminApp::new()),
    );
    admin.threads = Some(1);
    admin.add_tcp(&config.admin.to_string());

    server.add_service(proxy);
    server.add_service(admin);
    server.add_service(background_service("drain", Drain));
    Ok(server)
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

/// Once shutdown starts (listeners are closed by then), waits for in-flight requests to reach zero and ends
/// the process, so a drained gateway does not sit out the rest of the grace period.
struct Drain;

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
        tracing::info!("drained in {:?}; exiting", since.elapsed());
        std::process::exit(0);
    }
}
