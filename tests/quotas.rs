//! Upstream quotas: the quota an upstream announces shows on `/metrics` and `/admin/upstreams`;
//! after a 429 or 503 with `Retry-After` no request of any kind reaches that upstream until
//! then, except as the last resort, and its breaker does not open for it; within its
//! `ratelimit_reserve` it gets HEADs only while another upstream can serve the pull.

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
    // Spent before ferry ever asked: the first pull meets a 429 with Retry-After 2.
    primary.set_pull_quota(10, 0, 60, 2);
    let proxy = TestProxy::start(&[&primary, &secondary]).await;
    assert_eq!(get_manifest(&proxy, "/v2/team/app/manifests/v1").await, 200);
    assert_eq!(primary.hits_with(reqwest::Method::GET, "/manifests/v1"), 1);
    assert_eq!(secondary.hits("/manifests/v1"), 1);
    let status = proxy.admin_status().await;
    assert_eq!(status["upstreams"][0]["ratelimit_remaining"], 0);
    assert!(status["upstreams"][0]["retry_after_ms"].as_u64().unwrap() > 1000);
    // Held off and within its reserve: pulls and HEADs go to the secondary, none to it.
    let primary_hits = primary.requests().len();
    assert_eq!(get_manifest(&proxy, "/v2/team/app/manifests/v2").await, 200);
    assert_eq!(get_manifest(&proxy, "/v2/team/app/manifests/v3").await, 200);
    assert_eq!(
        secondary.hits_with(reqwest::Method::GET, "/manifests/v2"),
        1
    );
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

fn metric_line(metrics: &str, name: &str, upstream: &str) -> Option<String> {
    metrics
        .lines()
        .find(|line| {
            line.starts_with(&format!("{name}{{"))
                && line.contains(&format!("upstream=\"{upstream}\""))
        })
        .map(str::to_owned)
}

async fn digest_of(proxy: &TestProxy, path: &str) -> String {
    let response = crate::support::get_manifest(proxy, path).await;
    assert_eq!(response.status(), 200, "{path}");
    response.headers()["docker-content-digest"]
        .to_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn within_its_reserve_an_upstream_gets_heads_only_and_is_first_again_after_the_reset() {
    let primary = FakeRegistry::start().await;
    let secondary = FakeRegistry::start().await;
    let mut digests = Vec::new();
    for (tag, seed) in [("v1", 840), ("v2", 841), ("v3", 842)] {
        digests.push(put_image(&[&primary, &secondary], "team/app", tag, seed).0);
    }
    primary.set_pull_quota(100, 6, 3600, 30);
    let proxy = TestProxy::start_with(&[&primary, &secondary], |c| {
        c.upstreams[0].ratelimit_reserve = 5;
        c.tag_ttl = Duration::ZERO;
    })
    .await;
    let name = primary.addr.to_string();
    // The first pull spends one: 5 left, at the reserve.
    assert_eq!(
        digest_of(&proxy, "/v2/team/app/manifests/v1").await,
        digests[0].to_string()
    );
    assert_eq!(primary.pulls_remaining(), Some(5));
    let status = proxy.admin_status().await;
    assert_eq!(status["upstreams"][0]["in_reserve"], true, "{status}");
    assert_eq!(status["upstreams"][0]["ratelimit_reserve"], 5);
    assert_eq!(status["upstreams"][1]["in_reserve"], false);
    let metrics = crate::support::get_body(proxy.admin_url("/metrics")).await;
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metric_line(&metrics, "ferry_upstream_ratelimit_reserve", &name)
            .is_some_and(|l| l.ends_with(" 1")),
        "{metrics}"
    );
    assert!(
        metric_line(
            &metrics,
            "ferry_upstream_ratelimit_reserve_entries_total",
            &name
        )
        .is_some_and(|l| l.ends_with(" 1")),
        "{metrics}"
    );

    // An uncached tag: the primary is asked with a HEAD, the manifest comes from the
    // secondary by digest.
    assert_eq!(
        digest_of(&proxy, "/v2/team/app/manifests/v2").await,
        digests[1].to_string()
    );
    assert_eq!(primary.hits_with(reqwest::Method::HEAD, "/manifests/v2"), 1);
    assert_eq!(
        primary.hits_with(reqwest::Method::GET, "/manifests/"),
        1,
        "only the first pull"
    );
    assert_eq!(
        secondary.hits_with(reqwest::Method::GET, &format!("/manifests/{}", digests[1])),
        1
    );
    // A kept tag is revalidated there in priority order, with a HEAD.
    assert_eq!(
        digest_of(&proxy, "/v2/team/app/manifests/v1").await,
        digests[0].to_string()
    );
    assert_eq!(primary.hits_with(reqwest::Method::HEAD, "/manifests/v1"), 1);
    assert_eq!(secondary.hits("/manifests/v1"), 0);
    // The tag moves where only the primary has the new manifest: the kept mapping is served
    // (within max_stale) rather than spending the reserve.
    let moved = put_image(&[&primary], "team/app", "v1", 843).0;
    assert_eq!(
        digest_of(&proxy, "/v2/team/app/manifests/v1").await,
        digests[0].to_string()
    );
    assert_eq!(primary.hits_with(reqwest::Method::GET, "/manifests/"), 1);
    assert_eq!(
        primary.pulls_remaining(),
        Some(5),
        "no pull spent in the reserve"
    );

    // A manifest pulled by digest goes to the secondary first.
    let by_digest = put_image(&[&primary, &secondary], "team/app", "v4", 844).0;
    let path = format!("/v2/team/app/manifests/{by_digest}");
    assert_eq!(digest_of(&proxy, &path).await, by_digest.to_string());
    assert_eq!(primary.hits(&by_digest.to_string()), 0);
    assert_eq!(secondary.hits(&by_digest.to_string()), 1);

    // The window resets; the next HEAD shows it, and the primary is first again.
    primary.reset_pull_quota();
    assert_eq!(
        digest_of(&proxy, "/v2/team/app/manifests/v3").await,
        digests[2].to_string()
    );
    assert_eq!(primary.hits_with(reqwest::Method::GET, "/manifests/v3"), 1);
    assert_eq!(secondary.hits("/manifests/v3"), 0);
    assert_eq!(
        proxy.admin_status().await["upstreams"][0]["in_reserve"],
        false
    );
    assert_eq!(
        digest_of(&proxy, "/v2/team/app/manifests/v1").await,
        moved.to_string()
    );
    assert_eq!(primary.pulls_remaining(), Some(98));
}

