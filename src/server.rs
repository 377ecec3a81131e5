//! The HTTP front: accepts connections (HTTP/1.1 and h2c via hyper-util's auto builder)
//! within the connection caps and timeouts of `limits`, hands each request to a handler (the
//! registry API in `handler`, or the admin API), and drains in-flight connections on shutdown.

pub mod client_auth;
pub(crate) mod handler;
pub(crate) mod limits;
pub mod range;
pub(crate) mod response;
pub mod route;
pub(crate) mod tls;

use crate::server::limits::ClientLimits;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use limits::{ConnectionCounter, IdleTimeout};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;

/// Counts a request as in service from the handler's call until its response body is done
/// (or dropped), so the idle timeout runs against the client only when ferry waits on it:
/// a body that pauses while ferry fails over upstream does not cost the client its connection.
/// When the last request in service ends, the connection is idle from then (for shedding).
struct InService {
    activity: Arc<limits::ConnectionActivity>,
    counter: Arc<ConnectionCounter>,
}

/// A response body that keeps its request counted as in service until it is dropped.
struct InServiceBody {
    inner: response::ResponseBody,
    _in_service: InService,
}

impl http_body::Body for InServiceBody {
    type Data = bytes::Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl InService {
    fn start(activity: &Arc<limits::ConnectionActivity>, counter: &Arc<ConnectionCounter>) -> Self {
        activity.busy.fetch_add(1, Ordering::Relaxed);
        InService {
            activity: activity.clone(),
            counter: counter.clone(),
        }
    }
}

impl Drop for InService {
    fn drop(&mut self) {
        if self.activity.busy.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.activity.note_idle(&self.counter);
        }
    }
}

/// Runs one connection until it ends, until `header_timeout` passes without its first
/// request (a client trickling bytes before its first request line keeps no connection), or
/// until it is shed at a connection cap.
async fn run_connection(
    connection: impl Future<Output = Result<(), Box<dyn std::error::Error + Send + Sync>>>,
    first_request: Arc<AtomicBool>,
    header_timeout: Duration,
    peer: std::net::SocketAddr,
    activity: Arc<limits::ConnectionActivity>,
) {
    let first_request_deadline = async {
        tokio::time::sleep(header_timeout).await;
        if first_request.load(Ordering::Relaxed) {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        ended = connection => {
            if let Err(e) = ended {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        }
        () = first_request_deadline => {
            tracing::debug!(%peer, ?header_timeout, "no request on a new connection in time; closed");
        }
        () = activity.shed.notified() => {
            tracing::debug!(%peer, "closed: shed at the connection cap for a newer connection");
        }
    }
}

/// Runs hyper's HTTP/2 stream tasks as tracked tasks, so shutdown waits for them (and the
/// pull flow they hold) too.
#[derive(Clone)]
struct TrackedExecutor(Arc<crate::tasks::TaskSupervisor>);

impl<F> hyper::rt::Executor<F> for TrackedExecutor
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, future: F) {
        self.0.spawn_connection("http/2 stream", future);
    }
}

/// Longest a client may take to complete the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `handler` on `listener` until `tasks` is stopped, then waits up to `grace` for
/// open connections to finish their responses and closes the rest. Each connection runs as
/// one of `tasks`, so shutdown waits for it.
pub async fn serve<H, Fut>(
    listener: TcpListener,
    handler: H,
    tls: Option<std::sync::Arc<tls::ReloadingTls>>,
    tasks: Arc<crate::tasks::TaskSupervisor>,
    grace: Duration,
    limits: ClientLimits,
) where
    H: Fn(http::Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = http::Response<response::ResponseBody>> + Send + 'static,
{
    let mut builder = hyper_util::server::conn::auto::Builder::new(TrackedExecutor(tasks.clone()));
    // hyper applies its header-read timeout only with a timer; it also bounds how long a
    // kept-alive connection may sit between requests.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    builder.http2().timer(TokioTimer::new());
    let counter = ConnectionCounter::new(limits);
    let graceful = GracefulShutdown::new();
    // Cancelled when the grace period is over: connections still open are closed then.
    let closing = tokio_util::sync::CancellationToken::new();
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
                let permit = match counter.admit(peer.ip()) {
                    Ok(permit) => permit,
                    Err(refusal) => {
                        tracing::debug!(%peer, ?refusal, open = counter.open_connections(), "connection refused: over the connection cap");
                        drop(stream);
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let activity = permit.activity.clone();
                let first_request = Arc::new(AtomicBool::new(false));
                let stream = IdleTimeout::new(stream, limits.idle_timeout, activity.busy.clone());
                let handler = handler.clone();
                let service = {
                    let first_request = first_request.clone();
                    let activity = activity.clone();
                    let counter = counter.clone();
                    hyper::service::service_fn(move |request| {
                        first_request.store(true, Ordering::Relaxed);
                        let in_service = InService::start(&activity, &counter);
                        let response = handler(request);
                        async move {
                            let response = response.await.map(|inner| InServiceBody {
                                inner,
                                _in_service: in_service,
                            });
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    })
                };
                match &tls {
                    None => {
                        let connection = builder.serve_connection(TokioIo::new(stream), service).into_owned();
                        let connection = graceful.watch(connection);
                        let closing = closing.clone();
                        tasks.spawn_connection("client connection", async move {
                            tokio::select! {
                                () = run_connection(connection, first_request, limits.header_timeout, peer, activity) => {}
                                () = closing.cancelled() => {}
                            }
                            drop(permit);
                        });
                    }
                    Some(tls) => {
                        let acceptor = tls.acceptor();
                        let builder = builder.clone();
                        let watcher = graceful.watcher();
                        let closing = closing.clone();
                        tasks.spawn_connection("client connection", async move {
                            // A connection shed (or closed by shutdown) during its handshake closes at once.
                            let handshake = tokio::select! {
                                handshake = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)) => handshake,
                                () = activity.shed.notified() => return,
                                () = closing.cancelled() => return,
                            };
                            let stream = match handshake {
                                Ok(Ok(stream)) => stream,
                                Ok(Err(e)) => {
                                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                    return;
                                }
                                Err(_) => {
                                    tracing::debug!(%peer, "TLS handshake timed out");
                                    return;
                                }
                            };
                            let connection = builder.serve_connection(TokioIo::new(stream), service).into_owned();
                            tokio::select! {
                                () = run_connection(watcher.watch(connection), first_request, limits.header_timeout, peer, activity) => {}
                                () = closing.cancelled() => {}
                            }
                            drop(permit);
                        });
                    }
                }
            }
            () = tasks.stopped() => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(?grace, "grace period over; closing connections still open");
        closing.cancel();
    }
}
