//! The last hour minute by minute, in memory with a fixed bound, for `/admin/history` and the
//! dashboard: per upstream its requests, failures, failovers away, breaker-open time and
//! answer times; for the cache its hits, misses, bytes served from it and from upstreams,
//! fills, evictions and shared-store reads; and the latest failures with their kind.

use serde_json::{Value, json};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// Seconds per bucket.
pub(crate) const BUCKET_SECONDS: u64 = 60;
/// Buckets kept (and shown): one hour.
pub(crate) const BUCKETS: usize = 60;
/// Upstreams tracked at once; beyond it the one idle longest is forgotten (direct
/// registries come and go).
const MAX_UPSTREAMS: usize = 64;
/// Latest failures kept.
const RECENT_FAILURES: usize = 40;
/// Upper edges of the answer-time bins, in ms; one more bin holds everything slower.
const LATENCY_EDGES_MS: [u64; 14] = [
    2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 30_000, 60_000,
];
const LATENCY_BINS: usize = LATENCY_EDGES_MS.len() + 1;

/// One minute of one upstream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct UpstreamMinute {
    requests: u64,
    failures: u64,
    /// Failures after which the request went on to another upstream.
    failovers_away: u64,
    breaker_open_ms: u64,
    /// Requests held off by a `Retry-After` or left for the reserve are not counted here.
    latency: [u64; LATENCY_BINS],
}

/// One minute of the cache (and the shared store).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct CacheMinute {
    hits: u64,
    misses: u64,
    bytes_from_cache: u64,
    bytes_from_upstreams: u64,
    fills: u64,
    evictions: u64,
    store_hits: u64,
    store_misses: u64,
    store_errors: u64,
}

/// Minutes newest last, each with its start (unix seconds, a multiple of `BUCKET_SECONDS`);
/// idle minutes are not stored.
#[derive(Debug, Default)]
struct Series<M> {
    minutes: VecDeque<(u64, M)>,
}

impl<M: Default> Series<M> {
    /// The bucket for the minute starting at `start`, created if needed; minutes older than
    /// the hour are dropped.
    fn at(&mut self, start: u64) -> &mut M {
        let oldest_kept = start.saturating_sub((BUCKETS as u64 - 1) * BUCKET_SECONDS);
        while self.minutes.front().is_some_and(|(s, _)| *s < oldest_kept) {
            self.minutes.pop_front();
        }
        // A clock step backwards lands in the newest bucket rather than reordering.
        if self.minutes.back().is_none_or(|(s, _)| *s < start) {
            self.minutes.push_back((start, M::default()));
        }
        let last = self.minutes.len() - 1;
        &mut self.minutes[last].1
    }

    /// The hour ending with the minute starting at `start`: exactly `BUCKETS` buckets, idle
    /// minutes as zeros.
    fn hour(&self, start: u64) -> Vec<(u64, M)>
    where
        M: Copy,
    {
        let first = start.saturating_sub((BUCKETS as u64 - 1) * BUCKET_SECONDS);
        (0..BUCKETS as u64)
            .map(|i| first + i * BUCKET_SECONDS)
            .map(|minute| {
                let found = self
                    .minutes
                    .iter()
                    .find(|(s, _)| *s == minute)
                    .map(|(_, m)| *m);
                (minute, found.unwrap_or_default())
            })
            .collect()
    }

    fn last_active(&self) -> u64 {
        self.minutes.back().map_or(0, |(s, _)| *s)
    }
}

/// A failure as the dashboard lists it.
#[derive(Debug, Clone, serde::Serialize)]
struct RecentFailure {
    at: u64,
    registry: String,
    upstream: String,
    kind: String,
    detail: String,
    /// Whether the request went on to another upstream.
    failed_over: bool,
}

#[derive(Debug, Default)]
struct State {
    upstreams: BTreeMap<(String, String), Series<UpstreamMinute>>,
    cache: Series<CacheMinute>,
    recent_failures: VecDeque<RecentFailure>,
    /// Cumulative counts last seen, for those read as totals (evictions, store reads).
    evictions_seen: u64,
    store_seen: [u64; 3],
}

/// What one upstream attempt showed.
pub(crate) struct Attempt<'a> {
    pub(crate) registry: &'a str,
    pub(crate) upstream: &'a str,
    /// `None` for a success; else the failure's kind and detail.
    pub(crate) failure: Option<(&'a str, String)>,
    pub(crate) failed_over: bool,
    pub(crate) latency: Duration,
}

