//! The cache: content fetched once then served from disk, one upstream fetch for many
//! concurrent misses, clients streaming while a fill is under way, tag TTLs with HEAD
//! revalidation, stale-if-error, and a clean directory after restarts.

use crate::support::get_body;
use crate::support::get_url;
use crate::support::{
    FakeRegistry, Fault, TestProxy, pseudo_random_bytes, put_image, rehash_cache_dir,
};
use ferry::oci::Digest;
use reqwest::{Method, StatusCode};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

#[tokio::test]
async fn content_is_fetched_once_then_served_from_disk() {
    let upstream = FakeRegistry::start().await;
    let (manifest, layer_digest, layer) = put_image(&[&upstream], "once/only", "v1", 20);
    let proxy = TestProxy::start(&[&upstream]).await;
    for _ in 0..3 {
        let body = get_body(proxy.url(&format!("/v2/once/only/blobs/{layer_digest}"))).await;
        assert_eq!(body, layer);
        let body = get_body(proxy.url(&format!("/v2/once/only/manifests/{manifest}"))).await;
        assert!(manifest.matches(&body));
    }
    assert_eq!(upstream.hits(&format!("/blobs/{layer_digest}")), 1);
    assert_eq!(upstream.hits(&format!("/manifests/{manifest}")), 1);
    // Digests are immutable: even with the upstream gone, they are served.
    upstream.stop();
    let body = get_body(proxy.url(&format!("/v2/once/only/blobs/{layer_digest}"))).await;
    assert_eq!(body, layer);
}

#[tokio::test]
async fn concurrent_misses_make_one_upstream_fetch() {
    let upstream = FakeRegistry::start().await;
    let blob = pseudo_random_bytes(4 * 1024 * 1024, 21);
    let digest = upstream.put_blob(blob.clone());
    // A slow body keeps the fill open while every client arrives.
    upstream.fault(
        "/blobs/",
        Fault::Drip {
            chunk: 512 * 1024,
            delay: Duration::from_millis(40),
        },
    );
    let proxy = Arc::new(TestProxy::start(&[&upstream]).await);
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let proxy = proxy.clone();
        let url = proxy.url(&format!("/v2/c/d/blobs/{digest}"));
        tasks.push(tokio::spawn(async move {
            let response = get_url(url).await;
            assert_eq!(response.status(), StatusCode::OK);
            response.bytes().await.unwrap()
        }));
    }
    for task in tasks {
        let body = task.await.unwrap();
        assert!(digest.matches(&body), "a follower got wrong bytes");
    }
    assert_eq!(upstream.hits_with(Method::GET, "/blobs/"), 1);
    assert_eq!(proxy.rehash_cache().len(), 1);

    // Manifests by tag and digest coalesce too.
    let (manifest, _, _) = put_image(&[&upstream], "c/m", "t", 22);
    upstream.clear_faults();
    upstream.fault(
        "/manifests/",
        Fault::DelayHeaders(Duration::from_millis(300)),
    );
    let mut tasks = Vec::new();
    for i in 0..16 {
        let url = if i % 2 == 0 {
            proxy.url("/v2/c/m/manifests/t")
        } else {
            proxy.url(&format!("/v2/c/m/manifests/{manifest}"))
        };
        tasks.push(tokio::spawn(async move { get_body(url).await }));
    }
    for task in tasks {
        assert!(manifest.matches(&task.await.unwrap()));
    }
    assert_eq!(upstream.hits("/manifests/t"), 1);
    assert!(upstream.hits(&format!("/manifests/{manifest}")) <= 1);
}

