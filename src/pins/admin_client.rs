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
    /// The caller's: `--server` is not an http(s) URL.
    #[error(
        "--server {0:?} is not a URL: give the admin API as http://HOST:PORT (its default is http://127.0.0.1:5005)"
    )]
    BadServer(String),
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
    #[error(
        "{image} is not cached after {waited:?} (state {state}{}); it stays pinned and the server keeps retrying",
        .reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default()
    )]
    Timeout {
        image: String,
        waited: Duration,
        state: String,
        reason: Option<String>,
    },
}

impl PinClientError {
    /// Whether the request itself was wrong (a bad image, an unknown pin, a missing token).
    pub fn is_client_mistake(&self) -> bool {
        match self {
            PinClientError::BadServer(_) => true,
            PinClientError::Refused { status, .. } => status.is_client_error(),
            _ => false,
        }
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
        let url = reqwest::Url::parse(server)
            .ok()
            .filter(|url| matches!(url.scheme(), "http" | "https") && url.host().is_some());
        if url.is_none() {
            return Err(PinClientError::BadServer(server.to_owned()));
        }
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

    /// Waits until the pin named `image` (canonical) is cached on the server, or `limit`
    /// passes. A failure on the server is reported once (the server retries it) and waited
    /// through: it may be passing (a registry hiccup).
    pub async fn wait_cached(
        &self,
        image: &str,
        limit: Duration,
    ) -> Result<serde_json::Value, PinClientError> {
        let started = Instant::now();
        let mut reported: Option<String> = None;
        loop {
            let list = self.list().await?;
            let pin = list["pins"]
                .as_array()
                .and_then(|pins| pins.iter().find(|pin| pin["image"] == image))
                .cloned()
                .unwrap_or_default();
            let state = pin["state"].as_str().unwrap_or("unknown").to_owned();
            let reason = pin["reason"].as_str().map(str::to_owned);
            if state == "cached" {
                return Ok(pin);
            }
            if state == "failed" && reason != reported {
                eprintln!(
                    "{image}: failed for now ({}); the server retries, waiting up to {limit:?}",
                    reason.as_deref().unwrap_or("no reason given")
                );
                reported.clone_from(&reason);
            }
            if started.elapsed() >= limit {
                return Err(PinClientError::Timeout {
                    image: image.to_owned(),
                    waited: limit,
                    state,
                    reason,
                });
            }
            tokio::time::sleep(WAIT_POLL).await;
        }
    }
}
