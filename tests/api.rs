//! The pull side of the distribution API as clients see it: ping, headers, validation
//! errors, rejected pushes, Range, tag lists, Accept merging and `?ns=`.

use crate::support::get_url;
use crate::support::{FakeRegistry, TestProxy, client, put_image};
use ferry::oci::media_type::{DOCKER_MANIFEST_LIST, DOCKER_MANIFEST_V2, OCI_INDEX, OCI_MANIFEST};
use reqwest::StatusCode;

async fn error_code(response: reqwest::Response) -> (StatusCode, String) {
    let status = response.status();
    let body: serde_json::Value = response.json().await.expect("error body is JSON");
    (
        status,
        body["errors"][0]["code"].as_str().unwrap_or("").to_owned(),
    )
}

/// Sends a GET with the path exactly as given; returns the status and body.
async fn raw_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response.split(' ').nth(1).unwrap().parse().unwrap();
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

#[tokio::test]
async fn ping_answers_with_api_version() {
    let upstream = FakeRegistry::start().await;
    let proxy = TestProxy::start(&[&upstream]).await;
    let response = get_url(proxy.url("/v2/")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["docker-distribution-api-version"],
        "registry/2.0"
    );
    assert_eq!(
        upstream.requests().len(),
        0,
        "the ping does not need an upstream"
    );
}

