//! The validated configuration: defaults, the config file merged with command-line flags
//! (flags win), and every invalid key and value reported at once. Reads no files: the ones
//! the settings name are listed in `NamedFiles` and read by `app::config_files`.

pub mod file;
mod listeners;
mod named_files;
mod redacted;
mod setting;
mod shared_store;
mod upstreams;
mod values;

use file::{
    BAD_SOURCE_SKIP, BREAKER_COOLDOWN, BREAKER_MAX_COOLDOWN, BREAKER_THRESHOLD, CACHE_SIZE,
    FAILOVER_ON_NOT_FOUND, HEALTH_PROBE_INTERVAL, HEDGE_DELAY, MAX_STALE, MEMORY_BUDGET, OFFLINE,
    REFERRERS_TTL, RETRY_BUDGET, SHUTDOWN_GRACE, STALL_FLOOR, TAG_TTL,
};
pub(crate) use named_files::{ClientAuthFiles, NamedFiles, SecretSource};
use values::Problems;
pub use values::parse_size;

use crate::upstream::PoolSettings;
use crate::upstream::breaker::BreakerConfig;
use file::ConfigFile;

// Settings types owned by the layers that use them, re-exported here where configs are built.
pub use crate::pins::PinSettings;
pub(crate) use crate::server::limits::ClientLimits;
pub use crate::upstream::settings::{
    Credentials, DOCKER_HUB_URL, DirectRegistries, PasswordCommand, UpstreamCa, UpstreamConfig,
};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub(crate) const DEFAULT_LISTEN: &str = "127.0.0.1:5000";
pub const DEFAULT_REGISTRY: &str = "docker.io";
pub(crate) const DEFAULT_TAG_TTL: Duration = Duration::from_secs(60);
/// How long a referrers list is served without asking an upstream again (new signatures
/// and SBOMs appear as they are pushed).
pub(crate) const DEFAULT_REFERRERS_TTL: Duration = Duration::from_secs(30);
pub(crate) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub(crate) const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(30);
pub(crate) const DEFAULT_BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
pub(crate) const DEFAULT_BAD_SOURCE_SKIP: Duration = Duration::from_secs(300);
pub(crate) const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:5005";
pub(crate) const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
pub(crate) const DEFAULT_MIN_TRANSFER_RATE: u64 = 256 * 1024;
pub(crate) const DEFAULT_RATE_WINDOW: Duration = Duration::from_secs(10);
pub(crate) const DEFAULT_RETRY_BUDGET: usize = 2;
/// How long a credential helper's output is reused (ECR tokens live 12 h).
pub(crate) const DEFAULT_PASSWORD_COMMAND_TTL: Duration = Duration::from_secs(600);

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub cache_dir: PathBuf,
    /// Bound on cached blob bytes; `None` = unbounded.
    pub cache_size: Option<u64>,
    pub registry: String,
    pub tag_ttl: Duration,
    /// How long a referrers list is served from the cache before asking again.
    pub referrers_ttl: Duration,
    /// Oldest tag mapping served when no upstream can confirm it; `None` = unlimited.
    pub max_stale: Option<Duration>,
    pub offline: bool,
    pub admin_listen: Option<SocketAddr>,
    /// Host names (besides addresses and localhost) the admin API answers to.
    pub admin_hosts: Vec<String>,
    /// Token required by the admin API's mutations (drain, undrain, pins) (`admin_token_file`, or the
    /// `FERRY_ADMIN_TOKEN` variable, read by `app::config_files`); `None` = no token.
    pub admin_token: Option<AdminToken>,
    /// TLS certificate chain and key (PEM) for the registry listener; `None` = plain HTTP.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Client authentication for the registry listener (its files read by
    /// `app::config_files`); `None` = open.
    pub client_auth: Option<std::sync::Arc<crate::server::client_auth::ClientAuth>>,
    pub(crate) shutdown_grace: Duration,
    /// Caps and timeouts for client connections, on both listeners.
    pub client_limits: ClientLimits,
    pub health_probe_interval: Option<Duration>,
    pub pool: PoolSettings,
    pub upstreams: Vec<UpstreamConfig>,
    /// Registries ferry may fetch from directly at `https://<registry>`; `None` = refuse
    /// every registry without configured upstreams.
    pub direct: Option<DirectRegistries>,
    /// The top-level `ca_file` (the default for upstreams and direct registries).
    pub(crate) ca_file: Option<PathBuf>,
    /// The shared store (second cache tier), if any.
    pub shared_store: Option<crate::shared::SharedStoreConfig>,
    /// Pins that follow their tag: the config's, the refresh, what is kept, where from.
    pub pins: PinSettings,
}

