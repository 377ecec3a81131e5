//! Optional client authentication for shared caches: static bearer tokens and basic users,
//! read from files. Secrets are kept only as sha256 hashes and compared in constant time. A
//! refused request gets 401 with `WWW-Authenticate: Basic`, so Docker, containerd, podman
//! and skopeo send the credentials configured for this host.

use base64::Engine as _;
use http::HeaderMap;
use http::header::AUTHORIZATION;
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::path::Path;

pub const REALM: &str = "ferry";

#[derive(Default, Clone)]
pub struct ClientAuth {
    tokens: Vec<[u8; 32]>,
    /// user -> sha256(password)
    users: HashMap<String, [u8; 32]>,
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

impl ClientAuth {
    /// Reads a tokens file (one token per line) and a users file (`user:password` or
    /// `user:sha256:<hex of sha256(password)>` per line); `#` starts a comment.
    pub fn load(
        tokens_file: Option<&Path>,
        users_file: Option<&Path>,
    ) -> Result<ClientAuth, String> {
        let mut auth = ClientAuth::default();
        let lines = |path: &Path| -> Result<Vec<String>, String> {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
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
                let (user, secret) = line.split_once(':').ok_or_else(|| {
                    format!("{} line {}: expected user:password", path.display(), n + 1)
                })?;
                let hashed = match secret.strip_prefix("sha256:") {
                    Some(hex_hash) => hex::decode(hex_hash)
                        .ok()
                        .and_then(|b| <[u8; 32]>::try_from(b).ok())
                        .ok_or_else(|| {
                            format!("{} line {}: bad sha256 hash", path.display(), n + 1)
                        })?,
                    None => hash(secret),
                };
                auth.users.insert(user.to_owned(), hashed);
            }
        }
        if auth.tokens.is_empty() && auth.users.is_empty() {
            return Err(
                "client authentication is configured but no token or user was found".into(),
            );
        }
        Ok(auth)
    }

    pub fn with_tokens(tokens: &[&str]) -> ClientAuth {
        ClientAuth {
            tokens: tokens.iter().map(|t| hash(t)).collect(),
            users: HashMap::new(),
        }
    }

    pub fn with_user(mut self, user: &str, password: &str) -> ClientAuth {
        self.users.insert(user.to_owned(), hash(password));
        self
    }

    /// Whether the request's `Authorization` header carries a known token or user.
    pub fn allows(&self, headers: &HeaderMap) -> bool {
        let Some(value) = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let (scheme, credentials) = value.split_once(' ').unwrap_or((value, ""));
        if scheme.eq_ignore_ascii_case("bearer") {
            let presented = hash(credentials.trim());
            return self
                .tokens
                .iter()
                .fold(false, |ok, t| ok | same(t, &presented));
        }
        if scheme.eq_ignore_ascii_case("basic") {
            let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(credentials.trim())
            else {
                return false;
            };
            let Ok(decoded) = String::from_utf8(decoded) else {
                return false;
            };
            let Some((user, password)) = decoded.split_once(':') else {
                return false;
            };
            let presented = hash(password);
            // A basic "password" may also be a static token (for clients that only do basic).
            let token_ok = self
                .tokens
                .iter()
                .fold(false, |ok, t| ok | same(t, &presented));
            return token_ok || self.users.get(user).is_some_and(|h| same(h, &presented));
        }
        false
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
