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
/// Latest failures kept, and the longest detail kept with each.
const RECENT_FAILURES: usize = 40;
const MAX_DETAIL_BYTES: usize = 512;
/// Upper edges of the answer-time bins, in ms; one more bin holds everything slower.
const LATENCY_EDGES_MS: [u64; 14] = [
    2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 30_000, 60_000,
];
const LATENCY_BINS: usize = LATENCY_EDGES_MS.len() + 1;

/// One minute of one upstream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct UpstreamMinute {
    requests: u64,
    /// Failures that say something about the upstream's health (not a 404, 401 or 403,
    /// which show it alive and answering).
    failures: u64,
    /// Failures after which the request went on to another upstream.
    failovers_away: u64,
    breaker_open_ms: u64,
    /// Times to answer of its successes, binned.
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
    /// Pins by state (`cached`, `fetching`, `failed`) as last sampled in the minute.
    pins: Option<[u64; 3]>,
}

/// Minutes newest last, each with its start (unix seconds, a multiple of `BUCKET_SECONDS`);
/// idle minutes are not stored.
#[derive(Debug, Default, Clone)]
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
        let mut hour: Vec<(u64, M)> = (0..BUCKETS as u64)
            .map(|i| (first + i * BUCKET_SECONDS, M::default()))
            .collect();
        for (minute, counts) in &self.minutes {
            if let Some(slot) = minute
                .checked_sub(first)
                .map(|offset| (offset / BUCKET_SECONDS) as usize)
                .and_then(|index| hour.get_mut(index))
            {
                slot.1 = *counts;
            }
        }
        hour
    }

    fn last_active(&self) -> u64 {
        self.minutes.back().map_or(0, |(s, _)| *s)
    }
}

/// One upstream's hour: registry, name, and its minutes.
type UpstreamHour = (String, String, Vec<(u64, UpstreamMinute)>);

/// A failure as the dashboard lists it.
#[derive(Debug, Clone, serde::Serialize)]
struct RecentFailure {
    at: u64,
    registry: String,
    upstream: String,
    kind: String,
    detail: String,
    /// Whether ferry moved on (to the next upstream or, at the end of the list, to a stale
    /// copy or an error), as `ferry_failovers_total` counts it.
    moved_on: bool,
}

#[derive(Debug, Default)]
struct State {
    /// Registry, then upstream name.
    upstreams: BTreeMap<String, BTreeMap<String, Series<UpstreamMinute>>>,
    cache: Series<CacheMinute>,
    recent_failures: VecDeque<RecentFailure>,
    /// The cache's totals as last caught up.
    cache_seen: CacheTotals,
}

/// The cache's counts since ferry started, as the metrics keep them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct CacheTotals {
    pub(crate) hits: u64,
    pub(crate) misses: u64,
    pub(crate) bytes_from_cache: u64,
    pub(crate) bytes_from_upstreams: u64,
    pub(crate) evictions: u64,
    /// Shared-store reads: hits, misses, errors.
    pub(crate) store: [u64; 3],
}

