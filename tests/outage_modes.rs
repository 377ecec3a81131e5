//! Upstream health and outage modes: circuit breakers make a dead primary cost nothing,
//! operators drain and undrain upstreams through the admin API, hedging hides a slow
//! primary, attempts are bounded, `--offline` and `max_stale` behave, and shutdown lets
//! in-flight downloads finish within its grace period and closes what it did not finish.

use crate::support::get_body;
use crate::support::get_url;
use crate::support::{FakeRegistry, Fault, TestProxy, client, pseudo_random_bytes, put_image};
use ferry::upstream::breaker::BreakerConfig;
use reqwest::{Method, StatusCode};
use std::time::{Duration, Instant};

async fn admin_status(proxy: &TestProxy) -> serde_json::Value {
    proxy.admin_status().await
}

async fn admin_post(proxy: &TestProxy, path: &str) -> StatusCode {
    let admin = proxy.server.as_ref().unwrap().admin_addr.unwrap();
    client()
        .post(format!("http://{admin}{path}"))
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test]
async fn an_open_breaker_skips_a_dead_primary_until_its_probe_succeeds() {
    let primary = FakeRegistry::start().await;
    let secondary = FakeRegistry::start().await;
    for i in 0..10 {
        put_image(&[&primary, &secondary], "b/r", &format!("t{i}"), 60 + i);
    }
    primary.fault("/v2/", Fault::HangBeforeHeaders);
    let proxy = TestProxy::start_with(&[&primary, &secondary], |c| {
        c.upstreams[0].header_timeout = Duration::from_millis(300);
        c.pool.breaker = BreakerConfig {
            threshold: 3,
            cooldown: Duration::from_secs(1),
            max_cooldown: Duration::from_secs(4),
            probe_timeout: Duration::from_secs(10),
        };
    })
    .await;
    for i in 0..3 {
        let response = get_url(proxy.url(&format!("/v2/b/r/manifests/t{i}"))).await;
        assert_eq!(response.status(), StatusCode::OK);
    }
    let status = admin_status(&proxy).await;
    assert_eq!(
        status["upstreams"][0]["breaker"]["state"], "open",
        "{status}"
    );
    assert_eq!(
        status["upstreams"][0]["recent_failures"][0]["reason"],
        "header_timeout"
    );
    // Open: the primary is not contacted and costs nothing.
    let hits_before = primary.hits("/manifests/");
    let started = Instant::now();
    for i in 3..6 {
        let response = get_url(proxy.url(&format!("/v2/b/r/manifests/t{i}"))).await;
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert!(
        started.elapsed() < Duration::from_millis(250),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(primary.hits("/manifests/"), hits_before);
    // After the cooldown one probe goes to the primary; it is healthy again, so it closes.
    primary.clear_faults();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let response = get_url(proxy.url("/v2/b/r/manifests/t6")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(primary.hits("/manifests/t6"), 1);
    assert_eq!(
        admin_status(&proxy).await["upstreams"][0]["breaker"]["state"],
        "closed"
    );
}

#[tokio::test]
async fn when_every_breaker_is_open_ferry_still_tries_in_order() {
    let only = FakeRegistry::start().await;
    put_image(&[&only], "o/r", "v1", 70);
    only.fault("/v2/", Fault::Status(503));
    let proxy = TestProxy::start_with(&[&only], |c| c.pool.breaker.threshold = 1).await;
    let response = get_url(proxy.url("/v2/o/r/manifests/v1")).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        admin_status(&proxy).await["upstreams"][0]["breaker"]["state"],
        "open"
    );
    only.clear_faults();
    let response = get_url(proxy.url("/v2/o/r/manifests/v1")).await;
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "an all-open pool is tried anyway"
    );
}

#[tokio::test]
async fn drain_and_undrain_through_the_admin_api() {
    let primary = FakeRegistry::start().await;
    let secondary = FakeRegistry::start().await;
    put_image(&[&primary, &secondary], "d/r", "a", 71);
    put_image(&[&primary, &secondary], "d/r", "b", 72);
    let proxy = TestProxy::start(&[&primary, &secondary]).await;
    let name = primary.addr.to_string();
    assert_eq!(
        admin_post(&proxy, &format!("/admin/upstreams/{name}/drain")).await,
        StatusCode::OK
    );
    assert_eq!(admin_status(&proxy).await["upstreams"][0]["drained"], true);
    let response = get_url(proxy.url("/v2/d/r/manifests/a")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        primary.hits("/manifests/"),
        0,
        "a drained upstream gets no traffic"
    );
    assert_eq!(
        admin_post(&proxy, &format!("/admin/upstreams/{name}/undrain")).await,
        StatusCode::OK
    );
    get_url(proxy.url("/v2/d/r/manifests/b")).await;
    assert_eq!(primary.hits("/manifests/b"), 1);
    assert_eq!(
        admin_post(&proxy, "/admin/upstreams/nope/drain").await,
        StatusCode::NOT_FOUND
    );
    let admin = proxy.server.as_ref().unwrap().admin_addr.unwrap();
    let get_drain = get_url(format!("http://{admin}/admin/upstreams/{name}/drain")).await;
    assert_eq!(get_drain.status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn hedging_starts_the_next_upstream_alongside_a_slow_one() {
    let primary = FakeRegistry::start().await;
    let secondary = FakeRegistry::start().await;
    let (_, layer_digest, layer) = put_image(&[&primary, &secondary], "h/r", "v1", 73);
    primary.fault("/v2/", Fault::DelayHeaders(Duration::from_secs(3)));
    let proxy = TestProxy::start_with(&[&primary, &secondary], |c| {
        c.upstreams[0].header_timeout = Duration::from_secs(10);
        c.pool.hedging = ferry::upstream::Hedging::After(Duration::from_millis(100));
    })
    .await;
    let started = Instant::now();
    let response = get_url(proxy.url("/v2/h/r/manifests/v1")).await;
    assert_eq!(response.status(), StatusCode::OK);
    let blob = get_url(proxy.url(&format!("/v2/h/r/blobs/{layer_digest}"))).await;
    assert_eq!(blob.bytes().await.unwrap(), layer);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "hedge did not kick in: {:?}",
        started.elapsed()
    );
    assert_eq!(
        primary.hits("/manifests/v1"),
        1,
        "the primary was asked first"
    );
    assert_eq!(secondary.hits("/manifests/v1"), 1);
    assert_eq!(
        secondary.hits_with(Method::GET, &format!("/blobs/{layer_digest}")),
        1
    );
}

#[tokio::test]
async fn attempts_are_bounded_when_every_upstream_keeps_breaking() {
    let a = FakeRegistry::start().await;
    let b = FakeRegistry::start().await;
    // Each source breaks after ~1 MiB, so four attempts cannot finish 8 MiB.
    let blob = pseudo_random_bytes(8 * 1024 * 1024, 74);
    let digest = a.put_blob(blob.clone());
    b.put_blob(blob);
    a.fault(
        "/blobs/",
        Fault::ResetMidBody {
            after: 1024 * 1024 + 10,
        },
    );
    b.fault(
        "/blobs/",
        Fault::ResetMidBody {
            after: 1024 * 1024 + 10,
        },
    );
    let proxy = TestProxy::start_with(&[&a, &b], |c| c.pool.retry_budget = 2).await;
    let response = get_url(proxy.url(&format!("/v2/x/y/blobs/{digest}"))).await;
    assert!(
        response.bytes().await.is_err(),
        "every source breaks: the client is cut"
    );
    let attempts = a.hits("/blobs/") + b.hits("/blobs/");
    assert!(
        attempts <= 2 + 2,
        "{attempts} attempts for 2 upstreams and a budget of 2"
    );
    assert!(attempts >= 3, "resumes were tried ({attempts} attempts)");
    assert!(proxy.rehash_cache().is_empty());
}

#[tokio::test]
async fn resume_continues_with_range_and_accepts_an_upstream_that_ignores_it() {
    let primary = FakeRegistry::start().await;
    let secondary = FakeRegistry::start().await;
    let blob = pseudo_random_bytes(5 * 1024 * 1024, 75);
    let digest = primary.put_blob(blob.clone());
    secondary.put_blob(blob.clone());
    primary.fault(
        "/blobs/",
        Fault::ResetMidBody {
            after: 3 * 1024 * 1024,
        },
    );
    let proxy = TestProxy::start(&[&primary, &secondary]).await;
    let body = get_body(proxy.url(&format!("/v2/r/s/blobs/{digest}"))).await;
    assert_eq!(body, blob, "one uninterrupted, correct body");
    let resume = secondary
        .requests()
        .into_iter()
        .find(|r| r.path.contains("/blobs/"))
        .unwrap();
    let range = resume
        .headers
        .get("range")
        .expect("the secondary was asked for the rest only");
    assert!(range.to_str().unwrap().starts_with("bytes="), "{range:?}");
    assert_ne!(range.to_str().unwrap(), "bytes=0-");
}

#[tokio::test]
async fn resume_skips_the_prefix_when_the_next_upstream_ignores_range() {
    let primary = FakeRegistry::start().await;
    let secondary = FakeRegistry::start().await;
    let blob = pseudo_random_bytes(5 * 1024 * 1024, 80);
    let digest = primary.put_blob(blob.clone());
    secondary.put_blob(blob.clone());
    primary.fault(
        "/blobs/",
        Fault::ResetMidBody {
            after: 3 * 1024 * 1024,
        },
    );
    secondary.fault("/blobs/", Fault::IgnoreRange);
    let proxy = TestProxy::start(&[&primary, &secondary]).await;
    let body = get_body(proxy.url(&format!("/v2/r/s/blobs/{digest}"))).await;
    assert_eq!(body, blob, "the first N bytes of the 200 were skipped");
    let resume = secondary
        .requests()
        .into_iter()
        .find(|r| r.path.contains("/blobs/"))
        .unwrap();
    assert!(
        resume.headers.get("range").is_some(),
        "a Range was asked for"
    );
    assert_eq!(proxy.rehash_cache().len(), 1);
}

#[tokio::test]
async fn the_background_probe_opens_a_breaker_without_client_traffic() {
    let primary = FakeRegistry::start().await;
    let secondary = FakeRegistry::start().await;
    put_image(&[&primary, &secondary], "p/r", "v1", 81);
    primary.fault("/v2/", Fault::Status(503));
    let proxy = TestProxy::start_with(&[&primary, &secondary], |c| {
        c.health_probe_interval = Some(Duration::from_millis(50));
        c.pool.breaker.threshold = 3;
    })
    .await;
    let mut state = serde_json::Value::Null;
    for _ in 0..100 {
        state = admin_status(&proxy).await["upstreams"][0]["breaker"]["state"].clone();
        if state == "open" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(state, "open", "probes alone opened the primary's breaker");
    assert_eq!(
        admin_status(&proxy).await["upstreams"][1]["breaker"]["state"],
        "closed"
    );
    assert!(primary.hits_with(Method::GET, "/v2/") >= 3);
    let response = get_url(proxy.url("/v2/p/r/manifests/v1")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        primary.hits("/manifests/"),
        0,
        "the open primary was skipped"
    );
}

#[tokio::test]
async fn offline_serves_the_cache_and_never_contacts_upstreams() {
    let upstream = FakeRegistry::start().await;
    let (manifest, layer_digest, layer) = put_image(&[&upstream], "off/line", "v1", 76);
    let online = TestProxy::start(&[&upstream]).await;
    get_body(online.url("/v2/off/line/manifests/v1")).await;
    get_body(online.url(&format!("/v2/off/line/blobs/{layer_digest}"))).await;
    let cache = online.stop().await;
    let hits = upstream.requests().len();

    let offline = TestProxy::start_urls(&[upstream.url()], cache, |c| {
        c.offline = true;
        c.tag_ttl = Duration::ZERO;
    })
    .await;
    let response = get_url(offline.url("/v2/off/line/manifests/v1")).await;
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "tags are served regardless of TTL"
    );
    assert_eq!(
        response.headers()["docker-content-digest"],
        manifest.to_string().as_str()
    );
    let blob = get_url(offline.url(&format!("/v2/off/line/blobs/{layer_digest}"))).await;
    assert_eq!(blob.bytes().await.unwrap(), layer);
    let missing = get_url(offline.url("/v2/off/line/manifests/v2")).await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let body = missing.text().await.unwrap();
    assert!(
        body.contains("MANIFEST_UNKNOWN") && body.contains("offline"),
        "{body}"
    );
    assert_eq!(
        upstream.requests().len(),
        hits,
        "offline never contacts an upstream"
    );
}

#[tokio::test]
async fn max_stale_bounds_how_old_a_stale_tag_may_be() {
    let upstream = FakeRegistry::start().await;
    put_image(&[&upstream], "m/s", "v1", 77);
    let proxy = TestProxy::start_with(&[&upstream], |c| {
        c.tag_ttl = Duration::ZERO;
        c.max_stale = Some(Duration::from_millis(500));
    })
    .await;
    assert_eq!(
        get_url(proxy.url("/v2/m/s/manifests/v1")).await.status(),
        StatusCode::OK
    );
    upstream.fault("/v2/", Fault::Status(503));
    assert_eq!(
        get_url(proxy.url("/v2/m/s/manifests/v1")).await.status(),
        StatusCode::OK,
        "young enough: served stale"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        get_url(proxy.url("/v2/m/s/manifests/v1")).await.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "older than max_stale: not served"
    );
}

#[tokio::test]
async fn a_drip_feeding_upstream_is_abandoned_for_a_faster_one() {
    let primary = FakeRegistry::start().await;
    let secondary = FakeRegistry::start().await;
    let blob = pseudo_random_bytes(3 * 1024 * 1024, 78);
    let digest = primary.put_blob(blob.clone());
    secondary.put_blob(blob.clone());
    // 4 KiB every 100 ms never trips the idle timeout, but is far below 256 KiB/s.
    primary.fault(
        "/blobs/",
        Fault::Drip {
            chunk: 4096,
            delay: Duration::from_millis(100),
        },
    );
    let proxy = TestProxy::start_with(&[&primary, &secondary], |c| {
        c.upstreams[0].rate_window = Duration::from_secs(1);
    })
    .await;
    let started = Instant::now();
    let body = get_body(proxy.url(&format!("/v2/d/r/blobs/{digest}"))).await;
    assert_eq!(body, blob);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let status = admin_status(&proxy).await;
    assert_eq!(
        status["upstreams"][0]["recent_failures"][0]["reason"], "too_slow",
        "{status}"
    );
}

#[tokio::test]
async fn shutdown_lets_in_flight_downloads_finish() {
    let upstream = FakeRegistry::start().await;
    let blob = pseudo_random_bytes(2 * 1024 * 1024, 79);
    let digest = upstream.put_blob(blob.clone());
    upstream.fault(
        "/blobs/",
        Fault::Drip {
            chunk: 256 * 1024,
            delay: Duration::from_millis(100),
        },
    );
    let mut proxy = TestProxy::start(&[&upstream]).await;
    let url = proxy.url(&format!("/v2/g/r/blobs/{digest}"));
    let download = tokio::spawn(async move { get_url(url).await.bytes().await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let addr = proxy.server.as_ref().unwrap().addr;
    proxy.server.take().unwrap().shutdown().await;
    let body = download
        .await
        .unwrap()
        .expect("the in-flight download completed");
    assert_eq!(body, blob);
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test]
async fn metrics_show_failovers_per_upstream_counts_and_cache_hits() {
    let primary = FakeRegistry::start().await;
    let secondary = FakeRegistry::start().await;
    let (_, layer_digest, layer) = put_image(&[&primary, &secondary], "m/x", "v1", 82);
    primary.fault("/v2/", Fault::Status(503));
    let proxy = TestProxy::start(&[&primary, &secondary]).await;
    get_body(proxy.url("/v2/m/x/manifests/v1")).await;
    for _ in 0..2 {
        let body = get_body(proxy.url(&format!("/v2/m/x/blobs/{layer_digest}"))).await;
        assert_eq!(body, layer);
    }
    let admin = proxy.server.as_ref().unwrap().admin_addr.unwrap();
    let text = get_url(format!("http://{admin}/metrics"))
        .await
        .text()
        .await
        .unwrap();
    let value = |needle: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(needle))
            .unwrap_or_else(|| panic!("no metric line starting with {needle:?} in:\n{text}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let p = primary.addr.to_string();
    let s = secondary.addr.to_string();
    assert_eq!(
        value(&format!(
            "ferry_failovers_total{{registry=\"docker.io\",upstream=\"{p}\",reason=\"server_error\"}}"
        )),
        2.0
    );
    assert_eq!(
        value(&format!(
            "ferry_upstream_requests_total{{registry=\"docker.io\",upstream=\"{p}\",outcome=\"server_error\"}}"
        )),
        2.0
    );
    assert_eq!(
        value(&format!(
            "ferry_upstream_requests_total{{registry=\"docker.io\",upstream=\"{s}\",outcome=\"ok\"}}"
        )),
        2.0
    );
    assert_eq!(value("ferry_cache_hits_total{kind=\"blob\"}"), 1.0);
    assert_eq!(value("ferry_cache_misses_total{kind=\"blob\"}"), 1.0);
    assert_eq!(
        value("ferry_served_bytes_total{source=\"cache\"}"),
        layer.len() as f64
    );
    assert_eq!(value("ferry_fill_duration_seconds_count"), 1.0);
    assert_eq!(
        value(&format!(
            "ferry_upstream_breaker_open{{registry=\"docker.io\",upstream=\"{s}\"}}"
        )),
        0.0
    );
    assert!(value("ferry_requests_total{route=\"blob\",method=\"GET\",status=\"200\"}") >= 2.0);
}

#[tokio::test]
async fn shutdown_closes_the_connections_its_grace_period_did_not_finish() {
    let upstream = FakeRegistry::start().await;
    let blob = pseudo_random_bytes(4 * 1024 * 1024, 83);
    let digest = upstream.put_blob(blob.clone());
    // About 30 s for the whole body: far longer than the grace period.
    upstream.fault(
        "/blobs/",
        Fault::Drip {
            chunk: 128 * 1024,
            delay: Duration::from_millis(900),
        },
    );
    let cache_dir = tempfile::tempdir().unwrap();
    let overrides = ferry::config::Overrides {
        listen: Some("127.0.0.1:0".into()),
        cache_dir: Some(cache_dir.path().to_path_buf()),
        upstreams: vec![upstream.url()],
        admin_listen: Some("off".into()),
        ..Default::default()
    };
    let file = ferry::config::file::ConfigFile {
        shutdown_grace: Some("1s".into()),
        ..Default::default()
    };
    let config = ferry::config::Config::parse(&file, &overrides)
        .without_files()
        .unwrap();
    let server = ferry::app::start(config).await.unwrap();
    let url = format!("http://{}/v2/g/r/blobs/{digest}", server.addr);
    let download = tokio::spawn(async move { get_url(url).await.bytes().await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!download.is_finished(), "the download is still dripping");
    tokio::time::timeout(Duration::from_secs(30), server.shutdown())
        .await
        .expect("shutdown ends within the grace period and the fill drain limit");
    // The connection still open after the grace period was closed, not left running: the
    // client sees its body cut short at once.
    let ended = tokio::time::timeout(Duration::from_secs(2), download)
        .await
        .expect("the client's connection was closed by shutdown")
        .unwrap();
    assert!(ended.is_err(), "a body cut short, not a complete one");
}
