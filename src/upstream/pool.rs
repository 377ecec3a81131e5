//! The ordered list of upstreams: walks it per request in priority order, moves on after a
//! failure that allows it, and remembers which upstream sent bad bytes for which digest so
//! a client's retry goes elsewhere.

use super::client::UpstreamClient;
use super::failure::{UpstreamFailure, UpstreamsExhausted};
use crate::config::UpstreamConfig;
use crate::oci::Digest;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Bound on remembered (upstream, digest) bad sources; the oldest are forgotten first.
const MAX_BAD_SOURCES: usize = 10_000;

pub struct Upstreams {
    clients: Vec<Arc<UpstreamClient>>,
    failover_on_not_found: bool,
    bad_source_skip: Duration,
    /// (upstream name, digest) -> when the upstream stops being skipped for that digest.
    bad_sources: Mutex<HashMap<(String, Digest), Instant>>,
}

impl Upstreams {
    pub fn new(
        configs: &[UpstreamConfig],
        failover_on_not_found: bool,
        bad_source_skip: Duration,
    ) -> Result<Self, String> {
        let clients = configs
            .iter()
            .map(|c| UpstreamClient::new(c.clone()).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Upstreams {
            clients,
            failover_on_not_found,
            bad_source_skip,
            bad_sources: Mutex::new(HashMap::new()),
        })
    }

    pub fn failover_on_not_found(&self) -> bool {
        self.failover_on_not_found
    }

    /// The upstreams to try, in priority order, with any that recently sent bad bytes for
    /// `digest` moved to the end: they are tried only when every other one failed.
    pub fn candidates(&self, digest: Option<&Digest>) -> Vec<Arc<UpstreamClient>> {
        let Some(digest) = digest else {
            return self.clients.clone();
        };
        let now = Instant::now();
        let bad = self.lock_bad_sources();
        let is_bad = |client: &UpstreamClient| {
            bad.get(&(client.name().to_owned(), digest.clone()))
                .is_some_and(|until| *until > now)
        };
        let (mut good, skipped): (Vec<_>, Vec<_>) =
            self.clients.iter().cloned().partition(|c| !is_bad(c));
        good.extend(skipped);
        good
    }

    /// Remembers that `upstream` served wrong or broken bytes for `digest`.
    pub fn mark_bad_source(&self, upstream: &str, digest: &Digest) {
        let now = Instant::now();
        let mut bad = self.lock_bad_sources();
        bad.retain(|_, until| *until > now);
        if bad.len() >= MAX_BAD_SOURCES
            && let Some(oldest) = bad
                .iter()
                .min_by_key(|(_, until)| **until)
                .map(|(k, _)| k.clone())
        {
            bad.remove(&oldest);
        }
        bad.insert(
            (upstream.to_owned(), digest.clone()),
            now + self.bad_source_skip,
        );
    }

    fn lock_bad_sources(&self) -> std::sync::MutexGuard<'_, HashMap<(String, Digest), Instant>> {
        // A poisoned lock only means another thread panicked mid-update of a plain map;
        // the map is still usable.
        self.bad_sources
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `attempt` on each candidate in order until one succeeds.
    pub async fn first_success<T, F, Fut>(
        &self,
        digest: Option<&Digest>,
        mut attempt: F,
    ) -> Result<T, UpstreamsExhausted>
    where
        F: FnMut(Arc<UpstreamClient>) -> Fut,
        Fut: Future<Output = Result<T, UpstreamFailure>>,
    {
        let mut failures = Vec::new();
        for client in self.candidates(digest) {
            match attempt(client).await {
                Ok(value) => return Ok(value),
                Err(failure) => {
                    let may_try_next = failure.may_try_next(self.failover_on_not_found);
                    tracing::warn!(
                        upstream = %failure.upstream,
                        reason = failure.reason(),
                        detail = %failure.detail,
                        may_try_next,
                        "upstream attempt failed"
                    );
                    failures.push(failure);
                    if !may_try_next {
                        break;
                    }
                }
            }
        }
        Err(UpstreamsExhausted { failures })
    }
}
