//! The only place errors become HTTP: status, OCI error body and headers. Also the body
//! type and the headers every response carries.

use crate::error::FerryError;
use crate::oci::ErrorCode;
use crate::upstream::{FailureKind, UpstreamsExhausted};
use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE};
use http::{HeaderValue, Response, StatusCode};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;

pub(crate) type ResponseBody = UnsyncBoxBody<Bytes, std::io::Error>;

pub(crate) const API_VERSION_HEADER: &str = "docker-distribution-api-version";
pub(crate) const API_VERSION: &str = "registry/2.0";

pub(crate) fn full_body(bytes: impl Into<Bytes>) -> ResponseBody {
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A whole body that keeps `held` (a memory-budget lease) until the response is done with
/// it, so memory counted for a buffered answer stays counted while it is sent.
pub(crate) fn full_body_holding<T: Send + Unpin + 'static>(bytes: Bytes, held: T) -> ResponseBody {
    HoldingBody {
        inner: http_body_util::Full::new(bytes),
        _held: held,
    }
    .map_err(|never| match never {})
    .boxed_unsync()
}

struct HoldingBody<T> {
    inner: http_body_util::Full<Bytes>,
    _held: T,
}

impl<T: Unpin> http_body::Body for HoldingBody<T> {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

pub(crate) fn empty_body() -> ResponseBody {
    full_body(Bytes::new())
}

/// The body of a HEAD response. Its size is deliberately "unknown" so hyper keeps the
/// `Content-Length` set by the handler (the length a GET would return) instead of
/// replacing it with 0.
pub(crate) fn head_body() -> ResponseBody {
    let nothing =
        futures_util::stream::empty::<Result<hyper::body::Frame<Bytes>, std::io::Error>>();
    http_body_util::StreamBody::new(nothing).boxed_unsync()
}

/// A response with the registry API version header set.
pub(crate) fn builder(status: StatusCode) -> http::response::Builder {
    Response::builder()
        .status(status)
        .header(API_VERSION_HEADER, API_VERSION)
}

/// Status and OCI code for an error, and whether it is the client's fault.
pub(crate) fn classify(error: &FerryError) -> (StatusCode, ErrorCode) {
    match error {
        FerryError::Client { code, status, .. } => (*status, *code),
        FerryError::RangeNotSatisfiable { .. } => {
            (StatusCode::RANGE_NOT_SATISFIABLE, ErrorCode::RangeInvalid)
        }
        FerryError::Upstreams(exhausted) => {
            let status = exhausted_status(exhausted);
            let code = if status == StatusCode::TOO_MANY_REQUESTS {
                ErrorCode::TooManyRequests
            } else {
                ErrorCode::Unavailable
            };
            (status, code)
        }
        FerryError::MidStream(_) => (StatusCode::BAD_GATEWAY, ErrorCode::Unavailable),
        // A full, read-only or inaccessible disk is a condition the operator fixes and the
        // client may retry through (503); anything else in the cache is ferry's fault (500).
        FerryError::Cache(failure)
            if failure.is_out_of_space()
                || matches!(
                    failure.io_kind(),
                    Some(
                        std::io::ErrorKind::ReadOnlyFilesystem
                            | std::io::ErrorKind::PermissionDenied
                    )
                ) =>
        {
            (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable)
        }
        FerryError::Cache(_) => (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Unavailable),
    }
}

/// The most meaningful status when every upstream failed: 404 when every upstream said not
/// found, 504 when they all timed out, 503 when they were overloaded or unavailable (or some
/// were never asked, or ferry's own memory budget was full: worth retrying), else 502.
fn exhausted_status(exhausted: &UpstreamsExhausted) -> StatusCode {
    use FailureKind::*;
    let failures = exhausted.failures();
    if failures.is_empty() {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    if exhausted.all_not_found() {
        return StatusCode::NOT_FOUND;
    }
    if failures.iter().any(|f| f.kind() == MemoryBudget) {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    if !exhausted.untried().is_empty() && failures.iter().all(|f| f.kind() == NotFound) {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let relevant: Vec<FailureKind> = failures
        .iter()
        .map(|f| f.kind())
        .filter(|kind| *kind != NotFound)
        .collect();
    if relevant.iter().all(|kind| {
        matches!(
            kind,
            ConnectTimeout | HeaderTimeout | BodyIdleTimeout | TooSlow
        )
    }) {
        return StatusCode::GATEWAY_TIMEOUT;
    }
    if relevant
        .iter()
        .all(|kind| matches!(kind, TooManyRequests | ServerError(503) | Connect))
    {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    StatusCode::BAD_GATEWAY
}

pub(crate) fn error_response(error: &FerryError, head: bool) -> Response<ResponseBody> {
    let (status, code) = classify(error);
    let body = code.body(&error.to_string());
    let mut builder = builder(status)
        .header(CONTENT_TYPE, "application/json")
        .header(CONTENT_LENGTH, body.len());
    if let FerryError::RangeNotSatisfiable { size } = error {
        builder = builder.header(CONTENT_RANGE, format!("bytes */{size}"));
    }
    if code == ErrorCode::Unsupported && status == StatusCode::METHOD_NOT_ALLOWED {
        builder = builder.header(http::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    }
    let body = if head { head_body() } else { full_body(body) };
    builder.body(body).unwrap_or_else(|_| fallback_500())
}

/// Only reached if a header value built above were invalid, which they are not.
fn fallback_500() -> Response<ResponseBody> {
    let mut response = Response::new(empty_body());
    *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    response
}

/// A response the handler built, or, if building it failed (a header value ferry made
/// was invalid: ferry's own bug, not the client's, the cache's or an upstream's), a 500
/// saying so.
pub(crate) fn or_500(built: Result<Response<ResponseBody>, http::Error>) -> Response<ResponseBody> {
    built.unwrap_or_else(|error| {
        tracing::error!(%error, "ferry built an invalid response");
        let body =
            ErrorCode::Unavailable.body(&format!("ferry built an invalid response: {error}"));
        builder(StatusCode::INTERNAL_SERVER_ERROR)
            .header(CONTENT_TYPE, "application/json")
            .header(CONTENT_LENGTH, body.len())
            .body(full_body(body))
            .unwrap_or_else(|_| fallback_500())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exhausted_of(kinds: &[FailureKind]) -> UpstreamsExhausted {
        UpstreamsExhausted::new(
            kinds
                .iter()
                .map(|&kind| crate::upstream::UpstreamFailure::new("u", kind, "x"))
                .collect(),
        )
    }

    #[test]
    fn most_meaningful_status() {
        use FailureKind::*;
        assert_eq!(
            exhausted_status(&exhausted_of(&[NotFound, NotFound])),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            exhausted_status(&exhausted_of(&[NotFound, HeaderTimeout])),
            StatusCode::GATEWAY_TIMEOUT
        );
        assert_eq!(
            exhausted_status(&exhausted_of(&[ServerError(503), Connect])),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            exhausted_status(&exhausted_of(&[ServerError(500), HeaderTimeout])),
            StatusCode::BAD_GATEWAY
        );
        assert_eq!(
            exhausted_status(&exhausted_of(&[DigestMismatch])),
            StatusCode::BAD_GATEWAY
        );
        let mut untried = exhausted_of(&[NotFound]);
        untried.untried.push("secondary".into());
        assert!(!untried.all_not_found());
        assert_eq!(exhausted_status(&untried), StatusCode::SERVICE_UNAVAILABLE);
        assert!(untried.to_string().contains("not tried: secondary"));
    }

    #[test]
    fn cache_failures_keep_their_cause_and_map_to_a_status_once() {
        let status = |errno| {
            classify(&FerryError::cache(
                "writing a fill",
                std::io::Error::from_raw_os_error(errno),
            ))
            .0
        };
        assert_eq!(status(libc::ENOSPC), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(status(libc::EDQUOT), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(status(libc::EROFS), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(status(libc::EACCES), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(status(libc::EIO), StatusCode::INTERNAL_SERVER_ERROR);
        let own = FerryError::cache_reason("no room within the cache size");
        assert_eq!(classify(&own).0, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(
            FerryError::cache("reading", std::io::Error::from_raw_os_error(libc::ENOSPC))
                .to_string()
                .contains("No space left")
        );
    }
}
