//! Many registries in one ferry: routing by containerd's `?ns=` and by a registry path
//! prefix, cache keys that never mix registries, unknown registries refused, and a two-tier
//! (host ferry → AZ ferry → registry) pull that fetches each blob from the registry once.

use crate::support::get_body;
use crate::support::get_url;
use crate::support::{
    FakeRegistry, TestProxy, client, direct_to, image_manifest, pseudo_random_bytes, put_image,
};
use ferry::oci::media_type::{OCI_INDEX, OCI_MANIFEST};
use reqwest::{Method, StatusCode};

fn digest_header(response: &reqwest::Response) -> String {
    response.headers()["docker-content-digest"]
        .to_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn ns_and_path_prefix_route_to_each_registry_and_caches_never_mix() {
    let hub = FakeRegistry::start().await;
    let ghcr = FakeRegistry::start().await;
    let (hub_manifest, hub_layer, hub_bytes) = put_image(&[&hub], "org/app", "v1", 2000);
    let (ghcr_manifest, ghcr_layer, ghcr_bytes) = put_image(&[&ghcr], "org/app", "v1", 2001);
    assert_ne!(hub_manifest, ghcr_manifest);
    let urls = vec![hub.url(), format!("ghcr.io={}", ghcr.url())];
    let proxy = TestProxy::start_urls(&urls, tempfile::tempdir().unwrap(), |_| {}).await;
    let get = |path: &str| client().get(proxy.url(path)).send();

    assert_eq!(
        digest_header(&get("/v2/org/app/manifests/v1?ns=docker.io").await.unwrap()),
        hub_manifest.to_string()
    );
    assert_eq!(
        digest_header(&get("/v2/org/app/manifests/v1?ns=ghcr.io").await.unwrap()),
        ghcr_manifest.to_string()
    );
    assert_eq!(
        digest_header(&get("/v2/org/app/manifests/v1").await.unwrap()),
        hub_manifest.to_string(),
        "default registry"
    );
    assert_eq!(
        digest_header(&get("/v2/ghcr.io/org/app/manifests/v1").await.unwrap()),
        ghcr_manifest.to_string(),
        "path prefix"
    );
    assert_eq!(
        digest_header(
            &get("/v2/org/app/manifests/v1?ns=index.docker.io")
                .await
                .unwrap()
        ),
        hub_manifest.to_string(),
        "alias"
    );
    let body = get(&format!("/v2/org/app/blobs/{ghcr_layer}?ns=ghcr.io"))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(body, ghcr_bytes);
    let body = get(&format!("/v2/org/app/blobs/{hub_layer}?ns=docker.io"))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(body, hub_bytes);
    assert_eq!(
        ghcr.hits(&format!("/blobs/{hub_layer}")),
        0,
        "each registry only asked for its own content"
    );

    // With both registries down, each tag still resolves to its own registry's digest.
    hub.stop();
    ghcr.stop();
    let mut config = proxy.config.clone();
    config.tag_ttl = std::time::Duration::ZERO;
    let cache = proxy.stop().await;
    let proxy =
        TestProxy::start_urls(&urls, cache, |c| c.tag_ttl = std::time::Duration::ZERO).await;
    let hub_tag = get_url(proxy.url("/v2/org/app/manifests/v1?ns=docker.io")).await;
    let ghcr_tag = get_url(proxy.url("/v2/org/app/manifests/v1?ns=ghcr.io")).await;
    assert_eq!(digest_header(&hub_tag), hub_manifest.to_string());
    assert_eq!(digest_header(&ghcr_tag), ghcr_manifest.to_string());
}

#[tokio::test]
async fn an_unknown_registry_gets_a_clear_error() {
    let hub = FakeRegistry::start().await;
    let ghcr = FakeRegistry::start().await;
    let (manifest, _, _) = put_image(&[&hub], "org/app", "v1", 2002);
    // A single-registry ferry serves whatever ns the client names (its hosts.toml host).
    let single = TestProxy::start(&[&hub]).await;
    let response = get_url(single.url("/v2/org/app/manifests/v1?ns=registry.internal:5000")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(digest_header(&response), manifest.to_string());
    // With several registries, an unknown one is refused.
    let urls = vec![hub.url(), format!("ghcr.io={}", ghcr.url())];
    let proxy = TestProxy::start_urls(&urls, tempfile::tempdir().unwrap(), |_| {}).await;
    let hub_requests = hub.requests().len();
    let response = get_url(proxy.url("/v2/org/app/manifests/v1?ns=quay.io")).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let body = response.text().await.unwrap();
    assert!(
        body.contains("NAME_UNKNOWN") && body.contains("quay.io"),
        "{body}"
    );
    assert_eq!(
        hub.requests().len(),
        hub_requests,
        "an unknown registry reaches no upstream"
    );
    assert_eq!(ghcr.requests().len(), 0);
}

#[tokio::test]
async fn a_two_tier_pull_fetches_each_blob_from_the_registry_once() {
    let registry = FakeRegistry::start().await;
    // A multi-arch image on "ghcr.io".
    let mut children = Vec::new();
    let mut blobs = Vec::new();
    for (i, arch) in ["amd64", "arm64"].iter().enumerate() {
        let config = format!(r#"{{"architecture":"{arch}"}}"#).into_bytes();
        let layer = pseudo_random_bytes(700_000, 2100 + i as u64);
        let config_digest = registry.put_blob(config.clone());
        let layer_digest = registry.put_blob(layer.clone());
        let manifest = image_manifest(
            &(config_digest.clone(), config.len()),
            &[(layer_digest.clone(), layer.len())],
        );
        let digest = registry.put_manifest("org/tool", None, OCI_MANIFEST, manifest.clone());
        children.push(serde_json::json!({"mediaType": OCI_MANIFEST, "digest": digest.to_string(), "size": manifest.len(), "platform": {"os": "linux", "architecture": arch}}));
        blobs.push((digest, config_digest, layer_digest));
    }
    let index =
        serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children})
            .to_string();
    registry.put_manifest("org/tool", Some("v2"), OCI_INDEX, index);

    let az = TestProxy::start_urls(
        &[format!("ghcr.io={}", registry.url())],
        tempfile::tempdir().unwrap(),
        |_| {},
    )
    .await;
    let az_url = format!("http://{}", az.server.as_ref().unwrap().addr);
    let host_a = TestProxy::start_urls(
        &[format!("ghcr.io={az_url}")],
        tempfile::tempdir().unwrap(),
        |_| {},
    )
    .await;
    let host_b = TestProxy::start_urls(
        &[format!("ghcr.io={az_url}")],
        tempfile::tempdir().unwrap(),
        |_| {},
    )
    .await;
    for host in [&host_a, &host_b] {
        let index = get_url(host.url("/v2/org/tool/manifests/v2?ns=ghcr.io")).await;
        assert_eq!(index.status(), StatusCode::OK);
        for (manifest, config, layer) in &blobs {
            let response =
                get_url(host.url(&format!("/v2/org/tool/manifests/{manifest}?ns=ghcr.io"))).await;
            assert!(manifest.matches(&response.bytes().await.unwrap()));
            for blob in [config, layer] {
                let body =
                    get_body(host.url(&format!("/v2/org/tool/blobs/{blob}?ns=ghcr.io"))).await;
                assert!(blob.matches(&body));
            }
        }
    }
    for (manifest, config, layer) in &blobs {
        for blob in [config, layer] {
            assert_eq!(
                registry.hits_with(Method::GET, &format!("/blobs/{blob}")),
                1,
                "blob {blob} fetched once at the registry"
            );
        }
        assert_eq!(
            registry.hits_with(Method::GET, &format!("/manifests/{manifest}")),
            1
        );
    }
    // The lower tier told the upper which registry it meant.
    assert!(az.rehash_cache().iter().all(|(_, ok)| *ok));
}

#[tokio::test]
async fn client_authentication_for_a_shared_cache() {
    let upstream = FakeRegistry::start().await;
    let (manifest, _, _) = put_image(&[&upstream], "shared/app", "v1", 2200);
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    std::fs::write(&users, "ci:s3cret\n").unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "robot-token\n").unwrap();
    let auth = ferry::server::client_auth::ClientAuth::load(Some(&tokens), Some(&users)).unwrap();
    let proxy = TestProxy::start_with(&[&upstream], |c| {
        c.client_auth = Some(std::sync::Arc::new(auth))
    })
    .await;
    let url = proxy.url("/v2/shared/app/manifests/v1");

    let refused = get_url(proxy.url("/v2/")).await;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        refused.headers()["www-authenticate"],
        "Basic realm=\"ferry\""
    );
    assert!(refused.text().await.unwrap().contains("UNAUTHORIZED"));
    let wrong = client()
        .get(&url)
        .basic_auth("ci", Some("nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        upstream.requests().len(),
        0,
        "refused requests never reach an upstream"
    );

    let user = client()
        .get(&url)
        .basic_auth("ci", Some("s3cret"))
        .send()
        .await
        .unwrap();
    assert_eq!(user.status(), StatusCode::OK);
    assert_eq!(digest_header(&user), manifest.to_string());
    let robot = client()
        .get(&url)
        .bearer_auth("robot-token")
        .send()
        .await
        .unwrap();
    assert_eq!(robot.status(), StatusCode::OK);
}