#[tokio::test]
async fn an_upstream_within_its_reserve_is_still_the_last_resort_for_a_pull() {
    let primary = FakeRegistry::start().await;
    let secondary = FakeRegistry::start().await;
    let (v1, _, _) = put_image(&[&primary, &secondary], "team/app", "v1", 850);
    let (v2, _, _) = put_image(&[&primary], "team/app", "v2", 851);
    primary.set_pull_quota(100, 2, 3600, 30);
    let proxy = TestProxy::start_with(&[&primary, &secondary], |c| {
        c.upstreams[0].ratelimit_reserve = 1;
    })
    .await;
    assert_eq!(
        digest_of(&proxy, "/v2/team/app/manifests/v1").await,
        v1.to_string()
    );
    assert_eq!(
        proxy.admin_status().await["upstreams"][0]["in_reserve"],
        true
    );
    // Nothing else has v2 and nothing is kept for it: the reserve is spent.
    secondary.fault("/manifests/", Fault::Status(503));
    assert_eq!(
        digest_of(&proxy, "/v2/team/app/manifests/v2").await,
        v2.to_string()
    );
    assert!(secondary.hits("/manifests/") >= 1, "the secondary first");
    assert_eq!(
        primary.hits_with(reqwest::Method::GET, &format!("/manifests/{v2}")),
        1,
        "then the primary, by the digest its HEAD named"
    );
}

#[tokio::test]
async fn a_tag_means_what_the_upstream_within_its_reserve_said_even_when_the_pull_is_spent_there() {
    let primary = FakeRegistry::start().await;
    let secondary = FakeRegistry::start().await;
    put_image(&[&primary, &secondary], "team/app", "v1", 860);
    // The secondary, a lagging mirror, still maps v2 to an older image.
    let newer = put_image(&[&primary], "team/app", "v2", 861).0;
    let older = put_image(&[&secondary], "team/app", "v2", 862).0;
    assert_ne!(newer, older);
    primary.set_pull_quota(100, 2, 3600, 30);
    let proxy = TestProxy::start_with(&[&primary, &secondary], |c| {
        c.upstreams[0].ratelimit_reserve = 1;
    })
    .await;
    digest_of(&proxy, "/v2/team/app/manifests/v1").await;
    assert_eq!(
        proxy.admin_status().await["upstreams"][0]["in_reserve"],
        true
    );
    // Nothing kept for v2 and only the primary has what its HEAD names: the pull is spent
    // there, by digest, rather than taking the mirror's older mapping.
    assert_eq!(
        digest_of(&proxy, "/v2/team/app/manifests/v2").await,
        newer.to_string()
    );
    assert_eq!(
        primary.hits_with(reqwest::Method::GET, &format!("/manifests/{newer}")),
        1
    );
    assert_eq!(
        secondary.hits_with(reqwest::Method::GET, "/manifests/v2"),
        0
    );
    assert_eq!(primary.pulls_remaining(), Some(0));
}
