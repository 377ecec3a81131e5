//! What a request is about, and how that orders an upstream group: consecutive upstreams with
//! the same `group` share one slot in the priority order, and each request ranks the members by
//! rendezvous (highest-random-weight) hashing of its digest or tag, so every blob has one owner,
//! the next in hash order takes over when it fails, and a member joining or leaving moves only
//! its own share.

use super::client::UpstreamClient;
use crate::oci::Digest;
use sha2::Digest as _;
use std::sync::Arc;

/// The subject of a request, for choosing within groups and for bad-source bookkeeping.
#[derive(Debug, Clone, Copy)]
pub enum Route<'a> {
    /// A blob or a manifest by digest.
    Digest(&'a Digest),
    /// A tag of a repository (of the pool's registry).
    Tag { repository: &'a str, tag: &'a str },
    /// Anything else (tag lists): groups keep their configured order.
    Unkeyed,
}

impl Route<'_> {
    pub fn digest(&self) -> Option<&Digest> {
        match self {
            Route::Digest(digest) => Some(digest),
            _ => None,
        }
    }

    /// The bytes members are ranked by: the same on every host, so a fleet agrees on owners.
    fn key(&self, registry: &str) -> Option<String> {
        match self {
            Route::Digest(digest) => Some(digest.to_string()),
            Route::Tag { repository, tag } => Some(format!("{registry}/{repository}:{tag}")),
            Route::Unkeyed => None,
        }
    }
}

/// A member's weight for `key`: the first 8 bytes of SHA-256(member URL, NUL, key). A
/// documented hash rather than the standard library's, so hosts built by different compilers
/// still agree.
pub fn rendezvous_weight(member: &str, key: &str) -> u64 {
    let mut hasher = sha2::Sha256::new();
    hasher.update(member.as_bytes());
    hasher.update([0]);
    hasher.update(key.as_bytes());
    let hash = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash[..8]);
    u64::from_be_bytes(first)
}

/// Orders each run of consecutive same-group upstreams by descending weight for `route`;
/// ungrouped upstreams (and everything, for an unkeyed route) keep their order.
pub(crate) fn order_groups(
    upstreams: Vec<Arc<UpstreamClient>>,
    route: Route<'_>,
    registry: &str,
) -> Vec<Arc<UpstreamClient>> {
    let Some(key) = route.key(registry) else {
        return upstreams;
    };
    let mut ordered = Vec::with_capacity(upstreams.len());
    let mut rest = upstreams.as_slice();
    while let Some(first) = rest.first() {
        let run = match first.config().group.as_deref() {
            None => 1,
            Some(group) => rest
                .iter()
                .take_while(|c| c.config().group.as_deref() == Some(group))
                .count(),
        };
        let mut members = rest[..run].to_vec();
        if run > 1 {
            members.sort_by_cached_key(|c| {
                std::cmp::Reverse(rendezvous_weight(c.config().url.as_str(), &key))
            });
        }
        ordered.extend(members);
        rest = &rest[run..];
    }
    ordered
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(members: &[&str], key: &str) -> String {
        members
            .iter()
            .max_by_key(|m| rendezvous_weight(m, key))
            .unwrap()
            .to_string()
    }

    #[test]
    fn removing_a_member_moves_only_its_own_keys() {
        let three = [
            "http://az-a:5000/",
            "http://az-b:5000/",
            "http://az-c:5000/",
        ];
        let two = ["http://az-a:5000/", "http://az-c:5000/"];
        let keys: Vec<String> = (0..3000).map(|i| format!("sha256:{i:064x}")).collect();
        let mut owned_by = std::collections::HashMap::new();
        let mut moved = 0;
        for key in &keys {
            let before = owner(&three, key);
            let after = owner(&two, key);
            *owned_by.entry(before.clone()).or_insert(0) += 1;
            if before != after {
                assert_eq!(
                    before, "http://az-b:5000/",
                    "only the removed member's keys move"
                );
                moved += 1;
            }
        }
        assert_eq!(moved, owned_by["http://az-b:5000/"]);
        // Each member owns roughly a third.
        for count in owned_by.values() {
            assert!((800..1200).contains(count), "{owned_by:?}");
        }
    }

    #[test]
    fn the_weight_is_a_fixed_function() {
        // Hosts must agree across builds: this value is part of the fleet's contract.
        assert_eq!(
            rendezvous_weight("http://az-a:5000/", "sha256:00"),
            u64::from_be_bytes(
                sha2::Sha256::digest(b"http://az-a:5000/\0sha256:00")[..8]
                    .try_into()
                    .unwrap()
            )
        );
    }
}