fn self_signed(
    dir: &std::path::Path,
    label: &str,
) -> (std::path::PathBuf, std::path::PathBuf, reqwest::Certificate) {
    let rcgen::CertifiedKey { cert, signing_key } = rcgen::generate_simple_self_signed(vec![
        "127.0.0.1".to_owned(),
        format!("{label}.ferry.test"),
    ])
    .unwrap();
    let cert_path = dir.join(format!("{label}.crt"));
    let key_path = dir.join(format!("{label}.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, signing_key.serialize_pem()).unwrap();
    (
        cert_path,
        key_path,
        reqwest::Certificate::from_pem(cert.pem().as_bytes()).unwrap(),
    )
}

#[tokio::test]
async fn tls_with_http2_and_reload_without_restart() {
    let upstream = FakeRegistry::start().await;
    let (manifest, _, _) = put_image(&[&upstream], "tls/app", "v1", 2300);
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, first_ca) = self_signed(dir.path(), "first");
    let served_cert = dir.path().join("served.crt");
    let served_key = dir.path().join("served.key");
    std::fs::copy(&cert, &served_cert).unwrap();
    std::fs::copy(&key, &served_key).unwrap();
    let proxy = TestProxy::start_with(&[&upstream], |c| {
        c.tls = Some((served_cert.clone(), served_key.clone()))
    })
    .await;
    let url = format!(
        "https://{}/v2/tls/app/manifests/v1",
        proxy.server.as_ref().unwrap().addr
    );
    let trusting = |ca: reqwest::Certificate| {
        reqwest::Client::builder()
            .tls_certs_only([ca])
            .build()
            .unwrap()
    };

    let response = trusting(first_ca.clone()).get(&url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.version(),
        reqwest::Version::HTTP_2,
        "HTTP/2 by ALPN"
    );
    assert_eq!(digest_header(&response), manifest.to_string());
    // Plain HTTP on the TLS port is refused.
    let plain = client()
        .get(url.replace("https://", "http://"))
        .send()
        .await;
    assert!(
        !plain.is_ok_and(|r| r.status().is_success()),
        "plain HTTP is not served on the TLS port"
    );

    // Replace the certificate files: the new certificate is served without a restart.
    let (cert2, key2, second_ca) = self_signed(dir.path(), "second");
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::copy(&cert2, &served_cert).unwrap();
    std::fs::copy(&key2, &served_key).unwrap();
    let mut reloaded = false;
    for _ in 0..80 {
        if let Ok(response) = trusting(second_ca.clone()).get(&url).send().await {
            assert_eq!(response.status(), StatusCode::OK);
            reloaded = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(reloaded, "the new certificate was not picked up");
    assert!(
        trusting(first_ca).get(&url).send().await.is_err(),
        "the old certificate is gone"
    );
}

#[tokio::test]
async fn direct_registry_over_tls_with_a_private_ca() {
    // The "registry" is a TLS ferry (certificate from a private CA) in front of a fake one.
    let origin = FakeRegistry::start().await;
    let (manifest, layer, layer_bytes) = put_image(&[&origin], "direct/app", "v1", 2400);
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, _) = self_signed(dir.path(), "direct");
    let registry_side =
        TestProxy::start_with(&[&origin], |c| c.tls = Some((cert.clone(), key))).await;
    let registry = format!(
        "127.0.0.1:{}",
        registry_side.server.as_ref().unwrap().addr.port()
    );
    let ca = ferry::config::UpstreamCa::load(&cert).unwrap();
    let hub = FakeRegistry::start().await;
    let proxy = TestProxy::start_with(&[&hub], |c| {
        c.direct = Some(direct_to(&[&registry], Some(ca), true))
    })
    .await;

    let response = get_url(proxy.url(&format!("/v2/direct/app/manifests/v1?ns={registry}"))).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(digest_header(&response), manifest.to_string());
    let body = get_body(proxy.url(&format!("/v2/direct/app/blobs/{layer}?ns={registry}"))).await;
    assert_eq!(body.as_ref(), layer_bytes.as_slice());
    // The configured default registry is unaffected, and other registries are still refused.
    assert_eq!(hub.hits("/v2/direct/app/manifests/v1"), 0);
    let refused = get_url(proxy.url("/v2/direct/app/manifests/v1?ns=other.example")).await;
    assert_eq!(refused.status(), StatusCode::NOT_FOUND);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "NAME_UNKNOWN");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains(&registry),
        "the message names the allowed pattern: {body}"
    );
    // The direct upstream shows in /status under its registry.
    let status = proxy.admin_status().await;
    let direct: Vec<_> = status["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|u| u["registry"] == registry.as_str())
        .collect();
    assert_eq!(direct.len(), 1, "{status}");
    assert_eq!(direct[0]["url"], format!("https://{registry}/"));
}

#[tokio::test]
async fn direct_registry_without_its_ca_is_an_upstream_failure_not_a_client_error() {
    let origin = FakeRegistry::start().await;
    put_image(&[&origin], "direct/app", "v1", 2401);
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, _) = self_signed(dir.path(), "untrusted");
    let registry_side = TestProxy::start_with(&[&origin], |c| c.tls = Some((cert, key))).await;
    let registry = format!(
        "127.0.0.1:{}",
        registry_side.server.as_ref().unwrap().addr.port()
    );
    let hub = FakeRegistry::start().await;
    let proxy = TestProxy::start_with(&[&hub], |c| {
        c.direct = Some(direct_to(&[&registry, "*"], None, true))
    })
    .await;

    let response = get_url(proxy.url(&format!("/v2/direct/app/manifests/v1?ns={registry}"))).await;
    assert_eq!(
        response.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "certificate not trusted: the upstream is unreachable"
    );
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains(&registry),
        "{body}"
    );
    // A name that is not a registry host never becomes an upstream URL, and `*` never
    // matches an IP address or localhost.
    for ns in [
        "evil.example%2F..%2Fx",
        "127.0.0.2:5000",
        "localhost:5000",
        "2130706433",
    ] {
        let response = get_url(proxy.url(&format!("/v2/direct/app/manifests/v1?ns={ns}"))).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{ns}");
    }
}

