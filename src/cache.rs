//! The content-addressed disk cache: where things live (`layout`), how a blob fill takes
//! bytes and commits them (`fill`), what a cache failure was (`failure`), files put in place durably (`writer`), one fill per
//! digest (`inflight`), reading bytes back, finished or still arriving (`reader`), tags, the last
//! referrers list per subject (`referrers`), and who vouched for each digest (`provenance`).

pub(crate) mod failure;
pub(crate) mod fill;
pub(crate) mod index;
pub(crate) mod inflight;
pub(crate) mod layout;
pub(crate) mod pins;
pub(crate) mod provenance;
pub(crate) mod reader;
pub(crate) mod referrers;
pub(crate) mod tags;
pub(crate) mod writer;

pub(crate) use failure::CacheFailure;
pub(crate) use fill::{
    BlobFill, ContentError, FillFailure, FillHandle, FillOrigin, FillPhase, FillProgress,
};
pub(crate) use index::{LruIndex, Usage};
pub(crate) use inflight::{Inflight, JoinOutcome};
pub use layout::Layout;
pub use tags::{TagKey, TagRecord, TagStore};
pub(crate) use writer::CommitError;

use crate::oci::Digest;
use std::io;
use std::path::Path;

/// Bytes of manifests kept in memory (they are small, immutable by digest, and asked for on
/// every pull, so a hit should not cost two file reads on the blocking pool).
const MANIFEST_MEMORY_BYTES: u64 = 16 * 1024 * 1024;

/// How stale a blob file's mtime may get before a hit refreshes it (recency for restarts).
const RECENCY_PERSIST_INTERVAL: std::time::Duration = std::time::Duration::from_secs(3600);

/// A committed manifest: its bytes and its media type.
#[derive(Debug, Clone)]
pub struct CachedManifest {
    pub(crate) digest: Digest,
    pub(crate) media_type: String,
    pub(crate) body: bytes::Bytes,
}

/// The whole cache: the directory layout, tag mappings and fills in progress. Its parts are
/// private: the pull flow, the admin API and the app use the methods below (the fill
/// lifecycle, records, provenance, pins and the size bound).
pub(crate) struct Cache<E> {
    /// Shared with fills started on the blocking pool (one counter names temporary files).
    layout: std::sync::Arc<Layout>,
    tags: TagStore,
    referrers: referrers::ReferrersStore,
    /// Which registries vouched for each digest (used only with `client_access` rules).
    provenance: provenance::Provenance,
    inflight: Inflight<E>,
    /// Sizes and recency of committed blobs; enforces `cache_size`.
    index: std::sync::Arc<LruIndex>,
    /// Recently used manifests, by digest (a copy of what is on disk).
    manifests: moka::sync::Cache<Digest, CachedManifest>,
    /// Fills abandoned because the cache could not take the bytes (disk full, I/O errors).
    write_failures: std::sync::atomic::AtomicU64,
    /// What is pinned now (`pins.json` and the pin keeper's holding).
    pins: std::sync::RwLock<pins::PinHolding>,
    /// Held open for the server's lifetime: its `flock` keeps a second server off this directory.
    _server_lock: std::fs::File,
}

impl<E: ContentError> Cache<E> {
    /// Opens (creating if needed) the cache at `root`, removes leftover temporary files
    /// from an earlier run, and takes the directory's lock so no second server shares it.
    pub(crate) fn open(root: &Path, size_limit: Option<u64>) -> io::Result<Cache<E>> {
        let layout = Layout::create(root)?;
        let server_lock = lock_exclusively(&root.join("server.lock"))?;
        let removed = layout.sweep_temporary_files()?;
        if removed > 0 {
            tracing::info!(
                removed,
                "removed leftover temporary files from an earlier run"
            );
        }
        let blobs_root = layout.root().to_path_buf();
        let index = std::sync::Arc::new(
            LruIndex::new(size_limit, move |digest| {
                Layout::blob_path_under(&blobs_root, digest)
            })
            .with_record_dirs(layout.tags_dir(), layout.referrers_dir()),
        );
        let tags = TagStore::new(layout.tags_dir()).counted_in(index.clone());
        let referrers =
            referrers::ReferrersStore::new(layout.referrers_dir()).counted_in(index.clone());
        Ok(Cache {
            layout: std::sync::Arc::new(layout),
            tags,
            referrers,
            provenance: Default::default(),
            inflight: Inflight::default(),
            index,
            manifests: moka::sync::Cache::builder()
                .max_capacity(MANIFEST_MEMORY_BYTES)
                .weigher(|_, manifest: &CachedManifest| {
                    (manifest.body.len() + manifest.media_type.len() + 128)
                        .try_into()
                        .unwrap_or(u32::MAX)
                })
                .build(),
            write_failures: Default::default(),
            pins: Default::default(),
            _server_lock: server_lock,
        })
    }

