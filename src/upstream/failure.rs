//! How an upstream attempt failed, whether the next upstream may be tried, and the error a
//! client gets when every upstream failed (404 only when all said "not found").

use http::StatusCode;
use std::fmt;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// TCP connect refused/reset, DNS failure, TLS handshake failure.
    Connect,
    ConnectTimeout,
    /// Connected, but no response headers within the header timeout.
    HeaderTimeout,
    /// Headers arrived, then the body went quiet for longer than the idle timeout.
    BodyIdleTimeout,
    /// The body went quiet for far longer than its own recent pace, and another upstream
    /// delivered the rest first.
    BodyStalled,
    /// The body broke: reset, truncated, or longer than announced.
    BodyBroken,
    /// The body arrived slower than the configured minimum rate.
    TooSlow,
    NotFound,
    Unauthorized,
    Forbidden,
    TooManyRequests,
    /// 5xx from the upstream.
    ServerError(u16),
    /// Any other unexpected status (3xx left unfollowed, 4xx other than the above).
    UnexpectedStatus(u16),
    /// The bytes do not hash to the digest they were asked for or announced.
    DigestMismatch,
    /// A manifest larger than the spec's 4 MiB limit, or a malformed response.
    BadResponse,
    /// Not the upstream's fault: ferry's memory budget for bodies read whole had no room.
    /// Not counted against the upstream, and no other upstream is tried (it would not fit
    /// either); the client gets 503.
    MemoryBudget,
}

/// One failed attempt at one upstream: which upstream, how it failed (the kind decides
/// whether another upstream may be tried), what ferry saw, and the error underneath if any
/// (a transport error, a digest mismatch), kept as a typed source.
#[derive(Debug, Clone)]
pub struct UpstreamFailure {
    pub(crate) upstream: String,
    pub(crate) kind: FailureKind,
    context: String,
    cause: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl UpstreamFailure {
    pub fn new(upstream: &str, kind: FailureKind, context: impl Into<String>) -> Self {
        UpstreamFailure {
            upstream: upstream.to_owned(),
            kind,
            context: context.into(),
            cause: None,
        }
    }

    /// The same failure, with the error that caused it as its source.
    pub(crate) fn caused_by(
        mut self,
        cause: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        self.cause = Some(Arc::new(cause));
        self
    }

    pub(crate) fn from_status(upstream: &str, status: StatusCode) -> Self {
        let kind = match status.as_u16() {
            404 => FailureKind::NotFound,
            401 => FailureKind::Unauthorized,
            403 => FailureKind::Forbidden,
            429 => FailureKind::TooManyRequests,
            code @ 500..=599 => FailureKind::ServerError(code),
            code => FailureKind::UnexpectedStatus(code),
        };
        UpstreamFailure::new(upstream, kind, format!("answered {status}"))
    }

    /// Whether the next upstream may be tried after this failure. Everything except a 404
    /// with 404-failover disabled moves on: availability beats precision for a cache.
    pub(crate) fn may_try_next(&self, failover_on_not_found: bool) -> bool {
        match self.kind {
            FailureKind::NotFound => failover_on_not_found,
            FailureKind::MemoryBudget => false,
            _ => true,
        }
    }

    /// A short label for logs and metrics.
    pub fn reason(&self) -> &'static str {
        self.kind.reason()
    }

    pub fn kind(&self) -> FailureKind {
        self.kind
    }

    /// What ferry saw, followed by the chain of causes: for logs and `/admin/upstreams`.
    pub(crate) fn detail(&self) -> String {
        let mut text = self.context.clone();
        let mut next: Option<&(dyn std::error::Error + 'static)> = self
            .cause
            .as_deref()
            .map(|cause| cause as &(dyn std::error::Error + 'static));
        while let Some(cause) = next {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&cause.to_string());
            next = cause.source();
        }
        text
    }
}

impl std::error::Error for UpstreamFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause
            .as_deref()
            .map(|cause| cause as &(dyn std::error::Error + 'static))
    }
}

impl FailureKind {
    /// Every value [`FailureKind::reason`] returns, and `ok`: the outcome label's values.
    pub(crate) const OUTCOME_LABELS: [&'static str; 17] = [
        "ok",
        "connect",
        "connect_timeout",
        "header_timeout",
        "body_idle_timeout",
        "body_stalled",
        "body_broken",
        "too_slow",
        "not_found",
        "unauthorized",
        "forbidden",
        "too_many_requests",
        "server_error",
        "unexpected_status",
        "digest_mismatch",
        "bad_response",
        "memory_budget",
    ];

    /// A short label for logs and metrics.
    pub fn reason(self) -> &'static str {
        match self {
            FailureKind::Connect => "connect",
            FailureKind::ConnectTimeout => "connect_timeout",
            FailureKind::HeaderTimeout => "header_timeout",
            FailureKind::BodyIdleTimeout => "body_idle_timeout",
            FailureKind::BodyStalled => "body_stalled",
            FailureKind::BodyBroken => "body_broken",
            FailureKind::TooSlow => "too_slow",
            FailureKind::NotFound => "not_found",
            FailureKind::Unauthorized => "unauthorized",
            FailureKind::Forbidden => "forbidden",
            FailureKind::TooManyRequests => "too_many_requests",
            FailureKind::ServerError(_) => "server_error",
            FailureKind::UnexpectedStatus(_) => "unexpected_status",
            FailureKind::DigestMismatch => "digest_mismatch",
            FailureKind::BadResponse => "bad_response",
            FailureKind::MemoryBudget => "memory_budget",
        }
    }
}

impl fmt::Display for UpstreamFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "upstream {} failed ({}): {}",
            self.upstream,
            self.reason(),
            self.detail()
        )
    }
}

