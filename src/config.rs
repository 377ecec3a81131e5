//! The validated configuration: defaults, the config file merged with command-line flags
//! (flags win), and a report of every invalid key and value at once.

pub mod file;

use crate::upstream::PoolSettings;
use crate::upstream::breaker::BreakerConfig;
use file::{ConfigFile, UpstreamFile};

// Settings types owned by the layers that use them, re-exported here where configs are built.
pub use crate::server::limits::ClientLimits;
pub use crate::upstream::settings::{
    Credentials, DOCKER_HUB_URL, DirectRegistries, PasswordCommand, UpstreamCa, UpstreamConfig,
};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:5000";
pub const DEFAULT_REGISTRY: &str = "docker.io";
pub const DEFAULT_TAG_TTL: Duration = Duration::from_secs(60);
/// How long a referrers list is served without asking an upstream again (new signatures
/// and SBOMs appear as they are pushed).
pub const DEFAULT_REFERRERS_TTL: Duration = Duration::from_secs(30);
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_BAD_SOURCE_SKIP: Duration = Duration::from_secs(300);
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:5005";
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
pub const DEFAULT_MIN_TRANSFER_RATE: u64 = 256 * 1024;
pub const DEFAULT_RATE_WINDOW: Duration = Duration::from_secs(10);
pub const DEFAULT_RETRY_BUDGET: usize = 2;
/// How long a credential helper's output is reused (ECR tokens live 12 h).
pub const DEFAULT_PASSWORD_COMMAND_TTL: Duration = Duration::from_secs(600);

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
    /// Token required by the admin API's drain and undrain (`admin_token_file`, or the
    /// `FERRY_ADMIN_TOKEN` variable); `None` = no token.
    pub admin_token: Option<AdminToken>,
    /// TLS certificate chain and key (PEM) for the registry listener; `None` = plain HTTP.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Client authentication for the registry listener; `None` = open.
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
}

/// The admin API's token. Never shown in `Debug` output or `check-config`.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(pub String);

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

impl AdminToken {
    /// `FERRY_ADMIN_TOKEN` if set and not empty, else the file's first line.
    fn load(file: Option<&str>) -> Result<Option<Self>, (&'static str, String, String)> {
        if let Ok(token) = std::env::var("FERRY_ADMIN_TOKEN")
            && !token.trim().is_empty()
        {
            return Ok(Some(AdminToken(token.trim().to_owned())));
        }
        let Some(path) = file else { return Ok(None) };
        match std::fs::read_to_string(path) {
            Ok(text) if !text.trim().is_empty() => Ok(Some(AdminToken(text.trim().to_owned()))),
            Ok(_) => Err((
                "admin_token_file",
                path.to_owned(),
                "the file is empty".into(),
            )),
            Err(e) => Err((
                "admin_token_file",
                path.to_owned(),
                format!("cannot read: {e}"),
            )),
        }
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
    pub tag_ttl: Option<String>,
    pub offline: bool,
    pub admin_listen: Option<String>,
    pub cache_size: Option<String>,
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
    /// Reads `path` (if given), applies `overrides`, and validates everything,
    /// returning every problem found rather than the first.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigErrors> {
        let file = match path {
            None => ConfigFile::default(),
            Some(path) => match std::fs::read_to_string(path) {
                Err(e) => {
                    return Err(ConfigErrors(vec![ConfigProblem {
                        key: "--config".into(),
                        value: path.display().to_string(),
                        reason: format!("cannot read: {e}"),
                    }]));
                }
                Ok(text) => match toml::from_str::<ConfigFile>(&text) {
                    Ok(file) => file,
                    Err(e) => {
                        return Err(ConfigErrors(vec![ConfigProblem {
                            key: "--config".into(),
                            value: path.display().to_string(),
                            reason: format!("not valid ferry TOML: {}", e.to_string().trim()),
                        }]));
                    }
                },
            },
        };
        Self::from_file(file, overrides)
    }

