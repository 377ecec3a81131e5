//! Reading blob bytes back for a client, in large chunks with positional reads on the
//! blocking pool: from a committed file, or from a file still being filled, waiting on the
//! fill's progress channel for more bytes and failing the stream if the fill fails.

use super::inflight::{FillPhase, FillProgress};
use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use tokio::sync::watch;

/// Bytes read per trip to the blocking pool.
pub const READ_CHUNK: usize = 256 * 1024;

struct ReadState {
    file: Arc<File>,
    offset: u64,
    /// Exclusive end; `None` = until the fill completes (length not announced).
    end: Option<u64>,
    progress: Option<watch::Receiver<FillProgress>>,
}

/// Streams `[start, end)` of `file`. With `progress`, the file is still growing: the stream
/// waits for bytes, ends when the fill completes, and fails if it fails.
pub fn read_range(
    file: Arc<File>,
    start: u64,
    end: Option<u64>,
    progress: Option<watch::Receiver<FillProgress>>,
) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    let state = ReadState {
        file,
        offset: start,
        end,
        progress,
    };
    futures_util::stream::try_unfold(state, |mut state| async move {
        if state.end.is_some_and(|end| state.offset >= end) {
            return Ok(None);
        }
        let readable_end = match &mut state.progress {
            None => state.end.unwrap_or(u64::MAX),
            Some(progress) => {
                let offset = state.offset;
                let snapshot = progress
                    .wait_for(|p| {
                        p.written > offset
                            || matches!(p.phase, FillPhase::Complete | FillPhase::Failed(_))
                    })
                    .await
                    .map_err(|_| io::Error::other("blob fill ended without a result"))?
                    .clone();
                match snapshot.phase {
                    FillPhase::Failed(error) => {
                        return Err(io::Error::other(format!("blob fill failed: {error}")));
                    }
                    FillPhase::Complete if snapshot.written <= offset => {
                        if state.end.is_some_and(|end| end > snapshot.written) {
                            return Err(io::Error::other(
                                "blob fill completed short of the requested range",
                            ));
                        }
                        return Ok(None);
                    }
                    _ => snapshot.written,
                }
            }
        };
        let want = state
            .end
            .unwrap_or(u64::MAX)
            .min(readable_end)
            .saturating_sub(state.offset)
            .min(READ_CHUNK as u64) as usize;
        let file = state.file.clone();
        let offset = state.offset;
        let chunk = tokio::task::spawn_blocking(move || -> io::Result<Bytes> {
            let mut buffer = BytesMut::zeroed(want);
            let mut filled = 0;
            while filled < want {
                match file.read_at(&mut buffer[filled..], offset + filled as u64) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            buffer.truncate(filled);
            Ok(buffer.freeze())
        })
        .await
        .map_err(|e| io::Error::other(format!("cache read task failed: {e}")))??;
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
        Ok(Some((chunk, state)))
    })
}
