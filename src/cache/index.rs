//! The size bound: which committed blobs (and tag and referrers records) the cache holds,
//! their sizes and least-recent use, plus bytes reserved by fills in progress. Over the
//! limit, the least recently used unpinned entries are evicted (files deleted; a reader
//! that has one open keeps reading it). Fills in progress are not in the index, so they are
//! never evicted; pinned entries count toward the size but are never evicted.
//!
//! A hand-rolled LRU rather than moka: eviction here must be synchronous and must account
//! for reservations, so the bound holds at every instant rather than eventually.

use crate::oci::Digest;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, Copy)]
struct Entry {
    size: u64,
    /// Position in the LRU order; `None` for pinned blobs (never evicted).
    sequence: Option<u64>,
    kind: IndexedKind,
}

/// What an entry of the bound is: a blob (keyed by its digest), or a small record keyed by
/// the SHA-256 of its key (see `layout::record_digest`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum IndexedKind {
    Blob,
    TagRecord,
    ReferrersRecord,
}

#[derive(Debug, Default)]
struct State {
    /// By kind and digest: a blob whose bytes happen to be a record's key parts has the
    /// record's digest, and must not share its entry.
    entries: HashMap<(IndexedKind, Digest), Entry>,
    order: BTreeMap<u64, (IndexedKind, Digest)>,
    next_sequence: u64,
    /// Bytes of committed blobs in the index (pinned included).
    committed: u64,
    pinned_bytes: u64,
    /// Bytes announced by fills in progress.
    reserved: u64,
    pinned: HashSet<Digest>,
    /// Entries that are records, not blobs.
    records: usize,
    evictions: u64,
    evicted_bytes: u64,
}

/// Cache usage, for `/admin/upstreams`, `ferry cache du` and tests.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub(crate) struct Usage {
    pub(crate) limit: Option<u64>,
    pub(crate) committed: u64,
    pub(crate) pinned: u64,
    pub(crate) reserved: u64,
    pub(crate) blobs: usize,
    /// Tag and referrers records in the bound.
    pub(crate) records: usize,
    pub(crate) evictions: u64,
    pub(crate) evicted_bytes: u64,
}

pub(crate) struct LruIndex {
    limit: Option<u64>,
    state: Mutex<State>,
    /// Where a digest's committed file lives (to delete it on eviction).
    blob_path: Box<dyn Fn(&Digest) -> PathBuf + Send + Sync>,
    /// The tag and referrers record directories, when records count toward the bound.
    record_dirs: Option<(PathBuf, PathBuf)>,
}

/// Bytes held for a fill in progress; released when dropped.
pub(crate) struct Reservation {
    index: Arc<LruIndex>,
    bytes: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut state = self.index.lock();
        state.reserved = state.reserved.saturating_sub(self.bytes);
    }
}

impl LruIndex {
    pub(crate) fn new(
        limit: Option<u64>,
        blob_path: impl Fn(&Digest) -> PathBuf + Send + Sync + 'static,
    ) -> Self {
        LruIndex {
            limit,
            state: Mutex::new(State::default()),
            blob_path: Box::new(blob_path),
            record_dirs: None,
        }
    }

    /// Counts tag records (under `tags`) and referrers lists (under `referrers`) toward the
    /// bound, evicting them like blobs.
    pub(crate) fn with_record_dirs(mut self, tags: PathBuf, referrers: PathBuf) -> Self {
        self.record_dirs = Some((tags, referrers));
        self
    }

