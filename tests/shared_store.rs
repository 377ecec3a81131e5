//! The shared store on a real Garage: a replica with an empty disk serves what another replica
//! fetched without asking the upstream, by tag with every upstream down; a corrupt object is
//! detected and refetched; a dead store never fails a pull; a 3-node cluster loses a node.

use crate::support::garage::{CuttingRelay, Garage};
use crate::support::get_url;
use crate::support::{FakeRegistry, TestProxy, client, pseudo_random_bytes, put_image};
use ferry::oci::Digest;
use ferry::shared::SharedStoreConfig;
use object_store::ObjectStoreExt;
use reqwest::StatusCode;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

async fn replica(registry: &FakeRegistry, garage: &Garage, node: usize) -> TestProxy {
    replica_with(registry, garage.store_config(node, "fleet")).await
}

/// A replica with an empty disk in front of `registry`, using `store`.
async fn replica_with(registry: &FakeRegistry, store: SharedStoreConfig) -> TestProxy {
    TestProxy::start_urls(&[registry.url()], tempfile::tempdir().unwrap(), move |c| {
        c.shared_store = Some(store);
    })
    .await
}

/// Waits until the replica's shared-store counter `field` reaches `at_least`.
async fn wait_for_store_counter(proxy: &TestProxy, field: &str, at_least: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = proxy.admin_status().await;
        let value = status["shared_store"][field].as_u64().unwrap_or(0);
        if value >= at_least {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "shared_store.{field} stayed at {value}: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn get(proxy: &TestProxy, path: &str) -> reqwest::Response {
    crate::support::get_manifest(proxy, path).await
}

/// The whole body of a GET through `proxy` (the test fails on any transport error).
async fn get_bytes(proxy: &TestProxy, path: &str) -> bytes::Bytes {
    get(proxy, path).await.bytes().await.unwrap()
}

#[tokio::test]
async fn a_second_replica_serves_what_the_first_fetched_even_with_every_upstream_down() {
    let garage = Garage::start().await;
    let registry = FakeRegistry::start().await;
    let (manifest, layer_digest, layer) = put_image(&[&registry], "team/app", "v1", 400);
    let big = pseudo_random_bytes(12 * 1024 * 1024, 401);
    let big_digest = registry.put_blob(big.clone());

    let first = replica(&registry, &garage, 0).await;
    assert_eq!(get(&first, "/v2/team/app/manifests/v1").await.status(), 200);
    for (digest, bytes) in [(&layer_digest, &layer), (&big_digest, &big)] {
        let body = get_bytes(&first, &format!("/v2/team/app/blobs/{digest}")).await;
        assert_eq!(&body[..], &bytes[..]);
    }
    // Two blobs, one manifest and one tag record go up in the background.
    wait_for_store_counter(&first, "uploads", 4).await;
    let upstream_hits = registry.requests().len();

    // A new replica, empty disk, same store: no upstream request at all.
    let second = replica(&registry, &garage, 0).await;
    for (digest, bytes) in [(&layer_digest, &layer), (&big_digest, &big)] {
        let body = get_bytes(&second, &format!("/v2/team/app/blobs/{digest}")).await;
        assert!(body[..] == bytes[..], "{digest} from the store");
    }
    let by_digest = get(&second, &format!("/v2/team/app/manifests/{manifest}")).await;
    assert_eq!(by_digest.status(), 200);
    assert!(manifest.matches(&by_digest.bytes().await.unwrap()));
    assert_eq!(
        registry.requests().len(),
        upstream_hits,
        "the second replica asked the upstream"
    );
    let status = second.admin_status().await;
    assert!(
        status["shared_store"]["hits"].as_u64().unwrap() >= 3,
        "{status}"
    );
    assert_eq!(status["shared_store"]["state"], "closed");

    // Every upstream down, a third replica with an empty disk: the tag comes from the store.
    registry.stop();
    let third = replica(&registry, &garage, 0).await;
    let by_tag = get(&third, "/v2/team/app/manifests/v1").await;
    assert_eq!(by_tag.status(), StatusCode::OK);
    assert_eq!(
        by_tag.headers()["docker-content-digest"],
        manifest.to_string().as_str()
    );
    let body = get_bytes(&third, &format!("/v2/team/app/blobs/{layer_digest}")).await;
    assert_eq!(&body[..], &layer[..]);
}

#[tokio::test]
async fn a_corrupt_object_in_the_store_is_detected_and_the_upstream_supplies_the_blob() {
    let garage = Garage::start().await;
    let registry = FakeRegistry::start().await;
    let small = pseudo_random_bytes(200_000, 410);
    let big = pseudo_random_bytes(6 * 1024 * 1024, 411);
    let small_digest = registry.put_blob(small.clone());
    let big_digest = registry.put_blob(big.clone());
    let first = replica(&registry, &garage, 0).await;
    for digest in [&small_digest, &big_digest] {
        get_bytes(&first, &format!("/v2/c/r/blobs/{digest}")).await;
    }
    wait_for_store_counter(&first, "uploads", 2).await;

    // Damage both objects in the store (same length, one byte flipped).
    let store = garage.client(0);
    for (digest, bytes) in [(&small_digest, &small), (&big_digest, &big)] {
        let mut damaged = bytes.clone();
        damaged[bytes.len() / 2] ^= 0xff;
        let path = object_store::path::Path::from(format!("fleet/blobs/sha256/{}", digest.hex()));
        store.put(&path, damaged.into()).await.unwrap();
    }

    let second = replica(&registry, &garage, 0).await;
    // Small: verified before any byte goes out, so the client gets the right blob at once.
    let body = get_bytes(&second, &format!("/v2/c/r/blobs/{small_digest}")).await;
    assert_eq!(&body[..], &small[..]);
    assert_eq!(registry.hits(&format!("/blobs/{small_digest}")), 2);
    // Large: bytes flowed before the check, so that body is cut, never completed wrong;
    // the retry comes from the upstream.
    let first_try = get(&second, &format!("/v2/c/r/blobs/{big_digest}"))
        .await
        .bytes()
        .await;
    assert!(
        first_try.as_ref().map(|b| b[..] != big[..]).unwrap_or(true),
        "a corrupt body must not complete as the blob"
    );
    assert!(first_try.is_err(), "the corrupt large body must be cut");
    let body = get_bytes(&second, &format!("/v2/c/r/blobs/{big_digest}")).await;
    assert!(body[..] == big[..], "{} bytes", body.len());
    let status = second.admin_status().await;
    assert_eq!(status["shared_store"]["corrupt_objects"], 2, "{status}");
    let admin = second.server.as_ref().unwrap().admin_addr.unwrap();
    let metrics = get_url(format!("http://{admin}/metrics"))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("ferry_shared_store_corrupt_objects_total 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ferry_shared_store_reads_total{event=\"hit\"} 2"),
        "{metrics}"
    );
    assert!(second.rehash_cache().iter().all(|(_, ok)| *ok));
}

