//! The referrers API (OCI distribution 1.1): `GET /v2/<name>/referrers/<digest>`, which
//! signature and SBOM tools use to find artifacts. Forwarded to the upstreams in order with
//! the usual failover, kept for `referrers_ttl`, and served from the last answer when every
//! upstream is down. An upstream without the API answers 404, which only moves to the next.

use super::{MAX_MANIFEST_BYTES, PullThrough, Source};
use crate::cache::referrers::{ReferrersKey, ReferrersRecord};
use crate::cache::tags::unix_ms;
use crate::error::FerryError;
use crate::oci::{Digest, ErrorCode, RepositoryName};
use crate::upstream::{FailureKind, Route, UpstreamFailure};
use http::{HeaderMap, Method};
use std::time::SystemTime;

/// The response header naming the filters a registry applied.
pub const OCI_FILTERS_APPLIED: &str = "oci-filters-applied";
/// Longest `artifactType` accepted (a media type; the spec's limit for those is 255).
const MAX_ARTIFACT_TYPE_LEN: usize = 255;

/// A referrers list to send: an image index, and whether `artifactType` was applied.
pub struct ReferrersAnswer {
    pub(crate) body: bytes::Bytes,
    pub(crate) filtered: bool,
    pub(crate) source: Source,
}

/// The `artifactType` filter of a referrers request's query, validated as a media type.
pub fn artifact_type_filter(query: Option<&str>) -> Result<Option<String>, FerryError> {
    let Some(query) = query else { return Ok(None) };
    let Ok(url) = reqwest::Url::parse(&format!("http://query.invalid/?{query}")) else {
        return Ok(None);
    };
    let Some(filter) = url
        .query_pairs()
        .find(|(key, _)| key == "artifactType")
        .map(|(_, value)| value.into_owned())
    else {
        return Ok(None);
    };
    let valid = !filter.is_empty()
        && filter.len() <= MAX_ARTIFACT_TYPE_LEN
        && filter
            .split_once('/')
            .is_some_and(|(kind, sub)| !kind.is_empty() && !sub.is_empty() && !sub.contains('/'))
        && filter
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-/".contains(&b));
    if valid {
        Ok(Some(filter))
    } else {
        Err(FerryError::Client {
            code: ErrorCode::Unsupported,
            status: http::StatusCode::BAD_REQUEST,
            message: "artifactType must be a media type (type/subtype)".into(),
        })
    }
}

/// Checks an upstream's referrers answer and applies `artifact_type` if the upstream did
/// not: the body is an image index with a `manifests` array. Returns the body to serve.
fn accept_index(
    upstream: &str,
    body: &[u8],
    artifact_type: Option<&str>,
    applied_upstream: bool,
) -> Result<(String, bool), UpstreamFailure> {
    let bad = |detail: &str| UpstreamFailure::new(upstream, FailureKind::BadResponse, detail);
    let mut index: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| bad("referrers answer is not JSON"))?;
    let Some(manifests) = index
        .get_mut("manifests")
        .and_then(serde_json::Value::as_array_mut)
    else {
        return Err(bad("referrers answer is not an image index (no manifests)"));
    };
    match artifact_type {
        Some(wanted) if !applied_upstream => {
            manifests.retain(|descriptor| {
                descriptor.get("artifactType").and_then(|t| t.as_str()) == Some(wanted)
            });
            Ok((index.to_string(), true))
        }
        Some(_) => Ok((String::from_utf8_lossy(body).into_owned(), true)),
        None => Ok((String::from_utf8_lossy(body).into_owned(), false)),
    }
}

