//! Hostile upstreams and clients (issue 11): every body ferry reads into memory has a cap,
//! and reading stops there.

use crate::support::{FakeRegistry, Fault, TestProxy, client, put_image};
use ferry::upstream::auth::MAX_TOKEN_BODY_BYTES;

/// A token server that never stops sending: ferry stops reading at the cap and fails the
/// attempt, instead of buffering until the timeout (the attack grew RSS by ~80 MB every 4 s).
#[tokio::test]
async fn an_endless_token_body_is_not_read_past_the_cap() {
    let upstream = FakeRegistry::start().await;
    put_image(&[&upstream], "private/app", "v1", 40);
    upstream.require_token("tok", None);
    upstream.fault("/token", Fault::EndlessBody);
    let proxy = TestProxy::start(&[&upstream]).await;
    let response = client()
        .get(proxy.url("/v2/private/app/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_server_error(), "{}", response.status());
    let body = response.text().await.unwrap();
    assert!(body.contains("token body longer than"), "{body}");
    // What the fake pushed is what ferry read plus socket buffers (a few MiB at most).
    let sent = upstream.endless_bytes_sent();
    assert!(
        sent < 16 * 1024 * 1024,
        "ferry read {sent} bytes of a token body capped at {MAX_TOKEN_BODY_BYTES}"
    );
}
