//! Subcommands: `run` (the gateway), `demo` (mock + gateway, no setup), `mock` (the mock upstream alone),
//! `check` / `scan` (rules), `keys new` (gateway keys), `audit verify` / `audit query` (the audit directory:
//! `audit/verify.rs`, `audit/query.rs`), `usage` (requests and tokens from the audit files).
//!
//! Exit codes: 0 after a clean shutdown, 2 for any configuration or usage error (printed as one line).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, ConfigError, LogFormat, Overrides};
use crate::{mock, server};

/// The default config file, used when it exists and `--config` is not given.
pub const DEFAULT_CONFIG: &str = "conf/promptgate.toml";

#[derive(Parser)]
#[command(
    name = "promptgate",
    version,
    about = "A governing gateway for OpenAI-format LLM traffic"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Run(RunArgs),
    /// Start the mock upstream and the gateway with the default config, and print commands to try.
    Demo(DemoArgs),
    /// Run the mock OpenAI upstream alone (for benchmarks and manual tests).
    Mock(MockArgs),
    /// Validate a rules directory: parse, compile, run every rule's and policy's examples. Exit 1 on any
    /// failure; a policy selecting no rule is a warning.
    Check(CheckArgs),
    /// Print what the rules find in a text or an OpenAI request body, and the redacted result.
    Scan(ScanArgs),
    /// Gateway keys (auth.mode = "gateway_keys").
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Requests and tokens per key, tenant, model and time, read from the audit directory.
    Usage(crate::usage::cli::UsageArgs),
    /// The audit directory: verify its hash chain, query its records.
    #[command(subcommand)]
    Audit(AuditCommand),
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Walk every segment and check the hash chain. Exit 0 with a summary, or 1 naming the first break as
    /// file:line and what it looks like (edited, deleted, reordered, inserted, truncated, segment missing).
    Verify(AuditDirArgs),
    /// Print the records that match every filter given, as JSON lines or CSV (streamed).
    Query(Box<AuditQueryArgs>),
}

#[derive(Args)]
struct AuditDirArgs {
    /// The audit directory. Default: `audit.dir` of the config.
    dir: Option<PathBuf>,
    /// Config file to take `audit.dir` from (default: conf/promptgate.toml when it exists).
    #[arg(long, short)]
    config: Option<PathBuf>,
}