#[tokio::test]
async fn client_access_rules_limit_a_user_to_its_registries() {
    let hub = FakeRegistry::start().await;
    let ghcr = FakeRegistry::start().await;
    let (_, _, _) = put_image(&[&hub], "org/app", "v1", 2500);
    let (ghcr_manifest, _, _) = put_image(&[&ghcr], "org/app", "v1", 2501);
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    std::fs::write(&users, "ci:pw\nops:pw2\n").unwrap();
    let mut auth = ferry::server::client_auth::ClientAuth::load(None, Some(&users)).unwrap();
    auth.restrict("ci", vec!["ghcr.io".into()]).unwrap();
    let urls = vec![hub.url(), format!("ghcr.io={}", ghcr.url())];
    let proxy = TestProxy::start_urls(&urls, tempfile::tempdir().unwrap(), |c| {
        c.client_auth = Some(std::sync::Arc::new(auth))
    })
    .await;
    let get = |user: &'static str, password: &'static str, path: &str| {
        client()
            .get(proxy.url(path))
            .basic_auth(user, Some(password))
            .send()
    };

    let allowed = get("ci", "pw", "/v2/org/app/manifests/v1?ns=ghcr.io")
        .await
        .unwrap();
    assert_eq!(allowed.status(), StatusCode::OK);
    assert_eq!(digest_header(&allowed), ghcr_manifest.to_string());
    let allowed_by_prefix = get("ci", "pw", "/v2/ghcr.io/org/app/manifests/v1")
        .await
        .unwrap();
    assert_eq!(allowed_by_prefix.status(), StatusCode::OK);

    let denied = get("ci", "pw", "/v2/org/app/manifests/v1").await.unwrap();
    assert_eq!(denied.status(), StatusCode::FORBIDDEN);
    let body: serde_json::Value = denied.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "DENIED");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("docker.io"),
        "{body}"
    );
    assert_eq!(
        hub.requests().len(),
        0,
        "a denied pull never reaches the upstream"
    );

    let unrestricted = get("ops", "pw2", "/v2/org/app/manifests/v1").await.unwrap();
    assert_eq!(unrestricted.status(), StatusCode::OK);
}

