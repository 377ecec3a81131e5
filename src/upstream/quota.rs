//! An upstream's quota as its answers announce it: Docker Hub's `ratelimit-limit: 100;w=21600`
//! and `ratelimit-remaining: 76;w=21600`, the IETF draft's `RateLimit-Limit`,
//! `RateLimit-Remaining`, `RateLimit-Reset` and `RateLimit-Policy` (and its combined
//! `RateLimit: limit=.., remaining=.., reset=..`), `X-RateLimit-*`; and `Retry-After` on a 429
//! or 503 (seconds or an HTTP date), before which the upstream is asked only as a last resort;
//! and whether its remaining budget is within its configured reserve.

use http::HeaderMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// Longest `Retry-After` honoured: a registry asking for more is asked again after this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// A reading that names neither its window nor its reset keeps the upstream in its reserve at
/// most this long (unless a newer answer says otherwise).
const RESERVE_WITHOUT_WINDOW: Duration = Duration::from_secs(3600);

/// What one answer said about the quota.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct QuotaReading {
    pub(crate) limit: Option<u64>,
    pub(crate) remaining: Option<u64>,
    /// The window the limit applies to (`w=` in Docker Hub's and the draft's policy).
    pub(crate) window: Option<Duration>,
    /// When the window resets, from now (`reset=`, `RateLimit-Reset`, `X-RateLimit-Reset`).
    pub(crate) reset_in: Option<Duration>,
}

impl QuotaReading {
    fn is_empty(&self) -> bool {
        self.limit.is_none() && self.remaining.is_none()
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// `100;w=21600` or `100, 100;w=21600` (the draft's policy list): the number, and `w=` if given.
fn number_and_window(value: &str) -> (Option<u64>, Option<Duration>) {
    let first = value.split(',').next().unwrap_or("").trim();
    let mut parts = first.split(';').map(str::trim);
    let number = parts.next().and_then(|n| n.parse().ok());
    let window = parts
        .filter_map(|p| p.strip_prefix("w="))
        .find_map(|w| w.trim().parse().ok())
        .map(Duration::from_secs);
    // A window can also follow in the list: `100, 100;w=21600`.
    let window = window.or_else(|| {
        value
            .split([',', ';'])
            .filter_map(|p| p.trim().strip_prefix("w="))
            .find_map(|w| w.trim().parse().ok())
            .map(Duration::from_secs)
    });
    (number, window)
}

/// A reset given as seconds from now, or (`X-RateLimit-Reset` on some registries) as a Unix
/// time in seconds.
fn reset_from(value: &str) -> Option<Duration> {
    let seconds: u64 = value.trim().parse().ok()?;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .ok()?
        .as_secs();
    if seconds > 1_000_000_000 {
        Some(Duration::from_secs(seconds.saturating_sub(now)))
    } else {
        Some(Duration::from_secs(seconds))
    }
}

/// The quota an answer's headers announce, if any.
pub(crate) fn read_quota(headers: &HeaderMap) -> Option<QuotaReading> {
    let mut reading = QuotaReading::default();
    for prefix in ["ratelimit-", "x-ratelimit-"] {
        if let Some(value) = header(headers, &format!("{prefix}limit")) {
            let (limit, window) = number_and_window(value);
            reading.limit = reading.limit.or(limit);
            reading.window = reading.window.or(window);
        }
        if let Some(value) = header(headers, &format!("{prefix}remaining")) {
            let (remaining, window) = number_and_window(value);
            reading.remaining = reading.remaining.or(remaining);
            reading.window = reading.window.or(window);
        }
        if let Some(value) = header(headers, &format!("{prefix}reset")) {
            reading.reset_in = reading.reset_in.or_else(|| reset_from(value));
        }
    }
    if let Some(value) = header(headers, "ratelimit-policy") {
        let (limit, window) = number_and_window(value);
        reading.limit = reading.limit.or(limit);
        reading.window = reading.window.or(window);
    }
    // The draft's combined field: `RateLimit: limit=100, remaining=50, reset=30`.
    if let Some(value) = header(headers, "ratelimit") {
        for part in value.split([',', ';']).map(str::trim) {
            let Some((key, number)) = part.split_once('=') else {
                continue;
            };
            let number: Option<u64> = number.trim().trim_matches('"').parse().ok();
            match key.trim() {
                "limit" | "l" => reading.limit = reading.limit.or(number),
                "remaining" | "r" => reading.remaining = reading.remaining.or(number),
                "reset" | "t" => {
                    reading.reset_in = reading.reset_in.or(number.map(Duration::from_secs))
                }
                _ => {}
            }
        }
    }
    (!reading.is_empty()).then_some(reading)
}

/// `Retry-After` as a delay: seconds, or an HTTP date (RFC 9110), capped at an hour.
pub(crate) fn read_retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = header(headers, "retry-after")?;
    let delay = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => httpdate::parse_http_date(value)
            .ok()?
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    };
    Some(delay.min(MAX_RETRY_AFTER))
}

