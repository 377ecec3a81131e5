//! ferry's integration tests: one binary, real sockets on 127.0.0.1, fake registries with
//! fault injection, and a third-party client (oci-client) pulling through ferry.

mod support;

mod api;
mod auth;
mod cache_behaviour;
mod cache_lifecycle;
mod cache_tools;
mod chaos;
mod cli;
mod crash;
mod dashboard;
mod disk_full;
mod failover;
mod flapping;
mod fleet;
mod hostile;
mod link_faults;
mod outage_modes;
mod pins;
mod properties;
mod quotas;
mod referrers;
mod registries;
mod shared_store;
mod suspect_upstreams;
mod third_party_client;
