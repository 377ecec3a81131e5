//! An upstream's quota as its answers announce it: Docker Hub's `ratelimit-limit: 100;w=21600`
//! and `ratelimit-remaining: 76;w=21600`, the IETF draft's `RateLimit-Limit`,
//! `RateLimit-Remaining`, `RateLimit-Reset` and `RateLimit-Policy` (and its combined
//! `RateLimit: limit=.., remaining=.., reset=..`), `X-RateLimit-*`; and `Retry-After` on a 429
//! or 503 (seconds or an HTTP date), before which the upstream is asked only as a last resort.

use http::HeaderMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// Longest `Retry-After` honoured: a registry asking for more is asked again after this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

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

/// The quota last seen for one upstream, and the `Retry-After` in force.
#[derive(Debug, Default)]
pub(crate) struct Quota {
    state: Mutex<QuotaState>,
}

#[derive(Debug, Default, Clone, Copy)]
struct QuotaState {
    reading: Option<QuotaReading>,
    seen_at: Option<Instant>,
    retry_after_until: Option<Instant>,
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
}

impl Quota {
    fn lock(&self) -> std::sync::MutexGuard<'_, QuotaState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes what an answer with `status` and `headers` says: its quota, and a `Retry-After`
    /// on a 429 or 503. Returns the `Retry-After` delay when one was set.
    pub(crate) fn note_answer(&self, status: u16, headers: &HeaderMap) -> Option<Duration> {
        let reading = read_quota(headers);
        let retry_after = matches!(status, 429 | 503)
            .then(|| read_retry_after(headers))
            .flatten();
        if reading.is_none() && retry_after.is_none() {
            return None;
        }
        let now = Instant::now();
        let mut state = self.lock();
        if let Some(reading) = reading {
            state.reading = Some(reading);
            state.seen_at = Some(now);
        }
        if let Some(delay) = retry_after {
            let until = now + delay;
            state.retry_after_until = Some(state.retry_after_until.map_or(until, |u| u.max(until)));
        }
        retry_after
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
            quota.note_answer(200, &headers(&[("retry-after", "30")])),
            None
        );
        assert!(!quota.held_off());
        assert_eq!(
            quota.note_answer(
                429,
                &headers(&[("retry-after", "30"), ("ratelimit-remaining", "0;w=60")])
            ),
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
}
