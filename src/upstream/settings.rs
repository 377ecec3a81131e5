//! What one upstream is configured with: its URL, registry, timeouts, credentials (with a
//! credential helper's cached output), extra CA roots and reach; and the settings a direct
//! registry gets on first use. Built by `config`, used by the upstream clients.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DOCKER_HUB_URL: &str = "https://registry-1.docker.io";

/// Which unconfigured registries get a direct upstream, and the settings it gets.
#[derive(Debug, Clone)]
pub struct DirectRegistries {
    pub patterns: Vec<crate::oci::registry::RegistryPattern>,
    pub connect_timeout: Duration,
    pub header_timeout: Duration,
    pub body_idle_timeout: Duration,
    pub min_transfer_rate: u64,
    pub rate_window: Duration,
    /// Remaining pulls at or below which a direct registry is asked for manifests last.
    pub ratelimit_reserve: u64,
    pub ca: Option<UpstreamCa>,
    /// Let direct registries reach loopback, private and link-local addresses
    /// (`direct_registries_private_addresses`; off by default: clients name these registries).
    pub private_addresses: bool,
}

impl DirectRegistries {
    /// The anonymous upstream `https://<registry>` for `registry` (a canonical host[:port]
    /// that one of the patterns allows).
    pub(crate) fn upstream_for(&self, registry: &str) -> Result<UpstreamConfig, SetupError> {
        let base = if registry == crate::oci::registry::DOCKER_HUB {
            DOCKER_HUB_URL.to_owned()
        } else {
            format!("https://{registry}")
        };
        let url = reqwest::Url::parse(&base).map_err(|e| SetupError::BadRegistryUrl {
            registry: registry.to_owned(),
            reason: e.to_string(),
        })?;
        Ok(UpstreamConfig {
            name: registry.to_owned(),
            url,
            registry: registry.to_owned(),
            connect_timeout: self.connect_timeout,
            header_timeout: self.header_timeout,
            body_idle_timeout: self.body_idle_timeout,
            min_transfer_rate: self.min_transfer_rate,
            rate_window: self.rate_window,
            credentials: None,
            ca: self.ca.clone(),
            https_redirects_only: true,
            public_addresses_only: !self.private_addresses,
            group: None,
            ratelimit_reserve: self.ratelimit_reserve,
        })
    }
}

/// Why an upstream (or a direct registry) could not be set up at start.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SetupError {
    /// A registry name that makes no upstream URL (refused before any request).
    #[error("{registry:?} does not make an upstream URL: {reason}")]
    BadRegistryUrl { registry: String, reason: String },
    /// reqwest could not build the client (TLS roots, resolver).
    #[error("cannot build the HTTP client for {upstream}: {cause}")]
    HttpClient {
        upstream: String,
        #[source]
        cause: std::sync::Arc<reqwest::Error>,
    },
}

/// Why a CA bundle named by the configuration could not be used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CaError {
    #[error("cannot read: {0}")]
    Read(#[source] std::sync::Arc<std::io::Error>),
    #[error("not a PEM certificate bundle ({0})")]
    NotPem(#[source] std::sync::Arc<reqwest::Error>),
    #[error("holds no PEM certificate")]
    Empty,
}

/// Extra trusted CA certificates for an upstream, read from a PEM bundle at start.
#[derive(Clone)]
pub struct UpstreamCa {
    pub(crate) path: PathBuf,
    pub(crate) certificates: Vec<reqwest::Certificate>,
}

impl UpstreamCa {
    pub fn load(path: &Path) -> Result<Self, CaError> {
        let pem = std::fs::read(path).map_err(|e| CaError::Read(std::sync::Arc::new(e)))?;
        let certificates = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| CaError::NotPem(std::sync::Arc::new(e)))?;
        if certificates.is_empty() {
            return Err(CaError::Empty);
        }
        Ok(UpstreamCa {
            path: path.to_owned(),
            certificates,
        })
    }
}

impl fmt::Debug for UpstreamCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "UpstreamCa({}, {} certificate(s))",
            self.path.display(),
            self.certificates.len()
        )
    }
}