#[derive(Args)]
struct AuditQueryArgs {
    #[command(flatten)]
    dir: AuditDirArgs,
    /// Records at or after this time (RFC 3339 or unix seconds).
    #[arg(long)]
    from: Option<String>,
    /// Records at or before this time (RFC 3339 or unix seconds).
    #[arg(long)]
    to: Option<String>,
    /// Gateway key id.
    #[arg(long)]
    key: Option<String>,
    #[arg(long)]
    tenant: Option<String>,
    /// allow, redact, block, monitor or error, in either direction.
    #[arg(long)]
    decision: Option<String>,
    /// A rule id that matched.
    #[arg(long)]
    rule: Option<String>,
    /// The client's session id.
    #[arg(long)]
    session: Option<String>,
    /// Record type (chat.message, chat.blocked, chat.escalated, audit.gap, audit.intent, audit.segment).
    #[arg(long = "type")]
    kind: Option<String>,
    /// Only intents that no decision event completes (requests in flight at a crash, or still in flight).
    #[arg(long)]
    incomplete: bool,
    /// jsonl (each record as written) or csv (the columns in the README).
    #[arg(long, default_value = "jsonl")]
    format: String,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Make a fresh key: prints its secret once and the entry to add to the keys file (which stores only the
    /// secret's SHA-256).
    New(KeysNewArgs),
}

#[derive(Args)]
struct KeysNewArgs {
    /// Key id (names the key in limits, decisions and metrics).
    #[arg(long)]
    id: String,
    /// Tenant the key belongs to.
    #[arg(long)]
    tenant: String,
    /// Environment variable holding the provider key the gateway sends upstream for this key.
    #[arg(long)]
    upstream_key_env: Option<String>,
}

#[derive(Args)]
struct CheckArgs {
    /// Rules directory.
    #[arg(default_value = "rules")]
    dir: PathBuf,
    /// A gateway keys file: warn of keys and tenants naming a policy the rules do not have.
    #[arg(long)]
    keys: Option<PathBuf>,
}

#[derive(Args)]
struct ScanArgs {
    /// Rules directory.
    #[arg(long, default_value = "rules")]
    rules: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Which rules apply: request, response or both.
    #[arg(long, default_value = "request")]
    direction: String,
    /// Input file; `-` or nothing reads standard input.
    input: Option<PathBuf>,
}

#[derive(Args)]
struct RunArgs {
    /// Config file (TOML). Default: conf/promptgate.toml when it exists, else built-in defaults.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Gateway listen address, e.g. 127.0.0.1:8080.
    #[arg(long)]
    listen: Option<String>,
    /// Admin listen address (/healthz, /metrics), e.g. 127.0.0.1:9901.
    #[arg(long)]
    admin: Option<String>,
    /// Upstream base URL, e.g. https://api.openai.com.
    #[arg(long)]
    upstream: Option<String>,
    /// Rules directory.
    #[arg(long)]
    rules: Option<PathBuf>,
    /// Graceful upgrade: take the listening sockets over from the running gateway, which hands them over on
    /// SIGQUIT (through server.upgrade_sock) and drains.
    #[arg(long, short)]
    upgrade: bool,
    /// Run in the background; the process id goes to server.pid_file (systemd Type=forking).
    #[arg(long, short)]
    daemon: bool,
    /// Check everything `run` would load (config, rules, keys, certificates, upstreams) and exit 0 without
    /// listening: safe next to a running gateway, the step before an upgrade.
    #[arg(long, short)]
    test: bool,
}

#[derive(Args)]
struct DemoArgs {
    /// Gateway listen address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    /// Admin listen address.
    #[arg(long, default_value = "127.0.0.1:9901")]
    admin: String,
}

#[derive(Args)]
struct MockArgs {
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: SocketAddr,
    /// Content deltas per streamed answer.
    #[arg(long, default_value_t = 8)]
    chunks: usize,
    /// Bytes of filler text per delta (default: pieces of a fixed sentence).
    #[arg(long)]
    chunk_bytes: Option<usize>,
    /// Pause between streamed events, in milliseconds.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Answer every completion with the request it received.
    #[arg(long)]
    echo: bool,
    /// Worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

/// Parses the command line, runs the subcommand and returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    // `run` and `demo` start logging once their config is read (it names the format).
    if !matches!(cli.command, Command::Run(_) | Command::Demo(_)) {
        init_tracing(LogFormat::Text);
    }
    match cli.command {
        Command::Run(args) => run(args),
        Command::Demo(args) => demo(args),
        Command::Mock(args) => run_mock(args),
        Command::Check(args) => crate::rules::cli::check(&args.dir, args.keys.as_deref()),
        Command::Scan(args) => crate::rules::cli::scan(
            &args.rules,
            args.input.as_deref(),
            args.json,
            &args.direction,
        ),
        Command::Keys(KeysCommand::New(args)) => keys_new(&args),
        Command::Usage(args) => crate::usage::cli::run(&args),
        Command::Audit(AuditCommand::Verify(args)) => audit_verify(args),
        Command::Audit(AuditCommand::Query(args)) => audit_query(*args),
    }
}

/// The audit directory: given, or the `audit.dir` the config names (read without the rest of the config's
/// checks, so it works on a host without the gateway's secrets). Shared by `audit` and `usage`.
pub(crate) fn audit_dir(dir: Option<PathBuf>, config: Option<PathBuf>) -> Result<PathBuf, i32> {
    match dir {
        Some(d) => Ok(d),
        None => Config::audit_dir(config_path(config).as_deref()).map_err(|e| fail(&e)),
    }
}

fn audit_verify(args: AuditDirArgs) -> i32 {
    let dir = match audit_dir(args.dir, args.config) {
        Ok(d) => d,
        Err(code) => return code,
    };
    let report = match crate::audit::verify::verify(&dir) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("promptgate: audit verify: {}: {e}", dir.display());
            return 2;
        }
    };
    report
        .print(&dir, &mut std::io::stdout().lock())
        .unwrap_or(2)
}

fn audit_query(args: AuditQueryArgs) -> i32 {
    use crate::audit::query::{self, Filter, Format};
    let format = match args.format.as_str() {
        "jsonl" => Format::Jsonl,
        "csv" => Format::Csv,
        other => {
            eprintln!("promptgate: audit query: --format {other:?}: expected jsonl or csv");
            return 2;
        }
    };
    let time = |t: &Option<String>| t.as_deref().map(query::parse_time).transpose();
    let (from, to) = match (time(&args.from), time(&args.to)) {
        (Ok(f), Ok(t)) => (f, t),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("promptgate: audit query: {e}");
            return 2;
        }
    };
    const DECISIONS: [&str; 5] = ["allow", "redact", "block", "monitor", "error"];
    if let Some(d) = args.decision.as_deref().filter(|d| !DECISIONS.contains(d)) {
        eprintln!("promptgate: audit query: --decision {d:?}: expected one of {DECISIONS:?}");
        return 2;
    }
    let filter = Filter {
        from,
        to,
        key: args.key,
        tenant: args.tenant,
        decision: args.decision,
        rule: args.rule,
        session: args.session,
        kind: args.kind,
        incomplete: args.incomplete,
    };
    let dir = match audit_dir(args.dir.dir, args.dir.config) {
        Ok(d) => d,
        Err(code) => return code,
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    match query::run(&dir, &filter, format, &mut out) {
        Ok(_) => 0,
        // A closed pipe (`| head`) is the reader's choice, not a failure.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => 0,
        Err(e) => {
            eprintln!("promptgate: audit query: {}: {e}", dir.display());
            1
        }
    }
}

