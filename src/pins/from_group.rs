//! `pins_from`: a build host takes the pin set of its AZ tier, read from the replicas'
//! read-only `/ferry/v1/pins` on their registry port through the same upstream clients (TLS
//! trust, address guard, credentials), members in configured order, the first answer wins.
//! When none answers, the last known set stays.

use crate::server::route::PIN_SET_PATH;
use crate::upstream::UpstreamClient;
use serde::Deserialize;
use std::sync::Arc;

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
    members: Vec<Arc<UpstreamClient>>,
}

/// Why no member of the group gave its pin set.
#[derive(Debug, thiserror::Error)]
#[error("no member of group {group:?} gave its pin set: {}", .failures.join("; "))]
pub(crate) struct GroupPinsError {
    group: String,
    failures: Vec<String>,
}

impl GroupPins {
    pub(crate) fn new(group: String, members: Vec<Arc<UpstreamClient>>) -> GroupPins {
        GroupPins { group, members }
    }

    /// The images the first answering member pins. A member that has not loaded its own pin
    /// set yet answers 503, which counts as no answer (an empty list would unpin the host).
    pub(crate) async fn fetch(&self) -> Result<Vec<String>, GroupPinsError> {
        let mut failures = Vec::new();
        if self.members.is_empty() {
            failures.push("the group has no members".to_owned());
        }
        for member in &self.members {
            match member
                .get_ferry_endpoint(PIN_SET_PATH, MAX_LIST_BYTES)
                .await
            {
                Ok(body) => match serde_json::from_slice::<FleetPins>(&body) {
                    Ok(list) => return Ok(list.pins.into_iter().map(|pin| pin.image).collect()),
                    Err(e) => failures.push(format!("{}: not a pin list: {e}", member.name())),
                },
                Err(failure) => failures.push(failure.to_string()),
            }
        }
        Err(GroupPinsError {
            group: self.group.clone(),
            failures,
        })
    }
}
