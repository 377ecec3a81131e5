//! What one client may hold of the server: a cap on open connections (in all, and per client
//! address; at a cap the longest-idle connection is shed for the newcomer), an idle timeout on
//! every connection, and a deadline for a new connection's first request. Slowloris, idle and
//! never-reading clients are cut loose.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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

impl ClientLimits {
    /// The defaults, usable in constant declarations.
    pub const DEFAULT: ClientLimits = ClientLimits {
        header_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(60),
        max_connections: 4096,
        max_connections_per_client: 1024,
    };
}

impl Default for ClientLimits {
    fn default() -> Self {
        ClientLimits::DEFAULT
    }
}

/// Counts open connections, in all and per client address, and picks which to shed when a
/// cap is reached: the one that has waited longest without a request in service.
#[derive(Debug)]
pub(crate) struct ConnectionCounter {
    limits: ClientLimits,
    open: Mutex<OpenConnections>,
    /// Zero point of the `idle_since` clocks.
    epoch: Instant,
}

#[derive(Debug, Default)]
struct OpenConnections {
    total: usize,
    per_peer: HashMap<IpAddr, usize>,
    by_id: HashMap<u64, Tracked>,
    next_id: u64,
}

/// What the counter knows of one open connection.
#[derive(Debug)]
struct Tracked {
    peer: IpAddr,
    activity: Arc<ConnectionActivity>,
}

/// Shared between a connection's task and the counter.
#[derive(Debug, Default)]
pub(crate) struct ConnectionActivity {
    /// Requests in service now (a connection serving one is never shed).
    pub(crate) busy: Arc<AtomicUsize>,
    /// Milliseconds after the counter's epoch since which the connection has had no request
    /// in service (its admission, or its last response's end).
    idle_since_ms: AtomicU64,
    /// Told when the connection is shed; its task closes it.
    pub(crate) shed: tokio::sync::Notify,
}

impl ConnectionActivity {
    /// A response just ended: the connection is idle from now.
    pub(crate) fn note_idle(&self, counter: &ConnectionCounter) {
        self.idle_since_ms
            .store(counter.now_ms(), Ordering::Relaxed);
    }
}

/// One admitted connection; dropping it frees its place (unless it was shed: then its place
/// already went to the connection admitted instead).
#[derive(Debug)]
pub(crate) struct ConnectionPermit {
    counter: Arc<ConnectionCounter>,
    id: u64,
    pub(crate) activity: Arc<ConnectionActivity>,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    ServerFull,
    ClientFull,
}

