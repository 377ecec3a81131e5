//! Blobs. A hit streams from the committed file. A miss joins (or starts) the one fill for
//! that digest; this module picks its sources (the first upstream that answers, the next one
//! when a body breaks) and hands the bytes to the cache's `BlobFill`, which every client reads.
//! Before any byte is shown a failing upstream is replaced by the next; after that, a wrong
//! body fails the fill, cuts the clients, and the upstream is skipped for that digest a while
//! and suspect for every digest: its bodies are then held from readers until verified.

use super::passthrough::{
    FallbackContext, continue_from_upstream_on_cache_failure, open_tail, stream_tail,
};
use super::{BlobStream, PullThrough, Source, blob_error};
use crate::cache::fill::HOLD_UNTIL_VERIFIED_BYTES;
use crate::cache::provenance::ContentKind;
use crate::cache::reader::{read_fill, read_range};
use crate::cache::{CacheFailure, CommitError, FillOrigin};
use crate::error::{FerryError, MidStream};
use crate::oci::{Digest, DigestVerifier, ErrorCode, RepositoryName};
use crate::shared::{SharedStore, StoreRead};
use crate::upstream::{
    AttemptPlan, BodyChunks, BodyPace, FailureKind, Route, UpstreamFailure, Upstreams,
};
use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, Method};
use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;
use tokio::sync::watch;

// The cache's fill types, carrying ferry's error as a failed fill's content error: a reader
// of a failed fill gets the owner's `FerryError` itself.
type BlobFill = crate::cache::BlobFill<FerryError>;
type FillHandle = crate::cache::FillHandle<FerryError>;
type FillFailure = crate::cache::FillFailure<FerryError>;
type FillPhase = crate::cache::FillPhase<FerryError>;
type FillProgress = crate::cache::FillProgress<FerryError>;
type JoinOutcome = crate::cache::JoinOutcome<FerryError>;

/// How many fills a Range request waits for before it gives up (each failed fill marks its
/// bad sources, so the next one starts elsewhere).
const RANGE_FILL_ROUNDS: usize = 3;

/// Blobs up to this size are verified before the response headers go out (the fill shows
/// readers none of their bytes before the check anyway).
const VERIFY_BEFORE_HEADERS_BYTES: u64 = HOLD_UNTIL_VERIFIED_BYTES;

/// Where a request stands with respect to the fill of its blob.
enum FillJoin {
    /// Committed meanwhile: serve from disk.
    Cached,
    /// The cache cannot take a fill: serve straight from upstream.
    CacheBroken,
    Fill(Arc<FillHandle>),
}

/// A client's `Range: bytes=...` request, before it is resolved against the blob's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeSpec {
    /// `bytes=a-b` (inclusive) or `bytes=a-`.
    From { start: u64, end: Option<u64> },
    /// `bytes=-n`: the last n bytes.
    Suffix(u64),
}

impl RangeSpec {
    /// The inclusive byte span to send, or `None` if unsatisfiable for a blob of `size`.
    pub fn resolve(self, size: u64) -> Option<(u64, u64)> {
        match self {
            RangeSpec::From { start, end } => {
                if start >= size {
                    return None;
                }
                Some((start, end.unwrap_or(u64::MAX).min(size - 1)))
            }
            RangeSpec::Suffix(0) => None,
            RangeSpec::Suffix(n) => {
                if size == 0 {
                    return None;
                }
                Some((size.saturating_sub(n), size - 1))
            }
        }
    }
}

pub struct BlobAnswer {
    pub(crate) digest: Digest,
    /// The blob's full size, when known (an upstream may stream without a length).
    pub(crate) size: Option<u64>,
    /// The inclusive span being sent, for a 206.
    pub(crate) range: Option<(u64, u64)>,
    /// `None` for HEAD.
    pub(crate) body: Option<BlobStream>,
    pub(crate) source: Source,
}

impl PullThrough {
    pub(crate) async fn blob(
        self: &Arc<Self>,
        registry: &str,
        name: &RepositoryName,
        digest: &Digest,
        range: Option<RangeSpec>,
        head: bool,
    ) -> Result<BlobAnswer, FerryError> {
        if let Some(answer) = self.cached_blob(digest, range, head).await? {
            return Ok(answer);
        }
        if self.settings.offline {
            return Err(Self::offline_miss(
                ErrorCode::BlobUnknown,
                &format!("blob {digest}"),
            ));
        }
        if head {
            return self.head_blob_upstream(registry, name, digest).await;
        }
        if let Some(range) = range {
            if let Some(answer) = self.resume_from_fill(registry, name, digest, range).await? {
                return Ok(answer);
            }
            return self.range_after_fill(registry, name, digest, range).await;
        }
        self.whole_blob_from_fill(registry, name, digest).await
    }

