//! One upstream registry: an HTTP client with its own connect, response-header and body-idle
//! timeouts, the registry token flow, and classification of every failure it meets.

use super::auth::{Challenge, TokenCache};
use super::breaker::BreakerConfig;
use super::failure::{FailureKind, UpstreamFailure};
use super::health::UpstreamHealth;
use super::settings::UpstreamConfig;
use crate::oci::RepositoryName;
use bytes::{Bytes, BytesMut};
use http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use std::time::Duration;

/// Most redirects followed for one request (Docker Hub, ECR, GHCR send one to object storage).
const MAX_REDIRECTS: usize = 10;
const DOCKER_HUB_HOSTS: [&str; 3] = ["registry-1.docker.io", "index.docker.io", "docker.io"];

pub struct UpstreamClient {
    config: UpstreamConfig,
    http: reqwest::Client,
    tokens: TokenCache,
    /// Shared with every upstream: bodies read whole stay under it together.
    memory: super::MemoryBudget,
    docker_hub: bool,
    /// Whether requests carry `?ns=<registry>`: yes unless the upstream is the registry
    /// itself, so a ferry (or containerd-style mirror) upstream knows which registry is meant.
    forwards_namespace: bool,
    health: UpstreamHealth,
}

impl UpstreamClient {
    pub fn new(
        config: UpstreamConfig,
        breaker: BreakerConfig,
        memory: super::MemoryBudget,
    ) -> Result<Self, super::settings::SetupError> {
        // reqwest strips Authorization (and cookies) when a redirect leaves the original
        // host, so a registry's token is never sent to object storage.
        let mut builder = reqwest::Client::builder();
        if let Some(ca) = &config.ca {
            // Added to the platform's roots, not instead of them.
            builder = builder.tls_certs_merge(ca.certificates.iter().cloned());
        }
        let public_only = config.public_addresses_only;
        if public_only {
            // A proxy from the environment (HTTPS_PROXY, ALL_PROXY...) would resolve and dial
            // the name itself, out of the guard's sight: guarded requests go direct.
            builder = builder.no_proxy();
            // Names are resolved by a resolver that drops non-public addresses, so the check
            // applies to the address really dialled (no DNS rebinding), for every request.
            builder =
                builder.dns_resolver(std::sync::Arc::new(super::reach::PublicAddressResolver));
        }
        let redirects = if config.https_redirects_only || public_only {
            let https_only = config.https_redirects_only;
            // A registry clients name may not bounce ferry to plain HTTP or to an address
            // inside the network (an internal service, a metadata endpoint).
            reqwest::redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() >= MAX_REDIRECTS {
                    attempt.error("too many redirects")
                } else if https_only && attempt.url().scheme() != "https" {
                    attempt.error("a direct registry may only redirect to https")
                } else if let (true, Err(reason)) =
                    (public_only, super::reach::check_literal_host(attempt.url()))
                {
                    attempt.error(reason)
                } else {
                    attempt.follow()
                }
            })
        } else {
            reqwest::redirect::Policy::limited(MAX_REDIRECTS)
        };
        let http = builder
            .connect_timeout(config.connect_timeout)
            .redirect(redirects)
            .user_agent(concat!("ferry/", env!("CARGO_PKG_VERSION")))
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| super::settings::SetupError::HttpClient {
                upstream: config.name.clone(),
                cause: std::sync::Arc::new(e),
            })?;
        let docker_hub = config
            .url
            .host_str()
            .is_some_and(|host| DOCKER_HUB_HOSTS.contains(&host));
        let host = config.url.host_str().unwrap_or("").to_ascii_lowercase();
        let forwards_namespace = !docker_hub
            && host != config.registry
            && !config.registry.starts_with(&format!("{host}:"));
        Ok(UpstreamClient {
            forwards_namespace,
            health: UpstreamHealth::new(&config.name, breaker, config.ratelimit_reserve),
            config,
            http,
            tokens: TokenCache::new(memory.clone()),
            memory,
            docker_hub,
        })
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn config(&self) -> &UpstreamConfig {
        &self.config
    }

    pub fn health(&self) -> &UpstreamHealth {
        &self.health
    }

    /// `GET /v2/` for the background health probe: any answer below 500 (401 included)
    /// shows the registry is alive.
    pub async fn probe(&self) -> Result<(), UpstreamFailure> {
        let mut url = self.config.url.clone();
        let base = url.path().trim_end_matches('/').to_owned();
        url.set_path(&format!("{base}/v2/"));
        self.check_reach(&url)?;
        let request = self.http.get(url).send();
        match tokio::time::timeout(self.config.header_timeout, request).await {
            Err(_) => Err(self.failure(FailureKind::HeaderTimeout, "health probe: no answer")),
            Ok(Err(e)) => Err(self.classify_transport_error(e)),
            Ok(Ok(response)) if response.status().is_server_error() => {
                Err(UpstreamFailure::from_status(self.name(), response.status()))
            }
            Ok(Ok(_)) => Ok(()),
        }
    }

    /// GETs `path` on this upstream outside `/v2/` (a ferry's own endpoint, such as its pin
    /// set), with this upstream's TLS trust, address guard and basic credentials; the body,
    /// at most `limit` bytes, within the header and body-idle timeouts.
    pub(crate) async fn get_ferry_endpoint(
        &self,
        path: &str,
        limit: usize,
    ) -> Result<Bytes, UpstreamFailure> {
        let mut url = self.config.url.clone();
        let base = url.path().trim_end_matches('/').to_owned();
        url.set_path(&format!("{base}{path}"));
        url.set_query(None);
        self.check_reach(&url)?;
        let mut request = self.http.get(url);
        if let Some(credentials) = &self.config.credentials {
            let password = credentials.current_password().await.map_err(|e| {
                self.failure(
                    FailureKind::Unauthorized,
                    "no password for basic credentials",
                )
                .caused_by(e)
            })?;
            request = request.basic_auth(&credentials.username, Some(password));
        }
        let response = match tokio::time::timeout(self.config.header_timeout, request.send()).await
        {
            Err(_) => {
                return Err(self.failure(FailureKind::HeaderTimeout, format!("{path}: no answer")));
            }
            Ok(Err(e)) => return Err(self.classify_transport_error(e)),
            Ok(Ok(response)) if !response.status().is_success() => {
                return Err(UpstreamFailure::from_status(self.name(), response.status()));
            }
            Ok(Ok(response)) => response,
        };
        let mut body = self.body(response);
        let mut bytes = Vec::new();
        while let Some(chunk) = body.next_chunk().await? {
            if bytes.len() + chunk.len() > limit {
                return Err(self.failure(
                    FailureKind::BadResponse,
                    format!("{path}: more than {limit} bytes"),
                ));
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes.into())
    }

    /// The repository as this upstream names it (Docker Hub puts official images under `library/`).
    fn upstream_repository(&self, name: &RepositoryName) -> RepositoryName {
        if self.docker_hub {
            name.with_docker_hub_library_prefix()
        } else {
            name.clone()
        }
    }

    fn url(&self, name: &RepositoryName, suffix: &str, query: Option<&str>) -> reqwest::Url {
        let mut url = self.config.url.clone();
        let base = url.path().trim_end_matches('/').to_owned();
        url.set_path(&format!(
            "{base}/v2/{}/{suffix}",
            self.upstream_repository(name)
        ));
        url.set_query(query);
        if self.forwards_namespace {
            url.query_pairs_mut()
                .append_pair("ns", &self.config.registry);
        }
        url
    }

    /// Sends one request for `<name>/<suffix>` and returns the response if its status is a
    /// success; any other status, and every transport failure, becomes an [`UpstreamFailure`].
    /// Handles the 401 → token → retry dance once.
    pub async fn send(
        &self,
        method: Method,
        name: &RepositoryName,
        suffix: &str,
        query: Option<&str>,
        headers: HeaderMap,
    ) -> Result<reqwest::Response, UpstreamFailure> {
        let url = self.url(name, suffix, query);
        self.check_reach(&url)?;
        let scope = format!("repository:{}:pull", self.upstream_repository(name));
        let mut authorization = self
            .tokens
            .get(&scope)
            .await
            .and_then(|token| HeaderValue::from_str(&format!("Bearer {token}")).ok());
        let mut retried_auth = false;
        loop {
            let mut request = self
                .http
                .request(method.clone(), url.clone())
                .headers(headers.clone());
            if let Some(value) = &authorization {
                request = request.header(AUTHORIZATION, value.clone());
            }
            let response =
                match tokio::time::timeout(self.config.header_timeout, request.send()).await {
                    Err(_) => {
                        return Err(self.failure(
                            FailureKind::HeaderTimeout,
                            format!(
                                "no response headers within {:?}",
                                self.config.header_timeout
                            ),
                        ));
                    }
                    Ok(Err(e)) => return Err(self.classify_transport_error(e)),
                    Ok(Ok(response)) => response,
                };
            let status = response.status();
            self.health.note_answer(status, response.headers());
            if status.is_success() {
                return Ok(response);
            }
            if status == http::StatusCode::UNAUTHORIZED && !retried_auth {
                retried_auth = true;
                if authorization.is_some() {
                    self.tokens.forget(&scope).await;
                }
                match self.answer_challenge(response.headers(), &scope).await {
                    Ok(Some(value)) => {
                        authorization = Some(value);
                        continue;
                    }
                    Ok(None) => {}
                    Err(cause) => {
                        return Err(self
                            .failure(FailureKind::Unauthorized, "cannot answer its challenge")
                            .caused_by(cause));
                    }
                }
            }
            return Err(UpstreamFailure::from_status(self.name(), status));
        }
    }

    /// The Authorization header that answers a 401's challenge, if ferry can answer it.
    async fn answer_challenge(
        &self,
        headers: &HeaderMap,
        scope: &str,
    ) -> Result<Option<HeaderValue>, super::auth::AuthError> {
        let challenge = headers
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(Challenge::parse);
        match challenge {
            Some(Challenge::Bearer { params }) => {
                let credentials = self.config.credentials.as_ref();
                let fetch = || {
                    self.tokens
                        .fetch(&self.http, &self.config, &params, scope, credentials)
                };
                let token = match fetch().await {
                    Ok(token) => token,
                    // A credential helper's output may have expired: run it again, once.
                    Err(_) if credentials.is_some_and(|c| c.refresh()) => fetch().await?,
                    Err(e) => return Err(e),
                };
                HeaderValue::from_str(&format!("Bearer {token}"))
                    .map(Some)
                    .map_err(|_| super::auth::AuthError::BadToken)
            }
            Some(Challenge::Basic) => match &self.config.credentials {
                None => Ok(None),
                Some(credentials) => {
                    let password = credentials.current_password().await?;
                    Ok(HeaderValue::from_str(&basic_authorization(
                        &credentials.username,
                        &password,
                    ))
                    .ok())
                }
            },
            None => Ok(None),
        }
    }

    /// Sends `GET blobs/<digest>` to `client`, with `Range: bytes=<offset>-` when resuming,
    /// and checks the answer: 200 for a fresh start; 206 with a matching `Content-Range` for a
    /// resume, or 200 (the upstream ignored Range), in which case `offset` bytes are skipped.
    pub(crate) async fn get_from_offset(
        &self,
        name: &RepositoryName,
        suffix: &str,
        offset: u64,
        total: Option<u64>,
    ) -> Result<(reqwest::Response, u64), UpstreamFailure> {
        let mut headers = HeaderMap::new();
        if offset > 0
            && let Ok(value) = http::HeaderValue::from_str(&format!("bytes={offset}-"))
        {
            headers.insert(http::header::RANGE, value);
        }
        let response = self.send(Method::GET, name, suffix, None, headers).await?;
        let bad =
            |detail: String| UpstreamFailure::new(self.name(), FailureKind::BadResponse, detail);
        match (offset, response.status()) {
            (0, StatusCode::OK) => Ok((response, 0)),
            (0, status) => Err(bad(format!("answered {status} to a plain GET"))),
            (_, StatusCode::OK) => Ok((response, offset)),
            (_, StatusCode::PARTIAL_CONTENT) => {
                let content_range = response
                    .headers()
                    .get(http::header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                let ok = ContentRange::parse(&content_range)
                    .is_some_and(|range| range.answers_resume_from(offset, total));
                if ok {
                    Ok((response, 0))
                } else {
                    Err(bad(format!(
                        "answered 206 with Content-Range {content_range:?} to bytes={offset}-"
                    )))
                }
            }
            (_, status) => Err(bad(format!("answered {status} to a Range request"))),
        }
    }

    /// Refuses a literal non-public address for an upstream limited to public ones (names
    /// are checked by the resolver at connect time).
    fn check_reach(&self, url: &reqwest::Url) -> Result<(), UpstreamFailure> {
        if !self.config.public_addresses_only {
            return Ok(());
        }
        super::reach::check_literal_host(url).map_err(|refused| {
            self.failure(FailureKind::Connect, "not reached")
                .caused_by(refused)
        })
    }

    fn failure(&self, kind: FailureKind, detail: impl Into<String>) -> UpstreamFailure {
        UpstreamFailure::new(self.name(), kind, detail)
    }

    fn classify_transport_error(&self, error: reqwest::Error) -> UpstreamFailure {
        let kind = if error.is_connect() && error.is_timeout() {
            FailureKind::ConnectTimeout
        } else if error.is_timeout() {
            FailureKind::HeaderTimeout
        } else if error.is_redirect() {
            FailureKind::BadResponse
        } else {
            FailureKind::Connect
        };
        self.failure(kind, "request failed").caused_by(error)
    }

    /// Reads a response body chunk by chunk, failing when it goes quiet for longer than
    /// the body idle timeout.
    pub fn body(&self, response: reqwest::Response) -> BodyChunks {
        BodyChunks {
            response,
            idle_timeout: self.config.body_idle_timeout,
            upstream: self.config.name.clone(),
            min_rate: self.config.min_transfer_rate,
            rate_window: self.config.rate_window,
            window_started: tokio::time::Instant::now(),
            window_bytes: 0,
            memory: self.memory.clone(),
        }
    }
}

/// A `Content-Range: bytes FIRST-LAST/COMPLETE` header (COMPLETE may be `*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentRange {
    pub first: u64,
    pub last: u64,
    pub complete_length: Option<u64>,
}

