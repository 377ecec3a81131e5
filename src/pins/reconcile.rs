//! Reconciling one pin: which digest it should hold (its tag re-resolved with a HEAD when
//! due), then all of that image on this disk; a new digest is held beside the old one until
//! it is complete, and only then served for the tag. Failures back off, per pin.

use super::contents::{self, ContentError, ImageContents};
use super::image::PinnedImage;
use super::{NextImage, Phase, PinKeeper};
use crate::cache::pins::HeldImage;
use crate::cache::tags::unix_ms;
use crate::oci::{Digest, Reference, Tag};
use std::time::{Instant, SystemTime};

/// What a pin should hold now, and the upstream that said so (if one did).
struct Target {
    digest: Digest,
    confirmed_by: Option<String>,
}

impl PinKeeper {
    pub(super) async fn reconcile_all(&self) {
        let images: Vec<String> = self.lock().file.set.keys().cloned().collect();
        for image in images {
            if let Ok(pinned) = self.parse(&image) {
                self.reconcile(&image, &pinned).await;
            }
        }
    }

    async fn reconcile(&self, key: &str, image: &PinnedImage) {
        let now = Instant::now();
        let (current, due, settled, ready, next) = {
            let state = self.lock();
            let Some(live) = state.live.get(key) else {
                return;
            };
            let current = state
                .file
                .records
                .get(key)
                .and_then(crate::cache::pins::PinRecord::current_digest);
            let due = live
                .checked
                .is_none_or(|checked| checked.elapsed() >= self.settings.refresh);
            let ready = live.retry_at.is_none_or(|at| at <= now);
            (current, due, live.settled(), ready, live.next.clone())
        };
        // A settled pin waits for its refresh; an unsettled one also for its retry.
        let acts = due || (!settled && ready);
        if !acts {
            return;
        }
        let target = match (&image.reference, due) {
            (Reference::Digest(digest), _) => {
                self.with_live(key, |live| live.checked = Some(now));
                Some(Target {
                    digest: digest.clone(),
                    confirmed_by: None,
                })
            }
            (Reference::Tag(tag), true) => self.resolve(key, image, tag, current.clone()).await,
            // Not due: retry the move that failed, or the held image's missing pieces.
            (Reference::Tag(_), false) => next
                .map(|next| Target {
                    digest: next.digest,
                    confirmed_by: next.confirmed_by,
                })
                .or_else(|| {
                    current.clone().map(|digest| Target {
                        digest,
                        confirmed_by: None,
                    })
                }),
        };
        let Some(target) = target else {
            let refresh = self.settings.refresh;
            self.with_live(key, |live| live.note_failure(refresh));
            return;
        };
        if current.as_ref() == Some(&target.digest) {
            self.refresh_current(key, image, target).await;
        } else {
            self.bring_in(key, image, target, current.is_some()).await;
        }
    }

    /// The digest a pinned tag names: upstream (a HEAD), or, when no upstream answers, the
    /// one held, or the one this ferry or the fleet's store last saw.
    async fn resolve(
        &self,
        key: &str,
        image: &PinnedImage,
        tag: &Tag,
        current: Option<Digest>,
    ) -> Option<Target> {
        self.with_live(key, |live| live.checked = Some(Instant::now()));
        if !self.pull.settings.offline {
            match self
                .pull
                .resolve_pinned_tag(&image.registry, &image.repository, tag)
                .await
            {
                Ok(resolved) => {
                    self.with_live(key, |live| live.refresh_error = None);
                    return Some(Target {
                        digest: resolved.digest,
                        confirmed_by: Some(resolved.upstream),
                    });
                }
                Err(e) => {
                    tracing::warn!(image = %key, error = %e, "cannot re-resolve a pinned tag; keeping what it holds");
                    self.with_live(key, |live| live.refresh_error = Some(e.to_string()));
                }
            }
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
            self.with_live(key, |live| {
                let reason = live
                    .refresh_error
                    .clone()
                    .unwrap_or_else(|| "offline, and no replica has seen the tag".into());
                live.phase = Phase::Failed(reason);
            });
        }
        fallback.map(|digest| Target {
            digest,
            confirmed_by: None,
        })
    }

