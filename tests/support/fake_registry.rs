//! An in-process fake OCI registry for tests: serves manifests and blobs from memory,
//! injects faults per path (status codes, hangs, resets, truncation, corruption, wrong
//! digest headers), optionally demands bearer tokens or redirects blobs, and counts hits.

use bytes::Bytes;
use ferry::oci::Digest;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

type Body = BoxBody<Bytes, std::io::Error>;

/// A way for the fake to misbehave on matching requests.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Answer with this status and an OCI error body.
    Status(u16),
    /// Never send response headers.
    HangBeforeHeaders,
    /// Send headers after this delay.
    DelayHeaders(Duration),
    /// Send `after` bytes, then hang forever.
    HangMidBody { after: usize },
    /// Send `after` bytes, then break the connection.
    ResetMidBody { after: usize },
    /// Announce the full Content-Length, send `after` bytes, end the body.
    Truncate { after: usize },
    /// Flip one byte of the body (the last one).
    Corrupt,
    /// Flip the byte at offset `at` of the whole blob (clamped to the last byte).
    FlipByte { at: usize },
    /// Flip the byte at `at`, send the first `after` bytes, then wait for `release`.
    FlipByteThenPause {
        at: usize,
        after: usize,
        release: Arc<Notify>,
    },
    /// Send a Docker-Content-Digest that does not match the body.
    WrongDigestHeader,
    /// Send `after` bytes, then wait until `release` is notified before the rest.
    PauseMidBody { after: usize, release: Arc<Notify> },
    /// Send the body in chunks of `chunk` bytes with `delay` between them.
    Drip { chunk: usize, delay: Duration },
    /// Ignore `Range` and always send the whole body with 200.
    IgnoreRange,
    /// Send the body chunked, without `Content-Length` (the length is unknown until it ends).
    NoContentLength,
    /// Answer 200 with a chunked body of JSON whitespace that never ends (also on `/token`).
    EndlessBody,
    /// Answer `status` (429 or 503) with `Retry-After: seconds`.
    RetryAfter { status: u16, seconds: u64 },
}

/// A pull quota like Docker Hub's: every answer carries `ratelimit-limit` and
/// `ratelimit-remaining` (`;w=` the window); each manifest GET spends one (HEAD spends none);
/// at zero a manifest GET gets 429 with `Retry-After`.
#[derive(Clone, Copy, Debug)]
struct PullQuota {
    limit: u64,
    remaining: u64,
    window_secs: u64,
    retry_after_secs: u64,
}

#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
}

#[derive(Default)]
struct State {
    /// (repository, tag or digest) -> (media type, body)
    manifests: HashMap<(String, String), (String, Bytes)>,
    blobs: HashMap<String, Bytes>,
    tags: HashMap<String, Vec<String>>,
    /// (repository, subject digest) -> referrer descriptors, when `referrers_api` is on.
    referrers: HashMap<(String, String), Vec<serde_json::Value>>,
    /// Serve `/referrers/` (OCI distribution 1.1); off = 404, like distribution 2.8.
    referrers_api: bool,
    /// Referrers per page (`?page=K`, with a `Link: <...>; rel="next"` to the next page).
    referrers_page_size: Option<usize>,
    /// Every referrers page links to the first page again (a broken paginator).
    referrers_link_loop: bool,
    /// Tag-list `Link`s name this absolute origin (`https://host`) instead of a bare path.
    tag_link_origin: Option<String>,
    /// Referrers pages from this one on answer 404 (a list that lost its tail).
    referrers_missing_from_page: Option<usize>,
    /// (path substring, fault, matching requests it still applies to; `None` = all).
    faults: Vec<(String, Fault, Option<usize>)>,
    requests: Vec<RecordedRequest>,
    /// Bearer token required on /v2/ paths, and basic credentials required by /token.
    required_token: Option<String>,
    token_credentials: Option<String>,
    /// Blob GETs are redirected to this base URL + /objects/<digest>.
    redirect_blobs_to: Option<String>,
    /// Token realm named in challenges instead of this registry's own `/token`.
    realm: Option<String>,
    /// Proxy mode: content comes from this real registry, faults are applied on the way.
    backend: Option<String>,
    /// Bytes sent so far by `Fault::EndlessBody` responses.
    endless_bytes_sent: Arc<std::sync::atomic::AtomicU64>,
    quota: Option<PullQuota>,
}

