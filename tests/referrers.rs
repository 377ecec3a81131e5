//! The referrers API through ferry (OCI distribution 1.1, `GET /v2/<name>/referrers/<digest>`):
//! failover past an upstream without the API, the `artifactType` filter, a short-lived cache
//! that is served when every upstream is down, offline, and two tiers.

use crate::support::get_url;
use crate::support::{FakeRegistry, Fault, TestProxy};
use std::time::Duration;

const SUBJECT: &str = "sha256:5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e";
const SIGNATURE: &str = "sha256:0000000000000000000000000000000000000000000000000000000000005191";
const SBOM: &str = "sha256:0000000000000000000000000000000000000000000000000000000000005b0b";
const SIG_TYPE: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";
const SBOM_TYPE: &str = "application/spdx+json";

fn with_referrers(registry: &FakeRegistry) {
    registry.put_referrer("app/web", SUBJECT, SIGNATURE, SIG_TYPE);
    registry.put_referrer("app/web", SUBJECT, SBOM, SBOM_TYPE);
}

async fn referrers(proxy: &TestProxy, query: &str) -> (u16, Option<String>, serde_json::Value) {
    let response = get_url(proxy.url(&format!("/v2/app/web/referrers/{SUBJECT}{query}"))).await;
    let status = response.status().as_u16();
    if status == 200 {
        assert_eq!(
            response.headers()["content-type"],
            "application/vnd.oci.image.index.v1+json"
        );
    }
    let filters = response
        .headers()
        .get("oci-filters-applied")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, filters, response.json().await.unwrap())
}

fn digests(index: &serde_json::Value) -> Vec<String> {
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["digest"].as_str().unwrap().to_owned())
        .collect()
}

