//! Pins that follow their tag: the keeper that holds pinned images on this replica's disk.
//! The pin set comes from the config, this ferry's API, the shared store (a fleet) or the AZ
//! tier (`pins_from`) (`set`); each pin is reconciled in turn (`reconcile`); this module runs
//! the loop, answers the admin API and reports each pin's state.

pub mod admin_client;
pub(crate) mod contents;
pub(crate) mod from_group;
pub(crate) mod image;
mod reconcile;
mod set;

use crate::cache::TagKey;
use crate::cache::pins::{FollowedHolding, FollowedPins, PinEntry, PinOrigin, PinRecord};
use crate::cache::tags::unix_ms;
use crate::oci::Digest;
use crate::pull::PullThrough;
use crate::shared::StoreError;
use crate::shared::pin_set::StoredPin;
use from_group::GroupPins;
use image::{PinImageError, PinnedImage};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

pub(crate) const DEFAULT_PIN_REFRESH: Duration = Duration::from_secs(300);
pub(crate) const DEFAULT_PIN_KEEP: u32 = 1;
/// The first retry of a pin that failed comes after this; each further failure doubles it,
/// up to `pin_refresh`.
const FIRST_RETRY: Duration = Duration::from_secs(5);

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
    /// The cache's: the pin set file could not be written (without a store nothing changed;
    /// with one, the store has the change and the next reload applies it here).
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

/// A newer digest of a pinned tag being brought onto this disk.
#[derive(Debug, Clone)]
struct NextImage {
    digest: Digest,
    phase: Phase,
    /// The upstream that named it (its tag record is written when the image is adopted).
    confirmed_by: Option<String>,
}

/// A pin's state on this replica (not persisted: a restart re-checks it).
struct Live {
    /// The state of the image served for the pin (`current` in its record).
    phase: Phase,
    next: Option<NextImage>,
    /// When the tag was last re-resolved (or the digest pin re-checked).
    checked: Option<Instant>,
    /// Why the last re-resolution failed, if it did (the pin keeps its image meanwhile).
    refresh_error: Option<String>,
    /// Digests of an image being brought in, held against eviction meanwhile.
    pending: Vec<Digest>,
    /// Failures in a row, and when the next try may come (doubling, up to `pin_refresh`).
    failures: u32,
    retry_at: Option<Instant>,
}

impl Live {
    fn new() -> Live {
        Live {
            phase: Phase::Fetching,
            next: None,
            checked: None,
            refresh_error: None,
            pending: Vec::new(),
            failures: 0,
            retry_at: None,
        }
    }

    /// Cached, with no newer image on its way.
    fn settled(&self) -> bool {
        self.phase == Phase::Cached && self.next.is_none()
    }

    /// The state counted in `/metrics`: a failed move counts as failed (the alert fires),
    /// one under way as fetching.
    fn overall(&self) -> &'static str {
        match (&self.phase, self.next.as_ref().map(|next| &next.phase)) {
            (Phase::Failed(_), _) | (_, Some(Phase::Failed(_))) => "failed",
            (Phase::Fetching, _) | (_, Some(Phase::Fetching)) => "fetching",
            _ => "cached",
        }
    }

    fn note_failure(&mut self, refresh: Duration) {
        self.failures = self.failures.saturating_add(1);
        let backoff = FIRST_RETRY
            .saturating_mul(1 << self.failures.saturating_sub(1).min(16))
            .min(refresh.max(FIRST_RETRY));
        self.retry_at = Some(Instant::now() + backoff);
    }

    fn note_success(&mut self) {
        self.failures = 0;
        self.retry_at = None;
    }
}

struct KeeperState {
    file: FollowedPins,
    live: HashMap<String, Live>,
    /// Why a source of the pin set failed at the last reload (its last known pins stand).
    source_errors: Vec<String>,
}