    pub fn from_file(file: ConfigFile, overrides: &Overrides) -> Result<Config, ConfigErrors> {
        let mut problems = Vec::new();
        let mut problem = |key: &str, value: &str, reason: String| {
            problems.push(ConfigProblem {
                key: key.to_owned(),
                value: value.to_owned(),
                reason,
            })
        };

        let (listen_key, listen_value) = flag_over_file(
            ("--listen", overrides.listen.as_ref()),
            ("listen", file.listen.as_ref()),
        );
        let listen_value = listen_value
            .map_or(DEFAULT_LISTEN, String::as_str)
            .to_owned();
        let listen = match listen_value.parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                problem(
                    listen_key,
                    &listen_value,
                    "expected IP:PORT, e.g. 127.0.0.1:5000".into(),
                );
                None
            }
        };

        let cache_dir = match (&overrides.cache_dir, &file.cache_dir) {
            (Some(dir), _) => dir.clone(),
            (None, Some(dir)) => PathBuf::from(dir),
            (None, None) => default_cache_dir(),
        };
        if cache_dir.as_os_str().is_empty() {
            problem("cache_dir", "", "must not be empty".into());
        }

        let (size_key, size_value) = flag_over_file(
            ("--cache-size", overrides.cache_size.as_ref()),
            ("cache_size", file.cache_size.as_ref()),
        );
        let cache_size = match size_value.map(String::as_str) {
            None | Some("unlimited") => None,
            Some(text) => match parse_size(text) {
                Ok(0) => {
                    problem(
                        size_key,
                        text,
                        "must be greater than zero, or \"unlimited\"".into(),
                    );
                    None
                }
                Ok(bytes) => Some(bytes),
                Err(reason) => {
                    problem(size_key, text, reason);
                    None
                }
            },
        };

        let registry = file
            .registry
            .clone()
            .unwrap_or_else(|| DEFAULT_REGISTRY.to_owned());
        if registry.is_empty() || registry.contains(['/', ' ', '\\']) {
            problem(
                "registry",
                &registry,
                "expected a registry host name such as docker.io".into(),
            );
        }

        const ANY_DURATION: DurationRule = DurationRule {
            zero_allowed: true,
            off_word: None,
        };
        let mut duration = |key: &str, value: Option<&String>, default: Duration| -> Duration {
            let Some(text) = value else { return default };
            parse_duration_setting(text, ANY_DURATION)
                .map(|d| d.unwrap_or(default))
                .unwrap_or_else(|reason| {
                    problem(key, text, reason);
                    default
                })
        };
        let (ttl_key, ttl_value) = flag_over_file(
            ("--tag-ttl", overrides.tag_ttl.as_ref()),
            ("tag_ttl", file.tag_ttl.as_ref()),
        );
        let tag_ttl = duration(ttl_key, ttl_value, DEFAULT_TAG_TTL);
        let referrers_ttl = duration(
            "referrers_ttl",
            file.referrers_ttl.as_ref(),
            DEFAULT_REFERRERS_TTL,
        );
        let bad_source_skip = duration(
            "bad_source_skip",
            file.bad_source_skip.as_ref(),
            DEFAULT_BAD_SOURCE_SKIP,
        );
        let connect_default = duration(
            "connect_timeout",
            file.connect_timeout.as_ref(),
            DEFAULT_CONNECT_TIMEOUT,
        );
        let header_default = duration(
            "header_timeout",
            file.header_timeout.as_ref(),
            DEFAULT_HEADER_TIMEOUT,
        );
        let idle_default = duration(
            "body_idle_timeout",
            file.body_idle_timeout.as_ref(),
            DEFAULT_BODY_IDLE_TIMEOUT,
        );

        let shutdown_grace = duration(
            "shutdown_grace",
            file.shutdown_grace.as_ref(),
            DEFAULT_SHUTDOWN_GRACE,
        );
        let limit_defaults = ClientLimits::default();
        let client_header_timeout = duration(
            "client_header_timeout",
            file.client_header_timeout.as_ref(),
            limit_defaults.header_timeout,
        );
        let client_idle_timeout = duration(
            "client_idle_timeout",
            file.client_idle_timeout.as_ref(),
            limit_defaults.idle_timeout,
        );
        let rate_window = duration(
            "rate_window",
            file.rate_window.as_ref(),
            DEFAULT_RATE_WINDOW,
        );
        let breaker_defaults = BreakerConfig::default();
        let breaker_cooldown = duration(
            "breaker_cooldown",
            file.breaker_cooldown.as_ref(),
            breaker_defaults.cooldown,
        );
        let breaker_max_cooldown = duration(
            "breaker_max_cooldown",
            file.breaker_max_cooldown.as_ref(),
            breaker_defaults.max_cooldown,
        );
        let shared_store_timeout = duration(
            "shared_store_timeout",
            file.shared_store_timeout.as_ref(),
            Duration::from_secs(10),
        );
        let mut optional_duration =
            |key: &str, value: Option<&String>, off_word: &'static str| -> Option<Duration> {
                let text = value?;
                let rule = DurationRule {
                    zero_allowed: false,
                    off_word: Some(off_word),
                };
                parse_duration_setting(text, rule).unwrap_or_else(|reason| {
                    problem(key, text, reason);
                    None
                })
            };
        let max_stale = optional_duration("max_stale", file.max_stale.as_ref(), "unlimited");
        let hedge_delay = optional_duration("hedge_delay", file.hedge_delay.as_ref(), "off");
        let health_probe_interval = optional_duration(
            "health_probe_interval",
            file.health_probe_interval.as_ref(),
            "off",
        );
        let min_rate_default = match &file.min_transfer_rate {
            None => DEFAULT_MIN_TRANSFER_RATE,
            Some(text) => parse_size(text).unwrap_or_else(|reason| {
                problem("min_transfer_rate", text, reason);
                DEFAULT_MIN_TRANSFER_RATE
            }),
        };
        let (admin_key, admin_value) = flag_over_file(
            ("--admin-listen", overrides.admin_listen.as_ref()),
            ("admin_listen", file.admin_listen.as_ref()),
        );
        let admin_value = admin_value
            .map_or(DEFAULT_ADMIN_LISTEN, String::as_str)
            .to_owned();
        let admin_listen = if admin_value == "off" {
            None
        } else {
            match admin_value.parse::<SocketAddr>() {
                Ok(addr) => Some(addr),
                Err(_) => {
                    problem(
                        admin_key,
                        &admin_value,
                        "expected IP:PORT or \"off\"".into(),
                    );
                    None
                }
            }
        };
        let admin_token = match AdminToken::load(file.admin_token_file.as_deref()) {
            Ok(token) => token,
            Err((key, value, reason)) => {
                problem(key, &value, reason);
                None
            }
        };
        let client_auth = if file.auth_tokens_file.is_some() || file.auth_users_file.is_some() {
            match crate::server::client_auth::ClientAuth::load(
                file.auth_tokens_file.as_deref().map(Path::new),
                file.auth_users_file.as_deref().map(Path::new),
            ) {
                Ok(mut auth) => {
                    for (user, registries) in file.client_access.iter().flatten() {
                        let mut allowed = Vec::new();
                        for registry in registries {
                            let canonical = crate::oci::registry::canonical_registry(registry);
                            if crate::oci::registry::is_registry_host(&canonical) {
                                allowed.push(canonical);
                            } else {
                                problem(
                                    &format!("client_access.{user}"),
                                    registry,
                                    "expected a registry host[:port] such as ghcr.io".into(),
                                );
                            }
                        }
                        if let Err(reason) = auth.restrict(user, allowed) {
                            problem(&format!("client_access.{user}"), user, reason);
                        }
                    }
                    Some(std::sync::Arc::new(auth))
                }
                Err(reason) => {
                    let value = file
                        .auth_users_file
                        .clone()
                        .or(file.auth_tokens_file.clone())
                        .unwrap_or_default();
                    problem("auth_users_file / auth_tokens_file", &value, reason);
                    None
                }
            }
        } else {
            if file.client_access.is_some() {
                problem(
                    "client_access",
                    "",
                    "needs client authentication (auth_users_file)".into(),
                );
            }
            None
        };
        let tls = match (&file.tls_cert_file, &file.tls_key_file) {
            (None, None) => None,
            (Some(cert), Some(key)) => {
                match crate::server::tls::ReloadingTls::load(Path::new(cert), Path::new(key)) {
                    Ok(_) => Some((PathBuf::from(cert), PathBuf::from(key))),
                    Err(reason) => {
                        problem("tls_cert_file / tls_key_file", cert, reason);
                        None
                    }
                }
            }
            (Some(cert), None) => {
                problem(
                    "tls_key_file",
                    "",
                    format!("tls_cert_file = {cert:?} needs a key"),
                );
                None
            }
            (None, Some(key)) => {
                problem(
                    "tls_cert_file",
                    "",
                    format!("tls_key_file = {key:?} needs a certificate"),
                );
                None
            }
        };
        let ca_default =
            file.ca_file
                .as_ref()
                .and_then(|path| match UpstreamCa::load(Path::new(path)) {
                    Ok(ca) => Some(ca),
                    Err(reason) => {
                        problem("ca_file", path, reason);
                        None
                    }
                });
        let (direct_key, direct_given) = if overrides.direct_registries.is_empty() {
            (
                "direct_registries",
                file.direct_registries.clone().unwrap_or_default(),
            )
        } else {
            ("--direct-registry", overrides.direct_registries.clone())
        };
        let mut direct_patterns = Vec::new();
        for text in &direct_given {
            match crate::oci::registry::RegistryPattern::parse(text) {
                Ok(pattern) => direct_patterns.push(pattern),
                Err(reason) => problem(direct_key, text, reason),
            }
        }
        let breaker_threshold = file.breaker_threshold.unwrap_or(breaker_defaults.threshold);
        if breaker_threshold == 0 {
            problem("breaker_threshold", "0", "must be at least 1".into());
        }
        for (key, value) in [
            ("client_header_timeout", client_header_timeout),
            ("client_idle_timeout", client_idle_timeout),
        ] {
            if value.is_zero() {
                problem(key, "0", "must be greater than zero".into());
            }
        }
        let max_connections = file
            .max_connections
            .map_or(limit_defaults.max_connections, |n| n as usize);
        let max_connections_per_client = file
            .max_connections_per_client
            .map_or(limit_defaults.max_connections_per_client, |n| n as usize)
            .min(max_connections);
        if max_connections == 0 {
            problem("max_connections", "0", "must be at least 1".into());
        }
        if file.max_connections_per_client == Some(0) {
            problem(
                "max_connections_per_client",
                "0",
                "must be at least 1".into(),
            );
        }

        let upstream_files: Vec<(String, UpstreamFile)> =
            if !overrides.upstreams.is_empty() || !overrides.upstream_groups.is_empty() {
                let mut files = Vec::new();
                for (i, given) in overrides.upstream_groups.iter().enumerate() {
                    let key = format!("--upstream-group[{i}]");
                    let Some((group, urls)) = given.split_once('=') else {
                        problem(&key, given, "expected NAME=URL,URL,...".into());
                        continue;
                    };
                    for url in urls.split(',').filter(|u| !u.trim().is_empty()) {
                        files.push((
                            key.clone(),
                            UpstreamFile {
                                url: Some(url.trim().to_owned()),
                                group: Some(group.to_owned()),
                                ..Default::default()
                            },
                        ));
                    }
                }
                files.extend(overrides.upstreams.iter().enumerate().map(|(i, given)| {
                    // `REGISTRY=URL` names the registry; a bare URL serves the default one.
                    let (registry, url) = match given.split_once('=') {
                        Some((registry, url)) if !registry.contains("://") => {
                            (Some(registry.to_owned()), url)
                        }
                        _ => (None, given.as_str()),
                    };
                    (
                        format!("--upstream[{i}]"),
                        UpstreamFile {
                            url: Some(url.to_owned()),
                            registry,
                            ..Default::default()
                        },
                    )
                }));
                files
            } else if !file.upstreams.is_empty() {
                file.upstreams
                    .iter()
                    .enumerate()
                    .map(|(i, u)| (format!("upstream[{i}]"), u.clone()))
                    .collect()
            } else {
                vec![(
                    "upstream[default]".to_owned(),
                    UpstreamFile {
                        url: Some(DOCKER_HUB_URL.to_owned()),
                        name: Some("docker-hub".to_owned()),
                        ..Default::default()
                    },
                )]
            };

        let mut upstreams = Vec::new();
        for (key, upstream) in &upstream_files {
            let mut field_problem = |field: &str, value: &str, reason: String| {
                problem(&format!("{key}.{field}"), value, reason)
            };
            let Some(url_text) = &upstream.url else {
                field_problem("url", "", "every upstream needs a url".into());
                continue;
            };
            let url = match reqwest::Url::parse(url_text.trim_end_matches('/')) {
                Ok(url) if matches!(url.scheme(), "http" | "https") && url.host_str().is_some() => {
                    if url.query().is_some() || url.fragment().is_some() {
                        field_problem("url", url_text, "must not have a query or fragment".into());
                    }
                    Some(url)
                }
                Ok(_) => {
                    field_problem(
                        "url",
                        url_text,
                        "scheme must be http or https, with a host".into(),
                    );
                    None
                }
                Err(e) => {
                    field_problem("url", url_text, format!("not a URL ({e})"));
                    None
                }
            };
            const POSITIVE_DURATION: DurationRule = DurationRule {
                zero_allowed: false,
                off_word: None,
            };
            let mut timeout = |field: &str, value: Option<&String>, default: Duration| {
                let Some(text) = value else { return default };
                parse_duration_setting(text, POSITIVE_DURATION)
                    .map(|d| d.unwrap_or(default))
                    .unwrap_or_else(|reason| {
                        field_problem(field, text, reason);
                        default
                    })
            };
            let connect_timeout = timeout(
                "connect_timeout",
                upstream.connect_timeout.as_ref(),
                connect_default,
            );
            let header_timeout = timeout(
                "header_timeout",
                upstream.header_timeout.as_ref(),
                header_default,
            );
            let body_idle_timeout = timeout(
                "body_idle_timeout",
                upstream.body_idle_timeout.as_ref(),
                idle_default,
            );
            let min_transfer_rate = match &upstream.min_transfer_rate {
                None => min_rate_default,
                Some(text) => parse_size(text).unwrap_or_else(|reason| {
                    field_problem("min_transfer_rate", text, reason);
                    min_rate_default
                }),
            };
            let password_command_ttl = match &upstream.password_command_ttl {
                None => DEFAULT_PASSWORD_COMMAND_TTL,
                Some(text) => parse_duration_setting(text, ANY_DURATION)
                    .map(|d| d.unwrap_or(DEFAULT_PASSWORD_COMMAND_TTL))
                    .unwrap_or_else(|reason| {
                        field_problem("password_command_ttl", text, reason);
                        DEFAULT_PASSWORD_COMMAND_TTL
                    }),
            };
            let credentials = match resolve_password(upstream) {
                Ok(None) => None,
                Ok(Some(password)) => match &upstream.username {
                    Some(username) => Some(Credentials {
                        username: username.clone(),
                        password,
                        command: upstream.password_command.as_ref().map(|command| {
                            std::sync::Arc::new(PasswordCommand::new(command, password_command_ttl))
                        }),
                    }),
                    None => {
                        field_problem("username", "", "a password source needs a username".into());
                        None
                    }
                },
                Err((field, value, reason)) => {
                    field_problem(field, &value, reason);
                    None
                }
            };
            let ca = match &upstream.ca_file {
                None => ca_default.clone(),
                Some(path) => match UpstreamCa::load(Path::new(path)) {
                    Ok(ca) => Some(ca),
                    Err(reason) => {
                        field_problem("ca_file", path, reason);
                        None
                    }
                },
            };
            if upstream.username.is_some() && credentials.is_none() {
                let sources = [
                    &upstream.password,
                    &upstream.password_env,
                    &upstream.password_file,
                    &upstream.password_command,
                ];
                if sources.iter().all(|s| s.is_none()) {
                    field_problem(
                        "username",
                        upstream.username.as_deref().unwrap_or(""),
                        "needs one of password, password_env or password_file".into(),
                    );
                }
            }
            if let Some(url) = url {
                let name = upstream
                    .name
                    .clone()
                    .unwrap_or_else(|| default_upstream_name(&url));
                let upstream_registry = crate::oci::registry::canonical_registry(
                    upstream.registry.as_deref().unwrap_or(&registry),
                );
                if upstream_registry.is_empty() || upstream_registry.contains(['/', ' ']) {
                    field_problem(
                        "registry",
                        &upstream_registry,
                        "expected a registry host name such as ghcr.io".into(),
                    );
                }
                if let Some(group) = &upstream.group
                    && (group.is_empty()
                        || !group
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
                {
                    field_problem(
                        "group",
                        group,
                        "expected a name of letters, digits, '-', '_' or '.'".into(),
                    );
                }
                upstreams.push(UpstreamConfig {
                    group: upstream.group.clone(),
                    name,
                    url,
                    registry: upstream_registry,
                    connect_timeout,
                    header_timeout,
                    body_idle_timeout,
                    min_transfer_rate,
                    rate_window,
                    credentials,
                    ca,
                    https_redirects_only: false,
                    public_addresses_only: upstream.public_addresses_only.unwrap_or(false),
                });
            }
        }
        // A group is one slot in its registry's priority order: its members must be
        // consecutive and serve the same registry.
        let mut closed_groups: Vec<&str> = Vec::new();
        for (i, upstream) in upstreams.iter().enumerate() {
            let Some(group) = upstream.group.as_deref() else {
                continue;
            };
            let continues = i > 0 && upstreams[i - 1].group.as_deref() == Some(group);
            if continues && upstreams[i - 1].registry != upstream.registry {
                problem(
                    "upstream.group",
                    group,
                    "all members of a group must serve the same registry".into(),
                );
            }
            if !continues {
                if closed_groups.contains(&group) {
                    problem(
                        "upstream.group",
                        group,
                        "the members of a group must be consecutive [[upstream]] tables".into(),
                    );
                }
                closed_groups.push(group);
            }
        }
        let mut seen = std::collections::HashSet::new();
        for upstream in &upstreams {
            if !seen.insert(upstream.name.clone()) {
                problem(
                    "upstream.name",
                    &upstream.name,
                    "two upstreams share this name; set `name` on one of them".into(),
                );
            }
        }

        let shared_store = shared_store_config(&file, overrides, shared_store_timeout)
            .unwrap_or_else(|(key, value, reason)| {
                problem(key, &value, reason);
                None
            });

        match (problems.is_empty(), listen) {
            (true, Some(listen)) => Ok(Config {
                shared_store,
                listen,
                cache_dir,
                cache_size,
                registry,
                tag_ttl,
                referrers_ttl,
                max_stale,
                offline: overrides.offline || file.offline.unwrap_or(false),
                admin_listen,
                admin_hosts: file.admin_hosts.clone().unwrap_or_default(),
                admin_token,
                tls,
                client_auth,
                shutdown_grace,
                client_limits: ClientLimits {
                    header_timeout: client_header_timeout,
                    idle_timeout: client_idle_timeout,
                    max_connections,
                    max_connections_per_client,
                },
                health_probe_interval,
                pool: PoolSettings {
                    failover_on_not_found: file.failover_on_not_found.unwrap_or(true),
                    bad_source_skip,
                    retry_budget: file
                        .retry_budget
                        .map_or(DEFAULT_RETRY_BUDGET, |b| b as usize),
                    hedge_delay,
                    breaker: BreakerConfig {
                        threshold: breaker_threshold,
                        cooldown: breaker_cooldown,
                        max_cooldown: breaker_max_cooldown,
                        probe_timeout: breaker_defaults.probe_timeout,
                    },
                },
                upstreams,
                ca_file: ca_default.as_ref().map(|ca| ca.path.clone()),
                direct: (!direct_patterns.is_empty()).then_some(DirectRegistries {
                    patterns: direct_patterns,
                    connect_timeout: connect_default,
                    header_timeout: header_default,
                    body_idle_timeout: idle_default,
                    min_transfer_rate: min_rate_default,
                    rate_window,
                    ca: ca_default,
                    private_addresses: file.direct_registries_private_addresses.unwrap_or(false),
                }),
            }),
            _ => Err(ConfigErrors(problems)),
        }
    }

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
            hedge_delay: Some(self.pool.hedge_delay.map_or("off".to_owned(), |d| {
                humantime::format_duration(d).to_string()
            })),
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

