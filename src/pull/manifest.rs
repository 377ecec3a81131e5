//! Manifests and tags. A manifest is fetched whole and verified before any byte reaches
//! the client: against the requested digest, or for a tag against the digest of its body
//! (and the upstream's `Docker-Content-Digest`). Tags are revalidated with a HEAD after
//! their TTL and served stale when every upstream fails. Manifest GETs are pulls: upstreams
//! within their rate-limit reserve are asked for them last (see `reserve.rs`).

use super::{MAX_MANIFEST_BYTES, MAX_TAG_LIST_BYTES, PullThrough, Source};
use crate::cache::provenance::ContentKind;
use crate::cache::tags::unix_ms;
use crate::cache::{CachedManifest, TagKey, TagRecord};
use crate::error::FerryError;
use crate::oci::media_type::{AcceptList, manifest_media_type};
use crate::oci::{
    Digest, DigestAlgorithm, DigestVerifier, ErrorCode, Reference, RepositoryName, Tag,
};
use crate::shared::StoreRead;
use crate::upstream::memory_budget::BodyClass;
use crate::upstream::{
    FailureKind, RequestCost, Route, UpstreamFailure, Upstreams, UpstreamsExhausted,
};
use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Method};
use std::time::SystemTime;

pub(crate) const DOCKER_CONTENT_DIGEST: &str = "docker-content-digest";

pub(crate) struct ManifestAnswer {
    pub(crate) manifest: CachedManifest,
    pub(crate) source: Source,
}

/// A forwarded tag list: the body, and the pagination query (`n`, `last`) of the next page
/// when the upstream named one (the client is linked to it under ferry's own path).
#[derive(Clone)]
pub(crate) struct TagListAnswer {
    pub(crate) body: Bytes,
    /// The memory budget held for the list while it is cached for waiters and sent.
    pub(crate) lease: Option<std::sync::Arc<crate::upstream::BudgetLease>>,
    pub(crate) next_page: Option<String>,
    pub(crate) source: Source,
}

impl PullThrough {
    pub(crate) async fn manifest(
        &self,
        registry: &str,
        name: &RepositoryName,
        reference: &Reference,
        accept: &AcceptList,
    ) -> Result<ManifestAnswer, FerryError> {
        let upstreams = self.upstreams_for(registry)?;
        match reference {
            Reference::Digest(digest) => {
                self.manifest_by_digest(&upstreams, registry, name, digest, accept)
                    .await
            }
            Reference::Tag(tag) => {
                self.manifest_by_tag(&upstreams, registry, name, tag, accept)
                    .await
            }
        }
    }

    pub(super) async fn cached_manifest(
        &self,
        digest: &Digest,
    ) -> Result<Option<CachedManifest>, FerryError> {
        self.cache
            .manifest(digest)
            .await
            .map_err(|e| FerryError::cache("reading a cached manifest", e))
    }

    async fn manifest_by_digest(
        &self,
        upstreams: &Upstreams,
        registry: &str,
        name: &RepositoryName,
        digest: &Digest,
        accept: &AcceptList,
    ) -> Result<ManifestAnswer, FerryError> {
        if let Some(manifest) = self.cached_manifest(digest).await? {
            return Ok(ManifestAnswer {
                manifest,
                source: Source::Cache,
            });
        }
        let _guard = self
            .manifest_fetches
            .lock(&format!("digest {digest}"))
            .await;
        if let Some(manifest) = self.cached_manifest(digest).await? {
            return Ok(ManifestAnswer {
                manifest,
                source: Source::Cache,
            });
        }
        if let Some(manifest) = self.shared_manifest(digest).await {
            return Ok(ManifestAnswer {
                manifest,
                source: Source::SharedStore,
            });
        }
        let (manifest, upstream) = self
            .fetch_manifest(
                upstreams,
                name,
                &Reference::Digest(digest.clone()),
                accept,
                RequestCost::Pull,
            )
            .await
            .map_err(|e| manifest_error(e, &format!("manifest {digest} of {name}")))?;
        self.store_manifest(&manifest).await;
        self.share_manifest(&manifest);
        let source = Source::Upstream(upstream);
        self.served_by(ContentKind::Manifest, digest, registry, &source)
            .await;
        Ok(ManifestAnswer { manifest, source })
    }

