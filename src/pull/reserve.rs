//! Tags while an upstream is within its rate-limit reserve: asked there first with a HEAD
//! (Docker Hub counts no HEAD as a pull), the manifest it names taken by digest from this
//! disk, the store or the other upstreams; else a kept mapping within max_stale is served,
//! and only without one is the pull spent there (by digest).

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
        let answer = match self
            .manifest_by_named_digest(tagged, &digest, RequestCost::PullSparingReserve)
            .await
        {
            Some(answer) => {
                tracing::info!(tag = %tagged.label(), %digest, revalidated_at = %said_by, from = ?answer.1, "tag answered without a pull at an upstream within its rate-limit reserve");
                answer
            }
            None => match stale {
                Some((record, manifest)) if self.within_max_stale(record.age()) => {
                    tracing::warn!(tag = %tagged.label(), %digest, upstream = %said_by, "serving a stale tag rather than spending an upstream's rate-limit reserve: no other source has the manifest it names now");
                    return Some(Ok(ManifestAnswer {
                        manifest: manifest.clone(),
                        source: Source::StaleCache,
                    }));
                }
                // Nothing kept to serve: the pull is spent there (by digest, so the tag
                // means what it said; a GET of the tag elsewhere could name an older one).
                _ => {
                    tracing::info!(tag = %tagged.label(), %digest, upstream = %said_by, "spending a pull within an upstream's rate-limit reserve: no other source has the manifest its tag names");
                    self.manifest_by_named_digest(tagged, &digest, RequestCost::Pull)
                        .await?
                }
            },
        };
        let (manifest, source) = answer;
        self.record_tag(tagged.key, &manifest, &said_by).await;
        Some(Ok(ManifestAnswer { manifest, source }))
    }

    /// The manifest `digest` a tag's HEAD named, acceptable to the client: from this disk,
    /// the shared store, or the upstreams `cost` allows; `None` when none has it.
    async fn manifest_by_named_digest(
        &self,
        tagged: &TaggedRequest<'_>,
        digest: &Digest,
        cost: RequestCost,
    ) -> Option<(CachedManifest, Source)> {
        let acceptable = |manifest: &CachedManifest| tagged.accept.accepts(&manifest.media_type);
        if let Ok(Some(manifest)) = self.cached_manifest(digest).await {
            return acceptable(&manifest).then_some((manifest, Source::Cache));
        }
        if let Some(manifest) = self.shared_manifest(digest).await {
            return acceptable(&manifest).then_some((manifest, Source::SharedStore));
        }
        let (manifest, upstream) = self
            .fetch_manifest(
                tagged.upstreams,
                tagged.name,
                &Reference::Digest(digest.clone()),
                tagged.accept,
                cost,
            )
            .await
            .ok()?;
        self.store_manifest(&manifest).await;
        self.share_manifest(&manifest);
        let source = Source::Upstream(upstream);
        self.served_by(ContentKind::Manifest, digest, tagged.registry, &source)
            .await;
        acceptable(&manifest).then_some((manifest, source))
    }
}