impl PullThrough {
    pub async fn referrers(
        &self,
        registry: &str,
        name: &RepositoryName,
        subject: &Digest,
        artifact_type: Option<String>,
    ) -> Result<ReferrersAnswer, FerryError> {
        let key = ReferrersKey {
            registry: registry.to_owned(),
            repository: name.as_str().to_owned(),
            subject: subject.to_string(),
            artifact_type: artifact_type.clone(),
        };
        let known = self.cache.referrers.get(&key).await;
        let answer = |record: &ReferrersRecord, source: Source| ReferrersAnswer {
            body: bytes::Bytes::from(record.body.clone()),
            filtered: record.filtered,
            source,
        };
        if let Some(record) = &known
            && (self.settings.offline || record.age() <= self.settings.referrers_ttl)
        {
            return Ok(answer(record, Source::Cache));
        }
        if self.settings.offline {
            return Err(Self::offline_miss(
                ErrorCode::ManifestUnknown,
                &format!("the referrers of {subject}"),
            ));
        }
        let upstreams = self.upstreams_for(registry)?;
        let suffix = format!("referrers/{subject}");
        let query = artifact_type.as_ref().and_then(|filter| {
            let mut url = reqwest::Url::parse("http://query.invalid/").ok()?;
            url.query_pairs_mut().append_pair("artifactType", filter);
            url.query().map(str::to_owned)
        });
        let fetched = upstreams
            .first_success(Route::Digest(subject), |client| {
                let (suffix, query, filter) =
                    (suffix.clone(), query.clone(), artifact_type.clone());
                async move {
                    let response = client
                        .send(
                            Method::GET,
                            name,
                            &suffix,
                            query.as_deref(),
                            HeaderMap::new(),
                        )
                        .await?;
                    let applied_upstream = filter.is_some()
                        && response
                            .headers()
                            .get_all(OCI_FILTERS_APPLIED)
                            .iter()
                            .filter_map(|v| v.to_str().ok())
                            .any(|v| v.split(',').any(|f| f.trim() == "artifactType"));
                    let body = client
                        .body(response)
                        .read_to_end(MAX_MANIFEST_BYTES)
                        .await?;
                    let (body, filtered) =
                        accept_index(client.name(), &body, filter.as_deref(), applied_upstream)?;
                    Ok(ReferrersRecord {
                        key: ReferrersKey {
                            registry: registry.to_owned(),
                            repository: name.as_str().to_owned(),
                            subject: subject.to_string(),
                            artifact_type: filter,
                        },
                        body,
                        filtered,
                        fetched_at_unix_ms: unix_ms(SystemTime::now()),
                        upstream: client.name().to_owned(),
                    })
                }
            })
            .await;
        match fetched {
            Ok(record) => {
                let served = answer(&record, Source::Upstream(record.upstream.clone()));
                if let Err(e) = self.cache.referrers.put(&self.cache.layout, record).await {
                    tracing::warn!(%subject, error = %e, "cannot keep a referrers list in the cache");
                }
                Ok(served)
            }
            Err(exhausted) => match known {
                // Every upstream failed: the last known list beats an error.
                Some(record) if !exhausted.all_not_found() => {
                    tracing::warn!(%subject, %exhausted, "serving the last known referrers list");
                    Ok(answer(&record, Source::StaleCache))
                }
                _ if exhausted.all_not_found() => Err(FerryError::client(
                    ErrorCode::ManifestUnknown,
                    format!(
                        "no upstream of {registry} serves the referrers of {subject} (a registry without the referrers API answers 404; clients fall back to the sha256-<hex> tag)"
                    ),
                )),
                _ => Err(FerryError::Upstreams(exhausted)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::media_type::OCI_INDEX;

    #[test]
    fn artifact_type_filters_are_media_types() {
        assert_eq!(artifact_type_filter(None).unwrap(), None);
        assert_eq!(artifact_type_filter(Some("ns=docker.io")).unwrap(), None);
        assert_eq!(
            artifact_type_filter(Some(
                "artifactType=application%2Fvnd.dev.cosign.artifact.sig.v1%2Bjson&ns=x"
            ))
            .unwrap()
            .as_deref(),
            Some("application/vnd.dev.cosign.artifact.sig.v1+json")
        );
        for bad in [
            "artifactType=",
            "artifactType=nope",
            "artifactType=a/b/c",
            "artifactType=a/%0a",
        ] {
            assert!(artifact_type_filter(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_unfiltered_answer_is_filtered_here() {
        let body = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {"mediaType": OCI_INDEX, "digest": "sha256:aa", "size": 1, "artifactType": "application/a"},
                {"mediaType": OCI_INDEX, "digest": "sha256:bb", "size": 1, "artifactType": "application/b"}
            ]
        })
        .to_string();
        let (filtered, applied) =
            accept_index("u", body.as_bytes(), Some("application/b"), false).unwrap();
        assert!(applied);
        assert!(filtered.contains("sha256:bb") && !filtered.contains("sha256:aa"));
        let (whole, applied) = accept_index("u", body.as_bytes(), None, false).unwrap();
        assert!(!applied);
        assert_eq!(whole, body);
        assert!(accept_index("u", b"{}", None, false).is_err());
        assert!(accept_index("u", b"<html>", None, false).is_err());
    }
}
