//! `check-config`'s view of a configuration: the effective settings written back as the
//! config file's TOML, with every secret redacted.

use super::Config;
use super::file::{ConfigFile, UpstreamFile};
use crate::upstream::Hedging;

impl Config {
    /// The effective configuration as TOML, secrets redacted (for `check-config`).
    pub fn to_redacted_toml(&self) -> String {
        let upstreams = self
            .upstreams
            .iter()
            .map(|u| UpstreamFile {
                url: Some(u.url.to_string()),
                group: u.group.clone(),
                registry: Some(u.registry.clone()),
                name: Some(u.name.clone()),
                connect_timeout: Some(humantime::format_duration(u.connect_timeout).to_string()),
                header_timeout: Some(humantime::format_duration(u.header_timeout).to_string()),
                body_idle_timeout: Some(
                    humantime::format_duration(u.body_idle_timeout).to_string(),
                ),
                min_transfer_rate: Some(u.min_transfer_rate.to_string()),
                username: u.credentials.as_ref().map(|c| c.username.clone()),
                password: u.credentials.as_ref().map(|_| "<redacted>".to_owned()),
                // A helper's command line may carry secrets (tokens in arguments): say only
                // that one is set.
                password_command: u
                    .credentials
                    .as_ref()
                    .and_then(|c| c.command.as_ref())
                    .map(|_| "<set, not shown>".to_owned()),
                password_command_ttl: None,
                password_env: None,
                password_file: None,
                ca_file: u.ca.as_ref().map(|ca| ca.path.display().to_string()),
                public_addresses_only: Some(u.public_addresses_only),
            })
            .collect();
        let file = ConfigFile {
            listen: Some(self.listen.to_string()),
            cache_dir: Some(self.cache_dir.display().to_string()),
            cache_size: Some(
                self.cache_size
                    .map_or("unlimited".to_owned(), |b| format!("{b}B")),
            ),
            registry: Some(self.registry.clone()),
            tag_ttl: Some(humantime::format_duration(self.tag_ttl).to_string()),
            referrers_ttl: Some(humantime::format_duration(self.referrers_ttl).to_string()),
            failover_on_not_found: Some(self.pool.failover_on_not_found),
            bad_source_skip: Some(
                humantime::format_duration(self.pool.bad_source_skip).to_string(),
            ),
            connect_timeout: None,
            header_timeout: None,
            body_idle_timeout: None,
            min_transfer_rate: None,
            rate_window: self
                .upstreams
                .first()
                .map(|u| humantime::format_duration(u.rate_window).to_string()),
            offline: Some(self.offline),
            max_stale: Some(self.max_stale.map_or("unlimited".to_owned(), |d| {
                humantime::format_duration(d).to_string()
            })),
            admin_hosts: (!self.admin_hosts.is_empty()).then(|| self.admin_hosts.clone()),
            admin_token_file: self
                .admin_token
                .as_ref()
                .map(|_| "<set, not shown>".to_owned()),
            admin_listen: Some(
                self.admin_listen
                    .map_or("off".to_owned(), |a| a.to_string()),
            ),
            tls_cert_file: self
                .tls
                .as_ref()
                .map(|(cert, _)| cert.display().to_string()),
            tls_key_file: self.tls.as_ref().map(|(_, key)| key.display().to_string()),
            auth_tokens_file: self
                .client_auth
                .as_ref()
                .and_then(|auth| auth.files().0)
                .map(|path| path.display().to_string()),
            auth_users_file: self
                .client_auth
                .as_ref()
                .and_then(|auth| auth.files().1)
                .map(|path| path.display().to_string()),
            client_access: self
                .client_auth
                .as_ref()
                .map(|auth| auth.registry_rules())
                .filter(|rules| !rules.is_empty()),
            shutdown_grace: Some(humantime::format_duration(self.shutdown_grace).to_string()),
            client_header_timeout: Some(
                humantime::format_duration(self.client_limits.header_timeout).to_string(),
            ),
            client_idle_timeout: Some(
                humantime::format_duration(self.client_limits.idle_timeout).to_string(),
            ),
            max_connections: Some(self.client_limits.max_connections as u32),
            max_connections_per_client: Some(self.client_limits.max_connections_per_client as u32),
            retry_budget: Some(self.pool.retry_budget as u32),
            hedge_delay: Some(match self.pool.hedging {
                Hedging::Off => "off".to_owned(),
                Hedging::Adaptive => "auto".to_owned(),
                Hedging::After(d) => humantime::format_duration(d).to_string(),
            }),
            stall_floor: Some(self.pool.stall_floor.map_or("off".to_owned(), |d| {
                humantime::format_duration(d).to_string()
            })),
            memory_budget: Some(format!("{}B", self.pool.memory.bytes())),
            breaker_threshold: Some(self.pool.breaker.threshold),
            breaker_cooldown: Some(
                humantime::format_duration(self.pool.breaker.cooldown).to_string(),
            ),
            breaker_max_cooldown: Some(
                humantime::format_duration(self.pool.breaker.max_cooldown).to_string(),
            ),
            health_probe_interval: Some(self.health_probe_interval.map_or("off".to_owned(), |d| {
                humantime::format_duration(d).to_string()
            })),
            ca_file: self.ca_file.as_ref().map(|p| p.display().to_string()),
            shared_store: self.shared_store.as_ref().map(|s| s.url.clone()),
            shared_store_endpoint: self.shared_store.as_ref().and_then(|s| s.endpoint.clone()),
            shared_store_region: self.shared_store.as_ref().and_then(|s| s.region.clone()),
            shared_store_access_key_id: self
                .shared_store
                .as_ref()
                .and_then(|s| s.access_key_id.clone()),
            shared_store_secret_access_key: self
                .shared_store
                .as_ref()
                .and_then(|s| s.secret_access_key.as_ref())
                .map(|_| "<redacted>".to_owned()),
            shared_store_secret_access_key_env: None,
            shared_store_secret_access_key_file: None,
            shared_store_timeout: self
                .shared_store
                .as_ref()
                .map(|s| humantime::format_duration(s.request_timeout).to_string()),
            shared_store_answer_timeout: self
                .shared_store
                .as_ref()
                .map(|s| humantime::format_duration(s.answer_timeout).to_string()),
            blob_redirect: self.shared_store.as_ref().map(|s| s.blob_redirect),
            direct_registries: self
                .direct
                .as_ref()
                .map(|d| d.patterns.iter().map(ToString::to_string).collect()),
            direct_registries_private_addresses: self.direct.as_ref().map(|d| d.private_addresses),
            upstreams,
        };
        toml::to_string_pretty(&file).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}
