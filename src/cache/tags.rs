//! Tag mappings `(registry, repository, tag) -> (digest, media type, fetched at, upstream)`,
//! persisted one small JSON file per tag (written atomically) and kept in memory once read.

use super::layout::Layout;
use super::writer::write_file_atomically;
use serde::{Deserialize, Serialize};
use std::io;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TagKey {
    pub registry: String,
    pub repository: String,
    pub tag: String,
}

impl TagKey {
    /// The SHA-256 of the key's parts: its record file's name and its entry in the bound.
    pub(crate) fn record_digest(&self) -> crate::oci::Digest {
        let parts = [&self.registry, &self.repository, &self.tag];
        let separated: Vec<&[u8]> = parts.iter().flat_map(|p| [p.as_bytes(), &[0u8]]).collect();
        super::layout::record_digest(&separated)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagRecord {
    pub(crate) registry: String,
    pub(crate) repository: String,
    pub(crate) tag: String,
    pub(crate) digest: String,
    pub(crate) media_type: String,
    /// When an upstream last confirmed this mapping (milliseconds since the Unix epoch).
    pub(crate) fetched_at_unix_ms: u64,
    pub(crate) upstream: String,
}

impl TagRecord {
    pub fn key(&self) -> TagKey {
        TagKey {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: self.tag.clone(),
        }
    }

    /// The record with a confirmation time in the future (a replica with a fast clock, or a
    /// hand-written record in the shared store) moved back to now: it ages from here, rather
    /// than staying fresh, and unrevalidated, until that time comes.
    pub(crate) fn clamped_to_now(mut self) -> TagRecord {
        self.fetched_at_unix_ms = self.fetched_at_unix_ms.min(unix_ms(SystemTime::now()));
        self
    }

    /// How long ago an upstream confirmed it (zero if the clock went backwards).
    pub(crate) fn age(&self) -> Duration {
        let now = unix_ms(SystemTime::now());
        Duration::from_millis(now.saturating_sub(self.fetched_at_unix_ms))
    }
}

pub(crate) fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub struct TagStore {
    dir: PathBuf,
    /// The size bound the record files count toward (none for offline tools).
    index: Option<std::sync::Arc<super::LruIndex>>,
    /// Recent records, weighted by bytes, with when each was last written to disk.
    memory: moka::sync::Cache<TagKey, Remembered>,
}

#[derive(Clone)]
struct Remembered {
    record: TagRecord,
    /// `fetched_at_unix_ms` of the record as last written to disk.
    persisted_at: Option<u64>,
}

/// Bytes of tag records kept in memory (the rest are read back from disk when asked for).
const MEMORY_BYTES: u64 = 16 * 1024 * 1024;

/// An unchanged mapping confirmed by an upstream is written to disk at most this often
/// (milliseconds): revalidations stay off the disk, and the age on disk stays close enough
/// for `max_stale` after a restart.
const CONFIRMATION_PERSIST_INTERVAL_MS: u64 = 60_000;

impl TagStore {
    pub fn new(dir: PathBuf) -> TagStore {
        TagStore {
            dir,
            index: None,
            memory: moka::sync::Cache::builder()
                .max_capacity(MEMORY_BYTES)
                .weigher(|key: &TagKey, remembered: &Remembered| {
                    let record = &remembered.record;
                    let bytes = 2 * (key.registry.len() + key.repository.len() + key.tag.len())
                        + record.digest.len()
                        + record.media_type.len()
                        + record.upstream.len()
                        + 256;
                    u32::try_from(bytes).unwrap_or(u32::MAX)
                })
                .build(),
        }
    }

    /// Counts the record files toward `index`'s bound (they are evicted like blobs).
    pub(crate) fn counted_in(mut self, index: std::sync::Arc<super::LruIndex>) -> Self {
        self.index = Some(index);
        self
    }

    /// Where the record for `key` is stored.
    pub fn path_of(&self, key: &TagKey) -> PathBuf {
        self.path(key)
    }

    fn path(&self, key: &TagKey) -> PathBuf {
        super::layout::record_path_of(&self.dir, &key.record_digest())
    }

    /// Notes a use of `key`'s record file (`size` counts when the bound first sees it).
    fn touch(&self, key: &TagKey, size: u64) {
        if let Some(index) = &self.index {
            index.touch_record(
                super::index::IndexedKind::TagRecord,
                &key.record_digest(),
                size,
            );
        }
    }

    /// The last known mapping for `key`, from memory or disk.
    pub async fn get(&self, key: &TagKey) -> Option<TagRecord> {
        if let Some(remembered) = self.memory.get(key) {
            return Some(remembered.record);
        }
        let text = tokio::fs::read(self.path(key)).await.ok()?;
        let record: TagRecord = match serde_json::from_slice::<TagRecord>(&text) {
            Ok(record) => record.clamped_to_now(),
            Err(e) => {
                tracing::warn!(path = %self.path(key).display(), error = %e, "ignoring unreadable tag record");
                return None;
            }
        };
        if record.key() != *key {
            return None;
        }
        self.touch(key, text.len() as u64);
        self.memory.insert(
            key.clone(),
            Remembered {
                record: record.clone(),
                persisted_at: Some(record.fetched_at_unix_ms),
            },
        );
        Some(record)
    }

    /// Remembers `record` and persists it (atomically). A confirmation of an unchanged
    /// mapping is only remembered, unless the copy on disk is over a minute old.
    pub async fn put(&self, layout: &Layout, record: TagRecord) -> io::Result<()> {
        let key = record.key();
        let known = self.memory.get(&key);
        let unchanged = known.as_ref().is_some_and(|old| {
            old.record.digest == record.digest
                && old.record.media_type == record.media_type
                && old.record.upstream == record.upstream
        });
        let persisted_at = known.and_then(|old| old.persisted_at);
        if unchanged
            && persisted_at.is_some_and(|at| {
                record.fetched_at_unix_ms.saturating_sub(at) < CONFIRMATION_PERSIST_INTERVAL_MS
            })
        {
            self.touch(&key, 0);
            self.memory.insert(
                key,
                Remembered {
                    record,
                    persisted_at,
                },
            );
            return Ok(());
        }
        let json = serde_json::to_vec_pretty(&record).map_err(io::Error::other)?;
        let size = json.len() as u64;
        write_file_atomically(layout, &self.path(&key), json.into()).await?;
        self.touch(&key, size);
        let persisted_at = Some(record.fetched_at_unix_ms);
        self.memory.insert(
            key,
            Remembered {
                record,
                persisted_at,
            },
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tag_records_path_is_stable_across_versions() {
        // Caches written by earlier versions must still be found: the golden hash is
        // sha256("docker.io\0library/alpine\03\0").
        let store = TagStore::new(PathBuf::from("/c/tags"));
        let key = TagKey {
            registry: "docker.io".into(),
            repository: "library/alpine".into(),
            tag: "3".into(),
        };
        assert_eq!(
            store.path_of(&key),
            PathBuf::from(
                "/c/tags/d2/d25525440751c7abdc4307980de47f02c13bbae613cb8dafb69190acbaad1cb6.json"
            )
        );
    }

    #[tokio::test]
    async fn tag_records_count_toward_the_bound_and_pinned_ones_stay() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::create(dir.path()).unwrap();
        let root = dir.path().to_path_buf();
        let index = std::sync::Arc::new(
            super::super::LruIndex::new(Some(3000), move |d| Layout::blob_path_under(&root, d))
                .with_record_dirs(layout.tags_dir(), layout.referrers_dir()),
        );
        let record = |tag: u32| TagRecord {
            registry: "docker.io".into(),
            repository: "library/alpine".into(),
            tag: format!("t{tag}"),
            digest: "sha256:00".into(),
            media_type: "x".into(),
            fetched_at_unix_ms: unix_ms(SystemTime::now()),
            upstream: "u".into(),
        };
        let pinned = record(0).key();
        index.set_pins([pinned.record_digest()].into());
        let store = TagStore::new(layout.tags_dir()).counted_in(index.clone());
        for tag in 0..40 {
            store.put(&layout, record(tag)).await.unwrap();
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let on_disk: u64 = super::super::layout::record_files(&layout.tags_dir())
            .unwrap()
            .iter()
            .map(|f| f.size)
            .sum();
        assert!(on_disk <= 3000, "{on_disk} bytes of tag records");
        assert!(index.usage().records > 3, "{:?}", index.usage());
        assert!(
            store.path_of(&pinned).exists(),
            "a pinned tag's record is never evicted"
        );
        assert!(store.path_of(&record(39).key()).exists());
        assert!(!store.path_of(&record(1).key()).exists());
    }

    #[tokio::test]
    async fn records_survive_a_new_store() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::create(dir.path()).unwrap();
        let record = TagRecord {
            registry: "docker.io".into(),
            repository: "library/alpine".into(),
            tag: "3".into(),
            digest: "sha256:00".into(),
            media_type: "x".into(),
            fetched_at_unix_ms: unix_ms(SystemTime::now()),
            upstream: "u".into(),
        };
        TagStore::new(layout.tags_dir())
            .put(&layout, record.clone())
            .await
            .unwrap();
        let fresh = TagStore::new(layout.tags_dir());
        assert_eq!(fresh.get(&record.key()).await, Some(record.clone()));
        let other = TagKey {
            tag: "4".into(),
            ..record.key()
        };
        assert_eq!(fresh.get(&other).await, None);
    }

    #[tokio::test]
    async fn a_record_dated_in_the_future_ages_from_now() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::create(dir.path()).unwrap();
        let store = TagStore::new(layout.tags_dir());
        let record = TagRecord {
            registry: "r".into(),
            repository: "a/b".into(),
            tag: "t".into(),
            digest: "sha256:00".into(),
            media_type: "x".into(),
            fetched_at_unix_ms: unix_ms(SystemTime::now()) + 365 * 86_400_000,
            upstream: "u".into(),
        };
        store.put(&layout, record.clone()).await.unwrap();
        // A fresh store reads it from disk, as after a restart.
        let fresh = TagStore::new(layout.tags_dir());
        let loaded = fresh.get(&record.key()).await.unwrap();
        assert!(loaded.fetched_at_unix_ms <= unix_ms(SystemTime::now()));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            fresh.get(&record.key()).await.unwrap().age() >= Duration::from_millis(20),
            "it ages, so its tag TTL runs out"
        );
    }

    #[tokio::test]
    async fn unchanged_confirmations_stay_off_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::create(dir.path()).unwrap();
        let store = TagStore::new(layout.tags_dir());
        let mut record = TagRecord {
            registry: "r".into(),
            repository: "a/b".into(),
            tag: "t".into(),
            digest: "sha256:00".into(),
            media_type: "x".into(),
            fetched_at_unix_ms: 1_000_000,
            upstream: "u".into(),
        };
        store.put(&layout, record.clone()).await.unwrap();
        let path = store.path(&record.key());
        let on_disk = || std::fs::read_to_string(&path).unwrap();
        let first = on_disk();
        record.fetched_at_unix_ms += 5_000;
        store.put(&layout, record.clone()).await.unwrap();
        assert_eq!(on_disk(), first, "a confirmation 5 s later is not written");
        assert_eq!(
            store.get(&record.key()).await.unwrap().fetched_at_unix_ms,
            1_005_000
        );
        record.fetched_at_unix_ms += 60_000;
        store.put(&layout, record.clone()).await.unwrap();
        assert_ne!(on_disk(), first, "a minute later it is");
        record.digest = "sha256:11".into();
        record.fetched_at_unix_ms += 1;
        store.put(&layout, record.clone()).await.unwrap();
        assert!(
            on_disk().contains("sha256:11"),
            "a moved tag is always written"
        );
    }
}
