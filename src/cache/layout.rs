//! Where everything lives under the cache directory. Paths are built only from validated
//! digests and hashes, so no request can name a path outside the cache.
//!
//! `blobs/<alg>/<2 hex>/<hex>`, `manifests/<alg>/<2 hex>/<hex>` (+ `.type`), `tags/<2 hex>/<hash>.json`,
//! `referrers/<2 hex>/<hash>.json`, `tmp/`; and the one walk over the content files.

use crate::oci::{Digest, DigestAlgorithm};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug)]
pub struct Layout {
    root: PathBuf,
    next_temporary: AtomicU64,
}

impl Layout {
    pub fn create(root: &Path) -> io::Result<Layout> {
        for sub in ["blobs", "manifests", "tags", "tmp", "quarantine"] {
            std::fs::create_dir_all(root.join(sub))?;
        }
        Ok(Layout {
            root: root.to_path_buf(),
            next_temporary: AtomicU64::new(0),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The blob path under `root`, for code that holds only the root (eviction).
    pub fn blob_path_under(root: &Path, digest: &Digest) -> PathBuf {
        root.join("blobs")
            .join(digest.algorithm().as_str())
            .join(&digest.hex()[..2])
            .join(digest.hex())
    }

    fn content_path(&self, kind: &str, digest: &Digest) -> PathBuf {
        self.root
            .join(kind)
            .join(digest.algorithm().as_str())
            .join(&digest.hex()[..2])
            .join(digest.hex())
    }

    pub(crate) fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.content_path("blobs", digest)
    }

    pub(crate) fn manifest_path(&self, digest: &Digest) -> PathBuf {
        self.content_path("manifests", digest)
    }

    pub(crate) fn manifest_type_path(&self, digest: &Digest) -> PathBuf {
        let mut path = self.manifest_path(digest).into_os_string();
        path.push(".type");
        PathBuf::from(path)
    }

    pub(crate) fn tags_dir(&self) -> PathBuf {
        self.root.join("tags")
    }

    pub fn referrers_dir(&self) -> PathBuf {
        self.root.join("referrers")
    }

    pub(crate) fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// A fresh, unique temporary file path (process id + counter; the directory is swept at start).
    pub(crate) fn temporary_path(&self, label: &str) -> PathBuf {
        let n = self.next_temporary.fetch_add(1, Ordering::Relaxed);
        self.tmp_dir()
            .join(format!("{}-{n}-{label}", std::process::id()))
    }

    /// Removes everything in `tmp/`: fills that a crash or kill left unfinished.
    pub(crate) fn sweep_temporary_files(&self) -> io::Result<usize> {
        let mut removed = 0;
        for entry in std::fs::read_dir(self.tmp_dir())? {
            let entry = entry?;
            if std::fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// A file of content under `blobs/` or `manifests/`.
#[derive(Debug, Clone)]
pub(crate) struct ContentFile {
    pub(crate) digest: Digest,
    pub(crate) path: PathBuf,
    pub(crate) size: u64,
    pub(crate) modified: std::time::SystemTime,
    pub(crate) is_manifest: bool,
}

/// The SHA-256 of a record's key parts: its file's name, and its entry in the size bound.
pub(crate) fn record_digest(parts: &[&[u8]]) -> Digest {
    use sha2::Digest as _;
    let mut hasher = sha2::Sha256::new();
    for part in parts {
        hasher.update(part);
    }
    Digest::from_sha256_bytes(hasher.finalize().into())
}

/// Where the small JSON record named by `digest` (see [`record_digest`]) lives under `dir`:
/// `<dir>/<2 hex>/<hash>.json`, so any key maps to a fixed-shape path inside the cache. Tag
/// records and referrers lists both use it.
pub(crate) fn record_path_of(dir: &Path, digest: &Digest) -> PathBuf {
    let stem = digest.hex();
    dir.join(&stem[..2]).join(format!("{stem}.json"))
}

/// A record file (`<dir>/<2 hex>/<hash>.json`) found on disk.
pub(crate) struct RecordFile {
    pub(crate) digest: Digest,
    pub(crate) size: u64,
    pub(crate) modified: std::time::SystemTime,
}

/// Every record file under `dir` (tag records, referrers lists); strays are skipped.
pub(crate) fn record_files(dir: &Path) -> io::Result<Vec<RecordFile>> {
    Ok(digest_named_files(dir, DigestAlgorithm::Sha256, ".json")?
        .into_iter()
        .map(|file| RecordFile {
            digest: file.digest,
            size: file.size,
            modified: file.modified,
        })
        .collect())
}

/// A file under `<dir>/<2 hex>/` whose name is a digest's hex (plus a suffix).
struct NamedFile {
    digest: Digest,
    path: PathBuf,
    size: u64,
    modified: std::time::SystemTime,
}

/// The one walk of a `<dir>/<2 hex>/<hex><suffix>` tree: files whose names are not such a
/// digest (sidecars, strays) are skipped, and so are files removed while it runs.
fn digest_named_files(
    dir: &Path,
    algorithm: DigestAlgorithm,
    suffix: &str,
) -> io::Result<Vec<NamedFile>> {
    let mut files = Vec::new();
    let Some(prefixes) = skip_vanished(std::fs::read_dir(dir))? else {
        return Ok(files);
    };
    for prefix in prefixes {
        let Some(entries) = skip_vanished(std::fs::read_dir(prefix?.path()))? else {
            continue;
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            let Some(digest) = name
                .to_str()
                .and_then(|n| n.strip_suffix(suffix))
                .and_then(|hex| {
                    format!("{}:{hex}", algorithm.as_str())
                        .parse::<Digest>()
                        .ok()
                })
            else {
                continue;
            };
            let Some(metadata) = skip_vanished(entry.metadata())? else {
                continue;
            };
            files.push(NamedFile {
                digest,
                path: entry.path(),
                size: metadata.len(),
                modified: metadata.modified().unwrap_or(std::time::UNIX_EPOCH),
            });
        }
    }
    Ok(files)
}

/// `None` for something removed meanwhile; other errors stay errors.
fn skip_vanished<T>(result: io::Result<T>) -> io::Result<Option<T>> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Every blob and manifest file under `root` whose name is its digest: the one walk of the
/// content tree that the startup scan, `ls`, `du`, `gc` and `verify` share. Files removed
/// while the walk runs (eviction, gc) are skipped; other I/O errors are returned.
pub(crate) fn content_files(root: &Path) -> io::Result<Vec<ContentFile>> {
    let mut files = Vec::new();
    for (kind, is_manifest) in [("blobs", false), ("manifests", true)] {
        for algorithm in [DigestAlgorithm::Sha256, DigestAlgorithm::Sha512] {
            // `<hex>.type` and `<hex>.from` sidecars are not content.
            let dir = root.join(kind).join(algorithm.as_str());
            files.extend(
                digest_named_files(&dir, algorithm, "")?
                    .into_iter()
                    .map(|file| ContentFile {
                        digest: file.digest,
                        path: file.path,
                        size: file.size,
                        modified: file.modified,
                        is_manifest,
                    }),
            );
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::create(dir.path()).unwrap();
        let digest: Digest =
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
                .parse()
                .unwrap();
        let path = layout.blob_path(&digest);
        assert!(path.starts_with(dir.path().join("blobs/sha256/e3")));
        assert!(
            layout
                .manifest_type_path(&digest)
                .to_string_lossy()
                .ends_with("b855.type")
        );
    }

    #[test]
    fn sweep_removes_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::create(dir.path()).unwrap();
        std::fs::write(layout.temporary_path("x"), b"partial").unwrap();
        std::fs::write(layout.temporary_path("y"), b"partial").unwrap();
        assert_eq!(layout.sweep_temporary_files().unwrap(), 2);
        assert_eq!(std::fs::read_dir(layout.tmp_dir()).unwrap().count(), 0);
    }
}
