//! The TOML configuration file as the operator writes it, and its schema: every key, and for
//! each scalar setting its kind and default, declared once beside its field. Checking
//! values against each other and reading the files they name live in `config.rs`.

use super::setting::{
    CountKind, DurationKind, HedgeKind, OptionalDurationKind, OptionalSizeKind, Setting, SizeKind,
    SwitchKind,
};
use super::values::{ANY_DURATION, POSITIVE_DURATION};
use super::{
    ClientLimits, DEFAULT_BAD_SOURCE_SKIP, DEFAULT_BODY_IDLE_TIMEOUT, DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_HEADER_TIMEOUT, DEFAULT_MIN_TRANSFER_RATE, DEFAULT_RATE_WINDOW, DEFAULT_REFERRERS_TTL,
    DEFAULT_RETRY_BUDGET, DEFAULT_SHUTDOWN_GRACE, DEFAULT_TAG_TTL,
};
use crate::pins::{DEFAULT_PIN_KEEP, DEFAULT_PIN_REFRESH};
use crate::pull::MAX_TAG_LIST_BYTES;
use crate::upstream::breaker::BreakerConfig;
use crate::upstream::memory_budget::DEFAULT_MEMORY_BUDGET_BYTES;
use crate::upstream::{DEFAULT_STALL_FLOOR, Hedging};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The file's schema: every key as written, and for a scalar setting `= CONST(Kind = kind,
/// default value)`, which declares `CONST: Setting<Kind>` (key, kind, default) beside its
/// field; `, flag "name" [clap attributes]` adds the command-line flag `--name` that may give
/// the value instead (a field of [`SettingFlags`]; its `help` is the setting's description). Parsing,
/// the default, the flag, the problem report and `check-config`'s rendering all come from
/// that one declaration.
macro_rules! config_file_schema {
    (@flag) => { None };
    (@flag $name:literal) => { Some(concat!("--", $name)) };
    ($(
        $(#[doc = $doc:literal])*
        $(#[serde($($serde:tt)*)])?
        $field:ident : $written:ty $( = $declared:ident (
            $kind_type:ty = $kind:expr, default $default:expr
            $(, flag $flag_name:literal [$($flag_arg:meta),*])?
        ) )?
    ),* $(,)?) => {
        /// Not `Debug`: it holds secrets as written (passwords, the store's secret key).
        #[derive(Default, Clone, Deserialize, Serialize)]
        #[serde(deny_unknown_fields)]
        pub struct ConfigFile {
            $( $(#[doc = $doc])* $(#[serde($($serde)*)])? pub $field: $written, )*
        }

        /// The settings a command-line flag may give, over the file's (`None`: not given).
        #[derive(Debug, Default, Clone, clap::Args)]
        pub struct SettingFlags {
            $( $( $(
                #[arg(long = $flag_name $(, $flag_arg)*)]
                pub $field: $written,
            )? )? )*
        }

        $( $(
            pub(crate) const $declared: Setting<$kind_type> = Setting {
                key: stringify!($field),
                kind: $kind,
                default: $default,
                flag: config_file_schema!(@flag $($flag_name)?),
            };
        )? )*
    };
}

config_file_schema! {
    listen: Option<String>,
    cache_dir: Option<String>,
    cache_size: Option<String> = CACHE_SIZE(
        OptionalSizeKind = OptionalSizeKind { off_word: "unlimited" }, default None,
        flag "cache-size" [value_name = "SIZE", help = "Bound on cached blob bytes, e.g. 50GiB or 300MiB; least recently used blobs are evicted [default: unlimited]"]
    ),
    /// Name of the registry the upstreams serve (cache keys include it). Default `docker.io`.
    registry: Option<String>,
    tag_ttl: Option<String> = TAG_TTL(
        DurationKind = DurationKind(ANY_DURATION), default DEFAULT_TAG_TTL,
        flag "tag-ttl" [value_name = "DURATION", help = "How long a tag's digest is trusted before it is revalidated upstream, e.g. 60s, 5m [default: 60s]"]
    ),
    /// How long a referrers list is served before asking an upstream again (default 30s).
    referrers_ttl: Option<String> = REFERRERS_TTL(DurationKind = DurationKind(ANY_DURATION), default DEFAULT_REFERRERS_TTL),
    /// Try the next upstream when one answers 404 (default true).
    failover_on_not_found: Option<bool> = FAILOVER_ON_NOT_FOUND(SwitchKind = SwitchKind, default true),
    /// How long an upstream that sent bad bytes for a digest is skipped for it, e.g. "5m".
    bad_source_skip: Option<String> = BAD_SOURCE_SKIP(DurationKind = DurationKind(ANY_DURATION), default DEFAULT_BAD_SOURCE_SKIP),
    /// Defaults applied to every upstream that does not set its own.
    connect_timeout: Option<String> = CONNECT_TIMEOUT(DurationKind = DurationKind(ANY_DURATION), default DEFAULT_CONNECT_TIMEOUT),
    header_timeout: Option<String> = HEADER_TIMEOUT(DurationKind = DurationKind(ANY_DURATION), default DEFAULT_HEADER_TIMEOUT),
    body_idle_timeout: Option<String> = BODY_IDLE_TIMEOUT(DurationKind = DurationKind(ANY_DURATION), default DEFAULT_BODY_IDLE_TIMEOUT),
    /// Minimum average body rate, e.g. "256KiB" (per second); "0" disables.
    min_transfer_rate: Option<String> = MIN_TRANSFER_RATE(SizeKind = SizeKind { min: 0, below_min: "" }, default DEFAULT_MIN_TRANSFER_RATE),
    /// Window over which the body rate is averaged, e.g. "10s".
    rate_window: Option<String> = RATE_WINDOW(DurationKind = DurationKind(ANY_DURATION), default DEFAULT_RATE_WINDOW),
    offline: Option<bool> = OFFLINE(
        SwitchKind = SwitchKind, default false,
        flag "offline" [num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL", help = "Never contact an upstream: serve only what the cache holds (tags regardless of TTL)"]
    ),
    /// Oldest tag mapping served when upstreams fail (or offline), e.g. "7d"; "unlimited".
    max_stale: Option<String> = MAX_STALE(OptionalDurationKind = OptionalDurationKind { off_word: "unlimited" }, default None),
    /// Client authentication: a file of bearer tokens (one per line) and/or of basic users
    /// (`user:password` or `user:sha256:<hex>` per line). Without either, anyone may pull.
    auth_tokens_file: Option<String>,
    auth_users_file: Option<String>,
    /// Per-user registry access: `user = ["docker.io", "ghcr.io"]` lets that basic user pull
    /// only from those registries. Users not listed, and token holders, may pull from all.
    client_access: Option<std::collections::BTreeMap<String, Vec<String>>>,
    /// Serve the registry API over TLS with this certificate chain and key (PEM); both or
    /// neither. Reloaded when the files change, or on SIGHUP.
    tls_cert_file: Option<String>,
    tls_key_file: Option<String>,
    /// Admin API address ("off" disables).
    admin_listen: Option<String>,
    /// Host names the admin API answers to besides IP addresses and localhost (e.g. a
    /// Kubernetes Service name used by a scraper).
    admin_hosts: Option<Vec<String>>,
    /// A file holding a token the admin API's mutating endpoints (drain, undrain, pins) require
    /// as `Authorization: Bearer <token>` (also `FERRY_ADMIN_TOKEN`). Reads stay open.
    admin_token_file: Option<String>,
    /// How long in-flight responses may run after SIGTERM.
    shutdown_grace: Option<String> = SHUTDOWN_GRACE(DurationKind = DurationKind(ANY_DURATION), default DEFAULT_SHUTDOWN_GRACE),
    /// A client's request headers (and a new connection's first request) must arrive within this.
    client_header_timeout: Option<String> = CLIENT_HEADER_TIMEOUT(DurationKind = DurationKind(POSITIVE_DURATION), default ClientLimits::DEFAULT.header_timeout),
    /// A client connection that moves no byte while ferry waits on the client is closed after this.
    client_idle_timeout: Option<String> = CLIENT_IDLE_TIMEOUT(DurationKind = DurationKind(POSITIVE_DURATION), default ClientLimits::DEFAULT.idle_timeout),
    /// Open client connections allowed in all, and from one client address.
    max_connections: Option<u32> = MAX_CONNECTIONS(CountKind = CountKind { min: 1 }, default ClientLimits::DEFAULT.max_connections as u32),
    max_connections_per_client: Option<u32> = MAX_CONNECTIONS_PER_CLIENT(CountKind = CountKind { min: 1 }, default ClientLimits::DEFAULT.max_connections_per_client as u32),
    /// Upstream attempts allowed per request beyond one per upstream.
    retry_budget: Option<u32> = RETRY_BUDGET(CountKind = CountKind { min: 0 }, default DEFAULT_RETRY_BUDGET as u32),
    /// Start the next upstream alongside one silent for this long: "auto" (the default, from
    /// each upstream's own times to headers), a duration, or "off".
    hedge_delay: Option<String> = HEDGE_DELAY(HedgeKind = HedgeKind, default Hedging::Adaptive),
    /// Resume a blob body from the next upstream when it stalls far beyond its own pace, and
    /// at least this long ("off": only the body timeouts apply).
    stall_floor: Option<String> = STALL_FLOOR(OptionalDurationKind = OptionalDurationKind { off_word: "off" }, default Some(DEFAULT_STALL_FLOOR)),
    memory_budget: Option<String> = MEMORY_BUDGET(SizeKind = SizeKind { min: 2 * MAX_TAG_LIST_BYTES as u64, below_min: "must be at least 32MiB: each half must hold the largest body ferry reads whole (a 16 MiB tag list)" }, default DEFAULT_MEMORY_BUDGET_BYTES),
    /// Consecutive failures that open an upstream's circuit breaker.
    breaker_threshold: Option<u32> = BREAKER_THRESHOLD(CountKind = CountKind { min: 1 }, default BreakerConfig::DEFAULT.threshold),
    breaker_cooldown: Option<String> = BREAKER_COOLDOWN(DurationKind = DurationKind(ANY_DURATION), default BreakerConfig::DEFAULT.cooldown),
    /// An upstream whose announced remaining quota (`ratelimit-remaining`) is at or below this
    /// is asked for manifests (pulls) only after the others; its tags are still revalidated
    /// there with HEAD. Per upstream too. Default 0: an upstream with no pulls left goes last.
    ratelimit_reserve: Option<u32> = RATELIMIT_RESERVE(CountKind = CountKind { min: 0 }, default 0),
    breaker_max_cooldown: Option<String> = BREAKER_MAX_COOLDOWN(DurationKind = DurationKind(ANY_DURATION), default BreakerConfig::DEFAULT.max_cooldown),
    /// Background `GET /v2/` per upstream on this interval ("off" disables).
    health_probe_interval: Option<String> = HEALTH_PROBE_INTERVAL(OptionalDurationKind = OptionalDurationKind { off_word: "off" }, default None),
    /// Extra trusted CA certificates (PEM bundle) for every upstream that does not set its
    /// own `ca_file`, added to the system's roots: for registries behind a private CA.
    ca_file: Option<String>,
    /// Registries without configured upstreams that ferry may fetch from directly at
    /// `https://<registry>`: exact names (`quay.io`, `registry.internal:5000`), `*.suffix`,
    /// or `*` for any. Others are refused with NAME_UNKNOWN.
    direct_registries: Option<Vec<String>>,
    /// Let direct registries reach loopback, private and link-local addresses (default
    /// false: a client could otherwise point ferry at internal services).
    direct_registries_private_addresses: Option<bool>,
    /// The shared store, `s3://BUCKET/PREFIX` (also `--shared-store`): a second cache tier in
    /// an S3-API bucket shared by AZ replicas. Endpoint, region and keys default to the
    /// `AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` variables.
    shared_store: Option<String>,
    shared_store_endpoint: Option<String>,
    shared_store_region: Option<String>,
    shared_store_access_key_id: Option<String>,
    shared_store_secret_access_key: Option<String>,
    shared_store_secret_access_key_env: Option<String>,
    shared_store_secret_access_key_file: Option<String>,
    /// Per-request timeout for the store, e.g. "10s".
    shared_store_timeout: Option<String> = STORE_TIMEOUT(DurationKind = DurationKind(ANY_DURATION), default Duration::from_secs(10)),
    /// Longest a read waits for the store's answer (and between pieces of a blob) before the
    /// miss goes to the upstreams, e.g. "2s".
    shared_store_answer_timeout: Option<String>,
    /// Answer blob GETs the store holds with a 307 to a presigned URL.
    blob_redirect: Option<bool> = BLOB_REDIRECT(SwitchKind = SwitchKind, default false),
    /// Images kept on this ferry's own disk and following their tag, as `HOST/REPO:TAG` or
    /// `HOST/REPO@sha256:...` (with a shared store, the fleet's pin set is in the store and
    /// these are added on every replica that lists them).
    pins: Option<Vec<String>>,
    /// How often each pinned tag is re-resolved upstream with a HEAD, e.g. "5m".
    pin_refresh: Option<String> = PIN_REFRESH(DurationKind = DurationKind(POSITIVE_DURATION), default DEFAULT_PIN_REFRESH),
    /// Previous images of a moved pinned tag that stay pinned.
    pin_keep: Option<u32> = PIN_KEEP(CountKind = CountKind { min: 0 }, default DEFAULT_PIN_KEEP),
    /// Platforms kept of a pinned index, e.g. ["linux/amd64"] (default: every platform).
    pin_platforms: Option<Vec<String>>,
    /// Take the pin set from this upstream group (the AZ tier): its members' read-only
    /// `/ferry/v1/pins`. A build host then holds what its AZ tier pins.
    pins_from: Option<String>,
    #[serde(default, rename = "upstream")]
    upstreams: Vec<UpstreamFile>,
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
    /// This upstream's `ratelimit_reserve` (default: the top-level one).
    pub ratelimit_reserve: Option<u32>,
}
