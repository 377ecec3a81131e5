//! Optional client authentication for shared caches: static bearer tokens and basic users,
//! read from files, and per-user registry access rules. Secrets are kept only as sha256
//! hashes and compared in constant time. A refused request gets 401 with `WWW-Authenticate:
//! Basic`, so Docker, containerd, podman and skopeo send the credentials configured for it.

use base64::Engine as _;
use http::HeaderMap;
use http::header::AUTHORIZATION;
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::path::Path;

pub(crate) const REALM: &str = "ferry";

#[derive(Default, Clone)]
pub struct ClientAuth {
    tokens: Vec<[u8; 32]>,
    /// user -> sha256(password)
    users: HashMap<String, [u8; 32]>,
    /// user -> the only registries (canonical names) that user may pull from; users
    /// without an entry, and token holders, may pull from every registry.
    registry_rules: HashMap<String, Vec<String>>,
    /// The files these came from (shown by `check-config`; paths, not secrets).
    tokens_file: Option<std::path::PathBuf>,
    users_file: Option<std::path::PathBuf>,
}

/// Who a request authenticated as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A static token (as a bearer token or as a basic password).
    Token,
    User(String),
}

impl std::fmt::Display for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Principal::Token => f.write_str("token holder"),
            Principal::User(user) => write!(f, "user {user:?}"),
        }
    }
}

impl std::fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ClientAuth {{ {} token(s), {} user(s) }}",
            self.tokens.len(),
            self.users.len()
        )
    }
}

fn hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Compares two hashes without an early exit.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Why the client credentials files could not be used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientAuthError {
    #[error("cannot read {}: {cause}", .path.display())]
    Read {
        path: std::path::PathBuf,
        #[source]
        cause: std::sync::Arc<std::io::Error>,
    },
    #[error("{} line {line}: {reason}", .path.display())]
    BadLine {
        path: std::path::PathBuf,
        line: usize,
        reason: &'static str,
    },
    #[error("client authentication is configured but no token or user was found")]
    Empty,
    #[error("user {0:?} is not in auth_users_file")]
    UnknownUser(String),
}

impl ClientAuth {
    /// The tokens file and the users file this was loaded from.
    pub fn files(&self) -> (Option<&Path>, Option<&Path>) {
        (self.tokens_file.as_deref(), self.users_file.as_deref())
    }

