//! The `runnel` command: run, check and describe flows.
//!
//! This binary wires the crates together: the engine (`runnel-engine`), the
//! node types (`runnel-nodes`) and the editor/HTTP server (`runnel-web`). It
//! is the only place that uses `anyhow`.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use runnel_engine::{Diagnostics, Engine, EngineSettings, EngineShared, Loader, Registry};

/// mimalloc: per-message allocations (JSON values, message properties) cost
/// a fraction of what they do with glibc's allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "runnel",
    version,
    about = "A flow-based dataflow engine in the style of Node-RED",
    propagate_version = true
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (ELK-ready).
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum GraphFormat {
    /// A Mermaid flowchart.
    Mermaid,
    /// A Graphviz digraph.
    Dot,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run flow files (or every *.yaml in directories) until SIGINT/SIGTERM.
    Run(RunArgs),
    /// Validate flow files; print every error; exit 1 if any is invalid.
    Check {
        /// Flow files or directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Print the JSON Schema of the flow format (for YAML language servers).
    Schema,
    /// Print a flow as a Mermaid or DOT graph.
    Graph {
        /// The flow file.
        path: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = GraphFormat::Mermaid)]
        format: GraphFormat,
    },
    /// List node types and their config fields.
    Nodes {
        /// Show one type's config schema in full.
        #[arg(value_name = "TYPE")]
        node_type: Option<String>,
    },
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Flow files or directories.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Print every message hop (received, sent, error, finished) as JSON lines on stdout.
    #[arg(long)]
    trace: bool,
    /// Capacity of each node's input queue, in messages.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..))]
    queue_capacity: u32,
    /// How long to wait for in-flight messages on shutdown, e.g. 10s.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    drain_timeout: std::time::Duration,
    /// Directory for state that survives restarts.
    #[arg(long, env = "RUNNEL_DATA_DIR", default_value = "data")]
    data_dir: PathBuf,
    /// Address of the editor, admin API and `http-in` routes.
    #[arg(long, env = "RUNNEL_LISTEN", default_value = "127.0.0.1:1880")]
    listen: std::net::SocketAddr,
    /// Admin token; required when --listen is not a loopback address. Every
    /// admin route then needs `Authorization: Bearer <token>`.
    #[arg(long, env = "RUNNEL_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Messages whose hops the trace store keeps for the editor (0 disables
    /// it). Hops are recorded while an editor is open, or always with
    /// --trace-always.
    #[arg(long, default_value_t = 2_000)]
    trace_capacity: usize,
    /// Record every message's hops even when no editor is open (so that
    /// `GET /api/traces/{msgid}` knows every recent message). Costs a fast
    /// flow about a tenth of its CPU.
    #[arg(long)]
    trace_always: bool,
    /// Threads that run the flows: 1 runs everything on one thread (least
    /// CPU per message: no wake-ups across threads), 0 one per core.
    #[arg(long, env = "RUNNEL_THREADS", default_value_t = 0)]
    threads: usize,
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    text.parse::<runnel_engine::Duration>()
        .map(runnel_engine::Duration::get)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "runnel failed");
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUNNEL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
}

fn registry() -> Arc<Registry> {
    runnel_nodes::registry().into_shared()
}

