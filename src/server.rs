//! The HTTP front: accepts connections (HTTP/1.1 and h2c via hyper-util's auto builder),
//! hands each request to `handler`, and drains in-flight connections on shutdown.

pub mod handler;
pub mod response;
pub mod route;

use crate::pull::PullThrough;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::GracefulShutdown;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Serves on `listener` until `shutdown` resolves, then waits up to `grace` for open
/// connections to finish their responses.
pub async fn serve(
    listener: TcpListener,
    pull: Arc<PullThrough>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // EMFILE and friends: back off briefly instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let pull = pull.clone();
                let service = hyper::service::service_fn(move |request| {
                    let pull = pull.clone();
                    async move { Ok::<_, std::convert::Infallible>(handler::handle(pull, request).await) }
                });
                let connection = builder.serve_connection(TokioIo::new(stream), service).into_owned();
                let connection = graceful.watch(connection);
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(?grace, "grace period over; closing connections still open");
    }
}
