//! Registry names: the canonical form of a registry host (Docker Hub's aliases folded into
//! `docker.io`), the strict `host[:port]` grammar clients may name, and the patterns
//! `direct_registries` matches them with.

use std::fmt;

pub const DOCKER_HUB: &str = "docker.io";

/// The canonical name of a registry host (lowercase, Docker Hub's aliases folded).
pub fn canonical_registry(name: &str) -> String {
    let name = name.trim().to_ascii_lowercase();
    match name.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "docker.io" => DOCKER_HUB.to_owned(),
        _ => name,
    }
}

/// Whether `name` is a lowercase `host[:port]`: DNS labels of `[a-z0-9-]` (or an IPv4
/// address) and an optional non-zero port. Nothing else may become a direct upstream URL.
pub fn is_registry_host(name: &str) -> bool {
    let host = match name.rsplit_once(':') {
        Some((host, port)) => {
            if !port.parse::<u16>().is_ok_and(|p| p != 0) {
                return false;
            }
            host
        }
        None => name,
    };
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

/// One `direct_registries` entry: `*` (any registry), `*.example.com` (its subdomains, any
/// port), or an exact `host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryPattern {
    Any,
    /// A suffix with its leading dot, e.g. `.example.com`.
    Subdomains(String),
    Exact(String),
}

/// A `direct_registries` pattern that names no registry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PatternError(&'static str);

impl RegistryPattern {
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        let text = text.trim().to_ascii_lowercase();
        if text == "*" {
            return Ok(RegistryPattern::Any);
        }
        if let Some(domain) = text.strip_prefix("*.") {
            return if is_registry_host(domain) && !domain.contains(':') {
                Ok(RegistryPattern::Subdomains(format!(".{domain}")))
            } else {
                Err(PatternError(
                    "expected *.<domain> without a port, e.g. *.example.com",
                ))
            };
        }
        let exact = canonical_registry(&text);
        if is_registry_host(&exact) {
            Ok(RegistryPattern::Exact(exact))
        } else {
            Err(PatternError(
                "expected a registry host[:port] such as quay.io, *.example.com, or *",
            ))
        }
    }

    /// Whether the canonical registry name `registry` is allowed. Wildcards only match DNS
    /// names of two labels or more whose last label starts with a letter: never an IP
    /// address (in any of the numeric forms URL parsers accept) nor `localhost`; those need
    /// an exact pattern.
    pub fn matches(&self, registry: &str) -> bool {
        let host = registry.rsplit_once(':').map_or(registry, |(host, _)| host);
        let dns_name = host.contains('.')
            && host
                .rsplit('.')
                .next()
                .is_some_and(|tld| tld.starts_with(|c: char| c.is_ascii_lowercase()));
        match self {
            RegistryPattern::Any => dns_name,
            RegistryPattern::Subdomains(suffix) => dns_name && host.ends_with(suffix.as_str()),
            RegistryPattern::Exact(name) => name == registry,
        }
    }
}

impl fmt::Display for RegistryPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegistryPattern::Any => f.write_str("*"),
            RegistryPattern::Subdomains(suffix) => write!(f, "*{suffix}"),
            RegistryPattern::Exact(name) => f.write_str(name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_aliases_are_one_registry() {
        for alias in [
            "docker.io",
            "index.docker.io",
            "registry-1.docker.io",
            "Docker.IO",
        ] {
            assert_eq!(canonical_registry(alias), "docker.io");
        }
        assert_eq!(canonical_registry("ghcr.io"), "ghcr.io");
    }

    #[test]
    fn registry_hosts_are_strict() {
        for good in [
            "quay.io",
            "registry.internal:5000",
            "localhost",
            "127.0.0.1:5000",
            "a-b.c",
        ] {
            assert!(is_registry_host(good), "{good}");
        }
        for bad in [
            "",
            "Quay.io",
            "quay.io:0",
            "quay.io:99999",
            "quay..io",
            "-a.io",
            "a-.io",
            "../etc",
            "a/b",
            "a_b.io",
            "quay.io:",
            ":5000",
            "a b",
            "[::1]:5000",
        ] {
            assert!(!is_registry_host(bad), "{bad:?}");
        }
    }

    #[test]
    fn registry_patterns_match_as_documented() {
        let any = RegistryPattern::parse("*").unwrap();
        let sub = RegistryPattern::parse("*.Example.com").unwrap();
        let exact = RegistryPattern::parse("registry.internal:5000").unwrap();
        let hub = RegistryPattern::parse("index.docker.io").unwrap();
        assert!(any.matches("quay.io") && any.matches("registry.internal:5000"));
        for not_dns in [
            "127.0.0.1:5000",
            "localhost",
            "2130706433",
            "0x7f.1",
            "10.0.0.1",
        ] {
            assert!(!any.matches(not_dns), "wildcards never match {not_dns}");
        }
        assert!(
            RegistryPattern::parse("127.0.0.1:5000")
                .unwrap()
                .matches("127.0.0.1:5000")
        );
        assert!(sub.matches("a.example.com") && sub.matches("a.b.example.com:5000"));
        assert!(!sub.matches("example.com") && !sub.matches("badexample.com"));
        assert!(exact.matches("registry.internal:5000"));
        assert!(!exact.matches("registry.internal") && !exact.matches("registry.internal:5001"));
        assert!(hub.matches("docker.io"), "aliases fold");
        assert_eq!(sub.to_string(), "*.example.com");
        for bad in [
            "*.example.com:5000",
            "**",
            "*example.com",
            "http://quay.io",
            "a/b",
            "",
        ] {
            assert!(RegistryPattern::parse(bad).is_err(), "{bad:?}");
        }
    }
}
