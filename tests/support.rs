//! Test support: a ferry server on port 0 with a temporary cache (`TestProxy`), the fake
//! registry (`fake_registry`), and small HTTP helpers.

pub mod fake_registry;
pub mod garage;

use ferry::app::RunningServer;
use ferry::config::{Config, Overrides};
use std::time::Duration;

pub use fake_registry::{FakeRegistry, Fault, basic};

/// A ferry server for one test: port 0, its own temporary cache, short timeouts.
pub struct TestProxy {
    pub server: Option<RunningServer>,
    pub cache_dir: tempfile::TempDir,
    pub config: Config,
}

impl TestProxy {
    pub async fn start(upstreams: &[&FakeRegistry]) -> TestProxy {
        Self::start_with(upstreams, |_| {}).await
    }

    pub async fn start_with(
        upstreams: &[&FakeRegistry],
        tweak: impl FnOnce(&mut Config),
    ) -> TestProxy {
        let urls: Vec<String> = upstreams.iter().map(|u| u.url()).collect();
        Self::start_urls(&urls, tempfile::tempdir().unwrap(), tweak).await
    }

    /// Starts ferry with the given upstream URLs on an existing cache directory.
    pub async fn start_urls(
        urls: &[String],
        cache_dir: tempfile::TempDir,
        tweak: impl FnOnce(&mut Config),
    ) -> TestProxy {
        let overrides = Overrides {
            listen: Some("127.0.0.1:0".into()),
            cache_dir: Some(cache_dir.path().to_path_buf()),
            upstreams: urls.to_vec(),
            admin_listen: Some("127.0.0.1:0".into()),
            ..Default::default()
        };
        let mut config = Config::parse(&Default::default(), &overrides)
            .without_files()
            .unwrap();
        for upstream in &mut config.upstreams {
            upstream.connect_timeout = Duration::from_secs(2);
            upstream.header_timeout = Duration::from_secs(2);
            upstream.body_idle_timeout = Duration::from_secs(2);
        }
        tweak(&mut config);
        let server = ferry::app::start(config.clone()).await.unwrap();
        TestProxy {
            server: Some(server),
            cache_dir,
            config,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.server.as_ref().unwrap().addr)
    }