pub struct FakeRegistry {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
    connections: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        self.stop();
    }
}

impl FakeRegistry {
    pub async fn start() -> FakeRegistry {
        Self::start_on("127.0.0.1:0").await
    }

    /// A fake registry on another loopback address, e.g. "127.0.0.2:0" (a different host).
    pub async fn start_at(listen: &str) -> FakeRegistry {
        Self::start_on(listen).await
    }

    async fn start_on(listen: &str) -> FakeRegistry {
        let listener = tokio::net::TcpListener::bind(listen).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let task_state = state.clone();
        let connections: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let task_connections = connections.clone();
        let task = tokio::spawn(async move {
            let connections = task_connections;
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = task_state.clone();
                let service = hyper::service::service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(handle(state, addr, req).await) }
                });
                connections.lock().unwrap().push(tokio::spawn(async move {
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                }));
            }
        });
        FakeRegistry {
            addr,
            state,
            task,
            connections,
        }
    }

    /// Stops listening and drops every open connection: the registry is down.
    pub fn stop(&self) {
        self.task.abort();
        for connection in self.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
    }

    /// A fault-injecting proxy in front of a real registry at `backend` (e.g.
    /// `http://127.0.0.1:5000`), listening on `listen` ("127.0.0.1:0" for any port).
    pub async fn start_proxy(listen: &str, backend: &str) -> FakeRegistry {
        let registry = FakeRegistry::start_on(listen).await;
        registry.state().backend = Some(backend.trim_end_matches('/').to_owned());
        registry
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Gives the registry a pull quota of `limit` manifest GETs per `window_secs`, starting
    /// with `remaining`; at zero a manifest GET is answered 429 with `Retry-After`.
    pub fn set_pull_quota(
        &self,
        limit: u64,
        remaining: u64,
        window_secs: u64,
        retry_after_secs: u64,
    ) {
        self.state().quota = Some(PullQuota {
            limit,
            remaining,
            window_secs,
            retry_after_secs,
        });
    }

    /// The quota's window passed: every pull is available again.
    pub fn reset_pull_quota(&self) {
        if let Some(quota) = self.state().quota.as_mut() {
            quota.remaining = quota.limit;
        }
    }

    /// Pulls left in the quota window.
    pub fn pulls_remaining(&self) -> Option<u64> {
        self.state().quota.map(|q| q.remaining)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    pub fn put_blob(&self, body: impl Into<Bytes>) -> Digest {
        let body = body.into();
        let digest = Digest::sha256_of(&body);
        self.state().blobs.insert(digest.to_string(), body);
        digest
    }

    pub fn remove_blob(&self, digest: &Digest) {
        self.state().blobs.remove(&digest.to_string());
    }

    /// Stores a manifest under its digest and, if given, a tag.
    pub fn put_manifest(
        &self,
        repo: &str,
        tag: Option<&str>,
        media_type: &str,
        body: impl Into<Bytes>,
    ) -> Digest {
        let body = body.into();
        let digest = Digest::sha256_of(&body);
        let mut state = self.state();
        let entry = (media_type.to_owned(), body);
        state
            .manifests
            .insert((repo.to_owned(), digest.to_string()), entry.clone());
        if let Some(tag) = tag {
            state
                .manifests
                .insert((repo.to_owned(), tag.to_owned()), entry);
            let tags = state.tags.entry(repo.to_owned()).or_default();
            if !tags.contains(&tag.to_owned()) {
                tags.push(tag.to_owned());
            }
        }
        digest
    }

    /// Deletes a tag and the manifest it points at (the seed's outage test).
    pub fn delete_image(&self, repo: &str, tag: &str) {
        let mut state = self.state();
        if let Some((_, body)) = state.manifests.remove(&(repo.to_owned(), tag.to_owned())) {
            let digest = Digest::sha256_of(&body).to_string();
            state.manifests.remove(&(repo.to_owned(), digest));
        }
        if let Some(tags) = state.tags.get_mut(repo) {
            tags.retain(|t| t != tag);
        }
    }

    /// Tag-list pages link to the next page at `origin` (an absolute URL), not a bare path.
    pub fn link_tag_pages_to(&self, origin: &str) {
        self.state.lock().unwrap().tag_link_origin = Some(origin.to_owned());
    }

    /// Serves referrers lists `per_page` descriptors at a time, linking each page to the next.
    pub fn paginate_referrers(&self, per_page: usize) {
        self.state.lock().unwrap().referrers_page_size = Some(per_page);
    }

    /// Serves referrers lists one descriptor a page, and answers 404 for `page` and later.
    pub fn lose_referrer_pages_from(&self, page: usize) {
        let mut state = self.state.lock().unwrap();
        state.referrers_page_size = Some(1);
        state.referrers_missing_from_page = Some(page);
    }

    /// Serves referrers lists one descriptor a page, every page linking to `?page=0`.
    pub fn loop_referrer_links(&self) {
        let mut state = self.state.lock().unwrap();
        state.referrers_page_size = Some(1);
        state.referrers_link_loop = true;
    }

    /// Serves the referrers API; `subject`'s list in `repo` gains a descriptor of
    /// `artifact_type` (digest `referrer`).
    pub fn put_referrer(&self, repo: &str, subject: &str, referrer: &str, artifact_type: &str) {
        let mut state = self.state.lock().unwrap();
        state.referrers_api = true;
        state
            .referrers
            .entry((repo.to_owned(), subject.to_owned()))
            .or_default()
            .push(serde_json::json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": referrer,
                "size": 512,
                "artifactType": artifact_type,
            }));
    }

    pub fn fault(&self, path_contains: &str, fault: Fault) {
        self.state()
            .faults
            .push((path_contains.to_owned(), fault, None));
    }

    /// Injects `fault` on the next `times` matching requests only; faults added earlier
    /// for the same path take precedence, later ones apply once this one is used up.
    pub fn fault_times(&self, path_contains: &str, fault: Fault, times: usize) {
        if times > 0 {
            self.state()
                .faults
                .push((path_contains.to_owned(), fault, Some(times)));
        }
    }

    pub fn clear_faults(&self) {
        self.state().faults.clear();
    }

    pub fn require_token(&self, token: &str, basic_credentials: Option<(&str, &str)>) {
        let mut state = self.state();
        state.required_token = Some(token.to_owned());
        state.token_credentials = basic_credentials.map(|(u, p)| basic(u, p));
    }

    /// Names `realm` (a full URL) as the token realm in this registry's challenges.
    pub fn token_realm(&self, realm: &str) {
        self.state().realm = Some(realm.to_owned());
    }

    pub fn redirect_blobs_to(&self, other: &FakeRegistry) {
        self.state().redirect_blobs_to = Some(other.url());
    }

    /// Bytes sent so far by `Fault::EndlessBody` responses (what a reader took, plus buffers).
    pub fn endless_bytes_sent(&self) -> u64 {
        self.state()
            .endless_bytes_sent
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state().requests.clone()
    }

    /// Requests (any method) whose path contains `path_contains`.
    pub fn hits(&self, path_contains: &str) -> usize {
        self.state()
            .requests
            .iter()
            .filter(|r| r.path.contains(path_contains))
            .count()
    }

    /// Requests with `method` whose path contains `path_contains`.
    pub fn hits_with(&self, method: Method, path_contains: &str) -> usize {
        self.state()
            .requests
            .iter()
            .filter(|r| r.method == method && r.path.contains(path_contains))
            .count()
    }
}

