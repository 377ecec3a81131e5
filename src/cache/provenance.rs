//! Which registries served or confirmed each cached digest, for `client_access`: a client
//! limited to some registries gets content only when one of them vouched for it. Kept in
//! memory (weighted by bytes) and beside the content file as `<hex>.from` (a JSON list).

use super::layout::Layout;
use super::writer::write_file_atomically;
use crate::oci::Digest;
use std::path::PathBuf;
use std::sync::Arc;

/// Registries remembered per digest; a digest served by more is re-confirmed when asked.
const MAX_REGISTRIES_PER_DIGEST: usize = 64;
/// Bytes of provenance kept in memory (the rest is read back from disk).
const MEMORY_BYTES: u64 = 4 * 1024 * 1024;

/// Blobs and manifests keep separate records (the sidecar lives beside the content file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum ContentKind {
    Blob,
    Manifest,
}

pub(crate) struct Provenance {
    memory: moka::sync::Cache<(ContentKind, Digest), Arc<Vec<String>>>,
}

impl Default for Provenance {
    fn default() -> Self {
        Provenance {
            memory: moka::sync::Cache::builder()
                .max_capacity(MEMORY_BYTES)
                .weigher(|_, registries: &Arc<Vec<String>>| {
                    let bytes: usize = registries.iter().map(|r| r.len() + 24).sum();
                    u32::try_from(bytes + 96).unwrap_or(u32::MAX)
                })
                .build(),
        }
    }
}

/// The sidecar of a content file: `<content path>.from`.
pub(crate) fn sidecar_path(content_path: &std::path::Path) -> PathBuf {
    let mut path = content_path.as_os_str().to_owned();
    path.push(".from");
    PathBuf::from(path)
}

fn content_path(layout: &Layout, kind: ContentKind, digest: &Digest) -> PathBuf {
    match kind {
        ContentKind::Blob => layout.blob_path(digest),
        ContentKind::Manifest => layout.manifest_path(digest),
    }
}

impl Provenance {
    /// The registries known to have served or confirmed `digest` (empty when none are).
    pub(crate) async fn registries(
        &self,
        layout: &Layout,
        kind: ContentKind,
        digest: &Digest,
    ) -> Arc<Vec<String>> {
        let key = (kind, digest.clone());
        if let Some(known) = self.memory.get(&key) {
            return known;
        }
        let path = sidecar_path(&content_path(layout, kind, digest));
        // A missing, torn or foreign file vouches for nothing: the client's registry is asked.
        let known: Vec<String> = match tokio::fs::read(&path).await {
            Ok(text) => serde_json::from_slice(&text).unwrap_or_default(),
            Err(_) => Vec::new(),
        };
        let known = Arc::new(known);
        if !known.is_empty() {
            self.memory.insert(key, known.clone());
        }
        known
    }

    /// Whether any of `allowed` served or confirmed `digest`.
    pub(crate) async fn vouched_by_any(
        &self,
        layout: &Layout,
        kind: ContentKind,
        digest: &Digest,
        allowed: &[String],
    ) -> bool {
        let known = self.registries(layout, kind, digest).await;
        known.iter().any(|registry| allowed.contains(registry))
    }

    /// Records that `registry` served or confirmed `digest`; true when it was not known
    /// before. The sidecar is written only
    /// beside content that is on disk (a confirmation ahead of a fill stays in memory; the
    /// fill records its own registry when it commits). A lost write only costs a later
    /// confirmation, never a wrong answer.
    pub(crate) async fn record(
        &self,
        layout: &Layout,
        kind: ContentKind,
        digest: &Digest,
        registry: &str,
    ) -> std::io::Result<bool> {
        let known = self.registries(layout, kind, digest).await;
        if known.iter().any(|r| r == registry) || known.len() >= MAX_REGISTRIES_PER_DIGEST {
            return Ok(false);
        }
        let mut updated = known.as_ref().clone();
        updated.push(registry.to_owned());
        let updated = Arc::new(updated);
        self.memory.insert((kind, digest.clone()), updated.clone());
        let content = content_path(layout, kind, digest);
        if !tokio::fs::try_exists(&content).await.unwrap_or(false) {
            return Ok(true);
        }
        let json = serde_json::to_vec(updated.as_ref()).map_err(std::io::Error::other)?;
        write_file_atomically(layout, &sidecar_path(&content), json.into()).await?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u8) -> Digest {
        Digest::sha256_of(&[n])
    }

    #[tokio::test]
    async fn records_persist_beside_content_and_memory_only_ahead_of_it() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::create(dir.path()).unwrap();
        let provenance = Provenance::default();
        let cached = digest(1);
        let path = layout.blob_path(&cached);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, [1u8]).unwrap();
        provenance
            .record(&layout, ContentKind::Blob, &cached, "ghcr.io")
            .await
            .unwrap();
        provenance
            .record(&layout, ContentKind::Blob, &cached, "ghcr.io")
            .await
            .unwrap();
        let absent = digest(2);
        provenance
            .record(&layout, ContentKind::Blob, &absent, "quay.io")
            .await
            .unwrap();
        assert!(!sidecar_path(&layout.blob_path(&absent)).exists());

        let restarted = Provenance::default();
        let allowed = |r: &str| vec![r.to_owned()];
        assert!(
            restarted
                .vouched_by_any(&layout, ContentKind::Blob, &cached, &allowed("ghcr.io"))
                .await
        );
        assert_eq!(
            *restarted
                .registries(&layout, ContentKind::Blob, &cached)
                .await,
            vec!["ghcr.io".to_owned()]
        );
        assert!(
            !restarted
                .vouched_by_any(&layout, ContentKind::Blob, &cached, &allowed("quay.io"))
                .await
        );
        assert!(
            !restarted
                .vouched_by_any(&layout, ContentKind::Manifest, &cached, &allowed("ghcr.io"))
                .await
        );
        std::fs::write(sidecar_path(&path), b"[\"ghcr.i").unwrap();
        assert!(
            !Provenance::default()
                .vouched_by_any(&layout, ContentKind::Blob, &cached, &allowed("ghcr.i"))
                .await
        );
    }
}