/// The admin API's token. Never shown in `Debug` output or `check-config`.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(pub String);

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

/// Settings given on the command line; `None`/empty means "not given".
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<String>,
    pub cache_dir: Option<PathBuf>,
    pub upstreams: Vec<String>,
    /// `--upstream-group NAME=URL,URL,...`: groups placed before the `--upstreams`.
    pub upstream_groups: Vec<String>,
    pub admin_listen: Option<String>,
    /// The scalar settings given as flags (`--tag-ttl`, `--cache-size`, `--offline`), as the
    /// schema in `file.rs` declares them.
    pub settings: file::SettingFlags,
    /// `--direct-registry` patterns; replace the file's `direct_registries` when given.
    pub direct_registries: Vec<String>,
    /// `--shared-store s3://BUCKET/PREFIX`.
    pub shared_store: Option<String>,
}

/// One invalid setting: where it came from, the offending value, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub(crate) key: String,
    pub(crate) value: String,
    pub(crate) reason: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} = {:?}: {}", self.key, self.value, self.reason)
    }
}

#[derive(Debug, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigProblem>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration ({} problem(s)):", self.0.len())?;
        for problem in &self.0 {
            writeln!(f, "  {problem}")?;
        }
        Ok(())
    }
}

impl Config {
    /// The settings the file and flags give, with every problem found, and the files they
    /// name (not read here). `app::config_files::load_config` reads the file and those.
    pub fn parse(file: &ConfigFile, overrides: &Overrides) -> Parsed {
        let mut problems = Problems::default();
        let listeners = listeners::parse(file, overrides, &mut problems);

        let cache_dir = match (&overrides.cache_dir, &file.cache_dir) {
            (Some(dir), _) => dir.clone(),
            (None, Some(dir)) => PathBuf::from(dir),
            (None, None) => default_cache_dir(),
        };
        if cache_dir.as_os_str().is_empty() {
            problems.add("cache_dir", "", "must not be empty");
        }
        let cache_size = CACHE_SIZE.parse_flag_over_file(
            overrides.settings.cache_size.as_ref(),
            file.cache_size.as_ref(),
            &mut problems,
        );
        let registry = file
            .registry
            .clone()
            .unwrap_or_else(|| DEFAULT_REGISTRY.to_owned());
        if registry.is_empty() || registry.contains(['/', ' ', '\\']) {
            problems.add(
                "registry",
                &registry,
                "expected a registry host name such as docker.io",
            );
        }

        let tag_ttl = TAG_TTL.parse_flag_over_file(
            overrides.settings.tag_ttl.as_ref(),
            file.tag_ttl.as_ref(),
            &mut problems,
        );
        let referrers_ttl = REFERRERS_TTL.parse(file.referrers_ttl.as_ref(), &mut problems);
        let shutdown_grace = SHUTDOWN_GRACE.parse(file.shutdown_grace.as_ref(), &mut problems);
        let max_stale = MAX_STALE.parse(file.max_stale.as_ref(), &mut problems);
        let health_probe_interval =
            HEALTH_PROBE_INTERVAL.parse(file.health_probe_interval.as_ref(), &mut problems);
        let offline = OFFLINE.parse_flag_over_file(
            overrides.settings.offline.as_ref(),
            file.offline.as_ref(),
            &mut problems,
        );
        let pool = pool_settings(file, &mut problems);

        let upstream_defaults = upstreams::UpstreamDefaults::parse(file, &mut problems);
        let (upstreams, upstream_secrets) = upstreams::parse(
            file,
            overrides,
            &registry,
            &upstream_defaults,
            &mut problems,
        );
        let direct =
            upstreams::direct_registries(file, overrides, &upstream_defaults, &mut problems);
        let shared_store_timeout =
            file::STORE_TIMEOUT.parse(file.shared_store_timeout.as_ref(), &mut problems);
        let (shared_store, shared_store_secret) =
            shared_store::parse(file, overrides, shared_store_timeout, &mut problems);

        let pins = pin_settings(
            file,
            &registry,
            (&upstreams, direct.as_ref()),
            &mut problems,
        );
        let ca_file = file.ca_file.as_ref().map(PathBuf::from);
        let named_files = NamedFiles {
            tls: listeners.tls.clone(),
            admin_token_file: listeners.admin_token_file,
            client_auth: listeners.client_auth,
            ca_file: ca_file.clone(),
            upstreams: upstream_secrets,
            shared_store_secret,
        };
        let settings = match (problems.0.is_empty(), listeners.listen) {
            (true, Some(listen)) => Ok(Config {
                listen,
                cache_dir,
                cache_size,
                registry,
                tag_ttl,
                referrers_ttl,
                max_stale,
                offline,
                admin_listen: listeners.admin_listen,
                admin_hosts: file.admin_hosts.clone().unwrap_or_default(),
                admin_token: None,
                tls: listeners.tls,
                client_auth: None,
                shutdown_grace,
                client_limits: listeners.client_limits,
                health_probe_interval,
                pool,
                upstreams,
                direct,
                ca_file,
                shared_store,
                pins,
            }),
            _ => Err(ConfigErrors(problems.0)),
        };
        Parsed {
            settings,
            named_files,
        }
    }
}