#[tokio::test]
async fn manifest_and_blob_headers() {
    let upstream = FakeRegistry::start().await;
    let (manifest_digest, layer_digest, layer) = put_image(&[&upstream], "team/app", "v1", 1);
    let proxy = TestProxy::start(&[&upstream]).await;
    let http = client();

    for method in [reqwest::Method::HEAD, reqwest::Method::GET] {
        let response = http
            .request(method.clone(), proxy.url("/v2/team/app/manifests/v1"))
            .header("accept", OCI_MANIFEST)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{method}");
        assert_eq!(response.headers()["content-type"], OCI_MANIFEST);
        assert_eq!(
            response.headers()["docker-content-digest"],
            manifest_digest.to_string().as_str()
        );
        let length: usize = response.headers()["content-length"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let body = response.bytes().await.unwrap();
        if method == reqwest::Method::GET {
            assert_eq!(body.len(), length);
            assert!(manifest_digest.matches(&body));
        } else {
            assert!(body.is_empty());
        }
    }

    let path = format!("/v2/team/app/blobs/{layer_digest}");
    let head = http.head(proxy.url(&path)).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(
        head.headers()["content-length"],
        layer.len().to_string().as_str()
    );
    assert_eq!(
        head.headers()["docker-content-digest"],
        layer_digest.to_string().as_str()
    );
    let get = http.get(proxy.url(&path)).send().await.unwrap();
    assert_eq!(get.status(), StatusCode::OK);
    assert_eq!(
        get.headers()["content-length"],
        layer.len().to_string().as_str()
    );
    assert_eq!(get.bytes().await.unwrap(), layer);
    // Now cached: HEAD answers from disk.
    let head = http.head(proxy.url(&path)).send().await.unwrap();
    assert_eq!(
        head.headers()["content-length"],
        layer.len().to_string().as_str()
    );
}

#[tokio::test]
async fn ranges_on_cached_and_filling_blobs() {
    let upstream = FakeRegistry::start().await;
    let (_, layer_digest, layer) = put_image(&[&upstream], "r", "t", 2);
    let proxy = TestProxy::start(&[&upstream]).await;
    let http = client();
    let path = proxy.url(&format!("/v2/r/blobs/{layer_digest}"));
    let size = layer.len();

    // The first request (a miss) already honours the range.
    let response = http
        .get(&path)
        .header("range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        response.headers()["content-range"],
        format!("bytes 10-19/{size}").as_str()
    );
    assert_eq!(response.bytes().await.unwrap(), &layer[10..20]);

    for (range, expected) in [
        ("bytes=0-0", &layer[0..1]),
        (&format!("bytes={}-", size - 5) as &str, &layer[size - 5..]),
        ("bytes=-7", &layer[size - 7..]),
        (&format!("bytes=100-{}", size * 2) as &str, &layer[100..]),
    ] {
        let response = http.get(&path).header("range", range).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(response.bytes().await.unwrap(), expected, "{range}");
    }

    let response = http
        .get(&path)
        .header("range", format!("bytes={size}-"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(
        response.headers()["content-range"],
        format!("bytes */{size}").as_str()
    );
    assert_eq!(error_code(response).await.1, "RANGE_INVALID");

    // Malformed or multi-range headers are ignored: the whole blob, 200.
    let response = http
        .get(&path)
        .header("range", "bytes=0-1,4-5")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.bytes().await.unwrap().len(), size);
}

#[tokio::test]
async fn invalid_requests_get_oci_errors_and_never_reach_upstream() {
    let upstream = FakeRegistry::start().await;
    let proxy = TestProxy::start(&[&upstream]).await;
    let http = client();
    let cases = [
        (
            "/v2/Upper/manifests/latest",
            StatusCode::BAD_REQUEST,
            "NAME_INVALID",
        ),
        (
            "/v2/a%2F..%2F..%2Fetc/manifests/latest",
            StatusCode::BAD_REQUEST,
            "NAME_INVALID",
        ),
        (
            "/v2/a/manifests/-bad-tag",
            StatusCode::BAD_REQUEST,
            "TAG_INVALID",
        ),
        (
            "/v2/a/manifests/sha256:1234",
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
        ),
        (
            "/v2/a/blobs/md5:d41d8cd98f00b204e9800998ecf8427e",
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
        ),
        (
            "/v2/a/unknown-endpoint",
            StatusCode::NOT_FOUND,
            "UNSUPPORTED",
        ),
    ];
    for (path, status, code) in cases {
        let response = http.get(proxy.url(path)).send().await.unwrap();
        assert_eq!(
            error_code(response).await,
            (status, code.to_owned()),
            "{path}"
        );
    }
    // Dot segments sent raw (HTTP clients normalise them away before sending).
    for (raw_path, code) in [
        ("/v2/a/../../../etc/manifests/latest", "NAME_INVALID"),
        (
            "/v2/../../etc/passwd/blobs/sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "NAME_INVALID",
        ),
        (
            "/v2/a/blobs/sha256:../../../../../etc/passwd",
            "DIGEST_INVALID",
        ),
    ] {
        let (status, body) = raw_get(proxy.server.as_ref().unwrap().addr, raw_path).await;
        assert_eq!(status, 400, "{raw_path}");
        assert!(body.contains(code), "{raw_path}: {body}");
    }
    assert_eq!(upstream.requests().len(), 0);
    // Nothing was created outside the cache's own directories.
    let entries: Vec<_> = std::fs::read_dir(proxy.cache_dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    for entry in entries {
        assert!(
            [
                "blobs",
                "manifests",
                "tags",
                "tmp",
                "quarantine",
                "server.lock"
            ]
            .contains(&entry.as_str()),
            "{entry}"
        );
    }
}

#[tokio::test]
async fn pushes_and_deletes_are_rejected() {
    let upstream = FakeRegistry::start().await;
    let proxy = TestProxy::start(&[&upstream]).await;
    let http = client();
    let digest = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    let cases = [
        (reqwest::Method::PUT, "/v2/a/manifests/latest".to_owned()),
        (reqwest::Method::DELETE, "/v2/a/manifests/latest".to_owned()),
        (reqwest::Method::DELETE, format!("/v2/a/blobs/{digest}")),
        (reqwest::Method::POST, "/v2/a/blobs/uploads/".to_owned()),
        (
            reqwest::Method::PATCH,
            "/v2/a/blobs/uploads/some-uuid".to_owned(),
        ),
        (
            reqwest::Method::PUT,
            "/v2/a/blobs/uploads/some-uuid?digest=x".to_owned(),
        ),
        (
            reqwest::Method::GET,
            "/v2/a/blobs/uploads/some-uuid".to_owned(),
        ),
    ];
    for (method, path) in cases {
        let response = http
            .request(method.clone(), proxy.url(&path))
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(
            error_code(response).await,
            (StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED".to_owned()),
            "{method} {path}"
        );
    }
    assert_eq!(upstream.requests().len(), 0);
}

#[tokio::test]
async fn unknown_content_is_404_with_the_right_code() {
    let upstream = FakeRegistry::start().await;
    let proxy = TestProxy::start(&[&upstream]).await;
    let http = client();
    let response = http
        .get(proxy.url("/v2/a/manifests/missing"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(response).await,
        (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN".to_owned())
    );
    let digest = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    let response = http
        .get(proxy.url(&format!("/v2/a/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(response).await,
        (StatusCode::NOT_FOUND, "BLOB_UNKNOWN".to_owned())
    );
    let response = http
        .head(proxy.url(&format!("/v2/a/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn accept_lines_are_merged_and_forwarded_and_ns_is_accepted() {
    let upstream = FakeRegistry::start().await;
    let index = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []})
        .to_string();
    let digest = upstream.put_manifest("lib/x", Some("1"), OCI_INDEX, index.clone());
    let proxy = TestProxy::start(&[&upstream]).await;
    // skopeo style: six separate Accept lines.
    let response = client()
        .get(proxy.url("/v2/lib/x/manifests/1?ns=docker.io"))
        .header("accept", OCI_MANIFEST)
        .header("accept", DOCKER_MANIFEST_V2)
        .header("accept", DOCKER_MANIFEST_LIST)
        .header("accept", OCI_INDEX)
        .header(
            "accept",
            "application/vnd.docker.distribution.manifest.v1+prettyjws",
        )
        .header(
            "accept",
            "application/vnd.docker.distribution.manifest.v1+json",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], OCI_INDEX);
    assert_eq!(
        response.headers()["docker-content-digest"],
        digest.to_string().as_str()
    );
    let forwarded: Vec<String> = upstream.requests()[0]
        .headers
        .get_all("accept")
        .iter()
        .flat_map(|v| {
            v.to_str()
                .unwrap()
                .split(',')
                .map(|s| s.trim().to_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    for expected in [
        OCI_MANIFEST,
        DOCKER_MANIFEST_V2,
        DOCKER_MANIFEST_LIST,
        OCI_INDEX,
    ] {
        assert!(
            forwarded.iter().any(|f| f == expected),
            "{expected} not in {forwarded:?}"
        );
    }
    // containerd style: by digest with "<type>, */*".
    let response = client()
        .get(proxy.url(&format!("/v2/lib/x/manifests/{digest}?ns=docker.io")))
        .header("accept", format!("{OCI_INDEX}, */*"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.unwrap(), index);
}

#[tokio::test]
async fn docker_schema2_and_manifest_lists_keep_their_types() {
    let upstream = FakeRegistry::start().await;
    let list =
        serde_json::json!({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST_LIST, "manifests": []})
            .to_string();
    let v2 = serde_json::json!({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST_V2, "config": {}, "layers": []}).to_string();
    upstream.put_manifest("d/list", Some("1"), DOCKER_MANIFEST_LIST, list);
    upstream.put_manifest("d/image", Some("1"), DOCKER_MANIFEST_V2, v2);
    let proxy = TestProxy::start(&[&upstream]).await;
    for (repo, media_type) in [
        ("d/list", DOCKER_MANIFEST_LIST),
        ("d/image", DOCKER_MANIFEST_V2),
    ] {
        for _ in 0..2 {
            let response = get_url(proxy.url(&format!("/v2/{repo}/manifests/1"))).await;
            assert_eq!(response.headers()["content-type"], media_type);
        }
    }
}

#[tokio::test]
async fn tag_list_is_forwarded_with_pagination_and_failover() {
    let primary = FakeRegistry::start().await;
    let secondary = FakeRegistry::start().await;
    for tag in ["a", "b", "c", "d"] {
        put_image(&[&secondary], "p/q", tag, 3);
    }
    primary.fault("/p/q/tags/list", crate::support::Fault::Status(503));
    let proxy = TestProxy::start(&[&primary, &secondary]).await;
    let response = get_url(proxy.url("/v2/p/q/tags/list?n=2&last=a")).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["tags"], serde_json::json!(["b", "c"]));
    assert_eq!(primary.hits("/p/q/tags/list"), 1);
    let response = get_url(proxy.url("/v2/no/such/tags/list")).await;
    assert_eq!(
        error_code(response).await,
        (StatusCode::NOT_FOUND, "NAME_UNKNOWN".to_owned())
    );
}
