//! `ferry cache ...`: listing, usage, verification, garbage collection and removal on a
//! cache directory. Safe while a server runs on the same directory: every change is a single
//! atomic filesystem operation (a rename into `quarantine/`, an unlink, a rename of a new
//! `pins.json` over the old one), and readers holding a file open keep reading it.

use crate::cache::layout::{ContentFile, Layout, content_files};
use crate::cache::pins::Pins;
use crate::cache::tags::TagRecord;
pub use crate::oci::ImageRef;
use crate::oci::{Digest, DigestVerifier};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

pub fn tag_records(root: &Path) -> io::Result<Vec<TagRecord>> {
    let mut records = Vec::new();
    let Ok(prefixes) = std::fs::read_dir(root.join("tags")) else {
        return Ok(records);
    };
    for prefix in prefixes.flatten() {
        for file in std::fs::read_dir(prefix.path())?.flatten() {
            if let Ok(bytes) = std::fs::read(file.path())
                && let Ok(record) = serde_json::from_slice::<TagRecord>(&bytes)
            {
                records.push(record);
            }
        }
    }
    records.sort_by(|a, b| {
        (&a.registry, &a.repository, &a.tag).cmp(&(&b.registry, &b.repository, &b.tag))
    });
    Ok(records)
}

/// The digests a manifest references (config, layers, child manifests).
pub(crate) fn referenced_digests(manifest: &[u8]) -> Vec<Digest> {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(manifest) else {
        return Vec::new();
    };
    let mut digests = Vec::new();
    let mut push = |v: &serde_json::Value| {
        if let Some(d) = v
            .get("digest")
            .and_then(|d| d.as_str())
            .and_then(|d| d.parse().ok())
        {
            digests.push(d);
        }
    };
    if let Some(config) = value.get("config") {
        push(config);
    }
    for key in ["layers", "manifests"] {
        if let Some(items) = value.get(key).and_then(|v| v.as_array()) {
            items.iter().for_each(&mut push);
        }
    }
    digests
}

/// Every digest an image needs, following an index into its cached child manifests.
pub(crate) fn image_closure(layout: &Layout, top: &Digest) -> Vec<Digest> {
    let mut seen = Vec::new();
    let mut queue = vec![top.clone()];
    while let Some(digest) = queue.pop() {
        if seen.contains(&digest) {
            continue;
        }
        seen.push(digest.clone());
        if let Ok(body) = std::fs::read(layout.manifest_path(&digest)) {
            queue.extend(referenced_digests(&body));
        }
    }
    seen
}

#[derive(Debug, serde::Serialize)]
pub struct ImageListing {
    pub registry: String,
    pub repository: String,
    pub tag: String,
    pub digest: String,
    pub(crate) media_type: String,
    /// Bytes of its manifests and blobs present in the cache.
    pub cached_bytes: u64,
    /// Digests it needs that are not cached (evicted or never pulled).
    pub missing: usize,
    pub last_access_unix: u64,
    pub pinned: bool,
}

pub fn list(root: &Path) -> io::Result<Vec<ImageListing>> {
    let layout = Layout::create(root)?;
    let files: HashMap<Digest, ContentFile> = content_files(root)?
        .into_iter()
        .map(|f| (f.digest.clone(), f))
        .collect();
    let pinned = crate::cache::pins::pinned_digests(root)?;
    let mut listing = Vec::new();
    for record in tag_records(root)? {
        let Ok(top) = record.digest.parse::<Digest>() else {
            continue;
        };
        let closure = image_closure(&layout, &top);
        let present: Vec<&ContentFile> = closure.iter().filter_map(|d| files.get(d)).collect();
        let last_access = present
            .iter()
            .map(|f| f.modified)
            .max()
            .unwrap_or(SystemTime::UNIX_EPOCH);
        listing.push(ImageListing {
            registry: record.registry.clone(),
            repository: record.repository.clone(),
            tag: record.tag.clone(),
            digest: record.digest.clone(),
            media_type: record.media_type.clone(),
            cached_bytes: present.iter().map(|f| f.size).sum(),
            missing: closure.len() - present.len(),
            last_access_unix: last_access
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            pinned: closure.iter().all(|d| pinned.contains(d)),
        });
    }
    Ok(listing)
}

#[derive(Debug, Default, serde::Serialize)]
pub struct DiskUsage {
    pub total: u64,
    pub blobs: u64,
    pub manifests: u64,
    pub pinned: u64,
    /// Bytes referenced by each registry's cached tags (shared blobs count once per registry).
    pub per_registry: BTreeMap<String, u64>,
}

pub fn disk_usage(root: &Path) -> io::Result<DiskUsage> {
    let layout = Layout::create(root)?;
    let files = content_files(root)?;
    let sizes: HashMap<Digest, u64> = files.iter().map(|f| (f.digest.clone(), f.size)).collect();
    let pinned = crate::cache::pins::pinned_digests(root)?;
    let mut usage = DiskUsage::default();
    for file in &files {
        usage.total += file.size;
        if file.is_manifest {
            usage.manifests += file.size;
        } else {
            usage.blobs += file.size;
        }
        if pinned.contains(&file.digest) {
            usage.pinned += file.size;
        }
    }
    let mut per_registry: HashMap<String, HashSet<Digest>> = HashMap::new();
    for record in tag_records(root)? {
        if let Ok(top) = record.digest.parse::<Digest>() {
            per_registry
                .entry(record.registry)
                .or_default()
                .extend(image_closure(&layout, &top));
        }
    }
    for (registry, digests) in per_registry {
        let bytes = digests.iter().filter_map(|d| sizes.get(d)).sum();
        usage.per_registry.insert(registry, bytes);
    }
    Ok(usage)
}

