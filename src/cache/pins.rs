//! Pinned images: `pins.json` maps an image reference to every digest it needs (manifests
//! and blobs). Pinned blobs are never evicted. The file is replaced atomically (write to
//! `tmp/`, rename), so `ferry warm --pin` and `ferry cache unpin` can change it while a
//! server runs; the server re-reads it when its mtime changes.

use crate::oci::Digest;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::io;
use std::path::Path;

#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Pins {
    /// Image reference (as given to `ferry warm --pin`) -> digests it needs.
    pub(crate) images: BTreeMap<String, Vec<String>>,
}

pub(crate) const PINS_FILE: &str = "pins.json";

impl Pins {
    pub(crate) fn load(root: &Path) -> io::Result<Pins> {
        match std::fs::read(root.join(PINS_FILE)) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(io::Error::other),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Pins::default()),
            Err(e) => Err(e),
        }
    }

    /// Writes the pins atomically (temporary file, fsync, rename).
    pub(crate) fn save(&self, root: &Path) -> io::Result<()> {
        let temporary = root
            .join("tmp")
            .join(format!("pins-{}.json", std::process::id()));
        let bytes = serde_json::to_vec_pretty(self).map_err(io::Error::other)?;
        {
            use std::io::Write;
            let mut file = std::fs::File::create(&temporary)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
        }
        std::fs::rename(&temporary, root.join(PINS_FILE))
    }

    pub(crate) fn digests(&self) -> HashSet<Digest> {
        self.images
            .values()
            .flatten()
            .filter_map(|d| d.parse().ok())
            .collect()
    }

    /// What the size bound must never evict: every pinned digest, and the tag record of
    /// every pinned tag (so a pinned image stays pullable by tag with its registry down).
    pub(crate) fn protected(&self) -> HashSet<Digest> {
        let mut protected = self.digests();
        for image in self.images.keys() {
            if let Ok(image) = crate::oci::ImageRef::parse(image, crate::oci::registry::DOCKER_HUB)
            {
                let key = super::TagKey {
                    registry: image.registry,
                    repository: image.repository,
                    tag: image.tag,
                };
                protected.insert(key.record_digest());
            }
        }
        protected
    }
}
