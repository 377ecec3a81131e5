//! `pins_from`: a build host takes the pin set of its AZ tier, read from the replicas'
//! read-only `/ferry/v1/pins` on their registry port, members in configured order, the
//! first answer wins. When none answers, the last known set stays.

use crate::server::route::PIN_SET_PATH;
use crate::upstream::settings::Credentials;
use serde::Deserialize;
use std::time::Duration;

/// Longest one member may take to answer.
const MEMBER_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest pin list read from a member.
const MAX_LIST_BYTES: usize = 1024 * 1024;

#[derive(Deserialize)]
struct FleetPins {
    pins: Vec<FleetPin>,
}

#[derive(Deserialize)]
struct FleetPin {
    image: String,
}

/// The members of the group a host takes its pins from.
pub(crate) struct GroupPins {
    pub(crate) group: String,
    members: Vec<(reqwest::Url, Option<Credentials>)>,
    http: reqwest::Client,
}

/// Why no member of the group gave its pin set.
#[derive(Debug, thiserror::Error)]
#[error("no member of group {group:?} gave its pin set: {}", .failures.join("; "))]
pub(crate) struct GroupPinsError {
    group: String,
    failures: Vec<String>,
}

impl GroupPins {
    pub(crate) fn new(
        group: String,
        members: Vec<(reqwest::Url, Option<Credentials>)>,
    ) -> Result<GroupPins, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(MEMBER_TIMEOUT)
            .connect_timeout(MEMBER_TIMEOUT / 2)
            .build()?;
        Ok(GroupPins {
            group,
            members,
            http,
        })
    }

    /// The images the first answering member pins.
    pub(crate) async fn fetch(&self) -> Result<Vec<String>, GroupPinsError> {
        let mut failures = Vec::new();
        for (url, credentials) in &self.members {
            match self.fetch_from(url, credentials.as_ref()).await {
                Ok(images) => return Ok(images),
                Err(reason) => failures.push(format!("{url}: {reason}")),
            }
        }
        Err(GroupPinsError {
            group: self.group.clone(),
            failures,
        })
    }

    async fn fetch_from(
        &self,
        base: &reqwest::Url,
        credentials: Option<&Credentials>,
    ) -> Result<Vec<String>, String> {
        let url = format!("{}{PIN_SET_PATH}", base.as_str().trim_end_matches('/'));
        let mut request = self.http.get(&url);
        if let Some(credentials) = credentials.filter(|c| c.command.is_none()) {
            request = request.basic_auth(&credentials.username, Some(&credentials.password));
        }
        let response = request.send().await.map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("answered {}", response.status()));
        }
        if response
            .content_length()
            .is_some_and(|length| length > MAX_LIST_BYTES as u64)
        {
            return Err("pin list too large".into());
        }
        let body = response.bytes().await.map_err(|e| e.to_string())?;
        if body.len() > MAX_LIST_BYTES {
            return Err("pin list too large".into());
        }
        let list: FleetPins =
            serde_json::from_slice(&body).map_err(|e| format!("not a pin list: {e}"))?;
        Ok(list.pins.into_iter().map(|pin| pin.image).collect())
    }
}