/// Parses a byte size such as `256KiB`, `50GiB`, `300MB` or `1024` (bytes).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| "expected a size such as 256KiB, 300MiB or 50GiB".to_owned())?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "tib" => 1 << 40,
        _ => {
            return Err(format!(
                "unknown size unit {unit:?} (use B, KB, KiB, MB, MiB, GB, GiB, TB, TiB)"
            ));
        }
    };
    if !number.is_finite() || number < 0.0 {
        return Err("size must be a positive number".into());
    }
    Ok((number * multiplier as f64).round() as u64)
}

/// The shared store's settings: the file's keys, else the standard `AWS_*` variables.
fn shared_store_config(
    file: &ConfigFile,
    overrides: &Overrides,
    request_timeout: Duration,
) -> Result<Option<crate::shared::SharedStoreConfig>, (&'static str, String, String)> {
    let Some(url) = overrides
        .shared_store
        .clone()
        .or_else(|| file.shared_store.clone())
    else {
        return Ok(None);
    };
    let from_env = crate::shared::SharedStoreConfig::from_env(&url, request_timeout)
        .map_err(|reason| ("shared_store", url.clone(), reason))?;
    let endpoint = file
        .shared_store_endpoint
        .clone()
        .or(from_env.endpoint.clone());
    if let Some(endpoint) = &endpoint
        && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
    {
        return Err((
            "shared_store_endpoint",
            endpoint.clone(),
            "expected an http:// or https:// URL".into(),
        ));
    }
    let given_secrets = [
        &file.shared_store_secret_access_key,
        &file.shared_store_secret_access_key_env,
        &file.shared_store_secret_access_key_file,
    ]
    .iter()
    .filter(|s| s.is_some())
    .count();
    if given_secrets > 1 {
        return Err((
            "shared_store_secret_access_key",
            "<redacted>".into(),
            "set only one of shared_store_secret_access_key, _env, _file".into(),
        ));
    }
    let secret_access_key = if let Some(secret) = &file.shared_store_secret_access_key {
        Some(secret.clone())
    } else if let Some(var) = &file.shared_store_secret_access_key_env {
        Some(
            std::env::var(var)
                .ok()
                .filter(|v| !v.is_empty())
                .ok_or_else(|| {
                    (
                        "shared_store_secret_access_key_env",
                        var.clone(),
                        "environment variable is unset or empty".to_owned(),
                    )
                })?,
        )
    } else if let Some(path) = &file.shared_store_secret_access_key_file {
        Some(
            std::fs::read_to_string(path)
                .map_err(|e| {
                    (
                        "shared_store_secret_access_key_file",
                        path.clone(),
                        format!("cannot read: {e}"),
                    )
                })?
                .trim_end_matches(['\n', '\r'])
                .to_owned(),
        )
    } else {
        from_env.secret_access_key.clone()
    };
    Ok(Some(crate::shared::SharedStoreConfig {
        endpoint,
        region: file.shared_store_region.clone().or(from_env.region.clone()),
        access_key_id: file
            .shared_store_access_key_id
            .clone()
            .or(from_env.access_key_id.clone()),
        secret_access_key,
        blob_redirect: file.blob_redirect.unwrap_or(false),
        ..from_env
    }))
}