impl ContentRange {
    /// `None` for anything but one satisfied byte range with `first <= last < complete`.
    pub fn parse(header: &str) -> Option<ContentRange> {
        let rest = header.trim().strip_prefix("bytes ")?.trim_start();
        let (span, complete) = rest.split_once('/')?;
        let (first, last) = span.split_once('-')?;
        let digits = |s: &str| -> Option<u64> {
            (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .then(|| s.parse().ok())
                .flatten()
        };
        let (first, last) = (digits(first)?, digits(last)?);
        let complete_length = match complete {
            "*" => None,
            n => Some(digits(n)?),
        };
        let consistent = first <= last && complete_length.is_none_or(|n| last < n);
        consistent.then_some(ContentRange {
            first,
            last,
            complete_length,
        })
    }

    /// Whether this answers `bytes=<offset>-` of a blob of `total` bytes (if known).
    pub fn answers_resume_from(&self, offset: u64, total: Option<u64>) -> bool {
        self.first == offset
            && match total {
                Some(total) => {
                    self.complete_length == Some(total) && total.checked_sub(1) == Some(self.last)
                }
                None => true,
            }
    }
}

/// The `Authorization` value for HTTP basic authentication.
fn basic_authorization(username: &str, password: &str) -> String {
    use base64::Engine as _;
    let pair = format!("{username}:{password}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

pub struct BodyChunks {
    response: reqwest::Response,
    idle_timeout: Duration,
    upstream: String,
    /// Minimum average bytes/s over `rate_window` (0 = no minimum): catches an upstream
    /// that drips bytes just often enough to dodge the idle timeout.
    min_rate: u64,
    rate_window: Duration,
    window_started: tokio::time::Instant,
    window_bytes: u64,
    memory: super::MemoryBudget,
}

impl BodyChunks {
    /// The upstream this body comes from.
    pub fn upstream(&self) -> &str {
        &self.upstream
    }

    pub(crate) fn content_length(&self) -> Option<u64> {
        self.response.content_length()
    }

    pub fn headers(&self) -> &HeaderMap {
        self.response.headers()
    }

    pub(crate) async fn next_chunk(&mut self) -> Result<Option<Bytes>, UpstreamFailure> {
        let chunk = self.next_chunk_within_idle_timeout().await?;
        if let Some(chunk) = &chunk {
            self.window_bytes += chunk.len() as u64;
        }
        if self.min_rate > 0 {
            let elapsed = self.window_started.elapsed();
            if elapsed >= self.rate_window {
                let rate = self.window_bytes as f64 / elapsed.as_secs_f64();
                if rate < self.min_rate as f64 {
                    return Err(UpstreamFailure::new(
                        &self.upstream,
                        FailureKind::TooSlow,
                        format!(
                            "body averaged {:.0} B/s over {elapsed:?}, below the minimum {} B/s",
                            rate, self.min_rate
                        ),
                    ));
                }
                self.window_started = tokio::time::Instant::now();
                self.window_bytes = 0;
            }
        }
        Ok(chunk)
    }

    async fn next_chunk_within_idle_timeout(&mut self) -> Result<Option<Bytes>, UpstreamFailure> {
        match tokio::time::timeout(self.idle_timeout, self.response.chunk()).await {
            Err(_) => Err(UpstreamFailure::new(
                &self.upstream,
                FailureKind::BodyIdleTimeout,
                format!("body idle for {:?}", self.idle_timeout),
            )),
            Ok(Err(e)) => {
                Err(
                    UpstreamFailure::new(&self.upstream, FailureKind::BodyBroken, "body broke")
                        .caused_by(e),
                )
            }
            Ok(Ok(chunk)) => Ok(chunk),
        }
    }

    /// Reads the whole body, failing if it exceeds `limit` bytes, within ferry's memory
    /// budget for such bodies: the lease covers `expansion` times the bytes (room for what
    /// the caller parses them into) until the caller drops it. No room within a short wait
    /// fails as `MemoryBudget`.
    pub(crate) async fn read_to_end(
        self,
        limit: usize,
        class: super::memory_budget::BodyClass,
        expansion: usize,
    ) -> Result<(Bytes, super::BudgetLease), UpstreamFailure> {
        self.read_to_end_within(limit, class, expansion, super::BudgetLease::default())
            .await
    }

    /// `read_to_end`, growing a lease the caller already holds (a list read page by page):
    /// a lease that holds anything only grows when room is free now, so no request waits for
    /// room while holding some.
    pub(crate) async fn read_to_end_within(
        mut self,
        limit: usize,
        class: super::memory_budget::BodyClass,
        expansion: usize,
        lease: super::BudgetLease,
    ) -> Result<(Bytes, super::BudgetLease), UpstreamFailure> {
        let mut lease = lease;
        let held_before = lease.bytes();
        if self.content_length().is_some_and(|len| len > limit as u64) {
            return Err(UpstreamFailure::new(
                &self.upstream,
                FailureKind::BadResponse,
                format!("body larger than the {limit}-byte limit"),
            ));
        }
        let mut body = BytesMut::with_capacity(
            self.content_length()
                .map_or(0, |announced| (announced as usize).min(limit)),
        );
        let over_budget = |upstream: &str, e: super::memory_budget::BudgetExhausted| {
            UpstreamFailure::new(upstream, FailureKind::MemoryBudget, "body not read").caused_by(e)
        };
        if let Some(announced) = self.content_length() {
            self.memory
                .cover(
                    &mut lease,
                    held_before + expansion * announced as usize,
                    class,
                )
                .await
                .map_err(|e| over_budget(&self.upstream, e))?;
        }
        while let Some(chunk) = self.next_chunk().await? {
            if body.len() + chunk.len() > limit {
                return Err(UpstreamFailure::new(
                    &self.upstream,
                    FailureKind::BadResponse,
                    format!("body larger than the {limit}-byte limit"),
                ));
            }
            self.memory
                .cover(
                    &mut lease,
                    held_before + expansion * (body.len() + chunk.len()),
                    class,
                )
                .await
                .map_err(|e| over_budget(&self.upstream, e))?;
            body.extend_from_slice(&chunk);
        }
        Ok((body.freeze(), lease))
    }
}