    /// A whole blob not yet cached: joins (or starts) its fill and streams from it as the
    /// bytes arrive; a small one is verified before the headers.
    async fn whole_blob_from_fill(
        self: &Arc<Self>,
        registry: &str,
        name: &RepositoryName,
        digest: &Digest,
    ) -> Result<BlobAnswer, FerryError> {
        let handle = match self.join_fill(registry, name, digest).await {
            FillJoin::Cached => return self.just_committed_blob(digest, Source::Cache).await,
            FillJoin::CacheBroken => return self.uncached_blob(registry, name, digest).await,
            FillJoin::Fill(handle) => handle,
        };
        let mut progress = handle.progress.clone();
        let snapshot = progress
            .wait_for(|p| !matches!(p.phase, FillPhase::Connecting))
            .await
            .map_err(|_| FerryError::MidStream(MidStream::FillVanished))?
            .clone();
        let (size, source) = match snapshot.phase {
            // A small blob is verified before the headers: a wrong one is a clear 502 with
            // the digest error, not a 200 cut at zero bytes, at the cost of a few ms.
            FillPhase::Streaming {
                total: Some(total),
                origin,
            } if total <= VERIFY_BEFORE_HEADERS_BYTES => {
                return match fill_end(&mut progress).await? {
                    FillPhase::Failed(FillFailure::Cache(_)) => {
                        self.uncached_blob(registry, name, digest).await
                    }
                    FillPhase::Failed(failure) => Err(fill_error(&failure)),
                    // It came from upstream just now (a miss), though read back from disk.
                    _ => self.just_committed_blob(digest, Source::from(origin)).await,
                };
            }
            FillPhase::Streaming { total, origin } => (total, Source::from(origin)),
            FillPhase::Verified { origin } => (Some(snapshot.received), Source::from(origin)),
            FillPhase::Complete => (Some(snapshot.received), Source::Cache),
            FillPhase::Failed(FillFailure::Cache(_)) => {
                return self.uncached_blob(registry, name, digest).await;
            }
            FillPhase::Failed(failure) => return Err(fill_error(&failure)),
            FillPhase::Connecting => {
                return Err(FerryError::MidStream(MidStream::FillVanished));
            }
        };
        // The whole blob, from the fill: its last byte waits for the digest check.
        let reader: BlobStream = Box::pin(read_fill(handle.clone(), 0, size));
        let fallback = FallbackContext {
            pull: self.clone(),
            registry: registry.to_owned(),
            name: name.clone(),
            digest: digest.clone(),
            total: size,
            start: 0,
            fill: handle,
        };
        Ok(BlobAnswer {
            digest: digest.clone(),
            size,
            range: None,
            body: Some(continue_from_upstream_on_cache_failure(reader, fallback)),
            source,
        })
    }

    /// A blob whose fill just committed, read back from disk, answered as from `source`.
    async fn just_committed_blob(
        self: &Arc<Self>,
        digest: &Digest,
        source: Source,
    ) -> Result<BlobAnswer, FerryError> {
        let mut answer = self
            .cached_blob(digest, None, false)
            .await?
            .ok_or_else(|| {
                FerryError::cache_reason(format!("blob {digest} vanished right after its fill"))
            })?;
        answer.source = source;
        Ok(answer)
    }

    /// Joins the fill for `digest`, or starts one on its own task (it finishes and commits
    /// even if the client that started it goes away). Checking the disk and creating the
    /// fill's file happen on the blocking pool, never under the in-flight map's lock.
    async fn join_fill(
        self: &Arc<Self>,
        registry: &str,
        name: &RepositoryName,
        digest: &Digest,
    ) -> FillJoin {
        let outcome = match self.cache.start_fill(digest).await {
            Ok(outcome) => outcome,
            Err(e) => {
                tracing::error!(%digest, error = %e, "cache failure: cannot start a fill; serving straight from upstream");
                return FillJoin::CacheBroken;
            }
        };
        match outcome {
            JoinOutcome::AlreadyCached => FillJoin::Cached,
            JoinOutcome::Joined(handle) => FillJoin::Fill(handle),
            JoinOutcome::Started { handle, fill } => {
                let fill = Fill {
                    registry: registry.to_owned(),
                    name: name.clone(),
                    digest: digest.clone(),
                    fill,
                    total: None,
                    contributors: Vec::new(),
                    stall_hedges: 0,
                    store_bytes_in_fill: false,
                };
                self.tasks.spawn("blob fill", fill.run(self.clone()));
                FillJoin::Fill(handle)
            }
        }
    }

    /// A Range on a blob being filled that runs to its last byte (`bytes=N-`, or any range
    /// ending there) is a resume: another tier or a client carrying on after a broken body.
    /// It streams from the growing fill like a whole-blob body, with the same protection: its
    /// last byte waits for the digest check and a failed check cuts it. `None` when the range
    /// ends earlier, the blob is small or of unknown length, or the fill already ended: those
    /// wait for the verified commit.
    async fn resume_from_fill(
        self: &Arc<Self>,
        registry: &str,
        name: &RepositoryName,
        digest: &Digest,
        range: RangeSpec,
    ) -> Result<Option<BlobAnswer>, FerryError> {
        let handle = match self.join_fill(registry, name, digest).await {
            FillJoin::Fill(handle) => handle,
            FillJoin::Cached => return Ok(None),
            FillJoin::CacheBroken => {
                return self.uncached_blob(registry, name, digest).await.map(Some);
            }
        };
        let snapshot = handle
            .progress
            .clone()
            .wait_for(|p| !matches!(p.phase, FillPhase::Connecting))
            .await
            .map_err(|_| FerryError::MidStream(MidStream::FillVanished))?
            .clone();
        let (total, origin) = match snapshot.phase {
            FillPhase::Streaming {
                total: Some(total),
                origin,
            } if total > VERIFY_BEFORE_HEADERS_BYTES => (total, origin),
            FillPhase::Failed(failure) => {
                return match fill_error(&failure) {
                    FerryError::Cache(_) => {
                        self.uncached_blob(registry, name, digest).await.map(Some)
                    }
                    // Bad bytes after some were shown: the range path starts a new fill.
                    FerryError::MidStream(_) => Ok(None),
                    error => Err(error),
                };
            }
            _ => return Ok(None),
        };
        let (first, last) = range
            .resolve(total)
            .ok_or_else(|| range_not_satisfiable(total))?;
        if last + 1 != total {
            return Ok(None);
        }
        let reader: BlobStream = Box::pin(read_fill(handle.clone(), first, Some(total)));
        let fallback = FallbackContext {
            pull: self.clone(),
            registry: registry.to_owned(),
            name: name.clone(),
            digest: digest.clone(),
            total: Some(total),
            start: first,
            fill: handle,
        };
        Ok(Some(BlobAnswer {
            digest: digest.clone(),
            size: Some(total),
            range: Some((first, last)),
            body: Some(continue_from_upstream_on_cache_failure(reader, fallback)),
            source: Source::from(origin),
        }))
    }

