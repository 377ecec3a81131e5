//! Turning bytes into a committed cache file: write to a temporary file while hashing,
//! check size and digest, fsync, rename into place, fsync the directory. A file under its
//! final name therefore always matches its digest; an unfinished fill leaves only `tmp/` litter.

use super::layout::Layout;
use crate::oci::{Digest, DigestVerifier};
use bytes::Bytes;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
    verifier: Option<DigestVerifier>,
    written: u64,
    finished: bool,
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
            verifier: Some(DigestVerifier::new(digest.algorithm())),
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

    /// Hashes and writes `chunk` at the end of the file, off the async threads.
    pub async fn append(&mut self, chunk: Bytes) -> io::Result<u64> {
        let file = self.file.clone();
        let offset = self.written;
        let mut verifier = self
            .verifier
            .take()
            .ok_or_else(|| io::Error::other("writer used after a failed append"))?;
        let (verifier, result) = tokio::task::spawn_blocking(move || {
            verifier.update(&chunk);
            let result = file
                .write_all_at(&chunk, offset)
                .map(|()| chunk.len() as u64);
            (verifier, result)
        })
        .await
        .map_err(|e| io::Error::other(format!("cache write task failed: {e}")))?;
        let len = result?;
        self.verifier = Some(verifier);
        self.written += len;
        Ok(self.written)
    }

    /// Verifies size and digest, then fsyncs and renames into place. On any failure the
    /// temporary file is removed and nothing appears under the final name.
    pub async fn commit(
        &mut self,
        expected: &Digest,
        expected_size: Option<u64>,
    ) -> Result<(), CommitError> {
        if self.finished {
            return Err(io::Error::other("writer already committed").into());
        }
        let verifier = self
            .verifier
            .clone()
            .ok_or_else(|| io::Error::other("writer used after a failed append"))?;
        if let Some(expected_size) = expected_size
            && expected_size != self.written
        {
            return Err(CommitError::SizeMismatch {
                expected: expected_size,
                actual: self.written,
            });
        }
        let actual = verifier.finish();
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
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if !self.finished {
            let _ = std::fs::remove_file(&self.temporary_path);
        }
    }
}

impl BlobWriter {
    /// Empties the temporary file and restarts the hash, keeping the same file (readers
    /// holding it stay attached), so a fill can start over from another upstream.
    pub async fn reset(&mut self, algorithm: crate::oci::DigestAlgorithm) -> io::Result<()> {
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || file.set_len(0))
            .await
            .map_err(|e| io::Error::other(format!("cache truncate task failed: {e}")))??;
        self.verifier = Some(DigestVerifier::new(algorithm));
        self.written = 0;
        Ok(())
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
        writer.reset(digest.algorithm()).await.unwrap();
        writer
            .append(Bytes::from_static(b"hello world"))
            .await
            .unwrap();
        writer.commit(&digest, Some(11)).await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"hello world");
    }
}