/// What one upstream attempt showed.
pub(crate) struct Attempt<'a> {
    pub(crate) registry: &'a str,
    pub(crate) upstream: &'a str,
    /// `None` for a success; else the failure's kind and detail.
    pub(crate) failure: Option<(&'a str, String)>,
    /// Whether the failure says something about the upstream's health (not a 404, 401, 403).
    pub(crate) against_health: bool,
    /// Whether ferry moved on after it (see [`RecentFailure::moved_on`]).
    pub(crate) moved_on: bool,
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
            // The slowest bin has no upper edge: one past the last edge, read as "more than
            // `latency_over_ms`".
            return Some(
                LATENCY_EDGES_MS
                    .get(bin)
                    .copied()
                    .unwrap_or(LATENCY_EDGES_MS[LATENCY_EDGES_MS.len() - 1] + 1),
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
        let known = state
            .upstreams
            .get(attempt.registry)
            .is_some_and(|names| names.contains_key(attempt.upstream));
        if !known && state.upstream_count() >= MAX_UPSTREAMS {
            state.forget_idlest();
        }
        let minute = state
            .upstreams
            .entry(attempt.registry.to_owned())
            .or_default()
            .entry(attempt.upstream.to_owned())
            .or_default()
            .at(minute_of(unix));
        minute.requests += 1;
        match &attempt.failure {
            None => minute.latency[latency_bin(attempt.latency)] += 1,
            Some(_) => {
                minute.failures += u64::from(attempt.against_health);
                minute.failovers_away += u64::from(attempt.moved_on);
            }
        }
        if let Some((kind, mut detail)) = attempt.failure {
            if detail.len() > MAX_DETAIL_BYTES {
                let mut cut = MAX_DETAIL_BYTES;
                while !detail.is_char_boundary(cut) {
                    cut -= 1;
                }
                detail.truncate(cut);
                detail.push('…');
            }
            if state.recent_failures.len() == RECENT_FAILURES {
                state.recent_failures.pop_front();
            }
            state.recent_failures.push_back(RecentFailure {
                at: unix,
                registry: attempt.registry.to_owned(),
                upstream: attempt.upstream.to_owned(),
                kind: kind.to_owned(),
                detail,
                moved_on: attempt.moved_on,
            });
        }
    }

    /// `upstream`'s breaker was seen open for the last `open` (sampled).
    pub(crate) fn note_breaker_open(&self, registry: &str, upstream: &str, open: Duration) {
        self.note_breaker_open_at(registry, upstream, open, now_unix());
    }

    fn note_breaker_open_at(&self, registry: &str, upstream: &str, open: Duration, unix: u64) {
        let mut state = self.lock();
        // Only upstreams already tracked: sampling alone does not add a series.
        if let Some(series) = state
            .upstreams
            .get_mut(registry)
            .and_then(|names| names.get_mut(upstream))
        {
            series.at(minute_of(unix)).breaker_open_ms += open.as_millis() as u64;
        }
    }

    /// The pins by state right now: `cached`, `fetching`, `failed` (sampled).
    pub(crate) fn note_pins(&self, by_state: [u64; 3]) {
        self.note_pins_at(by_state, now_unix());
    }

    fn note_pins_at(&self, by_state: [u64; 3], unix: u64) {
        self.lock().cache.at(minute_of(unix)).pins = Some(by_state);
    }

    /// A blob fill committed.
    pub(crate) fn note_fill(&self) {
        let mut state = self.lock();
        state.cache.at(minute_of(now_unix())).fills += 1;
    }

    /// The cache's counts, kept as totals by the metrics (no lock on the serving path): what
    /// grew since the last call goes to this minute.
    pub(crate) fn catch_up(&self, totals: CacheTotals) {
        self.catch_up_at(totals, now_unix());
    }

    fn catch_up_at(&self, totals: CacheTotals, unix: u64) {
        let mut state = self.lock();
        let seen = state.cache_seen;
        let grown = |now: u64, before: u64| now.saturating_sub(before);
        state.cache_seen = CacheTotals {
            hits: seen.hits.max(totals.hits),
            misses: seen.misses.max(totals.misses),
            bytes_from_cache: seen.bytes_from_cache.max(totals.bytes_from_cache),
            bytes_from_upstreams: seen.bytes_from_upstreams.max(totals.bytes_from_upstreams),
            evictions: seen.evictions.max(totals.evictions),
            store: [0, 1, 2].map(|i| seen.store[i].max(totals.store[i])),
        };
        let minute = state.cache.at(minute_of(unix));
        minute.hits += grown(totals.hits, seen.hits);
        minute.misses += grown(totals.misses, seen.misses);
        minute.bytes_from_cache += grown(totals.bytes_from_cache, seen.bytes_from_cache);
        minute.bytes_from_upstreams +=
            grown(totals.bytes_from_upstreams, seen.bytes_from_upstreams);
        minute.evictions += grown(totals.evictions, seen.evictions);
        minute.store_hits += grown(totals.store[0], seen.store[0]);
        minute.store_misses += grown(totals.store[1], seen.store[1]);
        minute.store_errors += grown(totals.store[2], seen.store[2]);
    }

    /// Forgets an upstream (a direct registry closed).
    pub(crate) fn forget_upstream(&self, registry: &str, upstream: &str) {
        let mut state = self.lock();
        if let Some(names) = state.upstreams.get_mut(registry) {
            names.remove(upstream);
            if names.is_empty() {
                state.upstreams.remove(registry);
            }
        }
    }

    /// The hour as JSON: per upstream (every one of `upstreams`, registry and name, in that
    /// order, then any other tracked) and for the cache, `BUCKETS` buckets oldest first.
    pub(crate) fn snapshot(&self, upstreams: &[(String, String)]) -> Value {
        self.snapshot_at(upstreams, now_unix())
    }

    fn snapshot_at(&self, listed: &[(String, String)], unix: u64) -> Value {
        let current = minute_of(unix);
        // Copied out under the lock, rendered after it: requests never wait on the JSON.
        let (mut series, cache, failures) = {
            let state = self.lock();
            let series: Vec<UpstreamHour> = state
                .upstreams
                .iter()
                .flat_map(|(registry, names)| {
                    names.iter().map(move |(name, series)| {
                        (registry.clone(), name.clone(), series.hour(current))
                    })
                })
                .collect();
            let failures: Vec<RecentFailure> =
                state.recent_failures.iter().rev().cloned().collect();
            (series, state.cache.hour(current), failures)
        };
        // The listed upstreams first, in their order, with an idle hour if never asked.
        let mut ordered = Vec::with_capacity(series.len() + listed.len());
        for (registry, name) in listed {
            match series
                .iter()
                .position(|(r, n, _)| r == registry && n == name)
            {
                Some(at) => ordered.push(series.remove(at)),
                None => ordered.push((
                    registry.clone(),
                    name.clone(),
                    Series::<UpstreamMinute>::default().hour(current),
                )),
            }
        }
        ordered.extend(series);
        let upstreams: Vec<Value> = ordered
            .into_iter()
            .map(|(registry, name, hour)| {
                let buckets: Vec<Value> = hour
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
        let cache: Vec<Value> = cache
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
                    "pins": m.pins.map(|[cached, fetching, failed]| {
                        json!({"cached": cached, "fetching": fetching, "failed": failed})
                    }),
                })
            })
            .collect();
        json!({
            "bucket_seconds": BUCKET_SECONDS,
            "now": unix,
            "latency_over_ms": LATENCY_EDGES_MS[LATENCY_EDGES_MS.len() - 1],
            "upstreams": upstreams,
            "cache": {"buckets": cache},
            "recent_failures": failures,
        })
    }
}