/// What `Config::parse` makes of a file and flags.
#[derive(Debug)]
pub struct Parsed {
    /// The settings, when every value was valid; the loaded parts (`admin_token`,
    /// `client_auth`, CA bundles, passwords and secrets kept elsewhere) still unset.
    pub settings: Result<Config, ConfigErrors>,
    /// The files and secrets the settings name, for `app::config_files` to read.
    pub(crate) named_files: NamedFiles,
}

impl Parsed {
    /// The settings of a configuration that names no files (tests, fuzzing); one that
    /// does is refused rather than returned without what those files hold.
    pub fn without_files(self) -> Result<Config, ConfigErrors> {
        if !self.named_files.is_empty() {
            let mut problems = self.settings.err().map(|e| e.0).unwrap_or_default();
            problems.push(ConfigProblem {
                key: "--config".into(),
                value: String::new(),
                reason: "names files or secrets; load it with app::config_files::load_config"
                    .into(),
            });
            return Err(ConfigErrors(problems));
        }
        self.settings
    }
}

/// Failover, retries, hedging and the circuit breaker.
fn pool_settings(file: &ConfigFile, problems: &mut Problems) -> PoolSettings {
    PoolSettings {
        failover_on_not_found: FAILOVER_ON_NOT_FOUND
            .parse(file.failover_on_not_found.as_ref(), problems),
        bad_source_skip: BAD_SOURCE_SKIP.parse(file.bad_source_skip.as_ref(), problems),
        retry_budget: RETRY_BUDGET.parse(file.retry_budget.as_ref(), problems) as usize,
        hedging: HEDGE_DELAY.parse(file.hedge_delay.as_ref(), problems),
        stall_floor: STALL_FLOOR.parse(file.stall_floor.as_ref(), problems),
        memory: crate::upstream::MemoryBudget::new(
            MEMORY_BUDGET.parse(file.memory_budget.as_ref(), problems),
        ),
        breaker: BreakerConfig {
            threshold: BREAKER_THRESHOLD.parse(file.breaker_threshold.as_ref(), problems),
            cooldown: BREAKER_COOLDOWN.parse(file.breaker_cooldown.as_ref(), problems),
            max_cooldown: BREAKER_MAX_COOLDOWN.parse(file.breaker_max_cooldown.as_ref(), problems),
            probe_timeout: BreakerConfig::DEFAULT.probe_timeout,
        },
        // Beside the cache; set by `app` once the cache directory is known to be usable.
        suspects: None,
    }
}