    /// Indexes the blobs, tag records and referrers lists already on disk (oldest mtime
    /// first, so recency survives restarts), then enforces the size limit. Runs in the
    /// background at startup; requests are served meanwhile, since a hit never needs the
    /// index. Returns the number of blobs.
    pub(crate) fn scan_blobs(&self) -> io::Result<usize> {
        use index::IndexedKind;
        let mut found: Vec<_> = layout::content_files(self.layout.root())?
            .into_iter()
            .filter(|file| !file.is_manifest)
            .map(|file| (file.modified, IndexedKind::Blob, file.digest, file.size))
            .collect();
        let count = found.len();
        for (dir, kind) in [
            (self.layout.tags_dir(), IndexedKind::TagRecord),
            (self.layout.referrers_dir(), IndexedKind::ReferrersRecord),
        ] {
            found.extend(
                layout::record_files(&dir)?
                    .into_iter()
                    .map(|file| (file.modified, kind, file.digest, file.size)),
            );
        }
        found.sort_by_key(|(modified, _, _, _)| *modified);
        for (_, kind, digest, size) in found {
            self.index.add_scanned_kind(kind, &digest, size);
        }
        self.index.enforce();
        Ok(count)
    }

    /// Joins the fill of `digest` in progress, or starts one (its temporary file created on
    /// the blocking pool). `AlreadyCached` when the blob is committed; an error when the
    /// cache cannot take a fill (counted as a write failure). The caller that gets `Started`
    /// runs the fill (reports through it, commits or fails it), then calls `finish_fill`.
    pub(crate) async fn start_fill(&self, digest: &Digest) -> io::Result<JoinOutcome<E>> {
        if let Some(handle) = self.inflight.join(digest) {
            return Ok(JoinOutcome::Joined(handle));
        }
        let prepared = {
            let layout = self.layout.clone();
            let index = self.index.clone();
            let digest = digest.clone();
            tokio::task::spawn_blocking(move || {
                let blob_path = layout.blob_path(&digest);
                if blob_path.exists() {
                    return Ok(None);
                }
                BlobFill::create(&layout, &digest, &blob_path, index).map(Some)
            })
            .await
            .unwrap_or_else(|e| Err(io::Error::other(e)))
        };
        let fill = match prepared {
            Ok(Some(fill)) => fill,
            Ok(None) => return Ok(JoinOutcome::AlreadyCached),
            Err(e) => {
                self.note_write_failure();
                return Err(e);
            }
        };
        let (outcome, unused) = self
            .inflight
            .start(digest, || self.index.contains(digest), fill);
        if let Some(unused) = unused {
            // Its temporary file is removed on drop: a filesystem call, so not here.
            tokio::task::spawn_blocking(move || drop(unused));
        }
        Ok(outcome)
    }

    /// Forgets the fill of `digest` (committed or failed): the next request reads the file
    /// or starts a new fill.
    pub(crate) fn finish_fill(&self, digest: &Digest) {
        self.inflight.finish(digest);
    }

    pub(crate) fn fills_in_progress(&self) -> usize {
        self.inflight.len()
    }

    /// Where a committed blob's file is (for uploading it to the shared store).
    pub(crate) fn blob_path(&self, digest: &Digest) -> std::path::PathBuf {
        self.layout.blob_path(digest)
    }