#[tokio::test]
async fn a_dead_store_never_fails_a_pull() {
    let mut garage = Garage::start().await;
    let registry = FakeRegistry::start().await;
    let (_, layer_digest, layer) = put_image(&[&registry], "d/s", "v1", 420);
    let proxy = replica(&registry, &garage, 0).await;
    garage.nodes[0].kill();
    for _ in 0..4 {
        let response = get(&proxy, "/v2/d/s/manifests/v1").await;
        assert_eq!(response.status(), StatusCode::OK);
        let body = get_bytes(&proxy, &format!("/v2/d/s/blobs/{layer_digest}")).await;
        assert_eq!(&body[..], &layer[..]);
    }
    // A second replica, store still down: straight to the upstream.
    let second = replica(&registry, &garage, 0).await;
    let body = get_bytes(&second, &format!("/v2/d/s/blobs/{layer_digest}")).await;
    assert_eq!(&body[..], &layer[..]);
    let status = proxy.admin_status().await;
    assert!(
        status["shared_store"]["errors"].as_u64().unwrap() >= 1,
        "{status}"
    );
    let ready = get_url(format!(
        "http://{}/readyz",
        proxy.server.as_ref().unwrap().admin_addr.unwrap()
    ))
    .await;
    assert_eq!(
        ready.status(),
        200,
        "a dead store does not make ferry unready"
    );

    // The store comes back: uploads resume after the breaker's cooldown at most.
    garage.nodes[0].restart();
    let fresh = pseudo_random_bytes(50_000, 421);
    let fresh_digest: Digest = registry.put_blob(fresh.clone());
    let third = replica(&registry, &garage, 0).await;
    get_bytes(&third, &format!("/v2/d/s/blobs/{fresh_digest}")).await;
    wait_for_store_counter(&third, "uploads", 1).await;
}

