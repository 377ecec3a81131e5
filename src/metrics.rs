//! Prometheus metrics, served as text on the admin listener's `/metrics`: requests, cache
//! hits and misses and bytes served from each, upstream attempts by outcome, failovers by
//! reason, fill duration and size, breaker state, cache size and evictions, and the shared
//! store's reads, uploads, bytes and corrupt objects.

pub(crate) mod history;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RequestLabels {
    pub(crate) route: String,
    pub(crate) method: String,
    pub(crate) status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct CacheLabels {
    /// `manifest` or `blob`.
    pub(crate) kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct SourceLabels {
    /// `cache` or `upstream`.
    pub(crate) source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct UpstreamOutcomeLabels {
    pub(crate) registry: String,
    pub(crate) upstream: String,
    /// `ok`, or the failure reason (`server_error`, `header_timeout`, ...).
    pub(crate) outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct FailoverLabels {
    pub(crate) registry: String,
    pub(crate) upstream: String,
    pub(crate) reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct UpstreamLabels {
    pub(crate) registry: String,
    pub(crate) upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct PinStateLabels {
    /// `cached`, `fetching` or `failed`.
    pub(crate) state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct StoreEventLabels {
    /// `hit`, `miss` or `error` for reads; `ok`, `failed` or `dropped` for uploads;
    /// `read` or `uploaded` for bytes.
    pub(crate) event: String,
}

pub struct Metrics {
    registry: Registry,
    pub(crate) store_reads: Family<StoreEventLabels, Counter>,
    pub(crate) store_uploads: Family<StoreEventLabels, Counter>,
    pub(crate) store_bytes: Family<StoreEventLabels, Counter>,
    pub(crate) store_corrupt_objects: Counter,
    pub(crate) store_breaker_open: Gauge,
    pub(crate) requests: Family<RequestLabels, Counter>,
    pub(crate) cache_hits: Family<CacheLabels, Counter>,
    pub(crate) cache_misses: Family<CacheLabels, Counter>,
    pub(crate) served_bytes: Family<SourceLabels, Counter>,
    pub(crate) upstream_requests: Family<UpstreamOutcomeLabels, Counter>,
    pub(crate) failovers: Family<FailoverLabels, Counter>,
    pub(crate) hedges: Family<UpstreamLabels, Counter>,
    pub(crate) stall_resumes: Family<UpstreamLabels, Counter>,
    pub(crate) fill_seconds: Histogram,
    pub(crate) fill_bytes: Histogram,
    pub(crate) breaker_open: Family<UpstreamLabels, Gauge>,
    pub(crate) ratelimit_remaining: Family<UpstreamLabels, Gauge>,
    pub(crate) ratelimit_limit: Family<UpstreamLabels, Gauge>,
    pub(crate) ratelimit_reserve: Family<UpstreamLabels, Gauge>,
    pub(crate) ratelimit_reserve_entries: Family<UpstreamLabels, Counter>,
    pub(crate) upstream_suspect: Family<UpstreamLabels, Gauge>,
    pub(crate) cache_bytes: Gauge,
    pub(crate) cache_limit_bytes: Gauge,
    pub(crate) cache_evictions: Counter,
    pub(crate) cache_write_failures: Counter,
    pub(crate) task_panics: Counter,
    pub(crate) provenance_confirmations: Counter,
    pub(crate) provenance_refusals: Counter,
    pub(crate) pins: Family<PinStateLabels, Gauge>,
    /// The last hour minute by minute, for `/admin/history` and the dashboard.
    pub(crate) history: history::History,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let metrics = Metrics {
            requests: Family::default(),
            cache_hits: Family::default(),
            cache_misses: Family::default(),
            served_bytes: Family::default(),
            upstream_requests: Family::default(),
            failovers: Family::default(),
            hedges: Family::default(),
            stall_resumes: Family::default(),
            fill_seconds: Histogram::new(exponential_buckets(0.01, 4.0, 9)),
            fill_bytes: Histogram::new(exponential_buckets(4096.0, 8.0, 9)),
            breaker_open: Family::default(),
            ratelimit_remaining: Family::default(),
            ratelimit_limit: Family::default(),
            ratelimit_reserve: Family::default(),
            ratelimit_reserve_entries: Family::default(),
            upstream_suspect: Family::default(),
            cache_bytes: Gauge::default(),
            cache_limit_bytes: Gauge::default(),
            cache_evictions: Counter::default(),
            cache_write_failures: Counter::default(),
            task_panics: Counter::default(),
            provenance_confirmations: Counter::default(),
            provenance_refusals: Counter::default(),
            store_reads: Family::default(),
            store_uploads: Family::default(),
            store_bytes: Family::default(),
            store_corrupt_objects: Counter::default(),
            store_breaker_open: Gauge::default(),
            pins: Family::default(),
            registry: Registry::default(),
            history: history::History::default(),
        };
        registry.register(
            "ferry_upstream_ratelimit_remaining",
            "Pulls the upstream's last answer said are left in its quota window (absent until one said)",
            metrics.ratelimit_remaining.clone(),
        );
        registry.register(
            "ferry_upstream_ratelimit_limit",
            "Pulls the upstream's quota allows per window, as its last answer said",
            metrics.ratelimit_limit.clone(),
        );
        registry.register(
            "ferry_upstream_ratelimit_reserve",
            "1 while the upstream's remaining quota is within its ratelimit_reserve (pulls ask the other upstreams first)",
            metrics.ratelimit_reserve.clone(),
        );
        registry.register(
            "ferry_upstream_ratelimit_reserve_entries",
            "Times the upstream's remaining quota fell into its ratelimit_reserve",
            metrics.ratelimit_reserve_entries.clone(),
        );
        registry.register(
            "ferry_upstream_suspect",
            "1 while the upstream is suspect (it sent bytes that failed their digest within bad_source_skip): asked after the others, its blob bodies held until verified",
            metrics.upstream_suspect.clone(),
        );
        registry.register(
            "ferry_pins",
            "Pinned images on this ferry by state (cached: every blob on this disk)",
            metrics.pins.clone(),
        );
        registry.register(
            "ferry_shared_store_reads",
            "Shared store reads by outcome (hit, miss, error)",
            metrics.store_reads.clone(),
        );
        registry.register(
            "ferry_shared_store_uploads",
            "Shared store uploads by outcome (ok, failed, dropped)",
            metrics.store_uploads.clone(),
        );
        registry.register(
            "ferry_shared_store_bytes",
            "Bytes read from and uploaded to the shared store",
            metrics.store_bytes.clone(),
        );
        registry.register(
            "ferry_shared_store_corrupt_objects",
            "Shared store objects whose bytes did not match their name",
            metrics.store_corrupt_objects.clone(),
        );
        registry.register(
            "ferry_shared_store_breaker_open",
            "1 while the shared store is skipped after failures",
            metrics.store_breaker_open.clone(),
        );
        registry.register(
            "ferry_provenance_confirmations",
            "Digests a client_access user asked for that its registry confirmed with a HEAD",
            metrics.provenance_confirmations.clone(),
        );
        registry.register(
            "ferry_provenance_refusals",
            "Digests refused to a client_access user because its registries do not have them",
            metrics.provenance_refusals.clone(),
        );
        registry.register(
            "ferry_requests",
            "Requests by route, method and status",
            metrics.requests.clone(),
        );
        registry.register(
            "ferry_cache_hits",
            "Requests answered from the cache",
            metrics.cache_hits.clone(),
        );
        registry.register(
            "ferry_cache_misses",
            "Requests that went upstream",
            metrics.cache_misses.clone(),
        );
        registry.register(
            "ferry_served_bytes",
            "Body bytes sent to clients, by source",
            metrics.served_bytes.clone(),
        );
        registry.register(
            "ferry_upstream_requests",
            "Upstream attempts by registry, upstream and outcome",
            metrics.upstream_requests.clone(),
        );
        registry.register(
            "ferry_failovers",
            "Moves to the next upstream, by reason",
            metrics.failovers.clone(),
        );
        registry.register(
            "ferry_hedges",
            "Next upstreams started alongside a silent one, by the silent upstream",
            metrics.hedges.clone(),
        );
        registry.register(
            "ferry_stall_resumes",
            "Blob bodies that stalled against their own pace and were resumed elsewhere, by the stalled upstream",
            metrics.stall_resumes.clone(),
        );
        registry.register(
            "ferry_fill_duration_seconds",
            "Time to fill a blob into the cache",
            metrics.fill_seconds.clone(),
        );
        registry.register(
            "ferry_fill_size_bytes",
            "Size of blobs filled into the cache",
            metrics.fill_bytes.clone(),
        );
        registry.register(
            "ferry_upstream_breaker_open",
            "1 while an upstream's circuit breaker is open (or half-open)",
            metrics.breaker_open.clone(),
        );
        registry.register(
            "ferry_cache_bytes",
            "Bytes of cached blobs",
            metrics.cache_bytes.clone(),
        );
        registry.register(
            "ferry_cache_limit_bytes",
            "The cache size bound (0 = unbounded)",
            metrics.cache_limit_bytes.clone(),
        );
        registry.register(
            "ferry_cache_evictions",
            "Blobs evicted to stay under the bound",
            metrics.cache_evictions.clone(),
        );
        registry.register(
            "ferry_cache_write_failures",
            "Fills abandoned because the cache could not take the bytes",
            metrics.cache_write_failures.clone(),
        );
        registry.register(
            "ferry_task_panics",
            "Background tasks (fills, shared store uploads) that panicked",
            metrics.task_panics.clone(),
        );
        Metrics {
            registry,
            ..metrics
        }
    }
}

impl Metrics {
    /// The Prometheus text exposition.
    /// Drops every series of one upstream of `registry` (a direct registry closed for being
    /// the least recently used), so the label set stays bounded by the open registries.
    /// `outcomes` are the values the outcome and reason labels can take.
    pub(crate) fn forget_upstream(&self, registry: &str, upstream: &str, outcomes: &[&str]) {
        self.history.forget_upstream(registry, upstream);
        for outcome in outcomes {
            self.upstream_requests.remove(&UpstreamOutcomeLabels {
                registry: registry.to_owned(),
                upstream: upstream.to_owned(),
                outcome: (*outcome).to_owned(),
            });
            self.failovers.remove(&FailoverLabels {
                registry: registry.to_owned(),
                upstream: upstream.to_owned(),
                reason: (*outcome).to_owned(),
            });
        }
        let labels = UpstreamLabels {
            registry: registry.to_owned(),
            upstream: upstream.to_owned(),
        };
        self.breaker_open.remove(&labels);
        self.ratelimit_remaining.remove(&labels);
        self.ratelimit_limit.remove(&labels);
        self.ratelimit_reserve.remove(&labels);
        self.ratelimit_reserve_entries.remove(&labels);
        self.upstream_suspect.remove(&labels);
        self.hedges.remove(&labels);
        self.stall_resumes.remove(&labels);
    }

    /// The cache's counts since start, for the history (which folds their growth into minutes).
    pub(crate) fn cache_totals(&self, evictions: u64, store: [u64; 3]) -> history::CacheTotals {
        let by_kind = |family: &Family<CacheLabels, Counter>| -> u64 {
            ["manifest", "blob"]
                .into_iter()
                .map(|kind| {
                    family
                        .get_or_create(&CacheLabels {
                            kind: kind.to_owned(),
                        })
                        .get()
                })
                .sum()
        };
        let served = |source: &str| {
            self.served_bytes
                .get_or_create(&SourceLabels {
                    source: source.to_owned(),
                })
                .get()
        };
        history::CacheTotals {
            hits: by_kind(&self.cache_hits),
            misses: by_kind(&self.cache_misses),
            bytes_from_cache: served("cache"),
            bytes_from_upstreams: served("upstream"),
            evictions,
            store,
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        out
    }
}

/// Brings a counter that mirrors an absolute count up to `total`.
pub(crate) fn catch_up(counter: &Counter, total: u64) {
    let current = counter.get();
    if total > current {
        counter.inc_by(total - current);
    }
}
