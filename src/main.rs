//! The `dmr-supervisor` binary: command-line parsing, logging set-up, signals and exit codes. All behaviour lives
//! in the library.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use dmr_supervisor::config::Config;

/// Serves local AI models behind the OpenAI, Anthropic, Ollama and Docker Model Runner APIs (default port
/// 12434), running each loaded model's engine (llama-server for GGUF, vLLM for safetensors, the diffusers runner
/// for image pipelines) as a supervised child process.
///
/// Without --config it runs on defaults: listen on 127.0.0.1:12434, keep models under
/// $XDG_DATA_HOME/dmr-supervisor/models, and find llama-server on PATH or in
/// $XDG_DATA_HOME/dmr-supervisor/engines/llama.cpp/current/bin (where engines/llama.cpp/install.sh puts it).
/// config.example.toml documents every key. Once listening, the bound address is printed on stdout as
/// `listening on ADDR`; logs go to stderr (RUST_LOG filters them, default `info`).
/// SIGTERM turns the node not-ready, serves on for `[server] drain_delay`, then drains in-flight requests, stops
/// every engine and exits; SIGINT skips the delay; a second signal exits at once.
/// SIGHUP (or POST /config/reload) re-reads the configuration file; an invalid one is logged and ignored.
#[derive(Debug, Parser)]
#[command(name = "dmr-supervisor", version, about, long_about)]
struct Cli {
    /// TOML configuration file (see config.example.toml).
    #[arg(long, short, value_name = "FILE", env = "DMR_SUPERVISOR_CONFIG")]
    config: Option<PathBuf>,

    /// Listen on this address instead of the configured one (e.g. 127.0.0.1:0 for any free port).
    #[arg(long, value_name = "IP:PORT")]
    listen: Option<SocketAddr>,

    /// Log line format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    /// Validate the configuration, print the problems (if any) and exit.
    #[arg(long)]
    check_config: bool,

    /// The daemon the client commands talk to.
    #[arg(
        long,
        global = true,
        env = "DMR_HOST",
        default_value = "http://127.0.0.1:12434"
    )]
    host: String,

    /// A PEM file of CA certificates the client commands trust for an https:// --host, besides the system's.
    #[arg(long, global = true, env = "DMR_CA_CERT", value_name = "FILE")]
    ca_cert: Option<PathBuf>,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Engines: install one (runs its recipe, printing its progress), or uninstall one.
    Engines {
        #[command(subcommand)]
        action: EnginesAction,
    },
    /// The client commands: one call each to the daemon at --host.
    #[command(flatten)]
    Client(dmr_supervisor::cli::Action),
}

#[derive(Debug, Subcommand)]
enum EnginesAction {
    /// Install an engine: llama.cpp (built from pinned source), vllm (a venv with pinned vLLM; needs an NVIDIA
    /// GPU) or diffusers (a venv with pinned torch and diffusers, and the runner).
    Install {
        /// llama.cpp, vllm or diffusers.
        name: String,
        /// Passed to the recipe (e.g. --force for vllm without a GPU driver).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Remove an engine that `engines install` put in the data directory, through the daemon at --host (which
    /// refuses while the engine runs a model).
    Uninstall {
        /// llama.cpp, vllm or diffusers.
        name: String,
    },
}

/// A client command: one call to the daemon at `host`.
fn client(host: &str, ca_cert: Option<&Path>, action: dmr_supervisor::cli::Action) -> ExitCode {
    let run = async {
        let cli = dmr_supervisor::cli::Cli::new(host, ca_cert)?;
        cli.run(action).await
    };
    match block_on(async { run.await.map_err(|failure| failure.0) }) {
        Ok(()) => ExitCode::SUCCESS,
        Err(code) => code,
    }
}

/// Runs one command's task to the end on a single-threaded runtime; a failure is printed as one `error:` line.
fn block_on<T, E: std::fmt::Display>(
    task: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("error: cannot start the runtime: {e}");
            ExitCode::FAILURE
        })?;
    runtime.block_on(task).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::FAILURE
    })
}