    fn path_of(&self, digest: &Digest, kind: IndexedKind) -> Option<PathBuf> {
        match (kind, &self.record_dirs) {
            (IndexedKind::Blob, _) => Some((self.blob_path)(digest)),
            (IndexedKind::TagRecord, Some((tags, _))) => {
                Some(super::layout::record_path_of(tags, digest))
            }
            (IndexedKind::ReferrersRecord, Some((_, referrers))) => {
                Some(super::layout::record_path_of(referrers, digest))
            }
            (_, None) => None,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Poisoning only means a panic mid-update of plain maps; they stay usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn limit(&self) -> Option<u64> {
        self.limit
    }

    /// Records a use of `digest` (of `size` bytes): it becomes the most recently used.
    /// Unknown digests (committed before a restart, not yet scanned) are added.
    pub(crate) fn touch(&self, digest: &Digest, size: u64) {
        self.touch_kind(IndexedKind::Blob, digest, size);
    }

    /// Records a use of a tag or referrers record (`size` counts only when it is new).
    pub(crate) fn touch_record(&self, kind: IndexedKind, digest: &Digest, size: u64) {
        if self.record_dirs.is_some() {
            self.touch_kind(kind, digest, size);
        }
    }

    fn touch_kind(&self, kind: IndexedKind, digest: &Digest, size: u64) {
        let victims = {
            let mut state = self.lock();
            Self::touch_locked(&mut state, kind, digest, size);
            self.victims_locked(&mut state)
        };
        self.delete(victims);
    }

    /// Adds an entry found on disk at startup (callers go oldest first) unless a request
    /// already touched it.
    pub(crate) fn add_scanned_kind(&self, kind: IndexedKind, digest: &Digest, size: u64) {
        let mut state = self.lock();
        if !state.entries.contains_key(&(kind, digest.clone())) {
            Self::touch_locked(&mut state, kind, digest, size);
        }
    }

    /// Evicts down to the limit; returns the number of blobs evicted.
    pub(crate) fn enforce(&self) -> usize {
        let victims = {
            let mut state = self.lock();
            self.victims_locked(&mut state)
        };
        let n = victims.len();
        self.delete(victims);
        n
    }

    /// `size` 0 for a known entry means "unchanged"; another size replaces the old one (a
    /// record rewritten with a longer list).
    fn touch_locked(state: &mut State, kind: IndexedKind, digest: &Digest, size: u64) {
        let key = (kind, digest.clone());
        let pinned = state.pinned.contains(digest);
        let mut size = size;
        if let Some(entry) = state.entries.get(&key).copied() {
            if let Some(sequence) = entry.sequence {
                state.order.remove(&sequence);
            }
            if size == 0 || size == entry.size {
                size = entry.size;
            } else {
                state.committed = state.committed - entry.size + size;
                if entry.sequence.is_none() {
                    state.pinned_bytes = state.pinned_bytes - entry.size + size;
                }
            }
        } else {
            state.committed += size;
            if pinned {
                state.pinned_bytes += size;
            }
            if kind != IndexedKind::Blob {
                state.records += 1;
            }
        }
        let sequence = if pinned {
            None
        } else {
            let sequence = state.next_sequence;
            state.next_sequence += 1;
            state.order.insert(sequence, key.clone());
            Some(sequence)
        };
        state.entries.insert(
            key,
            Entry {
                size,
                sequence,
                kind,
            },
        );
    }

    /// Removes least recently used unpinned entries until committed + reserved fits.
    fn victims_locked(&self, state: &mut State) -> Vec<(Digest, IndexedKind)> {
        let Some(limit) = self.limit else {
            return Vec::new();
        };
        let mut victims = Vec::new();
        while state.committed + state.reserved > limit {
            let Some((_, key)) = state.order.pop_first() else {
                break;
            };
            if let Some(entry) = state.entries.remove(&key) {
                state.committed -= entry.size;
                state.evictions += 1;
                state.evicted_bytes += entry.size;
                if entry.kind != IndexedKind::Blob {
                    state.records -= 1;
                }
                victims.push((key.1, entry.kind));
            }
        }
        victims
    }

    /// Unlinks evicted blobs. Their space is already accounted for; the unlinks (which can
    /// take milliseconds for a large file) run on the blocking pool when called from async
    /// code, so a fill that evicts never stalls a worker thread.
    fn delete(&self, victims: Vec<(Digest, IndexedKind)>) {
        if victims.is_empty() {
            return;
        }
        let paths: Vec<(Digest, IndexedKind, std::path::PathBuf)> = victims
            .into_iter()
            .filter_map(|(digest, kind)| {
                let path = self.path_of(&digest, kind)?;
                Some((digest, kind, path))
            })
            .collect();
        let unlink = move || {
            for (digest, kind, path) in paths {
                if kind == IndexedKind::Blob {
                    // Its provenance goes with it (a record without content is never needed).
                    let _ = std::fs::remove_file(super::provenance::sidecar_path(&path));
                }
                match std::fs::remove_file(&path) {
                    Ok(()) => tracing::debug!(%digest, "evicted"),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => tracing::warn!(%digest, error = %e, "cannot delete an evicted blob"),
                }
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn_blocking(unlink);
            }
            Err(_) => unlink(),
        }
    }

    /// Holds `bytes` for a fill in progress, evicting to make room now. `None` when even
    /// evicting everything evictable leaves no room (in-flight fills and pinned content
    /// fill the bound): the caller must not cache this blob.
    pub(crate) fn try_reserve(self: &Arc<Self>, bytes: u64) -> Option<Reservation> {
        let victims = {
            let mut state = self.lock();
            if let Some(limit) = self.limit {
                let unevictable = state.pinned_bytes + state.reserved;
                if unevictable + bytes > limit {
                    return None;
                }
            }
            state.reserved += bytes;
            self.victims_locked(&mut state)
        };
        self.delete(victims);
        Some(Reservation {
            index: self.clone(),
            bytes,
        })
    }

    /// Adds `more` bytes to a fill's reservation, evicting to make room now; false (and
    /// nothing held) when in-flight fills and pinned content leave no room.
    pub(crate) fn try_grow(self: &Arc<Self>, reservation: &mut Reservation, more: u64) -> bool {
        let victims = {
            let mut state = self.lock();
            if let Some(limit) = self.limit
                && state.pinned_bytes + state.reserved + more > limit
            {
                return false;
            }
            state.reserved += more;
            reservation.bytes += more;
            self.victims_locked(&mut state)
        };
        self.delete(victims);
        true
    }

    /// Forgets a blob removed by someone else (`ferry cache rm`, quarantine).
    /// Whether `digest` is committed as far as the index knows (no disk access).
    pub(crate) fn contains(&self, digest: &Digest) -> bool {
        self.lock()
            .entries
            .contains_key(&(IndexedKind::Blob, digest.clone()))
    }

    pub(crate) fn forget(&self, digest: &Digest) {
        let mut state = self.lock();
        if let Some(entry) = state.entries.remove(&(IndexedKind::Blob, digest.clone())) {
            state.committed -= entry.size;
            if entry.kind != IndexedKind::Blob {
                state.records -= 1;
            }
            if let Some(sequence) = entry.sequence {
                state.order.remove(&sequence);
            } else {
                state.pinned_bytes -= entry.size;
            }
        }
    }

    /// Replaces the set of pinned digests.
    pub(crate) fn set_pins(&self, pinned: HashSet<Digest>) {
        let victims = {
            let mut state = self.lock();
            state.pinned = pinned;
            let keys: Vec<((IndexedKind, Digest), Entry)> =
                state.entries.iter().map(|(k, e)| (k.clone(), *e)).collect();
            state.pinned_bytes = 0;
            for (key, entry) in keys {
                let pinned = state.pinned.contains(&key.1);
                match (pinned, entry.sequence) {
                    (true, Some(sequence)) => {
                        state.order.remove(&sequence);
                        state.entries.insert(
                            key,
                            Entry {
                                sequence: None,
                                ..entry
                            },
                        );
                    }
                    (false, None) => {
                        let sequence = state.next_sequence;
                        state.next_sequence += 1;
                        state.order.insert(sequence, key.clone());
                        state.entries.insert(
                            key,
                            Entry {
                                sequence: Some(sequence),
                                ..entry
                            },
                        );
                    }
                    _ => {}
                }
                if pinned {
                    state.pinned_bytes += entry.size;
                }
            }
            if let Some(limit) = self.limit
                && state.pinned_bytes > limit
            {
                tracing::warn!(
                    pinned_bytes = state.pinned_bytes,
                    limit,
                    "pinned content alone exceeds the cache size"
                );
            }
            self.victims_locked(&mut state)
        };
        self.delete(victims);
    }

    pub(crate) fn usage(&self) -> Usage {
        let state = self.lock();
        Usage {
            limit: self.limit,
            committed: state.committed,
            pinned: state.pinned_bytes,
            reserved: state.reserved,
            blobs: state.entries.len() - state.records,
            records: state.records,
            evictions: state.evictions,
            evicted_bytes: state.evicted_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u8) -> Digest {
        Digest::sha256_of(&[n])
    }

    #[test]
    fn a_blob_and_a_record_with_one_digest_are_two_entries_and_sizes_follow_rewrites() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let index = LruIndex::new(None, move |d| root.join(d.hex()))
            .with_record_dirs(dir.path().join("tags"), dir.path().join("referrers"));
        // A blob whose bytes are a record's key parts has that record's digest.
        let shared = digest(7);
        index.touch(&shared, 100);
        index.touch_record(IndexedKind::TagRecord, &shared, 10);
        let usage = index.usage();
        assert_eq!((usage.blobs, usage.records, usage.committed), (1, 1, 110));
        index.forget(&shared);
        let usage = index.usage();
        assert_eq!((usage.blobs, usage.records, usage.committed), (0, 1, 10));
        // A record rewritten larger counts its new size; a size of 0 means unchanged.
        index.touch_record(IndexedKind::TagRecord, &shared, 4000);
        index.touch_record(IndexedKind::TagRecord, &shared, 0);
        assert_eq!(index.usage().committed, 4000);
    }

    fn index(limit: u64, dir: &std::path::Path) -> Arc<LruIndex> {
        let dir = dir.to_path_buf();
        Arc::new(LruIndex::new(Some(limit), move |d| dir.join(d.hex())))
    }

    #[test]
    fn evicts_least_recently_used_and_deletes_files() {
        let dir = tempfile::tempdir().unwrap();
        let index = index(300, dir.path());
        for n in 0..3 {
            std::fs::write(dir.path().join(digest(n).hex()), b"x").unwrap();
            index.touch(&digest(n), 100);
        }
        index.touch(&digest(0), 100); // 0 is now the most recent; 1 is the oldest
        std::fs::write(dir.path().join(digest(3).hex()), b"x").unwrap();
        index.touch(&digest(3), 100);
        assert!(!dir.path().join(digest(1).hex()).exists());
        assert!(dir.path().join(digest(0).hex()).exists());
        let usage = index.usage();
        assert_eq!((usage.committed, usage.blobs, usage.evictions), (300, 3, 1));
    }

    #[test]
    fn reservations_make_room_and_pins_are_never_evicted() {
        let dir = tempfile::tempdir().unwrap();
        let index = index(300, dir.path());
        index.set_pins([digest(0)].into_iter().collect());
        for n in 0..3 {
            index.touch(&digest(n), 100);
        }
        let reservation = index.try_reserve(150).unwrap();
        let usage = index.usage();
        assert!(usage.committed + usage.reserved <= 300, "{usage:?}");
        assert_eq!(usage.pinned, 100);
        assert_eq!(
            usage.blobs, 1,
            "both unpinned blobs made room; the pinned one stayed"
        );
        assert!(
            index.try_reserve(100).is_none(),
            "pinned 100 + reserved 150 + 100 > 300"
        );
        drop(reservation);
        assert_eq!(index.usage().reserved, 0);
        index.set_pins(HashSet::new());
        index.touch(&digest(5), 250);
        assert_eq!(
            index.usage().blobs,
            1,
            "unpinned, the old pin is evictable again"
        );
    }
}
