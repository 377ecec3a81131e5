//! Talking to upstream registries: one HTTP client per upstream with its own timeouts and
//! token cache (`client`, `auth`), how failures are classified (`failure`), and the ordered
//! list with failover and per-digest quarantine of bad sources (`pool`).

pub mod auth;
pub mod client;
pub mod failure;
pub mod pool;

pub use client::{BodyChunks, UpstreamClient};
pub use failure::{FailureKind, UpstreamFailure, UpstreamsExhausted};
pub use pool::Upstreams;
