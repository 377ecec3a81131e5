//! Turning bytes into a committed cache file: write to a temporary file while hashing,
//! check size and digest, fsync, rename into place, fsync the directory. A file under its
//! final name therefore always matches its digest; an unfinished fill leaves only `tmp/` litter.

use super::layout::Layout;
use crate::oci::{Digest, DigestAlgorithm, DigestVerifier};
use bytes::Bytes;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error("content hashes to {actual}, expected {expected}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("content is {actual} bytes, expected {expected}")]
    SizeMismatch { expected: u64, actual: u64 },
    #[error("cache I/O failed: {0}")]
    Io(#[from] io::Error),
}

/// A fill in progress: a temporary file plus the running hash of what was written.
/// Dropping it without `commit` removes the temporary file.
pub struct BlobWriter {
    file: Arc<File>,
    temporary_path: PathBuf,
    final_path: PathBuf,
    /// Shared with the one write in flight; hashing happens on the blocking pool with the write.
    verifier: Arc<Mutex<DigestVerifier>>,
    algorithm: DigestAlgorithm,
    /// Bytes handed to `submit` so far.
    submitted: u64,
    /// Bytes known to be in the file (completed writes).
    written: u64,
    finished: bool,
}

/// One write (and its hashing) on the blocking pool; finish it with [`BlobWriter::complete`].
pub struct PendingWrite {
    hash: tokio::task::JoinHandle<()>,
    write: tokio::task::JoinHandle<io::Result<u64>>,
}

impl BlobWriter {
    pub fn create(layout: &Layout, digest: &Digest, final_path: &Path) -> io::Result<BlobWriter> {
        let temporary_path = layout.temporary_path(&digest.hex()[..16]);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&temporary_path)?;
        Ok(BlobWriter {
            file: Arc::new(file),
            temporary_path,
            final_path: final_path.to_path_buf(),
            verifier: Arc::new(Mutex::new(DigestVerifier::new(digest.algorithm()))),
            algorithm: digest.algorithm(),
            submitted: 0,
            written: 0,
            finished: false,
        })
    }

    /// A handle readers can `pread` from while the file grows (and after it is renamed).
    pub fn file(&self) -> Arc<File> {
        self.file.clone()
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    /// Starts hashing and writing `chunks` (in order) at the end of the file on the blocking pool, so
    /// the caller can read the next chunk from the network meanwhile. At most one write
    /// may be in flight: `complete` it before the next `submit`.
    pub fn submit(&mut self, chunks: Vec<Bytes>) -> PendingWrite {
        let chunks = Arc::new(chunks);
        let start = self.submitted;
        self.submitted += chunks.iter().map(|c| c.len() as u64).sum::<u64>();
        // Hashing and writing read the same chunks on two blocking threads at once.
        let verifier = self.verifier.clone();
        let to_hash = chunks.clone();
        let hash = tokio::task::spawn_blocking(move || {
            // A poisoned lock means an earlier hash panicked; the digest check at commit
            // reveals any damage, so carry on.
            let mut verifier = verifier.lock().unwrap_or_else(|p| p.into_inner());
            for chunk in to_hash.iter() {
                verifier.update(chunk);
            }
        });
        let file = self.file.clone();
        let write = tokio::task::spawn_blocking(move || {
            let mut offset = start;
            for chunk in chunks.iter() {
                file.write_all_at(chunk, offset)?;
                offset += chunk.len() as u64;
            }
            start_writeback(&file, start, offset - start);
            Ok(offset)
        });
        PendingWrite { hash, write }
    }

    /// Reserves `len` bytes of disk for the file (its length stays as written). A file
    /// system without `fallocate` is not an error; running out of space is.
    pub async fn preallocate(&self, len: u64) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || {
            // SAFETY: fallocate only reads its integer arguments; the descriptor stays open
            // while `file` lives.
            let result = unsafe {
                libc::fallocate(
                    file.as_raw_fd(),
                    libc::FALLOC_FL_KEEP_SIZE,
                    0,
                    len as libc::off_t,
                )
            };
            if result == 0 {
                return Ok(());
            }
            let error = io::Error::last_os_error();
            match error.raw_os_error() {
                Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => Ok(()),
                _ => Err(error),
            }
        })
        .await
        .map_err(|e| io::Error::other(format!("cache preallocation task failed: {e}")))?
    }

    /// Waits for a submitted write; returns how many bytes the file now holds.
    pub async fn complete(&mut self, pending: PendingWrite) -> io::Result<u64> {
        let end = pending.wait().await?;
        self.record_written(end);
        Ok(end)
    }

    /// Records that a write waited on with [`PendingWrite::wait`] ended at `end`.
    pub fn record_written(&mut self, end: u64) {
        self.written = end;
    }

    /// Hashes and writes `chunk`, waiting for it.
    pub async fn append(&mut self, chunk: Bytes) -> io::Result<u64> {
        let pending = self.submit(vec![chunk]);
        self.complete(pending).await
    }

    /// Verifies size and digest, then fsyncs and renames into place. On failure nothing
    /// appears under the final name, and the writer may be `reset` and reused.
    pub async fn commit(
        &mut self,
        expected: &Digest,
        expected_size: Option<u64>,
    ) -> Result<(), CommitError> {
        if self.finished {
            return Err(io::Error::other("writer already committed").into());
        }
        if self.submitted != self.written {
            return Err(io::Error::other("commit with a write still in flight").into());
        }
        if let Some(expected_size) = expected_size
            && expected_size != self.written
        {
            return Err(CommitError::SizeMismatch {
                expected: expected_size,
                actual: self.written,
            });
        }
        let actual = self
            .verifier
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .finish();
        if actual != *expected {
            return Err(CommitError::DigestMismatch {
                expected: expected.clone(),
                actual,
            });
        }
        let file = self.file.clone();
        let temporary_path = self.temporary_path.clone();
        let final_path = self.final_path.clone();
        tokio::task::spawn_blocking(move || -> io::Result<()> {
            file.sync_all()?;
            rename_durably(&temporary_path, &final_path)
        })
        .await
        .map_err(|e| io::Error::other(format!("cache commit task failed: {e}")))??;
        self.finished = true;
        Ok(())
    }

    /// Empties the temporary file and restarts the hash, keeping the same file (readers
    /// holding it stay attached), so a fill can start over from another upstream.
    /// No write may be in flight.
    pub async fn reset(&mut self) -> io::Result<()> {
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || file.set_len(0))
            .await
            .map_err(|e| io::Error::other(format!("cache truncate task failed: {e}")))??;
        *self.verifier.lock().unwrap_or_else(|p| p.into_inner()) =
            DigestVerifier::new(self.algorithm);
        self.submitted = 0;
        self.written = 0;
        Ok(())
    }
}

