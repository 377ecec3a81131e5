//! Upstream quotas (issue 22, first part): the quota an upstream announces shows on `/metrics`
//! and `/admin/upstreams`; after a 429 or 503 with `Retry-After` no request of any kind reaches
//! that upstream until then, except as the last resort, and its breaker does not open for it.

use crate::support::{FakeRegistry, Fault, TestProxy, pseudo_random_bytes, put_image};
use std::time::{Duration, Instant};

async fn get_manifest(proxy: &TestProxy, path: &str) -> reqwest::StatusCode {
    crate::support::get_manifest(proxy, path).await.status()
}

#[tokio::test]
async fn the_quota_an_upstream_announces_shows_on_metrics_and_the_admin_api() {
    let registry = FakeRegistry::start().await;
    registry.set_pull_quota(100, 77, 21600, 60);
    put_image(&[&registry], "team/app", "v1", 800);
    let proxy = TestProxy::start(&[&registry]).await;
    assert_eq!(get_manifest(&proxy, "/v2/team/app/manifests/v1").await, 200);
    let status = proxy.admin_status().await;
    let upstream = &status["upstreams"][0];
    assert_eq!(upstream["ratelimit_limit"], 100, "{upstream}");
    assert_eq!(
        upstream["ratelimit_remaining"], 76,
        "the GET spent one: {upstream}"
    );
    assert_eq!(upstream["ratelimit_window_seconds"], 21600);
    assert_eq!(upstream["retry_after_ms"], serde_json::Value::Null);
    let metrics = crate::support::get_body(proxy.admin_url("/metrics")).await;
    let metrics = String::from_utf8_lossy(&metrics);
    let name = registry.addr.to_string();
    assert!(
        metrics.contains(&format!(
            "ferry_upstream_ratelimit_remaining{{registry=\"docker.io\",upstream=\"{name}\"}} 76"
        )),
        "{metrics}"
    );
    assert!(metrics.contains(&format!(
        "ferry_upstream_ratelimit_limit{{registry=\"docker.io\",upstream=\"{name}\"}} 100"
    )));
}

#[tokio::test]
async fn after_a_retry_after_no_request_reaches_that_upstream_until_then() {
    let primary = FakeRegistry::start().await;
    let secondary = FakeRegistry::start().await;
    put_image(&[&primary, &secondary], "team/app", "v1", 810);
    let mut blobs = Vec::new();
    for seed in 0..6 {
        let bytes = pseudo_random_bytes(2000, 8100 + seed);
        blobs.push(primary.put_blob(bytes.clone()));
        secondary.put_blob(bytes);
    }
    let proxy = TestProxy::start_with(&[&primary, &secondary], |c| {
        c.pool.breaker.threshold = 1;
    })
    .await;
    primary.fault_times(
        "/manifests/",
        Fault::RetryAfter {
            status: 429,
            seconds: 3,
        },
        1,
    );
    let held_from = Instant::now();
    assert_eq!(get_manifest(&proxy, "/v2/team/app/manifests/v1").await, 200);
    let primary_hits = primary.requests().len();
    let status = proxy.admin_status().await;
    assert!(
        status["upstreams"][0]["retry_after_ms"].as_u64().unwrap() > 1000,
        "{status}"
    );
    assert_eq!(
        status["upstreams"][0]["breaker"]["state"], "closed",
        "a 429 with Retry-After is a quota, not a fault: {status}"
    );
    // Within the Retry-After: every request goes to the secondary, none to the primary.
    for blob in &blobs[..3] {
        let response = crate::support::get_blob(&proxy, "team/app", blob, None).await;
        assert_eq!(response.status(), 200);
    }
    assert!(
        held_from.elapsed() < Duration::from_secs(3),
        "the test ran too slowly to judge"
    );
    assert_eq!(
        primary.requests().len(),
        primary_hits,
        "no request inside the Retry-After"
    );
    assert!(secondary.hits("/blobs/") >= 3);
    // After it: the primary is first again.
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(held_from.elapsed())).await;
    let response = crate::support::get_blob(&proxy, "team/app", &blobs[3], None).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        primary.hits(&blobs[3].to_string()),
        1,
        "the primary serves again"
    );
}

#[tokio::test]
async fn an_upstream_inside_its_retry_after_is_still_the_last_resort() {
    let primary = FakeRegistry::start().await;
    let secondary = FakeRegistry::start().await;
    put_image(&[&primary, &secondary], "team/app", "v1", 820);
    // Only the primary has this blob.
    let only_primary = primary.put_blob(pseudo_random_bytes(3000, 821));
    let proxy = TestProxy::start(&[&primary, &secondary]).await;
    primary.fault_times(
        "/manifests/",
        Fault::RetryAfter {
            status: 503,
            seconds: 30,
        },
        1,
    );
    assert_eq!(get_manifest(&proxy, "/v2/team/app/manifests/v1").await, 200);
    assert!(
        proxy.admin_status().await["upstreams"][0]["retry_after_ms"]
            .as_u64()
            .unwrap()
            > 20_000
    );
    // The secondary lacks it: the held-off primary is asked as the last resort.
    let response = crate::support::get_blob(&proxy, "team/app", &only_primary, None).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        secondary.hits(&only_primary.to_string()),
        1,
        "the secondary first"
    );
    assert_eq!(
        primary.hits(&only_primary.to_string()),
        1,
        "then the primary, as the last resort"
    );
}

#[tokio::test]
async fn a_spent_quota_sends_pulls_elsewhere_until_its_window_resets() {
    let primary = FakeRegistry::start().await;
    let secondary = FakeRegistry::start().await;
    for (tag, seed) in [("v1", 830), ("v2", 831), ("v3", 832)] {
        put_image(&[&primary, &secondary], "team/app", tag, seed);
    }
    primary.set_pull_quota(10, 1, 60, 2);
    let proxy = TestProxy::start(&[&primary, &secondary]).await;
    assert_eq!(get_manifest(&proxy, "/v2/team/app/manifests/v1").await, 200);
    assert_eq!(primary.pulls_remaining(), Some(0));
    assert_eq!(
        proxy.admin_status().await["upstreams"][0]["ratelimit_remaining"],
        0
    );
    // The quota is spent: the primary answers 429 with Retry-After 2, the secondary serves.
    assert_eq!(get_manifest(&proxy, "/v2/team/app/manifests/v2").await, 200);
    assert_eq!(secondary.hits("/manifests/v2"), 1);
    let primary_hits = primary.requests().len();
    assert_eq!(get_manifest(&proxy, "/v2/team/app/manifests/v3").await, 200);
    assert_eq!(
        primary.requests().len(),
        primary_hits,
        "held off: not asked"
    );
    // The window resets and the Retry-After passes: the primary is first again.
    primary.reset_pull_quota();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let blob = primary.put_blob(pseudo_random_bytes(1500, 833));
    secondary.put_blob(pseudo_random_bytes(1500, 833));
    let response = crate::support::get_blob(&proxy, "team/app", &blob, None).await;
    assert_eq!(response.status(), 200);
    assert_eq!(primary.hits(&blob.to_string()), 1);
    assert_eq!(secondary.hits(&blob.to_string()), 0);
}
