//! What one client may hold of the server: a cap on open connections (in all, and per client
//! address), an idle timeout on every connection (no byte moved either way), and a deadline for
//! a new connection's first request. Slowloris, idle and never-reading clients are cut loose.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Limits on client connections, from the config (`client_*`, `max_connections*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientLimits {
    /// A request's headers (and a new connection's first request) must arrive within this.
    pub header_timeout: Duration,
    /// A connection on which no byte moves either way for this long is closed.
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_client: usize,
}

impl Default for ClientLimits {
    fn default() -> Self {
        ClientLimits {
            header_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_connections: 4096,
            max_connections_per_client: 1024,
        }
    }
}

/// Counts open connections, in all and per client address.
#[derive(Debug)]
pub struct ConnectionCounter {
    limits: ClientLimits,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
pub struct ConnectionPermit {
    counter: Arc<ConnectionCounter>,
    peer: IpAddr,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    ServerFull,
    ClientFull,
}

impl ConnectionCounter {
    pub fn new(limits: ClientLimits) -> Arc<Self> {
        Arc::new(ConnectionCounter {
            limits,
            open: Mutex::new((0, HashMap::new())),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (usize, HashMap<IpAddr, usize>)> {
        // Poisoning only means a panic between two counter updates; the counts stay usable.
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a connection from `peer`, or says which cap it would exceed.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<ConnectionPermit, Refusal> {
        let mut open = self.lock();
        if open.0 >= self.limits.max_connections {
            return Err(Refusal::ServerFull);
        }
        let mine = open.1.entry(peer).or_insert(0);
        if *mine >= self.limits.max_connections_per_client {
            return Err(Refusal::ClientFull);
        }
        *mine += 1;
        open.0 += 1;
        Ok(ConnectionPermit {
            counter: self.clone(),
            peer,
        })
    }

    pub fn open_connections(&self) -> usize {
        self.lock().0
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut open = self.counter.lock();
        open.0 = open.0.saturating_sub(1);
        if let Some(count) = open.1.get_mut(&self.peer) {
            *count -= 1;
            if *count == 0 {
                open.1.remove(&self.peer);
            }
        }
    }
}

/// An I/O stream that fails with `TimedOut` once it has waited `idle` on the client: a
/// client that sends nothing between requests, or stops reading a response, loses its
/// connection. While ferry itself is working on a request (`busy` > 0, e.g. a Range request
/// waiting for its fill to commit), waiting to read does not count: only the client's side.
pub struct IdleTimeout<T> {
    inner: T,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
    busy: Arc<AtomicUsize>,
}

impl<T> IdleTimeout<T> {
    pub fn new(inner: T, idle: Duration, busy: Arc<AtomicUsize>) -> Self {
        IdleTimeout {
            inner,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
            busy,
        }
    }

    fn progressed(&mut self) {
        self.deadline.as_mut().reset(Instant::now() + self.idle);
    }

    /// A write that moved bytes restarts the clock; one stuck on the client runs it.
    fn after_write(
        &mut self,
        cx: &mut Context<'_>,
        written: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match written {
            Poll::Ready(result) => {
                if result.as_ref().is_ok_and(|n| *n > 0) {
                    self.progressed();
                }
                Poll::Ready(result)
            }
            Poll::Pending => self.pending_or_timed_out(cx),
        }
    }

    /// On `Pending`, checks the deadline (which also registers the wake-up for it).
    fn pending_or_timed_out<R>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("client connection idle for {:?}", self.idle),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleTimeout<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    self.progressed();
                }
                Poll::Ready(result)
            }
            // ferry is the slow party, not the client; a stalled write still times out, and
            // the clock restarts with the response's last write.
            Poll::Pending if self.busy.load(Ordering::Relaxed) > 0 => Poll::Pending,
            Poll::Pending => self.pending_or_timed_out(cx),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleTimeout<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.after_write(cx, written)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.after_write(cx, written)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Ready(result) => Poll::Ready(result),
            Poll::Pending => self.pending_or_timed_out(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Raises the soft limit on open files to the hard limit (Linux and macOS start processes at
/// 1024 or 256 while allowing far more), and returns the limit now in force.
pub fn raise_open_file_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed by pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let ceiling = open_file_ceiling(limit.rlim_max);
    if limit.rlim_cur < ceiling {
        let raised = libc::rlimit {
            rlim_cur: ceiling,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(io::Error::last_os_error());
        }
        limit = raised;
    }
    // rlim_t is u64 on Linux and macOS but narrower on some targets.
    #[allow(clippy::unnecessary_cast)]
    Ok(limit.rlim_cur as u64)
}

/// The highest soft limit `setrlimit` accepts: the hard limit.
#[cfg(not(target_vendor = "apple"))]
fn open_file_ceiling(hard: libc::rlim_t) -> libc::rlim_t {
    hard
}

/// The highest soft limit `setrlimit` accepts. macOS reports an unlimited hard limit but
/// refuses (EINVAL) a soft limit above `OPEN_MAX` (10240), as its setrlimit(2) documents.
#[cfg(target_vendor = "apple")]
fn open_file_ceiling(hard: libc::rlim_t) -> libc::rlim_t {
    const OPEN_MAX: libc::rlim_t = 10240;
    hard.min(OPEN_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn limits(total: usize, per_client: usize) -> ClientLimits {
        ClientLimits {
            max_connections: total,
            max_connections_per_client: per_client,
            ..ClientLimits::default()
        }
    }

    #[test]
    fn caps_connections_in_all_and_per_client_and_frees_them_on_drop() {
        let counter = ConnectionCounter::new(limits(3, 2));
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let a1 = counter.admit(a).unwrap();
        let _a2 = counter.admit(a).unwrap();
        assert_eq!(counter.admit(a).unwrap_err(), Refusal::ClientFull);
        let _b1 = counter.admit(b).unwrap();
        assert_eq!(counter.admit(b).unwrap_err(), Refusal::ServerFull);
        drop(a1);
        assert_eq!(counter.open_connections(), 2);
        let _a3 = counter.admit(a).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_stream_times_out_and_traffic_keeps_it_alive() {
        let (client, server) = tokio::io::duplex(64);
        let busy = Arc::new(AtomicUsize::new(0));
        let mut server = IdleTimeout::new(server, Duration::from_secs(10), busy.clone());
        let mut client = client;
        let mut buf = [0u8; 8];
        // Bytes every 6 s keep it open past the 10 s idle limit.
        for _ in 0..3 {
            tokio::time::advance(Duration::from_secs(6)).await;
            client.write_all(b"x").await.unwrap();
            assert_eq!(server.read(&mut buf).await.unwrap(), 1);
        }
        let error = server.read(&mut buf).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        // While ferry works on a request, a quiet client is not idle.
        let (_client, server) = tokio::io::duplex(64);
        let mut server = IdleTimeout::new(server, Duration::from_secs(10), busy.clone());
        busy.store(1, Ordering::Relaxed);
        let read = tokio::time::timeout(Duration::from_secs(30), server.read(&mut buf)).await;
        assert!(read.is_err(), "still waiting after 30 s, no TimedOut");
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_stops_reading_times_out_the_writer() {
        let (_client, server) = tokio::io::duplex(16);
        // Writes stuck on the client time out even while a request is being served.
        let busy = Arc::new(AtomicUsize::new(1));
        let mut server = IdleTimeout::new(server, Duration::from_secs(5), busy);
        let error = server.write_all(&[0u8; 1024]).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
    }
}