pub fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

fn full(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let body = body.into();
    Response::builder()
        .status(status)
        .header("content-length", body.len())
        .body(Full::new(body).map_err(|never| match never {}).boxed())
        .unwrap()
}

fn oci_error(status: StatusCode, code: &str) -> Response<Body> {
    let mut response = full(
        status,
        format!(r#"{{"errors":[{{"code":"{code}","message":"fake registry says {code}"}}]}}"#),
    );
    response
        .headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    response
}

async fn handle(
    state: Arc<Mutex<State>>,
    addr: SocketAddr,
    req: Request<Incoming>,
) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().map(str::to_owned);
    let headers = req.headers().clone();
    let backend = state.lock().unwrap().backend.clone();
    let endless_counter = state.lock().unwrap().endless_bytes_sent.clone();
    let realm = state
        .lock()
        .unwrap()
        .realm
        .clone()
        .unwrap_or_else(|| format!("http://{addr}/token"));
    let (fault, required_token, token_credentials, redirect) = {
        let mut s = state.lock().unwrap();
        s.requests.push(RecordedRequest {
            method: method.clone(),
            path: path.clone(),
            query: query.clone(),
            headers: headers.clone(),
        });
        let matching = s
            .faults
            .iter()
            .position(|(p, _, _)| path.contains(p.as_str()));
        let fault = matching.map(|at| {
            let (_, fault, remaining) = &mut s.faults[at];
            let fault = fault.clone();
            if let Some(remaining) = remaining {
                *remaining -= 1;
                if *remaining == 0 {
                    s.faults.remove(at);
                }
            }
            fault
        });
        (
            fault,
            s.required_token.clone(),
            s.token_credentials.clone(),
            s.redirect_blobs_to.clone(),
        )
    };

    if let Some(Fault::EndlessBody) = &fault {
        return endless_body(endless_counter);
    }
    if path == "/token" {
        if let Some(expected) = &token_credentials
            && headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(expected.as_str())
        {
            return oci_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
        }
        let token = required_token.unwrap_or_default();
        return full(
            StatusCode::OK,
            format!(r#"{{"token":"{token}","expires_in":300}}"#),
        );
    }

    match &fault {
        Some(Fault::Status(code)) => {
            let status = StatusCode::from_u16(*code).unwrap();
            return oci_error(status, "FAULT");
        }
        Some(Fault::RetryAfter { status, seconds }) => {
            let mut response = oci_error(StatusCode::from_u16(*status).unwrap(), "TOOMANYREQUESTS");
            response
                .headers_mut()
                .insert("retry-after", seconds.to_string().parse().unwrap());
            return response;
        }
        Some(Fault::HangBeforeHeaders) => std::future::pending::<()>().await,
        Some(Fault::DelayHeaders(delay)) => tokio::time::sleep(*delay).await,
        _ => {}
    }

    if let Some(object) = path.strip_prefix("/objects/") {
        // Redirect target: object storage that must never see the registry's token.
        let blob = state.lock().unwrap().blobs.get(object).cloned();
        return match blob {
            Some(body) => body_response(body, None, fault.as_ref(), &headers),
            None => oci_error(StatusCode::NOT_FOUND, "BLOB_UNKNOWN"),
        };
    }

    if let Some(token) = &required_token
        && path.starts_with("/v2/")
    {
        let expected = format!("Bearer {token}");
        if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
            let mut response = oci_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
            let repo = path
                .strip_prefix("/v2/")
                .and_then(|rest| {
                    rest.rsplit_once("/manifests/")
                        .or_else(|| rest.rsplit_once("/blobs/"))
                        .map(|(n, _)| n.to_owned())
                })
                .unwrap_or_default();
            response.headers_mut().insert(
                "www-authenticate",
                format!(r#"Bearer realm="{realm}",service="fake",scope="repository:{repo}:pull""#)
                    .parse()
                    .unwrap(),
            );
            return response;
        }
    }

    if let Some(backend) = backend {
        return proxy_to(
            &backend,
            &method,
            &path,
            query.as_deref(),
            &headers,
            fault.as_ref(),
        )
        .await;
    }
    if path == "/v2/" {
        return full(StatusCode::OK, "{}");
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        return oci_error(StatusCode::NOT_FOUND, "NOT_FOUND");
    };
    if let Some(repo) = rest.strip_suffix("/tags/list") {
        let (tags, link_origin) = {
            let state = state.lock().unwrap();
            (state.tags.get(repo).cloned(), state.tag_link_origin.clone())
        };
        return match tags {
            None => oci_error(StatusCode::NOT_FOUND, "NAME_UNKNOWN"),
            Some(mut tags) => {
                tags.sort();
                let n: Option<usize> =
                    query_param(query.as_deref(), "n").and_then(|n| n.parse().ok());
                let last = query_param(query.as_deref(), "last");
                let mut tags: Vec<String> = tags
                    .into_iter()
                    .filter(|t| last.as_ref().is_none_or(|l| t > l))
                    .collect();
                let mut next = None;
                if let Some(n) = n
                    && tags.len() > n
                {
                    tags.truncate(n);
                    // Like distribution: a path (or, if asked, a URL) with `last` and `n`.
                    next = Some(format!(
                        "<{}/v2/{repo}/tags/list?last={}&n={n}>; rel=\"next\"",
                        link_origin.as_deref().unwrap_or(""),
                        tags[n - 1]
                    ));
                }
                let body = serde_json::json!({"name": repo, "tags": tags}).to_string();
                let mut response = full(StatusCode::OK, body);
                if let Some(next) = next {
                    response.headers_mut().insert("link", next.parse().unwrap());
                }
                response
            }
        };
    }
    if let Some((repo, subject)) = rest.rsplit_once("/referrers/") {
        let (api, descriptors, page_size, link_loop, missing_from) = {
            let state = state.lock().unwrap();
            let descriptors = state
                .referrers
                .get(&(repo.to_owned(), subject.to_owned()))
                .cloned()
                .unwrap_or_default();
            (
                state.referrers_api,
                descriptors,
                state.referrers_page_size,
                state.referrers_link_loop,
                state.referrers_missing_from_page,
            )
        };
        if !api {
            return full(StatusCode::NOT_FOUND, "404 page not found\n");
        }
        let filter = query_param(query.as_deref(), "artifactType");
        let mut manifests: Vec<_> = descriptors
            .into_iter()
            .filter(|d| {
                filter
                    .as_ref()
                    .is_none_or(|f| d["artifactType"] == f.as_str())
            })
            .collect();
        let mut next_page = None;
        if let Some(per_page) = page_size {
            let page: usize = query_param(query.as_deref(), "page")
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            if missing_from.is_some_and(|first_missing| page >= first_missing) {
                return oci_error(StatusCode::NOT_FOUND, "NAME_UNKNOWN");
            }
            let all = std::mem::take(&mut manifests);
            manifests = all
                .iter()
                .skip(page * per_page)
                .take(per_page)
                .cloned()
                .collect();
            if all.len() > (page + 1) * per_page {
                let keep_filter = query
                    .as_deref()
                    .unwrap_or("")
                    .split('&')
                    .filter(|pair| pair.starts_with("artifactType="))
                    .map(|pair| format!("&{pair}"))
                    .collect::<String>();
                let next = if link_loop { 0 } else { page + 1 };
                next_page = Some(format!(
                    "</v2/{repo}/referrers/{subject}?page={next}{keep_filter}>; rel=\"next\""
                ));
            }
        }
        let body = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": manifests,
        })
        .to_string();
        let mut response = full(StatusCode::OK, body);
        response.headers_mut().insert(
            "content-type",
            "application/vnd.oci.image.index.v1+json".parse().unwrap(),
        );
        if filter.is_some() {
            response
                .headers_mut()
                .insert("oci-filters-applied", "artifactType".parse().unwrap());
        }
        if let Some(link) = next_page {
            response.headers_mut().insert("link", link.parse().unwrap());
        }
        return response;
    }
    if let Some((repo, reference)) = rest.rsplit_once("/manifests/") {
        let found = state
            .lock()
            .unwrap()
            .manifests
            .get(&(repo.to_owned(), reference.to_owned()))
            .cloned();
        let quota = {
            let mut s = state.lock().unwrap();
            s.quota.as_mut().map(|quota| {
                let exhausted = method == Method::GET && quota.remaining == 0;
                if method == Method::GET && !exhausted {
                    quota.remaining -= 1;
                }
                (exhausted, *quota)
            })
        };
        let with_quota = |mut response: Response<Body>| {
            if let Some((_, quota)) = quota {
                let headers = response.headers_mut();
                let window = quota.window_secs;
                headers.insert(
                    "ratelimit-limit",
                    format!("{};w={window}", quota.limit).parse().unwrap(),
                );
                headers.insert(
                    "ratelimit-remaining",
                    format!("{};w={window}", quota.remaining).parse().unwrap(),
                );
            }
            response
        };
        if let Some((true, quota)) = quota {
            let mut response =
                with_quota(oci_error(StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS"));
            response.headers_mut().insert(
                "retry-after",
                quota.retry_after_secs.to_string().parse().unwrap(),
            );
            return response;
        }
        let Some((media_type, body)) = found else {
            return with_quota(oci_error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN"));
        };
        let mut response = body_response(body, Some(&media_type), fault.as_ref(), &headers);
        if method == Method::HEAD {
            *response.body_mut() = head_body();
        }
        return with_quota(response);
    }
    if let Some((_, digest)) = rest.rsplit_once("/blobs/") {
        let blob = state.lock().unwrap().blobs.get(digest).cloned();
        let Some(body) = blob else {
            return oci_error(StatusCode::NOT_FOUND, "BLOB_UNKNOWN");
        };
        if let Some(target) = redirect
            && method == Method::GET
        {
            return Response::builder()
                .status(StatusCode::TEMPORARY_REDIRECT)
                .header("location", format!("{target}/objects/{digest}"))
                .body(
                    Full::new(Bytes::new())
                        .map_err(|never| match never {})
                        .boxed(),
                )
                .unwrap();
        }
        let mut response = body_response(body, None, fault.as_ref(), &headers);
        if method == Method::HEAD {
            *response.body_mut() = head_body();
        }
        return response;
    }
    oci_error(StatusCode::NOT_FOUND, "NOT_FOUND")
}

fn query_param(query: Option<&str>, key: &str) -> Option<String> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| percent_decoded(v))
}

fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A 200 (or 206 for a Range) carrying `body`, shaped by `fault`.
fn body_response(
    body: Bytes,
    media_type: Option<&str>,
    fault: Option<&Fault>,
    headers: &HeaderMap,
) -> Response<Body> {
    let digest = Digest::sha256_of(&body);
    let mut status = StatusCode::OK;
    let mut body = match fault {
        Some(Fault::FlipByte { at } | Fault::FlipByteThenPause { at, .. }) if !body.is_empty() => {
            let mut bytes = body.to_vec();
            let at = (*at).min(bytes.len() - 1);
            bytes[at] ^= 0xff;
            Bytes::from(bytes)
        }
        _ => body,
    };
    let mut content_range = None;
    if !matches!(fault, Some(Fault::IgnoreRange))
        && let Some(range) = headers.get("range").and_then(|v| v.to_str().ok())
        && let Some(start) = range
            .strip_prefix("bytes=")
            .and_then(|r| r.strip_suffix('-'))
            .and_then(|s| s.parse::<usize>().ok())
        && start < body.len()
    {
        content_range = Some(format!("bytes {start}-{}/{}", body.len() - 1, body.len()));
        body = body.slice(start..);
        status = StatusCode::PARTIAL_CONTENT;
    }
    let announced_digest = match fault {
        Some(Fault::WrongDigestHeader) => Digest::sha256_of(b"something else"),
        _ => digest,
    };
    let mut builder = Response::builder().status(status);
    if !matches!(fault, Some(Fault::NoContentLength)) {
        builder = builder.header("content-length", body.len());
    }
    let mut builder = builder
        .header("docker-content-digest", announced_digest.to_string())
        .header(
            "content-type",
            media_type.unwrap_or("application/octet-stream"),
        );
    if let Some(content_range) = content_range {
        builder = builder.header("content-range", content_range);
    }
    let stream_body: Body = match fault.cloned() {
        Some(Fault::Corrupt) => {
            let mut bytes = body.to_vec();
            if let Some(last) = bytes.last_mut() {
                *last ^= 0xff;
            }
            Full::new(Bytes::from(bytes))
                .map_err(|never| match never {})
                .boxed()
        }
        Some(Fault::HangMidBody { after }) => staged(body, after, Stage::Hang),
        Some(Fault::ResetMidBody { after }) => staged(body, after, Stage::Reset),
        Some(Fault::Truncate { after }) => staged(body, after, Stage::End),
        Some(
            Fault::PauseMidBody { after, release }
            | Fault::FlipByteThenPause { after, release, .. },
        ) => staged(body, after, Stage::WaitFor(release)),
        Some(Fault::Drip { chunk, delay }) => {
            let chunk = chunk.max(1);
            let stream = futures_util::stream::unfold(0usize, move |sent| {
                let body = body.clone();
                async move {
                    if sent >= body.len() {
                        return None;
                    }
                    tokio::time::sleep(delay).await;
                    let next = body.slice(sent..(sent + chunk).min(body.len()));
                    Some((Ok::<_, std::io::Error>(Frame::data(next)), sent + chunk))
                }
            });
            BodyExt::boxed(StreamBody::new(stream))
        }
        Some(Fault::NoContentLength) => {
            let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = (0..body.len())
                .step_by(64 * 1024)
                .map(|at| {
                    Ok(Frame::data(
                        body.slice(at..(at + 64 * 1024).min(body.len())),
                    ))
                })
                .collect();
            BodyExt::boxed(StreamBody::new(futures_util::stream::iter(frames)))
        }
        _ => Full::new(body).map_err(|never| match never {}).boxed(),
    };
    builder.body(stream_body).unwrap()
}

