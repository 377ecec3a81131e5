//! One blob fill, owned here from the first byte to the commit. The leader pushes bytes in
//! order, from whichever source `pull` picked; two blocking workers hash and write them, while
//! readers take the newest bytes from memory and older ones from the file. Commit checks size
//! and digest, releases the last byte to readers, then makes the file durable and renames it.

use super::failure::CacheFailure;
use super::index::{LruIndex, Reservation};
use super::layout::Layout;
use super::writer::{CommitError, TemporaryFile, rename_durably};
use crate::oci::{Digest, DigestAlgorithm, DigestVerifier};
use bytes::Bytes;
use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use tokio::sync::{Notify, oneshot, watch};

/// Bytes handed to the hash and write workers at once: large enough that their wake-ups
/// vanish in the cost of the work, small enough to keep both busy.
const WORKER_BATCH: usize = 512 * 1024;

/// Readers are woken at least this often while bytes keep arriving without a pause.
const PUBLISH_EVERY: u64 = 256 * 1024;

/// Bytes kept in memory for readers beyond what the file already holds.
const RECENT_WINDOW: u64 = 8 * 1024 * 1024;

/// The write worker asks the kernel to start writing to disk every this many bytes, so the
/// fsync before the commit finds little left to do.
const WRITEBACK_EVERY: u64 = 8 * 1024 * 1024;

/// How far the leader may run ahead of the slower worker before it waits (memory bound).
const MAX_AHEAD: u64 = 16 * 1024 * 1024;

/// A fill holds space against the cache size as bytes arrive, this much at a time: an
/// announced length is a claim, not a reason to evict for.
const RESERVE_STEP: u64 = 64 * 1024;

/// At most this much disk is claimed up front (`fallocate`) for an announced length; a
/// lying length cannot take more before its bytes arrive.
const PREALLOCATE_MAX: u64 = 256 * 1024 * 1024;

/// Blobs up to this size (or, of unknown size, their first this-many bytes) are not shown to
/// readers before the digest is checked: a wrong small blob can then be fetched again from
/// another upstream without any client having seen it.
pub(crate) const HOLD_UNTIL_VERIFIED_BYTES: u64 = 1024 * 1024;

const WORKERS_STOPPED: &str = "the cache's fill workers stopped";

/// Where a fill's bytes come from: an upstream (by name) or the fleet's shared store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FillOrigin {
    Upstream(String),
    SharedStore,
}

impl std::fmt::Display for FillOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FillOrigin::Upstream(name) => f.write_str(name),
            FillOrigin::SharedStore => f.write_str("shared-store"),
        }
    }
}

/// What a content failure must be: the error the fill's owner met (every upstream failing,
/// bad bytes after some were shown), passed whole to each reader. The cache never looks
/// inside it; its owner (the pull flow) chooses the type.
pub(crate) trait ContentError: std::fmt::Display + Clone + Send + Sync + 'static {}
impl<T: std::fmt::Display + Clone + Send + Sync + 'static> ContentError for T {}

/// Where a fill stands.
#[derive(Debug, Clone)]
pub(crate) enum FillPhase<E> {
    /// Looking for an upstream that answers.
    Connecting,
    /// Bytes are flowing from `origin`; `total` is the announced length if any.
    Streaming {
        total: Option<u64>,
        origin: FillOrigin,
    },
    /// Every byte is in, matches the digest and is committed under its final name; readers
    /// may have the last byte. (`Complete` follows once the fill is forgotten.)
    Verified { origin: FillOrigin },
    /// Verified and committed under its final name.
    Complete,
    /// Failed; readers stop. Before `Streaming` this is an ordinary error response,
    /// after it the readers' connections are cut.
    Failed(FillFailure<E>),
}

/// Why a fill failed. Readers need one distinction: the cache itself failed (they continue
/// straight from upstream), or the content could not be had (the error to pass on, kept as
/// the caller made it, e.g. every upstream failing or bad bytes after some were sent).
#[derive(Debug, Clone)]
pub(crate) enum FillFailure<E> {
    Cache(CacheFailure),
    Content(E),
}

