//! What ferry knows about one upstream's health: its circuit breaker, whether an operator
//! drained it, its quota, reserve and `Retry-After`, whether it is suspect of sending wrong
//! bytes, recent failures, request counts and header latency. Shown by the admin API.

use super::breaker::{Admission, Breaker, BreakerConfig, BreakerSnapshot, Transition};
use super::failure::{FailureKind, UpstreamFailure};
use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// How many recent failures are kept per upstream for the status page.
const RECENT_FAILURES: usize = 16;
/// How many recent times to headers are kept per upstream (they set its hedge delay).
const RECENT_HEADER_TIMES: usize = 32;
/// Breaker weight of an upstream that sent wrong bytes: it counts heavily.
pub(crate) const BAD_BYTES_WEIGHT: u32 = 3;
/// An error status does not count toward the breaker while the upstream served another
/// request within this long: it concerns that request, not the upstream's health.
const SERVING_OTHERS_WITHIN: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct RecordedFailure {
    pub(crate) at_unix_ms: u64,
    pub(crate) reason: &'static str,
    pub(crate) detail: String,
}

#[derive(Debug)]
pub struct UpstreamHealth {
    name: String,
    breaker: Breaker,
    drained: AtomicBool,
    attempts: AtomicU64,
    failures: AtomicU64,
    /// Exponentially weighted mean of the time to response headers, in microseconds.
    latency_ewma_us: AtomicU64,
    last_latency_us: AtomicU64,
    /// The latest times to answer, newest last (at most `RECENT_HEADER_TIMES`): real answers,
    /// and silences a hedge cut short (a lower bound of what the answer would have taken).
    header_times: Mutex<VecDeque<Duration>>,
    /// When the upstream last answered a request (any status that shows it is alive).
    last_answer: Mutex<Option<Instant>>,
    recent: Mutex<VecDeque<RecordedFailure>>,
    /// The quota its answers announce, and a `Retry-After` in force.
    quota: super::quota::Quota,
    /// Until when it is suspect: it sent a body that failed its digest, so it is asked after
    /// the others for every digest and its blob bodies reach no client before the check.
    suspect_until: Mutex<Option<Instant>>,
}

impl UpstreamHealth {
    pub fn new(name: &str, breaker: BreakerConfig, ratelimit_reserve: u64) -> Self {
        UpstreamHealth {
            name: name.to_owned(),
            breaker: Breaker::new(breaker),
            drained: AtomicBool::new(false),
            attempts: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            latency_ewma_us: AtomicU64::new(0),
            last_latency_us: AtomicU64::new(0),
            header_times: Mutex::new(VecDeque::with_capacity(RECENT_HEADER_TIMES)),
            last_answer: Mutex::new(None),
            recent: Mutex::new(VecDeque::new()),
            quota: super::quota::Quota::with_reserve(ratelimit_reserve),
            suspect_until: Mutex::new(None),
        }
    }

    /// The quota its answers announce, and whether a `Retry-After` holds it off.
    pub(crate) fn quota(&self) -> &super::quota::Quota {
        &self.quota
    }

    /// Notes the quota and `Retry-After` of an answer (any status).
    pub(crate) fn note_answer(&self, status: http::StatusCode, headers: &http::HeaderMap) {
        let noted = self.quota.note_answer(status.as_u16(), headers);
        if let Some(delay) = noted.retry_after {
            tracing::warn!(upstream = %self.name, status = status.as_u16(), ?delay, "upstream asked ferry to wait (Retry-After): asked only as the last resort until then");
        }
        self.log_reserve_change(noted.reserve);
    }

    /// Whether its remaining quota is within its reserve: pulls ask the others first.
    pub(crate) fn in_reserve(&self) -> bool {
        let (inside, change) = self.quota.check_reserve();
        self.log_reserve_change(change);
        inside
    }

