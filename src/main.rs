//! The `ferry` command line: `serve`, `check-config`; logging setup and exit codes
//! (2 for invalid configuration, 1 for a failure to start).

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use ferry::config::{Config, Overrides};
use std::path::PathBuf;
use std::process::ExitCode;

/// A pull-through cache for OCI registries that fails over across an ordered list of
/// upstream registries, so pulls keep working when a registry is down.
#[derive(Parser)]
#[command(name = "ferry", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the cache: serve the registry API on --listen, fetching misses from the upstreams.
    Serve(ServeArgs),
    /// Validate a configuration (file plus flags) and print the effective settings.
    CheckConfig(ServeArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// TOML configuration file; flags given here override its values.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:5000].
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Upstream registry base URL. Repeat for failover; the order is the priority (first =
    /// primary). Replaces the file's upstreams. [default: https://registry-1.docker.io]
    #[arg(long = "upstream", value_name = "URL")]
    upstreams: Vec<String>,
    /// Cache directory [default: $XDG_CACHE_HOME/ferry or ~/.cache/ferry].
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// How long a tag's digest is trusted before it is revalidated upstream, e.g. 60s, 5m
    /// [default: 60s].
    #[arg(long, value_name = "DURATION")]
    tag_ttl: Option<String>,
    /// Bound on cached blob bytes, e.g. 50GiB or 300MiB; least recently used blobs are
    /// evicted [default: unlimited].
    #[arg(long, value_name = "SIZE")]
    cache_size: Option<String>,
    /// Never contact an upstream: serve only what the cache holds (tags regardless of TTL).
    #[arg(long)]
    offline: bool,
    /// Admin API address (upstream status, drain/undrain, /healthz), or "off"
    /// [default: 127.0.0.1:5005].
    #[arg(long, value_name = "ADDR")]
    admin_listen: Option<String>,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (args, check_only) = match cli.command {
        Command::Serve(args) => (args, false),
        Command::CheckConfig(args) => (args, true),
    };
    let overrides = Overrides {
        listen: args.listen.clone(),
        cache_dir: args.cache_dir.clone(),
        upstreams: args.upstreams.clone(),
        tag_ttl: args.tag_ttl.clone(),
        offline: args.offline,
        admin_listen: args.admin_listen.clone(),
        cache_size: args.cache_size.clone(),
    };
    let config = match Config::load(args.config.as_deref(), &overrides) {
        Ok(config) => config,
        Err(errors) => {
            eprint!("ferry: {errors}");
            return ExitCode::from(2);
        }
    };
    if check_only {
        print!("{}", config.to_redacted_toml());
        return ExitCode::SUCCESS;
    }
    init_logging(args.log_format);
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferry: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn run(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let server = ferry::app::start_with_shutdown(config, shutdown_signal()).await?;
        server.wait().await;
        tracing::info!("ferry stopped");
        Ok(())
    })
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let terminate = async {
        match signal(SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
    tracing::info!("shutdown requested; finishing in-flight responses");
}