#[derive(Debug, Default)]
pub struct VerifyReport {
    pub checked: usize,
    pub bytes: u64,
    /// Files whose content did not match their name, now under `quarantine/`.
    pub quarantined: Vec<(PathBuf, String)>,
}

/// Rehashes every blob and manifest; moves mismatches into `quarantine/` (a rename, so a
/// running server simply finds the digest missing and fetches it again).
pub fn verify(root: &Path) -> io::Result<VerifyReport> {
    let mut report = VerifyReport::default();
    std::fs::create_dir_all(root.join("quarantine"))?;
    let mut buffer = vec![0u8; 1 << 20];
    for file in content_files(root)? {
        let mut verifier = DigestVerifier::new(file.digest.algorithm());
        let mut reader = std::fs::File::open(&file.path)?;
        loop {
            let n = reader.read(&mut buffer)?;
            if n == 0 {
                break;
            }
            verifier.update(&buffer[..n]);
            report.bytes += n as u64;
        }
        report.checked += 1;
        let actual = verifier.finish();
        if actual != file.digest {
            let target = root.join("quarantine").join(format!(
                "{}-{}",
                file.digest.hex(),
                std::process::id()
            ));
            std::fs::rename(&file.path, &target)?;
            report
                .quarantined
                .push((target, format!("{} hashes to {actual}", file.digest)));
        }
    }
    Ok(report)
}

/// Deletes least recently used unpinned blobs until blob bytes are at most `target`.
/// Returns (blobs removed, bytes removed).
pub fn gc(root: &Path, target: u64) -> io::Result<(usize, u64)> {
    let pinned = crate::cache::pins::pinned_digests(root)?;
    let mut blobs: Vec<ContentFile> = content_files(root)?
        .into_iter()
        .filter(|f| !f.is_manifest)
        .collect();
    let mut total: u64 = blobs.iter().map(|f| f.size).sum();
    blobs.sort_by_key(|f| f.modified);
    let (mut removed, mut freed) = (0, 0);
    for blob in blobs {
        if total <= target {
            break;
        }
        if pinned.contains(&blob.digest) {
            continue;
        }
        let _ = std::fs::remove_file(crate::cache::provenance::sidecar_path(&blob.path));
        match std::fs::remove_file(&blob.path) {
            Ok(()) => {
                removed += 1;
                freed += blob.size;
                total -= blob.size;
            }
            // Already gone (a running server evicted it meanwhile).
            Err(e) if e.kind() == io::ErrorKind::NotFound => total -= blob.size,
            Err(e) => return Err(e),
        }
    }
    Ok((removed, freed))
}

/// Removes an image's tag, and its manifests and blobs that no other cached tag needs.
/// Returns the number of files removed.
pub fn remove_image(root: &Path, image: &ImageRef) -> io::Result<usize> {
    let layout = Layout::create(root)?;
    let records = tag_records(root)?;
    let target = records
        .iter()
        .find(|r| {
            r.registry == image.registry && r.repository == image.repository && r.tag == image.tag
        })
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{image} is not cached")))?;
    let mut still_needed: HashSet<Digest> = HashSet::new();
    for record in &records {
        if std::ptr::eq(record, target) {
            continue;
        }
        if let Ok(top) = record.digest.parse::<Digest>() {
            still_needed.extend(image_closure(&layout, &top));
        }
    }
    let pinned = crate::cache::pins::pinned_digests(root)?;
    let mut removed = 0;
    let tags = crate::cache::TagStore::new(layout.tags_dir());
    std::fs::remove_file(tags.path_of(&target.key()))?;
    removed += 1;
    if let Ok(top) = target.digest.parse::<Digest>() {
        for digest in image_closure(&layout, &top) {
            if still_needed.contains(&digest) || pinned.contains(&digest) {
                continue;
            }
            for path in [
                layout.blob_path(&digest),
                layout.manifest_path(&digest),
                layout.manifest_type_path(&digest),
                crate::cache::provenance::sidecar_path(&layout.blob_path(&digest)),
                crate::cache::provenance::sidecar_path(&layout.manifest_path(&digest)),
            ] {
                if std::fs::remove_file(&path).is_ok() {
                    removed += 1;
                }
            }
        }
    }
    Ok(removed)
}

/// How an image is pinned in `root`, if it is: by `ferry warm --pin` (`pins.json`), or as a
/// pin that follows its tag (the keeper's `followed-pins.json`).
pub fn pinned_how(root: &Path, image: &ImageRef) -> io::Result<Option<&'static str>> {
    let name = image.to_string();
    if Pins::load(root)?.images.contains_key(&name) {
        return Ok(Some(
            "by `ferry warm --pin` (undo with `ferry cache unpin`)",
        ));
    }
    let followed = crate::cache::pins::FollowedPins::load(root)?;
    Ok(followed
        .set
        .contains_key(&name)
        .then_some("as a pin that follows its tag (undo with `ferry pin rm`)"))
}

/// Removes an image from `pins.json` (atomically replaced). Returns whether it was pinned.
pub fn unpin(root: &Path, image: &ImageRef) -> io::Result<bool> {
    let mut pins = Pins::load(root)?;
    let was = pins.images.remove(&image.to_string()).is_some();
    if was {
        pins.save(root)?;
    }
    Ok(was)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_of_manifests_and_indexes() {
        let d = Digest::sha256_of(b"x").to_string();
        let manifest = format!(r#"{{"config":{{"digest":"{d}"}},"layers":[{{"digest":"{d}"}}]}}"#);
        assert_eq!(referenced_digests(manifest.as_bytes()).len(), 2);
        let index = format!(r#"{{"manifests":[{{"digest":"{d}"}}]}}"#);
        assert_eq!(referenced_digests(index.as_bytes()).len(), 1);
    }
}