/// Finding 1 of the tenant-safety review: a user limited to registry E used to get G's
/// private manifest and blob by asking for their digests under E's name.
#[tokio::test]
async fn client_access_follows_provenance_not_the_digest() {
    let e = FakeRegistry::start().await;
    let g = FakeRegistry::start().await;
    let (manifest, layer, layer_bytes) = put_image(&[&g], "priv/app", "v1", 2600);
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    std::fs::write(&users, "alice:pw\nbob:pw\ncarol:pw\n").unwrap();
    let auth = || {
        let mut auth = ferry::server::client_auth::ClientAuth::load(None, Some(&users)).unwrap();
        auth.restrict("alice", vec!["e.example".into()]).unwrap();
        auth.restrict("bob", vec!["g.example".into()]).unwrap();
        auth.restrict("carol", vec!["e.example".into(), "g.example".into()])
            .unwrap();
        std::sync::Arc::new(auth)
    };
    let urls = vec![
        format!("e.example={}", e.url()),
        format!("g.example={}", g.url()),
    ];
    let auth_now = auth();
    let proxy = TestProxy::start_urls(&urls, tempfile::tempdir().unwrap(), |c| {
        c.client_auth = Some(auth_now)
    })
    .await;
    let request = |method: reqwest::Method, user: &'static str, path: String| {
        client()
            .request(method, proxy.url(&path))
            .basic_auth(user, Some("pw"))
            .send()
    };
    let get = |user, path: String| request(reqwest::Method::GET, user, path);

    // Bob pulls his image from G: it is cached.
    assert_eq!(
        get("bob", "/v2/g.example/priv/app/manifests/v1".into())
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let blob = get("bob", format!("/v2/g.example/priv/app/blobs/{layer}"))
        .await
        .unwrap();
    assert_eq!(blob.status(), StatusCode::OK);
    assert_eq!(blob.bytes().await.unwrap(), layer_bytes);

    // Alice knows the digests but not G: under E's name, E is asked and says no.
    let leaks = [
        format!("/v2/e.example/nothing/here/manifests/{manifest}"),
        format!("/v2/e.example/nothing/here/blobs/{layer}"),
    ];
    for path in &leaks {
        for method in [reqwest::Method::GET, reqwest::Method::HEAD] {
            let response = request(method.clone(), "alice", path.clone())
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::NOT_FOUND, "{method} {path}");
        }
    }
    let body: serde_json::Value = get("alice", leaks[1].clone())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["errors"][0]["code"], "BLOB_UNKNOWN", "{body}");
    let asked_e = |suffix: &str| {
        e.requests()
            .iter()
            .filter(|r| r.method == reqwest::Method::HEAD && r.path.ends_with(suffix))
            .count()
    };
    assert!(asked_e(&format!("manifests/{manifest}")) >= 1);
    assert!(asked_e(&format!("blobs/{layer}")) >= 1);

    // Once E has the same image, Alice gets it, confirmed once, then from the record.
    put_image(&[&e], "nothing/here", "v1", 2600);
    for _ in 0..2 {
        let blob = get("alice", leaks[1].clone()).await.unwrap();
        assert_eq!(blob.status(), StatusCode::OK);
        assert_eq!(blob.bytes().await.unwrap(), layer_bytes);
    }
    assert_eq!(
        asked_e(&format!("blobs/{layer}")),
        4,
        "three refused confirmations, then one that passed"
    );
    let gets_of_layer = |registry: &FakeRegistry| {
        registry
            .requests()
            .iter()
            .filter(|r| {
                r.method == reqwest::Method::GET && r.path.ends_with(&format!("blobs/{layer}"))
            })
            .count()
    };
    assert_eq!(gets_of_layer(&e), 0, "the bytes came from the cache");

    // The record survives a restart: with both registries gone, Carol (E and G) still
    // gets what G served, and nobody is asked.
    let cache_dir = proxy.stop().await;
    drop(e);
    drop(g);
    let proxy = TestProxy::start_urls(&urls, cache_dir, |c| c.client_auth = Some(auth())).await;
    let blob = client()
        .get(proxy.url(&format!("/v2/g.example/priv/app/blobs/{layer}")))
        .basic_auth("carol", Some("pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(blob.status(), StatusCode::OK);
    let manifest_by_digest = client()
        .get(proxy.url(&format!("/v2/e.example/x/y/manifests/{manifest}")))
        .basic_auth("carol", Some("pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        manifest_by_digest.status(),
        StatusCode::OK,
        "G served it and Carol may read G"
    );
}

/// A tag list's next-page `Link` stays in ferry's namespace for that registry (issue 19,
/// item 7): before, page 2 of `/v2/ghcr.io/org/app/tags/list?n=1` came from the default
/// registry, and an absolute link to another host went to the client as sent.
#[tokio::test]
async fn tag_list_links_stay_in_ferrys_namespace() {
    let hub = FakeRegistry::start().await;
    let ghcr = FakeRegistry::start().await;
    put_image(&[&hub], "org/app", "a1", 2700);
    put_image(&[&hub], "org/app", "a2", 2701);
    for (n, tag) in ["v1", "v2", "v3"].iter().enumerate() {
        put_image(&[&ghcr], "org/app", tag, 2710 + n as u64);
    }
    ghcr.link_tag_pages_to("https://elsewhere.example");
    let urls = vec![hub.url(), format!("ghcr.io={}", ghcr.url())];
    let proxy = TestProxy::start_urls(&urls, tempfile::tempdir().unwrap(), |_| {}).await;
    let page = |path: String| {
        let url = proxy.url(&path);
        async move {
            let response = get_url(url).await;
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            let link = response
                .headers()
                .get("link")
                .map(|v| v.to_str().unwrap().to_owned());
            let body: serde_json::Value = response.json().await.unwrap();
            (body["tags"].clone(), link)
        }
    };
    for (first, ns) in [
        ("/v2/ghcr.io/org/app/tags/list?n=1", ""),
        ("/v2/org/app/tags/list?n=1&ns=ghcr.io", "&ns=ghcr.io"),
    ] {
        let (tags, link) = page(first.to_owned()).await;
        assert_eq!(tags, serde_json::json!(["v1"]), "{first}");
        let link = link.unwrap_or_else(|| panic!("{first}: no Link"));
        let path = first.split('?').next().unwrap();
        assert_eq!(link, format!("<{path}?last=v1&n=1{ns}>; rel=\"next\""));
        let next = link
            .trim_start_matches('<')
            .split('>')
            .next()
            .unwrap()
            .to_owned();
        let (tags, _) = page(next).await;
        assert_eq!(tags, serde_json::json!(["v2"]), "page 2 of {first}");
    }
    let (_, last_page_link) = page("/v2/ghcr.io/org/app/tags/list?n=5".to_owned()).await;
    assert_eq!(last_page_link, None);
}
