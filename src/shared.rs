//! The shared store: a second cache tier in an S3-API bucket that every AZ replica uses. Blobs,
//! manifests and tag records go up after they are verified and committed locally (in the
//! background, streamed); a replica's miss looks here before the upstreams. The store failing
//! never fails a pull: it has a breaker of its own, and every read is verified by the caller.

pub(crate) mod inventory;
pub(crate) mod pin_set;

use crate::oci::Digest;
use crate::upstream::breaker::{Admission, Breaker, BreakerConfig, BreakerState, Transition};
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use object_store::path::Path as ObjectPath;
use object_store::{Attribute, Attributes, ObjectStore, ObjectStoreExt, PutOptions, PutPayload};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Consecutive failures that open the store's breaker, and how long it stays open.
const BREAKER_THRESHOLD: u32 = 3;
const BREAKER_COOLDOWN: Duration = Duration::from_secs(15);

/// Uploads running at once, and waiting at most; beyond that new uploads are dropped (logged
/// and counted): the next replica to fetch the blob uploads it again.
const UPLOADS_AT_ONCE: usize = 2;
const UPLOADS_QUEUED: usize = 256;

/// How long a read waits by default for the store's first answer, and then for each piece of
/// a blob body, before the miss goes to the upstreams (`shared_store_answer_timeout`).
pub(crate) const DEFAULT_ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// Multipart upload part size (S3's minimum is 5 MiB) and parts in flight per upload.
const UPLOAD_PART_BYTES: usize = 8 * 1024 * 1024;
const UPLOAD_PARTS_IN_FLIGHT: usize = 1;

/// Where the store is and how to reach it (from `shared_store` and the `AWS_*` settings).
#[derive(Clone)]
pub struct SharedStoreConfig {
    /// `s3://BUCKET/PREFIX` as given.
    pub url: String,
    pub bucket: String,
    pub prefix: String,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// Per-request timeout (the store is a cache: a slow store is skipped, not waited for).
    pub request_timeout: Duration,
    /// Longest a read waits for the store's answer, and then between pieces of a blob body,
    /// before the request carries on without the store (which counts as a store failure).
    pub answer_timeout: Duration,
    /// Answer blob GETs the store holds with a redirect to a presigned URL.
    pub blob_redirect: bool,
}

impl std::fmt::Debug for SharedStoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedStoreConfig")
            .field("url", &self.url)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl SharedStoreConfig {
    /// The store at `url` (`s3://BUCKET/PREFIX`) with endpoint, region and keys from the
    /// standard `AWS_*` variables.
    pub fn from_env(url: &str, request_timeout: Duration) -> Result<SharedStoreConfig, StoreError> {
        let (bucket, prefix) = SharedStoreConfig::parse_url(url)?;
        let env = |names: &[&str]| {
            names
                .iter()
                .find_map(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
        };
        Ok(SharedStoreConfig {
            url: url.to_owned(),
            bucket,
            prefix,
            endpoint: env(&["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT"]),
            region: env(&["AWS_REGION", "AWS_DEFAULT_REGION"]),
            access_key_id: env(&["AWS_ACCESS_KEY_ID"]),
            secret_access_key: env(&["AWS_SECRET_ACCESS_KEY"]),
            request_timeout,
            answer_timeout: DEFAULT_ANSWER_TIMEOUT.min(request_timeout),
            blob_redirect: false,
        })
    }

    /// Parses `s3://BUCKET[/PREFIX]`.
    pub(crate) fn parse_url(url: &str) -> Result<(String, String), StoreError> {
        let bad = |reason: String| StoreError::BadUrl {
            url: url.to_owned(),
            reason,
        };
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| bad("expected s3://BUCKET/PREFIX".to_owned()))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty()
            || !bucket
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.'))
        {
            return Err(bad(format!("{bucket:?} is not an S3 bucket name")));
        }
        Ok((bucket.to_owned(), prefix.trim_matches('/').to_owned()))
    }
}

