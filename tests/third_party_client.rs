//! A third-party client, the `oci-client` crate, pulls an image through ferry and gets
//! exactly the upstream's bytes.

use crate::support::{FakeRegistry, TestProxy, put_image};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

#[tokio::test]
async fn oci_client_pulls_through_ferry() {
    let primary = FakeRegistry::start().await;
    let secondary = FakeRegistry::start().await;
    let (manifest_digest, layer_digest, layer) =
        put_image(&[&secondary], "thirdparty/app", "v1", 40);
    let proxy = TestProxy::start(&[&primary, &secondary]).await;
    let host = proxy.server.as_ref().unwrap().addr.to_string();
    let client = Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..Default::default()
    });
    let reference: Reference = format!("{host}/thirdparty/app:v1").parse().unwrap();
    let (manifest, digest) = client
        .pull_image_manifest(&reference, &RegistryAuth::Anonymous)
        .await
        .unwrap();
    assert_eq!(digest, manifest_digest.to_string());
    assert_eq!(manifest.layers[0].digest, layer_digest.to_string());
    let mut pulled = Vec::new();
    client
        .pull_blob(&reference, &manifest.layers[0], &mut pulled)
        .await
        .unwrap();
    assert_eq!(pulled, layer);
    assert!(
        primary.hits("/manifests/v1") >= 1,
        "the primary was asked first"
    );
}
