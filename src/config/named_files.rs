//! The files and secrets a configuration names but `config` does not read: TLS and
//! client-auth files, CA bundles, the admin token, passwords and the shared store's secret
//! from variables or files. `app::config_files` reads them and reports what it cannot.

use std::path::PathBuf;

/// Everything the settings name outside the config file, each with the key it came from.
#[derive(Debug, Default, Clone)]
pub(crate) struct NamedFiles {
    /// Certificate chain and key for the registry listener (checked by loading them).
    pub(crate) tls: Option<(PathBuf, PathBuf)>,
    pub(crate) admin_token_file: Option<PathBuf>,
    pub(crate) client_auth: Option<ClientAuthFiles>,
    /// The top-level `ca_file`: the default for upstreams and direct registries.
    pub(crate) ca_file: Option<PathBuf>,
    /// One entry per configured upstream, in the order of `Config::upstreams`.
    pub(crate) upstreams: Vec<UpstreamSecrets>,
    pub(crate) shared_store_secret: Option<(&'static str, SecretSource)>,
}

impl NamedFiles {
    /// Whether anything has to be read before the settings are complete.
    pub(crate) fn is_empty(&self) -> bool {
        self.tls.is_none()
            && self.admin_token_file.is_none()
            && self.client_auth.is_none()
            && self.ca_file.is_none()
            && self.shared_store_secret.is_none()
            && self
                .upstreams
                .iter()
                .all(|u| u.ca_file.is_none() && u.password.is_none())
    }
}

/// The client-authentication files and the per-user registry rules (canonical names).
#[derive(Debug, Clone)]
pub(crate) struct ClientAuthFiles {
    pub(crate) tokens_file: Option<PathBuf>,
    pub(crate) users_file: Option<PathBuf>,
    pub(crate) registry_rules: Vec<(String, Vec<String>)>,
}

/// What one upstream names outside the config file.
#[derive(Debug, Clone)]
pub(crate) struct UpstreamSecrets {
    /// The key problems are reported under, e.g. `upstream[1]`.
    pub(crate) key: String,
    pub(crate) ca_file: Option<PathBuf>,
    /// The username and where its password is kept.
    pub(crate) password: Option<(String, SecretSource)>,
}

/// Where a secret is kept when it is not written in the config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SecretSource {
    /// An environment variable (`*_env`); unset or empty is a problem.
    Variable(String),
    /// A file (`*_file`), its trailing newline dropped.
    File(PathBuf),
}