/// How an operation on the shared store failed, with the error underneath as its source
/// (and in the message, as pingora's errors do, so a log line alone tells the whole story).
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The store's URL is not `s3://BUCKET[/PREFIX]`: the operator's configuration.
    #[error("{reason}")]
    BadUrl { url: String, reason: String },
    /// The store (or the object_store client in front of it) failed.
    #[error("the shared store failed {operation}: {cause}")]
    Store {
        operation: String,
        #[source]
        cause: Arc<object_store::Error>,
    },
    /// A local file to upload could not be read.
    #[error("reading {} for an upload: {cause}", .path.display())]
    LocalFile {
        path: std::path::PathBuf,
        #[source]
        cause: Arc<std::io::Error>,
    },
    /// A body from the store went quiet.
    #[error("no data from the store for {0:?}")]
    Idle(Duration),
    /// A body from the store ended before its announced length.
    #[error("the body ended at {received} of {size} bytes")]
    Truncated { received: u64, size: u64 },
    /// Not attempted: the store's breaker is open.
    #[error("skipped: the store's breaker is open")]
    BreakerOpen,
    /// The task reading a local file for an upload failed.
    #[error("an upload's read task failed: {0}")]
    Task(#[source] Arc<tokio::task::JoinError>),
}

impl StoreError {
    fn store(operation: impl Into<String>, cause: object_store::Error) -> Self {
        StoreError::Store {
            operation: operation.into(),
            cause: Arc::new(cause),
        }
    }
}

/// What a read from the store found.
pub enum StoreRead<T> {
    Found(T),
    Missing,
    /// The store failed or is skipped (breaker open): carry on without it.
    Unavailable,
}

/// A blob body from the store.
pub(crate) struct StoreBody {
    pub(crate) size: u64,
    pub(crate) chunks: BoxStream<'static, Result<Bytes, StoreError>>,
}

/// Counters for `/admin/upstreams` and `/metrics`.
#[derive(Default)]
pub(crate) struct StoreCounters {
    pub(crate) hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) bytes_read: AtomicU64,
    pub(crate) bytes_uploaded: AtomicU64,
    pub(crate) uploads: AtomicU64,
    pub(crate) upload_failures: AtomicU64,
    pub(crate) uploads_dropped: AtomicU64,
    pub(crate) corrupt_objects: AtomicU64,
}

pub struct SharedStore {
    config: SharedStoreConfig,
    pub(crate) store: Arc<dyn ObjectStore>,
    signer: Option<Arc<object_store::aws::AmazonS3>>,
    /// The same breaker as an upstream's: a failing store is skipped for a cooldown, then
    /// tried again.
    breaker: Breaker,
    upload_slots: Arc<tokio::sync::Semaphore>,
    queued: AtomicU64,
    /// Tag records uploaded lately (key -> digest): a confirmation of an unchanged tag is
    /// uploaded at most once a minute per replica.
    recent_tag_uploads: moka::sync::Cache<String, String>,
    pub(crate) counters: StoreCounters,
    /// Uploads and clean-ups run as tracked background tasks (shared with the pull flow).
    pub(crate) tasks: Arc<crate::tasks::TaskSupervisor>,
}