/// Every upstream was tried (or skipped) and none succeeded. Its source is the most
/// telling attempt (the first that was not "not found"); `server::response` picks the
/// client's status from all of them.
#[derive(Debug, Clone)]
pub struct UpstreamsExhausted {
    pub(crate) failures: Vec<UpstreamFailure>,
    /// Upstreams never asked (attempts ran out first): they might have the content, so
    /// "not found" is not the answer while any is left.
    pub(crate) untried: Vec<String>,
}

impl UpstreamsExhausted {
    /// Every failure seen, nothing left untried.
    pub fn new(failures: Vec<UpstreamFailure>) -> Self {
        UpstreamsExhausted {
            failures,
            untried: Vec::new(),
        }
    }

    pub(crate) fn all_not_found(&self) -> bool {
        self.untried.is_empty()
            && !self.failures.is_empty()
            && self
                .failures
                .iter()
                .all(|f| f.kind == FailureKind::NotFound)
    }

    pub fn failures(&self) -> &[UpstreamFailure] {
        &self.failures
    }

    /// Upstreams never asked: they might have had the content.
    pub(crate) fn untried(&self) -> &[String] {
        &self.untried
    }
}

impl std::error::Error for UpstreamsExhausted {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.failures
            .iter()
            .find(|failure| failure.kind != FailureKind::NotFound)
            .or(self.failures.first())
            .map(|failure| failure as &(dyn std::error::Error + 'static))
    }
}

impl fmt::Display for UpstreamsExhausted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.failures.is_empty() {
            return write!(f, "no upstream could be tried");
        }
        let parts: Vec<String> = self.failures.iter().map(|x| x.to_string()).collect();
        write!(f, "every upstream failed: {}", parts.join("; "))?;
        if !self.untried.is_empty() {
            write!(f, "; not tried: {}", self.untried.join(", "))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exhausted(kinds: &[FailureKind]) -> UpstreamsExhausted {
        UpstreamsExhausted::new(
            kinds
                .iter()
                .map(|&k| UpstreamFailure::new("u", k, "x"))
                .collect(),
        )
    }

    #[test]
    fn every_reason_is_a_known_outcome_label() {
        use FailureKind::*;
        for kind in [
            Connect,
            ConnectTimeout,
            HeaderTimeout,
            BodyIdleTimeout,
            BodyBroken,
            TooSlow,
            NotFound,
            Unauthorized,
            Forbidden,
            TooManyRequests,
            ServerError(502),
            UnexpectedStatus(302),
            DigestMismatch,
            BadResponse,
        ] {
            assert!(
                FailureKind::OUTCOME_LABELS.contains(&kind.reason()),
                "{kind:?}"
            );
        }
    }

    #[test]
    fn a_failure_keeps_its_cause_as_a_typed_source() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
        let failure =
            UpstreamFailure::new("primary", FailureKind::BodyBroken, "body broke").caused_by(io);
        let source = std::error::Error::source(&failure).expect("a source");
        assert_eq!(
            source.downcast_ref::<std::io::Error>().map(|e| e.kind()),
            Some(std::io::ErrorKind::ConnectionReset)
        );
        assert_eq!(failure.detail(), "body broke: reset by peer");
        let exhausted = exhausted(&[FailureKind::NotFound]);
        let mut both = exhausted.clone();
        both.failures.push(failure);
        let telling = std::error::Error::source(&both).expect("a source");
        assert!(telling.to_string().contains("body_broken"), "{telling}");
    }

    #[test]
    fn not_found_failover_is_configurable() {
        let f = UpstreamFailure::new("u", FailureKind::NotFound, "");
        assert!(f.may_try_next(true));
        assert!(!f.may_try_next(false));
        let f = UpstreamFailure::new("u", FailureKind::ServerError(500), "");
        assert!(f.may_try_next(false));
    }
}
