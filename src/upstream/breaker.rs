//! A circuit breaker per upstream: closed until `threshold` consecutive failures, then open
//! for a cooldown that doubles on every failed probe up to a cap, then half-open, where a
//! single probe request decides. Time is tokio's, so tests can pause it.

use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker.
    pub threshold: u32,
    /// First cooldown after opening.
    pub cooldown: Duration,
    /// Longest cooldown after repeated failed probes.
    pub max_cooldown: Duration,
    /// A probe that has not reported within this long no longer blocks another probe.
    pub probe_timeout: Duration,
}

impl BreakerConfig {
    /// The defaults, usable in constant declarations.
    pub const DEFAULT: BreakerConfig = BreakerConfig {
        threshold: 5,
        cooldown: Duration::from_secs(5),
        max_cooldown: Duration::from_secs(30),
        probe_timeout: Duration::from_secs(60),
    };
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig::DEFAULT
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// Whether a request may use the upstream now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    Allowed,
    /// Allowed as the half-open probe: its outcome closes or reopens the breaker.
    Probe,
    Rejected,
}

#[derive(Debug)]
struct Inner {
    state: BreakerState,
    consecutive_failures: u32,
    /// Current cooldown (doubles on each failed probe).
    cooldown: Duration,
    open_until: Instant,
    probe_started: Option<Instant>,
    /// When the upstream last served a request (or answered in a way that shows it is alive).
    last_success: Option<Instant>,
}

#[derive(Debug)]
pub(crate) struct Breaker {
    config: BreakerConfig,
    inner: Mutex<Inner>,
}

/// A snapshot for status pages.
#[derive(Debug, Clone, Copy)]
pub struct BreakerSnapshot {
    pub(crate) state: BreakerState,
    pub(crate) consecutive_failures: u32,
    /// Time left before an open breaker lets a probe through.
    pub(crate) retry_in: Option<Duration>,
}

/// A state change worth logging.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Transition {
    pub(crate) from: BreakerState,
    pub(crate) to: BreakerState,
}