impl SharedStore {
    pub fn new(config: SharedStoreConfig) -> Result<SharedStore, StoreError> {
        let mut builder = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(&config.bucket)
            .with_region(config.region.clone().unwrap_or_else(|| "us-east-1".into()))
            .with_virtual_hosted_style_request(false)
            .with_client_options(
                object_store::ClientOptions::new()
                    .with_timeout(config.request_timeout)
                    .with_connect_timeout(Duration::from_secs(3)),
            )
            .with_retry(object_store::RetryConfig {
                max_retries: 1,
                retry_timeout: config.request_timeout,
                ..Default::default()
            });
        if let Some(endpoint) = &config.endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"));
        }
        if let Some(key) = &config.access_key_id {
            builder = builder.with_access_key_id(key);
        }
        if let Some(secret) = &config.secret_access_key {
            builder = builder.with_secret_access_key(secret);
        }
        let s3 = Arc::new(
            builder
                .build()
                .map_err(|e| StoreError::store(format!("to set up {}", config.url), e))?,
        );
        Ok(SharedStore {
            signer: Some(s3.clone()),
            store: s3,
            config,
            // After the cooldown every request may try the store again (a probe that never
            // reports, such as a read that stops early, must not keep the tier off), and a
            // failure then reopens it for the same cooldown.
            breaker: Breaker::new(BreakerConfig {
                threshold: BREAKER_THRESHOLD,
                cooldown: BREAKER_COOLDOWN,
                max_cooldown: BREAKER_COOLDOWN,
                probe_timeout: Duration::ZERO,
            }),
            upload_slots: Arc::new(tokio::sync::Semaphore::new(UPLOADS_AT_ONCE)),
            queued: AtomicU64::new(0),
            recent_tag_uploads: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(60))
                .build(),
            counters: StoreCounters::default(),
            tasks: Arc::default(),
        })
    }

    /// The same store, its uploads and clean-ups run as tasks of `tasks` (the server's, so
    /// shutdown waits for them).
    pub(crate) fn supervised_by(mut self, tasks: Arc<crate::tasks::TaskSupervisor>) -> Self {
        self.tasks = tasks;
        self
    }

    pub fn url(&self) -> &str {
        &self.config.url
    }

    pub fn blob_redirect(&self) -> bool {
        self.config.blob_redirect
    }

    pub(crate) fn path(&self, relative: &str) -> ObjectPath {
        if self.config.prefix.is_empty() {
            ObjectPath::from(relative)
        } else {
            ObjectPath::from(format!("{}/{relative}", self.config.prefix))
        }
    }

    pub(crate) fn blob_path(&self, digest: &Digest) -> ObjectPath {
        self.path(&format!(
            "blobs/{}/{}",
            digest.algorithm().as_str(),
            digest.hex()
        ))
    }

    pub(crate) fn manifest_path(&self, digest: &Digest) -> ObjectPath {
        self.path(&format!(
            "manifests/{}/{}",
            digest.algorithm().as_str(),
            digest.hex()
        ))
    }

    /// The marker that `registry` served or confirmed a digest (an empty object).
    pub(crate) fn provenance_path(
        &self,
        kind: crate::cache::provenance::ContentKind,
        digest: &Digest,
        registry: &str,
    ) -> ObjectPath {
        let kind = match kind {
            crate::cache::provenance::ContentKind::Blob => "blobs",
            crate::cache::provenance::ContentKind::Manifest => "manifests",
        };
        self.path(&format!(
            "provenance/{kind}/{}/{}/{registry}",
            digest.algorithm().as_str(),
            digest.hex()
        ))
    }

    /// Whether an object exists (a HEAD), within the answer timeout.
    pub async fn exists(&self, path: &ObjectPath) -> StoreRead<()> {
        if !self.admit() {
            return StoreRead::Unavailable;
        }
        match self
            .within_answer_timeout("checking an object", self.store.head(path))
            .await
        {
            Some(Ok(_)) => {
                self.record_success();
                StoreRead::Found(())
            }
            Some(Err(object_store::Error::NotFound { .. })) => {
                self.record_success();
                StoreRead::Missing
            }
            Some(Err(e)) => {
                self.record_failure("checking an object", &e);
                StoreRead::Unavailable
            }
            None => StoreRead::Unavailable,
        }
    }

    /// A tag record's object: registry and repository as path segments, the tag last.
    pub(crate) fn tag_path(&self, registry: &str, repository: &str, tag: &str) -> ObjectPath {
        self.path(&format!("tags/{registry}/{repository}/_tag/{tag}.json"))
    }

    /// Whether requests may use the store now (its breaker is closed, or its cooldown is
    /// over and this request is the probe).
    fn admit(&self) -> bool {
        let (admission, transition) = self.breaker.admit();
        self.log_transition(transition);
        admission != Admission::Rejected
    }

    fn record_success(&self) {
        let transition = self.breaker.record_success();
        self.log_transition(transition);
    }

    fn record_failure(&self, what: &str, error: &dyn std::fmt::Display) {
        self.counters.errors.fetch_add(1, Ordering::Relaxed);
        match self.breaker.record_failure(1) {
            Some(transition) if transition.to == BreakerState::Open => {
                let cooldown = self.breaker.snapshot().retry_in;
                tracing::warn!(store = %self.config.url, %what, error = %error, ?cooldown, "shared store failing: skipped until the cooldown ends");
            }
            _ => {
                tracing::warn!(store = %self.config.url, %what, error = %error, "shared store request failed; carrying on without it");
            }
        }
    }

    /// Skipped now: the breaker opened and its cooldown is not over.
    fn cooling_down(&self) -> bool {
        let breaker = self.breaker.snapshot();
        breaker.state == BreakerState::Open && breaker.retry_in.is_some_and(|left| !left.is_zero())
    }

    fn log_transition(&self, transition: Option<Transition>) {
        if let Some(Transition { from, to }) = transition {
            tracing::info!(store = %self.config.url, from = from.as_str(), to = to.as_str(), "shared store breaker");
        }
    }

    /// `request`'s answer, or `None` (a store failure, recorded) when the store has not
    /// answered within `answer_timeout`: a cache tier must not slow a miss down.
    async fn within_answer_timeout<T>(
        &self,
        what: &str,
        request: impl std::future::Future<Output = T>,
    ) -> Option<T> {
        match tokio::time::timeout(self.config.answer_timeout, request).await {
            Ok(answer) => Some(answer),
            Err(_) => {
                let waited = format!("no answer within {:?}", self.config.answer_timeout);
                self.record_failure(what, &waited);
                None
            }
        }
    }

    /// The breaker's state for `/admin/upstreams`.
    pub fn status(&self) -> serde_json::Value {
        let breaker = self.breaker.snapshot();
        let state = if self.cooling_down() {
            "open"
        } else if breaker.consecutive_failures > 0 {
            "failing"
        } else {
            "closed"
        };
        let c = &self.counters;
        let load = |n: &AtomicU64| n.load(Ordering::Relaxed);
        serde_json::json!({
            "url": self.config.url,
            "endpoint": self.config.endpoint,
            "state": state,
            "consecutive_failures": breaker.consecutive_failures,
            "hits": load(&c.hits),
            "misses": load(&c.misses),
            "errors": load(&c.errors),
            "bytes_read": load(&c.bytes_read),
            "bytes_uploaded": load(&c.bytes_uploaded),
            "uploads": load(&c.uploads),
            "upload_failures": load(&c.upload_failures),
            "uploads_dropped": load(&c.uploads_dropped),
            "corrupt_objects": load(&c.corrupt_objects),
        })
    }

    /// Reads so far: hits, misses and errors.
    pub(crate) fn read_totals(&self) -> [u64; 3] {
        let c = &self.counters;
        [&c.hits, &c.misses, &c.errors].map(|n| n.load(Ordering::Relaxed))
    }

    /// Brings the Prometheus counters up to this store's counts (at each scrape).
    pub(crate) fn mirror_into(&self, metrics: &crate::metrics::Metrics) {
        use crate::metrics::{StoreEventLabels, catch_up};
        let c = &self.counters;
        let label = |event: &str| StoreEventLabels {
            event: event.to_owned(),
        };
        let load = |n: &AtomicU64| n.load(Ordering::Relaxed);
        for (event, count) in [("hit", &c.hits), ("miss", &c.misses), ("error", &c.errors)] {
            catch_up(
                &metrics.store_reads.get_or_create(&label(event)),
                load(count),
            );
        }
        for (event, count) in [
            ("ok", &c.uploads),
            ("failed", &c.upload_failures),
            ("dropped", &c.uploads_dropped),
        ] {
            catch_up(
                &metrics.store_uploads.get_or_create(&label(event)),
                load(count),
            );
        }
        for (event, count) in [("read", &c.bytes_read), ("uploaded", &c.bytes_uploaded)] {
            catch_up(
                &metrics.store_bytes.get_or_create(&label(event)),
                load(count),
            );
        }
        catch_up(&metrics.store_corrupt_objects, load(&c.corrupt_objects));
        metrics
            .store_breaker_open
            .set(i64::from(self.cooling_down()));
    }

    /// Opens a blob for streaming.
    pub(crate) async fn open_blob(&self, digest: &Digest) -> StoreRead<StoreBody> {
        if !self.admit() {
            return StoreRead::Unavailable;
        }
        let Some(answer) = self
            .within_answer_timeout("reading a blob", self.store.get(&self.blob_path(digest)))
            .await
        else {
            return StoreRead::Unavailable;
        };
        match answer {
            // A success (and a hit) once the whole body has arrived: `note_read_success`.
            Ok(result) => {
                let size = result.meta.size;
                let chunks = result
                    .into_stream()
                    .map(|chunk| chunk.map_err(|e| StoreError::store("reading a blob body", e)))
                    .boxed();
                let chunks = with_idle_timeout(chunks, self.config.answer_timeout);
                StoreRead::Found(StoreBody { size, chunks })
            }
            Err(object_store::Error::NotFound { .. }) => {
                self.record_success();
                self.counters.misses.fetch_add(1, Ordering::Relaxed);
                StoreRead::Missing
            }
            Err(e) => {
                self.record_failure("reading a blob", &e);
                StoreRead::Unavailable
            }
        }
    }

    /// Notes that a blob's body arrived whole: a hit, and a success for the breaker (counted
    /// only now, so a store whose bodies stall keeps failing until its breaker opens).
    pub(crate) fn note_read_success(&self) {
        self.record_success();
        self.counters.hits.fetch_add(1, Ordering::Relaxed);
    }

    /// Notes that `chunks` of a blob stopped mid-way (the store went away).
    pub(crate) fn note_read_failure(&self, error: &StoreError) {
        self.record_failure("reading a blob body", &error);
    }

    pub(crate) fn note_bytes_read(&self, bytes: u64) {
        self.counters.bytes_read.fetch_add(bytes, Ordering::Relaxed);
    }

    /// A small object (manifest, tag record) and its content type.
    pub(crate) async fn get_small(
        &self,
        path: &ObjectPath,
        limit: usize,
    ) -> StoreRead<(Bytes, Option<String>)> {
        if !self.admit() {
            return StoreRead::Unavailable;
        }
        self.within_answer_timeout("reading an object", self.read_small(path, limit))
            .await
            .unwrap_or(StoreRead::Unavailable)
    }

    async fn read_small(
        &self,
        path: &ObjectPath,
        limit: usize,
    ) -> StoreRead<(Bytes, Option<String>)> {
        let result = match self.store.get(path).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => {
                self.record_success();
                self.counters.misses.fetch_add(1, Ordering::Relaxed);
                return StoreRead::Missing;
            }
            Err(e) => {
                self.record_failure("reading an object", &e);
                return StoreRead::Unavailable;
            }
        };
        if result.meta.size > limit as u64 {
            self.counters
                .corrupt_objects
                .fetch_add(1, Ordering::Relaxed);
            tracing::error!(store = %self.config.url, %path, size = result.meta.size, "shared store object larger than allowed; ignoring it");
            return StoreRead::Missing;
        }
        let content_type = result
            .attributes
            .get(&Attribute::ContentType)
            .map(|v| v.to_string());
        match result.bytes().await {
            Ok(bytes) => {
                self.record_success();
                self.counters.hits.fetch_add(1, Ordering::Relaxed);
                self.note_bytes_read(bytes.len() as u64);
                StoreRead::Found((bytes, content_type))
            }
            Err(e) => {
                self.record_failure("reading an object body", &e);
                StoreRead::Unavailable
            }
        }
    }

    /// Reports an object whose bytes do not match its name and removes it (in the
    /// background), so no replica uses it again; the caller fetches from the upstreams.
    pub(crate) fn report_corrupt(self: &Arc<Self>, path: ObjectPath, detail: String) {
        self.counters
            .corrupt_objects
            .fetch_add(1, Ordering::Relaxed);
        tracing::error!(store = %self.config.url, %path, %detail, "corrupt object in the shared store; removing it and fetching from upstream");
        let store = self.clone();
        self.tasks.spawn("removing a corrupt shared store object", async move {
            if let Err(e) = store.store.delete(&path).await {
                tracing::warn!(%path, error = %e, "could not remove a corrupt shared store object");
            }
        });
    }

    /// Re-reads the store's copy of `digest` and hashes it, in the background: a copy that
    /// does not match is reported and removed, and `on_corrupt` runs (to lift the blame from
    /// upstreams whose bytes were mixed with it). Used when a fill that took bytes from the
    /// store failed its digest: the store, not only the upstream, may be at fault.
    pub(crate) fn check_blob_later(
        self: &Arc<Self>,
        digest: Digest,
        on_corrupt: impl FnOnce() + Send + 'static,
    ) {
        let store = self.clone();
        self.tasks.spawn("checking a shared store blob", async move {
            let body = match store.open_blob(&digest).await {
                StoreRead::Found(body) => body,
                StoreRead::Missing | StoreRead::Unavailable => return,
            };
            let mut verifier = crate::oci::DigestVerifier::new(digest.algorithm());
            let mut chunks = body.chunks;
            let mut received = 0u64;
            while let Some(chunk) = chunks.next().await {
                match chunk {
                    Ok(chunk) => {
                        received += chunk.len() as u64;
                        verifier.update(&chunk);
                    }
                    // Unreadable now: nothing can be said about its bytes.
                    Err(_) => return,
                }
            }
            let actual = verifier.finish();
            if actual != digest || received != body.size {
                store.report_corrupt(
                    store.blob_path(&digest),
                    format!("re-read after a failed fill: {received} bytes hashing to {actual}"),
                );
                on_corrupt();
            } else {
                tracing::info!(%digest, "shared store copy checked after a failed fill: it is intact");
            }
        });
    }

    /// A presigned GET URL for a blob the store holds, valid for `expires_in`.
    pub(crate) async fn presigned_blob_url(
        &self,
        digest: &Digest,
        expires_in: Duration,
    ) -> Option<String> {
        use object_store::signer::Signer;
        let signer = self.signer.as_ref()?;
        if !self.admit() {
            return None;
        }
        let path = self.blob_path(digest);
        // Only redirect to an object that exists: a dangling redirect fails the client.
        match self
            .within_answer_timeout("checking a blob", self.store.head(&path))
            .await?
        {
            Ok(_) => self.record_success(),
            Err(object_store::Error::NotFound { .. }) => return None,
            Err(e) => {
                self.record_failure("checking a blob", &e);
                return None;
            }
        }
        match signer
            .signed_url(http::Method::GET, &path, expires_in)
            .await
        {
            Ok(url) => Some(url.to_string()),
            Err(e) => {
                tracing::warn!(error = %e, "could not presign a shared store URL");
                None
            }
        }
    }

    /// Whether the tag record `key -> digest` should go up now (changed, or not uploaded by
    /// this replica within the last minute); records the upload as done.
    pub(crate) fn tag_upload_due(&self, key: &crate::cache::TagKey, digest: &str) -> bool {
        let id = format!("{}/{}:{}", key.registry, key.repository, key.tag);
        if self.recent_tag_uploads.get(&id).as_deref() == Some(digest) {
            return false;
        }
        self.recent_tag_uploads.insert(id, digest.to_owned());
        true
    }

    /// Uploads `bytes` under `path` in the background (small objects), unless the queue is full.
    pub(crate) fn upload_small_later(
        self: &Arc<Self>,
        path: ObjectPath,
        bytes: Bytes,
        content_type: Option<String>,
    ) {
        let store = self.clone();
        self.run_upload(path.clone(), async move {
            let mut attributes = Attributes::new();
            if let Some(content_type) = content_type {
                attributes.insert(Attribute::ContentType, content_type.into());
            }
            let len = bytes.len() as u64;
            store
                .store
                .put_opts(
                    &path,
                    PutPayload::from(bytes),
                    PutOptions {
                        attributes,
                        ..Default::default()
                    },
                )
                .await
                .map(|_| len)
                .map_err(|e| StoreError::store("uploading", e))
        });
    }

    /// Uploads a committed blob file under its digest in the background, streamed in parts,
    /// unless the store already has it or the queue is full.
    pub(crate) fn upload_blob_later(self: &Arc<Self>, digest: Digest, file: std::path::PathBuf) {
        let store = self.clone();
        let path = self.blob_path(&digest);
        self.run_upload(path.clone(), async move {
            if store.store.head(&path).await.is_ok() {
                return Ok(0);
            }
            store.upload_file(&path, file).await
        });
    }

    async fn upload_file(
        &self,
        path: &ObjectPath,
        file: std::path::PathBuf,
    ) -> Result<u64, StoreError> {
        use std::os::unix::fs::FileExt;
        let opened = std::fs::File::open(&file).map_err(|e| StoreError::LocalFile {
            path: file.clone(),
            cause: Arc::new(e),
        })?;
        let opened = Arc::new(opened);
        let upload = self
            .store
            .put_multipart(path)
            .await
            .map_err(|e| StoreError::store("starting an upload", e))?;
        let mut writer =
            object_store::WriteMultipart::new_with_chunk_size(upload, UPLOAD_PART_BYTES);
        let mut offset = 0u64;
        loop {
            let read_from = opened.clone();
            let chunk = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
                let mut buffer = vec![0u8; UPLOAD_PART_BYTES];
                let mut filled = 0;
                while filled < buffer.len() {
                    let n = read_from.read_at(&mut buffer[filled..], offset + filled as u64)?;
                    if n == 0 {
                        break;
                    }
                    filled += n;
                }
                buffer.truncate(filled);
                Ok(buffer)
            })
            .await
            .map_err(|e| StoreError::Task(Arc::new(e)))?
            .map_err(|e| StoreError::LocalFile {
                path: file.clone(),
                cause: Arc::new(e),
            });
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(e) => {
                    let _ = writer.abort().await;
                    return Err(e);
                }
            };
            if chunk.is_empty() {
                break;
            }
            offset += chunk.len() as u64;
            if let Err(e) = writer.wait_for_capacity(UPLOAD_PARTS_IN_FLIGHT).await {
                return Err(StoreError::store("uploading a part", e));
            }
            writer.put(Bytes::from(chunk));
        }
        writer
            .finish()
            .await
            .map_err(|e| StoreError::store("finishing an upload", e))?;
        Ok(offset)
    }

    /// Runs one upload with a bounded number at once and a bounded queue; failures are
    /// logged and counted, never seen by a client.
    fn run_upload(
        self: &Arc<Self>,
        path: ObjectPath,
        upload: impl std::future::Future<Output = Result<u64, StoreError>> + Send + 'static,
    ) {
        if self.queued.fetch_add(1, Ordering::AcqRel) >= UPLOADS_QUEUED as u64 {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            self.counters
                .uploads_dropped
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%path, "shared store upload queue full; dropping this upload");
            return;
        }
        let store = self.clone();
        self.tasks.spawn("shared store upload", async move {
            let permit = store.upload_slots.clone().acquire_owned().await;
            let result = if store.admit() {
                upload.await
            } else {
                Err(StoreError::BreakerOpen)
            };
            drop(permit);
            store.queued.fetch_sub(1, Ordering::AcqRel);
            match result {
                Ok(bytes) => {
                    store.record_success();
                    store.counters.uploads.fetch_add(1, Ordering::Relaxed);
                    store
                        .counters
                        .bytes_uploaded
                        .fetch_add(bytes, Ordering::Relaxed);
                    if bytes > 0 {
                        tracing::info!(%path, bytes, "uploaded to the shared store");
                    }
                }
                Err(error) => {
                    store
                        .counters
                        .upload_failures
                        .fetch_add(1, Ordering::Relaxed);
                    store.record_failure("uploading", &error);
                    tracing::warn!(%path, %error, "shared store upload failed; dropped (the next fill uploads it again)");
                }
            }
        });
    }
}

