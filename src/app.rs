//! Wires a validated `Config` into a running server: opens the cache, builds the upstream
//! clients, binds the registry and admin listeners, starts the optional health probe, and
//! returns a handle with the bound addresses and a shutdown.

pub(crate) mod config_files;

pub use config_files::load_config;

use crate::cache::Cache;
use crate::config::Config;
use crate::pins::PinKeeper;
use crate::pull::{PullSettings, PullThrough};
use crate::tasks::TaskSupervisor;
use crate::upstream::Registries;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// Longest a stopping server waits for fills still running (they hold the cache).
const FILL_DRAIN_LIMIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open the cache at {path}: {source}")]
    Cache {
        path: String,
        source: std::io::Error,
    },
    /// The OS error is part of the message, not a `source`, so it is printed once.
    #[error("cannot listen on {addr} for the {listener} (move it with {flag}): {error}")]
    Bind {
        addr: SocketAddr,
        listener: &'static str,
        flag: &'static str,
        error: std::io::Error,
    },
    #[error("cannot set up upstreams: {0}")]
    Upstreams(#[source] crate::upstream::settings::SetupError),
    #[error("cannot set up TLS: {0}")]
    Tls(#[source] crate::server::tls::TlsError),
    #[error("cannot set up the shared store: {0}")]
    SharedStore(#[source] crate::shared::StoreError),
}

/// A running ferry. Dropping it does not stop the server; call `shutdown`.
pub struct RunningServer {
    pub addr: SocketAddr,
    pub admin_addr: Option<SocketAddr>,
    /// Every task of this server: its cancellation token is the one shutdown.
    tasks: Arc<TaskSupervisor>,
    listeners: Vec<JoinHandle<()>>,
}

impl RunningServer {
    /// Stops accepting, lets in-flight responses finish (up to the grace period), and waits.
    pub async fn shutdown(self) {
        self.tasks.stop();
        self.wait().await;
    }

    /// Waits until the server stops (after `shutdown` or the external shutdown signal): the
    /// listeners drain their connections, the loops end, and fills still running finish (up
    /// to a limit), so the cache directory is released on return.
    pub async fn wait(self) {
        for listener in self.listeners {
            if let Err(error) = listener.await
                && error.is_panic()
            {
                let message = crate::tasks::panic_message(&error.into_panic());
                tracing::error!(panic = %message, "a listener task panicked");
            }
        }
        if !self.tasks.wait_idle(FILL_DRAIN_LIMIT).await {
            tracing::warn!(
                running = self.tasks.running(),
                "background tasks still running after {FILL_DRAIN_LIMIT:?}; stopping anyway"
            );
        }
    }
}

pub async fn start(config: Config) -> Result<RunningServer, StartError> {
    start_with_shutdown(config, std::future::pending()).await
}

/// Which listener is bound, for the message when it cannot be.
#[derive(Clone, Copy)]
enum Listener {
    Registry,
    Admin,
}

async fn bind(
    addr: SocketAddr,
    which: Listener,
) -> Result<(tokio::net::TcpListener, SocketAddr), StartError> {
    let failed = |error| {
        let (listener, flag) = match which {
            Listener::Registry => ("registry API", "--listen or `listen`"),
            Listener::Admin => (
                "admin API",
                "--admin-listen or `admin_listen`, \"off\" to disable it",
            ),
        };
        StartError::Bind {
            addr,
            listener,
            flag,
            error,
        }
    };
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(failed)?;
    let bound = listener.local_addr().map_err(failed)?;
    Ok((listener, bound))
}

/// Starts the server; it also stops when `external_shutdown` resolves (e.g. on SIGTERM).
pub async fn start_with_shutdown(
    config: Config,
    external_shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<RunningServer, StartError> {
    let tasks = Arc::new(TaskSupervisor::default());
    let pull = pull_through(&config, &tasks)?;
    let pins = pin_keeper(&config, &pull);
    let (listener, addr) = bind(config.listen, Listener::Registry).await?;
    let admin = match config.admin_listen {
        Some(admin_addr) => Some(bind(admin_addr, Listener::Admin).await?),
        None => None,
    };
    let stop_on_signal = tasks.clone();
    tasks.spawn_until_stopped("external shutdown signal", async move {
        external_shutdown.await;
        stop_on_signal.stop();
    });
    let tls = tls_with_reloads(&config, &tasks)?;
    let client_limits = fit_to_open_file_limit(config.client_limits);
    let registry_pull = pull.clone();
    let client_auth = config.client_auth.clone();
    let registry_handler = move |request| {
        let pull = registry_pull.clone();
        let client_auth = client_auth.clone();
        async move { crate::server::handler::handle(pull, client_auth, request).await }
    };
    let mut listeners = vec![tokio::spawn(crate::server::serve(
        listener,
        registry_handler,
        tls,
        tasks.clone(),
        config.shutdown_grace,
        client_limits,
    ))];
    let admin_addr = admin.as_ref().map(|(_, bound)| *bound);
    if let Some((admin_listener, _)) = admin {
        listeners.push(serve_admin(
            admin_listener,
            &config,
            (&pull, &pins),
            &tasks,
            client_limits,
        ));
    }
    tasks.spawn_until_stopped("cache maintenance", maintain_cache(pull.clone()));
    tasks.spawn_until_stopped(
        "history sampler",
        sample_history(pull.clone(), pins.clone()),
    );
    tasks.spawn_until_stopped("pin keeper", pins.run());
    if let Some(interval) = config.health_probe_interval.filter(|_| !config.offline) {
        tasks.spawn_until_stopped("upstream probes", probe_upstreams(pull.clone(), interval));
    }
    tracing::info!(
        %addr,
        admin = ?admin_addr,
        cache_dir = %config.cache_dir.display(),
        offline = config.offline,
        upstreams = ?config.upstreams.iter().map(|u| u.name.as_str()).collect::<Vec<_>>(),
        "ferry listening"
    );
    Ok(RunningServer {
        addr,
        admin_addr,
        tasks,
        listeners,
    })
}

/// The pull-through flow over the cache directory, the upstreams and the shared store, its
/// background work run as `tasks`.
fn pull_through(
    config: &Config,
    tasks: &Arc<TaskSupervisor>,
) -> Result<Arc<PullThrough>, StartError> {
    let cache =
        Cache::open(&config.cache_dir, config.cache_size).map_err(|source| StartError::Cache {
            path: config.cache_dir.display().to_string(),
            source,
        })?;
    let metrics = Arc::new(crate::metrics::Metrics::default());
    note_proxy_environment(config);
    let mut pool = config.pool.clone();
    pool.suspects = Some(Arc::new(crate::upstream::suspects::SuspectFile::new(
        config
            .cache_dir
            .join(crate::upstream::suspects::SUSPECTS_FILE),
    )));
    let registries = Registries::new(
        &config.upstreams,
        &config.registry,
        config.direct.clone(),
        &pool,
        metrics.clone(),
    )
    .map_err(StartError::Upstreams)?;
    let settings = PullSettings {
        tag_ttl: config.tag_ttl,
        referrers_ttl: config.referrers_ttl,
        max_stale: config.max_stale,
        offline: config.offline,
        track_provenance: config
            .client_auth
            .as_ref()
            .is_some_and(|auth| !auth.registry_rules().is_empty()),
    };
    let shared = match &config.shared_store {
        Some(store) => Some(Arc::new(
            crate::shared::SharedStore::new(store.clone())
                .map_err(StartError::SharedStore)?
                .supervised_by(tasks.clone()),
        )),
        None => None,
    };
    Ok(Arc::new(PullThrough::new(
        cache,
        registries,
        settings,
        metrics,
        shared,
        tasks.clone(),
    )))
}

/// The registry listener's certificate, reloaded when its files change or on SIGHUP; without
/// TLS, SIGHUP is still caught (it must never kill ferry: `systemctl reload`).
fn tls_with_reloads(
    config: &Config,
    tasks: &Arc<TaskSupervisor>,
) -> Result<Option<Arc<crate::server::tls::ReloadingTls>>, StartError> {
    let Some((cert, key)) = &config.tls else {
        if let Ok(mut hangups) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            tasks.spawn_until_stopped("SIGHUP without TLS", async move {
                while hangups.recv().await.is_some() {
                    tracing::info!("SIGHUP: nothing to reload (no TLS configured)");
                }
            });
        }
        return Ok(None);
    };
    let tls = Arc::new(crate::server::tls::ReloadingTls::load(cert, key).map_err(StartError::Tls)?);
    tasks.spawn_until_stopped("TLS reload", reload_tls(tls.clone()));
    Ok(Some(tls))
}

/// The keeper of pins that follow their tag, with the AZ group it reads pins from.
fn pin_keeper(config: &Config, pull: &Arc<PullThrough>) -> Arc<PinKeeper> {
    let group = config.pins.from_group.as_ref().map(|group| {
        let members = pull
            .registries
            .all()
            .into_iter()
            .flat_map(|(_, upstreams)| upstreams.clients().to_vec())
            .filter(|client| client.config().group.as_deref() == Some(group.as_str()))
            .collect();
        crate::pins::from_group::GroupPins::new(group.clone(), members)
    });
    PinKeeper::new(pull.clone(), config.pins.clone(), group)
}

/// The admin API's listener (a short grace period: its answers are small).
fn serve_admin(
    listener: tokio::net::TcpListener,
    config: &Config,
    (pull, pins): (&Arc<PullThrough>, &Arc<PinKeeper>),
    tasks: &Arc<TaskSupervisor>,
    client_limits: crate::config::ClientLimits,
) -> JoinHandle<()> {
    let admin_pins = pins.clone();
    let admin_pull = pull.clone();
    let admin_access = Arc::new(crate::admin::AdminAccess {
        hosts: config.admin_hosts.clone(),
        token: config.admin_token.as_ref().map(|t| t.0.clone()),
    });
    let admin_handler = move |request| {
        let pull = admin_pull.clone();
        let pins = admin_pins.clone();
        let admin_access = admin_access.clone();
        async move { crate::admin::handle(pull, pins, admin_access, request).await }
    };
    tokio::spawn(crate::server::serve(
        listener,
        admin_handler,
        None,
        tasks.clone(),
        Duration::from_secs(1),
        client_limits,
    ))
}

/// How often the TLS files are checked for changes.
const TLS_RELOAD_INTERVAL: Duration = Duration::from_secs(5);

/// Reloads the TLS certificate when its files change, or on SIGHUP.
async fn reload_tls(tls: Arc<crate::server::tls::ReloadingTls>) {
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        let hangup = async {
            match hangups.as_mut() {
                Some(signal) => {
                    signal.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            () = hangup => {
                tracing::info!("SIGHUP: reloading the TLS certificate");
                tls.reload();
            }
            () = tokio::time::sleep(TLS_RELOAD_INTERVAL) => tls.reload_if_changed(),
        }
    }
}

/// How often pins are re-read and the size bound re-checked.
const CACHE_MAINTENANCE_INTERVAL: Duration = Duration::from_secs(5);

/// Says how a proxy set in the environment is used: configured upstreams go through it (a
/// documented choice of whoever set it); guarded requests (direct registries, upstreams with
/// `public_addresses_only`) never do, since the proxy would dial names the guard never saw.
fn note_proxy_environment(config: &Config) {
    let set: Vec<&str> = [
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
    ]
    .into_iter()
    .filter(|name| std::env::var_os(name).is_some_and(|v| !v.is_empty()))
    .collect();
    if set.is_empty() {
        return;
    }
    let guarded =
        config.direct.is_some() || config.upstreams.iter().any(|u| u.public_addresses_only);
    tracing::info!(
        variables = %set.join(","),
        guarded_requests_bypass_it = guarded,
        "a proxy is set in the environment: configured upstreams use it; direct registries and public_addresses_only upstreams never do"
    );
}

/// How often breaker states and counts kept as totals are folded into the history.
const HISTORY_SAMPLE_INTERVAL: Duration = Duration::from_secs(5);

/// Feeds the minute-by-minute history what requests do not report to it themselves: the time
/// each breaker stays open, the cache's counts the metrics keep as totals, and the pins.
async fn sample_history(pull: Arc<PullThrough>, pins: Arc<crate::pins::PinKeeper>) {
    let mut ticks = tokio::time::interval(HISTORY_SAMPLE_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        ticks.tick().await;
        let history = &pull.metrics.history;
        for (registry, upstreams) in pull.registries.all() {
            for client in upstreams.clients() {
                if client.health().breaker().state != crate::upstream::breaker::BreakerState::Closed
                {
                    history.note_breaker_open(&registry, client.name(), HISTORY_SAMPLE_INTERVAL);
                }
            }
        }
        pull.catch_up_history();
        let by_state = pins.count_by_state();
        let count = |state: &str| {
            by_state
                .iter()
                .find(|(s, _)| *s == state)
                .map_or(0, |(_, n)| u64::try_from(*n).unwrap_or(0))
        };
        if by_state.iter().any(|(_, n)| *n > 0) {
            history.note_pins([count("cached"), count("fetching"), count("failed")]);
        }
    }
}

/// Indexes what is already on disk (in the background: requests are served meanwhile),
/// then keeps pins current and the size bound enforced.
async fn maintain_cache(pull: Arc<PullThrough>) {
    let started = std::time::Instant::now();
    let scan_pull = pull.clone();
    match pull
        .tasks
        .spawn_blocking(move || scan_pull.cache.scan_blobs())
        .await
    {
        Ok(Ok(count)) => tracing::info!(
            blobs = count,
            evicted = pull.cache.usage().evictions,
            indexed_bytes = pull.cache.usage().committed,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "cache index rebuilt"
        ),
        Ok(Err(e)) => tracing::error!(error = %e, "cache failure: cannot scan the cache directory"),
        Err(e) => tracing::error!(error = %e, "cache scan task failed"),
    }
    let mut pins_modified = None;
    loop {
        pull.cache.reload_pins_if_changed(&mut pins_modified);
        pull.cache.enforce_size_bound();
        tokio::time::sleep(CACHE_MAINTENANCE_INTERVAL).await;
    }
}

/// The optional background health probe: `GET /v2/` on every upstream each interval,
/// feeding the same circuit breakers as real requests.
async fn probe_upstreams(pull: Arc<PullThrough>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        for (_, upstreams) in pull.registries.all() {
            for client in upstreams.clients() {
                // A probe is a request too: none inside the upstream's Retry-After.
                if client.health().is_drained() || client.health().quota().held_off() {
                    continue;
                }
                let started = std::time::Instant::now();
                let outcome = client.probe().await;
                upstreams.record(client, &outcome, started.elapsed());
            }
        }
    }
}

/// Raises the open-file limit to its hard limit, and keeps the client connection cap under
/// what it allows: each client connection may also hold a cache file and an upstream
/// connection, and some descriptors are kept for the listeners, logs and the cache index.
fn fit_to_open_file_limit(mut limits: crate::config::ClientLimits) -> crate::config::ClientLimits {
    const RESERVED_FDS: u64 = 256;
    match crate::server::limits::raise_open_file_limit() {
        Ok(open_files) => {
            let room = (open_files.saturating_sub(RESERVED_FDS) / 2).max(16) as usize;
            if limits.max_connections > room {
                tracing::warn!(
                    open_files,
                    configured = limits.max_connections,
                    capped_to = room,
                    "the open-file limit is too low for max_connections; capping it (raise the hard limit, e.g. LimitNOFILE=)"
                );
                limits.max_connections = room;
                limits.max_connections_per_client = limits.max_connections_per_client.min(room);
            } else {
                tracing::debug!(open_files, "open-file limit");
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot read or raise the open-file limit"),
    }
    limits
}
