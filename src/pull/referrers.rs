//! The referrers API (OCI distribution 1.1): `GET /v2/<name>/referrers/<digest>`, which
//! signature and SBOM tools use to find artifacts. Forwarded to the upstreams in order with
//! the usual failover, kept for `referrers_ttl`, and served from the last answer when every
//! upstream is down. An upstream without the API answers 404, which only moves to the next.

use super::{MAX_MANIFEST_BYTES, PullThrough, Source};
use crate::cache::referrers::{ReferrersKey, ReferrersRecord};
use crate::cache::tags::unix_ms;
use crate::error::FerryError;
use crate::oci::link::next_page_query;
use crate::oci::listings::{MAX_REFERRERS, ReferrerDescriptor, ReferrersIndex, ReferrersPage};
use crate::oci::{Digest, ErrorCode, RepositoryName};
use crate::upstream::memory_budget::BodyClass;
use crate::upstream::{FailureKind, Route, UpstreamClient, UpstreamFailure, UpstreamsExhausted};
use http::{HeaderMap, Method};
use std::sync::Arc;
use std::time::SystemTime;

/// The response header naming the filters a registry applied.
pub(crate) const OCI_FILTERS_APPLIED: &str = "oci-filters-applied";
/// Longest `artifactType` accepted (a media type; the spec's limit for those is 255).
const MAX_ARTIFACT_TYPE_LEN: usize = 255;

/// A referrers list to send: an image index, and whether `artifactType` was applied.
pub(crate) struct ReferrersAnswer {
    pub(crate) body: bytes::Bytes,
    pub(crate) filtered: bool,
    pub(crate) source: Source,
    /// The memory budget held for a list just fetched, until its response is sent.
    pub(crate) lease: Option<std::sync::Arc<crate::upstream::BudgetLease>>,
}

