//! `ferry warm`: pulls images into the cache ahead of need, through a ferry endpoint (a
//! running server's registry listener, or one started in-process on the cache directory),
//! so warming uses the same failover path as any pull. Walks an index into every platform
//! (or the chosen ones), fetches every blob, reports progress, and optionally pins.

use crate::cache::pins::Pins;
use crate::oci::Digest;
use crate::oci::ImageRef;
use crate::oci::media_type::ALL_MANIFEST_TYPES;
use crate::pins::contents::{Platform, platform_wanted};
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::{Duration, Instant};

/// Longest a single warm request may take (a large layer on a slow link).
const WARM_REQUEST_TIMEOUT: Duration = Duration::from_secs(3600);

pub struct WarmOptions {
    /// `os/arch[/variant]` platforms to keep from an index; empty = all.
    pub platforms: Vec<String>,
}

/// What one image needed, once warmed.
pub struct Warmed {
    pub(crate) image: ImageRef,
    pub(crate) digests: Vec<Digest>,
    pub bytes: u64,
}

struct Progress {
    terminal: bool,
    started: Instant,
    bytes: u64,
    layers: usize,
}

impl Progress {
    fn report(&mut self, image: &ImageRef, what: &str, expected_total: Option<u64>) {
        let elapsed = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = self.bytes as f64 / elapsed;
        let eta = expected_total
            .filter(|total| *total > self.bytes && rate > 0.0)
            .map(|total| format!(", ETA {:.0}s", (total - self.bytes) as f64 / rate))
            .unwrap_or_default();
        let line = format!(
            "{image}: {what}; {} layers, {:.1} MiB, {:.1} MiB/s{eta}",
            self.layers,
            self.bytes as f64 / 1048576.0,
            rate / 1048576.0
        );
        if self.terminal {
            let mut err = std::io::stderr();
            let _ = write!(err, "\r\x1b[2K{line}");
            let _ = err.flush();
        } else {
            eprintln!("{line}");
        }
    }
}

/// Why warming an image through a ferry failed (the ferry's answer or the transfer).
#[derive(Debug, thiserror::Error)]
pub enum WarmError {
    #[error("{url}: {cause}")]
    Request {
        url: String,
        #[source]
        cause: reqwest::Error,
    },
    #[error("{url}: {status}")]
    Status {
        url: String,
        status: reqwest::StatusCode,
    },
    #[error("{0}: no Docker-Content-Digest")]
    NoDigest(String),
    #[error("manifest is not JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    #[error("{image}: no manifest matches the platforms {platforms:?}")]
    NoPlatform {
        image: String,
        platforms: Vec<String>,
    },
    #[error("{0}: wrong bytes")]
    WrongBytes(String),
}

impl WarmError {
    fn request(url: &str, cause: reqwest::Error) -> Self {
        WarmError::Request {
            url: url.to_owned(),
            cause,
        }
    }
}

