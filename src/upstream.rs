//! Talking to upstream registries: one HTTP client per upstream with its timeouts and token cache
//! (`client`, `auth`), failure classification (`failure`), health and breakers (`health`,
//! `breaker`), a body's own pace (`pace`), how a request ranks a group (`route`), reach (`reach`),
//! the ordered list with failover, hedging and quarantine of bad sources (`pool`), and the
//! memory budget for bodies read whole (`memory_budget`).

pub mod auth;
pub mod breaker;
pub mod client;
pub(crate) mod failure;
pub(crate) mod health;
pub(crate) mod memory_budget;
pub(crate) mod pace;
pub(crate) mod pool;
pub(crate) mod quota;
pub(crate) mod reach;
pub mod registries;
pub mod route;
pub(crate) mod settings;
pub mod suspects;

pub(crate) use client::{BodyChunks, UpstreamClient};
pub(crate) use failure::{FailureKind, UpstreamFailure, UpstreamsExhausted};
pub use memory_budget::{BudgetLease, MemoryBudget};
pub(crate) use pace::BodyPace;
pub(crate) use pool::RequestCost;
pub use pool::{AttemptPlan, DEFAULT_STALL_FLOOR, Hedging, PoolSettings, Upstreams};
pub use registries::{Registries, RegistryPattern, canonical_registry};
pub(crate) use route::Route;
