//! Reading blob bytes back for a client. A committed file is read in large chunks with
//! positional reads on the blocking pool, one chunk read ahead while the previous one is sent.
//! A fill still arriving is read from memory while its bytes are recent and from its file
//! once they are older, waiting on the fill's progress and failing if the fill fails.

use super::fill::{ContentError, FillHandle, FillPhase};
use bytes::Bytes;
use futures_util::Stream;
use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use tokio::task::JoinHandle;

/// Why a reader of a fill stopped: the fill failed. `cache_failure` tells a cache-side
/// failure (the reader may continue from upstream) from bad upstream bytes.
#[derive(Debug, thiserror::Error)]
#[error("blob fill failed: {message}")]
pub(crate) struct FillFailed {
    pub(crate) cache_failure: bool,
    pub(crate) message: String,
}

/// Bytes read per trip to the blocking pool (and handed out of a fill's memory at once).
pub(crate) const READ_CHUNK: usize = 512 * 1024;

struct FileReadState {
    file: Arc<File>,
    /// Next byte to hand to the client.
    offset: u64,
    /// Exclusive end.
    end: u64,
    /// A read of the chunk starting at `offset`, started while the previous chunk was sent.
    read_ahead: Option<JoinHandle<io::Result<Bytes>>>,
}

/// Streams `[start, end)` of a committed `file`.
pub(crate) fn read_range(
    file: Arc<File>,
    start: u64,
    end: u64,
) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    let state = FileReadState {
        file,
        offset: start,
        end,
        read_ahead: None,
    };
    futures_util::stream::try_unfold(state, |mut state| async move {
        if state.offset >= state.end {
            return Ok(None);
        }
        let chunk = match state.read_ahead.take() {
            Some(read) => join_read(read).await?,
            None => match read_if_in_memory(&state.file, state.offset, state.end) {
                // Hot file: no trip to the blocking pool, no read-ahead needed.
                Some(chunk) => chunk?,
                None => {
                    let chunk = join_read(spawn_read(&state.file, state.offset, state.end)).await?;
                    // Cold file: read the next chunk from disk while this one is sent.
                    let next = state.offset + chunk.len() as u64;
                    if !chunk.is_empty() && next < state.end {
                        state.read_ahead = Some(spawn_read(&state.file, next, state.end));
                    }
                    chunk
                }
            },
        };
        if chunk.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "cached file is shorter than expected",
            ));
        }
        state.offset += chunk.len() as u64;
        Ok(Some((chunk, state)))
    })
}

struct FillReadState<E> {
    fill: Arc<FillHandle<E>>,
    progress: tokio::sync::watch::Receiver<super::fill::FillProgress<E>>,
    /// Next byte to hand out (queued bytes included).
    offset: u64,
    /// Exclusive end; `None` = until the fill has every byte (length not announced).
    end: Option<u64>,
    /// Bytes the fill has shown so far.
    readable_end: u64,
    /// The fill has every byte, verified: no more waiting.
    all_received: bool,
    /// Slices of the fill's memory not yet handed out.
    queued: VecDeque<Bytes>,
}

/// Streams `[start, end)` of a fill in progress: waits for bytes, ends when the fill has
/// them all, fails if the fill fails.
pub(crate) fn read_fill<E: ContentError>(
    fill: Arc<FillHandle<E>>,
    start: u64,
    end: Option<u64>,
) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    let state = FillReadState {
        progress: fill.progress.clone(),
        fill,
        offset: start,
        end,
        readable_end: 0,
        all_received: false,
        queued: VecDeque::new(),
    };
    futures_util::stream::try_unfold(state, |mut state| async move {
        if let Some(chunk) = state.queued.pop_front() {
            return Ok(Some((chunk, state)));
        }
        if state.end.is_some_and(|end| state.offset >= end) {
            return Ok(None);
        }
        if state.offset >= state.readable_end
            && (state.all_received || !state.wait_for_bytes().await?)
        {
            if state.end.is_some_and(|end| end > state.offset) {
                return Err(io::Error::other(
                    "blob fill completed short of the requested range",
                ));
            }
            return Ok(None);
        }
        let limit = state.end.unwrap_or(u64::MAX).min(state.readable_end);
        let want = (limit - state.offset).min(READ_CHUNK as u64);
        let chunk = match state
            .fill
            .take_recent(state.offset, want, &mut state.queued)
        {
            Ok(_) => match state.queued.pop_front() {
                Some(chunk) => chunk,
                None => return Err(io::Error::other("blob fill lost bytes it had shown")),
            },
            // Older bytes: the file holds everything before `in_file`.
            Err(in_file) => {
                let to = limit.min(in_file);
                match read_if_in_memory(&state.fill.file, state.offset, to) {
                    Some(chunk) => chunk?,
                    None => join_read(spawn_read(&state.fill.file, state.offset, to)).await?,
                }
            }
        };
        if chunk.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "blob fill file is shorter than its progress",
            ));
        }
        state.offset +=
            chunk.len() as u64 + state.queued.iter().map(|b| b.len() as u64).sum::<u64>();
        Ok(Some((chunk, state)))
    })
}

