//! Many registries in one ferry: each registry name (docker.io, ghcr.io, ...) has its own
//! ordered upstream list; registries matching `direct_registries` get an upstream at
//! `https://<registry>` on first use. Docker Hub's aliases (`index.docker.io`,
//! `registry-1.docker.io`) are one registry, `docker.io`.

use super::client::UpstreamClient;
use super::pool::{PoolSettings, Upstreams};
use super::settings::{DirectRegistries, UpstreamConfig};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

pub use crate::oci::registry::{DOCKER_HUB, RegistryPattern, canonical_registry, is_registry_host};

/// Most registries opened through `direct_registries` at once; opening another closes the
/// least recently used, so clients naming random registries can neither grow ferry without
/// bound nor lock real registries out.
pub const MAX_DIRECT_REGISTRIES: usize = 64;

/// A direct registry's upstreams and when a request last used them.
struct OpenedRegistry {
    upstreams: Arc<Upstreams>,
    last_used: std::time::Instant,
}

pub struct Registries {
    configured: BTreeMap<String, Arc<Upstreams>>,
    default_registry: String,
    direct: Option<DirectRegistries>,
    /// Direct registries open now, by name (at most `MAX_DIRECT_REGISTRIES`).
    opened: Mutex<BTreeMap<String, OpenedRegistry>>,
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
    ) -> Result<Self, super::settings::SetupError> {
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

    pub(crate) fn default_registry(&self) -> &str {
        &self.default_registry
    }

    /// The upstreams of a configured registry, or of a direct one (opened on first use).
    pub fn get(&self, registry: &str) -> Option<Arc<Upstreams>> {
        if let Some(upstreams) = self.configured.get(registry) {
            return Some(upstreams.clone());
        }
        self.direct_upstreams(registry)
    }

    pub(crate) fn is_configured(&self, registry: &str) -> bool {
        self.configured.contains_key(registry)
    }

    /// Whether `registry` is configured or allowed as a direct registry (opening nothing).
    pub fn knows(&self, registry: &str) -> bool {
        self.configured.contains_key(registry) || self.direct_allows(registry)
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
        if let Some(opened) = self.lock_opened().get_mut(registry) {
            opened.last_used = std::time::Instant::now();
            return Some(opened.upstreams.clone());
        }
        // Built without the lock held: building a client loads the TLS roots.
        let built = direct.upstream_for(registry).and_then(|config| {
            Upstreams::new(
                &[config],
                self.settings.clone(),
                registry,
                self.metrics.clone(),
            )
        });
        let upstreams = match built {
            Ok(upstreams) => Arc::new(upstreams),
            Err(reason) => {
                tracing::error!(registry, %reason, "direct registry could not be opened");
                return None;
            }
        };
        let mut opened = self.lock_opened();
        if let Some(raced) = opened.get(registry) {
            return Some(raced.upstreams.clone());
        }
        while opened.len() >= MAX_DIRECT_REGISTRIES {
            let Some(oldest) = opened
                .iter()
                .min_by_key(|(_, o)| o.last_used)
                .map(|(name, _)| name.clone())
            else {
                break;
            };
            if let Some(closed) = opened.remove(&oldest) {
                for client in closed.upstreams.clients() {
                    self.metrics.forget_upstream(
                        &oldest,
                        client.name(),
                        &super::FailureKind::OUTCOME_LABELS,
                    );
                }
            }
            tracing::debug!(registry = %oldest, "direct registry closed (least recently used)");
        }
        tracing::info!(registry, url = %format!("https://{registry}"), "direct registry opened");
        opened.insert(
            registry.to_owned(),
            OpenedRegistry {
                upstreams: upstreams.clone(),
                last_used: std::time::Instant::now(),
            },
        );
        Some(upstreams)
    }

    fn lock_opened(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, OpenedRegistry>> {
        // A poisoned lock only means another thread panicked mid-insert into a plain map;
        // the map is still usable.
        self.opened.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The configured registries' names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.configured.keys().map(String::as_str)
    }

    /// The `direct_registries` patterns, for messages.
    pub(crate) fn direct_patterns(&self) -> Vec<String> {
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
                .map(|(name, opened)| (name.clone(), opened.upstreams.clone())),
        );
        all
    }

    /// The registry a request for `requested` goes to: a configured one, a direct one, or,
    /// when the default registry is the only one configured (and no direct registries are
    /// allowed), the default, so a single-registry ferry works behind any client-side
    /// registry name (e.g. a containerd hosts.toml for a private host). `None`: refused.
    pub fn resolve(&self, requested: &str) -> Option<String> {
        if self.knows(requested) {
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
    fn direct_registries_are_bounded_and_the_least_recently_used_closes() {
        let secs = std::time::Duration::from_secs;
        let direct = DirectRegistries {
            patterns: vec![RegistryPattern::parse("*").unwrap()],
            connect_timeout: secs(1),
            header_timeout: secs(1),
            body_idle_timeout: secs(1),
            min_transfer_rate: 0,
            rate_window: secs(1),
            ratelimit_reserve: 0,
            ca: None,
            private_addresses: false,
        };
        let registries = Registries::new(
            &[],
            DOCKER_HUB,
            Some(direct),
            &PoolSettings::default(),
            Arc::new(crate::metrics::Metrics::default()),
        )
        .unwrap();
        assert!(registries.get("r0.example").is_some());
        for i in 1..MAX_DIRECT_REGISTRIES {
            assert!(registries.get(&format!("r{i}.example")).is_some());
        }
        // r0 is used again, so r1 is now the least recently used.
        assert!(registries.get("r0.example").is_some());
        assert!(
            registries.get("fresh.example").is_some(),
            "never locked out"
        );
        let open: Vec<String> = registries.all().into_iter().map(|(n, _)| n).collect();
        assert_eq!(open.len(), MAX_DIRECT_REGISTRIES);
        assert!(open.contains(&"r0.example".to_owned()));
        assert!(open.contains(&"fresh.example".to_owned()));
        assert!(!open.contains(&"r1.example".to_owned()), "r1 was closed");
        assert!(registries.get("127.0.0.1").is_none(), "not a DNS name");
        assert!(!registries.knows("nope"));
    }
}
