//! The last hour as `/admin/history` keeps it, and the `/dashboard` page that draws it: an
//! outage on the primary shows as failures in its buckets and requests in the secondary's;
//! the page is self-contained; and a real headless Chromium draws every upstream's strip.

use crate::support::{FakeRegistry, Fault, TestProxy, put_image};
use std::process::Command;

async fn history(proxy: &TestProxy) -> serde_json::Value {
    let body = crate::support::get_body(proxy.admin_url("/admin/history")).await;
    serde_json::from_slice(&body).unwrap()
}

fn series<'a>(history: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    history["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no series for {name}: {history}"))
}

/// Sums `key` over the hour's buckets.
fn total(buckets: &serde_json::Value, key: &str) -> u64 {
    buckets
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b[key].as_u64().unwrap())
        .sum()
}

/// A primary answering 503 to everything, a healthy secondary, and one image pulled twice.
async fn outage() -> (FakeRegistry, FakeRegistry, TestProxy) {
    let primary = FakeRegistry::start().await;
    let secondary = FakeRegistry::start().await;
    let (_, layer, _) = put_image(&[&primary, &secondary], "team/app", "v1", 870);
    primary.fault("/v2/", Fault::Status(503));
    let proxy = TestProxy::start(&[&primary, &secondary]).await;
    for _ in 0..2 {
        let manifest = crate::support::get_manifest(&proxy, "/v2/team/app/manifests/v1").await;
        assert_eq!(manifest.status(), 200);
        let blob = crate::support::get_blob(&proxy, "team/app", &layer, None).await;
        assert_eq!(blob.status(), 200);
        blob.bytes().await.unwrap();
    }
    (primary, secondary, proxy)
}

#[tokio::test]
async fn an_outage_on_the_primary_shows_as_its_failures_and_the_secondarys_requests() {
    let (primary, secondary, proxy) = outage().await;
    let history = history(&proxy).await;
    assert_eq!(history["bucket_seconds"], 60);
    let primary_buckets = &series(&history, &primary.addr.to_string())["buckets"];
    let secondary_buckets = &series(&history, &secondary.addr.to_string())["buckets"];
    assert_eq!(primary_buckets.as_array().unwrap().len(), 60);
    let failures = total(primary_buckets, "failures");
    assert!(failures >= 2, "{history}");
    assert_eq!(total(primary_buckets, "requests"), failures);
    assert_eq!(total(primary_buckets, "failovers_away"), failures);
    assert!(total(secondary_buckets, "requests") >= 2);
    assert_eq!(total(secondary_buckets, "failures"), 0);
    assert!(
        secondary_buckets
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["latency_ms"]["p50"].is_u64()),
        "{secondary_buckets}"
    );
    let recent = &history["recent_failures"][0];
    assert_eq!(recent["upstream"], primary.addr.to_string());
    assert_eq!(recent["kind"], "server_error");
    assert_eq!(recent["moved_on"], true);
    // The cache: the first pull missed, the second hit, and bytes went out from both.
    let cache = &history["cache"]["buckets"];
    assert!(total(cache, "misses") >= 2, "{cache}");
    assert!(total(cache, "hits") >= 2, "{cache}");
    assert!(total(cache, "bytes_from_cache") > 100_000);
    assert!(total(cache, "bytes_from_upstreams") > 100_000);
    assert_eq!(total(cache, "fills"), 1, "one layer filled");
}

#[tokio::test]
async fn the_dashboard_is_one_self_contained_page() {
    let registry = FakeRegistry::start().await;
    let proxy = TestProxy::start(&[&registry]).await;
    let response = crate::support::get_url(proxy.admin_url("/dashboard")).await;
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    let policy = headers["content-security-policy"].to_str().unwrap();
    assert!(policy.contains("default-src 'none'") && policy.contains("connect-src 'self'"));
    let page = response.text().await.unwrap();
    assert!(page.contains("/admin/history") && page.contains("/admin/upstreams"));
    // Nothing fetched from elsewhere: the only URL is the SVG namespace.
    let urls: Vec<&str> = page
        .match_indices("http")
        .map(|(at, _)| &page[at..(at + 30).min(page.len())])
        .filter(|s| !s.starts_with("http://www.w3.org/2000/svg"))
        .collect();
    assert!(urls.is_empty(), "{urls:?}");
    assert!(!page.contains(" src=") && !page.contains("<link"));
    assert!(
        !page.contains("innerHTML"),
        "server text is set with textContent only"
    );
}

