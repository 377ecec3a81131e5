//! The `ferry` command line: `serve`, `check-config`, `warm`, `pin ...`, `cache ...`; logging setup
//! and exit codes (2 for invalid configuration or arguments, 1 for a failure).

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
    /// Pull images into the cache ahead of need (every platform of an index, all blobs),
    /// through a running ferry (--server) or standalone on the cache directory.
    Warm(WarmArgs),
    /// Pin images on a running ferry through its admin API: each is kept on its disk and
    /// follows its tag (with a shared store, on every replica sharing it).
    Pin {
        #[command(subcommand)]
        command: PinCommand,
        #[command(flatten)]
        server: PinServer,
    },
    /// Inspect and maintain a cache directory (safe while a server runs on it).
    Cache {
        #[command(subcommand)]
        command: CacheCommand,
        #[command(flatten)]
        location: CacheLocation,
    },
}

#[derive(Args)]
struct WarmArgs {
    /// Images: [registry/]repository[:tag], e.g. alpine:3.20 or ghcr.io/org/app:v1.
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<String>,
    /// Mark the images' content as never evicted.
    #[arg(long)]
    pin: bool,
    /// Only these platforms of a multi-platform image (os/arch[/variant]); repeatable.
    #[arg(long = "platform", value_name = "OS/ARCH")]
    platforms: Vec<String>,
    /// A running ferry's registry address to pull through, e.g. http://127.0.0.1:5000.
    /// Without it, a ferry is started in-process on the cache directory.
    #[arg(long, value_name = "URL")]
    server: Option<String>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Args)]
struct PinServer {
    /// The ferry's admin API, e.g. http://127.0.0.1:5005.
    #[arg(
        long,
        value_name = "ADMIN_URL",
        global = true,
        default_value = "http://127.0.0.1:5005"
    )]
    server: String,
    /// A file holding the admin token (also FERRY_ADMIN_TOKEN), for add and rm.
    #[arg(long, value_name = "FILE", global = true)]
    token_file: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
enum PinCommand {
    /// Pin an image: HOST/REPOSITORY:TAG or HOST/REPOSITORY@sha256:...
    Add {
        image: String,
        /// Wait until the image is cached on the server (every blob on its disk).
        #[arg(long)]
        wait: bool,
        /// Longest --wait waits, e.g. 10m.
        #[arg(long, value_name = "DURATION", default_value = "10m")]
        timeout: humantime::Duration,
    },
    /// Every pin with its state, digest and when its tag was last confirmed.
    Ls,
    /// Unpin an image (its content may be evicted again).
    Rm { image: String },
}

#[derive(Args)]
struct CacheLocation {
    /// Cache directory [default: $XDG_CACHE_HOME/ferry or ~/.cache/ferry].
    #[arg(long, value_name = "DIR", global = true)]
    cache_dir: Option<PathBuf>,
    /// Print JSON instead of text (ls, du).
    #[arg(long, global = true)]
    json: bool,
    /// ls, du and verify the shared store s3://BUCKET/PREFIX instead of a cache directory
    /// (endpoint, region and keys from AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID,
    /// AWS_SECRET_ACCESS_KEY). verify removes objects that do not match their digest.
    #[arg(long, value_name = "s3://BUCKET/PREFIX", global = true)]
    shared_store: Option<String>,
}

#[derive(Subcommand)]
enum CacheCommand {
    /// Cached images: repository, tag, digest, size, last access, pinned.
    Ls,
    /// Bytes used: total, blobs, manifests, pinned, per registry.
    Du,
    /// Rehash every file; move mismatches to quarantine/; exit 1 if any was wrong.
    Verify,
    /// Delete least recently used unpinned blobs down to a size now.
    Gc {
        #[arg(long, value_name = "SIZE")]
        to: String,
    },
    /// Remove an image's tag and the content no other cached image needs.
    Rm { image: String },
    /// Let an image pinned by `ferry warm --pin` be evicted again (`ferry pin rm` removes a
    /// pin that follows its tag).
    Unpin { image: String },
}

