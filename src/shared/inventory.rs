//! The store's side for `ferry cache ls|du|verify --shared-store`: what the bucket holds under
//! ferry's prefix (by kind), the tag records in it, and a rehash of every blob and manifest
//! against its name (mismatches are removed, as a replica would on reading them).

use super::{SharedStore, StoreError};
use crate::oci::{Digest, DigestVerifier};
use futures_util::StreamExt;
use object_store::ObjectStoreExt;
use std::collections::BTreeMap;

/// Objects and bytes under the prefix, by kind (`blobs`, `manifests`, `tags`, other).
#[derive(Debug, Default, serde::Serialize)]
pub struct StoreUsage {
    pub objects: u64,
    pub bytes: u64,
    pub by_kind: BTreeMap<String, (u64, u64)>,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct StoreVerifyReport {
    pub checked: u64,
    pub bytes: u64,
    /// Objects whose bytes did not match their digest (removed), with what they hashed to.
    pub removed: Vec<(String, String)>,
}

impl SharedStore {
    fn kind_of(&self, location: &str) -> String {
        let relative = location
            .strip_prefix(self.config.prefix.as_str())
            .unwrap_or(location)
            .trim_start_matches('/');
        relative.split('/').next().unwrap_or("").to_owned()
    }

    /// Lists every object under the prefix.
    async fn list_all(&self) -> Result<Vec<object_store::ObjectMeta>, StoreError> {
        let prefix = (!self.config.prefix.is_empty()).then(|| self.path(""));
        let mut listing = self.store.list(prefix.as_ref());
        let mut objects = Vec::new();
        while let Some(meta) = listing.next().await {
            objects.push(
                meta.map_err(|e| StoreError::store(format!("listing {}", self.config.url), e))?,
            );
        }
        Ok(objects)
    }

    pub async fn usage(&self) -> Result<StoreUsage, StoreError> {
        let mut usage = StoreUsage::default();
        for meta in self.list_all().await? {
            usage.objects += 1;
            usage.bytes += meta.size;
            let entry = usage
                .by_kind
                .entry(self.kind_of(meta.location.as_ref()))
                .or_default();
            entry.0 += 1;
            entry.1 += meta.size;
        }
        Ok(usage)
    }

    /// Every tag record in the store (as stored: JSON).
    pub async fn tag_records(&self) -> Result<Vec<serde_json::Value>, StoreError> {
        let mut records = Vec::new();
        for meta in self.list_all().await? {
            if self.kind_of(meta.location.as_ref()) != "tags" {
                continue;
            }
            let body = self
                .store
                .get(&meta.location)
                .await
                .map_err(|e| StoreError::store(format!("reading {}", meta.location), e))?
                .bytes()
                .await
                .map_err(|e| StoreError::store(format!("reading {}", meta.location), e))?;
            match serde_json::from_slice(&body) {
                Ok(record) => records.push(record),
                Err(e) => tracing::warn!(location = %meta.location, error = %e, "not a tag record"),
            }
        }
        Ok(records)
    }

    /// Rehashes every blob and manifest (streamed) against the digest in its name and
    /// removes the ones that do not match.
    pub async fn verify_all(&self) -> Result<StoreVerifyReport, StoreError> {
        let mut report = StoreVerifyReport::default();
        for meta in self.list_all().await? {
            let kind = self.kind_of(meta.location.as_ref());
            if kind != "blobs" && kind != "manifests" {
                continue;
            }
            let mut parts = meta.location.parts().map(|p| p.as_ref().to_owned());
            let name: Vec<String> = parts.by_ref().collect();
            let [.., algorithm, hex] = name.as_slice() else {
                continue;
            };
            let Ok(expected) = format!("{algorithm}:{hex}").parse::<Digest>() else {
                continue;
            };
            let mut verifier = DigestVerifier::new(expected.algorithm());
            let mut body = self
                .store
                .get(&meta.location)
                .await
                .map_err(|e| StoreError::store(format!("reading {}", meta.location), e))?
                .into_stream();
            while let Some(chunk) = body.next().await {
                let chunk = chunk
                    .map_err(|e| StoreError::store(format!("reading {}", meta.location), e))?;
                report.bytes += chunk.len() as u64;
                verifier.update(&chunk);
            }
            report.checked += 1;
            let actual = verifier.finish();
            if actual != expected {
                self.store
                    .delete(&meta.location)
                    .await
                    .map_err(|e| StoreError::store(format!("removing {}", meta.location), e))?;
                report
                    .removed
                    .push((meta.location.to_string(), actual.to_string()));
            }
        }
        Ok(report)
    }
}