#[derive(Debug, Default)]
pub(crate) struct History {
    state: Mutex<State>,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

fn minute_of(unix: u64) -> u64 {
    unix - unix % BUCKET_SECONDS
}

fn latency_bin(latency: Duration) -> usize {
    let ms = latency.as_millis() as u64;
    LATENCY_EDGES_MS
        .iter()
        .position(|edge| ms <= *edge)
        .unwrap_or(LATENCY_EDGES_MS.len())
}

/// The bin edge at or below which `quantile` of the answers fall; `None` without answers.
fn latency_quantile(bins: &[u64; LATENCY_BINS], quantile: f64) -> Option<u64> {
    let total: u64 = bins.iter().sum();
    if total == 0 {
        return None;
    }
    let wanted = (total as f64 * quantile).ceil() as u64;
    let mut seen = 0;
    for (bin, count) in bins.iter().enumerate() {
        seen += count;
        if seen >= wanted {
            // The slowest bin has no upper edge: its lower edge, as "more than".
            return Some(
                LATENCY_EDGES_MS
                    .get(bin)
                    .copied()
                    .unwrap_or(LATENCY_EDGES_MS[LATENCY_EDGES_MS.len() - 1]),
            );
        }
    }
    None
}

impl History {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic elsewhere mid-update leaves plain counters: still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn note_attempt(&self, attempt: Attempt<'_>) {
        self.note_attempt_at(attempt, now_unix());
    }

    fn note_attempt_at(&self, attempt: Attempt<'_>, unix: u64) {
        let mut state = self.lock();
        let key = (attempt.registry.to_owned(), attempt.upstream.to_owned());
        if !state.upstreams.contains_key(&key) && state.upstreams.len() >= MAX_UPSTREAMS {
            let idlest = state
                .upstreams
                .iter()
                .min_by_key(|(_, series)| series.last_active())
                .map(|(k, _)| k.clone());
            if let Some(idlest) = idlest {
                state.upstreams.remove(&idlest);
            }
        }
        let minute = state.upstreams.entry(key).or_default().at(minute_of(unix));
        minute.requests += 1;
        if attempt.failure.is_some() {
            minute.failures += 1;
            if attempt.failed_over {
                minute.failovers_away += 1;
            }
        } else {
            minute.latency[latency_bin(attempt.latency)] += 1;
        }
        if let Some((kind, detail)) = attempt.failure {
            if state.recent_failures.len() == RECENT_FAILURES {
                state.recent_failures.pop_front();
            }
            state.recent_failures.push_back(RecentFailure {
                at: unix,
                registry: attempt.registry.to_owned(),
                upstream: attempt.upstream.to_owned(),
                kind: kind.to_owned(),
                detail,
                failed_over: attempt.failed_over,
            });
        }
    }

    /// `upstream`'s breaker was seen open for the last `open` (sampled).
    pub(crate) fn note_breaker_open(&self, registry: &str, upstream: &str, open: Duration) {
        self.note_breaker_open_at(registry, upstream, open, now_unix());
    }

    fn note_breaker_open_at(&self, registry: &str, upstream: &str, open: Duration, unix: u64) {
        let mut state = self.lock();
        let key = (registry.to_owned(), upstream.to_owned());
        // Only upstreams already tracked: sampling alone does not add a series.
        if let Some(series) = state.upstreams.get_mut(&key) {
            series.at(minute_of(unix)).breaker_open_ms += open.as_millis() as u64;
        }
    }

    /// A client was answered from the cache (`hit`) or not.
    pub(crate) fn note_answer(&self, hit: bool) {
        let mut state = self.lock();
        let minute = state.cache.at(minute_of(now_unix()));
        if hit {
            minute.hits += 1;
        } else {
            minute.misses += 1;
        }
    }

    /// `bytes` went to a client, from the cache or from an upstream (or the store).
    pub(crate) fn note_bytes(&self, from_cache: bool, bytes: u64) {
        let mut state = self.lock();
        let minute = state.cache.at(minute_of(now_unix()));
        if from_cache {
            minute.bytes_from_cache += bytes;
        } else {
            minute.bytes_from_upstreams += bytes;
        }
    }

