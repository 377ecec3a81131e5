//! Loading a configuration for a run: reads the config file, has `config` validate it, then
//! reads the files and secrets it names (TLS, client auth, CA bundles, admin token,
//! passwords), reporting every problem of both steps at once.

use crate::config::file::ConfigFile;
use crate::config::{
    AdminToken, ClientAuthFiles, Config, ConfigErrors, ConfigProblem, NamedFiles, Overrides,
    SecretSource,
};
use crate::server::client_auth::ClientAuth;
use crate::upstream::settings::{Credentials, UpstreamCa};
use std::path::Path;
use std::sync::Arc;

/// Reads `path` (if given), applies `overrides`, validates everything and reads the files
/// the settings name, returning every problem found rather than the first.
pub fn load_config(path: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigErrors> {
    let file = match path {
        None => ConfigFile::default(),
        Some(path) => read_config_file(path).map_err(|problem| ConfigErrors(vec![problem]))?,
    };
    let parsed = Config::parse(&file, overrides);
    let mut problems = Vec::new();
    let loaded = read_named_files(&parsed.named_files, &mut problems);
    match parsed.settings {
        Err(ConfigErrors(mut settings_problems)) => {
            settings_problems.extend(problems);
            Err(ConfigErrors(settings_problems))
        }
        Ok(_) if !problems.is_empty() => Err(ConfigErrors(problems)),
        Ok(mut config) => {
            loaded.fill_in(&mut config);
            Ok(config)
        }
    }
}

fn read_config_file(path: &Path) -> Result<ConfigFile, ConfigProblem> {
    let problem = |reason: String| ConfigProblem {
        key: "--config".into(),
        value: path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| problem(format!("cannot read: {e}")))?;
    toml::from_str::<ConfigFile>(&text).map_err(|e| problem(toml_error_without_values(&e, &text)))
}

/// A TOML error without the file's text: toml quotes the offending line, and serde the
/// offending value, either of which may be a secret (`pasword = "..."`, `password = 1234`).
/// Says where (line and column), and the message with any value in it replaced by `…`.
fn toml_error_without_values(error: &toml::de::Error, text: &str) -> String {
    let at = error
        .span()
        .map(|span| {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!(" at line {line}, column {column}")
        })
        .unwrap_or_default();
    let message = error.message().trim();
    let message = if message.starts_with("invalid") {
        without_quoted_values(message)
    } else {
        message.to_owned()
    };
    format!("not valid ferry TOML{at}: {message}")
}

/// `text` with every `...` and "..." span replaced by `…` (serde's way of quoting values).
fn without_quoted_values(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut quote: Option<char> = None;
    for c in text.chars() {
        match quote {
            Some(open) if c == open => {
                out.push('…');
                out.push(c);
                quote = None;
            }
            Some(_) => {}
            None => {
                out.push(c);
                if c == '`' || c == '"' {
                    quote = Some(c);
                }
            }
        }
    }
    out
}

/// What the named files hold, ready to be filled into the validated settings.
#[derive(Default)]
struct LoadedFiles {
    admin_token: Option<AdminToken>,
    client_auth: Option<Arc<ClientAuth>>,
    default_ca: Option<UpstreamCa>,
    /// Per configured upstream, in order: its own CA bundle and password (if named).
    upstreams: Vec<(Option<UpstreamCa>, Option<Credentials>)>,
    shared_store_secret: Option<String>,
}

impl LoadedFiles {
    /// Only for valid settings: every upstream then has a URL, so `config.upstreams` and
    /// `self.upstreams` (one per table) pair up in order.
    fn fill_in(self, config: &mut Config) {
        config.admin_token = self.admin_token;
        config.client_auth = self.client_auth;
        for (upstream, (ca, credentials)) in config.upstreams.iter_mut().zip(self.upstreams) {
            upstream.ca = ca.or_else(|| self.default_ca.clone());
            if credentials.is_some() {
                upstream.credentials = credentials;
            }
        }
        if let Some(direct) = &mut config.direct {
            direct.ca = self.default_ca;
        }
        if let (Some(store), Some(secret)) = (&mut config.shared_store, self.shared_store_secret) {
            store.secret_access_key = Some(secret);
        }
    }
}

fn read_named_files(named: &NamedFiles, problems: &mut Vec<ConfigProblem>) -> LoadedFiles {
    if let Some((cert, key)) = &named.tls
        && let Err(reason) = crate::server::tls::ReloadingTls::load(cert, key)
    {
        report(problems, "tls_cert_file / tls_key_file", cert, reason);
    }
    let admin_token = match admin_token(named.admin_token_file.as_deref()) {
        Ok(token) => token,
        Err(reason) => {
            let path = named.admin_token_file.as_deref().unwrap_or(Path::new(""));
            report(problems, "admin_token_file", path, reason);
            None
        }
    };
    let client_auth = named
        .client_auth
        .as_ref()
        .and_then(|files| client_auth(files, problems));
    let default_ca = named
        .ca_file
        .as_deref()
        .and_then(|path| load_ca("ca_file", path, problems));
    let mut upstreams = Vec::new();
    for upstream in &named.upstreams {
        let ca = upstream
            .ca_file
            .as_deref()
            .and_then(|path| load_ca(&format!("{}.ca_file", upstream.key), path, problems));
        let credentials = match &upstream.password {
            None => None,
            Some((username, source)) => match read_secret(source) {
                Ok(password) => Some(Credentials::fixed(username, &password)),
                Err((field, value, reason)) => {
                    report(
                        problems,
                        &format!("{}.{field}", upstream.key),
                        value,
                        reason,
                    );
                    None
                }
            },
        };
        upstreams.push((ca, credentials));
    }
    let shared_store_secret = named
        .shared_store_secret
        .as_ref()
        .and_then(|(key, source)| match read_secret(source) {
            Ok(secret) => Some(secret),
            Err((_, value, reason)) => {
                report(problems, key, value, reason);
                None
            }
        });
    LoadedFiles {
        admin_token,
        client_auth,
        default_ca,
        upstreams,
        shared_store_secret,
    }
}

/// Adds the problem `key = value: reason`.
fn report(
    problems: &mut Vec<ConfigProblem>,
    key: &str,
    value: impl AsRef<std::ffi::OsStr>,
    reason: impl std::fmt::Display,
) {
    problems.push(ConfigProblem {
        key: key.to_owned(),
        value: value.as_ref().to_string_lossy().into_owned(),
        reason: reason.to_string(),
    });
}

fn load_ca(key: &str, path: &Path, problems: &mut Vec<ConfigProblem>) -> Option<UpstreamCa> {
    UpstreamCa::load(path)
        .map_err(|reason| report(problems, key, path, reason))
        .ok()
}

/// `FERRY_ADMIN_TOKEN` if set and not empty, else the file's first line.
fn admin_token(file: Option<&Path>) -> Result<Option<AdminToken>, SecretFileError> {
    if let Ok(token) = std::env::var("FERRY_ADMIN_TOKEN")
        && !token.trim().is_empty()
    {
        return Ok(Some(AdminToken(token.trim().to_owned())));
    }
    let Some(path) = file else { return Ok(None) };
    match std::fs::read_to_string(path) {
        Ok(text) if !text.trim().is_empty() => Ok(Some(AdminToken(text.trim().to_owned()))),
        Ok(_) => Err(SecretFileError::Empty),
        Err(e) => Err(SecretFileError::Read(e)),
    }
}

/// Why a file holding a secret gave none.
#[derive(Debug, thiserror::Error)]
enum SecretFileError {
    #[error("the file is empty")]
    Empty,
    #[error("cannot read: {0}")]
    Read(#[source] std::io::Error),
}

/// The users and tokens, with each user's `client_access` rules applied.
fn client_auth(
    files: &ClientAuthFiles,
    problems: &mut Vec<ConfigProblem>,
) -> Option<Arc<ClientAuth>> {
    let mut auth = match ClientAuth::load(files.tokens_file.as_deref(), files.users_file.as_deref())
    {
        Ok(auth) => auth,
        Err(reason) => {
            let path = files.users_file.as_ref().or(files.tokens_file.as_ref());
            let value = path.map(|p| p.as_os_str()).unwrap_or_default();
            report(
                problems,
                "auth_users_file / auth_tokens_file",
                value,
                reason,
            );
            return None;
        }
    };
    for (user, registries) in &files.registry_rules {
        if let Err(reason) = auth.restrict(user, registries.clone()) {
            report(problems, &format!("client_access.{user}"), user, reason);
        }
    }
    Some(Arc::new(auth))
}

/// A secret from a variable or a file: `Err((key suffix, value, reason))` when it cannot be.
fn read_secret(source: &SecretSource) -> Result<String, (&'static str, String, String)> {
    match source {
        SecretSource::Variable(name) => match std::env::var(name) {
            Ok(value) if !value.is_empty() => Ok(value),
            _ => Err((
                "password_env",
                name.clone(),
                "environment variable is unset or empty".into(),
            )),
        },
        SecretSource::File(path) => match std::fs::read_to_string(path) {
            Ok(value) => Ok(value.trim_end_matches(['\n', '\r']).to_owned()),
            Err(e) => Err((
                "password_file",
                path.display().to_string(),
                format!("cannot read: {e}"),
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `load_config` on `text` written to a config file in `dir`.
    fn load(dir: &Path, text: &str) -> Result<Config, ConfigErrors> {
        let path = dir.join("ferry.toml");
        std::fs::write(&path, text).unwrap();
        load_config(Some(&path), &Overrides::default())
    }

    #[test]
    fn every_unreadable_file_is_reported_with_the_value_problems() {
        let dir = tempfile::tempdir().unwrap();
        let not_pem = dir.path().join("not.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        let text = format!(
            r#"
            ca_file = "{missing}"
            direct_registries = ["quay.io", "http://x"]
            tls_cert_file = "{missing}"
            tls_key_file = "{missing}"
            [[upstream]]
            url = "https://registry.corp.example"
            ca_file = "{not_pem}"
            username = "ci"
            password_file = "{missing}"
            [[upstream]]
            url = "ftp://not-http"
            ca_file = "{missing}"
            "#,
            missing = dir.path().join("missing.pem").display(),
            not_pem = not_pem.display(),
        );
        let err = load(dir.path(), &text).unwrap_err();
        let keys: Vec<_> = err.0.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "upstream[1].url",
                "direct_registries",
                "tls_cert_file / tls_key_file",
                "ca_file",
                "upstream[0].ca_file",
                "upstream[0].password_file",
                "upstream[1].ca_file",
            ],
            "{err}"
        );
    }

    #[test]
    fn named_files_fill_in_the_settings() {
        let dir = tempfile::tempdir().unwrap();
        let password = dir.path().join("password");
        std::fs::write(&password, "s3cret\n").unwrap();
        let token = dir.path().join("admin-token");
        std::fs::write(&token, "admin-token-value\n").unwrap();
        let text = format!(
            r#"
            admin_token_file = "{token}"
            direct_registries = ["quay.io"]
            [[upstream]]
            url = "https://registry.corp.example"
            username = "ci"
            password_file = "{password}"
            "#,
            token = token.display(),
            password = password.display(),
        );
        let config = load(dir.path(), &text).unwrap();
        let credentials = config.upstreams[0].credentials.as_ref().unwrap();
        assert_eq!(
            (credentials.username.as_str(), credentials.password.as_str()),
            ("ci", "s3cret")
        );
        assert_eq!(
            config.admin_token,
            Some(AdminToken("admin-token-value".into()))
        );
        assert!(config.direct.is_some());
        let rendered = config.to_redacted_toml();
        assert!(!rendered.contains("s3cret") && !rendered.contains("admin-token-value"));
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
        let config = load(dir.path(), &text).unwrap();
        let rules = config.client_auth.as_ref().unwrap().registry_rules();
        assert_eq!(rules["ci"], ["ghcr.io", "docker.io"]);
        let err = load(dir.path(), &format!("{text}ghost = [\"ghcr.io\"]\n")).unwrap_err();
        assert_eq!(err.0[0].key, "client_access.ghost", "{err}");
        let err = load(dir.path(), &text.replace("GHCR.io", "not a host")).unwrap_err();
        assert_eq!(err.0[0].key, "client_access.ci", "{err}");
        let err = load(dir.path(), "[client_access]\nci = []\n").unwrap_err();
        assert_eq!(err.0[0].key, "client_access", "{err}");
    }

    #[test]
    fn an_unreadable_config_file_is_one_problem() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("absent.toml");
        let err = load_config(Some(&missing), &Overrides::default()).unwrap_err();
        assert_eq!(err.0.len(), 1);
        assert_eq!(err.0[0].key, "--config");
        let err = load(dir.path(), "lisen = \"x\"").unwrap_err();
        assert!(err.0[0].reason.starts_with("not valid ferry TOML"), "{err}");
    }
}