    /// A Range request on a blob not yet cached that ends before its last byte. A range is never cut short by a digest
    /// check (the client would keep bytes the check later condemns), so it is served only
    /// from verified bytes: it waits for the fill to commit and reads the committed file.
    /// A fill that fails after taking bad bytes is retried (its bad source is skipped now),
    /// a bounded number of times.
    async fn range_after_fill(
        self: &Arc<Self>,
        registry: &str,
        name: &RepositoryName,
        digest: &Digest,
        range: RangeSpec,
    ) -> Result<BlobAnswer, FerryError> {
        let mut last_error = None;
        for _ in 0..RANGE_FILL_ROUNDS {
            let ended = match self.join_fill(registry, name, digest).await {
                FillJoin::Cached => FillPhase::Complete,
                FillJoin::CacheBroken => return self.uncached_blob(registry, name, digest).await,
                FillJoin::Fill(handle) => fill_end(&mut handle.progress.clone()).await?,
            };
            if let FillPhase::Failed(failure) = ended {
                match fill_error(&failure) {
                    FerryError::Cache(_) => {
                        return self.uncached_blob(registry, name, digest).await;
                    }
                    // Bad bytes or a break after some arrived: a new fill may succeed.
                    error @ FerryError::MidStream(_) => {
                        last_error = Some(error);
                        continue;
                    }
                    error => return Err(error),
                }
            }
            match self.cached_blob(digest, Some(range), false).await? {
                Some(answer) => return Ok(answer),
                // Committed and evicted at once (a tiny cache): fill again.
                None => continue,
            }
        }
        Err(last_error
            .unwrap_or_else(|| FerryError::MidStream(MidStream::RangeNeverKept(digest.clone()))))
    }

    /// Serves a blob straight from upstream without caching (the cache failed). Always the
    /// whole blob, with its last chunk held back until the digest matches: a Range request
    /// gets a 200 with every byte (HTTP allows ignoring Range), never unverified bytes
    /// it could keep.
    async fn uncached_blob(
        &self,
        registry: &str,
        name: &RepositoryName,
        digest: &Digest,
    ) -> Result<BlobAnswer, FerryError> {
        let upstreams = self.upstreams_for(registry)?;
        let probe = open_tail(&upstreams, name, digest, 0, None).await?;
        let size = probe.total;
        let source = Source::Upstream(probe.upstream.clone());
        let body = stream_tail(
            probe,
            0,
            size,
            DigestVerifier::new(digest.algorithm()),
            digest.clone(),
        );
        Ok(BlobAnswer {
            digest: digest.clone(),
            size,
            range: None,
            body: Some(body),
            source,
        })
    }

    async fn cached_blob(
        self: &Arc<Self>,
        digest: &Digest,
        range: Option<RangeSpec>,
        head: bool,
    ) -> Result<Option<BlobAnswer>, FerryError> {
        // open, stat and the occasional mtime refresh are filesystem calls that can block:
        // they run on the blocking pool, not on the workers serving every other request.
        let opened = {
            let pull = self.clone();
            let digest = digest.clone();
            self.tasks
                .spawn_blocking(move || pull.cache.open_blob(&digest))
                .await
                .map_err(|e| FerryError::cache("opening a cached blob", std::io::Error::other(e)))?
        };
        let Some((file, size)) =
            opened.map_err(|e| FerryError::cache("opening a cached blob", e))?
        else {
            return Ok(None);
        };
        let span = match range {
            Some(spec) => Some(
                spec.resolve(size)
                    .ok_or_else(|| range_not_satisfiable(size))?,
            ),
            None => None,
        };
        let (start, end) = span.map_or((0, size), |(first, last)| (first, last + 1));
        let body: Option<BlobStream> = if head {
            None
        } else {
            Some(Box::pin(read_range(Arc::new(file), start, end)))
        };
        Ok(Some(BlobAnswer {
            digest: digest.clone(),
            size: Some(size),
            range: span,
            body,
            source: Source::Cache,
        }))
    }

