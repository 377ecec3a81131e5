//! Failover at the link limit: a resume (`Range: bytes=N-`) of a blob being filled streams from
//! the fill, also from another tier; a body that stalls against its own pace is resumed from
//! the next upstream while the quiet one is kept as a hedge; a silent upstream is hedged by
//! default, after a delay derived from its own times to headers.

use crate::support::{
    FakeRegistry, Fault, TestProxy, client, get_url, pseudo_random_bytes, put_image,
};
use reqwest::StatusCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

const MIB: usize = 1024 * 1024;

/// Patient timeouts: only the behaviour under test can make a request finish in time.
fn patient(config: &mut ferry::config::Config) {
    for upstream in &mut config.upstreams {
        upstream.header_timeout = Duration::from_secs(60);
        upstream.body_idle_timeout = Duration::from_secs(60);
    }
}

fn patient_without_pace(config: &mut ferry::config::Config) {
    patient(config);
    config.pool.stall_floor = None;
}

/// A registry with a 6 MiB blob whose body pauses after 4 MiB until `release` is notified.
async fn registry_pausing_at_4_mib(seed: u64) -> (FakeRegistry, Vec<u8>, Arc<Notify>) {
    let registry = FakeRegistry::start().await;
    let blob = pseudo_random_bytes(6 * MIB, seed);
    registry.put_blob(blob.clone());
    let release = Arc::new(Notify::new());
    registry.fault(
        "/blobs/",
        Fault::PauseMidBody {
            after: 4 * MIB,
            release: release.clone(),
        },
    );
    (registry, blob, release)
}

/// A primary and a secondary registry that both hold the same blob of `len` bytes.
async fn two_registries_with_a_blob(
    len: usize,
    seed: u64,
) -> (FakeRegistry, FakeRegistry, Vec<u8>, ferry::oci::Digest) {
    let primary = FakeRegistry::start().await;
    let secondary = FakeRegistry::start().await;
    let blob = pseudo_random_bytes(len, seed);
    let digest = primary.put_blob(blob.clone());
    secondary.put_blob(blob.clone());
    (primary, secondary, blob, digest)
}

/// The cache holds exactly one committed file, and it matches its name.
fn assert_one_verified_file(proxy: &TestProxy) {
    let cached = proxy.rehash_cache();
    assert_eq!(cached.len(), 1);
    assert!(cached[0].1, "only verified bytes are committed");
}

/// Reads from `response` until it has `want` bytes, failing if the body stops giving bytes
/// for `quiet` (so a body held back until some later event fails the test).
async fn read_at_least(response: &mut reqwest::Response, want: usize, quiet: Duration) -> Vec<u8> {
    let mut got = Vec::new();
    while got.len() < want {
        let chunk = tokio::time::timeout(quiet, response.chunk())
            .await
            .unwrap_or_else(|_| panic!("no bytes for {quiet:?} after {} bytes", got.len()))
            .unwrap()
            .expect("the body ended early");
        got.extend_from_slice(&chunk);
    }
    got
}

async fn read_rest(response: reqwest::Response, mut got: Vec<u8>) -> Vec<u8> {
    got.extend_from_slice(&response.bytes().await.unwrap());
    got
}

#[tokio::test]
async fn a_resume_range_streams_from_the_growing_fill() {
    let (registry, blob, release) = registry_pausing_at_4_mib(240).await;
    let digest = ferry::oci::Digest::sha256_of(&blob);
    let proxy = TestProxy::start_with(&[&registry], patient_without_pace).await;
    let url = proxy.url(&format!("/v2/a/b/blobs/{digest}"));

    // A whole-blob reader starts the fill.
    let mut whole = get_url(&url).await;
    assert_eq!(whole.status(), StatusCode::OK);
    let whole_start = read_at_least(&mut whole, MIB, Duration::from_secs(10)).await;

    // A resume from 1 MiB on, while the upstream is paused at 4 MiB: it streams what the fill
    // has (today's code held it until the commit, which never comes while the pause lasts).
    let mut resume = tokio::time::timeout(
        Duration::from_secs(10),
        client()
            .get(&url)
            .header("range", format!("bytes={MIB}-"))
            .send(),
    )
    .await
    .expect("a resume is answered during the fill, not after it")
    .unwrap();
    assert_eq!(resume.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        resume.headers()["content-range"],
        format!("bytes {MIB}-{}/{}", 6 * MIB - 1, 6 * MIB).as_str()
    );
    let early = read_at_least(&mut resume, 2 * MIB, Duration::from_secs(10)).await;
    assert!(early.len() <= 3 * MIB, "only bytes the fill had");
    assert_eq!(early, blob[MIB..MIB + early.len()]);

    release.notify_one();
    let resumed = read_rest(resume, early).await;
    assert!(resumed == blob[MIB..], "the resume's bytes");
    let whole = read_rest(whole, whole_start).await;
    assert!(whole == blob, "the whole body");
    assert_eq!(registry.hits("/blobs/"), 1, "one fill served both");
    assert_one_verified_file(&proxy);
}