    /// The cache's directory for temporary files (the readiness probe writes there).
    pub(crate) fn tmp_dir(&self) -> std::path::PathBuf {
        self.layout.tmp_dir()
    }

    /// Committed bytes, the bound and evictions so far.
    pub(crate) fn usage(&self) -> Usage {
        self.index.usage()
    }

    /// Re-reads `pins.json` when its modification time differs from `*seen` (updating it),
    /// so pins made by `ferry warm --pin` on a running server take effect.
    pub(crate) fn reload_pins_if_changed(&self, seen: &mut Option<std::time::SystemTime>) {
        let modified = std::fs::metadata(self.layout.root().join(pins::PINS_FILE))
            .and_then(|m| m.modified())
            .ok();
        if modified == *seen {
            return;
        }
        *seen = modified;
        match pins::Pins::load(self.layout.root()) {
            Ok(warmed) => {
                self.update_pins(|holding| holding.warmed = warmed.protected());
            }
            Err(e) => tracing::error!(error = %e, "cannot read pins.json"),
        }
    }

    /// Replaces what the pin keeper holds: the digests the bound must keep and the digest
    /// each pinned tag is served as.
    pub(crate) fn hold_followed_pins(&self, followed: pins::FollowedHolding) {
        self.update_pins(|holding| holding.followed = followed);
    }

    fn update_pins(&self, change: impl FnOnce(&mut pins::PinHolding)) {
        let protected = {
            // A poisoned lock only means a panic elsewhere mid-update; the data is plain.
            let mut holding = self.pins.write().unwrap_or_else(|e| e.into_inner());
            change(&mut holding);
            holding.protected()
        };
        self.index.set_pins(protected);
    }

    /// The digest a pinned tag is served as, while it is pinned here.
    pub(crate) fn pinned_tag(&self, key: &TagKey) -> Option<Digest> {
        let holding = self.pins.read().unwrap_or_else(|e| e.into_inner());
        holding.followed.tags.get(key).cloned()
    }

    /// The images the pin keeper holds (for the fleet's read-only pin list); `None` until
    /// the keeper knows its pin set.
    pub(crate) fn pinned_images(&self) -> Option<Vec<(String, String)>> {
        let holding = self.pins.read().unwrap_or_else(|e| e.into_inner());
        holding.followed.images.clone()
    }

    /// Whether a blob is committed on this disk (a filesystem check; blocking).
    pub(crate) fn has_blob(&self, digest: &Digest) -> bool {
        self.layout.blob_path(digest).is_file()
    }

    /// The cache directory.
    pub(crate) fn root(&self) -> &Path {
        self.layout.root()
    }

    /// Evicts the least recently used unpinned entries until the cache is within its size.
    pub(crate) fn enforce_size_bound(&self) {
        self.index.enforce();
    }

    /// A tag's record, from memory or disk.
    pub(crate) async fn tag_record(&self, key: &TagKey) -> Option<TagRecord> {
        self.tags.get(key).await
    }

    /// Stores a tag's record (durably; unchanged confirmations are written rarely).
    pub(crate) async fn put_tag_record(&self, record: TagRecord) -> io::Result<()> {
        self.tags.put(&self.layout, record).await
    }

    /// The last referrers list kept for a subject.
    pub(crate) async fn referrers_record(
        &self,
        key: &referrers::ReferrersKey,
    ) -> Option<referrers::ReferrersRecord> {
        self.referrers.get(key).await
    }

    pub(crate) async fn put_referrers_record(
        &self,
        record: referrers::ReferrersRecord,
    ) -> io::Result<()> {
        self.referrers.put(&self.layout, record).await
    }

    /// Whether any registry in `allowed` vouched for `digest` (memory, then its sidecar).
    pub(crate) async fn vouched_by_any(
        &self,
        kind: provenance::ContentKind,
        digest: &Digest,
        allowed: &[String],
    ) -> bool {
        self.provenance
            .vouched_by_any(&self.layout, kind, digest, allowed)
            .await
    }

