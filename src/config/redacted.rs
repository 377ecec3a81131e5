//! `check-config`'s view of a configuration: the effective settings written back as the
//! config file's TOML, with every secret redacted.

use super::Config;
use super::file::{
    BAD_SOURCE_SKIP, BLOB_REDIRECT, BODY_IDLE_TIMEOUT, BREAKER_COOLDOWN, BREAKER_MAX_COOLDOWN,
    BREAKER_THRESHOLD, CACHE_SIZE, CLIENT_HEADER_TIMEOUT, CLIENT_IDLE_TIMEOUT, CONNECT_TIMEOUT,
    ConfigFile, FAILOVER_ON_NOT_FOUND, HEADER_TIMEOUT, HEALTH_PROBE_INTERVAL, HEDGE_DELAY,
    MAX_CONNECTIONS, MAX_CONNECTIONS_PER_CLIENT, MAX_STALE, MEMORY_BUDGET, OFFLINE, PIN_KEEP,
    PIN_REFRESH, RATE_WINDOW, REFERRERS_TTL, RETRY_BUDGET, SHUTDOWN_GRACE, STALL_FLOOR,
    STORE_TIMEOUT, TAG_TTL, UpstreamFile,
};

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
                connect_timeout: CONNECT_TIMEOUT.render(&u.connect_timeout),
                header_timeout: HEADER_TIMEOUT.render(&u.header_timeout),
                body_idle_timeout: BODY_IDLE_TIMEOUT.render(&u.body_idle_timeout),
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
                ratelimit_reserve: Some(u32::try_from(u.ratelimit_reserve).unwrap_or(u32::MAX)),
            })
            .collect();
        let file = ConfigFile {
            listen: Some(self.listen.to_string()),
            cache_dir: Some(self.cache_dir.display().to_string()),
            cache_size: CACHE_SIZE.render(&self.cache_size),
            registry: Some(self.registry.clone()),
            tag_ttl: TAG_TTL.render(&self.tag_ttl),
            referrers_ttl: REFERRERS_TTL.render(&self.referrers_ttl),
            failover_on_not_found: FAILOVER_ON_NOT_FOUND.render(&self.pool.failover_on_not_found),
            bad_source_skip: BAD_SOURCE_SKIP.render(&self.pool.bad_source_skip),
            connect_timeout: None,
            header_timeout: None,
            body_idle_timeout: None,
            min_transfer_rate: None,
            rate_window: self
                .upstreams
                .first()
                .and_then(|u| RATE_WINDOW.render(&u.rate_window)),
            offline: OFFLINE.render(&self.offline),
            max_stale: MAX_STALE.render(&self.max_stale),
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
            shutdown_grace: SHUTDOWN_GRACE.render(&self.shutdown_grace),
            client_header_timeout: CLIENT_HEADER_TIMEOUT.render(&self.client_limits.header_timeout),
            client_idle_timeout: CLIENT_IDLE_TIMEOUT.render(&self.client_limits.idle_timeout),
            max_connections: MAX_CONNECTIONS.render(&(self.client_limits.max_connections as u32)),
            max_connections_per_client: MAX_CONNECTIONS_PER_CLIENT
                .render(&(self.client_limits.max_connections_per_client as u32)),
            retry_budget: RETRY_BUDGET.render(&(self.pool.retry_budget as u32)),
            // The default every upstream and direct registry took; the upstreams' own below.
            ratelimit_reserve: self
                .direct
                .as_ref()
                .map(|d| u32::try_from(d.ratelimit_reserve).unwrap_or(u32::MAX)),
            hedge_delay: HEDGE_DELAY.render(&self.pool.hedging),
            stall_floor: STALL_FLOOR.render(&self.pool.stall_floor),
            memory_budget: MEMORY_BUDGET.render(&(self.pool.memory.bytes() as u64)),
            breaker_threshold: BREAKER_THRESHOLD.render(&self.pool.breaker.threshold),
            breaker_cooldown: BREAKER_COOLDOWN.render(&self.pool.breaker.cooldown),
            breaker_max_cooldown: BREAKER_MAX_COOLDOWN.render(&self.pool.breaker.max_cooldown),
            health_probe_interval: HEALTH_PROBE_INTERVAL.render(&self.health_probe_interval),
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
                .and_then(|s| STORE_TIMEOUT.render(&s.request_timeout)),
            shared_store_answer_timeout: self
                .shared_store
                .as_ref()
                .map(|s| humantime::format_duration(s.answer_timeout).to_string()),
            blob_redirect: self
                .shared_store
                .as_ref()
                .and_then(|s| BLOB_REDIRECT.render(&s.blob_redirect)),
            direct_registries: self
                .direct
                .as_ref()
                .map(|d| d.patterns.iter().map(ToString::to_string).collect()),
            direct_registries_private_addresses: self.direct.as_ref().map(|d| d.private_addresses),
            pins: (!self.pins.images.is_empty()).then(|| self.pins.images.clone()),
            pin_refresh: PIN_REFRESH.render(&self.pins.refresh),
            pin_keep: PIN_KEEP.render(&self.pins.keep),
            pin_platforms: (!self.pins.platforms.is_empty()).then(|| self.pins.platforms.clone()),
            pins_from: self.pins.from_group.clone(),
            upstreams,
        };
        toml::to_string_pretty(&file).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}