fn keys_new(args: &KeysNewArgs) -> i32 {
    let printable = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_graphic() && c != '"');
    if !printable(&args.id) || !printable(&args.tenant) {
        eprintln!("promptgate: keys new: --id and --tenant must be printable ASCII without spaces or quotes");
        return 2;
    }
    let secret = match crate::auth::keys::new_secret() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("promptgate: keys new: no randomness available: {e}");
            return 1;
        }
    };
    let sha = crate::auth::keys::secret_sha256(&secret);
    println!("# The secret, shown once: give it to the key's owner; it is not stored anywhere.");
    println!("{secret}");
    println!();
    println!("# Add to the keys file (conf/keys.toml):");
    println!("[[key]]");
    println!("id = \"{}\"", args.id);
    println!("sha256 = \"{sha}\"");
    println!("tenant = \"{}\"", args.tenant);
    if let Some(env) = &args.upstream_key_env {
        println!("upstream_key_env = \"{env}\"");
    }
    0
}

/// Log lines to stderr: text, or one JSON object per line (`log.format = "json"`: the event's fields —
/// `request_id`, `trace_id` on the request path — are keys of its `fields` object).
fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,pingora_core=warn,pingora_proxy=warn")
    });
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => fmt
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => fmt.json().with_ansi(false).init(),
    }
}

/// The config file to read: the one given, else the default one if it exists.
pub(crate) fn config_path(explicit: Option<PathBuf>) -> Option<PathBuf> {
    explicit.or_else(|| {
        Path::new(DEFAULT_CONFIG)
            .is_file()
            .then(|| PathBuf::from(DEFAULT_CONFIG))
    })
}

fn fail(e: &ConfigError) -> i32 {
    eprintln!("promptgate: {e}");
    2
}

fn start_failed(e: &server::StartError) -> i32 {
    for line in e.to_string().lines() {
        eprintln!("promptgate: {line}");
    }
    2
}

fn run(args: RunArgs) -> i32 {
    let overrides = Overrides {
        listen: args.listen,
        admin: args.admin,
        upstream: args.upstream,
        rules: args.rules,
    };
    let config = match Config::load(config_path(args.config).as_deref(), &overrides) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    init_tracing(config.log_format);
    let launch = server::Launch {
        upgrade: args.upgrade,
        daemon: args.daemon,
        test: args.test,
    };
    match server::run(config, launch) {
        Ok(()) => 0,
        Err(e) => start_failed(&e),
    }
}

fn demo(args: DemoArgs) -> i32 {
    // The mock gets an ephemeral port, bound here so the gateway's upstream is known before it starts.
    let mock_listener = match std::net::TcpListener::bind("127.0.0.1:0") {
        Ok(l) => l,
        Err(e) => {
            eprintln!("promptgate: demo: cannot bind the mock upstream: {e}");
            return 1;
        }
    };
    let mock_addr = match mock_listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("promptgate: demo: {e}");
            return 1;
        }
    };
    let overrides = Overrides {
        listen: Some(args.listen),
        admin: Some(args.admin),
        upstream: Some(format!("http://{mock_addr}")),
        rules: None,
    };
    let config = match Config::load(config_path(None).as_deref(), &overrides) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    init_tracing(config.log_format);
    let gw = config.listen;
    println!("promptgate demo: gateway on http://{gw}, mock upstream on http://{mock_addr}, admin on http://{}", config.admin);
    println!();
    println!("# 1. a clean request: forwarded as it is");
    println!(
        r#"curl -s http://{gw}/v1/chat/completions -H 'content-type: application/json' -d '{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"Say hello"}}]}}'"#
    );
    println!("# 2. a request carrying an email address: redacted before it reaches the upstream (echo shows what arrived)");
    println!(
        r#"curl -s http://{gw}/v1/chat/completions -H 'content-type: application/json' -H 'x-mock-echo: 1' -d '{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"Email jane.doe@example.com about the launch"}}]}}'"#
    );
    println!("# 3. a request carrying an AWS access key id: blocked with 409");
    println!(
        r#"curl -si http://{gw}/v1/chat/completions -H 'content-type: application/json' -d '{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"my key is AKIAIOSFODNN7EXAMPLE"}}]}}'"#
    );
    println!();
    println!(
        "metrics: curl -s http://{}/metrics | grep promptgate_   (Ctrl-C stops the demo)",
        config.admin
    );
    match server::run_with_mock(config, mock_listener) {
        Ok(()) => 0,
        Err(e) => start_failed(&e),
    }
}

fn run_mock(args: MockArgs) -> i32 {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("promptgate: mock: {e}");
            return 1;
        }
    };
    let config = mock::MockConfig {
        chunks: args.chunks,
        chunk_bytes: args.chunk_bytes,
        delay: Duration::from_millis(args.delay_ms),
        echo: args.echo,
        status: None,
    };
    rt.block_on(async move {
        match mock::start(args.listen, config).await {
            Ok(m) => {
                println!("promptgate mock listening on http://{}", m.addr);
                tokio::signal::ctrl_c().await.ok();
                0
            }
            Err(e) => {
                eprintln!("promptgate: mock: cannot listen on {}: {e}", args.listen);
                2
            }
        }
    })
}