    /// Records that `registry` vouched for `digest`; true when that is new.
    pub(crate) async fn record_provenance(
        &self,
        kind: provenance::ContentKind,
        digest: &Digest,
        registry: &str,
    ) -> io::Result<bool> {
        self.provenance
            .record(&self.layout, kind, digest, registry)
            .await
    }

    pub(crate) fn note_write_failure(&self) {
        self.write_failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn write_failures(&self) -> u64 {
        self.write_failures
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A committed manifest, if present: from memory, else read from disk (and remembered).
    pub(crate) async fn manifest(&self, digest: &Digest) -> io::Result<Option<CachedManifest>> {
        if let Some(manifest) = self.manifests.get(digest) {
            return Ok(Some(manifest));
        }
        let manifest = self.read_manifest(digest).await?;
        if let Some(manifest) = &manifest {
            self.manifests.insert(digest.clone(), manifest.clone());
        }
        Ok(manifest)
    }

    async fn read_manifest(&self, digest: &Digest) -> io::Result<Option<CachedManifest>> {
        let body_path = self.layout.manifest_path(digest);
        let body = match tokio::fs::read(&body_path).await {
            Ok(body) => body,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        // A file damaged on disk is never served (nor remembered): the caller fetches the
        // manifest again, and storing it replaces the file.
        if !digest.matches(&body) {
            tracing::error!(%digest, path = %body_path.display(), "cached manifest does not match its digest; ignoring it");
            return Ok(None);
        }
        // The recorded type is a hint, checked against the body like an upstream's (a cache
        // written before types came from the body may hold a hostile one).
        let recorded = tokio::fs::read_to_string(self.layout.manifest_type_path(digest))
            .await
            .ok();
        let media_type =
            crate::oci::media_type::manifest_media_type(recorded.as_deref().map(str::trim), &body);
        Ok(Some(CachedManifest {
            digest: digest.clone(),
            media_type,
            body: body.into(),
        }))
    }

    /// Stores a manifest whose bytes the caller has verified against `digest`. The media
    /// type goes first, so a manifest under its final name always has its type beside it.
    pub(crate) async fn store_manifest(&self, manifest: &CachedManifest) -> io::Result<()> {
        let type_path = self.layout.manifest_type_path(&manifest.digest);
        writer::write_file_atomically(
            &self.layout,
            &type_path,
            manifest.media_type.as_bytes().to_vec().into(),
        )
        .await?;
        // The caller verified the bytes; a cached manifest must match its name regardless.
        if !manifest.digest.matches(&manifest.body) {
            return Err(io::Error::other(format!(
                "manifest bytes do not match {}",
                manifest.digest
            )));
        }
        let final_path = self.layout.manifest_path(&manifest.digest);
        writer::write_file_atomically(&self.layout, &final_path, manifest.body.clone()).await?;
        self.manifests
            .insert(manifest.digest.clone(), manifest.clone());
        Ok(())
    }

    /// Opens a committed blob for reading, with its size, and records the use (its file's
    /// mtime is refreshed at most hourly, so recency survives a restart).
    pub(crate) fn open_blob(&self, digest: &Digest) -> io::Result<Option<(std::fs::File, u64)>> {
        match std::fs::File::open(self.layout.blob_path(digest)) {
            Ok(file) => {
                let metadata = file.metadata()?;
                let size = metadata.len();
                self.index.touch(digest, size);
                let now = std::time::SystemTime::now();
                let stale = metadata
                    .modified()
                    .ok()
                    .and_then(|m| now.duration_since(m).ok())
                    .is_none_or(|age| age > RECENCY_PERSIST_INTERVAL);
                if stale {
                    let _ = file.set_modified(now);
                }
                Ok(Some((file, size)))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Evicted (or removed by hand) after the index last saw it.
                self.index.forget(digest);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

/// Takes a non-blocking exclusive `flock` on `path`, failing if another server holds it.
fn lock_exclusively(path: &Path) -> io::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    // SAFETY: flock on a file descriptor we own; it has no memory-safety preconditions.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let error = io::Error::last_os_error();
        return Err(io::Error::new(
            error.kind(),
            format!(
                "{} is locked by another ferry server ({error})",
                path.display()
            ),
        ));
    }
    Ok(file)
}
