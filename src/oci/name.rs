//! Repository names, tags and references, validated by the OCI distribution grammar.
//! A value of these types is always safe to embed in an upstream URL and a cache key.

use super::digest::Digest;
use std::fmt;

/// Longest repository name accepted (the spec's limit for host + name is 255).
pub(crate) const MAX_NAME_LEN: usize = 255;
/// Longest tag accepted (`[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`).
pub(crate) const MAX_TAG_LEN: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepositoryName(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {input:?}: {reason}")]
pub struct NameError {
    pub(crate) what: &'static str,
    pub(crate) input: String,
    pub(crate) reason: &'static str,
}

fn name_error(what: &'static str, input: &str, reason: &'static str) -> NameError {
    NameError {
        what,
        input: input.chars().take(300).collect(),
        reason,
    }
}

impl RepositoryName {
    /// Validates `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`.
    pub fn parse(input: &str) -> Result<Self, NameError> {
        let err = |reason| name_error("repository name", input, reason);
        if input.is_empty() {
            return Err(err("empty"));
        }
        if input.len() > MAX_NAME_LEN {
            return Err(err("longer than 255 characters"));
        }
        for component in input.split('/') {
            if !valid_component(component) {
                return Err(err(
                    "each path component must be lowercase alphanumerics separated by '.', '_', '__' or '-'",
                ));
            }
        }
        Ok(RepositoryName(input.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Docker Hub's convention: a single-component name lives under `library/`.
    pub(crate) fn with_docker_hub_library_prefix(&self) -> RepositoryName {
        if self.0.contains('/') {
            self.clone()
        } else {
            RepositoryName(format!("library/{}", self.0))
        }
    }
}

fn valid_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        // A separator run: '.', '_', '__', or one or more '-'.
        let start = i;
        match bytes[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < bytes.len() && bytes[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < bytes.len() && bytes[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
        if i == start || i >= bytes.len() || !alnum(bytes[i]) {
            return false;
        }
    }
    true
}

impl fmt::Display for RepositoryName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

impl Tag {
    /// Validates `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
    pub fn parse(input: &str) -> Result<Self, NameError> {
        let err = |reason| name_error("tag", input, reason);
        let bytes = input.as_bytes();
        if bytes.is_empty() {
            return Err(err("empty"));
        }
        if bytes.len() > MAX_TAG_LEN {
            return Err(err("longer than 128 characters"));
        }
        if !(bytes[0].is_ascii_alphanumeric() || bytes[0] == b'_') {
            return Err(err("must start with a letter, digit or '_'"));
        }
        if !bytes
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(err("may only contain letters, digits, '.', '_' and '-'"));
        }
        Ok(Tag(input.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What follows `/manifests/`: a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reference {
    Tag(Tag),
    Digest(Digest),
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => t.fmt(f),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_names() {
        for ok in [
            "a",
            "library/alpine",
            "test/multi-v2s2",
            "a.b_c__d---e/f0",
            "x/y/z/w",
            "ghcr.io/org/repo",
        ] {
            assert!(RepositoryName::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_invalid_names() {
        for bad in [
            "",
            "A",
            "Library/alpine",
            "..",
            "../etc",
            "a/../b",
            "a//b",
            "/a",
            "a/",
            "a___b",
            "a.-b",
            "-a",
            "a-",
            "a%2fb",
            "a b",
            &"a".repeat(256),
        ] {
            assert!(RepositoryName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn tags() {
        for ok in ["latest", "v1.2.3", "_x", "A-b_c.d", &"t".repeat(128)] {
            assert!(Tag::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".hidden", "-x", "a/b", "a:b", "..", &"t".repeat(129)] {
            assert!(Tag::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn docker_hub_library_prefix() {
        let n = RepositoryName::parse("alpine").unwrap();
        assert_eq!(
            n.with_docker_hub_library_prefix().as_str(),
            "library/alpine"
        );
        let n = RepositoryName::parse("org/app").unwrap();
        assert_eq!(n.with_docker_hub_library_prefix().as_str(), "org/app");
    }
}
