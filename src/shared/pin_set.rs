//! The fleet's pin set in the shared store: one small object per pinned image under `pins/`
//! (named by the SHA-256 of the image), so pinning and unpinning from two replicas at once
//! never lose each other's change (a PUT or DELETE each, no read-modify-write).

use super::{SharedStore, StoreError};
use futures_util::StreamExt;
use object_store::ObjectStoreExt;
use object_store::path::Path as ObjectPath;
use serde::{Deserialize, Serialize};

/// One pinned image as stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct StoredPin {
    pub(crate) image: String,
    pub(crate) added_unix_ms: u64,
}

/// Objects under `pins/` larger than this are not pins (ignored, logged).
const MAX_PIN_OBJECT_BYTES: u64 = 8 * 1024;
/// At most this many pins are read from the store.
const MAX_PINS: usize = 10_000;
/// Pin objects read at once.
const PIN_READS_AT_ONCE: usize = 8;

impl SharedStore {
    fn pin_path(&self, image: &str) -> ObjectPath {
        let digest = crate::oci::Digest::sha256_of(image.as_bytes());
        self.path(&format!("pins/{}.json", digest.hex()))
    }

    /// Every pin in the store: the listing, then the pins read a few at a time, each read
    /// bounded by the request timeout. Unlike content reads this ignores the breaker: it is
    /// the keeper's periodic read, and its failure keeps the last known set.
    pub(crate) async fn pin_set(&self) -> Result<Vec<StoredPin>, StoreError> {
        let timeout = self.config.request_timeout;
        let listing = tokio::time::timeout(timeout * 3, self.list_pins())
            .await
            .unwrap_or(Err(StoreError::Idle(timeout * 3)))?;
        let reads = futures_util::stream::iter(listing)
            .map(|meta| async move {
                tokio::time::timeout(timeout, self.read_pin(meta))
                    .await
                    .unwrap_or(Err(StoreError::Idle(timeout)))
            })
            .buffer_unordered(PIN_READS_AT_ONCE);
        let read: Vec<Result<Option<StoredPin>, StoreError>> = reads.collect().await;
        let mut pins = Vec::new();
        for pin in read {
            pins.extend(pin?);
        }
        Ok(pins)
    }

    async fn list_pins(&self) -> Result<Vec<object_store::ObjectMeta>, StoreError> {
        let prefix = self.path("pins");
        let mut listing = self.store.list(Some(&prefix));
        let mut objects = Vec::new();
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(|e| StoreError::store("listing pins/", e))?;
            if meta.size > MAX_PIN_OBJECT_BYTES || objects.len() >= MAX_PINS {
                tracing::warn!(object = %meta.location, size = meta.size, "ignoring an object under pins/ that is not a pin");
                continue;
            }
            objects.push(meta);
        }
        Ok(objects)
    }

    /// One pin object; `None` when it is gone (unpinned since the listing) or not a pin.
    async fn read_pin(
        &self,
        meta: object_store::ObjectMeta,
    ) -> Result<Option<StoredPin>, StoreError> {
        let body = match self.store.get(&meta.location).await {
            Ok(result) => result
                .bytes()
                .await
                .map_err(|e| StoreError::store("reading a pin", e))?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(StoreError::store("reading a pin", e)),
        };
        match serde_json::from_slice::<StoredPin>(&body) {
            Ok(pin) if self.pin_path(&pin.image) == meta.location => Ok(Some(pin)),
            _ => {
                tracing::warn!(object = %meta.location, "ignoring an object under pins/ that is not a pin");
                Ok(None)
            }
        }
    }

    /// Adds `image` to the fleet's pin set.
    pub(crate) async fn put_pin(&self, pin: &StoredPin) -> Result<(), StoreError> {
        let body = serde_json::to_vec(pin).unwrap_or_default();
        let path = self.pin_path(&pin.image);
        tokio::time::timeout(
            self.config.request_timeout,
            self.store.put(&path, body.into()),
        )
        .await
        .map_err(|_| StoreError::Idle(self.config.request_timeout))?
        .map(|_| ())
        .map_err(|e| StoreError::store("writing a pin", e))
    }

    /// Removes `image` from the fleet's pin set (no error when it was not there).
    pub(crate) async fn delete_pin(&self, image: &str) -> Result<(), StoreError> {
        let path = self.pin_path(image);
        match tokio::time::timeout(self.config.request_timeout, self.store.delete(&path)).await {
            Err(_) => Err(StoreError::Idle(self.config.request_timeout)),
            Ok(Ok(())) | Ok(Err(object_store::Error::NotFound { .. })) => Ok(()),
            Ok(Err(e)) => Err(StoreError::store("removing a pin", e)),
        }
    }
}