    /// A blob fill committed.
    pub(crate) fn note_fill(&self) {
        let mut state = self.lock();
        state.cache.at(minute_of(now_unix())).fills += 1;
    }

    /// Counts that are kept as totals elsewhere: what grew since the last call goes to this
    /// minute (`store`: hits, misses and errors of shared-store reads).
    pub(crate) fn catch_up_totals(&self, evictions: u64, store: [u64; 3]) {
        self.catch_up_totals_at(evictions, store, now_unix());
    }

    fn catch_up_totals_at(&self, evictions: u64, store: [u64; 3], unix: u64) {
        let mut state = self.lock();
        let new_evictions = evictions.saturating_sub(state.evictions_seen);
        let new_store: Vec<u64> = store
            .iter()
            .zip(state.store_seen)
            .map(|(now, seen)| now.saturating_sub(seen))
            .collect();
        state.evictions_seen = state.evictions_seen.max(evictions);
        for (seen, now) in state.store_seen.iter_mut().zip(store) {
            *seen = (*seen).max(now);
        }
        let minute = state.cache.at(minute_of(unix));
        minute.evictions += new_evictions;
        minute.store_hits += new_store[0];
        minute.store_misses += new_store[1];
        minute.store_errors += new_store[2];
    }

    /// Forgets an upstream (a direct registry closed).
    pub(crate) fn forget_upstream(&self, registry: &str, upstream: &str) {
        self.lock()
            .upstreams
            .remove(&(registry.to_owned(), upstream.to_owned()));
    }

    /// The hour as JSON: per upstream and for the cache, `BUCKETS` buckets oldest first.
    pub(crate) fn snapshot(&self) -> Value {
        self.snapshot_at(now_unix())
    }

