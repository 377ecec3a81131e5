//! The TOML configuration file as written by the operator: a serde mirror with no logic.
//! Validation and defaults live in `config.rs`.

use serde::{Deserialize, Serialize};

/// Not `Debug`: it holds secrets as written (passwords, the store's secret key).
#[derive(Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub listen: Option<String>,
    pub cache_dir: Option<String>,
    /// Bound on cached blob bytes, e.g. "50GiB" (default: unbounded).
    pub cache_size: Option<String>,
    /// Name of the registry the upstreams serve (cache keys include it). Default `docker.io`.
    pub registry: Option<String>,
    /// How long a tag's digest is trusted before a HEAD revalidates it, e.g. "60s".
    pub tag_ttl: Option<String>,
    /// How long a referrers list is served before asking an upstream again (default 30s).
    pub referrers_ttl: Option<String>,
    /// Try the next upstream when one answers 404 (default true).
    pub failover_on_not_found: Option<bool>,
    /// How long an upstream that sent bad bytes for a digest is skipped for it, e.g. "5m".
    pub bad_source_skip: Option<String>,
    /// Defaults applied to every upstream that does not set its own.
    pub connect_timeout: Option<String>,
    pub header_timeout: Option<String>,
    pub body_idle_timeout: Option<String>,
    /// Minimum average body rate, e.g. "256KiB" (per second); "0" disables.
    pub min_transfer_rate: Option<String>,
    /// Window over which the body rate is averaged, e.g. "10s".
    pub rate_window: Option<String>,
    /// Never contact an upstream; serve only what the cache holds.
    pub offline: Option<bool>,
    /// Oldest tag mapping served when upstreams fail (or offline), e.g. "7d"; "unlimited".
    pub max_stale: Option<String>,
    /// Client authentication: a file of bearer tokens (one per line) and/or of basic users
    /// (`user:password` or `user:sha256:<hex>` per line). Without either, anyone may pull.
    pub auth_tokens_file: Option<String>,
    pub auth_users_file: Option<String>,
    /// Per-user registry access: `user = ["docker.io", "ghcr.io"]` lets that basic user pull
    /// only from those registries. Users not listed, and token holders, may pull from all.
    pub client_access: Option<std::collections::BTreeMap<String, Vec<String>>>,
    /// Serve the registry API over TLS with this certificate chain and key (PEM); both or
    /// neither. Reloaded when the files change, or on SIGHUP.
    pub tls_cert_file: Option<String>,
    pub tls_key_file: Option<String>,
    /// Admin API address ("off" disables).
    pub admin_listen: Option<String>,
    /// Host names the admin API answers to besides IP addresses and localhost (e.g. a
    /// Kubernetes Service name used by a scraper).
    pub admin_hosts: Option<Vec<String>>,
    /// A file holding a token the admin API's mutating endpoints (drain, undrain) require
    /// as `Authorization: Bearer <token>` (also `FERRY_ADMIN_TOKEN`). Reads stay open.
    pub admin_token_file: Option<String>,
    /// How long in-flight responses may run after SIGTERM.
    pub shutdown_grace: Option<String>,
    /// A client's request headers (and a new connection's first request) must arrive within this.
    pub client_header_timeout: Option<String>,
    /// A client connection that moves no byte while ferry waits on the client is closed after this.
    pub client_idle_timeout: Option<String>,
    /// Open client connections allowed in all, and from one client address.
    pub max_connections: Option<u32>,
    pub max_connections_per_client: Option<u32>,
    /// Upstream attempts allowed per request beyond one per upstream.
    pub retry_budget: Option<u32>,
    /// Start the next upstream alongside one silent for this long: "auto" (the default, from
    /// each upstream's own times to headers), a duration, or "off".
    pub hedge_delay: Option<String>,
    /// Resume a blob body from the next upstream when it stalls far beyond its own pace, and
    /// at least this long ("off": only the body timeouts apply).
    pub stall_floor: Option<String>,
    pub memory_budget: Option<String>,
    /// Consecutive failures that open an upstream's circuit breaker.
    pub breaker_threshold: Option<u32>,
    pub breaker_cooldown: Option<String>,
    pub breaker_max_cooldown: Option<String>,
    /// Background `GET /v2/` per upstream on this interval ("off" disables).
    pub health_probe_interval: Option<String>,
    /// Extra trusted CA certificates (PEM bundle) for every upstream that does not set its
    /// own `ca_file`, added to the system's roots: for registries behind a private CA.
    pub ca_file: Option<String>,
    /// Registries without configured upstreams that ferry may fetch from directly at
    /// `https://<registry>`: exact names (`quay.io`, `registry.internal:5000`), `*.suffix`,
    /// or `*` for any. Others are refused with NAME_UNKNOWN.
    pub direct_registries: Option<Vec<String>>,
    /// Let direct registries reach loopback, private and link-local addresses (default
    /// false: a client could otherwise point ferry at internal services).
    pub direct_registries_private_addresses: Option<bool>,
    /// The shared store, `s3://BUCKET/PREFIX` (also `--shared-store`): a second cache tier in
    /// an S3-API bucket shared by AZ replicas. Endpoint, region and keys default to the
    /// `AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` variables.
    pub shared_store: Option<String>,
    pub shared_store_endpoint: Option<String>,
    pub shared_store_region: Option<String>,
    pub shared_store_access_key_id: Option<String>,
    pub shared_store_secret_access_key: Option<String>,
    pub shared_store_secret_access_key_env: Option<String>,
    pub shared_store_secret_access_key_file: Option<String>,
    /// Per-request timeout for the store, e.g. "10s".
    pub shared_store_timeout: Option<String>,
    /// Longest a read waits for the store's answer (and between pieces of a blob) before the
    /// miss goes to the upstreams, e.g. "2s".
    pub shared_store_answer_timeout: Option<String>,
    /// Answer blob GETs the store holds with a 307 to a presigned URL.
    pub blob_redirect: Option<bool>,
    #[serde(default, rename = "upstream")]
    pub upstreams: Vec<UpstreamFile>,
}

/// Not `Debug`: it holds the password as written.
#[derive(Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamFile {
    pub url: Option<String>,
    /// Consecutive upstreams with the same group share one slot in the priority order;
    /// each request orders the members by rendezvous hashing of its digest or tag.
    pub group: Option<String>,
    /// The registry this upstream serves (default: the top-level `registry`).
    pub registry: Option<String>,
    pub name: Option<String>,
    pub connect_timeout: Option<String>,
    pub header_timeout: Option<String>,
    pub body_idle_timeout: Option<String>,
    pub min_transfer_rate: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub password_env: Option<String>,
    pub password_file: Option<String>,
    /// A credential helper whose output is the password, e.g. "aws ecr get-login-password".
    pub password_command: Option<String>,
    /// How long its output is reused before running it again (default 10m).
    pub password_command_ttl: Option<String>,
    /// Extra trusted CA certificates (PEM bundle) for this upstream (default: the top-level
    /// `ca_file`).
    pub ca_file: Option<String>,
    /// Connect only to public addresses (checked after resolution, also for the token realm
    /// and redirects), as direct registries do. Default false.
    pub public_addresses_only: Option<bool>,
}