#[derive(Clone)]
pub struct UpstreamConfig {
    /// Short name used in logs and errors (default: the URL's host:port).
    pub(crate) name: String,
    /// Base URL without a trailing slash, e.g. `https://registry-1.docker.io`.
    pub url: reqwest::Url,
    /// The registry it serves (`docker.io`, `ghcr.io`, ...), canonical form.
    pub registry: String,
    pub connect_timeout: Duration,
    pub header_timeout: Duration,
    pub body_idle_timeout: Duration,
    /// Minimum average body rate in bytes/s over `rate_window`; 0 disables.
    pub min_transfer_rate: u64,
    pub rate_window: Duration,
    pub credentials: Option<Credentials>,
    /// CA certificates trusted for this upstream in addition to the system's.
    pub(crate) ca: Option<UpstreamCa>,
    /// Follow redirects to https URLs only (direct registries, which clients name).
    pub https_redirects_only: bool,
    /// Connect only to public addresses, checked after resolution (and for the token realm
    /// and redirects): on for direct registries, optional for configured ones.
    pub(crate) public_addresses_only: bool,
    /// The group this upstream belongs to: consecutive members share one priority slot.
    pub group: Option<String>,
    /// While its announced remaining quota is at or below this, manifest GETs (pulls) ask it
    /// after the other upstreams.
    pub ratelimit_reserve: u64,
}

/// Basic credentials for an upstream. The password never appears in `Debug` output.
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    /// A fixed password (from the file, an environment variable or a file); empty when a
    /// command supplies it.
    pub password: String,
    /// A credential-helper command whose output is the password (e.g. `aws ecr
    /// get-login-password`), re-run when its output is older than its TTL or refused.
    pub command: Option<std::sync::Arc<PasswordCommand>>,
}

/// Runs a credential helper and caches its output.
pub struct PasswordCommand {
    pub(crate) command: String,
    pub(crate) ttl: Duration,
    cached: std::sync::Mutex<Option<(String, std::time::Instant)>>,
}

/// Why a credential helper gave no password.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PasswordError {
    #[error("credential helper did not finish within {0:?}")]
    Timeout(Duration),
    #[error("cannot run the credential helper: {0}")]
    Spawn(#[source] std::sync::Arc<std::io::Error>),
    #[error("credential helper failed ({0})")]
    Failed(std::process::ExitStatus),
    #[error("credential helper printed nothing")]
    Empty,
}

/// Longest a credential helper may run.
const PASSWORD_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

impl PasswordCommand {
    pub fn new(command: &str, ttl: Duration) -> Self {
        PasswordCommand {
            command: command.to_owned(),
            ttl,
            cached: std::sync::Mutex::new(None),
        }
    }

    /// The cached output, or a fresh run of the command (`sh -c`, 30 s at most).
    pub async fn password(&self) -> Result<String, PasswordError> {
        if let Some((password, at)) = self
            .cached
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            && at.elapsed() < self.ttl
        {
            return Ok(password.clone());
        }
        let run = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(&self.command)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(PASSWORD_COMMAND_TIMEOUT, run)
            .await
            .map_err(|_| PasswordError::Timeout(PASSWORD_COMMAND_TIMEOUT))?
            .map_err(|e| PasswordError::Spawn(std::sync::Arc::new(e)))?;
        if !output.status.success() {
            return Err(PasswordError::Failed(output.status));
        }
        let password = String::from_utf8_lossy(&output.stdout)
            .trim_end_matches(['\n', '\r'])
            .to_owned();
        if password.is_empty() {
            return Err(PasswordError::Empty);
        }
        *self.cached.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((password.clone(), std::time::Instant::now()));
        Ok(password)
    }

    /// Forgets the cached output (after the registry refused it).
    pub(crate) fn invalidate(&self) {
        *self.cached.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

impl Credentials {
    pub fn fixed(username: &str, password: &str) -> Self {
        Credentials {
            username: username.to_owned(),
            password: password.to_owned(),
            command: None,
        }
    }

    /// The password to send now.
    pub(crate) async fn current_password(&self) -> Result<String, PasswordError> {
        match &self.command {
            None => Ok(self.password.clone()),
            Some(command) => command.password().await,
        }
    }

    /// After a refusal: a helper's cached output is dropped so the next use re-runs it.
    /// Returns whether there was anything to refresh.
    pub(crate) fn refresh(&self) -> bool {
        match &self.command {
            None => false,
            Some(command) => {
                command.invalidate();
                true
            }
        }
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Credentials {{ username: {:?}, password: <redacted> }}",
            self.username
        )
    }
}

impl fmt::Debug for UpstreamConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamConfig")
            .field("name", &self.name)
            .field("url", &self.url.as_str())
            .field("registry", &self.registry)
            .field("connect_timeout", &self.connect_timeout)
            .field("header_timeout", &self.header_timeout)
            .field("body_idle_timeout", &self.body_idle_timeout)
            .field("min_transfer_rate", &self.min_transfer_rate)
            .field("rate_window", &self.rate_window)
            .field("credentials", &self.credentials)
            .field("ca", &self.ca)
            .field("https_redirects_only", &self.https_redirects_only)
            .field("public_addresses_only", &self.public_addresses_only)
            .field("group", &self.group)
            .field("ratelimit_reserve", &self.ratelimit_reserve)
            .finish()
    }
}