#[tokio::test]
async fn the_client_receives_bytes_while_the_fill_is_under_way() {
    let upstream = FakeRegistry::start().await;
    let blob = pseudo_random_bytes(2 * 1024 * 1024, 23);
    let digest = upstream.put_blob(blob.clone());
    let release = Arc::new(Notify::new());
    upstream.fault(
        "/blobs/",
        Fault::PauseMidBody {
            after: 1024 * 1024,
            release: release.clone(),
        },
    );
    let proxy = TestProxy::start(&[&upstream]).await;
    let mut response = get_url(proxy.url(&format!("/v2/s/t/blobs/{digest}"))).await;
    assert_eq!(response.status(), StatusCode::OK);
    // The upstream is paused half way; the client must already have bytes.
    let mut received = Vec::new();
    while received.len() < 512 * 1024 {
        let chunk = tokio::time::timeout(Duration::from_secs(5), response.chunk())
            .await
            .expect("no bytes reached the client while the upstream was paused")
            .unwrap()
            .unwrap();
        received.extend_from_slice(&chunk);
    }
    assert!(
        proxy.rehash_cache().is_empty(),
        "the blob cannot be committed yet"
    );
    release.notify_one();
    while let Some(chunk) = response.chunk().await.unwrap() {
        received.extend_from_slice(&chunk);
    }
    assert_eq!(received, blob);
}

#[tokio::test]
async fn tags_are_revalidated_with_head_after_their_ttl() {
    let upstream = FakeRegistry::start().await;
    let (first, _, _) = put_image(&[&upstream], "t/ttl", "latest", 24);
    let proxy =
        TestProxy::start_with(&[&upstream], |c| c.tag_ttl = Duration::from_millis(300)).await;
    let digest_of = |response: reqwest::Response| {
        response.headers()["docker-content-digest"]
            .to_str()
            .unwrap()
            .to_owned()
    };
    let url = proxy.url("/v2/t/ttl/manifests/latest");

    assert_eq!(digest_of(get_url(&url).await), first.to_string());
    // Within the TTL: no upstream contact.
    assert_eq!(digest_of(get_url(&url).await), first.to_string());
    assert_eq!(upstream.hits("/manifests/latest"), 1);

    // After the TTL, unchanged: one HEAD, no GET.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(digest_of(get_url(&url).await), first.to_string());
    assert_eq!(upstream.hits_with(Method::HEAD, "/manifests/latest"), 1);
    assert_eq!(upstream.hits_with(Method::GET, "/manifests/latest"), 1);

    // The tag moves upstream: after the TTL ferry follows it.
    let (second, _, _) = put_image(&[&upstream], "t/ttl", "latest", 25);
    assert_ne!(first, second);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(digest_of(get_url(&url).await), second.to_string());
}

#[tokio::test]
async fn stale_tags_are_served_when_every_upstream_fails() {
    let primary = FakeRegistry::start().await;
    let secondary = FakeRegistry::start().await;
    let (manifest, layer_digest, layer) = put_image(&[&primary, &secondary], "stale/ok", "v1", 26);
    let proxy =
        TestProxy::start_with(&[&primary, &secondary], |c| c.tag_ttl = Duration::ZERO).await;
    let url = proxy.url("/v2/stale/ok/manifests/v1");
    assert_eq!(get_url(&url).await.status(), StatusCode::OK);
    get_body(proxy.url(&format!("/v2/stale/ok/blobs/{layer_digest}"))).await;

    primary.fault("/v2/", Fault::Status(503));
    secondary.stop();
    for _ in 0..2 {
        let response = get_url(&url).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()["docker-content-digest"],
            manifest.to_string().as_str()
        );
        assert!(manifest.matches(&response.bytes().await.unwrap()));
    }
    let blob = get_url(proxy.url(&format!("/v2/stale/ok/blobs/{layer_digest}"))).await;
    assert_eq!(blob.bytes().await.unwrap(), layer);
    // A tag never seen before cannot be invented.
    let response = get_url(proxy.url("/v2/stale/ok/manifests/v2")).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn tags_and_content_survive_a_restart_and_leftovers_are_swept() {
    let upstream = FakeRegistry::start().await;
    let (manifest, layer_digest, layer) = put_image(&[&upstream], "keep/me", "v1", 27);
    let proxy = TestProxy::start(&[&upstream]).await;
    get_body(proxy.url("/v2/keep/me/manifests/v1")).await;
    get_body(proxy.url(&format!("/v2/keep/me/blobs/{layer_digest}"))).await;
    let cache_dir = proxy.stop().await;
    // Simulate a crash mid-fill: a half-written temporary file.
    std::fs::write(
        cache_dir.path().join("tmp").join("12345-0-deadbeef"),
        b"partial",
    )
    .unwrap();
    upstream.stop();

    let proxy = TestProxy::start_urls(&[upstream.url()], cache_dir, |_| {}).await;
    assert_eq!(
        std::fs::read_dir(proxy.cache_dir.path().join("tmp"))
            .unwrap()
            .count(),
        0
    );
    let response = get_url(proxy.url("/v2/keep/me/manifests/v1")).await;
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "stale tag after restart with the upstream down"
    );
    assert_eq!(
        response.headers()["docker-content-digest"],
        manifest.to_string().as_str()
    );
    let blob = get_url(proxy.url(&format!("/v2/keep/me/blobs/{layer_digest}"))).await;
    assert_eq!(blob.bytes().await.unwrap(), layer);
    assert!(
        rehash_cache_dir(proxy.cache_dir.path())
            .iter()
            .all(|(_, ok)| *ok)
    );
}