/// The `artifactType` filter of a referrers request's query, validated as a media type.
pub(crate) fn artifact_type_filter(query: Option<&str>) -> Result<Option<String>, FerryError> {
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

/// Most pages of one upstream's referrers list that are followed (`Link: <...>; rel="next"`);
/// a longer list is refused as a bad response rather than served cut short.
const MAX_REFERRERS_PAGES: usize = 32;

/// The pages of an upstream's referrers answer, merged into one image index.
struct ReferrersPages {
    upstream: String,
    artifact_type: Option<String>,
    /// The first page as sent, served unchanged when it is the only page and unfiltered.
    first_page: Option<bytes::Bytes>,
    manifests: Vec<ReferrerDescriptor>,
    pages: usize,
    bytes: usize,
}

impl ReferrersPages {
    fn new(upstream: &str, artifact_type: Option<String>) -> Self {
        ReferrersPages {
            upstream: upstream.to_owned(),
            artifact_type,
            first_page: None,
            manifests: Vec::new(),
            pages: 0,
            bytes: 0,
        }
    }

    fn bad(&self, detail: &str) -> UpstreamFailure {
        UpstreamFailure::new(&self.upstream, FailureKind::BadResponse, detail)
    }

    /// Adds one page: it must be an image index whose `manifests` are descriptors.
    fn add_page(&mut self, body: bytes::Bytes) -> Result<(), UpstreamFailure> {
        self.pages += 1;
        self.bytes += body.len();
        if self.pages > MAX_REFERRERS_PAGES || self.bytes > MAX_MANIFEST_BYTES {
            return Err(self.bad("referrers list longer than ferry follows (32 pages, 4 MiB)"));
        }
        let page = ReferrersPage::read(&body)
            .map_err(|e| self.bad(&format!("referrers answer refused: {e}")))?;
        if self.manifests.len() + page.manifests.len() > MAX_REFERRERS {
            return Err(self.bad(&format!(
                "referrers list of more than {MAX_REFERRERS} descriptors"
            )));
        }
        self.first_page = (self.pages == 1).then_some(body);
        self.manifests.extend(page.manifests);
        Ok(())
    }

    /// The index to serve, and whether `artifactType` was applied (here, when the upstream
    /// did not).
    fn finish(mut self) -> Result<(bytes::Bytes, bool), UpstreamFailure> {
        if self.pages == 0 {
            return Err(self.bad("referrers answer has no pages"));
        }
        let upstream = self.upstream.clone();
        let serialize = move |manifests: &[ReferrerDescriptor]| {
            serde_json::to_string(&ReferrersIndex {
                schema_version: 2,
                media_type: crate::oci::media_type::OCI_INDEX,
                manifests,
            })
            .map(bytes::Bytes::from)
            .map_err(|e| {
                UpstreamFailure::new(
                    &upstream,
                    FailureKind::BadResponse,
                    format!("cannot write the merged referrers index: {e}"),
                )
            })
        };
        match (&self.artifact_type, &self.first_page) {
            // Applied here even when the upstream says it filtered: a later page may not be.
            (Some(wanted), _) => {
                self.manifests
                    .retain(|descriptor| descriptor.artifact_type.as_deref() == Some(wanted));
                Ok((serialize(&self.manifests)?, true))
            }
            // Served as sent (it parsed as JSON, so it is UTF-8).
            (None, Some(body)) => Ok((body.clone(), false)),
            (None, None) => Ok((serialize(&self.manifests)?, false)),
        }
    }
}

impl PullThrough {
    /// The referrers of `subject`: the kept list while fresh (or offline), else one fetch
    /// for all identical requests at once, falling back to the last known list when every
    /// upstream fails.
    pub(crate) async fn referrers(
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
        let known = self.cache.referrers_record(&key).await;
        if let Some(record) = &known
            && (self.settings.offline || record.age() <= self.settings.referrers_ttl)
        {
            return Ok(ReferrersAnswer::from_record(record, Source::Cache));
        }
        if self.settings.offline {
            return Err(Self::offline_miss(
                ErrorCode::ManifestUnknown,
                &format!("the referrers of {subject}"),
            ));
        }
        // Identical requests at once make one upstream fetch: the rest find its answer (or
        // its failure).
        let fetch_key = format!(
            "referrers {registry}\0{name}\0{subject}\0{}",
            artifact_type.as_deref().unwrap_or("")
        );
        let _fetching = self.list_fetches.lock(&fetch_key).await;
        let known = match self.cache.referrers_record(&key).await {
            Some(record) if record.age() <= self.settings.referrers_ttl => {
                return Ok(ReferrersAnswer::from_record(&record, Source::Cache));
            }
            latest => latest.or(known),
        };
        let upstreams = self.upstreams_for(registry)?;
        let fetched = match self.recent_list_failures.get(&fetch_key) {
            Some(exhausted) => Err(exhausted),
            None => {
                upstreams
                    .first_success_past_missing_api(Route::Digest(subject), |client| {
                        read_referrers_pages(client, name, key.clone())
                    })
                    .await
            }
        };
        if let Err(exhausted) = &fetched {
            self.recent_list_failures
                .insert(fetch_key, exhausted.clone());
        }
        match fetched {
            Ok((record, held)) => {
                let mut served = ReferrersAnswer::from_record(
                    &record,
                    Source::Upstream(record.upstream.clone()),
                );
                served.lease = Some(std::sync::Arc::new(held));
                if let Err(e) = self.cache.put_referrers_record(record).await {
                    tracing::warn!(%subject, error = %e, "cannot keep a referrers list in the cache");
                }
                Ok(served)
            }
            Err(exhausted) => referrers_failure(exhausted, known, &key),
        }
    }
}

/// `?artifactType=...` for the upstream, encoded.
fn referrers_query(artifact_type: Option<&str>) -> Option<String> {
    let filter = artifact_type?;
    let mut url = reqwest::Url::parse("http://query.invalid/").ok()?;
    url.query_pairs_mut().append_pair("artifactType", filter);
    url.query().map(str::to_owned)
}

/// Reads one upstream's referrers list, following its `Link` pages (each page once), within
/// the memory budget for lists, into one record.
async fn read_referrers_pages(
    client: Arc<UpstreamClient>,
    name: &RepositoryName,
    key: ReferrersKey,
) -> Result<(ReferrersRecord, crate::upstream::BudgetLease), UpstreamFailure> {
    let suffix = format!("referrers/{}", key.subject);
    let query = referrers_query(key.artifact_type.as_deref());
    let mut response = client
        .send(
            Method::GET,
            name,
            &suffix,
            query.as_deref(),
            HeaderMap::new(),
        )
        .await?;
    let mut pages = ReferrersPages::new(client.name(), key.artifact_type.clone());
    let bad =
        |detail: String| UpstreamFailure::new(client.name(), FailureKind::BadResponse, detail);
    // Covers every page read, until the merged list is built.
    let mut held = crate::upstream::BudgetLease::default();
    let mut queries_seen = std::collections::HashSet::from([query.clone().unwrap_or_default()]);
    loop {
        let request_url = response.url().clone();
        let next = next_page_query(response.headers(), &request_url, "referrers")
            .map_err(|e| bad(e.to_string()))?;
        if let Some(next) = &next
            && !queries_seen.insert(next.clone())
        {
            return Err(bad(format!("referrers Link names a page again ({next})")));
        }
        // The parsed descriptors take up to about twice the page's bytes.
        let (body, lease) = client
            .body(response)
            .read_to_end_within(
                MAX_MANIFEST_BYTES,
                BodyClass::List,
                3,
                std::mem::take(&mut held),
            )
            .await?;
        held = lease;
        pages.add_page(body)?;
        let Some(next) = next else { break };
        // A later page that is missing is a broken list, not a missing API.
        response = client
            .send(Method::GET, name, &suffix, Some(&next), HeaderMap::new())
            .await
            .map_err(|failure| match failure.kind {
                FailureKind::NotFound => {
                    bad(format!("referrers page {next:?} is missing")).caused_by(failure)
                }
                _ => failure,
            })?;
    }
    let (body, filtered) = pages.finish()?;
    let record = ReferrersRecord {
        key,
        body,
        filtered,
        fetched_at_unix_ms: unix_ms(SystemTime::now()),
        upstream: client.name().to_owned(),
    };
    Ok((record, held))
}

/// When every upstream failed: the last known list beats an error; "not found" everywhere
/// means no upstream has the referrers API for it.
fn referrers_failure(
    exhausted: UpstreamsExhausted,
    known: Option<ReferrersRecord>,
    key: &ReferrersKey,
) -> Result<ReferrersAnswer, FerryError> {
    let ReferrersKey {
        registry, subject, ..
    } = key;
    match known {
        Some(record) if !exhausted.all_not_found() => {
            tracing::warn!(%subject, %exhausted, "serving the last known referrers list");
            Ok(ReferrersAnswer::from_record(&record, Source::StaleCache))
        }
        _ if exhausted.all_not_found() => Err(FerryError::client(
            ErrorCode::ManifestUnknown,
            format!(
                "no upstream of {registry} serves the referrers of {subject} (a registry without the referrers API answers 404; clients fall back to the sha256-<hex> tag)"
            ),
        )),
        _ => Err(FerryError::Upstreams(exhausted)),
    }
}

impl ReferrersAnswer {
    fn from_record(record: &ReferrersRecord, source: Source) -> Self {
        ReferrersAnswer {
            body: record.body.clone(),
            filtered: record.filtered,
            source,
            lease: None,
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
        let merge = |filter: Option<&str>, pages: &[&str]| {
            let mut merged = ReferrersPages::new("u", filter.map(str::to_owned));
            for page in pages {
                merged.add_page(bytes::Bytes::from(page.to_string()))?;
            }
            merged
                .finish()
                .map(|(body, applied)| (String::from_utf8(body.to_vec()).unwrap(), applied))
        };
        let (filtered, applied) = merge(Some("application/b"), &[&body]).unwrap();
        assert!(applied);
        assert!(filtered.contains("sha256:bb") && !filtered.contains("sha256:aa"));
        let (whole, applied) = merge(None, &[&body]).unwrap();
        assert!(!applied);
        assert_eq!(whole, body, "a single unfiltered page is served as sent");
        assert!(merge(None, &["{}"]).is_err());
        assert!(merge(None, &["<html>"]).is_err());

        // Pages are merged in order, and a list longer than the page bound is refused.
        let page = |digest: &str| {
            serde_json::json!({"schemaVersion": 2, "manifests": [
                {"mediaType": OCI_INDEX, "digest": digest, "size": 1}
            ]})
            .to_string()
        };
        let (merged, _) = merge(None, &[&page("sha256:01"), &page("sha256:02")]).unwrap();
        let merged: serde_json::Value = serde_json::from_str(&merged).unwrap();
        assert_eq!(merged["manifests"][0]["digest"], "sha256:01");
        assert_eq!(merged["manifests"][1]["digest"], "sha256:02");
        let many: Vec<String> = (0..=MAX_REFERRERS_PAGES)
            .map(|_| page("sha256:03"))
            .collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(merge(None, &many).is_err());
    }

    #[test]
    fn the_next_page_is_asked_of_the_same_upstream_and_path() {
        let request = reqwest::Url::parse(
            "https://registry.example/prefix/v2/library/app/referrers/sha256:5e?ns=docker.io",
        )
        .unwrap();
        let path = request.path().to_owned();
        let next = |link: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(http::header::LINK, link.parse().unwrap());
            next_page_query(&headers, &request, "referrers")
        };
        let some = |query: &str| Ok(Some(query.to_owned()));
        assert_eq!(
            next_page_query(&HeaderMap::new(), &request, "referrers"),
            Ok(None)
        );
        assert_eq!(
            next(&format!("<{path}?n=2&last=b>; rel=\"next\"")),
            some("n=2&last=b")
        );
        assert_eq!(
            next(&format!(
                "<https://elsewhere.example{path}?page=2>; rel=next"
            )),
            some("page=2"),
            "only the query is used: the host is the upstream's"
        );
        assert_eq!(
            next("<?n=2&last=a,b>; REL=\"Next\""),
            some("n=2&last=a,b"),
            "RFC 8288: relative to the request, a comma inside <>"
        );
        assert_eq!(
            next(&format!(
                "<{path}?x=1>; rel=\"prev\", <{path}?x=3&ns=quay.io>; title=\"a, b\"; rel=\"last next\""
            )),
            some("x=3"),
            "the second item, with ns dropped (ferry adds it)"
        );
        assert_eq!(
            next(&format!("<{}?x=1>; rel=next", path.replace(':', "%3A"))),
            some("x=1"),
            "a percent-encoded digest is the same path"
        );
        assert_eq!(next(&format!("<{path}?x=1>; rel=\"prev\"")), Ok(None));
        assert!(next("</v2/library/app/manifests/x>; rel=\"next\"").is_err());
        assert!(next("</prefix/v2/library/other/referrers/sha256:5e>; rel=next").is_err());
        assert!(next("nonsense; rel=\"next\"").is_err());
        assert!(next("<unterminated; rel=\"next\"").is_err());
    }
}
