//! `ferry pin add|ls|rm`: a client of a running ferry's admin API (`/admin/pins`), with the
//! admin token when one is given, and `--wait` polling until the pin is cached.

use std::time::{Duration, Instant};

/// Longest one admin request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How often `--wait` asks for the pin's state.
const WAIT_POLL: Duration = Duration::from_millis(500);

/// Why a pin command failed: the request, the server's refusal, or the pin itself.
#[derive(Debug, thiserror::Error)]
pub enum PinClientError {
    #[error("cannot reach the admin API at {url}: {cause}")]
    Request {
        url: String,
        #[source]
        cause: reqwest::Error,
    },
    /// The server refused the request (the client's mistake when `status` is 4xx).
    #[error("{status}: {message}")]
    Refused {
        status: reqwest::StatusCode,
        message: String,
    },
    #[error("{image} failed on the server (it stays pinned and is retried): {reason}")]
    PinFailed { image: String, reason: String },
    #[error("{image} is not cached after {waited:?} (state {state})")]
    Timeout {
        image: String,
        waited: Duration,
        state: String,
    },
}

impl PinClientError {
    /// Whether the request itself was wrong (a bad image, an unknown pin, a missing token).
    pub fn is_client_mistake(&self) -> bool {
        matches!(self, PinClientError::Refused { status, .. } if status.is_client_error())
    }
}

/// A running ferry's admin API.
pub struct PinClient {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl PinClient {
    /// `server` is the admin listener's URL, e.g. `http://127.0.0.1:5005`.
    pub fn new(server: &str, token: Option<String>) -> Result<PinClient, PinClientError> {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .no_proxy()
            .build()
            .map_err(|cause| PinClientError::Request {
                url: server.to_owned(),
                cause,
            })?;
        Ok(PinClient {
            base: server.trim_end_matches('/').to_owned(),
            token,
            http,
        })
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<serde_json::Value, PinClientError> {
        let request = match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        let failed = |cause| PinClientError::Request {
            url: url.to_owned(),
            cause,
        };
        let response = request.send().await.map_err(failed)?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(failed)?;
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_else(
            |_| serde_json::json!({"errors": [{"message": String::from_utf8_lossy(&bytes)}]}),
        );
        if !status.is_success() {
            let message = body["errors"][0]["message"]
                .as_str()
                .unwrap_or("no message")
                .to_owned();
            return Err(PinClientError::Refused { status, message });
        }
        Ok(body)
    }

    /// Pins `image`; the answer says its canonical name and whether it is new.
    pub async fn add(&self, image: &str) -> Result<serde_json::Value, PinClientError> {
        let url = format!("{}/admin/pins", self.base);
        let request = self
            .http
            .post(&url)
            .header("content-type", "application/json")
            .body(serde_json::json!({ "image": image }).to_string());
        self.send(request, &url).await
    }

    /// Every pin with its state.
    pub async fn list(&self) -> Result<serde_json::Value, PinClientError> {
        let url = format!("{}/admin/pins", self.base);
        self.send(self.http.get(&url), &url).await
    }

    /// Unpins `image`.
    pub async fn remove(&self, image: &str) -> Result<serde_json::Value, PinClientError> {
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("image", image)
            .finish();
        let url = format!("{}/admin/pins?{query}", self.base);
        let request = self.http.delete(&url);
        self.send(request, &url).await
    }

    /// Waits until the pin named `image` (canonical) is cached on the server, failing when
    /// it fails there or `limit` passes.
    pub async fn wait_cached(
        &self,
        image: &str,
        limit: Duration,
    ) -> Result<serde_json::Value, PinClientError> {
        let started = Instant::now();
        loop {
            let list = self.list().await?;
            let pin = list["pins"]
                .as_array()
                .and_then(|pins| pins.iter().find(|pin| pin["image"] == image))
                .cloned()
                .unwrap_or_default();
            let state = pin["state"].as_str().unwrap_or("unknown").to_owned();
            match state.as_str() {
                "cached" => return Ok(pin),
                "failed" => {
                    return Err(PinClientError::PinFailed {
                        image: image.to_owned(),
                        reason: pin["reason"].as_str().unwrap_or("").to_owned(),
                    });
                }
                _ if started.elapsed() >= limit => {
                    return Err(PinClientError::Timeout {
                        image: image.to_owned(),
                        waited: limit,
                        state,
                    });
                }
                _ => tokio::time::sleep(WAIT_POLL).await,
            }
        }
    }
}
