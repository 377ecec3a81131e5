//! Disk full: with the cache on a small tmpfs without room for a blob, the client's pull
//! still succeeds straight from upstream, nothing half-written stays, the failure is
//! counted, and caching resumes by itself once space returns. With a known length the
//! space is claimed up front; a chunked body fills the disk mid-fill. Needs root (mount);
//! without it the test says so and does nothing.

use crate::support::fake_registry::Fault;
use crate::support::get_body;
use crate::support::get_url;
use crate::support::{FakeRegistry, TestProxy, pseudo_random_bytes, rehash_cache_dir};
use std::process::Command;

/// A tmpfs mounted for one test, unmounted (then its directory removed) on drop.
struct Mount {
    path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Mounts a tmpfs of `size` (e.g. "24m"), or says why not and gives `None` (needs root).
fn tmpfs(size: &str) -> Option<Mount> {
    if !is_root() {
        eprintln!("disk_full: skipped, mounting a tmpfs needs root (CI runs as root)");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cache");
    std::fs::create_dir(&path).unwrap();
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(&path)
        .status()
        .unwrap();
    assert!(status.success(), "mount tmpfs failed");
    Some(Mount { path, _dir: dir })
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_never_fails_a_pull() {
    full_disk_case(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_disk_that_fills_mid_fill_never_fails_a_pull() {
    full_disk_case(true).await;
}

async fn full_disk_case(chunked: bool) {
    let Some(mount) = tmpfs("24m") else {
        return;
    };
    let mount_point = mount.path.clone();

    let upstream = FakeRegistry::start().await;
    let big = pseudo_random_bytes(20 * 1024 * 1024, 77);
    let big_digest = upstream.put_blob(big.clone());
    let small = pseudo_random_bytes(2 * 1024 * 1024, 78);
    let small_digest = upstream.put_blob(small.clone());
    if chunked {
        upstream.fault("/blobs/", Fault::NoContentLength);
    }

    // Leave ~8 MiB free: the 20 MiB blob cannot fit.
    let filler = mount_point.join("filler");
    std::fs::write(&filler, vec![0u8; 16 * 1024 * 1024]).unwrap();

    let cache = tempfile::TempDir::new_in(&mount_point).unwrap();
    let cache_path = cache.path().to_path_buf();
    let proxy = TestProxy::start_urls(&[upstream.url()], cache, |_| {}).await;
    let url = proxy.url(&format!("/v2/full/disk/blobs/{big_digest}"));
    for attempt in 0..2 {
        let response = get_url(&url).await;
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.bytes().await.unwrap(),
            big,
            "attempt {attempt}: the pull must succeed with a full disk"
        );
    }
    assert_eq!(
        std::fs::read_dir(cache_path.join("tmp")).unwrap().count(),
        0,
        "half-written files stayed"
    );
    assert!(
        rehash_cache_dir(&cache_path).is_empty(),
        "nothing can have been committed"
    );
    let status = proxy.admin_status().await;
    assert!(
        status["cache"]["write_failures"].as_u64().unwrap() >= 1,
        "{status}"
    );

    // Space returns: caching resumes without a restart.
    std::fs::remove_file(&filler).unwrap();
    let response = get_url(&url).await;
    assert_eq!(response.bytes().await.unwrap(), big);
    let response = get_url(proxy.url(&format!("/v2/full/disk/blobs/{small_digest}"))).await;
    assert_eq!(response.bytes().await.unwrap(), small);
    let cached = rehash_cache_dir(&cache_path);
    assert_eq!(cached.len(), 2, "{cached:?}");
    assert!(cached.iter().all(|(_, ok)| *ok));
    let before = upstream.hits(&format!("/blobs/{big_digest}"));
    get_body(&url).await;
    assert_eq!(
        upstream.hits(&format!("/blobs/{big_digest}")),
        before,
        "now served from the cache"
    );
    drop(proxy);
}

/// `/readyz` on a full disk says the cache is not writable and leaves no empty probe file
/// behind (the write creates the file before it fails).
#[tokio::test]
async fn readyz_on_a_full_disk_leaves_no_probe_file() {
    let Some(mount) = tmpfs("2m") else {
        return;
    };
    let mount_point = mount.path.clone();
    let upstream = FakeRegistry::start().await;
    let cache = tempfile::TempDir::new_in(&mount_point).unwrap();
    let cache_path = cache.path().to_path_buf();
    let proxy = TestProxy::start_urls(&[upstream.url()], cache, |_| {}).await;
    // Fill every byte left.
    {
        use std::io::Write;
        let mut filler = std::fs::File::create(mount_point.join("filler")).unwrap();
        let block = vec![0u8; 64 * 1024];
        while filler.write_all(&block).is_ok() {}
        let _ = filler.write_all(&[0u8; 1]);
    }
    let admin = proxy.server.as_ref().unwrap().admin_addr.unwrap();
    let response = get_url(format!("http://{admin}/readyz")).await;
    assert_eq!(response.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.text().await.unwrap().contains("not writable"));
    let leftovers: Vec<_> = std::fs::read_dir(cache_path.join("tmp"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("readyz-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    drop(proxy);
}