    /// Reads a tokens file (one token per line) and a users file (`user:password` or
    /// `user:sha256:<hex of sha256(password)>` per line); `#` starts a comment.
    pub fn load(
        tokens_file: Option<&Path>,
        users_file: Option<&Path>,
    ) -> Result<ClientAuth, ClientAuthError> {
        let mut auth = ClientAuth {
            tokens_file: tokens_file.map(Path::to_path_buf),
            users_file: users_file.map(Path::to_path_buf),
            ..ClientAuth::default()
        };
        let lines = |path: &Path| -> Result<Vec<String>, ClientAuthError> {
            let text = std::fs::read_to_string(path).map_err(|e| ClientAuthError::Read {
                path: path.to_path_buf(),
                cause: std::sync::Arc::new(e),
            })?;
            Ok(text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_owned)
                .collect())
        };
        if let Some(path) = tokens_file {
            auth.tokens = lines(path)?.iter().map(|t| hash(t)).collect();
        }
        if let Some(path) = users_file {
            for (n, line) in lines(path)?.iter().enumerate() {
                let bad_line = |reason: &'static str| ClientAuthError::BadLine {
                    path: path.to_path_buf(),
                    line: n + 1,
                    reason,
                };
                let (user, secret) = line
                    .split_once(':')
                    .ok_or_else(|| bad_line("expected user:password"))?;
                let hashed = match secret.strip_prefix("sha256:") {
                    Some(hex_hash) => hex::decode(hex_hash)
                        .ok()
                        .and_then(|b| <[u8; 32]>::try_from(b).ok())
                        .ok_or_else(|| bad_line("bad sha256 hash"))?,
                    None => hash(secret),
                };
                auth.users.insert(user.to_owned(), hashed);
            }
        }
        if auth.tokens.is_empty() && auth.users.is_empty() {
            return Err(ClientAuthError::Empty);
        }
        Ok(auth)
    }

    #[cfg(test)]
    fn with_tokens(tokens: &[&str]) -> ClientAuth {
        ClientAuth {
            tokens: tokens.iter().map(|t| hash(t)).collect(),
            ..Default::default()
        }
    }

    /// Restricts `user` to `registries` (canonical names). Fails for a user the users file
    /// does not define.
    pub fn restrict(&mut self, user: &str, registries: Vec<String>) -> Result<(), ClientAuthError> {
        if !self.users.contains_key(user) {
            return Err(ClientAuthError::UnknownUser(user.to_owned()));
        }
        self.registry_rules.insert(user.to_owned(), registries);
        Ok(())
    }

    /// Every user's registry restriction (not secret; for `check-config`).
    pub(crate) fn registry_rules(&self) -> std::collections::BTreeMap<String, Vec<String>> {
        self.registry_rules
            .iter()
            .map(|(user, registries)| (user.clone(), registries.clone()))
            .collect()
    }

    /// The only registries `principal` may pull from; `None` when it may pull from all.
    pub(crate) fn allowed_registries(&self, principal: &Principal) -> Option<&[String]> {
        match principal {
            Principal::Token => None,
            Principal::User(user) => self.registry_rules.get(user).map(Vec::as_slice),
        }
    }

    /// Whether `principal` may pull from `registry` (canonical name).
    pub(crate) fn may_pull(&self, principal: &Principal, registry: &str) -> bool {
        match principal {
            Principal::Token => true,
            Principal::User(user) => self
                .registry_rules
                .get(user)
                .is_none_or(|allowed| allowed.iter().any(|r| r == registry)),
        }
    }

    #[cfg(test)]
    fn with_user(mut self, user: &str, password: &str) -> ClientAuth {
        self.users.insert(user.to_owned(), hash(password));
        self
    }

    /// Whether the request's `Authorization` header carries a known token or user.
    #[cfg(test)]
    fn allows(&self, headers: &HeaderMap) -> bool {
        self.authenticate(headers).is_some()
    }

    /// Who the request's `Authorization` header proves it is, if anyone.
    pub fn authenticate(&self, headers: &HeaderMap) -> Option<Principal> {
        let value = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok())?;
        let (scheme, credentials) = value.split_once(' ').unwrap_or((value, ""));
        let known_token = |presented: &[u8; 32]| {
            self.tokens
                .iter()
                .fold(false, |ok, t| ok | same(t, presented))
        };
        if scheme.eq_ignore_ascii_case("bearer") {
            return known_token(&hash(credentials.trim())).then_some(Principal::Token);
        }
        if scheme.eq_ignore_ascii_case("basic") {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(credentials.trim())
                .ok()?;
            let decoded = String::from_utf8(decoded).ok()?;
            let (user, password) = decoded.split_once(':')?;
            let presented = hash(password);
            if self.users.get(user).is_some_and(|h| same(h, &presented)) {
                return Some(Principal::User(user.to_owned()));
            }
            // A basic "password" may also be a static token (for clients that only do basic).
            return known_token(&presented).then_some(Principal::Token);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn tokens_and_users() {
        let auth = ClientAuth::with_tokens(&["t0ken"]).with_user("ci", "pw");
        assert!(auth.allows(&headers("Bearer t0ken")));
        assert!(!auth.allows(&headers("Bearer nope")));
        let basic = |u: &str, p: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            )
        };
        assert!(auth.allows(&headers(&basic("ci", "pw"))));
        assert!(!auth.allows(&headers(&basic("ci", "wrong"))));
        assert!(!auth.allows(&headers(&basic("other", "pw"))));
        assert!(auth.allows(&headers(&basic("anyone", "t0ken"))));
        assert!(!auth.allows(&HeaderMap::new()));
    }

    #[test]
    fn registry_rules_restrict_only_the_users_they_name() {
        let mut auth = ClientAuth::with_tokens(&["t0ken"])
            .with_user("ci", "pw")
            .with_user("ops", "pw2");
        auth.restrict("ci", vec!["ghcr.io".into()]).unwrap();
        assert!(auth.restrict("ghost", vec![]).is_err(), "unknown user");
        let basic = |u: &str, p: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            )
        };
        let ci = auth.authenticate(&headers(&basic("ci", "pw"))).unwrap();
        assert_eq!(ci, Principal::User("ci".into()));
        assert!(auth.may_pull(&ci, "ghcr.io"));
        assert!(!auth.may_pull(&ci, "docker.io"));
        let ops = auth.authenticate(&headers(&basic("ops", "pw2"))).unwrap();
        assert!(auth.may_pull(&ops, "docker.io"), "no rule: every registry");
        let token = auth.authenticate(&headers("Bearer t0ken")).unwrap();
        assert_eq!(token, Principal::Token);
        assert!(auth.may_pull(&token, "docker.io"));
    }

    #[test]
    fn loads_files_with_hashed_passwords() {
        let dir = tempfile::tempdir().unwrap();
        let users = dir.path().join("users");
        std::fs::write(
            &users,
            format!(
                "# users\nci:plain\nops:sha256:{}\n",
                hex::encode(hash("secret"))
            ),
        )
        .unwrap();
        let auth = ClientAuth::load(None, Some(&users)).unwrap();
        let basic = |u: &str, p: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            )
        };
        assert!(auth.allows(&headers(&basic("ops", "secret"))));
        assert!(auth.allows(&headers(&basic("ci", "plain"))));
        std::fs::write(&users, "broken line\n").unwrap();
        assert!(ClientAuth::load(None, Some(&users)).is_err());
    }
}
