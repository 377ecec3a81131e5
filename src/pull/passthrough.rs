//! When the cache cannot take a blob (disk full, I/O errors), clients are served straight from
//! upstream without caching, from the start or from wherever a failed fill left them. Only bodies
//! that run to the blob's end pass here (whole blobs, resumes); the hash covers what the fill had
//! (re-read from it) plus the rest, and the last chunk waits for the digest: a wrong body is cut.

use super::{BlobStream, PullThrough, blob_error};
use crate::cache::FillHandle;
use crate::cache::reader::FillFailed;
use crate::error::FerryError;
use crate::oci::{Digest, DigestVerifier, RepositoryName};
use crate::upstream::{BodyChunks, Upstreams};
use bytes::Bytes;
use futures_util::StreamExt;
use std::io;
use std::sync::Arc;

/// An upstream body positioned at `offset` of the blob.
pub(crate) struct UpstreamTail {
    pub(crate) body: BodyChunks,
    pub(crate) skip: u64,
    /// The blob's full size, when the upstream said.
    pub(crate) total: Option<u64>,
    pub(crate) upstream: String,
}

/// Opens the blob at `offset` on the first upstream that serves it.
pub(crate) async fn open_tail(
    upstreams: &Upstreams,
    name: &RepositoryName,
    digest: &Digest,
    offset: u64,
    total: Option<u64>,
) -> Result<UpstreamTail, FerryError> {
    let suffix = format!("blobs/{digest}");
    let mut plan = upstreams.plan(crate::upstream::Route::Digest(digest));
    let mut failures = Vec::new();
    let opened = upstreams
        .first_success_in(&mut plan, &mut failures, |client| {
            let suffix = suffix.clone();
            async move {
                let (response, skip) = client.get_from_offset(name, &suffix, offset, total).await?;
                let announced = response
                    .content_length()
                    .map(|len| if skip > 0 { len } else { offset + len });
                Ok(UpstreamTail {
                    upstream: client.name().to_owned(),
                    total: total.or(announced),
                    skip,
                    body: client.body(response),
                })
            }
        })
        .await;
    opened.ok_or_else(|| {
        blob_error(
            plan.exhausted(failures, upstreams.failover_on_not_found()),
            digest,
        )
    })
}

/// Streams `tail` from `offset` to the blob's end. `verifier` has hashed the blob's first
/// `offset` bytes; the running hash must equal `digest` when the blob ends, or the stream
/// fails before its last chunk. (Only bodies that run to the blob's end pass here.)
pub(crate) fn stream_tail(
    tail: UpstreamTail,
    offset: u64,
    end: Option<u64>,
    verifier: DigestVerifier,
    digest: Digest,
) -> BlobStream {
    struct State {
        body: BodyChunks,
        skip: u64,
        offset: u64,
        end: Option<u64>,
        verify: Option<(DigestVerifier, Digest)>,
        held: Option<Bytes>,
        done: bool,
    }
    let state = State {
        body: tail.body,
        skip: tail.skip,
        offset,
        end: end.or(tail.total),
        verify: Some((verifier, digest)),
        held: None,
        done: false,
    };
    Box::pin(futures_util::stream::try_unfold(
        state,
        |mut state| async move {
            loop {
                if state.done {
                    return Ok(None);
                }
                let finished = state.end.is_some_and(|end| state.offset >= end);
                let next = if finished {
                    None
                } else {
                    state
                        .body
                        .next_chunk()
                        .await
                        .map_err(|f| io::Error::other(f.to_string()))?
                };
                let Some(mut chunk) = next else {
                    if state.end.is_some_and(|end| state.offset < end) {
                        return Err(io::Error::other("upstream body ended early"));
                    }
                    state.done = true;
                    if let Some((verifier, digest)) = state.verify.take() {
                        let actual = verifier.finish();
                        if actual != digest {
                            return Err(io::Error::other(format!(
                                "upstream bytes hash to {actual}, expected {digest}"
                            )));
                        }
                    }
                    return Ok(state.held.take().map(|held| (held, state)));
                };
                if state.skip > 0 {
                    let dropped = state.skip.min(chunk.len() as u64);
                    state.skip -= dropped;
                    chunk = chunk.slice(dropped as usize..);
                }
                if let Some(end) = state.end {
                    let room = end.saturating_sub(state.offset);
                    if (chunk.len() as u64) > room {
                        chunk = chunk.slice(..room as usize);
                    }
                }
                if chunk.is_empty() {
                    continue;
                }
                state.offset += chunk.len() as u64;
                if let Some((verifier, _)) = &mut state.verify {
                    verifier.update(&chunk);
                    // Hold one chunk back: the last one goes out only after the digest matched.
                    if let Some(previous) = state.held.replace(chunk) {
                        return Ok(Some((previous, state)));
                    }
                    continue;
                }
                return Ok(Some((chunk, state)));
            }
        },
    ))
}