impl ConnectionCounter {
    pub(crate) fn new(limits: ClientLimits) -> Arc<Self> {
        Arc::new(ConnectionCounter {
            limits,
            open: Mutex::new(OpenConnections::default()),
            epoch: Instant::now(),
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OpenConnections> {
        // Poisoning only means a panic between two counter updates; the counts stay usable.
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a connection from `peer`. At a cap, the connection (of that peer for its cap,
    /// of anyone for the server's) that has waited longest without a request in service is
    /// shed to make room; only when every one is serving a request is the newcomer refused.
    pub(crate) fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<ConnectionPermit, Refusal> {
        let mut open = self.lock();
        // Pick every connection to shed first; shed nothing unless the newcomer gets in.
        let mut victims = Vec::new();
        if open.per_peer.get(&peer).copied().unwrap_or(0) >= self.limits.max_connections_per_client
        {
            match Self::longest_idle(&open, |tracked| tracked.peer == peer) {
                Some(id) => victims.push(id),
                None => return Err(Refusal::ClientFull),
            }
        }
        if open.total - victims.len() >= self.limits.max_connections {
            // The newcomer's own address gives up a place first, then anyone's.
            let own = Self::longest_idle(&open, |tracked| tracked.peer == peer)
                .filter(|id| !victims.contains(id));
            match own
                .or_else(|| Self::longest_idle(&open, |_| true).filter(|id| !victims.contains(id)))
            {
                Some(id) => victims.push(id),
                None => return Err(Refusal::ServerFull),
            }
        }
        for id in victims {
            Self::shed(&mut open, id);
        }
        *open.per_peer.entry(peer).or_insert(0) += 1;
        open.total += 1;
        let id = open.next_id;
        open.next_id += 1;
        let activity = Arc::new(ConnectionActivity::default());
        activity
            .idle_since_ms
            .store(self.now_ms(), Ordering::Relaxed);
        open.by_id.insert(
            id,
            Tracked {
                peer,
                activity: activity.clone(),
            },
        );
        Ok(ConnectionPermit {
            counter: self.clone(),
            id,
            activity,
        })
    }

    /// The connection that `eligible` allows, serves no request, and has waited longest.
    fn longest_idle(open: &OpenConnections, eligible: impl Fn(&Tracked) -> bool) -> Option<u64> {
        open.by_id
            .iter()
            .filter(|(_, tracked)| eligible(tracked))
            .filter(|(_, tracked)| tracked.activity.busy.load(Ordering::Relaxed) == 0)
            .min_by_key(|(id, tracked)| {
                // The older connection first among equally idle ones.
                (tracked.activity.idle_since_ms.load(Ordering::Relaxed), **id)
            })
            .map(|(id, _)| *id)
    }

    /// Frees a connection's place now and tells its task to close it.
    fn shed(open: &mut OpenConnections, id: u64) {
        if let Some(tracked) = open.by_id.remove(&id) {
            Self::release(open, tracked.peer);
            tracked.activity.shed.notify_one();
            tracing::debug!(peer = %tracked.peer, "connection shed at the connection cap: it waited longest without a request");
        }
    }

    fn release(open: &mut OpenConnections, peer: IpAddr) {
        open.total = open.total.saturating_sub(1);
        if let Some(count) = open.per_peer.get_mut(&peer) {
            *count -= 1;
            if *count == 0 {
                open.per_peer.remove(&peer);
            }
        }
    }

    pub(crate) fn open_connections(&self) -> usize {
        self.lock().total
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut open = self.counter.lock();
        if let Some(tracked) = open.by_id.remove(&self.id) {
            ConnectionCounter::release(&mut open, tracked.peer);
        }
    }
}

/// An I/O stream that fails with `TimedOut` once it has waited `idle` on the client: a
/// client that sends nothing between requests, or stops reading a response, loses its
/// connection. While ferry itself is working on a request (`busy` > 0, e.g. a Range request
/// waiting for its fill to commit), waiting to read does not count: only the client's side.
pub(crate) struct IdleTimeout<T> {
    inner: T,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
    busy: Arc<AtomicUsize>,
}

impl<T> IdleTimeout<T> {
    pub(crate) fn new(inner: T, idle: Duration, busy: Arc<AtomicUsize>) -> Self {
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
pub(crate) fn raise_open_file_limit() -> io::Result<u64> {
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

    fn serving(permit: &ConnectionPermit) {
        permit.activity.busy.fetch_add(1, Ordering::Relaxed);
    }

    #[test]
    fn caps_connections_in_all_and_per_client_and_frees_them_on_drop() {
        let counter = ConnectionCounter::new(limits(3, 2));
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let a1 = counter.admit(a).unwrap();
        let a2 = counter.admit(a).unwrap();
        serving(&a1);
        serving(&a2);
        assert_eq!(counter.admit(a).unwrap_err(), Refusal::ClientFull);
        let b1 = counter.admit(b).unwrap();
        serving(&b1);
        assert_eq!(counter.admit(b).unwrap_err(), Refusal::ServerFull);
        drop(a1);
        assert_eq!(counter.open_connections(), 2);
        let _a3 = counter.admit(a).unwrap();
    }

    #[tokio::test]
    async fn at_a_cap_the_longest_idle_connection_is_shed_for_the_newcomer() {
        let counter = ConnectionCounter::new(limits(3, 2));
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let a1 = counter.admit(a).unwrap();
        let a2 = counter.admit(a).unwrap();
        // a1 and a2 wait without a request; the newcomer from a takes a1's place.
        let a3 = counter.admit(a).unwrap();
        tokio::time::timeout(Duration::from_secs(1), a1.activity.shed.notified())
            .await
            .expect("the oldest idle connection is told to close");
        assert_eq!(counter.open_connections(), 2);
        drop(a1);
        assert_eq!(
            counter.open_connections(),
            2,
            "a shed permit frees nothing twice"
        );
        // Server cap: a newcomer gives up its own address's idle connection first (b1), and
        // one from a new address the longest idle of anyone's (a2), never a busy one (a3).
        serving(&a3);
        let b1 = counter.admit(b).unwrap();
        let _b2 = counter.admit(b).unwrap();
        tokio::time::timeout(Duration::from_secs(1), b1.activity.shed.notified())
            .await
            .expect("b1 shed for the server cap");
        let c: IpAddr = "127.0.0.3".parse().unwrap();
        let _c1 = counter.admit(c).unwrap();
        tokio::time::timeout(Duration::from_secs(1), a2.activity.shed.notified())
            .await
            .expect("a2 shed for the server cap");
        assert_eq!(counter.open_connections(), 3);
        // Every connection serving: a newcomer is refused and nobody is shed.
        let counter = ConnectionCounter::new(limits(2, 1));
        let d1 = counter.admit(a).unwrap();
        serving(&d1);
        assert_eq!(counter.admit(a).unwrap_err(), Refusal::ClientFull);
        let e1 = counter.admit(b).unwrap();
        serving(&e1);
        assert_eq!(counter.admit(c).unwrap_err(), Refusal::ServerFull);
        assert_eq!(counter.open_connections(), 2);
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