    /// Stops the server (waiting for it) and hands back the cache directory.
    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
        self.cache_dir
    }

    /// The URL of `path` on the admin listener.
    pub fn admin_url(&self, path: &str) -> String {
        format!(
            "http://{}{path}",
            self.server.as_ref().unwrap().admin_addr.unwrap()
        )
    }

    /// The admin API's `/admin/upstreams` JSON (upstream health and cache usage).
    pub async fn admin_status(&self) -> serde_json::Value {
        let admin = self.server.as_ref().unwrap().admin_addr.unwrap();
        client()
            .get(format!("http://{admin}/admin/upstreams"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Every committed blob and manifest file, rehashed: (path, matches its name).
    pub fn rehash_cache(&self) -> Vec<(std::path::PathBuf, bool)> {
        rehash_cache_dir(self.cache_dir.path())
    }
}

pub fn rehash_cache_dir(root: &std::path::Path) -> Vec<(std::path::PathBuf, bool)> {
    let mut results = Vec::new();
    for kind in ["blobs", "manifests"] {
        let dir = root.join(kind).join("sha256");
        let Ok(prefixes) = std::fs::read_dir(&dir) else {
            continue;
        };
        for prefix in prefixes.flatten() {
            for file in std::fs::read_dir(prefix.path()).unwrap().flatten() {
                let path = file.path();
                let name = path.file_name().unwrap().to_string_lossy().to_string();
                if name.ends_with(".type") {
                    continue;
                }
                let bytes = std::fs::read(&path).unwrap();
                let ok = ferry::oci::Digest::sha256_of(&bytes).hex() == name;
                results.push((path, ok));
            }
        }
    }
    results
}

/// `GET /v2/<repo>/blobs/<digest>` through `proxy`, with a `Range` header if given.
pub async fn get_blob(
    proxy: &TestProxy,
    repo: &str,
    digest: &ferry::oci::Digest,
    range: Option<&str>,
) -> reqwest::Response {
    let mut request = client().get(proxy.url(&format!("/v2/{repo}/blobs/{digest}")));
    if let Some(range) = range {
        request = request.header("range", range);
    }
    request.send().await.unwrap()
}

/// `GET <path>` through `proxy` accepting an OCI manifest (any status is returned).
pub async fn get_manifest(proxy: &TestProxy, path: &str) -> reqwest::Response {
    client()
        .get(proxy.url(path))
        .header("accept", ferry::oci::media_type::OCI_MANIFEST)
        .send()
        .await
        .unwrap()
}

/// GETs `url` (the test fails on a transport error; any status is returned).
pub async fn get_url(url: impl reqwest::IntoUrl) -> reqwest::Response {
    client().get(url).send().await.unwrap()
}

/// GETs `url` and returns the whole body (the test fails on any transport error).
pub async fn get_body(url: impl reqwest::IntoUrl) -> bytes::Bytes {
    client()
        .get(url)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// The standard output of a finished ferry command, failing the test (with its standard
/// error) unless the command succeeded.
pub fn stdout_of_success(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Deterministic pseudo-random bytes (xorshift), so tests need no RNG crate.
pub fn pseudo_random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// An OCI image manifest JSON referencing the given config and layer blobs.
pub fn image_manifest(
    config: &(ferry::oci::Digest, usize),
    layers: &[(ferry::oci::Digest, usize)],
) -> String {
    let layers: Vec<_> = layers
        .iter()
        .map(|(d, size)| serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d.to_string(), "size": size}))
        .collect();
    serde_json::json!({
        "schemaVersion": 2,
        "mediaType": ferry::oci::media_type::OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.0.to_string(), "size": config.1},
        "layers": layers,
    })
    .to_string()
}

/// Puts a small image (config + one layer + manifest tagged `tag`) on each registry,
/// returning the manifest digest and the layer's digest and bytes.
pub fn put_image(
    registries: &[&FakeRegistry],
    repo: &str,
    tag: &str,
    seed: u64,
) -> (ferry::oci::Digest, ferry::oci::Digest, Vec<u8>) {
    let config = format!(r#"{{"architecture":"amd64","os":"linux","seed":{seed}}}"#).into_bytes();
    let layer = pseudo_random_bytes(100_000 + seed as usize, seed);
    let mut manifest_digest = None;
    let mut layer_digest = None;
    for registry in registries {
        let config_digest = registry.put_blob(config.clone());
        let layer_d = registry.put_blob(layer.clone());
        let manifest = image_manifest(
            &(config_digest, config.len()),
            &[(layer_d.clone(), layer.len())],
        );
        manifest_digest = Some(registry.put_manifest(
            repo,
            Some(tag),
            ferry::oci::media_type::OCI_MANIFEST,
            manifest,
        ));
        layer_digest = Some(layer_d);
    }
    (manifest_digest.unwrap(), layer_digest.unwrap(), layer)
}

/// What `direct_registries` gives a registry without configured upstreams: the same
/// timeouts as any upstream, and `ca` as the extra trusted roots. `private_addresses`
/// lets them reach loopback, where the tests' registries are.
pub fn direct_to(
    patterns: &[&str],
    ca: Option<ferry::config::UpstreamCa>,
    private_addresses: bool,
) -> ferry::config::DirectRegistries {
    let secs = std::time::Duration::from_secs;
    ferry::config::DirectRegistries {
        patterns: patterns
            .iter()
            .map(|p| ferry::upstream::RegistryPattern::parse(p).unwrap())
            .collect(),
        connect_timeout: secs(2),
        header_timeout: secs(5),
        body_idle_timeout: secs(5),
        min_transfer_rate: 0,
        rate_window: secs(10),
        ratelimit_reserve: 0,
        ca,
        private_addresses,
    }
}
