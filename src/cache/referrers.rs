//! The last referrers index (OCI distribution 1.1 `GET /v2/<name>/referrers/<digest>`)
//! fetched for each (registry, repository, subject digest, artifactType filter), kept in
//! memory and in one small JSON file each, so it can be served when every upstream is down.

use super::layout::Layout;
use super::writer::write_file_atomically;
use serde::{Deserialize, Serialize};
use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// Bytes of referrers lists kept in memory; others are read back from disk when asked for.
const MEMORY_BYTES: u64 = 8 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) struct ReferrersKey {
    pub(crate) registry: String,
    pub(crate) repository: String,
    pub(crate) subject: String,
    /// The `artifactType` filter the client asked for, if any.
    pub(crate) artifact_type: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ReferrersRecord {
    pub(crate) key: ReferrersKey,
    /// The image index, as served to clients (already filtered when `filtered`); shared,
    /// not copied, by every answer made from it. Stored as a JSON string.
    #[serde(with = "body_as_text")]
    pub(crate) body: bytes::Bytes,
    /// Whether `artifactType` was applied (`OCI-Filters-Applied: artifactType`).
    pub(crate) filtered: bool,
    /// When an upstream answered it (milliseconds since the Unix epoch).
    pub(crate) fetched_at_unix_ms: u64,
    pub(crate) upstream: String,
}

/// A UTF-8 body kept as `Bytes` in memory and as a JSON string on disk.
mod body_as_text {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        body: &bytes::Bytes,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let text = std::str::from_utf8(body).map_err(serde::ser::Error::custom)?;
        serializer.serialize_str(text)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<bytes::Bytes, D::Error> {
        String::deserialize(deserializer).map(bytes::Bytes::from)
    }
}

impl ReferrersRecord {
    pub(crate) fn age(&self) -> Duration {
        let now = super::tags::unix_ms(std::time::SystemTime::now());
        Duration::from_millis(now.saturating_sub(self.fetched_at_unix_ms))
    }
}

pub(crate) struct ReferrersStore {
    dir: PathBuf,
    /// The size bound the record files count toward.
    index: Option<std::sync::Arc<super::LruIndex>>,
    /// Recent lists, weighted by bytes.
    memory: moka::sync::Cache<ReferrersKey, ReferrersRecord>,
}

impl ReferrersStore {
    pub(crate) fn new(dir: PathBuf) -> ReferrersStore {
        ReferrersStore {
            dir,
            index: None,
            memory: moka::sync::Cache::builder()
                .max_capacity(MEMORY_BYTES)
                .weigher(|key: &ReferrersKey, record: &ReferrersRecord| {
                    let bytes = 2 * (key.registry.len() + key.repository.len() + key.subject.len())
                        + key.artifact_type.as_ref().map_or(0, String::len)
                        + record.body.len()
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

    fn record_digest(key: &ReferrersKey) -> crate::oci::Digest {
        let mut parts: Vec<&[u8]> = Vec::new();
        for part in [&key.registry, &key.repository, &key.subject] {
            parts.extend([part.as_bytes(), &[0u8]]);
        }
        match &key.artifact_type {
            Some(filter) => parts.extend([&[1u8][..], filter.as_bytes()]),
            None => parts.push(&[2u8]),
        }
        super::layout::record_digest(&parts)
    }

    fn path(&self, key: &ReferrersKey) -> PathBuf {
        super::layout::record_path_of(&self.dir, &Self::record_digest(key))
    }

    /// Notes a use of `key`'s record file (`size` counts when the bound first sees it).
    fn touch(&self, key: &ReferrersKey, size: u64) {
        if let Some(index) = &self.index {
            index.touch_record(
                super::index::IndexedKind::ReferrersRecord,
                &Self::record_digest(key),
                size,
            );
        }
    }

    fn remember(&self, record: ReferrersRecord) {
        self.memory.insert(record.key.clone(), record);
        // Evict now: large lists left to moka's lazy housekeeping outgrow the bound.
        self.memory.run_pending_tasks();
    }

    /// The last answer for `key`, from memory or disk.
    pub(crate) async fn get(&self, key: &ReferrersKey) -> Option<ReferrersRecord> {
        if let Some(record) = self.memory.get(key) {
            return Some(record);
        }
        let text = tokio::fs::read(self.path(key)).await.ok()?;
        let record: ReferrersRecord = match serde_json::from_slice(&text) {
            Ok(record) => record,
            Err(e) => {
                tracing::warn!(path = %self.path(key).display(), error = %e, "ignoring an unreadable referrers record");
                return None;
            }
        };
        if record.key != *key {
            return None;
        }
        self.touch(key, text.len() as u64);
        self.remember(record.clone());
        Some(record)
    }

    /// Remembers `record` and writes it to disk (atomically).
    pub(crate) async fn put(&self, layout: &Layout, record: ReferrersRecord) -> io::Result<()> {
        let path = self.path(&record.key);
        self.remember(record.clone());
        let json = serde_json::to_vec(&record).map_err(io::Error::other)?;
        let size = json.len() as u64;
        let key = record.key.clone();
        write_file_atomically(layout, &path, json.into()).await?;
        self.touch(&key, size);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn records_survive_a_new_store_and_filters_are_separate_keys() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::create(dir.path()).unwrap();
        let key = ReferrersKey {
            registry: "docker.io".into(),
            repository: "library/app".into(),
            subject: "sha256:00".into(),
            artifact_type: None,
        };
        let record = ReferrersRecord {
            key: key.clone(),
            body: bytes::Bytes::from_static(br#"{"schemaVersion":2,"manifests":[]}"#),
            filtered: false,
            fetched_at_unix_ms: 1,
            upstream: "u".into(),
        };
        let store = ReferrersStore::new(layout.root().join("referrers"));
        store.put(&layout, record.clone()).await.unwrap();
        let fresh = ReferrersStore::new(layout.root().join("referrers"));
        assert_eq!(fresh.get(&key).await, Some(record));
        let filtered = ReferrersKey {
            artifact_type: Some("application/x".into()),
            ..key
        };
        assert_eq!(fresh.get(&filtered).await, None);
    }
}
