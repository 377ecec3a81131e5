//! ferry's error type. Every error says who failed (the client, the upstreams, the cache)
//! so `server/response.rs` can choose the status without reading message text.

use crate::oci::ErrorCode;
use crate::upstream::UpstreamsExhausted;
use http::StatusCode;

#[derive(Debug, thiserror::Error)]
pub enum FerryError {
    /// The client's own mistake (bad name, digest, method, range). Never retried upstream.
    #[error("{message}")]
    Client {
        code: ErrorCode,
        status: StatusCode,
        message: String,
    },
    /// A `Range` that starts beyond the blob (416, with `Content-Range: bytes */size`).
    #[error("range not satisfiable for a blob of {size} bytes")]
    RangeNotSatisfiable { size: u64 },
    /// Every upstream was tried and none could answer.
    #[error(transparent)]
    Upstreams(#[from] UpstreamsExhausted),
    /// A blob's bytes were already flowing to the client when its source broke or the
    /// digest did not match; the connection must be cut, never completed.
    #[error("blob transfer abandoned mid-stream: {0}")]
    MidStream(String),
    /// The local cache failed (disk I/O, with its cause kept). The client may retry.
    #[error("cache failure: {0}")]
    Cache(#[from] crate::cache::CacheFailure),
}

impl FerryError {
    pub fn client(code: ErrorCode, message: impl Into<String>) -> Self {
        FerryError::Client {
            code,
            status: code.default_status(),
            message: message.into(),
        }
    }

    /// A cache failure with the I/O error that caused it.
    pub fn cache(context: &str, error: std::io::Error) -> Self {
        FerryError::Cache(crate::cache::CacheFailure::io(context, error))
    }

    /// A cache failure of the cache's own making (no I/O error underneath).
    pub fn cache_reason(reason: impl Into<String>) -> Self {
        FerryError::Cache(crate::cache::CacheFailure::new(reason))
    }
}