    /// The manifest from the shared store, verified against its digest and kept locally;
    /// `None` if there is no store, it lacks the manifest, fails, or holds a corrupt copy.
    pub(super) async fn shared_manifest(&self, digest: &Digest) -> Option<CachedManifest> {
        let shared = self.shared.as_ref()?;
        let path = shared.manifest_path(digest);
        let StoreRead::Found((body, content_type)) =
            shared.get_small(&path, MAX_MANIFEST_BYTES).await
        else {
            return None;
        };
        if !digest.matches(&body) {
            shared.report_corrupt(path, format!("bytes do not hash to {digest}"));
            return None;
        }
        let media_type = manifest_media_type(content_type.as_deref(), &body);
        let manifest = CachedManifest {
            digest: digest.clone(),
            media_type,
            body,
        };
        self.store_manifest(&manifest).await;
        Some(manifest)
    }

    /// Uploads a manifest fetched from an upstream to the shared store (in the background).
    pub(super) fn share_manifest(&self, manifest: &CachedManifest) {
        if let Some(shared) = &self.shared {
            shared.upload_small_later(
                shared.manifest_path(&manifest.digest),
                manifest.body.clone(),
                Some(manifest.media_type.clone()),
            );
        }
    }

    /// A tag record from the shared store (another replica confirmed it), kept locally with
    /// its original confirmation time, so tag freshness rules apply to it unchanged.
    pub(super) async fn shared_tag(&self, key: &TagKey) -> Option<TagRecord> {
        let shared = self.shared.as_ref()?;
        let path = shared.tag_path(&key.registry, &key.repository, &key.tag);
        let StoreRead::Found((body, _)) = shared.get_small(&path, 64 * 1024).await else {
            return None;
        };
        let record: TagRecord = match serde_json::from_slice::<TagRecord>(&body) {
            Ok(record) => record.clamped_to_now(),
            Err(e) => {
                shared.report_corrupt(path, format!("not a tag record: {e}"));
                return None;
            }
        };
        if record.key() != *key || record.digest.parse::<Digest>().is_err() {
            shared.report_corrupt(path, "a tag record for another tag".into());
            return None;
        }
        if let Err(e) = self.cache.put_tag_record(record.clone()).await {
            tracing::error!(error = %e, "cache failure: could not record a tag from the shared store");
        }
        Some(record)
    }

    /// Stores a verified manifest. A cache failure is logged, not fatal: the client still
    /// gets the verified bytes.
    pub(super) async fn store_manifest(&self, manifest: &CachedManifest) {
        if let Err(e) = self.cache.store_manifest(manifest).await {
            tracing::error!(digest = %manifest.digest, error = %e, "cache failure: could not store manifest");
        }
    }

    pub(super) fn tag_key(&self, registry: &str, name: &RepositoryName, tag: &Tag) -> TagKey {
        TagKey {
            registry: registry.to_owned(),
            repository: name.as_str().to_owned(),
            tag: tag.as_str().to_owned(),
        }
    }

    /// The cached manifest a tag record points at, if present and acceptable to the client.
    async fn usable_tagged_manifest(
        &self,
        record: &TagRecord,
        accept: &AcceptList,
    ) -> Result<Option<CachedManifest>, FerryError> {
        let Ok(digest) = record.digest.parse::<Digest>() else {
            return Ok(None);
        };
        let manifest = match self.cached_manifest(&digest).await? {
            Some(manifest) => Some(manifest),
            None => self.shared_manifest(&digest).await,
        };
        Ok(manifest.filter(|m| accept.accepts(&m.media_type)))
    }