/// Asks the kernel to start writing `[offset, offset + len)` to disk now, without waiting,
/// so the fsync at commit finds little left to do. Only a hint: errors are ignored (the
/// fsync reports any real one).
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    if len == 0 {
        return;
    }
    // SAFETY: sync_file_range only reads its integer arguments; the descriptor is open for
    // as long as `file` is borrowed.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if !self.finished {
            let _ = std::fs::remove_file(&self.temporary_path);
        }
    }
}

impl PendingWrite {
    /// Waits for the write and its hashing; returns the file length after it.
    pub async fn wait(self) -> io::Result<u64> {
        let task_failed =
            |e: tokio::task::JoinError| io::Error::other(format!("cache write task failed: {e}"));
        let end = self.write.await.map_err(task_failed)??;
        self.hash.await.map_err(task_failed)?;
        Ok(end)
    }
}

/// Renames `from` to `to` (creating `to`'s directory) and fsyncs the directory, so the
/// rename survives a power loss.
fn rename_durably(from: &Path, to: &Path) -> io::Result<()> {
    let parent = to
        .parent()
        .ok_or_else(|| io::Error::other("cache path has no parent directory"))?;
    std::fs::create_dir_all(parent)?;
    std::fs::rename(from, to)?;
    File::open(parent)?.sync_all()
}

/// Writes a small file (tag record, media type) atomically: temporary file, fsync, rename.
pub async fn write_file_atomically(layout: &Layout, path: &Path, content: Bytes) -> io::Result<()> {
    let temporary_path = layout.temporary_path("meta");
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || -> io::Result<()> {
        let result = (|| {
            let file = File::create(&temporary_path)?;
            file.write_all_at(&content, 0)?;
            file.sync_all()?;
            rename_durably(&temporary_path, &path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&temporary_path);
        }
        result
    })
    .await
    .map_err(|e| io::Error::other(format!("cache write task failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, Layout) {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::create(dir.path()).unwrap();
        (dir, layout)
    }

    #[tokio::test]
    async fn commits_only_matching_content() {
        let (_dir, layout) = setup();
        let digest = Digest::sha256_of(b"hello world");
        let path = layout.blob_path(&digest);
        let mut writer = BlobWriter::create(&layout, &digest, &path).unwrap();
        writer.append(Bytes::from_static(b"hello ")).await.unwrap();
        writer.append(Bytes::from_static(b"world")).await.unwrap();
        writer.commit(&digest, Some(11)).await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"hello world");
        assert_eq!(std::fs::read_dir(layout.tmp_dir()).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn mismatch_leaves_nothing_behind() {
        let (_dir, layout) = setup();
        let digest = Digest::sha256_of(b"hello world");
        let path = layout.blob_path(&digest);
        let mut writer = BlobWriter::create(&layout, &digest, &path).unwrap();
        writer
            .append(Bytes::from_static(b"hello WORLD"))
            .await
            .unwrap();
        let err = writer.commit(&digest, Some(11)).await.unwrap_err();
        assert!(matches!(err, CommitError::DigestMismatch { .. }), "{err}");
        assert!(!path.exists());
        drop(writer);
        assert_eq!(std::fs::read_dir(layout.tmp_dir()).unwrap().count(), 0);

        let mut writer = BlobWriter::create(&layout, &digest, &path).unwrap();
        writer.append(Bytes::from_static(b"hello")).await.unwrap();
        let err = writer.commit(&digest, Some(11)).await.unwrap_err();
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
        assert!(!path.exists());

        // After a reset the same writer can take the right bytes and commit.
        writer.reset().await.unwrap();
        writer
            .append(Bytes::from_static(b"hello world"))
            .await
            .unwrap();
        writer.commit(&digest, Some(11)).await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"hello world");
    }
}