impl<E: ContentError> FillReadState<E> {
    /// Waits until the fill has bytes beyond `offset`. `Ok(false)` = the blob ended here.
    async fn wait_for_bytes(&mut self) -> io::Result<bool> {
        let offset = self.offset;
        let snapshot = self
            .progress
            .wait_for(|p| {
                p.readable() > offset || p.all_received() || matches!(p.phase, FillPhase::Failed(_))
            })
            .await
            .map_err(|_| io::Error::other("blob fill ended without a result"))?
            .clone();
        if let FillPhase::Failed(error) = snapshot.phase {
            return Err(io::Error::other(FillFailed {
                cache_failure: matches!(error, super::fill::FillFailure::Cache(_)),
                message: error.to_string(),
            }));
        }
        self.all_received = snapshot.all_received();
        self.readable_end = snapshot.readable();
        Ok(self.readable_end > offset)
    }
}

/// Reads up to one chunk at `offset`, short of `end`, right here, if the kernel has those
/// bytes in its page cache (`preadv2` with `RWF_NOWAIT` never waits for the disk): a hot
/// file is then served without a trip to the blocking pool. `None`: go to the blocking pool.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn read_if_in_memory(file: &File, offset: u64, end: u64) -> Option<io::Result<Bytes>> {
    let want = end.saturating_sub(offset).min(READ_CHUNK as u64) as usize;
    let mut buffer: Vec<u8> = Vec::with_capacity(want);
    let iov = libc::iovec {
        iov_base: buffer.as_mut_ptr().cast::<libc::c_void>(),
        iov_len: want,
    };
    // SAFETY: the one iovec covers the vector's spare capacity of `want` bytes; `set_len`
    // below only covers the bytes the kernel reports as read.
    let n = unsafe {
        libc::preadv2(
            file.as_raw_fd(),
            &iov,
            1,
            offset as libc::off_t,
            libc::RWF_NOWAIT,
        )
    };
    if n <= 0 {
        // EAGAIN (not cached), EOPNOTSUPP (old kernel or file system), or an error that
        // the blocking read will report properly.
        return None;
    }
    // SAFETY: the kernel initialised the first `n` bytes.
    unsafe { buffer.set_len(n as usize) };
    Some(Ok(Bytes::from(buffer)))
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn read_if_in_memory(_file: &File, _offset: u64, _end: u64) -> Option<io::Result<Bytes>> {
    None
}

/// Reads up to one chunk at `offset`, short of `end`.
fn spawn_read(file: &Arc<File>, offset: u64, end: u64) -> JoinHandle<io::Result<Bytes>> {
    let want = end.saturating_sub(offset).min(READ_CHUNK as u64) as usize;
    let file = file.clone();
    tokio::task::spawn_blocking(move || read_at_most(&file, offset, want))
}

async fn join_read(read: JoinHandle<io::Result<Bytes>>) -> io::Result<Bytes> {
    read.await
        .map_err(|e| io::Error::other(format!("cache read task failed: {e}")))?
}

