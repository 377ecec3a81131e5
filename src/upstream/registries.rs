//! Many registries in one ferry: each registry name (docker.io, ghcr.io, ...) has its own
//! ordered upstream list; registries matching `direct_registries` get an upstream at
//! `https://<registry>` on first use. Docker Hub's aliases (`index.docker.io`,
//! `registry-1.docker.io`) are one registry, `docker.io`.

use super::client::UpstreamClient;
use super::pool::{PoolSettings, Upstreams};
use crate::config::{DirectRegistries, UpstreamConfig};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

pub const DOCKER_HUB: &str = "docker.io";

/// Most registries opened through `direct_registries`; a further one is refused, so clients
/// naming random registries cannot make ferry build clients without bound.
pub const MAX_DIRECT_REGISTRIES: usize = 64;

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

impl RegistryPattern {
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim().to_ascii_lowercase();
        if text == "*" {
            return Ok(RegistryPattern::Any);
        }
        if let Some(domain) = text.strip_prefix("*.") {
            return if is_registry_host(domain) && !domain.contains(':') {
                Ok(RegistryPattern::Subdomains(format!(".{domain}")))
            } else {
                Err("expected *.<domain> without a port, e.g. *.example.com".into())
            };
        }
        let exact = canonical_registry(&text);
        if is_registry_host(&exact) {
            Ok(RegistryPattern::Exact(exact))
        } else {
            Err("expected a registry host[:port] such as quay.io, *.example.com, or *".into())
        }
    }

    /// Whether the canonical registry name `registry` is allowed.
    pub fn matches(&self, registry: &str) -> bool {
        match self {
            RegistryPattern::Any => true,
            RegistryPattern::Subdomains(suffix) => {
                let host = registry.rsplit_once(':').map_or(registry, |(host, _)| host);
                host.ends_with(suffix.as_str())
            }
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

pub struct Registries {
    configured: BTreeMap<String, Arc<Upstreams>>,
    default_registry: String,
    direct: Option<DirectRegistries>,
    /// Direct registries opened so far, by name.
    opened: Mutex<BTreeMap<String, Arc<Upstreams>>>,
    settings: PoolSettings,
    metrics: Arc<crate::metrics::Metrics>,
}

impl Registries {
    /// Groups `configs` by their registry, keeping each registry's order.
    pub fn new(
        configs: &[UpstreamConfig],
        default_registry: &str,
        direct: Option<DirectRegistries>,
        settings: &PoolSettings,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Result<Self, String> {
        let mut grouped: BTreeMap<String, Vec<UpstreamConfig>> = BTreeMap::new();
        for config in configs {
            grouped
                .entry(canonical_registry(&config.registry))
                .or_default()
                .push(config.clone());
        }
        let mut configured = BTreeMap::new();
        for (registry, configs) in grouped {
            let upstreams = Upstreams::new(&configs, settings.clone(), &registry, metrics.clone())?;
            configured.insert(registry, Arc::new(upstreams));
        }
        Ok(Registries {
            configured,
            default_registry: canonical_registry(default_registry),
            direct,
            opened: Mutex::new(BTreeMap::new()),
            settings: settings.clone(),
            metrics,
        })
    }

    pub fn default_registry(&self) -> &str {
        &self.default_registry
    }

    /// The upstreams of a configured registry, or of a direct one (opened on first use).
    pub fn get(&self, registry: &str) -> Option<Arc<Upstreams>> {
        if let Some(upstreams) = self.configured.get(registry) {
            return Some(upstreams.clone());
        }
        self.direct_upstreams(registry)
    }

    fn direct_allows(&self, registry: &str) -> bool {
        self.direct.as_ref().is_some_and(|direct| {
            is_registry_host(registry) && direct.patterns.iter().any(|p| p.matches(registry))
        })
    }

    fn direct_upstreams(&self, registry: &str) -> Option<Arc<Upstreams>> {
        let direct = self
            .direct
            .as_ref()
            .filter(|_| self.direct_allows(registry))?;
        let mut opened = self.lock_opened();
        if let Some(upstreams) = opened.get(registry) {
            return Some(upstreams.clone());
        }
        if opened.len() >= MAX_DIRECT_REGISTRIES {
            tracing::warn!(
                registry,
                limit = MAX_DIRECT_REGISTRIES,
                "direct registry refused: too many direct registries open"
            );
            return None;
        }
        let upstreams = direct.upstream_for(registry).and_then(|config| {
            Upstreams::new(
                &[config],
                self.settings.clone(),
                registry,
                self.metrics.clone(),
            )
        });
        match upstreams {
            Ok(upstreams) => {
                tracing::info!(registry, url = %format!("https://{registry}"), "direct registry opened");
                let upstreams = Arc::new(upstreams);
                opened.insert(registry.to_owned(), upstreams.clone());
                Some(upstreams)
            }
            Err(reason) => {
                tracing::warn!(registry, %reason, "direct registry could not be opened");
                None
            }
        }
    }

    fn lock_opened(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<Upstreams>>> {
        // A poisoned lock only means another thread panicked mid-insert into a plain map;
        // the map is still usable.
        self.opened.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The configured registries' names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.configured.keys().map(String::as_str)
    }

    /// The `direct_registries` patterns, for messages.
    pub fn direct_patterns(&self) -> Vec<String> {
        self.direct
            .as_ref()
            .map(|d| d.patterns.iter().map(ToString::to_string).collect())
            .unwrap_or_default()
    }

    /// The configured registries with their upstreams (what readiness depends on).
    pub fn configured(&self) -> impl Iterator<Item = (&str, &Arc<Upstreams>)> {
        self.configured
            .iter()
            .map(|(name, upstreams)| (name.as_str(), upstreams))
    }

    /// Every registry with upstreams: the configured ones, then the direct ones opened.
    pub fn all(&self) -> Vec<(String, Arc<Upstreams>)> {
        let mut all: Vec<_> = self
            .configured
            .iter()
            .map(|(name, upstreams)| (name.clone(), upstreams.clone()))
            .collect();
        all.extend(
            self.lock_opened()
                .iter()
                .map(|(name, upstreams)| (name.clone(), upstreams.clone())),
        );
        all
    }

    /// The registry a request for `requested` goes to: a configured one, a direct one, or,
    /// when the default registry is the only one configured (and no direct registries are
    /// allowed), the default, so a single-registry ferry works behind any client-side
    /// registry name (e.g. a containerd hosts.toml for a private host). `None`: refused.
    pub fn resolve(&self, requested: &str) -> Option<String> {
        if self.configured.contains_key(requested) || self.direct_allows(requested) {
            return Some(requested.to_owned());
        }
        let single_default = self.direct.is_none()
            && self.configured.len() == 1
            && self.configured.contains_key(&self.default_registry);
        single_default.then(|| self.default_registry.clone())
    }

    /// The upstream called `name`, whatever its registry.
    pub fn find(&self, name: &str) -> Option<Arc<UpstreamClient>> {
        self.all()
            .iter()
            .find_map(|(_, upstreams)| upstreams.find(name).cloned())
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
        assert!(any.matches("quay.io"));
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
