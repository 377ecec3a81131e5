//! Suspect upstreams: after one sent a body that failed its digest, it is asked after the
//! others for every digest, and its blob bodies reach no client before they are verified.

use crate::support::{FakeRegistry, Fault, TestProxy, pseudo_random_bytes};
use ferry::oci::Digest;

/// Big enough that a trusted source's body streams to clients before the digest check.
const BLOB_BYTES: usize = 3 * 1024 * 1024;

async fn pull_whole(proxy: &TestProxy, digest: &Digest) -> Result<Vec<u8>, String> {
    let response = crate::support::get_blob(proxy, "team/app", digest, None).await;
    if response.status() != 200 {
        return Err(format!("status {}", response.status()));
    }
    let body = response.bytes().await.map_err(|e| e.to_string())?;
    if Digest::sha256_of(&body) != *digest {
        return Err("wrong bytes".into());
    }
    Ok(body.to_vec())
}

#[tokio::test]
async fn after_a_corrupt_body_the_next_corrupt_blob_is_served_whole_on_the_first_try() {
    let primary = FakeRegistry::start().await;
    let secondary = FakeRegistry::start().await;
    let mut blobs = Vec::new();
    for seed in 0..2 {
        let bytes = pseudo_random_bytes(BLOB_BYTES, 8600 + seed);
        blobs.push(primary.put_blob(bytes.clone()));
        secondary.put_blob(bytes);
    }
    // The primary corrupts both blobs.
    for blob in &blobs {
        primary.fault(&blob.to_string(), Fault::Corrupt);
    }
    let proxy = TestProxy::start(&[&primary, &secondary]).await;
    // The first pull meets the corruption as it streams: it may be cut.
    let _ = pull_whole(&proxy, &blobs[0]).await;
    let status = proxy.admin_status().await;
    assert!(
        status["upstreams"][0]["suspect_for_ms"].as_u64().unwrap() > 60_000,
        "{status}"
    );
    assert_eq!(
        status["upstreams"][1]["suspect_for_ms"],
        serde_json::Value::Null
    );
    let metrics = crate::support::get_body(proxy.admin_url("/metrics")).await;
    let metrics = String::from_utf8_lossy(&metrics);
    let line = format!(
        "ferry_upstream_suspect{{registry=\"docker.io\",upstream=\"{}\"}} 1",
        primary.addr
    );
    assert!(metrics.contains(&line), "{metrics}");
    // The second blob, which the primary would corrupt too: whole from the secondary, on the
    // client's first try, without the primary being asked.
    pull_whole(&proxy, &blobs[1])
        .await
        .expect("the second pull is served whole");
    assert_eq!(primary.hits(&blobs[1].to_string()), 0);
    assert_eq!(secondary.hits(&blobs[1].to_string()), 1);
}

#[tokio::test]
async fn a_suspect_upstreams_wrong_body_reaches_no_client_and_is_fetched_again() {
    let primary = FakeRegistry::start().await;
    let secondary = FakeRegistry::start().await;
    let shared = pseudo_random_bytes(BLOB_BYTES, 8700);
    let first = primary.put_blob(shared.clone());
    secondary.put_blob(shared);
    // Only the primary has this one, and its first body is corrupt.
    let only_primary = primary.put_blob(pseudo_random_bytes(BLOB_BYTES, 8701));
    primary.fault(&first.to_string(), Fault::Corrupt);
    let proxy = TestProxy::start(&[&primary, &secondary]).await;
    let _ = pull_whole(&proxy, &first).await;
    assert!(proxy.admin_status().await["upstreams"][0]["suspect_for_ms"].is_u64());
    primary.fault_times(&only_primary.to_string(), Fault::Corrupt, 1);
    // The secondary lacks it; the suspect primary's body is held until verified: the wrong
    // one is dropped unseen and fetched again, and the client gets every byte right.
    let body = pull_whole(&proxy, &only_primary)
        .await
        .expect("served whole on the first try");
    assert_eq!(body.len(), BLOB_BYTES);
    assert_eq!(
        secondary.hits(&only_primary.to_string()),
        1,
        "the others first"
    );
    assert_eq!(
        primary.hits(&only_primary.to_string()),
        2,
        "wrong, then right"
    );
}

#[tokio::test]
async fn a_restart_does_not_forget_a_suspect() {
    let primary = FakeRegistry::start().await;
    let secondary = FakeRegistry::start().await;
    let mut blobs = Vec::new();
    for seed in 0..2 {
        let bytes = pseudo_random_bytes(BLOB_BYTES, 8800 + seed);
        blobs.push(primary.put_blob(bytes.clone()));
        secondary.put_blob(bytes);
    }
    for blob in &blobs {
        primary.fault(&blob.to_string(), Fault::Corrupt);
    }
    let urls = [primary.url(), secondary.url()];
    let proxy = TestProxy::start_urls(&urls, tempfile::tempdir().unwrap(), |_| {}).await;
    let _ = pull_whole(&proxy, &blobs[0]).await;
    let cache_dir = proxy.stop().await;
    let proxy = TestProxy::start_urls(&urls, cache_dir, |_| {}).await;
    assert!(
        proxy.admin_status().await["upstreams"][0]["suspect_for_ms"]
            .as_u64()
            .unwrap()
            > 60_000
    );
    pull_whole(&proxy, &blobs[1])
        .await
        .expect("served whole after the restart");
    assert_eq!(primary.hits(&blobs[1].to_string()), 0);
}