/// Pulls `image` through the ferry at `endpoint` (e.g. `http://127.0.0.1:5000`).
pub async fn warm_image(
    endpoint: &str,
    image: &ImageRef,
    options: &WarmOptions,
) -> Result<Warmed, WarmError> {
    let http = reqwest::Client::builder()
        .timeout(WARM_REQUEST_TIMEOUT)
        .build()
        .map_err(|e| WarmError::request("building the HTTP client", e))?;
    let mut progress = Progress {
        terminal: std::io::stderr().is_terminal(),
        started: Instant::now(),
        bytes: 0,
        layers: 0,
    };
    let base = format!("{}/v2/{}", endpoint.trim_end_matches('/'), image.repository);
    let ns = format!("ns={}", image.registry);
    let get_manifest = |reference: String| {
        let http = http.clone();
        let url = format!("{base}/manifests/{reference}?{ns}");
        async move {
            let response = http
                .get(&url)
                .header("accept", ALL_MANIFEST_TYPES.join(", "))
                .send()
                .await
                .map_err(|e| WarmError::request(&url, e))?;
            if !response.status().is_success() {
                return Err(WarmError::Status {
                    url,
                    status: response.status(),
                });
            }
            let digest: Digest = response
                .headers()
                .get("docker-content-digest")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| WarmError::NoDigest(url.clone()))?;
            let body = response
                .bytes()
                .await
                .map_err(|e| WarmError::request(&url, e))?;
            Ok::<_, WarmError>((digest, body))
        }
    };
    let (top, body) = get_manifest(image.tag.clone()).await?;
    let mut digests = vec![top];
    let mut manifests = Vec::new();
    let value: serde_json::Value = serde_json::from_slice(&body).map_err(WarmError::NotJson)?;
    if let Some(children) = value.get("manifests").and_then(|m| m.as_array()) {
        for child in children {
            let platform = child
                .get("platform")
                .and_then(|p| serde_json::from_value::<Platform>(p.clone()).ok());
            if !platform_wanted(platform.as_ref(), &options.platforms) {
                continue;
            }
            let Some(reference) = child.get("digest").and_then(|d| d.as_str()) else {
                continue;
            };
            let (digest, child_body) = get_manifest(reference.to_owned()).await?;
            digests.push(digest);
            manifests.push(child_body);
        }
        if manifests.is_empty() {
            return Err(WarmError::NoPlatform {
                image: image.to_string(),
                platforms: options.platforms.clone(),
            });
        }
    } else {
        manifests.push(body);
    }
    let mut blobs: Vec<(Digest, u64)> = Vec::new();
    for manifest in &manifests {
        let value: serde_json::Value =
            serde_json::from_slice(manifest).map_err(WarmError::NotJson)?;
        let config = value.get("config").into_iter();
        let layers = value
            .get("layers")
            .and_then(|l| l.as_array())
            .into_iter()
            .flatten();
        for descriptor in config.chain(layers) {
            let Some(digest) = descriptor
                .get("digest")
                .and_then(|d| d.as_str())
                .and_then(|d| d.parse::<Digest>().ok())
            else {
                continue;
            };
            let size = descriptor.get("size").and_then(|s| s.as_u64()).unwrap_or(0);
            if !blobs.iter().any(|(d, _)| *d == digest) {
                blobs.push((digest, size));
            }
        }
    }
    let expected: u64 = blobs.iter().map(|(_, size)| size).sum();
    for (digest, _) in &blobs {
        let url = format!("{base}/blobs/{digest}?{ns}");
        let mut response = http
            .get(&url)
            .send()
            .await
            .map_err(|e| WarmError::request(&url, e))?;
        if !response.status().is_success() {
            return Err(WarmError::Status {
                url,
                status: response.status(),
            });
        }
        let mut verifier = crate::oci::DigestVerifier::new(digest.algorithm());
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| WarmError::request(&url, e))?
        {
            verifier.update(&chunk);
            progress.bytes += chunk.len() as u64;
        }
        if verifier.finish() != *digest {
            return Err(WarmError::WrongBytes(url));
        }
        progress.layers += 1;
        digests.push(digest.clone());
        progress.report(image, &short(digest), Some(expected));
    }
    if progress.terminal {
        eprintln!();
    }
    progress.report(image, "done", None);
    Ok(Warmed {
        image: image.clone(),
        digests,
        bytes: progress.bytes,
    })
}

fn short(digest: &Digest) -> String {
    format!("{}:{}", digest.algorithm().as_str(), &digest.hex()[..12])
}

/// Records the warmed images as pinned in `pins.json` (atomically replaced; a running
/// server picks the change up within seconds).
pub fn pin(root: &Path, warmed: &[Warmed]) -> std::io::Result<()> {
    let mut pins = Pins::load(root)?;
    for image in warmed {
        pins.images.insert(
            image.image.to_string(),
            image.digests.iter().map(|d| d.to_string()).collect(),
        );
    }
    pins.save(root)
}