/// The fleet case: a host ferry's first source (a replica) breaks mid-body; it resumes from
/// the other replica with `Range: bytes=N-`, and that replica, filling the blob itself,
/// streams the resume from its fill instead of holding it until its own fill commits.
#[tokio::test]
async fn a_resume_from_another_tier_streams_while_that_tier_fills() {
    let (registry, blob, release) = registry_pausing_at_4_mib(241).await;
    let digest = ferry::oci::Digest::sha256_of(&blob);
    let replica = TestProxy::start_with(&[&registry], patient_without_pace).await;
    // The replica that dies: it sends 2 MiB, then its connection breaks.
    let dying = FakeRegistry::start().await;
    dying.put_blob(blob.clone());
    dying.fault("/blobs/", Fault::ResetMidBody { after: 2 * MIB });
    let host = TestProxy::start_urls(
        &[dying.url(), replica.url("")],
        tempfile::tempdir().unwrap(),
        patient_without_pace,
    )
    .await;

    let mut pull = get_url(host.url(&format!("/v2/a/b/blobs/{digest}"))).await;
    assert_eq!(pull.status(), StatusCode::OK);
    // Past the break at 2 MiB and up to what the replica's fill has, while the registry is
    // still paused: the resume is flowing from the replica's fill.
    let early = read_at_least(&mut pull, 3 * MIB + MIB / 2, Duration::from_secs(10)).await;
    assert_eq!(early, blob[..early.len()]);
    let resumes: Vec<_> = replica_blob_requests(&registry);
    assert_eq!(resumes.len(), 1, "the replica fetches once");

    release.notify_one();
    let whole = read_rest(pull, early).await;
    assert!(whole == blob, "the host's client gets every byte, in order");
    for cache in [host.rehash_cache(), replica.rehash_cache()] {
        assert_eq!(cache.len(), 1);
        assert!(cache[0].1, "both tiers committed verified bytes");
    }
}

fn replica_blob_requests(registry: &FakeRegistry) -> Vec<String> {
    registry
        .requests()
        .into_iter()
        .filter(|r| r.path.contains("/blobs/"))
        .map(|r| r.path)
        .collect()
}

/// A body that was flowing and goes silent (a WAN link dropping packets) is resumed from the
/// next upstream after about a second, judged by its own pace, long before the body idle
/// timeout (60 s here; today's code waited for it).
#[tokio::test]
async fn a_body_stalled_against_its_pace_resumes_from_the_next_upstream() {
    let (primary, secondary, blob, digest) = two_registries_with_a_blob(8 * MIB, 242).await;
    primary.fault("/blobs/", Fault::HangMidBody { after: 3 * MIB });
    let proxy = TestProxy::start_with(&[&primary, &secondary], patient).await;

    let pull = tokio::time::timeout(
        Duration::from_secs(15),
        get_url(proxy.url(&format!("/v2/a/b/blobs/{digest}"))),
    )
    .await
    .unwrap();
    assert_eq!(pull.status(), StatusCode::OK);
    let body = tokio::time::timeout(Duration::from_secs(15), pull.bytes())
        .await
        .expect("the stall is resumed elsewhere well before the 60 s idle timeout")
        .map_err(|e| format!("{e:?}"))
        .unwrap();
    assert!(body == blob);
    let ranges: Vec<String> = secondary
        .requests()
        .iter()
        .filter_map(|r| r.headers.get("range"))
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert_eq!(ranges.len(), 1, "the secondary was asked to resume once");
    let offset: usize = ranges[0]
        .strip_prefix("bytes=")
        .and_then(|r| r.strip_suffix('-'))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        offset > 0 && offset <= 3 * MIB,
        "resumed where the primary stopped: {offset}"
    );
    let metrics = metrics_text(&proxy).await;
    let stalled = format!(
        "upstream=\"{}\"",
        primary.url().trim_start_matches("http://")
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("ferry_stall_resumes_total{") && l.contains(&stalled)),
        "the primary's stall is counted: {metrics}"
    );
    assert_one_verified_file(&proxy);
}

