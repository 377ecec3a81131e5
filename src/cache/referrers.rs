//! The last referrers index (OCI distribution 1.1 `GET /v2/<name>/referrers/<digest>`)
//! fetched for each (registry, repository, subject digest, artifactType filter), kept in
//! memory and in one small JSON file each, so it can be served when every upstream is down.

use super::layout::Layout;
use super::writer::write_file_atomically;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

/// Referrers lists kept in memory; older ones are read back from disk when asked for.
const MEMORY_ENTRIES: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ReferrersKey {
    pub(crate) registry: String,
    pub(crate) repository: String,
    pub(crate) subject: String,
    /// The `artifactType` filter the client asked for, if any.
    pub(crate) artifact_type: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReferrersRecord {
    pub(crate) key: ReferrersKey,
    /// The image index, as served to clients (already filtered when `filtered`).
    pub(crate) body: String,
    /// Whether `artifactType` was applied (`OCI-Filters-Applied: artifactType`).
    pub(crate) filtered: bool,
    /// When an upstream answered it (milliseconds since the Unix epoch).
    pub(crate) fetched_at_unix_ms: u64,
    pub(crate) upstream: String,
}

impl ReferrersRecord {
    pub fn age(&self) -> Duration {
        let now = super::tags::unix_ms(std::time::SystemTime::now());
        Duration::from_millis(now.saturating_sub(self.fetched_at_unix_ms))
    }
}

pub struct ReferrersStore {
    dir: PathBuf,
    memory: Mutex<HashMap<ReferrersKey, ReferrersRecord>>,
}

impl ReferrersStore {
    pub fn new(dir: PathBuf) -> ReferrersStore {
        ReferrersStore {
            dir,
            memory: Mutex::new(HashMap::new()),
        }
    }

    fn path(&self, key: &ReferrersKey) -> PathBuf {
        let mut parts: Vec<&[u8]> = Vec::new();
        for part in [&key.registry, &key.repository, &key.subject] {
            parts.extend([part.as_bytes(), &[0u8]]);
        }
        match &key.artifact_type {
            Some(filter) => parts.extend([&[1u8][..], filter.as_bytes()]),
            None => parts.push(&[2u8]),
        }
        super::layout::record_path(&self.dir, &parts)
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, HashMap<ReferrersKey, ReferrersRecord>> {
        // A poisoned lock only means a panic elsewhere mid-update of a plain map.
        self.memory.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn remember(&self, record: ReferrersRecord) {
        let mut memory = self.memory();
        if memory.len() >= MEMORY_ENTRIES && !memory.contains_key(&record.key) {
            // Forget the oldest answer; it is still on disk.
            if let Some(oldest) = memory
                .values()
                .min_by_key(|r| r.fetched_at_unix_ms)
                .map(|r| r.key.clone())
            {
                memory.remove(&oldest);
            }
        }
        memory.insert(record.key.clone(), record);
    }

    /// The last answer for `key`, from memory or disk.
    pub async fn get(&self, key: &ReferrersKey) -> Option<ReferrersRecord> {
        if let Some(record) = self.memory().get(key) {
            return Some(record.clone());
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
        self.remember(record.clone());
        Some(record)
    }

    /// Remembers `record` and writes it to disk (atomically).
    pub async fn put(&self, layout: &Layout, record: ReferrersRecord) -> io::Result<()> {
        let path = self.path(&record.key);
        self.remember(record.clone());
        let json = serde_json::to_vec(&record).map_err(io::Error::other)?;
        write_file_atomically(layout, &path, json.into()).await
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
            body: r#"{"schemaVersion":2,"manifests":[]}"#.into(),
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
