//! ferry: a pull-through cache for OCI registries that keeps builds pulling when a
//! registry is down, by failing over across an ordered list of upstreams.
//!
//! # Layout
//!
//! A request travels `server -> pull -> {cache, upstream} -> oci`:
//!
//! - [`server`]: accepts connections, routes and validates paths ([`server::route`]), one
//!   handler per endpoint ([`server::handler`]); the only error-to-HTTP mapping is
//!   [`server::response`].
//! - [`pull`]: the pull-through flow. Hits are served from the cache; misses walk the
//!   upstreams in order, are verified, and are committed while streaming to clients.
//! - [`cache`]: the content-addressed disk cache (layout, the blob fill that hashes, writes
//!   and commits, one fill per digest, readers of fills and files, manifests, tag records).
//! - [`upstream`]: one client per upstream (timeouts, token auth, redirects), failure
//!   classification, and the ordered pool.
//! - [`oci`]: digests, names, media types and error codes, with no I/O.
//! - [`config`] and [`app`]: validated settings, and wiring them into a running server.

pub mod admin;
pub mod app;
pub mod cache;
pub mod config;
pub mod error;
pub mod maintenance;
pub mod metrics;
pub mod oci;
pub mod pull;
pub mod server;
pub mod shared;
pub mod tasks;
pub mod upstream;
pub mod warm;