    async fn manifest_by_tag(
        &self,
        upstreams: &Upstreams,
        registry: &str,
        name: &RepositoryName,
        tag: &Tag,
        accept: &AcceptList,
    ) -> Result<ManifestAnswer, FerryError> {
        let key = self.tag_key(registry, name, tag);
        if let Some(answer) = self.pinned_tag_answer(&key, accept).await? {
            return Ok(answer);
        }
        if self.settings.offline {
            return self.offline_tag(&key, name, tag, accept).await;
        }
        if let Some(record) = self.cache.tag_record(&key).await
            && record.age() < self.settings.tag_ttl
            && let Some(manifest) = self.usable_tagged_manifest(&record, accept).await?
        {
            return Ok(ManifestAnswer {
                manifest,
                source: Source::Cache,
            });
        }

        let _guard = self
            .manifest_fetches
            .lock(&format!("tag {name}:{tag}"))
            .await;
        let record = match self.cache.tag_record(&key).await {
            Some(record) => Some(record),
            None => self.shared_tag(&key).await,
        };
        let cached = match &record {
            Some(record) => self.usable_tagged_manifest(record, accept).await?,
            None => None,
        };
        let tagged = TaggedRequest {
            upstreams,
            registry,
            name,
            tag,
            accept,
            key: &key,
        };
        let moved = match (&record, &cached) {
            (Some(record), Some(manifest)) => {
                match self.revalidate_tag(&tagged, record, manifest).await {
                    Revalidation::Answered(answer) => return answer,
                    Revalidation::Moved(head) => Some(head),
                }
            }
            _ => None,
        };
        let stale = record.zip(cached);
        if tagged.upstreams.any_in_reserve()
            && let Some(answer) = self
                .tag_sparing_reserve(&tagged, moved, stale.as_ref())
                .await
        {
            return answer;
        }
        self.fetch_tag(&tagged, stale).await
    }

    /// Offline: the last known mapping, whatever its age (within max_stale).
    async fn offline_tag(
        &self,
        key: &TagKey,
        name: &RepositoryName,
        tag: &Tag,
        accept: &AcceptList,
    ) -> Result<ManifestAnswer, FerryError> {
        if let Some(record) = self.cache.tag_record(key).await
            && self.within_max_stale(record.age())
            && let Some(manifest) = self.usable_tagged_manifest(&record, accept).await?
        {
            return Ok(ManifestAnswer {
                manifest,
                source: Source::Cache,
            });
        }
        Err(Self::offline_miss(
            ErrorCode::ManifestUnknown,
            &format!("manifest {name}:{tag}"),
        ))
    }

    /// A kept tag past its TTL: fresh again if another request revalidated it meanwhile,
    /// else a HEAD asks whether it still names the same manifest. `Moved` (with what the HEAD
    /// said) when it moved, for the caller to fetch; a stale answer (within max_stale) when
    /// every upstream failed.
    async fn revalidate_tag(
        &self,
        tagged: &TaggedRequest<'_>,
        record: &TagRecord,
        manifest: &CachedManifest,
    ) -> Revalidation {
        if record.age() < self.settings.tag_ttl {
            // Revalidated by another request while this one waited.
            return Revalidation::Answered(Ok(ManifestAnswer {
                manifest: manifest.clone(),
                source: Source::Cache,
            }));
        }
        match self
            .head_tag(tagged.upstreams, tagged.name, tagged.tag, tagged.accept)
            .await
        {
            Ok((Some(digest), upstream)) if digest == manifest.digest => {
                self.record_tag(tagged.key, manifest, &upstream).await;
                let confirmed_by = Source::Upstream(upstream);
                self.served_by(
                    ContentKind::Manifest,
                    &digest,
                    tagged.registry,
                    &confirmed_by,
                )
                .await;
                Revalidation::Answered(Ok(ManifestAnswer {
                    manifest: manifest.clone(),
                    source: Source::Cache,
                }))
            }
            // Moved (or no digest header): the caller fetches it.
            Ok(head) => Revalidation::Moved(head),
            Err(exhausted) if self.within_max_stale(record.age()) => {
                tracing::warn!(tag = %tagged.label(), error = %exhausted, "serving a stale tag: every upstream failed to revalidate it");
                Revalidation::Answered(Ok(ManifestAnswer {
                    manifest: manifest.clone(),
                    source: Source::StaleCache,
                }))
            }
            Err(exhausted) => {
                tracing::warn!(tag = %tagged.label(), age = ?record.age(), "not serving a stale tag older than max_stale");
                Revalidation::Answered(Err(FerryError::Upstreams(exhausted)))
            }
        }
    }

