//! Putting files in place durably: a temporary file under `tmp/` (removed unless kept), fsync,
//! rename into place, fsync of the directory. A file under its final name is therefore always
//! complete and, for content-addressed files, matches its digest.

use super::layout::Layout;
use crate::oci::Digest;
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

/// A file under `tmp/`, open for reading and writing; removed when dropped unless `keep`
/// says it was renamed into place.
pub(crate) struct TemporaryFile {
    file: Arc<File>,
    path: PathBuf,
    kept: bool,
}

impl TemporaryFile {
    pub(crate) fn create(layout: &Layout, label: &str) -> io::Result<TemporaryFile> {
        let path = layout.temporary_path(label);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok(TemporaryFile {
            file: Arc::new(file),
            path,
            kept: false,
        })
    }

    /// A handle readers can `pread` from while the file grows (and after it is renamed).
    pub(crate) fn file(&self) -> Arc<File> {
        self.file.clone()
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The file was renamed into place: do not remove it.
    pub(crate) fn keep(&mut self) {
        self.kept = true;
    }
}

impl Drop for TemporaryFile {
    fn drop(&mut self) {
        if !self.kept {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Reserves `len` bytes of disk for `file` (its length stays as written). A file system
/// without `fallocate` is not an error; running out of space is.
#[cfg(target_os = "linux")]
pub(crate) fn preallocate(file: &File, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: fallocate only reads its integer arguments; the descriptor stays open while
    // `file` is borrowed.
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
}

/// Without `fallocate` (macOS, the BSDs) nothing is reserved up front: the disk fills as the
/// bytes are written, and running out of space is reported by the write or the fsync.
#[cfg(not(target_os = "linux"))]
pub(crate) fn preallocate(_file: &File, _len: u64) -> io::Result<()> {
    Ok(())
}

/// Asks the kernel to start writing `[offset, offset + len)` to disk now, without waiting,
/// so the fsync at commit finds little left to do. Only a hint: errors are ignored (the
/// fsync reports any real one).
#[cfg(target_os = "linux")]
pub(crate) fn start_writeback(file: &File, offset: u64, len: u64) {
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

/// Without `sync_file_range` (macOS, the BSDs) there is no early writeback: the fsync at
/// commit writes everything.
#[cfg(not(target_os = "linux"))]
pub(crate) fn start_writeback(_file: &File, _offset: u64, _len: u64) {}

/// Renames `from` to `to` (creating `to`'s directory) and fsyncs the directory, so the
/// rename survives a power loss.
pub(crate) fn rename_durably(from: &Path, to: &Path) -> io::Result<()> {
    let parent = to
        .parent()
        .ok_or_else(|| io::Error::other("cache path has no parent directory"))?;
    std::fs::create_dir_all(parent)?;
    std::fs::rename(from, to)?;
    File::open(parent)?.sync_all()
}

/// Writes a small file (manifest, tag record, media type) atomically: temporary file, fsync,
/// rename.
pub(crate) async fn write_file_atomically(
    layout: &Layout,
    path: &Path,
    content: Bytes,
) -> io::Result<()> {
    let temporary = TemporaryFile::create(layout, "meta")?;
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || -> io::Result<()> {
        let mut temporary = temporary;
        temporary.file.write_all_at(&content, 0)?;
        temporary.file.sync_all()?;
        rename_durably(&temporary.path, &path)?;
        temporary.keep();
        Ok(())
    })
    .await
    .map_err(|e| io::Error::other(format!("cache write task failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_atomic_write_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::create(dir.path()).unwrap();
        let path = dir.path().join("some/where/file");
        write_file_atomically(&layout, &path, Bytes::from_static(b"content"))
            .await
            .unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"content");
        assert_eq!(std::fs::read_dir(layout.tmp_dir()).unwrap().count(), 0);

        // A failed rename (the target is a directory) cleans up after itself too.
        std::fs::create_dir_all(dir.path().join("a/dir/x")).unwrap();
        let result =
            write_file_atomically(&layout, &dir.path().join("a/dir"), Bytes::from_static(b"x"))
                .await;
        assert!(result.is_err());
        assert_eq!(std::fs::read_dir(layout.tmp_dir()).unwrap().count(), 0);
    }
}