/// A store that takes connections and never answers (overloaded, not down) costs each miss
/// `shared_store_answer_timeout`, not the minute-long request timeout, and once its breaker
/// opens, nothing. (Waiting for the request timeout would outlast the test client's 20 s.)
#[tokio::test]
async fn a_store_that_never_answers_costs_a_miss_only_the_answer_timeout() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((connection, _)) = silent.accept().await {
            held.push(connection);
        }
    });
    let registry = FakeRegistry::start().await;
    let mut store =
        SharedStoreConfig::from_env("s3://fleet/silent", Duration::from_secs(60)).unwrap();
    store.endpoint = Some(format!("http://{silent_addr}"));
    store.region = Some("garage".into());
    store.access_key_id = Some("GK0000".into());
    store.secret_access_key = Some("secret".into());
    store.answer_timeout = Duration::from_millis(300);
    let proxy = replica_with(&registry, store).await;
    for seed in 0..4 {
        let blob = pseudo_random_bytes(64 * 1024, 900 + seed);
        let digest = registry.put_blob(blob.clone());
        let body = get_bytes(&proxy, &format!("/v2/s/l/blobs/{digest}")).await;
        assert!(body[..] == blob[..], "blob {seed}: {} bytes", body.len());
    }
    let status = proxy.admin_status().await;
    assert_eq!(status["shared_store"]["state"], "open", "{status}");
    assert!(
        status["shared_store"]["errors"].as_u64().unwrap() >= 3,
        "{status}"
    );
    holder.abort();
}

/// A store whose blob bodies stall mid-way: after `shared_store_answer_timeout` without data
/// the upstream continues from the bytes already received (a Range request) and the client
/// gets every byte; each stall is a store failure and no hit (an answer with headers is not a
/// success until the body is whole).
#[tokio::test]
async fn a_store_body_that_stalls_is_continued_from_the_upstream() {
    let garage = Garage::start().await;
    let registry = FakeRegistry::start().await;
    let first = replica(&registry, &garage, 0).await;
    let mut blobs = Vec::new();
    for seed in 0..3 {
        let blob = pseudo_random_bytes(4 * 1024 * 1024, 910 + seed);
        let digest = registry.put_blob(blob.clone());
        get_bytes(&first, &format!("/v2/t/u/blobs/{digest}")).await;
        blobs.push((digest, blob));
    }
    wait_for_store_counter(&first, "uploads", 3).await;

    let relay = CuttingRelay::start(garage.nodes[0].s3_port).await;
    relay
        .cut_downstream_after
        .store(1024 * 1024, Ordering::SeqCst);
    relay.stall_instead_of_cut.store(true, Ordering::SeqCst);
    let mut store = garage.store_config(0, "fleet");
    store.endpoint = Some(relay.endpoint());
    store.request_timeout = Duration::from_secs(60);
    store.answer_timeout = Duration::from_millis(500);
    let second = replica_with(&registry, store).await;
    for (stalls, (digest, blob)) in blobs.iter().enumerate() {
        let hits_before = registry.hits(&format!("/blobs/{digest}"));
        let body = get_bytes(&second, &format!("/v2/t/u/blobs/{digest}")).await;
        assert!(body[..] == blob[..], "{} bytes", body.len());
        assert_eq!(
            relay.cuts.load(Ordering::SeqCst),
            stalls as u64 + 1,
            "the body stalled"
        );
        assert_eq!(
            registry.hits(&format!("/blobs/{digest}")),
            hits_before + 1,
            "the upstream finished the body"
        );
        let ranged = registry
            .requests()
            .into_iter()
            .filter(|r| r.path.ends_with(&format!("/blobs/{digest}")))
            .any(|r| r.headers.contains_key("range"));
        assert!(
            ranged,
            "the upstream continued from where the store stalled"
        );
    }
    // (The replica's own uploads through the relay succeed, and a success resets the breaker's
    // count, so whether it opens here depends on their timing; the reads are what is checked.)
    let status = second.admin_status().await;
    assert_eq!(status["shared_store"]["hits"], 0, "{status}");
    assert!(
        status["shared_store"]["errors"].as_u64().unwrap() >= 3,
        "{status}"
    );
}