impl<E: std::fmt::Display> std::fmt::Display for FillFailure<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FillFailure::Cache(failure) => write!(f, "cache failure: {failure}"),
            FillFailure::Content(error) => error.fmt(f),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct FillProgress<E> {
    /// Bytes shown to readers so far (in memory or in the file).
    pub(crate) received: u64,
    pub(crate) phase: FillPhase<E>,
}

impl<E> FillProgress<E> {
    /// Bytes a reader may hand to a client now. Until the digest is checked the blob's last
    /// byte is held back: a client that knows the length treats a body that reached it as
    /// complete, so that byte must wait for the check.
    pub(crate) fn readable(&self) -> u64 {
        match self.phase {
            FillPhase::Streaming {
                total: Some(total), ..
            } => self.received.min(total.saturating_sub(1)),
            _ => self.received,
        }
    }

    /// Every byte of the blob is known and verified: nothing more will arrive.
    pub(crate) fn all_received(&self) -> bool {
        matches!(self.phase, FillPhase::Verified { .. } | FillPhase::Complete)
    }
}

/// The newest bytes of a fill, contiguous from `start`. A byte leaves only once it is in
/// the file, so `[0, start)` can always be read from the file and `[start, end)` from here.
#[derive(Default)]
struct RecentBytes {
    start: u64,
    len: u64,
    chunks: VecDeque<Bytes>,
}

impl RecentBytes {
    fn push(&mut self, chunk: Bytes) {
        self.len += chunk.len() as u64;
        self.chunks.push_back(chunk);
    }

    /// Drops the oldest chunks that are in the file while more than `keep` bytes are held.
    fn evict_written(&mut self, written: u64, keep: u64) {
        while self.len > keep {
            let Some(front) = self.chunks.front() else {
                break;
            };
            let front_len = front.len() as u64;
            if self.start + front_len > written {
                break;
            }
            self.chunks.pop_front();
            self.start += front_len;
            self.len -= front_len;
        }
    }

    /// Queues (without copying) up to `max` bytes from `offset` on; returns how many.
    /// Nothing if `offset` is before the window: those bytes are in the file.
    fn copy_out(&self, offset: u64, max: u64, out: &mut VecDeque<Bytes>) -> u64 {
        if offset < self.start {
            return 0;
        }
        let mut chunk_start = self.start;
        let mut taken = 0;
        for chunk in &self.chunks {
            let chunk_end = chunk_start + chunk.len() as u64;
            let want_from = offset + taken;
            if taken < max && want_from < chunk_end {
                let from = (want_from - chunk_start) as usize;
                let to = chunk.len().min(from + (max - taken) as usize);
                out.push_back(chunk.slice(from..to));
                taken += (to - from) as u64;
            }
            if taken >= max {
                break;
            }
            chunk_start = chunk_end;
        }
        taken
    }

    /// Forgets everything (the file holds it all now).
    fn clear(&mut self) {
        self.start += self.len;
        self.len = 0;
        self.chunks.clear();
    }
}

/// What readers of a fill hold: the growing file, the newest bytes, and the progress.
pub(crate) struct FillHandle<E> {
    pub(crate) file: Arc<File>,
    pub(crate) progress: watch::Receiver<FillProgress<E>>,
    recent: Mutex<RecentBytes>,
}

impl<E> FillHandle<E> {
    fn recent(&self) -> std::sync::MutexGuard<'_, RecentBytes> {
        // The window is plain data; a panic elsewhere cannot leave it half-updated.
        self.recent.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues up to `max` bytes at `offset` from memory. `Err(limit)` means the bytes are in
    /// the file instead, which holds everything before `limit`.
    pub(crate) fn take_recent(
        &self,
        offset: u64,
        max: u64,
        out: &mut VecDeque<Bytes>,
    ) -> Result<u64, u64> {
        let recent = self.recent();
        if offset < recent.start {
            return Err(recent.start);
        }
        Ok(recent.copy_out(offset, max, out))
    }