/// Keeps the pinned images on this replica's disk and their tags current.
pub(crate) struct PinKeeper {
    pull: Arc<PullThrough>,
    settings: PinSettings,
    home: SetHome,
    group: Option<GroupPins>,
    state: Mutex<KeeperState>,
    wake: tokio::sync::Notify,
    /// Bumped after every change the API wrote to the store: a reload whose listing may
    /// predate it keeps the store's pins it knows instead.
    store_writes: AtomicU64,
    /// Whether the pin set is known (read from its sources, or kept from an earlier run): until
    /// then the fleet endpoint answers 503 rather than an empty list that would unpin hosts.
    set_known: AtomicBool,
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
        let root = pull.cache.root();
        let existed = root.join(crate::cache::pins::FOLLOWED_PINS_FILE).is_file();
        let file = match FollowedPins::load(root) {
            Ok(file) => file,
            Err(e) => {
                let aside = root.join(format!(
                    "{}.unreadable-{}",
                    crate::cache::pins::FOLLOWED_PINS_FILE,
                    unix_ms(SystemTime::now())
                ));
                let kept =
                    std::fs::rename(root.join(crate::cache::pins::FOLLOWED_PINS_FILE), &aside);
                tracing::error!(error = %e, aside = %aside.display(), moved = kept.is_ok(), "cache failure: cannot read followed-pins.json; moved it aside and starting with no pins held");
                FollowedPins::default()
            }
        };
        let home = match &pull.shared {
            Some(store) => SetHome::Store(store.clone()),
            None => SetHome::Local,
        };
        let known = existed || (matches!(home, SetHome::Local) && group.is_none());
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
            state: Mutex::new(KeeperState {
                file,
                live,
                source_errors: Vec::new(),
            }),
            wake: tokio::sync::Notify::new(),
            store_writes: AtomicU64::new(0),
            set_known: AtomicBool::new(known),
            published: Mutex::new(None),
        });
        keeper.publish();
        keeper
    }

    fn lock(&self) -> MutexGuard<'_, KeeperState> {
        // A poisoned lock only means a panic elsewhere mid-update; the state stays usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reconciles until the server stops: the set is re-read every `pin_refresh` and
    /// whenever the API changes it; a pin is re-resolved every `pin_refresh`, and one that
    /// failed is retried sooner (from 5 s, doubling).
    pub(crate) async fn run(self: Arc<Self>) {
        let mut set_read: Option<Instant> = None;
        let mut woken = true;
        loop {
            if woken || set_read.is_none_or(|at| at.elapsed() >= self.settings.refresh) {
                self.reload_set().await;
                set_read = Some(Instant::now());
            }
            self.reconcile_all().await;
            let pause = self.pause();
            woken = tokio::select! {
                () = tokio::time::sleep(pause) => false,
                () = self.wake.notified() => true,
            };
        }
    }

    /// Until the next pin is due: its retry, or its refresh.
    fn pause(&self) -> Duration {
        let state = self.lock();
        let now = Instant::now();
        let refresh = self.settings.refresh;
        state
            .live
            .values()
            .map(|live| {
                let retry = live.retry_at.map(|at| at.saturating_duration_since(now));
                let refresh_due = live
                    .checked
                    .map_or(Duration::ZERO, |at| refresh.saturating_sub(at.elapsed()));
                match (live.settled(), retry) {
                    (false, Some(retry)) => retry.min(refresh_due),
                    (false, None) => FIRST_RETRY.min(refresh_due),
                    (true, _) => refresh_due,
                }
            })
            .min()
            .unwrap_or(refresh)
            .clamp(Duration::from_millis(100), refresh)
    }

    fn parse(&self, image: &str) -> Result<PinnedImage, PinImageError> {
        PinnedImage::parse(image, self.pull.registries.default_registry())
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

    /// Tells the cache what is held: every digest of every held and pending image, the
    /// digest each pinned tag is served as, and the pinned images (when the set is known).
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
                    .and_then(PinRecord::current_digest);
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
                images: self.set_known.load(Ordering::SeqCst).then_some(images),
            }
        };
        if published.as_ref() != Some(&holding) {
            self.pull.cache.hold_followed_pins(holding.clone());
            *published = Some(holding);
        }
    }

    /// Pins `input` (the API's `POST /admin/pins`): in the shared store when there is one
    /// (always written: the store is the fleet's truth), else on this ferry. Returns the pin's
    /// canonical name and whether it is new here.
    pub(crate) async fn add(&self, input: &str) -> Result<(String, bool), PinRequestError> {
        let image = self.parse(input)?;
        if self.pull.upstreams_for(&image.registry).is_err() {
            return Err(PinRequestError::UnknownRegistry(image.registry));
        }
        let key = image.to_string();
        let existing = self.lock().file.set.get(&key).map(|entry| entry.origin);
        let origin = match &self.home {
            SetHome::Store(store) => {
                store
                    .put_pin(&StoredPin {
                        image: key.clone(),
                        added_unix_ms: unix_ms(SystemTime::now()),
                    })
                    .await?;
                self.store_writes.fetch_add(1, Ordering::SeqCst);
                PinOrigin::Store
            }
            SetHome::Local => PinOrigin::Api,
        };
        // Already pinned, from any source: nothing changes here (a pin of the config file or
        // the AZ tier is removed there; with a store the write above renewed it for the fleet).
        let new = existing.is_none();
        if new {
            self.change_set_durably(|set| {
                set.insert(key.clone(), set::entry(origin));
            })?;
            self.wake.notify_one();
        }
        Ok((key, new))
    }

    /// Unpins `input` (the API's `DELETE /admin/pins`).
    pub(crate) async fn remove(&self, input: &str) -> Result<String, PinRequestError> {
        let image = self.parse(input)?;
        let key = image.to_string();
        let origin = self.lock().file.set.get(&key).map(|entry| entry.origin);
        if let Some(origin @ (PinOrigin::Config | PinOrigin::Group)) = origin {
            return Err(PinRequestError::PinnedElsewhere {
                image: key,
                origin: match origin {
                    PinOrigin::Config => "the config file",
                    _ => "the AZ tier (pins_from)",
                },
            });
        }
        match &self.home {
            SetHome::Local if origin.is_none() => return Err(PinRequestError::NotPinned(key)),
            SetHome::Local => {}
            SetHome::Store(store) => {
                // The store is the truth: a pin another replica made may not be known here yet.
                let known = store.pin_set().await?.iter().any(|pin| pin.image == key);
                if !known && origin.is_none() {
                    return Err(PinRequestError::NotPinned(key));
                }
                store.delete_pin(&key).await?;
                self.store_writes.fetch_add(1, Ordering::SeqCst);
            }
        }
        self.change_set_durably(|set| {
            set.remove(&key);
        })?;
        self.wake.notify_one();
        Ok(key)
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
            "pin_set_errors": state.source_errors,
        })
    }

    /// How many pins are in each state (`cached`, `fetching`, `failed`), for `/metrics`.
    pub(crate) fn count_by_state(&self) -> [(&'static str, i64); 3] {
        let state = self.lock();
        let mut counts = [("cached", 0), ("fetching", 0), ("failed", 0)];
        for image in state.file.set.keys() {
            let overall = state.live.get(image).map_or("fetching", Live::overall);
            if let Some(count) = counts.iter_mut().find(|(name, _)| *name == overall) {
                count.1 += 1;
            }
        }
        counts
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
        "next": live.and_then(|live| live.next.as_ref()).map(|next| serde_json::json!({
            "digest": next.digest.to_string(),
            "state": next.phase.as_str(),
            "reason": next.phase.reason(),
        })),
        "previous": record.previous.iter().map(|held| held.digest.clone()).collect::<Vec<_>>(),
        "digests_held": record.current.as_ref().map_or(0, |held| held.held.len()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_back_off_from_five_seconds_doubling_up_to_the_refresh() {
        let mut live = Live::new();
        let refresh = Duration::from_secs(60);
        let mut waits = Vec::new();
        for _ in 0..6 {
            let before = Instant::now();
            live.note_failure(refresh);
            waits.push((live.retry_at.unwrap() - before).as_secs());
        }
        assert_eq!(waits, [5, 10, 20, 40, 60, 60]);
        live.note_success();
        assert!(live.retry_at.is_none() && live.failures == 0);
        // A refresh shorter than the first retry does not make retries faster than it.
        live.note_failure(Duration::from_secs(1));
        assert!(live.retry_at.unwrap() >= Instant::now() + Duration::from_secs(4));
    }

    #[test]
    fn a_failed_move_counts_as_failed_while_the_old_image_serves() {
        let mut live = Live::new();
        assert_eq!(live.overall(), "fetching");
        live.phase = Phase::Cached;
        assert!(live.settled());
        assert_eq!(live.overall(), "cached");
        live.next = Some(NextImage {
            digest: Digest::sha256_of(b"v2"),
            phase: Phase::Fetching,
            confirmed_by: None,
        });
        assert!(!live.settled());
        assert_eq!(live.overall(), "fetching");
        if let Some(next) = live.next.as_mut() {
            next.phase = Phase::Failed("blob gone".into());
        }
        assert_eq!(live.overall(), "failed");
    }
}