/// The pins of the file, checked: images, the refresh, what is kept, the platforms, and
/// that `pins_from` names a group of upstreams.
fn pin_settings(
    file: &ConfigFile,
    registry: &str,
    (upstreams, direct): (&[UpstreamConfig], Option<&DirectRegistries>),
    problems: &mut Problems,
) -> PinSettings {
    let routed = |name: &str| {
        upstreams.iter().any(|u| u.registry == name)
            || direct.is_some_and(|d| d.patterns.iter().any(|p| p.matches(name)))
    };
    let mut images = Vec::new();
    for image in file.pins.iter().flatten() {
        match crate::pins::image::PinnedImage::parse(image, registry) {
            Ok(pinned) if !routed(&pinned.registry) => problems.add(
                "pins",
                image,
                format!(
                    "ferry has no upstreams for registry {:?} (add an [[upstream]] for it, or a direct_registries pattern)",
                    pinned.registry
                ),
            ),
            Ok(pinned) if images.contains(&pinned.to_string()) => {
                problems.add("pins", image, "listed twice")
            }
            Ok(pinned) => images.push(pinned.to_string()),
            Err(e) => problems.add("pins", image, e.to_string()),
        }
    }
    let platforms = file.pin_platforms.clone().unwrap_or_default();
    for platform in &platforms {
        let parts: Vec<&str> = platform.split('/').collect();
        if !(2..=3).contains(&parts.len()) || parts.iter().any(|p| p.is_empty()) {
            problems.add(
                "pin_platforms",
                platform,
                "expected os/architecture[/variant], e.g. linux/amd64",
            );
        }
    }
    if let Some(group) = &file.pins_from
        && !upstreams
            .iter()
            .any(|u| u.group.as_deref() == Some(group.as_str()))
    {
        problems.add(
            "pins_from",
            group,
            "names no upstream group (set `group` on the AZ tier's [[upstream]] tables)",
        );
    }
    PinSettings {
        images,
        refresh: file::PIN_REFRESH.parse(file.pin_refresh.as_ref(), problems),
        keep: file::PIN_KEEP.parse(file.pin_keep.as_ref(), problems),
        from_group: file.pins_from.clone(),
        platforms,
    }
}

