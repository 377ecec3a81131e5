//! A pinned image as an operator names it: `HOST/REPO:TAG` or `HOST/REPO@sha256:...`, where
//! HOST is the registry as ferry's routing knows it (`docker.io`, `ghcr.io`, ...); a name
//! without one means the default registry. Displayed in one canonical form, the pin's key.

use crate::oci::{Digest, ImageRef, Reference, RepositoryName, Tag};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PinnedImage {
    pub(crate) registry: String,
    pub(crate) repository: RepositoryName,
    pub(crate) reference: Reference,
}

/// Why an image name cannot be pinned (the client's mistake).
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "{input:?} is not an image reference (HOST/REPOSITORY:TAG or HOST/REPOSITORY@sha256:...): {reason}"
)]
pub(crate) struct PinImageError {
    input: String,
    reason: String,
}

impl PinnedImage {
    pub(crate) fn parse(input: &str, default_registry: &str) -> Result<PinnedImage, PinImageError> {
        let bad = |reason: String| PinImageError {
            input: input.to_owned(),
            reason,
        };
        let input = input.trim();
        if input.is_empty() || input.len() > 1024 || input.chars().any(char::is_whitespace) {
            return Err(bad("empty, too long, or holding spaces".into()));
        }
        let (name, digest) = match input.rsplit_once('@') {
            Some((name, digest)) => {
                let digest: Digest = digest.parse().map_err(|e| bad(format!("{e}")))?;
                (name, Some(digest))
            }
            None => (input, None),
        };
        let parsed = ImageRef::parse(name, default_registry).map_err(|e| bad(e.to_string()))?;
        if digest.is_some() && name.rsplit_once(':').is_some_and(|(_, t)| !t.contains('/')) {
            return Err(bad("give a tag or a digest, not both".into()));
        }
        let repository =
            RepositoryName::parse(&parsed.repository).map_err(|e| bad(e.to_string()))?;
        let reference = match digest {
            Some(digest) => Reference::Digest(digest),
            None => Reference::Tag(Tag::parse(&parsed.tag).map_err(|e| bad(e.to_string()))?),
        };
        Ok(PinnedImage {
            registry: parsed.registry,
            repository,
            reference,
        })
    }

    pub(crate) fn tag(&self) -> Option<&Tag> {
        match &self.reference {
            Reference::Tag(tag) => Some(tag),
            Reference::Digest(_) => None,
        }
    }
}

impl std::fmt::Display for PinnedImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.reference {
            Reference::Tag(tag) => write!(f, "{}/{}:{tag}", self.registry, self.repository),
            Reference::Digest(digest) => {
                write!(f, "{}/{}@{digest}", self.registry, self.repository)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_take_one_canonical_form() {
        let image = PinnedImage::parse("alpine", "docker.io").unwrap();
        assert_eq!(image.to_string(), "docker.io/library/alpine:latest");
        let image = PinnedImage::parse("ghcr.io/org/agent:v2", "docker.io").unwrap();
        assert_eq!(image.to_string(), "ghcr.io/org/agent:v2");
        assert_eq!(image.tag().map(|t| t.as_str()), Some("v2"));
        let digest = Digest::sha256_of(b"x");
        let image = PinnedImage::parse(
            &format!("registry.local:5000/team/app@{digest}"),
            "docker.io",
        )
        .unwrap();
        assert_eq!(image.registry, "registry.local:5000");
        assert_eq!(
            image.to_string(),
            format!("registry.local:5000/team/app@{digest}")
        );
        assert!(image.tag().is_none());
    }

    #[test]
    fn bad_names_are_refused() {
        let digest = Digest::sha256_of(b"x");
        for bad in [
            "",
            "UPPER/case:v1",
            "team/app:bad tag",
            "team/app@sha256:short",
            &format!("team/app:v1@{digest}"),
            "team/app:",
        ] {
            assert!(PinnedImage::parse(bad, "docker.io").is_err(), "{bad:?}");
        }
    }
}