    fn log_reserve_change(&self, change: Option<super::quota::ReserveChange>) {
        match change {
            Some(super::quota::ReserveChange::Entered { remaining, reserve }) => {
                tracing::warn!(upstream = %self.name, remaining, reserve, "upstream entered its rate-limit reserve: manifests are pulled from the other upstreams first, tags still revalidated here with HEAD");
            }
            Some(super::quota::ReserveChange::Left) => {
                tracing::info!(upstream = %self.name, "upstream left its rate-limit reserve: first again for pulls");
            }
            None => {}
        }
    }

    /// It sent a body that failed its digest: suspect for `how_long` from now.
    pub(crate) fn mark_suspect(&self, how_long: Duration) {
        let now = Instant::now();
        let mut until = self.suspect_until.lock().unwrap_or_else(|p| p.into_inner());
        if !until.is_some_and(|u| u > now) {
            tracing::warn!(upstream = %self.name, ?how_long, "upstream sent wrong bytes: suspect, asked after the others for every digest and its blob bodies held until verified");
        }
        *until = Some(now + how_long);
    }

    /// It was suspect before ferry restarted, for `still` more.
    pub(crate) fn restore_suspect(&self, still: Duration) {
        tracing::info!(upstream = %self.name, ?still, "upstream still suspect of sending wrong bytes from before the restart");
        *self.suspect_until.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(Instant::now() + still);
    }

    /// Its wrong bytes were someone else's (the shared store's copy was the bad one).
    pub(crate) fn clear_suspect(&self) {
        *self.suspect_until.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// How much longer it stays suspect; `None` when it is not.
    pub(crate) fn suspect_for(&self) -> Option<Duration> {
        let until = *self.suspect_until.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        until.filter(|u| *u > now).map(|u| u - now)
    }

    pub(crate) fn is_suspect(&self) -> bool {
        self.suspect_for().is_some()
    }

    pub(crate) fn is_drained(&self) -> bool {
        self.drained.load(Ordering::Relaxed)
    }

    /// Takes the upstream out of rotation (or back in). Returns whether it changed.
    pub(crate) fn set_drained(&self, drained: bool) -> bool {
        let before = self.drained.swap(drained, Ordering::Relaxed);
        if before != drained {
            tracing::warn!(upstream = %self.name, drained, "upstream drain state changed by operator");
        }
        before != drained
    }

    pub(crate) fn admit(&self) -> Admission {
        let (admission, transition) = self.breaker.admit();
        self.log_transition(transition);
        admission
    }

    pub fn breaker(&self) -> BreakerSnapshot {
        self.breaker.snapshot()
    }

    /// The upstream answered (any status that shows it is alive) after `latency`.
    pub(crate) fn record_success(&self, latency: Option<Duration>) {
        self.attempts.fetch_add(1, Ordering::Relaxed);
        if let Some(latency) = latency {
            let us = latency.as_micros().min(u64::MAX as u128) as u64;
            self.last_latency_us.store(us, Ordering::Relaxed);
            let old = self.latency_ewma_us.load(Ordering::Relaxed);
            let new = if old == 0 { us } else { (old * 7 + us) / 8 };
            self.latency_ewma_us.store(new, Ordering::Relaxed);
            self.push_answer_time(latency);
        }
        *self.last_answer.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        let transition = self.breaker.record_success();
        self.log_transition(transition);
    }

    fn push_answer_time(&self, time: Duration) {
        let mut times = self.header_times.lock().unwrap_or_else(|p| p.into_inner());
        if times.len() == RECENT_HEADER_TIMES {
            times.pop_front();
        }
        times.push_back(time);
    }

    /// A request to this upstream stayed silent this long before a hedge answered it: its
    /// answer would have taken at least that, so the next hedge waits longer.
    pub(crate) fn note_silence(&self, silent: Duration) {
        self.push_answer_time(silent);
    }

    /// Whether the upstream answered any request since `since`.
    pub(crate) fn answered_since(&self, since: Instant) -> bool {
        self.last_answer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|at| at >= since)
    }

