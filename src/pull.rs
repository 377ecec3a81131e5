//! The one pull-through flow. A hit is served from the cache; a miss goes to the upstreams
//! in order and is verified and committed on the way to the client. Manifests and tags live
//! in `manifest`, blobs and fills in `blob`, request coalescing for manifests in `singleflight`,
//! who may see a digest in `provenance`.

pub(crate) mod blob;
pub(crate) mod manifest;
pub(crate) mod passthrough;
pub(crate) mod pinning;
pub(crate) mod provenance;
pub(crate) mod referrers;
pub(crate) mod reserve;
pub(crate) mod singleflight;

pub use blob::{BlobAnswer, RangeSpec};

use crate::cache::Cache;
use crate::upstream::{Registries, Upstreams};
use singleflight::KeyedLocks;
use std::sync::Arc;
use std::time::Duration;

/// Largest manifest accepted from an upstream (the distribution spec's limit).
pub(crate) const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;
/// Largest tag list accepted from an upstream.
pub(crate) const MAX_TAG_LIST_BYTES: usize = 16 * 1024 * 1024;

/// Who answered a request: the cache, or a named upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    Cache,
    /// The cache, after every upstream failed to revalidate (stale-if-error).
    StaleCache,
    Upstream(String),
    /// The fleet's shared store (a second cache tier), not a registry.
    SharedStore,
}

impl From<crate::cache::FillOrigin> for Source {
    fn from(origin: crate::cache::FillOrigin) -> Self {
        match origin {
            crate::cache::FillOrigin::Upstream(name) => Source::Upstream(name),
            crate::cache::FillOrigin::SharedStore => Source::SharedStore,
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Cache => f.write_str("cache"),
            Source::StaleCache => f.write_str("cache(stale)"),
            Source::Upstream(name) => write!(f, "upstream:{name}"),
            Source::SharedStore => f.write_str("shared-store"),
        }
    }
}

/// A blob body on its way to a client.
pub(crate) type BlobStream =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Send>>;

/// The client's error when no upstream could give `what`: `code` (a 404) only when every
/// upstream said "not found", else the upstreams' failure.
pub(crate) fn unknown_to_upstreams(
    exhausted: crate::upstream::UpstreamsExhausted,
    code: crate::oci::ErrorCode,
    what: impl std::fmt::Display,
) -> crate::error::FerryError {
    if exhausted.all_not_found() {
        crate::error::FerryError::client(code, format!("{what} is not known to any upstream"))
    } else {
        crate::error::FerryError::Upstreams(exhausted)
    }
}

/// The client's error when no upstream could give a blob.
pub(crate) fn blob_error(
    exhausted: crate::upstream::UpstreamsExhausted,
    digest: &crate::oci::Digest,
) -> crate::error::FerryError {
    unknown_to_upstreams(
        exhausted,
        crate::oci::ErrorCode::BlobUnknown,
        format!("blob {digest}"),
    )
}

/// How the pull-through flow treats tags and upstreams.
#[derive(Debug, Clone)]
pub(crate) struct PullSettings {
    pub(crate) tag_ttl: Duration,
    pub(crate) referrers_ttl: Duration,
    /// Oldest tag mapping served without an upstream confirming it; `None` = unlimited.
    pub(crate) max_stale: Option<Duration>,
    /// Never contact an upstream.
    pub(crate) offline: bool,
    /// Record which registries served each digest (on when `client_access` rules exist).
    pub(crate) track_provenance: bool,
}

/// How long a presigned blob URL handed to a client stays valid.
const BLOB_REDIRECT_LIFETIME: Duration = Duration::from_secs(300);