fn chromium() -> Option<String> {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|name| {
            Command::new(name)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .map(str::to_owned)
}

#[tokio::test]
async fn a_real_browser_draws_every_upstream_during_an_outage() {
    let Some(browser) = chromium() else {
        assert!(
            std::env::var_os("FERRY_BROWSER_TESTS").is_none(),
            "FERRY_BROWSER_TESTS is set but no chromium is installed"
        );
        eprintln!("skipped: no chromium (CI installs it and sets FERRY_BROWSER_TESTS=1)");
        return;
    };
    let (primary, secondary, proxy) = outage().await;
    let url = proxy.admin_url("/dashboard").to_string();
    let profile = tempfile::tempdir().unwrap();
    let run = |extra: &[&str]| {
        let mut command = Command::new(&browser);
        command.args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--virtual-time-budget=8000",
            "--window-size=1280,1500",
        ]);
        command.arg(format!("--user-data-dir={}", profile.path().display()));
        command.args(extra).arg(&url);
        command
    };
    let dump = tokio::task::spawn_blocking({
        let mut command = run(&["--dump-dom"]);
        move || command.output().unwrap()
    })
    .await
    .unwrap();
    let dom = String::from_utf8_lossy(&dump.stdout);
    assert!(
        dom.contains("data-rendered=\"yes\""),
        "the page did not render its data: {dom}\n{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    for upstream in [&primary, &secondary] {
        let row = format!("data-upstream=\"{}\"", upstream.addr);
        assert!(dom.contains(&row), "no row for {row}");
    }
    assert!(
        dom.matches("<rect").count() >= 120,
        "two strips of 60 minutes drawn"
    );
    // The outage is in the data drawn: minutes of the primary's strip hold its failures (none
    // of the secondary's do), it is shown failing, and its failures are listed with their kind.
    let failures_in_row = |upstream: &FakeRegistry| -> Vec<u64> {
        let row = &dom[dom
            .find(&format!("data-upstream=\"{}\"", upstream.addr))
            .unwrap()..];
        let row = &row[..row.find("</tr>").unwrap()];
        row.split("data-failures=\"")
            .skip(1)
            .map(|rest| rest[..rest.find('"').unwrap()].parse().unwrap())
            .collect()
    };
    let primary_minutes = failures_in_row(&primary);
    assert_eq!(primary_minutes.len(), 60, "one box per minute");
    assert!(
        primary_minutes.iter().sum::<u64>() >= 2,
        "{primary_minutes:?}"
    );
    assert_eq!(failures_in_row(&secondary).iter().sum::<u64>(), 0);
    assert!(
        dom.contains(">failing ("),
        "the primary is not shown failing"
    );
    assert!(
        dom.contains("2 upstreams · 1 failing"),
        "the summary does not say one is failing"
    );
    assert!(
        dom.contains(">server_error<"),
        "the failure's kind is not listed"
    );
    // A screenshot for people (kept by CI under target/).
    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    std::fs::create_dir_all(&target).unwrap();
    let shot = target.join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    let screenshot = tokio::task::spawn_blocking({
        let mut command = run(&[&format!("--screenshot={}", shot.display())]);
        move || command.output().unwrap()
    })
    .await
    .unwrap();
    assert!(
        shot.metadata().is_ok_and(|m| m.len() > 10_000),
        "no screenshot: {}",
        String::from_utf8_lossy(&screenshot.stderr)
    );
}
