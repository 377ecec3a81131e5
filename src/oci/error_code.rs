//! The distribution spec's error codes, their HTTP statuses, and the
//! `{"errors":[{"code":...,"message":...}]}` body every error response carries.

use http::StatusCode;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BlobUnknown,
    DigestInvalid,
    ManifestUnknown,
    ManifestInvalid,
    NameInvalid,
    NameUnknown,
    TagInvalid,
    RangeInvalid,
    Unsupported,
    Unauthorized,
    Denied,
    TooManyRequests,
    /// Not in the spec's table; used for upstream and cache failures (5xx).
    Unavailable,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BlobUnknown => "BLOB_UNKNOWN",
            ErrorCode::DigestInvalid => "DIGEST_INVALID",
            ErrorCode::ManifestUnknown => "MANIFEST_UNKNOWN",
            ErrorCode::ManifestInvalid => "MANIFEST_INVALID",
            ErrorCode::NameInvalid => "NAME_INVALID",
            ErrorCode::NameUnknown => "NAME_UNKNOWN",
            ErrorCode::TagInvalid => "TAG_INVALID",
            ErrorCode::RangeInvalid => "RANGE_INVALID",
            ErrorCode::Unsupported => "UNSUPPORTED",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::Denied => "DENIED",
            ErrorCode::TooManyRequests => "TOOMANYREQUESTS",
            ErrorCode::Unavailable => "UNAVAILABLE",
        }
    }

    /// The JSON error body for this code and a human message.
    pub fn body(self, message: &str) -> String {
        serde_json::json!({
            "errors": [{ "code": self.as_str(), "message": message, "detail": null }]
        })
        .to_string()
    }

    /// The status the spec pairs with this code when nothing more specific applies.
    pub(crate) fn default_status(self) -> StatusCode {
        match self {
            ErrorCode::BlobUnknown | ErrorCode::ManifestUnknown | ErrorCode::NameUnknown => {
                StatusCode::NOT_FOUND
            }
            ErrorCode::DigestInvalid
            | ErrorCode::ManifestInvalid
            | ErrorCode::NameInvalid
            | ErrorCode::TagInvalid => StatusCode::BAD_REQUEST,
            ErrorCode::RangeInvalid => StatusCode::RANGE_NOT_SATISFIABLE,
            ErrorCode::Unsupported => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::Denied => StatusCode::FORBIDDEN,
            ErrorCode::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::Unavailable => StatusCode::BAD_GATEWAY,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_the_spec_shape() {
        let body: serde_json::Value =
            serde_json::from_str(&ErrorCode::BlobUnknown.body("no \"such\" blob")).unwrap();
        assert_eq!(body["errors"][0]["code"], "BLOB_UNKNOWN");
        assert_eq!(body["errors"][0]["message"], "no \"such\" blob");
        assert_eq!(
            ErrorCode::NameInvalid.default_status(),
            StatusCode::BAD_REQUEST
        );
    }
}