    /// The slowest of the upstream's recent times to answer; `None` before its first answer.
    /// Hedging waits a multiple of it before asking the next upstream.
    pub(crate) fn slowest_recent_answer(&self) -> Option<Duration> {
        let times = self.header_times.lock().unwrap_or_else(|p| p.into_inner());
        times.iter().max().copied()
    }

    pub(crate) fn record_failure(&self, failure: &UpstreamFailure) {
        self.attempts.fetch_add(1, Ordering::Relaxed);
        self.failures.fetch_add(1, Ordering::Relaxed);
        {
            let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            if recent.len() == RECENT_FAILURES {
                recent.pop_front();
            }
            recent.push_back(RecordedFailure {
                at_unix_ms: SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |since| since.as_millis() as u64),
                reason: failure.reason(),
                detail: failure.detail(),
            });
        }
        let answered = !matches!(
            failure.kind,
            FailureKind::Connect
                | FailureKind::ConnectTimeout
                | FailureKind::HeaderTimeout
                | FailureKind::BodyIdleTimeout
                | FailureKind::BodyStalled
        );
        if answered {
            *self.last_answer.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        }
        let transition = match failure.kind {
            // The upstream is alive and answering; these say nothing about its health.
            FailureKind::NotFound | FailureKind::Unauthorized | FailureKind::Forbidden => {
                self.breaker.record_success()
            }
            FailureKind::DigestMismatch => self.breaker.record_failure(BAD_BYTES_WEIGHT),
            // A quota, not a fault: its Retry-After holds the upstream off for as long as it
            // asks, and the breaker's cooldown does not grow on top of that.
            FailureKind::TooManyRequests | FailureKind::ServerError(503)
                if self.quota.held_off() =>
            {
                None
            }
            FailureKind::ServerError(_) | FailureKind::UnexpectedStatus(_) => {
                self.breaker.record_answered_failure(SERVING_OTHERS_WITHIN)
            }
            _ => self.breaker.record_failure(1),
        };
        self.log_transition(transition);
    }

    fn log_transition(&self, transition: Option<Transition>) {
        if let Some(t) = transition {
            tracing::warn!(upstream = %self.name, from = t.from.as_str(), to = t.to.as_str(), "circuit breaker changed state");
        }
    }

    pub fn status(&self) -> serde_json::Value {
        let breaker = self.breaker.snapshot();
        let quota = self.quota.snapshot();
        let recent: Vec<RecordedFailure> = self
            .recent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .rev()
            .cloned()
            .collect();
        serde_json::json!({
            "drained": self.is_drained(),
            "breaker": {
                "state": breaker.state.as_str(),
                "consecutive_failures": breaker.consecutive_failures,
                "retry_in_ms": breaker.retry_in.map(|d| d.as_millis() as u64),
            },
            "attempts": self.attempts.load(Ordering::Relaxed),
            "failures": self.failures.load(Ordering::Relaxed),
            "latency_ms": {
                "last": self.last_latency_us.load(Ordering::Relaxed) as f64 / 1000.0,
                "mean": self.latency_ewma_us.load(Ordering::Relaxed) as f64 / 1000.0,
                "slowest_recent": self.slowest_recent_answer().map(|d| d.as_secs_f64() * 1000.0),
            },
            "ratelimit_limit": quota.limit,
            "ratelimit_remaining": quota.remaining,
            "ratelimit_window_seconds": quota.window.map(|w| w.as_secs()),
            "ratelimit_seen_seconds_ago": quota.age.map(|a| a.as_secs()),
            "retry_after_ms": quota.retry_after.map(|d| d.as_millis() as u64),
            "ratelimit_reserve": quota.reserve,
            "in_reserve": quota.in_reserve,
            "suspect_for_ms": self.suspect_for().map(|d| d.as_millis() as u64),
            "recent_failures": recent,
        })
    }
}
