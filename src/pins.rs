//! Pins that follow their tag: the pin set (config, this ferry's API, the shared store for a
//! fleet, or the AZ tier via `pins_from`), and the keeper that reconciles it on this replica:
//! resolve each tag (a HEAD every `pin_refresh`), bring a moved image fully onto this disk,
//! only then move the tag; keep `pin_keep` previous images; report each pin's state.

pub mod admin_client;
pub(crate) mod contents;
pub(crate) mod from_group;
pub(crate) mod image;

use crate::cache::TagKey;
use crate::cache::pins::{
    FollowedHolding, FollowedPins, HeldImage, PinEntry, PinOrigin, PinRecord,
};
use crate::cache::tags::unix_ms;
use crate::oci::{Digest, Reference};
use crate::pull::PullThrough;
use crate::shared::StoreError;
use crate::shared::pin_set::StoredPin;
use contents::ContentError;
use from_group::GroupPins;
use image::{PinImageError, PinnedImage};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

pub(crate) const DEFAULT_PIN_REFRESH: Duration = Duration::from_secs(300);
pub(crate) const DEFAULT_PIN_KEEP: u32 = 1;
/// While a pin is not cached, the keeper tries again at least this often.
const RETRY_PAUSE: Duration = Duration::from_secs(5);

/// The pin settings: the config file's pins, how often tags are re-resolved, how many
/// previous images stay pinned, the AZ group to take the pin set from, and the platforms
/// kept of an index (all when empty).
#[derive(Debug, Clone)]
pub struct PinSettings {
    pub images: Vec<String>,
    pub refresh: Duration,
    pub keep: u32,
    pub from_group: Option<String>,
    pub platforms: Vec<String>,
}

impl Default for PinSettings {
    fn default() -> Self {
        PinSettings {
            images: Vec::new(),
            refresh: DEFAULT_PIN_REFRESH,
            keep: DEFAULT_PIN_KEEP,
            from_group: None,
            platforms: Vec::new(),
        }
    }
}