/// The quota last seen for one upstream, the `Retry-After` in force, and its reserve.
#[derive(Debug, Default)]
pub(crate) struct Quota {
    /// Remaining pulls at or below which manifest GETs ask this upstream after the others.
    reserve: u64,
    state: Mutex<QuotaState>,
}

#[derive(Debug, Default, Clone, Copy)]
struct QuotaState {
    reading: Option<QuotaReading>,
    seen_at: Option<Instant>,
    retry_after_until: Option<Instant>,
    /// Whether the upstream was within its reserve when last looked at.
    in_reserve: bool,
    /// How many times it entered its reserve.
    reserve_entries: u64,
}

impl QuotaState {
    /// Whether the last reading puts the upstream within `reserve` at `now`: its remaining
    /// budget is at or below it and the window it was read in has not passed (the reset the
    /// answer named, else its window).
    fn within_reserve(&self, reserve: u64, now: Instant) -> bool {
        let (Some(reading), Some(seen_at)) = (self.reading, self.seen_at) else {
            return false;
        };
        let Some(remaining) = reading.remaining else {
            return false;
        };
        let lasts = reading
            .reset_in
            .or(reading.window)
            .unwrap_or(RESERVE_WITHOUT_WINDOW);
        remaining <= reserve && now < seen_at + lasts
    }
}

/// An upstream crossed its reserve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReserveChange {
    /// Its remaining budget fell to the reserve: pulls ask the others first.
    Entered { remaining: u64, reserve: u64 },
    /// A newer answer showed more left, or the window passed: it is first again.
    Left,
}

/// What one answer changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct AnswerNoted {
    /// The `Retry-After` a 429 or 503 set.
    pub(crate) retry_after: Option<Duration>,
    pub(crate) reserve: Option<ReserveChange>,
}

/// The quota as the admin API shows it.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct QuotaSnapshot {
    pub(crate) limit: Option<u64>,
    pub(crate) remaining: Option<u64>,
    pub(crate) window: Option<Duration>,
    /// How long ago the quota was read.
    pub(crate) age: Option<Duration>,
    /// How long the upstream is still held off by a `Retry-After`.
    pub(crate) retry_after: Option<Duration>,
    /// The configured reserve, and whether the budget is within it now.
    pub(crate) reserve: u64,
    pub(crate) in_reserve: bool,
    pub(crate) reserve_entries: u64,
}

