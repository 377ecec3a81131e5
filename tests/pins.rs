//! Pins that follow their tag: the admin API and the `ferry pin` CLI (tokens, bad images,
//! unknown pins), a pinned tag that moves upstream (served as the new digest only once its
//! blobs are on disk), pins under cache pressure and across a restart with the registry
//! down, replicas sharing a real Garage store, and a build host following its AZ tier.

use crate::support::garage::Garage;
use crate::support::{FakeRegistry, Fault, TestProxy, client, pseudo_random_bytes, put_image};
use ferry::oci::Digest;
use reqwest::StatusCode;
use std::path::Path;
use std::time::{Duration, Instant};

const TOKEN: &str = "pin-admin-token";

/// `GET /admin/pins`.
async fn pins(proxy: &TestProxy) -> serde_json::Value {
    let response = client()
        .get(proxy.admin_url("/admin/pins"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    serde_json::from_slice(&response.bytes().await.unwrap()).unwrap()
}

/// `POST /admin/pins` with `{"image": image}` and the token when given.
async fn pin(
    proxy: &TestProxy,
    image: &str,
    token: Option<&str>,
) -> (StatusCode, serde_json::Value) {
    let mut request = client()
        .post(proxy.admin_url("/admin/pins"))
        .header("content-type", "application/json")
        .body(serde_json::json!({ "image": image }).to_string());
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let body = response.bytes().await.unwrap();
    (status, serde_json::from_slice(&body).unwrap_or_default())
}

async fn unpin(
    proxy: &TestProxy,
    image: &str,
    token: Option<&str>,
) -> (StatusCode, serde_json::Value) {
    let path = format!(
        "/admin/pins?image={}",
        image.replace('@', "%40").replace(':', "%3A")
    );
    let mut request = client().delete(proxy.admin_url(&path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let body = response.bytes().await.unwrap();
    (status, serde_json::from_slice(&body).unwrap_or_default())
}

/// The pin named `image` in `GET /admin/pins`, if listed.
async fn pin_of(proxy: &TestProxy, image: &str) -> Option<serde_json::Value> {
    pins(proxy).await["pins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|pin| pin["image"] == image)
        .cloned()
}

/// Waits (at most 60 s) until the pin named `image` satisfies `done`; returns it.
async fn wait_for_pin(
    proxy: &TestProxy,
    image: &str,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pin = pin_of(proxy, image).await.unwrap_or_default();
        if done(&pin) {
            return pin;
        }
        assert!(
            Instant::now() < deadline,
            "pin {image} never became {what}: {pin}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_cached(proxy: &TestProxy, image: &str, digest: &Digest) -> serde_json::Value {
    let digest = digest.to_string();
    wait_for_pin(proxy, image, "cached", |pin| {
        pin["state"] == "cached" && pin["digest"] == digest.as_str()
    })
    .await
}

fn blob_on_disk(cache: &Path, digest: &Digest) -> bool {
    cache
        .join("blobs/sha256")
        .join(&digest.hex()[..2])
        .join(digest.hex())
        .is_file()
}

/// The digest ferry answers for a tag (a GET, as a client pulls it).
async fn tag_digest(proxy: &TestProxy, repository: &str, tag: &str) -> (StatusCode, String) {
    let response =
        crate::support::get_manifest(proxy, &format!("/v2/{repository}/manifests/{tag}")).await;
    let digest = response
        .headers()
        .get("docker-content-digest")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (response.status(), digest)
}

async fn blob_bytes(proxy: &TestProxy, repository: &str, digest: &Digest) -> (StatusCode, Vec<u8>) {
    let response = client()
        .get(proxy.url(&format!("/v2/{repository}/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.bytes().await.unwrap().to_vec())
}

/// Runs the real `ferry` binary off the test's runtime (the server keeps serving meanwhile).
async fn ferry_cli(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(&args)
            .env_remove("FERRY_ADMIN_TOKEN")
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn fast_pins(c: &mut ferry::config::Config) {
    c.pins.refresh = Duration::from_secs(1);
}

/// A ferry in front of `registry` whose admin mutations need `TOKEN`.
async fn proxy_with_admin_token(registry: &FakeRegistry) -> TestProxy {
    TestProxy::start_with(&[registry], |c| {
        fast_pins(c);
        c.admin_token = Some(ferry::config::AdminToken(TOKEN.into()));
    })
    .await
}

#[tokio::test]
async fn pins_are_made_listed_and_removed_through_the_admin_api_with_its_token() {
    let registry = FakeRegistry::start().await;
    let (manifest, layer, _) = put_image(&[&registry], "team/agent", "v1", 700);
    let proxy = proxy_with_admin_token(&registry).await;
    assert_eq!(pins(&proxy).await["pins"], serde_json::json!([]));

    // Mutations need the token and refuse what a web page can send; reads stay open.
    assert_eq!(pin(&proxy, "team/agent:v1", None).await.0, 401);
    assert_eq!(pin(&proxy, "team/agent:v1", Some("wrong")).await.0, 401);
    let raw_post = |headers: &[(&str, &str)], body: &'static str| {
        let mut request = client()
            .post(proxy.admin_url("/admin/pins"))
            .bearer_auth(TOKEN)
            .body(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        async move { request.send().await.unwrap().status() }
    };
    let json = ("content-type", "application/json");
    let good = r#"{"image":"team/agent:v1"}"#;
    assert_eq!(raw_post(&[("content-type", "text/plain")], good).await, 403);
    assert_eq!(
        raw_post(&[json, ("origin", "https://evil.example")], good).await,
        403
    );

    // Bad requests are the client's, with OCI error bodies.
    assert_eq!(raw_post(&[json], "image=team/agent").await, 400);
    assert_eq!(
        raw_post(&[json], r#"{"image":"team/agent:v1","extra":1}"#).await,
        400
    );
    let (status, body) = pin(&proxy, "Team/Agent:v1", Some(TOKEN)).await;
    assert_eq!(
        (status, body["errors"][0]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("NAME_INVALID"))
    );
    let (status, body) = pin(&proxy, "ghcr.io/org/tool:v1", Some(TOKEN)).await;
    assert_eq!(
        (status, body["errors"][0]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("NAME_UNKNOWN")),
        "{body}"
    );
    assert_eq!(pins(&proxy).await["pins"], serde_json::json!([]));

    // A good pin: its canonical name, cached once every blob is on this disk.
    let (status, body) = pin(&proxy, "team/agent:v1", Some(TOKEN)).await;
    assert_eq!(status, 201, "{body}");
    let image = "docker.io/team/agent:v1";
    assert_eq!(body["image"], image);
    let (status, body) = pin(&proxy, "docker.io/team/agent:v1", Some(TOKEN)).await;
    assert_eq!(
        (status, &body["added"]),
        (StatusCode::OK, &serde_json::json!(false))
    );
    let cached = wait_cached(&proxy, image, &manifest).await;
    assert!(blob_on_disk(proxy.cache_dir.path(), &layer));
    assert!(cached["last_confirmed"].as_str().is_some(), "{cached}");
    assert_eq!(cached["origin"], "api");

    // Metrics by state, and the read-only list on the registry port.
    let metrics = crate::support::get_body(proxy.admin_url("/metrics")).await;
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains("ferry_pins{state=\"cached\"} 1"),
        "{metrics}"
    );
    let listed = crate::support::get_body(proxy.url("/ferry/v1/pins")).await;
    let listed: serde_json::Value = serde_json::from_slice(&listed).unwrap();
    assert_eq!(listed["pins"][0]["image"], image);
    let write = client()
        .post(proxy.url("/ferry/v1/pins"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        write.status(),
        405,
        "the registry port's pin list is read-only"
    );

    // Unpinning: the token again, unknown pins are 404, then the list is empty.
    assert_eq!(unpin(&proxy, image, None).await.0, 401);
    let (status, body) = unpin(&proxy, "docker.io/team/other:v1", Some(TOKEN)).await;
    assert_eq!(
        (status, body["errors"][0]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("NAME_UNKNOWN"))
    );
    assert_eq!(unpin(&proxy, image, Some(TOKEN)).await.0, 200);
    assert_eq!(pins(&proxy).await["pins"], serde_json::json!([]));
}

#[tokio::test]
async fn the_pin_command_adds_waits_lists_and_removes() {
    let registry = FakeRegistry::start().await;
    let (manifest, layer, _) = put_image(&[&registry], "team/agent", "v2", 705);
    let proxy = proxy_with_admin_token(&registry).await;
    let server = proxy.admin_url("");
    let token_file = proxy.cache_dir.path().join("admin-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let token_file = token_file.display().to_string();
    let args = |rest: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = vec!["pin".into()];
        args.extend(rest.iter().map(|s| s.to_string()));
        args.extend(["--server".to_owned(), server.clone()]);
        args
    };

    let out = ferry_cli(args(&["add", "team/agent:v2"])).await;
    assert_eq!(out.status.code(), Some(2), "no token: the caller's mistake");
    assert!(String::from_utf8_lossy(&out.stderr).contains("token"));
    let out = ferry_cli(args(&["add", "Bad Name", "--token-file", &token_file])).await;
    assert_eq!(out.status.code(), Some(2));

    let out = ferry_cli(args(&[
        "add",
        "team/agent:v2",
        "--token-file",
        &token_file,
        "--wait",
    ]))
    .await;
    let stdout = crate::support::stdout_of_success(&out);
    assert!(
        stdout.contains("pinned docker.io/team/agent:v2"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("cached docker.io/team/agent:v2 ({manifest})")),
        "{stdout}"
    );
    assert!(blob_on_disk(proxy.cache_dir.path(), &layer));

    // `ferry cache ls` shows the image as pinned (the keeper's holding, not pins.json).
    let cache_dir = proxy.cache_dir.path().display().to_string();
    let out = ferry_cli(vec![
        "cache".into(),
        "ls".into(),
        "--json".into(),
        "--cache-dir".into(),
        cache_dir,
    ])
    .await;
    let listing: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let agent = listing
        .as_array()
        .unwrap()
        .iter()
        .find(|image| image["repository"] == "team/agent" && image["tag"] == "v2")
        .cloned()
        .unwrap_or_default();
    assert_eq!(agent["pinned"], true, "{listing}");

    let out = ferry_cli(args(&["ls"])).await;
    let stdout = crate::support::stdout_of_success(&out);
    assert!(
        stdout.contains("docker.io/team/agent:v2") && stdout.contains("cached"),
        "{stdout}"
    );
    let out = ferry_cli(args(&["ls", "--json"])).await;
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed["pins"][0]["digest"], manifest.to_string());

    // A pinned image is not removed from the cache behind its pin's back.
    let cache_dir = proxy.cache_dir.path().display().to_string();
    let out = ferry_cli(vec![
        "cache".into(),
        "rm".into(),
        "team/agent:v2".into(),
        "--cache-dir".into(),
        cache_dir,
    ])
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is pinned as a pin that follows its tag")
    );
    assert!(blob_on_disk(proxy.cache_dir.path(), &layer));
    // A server given without its scheme is the caller's mistake, said plainly.
    let out = ferry_cli(vec![
        "pin".into(),
        "ls".into(),
        "--server".into(),
        "127.0.0.1:5005".into(),
    ])
    .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("http://HOST:PORT"));

    let out = ferry_cli(args(&["rm", "team/agent:v2", "--token-file", &token_file])).await;
    assert!(crate::support::stdout_of_success(&out).contains("unpinned docker.io/team/agent:v2"));
    let out = ferry_cli(args(&["rm", "team/agent:v2", "--token-file", &token_file])).await;
    assert_eq!(out.status.code(), Some(2), "not pinned any more");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not pinned"));
}

#[tokio::test]
async fn a_pinned_tag_moves_only_once_its_new_image_is_on_disk() {
    let registry = FakeRegistry::start().await;
    let (first, first_layer, _) = put_image(&[&registry], "team/agent", "stable", 710);
    let proxy = TestProxy::start_with(&[&registry], |c| {
        fast_pins(c);
        // Unpinned tags would be revalidated on every request: a pin overrides that.
        c.tag_ttl = Duration::ZERO;
    })
    .await;
    let image = "docker.io/team/agent:stable";
    assert_eq!(pin(&proxy, image, None).await.0, 201);
    wait_cached(&proxy, image, &first).await;

    // A release moves the tag; its new layer cannot be fetched for now.
    let (second, second_layer, second_bytes) = put_image(&[&registry], "team/agent", "stable", 711);
    registry.fault(&second_layer.to_string(), Fault::Status(503));
    let second_text = second.to_string();
    let moving = wait_for_pin(&proxy, image, "moving", |pin| {
        pin["next"]["digest"] == second_text.as_str()
    })
    .await;
    assert_eq!(moving["digest"], first.to_string(), "{moving}");
    // Clients keep getting the image whose blobs are here.
    for _ in 0..5 {
        assert_eq!(
            tag_digest(&proxy, "team/agent", "stable").await,
            (StatusCode::OK, first.to_string())
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!blob_on_disk(proxy.cache_dir.path(), &second_layer));

    // The layer comes back: the tag moves, and never before the new layer is on disk.
    registry.clear_faults();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, digest) = tag_digest(&proxy, "team/agent", "stable").await;
        assert_eq!(status, 200);
        if digest == second_text {
            assert!(
                blob_on_disk(proxy.cache_dir.path(), &second_layer),
                "the tag moved before its layer was on disk"
            );
            break;
        }
        assert_eq!(digest, first.to_string());
        assert!(
            Instant::now() < deadline,
            "the pinned tag never moved to {second}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let moved = wait_cached(&proxy, image, &second).await;
    assert_eq!(
        moved["previous"],
        serde_json::json!([first.to_string()]),
        "pin_keep 1 keeps the previous image"
    );
    assert!(blob_on_disk(proxy.cache_dir.path(), &first_layer));
    assert_eq!(
        blob_bytes(&proxy, "team/agent", &second_layer).await,
        (StatusCode::OK, second_bytes)
    );
    assert!(
        registry.hits_with(reqwest::Method::HEAD, "manifests/stable") >= 2,
        "the tag is re-resolved with HEADs"
    );
}

#[tokio::test]
async fn pinned_images_survive_cache_pressure_and_a_restart_with_the_registry_down() {
    let registry = FakeRegistry::start().await;
    let (manifest, layer, layer_bytes) = put_image(&[&registry], "team/agent", "v1", 720);
    let proxy = TestProxy::start_with(&[&registry], |c| {
        fast_pins(c);
        c.cache_size = Some(500_000);
    })
    .await;
    let image = "docker.io/team/agent:v1";
    assert_eq!(pin(&proxy, image, None).await.0, 201);
    wait_cached(&proxy, image, &manifest).await;

    // Other pulls push the cache far past its bound: unpinned blobs go, the pinned stay.
    let mut others = Vec::new();
    for seed in 0..8 {
        let digest = registry.put_blob(pseudo_random_bytes(150_000, 7200 + seed));
        assert_eq!(blob_bytes(&proxy, "team/other", &digest).await.0, 200);
        others.push(digest);
    }
    let status = proxy.admin_status().await;
    assert!(
        status["cache"]["usage"]["evictions"].as_u64().unwrap() > 0,
        "{status}"
    );
    assert!(blob_on_disk(proxy.cache_dir.path(), &layer));
    assert!(
        others
            .iter()
            .any(|d| !blob_on_disk(proxy.cache_dir.path(), d))
    );

    // A restart with the registry gone: the pin is held from disk at once.
    let url = registry.url();
    let cache_dir = proxy.stop().await;
    registry.stop();
    let restarted = TestProxy::start_urls(&[url], cache_dir, fast_pins).await;
    assert_eq!(
        tag_digest(&restarted, "team/agent", "v1").await,
        (StatusCode::OK, manifest.to_string())
    );
    assert_eq!(
        blob_bytes(&restarted, "team/agent", &layer).await,
        (StatusCode::OK, layer_bytes)
    );
    let pin = wait_cached(&restarted, image, &manifest).await;
    assert!(
        pin["refresh_error"].as_str().is_some(),
        "the registry is down: {pin}"
    );
}

#[tokio::test]
async fn a_pin_made_on_one_replica_is_held_by_every_replica_sharing_the_store() {
    let garage = Garage::start().await;
    let registry = FakeRegistry::start().await;
    let (manifest, layer, layer_bytes) = put_image(&[&registry], "team/agent", "v1", 730);
    let registry_url = [registry.url()];
    let replica = || {
        let store = garage.store_config(0, "pins");
        TestProxy::start_urls(&registry_url, tempfile::tempdir().unwrap(), move |c| {
            fast_pins(c);
            c.shared_store = Some(store);
        })
    };
    let first = replica().await;
    let second = replica().await;
    let image = "docker.io/team/agent:v1";
    assert_eq!(pin(&first, image, None).await.0, 201);
    for proxy in [&first, &second] {
        let held = wait_cached(proxy, image, &manifest).await;
        assert_eq!(held["origin"], "shared_store");
        assert!(blob_on_disk(proxy.cache_dir.path(), &layer));
    }
    // Wait for the first replica's uploads (two blobs, the manifest, the tag record).
    let deadline = Instant::now() + Duration::from_secs(30);
    while first.admin_status().await["shared_store"]["uploads"]
        .as_u64()
        .unwrap_or(0)
        < 4
    {
        assert!(
            Instant::now() < deadline,
            "the pinned image never reached the store"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A replica started later, with an empty disk, catches up from the store alone.
    let layer_fetches = registry.hits_with(reqwest::Method::GET, &layer.to_string());
    let third = replica().await;
    wait_cached(&third, image, &manifest).await;
    assert!(blob_on_disk(third.cache_dir.path(), &layer));
    assert_eq!(
        registry.hits_with(reqwest::Method::GET, &layer.to_string()),
        layer_fetches,
        "the late replica took the pinned layer from the store"
    );

    // The registry and the store both down: every replica serves the pinned image.
    registry.stop();
    let mut garage = garage;
    garage.nodes[0].kill();
    for proxy in [&first, &second, &third] {
        assert_eq!(
            tag_digest(proxy, "team/agent", "v1").await,
            (StatusCode::OK, manifest.to_string())
        );
        assert_eq!(
            blob_bytes(proxy, "team/agent", &layer).await,
            (StatusCode::OK, layer_bytes.clone())
        );
    }
    // Unpinning needs the store, which is down: a clear 503, and the pin stays.
    let (status, body) = unpin(&first, image, None).await;
    assert_eq!(status, 503, "{body}");
    assert!(pin_of(&first, image).await.is_some());
}

#[tokio::test]
async fn a_build_host_holds_what_its_az_tier_pins_and_survives_an_az_outage() {
    let registry = FakeRegistry::start().await;
    let (agent, agent_layer, agent_bytes) = put_image(&[&registry], "team/agent", "v1", 740);
    let (tool, _, _) = put_image(&[&registry], "team/tool", "v1", 741);
    let az = TestProxy::start_with(&[&registry], fast_pins).await;
    for image in ["docker.io/team/agent:v1", "docker.io/team/tool:v1"] {
        assert_eq!(pin(&az, image, None).await.0, 201);
    }
    wait_cached(&az, "docker.io/team/agent:v1", &agent).await;
    wait_cached(&az, "docker.io/team/tool:v1", &tool).await;
    let layer_fetches = registry.hits_with(reqwest::Method::GET, &agent_layer.to_string());

    let host = TestProxy::start_urls(
        &[az.url(""), registry.url()],
        tempfile::tempdir().unwrap(),
        |c| {
            fast_pins(c);
            c.upstreams[0].group = Some("az".into());
            c.pins.from_group = Some("az".into());
        },
    )
    .await;
    let held = wait_cached(&host, "docker.io/team/agent:v1", &agent).await;
    assert_eq!(held["origin"], "pins_from");
    wait_cached(&host, "docker.io/team/tool:v1", &tool).await;
    assert!(blob_on_disk(host.cache_dir.path(), &agent_layer));
    assert_eq!(
        registry.hits_with(reqwest::Method::GET, &agent_layer.to_string()),
        layer_fetches,
        "the host took the layer from its AZ tier"
    );
    // The host's copy of the AZ tier's pin is removed at the AZ tier, not here; pinning it
    // again here changes nothing.
    assert_eq!(unpin(&host, "docker.io/team/agent:v1", None).await.0, 409);
    let (status, body) = pin(&host, "team/agent:v1", None).await;
    assert_eq!(
        (status, &body["added"]),
        (StatusCode::OK, &serde_json::json!(false))
    );
    assert_eq!(
        pin_of(&host, "docker.io/team/agent:v1").await.unwrap()["origin"],
        "pins_from"
    );

    // Unpinned at the AZ tier: the host lets it go too.
    assert_eq!(unpin(&az, "docker.io/team/tool:v1", None).await.0, 200);
    let deadline = Instant::now() + Duration::from_secs(30);
    while pin_of(&host, "docker.io/team/tool:v1").await.is_some() {
        assert!(
            Instant::now() < deadline,
            "the host kept a pin its AZ tier dropped"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The AZ tier and the registry both down: the host still serves the agent image.
    az.stop().await;
    registry.stop();
    assert_eq!(
        tag_digest(&host, "team/agent", "v1").await,
        (StatusCode::OK, agent.to_string())
    );
    assert_eq!(
        blob_bytes(&host, "team/agent", &agent_layer).await,
        (StatusCode::OK, agent_bytes)
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        pin_of(&host, "docker.io/team/agent:v1").await.is_some(),
        "an unreachable AZ tier keeps its last known pins"
    );
    let listed = pins(&host).await;
    let errors = listed["pin_set_errors"].as_array().unwrap();
    assert!(
        errors
            .iter()
            .any(|e| e.as_str().unwrap().contains("group \"az\"")),
        "the list says the AZ tier's set could not be read: {listed}"
    );
}

#[tokio::test]
async fn a_pin_keeps_the_configured_platforms_and_a_digest_pin_holds_its_image() {
    let registry = FakeRegistry::start().await;
    // [index, amd64 manifest, config, layer, arm64 manifest, config, layer]
    let multi = crate::cache_tools::put_multi_arch(&registry, "team/multi", 750);
    let (single, single_layer, _) = put_image(&[&registry], "team/app", "v1", 751);
    let proxy = TestProxy::start_with(&[&registry], |c| {
        fast_pins(c);
        c.pins.platforms = vec!["linux/amd64".into()];
    })
    .await;
    assert_eq!(pin(&proxy, "team/multi:v1", None).await.0, 201);
    let held = wait_cached(&proxy, "docker.io/team/multi:v1", &multi[0]).await;
    assert_eq!(
        held["digests_held"], 4,
        "the index and the amd64 image: {held}"
    );
    assert!(blob_on_disk(proxy.cache_dir.path(), &multi[3]));
    assert!(
        !blob_on_disk(proxy.cache_dir.path(), &multi[6]),
        "arm64 is not a configured platform"
    );

    let by_digest = format!("docker.io/team/app@{single}");
    assert_eq!(pin(&proxy, &by_digest, None).await.0, 201);
    let held = wait_cached(&proxy, &by_digest, &single).await;
    assert!(blob_on_disk(proxy.cache_dir.path(), &single_layer));
    assert_eq!(
        held["last_confirmed"],
        serde_json::Value::Null,
        "a digest needs no confirmation"
    );
    assert_eq!(
        registry.hits_with(reqwest::Method::HEAD, "team/app/manifests"),
        0,
        "a digest pin is never re-resolved"
    );
}

/// A shared-store setting for a store nothing listens at (connections refused at once).
fn dead_store() -> ferry::shared::SharedStoreConfig {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    ferry::shared::SharedStoreConfig {
        url: "s3://ferry/pins".into(),
        bucket: "ferry".into(),
        prefix: "pins".into(),
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        region: Some("garage".into()),
        access_key_id: Some("GK0000".into()),
        secret_access_key: Some("secret".into()),
        request_timeout: Duration::from_secs(2),
        answer_timeout: Duration::from_secs(2),
        blob_redirect: false,
    }
}

#[tokio::test]
async fn a_replica_that_cannot_read_the_fleets_pins_says_so_rather_than_listing_none() {
    let registry = FakeRegistry::start().await;
    let proxy = TestProxy::start_with(&[&registry], |c| {
        fast_pins(c);
        c.shared_store = Some(dead_store());
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Its hosts would let go of every pin on an empty list: 503 until the set is known.
    let listed = client()
        .get(proxy.url("/ferry/v1/pins"))
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), 503);
    // Pinning needs the store: the store's failure, not the client's.
    let (status, body) = pin(&proxy, "team/agent:v1", None).await;
    assert_eq!(
        (status, body["errors"][0]["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("UNAVAILABLE")),
        "{body}"
    );
    assert_eq!(pins(&proxy).await["pins"], serde_json::json!([]));
}

#[tokio::test]
async fn a_pin_whose_new_image_cannot_be_fetched_stays_failed_and_alerts() {
    let registry = FakeRegistry::start().await;
    let (first, _, _) = put_image(&[&registry], "team/agent", "v1", 760);
    // A refresh long enough that the retries (from 5 s) come between two HEADs.
    let proxy = TestProxy::start_with(&[&registry], |c| {
        c.pins.refresh = Duration::from_secs(12);
    })
    .await;
    let image = "docker.io/team/agent:v1";
    assert_eq!(pin(&proxy, image, None).await.0, 201);
    wait_cached(&proxy, image, &first).await;
    let (second, second_layer, _) = put_image(&[&registry], "team/agent", "v1", 761);
    registry.fault(&second_layer.to_string(), Fault::Status(503));
    let second = second.to_string();
    wait_for_pin(&proxy, image, "a failed move", |pin| {
        pin["next"]["digest"] == second.as_str() && pin["next"]["state"] == "failed"
    })
    .await;
    // Past the first retry (5 s), before the next HEAD: the retry was of the new image,
    // which still fails; the pin still says so, and counts as failed for the alert.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let pin = pin_of(&proxy, image).await.unwrap();
    assert_eq!(pin["next"]["state"], "failed", "{pin}");
    assert!(
        pin["next"]["reason"]
            .as_str()
            .unwrap()
            .contains(&second_layer.to_string()),
        "{pin}"
    );
    assert_eq!(
        pin["digest"],
        first.to_string(),
        "the held image is still served"
    );
    let metrics = crate::support::get_body(proxy.admin_url("/metrics")).await;
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains("ferry_pins{state=\"failed\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn an_unreadable_pin_file_is_moved_aside_not_overwritten() {
    let registry = FakeRegistry::start().await;
    let cache = tempfile::tempdir().unwrap();
    std::fs::write(cache.path().join("followed-pins.json"), b"{not json").unwrap();
    let proxy = TestProxy::start_urls(&[registry.url()], cache, fast_pins).await;
    assert_eq!(pins(&proxy).await["pins"], serde_json::json!([]));
    let aside: Vec<String> = std::fs::read_dir(proxy.cache_dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("followed-pins.json.unreadable-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    let kept = std::fs::read(proxy.cache_dir.path().join(&aside[0])).unwrap();
    assert_eq!(kept, b"{not json");
}

#[tokio::test]
async fn a_pin_that_cannot_fit_the_cache_bound_fails_and_says_why() {
    let registry = FakeRegistry::start().await;
    // A layer of about 100 KB against an 80 KB bound (a fill reserves 64 KiB at a time).
    let (_, layer, _) = put_image(&[&registry], "team/huge", "v1", 770);
    let proxy = TestProxy::start_with(&[&registry], |c| {
        fast_pins(c);
        c.cache_size = Some(80_000);
    })
    .await;
    assert_eq!(pin(&proxy, "team/huge:v1", None).await.0, 201);
    let failed = wait_for_pin(&proxy, "docker.io/team/huge:v1", "failed", |pin| {
        pin["state"] == "failed"
    })
    .await;
    let reason = failed["reason"].as_str().unwrap();
    assert!(
        reason.contains(&layer.to_string()) && reason.contains("cache_size"),
        "{reason}"
    );
    assert!(!blob_on_disk(proxy.cache_dir.path(), &layer));
}