    fn snapshot_at(&self, unix: u64) -> Value {
        let state = self.lock();
        let current = minute_of(unix);
        let upstreams: Vec<Value> = state
            .upstreams
            .iter()
            .map(|((registry, name), series)| {
                let buckets: Vec<Value> = series
                    .hour(current)
                    .into_iter()
                    .map(|(start, m)| {
                        json!({
                            "start": start,
                            "requests": m.requests,
                            "failures": m.failures,
                            "failovers_away": m.failovers_away,
                            "breaker_open_ms": m.breaker_open_ms.min(BUCKET_SECONDS * 1000),
                            "latency_ms": {
                                "p50": latency_quantile(&m.latency, 0.5),
                                "p90": latency_quantile(&m.latency, 0.9),
                                "p99": latency_quantile(&m.latency, 0.99),
                            },
                        })
                    })
                    .collect();
                json!({"registry": registry, "name": name, "buckets": buckets})
            })
            .collect();
        let cache: Vec<Value> = state
            .cache
            .hour(current)
            .into_iter()
            .map(|(start, m)| {
                json!({
                    "start": start,
                    "hits": m.hits,
                    "misses": m.misses,
                    "bytes_from_cache": m.bytes_from_cache,
                    "bytes_from_upstreams": m.bytes_from_upstreams,
                    "fills": m.fills,
                    "evictions": m.evictions,
                    "store_hits": m.store_hits,
                    "store_misses": m.store_misses,
                    "store_errors": m.store_errors,
                })
            })
            .collect();
        let failures: Vec<&RecentFailure> = state.recent_failures.iter().rev().collect();
        json!({
            "bucket_seconds": BUCKET_SECONDS,
            "now": unix,
            "upstreams": upstreams,
            "cache": {"buckets": cache},
            "recent_failures": failures,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt<'a>(upstream: &'a str, failure: Option<&'a str>, ms: u64) -> Attempt<'a> {
        Attempt {
            registry: "docker.io",
            upstream,
            failure: failure.map(|kind| (kind, format!("{kind} detail"))),
            failed_over: failure.is_some(),
            latency: Duration::from_millis(ms),
        }
    }

    const T0: u64 = 1_800_000_000 - 1_800_000_000 % BUCKET_SECONDS;

    #[test]
    fn attempts_land_in_their_minute_and_idle_minutes_show_as_zeros() {
        let history = History::default();
        history.note_attempt_at(attempt("primary", None, 3), T0 + 5);
        history.note_attempt_at(attempt("primary", Some("server_error"), 0), T0 + 59);
        history.note_attempt_at(attempt("primary", None, 40), T0 + 3 * 60 + 1);
        let snapshot = history.snapshot_at(T0 + 3 * 60 + 30);
        let buckets = snapshot["upstreams"][0]["buckets"].as_array().unwrap();
        assert_eq!(buckets.len(), BUCKETS);
        let last = &buckets[BUCKETS - 1];
        assert_eq!(last["start"], T0 + 180);
        assert_eq!(
            (last["requests"].as_u64(), last["failures"].as_u64()),
            (Some(1), Some(0))
        );
        assert_eq!(last["latency_ms"]["p50"], 50);
        let idle = &buckets[BUCKETS - 2];
        assert_eq!(
            (idle["requests"].as_u64(), idle["start"].as_u64()),
            (Some(0), Some(T0 + 120))
        );
        let first_minute = &buckets[BUCKETS - 4];
        assert_eq!(first_minute["start"], T0);
        assert_eq!(first_minute["requests"], 2);
        assert_eq!(first_minute["failures"], 1);
        assert_eq!(first_minute["failovers_away"], 1);
        assert_eq!(first_minute["latency_ms"]["p99"], 5);
        assert_eq!(snapshot["recent_failures"][0]["kind"], "server_error");
    }

    #[test]
    fn an_hour_rolls_over_and_memory_stays_bounded() {
        let history = History::default();
        for minute in 0..200u64 {
            history.note_attempt_at(attempt("primary", None, 1), T0 + minute * 60);
            history.note_attempt_at(
                attempt("primary", Some("header_timeout"), 0),
                T0 + minute * 60 + 1,
            );
        }
        {
            let state = history.lock();
            let series = &state.upstreams[&("docker.io".to_owned(), "primary".to_owned())];
            assert_eq!(series.minutes.len(), BUCKETS);
            assert_eq!(state.recent_failures.len(), RECENT_FAILURES);
        }
        let snapshot = history.snapshot_at(T0 + 199 * 60);
        let buckets = snapshot["upstreams"][0]["buckets"].as_array().unwrap();
        assert_eq!(buckets[0]["start"], T0 + 140 * 60);
        assert!(buckets.iter().all(|b| b["requests"] == 2));
        // An hour later with nothing new: every bucket is idle.
        let later = history.snapshot_at(T0 + 300 * 60);
        assert!(
            later["upstreams"][0]["buckets"]
                .as_array()
                .unwrap()
                .iter()
                .all(|b| b["requests"] == 0)
        );
        // Upstreams beyond the bound: the idlest is forgotten.
        for n in 0..(MAX_UPSTREAMS + 5) {
            let name = format!("direct-{n}");
            history.note_attempt_at(attempt(&name, None, 1), T0 + 400 * 60 + n as u64);
        }
        assert_eq!(history.lock().upstreams.len(), MAX_UPSTREAMS);
    }

    #[test]
    fn totals_are_caught_up_into_the_minute_they_were_seen_and_breaker_time_is_capped() {
        let history = History::default();
        history.catch_up_totals_at(3, [1, 2, 0], T0 + 10);
        history.catch_up_totals_at(5, [1, 4, 1], T0 + 70);
        history.catch_up_totals_at(5, [1, 4, 1], T0 + 80);
        history.note_attempt_at(attempt("primary", Some("connect"), 0), T0 + 70);
        for _ in 0..20 {
            history.note_breaker_open_at("docker.io", "primary", Duration::from_secs(5), T0 + 75);
        }
        history.note_breaker_open_at("docker.io", "unknown", Duration::from_secs(5), T0 + 75);
        let snapshot = history.snapshot_at(T0 + 90);
        let cache = snapshot["cache"]["buckets"].as_array().unwrap();
        assert_eq!(cache[BUCKETS - 2]["evictions"], 3);
        assert_eq!(cache[BUCKETS - 1]["evictions"], 2);
        assert_eq!(cache[BUCKETS - 1]["store_misses"], 2);
        assert_eq!(cache[BUCKETS - 1]["store_errors"], 1);
        let upstreams = snapshot["upstreams"].as_array().unwrap();
        assert_eq!(upstreams.len(), 1, "sampling alone adds no series");
        assert_eq!(
            upstreams[0]["buckets"][BUCKETS - 1]["breaker_open_ms"],
            60_000
        );
    }
}
