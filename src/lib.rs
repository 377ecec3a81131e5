//! ferry: a pull-through cache for OCI registries that keeps builds pulling when a
//! registry is down, by failing over across an ordered list of upstreams.
//!
//! # Layout
//!
//! A request travels `server -> pull -> {cache, upstream} -> oci`. Every module uses only
//! modules below it; `scripts/check-layers` (run by `.ci/run`) fails on any back edge.
//! From the bottom:
//!
//! 1. [`oci`] (digests, names, registry names, media types, error codes; no I/O),
//!    [`metrics`] and [`tasks`] (tracked background work).
//! 2. [`cache`]: the content-addressed disk cache (layout, the blob fill that hashes, writes
//!    and commits, one fill per digest, readers of fills and files, manifests, tag records,
//!    referrers lists); and [`upstream`]: one client per upstream (its settings, timeouts,
//!    token auth, redirects, reach), failure classification, breakers and the ordered pool.
//!    Neither uses the other.
//! 3. [`shared`]: the fleet's shared S3-API store, a second cache tier.
//! 4. [`error`]: ferry's error, saying who failed (client, upstreams, cache).
//! 5. [`pull`]: the pull-through flow. Hits are served from the cache; misses walk the
//!    upstreams in order, are verified, and are committed while streaming to clients.
//! 6. [`server`]: accepts connections within limits, routes and validates paths
//!    ([`server::route`]), one handler per endpoint ([`server::handler`]); the only
//!    error-to-HTTP mapping is [`server::response`]. Then [`pins`], the keeper of pins that
//!    follow their tag (fed by the config, the API, the shared store or the AZ tier), then
//!    [`admin`], the admin API.
//! 7. [`config`] (validated settings from the parsed file and flags; it reads no files and
//!    lists the ones the settings name) and [`maintenance`] (the cache tools), then
//!    [`warm`], then [`app`], which reads the config file and the files it names
//!    ([`app::config_files`]) and wires the configuration into a running server.

#![warn(unreachable_pub)]

pub(crate) mod admin;
pub mod app;
pub mod cache;
pub mod config;
pub(crate) mod error;
pub mod maintenance;
pub(crate) mod metrics;
pub mod oci;
pub mod pins;
pub mod pull;
pub mod server;
pub mod shared;
pub(crate) mod tasks;
pub mod upstream;
pub mod warm;
