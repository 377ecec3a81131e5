//! What the pin keeper asks of the pull flow: a pinned tag answered as the digest its pin
//! holds, the tag re-resolved upstream with a HEAD, an image's manifests and blobs brought
//! onto this disk through the usual sources (cache, shared store, upstreams), the tag moved.

use super::manifest::ManifestAnswer;
use super::{PullThrough, Source};
use crate::cache::{CachedManifest, TagKey};
use crate::error::FerryError;
use crate::oci::media_type::{ALL_MANIFEST_TYPES, AcceptList};
use crate::oci::{Digest, Reference, RepositoryName, Tag};
use crate::upstream::UpstreamsExhausted;
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::Duration;

/// How long a blob's file may take to appear after its body's last byte (the commit is a
/// rename right after the digest check).
const COMMIT_WAIT: Duration = Duration::from_secs(5);

/// Why the keeper could not bring a pinned image onto this disk, by who failed.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum PinFetchError {
    /// The registry is not one ferry routes, or a client-side refusal (offline).
    #[error("{0}")]
    Refused(FerryError),
    /// No upstream could answer the tag.
    #[error("no upstream confirmed the tag: {0}")]
    Upstreams(UpstreamsExhausted),
    /// Fetching a manifest or blob failed (upstreams, store or cache).
    #[error("{what}: {cause}")]
    Pull { what: String, cause: FerryError },
    /// A blob body broke off while the keeper read it.
    #[error("blob {digest}: the body broke off: {cause}")]
    Body {
        digest: Digest,
        cause: Arc<std::io::Error>,
    },
    /// The blob was served but not kept on disk (the bound leaves no room, or the cache
    /// cannot write).
    #[error(
        "blob {0} was fetched but is not on this disk: the cache bound leaves no room (pinned content counts toward cache_size) or the cache cannot write"
    )]
    NotKept(Digest),
}

/// The digest a tag names now, and the upstream that said so.
pub(crate) struct ResolvedTag {
    pub(crate) digest: Digest,
    pub(crate) upstream: String,
}

fn every_manifest_type() -> AcceptList {
    AcceptList::from_types(&ALL_MANIFEST_TYPES)
}

impl PullThrough {
    /// A pinned tag's answer: the manifest its pin holds, whatever the tag's age (it moves
    /// only when the keeper has the new image on disk). `None` when the tag is not pinned
    /// here, or the client does not accept the pinned manifest's type.
    pub(super) async fn pinned_tag_answer(
        &self,
        key: &TagKey,
        accept: &AcceptList,
    ) -> Result<Option<ManifestAnswer>, FerryError> {
        let Some(digest) = self.cache.pinned_tag(key) else {
            return Ok(None);
        };
        let manifest = match self.cached_manifest(&digest).await {
            Ok(manifest) => manifest,
            Err(e) => {
                // The usual flow (the tag record, the upstreams) may still answer.
                tracing::warn!(%digest, error = %e, "cannot read a pinned manifest; answering the tag the usual way");
                None
            }
        };
        Ok(manifest
            .filter(|manifest| accept.accepts(&manifest.media_type))
            .map(|manifest| ManifestAnswer {
                manifest,
                source: Source::Cache,
            }))
    }

    /// The digest `tag` names upstream now: a HEAD in priority order (Docker Hub does not
    /// count it against the pull limit), or a GET when the answer carries no digest.
    pub(crate) async fn resolve_pinned_tag(
        &self,
        registry: &str,
        name: &RepositoryName,
        tag: &Tag,
    ) -> Result<ResolvedTag, PinFetchError> {
        let upstreams = self
            .upstreams_for(registry)
            .map_err(PinFetchError::Refused)?;
        let accept = every_manifest_type();
        match self.head_tag(&upstreams, name, tag, &accept).await {
            Ok((Some(digest), upstream)) => Ok(ResolvedTag { digest, upstream }),
            Ok((None, _)) => {
                let (manifest, upstream) = self
                    .fetch_manifest(
                        &upstreams,
                        name,
                        &Reference::Tag(tag.clone()),
                        &accept,
                        crate::upstream::RequestCost::Pull,
                    )
                    .await
                    .map_err(PinFetchError::Upstreams)?;
                self.store_manifest(&manifest).await;
                self.share_manifest(&manifest);
                Ok(ResolvedTag {
                    digest: manifest.digest,
                    upstream,
                })
            }
            Err(exhausted) => Err(PinFetchError::Upstreams(exhausted)),
        }
    }

    /// The digest this ferry, or the fleet through the shared store, last saw for a tag.
    pub(crate) async fn last_known_tag(
        &self,
        registry: &str,
        name: &RepositoryName,
        tag: &Tag,
    ) -> Option<Digest> {
        let key = self.tag_key(registry, name, tag);
        let record = match self.cache.tag_record(&key).await {
            Some(record) => Some(record),
            None => self.shared_tag(&key).await,
        }?;
        record.digest.parse().ok()
    }

    /// A manifest of a pinned image, by digest: from this disk, the shared store or the
    /// upstreams, verified and kept.
    pub(crate) async fn pinned_manifest(
        &self,
        registry: &str,
        name: &RepositoryName,
        digest: &Digest,
    ) -> Result<CachedManifest, PinFetchError> {
        self.manifest(
            registry,
            name,
            &Reference::Digest(digest.clone()),
            &every_manifest_type(),
        )
        .await
        .map(|answer| answer.manifest)
        .map_err(|cause| PinFetchError::Pull {
            what: format!("manifest {digest}"),
            cause,
        })
    }

    /// Brings a blob onto this disk (through its fill: the shared store first, then the
    /// upstreams), unless it is there. Returns the bytes fetched.
    pub(crate) async fn keep_blob(
        self: &Arc<Self>,
        registry: &str,
        name: &RepositoryName,
        digest: &Digest,
    ) -> Result<u64, PinFetchError> {
        if self.cache.has_blob(digest) {
            return Ok(0);
        }
        let answer = self
            .blob(registry, name, digest, None, false)
            .await
            .map_err(|cause| PinFetchError::Pull {
                what: format!("blob {digest}"),
                cause,
            })?;
        let mut bytes = 0u64;
        if let Some(mut body) = answer.body {
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|cause| PinFetchError::Body {
                    digest: digest.clone(),
                    cause: Arc::new(cause),
                })?;
                bytes += chunk.len() as u64;
            }
        }
        let deadline = tokio::time::Instant::now() + COMMIT_WAIT;
        while !self.cache.has_blob(digest) {
            if tokio::time::Instant::now() >= deadline {
                return Err(PinFetchError::NotKept(digest.clone()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(bytes)
    }

    /// Records that `tag` names `manifest` (confirmed by `upstream`): the tag's record here
    /// and in the shared store. The keeper calls it once the image is on disk.
    pub(crate) async fn record_pinned_tag(
        &self,
        registry: &str,
        name: &RepositoryName,
        tag: &Tag,
        manifest: &CachedManifest,
        upstream: &str,
    ) {
        let key = self.tag_key(registry, name, tag);
        self.write_tag_record(&key, manifest, upstream).await;
    }
}