    /// Fetches the manifest a tag names now, keeps it and the tag's record; when every
    /// upstream fails, the kept mapping (`stale`) is served within max_stale.
    async fn fetch_tag(
        &self,
        tagged: &TaggedRequest<'_>,
        stale: Option<(TagRecord, CachedManifest)>,
    ) -> Result<ManifestAnswer, FerryError> {
        match self
            .fetch_manifest(
                tagged.upstreams,
                tagged.name,
                &Reference::Tag(tagged.tag.clone()),
                tagged.accept,
                RequestCost::Pull,
            )
            .await
        {
            Ok((manifest, upstream)) => {
                self.store_manifest(&manifest).await;
                self.share_manifest(&manifest);
                self.record_tag(tagged.key, &manifest, &upstream).await;
                let source = Source::Upstream(upstream);
                self.served_by(
                    ContentKind::Manifest,
                    &manifest.digest,
                    tagged.registry,
                    &source,
                )
                .await;
                Ok(ManifestAnswer { manifest, source })
            }
            Err(exhausted) => match stale {
                Some((record, manifest)) if self.within_max_stale(record.age()) => {
                    tracing::warn!(tag = %tagged.label(), error = %exhausted, "serving a stale tag: every upstream failed");
                    Ok(ManifestAnswer {
                        manifest,
                        source: Source::StaleCache,
                    })
                }
                _ => Err(manifest_error(
                    exhausted,
                    &format!("manifest {}", tagged.label()),
                )),
            },
        }
    }

    /// Records that `upstream` just confirmed `key -> manifest`, unless the tag is pinned to
    /// another digest here: a pinned tag moves only when the pin keeper has the new image on
    /// disk (a client whose `Accept` ruled out the pinned manifest may still be answered).
    pub(super) async fn record_tag(&self, key: &TagKey, manifest: &CachedManifest, upstream: &str) {
        if self
            .cache
            .pinned_tag(key)
            .is_some_and(|pinned| pinned != manifest.digest)
        {
            return;
        }
        self.write_tag_record(key, manifest, upstream).await;
    }

    /// Writes the tag's record (and shares it through the store). The manifest is committed
    /// first, so a tag never points at a manifest the cache does not have.
    pub(super) async fn write_tag_record(
        &self,
        key: &TagKey,
        manifest: &CachedManifest,
        upstream: &str,
    ) {
        let record = TagRecord {
            registry: key.registry.clone(),
            repository: key.repository.clone(),
            tag: key.tag.clone(),
            digest: manifest.digest.to_string(),
            media_type: manifest.media_type.clone(),
            fetched_at_unix_ms: unix_ms(SystemTime::now()),
            upstream: upstream.to_owned(),
        };
        if let Some(shared) = &self.shared
            && shared.tag_upload_due(key, &record.digest)
            && let Ok(json) = serde_json::to_vec(&record)
        {
            shared.upload_small_later(
                shared.tag_path(&key.registry, &key.repository, &key.tag),
                json.into(),
                Some("application/json".to_owned()),
            );
        }
        if let Err(e) = self.cache.put_tag_record(record).await {
            tracing::error!(tag = %format!("{}:{}", key.repository, key.tag), error = %e, "cache failure: could not record tag");
        }
    }