fn resolve_password(
    upstream: &UpstreamFile,
) -> Result<Option<String>, (&'static str, String, String)> {
    let given = [
        &upstream.password,
        &upstream.password_env,
        &upstream.password_file,
    ]
    .iter()
    .filter(|s| s.is_some())
    .count();
    if given > 1 {
        return Err((
            "password",
            "<redacted>".into(),
            "set only one of password, password_env, password_file, password_command".into(),
        ));
    }
    if let Some(password) = &upstream.password {
        return Ok(Some(password.clone()));
    }
    if upstream.password_command.is_some() {
        // Run lazily, at first use; the empty password marks "from the command".
        return Ok(Some(String::new()));
    }
    if let Some(var) = &upstream.password_env {
        return match std::env::var(var) {
            Ok(value) if !value.is_empty() => Ok(Some(value)),
            _ => Err((
                "password_env",
                var.clone(),
                "environment variable is unset or empty".into(),
            )),
        };
    }
    if let Some(path) = &upstream.password_file {
        return match std::fs::read_to_string(path) {
            Ok(value) => Ok(Some(value.trim_end_matches(['\n', '\r']).to_owned())),
            Err(e) => Err(("password_file", path.clone(), format!("cannot read: {e}"))),
        };
    }
    Ok(None)
}

