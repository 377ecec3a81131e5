//! Cache lifecycle: a size bound that holds while fills and readers run concurrently,
//! eviction that never breaks an image (evicted blobs are fetched again), and recency and
//! content that survive a restart.

use crate::support::get_body;
use crate::support::get_url;
use crate::support::{FakeRegistry, Fault, TestProxy, pseudo_random_bytes};
use ferry::oci::Digest;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

fn bytes_on_disk(root: &std::path::Path) -> u64 {
    fn walk(dir: &std::path::Path) -> u64 {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return 0;
        };
        entries
            .flatten()
            .map(|e| {
                // Fills rename and eviction removes files while this walks: a file gone
                // since `read_dir` holds no bytes.
                let Ok(meta) = e.metadata() else { return 0 };
                if meta.is_dir() {
                    walk(&e.path())
                } else {
                    meta.len()
                }
            })
            .sum()
    }
    walk(&root.join("blobs")) + walk(&root.join("tmp"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_size_bound_holds_during_concurrent_fills_and_reads() {
    const LIMIT: u64 = 24 * 1024 * 1024;
    let upstream = FakeRegistry::start().await;
    let mut blobs: Vec<(Digest, Vec<u8>)> = Vec::new();
    for i in 0..12u64 {
        let bytes = pseudo_random_bytes(4 * 1024 * 1024, 900 + i);
        blobs.push((upstream.put_blob(bytes.clone()), bytes));
    }
    upstream.fault(
        "/blobs/",
        Fault::Drip {
            chunk: 512 * 1024,
            delay: Duration::from_millis(10),
        },
    );
    let proxy = Arc::new(TestProxy::start_with(&[&upstream], |c| c.cache_size = Some(LIMIT)).await);
    let root = proxy.cache_dir.path().to_path_buf();
    let running = Arc::new(AtomicBool::new(true));
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (running, peak, root) = (running.clone(), peak.clone(), root.clone());
        tokio::spawn(async move {
            let mut samples = 0;
            while running.load(Ordering::Relaxed) {
                peak.fetch_max(bytes_on_disk(&root), Ordering::Relaxed);
                samples += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            samples
        })
    };
    let mut tasks = Vec::new();
    for round in 0..3 {
        for (i, (digest, bytes)) in blobs.iter().enumerate() {
            let url = proxy.url(&format!("/v2/size/bound/blobs/{digest}"));
            let bytes = bytes.clone();
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis((i as u64 * 7 + round * 40) % 120)).await;
                let body = get_body(url).await;
                assert!(body == bytes, "wrong bytes under eviction");
            }));
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    running.store(false, Ordering::Relaxed);
    let samples = sampler.await.unwrap();
    let peak = peak.load(Ordering::Relaxed);
    println!("size bound: peak {peak} bytes of {LIMIT} over {samples} samples");
    assert!(samples > 20);
    assert!(
        peak <= LIMIT + LIMIT / 20,
        "peak {peak} exceeds the bound {LIMIT} by more than 5%"
    );
    let status = proxy.admin_status().await;
    assert!(
        status["cache"]["usage"]["evictions"].as_u64().unwrap() > 0,
        "{status}"
    );
}

#[tokio::test]
async fn evicting_a_blob_does_not_break_its_image() {
    let upstream = FakeRegistry::start().await;
    let (manifest, layer, layer_bytes) =
        crate::support::put_image(&[&upstream], "ev/img", "v1", 950);
    let other = pseudo_random_bytes(300_000, 951);
    let other_digest = upstream.put_blob(other.clone());
    let proxy = TestProxy::start_with(&[&upstream], |c| c.cache_size = Some(350_000)).await;
    let get = |path: String| async move { get_body(path).await };
    assert_eq!(
        get(proxy.url(&format!("/v2/ev/img/blobs/{layer}"))).await,
        layer_bytes
    );
    assert_eq!(
        get(proxy.url(&format!("/v2/ev/img/blobs/{other_digest}"))).await,
        other
    );
    // The layer was evicted to make room; the manifest and tag still work, and the next pull
    // fetches the layer again.
    assert!(
        !proxy
            .cache_dir
            .path()
            .join("blobs/sha256")
            .join(&layer.hex()[..2])
            .join(layer.hex())
            .exists()
    );
    let response = get_url(proxy.url("/v2/ev/img/manifests/v1")).await;
    assert_eq!(
        response.headers()["docker-content-digest"],
        manifest.to_string().as_str()
    );
    assert_eq!(
        get(proxy.url(&format!("/v2/ev/img/blobs/{layer}"))).await,
        layer_bytes
    );
    assert_eq!(upstream.hits(&format!("/blobs/{layer}")), 2);
}

#[tokio::test]
async fn the_index_is_rebuilt_after_a_restart_and_keeps_the_bound() {
    let upstream = FakeRegistry::start().await;
    let mut digests = Vec::new();
    for i in 0..4u64 {
        digests.push(upstream.put_blob(pseudo_random_bytes(100_000, 960 + i)));
    }
    let proxy = TestProxy::start(&[&upstream]).await;
    for digest in &digests {
        get_body(proxy.url(&format!("/v2/r/i/blobs/{digest}"))).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cache = proxy.stop().await;
    // Restart with a bound that fits two blobs: the two least recently used go.
    let proxy =
        TestProxy::start_urls(&[upstream.url()], cache, |c| c.cache_size = Some(250_000)).await;
    let mut usage = serde_json::Value::Null;
    for _ in 0..100 {
        let status = proxy.admin_status().await;
        usage = status["cache"]["usage"].clone();
        if usage["blobs"] == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(usage["blobs"], 2, "{usage}");
    let present = || -> Vec<bool> {
        digests
            .iter()
            .map(|d| {
                proxy
                    .cache_dir
                    .path()
                    .join("blobs/sha256")
                    .join(&d.hex()[..2])
                    .join(d.hex())
                    .exists()
            })
            .collect()
    };
    // Files are deleted just after the index lets go of them.
    for _ in 0..50 {
        if present() == [false, false, true, true] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        present(),
        [false, false, true, true],
        "recency survived the restart"
    );
}