#[derive(Args)]
struct ServeArgs {
    /// TOML configuration file; flags given here override its values.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:5000].
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Upstream base URL, as URL (for the default registry) or REGISTRY=URL (e.g.
    /// ghcr.io=https://ghcr.io). Repeat for failover; per registry, the order is the priority
    /// (first = primary). Replaces the file's upstreams. [default: https://registry-1.docker.io]
    #[arg(long = "upstream", value_name = "[REGISTRY=]URL")]
    upstreams: Vec<String>,
    /// A group of upstreams sharing one slot in the priority order, e.g. the AZ replicas of
    /// a fleet: each blob (by digest) or tag goes to the member that rendezvous hashing
    /// picks, the next in hash order when it fails. Groups come before the --upstream
    /// entries, in the order given (use the config file's `group` key for other orders).
    #[arg(long = "upstream-group", value_name = "NAME=URL,URL,...")]
    upstream_groups: Vec<String>,
    /// A shared store (second cache tier for AZ replicas): s3://BUCKET/PREFIX. Endpoint,
    /// region and keys come from AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID and
    /// AWS_SECRET_ACCESS_KEY (or the config file's shared_store_* keys).
    #[arg(long = "shared-store", value_name = "s3://BUCKET/PREFIX")]
    shared_store: Option<String>,
    /// Cache directory [default: $XDG_CACHE_HOME/ferry or ~/.cache/ferry].
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// `--tag-ttl`, `--cache-size`, `--offline`: declared with their settings in the config
    /// file's schema (`config/file.rs`).
    #[command(flatten)]
    settings: ferry::config::file::SettingFlags,
    /// Admin API address (upstream status, drain/undrain, /healthz), or "off"
    /// [default: 127.0.0.1:5005].
    #[arg(long, value_name = "ADDR")]
    admin_listen: Option<String>,
    /// Fetch registries that have no upstreams configured directly from https://<registry>
    /// when they match: an exact host[:port], *.<domain>, or * for any. Repeatable; replaces
    /// the file's direct_registries [default: none, such registries get NAME_UNKNOWN].
    #[arg(long = "direct-registry", value_name = "PATTERN")]
    direct_registries: Vec<String>,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

/// glibc keeps freed memory in per-thread arenas and raises its mmap threshold after a large
/// buffer is freed, so a burst of large buffered bodies (kept within `memory_budget`) would
/// leave RSS far above what is in use. A fixed threshold (large buffers are mapped, and
/// unmapped when freed) and two arenas make RSS follow the budget (measured in
/// `scripts/hostile-load --lists 64`: 218 MiB before, about 100 MiB after).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn return_freed_memory_promptly() {
    // SAFETY: mallopt only sets allocator parameters; it is called first thing in main,
    // before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn return_freed_memory_promptly() {}

fn main() -> ExitCode {
    return_freed_memory_promptly();
    let cli = Cli::parse();
    let (args, check_only) = match cli.command {
        Command::Serve(args) => (args, false),
        Command::CheckConfig(args) => (args, true),
        Command::Warm(args) => return warm(args),
        Command::Cache { command, location } => return cache_command(command, location),
        Command::Pin { command, server } => return pin_command(command, server),
    };
    let config = match load_config(&args) {
        Ok(config) => config,
        Err(code) => return code,
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

/// `ferry pin add|ls|rm`: the admin API's pins, over HTTP.
fn pin_command(command: PinCommand, target: PinServer) -> ExitCode {
    let token = match &target.token_file {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(token) => Some(token.trim().to_owned()),
            Err(e) => {
                eprintln!("ferry pin: --token-file {}: {e}", path.display());
                return ExitCode::from(2);
            }
        },
        None => std::env::var("FERRY_ADMIN_TOKEN")
            .ok()
            .filter(|t| !t.is_empty()),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("ferry pin: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        let client = ferry::pins::admin_client::PinClient::new(&target.server, token)?;
        match command {
            PinCommand::Add {
                image,
                wait,
                timeout,
            } => {
                let answer = client.add(&image).await?;
                let canonical = answer["image"].as_str().unwrap_or(&image).to_owned();
                let verb = if answer["added"] == true {
                    "pinned"
                } else {
                    "already pinned:"
                };
                if !target.json {
                    println!("{verb} {canonical}");
                }
                if wait {
                    let pin = client.wait_cached(&canonical, timeout.into()).await?;
                    if !target.json {
                        println!(
                            "cached {canonical} ({})",
                            pin["digest"].as_str().unwrap_or("?")
                        );
                    }
                }
                if target.json {
                    println!("{answer}");
                }
            }
            PinCommand::Ls => {
                let list = client.list().await?;
                if target.json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&list).unwrap_or_default()
                    );
                } else {
                    print_pins(&list);
                }
            }
            PinCommand::Rm { image } => {
                let answer = client.remove(&image).await?;
                if target.json {
                    println!("{answer}");
                } else {
                    println!("unpinned {}", answer["image"].as_str().unwrap_or(&image));
                }
            }
        }
        Ok::<_, ferry::pins::admin_client::PinClientError>(())
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferry pin: {e}");
            if e.is_client_mistake() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// `ferry pin ls` as a table (the image last, so long names keep the columns aligned), with
/// each pin's failure, failing refresh or move in progress beneath it.
fn print_pins(list: &serde_json::Value) {
    for error in list["pin_set_errors"].as_array().into_iter().flatten() {
        println!("pin set: {}", error.as_str().unwrap_or("?"));
    }
    println!(
        "{:<9} {:<19} {:<20} {:<12} IMAGE",
        "STATE", "DIGEST", "LAST CONFIRMED", "ORIGIN"
    );
    for pin in list["pins"].as_array().into_iter().flatten() {
        let digest = pin["digest"].as_str().unwrap_or("-");
        let mut state = pin["state"].as_str().unwrap_or("?").to_owned();
        if pin["next"].is_object() {
            state.push('+');
        }
        println!(
            "{:<9} {:<19} {:<20} {:<12} {}",
            state,
            digest.get(..19).unwrap_or(digest),
            pin["last_confirmed"].as_str().unwrap_or("-"),
            pin["origin"].as_str().unwrap_or("?"),
            pin["image"].as_str().unwrap_or("?"),
        );
        if let Some(reason) = pin["reason"].as_str() {
            println!("    failed: {reason}");
        }
        if let Some(error) = pin["refresh_error"].as_str() {
            println!("    refresh failing (serving what it holds): {error}");
        }
        if let Some(next) = pin["next"].as_object() {
            println!(
                "    moving to {} ({}{})",
                next["digest"].as_str().unwrap_or("?"),
                next["state"].as_str().unwrap_or("?"),
                next["reason"]
                    .as_str()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            );
        }
    }
}

/// `ferry cache ls|du|verify --shared-store`: the store's side.
fn store_command(command: CacheCommand, url: &str, json: bool) -> ExitCode {
    use ferry::shared::{SharedStore, SharedStoreConfig};
    let store = match SharedStoreConfig::from_env(url, std::time::Duration::from_secs(60))
        .and_then(SharedStore::new)
    {
        Ok(store) => store,
        Err(e) => {
            eprintln!("ferry cache: --shared-store {url:?}: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("ferry cache: cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result: anyhow::Result<ExitCode> = runtime.block_on(async {
        match command {
            CacheCommand::Du => {
                let usage = store.usage().await?;
                if json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&usage).unwrap_or_default()
                    );
                } else {
                    println!(
                        "total      {} in {} objects",
                        human(usage.bytes),
                        usage.objects
                    );
                    for (kind, (objects, bytes)) in &usage.by_kind {
                        println!("{kind:<10} {} in {objects} objects", human(*bytes));
                    }
                }
                Ok(ExitCode::SUCCESS)
            }
            CacheCommand::Ls => {
                let records = store.tag_records().await?;
                if json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&records).unwrap_or_default()
                    );
                } else {
                    println!(
                        "{:<14} {:<40} {:<16} {:<19} CONFIRMED BY",
                        "REGISTRY", "REPOSITORY", "TAG", "DIGEST"
                    );
                    for r in &records {
                        let field = |name: &str| r[name].as_str().unwrap_or("").to_owned();
                        let digest = field("digest");
                        println!(
                            "{:<14} {:<40} {:<16} {:<19} {}",
                            field("registry"),
                            field("repository"),
                            field("tag"),
                            &digest[..digest.len().min(19)],
                            field("upstream")
                        );
                    }
                }
                Ok(ExitCode::SUCCESS)
            }
            CacheCommand::Verify => {
                let report = store.verify_all().await?;
                println!(
                    "checked {} objects, {}",
                    report.checked,
                    human(report.bytes)
                );
                for (location, actual) in &report.removed {
                    println!("REMOVED {location}: hashes to {actual}");
                }
                Ok(if report.removed.is_empty() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                })
            }
            _ => Err(anyhow::anyhow!(
                "only ls, du and verify work on a shared store"
            )),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ferry cache: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The validated configuration from `--config` and flags, or exit code 2 with every problem.
fn load_config(args: &ServeArgs) -> Result<Config, ExitCode> {
    let overrides = Overrides {
        listen: args.listen.clone(),
        cache_dir: args.cache_dir.clone(),
        upstreams: args.upstreams.clone(),
        upstream_groups: args.upstream_groups.clone(),
        shared_store: args.shared_store.clone(),

        admin_listen: args.admin_listen.clone(),
        settings: args.settings.clone(),
        direct_registries: args.direct_registries.clone(),
    };
    ferry::app::load_config(args.config.as_deref(), &overrides).map_err(|errors| {
        eprint!("ferry: {errors}");
        ExitCode::from(2)
    })
}

fn warm(args: WarmArgs) -> ExitCode {
    let mut config = match load_config(&args.serve) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let mut images = Vec::new();
    for image in &args.images {
        match ferry::maintenance::ImageRef::parse(image, &config.registry) {
            Ok(parsed) => images.push(parsed),
            Err(e) => {
                eprintln!("ferry warm: {image:?}: {e}");
                return ExitCode::from(2);
            }
        }
    }
    init_logging(args.serve.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("ferry warm: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let options = ferry::warm::WarmOptions {
        platforms: args.platforms.clone(),
    };
    runtime.block_on(async {
        let (endpoint, server) = match &args.server {
            Some(url) => (url.clone(), None),
            None => {
                config.listen = ([127, 0, 0, 1], 0).into();
                config.admin_listen = None;
                match ferry::app::start(config.clone()).await {
                    Ok(server) => (format!("http://{}", server.addr), Some(server)),
                    Err(e) => {
                        eprintln!("ferry warm: {e} (if a server is running on this cache, use --server URL)");
                        return ExitCode::FAILURE;
                    }
                }
            }
        };
        let mut warmed = Vec::new();
        let mut failed = 0;
        for image in &images {
            match ferry::warm::warm_image(&endpoint, image, &options).await {
                Ok(done) => warmed.push(done),
                Err(e) => {
                    eprintln!("ferry warm: {image}: {e}");
                    failed += 1;
                }
            }
        }
        if args.pin && !warmed.is_empty() {
            if let Err(e) = ferry::warm::pin(&config.cache_dir, &warmed) {
                eprintln!("ferry warm: cannot record pins in {}: {e}", config.cache_dir.display());
                failed += 1;
            } else {
                eprintln!("pinned {} image(s)", warmed.len());
            }
        }
        if let Some(server) = server {
            server.shutdown().await;
        }
        if failed > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS }
    })
}

fn cache_command(command: CacheCommand, location: CacheLocation) -> ExitCode {
    use ferry::maintenance;
    if let Some(url) = &location.shared_store {
        return store_command(command, url, location.json);
    }
    let root = location
        .cache_dir
        .unwrap_or_else(ferry::config::default_cache_dir);
    if !root.join("blobs").is_dir() {
        eprintln!(
            "ferry cache: {} is not a ferry cache directory",
            root.display()
        );
        return ExitCode::from(2);
    }
    let result: std::io::Result<ExitCode> = (|| match command {
        CacheCommand::Ls => {
            let images = maintenance::list(&root)?;
            if location.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&images).unwrap_or_default()
                );
            } else {
                println!(
                    "{:<14} {:<40} {:<16} {:<19} {:>10} {:>7} {:<6} LAST ACCESS",
                    "REGISTRY", "REPOSITORY", "TAG", "DIGEST", "SIZE", "MISSING", "PINNED"
                );
                for i in images {
                    println!(
                        "{:<14} {:<40} {:<16} {:<19} {:>10} {:>7} {:<6} {}",
                        i.registry,
                        i.repository,
                        i.tag,
                        &i.digest[..i.digest.len().min(19)],
                        human(i.cached_bytes),
                        i.missing,
                        if i.pinned { "yes" } else { "no" },
                        humantime::format_rfc3339_seconds(
                            std::time::UNIX_EPOCH
                                + std::time::Duration::from_secs(i.last_access_unix)
                        )
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        CacheCommand::Du => {
            let usage = maintenance::disk_usage(&root)?;
            if location.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&usage).unwrap_or_default()
                );
            } else {
                println!("total      {}", human(usage.total));
                println!("blobs      {}", human(usage.blobs));
                println!("manifests  {}", human(usage.manifests));
                println!("pinned     {}", human(usage.pinned));
                for (registry, bytes) in &usage.per_registry {
                    println!("registry   {registry}: {}", human(*bytes));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        CacheCommand::Verify => {
            let report = maintenance::verify(&root)?;
            println!("checked {} files, {}", report.checked, human(report.bytes));
            for (path, why) in &report.quarantined {
                println!("QUARANTINED {}: {why}", path.display());
            }
            Ok(if report.quarantined.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        CacheCommand::Gc { to } => {
            let target = match ferry::config::parse_size(&to) {
                Ok(target) => target,
                Err(e) => {
                    eprintln!("ferry cache gc: --to {to:?}: {e}");
                    return Ok(ExitCode::from(2));
                }
            };
            let (removed, freed) = maintenance::gc(&root, target)?;
            println!("removed {removed} blobs, freed {}", human(freed));
            Ok(ExitCode::SUCCESS)
        }
        CacheCommand::Rm { image } => {
            let parsed = match maintenance::ImageRef::parse(&image, ferry::config::DEFAULT_REGISTRY)
            {
                Ok(parsed) => parsed,
                Err(e) => {
                    eprintln!("ferry cache rm: {image:?}: {e}");
                    return Ok(ExitCode::from(2));
                }
            };
            if let Some(how) = maintenance::pinned_how(&root, &parsed)? {
                eprintln!("ferry cache rm: {parsed} is pinned {how}; unpin it first");
                return Ok(ExitCode::FAILURE);
            }
            let removed = maintenance::remove_image(&root, &parsed)?;
            println!("removed {parsed}: {removed} files");
            Ok(ExitCode::SUCCESS)
        }
        CacheCommand::Unpin { image } => {
            let parsed = match maintenance::ImageRef::parse(&image, ferry::config::DEFAULT_REGISTRY)
            {
                Ok(parsed) => parsed,
                Err(e) => {
                    eprintln!("ferry cache unpin: {image:?}: {e}");
                    return Ok(ExitCode::from(2));
                }
            };
            if maintenance::unpin(&root, &parsed)? {
                println!("unpinned {parsed}");
                Ok(ExitCode::SUCCESS)
            } else {
                match maintenance::pinned_how(&root, &parsed)? {
                    Some(how) => eprintln!("ferry cache unpin: {parsed} is pinned {how}"),
                    None => eprintln!("ferry cache unpin: {parsed} is not pinned"),
                }
                Ok(ExitCode::FAILURE)
            }
        }
    })();
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ferry cache: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Bytes as KiB/MiB/GiB for people.
fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
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