#[tokio::test]
async fn a_three_node_cluster_with_one_node_killed_keeps_serving() {
    let mut garage = Garage::start_cluster(3).await;
    let registry = FakeRegistry::start().await;
    let blob = pseudo_random_bytes(3 * 1024 * 1024, 430);
    let digest = registry.put_blob(blob.clone());
    let first = replica(&registry, &garage, 0).await;
    get_bytes(&first, &format!("/v2/k/n/blobs/{digest}")).await;
    wait_for_store_counter(&first, "uploads", 1).await;
    let hits = registry.hits(&format!("/blobs/{digest}"));

    garage.nodes[2].kill();
    // Replication 3 with one node gone: reads still meet quorum, through a surviving node.
    // Garage may first wait on the dead node; under a loaded CI machine that can pass the
    // usual 5 s, and this test is about where the bytes come from, not how fast.
    let mut store = garage.store_config(1, "fleet");
    store.request_timeout = Duration::from_secs(30);
    store.answer_timeout = Duration::from_secs(30);
    let second = replica_with(&registry, store).await;
    let body = get_bytes(&second, &format!("/v2/k/n/blobs/{digest}")).await;
    assert!(body[..] == blob[..], "{} bytes", body.len());
    assert_eq!(
        registry.hits(&format!("/blobs/{digest}")),
        hits,
        "served by the store's surviving nodes"
    );
}

#[tokio::test]
async fn the_store_dying_mid_read_or_mid_upload_never_fails_a_pull() {
    let garage = Garage::start().await;
    let registry = FakeRegistry::start().await;
    let blob = pseudo_random_bytes(20 * 1024 * 1024, 440);
    let digest = registry.put_blob(blob.clone());
    let first = replica(&registry, &garage, 0).await;
    get_bytes(&first, &format!("/v2/m/r/blobs/{digest}")).await;
    wait_for_store_counter(&first, "uploads", 1).await;

    // Mid-read: the second replica reaches the store through a relay that cuts every
    // connection after 5 MiB; the fill goes on from the upstream where the store stopped.
    let relay = CuttingRelay::start(garage.nodes[0].s3_port).await;
    relay
        .cut_downstream_after
        .store(5 * 1024 * 1024, Ordering::SeqCst);
    let through_relay = |garage: &Garage| {
        let mut store = garage.store_config(0, "fleet");
        store.endpoint = Some(relay.endpoint());
        store
    };
    let store = through_relay(&garage);
    let second = replica_with(&registry, store).await;
    let body = get_bytes(&second, &format!("/v2/m/r/blobs/{digest}")).await;
    assert!(body[..] == blob[..], "{} bytes", body.len());
    assert!(
        relay.cuts.load(Ordering::SeqCst) >= 1,
        "the relay cut the read"
    );
    let resumes = registry
        .requests()
        .into_iter()
        .filter(|r| {
            r.path.contains(&format!("/blobs/{digest}")) && r.headers.get("range").is_some()
        })
        .count();
    assert_eq!(
        resumes, 1,
        "the upstream supplied the rest with one Range GET"
    );
    assert!(second.rehash_cache().iter().all(|(_, ok)| *ok));

    // Mid-upload: a third replica fetches a new blob from the upstream; its upload is cut.
    relay.cut_downstream_after.store(u64::MAX, Ordering::SeqCst);
    relay
        .cut_upstream_after
        .store(3 * 1024 * 1024, Ordering::SeqCst);
    let fresh = pseudo_random_bytes(20 * 1024 * 1024, 441);
    let fresh_digest = registry.put_blob(fresh.clone());
    let store = through_relay(&garage);
    let third = replica_with(&registry, store).await;
    let body = get_bytes(&third, &format!("/v2/m/r/blobs/{fresh_digest}")).await;
    assert!(body[..] == fresh[..], "{} bytes", body.len());
    wait_for_store_counter(&third, "upload_failures", 1).await;
    let path = object_store::path::Path::from(format!("fleet/blobs/sha256/{}", fresh_digest.hex()));
    assert!(
        matches!(
            garage.client(0).head(&path).await,
            Err(object_store::Error::NotFound { .. })
        ),
        "a cut upload leaves no object behind"
    );
}

