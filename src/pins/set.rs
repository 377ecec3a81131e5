//! The pin set: read from its sources (the config, this ferry's own pins or the shared
//! store's, the AZ tier's), a source that fails keeping its last known pins; and every change
//! applied under the keeper's lock, so the API and a reload never lose each other's change.

use super::{Live, PinKeeper, PinRequestError, SetHome};
use crate::cache::pins::{PinEntry, PinOrigin};
use crate::cache::tags::unix_ms;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

type PinSet = BTreeMap<String, PinEntry>;

pub(super) fn entry(origin: PinOrigin) -> PinEntry {
    PinEntry {
        origin,
        added_unix_ms: unix_ms(SystemTime::now()),
    }
}

impl PinKeeper {
    /// Reads the pin set from where it lives: the AZ tier's, then the store's or this ferry's
    /// own, then the config's (a later source wins for the same image).
    pub(super) async fn reload_set(&self) {
        let store_writes = self.store_writes.load(Ordering::SeqCst);
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
        let every_source_answered = from_group.as_ref().is_none_or(Result::is_ok)
            && from_store.as_ref().is_none_or(Result::is_ok);
        let source_errors: Vec<String> = [
            from_group
                .as_ref()
                .and_then(|r| r.as_ref().err())
                .map(|e| format!("{e}; keeping its last known pins")),
            from_store.as_ref().and_then(|r| r.as_ref().err()).map(|e| {
                format!("reading the shared store's pins: {e}; keeping its last known pins")
            }),
        ]
        .into_iter()
        .flatten()
        .collect();
        self.lock().source_errors = source_errors;
        self.update_set(|current| {
            let mut set = PinSet::new();
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
            let keep = |origin: PinOrigin, add: &mut dyn FnMut(&str, PinOrigin, Option<u64>)| {
                for (image, entry) in current.iter().filter(|(_, e)| e.origin == origin) {
                    add(image, origin, Some(entry.added_unix_ms));
                }
            };
            match &from_group {
                Some(Ok(images)) => {
                    for image in images {
                        add(image, PinOrigin::Group, None);
                    }
                }
                Some(Err(_)) => keep(PinOrigin::Group, &mut add),
                None => {}
            }
            // The API wrote to the store since the listing began: the listing may predate
            // that change, so the store's pins known here stand until the next reload.
            let listing_current = self.store_writes.load(Ordering::SeqCst) == store_writes;
            match &from_store {
                Some(Ok(pins)) if listing_current => {
                    for pin in pins {
                        add(&pin.image, PinOrigin::Store, Some(pin.added_unix_ms));
                    }
                }
                Some(_) => keep(PinOrigin::Store, &mut add),
                None => keep(PinOrigin::Api, &mut add),
            }
            for image in &self.settings.images {
                add(image, PinOrigin::Config, None);
            }
            set
        });
        if every_source_answered && !self.set_known.swap(true, Ordering::SeqCst) {
            self.publish();
        }
    }

    /// Replaces the pin set with what `change` makes of it; pins no longer in it are
    /// released. The file is written after (a failure is logged: the sources still hold
    /// the set).
    fn update_set(&self, change: impl FnOnce(&PinSet) -> PinSet) {
        let changed = {
            let mut state = self.lock();
            let set = change(&state.file.set);
            apply(&mut state, set)
        };
        if changed {
            self.save();
            self.publish();
        }
    }

    /// Changes the pin set for the API: written to `followed-pins.json` first, applied only
    /// once written (without a store the file is where the API's pins live).
    pub(super) fn change_set_durably(
        &self,
        change: impl FnOnce(&mut PinSet),
    ) -> Result<(), PinRequestError> {
        {
            let mut state = self.lock();
            let mut set = state.file.set.clone();
            change(&mut set);
            if set == state.file.set {
                return Ok(());
            }
            let mut file = state.file.clone();
            file.records.retain(|image, _| set.contains_key(image));
            file.set = set.clone();
            // A small file, written under the lock so no other change slips in between.
            file.save(self.pull.cache.root())?;
            apply(&mut state, set);
        }
        self.publish();
        Ok(())
    }
}

/// Makes `set` the keeper's set; true when it changed.
fn apply(state: &mut super::KeeperState, set: PinSet) -> bool {
    if state.file.set == set {
        return false;
    }
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