fn print_diagnostics(diagnostics: &Diagnostics) {
    let mut stderr = std::io::stderr().lock();
    for diagnostic in &diagnostics.0 {
        let _ = writeln!(stderr, "{diagnostic}");
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run(args) => run_flows(args),
        Command::Check { paths } => Ok(check(&paths)),
        Command::Schema => {
            let schema = runnel_engine::schema::flow_schema(&registry());
            println!("{}", serde_json::to_string_pretty(&schema)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Graph { path, format } => {
            let loader = Loader::new(registry(), EngineShared::new(EngineSettings::default()));
            match loader.load_file(&path) {
                Ok(flow) => {
                    let text = match format {
                        GraphFormat::Mermaid => runnel_engine::graph::to_mermaid(&flow),
                        GraphFormat::Dot => runnel_engine::graph::to_dot(&flow),
                    };
                    print!("{text}");
                    Ok(ExitCode::SUCCESS)
                }
                Err(diagnostics) => {
                    print_diagnostics(&diagnostics);
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Nodes { node_type } => nodes(node_type.as_deref()),
    }
}

fn check(paths: &[PathBuf]) -> ExitCode {
    let loader = Loader::new(registry(), EngineShared::new(EngineSettings::default()));
    let mut failed = false;
    for path in paths {
        match loader.load_path(path) {
            Ok(flows) => {
                for flow in flows {
                    for warning in &flow.warnings {
                        eprintln!("{warning}");
                    }
                    println!("{}: ok ({} nodes)", flow.path.display(), flow.nodes.len());
                }
            }
            Err(diagnostics) => {
                print_diagnostics(&diagnostics);
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn nodes(node_type: Option<&str>) -> anyhow::Result<ExitCode> {
    let registry = registry();
    let all = registry.node_types().chain(registry.config_types());
    let mut out = std::io::stdout().lock();
    match node_type {
        Some(name) => {
            let Some(info) = all.into_iter().find(|info| info.name == name) else {
                eprintln!("unknown node type \"{name}\" (run `runnel nodes` for the list)");
                return Ok(ExitCode::FAILURE);
            };
            writeln!(out, "{}: {}", info.name, info.summary)?;
            writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(&info.config_schema())?
            )?;
        }
        None => {
            for info in all {
                let kind = if info.is_config { " (config node)" } else { "" };
                writeln!(out, "{}{kind}: {}", info.name, info.summary)?;
                let schema = info.config_schema();
                let required: Vec<&str> = schema
                    .get("required")
                    .and_then(|r| r.as_array())
                    .map(|r| r.iter().filter_map(|v| v.as_str()).collect())
                    .unwrap_or_default();
                if let Some(properties) = schema.get("properties").and_then(|p| p.as_object()) {
                    for (field, spec) in properties {
                        let doc = spec
                            .get("description")
                            .and_then(|d| d.as_str())
                            .unwrap_or("");
                        let doc = doc.lines().next().unwrap_or("");
                        let req = if required.contains(&field.as_str()) {
                            " (required)"
                        } else {
                            ""
                        };
                        writeln!(out, "    {field}{req}: {doc}")?;
                    }
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn run_flows(args: RunArgs) -> anyhow::Result<ExitCode> {
    let runtime = match args.threads {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        0 => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
    }
    .context("cannot start the async runtime")?;
    runtime.block_on(run_flows_async(args))
}

async fn run_flows_async(args: RunArgs) -> anyhow::Result<ExitCode> {
    // Listen for signals before anything starts, so a SIGTERM during start-up
    // is a graceful stop too.
    let signals = shutdown_signal()?;
    let settings = EngineSettings {
        queue_capacity: usize::try_from(args.queue_capacity).unwrap_or(128),
        drain_timeout: args.drain_timeout,
        data_dir: args.data_dir.clone(),
        ..EngineSettings::default()
    };
    if !args.listen.ip().is_loopback() && args.admin_token.as_deref().is_none_or(str::is_empty) {
        anyhow::bail!(
            "--listen {} is not a loopback address: set an admin token with --admin-token or RUNNEL_ADMIN_TOKEN",
            args.listen
        );
    }
    let mut shared = EngineShared::new(settings);
    if let Some(shared) = Arc::get_mut(&mut shared) {
        shared.trace = Arc::new(runnel_engine::TraceStore::new(args.trace_capacity, 256));
    }
    let engine = Engine::new(registry(), shared.clone());
    let loader = engine.loader();
    let mut flows = Vec::new();
    let mut errors = Vec::new();
    for path in &args.paths {
        match loader.load_path(path) {
            Ok(loaded) => flows.extend(loaded),
            Err(diagnostics) => errors.extend(diagnostics.0),
        }
    }
    if !errors.is_empty() {
        print_diagnostics(&Diagnostics(errors));
        return Ok(ExitCode::FAILURE);
    }
    for flow in &flows {
        for warning in &flow.warnings {
            tracing::warn!(flow = %flow.id, "{warning}");
        }
    }
    shared
        .trace
        .set_enabled(args.trace || (args.trace_always && args.trace_capacity > 0));
    let tracer = args
        .trace
        .then(|| tokio::spawn(print_trace(shared.trace.subscribe())));

    // One HTTP server: the editor and admin API, with the flows' http-in
    // routes as the fallback. Bound first, so a taken port fails before any
    // flow runs; built after the deploy, so that the flows' connections
    // (MQTT CONNECT/SUBSCRIBE) start while the editor's templates compile:
    // start until subscribed does not wait for the web server.
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    for flow in flows {
        engine.deploy(flow).await;
    }
    let web = runnel_web::WebState::builder(engine.clone(), args.paths.clone())
        .admin_token(args.admin_token.clone().filter(|t| !t.is_empty()))
        .ready(false)
        .build();
    let app = runnel_web::router(web.clone()).fallback(runnel_nodes::http_server::fallback_handler);
    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(runnel_web::serve(listener, app, async move {
        let _ = http_stopped.await;
    }));

    web.set_ready(true);
    signals.await;
    tracing::info!("shutting down: stopping sources, draining messages");
    web.begin_shutdown();
    engine.shutdown().await;
    let _ = stop_http.send(());
    match tokio::time::timeout(std::time::Duration::from_secs(5), server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(error))) => tracing::warn!(%error, "web server stopped with an error"),
        Ok(Err(error)) => tracing::warn!(%error, "web server task failed"),
        Err(_) => tracing::warn!("web server did not stop in 5s"),
    }
    if let Some(tracer) = tracer {
        tracer.abort();
    }
    let _ = std::io::stdout().flush();
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

async fn print_trace(mut events: tokio::sync::broadcast::Receiver<Arc<runnel_engine::TraceEvent>>) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        match events.recv().await {
            Ok(event) => {
                let line = event.to_json_line();
                let mut stdout = std::io::stdout().lock();
                if stdout.write_all(format!("{line}\n").as_bytes()).is_err() {
                    return;
                }
            }
            Err(RecvError::Lagged(skipped)) => {
                tracing::warn!(skipped, "trace output fell behind; events skipped")
            }
            Err(RecvError::Closed) => return,
        }
    }
}

/// Resolves on the first SIGINT or SIGTERM. The handlers are installed
/// when this is called, not when it is awaited.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => tracing::info!(signal = "SIGTERM", "signal received"),
            _ = interrupt.recv() => tracing::info!(signal = "SIGINT", "signal received"),
        }
    })
}
