//! Reading blob bytes back for a client, in large chunks with positional reads on the
//! blocking pool, one chunk read ahead while the previous one is sent: from a committed
//! file, or from a file still being filled, waiting on the fill's progress for more bytes
//! and failing the stream if the fill fails.

use super::inflight::{FillPhase, FillProgress};
use bytes::Bytes;
use futures_util::Stream;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Why a reader of a growing file stopped: the fill failed. `cache_failure` tells a
/// cache-side failure (the reader may continue from upstream) from bad upstream bytes.
#[derive(Debug, thiserror::Error)]
#[error("blob fill failed: {message}")]
pub struct FillFailed {
    pub cache_failure: bool,
    pub message: String,
}

/// Bytes read per trip to the blocking pool.
pub const READ_CHUNK: usize = 512 * 1024;

struct ReadState {
    file: Arc<File>,
    /// Next byte to hand to the client.
    offset: u64,
    /// Exclusive end; `None` = until the fill completes (length not announced).
    end: Option<u64>,
    /// Bytes known to be in the file (committed size, or the fill's published progress).
    readable_end: u64,
    progress: Option<watch::Receiver<FillProgress>>,
    /// A read of the chunk starting at `offset`, started while the previous chunk was sent.
    read_ahead: Option<JoinHandle<io::Result<Bytes>>>,
}

/// Streams `[start, end)` of `file`. With `progress`, the file is still growing: the stream
/// waits for bytes, ends when the fill completes, and fails if it fails.
pub fn read_range(
    file: Arc<File>,
    start: u64,
    end: Option<u64>,
    progress: Option<watch::Receiver<FillProgress>>,
) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    let readable_end = if progress.is_some() {
        0
    } else {
        end.unwrap_or(u64::MAX)
    };
    let state = ReadState {
        file,
        offset: start,
        end,
        readable_end,
        progress,
        read_ahead: None,
    };
    futures_util::stream::try_unfold(state, |mut state| async move {
        if state.end.is_some_and(|end| state.offset >= end) {
            return Ok(None);
        }
        if state.offset >= state.readable_end && !state.wait_for_bytes().await? {
            return Ok(None);
        }
        let chunk = match state.read_ahead.take() {
            Some(read) => join_read(read).await?,
            None => join_read(state.spawn_read(state.offset)).await?,
        };
        if chunk.is_empty() {
            if state.progress.is_none() && state.end.is_none() {
                return Ok(None);
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "cached file is shorter than expected",
            ));
        }
        state.offset += chunk.len() as u64;
        if state.offset < state.readable_end && state.end.is_none_or(|end| state.offset < end) {
            state.read_ahead = Some(state.spawn_read(state.offset));
        }
        Ok(Some((chunk, state)))
    })
}

impl ReadState {
    /// Waits until the fill has bytes beyond `offset`. `Ok(false)` = the blob ended here.
    async fn wait_for_bytes(&mut self) -> io::Result<bool> {
        let Some(progress) = &mut self.progress else {
            return Ok(false);
        };
        let offset = self.offset;
        let snapshot = progress
            .wait_for(|p| {
                p.readable() > offset
                    || matches!(p.phase, FillPhase::Complete | FillPhase::Failed(_))
            })
            .await
            .map_err(|_| io::Error::other("blob fill ended without a result"))?
            .clone();
        match snapshot.phase {
            FillPhase::Failed(error) => Err(io::Error::other(FillFailed {
                cache_failure: matches!(*error, crate::error::FerryError::Cache(_)),
                message: error.to_string(),
            })),
            FillPhase::Complete if snapshot.written <= offset => {
                if self.end.is_some_and(|end| end > snapshot.written) {
                    return Err(io::Error::other(
                        "blob fill completed short of the requested range",
                    ));
                }
                Ok(false)
            }
            _ => {
                self.readable_end = snapshot.readable();
                Ok(true)
            }
        }
    }

    /// Reads up to one chunk at `offset`, within what is known to be readable.
    fn spawn_read(&self, offset: u64) -> JoinHandle<io::Result<Bytes>> {
        let want = self
            .end
            .unwrap_or(u64::MAX)
            .min(self.readable_end)
            .saturating_sub(offset)
            .min(READ_CHUNK as u64) as usize;
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || read_at_most(&file, offset, want))
    }
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
    use futures_util::StreamExt;
    use std::io::Write as _;
    use std::time::Duration;

    /// A fill whose file already holds all `len` bytes, still unverified.
    fn written_but_unverified(
        len: u64,
    ) -> (
        Arc<File>,
        watch::Sender<FillProgress>,
        watch::Receiver<FillProgress>,
    ) {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&vec![7u8; len as usize]).unwrap();
        let (sender, receiver) = watch::channel(FillProgress {
            written: len,
            phase: FillPhase::Streaming {
                total: Some(len),
                upstream: "test".into(),
            },
        });
        (Arc::new(file), sender, receiver)
    }

    async fn bytes_before_stall(
        stream: &mut (impl Stream<Item = io::Result<Bytes>> + Unpin),
    ) -> u64 {
        let mut got = 0;
        while let Ok(Some(chunk)) =
            tokio::time::timeout(Duration::from_millis(200), stream.next()).await
        {
            got += chunk.unwrap().len() as u64;
        }
        got
    }

    #[tokio::test]
    async fn the_last_byte_waits_for_verification_and_a_failed_fill_cuts_the_body() {
        let len = READ_CHUNK as u64 * 2 + 10;
        let (file, progress, receiver) = written_but_unverified(len);
        let mut stream = Box::pin(read_range(file, 0, Some(len), Some(receiver)));
        assert_eq!(
            bytes_before_stall(&mut stream).await,
            len - 1,
            "last byte held"
        );
        progress.send_modify(|p| {
            p.phase = FillPhase::Failed(Arc::new(crate::error::FerryError::MidStream(
                "digest mismatch".into(),
            )))
        });
        let end = stream.next().await.expect("an error, not a clean end");
        assert!(end.is_err(), "a body whose digest failed must be cut");
    }

    #[tokio::test]
    async fn the_last_byte_follows_the_commit() {
        let len = 1000;
        let (file, progress, receiver) = written_but_unverified(len);
        let mut stream = Box::pin(read_range(file.clone(), 0, Some(len), Some(receiver)));
        assert_eq!(bytes_before_stall(&mut stream).await, len - 1);
        progress.send_modify(|p| p.phase = FillPhase::Complete);
        let last = stream.next().await.unwrap().unwrap();
        assert_eq!(last.len(), 1);
        assert!(stream.next().await.is_none());

        // A range that stops short of the blob's end is not held back.
        let (file, _progress, receiver) = written_but_unverified(len);
        let mut stream = Box::pin(read_range(file, 0, Some(500), Some(receiver)));
        assert_eq!(bytes_before_stall(&mut stream).await, 500);
    }
}