/// A 200 whose chunked body of spaces never ends; every chunk sent is counted.
fn endless_body(counter: Arc<std::sync::atomic::AtomicU64>) -> Response<Body> {
    let chunk = Bytes::from(vec![b' '; 64 * 1024]);
    let stream = futures_util::stream::repeat_with(move || {
        counter.fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
        Ok::<_, std::io::Error>(Frame::data(chunk.clone()))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .unwrap()
}

enum Stage {
    Hang,
    Reset,
    End,
    WaitFor(Arc<Notify>),
}

/// Sends the first `after` bytes, then does what `stage` says with the rest.
fn staged(body: Bytes, after: usize, stage: Stage) -> Body {
    let first = body.slice(..after.min(body.len()));
    let rest = body.slice(after.min(body.len())..);
    let stream = futures_util::stream::unfold((0u8, Some(stage)), move |(step, stage)| {
        let first = first.clone();
        let rest = rest.clone();
        async move {
            match step {
                0 => Some((Ok(Frame::data(first)), (1, stage))),
                _ => match stage? {
                    Stage::Hang => {
                        std::future::pending::<()>().await;
                        None
                    }
                    Stage::Reset => Some((
                        Err(std::io::Error::other("fault: reset mid-body")),
                        (2, None),
                    )),
                    Stage::End => None,
                    Stage::WaitFor(release) => {
                        release.notified().await;
                        Some((Ok(Frame::data(rest)), (2, None)))
                    }
                },
            }
        }
    });
    BodyExt::boxed(StreamBody::new(stream))
}

/// An empty body of unknown size, so hyper keeps the Content-Length a GET would have.
fn head_body() -> Body {
    BodyExt::boxed(StreamBody::new(futures_util::stream::empty::<
        Result<Frame<Bytes>, std::io::Error>,
    >()))
}

/// Proxy mode: fetches the request from a real registry (whole body, no Range), then
/// answers it here so the fault applies to real content.
async fn proxy_to(
    backend: &str,
    method: &Method,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    fault: Option<&Fault>,
) -> Response<Body> {
    let mut url = format!("{backend}{path}");
    if let Some(query) = query {
        url.push('?');
        url.push_str(query);
    }
    let mut request = reqwest::Client::new().request(method.clone(), &url);
    for name in ["accept", "authorization"] {
        for value in headers.get_all(name) {
            request = request.header(name, value.clone());
        }
    }
    let upstream = match request.send().await {
        Ok(upstream) => upstream,
        Err(e) => return oci_error(StatusCode::BAD_GATEWAY, &format!("BACKEND_DOWN: {e}")),
    };
    let status = upstream.status();
    let passed_headers = upstream.headers().clone();
    let media_type = passed_headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = upstream.bytes().await.unwrap_or_default();
    if status != StatusCode::OK || method == Method::HEAD {
        let mut response = full(status, body);
        for (name, value) in passed_headers.iter() {
            let length_of_empty_body = name == "content-length" && method != Method::HEAD;
            if !length_of_empty_body && name != "transfer-encoding" {
                response.headers_mut().insert(name.clone(), value.clone());
            }
        }
        if method == Method::HEAD {
            *response.body_mut() = head_body();
        }
        return response;
    }
    let mut response = body_response(body, media_type.as_deref(), fault, headers);
    for (name, value) in passed_headers.iter() {
        if name.as_str().starts_with("www-authenticate") {
            response.headers_mut().insert(name.clone(), value.clone());
        }
    }
    response
}
