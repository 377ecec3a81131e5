//! Upstream groups: the members of a group share one slot in the priority order and split the
//! work by rendezvous hashing, so each blob or tag has one owner, the next member takes over
//! when the owner fails, and a host tier in front of AZ ferries fetches each blob once.

use crate::support::get_body;
use crate::support::get_url;
use crate::support::{FakeRegistry, TestProxy, client, pseudo_random_bytes, put_image};
use ferry::oci::Digest;
use ferry::upstream::route::rendezvous_weight;
use reqwest::StatusCode;

/// Which of `members` (upstream URLs as ferry's config holds them) owns `key`.
fn owner_of(members: &[String], key: &str) -> usize {
    (0..members.len())
        .max_by_key(|i| rendezvous_weight(&members[*i], key))
        .unwrap()
}

fn group_urls(proxy: &TestProxy, group: &str) -> Vec<String> {
    proxy
        .config
        .upstreams
        .iter()
        .filter(|u| u.group.as_deref() == Some(group))
        .map(|u| u.url.to_string())
        .collect()
}

#[tokio::test]
async fn each_blob_goes_to_its_owner_and_the_next_member_takes_over() {
    let members = [FakeRegistry::start().await, FakeRegistry::start().await];
    let fallback = FakeRegistry::start().await;
    let blobs: Vec<(Digest, Vec<u8>)> = (0..16)
        .map(|i| {
            let bytes = pseudo_random_bytes(1000 + i, 300 + i as u64);
            let digest = members[0].put_blob(bytes.clone());
            members[1].put_blob(bytes.clone());
            fallback.put_blob(bytes.clone());
            (digest, bytes)
        })
        .collect();
    let proxy = TestProxy::start_with(&[&members[0], &members[1], &fallback], |c| {
        c.upstreams[0].group = Some("az".into());
        c.upstreams[1].group = Some("az".into());
    })
    .await;
    let urls = group_urls(&proxy, "az");
    let mut owned = [0, 0];
    for (digest, bytes) in &blobs {
        let owner = owner_of(&urls, &digest.to_string());
        owned[owner] += 1;
        let body = get_body(proxy.url(&format!("/v2/g/r/blobs/{digest}"))).await;
        assert_eq!(&body[..], &bytes[..]);
        let path = format!("/blobs/{digest}");
        assert_eq!(members[owner].hits(&path), 1, "the owner served {digest}");
        assert_eq!(
            members[1 - owner].hits(&path),
            0,
            "only the owner was asked"
        );
        assert_eq!(fallback.hits(&path), 0);
    }
    assert!(
        owned[0] > 0 && owned[1] > 0,
        "16 digests split between two members: {owned:?}"
    );

    // Member 0 dies: what it owned comes from member 1, never from the slot after the group.
    members[0].stop();
    let proxy = TestProxy::start_with(&[&members[0], &members[1], &fallback], |c| {
        c.upstreams[0].group = Some("az".into());
        c.upstreams[1].group = Some("az".into());
    })
    .await;
    for (digest, bytes) in blobs
        .iter()
        .filter(|(d, _)| owner_of(&urls, &d.to_string()) == 0)
    {
        let response = get_url(proxy.url(&format!("/v2/g/r/blobs/{digest}"))).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(&response.bytes().await.unwrap()[..], &bytes[..]);
        let path = format!("/blobs/{digest}");
        assert_eq!(members[1].hits(&path), 1, "the next member took over");
        assert_eq!(fallback.hits(&path), 0);
    }
}

#[tokio::test]
async fn a_tag_goes_to_the_owner_of_registry_repository_and_tag() {
    let members = [FakeRegistry::start().await, FakeRegistry::start().await];
    let mut tags = Vec::new();
    for i in 0..8 {
        let tag = format!("v{i}");
        put_image(&[&members[0], &members[1]], "g/app", &tag, 320 + i);
        tags.push(tag);
    }
    let proxy = TestProxy::start_with(&[&members[0], &members[1]], |c| {
        c.upstreams[0].group = Some("az".into());
        c.upstreams[1].group = Some("az".into());
    })
    .await;
    let urls = group_urls(&proxy, "az");
    let registry = proxy.config.upstreams[0].registry.clone();
    let status = proxy.admin_status().await;
    assert_eq!(status["upstreams"][0]["group"], "az", "{status}");
    assert_eq!(status["upstreams"][1]["group"], "az", "{status}");
    for tag in &tags {
        let response = client()
            .get(proxy.url(&format!("/v2/g/app/manifests/{tag}")))
            .header("accept", ferry::oci::media_type::OCI_MANIFEST)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let owner = owner_of(&urls, &format!("{registry}/g/app:{tag}"));
        let path = format!("/manifests/{tag}");
        assert_eq!(
            members[owner].hits(&path),
            1,
            "tag {tag} asked of its owner"
        );
        assert_eq!(members[1 - owner].hits(&path), 0);
    }
}

#[tokio::test]
async fn hosts_in_front_of_az_replicas_fetch_each_blob_from_the_registry_once() {
    let registry = FakeRegistry::start().await;
    // 16 digests: the chance that one replica owns them all (failing the split check below)
    // is 2^-15; with 6 it was 3%, and that flaked.
    let blobs: Vec<(Digest, Vec<u8>)> = (0..16)
        .map(|i| {
            let bytes = pseudo_random_bytes(100_000 + i * 1000, 340 + i as u64);
            (registry.put_blob(bytes.clone()), bytes)
        })
        .collect();
    let az = [
        TestProxy::start(&[&registry]).await,
        TestProxy::start(&[&registry]).await,
    ];
    let az_urls = [az[0].url(""), az[1].url("")];
    let mut hosts = Vec::new();
    for _ in 0..4 {
        let urls = vec![az_urls[0].clone(), az_urls[1].clone(), registry.url()];
        hosts.push(
            TestProxy::start_urls(&urls, tempfile::tempdir().unwrap(), |c| {
                c.upstreams[0].group = Some("az".into());
                c.upstreams[1].group = Some("az".into());
            })
            .await,
        );
    }
    // Every host pulls every blob at once, as a rollout does.
    let mut pulls = Vec::new();
    for host in &hosts {
        for (digest, bytes) in &blobs {
            let url = host.url(&format!("/v2/fleet/app/blobs/{digest}"));
            let bytes = bytes.clone();
            pulls.push(tokio::spawn(async move {
                let body = get_body(url).await;
                assert_eq!(&body[..], &bytes[..]);
            }));
        }
    }
    for pull in pulls {
        pull.await.unwrap();
    }
    for (digest, _) in &blobs {
        assert_eq!(
            registry.hits(&format!("/blobs/{digest}")),
            1,
            "{digest}: the whole fleet cost one registry fetch"
        );
    }
    // The replicas split the work: each blob is cached by its owner only.
    let cached = [az[0].rehash_cache().len(), az[1].rehash_cache().len()];
    assert_eq!(cached[0] + cached[1], blobs.len(), "{cached:?}");
    assert!(cached[0] > 0 && cached[1] > 0, "{cached:?}");
}
