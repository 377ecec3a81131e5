//! Many registries in one ferry: each registry name (docker.io, ghcr.io, ...) has its own
//! ordered upstream list. Docker Hub's aliases (`index.docker.io`, `registry-1.docker.io`)
//! are one registry, `docker.io`.

use super::client::UpstreamClient;
use super::pool::{PoolSettings, Upstreams};
use crate::config::UpstreamConfig;
use std::collections::BTreeMap;
use std::sync::Arc;

pub const DOCKER_HUB: &str = "docker.io";

/// The canonical name of a registry host (lowercase, Docker Hub's aliases folded).
pub fn canonical_registry(name: &str) -> String {
    let name = name.trim().to_ascii_lowercase();
    match name.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "docker.io" => DOCKER_HUB.to_owned(),
        _ => name,
    }
}

pub struct Registries {
    by_name: BTreeMap<String, Upstreams>,
    default_registry: String,
}

impl Registries {
    /// Groups `configs` by their registry, keeping each registry's order.
    pub fn new(
        configs: &[UpstreamConfig],
        default_registry: &str,
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
        let mut by_name = BTreeMap::new();
        for (registry, configs) in grouped {
            let upstreams = Upstreams::new(&configs, settings.clone(), &registry, metrics.clone())?;
            by_name.insert(registry, upstreams);
        }
        Ok(Registries {
            by_name,
            default_registry: canonical_registry(default_registry),
        })
    }

    pub fn default_registry(&self) -> &str {
        &self.default_registry
    }

    pub fn get(&self, registry: &str) -> Option<&Upstreams> {
        self.by_name.get(registry)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }

    /// Every (registry, upstream pool) pair.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Upstreams)> {
        self.by_name
            .iter()
            .map(|(name, upstreams)| (name.as_str(), upstreams))
    }

    /// With several registries configured (or none for the default one), a request for a
    /// registry ferry has no upstreams for is refused. With just the default registry,
    /// every request goes to it whatever `ns` says, so a single-registry ferry works behind
    /// any client-side registry name (e.g. a containerd hosts.toml for a private host).
    pub fn resolve(&self, requested: &str) -> Option<&str> {
        if let Some((name, _)) = self.by_name.get_key_value(requested) {
            return Some(name.as_str());
        }
        let single_default =
            self.by_name.len() == 1 && self.by_name.contains_key(&self.default_registry);
        single_default.then_some(self.default_registry.as_str())
    }

    /// The upstream called `name`, whatever its registry.
    pub fn find(&self, name: &str) -> Option<&Arc<UpstreamClient>> {
        self.by_name.values().find_map(|u| u.find(name))
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
}