    /// Hashes the fill's first `len` bytes (from the file, then memory); for a reader that
    /// continues from upstream and must still verify what it already sent. Blocking.
    pub(crate) fn hash_prefix(
        &self,
        len: u64,
        algorithm: DigestAlgorithm,
    ) -> io::Result<DigestVerifier> {
        let mut verifier = DigestVerifier::new(algorithm);
        let (in_file, mut in_memory) = {
            let recent = self.recent();
            let mut chunks = VecDeque::new();
            let in_file = recent.start.min(len);
            recent.copy_out(in_file, len - in_file, &mut chunks);
            (in_file, chunks)
        };
        let mut buffer = vec![0u8; 1 << 20];
        let mut offset = 0u64;
        while offset < in_file {
            let want = (in_file - offset).min(buffer.len() as u64) as usize;
            let n = self.file.read_at(&mut buffer[..want], offset)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "fill file shorter than what was sent",
                ));
            }
            verifier.update(&buffer[..n]);
            offset += n as u64;
        }
        while let Some(chunk) = in_memory.pop_front() {
            verifier.update(&chunk);
            offset += chunk.len() as u64;
        }
        if offset < len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "fill holds fewer bytes than were sent",
            ));
        }
        Ok(verifier)
    }
}

/// Work for the write worker, in order.
enum WriteJob {
    Append(Arc<Vec<Bytes>>),
    Truncate,
    /// Everything before is written: fsync and report.
    Sync(oneshot::Sender<io::Result<()>>),
}

/// Work for the hash worker, in order.
enum HashJob {
    Update(Arc<Vec<Bytes>>),
    Reset,
    Finish(oneshot::Sender<Digest>),
}

/// What the workers report back to the leader.
#[derive(Default)]
struct WorkerState {
    /// Bytes in the file (a contiguous prefix).
    written: AtomicU64,
    /// Bytes hashed.
    hashed: AtomicU64,
    /// The first write failure, if any; later writes are skipped.
    write_error: Mutex<Option<CacheFailure>>,
    /// Signalled after every batch either worker finishes.
    advanced: Notify,
}

/// The leader's side of a fill. Dropping it without `commit` removes the temporary file
/// and stops the workers.
pub(crate) struct BlobFill<E> {
    digest: Digest,
    handle: Arc<FillHandle<E>>,
    progress: watch::Sender<FillProgress<E>>,
    workers: Arc<WorkerState>,
    writes: mpsc::Sender<WriteJob>,
    hashes: mpsc::Sender<HashJob>,
    /// Bytes accepted so far: where the next source continues.
    received: u64,
    /// Bytes handed to the workers.
    dispatched: u64,
    /// Bytes shown to readers.
    published: u64,
    total: Option<u64>,
    batch: Vec<Bytes>,
    batch_len: usize,
    temporary: TemporaryFile,
    final_path: PathBuf,
    index: Arc<LruIndex>,
    /// Space held against the cache size for the bytes received (grown in steps).
    reservation: Option<Reservation>,
    reserved: u64,
    /// Show readers no byte before the digest matches (the source is suspect), whatever the
    /// blob's size. Bytes already shown stay shown.
    held: bool,
}

impl<E: ContentError> BlobFill<E> {
    /// Creates the temporary file and starts the workers. Readers join through `handle()`.
    pub(crate) fn create(
        layout: &Layout,
        digest: &Digest,
        final_path: &Path,
        index: Arc<LruIndex>,
    ) -> io::Result<BlobFill<E>> {
        let temporary = TemporaryFile::create(layout, &digest.hex()[..16])?;
        let file = temporary.file();
        let (progress, receiver) = watch::channel(FillProgress {
            received: 0,
            phase: FillPhase::Connecting,
        });
        let handle = Arc::new(FillHandle {
            file: file.clone(),
            progress: receiver,
            recent: Mutex::new(RecentBytes::default()),
        });
        let workers = Arc::new(WorkerState::default());
        let (writes, write_jobs) = mpsc::channel();
        let (hashes, hash_jobs) = mpsc::channel();
        let state = workers.clone();
        tokio::task::spawn_blocking(move || write_worker(file, write_jobs, state));
        let state = workers.clone();
        let algorithm = digest.algorithm();
        tokio::task::spawn_blocking(move || hash_worker(algorithm, hash_jobs, state));
        Ok(BlobFill {
            digest: digest.clone(),
            handle,
            progress,
            workers,
            writes,
            hashes,
            received: 0,
            dispatched: 0,
            published: 0,
            total: None,
            batch: Vec::new(),
            batch_len: 0,
            temporary,
            final_path: final_path.to_path_buf(),
            index,
            reservation: None,
            reserved: 0,
            held: false,
        })
    }