pub(crate) struct PullThrough {
    pub(crate) cache: Cache<crate::error::FerryError>,
    /// Each registry's ordered upstreams.
    pub(crate) registries: Registries,
    pub(crate) settings: PullSettings,
    pub(crate) metrics: std::sync::Arc<crate::metrics::Metrics>,
    /// The shared store (second cache tier), if configured.
    pub(crate) shared: Option<Arc<crate::shared::SharedStore>>,
    /// Fills and uploads running beside requests (tracked, panics counted).
    pub(crate) tasks: Arc<crate::tasks::TaskSupervisor>,
    manifest_fetches: KeyedLocks,
    /// One upstream fetch at a time per identical tag-list or referrers request.
    list_fetches: KeyedLocks,
    /// Tag lists just fetched, for the identical requests that waited on the fetch.
    recent_tag_lists: moka::sync::Cache<String, manifest::TagListAnswer>,
    /// How a tag-list or referrers fetch just failed, for the identical requests that waited
    /// on it: they get the same answer instead of each trying again in turn.
    recent_list_failures: moka::sync::Cache<String, crate::upstream::UpstreamsExhausted>,
}

/// How long a fetched tag list answers identical requests that waited for it.
const TAG_LIST_SHARING: Duration = Duration::from_secs(1);
/// Bytes of just-fetched tag lists kept for waiting requests.
const TAG_LIST_SHARING_BYTES: u64 = 8 * 1024 * 1024;

impl PullThrough {
    pub(crate) fn new(
        cache: Cache<crate::error::FerryError>,
        registries: Registries,
        settings: PullSettings,
        metrics: std::sync::Arc<crate::metrics::Metrics>,
        shared: Option<Arc<crate::shared::SharedStore>>,
        tasks: Arc<crate::tasks::TaskSupervisor>,
    ) -> Self {
        PullThrough {
            cache,
            registries,
            metrics,
            settings,
            shared,
            tasks,
            manifest_fetches: KeyedLocks::default(),
            list_fetches: KeyedLocks::default(),
            recent_list_failures: moka::sync::Cache::builder()
                .max_capacity(4096)
                .time_to_live(TAG_LIST_SHARING)
                .build(),
            recent_tag_lists: moka::sync::Cache::builder()
                .max_capacity(TAG_LIST_SHARING_BYTES)
                .time_to_live(TAG_LIST_SHARING)
                .weigher(|key: &String, answer: &manifest::TagListAnswer| {
                    u32::try_from(key.len() + answer.body.len() + 256).unwrap_or(u32::MAX)
                })
                .build(),
        }
    }

    /// The error for content ferry cannot have while offline.
    fn offline_miss(code: crate::oci::ErrorCode, what: &str) -> crate::error::FerryError {
        crate::error::FerryError::client(
            code,
            format!(
                "{what} is not in the cache and ferry is offline (--offline): no upstream is contacted"
            ),
        )
    }

    /// The upstreams of `registry`, or a client error naming the registries ferry mirrors.
    pub(crate) fn upstreams_for(
        &self,
        registry: &str,
    ) -> Result<Arc<Upstreams>, crate::error::FerryError> {
        self.registries.get(registry).ok_or_else(|| {
            let known: Vec<&str> = self.registries.names().collect();
            let direct = self.registries.direct_patterns();
            let direct = if direct.is_empty() {
                String::new()
            } else {
                format!(" and, directly, registries matching {}", direct.join(", "))
            };
            crate::error::FerryError::client(
                crate::oci::ErrorCode::NameUnknown,
                format!(
                    "ferry has no upstreams for registry {registry:?} (it mirrors {}{direct})",
                    known.join(", ")
                ),
            )
        })
    }

    /// With `blob_redirect` on, a short-lived presigned URL for a blob the shared store holds.
    pub(crate) async fn blob_redirect(&self, digest: &crate::oci::Digest) -> Option<String> {
        let shared = self.shared.as_ref().filter(|s| s.blob_redirect())?;
        shared
            .presigned_blob_url(digest, BLOB_REDIRECT_LIFETIME)
            .await
    }

    /// Folds what the cache counted since the last call (hits, misses, bytes served,
    /// evictions, shared-store reads) into the history's current minute.
    pub(crate) fn catch_up_history(&self) {
        let store = self
            .shared
            .as_ref()
            .map_or([0; 3], |shared| shared.read_totals());
        let totals = self
            .metrics
            .cache_totals(self.cache.usage().evictions, store);
        self.metrics.history.catch_up(totals);
    }

    /// Whether a tag mapping of this age may still be served without confirmation.
    fn within_max_stale(&self, age: Duration) -> bool {
        self.settings.max_stale.is_none_or(|max| age <= max)
    }
}
