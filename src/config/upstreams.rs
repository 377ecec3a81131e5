//! The upstream half of the settings: the ordered upstream list (from flags or
//! `[[upstream]]` tables), their timeouts and credentials, groups, and direct registries.

use super::file::{
    BODY_IDLE_TIMEOUT, CONNECT_TIMEOUT, HEADER_TIMEOUT, MIN_TRANSFER_RATE, RATE_WINDOW,
    RATELIMIT_RESERVE,
};
use super::file::{ConfigFile, UpstreamFile};
use super::named_files::{SecretSource, UpstreamSecrets};
use super::values::{ANY_DURATION, POSITIVE_DURATION, Problems};
use super::{
    Credentials, DEFAULT_PASSWORD_COMMAND_TTL, DOCKER_HUB_URL, DirectRegistries, Overrides,
    PasswordCommand, UpstreamConfig,
};
use std::path::PathBuf;
use std::time::Duration;

/// The top-level timeouts and rates: the defaults of every upstream and direct registry.
pub(crate) struct UpstreamDefaults {
    pub(crate) connect_timeout: Duration,
    pub(crate) header_timeout: Duration,
    pub(crate) body_idle_timeout: Duration,
    pub(crate) min_transfer_rate: u64,
    pub(crate) rate_window: Duration,
    pub(crate) ratelimit_reserve: u64,
}

impl UpstreamDefaults {
    pub(crate) fn parse(file: &ConfigFile, problems: &mut Problems) -> Self {
        UpstreamDefaults {
            connect_timeout: CONNECT_TIMEOUT.parse(file.connect_timeout.as_ref(), problems),
            header_timeout: HEADER_TIMEOUT.parse(file.header_timeout.as_ref(), problems),
            body_idle_timeout: BODY_IDLE_TIMEOUT.parse(file.body_idle_timeout.as_ref(), problems),
            min_transfer_rate: MIN_TRANSFER_RATE.parse(file.min_transfer_rate.as_ref(), problems),
            rate_window: RATE_WINDOW.parse(file.rate_window.as_ref(), problems),
            ratelimit_reserve: u64::from(
                RATELIMIT_RESERVE.parse(file.ratelimit_reserve.as_ref(), problems),
            ),
        }
    }
}

/// The upstreams in priority order, and what each names outside the config file (same
/// order). Flags replace the file's tables; with neither, Docker Hub.
pub(crate) fn parse(
    file: &ConfigFile,
    overrides: &Overrides,
    default_registry: &str,
    defaults: &UpstreamDefaults,
    problems: &mut Problems,
) -> (Vec<UpstreamConfig>, Vec<UpstreamSecrets>) {
    let mut upstreams = Vec::new();
    let mut secrets = Vec::new();
    for (key, upstream) in upstream_tables(file, overrides, problems) {
        let (config, named) = parse_one(&key, &upstream, default_registry, defaults, problems);
        // An upstream without a valid URL makes the settings an error, but its files are
        // still checked so that every problem is reported at once.
        secrets.push(named);
        upstreams.extend(config);
    }
    check_groups(&upstreams, problems);
    let mut seen = std::collections::HashSet::new();
    for upstream in &upstreams {
        if !seen.insert(upstream.name.clone()) {
            problems.add(
                "upstream.name",
                &upstream.name,
                "two upstreams share this name; set `name` on one of them",
            );
        }
    }
    (upstreams, secrets)
}

/// The upstream tables to build, each with the key its problems are reported under.
fn upstream_tables(
    file: &ConfigFile,
    overrides: &Overrides,
    problems: &mut Problems,
) -> Vec<(String, UpstreamFile)> {
    if overrides.upstreams.is_empty() && overrides.upstream_groups.is_empty() {
        if file.upstreams.is_empty() {
            let docker_hub = UpstreamFile {
                url: Some(DOCKER_HUB_URL.to_owned()),
                name: Some("docker-hub".to_owned()),
                ..Default::default()
            };
            return vec![("upstream[default]".to_owned(), docker_hub)];
        }
        return file
            .upstreams
            .iter()
            .enumerate()
            .map(|(i, u)| (format!("upstream[{i}]"), u.clone()))
            .collect();
    }
    let mut tables = Vec::new();
    for (i, given) in overrides.upstream_groups.iter().enumerate() {
        let key = format!("--upstream-group[{i}]");
        let Some((group, urls)) = given.split_once('=') else {
            problems.add(&key, given, "expected NAME=URL,URL,...");
            continue;
        };
        for url in urls.split(',').filter(|u| !u.trim().is_empty()) {
            let member = UpstreamFile {
                url: Some(url.trim().to_owned()),
                group: Some(group.to_owned()),
                ..Default::default()
            };
            tables.push((key.clone(), member));
        }
    }
    for (i, given) in overrides.upstreams.iter().enumerate() {
        // `REGISTRY=URL` names the registry; a bare URL serves the default one.
        let (registry, url) = match given.split_once('=') {
            Some((registry, url)) if !registry.contains("://") => (Some(registry.to_owned()), url),
            _ => (None, given.as_str()),
        };
        let upstream = UpstreamFile {
            url: Some(url.to_owned()),
            registry,
            ..Default::default()
        };
        tables.push((format!("--upstream[{i}]"), upstream));
    }
    tables
}