    pub(crate) fn handle(&self) -> Arc<FillHandle<E>> {
        self.handle.clone()
    }

    /// Bytes accepted so far: a resumed source continues from here.
    pub(crate) fn received(&self) -> u64 {
        self.received
    }

    /// Whether the fill has begun (since its creation or its last restart).
    pub(crate) fn begun(&self) -> bool {
        self.reservation.is_some()
    }

    /// Whether any byte has been shown to a reader (then the fill can no longer start over).
    pub(crate) fn any_published(&self) -> bool {
        self.published > 0
    }

    /// Starts the body from its first source: refuses a blob larger than the cache size
    /// (it passes through uncached, evicting nothing), claims disk for the start of it (so
    /// a full disk shows before any reader gets a byte), and tells readers where the bytes
    /// come from. Space against the cache size is held as bytes arrive (`push`).
    pub(crate) async fn begin(
        &mut self,
        total: Option<u64>,
        origin: FillOrigin,
    ) -> Result<(), CacheFailure> {
        if let (Some(bytes), Some(limit)) = (total, self.index.limit())
            && bytes > limit
        {
            return Err(CacheFailure::new(format!(
                "{bytes} bytes announced, more than the whole cache ({limit} bytes): served without caching"
            )));
        }
        if self.reservation.is_none() {
            self.reservation = Some(self.index.try_reserve(0).ok_or_else(|| {
                CacheFailure::new(
                    "no room within the cache size (fills in progress and pins hold it)",
                )
            })?);
            self.reserved = 0;
        }
        if let Some(bytes) = total {
            let claim = bytes.min(PREALLOCATE_MAX);
            preallocate(self.handle.file.clone(), claim)
                .await
                .map_err(|e| CacheFailure::io(format!("preallocating {claim} bytes"), e))?;
        }
        self.total = total;
        self.progress
            .send_modify(|p| p.phase = FillPhase::Streaming { total, origin });
        Ok(())
    }

    /// Accepts the next bytes of the blob. Waits only when the workers fall far behind.
    pub(crate) async fn push(&mut self, chunk: Bytes) -> Result<(), CacheFailure> {
        if chunk.is_empty() {
            return Ok(());
        }
        self.received += chunk.len() as u64;
        if self.received > self.reserved {
            self.hold_space()?;
        }
        self.batch_len += chunk.len();
        self.handle.recent().push(chunk.clone());
        self.batch.push(chunk);
        if self.batch_len >= WORKER_BATCH {
            self.dispatch()?;
        }
        if self.received - self.published >= PUBLISH_EVERY {
            self.publish();
        }
        self.keep_up().await
    }

    /// Grows the reservation to cover what was received (a step ahead), evicting if needed.
    fn hold_space(&mut self) -> Result<(), CacheFailure> {
        let more = (self.received - self.reserved).div_ceil(RESERVE_STEP) * RESERVE_STEP;
        let index = self.index.clone();
        // A body of unannounced length may be larger than the whole cache: once it passes
        // half the cache size it is served without caching, so it can evict at most that.
        if self.total.is_none()
            && let Some(limit) = index.limit()
            && self.received > limit / 2
        {
            return Err(CacheFailure::new(format!(
                "a blob of unannounced length passed half the cache size ({} of {limit} bytes): \
                 served without caching",
                self.received
            )));
        }
        let Some(reservation) = self.reservation.as_mut() else {
            return Err(CacheFailure::new("a fill received bytes before it began"));
        };
        if !index.try_grow(reservation, more) {
            return Err(CacheFailure::new(format!(
                "no room for {} bytes within the cache size (fills in progress and pins hold it)",
                self.received
            )));
        }
        self.reserved += more;
        Ok(())
    }

    /// From now until the commit, readers see no further byte: they get the rest once the
    /// digest matches, and a wrong body can start over unseen.
    pub(crate) fn hold_until_verified(&mut self) {
        self.held = true;
    }