/// The stalled connection is kept as a hedge: when the next upstream is silent too (its
/// request blackholed), the first one, once it speaks again, finishes the blob.
#[tokio::test]
async fn a_stalled_body_that_speaks_first_keeps_the_fill() {
    let (primary, secondary, blob, digest) = two_registries_with_a_blob(6 * MIB, 243).await;
    let release = Arc::new(Notify::new());
    primary.fault(
        "/blobs/",
        Fault::PauseMidBody {
            after: 2 * MIB,
            release: release.clone(),
        },
    );
    secondary.fault("/blobs/", Fault::HangBeforeHeaders);
    let proxy = TestProxy::start_with(&[&primary, &secondary], patient).await;
    let url = proxy.url(&format!("/v2/a/b/blobs/{digest}"));
    let mut pull = get_url(&url).await;
    let early = read_at_least(&mut pull, MIB, Duration::from_secs(10)).await;
    // Wait until the stall was noticed and the secondary asked (and left silent).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while secondary.hits("/blobs/") == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no hedge was started"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    release.notify_one();
    let body = tokio::time::timeout(Duration::from_secs(15), read_rest(pull, early))
        .await
        .expect("the kept connection finishes the blob");
    assert!(body == blob);
    assert_eq!(primary.hits("/blobs/"), 1);
    assert_one_verified_file(&proxy);
}

/// Hedging is on by default: a blackholed primary (no answer at all; its header timeout is
/// 30 s as in production) costs the first requests a fraction of a second, and its breaker
/// opens from the hedges it lost, so later requests go straight to the secondary.
#[tokio::test]
async fn a_blackholed_primary_is_hedged_by_default_and_its_breaker_opens() {
    let primary = FakeRegistry::start().await;
    let secondary = FakeRegistry::start().await;
    let images: Vec<_> = (0..10)
        .map(|i| {
            put_image(
                &[&primary, &secondary],
                "org/app",
                &format!("t{i}"),
                244 + i,
            )
            .0
        })
        .collect();
    primary.fault("/v2/org/app/", Fault::HangBeforeHeaders);
    let proxy = TestProxy::start_with(&[&primary, &secondary], |c| {
        for upstream in &mut c.upstreams {
            upstream.header_timeout = Duration::from_secs(30);
        }
    })
    .await;
    let mut opened_after = None;
    for (i, manifest) in images.iter().enumerate() {
        let response = tokio::time::timeout(
            Duration::from_secs(10),
            get_url(proxy.url(&format!("/v2/org/app/manifests/t{i}"))),
        )
        .await
        .expect("answered by the hedge long before the 30 s header timeout");
        if response.status() != StatusCode::OK {
            panic!("{}: {:?}", response.status(), response.text().await);
        }
        assert_eq!(
            response.headers()["docker-content-digest"],
            manifest.to_string().as_str()
        );
        if opened_after.is_none() && breaker_state(&proxy.admin_status().await, 0) == "open" {
            opened_after = Some(i + 1);
            break;
        }
    }
    let opened_after = opened_after.expect("the silent primary's breaker opened");
    assert!(opened_after <= 6, "opened after {opened_after} requests");
    // From now on the primary is the last resort: the next tag goes straight to the secondary.
    let asked = primary.hits("/v2/org/app/");
    let response = get_url(proxy.url("/v2/org/app/manifests/t9")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        primary.hits("/v2/org/app/"),
        asked,
        "the open breaker skips the primary"
    );
    let metrics = metrics_text(&proxy).await;
    assert!(metrics.contains("ferry_hedges_total{"), "{metrics}");
}

async fn metrics_text(proxy: &TestProxy) -> String {
    let admin = proxy.server.as_ref().unwrap().admin_addr.unwrap();
    get_url(format!("http://{admin}/metrics"))
        .await
        .text()
        .await
        .unwrap()
}