    async fn head_blob_upstream(
        &self,
        registry: &str,
        name: &RepositoryName,
        digest: &Digest,
    ) -> Result<BlobAnswer, FerryError> {
        let suffix = format!("blobs/{digest}");
        let (size, upstream) = self
            .upstreams_for(registry)?
            .first_success(Route::Digest(digest), |client| {
                let suffix = suffix.clone();
                async move {
                    let response = client
                        .send(Method::HEAD, name, &suffix, None, HeaderMap::new())
                        .await?;
                    // A HEAD has no body, so read the announced length from the header.
                    let size = response
                        .headers()
                        .get(http::header::CONTENT_LENGTH)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok());
                    Ok((size, client.name().to_owned()))
                }
            })
            .await
            .map_err(|e| blob_error(e, digest))?;
        let source = Source::Upstream(upstream);
        self.served_by(ContentKind::Blob, digest, registry, &source)
            .await;
        Ok(BlobAnswer {
            digest: digest.clone(),
            size,
            range: None,
            body: None,
            source,
        })
    }
}

/// Waits for a fill to end: `Complete` (verified and committed) or `Failed`.
async fn fill_end(progress: &mut watch::Receiver<FillProgress>) -> Result<FillPhase, FerryError> {
    Ok(progress
        .wait_for(|p| matches!(p.phase, FillPhase::Complete | FillPhase::Failed(_)))
        .await
        .map_err(|_| FerryError::MidStream(MidStream::FillVanished))?
        .phase
        .clone())
}

fn range_not_satisfiable(size: u64) -> FerryError {
    FerryError::RangeNotSatisfiable { size }
}

/// The error a reader of a failed fill passes on: the one the fill's owner met, shared.
fn fill_error(failure: &FillFailure) -> FerryError {
    match failure {
        FillFailure::Cache(failure) => FerryError::Cache(failure.clone()),
        FillFailure::Content(error) => error.clone(),
    }
}

/// One fill of one digest, run on its own task: the choice of sources; the bytes go to
/// the cache's `BlobFill`.
struct Fill {
    registry: String,
    name: RepositoryName,
    digest: Digest,
    fill: Box<BlobFill>,
    /// The blob's length as first announced (every later source must agree).
    total: Option<u64>,
    /// Upstreams whose bytes are in the fill; all are suspects if the digest fails.
    contributors: Vec<String>,
    /// Stalls hedged so far (at most `MAX_STALL_HEDGES`).
    stall_hedges: u32,
    /// Bytes from the shared store are in the fill (it broke mid-way and upstreams went on):
    /// if the digest then fails, the store's copy is checked too.
    store_bytes_in_fill: bool,
}

/// Stalls one fill may hedge; after that only the body timeouts judge its sources.
const MAX_STALL_HEDGES: u32 = 8;

/// How one upstream's attempt at the body ended.
enum AttemptEnd {
    Committed,
    /// The bytes received so far are kept; the next source continues with a Range request.
    Broken(UpstreamFailure),
    /// The body stalled against its own pace and another source delivered first: the fill
    /// continues from `next`, already open at the fill's offset.
    Stalled {
        failure: UpstreamFailure,
        next: Box<Replacement>,
    },
    /// The content is wrong (digest or size) and nothing was published to readers: start over.
    WrongUnseen(UpstreamFailure),
    /// The content is wrong and readers already have bytes: the fill is over.
    WrongSeen(UpstreamFailure),
    /// The cache could not take the bytes (disk full, I/O error).
    Cache(CacheFailure),
}

/// A source that took over a stalled body: open at the fill's offset, its first chunk read.
struct Replacement {
    client: Arc<crate::upstream::UpstreamClient>,
    body: BodyChunks,
    /// The body's length as announced before its first chunk was read.
    content_length: Option<u64>,
    skip: u64,
    first: Bytes,
}

/// How a stalled body's hedge ended.
enum StallHedge {
    /// The stalled body spoke first (a chunk, its end, or its failure); any hedge is dropped.
    Recovered(Result<Option<Bytes>, UpstreamFailure>),
    /// Another source delivered first.
    Replaced {
        stalled: UpstreamFailure,
        next: Box<Replacement>,
    },
    /// No other source could be opened: the stalled body is all there is.
    NoOther,
}

/// The next chunk of a paced body, or the source that replaced it.
enum PacedChunk {
    Chunk(Result<Option<Bytes>, UpstreamFailure>),
    Replaced {
        stalled: UpstreamFailure,
        next: Box<Replacement>,
    },
}

/// What a successful header phase hands to the body phase.
struct OpenedSource {
    client: Arc<crate::upstream::UpstreamClient>,
    response: reqwest::Response,
    /// Leading body bytes to discard: the upstream ignored `Range` and sent everything.
    skip: u64,
}

