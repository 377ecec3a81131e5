//! Tags while an upstream is within its rate-limit reserve: the tag is still asked there
//! first, with a HEAD (Docker Hub counts no HEAD as a pull), and the manifest it names is
//! taken from this disk, the shared store or the other upstreams by digest; a kept mapping
//! within max_stale is served rather than spending the reserve.

use super::manifest::{ManifestAnswer, TaggedRequest};
use super::{PullThrough, Source};
use crate::cache::provenance::ContentKind;
use crate::cache::{CachedManifest, TagRecord};
use crate::error::FerryError;
use crate::oci::{Digest, Reference};
use crate::upstream::RequestCost;

impl PullThrough {
    /// The tag answered without a pull at an upstream within its reserve, when that is
    /// possible: `head` is what revalidation's HEAD said (asked here when the tag was not
    /// kept). `None`: the usual fetch (a GET, upstreams within their reserve last) decides.
    pub(super) async fn tag_sparing_reserve(
        &self,
        tagged: &TaggedRequest<'_>,
        head: Option<(Option<Digest>, String)>,
        stale: Option<&(TagRecord, CachedManifest)>,
    ) -> Option<Result<ManifestAnswer, FerryError>> {
        let head = match head {
            Some(head) => head,
            None => self
                .head_tag(tagged.upstreams, tagged.name, tagged.tag, tagged.accept)
                .await
                .ok()?,
        };
        let (Some(digest), said_by) = head else {
            return None;
        };
        // An upstream with budget named the digest: the usual GET goes there first anyway.
        tagged
            .upstreams
            .find(&said_by)
            .filter(|client| client.health().in_reserve())?;
        match self.manifest_without_a_pull(tagged, &digest).await {
            Some((manifest, source)) if tagged.accept.accepts(&manifest.media_type) => {
                tracing::info!(tag = %tagged.label(), %digest, revalidated_at = %said_by, from = ?source, "tag answered without a pull at an upstream within its rate-limit reserve");
                self.record_tag(tagged.key, &manifest, &said_by).await;
                Some(Ok(ManifestAnswer { manifest, source }))
            }
            _ => match stale {
                Some((record, manifest)) if self.within_max_stale(record.age()) => {
                    tracing::warn!(tag = %tagged.label(), %digest, upstream = %said_by, "serving a stale tag rather than spending an upstream's rate-limit reserve: no other source has the manifest it names now");
                    Some(Ok(ManifestAnswer {
                        manifest: manifest.clone(),
                        source: Source::StaleCache,
                    }))
                }
                _ => None,
            },
        }
    }

    /// The manifest `digest` from this disk, the shared store, or an upstream outside its
    /// reserve; `None` when none has it.
    async fn manifest_without_a_pull(
        &self,
        tagged: &TaggedRequest<'_>,
        digest: &Digest,
    ) -> Option<(CachedManifest, Source)> {
        if let Ok(Some(manifest)) = self.cached_manifest(digest).await {
            return Some((manifest, Source::Cache));
        }
        if let Some(manifest) = self.shared_manifest(digest).await {
            return Some((manifest, Source::SharedStore));
        }
        let (manifest, upstream) = self
            .fetch_manifest(
                tagged.upstreams,
                tagged.name,
                &Reference::Digest(digest.clone()),
                tagged.accept,
                RequestCost::PullSparingReserve,
            )
            .await
            .ok()?;
        self.store_manifest(&manifest).await;
        self.share_manifest(&manifest);
        let source = Source::Upstream(upstream);
        self.served_by(ContentKind::Manifest, digest, tagged.registry, &source)
            .await;
        Some((manifest, source))
    }
}
