//! Registry authentication: parsing `WWW-Authenticate` challenges, fetching Docker-style
//! bearer tokens (anonymous or with basic credentials), and caching them until they expire.

use super::settings::Credentials;
use moka::Expiry;
use moka::future::Cache;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The longest a token is cached when the token server does not say (`expires_in`).
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
/// Tokens are dropped this long before they expire, so a request never carries a stale one.
const TOKEN_EXPIRY_MARGIN: Duration = Duration::from_secs(10);
const MAX_CACHED_TOKENS: u64 = 10_000;
/// A token response is a small JSON document (real ones are a few KiB); reading stops here,
/// so a hostile or broken token server cannot make ferry buffer without bound.
pub const MAX_TOKEN_BODY_BYTES: usize = 128 * 1024;

/// Why ferry could not answer an upstream's authentication challenge. Reported as the
/// upstream's `Unauthorized` failure, with this as its source.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    #[error("bearer challenge without a realm")]
    NoRealm,
    #[error("bad token realm {realm:?}: {reason}")]
    BadRealm { realm: String, reason: String },
    /// The realm may not be sent the registry's credentials (see [`may_receive_credentials`]).
    #[error("{0}")]
    RealmRefused(String),
    #[error(transparent)]
    NotPublic(#[from] super::reach::NotPublic),
    #[error(transparent)]
    Password(#[from] super::settings::PasswordError),
    #[error("token request failed: {0}")]
    Request(#[source] Arc<reqwest::Error>),
    #[error("token server answered {0}")]
    Status(http::StatusCode),
    #[error("token body failed: {0}")]
    Body(#[source] Arc<reqwest::Error>),
    #[error("token body longer than {0} bytes; not read further")]
    TooLong(usize),
    #[error(transparent)]
    MemoryBudget(#[from] super::memory_budget::BudgetExhausted),
    #[error("token body is not JSON: {0}")]
    NotJson(#[source] Arc<serde_json::Error>),
    #[error("token response has no token")]
    NoToken,
    #[error("token server returned a token that is not a valid header value")]
    BadToken,
    #[error("token server did not answer within {0:?}")]
    Timeout(std::time::Duration),
}

/// Reads a token server's body, refusing (and stopping at) more than `limit` bytes.
async fn read_capped(
    mut response: reqwest::Response,
    limit: usize,
    memory: &super::MemoryBudget,
) -> Result<(Vec<u8>, super::BudgetLease), AuthError> {
    let too_long = || AuthError::TooLong(limit);
    if response
        .content_length()
        .is_some_and(|len| len > limit as u64)
    {
        return Err(too_long());
    }
    let mut body = Vec::new();
    let mut lease = super::BudgetLease::default();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| AuthError::Body(Arc::new(e)))?
    {
        if body.len() + chunk.len() > limit {
            return Err(too_long());
        }
        memory
            .cover(
                &mut lease,
                body.len() + chunk.len(),
                super::memory_budget::BodyClass::Pull,
            )
            .await?;
        body.extend_from_slice(&chunk);
    }
    Ok((body, lease))
}

/// Whether the token realm `realm` of `registry` may be sent the registry's credentials: not
/// over plain HTTP when the registry itself is HTTPS, and only to the registry's own host or
/// a host in its parent domain (Docker Hub's `registry-1.docker.io` sends clients to
/// `auth.docker.io`). A challenge naming any other realm gets an error, not the password.
pub(crate) fn may_receive_credentials(
    registry: &reqwest::Url,
    realm: &reqwest::Url,
) -> Result<(), AuthError> {
    if registry.scheme() == "https" && realm.scheme() != "https" {
        return Err(AuthError::RealmRefused(format!(
            "token realm {realm} is not https while the registry is; credentials are not sent over it"
        )));
    }
    let registry_host = registry.host_str().unwrap_or("").to_ascii_lowercase();
    let realm_host = realm.host_str().unwrap_or("").to_ascii_lowercase();
    let parent = registry_host
        .split_once('.')
        .map(|(_, parent)| parent)
        .filter(|parent| parent.contains('.') && registry.domain().is_some());
    let same_site = realm_host == registry_host
        || parent.is_some_and(|parent| {
            realm_host.ends_with(&format!(".{parent}")) || realm_host == parent
        });
    if same_site {
        Ok(())
    } else {
        Err(AuthError::RealmRefused(format!(
            "token realm host {realm_host:?} is neither the registry's host {registry_host:?} nor in its domain; credentials are not sent to it"
        )))
    }
}

/// A parsed `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Bearer { params: HashMap<String, String> },
    Basic,
}

impl Challenge {
    pub fn parse(header: &str) -> Option<Challenge> {
        let header = header.trim();
        let (scheme, rest) = header
            .split_once(char::is_whitespace)
            .unwrap_or((header, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return Some(Challenge::Basic);
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        Some(Challenge::Bearer {
            params: parse_auth_params(rest),
        })
    }
}

/// A token server's JSON answer: the token (`token`, or OAuth2's `access_token`) and its
/// lifetime in seconds if given. The token must be usable as a header value.
pub fn parse_token_response(body: &[u8]) -> Result<(String, Option<u64>), AuthError> {
    #[derive(serde::Deserialize)]
    struct TokenResponse {
        token: Option<String>,
        access_token: Option<String>,
        expires_in: Option<u64>,
    }
    let parsed: TokenResponse =
        serde_json::from_slice(body).map_err(|e| AuthError::NotJson(Arc::new(e)))?;
    let token = parsed
        .token
        .filter(|t| !t.is_empty())
        .or(parsed.access_token)
        .filter(|t| !t.is_empty())
        .ok_or(AuthError::NoToken)?;
    if http::HeaderValue::from_str(&format!("Bearer {token}")).is_err() {
        return Err(AuthError::BadToken);
    }
    Ok((token, parsed.expires_in))
}

/// Parses `key="value", key2=value2` where quoted values may contain commas.
fn parse_auth_params(input: &str) -> HashMap<String, String> {
    let mut params = HashMap::new();
    let mut chars = input.chars().peekable();
    loop {
        while matches!(chars.peek(), Some(c) if *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
        let key = key.trim().to_ascii_lowercase();
        if key.is_empty() {
            return params;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(escaped) = chars.next() {
                            value.push(escaped);
                        }
                    }
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                value.push(c);
                chars.next();
            }
            value = value.trim().to_owned();
        }
        params.insert(key, value);
    }
}

#[derive(Clone)]
struct CachedToken {
    token: String,
    lifetime: Duration,
}

struct TokenLifetime;

impl Expiry<String, CachedToken> for TokenLifetime {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &CachedToken,
        _now: Instant,
    ) -> Option<Duration> {
        Some(value.lifetime)
    }
}

/// Bearer tokens of one upstream, keyed by scope.
pub(crate) struct TokenCache {
    tokens: Cache<String, CachedToken>,
    /// Token answers are read whole, within ferry's budget for such bodies.
    memory: super::MemoryBudget,
}

impl Default for TokenCache {
    fn default() -> Self {
        TokenCache::new(super::MemoryBudget::default())
    }
}

impl TokenCache {
    pub(crate) fn new(memory: super::MemoryBudget) -> Self {
        TokenCache {
            tokens: Cache::builder()
                .max_capacity(MAX_CACHED_TOKENS)
                .expire_after(TokenLifetime)
                .build(),
            memory,
        }
    }

    pub(crate) async fn get(&self, scope: &str) -> Option<String> {
        self.tokens.get(scope).await.map(|t| t.token)
    }

    pub(crate) async fn forget(&self, scope: &str) {
        self.tokens.invalidate(scope).await;
    }

    async fn insert(&self, scope: &str, token: String, expires_in: Option<u64>) {
        let lifetime = expires_in
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_TOKEN_LIFETIME)
            .saturating_sub(TOKEN_EXPIRY_MARGIN)
            .max(Duration::from_secs(1));
        self.tokens
            .insert(scope.to_owned(), CachedToken { token, lifetime })
            .await;
    }

    /// Fetches a token from the challenge's realm for `scope` and caches it. Credentials go
    /// only to a realm that [`may_receive_credentials`] allows for the upstream's URL; with
    /// `public_addresses_only`, a realm at a literal private address is refused.
    pub(crate) async fn fetch(
        &self,
        http: &reqwest::Client,
        upstream: &super::settings::UpstreamConfig,
        params: &HashMap<String, String>,
        scope: &str,
        credentials: Option<&Credentials>,
    ) -> Result<String, AuthError> {
        let timeout = upstream.header_timeout;
        let realm = params.get("realm").ok_or(AuthError::NoRealm)?;
        let bad_realm = |reason: String| AuthError::BadRealm {
            realm: realm.clone(),
            reason,
        };
        let mut url = reqwest::Url::parse(realm).map_err(|e| bad_realm(e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad_realm("not http(s)".to_owned()));
        }
        {
            let mut query = url.query_pairs_mut();
            if let Some(service) = params.get("service") {
                query.append_pair("service", service);
            }
            query.append_pair("scope", scope);
        }
        if credentials.is_some() {
            may_receive_credentials(&upstream.url, &url)?;
        }
        if upstream.public_addresses_only {
            super::reach::check_literal_host(&url)?;
        }
        let mut request = http.get(url);
        if let Some(credentials) = credentials {
            let password = credentials.current_password().await?;
            request = request.basic_auth(&credentials.username, Some(password));
        }
        let fetch = async {
            let response = request
                .send()
                .await
                .map_err(|e| AuthError::Request(Arc::new(e)))?;
            let status = response.status();
            if !status.is_success() {
                return Err(AuthError::Status(status));
            }
            let (body, _lease) = read_capped(response, MAX_TOKEN_BODY_BYTES, &self.memory).await?;
            parse_token_response(&body)
        };
        let (token, expires_in) = tokio::time::timeout(timeout, fetch)
            .await
            .map_err(|_| AuthError::Timeout(timeout))??;
        self.insert(scope, token.clone(), expires_in).await;
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_go_only_to_the_registrys_own_site_and_never_downgrade_to_http() {
        let url = |s: &str| reqwest::Url::parse(s).unwrap();
        let allowed = |registry: &str, realm: &str| {
            may_receive_credentials(&url(registry), &url(realm)).is_ok()
        };
        assert!(allowed(
            "https://registry-1.docker.io",
            "https://auth.docker.io/token"
        ));
        assert!(allowed("https://ghcr.io", "https://ghcr.io/token"));
        assert!(allowed("https://quay.io", "https://quay.io/v2/auth"));
        assert!(allowed(
            "http://127.0.0.1:5000",
            "http://127.0.0.1:5001/token"
        ));
        assert!(
            !allowed("https://ghcr.io", "http://ghcr.io/token"),
            "downgrade"
        );
        assert!(!allowed(
            "https://registry-1.docker.io",
            "https://evil.example/token"
        ));
        assert!(
            !allowed("https://ghcr.io", "https://evil.io/token"),
            "a TLD is no domain"
        );
        assert!(!allowed("http://127.0.0.1:5000", "http://127.0.0.2/token"));
        assert!(!allowed(
            "https://a.example.com",
            "https://example.com.evil.net/t"
        ));
    }

    #[test]
    fn parses_docker_hub_challenge() {
        let c = Challenge::parse(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull,push""#,
        )
        .unwrap();
        let Challenge::Bearer { params } = c else {
            panic!("not bearer")
        };
        assert_eq!(params["realm"], "https://auth.docker.io/token");
        assert_eq!(params["service"], "registry.docker.io");
        assert_eq!(params["scope"], "repository:library/alpine:pull,push");
    }

    #[test]
    fn parses_basic_and_rejects_unknown() {
        assert_eq!(
            Challenge::parse(r#"Basic realm="x""#),
            Some(Challenge::Basic)
        );
        assert_eq!(Challenge::parse("Negotiate abc"), None);
        let Some(Challenge::Bearer { params }) =
            Challenge::parse("bearer realm=http://a/t , service=s")
        else {
            panic!("not bearer")
        };
        assert_eq!(params["realm"], "http://a/t");
        assert_eq!(params["service"], "s");
    }

    #[tokio::test]
    async fn cached_tokens_expire() {
        let cache = TokenCache::default();
        cache.insert("s", "t".into(), Some(11)).await;
        assert_eq!(cache.get("s").await.as_deref(), Some("t"));
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(
            cache.get("s").await,
            None,
            "a 11 s token is kept 1 s (10 s margin)"
        );
    }
}