fn breaker_state(status: &serde_json::Value, index: usize) -> String {
    status["upstreams"][index]["breaker"]["state"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

/// The hedge delay follows the upstream's own times to headers: one that always takes 300 ms
/// is not hedged at 700 ms (three times its slowest recent answer is ~900 ms), and a silent
/// one is hedged after that delay, well before its header timeout.
#[tokio::test]
async fn the_hedge_delay_follows_the_upstream_own_times_to_headers() {
    let primary = FakeRegistry::start().await;
    let secondary = FakeRegistry::start().await;
    let blobs: Vec<_> = (0..5)
        .map(|i| {
            let bytes = pseudo_random_bytes(10_000 + i, 250 + i as u64);
            secondary.put_blob(bytes.clone());
            (primary.put_blob(bytes.clone()), bytes)
        })
        .collect();
    let proxy = TestProxy::start_with(&[&primary, &secondary], |c| {
        for upstream in &mut c.upstreams {
            upstream.header_timeout = Duration::from_secs(30);
        }
    })
    .await;
    let fetch = |i: usize| {
        let url = proxy.url(&format!("/v2/a/b/blobs/{}", blobs[i].0));
        let want = blobs[i].1.clone();
        async move {
            let body = crate::support::get_body(url).await;
            assert!(body == want);
        }
    };
    primary.fault("/blobs/", Fault::DelayHeaders(Duration::from_millis(300)));
    for i in 0..3 {
        fetch(i).await;
    }
    assert_eq!(
        secondary.hits("/blobs/"),
        0,
        "300 ms is below the first delay"
    );
    primary.clear_faults();
    primary.fault("/blobs/", Fault::DelayHeaders(Duration::from_millis(700)));
    fetch(3).await;
    assert_eq!(
        secondary.hits("/blobs/"),
        0,
        "700 ms is within three times this upstream's usual 300 ms"
    );
    primary.clear_faults();
    primary.fault("/blobs/", Fault::HangBeforeHeaders);
    tokio::time::timeout(Duration::from_secs(10), fetch(4))
        .await
        .expect("a silent upstream is hedged after its own delay");
    assert_eq!(secondary.hits("/blobs/"), 1);
}

/// A hedge's authoritative answer does not cut a slower upstream short: with not-found
/// failover off, a secondary's 404 arriving while the hedged primary is still working waits
/// for the primary, which has the blob.
#[tokio::test]
async fn a_hedge_404_waits_for_the_slower_upstream_that_has_the_blob() {
    let primary = FakeRegistry::start().await;
    let secondary = FakeRegistry::start().await;
    let blob = pseudo_random_bytes(50_000, 260);
    let digest = primary.put_blob(blob.clone());
    primary.fault("/blobs/", Fault::DelayHeaders(Duration::from_millis(800)));
    let proxy = TestProxy::start_with(&[&primary, &secondary], |c| {
        c.pool.failover_on_not_found = false;
        c.pool.hedging = ferry::upstream::Hedging::After(Duration::from_millis(100));
    })
    .await;
    let response = get_url(proxy.url(&format!("/v2/a/b/blobs/{digest}"))).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.bytes().await.unwrap() == blob);
    assert_eq!(
        secondary.hits("/blobs/"),
        1,
        "the hedge was asked and said 404"
    );
}

/// An upstream that is slow but answers is not broken by the hedges it loses: the time it
/// stayed silent raises its own hedge delay until it stops losing, and its breaker stays closed.
#[tokio::test]
async fn a_slow_but_healthy_upstream_outgrows_its_hedges() {
    let primary = FakeRegistry::start().await;
    let secondary = FakeRegistry::start().await;
    let digests: Vec<_> = (0..8)
        .map(|i| {
            let bytes = pseudo_random_bytes(20_000 + i, 270 + i as u64);
            secondary.put_blob(bytes.clone());
            primary.put_blob(bytes)
        })
        .collect();
    // 700 ms to headers: slower than the 500 ms hedge before a first answer.
    primary.fault("/blobs/", Fault::DelayHeaders(Duration::from_millis(700)));
    let proxy = TestProxy::start_with(&[&primary, &secondary], |c| {
        for upstream in &mut c.upstreams {
            upstream.header_timeout = Duration::from_secs(30);
        }
    })
    .await;
    for digest in &digests {
        let response = get_url(proxy.url(&format!("/v2/a/b/blobs/{digest}"))).await;
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert_eq!(
        breaker_state(&proxy.admin_status().await, 0),
        "closed",
        "a slow primary is not a dead one"
    );
    assert!(
        secondary.hits("/blobs/") <= 2,
        "the primary served once its delay had grown: secondary asked {} times",
        secondary.hits("/blobs/")
    );
}

/// A body that has not delivered its first byte is not judged by pace: a replica answering a
/// resume from a fill still short of that offset is silent until its fill gets there, and a
/// hedge then would start a second fill of the blob on another replica.
#[tokio::test]
async fn a_body_silent_before_its_first_byte_is_not_hedged_by_pace() {
    let (primary, secondary, blob, digest) = two_registries_with_a_blob(3 * MIB, 280).await;
    let release = Arc::new(Notify::new());
    primary.fault(
        "/blobs/",
        Fault::PauseMidBody {
            after: 0,
            release: release.clone(),
        },
    );
    let proxy = TestProxy::start_with(&[&primary, &secondary], patient).await;
    let pull = tokio::spawn(get_url(proxy.url(&format!("/v2/a/b/blobs/{digest}"))));
    // Three times the 1 s stall floor, with headers in and no byte yet.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        secondary.hits("/blobs/"),
        0,
        "no hedge before the first byte"
    );
    release.notify_one();
    let response = pull.await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.bytes().await.unwrap() == blob);
    assert_eq!(secondary.hits("/blobs/"), 0);
}
