//! One fill per digest. The first request for a missing blob starts a fill; everyone else
//! asking meanwhile joins it and reads the same fill (its newest bytes from memory, the rest
//! from its growing file), woken by a watch channel as bytes arrive (no polling).

use super::fill::{BlobFill, FillHandle};
use crate::oci::Digest;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub enum JoinOutcome {
    /// Another request is already filling this digest.
    Joined(Arc<FillHandle>),
    /// The digest was committed meanwhile; serve it from disk.
    AlreadyCached,
    /// The caller must run the fill (report through it, commit or fail it), then `finish`.
    Started {
        handle: Arc<FillHandle>,
        fill: Box<BlobFill>,
    },
}

#[derive(Default)]
pub struct Inflight {
    fills: Mutex<HashMap<Digest, Arc<FillHandle>>>,
}

impl Inflight {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, Arc<FillHandle>>> {
        // A poisoned lock only means a panic elsewhere mid-insert/remove of a plain map.
        self.fills
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Joins the fill for `digest`, or starts the one `create` returns. `is_cached` is
    /// checked under the lock so a fill that just committed is never repeated.
    pub fn join_or_start<E>(
        &self,
        digest: &Digest,
        is_cached: impl FnOnce() -> bool,
        create: impl FnOnce() -> Result<BlobFill, E>,
    ) -> Result<JoinOutcome, E> {
        let mut fills = self.lock();
        if let Some(handle) = fills.get(digest) {
            return Ok(JoinOutcome::Joined(handle.clone()));
        }
        if is_cached() {
            return Ok(JoinOutcome::AlreadyCached);
        }
        let fill = create()?;
        let handle = fill.handle();
        fills.insert(digest.clone(), handle.clone());
        Ok(JoinOutcome::Started {
            handle,
            fill: Box::new(fill),
        })
    }

    /// Forgets the fill for `digest` (after commit or failure), so later requests either
    /// find the committed file or start afresh.
    pub fn finish(&self, digest: &Digest) {
        self.lock().remove(digest);
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