/// `$XDG_CACHE_HOME/ferry`, else `~/.cache/ferry`, else `./ferry-cache`.
pub fn default_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("ferry");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(home).join(".cache").join("ferry");
    }
    PathBuf::from("ferry-cache")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::Hedging;
    use std::path::Path;

    fn parse(text: &str, overrides: Overrides) -> Result<Config, ConfigErrors> {
        Config::parse(&toml::from_str(text).unwrap(), &overrides).without_files()
    }

    #[test]
    fn pins_are_read_in_canonical_form_and_checked() {
        let digest = crate::oci::Digest::sha256_of(b"agent");
        let text = format!(
            "pins = [\"alpine:3.20\", \"ghcr.io/org/agent@{digest}\"]\npin_refresh = \"30s\"\npin_keep = 2\npin_platforms = [\"linux/amd64\", \"linux/arm64/v8\"]\ndirect_registries = [\"ghcr.io\"]\n"
        );
        let config = parse(&text, Overrides::default()).unwrap();
        assert_eq!(
            config.pins.images,
            [
                "docker.io/library/alpine:3.20".to_owned(),
                format!("ghcr.io/org/agent@{digest}")
            ]
        );
        assert_eq!(config.pins.refresh, Duration::from_secs(30));
        assert_eq!(config.pins.keep, 2);
        let defaults = parse("", Overrides::default()).unwrap();
        assert_eq!(defaults.pins.refresh, Duration::from_secs(300));
        assert_eq!(defaults.pins.keep, 1);

        let errors = parse(
            "pins = [\"Bad/Name\", \"quay.io/x/y:v1\", \"alpine\", \"docker.io/library/alpine:latest\"]\npin_refresh = \"0s\"\npin_platforms = [\"linux\"]\npins_from = \"az\"\n",
            Overrides::default(),
        )
        .unwrap_err();
        let keys: Vec<&str> = errors.0.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "pins",
                "pins",
                "pins",
                "pin_platforms",
                "pins_from",
                "pin_refresh"
            ],
            "{errors}"
        );
        assert!(
            errors.0[1]
                .reason
                .contains("no upstreams for registry \"quay.io\""),
            "{errors}"
        );
        assert_eq!(errors.0[2].reason, "listed twice");
    }

    #[test]
    fn defaults_make_a_docker_hub_mirror() {
        let config = parse("", Overrides::default()).unwrap();
        assert_eq!(config.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(config.upstreams.len(), 1);
        assert_eq!(
            config.upstreams[0].url.as_str(),
            "https://registry-1.docker.io/"
        );
        assert_eq!(config.registry, "docker.io");
        assert_eq!(config.tag_ttl, DEFAULT_TAG_TTL);
        assert!(config.pool.failover_on_not_found);
        assert!(!config.offline);
        assert_eq!(config.max_stale, None);
        assert_eq!(config.pool.hedging, Hedging::Adaptive);
        assert_eq!(
            config.pool.stall_floor,
            Some(crate::upstream::DEFAULT_STALL_FLOOR)
        );
        assert_eq!(
            config.admin_listen.map(|a| a.to_string()).as_deref(),
            Some(DEFAULT_ADMIN_LISTEN)
        );
    }

    #[test]
    fn flags_override_file_and_keep_order() {
        let text = r#"
            listen = "127.0.0.1:6000"
            tag_ttl = "5s"
            [[upstream]]
            url = "http://file-upstream:5000"
        "#;
        let overrides = Overrides {
            listen: Some("127.0.0.1:7000".into()),
            upstreams: vec!["http://a:1".into(), "https://b".into()],
            ..Default::default()
        };
        let config = parse(text, overrides).unwrap();
        assert_eq!(config.listen.port(), 7000);
        assert_eq!(config.tag_ttl, Duration::from_secs(5));
        let names: Vec<_> = config.upstreams.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["a:1", "b"]);
    }

    #[test]
    fn reports_every_problem_at_once_with_key_and_value() {
        let text = r#"
            listen = "nonsense"
            tag_ttl = "soon"
            [[upstream]]
            url = "ftp://x"
            [[upstream]]
            url = "http://ok:1"
            header_timeout = "0s"
        "#;
        let err = parse(text, Overrides::default()).unwrap_err();
        let keys: Vec<_> = err
            .0
            .iter()
            .map(|p| (p.key.as_str(), p.value.as_str()))
            .collect();
        assert!(keys.contains(&("listen", "nonsense")), "{keys:?}");
        assert!(keys.contains(&("tag_ttl", "soon")), "{keys:?}");
        assert!(keys.contains(&("upstream[0].url", "ftp://x")), "{keys:?}");
        assert!(
            keys.contains(&("upstream[1].header_timeout", "0s")),
            "{keys:?}"
        );
        assert_eq!(err.0.len(), 4, "{err}");
    }

    #[test]
    fn sizes_and_outage_settings_parse() {
        assert_eq!(parse_size("256KiB"), Ok(256 * 1024));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size("300MB"), Ok(300_000_000));
        assert_eq!(parse_size("0"), Ok(0));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5 parsecs").is_err());
        let config = parse(
            "max_stale = \"7d\"\nhedge_delay = \"200ms\"\nadmin_listen = \"off\"\noffline = true\nmin_transfer_rate = \"1MiB\"",
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(config.max_stale, Some(Duration::from_secs(7 * 86400)));
        assert_eq!(
            config.pool.hedging,
            Hedging::After(Duration::from_millis(200))
        );
        let off = parse(
            "hedge_delay = \"off\"\nstall_floor = \"off\"",
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(off.pool.hedging, Hedging::Off);
        assert_eq!(off.pool.stall_floor, None);
        let slow = parse("stall_floor = \"3s\"", Overrides::default()).unwrap();
        assert_eq!(slow.pool.stall_floor, Some(Duration::from_secs(3)));
        assert_eq!(config.admin_listen, None);
        assert!(config.offline);
        assert_eq!(config.upstreams[0].min_transfer_rate, 1 << 20);
        let err = parse(
            "hedge_delay = \"0s\"\nmax_stale = \"forever\"",
            Overrides::default(),
        )
        .unwrap_err();
        assert_eq!(err.0.len(), 2, "{err}");
    }

    #[test]
    fn direct_registries_come_from_flags_over_the_file() {
        let err = parse(
            "direct_registries = [\"quay.io\", \"http://x\", \"*.corp.example\"]",
            Overrides::default(),
        )
        .unwrap_err();
        let keys: Vec<_> = err.0.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["direct_registries"], "{err}");
        let config = parse(
            "direct_registries = [\"quay.io\"]",
            Overrides {
                direct_registries: vec!["*.corp.example".into(), "*".into()],
                ..Default::default()
            },
        )
        .unwrap();
        let patterns: Vec<String> = config
            .direct
            .as_ref()
            .unwrap()
            .patterns
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(patterns, ["*.corp.example", "*"], "flags replace the file");
        assert!(parse("", Overrides::default()).unwrap().direct.is_none());
    }

    #[test]
    fn named_files_are_listed_not_read() {
        let text = r#"
            tls_cert_file = "/nonexistent/cert.pem"
            tls_key_file = "/nonexistent/key.pem"
            auth_users_file = "/nonexistent/users"
            ca_file = "/nonexistent/ca.pem"
            [client_access]
            ci = ["GHCR.io", "not a host"]
            [[upstream]]
            url = "https://r.example"
            username = "ci"
            password_file = "/nonexistent/password"
        "#;
        let parsed = Config::parse(&toml::from_str(text).unwrap(), &Overrides::default());
        let problems = parsed.settings.unwrap_err().0;
        let keys: Vec<_> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            ["client_access.ci"],
            "only the value problem, no file read"
        );
        let named = parsed.named_files;
        assert_eq!(
            named.tls.as_ref().unwrap().0,
            Path::new("/nonexistent/cert.pem")
        );
        let auth = named.client_auth.as_ref().unwrap();
        assert_eq!(
            auth.registry_rules,
            [("ci".to_owned(), vec!["ghcr.io".to_owned()])]
        );
        assert_eq!(
            named.ca_file.as_deref(),
            Some(Path::new("/nonexistent/ca.pem"))
        );
        assert_eq!(
            named.upstreams[0].password,
            Some((
                "ci".to_owned(),
                SecretSource::File("/nonexistent/password".into())
            ))
        );
        let err = Config::parse(
            &toml::from_str("ca_file = \"/x\"").unwrap(),
            &Overrides::default(),
        )
        .without_files()
        .unwrap_err();
        assert_eq!(
            err.0[0].key, "--config",
            "a config naming files is not returned unread"
        );
    }

    #[test]
    fn credentials_need_a_username_and_one_source() {
        let table = |fields: &str| format!("[[upstream]]\nurl = \"https://r.example\"\n{fields}");
        let err = parse(&table("username = \"ci\""), Overrides::default()).unwrap_err();
        assert_eq!(err.0[0].key, "upstream[0].username", "{err}");
        let err = parse(&table("password = \"x\""), Overrides::default()).unwrap_err();
        assert_eq!(err.0[0].key, "upstream[0].username", "{err}");
        let both = "username = \"ci\"\npassword = \"x\"\npassword_command = \"echo y\"";
        let err = parse(&table(both), Overrides::default()).unwrap_err();
        assert_eq!(err.0[0].key, "upstream[0].password", "{err}");
        let command =
            "username = \"ci\"\npassword_command = \"echo y\"\npassword_command_ttl = \"1m\"";
        let config = parse(&table(command), Overrides::default()).unwrap();
        let helper = config.upstreams[0]
            .credentials
            .as_ref()
            .unwrap()
            .command
            .as_ref()
            .unwrap();
        assert_eq!(helper.ttl, Duration::from_secs(60));
    }

    #[test]
    fn unknown_keys_are_rejected() {
        assert!(toml::from_str::<ConfigFile>("lisen = \"x\"").is_err());
    }

    #[test]
    fn secrets_are_redacted() {
        let text = r#"
            [[upstream]]
            url = "https://r.example"
            username = "ci"
            password = "hunter2"
        "#;
        let config = parse(text, Overrides::default()).unwrap();
        assert!(!config.to_redacted_toml().contains("hunter2"));
        assert!(!format!("{config:?}").contains("hunter2"));
        assert_eq!(
            config.upstreams[0].credentials.as_ref().unwrap().password,
            "hunter2"
        );
    }
}