/// `chunks`, ending with an error when the store sends nothing for `idle` (a stalled body is
/// a failed read: the upstreams continue from the bytes already received).
fn with_idle_timeout(
    chunks: BoxStream<'static, Result<Bytes, StoreError>>,
    idle: Duration,
) -> BoxStream<'static, Result<Bytes, StoreError>> {
    futures_util::stream::unfold(Some(chunks), move |state| async move {
        let mut chunks = state?;
        match tokio::time::timeout(idle, chunks.next()).await {
            Ok(Some(chunk)) => Some((chunk, Some(chunks))),
            Ok(None) => None,
            Err(_) => Some((Err(StoreError::Idle(idle)), None)),
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> SharedStore {
        let config = SharedStoreConfig {
            endpoint: Some("http://127.0.0.1:9".into()),
            region: Some("garage".into()),
            access_key_id: Some("GK".into()),
            secret_access_key: Some("secret".into()),
            ..SharedStoreConfig::from_env("s3://bucket/prefix", Duration::from_secs(5)).unwrap()
        };
        SharedStore::new(config).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_store_is_skipped_for_its_cooldown_then_every_request_tries_it() {
        let store = store();
        for _ in 0..BREAKER_THRESHOLD {
            assert!(store.admit());
            store.record_failure("reading", &"refused");
        }
        assert!(!store.admit(), "skipped while cooling down");
        assert_eq!(store.status()["state"], "open");
        tokio::time::advance(BREAKER_COOLDOWN).await;
        assert_eq!(store.status()["state"], "failing", "cooldown over");
        assert!(
            store.admit() && store.admit(),
            "every request may try, not one probe"
        );
        store.record_failure("reading", &"refused");
        assert!(!store.admit(), "a failure after the cooldown reopens it");
        tokio::time::advance(BREAKER_COOLDOWN).await;
        assert!(store.admit(), "for the same cooldown, not a doubled one");
        store.record_success();
        assert_eq!(store.status()["state"], "closed");
    }
}