/// What a reader of a fill needs to carry on from upstream if the fill fails in the cache.
pub(crate) struct FallbackContext {
    pub(crate) pull: Arc<PullThrough>,
    pub(crate) registry: String,
    pub(crate) name: RepositoryName,
    pub(crate) digest: Digest,
    /// The blob's size, when known.
    pub(crate) total: Option<u64>,
    /// The byte the reader started at: 0 for a whole blob, N for a resume (`bytes=N-`).
    pub(crate) start: u64,
    /// The fill, for re-hashing what the reader already sent.
    pub(crate) fill: Arc<FillHandle<crate::error::FerryError>>,
}

/// Wraps a fill reader: if the fill fails because of the cache, the reader continues from
/// upstream at the byte it reached. Other failures (bad upstream bytes) still cut it.
pub(crate) fn continue_from_upstream_on_cache_failure(
    inner: BlobStream,
    context: FallbackContext,
) -> BlobStream {
    enum Phase {
        Cache(BlobStream),
        Upstream(BlobStream),
    }
    let sent = context.start;
    Box::pin(futures_util::stream::try_unfold(
        (Phase::Cache(inner), sent, Some(context)),
        |(phase, mut sent, mut context)| async move {
            match phase {
                Phase::Upstream(mut stream) => match stream.next().await {
                    None => Ok(None),
                    Some(chunk) => {
                        let chunk = chunk?;
                        Ok(Some((chunk, (Phase::Upstream(stream), sent, context))))
                    }
                },
                Phase::Cache(mut stream) => match stream.next().await {
                    None => Ok(None),
                    Some(Ok(chunk)) => {
                        sent += chunk.len() as u64;
                        Ok(Some((chunk, (Phase::Cache(stream), sent, context))))
                    }
                    Some(Err(error)) => {
                        let cache_failure = error
                            .get_ref()
                            .and_then(|e| e.downcast_ref::<FillFailed>())
                            .is_some_and(|f| f.cache_failure);
                        let Some(context) = context.take().filter(|_| cache_failure) else {
                            return Err(error);
                        };
                        tracing::warn!(digest = %context.digest, offset = sent, "cache failed under a reader; continuing straight from upstream");
                        let mut upstream = continue_at(&context, sent).await?;
                        match upstream.next().await {
                            None => Ok(None),
                            Some(chunk) => {
                                Ok(Some((chunk?, (Phase::Upstream(upstream), sent, None))))
                            }
                        }
                    }
                },
            }
        },
    ))
}

/// The rest of a body from upstream, from `offset` on; what the fill already had is re-hashed
/// from it so the digest check still covers every byte. A resume reader may be ahead of the
/// fill: the bytes between the two are fetched and hashed again, not sent twice.
async fn continue_at(context: &FallbackContext, offset: u64) -> io::Result<BlobStream> {
    let fill = context.fill.clone();
    let hashed = offset.min(fill.progress.borrow().received);
    let algorithm = context.digest.algorithm();
    let verifier = tokio::task::spawn_blocking(move || fill.hash_prefix(hashed, algorithm))
        .await
        .map_err(|e| io::Error::other(format!("hashing task failed: {e}")))??;
    let upstreams = context
        .pull
        .upstreams_for(&context.registry)
        .map_err(|e| io::Error::other(e.to_string()))?;
    let tail = open_tail(
        &upstreams,
        &context.name,
        &context.digest,
        hashed,
        context.total,
    )
    .await
    .map_err(|e| io::Error::other(e.to_string()))?;
    let rest = stream_tail(
        tail,
        hashed,
        context.total,
        verifier,
        context.digest.clone(),
    );
    Ok(drop_leading(rest, offset - hashed))
}

/// `stream` without its first `count` bytes (hashed by it, but already held by the reader).
fn drop_leading(stream: BlobStream, count: u64) -> BlobStream {
    if count == 0 {
        return stream;
    }
    Box::pin(futures_util::stream::try_unfold(
        (stream, count),
        |(mut stream, mut count)| async move {
            loop {
                let Some(chunk) = stream.next().await.transpose()? else {
                    return Ok(None);
                };
                let len = chunk.len() as u64;
                if count >= len {
                    count -= len;
                    continue;
                }
                let rest = chunk.slice(count as usize..);
                return Ok(Some((rest, (stream, 0))));
            }
        },
    ))
}