impl Fill {
    async fn run(mut self, pull: Arc<PullThrough>) {
        let started = std::time::Instant::now();
        let result = match pull.upstreams_for(&self.registry) {
            Ok(upstreams) => {
                self.fetch_and_commit(&upstreams, pull.shared.as_ref())
                    .await
            }
            Err(e) => Err(e),
        };
        // Forget the fill before announcing the end: from here on, requests find the
        // committed file (or start a fresh fill after a failure).
        pull.cache.finish_fill(&self.digest);
        match result {
            Ok(origin) => {
                let bytes = self.fill.received();
                tracing::info!(digest = %self.digest, bytes, upstream = %origin, elapsed_ms = started.elapsed().as_millis() as u64, "blob fill committed");
                pull.metrics
                    .fill_seconds
                    .observe(started.elapsed().as_secs_f64());
                pull.metrics.fill_bytes.observe(bytes as f64);
                pull.metrics.history.note_fill();
                self.fill.announce_complete();
                let from_a_registry = matches!(origin, FillOrigin::Upstream(_));
                let source = Source::from(origin);
                pull.served_by(ContentKind::Blob, &self.digest, &self.registry, &source)
                    .await;
                // Share it with the other replicas (after the commit: only verified bytes).
                if let Some(shared) = &pull.shared
                    && from_a_registry
                {
                    shared
                        .upload_blob_later(self.digest.clone(), pull.cache.blob_path(&self.digest));
                }
            }
            Err(error) => {
                if matches!(error, FerryError::Cache(_)) {
                    pull.cache.note_write_failure();
                    tracing::error!(digest = %self.digest, error = %error, "cache failure during a fill; readers continue straight from upstream, nothing is cached");
                } else {
                    tracing::warn!(digest = %self.digest, error = %error, "blob fill failed; nothing committed");
                }
                self.fill.announce_failure(match error {
                    FerryError::Cache(failure) => FillFailure::Cache(failure),
                    other => FillFailure::Content(other),
                });
            }
        }
    }

    /// Asks the plan's upstreams, in order, for the blob from byte `offset` on.
    async fn open_source(
        &self,
        upstreams: &Upstreams,
        plan: &mut AttemptPlan,
        failures: &mut Vec<UpstreamFailure>,
        offset: u64,
    ) -> Option<OpenedSource> {
        let suffix = format!("blobs/{}", self.digest);
        let total = self.total;
        let name = &self.name;
        upstreams
            .first_success_in(plan, failures, |client| {
                let suffix = suffix.clone();
                async move {
                    let (response, skip) =
                        client.get_from_offset(name, &suffix, offset, total).await?;
                    Ok(OpenedSource {
                        client,
                        response,
                        skip,
                    })
                }
            })
            .await
    }

    async fn fetch_and_commit(
        &mut self,
        upstreams: &Arc<Upstreams>,
        shared: Option<&Arc<SharedStore>>,
    ) -> Result<FillOrigin, FerryError> {
        if let Some(shared) = shared {
            match self.fill_from_shared_store(shared).await {
                StoreAttempt::Committed => return Ok(FillOrigin::SharedStore),
                StoreAttempt::Failed(error) => return Err(error),
                StoreAttempt::Continue => {}
            }
        }
        let mut plan = upstreams.plan(Route::Digest(&self.digest));
        let mut failures = Vec::new();
        let mut replacement: Option<Box<Replacement>> = None;
        loop {
            let offset = self.fill.received();
            let (client, body, content_length, skip, first) = match replacement.take() {
                Some(next) => (
                    next.client,
                    next.body,
                    next.content_length,
                    next.skip,
                    Some(next.first),
                ),
                None => {
                    let Some(source) = self
                        .open_source(upstreams, &mut plan, &mut failures, offset)
                        .await
                    else {
                        break;
                    };
                    let body = source.client.body(source.response);
                    let content_length = body.content_length();
                    (source.client, body, content_length, source.skip, None)
                }
            };
            if offset > 0 {
                tracing::warn!(digest = %self.digest, upstream = client.name(), offset, "resuming the blob mid-stream from another source");
            }
            let started = Instant::now();
            let opened = SourceBody {
                client: &client,
                body,
                content_length,
                skip,
                first,
            };
            match self
                .stream_body(upstreams, &mut plan, &mut failures, opened)
                .await
            {
                AttemptEnd::Committed => {
                    // Every source whose bytes are in the committed file served them right.
                    for name in self.contributors.iter() {
                        upstreams.clear_bad_source(name, &self.digest);
                    }
                    return Ok(FillOrigin::Upstream(client.name().to_owned()));
                }
                AttemptEnd::Broken(failure) => {
                    upstreams.record(&client, &Err::<(), _>(failure.clone()), started.elapsed());
                    failures.push(failure);
                    // Another source continues from here; the same one may try once more.
                    plan.requeue_once(&client);
                }
                AttemptEnd::Stalled { failure, next } => {
                    tracing::warn!(digest = %self.digest, stalled = client.name(), upstream = next.client.name(), offset = self.fill.received(), "a stalled body was overtaken by another source");
                    upstreams.record(&client, &Err::<(), _>(failure.clone()), started.elapsed());
                    upstreams.note_stall_resume(&client);
                    failures.push(failure);
                    plan.requeue_once(&client);
                    replacement = Some(next);
                }
                AttemptEnd::WrongUnseen(failure) => {
                    self.check_store_copy(upstreams, &client, shared);
                    self.blame_contributors(upstreams, &client, &failure, started.elapsed());
                    failures.push(failure);
                    // No reader saw the wrong body. Another upstream starts over; if none
                    // can, the same one may try once more (wrong bytes are often transient).
                    plan.requeue_once(&client);
                    if let Err(e) = self.fill.restart() {
                        return Err(FerryError::Cache(e));
                    }
                    self.forget_length_unless_told();
                }
                AttemptEnd::WrongSeen(failure) => {
                    self.check_store_copy(upstreams, &client, shared);
                    self.blame_contributors(upstreams, &client, &failure, started.elapsed());
                    return Err(FerryError::MidStream(MidStream::BadBytesSent(failure)));
                }
                AttemptEnd::Cache(message) => return Err(FerryError::Cache(message)),
            }
        }
        let exhausted = plan.exhausted(failures, upstreams.failover_on_not_found());
        if self.fill.any_published() {
            return Err(FerryError::MidStream(MidStream::NoSourceContinued(
                exhausted,
            )));
        }
        Err(blob_error(exhausted, &self.digest))
    }

