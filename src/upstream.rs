//! Talking to upstream registries: one HTTP client per upstream with its own timeouts and
//! token cache (`client`, `auth`), how failures are classified (`failure`), each upstream's
//! health and circuit breaker (`health`, `breaker`), how a request ranks a group's members
//! (`route`), which addresses it may reach (`reach`), and the ordered list with failover, hedging and per-digest quarantine of bad
//! sources (`pool`).

pub mod auth;
pub mod breaker;
pub mod client;
pub mod failure;
pub mod health;
pub mod pool;
pub mod reach;
pub mod registries;
pub mod route;
pub mod settings;

pub use client::{BodyChunks, UpstreamClient};
pub use failure::{FailureKind, UpstreamFailure, UpstreamsExhausted};
pub use pool::{AttemptPlan, PoolSettings, Upstreams};
pub use registries::{Registries, RegistryPattern, canonical_registry};
pub use route::Route;