/// Why a pin request through the admin API was refused or failed, by who is at fault.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PinRequestError {
    /// The client's: not an image reference.
    #[error(transparent)]
    BadImage(#[from] PinImageError),
    /// The client's: a registry ferry does not route.
    #[error("ferry has no upstreams for registry {0:?}")]
    UnknownRegistry(String),
    /// The client's: nothing pinned under that name.
    #[error("{0} is not pinned")]
    NotPinned(String),
    /// The client's: the pin comes from elsewhere and is removed there.
    #[error("{image} is pinned by {origin}; remove it there")]
    PinnedElsewhere { image: String, origin: &'static str },
    /// The shared store's: the fleet's pin set could not be changed.
    #[error("the fleet's pin set is in the shared store, which failed: {0}")]
    Store(#[from] StoreError),
    /// The cache's: the pin set file could not be written.
    #[error("cannot record the pin set in the cache directory: {0}")]
    Cache(#[from] std::io::Error),
}

/// Where this replica's own pins (API) are kept.
enum SetHome {
    /// In `followed-pins.json`: pins are per ferry.
    Local,
    /// In the shared store: every replica sharing it applies them.
    Store(Arc<crate::shared::SharedStore>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Fetching,
    Cached,
    Failed(String),
}

impl Phase {
    fn as_str(&self) -> &'static str {
        match self {
            Phase::Fetching => "fetching",
            Phase::Cached => "cached",
            Phase::Failed(_) => "failed",
        }
    }

    fn reason(&self) -> Option<&str> {
        match self {
            Phase::Failed(reason) => Some(reason),
            _ => None,
        }
    }
}

/// A pin's state on this replica (not persisted: a restart re-checks it).
struct Live {
    /// The state of the image served for the pin (`current` in its record).
    phase: Phase,
    /// A newer digest of the tag being brought onto this disk, and how that goes.
    next: Option<(Digest, Phase)>,
    /// When the tag was last re-resolved (or tried).
    checked: Option<Instant>,
    /// Why the last re-resolution failed, if it did (the pin keeps its image meanwhile).
    refresh_error: Option<String>,
    /// Digests of an image being brought in, held against eviction meanwhile.
    pending: Vec<Digest>,
}

impl Live {
    fn new() -> Live {
        Live {
            phase: Phase::Fetching,
            next: None,
            checked: None,
            refresh_error: None,
            pending: Vec::new(),
        }
    }
}

struct KeeperState {
    file: FollowedPins,
    live: HashMap<String, Live>,
}

/// Keeps the pinned images on this replica's disk and their tags current.
pub(crate) struct PinKeeper {
    pull: Arc<PullThrough>,
    settings: PinSettings,
    home: SetHome,
    group: Option<GroupPins>,
    state: Mutex<KeeperState>,
    wake: tokio::sync::Notify,
    /// What was last handed to the cache (re-applying an unchanged holding walks the index).
    published: Mutex<Option<FollowedHolding>>,
}

impl PinKeeper {
    /// The keeper of `pull`'s cache: reads what it held before a restart and holds it at
    /// once (pinned tags serve from disk before the first reconcile).
    pub(crate) fn new(
        pull: Arc<PullThrough>,
        settings: PinSettings,
        group: Option<GroupPins>,
    ) -> Arc<PinKeeper> {
        let file = match FollowedPins::load(pull.cache.root()) {
            Ok(file) => file,
            Err(e) => {
                tracing::error!(error = %e, "cannot read followed-pins.json; starting with no pins held");
                FollowedPins::default()
            }
        };
        let home = match &pull.shared {
            Some(store) => SetHome::Store(store.clone()),
            None => SetHome::Local,
        };
        let live = file
            .set
            .keys()
            .map(|image| (image.clone(), Live::new()))
            .collect();
        let keeper = Arc::new(PinKeeper {
            pull,
            settings,
            home,
            group,
            state: Mutex::new(KeeperState { file, live }),
            wake: tokio::sync::Notify::new(),
            published: Mutex::new(None),
        });
        keeper.publish();
        keeper
    }

    fn lock(&self) -> MutexGuard<'_, KeeperState> {
        // A poisoned lock only means a panic elsewhere mid-update; the state stays usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reconciles until the server stops: on start, every `pin_refresh` (sooner while a pin
    /// is not cached) and whenever the API changes the set.
    pub(crate) async fn run(self: Arc<Self>) {
        loop {
            self.reload_set().await;
            self.reconcile_all().await;
            let pause = if self.all_cached() {
                self.settings.refresh
            } else {
                self.settings.refresh.min(RETRY_PAUSE)
            };
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = self.wake.notified() => {}
            }
        }
    }

    fn all_cached(&self) -> bool {
        self.lock()
            .live
            .values()
            .all(|live| live.phase == Phase::Cached && live.next.is_none())
    }

    /// Reads the pin set from where it lives: the config, then this ferry's own pins or the
    /// store's, then the AZ tier's; a source that fails keeps its last known pins.
    async fn reload_set(&self) {
        let from_group = match &self.group {
            None => None,
            Some(group) => Some(group.fetch().await.inspect_err(|e| {
                tracing::warn!(error = %e, "keeping the last known pins of the AZ tier");
            })),
        };
        let from_store = match &self.home {
            SetHome::Local => None,
            SetHome::Store(store) => Some(store.pin_set().await.inspect_err(|e| {
                tracing::warn!(error = %e, "keeping the last known pins of the shared store");
            })),
        };
        self.update_set(|current| {
            let mut set = BTreeMap::new();
            let mut add = |image: &str, origin: PinOrigin, added: Option<u64>| match self
                .parse(image)
            {
                Ok(image) => {
                    let image = image.to_string();
                    let added_unix_ms = added
                        .or_else(|| current.get(&image).map(|entry| entry.added_unix_ms))
                        .unwrap_or_else(|| unix_ms(SystemTime::now()));
                    set.insert(
                        image,
                        PinEntry {
                            origin,
                            added_unix_ms,
                        },
                    );
                }
                Err(e) => tracing::warn!(error = %e, origin = origin.as_str(), "ignoring a pin"),
            };
            let kept: Vec<(&String, &PinEntry)> = current.iter().collect();
            match &from_group {
                Some(Ok(images)) => images
                    .iter()
                    .for_each(|image| add(image, PinOrigin::Group, None)),
                Some(Err(_)) => kept
                    .iter()
                    .filter(|(_, entry)| entry.origin == PinOrigin::Group)
                    .for_each(|(image, entry)| {
                        add(image, PinOrigin::Group, Some(entry.added_unix_ms))
                    }),
                None => {}
            }
            match &from_store {
                Some(Ok(pins)) => pins
                    .iter()
                    .for_each(|pin| add(&pin.image, PinOrigin::Store, Some(pin.added_unix_ms))),
                Some(Err(_)) => kept
                    .iter()
                    .filter(|(_, entry)| entry.origin == PinOrigin::Store)
                    .for_each(|(image, entry)| {
                        add(image, PinOrigin::Store, Some(entry.added_unix_ms))
                    }),
                None => kept
                    .iter()
                    .filter(|(_, entry)| entry.origin == PinOrigin::Api)
                    .for_each(|(image, entry)| {
                        add(image, PinOrigin::Api, Some(entry.added_unix_ms))
                    }),
            }
            for image in &self.settings.images {
                add(image, PinOrigin::Config, None);
            }
            set
        });
    }

    /// Replaces the pin set with what `change` makes of it, under the lock (so an API call
    /// and a reload never lose each other's change); pins no longer in it are released.
    fn update_set(
        &self,
        change: impl FnOnce(&BTreeMap<String, PinEntry>) -> BTreeMap<String, PinEntry>,
    ) {
        let changed = {
            let mut state = self.lock();
            let set = change(&state.file.set);
            if state.file.set == set {
                false
            } else {
                for image in set.keys() {
                    if !state.file.set.contains_key(image) {
                        tracing::info!(%image, "pinned");
                    }
                }
                let released: Vec<String> = state
                    .file
                    .set
                    .keys()
                    .filter(|image| !set.contains_key(*image))
                    .cloned()
                    .collect();
                for image in &released {
                    tracing::info!(%image, "unpinned: its content may be evicted again");
                    state.file.records.remove(image);
                    state.live.remove(image);
                }
                for image in set.keys() {
                    state.live.entry(image.clone()).or_insert_with(Live::new);
                }
                state.file.set = set;
                true
            }
        };
        if changed {
            self.save();
            self.publish();
        }
    }

    fn parse(&self, image: &str) -> Result<PinnedImage, PinImageError> {
        PinnedImage::parse(image, self.pull.registries.default_registry())
    }

    async fn reconcile_all(&self) {
        let images: Vec<String> = self.lock().file.set.keys().cloned().collect();
        for image in images {
            if let Ok(pinned) = self.parse(&image) {
                self.reconcile(&image, &pinned).await;
            }
        }
    }

    /// One pin: which digest it should hold (its tag re-resolved when due), then that
    /// image's manifests and blobs on this disk; a new digest is held alongside the old one
    /// until it is complete, and only then served for the tag.
    async fn reconcile(&self, key: &str, image: &PinnedImage) {
        let (current, due) = {
            let state = self.lock();
            let current = state
                .file
                .records
                .get(key)
                .and_then(|r| r.current.as_ref())
                .and_then(|held| held.digest.parse::<Digest>().ok());
            let due = state
                .live
                .get(key)
                .and_then(|live| live.checked)
                .is_none_or(|checked| checked.elapsed() >= self.settings.refresh);
            (current, due)
        };
        let (target, confirmed_by) = match &image.reference {
            Reference::Digest(digest) => (Some(digest.clone()), None),
            Reference::Tag(_) if !due && current.is_some() => (current.clone(), None),
            Reference::Tag(tag) => self.resolve(key, image, tag, current.clone()).await,
        };
        let Some(target) = target else {
            return;
        };
        if current.as_ref() == Some(&target) {
            self.refresh_current(key, image, &target, confirmed_by)
                .await;
        } else {
            self.bring_in(key, image, &target, current.is_some(), confirmed_by)
                .await;
        }
    }

    /// The digest a pinned tag names: upstream (a HEAD), or, when no upstream answers, the
    /// one held, or the one this ferry or the fleet's store last saw. Also returns the
    /// upstream that confirmed it.
    async fn resolve(
        &self,
        key: &str,
        image: &PinnedImage,
        tag: &crate::oci::Tag,
        current: Option<Digest>,
    ) -> (Option<Digest>, Option<String>) {
        self.with_live(key, |live| live.checked = Some(Instant::now()));
        let resolved = if self.pull.settings.offline {
            None
        } else {
            match self
                .pull
                .resolve_pinned_tag(&image.registry, &image.repository, tag)
                .await
            {
                Ok(resolved) => {
                    self.with_live(key, |live| live.refresh_error = None);
                    Some(resolved)
                }
                Err(e) => {
                    tracing::warn!(image = %key, error = %e, "cannot re-resolve a pinned tag; keeping what it holds");
                    self.with_live(key, |live| live.refresh_error = Some(e.to_string()));
                    None
                }
            }
        };
        if let Some(resolved) = resolved {
            return (Some(resolved.digest), Some(resolved.upstream));
        }
        let fallback = match current {
            Some(current) => Some(current),
            None => {
                self.pull
                    .last_known_tag(&image.registry, &image.repository, tag)
                    .await
            }
        };
        if fallback.is_none() {
            let reason = self
                .with_live(key, |live| live.refresh_error.clone())
                .flatten()
                .unwrap_or_else(|| "offline, and no replica has seen the tag".into());
            self.with_live(key, |live| live.phase = Phase::Failed(reason));
        }
        (fallback, None)
    }

    /// The held image is still the tag's: makes sure all of it is still on disk (fetching
    /// what went missing) and records the confirmation.
    async fn refresh_current(
        &self,
        key: &str,
        image: &PinnedImage,
        digest: &Digest,
        confirmed_by: Option<String>,
    ) {
        match self.fetch_image(key, image, digest).await {
            Ok(contents) => {
                self.adopt(key, image, &contents, confirmed_by.as_deref())
                    .await
            }
            Err(e) => {
                tracing::warn!(image = %key, error = %e, "a pinned image is not complete on this disk");
                self.with_live(key, |live| live.phase = Phase::Failed(e.to_string()));
            }
        }
    }

    /// A digest not held yet: fetch all of it, then make it the pin's image (the old one
    /// moves to the kept previous images). Until then the old one is served for the tag.
    async fn bring_in(
        &self,
        key: &str,
        image: &PinnedImage,
        digest: &Digest,
        has_current: bool,
        confirmed_by: Option<String>,
    ) {
        if has_current {
            tracing::info!(image = %key, new = %digest, "pinned tag moved; fetching the new image before serving it");
            self.with_live(key, |live| {
                live.next = Some((digest.clone(), Phase::Fetching))
            });
        } else {
            self.with_live(key, |live| live.phase = Phase::Fetching);
        }
        match self.fetch_image(key, image, digest).await {
            Ok(contents) => {
                self.adopt(key, image, &contents, confirmed_by.as_deref())
                    .await;
                tracing::info!(image = %key, digest = %digest, "pinned image cached on this disk; serving it for the pin");
            }
            Err(e) => {
                tracing::warn!(image = %key, %digest, error = %e, "cannot bring a pinned image onto this disk; will retry");
                let reason = e.to_string();
                self.with_live(key, |live| {
                    if has_current {
                        live.next = Some((digest.clone(), Phase::Failed(reason)));
                    } else {
                        live.phase = Phase::Failed(reason);
                    }
                    live.pending.clear();
                });
                self.publish();
            }
        }
    }

    /// Makes `contents` (all on this disk) the pin's image: the tag's record moves to it
    /// when an upstream confirmed it, a different image held before is kept as a previous
    /// one (`pin_keep`), and the pin is cached.
    async fn adopt(
        &self,
        key: &str,
        image: &PinnedImage,
        contents: &contents::ImageContents,
        confirmed_by: Option<&str>,
    ) {
        let digest = contents.top.digest.to_string();
        // Only an upstream's answer refreshes the tag's record: a digest taken from a kept
        // record (every upstream down) must not look freshly confirmed once unpinned.
        if let (Some(tag), Some(upstream)) = (image.tag(), confirmed_by) {
            self.pull
                .record_pinned_tag(
                    &image.registry,
                    &image.repository,
                    tag,
                    &contents.top,
                    upstream,
                )
                .await;
        }
        {
            let mut state = self.lock();
            if !state.file.set.contains_key(key) {
                return; // unpinned while its image was fetched
            }
            let keep = self.settings.keep as usize;
            let record = state.file.records.entry(key.to_owned()).or_default();
            if let Some(old) = record.current.replace(held(contents))
                && old.digest != digest
            {
                record.previous.insert(0, old);
            }
            record.previous.retain(|previous| previous.digest != digest);
            record.previous.truncate(keep);
            if confirmed_by.is_some() {
                record.last_confirmed_unix_ms = Some(unix_ms(SystemTime::now()));
            }
            if let Some(live) = state.live.get_mut(key) {
                live.phase = Phase::Cached;
                live.next = None;
                live.pending.clear();
            }
        }
        self.save();
        self.publish();
    }

    /// Reads an image's manifests, holds its digests against eviction, then brings every
    /// blob onto this disk.
    async fn fetch_image(
        &self,
        key: &str,
        image: &PinnedImage,
        digest: &Digest,
    ) -> Result<contents::ImageContents, ContentError> {
        let contents =
            contents::manifests_of(&self.pull, image, digest, &self.settings.platforms).await?;
        self.with_live(key, |live| live.pending = contents.digests());
        self.publish();
        contents::keep_blobs(&self.pull, image, &contents).await?;
        Ok(contents)
    }

    fn with_live<T>(&self, key: &str, change: impl FnOnce(&mut Live) -> T) -> Option<T> {
        self.lock().live.get_mut(key).map(change)
    }

    fn save(&self) {
        let file = self.lock().file.clone();
        if let Err(e) = file.save(self.pull.cache.root()) {
            tracing::error!(error = %e, "cache failure: cannot write followed-pins.json");
        }
    }

    /// Tells the cache what is held: every digest of every held and pending image, and the
    /// digest each pinned tag is served as.
    fn publish(&self) {
        // Held while the holding is computed and applied, so two publishes apply in order.
        let mut published = self.published.lock().unwrap_or_else(|e| e.into_inner());
        let holding = {
            let state = self.lock();
            let mut digests: HashSet<Digest> = state.file.digests();
            digests.extend(
                state
                    .live
                    .values()
                    .flat_map(|live| live.pending.iter().cloned()),
            );
            let mut tags = HashMap::new();
            let mut images = Vec::new();
            for image in state.file.set.keys() {
                let Ok(pinned) = self.parse(image) else {
                    continue;
                };
                images.push((pinned.registry.clone(), image.clone()));
                let current = state
                    .file
                    .records
                    .get(image)
                    .and_then(|r| r.current.as_ref())
                    .and_then(|held| held.digest.parse::<Digest>().ok());
                if let (Some(tag), Some(current)) = (pinned.tag(), current) {
                    let key = TagKey {
                        registry: pinned.registry.clone(),
                        repository: pinned.repository.as_str().to_owned(),
                        tag: tag.as_str().to_owned(),
                    };
                    tags.insert(key, current);
                }
            }
            FollowedHolding {
                digests,
                tags,
                images,
            }
        };
        if published.as_ref() != Some(&holding) {
            self.pull.cache.hold_followed_pins(holding.clone());
            *published = Some(holding);
        }
    }

    /// Pins `input` (the API's `POST /admin/pins`): in the shared store when there is one,
    /// else on this ferry. Returns the pin's canonical name and whether it is new.
    pub(crate) async fn add(&self, input: &str) -> Result<(String, bool), PinRequestError> {
        let image = self.parse(input)?;
        if self.pull.upstreams_for(&image.registry).is_err() {
            return Err(PinRequestError::UnknownRegistry(image.registry));
        }
        let key = image.to_string();
        if let Some(existing) = self.lock().file.set.get(&key)
            && existing.origin != PinOrigin::Group
        {
            return Ok((key, false));
        }
        let origin = match &self.home {
            SetHome::Store(store) => {
                store
                    .put_pin(&StoredPin {
                        image: key.clone(),
                        added_unix_ms: unix_ms(SystemTime::now()),
                    })
                    .await?;
                PinOrigin::Store
            }
            SetHome::Local => PinOrigin::Api,
        };
        self.update_set(|current| {
            let mut set = current.clone();
            set.insert(key.clone(), entry(origin));
            set
        });
        if let SetHome::Local = self.home {
            self.saved()?;
        }
        self.wake.notify_one();
        Ok((key, true))
    }

    /// Unpins `input` (the API's `DELETE /admin/pins`).
    pub(crate) async fn remove(&self, input: &str) -> Result<String, PinRequestError> {
        let image = self.parse(input)?;
        let key = image.to_string();
        let origin = self.lock().file.set.get(&key).map(|entry| entry.origin);
        match origin {
            None if matches!(self.home, SetHome::Local) => {
                return Err(PinRequestError::NotPinned(key));
            }
            Some(origin @ (PinOrigin::Config | PinOrigin::Group)) => {
                return Err(PinRequestError::PinnedElsewhere {
                    image: key,
                    origin: match origin {
                        PinOrigin::Config => "the config file",
                        _ => "the AZ tier (pins_from)",
                    },
                });
            }
            _ => {}
        }
        if let SetHome::Store(store) = &self.home {
            // The store is the truth: a pin another replica made may not be known here yet.
            let known = store.pin_set().await?.iter().any(|pin| pin.image == key);
            if !known && origin.is_none() {
                return Err(PinRequestError::NotPinned(key));
            }
            store.delete_pin(&key).await?;
        }
        self.update_set(|current| {
            let mut set = current.clone();
            set.remove(&key);
            set
        });
        if let SetHome::Local = self.home {
            self.saved()?;
        }
        self.wake.notify_one();
        Ok(key)
    }

    /// Writes the set now, reporting a failure to the caller (the API's pins are only in
    /// this file when there is no store).
    fn saved(&self) -> Result<(), PinRequestError> {
        let file = self.lock().file.clone();
        file.save(self.pull.cache.root())?;
        Ok(())
    }

    /// Every pin with its state, for `GET /admin/pins`.
    pub(crate) fn status(&self) -> serde_json::Value {
        let state = self.lock();
        let pins: Vec<serde_json::Value> = state
            .file
            .set
            .iter()
            .map(|(image, entry)| {
                let record = state.file.records.get(image).cloned().unwrap_or_default();
                pin_status(image, entry, &record, state.live.get(image))
            })
            .collect();
        serde_json::json!({
            "pins": pins,
            "refresh_seconds": self.settings.refresh.as_secs_f64(),
            "keep": self.settings.keep,
            "platforms": self.settings.platforms,
            "pin_set": match &self.home {
                SetHome::Local => "this ferry (no shared store)".to_owned(),
                SetHome::Store(store) => format!("shared store {}", store.url()),
            },
            "pins_from": self.group.as_ref().map(|g| g.group.clone()),
        })
    }

    /// How many pins are in each state (`cached`, `fetching`, `failed`), for `/metrics`.
    pub(crate) fn count_by_state(&self) -> [(&'static str, i64); 3] {
        let state = self.lock();
        let mut counts = [("cached", 0), ("fetching", 0), ("failed", 0)];
        for image in state.file.set.keys() {
            let phase = state
                .live
                .get(image)
                .map_or("fetching", |live| live.phase.as_str());
            if let Some(count) = counts.iter_mut().find(|(name, _)| *name == phase) {
                count.1 += 1;
            }
        }
        counts
    }
}

fn entry(origin: PinOrigin) -> PinEntry {
    PinEntry {
        origin,
        added_unix_ms: unix_ms(SystemTime::now()),
    }
}

fn held(contents: &contents::ImageContents) -> HeldImage {
    HeldImage {
        digest: contents.top.digest.to_string(),
        held: contents.digests().iter().map(ToString::to_string).collect(),
    }
}

fn rfc3339(unix_ms: u64) -> String {
    humantime::format_rfc3339_seconds(SystemTime::UNIX_EPOCH + Duration::from_millis(unix_ms))
        .to_string()
}

fn pin_status(
    image: &str,
    entry: &PinEntry,
    record: &PinRecord,
    live: Option<&Live>,
) -> serde_json::Value {
    let phase = live.map_or(Phase::Fetching, |live| live.phase.clone());
    serde_json::json!({
        "image": image,
        "origin": entry.origin.as_str(),
        "digest": record.current.as_ref().map(|held| held.digest.clone()),
        "state": phase.as_str(),
        "reason": phase.reason(),
        "last_confirmed": record.last_confirmed_unix_ms.map(rfc3339),
        "last_confirmed_unix_ms": record.last_confirmed_unix_ms,
        "refresh_error": live.and_then(|live| live.refresh_error.clone()),
        "next": live.and_then(|live| live.next.as_ref()).map(|(digest, phase)| serde_json::json!({
            "digest": digest.to_string(),
            "state": phase.as_str(),
            "reason": phase.reason(),
        })),
        "previous": record.previous.iter().map(|held| held.digest.clone()).collect::<Vec<_>>(),
        "digests_held": record.current.as_ref().map_or(0, |held| held.held.len()),
    })
}
