//! Flapping outages (issue 13): an upstream skipped for its open breaker is the last resort,
//! never no resort, for a request and for a fill's resume; and a Range request on a blob
//! still filling never completes from unverified bytes.

use crate::support::get_url;
use crate::support::{FakeRegistry, Fault, TestProxy, client, get_blob, pseudo_random_bytes};
use ferry::upstream::breaker::BreakerConfig;
use reqwest::StatusCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// A breaker that opens after two failures and stays open far longer than any test.
fn long_open_breaker() -> BreakerConfig {
    BreakerConfig {
        threshold: 2,
        cooldown: Duration::from_secs(60),
        max_cooldown: Duration::from_secs(60),
        probe_timeout: Duration::from_secs(60),
    }
}

async fn breaker_state(proxy: &TestProxy, upstream: usize) -> String {
    proxy.admin_status().await["upstreams"][upstream]["breaker"]["state"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Opens the breaker of the upstream that fails `/blobs/` with 503: two GETs of blobs
/// that the healthy upstream has (so the client never notices).
async fn open_breaker_of(failing: &FakeRegistry, healthy: &FakeRegistry, proxy: &TestProxy) {
    failing.fault("/blobs/", Fault::Status(503));
    for seed in 0..2 {
        let filler = healthy.put_blob(pseudo_random_bytes(1000, 500 + seed));
        let response = get_blob(proxy, "f/r", &filler, None).await;
        assert_eq!(response.status(), StatusCode::OK);
    }
}

/// The soak's pattern: the primary recovered while its breaker is still open, and the
/// secondary does not have the blob (404) or is failing (503). The client must get the
/// blob from the primary, not an error; and that success closes the primary's breaker.
#[tokio::test]
async fn a_recovered_primary_with_an_open_breaker_is_the_last_resort() {
    for secondary_answer in [404u16, 503] {
        let primary = FakeRegistry::start().await;
        let secondary = FakeRegistry::start().await;
        let proxy = TestProxy::start_with(&[&primary, &secondary], |c| {
            c.pool.breaker = long_open_breaker();
        })
        .await;
        // The primary fails, the secondary serves: the primary's breaker opens.
        open_breaker_of(&primary, &secondary, &proxy).await;
        assert_eq!(breaker_state(&proxy, 0).await, "open");

        // The primary recovers (its breaker is still open); the secondary lacks the blob.
        primary.clear_faults();
        let blob = pseudo_random_bytes(200_000, 7);
        let digest = primary.put_blob(blob.clone());
        if secondary_answer != 404 {
            secondary.fault("/blobs/", Fault::Status(secondary_answer));
        }
        let response = get_blob(&proxy, "a/b", &digest, None).await;
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "secondary answered {secondary_answer}: the healthy primary must be tried as the last resort"
        );
        assert_eq!(response.bytes().await.unwrap(), blob);
        assert_eq!(
            breaker_state(&proxy, 0).await,
            "closed",
            "a success on the last resort closes its breaker"
        );
        // And the fast path is back: the next miss goes to the primary first.
        let next = primary.put_blob(pseudo_random_bytes(3000, 8));
        let secondary_hits = secondary.hits("/blobs/");
        let response = get_blob(&proxy, "a/b", &next, None).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(secondary.hits("/blobs/"), secondary_hits);
    }
}

/// An open breaker still costs nothing while another upstream answers well.
#[tokio::test]
async fn an_open_breaker_is_not_contacted_while_another_upstream_serves() {
    let primary = FakeRegistry::start().await;
    let secondary = FakeRegistry::start().await;
    let proxy = TestProxy::start_with(&[&primary, &secondary], |c| {
        c.pool.breaker = long_open_breaker();
    })
    .await;
    open_breaker_of(&primary, &secondary, &proxy).await;
    assert_eq!(breaker_state(&proxy, 0).await, "open");
    let primary_hits = primary.hits("/blobs/");
    for seed in 0..5 {
        let digest = secondary.put_blob(pseudo_random_bytes(2000, 600 + seed));
        let response = get_blob(&proxy, "a/b", &digest, None).await;
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert_eq!(primary.hits("/blobs/"), primary_hits);
}

/// The variant: the primary breaks mid-body, its resume answers 503, and the secondary,
/// skipped at the start for its open breaker, finishes the fill as the last resort.
#[tokio::test]
async fn a_resume_falls_back_to_an_upstream_skipped_for_its_breaker() {
    let primary = FakeRegistry::start().await;
    let secondary = FakeRegistry::start().await;
    let proxy = TestProxy::start_with(&[&primary, &secondary], |c| {
        c.pool.breaker = long_open_breaker();
    })
    .await;
    // The secondary's breaker opens: blobs only it could serve, while it answers 503.
    secondary.fault("/blobs/", Fault::Status(503));
    for seed in 0..2 {
        let filler = secondary.put_blob(pseudo_random_bytes(1000, 700 + seed));
        let response = get_blob(&proxy, "f/r", &filler, None).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(breaker_state(&proxy, 1).await, "open");
    secondary.clear_faults();

    let blob = pseudo_random_bytes(3 * 1024 * 1024, 9);
    let digest = primary.put_blob(blob.clone());
    secondary.put_blob(blob.clone());
    let path = format!("/blobs/{digest}");
    primary.fault_times(&path, Fault::Truncate { after: 1536 * 1024 }, 1);
    primary.fault(&path, Fault::Status(503));
    let response = get_blob(&proxy, "a/b", &digest, None).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.bytes().await.expect("the body completes");
    assert!(body == blob, "the resumed body must be the blob's bytes");
    assert_eq!(primary.hits(&path), 2, "first attempt and the resume");
    assert_eq!(secondary.hits(&path), 1, "the last resort");
    let cached = proxy.rehash_cache();
    assert!(cached.iter().all(|(_, ok)| *ok), "{cached:?}");
}

/// A 404 from the only upstream asked, while another was never tried, is not "unknown to
/// every upstream" when attempts run out: with one upstream deferred and the budget left,
/// the deferred one is asked and its answer decides.
#[tokio::test]
async fn not_found_is_reported_only_when_every_upstream_said_so() {
    let primary = FakeRegistry::start().await;
    let secondary = FakeRegistry::start().await;
    let proxy = TestProxy::start_with(&[&primary, &secondary], |c| {
        c.pool.breaker = long_open_breaker();
    })
    .await;
    open_breaker_of(&primary, &secondary, &proxy).await;
    primary.clear_faults();
    let missing = ferry::oci::Digest::sha256_of(b"nobody has this");
    let response = get_blob(&proxy, "a/b", &missing, None).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        primary.hits(&format!("/blobs/{missing}")),
        1,
        "404 only after the deferred primary said so too"
    );
}

/// A Range GET that arrives while a fill streams wrong bytes must not complete from the
/// unverified file: it waits for the verified commit. Here the primary flips a byte early
/// in the blob and pauses; the range covering that byte is answered only after the fill
/// failed its digest and a new fill from the secondary committed the right bytes.
#[tokio::test]
async fn a_range_during_a_corrupt_fill_never_gets_unverified_bytes() {
    let primary = FakeRegistry::start().await;
    let secondary = FakeRegistry::start().await;
    let blob = pseudo_random_bytes(4 * 1024 * 1024, 11);
    let digest = primary.put_blob(blob.clone());
    secondary.put_blob(blob.clone());
    let release = Arc::new(Notify::new());
    primary.fault(
        "/blobs/",
        Fault::FlipByteThenPause {
            at: 100,
            after: 3 * 1024 * 1024,
            release: release.clone(),
        },
    );
    let proxy = TestProxy::start(&[&primary, &secondary]).await;
    let url = proxy.url(&format!("/v2/a/b/blobs/{digest}"));

    // A whole-blob reader starts the fill and receives bytes (so they are in the file).
    let mut whole = get_url(&url).await;
    assert_eq!(whole.status(), StatusCode::OK);
    let mut received = 0usize;
    while received < 1024 * 1024 {
        let chunk = whole.chunk().await.unwrap().expect("bytes flow");
        received += chunk.len();
    }

    // A Range request for the first KiB (covering the flipped byte) during the fill.
    let range_request = tokio::spawn({
        let url = url.clone();
        async move {
            let response = client()
                .get(&url)
                .header("range", "bytes=0-1023")
                .send()
                .await
                .unwrap();
            let status = response.status();
            (status, response.bytes().await)
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let answered_early = range_request.is_finished();
    release.notify_one();
    let (status, body) = range_request.await.unwrap();
    if let Ok(body) = &body {
        assert!(
            !(status == StatusCode::PARTIAL_CONTENT && body[..] != blob[..1024]),
            "a complete 206 carried wrong bytes (answered before the fill ended: {answered_early})"
        );
    }
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(body.unwrap(), &blob[..1024]);
    assert!(
        !answered_early,
        "the range was answered from the unverified file"
    );
    // The whole-blob reader of the corrupt fill is cut, never completed.
    let mut whole_ok = true;
    loop {
        match whole.chunk().await {
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(_) => {
                whole_ok = false;
                break;
            }
        }
    }
    assert!(!whole_ok, "the corrupt whole body must be cut");
    let cached = proxy.rehash_cache();
    assert_eq!(cached.len(), 1);
    assert!(cached[0].1, "only verified bytes are committed");
}

/// With an honest upstream, a Range request during a fill gets the right bytes once the
/// fill commits.
#[tokio::test]
async fn a_range_during_an_honest_fill_is_answered_after_the_commit() {
    let primary = FakeRegistry::start().await;
    let blob = pseudo_random_bytes(4 * 1024 * 1024, 12);
    let digest = primary.put_blob(blob.clone());
    let release = Arc::new(Notify::new());
    primary.fault(
        "/blobs/",
        Fault::PauseMidBody {
            after: 3 * 1024 * 1024,
            release: release.clone(),
        },
    );
    let proxy = TestProxy::start(&[&primary]).await;
    let url = proxy.url(&format!("/v2/a/b/blobs/{digest}"));
    let mut whole = get_url(&url).await;
    let mut received = 0usize;
    while received < 1024 * 1024 {
        received += whole.chunk().await.unwrap().expect("bytes flow").len();
    }
    let range_request = tokio::spawn({
        let url = url.clone();
        async move {
            let response = client()
                .get(&url)
                .header("range", "bytes=2000000-2099999")
                .send()
                .await
                .unwrap();
            (response.status(), response.bytes().await.unwrap())
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    release.notify_one();
    let (status, body) = range_request.await.unwrap();
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(body, &blob[2_000_000..2_100_000]);
    while let Some(chunk) = whole.chunk().await.unwrap() {
        received += chunk.len();
    }
    assert_eq!(received, blob.len());
    assert_eq!(primary.hits("/blobs/"), 1, "one fill served both");
}

/// A Range request whose fill meets a lying source gets the right bytes from the next one:
/// the wrong fill is never read, the range waits for the verified commit.
#[tokio::test]
async fn a_range_on_a_blob_whose_first_source_lies_gets_verified_bytes() {
    let primary = FakeRegistry::start().await;
    let secondary = FakeRegistry::start().await;
    let blob = pseudo_random_bytes(2 * 1024 * 1024 + 17, 13);
    let digest = primary.put_blob(blob.clone());
    secondary.put_blob(blob.clone());
    primary.fault("/blobs/", Fault::FlipByte { at: 10 });
    let proxy = TestProxy::start(&[&primary, &secondary]).await;
    let response = get_blob(&proxy, "a/b", &digest, Some("bytes=0-99")).await;
    assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(response.bytes().await.unwrap(), &blob[..100]);
    assert_eq!(primary.hits("/blobs/"), 1);
    assert_eq!(secondary.hits("/blobs/"), 1);
    let cached = proxy.rehash_cache();
    assert_eq!(cached.len(), 1);
    assert!(cached[0].1);
}

/// Two upstreams that each sent wrong bytes for a digest take turns: the one that lied
/// longest ago is asked first, so a client's retry reaches the source that recovered rather
/// than the one that lied last (the soak saw a primary re-asked while the secondary was fine).
#[tokio::test]
async fn sources_that_lied_take_turns_so_a_retry_reaches_the_recovered_one() {
    let primary = FakeRegistry::start().await;
    let secondary = FakeRegistry::start().await;
    let blob = pseudo_random_bytes(3 * 1024 * 1024, 14);
    let digest = primary.put_blob(blob.clone());
    secondary.put_blob(blob.clone());
    let proxy = TestProxy::start(&[&primary, &secondary]).await;
    let whole_body_is_cut = |response: reqwest::Response| async move {
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.bytes().await.is_err(), "a wrong body must be cut");
    };

    // The secondary lies once (the primary is briefly down), then the primary lies for good.
    primary.fault_times("/blobs/", Fault::Status(503), 1);
    secondary.fault_times("/blobs/", Fault::FlipByte { at: 10 }, 1);
    whole_body_is_cut(get_blob(&proxy, "a/b", &digest, None).await).await;
    primary.fault("/blobs/", Fault::FlipByte { at: 10 });
    whole_body_is_cut(get_blob(&proxy, "a/b", &digest, None).await).await;

    // Both are marked; the secondary lied first, so it is asked first, and it is fine now.
    let response = get_blob(&proxy, "a/b", &digest, None).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.bytes().await.unwrap() == blob);
    assert_eq!(primary.hits("/blobs/"), 2);
    assert_eq!(secondary.hits("/blobs/"), 2);
}
