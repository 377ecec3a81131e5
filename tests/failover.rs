//! Failover: every trigger on the primary sends the request to the secondary without the
//! client noticing; when every upstream fails the client gets the most meaningful error.

use crate::support::get_url;
use crate::support::{FakeRegistry, Fault, TestProxy, client, pseudo_random_bytes, put_image};
use ferry::oci::media_type::OCI_MANIFEST;
use reqwest::StatusCode;
use std::time::{Duration, Instant};

/// What a pull of `repo:tag` through ferry needs: the manifest by tag and by digest, and
/// the layer, each checked against what was put.
async fn pull_ok(
    proxy: &TestProxy,
    image: &str,
    manifest: &ferry::oci::Digest,
    layer_digest: &ferry::oci::Digest,
    layer: &[u8],
) {
    let (repo, tag) = image.rsplit_once(':').unwrap();
    let http = client();
    let by_tag = http
        .get(proxy.url(&format!("/v2/{repo}/manifests/{tag}")))
        .send()
        .await
        .unwrap();
    assert_eq!(by_tag.status(), StatusCode::OK);
    assert_eq!(
        by_tag.headers()["docker-content-digest"],
        manifest.to_string().as_str()
    );
    assert!(manifest.matches(&by_tag.bytes().await.unwrap()));
    let by_digest = http
        .get(proxy.url(&format!("/v2/{repo}/manifests/{manifest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(by_digest.status(), StatusCode::OK);
    let blob = http
        .get(proxy.url(&format!("/v2/{repo}/blobs/{layer_digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(blob.status(), StatusCode::OK);
    assert_eq!(blob.bytes().await.unwrap(), layer);
}

async fn assert_fails_over(fault: Fault, label: &str) {
    assert_fails_over_with(&[("/v2/", fault)], label).await
}

/// Injects each `(path, fault)` on the primary and checks a full pull still succeeds.
async fn assert_fails_over_with(faults: &[(&str, Fault)], label: &str) {
    let primary = FakeRegistry::start().await;
    let secondary = FakeRegistry::start().await;
    let (manifest, layer_digest, layer) =
        put_image(&[&primary, &secondary], "ci/agent", "stable", 7);
    for (path, fault) in faults {
        primary.fault(path, fault.clone());
    }
    let proxy = TestProxy::start(&[&primary, &secondary]).await;
    pull_ok(&proxy, "ci/agent:stable", &manifest, &layer_digest, &layer).await;
    assert!(
        primary.hits("/manifests/stable") >= 1,
        "{label}: primary was not tried first"
    );
    assert!(
        primary.hits(&format!("/blobs/{layer_digest}")) >= 1,
        "{label}: primary not tried for the blob"
    );
    assert_eq!(secondary.hits("/manifests/stable"), 1, "{label}");
    assert_eq!(
        secondary.hits(&format!("/blobs/{layer_digest}")),
        1,
        "{label}"
    );
    assert!(
        proxy.rehash_cache().iter().all(|(_, ok)| *ok),
        "{label}: a corrupt file was committed"
    );
}

#[tokio::test]
async fn fails_over_on_server_errors_and_throttling() {
    for code in [500, 502, 503, 504, 429] {
        assert_fails_over(Fault::Status(code), &format!("status {code}")).await;
    }
}

#[tokio::test]
async fn fails_over_on_not_found_and_auth_refusals() {
    for code in [404, 401, 403] {
        assert_fails_over(Fault::Status(code), &format!("status {code}")).await;
    }
}

#[tokio::test]
async fn fails_over_on_header_timeout() {
    let started = Instant::now();
    assert_fails_over(Fault::HangBeforeHeaders, "hang before headers").await;
    // Three requests each wait for the 2 s header timeout, no more.
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn fails_over_on_body_idle_timeout_and_reset_before_any_byte_is_published() {
    // The blob is smaller than one write batch, so nothing reached a client before the
    // fault and the switch is invisible.
    // Manifests are a few hundred bytes: break them after 100, the layer after 1000.
    for (label, make) in [
        (
            "hang mid-body",
            (|after| Fault::HangMidBody { after }) as fn(usize) -> Fault,
        ),
        ("reset mid-body", |after| Fault::ResetMidBody { after }),
        ("truncated body", |after| Fault::Truncate { after }),
    ] {
        assert_fails_over_with(
            &[("/manifests/", make(100)), ("/blobs/", make(1000))],
            label,
        )
        .await;
    }
}

#[tokio::test]
async fn fails_over_on_corrupt_bytes_and_wrong_digest_header() {
    // A corrupt blob from a primary that served its manifest right: the secondary serves it.
    let (primary, secondary, layer) = pull_with_primary_fault(6, "/blobs/", Fault::Corrupt).await;
    assert_eq!(primary.hits(&layer), 1);
    assert_eq!(secondary.hits(&layer), 1);
    // Everything corrupt on the primary: the secondary serves the manifest, and the primary,
    // suspect from then on, is asked for the blob only after it (so not at all).
    let (primary, secondary, layer) = pull_with_primary_fault(7, "/v2/", Fault::Corrupt).await;
    assert_eq!(primary.hits("/manifests/stable"), 1);
    assert_eq!(secondary.hits("/manifests/stable"), 1);
    assert_eq!(primary.hits(&layer), 0);
    assert_eq!(secondary.hits(&layer), 1);
    let (primary, secondary, _) =
        pull_with_primary_fault(8, "/manifests/", Fault::WrongDigestHeader).await;
    assert_eq!(primary.hits("/manifests/stable"), 1);
    assert_eq!(secondary.hits("/manifests/stable"), 1);
}

/// Pulls `ci/agent:stable` whole with `fault` on the primary's `path`; returns both registries
/// and the layer's blob path, and checks that nothing corrupt was committed.
async fn pull_with_primary_fault(
    seed: u64,
    path: &str,
    fault: Fault,
) -> (FakeRegistry, FakeRegistry, String) {
    let primary = FakeRegistry::start().await;
    let secondary = FakeRegistry::start().await;
    let (manifest, layer_digest, layer) =
        put_image(&[&primary, &secondary], "ci/agent", "stable", seed);
    primary.fault(path, fault);
    let proxy = TestProxy::start(&[&primary, &secondary]).await;
    pull_ok(&proxy, "ci/agent:stable", &manifest, &layer_digest, &layer).await;
    assert!(proxy.rehash_cache().iter().all(|(_, ok)| *ok));
    (primary, secondary, format!("/blobs/{layer_digest}"))
}

#[tokio::test]
async fn fails_over_on_connection_refused() {
    let secondary = FakeRegistry::start().await;
    let (manifest, layer_digest, layer) = put_image(&[&secondary], "ci/agent", "stable", 9);
    let dead = FakeRegistry::start().await;
    let dead_url = dead.url();
    drop(dead); // nothing listens there any more: connection refused
    let urls = vec![dead_url, secondary.url()];
    let proxy = TestProxy::start_urls(&urls, tempfile::tempdir().unwrap(), |_| {}).await;
    pull_ok(&proxy, "ci/agent:stable", &manifest, &layer_digest, &layer).await;
}

#[tokio::test]
async fn fails_over_on_connect_timeout() {
    // A loopback listener that never accepts, with its accept queue filled: further SYNs
    // are dropped, so a connect hangs until ferry's connect timeout.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let blackhole = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(stream)) = tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(blackhole),
        )
        .await
        {
            fillers.push(stream);
        }
    }
    let secondary = FakeRegistry::start().await;
    let (manifest, layer_digest, layer) = put_image(&[&secondary], "ci/agent", "stable", 13);
    let urls = vec![format!("http://{blackhole}"), secondary.url()];
    let proxy = TestProxy::start_urls(&urls, tempfile::tempdir().unwrap(), |c| {
        c.upstreams[0].connect_timeout = Duration::from_millis(300);
        c.upstreams[0].header_timeout = Duration::from_secs(30);
    })
    .await;
    let started = Instant::now();
    let response = get_url(proxy.url("/v2/ci/agent/manifests/stable")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "connect timeout not applied: {:?}",
        started.elapsed()
    );
    pull_ok(&proxy, "ci/agent:stable", &manifest, &layer_digest, &layer).await;
    drop(listener);
}

#[tokio::test]
async fn the_seed_outage_test_image_deleted_from_primary() {
    let primary = FakeRegistry::start().await;
    let secondary = FakeRegistry::start().await;
    let (manifest, layer_digest, layer) =
        put_image(&[&primary, &secondary], "ci/agent", "stable", 10);
    let proxy =
        TestProxy::start_with(&[&primary, &secondary], |c| c.tag_ttl = Duration::ZERO).await;
    pull_ok(&proxy, "ci/agent:stable", &manifest, &layer_digest, &layer).await;
    assert_eq!(secondary.hits("/manifests/"), 0);
    primary.delete_image("ci/agent", "stable");
    primary.remove_blob(&layer_digest);
    for _ in 0..3 {
        pull_ok(&proxy, "ci/agent:stable", &manifest, &layer_digest, &layer).await;
    }
    assert!(
        secondary.hits("/manifests/stable") >= 1,
        "revalidation went to the secondary"
    );
}

#[tokio::test]
async fn not_found_failover_can_be_disabled() {
    let primary = FakeRegistry::start().await;
    let secondary = FakeRegistry::start().await;
    put_image(&[&secondary], "only/secondary", "v1", 11);
    let proxy = TestProxy::start_with(&[&primary, &secondary], |c| {
        c.pool.failover_on_not_found = false
    })
    .await;
    // `failover_on_not_found` is read when the upstream pool is built, via the config.
    let response = get_url(proxy.url("/v2/only/secondary/manifests/v1")).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(secondary.hits("/manifests/"), 0);
}

#[tokio::test]
async fn when_every_upstream_fails_the_client_gets_the_most_meaningful_status() {
    let a = FakeRegistry::start().await;
    let b = FakeRegistry::start().await;
    let proxy = TestProxy::start(&[&a, &b]).await;
    let http = client();
    let get = |path: &str| http.get(proxy.url(path)).send();

    // Both: not found.
    let response = get("/v2/t/x/manifests/v1").await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);

    // Both 503 / refused-style: 503.
    a.fault("/v2/t/y/", Fault::Status(503));
    b.fault("/v2/t/y/", Fault::Status(503));
    let response = get("/v2/t/y/manifests/v1").await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: serde_json::Value = response.json().await.unwrap();
    let message = body["errors"][0]["message"].as_str().unwrap();
    assert!(
        message.contains(&a.addr.to_string()) && message.contains(&b.addr.to_string()),
        "{message}"
    );

    // One 404, one timing out: the outage, not the 404, is what the client hears.
    b.fault("/v2/t/z/", Fault::HangBeforeHeaders);
    let response = get("/v2/t/z/manifests/v1").await.unwrap();
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);

    // 500 and a timeout: 502.
    a.fault("/v2/t/w/", Fault::Status(500));
    b.fault("/v2/t/w/", Fault::HangBeforeHeaders);
    let response = get("/v2/t/w/manifests/v1").await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn an_upstream_failure_does_not_poison_later_requests() {
    let upstream = FakeRegistry::start().await;
    let (manifest, layer_digest, layer) = put_image(&[&upstream], "a/b", "c", 12);
    upstream.fault("/v2/", Fault::Status(500));
    let proxy = TestProxy::start(&[&upstream]).await;
    let response = get_url(proxy.url("/v2/a/b/manifests/c")).await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let response = get_url(proxy.url(&format!("/v2/a/b/blobs/{layer_digest}"))).await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    upstream.clear_faults();
    pull_ok(&proxy, "a/b:c", &manifest, &layer_digest, &layer).await;
}

#[tokio::test]
async fn large_blob_corrupt_after_streaming_is_cut_and_the_retry_uses_the_next_upstream() {
    let primary = FakeRegistry::start().await;
    let secondary = FakeRegistry::start().await;
    let big = pseudo_random_bytes(3 * 1024 * 1024, 99);
    let digest = primary.put_blob(big.clone());
    secondary.put_blob(big.clone());
    primary.fault("/blobs/", Fault::Corrupt);
    let proxy = TestProxy::start(&[&primary, &secondary]).await;
    let url = proxy.url(&format!("/v2/big/blob/blobs/{digest}"));

    // Bytes already flowed when the digest turned out wrong: the connection is cut,
    // the body never completes with the wrong bytes.
    let response = get_url(&url).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.bytes().await;
    assert!(
        body.is_err(),
        "a corrupt body must not complete; got {} bytes",
        body.map(|b| b.len()).unwrap_or(0)
    );
    assert!(proxy.rehash_cache().is_empty(), "nothing may be committed");

    // The retry skips the bad primary for this digest and succeeds from the secondary.
    let response = get_url(&url).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.bytes().await.unwrap(), big);
    assert_eq!(
        primary.hits("/blobs/"),
        1,
        "the bad source was skipped on retry"
    );
    assert_eq!(secondary.hits("/blobs/"), 1);
    let cached = proxy.rehash_cache();
    assert_eq!(cached.len(), 1);
    assert!(cached[0].1);
}

#[tokio::test]
async fn manifest_by_digest_with_wrong_bytes_is_never_served() {
    let primary = FakeRegistry::start().await;
    let secondary = FakeRegistry::start().await;
    let body = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {}, "layers": []}).to_string();
    let digest = primary.put_manifest("m/x", None, OCI_MANIFEST, body.clone());
    secondary.put_manifest("m/x", None, OCI_MANIFEST, body.clone());
    primary.fault("/manifests/", Fault::Corrupt);
    let proxy = TestProxy::start(&[&primary, &secondary]).await;
    let response = get_url(proxy.url(&format!("/v2/m/x/manifests/{digest}"))).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.unwrap(), body);
    // Only the secondary's (good) copy is cached.
    secondary.stop();
    primary.stop();
    let response = get_url(proxy.url(&format!("/v2/m/x/manifests/{digest}"))).await;
    assert_eq!(response.text().await.unwrap(), body);
}

#[tokio::test]
async fn the_fault_proxy_works_in_front_of_a_registry() {
    let registry = FakeRegistry::start().await;
    let (manifest, layer_digest, layer) = put_image(&[&registry], "proxied/app", "v1", 14);
    let faulty = FakeRegistry::start_proxy("127.0.0.1:0", &registry.url()).await;
    faulty.fault("/blobs/", Fault::Corrupt);
    // Directly: the proxy serves the registry's manifest and corrupts its blobs.
    let direct = get_url(format!("{}/v2/proxied/app/manifests/v1", faulty.url())).await;
    assert!(manifest.matches(&direct.bytes().await.unwrap()));
    let blob = get_url(format!(
        "{}/v2/proxied/app/blobs/{layer_digest}",
        faulty.url()
    ))
    .await;
    assert_ne!(blob.bytes().await.unwrap(), layer);
    // Through ferry with the faulty proxy as primary: verified bytes from the registry.
    let urls = vec![faulty.url(), registry.url()];
    let proxy = TestProxy::start_urls(&urls, tempfile::tempdir().unwrap(), |_| {}).await;
    pull_ok(&proxy, "proxied/app:v1", &manifest, &layer_digest, &layer).await;
}