fn default_upstream_name(url: &reqwest::Url) -> String {
    match (url.host_str(), url.port()) {
        (Some(host), Some(port)) => format!("{host}:{port}"),
        (Some(host), None) => host.to_owned(),
        _ => url.to_string(),
    }
}

/// The value of a setting that has a flag and a file key: the flag's if given, else the
/// file's (`None`: neither, the default applies), with the name to report problems under.
fn flag_over_file<'a>(
    flag: (&'static str, Option<&'a String>),
    file: (&'static str, Option<&'a String>),
) -> (&'static str, Option<&'a String>) {
    match flag {
        (key, Some(value)) => (key, Some(value)),
        (_, None) => file,
    }
}

/// What a duration setting accepts besides a positive duration.
#[derive(Clone, Copy)]
struct DurationRule {
    zero_allowed: bool,
    /// A word meaning "none" (`off`, `unlimited`).
    off_word: Option<&'static str>,
}

/// Parses a duration setting: `Ok(None)` for the off word, `Err(reason)` for anything the
/// rule refuses. The one duration parser behind every duration in the file and on flags.
fn parse_duration_setting(text: &str, rule: DurationRule) -> Result<Option<Duration>, String> {
    if rule.off_word == Some(text) {
        return Ok(None);
    }
    let or_off = rule
        .off_word
        .map(|word| format!(", or \"{word}\""))
        .unwrap_or_default();
    match humantime::parse_duration(text) {
        Ok(d) if d.is_zero() && !rule.zero_allowed => {
            Err(format!("must be greater than zero{or_off}"))
        }
        Ok(d) => Ok(Some(d)),
        Err(e) => Err(format!(
            "expected a duration such as 30s or 500ms{or_off} ({e})"
        )),
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

    fn parse(text: &str, overrides: Overrides) -> Result<Config, ConfigErrors> {
        Config::from_file(toml::from_str(text).unwrap(), &overrides)
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
        assert_eq!(config.pool.hedge_delay, None);
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
        assert_eq!(config.pool.hedge_delay, Some(Duration::from_millis(200)));
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
    fn ca_files_and_direct_registries_are_validated() {
        let dir = tempfile::tempdir().unwrap();
        let not_pem = dir.path().join("not.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        let text = format!(
            r#"
            ca_file = "{missing}"
            direct_registries = ["quay.io", "http://x", "*.corp.example"]
            [[upstream]]
            url = "https://registry.corp.example"
            ca_file = "{not_pem}"
            "#,
            missing = dir.path().join("missing.pem").display(),
            not_pem = not_pem.display(),
        );
        let err = parse(&text, Overrides::default()).unwrap_err();
        let keys: Vec<_> = err.0.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            ["ca_file", "direct_registries", "upstream[0].ca_file"],
            "{err}"
        );

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
    fn client_access_needs_known_users_and_registry_names() {
        let dir = tempfile::tempdir().unwrap();
        let users = dir.path().join("users");
        std::fs::write(&users, "ci:pw\n").unwrap();
        let text = format!(
            "auth_users_file = \"{}\"\n[client_access]\nci = [\"GHCR.io\", \"index.docker.io\"]\n",
            users.display()
        );
        assert!(parse(&text, Overrides::default()).is_ok());
        let err = parse(
            &format!("{text}ghost = [\"ghcr.io\"]\n"),
            Overrides::default(),
        )
        .unwrap_err();
        assert_eq!(err.0[0].key, "client_access.ghost", "{err}");
        let err = parse(&text.replace("GHCR.io", "not a host"), Overrides::default()).unwrap_err();
        assert_eq!(err.0[0].key, "client_access.ci", "{err}");
        let err = parse("[client_access]\nci = []\n", Overrides::default()).unwrap_err();
        assert_eq!(err.0[0].key, "client_access", "{err}");
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