    /// Shows every byte received so far to readers (the source paused, or a batch is due).
    pub(crate) fn publish(&mut self) {
        if self.held {
            return;
        }
        let may_show = match self.total {
            Some(total) => total > HOLD_UNTIL_VERIFIED_BYTES,
            None => self.received > HOLD_UNTIL_VERIFIED_BYTES,
        };
        if !may_show || self.received == self.published {
            return;
        }
        self.published = self.received;
        let received = self.received;
        self.progress.send_modify(|p| p.received = received);
    }

    /// Hands the current batch to both workers.
    fn dispatch(&mut self) -> Result<(), CacheFailure> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = Arc::new(std::mem::take(&mut self.batch));
        self.dispatched += self.batch_len as u64;
        self.batch_len = 0;
        let hashed = self.hashes.send(HashJob::Update(batch.clone())).is_ok();
        if !(hashed && self.writes.send(WriteJob::Append(batch)).is_ok()) {
            return Err(CacheFailure::new(WORKERS_STOPPED));
        }
        Ok(())
    }

    /// Drops bytes from memory once they are in the file, and waits while the slower worker
    /// is more than `MAX_AHEAD` behind.
    async fn keep_up(&mut self) -> Result<(), CacheFailure> {
        loop {
            if let Some(error) = self.write_error() {
                return Err(error);
            }
            let written = self.workers.written.load(Ordering::Acquire);
            self.handle.recent().evict_written(written, RECENT_WINDOW);
            let hashed = self.workers.hashed.load(Ordering::Acquire);
            if self.dispatched.saturating_sub(written.min(hashed)) <= MAX_AHEAD {
                return Ok(());
            }
            self.workers.advanced.notified().await;
        }
    }

    fn write_error(&self) -> Option<CacheFailure> {
        self.workers
            .write_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Starts over from byte 0 (the content was wrong and no reader saw any of it).
    pub(crate) fn restart(&mut self) -> Result<(), CacheFailure> {
        debug_assert!(self.published == 0, "restarting a fill readers have seen");
        self.batch.clear();
        self.batch_len = 0;
        self.received = 0;
        self.dispatched = 0;
        self.total = None;
        self.reservation = None;
        self.reserved = 0;
        self.held = false;
        *self.handle.recent() = RecentBytes::default();
        let reset = self.hashes.send(HashJob::Reset).is_ok();
        if !(reset && self.writes.send(WriteJob::Truncate).is_ok()) {
            return Err(CacheFailure::new(WORKERS_STOPPED));
        }
        Ok(())
    }

    /// Checks size and digest; on a match, fsyncs and renames the file into place, then lets
    /// readers have the last byte. On a mismatch nothing appears under the final name.
    /// (Writeback was started as the bytes came, so the fsync finds little left to do.)
    pub(crate) async fn commit(&mut self) -> Result<(), CommitError> {
        self.dispatch()
            .map_err(|f| io::Error::other(f.to_string()))?;
        if let Some(expected) = self.total
            && expected != self.received
        {
            return Err(CommitError::SizeMismatch {
                expected,
                actual: self.received,
            });
        }
        let (reply, digest) = oneshot::channel();
        self.hashes
            .send(HashJob::Finish(reply))
            .map_err(|_| io::Error::other("the cache's hash worker stopped"))?;
        let actual = digest
            .await
            .map_err(|_| io::Error::other("the cache's hash worker stopped"))?;
        if actual != self.digest {
            return Err(CommitError::DigestMismatch {
                expected: self.digest.clone(),
                actual,
            });
        }
        let (reply, synced) = oneshot::channel();
        self.writes
            .send(WriteJob::Sync(reply))
            .map_err(|_| io::Error::other("the cache's write worker stopped"))?;
        synced
            .await
            .map_err(|_| io::Error::other("the cache's write worker stopped"))??;
        let temporary_path = self.temporary.path().to_path_buf();
        let final_path = self.final_path.clone();
        tokio::task::spawn_blocking(move || rename_durably(&temporary_path, &final_path))
            .await
            .map_err(|e| io::Error::other(format!("cache commit task failed: {e}")))??;
        self.temporary.keep();
        let received = self.received;
        self.published = received;
        self.progress.send_modify(|p| {
            p.received = received;
            let streamed = std::mem::replace(&mut p.phase, FillPhase::Complete);
            if let FillPhase::Streaming { origin, .. } = streamed {
                p.phase = FillPhase::Verified { origin };
            }
        });
        // The reservation becomes the committed entry; the file holds every byte now.
        self.reservation = None;
        self.index.touch(&self.digest, received);
        self.handle.recent().clear();
        Ok(())
    }

    /// Announces the commit to readers (after the fill was forgotten by `Inflight`).
    pub(crate) fn announce_complete(&self) {
        let received = self.received;
        self.progress.send_modify(|p| {
            p.received = received;
            p.phase = FillPhase::Complete;
        });
    }

    /// Announces a failure to readers.
    pub(crate) fn announce_failure(&self, failure: FillFailure<E>) {
        self.progress
            .send_modify(|p| p.phase = FillPhase::Failed(failure));
    }
}