    /// HEADs the tag on each upstream in order; returns the digest it now points at.
    pub(super) async fn head_tag(
        &self,
        upstreams: &Upstreams,
        name: &RepositoryName,
        tag: &Tag,
        accept: &AcceptList,
    ) -> Result<(Option<Digest>, String), UpstreamsExhausted> {
        let suffix = format!("manifests/{tag}");
        let route = Route::Tag {
            repository: name.as_str(),
            tag: tag.as_str(),
        };
        upstreams
            .first_success(route, |client| {
                let suffix = suffix.clone();
                async move {
                    let response = client
                        .send(Method::HEAD, name, &suffix, None, accept_headers(accept))
                        .await?;
                    let digest = response
                        .headers()
                        .get(DOCKER_CONTENT_DIGEST)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<Digest>().ok());
                    Ok((digest, client.name().to_owned()))
                }
            })
            .await
    }

    /// GETs a manifest from the first upstream that returns verified bytes. A GET is a pull:
    /// `cost` says whether upstreams within their rate-limit reserve go last or not at all.
    pub(super) async fn fetch_manifest(
        &self,
        upstreams: &Upstreams,
        name: &RepositoryName,
        reference: &Reference,
        accept: &AcceptList,
        cost: RequestCost,
    ) -> Result<(CachedManifest, String), UpstreamsExhausted> {
        let requested_digest = match reference {
            Reference::Digest(d) => Some(d),
            Reference::Tag(_) => None,
        };
        let route = match reference {
            Reference::Digest(digest) => Route::Digest(digest),
            Reference::Tag(tag) => Route::Tag {
                repository: name.as_str(),
                tag: tag.as_str(),
            },
        };
        let suffix = format!("manifests/{reference}");
        upstreams
            .first_success_costing(route, cost, |client| {
                let suffix = suffix.clone();
                async move {
                    let response = client
                        .send(Method::GET, name, &suffix, None, accept_headers(accept))
                        .await?;
                    let content_type = response
                        .headers()
                        .get(CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .map(|v| v.split(';').next().unwrap_or("").trim().to_owned());
                    let announced = response
                        .headers()
                        .get(DOCKER_CONTENT_DIGEST)
                        .map(|v| v.to_str().unwrap_or("<not text>").to_owned());
                    let (body, _lease) = client
                        .body(response)
                        .read_to_end(MAX_MANIFEST_BYTES, BodyClass::Pull, 1)
                        .await?;
                    let mismatch = |cause: ManifestDigestMismatch| {
                        UpstreamFailure::new(
                            client.name(),
                            FailureKind::DigestMismatch,
                            "wrong manifest",
                        )
                        .caused_by(cause)
                    };
                    let digest =
                        verify_manifest_digest(&body, requested_digest, announced.as_deref())
                            .map_err(mismatch)?;
                    if serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_err() {
                        return Err(UpstreamFailure::new(
                            client.name(),
                            FailureKind::BadResponse,
                            "manifest body is not JSON",
                        ));
                    }
                    let media_type = manifest_media_type(content_type.as_deref(), &body);
                    Ok((
                        CachedManifest {
                            digest,
                            media_type,
                            body,
                        },
                        client.name().to_owned(),
                    ))
                }
            })
            .await
    }

    /// Forwards `tags/list` (with `n`/`last`) to the first upstream that answers.
    pub(crate) async fn tag_list(
        &self,
        registry: &str,
        name: &RepositoryName,
        query: Option<&str>,
    ) -> Result<TagListAnswer, FerryError> {
        if self.settings.offline {
            return Err(FerryError::Client {
                code: ErrorCode::Unavailable,
                status: http::StatusCode::SERVICE_UNAVAILABLE,
                message: format!("ferry is offline (--offline) and cannot list the tags of {name}"),
            });
        }
        let upstreams = self.upstreams_for(registry)?;
        let query = pagination_query(query);
        // Identical requests at once make one upstream fetch: the first fetches, the rest
        // wait for it and take its answer.
        let key = format!("{registry}\0{name}\0{}", query.as_deref().unwrap_or(""));
        let _fetching = self.list_fetches.lock(&format!("tags {key}")).await;
        if let Some(answer) = self.recent_tag_lists.get(&key) {
            return Ok(answer);
        }
        let not_listed = |exhausted: UpstreamsExhausted| {
            super::unknown_to_upstreams(
                exhausted,
                ErrorCode::NameUnknown,
                format!("repository {name}"),
            )
        };
        let failure_key = format!("tags {key}");
        if let Some(exhausted) = self.recent_list_failures.get(&failure_key) {
            return Err(not_listed(exhausted));
        }
        let answer = upstreams
            .first_success(Route::Unkeyed, |client| {
                let query = query.clone();
                async move {
                    let response = client
                        .send(
                            Method::GET,
                            name,
                            "tags/list",
                            query.as_deref(),
                            HeaderMap::new(),
                        )
                        .await?;
                    let next_page = match crate::oci::link::next_page_query(
                        response.headers(),
                        response.url(),
                        "tag list",
                    ) {
                        Ok(next) => pagination_query(next.as_deref()),
                        Err(reason) => {
                            tracing::warn!(upstream = client.name(), %reason, "dropping a tag list's next-page link");
                            None
                        }
                    };
                    let (body, lease) = client
                        .body(response)
                        .read_to_end(MAX_TAG_LIST_BYTES, BodyClass::List, 1)
                        .await?;
                    if let Err(e) = crate::oci::listings::check_tag_list(&body) {
                        return Err(UpstreamFailure::new(
                            client.name(),
                            FailureKind::BadResponse,
                            format!("tag list refused: {e}"),
                        ));
                    }
                    Ok(TagListAnswer {
                        body,
                        lease: Some(std::sync::Arc::new(lease)),
                        next_page,
                        source: Source::Upstream(client.name().to_owned()),
                    })
                }
            })
            .await
            .map_err(|exhausted| {
                self.recent_list_failures
                    .insert(failure_key, exhausted.clone());
                not_listed(exhausted)
            })?;
        // Waiters share the body; the lease goes with this answer only (a cached lease would
        // stay held until the cache is next used).
        self.recent_tag_lists.insert(
            key,
            TagListAnswer {
                lease: None,
                ..answer.clone()
            },
        );
        // Evict now: a cache of 4 MiB lists left to moka's lazy housekeeping outgrows its
        // bound under a burst.
        self.recent_tag_lists.run_pending_tasks();
        Ok(answer)
    }
}