    /// Streams the blob from the shared store, if it has it. A store that fails mid-way
    /// leaves what arrived in the fill for the upstreams to continue from; an object whose
    /// bytes do not match is reported and removed, and the upstreams supply the blob.
    async fn fill_from_shared_store(&mut self, shared: &Arc<SharedStore>) -> StoreAttempt {
        let body = match shared.open_blob(&self.digest).await {
            StoreRead::Found(body) => body,
            StoreRead::Missing | StoreRead::Unavailable => return StoreAttempt::Continue,
        };
        if let Err(message) = self
            .fill
            .begin(Some(body.size), FillOrigin::SharedStore)
            .await
        {
            return StoreAttempt::Failed(FerryError::Cache(message));
        }
        self.total = Some(body.size);
        let mut chunks = body.chunks;
        let mut received = 0u64;
        loop {
            let next = next_or_publish(&mut self.fill, chunks.next()).await;
            match next {
                Some(Ok(chunk)) => {
                    received += chunk.len() as u64;
                    if received > body.size {
                        break;
                    }
                    if let Err(message) = self.fill.push(chunk).await {
                        return StoreAttempt::Failed(FerryError::Cache(message));
                    }
                }
                Some(Err(error)) => {
                    shared.note_read_failure(&error);
                    shared.note_bytes_read(received);
                    self.store_bytes_in_fill = received > 0;
                    return StoreAttempt::Continue;
                }
                None => break,
            }
        }
        shared.note_bytes_read(received);
        if received < body.size {
            shared.note_read_failure(&crate::shared::StoreError::Truncated {
                received,
                size: body.size,
            });
            self.store_bytes_in_fill = received > 0;
            return StoreAttempt::Continue;
        }
        shared.note_read_success();
        match self.fill.commit().await {
            Ok(()) => StoreAttempt::Committed,
            Err(CommitError::Io(e)) => {
                StoreAttempt::Failed(FerryError::cache("committing a fill", e))
            }
            Err(mismatch) => {
                shared.report_corrupt(shared.blob_path(&self.digest), mismatch.to_string());
                if self.fill.any_published() {
                    return StoreAttempt::Failed(FerryError::MidStream(
                        MidStream::StoreCopyCorrupt {
                            digest: self.digest.clone(),
                            cause: Arc::new(mismatch),
                        },
                    ));
                }
                if let Err(message) = self.fill.restart() {
                    return StoreAttempt::Failed(FerryError::Cache(message));
                }
                self.forget_length_unless_told();
                StoreAttempt::Continue
            }
        }
    }

    /// The fill failed its digest with bytes from the shared store in it: the store's copy is
    /// re-read and hashed in the background, removed if it is the bad one, and then the
    /// upstreams blamed with it are cleared for this digest.
    fn check_store_copy(
        &mut self,
        upstreams: &Arc<Upstreams>,
        client: &crate::upstream::UpstreamClient,
        shared: Option<&Arc<SharedStore>>,
    ) {
        if !std::mem::take(&mut self.store_bytes_in_fill) {
            return;
        }
        let Some(shared) = shared else { return };
        let mut blamed = self.contributors.clone();
        blamed.push(client.name().to_owned());
        let (upstreams, digest) = (upstreams.clone(), self.digest.clone());
        shared.check_blob_later(self.digest.clone(), move || {
            for name in blamed {
                upstreams.exonerate(&name, &digest);
            }
        });
    }

    /// The fill starts over: the next source may announce another length, unless clients
    /// were already answered with this one (a blob too large to verify before the headers),
    /// which every later source must then agree with.
    fn forget_length_unless_told(&mut self) {
        if self
            .total
            .is_none_or(|total| total <= VERIFY_BEFORE_HEADERS_BYTES)
        {
            self.total = None;
        }
    }

    /// Wrong content: every upstream whose bytes are in the file is skipped for this digest
    /// for a while, and the failure counts heavily toward the breaker of the last one.
    fn blame_contributors(
        &mut self,
        upstreams: &Upstreams,
        client: &crate::upstream::UpstreamClient,
        failure: &UpstreamFailure,
        latency: std::time::Duration,
    ) {
        upstreams.record(client, &Err::<(), _>(failure.clone()), latency);
        for name in self.contributors.drain(..) {
            upstreams.mark_bad_source(&name, &self.digest);
        }
        upstreams.mark_bad_source(client.name(), &self.digest);
    }

