//! Wires a validated `Config` into a running server: opens the cache, builds the upstream
//! clients, binds the listener, and returns a handle with the bound address and a shutdown.

use crate::cache::Cache;
use crate::config::Config;
use crate::pull::PullThrough;
use crate::upstream::Upstreams;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long in-flight responses may run after shutdown is requested.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open the cache at {path}: {source}")]
    Cache {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot set up upstreams: {0}")]
    Upstreams(String),
}

/// A running ferry. Dropping it does not stop the server; call `shutdown`.
pub struct RunningServer {
    pub addr: SocketAddr,
    pub pull: Arc<PullThrough>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl RunningServer {
    /// Stops accepting, lets in-flight responses finish (up to the grace period), and waits.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.task).await;
    }

    /// Waits until the server stops (after `shutdown` from another handle or a signal).
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

pub async fn start(config: Config) -> Result<RunningServer, StartError> {
    start_with_shutdown(config, std::future::pending()).await
}

/// Starts the server; it also stops when `external_shutdown` resolves (e.g. on SIGTERM).
pub async fn start_with_shutdown(
    config: Config,
    external_shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<RunningServer, StartError> {
    let cache = Cache::open(&config.cache_dir).map_err(|source| StartError::Cache {
        path: config.cache_dir.display().to_string(),
        source,
    })?;
    let upstreams = Upstreams::new(
        &config.upstreams,
        config.failover_on_not_found,
        config.bad_source_skip,
    )
    .map_err(StartError::Upstreams)?;
    let pull = Arc::new(PullThrough::new(
        cache,
        upstreams,
        config.registry.clone(),
        config.tag_ttl,
    ));
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: config.listen,
        source,
    })?;
    let (tx, rx) = oneshot::channel::<()>();
    let shutdown = async move {
        tokio::select! {
            _ = rx => {}
            () = external_shutdown => {}
        }
    };
    let task = tokio::spawn(crate::server::serve(
        listener,
        pull.clone(),
        shutdown,
        DEFAULT_SHUTDOWN_GRACE,
    ));
    tracing::info!(
        %addr,
        cache_dir = %config.cache_dir.display(),
        upstreams = ?config.upstreams.iter().map(|u| u.name.as_str()).collect::<Vec<_>>(),
        "ferry listening"
    );
    Ok(RunningServer {
        addr,
        pull,
        shutdown: Some(tx),
        task,
    })
}