/// One upstream table (`None` when its URL is missing or invalid, reported), and what it
/// names outside the config file.
fn parse_one(
    key: &str,
    upstream: &UpstreamFile,
    default_registry: &str,
    defaults: &UpstreamDefaults,
    problems: &mut Problems,
) -> (Option<UpstreamConfig>, UpstreamSecrets) {
    let field = |name: &str| format!("{key}.{name}");
    let url = parse_url(&field("url"), upstream.url.as_deref(), problems);
    let mut timeout = |name: &str, value: Option<&String>, default: Duration| {
        problems.duration(&field(name), value, POSITIVE_DURATION, default)
    };
    let connect_timeout = timeout(
        "connect_timeout",
        upstream.connect_timeout.as_ref(),
        defaults.connect_timeout,
    );
    let header_timeout = timeout(
        "header_timeout",
        upstream.header_timeout.as_ref(),
        defaults.header_timeout,
    );
    let body_idle_timeout = timeout(
        "body_idle_timeout",
        upstream.body_idle_timeout.as_ref(),
        defaults.body_idle_timeout,
    );
    let min_transfer_rate = problems.size(
        &field("min_transfer_rate"),
        upstream.min_transfer_rate.as_ref(),
        defaults.min_transfer_rate,
    );
    let (credentials, password) = credentials(key, upstream, problems);
    let registry = crate::oci::registry::canonical_registry(
        upstream.registry.as_deref().unwrap_or(default_registry),
    );
    if registry.is_empty() || registry.contains(['/', ' ']) {
        problems.add(
            &field("registry"),
            &registry,
            "expected a registry host name such as ghcr.io",
        );
    }
    if let Some(group) = &upstream.group
        && (group.is_empty()
            || !group
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        problems.add(
            &field("group"),
            group,
            "expected a name of letters, digits, '-', '_' or '.'",
        );
    }
    let named = UpstreamSecrets {
        key: key.to_owned(),
        ca_file: upstream.ca_file.as_ref().map(PathBuf::from),
        password,
    };
    let Some(url) = url else {
        return (None, named);
    };
    let config = UpstreamConfig {
        group: upstream.group.clone(),
        name: upstream
            .name
            .clone()
            .unwrap_or_else(|| default_upstream_name(&url)),
        url,
        registry,
        connect_timeout,
        header_timeout,
        body_idle_timeout,
        min_transfer_rate,
        rate_window: defaults.rate_window,
        credentials,
        // Read by `app::config_files`, from `UpstreamSecrets::ca_file` or the top-level one.
        ca: None,
        https_redirects_only: false,
        public_addresses_only: upstream.public_addresses_only.unwrap_or(false),
        ratelimit_reserve: upstream
            .ratelimit_reserve
            .map_or(defaults.ratelimit_reserve, u64::from),
    };
    (Some(config), named)
}

fn parse_url(key: &str, text: Option<&str>, problems: &mut Problems) -> Option<reqwest::Url> {
    let Some(text) = text else {
        problems.add(key, "", "every upstream needs a url");
        return None;
    };
    let shown = without_userinfo(text);
    match reqwest::Url::parse(text.trim_end_matches('/')) {
        Ok(url) if !url.username().is_empty() || url.password().is_some() => {
            problems.add(
                key,
                &shown,
                "must not carry credentials (user:password@): use the upstream's username with \
                 password_env, password_file or password_command",
            );
            None
        }
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host_str().is_some() => {
            if url.query().is_some() || url.fragment().is_some() {
                problems.add(key, &shown, "must not have a query or fragment");
            }
            Some(url)
        }
        Ok(_) => {
            problems.add(key, &shown, "scheme must be http or https, with a host");
            None
        }
        Err(e) => {
            problems.add(key, &shown, format!("not a URL ({e})"));
            None
        }
    }
}

/// `text` with anything between `://` and the last `@` of its authority replaced by `***`, so
/// a URL's user and password never reach a message.
fn without_userinfo(text: &str) -> String {
    let Some((scheme, rest)) = text.split_once("://") else {
        return text.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => text.to_owned(),
    }
}