impl State {
    fn upstream_count(&self) -> usize {
        self.upstreams.values().map(BTreeMap::len).sum()
    }

    /// Forgets the upstream whose newest minute is the oldest.
    fn forget_idlest(&mut self) {
        let idlest = self
            .upstreams
            .iter()
            .flat_map(|(registry, names)| {
                names
                    .iter()
                    .map(move |(name, series)| (series.last_active(), registry, name))
            })
            .min()
            .map(|(_, registry, name)| (registry.clone(), name.clone()));
        if let Some((registry, name)) = idlest
            && let Some(names) = self.upstreams.get_mut(&registry)
        {
            names.remove(&name);
            if names.is_empty() {
                self.upstreams.remove(&registry);
            }
        }
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
            against_health: failure.is_some_and(|kind| kind != "not_found"),
            moved_on: failure.is_some(),
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
        let snapshot = history.snapshot_at(&[], T0 + 3 * 60 + 30);
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
            let series = &state.upstreams["docker.io"]["primary"];
            assert_eq!(series.minutes.len(), BUCKETS);
            assert_eq!(state.recent_failures.len(), RECENT_FAILURES);
        }
        let snapshot = history.snapshot_at(&[], T0 + 199 * 60);
        let buckets = snapshot["upstreams"][0]["buckets"].as_array().unwrap();
        assert_eq!(buckets[0]["start"], T0 + 140 * 60);
        assert!(buckets.iter().all(|b| b["requests"] == 2));
        // An hour later with nothing new: every bucket is idle.
        let later = history.snapshot_at(&[], T0 + 300 * 60);
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
        assert_eq!(history.lock().upstream_count(), MAX_UPSTREAMS);
    }

    #[test]
    fn totals_are_caught_up_into_the_minute_they_were_seen_and_breaker_time_is_capped() {
        let history = History::default();
        let totals = |evictions, store, hits| CacheTotals {
            evictions,
            store,
            hits,
            bytes_from_cache: hits * 1000,
            ..CacheTotals::default()
        };
        history.catch_up_at(totals(3, [1, 2, 0], 7), T0 + 10);
        history.catch_up_at(totals(5, [1, 4, 1], 9), T0 + 70);
        history.catch_up_at(totals(5, [1, 4, 1], 9), T0 + 80);
        history.note_attempt_at(attempt("primary", Some("connect"), 0), T0 + 70);
        for _ in 0..20 {
            history.note_breaker_open_at("docker.io", "primary", Duration::from_secs(5), T0 + 75);
        }
        history.note_breaker_open_at("docker.io", "unknown", Duration::from_secs(5), T0 + 75);
        let snapshot = history.snapshot_at(&[], T0 + 90);
        let cache = snapshot["cache"]["buckets"].as_array().unwrap();
        assert_eq!(cache[BUCKETS - 2]["evictions"], 3);
        assert_eq!(cache[BUCKETS - 1]["evictions"], 2);
        assert_eq!(cache[BUCKETS - 1]["store_misses"], 2);
        assert_eq!(cache[BUCKETS - 1]["store_errors"], 1);
        assert_eq!(cache[BUCKETS - 2]["hits"], 7);
        assert_eq!(cache[BUCKETS - 1]["hits"], 2);
        assert_eq!(cache[BUCKETS - 1]["bytes_from_cache"], 2000);
        let upstreams = snapshot["upstreams"].as_array().unwrap();
        assert_eq!(upstreams.len(), 1, "sampling alone adds no series");
        assert_eq!(
            upstreams[0]["buckets"][BUCKETS - 1]["breaker_open_ms"],
            60_000
        );
    }

    #[test]
    fn listed_upstreams_show_idle_not_found_is_no_failure_and_details_are_bounded() {
        let history = History::default();
        history.note_attempt_at(attempt("mirror", Some("not_found"), 0), T0 + 1);
        let mut slow = attempt("mirror", None, 0);
        slow.latency = Duration::from_secs(90);
        history.note_attempt_at(slow, T0 + 2);
        let mut long = attempt("mirror", Some("server_error"), 0);
        long.failure = Some(("server_error", "é".repeat(1000)));
        history.note_attempt_at(long, T0 + 3);
        history.note_pins_at([2, 0, 1], T0 + 20);
        let listed = [
            ("docker.io".to_owned(), "primary".to_owned()),
            ("docker.io".to_owned(), "mirror".to_owned()),
        ];
        let snapshot = history.snapshot_at(&listed, T0 + 30);
        let upstreams = snapshot["upstreams"].as_array().unwrap();
        assert_eq!(upstreams[0]["name"], "primary", "listed first, idle");
        assert_eq!(upstreams[0]["buckets"].as_array().unwrap().len(), BUCKETS);
        let mirror = &upstreams[1]["buckets"][BUCKETS - 1];
        assert_eq!(mirror["requests"], 3);
        assert_eq!(mirror["failures"], 1, "a 404 shows the mirror alive");
        assert_eq!(mirror["failovers_away"], 2);
        assert_eq!(
            mirror["latency_ms"]["p50"], 60_001,
            "slower than the last edge"
        );
        let detail = snapshot["recent_failures"][0]["detail"].as_str().unwrap();
        assert!(detail.len() <= MAX_DETAIL_BYTES + '…'.len_utf8());
        assert!(detail.ends_with('…'));
        let cache = &snapshot["cache"]["buckets"][BUCKETS - 1];
        assert_eq!(cache["pins"]["cached"], 2);
        assert_eq!(cache["pins"]["failed"], 1);
        assert!(snapshot["cache"]["buckets"][0]["pins"].is_null());
    }
}