    /// Streams one source's body into the fill; at its end, verifies and commits. A body that
    /// stalls against its own pace is hedged by the plan's next source (see `next_paced`).
    async fn stream_body(
        &mut self,
        upstreams: &Upstreams,
        plan: &mut AttemptPlan,
        failures: &mut Vec<UpstreamFailure>,
        source: SourceBody<'_>,
    ) -> AttemptEnd {
        let SourceBody {
            client,
            mut body,
            content_length,
            mut skip,
            mut first,
        } = source;
        let upstream = client.name();
        let offset = self.fill.received();
        let announced_total = match content_length {
            Some(len) if skip > 0 => Some(len),
            Some(len) => Some(offset + len),
            None => None,
        };
        if let (Some(total), Some(announced)) = (self.total, announced_total)
            && total != announced
        {
            return AttemptEnd::Broken(UpstreamFailure::new(
                upstream,
                FailureKind::BadResponse,
                format!("announces {announced} bytes, an earlier source announced {total}"),
            ));
        }
        // The first byte of a fill (or of a fill started over): readers learn the length.
        if offset == 0 && (self.total.is_none() || !self.fill.begun()) {
            let total = self.total.or(announced_total);
            if let Err(message) = self
                .fill
                .begin(total, FillOrigin::Upstream(upstream.to_owned()))
                .await
            {
                return AttemptEnd::Cache(message);
            }
            self.total = total;
        }
        let total = self.total;
        let mut held = false;
        self.contributors.push(upstream.to_owned());
        let mut received = offset;
        let mut pace = upstreams.stall_floor_for(client).map(BodyPace::new);
        loop {
            let next = match first.take() {
                Some(chunk) => {
                    if let Some(judge) = pace.as_mut() {
                        judge.chunk_arrived();
                    }
                    Ok(Some(chunk))
                }
                None => match self
                    .next_paced(upstreams, plan, failures, &mut body, &mut pace)
                    .await
                {
                    PacedChunk::Chunk(next) => next,
                    PacedChunk::Replaced { stalled, next } => {
                        return AttemptEnd::Stalled {
                            failure: stalled,
                            next,
                        };
                    }
                },
            };
            let mut chunk = match next {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(failure) => return AttemptEnd::Broken(failure),
            };
            if skip > 0 {
                let dropped = skip.min(chunk.len() as u64);
                skip -= dropped;
                chunk = chunk.slice(dropped as usize..);
            }
            if !held && client.health().is_suspect() {
                // It sent wrong bytes lately (maybe just now, for another digest): no reader
                // sees more of this body before its digest matches, so a wrong one is fetched
                // again elsewhere without any client having seen it.
                self.fill.hold_until_verified();
                held = true;
            }
            received += chunk.len() as u64;
            if total.is_some_and(|total| received > total) {
                return AttemptEnd::Broken(UpstreamFailure::new(
                    upstream,
                    FailureKind::BodyBroken,
                    "body longer than its Content-Length",
                ));
            }
            if let Err(message) = self.fill.push(chunk).await {
                return AttemptEnd::Cache(message);
            }
        }
        if let Some(total) = total.filter(|total| received < *total) {
            return AttemptEnd::Broken(UpstreamFailure::new(
                upstream,
                FailureKind::BodyBroken,
                format!("body ended at {received} of {total} bytes"),
            ));
        }
        let wrong = |fill: &BlobFill, failure: UpstreamFailure| {
            if fill.any_published() {
                AttemptEnd::WrongSeen(failure)
            } else {
                AttemptEnd::WrongUnseen(failure)
            }
        };
        match self.fill.commit().await {
            Ok(()) => AttemptEnd::Committed,
            Err(CommitError::Io(e)) => AttemptEnd::Cache(CacheFailure::io("committing a fill", e)),
            Err(mismatch @ CommitError::SizeMismatch { .. }) => wrong(
                &self.fill,
                UpstreamFailure::new(upstream, FailureKind::BodyBroken, "wrong length")
                    .caused_by(mismatch),
            ),
            Err(mismatch @ CommitError::DigestMismatch { .. }) => wrong(
                &self.fill,
                UpstreamFailure::new(upstream, FailureKind::DigestMismatch, "wrong bytes")
                    .caused_by(mismatch),
            ),
        }
    }
}

/// One source's body as `stream_body` takes it.
struct SourceBody<'a> {
    client: &'a Arc<crate::upstream::UpstreamClient>,
    body: BodyChunks,
    /// The body's length as announced (`BodyChunks` only knows what is left once read from).
    content_length: Option<u64>,
    /// Leading bytes to drop (the source ignored `Range`).
    skip: u64,
    /// A chunk already read (by the hedge that won a stall).
    first: Option<Bytes>,
}

impl Fill {
    /// The body's next chunk. With a pace, a body silent for far longer than its own recent
    /// gaps is hedged: the plan's next source opens at the fill's offset while the quiet one
    /// is kept, and whichever delivers a byte first carries on.
    async fn next_paced(
        &mut self,
        upstreams: &Upstreams,
        plan: &mut AttemptPlan,
        failures: &mut Vec<UpstreamFailure>,
        body: &mut BodyChunks,
        pace: &mut Option<BodyPace>,
    ) -> PacedChunk {
        if self.stall_hedges >= MAX_STALL_HEDGES {
            // Enough hedging for one fill: only the body timeouts judge it from here on.
            *pace = None;
        }
        let Some(judge) = pace.as_mut().filter(|judge| judge.is_flowing()) else {
            let next = next_or_publish(&mut self.fill, body.next_chunk()).await;
            if let (Some(judge), Ok(Some(_))) = (pace.as_mut(), &next) {
                judge.chunk_arrived();
            }
            return PacedChunk::Chunk(next);
        };
        let stall_after = judge.stall_after();
        let next = next_or_publish(
            &mut self.fill,
            tokio::time::timeout(stall_after, body.next_chunk()),
        )
        .await;
        if let Ok(next) = next {
            if matches!(next, Ok(Some(_))) {
                judge.chunk_arrived();
            }
            return PacedChunk::Chunk(next);
        }
        self.stall_hedges += 1;
        let offset = self.fill.received();
        tracing::warn!(digest = %self.digest, offset, silent_ms = stall_after.as_millis() as u64, "blob body stalled against its own pace; asking the next source alongside it");
        match self
            .hedge_stall(upstreams, plan, failures, body, offset, stall_after)
            .await
        {
            StallHedge::Recovered(next) => {
                judge.resumed_after_stall();
                PacedChunk::Chunk(next)
            }
            StallHedge::Replaced { stalled, next } => PacedChunk::Replaced { stalled, next },
            StallHedge::NoOther => {
                // Nothing to hedge with: only the body timeouts judge it from here on.
                *pace = None;
                PacedChunk::Chunk(body.next_chunk().await)
            }
        }
    }