/// The credentials written in the config (a password, or a helper command run at first
/// use), or the username and where its password is kept (read by `app::config_files`).
fn credentials(
    key: &str,
    upstream: &UpstreamFile,
    problems: &mut Problems,
) -> (Option<Credentials>, Option<(String, SecretSource)>) {
    let field = |name: &str| format!("{key}.{name}");
    let command_ttl = problems.duration(
        &field("password_command_ttl"),
        upstream.password_command_ttl.as_ref(),
        ANY_DURATION,
        DEFAULT_PASSWORD_COMMAND_TTL,
    );
    let sources = [
        &upstream.password,
        &upstream.password_env,
        &upstream.password_file,
        &upstream.password_command,
    ];
    let given = sources.iter().filter(|s| s.is_some()).count();
    let Some(username) = upstream.username.clone() else {
        if given > 0 {
            problems.add(&field("username"), "", "a password source needs a username");
        }
        return (None, None);
    };
    if given == 0 {
        problems.add(
            &field("username"),
            &username,
            "needs one of password, password_env, password_file or password_command",
        );
        return (None, None);
    }
    if given > 1 {
        problems.add(
            &field("password"),
            "<redacted>",
            "set only one of password, password_env, password_file, password_command",
        );
        return (None, None);
    }
    if let Some(password) = &upstream.password {
        return (Some(Credentials::fixed(&username, password)), None);
    }
    if let Some(command) = &upstream.password_command {
        let ttl = command_ttl;
        let credentials = Credentials {
            username,
            // Run lazily, at first use; the empty password marks "from the command".
            password: String::new(),
            command: Some(std::sync::Arc::new(PasswordCommand::new(command, ttl))),
        };
        return (Some(credentials), None);
    }
    let source = match (&upstream.password_env, &upstream.password_file) {
        (Some(variable), _) => SecretSource::Variable(variable.clone()),
        (None, Some(path)) => SecretSource::File(PathBuf::from(path)),
        (None, None) => return (None, None),
    };
    (None, Some((username, source)))
}

/// A group is one slot in its registry's priority order: its members must be consecutive
/// and serve the same registry.
fn check_groups(upstreams: &[UpstreamConfig], problems: &mut Problems) {
    let mut closed_groups: Vec<&str> = Vec::new();
    for (i, upstream) in upstreams.iter().enumerate() {
        let Some(group) = upstream.group.as_deref() else {
            continue;
        };
        let continues = i > 0 && upstreams[i - 1].group.as_deref() == Some(group);
        if continues && upstreams[i - 1].registry != upstream.registry {
            problems.add(
                "upstream.group",
                group,
                "all members of a group must serve the same registry",
            );
        }
        if !continues {
            if closed_groups.contains(&group) {
                problems.add(
                    "upstream.group",
                    group,
                    "the members of a group must be consecutive [[upstream]] tables",
                );
            }
            closed_groups.push(group);
        }
    }
}

/// Which unconfigured registries get a direct upstream (`--direct-registry` replaces the
/// file's list); `None` when none do.
pub(crate) fn direct_registries(
    file: &ConfigFile,
    overrides: &Overrides,
    defaults: &UpstreamDefaults,
    problems: &mut Problems,
) -> Option<DirectRegistries> {
    let (key, given) = if overrides.direct_registries.is_empty() {
        (
            "direct_registries",
            file.direct_registries.clone().unwrap_or_default(),
        )
    } else {
        ("--direct-registry", overrides.direct_registries.clone())
    };
    let mut patterns = Vec::new();
    for text in &given {
        match crate::oci::registry::RegistryPattern::parse(text) {
            Ok(pattern) => patterns.push(pattern),
            Err(reason) => problems.add(key, text, reason.to_string()),
        }
    }
    (!patterns.is_empty()).then(|| DirectRegistries {
        patterns,
        connect_timeout: defaults.connect_timeout,
        header_timeout: defaults.header_timeout,
        body_idle_timeout: defaults.body_idle_timeout,
        min_transfer_rate: defaults.min_transfer_rate,
        rate_window: defaults.rate_window,
        ratelimit_reserve: defaults.ratelimit_reserve,
        // Read by `app::config_files` from the top-level `ca_file`.
        ca: None,
        private_addresses: file.direct_registries_private_addresses.unwrap_or(false),
    })
}

fn default_upstream_name(url: &reqwest::Url) -> String {
    match (url.host_str(), url.port()) {
        (Some(host), Some(port)) => format!("{host}:{port}"),
        (Some(host), None) => host.to_owned(),
        _ => url.to_string(),
    }
}