impl Breaker {
    pub(crate) fn new(config: BreakerConfig) -> Breaker {
        Breaker {
            config,
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                consecutive_failures: 0,
                cooldown: config.cooldown,
                open_until: Instant::now(),
                probe_started: None,
                last_success: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Poisoning only means a panic while updating plain counters; they stay usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Decides whether a request may go to this upstream now (and may move open → half-open).
    pub(crate) fn admit(&self) -> (Admission, Option<Transition>) {
        let mut inner = self.lock();
        let now = Instant::now();
        match inner.state {
            BreakerState::Closed => (Admission::Allowed, None),
            BreakerState::Open if now >= inner.open_until => {
                inner.state = BreakerState::HalfOpen;
                inner.probe_started = Some(now);
                let transition = Transition {
                    from: BreakerState::Open,
                    to: BreakerState::HalfOpen,
                };
                (Admission::Probe, Some(transition))
            }
            BreakerState::Open => (Admission::Rejected, None),
            BreakerState::HalfOpen => {
                let stale_probe = inner
                    .probe_started
                    .is_none_or(|started| now.duration_since(started) >= self.config.probe_timeout);
                if stale_probe {
                    inner.probe_started = Some(now);
                    (Admission::Probe, None)
                } else {
                    (Admission::Rejected, None)
                }
            }
        }
    }

    pub(crate) fn record_success(&self) -> Option<Transition> {
        let mut inner = self.lock();
        inner.consecutive_failures = 0;
        inner.probe_started = None;
        inner.last_success = Some(Instant::now());
        if inner.state == BreakerState::Closed {
            return None;
        }
        let from = inner.state;
        inner.state = BreakerState::Closed;
        inner.cooldown = self.config.cooldown;
        Some(Transition {
            from,
            to: BreakerState::Closed,
        })
    }

    /// Records an error status the upstream answered for one request. While the breaker is
    /// closed and the upstream served another request within `serving_within`, the error is
    /// about that request (a name it rejects, one broken repository), not the upstream's
    /// health: it does not count, so clients cannot open a breaker with requests of their own.
    pub(crate) fn record_answered_failure(&self, serving_within: Duration) -> Option<Transition> {
        {
            let inner = self.lock();
            let serving_others = inner.state == BreakerState::Closed
                && inner
                    .last_success
                    .is_some_and(|at| at.elapsed() < serving_within);
            if serving_others {
                return None;
            }
        }
        self.record_failure(1)
    }

    /// Records a failure worth `weight` ordinary failures (bad bytes count heavily).
    pub(crate) fn record_failure(&self, weight: u32) -> Option<Transition> {
        let mut inner = self.lock();
        let now = Instant::now();
        inner.consecutive_failures = inner.consecutive_failures.saturating_add(weight.max(1));
        match inner.state {
            BreakerState::Closed if inner.consecutive_failures >= self.config.threshold => {
                inner.state = BreakerState::Open;
                inner.cooldown = self.config.cooldown;
                inner.open_until = now + inner.cooldown;
                Some(Transition {
                    from: BreakerState::Closed,
                    to: BreakerState::Open,
                })
            }
            BreakerState::HalfOpen => {
                inner.state = BreakerState::Open;
                inner.cooldown = (inner.cooldown * 2).min(self.config.max_cooldown);
                inner.open_until = now + inner.cooldown;
                inner.probe_started = None;
                Some(Transition {
                    from: BreakerState::HalfOpen,
                    to: BreakerState::Open,
                })
            }
            _ => None,
        }
    }

    pub(crate) fn snapshot(&self) -> BreakerSnapshot {
        let inner = self.lock();
        let now = Instant::now();
        BreakerSnapshot {
            state: inner.state,
            consecutive_failures: inner.consecutive_failures,
            retry_in: (inner.state == BreakerState::Open)
                .then(|| inner.open_until.saturating_duration_since(now)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(BreakerConfig {
            threshold: 3,
            cooldown: Duration::from_secs(10),
            max_cooldown: Duration::from_secs(35),
            probe_timeout: Duration::from_secs(60),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_and_a_success_resets_the_count() {
        let b = breaker();
        b.record_failure(1);
        b.record_failure(1);
        b.record_success();
        b.record_failure(1);
        b.record_failure(1);
        assert_eq!(b.admit().0, Admission::Allowed);
        assert_eq!(b.record_failure(1).map(|t| t.to), Some(BreakerState::Open));
        assert_eq!(b.admit().0, Admission::Rejected);
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_lets_one_probe_decide_and_cooldown_grows_to_a_cap() {
        let b = breaker();
        b.record_failure(3);
        assert_eq!(b.snapshot().state, BreakerState::Open);
        tokio::time::advance(Duration::from_secs(9)).await;
        assert_eq!(b.admit().0, Admission::Rejected);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(b.admit().0, Admission::Probe);
        assert_eq!(b.admit().0, Admission::Rejected, "only one probe at a time");
        // Failed probe: open again for twice as long (20 s).
        b.record_failure(1);
        tokio::time::advance(Duration::from_secs(19)).await;
        assert_eq!(b.admit().0, Admission::Rejected);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(b.admit().0, Admission::Probe);
        // Fails again: 40 s capped to 35 s.
        b.record_failure(1);
        assert_eq!(b.snapshot().retry_in, Some(Duration::from_secs(35)));
        tokio::time::advance(Duration::from_secs(35)).await;
        assert_eq!(b.admit().0, Admission::Probe);
        // A good probe closes it and resets the cooldown.
        assert_eq!(b.record_success().map(|t| t.to), Some(BreakerState::Closed));
        assert_eq!(b.admit().0, Admission::Allowed);
        b.record_failure(3);
        assert_eq!(b.snapshot().retry_in, Some(Duration::from_secs(10)));
    }

    #[tokio::test(start_paused = true)]
    async fn last_resort_attempts_neither_extend_nor_double_an_open_cooldown() {
        let b = breaker();
        b.record_failure(3);
        tokio::time::advance(Duration::from_secs(4)).await;
        // A request tried the open upstream as its last resort, and it failed again.
        assert_eq!(b.record_failure(1), None);
        assert_eq!(b.snapshot().retry_in, Some(Duration::from_secs(6)));
        // A last-resort success closes it at once, without waiting for the probe.
        assert_eq!(b.record_success().map(|t| t.to), Some(BreakerState::Closed));
        assert_eq!(b.admit().0, Admission::Allowed);
    }

    #[tokio::test(start_paused = true)]
    async fn answered_errors_do_not_count_while_the_upstream_serves_other_requests() {
        let b = breaker();
        let window = Duration::from_secs(5);
        b.record_success();
        for _ in 0..10 {
            tokio::time::advance(Duration::from_millis(400)).await;
            assert_eq!(b.record_answered_failure(window), None);
            b.record_success();
        }
        assert_eq!(b.snapshot().state, BreakerState::Closed);
        // Nothing served for longer than the window: answered errors count again.
        tokio::time::advance(window).await;
        b.record_answered_failure(window);
        b.record_answered_failure(window);
        assert_eq!(
            b.record_answered_failure(window).map(|t| t.to),
            Some(BreakerState::Open)
        );
        // Transport failures always count.
        let b = breaker();
        b.record_success();
        b.record_failure(1);
        b.record_failure(1);
        assert_eq!(b.record_failure(1).map(|t| t.to), Some(BreakerState::Open));
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_probe_does_not_block_forever() {
        let b = breaker();
        b.record_failure(3);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(b.admit().0, Admission::Probe);
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(b.admit().0, Admission::Rejected);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(b.admit().0, Admission::Probe);
    }
}
