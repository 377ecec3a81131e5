//! One fill per digest. The first request for a missing blob starts a fill; everyone else
//! asking meanwhile joins it and reads the same growing file, woken by a watch channel as
//! bytes land (no polling).

use super::writer::BlobWriter;
use crate::error::FerryError;
use crate::oci::Digest;
use std::collections::HashMap;
use std::fs::File;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// Where a fill stands.
#[derive(Debug, Clone)]
pub enum FillPhase {
    /// Looking for an upstream that answers.
    Connecting,
    /// Bytes are flowing from `upstream`; `total` is the announced length if any.
    Streaming {
        total: Option<u64>,
        upstream: String,
    },
    /// Verified and committed under its final name.
    Complete,
    /// Failed; readers stop. Before `Streaming` this is an ordinary error response,
    /// after it the readers' connections are cut.
    Failed(Arc<FerryError>),
}

#[derive(Debug, Clone)]
pub struct FillProgress {
    /// Bytes written to the file so far.
    pub written: u64,
    pub phase: FillPhase,
}

impl FillProgress {
    /// Bytes a reader may hand to a client now. Until the fill is verified and committed,
    /// the blob's last byte is held back: a client that knows the length treats a body
    /// that reached it as complete, so that byte must wait for the digest check.
    pub fn readable(&self) -> u64 {
        match self.phase {
            FillPhase::Streaming {
                total: Some(total), ..
            } => self.written.min(total.saturating_sub(1)),
            _ => self.written,
        }
    }
}

/// What readers of a fill hold: the growing file and its progress.
pub struct FillHandle {
    pub file: Arc<File>,
    pub progress: watch::Receiver<FillProgress>,
}

pub enum JoinOutcome {
    /// Another request is already filling this digest.
    Joined(Arc<FillHandle>),
    /// The digest was committed meanwhile; serve it from disk.
    AlreadyCached,
    /// The caller must run the fill and report through `progress`, then call `finish`.
    Started {
        handle: Arc<FillHandle>,
        progress: watch::Sender<FillProgress>,
        writer: Box<BlobWriter>,
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

    /// Joins the fill for `digest`, or starts one with the file `create` returns. `is_cached`
    /// is checked under the lock so a fill that just committed is never repeated.
    pub fn join_or_start<E>(
        &self,
        digest: &Digest,
        is_cached: impl FnOnce() -> bool,
        create: impl FnOnce() -> Result<BlobWriter, E>,
    ) -> Result<JoinOutcome, E> {
        let mut fills = self.lock();
        if let Some(handle) = fills.get(digest) {
            return Ok(JoinOutcome::Joined(handle.clone()));
        }
        if is_cached() {
            return Ok(JoinOutcome::AlreadyCached);
        }
        let writer = create()?;
        let file = writer.file();
        let (progress, receiver) = watch::channel(FillProgress {
            written: 0,
            phase: FillPhase::Connecting,
        });
        let handle = Arc::new(FillHandle {
            file,
            progress: receiver,
        });
        fills.insert(digest.clone(), handle.clone());
        Ok(JoinOutcome::Started {
            handle,
            progress,
            writer: Box::new(writer),
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
