//! What a pinned image needs on disk: its manifest, the child manifests of the wanted
//! platforms when it is an index, and every config and layer blob, brought in through the
//! pull flow (this disk, the shared store, then the upstreams).

use super::image::PinnedImage;
use crate::cache::CachedManifest;
use crate::oci::Digest;
use crate::pull::PullThrough;
use crate::pull::pinning::PinFetchError;
use serde::Deserialize;
use std::sync::Arc;

/// The descriptors of a manifest or index that name other content.
#[derive(Deserialize, Default)]
struct Parts {
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Descriptor {
    digest: String,
    platform: Option<Platform>,
}

#[derive(Deserialize)]
pub(crate) struct Platform {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
    variant: Option<String>,
}

impl Platform {
    /// Whether `os/arch[/variant]` names this platform (a pattern without a variant matches
    /// every variant).
    fn matches(&self, wanted: &str) -> bool {
        let mut parts = wanted.split('/');
        let (os, architecture, variant) = (parts.next(), parts.next(), parts.next());
        os == Some(self.os.as_str())
            && architecture == Some(self.architecture.as_str())
            && (variant.is_none() || variant == self.variant.as_deref())
    }
}

/// Whether an index entry of `platform` is wanted: every entry when `wanted` is empty, else
/// one whose platform one of the `os/arch[/variant]` patterns names (also for `ferry warm`).
pub(crate) fn platform_wanted(platform: Option<&Platform>, wanted: &[String]) -> bool {
    wanted.is_empty() || platform.is_some_and(|p| wanted.iter().any(|w| p.matches(w)))
}

/// Why a manifest does not describe an image the keeper can hold.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum ContentError {
    #[error(transparent)]
    Fetch(#[from] PinFetchError),
    #[error("manifest {digest} does not parse: {reason}")]
    Malformed { digest: Digest, reason: String },
    #[error("index {digest} has no manifest for the platforms {platforms:?}")]
    NoPlatform {
        digest: Digest,
        platforms: Vec<String>,
    },
}

fn parts_of(manifest: &CachedManifest) -> Result<Parts, ContentError> {
    serde_json::from_slice(&manifest.body).map_err(|e| ContentError::Malformed {
        digest: manifest.digest.clone(),
        reason: e.to_string(),
    })
}

fn digest_of(descriptor: &Descriptor, within: &Digest) -> Result<Digest, ContentError> {
    descriptor
        .digest
        .parse()
        .map_err(|e| ContentError::Malformed {
            digest: within.clone(),
            reason: format!("descriptor digest {:?}: {e}", descriptor.digest),
        })
}

/// The manifests of an image (the top one first) and the blobs they need.
pub(crate) struct ImageContents {
    pub(crate) top: CachedManifest,
    pub(crate) manifests: Vec<Digest>,
    pub(crate) blobs: Vec<Digest>,
}

impl ImageContents {
    /// Every digest the image needs.
    pub(crate) fn digests(&self) -> Vec<Digest> {
        self.manifests.iter().chain(&self.blobs).cloned().collect()
    }
}

/// Reads the manifests of `image` at `digest` (fetching the missing ones), keeping the
/// children of `platforms` (every platform when empty).
pub(crate) async fn manifests_of(
    pull: &PullThrough,
    image: &PinnedImage,
    digest: &Digest,
    platforms: &[String],
) -> Result<ImageContents, ContentError> {
    let top = pull
        .pinned_manifest(&image.registry, &image.repository, digest)
        .await?;
    let parts = parts_of(&top)?;
    let mut contents = ImageContents {
        top: top.clone(),
        manifests: vec![digest.clone()],
        blobs: Vec::new(),
    };
    let mut images = Vec::new();
    if parts.manifests.is_empty() {
        images.push(parts);
    } else {
        for child in &parts.manifests {
            if !platform_wanted(child.platform.as_ref(), platforms) {
                continue;
            }
            let child_digest = digest_of(child, digest)?;
            let manifest = pull
                .pinned_manifest(&image.registry, &image.repository, &child_digest)
                .await?;
            images.push(parts_of(&manifest)?);
            contents.manifests.push(child_digest);
        }
        if images.is_empty() {
            return Err(ContentError::NoPlatform {
                digest: digest.clone(),
                platforms: platforms.to_vec(),
            });
        }
    }
    for parts in &images {
        for descriptor in parts.config.iter().chain(&parts.layers) {
            let blob = digest_of(descriptor, digest)?;
            if !contents.blobs.contains(&blob) {
                contents.blobs.push(blob);
            }
        }
    }
    Ok(contents)
}

/// Brings every blob of `contents` onto this disk; returns the bytes fetched.
pub(crate) async fn keep_blobs(
    pull: &Arc<PullThrough>,
    image: &PinnedImage,
    contents: &ImageContents,
) -> Result<u64, ContentError> {
    let mut fetched = 0;
    for blob in &contents.blobs {
        fetched += pull
            .keep_blob(&image.registry, &image.repository, blob)
            .await?;
    }
    Ok(fetched)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms_match_with_or_without_a_variant() {
        let arm = Platform {
            os: "linux".into(),
            architecture: "arm64".into(),
            variant: Some("v8".into()),
        };
        assert!(arm.matches("linux/arm64"));
        assert!(arm.matches("linux/arm64/v8"));
        assert!(!arm.matches("linux/arm64/v7"));
        assert!(!arm.matches("linux/amd64"));
        assert!(!arm.matches("linux"));
    }
}
