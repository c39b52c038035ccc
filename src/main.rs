//! The `sidecache` binary: parse arguments, load config, start logging, run until SIGTERM/SIGINT.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use sidecache::config::Config;
use tracing_subscriber::EnvFilter;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit status for an invalid config: 64 (sysexits `EX_USAGE`), as linkerd2-proxy does.
const EXIT_CONFIG: u8 = 64;

/// A caching reverse proxy for one origin, configured per route in TOML.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Config file (TOML).
    #[arg(long, env = "SIDECACHE_CONFIG", default_value = "proxy.toml")]
    config: PathBuf,
    /// Validate the config, print the route table and exit (0 valid, 64 invalid).
    #[arg(long)]
    check: bool,
    /// Log line format; the filter comes from RUST_LOG (default "info").
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Ask a running proxy what it holds for URL and what the next request
    /// for it would get, and why (its admin port's /explain).
    Explain {
        /// The URL as clients ask for it: http://host/path?query.
        url: String,
        /// A request header the request would carry, `Name: Value` (repeat for more).
        #[arg(long = "header", short = 'H', value_name = "NAME: VALUE")]
        headers: Vec<String>,
        /// The method of the request (GET, HEAD, ...).
        #[arg(long, default_value = "GET")]
        method: String,
        /// The proxy's admin address.
        #[arg(long, default_value_t = sidecache::config::DEFAULT_ADMIN_LISTEN.to_string())]
        admin: String,
        /// Print the JSON answer as it came.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(Command::Explain {
        url,
        headers,
        method,
        admin,
        json,
    }) = args.command
    {
        let asked = sidecache::explain::Cli {
            url,
            headers,
            method,
            admin,
        };
        return match explain(asked, json) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("sidecache explain: {error:#}");
                ExitCode::FAILURE
            }
        };
    }
    let config = match Config::load(&args.config) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("sidecache: invalid config {}:", args.config.display());
            for line in error.errors() {
                eprintln!("  {line}");
            }
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if args.check {
        print!("{}", sidecache::describe(&config));
        println!("config OK: {}", args.config.display());
        return ExitCode::SUCCESS;
    }
    init_logging(args.log_format);
    match run(config, args.config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
    }
}

// One single-threaded runtime here; `server.workers` - 1 more, each on its
// own thread, serve clients beside it (see `sidecache::start`).
#[tokio::main(flavor = "current_thread")]
async fn run(config: Config, path: PathBuf) -> anyhow::Result<()> {
    // Handlers first: a SIGTERM or SIGHUP that arrives as soon as the proxy
    // says it is listening must drain or reload it, not kill it (the
    // signals' default action).
    let stop = shutdown_signal()?;
    let hangup = sidecache::reload::hangup();
    let running = sidecache::start(config).await?;
    let reloads = running.reloader(path).spawn(hangup);
    stop.await;
    reloads.abort();
    tracing::info!("shutdown signal received; draining");
    running.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn explain(asked: sidecache::explain::Cli, json: bool) -> anyhow::Result<()> {
    let answer = asked.ask().await?;
    if json {
        print!("{answer}");
    } else {
        print!(
            "{}",
            sidecache::explain::render(&serde_json::from_str(&answer)?)
        );
    }
    Ok(())
}

/// Installs the SIGTERM (Kubernetes) and SIGINT (Ctrl-C) handlers at once;
/// the future resolves on either signal.
fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    })
}