fn accept_headers(accept: &AcceptList) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_str(&accept.upstream_header_value()) {
        headers.insert(ACCEPT, value);
    }
    headers
}

/// Keeps only the spec's pagination parameters, re-encoded.
fn pagination_query(query: Option<&str>) -> Option<String> {
    let query = query?;
    let kept: Vec<(String, String)> = url_pairs(query)
        .into_iter()
        .filter(|(k, _)| k == "n" || k == "last")
        .collect();
    if kept.is_empty() {
        return None;
    }
    let mut serializer = reqwest::Url::parse("http://x/").ok()?;
    serializer.query_pairs_mut().extend_pairs(kept);
    serializer.query().map(str::to_owned)
}

fn url_pairs(query: &str) -> Vec<(String, String)> {
    reqwest::Url::parse(&format!("http://x/?{query}"))
        .map(|url| {
            url.query_pairs()
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// How a manifest's bytes disagreed with the digest asked for or announced.
#[derive(Debug, Clone, thiserror::Error)]
enum ManifestDigestMismatch {
    #[error("body does not hash to the requested {0}")]
    NotRequested(Digest),
    #[error("Docker-Content-Digest is not a digest: {0}")]
    AnnouncedNotADigest(#[source] crate::oci::digest::DigestParseError),
    #[error("body hashes to {actual} but Docker-Content-Digest says {announced}")]
    NotAnnounced { actual: Digest, announced: Digest },
}

/// The digest of a manifest body: it must equal the requested digest, and for a tag it
/// must equal the upstream's `Docker-Content-Digest` when one was sent.
fn verify_manifest_digest(
    body: &[u8],
    requested: Option<&Digest>,
    announced: Option<&str>,
) -> Result<Digest, ManifestDigestMismatch> {
    if let Some(requested) = requested {
        if !requested.matches(body) {
            return Err(ManifestDigestMismatch::NotRequested(requested.clone()));
        }
        return Ok(requested.clone());
    }
    let Some(announced) = announced else {
        return Ok(Digest::sha256_of(body));
    };
    let announced: Digest = announced
        .parse()
        .map_err(ManifestDigestMismatch::AnnouncedNotADigest)?;
    let mut verifier = DigestVerifier::new(announced.algorithm());
    verifier.update(body);
    let actual = verifier.finish();
    if actual != announced {
        return Err(ManifestDigestMismatch::NotAnnounced { actual, announced });
    }
    // Cache under sha256 whatever the upstream announced, so tag records are uniform.
    Ok(if announced.algorithm() == DigestAlgorithm::Sha256 {
        announced
    } else {
        Digest::sha256_of(body)
    })
}

/// The client's error when no upstream could give a manifest.
fn manifest_error(exhausted: UpstreamsExhausted, what: &str) -> FerryError {
    super::unknown_to_upstreams(exhausted, ErrorCode::ManifestUnknown, what)
}

impl TaggedRequest<'_> {
    /// `name:tag`, for log lines.
    pub(super) fn label(&self) -> String {
        format!("{}:{}", self.name, self.tag)
    }
}

/// One request for a manifest by tag, as its steps share it.
#[derive(Clone, Copy)]
pub(super) struct TaggedRequest<'a> {
    pub(super) upstreams: &'a Upstreams,
    pub(super) registry: &'a str,
    pub(super) name: &'a RepositoryName,
    pub(super) tag: &'a Tag,
    pub(super) accept: &'a AcceptList,
    pub(super) key: &'a TagKey,
}

/// What revalidating a kept tag came to.
enum Revalidation {
    /// The kept mapping (confirmed, fresh meanwhile, or stale after every upstream failed),
    /// or the error when it was too old to serve stale.
    Answered(Result<ManifestAnswer, FerryError>),
    /// It moved: the digest the HEAD named (if any), and the upstream that named it.
    Moved((Option<Digest>, String)),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_digest_must_agree_with_announced_header() {
        let body = br#"{"schemaVersion":2}"#;
        let good = Digest::sha256_of(body);
        assert_eq!(
            verify_manifest_digest(body, None, Some(&good.to_string())).unwrap(),
            good
        );
        assert_eq!(verify_manifest_digest(body, None, None).unwrap(), good);
        let other = Digest::sha256_of(b"other").to_string();
        assert!(verify_manifest_digest(body, None, Some(&other)).is_err());
        assert!(verify_manifest_digest(body, None, Some("garbage")).is_err());
        assert!(verify_manifest_digest(body, Some(&Digest::sha256_of(b"x")), None).is_err());
    }

    #[test]
    fn pagination_keeps_only_n_and_last() {
        assert_eq!(
            pagination_query(Some("n=10&last=v1&ns=docker.io")).as_deref(),
            Some("n=10&last=v1")
        );
        assert_eq!(pagination_query(Some("ns=docker.io")), None);
        assert_eq!(pagination_query(None), None);
    }
}
