//! Image references as people type them (`alpine`, `ghcr.io/org/app:v1`,
//! `localhost:5000/team/x`): registry (canonical, Docker Hub's `library/` added), repository
//! and tag, validated by the spec's grammar. Used by `ferry warm` and the cache tools.

/// A parsed image reference: `[registry/]repository[:tag]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    pub(crate) registry: String,
    pub(crate) repository: String,
    pub(crate) tag: String,
}

impl ImageRef {
    pub fn parse(input: &str, default_registry: &str) -> Result<ImageRef, super::name::NameError> {
        let (rest, tag) = match input.rsplit_once(':') {
            Some((rest, tag)) if !tag.contains('/') => (rest, tag.to_owned()),
            _ => (input, "latest".to_owned()),
        };
        let (registry, repository) = match rest.split_once('/') {
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_owned(), path.to_owned())
            }
            _ => (default_registry.to_owned(), rest.to_owned()),
        };
        let registry = super::registry::canonical_registry(&registry);
        let repository = if registry == super::registry::DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        super::RepositoryName::parse(&repository)?;
        super::Tag::parse(&tag)?;
        Ok(ImageRef {
            registry,
            repository,
            tag,
        })
    }
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}:{}", self.registry, self.repository, self.tag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references() {
        let r = ImageRef::parse("alpine", "docker.io").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_str()),
            ("docker.io", "library/alpine", "latest")
        );
        let r = ImageRef::parse("ghcr.io/org/app:v1", "docker.io").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_str()),
            ("ghcr.io", "org/app", "v1")
        );
        let r = ImageRef::parse("localhost:5000/team/x", "docker.io").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_str()),
            ("localhost:5000", "team/x", "latest")
        );
        assert!(ImageRef::parse("Bad/Name", "docker.io").is_err());
    }
}
