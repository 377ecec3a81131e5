//! Upstream authentication and redirects: the Docker token flow (anonymous and with basic
//! credentials), token caching, and redirects that never carry the registry's token away.

use crate::support::get_url;
use crate::support::{FakeRegistry, TestProxy, basic, put_image};
use ferry::config::Credentials;
use reqwest::StatusCode;

#[tokio::test]
async fn anonymous_token_flow_and_token_reuse() {
    let upstream = FakeRegistry::start().await;
    let (manifest, layer_digest, layer) = put_image(&[&upstream], "private/app", "v1", 30);
    upstream.require_token("tok-anon", None);
    let proxy = TestProxy::start(&[&upstream]).await;
    let response = get_url(proxy.url("/v2/private/app/manifests/v1")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(manifest.matches(&response.bytes().await.unwrap()));
    let blob = get_url(proxy.url(&format!("/v2/private/app/blobs/{layer_digest}"))).await;
    assert_eq!(blob.bytes().await.unwrap(), layer);
    assert_eq!(
        upstream.hits("/token"),
        1,
        "the token is cached and reused for the same scope"
    );
    let token_request = upstream
        .requests()
        .into_iter()
        .find(|r| r.path == "/token")
        .unwrap();
    let query = token_request.query.unwrap();
    assert!(
        query.contains("service=fake") && query.contains("scope=repository%3Aprivate%2Fapp%3Apull"),
        "{query}"
    );
}

#[tokio::test]
async fn token_flow_with_basic_credentials() {
    let upstream = FakeRegistry::start().await;
    let (manifest, _, _) = put_image(&[&upstream], "private/app", "v1", 31);
    upstream.require_token("tok-ci", Some(("ci", "s3cret")));

    let anonymous = TestProxy::start(&[&upstream]).await;
    let response = get_url(anonymous.url("/v2/private/app/manifests/v1")).await;
    assert_eq!(
        response.status(),
        StatusCode::BAD_GATEWAY,
        "without credentials the token is refused"
    );

    let proxy = TestProxy::start_with(&[&upstream], |c| {
        c.upstreams[0].credentials = Some(Credentials::fixed("ci", "s3cret"))
    })
    .await;
    let response = get_url(proxy.url("/v2/private/app/manifests/v1")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(manifest.matches(&response.bytes().await.unwrap()));
    let sent = upstream
        .requests()
        .into_iter()
        .filter(|r| r.path == "/token")
        .last()
        .unwrap();
    assert_eq!(
        sent.headers["authorization"],
        basic("ci", "s3cret").as_str()
    );
}

#[tokio::test]
async fn redirects_are_followed_without_the_registry_token() {
    let registry = FakeRegistry::start().await;
    let object_store = FakeRegistry::start().await;
    let (_, layer_digest, layer) = put_image(&[&registry], "r/x", "v1", 32);
    object_store.put_blob(layer.clone());
    registry.require_token("tok-secret", None);
    registry.redirect_blobs_to(&object_store);
    let proxy = TestProxy::start(&[&registry]).await;
    let blob = get_url(proxy.url(&format!("/v2/r/x/blobs/{layer_digest}"))).await;
    assert_eq!(blob.status(), StatusCode::OK);
    assert_eq!(blob.bytes().await.unwrap(), layer);
    let at_store = object_store.requests();
    assert_eq!(at_store.len(), 1);
    assert!(at_store[0].path.starts_with("/objects/"));
    assert!(
        at_store[0].headers.get("authorization").is_none(),
        "the registry token leaked to another host"
    );
    // And the registry itself did get the token.
    let at_registry = registry
        .requests()
        .into_iter()
        .filter(|r| r.path.contains("/blobs/"))
        .last()
        .unwrap();
    assert_eq!(at_registry.headers["authorization"], "Bearer tok-secret");
}

#[tokio::test]
async fn an_upstream_limited_to_https_redirects_refuses_a_plain_http_one() {
    // What direct registries get: a client-named host must not bounce ferry to plain HTTP.
    let registry = FakeRegistry::start().await;
    let object_store = FakeRegistry::start().await;
    let (_, layer_digest, layer) = put_image(&[&registry], "r/y", "v1", 34);
    object_store.put_blob(layer);
    registry.redirect_blobs_to(&object_store);
    let proxy = TestProxy::start_with(&[&registry], |c| {
        c.upstreams[0].https_redirects_only = true;
    })
    .await;
    let blob = get_url(proxy.url(&format!("/v2/r/y/blobs/{layer_digest}"))).await;
    assert!(blob.status().is_server_error(), "{}", blob.status());
    let body = blob.text().await.unwrap();
    assert!(body.contains("redirect"), "{body}");
    assert_eq!(
        object_store.requests().len(),
        0,
        "the redirect was followed"
    );
}

#[tokio::test]
async fn a_credential_helper_supplies_the_password_and_reruns_when_refused() {
    let upstream = FakeRegistry::start().await;
    let (manifest, layer_digest, layer) = put_image(&[&upstream], "private/ecr", "v1", 33);
    upstream.require_token("tok-ecr", Some(("AWS", "first-password")));
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "first-password\n").unwrap();
    let command = format!("cat {}", secret.display());
    let proxy = TestProxy::start_with(&[&upstream], |c| {
        c.upstreams[0].credentials = Some(Credentials {
            username: "AWS".into(),
            password: String::new(),
            command: Some(std::sync::Arc::new(ferry::config::PasswordCommand::new(
                &command,
                std::time::Duration::from_secs(3600),
            ))),
        })
    })
    .await;
    let response = get_url(proxy.url("/v2/private/ecr/manifests/v1")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(manifest.matches(&response.bytes().await.unwrap()));
    // The password rotates; the cached helper output is refused once, then the helper runs again.
    upstream.require_token("tok-ecr-2", Some(("AWS", "second-password")));
    std::fs::write(&secret, "second-password\n").unwrap();
    let response = get_url(proxy.url(&format!("/v2/private/ecr/blobs/{layer_digest}"))).await;
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "re-ran the helper after the refusal"
    );
    assert_eq!(response.bytes().await.unwrap(), layer);
}