/// distribution 2.8 has no referrers API (404): that only moves to the next upstream, which
/// has it, and the primary is not counted as failing.
#[tokio::test]
async fn an_upstream_without_the_api_is_passed_over_not_blamed() {
    let primary = FakeRegistry::start().await;
    let secondary = FakeRegistry::start().await;
    with_referrers(&secondary);
    let proxy = TestProxy::start(&[&primary, &secondary]).await;
    let (status, filters, index) = referrers(&proxy, "").await;
    assert_eq!(status, 200, "{index}");
    assert_eq!(filters, None);
    assert_eq!(digests(&index), [SIGNATURE, SBOM]);
    assert_eq!(primary.hits("/referrers/"), 1);
    let status = proxy.admin_status().await;
    assert_eq!(status["upstreams"][0]["breaker"]["state"], "closed");
    assert_eq!(status["upstreams"][0]["breaker"]["consecutive_failures"], 0);

    // The filter is forwarded and the upstream's OCI-Filters-Applied passed on.
    let (status, filters, index) = referrers(
        &proxy,
        &format!("?artifactType={}", SIG_TYPE.replace('+', "%2B")),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(filters.as_deref(), Some("artifactType"));
    assert_eq!(digests(&index), [SIGNATURE]);
    let forwarded = secondary
        .requests()
        .into_iter()
        .filter(|r| r.path.contains("/referrers/"))
        .filter_map(|r| r.query)
        .any(|q| q.contains("artifactType=application%2Fvnd.dev.cosign.artifact.sig.v1%2Bjson"));
    assert!(
        forwarded,
        "{:?}",
        secondary
            .requests()
            .iter()
            .map(|r| r.query.clone())
            .collect::<Vec<_>>()
    );
}

/// An upstream that pages its list (`Link: <...>; rel="next"`): ferry follows the pages and
/// serves one index with every referrer, filtered or not, and keeps it as one list.
#[tokio::test]
async fn a_paged_list_is_followed_to_the_end_and_served_whole() {
    let upstream = FakeRegistry::start().await;
    let referrers_made: Vec<String> = (1..=5).map(|i| format!("sha256:{i:064x}")).collect();
    for (i, digest) in referrers_made.iter().enumerate() {
        let kind = if i % 2 == 0 { SIG_TYPE } else { SBOM_TYPE };
        upstream.put_referrer("app/web", SUBJECT, digest, kind);
    }
    upstream.paginate_referrers(2);
    let proxy = TestProxy::start(&[&upstream]).await;
    let (status, _, index) = referrers(&proxy, "").await;
    assert_eq!(status, 200, "{index}");
    assert_eq!(digests(&index), referrers_made);
    assert_eq!(upstream.hits("/referrers/"), 3, "three pages of two");

    let (status, filters, index) = referrers(
        &proxy,
        &format!("?artifactType={}", SIG_TYPE.replace('+', "%2B")),
    )
    .await;
    assert_eq!(status, 200, "{index}");
    assert_eq!(filters.as_deref(), Some("artifactType"));
    assert_eq!(
        digests(&index),
        [
            referrers_made[0].clone(),
            referrers_made[2].clone(),
            referrers_made[4].clone()
        ],
        "the filter is kept on every page"
    );

    // Kept as one list: asked again within the TTL, no page is fetched again.
    let before = upstream.hits("/referrers/");
    assert_eq!(digests(&referrers(&proxy, "").await.2).len(), 5);
    assert_eq!(upstream.hits("/referrers/"), before);
}

/// An upstream whose pages link back to a page already read is a bad answer, given up after
/// two requests, and the next upstream's list is served.
#[tokio::test]
async fn a_paginator_that_loops_is_given_up_and_the_next_upstream_serves() {
    let looping = FakeRegistry::start().await;
    let secondary = FakeRegistry::start().await;
    with_referrers(&looping);
    looping.loop_referrer_links();
    with_referrers(&secondary);
    let proxy = TestProxy::start(&[&looping, &secondary]).await;
    let (status, _, index) = referrers(&proxy, "").await;
    assert_eq!(status, 200, "{index}");
    assert_eq!(digests(&index), [SIGNATURE, SBOM]);
    assert_eq!(
        looping.hits("/referrers/"),
        2,
        "the first page, then the repeated one"
    );
    assert_eq!(secondary.hits("/referrers/"), 1);
}

/// An upstream whose later page answers 404 has the API but a broken list: a bad answer, so the
/// next upstream's list is served, and when no other upstream has one the client is not told
/// "no referrers API" (404) but gets an upstream error.
#[tokio::test]
async fn a_missing_later_page_is_a_broken_list_not_a_missing_api() {
    let broken = FakeRegistry::start().await;
    let without_api = FakeRegistry::start().await;
    with_referrers(&broken);
    broken.lose_referrer_pages_from(1);
    let proxy = TestProxy::start(&[&broken, &without_api]).await;
    let (status, _, body) = referrers(&proxy, "").await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(
        broken.hits("/referrers/"),
        2,
        "the first page, then the missing one"
    );

    let complete = FakeRegistry::start().await;
    with_referrers(&complete);
    let proxy = TestProxy::start(&[&broken, &complete]).await;
    let (status, _, index) = referrers(&proxy, "").await;
    assert_eq!(status, 200, "{index}");
    assert_eq!(digests(&index), [SIGNATURE, SBOM]);
}

/// A 404 from an upstream without the API means "not here", not "no referrers": it moves on
/// even with `failover_on_not_found = false` (which makes a manifest's 404 final).
#[tokio::test]
async fn a_missing_api_is_passed_over_even_when_not_found_is_final() {
    let primary = FakeRegistry::start().await;
    let secondary = FakeRegistry::start().await;
    with_referrers(&secondary);
    let proxy = TestProxy::start_with(&[&primary, &secondary], |c| {
        c.pool.failover_on_not_found = false
    })
    .await;
    let (status, _, index) = referrers(&proxy, "").await;
    assert_eq!(status, 200, "{index}");
    assert_eq!(digests(&index), [SIGNATURE, SBOM]);
    assert_eq!(primary.hits("/referrers/"), 1);
}

/// No upstream has the API: a 404 with an OCI error body, so clients fall back to the
/// `sha256-<hex>` tag schema.
#[tokio::test]
async fn without_the_api_anywhere_clients_get_a_404_to_fall_back_on() {
    let primary = FakeRegistry::start().await;
    let secondary = FakeRegistry::start().await;
    let proxy = TestProxy::start(&[&primary, &secondary]).await;
    let (status, _, body) = referrers(&proxy, "").await;
    assert_eq!(status, 404);
    assert_eq!(body["errors"][0]["code"], "MANIFEST_UNKNOWN", "{body}");
    let (status, _, body) = referrers(&proxy, "?artifactType=not-a-media-type").await;
    assert_eq!(status, 400, "{body}");
}

/// The list is kept for `referrers_ttl`, asked for again after it, and the last known list is
/// served when every upstream fails; offline, it is served from the cache.
#[tokio::test]
async fn the_last_list_is_kept_briefly_and_served_through_an_outage() {
    let upstream = FakeRegistry::start().await;
    upstream.put_referrer("app/web", SUBJECT, SIGNATURE, SIG_TYPE);
    let proxy = TestProxy::start_with(&[&upstream], |c| {
        c.referrers_ttl = Duration::from_millis(300)
    })
    .await;
    assert_eq!(digests(&referrers(&proxy, "").await.2), [SIGNATURE]);
    assert_eq!(digests(&referrers(&proxy, "").await.2), [SIGNATURE]);
    assert_eq!(
        upstream.hits("/referrers/"),
        1,
        "served from the cache within the TTL"
    );

    // A new signature is pushed: seen once the TTL has passed.
    upstream.put_referrer("app/web", SUBJECT, SBOM, SBOM_TYPE);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(digests(&referrers(&proxy, "").await.2), [SIGNATURE, SBOM]);
    assert_eq!(upstream.hits("/referrers/"), 2);

    // The upstream fails: the last known list, not an error.
    upstream.fault("/referrers/", Fault::Status(503));
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (status, _, index) = referrers(&proxy, "").await;
    assert_eq!(status, 200);
    assert_eq!(digests(&index), [SIGNATURE, SBOM]);
    assert_eq!(upstream.hits("/referrers/"), 3);

    // Offline, after a restart on the same cache directory: from disk.
    let cache_dir = proxy.stop().await;
    let offline = TestProxy::start_urls(&[upstream.url()], cache_dir, |c| c.offline = true).await;
    assert_eq!(digests(&referrers(&offline, "").await.2), [SIGNATURE, SBOM]);
    assert_eq!(upstream.hits("/referrers/"), 3);
}

/// Host tier -> AZ tier -> registry: the referrers list passes both ferries (with `ns`).
#[tokio::test]
async fn referrers_pass_through_two_tiers() {
    let registry = FakeRegistry::start().await;
    with_referrers(&registry);
    let az = TestProxy::start(&[&registry]).await;
    let host = TestProxy::start_urls(&[az.url("")], tempfile::tempdir().unwrap(), |_| {}).await;
    let (status, _, index) = referrers(&host, "").await;
    assert_eq!(
        status,
        200,
        "{index} {:?}",
        registry
            .requests()
            .iter()
            .map(|r| r.path.clone())
            .collect::<Vec<_>>()
    );
    assert_eq!(digests(&index), [SIGNATURE, SBOM]);
    let (status, filters, index) = referrers(
        &host,
        &format!("?artifactType={}", SBOM_TYPE.replace('+', "%2B")),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(filters.as_deref(), Some("artifactType"));
    assert_eq!(digests(&index), [SBOM]);
    assert_eq!(registry.hits("/referrers/"), 2);
}