/// Reads up to `want` bytes at `offset` into a fresh buffer without zeroing it first.
fn read_at_most(file: &File, offset: u64, want: usize) -> io::Result<Bytes> {
    let mut buffer: Vec<u8> = Vec::with_capacity(want);
    while buffer.len() < want {
        let filled = buffer.len();
        // SAFETY: pread writes at most `want - filled` bytes into the vector's spare
        // capacity, which is at least that large; `set_len` below only covers the bytes
        // it reports as written.
        let n = unsafe {
            libc::pread(
                file.as_raw_fd(),
                buffer.as_mut_ptr().add(filled).cast::<libc::c_void>(),
                want - filled,
                (offset + filled as u64) as libc::off_t,
            )
        };
        if n < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error);
        }
        if n == 0 {
            break;
        }
        // SAFETY: the kernel initialised `n` more bytes right after the `filled` ones.
        unsafe { buffer.set_len(filled + n as usize) };
    }
    Ok(Bytes::from(buffer))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::{BlobFill, Layout, LruIndex};

    type TestError = std::sync::Arc<io::Error>;
    type TestFill = BlobFill<TestError>;
    use crate::oci::Digest;
    use futures_util::StreamExt;
    use std::time::Duration;

    /// A fill that has received all of `body` (larger than what is held until verified),
    /// not yet checked.
    async fn received_but_unverified(
        dir: &tempfile::TempDir,
        body: &[u8],
    ) -> (TestFill, Arc<FillHandle<TestError>>) {
        let layout = Layout::create(dir.path()).unwrap();
        let root = dir.path().to_path_buf();
        let index = Arc::new(LruIndex::new(None, move |d| {
            Layout::blob_path_under(&root, d)
        }));
        let digest = Digest::sha256_of(body);
        let path = layout.blob_path(&digest);
        let mut fill = TestFill::create(&layout, &digest, &path, index).unwrap();
        fill.begin(
            Some(body.len() as u64),
            crate::cache::FillOrigin::Upstream("test".into()),
        )
        .await
        .unwrap();
        for piece in body.chunks(100_000) {
            fill.push(Bytes::copy_from_slice(piece)).await.unwrap();
        }
        fill.publish();
        let handle = fill.handle();
        (fill, handle)
    }

    async fn bytes_before_stall(
        stream: &mut (impl Stream<Item = io::Result<Bytes>> + Unpin),
    ) -> Vec<u8> {
        let mut got = Vec::new();
        while let Ok(Some(chunk)) =
            tokio::time::timeout(Duration::from_millis(200), stream.next()).await
        {
            got.extend_from_slice(&chunk.unwrap());
        }
        got
    }

    fn body(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    #[tokio::test]
    async fn the_last_byte_waits_for_verification_and_a_failed_fill_cuts_the_body() {
        let dir = tempfile::tempdir().unwrap();
        let body = body(6 * 1024 * 1024 + 10);
        let len = body.len() as u64;
        let (fill, handle) = received_but_unverified(&dir, &body).await;
        let mut stream = Box::pin(read_fill(handle, 0, Some(len)));
        let got = bytes_before_stall(&mut stream).await;
        assert_eq!(got.len() as u64, len - 1, "last byte held");
        assert_eq!(
            got,
            body[..body.len() - 1],
            "bytes from memory and file, in order"
        );
        fill.announce_failure(crate::cache::FillFailure::Content(std::sync::Arc::new(
            io::Error::other("digest mismatch"),
        )));
        let end = stream.next().await.expect("an error, not a clean end");
        assert!(end.is_err(), "a body whose digest failed must be cut");
    }

    #[tokio::test]
    async fn the_last_byte_follows_the_digest_check() {
        let dir = tempfile::tempdir().unwrap();
        let body = body(2 * 1024 * 1024);
        let len = body.len() as u64;
        let (mut fill, handle) = received_but_unverified(&dir, &body).await;
        let mut stream = Box::pin(read_fill(handle.clone(), 0, Some(len)));
        assert_eq!(bytes_before_stall(&mut stream).await.len() as u64, len - 1);
        fill.commit().await.unwrap();
        let last = stream.next().await.unwrap().unwrap();
        assert_eq!(last.len(), 1);
        assert!(stream.next().await.is_none());

        // A range that stops short of the blob's end is not held back.
        let dir = tempfile::tempdir().unwrap();
        let (_fill, handle) = received_but_unverified(&dir, &body).await;
        let mut stream = Box::pin(read_fill(handle, 0, Some(500)));
        assert_eq!(bytes_before_stall(&mut stream).await, body[..500]);
    }
}
