//! `ferry warm` and `ferry cache ...` as users run them (the real binary): warming and
//! pinning an image that then survives size pressure and pulls offline; verify catching a
//! flipped byte and a truncated file; ls, du, gc and rm.

use crate::support::get_body;
use crate::support::get_url;
use crate::support::stdout_of_success;
use crate::support::{FakeRegistry, TestProxy, image_manifest, pseudo_random_bytes};
use ferry::oci::media_type::{OCI_INDEX, OCI_MANIFEST};
use std::process::Command;
use std::time::Duration;

fn ferry(args: &[&str], cache: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(args)
        .arg("--cache-dir")
        .arg(cache)
        .output()
        .unwrap()
}

/// A two-platform image: index -> 2 manifests -> config + layer each.
pub(crate) fn put_multi_arch(
    registry: &FakeRegistry,
    repo: &str,
    seed: u64,
) -> Vec<ferry::oci::Digest> {
    let mut children = Vec::new();
    let mut all = Vec::new();
    for (i, arch) in ["amd64", "arm64"].iter().enumerate() {
        let config = format!(r#"{{"architecture":"{arch}","os":"linux"}}"#).into_bytes();
        let layer = pseudo_random_bytes(400_000, seed + i as u64);
        let config_digest = registry.put_blob(config.clone());
        let layer_digest = registry.put_blob(layer.clone());
        let manifest = image_manifest(
            &(config_digest.clone(), config.len()),
            &[(layer_digest.clone(), layer.len())],
        );
        let digest = registry.put_manifest(repo, None, OCI_MANIFEST, manifest.clone());
        children.push(serde_json::json!({"mediaType": OCI_MANIFEST, "digest": digest.to_string(), "size": manifest.len(), "platform": {"os": "linux", "architecture": arch}}));
        all.extend([digest, config_digest, layer_digest]);
    }
    let index =
        serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children})
            .to_string();
    all.insert(0, registry.put_manifest(repo, Some("v1"), OCI_INDEX, index));
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn warm_pin_survives_pressure_and_pulls_offline() {
    let upstream = FakeRegistry::start().await;
    let agent = put_multi_arch(&upstream, "ci/agent", 1000);
    let mut others = Vec::new();
    for i in 0..6u64 {
        others.push(upstream.put_blob(pseudo_random_bytes(500_000, 1100 + i)));
    }
    let cache = tempfile::tempdir().unwrap();
    // Standalone warm, pinned.
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args([
            "warm",
            "--pin",
            "--admin-listen",
            "off",
            "--upstream",
            &upstream.url(),
            "--cache-dir",
        ])
        .arg(cache.path())
        .args(["ci/agent:v1"])
        .output()
        .unwrap();
    stdout_of_success(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("done") && stderr.contains("MiB/s"),
        "progress lines: {stderr}"
    );
    for digest in &agent {
        let blob = cache
            .path()
            .join("blobs/sha256")
            .join(&digest.hex()[..2])
            .join(digest.hex());
        let manifest = cache
            .path()
            .join("manifests/sha256")
            .join(&digest.hex()[..2])
            .join(digest.hex());
        assert!(blob.exists() || manifest.exists(), "{digest} not warmed");
    }
    let ls = ferry(&["cache", "ls"], cache.path());
    let listing = String::from_utf8_lossy(&ls.stdout);
    assert!(
        listing.contains("ci/agent") && listing.contains("yes"),
        "{listing}"
    );

    // Fill the cache well past its bound with other content: the pinned image stays.
    let proxy =
        TestProxy::start_urls(&[upstream.url()], cache, |c| c.cache_size = Some(1_800_000)).await;
    for digest in &others {
        let body = get_body(proxy.url(&format!("/v2/other/blobs/{digest}"))).await;
        assert!(digest.matches(&body));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let cache = proxy.stop().await;
    for digest in &agent {
        let blob = cache
            .path()
            .join("blobs/sha256")
            .join(&digest.hex()[..2])
            .join(digest.hex());
        let manifest = cache
            .path()
            .join("manifests/sha256")
            .join(&digest.hex()[..2])
            .join(digest.hex());
        assert!(
            blob.exists() || manifest.exists(),
            "pinned {digest} was evicted"
        );
    }
    // Offline, with the upstream gone: the pinned image pulls by tag.
    upstream.stop();
    let offline = TestProxy::start_urls(&[upstream.url()], cache, |c| c.offline = true).await;
    let index = get_url(offline.url("/v2/ci/agent/manifests/v1")).await;
    assert_eq!(index.status(), 200);
    for digest in &agent[1..] {
        let kind = if offline
            .cache_dir
            .path()
            .join("manifests/sha256")
            .join(&digest.hex()[..2])
            .join(digest.hex())
            .exists()
        {
            "manifests"
        } else {
            "blobs"
        };
        let response = get_url(offline.url(&format!("/v2/ci/agent/{kind}/{digest}"))).await;
        assert_eq!(response.status(), 200, "{kind} {digest}");
        assert!(digest.matches(&response.bytes().await.unwrap()));
    }
    // Unpin makes it evictable again.
    let cache = offline.stop().await;
    let out = ferry(&["cache", "unpin", "ci/agent:v1"], cache.path());
    stdout_of_success(&out);
    let out = ferry(&["cache", "gc", "--to", "0"], cache.path());
    assert!(out.status.success());
    let du = ferry(&["cache", "du", "--json"], cache.path());
    let usage: serde_json::Value = serde_json::from_slice(&du.stdout).unwrap();
    assert_eq!(usage["blobs"], 0, "{usage}");
}

#[tokio::test]
async fn verify_finds_a_flipped_byte_and_a_truncated_file() {
    let upstream = FakeRegistry::start().await;
    let (_, layer, _) = crate::support::put_image(&[&upstream], "v/r", "t", 1200);
    let other = upstream.put_blob(pseudo_random_bytes(50_000, 1201));
    let proxy = TestProxy::start(&[&upstream]).await;
    for digest in [&layer, &other] {
        get_body(proxy.url(&format!("/v2/v/r/blobs/{digest}"))).await;
    }
    get_body(proxy.url("/v2/v/r/manifests/t")).await;
    let cache = proxy.stop().await;
    let clean = ferry(&["cache", "verify"], cache.path());
    assert!(
        clean.status.success(),
        "{}",
        String::from_utf8_lossy(&clean.stdout)
    );

    let path_of = |d: &ferry::oci::Digest| {
        cache
            .path()
            .join("blobs/sha256")
            .join(&d.hex()[..2])
            .join(d.hex())
    };
    let mut bytes = std::fs::read(path_of(&layer)).unwrap();
    bytes[1234] ^= 0x01;
    std::fs::write(path_of(&layer), &bytes).unwrap();
    let bytes = std::fs::read(path_of(&other)).unwrap();
    std::fs::write(path_of(&other), &bytes[..bytes.len() - 1]).unwrap();

    let out = ferry(&["cache", "verify"], cache.path());
    assert_eq!(out.status.code(), Some(1));
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(report.matches("QUARANTINED").count(), 2, "{report}");
    assert!(!path_of(&layer).exists() && !path_of(&other).exists());
    assert_eq!(
        std::fs::read_dir(cache.path().join("quarantine"))
            .unwrap()
            .count(),
        2
    );
    // And a server on this cache fetches them again.
    let proxy = TestProxy::start_urls(&[upstream.url()], cache, |_| {}).await;
    let body = get_body(proxy.url(&format!("/v2/v/r/blobs/{layer}"))).await;
    assert!(layer.matches(&body));
}

#[tokio::test]
async fn rm_removes_an_image_but_keeps_shared_blobs() {
    let upstream = FakeRegistry::start().await;
    let shared = pseudo_random_bytes(30_000, 1300);
    let shared_digest = upstream.put_blob(shared.clone());
    let mut own = Vec::new();
    for (repo, seed) in [("a/one", 1301u64), ("a/two", 1302)] {
        let config = format!(r#"{{"seed":{seed}}}"#).into_bytes();
        let config_digest = upstream.put_blob(config.clone());
        let manifest = image_manifest(
            &(config_digest.clone(), config.len()),
            &[(shared_digest.clone(), shared.len())],
        );
        upstream.put_manifest(repo, Some("v1"), OCI_MANIFEST, manifest);
        own.push(config_digest);
    }
    let proxy = TestProxy::start(&[&upstream]).await;
    for repo in ["a/one", "a/two"] {
        let url = proxy.url(&format!("/v2/{repo}/manifests/v1"));
        get_body(url).await;
    }
    for digest in own.iter().chain([&shared_digest]) {
        get_body(proxy.url(&format!("/v2/a/one/blobs/{digest}"))).await;
    }
    let cache = proxy.stop().await;
    let out = ferry(&["cache", "rm", "docker.io/a/one:v1"], cache.path());
    stdout_of_success(&out);
    let exists = |d: &ferry::oci::Digest| {
        cache
            .path()
            .join("blobs/sha256")
            .join(&d.hex()[..2])
            .join(d.hex())
            .exists()
    };
    assert!(!exists(&own[0]), "a/one's own config is removed");
    assert!(exists(&own[1]), "a/two's config stays");
    assert!(
        exists(&shared_digest),
        "the shared layer stays: a/two needs it"
    );
    let listing =
        String::from_utf8_lossy(&ferry(&["cache", "ls"], cache.path()).stdout).to_string();
    assert!(
        !listing.contains("a/one") && listing.contains("a/two"),
        "{listing}"
    );
    let out = ferry(&["cache", "rm", "a/one:v1"], cache.path());
    assert!(!out.status.success(), "removing it twice is an error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn warm_through_a_running_server_pins_for_that_server() {
    let upstream = FakeRegistry::start().await;
    let digests = put_multi_arch(&upstream, "team/app", 1400);
    let proxy = TestProxy::start(&[&upstream]).await;
    let server = format!("http://{}", proxy.server.as_ref().unwrap().addr);
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args([
            "warm",
            "--pin",
            "--platform",
            "linux/arm64",
            "--server",
            &server,
            "--cache-dir",
        ])
        .arg(proxy.cache_dir.path())
        .arg("team/app:v1")
        .output()
        .unwrap();
    stdout_of_success(&out);
    // Only the arm64 half was fetched (index + arm64 manifest, config, layer).
    assert_eq!(
        upstream.hits(&format!("/manifests/{}", digests[1])),
        0,
        "amd64 manifest skipped"
    );
    assert_eq!(
        upstream.hits(&format!("/manifests/{}", digests[4])),
        1,
        "arm64 manifest fetched"
    );
    let mut pinned = 0;
    for _ in 0..80 {
        let status = proxy.admin_status().await;
        pinned = status["cache"]["usage"]["pinned"].as_u64().unwrap_or(0);
        if pinned > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        pinned >= 400_000,
        "the running server picked up the pins ({pinned} bytes)"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["warm", "--server", &server, "--cache-dir"])
        .arg(proxy.cache_dir.path())
        .arg("team/missing:v1")
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "an image that cannot be cached fails the command"
    );
}