    /// The held image is still the pin's: makes sure all of it is still on disk (fetching
    /// what went missing) and records the confirmation.
    async fn refresh_current(&self, key: &str, image: &PinnedImage, target: Target) {
        match self.fetch_image(key, image, &target.digest).await {
            Ok(contents) => {
                self.adopt(key, image, &contents, target.confirmed_by.as_deref())
                    .await
            }
            Err(e) => {
                tracing::warn!(image = %key, error = %e, "a pinned image is not complete on this disk");
                let refresh = self.settings.refresh;
                self.with_live(key, |live| {
                    live.phase = Phase::Failed(e.to_string());
                    live.pending.clear();
                    live.note_failure(refresh);
                });
                self.publish();
            }
        }
    }

    /// A digest not held yet: fetch all of it, then make it the pin's image (the old one
    /// moves to the kept previous images). Until then the old one is served for the tag.
    async fn bring_in(&self, key: &str, image: &PinnedImage, target: Target, has_current: bool) {
        let digest = target.digest.clone();
        if has_current {
            tracing::info!(image = %key, new = %digest, "pinned tag moved; fetching the new image before serving it");
            let next = NextImage {
                digest: digest.clone(),
                phase: Phase::Fetching,
                confirmed_by: target.confirmed_by.clone(),
            };
            self.with_live(key, |live| live.next = Some(next));
        } else {
            self.with_live(key, |live| live.phase = Phase::Fetching);
        }
        match self.fetch_image(key, image, &digest).await {
            Ok(contents) => {
                self.adopt(key, image, &contents, target.confirmed_by.as_deref())
                    .await;
                tracing::info!(image = %key, %digest, "pinned image cached on this disk; serving it for the pin");
            }
            Err(e) => {
                tracing::warn!(image = %key, %digest, error = %e, "cannot bring a pinned image onto this disk; will retry");
                let reason = e.to_string();
                let refresh = self.settings.refresh;
                self.with_live(key, |live| {
                    if has_current {
                        live.next = Some(NextImage {
                            digest: digest.clone(),
                            phase: Phase::Failed(reason),
                            confirmed_by: target.confirmed_by.clone(),
                        });
                    } else {
                        live.phase = Phase::Failed(reason);
                    }
                    live.pending.clear();
                    live.note_failure(refresh);
                });
                self.publish();
            }
        }
    }

    /// Reads an image's manifests, holds its digests against eviction, then brings every
    /// blob onto this disk.
    async fn fetch_image(
        &self,
        key: &str,
        image: &PinnedImage,
        digest: &Digest,
    ) -> Result<ImageContents, ContentError> {
        let contents =
            contents::manifests_of(&self.pull, image, digest, &self.settings.platforms).await?;
        self.with_live(key, |live| live.pending = contents.digests());
        self.publish();
        contents::keep_blobs(&self.pull, image, &contents).await?;
        Ok(contents)
    }

    /// Makes `contents` (all on this disk) the pin's image: the tag's record moves to it
    /// when an upstream confirmed it, a different image held before is kept as a previous
    /// one (`pin_keep`), and the pin is cached. The file is written only when it changed.
    async fn adopt(
        &self,
        key: &str,
        image: &PinnedImage,
        contents: &ImageContents,
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
        let changed = {
            let mut state = self.lock();
            if !state.file.set.contains_key(key) {
                return; // unpinned while its image was fetched
            }
            let keep = self.settings.keep as usize;
            let record = state.file.records.entry(key.to_owned()).or_default();
            let before = record.clone();
            let held = HeldImage {
                digest: digest.clone(),
                held: contents.digests().iter().map(ToString::to_string).collect(),
            };
            if let Some(old) = record.current.replace(held)
                && old.digest != digest
            {
                record.previous.insert(0, old);
            }
            record.previous.retain(|previous| previous.digest != digest);
            record.previous.truncate(keep);
            if confirmed_by.is_some() {
                record.last_confirmed_unix_ms = Some(unix_ms(SystemTime::now()));
            }
            let changed = *record != before;
            if let Some(live) = state.live.get_mut(key) {
                live.phase = Phase::Cached;
                // A confirmed current image ends any move; an adopted move ends itself.
                if confirmed_by.is_some()
                    || live
                        .next
                        .as_ref()
                        .is_some_and(|next| next.digest.to_string() == digest)
                {
                    live.next = None;
                }
                live.pending.clear();
                live.note_success();
            }
            changed
        };
        if changed {
            self.save();
        }
        self.publish();
    }
}