/// Reserves `len` bytes of disk for the file (its length stays as written). A file system
/// without `fallocate` is not an error; running out of space is.
async fn preallocate(file: Arc<File>, len: u64) -> io::Result<()> {
    tokio::task::spawn_blocking(move || super::writer::preallocate(&file, len))
        .await
        .map_err(|e| io::Error::other(format!("cache preallocation task failed: {e}")))?
}

/// Writes batches at the end of the file, in order, until the leader goes away.
fn write_worker(file: Arc<File>, jobs: mpsc::Receiver<WriteJob>, state: Arc<WorkerState>) {
    let mut end = 0u64;
    let mut flushed = 0u64;
    let mut failed: Option<CacheFailure> = None;
    for job in jobs {
        match job {
            WriteJob::Append(batch) => {
                if failed.is_some() {
                    continue;
                }
                let result = batch.iter().try_for_each(|chunk| {
                    file.write_all_at(chunk, end)?;
                    end += chunk.len() as u64;
                    Ok::<_, io::Error>(())
                });
                match result {
                    Ok(()) => {
                        if end - flushed >= WRITEBACK_EVERY {
                            super::writer::start_writeback(&file, flushed, end - flushed);
                            flushed = end;
                        }
                        state.written.store(end, Ordering::Release);
                    }
                    Err(e) => {
                        let failure = CacheFailure::io("writing a fill", e);
                        failed = Some(failure.clone());
                        *state.write_error.lock().unwrap_or_else(|p| p.into_inner()) =
                            Some(failure);
                    }
                }
                state.advanced.notify_one();
            }
            WriteJob::Truncate => {
                end = 0;
                flushed = 0;
                if failed.is_none()
                    && let Err(e) = file.set_len(0)
                {
                    let failure = CacheFailure::io("truncating a fill", e);
                    failed = Some(failure.clone());
                    *state.write_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(failure);
                }
                state.written.store(0, Ordering::Release);
                state.advanced.notify_one();
            }
            WriteJob::Sync(reply) => {
                let result = match &failed {
                    // The first write error again, with its kind (ENOSPC stays StorageFull).
                    Some(failure) => Err(io::Error::new(
                        failure.io_kind().unwrap_or(io::ErrorKind::Other),
                        failure.to_string(),
                    )),
                    None => file.sync_all(),
                };
                let _ = reply.send(result);
            }
        }
    }
}