#[tokio::test]
async fn a_second_server_cannot_share_the_cache_directory() {
    let upstream = FakeRegistry::start().await;
    let proxy = TestProxy::start(&[&upstream]).await;
    let mut config = proxy.config.clone();
    config.listen = "127.0.0.1:0".parse().unwrap();
    let second = ferry::app::start(config).await;
    assert!(matches!(second, Err(ferry::app::StartError::Cache { .. })));
}

#[tokio::test]
async fn a_blob_with_a_wrong_length_is_not_committed() {
    let primary = FakeRegistry::start().await;
    let secondary = FakeRegistry::start().await;
    let blob = pseudo_random_bytes(50_000, 28);
    let digest: Digest = primary.put_blob(blob.clone());
    secondary.put_blob(blob.clone());
    primary.fault("/blobs/", Fault::Truncate { after: 10_000 });
    let proxy = TestProxy::start(&[&primary, &secondary]).await;
    let body = get_body(proxy.url(&format!("/v2/l/m/blobs/{digest}"))).await;
    assert_eq!(body, blob);
    let cached = proxy.rehash_cache();
    assert_eq!(cached.len(), 1);
    assert!(cached[0].1);
}

#[tokio::test]
async fn a_manifest_damaged_on_disk_is_fetched_again_never_served() {
    let upstream = FakeRegistry::start().await;
    let (manifest, _, _) = put_image(&[&upstream], "damaged/disk", "v1", 26);
    let proxy = TestProxy::start(&[&upstream]).await;
    let url = format!("/v2/damaged/disk/manifests/{manifest}");
    let body = get_url(proxy.url(&url)).await;
    assert!(manifest.matches(&body.bytes().await.unwrap()));
    let cache_dir = proxy.stop().await;
    // Bit rot (or a stray write) on disk while the server is down.
    let path = cache_dir
        .path()
        .join("manifests/sha256")
        .join(&manifest.hex()[..2])
        .join(manifest.hex());
    let mut bytes = std::fs::read(&path).expect("the manifest was cached");
    bytes[10] ^= 0x20;
    std::fs::write(&path, &bytes).unwrap();

    let proxy = TestProxy::start_urls(&[upstream.url()], cache_dir, |_| {}).await;
    for _ in 0..2 {
        let body = get_body(proxy.url(&url)).await;
        assert!(manifest.matches(&body), "damaged bytes were served");
    }
    assert_eq!(
        upstream.hits(&format!("/manifests/{manifest}")),
        2,
        "fetched again once, then served from the repaired cache"
    );
    assert!(proxy.rehash_cache().iter().all(|(_, ok)| *ok));
}