#[tokio::test]
async fn blob_redirect_sends_clients_and_host_ferries_to_the_store() {
    let garage = Garage::start().await;
    let registry = FakeRegistry::start().await;
    let blob = pseudo_random_bytes(4 * 1024 * 1024, 450);
    let digest = registry.put_blob(blob.clone());
    let first = replica(&registry, &garage, 0).await;
    get_bytes(&first, &format!("/v2/x/y/blobs/{digest}")).await;
    wait_for_store_counter(&first, "uploads", 1).await;

    let mut store = garage.store_config(0, "fleet");
    store.blob_redirect = true;
    let redirecting = replica_with(&registry, store).await;
    let url = redirecting.url(&format!("/v2/x/y/blobs/{digest}"));
    let no_follow = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let response = no_follow.get(&url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::TEMPORARY_REDIRECT);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    assert!(
        location.starts_with(&garage.endpoint(0)) && location.contains("X-Amz-Signature="),
        "{location}"
    );
    // A client that follows gets the bytes from the store.
    let following = reqwest::Client::new();
    let body = following
        .get(&url)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(body[..] == blob[..], "{} bytes", body.len());

    // A host-tier ferry whose upstream is the redirecting replica follows it too.
    let host =
        TestProxy::start_urls(&[redirecting.url("")], tempfile::tempdir().unwrap(), |_| {}).await;
    let body = get_bytes(&host, &format!("/v2/x/y/blobs/{digest}")).await;
    assert!(body[..] == blob[..], "{} bytes", body.len());
    assert_eq!(
        host.rehash_cache().len(),
        1,
        "the host cached the verified blob"
    );
    assert!(
        redirecting.rehash_cache().is_empty(),
        "no byte went through the redirecting replica"
    );
    assert_eq!(registry.hits(&format!("/blobs/{digest}")), 1);

    // A blob the store lacks is served the usual way.
    let other = pseudo_random_bytes(10_000, 451);
    let other_digest = registry.put_blob(other.clone());
    let response = no_follow
        .get(redirecting.url(&format!("/v2/x/y/blobs/{other_digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(&response.bytes().await.unwrap()[..], &other[..]);
}

#[tokio::test]
async fn cache_du_ls_and_verify_see_the_stores_side() {
    let garage = Garage::start().await;
    let registry = FakeRegistry::start().await;
    let (_, layer_digest, layer) = put_image(&[&registry], "inv/app", "v7", 460);
    let first = replica(&registry, &garage, 0).await;
    assert_eq!(get(&first, "/v2/inv/app/manifests/v7").await.status(), 200);
    get_bytes(&first, &format!("/v2/inv/app/blobs/{layer_digest}")).await;
    wait_for_store_counter(&first, "uploads", 3).await;

    let cache = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
            .arg("cache")
            .args(args)
            .args(["--shared-store", "s3://ferry-test/fleet"])
            .env("AWS_ENDPOINT_URL", garage.endpoint(0))
            .env("AWS_REGION", "garage")
            .env("AWS_ACCESS_KEY_ID", &garage.key_id)
            .env("AWS_SECRET_ACCESS_KEY", &garage.secret)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, du) = cache(&["du", "--json"]);
    assert_eq!(code, Some(0), "{du}");
    let du: serde_json::Value = serde_json::from_str(&du).unwrap();
    assert_eq!(du["by_kind"]["blobs"][0], 1, "{du}");
    assert_eq!(du["by_kind"]["blobs"][1], layer.len(), "{du}");
    assert_eq!(du["by_kind"]["manifests"][0], 1, "{du}");
    let (code, ls) = cache(&["ls"]);
    assert_eq!(code, Some(0));
    assert!(ls.contains("inv/app") && ls.contains("v7"), "{ls}");

    let (code, verified) = cache(&["verify"]);
    assert_eq!(code, Some(0), "{verified}");
    assert!(verified.contains("checked 2 objects"), "{verified}");
    let path = object_store::path::Path::from(format!("fleet/blobs/sha256/{}", layer_digest.hex()));
    garage
        .client(0)
        .put(&path, bytes::Bytes::from_static(b"rot").into())
        .await
        .unwrap();
    let (code, verified) = cache(&["verify"]);
    assert_eq!(code, Some(1), "{verified}");
    assert!(verified.contains("REMOVED"), "{verified}");
    assert!(matches!(
        garage.client(0).head(&path).await,
        Err(object_store::Error::NotFound { .. })
    ));
}

/// Provenance travels through the store: a replica with an empty disk lets a user limited to
/// G have what another replica fetched from G (with G down), and asks E, not the store's
/// copy, for a user limited to E.
#[tokio::test]
async fn which_registry_served_a_digest_is_shared_through_the_store() {
    let garage = Garage::start().await;
    let e = FakeRegistry::start().await;
    let g = FakeRegistry::start().await;
    let (_, layer_digest, layer) = put_image(&[&g], "priv/app", "v1", 420);
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    std::fs::write(&users, "alice:pw\nbob:pw\n").unwrap();
    let auth = || {
        let mut auth = ferry::server::client_auth::ClientAuth::load(None, Some(&users)).unwrap();
        auth.restrict("alice", vec!["e.example".into()]).unwrap();
        auth.restrict("bob", vec!["g.example".into()]).unwrap();
        std::sync::Arc::new(auth)
    };
    let urls = vec![
        format!("e.example={}", e.url()),
        format!("g.example={}", g.url()),
    ];
    let start = |auth: std::sync::Arc<ferry::server::client_auth::ClientAuth>| {
        let store = garage.store_config(0, "fleet");
        TestProxy::start_urls(&urls, tempfile::tempdir().unwrap(), move |c| {
            c.shared_store = Some(store);
            c.client_auth = Some(auth);
        })
    };
    let blob = |proxy: &TestProxy, user: &'static str, path: String| {
        client()
            .get(proxy.url(&path))
            .basic_auth(user, Some("pw"))
            .send()
    };
    let first = start(auth()).await;
    let path_g = format!("/v2/g.example/priv/app/blobs/{layer_digest}");
    let body = blob(&first, "bob", path_g.clone()).await.unwrap();
    assert_eq!(body.bytes().await.unwrap(), layer);
    // The blob and the marker that G served it.
    wait_for_store_counter(&first, "uploads", 2).await;

    g.stop();
    let second = start(auth()).await;
    let from_store = blob(&second, "bob", path_g).await.unwrap();
    assert_eq!(from_store.status(), StatusCode::OK);
    assert_eq!(from_store.bytes().await.unwrap(), layer);
    let refused = blob(
        &second,
        "alice",
        format!("/v2/e.example/priv/app/blobs/{layer_digest}"),
    )
    .await
    .unwrap();
    assert_eq!(refused.status(), StatusCode::NOT_FOUND);
    assert!(
        e.requests()
            .iter()
            .any(|r| r.method == reqwest::Method::HEAD && r.path.ends_with(layer_digest.hex())),
        "E was asked"
    );
}

/// Store blame (issue 19, item 10): the store's copy is corrupt, its read breaks after
/// 1 MiB and an upstream finishes the blob, which then fails its digest. Before, only the
/// upstream was blamed and the bad copy stayed; now the store's copy is re-read, found bad
/// and removed, and the next pull is whole.
#[tokio::test]
async fn a_store_copy_behind_a_failed_digest_is_checked_and_removed() {
    let garage = Garage::start().await;
    let registry = FakeRegistry::start().await;
    let blob = pseudo_random_bytes(4 * 1024 * 1024, 450);
    let digest = registry.put_blob(blob.clone());
    let first = replica(&registry, &garage, 0).await;
    get_bytes(&first, &format!("/v2/s/b/blobs/{digest}")).await;
    wait_for_store_counter(&first, "uploads", 1).await;

    // A byte flipped in the part the second replica will read from the store.
    let store = garage.client(0);
    let path = object_store::path::Path::from(format!("fleet/blobs/sha256/{}", digest.hex()));
    let mut damaged = blob.clone();
    damaged[1000] ^= 0xff;
    store.put(&path, damaged.into()).await.unwrap();

    let relay = CuttingRelay::start(garage.nodes[0].s3_port).await;
    relay
        .cut_downstream_after
        .store(1024 * 1024, Ordering::SeqCst);
    relay.cuts_left.store(1, Ordering::SeqCst);
    let mut config = garage.store_config(0, "fleet");
    config.endpoint = Some(relay.endpoint());
    let second = replica_with(&registry, config).await;
    let first_try = get(&second, &format!("/v2/s/b/blobs/{digest}"))
        .await
        .bytes()
        .await;
    assert!(
        first_try
            .as_ref()
            .map(|b| b[..] != blob[..])
            .unwrap_or(true),
        "a corrupt body must not complete as the blob"
    );
    assert!(
        relay.cuts.load(Ordering::SeqCst) >= 1,
        "the store read broke"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while store.head(&path).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "the corrupt store copy was not removed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = second.admin_status().await;
    assert!(
        status["shared_store"]["corrupt_objects"].as_u64().unwrap() >= 1,
        "{status}"
    );
    let body = get_bytes(&second, &format!("/v2/s/b/blobs/{digest}")).await;
    assert!(body[..] == blob[..], "{} bytes", body.len());
}