/// Hashes batches in order until the leader goes away.
fn hash_worker(algorithm: DigestAlgorithm, jobs: mpsc::Receiver<HashJob>, state: Arc<WorkerState>) {
    let mut verifier = DigestVerifier::new(algorithm);
    let mut hashed = 0u64;
    for job in jobs {
        match job {
            HashJob::Update(batch) => {
                for chunk in batch.iter() {
                    verifier.update(chunk);
                    hashed += chunk.len() as u64;
                }
                state.hashed.store(hashed, Ordering::Release);
                state.advanced.notify_one();
            }
            HashJob::Reset => {
                verifier = DigestVerifier::new(algorithm);
                hashed = 0;
                state.hashed.store(0, Ordering::Release);
                state.advanced.notify_one();
            }
            HashJob::Finish(reply) => {
                let _ = reply.send(verifier.clone().finish());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, Layout, Arc<LruIndex>) {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::create(dir.path()).unwrap();
        let root = dir.path().to_path_buf();
        let index = Arc::new(LruIndex::new(None, move |d| {
            Layout::blob_path_under(&root, d)
        }));
        (dir, layout, index)
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 1000) as u8).collect()
    }

    #[tokio::test]
    async fn commits_only_matching_content_and_can_start_over() {
        let (_dir, layout, index) = setup();
        // Small enough that readers see nothing before the check, so it may start over.
        let body = pattern(HOLD_UNTIL_VERIFIED_BYTES as usize - 3);
        let digest = Digest::sha256_of(&body);
        let path = layout.blob_path(&digest);
        let mut fill = BlobFill::<String>::create(&layout, &digest, &path, index.clone()).unwrap();
        let handle = fill.handle();
        fill.begin(Some(body.len() as u64), FillOrigin::Upstream("a".into()))
            .await
            .unwrap();
        let mut wrong = body.clone();
        wrong[5] ^= 1;
        fill.push(Bytes::from(wrong)).await.unwrap();
        fill.publish();
        let err = fill.commit().await.unwrap_err();
        assert!(matches!(err, CommitError::DigestMismatch { .. }), "{err}");
        assert!(!path.exists());
        assert!(!fill.any_published());
        assert_eq!(
            handle.progress.borrow().received,
            0,
            "readers saw none of it"
        );

        // Start over (in pieces this time) and commit the right bytes into the same file.
        fill.restart().unwrap();
        fill.begin(Some(body.len() as u64), FillOrigin::Upstream("b".into()))
            .await
            .unwrap();
        for piece in body.chunks(100_000) {
            fill.push(Bytes::copy_from_slice(piece)).await.unwrap();
        }
        fill.commit().await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), body);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), body.len() as u64);
        drop(fill);
        assert_eq!(std::fs::read_dir(layout.tmp_dir()).unwrap().count(), 0);
        assert_eq!(index.usage().committed, body.len() as u64);
    }

    #[tokio::test]
    async fn a_short_body_is_a_size_mismatch_and_leaves_nothing() {
        let (_dir, layout, index) = setup();
        let digest = Digest::sha256_of(b"hello world");
        let path = layout.blob_path(&digest);
        let mut fill = BlobFill::<String>::create(&layout, &digest, &path, index).unwrap();
        fill.begin(Some(11), FillOrigin::Upstream("a".into()))
            .await
            .unwrap();
        fill.push(Bytes::from_static(b"hello")).await.unwrap();
        let err = fill.commit().await.unwrap_err();
        assert!(
            matches!(
                err,
                CommitError::SizeMismatch {
                    expected: 11,
                    actual: 5
                }
            ),
            "{err}"
        );
        drop(fill);
        assert!(!path.exists());
        assert_eq!(std::fs::read_dir(layout.tmp_dir()).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn readers_find_every_byte_in_memory_or_in_the_file() {
        let (_dir, layout, index) = setup();
        let body = pattern(12 * 1024 * 1024 + 5);
        let digest = Digest::sha256_of(&body);
        let path = layout.blob_path(&digest);
        let mut fill = BlobFill::<String>::create(&layout, &digest, &path, index).unwrap();
        let handle = fill.handle();
        fill.begin(Some(body.len() as u64), FillOrigin::Upstream("a".into()))
            .await
            .unwrap();
        for piece in body.chunks(64 * 1024) {
            fill.push(Bytes::copy_from_slice(piece)).await.unwrap();
        }
        fill.publish();
        // Before the commit: the window holds the newest bytes, the file the rest.
        let received = handle.progress.borrow().received;
        assert_eq!(received, body.len() as u64);
        let verifier = tokio::task::spawn_blocking({
            let handle = handle.clone();
            move || handle.hash_prefix(received, DigestAlgorithm::Sha256)
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!(verifier.finish(), digest);
        let mut out = VecDeque::new();
        let at = body.len() as u64 - 100;
        assert_eq!(handle.take_recent(at, 1000, &mut out), Ok(100));
        let tail: Vec<u8> = out.iter().flat_map(|b| b.iter().copied()).collect();
        assert_eq!(tail, body[at as usize..]);
        fill.commit().await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), body);
    }
}