impl Quota {
    pub(crate) fn with_reserve(reserve: u64) -> Self {
        Quota {
            reserve,
            state: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QuotaState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes what an answer with `status` and `headers` says: its quota, and a `Retry-After`
    /// on a 429 or 503.
    pub(crate) fn note_answer(&self, status: u16, headers: &HeaderMap) -> AnswerNoted {
        let reading = read_quota(headers);
        let retry_after = matches!(status, 429 | 503)
            .then(|| read_retry_after(headers))
            .flatten();
        if reading.is_none() && retry_after.is_none() {
            return AnswerNoted::default();
        }
        let now = Instant::now();
        let mut state = self.lock();
        match reading {
            Some(reading) if reading.remaining.is_some() => {
                state.reading = Some(reading);
                state.seen_at = Some(now);
            }
            // Only the limit or the policy: the budget last announced (and when) stands.
            Some(reading) => {
                let mut merged = state.reading.unwrap_or_default();
                merged.limit = reading.limit.or(merged.limit);
                merged.window = reading.window.or(merged.window);
                state.reading = Some(merged);
                state.seen_at = state.seen_at.or(Some(now));
            }
            None => {}
        }
        if let Some(delay) = retry_after {
            let until = now + delay;
            state.retry_after_until = Some(state.retry_after_until.map_or(until, |u| u.max(until)));
        }
        AnswerNoted {
            retry_after,
            reserve: self.update_reserve(&mut state, now),
        }
    }

    /// Whether the remaining budget is within the reserve now, and the change since the
    /// last look (a window that passed is noticed here).
    pub(crate) fn check_reserve(&self) -> (bool, Option<ReserveChange>) {
        let mut state = self.lock();
        let change = self.update_reserve(&mut state, Instant::now());
        (state.in_reserve, change)
    }

    fn update_reserve(&self, state: &mut QuotaState, now: Instant) -> Option<ReserveChange> {
        let inside = state.within_reserve(self.reserve, now);
        if inside == state.in_reserve {
            return None;
        }
        state.in_reserve = inside;
        if inside {
            state.reserve_entries += 1;
            Some(ReserveChange::Entered {
                remaining: state.reading.and_then(|r| r.remaining).unwrap_or(0),
                reserve: self.reserve,
            })
        } else {
            Some(ReserveChange::Left)
        }
    }

    /// Whether a `Retry-After` still holds the upstream off.
    pub(crate) fn held_off(&self) -> bool {
        self.lock()
            .retry_after_until
            .is_some_and(|until| until > Instant::now())
    }

    pub(crate) fn snapshot(&self) -> QuotaSnapshot {
        let state = *self.lock();
        let now = Instant::now();
        QuotaSnapshot {
            limit: state.reading.and_then(|r| r.limit),
            remaining: state.reading.and_then(|r| r.remaining),
            window: state.reading.and_then(|r| r.window),
            age: state.seen_at.map(|at| now.saturating_duration_since(at)),
            retry_after: state
                .retry_after_until
                .filter(|until| *until > now)
                .map(|until| until - now),
            reserve: self.reserve,
            in_reserve: state.within_reserve(self.reserve, now),
            reserve_entries: state.reserve_entries,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        map
    }

    #[test]
    fn docker_hub_headers() {
        let reading = read_quota(&headers(&[
            ("ratelimit-limit", "100;w=21600"),
            ("ratelimit-remaining", "76;w=21600"),
            ("docker-ratelimit-source", "192.0.2.1"),
        ]))
        .unwrap();
        assert_eq!(reading.limit, Some(100));
        assert_eq!(reading.remaining, Some(76));
        assert_eq!(reading.window, Some(Duration::from_secs(21600)));
    }

    #[test]
    fn the_drafts_and_x_headers() {
        let reading = read_quota(&headers(&[
            ("RateLimit-Limit", "10"),
            ("RateLimit-Remaining", "3"),
            ("RateLimit-Reset", "30"),
            ("RateLimit-Policy", "10;w=60"),
        ]))
        .unwrap();
        assert_eq!(
            (
                reading.limit,
                reading.remaining,
                reading.window,
                reading.reset_in
            ),
            (
                Some(10),
                Some(3),
                Some(Duration::from_secs(60)),
                Some(Duration::from_secs(30))
            )
        );
        let combined = read_quota(&headers(&[
            ("RateLimit", "limit=100, remaining=50, reset=5"),
            ("RateLimit-Policy", "100;w=3600"),
        ]))
        .unwrap();
        assert_eq!((combined.limit, combined.remaining), (Some(100), Some(50)));
        assert_eq!(combined.window, Some(Duration::from_secs(3600)));
        let x = read_quota(&headers(&[("X-RateLimit-Remaining", "7")])).unwrap();
        assert_eq!((x.limit, x.remaining), (None, Some(7)));
        assert!(read_quota(&headers(&[("content-type", "text/plain")])).is_none());
        assert!(read_quota(&headers(&[("ratelimit-remaining", "lots")])).is_none());
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date_capped() {
        assert_eq!(
            read_retry_after(&headers(&[("retry-after", "7")])),
            Some(Duration::from_secs(7))
        );
        let soon = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(120));
        let delay = read_retry_after(&headers(&[("retry-after", &soon)])).unwrap();
        assert!(
            delay > Duration::from_secs(110) && delay <= Duration::from_secs(120),
            "{delay:?}"
        );
        let past = httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(120));
        assert_eq!(
            read_retry_after(&headers(&[("retry-after", &past)])),
            Some(Duration::ZERO)
        );
        assert_eq!(
            read_retry_after(&headers(&[("retry-after", "999999")])),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(read_retry_after(&headers(&[("retry-after", "soon")])), None);
    }

    #[test]
    fn a_retry_after_holds_the_upstream_off_only_on_429_and_503() {
        let quota = Quota::default();
        assert_eq!(
            quota
                .note_answer(200, &headers(&[("retry-after", "30")]))
                .retry_after,
            None
        );
        assert!(!quota.held_off());
        assert_eq!(
            quota
                .note_answer(
                    429,
                    &headers(&[("retry-after", "30"), ("ratelimit-remaining", "0;w=60")])
                )
                .retry_after,
            Some(Duration::from_secs(30))
        );
        assert!(quota.held_off());
        let snapshot = quota.snapshot();
        assert_eq!(snapshot.remaining, Some(0));
        assert!(snapshot.retry_after.unwrap() > Duration::from_secs(29));
        // A shorter Retry-After later does not shorten the hold.
        quota.note_answer(503, &headers(&[("retry-after", "1")]));
        assert!(quota.snapshot().retry_after.unwrap() > Duration::from_secs(29));
    }

    #[test]
    fn the_reserve_is_entered_at_or_below_it_and_left_when_more_shows_or_the_window_passes() {
        let quota = Quota::with_reserve(5);
        let note = |remaining: &str| {
            quota
                .note_answer(200, &headers(&[("ratelimit-remaining", remaining)]))
                .reserve
        };
        assert_eq!(note("6;w=60"), None);
        assert_eq!(
            note("5;w=60"),
            Some(ReserveChange::Entered {
                remaining: 5,
                reserve: 5
            })
        );
        assert_eq!(note("2;w=60"), None, "still inside: no second entry");
        assert!(quota.check_reserve().0);
        assert_eq!(note("40;w=60"), Some(ReserveChange::Left));
        assert_eq!(quota.snapshot().reserve_entries, 1);
        // A window that passes ends the reserve without a newer answer.
        assert!(note("0;w=1").is_some());
        assert!(quota.snapshot().in_reserve);
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(quota.check_reserve(), (false, Some(ReserveChange::Left)));
        // The reset the answer names wins over the window.
        quota.note_answer(
            200,
            &headers(&[
                ("ratelimit-remaining", "0;w=3600"),
                ("ratelimit-reset", "1"),
            ]),
        );
        assert!(quota.check_reserve().0);
        std::thread::sleep(Duration::from_millis(1100));
        assert!(!quota.check_reserve().0);
        assert_eq!(quota.snapshot().reserve_entries, 3);
        // An answer without a remaining count says nothing about the reserve.
        note("1;w=600");
        assert_eq!(
            quota
                .note_answer(200, &headers(&[("ratelimit-limit", "100;w=600")]))
                .reserve,
            None
        );
        assert!(quota.check_reserve().0, "still inside");
        assert_eq!(quota.snapshot().limit, Some(100));
        assert_eq!(quota.snapshot().remaining, Some(1));
    }
}
