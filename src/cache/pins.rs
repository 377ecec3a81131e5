//! Pinned content on disk: `pins.json` (images `ferry warm --pin` fixed to the digests they
//! needed, re-read by a running server when its mtime changes) and `followed-pins.json` (the
//! pin set the keeper follows and what each pin holds); what the size bound must never evict.
//! Both files are replaced atomically (write to `tmp/`, rename).

use crate::oci::Digest;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
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
        load_json(root, PINS_FILE)
    }

    /// Writes the pins atomically (temporary file, fsync, rename).
    pub(crate) fn save(&self, root: &Path) -> io::Result<()> {
        save_json(root, PINS_FILE, self)
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

/// Reads `root/name` as JSON; the default when the file does not exist.
fn load_json<T: Default + serde::de::DeserializeOwned>(root: &Path, name: &str) -> io::Result<T> {
    match std::fs::read(root.join(name)) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(io::Error::other),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(T::default()),
        Err(e) => Err(e),
    }
}

/// Writes `value` as `root/name` atomically: a temporary file under `tmp/`, fsync, rename.
fn save_json(root: &Path, name: &str, value: &impl Serialize) -> io::Result<()> {
    let temporary = root.join("tmp").join(format!(
        "{name}-{}-{}",
        std::process::id(),
        SAVES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let bytes = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&temporary, root.join(name))
}

/// Names concurrent saves' temporary files apart.
static SAVES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

pub(crate) const FOLLOWED_PINS_FILE: &str = "followed-pins.json";

/// Where a pin came from: the config file, this ferry's admin API (no shared store), the
/// shared store (any replica's API), or the AZ tier named by `pins_from`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub(crate) enum PinOrigin {
    Config,
    Api,
    Store,
    Group,
}

impl PinOrigin {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            PinOrigin::Config => "config",
            PinOrigin::Api => "api",
            PinOrigin::Store => "shared_store",
            PinOrigin::Group => "pins_from",
        }
    }
}

/// One image of the pin set, as last known.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct PinEntry {
    pub(crate) origin: PinOrigin,
    pub(crate) added_unix_ms: u64,
}

/// An image a pin holds on disk: its manifest digest and every digest it needs.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct HeldImage {
    pub(crate) digest: String,
    pub(crate) held: Vec<String>,
}

/// What one pin holds on this ferry: the image served for it now, the previous ones kept
/// (`pin_keep`), and when an upstream last confirmed its tag.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct PinRecord {
    pub(crate) current: Option<HeldImage>,
    #[serde(default)]
    pub(crate) previous: Vec<HeldImage>,
    pub(crate) last_confirmed_unix_ms: Option<u64>,
}

impl PinRecord {
    /// The digest of the image served for the pin now, if it holds one.
    pub(crate) fn current_digest(&self) -> Option<Digest> {
        self.current.as_ref()?.digest.parse().ok()
    }
}

/// `followed-pins.json`: the pin set as this ferry last knew it (the store's, the AZ tier's,
/// or its own), and each pin's record. The config file's pins are listed too, so a
/// restarted ferry knows what it held; the config decides whether they stay.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct FollowedPins {
    #[serde(default)]
    pub(crate) set: BTreeMap<String, PinEntry>,
    #[serde(default)]
    pub(crate) records: BTreeMap<String, PinRecord>,
}

impl FollowedPins {
    pub(crate) fn load(root: &Path) -> io::Result<FollowedPins> {
        load_json(root, FOLLOWED_PINS_FILE)
    }

    pub(crate) fn save(&self, root: &Path) -> io::Result<()> {
        save_json(root, FOLLOWED_PINS_FILE, self)
    }

    /// Every digest the records hold (current and kept images).
    pub(crate) fn digests(&self) -> HashSet<Digest> {
        self.records
            .values()
            .flat_map(|record| record.current.iter().chain(&record.previous))
            .flat_map(|image| &image.held)
            .filter_map(|d| d.parse().ok())
            .collect()
    }
}

/// Every digest pinned in `root`, by `ferry warm --pin` or by the pin keeper (for the
/// offline cache tools: `cache ls`, `cache du`, `cache gc`, `cache rm`).
pub(crate) fn pinned_digests(root: &Path) -> io::Result<HashSet<Digest>> {
    let mut digests = Pins::load(root)?.digests();
    digests.extend(FollowedPins::load(root)?.digests());
    Ok(digests)
}

/// What the pin keeper holds now: digests the bound must keep, and the digest each pinned
/// tag is served as (a pinned tag moves only when the keeper has its new image on disk).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct FollowedHolding {
    pub(crate) digests: HashSet<Digest>,
    pub(crate) tags: HashMap<super::TagKey, Digest>,
    /// The pinned images as (registry, `HOST/REPO:TAG` or `HOST/REPO@digest`), for the
    /// fleet's read-only pin list; `None` until the pin set is known.
    pub(crate) images: Option<Vec<(String, String)>>,
}

/// Pins as the running cache applies them: `pins.json`'s digests and the keeper's holding.
#[derive(Debug, Default)]
pub(crate) struct PinHolding {
    pub(crate) warmed: HashSet<Digest>,
    pub(crate) followed: FollowedHolding,
}

impl PinHolding {
    /// What the bound must never evict: every held digest, and the tag record of every
    /// pinned tag.
    pub(crate) fn protected(&self) -> HashSet<Digest> {
        let mut protected = self.warmed.clone();
        protected.extend(self.followed.digests.iter().cloned());
        protected.extend(self.followed.tags.keys().map(|key| key.record_digest()));
        protected
    }
}
