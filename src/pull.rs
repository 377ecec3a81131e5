//! The one pull-through flow. A hit is served from the cache; a miss goes to the upstreams
//! in order and is verified and committed on the way to the client. Manifests and tags live
//! in `manifest`, blobs and fills in `blob`, request coalescing for manifests in `singleflight`.

pub mod blob;
pub mod manifest;
pub mod singleflight;

pub use blob::{BlobAnswer, RangeSpec};
pub use manifest::ManifestAnswer;

use crate::cache::Cache;
use crate::upstream::Upstreams;
use singleflight::KeyedLocks;
use std::time::Duration;

/// Largest manifest accepted from an upstream (the distribution spec's limit).
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;
/// Largest tag list accepted from an upstream.
pub const MAX_TAG_LIST_BYTES: usize = 16 * 1024 * 1024;

/// Who answered a request: the cache, or a named upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Cache,
    /// The cache, after every upstream failed to revalidate (stale-if-error).
    StaleCache,
    Upstream(String),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Cache => f.write_str("cache"),
            Source::StaleCache => f.write_str("cache(stale)"),
            Source::Upstream(name) => write!(f, "upstream:{name}"),
        }
    }
}

pub struct PullThrough {
    pub cache: Cache,
    pub upstreams: Upstreams,
    /// The registry these upstreams serve; part of every tag's cache key.
    pub registry: String,
    pub tag_ttl: Duration,
    manifest_fetches: KeyedLocks,
}

impl PullThrough {
    pub fn new(cache: Cache, upstreams: Upstreams, registry: String, tag_ttl: Duration) -> Self {
        PullThrough {
            cache,
            upstreams,
            registry,
            tag_ttl,
            manifest_fetches: KeyedLocks::default(),
        }
    }
}