/// `engines install NAME`: runs the recipe here (no daemon needed); exit 0 once installed.
fn install_engine(name: &str, args: &[String]) -> ExitCode {
    use dmr_supervisor::engines::{install, EngineKind};
    let Some(engine) = EngineKind::from_name(name) else {
        eprintln!(
            "error: unknown engine {name:?}; engines are {}",
            EngineKind::ALL.map(EngineKind::name).join(", ")
        );
        return ExitCode::from(EXIT_CONFIG);
    };
    match block_on(install::run(engine, args, |line| eprintln!("{line}"))) {
        Ok(at) => {
            println!("{at}");
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Exit code for an invalid configuration (as sysexits' EX_USAGE is too coarse, we keep clap's 2).
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(command) = cli.command {
        return match command {
            Command::Engines {
                action: EnginesAction::Install { name, args },
            } => install_engine(&name, &args),
            Command::Engines {
                action: EnginesAction::Uninstall { name },
            } => client(
                &cli.host,
                cli.ca_cert.as_deref(),
                dmr_supervisor::cli::Action::UninstallBackend { name },
            ),
            Command::Client(action) => client(&cli.host, cli.ca_cert.as_deref(), action),
        };
    }
    init_logging(cli.log_format);
    raise_fd_limit();
    let source = dmr_supervisor::proxy::ConfigSource {
        path: cli.config.clone(),
        listen: cli.listen,
    };
    let mut config = match &cli.config {
        Some(path) => match Config::load(path) {
            Ok(c) => c,
            Err(e) => {
                for line in e.lines() {
                    eprintln!("config error: {line}");
                }
                return ExitCode::from(EXIT_CONFIG);
            }
        },
        None => Config::default(),
    };
    if let Some(listen) = cli.listen {
        config.server.listen = listen;
    }
    if cli.check_config {
        println!("configuration OK");
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(config, source))
}

async fn run(config: Config, source: dmr_supervisor::proxy::ConfigSource) -> ExitCode {
    let running = match dmr_supervisor::start(config, source).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match running.local_addr() {
        Ok(addr) => {
            tracing::info!(%addr, "listening");
            println!("listening on {addr}");
            dmr_supervisor::service::ready(&format!("listening on {addr}"));
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the bound address");
            dmr_supervisor::service::ready("listening");
        }
    }
    let shutdown = CancellationToken::new();
    let signals = tokio::spawn(watch_signals(running.stopper(shutdown.clone())));
    let hangups = tokio::spawn(watch_hangups(running.reloader()));
    running.run(shutdown).await;
    signals.abort();
    hangups.abort();
    ExitCode::SUCCESS
}

/// First SIGTERM: not-ready, then after `[server] drain_delay` a graceful shutdown; first SIGINT: graceful shutdown
/// now. Second signal: exit now (engines die with us through PDEATHSIG).
async fn watch_signals(stopper: dmr_supervisor::Stopper) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    for n in 0..2 {
        let terminate = tokio::select! {
            _ = term.recv() => true,
            _ = int.recv() => false,
        };
        if n == 0 {
            tracing::info!(
                signal = if terminate { "SIGTERM" } else { "SIGINT" },
                "signal received; shutting down"
            );
            if terminate {
                stopper.terminate();
            } else {
                stopper.interrupt();
            }
        } else {
            tracing::warn!("second signal; exiting now");
            std::process::exit(130);
        }
    }
}

/// Each proxied request holds two sockets (client and engine): lift the soft open-files limit to the hard one, as
/// Go's runtime does, so a burst of connections is not refused at the default 1024.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                Ok(()) => tracing::debug!(from = soft, to = hard, "raised the open-files limit"),
                Err(e) => tracing::warn!(error = %e, soft, "cannot raise the open-files limit"),
            }
        }
    }
}

/// SIGHUP: reload the configuration (as systemd's `ExecReload=kill -HUP $MAINPID` asks).
async fn watch_hangups(reload: impl Fn()) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::error!("cannot install the SIGHUP handler");
        return;
    };
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading the configuration");
        reload();
    }
}

/// stderr as RUST_LOG says (default `info`), and the log hub behind `GET /logs` (our info and up, engine output).
fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    use tracing::Level;
    use tracing_subscriber::filter::{EnvFilter, Targets};
    use tracing_subscriber::prelude::*;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let hub = dmr_supervisor::logs::HubLayer
        .with_filter(Targets::new().with_target("dmr_supervisor", Level::INFO));
    let stderr = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(hub);
    match format {
        LogFormat::Text => registry.with(stderr.with_filter(filter)).init(),
        LogFormat::Json => registry.with(stderr.json().with_filter(filter)).init(),
    }
}
