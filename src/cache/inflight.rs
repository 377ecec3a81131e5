//! One fill per digest. The first request for a missing blob starts a fill; everyone else
//! asking meanwhile joins it and reads the same fill (its newest bytes from memory, the rest
//! from its growing file), woken by a watch channel as bytes arrive (no polling).

use super::fill::{BlobFill, ContentError, FillHandle};
use crate::oci::Digest;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub(crate) enum JoinOutcome<E> {
    /// Another request is already filling this digest.
    Joined(Arc<FillHandle<E>>),
    /// The digest was committed meanwhile; serve it from disk.
    AlreadyCached,
    /// The caller must run the fill (report through it, commit or fail it), then `finish`.
    Started {
        handle: Arc<FillHandle<E>>,
        fill: Box<BlobFill<E>>,
    },
}

pub(crate) struct Inflight<E> {
    fills: Mutex<HashMap<Digest, Arc<FillHandle<E>>>>,
}

impl<E> Default for Inflight<E> {
    fn default() -> Self {
        Inflight {
            fills: Mutex::default(),
        }
    }
}

impl<E: ContentError> Inflight<E> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, Arc<FillHandle<E>>>> {
        // A poisoned lock only means a panic elsewhere mid-insert/remove of a plain map.
        self.fills
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The fill running for `digest`, if any.
    pub(crate) fn join(&self, digest: &Digest) -> Option<Arc<FillHandle<E>>> {
        self.lock().get(digest).cloned()
    }

    /// Starts `fill` for `digest` unless another request started one meanwhile (joined) or
    /// the blob was committed meanwhile (`is_cached`, checked under the lock, must not touch
    /// the disk: the index knows a commit before its fill is finished). A fill not started
    /// is handed back so the caller can drop it off the async workers.
    pub(crate) fn start(
        &self,
        digest: &Digest,
        is_cached: impl FnOnce() -> bool,
        fill: BlobFill<E>,
    ) -> (JoinOutcome<E>, Option<BlobFill<E>>) {
        let mut fills = self.lock();
        if let Some(handle) = fills.get(digest) {
            return (JoinOutcome::Joined(handle.clone()), Some(fill));
        }
        if is_cached() {
            return (JoinOutcome::AlreadyCached, Some(fill));
        }
        let handle = fill.handle();
        fills.insert(digest.clone(), handle.clone());
        let started = JoinOutcome::Started {
            handle,
            fill: Box::new(fill),
        };
        (started, None)
    }

    /// Forgets the fill for `digest` (after commit or failure), so later requests either
    /// find the committed file or start afresh.
    pub(crate) fn finish(&self, digest: &Digest) {
        self.lock().remove(digest);
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}