    /// Races a stalled body against the plan's next source opened at `offset`: the first to
    /// deliver a byte of the blob wins and the other is dropped. The hedge draws on a copy of
    /// the plan, kept once the hedge was used (it won, failed, or the stalled body broke): a
    /// stall that ends by itself spends no attempt an upstream may need later.
    async fn hedge_stall(
        &self,
        upstreams: &Upstreams,
        plan: &mut AttemptPlan,
        failures: &mut Vec<UpstreamFailure>,
        stalled: &mut BodyChunks,
        offset: u64,
        silent: std::time::Duration,
    ) -> StallHedge {
        let mut hedge_plan = plan.clone();
        let mut stalled_failure = None;
        let opened = {
            let opening = self.open_source(upstreams, &mut hedge_plan, failures, offset);
            let mut opening = std::pin::pin!(opening);
            tokio::select! {
                next = stalled.next_chunk() => match next {
                    // The quiet body broke meanwhile: the hedge is the way on.
                    Err(failure) => {
                        stalled_failure = Some(failure);
                        opening.await
                    }
                    next => return StallHedge::Recovered(next),
                },
                opened = &mut opening => opened,
            }
        };
        let Some(source) = opened else {
            *plan = hedge_plan;
            return match stalled_failure {
                Some(failure) => StallHedge::Recovered(Err(failure)),
                None => StallHedge::NoOther,
            };
        };
        let mut fresh = source.client.body(source.response);
        let content_length = fresh.content_length();
        let hedge_started = Instant::now();
        let first = match stalled_failure {
            Some(_) => first_byte_past(&mut fresh, source.skip).await,
            None => tokio::select! {
                next = stalled.next_chunk() => match next {
                    Err(failure) => {
                        stalled_failure = Some(failure);
                        first_byte_past(&mut fresh, source.skip).await
                    }
                    // Dropping the hedge gives its attempt back: `plan` is untouched.
                    next => return StallHedge::Recovered(next),
                },
                first = first_byte_past(&mut fresh, source.skip) => first,
            },
        };
        *plan = hedge_plan;
        let first = match first {
            Ok(Some(chunk)) => chunk,
            other => {
                let failure = other.err().unwrap_or_else(|| {
                    UpstreamFailure::new(
                        source.client.name(),
                        FailureKind::BodyBroken,
                        "a resumed body ended before its first byte",
                    )
                });
                upstreams.record(
                    &source.client,
                    &Err::<(), _>(failure.clone()),
                    hedge_started.elapsed(),
                );
                failures.push(failure);
                return match stalled_failure {
                    Some(failure) => StallHedge::Recovered(Err(failure)),
                    None => StallHedge::Recovered(stalled.next_chunk().await),
                };
            }
        };
        let stalled = stalled_failure.unwrap_or_else(|| {
            UpstreamFailure::new(
                stalled.upstream(),
                FailureKind::BodyStalled,
                format!(
                    "no byte for {silent:?} at offset {offset}, far beyond its own pace; {} delivered first",
                    source.client.name()
                ),
            )
        });
        StallHedge::Replaced {
            stalled,
            next: Box::new(Replacement {
                client: source.client,
                body: fresh,
                content_length,
                skip: 0,
                first,
            }),
        }
    }
}

/// The first chunk of `body` past its first `skip` bytes (which an upstream that ignored
/// `Range` sends again), or its end. Bounded by the body's length.
async fn first_byte_past(
    body: &mut BodyChunks,
    mut skip: u64,
) -> Result<Option<Bytes>, UpstreamFailure> {
    loop {
        let Some(chunk) = body.next_chunk().await? else {
            return Ok(None);
        };
        let len = chunk.len() as u64;
        if skip >= len {
            skip -= len;
            continue;
        }
        return Ok(Some(chunk.slice(skip as usize..)));
    }
}

/// How reading the shared store went.
enum StoreAttempt {
    Committed,
    /// Not there, unavailable, broken or corrupt: the upstreams go on from the fill's bytes.
    Continue,
    Failed(FerryError),
}

/// Awaits the source's next chunk; if it is not there at once, first shows readers what
/// arrived, so they are woken when the source pauses (or every few hundred KiB), not per chunk.
async fn next_or_publish<F: Future>(fill: &mut BlobFill, next: F) -> F::Output {
    let mut next = std::pin::pin!(next);
    match std::future::poll_fn(|cx| Poll::Ready(next.as_mut().poll(cx))).await {
        Poll::Ready(output) => output,
        Poll::Pending => {
            fill.publish();
            next.await
        }
    }
}
