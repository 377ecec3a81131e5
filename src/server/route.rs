//! Maps a request path to an endpoint of the distribution API, validating the repository
//! name, tag and digest on the way. Nothing here touches the cache or upstreams.

use crate::error::FerryError;
use crate::oci::{Digest, ErrorCode, Reference, RepositoryName, Tag};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/v2/`
    Ping,
    Manifest {
        name: RepositoryName,
        reference: Reference,
    },
    Blob {
        name: RepositoryName,
        digest: Digest,
    },
    TagList {
        name: RepositoryName,
    },
    /// `/v2/<name>/referrers/<digest>` (OCI distribution 1.1).
    Referrers {
        name: RepositoryName,
        subject: Digest,
    },
    /// `/v2/<name>/blobs/uploads/...`: pushing, which a pull-through cache does not do.
    Upload,
    /// `/ferry/v1/pins`: the images this ferry pins, read by build hosts (`pins_from`).
    PinSet,
}

/// Where a ferry serves its pin set on the registry port (read-only), for `pins_from`.
pub const PIN_SET_PATH: &str = "/ferry/v1/pins";

impl Route {
    pub fn label(&self) -> &'static str {
        match self {
            Route::Ping => "ping",
            Route::Manifest { .. } => "manifest",
            Route::Blob { .. } => "blob",
            Route::TagList { .. } => "tags",
            Route::Referrers { .. } => "referrers",
            Route::Upload => "upload",
            Route::PinSet => "pins",
        }
    }
}

pub fn parse(path: &str) -> Result<Route, FerryError> {
    if path == PIN_SET_PATH {
        return Ok(Route::PinSet);
    }
    let Some(rest) = path.strip_prefix("/v2") else {
        return Err(unknown_endpoint(path));
    };
    if rest.is_empty() || rest == "/" {
        return Ok(Route::Ping);
    }
    let Some(rest) = rest.strip_prefix('/') else {
        return Err(unknown_endpoint(path));
    };
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Ok(Route::TagList {
            name: name_of(name)?,
        });
    }
    if let Some((_, after)) = rest.split_once("/blobs/uploads")
        && (after.is_empty() || after.starts_with('/'))
    {
        return Ok(Route::Upload);
    }
    if let Some((name, subject)) = rest.rsplit_once("/referrers/") {
        return Ok(Route::Referrers {
            name: name_of(name)?,
            subject: digest_of(subject)?,
        });
    }
    if let Some((name, reference)) = rest.rsplit_once("/manifests/") {
        let name = name_of(name)?;
        let reference = if reference.contains(':') {
            Reference::Digest(digest_of(reference)?)
        } else {
            Reference::Tag(
                Tag::parse(reference)
                    .map_err(|e| FerryError::client(ErrorCode::TagInvalid, e.to_string()))?,
            )
        };
        return Ok(Route::Manifest { name, reference });
    }
    if let Some((name, digest)) = rest.rsplit_once("/blobs/") {
        let name = name_of(name)?;
        return Ok(Route::Blob {
            name,
            digest: digest_of(digest)?,
        });
    }
    Err(unknown_endpoint(path))
}

fn name_of(name: &str) -> Result<RepositoryName, FerryError> {
    RepositoryName::parse(name)
        .map_err(|e| FerryError::client(ErrorCode::NameInvalid, e.to_string()))
}

fn digest_of(digest: &str) -> Result<Digest, FerryError> {
    digest
        .parse()
        .map_err(|e: crate::oci::digest::DigestParseError| {
            FerryError::client(ErrorCode::DigestInvalid, e.to_string())
        })
}

fn unknown_endpoint(path: &str) -> FerryError {
    FerryError::Client {
        code: ErrorCode::Unsupported,
        status: http::StatusCode::NOT_FOUND,
        message: format!(
            "no such endpoint: {}",
            path.chars().take(200).collect::<String>()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn code(path: &str) -> ErrorCode {
        match parse(path) {
            Err(FerryError::Client { code, .. }) => code,
            other => panic!("{path}: expected a client error, got {other:?}"),
        }
    }

    #[test]
    fn routes() {
        assert_eq!(parse("/v2/").unwrap(), Route::Ping);
        assert_eq!(parse("/v2").unwrap(), Route::Ping);
        assert!(matches!(
            parse("/v2/a/b/manifests/latest").unwrap(),
            Route::Manifest {
                reference: Reference::Tag(_),
                ..
            }
        ));
        assert!(matches!(
            parse(&format!("/v2/a/manifests/{D}")).unwrap(),
            Route::Manifest {
                reference: Reference::Digest(_),
                ..
            }
        ));
        assert!(matches!(
            parse(&format!("/v2/a/blobs/{D}")).unwrap(),
            Route::Blob { .. }
        ));
        assert!(matches!(
            parse("/v2/a/b/tags/list").unwrap(),
            Route::TagList { .. }
        ));
        assert_eq!(parse("/v2/a/blobs/uploads/").unwrap(), Route::Upload);
        assert_eq!(
            parse("/v2/a/blobs/uploads/1234-abcd").unwrap(),
            Route::Upload
        );
        // A repository may itself be called "manifests" or "blobs".
        assert!(matches!(
            parse(&format!("/v2/manifests/blobs/{D}")).unwrap(),
            Route::Blob { .. }
        ));
    }

    #[test]
    fn validation_errors() {
        assert_eq!(code("/v2/UPPER/manifests/latest"), ErrorCode::NameInvalid);
        assert_eq!(
            code("/v2/../../etc/manifests/latest"),
            ErrorCode::NameInvalid
        );
        assert_eq!(
            code("/v2/a%2f..%2fb/blobs/sha256:00"),
            ErrorCode::NameInvalid
        );
        assert_eq!(code("/v2/a/manifests/.bad"), ErrorCode::TagInvalid);
        assert_eq!(code("/v2/a/manifests/sha256:xyz"), ErrorCode::DigestInvalid);
        assert_eq!(
            code("/v2/a/blobs/sha256:../../../etc/passwd"),
            ErrorCode::DigestInvalid
        );
        assert_eq!(code("/v2/a/blobs/latest"), ErrorCode::DigestInvalid);
        assert_eq!(code("/v3/"), ErrorCode::Unsupported);
        assert_eq!(code("/v2/a/unknown"), ErrorCode::Unsupported);
    }
}
