//! Crash safety: ferry is killed with SIGKILL at random moments while concurrent fills
//! are running, 20 times, restarted on the same cache each time; afterwards every cached
//! file matches its digest, no temporary file survives a restart, and every image pulls.

use crate::support::{
    FakeRegistry, Fault, client, image_manifest, pseudo_random_bytes, rehash_cache_dir,
};
use ferry::oci::Digest;
use ferry::oci::media_type::OCI_MANIFEST;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const KILLS: usize = 20;
const IMAGES: usize = 4;

/// A ferry process on port 0; returns it with the address it reported.
fn spawn_ferry(cache: &std::path::Path, upstream: &str) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "off",
            "--tag-ttl",
            "0s",
            "--upstream",
            upstream,
            "--cache-dir",
        ])
        .arg(cache)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let deadline = Instant::now() + Duration::from_secs(20);
    let addr = loop {
        assert!(Instant::now() < deadline, "ferry did not start");
        let line = lines.next().expect("ferry exited early").unwrap();
        if let Some(rest) = line.split("addr=").nth(1) {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    // Keep draining stderr so ferry never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, addr)
}

struct Xorshift(u64);
impl Xorshift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

async fn pull_image(addr: &str, repo: &str, layers: &[(Digest, Vec<u8>)]) -> Result<(), String> {
    let http = client();
    let manifest = http
        .get(format!("http://{addr}/v2/{repo}/manifests/latest"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !manifest.status().is_success() {
        return Err(format!("manifest: {}", manifest.status()));
    }
    for (digest, bytes) in layers {
        let body = http
            .get(format!("http://{addr}/v2/{repo}/blobs/{digest}"))
            .send()
            .await
            .map_err(|e| e.to_string())?
            .bytes()
            .await
            .map_err(|e| e.to_string())?;
        if body != bytes[..] {
            return Err(format!("blob {digest}: wrong bytes"));
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_kill_9_during_concurrent_fills_leave_a_consistent_cache() {
    let upstream = FakeRegistry::start().await;
    let mut images = Vec::new();
    for i in 0..IMAGES {
        let repo = format!("crash/image{i}");
        let layer = pseudo_random_bytes(6 * 1024 * 1024 + i * 1000, 500 + i as u64);
        let layer_digest = upstream.put_blob(layer.clone());
        let config = format!(r#"{{"image":{i}}}"#).into_bytes();
        let config_digest = upstream.put_blob(config.clone());
        let manifest = image_manifest(
            &(config_digest.clone(), config.len()),
            &[(layer_digest.clone(), layer.len())],
        );
        upstream.put_manifest(&repo, Some("latest"), OCI_MANIFEST, manifest);
        images.push((repo, vec![(config_digest, config), (layer_digest, layer)]));
    }
    // ~6 MiB at 256 KiB per 25 ms takes ~0.6 s: kills land before, during and after fills.
    upstream.fault(
        "/blobs/",
        Fault::Drip {
            chunk: 256 * 1024,
            delay: Duration::from_millis(25),
        },
    );

    let cache = tempfile::tempdir().unwrap();
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    println!("crash test seed {seed}");
    let mut rng = Xorshift(seed);
    for round in 0..KILLS {
        let (mut child, addr) = spawn_ferry(cache.path(), &upstream.url());
        // After a restart no temporary file from the previous life remains.
        assert_eq!(
            std::fs::read_dir(cache.path().join("tmp")).unwrap().count(),
            0,
            "round {round}: tmp not swept"
        );
        let mut pulls = Vec::new();
        for (repo, layers) in images.clone() {
            let addr = addr.clone();
            pulls.push(tokio::spawn(async move {
                pull_image(&addr, &repo, &layers).await
            }));
        }
        let delay = Duration::from_millis(rng.next() % 900);
        tokio::time::sleep(delay).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        for pull in pulls {
            let _ = pull.await; // cut by the kill, or finished before it
        }
        let bad: Vec<_> = rehash_cache_dir(cache.path())
            .into_iter()
            .filter(|(_, ok)| !ok)
            .collect();
        assert!(
            bad.is_empty(),
            "round {round} (killed after {delay:?}): corrupt files {bad:?}"
        );
    }

    // Finally: a clean start pulls everything correctly, and it all stays pullable offline.
    upstream.clear_faults();
    let (mut child, addr) = spawn_ferry(cache.path(), &upstream.url());
    for (repo, layers) in &images {
        pull_image(&addr, repo, layers).await.unwrap();
    }
    child.kill().unwrap();
    child.wait().unwrap();
    upstream.stop();
    let (mut child, addr) = spawn_ferry(cache.path(), &upstream.url());
    for (repo, layers) in &images {
        pull_image(&addr, repo, layers)
            .await
            .unwrap_or_else(|e| panic!("{repo} after the upstream went away: {e}"));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let files = rehash_cache_dir(cache.path());
    assert_eq!(
        files.len(),
        IMAGES * 3,
        "every manifest, config and layer is cached"
    );
    assert!(files.iter().all(|(_, ok)| *ok));
}
